//! The one task state machine that every API dialect maps onto.
//!
//! ```text
//!  Pending ──► Checking ──► Preparing ──► Running ──► Finishing ──► Finished
//!     │            │            │            │            │
//!     └────────────┴────────────┴────────────┴────────────┴──► Failed
//!     └────────────┴────────────┴────────────┘──────────────► Cancelled
//! ```
//!
//! * `Pending`: created (manually or by the scheduler), not started yet.
//! * `Checking`: connecting to the database, checking privileges and settings.
//! * `Preparing`: asking the database for a consistent starting point
//!   (e.g. a checkpoint), estimating the size.
//! * `Running`: copying data into the repository.
//! * `Finishing`: flushing packs, writing index and manifest, verifying that the
//!   set is complete. A task is never `Finished` before this step succeeded.
//!
//! `Finishing` cannot be cancelled: by then all data is copied and the set is
//! made durable or the task fails.
//!
//! `Retrying`: a working state failed for a reason that passes (the
//! repository locked by another process, a full disk); the task waits for
//! its next attempt, then starts again at `Checking`. Only kinds that can be
//! repeated without side effects retry (downloads); it can be cancelled,
//! and fails once its attempts are used up.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Checking,
    Preparing,
    Running,
    Finishing,
    Finished,
    Failed,
    Cancelled,
    /// Waiting for another attempt after a transient failure.
    Retrying,
}

impl TaskState {
    pub const ALL: [TaskState; 9] = [
        TaskState::Pending,
        TaskState::Checking,
        TaskState::Preparing,
        TaskState::Running,
        TaskState::Finishing,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Retrying,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Checking => "checking",
            TaskState::Preparing => "preparing",
            TaskState::Running => "running",
            TaskState::Finishing => "finishing",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Retrying => "retrying",
        }
    }

    /// No further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// The task holds (or waits for) its instance: a second backup of the same
    /// instance is refused while one task is in such a state.
    pub fn is_active(self) -> bool {
        !self.is_terminal()
    }

    /// Work has started (a worker owns the task).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            TaskState::Checking | TaskState::Preparing | TaskState::Running | TaskState::Finishing
        )
    }

    /// How far along the success path: pending (and retrying: waiting to
    /// start again) 0 … finishing 4, finished 5, failed and cancelled 6
    /// (past every working state).
    pub fn rank(self) -> u8 {
        match self {
            TaskState::Pending | TaskState::Retrying => 0,
            TaskState::Checking => 1,
            TaskState::Preparing => 2,
            TaskState::Running => 3,
            TaskState::Finishing => 4,
            TaskState::Finished => 5,
            TaskState::Failed | TaskState::Cancelled => 6,
        }
    }

    pub fn can_transition_to(self, next: TaskState) -> bool {
        use TaskState::*;
        match (self, next) {
            (Pending, Checking) => true,
            (Checking, Preparing) => true,
            (Preparing, Running) => true,
            (Running, Finishing) => true,
            (Finishing, Finished) => true,
            (Checking | Preparing | Running, Retrying) => true,
            (Retrying, Checking) => true,
            (s, Failed) => !s.is_terminal(),
            (Pending | Checking | Preparing | Running | Retrying, Cancelled) => true,
            _ => false,
        }
    }

    /// Checked transition.
    pub fn transition(self, next: TaskState) -> Result<TaskState, TransitionError> {
        if self.can_transition_to(next) {
            Ok(next)
        } else {
            Err(TransitionError {
                from: self,
                to: next,
            })
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownValue(s.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal task transition {from} -> {to}")]
pub struct TransitionError {
    pub from: TaskState,
    pub to: TaskState,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(pub String);

/// Who asked for the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskMode {
    Manual,
    Automated,
}

impl TaskMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskMode::Manual => "manual",
            TaskMode::Automated => "automated",
        }
    }
}

impl FromStr for TaskMode {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manual" => Ok(TaskMode::Manual),
            "automated" => Ok(TaskMode::Automated),
            _ => Err(UnknownValue(s.to_string())),
        }
    }
}

/// Jobs that are not backups (restore, verify, gc) share the same states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Backup,
    Restore,
    Verify,
    Gc,
    /// Packages one part of a set into a file served by an expiring link.
    Download,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Backup => "backup",
            TaskKind::Restore => "restore",
            TaskKind::Verify => "verify",
            TaskKind::Gc => "gc",
            TaskKind::Download => "download",
        }
    }
}

impl FromStr for TaskKind {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            TaskKind::Backup,
            TaskKind::Restore,
            TaskKind::Verify,
            TaskKind::Gc,
            TaskKind::Download,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| UnknownValue(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::*;
    use super::*;

    /// The whole transition table, written out once.
    #[test]
    fn transition_table() {
        let allowed = [
            (Pending, Checking),
            (Checking, Preparing),
            (Preparing, Running),
            (Running, Finishing),
            (Finishing, Finished),
            (Pending, Failed),
            (Checking, Failed),
            (Preparing, Failed),
            (Running, Failed),
            (Finishing, Failed),
            (Pending, Cancelled),
            (Checking, Cancelled),
            (Preparing, Cancelled),
            (Running, Cancelled),
            (Checking, Retrying),
            (Preparing, Retrying),
            (Running, Retrying),
            (Retrying, Checking),
            (Retrying, Failed),
            (Retrying, Cancelled),
        ];
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                let expect = allowed.contains(&(from, to));
                assert_eq!(from.can_transition_to(to), expect, "{from} -> {to}");
                assert_eq!(from.transition(to).is_ok(), expect);
            }
        }
    }

    #[test]
    fn finished_only_through_finishing() {
        for s in TaskState::ALL {
            if s != Finishing {
                assert!(
                    !s.can_transition_to(Finished),
                    "{s} must not finish directly"
                );
            }
        }
    }

    #[test]
    fn round_trip_strings() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
        assert!("done".parse::<TaskState>().is_err());
    }
}
