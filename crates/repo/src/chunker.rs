//! Streaming content-defined chunking (FastCDC 2020, keyed gear table).
//!
//! Data arrives in pieces of any size; cut points depend only on content, so
//! an insertion shifts boundaries only locally and unchanged regions produce
//! the same chunks again. A cut is only taken once at least `max` bytes are
//! buffered (or the input ended), so every cut equals the one the whole-file
//! chunker would find.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    /// Chosen by measurement on PostgreSQL data directories: see
    /// `bench/README.md` ("Chunk size"). Compression groups give zstd its
    /// context, so chunks can be small for deduplication: the minimum is one
    /// 8 KiB page, the average four.
    fn default() -> Self {
        ChunkerParams {
            min: 8 * 1024,
            avg: 32 * 1024,
            max: 128 * 1024,
        }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.min >= 64
            && self.min < self.avg
            && self.avg < self.max
            && self.max <= 16 * 1024 * 1024
            && self.min.is_multiple_of(2)
            && self.avg.is_power_of_two()
            && self.max.is_multiple_of(2);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid chunker parameters {self:?}: need 64 <= min < avg < max <= 16 MiB, avg a power of two, even sizes"
            ))
        }
    }
}

pub struct Chunker {
    p: ChunkerParams,
    masks: (u64, u64),
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
    buf: Vec<u8>,
}

impl Chunker {
    pub fn new(p: ChunkerParams, seed: u64) -> Chunker {
        let masks =
            fastcdc::v2020::select_masks(p.avg as usize, fastcdc::v2020::Normalization::Level1);
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(seed);
        Chunker {
            p,
            masks,
            gear,
            gear_ls,
            buf: Vec::with_capacity(p.max as usize * 2),
        }
    }

    fn cut(&self, data: &[u8]) -> usize {
        let (ms, ml) = self.masks;
        let (_, n) = fastcdc::v2020::cut_gear(
            data,
            self.p.min as usize,
            self.p.avg as usize,
            self.p.max as usize,
            ms,
            ml,
            ms << 1,
            ml << 1,
            &self.gear,
            &self.gear_ls,
        );
        n.max(1).min(data.len())
    }

    /// Forgets what is buffered (the stream it belonged to is abandoned).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// Feeds data; calls `emit` for every chunk that is complete.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        let max = self.p.max as usize;
        // Fast path: nothing buffered, chunk straight from the input.
        if self.buf.is_empty() {
            while data.len() >= max {
                let n = self.cut(data);
                emit(&data[..n]);
                data = &data[n..];
            }
            self.buf.extend_from_slice(data);
            return;
        }
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        while self.buf.len() - pos >= max {
            let n = self.cut(&self.buf[pos..]);
            emit(&self.buf[pos..pos + n]);
            pos += n;
        }
        self.buf.drain(..pos);
    }

    /// Ends the stream: emits what is left (possibly shorter than `min`).
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let mut pos = 0;
        while pos < self.buf.len() {
            let n = self.cut(&self.buf[pos..]);
            emit(&self.buf[pos..pos + n]);
            pos += n;
        }
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min: 256,
            avg: 1024,
            max: 4096,
        }
    }

    fn chunk_all(data: &[u8], pieces: &[usize], seed: u64) -> Vec<Vec<u8>> {
        let mut c = Chunker::new(small(), seed);
        let mut out = Vec::new();
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = pieces[i % pieces.len()].min(rest.len()).max(1);
            c.push(&rest[..n], &mut |ch| out.push(ch.to_vec()));
            rest = &rest[n..];
            i += 1;
        }
        c.finish(&mut |ch| out.push(ch.to_vec()));
        out
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #[test]
        fn boundaries_do_not_depend_on_write_sizes(
            len in 0usize..60_000, seed in any::<u64>(), pieces in proptest::collection::vec(1usize..9000, 1..5)
        ) {
            let data = pseudo_random(len, seed);
            let whole = chunk_all(&data, &[usize::MAX / 2], 7);
            let split = chunk_all(&data, &pieces, 7);
            prop_assert_eq!(&whole, &split);
            prop_assert_eq!(whole.concat(), data);
            for c in &whole[..whole.len().saturating_sub(1)] {
                prop_assert!(c.len() >= 256 && c.len() <= 4096);
            }
        }
    }

    #[test]
    fn insertion_changes_few_chunks() {
        let data = pseudo_random(200_000, 3);
        let mut changed = data.clone();
        changed.splice(100_000..100_000, b"inserted bytes".iter().copied());
        let a = chunk_all(&data, &[10_000], 1);
        let b = chunk_all(&changed, &[10_000], 1);
        let set: std::collections::HashSet<_> = a.iter().collect();
        let new = b.iter().filter(|c| !set.contains(c)).count();
        assert!(new <= 3, "{new} new chunks of {}", b.len());
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = pseudo_random(100_000, 5);
        assert_ne!(chunk_all(&data, &[1000], 1), chunk_all(&data, &[1000], 2));
    }
}
