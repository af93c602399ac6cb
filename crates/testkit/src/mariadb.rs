//! MariaDB 10.11 from Debian (`mariadb-server`), one server per test on a
//! free port in a temp folder (`../shared/spec/test-servers.md` §2): the
//! system tables made once per test process with `mariadb-install-db` and
//! copied for each server (0.1 s instead of 4 s), `--no-defaults` first so
//! the machine's own configuration never applies, binary log with GTIDs on
//! (a backup's consistent point), root without a password on 127.0.0.1.

use crate::{copy_dir, free_port, is_root, signal, stop_child};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct MariaDbOptions {
    /// Extra `mariadbd` options (`--name=value`).
    pub extra: Vec<String>,
    /// Start on a copy of this data directory (a restored backup) instead
    /// of fresh system tables.
    pub data_from: Option<PathBuf>,
}

pub struct MariaDbServer {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// The server binary: in `/usr/sbin`, which a non-root `PATH` may lack.
fn mariadbd() -> PathBuf {
    let sbin = Path::new("/usr/sbin/mariadbd");
    if sbin.exists() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("mariadbd")
    }
}

fn user_args() -> Vec<&'static str> {
    // mariadbd refuses to run as root unless told to.
    if is_root() {
        vec!["--user=root"]
    } else {
        vec![]
    }
}

fn template() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let base =
            std::env::temp_dir().join(format!("stowage-mariadb-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let data = base.join("data");
        let o = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(user_args())
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .output()
            .expect("mariadb-install-db (apt-get install mariadb-server)");
        assert!(
            o.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        data
    })
}

impl MariaDbServer {
    pub fn start(opts: MariaDbOptions) -> MariaDbServer {
        let dir = tempfile::Builder::new()
            .prefix("stowage-mariadb-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        copy_dir(opts.data_from.as_deref().unwrap_or(template()), &data);
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let mut s = MariaDbServer {
            dir,
            data,
            port: 0,
            child: None,
        };
        s.launch(&opts);
        s
    }

    fn launch(&mut self, opts: &MariaDbOptions) {
        self.port = free_port();
        let d = self.dir.path();
        let child = Command::new(mariadbd())
            .arg("--no-defaults")
            .args(user_args())
            .arg(format!("--datadir={}", self.data.display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .args([
                "--skip-name-resolve",
                "--server-id=1",
                "--binlog-format=ROW",
                "--gtid-domain-id=0",
                "--gtid-strict-mode=1",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
                "--innodb-flush-log-at-trx-commit=2",
                "--sync-binlog=0",
                "--performance-schema=OFF",
            ])
            .arg(format!("--log-bin={}", self.data.join("binlog").display()))
            .args(&opts.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd (apt-get install mariadb-server)");
        self.child = Some(child);
        let t = Instant::now();
        loop {
            let ok = Command::new("mariadb-admin")
                .args(["--no-defaults", "--protocol=TCP", "-h127.0.0.1", "-uroot"])
                .arg(format!("-P{}", self.port))
                .arg("ping")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if t.elapsed() > Duration::from_secs(60) {
                panic!("mariadbd did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Runs SQL as root with the `mariadb` client; the rows tab-separated,
    /// without column names.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_as("root", "", sql)
    }

    /// Runs SQL as `user` (with `password`, if any).
    pub fn sql_as(&self, user: &str, password: &str, sql: &str) -> String {
        let mut c = Command::new("mariadb");
        c.args(["--no-defaults", "--protocol=TCP", "-h127.0.0.1", "-N", "-B"])
            .arg(format!("-P{}", self.port))
            .arg(format!("-u{user}"));
        if !password.is_empty() {
            c.arg(format!("-p{password}"));
        }
        let out = c.arg("-e").arg(sql).output().expect("mariadb client");
        assert!(
            out.status.success(),
            "mariadb failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server cleanly and waits for it.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, "TERM");
        }
    }

    /// Kills the server without a shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.stop();
    }
}
