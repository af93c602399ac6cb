//! The catalog: what Stowage knows about accounts, instances, tasks and sets.
//!
//! [`Catalog`] is the seam: the service talks only to the trait.
//! [`sql::SqlCatalog`] implements it on SQLite (the embedded default) and on
//! PostgreSQL (shared by several nodes), one code path for both.
//!
//! # Invariants kept here
//!
//! * One task model: backups, restores, verifies and gc runs are [`Task`]s
//!   of different kinds in one table; a task may have parts (tasks with a
//!   `parent_id`), whose states and progress the service converges into
//!   the parent's (`stowage_core::parts`).
//! * At most one active (non-terminal) top-level task per instance:
//!   enforced by a unique index, so it holds even with several writers.
//!   Parts never hold the slot.
//! * A task becomes `finished` in the same transaction that inserts its
//!   backup set ([`Catalog::finish_backup_task`]); the set's id is the
//!   task's id, so a set id can be promised when the task is created (the
//!   dds dialect's CreateBackup returns both).
//! * State changes are checked against the core state machine; an illegal
//!   transition is an error, not a silent overwrite.
//! * Every query is scoped by account: another account's rows are
//!   indistinguishable from missing rows.

pub mod model;
pub mod sql;

pub use model::*;

use async_trait::async_trait;
use stowage_core::{Progress, TaskState};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("instance {0} already has a backup task in progress")]
    InstanceBusy(String),
    #[error(transparent)]
    Transition(#[from] stowage_core::TransitionError),
    #[error("catalog database error: {0}")]
    Db(String),
    /// A write by a node that no longer holds the task's lease.
    #[error("lease lost: {0}")]
    LeaseLost(String),
}

impl From<sqlx::Error> for CatalogError {
    fn from(e: sqlx::Error) -> Self {
        CatalogError::Db(e.to_string())
    }
}

pub type CatalogResult<T> = Result<T, CatalogError>;

/// Extra fields written together with a state change.
#[derive(Debug, Clone, Default)]
pub struct StateUpdate {
    pub error: Option<String>,
    pub progress: Option<Progress>,
    pub consistent_point: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
    /// The lease the writer holds: refused (`LeaseLost`) once the task was
    /// taken over by another node. `None`: unfenced (parts, single node).
    pub lease_epoch: Option<i64>,
}

