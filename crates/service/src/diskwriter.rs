//! Writing a large derived file (a download's tar) without taxing the
//! machine twice: where the filesystem allows it the data goes straight to
//! the device (`O_DIRECT`, in aligned 1 MiB blocks: no copy into the page
//! cache, which costs as much CPU as reading the repository on a small
//! machine); elsewhere through the page cache, synced by a second thread
//! every 32 MiB as it goes. Either way `finish` makes the file durable
//! before anyone is told it is ready.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

const ALIGN: usize = 4096;
const BLOCK: usize = 1 << 20;
const SYNC_EVERY: u64 = 32 << 20;

pub struct DiskWriter {
    file: File,
    written: u64,
    mode: Mode,
}

/// An aligned block: `buf[off..off + BLOCK]`.
struct Block {
    buf: Vec<u8>,
    off: usize,
}

impl Block {
    fn new() -> Block {
        let buf = vec![0u8; BLOCK + ALIGN];
        let off = buf.as_ptr().align_offset(ALIGN);
        Block { buf, off }
    }
    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + BLOCK]
    }
}

/// Full blocks go to a thread that writes them (and waits for the device)
/// while the caller fills the next; blocks come back for reuse.
struct Direct {
    cur: Block,
    len: usize,
    full: Option<SyncSender<Block>>,
    free: std::sync::mpsc::Receiver<Block>,
    io: Option<JoinHandle<io::Result<()>>>,
}

impl Direct {
    const BLOCKS: usize = 4;

    fn new(file: File) -> Direct {
        let (full, blocks) = sync_channel::<Block>(Self::BLOCKS);
        let (give_back, free) = sync_channel::<Block>(Self::BLOCKS);
        for _ in 1..Self::BLOCKS {
            give_back.send(Block::new()).expect("room for the pool");
        }
        let io = std::thread::Builder::new()
            .name("disk-write".into())
            .spawn(move || {
                let mut f = file;
                for mut b in blocks {
                    f.write_all(b.bytes())?;
                    let _ = give_back.send(b);
                }
                Ok(())
            })
            .expect("spawn disk writer");
        Direct {
            cur: Block::new(),
            len: 0,
            full: Some(full),
            free,
            io: Some(io),
        }
    }

    /// Hands the current (full) block over and takes a free one.
    fn pass(&mut self) -> io::Result<()> {
        let next = match self.free.recv() {
            Ok(b) => b,
            Err(_) => {
                return Err(self
                    .stop()
                    .err()
                    .unwrap_or_else(|| io::Error::other("disk writer stopped")));
            }
        };
        let full = std::mem::replace(&mut self.cur, next);
        self.len = 0;
        match self.full.as_ref().map(|tx| tx.send(full)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self
                .stop()
                .err()
                .unwrap_or_else(|| io::Error::other("disk writer stopped"))),
        }
    }

    /// Waits until every handed-over block is written.
    fn stop(&mut self) -> io::Result<()> {
        self.full = None;
        match self.io.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the disk writer thread panicked")),
            None => Ok(()),
        }
    }
}

enum Mode {
    Direct(Direct),
    Buffered {
        synced: u64,
        /// A sync request, at most one waiting; a failed sync there only
        /// leaves the work to the final one.
        hint: Option<SyncSender<()>>,
        syncer: Option<JoinHandle<()>>,
    },
}

