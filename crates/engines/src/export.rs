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

pub(crate) fn io(e: std::io::Error) -> EngineError {
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

/// How many bytes of file data the read-ahead thread hands over at once,
/// and how many such pieces may wait.
const PIECE: usize = 64 << 10;
const AHEAD: usize = 64;

/// A piece of file data: a buffer and how much of it is filled.
type Piece = Result<(Vec<u8>, usize), EngineError>;

/// Reads every regular file of `files`, in order, in pieces of at most
/// `PIECE` bytes (every chunk's hash checked by the repository reader),
/// into buffers that come back through `free` once written (no fresh
/// allocation, zeroing or page faults per piece). Stops when the receiver
/// is gone.
fn read_ahead(
    repo: &Arc<Repository>,
    files: &[FileEntry],
    tx: std::sync::mpsc::SyncSender<Piece>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
) {
    for f in files.iter().filter(|f| f.kind == FileKind::File) {
        let mut r = repo.file_reader(f);
        let mut left = f.size;
        while left > 0 {
            let mut buf = free.try_recv().unwrap_or_else(|_| vec![0u8; PIECE]);
            let want = left.min(PIECE as u64) as usize;
            let mut got = 0;
            let res = loop {
                match r.read(&mut buf[got..want]) {
                    Ok(0) => {
                        break Err(EngineError::new(
                            ErrorKind::Repository,
                            format!(
                                "{}: shorter in the repository than its manifest says",
                                f.path
                            ),
                        ));
                    }
                    Ok(n) => {
                        got += n;
                        if got == want {
                            break Ok(());
                        }
                    }
                    Err(e) => {
                        break Err(EngineError::new(
                            ErrorKind::Repository,
                            format!("{}: {e}", f.path),
                        ));
                    }
                }
            };
            if let Err(e) = res {
                let _ = tx.send(Err(e));
                return;
            }
            left -= want as u64;
            if tx.send(Ok((buf, want))).is_err() {
                return;
            }
        }
    }
}

/// One entry's header (and pax header) and, for a regular file, its data
/// from the read-ahead pieces.
fn entry(
    f: &FileEntry,
    pieces: &std::sync::mpsc::Receiver<Piece>,
    done: &std::sync::mpsc::SyncSender<Vec<u8>>,
    w: &mut dyn Write,
) -> Result<(), EngineError> {
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
        let mut left = size;
        while left > 0 {
            let (buf, n) = pieces.recv().map_err(|_| {
                EngineError::new(
                    ErrorKind::Repository,
                    format!("{}: the reader stopped", f.path),
                )
            })??;
            w.write_all(&buf[..n]).map_err(io)?;
            left -= n as u64;
            let _ = done.try_send(buf);
        }
        pad(w, size)?;
    }
    Ok(())
}

/// Writes archive `part` (by name) of the set `m` to `out` as a tar stream.
/// The files' data is read (decrypted, decompressed, checked) on a thread of
/// its own, a few pieces ahead, while this one writes: reading the
/// repository and writing the stream overlap.
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
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD);
        let (done, free) = std::sync::mpsc::sync_channel(AHEAD + 2);
        s.spawn(|| read_ahead(repo, &a.files, tx, free));
        let res = (|| {
            for f in &a.files {
                entry(f, &rx, &done, &mut w)?;
            }
            // End of archive: two zero blocks.
            w.write_all(&[0u8; 1024]).map_err(io)?;
            w.flush().map_err(io)
        })();
        // Stops the reader if the writing ended early.
        drop(rx);
        res
    })?;
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
