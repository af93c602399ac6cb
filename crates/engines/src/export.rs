//! Export of one part (archive) of a backup set as a byte stream in a
//! standard format, read straight from the repository (never staged on
//! disk): a POSIX tar (ustar, with pax headers for long names and large
//! files) of the archive's files. A PostgreSQL `base` archive becomes what
//! `pg_basebackup -Ft` writes; a MongoDB replica set's archive becomes a
//! mongodump directory (`<db>/<coll>.bson`, `.metadata.json`, `oplog.bson`)
//! that `mongorestore --oplogReplay` reads once unpacked. The download tasks
//! stream this.

use crate::{EngineError, ErrorKind};
use std::io::{Read, Write};
use std::sync::Arc;
use stowage_core::manifest::{FileEntry, FileKind, Manifest};
use stowage_repo::Repository;

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Bytes written to the stream.
    pub bytes: u64,
    pub files: u64,
}

fn io(e: std::io::Error) -> EngineError {
    let kind = if crate::io_is_transient(&e) {
        ErrorKind::Busy
    } else {
        ErrorKind::Filesystem
    };
    EngineError::new(kind, format!("export stream: {e}"))
}

/// Counts what goes through.
struct Counting<'a> {
    out: &'a mut dyn Write,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Octal field of `len` bytes (NUL-terminated).
fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}\0", v, w = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// A pax extended-header record: "<len> <key>=<value>\n", where len counts
/// the whole record including its own digits.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

fn header(name: &[u8], typeflag: u8, size: u64, mode: u32, mtime: i64, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    octal(&mut h[100..108], (mode & 0o7777) as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], (mtime.max(0) as u64).min(USTAR_MAX));
    h[156] = typeflag;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| *b as u64).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn pad(w: &mut dyn Write, size: u64) -> Result<(), EngineError> {
    let rem = (512 - size % 512) % 512;
    w.write_all(&vec![0u8; rem as usize]).map_err(io)
}

/// The largest size a ustar size field holds (11 octal digits).
const USTAR_MAX: u64 = 0o77777777777;

fn entry(repo: &Arc<Repository>, f: &FileEntry, w: &mut dyn Write) -> Result<(), EngineError> {
    let (typeflag, size, link) = match f.kind {
        FileKind::File => (b'0', f.size, ""),
        FileKind::Dir => (b'5', 0, ""),
        FileKind::Symlink => (b'2', 0, f.link_target.as_deref().unwrap_or("")),
    };
    let name = match f.kind {
        FileKind::Dir => format!("{}/", f.path),
        _ => f.path.clone(),
    };
    // Names, links and sizes ustar cannot hold go into a pax header first.
    let mut pax = Vec::new();
    if name.len() > 100 {
        pax.extend(pax_record("path", &name));
    }
    if link.len() > 100 {
        pax.extend(pax_record("linkpath", link));
    }
    if size > USTAR_MAX {
        pax.extend(pax_record("size", &size.to_string()));
    }
    if !pax.is_empty() {
        w.write_all(&header(
            b"././@PaxHeader",
            b'x',
            pax.len() as u64,
            0o644,
            f.mtime,
            b"",
        ))
        .map_err(io)?;
        w.write_all(&pax).map_err(io)?;
        pad(w, pax.len() as u64)?;
    }
    let field_size = if size > USTAR_MAX { 0 } else { size };
    w.write_all(&header(
        name.as_bytes(),
        typeflag,
        field_size,
        f.mode,
        f.mtime,
        link.as_bytes(),
    ))
    .map_err(io)?;
    if f.kind == FileKind::File {
        // Streamed from the repository; every chunk's hash is checked.
        let mut r = repo.file_reader(f);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = r
                .read(&mut buf[..(left.min(1 << 20)) as usize])
                .map_err(|e| EngineError::new(ErrorKind::Repository, format!("{}: {e}", f.path)))?;
            if n == 0 {
                return Err(EngineError::new(
                    ErrorKind::Repository,
                    format!(
                        "{}: shorter in the repository than its manifest says",
                        f.path
                    ),
                ));
            }
            w.write_all(&buf[..n]).map_err(io)?;
            left -= n as u64;
        }
        pad(w, size)?;
    }
    Ok(())
}

/// Writes archive `part` (by name) of the set `m` to `out` as a tar stream.
pub fn export_tar(
    repo: &Arc<Repository>,
    m: &Manifest,
    part: &str,
    out: &mut dyn Write,
) -> Result<ExportInfo, EngineError> {
    let a = m.archives.iter().find(|a| a.name == part).ok_or_else(|| {
        let names: Vec<&str> = m.archives.iter().map(|a| a.name.as_str()).collect();
        EngineError::new(
            ErrorKind::Unsupported,
            format!(
                "the set has no part {part:?} (its parts: {})",
                names.join(", ")
            ),
        )
    })?;
    let mut w = Counting { out, n: 0 };
    for f in &a.files {
        entry(repo, f, &mut w)?;
    }
    // End of archive: two zero blocks.
    w.write_all(&[0u8; 1024]).map_err(io)?;
    w.flush().map_err(io)?;
    Ok(ExportInfo {
        bytes: w.n,
        files: a.files.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::pax_record;

    #[test]
    fn pax_records_count_their_own_length() {
        for v in ["x", &"a".repeat(90), &"b".repeat(995)] {
            let r = pax_record("path", v);
            let len: usize = std::str::from_utf8(&r)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len(), "{v:?}");
        }
    }
}
