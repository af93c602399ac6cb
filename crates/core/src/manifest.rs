//! The manifest of a backup set: what the repository's snapshot file holds.
//!
//! A manifest names every file of the backup with its metadata and the
//! ordered list of chunk ids that make up its content, plus engine metadata
//! (start/stop LSN, timeline, server version …) as free-form JSON. The
//! repository writes it last, after every chunk it names is durable in a pack
//! and an index (see `docs/repository-format.md`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Keyed BLAKE3 hash of a chunk's plaintext: its identity in the repository.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ChunkId(out))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChunkId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad chunk id"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path inside its archive, `/`-separated, never absolute, no `..`.
    pub path: String,
    pub kind: FileKind,
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Seconds since the epoch.
    #[serde(default)]
    pub mtime: i64,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
}

/// One archive of a backup: for PostgreSQL, the main data directory or one
/// tablespace; for a sharded cluster later, one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archive {
    pub name: String,
    /// Where the archive lived on the source (a tablespace path), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_location: Option<String>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    /// Bytes of file content (before dedup and compression).
    pub bytes_logical: u64,
    /// Bytes this backup added to the repository (packs written).
    pub bytes_stored_new: u64,
    pub chunks_total: u64,
    pub chunks_new: u64,
}

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Milliseconds since the epoch when the backup started / finished.
    pub started_ms: i64,
    pub finished_ms: i64,
    pub hostname: String,
    /// Free-form labels: instance id, task id, engine.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub archives: Vec<Archive>,
    pub summary: Summary,
    /// Engine-specific facts (LSNs, timeline, server version …).
    #[serde(default)]
    pub engine_meta: serde_json::Value,
}

impl Manifest {
    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.archives
            .iter()
            .flat_map(|a| a.files.iter())
            .flat_map(|f| f.chunks.iter())
    }
}

/// A path from a backup is safe to join to a restore target: relative, no
/// `..`, no empty or `.` components, no NUL.
pub fn is_safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != ".." && c != ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        assert!(is_safe_relative_path("base/1/1234"));
        assert!(is_safe_relative_path("PG_VERSION"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "a/./b",
            "a/",
        ] {
            assert!(!is_safe_relative_path(bad), "{bad}");
        }
    }

    #[test]
    fn chunk_id_hex_round_trip() {
        let id = ChunkId([7u8; 32]);
        let j = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ChunkId>(&j).unwrap(), id);
        assert!(ChunkId::from_hex("zz").is_none());
    }
}
