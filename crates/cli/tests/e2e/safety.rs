//! Stowage never destroys what it was given, and an account reaches nothing
//! outside itself: the data-directory lock, restore targets that can never
//! be a live database or Stowage's own data, restore roots per account,
//! admin-only repository operations, and the hosts tenants may reach.

use crate::harness::{Stowage, bin, stderr};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use stowage_testkit::{PgOptions, PgServer, fix_ownership, free_port};

fn add(s: &Stowage, name: &str, pg: &PgServer, extra: &[&str]) -> String {
    let port = pg.port.to_string();
    let mut a = vec!["instance", "add", "--name", name, "--port", &port];
    a.extend_from_slice(extra);
    s.json(&a)["id"].as_str().unwrap().to_string()
}

fn code_and_err(o: &std::process::Output) -> (Option<i32>, String) {
    (o.status.code(), stderr(o))
}

/// A second `serve` on the same data directory refuses at once, naming the
/// holder's PID, and touches nothing: the first server's running backup
/// finishes and verifies.
#[test]
fn second_server_on_a_data_dir_refuses_and_leaves_the_first_alone() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(2);
    let dd = work.path().join("stowage");
    let s = Stowage::start(&dd);
    add(&s, "slow", &pg, &["--max-rate-kbps", "4096"]);
    let id = s.json(&["backup", "slow", "--no-wait"])["id"]
        .as_i64()
        .unwrap();
    s.wait_task(id, "running", |v| v["state"] == "running");

    // Same port (fails to listen anyway) and a free port: both refuse
    // before reading the catalog.
    let same_port = s.url.trim_start_matches("http://").to_string();
    for listen in [same_port, format!("127.0.0.1:{}", free_port())] {
        let t = Instant::now();
        let o = Command::new(bin())
            .args(["serve", "--no-scheduler", "--listen", &listen, "--data-dir"])
            .arg(&dd)
            .env("STOWAGE_INSECURE_FAST_KDF", "1")
            .output()
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("is in use by process") && e.contains(&s.pid().to_string()),
            "{e}"
        );
    }
    let v = s.wait_task(id, "ended", |v| {
        matches!(
            v["state"].as_str(),
            Some("finished" | "failed" | "cancelled")
        )
    });
    assert_eq!(v["state"], "finished", "{v}");
    assert!(!s.log().contains("illegal task transition"));
    assert!(s.ok(&["verify"]).contains("repository OK"));
}

/// `restore --force` never clears a running cluster's data directory, the
/// data directory, the repository or a restore root; a cleanly stopped
/// cluster may be replaced on purpose.
#[test]
fn restore_never_clears_a_live_cluster_or_stowages_own_data() {
    let work = tempfile::tempdir().unwrap();
    let mut pg = PgServer::with_pgbench(1);
    let dd = work.path().join("stowage");
    let pg_root = pg.dir.path().display().to_string();
    let work_root = work.path().display().to_string();
    let s = Stowage::start_with(
        &dd,
        &["--restore-root", &pg_root, "--restore-root", &work_root],
    );
    add(&s, "src", &pg, &[]);
    s.ok(&["backup", "src", "--wait"]);
    let set = s.json(&["set", "list"])["sets"][0]["id"].to_string();

    let o = s.cli(&[
        "restore",
        &set,
        "--target",
        pg.data.to_str().unwrap(),
        "--force",
    ]);
    let (code, e) = code_and_err(&o);
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains("UnsafeTarget") && e.contains(&pg.pid().to_string()),
        "{e}"
    );
    assert!(pg.data.join("postmaster.pid").exists());
    assert_eq!(pg.psql("SELECT 1"), "1");

    for (target, why) in [
        (dd.join("repository"), "repository"),
        (dd.join("repository/data"), "repository"),
        (dd.clone(), "data directory"),
        (work.path().to_path_buf(), "restore root"),
    ] {
        let o = s.cli(&[
            "restore",
            &set,
            "--target",
            target.to_str().unwrap(),
            "--force",
        ]);
        let (code, e) = code_and_err(&o);
        assert_eq!(code, Some(2), "{}: {e}", target.display());
        assert!(e.contains("UnsafeTarget") && e.contains(why), "{e}");
    }
    assert!(s.ok(&["verify"]).contains("repository OK"));

    // Stopped cleanly, the cluster may be replaced by the backup.
    pg.stop();
    s.ok(&[
        "restore",
        &set,
        "--target",
        pg.data.to_str().unwrap(),
        "--force",
    ]);
    fix_ownership(&pg.data);
    let again = PgServer::start_existing(&pg.data, PgOptions::default());
    assert_eq!(again.psql("SELECT count(*) FROM pgbench_branches"), "1");
}

