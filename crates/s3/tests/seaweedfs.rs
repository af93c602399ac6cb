//! The S3 backend against a real S3-compatible server (SeaweedFS started
//! per test on free ports): the storage conformance suite, refused
//! credentials, multipart uploads, and outages in the middle of writes and
//! of a whole backup.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stowage_core::manifest::FileKind;
use stowage_repo::storage::{FileType, conformance};
use stowage_repo::{ChunkerParams, FileMeta, KdfParams, Repository, Storage, StorageError};
use stowage_s3::{S3Options, S3Storage};
use stowage_testkit::S3Server;

fn opts(s: &S3Server, prefix: &str) -> S3Options {
    let env = s.env();
    S3Options::from_url(&s.url(prefix), |k| {
        env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })
    .unwrap()
}

fn storage(s: &S3Server, prefix: &str) -> S3Storage {
    S3Storage::open(opts(s, prefix)).unwrap()
}

#[test]
fn the_s3_backend_conforms_and_keeps_prefixes_apart() {
    let s = S3Server::start();
    let a = storage(&s, "tenant-a/repo");
    conformance::run(&a);
    // Another prefix of the same bucket is another repository.
    let b = storage(&s, "tenant-b");
    b.put(FileType::Snapshot, "abcd", b"b's").unwrap();
    assert!(a.list(FileType::Snapshot).unwrap().is_empty());
    assert!(matches!(
        a.get(FileType::Snapshot, "abcd"),
        Err(StorageError::NotFound(_))
    ));
    assert_eq!(
        a.location(),
        format!("s3://backups/tenant-a/repo at {}", s.endpoint())
    );
    // The whole bucket as one repository: no prefix.
    conformance::run(&storage(&s, ""));
}

#[test]
fn refused_credentials_and_a_missing_bucket_fail_at_open_without_the_secret() {
    let s = S3Server::start();
    let mut o = opts(&s, "x");
    o.secret_access_key = "wrong-secret-value".into();
    let e = S3Storage::open(o)
        .err()
        .expect("wrong secret refused")
        .to_string();
    assert!(!e.contains("wrong-secret-value"), "{e}");
    assert!(!e.contains(S3Server::SECRET_KEY), "{e}");
    assert!(e.contains("s3://backups/x"), "{e}");
    let mut o = opts(&s, "x");
    o.bucket = "no-such-bucket".into();
    let t = Instant::now();
    let e = S3Storage::open(o)
        .err()
        .expect("missing bucket refused")
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(20), "not retried: {e}");
    assert!(e.contains("no-such-bucket"), "{e}");
}

