//! Real servers for tests: no mocks.
//!
//! [`PgServer`] runs PostgreSQL 15 from Debian's packages (`initdb` once per
//! test process into a template, then a copy per server), as the `postgres`
//! user when the tests run as root, on a free port on 127.0.0.1, in its own
//! temporary folder. It is stopped by PID when dropped.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a server certificate it signed for `cn` (and 127.0.0.1):
/// `<dir>/<cn>-ca.crt`, `<dir>/<cn>.crt`, `<dir>/<cn>.key` (mode 0600).
/// Returns (CA certificate, server certificate, server key).
pub fn test_ca_and_cert(dir: &Path, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
    let f = |n: &str| dir.join(n).display().to_string();
    let (ca, ca_key) = (f(&format!("{cn}-ca.crt")), f(&format!("{cn}-ca.key")));
    let (crt, key, csr, ext) = (
        f(&format!("{cn}.crt")),
        f(&format!("{cn}.key")),
        f(&format!("{cn}.csr")),
        f(&format!("{cn}.ext")),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={cn} test CA"),
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(
        &ext,
        format!("subjectAltName=DNS:{cn},IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (ca.into(), crt.into(), key.into())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `pg_config --bindir`: where initdb and postgres live on Debian.
pub fn pg_bindir() -> PathBuf {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config (install postgresql)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// True when the tests run as root (then servers run as `postgres`).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// uid/gid of the `postgres` system user (from /etc/passwd).
pub fn postgres_ids() -> Option<(u32, u32)> {
    let pw = std::fs::read_to_string("/etc/passwd").ok()?;
    pw.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// A command that runs as the server user when we are root.
pub fn as_pg_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    if is_root() {
        let (uid, gid) = postgres_ids().expect("the postgres user (apt-get install postgresql)");
        c.uid(uid).gid(gid);
    }
    c
}

pub fn chown_to_pg(p: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids().expect("postgres user");
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
}

fn template() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("stowage-pgtemplate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_to_pg(&base);
        let data = base.join("data");
        let st = as_pg_user(pg_bindir().join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("initdb");
        assert!(st.success(), "initdb failed");
        data
    })
}

#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Replace pg_hba.conf: scram-sha-256 everywhere on 127.0.0.1.
    pub password_auth: bool,
    pub max_wal_senders: u32,
    pub extra: Vec<(String, String)>,
    /// TLS on, with a certificate for localhost/127.0.0.1 signed by a test CA
    /// ([`PgServer::tls_ca`]); TCP connections without TLS are refused.
    pub tls: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            password_auth: false,
            max_wal_senders: 10,
            extra: vec![],
            tls: false,
        }
    }
}

pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

fn copy_dir(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
}

impl PgServer {
    pub fn start(opts: PgOptions) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("stowage-pg-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_to_pg(dir.path());
        let data = dir.path().join("data");
        copy_dir(template(), &data);
        if opts.password_auth {
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
            )
            .unwrap();
        }
        let mut opts = opts;
        if opts.tls {
            let (_, crt, key) = test_ca_and_cert(dir.path(), "localhost");
            chown_to_pg(&crt);
            chown_to_pg(&key);
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
            )
            .unwrap();
            opts.extra.push(("ssl".into(), "on".into()));
            opts.extra
                .push(("ssl_cert_file".into(), crt.display().to_string()));
            opts.extra
                .push(("ssl_key_file".into(), key.display().to_string()));
        }
        Self::start_on(dir, data, opts)
    }

    /// The CA certificate that signed the server's, when started with `tls`.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.path().join("localhost-ca.crt")
    }

    /// Starts a server with default options and pgbench data of `scale`.
    pub fn with_pgbench(scale: u32) -> PgServer {
        let pg = PgServer::start(PgOptions::default());
        let o = pg.pgbench(&["-i", "-q", "-s", &scale.to_string(), "postgres"]);
        assert!(
            o.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        pg
    }

    /// Starts a server on an existing data directory (e.g. a restored one).
    pub fn start_existing(data: &Path, opts: PgOptions) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("stowage-pgrun-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_to_pg(dir.path());
        Self::start_on(dir, data.to_path_buf(), opts)
    }

    fn start_on(dir: tempfile::TempDir, data: PathBuf, opts: PgOptions) -> PgServer {
        let port = free_port();
        let mut cmd = as_pg_user(pg_bindir().join("postgres"));
        cmd.arg("-D").arg(&data);
        let mut set = |k: &str, v: String| {
            cmd.arg("-c").arg(format!("{k}={v}"));
        };
        set("listen_addresses", "127.0.0.1".into());
        set("port", port.to_string());
        set("unix_socket_directories", dir.path().display().to_string());
        set("wal_level", "replica".into());
        set("max_wal_senders", opts.max_wal_senders.to_string());
        set("max_replication_slots", "10".into());
        set("fsync", "off".into());
        set("synchronous_commit", "off".into());
        set("shared_buffers", "64MB".into());
        set("max_wal_size", "1GB".into());
        for (k, v) in &opts.extra {
            set(k, v.clone());
        }
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start postgres");
        let s = PgServer {
            dir,
            data,
            port,
            child: Some(child),
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        loop {
            let ok = Command::new("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if t.elapsed() > Duration::from_secs(60) {
                panic!("postgres did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Runs SQL with psql as the superuser; returns unaligned, tuples-only output.
    /// Over the Unix socket, where `trust` applies even when TCP needs passwords.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        psql_at(&self.dir.path().display().to_string(), self.port, db, sql)
    }

    /// Runs pgbench against this server over its socket.
    pub fn pgbench(&self, args: &[&str]) -> std::process::Output {
        Command::new("pgbench")
            .args([
                "-h",
                &self.dir.path().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .output()
            .expect("pgbench")
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "INT");
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }
}

/// Sends a signal (by name: INT, TERM, KILL) to a process we started.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn psql_at(host: &str, port: u16, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            host,
            "-U",
            "postgres",
            "-p",
            &port.to_string(),
            "-d",
            db,
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql failed: {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies a data directory and gives it to the server user.
pub fn fix_ownership(dir: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids().unwrap();
        let _ = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(dir)
            .status();
    }
}
