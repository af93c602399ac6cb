//! The backup pipeline.
//!
//! The caller's thread chunks the stream and hashes each chunk (cheap), and
//! looks the id up in the committed index and in this backup's own set of new
//! chunks. Only new chunks go on, gathered into compression groups of about
//! [`GROUP_TARGET`] bytes of consecutive chunks: N worker threads compress and
//! seal groups in parallel, one packer thread appends them to packs and writes
//! each full pack. Channels between the stages are bounded, so memory stays
//! flat however large the backup: at most `QUEUE` groups wait per stage and
//! one pack is being filled.
//!
//! `finish` writes, in this order: the last pack, one index file for all packs
//! of this backup, and the snapshot. Then it checks that every chunk the
//! snapshot names resolves to a durable pack. A writer dropped before
//! `finish` (error, cancel, crash) leaves only packs no index names; `gc`
//! reclaims them.

use crate::chunker::Chunker;
use crate::crypto::{Cipher, MasterKey, Role};
use crate::index::{self, Index, PackId};
use crate::lock::{self, LockGuard, LockKind};
use crate::pack::{BlobEntry, Compression, PackBuilder};
use crate::repo::{RepoError, Repository};
use crate::storage::FileType;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use stowage_core::manifest::{
    Archive, ChunkId, FileEntry, FileKind, MANIFEST_VERSION, Manifest, Summary,
};

const QUEUE: usize = 8;

/// Consecutive new chunks are compressed together up to about this size:
/// zstd on 64 KiB pieces loses a sixth of its ratio on database pages
/// compared with a mebibyte of context (see bench/README.md).
pub const GROUP_TARGET: usize = 1024 * 1024;

/// Counters readable while the backup runs.
#[derive(Debug, Default)]
pub struct BackupStats {
    /// Bytes of file content handed to the writer.
    pub bytes_in: AtomicU64,
    /// Bytes of packs written to storage so far.
    pub bytes_stored: AtomicU64,
    pub chunks_total: AtomicU64,
    pub chunks_new: AtomicU64,
}

/// Metadata of one entry as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub path: String,
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub link_target: Option<String>,
}

/// A compression group: consecutive new chunks, concatenated.
struct Job {
    data: Vec<u8>,
    chunks: Vec<(ChunkId, u32)>,
}

struct Sealed {
    sealed: Vec<u8>,
    raw_len: u32,
    compression: Compression,
    chunks: Vec<(ChunkId, u32)>,
}

type PackerResult = Result<Vec<(PackId, Vec<BlobEntry>)>, RepoError>;

pub struct BackupWriter {
    repo: Arc<Repository>,
    workers: Vec<JoinHandle<()>>,
    packer: Option<JoinHandle<PackerResult>>,
    failure: Arc<Mutex<Option<String>>>,
    stats: Arc<BackupStats>,
    /// The sequential stream (`begin_archive`, `begin_file`, `write` …).
    stream: Stream,
    /// Finished archives, in the order they were completed.
    archives: Vec<Archive>,
    /// Archive writers handed out and not yet added back.
    outstanding: Arc<AtomicU64>,
    started_ms: i64,
    lock: LockGuard,
}

/// One archive of a backup written on a thread of its own, at the same time
/// as others ([`BackupWriter::archive_writer`]): its own chunker and
/// compression groups, the backup's shared deduplication, workers and packer.
/// Hand it back with [`BackupWriter::add_archive`]; dropped instead, its
/// archive is simply not part of the set.
pub struct ArchiveWriter {
    stream: Stream,
    failure: Arc<Mutex<Option<String>>>,
    outstanding: Arc<AtomicU64>,
}

