//! The narrow storage trait every repository backend implements, and the
//! local-folder backend.
//!
//! # Contract
//!
//! * `put` is atomic and durable: when it returns `Ok`, the whole object is
//!   stored and survives a crash; a reader never sees a partial object. A
//!   crash during `put` leaves either nothing or the whole object (plus, for
//!   the local backend, a temporary file under `tmp/` that `gc` removes).
//! * Objects are immutable once written, except `Lock` objects, which are
//!   rewritten to refresh them. Content-addressed names make a repeated `put`
//!   of the same name write the same bytes, so a retried `put` is harmless.
//! * `delete` of a missing object succeeds (deletion is idempotent).
//! * `get`/`get_range`/`stat` of a missing object return
//!   [`StorageError::NotFound`]; every other failure is `Io`/`Other` and may
//!   be transient.
//!
//! Every backend runs [`conformance::run`] in its tests.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Config,
    Key,
    Pack,
    Index,
    Snapshot,
    Lock,
}

impl FileType {
    pub const ALL: [FileType; 6] = [
        FileType::Config,
        FileType::Key,
        FileType::Pack,
        FileType::Index,
        FileType::Snapshot,
        FileType::Lock,
    ];

    pub fn dir(self) -> &'static str {
        match self {
            FileType::Config => "",
            FileType::Key => "keys",
            FileType::Pack => "data",
            FileType::Index => "index",
            FileType::Snapshot => "snapshots",
            FileType::Lock => "locks",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("invalid object name {0:?}")]
    InvalidName(String),
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Where a repository's objects live. Synchronous on purpose: the repository
/// pipeline runs on its own threads; an async backend (S3) bridges with a
/// runtime handle inside its implementation.
pub trait Storage: Send + Sync + 'static {
    /// Human-readable location, for messages (never contains credentials).
    fn location(&self) -> String;
    fn put(&self, ft: FileType, name: &str, data: &[u8]) -> StorageResult<()>;
    fn get(&self, ft: FileType, name: &str) -> StorageResult<Vec<u8>>;
    fn get_range(&self, ft: FileType, name: &str, offset: u64, len: u64) -> StorageResult<Vec<u8>>;
    /// Names and sizes of all objects of a type, in no particular order.
    fn list(&self, ft: FileType) -> StorageResult<Vec<(String, u64)>>;
    fn stat(&self, ft: FileType, name: &str) -> StorageResult<u64>;
    fn delete(&self, ft: FileType, name: &str) -> StorageResult<()>;
    /// Writes the object only if no object of that name exists: `Ok(false)`
    /// (and nothing written) when one does. Atomic: of two writers racing
    /// for one name exactly one gets `Ok(true)`.
    fn put_new(&self, ft: FileType, name: &str, data: &[u8]) -> StorageResult<bool>;
    /// When the object was last written, in ms since the epoch by the
    /// storage's own clock (the file system's, the object store's): locks
    /// compare these with each other, never with this machine's clock, so
    /// clock skew between nodes cannot make a live lock look stale.
    fn modified_ms(&self, ft: FileType, name: &str) -> StorageResult<i64>;
    /// How many `put`s a backup runs at once (packs upload while the next
    /// fills): a local disk gains little past two, an object store over the
    /// network more.
    fn write_concurrency(&self) -> usize {
        2
    }
}

