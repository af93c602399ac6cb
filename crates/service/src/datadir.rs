//! One process owns a data directory at a time.
//!
//! `stowage serve` takes an exclusive `flock` on `<data-dir>/stowage.lock`
//! before it reads the catalog and holds it for its whole life; the file
//! holds the owner's PID so that a second server can say who has it. The
//! kernel drops the lock when the process dies (even by SIGKILL), so a
//! crashed server never leaves a stale lock behind.

use crate::{ErrorKind, ServiceError, ServiceResult};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "stowage.lock";

/// Held for the life of the server; dropping it releases the data directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the data directory, or says which process holds it.
    pub fn acquire(data_dir: &Path) -> ServiceResult<DataDirLock> {
        let path = data_dir.join(LOCK_FILE);
        // Not truncated on open: the holder's PID must survive a failed attempt.
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| ServiceError::internal(format!("{}: {e}", path.display())))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                return Err(ServiceError::new(
                    ErrorKind::Conflict,
                    format!(
                        "data directory {} is in use by {who} (another `stowage serve`?); \
                         stop it first, or use another --data-dir",
                        data_dir.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(ServiceError::internal(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )));
            }
        }
        let pid = std::process::id();
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{pid}")?;
            f.sync_all()
        };
        write(&mut f).map_err(|e| ServiceError::internal(format!("{}: {e}", path.display())))?;
        Ok(DataDirLock { _file: f, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_pid() {
        let d = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(d.path()).unwrap();
        let e = DataDirLock::acquire(d.path()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(
            e.message
                .contains(&format!("process {}", std::process::id())),
            "{}",
            e.message
        );
        drop(first);
        DataDirLock::acquire(d.path()).expect("free again after the holder ends");
    }
}
