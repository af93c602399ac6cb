//! The physical method: `mariadb-backup --backup --stream=xbstream`, run by
//! Stowage on the database's machine, its stream taken apart into the
//! server's files as it arrives (each file its own entry of the set, so
//! unchanged files and pages deduplicate across backups), and a restore
//! that lays the files out in a folder and runs `mariadb-backup --prepare`
//! there: the folder is then a data directory `mariadbd --datadir` starts
//! on.
//!
//! It fits servers whose data directory is on the machine Stowage runs on
//! (`mariadb-backup` reads the files; the server only takes its locks),
//! large data (no SQL parsing either way; the restore is a copy), and
//! restores of the whole server. The logical method fits everything else:
//! remote servers, restores into a running server, renamed databases, a
//! dump any MySQL reads.

use super::xbstream::{Chunk, XbError, next_chunk};
use super::{Facts, Flavor, Session, check_server, err, runtime};
use crate::{BackupOutcome, ConnSpec, EngineError, ErrorKind, RateLimit};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use stowage_core::{ConsistentPoint, LiveTask, TaskState};
use stowage_repo::{ArchiveWriter, BackupWriter};

/// The archive (part) of a physical set: the server's data directory.
pub const ARCHIVE: &str = "data";

/// The tool, as Debian's `mariadb-backup` package installs it.
pub fn tool() -> String {
    std::env::var("STOWAGE_MARIADB_BACKUP").unwrap_or_else(|_| "mariadb-backup".into())
}

impl From<XbError> for EngineError {
    fn from(e: XbError) -> Self {
        EngineError::new(ErrorKind::Protocol, e.to_string())
    }
}

/// The options file the tool reads instead of any other (`--defaults-file`
/// must come first): the credentials never appear in a process listing.
struct OptionsFile {
    dir: tempfile::TempDir,
}

