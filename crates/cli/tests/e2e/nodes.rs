//! Several `stowage serve` nodes on one PostgreSQL catalog and one S3
//! bucket: a node with another server key is refused; nodes sharing the
//! key and the repository password serve each other's instances, tasks and
//! sets.

use crate::harness::{Stowage, bin, stderr};
use std::path::{Path, PathBuf};
use stowage_testkit::{MongoOptions, MongoServer, PgOptions, PgServer, S3Server, fix_ownership};

/// One deployment: a PostgreSQL catalog and an S3 bucket shared by its
/// nodes. The first node started makes the server key, the repository
/// password and the admin credentials; the others get copies, as an
/// operator provisions them.
struct Cluster {
    work: tempfile::TempDir,
    s3: S3Server,
    _catalog: PgServer,
    /// `--catalog … --repository …` and the deployment's own flags.
    base: Vec<String>,
    first: std::cell::RefCell<Option<PathBuf>>,
}

impl Cluster {
    fn new(bucket_prefix: &str, extra: &[&str]) -> Cluster {
        let work = tempfile::tempdir().unwrap();
        let s3 = S3Server::start();
        let catalog = PgServer::start(PgOptions::default());
        catalog.psql("CREATE DATABASE stowage");
        let mut base = vec![
            "--catalog".to_string(),
            format!("postgres://postgres@127.0.0.1:{}/stowage", catalog.port),
            "--repository".to_string(),
            s3.url(bucket_prefix),
        ];
        base.extend(extra.iter().map(|s| s.to_string()));
        Cluster {
            work,
            s3,
            _catalog: catalog,
            base,
            first: Default::default(),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn base(&self) -> Vec<&str> {
        self.base.iter().map(String::as_str).collect()
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        self.s3.env()
    }

    /// Starts node `name` (the first one makes the deployment's secrets).
    fn node(&self, name: &str, extra: &[&str]) -> Stowage {
        let dir = self.dir(name);
        let mut args = self.base();
        let first = self.first.borrow().clone();
        let (key, pw);
        if let Some(first) = &first {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(
                first.join("admin-credentials"),
                dir.join("admin-credentials"),
            )
            .unwrap();
            key = first.join("server.key").display().to_string();
            pw = first.join("repository.password").display().to_string();
            args.extend(["--server-key-file", &key, "--repo-password-file", &pw]);
        }
        args.extend_from_slice(extra);
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let s = Stowage::start_with_env(&dir, &args, &env);
        if first.is_none() {
            *self.first.borrow_mut() = Some(dir);
        }
        s
    }

    /// `serve` of a node with its own secrets, run to its end (refused).
    fn refused_node(&self, dir: &Path, password_of: &Path) -> std::process::Output {
        std::process::Command::new(bin())
            .args(["serve", "--no-scheduler", "--data-dir"])
            .arg(dir)
            .args(self.base())
            .arg("--repo-password-file")
            .arg(password_of.join("repository.password"))
            .envs(self.env())
            .env("STOWAGE_INSECURE_FAST_KDF", "1")
            .output()
            .unwrap()
    }
}

#[test]
fn nodes_share_a_postgres_catalog_and_an_s3_repository() {
    let cluster = Cluster::new("nodes", &[]);
    let a_dir = cluster.dir("a");
    let a = cluster.node("a", &[]);
    assert!(!a_dir.join("catalog.db").exists(), "no SQLite catalog");

    // Another node with a key of its own: refused before it serves.
    let o = cluster.refused_node(&cluster.dir("b"), &a_dir);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("server key"), "{}", stderr(&o));

    // With the first node's key and repository password it serves.
    let b = cluster.node("b", &[]);

    // Registered through one node (its password sealed with the shared
    // key), backed up through the other.
    let pg = PgServer::with_pgbench(1);
    pg.psql("CHECKPOINT");
    let port = pg.port.to_string();
    a.ok(&[
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
    assert!(
        b.ok(&["instance", "check", "db"])
            .contains("ok: PostgreSQL")
    );
    b.ok(&["backup", "db", "--wait"]);
    let tasks = a.json(&["task", "list"]);
    let t = &tasks["tasks"][0];
    assert_eq!(t["state"], "finished", "{t}");
    let set_id = t["set_id"].as_i64().unwrap().to_string();
    // A second backup through the first node: both sets in one listing.
    a.ok(&["backup", "db", "--wait"]);
    assert_eq!(
        b.json(&["set", "list"])["sets"].as_array().unwrap().len(),
        2
    );

    // The set one node wrote restores through the other.
    let target = cluster.dir("restored");
    let out = a.ok(&["restore", &set_id, "--target", target.to_str().unwrap()]);
    assert!(out.contains("restored"), "{out}");
    fix_ownership(&target);
    let restored = PgServer::start_existing(&target, PgOptions::default());
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        "100000"
    );
    assert!(b.ok(&["verify"]).contains("repository OK"));

    // A download packaged by one node: its link works on the other too
    // (which packages the part again while it streams), byte for byte.
    let url = a.ok(&["download", "create", &set_id]).trim().to_string();
    let get = |u: &str| -> (u16, Vec<u8>) {
        let mut r = ureq::get(u)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        let status = r.status().as_u16();
        (
            status,
            r.body_mut()
                .with_config()
                .limit(1 << 32)
                .read_to_vec()
                .unwrap(),
        )
    };
    let (status, from_a) = get(&url);
    assert_eq!(status, 200);
    assert!(from_a.len() > 1_000_000, "{}", from_a.len());
    let on_b = url.replacen(&a.url, &b.url, 1);
    assert_ne!(on_b, url);
    let (status, from_b) = get(&on_b);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&from_b));
    assert!(from_a == from_b, "the other node's bytes differ");
    // Changed, it is refused on both.
    let forged = on_b.replace("expires=", "expires=1");
    assert_eq!(get(&forged).0, 403);
    assert_eq!(get(&url.replace("expires=", "expires=1")).0, 403);

