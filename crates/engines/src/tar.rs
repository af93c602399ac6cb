//! A streaming reader of the tar archives PostgreSQL sends in `BASE_BACKUP`.
//!
//! Pure: bytes in, events out; no I/O. Data arrives in CopyData messages of
//! any size, so the reader keeps only a partial 512-byte header between
//! calls and hands file content through without copying it.
//!
//! Supported: ustar and old-style headers, the ustar `prefix` field, GNU
//! long names (`L`), pax extended headers (`x`, `path`/`linkpath`/`size`),
//! base-256 sizes. PostgreSQL omits the two trailing zero blocks; the end of
//! an archive is wherever the stream moves on, and [`TarReader::finish`]
//! checks that it did not stop inside an entry.

use stowage_core::manifest::FileKind;
use stowage_repo::FileMeta;

/// One archive member: its metadata as the repository records it, and the
/// length of the content that follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub meta: FileMeta,
    pub size: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TarEvent<'a> {
    Begin(TarEntry),
    Data(&'a [u8]),
    End,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error("tar header checksum mismatch at byte {0} of the archive")]
    Checksum(u64),
    #[error("malformed tar header at byte {offset}: {what}")]
    Malformed { offset: u64, what: &'static str },
    #[error("unsupported tar entry type {0:?} for {1}")]
    Unsupported(char, String),
    #[error("archive ended inside an entry")]
    Truncated,
}

enum State {
    Header,
    Data {
        remaining: u64,
        padding: u64,
    },
    Padding(u64),
    /// Collecting a GNU long name or pax header body.
    Meta {
        kind: u8,
        remaining: u64,
        padding: u64,
        buf: Vec<u8>,
    },
    Ended,
}

pub struct TarReader {
    state: State,
    header: Vec<u8>,
    offset: u64,
    long_name: Option<String>,
    long_link: Option<String>,
    pax_size: Option<u64>,
}

impl Default for TarReader {
    fn default() -> Self {
        TarReader {
            state: State::Header,
            header: Vec::with_capacity(512),
            offset: 0,
            long_name: None,
            long_link: None,
            pax_size: None,
        }
    }
}

fn parse_num(field: &[u8], offset: u64) -> Result<u64, TarError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256, big endian, first byte's high bit is the marker
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for b in &field[1..] {
            v = v.checked_shl(8).ok_or(TarError::Malformed {
                offset,
                what: "number too large",
            })? | *b as u64;
        }
        return Ok(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&s).map_err(|_| TarError::Malformed {
        offset,
        what: "non-ASCII number",
    })?;
    u64::from_str_radix(s, 8).map_err(|_| TarError::Malformed {
        offset,
        what: "bad octal number",
    })
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn pad(size: u64) -> u64 {
    (512 - size % 512) % 512
}

fn normalize(path: &str) -> String {
    let p = path.strip_prefix("./").unwrap_or(path);
    p.trim_end_matches('/').to_string()
}

