//! DescribeBackupTasks through the Alibaba RPC path, signature checked, with
//! a large catalog and backups running (issue 4's benchmark; bench/rpc.sh).
//!
//! Sets up a real PostgreSQL (pgbench data), a release `stowage serve`,
//! `--instances` rds instances of that database, `--tasks` finished tasks in
//! the catalog (written through the catalog API, as the server writes them),
//! and one throttled backup running per instance. Then `--clients` threads
//! send RPC-signed (HMAC-SHA1, fresh nonce each) DescribeBackupTasks for
//! `--seconds`: 90 % the default listing of a random instance (its running
//! task, live progress), 10 % one historical task by `BackupJobId`.
//! Prints p50/p90/p99/max latency, requests/s, and the catalog's query plans.
//!
//! `--nodes N` (N > 1): N servers on one PostgreSQL catalog (a second test
//! PostgreSQL) and one repository folder; the backups are started through
//! the nodes in turn and the clients spread over them. `--nonces N` fills
//! the shared nonce table with N unexpired nonces first (its steady size at
//! a rate: rate × 1,800 s).

use serde_json::json;
use std::time::{Duration, Instant};
use stowage_api::alibaba::signature as sig;
use stowage_catalog::sql::SqlCatalog;
use stowage_catalog::{Catalog, NewSet, NewTask, StateUpdate};
use stowage_core::{TaskMode, TaskState};
use stowage_testkit::{PgOptions, PgServer};

mod bench_common;
use bench_common::{Rng, agent, pct, rest, start_server_with};

struct Args {
    seconds: u64,
    clients: usize,
    tasks: usize,
    instances: usize,
    scale: u32,
    nodes: usize,
    /// Unexpired nonces in the shared catalog before the load (its steady
    /// size: requests/s × the 30-minute window, expiries spread over it).
    nonces: u64,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 20,
        clients: 8,
        tasks: 10_000,
        instances: 20,
        scale: 10,
        nodes: 1,
        nonces: 0,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let n: u64 = v[i + 1].parse().expect("numeric argument");
        match v[i].as_str() {
            "--seconds" => a.seconds = n,
            "--clients" => a.clients = n as usize,
            "--tasks" => a.tasks = n as usize,
            "--instances" => a.instances = n as usize,
            "--scale" => a.scale = n as u32,
            "--nodes" => a.nodes = (n as usize).max(1),
            "--nonces" => a.nonces = n,
            o => panic!("unknown argument {o}"),
        }
        i += 2;
    }
    a
}

fn signed_query(id: &str, secret: &str, params: &[(&str, &str)]) -> String {
    let ts = stowage_core::time::format_rfc3339(stowage_service::now_ms());
    let nonce = stowage_service::secrets::random_uuid();
    sig::signed_rpc_query("GET", id, secret, &ts, &nonce, params)
}

