//! Reading one file of a snapshot as a stream, without staging it on disk:
//! what a restore into a running server (MongoDB, MySQL) and an export of
//! an archive (download tasks) read from.
//!
//! Chunks are fetched in file order; consecutive chunks usually share a
//! blob, so the last opened blob is kept. Every chunk is checked against its
//! keyed hash before its bytes are handed out.

use crate::index::Index;
use crate::pack::open_blob;
use crate::repo::{RepoError, Repository};
use crate::storage::FileType;
use std::io::Read;
use std::sync::Arc;
use stowage_core::manifest::{ChunkId, FileEntry};

/// A `Read` over one file's content, chunk by chunk.
pub struct FileReader {
    repo: Arc<Repository>,
    idx: Arc<Index>,
    chunks: Vec<ChunkId>,
    next: usize,
    /// The current chunk's bytes and how many were handed out.
    cur: Vec<u8>,
    cur_off: usize,
    /// The last opened blob: (pack position, blob offset) and its plaintext.
    blob: Option<((u32, u32), Vec<u8>)>,
}

impl Repository {
    /// A stream of `file`'s content as backed up.
    pub fn file_reader(self: &Arc<Self>, file: &FileEntry) -> FileReader {
        FileReader {
            repo: self.clone(),
            idx: self.index(),
            chunks: file.chunks.clone(),
            next: 0,
            cur: Vec::new(),
            cur_off: 0,
            blob: None,
        }
    }
}

impl FileReader {
    fn load_next(&mut self) -> Result<bool, RepoError> {
        let Some(id) = self.chunks.get(self.next).copied() else {
            return Ok(false);
        };
        self.next += 1;
        let loc = self
            .idx
            .get(&id)
            .ok_or_else(|| RepoError::Corrupt(format!("chunk {id} is not in the index")))?;
        let key = (loc.pack, loc.blob_offset);
        if self.blob.as_ref().is_none_or(|(k, _)| *k != key) {
            let name = hex::encode(self.idx.pack_id(loc.pack));
            let sealed = self.repo.storage.get_range(
                FileType::Pack,
                &name,
                loc.blob_offset as u64,
                loc.blob_stored_len as u64,
            )?;
            let raw = open_blob(
                &self.repo.cipher,
                &sealed,
                loc.blob_raw_len,
                loc.compression,
            )
            .map_err(|m| {
                RepoError::Corrupt(format!("pack {name}, blob at {}: {m}", loc.blob_offset))
            })?;
            self.blob = Some((key, raw));
        }
        let raw = &self.blob.as_ref().expect("blob loaded").1;
        let (start, len) = (loc.chunk_offset as usize, loc.chunk_len as usize);
        let data = raw
            .get(start..start + len)
            .ok_or_else(|| RepoError::Corrupt(format!("chunk {id} lies outside its blob")))?;
        if self.repo.key.chunk_id(data) != id {
            return Err(RepoError::Corrupt(format!(
                "chunk {id} does not match its id"
            )));
        }
        self.cur.clear();
        self.cur.extend_from_slice(data);
        self.cur_off = 0;
        Ok(true)
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur_off == self.cur.len() {
            match self.load_next() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        let n = buf.len().min(self.cur.len() - self.cur_off);
        buf[..n].copy_from_slice(&self.cur[self.cur_off..self.cur_off + n]);
        self.cur_off += n;
        Ok(n)
    }
}