impl DiskWriter {
    /// Creates `path` (which must not exist).
    pub fn create(path: &Path) -> io::Result<DiskWriter> {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        match o.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => Ok(DiskWriter {
                mode: Mode::Direct(Direct::new(file.try_clone()?)),
                file,
                written: 0,
            }),
            // Not supported by this filesystem (tmpfs, some network ones),
            // which may have created the file before refusing the flag: it
            // did not exist before (the create is exclusive), so it is ours.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(path);
                Self::buffered(o.open(path)?)
            }
            Err(e) => Err(e),
        }
    }

    fn buffered(file: File) -> io::Result<DiskWriter> {
        let (hint, syncer) = match file.try_clone() {
            Ok(g) => {
                let (tx, rx) = sync_channel::<()>(1);
                let t = std::thread::Builder::new()
                    .name("disk-sync".into())
                    .spawn(move || {
                        for () in rx {
                            let _ = g.sync_data();
                        }
                    })
                    .ok();
                (t.as_ref().map(|_| tx), t)
            }
            Err(_) => (None, None),
        };
        Ok(DiskWriter {
            file,
            written: 0,
            mode: Mode::Buffered {
                synced: 0,
                hint,
                syncer,
            },
        })
    }

    fn stop_syncer(&mut self) {
        if let Mode::Direct(d) = &mut self.mode {
            let _ = d.stop();
        }
        if let Mode::Buffered { hint, syncer, .. } = &mut self.mode {
            *hint = None;
            if let Some(t) = syncer.take() {
                let _ = t.join();
            }
        }
    }

    /// Writes what is left and makes the file durable.
    pub fn finish(mut self) -> io::Result<()> {
        if let Mode::Direct(d) = &mut self.mode {
            d.stop()?;
            if d.len > 0 {
                // The last block, zero-padded to the alignment (the file's
                // end is aligned: only whole blocks went before), then cut
                // back to its length.
                let padded = d.len.div_ceil(ALIGN) * ALIGN;
                let len = d.len;
                d.cur.bytes()[len..padded].fill(0);
                self.file.write_all(&d.cur.bytes()[..padded])?;
                self.file.set_len(self.written)?;
                d.len = 0;
            }
        }
        self.stop_syncer();
        self.file.sync_all()
    }
}

impl Write for DiskWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match &mut self.mode {
            Mode::Direct(d) => {
                let n = b.len().min(BLOCK - d.len);
                let at = d.len;
                d.cur.bytes()[at..at + n].copy_from_slice(&b[..n]);
                d.len += n;
                if d.len == BLOCK {
                    d.pass()?;
                }
                self.written += n as u64;
                Ok(n)
            }
            Mode::Buffered { synced, hint, .. } => {
                let n = self.file.write(b)?;
                self.written += n as u64;
                if self.written - *synced >= SYNC_EVERY {
                    if let Some(h) = hint {
                        let _ = h.try_send(());
                    }
                    *synced = self.written;
                }
                Ok(n)
            }
        }
    }
    /// Nothing to do: `finish` writes the last block and syncs.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        self.stop_syncer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(w: DiskWriter, p: &Path) {
        let mut w = w;
        let mut want = Vec::new();
        for i in 0..100_000u32 {
            let piece: Vec<u8> = (0..(i % 977)).map(|j| (i ^ j) as u8).collect();
            w.write_all(&piece).unwrap();
            want.extend_from_slice(&piece);
        }
        assert!(want.len() as u64 > SYNC_EVERY && want.len() % ALIGN != 0);
        w.finish().unwrap();
        assert_eq!(std::fs::read(p).unwrap(), want);
    }

    #[test]
    fn writes_everything_in_order_direct_or_buffered() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("direct");
        let w = DiskWriter::create(&p).unwrap();
        if !matches!(w.mode, Mode::Direct { .. }) {
            eprintln!(
                "note: {} takes no O_DIRECT; buffered twice",
                d.path().display()
            );
        }
        round_trip(w, &p);
        let p = d.path().join("buffered");
        round_trip(DiskWriter::buffered(File::create(&p).unwrap()).unwrap(), &p);
        // An existing file is never overwritten or removed.
        assert!(DiskWriter::create(&p).is_err());
        assert!(p.is_file());
        // A file that cannot be written: the error comes back.
        let mut w = DiskWriter::buffered(File::open(&p).unwrap()).unwrap();
        assert!(w.write_all(&[0u8; 10]).is_err());
    }
}
