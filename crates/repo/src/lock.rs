//! Repository locks: shared for writers and readers, exclusive for gc.
//!
//! A lock is an object `locks/<random id>` holding JSON
//! `{kind, hostname, pid, time_ms}`. A holder rewrites it every
//! [`REFRESH_MS`]; a lock is stale when it was not refreshed for
//! [`STALE_MS`], or when it names this host and a process that no longer
//! exists. Acquisition writes the lock, then re-reads the others, so two
//! processes that race both see each other and the exclusive one backs off.

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
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

/// Held lock; released (deleted) on drop.
pub struct LockGuard {
    storage: Arc<dyn Storage>,
    name: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

fn conflicts(mine: LockKind, other: LockKind) -> bool {
    mine == LockKind::Exclusive || other == LockKind::Exclusive
}

fn check_others(storage: &dyn Storage, me: &str, kind: LockKind) -> Result<(), LockError> {
    let host = hostname();
    let now = now_ms();
    for (name, _) in storage.list(FileType::Lock)? {
        if name == me {
            continue;
        }
        let Ok(bytes) = storage.get(FileType::Lock, &name) else {
            continue; // removed meanwhile
        };
        let Ok(info) = serde_json::from_slice::<LockInfo>(&bytes) else {
            continue;
        };
        if info.is_stale(now, &host) {
            let _ = storage.delete(FileType::Lock, &name);
            continue;
        }
        if conflicts(kind, info.kind) {
            return Err(LockError::Conflict {
                kind: info.kind,
                pid: info.pid,
                hostname: info.hostname,
                purpose: info.purpose,
                age_s: (now - info.time_ms) / 1000,
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
        check_others(&*storage, &name, kind)?;
        let info = LockInfo {
            kind,
            hostname: hostname(),
            pid: std::process::id(),
            time_ms: now_ms(),
            purpose: purpose.to_string(),
        };
        let write = |s: &dyn Storage, i: &LockInfo| {
            s.put(FileType::Lock, &name, &serde_json::to_vec(i).expect("json"))
        };
        write(&*storage, &info)?;
        if let Err(e) = check_others(&*storage, &name, kind) {
            let _ = storage.delete(FileType::Lock, &name);
            return Err(e);
        }
        // Dropping the sender wakes the refresher at once: releasing a lock
        // never waits for its next refresh.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let refresher = {
            let (storage, name) = (storage.clone(), name.clone());
            std::thread::Builder::new()
                .name("repo-lock".into())
                .spawn(move || {
                    let mut info = info;
                    let every = Duration::from_millis(REFRESH_MS as u64);
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(every)
                    {
                        info.time_ms = now_ms();
                        let _ = storage.put(
                            FileType::Lock,
                            &name,
                            &serde_json::to_vec(&info).expect("json"),
                        );
                    }
                })
                .expect("spawn lock refresher")
        };
        Ok(LockGuard {
            storage,
            name,
            stop: Some(stop),
            refresher: Some(refresher),
        })
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
}
