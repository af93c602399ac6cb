//! MySQL and MariaDB: a consistent, parallel logical backup spoken natively
//! (`mysql_async` on rustls), and its restore into a running server.
//!
//! * `sql.rs`: the dump's SQL text as pure functions (literals, names,
//!   statement boundaries that keep rows deduplicating across backups).
//! * `dump.rs`: the backup. Workers each hold a transaction with a
//!   consistent snapshot taken at one point of the binary log, and dump
//!   tables in primary-key ranges into one archive (layout in
//!   `docs/repository-format.md`).
//! * `load.rs`: the restore into a server (renamed databases, parallel
//!   loading, views, triggers and routines after the data).
//!
//! The driver is async; engines run on worker threads, so each backup or
//! restore owns a small runtime whose threads drive the sockets while the
//! workers wait on it (`Session`).

pub mod accounts;
pub mod binlog;
pub mod dump;
pub mod export;
pub mod load;
pub mod physical;
pub mod sql;
pub mod xbstream;

use crate::{ConnSpec, EngineError, ErrorKind};
use mysql_async::prelude::Queryable;
use std::sync::Arc;
use std::time::Duration;

/// The archive a logical set's files are in.
pub const ARCHIVE: &str = "dump";

/// The engine behind `--engine mysql` (MySQL 8 and MariaDB 10.5+).
pub struct MysqlLogical;

fn err(kind: ErrorKind, message: impl Into<String>) -> EngineError {
    EngineError::new(kind, message)
}

/// Which server, for the statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    MariaDb,
    MySql,
}

/// What the check step learns.
#[derive(Debug, Clone)]
pub struct Facts {
    pub flavor: Flavor,
    /// `VERSION()` as the server says it ("10.11.19-MariaDB-0+deb12u1").
    pub version_string: String,
    /// major, minor, patch.
    pub version: (u32, u32, u32),
    pub log_bin: bool,
    pub server_id: u64,
}

impl Facts {
    /// "10.11.19" / "8.0.40".
    pub fn version(&self) -> String {
        format!("{}.{}.{}", self.version.0, self.version.1, self.version.2)
    }

    /// The statement that shows the binary log's current file and position
    /// (MySQL 8.4 renamed it).
    pub fn binlog_status_sql(&self) -> &'static str {
        match self.flavor {
            Flavor::MySql if self.version >= (8, 2, 0) => "SHOW BINARY LOG STATUS",
            _ => "SHOW MASTER STATUS",
        }
    }
}

/// Parses `VERSION()`.
pub fn parse_version(v: &str) -> (Flavor, (u32, u32, u32)) {
    let flavor = if v.to_ascii_lowercase().contains("mariadb") {
        Flavor::MariaDb
    } else {
        Flavor::MySql
    };
    // A replication-compatibility prefix ("5.5.5-10.11.6-MariaDB") is not
    // the version.
    let v = v.strip_prefix("5.5.5-").unwrap_or(v);
    let mut nums = v
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let mut n = || nums.next().unwrap_or(0);
    (flavor, (n(), n(), n()))
}

/// What [`Session::stream`] calls for every row: the result's columns and
/// the row's raw values (`None`: NULL).
pub type RowFn<'a> =
    dyn FnMut(&[mysql_async::Column], Vec<Option<Vec<u8>>>) -> Result<(), EngineError> + 'a;

/// One connection and the runtime that drives it, used from a blocking
/// thread. Several sessions may share one runtime.
pub struct Session {
    rt: Arc<tokio::runtime::Runtime>,
    conn: Option<mysql_async::Conn>,
}

/// The runtime a backup's or restore's sessions share: one thread drives
/// every socket; the work (encoding, compression) stays on the workers.
pub fn runtime() -> Result<Arc<tokio::runtime::Runtime>, EngineError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("stowage-mysql-io")
        .enable_io()
        .enable_time()
        .build()
        .map(Arc::new)
        .map_err(|e| {
            err(
                ErrorKind::Filesystem,
                format!("starting the MySQL driver: {e}"),
            )
        })
}

