//! Repository locks: shared for writers and readers, exclusive for gc.
//!
//! A lock is an object `locks/<random id>` holding JSON
//! `{kind, hostname, pid, time_ms, purpose}`. A holder rewrites it every
//! [`REFRESH_MS`]. A lock is stale when, by the storage's own clock, it was
//! last written more than [`STALE_MS`] before the lock being acquired (both
//! times are the storage's modification times, so clock skew between the
//! machines sharing a repository does not matter), or when it names this
//! host and a process that no longer exists. Acquisition writes the lock,
//! then reads the others, so two processes that race both see each other
//! and the exclusive one backs off. A holder that could not refresh its
//! lock for long enough that others may take it for stale, or whose lock
//! was removed, finds out through [`LockGuard::ensure_held`] before it
//! writes anything that names data (an index, a snapshot) or deletes any.

use crate::storage::{FileType, Storage};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const REFRESH_MS: i64 = 60_000;
pub const STALE_MS: i64 = 10 * 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub kind: LockKind,
    pub hostname: String,
    pub pid: u32,
    pub time_ms: i64,
    #[serde(default)]
    pub purpose: String,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl LockInfo {
    pub fn is_stale(&self, now: i64, my_host: &str) -> bool {
        now - self.time_ms > STALE_MS || (self.hostname == my_host && !pid_alive(self.pid))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "repository is locked ({kind:?} lock by pid {pid} on {hostname} for {purpose}, refreshed {age_s} s ago)"
    )]
    Conflict {
        kind: LockKind,
        pid: u32,
        hostname: String,
        purpose: String,
        age_s: i64,
    },
    #[error("the repository lock was lost: {0}; the work done under it is abandoned")]
    Lost(String),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

/// Held lock; released (deleted) on drop.
pub struct LockGuard {
    storage: Arc<dyn Storage>,
    name: String,
    /// When the lock object was last written successfully.
    refreshed: Arc<std::sync::Mutex<std::time::Instant>>,
    /// The refresher found the lock object gone (another process took it
    /// for stale): it is not written again, and the holder must stop.
    lost: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

fn conflicts(mine: LockKind, other: LockKind) -> bool {
    mine == LockKind::Exclusive || other == LockKind::Exclusive
}

/// Checks every other lock against `kind`; `my_time` is the storage's
/// modification time of the lock just written, the storage's "now".
fn check_others(
    storage: &dyn Storage,
    me: &str,
    kind: LockKind,
    my_time: i64,
) -> Result<(), LockError> {
    let host = hostname();
    for (name, _) in storage.list(FileType::Lock)? {
        if name == me {
            continue;
        }
        // Either read failing: removed meanwhile.
        let Ok(bytes) = storage.get(FileType::Lock, &name) else {
            continue;
        };
        let Ok(written) = storage.modified_ms(FileType::Lock, &name) else {
            continue;
        };
        let Ok(info) = serde_json::from_slice::<LockInfo>(&bytes) else {
            continue;
        };
        let age = my_time - written;
        if age > STALE_MS || (info.hostname == host && !pid_alive(info.pid)) {
            tracing::info!(lock = %name, holder = %info.hostname, pid = info.pid, age_s = age / 1000, "removing a stale repository lock");
            let _ = storage.delete(FileType::Lock, &name);
            continue;
        }
        if conflicts(kind, info.kind) {
            return Err(LockError::Conflict {
                kind: info.kind,
                pid: info.pid,
                hostname: info.hostname,
                purpose: info.purpose,
                age_s: age.max(0) / 1000,
            });
        }
    }
    Ok(())
}

impl LockGuard {
    pub fn acquire(
        storage: Arc<dyn Storage>,
        kind: LockKind,
        purpose: &str,
    ) -> Result<LockGuard, LockError> {
        let name = hex::encode(crate::crypto::random_bytes::<16>());
        let info = LockInfo {
            kind,
            hostname: hostname(),
            pid: std::process::id(),
            time_ms: now_ms(),
            purpose: purpose.to_string(),
        };
        storage.put(
            FileType::Lock,
            &name,
            &serde_json::to_vec(&info).expect("json"),
        )?;
        let checked = storage
            .modified_ms(FileType::Lock, &name)
            .map_err(LockError::from)
            .and_then(|now| check_others(&*storage, &name, kind, now));
        if let Err(e) = checked {
            let _ = storage.delete(FileType::Lock, &name);
            return Err(e);
        }
        let refreshed = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Dropping the sender wakes the refresher at once: releasing a lock
        // never waits for its next refresh.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let refresher = {
            let (storage, name, refreshed, lost) = (
                storage.clone(),
                name.clone(),
                refreshed.clone(),
                lost.clone(),
            );
            std::thread::Builder::new()
                .name("repo-lock".into())
                .spawn(move || {
                    let mut info = info;
                    let every = Duration::from_millis(REFRESH_MS as u64);
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(every)
                    {
                        info.time_ms = now_ms();
                        let t = std::time::Instant::now();
                        // Removed by another process: never written again
                        // (that process may be collecting this holder's
                        // unindexed packs right now).
                        if let Err(crate::storage::StorageError::NotFound(_)) =
                            storage.stat(FileType::Lock, &name)
                        {
                            tracing::warn!(lock = %name, "the repository lock was removed by another process");
                            lost.store(true, std::sync::atomic::Ordering::Release);
                            break;
                        }
                        match storage.put(
                            FileType::Lock,
                            &name,
                            &serde_json::to_vec(&info).expect("json"),
                        ) {
                            Ok(()) => *refreshed.lock().expect("lock time") = t,
                            Err(e) => {
                                tracing::warn!(error = %e, "could not refresh the repository lock")
                            }
                        }
                    }
                })
                .expect("spawn lock refresher")
        };
        Ok(LockGuard {
            storage,
            name,
            refreshed,
            lost,
            stop: Some(stop),
            refresher: Some(refresher),
        })
    }

