//! Database engines: how to take a consistent backup of each kind of
//! database, stream it into the repository, and lay it out again on restore.
//!
//! An engine runs on a worker thread of its own and talks to the service only
//! through a [`LiveTask`] (state, byte counters, cancel flag) and a
//! [`BackupWriter`]. Engines know nothing of the catalog or the HTTP API.

pub mod export;
#[cfg(feature = "mongo")]
pub mod mongo;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod pg;
pub mod tar;
pub mod tls;

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stowage_core::manifest::Manifest;
use stowage_core::{LiveTask, Secret};
use stowage_repo::{BackupWriter, RepoError};

/// How to reach a database, for every engine: where (a host and port, and
/// for engines that take one a connection string naming several members),
/// who (user, password: the engine adds them to its connection itself, so
/// a connection string never carries them), TLS, and the engine's own
/// options, which the engine validates (`Engine::check_options`).
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// The (first) server's host; the name TLS verifies.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// PostgreSQL: the database to connect to; MongoDB: the authentication
    /// database (default `admin`).
    pub dbname: Option<String>,
    pub connect_timeout: Duration,
    /// TLS mode (libpq's names; default `prefer`).
    pub tls_mode: tls::TlsMode,
    /// CA certificate(s), PEM, or `system`, for `verify-ca` / `verify-full`.
    pub tls_root_cert: Option<std::path::PathBuf>,
    /// A connection string without credentials, for engines that take one
    /// (MongoDB: `mongodb://h1,h2/?replicaSet=rs0`); `None` for PostgreSQL.
    pub uri: Option<String>,
    /// Engine-specific options as stored with the instance.
    pub options: serde_json::Value,
    /// When not empty: connect only to these addresses (already resolved
    /// and checked by the caller), never resolving `host` again; `host`
    /// still names the server for TLS.
    pub addrs: Vec<std::net::SocketAddr>,
    /// For engines that learn more servers after connecting (a replica
    /// set's members): each must pass this check before any data moves.
    /// `None`: every server may be reached.
    pub host_check: Option<HostCheck>,
}

/// Whether the caller may reach a server (`host`, `port`): the operator's
/// `--tenant-allow` rules for a tenant's instance. `Err` says why not.
#[derive(Clone)]
pub struct HostCheck(pub std::sync::Arc<HostCheckFn>);

/// See [`HostCheck`].
pub type HostCheckFn = dyn Fn(&str, u16) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for HostCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostCheck")
    }
}

impl HostCheck {
    pub fn check(&self, host: &str, port: u16) -> Result<(), String> {
        (self.0)(host, port)
    }
}

/// What kind of failure, so the service and the API can answer precisely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Host unreachable, connection refused, DNS failure, timeout.
    Unreachable,
    /// Wrong password or unknown user.
    Authentication,
    /// Authenticated, but the role lacks a privilege (e.g. REPLICATION).
    Permission,
    /// The server is out of a resource (`max_wal_senders`, connections).
    Capacity,
    /// The server went away or shut down during the work.
    ServerGone,
    /// Server version or configuration not supported.
    Unsupported,
    /// The server said something we did not expect.
    Protocol,
    Cancelled,
    /// Writing to or reading from the repository failed.
    Repository,
    /// Writing the restored files failed.
    Filesystem,
    /// A resource is held or exhausted for now (the repository locked by
    /// another process, a full disk): the same work may succeed later.
    Busy,
}

impl ErrorKind {
    /// The failure may pass by itself: work that can be repeated without
    /// side effects is worth another attempt after a while.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Busy | ErrorKind::Unreachable | ErrorKind::ServerGone | ErrorKind::Capacity
        )
    }
}

/// An I/O failure that may pass by itself (space freed, a slow disk).
pub fn io_is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull
            | K::QuotaExceeded
            | K::TimedOut
            | K::Interrupted
            | K::WouldBlock
            | K::ResourceBusy
    )
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EngineError {
            kind,
            message: message.into(),
        }
    }
}

impl From<RepoError> for EngineError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Cancelled => EngineError::new(ErrorKind::Cancelled, "cancelled"),
            e @ RepoError::Locked(stowage_repo::lock::LockError::Conflict { .. }) => {
                EngineError::new(ErrorKind::Busy, format!("repository: {e}"))
            }
            RepoError::Storage(stowage_repo::storage::StorageError::Io { ref source, .. })
                if io_is_transient(source) =>
            {
                EngineError::new(ErrorKind::Busy, format!("repository: {e}"))
            }
            e => EngineError::new(ErrorKind::Repository, format!("repository: {e}")),
        }
    }
}

