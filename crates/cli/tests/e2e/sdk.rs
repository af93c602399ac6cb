//! The clouds' official SDKs (PyPI) against a real `stowage serve` with
//! real PostgreSQL and MongoDB-compatible (SecantusDB) instances. The virtual environment is built from
//! `tests/compat/requirements.txt` on first use (`STOWAGE_SDK_VENV`, default
//! /var/tmp/stowage-sdk-venv) and reused while that file is unchanged.

use crate::harness::Stowage;
use std::path::PathBuf;
use std::process::Command;
use stowage_testkit::{MariaDbOptions, MariaDbServer, MongoOptions, MongoServer, PgServer};

/// The virtual environment with the official SDKs: built from the pinned
/// `tests/compat/requirements.txt`, rebuilt when that file changes, checked
/// by importing every module the scripts use. `STOWAGE_SDK_UNPINNED=1` takes
/// the venv as it is (`scripts/sdk-newest.sh` fills one with the newest
/// releases).
pub(crate) fn venv() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        let v = PathBuf::from(
            std::env::var("STOWAGE_SDK_VENV")
                .unwrap_or_else(|_| "/var/tmp/stowage-sdk-venv".into()),
        );
        let req = stowage_testkit::repo_file("crates/cli/tests/compat/requirements.txt");
        if std::env::var("STOWAGE_SDK_UNPINNED").is_ok_and(|x| x == "1") {
            let mods = stowage_testkit::required_modules(&std::fs::read_to_string(&req).unwrap());
            assert!(
                stowage_testkit::venv_imports(&v, &mods),
                "{} lacks an SDK module",
                v.display()
            );
            return v;
        }
        stowage_testkit::pinned_venv(&v, &req)
    })
    .clone()
}

