//! Restore: a plan first, then parallel execution.
//!
//! [`plan`] maps each needed chunk to the places it goes (file, offset) and
//! groups chunks by pack, so each pack is read once. Worker threads take
//! packs from a queue, read the span of the pack that holds the needed
//! chunks, check each chunk's MAC and id, and write it with positional writes
//! into files created at their final size. Metadata (mode, owner, mtime) is
//! applied after all data is written, directories last.

use crate::index::Index;
use crate::pack::{Compression, open_blob};
use crate::repo::{RepoError, Repository};
use crate::storage::FileType;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use stowage_core::manifest::{ChunkId, FileEntry, FileKind, Manifest, is_safe_relative_path};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Set each file's owner to the uid/gid recorded in the backup (needs root).
    pub preserve_owner: bool,
    /// Call fsync on every file and directory before returning.
    pub fsync: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            threads: 0,
            preserve_owner: false,
            fsync: true,
        }
    }
}

struct Dest {
    file: usize,
    offset: u64,
}

/// A chunk to take out of a blob, and where it goes.
struct ChunkWork {
    id: ChunkId,
    offset: u32,
    len: u32,
    dests: Vec<Dest>,
}

/// A blob to open, and the chunks needed from it.
struct BlobWork {
    offset: u32,
    stored_len: u32,
    raw_len: u32,
    compression: Compression,
    chunks: Vec<ChunkWork>,
}

/// The blobs to read from one pack (by position in the index), in order.
type PackWork = (u32, Vec<BlobWork>);

pub struct RestorePlan {
    /// (target path, entry) for every entry of the restored archives.
    entries: Vec<(PathBuf, FileEntry)>,
    /// pack position → chunks to read from it (sorted by offset) and their destinations.
    packs: Vec<PackWork>,
    pub total_bytes: u64,
}

/// Plans the restore of `archives` (index into `m.archives`, target folder).
pub fn plan(
    m: &Manifest,
    idx: &Index,
    targets: &[(usize, PathBuf)],
) -> Result<RestorePlan, RepoError> {
    let mut entries = Vec::new();
    let mut by_chunk: HashMap<ChunkId, Vec<Dest>> = HashMap::new();
    let mut total = 0u64;
    // Nothing may be written through a link the restore itself creates: per
    // target folder (several archives may share one), a path is restored at
    // most once, and no path lies at or below a symlink entry but the link.
    let mut links: HashMap<&Path, std::collections::HashSet<&str>> = HashMap::new();
    let mut seen: std::collections::HashSet<(&Path, &str)> = Default::default();
    for (ai, root) in targets {
        let archive = m
            .archives
            .get(*ai)
            .ok_or_else(|| RepoError::Invalid(format!("no archive #{ai}")))?;
        let l = links.entry(root.as_path()).or_default();
        for f in archive.files.iter().filter(|f| f.kind == FileKind::Symlink) {
            l.insert(f.path.as_str());
        }
    }
    for (ai, root) in targets {
        let archive = &m.archives[*ai];
        let links = &links[root.as_path()];
        for f in &archive.files {
            if !is_safe_relative_path(&f.path) {
                return Err(RepoError::Corrupt(format!(
                    "unsafe path {:?} in manifest",
                    f.path
                )));
            }
            if !seen.insert((root.as_path(), f.path.as_str())) {
                return Err(RepoError::Corrupt(format!(
                    "unsafe manifest: {:?} is restored twice into the same folder",
                    f.path
                )));
            }
            if !links.is_empty()
                && (f
                    .path
                    .match_indices('/')
                    .any(|(i, _)| links.contains(&f.path[..i]))
                    || (f.kind != FileKind::Symlink && links.contains(f.path.as_str())))
            {
                return Err(RepoError::Corrupt(format!(
                    "unsafe path {:?} in manifest: it lies at or below a symlink of the same backup",
                    f.path
                )));
            }
            let fi = entries.len();
            let mut off = 0u64;
            for c in &f.chunks {
                let loc = idx.get(c).ok_or_else(|| {
                    RepoError::Corrupt(format!("chunk {c} of {} is not in the index", f.path))
                })?;
                by_chunk.entry(*c).or_default().push(Dest {
                    file: fi,
                    offset: off,
                });
                off += loc.chunk_len as u64;
            }
            if f.kind == FileKind::File && off != f.size {
                return Err(RepoError::Corrupt(format!(
                    "{}: chunks add up to {off} bytes, size is {}",
                    f.path, f.size
                )));
            }
            total += f.size;
            entries.push((root.join(&f.path), f.clone()));
        }
    }
    let mut packs: HashMap<u32, std::collections::BTreeMap<u32, BlobWork>> = HashMap::new();
    for (id, dests) in by_chunk {
        let loc = idx.get(&id).expect("checked above");
        let blob = packs
            .entry(loc.pack)
            .or_default()
            .entry(loc.blob_offset)
            .or_insert_with(|| BlobWork {
                offset: loc.blob_offset,
                stored_len: loc.blob_stored_len,
                raw_len: loc.blob_raw_len,
                compression: loc.compression,
                chunks: Vec::new(),
            });
        blob.chunks.push(ChunkWork {
            id,
            offset: loc.chunk_offset,
            len: loc.chunk_len,
            dests,
        });
    }
    let mut packs: Vec<PackWork> = packs
        .into_iter()
        .map(|(p, blobs)| (p, blobs.into_values().collect()))
        .collect();
    packs.sort_by_key(|(p, _)| *p);
    Ok(RestorePlan {
        entries,
        packs,
        total_bytes: total,
    })
}

