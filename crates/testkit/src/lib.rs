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

mod mariadb;
pub use mariadb::{MariaDbOptions, MariaDbServer};
mod s3;
pub use s3::{S3Server, seaweed_venv};

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
        if let Some(c) = self.child.take() {
            stop_child(c, "INT");
        }
    }
}

/// Sends `sig` to a process we started, waits up to 30 s for it to exit,
/// then kills it.
pub fn stop_child(mut c: Child, sig: &str) {
    signal(c.id(), sig);
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

// ---- MongoDB: SecantusDB ----

/// The modules named in `# import:` comments of a requirements file.
pub fn required_modules(req: &str) -> Vec<String> {
    req.lines()
        .filter_map(|l| l.split_once("# import:"))
        .flat_map(|(_, m)| m.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The programs a requirements file's `# bin:` comments name (installed
/// into the venv's `bin/` by a wheel that ships a binary).
pub fn required_bins(req: &str) -> Vec<String> {
    req.lines()
        .filter_map(|l| l.split_once("# bin:"))
        .flat_map(|(_, m)| m.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Whether the venv has every module and program a requirements file names.
fn venv_ready(venv: &Path, mods: &[String], bins: &[String]) -> bool {
    (mods.is_empty() || venv_imports(venv, mods))
        && bins.iter().all(|b| venv.join("bin").join(b).is_file())
}

/// Whether the venv's python imports every module.
pub fn venv_imports(venv: &Path, mods: &[String]) -> bool {
    Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(format!("import {}", mods.join(", ")))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python virtual environment built from a pinned requirements file:
/// rebuilt when the file changes (a copy is kept in the venv), checked by
/// importing every module its `# import:` comments name and finding every
/// program its `# bin:` comments name.
pub fn pinned_venv(venv: &Path, req_file: &Path) -> PathBuf {
    let req =
        std::fs::read_to_string(req_file).unwrap_or_else(|e| panic!("{}: {e}", req_file.display()));
    let mods = required_modules(&req);
    let bins = required_bins(&req);
    assert!(
        !mods.is_empty() || !bins.is_empty(),
        "{} names no modules to import and no programs",
        req_file.display()
    );
    let stamp = venv.join("stowage-requirements.txt");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == req) && venv_ready(venv, &mods, &bins) {
        return venv.to_path_buf();
    }
    eprintln!(
        "building the venv {} from {}",
        venv.display(),
        req_file.display()
    );
    let _ = std::fs::remove_file(&stamp);
    let st = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv)
        .status()
        .expect("python3");
    assert!(st.success(), "python3 -m venv failed");
    let st = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", "-r"])
        .arg(req_file)
        .status()
        .expect("pip");
    assert!(st.success(), "pip install -r {} failed", req_file.display());
    assert!(
        venv_ready(venv, &mods, &bins),
        "the venv does not import {mods:?} or lacks {bins:?}"
    );
    std::fs::write(&stamp, &req).unwrap();
    venv.to_path_buf()
}

/// The SecantusDB virtual environment (`STOWAGE_MONGO_VENV`, default
/// A file of this repository, found at run time. Never `env!("CARGO_MANIFEST_DIR")`:
/// checkouts that share one `CARGO_TARGET_DIR` share compiled test
/// binaries, and a path baked into one may name another checkout (since
/// removed). Cargo sets `CARGO_MANIFEST_DIR` for the test process; the
/// repository root is the folder above it that holds `Cargo.lock`.
pub fn repo_file(rel: &str) -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .expect("a working directory");
    let root = start
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .unwrap_or_else(|| panic!("no Cargo.lock above {}", start.display()));
    root.join(rel)
}

/// /var/tmp/stowage-mongo-venv), from `mongo/requirements.txt`.
pub fn mongo_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let v = PathBuf::from(
            std::env::var("STOWAGE_MONGO_VENV")
                .unwrap_or_else(|_| "/var/tmp/stowage-mongo-venv".into()),
        );
        pinned_venv(&v, &repo_file("crates/testkit/mongo/requirements.txt"))
    })
    .clone()
}

/// Options of a test MongoDB server.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// Replica-set name (`hello.setName`). The Rust server's is always
    /// `secantus`.
    pub replica_set: String,
    /// Oplog entries kept before the oldest are pruned (server default
    /// 100000). Only the Rust server prunes; the Python one never does.
    pub oplog_max_entries: Option<u64>,
    /// The Rust server (`secantusd-rs`, ~30× faster, prunes its oplog),
    /// built once by `scripts/secantus-rs.sh`; default: the Python server.
    pub rust: bool,
    /// Rust server only: require SCRAM-SHA-256 authentication. Users are
    /// created through [`MongoServer::pymongo`] (localhost exception).
    pub auth: bool,
}

impl MongoOptions {
    /// The Rust server (replica set `secantus`).
    pub fn rust() -> MongoOptions {
        MongoOptions {
            replica_set: "secantus".into(),
            rust: true,
            ..Default::default()
        }
    }
}

