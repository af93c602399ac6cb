//! The index: which pack holds each chunk, and where.
//!
//! ```text
//! index file = seal(Index, zstd(plain))
//! plain      = "SIX1" ‖ npacks (u32) ‖ npacks × (pack id (32) ‖ n (u32) ‖ n × entry)
//! entry      = chunk id (32) ‖ offset (u32) ‖ stored_len (u32) ‖ raw_len (u32) ‖ compression (u8)
//! ```
//!
//! Index files are written after the packs they describe are durable; the
//! in-memory [`Index`] is the union of all index files.

use crate::crypto::{Cipher, Role};
use crate::pack::{Compression, PackEntry};
use std::collections::HashMap;
use stowage_core::manifest::ChunkId;

const MAGIC: &[u8; 4] = b"SIX1";
const ENTRY_LEN: usize = 32 + 4 + 4 + 4 + 1;

pub type PackId = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
}

/// In-memory union of index files. Pack ids are interned to keep each entry
/// small (~50 bytes plus the map's own overhead).
#[derive(Debug, Default, Clone)]
pub struct Index {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    map: HashMap<ChunkId, Location>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.map.contains_key(id)
    }
    pub fn get(&self, id: &ChunkId) -> Option<Location> {
        self.map.get(id).copied()
    }
    pub fn pack_id(&self, pos: u32) -> &PackId {
        &self.packs[pos as usize]
    }
    pub fn packs(&self) -> &[PackId] {
        &self.packs
    }
    pub fn iter(&self) -> impl Iterator<Item = (&ChunkId, &Location)> {
        self.map.iter()
    }

    pub fn add_pack(&mut self, pack: PackId, entries: &[PackEntry]) {
        let pos = match self.pack_pos.get(&pack) {
            Some(p) => *p,
            None => {
                self.packs.push(pack);
                let p = (self.packs.len() - 1) as u32;
                self.pack_pos.insert(pack, p);
                p
            }
        };
        for e in entries {
            self.map.entry(e.id).or_insert(Location {
                pack: pos,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
                compression: e.compression,
            });
        }
    }

    /// Entries grouped by pack, for writing an index file.
    pub fn by_pack(&self) -> Vec<(PackId, Vec<PackEntry>)> {
        let mut groups: Vec<Vec<PackEntry>> = vec![Vec::new(); self.packs.len()];
        for (id, l) in &self.map {
            groups[l.pack as usize].push(PackEntry {
                id: *id,
                offset: l.offset,
                stored_len: l.stored_len,
                raw_len: l.raw_len,
                compression: l.compression,
            });
        }
        self.packs
            .iter()
            .zip(groups)
            .filter(|(_, g)| !g.is_empty())
            .map(|(p, mut g)| {
                g.sort_by_key(|e| e.offset);
                (*p, g)
            })
            .collect()
    }

    pub fn merge(&mut self, other: &Index) {
        for (p, entries) in other.by_pack() {
            self.add_pack(p, &entries);
        }
    }
}

/// Serialises packs' entries into a sealed index file; returns (name, bytes).
pub fn encode(packs: &[(PackId, Vec<PackEntry>)], cipher: &Cipher) -> (String, Vec<u8>) {
    let mut plain = Vec::new();
    plain.extend_from_slice(MAGIC);
    plain.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (p, entries) in packs {
        plain.extend_from_slice(p);
        plain.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            plain.extend_from_slice(&e.id.0);
            plain.extend_from_slice(&e.offset.to_le_bytes());
            plain.extend_from_slice(&e.stored_len.to_le_bytes());
            plain.extend_from_slice(&e.raw_len.to_le_bytes());
            plain.push(e.compression as u8);
        }
    }
    let z = zstd::bulk::compress(&plain, 3).expect("zstd of memory");
    let bytes = cipher.seal(Role::Index, &z);
    (hex::encode(blake3::hash(&bytes).as_bytes()), bytes)
}

pub fn decode(bytes: &[u8], cipher: &Cipher) -> Result<Vec<(PackId, Vec<PackEntry>)>, String> {
    let z = cipher.open(Role::Index, bytes).map_err(|e| e.to_string())?;
    let plain = zstd::stream::decode_all(&z[..]).map_err(|e| format!("decompress: {e}"))?;
    let mut r = Reader(&plain);
    if r.take(4)? != MAGIC {
        return Err("bad magic".into());
    }
    let np = r.u32()? as usize;
    let mut out = Vec::with_capacity(np.min(1 << 20));
    for _ in 0..np {
        let p: PackId = r.take(32)?.try_into().unwrap();
        let n = r.u32()? as usize;
        let mut entries = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let e = r.take(ENTRY_LEN)?;
            entries.push(PackEntry {
                id: ChunkId(e[..32].try_into().unwrap()),
                offset: u32::from_le_bytes(e[32..36].try_into().unwrap()),
                stored_len: u32::from_le_bytes(e[36..40].try_into().unwrap()),
                raw_len: u32::from_le_bytes(e[40..44].try_into().unwrap()),
                compression: Compression::from_u8(e[44]).ok_or("bad compression")?,
            });
        }
        out.push((p, entries));
    }
    if !r.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated index".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn index_round_trip() {
        let c = MasterKey::generate().cipher();
        let entries: Vec<PackEntry> = (0..10u8)
            .map(|i| PackEntry {
                id: ChunkId([i; 32]),
                offset: i as u32 * 100,
                stored_len: 100,
                raw_len: 300,
                compression: Compression::Zstd,
            })
            .collect();
        let packs = vec![([9u8; 32], entries.clone()), ([8u8; 32], vec![])];
        let (_, bytes) = encode(&packs, &c);
        assert_eq!(decode(&bytes, &c).unwrap(), packs);
        let mut idx = Index::default();
        idx.add_pack([9u8; 32], &entries);
        assert_eq!(idx.len(), 10);
        assert_eq!(idx.get(&ChunkId([3; 32])).unwrap().offset, 300);
        assert_eq!(idx.by_pack(), vec![([9u8; 32], entries)]);
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(decode(&bad, &c).is_err());
    }
}
