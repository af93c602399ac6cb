//! The clouds' official SDKs (PyPI) against a real `stowage serve` with a
//! real PostgreSQL instance. The virtual environment is created on first use
//! (`STOWAGE_SDK_VENV`, default /var/tmp/stowage-sdk-venv) and reused.

use crate::harness::Stowage;
use std::path::PathBuf;
use std::process::Command;
use stowage_testkit::{PgOptions, PgServer};

const PACKAGES: &[&str] = &[
    "alibabacloud-rds20140815",
    "aliyun-python-sdk-core",
    "aliyun-python-sdk-rds",
];

fn venv() -> PathBuf {
    let v = PathBuf::from(
        std::env::var("STOWAGE_SDK_VENV").unwrap_or_else(|_| "/var/tmp/stowage-sdk-venv".into()),
    );
    let py = v.join("bin/python");
    let ready = Command::new(&py)
        .args([
            "-c",
            "import alibabacloud_rds20140815, aliyunsdkcore, aliyunsdkrds",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&v)
            .status()
            .expect("python3");
        assert!(st.success(), "python3 -m venv failed");
        let st = Command::new(v.join("bin/pip"))
            .args(["install", "-q"])
            .args(PACKAGES)
            .status()
            .expect("pip");
        assert!(st.success(), "pip install of the official SDKs failed");
    }
    v
}

#[test]
fn alibaba_rds_sdks_drive_real_backups() {
    let v = venv();
    let work = tempfile::tempdir().unwrap();
    let pg = PgServer::start(PgOptions::default());
    assert!(
        pg.pgbench(&["-i", "-q", "-s", "2", "postgres"])
            .status
            .success()
    );
    let s = Stowage::start(&work.path().join("stowage"));
    let port = pg.port.to_string();
    // Throttled so that the SDKs see the task moving through its states.
    let inst = s.json(&[
        "instance",
        "add",
        "--name",
        "sdk",
        "--port",
        &port,
        "--max-rate-kbps",
        "16384",
    ]);
    // An instance id that exists, but not for this key: registered on a
    // second server. (Isolation between accounts of one server is checked in
    // the catalog contract; account and key management arrive with issue 4.)
    let other_dir = work.path().join("other");
    let other = Stowage::start(&other_dir);
    let other_inst = other.json(&["instance", "add", "--name", "x", "--port", &port]);
    let (ak, sk) = s.credentials();
    let out = Command::new(v.join("bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/compat/alibaba_rds.py"
        ))
        .env("ENDPOINT", s.url.trim_start_matches("http://"))
        .env("AK", ak)
        .env("SK", sk)
        .env("INSTANCE", inst["id"].as_str().unwrap())
        .env("OTHER", other_inst["id"].as_str().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all SDK checks passed"));

    // PolarDB: the same database registered as a cluster (pc- id).
    let cluster = s.json(&[
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
    ]);
    let (ak, sk) = s.credentials();
    let out = Command::new(v.join("bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/compat/alibaba_polardb.py"
        ))
        .env("ENDPOINT", s.url.trim_start_matches("http://"))
        .env("AK", ak)
        .env("SK", sk)
        .env("CLUSTER", cluster["id"].as_str().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "PolarDB SDK checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all polardb SDK checks passed"));

    // ApsaraDB for MongoDB: a dds- instance (of the PostgreSQL engine until
    // the MongoDB engine exists; the state mapping is the real one).
    let mongo = s.json(&[
        "instance",
        "add",
        "--name",
        "mongo",
        "--port",
        &port,
        "--dialect",
        "dds",
        "--max-rate-kbps",
        "16384",
    ]);
    let (ak, sk) = s.credentials();
    let out = Command::new(v.join("bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/compat/alibaba_dds.py"
        ))
        .env("ENDPOINT", s.url.trim_start_matches("http://"))
        .env("AK", ak)
        .env("SK", sk)
        .env("INSTANCE", mongo["id"].as_str().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "dds SDK checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all dds SDK checks passed"));
}