/// The instance's trusted roots (a PEM file, or the system's), as DER: the
/// same roots the other engines verify with.
fn tls_roots(conn: &ConnSpec) -> Result<Vec<Vec<u8>>, EngineError> {
    let Some(p) = &conn.tls_root_cert else {
        return Ok(Vec::new());
    };
    crate::tls::load_roots(p)?;
    Ok(crate::tls::load_root_ders(p)?
        .into_iter()
        .map(|d| d.to_vec())
        .collect())
}

fn opts(conn: &ConnSpec, tls: bool) -> Result<mysql_async::Opts, EngineError> {
    use crate::tls::TlsMode;
    let mut b = mysql_async::OptsBuilder::default()
        .ip_or_hostname(conn.host.clone())
        .tcp_port(conn.port)
        .user(Some(conn.user.clone()))
        .pass(conn.password.as_ref().map(|p| p.expose().to_string()))
        .db_name(None::<String>)
        // Never switch to the server's unix socket behind the operator's
        // back: the address checked is the address used.
        .prefer_socket(false)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(30_000u32))
        .stmt_cache_size(0)
        .max_allowed_packet(Some(1 << 30))
        .wait_timeout(Some(28_800));
    if !conn.addrs.is_empty() {
        b = b.resolved_ips(Some(conn.addrs.iter().map(|a| a.ip()).collect::<Vec<_>>()));
    }
    if tls {
        let mode = conn.tls_mode;
        let roots = tls_roots(conn)?;
        let ssl = mysql_async::SslOpts::default()
            .with_root_certs(roots.into_iter().map(Into::into).collect())
            .with_disable_built_in_roots(true)
            .with_danger_accept_invalid_certs(!mode.verifies())
            .with_danger_skip_domain_validation(mode != TlsMode::VerifyFull);
        b = b.ssl_opts(Some(ssl));
    }
    Ok(b.into())
}

/// Maps a driver error to what went wrong, for people. `connected`: the
/// session was up (a lost connection is then the server gone).
pub fn driver_error(e: mysql_async::Error, connected: bool) -> EngineError {
    use mysql_async::{DriverError, Error as E, IoError};
    match e {
        E::Server(s) => server_error(s.code, &s.message),
        E::Io(IoError::Io(io)) if !connected => err(
            ErrorKind::Unreachable,
            format!("MySQL server unreachable: {io}"),
        ),
        E::Io(IoError::Io(io)) => err(
            ErrorKind::ServerGone,
            format!("the connection to the MySQL server was lost: {io}"),
        ),
        E::Io(IoError::Tls(t)) => err(ErrorKind::Unreachable, format!("TLS: {t}")),
        E::Driver(DriverError::ConnectionClosed) => err(
            ErrorKind::ServerGone,
            "the connection to the MySQL server was lost",
        ),
        E::Driver(DriverError::NoClientSslFlagFromServer) => err(
            ErrorKind::Unsupported,
            "the server does not offer TLS (the instance's sslmode requires it)",
        ),
        E::Driver(d) => err(ErrorKind::Protocol, format!("MySQL driver: {d}")),
        E::Other(o) => err(ErrorKind::Protocol, format!("MySQL: {o}")),
        E::Url(u) => err(ErrorKind::Protocol, format!("MySQL: {u}")),
    }
}

/// A server error by its number.
pub fn server_error(code: u16, message: &str) -> EngineError {
    let kind = match code {
        // Access denied (wrong password, unknown user).
        1045 | 1698 | 1251 => ErrorKind::Authentication,
        // Database, table, column or specific privilege denied.
        1044 | 1142 | 1143 | 1227 | 1370 | 1356 => ErrorKind::Permission,
        // Too many connections, out of memory or disk.
        1040 | 1203 | 1037 | 1041 | 1021 | 1114 => ErrorKind::Capacity,
        // Server shutting down, connection killed.
        1053 | 1927 | 1317 => ErrorKind::ServerGone,
        _ => ErrorKind::Protocol,
    };
    let message = match code {
        1412 => format!(
            "a table was altered (DDL) during the backup, so its rows cannot be read at the backup's point; run the backup again ({message})"
        ),
        _ => format!("the MySQL server refused: {message} (error {code})"),
    };
    err(kind, message)
}