impl OptionsFile {
    fn new(conn: &ConnSpec) -> Result<OptionsFile, EngineError> {
        let ca = conn
            .tls_root_cert
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        let fields = [
            ("user", Some(conn.user.as_str())),
            ("password", conn.password.as_ref().map(|p| p.expose())),
            ("host", Some(conn.host.as_str())),
            ("CA file name", ca.as_deref()),
        ];
        for (name, v) in fields {
            let Some(v) = v else { continue };
            // A line break would end the value and start another option;
            // the tool reads its options file in lines of at most 4 KiB.
            if v.contains(['\n', '\r', '\0']) || v.len() > 1024 {
                return Err(err(
                    ErrorKind::Unsupported,
                    format!(
                        "the physical method cannot pass a {name} with a line break, or longer than 1024 bytes, to mariadb-backup"
                    ),
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("stowage-mariadb-backup-")
            .tempdir()
            .map_err(|e| err(ErrorKind::Filesystem, format!("a temporary folder: {e}")))?;
        // Verifying the certificate, the tool connects by name (resolving
        // it itself): the name must lead to this machine, as the checked
        // address does.
        if conn.tls_mode.verifies() && !conn.addrs.is_empty() {
            use std::net::ToSocketAddrs;
            let here = (conn.host.as_str(), conn.port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>())
                .unwrap_or_default();
            if here.is_empty() || !here.iter().all(|a| a.ip().is_loopback()) {
                return Err(err(
                    ErrorKind::Unsupported,
                    format!(
                        "the physical method verifies the certificate of {} by name, and that name does not lead to this machine's loopback address only",
                        conn.host
                    ),
                ));
            }
        }
        let body = options_body(conn);
        let path = dir.path().join("my.cnf");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err(ErrorKind::Filesystem, format!("{}: {e}", path.display())))?;
        f.write_all(body.as_bytes())
            .map_err(|e| err(ErrorKind::Filesystem, format!("{}: {e}", path.display())))?;
        Ok(OptionsFile { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("my.cnf")
    }
}

/// The `[mariadb-backup]` options: the server, the credentials and the
/// instance's TLS mode as the MariaDB client names it. `prefer` is the
/// client's own default (TLS when the server offers it); `require`
/// encrypts without checking the certificate; `verify-ca` and
/// `verify-full` both check the chain and the host name (the client has
/// no chain-only check) against the instance's CA file, or the system's
/// roots when it says `system`, and connect by the instance's host name,
/// which the certificate names (the address Stowage resolved is used
/// otherwise).
fn options_body(conn: &ConnSpec) -> String {
    use crate::tls::TlsMode;
    let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    let host = match (conn.tls_mode, conn.addrs.first()) {
        (TlsMode::VerifyCa | TlsMode::VerifyFull, _) | (_, None) => conn.host.clone(),
        (_, Some(a)) => a.ip().to_string(),
    };
    // TCP always: the client takes `localhost` for its unix socket.
    let mut body = String::from("[mariadb-backup]\nprotocol=TCP\n");
    body.push_str(&format!(
        "host={}\nport={}\nuser={}\n",
        quote(&host),
        conn.port,
        quote(&conn.user)
    ));
    if let Some(p) = &conn.password {
        body.push_str(&format!("password={}\n", quote(p.expose())));
    }
    match conn.tls_mode {
        TlsMode::Disable => body.push_str("skip-ssl\n"),
        // Newer clients verify by default: these modes do not.
        TlsMode::Prefer => body.push_str("skip-ssl-verify-server-cert\n"),
        TlsMode::Require => body.push_str("ssl\nskip-ssl-verify-server-cert\n"),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            body.push_str("ssl\nssl-verify-server-cert\n");
            if let Some(ca) = conn
                .tls_root_cert
                .as_ref()
                .filter(|p| p.as_path() != std::path::Path::new(crate::tls::SYSTEM_ROOTS))
            {
                body.push_str(&format!("ssl-ca={}\n", quote(&ca.to_string_lossy())));
            }
        }
    }
    body
}

/// The binary log position `mariadb-backup` recorded
/// (`xtrabackup_binlog_info` / `mariadb_backup_binlog_info`: file,
/// position, GTID set, tab-separated).
pub fn parse_binlog_info(text: &str, server_id: u64) -> ConsistentPoint {
    let mut f = text.split_whitespace();
    let file = f.next().map(str::to_string);
    let pos = f.next().and_then(|p| p.parse().ok());
    let gtid = f.next().map(str::to_string).filter(|g| !g.is_empty());
    ConsistentPoint::Binlog {
        server_id,
        binlog_file: file.filter(|_| pos.is_some()),
        binlog_position: pos,
        gtid_set: gtid,
    }
}

/// Sum of the regular files' sizes under `dir` (the progress estimate).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// The last lines of what the tool said, for an error message.
fn tail(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// Backs up the server's data directory with `mariadb-backup`.
pub fn backup(
    conn: &ConnSpec,
    max_rate_kbps: Option<u32>,
    threads: usize,
    writer: &mut BackupWriter,
    live: &LiveTask,
) -> Result<BackupOutcome, EngineError> {
    live.set_state(TaskState::Checking);
    let rt = runtime()?;
    let mut c = Session::connect(&rt, conn)?;
    let f: Facts = check_server(&mut c, &conn.user)?;
    if f.flavor != Flavor::MariaDb {
        return Err(err(
            ErrorKind::Unsupported,
            "the physical method runs mariadb-backup, which backs up MariaDB; for MySQL use the logical method",
        ));
    }
    if !super::own_privileges(&mut c)?.contains("PROCESS") {
        return Err(err(
            ErrorKind::Permission,
            format!(
                "the user {:?} lacks the global privilege PROCESS, which mariadb-backup needs; grant it with: GRANT PROCESS ON *.* TO '{}'@'<host>'",
                conn.user, conn.user
            ),
        ));
    }
    let datadir = c.value("SELECT @@datadir")?.unwrap_or_default();
    let server_host = c.value("SELECT @@hostname")?.unwrap_or_default();
    c.close();
    // The files are read where the server says they are, on this machine:
    // the server must be this machine's (a loopback address, and its host
    // name this machine's), never a remote one whose data directory happens
    // to have the same path as a local server's.
    let loopback = if conn.addrs.is_empty() {
        conn.host == "localhost"
            || conn
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    } else {
        conn.addrs.iter().all(|a| a.ip().is_loopback())
    };
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if !loopback || (!here.is_empty() && server_host != here) {
        return Err(err(
            ErrorKind::Unsupported,
            format!(
                "the physical method reads the server's files on the machine Stowage runs on: the instance must be reached on a loopback address ({}:{}) and be this machine's server (it calls itself {server_host:?}, this machine is {here:?}); use the logical method for a server elsewhere",
                conn.host, conn.port
            ),
        ));
    }
    let datadir = PathBuf::from(datadir.trim_end_matches('/'));
    if !datadir.join("ibdata1").is_file() && !datadir.join("mysql").is_dir() {
        return Err(err(
            ErrorKind::Unsupported,
            format!(
                "the physical method reads the server's data directory ({}) on the machine Stowage runs on, and it is not here; use the logical method for a server on another machine",
                datadir.display()
            ),
        ));
    }
    live.set_state(TaskState::Preparing);
    live.bytes_total
        .store(dir_size(&datadir), Ordering::Relaxed);
    let opts = OptionsFile::new(conn)?;
    let target = opts.dir.path().join("target");
    let mut child = Command::new(tool())
        .arg(format!("--defaults-file={}", opts.path().display()))
        .args(["--backup", "--stream=xbstream"])
        .arg(format!("--target-dir={}", target.display()))
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--parallel={}", threads.clamp(1, 16)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            err(
                ErrorKind::Unsupported,
                format!("running {}: {e} (apt-get install mariadb-backup)", tool()),
            )
        })?;
    // What the tool says, read on a thread of its own (bounded).
    let mut stderr = child.stderr.take().expect("piped");
    let said = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 1 << 20 {
                buf.drain(..buf.len() - (1 << 19));
            }
        }
        buf
    });
    let mut out = std::io::BufReader::with_capacity(1 << 20, child.stdout.take().expect("piped"));
    live.set_state(TaskState::Running);
    let limit = RateLimit::new(max_rate_kbps);
    let result = read_stream(&mut out, writer, live, &limit);
    if result.is_err() {
        let _ = child.kill();
    }
    drop(out);
    let status = child
        .wait()
        .map_err(|e| err(ErrorKind::Protocol, format!("waiting for {}: {e}", tool())))?;
    let said = said.join().unwrap_or_default();
    let (writers, binlog_info, files) = match result {
        Ok(r) => r,
        Err(e) if e.kind == ErrorKind::Cancelled => return Err(e),
        Err(e) if !status.success() => {
            return Err(err(
                ErrorKind::Protocol,
                format!("{} failed: {} ({})", tool(), tail(&said), e.message),
            ));
        }
        Err(e) => return Err(e),
    };
    if !status.success() {
        let text = tail(&said);
        let kind = if text.contains("Access denied") {
            ErrorKind::Authentication
        } else if text.contains("connect") {
            ErrorKind::ServerGone
        } else {
            ErrorKind::Protocol
        };
        return Err(err(kind, format!("{} failed: {text}", tool())));
    }
    for w in writers {
        writer.add_archive(w)?;
    }
    let point = binlog_info
        .map(|t| parse_binlog_info(&t, f.server_id))
        .unwrap_or(ConsistentPoint::Binlog {
            server_id: f.server_id,
            binlog_file: None,
            binlog_position: None,
            gtid_set: None,
        });
    Ok(BackupOutcome {
        consistent_point: point,
        engine_version: f.version(),
        meta: serde_json::json!({
            "flavor": f.flavor,
            "server_version": f.version_string,
            "method": "physical",
            "tool": tool(),
            "datadir": datadir,
            "files": files,
        }),
    })
}