    // A signed request replayed to another node is refused: the nodes
    // share the nonces they saw.
    let (ak, sk) = a.credentials();
    let q = signed_rpc(&ak, &sk, &[("Action", "DescribeDBInstances")]);
    let (status, body) = get(&format!("{}/?{q}", a.url));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    for n in [&b, &a] {
        let (status, body) = get(&format!("{}/?{q}", n.url));
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("SignatureNonceUsed"), "{body}");
    }
    let fresh = signed_rpc(&ak, &sk, &[("Action", "DescribeDBInstances")]);
    assert_eq!(get(&format!("{}/?{fresh}", b.url)).0, 200);

    // A key disabled through one node: refused by that node at once and by
    // the other (which had just used it) within the key cache's TTL.
    let admin = a.json(&["key", "create", "--description", "second admin"]);
    let admin_id = admin["access_key_id"].as_str().unwrap();
    assert!(
        b.cli_as(
            admin_id,
            admin["access_key_secret"].as_str().unwrap(),
            &["instance", "list"]
        )
        .status
        .success()
    );
    a.ok(&["key", "disable", admin_id]);
    let t0 = std::time::Instant::now();
    let refused = |n: &Stowage| {
        let o = n.cli_as(
            admin_id,
            admin["access_key_secret"].as_str().unwrap(),
            &["instance", "list"],
        );
        !o.status.success() && stderr(&o).contains("disabled")
    };
    assert!(
        refused(&a),
        "the node that disabled the key refuses it at once"
    );
    while !refused(&b) {
        assert!(
            t0.elapsed() < stowage_service::KEY_CACHE_TTL + std::time::Duration::from_secs(2),
            "the other node still takes a key disabled {:?} ago",
            t0.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!(
        "a key disabled through one node was refused by the other after {:?}",
        t0.elapsed()
    );
    drop((a, b));
}

/// An rds RPC query string signed with HMAC-SHA1 and a fresh nonce.
fn signed_rpc(id: &str, secret: &str, params: &[(&str, &str)]) -> String {
    let ts = stowage_core::time::format_rfc3339(stowage_service::now_ms());
    let nonce = stowage_service::secrets::random_uuid();
    let mut p = vec![("Version", "2014-08-15")];
    p.extend_from_slice(params);
    crate::alibaba::rpc_query("GET", id, secret, &p, &ts, &nonce)
}

/// `rotate-server-key`: refused while the server runs; re-seals every
/// secret; the old key is then refused at start, and with the new one the
/// access keys (whose secrets sign requests) and instance passwords work.
#[test]
fn the_server_key_rotates_offline_and_the_old_key_is_refused_after() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("s");
    let mut s = Stowage::start(&dir);
    let (id, secret) = s.new_account_key("tenant");
    let pg = PgServer::start(PgOptions {
        password_auth: true,
        ..Default::default()
    });
    pg.psql("CREATE ROLE bk LOGIN REPLICATION PASSWORD 'right'");
    let port = pg.port.to_string();
    let add = std::process::Command::new(bin())
        .args([
            "instance",
            "add",
            "--name",
            "db",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--user",
            "bk",
            "--password-env",
            "PGPW",
        ])
        .env("STOWAGE_SERVER", &s.url)
        .env("STOWAGE_ACCESS_KEY_ID", &id)
        .env("STOWAGE_ACCESS_KEY_SECRET", &secret)
        .env("PGPW", "right")
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", stderr(&add));
    let new_key = work.path().join("new.key");
    let rotate = |extra: &[&str]| {
        std::process::Command::new(bin())
            .arg("--data-dir")
            .arg(&dir)
            .args(["rotate-server-key", "--new-key-file"])
            .arg(&new_key)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = rotate(&[]);
    assert!(!o.status.success(), "rotated while the server runs");
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    s.stop();
    let o = rotate(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    // The admin key, the tenant's key and the instance's password.
    assert!(out.contains("re-sealed 3 secrets"), "{out}");
    assert!(String::from_utf8_lossy(&rotate(&[]).stdout).contains("already uses"));

    let o = std::process::Command::new(bin())
        .args(["serve", "--no-scheduler", "--data-dir"])
        .arg(&dir)
        .env("STOWAGE_INSECURE_FAST_KDF", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("server key"), "{}", stderr(&o));

    let s = Stowage::start_with(&dir, &["--server-key-file", new_key.to_str().unwrap()]);
    let o = s.cli_as(&id, &secret, &["instance", "check", "db"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok: PostgreSQL"));
}

/// kill -9 of the node running a backup, at a random moment, ten times:
/// another node takes the task over within the lease and runs it again as
/// a new attempt of the same task; every task ends finished with a set
/// that verifies, never twice, never with a set that does not verify.
#[test]
fn a_killed_nodes_backup_is_taken_over_and_finishes_once_with_a_sound_set() {
    let lease_secs = 3;
    let lease = lease_secs.to_string();
    let cluster = Cluster::new("takeover", &["--lease-secs", &lease]);
    let b = cluster.node("b", &[]);

    let pg = PgServer::with_pgbench(4);
    pg.psql("CHECKPOINT");
    let port = pg.port.to_string();
    // Throttled, so a backup runs a few seconds and the kill lands inside.
    b.ok(&[
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
        "--max-rate-kbps",
        "16384",
    ]);

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    let mut finished = Vec::new();
    for trial in 0..10 {
        let mut a = cluster.node("a", &[]);
        let t = a.json(&["backup", "db", "--no-wait"]);
        let id = t["id"].as_i64().unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = 100 + seed % 4000;
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let before = a.json(&["task", "show", &id.to_string()]);
        a.kill9();
        let killed = std::time::Instant::now();
        let mut taken_at = None;
        let v = loop {
            let v = b.json(&["task", "show", &id.to_string()]);
            if taken_at.is_none() && v["node"] != before["node"] {
                taken_at = Some(killed.elapsed());
            }
            if ["finished", "failed", "cancelled"].contains(&v["state"].as_str().unwrap()) {
                break v;
            }
            assert!(
                killed.elapsed() < std::time::Duration::from_secs(180),
                "task {id} never ended: {v}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let outcome = format!(
            "{} after {} attempt(s) (killed in state {})",
            v["state"].as_str().unwrap(),
            v["attempts"],
            before["state"].as_str().unwrap()
        );
        eprintln!("trial {trial}: kill after {delay} ms: {outcome}; taken over after {taken_at:?}");
        *outcomes.entry(outcome).or_default() += 1;
        assert_eq!(v["state"], "finished", "trial {trial}: {v}");
        if let Some(t) = taken_at {
            assert!(
                t < std::time::Duration::from_secs(lease_secs + 5),
                "taken over only after {t:?}"
            );
            assert_eq!(v["attempts"], 2, "{v}");
        }
        assert_eq!(v["set_id"], id, "a set's id is its task's");
        finished.push(id);
    }
    eprintln!("outcomes of 10 kills: {outcomes:?}");
    // Each task once, each set once, every set sound.
    let sets = b.json(&["set", "list"]);
    let mut ids: Vec<i64> = sets["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    finished.sort();
    assert_eq!(ids, finished);
    for id in &finished {
        assert!(
            b.ok(&["verify", "--set", &id.to_string()]).contains("OK"),
            "set {id}"
        );
    }
    // A node killed after writing its snapshot but before recording the
    // set leaves a snapshot no set names: gc deletes those, so one
    // snapshot per set is left.
    let gc = b.json(&["gc"]);
    eprintln!(
        "orphan snapshots deleted by gc: {}",
        gc["result"]["orphan_snapshots_deleted"]
    );
    assert!(gc["result"]["orphan_snapshots_deleted"].is_u64(), "{gc}");
    let v = b.json(&["verify"]);
    assert_eq!(
        v["result"]["snapshots_checked"].as_u64(),
        Some(finished.len() as u64),
        "{v}"
    );
}

/// Three nodes on one PostgreSQL catalog and one S3 bucket: backups of
/// three instances, each asked of another node, run on the node asked, at
/// once; a gc through a third node while a backup runs leaves both sound;
/// the rds and polardb SDK suites pass against the second and the first;
/// Tencent's and Alibaba's MongoDB SDKs follow a backup and its download
/// from node to node.
#[test]
fn three_nodes_spread_backups_run_gc_beside_them_and_serve_the_sdks() {
    let deployment = Cluster::new("three", &[]);
    let a = deployment.node("a", &[]);
    let b = deployment.node("b", &[]);
    // The third node allows 3 cloud requests/s per key (the SDK suite's
    // throttling check).
    let c = deployment.node("c", &["--rate-per-key", "3"]);
    let nodes = [&a, &b, &c];
    // The instances backed up here belong to an account of their own: the
    // SDK suites below expect the admin account to hold only theirs.
    let (ops_id, ops_secret) = a.new_account_key("ops");
    let ops = |node: &Stowage, args: &[&str]| -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let o = node.cli_as(&ops_id, &ops_secret, &args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let ended = |v: &serde_json::Value| {
        ["finished", "failed", "cancelled"].contains(&v["state"].as_str().unwrap())
    };
    let wait = |node: &Stowage, id: i64| loop {
        let v = ops(node, &["task", "show", &id.to_string()]);
        if ended(&v) {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };

    let dbs: Vec<PgServer> = (0..3)
        .map(|_| {
            let pg = PgServer::with_pgbench(2);
            pg.psql("CHECKPOINT");
            pg
        })
        .collect();
    let mut ids = Vec::new();
    for (k, pg) in dbs.iter().enumerate() {
        let port = pg.port.to_string();
        let name = format!("db{k}");
        let v = ops(
            nodes[k],
            &[
                "instance",
                "add",
                "--name",
                &name,
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--user",
                "postgres",
                // ~9 s each: long enough to watch their progress.
                "--max-rate-kbps",
                "4096",
            ],
        );
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // Each backup asked of another node than the one that registered it.
    let tasks: Vec<i64> = (0..3)
        .map(|k| {
            let name = format!("db{k}");
            ops(nodes[(k + 1) % 3], &["backup", &name, "--no-wait"])["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    // A gc through the third node while they run: it waits for the
    // backups' locks (retrying) or runs beside nothing; never breaks them.
    let gc = c.json(&["gc", "--no-wait"])["id"].as_i64().unwrap();
    // Live progress through every node, from the catalog, at most 2 s
    // stale: what any node shows of a running backup at one moment, every
    // node shows (at least) 2 s later.
    let mut checked = 0;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(60) {
        let mut floor = vec![None; tasks.len()];
        let mut all_ended = true;
        for (k, id) in tasks.iter().enumerate() {
            for n in nodes {
                let v = ops(n, &["task", "show", &id.to_string()]);
                all_ended &= ended(&v);
                if v["state"] == "running" {
                    let done = v["progress"]["bytes_done"].as_u64().unwrap();
                    floor[k] = Some(floor[k].unwrap_or(0).max(done));
                }
            }
        }
        if all_ended {
            break;
        }
        if floor.iter().all(Option::is_none) {
            // Not started yet (the gc may hold the repository first).
            std::thread::sleep(std::time::Duration::from_millis(200));
            continue;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
        for (k, id) in tasks.iter().enumerate() {
            let Some(min) = floor[k] else { continue };
            for n in nodes {
                let v = ops(n, &["task", "show", &id.to_string()]);
                if ended(&v) {
                    // Its final record is the set's own count.
                    continue;
                }
                let done = v["progress"]["bytes_done"].as_u64().unwrap();
                assert!(
                    done >= min,
                    "task {id} through {}: {done} bytes shown 2 s after {min} was: {v}",
                    n.url
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no backup seen running");
    let mut ran_on = std::collections::BTreeSet::new();
    for id in &tasks {
        let v = wait(&a, *id);
        assert_eq!(v["state"], "finished", "{v}");
        // Seen alike through every node.
        for n in nodes {
            assert_eq!(
                ops(n, &["task", "show", &id.to_string()])["node"],
                v["node"]
            );
        }
        ran_on.insert(v["node"].as_str().unwrap().to_string());
    }
    assert_eq!(
        ran_on.len(),
        3,
        "the backups ran on the nodes asked: {ran_on:?}"
    );
    let g = b.wait_task(gc, "ended", |v| {
        ["finished", "failed", "cancelled"].contains(&v["state"].as_str().unwrap())
    });
    assert_eq!(g["state"], "finished", "{g}");
    assert!(c.ok(&["verify"]).contains("repository OK"));
    for id in &ids {
        let sets = ops(&b, &["set", "list", "--instance", id]);
        assert_eq!(sets["sets"].as_array().unwrap().len(), 1, "{id}: {sets}");
    }

    // The SDK suites against other nodes than the one that registered the
    // instances they use.
    let v = crate::sdk::venv();
    let port = dbs[0].port.to_string();
    let rds = a.json(&[
        "instance",
        "add",
        "--name",
        "sdk",
        "--port",
        &port,
        "--dialect",
        "rds",
        "--max-rate-kbps",
        "16384",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cluster = a.json(&[
        "instance",
        "add",
        "--name",
        "cluster",
        "--port",
        &port,
        "--dialect",
        "polardb",
        "--max-rate-kbps",
        "16384",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (other_ak, other_sk) = a.new_account_key("other");
    let o = a.cli_as(
        &other_ak,
        &other_sk,
        &["instance", "add", "--name", "x", "--port", &port, "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let other: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let disabled = a.json(&["key", "create", "--description", "disabled"]);
    let disabled_id = disabled["access_key_id"].as_str().unwrap();
    c.ok(&["key", "disable", disabled_id]);
    let limited = b.json(&["key", "create", "--description", "tasks only"]);
    let limited_id = limited["access_key_id"].as_str().unwrap();
    let policy = deployment.dir("policy.json");
    std::fs::write(
        &policy,
        r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":"rds:DescribeBackupTasks","Resource":"*"}]}"#,
    )
    .unwrap();
    a.ok(&[
        "key",
        "policy",
        limited_id,
        "--file",
        policy.to_str().unwrap(),
    ]);
    let (ak, sk) = a.credentials();
    crate::sdk::run_script(
        &v,
        &b,
        "alibaba_rds.py",
        &[
            ("INSTANCE", &rds),
            ("OTHER", other["id"].as_str().unwrap()),
            ("LIMITED_AK", limited_id),
            ("LIMITED_SK", limited["access_key_secret"].as_str().unwrap()),
            ("DISABLED_AK", disabled_id),
            ("SLOW_ENDPOINT", c.url.trim_start_matches("http://")),
            ("SLOW_AK", &ak),
            ("SLOW_SK", &sk),
        ],
        "all SDK checks passed",
    );
    crate::sdk::run_script(
        &v,
        &a,
        "alibaba_polardb.py",
        &[("CLUSTER", &cluster)],
        "all polardb SDK checks passed",
    );

    // The MongoDB dialects (Tencent, Alibaba dds) across the nodes: each
    // call of a backup and its download to another node than the last.
    let m = MongoServer::start(MongoOptions {
        replica_set: "rs-nodes".into(),
        ..Default::default()
    });
    m.pymongo("client.shop.a.insert_many([{'_id': i, 'pad': 'x' * 200} for i in range(300)])");
    let mongo = |name: &str, dialect: &str| {
        a.json(&[
            "instance",
            "add",
            "--name",
            name,
            "--engine",
            "mongodb",
            "--dialect",
            dialect,
            "--uri",
            &m.uri(),
        ])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let cmgo = mongo("tc", "tencent_mongo");
    let dds = mongo("ali", "dds");
    let endpoints = nodes
        .iter()
        .map(|n| n.url.trim_start_matches("http://"))
        .collect::<Vec<_>>()
        .join(",");
    crate::sdk::run_script(
        &v,
        &a,
        "nodes_mongo.py",
        &[("ENDPOINTS", &endpoints), ("CMGO", &cmgo), ("DDS", &dds)],
        "all node SDK checks passed",
    );
}