impl Session {
    /// Connects (TLS as the instance's mode says; `prefer` falls back to a
    /// plain connection when the server offers no TLS) and sets up the
    /// dump's session.
    pub fn connect(
        rt: &Arc<tokio::runtime::Runtime>,
        conn: &ConnSpec,
    ) -> Result<Session, EngineError> {
        Session::connect_with(rt, conn, sql::SESSION)
    }

    /// Connects and runs `setup` (an empty one leaves the server's session
    /// defaults, as a replayed binary log expects them).
    pub fn connect_with(
        rt: &Arc<tokio::runtime::Runtime>,
        conn: &ConnSpec,
        setup: &[&str],
    ) -> Result<Session, EngineError> {
        use crate::tls::TlsMode;
        let timeout = conn.connect_timeout.max(Duration::from_secs(1));
        let attempt = |tls: bool| -> Result<mysql_async::Conn, EngineError> {
            let o = opts(conn, tls)?;
            rt.block_on(async {
                match tokio::time::timeout(timeout, mysql_async::Conn::new(o)).await {
                    Ok(r) => r.map_err(|e| driver_error(e, false)),
                    Err(_) => Err(err(
                        ErrorKind::Unreachable,
                        format!(
                            "MySQL server unreachable: no answer from {}:{} within {} s",
                            conn.host,
                            conn.port,
                            timeout.as_secs()
                        ),
                    )),
                }
            })
        };
        let c = match conn.tls_mode {
            TlsMode::Disable => attempt(false)?,
            TlsMode::Prefer => match attempt(true) {
                Err(e) if e.kind == ErrorKind::Unsupported => attempt(false)?,
                r => r?,
            },
            _ => attempt(true)?,
        };
        let mut s = Session {
            rt: rt.clone(),
            conn: Some(c),
        };
        for q in setup {
            s.exec(q)?;
        }
        Ok(s)
    }

    /// Turns the session into a reader of the server's binary log from
    /// `file`:`pos` (the replication protocol, as a replica that announces
    /// MariaDB's GTID events; the server ends the stream at the log's
    /// current end instead of waiting). `server_id` must be unique among
    /// the server's replicas.
    pub fn into_binlog(
        mut self,
        server_id: u32,
        file: &str,
        pos: u64,
    ) -> Result<BinlogReader, EngineError> {
        self.exec("SET @mariadb_slave_capability = 4")?;
        let c = self.conn.take().expect("session open");
        let rt = self.rt.clone();
        let req = mysql_async::BinlogStreamRequest::new(server_id)
            .with_filename(file.as_bytes())
            .with_pos(pos)
            .with_non_blocking();
        let stream = rt
            .block_on(c.get_binlog_stream(req))
            .map_err(|e| driver_error(e, true))?;
        Ok(BinlogReader {
            rt,
            stream: Some(stream),
        })
    }

    fn conn(&mut self) -> &mut mysql_async::Conn {
        self.conn.as_mut().expect("session open")
    }

    /// Runs a statement, discarding any result.
    pub fn exec(&mut self, q: impl AsRef<[u8]>) -> Result<(), EngineError> {
        let rt = self.rt.clone();
        let c = self.conn();
        rt.block_on(c.query_drop(q.as_ref()))
            .map_err(|e| driver_error(e, true))
    }

