//! The index: which pack and blob hold each chunk, and where inside it.
//!
//! ```text
//! index file = seal(Index, zstd(plain))
//! plain      = "SIX1" ‖ npacks (u32) ‖ npacks × (pack id (32) ‖ nblobs (u32) ‖ nblobs × blob)
//! blob       = offset (u32) ‖ stored_len (u32) ‖ raw_len (u32) ‖ compression (u8) ‖ m (u32) ‖ m × (chunk id (32) ‖ offset (u32) ‖ len (u32))
//! ```
//!
//! A blob in an index file may list only some of the chunks its pack header
//! lists (each chunk's offset is explicit). Index files are written after the
//! packs they describe are durable; the in-memory [`Index`] is their union.

use crate::crypto::{Cipher, Role};
use crate::pack::{BlobEntry, ChunkRef, Compression};
use std::collections::{BTreeMap, HashMap};
use stowage_core::manifest::ChunkId;

const MAGIC: &[u8; 4] = b"SIX1";

pub type PackId = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    pub blob_offset: u32,
    pub blob_stored_len: u32,
    pub blob_raw_len: u32,
    pub compression: Compression,
    /// The chunk inside the blob's plaintext.
    pub chunk_offset: u32,
    pub chunk_len: u32,
}

impl Location {
    /// End of the blob in the pack.
    pub fn blob_end(&self) -> u64 {
        self.blob_offset as u64 + self.blob_stored_len as u64
    }
}

/// In-memory union of index files. Pack ids are interned to keep each entry
/// small.
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
    pub fn pack_pos(&self, id: &PackId) -> Option<u32> {
        self.pack_pos.get(id).copied()
    }
    pub fn packs(&self) -> &[PackId] {
        &self.packs
    }
    pub fn iter(&self) -> impl Iterator<Item = (&ChunkId, &Location)> {
        self.map.iter()
    }

    pub fn add_pack(&mut self, pack: PackId, blobs: &[BlobEntry]) {
        let pos = match self.pack_pos.get(&pack) {
            Some(p) => *p,
            None => {
                self.packs.push(pack);
                let p = (self.packs.len() - 1) as u32;
                self.pack_pos.insert(pack, p);
                p
            }
        };
        for b in blobs {
            for c in &b.chunks {
                self.map.entry(c.id).or_insert(Location {
                    pack: pos,
                    blob_offset: b.offset,
                    blob_stored_len: b.stored_len,
                    blob_raw_len: b.raw_len,
                    compression: b.compression,
                    chunk_offset: c.offset,
                    chunk_len: c.len,
                });
            }
        }
    }

    /// Entries grouped by pack and blob, for writing an index file.
    pub fn by_pack(&self) -> Vec<(PackId, Vec<BlobEntry>)> {
        let mut groups: Vec<BTreeMap<u32, BlobEntry>> = vec![BTreeMap::new(); self.packs.len()];
        for (id, l) in &self.map {
            let b = groups[l.pack as usize]
                .entry(l.blob_offset)
                .or_insert_with(|| BlobEntry {
                    offset: l.blob_offset,
                    stored_len: l.blob_stored_len,
                    raw_len: l.blob_raw_len,
                    compression: l.compression,
                    chunks: Vec::new(),
                });
            b.chunks.push(ChunkRef {
                id: *id,
                offset: l.chunk_offset,
                len: l.chunk_len,
            });
        }
        self.packs
            .iter()
            .zip(groups)
            .filter(|(_, g)| !g.is_empty())
            .map(|(p, g)| {
                let mut blobs: Vec<BlobEntry> = g.into_values().collect();
                for b in &mut blobs {
                    b.chunks.sort_by_key(|c| c.offset);
                }
                (*p, blobs)
            })
            .collect()
    }

    pub fn merge(&mut self, other: &Index) {
        for (p, blobs) in other.by_pack() {
            self.add_pack(p, &blobs);
        }
    }
}