/// The Rust SecantusDB binary: `STOWAGE_SECANTUS_RS`, else what
/// `scripts/secantus-rs.sh` prints (it builds the server once, ~10–25 min,
/// and caches it under /var/tmp; `.ci/run` runs it before the tests).
pub fn secantus_rs() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("STOWAGE_SECANTUS_RS") {
            return PathBuf::from(p);
        }
        let out = Command::new("bash")
            .arg(repo_file("scripts/secantus-rs.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/secantus-rs.sh");
        assert!(out.status.success(), "scripts/secantus-rs.sh failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            replica_set: "rs0".into(),
            oplog_max_entries: None,
            rust: false,
            auth: false,
        }
    }
}

/// A SecantusDB server (MongoDB wire protocol, a single-node replica set)
/// on a free port in its own temporary folder, stopped by PID when dropped.
pub struct MongoServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub replica_set: String,
    child: Option<Child>,
    /// How the Rust server was started (to restart it); `None`: Python.
    rust: Option<MongoOptions>,
}

impl MongoServer {
    pub fn start(opts: MongoOptions) -> MongoServer {
        let venv = mongo_venv();
        let dir = tempfile::Builder::new()
            .prefix("stowage-mongo-")
            .tempdir()
            .unwrap();
        if opts.rust {
            return Self::start_rust(dir, opts);
        }
        Self::start_in(dir, venv, opts)
    }

    /// The Rust server: it picks its own port (`--port 0`) and says which.
    fn start_rust(dir: tempfile::TempDir, opts: MongoOptions) -> MongoServer {
        assert_eq!(
            opts.replica_set, "secantus",
            "the Rust SecantusDB's replica set is always named secantus"
        );
        let (child, port) = Self::spawn_rust(dir.path(), &opts, 0);
        MongoServer {
            dir,
            port,
            replica_set: opts.replica_set.clone(),
            child: Some(child),
            rust: Some(opts),
        }
    }

    /// Starts the Rust server again on its folder and port (after a stop
    /// or a kill), with its data.
    pub fn restart(&mut self) {
        self.stop();
        let opts = self.rust.clone().expect("restart: the Rust server only");
        let (child, _) = Self::spawn_rust(self.dir.path(), &opts, self.port);
        self.child = Some(child);
    }

    fn spawn_rust(dir: &Path, opts: &MongoOptions, port: u16) -> (Child, u16) {
        use std::io::BufRead;
        let mut cmd = Command::new(secantus_rs());
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
        ])
        .arg(dir.join("db"))
        .args([
            "--cache-size",
            "512M",
            "--log-file-max",
            "16MB",
            "--log-level",
            "WARNING",
            "--config",
        ])
        .arg(dir.join("secantusd.toml"));
        if let Some(n) = opts.oplog_max_entries {
            cmd.args(["--oplog-max-entries", &n.to_string()]);
        }
        if opts.auth {
            cmd.arg("--auth");
        }
        std::fs::write(dir.join("secantusd.toml"), "").unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut child = cmd
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start secantusd-rs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if let Some(addr) = l.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "secantusd-rs did not start: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        };
        (child, port)
    }

    fn start_in(dir: tempfile::TempDir, venv: PathBuf, opts: MongoOptions) -> MongoServer {
        use std::io::BufRead;
        let launcher = repo_file("crates/testkit/mongo/launcher.py");
        for _attempt in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(venv.join("bin/python"));
            cmd.arg(&launcher)
                .arg(port.to_string())
                .arg(dir.path().join("db"))
                .arg(&opts.replica_set);
            if let Some(n) = opts.oplog_max_entries {
                cmd.arg(n.to_string());
            }
            // The server reads ./secantusd.toml: start it in its own folder.
            let mut child = cmd
                .current_dir(dir.path())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
                .spawn()
                .expect("start the SecantusDB launcher");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut lines = std::io::BufReader::new(stdout).lines();
                let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
                let _ = tx.send(first);
                for _ in lines {}
            });
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.starts_with("listening") => {
                    return MongoServer {
                        dir,
                        port,
                        replica_set: opts.replica_set,
                        child: Some(child),
                        rust: None,
                    };
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!(
            "SecantusDB did not start: {}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// A connection string for the replica set.
    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?replicaSet={}",
            self.port, self.replica_set
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs a Python snippet against this server with pymongo (`client` is
    /// connected); returns stdout. For test setup and checks only.
    pub fn pymongo(&self, code: &str) -> String {
        let script = format!(
            "import pymongo, sys\nclient = pymongo.MongoClient({:?}, serverSelectionTimeoutMS=10000)\n{code}\n",
            self.uri()
        );
        let out = Command::new(mongo_venv().join("bin/python"))
            .arg("-c")
            .arg(script)
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "pymongo snippet failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 30 s) and waits.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, "TERM");
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