    /// Runs a statement that is atomic on its own (autocommit), again after
    /// a deadlock or lock wait timeout, which roll it back whole: loads of
    /// neighbouring key ranges of one table may meet in InnoDB's locks.
    pub fn exec_retrying(&mut self, q: &[u8]) -> Result<(), EngineError> {
        let rt = self.rt.clone();
        let mut attempt = 0u32;
        loop {
            let c = self.conn();
            match rt.block_on(c.query_drop(q)) {
                Ok(()) => return Ok(()),
                Err(mysql_async::Error::Server(se))
                    if matches!(se.code, 1213 | 1205) && attempt < 20 =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(5 * attempt as u64));
                }
                Err(e) => return Err(driver_error(e, true)),
            }
        }
    }

    /// Runs a query and returns its rows as raw values (small results).
    pub fn rows(&mut self, q: impl AsRef<[u8]>) -> Result<Vec<Vec<Option<Vec<u8>>>>, EngineError> {
        Ok(self.rows_unless(q, &[])?.unwrap_or_default())
    }

    /// Rows, or `Err(code)` (inner) when the server answers with one of the
    /// error `codes` (an expected refusal the caller handles).
    #[allow(clippy::type_complexity)]
    pub fn rows_unless(
        &mut self,
        q: impl AsRef<[u8]>,
        codes: &[u16],
    ) -> Result<Result<Vec<Vec<Option<Vec<u8>>>>, u16>, EngineError> {
        let rt = self.rt.clone();
        let c = self.conn();
        let r = rt.block_on(async {
            let mut r = c.query_iter(q.as_ref()).await?;
            let mut out = Vec::new();
            while let Some(row) = r.next().await? {
                out.push(raw(row));
            }
            Ok::<_, mysql_async::Error>(out)
        });
        match r {
            Ok(rows) => Ok(Ok(rows)),
            Err(mysql_async::Error::Server(s)) if codes.contains(&s.code) => Ok(Err(s.code)),
            Err(e) => Err(driver_error(e, true)),
        }
    }

    /// Runs a statement; `Some(code)` when the server refuses it with one of
    /// the error `codes`.
    pub fn exec_unless(
        &mut self,
        q: impl AsRef<[u8]>,
        codes: &[u16],
    ) -> Result<Option<u16>, EngineError> {
        let rt = self.rt.clone();
        let c = self.conn();
        match rt.block_on(c.query_drop(q.as_ref())) {
            Ok(()) => Ok(None),
            Err(mysql_async::Error::Server(s)) if codes.contains(&s.code) => Ok(Some(s.code)),
            Err(e) => Err(driver_error(e, true)),
        }
    }

    /// Rows as text (names, statements: the server's UTF-8).
    pub fn text_rows(
        &mut self,
        q: impl AsRef<[u8]>,
    ) -> Result<Vec<Vec<Option<String>>>, EngineError> {
        Ok(self
            .rows(q)?
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect()
            })
            .collect())
    }

    /// The first column of the first row, as text.
    pub fn value(&mut self, q: impl AsRef<[u8]>) -> Result<Option<String>, EngineError> {
        Ok(self
            .text_rows(q)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    /// Streams a query's rows: `each` gets the columns once, then every row
    /// as raw values; rows are pulled in batches so the runtime is entered
    /// once per batch, not per row.
    pub fn stream(&mut self, q: impl AsRef<[u8]>, each: &mut RowFn<'_>) -> Result<(), EngineError> {
        let rt = self.rt.clone();
        let c = self.conn.as_mut().expect("session open");
        let mut res = rt
            .block_on(c.query_iter(q.as_ref()))
            .map_err(|e| driver_error(e, true))?;
        let cols: Arc<[mysql_async::Column]> = res.columns().unwrap_or_else(|| Arc::from(vec![]));
        loop {
            let batch = rt
                .block_on(async {
                    let mut batch = Vec::with_capacity(256);
                    let mut bytes = 0usize;
                    while bytes < 1 << 20 && batch.len() < 4096 {
                        match res.next().await? {
                            Some(row) => {
                                let r = raw(row);
                                bytes += r
                                    .iter()
                                    .map(|v| v.as_ref().map_or(1, Vec::len))
                                    .sum::<usize>()
                                    + 8;
                                batch.push(r);
                            }
                            None => break,
                        }
                    }
                    Ok::<_, mysql_async::Error>(batch)
                })
                .map_err(|e| driver_error(e, true))?;
            if batch.is_empty() {
                return Ok(());
            }
            for r in batch {
                each(&cols, r)?;
            }
        }
    }

    /// Closes the connection politely (errors ignored: the work is done).
    pub fn close(mut self) {
        if let Some(c) = self.conn.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), c.disconnect()).await
            });
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A connection dropped outside the runtime is closed by the driver
        // on the runtime; entering it keeps that from panicking.
        if let Some(c) = self.conn.take() {
            let _g = self.rt.enter();
            drop(c);
        }
    }
}

