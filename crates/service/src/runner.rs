//! Running tasks of every kind, and mirroring their live state (and their
//! parts') into the catalog.

use crate::{Service, now_ms};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use stowage_catalog::{BackupSet, Instance, NewSet, NewTask, StateUpdate, Task};
use stowage_core::progress::Throttle;
use stowage_core::{LiveTask, Progress, TaskState};
use stowage_engines::{ConnSpec, EngineError, ErrorKind};
use stowage_repo::lock::LockKind;
use stowage_repo::restore::{self, RestoreOptions};

/// Progress is persisted at most this often per task.
const PROGRESS_INTERVAL_MS: u64 = 1000;
const POLL: Duration = Duration::from_millis(100);

pub(crate) enum JobWork {
    Restore {
        set: Box<BackupSet>,
        target: PathBuf,
        force: bool,
        caller: crate::restore_target::Caller,
        /// Freed when the work ends (dropped with it).
        slot: crate::RestoreSlot,
    },
    /// Into a running server (logical engines).
    RestoreInto {
        set: Box<BackupSet>,
        spec: Box<ConnSpec>,
        opts: stowage_engines::RestoreIntoOptions,
    },
    /// The whole repository, or only the packs one snapshot needs.
    Verify {
        snapshot: Option<String>,
    },
    Gc,
    /// One part of a set into a file under the downloads folder.
    Download {
        set: Box<BackupSet>,
        part: Option<String>,
    },
}

/// The next state on the success path, used to persist every intermediate
/// state even when the worker moved through several between two polls.
fn next_forward(s: TaskState) -> Option<TaskState> {
    match s {
        TaskState::Pending | TaskState::Retrying => Some(TaskState::Checking),
        TaskState::Checking => Some(TaskState::Preparing),
        TaskState::Preparing => Some(TaskState::Running),
        TaskState::Running => Some(TaskState::Finishing),
        _ => None,
    }
}

