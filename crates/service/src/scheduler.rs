//! Backup policies and the scheduler run by `stowage serve`.
//!
//! Every tick the scheduler, in order:
//! 1. creates the automated task of each instance's next window, up to
//!    [`LEAD_MS`] before the window opens, so clients see it waiting
//!    (`NoStart` / `Scheduled`, `JobMode=Automated`). The window's start is
//!    the task's identity in the catalog: one task per instance and window,
//!    even across restarts;
//! 2. starts the automated tasks whose window has opened, once the instance
//!    has no other backup running (a manual backup delays it) and fewer
//!    than the limit of automated backups run (the others queue, in window
//!    order, past the window's end if need be); a task whose instance stayed
//!    busy for its whole window is cancelled with the reason;
//! 3. deletes the sets whose expiry has passed (never the newest set of an
//!    instance) and their snapshots;
//! 4. runs a gc job when sets were deleted and nothing else is running, so
//!    their unreferenced data leaves the repository. gc takes the
//!    repository's exclusive lock: a backup that starts meanwhile waits for
//!    nothing and gc is simply retried at a later tick.

use crate::{ErrorKind, Principal, Service, ServiceError, ServiceResult, now_ms};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use stowage_catalog::{CatalogError, NewTask, StoredPolicy};
use stowage_core::retention::{SetAge, plan_expiry};
use stowage_core::{BackupPolicy, TaskMode, TaskState, Weekdays, Window};

/// How long the scheduler trusts its memory that a window's task exists
/// before it asks the catalog again (creating it; the unique index answers
/// if it does): another node may have dropped it for a policy change.
pub(crate) const SCHEDULED_MEMORY: std::time::Duration = std::time::Duration::from_secs(60);

/// How long before its window an automated task appears.
pub const LEAD_MS: i64 = 10 * 60_000;

/// The newest sets of an instance that retention never deletes.
pub const KEEP_MIN_SETS: usize = 1;

