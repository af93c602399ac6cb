//! Garbage collection: reclaim the space no snapshot needs.
//!
//! [`Repository::gc_plan`] computes what would go, [`Repository::gc`] carries
//! it out under an exclusive lock. A pack no snapshot uses is deleted; a pack
//! of which at least [`REPACK_UNUSED`] of the bytes are unused is repacked:
//! its used blobs are copied, still sealed (a blob's encryption does not
//! depend on its pack), into new packs. The order keeps every snapshot
//! readable at every moment and a crash harmless: write the new packs, write
//! the new index, delete the old index files, then delete the old packs
//! (a crash before the new index leaves unindexed packs, which the next gc
//! deletes).

use crate::index::{self, Index, PackId};
use crate::lock::LockKind;
use crate::pack::{self, PackBuilder};
use crate::repo::{RepoError, Repository};
use crate::storage::FileType;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// A pack with at least this fraction of unused bytes is repacked.
pub const REPACK_UNUSED: f64 = 0.2;

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcPlan {
    /// Packs to delete, with their sizes.
    pub delete_packs: Vec<(String, u64)>,
    /// Packs whose used blobs are copied to new packs before they are deleted.
    pub repack: Vec<(String, u64)>,
    /// Bytes of blobs the repacking copies.
    pub repack_copy_bytes: u64,
    /// Of those, packs no index named (left by interrupted backups).
    pub unindexed_packs: u64,
    pub reclaim_bytes: u64,
    pub keep_packs: u64,
    #[serde(skip)]
    new_index: Index,
    /// Per pack to repack: offsets of the blobs to keep.
    #[serde(skip)]
    repack_blobs: Vec<(PackId, HashSet<u32>)>,
    #[serde(skip)]
    old_index_files: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub bytes_reclaimed: u64,
    pub packs_kept: u64,
}

impl Repository {
    /// What gc would delete now. Call with the exclusive lock held for a plan
    /// that is safe to carry out.
    pub fn gc_plan(&self) -> Result<GcPlan, RepoError> {
        let (idx, old_index_files) = self.read_all_index()?;
        let mut referenced = HashSet::new();
        for name in self.list_snapshots()? {
            let m = self.read_snapshot(&name)?;
            referenced.extend(m.chunk_ids().copied());
        }
        // Per pack: the blobs some snapshot uses.
        let mut used_blobs: HashMap<u32, HashSet<u32>> = HashMap::new();
        for (id, loc) in idx.iter() {
            let e = used_blobs.entry(loc.pack).or_default();
            if referenced.contains(id) {
                e.insert(loc.blob_offset);
            }
        }
        let mut new_index = Index::default();
        let mut repack_blobs = Vec::new();
        let mut repack_copy_bytes = 0u64;
        for (p, entries) in idx.by_pack() {
            let pos = idx.packs().iter().position(|x| *x == p).expect("own pack") as u32;
            let used = used_blobs.get(&pos).cloned().unwrap_or_default();
            if used.is_empty() {
                continue;
            }
            let total: u64 = entries.iter().map(|b| b.stored_len as u64).sum();
            let kept: u64 = entries
                .iter()
                .filter(|b| used.contains(&b.offset))
                .map(|b| b.stored_len as u64)
                .sum();
            if (total - kept) as f64 >= REPACK_UNUSED * total as f64 {
                repack_copy_bytes += kept;
                repack_blobs.push((p, used));
            } else {
                new_index.add_pack(p, &entries);
            }
        }
        let keep: HashSet<String> = new_index.packs().iter().map(hex::encode).collect();
        let indexed: HashSet<String> = idx.packs().iter().map(hex::encode).collect();
        let repacked: HashSet<String> = repack_blobs.iter().map(|(p, _)| hex::encode(p)).collect();
        let mut plan = GcPlan::default();
        for (name, size) in self.storage.list(FileType::Pack)? {
            if keep.contains(&name) {
                plan.keep_packs += 1;
            } else if repacked.contains(&name) {
                plan.repack.push((name.clone(), size));
                plan.reclaim_bytes += size;
                plan.delete_packs.push((name, size));
            } else {
                if !indexed.contains(&name) {
                    plan.unindexed_packs += 1;
                }
                plan.reclaim_bytes += size;
                plan.delete_packs.push((name, size));
            }
        }
        plan.reclaim_bytes = plan.reclaim_bytes.saturating_sub(repack_copy_bytes);
        plan.repack_copy_bytes = repack_copy_bytes;
        plan.new_index = new_index;
        plan.repack_blobs = repack_blobs;
        plan.old_index_files = old_index_files;
        Ok(plan)
    }