async fn persist_state(
    svc: &Service,
    id: i64,
    to: TaskState,
    mut u: StateUpdate,
) -> Result<(), String> {
    // Fenced by the lease this node holds: refused once another node took
    // the task over.
    u.lease_epoch = svc.lease_of(id);
    svc.catalog
        .set_task_state(id, to, u, now_ms())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Brings a persisted state up to `want` along the success path (never
/// past `Finishing`: how a task ends is recorded by its runner; a failed or
/// cancelled `want` moves nothing).
async fn sync(svc: &Service, id: i64, want: TaskState, p: Progress, persisted: &mut TaskState) {
    let want = match want {
        TaskState::Finished => TaskState::Finishing,
        TaskState::Failed | TaskState::Cancelled => return,
        w => w,
    };
    while persisted.rank() < want.rank() {
        let Some(next) = next_forward(*persisted) else {
            break;
        };
        let u = StateUpdate {
            progress: Some(p),
            ..Default::default()
        };
        match persist_state(svc, id, next, u).await {
            Ok(()) => *persisted = next,
            Err(e) => {
                tracing::error!(task = id, error = %e, "could not persist a state change");
                break;
            }
        }
    }
}

/// A part the engine opened, as mirrored into the catalog.
struct PartMirror {
    id: i64,
    name: String,
    live: Arc<LiveTask>,
    persisted: TaskState,
    last: Progress,
}

/// Mirrors a running task (and the parts its engine opens) into the
/// catalog: states as they are reached, progress at most once a second.
/// With parts, the task's state and progress are its parts' converged by
/// `stowage_core::parts`.
struct Mirror {
    task: Task,
    live: Arc<LiveTask>,
    persisted: TaskState,
    last: Progress,
    throttle: Throttle,
    parts: Vec<PartMirror>,
}

impl Mirror {
    fn new(task: Task, live: Arc<LiveTask>) -> Mirror {
        Mirror {
            // A task taken over from another node goes on from the state
            // recorded (states only move forward).
            persisted: task.state,
            task,
            live,
            last: Progress::default(),
            throttle: Throttle::new(PROGRESS_INTERVAL_MS),
            parts: Vec::new(),
        }
    }

    /// The task's state and progress as its parts (or itself) say.
    fn wanted(&self) -> (TaskState, Progress) {
        let p = self.live.overall_progress();
        if self.parts.is_empty() {
            return (self.live.state(), p);
        }
        let states: Vec<TaskState> = self.parts.iter().map(|p| p.live.state()).collect();
        let parts = stowage_core::parts::converge_state(&states);
        // Parts move the task at most to running (more parts may still
        // open; a failed part fails the task through the engine's error);
        // finishing is the task's own step (writing the set).
        let own = self.live.state();
        let from_parts = match parts {
            TaskState::Failed | TaskState::Cancelled => TaskState::Pending,
            s if s.rank() > TaskState::Running.rank() => TaskState::Running,
            s => s,
        };
        let st = if own.rank() >= from_parts.rank() && !own.is_terminal() {
            own
        } else {
            from_parts
        };
        (st, p)
    }

    async fn poll(&mut self, svc: &Service) {
        // Parts opened since the last poll become sub-tasks.
        for (name, live) in self.live.parts().into_iter().skip(self.parts.len()) {
            let part = NewTask {
                // This node runs it (an automated task may have been
                // created by another).
                node: Some(svc.node.clone()),
                ..NewTask::part_of(&self.task, &name)
            };
            match svc.catalog.create_task(&part, now_ms()).await {
                Ok(t) => {
                    svc.live_tasks
                        .lock()
                        .expect("lock")
                        .insert(t.id, live.clone());
                    self.parts.push(PartMirror {
                        id: t.id,
                        name,
                        live,
                        persisted: TaskState::Pending,
                        last: Progress::default(),
                    })
                }
                Err(e) => {
                    tracing::error!(task = self.task.id, part = %name, error = %e, "could not record a part");
                    break;
                }
            }
        }
        if fault("panic-with-parts") && !self.parts.is_empty() {
            panic!("injected fault: panic-with-parts");
        }
        svc.renew_if_due(self.task.id, &self.live).await;
        let progress_due = self.throttle.due(now_ms() as u64);
        for part in &mut self.parts {
            let p = part.live.progress();
            sync(svc, part.id, part.live.state(), p, &mut part.persisted).await;
            if p != part.last && progress_due {
                part.last = p;
                if let Err(e) = svc
                    .catalog
                    .set_task_progress(part.id, p, now_ms(), None)
                    .await
                {
                    tracing::warn!(error = %e, "could not persist progress");
                }
            }
        }
        let (want, p) = self.wanted();
        sync(svc, self.task.id, want, p, &mut self.persisted).await;
        if p != self.last && progress_due {
            self.last = p;
            if let Err(e) = svc
                .catalog
                .set_task_progress(self.task.id, p, now_ms(), svc.lease_of(self.task.id))
                .await
            {
                tracing::warn!(error = %e, "could not persist progress");
            }
        }
    }

    /// Runs `work` to its end (`run`), records how the parts ended, and
    /// turns a success whose parts did not all finish into an error: such a
    /// task is not finished (`stowage_core::parts`).
    async fn complete<T>(
        &mut self,
        svc: &Service,
        work: tokio::task::JoinHandle<Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        let res = self
            .run(svc, work)
            .await
            .map_err(|m| EngineError::new(ErrorKind::Repository, m))
            .and_then(|r| r);
        self.end_parts(svc, res.as_ref().err()).await;
        let unfinished = self
            .parts
            .iter()
            .find(|p| p.persisted != TaskState::Finished);
        match (res, unfinished) {
            (Ok(_), Some(part)) => Err(EngineError::new(
                ErrorKind::Protocol,
                format!("part {} did not finish", part.name),
            )),
            (res, _) => res,
        }
    }

    /// Waits for `work`, mirroring the task meanwhile.
    async fn run<T>(
        &mut self,
        svc: &Service,
        mut work: tokio::task::JoinHandle<T>,
    ) -> Result<T, String> {
        loop {
            tokio::select! {
                res = &mut work => {
                    self.poll(svc).await;
                    return res.map_err(|e| {
                        tracing::error!(error = %e, "a worker thread failed");
                        "internal error: the worker thread failed (see the server log)".to_string()
                    });
                }
                _ = tokio::time::sleep(POLL) => self.poll(svc).await,
            }
        }
    }

    /// Records how the parts ended: those the engine finished as finished,
    /// the others failed (or cancelled) with `e`.
    async fn end_parts(&mut self, svc: &Service, e: Option<&EngineError>) {
        for part in &mut self.parts {
            if part.persisted.is_terminal() {
                continue;
            }
            if part.live.state() == TaskState::Finished {
                // The part did its work, even if the task as a whole failed.
                let p = part.live.progress();
                sync(svc, part.id, TaskState::Finishing, p, &mut part.persisted).await;
                let u = StateUpdate {
                    progress: Some(part.live.progress()),
                    ..Default::default()
                };
                match persist_state(svc, part.id, TaskState::Finished, u).await {
                    Ok(()) => part.persisted = TaskState::Finished,
                    Err(err) => tracing::error!(error = %err, "could not record a finished part"),
                }
            } else {
                let e = e.cloned().unwrap_or_else(|| {
                    EngineError::new(
                        ErrorKind::Protocol,
                        format!("the engine ended without finishing part {}", part.name),
                    )
                });
                fail(svc, part.id, part.persisted, &e).await;
                part.persisted = TaskState::Failed;
            }
        }
    }
}

/// Frees a task's live slot (and its parts') however its runner ends. If
/// the runner panicked before recording an end, the task is marked failed
/// ("internal error") so it never holds its instance's active slot until a
/// restart.
struct SlotGuard {
    svc: Arc<Service>,
    id: i64,
    live: Arc<LiveTask>,
    armed: bool,
}

impl SlotGuard {
    fn new(svc: &Arc<Service>, id: i64, live: &Arc<LiveTask>) -> SlotGuard {
        SlotGuard {
            svc: svc.clone(),
            id,
            live: live.clone(),
            armed: true,
        }
    }

    /// The runner recorded how the task ended.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        // The parts' ids are the live map's keys of their handles.
        let mut part_ids = Vec::new();
        if let Ok(mut m) = self.svc.live_tasks.lock() {
            m.remove(&self.id);
            let parts = self.live.parts();
            m.retain(|id, l| {
                let part = parts.iter().any(|(_, p)| Arc::ptr_eq(p, l));
                if part {
                    part_ids.push(*id);
                }
                !part
            });
        }
        if !self.armed {
            self.svc.release(self.id);
            return;
        }
        tracing::error!(
            task = self.id,
            "a task runner stopped unexpectedly; marking the task and its parts failed"
        );
        let (svc, id) = (self.svc.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let u = StateUpdate {
                    error: Some("internal error: the task's runner stopped unexpectedly (see the server log)".into()),
                    ..Default::default()
                };
                // Parts that already ended keep their end (the transition
                // is refused); the others fail with the task.
                for part in part_ids {
                    let _ = persist_state(&svc, part, TaskState::Failed, u.clone()).await;
                }
                // Still fenced by the lease (released only after): a task
                // another node took over is not failed by this one.
                if let Err(e) = persist_state(&svc, id, TaskState::Failed, u).await {
                    tracing::error!(error = %e, "could not record a task whose runner stopped");
                }
                svc.release(id);
            });
        } else {
            self.svc.release(self.id);
        }
    }
}

