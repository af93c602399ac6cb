//! A streaming reader of the xbstream format `mariadb-backup --stream`
//! writes: a sequence of chunks, each `XBSTCK01`, a flags byte, a type
//! byte (`P` payload, `E` end of a file), the path's length (u32 LE) and
//! the path; a payload chunk then has its length (u64 LE), its offset in the
//! file (u64 LE), a CRC-32 of the payload (u32 LE) and the payload. A
//! file's payloads come in order (offsets consecutive); several files may
//! be interleaved (`--parallel`).

use std::io::Read;

const MAGIC: &[u8; 8] = b"XBSTCK01";

/// One chunk of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes of `path` at `offset`.
    Payload {
        path: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// `path` is complete.
    End { path: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XbError {
    #[error("xbstream: {0}")]
    Format(String),
    #[error("xbstream: reading the stream: {0}")]
    Io(String),
}

fn format(m: impl Into<String>) -> XbError {
    XbError::Format(m.into())
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` at a clean end before any.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, XbError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(format("the stream ends inside a chunk")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(XbError::Io(e.to_string())),
        }
    }
    Ok(true)
}

/// The largest payload a chunk may carry (mariadb-backup writes up to a
/// few MiB): a corrupt length fails instead of allocating it.
pub const MAX_PAYLOAD: u64 = 1 << 30;

/// The next chunk, `None` at the end of the stream.
pub fn next_chunk(r: &mut impl Read) -> Result<Option<Chunk>, XbError> {
    let mut head = [0u8; 14];
    if !fill(r, &mut head)? {
        return Ok(None);
    }
    if &head[..8] != MAGIC {
        return Err(format("a chunk without the XBSTCK01 magic"));
    }
    let kind = head[9];
    let path_len = u32::from_le_bytes(head[10..14].try_into().expect("4 bytes")) as usize;
    if path_len == 0 || path_len > 4096 {
        return Err(format(format!("a path of {path_len} bytes")));
    }
    let mut path = vec![0u8; path_len];
    if !fill(r, &mut path)? {
        return Err(format("the stream ends inside a chunk"));
    }
    let path = String::from_utf8(path).map_err(|_| format("a path that is not UTF-8"))?;
    match kind {
        b'E' => Ok(Some(Chunk::End { path })),
        b'P' => {
            let mut h = [0u8; 20];
            if !fill(r, &mut h)? {
                return Err(format("the stream ends inside a chunk"));
            }
            let len = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
            let offset = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
            if len > MAX_PAYLOAD {
                return Err(format(format!("a payload of {len} bytes for {path}")));
            }
            let mut data = vec![0u8; len as usize];
            if len > 0 && !fill(r, &mut data)? {
                return Err(format("the stream ends inside a chunk"));
            }
            if crc32fast::hash(&data) != crc {
                return Err(format(format!(
                    "a payload of {path} at offset {offset} fails its checksum"
                )));
            }
            Ok(Some(Chunk::Payload { path, offset, data }))
        }
        k => Err(format(format!("unknown chunk type {:?}", k as char))),
    }
}

/// Writes chunks in the same format (tests; and a restore that hands a
/// set back to `mbstream -x`).
pub fn write_payload(out: &mut Vec<u8>, path: &str, offset: u64, data: &[u8]) {
    out.extend_from_slice(MAGIC);
    out.push(0);
    out.push(b'P');
    out.extend_from_slice(&(path.len() as u32).to_le_bytes());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(data);
}

/// See [`write_payload`].
pub fn write_end(out: &mut Vec<u8>, path: &str) {
    out.extend_from_slice(MAGIC);
    out.push(0);
    out.push(b'E');
    out.extend_from_slice(&(path.len() as u32).to_le_bytes());
    out.extend_from_slice(path.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_read_back() {
        let mut s = Vec::new();
        write_payload(&mut s, "ibdata1", 0, b"abc");
        write_payload(&mut s, "db/t.ibd", 0, b"");
        write_payload(&mut s, "ibdata1", 3, b"def");
        write_end(&mut s, "ibdata1");
        let mut r = &s[..];
        assert_eq!(
            next_chunk(&mut r).unwrap(),
            Some(Chunk::Payload {
                path: "ibdata1".into(),
                offset: 0,
                data: b"abc".to_vec()
            })
        );
        assert!(
            matches!(next_chunk(&mut r).unwrap(), Some(Chunk::Payload { data, .. }) if data.is_empty())
        );
        assert!(matches!(
            next_chunk(&mut r).unwrap(),
            Some(Chunk::Payload { offset: 3, .. })
        ));
        assert_eq!(
            next_chunk(&mut r).unwrap(),
            Some(Chunk::End {
                path: "ibdata1".into()
            })
        );
        assert_eq!(next_chunk(&mut r).unwrap(), None);
    }

    #[test]
    fn damage_is_reported() {
        let mut s = Vec::new();
        write_payload(&mut s, "f", 0, b"hello");
        let mut bad = s.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(
            matches!(next_chunk(&mut &bad[..]), Err(XbError::Format(m)) if m.contains("checksum"))
        );
        assert!(next_chunk(&mut &s[..s.len() - 2]).is_err());
        let mut bad = s.clone();
        bad[0] = b'Y';
        assert!(next_chunk(&mut &bad[..]).is_err());
        let mut bad = s;
        bad[9] = b'Q';
        assert!(next_chunk(&mut &bad[..]).is_err());
    }
}