/// Object names are lowercase hex, or `config` for the config object. Every
/// backend refuses other names (they could escape its layout).
pub fn valid_name(ft: FileType, name: &str) -> bool {
    if ft == FileType::Config {
        return name == "config";
    }
    (2..=128).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// A repository in a local folder.
///
/// Layout: `config`, `keys/<id>`, `data/<first two hex>/<id>`, `index/<id>`,
/// `snapshots/<id>`, `locks/<id>`, and `tmp/` for writes in flight. A write
/// goes to `tmp/`, is fsynced, renamed into place, and the directory is
/// fsynced, so an object is either absent or complete and durable.
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// Opens (creating the folder layout if needed) a local repository folder.
    pub fn new(root: impl Into<PathBuf>) -> StorageResult<LocalStorage> {
        let root = root.into();
        for d in ["keys", "data", "index", "snapshots", "locks", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
        }
        Ok(LocalStorage { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, ft: FileType, name: &str) -> StorageResult<PathBuf> {
        if !valid_name(ft, name) {
            return Err(StorageError::InvalidName(name.to_string()));
        }
        Ok(match ft {
            FileType::Config => self.root.join("config"),
            FileType::Pack => self.root.join("data").join(&name[..2]).join(name),
            _ => self.root.join(ft.dir()).join(name),
        })
    }

    /// Removes leftovers of interrupted writes.
    pub fn clean_tmp(&self) -> StorageResult<u64> {
        let dir = self.root.join("tmp");
        let mut n = 0;
        for e in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let e = e.map_err(|e| io_err(&dir, e))?;
            if fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn io_err(p: &Path, e: io::Error) -> StorageError {
    if e.kind() == io::ErrorKind::NotFound {
        StorageError::NotFound(p.display().to_string())
    } else {
        StorageError::Io {
            path: p.display().to_string(),
            source: e,
        }
    }
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).expect("OS randomness");
    hex::encode(b)
}

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, ft: FileType, name: &str, data: &[u8]) -> StorageResult<()> {
        let dest = self.path(ft, name)?;
        let parent = dest.parent().expect("object paths have a parent");
        if !parent.exists() {
            fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        let tmp = self.root.join("tmp").join(random_hex(16));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &dest)?;
            fsync_dir(parent)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(&dest, e)
        })
    }

    fn get(&self, ft: FileType, name: &str) -> StorageResult<Vec<u8>> {
        let p = self.path(ft, name)?;
        fs::read(&p).map_err(|e| io_err(&p, e))
    }

    fn get_range(&self, ft: FileType, name: &str, offset: u64, len: u64) -> StorageResult<Vec<u8>> {
        let p = self.path(ft, name)?;
        let read = || -> io::Result<Vec<u8>> {
            let mut f = File::open(&p)?;
            let size = f.metadata()?.len();
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("range {offset}+{len} beyond object size {size}"),
                ));
            }
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf)?;
            Ok(buf)
        };
        read().map_err(|e| io_err(&p, e))
    }

    fn list(&self, ft: FileType) -> StorageResult<Vec<(String, u64)>> {
        if ft == FileType::Config {
            return Ok(match fs::metadata(self.root.join("config")) {
                Ok(m) => vec![("config".to_string(), m.len())],
                Err(_) => vec![],
            });
        }
        let dir = self.root.join(ft.dir());
        let mut out = Vec::new();
        let mut dirs = vec![dir.clone()];
        while let Some(d) = dirs.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&d, e)),
            };
            for e in rd {
                let e = e.map_err(|e| io_err(&d, e))?;
                let ty = match e.file_type() {
                    Ok(t) => t,
                    // Removed since the directory was read.
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(io_err(&e.path(), err)),
                };
                if ty.is_dir() && ft == FileType::Pack && d == dir {
                    dirs.push(e.path());
                } else if ty.is_file() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if valid_name(ft, &name) {
                        // Removed between the directory read and the stat
                        // (a lock released, a pack collected): not listed.
                        match e.metadata() {
                            Ok(m) => out.push((name, m.len())),
                            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                            Err(err) => return Err(io_err(&e.path(), err)),
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn stat(&self, ft: FileType, name: &str) -> StorageResult<u64> {
        let p = self.path(ft, name)?;
        fs::metadata(&p).map(|m| m.len()).map_err(|e| io_err(&p, e))
    }

    fn delete(&self, ft: FileType, name: &str) -> StorageResult<()> {
        let p = self.path(ft, name)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p, e)),
        }
    }

    fn put_new(&self, ft: FileType, name: &str, data: &[u8]) -> StorageResult<bool> {
        let dest = self.path(ft, name)?;
        let parent = dest.parent().expect("object paths have a parent");
        if !parent.exists() {
            fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        let tmp = self.root.join("tmp").join(random_hex(16));
        // A hard link fails when the name exists: of two racing writers
        // exactly one links its complete, synced file into place.
        let write = || -> io::Result<bool> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            match fs::hard_link(&tmp, &dest) {
                Ok(()) => {
                    fsync_dir(parent)?;
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        };
        let r = write();
        let _ = fs::remove_file(&tmp);
        r.map_err(|e| io_err(&dest, e))
    }

    fn modified_ms(&self, ft: FileType, name: &str) -> StorageResult<i64> {
        let p = self.path(ft, name)?;
        let m = fs::metadata(&p)
            .and_then(|m| m.modified())
            .map_err(|e| io_err(&p, e))?;
        Ok(m.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0))
    }
}

/// The conformance suite: every backend must pass it.
pub mod conformance {
    use super::*;