fn main() {
    let a = args();

    eprintln!("starting PostgreSQL (pgbench scale {})", a.scale);
    let senders = (a.instances + 5).to_string();
    let pg = PgServer::start(PgOptions {
        max_wal_senders: a.instances as u32 + 5,
        extra: vec![("max_replication_slots".into(), senders)],
        ..Default::default()
    });
    let o = pg.pgbench(&["-i", "-q", "-s", &a.scale.to_string(), "postgres"]);
    assert!(o.status.success());

    let work = tempfile::tempdir().unwrap();
    let dd = work.path().join("stowage");
    // Several nodes: a PostgreSQL catalog and a shared repository folder.
    let catalog_pg = (a.nodes > 1).then(|| {
        let c = PgServer::start(PgOptions::default());
        c.psql("CREATE DATABASE stowage");
        c
    });
    let cat_url = catalog_pg
        .as_ref()
        .map(|c| format!("postgres://postgres@127.0.0.1:{}/stowage", c.port));
    let shared: Vec<String> = match &cat_url {
        Some(u) => vec![
            "--catalog".into(),
            u.clone(),
            "--repository".into(),
            work.path().join("repository").display().to_string(),
        ],
        None => vec![],
    };
    let mut servers = vec![start_server_with(
        &dd,
        &work.path().join("serve.log"),
        &shared,
    )];
    for n in 1..a.nodes {
        let ndd = work.path().join(format!("node{n}"));
        std::fs::create_dir_all(&ndd).unwrap();
        std::fs::copy(dd.join("admin-credentials"), ndd.join("admin-credentials")).unwrap();
        let mut extra = shared.clone();
        extra.extend([
            "--server-key-file".into(),
            dd.join("server.key").display().to_string(),
            "--repo-password-file".into(),
            dd.join("repository.password").display().to_string(),
        ]);
        servers.push(start_server_with(
            &ndd,
            &work.path().join(format!("serve{n}.log")),
            &extra,
        ));
    }
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let (url, ak, sk, auth) = (
        servers[0].url.clone(),
        servers[0].ak.clone(),
        servers[0].sk.clone(),
        servers[0].auth.clone(),
    );
    let insts: Vec<String> = (0..a.instances)
        .map(|i| {
            rest(&url, &auth, "POST", "/v1/instances", Some(json!({
                "name": format!("pg{i}"), "host": "127.0.0.1", "port": pg.port, "user": "postgres",
                "dialect": "rds", "max_rate_kbps": 2048,
            })))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    eprintln!("writing {} finished tasks into the catalog", a.tasks);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (history, plans) = rt.block_on(async {
        let c = match &cat_url {
            Some(u) => SqlCatalog::open_postgres(u).await.unwrap(),
            None => SqlCatalog::open(&dd.join("catalog.db")).await.unwrap(),
        };
        let acc = c.account_by_name("default").await.unwrap().unwrap().id;
        let t = Instant::now();
        let mut ids = Vec::with_capacity(a.tasks);
        for i in 0..a.tasks {
            let now = stowage_service::now_ms() - (a.tasks - i) as i64 * 60_000;
            let task = c
                .create_task(
                    &NewTask {
                        node: Some("bench".into()),
                        ..NewTask::backup(
                            &acc,
                            &insts[i % insts.len()],
                            if i % 2 == 0 {
                                TaskMode::Automated
                            } else {
                                TaskMode::Manual
                            },
                            "physical",
                        )
                    },
                    now,
                )
                .await
                .unwrap();
            for s in [
                TaskState::Checking,
                TaskState::Preparing,
                TaskState::Running,
                TaskState::Finishing,
            ] {
                c.set_task_state(task.id, s, StateUpdate::default(), now)
                    .await
                    .unwrap();
            }
            c.finish_backup_task(
                task.id,
                &NewSet {
                    snapshot_id: format!("{:064x}", task.id),
                    engine: "postgresql".into(),
                    engine_version: Some("16.4".into()),
                    method: "physical".into(),
                    started_ms: now,
                    finished_ms: now + 30_000,
                    bytes_logical: 160_000_000,
                    bytes_stored: 2_000_000,
                    consistent_point: Some(stowage_core::ConsistentPoint::Wal {
                        start_lsn: "0/3000028".into(),
                        stop_lsn: "0/3000100".into(),
                        timeline: 1,
                    }),
                    meta: json!({"server_version_num": 150000}),
                    expires_ms: None,
                    lease_epoch: None,
                },
                now + 30_000,
            )
            .await
            .unwrap();
            ids.push(task.id);
        }
        eprintln!("  done in {:.1} s", t.elapsed().as_secs_f64());
        if cat_url.is_some() && std::env::var("RPC_BENCH_ANALYZE").is_ok_and(|v| v == "1") {
            sqlx::query("ANALYZE").execute(c.pool()).await.unwrap();
        }
        (ids, c.task_query_plans().await.unwrap())
    });

    eprintln!(
        "starting {} throttled backups through {} node(s)",
        insts.len(),
        urls.len()
    );
    for (k, i) in insts.iter().enumerate() {
        rest(
            &urls[k % urls.len()],
            &auth,
            "POST",
            &format!("/v1/instances/{i}/backups"),
            None,
        );
    }
    let t1 = Instant::now();
    loop {
        let v = rest(&url, &auth, "GET", "/v1/tasks?state=running", None);
        let n = v["tasks"].as_array().map_or(0, |t| t.len());
        if n == insts.len() {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "only {n} backups running"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    if a.nonces > 0 {
        let c = catalog_pg
            .as_ref()
            .expect("--nonces needs --nodes 2 or more (a shared catalog)");
        eprintln!("filling the nonce table with {} unexpired nonces", a.nonces);
        c.psql_db(
            "stowage",
            &format!(
                "INSERT INTO nonces (id, expires_ms)
                 SELECT decode(md5('bench' || g), 'hex'),
                        (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 60000 + g % 1800000
                 FROM generate_series(1, {}) g",
                a.nonces
            ),
        );
        c.psql_db("stowage", "VACUUM ANALYZE nonces");
    }
    eprintln!(
        "load: {} clients for {} s (+2 s warm-up)",
        a.clients, a.seconds
    );
    let warm = Instant::now() + Duration::from_secs(2);
    let end = warm + Duration::from_secs(a.seconds);
    let handles: Vec<_> = (0..a.clients)
        .map(|c| {
            let (url, ak, sk, insts, history) = (
                urls[c % urls.len()].clone(),
                ak.clone(),
                sk.clone(),
                insts.clone(),
                history.clone(),
            );
            std::thread::spawn(move || {
                let ag = agent();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
                let mut lat = Vec::new();
                let mut errors = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    let inst = &insts[rng.next(insts.len())];
                    let by_id = rng.next(10) == 0;
                    let job = history[rng.next(history.len())].to_string();
                    let mut p = vec![
                        ("Action", "DescribeBackupTasks"),
                        ("Version", "2014-08-15"),
                        ("DBInstanceId", inst.as_str()),
                    ];
                    if by_id {
                        p.push(("BackupJobId", job.as_str()));
                    }
                    let q = signed_query(&ak, &sk, &p);
                    let t = Instant::now();
                    let mut r = ag.get(&format!("{url}/?{q}")).call().unwrap();
                    let body = r.body_mut().read_to_string().unwrap();
                    let d = t.elapsed();
                    if r.status() != 200 || !body.contains("\"BackupJob\"") {
                        errors += 1;
                    }
                    if t >= warm {
                        lat.push(d);
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().unwrap();
        lat.extend(l);
        errors += e;
    }
    lat.sort();
    let running = rest(&url, &auth, "GET", "/v1/tasks?state=running", None)["tasks"]
        .as_array()
        .map_or(0, |t| t.len());
    let hwm: Vec<String> = servers
        .iter()
        .map(|s| {
            std::fs::read_to_string(format!("/proc/{}/status", s.child.id()))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("VmHWM"))
                .unwrap_or("VmHWM: ?")
                .trim_start_matches("VmHWM:")
                .trim()
                .to_string()
        })
        .collect();
    println!("DescribeBackupTasks (rds, RPC HMAC-SHA1 signed, fresh nonce per request)");
    println!(
        "nodes: {} ({} catalog)",
        urls.len(),
        if cat_url.is_some() {
            "one PostgreSQL"
        } else {
            "SQLite"
        }
    );
    println!(
        "catalog: {} finished tasks over {} instances; {} backups running at the end ({} at the start)",
        a.tasks,
        insts.len(),
        running,
        insts.len()
    );
    println!(
        "clients: {} threads on the same 2-core machine, keep-alive",
        a.clients
    );
    println!(
        "requests: {} in {} s = {:.0} req/s; errors: {}",
        lat.len(),
        a.seconds,
        lat.len() as f64 / a.seconds as f64,
        errors
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(&lat, 0.50),
        pct(&lat, 0.90),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!("server peak RSS: {}", hwm.join(", "));
    println!("catalog query plans:");
    for (shape, plan) in plans {
        println!("  {shape}: {plan}");
    }
    for mut s in servers {
        stowage_testkit::signal(s.child.id(), "TERM");
        let _ = s.child.wait();
    }
    drop(pg);
    drop(catalog_pg);
}