/// Facts about a database server, from the check step.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub version: String,
    pub system_identifier: Option<String>,
    pub details: serde_json::Value,
}

/// Per-backup choices.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Label recorded by the database (PostgreSQL's backup_label).
    pub label: String,
    /// Limit the transfer rate, in kB/s (spares a busy production server).
    pub max_rate_kbps: Option<u32>,
    /// The instance's newest set, for engines that can build on it
    /// ([`Engine::builds_on_earlier_sets`]); `None` for a full backup.
    pub base: Option<BaseSet>,
    /// The method asked for ([`Engine::takes_method`]); empty: the
    /// engine's own ([`Engine::method`]).
    pub method: String,
}

/// A finished set of the same instance a backup may build on: a logical
/// engine reuses its dump (by reference, in the repository) and captures
/// only what changed since. The result is still a complete set.
#[derive(Debug, Clone)]
pub struct BaseSet {
    pub id: i64,
    pub manifest: std::sync::Arc<Manifest>,
}

/// How to restore into a running server.
#[derive(Debug, Clone, Default)]
pub struct RestoreIntoOptions {
    /// Source database → target database.
    pub rename: std::collections::BTreeMap<String, String>,
    /// Drop target databases that exist already (otherwise refused).
    pub drop: bool,
    /// Restore only this part of the set (a shard's id): into a replica
    /// set, or the same part of a cluster.
    pub part: Option<String>,
    /// MySQL: also create the set's user accounts with their grants.
    pub accounts: bool,
}

/// What a finished backup stream established.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// The point the backup is consistent at (LSN, oplog timestamp …).
    pub consistent_point: stowage_core::ConsistentPoint,
    /// The server's version as it reports it ("16.4", "8.2.11").
    pub engine_version: String,
    /// Everything else worth keeping in the manifest.
    pub meta: serde_json::Value,
}

pub trait Engine: Send + Sync {
    fn name(&self) -> &'static str;
    fn method(&self) -> &'static str;

    /// Whether a backup may be taken with `method` (`logical`,
    /// `physical`). Default: only the engine's own.
    fn takes_method(&self, method: &str) -> bool {
        method == self.method()
    }

    /// Checks an instance's engine-specific connection settings (a
    /// connection string, options) before anything connects; the message
    /// says what is wrong. Default: nothing to check.
    fn check_options(&self, _conn: &ConnSpec) -> Result<(), String> {
        Ok(())
    }

    /// Whether a backup can build on the instance's newest set
    /// (`BackupOptions::base`); the service then loads it. Default: no.
    fn builds_on_earlier_sets(&self) -> bool {
        false
    }

    /// Connects and checks privileges and settings, without side effects.
    fn check(&self, conn: &ConnSpec) -> Result<ServerInfo, EngineError>;

    /// The shards of a cluster registered without its shard list, read from
    /// its config servers or router (`conn.options`), as connection strings
    /// without credentials. Engines without clusters refuse.
    fn list_shards(&self, _conn: &ConnSpec) -> Result<Vec<String>, EngineError> {
        Err(EngineError::new(
            ErrorKind::Unsupported,
            format!("a {} instance has no shards", self.name()),
        ))
    }

    /// Streams a consistent backup into `writer`. Moves `live` through
    /// `Checking → Preparing → Running`; the caller finishes the set.
    fn backup(
        &self,
        conn: &ConnSpec,
        opts: &BackupOptions,
        writer: &mut BackupWriter,
        live: &LiveTask,
    ) -> Result<BackupOutcome, EngineError>;

    /// Where each archive of the manifest goes under `target`.
    fn restore_targets(
        &self,
        m: &Manifest,
        target: &Path,
    ) -> Result<Vec<(usize, PathBuf)>, EngineError>;

    /// Restores a set into a running server (logical engines). Returns
    /// what was done, for the job's result.
    fn restore_into(
        &self,
        _conn: &ConnSpec,
        _repo: &std::sync::Arc<stowage_repo::Repository>,
        _m: &Manifest,
        _opts: &RestoreIntoOptions,
        _live: &LiveTask,
    ) -> Result<serde_json::Value, EngineError> {
        Err(EngineError::new(
            ErrorKind::Unsupported,
            format!(
                "a {} backup restores into a folder (--target), not into a running server",
                self.name()
            ),
        ))
    }