impl Repository {
    /// Starts a backup with `threads` compression workers (0 = one per core).
    pub fn start_backup(self: &Arc<Self>, threads: usize) -> Result<BackupWriter, RepoError> {
        let lock = self.lock(LockKind::Shared, "backup")?;
        // Deduplicate only against the index files as they are now, under
        // the lock: another process's gc may have deleted packs this
        // process's index still names.
        self.refresh_index()?;
        let threads = crate::threads_or_cores(threads);
        let failure = Arc::new(Mutex::new(None));
        let stats = Arc::new(BackupStats::default());
        let (tx, rx) = bounded::<Job>(QUEUE);
        let (stx, srx) = bounded::<Sealed>(QUEUE);
        let mut workers = Vec::new();
        for i in 0..threads {
            let (rx, stx, cipher, level) = (
                rx.clone(),
                stx.clone(),
                self.cipher.clone(),
                self.config.compression_level,
            );
            workers.push(
                std::thread::Builder::new()
                    .name(format!("backup-seal-{i}"))
                    .spawn(move || seal_worker(rx, stx, cipher, level))
                    .map_err(|e| RepoError::Io(e.to_string()))?,
            );
        }
        drop(stx);
        let packer = {
            let (repo, failure, stats) = (self.clone(), failure.clone(), stats.clone());
            std::thread::Builder::new()
                .name("backup-packer".into())
                .spawn(move || packer(repo, srx, failure, stats))
                .map_err(|e| RepoError::Io(e.to_string()))?
        };
        let dedup = Dedup {
            key: self.key.clone(),
            committed: self.index(),
            seen: Default::default(),
            tx: Some(tx),
            stats: stats.clone(),
            ids: Vec::new(),
            stopped: false,
            group: Vec::with_capacity(GROUP_TARGET + 512 * 1024),
            group_chunks: Vec::new(),
        };
        Ok(BackupWriter {
            stream: Stream::new(self, dedup, None),
            repo: self.clone(),
            workers,
            packer: Some(packer),
            failure,
            stats,
            archives: Vec::new(),
            outstanding: Default::default(),
            started_ms: lock::now_ms(),
            lock,
        })
    }
}

/// Chunking and file bookkeeping of one archive being written.
struct Stream {
    chunker: Chunker,
    dedup: Dedup,
    /// `None` until the first archive begins (the sequential API then
    /// names it "base").
    archive: Option<Archive>,
    current: Option<FileEntry>,
}

impl Stream {
    fn new(repo: &Repository, dedup: Dedup, archive: Option<Archive>) -> Stream {
        Stream {
            chunker: Chunker::new(repo.config.chunker, repo.key.chunker_seed()),
            dedup,
            archive,
            current: None,
        }
    }

    fn archive(&mut self) -> &mut Archive {
        self.archive.get_or_insert_with(|| Archive {
            name: "base".into(),
            source_location: None,
            files: Vec::new(),
        })
    }

    fn begin_file(
        &mut self,
        meta: FileMeta,
        failure: &Mutex<Option<String>>,
    ) -> Result<(), RepoError> {
        self.end_file_if_open(failure)?;
        if !stowage_core::manifest::is_safe_relative_path(&meta.path) {
            return Err(RepoError::Invalid(format!(
                "unsafe path in backup stream: {:?}",
                meta.path
            )));
        }
        self.current = Some(FileEntry {
            path: meta.path,
            kind: meta.kind,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
            size: 0,
            link_target: meta.link_target,
            chunks: Vec::new(),
        });
        Ok(())
    }

