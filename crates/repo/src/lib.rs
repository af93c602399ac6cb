//! Stowage's repository: where backup sets live.
//!
//! The format is specified in `docs/repository-format.md`; this crate is its
//! implementation. Data flows
//!
//! ```text
//! bytes ─► Chunker (FastCDC, keyed) ─► keyed BLAKE3 id ─► dedup against Index
//!        ─► workers: zstd + XChaCha20-Poly1305 (all cores) ─► packer ─► Storage
//! ```
//!
//! and the write order is packs, then index, then snapshot: a snapshot only
//! ever names chunks whose packs and index entries are already durable.
//!
//! The crate is synchronous and runs its own threads; it has no async runtime.

pub mod chunker;
pub mod crypto;
pub mod gc;
pub mod index;
pub mod lock;
pub mod pack;
pub mod reader;
pub mod repo;
pub mod restore;
pub mod storage;
pub mod verify;
pub mod writer;

pub use chunker::ChunkerParams;
pub use crypto::KdfParams;
pub use reader::FileReader;
pub use repo::{RepoConfig, RepoError, Repository};
pub use storage::{FileType, LocalStorage, Storage, StorageError};
pub use writer::{ArchiveWriter, BackupStats, BackupWriter, FileMeta};

/// `n` worker threads, or one per core when `n` is 0.
pub(crate) fn threads_or_cores(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        n
    }
}
