//! PostgreSQL end to end: backup under load, restore, crash, bad input.

use crate::harness::{Stowage, stderr};
use std::process::{Command, Stdio};
use stowage_testkit::{PgOptions, PgServer, fix_ownership};

fn tpcb_sums(pg: &PgServer) -> (String, i64) {
    let sums = pg.psql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches), \
         (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT coalesce(sum(delta),0) FROM pgbench_history)",
    );
    let history: i64 = pg
        .psql("SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap();
    (sums, history)
}

fn add_instance(s: &Stowage, name: &str, pg: &PgServer, extra: &[&str]) -> String {
    let port = pg.port.to_string();
    let mut args = vec![
        "instance",
        "add",
        "--name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--user",
        "postgres",
    ];
    args.extend_from_slice(extra);
    let v = s.json(&args);
    v["id"].as_str().unwrap().to_string()
}

/// pgbench runs during the whole backup; the restored server must satisfy
/// the TPC-B invariant and hold the state at the stop LSN or later.
#[test]
fn consistent_backup_under_load_restores() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(4);
    let s = Stowage::start(&work.path().join("stowage"));
    let id = add_instance(&s, "loaded", &pg, &[]);
    assert!(id.starts_with("rm-") && id.len() == 19, "{id}");
    assert!(
        s.ok(&["instance", "check", "loaded"])
            .contains("ok: PostgreSQL 15")
            && s.ok(&["instance", "check", "loaded"]).contains("TLS")
    );

    // Load that keeps writing while the backup runs.
    let mut bench = Command::new("pgbench")
        .args([
            "-h",
            &pg.dir.path().display().to_string(),
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-c",
            "2",
            // Bounded, in case the stop signal below never arrives.
            "-T",
            "120",
            "-n",
            "postgres",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (_, h0) = tpcb_sums(&pg);
    let out = s.ok(&["backup", "loaded", "--wait"]);
    assert!(out.contains("backup set"), "{out}");
    let (_, h1) = tpcb_sums(&pg);
    // SIGTERM: a process started from a background job of a
    // non-interactive shell inherits an ignored SIGINT.
    stowage_testkit::signal(bench.id(), "TERM");
    let _ = bench.wait();
    assert!(h1 > h0, "pgbench wrote during the backup ({h0} -> {h1})");

    let tasks = s.json(&["task", "list"]);
    let t = &tasks["tasks"][0];
    assert_eq!(t["state"], "finished");
    assert_eq!(t["progress"]["percent"], 100);
    assert!(
        t["consistent_point"]["stop_lsn"]
            .as_str()
            .unwrap()
            .contains('/')
    );
    let set_id = t["set_id"].as_i64().unwrap();

    assert!(s.ok(&["verify"]).contains("repository OK"));
    let target = work.path().join("restored");
    let out = s.ok(&[
        "restore",
        &set_id.to_string(),
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(out.contains("restored"), "{out}");
    fix_ownership(&target);
    let restored = PgServer::start_existing(&target, PgOptions::default());
    let (sums, hr) = tpcb_sums(&restored);
    let parts: Vec<&str> = sums.split('|').collect();
    assert!(
        parts.iter().all(|p| *p == parts[0]),
        "TPC-B invariant broken in the restore: {sums}"
    );
    assert!(
        hr >= h0 && hr <= h1,
        "restored history rows {hr} not between backup start {h0} and end {h1}"
    );
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        "400000"
    );
}

/// kill -9 of the server mid-backup: after restart the task is failed, never
/// finished; the repository verifies; a new backup works; gc reclaims.
#[test]
fn crash_mid_backup_leaves_a_failed_task_and_a_sound_repository() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(3);
    let dd = work.path().join("stowage");
    let mut s = Stowage::start(&dd);
    add_instance(&s, "slow", &pg, &["--max-rate-kbps", "4096"]);
    let t = s.json(&["backup", "slow", "--no-wait"]);
    let id = t["id"].as_i64().unwrap();
    // Second backup of the same instance while one runs: refused.
    let o = s.cli(&["backup", "slow", "--no-wait"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("InstanceBusy") && stderr(&o).contains(&format!("backup task {id} ")),
        "{}",
        stderr(&o)
    );
    s.wait_task(id, "running with data", |v| {
        v["state"] == "running" && v["progress"]["bytes_done"].as_u64().unwrap_or(0) > 2_000_000
    });
    s.kill9();

    let s = Stowage::start(&dd);
    let v = s.json(&["task", "show", &id.to_string()]);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("interrupted"), "{v}");
    assert!(v["set_id"].is_null());
    assert!(
        s.json(&["set", "list"])["sets"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let out = s.ok(&["verify"]);
    assert!(out.contains("repository OK"), "{out}");
    // The instance is free again; back up at full speed this time.
    let o = s.ok(&["backup", "slow", "--wait"]);
    assert!(o.contains("backup set"), "{o}");
    let gc = s.ok(&["gc"]);
    assert!(gc.contains("gc:"), "{gc}");
    assert!(s.ok(&["verify"]).contains("repository OK"));

    // A node that stops between forgetting a set and deleting its snapshot
    // (here: the snapshot put back after the deletion) leaves a snapshot no
    // set names; gc deletes it, and only it, and reclaims its data.
    pg.psql("CREATE TABLE only_in_set3 AS SELECT g, md5(g::text) AS v FROM generate_series(1, 100000) g; CHECKPOINT;");
    s.ok(&["backup", "slow", "--wait"]);
    let set3 = s.json(&["set", "list"])["sets"][0]["id"].as_i64().unwrap();
    let snaps = dd.join("repository/snapshots");
    let before: std::collections::BTreeSet<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let keep = tempfile::tempdir().unwrap();
    for n in &before {
        std::fs::copy(snaps.join(n), keep.path().join(n)).unwrap();
    }
    s.ok(&["set", "delete", &set3.to_string()]);
    let left: std::collections::BTreeSet<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let gone: Vec<_> = before.difference(&left).collect();
    assert_eq!(gone.len(), 1, "{before:?} {left:?}");
    std::fs::copy(keep.path().join(gone[0]), snaps.join(gone[0])).unwrap();
    let gc = s.json(&["gc"]);
    assert_eq!(gc["result"]["orphan_snapshots_deleted"], 1, "{gc}");
    assert!(gc["result"]["packs_deleted"].as_u64().unwrap() > 0, "{gc}");
    let after: std::collections::BTreeSet<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(after, left);
    let sets = s.json(&["set", "list"])["sets"].as_array().unwrap().len();
    assert_eq!(sets, after.len(), "one snapshot per set");
    assert!(s.ok(&["verify"]).contains("repository OK"));
    let gc = s.json(&["gc"]);
    assert_eq!(gc["result"]["orphan_snapshots_deleted"], 0, "{gc}");
}

#[test]
fn bad_input_gets_clear_errors_and_corrupts_nothing() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::start(PgOptions {
        password_auth: true,
        ..Default::default()
    });
    pg.psql("CREATE ROLE bk LOGIN REPLICATION PASSWORD 'right'; CREATE TABLE t AS SELECT g FROM generate_series(1,1000) g;");
    // At trace, the most verbose level: the secret checks at the end read this log.
    let root = work.path().display().to_string();
    let s = Stowage::spawn_with_log(
        &work.path().join("stowage"),
        &["--no-scheduler", "--restore-root", &root],
        "trace",
    );

    // Unknown instance.
    let o = s.cli(&["backup", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("NotFound") && stderr(&o).contains("nosuch"),
        "{}",
        stderr(&o)
    );
    // Malformed ids and bodies through the REST API.
    assert_eq!(s.http("GET", "/v1/tasks/abc", None).0, 400);
    assert_eq!(s.http("GET", "/v1/tasks/-1", None).0, 400);
    assert_eq!(s.http("GET", "/v1/tasks/999", None).0, 404);
    let (st, body) = s.http("POST", "/v1/instances", Some("{not json"));
    assert_eq!(st, 400);
    assert_eq!(body["error"]["code"], "InvalidParameter");
    let (st, body) = s.http(
        "POST",
        "/v1/instances",
        Some(r#"{"name":"x y","host":"h","port":5432,"user":"u"}"#),
    );
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("InvalidParameter"))
    );
    let (st, _) = s.http(
        "POST",
        "/v1/instances",
        Some(r#"{"name":"x","host":"h","port":70000,"user":"u"}"#),
    );
    assert_eq!(st, 400);
    let (st, _) = s.http("GET", "/v1/tasks?state=bogus", None);
    assert_eq!(st, 400);
    assert_eq!(s.http("GET", "/v1/nosuchroute", None).0, 404);
    // Wrong key.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .get(&format!("{}/v1/instances", s.url))
        .header("Authorization", "Bearer STWKNOPE:nope")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Wrong database password: registration checks the connection and
    // refuses; registered anyway, the task fails with the reason, exit 1.
    std::fs::write(work.path().join("pw"), "wrong\n").unwrap();
    let port = pg.port.to_string();
    let pwfile = work.path().join("pw");
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "bad",
        "--port",
        &port,
        "--user",
        "bk",
        "--password-file",
        pwfile.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("DatabaseAuthentication"),
        "{}",
        stderr(&o)
    );
    let o = s.cli(&["instance", "add", "--name", "nothing-there", "--port", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("DatabaseUnreachable"), "{}", stderr(&o));
    assert_eq!(
        s.json(&["instance", "list"])["instances"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    s.ok(&[
        "instance",
        "add",
        "--name",
        "bad",
        "--port",
        &port,
        "--user",
        "bk",
        "--password-file",
        pwfile.to_str().unwrap(),
        "--no-check",
    ]);
    let o = s.cli(&["backup", "bad", "--wait"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("password authentication failed"),
        "{}",
        stderr(&o)
    );
    let t = &s.json(&["task", "list", "--instance", "bad"])["tasks"][0];
    assert_eq!(t["state"], "failed");

    // A good backup, then a restore into a non-empty folder is refused.
    std::fs::write(work.path().join("pw"), "right\n").unwrap();
    s.ok(&[
        "instance",
        "add",
        "--name",
        "good",
        "--port",
        &port,
        "--user",
        "bk",
        "--password-file",
        pwfile.to_str().unwrap(),
    ]);
    s.ok(&["backup", "good", "--wait"]);
    let set = s.json(&["set", "list"])["sets"][0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let target = work.path().join("busy");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "mine").unwrap();
    let o = s.cli(&["restore", &set, "--target", target.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("TargetNotEmpty"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(target.join("keep.txt")).unwrap(),
        "mine"
    );
    let o = s.cli(&["restore", &set, "--target", "relative/../x"]);
    assert_eq!(o.status.code(), Some(2));
    // Unknown set.
    assert_eq!(
        s.cli(&["restore", "424242", "--target", "/tmp/x"])
            .status
            .code(),
        Some(2)
    );
    // Nothing was corrupted.
    assert!(s.ok(&["verify"]).contains("repository OK"));
    // Secrets never appear in the log.
    let (_, secret) = s.credentials();
    let log = s.log();
    assert!(
        !log.contains(&secret) && !log.contains("right"),
        "secret in the server log"
    );
}

/// Backing up an unchanged database again stores almost nothing new.
#[test]
fn unchanged_database_dedups() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(2);
    pg.psql("CHECKPOINT");
    let s = Stowage::start(&work.path().join("stowage"));
    add_instance(&s, "same", &pg, &[]);
    s.ok(&["backup", "same", "--wait"]);
    s.ok(&["backup", "same", "--wait"]);
    let sets = s.json(&["set", "list"]);
    let second = &sets["sets"][0];
    let first = &sets["sets"][1];
    let (l1, n1) = (
        first["bytes_logical"].as_u64().unwrap(),
        first["bytes_stored"].as_u64().unwrap(),
    );
    let (l2, n2) = (
        second["bytes_logical"].as_u64().unwrap(),
        second["bytes_stored"].as_u64().unwrap(),
    );
    eprintln!("first: {l1} logical, {n1} stored; second: {l2} logical, {n2} stored");
    assert!(l2 > 20_000_000);
    assert!(
        n2 * 20 < n1,
        "second backup stored {n2} bytes, first {n1}: dedup failed"
    );
}

/// The database stops in the middle of a backup: the task fails with a clear
/// reason, the CLI exits 1, and the repository stays sound.
#[test]
fn database_stopped_mid_backup_fails_the_task_clearly() {
    let work = tempfile::tempdir().unwrap();
    let mut pg = PgServer::with_pgbench(3);
    let s = Stowage::start(&work.path().join("stowage"));
    add_instance(&s, "fragile", &pg, &["--max-rate-kbps", "4096"]);
    let id = s.json(&["backup", "fragile", "--no-wait"])["id"]
        .as_i64()
        .unwrap();
    s.wait_task(id, "running with data", |v| {
        v["state"] == "running" && v["progress"]["bytes_done"].as_u64().unwrap_or(0) > 1_000_000
    });
    pg.stop();
    let v = s.wait_task(id, "ended", |v| {
        v["state"] == "failed" || v["state"] == "finished"
    });
    assert_eq!(v["state"], "failed", "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("database server") || err.contains("terminating connection"),
        "{err}"
    );
    let o = s.cli(&["task", "watch", &id.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(s.ok(&["verify"]).contains("repository OK"));
}

/// Backups of different instances run at the same time; a running task can
/// be cancelled and ends `cancelled`, never `finished`.
#[test]
fn concurrent_backups_and_cancel() {
    let work = tempfile::tempdir().unwrap();
    let a = PgServer::with_pgbench(2);
    let b = PgServer::with_pgbench(2);
    let s = Stowage::start(&work.path().join("stowage"));
    add_instance(&s, "a", &a, &["--max-rate-kbps", "8192"]);
    add_instance(&s, "b", &b, &["--max-rate-kbps", "8192"]);
    let ta = s.json(&["backup", "a", "--no-wait"])["id"]
        .as_i64()
        .unwrap();
    let tb = s.json(&["backup", "b", "--no-wait"])["id"]
        .as_i64()
        .unwrap();
    // Both are running at the same time.
    s.wait_task(ta, "running", |v| v["state"] == "running");
    let vb = s.wait_task(tb, "running", |v| v["state"] == "running");
    assert_eq!(vb["state"], "running");
    let running = s.json(&["task", "list", "--state", "running"]);
    assert_eq!(running["tasks"].as_array().unwrap().len(), 2, "{running}");
    // Cancel one; the other finishes.
    s.ok(&["task", "cancel", &tb.to_string()]);
    let vb = s.wait_task(tb, "ended", |v| {
        ["cancelled", "failed", "finished"].contains(&v["state"].as_str().unwrap())
    });
    assert_eq!(vb["state"], "cancelled", "{vb}");
    assert!(vb["set_id"].is_null());
    let va = s.wait_task(ta, "ended", |v| {
        ["cancelled", "failed", "finished"].contains(&v["state"].as_str().unwrap())
    });
    assert_eq!(va["state"], "finished", "{va}");
    let o = s.cli(&["task", "cancel", &ta.to_string()]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "cancelling a finished task is refused"
    );
    // The cancelled instance can be backed up again right away.
    assert!(s.ok(&["backup", "b", "--wait"]).contains("backup set"));
    assert_eq!(
        s.json(&["set", "list"])["sets"].as_array().unwrap().len(),
        2
    );
}

/// SIGTERM while a backup runs: the server cancels it, records why, and
/// exits; after a restart the task reads `cancelled`, not `interrupted`.
#[test]
fn graceful_stop_cancels_running_backups() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(3);
    let dd = work.path().join("stowage");
    let mut s = Stowage::start(&dd);
    add_instance(&s, "slow", &pg, &["--max-rate-kbps", "4096"]);
    // A client follows the backup while the server is stopped: it reports
    // the cancellation, not a lost connection.
    let follower = Command::new(crate::harness::bin())
        .args(["backup", "slow"])
        .env("STOWAGE_SERVER", &s.url)
        .env("STOWAGE_DATA_DIR", &dd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let id = loop {
        let tasks = s.json(&["task", "list"]);
        if let Some(id) = tasks["tasks"][0]["id"].as_i64() {
            break id;
        }
        assert!(t.elapsed().as_secs() < 30, "no task: {tasks}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    s.wait_task(id, "running", |v| v["state"] == "running");
    s.stop();
    assert!(s.log().contains("shutting down"), "{}", s.log());
    let o = follower.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cancelled: the server was shut down"),
        "{}",
        stderr(&o)
    );
    let s = Stowage::start(&dd);
    let v = s.json(&["task", "show", &id.to_string()]);
    assert_eq!(v["state"], "cancelled", "{v}");
    assert!(v["error"].as_str().unwrap().contains("shut down"), "{v}");
    assert!(s.ok(&["verify"]).contains("repository OK"));
    assert!(s.ok(&["backup", "slow", "--wait"]).contains("backup set"));
}

/// TLS to PostgreSQL through the product: an instance registered with
/// `--sslmode verify-full --sslrootcert <CA>` is checked and backed up over
/// TLS; bad TLS settings are refused at registration.
#[test]
fn tls_instance_backs_up_and_bad_tls_settings_are_refused() {
    let pg = PgServer::start(PgOptions {
        tls: true,
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    let ca = pg.tls_ca();
    let ca = ca.to_str().unwrap();
    add_instance(
        &s,
        "tls",
        &pg,
        &["--sslmode", "verify-full", "--sslrootcert", ca],
    );
    let c = s.json(&["instance", "check", "tls"]);
    assert!(c.to_string().contains("15"), "{c}");
    assert_eq!(c["server"]["details"]["tls"], true, "{c}");
    assert!(
        s.ok(&["instance", "check", "tls"])
            .contains("over TLS (sslmode=verify-full)")
    );
    s.ok(&["backup", "tls", "--wait"]);
    // Without TLS the server refuses; the task says why.
    // Registration checks the connection: refused, with pg_hba advice
    // (not a REPLICATION attribute the role already has).
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "plain",
        "--port",
        &pg.port.to_string(),
        "--sslmode",
        "disable",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("DatabasePermission")
            && stderr(&o).contains("pg_hba.conf line")
            && !stderr(&o).contains("REPLICATION attribute"),
        "{}",
        stderr(&o)
    );
    add_instance(&s, "plain", &pg, &["--sslmode", "disable", "--no-check"]);
    let o = s.cli(&["backup", "plain", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no encryption"), "{}", stderr(&o));
    // The system trust store does not know the test CA: refused, and said so.
    add_instance(
        &s,
        "system",
        &pg,
        &[
            "--sslmode",
            "verify-full",
            "--sslrootcert",
            "system",
            "--no-check",
        ],
    );
    let o = s.cli(&["backup", "system", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("certificate"), "{}", stderr(&o));
    for bad in [
        &["--sslmode", "sometimes"][..],
        &["--sslmode", "verify-full"],
        &["--sslmode", "verify-ca", "--sslrootcert", "relative.pem"],
        &[
            "--sslmode",
            "verify-ca",
            "--sslrootcert",
            "/nonexistent/ca.pem",
        ],
    ] {
        let mut a = vec!["instance", "add", "--name", "bad", "--port", "5432"];
        a.extend_from_slice(bad);
        let o = s.cli(&a);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
    }
}

/// The database password rotates: backups fail with the server's reason
/// until `stowage instance set` gives the new one; bad settings are refused
/// and leave the instance as it was.
#[test]
fn instance_settings_can_change() {
    let pg = PgServer::start(PgOptions {
        password_auth: true,
        ..Default::default()
    });
    pg.psql("CREATE ROLE bk LOGIN REPLICATION PASSWORD 'old-secret-1'");
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    let pw = work.path().join("pw");
    std::fs::write(&pw, "old-secret-1\n").unwrap();
    let port = pg.port.to_string();
    s.ok(&[
        "instance",
        "add",
        "--name",
        "db",
        "--port",
        &port,
        "--user",
        "bk",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    s.ok(&["backup", "db", "--wait"]);
    pg.psql("ALTER ROLE bk PASSWORD 'new-secret-2'");
    let o = s.cli(&["backup", "db", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("password"), "{}", stderr(&o));
    std::fs::write(&pw, "new-secret-2\n").unwrap();
    let v = s.json(&[
        "instance",
        "set",
        "db",
        "--password-file",
        pw.to_str().unwrap(),
        "--max-rate-kbps",
        "65536",
    ]);
    assert_eq!(v["max_rate_kbps"], 65536);
    assert_eq!(v["has_password"], true);
    s.ok(&["backup", "db", "--wait"]);
    for bad in [
        &["--port", "0"][..],
        &["--sslmode", "sometimes"],
        &["--sslmode", "verify-full"],
        &["--max-rate-kbps", "1"],
    ] {
        let mut a = vec!["instance", "set", "db"];
        a.extend_from_slice(bad);
        assert_eq!(s.cli(&a).status.code(), Some(2), "{bad:?}");
    }
    let v = s.json(&["instance", "show", "db"]);
    assert_eq!(
        (v["port"].as_u64(), v["sslmode"].as_str()),
        (Some(pg.port as u64), Some("prefer"))
    );
    let (st, body) = s.http(
        "PATCH",
        &format!("/v1/instances/{}", v["id"].as_str().unwrap()),
        Some(r#"{"name":"renamed"}"#),
    );
    assert_eq!(st, 400, "{body}");
    assert!(!s.log().contains("new-secret-2") && !s.log().contains("old-secret-1"));
}
