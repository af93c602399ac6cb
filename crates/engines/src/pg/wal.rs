//! Stale pages in WAL segments.
//!
//! PostgreSQL recycles WAL segment files: a segment in a backup holds valid
//! pages up to the current insert position and, after it, pages left over
//! from the file's previous life. Recovery never uses those: every WAL page
//! header carries `xlp_pageaddr`, the WAL position the page was written for,
//! and the reader stops at the first page whose address does not match its
//! place (or whose magic is zero). So a page whose address is wrong for its
//! place can be stored as zeros (what PostgreSQL puts in a fresh segment)
//! without changing what recovery reads, and zeros cost nothing in the
//! repository. Pages are never altered otherwise.
//!
//! Header layout (`XLogPageHeaderData`, host byte order, little-endian on
//! every platform Stowage builds for): `xlp_magic u16, xlp_info u16,
//! xlp_tli u32, xlp_pageaddr u64 @ 8, xlp_rem_len u32`.

pub const WAL_PAGE: usize = 8192;
static ZEROS: [u8; WAL_PAGE] = [0; WAL_PAGE];

/// If `name` is a WAL segment file name (`TTTTTTTTLLLLLLLLSSSSSSSS`) and
/// `size` a valid segment size, the segment's number.
pub fn segment_number(name: &str, size: u64) -> Option<u64> {
    if name.len() != 24
        || !name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    {
        return None;
    }
    if !size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&size) {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_log = 0x1_0000_0000u64 / size;
    if seg >= per_log {
        return None;
    }
    Some(log * per_log + seg)
}

/// Streams a segment's bytes through, replacing stale pages with zeros.
pub struct StalePageFilter {
    base: u64,
    offset: u64,
    page: Vec<u8>,
    /// Pages replaced by zeros so far.
    pub zeroed: u64,
}

impl StalePageFilter {
    pub fn new(segno: u64, seg_size: u64) -> Self {
        StalePageFilter {
            base: segno * seg_size,
            offset: 0,
            page: Vec::with_capacity(WAL_PAGE),
            zeroed: 0,
        }
    }

    fn page_out<E>(
        &mut self,
        page: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let addr = u64::from_le_bytes(page[8..16].try_into().expect("8 bytes"));
        let expected = self.base + self.offset;
        self.offset += WAL_PAGE as u64;
        if addr == expected {
            out(page)
        } else {
            if page.iter().any(|b| *b != 0) {
                self.zeroed += 1;
            }
            out(&ZEROS)
        }
    }

    pub fn push<E>(
        &mut self,
        mut data: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.page.is_empty() {
            let n = (WAL_PAGE - self.page.len()).min(data.len());
            self.page.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.page.len() == WAL_PAGE {
                let p = std::mem::take(&mut self.page);
                self.page_out(&p, out)?;
                self.page = p;
                self.page.clear();
            }
        }
        while data.len() >= WAL_PAGE {
            let (p, rest) = data.split_at(WAL_PAGE);
            self.page_out(p, out)?;
            data = rest;
        }
        self.page.extend_from_slice(data);
        Ok(())
    }

    /// A trailing partial page (never in a real segment) passes unchanged.
    pub fn finish<E>(&mut self, out: &mut dyn FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if !self.page.is_empty() {
            let p = std::mem::take(&mut self.page);
            out(&p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(addr: u64, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; WAL_PAGE];
        p[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        p[8..16].copy_from_slice(&addr.to_le_bytes());
        p
    }

    #[test]
    fn segment_names() {
        let s = 16 << 20;
        assert_eq!(segment_number("000000010000000000000003", s), Some(3));
        assert_eq!(segment_number("000000010000000100000002", s), Some(256 + 2));
        assert_eq!(segment_number("00000001000000000000000A", s), Some(10));
        assert_eq!(
            segment_number("000000010000000000000100", s),
            None,
            "seg beyond 255 for 16 MiB"
        );
        assert_eq!(segment_number("00000001000000000000000a", s), None);
        assert_eq!(segment_number("00000002.history", s), None);
        assert_eq!(segment_number("000000010000000000000003", 1000), None);
    }

    #[test]
    fn stale_pages_become_zeros_valid_pages_pass() {
        let seg = 3u64;
        let size = 16u64 << 20;
        let base = seg * size;
        // Two valid pages, then pages from the segment's previous life.
        let mut input = page(base, 1);
        input.extend(page(base + WAL_PAGE as u64, 2));
        input.extend(page(base - size + 2 * WAL_PAGE as u64, 3));
        input.extend(vec![0u8; WAL_PAGE]);
        for piece in [1, 100, 8191, 8192, 8193, 1 << 20] {
            let mut f = StalePageFilter::new(seg, size);
            let mut out = Vec::new();
            for c in input.chunks(piece) {
                f.push(c, &mut |d: &[u8]| -> Result<(), ()> {
                    out.extend_from_slice(d);
                    Ok(())
                })
                .unwrap();
            }
            f.finish(&mut |d: &[u8]| -> Result<(), ()> {
                out.extend_from_slice(d);
                Ok(())
            })
            .unwrap();
            assert_eq!(out.len(), input.len());
            assert_eq!(
                &out[..2 * WAL_PAGE],
                &input[..2 * WAL_PAGE],
                "valid pages unchanged"
            );
            assert!(
                out[2 * WAL_PAGE..].iter().all(|b| *b == 0),
                "stale pages zeroed"
            );
            assert_eq!(f.zeroed, 1);
        }
    }
}
