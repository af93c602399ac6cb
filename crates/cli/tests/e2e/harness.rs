//! A real `stowage serve` process on a free port in a temp data dir.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use stowage_testkit::free_port;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stowage")
}

pub struct Stowage {
    pub data_dir: PathBuf,
    pub url: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Stowage {
    pub fn start(data_dir: &Path) -> Stowage {
        Self::start_with(data_dir, &[])
    }

    /// Starts with extra `serve` arguments, scheduler off: the default
    /// policy (daily 02:00Z-03:00Z) must not start backups in other tests.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Stowage {
        let mut a = vec!["--no-scheduler"];
        a.extend_from_slice(extra);
        Self::spawn(data_dir, &a)
    }

    /// Starts with the scheduler on (and extra `serve` arguments).
    pub fn start_scheduled(data_dir: &Path, extra: &[&str]) -> Stowage {
        Self::spawn(data_dir, extra)
    }

    /// Starts with exactly these `serve` arguments (no test defaults).
    pub fn start_plain(data_dir: &Path, extra: &[&str]) -> Stowage {
        Self::spawn_with_log(data_dir, extra, "debug")
    }

    /// Tests restore into folders beside the data dir: the data dir's
    /// parent is a restore root unless the test names its own.
    fn spawn(data_dir: &Path, extra: &[&str]) -> Stowage {
        let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.contains(&"--restore-root") {
            a.push("--restore-root".into());
            a.push(data_dir.parent().unwrap().display().to_string());
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        // Secret-leak checks read this log: at debug, where most is said.
        Self::spawn_with_log(data_dir, &a, "debug")
    }

    /// Starts with extra `serve` arguments and environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Stowage {
        let mut a = vec!["--no-scheduler", "--restore-root"];
        let root = data_dir.parent().unwrap().display().to_string();
        a.push(&root);
        a.extend_from_slice(extra);
        Self::spawn_full(data_dir, &a, "debug", env)
    }

    pub fn spawn_with_log(data_dir: &Path, extra: &[&str], log_level: &str) -> Stowage {
        Self::spawn_full(data_dir, extra, log_level, &[])
    }

    fn spawn_full(
        data_dir: &Path,
        extra: &[&str],
        log_level: &str,
        env: &[(&str, &str)],
    ) -> Stowage {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.join(format!("serve-{port}.log"));
        let child = Command::new(bin())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("STOWAGE_INSECURE_FAST_KDF", "1")
            .env("RUST_LOG", log_level)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start stowage serve");
        let s = Stowage {
            data_dir: data_dir.to_path_buf(),
            url,
            child: Some(child),
            log,
        };
        let t = Instant::now();
        while ureq::get(&format!("{}/v1/health", s.url)).call().is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "stowage did not start: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// PID of the server process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stowage_testkit::signal(c.id(), "TERM");
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!(
                "stowage did not stop within 60 s of SIGTERM: {}",
                self.log()
            );
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Runs a CLI command against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("STOWAGE_SERVER", &self.url)
            .env("STOWAGE_DATA_DIR", &self.data_dir)
            .env_remove("STOWAGE_ACCESS_KEY_ID")
            .env_remove("STOWAGE_ACCESS_KEY_SECRET")
            .output()
            .unwrap()
    }

    /// Creates account `name` and a key for it: (key id, secret).
    pub fn new_account_key(&self, name: &str) -> (String, String) {
        self.ok(&["account", "add", name]);
        let k = self.json(&["key", "create", "--account", name]);
        (
            k["access_key_id"].as_str().unwrap().to_string(),
            k["access_key_secret"].as_str().unwrap().to_string(),
        )
    }

    /// Runs a CLI command with the given key instead of the admin key.
    pub fn cli_as(&self, id: &str, secret: &str, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("STOWAGE_SERVER", &self.url)
            .env("STOWAGE_DATA_DIR", &self.data_dir)
            .env("STOWAGE_ACCESS_KEY_ID", id)
            .env("STOWAGE_ACCESS_KEY_SECRET", secret)
            .output()
            .unwrap()
    }

    /// Runs a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "stowage {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    pub fn credentials(&self) -> (String, String) {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(self.data_dir.join("admin-credentials")).unwrap(),
        )
        .unwrap();
        (
            v["access_key_id"].as_str().unwrap().into(),
            v["access_key_secret"].as_str().unwrap().into(),
        )
    }

    /// A raw HTTP call with the admin key; returns (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (id, secret) = self.credentials();
        self.http_as(&id, &secret, method, path, body)
    }

    /// A raw HTTP call with the given key.
    pub fn http_as(
        &self,
        id: &str,
        secret: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{}", self.url, path);
        let auth = format!("Bearer {id}:{secret}");
        let resp = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            ("PATCH", Some(b)) => agent
                .patch(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.as_bytes()),
            (_, Some(b)) => agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.as_bytes()),
            (_, None) => agent.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut resp = resp.unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Polls a task until `pred` holds.
    pub fn wait_task(&self, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let v = self.json(&["task", "show", &id.to_string()]);
            if pred(&v) {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "timed out waiting for task {id} to be {what}: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stowage {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stowage_testkit::signal(c.id(), "TERM");
            let mut c = c;
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command that must end with exit `code`, saying `needle` on stderr.
pub fn assert_fails(o: &Output, code: i32, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{e}");
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
}