/// Test-only fault injection (debug builds): `STOWAGE_FAULT=<name>`.
fn fault(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("STOWAGE_FAULT").is_ok_and(|v| v == name)
}

async fn fail(svc: &Service, id: i64, persisted: TaskState, e: &EngineError) {
    fail_with(svc, id, persisted, e, None).await
}

/// [`fail`], replacing the task's result.
async fn fail_with(
    svc: &Service,
    id: i64,
    persisted: TaskState,
    e: &EngineError,
    result: Option<serde_json::Value>,
) {
    let to = if e.kind == ErrorKind::Cancelled && persisted.can_transition_to(TaskState::Cancelled)
    {
        TaskState::Cancelled
    } else {
        TaskState::Failed
    };
    let msg = if e.kind == ErrorKind::Cancelled && svc.is_shutting_down() {
        "cancelled: the server was shut down".to_string()
    } else if e.kind == ErrorKind::Cancelled {
        "cancelled by request".to_string()
    } else {
        e.message.clone()
    };
    if let Err(err) = persist_state(
        svc,
        id,
        to,
        StateUpdate {
            error: Some(msg),
            result,
            ..Default::default()
        },
    )
    .await
    {
        tracing::error!(error = %err, "could not record a failed task");
    }
}

pub(crate) async fn run_backup(
    svc: Arc<Service>,
    task: Task,
    inst: Instance,
    spec: ConnSpec,
    live: Arc<LiveTask>,
) {
    let t = task.id;
    let guard = SlotGuard::new(&svc, t, &live);
    tracing::info!(task = task.id, instance = %inst.id, "backup task started");
    if fault("panic-in-backup-task") {
        panic!("injected fault: panic-in-backup-task");
    }
    let Some(engine) = stowage_engines::engine_for(&inst.engine) else {
        let e = EngineError::new(
            ErrorKind::Unsupported,
            format!("no engine {:?} in this build", inst.engine),
        );
        fail(&svc, t, TaskState::Pending, &e).await;
        guard.disarm();
        return;
    };
    let mut opts = stowage_engines::BackupOptions {
        label: format!("stowage task {}", task.id),
        max_rate_kbps: inst
            .options
            .get("max_rate_kbps")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32),
        base: None,
        method: task.method.clone(),
    };
    // The newest set of the instance, for an engine that can build on it
    // (unless a full backup was asked for); its manifest is read once the
    // repository is held, so gc cannot take its chunks meanwhile.
    let full = task.params.get("full").and_then(|v| v.as_bool()) == Some(true);
    // The newest set of this engine and method (a physical set in between
    // is no base for a logical backup).
    let method = if task.method.is_empty() {
        engine.method().to_string()
    } else {
        task.method.clone()
    };
    let base_set = if engine.builds_on_earlier_sets() && !full {
        let f = stowage_catalog::SetFilter {
            instance_id: Some(inst.id.clone()),
            limit: Some(20),
            ..Default::default()
        };
        match svc.catalog.list_backup_sets(&inst.account_id, &f).await {
            Ok(v) => v
                .into_iter()
                .find(|s| s.engine == inst.engine && s.method == method),
            Err(e) => {
                tracing::warn!(error = %e, "could not list the instance's sets; taking a full backup");
                None
            }
        }
    } else {
        None
    };
    let labels: BTreeMap<String, String> = [
        ("instance_id", inst.id.clone()),
        ("task_id", task.id.to_string()),
        ("engine", inst.engine.clone()),
        ("account_id", inst.account_id.clone()),
        ("catalog_id", svc.catalog_id.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let repo = svc.repo.clone();
    let l = live.clone();
    let started = now_ms();
    let work = tokio::task::spawn_blocking(move || {
        // A gc holds the repository exclusively for a while: wait for it
        // (up to 30 minutes, still cancellable) rather than fail the backup.
        let waited = std::time::Instant::now();
        let mut logged = false;
        let mut w = loop {
            match repo.start_backup(0) {
                Err(stowage_repo::RepoError::Locked(e))
                    if waited.elapsed() < std::time::Duration::from_secs(1800)
                        && !l.is_cancelled() =>
                {
                    if !logged {
                        tracing::info!(error = %e, "repository busy; the backup waits for it");
                        logged = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                other => break other?,
            }
        };
        if let Some(b) = &base_set {
            match repo.read_snapshot(&b.snapshot_id) {
                Ok(m) => {
                    opts.base = Some(stowage_engines::BaseSet {
                        id: b.id,
                        manifest: Arc::new(m),
                    })
                }
                Err(e) => {
                    tracing::warn!(set = b.id, error = %e, "could not read the newest set; taking a full backup")
                }
            }
        }
        let out = engine.backup(&spec, &opts, &mut w, &l)?;
        if l.is_cancelled() {
            return Err(EngineError::new(ErrorKind::Cancelled, "cancelled"));
        }
        l.set_state(TaskState::Finishing);
        let stats = w.stats();
        let (snap, m) = w.finish(labels, out.meta.clone())?;
        l.bytes_stored.store(
            stats.bytes_stored.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        Ok::<_, EngineError>((snap, m, out))
    });
    let mut mirror = Mirror::new(task.clone(), live.clone());
    let res = mirror.complete(&svc, work).await;
    let persisted = mirror.persisted;
    match res {
        Ok((snap, m, out)) => {
            // The retention in force now; a later policy change updates the set.
            let policy = match svc.catalog.backup_policy(&inst.account_id, &inst.id).await {
                Ok(p) => p.map(|p| p.policy).unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the backup policy; using the default");
                    Default::default()
                }
            };
            let set = NewSet {
                snapshot_id: snap,
                engine: inst.engine.clone(),
                engine_version: Some(out.engine_version.clone()),
                method: if task.method.is_empty() {
                    engine.method().into()
                } else {
                    task.method.clone()
                },
                started_ms: started,
                finished_ms: m.finished_ms,
                bytes_logical: m.summary.bytes_logical,
                bytes_stored: m.summary.bytes_stored_new,
                consistent_point: Some(out.consistent_point),
                meta: out.meta,
                expires_ms: Some(policy.expiry(m.finished_ms)),
                lease_epoch: svc.lease_of(t),
            };
            match svc
                .catalog
                .finish_backup_task(task.id, &set, now_ms())
                .await
            {
                Ok((_, s)) => tracing::info!(
                    task = task.id,
                    set = s.id,
                    bytes = s.bytes_logical,
                    stored = s.bytes_stored,
                    "backup finished"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "could not record the finished backup");
                    forget_unrecorded_snapshot(&svc, task.id, &set.snapshot_id, &e).await;
                    fail(
                        &svc,
                        t,
                        persisted,
                        &EngineError::new(
                            ErrorKind::Repository,
                            format!("could not record the backup set: {e}"),
                        ),
                    )
                    .await;
                }
            }
        }
        Err(e) => {
            tracing::warn!(task = task.id, error = %e.message, "backup failed");
            fail(&svc, t, persisted, &e).await;
        }
    }
    guard.disarm();
}

/// Deletes the snapshots no set names whose backup task has ended: a node
/// that died between writing its snapshot and recording the set, a set
/// deleted while the snapshot's deletion failed. Only snapshots this
/// catalog's backups wrote are judged (labelled with its `catalog_id`, a
/// backup task of the same account and instance); a task that has not
/// ended may still record its set. Best effort: a failure is logged and
/// the gc goes on. Returns how many.
fn forget_orphan_snapshots(s: &Service) -> u64 {
    match orphan_snapshots_pass(s) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "gc: could not look for snapshots no set names; the gc goes on");
            0
        }
    }
}

