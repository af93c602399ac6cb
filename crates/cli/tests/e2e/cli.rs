//! The rough edges a new user hits: listings that filter and page, a
//! throttle that can be removed, pipes, exit codes, error shapes,
//! idempotency conflicts, a task runner that panics, and the chunker flag.

use crate::harness::{Stowage, bin, stderr};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use stowage_testkit::PgServer;

fn add(s: &Stowage, name: &str, pg: &PgServer, extra: &[&str]) -> String {
    let port = pg.port.to_string();
    let mut a = vec!["instance", "add", "--name", name, "--port", &port];
    a.extend_from_slice(extra);
    s.json(&a)["id"].as_str().unwrap().to_string()
}

#[test]
fn listings_filter_page_and_refuse_unknown_parameters() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(1);
    let s = Stowage::start(&work.path().join("stowage"));
    add(&s, "p", &pg, &[]);
    for _ in 0..3 {
        s.ok(&["backup", "p"]);
    }
    s.ok(&["verify"]);
    let set = s.json(&["set", "list"])["sets"][0]["id"].to_string();
    s.ok(&["restore", &set, "--target", "r1"]);
    let o = s.cli(&["restore", &set, "--target", "r1"]);
    assert_eq!(o.status.code(), Some(2), "non-empty target refused");

    // Sets: limit and cursor walk all three, newest first.
    let (st, p1) = s.http("GET", "/v1/sets?limit=2", None);
    assert_eq!(st, 200, "{p1}");
    assert_eq!(p1["sets"].as_array().unwrap().len(), 2);
    let cur = p1["next_cursor"].as_str().expect("a second page");
    let (_, p2) = s.http("GET", &format!("/v1/sets?limit=2&cursor={cur}"), None);
    assert_eq!(p2["sets"].as_array().unwrap().len(), 1);
    assert!(p2["next_cursor"].is_null());
    assert!(p1["sets"][1]["id"].as_i64() > p2["sets"][0]["id"].as_i64());
    // Jobs by kind and state.
    let (_, v) = s.http("GET", "/v1/jobs?kind=verify", None);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["jobs"][0]["kind"], "verify");
    let (_, v) = s.http("GET", "/v1/jobs?kind=gc", None);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 0, "{v}");
    let (_, v) = s.http("GET", "/v1/jobs?state=finished&limit=1", None);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["next_cursor"].is_string(), "{v}");
    let (_, v) = s.http("GET", "/v1/tasks?limit=1", None);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    // Unknown parameters and bad values are refused everywhere.
    for path in [
        "/v1/jobs?bogus=1",
        "/v1/sets?bogus=1",
        "/v1/tasks?bogus=1",
        "/v1/instances?bogus=1",
        "/v1/keys?bogus=1",
        "/v1/accounts?bogus=1",
        "/v1/jobs?kind=backup",
        "/v1/sets?limit=0",
        "/v1/sets?cursor=abc",
    ] {
        let (st, v) = s.http("GET", path, None);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("InvalidParameter")),
            "{path}: {v}"
        );
    }
    // The CLI pages too, and says how to go on.
    let o = s.cli(&["set", "list", "--limit", "1"]);
    assert!(stderr(&o).contains("--cursor"), "{}", stderr(&o));
    let o = s.cli(&["job", "list", "--kind", "restore", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["kind"] == "restore")
    );

    // Tables for people; numbers as numbers in JSON.
    let o = s.ok(&["set", "show", &set]);
    assert!(o.contains("consistent at:") && !o.contains('{'), "{o}");
    let v = s.json(&["set", "show", &set]);
    assert!(v["consistent_point"]["timeline"].is_u64(), "{v}");
    let o = s.ok(&["task", "list"]);
    assert!(o.contains("TOOK") && o.contains(" p "), "{o}");
    let o = s.ok(&["instance", "show", "p"]);
    assert!(o.contains("address:") && !o.contains('{'), "{o}");

    // `| head -1` closes the pipe: no panic, no error.
    let mut child = Command::new(bin())
        .args(["set", "show", &set, "--files"])
        .env("STOWAGE_SERVER", &s.url)
        .env("STOWAGE_DATA_DIR", &s.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn settings_errors_and_exit_codes() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(1);
    let s = Stowage::start(&work.path().join("stowage"));
    add(&s, "t", &pg, &["--max-rate-kbps", "4096"]);
    // A throttle can be removed, by the CLI (0) and by PATCH null.
    s.ok(&["instance", "set", "t", "--max-rate-kbps", "0"]);
    assert!(s.json(&["instance", "show", "t"])["max_rate_kbps"].is_null());
    s.ok(&["instance", "set", "t", "--max-rate-kbps", "2048"]);
    let (st, v) = s.http(
        "PATCH",
        "/v1/instances/t",
        Some(r#"{"max_rate_kbps": null}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["max_rate_kbps"].is_null(), "{v}");

    // A reused client token with a different request is a conflict.
    let a = s.json(&[
        "backup",
        "t",
        "--client-token",
        "tok-1",
        "--comment",
        "first",
    ]);
    let again = s.json(&[
        "backup",
        "t",
        "--client-token",
        "tok-1",
        "--comment",
        "first",
        "--no-wait",
    ]);
    assert_eq!(a["id"], again["id"]);
    let o = s.cli(&[
        "backup",
        "t",
        "--client-token",
        "tok-1",
        "--comment",
        "other",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("Conflict") && stderr(&o).contains("tok-1"),
        "{}",
        stderr(&o)
    );
    let set = s.json(&["set", "show", &a["set_id"].to_string()]);
    assert_eq!(set["meta"]["comment"], "first");

    // Nothing sent: exit 4. No scheme, or not a Stowage server: said so.
    let o = Command::new(bin())
        .args(["task", "list"])
        .env("STOWAGE_DATA_DIR", work.path().join("nowhere"))
        .env_remove("STOWAGE_ACCESS_KEY_ID")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let o = Command::new(bin())
        .args([
            "task",
            "list",
            "--server",
            s.url.trim_start_matches("http://"),
        ])
        .env("STOWAGE_DATA_DIR", &s.data_dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("http://127.0.0.1:8420"),
        "{}",
        stderr(&o)
    );
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    std::thread::spawn(move || {
        for c in other.incoming().take(1) {
            let mut c = c.unwrap();
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut c, &mut buf);
            let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 9\r\nconnection: close\r\n\r\n<h1>x</h1");
        }
    });
    let o = Command::new(bin())
        .args(["task", "list", "--server", &other_url])
        .env("STOWAGE_DATA_DIR", &s.data_dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("not like a Stowage server"),
        "{}",
        stderr(&o)
    );

    // Too large a body: the dialect's JSON error, not plain text.
    // Announced by Content-Length, refused before the body is read.
    let (id, secret) = s.credentials();
    let mut c = std::net::TcpStream::connect(s.url.trim_start_matches("http://")).unwrap();
    write!(
        c,
        "POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {id}:{secret}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        2 * 1024 * 1024
    )
    .unwrap();
    let mut resp = String::new();
    let _ = std::io::Read::read_to_string(&mut c, &mut resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(
        resp.contains("\"PayloadTooLarge\"") && resp.contains("application/json"),
        "{resp}"
    );
}

/// A panic in a task's runner fails the task and frees the instance (a
/// test-only fault, honoured by debug builds).
#[test]
fn a_panicking_task_runner_frees_its_instance() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(1);
    let s = Stowage::start_with_env(
        &work.path().join("stowage"),
        &[],
        &[("STOWAGE_FAULT", "panic-in-backup-task")],
    );
    add(&s, "p", &pg, &[]);
    for _ in 0..2 {
        let o = s.cli(&["backup", "p"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("internal error"), "{}", stderr(&o));
    }
}

/// `--chunk-avg-kib` sets a new repository's chunk sizes; an existing
/// repository keeps its own and the server says so.
#[test]
fn chunk_size_flag_applies_to_a_new_repository_only() {
    let work = tempfile::tempdir().unwrap();
    let dd = work.path().join("stowage");
    let mut s = Stowage::start_with(&dd, &["--chunk-avg-kib", "64"]);
    s.stop();
    let config = || {
        let pw = std::fs::read_to_string(dd.join("repository.password")).unwrap();
        let st: std::sync::Arc<dyn stowage_repo::Storage> =
            std::sync::Arc::new(stowage_repo::LocalStorage::new(dd.join("repository")).unwrap());
        stowage_repo::Repository::open(st, pw.trim())
            .unwrap()
            .config()
            .chunker
    };
    let c = config();
    assert_eq!((c.min, c.avg, c.max), (16 * 1024, 64 * 1024, 256 * 1024));
    let s = Stowage::start_with(&dd, &["--chunk-avg-kib", "16"]);
    assert!(
        s.log()
            .contains("keeps the chunk sizes it was created with"),
        "{}",
        s.log()
    );
    drop(s);
    assert_eq!(config().avg, 64 * 1024);
}
