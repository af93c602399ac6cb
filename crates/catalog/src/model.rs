//! Rows of the catalog, as plain values.

use serde::Serialize;
use stowage_core::{TaskKind, TaskMode, TaskState};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub account_id: String,
    /// Sealed secret (see the service's secret box); never the clear text.
    pub secret_enc: Vec<u8>,
    pub status: String,
    pub description: String,
    pub created_ms: i64,
    /// RAM-style policy document; `None`: everything the account may do.
    pub policy: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub engine: String,
    pub topology: String,
    pub host: String,
    pub port: u16,
    pub username: String,
    #[serde(skip)]
    pub password_enc: Option<Vec<u8>>,
    pub dbname: Option<String>,
    pub options: serde_json::Value,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupTask {
    pub id: i64,
    pub account_id: String,
    pub instance_id: String,
    pub mode: TaskMode,
    pub method: String,
    pub state: TaskState,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub updated_ms: i64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_stored: u64,
    pub consistent_point: Option<serde_json::Value>,
    pub error: Option<String>,
    pub set_id: Option<i64>,
    pub node: Option<String>,
    pub client_token: Option<String>,
    /// For an automated task: the start of the window it belongs to.
    pub scheduled_ms: Option<i64>,
    /// Retention asked for this backup's set, overriding the policy.
    pub retention_days: Option<u32>,
    /// The caller's note; copied into the set's `meta.comment`.
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupSet {
    pub id: i64,
    pub account_id: String,
    pub instance_id: String,
    pub task_id: i64,
    pub snapshot_id: String,
    pub engine: String,
    pub method: String,
    pub mode: TaskMode,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub bytes_logical: u64,
    pub bytes_stored: u64,
    pub consistent_point: Option<serde_json::Value>,
    pub meta: serde_json::Value,
    pub expires_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: i64,
    pub account_id: String,
    pub kind: TaskKind,
    pub state: TaskState,
    pub set_id: Option<i64>,
    pub params: serde_json::Value,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub updated_ms: i64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub instance_id: Option<String>,
    pub states: Vec<TaskState>,
    pub task_id: Option<i64>,
    /// Only ids below this one (the cursor of the previous page).
    pub before_id: Option<i64>,
    pub limit: Option<u32>,
}

/// Which backup sets to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct SetFilter {
    pub instance_id: Option<String>,
    /// Only ids below this one (the cursor of the previous page).
    pub before_id: Option<i64>,
    /// At most this many (default: all).
    pub limit: Option<u32>,
}

/// Which jobs to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub kinds: Vec<stowage_core::TaskKind>,
    pub states: Vec<TaskState>,
    pub set_id: Option<i64>,
    /// Only ids below this one (the cursor of the previous page).
    pub before_id: Option<i64>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

/// A new backup task.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub account_id: String,
    pub instance_id: String,
    pub mode: TaskMode,
    pub method: String,
    pub client_token: Option<String>,
    pub node: Option<String>,
    /// Set for an automated task created ahead of its window.
    pub scheduled_ms: Option<i64>,
    /// Keep this backup's set this many days (pinned), instead of the policy's.
    pub retention_days: Option<u32>,
    /// A note kept with the task and its set.
    pub comment: Option<String>,
}

/// What a finished backup produced.
#[derive(Debug, Clone)]
pub struct NewSet {
    pub snapshot_id: String,
    pub engine: String,
    pub method: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub bytes_logical: u64,
    pub bytes_stored: u64,
    pub consistent_point: Option<serde_json::Value>,
    pub meta: serde_json::Value,
    pub expires_ms: Option<i64>,
}

/// An instance's backup policy as stored, with the product fields Stowage
/// keeps and returns without acting on them.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    pub policy: stowage_core::BackupPolicy,
    /// Field name → value as the client sent it.
    pub extra: serde_json::Map<String, serde_json::Value>,
    pub updated_ms: i64,
}

/// An instance and its policy (`None`: the default), for the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancePolicy {
    pub instance_id: String,
    pub account_id: String,
    pub policy: Option<StoredPolicy>,
}