    /// Deletes unreferenced packs. Fails with `Locked` while any backup,
    /// verify or restore holds the repository.
    pub fn gc(&self) -> Result<GcReport, RepoError> {
        let _g = self.gc_mutex.lock().expect("gc mutex");
        let lock = self.lock(LockKind::Exclusive, "gc")?;
        let mut plan = self.gc_plan()?;
        if plan.delete_packs.is_empty() {
            return Ok(GcReport {
                packs_kept: plan.keep_packs,
                ..Default::default()
            });
        }
        let mut written = 0u64;
        let mut written_bytes = 0u64;
        if !plan.repack_blobs.is_empty() {
            let target = self.config.pack_size as usize;
            let mut builder = PackBuilder::new(target + target / 8);
            let mut flush = |b: PackBuilder, idx: &mut Index| -> Result<(), RepoError> {
                let (name, bytes, entries) = b.finish(&self.cipher);
                self.storage.put(FileType::Pack, &name, &bytes)?;
                let mut id = [0u8; 32];
                hex::decode_to_slice(&name, &mut id).expect("hex name");
                idx.add_pack(id, &entries);
                written += 1;
                written_bytes += bytes.len() as u64;
                Ok(())
            };
            for (p, used) in std::mem::take(&mut plan.repack_blobs) {
                let name = hex::encode(p);
                let bytes = self.storage.get(FileType::Pack, &name)?;
                if hex::encode(blake3::hash(&bytes).as_bytes()) != name {
                    return Err(RepoError::Corrupt(format!(
                        "pack {name}: content does not match its name; gc stopped (run verify)"
                    )));
                }
                let blobs = pack::read_header(&bytes, &self.cipher)
                    .map_err(|e| RepoError::Corrupt(format!("pack {name}: {e}")))?;
                for b in blobs.iter().filter(|b| used.contains(&b.offset)) {
                    let start = b.offset as usize;
                    let sealed = &bytes[start..start + b.stored_len as usize];
                    let chunks: Vec<_> = b.chunks.iter().map(|c| (c.id, c.len)).collect();
                    builder.add(sealed, b.raw_len, b.compression, &chunks);
                    if builder.len() >= target {
                        let full =
                            std::mem::replace(&mut builder, PackBuilder::new(target + target / 8));
                        flush(full, &mut plan.new_index)?;
                    }
                }
            }
            if !builder.is_empty() {
                flush(builder, &mut plan.new_index)?;
            }
        }
        // Nothing is named or deleted unless the lock is still ours.
        lock.ensure_held()?;
        let groups = plan.new_index.by_pack();
        let mut new_name = None;
        if !groups.is_empty() {
            let (name, bytes) = index::encode(&groups, &self.cipher);
            self.storage.put(FileType::Index, &name, &bytes)?;
            new_name = Some(name);
        }
        for old in &plan.old_index_files {
            if Some(old) != new_name.as_ref() {
                self.storage.delete(FileType::Index, old)?;
            }
        }
        *self.index_files.lock().expect("index files") = new_name.iter().cloned().collect();
        *self.index.write().expect("index lock") = std::sync::Arc::new(plan.new_index.clone());
        let mut rep = GcReport {
            packs_kept: plan.keep_packs,
            packs_repacked: plan.repack.len() as u64,
            packs_written: written,
            ..Default::default()
        };
        let mut deleted_bytes = 0u64;
        lock.ensure_held()?;
        for (name, size) in &plan.delete_packs {
            self.storage.delete(FileType::Pack, name)?;
            rep.packs_deleted += 1;
            deleted_bytes += size;
        }
        rep.bytes_reclaimed = deleted_bytes.saturating_sub(written_bytes);
        Ok(rep)
    }
}
