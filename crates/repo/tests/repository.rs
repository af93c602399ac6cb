//! End-to-end tests of the repository: backup → verify → restore, dedup,
//! damage detection, gc of abandoned data.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use stowage_core::manifest::FileKind;
use stowage_repo::restore::{self, RestoreOptions};
use stowage_repo::storage::FileType;
use stowage_repo::{ChunkerParams, FileMeta, KdfParams, LocalStorage, Repository, Storage};

fn small_chunks() -> ChunkerParams {
    ChunkerParams {
        min: 1024,
        avg: 4096,
        max: 16384,
    }
}

fn new_repo(dir: &Path) -> Arc<Repository> {
    let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir).unwrap());
    Arc::new(Repository::init(s, "pw", small_chunks(), KdfParams::insecure_fast()).unwrap())
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 16) as u8 // compressible-ish
        })
        .collect()
}

fn meta(path: &str, kind: FileKind) -> FileMeta {
    FileMeta {
        path: path.into(),
        kind,
        mode: if kind == FileKind::Dir { 0o700 } else { 0o600 },
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        link_target: None,
    }
}

fn backup(repo: &Arc<Repository>, files: &[(&str, Vec<u8>)]) -> String {
    let mut w = repo.start_backup(2).unwrap();
    w.begin_archive("base", None).unwrap();
    w.add_entry(meta("dir", FileKind::Dir)).unwrap();
    for (p, data) in files {
        w.begin_file(meta(p, FileKind::File)).unwrap();
        for piece in data.chunks(7777) {
            w.write(piece).unwrap();
        }
        w.end_file().unwrap();
    }
    let mut link = meta("dir/link", FileKind::Symlink);
    link.link_target = Some("../a".into());
    w.add_entry(link).unwrap();
    w.finish(BTreeMap::new(), serde_json::Value::Null)
        .unwrap()
        .0
}

fn restore_to(repo: &Repository, snap: &str, target: &Path) {
    let m = repo.read_snapshot(snap).unwrap();
    let plan = restore::plan(&m, &repo.index(), &[(0, target.to_path_buf())]).unwrap();
    repo.restore(
        &plan,
        &RestoreOptions::default(),
        &|_, _| {},
        &AtomicBool::new(false),
    )
    .unwrap();
}

#[test]
fn backup_restore_dedup_verify_gc() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(&d.path().join("repo"));
    let a = pseudo_random(300_000, 1);
    let b = pseudo_random(123_457, 2);
    let files = vec![
        ("a", a.clone()),
        ("dir/b", b.clone()),
        ("dir/empty", vec![]),
        ("dup", a.clone()),
    ];
    let s1 = backup(&repo, &files);
    let stored1 = repo.stored_bytes().unwrap();
    assert!(stored1 > 0);
    // Duplicate file stored once: stored bytes are well below a + b.
    assert!(stored1 < (a.len() + b.len()) as u64);

    // Unchanged data again: almost nothing new.
    let s2 = backup(&repo, &files);
    let m2 = repo.read_snapshot(&s2).unwrap();
    assert_eq!(
        m2.summary.chunks_new, 0,
        "unchanged backup stored new chunks"
    );
    assert!(repo.stored_bytes().unwrap() - stored1 < 1000);

    // Restore is byte-identical, with metadata.
    let t = d.path().join("restore");
    restore_to(&repo, &s1, &t);
    assert_eq!(std::fs::read(t.join("a")).unwrap(), a);
    assert_eq!(std::fs::read(t.join("dir/b")).unwrap(), b);
    assert_eq!(std::fs::read(t.join("dup")).unwrap(), a);
    assert_eq!(
        std::fs::read(t.join("dir/empty")).unwrap(),
        Vec::<u8>::new()
    );
    assert_eq!(
        std::fs::read_link(t.join("dir/link")).unwrap(),
        Path::new("../a")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(t.join("a")).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let r = repo.verify(2, &|_, _| {}).unwrap();
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(r.snapshots_checked, 2);

    // Forget both snapshots: gc reclaims everything.
    repo.delete_snapshot(&s1).unwrap();
    repo.delete_snapshot(&s2).unwrap();
    let g = repo.gc().unwrap();
    assert!(g.packs_deleted > 0);
    assert_eq!(repo.stored_bytes().unwrap(), 0);
    assert!(repo.verify(2, &|_, _| {}).unwrap().ok());
}