type Streamed = (Vec<ArchiveWriter>, Option<String>, u64);

/// Takes the stream apart into files: one archive writer per file being
/// written (several at once with `--parallel`), returned to a pool when
/// the file ends.
fn read_stream(
    r: &mut impl Read,
    writer: &BackupWriter,
    live: &LiveTask,
    limit: &RateLimit,
) -> Result<Streamed, EngineError> {
    let mut open: HashMap<String, (ArchiveWriter, u64)> = HashMap::new();
    let mut pool: Vec<ArchiveWriter> = Vec::new();
    let mut binlog_info: Option<Vec<u8>> = None;
    let mut files = 0u64;
    while let Some(chunk) = next_chunk(r)? {
        match chunk {
            Chunk::Payload { path, offset, data } => {
                check_path(&path)?;
                if !open.contains_key(&path) {
                    let mut w = pool
                        .pop()
                        .unwrap_or_else(|| writer.archive_writer(ARCHIVE, None));
                    w.begin_file(crate::new_file(path.clone()))?;
                    open.insert(path.clone(), (w, 0));
                }
                let (w, len) = open.get_mut(&path).expect("opened");
                if offset != *len {
                    return Err(err(
                        ErrorKind::Protocol,
                        format!("xbstream: {path} continues at offset {offset}, not {len}"),
                    ));
                }
                w.write(&data)?;
                *len += data.len() as u64;
                if path.ends_with("binlog_info") {
                    binlog_info
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(&data);
                }
                live.bytes_done
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                limit.consume(data.len() as u64, live);
                if live.is_cancelled() {
                    return Err(err(ErrorKind::Cancelled, "cancelled"));
                }
            }
            Chunk::End { path } => {
                let (mut w, _) = match open.remove(&path) {
                    Some(x) => x,
                    None => {
                        // An empty file: no payload came.
                        check_path(&path)?;
                        let mut w = pool
                            .pop()
                            .unwrap_or_else(|| writer.archive_writer(ARCHIVE, None));
                        w.begin_file(crate::new_file(path.clone()))?;
                        (w, 0)
                    }
                };
                w.end_file()?;
                files += 1;
                pool.push(w);
            }
        }
    }
    if let Some(p) = open.keys().next() {
        return Err(err(
            ErrorKind::Protocol,
            format!("xbstream: the stream ended with {p} unfinished"),
        ));
    }
    Ok((
        pool,
        binlog_info.map(|b| String::from_utf8_lossy(&b).into_owned()),
        files,
    ))
}