/// Runs one compatibility script against `s` with the admin key; it must
/// print `done` at the end.
pub(crate) fn run_script(
    v: &std::path::Path,
    s: &Stowage,
    script: &str,
    env: &[(&str, &str)],
    done: &str,
) {
    let (ak, sk) = s.credentials();
    let out = Command::new(v.join("bin/python"))
        .arg(stowage_testkit::repo_file(&format!(
            "crates/cli/tests/compat/{script}"
        )))
        .env("ENDPOINT", s.url.trim_start_matches("http://"))
        .env("AK", ak)
        .env("SK", sk)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    if !out.status.success() {
        let log = s.log();
        let tail: String = log
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "{script} failed:\n{stdout}\n{}\nserver log (last lines):\n{tail}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(stdout.contains(done), "{script}: {stdout}");
}

#[test]
fn alibaba_sdks_drive_real_backups() {
    let v = venv();
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::with_pgbench(2);
    let s = Stowage::start(&work.path().join("stowage"));
    let port = pg.port.to_string();
    // Each instance is throttled so that the SDKs see its tasks move
    // through their states; all three are the same PostgreSQL database
    // registered under each product's id format.
    let add = |name: &str, dialect: &str| -> String {
        let v = s.json(&[
            "instance",
            "add",
            "--name",
            name,
            "--port",
            &port,
            "--dialect",
            dialect,
            "--max-rate-kbps",
            "16384",
        ]);
        v["id"].as_str().unwrap().to_string()
    };
    let (rds, cluster) = (add("sdk", "rds"), add("cluster", "polardb"));
    // A dds- instance is MongoDB: PostgreSQL under dds is refused.
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "pg-as-dds",
        "--port",
        &port,
        "--dialect",
        "dds",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("dialect dds: its instances are mongodb"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A replica set of ~1.5 MB, throttled so that the SDK sees its backups
    // run; the data spans two databases.
    let m = MongoServer::start(MongoOptions {
        replica_set: "rs-sdk".into(),
        ..Default::default()
    });
    m.pymongo(
        "client.shop.orders.insert_many([{'_id': i, 'pad': 'x' * 1000} for i in range(1500)])\n\
         client.crm.people.insert_one({'_id': 1, 'name': 'Ana'})",
    );
    let mongo = s.json(&[
        "instance",
        "add",
        "--name",
        "mongo",
        "--engine",
        "mongodb",
        "--uri",
        &m.uri(),
        "--max-rate-kbps",
        "512",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A sharded cluster: two shards (shard 0 the larger) and config servers.
    let cluster_servers: Vec<MongoServer> = ["sdk-sh0", "sdk-sh1", "sdk-cfg"]
        .iter()
        .map(|n| {
            MongoServer::start(MongoOptions {
                replica_set: n.to_string(),
                ..Default::default()
            })
        })
        .collect();
    cluster_servers[0]
        .pymongo("client.shop.a.insert_many([{'_id': i, 'pad': 'x' * 500} for i in range(400)])");
    cluster_servers[1].pymongo(
        "client.shop.a.insert_many([{'_id': i, 'pad': 'x' * 500} for i in range(400, 500)])",
    );
    cluster_servers[2].pymongo(
        "client.config.shards.insert_one({'_id': 'sdk-sh0', 'host': 'sdk-sh0/127.0.0.1:1'})",
    );
    let sharded = s.json(&[
        "instance",
        "add",
        "--name",
        "mongo-cluster",
        "--engine",
        "mongodb",
        "--shard",
        &cluster_servers[0].uri(),
        "--shard",
        &cluster_servers[1].uri(),
        "--config",
        &cluster_servers[2].uri(),
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // An instance id that exists, but not for this key: registered on a
    // second server. (Two accounts of one server: see alibaba.rs.)
    let other = Stowage::start_with(&work.path().join("other"), &["--rate-per-key", "3"]);
    let (slow_ak, slow_sk) = other.credentials();
    let disabled = s.json(&["key", "create", "--description", "disabled"]);
    let disabled_id = disabled["access_key_id"].as_str().unwrap();
    s.ok(&["key", "disable", disabled_id]);
    let other_inst = other.json(&["instance", "add", "--name", "x", "--port", &port]);
    let other_id = other_inst["id"].as_str().unwrap();
    // A key that may only read backup tasks.
    let limited = s.json(&["key", "create", "--description", "tasks only"]);
    let limited_id = limited["access_key_id"].as_str().unwrap();
    let policy = work.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":"rds:DescribeBackupTasks","Resource":"*"}]}"#,
    )
    .unwrap();
    s.ok(&[
        "key",
        "policy",
        limited_id,
        "--file",
        policy.to_str().unwrap(),
    ]);
    run_script(
        &v,
        &s,
        "alibaba_rds.py",
        &[
            ("INSTANCE", &rds),
            ("OTHER", other_id),
            ("LIMITED_AK", limited_id),
            ("LIMITED_SK", limited["access_key_secret"].as_str().unwrap()),
            ("DISABLED_AK", disabled_id),
            ("SLOW_ENDPOINT", other.url.trim_start_matches("http://")),
            ("SLOW_AK", &slow_ak),
            ("SLOW_SK", &slow_sk),
        ],
        "all SDK checks passed",
    );
    run_script(
        &v,
        &s,
        "alibaba_polardb.py",
        &[("CLUSTER", &cluster)],
        "all polardb SDK checks passed",
    );
    run_script(
        &v,
        &s,
        "alibaba_dds.py",
        &[("INSTANCE", &mongo), ("SHARDED", &sharded)],
        "all dds SDK checks passed",
    );
}

/// The rds and polardb SDKs against MariaDB behind `rm-` and `pc-` ids:
/// engine and version, logical backups through the task APIs, the binary
/// log position in DescribeBackups, the dump behind its download link.
#[test]
fn alibaba_sdks_back_up_mariadb() {
    let v = venv();
    let work = tempfile::tempdir().unwrap();
    let m = MariaDbServer::start(MariaDbOptions::default());
    m.sql(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE orders (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB;
         INSERT INTO orders SELECT seq, REPEAT('o', 150) FROM seq_1_to_20000;",
    );
    let s = Stowage::start(&work.path().join("stowage"));
    let port = m.port.to_string();
    let add = |name: &str, dialect: &str| -> String {
        s.json(&[
            "instance",
            "add",
            "--name",
            name,
            "--engine",
            "mysql",
            "--port",
            &port,
            "--dialect",
            dialect,
            "--max-rate-kbps",
            "4096",
        ])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (rds, cluster) = (add("maria", "rds"), add("maria-pc", "polardb"));
    run_script(
        &v,
        &s,
        "alibaba_mysql.py",
        &[("INSTANCE", &rds), ("CLUSTER", &cluster)],
        "all mysql SDK checks passed",
    );
}

/// Tencent Cloud's official SDK (TC3 POST and GET, legacy HmacSHA1/256)
/// against a real server with a replica set and a sharded cluster.
#[test]
fn tencent_sdk_speaks_to_a_real_server() {
    let v = venv();
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    let servers: Vec<MongoServer> = ["tc-rs", "tc-sh0", "tc-sh1", "tc-cfg"]
        .iter()
        .map(|n| {
            MongoServer::start(MongoOptions {
                replica_set: n.to_string(),
                ..Default::default()
            })
        })
        .collect();
    for m in &servers[..3] {
        m.pymongo("client.shop.a.insert_many([{'_id': i, 'pad': 'x' * 200} for i in range(300)])");
    }
    let add = |args: &[&str]| -> String {
        let mut a = vec![
            "instance",
            "add",
            "--engine",
            "mongodb",
            "--dialect",
            "tencent_mongo",
        ];
        a.extend_from_slice(args);
        s.json(&a)["id"].as_str().unwrap().to_string()
    };
    let rs = add(&["--name", "rs", "--uri", &servers[0].uri()]);
    let sharded = add(&[
        "--name",
        "cluster",
        "--shard",
        &servers[1].uri(),
        "--shard",
        &servers[2].uri(),
        "--config",
        &servers[3].uri(),
    ]);
    assert!(
        rs.starts_with("cmgo-") && sharded.starts_with("cmgo-"),
        "{rs} {sharded}"
    );
    // A dds instance of the same account is not Tencent's.
    s.json(&[
        "instance",
        "add",
        "--name",
        "dds",
        "--engine",
        "mongodb",
        "--uri",
        &servers[0].uri(),
    ]);
    // A key limited by a policy in this cloud's names: it may list the
    // instances and read the replica set's backups, nothing else.
    let limited = s.json(&["key", "create", "--description", "tencent read-only"]);
    let limited_id = limited["access_key_id"].as_str().unwrap();
    let policy = work.path().join("tc-policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"Version":"1","Statement":[{{"Effect":"Allow","Action":"mongodb:DescribeDBInstances","Resource":"*"}},{{"Effect":"Allow","Action":"mongodb:DescribeDBBackups","Resource":"qcs::mongodb:*:uin/*:instance/{rs}"}}]}}"#
        ),
    )
    .unwrap();
    s.ok(&[
        "key",
        "policy",
        limited_id,
        "--file",
        policy.to_str().unwrap(),
    ]);
    // More keys of the account, so the filter combinations are not held
    // back by the 20 requests/s per key of DescribeBackupDownloadTask.
    let extra: Vec<String> = (0..3)
        .map(|i| {
            let k = s.json(&[
                "key",
                "create",
                "--description",
                &format!("tencent extra {i}"),
            ]);
            format!(
                "{}:{}",
                k["access_key_id"].as_str().unwrap(),
                k["access_key_secret"].as_str().unwrap()
            )
        })
        .collect();
    let extra = extra.join(",");
    let data_dir = work.path().join("stowage");
    run_script(
        &v,
        &s,
        "tencent_mongodb.py",
        &[
            ("EXTRA_KEYS", &extra),
            ("DATA_DIR", data_dir.to_str().unwrap()),
            ("RS", &rs),
            ("SHARDED", &sharded),
            ("LIMITED_AK", limited_id),
            ("LIMITED_SK", limited["access_key_secret"].as_str().unwrap()),
        ],
        "all tencent SDK checks passed",
    );

    // tccli, pointed at the server with the scheme in the endpoint (it
    // then sends and signs `Host: http://127.0.0.1:PORT`): a listing, a
    // backup's status, and an error through its exit status.
    let (ak, sk) = s.credentials();
    let home = tempfile::tempdir().unwrap();
    let tccli = |args: &[&str]| {
        Command::new(v.join("bin/tccli"))
            .arg("mongodb")
            .args(args)
            .args(["--endpoint", &s.url])
            .env("HOME", home.path())
            .env("TENCENTCLOUD_SECRET_ID", &ak)
            .env("TENCENTCLOUD_SECRET_KEY", &sk)
            .env("TENCENTCLOUD_REGION", "ap-guangzhou")
            .output()
            .unwrap()
    };
    let o = tccli(&["DescribeDBInstances", "--ClusterType", "1"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["TotalCount"], 1, "{v}");
    assert_eq!(
        v["InstanceDetails"][0]["InstanceId"],
        sharded.as_str(),
        "{v}"
    );
    let o = tccli(&["DescribeDBBackups", "--InstanceId", &rs, "--Limit", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tccli(&["DescribeDBBackups", "--InstanceId", "cmgo-nosuch00"]);
    assert_eq!(o.status.code(), Some(255));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("code:InvalidParameterValue.NotFoundInstance") && err.contains("requestId:"),
        "{err}"
    );
}
