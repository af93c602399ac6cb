//! Garbage collection: reclaim packs no snapshot needs.
//!
//! [`Repository::gc_plan`] computes what would go, [`Repository::gc`] carries
//! it out under an exclusive lock, in the order that keeps every snapshot
//! readable at every moment: write the new index, delete the old index files,
//! then delete the packs.

use crate::index::{self, Index};
use crate::lock::LockKind;
use crate::repo::{RepoError, Repository};
use crate::storage::FileType;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcPlan {
    /// Packs to delete, with their sizes.
    pub delete_packs: Vec<(String, u64)>,
    /// Of those, packs no index named (left by interrupted backups).
    pub unindexed_packs: u64,
    pub reclaim_bytes: u64,
    pub keep_packs: u64,
    #[serde(skip)]
    new_index: Index,
    #[serde(skip)]
    old_index_files: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub packs_deleted: u64,
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
        let mut pack_used: HashMap<u32, bool> = HashMap::new();
        for (id, loc) in idx.iter() {
            let used = pack_used.entry(loc.pack).or_insert(false);
            *used |= referenced.contains(id);
        }
        let mut new_index = Index::default();
        for (p, entries) in idx.by_pack() {
            let pos = idx.packs().iter().position(|x| *x == p).expect("own pack") as u32;
            if pack_used.get(&pos).copied().unwrap_or(false) {
                new_index.add_pack(p, &entries);
            }
        }
        let keep: HashSet<String> = new_index.packs().iter().map(hex::encode).collect();
        let indexed: HashSet<String> = idx.packs().iter().map(hex::encode).collect();
        let mut plan = GcPlan::default();
        for (name, size) in self.storage.list(FileType::Pack)? {
            if keep.contains(&name) {
                plan.keep_packs += 1;
            } else {
                if !indexed.contains(&name) {
                    plan.unindexed_packs += 1;
                }
                plan.reclaim_bytes += size;
                plan.delete_packs.push((name, size));
            }
        }
        plan.new_index = new_index;
        plan.old_index_files = old_index_files;
        Ok(plan)
    }

    /// Deletes unreferenced packs. Fails with `Locked` while any backup,
    /// verify or restore holds the repository.
    pub fn gc(&self) -> Result<GcReport, RepoError> {
        let _g = self.gc_mutex.lock().expect("gc mutex");
        let _lock = self.lock(LockKind::Exclusive, "gc")?;
        let plan = self.gc_plan()?;
        if plan.delete_packs.is_empty() {
            return Ok(GcReport {
                packs_kept: plan.keep_packs,
                ..Default::default()
            });
        }
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
        *self.index.write().expect("index lock") = std::sync::Arc::new(plan.new_index.clone());
        let mut rep = GcReport {
            packs_kept: plan.keep_packs,
            ..Default::default()
        };
        for (name, size) in &plan.delete_packs {
            self.storage.delete(FileType::Pack, name)?;
            rep.packs_deleted += 1;
            rep.bytes_reclaimed += size;
        }
        Ok(rep)
    }
}