/// A change to a policy; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PolicyUpdate {
    pub enabled: Option<bool>,
    pub window: Option<Window>,
    pub weekdays: Option<Weekdays>,
    pub retention_days: Option<u32>,
    /// Product fields to store as given (merged over the stored ones).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Service {
    /// An instance's policy: the stored one or the default.
    /// When the next automated backup of an instance starts: the open
    /// window's start while its backup has not begun, else the next window's.
    pub async fn next_backup_at(
        &self,
        p: &Principal,
        instance_id: &str,
        policy: &BackupPolicy,
    ) -> ServiceResult<Option<i64>> {
        let now = crate::now_ms();
        let Some(open) = policy.occurrence(now) else {
            return Ok(None);
        };
        let mut taken = None;
        if open.start_ms <= now {
            let f = stowage_catalog::TaskFilter {
                kinds: vec![stowage_core::TaskKind::Backup],
                instance_id: Some(instance_id.to_string()),
                limit: Some(20),
                ..Default::default()
            };
            taken = self
                .catalog
                .list_tasks(&p.account_id, &f)
                .await?
                .iter()
                .find(|t| t.scheduled_ms == Some(open.start_ms) && t.state != TaskState::Pending)
                .map(|_| open.start_ms);
        }
        Ok(policy.next_backup(now, taken).map(|o| o.start_ms))
    }

    pub async fn policy(&self, p: &Principal, instance: &str) -> ServiceResult<StoredPolicy> {
        let i = self.instance(p, instance).await?;
        Ok(self
            .catalog
            .backup_policy(&p.account_id, &i.id)
            .await?
            .unwrap_or_else(|| StoredPolicy {
                policy: BackupPolicy::default(),
                extra: Default::default(),
                updated_ms: i.created_ms,
            }))
    }

    /// Changes a policy. Sets whose expiry was not set explicitly get the new
    /// retention; a waiting automated task of a window the new policy no
    /// longer has is cancelled.
    pub async fn set_policy(
        &self,
        p: &Principal,
        instance: &str,
        u: PolicyUpdate,
    ) -> ServiceResult<StoredPolicy> {
        let cur = self.policy(p, instance).await?;
        let i = self.instance(p, instance).await?;
        let mut next = cur.clone();
        if let Some(e) = u.enabled {
            next.policy.enabled = e;
        }
        if let Some(w) = u.window {
            next.policy.window = w;
        }
        if let Some(d) = u.weekdays {
            next.policy.weekdays = d;
        }
        if let Some(r) = u.retention_days {
            next.policy.retention_days = BackupPolicy::check_retention(r)
                .map_err(|e| ServiceError::invalid(e.to_string()))?;
        }
        next.extra.extend(u.extra);
        let now = now_ms();
        next.updated_ms = now;
        self.catalog
            .put_backup_policy(&p.account_id, &i.id, &next)
            .await?;
        if next.policy != cur.policy {
            let keep = next.policy.occurrence(now).map(|o| o.start_ms);
            let n = self
                .catalog
                .drop_scheduled_tasks(
                    &i.id,
                    keep,
                    "superseded: the backup policy changed before the task ran",
                    now,
                )
                .await?;
            if n > 0 {
                tracing::info!(instance = %i.id, tasks = n, "policy changed: waiting automated tasks dropped");
            }
            self.scheduled.lock().expect("lock").remove(&i.id);
        }
        Ok(next)
    }

    /// Sets when a set expires (`None`: kept until deleted); a later policy
    /// change leaves this set's expiry alone.
    pub async fn set_expiry(
        &self,
        p: &Principal,
        id: i64,
        expires_ms: Option<i64>,
    ) -> ServiceResult<stowage_catalog::BackupSet> {
        Ok(self
            .catalog
            .pin_backup_set_expiry(&p.account_id, id, expires_ms)
            .await?)
    }

    /// Runs the scheduler until the service shuts down; at most
    /// `max_automated` automated backups run at once (the others wait their
    /// turn, in window order).
    pub fn spawn_scheduler(self: &Arc<Self>, interval: std::time::Duration, max_automated: usize) {
        self.automated_limit
            .store(max_automated.max(1), Ordering::Relaxed);
        let svc = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if svc.is_shutting_down() {
                    break;
                }
                if let Err(e) = svc.scheduler_tick(now_ms()).await {
                    tracing::warn!(error = %e, "scheduler tick failed; retrying at the next one");
                }
            }
        });
    }

    /// One pass of the scheduler (see the module docs).
    pub async fn scheduler_tick(self: &Arc<Self>, now: i64) -> ServiceResult<()> {
        // On a shared catalog one node schedules at a time (a leased role):
        // a window never gets two automated tasks, sets are expired and gc
        // started once.
        if !self.holds_scheduler_role().await? {
            return Ok(());
        }
        self.schedule_windows(now).await?;
        self.start_due(now).await?;
        self.expire_sets(now).await?;
        self.maybe_gc().await
    }

    /// Takes or keeps the scheduler role (always held on a one-node
    /// catalog). Asked again before each start or skip: a tick slower than
    /// the lease must not act beside the node that took the role over.
    async fn holds_scheduler_role(&self) -> ServiceResult<bool> {
        Ok(match self.lease_until() {
            None => true,
            Some(until) => {
                self.catalog
                    .acquire_role("scheduler", &self.node, until, self.catalog_now_ms())
                    .await?
            }
        })
    }

    async fn schedule_windows(&self, now: i64) -> ServiceResult<()> {
        for ip in self.catalog.instance_policies().await? {
            let method = policy_method(&ip, self.admin_account.get().map(String::as_str));
            let policy = ip.policy.map(|s| s.policy).unwrap_or_default();
            let Some(o) = policy.occurrence(now) else {
                continue;
            };
            if now < o.start_ms - LEAD_MS
                || self
                    .scheduled
                    .lock()
                    .expect("lock")
                    .get(&ip.instance_id)
                    .is_some_and(|(at, when)| {
                        *at == o.start_ms && when.elapsed() < SCHEDULED_MEMORY
                    })
            {
                continue;
            }
            let t = NewTask {
                node: Some(self.node.clone()),
                scheduled_ms: Some(o.start_ms),
                ..NewTask::backup(&ip.account_id, &ip.instance_id, TaskMode::Automated, method)
            };
            match self.catalog.create_task(&t, now).await {
                Ok(t) => tracing::info!(
                    task = t.id,
                    instance = %ip.instance_id,
                    at = %stowage_core::time::format_rfc3339(o.start_ms),
                    "automated backup scheduled"
                ),
                // Scheduled already (by an earlier run of the server).
                Err(CatalogError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            self.scheduled
                .lock()
                .expect("lock")
                .insert(ip.instance_id, (o.start_ms, std::time::Instant::now()));
        }
        Ok(())
    }

    async fn start_due(self: &Arc<Self>, now: i64) -> ServiceResult<()> {
        let limit = self.automated_limit.load(Ordering::Relaxed);
        // Counted in the catalog: automated backups taken over by other
        // nodes, or started by a node that scheduled before this one, count.
        let running = self.catalog.active_automated_backups().await? as usize;
        let mut free = limit.saturating_sub(running);
        for t in self.catalog.due_scheduled_tasks(now).await? {
            if self.is_shutting_down() || !self.holds_scheduler_role().await? {
                return Ok(());
            }
            let p = Principal {
                account_id: t.account_id.clone(),
                key_id: "scheduler".into(),
                admin: false,
                policy: None,
            };
            let inst = match self.instance(&p, t.instance()).await {
                Ok(i) => i,
                Err(e) if e.kind == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let policy = self
                .catalog
                .backup_policy(&p.account_id, &inst.id)
                .await?
                .map(|s| s.policy)
                .unwrap_or_default();
            let start = t.scheduled_ms.unwrap_or(now);
            // Marked in the catalog, so the mark outlives this node's role.
            let queued = t
                .result
                .as_ref()
                .is_some_and(|r| r.get("queued_ms").is_some());
            // A task held back only by the concurrency limit keeps its turn
            // past the window's end; one whose instance stayed busy (or
            // whose window passed while the server was down) is skipped.
            if !queued && now >= start + policy.window.len_min() as i64 * 60_000 {
                let why = "skipped: the instance was busy or the server was down for the whole backup window";
                let skip = self
                    .catalog
                    .set_task_state(
                        t.id,
                        TaskState::Cancelled,
                        stowage_catalog::StateUpdate {
                            error: Some(why.into()),
                            // Only while unclaimed: a claim (by a node that
                            // scheduled a moment ago) takes the next epoch.
                            lease_epoch: Some(t.lease_epoch),
                            ..Default::default()
                        },
                        now,
                    )
                    .await;
                match skip {
                    Ok(_) => tracing::warn!(task = t.id, instance = t.instance(), "{why}"),
                    Err(CatalogError::LeaseLost(_)) | Err(CatalogError::Transition(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            if free == 0 {
                if self.catalog.queue_scheduled_task(t.id, now).await? {
                    tracing::info!(
                        task = t.id,
                        instance = t.instance(),
                        limit,
                        "automated backup queued: the limit of concurrent automated backups is reached"
                    );
                }
                continue;
            }
            match self
                .catalog
                .claim_scheduled_task(t.id, &self.node, now, self.lease_until())
                .await
            {
                Ok(()) => {}
                // Another backup of the instance is running: try at the next tick.
                Err(CatalogError::InstanceBusy(_)) | Err(CatalogError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            tracing::info!(
                task = t.id,
                instance = t.instance(),
                "automated backup starting"
            );
            let id = t.id;
            // The claim gave it the next lease epoch.
            let t = stowage_catalog::Task {
                lease_epoch: t.lease_epoch + 1,
                ..t
            };
            if let Err(e) = self.launch(t, inst).await {
                // Recorded on the task; the other instances go on.
                tracing::warn!(task = id, error = %e, "automated backup could not start");
                continue;
            }
            free -= 1;
        }
        Ok(())
    }

    async fn expire_sets(&self, now: i64) -> ServiceResult<()> {
        let sets = self.catalog.sets_of_instances_with_expired(now).await?;
        let mut by_instance: HashMap<&str, Vec<&stowage_catalog::BackupSet>> = HashMap::new();
        for s in &sets {
            by_instance.entry(&s.instance_id).or_default().push(s);
        }
        for (instance, list) in by_instance {
            let ages: Vec<SetAge> = list
                .iter()
                .map(|s| SetAge {
                    set_id: s.id,
                    finished_ms: s.finished_ms,
                    expires_ms: s.expires_ms,
                })
                .collect();
            for id in plan_expiry(&ages, KEEP_MIN_SETS, now) {
                let s = list.iter().find(|s| s.id == id).expect("planned from list");
                let p = Principal {
                    account_id: s.account_id.clone(),
                    key_id: "scheduler".into(),
                    admin: false,
                    policy: None,
                };
                match self.delete_set(&p, id).await {
                    Ok(()) => tracing::info!(set = id, %instance, "expired backup set deleted"),
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Starts a gc job when sets were deleted and nothing else runs.
    async fn maybe_gc(self: &Arc<Self>) -> ServiceResult<()> {
        // The setting is shared: a set deleted through any node counts.
        // Cleared before the gc starts, so a deletion meanwhile (its
        // snapshot removed before it sets the flag) is either seen by this
        // gc or sets the flag again.
        if self.running() > 0
            || self.is_shutting_down()
            || self.catalog.setting(crate::GC_NEEDED).await?.as_deref() != Some("1")
        {
            return Ok(());
        }
        let Some(acc) = self.catalog.account_by_name("default").await? else {
            return Ok(());
        };
        self.catalog.set_setting(crate::GC_NEEDED, "0").await?;
        let p = Principal {
            account_id: acc.id,
            key_id: "scheduler".into(),
            admin: true,
            policy: None,
        };
        match self.start_gc(&p).await {
            Ok(job) => {
                tracing::info!(job = job.id, "gc started to reclaim deleted sets");
                Ok(())
            }
            Err(e) => {
                // Still needed: asked again at the next tick.
                self.note_gc_needed().await;
                Err(e)
            }
        }
    }
}

/// The method of an instance's automated backups: the policy's
/// `BackupMethod` where its engine takes it (MySQL: `Physical`, for the
/// operator's own instances only, since it reads the server's files on this
/// machine), else the engine's own.
pub fn policy_method(
    ip: &stowage_catalog::InstancePolicy,
    admin_account: Option<&str>,
) -> &'static str {
    let engine = stowage_engines::engine_for(&ip.engine);
    let own = engine.map_or("", |e| e.method());
    let asked = ip
        .policy
        .as_ref()
        .and_then(|p| p.extra.get("BackupMethod"))
        .and_then(|v| v.as_str())
        .map(str::to_ascii_lowercase);
    match asked.as_deref() {
        Some("physical")
            if admin_account == Some(ip.account_id.as_str())
                && engine
                    .is_some_and(|e| e.method() != "physical" && e.takes_method("physical")) =>
        {
            "physical"
        }
        _ => own,
    }
}

#[cfg(test)]
mod policy_method_tests {
    use super::policy_method;
    use stowage_catalog::{InstancePolicy, StoredPolicy};

    fn ip(engine: &str, account: &str, method: Option<&str>) -> InstancePolicy {
        InstancePolicy {
            instance_id: "rm-x".into(),
            account_id: account.into(),
            engine: engine.into(),
            policy: method.map(|m| StoredPolicy {
                policy: Default::default(),
                extra: [("BackupMethod".to_string(), serde_json::json!(m))]
                    .into_iter()
                    .collect(),
                updated_ms: 0,
            }),
        }
    }

    #[test]
    fn a_policy_chooses_the_method_its_engine_takes() {
        let admin = Some("acc-admin");
        assert_eq!(
            policy_method(&ip("mysql", "acc-admin", None), admin),
            "logical"
        );
        assert_eq!(
            policy_method(&ip("mysql", "acc-admin", Some("Physical")), admin),
            "physical"
        );
        assert_eq!(
            policy_method(&ip("mysql", "acc-admin", Some("Logical")), admin),
            "logical"
        );
        // A tenant's instance never gets the physical method.
        assert_eq!(
            policy_method(&ip("mysql", "acc-t", Some("Physical")), admin),
            "logical"
        );
        // PostgreSQL is physical whatever the policy says.
        assert_eq!(
            policy_method(&ip("postgresql", "acc-admin", Some("Logical")), admin),
            "physical"
        );
        assert_eq!(
            policy_method(&ip("mongodb", "acc-admin", Some("Physical")), admin),
            "logical"
        );
    }
}
