//! What the API benchmarks (`rpc_bench`, `download_bench`) share: a release
//! `stowage serve` on a fresh data directory, its admin key, REST calls,
//! percentiles and a small random number generator.

#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// A REST call with a bearer key; panics unless it succeeds.
pub fn rest(url: &str, auth: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let a = agent();
    let full = format!("{url}{path}");
    let mut r = match (method, body) {
        ("POST", Some(b)) => a
            .post(&full)
            .header("Authorization", auth)
            .send_json(&b)
            .unwrap(),
        ("POST", None) => a
            .post(&full)
            .header("Authorization", auth)
            .send_empty()
            .unwrap(),
        _ => a.get(&full).header("Authorization", auth).call().unwrap(),
    };
    let text = r.body_mut().read_to_string().unwrap();
    assert!(r.status().is_success(), "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// xorshift: enough randomness to pick instances and tasks.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The `p` percentile of sorted latencies, in ms.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// A running server and how to reach it as admin.
pub struct Server {
    pub child: Child,
    pub host: String,
    pub url: String,
    pub ak: String,
    pub sk: String,
    pub auth: String,
}

/// Starts the release `stowage` next to this example on `dd` (created),
/// its log in `log`, and waits until it answers.
pub fn start_server(dd: &Path, log: &Path) -> Server {
    start_server_with(dd, log, &[])
}

/// [`start_server`] with more `serve` arguments (a shared catalog …). A
/// node joining others finds the admin key in `dd/admin-credentials`,
/// copied there beforehand.
pub fn start_server_with(dd: &Path, log: &Path, extra: &[String]) -> Server {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("stowage");
    assert!(bin.exists(), "build the server first: {}", bin.display());
    std::fs::create_dir_all(dd).unwrap();
    let port = stowage_testkit::free_port();
    let host = format!("127.0.0.1:{port}");
    let url = format!("http://{host}");
    let child = Command::new(&bin)
        .args(["serve", "--listen", &host, "--no-scheduler"])
        .args(["--rate-per-key", "100000000", "--data-dir"])
        .arg(dd)
        .args(extra)
        .env("STOWAGE_INSECURE_FAST_KDF", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while agent().get(&format!("{url}/v1/health")).call().is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(dd.join("admin-credentials")).unwrap())
            .unwrap();
    let ak = creds["access_key_id"].as_str().unwrap().to_string();
    let sk = creds["access_key_secret"].as_str().unwrap().to_string();
    Server {
        child,
        auth: format!("Bearer {ak}:{sk}"),
        host,
        url,
        ak,
        sk,
    }
}
