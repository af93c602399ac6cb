//! Backup policies, the scheduler and retention, end to end: a policy whose
//! window opens in the next minute produces an automated task that is first
//! seen waiting (rds `NoStart`, `JobMode=Automated`), then really runs; an
//! expired set is deleted by the scheduler and gc reclaims its bytes while
//! verify still passes.

use crate::alibaba::{call, nonce, now, rpc_query};
use crate::harness::Stowage;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use stowage_core::time::{MS_PER_DAY, format_rfc3339, parse_rfc3339};
use stowage_testkit::{PgOptions, PgServer};

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn tasks(s: &Stowage) -> Vec<Value> {
    s.json(&["task", "list"])["tasks"]
        .as_array()
        .cloned()
        .unwrap()
}

fn set_ids(s: &Stowage) -> Vec<i64> {
    s.json(&["set", "list"])["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn policy_window_runs_an_automated_backup_and_retention_reclaims_space() {
    let pg = PgServer::start(PgOptions::default());
    // ~25 MB of hard-to-compress rows that only the first backup holds.
    pg.psql(
        "CREATE TABLE big AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS v
         FROM generate_series(1, 300000) g; CHECKPOINT;",
    );
    let work = tempfile::tempdir().unwrap();
    // Set up with the scheduler off: between 02:00 and 03:00 UTC the default
    // window (02:00Z-03:00Z) is open and would start automated backups of
    // the instances as soon as they are registered. Restarted with it on
    // once the policies are set.
    let scheduled = [
        "--scheduler-interval-secs",
        "1",
        "--max-automated-backups",
        "1",
    ];
    let s = Stowage::start_with(&work.path().join("stowage"), &scheduled);
    let port = pg.port.to_string();
    let inst = s.json(&[
        "instance",
        "add",
        "--name",
        "pg",
        "--port",
        &port,
        "--dialect",
        "rds",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The default policy, and bad input refused with the reason.
    let p = s.json(&["policy", "show", "pg"]);
    assert_eq!(p["window"], "02:00Z-03:00Z");
    assert_eq!(p["retention_days"], 7);
    assert_eq!(p["enabled"], true);
    for bad in [
        &["--window", "2:00-3:00"][..],
        &["--weekdays", "Funday"],
        &["--retention-days", "0"],
    ] {
        let mut a = vec!["policy", "set", "pg"];
        a.extend_from_slice(bad);
        let o = s.cli(&a);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }

    // Set 1 holds `big`; set 2 does not.
    s.ok(&["backup", "pg", "--wait"]);
    pg.psql("DROP TABLE big; CHECKPOINT;");
    s.ok(&["backup", "pg", "--wait"]);
    let sets = set_ids(&s);
    assert_eq!(sets.len(), 2);
    let (old_set, new_set) = (sets[1], sets[0]);

    // A window opening at the next full minute (at least 20 s away: the server restarts meanwhile).
    let now_ms = stowage_service::now_ms();
    let mut start = now_ms - now_ms % 60_000 + 60_000;
    if start - now_ms < 20_000 {
        start += 60_000;
    }
    let hhmm = |ms: i64| format_rfc3339(ms)[11..16].to_string();
    let window = format!("{}Z-{}Z", hhmm(start), hhmm(start + 30 * 60_000));
    let all_days = "Monday,Tuesday,Wednesday,Thursday,Friday,Saturday,Sunday";
    // Two more instances (the same database) share the window; with at most
    // one automated backup at a time they run one after the other.
    for name in ["pg2", "pg3"] {
        s.ok(&[
            "instance",
            "add",
            "--name",
            name,
            "--port",
            &port,
            "--dialect",
            "rds",
        ]);
        s.ok(&[
            "policy",
            "set",
            name,
            "--window",
            &window,
            "--weekdays",
            all_days,
        ]);
    }
    let p = s.json(&[
        "policy",
        "set",
        "pg",
        "--window",
        &window,
        "--weekdays",
        all_days,
        "--retention-days",
        "3",
    ]);
    assert_eq!(p["window"], window.as_str());
    assert_eq!(
        parse_rfc3339(p["next_backup_at"].as_str().unwrap()),
        Some(start)
    );
    // Existing sets got the new retention.
    let s1 = s.json(&["set", "show", &old_set.to_string()]);
    let fin = parse_rfc3339(s1["finished_at"].as_str().unwrap()).unwrap();
    let exp = parse_rfc3339(s1["expires_at"].as_str().unwrap()).unwrap();
    assert!((exp - fin - 3 * MS_PER_DAY).abs() < 1000, "{s1}");
    drop(s);
    let s = Stowage::start_scheduled(&work.path().join("stowage"), &scheduled);

    // The automated task appears before its window, waiting.
    let mut auto_id = 0;
    wait_for(
        "the automated task to be scheduled",
        Duration::from_secs(20),
        || match tasks(&s).into_iter().find(|t| {
            t["mode"] == "automated"
                && t["instance_id"] == inst.as_str()
                && t["scheduled_for"].as_str().and_then(parse_rfc3339) == Some(start)
        }) {
            Some(t) => {
                assert_eq!(t["state"], "pending", "{t}");
                assert_eq!(
                    parse_rfc3339(t["scheduled_for"].as_str().unwrap()),
                    Some(start)
                );
                auto_id = t["id"].as_i64().unwrap();
                true
            }
            None => false,
        },
    );
    // Followed while it waits: said to wait for its window, no empty bar.
    let watcher = std::process::Command::new(crate::harness::bin())
        .args(["task", "watch", &auto_id.to_string()])
        .env("STOWAGE_SERVER", &s.url)
        .env("STOWAGE_DATA_DIR", &s.data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The rds view: NoStart, Automated, NormalBackupTask.
    let (id, secret) = s.credentials();
    if stowage_service::now_ms() < start - 1500 {
        let q = rpc_query(
            "GET",
            &id,
            &secret,
            &[
                ("Action", "DescribeBackupTasks"),
                ("Version", "2014-08-15"),
                ("DBInstanceId", &inst),
                ("BackupMode", "Automated"),
            ],
            &now(),
            &nonce(),
        );
        let (st, v) = call(&s, "GET", &q, &[]);
        assert_eq!(st, 200, "{v}");
        let jobs: Vec<&serde_json::Value> = v["Items"]["BackupJob"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["BackupJobId"] == auto_id)
            .collect();
        assert_eq!(jobs.len(), 1, "{v}");
        assert_eq!(jobs[0]["BackupStatus"], "NoStart");
        assert_eq!(jobs[0]["JobMode"], "Automated");
        assert_eq!(jobs[0]["TaskAction"], "NormalBackupTask");
    }
    // It does not block a manual backup meanwhile... (only if time allows)
    // ...and runs once its window opens.
    wait_for(
        "the automated backup to finish",
        Duration::from_secs(150),
        || {
            let t = s.json(&["task", "show", &auto_id.to_string()]);
            assert!(
                !["failed", "cancelled"].contains(&t["state"].as_str().unwrap()),
                "{t}\n{}",
                s.log()
            );
            t["state"] == "finished"
        },
    );
    let t = s.json(&["task", "show", &auto_id.to_string()]);
    assert!(
        parse_rfc3339(t["started_at"].as_str().unwrap()).unwrap() >= start,
        "started before its window: {t}"
    );
    let w = watcher.wait_with_output().unwrap();
    let progress = String::from_utf8_lossy(&w.stderr);
    assert!(w.status.success(), "{progress}");
    assert!(progress.contains("waiting for its window at"), "{progress}");
    assert!(!progress.contains("0 B of 0 B"), "{progress}");
    // Progress goes to stderr; stdout holds nothing but the result.
    assert!(
        !String::from_utf8_lossy(&w.stdout).contains("%"),
        "{}",
        String::from_utf8_lossy(&w.stdout)
    );
    let auto_set = t["set_id"].as_i64().unwrap();
    let a = s.json(&["set", "show", &auto_set.to_string()]);
    assert_eq!(a["mode"], "automated");
    // The window is still open, but its backup ran: the next one is tomorrow's.
    let p = s.json(&["policy", "show", "pg"]);
    assert_eq!(
        parse_rfc3339(p["next_backup_at"].as_str().unwrap()),
        Some(start + MS_PER_DAY),
        "{p}"
    );
    // Exactly one task per instance for that window, all run, never two at once.
    wait_for(
        "all automated backups to finish",
        Duration::from_secs(120),
        || {
            let auto: Vec<Value> = tasks(&s)
                .into_iter()
                .filter(|t| t["scheduled_for"].as_str().and_then(parse_rfc3339) == Some(start))
                .collect();
            assert_eq!(auto.len(), 3, "{auto:?}");
            auto.iter().all(|t| t["state"] == "finished")
        },
    );
    let mut spans: Vec<(i64, i64)> = tasks(&s)
        .iter()
        // The automated backups that ran (not one superseded unstarted).
        .filter(|t| t["mode"] == "automated" && !t["started_at"].is_null())
        .map(|t| {
            let at = |k: &str| parse_rfc3339(t[k].as_str().unwrap()).unwrap();
            (at("started_at"), at("finished_at"))
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "automated backups overlapped: {spans:?}");
    }
    assert!(s.log().contains("automated backup queued"), "{}", s.log());

    // Retention: the newest set is never deleted, even when expired.
    s.ok(&[
        "set",
        "expire",
        &auto_set.to_string(),
        "--at",
        "2000-01-01T00:00:00Z",
    ]);
    // The old set (holding `big`) expires now.
    let repo = work.path().join("stowage/repository");
    let before = dir_size(&repo);
    let o = s.ok(&["set", "expire", &old_set.to_string(), "--at", &now()]);
    assert!(o.contains("expires"), "{o}");
    wait_for(
        "the expired set to be deleted",
        Duration::from_secs(30),
        || !set_ids(&s).contains(&old_set),
    );
    wait_for("gc to run", Duration::from_secs(60), || {
        s.json(&["job", "list"])["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["kind"] == "gc" && j["state"] == "finished")
    });
    let after = dir_size(&repo);
    assert!(
        before - after > 5_000_000,
        "gc reclaimed only {} bytes ({before} → {after})",
        before - after
    );
    let left = set_ids(&s);
    assert!(
        left.contains(&new_set) && left.contains(&auto_set),
        "{left:?}"
    );
    // A set kept forever, and the repository still verifies.
    let k = s.json(&["set", "expire", &new_set.to_string(), "--never"]);
    assert_eq!(k["expires_at"], Value::Null);
    s.ok(&["verify"]);
    // Bad expiry input.
    assert_eq!(
        s.cli(&["set", "expire", &new_set.to_string(), "--at", "tomorrow"])
            .status
            .code(),
        Some(2)
    );
    assert!(!s.log().contains(&secret), "secret in the log");
}

/// A backup that starts while gc (here: another process) holds the
/// repository exclusively waits for it instead of failing.
#[test]
fn a_backup_waits_for_a_running_gc() {
    let pg = PgServer::start(PgOptions::default());
    let work = tempfile::tempdir().unwrap();
    let dd = work.path().join("stowage");
    let s = Stowage::start(&dd);
    let port = pg.port.to_string();
    s.ok(&["instance", "add", "--name", "pg", "--port", &port]);
    let storage: std::sync::Arc<dyn stowage_repo::Storage> =
        std::sync::Arc::new(stowage_repo::LocalStorage::new(dd.join("repository")).unwrap());
    let pw = std::fs::read_to_string(dd.join("repository.password")).unwrap();
    let repo = stowage_repo::Repository::open(storage, pw.trim()).unwrap();
    let guard = repo
        .lock(stowage_repo::lock::LockKind::Exclusive, "gc")
        .unwrap();
    let t = s.json(&["backup", "pg", "--no-wait"]);
    let id = t["id"].as_i64().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(3));
    let t = s.json(&["task", "show", &id]);
    assert!(
        !t["state"].as_str().unwrap().starts_with("f") && t["state"] != "running",
        "{t}"
    );
    assert!(s.log().contains("repository busy"), "{}", s.log());
    drop(guard);
    wait_for("the backup to finish", Duration::from_secs(60), || {
        let t = s.json(&["task", "show", &id]);
        assert_ne!(t["state"], "failed", "{t}");
        t["state"] == "finished"
    });
}