impl TarReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the reader is between entries.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header | State::Ended) && self.header.is_empty()
    }

    /// Checks that the archive did not end inside an entry.
    pub fn finish(&self) -> Result<(), TarError> {
        if self.at_boundary() {
            Ok(())
        } else {
            Err(TarError::Truncated)
        }
    }

    pub fn feed<E: From<TarError>>(
        &mut self,
        mut data: &[u8],
        on: &mut impl FnMut(TarEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            match &mut self.state {
                State::Ended => return Ok(()),
                State::Header => {
                    let need = 512 - self.header.len();
                    let n = need.min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.offset += n as u64;
                    if self.header.len() == 512 {
                        let h = std::mem::take(&mut self.header);
                        self.on_header(&h, on)?;
                        self.header = h;
                        self.header.clear();
                    }
                }
                State::Data { remaining, padding } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    if n > 0 {
                        on(TarEvent::Data(&data[..n]))?;
                    }
                    *remaining -= n as u64;
                    data = &data[n..];
                    self.offset += n as u64;
                    if *remaining == 0 {
                        let p = *padding;
                        on(TarEvent::End)?;
                        self.state = if p > 0 {
                            State::Padding(p)
                        } else {
                            State::Header
                        };
                    }
                }
                State::Padding(p) => {
                    let n = (*p).min(data.len() as u64);
                    *p -= n;
                    data = &data[n as usize..];
                    self.offset += n;
                    if *p == 0 {
                        self.state = State::Header;
                    }
                }
                State::Meta {
                    kind,
                    remaining,
                    padding,
                    buf,
                } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    buf.extend_from_slice(&data[..n]);
                    *remaining -= n as u64;
                    data = &data[n..];
                    self.offset += n as u64;
                    if *remaining == 0 {
                        let (kind, p, buf) = (*kind, *padding, std::mem::take(buf));
                        self.apply_meta(kind, &buf);
                        self.state = if p > 0 {
                            State::Padding(p)
                        } else {
                            State::Header
                        };
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_meta(&mut self, kind: u8, buf: &[u8]) {
        match kind {
            b'L' => self.long_name = Some(cstr(buf)),
            b'K' => self.long_link = Some(cstr(buf)),
            _ => {
                // pax records: "<len> <key>=<value>\n"
                let mut rest = buf;
                while !rest.is_empty() {
                    let Some(sp) = rest.iter().position(|b| *b == b' ') else {
                        break;
                    };
                    let Some(len) = std::str::from_utf8(&rest[..sp])
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                    else {
                        break;
                    };
                    if len == 0 || len > rest.len() || len <= sp + 1 {
                        break;
                    }
                    let rec = &rest[sp + 1..len];
                    let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
                    if let Some(eq) = rec.iter().position(|b| *b == b'=') {
                        let (k, v) = (
                            &rec[..eq],
                            String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
                        );
                        match k {
                            b"path" => self.long_name = Some(v),
                            b"linkpath" => self.long_link = Some(v),
                            b"size" => self.pax_size = v.parse().ok(),
                            _ => {}
                        }
                    }
                    rest = &rest[len..];
                }
            }
        }
    }

    fn on_header<E: From<TarError>>(
        &mut self,
        h: &[u8],
        on: &mut impl FnMut(TarEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let at = self.offset - 512;
        if h.iter().all(|b| *b == 0) {
            self.state = State::Ended;
            return Ok(());
        }
        let stored = parse_num(&h[148..156], at)?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    b' ' as u64
                } else {
                    *b as u64
                }
            })
            .sum();
        if stored != sum {
            return Err(TarError::Checksum(at).into());
        }
        let typeflag = h[156];
        let mut size = parse_num(&h[124..136], at)?;
        if matches!(typeflag, b'L' | b'K' | b'x' | b'g') {
            if size > 1 << 20 {
                return Err(TarError::Malformed {
                    offset: at,
                    what: "extended header too large",
                }
                .into());
            }
            self.state = State::Meta {
                kind: typeflag,
                remaining: size,
                padding: pad(size),
                buf: Vec::with_capacity(size as usize),
            };
            if size == 0 {
                self.state = State::Header;
            }
            return Ok(());
        }
        if let Some(s) = self.pax_size.take() {
            size = s;
        }
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        if let Some(long) = self.long_name.take() {
            name = long;
        }
        let link = self.long_link.take().unwrap_or_else(|| cstr(&h[157..257]));
        let kind = match typeflag {
            b'0' | 0 | b'7' => FileKind::File,
            b'5' => FileKind::Dir,
            b'2' => FileKind::Symlink,
            other => return Err(TarError::Unsupported(other as char, name).into()),
        };
        let entry = TarEntry {
            meta: FileMeta {
                path: normalize(&name),
                kind,
                mode: parse_num(&h[100..108], at)? as u32,
                uid: parse_num(&h[108..116], at)? as u32,
                gid: parse_num(&h[116..124], at)? as u32,
                mtime: parse_num(&h[136..148], at)? as i64,
                link_target: (kind == FileKind::Symlink).then_some(link),
            },
            size: if kind == FileKind::File { size } else { 0 },
        };
        let size = entry.size;
        on(TarEvent::Begin(entry))?;
        if size == 0 {
            on(TarEvent::End)?;
            self.state = State::Header;
        } else {
            self.state = State::Data {
                remaining: size,
                padding: pad(size),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ustar header the way PostgreSQL's tarCreateHeader does.
    pub fn header(name: &str, typeflag: u8, size: u64, link: &str) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000600\0");
        h[108..116].copy_from_slice(b"0000764\0");
        h[116..124].copy_from_slice(b"0000764\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"14533241107\0");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| *b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    pub fn archive(entries: &[(&str, u8, Vec<u8>, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, t, data, link) in entries {
            out.extend(header(name, *t, data.len() as u64, link));
            out.extend(data);
            out.extend(vec![0u8; pad(data.len() as u64) as usize]);
        }
        out
    }

    fn collect(bytes: &[u8], piece: usize) -> Result<Vec<(TarEntry, Vec<u8>)>, TarError> {
        let mut r = TarReader::new();
        let mut out: Vec<(TarEntry, Vec<u8>)> = Vec::new();
        for p in bytes.chunks(piece.max(1)) {
            r.feed(p, &mut |ev| -> Result<(), TarError> {
                match ev {
                    TarEvent::Begin(e) => out.push((e, Vec::new())),
                    TarEvent::Data(d) => out.last_mut().unwrap().1.extend_from_slice(d),
                    TarEvent::End => {}
                }
                Ok(())
            })?;
        }
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn reads_entries_in_any_piece_size() {
        let a = archive(&[
            ("PG_VERSION", b'0', b"15\n".to_vec(), ""),
            ("base/", b'5', vec![], ""),
            (
                "base/1/1259",
                b'0',
                (0..20000u32).map(|i| i as u8).collect(),
                "",
            ),
            ("pg_tblspc/16385", b'2', vec![], "/srv/ts"),
            ("empty", b'0', vec![], ""),
        ]);
        for piece in [1, 7, 511, 512, 513, 4096, 1 << 20] {
            let got = collect(&a, piece).unwrap();
            assert_eq!(got.len(), 5);
            assert_eq!(got[0].0.meta.path, "PG_VERSION");
            assert_eq!(got[0].1, b"15\n");
            assert_eq!(got[0].0.meta.mode, 0o600);
            assert_eq!(got[0].0.meta.uid, 0o764);
            assert_eq!(got[1].0.meta.kind, FileKind::Dir);
            assert_eq!(got[1].0.meta.path, "base");
            assert_eq!(got[2].1.len(), 20000);
            assert_eq!(got[3].0.meta.link_target.as_deref(), Some("/srv/ts"));
            assert_eq!(got[4].0.size, 0);
        }
    }

    #[test]
    fn long_names_and_pax() {
        let long = "d/".repeat(80) + "file";
        let mut a = archive(&[("././@LongLink", b'L', format!("{long}\0").into_bytes(), "")]);
        a.extend(archive(&[("short", b'0', b"x".to_vec(), "")]));
        let rec = "17 path=pax/name\n";
        a.extend(archive(&[("PaxHeader", b'x', rec.as_bytes().to_vec(), "")]));
        a.extend(archive(&[("ignored", b'0', b"yz".to_vec(), "")]));
        let got = collect(&a, 100).unwrap();
        assert_eq!(got[0].0.meta.path, long);
        assert_eq!(got[1].0.meta.path, "pax/name");
        assert_eq!(got[1].1, b"yz");
    }

    #[test]
    fn damage_is_detected() {
        let mut a = archive(&[("a", b'0', b"hello".to_vec(), "")]);
        a[10] ^= 1;
        assert!(matches!(collect(&a, 64), Err(TarError::Checksum(0))));
        let a = archive(&[("a", b'0', vec![1; 1000], "")]);
        assert_eq!(collect(&a[..700], 64).unwrap_err(), TarError::Truncated);
        let a = archive(&[("dev", b'3', vec![], "")]);
        assert!(matches!(
            collect(&a, 64),
            Err(TarError::Unsupported('3', _))
        ));
    }
}