/// A binary log read as a replica reads it.
pub struct BinlogReader {
    rt: Arc<tokio::runtime::Runtime>,
    stream: Option<mysql_async::BinlogStream>,
}

impl BinlogReader {
    /// The next events (up to `max`; empty at the log's end). A server that
    /// sends nothing for `idle` is taken as gone.
    pub fn next_batch(
        &mut self,
        max: usize,
        idle: Duration,
    ) -> Result<Vec<mysql_async::binlog::events::Event>, EngineError> {
        use futures_core::Stream;
        let Some(s) = self.stream.as_mut() else {
            return Ok(Vec::new());
        };
        let (out, ended) = self.rt.block_on(async {
            let mut out = Vec::new();
            while out.len() < max {
                let r = if out.is_empty() {
                    // Wait for the first event.
                    let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx));
                    match tokio::time::timeout(idle, next).await {
                        Ok(r) => r,
                        Err(_) => {
                            return Err(err(
                                ErrorKind::ServerGone,
                                format!(
                                    "the MySQL server sent no binary log events for {} s",
                                    idle.as_secs()
                                ),
                            ));
                        }
                    }
                } else {
                    // Then take what has arrived already.
                    let now = std::future::poll_fn(|cx| {
                        std::task::Poll::Ready(match std::pin::Pin::new(&mut *s).poll_next(cx) {
                            std::task::Poll::Ready(v) => Some(v),
                            std::task::Poll::Pending => None,
                        })
                    })
                    .await;
                    match now {
                        Some(r) => r,
                        None => break,
                    }
                };
                match r {
                    Some(Ok(e)) => out.push(e),
                    Some(Err(e)) => return Err(driver_error(e, true)),
                    None => return Ok((out, true)),
                }
            }
            Ok((out, false))
        })?;
        if ended {
            self.close();
        }
        Ok(out)
    }

    fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), s.close()).await });
        }
    }
}

impl Drop for BinlogReader {
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            let _g = self.rt.enter();
            drop(s);
        }
    }
}

fn raw(row: mysql_async::Row) -> Vec<Option<Vec<u8>>> {
    row.unwrap_raw()
        .into_iter()
        .map(|v| match v {
            None | Some(mysql_async::Value::NULL) => None,
            Some(mysql_async::Value::Bytes(b)) => Some(b),
            // The text protocol sends every value as bytes; anything else
            // is written as the driver prints it.
            Some(v) => Some(v.as_sql(true).into_bytes()),
        })
        .collect()
}

/// The privileges a backup needs, each with why, as `SHOW GRANTS` names
/// them on this server.
pub fn required_privileges(
    f: &Facts,
) -> Vec<(&'static str, &'static [&'static str], &'static str)> {
    let binlog: &'static [&'static str] = match f.flavor {
        Flavor::MariaDb => &["BINLOG MONITOR", "REPLICATION CLIENT"],
        Flavor::MySql => &["REPLICATION CLIENT"],
    };
    vec![
        ("SELECT", &["SELECT"], "to read the tables"),
        (
            "RELOAD",
            &["RELOAD"],
            "for the brief FLUSH TABLES WITH READ LOCK that lines up the workers' snapshots when tables are not transactional",
        ),
        (
            "LOCK TABLES",
            &["LOCK TABLES"],
            "to hold non-transactional tables still while they are read",
        ),
        (
            binlog[0],
            binlog,
            "to read the binary log position the backup is consistent at",
        ),
        ("SHOW VIEW", &["SHOW VIEW"], "to read view definitions"),
        ("TRIGGER", &["TRIGGER"], "to read triggers"),
        ("EVENT", &["EVENT"], "to read scheduled events"),
    ]
}

