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

/// A task of any kind (backup, restore, verify, gc), top-level or a part
/// of one: one model, one table, one code path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub id: i64,
    pub account_id: String,
    pub kind: TaskKind,
    /// The task this one is a part of; `None` for a top-level task.
    pub parent_id: Option<i64>,
    /// The part's name (a shard, a replica set …); `None` for a top-level task.
    pub part: Option<String>,
    /// Backup: the instance backed up. Restore into a server: the target.
    pub instance_id: Option<String>,
    /// Backup: the set it produced. Restore, verify: the set read.
    pub set_id: Option<i64>,
    pub mode: TaskMode,
    /// Backup: the engine's method (physical, logical); empty otherwise.
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
    /// What the task established (restore counts, verify report …).
    pub result: Option<serde_json::Value>,
    /// What was asked (restore target, options …).
    pub params: serde_json::Value,
    pub node: Option<String>,
    pub client_token: Option<String>,
    /// For an automated task: the start of the window it belongs to.
    pub scheduled_ms: Option<i64>,
    /// Retention asked for this backup's set, overriding the policy.
    pub retention_days: Option<u32>,
    /// The caller's note; copied into the set's `meta.comment`.
    pub comment: Option<String>,
    /// How many leases the task was given (0: never leased); a node's
    /// writes carry the one it holds.
    pub lease_epoch: i64,
    /// 1, plus one per takeover by another node.
    pub attempts: u32,
    /// A cancel was asked through another node than the one running it.
    pub cancel_requested: bool,
}

impl Task {
    /// The instance, for tasks that always have one (backups); empty otherwise.
    pub fn instance(&self) -> &str {
        self.instance_id.as_deref().unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupSet {
    pub id: i64,
    pub account_id: String,
    pub instance_id: String,
    pub task_id: i64,
    pub snapshot_id: String,
    pub engine: String,
    /// The server's version as it reported it ("16.4", "8.2.11").
    pub engine_version: Option<String>,
    pub method: String,
    pub mode: TaskMode,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub bytes_logical: u64,
    pub bytes_stored: u64,
    pub consistent_point: Option<stowage_core::ConsistentPoint>,
    pub meta: serde_json::Value,
    pub expires_ms: Option<i64>,
}

/// Which tasks to list (newest first unless `order` says otherwise).
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only these kinds (default: every kind).
    pub kinds: Vec<TaskKind>,
    pub instance_id: Option<String>,
    pub states: Vec<TaskState>,
    pub task_id: Option<i64>,
    pub set_id: Option<i64>,
    /// Only tasks of one of these sets (empty: any).
    pub set_ids: Vec<i64>,
    /// The parts of this task; `None`: top-level tasks only.
    pub parent_id: Option<i64>,
    /// Only ids below this one (the cursor of the previous page).
    pub before_id: Option<i64>,
    /// Only tasks created in this second (ms, its start counts) or later.
    pub created_from_ms: Option<i64>,
    /// Only tasks that ended in the second of `.0` (ms) or earlier; an
    /// unfinished task's end is `.1` (now).
    pub ended_by_ms: Option<(i64, i64)>,
    pub order: TaskOrder,
    /// Skip this many (after ordering).
    pub offset: Option<u32>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

/// The order of a task listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TaskOrder {
    /// Newest first (by id, which follows creation).
    #[default]
    NewestFirst,
    OldestFirst,
    /// By when they ended, unfinished ones last; ties by id.
    FinishedAsc,
    /// The reverse of `FinishedAsc`.
    FinishedDesc,
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

/// A new task.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub account_id: String,
    pub kind: TaskKind,
    pub instance_id: Option<String>,
    pub set_id: Option<i64>,
    pub parent_id: Option<i64>,
    pub part: Option<String>,
    pub mode: TaskMode,
    pub method: String,
    pub params: serde_json::Value,
    pub client_token: Option<String>,
    pub node: Option<String>,
    /// Set for an automated task created ahead of its window.
    pub scheduled_ms: Option<i64>,
    /// Keep this backup's set this many days (pinned), instead of the policy's.
    pub retention_days: Option<u32>,
    /// A note kept with the task and its set.
    pub comment: Option<String>,
    /// The creating node runs it at once under a lease until then (epoch
    /// 1); `None`: no lease (an automated task waiting for its window, a
    /// part, a single node's task).
    pub lease_until_ms: Option<i64>,
}

impl NewTask {
    /// A backup of an instance.
    pub fn backup(account_id: &str, instance_id: &str, mode: TaskMode, method: &str) -> NewTask {
        NewTask {
            account_id: account_id.to_string(),
            kind: TaskKind::Backup,
            instance_id: Some(instance_id.to_string()),
            set_id: None,
            parent_id: None,
            part: None,
            mode,
            method: method.to_string(),
            params: serde_json::json!({}),
            client_token: None,
            node: None,
            scheduled_ms: None,
            retention_days: None,
            comment: None,
            lease_until_ms: None,
        }
    }

    /// A restore, verify or gc run, reading `set_id` if any.
    pub fn of_kind(account_id: &str, kind: TaskKind, set_id: Option<i64>) -> NewTask {
        NewTask {
            kind,
            instance_id: None,
            set_id,
            method: String::new(),
            mode: TaskMode::Manual,
            ..NewTask::backup(account_id, "", TaskMode::Manual, "")
        }
    }

    /// A part of `parent` named `name`, of the same kind and instance.
    pub fn part_of(parent: &Task, name: &str) -> NewTask {
        NewTask {
            account_id: parent.account_id.clone(),
            kind: parent.kind,
            instance_id: parent.instance_id.clone(),
            set_id: None,
            parent_id: Some(parent.id),
            part: Some(name.to_string()),
            mode: parent.mode,
            method: parent.method.clone(),
            params: serde_json::json!({}),
            client_token: None,
            node: parent.node.clone(),
            scheduled_ms: None,
            retention_days: None,
            comment: None,
            lease_until_ms: None,
        }
    }
}

/// What a finished backup produced.
#[derive(Debug, Clone)]
pub struct NewSet {
    pub snapshot_id: String,
    pub engine: String,
    pub engine_version: Option<String>,
    pub method: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub bytes_logical: u64,
    pub bytes_stored: u64,
    pub consistent_point: Option<stowage_core::ConsistentPoint>,
    pub meta: serde_json::Value,
    pub expires_ms: Option<i64>,
    /// The lease the finishing node holds (see `StateUpdate::lease_epoch`).
    pub lease_epoch: Option<i64>,
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
    /// The instance's engine (the automated task records its method).
    pub engine: String,
    pub policy: Option<StoredPolicy>,
}
