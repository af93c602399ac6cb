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
        storage.put(
            FileType::Key,
            &kname,
            &serde_json::to_vec_pretty(&kf).expect("json"),
        )?;
        let config = RepoConfig::new(chunker);
        storage.put(
            FileType::Config,
            "config",
            &key.cipher()
                .seal(Role::Config, &serde_json::to_vec(&config).expect("json")),
        )?;
        Ok(Repository::assemble(storage, key, config))
    }

    fn assemble(storage: Arc<dyn Storage>, key: MasterKey, config: RepoConfig) -> Repository {
        Repository {
            storage,
            cipher: key.cipher(),
            key,
            config,
            index: RwLock::new(Arc::new(Index::default())),
            gc_mutex: Default::default(),
        }
    }

    /// Opens an existing repository and loads its index.
    pub fn open(storage: Arc<dyn Storage>, password: &str) -> Result<Repository, RepoError> {
        let keys = storage.list(FileType::Key)?;
        if keys.is_empty() {
            return Err(RepoError::NotInitialized(storage.location()));
        }
        let mut key = None;
        for (name, _) in keys {
            let bytes = storage.get(FileType::Key, &name)?;
            let kf: KeyFile = match serde_json::from_slice(&bytes) {
                Ok(kf) => kf,
                Err(_) => continue,
            };
            if let Ok(k) = kf.unwrap(password.as_bytes()) {
                key = Some(k);
                break;
            }
        }
        let key = key.ok_or_else(|| RepoError::WrongPassword(storage.location()))?;
        let cipher = key.cipher();
        let raw = match storage.get(FileType::Config, "config") {
            Err(StorageError::NotFound(_)) => {
                return Err(RepoError::NotInitialized(storage.location()));
            }
            r => r?,
        };
        let config: RepoConfig = serde_json::from_slice(&cipher.open(Role::Config, &raw)?)
            .map_err(|e| RepoError::Corrupt(format!("config: {e}")))?;
        if config.version != FORMAT_VERSION {
            return Err(RepoError::UnsupportedVersion(config.version));
        }
        let repo = Repository::assemble(storage, key, config);
        repo.reload_index()?;
        Ok(repo)
    }

    /// Opens the repository, creating it first if the storage is empty.
    pub fn open_or_init(
        storage: Arc<dyn Storage>,
        password: &str,
        chunker: ChunkerParams,
        kdf: KdfParams,
    ) -> Result<Repository, RepoError> {
        if storage.list(FileType::Key)?.is_empty() {
            Repository::init(storage, password, chunker, kdf)
        } else {
            Repository::open(storage, password)
        }
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
        let (idx, _) = self.read_all_index()?;
        *self.index.write().expect("index lock") = Arc::new(idx);
        Ok(())
    }

    /// The union of all index files, and the names of those files.
    pub(crate) fn read_all_index(&self) -> Result<(Index, Vec<String>), RepoError> {
        let mut idx = Index::default();
        let mut names = Vec::new();
        for (name, _) in self.storage.list(FileType::Index)? {
            let bytes = self.storage.get(FileType::Index, &name)?;
            let packs = index::decode(&bytes, &self.cipher)
                .map_err(|e| RepoError::Corrupt(format!("index {name}: {e}")))?;
            for (p, entries) in packs {
                idx.add_pack(p, &entries);
            }
            names.push(name);
        }
        Ok((idx, names))
    }

    pub fn index(&self) -> Arc<Index> {
        self.index.read().expect("index lock").clone()
    }

    pub(crate) fn commit_index(&self, new: &Index) {
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