/// The session user's global privileges, upper case. Only its own rows: a
/// user with global SELECT sees everyone's in `USER_PRIVILEGES`.
pub fn own_privileges(s: &mut Session) -> Result<std::collections::BTreeSet<String>, EngineError> {
    Ok(s.text_rows(format!(
        "SELECT PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = {OWN_GRANTEE}"
    ))?
    .into_iter()
    .flat_map(|r| {
        let grantable = r.get(1).cloned().flatten().is_some_and(|g| g == "YES");
        let p = r.into_iter().next().flatten().map(|p| p.to_ascii_uppercase());
        // Global `WITH GRANT OPTION` shows as grantable rows.
        p.into_iter()
            .chain(grantable.then(|| "GRANT OPTION".to_string()))
    })
    .collect())
}

/// The current user as `USER_PRIVILEGES` names grantees (`'user'@'host'`).
const OWN_GRANTEE: &str = "CONCAT('''', LEFT(CURRENT_USER(), LENGTH(CURRENT_USER()) - \
     LENGTH(SUBSTRING_INDEX(CURRENT_USER(), '@', -1)) - 1), \
     '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')";

/// Connects, learns the server and checks the user's global privileges.
pub fn check_server(s: &mut Session, user: &str) -> Result<Facts, EngineError> {
    let r = s.text_rows("SELECT VERSION(), @@log_bin, @@server_id")?;
    let row = r.into_iter().next().unwrap_or_default();
    let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let version_string = get(0);
    let (flavor, version) = parse_version(&version_string);
    let f = Facts {
        flavor,
        version_string,
        version,
        log_bin: get(1) == "1",
        server_id: get(2).parse().unwrap_or(0),
    };
    // MySQL 8.0.17: CAST(… AS DOUBLE), which the dump reads FLOAT with.
    if f.flavor == Flavor::MariaDb && f.version < (10, 5, 0)
        || f.flavor == Flavor::MySql && f.version < (8, 0, 17)
    {
        return Err(err(
            ErrorKind::Unsupported,
            format!(
                "{} is not supported: MariaDB 10.5 or later, or MySQL 8.0.17 or later",
                f.version_string
            ),
        ));
    }
    let have = own_privileges(s)?;
    let missing: Vec<_> = required_privileges(&f)
        .into_iter()
        .filter(|(_, names, _)| !names.iter().any(|n| have.contains(*n)))
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|m| m.0).collect();
        let why: Vec<String> = missing.iter().map(|m| format!("{} {}", m.0, m.2)).collect();
        return Err(err(
            ErrorKind::Permission,
            format!(
                "the user {user:?} lacks the global privilege{} {} ({}); grant {} with: GRANT {} ON *.* TO '{user}'@'<host>'",
                if names.len() > 1 { "s" } else { "" },
                names.join(", "),
                why.join("; "),
                if names.len() > 1 { "them" } else { "it" },
                names.join(", ")
            ),
        ));
    }
    Ok(f)
}

