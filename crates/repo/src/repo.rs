//! Opening, creating and reading a repository.

use crate::chunker::ChunkerParams;
use crate::crypto::{Cipher, CryptoError, KdfParams, KeyFile, MasterKey, Role};
use crate::index::{self, Index};
use crate::lock::{self, LockError, LockGuard, LockKind};
use crate::storage::{FileType, Storage, StorageError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use stowage_core::manifest::Manifest;

pub const FORMAT_VERSION: u32 = 1;

/// `config`, sealed with the master key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub version: u32,
    /// Random id of this repository (hex).
    pub id: String,
    pub chunker: ChunkerParams,
    /// Target size of a pack file in bytes.
    pub pack_size: u32,
    /// zstd level for chunks.
    pub compression_level: i32,
}

impl RepoConfig {
    pub fn new(chunker: ChunkerParams) -> RepoConfig {
        RepoConfig {
            version: FORMAT_VERSION,
            id: hex::encode(crate::crypto::random_bytes::<16>()),
            chunker,
            pack_size: 16 * 1024 * 1024,
            compression_level: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no repository at {0}: run init first")]
    NotInitialized(String),
    #[error("a repository already exists at {0}")]
    AlreadyInitialized(String),
    #[error("wrong repository password: no key file in {0} opens with it")]
    WrongPassword(String),
    #[error(
        "repository format version {0} is not supported by this build (supports {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    #[error("repository data is damaged: {0}")]
    Corrupt(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("invalid parameter: {0}")]
    Invalid(String),
    #[error("operation cancelled")]
    Cancelled,
    #[error("{0}")]
    Io(String),
}

impl From<CryptoError> for RepoError {
    fn from(e: CryptoError) -> Self {
        RepoError::Corrupt(e.to_string())
    }
}

pub struct Repository {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) key: MasterKey,
    pub(crate) cipher: Cipher,
    pub(crate) config: RepoConfig,
    /// Committed index: every entry is in an index file whose packs exist.
    pub(crate) index: RwLock<Arc<Index>>,
    /// The index files `index` was read from (or written by this process):
    /// another process's files since are found by listing, a gc's removals
    /// by their absence (`refresh_index`).
    pub(crate) index_files: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Serialises index reloads and gc inside one process.
    pub(crate) gc_mutex: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.storage.location())
            .field("id", &self.config.id)
            .finish()
    }
}

impl Repository {
    /// Creates a new repository in empty storage.
    pub fn init(
        storage: Arc<dyn Storage>,
        password: &str,
        chunker: ChunkerParams,
        kdf: KdfParams,
    ) -> Result<Repository, RepoError> {
        chunker.validate().map_err(RepoError::Invalid)?;
        if !storage.list(FileType::Config)?.is_empty() || !storage.list(FileType::Key)?.is_empty() {
            return Err(RepoError::AlreadyInitialized(storage.location()));
        }
        let key = MasterKey::generate();
        let kf = KeyFile::wrap(
            &key,
            password.as_bytes(),
            kdf,
            lock::now_ms(),
            &lock::hostname(),
        )?;
        let kname = hex::encode(crate::crypto::random_bytes::<16>());
        let config = RepoConfig::new(chunker);
        // The key file first, then the config, create-only: of several
        // nodes initialising one empty storage at once exactly one config
        // is written; the others remove their key and open that one
        // (`open_or_init`). A start stopped between the two leaves a key
        // without a config, which `open_or_init` completes.
        storage.put(
            FileType::Key,
            &kname,
            &serde_json::to_vec_pretty(&kf).expect("json"),
        )?;
        let sealed = key
            .cipher()
            .seal(Role::Config, &serde_json::to_vec(&config).expect("json"));
        if !storage.put_new(FileType::Config, "config", &sealed)? {
            // Ours after all? (A create retried after its answer was lost
            // finds its own object.)
            if let Some(c) = Repository::config_under(&*storage, &key)? {
                return Ok(Repository::assemble(storage, key, c));
            }
            let _ = storage.delete(FileType::Key, &kname);
            return Err(RepoError::AlreadyInitialized(storage.location()));
        }
        Ok(Repository::assemble(storage, key, config))
    }

    /// The config, if it exists and opens with `key`.
    fn config_under(
        storage: &dyn Storage,
        key: &MasterKey,
    ) -> Result<Option<RepoConfig>, RepoError> {
        let raw = match storage.get(FileType::Config, "config") {
            Err(StorageError::NotFound(_)) => return Ok(None),
            r => r?,
        };
        let Ok(plain) = key.cipher().open(Role::Config, &raw) else {
            return Ok(None);
        };
        let config: RepoConfig = serde_json::from_slice(&plain)
            .map_err(|e| RepoError::Corrupt(format!("config: {e}")))?;
        if config.version != FORMAT_VERSION {
            return Err(RepoError::UnsupportedVersion(config.version));
        }
        Ok(Some(config))
    }