#[test]
fn reopen_with_password_and_wrong_password() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    let s = backup(&repo, &[("x", pseudo_random(50_000, 9))]);
    drop(repo);
    let st: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
    let err = Repository::open(st.clone(), "nope").unwrap_err();
    assert!(
        err.to_string().contains("wrong repository password"),
        "{err}"
    );
    let repo = Repository::open(st, "pw").unwrap();
    assert!(!repo.index().is_empty());
    let t = tempfile::tempdir().unwrap();
    restore_to(&repo, &s, t.path());
    assert_eq!(
        std::fs::read(t.path().join("x")).unwrap(),
        pseudo_random(50_000, 9)
    );
}

#[test]
fn flipped_byte_in_a_pack_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    backup(&repo, &[("x", pseudo_random(200_000, 3))]);
    let (name, size) = repo.storage().list(FileType::Pack).unwrap()[0].clone();
    let path = d.path().join("data").join(&name[..2]).join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(size / 3) as usize] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let r = repo.verify(1, &|_, _| {}).unwrap();
    assert!(!r.ok());
    assert!(r.errors.iter().any(|e| e.contains(&name)), "{:?}", r.errors);
}

#[test]
fn abandoned_backup_leaves_only_reclaimable_data() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    let keep = backup(&repo, &[("k", pseudo_random(100_000, 4))]);
    {
        let mut w = repo.start_backup(2).unwrap();
        w.begin_file(meta("big", FileKind::File)).unwrap();
        // Enough new data to fill at least one pack (16 MiB target).
        for i in 0..40u64 {
            w.write(&pseudo_random(500_000, 100 + i)).unwrap();
        }
        // dropped without finish: as if cancelled or crashed
    }
    let r = repo.verify(2, &|_, _| {}).unwrap();
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(r.snapshots_checked, 1);
    let before = repo.stored_bytes().unwrap();
    let g = repo.gc().unwrap();
    assert!(g.bytes_reclaimed > 0 && repo.stored_bytes().unwrap() < before);
    let t = tempfile::tempdir().unwrap();
    restore_to(&repo, &keep, t.path());
    assert_eq!(
        std::fs::read(t.path().join("k")).unwrap(),
        pseudo_random(100_000, 4)
    );
}

/// A pack that is partly used by the remaining snapshots is repacked: the
/// unused part is reclaimed, what remains restores and verifies.
#[test]
fn gc_repacks_partly_used_packs() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    let gone = pseudo_random(3_000_000, 7);
    let kept = pseudo_random(3_000_000, 8);
    // One snapshot with both files (one pack), one with only `kept`.
    let first = backup(&repo, &[("gone", gone), ("kept", kept.clone())]);
    let second = backup(&repo, &[("kept", kept.clone())]);
    assert_eq!(repo.storage().list(FileType::Pack).unwrap().len(), 1);
    repo.delete_snapshot(&first).unwrap();
    let before = repo.stored_bytes().unwrap();
    let plan = repo.gc_plan().unwrap();
    assert_eq!(plan.repack.len(), 1);
    let g = repo.gc().unwrap();
    assert_eq!((g.packs_repacked, g.packs_written), (1, 1));
    let after = repo.stored_bytes().unwrap();
    assert!(
        before - after > before / 3,
        "reclaimed {} of {before}",
        before - after
    );
    assert_eq!(g.bytes_reclaimed, before - after);
    let r = repo.verify(2, &|_, _| {}).unwrap();
    assert!(r.ok(), "{:?}", r.errors);
    // A fresh open sees only the new index.
    let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
    let reopened = Repository::open(s, "pw").unwrap();
    let t = tempfile::tempdir().unwrap();
    restore_to(&reopened, &second, t.path());
    assert_eq!(std::fs::read(t.path().join("kept")).unwrap(), kept);
    // Nothing more to do.
    let g2 = reopened.gc().unwrap();
    assert_eq!((g2.packs_deleted, g2.packs_repacked), (0, 0));
}

