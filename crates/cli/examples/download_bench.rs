//! Download tasks (issue 11's benchmark; bench/download.sh), three parts on
//! the same data in the same run:
//!
//! 1. Packaging: a download task of a PostgreSQL set's data directory
//!    (`--scale` pgbench) against reading the same files from the
//!    repository to nothing (`FileReader`, the read path packaging uses, in
//!    this process), `--rounds` times each, alternating; MB/s of the files'
//!    bytes and the ratio of the medians (target ≥ 0.9).
//! 2. Link serving: `curl -o /dev/null` of the packaged file by its link on
//!    loopback, once to warm the page cache and `--rounds` times measured;
//!    MB/s and the server's RSS added while serving (target ≥ 500 MB/s,
//!    ≤ 50 MB).
//! 3. Tencent `DescribeBackupDownloadTask`, TC3-signed POSTs, with
//!    `--tasks` download tasks in the catalog over `--instances` instances,
//!    from `--clients` threads for `--seconds` over `--keys` keys (the
//!    action allows 20 requests/s per key): 90 % the default page of a
//!    random instance, 10 % a filtered, ordered later page. p50/p90/p99,
//!    requests/s, as `bench/rpc.sh` measures.

use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stowage_api::tencent::signature as tc;
use stowage_catalog::sql::SqlCatalog;
use stowage_catalog::{Catalog, NewTask, StateUpdate};
use stowage_core::{TaskKind, TaskState};
use stowage_testkit::{PgOptions, PgServer};

mod bench_common;
use bench_common::{Rng, agent, pct, rest, start_server};

struct Args {
    scale: u32,
    rounds: usize,
    tasks: usize,
    instances: usize,
    clients: usize,
    seconds: u64,
    keys: usize,
}

fn args() -> Args {
    let mut a = Args {
        scale: 50,
        rounds: 5,
        tasks: 10_000,
        instances: 20,
        clients: 8,
        seconds: 20,
        keys: 200,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let n: u64 = v
            .get(i + 1)
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("{} needs a number", v[i]));
        match v[i].as_str() {
            "--scale" => a.scale = n as u32,
            "--rounds" => a.rounds = n as usize,
            "--tasks" => a.tasks = n as usize,
            "--instances" => a.instances = n as usize,
            "--clients" => a.clients = n as usize,
            "--seconds" => a.seconds = n,
            "--keys" => a.keys = n as usize,
            o => panic!("unknown argument {o}"),
        }
        i += 2;
    }
    a
}