/// A path the stream may name: relative, no `..`, no empty component.
fn check_path(p: &str) -> Result<(), EngineError> {
    if p.starts_with('/') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(err(
            ErrorKind::Protocol,
            format!("xbstream: refused path {p:?}"),
        ));
    }
    Ok(())
}

/// Makes a restored folder a data directory: `mariadb-backup --prepare`
/// (applies the redo log copied with the files).
pub fn prepare(target: &Path) -> Result<(), EngineError> {
    let out = Command::new(tool())
        .arg("--prepare")
        .arg(format!("--target-dir={}", target.display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            err(
                ErrorKind::Unsupported,
                format!(
                    "running {} --prepare: {e} (apt-get install mariadb-backup)",
                    tool()
                ),
            )
        })?;
    if !out.status.success() {
        return Err(err(
            ErrorKind::Filesystem,
            format!("{} --prepare failed: {}", tool(), tail(&out.stderr)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: crate::tls::TlsMode, ca: Option<&str>) -> ConnSpec {
        ConnSpec {
            host: "db.example".into(),
            port: 3306,
            user: "backup".into(),
            password: Some(stowage_core::Secret::new("p\"w")),
            dbname: None,
            connect_timeout: std::time::Duration::from_secs(5),
            tls_mode: mode,
            tls_root_cert: ca.map(PathBuf::from),
            uri: None,
            options: serde_json::Value::Null,
            addrs: vec!["127.0.0.1:3306".parse().unwrap()],
            host_check: None,
        }
    }

    #[test]
    fn the_options_file_carries_the_instances_tls_mode() {
        use crate::tls::TlsMode;
        let b = options_body(&spec(TlsMode::Disable, None));
        assert_eq!(
            b,
            "[mariadb-backup]\nprotocol=TCP\nhost=\"127.0.0.1\"\nport=3306\nuser=\"backup\"\npassword=\"p\\\"w\"\nskip-ssl\n"
        );
        let b = options_body(&spec(TlsMode::Prefer, None));
        assert!(
            b.ends_with("\"p\\\"w\"\nskip-ssl-verify-server-cert\n"),
            "{b}"
        );
        let b = options_body(&spec(TlsMode::Require, Some("/ca.pem")));
        assert!(
            b.ends_with("\nssl\nskip-ssl-verify-server-cert\n") && b.contains("127.0.0.1"),
            "{b}"
        );
        for m in [TlsMode::VerifyCa, TlsMode::VerifyFull] {
            let b = options_body(&spec(m, Some("/etc/x/ca.pem")));
            assert!(
                b.contains("host=\"db.example\"")
                    && b.ends_with("ssl\nssl-verify-server-cert\nssl-ca=\"/etc/x/ca.pem\"\n"),
                "{b}"
            );
            let b = options_body(&spec(m, Some(crate::tls::SYSTEM_ROOTS)));
            assert!(b.ends_with("ssl-verify-server-cert\n"), "{b}");
        }
    }

    #[test]
    fn binlog_info_is_read() {
        assert_eq!(
            parse_binlog_info("binlog.000002\t12345\t0-1-77\n", 3),
            ConsistentPoint::Binlog {
                server_id: 3,
                binlog_file: Some("binlog.000002".into()),
                binlog_position: Some(12345),
                gtid_set: Some("0-1-77".into()),
            }
        );
        assert!(matches!(
            parse_binlog_info("", 1),
            ConsistentPoint::Binlog {
                binlog_file: None,
                binlog_position: None,
                ..
            }
        ));
    }

    #[test]
    fn stream_paths_are_checked() {
        assert!(check_path("ibdata1").is_ok());
        assert!(check_path("shop/t.ibd").is_ok());
        for bad in ["/etc/passwd", "../x", "a//b", "a/./b", "a/.."] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