fn orphan_snapshots_pass(s: &Service) -> Result<u64, EngineError> {
    let rt = tokio::runtime::Handle::current();
    let cat = |e: stowage_catalog::CatalogError| {
        EngineError::new(ErrorKind::Busy, format!("catalog: {e}"))
    };
    let listed = s.repo.list_snapshots()?;
    let named: std::collections::HashSet<String> = rt
        .block_on(s.catalog.set_snapshot_ids())
        .map_err(cat)?
        .into_iter()
        .collect();
    let mut deleted = 0;
    for snap in listed.iter().filter(|n| !named.contains(*n)) {
        let m = match s.repo.read_snapshot(snap) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(snapshot = %snap, error = %e, "gc: could not read a snapshot no set names; kept");
                continue;
            }
        };
        if m.labels.get("catalog_id") != Some(&s.catalog_id) {
            continue;
        }
        let Some(task_id) = m.labels.get("task_id").and_then(|v| v.parse::<i64>().ok()) else {
            continue;
        };
        let Some(t) = rt.block_on(s.catalog.task_by_id(task_id)).map_err(cat)? else {
            continue;
        };
        if t.kind != stowage_core::TaskKind::Backup
            || !t.state.is_terminal()
            || m.labels.get("account_id") != Some(&t.account_id)
            || m.labels.get("instance_id") != t.instance_id.as_ref()
            // Recorded since the listing (its task has ended since).
            || rt.block_on(s.catalog.snapshot_named(snap)).map_err(cat)?
        {
            continue;
        }
        match s.repo.delete_snapshot(snap) {
            Ok(()) => {
                tracing::info!(snapshot = %snap, task = task_id, state = t.state.as_str(), "gc: deleted a snapshot no set names (its backup ended without recording it)");
                deleted += 1;
            }
            Err(e) => {
                tracing::warn!(snapshot = %snap, error = %e, "gc: could not delete an orphan snapshot")
            }
        }
    }
    Ok(deleted)
}

