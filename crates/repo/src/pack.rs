//! Pack files: many encrypted chunks in one object, header at the end.
//!
//! ```text
//! pack   = blob_0 ‖ blob_1 ‖ … ‖ blob_{n-1} ‖ sealed_header ‖ header_len (u32 LE)
//! blob_i = seal(Chunk, payload_i)          payload = zstd(chunk) or chunk
//! header = "SPK1" ‖ n (u32 LE) ‖ n × entry
//! entry  = chunk id (32) ‖ stored_len (u32) ‖ raw_len (u32) ‖ compression (u8)
//! ```
//!
//! Offsets are the running sum of `stored_len`. The header is written last,
//! so a pack is produced in one streaming pass. The pack's name is the BLAKE3
//! hash of its bytes, so any change to a stored pack is detected before a
//! single key is used.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
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
const ENTRY_LEN: usize = 32 + 4 + 4 + 1;

/// Accumulates sealed blobs for one pack.
#[derive(Default)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new(capacity: usize) -> PackBuilder {
        PackBuilder {
            buf: Vec::with_capacity(capacity),
            entries: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(&mut self, id: ChunkId, sealed: &[u8], raw_len: u32, compression: Compression) {
        self.entries.push(PackEntry {
            id,
            offset: self.buf.len() as u32,
            stored_len: sealed.len() as u32,
            raw_len,
            compression,
        });
        self.buf.extend_from_slice(sealed);
    }

    /// Seals the header; returns (pack name, bytes, entries).
    pub fn finish(mut self, cipher: &Cipher) -> (String, Vec<u8>, Vec<PackEntry>) {
        let mut h = Vec::with_capacity(8 + self.entries.len() * ENTRY_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            h.extend_from_slice(&e.id.0);
            h.extend_from_slice(&e.stored_len.to_le_bytes());
            h.extend_from_slice(&e.raw_len.to_le_bytes());
            h.push(e.compression as u8);
        }
        let sealed = cipher.seal(Role::PackHeader, &h);
        self.buf.extend_from_slice(&sealed);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        let name = hex::encode(blake3::hash(&self.buf).as_bytes());
        (name, self.buf, self.entries)
    }
}

/// Reads the header of a whole pack.
pub fn read_header(pack: &[u8], cipher: &Cipher) -> Result<Vec<PackEntry>, PackError> {
    if pack.len() < 4 {
        return Err(PackError::Truncated);
    }
    let hl = u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as usize;
    let end = pack.len() - 4;
    if hl > end {
        return Err(PackError::Truncated);
    }
    let h = cipher.open(Role::PackHeader, &pack[end - hl..end])?;
    if h.len() < 8 || &h[..4] != MAGIC {
        return Err(PackError::Malformed("bad magic"));
    }
    let n = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    if h.len() != 8 + n * ENTRY_LEN {
        return Err(PackError::Malformed("bad length"));
    }
    let mut out = Vec::with_capacity(n);
    let mut offset: u64 = 0;
    for e in h[8..].chunks_exact(ENTRY_LEN) {
        let stored_len = u32::from_le_bytes(e[32..36].try_into().unwrap());
        out.push(PackEntry {
            id: ChunkId(e[..32].try_into().unwrap()),
            offset: offset as u32,
            stored_len,
            raw_len: u32::from_le_bytes(e[36..40].try_into().unwrap()),
            compression: Compression::from_u8(e[40]).ok_or(PackError::Malformed("compression"))?,
        });
        offset += stored_len as u64;
    }
    if offset as usize != end - hl {
        return Err(PackError::Malformed("blobs do not fill the pack"));
    }
    Ok(out)
}

/// Decrypts and decompresses one blob.
pub fn open_blob(cipher: &Cipher, sealed: &[u8], e: &PackEntry) -> Result<Vec<u8>, String> {
    let payload = cipher
        .open(Role::Chunk, sealed)
        .map_err(|err| format!("chunk {}: {err}", e.id))?;
    let raw = match e.compression {
        Compression::None => payload,
        Compression::Zstd => zstd::bulk::decompress(&payload, e.raw_len as usize)
            .map_err(|err| format!("chunk {}: decompression failed: {err}", e.id))?,
    };
    if raw.len() != e.raw_len as usize {
        return Err(format!(
            "chunk {}: length {} where {} was recorded",
            e.id,
            raw.len(),
            e.raw_len
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
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + i as usize]).collect();
        for ch in &chunks {
            let z = zstd::bulk::compress(ch, 1).unwrap();
            b.add(
                mk.chunk_id(ch),
                &c.seal(Role::Chunk, &z),
                ch.len() as u32,
                Compression::Zstd,
            );
        }
        let (name, bytes, entries) = b.finish(&c);
        assert_eq!(name, hex::encode(blake3::hash(&bytes).as_bytes()));
        let h = read_header(&bytes, &c).unwrap();
        assert_eq!(h, entries);
        for (e, ch) in h.iter().zip(&chunks) {
            let s = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
            assert_eq!(&open_blob(&c, s, e).unwrap(), ch);
            assert_eq!(mk.chunk_id(ch), e.id);
        }
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        assert!(read_header(&bad, &c).is_err());
        assert!(read_header(&bytes[..3], &c).is_err());
    }
}