    /// Runs every check against an empty storage. Panics on the first failure.
    pub fn run(s: &dyn Storage) {
        let name = "ab".to_string() + &"01".repeat(31);
        // Missing objects.
        assert!(matches!(
            s.get(FileType::Pack, &name),
            Err(StorageError::NotFound(_))
        ));
        assert!(matches!(
            s.stat(FileType::Index, &name),
            Err(StorageError::NotFound(_))
        ));
        assert!(s.list(FileType::Snapshot).unwrap().is_empty());
        // Delete of a missing object is fine.
        s.delete(FileType::Pack, &name).unwrap();
        // Round trip, stat, list, range.
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for ft in [
            FileType::Pack,
            FileType::Index,
            FileType::Snapshot,
            FileType::Key,
            FileType::Lock,
        ] {
            s.put(ft, &name, &data).unwrap();
            assert_eq!(s.get(ft, &name).unwrap(), data);
            assert_eq!(s.stat(ft, &name).unwrap(), data.len() as u64);
            assert_eq!(s.get_range(ft, &name, 1000, 10).unwrap(), &data[1000..1010]);
            assert_eq!(s.get_range(ft, &name, 0, 0).unwrap(), Vec::<u8>::new());
            assert!(
                s.get_range(ft, &name, 99_990, 20).is_err(),
                "range past the end"
            );
            let listed = s.list(ft).unwrap();
            assert_eq!(listed, vec![(name.clone(), data.len() as u64)]);
        }
        // Types are separate namespaces.
        s.delete(FileType::Index, &name).unwrap();
        assert!(s.get(FileType::Pack, &name).is_ok());
        assert!(s.get(FileType::Index, &name).is_err());
        // Rewriting (locks are refreshed this way) replaces the content.
        s.put(FileType::Lock, &name, b"second").unwrap();
        assert_eq!(s.get(FileType::Lock, &name).unwrap(), b"second");
        // Create-only writes: exactly one of racing writers wins, the
        // loser writes nothing.
        let fresh = "cd".to_string() + &"02".repeat(31);
        assert!(s.put_new(FileType::Key, &fresh, b"first").unwrap());
        assert!(!s.put_new(FileType::Key, &fresh, b"second").unwrap());
        assert_eq!(s.get(FileType::Key, &fresh).unwrap(), b"first");
        let racers: Vec<bool> = std::thread::scope(|sc| {
            let fresh = &fresh;
            let hs: Vec<_> = (0..4u8)
                .map(|i| sc.spawn(move || s.put_new(FileType::Snapshot, fresh, &[i; 64]).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(racers.iter().filter(|w| **w).count(), 1, "{racers:?}");
        assert_eq!(s.get(FileType::Snapshot, &fresh).unwrap().len(), 64);
        s.delete(FileType::Key, &fresh).unwrap();
        s.delete(FileType::Snapshot, &fresh).unwrap();
        // Modification times by the storage's clock: a rewrite moves them on
        // (locks are judged by them; object stores keep whole seconds).
        assert!(matches!(
            s.modified_ms(FileType::Lock, &fresh),
            Err(StorageError::NotFound(_))
        ));
        s.put(FileType::Lock, &fresh, b"1").unwrap();
        let t1 = s.modified_ms(FileType::Lock, &fresh).unwrap();
        let local = crate::lock::now_ms();
        assert!((t1 - local).abs() < 10 * 60_000, "{t1} vs {local}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        s.put(FileType::Lock, &fresh, b"2").unwrap();
        let t2 = s.modified_ms(FileType::Lock, &fresh).unwrap();
        assert!(t2 > t1, "rewrite did not move the time: {t1} → {t2}");
        s.delete(FileType::Lock, &fresh).unwrap();
        // Config has its own name.
        s.put(FileType::Config, "config", b"cfg").unwrap();
        assert_eq!(s.get(FileType::Config, "config").unwrap(), b"cfg");
        assert_eq!(s.list(FileType::Config).unwrap().len(), 1);
        // Names that could escape the layout are refused.
        for bad in ["../x", "a/b", "", "ZZ", "config"] {
            assert!(s.put(FileType::Pack, bad, b"x").is_err(), "{bad}");
        }
        // Many objects list completely.
        for i in 0..300u32 {
            s.put(FileType::Pack, &format!("{:064x}", i), &i.to_le_bytes())
                .unwrap();
        }
        assert_eq!(s.list(FileType::Pack).unwrap().len(), 301);
        for i in 0..300u32 {
            s.delete(FileType::Pack, &format!("{:064x}", i)).unwrap();
        }
        for ft in [
            FileType::Pack,
            FileType::Snapshot,
            FileType::Key,
            FileType::Lock,
        ] {
            s.delete(ft, &name).unwrap();
            assert!(s.list(ft).unwrap().is_empty(), "{ft:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_storage_conforms() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path()).unwrap();
        conformance::run(&s);
        assert_eq!(s.clean_tmp().unwrap(), 0);
    }
}