#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// The catalog database's own clock, in Unix ms: the one clock every
    /// node of a shared catalog judges leases by (a SQLite catalog: this
    /// machine's).
    async fn clock_ms(&self) -> CatalogResult<i64>;

    // deployment-wide settings
    /// The stored value of a setting, storing `value` first if it has none:
    /// of nodes racing to set it, all read the first one's value.
    async fn setting_or_insert(&self, name: &str, value: &str) -> CatalogResult<String>;
    async fn set_setting(&self, name: &str, value: &str) -> CatalogResult<()>;
    /// The stored value of a setting, if any (a read only).
    async fn setting(&self, name: &str) -> CatalogResult<Option<String>>;
    /// Counts this process as a running node of the deployment for as long
    /// as it lives (PostgreSQL: a shared advisory lock on a connection of
    /// its own, taken again if that session ended; SQLite: nothing, the
    /// data directory's lock does it). `Conflict` while a server key
    /// rotation runs.
    async fn join_as_node(&self) -> CatalogResult<()>;
    /// Re-seals every stored secret (access-key secrets, instance
    /// passwords) with `reseal` and stores `check` as the server key's check
    /// value, in one transaction: all or nothing (`reseal` returning `None`
    /// for any secret aborts it). `Conflict` while a node has joined.
    /// Returns how many secrets were re-sealed.
    async fn reseal_secrets(
        &self,
        reseal: &(dyn for<'a> Fn(&'a [u8]) -> Option<Vec<u8>> + Send + Sync),
        check: &str,
    ) -> CatalogResult<u64>;

    // accounts and keys
    async fn create_account(&self, name: &str, now_ms: i64) -> CatalogResult<Account>;
    async fn account_by_name(&self, name: &str) -> CatalogResult<Option<Account>>;
    async fn insert_access_key(&self, key: &AccessKey) -> CatalogResult<()>;
    async fn access_key(&self, id: &str) -> CatalogResult<Option<AccessKey>>;
    async fn list_access_keys(&self, account_id: &str) -> CatalogResult<Vec<AccessKey>>;
    /// Sets a key's status (`active` or `disabled`).
    async fn set_access_key_status(&self, id: &str, status: &str) -> CatalogResult<()>;
    /// Sets or clears a key's RAM-style policy document.
    async fn set_access_key_policy(
        &self,
        id: &str,
        policy: Option<&serde_json::Value>,
    ) -> CatalogResult<()>;
    async fn delete_access_key(&self, id: &str) -> CatalogResult<()>;
    async fn list_accounts(&self) -> CatalogResult<Vec<Account>>;

    // instances
    async fn insert_instance(&self, i: &Instance) -> CatalogResult<()>;
    async fn instance(&self, account_id: &str, id: &str) -> CatalogResult<Option<Instance>>;
    /// Stores an instance's connection settings (host, port, user, sealed
    /// password, database, options).
    async fn update_instance(&self, i: &Instance) -> CatalogResult<()>;
    async fn list_instances(&self, account_id: &str) -> CatalogResult<Vec<Instance>>;
    /// Refused while the instance has an active task.
    async fn delete_instance(&self, account_id: &str, id: &str) -> CatalogResult<()>;

    // tasks of every kind, and their parts
    /// Creates a `pending` task. A top-level task naming an instance takes
    /// the instance's slot (`InstanceBusy` if another holds it), except an
    /// automated backup, which takes it when claimed. A backup with a client
    /// token already used returns the first task.
    async fn create_task(&self, t: &NewTask, now_ms: i64) -> CatalogResult<Task>;
    async fn task(&self, account_id: &str, id: i64) -> CatalogResult<Option<Task>>;
    /// A task of any account: only for a caller whose permission is not an
    /// account's (a download link's signature names the task).
    async fn task_by_id(&self, id: i64) -> CatalogResult<Option<Task>>;

    // signature nonces of signed requests (shared by the nodes)
    /// Records a signed request's nonce of `key_id` until `until_ms`: false
    /// when it is recorded already and has not expired at `now_ms` (a
    /// replay). Of nodes racing with one nonce exactly one gets true.
    async fn remember_nonce(
        &self,
        key_id: &str,
        nonce: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> CatalogResult<bool>;
    /// Deletes the nonces expired before `now_ms`; how many.
    async fn forget_nonces(&self, now_ms: i64) -> CatalogResult<u64>;
    async fn list_tasks(&self, account_id: &str, f: &TaskFilter) -> CatalogResult<Vec<Task>>;
    /// How many tasks `f` matches (its order, offset and limit aside).
    async fn count_tasks(&self, account_id: &str, f: &TaskFilter) -> CatalogResult<u64>;
    /// The parts of a task, in the order they were created.
    async fn task_parts(&self, parent_id: i64) -> CatalogResult<Vec<Task>>;
    async fn set_task_state(
        &self,
        id: i64,
        to: TaskState,
        u: StateUpdate,
        now_ms: i64,
    ) -> CatalogResult<Task>;
    /// Progress of a task not yet ended; with `lease_epoch`, only while the
    /// writer still holds that lease (else silently nothing).
    async fn set_task_progress(
        &self,
        id: i64,
        p: Progress,
        now_ms: i64,
        lease_epoch: Option<i64>,
    ) -> CatalogResult<()>;
    /// Extends the lease `epoch` of a task not yet ended to `until_ms`:
    /// `None` when the lease is no longer this holder's (taken over, or the
    /// task ended), else whether a cancel was asked for.
    async fn renew_lease(&self, id: i64, epoch: i64, until_ms: i64) -> CatalogResult<Option<bool>>;
    /// Takes over one top-level task whose lease expired before `now_ms`
    /// (its node died or was cut off, or this node lost its final write;
    /// never one of `running`, the tasks `node` still runs itself): the
    /// task gets this node, the next epoch, a lease until `until_ms`, one
    /// more attempt and progress from zero; its parts' attempt ends failed.
    /// Of nodes racing for it exactly one gets it.
    async fn claim_expired_task(
        &self,
        node: &str,
        until_ms: i64,
        now_ms: i64,
        running: &[i64],
    ) -> CatalogResult<Option<Task>>;
    /// Asks the node that runs a task to cancel it (read when it renews its
    /// lease). False when the task already ended.
    async fn request_cancel(&self, account_id: &str, id: i64) -> CatalogResult<bool>;
    /// Takes or keeps a role (the scheduler) until `until_ms`: true when
    /// `node` holds it now. Held by another node whose lease has not
    /// expired: false. Of nodes racing for it exactly one gets it.
    async fn acquire_role(
        &self,
        role: &str,
        node: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> CatalogResult<bool>;
    async fn release_role(&self, role: &str, node: &str) -> CatalogResult<()>;
    /// Records the set and marks the backup task finished, atomically.
    async fn finish_backup_task(
        &self,
        id: i64,
        set: &NewSet,
        now_ms: i64,
    ) -> CatalogResult<(Task, BackupSet)>;
    /// Marks every non-terminal task of `node` failed (after a restart);
    /// automated tasks still waiting for their window are left alone.
    async fn fail_interrupted(&self, node: &str, reason: &str, now_ms: i64) -> CatalogResult<u64>;

    // backup sets
    async fn backup_set(&self, account_id: &str, id: i64) -> CatalogResult<Option<BackupSet>>;
    async fn list_backup_sets(
        &self,
        account_id: &str,
        f: &SetFilter,
    ) -> CatalogResult<Vec<BackupSet>>;
    async fn delete_backup_set(&self, account_id: &str, id: i64) -> CatalogResult<()>;
    /// The repository snapshot of every set, of every account: what gc
    /// must never take for an orphan.
    async fn set_snapshot_ids(&self) -> CatalogResult<Vec<String>>;
    /// Whether a set (of any account) names the snapshot.
    async fn snapshot_named(&self, snapshot_id: &str) -> CatalogResult<bool>;
    /// Sets a set's expiry explicitly (`None`: never); a later policy change
    /// leaves it alone.
    async fn pin_backup_set_expiry(
        &self,
        account_id: &str,
        id: i64,
        expires_ms: Option<i64>,
    ) -> CatalogResult<BackupSet>;
    /// Every set (of any account) of the instances that have at least one
    /// set expired at `now_ms`: what retention plans over.
    async fn sets_of_instances_with_expired(&self, now_ms: i64) -> CatalogResult<Vec<BackupSet>>;

    // backup policies and the scheduler
    async fn backup_policy(
        &self,
        account_id: &str,
        instance_id: &str,
    ) -> CatalogResult<Option<StoredPolicy>>;
    /// Stores a policy and, in the same transaction, gives every set of the
    /// instance whose expiry was not pinned the expiry the new retention
    /// implies.
    async fn put_backup_policy(
        &self,
        account_id: &str,
        instance_id: &str,
        p: &StoredPolicy,
    ) -> CatalogResult<()>;
    /// Every instance of every account, with its stored policy if any.
    async fn instance_policies(&self) -> CatalogResult<Vec<InstancePolicy>>;
    /// Unclaimed scheduled tasks whose window has started.
    async fn due_scheduled_tasks(&self, now_ms: i64) -> CatalogResult<Vec<Task>>;
    /// Gives a scheduled task the instance's active slot and this node;
    /// `InstanceBusy` while another backup of the instance is active.
    /// With `lease_until_ms`, the node runs it under the next lease epoch.
    async fn claim_scheduled_task(
        &self,
        id: i64,
        node: &str,
        now_ms: i64,
        lease_until_ms: Option<i64>,
    ) -> CatalogResult<()>;
    /// Marks an unclaimed scheduled task as held back by the limit of
    /// concurrent automated backups (`result.queued_ms`): it keeps its turn
    /// past its window's end, whichever node schedules next; the claim
    /// clears the mark. True when it was not marked before.
    async fn queue_scheduled_task(&self, id: i64, now_ms: i64) -> CatalogResult<bool>;
    /// How many automated backups hold their instance's slot (claimed and
    /// not ended), on every node: what the limit counts.
    async fn active_automated_backups(&self) -> CatalogResult<u64>;
    /// Cancels the unclaimed scheduled tasks of an instance, except the one
    /// for window `keep_ms`; they no longer count for their window.
    async fn drop_scheduled_tasks(
        &self,
        instance_id: &str,
        keep_ms: Option<i64>,
        reason: &str,
        now_ms: i64,
    ) -> CatalogResult<u64>;
}