/// Serialises packs' blobs into a sealed index file; returns (name, bytes).
pub fn encode(packs: &[(PackId, Vec<BlobEntry>)], cipher: &Cipher) -> (String, Vec<u8>) {
    let mut plain = Vec::new();
    plain.extend_from_slice(MAGIC);
    plain.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (p, blobs) in packs {
        plain.extend_from_slice(p);
        plain.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
        for b in blobs {
            plain.extend_from_slice(&b.offset.to_le_bytes());
            plain.extend_from_slice(&b.stored_len.to_le_bytes());
            plain.extend_from_slice(&b.raw_len.to_le_bytes());
            plain.push(b.compression as u8);
            plain.extend_from_slice(&(b.chunks.len() as u32).to_le_bytes());
            for c in &b.chunks {
                plain.extend_from_slice(&c.id.0);
                plain.extend_from_slice(&c.offset.to_le_bytes());
                plain.extend_from_slice(&c.len.to_le_bytes());
            }
        }
    }
    let z = zstd::bulk::compress(&plain, 3).expect("zstd of memory");
    let bytes = cipher.seal(Role::Index, &z);
    (hex::encode(blake3::hash(&bytes).as_bytes()), bytes)
}

pub fn decode(bytes: &[u8], cipher: &Cipher) -> Result<Vec<(PackId, Vec<BlobEntry>)>, String> {
    let z = cipher.open(Role::Index, bytes).map_err(|e| e.to_string())?;
    let plain = zstd::stream::decode_all(&z[..]).map_err(|e| format!("decompress: {e}"))?;
    let mut r = Reader(&plain);
    if r.take(4)? != MAGIC {
        return Err("bad magic".into());
    }
    let np = r.u32()? as usize;
    let mut out = Vec::with_capacity(np.min(1 << 20));
    for _ in 0..np {
        let p: PackId = r.take(32)?.try_into().expect("32 bytes");
        let nb = r.u32()? as usize;
        let mut blobs = Vec::with_capacity(nb.min(1 << 16));
        for _ in 0..nb {
            let offset = r.u32()?;
            let stored_len = r.u32()?;
            let raw_len = r.u32()?;
            let compression = Compression::from_u8(r.take(1)?[0]).ok_or("bad compression")?;
            let m = r.u32()? as usize;
            let mut chunks = Vec::with_capacity(m.min(1 << 16));
            for _ in 0..m {
                let id = ChunkId(r.take(32)?.try_into().expect("32 bytes"));
                let off = r.u32()?;
                let len = r.u32()?;
                if off as u64 + len as u64 > raw_len as u64 {
                    return Err("chunk outside its blob".into());
                }
                chunks.push(ChunkRef {
                    id,
                    offset: off,
                    len,
                });
            }
            blobs.push(BlobEntry {
                offset,
                stored_len,
                raw_len,
                compression,
                chunks,
            });
        }
        out.push((p, blobs));
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
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn blob(offset: u32, ids: &[u8]) -> BlobEntry {
        BlobEntry {
            offset,
            stored_len: 100,
            raw_len: 300 * ids.len() as u32,
            compression: Compression::Zstd,
            chunks: ids
                .iter()
                .enumerate()
                .map(|(i, b)| ChunkRef {
                    id: ChunkId([*b; 32]),
                    offset: i as u32 * 300,
                    len: 300,
                })
                .collect(),
        }
    }

    #[test]
    fn index_round_trip() {
        let c = MasterKey::generate().cipher();
        let blobs = vec![blob(0, &[1, 2, 3]), blob(100, &[4]), blob(200, &[5, 6])];
        let packs = vec![([9u8; 32], blobs.clone()), ([8u8; 32], vec![])];
        let (_, bytes) = encode(&packs, &c);
        assert_eq!(decode(&bytes, &c).unwrap(), packs);
        let mut idx = Index::default();
        idx.add_pack([9u8; 32], &blobs);
        assert_eq!(idx.len(), 6);
        let l = idx.get(&ChunkId([2; 32])).unwrap();
        assert_eq!((l.blob_offset, l.chunk_offset, l.chunk_len), (0, 300, 300));
        assert_eq!(idx.get(&ChunkId([6; 32])).unwrap().blob_offset, 200);
        assert_eq!(idx.by_pack(), vec![([9u8; 32], blobs)]);
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(decode(&bad, &c).is_err());
    }
}