    /// Begins a file whose content starts with `prefix`'s (a file of a
    /// committed set: its chunks are referenced, not read again); what is
    /// written next follows it.
    fn begin_file_after(
        &mut self,
        meta: FileMeta,
        prefix: &FileEntry,
        failure: &Mutex<Option<String>>,
    ) -> Result<(), RepoError> {
        if let Some(missing) = prefix
            .chunks
            .iter()
            .find(|c| !self.dedup.committed.contains(c))
        {
            return Err(RepoError::Invalid(format!(
                "{}: chunk {} of the set built on is not in the repository",
                prefix.path,
                missing.to_hex()
            )));
        }
        self.begin_file(meta, failure)?;
        let cur = self.current.as_mut().expect("open file");
        cur.size = prefix.size;
        cur.chunks = prefix.chunks.clone();
        self.dedup
            .stats
            .chunks_total
            .fetch_add(prefix.chunks.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write(&mut self, data: &[u8], failure: &Mutex<Option<String>>) -> Result<(), RepoError> {
        let Some(cur) = self.current.as_mut() else {
            return Err(RepoError::Invalid("write without an open file".into()));
        };
        cur.size += data.len() as u64;
        self.dedup
            .stats
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let ids = self.chunk(Some(data), failure)?;
        self.current.as_mut().expect("open file").chunks.extend(ids);
        Ok(())
    }

    fn end_file(&mut self, failure: &Mutex<Option<String>>) -> Result<(), RepoError> {
        let ids = self.chunk(None, failure)?;
        if let Some(mut f) = self.current.take() {
            f.chunks.extend(ids);
            self.archive().files.push(f);
        }
        Ok(())
    }

    fn end_file_if_open(&mut self, failure: &Mutex<Option<String>>) -> Result<(), RepoError> {
        if self.current.is_some() {
            self.end_file(failure)
        } else {
            Ok(())
        }
    }

    /// Chunks `data` (or, with `None`, what is left of the file) and returns
    /// the ids of the chunks completed.
    fn chunk(
        &mut self,
        data: Option<&[u8]>,
        failure: &Mutex<Option<String>>,
    ) -> Result<Vec<ChunkId>, RepoError> {
        let d = &mut self.dedup;
        match data {
            Some(x) => self.chunker.push(x, &mut |c| d.submit(c)),
            None => self.chunker.finish(&mut |c| d.submit(c)),
        }
        let ids = std::mem::take(&mut d.ids);
        if d.stopped {
            check_failed(failure)?;
            return Err(RepoError::Io("backup pipeline stopped".into()));
        }
        Ok(ids)
    }

    /// Ends the open file, sends the last compression group, and gives the
    /// archive (if one was begun or written to).
    fn close(&mut self, failure: &Mutex<Option<String>>) -> Result<Option<Archive>, RepoError> {
        self.end_file_if_open(failure)?;
        self.dedup.flush();
        if self.dedup.stopped {
            check_failed(failure)?;
            return Err(RepoError::Io("backup pipeline stopped".into()));
        }
        Ok(self.archive.take())
    }
}

fn check_failed(failure: &Mutex<Option<String>>) -> Result<(), RepoError> {
    match &*failure.lock().expect("failure lock") {
        Some(e) => Err(RepoError::Io(format!(
            "writing to the repository failed: {e}"
        ))),
        None => Ok(()),
    }
}

fn seal_worker(rx: Receiver<Job>, tx: Sender<Sealed>, cipher: Cipher, level: i32) {
    let mut zc = zstd::bulk::Compressor::new(level).expect("zstd compressor");
    for job in rx {
        let raw_len = job.data.len() as u32;
        let (payload, compression) = match zc.compress(&job.data) {
            Ok(z) if z.len() < job.data.len() => (z, Compression::Zstd),
            _ => (job.data, Compression::None),
        };
        let sealed = cipher.seal(Role::Chunk, &payload);
        if tx
            .send(Sealed {
                sealed,
                raw_len,
                compression,
                chunks: job.chunks,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Appends sealed groups to packs; each full pack goes to uploader threads
/// (as many as the storage writes at once, [`crate::storage::Storage::write_concurrency`])
/// through a one-slot queue, so the next pack fills while others upload and
/// at most `uploaders + 2` packs are in memory. A pack is only recorded
/// once its `put` returned (a backend verifies its writes before that).
fn packer(
    repo: Arc<Repository>,
    rx: Receiver<Sealed>,
    failure: Arc<Mutex<Option<String>>>,
    stats: Arc<BackupStats>,
) -> PackerResult {
    let target = repo.config.pack_size as usize;
    let done = Mutex::new(Vec::new());
    let error: Mutex<Option<RepoError>> = Mutex::new(None);
    let failed = || failure.lock().expect("failure lock").is_some();
    let (utx, urx) = bounded::<(String, Vec<u8>, Vec<BlobEntry>)>(1);
    std::thread::scope(|sc| {
        for i in 0..repo.storage.write_concurrency().max(1) {
            let urx = urx.clone();
            let (repo, done, error, failure, stats) = (&repo, &done, &error, &failure, &stats);
            std::thread::Builder::new()
                .name(format!("repo-upload-{i}"))
                .spawn_scoped(sc, move || {
                    for (name, bytes, entries) in urx {
                        if failure.lock().expect("failure lock").is_some() {
                            continue;
                        }
                        match repo.storage.put(FileType::Pack, &name, &bytes) {
                            Ok(()) => {
                                stats
                                    .bytes_stored
                                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                                let mut id = [0u8; 32];
                                hex::decode_to_slice(&name, &mut id).expect("hex name");
                                done.lock().expect("done").push((id, entries));
                            }
                            Err(e) => {
                                let mut f = failure.lock().expect("failure lock");
                                if f.is_none() {
                                    *f = Some(e.to_string());
                                    *error.lock().expect("error") = Some(e.into());
                                }
                            }
                        }
                    }
                })
                .expect("spawn uploader");
        }
        drop(urx);
        let mut pack = PackBuilder::new(target + target / 8);
        for s in rx {
            // Keep draining after an error so workers never block; drop the data.
            if failed() {
                continue;
            }
            pack.add(&s.sealed, s.raw_len, s.compression, &s.chunks);
            if pack.len() >= target {
                let full = std::mem::replace(&mut pack, PackBuilder::new(target + target / 8));
                if utx.send(full.finish(&repo.cipher)).is_err() {
                    break;
                }
            }
        }
        if !pack.is_empty() && !failed() {
            let _ = utx.send(pack.finish(&repo.cipher));
        }
        drop(utx);
    });
    match error.into_inner().expect("error") {
        Some(e) => Err(e),
        None => Ok(done.into_inner().expect("done")),
    }
}

impl BackupWriter {
    pub fn stats(&self) -> Arc<BackupStats> {
        self.stats.clone()
    }

    /// Whether every chunk of `f` (a file of a committed set) is in the
    /// index this backup deduplicates against: it can then be reused
    /// ([`ArchiveWriter::reuse_file`]).
    pub fn holds_file(&self, f: &FileEntry) -> bool {
        f.chunks
            .iter()
            .all(|c| self.stream.dedup.committed.contains(c))
    }

    /// Starts a new archive (a data directory, a tablespace, a shard …).
    pub fn begin_archive(
        &mut self,
        name: &str,
        source_location: Option<String>,
    ) -> Result<(), RepoError> {
        if let Some(a) = self.stream.close(&self.failure)? {
            self.push_archive(a);
        }
        self.stream.archive = Some(Archive {
            name: name.to_string(),
            source_location,
            files: Vec::new(),
        });
        Ok(())
    }

    /// A writer of another archive that may run on another thread at the
    /// same time as this one and other archive writers. Every writer handed
    /// out must be added back ([`BackupWriter::add_archive`]) or dropped
    /// before [`BackupWriter::finish`].
    pub fn archive_writer(&self, name: &str, source_location: Option<String>) -> ArchiveWriter {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        let dedup = self.stream.dedup.sibling();
        ArchiveWriter {
            stream: Stream::new(
                &self.repo,
                dedup,
                Some(Archive {
                    name: name.to_string(),
                    source_location,
                    files: Vec::new(),
                }),
            ),
            failure: self.failure.clone(),
            outstanding: self.outstanding.clone(),
        }
    }

    /// Takes a finished archive writer's archive into the set (archives keep
    /// the order they are first added in; the files of writers of the same
    /// archive name go into one archive, so several threads can fill one).
    pub fn add_archive(&mut self, mut w: ArchiveWriter) -> Result<(), RepoError> {
        if let Some(a) = self.stream.close(&self.failure)? {
            self.push_archive(a);
        }
        if let Some(a) = w.stream.close(&w.failure)? {
            self.push_archive(a);
        }
        Ok(())
    }

    fn push_archive(&mut self, a: Archive) {
        match self.archives.iter_mut().find(|x| x.name == a.name) {
            Some(x) => x.files.extend(a.files),
            None => self.archives.push(a),
        }
    }

    /// Adds a directory, symlink or empty file with no content to stream.
    pub fn add_entry(&mut self, meta: FileMeta) -> Result<(), RepoError> {
        self.begin_file(meta)?;
        self.end_file()
    }

    pub fn begin_file(&mut self, meta: FileMeta) -> Result<(), RepoError> {
        self.stream.begin_file(meta, &self.failure)
    }

    /// Appends content to the open file.
    pub fn write(&mut self, data: &[u8]) -> Result<(), RepoError> {
        self.stream.write(data, &self.failure)
    }

    pub fn end_file(&mut self) -> Result<(), RepoError> {
        self.stream.end_file(&self.failure)
    }

    fn shutdown(&mut self) -> PackerResult {
        self.stream.dedup.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.packer.take() {
            Some(p) => p
                .join()
                .map_err(|_| RepoError::Io("packer thread panicked".into()))?,
            None => Ok(Vec::new()),
        }
    }

    /// Makes the backup durable: last pack, index, snapshot, completeness
    /// check. Returns the snapshot id and the manifest.
    pub fn finish(
        mut self,
        labels: BTreeMap<String, String>,
        engine_meta: serde_json::Value,
    ) -> Result<(String, Manifest), RepoError> {
        if let Some(a) = self.stream.close(&self.failure)? {
            self.push_archive(a);
        }
        // Every archive writer must be back (or dropped): the workers end
        // only when no stream can send to them any more.
        let out = self.outstanding.load(Ordering::Acquire);
        if out > 0 {
            return Err(RepoError::Invalid(format!(
                "{out} archive writer(s) still open at finish"
            )));
        }
        let packs = self.shutdown()?;
        let mut new_index = Index::default();
        for (p, entries) in &packs {
            new_index.add_pack(*p, entries);
        }
        // Only under a lock others still see: a gc that took this one for
        // stale may have deleted the packs just written (not yet indexed).
        self.lock.ensure_held()?;
        if !packs.is_empty() {
            let (name, bytes) = index::encode(&packs, &self.repo.cipher);
            self.repo.storage.put(FileType::Index, &name, &bytes)?;
            self.stats
                .bytes_stored
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            self.repo.commit_index(&name, &new_index);
        }
        let files = self.archives.iter().map(|a| a.files.len() as u64).sum();
        let bytes_logical = self
            .archives
            .iter()
            .flat_map(|a| &a.files)
            .map(|f| f.size)
            .sum();
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            started_ms: self.started_ms,
            finished_ms: lock::now_ms(),
            hostname: lock::hostname(),
            labels,
            archives: std::mem::take(&mut self.archives),
            summary: Summary {
                files,
                bytes_logical,
                bytes_stored_new: self.stats.bytes_stored.load(Ordering::Relaxed),
                chunks_total: self.stats.chunks_total.load(Ordering::Relaxed),
                chunks_new: self.stats.chunks_new.load(Ordering::Relaxed),
            },
            engine_meta,
        };
        self.repo.check_manifest_complete(&manifest)?;
        self.lock.ensure_held()?;
        let id = self.repo.write_snapshot(&manifest)?;
        Ok((id, manifest))
    }
}

/// Names each chunk and sends the ones the repository lacks to the workers.
struct Dedup {
    key: MasterKey,
    /// The index as committed when the backup started.
    committed: Arc<Index>,
    /// Chunks this backup already sent (shared by its archive writers).
    seen: Arc<Mutex<HashSet<ChunkId>>>,
    tx: Option<Sender<Job>>,
    stats: Arc<BackupStats>,
    /// Ids of the chunks cut since the last `chunk` call.
    ids: Vec<ChunkId>,
    /// The workers are gone (an error stopped the pipeline).
    stopped: bool,
    /// The compression group being filled.
    group: Vec<u8>,
    group_chunks: Vec<(ChunkId, u32)>,
}

impl Dedup {
    /// The same backup's deduplication for another stream.
    fn sibling(&self) -> Dedup {
        Dedup {
            key: self.key.clone(),
            committed: self.committed.clone(),
            seen: self.seen.clone(),
            tx: self.tx.clone(),
            stats: self.stats.clone(),
            ids: Vec::new(),
            stopped: false,
            group: Vec::with_capacity(GROUP_TARGET + 512 * 1024),
            group_chunks: Vec::new(),
        }
    }

    fn submit(&mut self, c: &[u8]) {
        let id = self.key.chunk_id(c);
        self.ids.push(id);
        self.stats.chunks_total.fetch_add(1, Ordering::Relaxed);
        if self.committed.contains(&id) || !self.seen.lock().expect("seen lock").insert(id) {
            return;
        }
        self.stats.chunks_new.fetch_add(1, Ordering::Relaxed);
        self.group.extend_from_slice(c);
        self.group_chunks.push((id, c.len() as u32));
        if self.group.len() >= GROUP_TARGET {
            self.flush();
        }
    }

    /// Sends the group being filled to the workers.
    fn flush(&mut self) {
        if self.group_chunks.is_empty() {
            return;
        }
        let job = Job {
            data: std::mem::replace(
                &mut self.group,
                Vec::with_capacity(GROUP_TARGET + 512 * 1024),
            ),
            chunks: std::mem::take(&mut self.group_chunks),
        };
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            self.stopped = true;
        }
    }
}

impl ArchiveWriter {
    /// Adds a directory, symlink or empty file with no content to stream.
    pub fn add_entry(&mut self, meta: FileMeta) -> Result<(), RepoError> {
        self.begin_file(meta)?;
        self.end_file()
    }

    pub fn begin_file(&mut self, meta: FileMeta) -> Result<(), RepoError> {
        self.stream.begin_file(meta, &self.failure)
    }

    /// Appends content to the open file.
    pub fn write(&mut self, data: &[u8]) -> Result<(), RepoError> {
        self.stream.write(data, &self.failure)
    }

    pub fn end_file(&mut self) -> Result<(), RepoError> {
        self.stream.end_file(&self.failure)
    }

    /// Abandons the open file: it is not part of the archive. What it had
    /// sent is stored but named by no snapshot (gc reclaims it). For a
    /// read that must start over (a MongoDB snapshot read the server gave up).
    pub fn discard_file(&mut self) {
        self.stream.chunker.reset();
        // Its chunks are not part of the set (those it stored stay counted
        // as stored).
        let named = self.stream.dedup.ids.len()
            + self.stream.current.as_ref().map_or(0, |f| f.chunks.len());
        self.stream
            .dedup
            .stats
            .chunks_total
            .fetch_sub(named as u64, Ordering::Relaxed);
        self.stream.dedup.ids.clear();
        self.stream.current = None;
    }

    /// Takes a file of a committed set into this archive as it is: its
    /// chunks are referenced, not read or stored again (a logical engine
    /// building on the dump of an earlier set). Refused if a chunk is not
    /// in the repository's index.
    pub fn reuse_file(&mut self, f: &FileEntry) -> Result<(), RepoError> {
        self.continue_file(f)?;
        self.end_file()
    }

    /// Begins a file that starts with the content of `f` (a file of a
    /// committed set, by reference) under the same path and metadata;
    /// [`ArchiveWriter::write`] appends to it.
    pub fn continue_file(&mut self, f: &FileEntry) -> Result<(), RepoError> {
        let meta = FileMeta {
            path: f.path.clone(),
            kind: f.kind,
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
            mtime: f.mtime,
            link_target: f.link_target.clone(),
        };
        self.stream.begin_file_after(meta, f, &self.failure)
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        // Its sender goes with it, so the workers can end.
        self.stream.dedup.tx.take();
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        // Abandoned (error or cancel): stop the threads. Packs already written
        // are named by no index and are reclaimed by gc. While archive
        // writers are still out, the workers end only when those are
        // dropped: do not wait for them here.
        self.stream.dedup.tx.take();
        if self.outstanding.load(Ordering::Acquire) > 0 {
            self.workers.clear();
            self.packer.take();
            return;
        }
        let _ = self.shutdown();
    }
}