fn wait_task(url: &str, auth: &str, id: i64) -> Value {
    let t = Instant::now();
    loop {
        let v = rest(url, auth, "GET", &format!("/v1/tasks/{id}"), None);
        match v["state"].as_str() {
            Some("finished") => return v,
            Some("failed" | "cancelled") => panic!("task {id} ended: {v}"),
            _ => {}
        }
        assert!(t.elapsed() < Duration::from_secs(1800), "task {id}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Flushes dirty pages, so one measurement does not pay for another's
/// writeback.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(500));
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A TC3-signed POST of `body` for `action`, as the SDK sends it.
fn tc3_post(
    ag: &ureq::Agent,
    host: &str,
    id: &str,
    secret: &str,
    action: &str,
    body: &str,
) -> (u16, String) {
    let now = stowage_service::now_ms() / 1000;
    let date = tc::utc_date(now);
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("host".to_string(), host.to_string()),
    ];
    let canonical =
        tc::tc3_canonical_request("POST", "", &headers, &tc::sha256_hex(body.as_bytes()));
    let sts = tc::tc3_string_to_sign(&now.to_string(), &date, "mongodb", &canonical);
    let sig = tc::tc3_signature(secret, &date, "mongodb", &sts);
    let auth = format!(
        "TC3-HMAC-SHA256 Credential={id}/{date}/mongodb/tc3_request, SignedHeaders=content-type;host, Signature={sig}"
    );
    let mut r = ag
        .post(&format!("http://{host}/"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/json")
        .header("X-TC-Action", action)
        .header("X-TC-Version", "2019-07-25")
        .header("X-TC-Timestamp", &now.to_string())
        .header("X-TC-Region", "ap-guangzhou")
        .send(body.as_bytes())
        .unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap())
}

fn main() {
    let a = args();

    eprintln!("starting PostgreSQL (pgbench scale {})", a.scale);
    let pg = PgServer::start(PgOptions::default());
    let o = pg.pgbench(&["-i", "-q", "-s", &a.scale.to_string(), "postgres"]);
    assert!(o.status.success());

    let work = tempfile::tempdir().unwrap();
    let dd = work.path().join("stowage");
    let mut srv = start_server(&dd, &std::env::temp_dir().join("download-bench-serve.log"));
    let (host, url, auth) = (srv.host.clone(), srv.url.clone(), srv.auth.clone());
    let pg_id = rest(
        &url,
        &auth,
        "POST",
        "/v1/instances",
        Some(json!({
            "name": "pg", "host": "127.0.0.1", "port": pg.port, "user": "postgres",
        })),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = rest(
        &url,
        &auth,
        "POST",
        &format!("/v1/instances/{pg_id}/backups"),
        None,
    );
    let b = wait_task(&url, &auth, b["id"].as_i64().unwrap());
    let set_id = b["set_id"].as_i64().unwrap();
    let set = rest(&url, &auth, "GET", &format!("/v1/sets/{set_id}"), None);

    // 1. Packaging against reading the same files from the repository.
    let storage: Arc<dyn stowage_repo::Storage> =
        Arc::new(stowage_repo::LocalStorage::new(dd.join("repository")).unwrap());
    let password = std::fs::read_to_string(dd.join("repository.password")).unwrap();
    let repo = Arc::new(stowage_repo::Repository::open(storage, password.trim()).unwrap());
    let m = repo
        .read_snapshot(set["snapshot_id"].as_str().unwrap())
        .unwrap();
    let base = m.archives.iter().find(|x| x.name == "base").unwrap();
    let bytes: u64 = base.files.iter().map(|f| f.size).sum();
    eprintln!(
        "set {set_id}: {} files, {:.0} MB in its data directory",
        base.files.len(),
        bytes as f64 / 1e6
    );
    let (mut read_rates, mut pack_rates) = (Vec::new(), Vec::new());
    let mut last_task = 0;
    for round in 0..a.rounds {
        settle();
        let t = Instant::now();
        let mut n = 0;
        for f in base
            .files
            .iter()
            .filter(|f| f.kind == stowage_core::manifest::FileKind::File)
        {
            n += std::io::copy(&mut repo.file_reader(f), &mut std::io::sink()).unwrap();
        }
        assert_eq!(n, bytes);
        let read_s = t.elapsed().as_secs_f64();
        settle();
        let d = rest(
            &url,
            &auth,
            "POST",
            &format!("/v1/sets/{set_id}/download"),
            None,
        );
        let d = wait_task(&url, &auth, d["id"].as_i64().unwrap());
        last_task = d["id"].as_i64().unwrap();
        let pack_s = d["duration_ms"].as_f64().unwrap() / 1000.0;
        read_rates.push(bytes as f64 / 1e6 / read_s);
        pack_rates.push(bytes as f64 / 1e6 / pack_s);
        eprintln!(
            "  round {round}: repository read {read_s:.2} s ({:.0} MB/s), packaging {pack_s:.2} s ({:.0} MB/s, tar {} bytes)",
            bytes as f64 / 1e6 / read_s,
            bytes as f64 / 1e6 / pack_s,
            d["result"]["bytes"]
        );
    }
    let (read, pack) = (median(&mut read_rates), median(&mut pack_rates));
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (best_read, best_pack) = (best(&read_rates), best(&pack_rates));

    // 2. Serving the packaged file by its link.
    let link = rest(&url, &auth, "GET", &format!("/v1/tasks/{last_task}"), None)["download"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = srv.child.id();
    let mut speeds = Vec::new();
    let mut added = 0u64;
    let mut before_serving = 0;
    for round in 0..=a.rounds {
        let before = rss(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(before));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let o = Command::new("curl")
            .args([
                "-fsS",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{speed_download}",
                &link,
            ])
            .output()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        assert!(
            o.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let mut it = out.split_whitespace();
        let size: u64 = it.next().unwrap().parse().unwrap();
        let speed: f64 = it.next().unwrap().parse().unwrap();
        let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
        eprintln!(
            "  fetch {round}{}: {size} bytes at {:.0} MB/s; server RSS {:.1} MB, +{:.1} MB while serving",
            if round == 0 {
                " (warms the page cache)"
            } else {
                ""
            },
            speed / 1e6,
            before as f64 / 1048576.0,
            grew as f64 / 1048576.0
        );
        if round > 0 {
            speeds.push(speed / 1e6);
            added = added.max(grew);
        } else {
            before_serving = before;
        }
    }
    let serve = median(&mut speeds);

    println!(
        "Download tasks, PostgreSQL pgbench scale {} ({:.0} MB data directory, {} files)",
        a.scale,
        bytes as f64 / 1e6,
        base.files.len()
    );
    println!(
        "packaging (download task, tar to disk, fsync): median {pack:.0} MB/s over {} rounds",
        a.rounds
    );
    println!("repository read of the same files to nothing:  median {read:.0} MB/s");
    println!(
        "ratio packaging / repository read: {:.2} (target >= 0.9)",
        pack / read
    );
    println!(
        "best rounds: packaging {best_pack:.0} MB/s, repository read {best_read:.0} MB/s, ratio {:.2}",
        best_pack / best_read
    );
    println!(
        "link serving (curl on loopback, page cache warm): median {serve:.0} MB/s (target >= 500); server RSS {:.1} MB before, at most +{:.1} MB while serving (target <= 50)",
        before_serving as f64 / 1048576.0,
        added as f64 / 1048576.0
    );
    if a.tasks == 0 {
        stowage_testkit::signal(srv.child.id(), "TERM");
        let _ = srv.child.wait();
        return;
    }

    // 3. DescribeBackupDownloadTask with many download tasks.
    let insts: Vec<String> = (0..a.instances)
        .map(|i| {
            rest(&url, &auth, "POST", "/v1/instances", Some(json!({
                "name": format!("m{i}"), "engine": "mongodb", "uri": format!("mongodb://127.0.0.1:1/?replicaSet=rs{i}"),
                "dialect": "tencent_mongo", "check": false,
            })))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let keys: Vec<(String, String)> = (0..a.keys)
        .map(|i| {
            let k = rest(
                &url,
                &auth,
                "POST",
                "/v1/keys",
                Some(json!({"description": format!("bench {i}")})),
            );
            (
                k["access_key_id"].as_str().unwrap().to_string(),
                k["access_key_secret"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    eprintln!(
        "writing {} finished download tasks into the catalog",
        a.tasks
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = SqlCatalog::open(&dd.join("catalog.db")).await.unwrap();
        let acc = c.account_by_name("default").await.unwrap().unwrap().id;
        let t = Instant::now();
        for i in 0..a.tasks {
            let inst = &insts[i % insts.len()];
            let now = stowage_service::now_ms() - (a.tasks - i) as i64 * 60_000;
            let name = format!("{inst}_{}", stowage_core::time::format_rfc3339(now - 3_600_000)[..19].replace('T', " "));
            let task = c
                .create_task(
                    &NewTask {
                        node: Some("bench".into()),
                        // As the server records a download: of the set's
                        // instance, holding no slot.
                        instance_id: Some(inst.clone()),
                        params: json!({"instance": inst, "replica_set_id": format!("{inst}_0"),
                                       "backup_name": name, "part": null}),
                        ..NewTask::of_kind(&acc, TaskKind::Download, Some(set_id))
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
            let done = StateUpdate {
                result: Some(json!({"part": format!("rs{}", i % insts.len()), "file": format!("rs{}.tar", i % insts.len()), "bytes": 1_000_000 + i})),
                ..Default::default()
            };
            c.set_task_state(task.id, TaskState::Finished, done, now + 5_000)
                .await
                .unwrap();
        }
        eprintln!("  done in {:.1} s", t.elapsed().as_secs_f64());
    });
    eprintln!(
        "load: {} clients for {} s (+2 s warm-up) over {} keys",
        a.clients,
        a.seconds,
        keys.len()
    );
    let warm = Instant::now() + Duration::from_secs(2);
    let end = warm + Duration::from_secs(a.seconds);
    let handles: Vec<_> = (0..a.clients)
        .map(|c| {
            let (host, insts, keys) = (host.clone(), insts.clone(), keys.clone());
            std::thread::spawn(move || {
                let ag = agent();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
                let (mut lat, mut errors, mut k) = (Vec::new(), 0u64, c);
                let want = format!("\"TotalCount\":{}", a.tasks / insts.len());
                while Instant::now() < end {
                    let inst = &insts[rng.next(insts.len())];
                    let body = if rng.next(10) == 0 {
                        json!({"InstanceId": inst, "Status": [2], "OrderBy": "finishTime", "OrderByType": "asc", "Limit": 50, "Offset": 100})
                    } else {
                        json!({"InstanceId": inst})
                    }
                    .to_string();
                    k = (k + a.clients) % keys.len();
                    let t = Instant::now();
                    let (status, text) = tc3_post(&ag, &host, &keys[k].0, &keys[k].1, "DescribeBackupDownloadTask", &body);
                    let d = t.elapsed();
                    if status != 200 || !text.contains(&want) {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("unexpected answer: {text}");
                        }
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
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default();

    println!(
        "DescribeBackupDownloadTask (TC3-signed POST): {} download tasks over {} instances, {} clients, {} keys",
        a.tasks,
        insts.len(),
        a.clients,
        keys.len()
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
    println!("server peak RSS: {hwm}");
    stowage_testkit::signal(srv.child.id(), "TERM");
    let _ = srv.child.wait();
    drop(pg);
}