#[test]
fn gc_refuses_while_a_backup_runs() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    let w = repo.start_backup(1).unwrap();
    let err = repo.gc().unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    drop(w);
    repo.gc().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn any_files_round_trip(sizes in proptest::collection::vec(0usize..70_000, 1..6), seed in any::<u64>()) {
        let d = tempfile::tempdir().unwrap();
        let repo = new_repo(&d.path().join("r"));
        let files: Vec<(String, Vec<u8>)> = sizes.iter().enumerate()
            .map(|(i, n)| (format!("f{i}"), pseudo_random(*n, seed.wrapping_add(i as u64))))
            .collect();
        let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
        let s = backup(&repo, &refs);
        let t = d.path().join("t");
        restore_to(&repo, &s, &t);
        for (p, data) in &files {
            prop_assert_eq!(&std::fs::read(t.join(p)).unwrap(), data);
        }
    }
}

/// Verifying one snapshot reads only the packs it needs: damage in another
/// snapshot's pack does not fail it, and damage in its own does.
#[test]
fn verify_of_one_snapshot_reads_only_its_packs() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    let a = backup(&repo, &[("a", pseudo_random(200_000, 11))]);
    let packs_a = repo.storage().list(FileType::Pack).unwrap();
    let b = backup(&repo, &[("b", pseudo_random(200_000, 12))]);
    let (name_b, size_b) = repo
        .storage()
        .list(FileType::Pack)
        .unwrap()
        .into_iter()
        .find(|p| !packs_a.contains(p))
        .expect("b has a pack of its own");
    let path = d.path().join("data").join(&name_b[..2]).join(&name_b);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(size_b / 2) as usize] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let ra = repo.verify_snapshot(&a, 2, &|_, _| {}).unwrap();
    assert!(ra.ok(), "{:?}", ra.errors);
    assert_eq!(ra.snapshots_checked, 1);
    assert_eq!(ra.bytes_read, packs_a.iter().map(|p| p.1).sum::<u64>());
    let rb = repo.verify_snapshot(&b, 2, &|_, _| {}).unwrap();
    assert!(
        rb.errors.iter().any(|e| e.contains(&name_b)),
        "{:?}",
        rb.errors
    );
    assert!(!repo.verify(2, &|_, _| {}).unwrap().ok());
}

/// A backup whose stream holds a symlink and then a file "inside" it (a
/// hostile database server could send that) is refused at planning: a
/// restore never writes through a link it created.
#[test]
fn restore_refuses_paths_through_a_restored_symlink() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(&d.path().join("repo"));
    let mut w = repo.start_backup(1).unwrap();
    w.begin_archive("base", None).unwrap();
    let mut link = meta("escape", FileKind::Symlink);
    link.link_target = Some(d.path().join("victim").display().to_string());
    w.add_entry(link).unwrap();
    w.begin_file(meta("escape/owned", FileKind::File)).unwrap();
    w.write(b"x").unwrap();
    w.end_file().unwrap();
    let snap = w
        .finish(BTreeMap::new(), serde_json::Value::Null)
        .unwrap()
        .0;
    let m = repo.read_snapshot(&snap).unwrap();
    let t = d.path().join("restore");
    let e = restore::plan(&m, &repo.index(), &[(0, t.clone())])
        .err()
        .expect("refused");
    assert!(e.to_string().contains("escape/owned"), "{e}");

    // A file of the same name as a symlink before it, and a symlink in one
    // archive shadowing a file of another archive restored into the same
    // folder.
    let mut w = repo.start_backup(1).unwrap();
    w.begin_archive("base", None).unwrap();
    let mut link = meta("same", FileKind::Symlink);
    link.link_target = Some(d.path().join("victim").display().to_string());
    w.add_entry(link.clone()).unwrap();
    w.begin_file(meta("same", FileKind::File)).unwrap();
    w.write(b"x").unwrap();
    w.end_file().unwrap();
    let snap = w
        .finish(BTreeMap::new(), serde_json::Value::Null)
        .unwrap()
        .0;
    let m = repo.read_snapshot(&snap).unwrap();
    assert!(restore::plan(&m, &repo.index(), &[(0, t.clone())]).is_err());
    let mut w = repo.start_backup(1).unwrap();
    w.begin_archive("base", None).unwrap();
    w.add_entry(link).unwrap();
    w.begin_archive("other", None).unwrap();
    w.begin_file(meta("same", FileKind::File)).unwrap();
    w.write(b"x").unwrap();
    w.end_file().unwrap();
    let snap = w
        .finish(BTreeMap::new(), serde_json::Value::Null)
        .unwrap()
        .0;
    let m = repo.read_snapshot(&snap).unwrap();
    assert!(restore::plan(&m, &repo.index(), &[(0, t.clone()), (1, t.clone())]).is_err());
    // Into different folders, the same name is fine.
    restore::plan(&m, &repo.index(), &[(0, t), (1, d.path().join("restore2"))]).unwrap();
}