fn io<E: std::fmt::Display>(what: &Path) -> impl FnOnce(E) -> RepoError + '_ {
    move |e| RepoError::Io(format!("{}: {e}", what.display()))
}

impl Repository {
    /// Carries out a restore plan. `progress(done, total)` is called as data
    /// is written; `cancel` is polled between packs.
    pub fn restore(
        &self,
        plan: &RestorePlan,
        opts: &RestoreOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
        cancel: &AtomicBool,
    ) -> Result<(), RepoError> {
        // 1. Layout: directories, empty files at final size, symlinks.
        for (path, e) in &plan.entries {
            match e.kind {
                FileKind::Dir => fs::create_dir_all(path).map_err(io(path))?,
                FileKind::File => {
                    if let Some(p) = path.parent() {
                        fs::create_dir_all(p).map_err(io(p))?;
                    }
                    // Never through a symlink (the folder was empty or cleared).
                    let f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(path)
                        .map_err(io(path))?;
                    f.set_len(e.size).map_err(io(path))?;
                }
                FileKind::Symlink => {
                    if let Some(p) = path.parent() {
                        fs::create_dir_all(p).map_err(io(p))?;
                    }
                    let target = e.link_target.as_deref().unwrap_or("");
                    let _ = fs::remove_file(path);
                    std::os::unix::fs::symlink(target, path).map_err(io(path))?;
                }
            }
        }
        // 2. Data, pack by pack, on all cores. A file is handed to the
        // finishers (fsync, owner, mode, mtime) as soon as its last byte is
        // written, so flushing to disk overlaps the rest of the restore.
        // Two more workers than cores: writes stall on dirty-page throttling
        // while the finishers flush, and the extra workers keep the CPUs busy.
        let threads = if opts.threads == 0 {
            crate::threads_or_cores(0) + 2
        } else {
            opts.threads
        };
        let remaining: Vec<AtomicU64> = plan
            .entries
            .iter()
            .map(|(_, e)| AtomicU64::new(if e.kind == FileKind::File { e.size } else { 0 }))
            .collect();
        let next = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let failure: Mutex<Option<RepoError>> = Mutex::new(None);
        let fail = |e: RepoError| {
            failure.lock().expect("lock").get_or_insert(e);
        };
        let idx = self.index();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<usize>();
        for (i, (_, e)) in plan.entries.iter().enumerate() {
            if e.kind == FileKind::File && e.size == 0 {
                done_tx.send(i).expect("receiver alive");
            }
        }
        std::thread::scope(|s| {
            for _ in 0..FINISHERS {
                let rx = done_rx.clone();
                let (fail, plan) = (&fail, plan);
                s.spawn(move || {
                    for i in rx {
                        let (path, e) = &plan.entries[i];
                        let r = OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(path)
                            .map_err(io(path))
                            .and_then(|f| {
                                if opts.fsync {
                                    f.sync_all().map_err(io(path))?;
                                }
                                set_meta(path, e, Some(&f), opts)
                            });
                        if let Err(e) = r {
                            fail(e);
                        }
                    }
                });
            }
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let done_tx = done_tx.clone();
                    let (fail, failure, next, done, remaining, idx) =
                        (&fail, &failure, &next, &done, &remaining, &idx);
                    s.spawn(move || {
                        let mut open: Option<(usize, File)> = None;
                        loop {
                            if cancel.load(Ordering::Relaxed)
                                || failure.lock().expect("lock").is_some()
                            {
                                return;
                            }
                            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                            let Some((pack, chunks)) = plan.packs.get(i) else {
                                return;
                            };
                            let sink = Sink {
                                remaining,
                                done,
                                done_tx: &done_tx,
                                progress,
                                total: plan.total_bytes,
                            };
                            if let Err(e) =
                                self.restore_pack(plan, idx, *pack, chunks, &mut open, &sink)
                            {
                                fail(e);
                                return;
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
            drop(done_tx);
        });
        if let Some(e) = failure.into_inner().expect("lock") {
            return Err(e);
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(RepoError::Cancelled);
        }
        // 3. Symlinks, then directories deepest first (so their mtimes are
        // not disturbed by what is created inside them).
        let mut dirs = Vec::new();
        for (path, e) in &plan.entries {
            match e.kind {
                FileKind::File => {}
                FileKind::Dir => dirs.push((path, e)),
                FileKind::Symlink => {
                    if opts.preserve_owner {
                        std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid))
                            .map_err(io(path))?;
                    }
                }
            }
        }
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, e) in dirs {
            if opts.fsync {
                File::open(path)
                    .and_then(|d| d.sync_all())
                    .map_err(io(path))?;
            }
            set_meta(path, e, None, opts)?;
        }
        progress(plan.total_bytes, plan.total_bytes);
        Ok(())
    }

    fn restore_pack(
        &self,
        plan: &RestorePlan,
        idx: &Index,
        pack: u32,
        blobs: &[BlobWork],
        open: &mut Option<(usize, File)>,
        sink: &Sink<'_>,
    ) -> Result<(), RepoError> {
        let name = hex::encode(idx.pack_id(pack));
        let start = blobs.first().map(|b| b.offset as u64).unwrap_or(0);
        let end = blobs
            .iter()
            .map(|b| b.offset as u64 + b.stored_len as u64)
            .max()
            .unwrap_or(0);
        let span = self
            .storage
            .get_range(FileType::Pack, &name, start, end - start)?;
        for b in blobs {
            let a = (b.offset as u64 - start) as usize;
            let sealed = &span[a..a + b.stored_len as usize];
            let raw = open_blob(&self.cipher, sealed, b.raw_len, b.compression).map_err(|m| {
                RepoError::Corrupt(format!("pack {name}, blob at {}: {m}", b.offset))
            })?;
            // Chunks of a blob are consecutive pieces of the stream, so a run
            // of them usually lands contiguously in one file: one write each.
            let mut run: Option<(usize, u64, usize, usize)> = None; // (file, file offset, blob start, len)
            for c in &b.chunks {
                let (start, len) = (c.offset as usize, c.len as usize);
                let data = raw.get(start..start + len).ok_or_else(|| {
                    RepoError::Corrupt(format!("pack {name}: chunk {} lies outside its blob", c.id))
                })?;
                if self.key.chunk_id(data) != c.id {
                    return Err(RepoError::Corrupt(format!(
                        "pack {name}: chunk {} does not match its id",
                        c.id
                    )));
                }
                if let [d] = c.dests.as_slice()
                    && let Some((f, fo, bs, l)) = run.as_mut()
                    && *f == d.file
                    && *fo + *l as u64 == d.offset
                    && *bs + *l == start
                {
                    *l += len;
                    continue;
                }
                if let Some((f, fo, bs, l)) = run.take() {
                    write_to(plan, open, sink, f, fo, &raw[bs..bs + l])?;
                }
                match c.dests.as_slice() {
                    [d] => run = Some((d.file, d.offset, start, len)),
                    dests => {
                        for d in dests {
                            write_to(plan, open, sink, d.file, d.offset, data)?;
                        }
                    }
                }
            }
            if let Some((f, fo, bs, l)) = run.take() {
                write_to(plan, open, sink, f, fo, &raw[bs..bs + l])?;
            }
        }
        Ok(())
    }
}

/// Writes `data` at `offset` of file `file`, reusing the last opened file.
fn write_to(
    plan: &RestorePlan,
    open: &mut Option<(usize, File)>,
    sink: &Sink<'_>,
    file: usize,
    offset: u64,
    data: &[u8],
) -> Result<(), RepoError> {
    let f = match open {
        Some((fi, f)) if *fi == file => f,
        _ => {
            let path = &plan.entries[file].0;
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(io(path))?;
            &mut open.insert((file, f)).1
        }
    };
    f.write_all_at(data, offset)
        .map_err(io(&plan.entries[file].0))?;
    sink.written(file, data.len() as u64);
    Ok(())
}

/// Finisher threads: fsync is I/O-bound, so more of them than cores keeps
/// the device queue full.
const FINISHERS: usize = 4;

/// Where a worker reports written bytes.
struct Sink<'a> {
    remaining: &'a [AtomicU64],
    done: &'a AtomicU64,
    done_tx: &'a crossbeam_channel::Sender<usize>,
    progress: &'a (dyn Fn(u64, u64) + Sync),
    total: u64,
}

impl Sink<'_> {
    fn written(&self, file: usize, n: u64) {
        if self.remaining[file].fetch_sub(n, Ordering::AcqRel) == n {
            let _ = self.done_tx.send(file);
        }
        let d = self.done.fetch_add(n, Ordering::Relaxed) + n;
        (self.progress)(d, self.total);
    }
}

fn set_meta(
    path: &Path,
    e: &FileEntry,
    f: Option<&File>,
    opts: &RestoreOptions,
) -> Result<(), RepoError> {
    if opts.preserve_owner {
        std::os::unix::fs::chown(path, Some(e.uid), Some(e.gid)).map_err(io(path))?;
    }
    // setuid/setgid are never restored: a backup's files are data, and a
    // hostile source must not plant a set-id program on this machine.
    fs::set_permissions(path, fs::Permissions::from_mode(e.mode & 0o1777)).map_err(io(path))?;
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.mtime.max(0) as u64);
    let times = fs::FileTimes::new().set_modified(mtime);
    match f {
        Some(f) => f.set_times(times).map_err(io(path))?,
        None => {
            if let Ok(d) = File::open(path) {
                let _ = d.set_times(times);
            }
        }
    }
    Ok(())
}