#[test]
fn large_objects_go_up_in_parts_and_come_back_whole() {
    let s = S3Server::start();
    let st = storage(&s, "mp");
    // 2.5 parts, content that differs per part.
    let data: Vec<u8> = (0..(stowage_s3::PART_SIZE * 5 / 2) as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let name = "ee".repeat(32);
    st.put(FileType::Pack, &name, &data).unwrap();
    assert_eq!(st.stat(FileType::Pack, &name).unwrap(), data.len() as u64);
    assert!(st.get(FileType::Pack, &name).unwrap() == data);
    let off = stowage_s3::PART_SIZE as u64 - 10;
    assert_eq!(
        st.get_range(FileType::Pack, &name, off, 20).unwrap(),
        &data[off as usize..off as usize + 20]
    );
    // A rewrite of the same name with other content replaces it whole.
    let other: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    st.put(FileType::Pack, &name, &other).unwrap();
    assert!(st.get(FileType::Pack, &name).unwrap() == other);
}

#[test]
fn a_write_during_a_short_outage_is_retried_and_a_long_outage_fails_clearly() {
    let mut s = S3Server::start();
    let st = Arc::new(storage(&s, "outage"));
    st.put(FileType::Index, "aa01", b"before").unwrap();
    s.stop();
    let w = {
        let st = st.clone();
        std::thread::spawn(move || st.put(FileType::Index, "aa02", b"during"))
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(!w.is_finished(), "the put gave up during a 3 s outage");
    s.restart();
    w.join().unwrap().unwrap();
    assert_eq!(st.get(FileType::Index, "aa02").unwrap(), b"during");
    assert_eq!(st.get(FileType::Index, "aa01").unwrap(), b"before");

    // With a 4 s budget, a server that stays away fails the write, saying
    // what was retried.
    let mut o = opts(&s, "outage");
    o.retry_timeout = Duration::from_secs(4);
    let short = S3Storage::open(o).unwrap();
    s.stop();
    let t = Instant::now();
    let e = short
        .put(FileType::Index, "aa03", b"never")
        .expect_err("put while down")
        .to_string();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        "{took:?}: {e}"
    );
    assert!(e.contains("s3://backups/outage/index/aa03"), "{e}");
    assert!(e.to_lowercase().contains("retr"), "{e}");
}

fn meta(path: &str) -> FileMeta {
    FileMeta {
        path: path.into(),
        kind: FileKind::File,
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        link_target: None,
    }
}

fn data(n: usize, seed: u64) -> Vec<u8> {
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

fn small_packs(st: Arc<dyn Storage>) -> Arc<Repository> {
    Arc::new(
        Repository::init(
            st,
            "pw",
            ChunkerParams::default(),
            KdfParams::insecure_fast(),
        )
        .unwrap(),
    )
}

/// A backup of 64 MiB (four packs) with the object store stopped for 4 s in
/// the middle: the uploads retry through it, the set restores byte for
/// byte and verifies. Stopped for longer than the budget: the backup fails,
/// no snapshot names anything, and the repository still verifies.
#[test]
fn a_backup_rides_out_a_short_outage_and_fails_cleanly_on_a_long_one() {
    let mut s = S3Server::start();
    let st: Arc<dyn Storage> = Arc::new(storage(&s, "repo"));
    let repo = small_packs(st);
    let body = data(64 << 20, 7);
    let run = |repo: &Arc<Repository>, body: &[u8], mid: &mut dyn FnMut()| {
        let mut w = repo.start_backup(2).unwrap();
        w.begin_archive("base", None).unwrap();
        w.begin_file(meta("big")).unwrap();
        for (i, piece) in body.chunks(1 << 20).enumerate() {
            if i == 24 {
                mid();
            }
            w.write(piece)?;
        }
        w.end_file()?;
        w.finish(Default::default(), serde_json::Value::Null)
    };
    let (id, man) = run(&repo, &body, &mut || {
        s.stop();
        std::thread::sleep(Duration::from_secs(4));
        s.restart();
    })
    .unwrap();
    assert!(repo.verify(0, &|_, _| {}).unwrap().ok());
    let mut back = Vec::new();
    repo.file_reader(&man.archives[0].files[0])
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == body, "restored bytes differ");
    assert_eq!(repo.list_snapshots().unwrap(), vec![id.clone()]);

    // A budget of 3 s, and the store gone for good mid-backup.
    let mut o = opts(&s, "repo");
    o.retry_timeout = Duration::from_secs(3);
    let short: Arc<dyn Storage> = Arc::new(S3Storage::open(o).unwrap());
    let repo2 = Arc::new(Repository::open(short, "pw").unwrap());
    let other = data(64 << 20, 8);
    let e = run(&repo2, &other, &mut || s.stop()).expect_err("fails");
    let msg = e.to_string();
    assert!(msg.contains("s3://backups/repo"), "{msg}");
    s.restart();
    let repo3 = Arc::new(Repository::open(Arc::new(storage(&s, "repo")), "pw").unwrap());
    assert_eq!(
        repo3.list_snapshots().unwrap(),
        vec![id],
        "no snapshot of the failed backup"
    );
    let v = repo3.verify(0, &|_, _| {}).unwrap();
    assert!(v.ok(), "{v:?}");
}

/// HTTPS with a private CA: trusted through `ca_file` (AWS_CA_BUNDLE), a
/// store whose certificate nobody vouches for is refused.
#[test]
fn https_with_a_private_ca() {
    let s = S3Server::start_tls();
    let (port, ca) = s.https.clone().unwrap();
    let mut o = opts(&s, "tls");
    o.endpoint = Some(format!("https://127.0.0.1:{port}"));
    o.ca_file = Some(ca);
    let st = S3Storage::open(o.clone()).unwrap();
    st.put(FileType::Index, "ab01", b"over tls").unwrap();
    assert_eq!(st.get(FileType::Index, "ab01").unwrap(), b"over tls");
    // Refused at once, not retried for the budget: a certificate is not
    // a transient failure.
    o.ca_file = None;
    o.retry_timeout = Duration::from_secs(60);
    let t0 = std::time::Instant::now();
    let e = S3Storage::open(o)
        .err()
        .expect("unknown CA refused")
        .to_string();
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(e.contains("s3://backups/tls"), "{e}");
    assert!(e.contains("certificate is not trusted"), "{e}");
    let mut o = opts(&s, "tls");
    let bad = s.dir.path().join("not-pem");
    std::fs::write(&bad, "hello").unwrap();
    o.ca_file = Some(bad);
    let e = S3Storage::open(o)
        .err()
        .expect("not a CA bundle")
        .to_string();
    assert!(e.contains("CA bundle"), "{e}");
}
