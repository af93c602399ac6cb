//! Stowage's domain core.
//!
//! Everything here is pure: values, rules and state machines, with no async
//! runtime, no database, no network and no file system. The crates above this
//! one do the I/O and call into these types to decide what to do.
//!
//! Architecture invariant: this crate must never depend on tokio, sqlx, axum
//! or any other I/O framework. `tests/no_io_deps.rs` (workspace level) checks it.

pub mod ids;
pub mod manifest;
pub mod parts;
pub mod point;
pub mod progress;
pub mod ram;
pub mod retention;
pub mod schedule;
pub mod secret;
pub mod task;
pub mod time;

pub use ids::{Dialect, IdError, InstanceId};
pub use point::{ConsistentPoint, OplogTs};
pub use progress::{LiveTask, Progress, RateEstimator};
pub use schedule::{BackupPolicy, PolicyError, Weekdays, Window};
pub use secret::Secret;
pub use task::{TaskKind, TaskMode, TaskState, TransitionError};
