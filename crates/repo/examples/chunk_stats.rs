//! Measures what a chunk size costs on real data: chunks every file under a
//! directory with Stowage's chunker, compresses each chunk on its own with
//! zstd (as the repository does), and prints totals. Used to choose the
//! default chunk size (see bench/README.md).
//!
//!   cargo run --release -p stowage-repo --example chunk_stats -- DIR [AVG_KIB...]
//!   cargo run --release -p stowage-repo --example chunk_stats -- DIR --then DIR2 [AVG_KIB...]
//!
//! With `--then`, also prints what a second backup of DIR2 adds after DIR.

use std::path::Path;
use stowage_repo::ChunkerParams;
use stowage_repo::chunker::Chunker;

fn walk(p: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            walk(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

/// (new chunks, their raw bytes, their zstd-1 bytes) when backing up `files`
/// after everything in `seen`.
fn pass(
    files: &[std::path::PathBuf],
    p: ChunkerParams,
    seen: &mut std::collections::HashSet<[u8; 32]>,
) -> (u64, u64, u64) {
    let mut z = zstd::bulk::Compressor::new(1).unwrap();
    let (mut n, mut raw, mut comp) = (0u64, 0u64, 0u64);
    for f in files {
        let data = std::fs::read(f).unwrap();
        let mut c = Chunker::new(p, 0x5eed);
        let mut each = |ch: &[u8]| {
            if !seen.insert(*blake3::hash(ch).as_bytes()) {
                return;
            }
            n += 1;
            raw += ch.len() as u64;
            comp += z
                .compress(ch)
                .map(|v| v.len().min(ch.len()))
                .unwrap_or(ch.len()) as u64;
        };
        c.push(&data, &mut each);
        c.finish(&mut each);
    }
    (n, raw, comp)
}

/// Stored size: compressed chunks plus 40 B seal and ~86 B pack-header and index entry each.
fn stored(n: u64, comp: u64) -> f64 {
    (comp + n * (40 + 86)) as f64 / 1e6
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.remove(0));
    let then = if args.first().map(String::as_str) == Some("--then") {
        args.remove(0);
        Some(std::path::PathBuf::from(args.remove(0)))
    } else {
        None
    };
    let avgs: Vec<u32> = if args.is_empty() {
        vec![16, 32, 64, 128, 256, 512]
    } else {
        args.iter().map(|a| a.parse().unwrap()).collect()
    };
    let mut files = Vec::new();
    walk(&dir, &mut files);
    files.sort();
    let mut files2 = Vec::new();
    if let Some(t) = &then {
        walk(t, &mut files2);
        files2.sort();
    }
    println!(
        "| avg KiB | chunks | raw MB | zstd-1 per chunk MB | ratio | stored MB | then: new chunks | then: stored MB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for avg in avgs {
        let p = ChunkerParams {
            min: avg * 256,
            avg: avg * 1024,
            max: avg * 4096,
        };
        let mut seen = std::collections::HashSet::new();
        let (n, raw, comp) = pass(&files, p, &mut seen);
        let (n2, _, comp2) = if then.is_some() {
            pass(&files2, p, &mut seen)
        } else {
            (0, 0, 0)
        };
        println!(
            "| {avg} | {n} | {:.1} | {:.2} | {:.1} | {:.2} | {n2} | {:.2} |",
            raw as f64 / 1e6,
            comp as f64 / 1e6,
            raw as f64 / comp as f64,
            stored(n, comp),
            stored(n2, comp2),
        );
    }
}