    /// Fails when others may no longer see this lock: it was not refreshed
    /// for long enough that it may be taken for stale (a long storage
    /// outage, a paused process), or its object is gone. Called before
    /// anything that names data or deletes any.
    pub fn ensure_held(&self) -> Result<(), LockError> {
        if self.lost.load(std::sync::atomic::Ordering::Acquire) {
            return Err(LockError::Lost(
                "another process removed it as stale".into(),
            ));
        }
        let since = self.refreshed.lock().expect("lock time").elapsed();
        // A margin of two refreshes under the stale age.
        if since > Duration::from_millis((STALE_MS - 2 * REFRESH_MS) as u64) {
            return Err(LockError::Lost(format!(
                "it was last refreshed {} s ago",
                since.as_secs()
            )));
        }
        match self.storage.stat(FileType::Lock, &self.name) {
            Ok(_) => Ok(()),
            Err(crate::storage::StorageError::NotFound(_)) => Err(LockError::Lost(
                "another process removed it as stale".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        let _ = self.storage.delete(FileType::Lock, &self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    #[test]
    fn shared_locks_coexist_exclusive_does_not() {
        let d = tempfile::tempdir().unwrap();
        let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
        let a = LockGuard::acquire(s.clone(), LockKind::Shared, "backup").unwrap();
        let b = LockGuard::acquire(s.clone(), LockKind::Shared, "backup").unwrap();
        assert!(LockGuard::acquire(s.clone(), LockKind::Exclusive, "gc").is_err());
        drop(a);
        drop(b);
        let x = LockGuard::acquire(s.clone(), LockKind::Exclusive, "gc").unwrap();
        let err = LockGuard::acquire(s.clone(), LockKind::Shared, "backup")
            .err()
            .unwrap();
        assert!(err.to_string().contains("gc"), "{err}");
        drop(x);
        assert!(s.list(FileType::Lock).unwrap().is_empty());
    }

    #[test]
    fn stale_lock_of_dead_process_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
        let dead = LockInfo {
            kind: LockKind::Exclusive,
            hostname: hostname(),
            pid: u32::MAX - 1,
            time_ms: now_ms(),
            purpose: "gc".into(),
        };
        s.put(FileType::Lock, "00ff", &serde_json::to_vec(&dead).unwrap())
            .unwrap();
        let _g = LockGuard::acquire(s.clone(), LockKind::Shared, "backup").unwrap();
    }

    /// Staleness is judged by the storage's clock: a lock whose holder's
    /// clock runs far behind (its `time_ms` an hour old) is live while its
    /// object is fresh, and one not rewritten for longer than STALE_MS is
    /// stale whatever time it claims.
    #[test]
    fn staleness_is_judged_by_the_storages_clock_not_the_holders() {
        let d = tempfile::tempdir().unwrap();
        let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
        let other = |time_ms: i64| LockInfo {
            kind: LockKind::Exclusive,
            hostname: "another-node".into(),
            pid: 1,
            time_ms,
            purpose: "gc".into(),
        };
        s.put(
            FileType::Lock,
            "00aa",
            &serde_json::to_vec(&other(now_ms() - 3_600_000)).unwrap(),
        )
        .unwrap();
        let e = LockGuard::acquire(s.clone(), LockKind::Shared, "backup")
            .err()
            .expect("a fresh lock of a skewed clock holds");
        assert!(e.to_string().contains("gc"), "{e}");
        // The object last written 11 minutes ago (by the storage's clock),
        // claiming to be fresh.
        s.put(
            FileType::Lock,
            "00aa",
            &serde_json::to_vec(&other(now_ms() + 3_600_000)).unwrap(),
        )
        .unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(d.path().join("locks/00aa"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(11 * 60))
            .unwrap();
        let g = LockGuard::acquire(s.clone(), LockKind::Shared, "backup").unwrap();
        assert!(
            s.stat(FileType::Lock, "00aa").is_err(),
            "the stale lock is removed"
        );
        g.ensure_held().unwrap();
        // Removed by another process (as stale): the holder finds out.
        for (n, _) in s.list(FileType::Lock).unwrap() {
            s.delete(FileType::Lock, &n).unwrap();
        }
        assert!(matches!(g.ensure_held(), Err(LockError::Lost(_))));
    }

    /// Many holders of one process taking and releasing shared locks at
    /// once (a lock released while another lists them is not an error):
    /// every acquisition succeeds.
    #[test]
    fn concurrent_shared_locks_of_one_process_all_succeed() {
        let d = tempfile::tempdir().unwrap();
        let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let g = LockGuard::acquire(s.clone(), LockKind::Shared, "download")
                            .expect("shared lock");
                        g.ensure_held().expect("held");
                        drop(g);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(s.list(FileType::Lock).unwrap().is_empty());
    }
}