/// A repository URL of an unsupported scheme is refused, not made a folder.
#[test]
fn unsupported_repository_scheme_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .current_dir(work.path())
        .args(["serve", "--repository", "gs://bucket/prefix", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(work.path().join("dd"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("gs:// scheme is not supported"),
        "{}",
        stderr(&o)
    );
    assert!(!work.path().join("gs:").exists());
}

/// A tenant's key reaches nothing on the server's filesystem outside its
/// own restore folder, and none of the shared repository's operations.
#[test]
fn a_tenant_cannot_touch_the_servers_filesystem_or_the_shared_repository() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(1);
    let roots = work.path().join("roots");
    let s = Stowage::start_with(
        &work.path().join("stowage"),
        &[
            "--restore-root",
            roots.to_str().unwrap(),
            "--tenant-allow",
            "127.0.0.0/8",
        ],
    );
    let (kid, ksec) = s.new_account_key("team-b");
    let tenant = |args: &[&str]| s.cli_as(&kid, &ksec, args);
    let port = pg.port.to_string();
    let o = tenant(&["instance", "add", "--name", "b", "--port", &port]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tenant(&["backup", "b", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sets: Value = serde_json::from_slice(&tenant(&["set", "list", "--json"]).stdout).unwrap();
    let set = sets["sets"][0]["id"].to_string();

    // The reproduction: a folder the tenant never owned survives.
    let victim = work.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious"), "mine").unwrap();
    let o = tenant(&[
        "restore",
        &set,
        "--target",
        victim.to_str().unwrap(),
        "--force",
    ]);
    let (code, e) = code_and_err(&o);
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains("TargetNotAllowed") && e.contains("acc-team-b/"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(victim.join("precious")).unwrap(),
        "mine"
    );

    // Another account's folder inside the root, '..', and a symlink out.
    let admins = roots.join("acc-default/x");
    let o = tenant(&["restore", &set, "--target", admins.to_str().unwrap()]);
    assert!(stderr(&o).contains("TargetNotAllowed"), "{}", stderr(&o));
    let o = tenant(&["restore", &set, "--target", "a/../../../victim", "--force"]);
    assert!(stderr(&o).contains("InvalidParameter"), "{}", stderr(&o));
    std::fs::create_dir_all(roots.join("acc-team-b")).unwrap();
    std::os::unix::fs::symlink(&victim, roots.join("acc-team-b/link")).unwrap();
    for t in ["link", "link/deeper"] {
        let o = tenant(&["restore", &set, "--target", t, "--force"]);
        assert!(
            stderr(&o).contains("TargetNotAllowed"),
            "{t}: {}",
            stderr(&o)
        );
    }
    assert_eq!(
        std::fs::read_to_string(victim.join("precious")).unwrap(),
        "mine"
    );

    // Its own folder works, with a relative target.
    let o = tenant(&["restore", &set, "--target", "pg/b1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(roots.join("acc-team-b/pg/b1/PG_VERSION").exists());

    // Repository-wide operations are the admin's; its own set it may verify.
    for args in [&["verify"][..], &["gc"][..]] {
        let o = tenant(args);
        let (code, e) = code_and_err(&o);
        assert_eq!(code, Some(2), "{args:?}: {e}");
        assert!(e.contains("Forbidden"), "{e}");
    }
    let o = tenant(&["verify", "--set", &set]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("OK"));
    let (status, body) = s.http_as(&kid, &ksec, "POST", "/v1/verify", Some("{\"all\": true}"));
    assert_eq!(status, 400, "{body}");

    // The admin restores anywhere inside a root and verifies everything.
    let admin_set = {
        add(&s, "a", &pg, &[]);
        s.ok(&["backup", "a", "--wait"]);
        s.json(&["set", "list"])["sets"][0]["id"].to_string()
    };
    let anywhere = roots.join("ops/a-copy");
    s.ok(&[
        "restore",
        &admin_set,
        "--target",
        anywhere.to_str().unwrap(),
    ]);
    assert!(anywhere.join("PG_VERSION").exists());
    let o = tenant(&["verify", "--set", &admin_set]);
    assert!(stderr(&o).contains("NotFound"), "{}", stderr(&o));
    assert!(s.ok(&["verify"]).contains("repository OK"));

    // Tenants' instances may point only where the operator allows.
    let o = tenant(&[
        "instance",
        "add",
        "--name",
        "far",
        "--host",
        "10.1.2.3",
        "--no-check",
    ]);
    let (code, e) = code_and_err(&o);
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains("Forbidden") && e.contains("--tenant-allow"),
        "{e}"
    );
    let o = tenant(&["instance", "set", "b", "--host", "10.1.2.3"]);
    assert!(stderr(&o).contains("Forbidden"), "{}", stderr(&o));
    s.ok(&[
        "instance",
        "add",
        "--name",
        "far",
        "--host",
        "10.1.2.3",
        "--no-check",
    ]);
}

/// Without `--restore-root`, restores go under `<data-dir>/restores`, and a
/// relative target lands in the caller's account folder there.
#[test]
fn default_restore_root_is_in_the_data_dir() {
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(1);
    let dd = work.path().join("stowage");
    let s = Stowage::start_plain(&dd, &["--no-scheduler"]);
    add(&s, "src", &pg, &[]);
    s.ok(&["backup", "src", "--wait"]);
    let set = s.json(&["set", "list"])["sets"][0]["id"].to_string();
    s.ok(&["restore", &set, "--target", "first"]);
    assert!(dd.join("restores/acc-default/first/PG_VERSION").exists());
    let o = s.cli(&[
        "restore",
        &set,
        "--target",
        work.path().join("x").to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("TargetNotAllowed"), "{}", stderr(&o));
    assert!(stderr(&o).contains("restores/"), "{}", stderr(&o));
}

/// `serve --data-dir` relative to the folder it starts in works (the
/// restore roots derived from it are absolute), and the client finds the
/// credentials under the same relative path.
#[test]
fn a_relative_data_dir_works() {
    let work = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--no-scheduler",
            "--listen",
            &listen,
            "--data-dir",
            "rel",
        ])
        .current_dir(work.path())
        .env("STOWAGE_INSECURE_FAST_KDF", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://{listen}");
    let mut out = None;
    for _ in 0..300 {
        let o = Command::new(bin())
            .args(["instance", "list", "--data-dir", "rel", "--server", &url])
            .current_dir(work.path())
            .output()
            .unwrap();
        if o.status.success() {
            out = Some(o);
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let mut e = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut e).unwrap();
            panic!("serve exited {st}: {e}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.is_some(), "the server never answered");
    assert!(work.path().join("rel/restores").is_dir());
}