/// Parts of one backup written at the same time on their own threads: one
/// set, every archive restores byte for byte, data shared between parts is
/// stored once, and finishing with a writer still out is refused.
#[test]
fn archives_written_concurrently_form_one_set() {
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(&d.path().join("repo"));
    let shared = pseudo_random(400_000, 77);
    let mut w = repo.start_backup(2).unwrap();
    let parts: Vec<_> = (0..4u64)
        .map(|i| w.archive_writer(&format!("part{i}"), Some(format!("shard {i}"))))
        .collect();
    let handles: Vec<_> = parts
        .into_iter()
        .enumerate()
        .map(|(i, mut a)| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                a.add_entry(meta("d", FileKind::Dir)).unwrap();
                a.begin_file(meta("d/own", FileKind::File)).unwrap();
                for piece in pseudo_random(300_000, 1000 + i as u64).chunks(4096) {
                    a.write(piece).unwrap();
                }
                a.end_file().unwrap();
                a.begin_file(meta("d/shared", FileKind::File)).unwrap();
                a.write(&shared).unwrap();
                a.end_file().unwrap();
                a
            })
        })
        .collect();
    // The sequential stream works alongside.
    w.begin_archive("main", None).unwrap();
    w.begin_file(meta("m", FileKind::File)).unwrap();
    w.write(&pseudo_random(50_000, 5)).unwrap();
    w.end_file().unwrap();
    for h in handles {
        w.add_archive(h.join().unwrap()).unwrap();
    }
    let stray = w.archive_writer("late", None);
    let mut w = {
        // Finishing with a writer out is refused (nothing is written).
        let e = w.finish(BTreeMap::new(), serde_json::Value::Null);
        assert!(e.is_err());
        drop(stray);
        // Start again: the refused finish consumed the writer.
        repo.start_backup(2).unwrap()
    };
    let parts: Vec<_> = (0..2u64)
        .map(|i| w.archive_writer(&format!("part{i}"), None))
        .collect();
    let handles: Vec<_> = parts
        .into_iter()
        .enumerate()
        .map(|(i, mut a)| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                a.begin_file(meta("own", FileKind::File)).unwrap();
                a.write(&pseudo_random(300_000, 2000 + i as u64)).unwrap();
                a.end_file().unwrap();
                a.begin_file(meta("shared", FileKind::File)).unwrap();
                a.write(&shared).unwrap();
                a.end_file().unwrap();
                a
            })
        })
        .collect();
    for h in handles {
        w.add_archive(h.join().unwrap()).unwrap();
    }
    let (snap, m) = w.finish(BTreeMap::new(), serde_json::Value::Null).unwrap();
    assert_eq!(
        m.archives
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["part0", "part1"]
    );
    // The shared file's chunks were stored once for both parts.
    let shared_chunks = m.archives[0].files[1].chunks.len() as u64;
    assert_eq!(m.archives[0].files[1].chunks, m.archives[1].files[1].chunks);
    assert!(
        m.summary.chunks_new <= m.summary.chunks_total - shared_chunks,
        "{:?}",
        m.summary
    );
    for (i, a) in m.archives.iter().enumerate() {
        let t = d.path().join(&a.name);
        let plan = restore::plan(&m, &repo.index(), &[(i, t.clone())]).unwrap();
        repo.restore(
            &plan,
            &RestoreOptions::default(),
            &|_, _| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(t.join("own")).unwrap(),
            pseudo_random(300_000, 2000 + i as u64)
        );
        assert_eq!(std::fs::read(t.join("shared")).unwrap(), shared);
    }
    assert!(repo.verify_snapshot(&snap, 2, &|_, _| {}).unwrap().ok());
}