/// A backup whose set was refused because another node took the task over
/// while it finished (`LeaseLost`: refused inside the transaction, so
/// certainly not recorded) deletes the snapshot it wrote; the new attempt
/// writes its own. Any other failure to record leaves the snapshot to gc,
/// which judges it once the task has ended: a commit still in flight may
/// yet record the set.
async fn forget_unrecorded_snapshot(
    svc: &Arc<Service>,
    task_id: i64,
    snapshot: &str,
    why: &stowage_catalog::CatalogError,
) {
    if !matches!(why, stowage_catalog::CatalogError::LeaseLost(_)) {
        return;
    }
    let (repo, snap) = (svc.repo.clone(), snapshot.to_string());
    match tokio::task::spawn_blocking(move || repo.delete_snapshot(&snap)).await {
        Ok(Ok(())) => tracing::info!(
            task = task_id,
            snapshot,
            "deleted the snapshot of an attempt taken over; gc reclaims its data"
        ),
        Ok(Err(e)) => {
            tracing::warn!(task = task_id, snapshot, error = %e, "could not delete the snapshot of an attempt taken over; gc will")
        }
        Err(e) => {
            tracing::warn!(task = task_id, snapshot, error = %e, "could not delete the snapshot of an attempt taken over; gc will")
        }
    }
    svc.note_gc_needed().await;
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn clear_dir(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

fn fs_err(p: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::new(ErrorKind::Filesystem, format!("{}: {e}", p.display()))
}

/// What every restore starts with: the set's engine, the repository held
/// shared for the restore's life, the set's manifest.
fn open_set(
    svc: &Service,
    set: &BackupSet,
) -> Result<
    (
        &'static dyn stowage_engines::Engine,
        stowage_repo::lock::LockGuard,
        stowage_core::manifest::Manifest,
    ),
    EngineError,
> {
    let engine = stowage_engines::engine_for(&set.engine).ok_or_else(|| {
        EngineError::new(ErrorKind::Unsupported, format!("no engine {}", set.engine))
    })?;
    let lock = svc.repo.lock(LockKind::Shared, "restore")?;
    // Read packs where they are now (another process's gc may have
    // repacked them since this process read the index).
    svc.repo.refresh_index()?;
    let m = svc.repo.read_snapshot(&set.snapshot_id)?;
    Ok((engine, lock, m))
}

/// One part of a set, opened for export: the repository's shared lock is
/// held until it is dropped.
pub struct PartExport {
    engine: &'static dyn stowage_engines::Engine,
    _lock: stowage_repo::lock::LockGuard,
    manifest: stowage_core::manifest::Manifest,
    part: String,
    repo: Arc<stowage_repo::Repository>,
}

impl PartExport {
    /// Opens a part of `set` (its manifest read, the part checked): `part`,
    /// or by default the set's only part, or PostgreSQL's data directory.
    pub(crate) fn open(
        svc: &Service,
        set: &BackupSet,
        part: Option<&str>,
    ) -> Result<Self, EngineError> {
        let (engine, lock, m) = open_set(svc, set)?;
        let names: Vec<&str> = m.archives.iter().map(|a| a.name.as_str()).collect();
        let refuse = |why: String| Err(EngineError::new(ErrorKind::Unsupported, why));
        let part = match part {
            Some(p) if names.contains(&p) => p.to_string(),
            Some(p) => {
                return refuse(format!(
                    "set {} has no part {p:?} (its parts: {})",
                    set.id,
                    names.join(", ")
                ));
            }
            None if names.len() == 1 => names[0].to_string(),
            None if names.contains(&"base") => "base".to_string(),
            None => {
                return refuse(format!(
                    "set {} has several parts ({}): name the one to download",
                    set.id,
                    names.join(", ")
                ));
            }
        };
        Ok(PartExport {
            engine,
            _lock: lock,
            manifest: m,
            part,
            repo: svc.repo.clone(),
        })
    }

    /// The part's name.
    pub fn part(&self) -> &str {
        &self.part
    }

    /// The bytes of the part's files.
    pub fn file_bytes(&self) -> u64 {
        self.manifest
            .archives
            .iter()
            .filter(|a| a.name == self.part)
            .flat_map(|a| a.files.iter().map(|f| f.size))
            .sum()
    }

    /// Writes the part in its standard format (see `Engine::export_part`).
    pub fn write_to(
        &self,
        out: &mut dyn std::io::Write,
    ) -> Result<stowage_engines::export::ExportInfo, EngineError> {
        let info = self
            .engine
            .export_part(&self.repo, &self.manifest, &self.part, out)?;
        out.flush()
            .map_err(|e| EngineError::new(ErrorKind::Filesystem, format!("export stream: {e}")))?;
        Ok(info)
    }
}

/// Counts what goes through to the live task's progress.
struct Counting<W> {
    inner: W,
    live: Arc<LiveTask>,
}

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.live.is_cancelled() {
            return Err(std::io::Error::other("cancelled"));
        }
        let n = self.inner.write(b)?;
        self.live.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Packages one part of a set (through the engine's export) into
/// `<downloads>/<task>/<part>.tar`, written as `.part` and renamed when
/// complete: a link never names a half-written file.
fn download_work(
    svc: &Service,
    set: &BackupSet,
    part: Option<String>,
    task: i64,
    live: &Arc<LiveTask>,
) -> Result<serde_json::Value, EngineError> {
    live.set_state(TaskState::Checking);
    let export = PartExport::open(svc, set, part.as_deref())?;
    let part = export.part().to_string();
    live.bytes_total
        .store(export.file_bytes(), Ordering::Relaxed);
    live.set_state(TaskState::Preparing);
    let dir = svc.downloads.task_dir(task);
    let io = |e: std::io::Error| {
        let kind = if stowage_engines::io_is_transient(&e) {
            ErrorKind::Busy
        } else {
            ErrorKind::Repository
        };
        EngineError::new(kind, format!("{}: {e}", dir.display()))
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let file = format!("{part}.{}", export.engine.export_extension(&part));
    let tmp = dir.join(format!("{file}.part"));
    // A `.part` left by an earlier attempt is started over.
    let _ = std::fs::remove_file(&tmp);
    let out = crate::diskwriter::DiskWriter::create(&tmp).map_err(io)?;
    live.set_state(TaskState::Running);
    // Written while the export reads ahead on a thread of its own; synced
    // as it goes.
    let mut w = Counting {
        inner: out,
        live: live.clone(),
    };
    let t0 = std::time::Instant::now();
    let res = export.write_to(&mut w).and_then(|info| {
        let t_export = t0.elapsed();
        w.inner.finish().map_err(io)?;
        tracing::info!(
            task,
            bytes = info.bytes,
            export_ms = t_export.as_millis() as u64,
            sync_ms = (t0.elapsed() - t_export).as_millis() as u64,
            "download packaged"
        );
        Ok(info)
    });
    let info = match res {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            // A write refused because the task was cancelled.
            if live.is_cancelled() {
                return Err(EngineError::new(ErrorKind::Cancelled, "cancelled"));
            }
            return Err(e);
        }
    };
    std::fs::rename(&tmp, dir.join(&file)).map_err(io)?;
    // The rename itself durable too: a finished task's file is there after
    // a crash.
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    live.set_state(TaskState::Finishing);
    Ok(serde_json::json!({"part": part, "file": file, "bytes": info.bytes, "files": info.files}))
}

fn restore_work(
    svc: &Service,
    set: &BackupSet,
    target: &Path,
    force: bool,
    caller: &crate::restore_target::Caller,
    live: &LiveTask,
) -> Result<serde_json::Value, EngineError> {
    let refused = |e: crate::ServiceError| EngineError::new(ErrorKind::Filesystem, e.message);
    live.set_state(TaskState::Checking);
    let t0 = std::time::Instant::now();
    let repo = &svc.repo;
    let (engine, _lock, m) = open_set(svc, set)?;
    live.set_state(TaskState::Preparing);
    let targets = engine.restore_targets(&m, target)?;
    // Planned before anything is touched: a backup the plan refuses (paths
    // through its own symlinks) leaves the target as it was.
    let plan = restore::plan(&m, &repo.index(), &targets)?;
    // Every folder is checked again here, all of them before any is
    // cleared: they may have changed since the request was accepted.
    let mut to_clear = Vec::new();
    for (_, dir) in &targets {
        svc.restore_roots.check_dir(caller, dir).map_err(refused)?;
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(fs_err(dir))?
                .next()
                .is_some()
        {
            if !force {
                return Err(EngineError::new(
                    ErrorKind::Filesystem,
                    format!("restore target {} is not empty", dir.display()),
                ));
            }
            crate::restore_target::check_clearable(dir).map_err(refused)?;
            to_clear.push(dir);
        }
    }
    for dir in to_clear {
        clear_dir(dir).map_err(fs_err(dir))?;
    }
    for (_, dir) in &targets {
        crate::restore_target::create_private_dirs(dir).map_err(refused)?;
        // And where it now is, after creation.
        svc.restore_roots.check_dir(caller, dir).map_err(refused)?;
    }
    let t_plan = t0.elapsed();
    live.bytes_total.store(plan.total_bytes, Ordering::Relaxed);
    live.set_state(TaskState::Running);
    let opts = RestoreOptions {
        preserve_owner: is_root(),
        ..Default::default()
    };
    repo.restore(
        &plan,
        &opts,
        &|done, _| live.bytes_done.store(done, Ordering::Relaxed),
        live.cancel_flag(),
    )?;
    let t_data = t0.elapsed();
    live.set_state(TaskState::Finishing);
    engine.after_restore(&m, target, &targets, is_root())?;
    tracing::info!(
        target = %target.display(),
        bytes = plan.total_bytes,
        prepare_ms = t_plan.as_millis() as u64,
        data_ms = (t_data - t_plan).as_millis() as u64,
        finish_ms = (t0.elapsed() - t_data).as_millis() as u64,
        "restore done"
    );
    Ok(serde_json::json!({
        "target": target,
        "files": m.summary.files,
        "bytes": plan.total_bytes,
        "consistent_point": set.consistent_point,
    }))
}

/// How long a task that can repeat its work waits before each further
/// attempt after a transient failure; it fails once these are used up.
pub(crate) const RETRY_DELAYS_S: [u64; 3] = [5, 20, 80];

/// The wait after the transient failure of attempt `attempt + 1` (0 for
/// the first), before the next; `None` once the attempts are used up.
pub(crate) fn retry_delay(attempt: usize) -> Option<Duration> {
    RETRY_DELAYS_S.get(attempt).map(|s| Duration::from_secs(*s))
}

impl JobWork {
    /// Another copy of work that can be repeated without side effects (a
    /// download writes only its own file, which a failed attempt removes).
    fn again(&self) -> Option<JobWork> {
        match self {
            JobWork::Download { set, part } => Some(JobWork::Download {
                set: set.clone(),
                part: part.clone(),
            }),
            // Both only read or reclaim: a gc or verify that found the
            // repository locked (a backup through another node) tries again.
            JobWork::Verify { snapshot } => Some(JobWork::Verify {
                snapshot: snapshot.clone(),
            }),
            JobWork::Gc => Some(JobWork::Gc),
            _ => None,
        }
    }
}

fn do_work(
    s: &Service,
    t: i64,
    work: JobWork,
    l: &Arc<LiveTask>,
) -> Result<serde_json::Value, EngineError> {
    match work {
        JobWork::Restore {
            set,
            target,
            force,
            caller,
            slot,
        } => {
            // The account's restore slot is freed when the work ends.
            let _slot = slot;
            restore_work(s, &set, &target, force, &caller, l)
        }
        JobWork::RestoreInto { set, spec, opts } => {
            l.set_state(TaskState::Checking);
            let (engine, _lock, m) = open_set(s, &set)?;
            l.set_state(TaskState::Preparing);
            let r = engine.restore_into(&spec, &s.repo, &m, &opts, l)?;
            l.set_state(TaskState::Finishing);
            Ok(r)
        }
        JobWork::Verify { snapshot } => {
            l.set_state(TaskState::Checking);
            l.set_state(TaskState::Preparing);
            l.set_state(TaskState::Running);
            let progress = |done, total| {
                l.bytes_total.store(total, Ordering::Relaxed);
                l.bytes_done.store(done, Ordering::Relaxed);
            };
            let r = match snapshot {
                None => s.repo.verify(0, &progress)?,
                Some(name) => s.repo.verify_snapshot(&name, 0, &progress)?,
            };
            l.set_state(TaskState::Finishing);
            if r.ok() {
                Ok(serde_json::to_value(&r).expect("json"))
            } else {
                Err(EngineError::new(
                    ErrorKind::Repository,
                    format!(
                        "verify found {} problem(s); first: {}",
                        r.errors.len(),
                        r.errors[0]
                    ),
                ))
            }
        }
        JobWork::Download { set, part } => download_work(s, &set, part, t, l),
        JobWork::Gc => {
            l.set_state(TaskState::Checking);
            l.set_state(TaskState::Preparing);
            l.set_state(TaskState::Running);
            let orphans = forget_orphan_snapshots(s);
            let r = s.repo.gc()?;
            l.set_state(TaskState::Finishing);
            let mut v = serde_json::to_value(&r).expect("json");
            v["orphan_snapshots_deleted"] = orphans.into();
            Ok(v)
        }
    }
}

pub(crate) async fn run_job(svc: Arc<Service>, job: Task, work: JobWork, live: Arc<LiveTask>) {
    let t = job.id;
    let guard = SlotGuard::new(&svc, t, &live);
    tracing::info!(job = job.id, kind = %job.kind.as_str(), "job started");
    let mut next = Some(work);
    let mut persisted = job.state;
    let mut attempt = 0;
    while let Some(work) = next.take() {
        let again = work.again();
        let (s, l) = (svc.clone(), live.clone());
        let handle = tokio::task::spawn_blocking(move || do_work(&s, t, work, &l));
        let mut mirror = Mirror::new(job.clone(), live.clone());
        mirror.persisted = persisted;
        let res = mirror.complete(&svc, handle).await;
        persisted = mirror.persisted;
        match res {
            Ok(result) => {
                let u = StateUpdate {
                    progress: Some(live.overall_progress()),
                    result: Some(result),
                    ..Default::default()
                };
                if let Err(e) = persist_state(&svc, t, TaskState::Finished, u).await {
                    tracing::error!(error = %e, "could not record a finished job");
                }
                tracing::info!(job = job.id, "job finished");
            }
            Err(e) => {
                let delay = retry_delay(attempt).filter(|_| {
                    e.kind.is_transient() && again.is_some() && !svc.is_shutting_down()
                });
                if let Some(delay) = delay {
                    attempt += 1;
                    if wait_for_retry(&svc, t, &mut persisted, &live, attempt, delay, &e).await {
                        live.set_state(TaskState::Pending);
                        live.bytes_done.store(0, Ordering::Relaxed);
                        next = again;
                        continue;
                    }
                    let e = EngineError::new(ErrorKind::Cancelled, "cancelled");
                    fail(&svc, t, persisted, &e).await;
                    break;
                }
                tracing::warn!(job = job.id, error = %e.message, "job failed");
                if job.kind == stowage_core::TaskKind::Gc {
                    svc.note_gc_needed().await;
                }
                match attempt {
                    0 => fail(&svc, t, persisted, &e).await,
                    n => {
                        // No retry is coming: the result says how many were
                        // made instead of when the next one starts.
                        let e =
                            EngineError::new(e.kind, format!("{} (attempt {})", e.message, n + 1));
                        let result = serde_json::json!({"attempts": n + 1});
                        fail_with(&svc, t, persisted, &e, Some(result)).await;
                    }
                }
            }
        }
    }
    guard.disarm();
}

/// Records that attempt `attempt` failed transiently with `e` (the task
/// `retrying`, its result saying when the next attempt starts) and waits
/// `delay`. False if the task was cancelled (or the server shuts down)
/// meanwhile.
async fn wait_for_retry(
    svc: &Service,
    t: i64,
    persisted: &mut TaskState,
    live: &LiveTask,
    attempt: usize,
    delay: Duration,
    e: &EngineError,
) -> bool {
    tracing::warn!(job = t, attempt, error = %e.message, retry_in_s = delay.as_secs(), "job failed transiently; retrying");
    if *persisted == TaskState::Pending {
        // Failed before the mirror recorded a start.
        if persist_state(svc, t, TaskState::Checking, StateUpdate::default())
            .await
            .is_ok()
        {
            *persisted = TaskState::Checking;
        }
    }
    let u = StateUpdate {
        // The next attempt starts from nothing.
        progress: Some(Progress {
            bytes_done: 0,
            ..live.progress()
        }),
        result: Some(serde_json::json!({
            "attempt": attempt,
            "retry_at_ms": now_ms() + delay.as_millis() as i64,
            "error": e.message,
        })),
        ..Default::default()
    };
    match persist_state(svc, t, TaskState::Retrying, u).await {
        Ok(()) => *persisted = TaskState::Retrying,
        Err(err) => tracing::error!(job = t, error = %err, "could not record a retry"),
    }
    let until = std::time::Instant::now() + delay;
    while std::time::Instant::now() < until {
        if live.is_cancelled() || svc.is_shutting_down() {
            return false;
        }
        svc.renew_if_due(t, live).await;
        tokio::time::sleep(POLL).await;
    }
    !live.is_cancelled()
}