    /// The master keys the password opens.
    fn keys_for(storage: &dyn Storage, password: &str) -> Result<Vec<MasterKey>, RepoError> {
        let mut out = Vec::new();
        for (name, _) in storage.list(FileType::Key)? {
            let bytes = match storage.get(FileType::Key, &name) {
                Ok(b) => b,
                // Removed meanwhile (a node that lost an init race).
                Err(StorageError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let Ok(kf) = serde_json::from_slice::<KeyFile>(&bytes) else {
                continue;
            };
            if let Ok(k) = kf.unwrap(password.as_bytes()) {
                out.push(k);
            }
        }
        Ok(out)
    }

    fn assemble(storage: Arc<dyn Storage>, key: MasterKey, config: RepoConfig) -> Repository {
        Repository {
            storage,
            cipher: key.cipher(),
            key,
            config,
            index: RwLock::new(Arc::new(Index::default())),
            index_files: Default::default(),
            gc_mutex: Default::default(),
        }
    }

    /// Opens an existing repository and loads its index. Every key file
    /// the password opens is tried against the config (a key of a node that
    /// lost an init race may linger for a moment).
    pub fn open(storage: Arc<dyn Storage>, password: &str) -> Result<Repository, RepoError> {
        if storage.list(FileType::Key)?.is_empty() {
            return Err(RepoError::NotInitialized(storage.location()));
        }
        let keys = Repository::keys_for(&*storage, password)?;
        if keys.is_empty() {
            return Err(RepoError::WrongPassword(storage.location()));
        }
        if storage.list(FileType::Config)?.is_empty() {
            return Err(RepoError::NotInitialized(storage.location()));
        }
        for key in keys {
            if let Some(config) = Repository::config_under(&*storage, &key)? {
                let repo = Repository::assemble(storage, key, config);
                repo.reload_index()?;
                return Ok(repo);
            }
        }
        Err(RepoError::Corrupt(
            "the config does not open with any key the password opens".into(),
        ))
    }

    /// Opens the repository, creating it first if the storage is empty.
    /// Several nodes may call this at once on one empty storage: one
    /// creates it, the others open it. Keys without a config (a start that
    /// stopped between the two, or another node's init in progress) are
    /// completed after a few seconds with a key the password opens.
    pub fn open_or_init(
        storage: Arc<dyn Storage>,
        password: &str,
        chunker: ChunkerParams,
        kdf: KdfParams,
    ) -> Result<Repository, RepoError> {
        for attempt in 0..40 {
            if storage.list(FileType::Key)?.is_empty() {
                match Repository::init(storage.clone(), password, chunker, kdf) {
                    Err(RepoError::AlreadyInitialized(_)) => {}
                    r => return r,
                }
            }
            match Repository::open(storage.clone(), password) {
                Err(RepoError::NotInitialized(_)) => {
                    if attempt >= 12 {
                        // Still no config: complete the init with a key
                        // the password opens (nothing can have been
                        // written without a config).
                        chunker.validate().map_err(RepoError::Invalid)?;
                        if let Some(key) = Repository::keys_for(&*storage, password)?.pop() {
                            let config = RepoConfig::new(chunker);
                            let sealed = key
                                .cipher()
                                .seal(Role::Config, &serde_json::to_vec(&config).expect("json"));
                            if storage.put_new(FileType::Config, "config", &sealed)? {
                                tracing::warn!(
                                    "the repository had a key but no config (an interrupted init); completed it"
                                );
                                return Ok(Repository::assemble(storage, key, config));
                            }
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                r => return r,
            }
        }
        Err(RepoError::NotInitialized(storage.location()))
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn location(&self) -> String {
        self.storage.location()
    }

    /// Reads every index file again.
    pub fn reload_index(&self) -> Result<(), RepoError> {
        let (idx, names) = self.read_all_index()?;
        let mut files = self.index_files.lock().expect("index files");
        *self.index.write().expect("index lock") = Arc::new(idx);
        *files = names.into_iter().collect();
        Ok(())
    }

    /// Brings the in-memory index up to the repository's index files, as
    /// other processes (another node, a `stowage` command, a gc) left them.
    /// Call it holding the repository's lock, so the files cannot change
    /// under the caller afterwards: a backup deduplicates only against
    /// chunks whose packs a gc cannot be deleting, a restore reads packs
    /// where they are now. Files only added since are read alone; any file
    /// gone (a gc rewrote the index) reloads everything.
    pub fn refresh_index(&self) -> Result<(), RepoError> {
        let listed: std::collections::BTreeSet<String> = self
            .storage
            .list(FileType::Index)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut files = self.index_files.lock().expect("index files");
        if *files == listed {
            return Ok(());
        }
        if !files.is_subset(&listed) {
            drop(files);
            return self.reload_index();
        }
        let mut idx = (*self.index()).clone();
        let mut read = Vec::new();
        for name in listed.difference(&files) {
            self.read_index_file(name, &mut idx)?;
            read.push(name.clone());
        }
        *self.index.write().expect("index lock") = Arc::new(idx);
        files.extend(read);
        Ok(())
    }

    /// The union of all index files, and the names of those files.
    pub(crate) fn read_all_index(&self) -> Result<(Index, Vec<String>), RepoError> {
        let mut idx = Index::default();
        let mut names = Vec::new();
        for (name, _) in self.storage.list(FileType::Index)? {
            self.read_index_file(&name, &mut idx)?;
            names.push(name);
        }
        Ok((idx, names))
    }

    /// Adds one index file's entries to `idx`.
    fn read_index_file(&self, name: &str, idx: &mut Index) -> Result<(), RepoError> {
        let bytes = self.storage.get(FileType::Index, name)?;
        let packs = index::decode(&bytes, &self.cipher)
            .map_err(|e| RepoError::Corrupt(format!("index {name}: {e}")))?;
        for (p, entries) in packs {
            idx.add_pack(p, &entries);
        }
        Ok(())
    }

    pub fn index(&self) -> Arc<Index> {
        self.index.read().expect("index lock").clone()
    }

    /// Adds a backup's new index file (`name`, holding `new`) to the
    /// in-memory index.
    pub(crate) fn commit_index(&self, name: &str, new: &Index) {
        self.index_files
            .lock()
            .expect("index files")
            .insert(name.to_string());
        let mut g = self.index.write().expect("index lock");
        let mut merged = (**g).clone();
        merged.merge(new);
        *g = Arc::new(merged);
    }

    pub fn lock(&self, kind: LockKind, purpose: &str) -> Result<LockGuard, RepoError> {
        Ok(LockGuard::acquire(self.storage.clone(), kind, purpose)?)
    }

    pub(crate) fn write_snapshot(&self, m: &Manifest) -> Result<String, RepoError> {
        let json = serde_json::to_vec(m).expect("json");
        let z = zstd::bulk::compress(&json, 3).map_err(|e| RepoError::Io(e.to_string()))?;
        let bytes = self.cipher.seal(Role::Snapshot, &z);
        let name = hex::encode(blake3::hash(&bytes).as_bytes());
        self.storage.put(FileType::Snapshot, &name, &bytes)?;
        Ok(name)
    }

    pub fn read_snapshot(&self, name: &str) -> Result<Manifest, RepoError> {
        let bytes = match self.storage.get(FileType::Snapshot, name) {
            Err(StorageError::NotFound(_)) | Err(StorageError::InvalidName(_)) => {
                return Err(RepoError::SnapshotNotFound(name.to_string()));
            }
            r => r?,
        };
        if hex::encode(blake3::hash(&bytes).as_bytes()) != name {
            return Err(RepoError::Corrupt(format!(
                "snapshot {name}: content does not match its name"
            )));
        }
        let z = self.cipher.open(Role::Snapshot, &bytes)?;
        let json = zstd::stream::decode_all(&z[..])
            .map_err(|e| RepoError::Corrupt(format!("snapshot {name}: {e}")))?;
        serde_json::from_slice(&json)
            .map_err(|e| RepoError::Corrupt(format!("snapshot {name}: {e}")))
    }

    pub fn list_snapshots(&self) -> Result<Vec<String>, RepoError> {
        let mut v: Vec<String> = self
            .storage
            .list(FileType::Snapshot)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        v.sort();
        Ok(v)
    }

    /// Forgets a snapshot. Its data stays until `gc` finds it unreferenced.
    pub fn delete_snapshot(&self, name: &str) -> Result<(), RepoError> {
        self.storage.delete(FileType::Snapshot, name)?;
        Ok(())
    }

    /// Checks that every chunk a manifest names is in the committed index and
    /// that the packs holding them exist with the recorded size. This is the
    /// check a backup must pass before it is reported finished.
    pub fn check_manifest_complete(&self, m: &Manifest) -> Result<(), RepoError> {
        let idx = self.index();
        let mut packs = std::collections::HashMap::new();
        for id in m.chunk_ids() {
            let loc = idx
                .get(id)
                .ok_or_else(|| RepoError::Corrupt(format!("chunk {id} is not in the index")))?;
            let end = loc.blob_end();
            let e = packs.entry(loc.pack).or_insert(0u64);
            *e = (*e).max(end);
        }
        for (pack, min_len) in packs {
            let name = hex::encode(idx.pack_id(pack));
            let size = self
                .storage
                .stat(FileType::Pack, &name)
                .map_err(|e| match e {
                    StorageError::NotFound(_) => {
                        RepoError::Corrupt(format!("pack {name} is missing"))
                    }
                    e => e.into(),
                })?;
            if size < min_len {
                return Err(RepoError::Corrupt(format!(
                    "pack {name} is shorter ({size}) than its index says ({min_len})"
                )));
            }
        }
        Ok(())
    }

    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// Total bytes of all packs.
    pub fn stored_bytes(&self) -> Result<u64, RepoError> {
        Ok(self
            .storage
            .list(FileType::Pack)?
            .iter()
            .map(|(_, s)| s)
            .sum())
    }
}