impl crate::Engine for MysqlLogical {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn method(&self) -> &'static str {
        "logical"
    }

    fn takes_method(&self, method: &str) -> bool {
        matches!(method, "logical" | "physical")
    }

    /// A logical backup builds on the newest logical set (its dump and the
    /// binary log since; [`binlog`]).
    fn builds_on_earlier_sets(&self) -> bool {
        true
    }

    fn check(&self, conn: &ConnSpec) -> Result<crate::ServerInfo, EngineError> {
        let rt = runtime()?;
        let mut s = Session::connect(&rt, conn)?;
        let f = check_server(&mut s, &conn.user)?;
        let tls = s
            .text_rows("SHOW SESSION STATUS LIKE 'Ssl_cipher'")?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().nth(1).flatten())
            .is_some_and(|c| !c.is_empty());
        s.close();
        Ok(crate::ServerInfo {
            version: f.version(),
            system_identifier: Some(format!("server_id {}", f.server_id)),
            details: serde_json::json!({
                "engine": "mysql",
                "flavor": f.flavor,
                "version": f.version_string,
                "log_bin": f.log_bin,
                "tls": tls,
            }),
        })
    }

    fn backup(
        &self,
        conn: &ConnSpec,
        opts: &crate::BackupOptions,
        writer: &mut stowage_repo::BackupWriter,
        live: &stowage_core::LiveTask,
    ) -> Result<crate::BackupOutcome, EngineError> {
        if opts.method == "physical" {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            return physical::backup(conn, opts.max_rate_kbps, threads, writer, live);
        }
        dump::backup(conn, &dump::DumpOptions::from_backup(opts), writer, live)
    }

    /// A physical set's data directory goes into the folder as it is.
    fn restore_targets(
        &self,
        m: &stowage_core::manifest::Manifest,
        target: &std::path::Path,
    ) -> Result<Vec<(usize, std::path::PathBuf)>, EngineError> {
        match m.archives.iter().position(|a| a.name == physical::ARCHIVE) {
            Some(i) => Ok(vec![(i, target.to_path_buf())]),
            None => Err(err(
                ErrorKind::Unsupported,
                "a MySQL logical backup restores into a running server, not into a folder: restore it --into a registered MySQL instance",
            )),
        }
    }

    /// `mariadb-backup --prepare` on the restored folder: it is then a data
    /// directory.
    fn after_restore(
        &self,
        m: &stowage_core::manifest::Manifest,
        target: &std::path::Path,
        _targets: &[(usize, std::path::PathBuf)],
        _set_owner: bool,
    ) -> Result<(), EngineError> {
        if m.archives.iter().any(|a| a.name == physical::ARCHIVE) {
            physical::prepare(target)?;
        }
        Ok(())
    }

    fn restore_into(
        &self,
        conn: &ConnSpec,
        repo: &Arc<stowage_repo::Repository>,
        m: &stowage_core::manifest::Manifest,
        opts: &crate::RestoreIntoOptions,
        live: &stowage_core::LiveTask,
    ) -> Result<serde_json::Value, EngineError> {
        if m.archives.iter().any(|a| a.name == physical::ARCHIVE) {
            return Err(err(
                ErrorKind::Unsupported,
                "a physical MySQL backup restores into a folder (--target): the folder is then a data directory to start mariadbd on",
            ));
        }
        if opts.part.as_deref().is_some_and(|p| p != ARCHIVE) {
            return Err(err(
                ErrorKind::Unsupported,
                format!("a MySQL set has one part, {ARCHIVE}"),
            ));
        }
        let o = load::LoadOptions {
            rename: opts.rename.clone(),
            drop: opts.drop,
            threads: 0,
            defer_indexes: std::env::var("STOWAGE_MYSQL_DEFER_INDEXES").map_or(true, |v| v != "0"),
            accounts: opts.accounts,
        };
        load::restore(conn, repo, m, &o, live)
    }

    /// A logical set: one SQL script (`mariadb < dump.sql` restores it);
    /// a physical one: a tar of the data directory.
    fn export_part(
        &self,
        repo: &Arc<stowage_repo::Repository>,
        m: &stowage_core::manifest::Manifest,
        part: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<crate::export::ExportInfo, EngineError> {
        if part == ARCHIVE {
            export::export_sql(repo, m, part, out)
        } else {
            crate::export::export_tar(repo, m, part, out)
        }
    }

    fn export_extension(&self, part: &str) -> &'static str {
        if part == ARCHIVE { "sql" } else { "tar" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read() {
        assert_eq!(
            parse_version("10.11.19-MariaDB-0+deb12u1-log"),
            (Flavor::MariaDb, (10, 11, 19))
        );
        assert_eq!(
            parse_version("5.5.5-10.6.12-MariaDB"),
            (Flavor::MariaDb, (10, 6, 12))
        );
        assert_eq!(parse_version("8.0.40"), (Flavor::MySql, (8, 0, 40)));
        assert_eq!(parse_version("8.4.3-log"), (Flavor::MySql, (8, 4, 3)));
    }

    #[test]
    fn server_errors_are_classified() {
        assert_eq!(server_error(1045, "x").kind, ErrorKind::Authentication);
        assert_eq!(server_error(1227, "x").kind, ErrorKind::Permission);
        assert_eq!(server_error(1040, "x").kind, ErrorKind::Capacity);
        assert!(server_error(1412, "x").message.contains("altered"));
    }
}
