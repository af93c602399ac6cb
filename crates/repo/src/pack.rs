//! Pack files: many encrypted blobs in one object, header at the end.
//!
//! A blob holds one or more consecutive chunks, compressed together (a
//! compression group), so compression sees about a mebibyte of context
//! instead of one chunk while deduplication stays per chunk.
//!
//! ```text
//! pack   = blob_0 ‖ … ‖ blob_{n-1} ‖ sealed_header ‖ header_len (u32 LE)
//! blob_i = seal(Chunk, zstd(chunk_a ‖ chunk_b ‖ …) or the chunks uncompressed)
//! header = "SPK1" ‖ n (u32 LE) ‖ n × blob_entry
//! blob_entry  = stored_len (u32) ‖ raw_len (u32) ‖ compression (u8) ‖ m (u32) ‖ m × (chunk id (32) ‖ len (u32))
//! ```
//!
//! Blob offsets are the running sum of `stored_len`; a chunk's offset inside
//! its blob's plaintext is the running sum of the lengths before it. The
//! header is written last, so a pack is produced in one streaming pass. The
//! pack's name is the BLAKE3 hash of its bytes, so any change to a stored
//! pack is detected before a single key is used.

use crate::crypto::{Cipher, CryptoError, Role};
use stowage_core::manifest::ChunkId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