    /// Writes one part (archive) of a set to `out` as a byte stream in a
    /// standard format, read straight from the repository. Default: a tar
    /// of the part's files (`export::export_tar`), which is what both
    /// engines' tools read; an engine with a better-suited format overrides it.
    fn export_part(
        &self,
        repo: &std::sync::Arc<stowage_repo::Repository>,
        m: &Manifest,
        part: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<export::ExportInfo, EngineError> {
        export::export_tar(repo, m, part, out)
    }

    /// The file name extension of [`Engine::export_part`]'s format for
    /// `part`.
    fn export_extension(&self, _part: &str) -> &'static str {
        "tar"
    }

    /// Fix-ups after the files are in place (links, permissions).
    /// Default: none (engines that restore into a server).
    fn after_restore(
        &self,
        _m: &Manifest,
        _target: &Path,
        _targets: &[(usize, PathBuf)],
        _set_owner: bool,
    ) -> Result<(), EngineError> {
        Ok(())
    }
}

/// A regular file of a set as the engines write it (owner-only mode,
/// written now).
pub(crate) fn new_file(path: String) -> stowage_repo::writer::FileMeta {
    stowage_repo::writer::FileMeta {
        path,
        kind: stowage_core::manifest::FileKind::File,
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime: stowage_repo::lock::now_ms() / 1000,
        link_target: None,
    }
}

/// The file a download of `part` of a set of `engine` is: the part's name
/// and its export format's extension (`base.tar`, `dump.sql`).
pub fn export_file_name(engine: &str, part: &str) -> String {
    let ext = engine_for(engine).map_or("tar", |e| e.export_extension(part));
    format!("{part}.{ext}")
}

/// The extensions exports have, and each one's media type.
pub const EXPORT_TYPES: &[(&str, &str)] =
    &[("tar", "application/x-tar"), ("sql", "application/sql")];

/// The engine for an instance's engine name.
pub fn engine_for(name: &str) -> Option<&'static dyn Engine> {
    match name {
        "postgresql" => Some(&pg::PostgresPhysical),
        #[cfg(feature = "mongo")]
        "mongodb" => Some(&mongo::MongoLogical),
        #[cfg(feature = "mysql")]
        "mysql" => Some(&mysql::MysqlLogical),
        _ => None,
    }
}

/// A transfer-rate limit shared by the dump threads (of every part of a
/// cluster): each sleeps while the
/// bytes read so far are ahead of `rate` since the start (spares a busy
/// production server, as PostgreSQL's MAX_RATE does).
pub(crate) struct RateLimit {
    start: std::time::Instant,
    bytes: std::sync::atomic::AtomicU64,
    /// Bytes per second; 0: no limit.
    rate: u64,
}

impl RateLimit {
    pub(crate) fn new(kbps: Option<u32>) -> RateLimit {
        RateLimit {
            start: std::time::Instant::now(),
            bytes: std::sync::atomic::AtomicU64::new(0),
            rate: kbps.map_or(0, |k| k as u64 * 1024),
        }
    }

    pub(crate) fn consume(&self, n: u64, live: &stowage_core::LiveTask) {
        if self.rate == 0 {
            return;
        }
        let total = self
            .bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed)
            + n;
        let due = Duration::from_secs_f64(total as f64 / self.rate as f64);
        // In short sleeps, so a cancel is seen promptly.
        while let Some(wait) = due.checked_sub(self.start.elapsed()) {
            if live.is_cancelled() || wait.is_zero() {
                break;
            }
            std::thread::sleep(wait.min(Duration::from_millis(100)));
        }
    }
}

/// Joins scoped worker threads; a panicked one counts as an error naming
/// `what` ("a dump thread").
pub(crate) fn join_all<T>(
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<T, EngineError>>>,
    what: &str,
) -> Vec<Result<T, EngineError>> {
    handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(EngineError::new(
                    ErrorKind::Protocol,
                    format!("{what} panicked"),
                ))
            })
        })
        .collect()
}

impl From<tar::TarError> for EngineError {
    fn from(e: tar::TarError) -> Self {
        EngineError::new(ErrorKind::Protocol, format!("backup stream: {e}"))
    }
}