/// A file read back as a stream equals what was written, whatever the read
/// sizes; a damaged blob is an error, never wrong bytes.
#[test]
fn a_file_streams_back_byte_for_byte() {
    use std::io::Read;
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    let data = pseudo_random(700_000, 42);
    let snap = backup(&repo, &[("big", data.clone()), ("empty", vec![])]);
    let m = repo.read_snapshot(&snap).unwrap();
    let f = m.archives[0]
        .files
        .iter()
        .find(|f| f.path == "big")
        .unwrap();
    assert!(f.chunks.len() > 10);
    let mut out = Vec::new();
    repo.file_reader(f).read_to_end(&mut out).unwrap();
    assert_eq!(out, data);
    // Odd read sizes.
    let mut r = repo.file_reader(f);
    let mut out = Vec::new();
    let mut buf = [0u8; 997];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, data);
    let e = m.archives[0]
        .files
        .iter()
        .find(|f| f.path == "empty")
        .unwrap();
    let mut out = Vec::new();
    repo.file_reader(e).read_to_end(&mut out).unwrap();
    assert!(out.is_empty());
    // Damage: an error, not other bytes.
    for (name, size) in repo.storage().list(FileType::Pack).unwrap() {
        let path = d.path().join("data").join(&name[..2]).join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(size / 2) as usize] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
    }
    let mut out = Vec::new();
    assert!(repo.file_reader(f).read_to_end(&mut out).is_err());
}

