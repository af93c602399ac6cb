//! `serve --repository s3://…` against a real S3-compatible server
//! (SeaweedFS): a PostgreSQL backup stored in the bucket, verified,
//! restored and deduplicated; the repository survives a restart of the
//! server on it; a second data dir opens the same bucket with the same
//! password; bad settings are refused before the server listens.

use crate::harness::{Stowage, bin, stderr};
use stowage_testkit::{PgOptions, PgServer, S3Server, fix_ownership};

fn env(s3: &S3Server) -> Vec<(&'static str, String)> {
    s3.env()
}

fn start(dir: &std::path::Path, s3: &S3Server, extra: &[&str]) -> Stowage {
    let e = env(s3);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = s3.url("e2e");
    let mut a = vec!["--repository", url.as_str()];
    a.extend_from_slice(extra);
    Stowage::start_with_env(dir, &a, &e)
}

#[test]
fn a_repository_in_s3_backs_up_verifies_restores_and_dedups() {
    let work = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    let pg = PgServer::with_pgbench(2);
    pg.psql("CHECKPOINT");
    let mut s = start(&work.path().join("stowage"), &s3, &[]);
    assert!(
        s.log().contains("s3://backups/e2e"),
        "the log names the repository: {}",
        s.log()
    );
    let port = pg.port.to_string();
    s.ok(&[
        "instance",
        "add",
        "--name",
        "db",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--user",
        "postgres",
    ]);
    s.ok(&["backup", "db", "--wait"]);
    s.ok(&["backup", "db", "--wait"]);
    let sets = s.json(&["set", "list"]);
    let (first, second) = (&sets["sets"][1], &sets["sets"][0]);
    let n1 = first["bytes_stored"].as_u64().unwrap();
    let n2 = second["bytes_stored"].as_u64().unwrap();
    assert!(n1 > 1_000_000, "{first}");
    assert!(n2 * 20 < n1, "second stored {n2}, first {n1}: no dedup");
    // Packs, index and snapshots are in the bucket, not the data dir.
    assert!(!work.path().join("stowage/repository").exists());
    assert!(s.ok(&["verify"]).contains("repository OK"));

    // Restarted on the same bucket: the sets are there and restore.
    s.stop();
    let s = start(&work.path().join("stowage"), &s3, &[]);
    let set_id = second["id"].as_i64().unwrap().to_string();
    let target = work.path().join("restored");
    let out = s.ok(&["restore", &set_id, "--target", target.to_str().unwrap()]);
    assert!(out.contains("restored"), "{out}");
    fix_ownership(&target);
    let restored = PgServer::start_existing(&target, PgOptions::default());
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        "200000"
    );
    drop(s);

    // Another data dir, the same bucket and password: the same repository.
    let pw = work.path().join("stowage/repository.password");
    let pw = pw.to_str().unwrap();
    let other = start(
        &work.path().join("other"),
        &s3,
        &["--repo-password-file", pw],
    );
    assert!(other.ok(&["verify"]).contains("repository OK"));
    // A wrong password is refused at start, naming the bucket.
    let bad = work.path().join("bad.pw");
    std::fs::write(&bad, "not the password").unwrap();
    let e = env(&s3);
    let o = std::process::Command::new(bin())
        .args(["serve", "--no-scheduler", "--data-dir"])
        .arg(work.path().join("third"))
        .args(["--repository", &s3.url("e2e"), "--repo-password-file"])
        .arg(&bad)
        .envs(e.iter().map(|(k, v)| (k, v)))
        .env("STOWAGE_INSECURE_FAST_KDF", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("wrong repository password"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_s3_settings_are_refused_before_the_server_listens() {
    let work = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    let run = |repo: &str, extra: &[&str], env: &[(&str, String)]| {
        let o = std::process::Command::new(bin())
            .args(["serve", "--no-scheduler", "--data-dir"])
            .arg(work.path().join("d"))
            .args(["--repository", repo])
            .args(extra)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("STOWAGE_INSECURE_FAST_KDF", "1")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{repo} {extra:?} started");
        stderr(&o)
    };
    let good = env(&s3);
    let e = run("s3://backups/x", &[], &[]);
    assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
    let e = run("s3://Bad_Bucket/x", &[], &good);
    assert!(e.contains("bucket"), "{e}");
    let e = run("s3://backups/../x", &[], &good);
    assert!(e.contains("prefix"), "{e}");
    let e = run("gs://backups/x", &[], &good);
    assert!(e.contains("not supported"), "{e}");
    let mut wrong = good.clone();
    wrong.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY", "a-wrong-secret-123".into()));
    let e = run("s3://backups/x", &[], &wrong);
    assert!(e.contains("s3://backups/x"), "{e}");
    assert!(
        !e.contains("a-wrong-secret-123"),
        "the secret is printed: {e}"
    );
    let e = run(
        "s3://backups/x",
        &["--s3-endpoint", "ftp://127.0.0.1:1"],
        &good,
    );
    assert!(e.contains("http://"), "{e}");
    // Nothing listening there: fails after the retry budget, saying so.
    let t = std::time::Instant::now();
    let e = run(
        "s3://backups/x",
        &[
            "--s3-endpoint",
            &format!("http://127.0.0.1:{}", stowage_testkit::free_port()),
            "--s3-retry-secs",
            "2",
        ],
        &good,
    );
    assert!(t.elapsed().as_secs() < 30, "{e}");
    assert!(e.contains("s3://backups/x"), "{e}");
}
