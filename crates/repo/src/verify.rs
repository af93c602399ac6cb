//! `verify`: re-read every pack and check every chunk.
//!
//! For each pack the index names: the pack exists, its bytes hash to its
//! name, its header opens (MAC) and agrees with the index, and every chunk in
//! it opens (MAC), decompresses to its recorded length and hashes to its id.
//! For each snapshot: it opens and every chunk it names is in the index.
//! Packs that no index names (left by an interrupted backup) are listed as
//! reclaimable, not as errors.

use crate::index::Location;
use crate::lock::LockKind;
use crate::pack::{open_blob, read_header};
use crate::repo::{RepoError, Repository};
use crate::storage::FileType;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Default, Clone, Serialize)]
pub struct VerifyReport {
    pub packs_checked: u64,
    pub chunks_checked: u64,
    pub bytes_read: u64,
    pub snapshots_checked: u64,
    /// Packs that no index names: reclaimable by gc.
    pub unreferenced_packs: u64,
    pub errors: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl Repository {
    /// Checks every pack the index names and every snapshot.
    pub fn verify(
        &self,
        threads: usize,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<VerifyReport, RepoError> {
        let _lock = self.lock(LockKind::Shared, "verify")?;
        self.reload_index()?;
        let mut r = self.verify_packs(None, threads, progress)?;
        let idx = self.index();
        let stored: HashSet<String> = self
            .storage
            .list(FileType::Pack)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let indexed: HashSet<String> = idx.packs().iter().map(hex::encode).collect();
        r.unreferenced_packs = stored.iter().filter(|k| !indexed.contains(*k)).count() as u64;
        for name in self.list_snapshots()? {
            self.check_snapshot(&name, &idx, &mut r);
        }
        r.errors.sort();
        Ok(r)
    }

    /// Checks one snapshot: it opens, every chunk it names is indexed, and
    /// every pack holding one of them is read and checked whole. Other
    /// snapshots' packs are not read.
    pub fn verify_snapshot(
        &self,
        name: &str,
        threads: usize,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<VerifyReport, RepoError> {
        let _lock = self.lock(LockKind::Shared, "verify")?;
        self.reload_index()?;
        let idx = self.index();
        let m = self.read_snapshot(name)?;
        let packs: HashSet<u32> = m
            .chunk_ids()
            .filter_map(|c| idx.get(c).map(|l| l.pack))
            .collect();
        let mut r = self.verify_packs(Some(&packs), threads, progress)?;
        self.check_snapshot(name, &idx, &mut r);
        r.errors.sort();
        Ok(r)
    }

    fn check_snapshot(&self, name: &str, idx: &crate::index::Index, r: &mut VerifyReport) {
        match self.read_snapshot(name) {
            Ok(m) => {
                r.snapshots_checked += 1;
                let missing = m.chunk_ids().filter(|c| !idx.contains(c)).count();
                if missing > 0 {
                    r.errors.push(format!(
                        "snapshot {name}: {missing} chunks are not in the index"
                    ));
                }
            }
            Err(e) => r.errors.push(format!("snapshot {name}: {e}")),
        }
    }

    /// Reads and checks the packs the index names (only those in `only`,
    /// if given) on `threads` threads.
    fn verify_packs(
        &self,
        only: Option<&HashSet<u32>>,
        threads: usize,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<VerifyReport, RepoError> {
        let idx = self.index();
        let stored: HashMap<String, u64> = self.storage.list(FileType::Pack)?.into_iter().collect();
        let mut expected: HashMap<u32, Vec<(stowage_core::manifest::ChunkId, Location)>> =
            HashMap::new();
        for (id, l) in idx.iter() {
            if only.is_none_or(|o| o.contains(&l.pack)) {
                expected.entry(l.pack).or_default().push((*id, *l));
            }
        }
        let packs: Vec<(u32, Vec<(stowage_core::manifest::ChunkId, Location)>)> =
            expected.into_iter().collect();
        let total: u64 = packs
            .iter()
            .map(|(p, _)| {
                stored
                    .get(&hex::encode(idx.pack_id(*p)))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        let report = Mutex::new(VerifyReport::default());
        let next = AtomicUsize::new(0);
        let read = AtomicU64::new(0);
        let threads = crate::threads_or_cores(threads);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((p, entries)) = packs.get(i) else {
                            return;
                        };
                        let name = hex::encode(idx.pack_id(*p));
                        let (errs, chunks, n) = self.verify_pack(&name, entries);
                        let done = read.fetch_add(n, Ordering::Relaxed) + n;
                        progress(done, total);
                        let mut r = report.lock().expect("report");
                        r.packs_checked += 1;
                        r.chunks_checked += chunks;
                        r.bytes_read += n;
                        r.errors.extend(errs);
                    }
                });
            }
        });
        Ok(report.into_inner().expect("report"))
    }

    fn verify_pack(
        &self,
        name: &str,
        expected: &[(stowage_core::manifest::ChunkId, Location)],
    ) -> (Vec<String>, u64, u64) {
        let mut errs = Vec::new();
        let bytes = match self.storage.get(FileType::Pack, name) {
            Ok(b) => b,
            Err(e) => return (vec![format!("pack {name}: {e}")], 0, 0),
        };
        let n = bytes.len() as u64;
        if hex::encode(blake3::hash(&bytes).as_bytes()) != name {
            errs.push(format!(
                "pack {name}: content does not match its name (modified or damaged)"
            ));
        }
        let header = match read_header(&bytes, &self.cipher) {
            Ok(h) => h,
            Err(e) => {
                errs.push(format!("pack {name}: {e}"));
                return (errs, 0, n);
            }
        };
        // The index must agree with the (authenticated) pack header.
        let blobs: HashMap<u32, &crate::pack::BlobEntry> =
            header.iter().map(|b| (b.offset, b)).collect();
        for (id, l) in expected {
            let ok = blobs.get(&l.blob_offset).is_some_and(|b| {
                b.stored_len == l.blob_stored_len
                    && b.raw_len == l.blob_raw_len
                    && b.compression == l.compression
                    && b.chunks
                        .iter()
                        .any(|c| c.id == *id && c.offset == l.chunk_offset && c.len == l.chunk_len)
            });
            if !ok {
                errs.push(format!(
                    "pack {name}: index entry for chunk {id} disagrees with the pack header"
                ));
            }
        }
        let mut chunks = 0;
        for b in &header {
            let end = b.offset as usize + b.stored_len as usize;
            let Some(sealed) = bytes.get(b.offset as usize..end) else {
                errs.push(format!(
                    "pack {name}: blob at {} lies outside the pack",
                    b.offset
                ));
                continue;
            };
            let raw = match open_blob(&self.cipher, sealed, b.raw_len, b.compression) {
                Ok(r) => r,
                Err(m) => {
                    errs.push(format!("pack {name}, blob at {}: {m}", b.offset));
                    continue;
                }
            };
            for c in &b.chunks {
                match raw.get(c.offset as usize..c.offset as usize + c.len as usize) {
                    Some(d) if self.key.chunk_id(d) == c.id => chunks += 1,
                    _ => errs.push(format!(
                        "pack {name}: chunk {} does not hash to its id",
                        c.id
                    )),
                }
            }
        }
        (errs, chunks, n)
    }
}