/// A set can take files of an earlier set by reference (nothing read or
/// stored again) and continue one of them with new content; a file whose
/// chunks the repository lacks is refused.
#[test]
fn files_of_an_earlier_set_are_reused_and_continued() {
    use std::io::Read;
    let d = tempfile::tempdir().unwrap();
    let repo = new_repo(d.path());
    let (docs, log) = (pseudo_random(900_000, 7), pseudo_random(50_000, 8));
    let first = repo
        .read_snapshot(&backup(
            &repo,
            &[("docs", docs.clone()), ("log", log.clone())],
        ))
        .unwrap();
    let file = |m: &stowage_core::manifest::Manifest, p: &str| {
        m.archives[0]
            .files
            .iter()
            .find(|f| f.path == p)
            .unwrap()
            .clone()
    };
    let more = pseudo_random(30_000, 9);
    let mut w = repo.start_backup(2).unwrap();
    let mut a = w.archive_writer("base", None);
    // A file abandoned halfway is not part of the archive.
    a.begin_file(meta("partial", FileKind::File)).unwrap();
    a.write(&pseudo_random(100_000, 10)).unwrap();
    a.discard_file();
    a.reuse_file(&file(&first, "docs")).unwrap();
    a.continue_file(&file(&first, "log")).unwrap();
    a.write(&more).unwrap();
    a.end_file().unwrap();
    // A file naming a chunk the repository does not hold is refused.
    let mut bogus = file(&first, "docs");
    bogus.path = "bogus".into();
    bogus.chunks[3] = stowage_core::manifest::ChunkId([0xAB; 32]);
    assert!(a.reuse_file(&bogus).is_err());
    w.add_archive(a).unwrap();
    let (snap, m) = w.finish(BTreeMap::new(), serde_json::Value::Null).unwrap();
    let paths: Vec<&str> = m.archives[0]
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(paths, ["docs", "log"]);
    // The summary counts the chunks the set names, not the discarded ones.
    assert_eq!(m.summary.chunks_total, m.chunk_ids().count() as u64);
    // Only the appended bytes (and the abandoned file's) were new.
    assert!(
        m.summary.bytes_stored_new < 60_000 + 110_000,
        "stored {} new bytes",
        m.summary.bytes_stored_new
    );
    assert_eq!(
        m.summary.bytes_logical,
        (docs.len() + log.len() + more.len()) as u64
    );
    let read = |p: &str| {
        let mut out = Vec::new();
        repo.file_reader(&file(&m, p))
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    assert_eq!(read("docs"), docs);
    assert_eq!(read("log"), [log, more].concat());
    assert!(repo.verify_snapshot(&snap, 2, &|_, _| {}).unwrap().ok());
}

/// Two processes on one repository: two `Repository` values opened on the
/// same folder, each with its own in-memory index, as separate processes
/// (another node, a `stowage` command) have. A backup deduplicates only
/// against the index files as they are once it holds the repository's
/// lock: never against packs another process's gc deleted, and against
/// what another process stored since.
#[test]
fn a_backup_deduplicates_only_against_the_index_files_as_they_are_under_its_lock() {
    let d = tempfile::tempdir().unwrap();
    let a = new_repo(d.path());
    let open = || {
        let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
        Arc::new(Repository::open(s, "pw").unwrap())
    };
    let stored = |r: &Arc<Repository>, data: &[u8]| {
        let mut w = r.start_backup(2).unwrap();
        w.begin_archive("base", None).unwrap();
        w.begin_file(meta("x", FileKind::File)).unwrap();
        w.write(data).unwrap();
        w.end_file().unwrap();
        let (snap, m) = w.finish(BTreeMap::new(), serde_json::Value::Null).unwrap();
        (snap, m.summary.bytes_stored_new)
    };
    let data = pseudo_random(400_000, 7);
    let (s1, first) = stored(&a, &data);
    assert!(first > 100_000, "{first}");
    // B reads the index now: it names s1's chunks.
    let b = open();
    // A forgets the set and collects it: the packs B's index names are gone.
    a.delete_snapshot(&s1).unwrap();
    assert!(a.gc().unwrap().packs_deleted > 0);
    // B backs up the same data: stored again, not named in deleted packs.
    let (s2, again) = stored(&b, &data);
    assert!(
        again > 100_000,
        "B deduplicated against deleted packs: {again}"
    );
    let c = open();
    assert!(c.verify(2, &|_, _| {}).unwrap().ok());
    let t = tempfile::tempdir().unwrap();
    restore_to(&b, &s2, t.path());
    assert_eq!(std::fs::read(t.path().join("x")).unwrap(), data);

    // What A stores now, B finds without being reopened.
    let more = pseudo_random(300_000, 9);
    let (_, by_a) = stored(&a, &more);
    assert!(by_a > 100_000, "{by_a}");
    let (s3, by_b) = stored(&b, &more);
    assert!(by_b < 10_000, "B stored A's chunks again: {by_b}");
    // And a restore by A of B's set reads packs where they are.
    let t = tempfile::tempdir().unwrap();
    a.refresh_index().unwrap();
    restore_to(&a, &s3, t.path());
    assert_eq!(std::fs::read(t.path().join("x")).unwrap(), more);
}

/// Several servers creating one repository at once end up on the same one;
/// an init stopped between its key file and its config is completed by the
/// next start.
#[test]
fn racing_inits_share_one_repository_and_a_half_init_is_completed() {
    let d = tempfile::tempdir().unwrap();
    let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
    let ids: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                sc.spawn(move || {
                    Repository::open_or_init(s, "pw", small_chunks(), KdfParams::insecure_fast())
                        .unwrap()
                        .config()
                        .id
                        .clone()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(
        s.list(FileType::Key).unwrap().len(),
        1,
        "losers removed their keys"
    );

    // A key file without a config.
    let d = tempfile::tempdir().unwrap();
    let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
    Repository::init(s.clone(), "pw", small_chunks(), KdfParams::insecure_fast()).unwrap();
    s.delete(FileType::Config, "config").unwrap();
    assert!(matches!(
        Repository::open(s.clone(), "pw"),
        Err(stowage_repo::RepoError::NotInitialized(_))
    ));
    let r = Arc::new(
        Repository::open_or_init(s.clone(), "pw", small_chunks(), KdfParams::insecure_fast())
            .unwrap(),
    );
    backup(&r, &[("a", pseudo_random(10_000, 1))]);
    assert!(r.verify(0, &|_, _| {}).unwrap().ok());
    Repository::open(s, "pw").unwrap();
}
