//! PostgreSQL download tasks: the packaged base-backup tar, extracted with
//! the standard `tar`, starts as a server with identical data; a 2 GB
//! download keeps the server's memory flat.

use crate::harness::Stowage;
use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};
use stowage_testkit::{PgOptions, PgServer, fix_ownership};

fn add(s: &Stowage, pg: &PgServer) {
    let port = pg.port.to_string();
    s.ok(&[
        "instance",
        "add",
        "--name",
        "pg",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--user",
        "postgres",
    ]);
}

/// Everything the tables hold, as one digest the server computes.
fn digest(pg: &PgServer) -> String {
    pg.psql(
        "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM \
         (SELECT 'a' || a::text AS t FROM pgbench_accounts a UNION ALL \
          SELECT 'h' || h::text FROM pgbench_history h UNION ALL \
          SELECT 'n' || n::text FROM notes n) x",
    )
}

/// Fetches a link to a file with a plain HTTP client (no key).
fn fetch(url: &str, to: &std::path::Path) -> u64 {
    let mut r = ureq::get(url).call().unwrap();
    let mut f = std::fs::File::create(to).unwrap();
    std::io::copy(&mut r.body_mut().as_reader(), &mut f).unwrap()
}

#[test]
fn a_downloaded_postgresql_tar_starts_as_a_server_with_identical_data() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(1);
    pg.psql(
        "CREATE TABLE notes (id int PRIMARY KEY, body text); \
         INSERT INTO notes SELECT i, repeat('ü✓ note ', i % 50) FROM generate_series(1, 5000) i; \
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, i, i, now() FROM generate_series(1, 300) i",
    );
    let want = digest(&pg);
    let s = Stowage::start(&work.path().join("stowage"));
    add(&s, &pg);
    s.ok(&["backup", "pg"]);
    let set = s.json(&["set", "list"])["sets"][0]["id"].to_string();
    // Changes after the backup are not in the download.
    pg.psql("DELETE FROM notes WHERE id < 100");

    let url = s.ok(&["download", "create", &set]).trim().to_string();
    assert!(url.contains("/base.tar?"), "{url}");
    let tar = work.path().join("base.tar");
    let n = fetch(&url, &tar);
    assert!(n > 10_000_000, "{n}");

    // The standard tools: tar to extract, postgres to start.
    let data = work.path().join("extracted");
    std::fs::create_dir(&data).unwrap();
    let o = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(data.join("backup_label").is_file() && data.join("PG_VERSION").is_file());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    fix_ownership(&data);
    let started = PgServer::start_existing(&data, PgOptions::default());
    assert_eq!(digest(&started), want);
    assert_eq!(started.psql("SELECT count(*) FROM notes"), "5000");
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_2_gb_download_keeps_the_server_memory_flat() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::start(PgOptions::default());
    // 2 GiB of table data stored as is (no TOAST compression).
    pg.psql(
        "CREATE TABLE big (id int, b text); \
         ALTER TABLE big ALTER COLUMN b SET STORAGE EXTERNAL; \
         INSERT INTO big SELECT i, repeat(md5(i::text), 250) FROM generate_series(1, 270000) i",
    );
    let s = Stowage::start(&work.path().join("stowage"));
    add(&s, &pg);
    s.ok(&["backup", "pg"]);
    let set = s.json(&["set", "list"])["sets"][0]["id"].to_string();

    let pid = s.pid();
    let before = rss(pid);
    let url = s.ok(&["download", "create", &set]).trim().to_string();
    let after_packaging = rss(pid);
    let mut r = ureq::get(&url).call().unwrap();
    let len: u64 = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(len > 2 << 30, "{len}");
    let mut body = r.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 20];
    let (mut got, mut peak, mut last) = (0u64, 0u64, Instant::now());
    loop {
        let n = body.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
        if last.elapsed() > Duration::from_millis(50) {
            peak = peak.max(rss(pid));
            last = Instant::now();
        }
    }
    assert_eq!(got, len);
    let mb = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "serve RSS: {:.1} MB before, {:.1} MB after packaging {:.2} GB, peak {:.1} MB while serving it",
        mb(before),
        mb(after_packaging),
        len as f64 / 1e9,
        mb(peak)
    );
    // Flat: neither packaging nor serving holds the file in memory.
    assert!(
        after_packaging < before + (64 << 20),
        "packaging grew RSS from {:.1} to {:.1} MB",
        mb(before),
        mb(after_packaging)
    );
    assert!(
        peak < after_packaging + (32 << 20),
        "serving grew RSS from {:.1} to {:.1} MB",
        mb(after_packaging),
        mb(peak)
    );
}