impl Compression {
    pub fn from_u8(b: u8) -> Option<Compression> {
        match b {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A chunk inside a blob's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub offset: u32,
    pub len: u32,
}

/// One blob of a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    pub stored_len: u32,
    /// Length of the blob's plaintext (all its chunks).
    pub raw_len: u32,
    pub compression: Compression,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("pack too short or trailer out of range")]
    Truncated,
    #[error("pack header: {0}")]
    Header(#[from] CryptoError),
    #[error("pack header malformed: {0}")]
    Malformed(&'static str),
}

const MAGIC: &[u8; 4] = b"SPK1";

/// Accumulates sealed blobs for one pack.
#[derive(Default)]
pub struct PackBuilder {
    buf: Vec<u8>,
    blobs: Vec<BlobEntry>,
}

impl PackBuilder {
    pub fn new(capacity: usize) -> PackBuilder {
        PackBuilder {
            buf: Vec::with_capacity(capacity),
            blobs: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Adds a sealed blob holding `chunks` (id, length) in order.
    pub fn add(
        &mut self,
        sealed: &[u8],
        raw_len: u32,
        compression: Compression,
        chunks: &[(ChunkId, u32)],
    ) {
        let mut off = 0u32;
        let chunks = chunks
            .iter()
            .map(|(id, len)| {
                let c = ChunkRef {
                    id: *id,
                    offset: off,
                    len: *len,
                };
                off += len;
                c
            })
            .collect();
        self.blobs.push(BlobEntry {
            offset: self.buf.len() as u32,
            stored_len: sealed.len() as u32,
            raw_len,
            compression,
            chunks,
        });
        self.buf.extend_from_slice(sealed);
    }

    /// Seals the header; returns (pack name, bytes, blobs).
    pub fn finish(mut self, cipher: &Cipher) -> (String, Vec<u8>, Vec<BlobEntry>) {
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        for b in &self.blobs {
            h.extend_from_slice(&b.stored_len.to_le_bytes());
            h.extend_from_slice(&b.raw_len.to_le_bytes());
            h.push(b.compression as u8);
            h.extend_from_slice(&(b.chunks.len() as u32).to_le_bytes());
            for c in &b.chunks {
                h.extend_from_slice(&c.id.0);
                h.extend_from_slice(&c.len.to_le_bytes());
            }
        }
        let sealed = cipher.seal(Role::PackHeader, &h);
        self.buf.extend_from_slice(&sealed);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        let name = hex::encode(blake3::hash(&self.buf).as_bytes());
        (name, self.buf, self.blobs)
    }
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PackError> {
        if self.0.len() < n {
            return Err(PackError::Malformed("truncated header"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, PackError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

/// Reads the header of a whole pack.
pub fn read_header(pack: &[u8], cipher: &Cipher) -> Result<Vec<BlobEntry>, PackError> {
    if pack.len() < 4 {
        return Err(PackError::Truncated);
    }
    let hl = u32::from_le_bytes(pack[pack.len() - 4..].try_into().expect("4 bytes")) as usize;
    let end = pack.len() - 4;
    if hl > end {
        return Err(PackError::Truncated);
    }
    let h = cipher.open(Role::PackHeader, &pack[end - hl..end])?;
    let mut r = Reader(&h);
    if r.take(4)? != MAGIC {
        return Err(PackError::Malformed("bad magic"));
    }
    let n = r.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    let mut offset: u64 = 0;
    for _ in 0..n {
        let stored_len = r.u32()?;
        let raw_len = r.u32()?;
        let compression =
            Compression::from_u8(r.take(1)?[0]).ok_or(PackError::Malformed("compression"))?;
        let m = r.u32()? as usize;
        let mut chunks = Vec::with_capacity(m.min(1 << 16));
        let mut coff: u64 = 0;
        for _ in 0..m {
            let id = ChunkId(r.take(32)?.try_into().expect("32 bytes"));
            let len = r.u32()?;
            chunks.push(ChunkRef {
                id,
                offset: coff as u32,
                len,
            });
            coff += len as u64;
        }
        if coff != raw_len as u64 {
            return Err(PackError::Malformed(
                "chunk lengths do not add up to the blob",
            ));
        }
        out.push(BlobEntry {
            offset: offset as u32,
            stored_len,
            raw_len,
            compression,
            chunks,
        });
        offset += stored_len as u64;
    }
    if !r.0.is_empty() {
        return Err(PackError::Malformed("trailing bytes"));
    }
    if offset as usize != end - hl {
        return Err(PackError::Malformed("blobs do not fill the pack"));
    }
    Ok(out)
}

/// Decrypts and decompresses one blob; returns its plaintext.
pub fn open_blob(
    cipher: &Cipher,
    sealed: &[u8],
    raw_len: u32,
    compression: Compression,
) -> Result<Vec<u8>, String> {
    let payload = cipher
        .open(Role::Chunk, sealed)
        .map_err(|e| e.to_string())?;
    let raw = match compression {
        Compression::None => payload,
        Compression::Zstd => zstd::bulk::decompress(&payload, raw_len as usize)
            .map_err(|e| format!("decompression failed: {e}"))?,
    };
    if raw.len() != raw_len as usize {
        return Err(format!(
            "blob is {} bytes where {raw_len} were recorded",
            raw.len()
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn pack_round_trip() {
        let mk = MasterKey::generate();
        let c = mk.cipher();
        let mut b = PackBuilder::new(1024);
        let groups: Vec<Vec<Vec<u8>>> = (0..3u8)
            .map(|g| {
                (0..=g)
                    .map(|i| vec![g * 10 + i; 100 + i as usize])
                    .collect()
            })
            .collect();
        for group in &groups {
            let plain = group.concat();
            let z = zstd::bulk::compress(&plain, 1).unwrap();
            let chunks: Vec<(ChunkId, u32)> = group
                .iter()
                .map(|ch| (mk.chunk_id(ch), ch.len() as u32))
                .collect();
            b.add(
                &c.seal(Role::Chunk, &z),
                plain.len() as u32,
                Compression::Zstd,
                &chunks,
            );
        }
        let (name, bytes, blobs) = b.finish(&c);
        assert_eq!(name, hex::encode(blake3::hash(&bytes).as_bytes()));
        let h = read_header(&bytes, &c).unwrap();
        assert_eq!(h, blobs);
        for (e, group) in h.iter().zip(&groups) {
            let s = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
            let raw = open_blob(&c, s, e.raw_len, e.compression).unwrap();
            for (cr, ch) in e.chunks.iter().zip(group) {
                let got = &raw[cr.offset as usize..(cr.offset + cr.len) as usize];
                assert_eq!(got, &ch[..]);
                assert_eq!(mk.chunk_id(got), cr.id);
            }
        }
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        assert!(read_header(&bad, &c).is_err());
        assert!(read_header(&bytes[..3], &c).is_err());
    }
}
