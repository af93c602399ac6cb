//! Stowage's service layer.
//!
//! [`Service`] owns the catalog, the repository and the running tasks, and is
//! what every API dialect calls. It knows no wire format: the API crate turns
//! requests into these calls and [`ServiceError`]s into its dialect's errors.
//!
//! A backup task runs on a blocking worker thread (the engine and the
//! repository pipeline are synchronous); an async monitor mirrors the task's
//! [`LiveTask`] into the catalog: every state change at once, progress at
//! most once a second.

pub mod datadir;
mod diskwriter;
pub mod downloads;
pub mod error;
pub mod netpolicy;
pub mod restore_target;
mod runner;
pub mod scheduler;
pub mod secrets;

pub use runner::PartExport;
pub use scheduler::PolicyUpdate;
pub use stowage_engines::RestoreIntoOptions;
pub use stowage_engines::export_file_name;

pub use error::{ErrorKind, ServiceError, ServiceResult};
pub use stowage_engines::ErrorKind as DbErrorKind;

use secrets::{SecretBox, random_token, write_private};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use stowage_catalog::sql::SqlCatalog;
use stowage_catalog::{AccessKey, BackupSet, Catalog, Instance, NewTask, Task, TaskFilter};
use stowage_core::ids::{Dialect, InstanceId};
use stowage_core::{LiveTask, Progress, Secret, TaskKind, TaskMode, TaskState};
use stowage_repo::{ChunkerParams, KdfParams, LocalStorage, Repository, Storage};

pub fn now_ms() -> i64 {
    stowage_repo::lock::now_ms()
}

/// How `stowage serve` is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `catalog.db`, `repository/`, `server.key`, `admin-credentials`.
    pub data_dir: PathBuf,
    /// Repository: a folder, a `file://` URL or `s3://bucket/prefix`;
    /// default `<data_dir>/repository`.
    pub repository: Option<String>,
    /// How an `s3://` repository is reached, over what the environment
    /// says in AWS's names (credentials come only from there).
    pub s3: S3Settings,
    /// The catalog: `postgres://…` (shared by several nodes); default the
    /// SQLite file `<data_dir>/catalog.db`.
    pub catalog: Option<String>,
    /// The key the catalog's secrets are sealed with; default
    /// `<data_dir>/server.key` (created on first start). Every node of a
    /// deployment must use the same one.
    pub server_key_file: Option<PathBuf>,
    /// Lease of a task run on a shared catalog: renewed while it runs,
    /// taken over by another node once it expires (default 30 s).
    pub lease: std::time::Duration,
    /// Repository password; default: generated once into `<data_dir>/repository.password`.
    pub repo_password: Option<Secret>,
    /// Name of this node (tasks it runs are failed if it restarts mid-way).
    pub node: String,
    /// Faster key derivation, for tests only.
    pub insecure_fast_kdf: bool,
    /// Chunker parameters for a new repository (default: `ChunkerParams::default()`);
    /// an existing repository keeps its own.
    pub chunker: Option<ChunkerParams>,
    /// Folders directory restores may write into (default `<data_dir>/restores`).
    pub restore_roots: Vec<PathBuf>,
    /// Where tenants' instances may point (empty: anywhere).
    pub tenant_allow: Vec<netpolicy::AllowRule>,
}

/// Settings of an `s3://` repository given by flags; unset ones come from
/// the environment (`stowage_s3::S3Options::from_url`).
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests; default: on where an endpoint is given.
    pub path_style: Option<bool>,
    /// Retry budget for transient failures, in seconds (default 120).
    pub retry_secs: Option<u64>,
    /// PEM certificates to trust besides the system's (default AWS_CA_BUNDLE).
    pub ca_file: Option<PathBuf>,
}

/// The storage a `--repository` value names, opened (an `s3://` bucket is
/// asked once, so refused credentials fail the start), and the local
/// folder it is, if it is one.
fn open_storage(
    repository: Option<&str>,
    data_dir: &Path,
    s3: &S3Settings,
) -> ServiceResult<(Arc<dyn Storage>, Option<PathBuf>)> {
    if let Some(url) = repository.filter(|r| r.starts_with("s3://")) {
        let mut o = stowage_s3::S3Options::from_url(url, |k| std::env::var(k).ok())
            .map_err(ServiceError::invalid)?;
        if let Some(e) = &s3.endpoint {
            o.endpoint = Some(e.clone());
            o.path_style = true;
        }
        if let Some(r) = &s3.region {
            o.region = r.clone();
        }
        if let Some(p) = s3.path_style {
            o.path_style = p;
        }
        if let Some(f) = &s3.ca_file {
            o.ca_file = Some(f.clone());
        }
        if let Some(t) = s3.retry_secs {
            o.retry_timeout = std::time::Duration::from_secs(t);
        }
        o.check().map_err(ServiceError::invalid)?;
        let st = stowage_s3::S3Storage::open(o)
            .map_err(|e| ServiceError::invalid(format!("repository: {e}")))?;
        return Ok((Arc::new(st), None));
    }
    let dir = match repository {
        Some(r) => repository_path(r)?,
        None => data_dir.join("repository"),
    };
    let st = LocalStorage::new(&dir).map_err(|e| ServiceError::internal(e.to_string()))?;
    Ok((Arc::new(st), Some(dir)))
}

/// The catalog a `--catalog` value names: PostgreSQL, or by default the
/// SQLite file in the data dir.
async fn open_catalog(url: Option<&str>, data_dir: &Path) -> ServiceResult<Arc<dyn Catalog>> {
    Ok(match url {
        None => Arc::new(SqlCatalog::open(&data_dir.join("catalog.db")).await?),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Arc::new(SqlCatalog::open_postgres(u).await?)
        }
        Some(_) => {
            return Err(ServiceError::invalid(
                "catalog: give a postgres://user@host:port/database URL (the SQLite catalog in the data dir is the default)",
            ));
        }
    })
}

/// Whether `key` opens a secret of the catalog (an access key of the
/// `default` account); true for a catalog without one yet.
async fn key_opens_catalog(catalog: &dyn Catalog, key: &SecretBox) -> ServiceResult<bool> {
    let Some(acc) = catalog.account_by_name("default").await? else {
        return Ok(true);
    };
    Ok(match catalog.list_access_keys(&acc.id).await?.first() {
        Some(k) => key.open(&k.secret_enc).is_ok(),
        None => true,
    })
}

/// Re-seals every secret of the catalog with the key in `new_key` (created,
/// 0600, if the file does not exist) and records it as the catalog's key,
/// in one transaction. Every node must be stopped: a running node keeps
/// sealing with the old key (and a node started with the old key after
/// this is refused). With the SQLite catalog the data dir's lock makes
/// sure `serve` is not running. Returns how many secrets were re-sealed;
/// 0 when the catalog already uses the new key.
pub async fn rotate_server_key(
    data_dir: &Path,
    catalog: Option<&str>,
    old_key: &Path,
    new_key: &Path,
) -> ServiceResult<u64> {
    let _lock = match catalog {
        None => Some(datadir::DataDirLock::acquire(data_dir)?),
        Some(_) => None,
    };
    let old = SecretBox::load(old_key)?;
    let new = SecretBox::load_or_create(new_key)?;
    let catalog = open_catalog(catalog, data_dir).await?;
    if !key_opens_catalog(&*catalog, &old).await? && !key_opens_catalog(&*catalog, &new).await? {
        return Err(ServiceError::invalid(format!(
            "the server key {} does not open this catalog's secrets",
            old_key.display()
        )));
    }
    let stored = catalog
        .setting_or_insert("server_key_check", old.check_value())
        .await?;
    if stored == new.check_value() {
        return Ok(0);
    }
    if stored != old.check_value() {
        return Err(ServiceError::invalid(format!(
            "the server key {} is not the key this catalog's secrets are sealed with",
            old_key.display()
        )));
    }
    Ok(catalog
        .reseal_secrets(&|s| old.reseal(s, &new), new.check_value())
        .await?)
}

/// The local folder a `--repository` value names (a path or `file://`);
/// any other scheme but `s3://` is refused rather than taken for a folder
/// name.
pub fn repository_path(s: &str) -> ServiceResult<PathBuf> {
    if let Some(rest) = s.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(ServiceError::invalid(format!(
                "repository {s:?}: a file:// URL needs an absolute path (file:///srv/stowage)"
            )));
        }
        return Ok(PathBuf::from(rest));
    }
    if let Some((scheme, _)) = s.split_once("://")
        && !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(ServiceError::invalid(format!(
            "repository {s:?}: the {scheme}:// scheme is not supported; \
             use a local folder (a path or file:///path) or s3://bucket/prefix"
        )));
    }
    if s.is_empty() {
        return Err(ServiceError::invalid("repository: empty"));
    }
    Ok(PathBuf::from(s))
}

/// The catalog setting that says data waits to be reclaimed by a gc ("1").
pub(crate) const GC_NEEDED: &str = "gc_needed";

/// How long an access key read from the catalog is used without reading
/// it again (see `Service::key_cache`): a key disabled, deleted or limited
/// through another node of a shared catalog stops working within this.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Keys remembered at most (expired ones are dropped first, then all).
const KEY_CACHE_MAX: usize = 10_000;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub account_id: String,
    pub key_id: String,
    /// A key of the `default` account, created at first start: may manage
    /// accounts and every account's keys.
    pub admin: bool,
    /// The key's RAM-style policy, if it has one (checked by the cloud
    /// dialects; such a key cannot use the REST API).
    pub policy: Option<Arc<stowage_core::ram::RamPolicy>>,
}

/// An access key as listed (never with its secret).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub access_key_id: String,
    pub account: String,
    pub status: String,
    pub description: String,
    pub created_ms: i64,
    pub policy: Option<serde_json::Value>,
}

/// Access key as shown once at creation.
#[derive(Serialize, Deserialize)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.access_key_id)
    }
}

/// What the operator needs to know after start-up.
#[derive(Debug)]
pub struct Bootstrap {
    /// Set on first start: where the admin credentials were written.
    pub admin_credentials_file: Option<PathBuf>,
    pub repository: String,
    pub interrupted_tasks: u64,
}

/// Options of a manual backup.
#[derive(Debug, Clone, Default)]
pub struct BackupRequest {
    /// Idempotency: the same token for the same instance returns the first task.
    pub client_token: Option<String>,
    /// Keep the set this many days instead of the policy's retention.
    pub retention_days: Option<u32>,
    /// A note kept with the task and its set (`meta.comment`).
    pub comment: Option<String>,
    /// Take everything again: an engine that builds on the instance's
    /// newest set (MongoDB reuses its dump) takes a new one.
    pub full: bool,
    /// `logical` or `physical` for an engine that takes both (MySQL);
    /// `None`: the engine's own.
    pub method: Option<String>,
}

/// A change to an instance's connection settings; `None` keeps a field.
/// `password: Some("")` removes the password.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceUpdate {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub dbname: Option<String>,
    /// `Some(None)` (JSON `null`) removes the throttle.
    #[serde(default, deserialize_with = "present")]
    pub max_rate_kbps: Option<Option<u32>>,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    /// MongoDB: a new connection string (without credentials).
    pub uri: Option<String>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Registration of an instance.
#[derive(Debug, Clone, Deserialize)]
pub struct NewInstance {
    pub name: String,
    #[serde(default = "default_engine")]
    pub engine: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub dbname: Option<String>,
    /// The API dialect whose id format the instance gets (default by engine).
    #[serde(default)]
    pub dialect: Option<String>,
    /// Throttle backups of this instance to this many kB/s.
    #[serde(default)]
    pub max_rate_kbps: Option<u32>,
    /// TLS to the database, as libpq's sslmode (default `prefer`).
    #[serde(default)]
    pub sslmode: Option<String>,
    /// CA certificate file (PEM) on the server's machine, for verify-ca/verify-full.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Connect and check privileges before registering (default: yes).
    #[serde(default = "yes")]
    pub check: bool,
    /// MongoDB: the connection string without credentials
    /// (`mongodb://h1:27017,h2:27017/?replicaSet=rs0`); the user and
    /// password come from `user` and `password`.
    #[serde(default)]
    pub uri: Option<String>,
    /// MongoDB sharded cluster: each shard's connection string (a replica
    /// set), without credentials. Empty with `config` or `mongos` given:
    /// read from the cluster.
    #[serde(default)]
    pub shards: Vec<String>,
    /// MongoDB sharded cluster: the config servers' connection string.
    #[serde(default)]
    pub config: Option<String>,
    /// MongoDB sharded cluster: a mongos, to pause the balancer during a
    /// backup (and to read the shard list from).
    #[serde(default)]
    pub mongos: Option<String>,
}

/// At most this many shards per cluster.
pub const MAX_SHARDS: usize = 64;

fn yes() -> bool {
    true
}

fn default_engine() -> String {
    "postgresql".into()
}

pub struct Service {
    catalog: Arc<dyn Catalog>,
    repo: Arc<Repository>,
    secrets: SecretBox,
    node: String,
    /// Running tasks (and their parts) of this node, by task id.
    live_tasks: Mutex<HashMap<i64, Arc<LiveTask>>>,
    /// Set by [`Service::shutdown`]: new work is refused, running work is
    /// cancelled with this as the reason.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Instance → start of the window the scheduler has created a task for,
    /// and when: a cache, forgotten after `scheduler::SCHEDULED_MEMORY` (a
    /// policy change through another node may have dropped the task).
    scheduled: Mutex<HashMap<String, (i64, std::time::Instant)>>,
    /// Id of the `default` account (its keys are admin keys), set at start.
    admin_account: std::sync::OnceLock<String>,
    /// How many automated backups may run at once.
    automated_limit: std::sync::atomic::AtomicUsize,
    /// Where directory restores may go, and what they never clear.
    restore_roots: restore_target::RestoreRoots,
    /// Where tenants' instances may point.
    tenant_allow: Vec<netpolicy::AllowRule>,
    /// Accounts with a restore running: one at a time per account, so one
    /// restore can never lay out links under a folder another is writing.
    restoring: Mutex<std::collections::HashSet<String>>,
    /// Download files and the key their links are signed with.
    pub downloads: downloads::Downloads,
    /// How long a task's lease lasts (a shared catalog only; `None`: one
    /// node, no leases).
    lease: Option<std::time::Duration>,
    /// Leases this node holds, by task id. Every write it makes for such a task carries the epoch (refused once
    /// taken over).
    leases: Mutex<HashMap<i64, Held>>,
    /// The catalog's clock minus this machine's, in ms (a shared catalog:
    /// leases are given and judged by the catalog's clock, so nodes whose
    /// clocks disagree still agree on when a lease expires).
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// This catalog's random id (`settings.catalog_id`), a label of every
    /// snapshot its backups write: gc judges only snapshots of its own
    /// catalog (never those of another deployment on the same repository).
    pub(crate) catalog_id: String,
    /// Why this node must stop (set once), and the wake-up of whoever
    /// waits for it ([`Service::fatal`]).
    fatal: std::sync::OnceLock<String>,
    fatal_notify: tokio::sync::Notify,
    /// Active access keys read from the catalog in the last
    /// [`KEY_CACHE_TTL`], by id: a signed request does not read its key
    /// (and open its secret) again. A change made through this node drops
    /// the entry at once; one made through another node of a shared
    /// catalog is seen within the TTL.
    key_cache: Mutex<HashMap<String, (std::time::Instant, Principal, Secret)>>,
    /// Bumped by every key change through this node: a key read that
    /// raced with one is not remembered.
    key_generation: std::sync::atomic::AtomicU64,
    /// Held for the server's life: one process per data directory.
    _data_dir_lock: datadir::DataDirLock,
}

/// A lease this node holds on a task.
struct Held {
    epoch: i64,
    /// The last successful renewal.
    renewed: std::time::Instant,
    /// The last renewal tried (successful or not).
    tried: std::time::Instant,
}

/// An account's restore slot, freed however the restore ends.
pub(crate) struct RestoreSlot {
    svc: Arc<Service>,
    account: String,
}

impl Drop for RestoreSlot {
    fn drop(&mut self) {
        if let Ok(mut r) = self.svc.restoring.lock() {
            r.remove(&self.account);
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Service {
    /// Opens (or creates on first start) everything under the data dir.
    pub async fn start(cfg: Config) -> ServiceResult<(Arc<Service>, Bootstrap)> {
        let dd = &cfg.data_dir;
        std::fs::create_dir_all(dd).map_err(|e| {
            ServiceError::internal(format!("cannot create data dir {}: {e}", dd.display()))
        })?;
        // Before anything else is read or written: one process per data dir.
        let lock = datadir::DataDirLock::acquire(dd)?;
        let key_file = cfg
            .server_key_file
            .clone()
            .unwrap_or_else(|| dd.join("server.key"));
        let secrets = SecretBox::load_or_create(&key_file)?;
        let catalog = open_catalog(cfg.catalog.as_deref(), dd).await?;
        // Counted as a running node first: a key rotation is refused from
        // now on, and one running now refuses this start.
        catalog.join_as_node().await?;
        // The catalog's secrets open only with the key they were sealed
        // with: a node with another key is refused before it serves. A
        // catalog without a check value yet (made before it existed) must
        // open a secret with this key before the key is recorded.
        if !key_opens_catalog(&*catalog, &secrets).await? {
            return Err(ServiceError::invalid(format!(
                "the server key {} does not open this catalog's secrets: every node of a \
                 deployment uses the same key file (--server-key-file)",
                key_file.display()
            )));
        }
        let stored = catalog
            .setting_or_insert("server_key_check", secrets.check_value())
            .await?;
        if stored != secrets.check_value() {
            return Err(ServiceError::invalid(format!(
                "the server key {} is not the key this catalog's secrets are sealed with: \
                 every node of a deployment uses the same key file; copy it from a node \
                 that already serves this catalog (--server-key-file)",
                key_file.display()
            )));
        }

        let password = match &cfg.repo_password {
            Some(p) => p.clone(),
            None => {
                let f = dd.join("repository.password");
                match std::fs::read_to_string(&f) {
                    Ok(s) => Secret::new(s.trim().to_string()),
                    Err(_) => {
                        let p = random_token(40, false);
                        write_private(&f, p.as_bytes())?;
                        Secret::new(p)
                    }
                }
            }
        };
        let kdf = if cfg.insecure_fast_kdf {
            KdfParams::insecure_fast()
        } else {
            KdfParams::default()
        };
        let chunker = cfg.chunker.unwrap_or_default();
        let (repository, ddir, s3) = (cfg.repository.clone(), dd.clone(), cfg.s3.clone());
        let (repo, repo_dir) =
            tokio::task::spawn_blocking(move || -> ServiceResult<(Repository, Option<PathBuf>)> {
                let (storage, dir) = open_storage(repository.as_deref(), &ddir, &s3)?;
                Ok((
                    Repository::open_or_init(storage, password.expose(), chunker, kdf)?,
                    dir,
                ))
            })
            .await
            .map_err(|e| ServiceError::internal(e.to_string()))??;
        if cfg.chunker.is_some() && repo.config().chunker != chunker {
            let c = repo.config().chunker;
            tracing::warn!(
                min = c.min,
                avg = c.avg,
                max = c.max,
                "the repository exists and keeps the chunk sizes it was created with; the requested ones apply only to a new repository"
            );
        }
        let roots = if cfg.restore_roots.is_empty() {
            vec![dd.join("restores")]
        } else {
            cfg.restore_roots.clone()
        };
        let restore_roots = restore_target::RestoreRoots::new(&roots, dd, repo_dir.as_deref())?;
        let interrupted = catalog
            .fail_interrupted(&cfg.node, "interrupted: the server stopped while the task ran; its partial data is reclaimed by gc", now_ms())
            .await?;
        let catalog_id = catalog
            .setting_or_insert("catalog_id", &random_token(24, false))
            .await?;
        let link_key = secrets.link_key();
        let svc = Arc::new(Service {
            catalog,
            repo: Arc::new(repo),
            secrets,
            node: cfg.node.clone(),
            live_tasks: Default::default(),
            shutting_down: Default::default(),
            scheduled: Default::default(),
            admin_account: Default::default(),
            automated_limit: usize::MAX.into(),
            restore_roots,
            tenant_allow: cfg.tenant_allow.clone(),
            restoring: Default::default(),
            downloads: downloads::Downloads::open(dd, link_key)?,
            lease: cfg.catalog.is_some().then_some(cfg.lease),
            leases: Default::default(),
            key_cache: Default::default(),
            key_generation: Default::default(),
            clock_offset_ms: Default::default(),
            catalog_id,
            fatal: Default::default(),
            fatal_notify: Default::default(),
            _data_dir_lock: lock,
        });
        let admin_credentials_file = svc.ensure_admin(dd).await?;
        // Leases are given by the catalog's clock from the first one on.
        svc.measure_catalog_clock().await?;
        Ok((
            svc.clone(),
            Bootstrap {
                admin_credentials_file,
                repository: svc.repo.location(),
                interrupted_tasks: interrupted,
            },
        ))
    }

    /// First start: create the `default` account and its admin key, written
    /// to `<data_dir>/admin-credentials` (0600), never to the log.
    async fn ensure_admin(&self, dd: &Path) -> ServiceResult<Option<PathBuf>> {
        if let Some(acc) = self.catalog.account_by_name("default").await? {
            let _ = self.admin_account.set(acc.id);
            return Ok(None);
        }
        let acc = self.catalog.create_account("default", now_ms()).await?;
        let _ = self.admin_account.set(acc.id.clone());
        let creds = self
            .create_access_key(&acc.id, "admin key created at first start")
            .await?;
        let path = dd.join("admin-credentials");
        write_private(
            &path,
            serde_json::to_string_pretty(&creds)
                .expect("json")
                .as_bytes(),
        )?;
        Ok(Some(path))
    }

    pub async fn create_access_key(
        &self,
        account_id: &str,
        description: &str,
    ) -> ServiceResult<Credentials> {
        let id = format!("STWK{}", random_token(20, true));
        let secret = Secret::new(random_token(40, false));
        self.catalog
            .insert_access_key(&AccessKey {
                id: id.clone(),
                account_id: account_id.into(),
                secret_enc: self.secrets.seal(&secret),
                status: "active".into(),
                description: description.into(),
                created_ms: now_ms(),
                policy: None,
            })
            .await?;
        Ok(Credentials {
            access_key_id: id,
            access_key_secret: secret.expose().to_string(),
        })
    }

    /// The account and clear secret of an active key (for signature checks).
    pub async fn key_secret(&self, key_id: &str) -> ServiceResult<(Principal, Secret)> {
        if let Some((at, p, s)) = self.key_cache.lock().expect("key cache").get(key_id)
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok((p.clone(), s.clone()));
        }
        let generation = self
            .key_generation
            .load(std::sync::atomic::Ordering::Acquire);
        let (p, s) = self.read_key(key_id).await?;
        let mut cache = self.key_cache.lock().expect("key cache");
        // A key changed through this node while it was read: maybe read
        // before the change, not kept.
        if self
            .key_generation
            .load(std::sync::atomic::Ordering::Acquire)
            != generation
        {
            return Ok((p, s));
        }
        if cache.len() >= KEY_CACHE_MAX {
            cache.retain(|_, (at, _, _)| at.elapsed() < KEY_CACHE_TTL);
            if cache.len() >= KEY_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            key_id.to_string(),
            (std::time::Instant::now(), p.clone(), s.clone()),
        );
        Ok((p, s))
    }

    /// Whether the catalog is shared by several nodes (PostgreSQL).
    pub fn shared_catalog(&self) -> bool {
        self.lease.is_some()
    }

    /// Records a signed request's nonce in the shared catalog until
    /// `until_ms`: false when any node recorded it before (a replay).
    pub async fn remember_nonce(
        &self,
        key_id: &str,
        nonce: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> ServiceResult<bool> {
        Ok(self
            .catalog
            .remember_nonce(key_id, nonce, now_ms, until_ms)
            .await?)
    }

    /// Deletes the shared catalog's expired nonces (none kept otherwise).
    pub async fn forget_expired_nonces(&self) -> ServiceResult<u64> {
        if !self.shared_catalog() {
            return Ok(0);
        }
        Ok(self.catalog.forget_nonces(self.catalog_now_ms()).await?)
    }

    /// Forgets what [`Service::key_secret`] remembers of a key (it was
    /// changed or deleted).
    fn forget_key(&self, key_id: &str) {
        let mut cache = self.key_cache.lock().expect("key cache");
        self.key_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        cache.remove(key_id);
    }

    /// An active key, its principal and its secret, from the catalog.
    async fn read_key(&self, key_id: &str) -> ServiceResult<(Principal, Secret)> {
        let k = self
            .catalog
            .access_key(key_id)
            .await?
            .ok_or_else(|| ServiceError::new(ErrorKind::Unauthorized, "unknown access key"))?;
        if k.status != "active" {
            return Err(ServiceError::new(
                ErrorKind::KeyDisabled,
                "this access key is disabled",
            ));
        }
        let secret = self.secrets.open(&k.secret_enc)?;
        let admin = self.admin_account.get() == Some(&k.account_id);
        let policy = match &k.policy {
            Some(doc) => Some(Arc::new(stowage_core::ram::RamPolicy::parse(doc).map_err(
                |e| {
                    tracing::error!(key = %k.id, error = %e, "stored key policy unreadable; refusing the key");
                    ServiceError::new(ErrorKind::Forbidden, "this access key's policy is unreadable")
                },
            )?)),
            None => None,
        };
        Ok((
            Principal {
                account_id: k.account_id,
                key_id: k.id,
                admin,
                policy,
            },
            secret,
        ))
    }

    /// Bearer-style check: key id and secret given directly.
    pub async fn authenticate(&self, key_id: &str, secret: &str) -> ServiceResult<Principal> {
        let (p, s) = self.key_secret(key_id).await?;
        if constant_time_eq(s.expose().as_bytes(), secret.as_bytes()) {
            Ok(p)
        } else {
            Err(ServiceError::new(
                ErrorKind::Unauthorized,
                "unknown access key or wrong secret",
            ))
        }
    }

    // ---- accounts and access keys ----

    fn require_admin(p: &Principal) -> ServiceResult<()> {
        Self::require_admin_for(p, "this")
    }

    fn require_admin_for(p: &Principal, what: &str) -> ServiceResult<()> {
        if p.admin {
            Ok(())
        } else {
            Err(ServiceError::new(
                ErrorKind::Forbidden,
                format!("only keys of the default (admin) account may do {what}"),
            ))
        }
    }

    /// The restore roots in force (for `serve`'s start-up log).
    pub fn restore_roots(&self) -> &[PathBuf] {
        self.restore_roots.roots()
    }

    /// Refuses a host a tenant's instance may not point at
    /// (`serve --tenant-allow`); the admin account is not limited. Returns
    /// the addresses that passed, which the engine then connects to without
    /// resolving the name again (empty: no restriction applied).
    async fn check_tenant_host(
        &self,
        account_id: &str,
        host: &str,
        port: u16,
    ) -> ServiceResult<Vec<std::net::SocketAddr>> {
        if self.tenant_allow.is_empty() || self.admin_account.get().is_some_and(|a| a == account_id)
        {
            return Ok(Vec::new());
        }
        if netpolicy::host_allowed(&self.tenant_allow, host) {
            return Ok(Vec::new());
        }
        let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(it) => it.collect(),
            Err(_) => Vec::new(),
        };
        let ips: Vec<std::net::IpAddr> = addrs.iter().map(|a| a.ip()).collect();
        if netpolicy::addrs_allowed(&self.tenant_allow, &ips) {
            return Ok(addrs);
        }
        Err(ServiceError::new(
            ErrorKind::Forbidden,
            format!(
                "host {host} is not one this server lets accounts reach; the operator allows hosts and networks with `serve --tenant-allow`"
            ),
        ))
    }

    pub async fn create_account(
        &self,
        p: &Principal,
        name: &str,
    ) -> ServiceResult<stowage_catalog::Account> {
        Self::require_admin(p)?;
        if !valid_name(name) {
            return Err(ServiceError::invalid(
                "account name: 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        Ok(self.catalog.create_account(name, now_ms()).await?)
    }

    pub async fn list_accounts(
        &self,
        p: &Principal,
    ) -> ServiceResult<Vec<stowage_catalog::Account>> {
        Self::require_admin(p)?;
        Ok(self.catalog.list_accounts().await?)
    }

    /// The account named `name` (or the caller's own with `None`), if the
    /// caller may manage its keys.
    async fn managed_account(
        &self,
        p: &Principal,
        name: Option<&str>,
    ) -> ServiceResult<stowage_catalog::Account> {
        let accounts = self.catalog.list_accounts().await?;
        let acc = match name {
            None => accounts.into_iter().find(|a| a.id == p.account_id),
            Some(n) => accounts.into_iter().find(|a| a.name == n),
        }
        .ok_or_else(|| ServiceError::not_found(format!("account {}", name.unwrap_or("?"))))?;
        if acc.id != p.account_id {
            Self::require_admin(p)?;
        }
        Ok(acc)
    }

    pub async fn create_key(
        &self,
        p: &Principal,
        account: Option<&str>,
        description: &str,
    ) -> ServiceResult<Credentials> {
        let acc = self.managed_account(p, account).await?;
        if description.len() > 256 {
            return Err(ServiceError::invalid("description: at most 256 characters"));
        }
        self.create_access_key(&acc.id, description).await
    }

    pub async fn list_keys(
        &self,
        p: &Principal,
        account: Option<&str>,
    ) -> ServiceResult<Vec<KeyInfo>> {
        let acc = self.managed_account(p, account).await?;
        Ok(self
            .catalog
            .list_access_keys(&acc.id)
            .await?
            .into_iter()
            .map(|k| KeyInfo {
                access_key_id: k.id,
                account: acc.name.clone(),
                status: k.status,
                description: k.description,
                created_ms: k.created_ms,
                policy: k.policy,
            })
            .collect())
    }

    /// Finds a key the caller may manage; refuses the key in use.
    async fn managed_key(&self, p: &Principal, key_id: &str) -> ServiceResult<AccessKey> {
        let k = self
            .catalog
            .access_key(key_id)
            .await?
            .filter(|k| p.admin || k.account_id == p.account_id)
            .ok_or_else(|| ServiceError::not_found(format!("access key {key_id}")))?;
        if k.id == p.key_id {
            return Err(ServiceError::new(
                ErrorKind::InvalidState,
                "refusing to change the key this request is signed with; use another key",
            ));
        }
        Ok(k)
    }

    pub async fn set_key_enabled(
        &self,
        p: &Principal,
        key_id: &str,
        enabled: bool,
    ) -> ServiceResult<()> {
        let k = self.managed_key(p, key_id).await?;
        self.catalog
            .set_access_key_status(&k.id, if enabled { "active" } else { "disabled" })
            .await?;
        self.forget_key(&k.id);
        Ok(())
    }

    /// Limits a key with a RAM-style policy (`None` lifts the limit).
    pub async fn set_key_policy(
        &self,
        p: &Principal,
        key_id: &str,
        doc: Option<serde_json::Value>,
    ) -> ServiceResult<()> {
        if let Some(d) = &doc {
            stowage_core::ram::RamPolicy::parse(d)
                .map_err(|e| ServiceError::invalid(e.to_string()))?;
        }
        let k = self.managed_key(p, key_id).await?;
        self.catalog
            .set_access_key_policy(&k.id, doc.as_ref())
            .await?;
        self.forget_key(&k.id);
        Ok(())
    }

    pub async fn delete_key(&self, p: &Principal, key_id: &str) -> ServiceResult<()> {
        let k = self.managed_key(p, key_id).await?;
        self.catalog.delete_access_key(&k.id).await?;
        self.forget_key(&k.id);
        Ok(())
    }

    // ---- instances ----

    pub async fn add_instance(&self, p: &Principal, n: NewInstance) -> ServiceResult<Instance> {
        if !valid_name(&n.name) {
            return Err(ServiceError::invalid(
                "name: 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        if stowage_engines::engine_for(&n.engine).is_none() {
            return Err(ServiceError::invalid(format!(
                "engine {:?} is not supported (supported: postgresql, mysql, mongodb)",
                n.engine
            )));
        }
        let mut n = n;
        let mongo = n.engine == "mongodb";
        let sharded = !n.shards.is_empty() || n.config.is_some() || n.mongos.is_some();
        if sharded && !mongo {
            return Err(ServiceError::invalid(
                "shards/config/mongos: only for --engine mongodb",
            ));
        }
        // A cluster's replica sets, checked like any connection string.
        let mut cluster = None;
        if sharded {
            if n.uri.is_some() {
                return Err(ServiceError::invalid(
                    "uri: a sharded cluster is given by its shards (--shard, one per shard) and config servers (--config), not by --uri",
                ));
            }
            if n.shards.len() > MAX_SHARDS {
                return Err(ServiceError::invalid(format!(
                    "shards: at most {MAX_SHARDS}"
                )));
            }
            let Some(config) = n.config.as_deref() else {
                return Err(ServiceError::invalid(
                    "config: a sharded cluster needs its config servers' connection string (--config mongodb://…/?replicaSet=cfg)",
                ));
            };
            // Errors name the field ("shards[1]: …"), not "uri".
            let named = |field: String| {
                move |mut e: ServiceError| {
                    let m = e.message.strip_prefix("uri: ").unwrap_or(&e.message);
                    e.message = format!("{field}: {m}");
                    e
                }
            };
            let (config, first) = self
                .checked_mongo_uri(&p.account_id, Some(config))
                .await
                .map_err(named("config".into()))?;
            let mut shards: Vec<String> = Vec::new();
            for (k, u) in n.shards.iter().enumerate() {
                let (u, _) = self
                    .checked_mongo_uri(&p.account_id, Some(u))
                    .await
                    .map_err(named(format!("shards[{k}]")))?;
                if u == config || shards.contains(&u) {
                    return Err(ServiceError::invalid(format!(
                        "shards[{k}]: {u} is given twice (each shard and the config servers once)"
                    )));
                }
                shards.push(u);
            }
            let mongos = match n.mongos.as_deref() {
                Some(m) => Some(
                    self.checked_mongo_uri(&p.account_id, Some(m))
                        .await
                        .map_err(named("mongos".into()))?
                        .0,
                ),
                None => None,
            };
            if shards.is_empty() && !n.check {
                return Err(ServiceError::invalid(
                    "shards: give them (--shard, one per shard), or let the server connect to read them from the config servers (no --no-check)",
                ));
            }
            (n.host, n.port) = first;
            cluster = Some((shards, config, mongos));
        }
        let (ssl_mode, addrs) = if mongo {
            if n.sslmode.is_some() || n.sslrootcert.is_some() {
                return Err(ServiceError::invalid(
                    "sslmode/sslrootcert: PostgreSQL settings; a MongoDB instance takes TLS in its connection string (tls=true, tlsCAFile=…)",
                ));
            }
            if cluster.is_none() {
                let (uri, first) = self
                    .checked_mongo_uri(&p.account_id, n.uri.as_deref())
                    .await?;
                (n.host, n.port) = first;
                n.uri = Some(uri);
            }
            if n.user.len() > 256 {
                return Err(ServiceError::invalid("user: at most 256 characters"));
            }
            check_rate(n.max_rate_kbps)?;
            (None, Vec::new())
        } else {
            if n.uri.is_some() {
                return Err(ServiceError::invalid(
                    "uri: only for --engine mongodb; PostgreSQL takes host, port and user",
                ));
            }
            if n.engine == "mysql" && n.dbname.is_some() {
                return Err(ServiceError::invalid(
                    "dbname: a MySQL backup covers every database of the server; leave it out",
                ));
            }
            let ssl_mode = Self::check_connection(&n)?;
            let addrs = self
                .check_tenant_host(&p.account_id, &n.host, n.port)
                .await?;
            (Some(ssl_mode), addrs)
        };
        let check = n.check;
        let dialect = match n.dialect.as_deref() {
            None if mongo => Dialect::Dds,
            None => Dialect::Rds,
            Some(d) => d
                .parse::<Dialect>()
                .map_err(|e| ServiceError::invalid(e.to_string()))?,
        };
        if !dialect.engines().contains(&n.engine.as_str()) {
            return Err(ServiceError::invalid(format!(
                "dialect {}: its instances are {}, not {} (use the dialect of the {} products)",
                dialect.as_str(),
                dialect.engines().join(" or "),
                n.engine,
                n.engine
            )));
        }
        let id = InstanceId::generate(dialect, &stowage_repo::crypto::random_bytes::<32>());
        let mut inst = Instance {
            id: id.to_string(),
            account_id: p.account_id.clone(),
            name: n.name,
            // A MongoDB instance is a replica set (the check refuses a
            // standalone server: no oplog) or a sharded cluster.
            topology: match (mongo, sharded) {
                (true, true) => "sharded",
                (true, false) => "replica_set",
                _ => "standalone",
            }
            .into(),
            engine: n.engine,
            host: n.host,
            port: n.port,
            username: n.user,
            password_enc: n
                .password
                .filter(|s| !s.is_empty())
                .map(|s| self.secrets.seal(&s)),
            dbname: n.dbname,
            options: match ssl_mode {
                Some(ssl_mode) => serde_json::json!({
                    "dialect": dialect.as_str(),
                    "max_rate_kbps": n.max_rate_kbps,
                    "sslmode": ssl_mode.as_str(),
                    "sslrootcert": n.sslrootcert,
                }),
                None => serde_json::json!({
                    "dialect": dialect.as_str(),
                    "uri": n.uri,
                    "max_rate_kbps": n.max_rate_kbps,
                }),
            },
            created_ms: now_ms(),
        };
        let engine = stowage_engines::engine_for(&inst.engine)
            .ok_or_else(|| ServiceError::internal("engine gone"))?;
        if let Some((mut shards, config, mongos)) = cluster {
            if let serde_json::Value::Object(m) = &mut inst.options {
                m.remove("uri");
                m.insert(
                    "config".into(),
                    serde_json::json!({"id": format!("{id}_config"), "uri": config}),
                );
                m.insert("mongos".into(), mongos.into());
                m.insert("shards".into(), serde_json::json!([]));
            }
            if shards.is_empty() {
                // Read from the cluster; every host it names is checked too.
                let spec = self.conn_spec(&inst)?;
                let found = tokio::task::spawn_blocking(move || engine.list_shards(&spec))
                    .await
                    .map_err(|e| ServiceError::internal(e.to_string()))??;
                if found.len() > MAX_SHARDS {
                    return Err(ServiceError::invalid(format!(
                        "the cluster lists {} shards; at most {MAX_SHARDS}",
                        found.len()
                    )));
                }
                for u in found {
                    let checked = self.checked_mongo_uri(&p.account_id, Some(&u)).await;
                    shards.push(
                        checked
                            .map_err(|e| {
                                ServiceError::invalid(format!(
                                    "a shard the cluster lists ({u}): {}",
                                    e.message
                                ))
                            })?
                            .0,
                    );
                }
            }
            let list: Vec<serde_json::Value> = shards
                .iter()
                .enumerate()
                .map(|(k, u)| serde_json::json!({"id": format!("{id}_{k}"), "uri": u}))
                .collect();
            if let serde_json::Value::Object(m) = &mut inst.options {
                m.insert("shards".into(), list.into());
            }
        }
        let mut spec = self.conn_spec(&inst)?;
        engine.check_options(&spec).map_err(ServiceError::invalid)?;
        if check {
            spec.addrs = addrs;
            let info = tokio::task::spawn_blocking(move || engine.check(&spec))
                .await
                .map_err(|e| ServiceError::internal(e.to_string()))?
                .map_err(|e| {
                    let mut e = ServiceError::from(e);
                    e.message = format!(
                        "{} (the instance was not registered; fix it, or register without the connection check)",
                        e.message
                    );
                    e
                })?;
            // What the server said it runs (the dialects show it before the
            // first backup records its own).
            if let serde_json::Value::Object(m) = &mut inst.options {
                m.insert("server_version".into(), info.version.into());
                if let Some(f) = info.details.get("flavor") {
                    m.insert("server_flavor".into(), f.clone());
                }
            }
        }
        self.catalog.insert_instance(&inst).await?;
        Ok(inst)
    }

    /// Checks how to reach an instance; returns its TLS mode.
    fn check_connection(n: &NewInstance) -> ServiceResult<stowage_engines::tls::TlsMode> {
        if n.host.trim().is_empty() || n.host.len() > 255 || n.host.contains(char::is_whitespace) {
            return Err(ServiceError::invalid("host: a host name or IP address"));
        }
        if n.port == 0 {
            return Err(ServiceError::invalid("port: 1 to 65535"));
        }
        if n.user.is_empty() || n.user.len() > 63 {
            return Err(ServiceError::invalid("user: 1 to 63 characters"));
        }
        check_rate(n.max_rate_kbps)?;
        let ssl_mode = match n.sslmode.as_deref() {
            None => stowage_engines::tls::TlsMode::default(),
            Some(m) => m.parse().map_err(ServiceError::invalid)?,
        };
        if let Some(c) = &n.sslrootcert {
            let path = Path::new(c);
            if !path.is_absolute() && c != stowage_engines::pg::tls::SYSTEM_ROOTS {
                return Err(ServiceError::invalid(
                    "sslrootcert: an absolute path on the server's machine, or \"system\"",
                ));
            }
            stowage_engines::pg::tls::load_roots(path)
                .map_err(|e| ServiceError::invalid(e.message))?;
        } else if ssl_mode.verifies() {
            return Err(ServiceError::invalid(format!(
                "sslmode={} needs sslrootcert (the CA certificate that signed the server's)",
                ssl_mode.as_str()
            )));
        }
        Ok(ssl_mode)
    }

    /// Changes how to reach an instance (host, port, user, password,
    /// database, throttle, TLS); its id, name, engine and dialect stay. The
    /// next backup uses the new settings; a running one is not affected.
    pub async fn update_instance(
        &self,
        p: &Principal,
        id: &str,
        u: InstanceUpdate,
    ) -> ServiceResult<Instance> {
        let mut i = self.instance(p, id).await?;
        if i.engine == "mongodb" {
            return self.update_mongo_instance(i, u).await;
        }
        if u.uri.is_some() {
            return Err(ServiceError::invalid(
                "uri: only for MongoDB instances; PostgreSQL takes host, port and user",
            ));
        }
        let opt = |k: &str| i.options.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let n = NewInstance {
            name: i.name.clone(),
            engine: i.engine.clone(),
            host: u.host.unwrap_or_else(|| i.host.clone()),
            port: u.port.unwrap_or(i.port),
            user: u.user.unwrap_or_else(|| i.username.clone()),
            password: None,
            dbname: u.dbname.or_else(|| i.dbname.clone()),
            dialect: None,
            check: false,
            uri: None,
            shards: Vec::new(),
            config: None,
            mongos: None,
            max_rate_kbps: match u.max_rate_kbps {
                Some(v) => v,
                None => opt("max_rate_kbps").as_u64().map(|v| v as u32),
            },
            sslmode: u
                .sslmode
                .or_else(|| opt("sslmode").as_str().map(str::to_string)),
            sslrootcert: u
                .sslrootcert
                .or_else(|| opt("sslrootcert").as_str().map(str::to_string)),
        };
        let ssl_mode = Self::check_connection(&n)?;
        self.check_tenant_host(&i.account_id, &n.host, n.port)
            .await?;
        if let Some(pw) = u.password {
            i.password_enc = Some(pw)
                .filter(|s| !s.is_empty())
                .map(|s| self.secrets.seal(&s));
        }
        i.host = n.host;
        i.port = n.port;
        i.username = n.user;
        i.dbname = n.dbname;
        if let serde_json::Value::Object(m) = &mut i.options {
            m.insert("max_rate_kbps".into(), n.max_rate_kbps.into());
            m.insert("sslmode".into(), ssl_mode.as_str().into());
            m.insert("sslrootcert".into(), n.sslrootcert.into());
        }
        self.catalog.update_instance(&i).await?;
        Ok(i)
    }

    /// A MongoDB connection string checked (`check_mongo_uri`) with every
    /// host one the account may reach (the driver connects by name: no
    /// pinned addresses for MongoDB); returns it and its first host.
    async fn checked_mongo_uri(
        &self,
        account_id: &str,
        uri: Option<&str>,
    ) -> ServiceResult<(String, (String, u16))> {
        let (uri, hosts) = check_mongo_uri(uri)?;
        for (h, port) in &hosts {
            self.check_tenant_host(account_id, h, *port).await?;
        }
        let first = hosts[0].clone();
        Ok((uri, first))
    }

    /// A MongoDB instance's connection string, user, password and throttle.
    async fn update_mongo_instance(
        &self,
        mut i: Instance,
        u: InstanceUpdate,
    ) -> ServiceResult<Instance> {
        if u.host.is_some()
            || u.port.is_some()
            || u.dbname.is_some()
            || u.sslmode.is_some()
            || u.sslrootcert.is_some()
        {
            return Err(ServiceError::invalid(
                "a MongoDB instance is reached through its connection string: change uri (hosts, replicaSet, authSource, tls options), user, password or max_rate_kbps",
            ));
        }
        if let Some(uri) = u.uri {
            if i.topology == "sharded" {
                return Err(ServiceError::invalid(
                    "uri: a sharded cluster's shards and config servers cannot be changed; register the cluster again",
                ));
            }
            let (uri, first) = self.checked_mongo_uri(&i.account_id, Some(&uri)).await?;
            (i.host, i.port) = first;
            if let serde_json::Value::Object(m) = &mut i.options {
                m.insert("uri".into(), uri.into());
            }
        }
        if let Some(user) = u.user {
            if user.len() > 256 {
                return Err(ServiceError::invalid("user: at most 256 characters"));
            }
            i.username = user;
        }
        if let Some(pw) = u.password {
            i.password_enc = Some(pw)
                .filter(|s| !s.is_empty())
                .map(|s| self.secrets.seal(&s));
        }
        if let Some(r) = u.max_rate_kbps {
            check_rate(r)?;
            if let serde_json::Value::Object(m) = &mut i.options {
                m.insert("max_rate_kbps".into(), r.into());
            }
        }
        let engine = stowage_engines::engine_for(&i.engine)
            .ok_or_else(|| ServiceError::internal("engine gone"))?;
        engine
            .check_options(&self.conn_spec(&i)?)
            .map_err(ServiceError::invalid)?;
        self.catalog.update_instance(&i).await?;
        Ok(i)
    }

    /// By id or by name.
    pub async fn instance(&self, p: &Principal, id: &str) -> ServiceResult<Instance> {
        if id.is_empty() || id.len() > 64 {
            return Err(ServiceError::invalid("instance: an id like rm-… or a name"));
        }
        self.catalog
            .instance(&p.account_id, id)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("instance {id}")))
    }

    pub async fn list_instances(&self, p: &Principal) -> ServiceResult<Vec<Instance>> {
        Ok(self.catalog.list_instances(&p.account_id).await?)
    }

    pub async fn remove_instance(&self, p: &Principal, id: &str) -> ServiceResult<()> {
        let i = self.instance(p, id).await?;
        Ok(self.catalog.delete_instance(&p.account_id, &i.id).await?)
    }

    fn conn_spec(&self, i: &Instance) -> ServiceResult<stowage_engines::ConnSpec> {
        Ok(stowage_engines::ConnSpec {
            host: i.host.clone(),
            port: i.port,
            user: i.username.clone(),
            password: i
                .password_enc
                .as_deref()
                .map(|p| self.secrets.open(p))
                .transpose()?,
            dbname: i.dbname.clone(),
            connect_timeout: std::time::Duration::from_secs(10),
            // Instances registered before TLS support: prefer.
            tls_mode: i
                .options
                .get("sslmode")
                .and_then(|v| v.as_str())
                .and_then(|m| m.parse().ok())
                .unwrap_or_default(),
            tls_root_cert: i
                .options
                .get("sslrootcert")
                .and_then(|v| v.as_str())
                .map(std::path::PathBuf::from),
            // MongoDB: the stored string (never with credentials; the
            // engine adds them when it connects).
            uri: i
                .options
                .get("uri")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            options: i.options.clone(),
            addrs: Vec::new(),
            host_check: self.host_check(&i.account_id),
        })
    }

    /// The `--tenant-allow` rules as a check an engine runs on servers it
    /// learns after connecting (a replica set's members); `None` when the
    /// account may reach any server (no rules, or the admin account).
    fn host_check(&self, account_id: &str) -> Option<stowage_engines::HostCheck> {
        if self.tenant_allow.is_empty() || self.admin_account.get().is_some_and(|a| a == account_id)
        {
            return None;
        }
        let rules = self.tenant_allow.clone();
        Some(stowage_engines::HostCheck(Arc::new(
            move |host: &str, port: u16| {
                if netpolicy::host_allowed(&rules, host) {
                    return Ok(());
                }
                let ips: Vec<std::net::IpAddr> =
                    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                        .map(|it| it.map(|a| a.ip()).collect())
                        .unwrap_or_default();
                if netpolicy::addrs_allowed(&rules, &ips) {
                    Ok(())
                } else {
                    Err(format!(
                        "host {host} is not one this server lets accounts reach; the operator allows hosts and networks with `serve --tenant-allow`"
                    ))
                }
            },
        )))
    }

    /// Connects to the instance and reports what it finds.
    pub async fn check_instance(
        &self,
        p: &Principal,
        id: &str,
    ) -> ServiceResult<stowage_engines::ServerInfo> {
        let i = self.instance(p, id).await?;
        let addrs = self
            .check_tenant_host(&i.account_id, &i.host, i.port)
            .await?;
        let mut spec = self.conn_spec(&i)?;
        spec.addrs = addrs;
        let engine = stowage_engines::engine_for(&i.engine)
            .ok_or_else(|| ServiceError::internal("engine gone"))?;
        Ok(tokio::task::spawn_blocking(move || engine.check(&spec))
            .await
            .map_err(|e| ServiceError::internal(e.to_string()))??)
    }

    // ---- backup tasks ----

    /// Creates a backup task and starts it at once. A second backup of an
    /// instance while one is active is refused (`InstanceBusy`).
    pub async fn start_backup(
        self: &Arc<Self>,
        p: &Principal,
        instance: &str,
        mode: TaskMode,
        r: BackupRequest,
    ) -> ServiceResult<Task> {
        let BackupRequest {
            client_token,
            retention_days,
            comment,
            full,
            method,
        } = r;
        if let Some(d) = retention_days {
            stowage_core::BackupPolicy::check_retention(d)
                .map_err(|e| ServiceError::invalid(e.to_string()))?;
        }
        if let Some(c) = &comment
            && (c.chars().count() > 256 || c.chars().any(char::is_control))
        {
            return Err(ServiceError::invalid(
                "comment: at most 256 characters, no control characters",
            ));
        }
        if let Some(t) = &client_token
            && (t.is_empty() || t.len() > 64 || !t.is_ascii())
        {
            return Err(ServiceError::invalid(
                "client token: 1 to 64 ASCII characters",
            ));
        }
        if self.is_shutting_down() {
            return Err(ServiceError::new(
                ErrorKind::InvalidState,
                "the server is shutting down",
            ));
        }
        let i = self.instance(p, instance).await?;
        let engine = stowage_engines::engine_for(&i.engine);
        let method = match method {
            None => engine.map_or("", |e| e.method()).to_string(),
            Some(m) => {
                if !engine.is_some_and(|e| e.takes_method(&m)) {
                    return Err(ServiceError::invalid(
                        format!(
                            "method: a {} instance is backed up with method {}",
                            i.engine,
                            engine.map_or("", |e| e.method())
                        ) + if i.engine == "mysql" {
                            " or physical"
                        } else {
                            ""
                        },
                    ));
                }
                // The physical method reads the server's files on this
                // machine, where the server says they are: the operator's
                // call, never a tenant's.
                if m == "physical" && i.engine == "mysql" && !p.admin {
                    return Err(ServiceError::new(
                        ErrorKind::Forbidden,
                        "method physical: it reads the server's data directory on Stowage's machine; only the operator's (admin) keys may ask for it",
                    ));
                }
                m
            }
        };
        let created = self
            .catalog
            .create_task(
                &NewTask {
                    lease_until_ms: self.lease_until(),
                    client_token,
                    node: Some(self.node.clone()),
                    retention_days,
                    comment,
                    params: if full {
                        serde_json::json!({"full": true})
                    } else {
                        serde_json::json!({})
                    },
                    ..NewTask::backup(&p.account_id, &i.id, mode, &method)
                },
                now_ms(),
            )
            .await;
        let task = match created {
            Ok(t) => t,
            Err(stowage_catalog::CatalogError::InstanceBusy(_)) => {
                return Err(self.busy(p, &i.id).await);
            }
            Err(e) => return Err(e.into()),
        };
        // A retry with the same client token gets the first task back; it
        // runs where it was created (another node holds it under its lease).
        if task.state == TaskState::Pending && task.node.as_deref() == Some(self.node.as_str()) {
            self.launch(task.clone(), i).await?;
        }
        Ok(task)
    }

    /// `InstanceBusy`, naming the task that holds the instance.
    async fn busy(&self, p: &Principal, instance_id: &str) -> ServiceError {
        let f = TaskFilter {
            // The kinds that hold an instance's slot.
            kinds: vec![TaskKind::Backup, TaskKind::Restore],
            instance_id: Some(instance_id.to_string()),
            states: TaskState::ALL
                .into_iter()
                .filter(|s| s.is_active())
                .collect(),
            limit: Some(5),
            ..Default::default()
        };
        let holder = self
            .catalog
            .list_tasks(&p.account_id, &f)
            .await
            .ok()
            .and_then(|v| {
                v.into_iter()
                    .find(|t| t.scheduled_ms.is_none() || t.state != TaskState::Pending)
            });
        ServiceError::new(
            ErrorKind::InstanceBusy,
            match holder {
                Some(t) => format!(
                    "instance {instance_id} already has {} task {} ({}) in progress; follow it with `stowage task watch {}` or cancel it",
                    t.kind.as_str(),
                    t.id,
                    t.state,
                    t.id
                ),
                None => format!(
                    "instance {instance_id} already has a task in progress; wait for it or cancel it"
                ),
            },
        )
    }

    /// Runs a pending task that holds its instance's active slot (once). A
    /// task that cannot even start is marked failed, so it never keeps the
    /// slot.
    async fn launch(self: &Arc<Self>, task: Task, i: Instance) -> ServiceResult<()> {
        let spec = match self
            .check_tenant_host(&i.account_id, &i.host, i.port)
            .await
            .and_then(|addrs| {
                let mut s = self.conn_spec(&i)?;
                s.addrs = addrs;
                Ok(s)
            }) {
            Ok(s) => s,
            Err(e) => {
                let u = stowage_catalog::StateUpdate {
                    error: Some(format!("could not start: {}", e.message)),
                    ..Default::default()
                };
                if let Err(e2) = self
                    .catalog
                    .set_task_state(task.id, TaskState::Failed, u, now_ms())
                    .await
                {
                    tracing::error!(task = task.id, error = %e2, "could not record a task that failed to start");
                }
                return Err(e);
            }
        };
        let live = {
            let mut live_tasks = self.live_tasks.lock().expect("lock");
            if live_tasks.contains_key(&task.id) {
                return Ok(());
            }
            let live = Arc::new(LiveTask::default());
            live_tasks.insert(task.id, live.clone());
            live
        };
        self.hold(&task);
        let svc = self.clone();
        tokio::spawn(async move { runner::run_backup(svc, task, i, spec, live).await });
        Ok(())
    }

    fn overlay(&self, mut t: Task) -> Task {
        if let Some(l) = self.live_tasks.lock().expect("lock").get(&t.id)
            && !t.state.is_terminal()
        {
            // A task with parts shows their sum, as the runner records it.
            let p = l.overall_progress();
            t.bytes_done = p.bytes_done.max(t.bytes_done);
            t.bytes_total = p.bytes_total.max(t.bytes_total);
            t.bytes_stored = p.bytes_stored.max(t.bytes_stored);
        }
        t
    }

    /// A task of any kind (or a part of one) of the caller's account.
    pub async fn task(&self, p: &Principal, id: i64) -> ServiceResult<Task> {
        let t = self
            .catalog
            .task(&p.account_id, id)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("task {id}")))?;
        Ok(self.overlay(t))
    }

    /// The parts of a task (empty for a task without parts).
    pub async fn task_parts(&self, p: &Principal, t: &Task) -> ServiceResult<Vec<Task>> {
        if t.account_id != p.account_id {
            return Err(ServiceError::not_found(format!("task {}", t.id)));
        }
        Ok(self
            .catalog
            .task_parts(t.id)
            .await?
            .into_iter()
            .map(|t| self.overlay(t))
            .collect())
    }

    pub async fn list_tasks(&self, p: &Principal, f: &TaskFilter) -> ServiceResult<Vec<Task>> {
        Ok(self
            .catalog
            .list_tasks(&p.account_id, f)
            .await?
            .into_iter()
            .map(|t| self.overlay(t))
            .collect())
    }

    /// How many of the caller's tasks `f` matches.
    pub async fn count_tasks(&self, p: &Principal, f: &TaskFilter) -> ServiceResult<u64> {
        Ok(self.catalog.count_tasks(&p.account_id, f).await?)
    }

    /// Asks a task to stop. A task past `running` finishes anyway.
    pub async fn cancel_task(&self, p: &Principal, id: i64) -> ServiceResult<Task> {
        let t = self.task(p, id).await?;
        if let Some(parent) = t.parent_id {
            return Err(ServiceError::new(
                ErrorKind::InvalidState,
                format!("task {id} is a part of task {parent}; cancel task {parent}"),
            ));
        }
        if t.state.is_terminal() {
            return Err(ServiceError::new(
                ErrorKind::InvalidState,
                format!("task {id} is already {}", t.state),
            ));
        }
        if t.state == TaskState::Finishing {
            return Err(ServiceError::new(
                ErrorKind::InvalidState,
                format!("task {id} is finishing and can no longer be cancelled"),
            ));
        }
        let live = self.live_tasks.lock().expect("lock").get(&id).cloned();
        match live {
            Some(l) => l.cancel(),
            // Running on another node: its holder reads the request when
            // it renews the lease.
            None if t.lease_epoch > 0 && self.lease.is_some() => {
                self.catalog.request_cancel(&p.account_id, id).await?;
            }
            // An automated task still waiting for its window.
            None if t.state == TaskState::Pending && t.scheduled_ms.is_some() => {
                self.catalog
                    .set_task_state(
                        id,
                        TaskState::Cancelled,
                        stowage_catalog::StateUpdate {
                            error: Some("cancelled before it started".into()),
                            ..Default::default()
                        },
                        now_ms(),
                    )
                    .await?;
            }
            None => {}
        }
        self.task(p, id).await
    }

    // ---- backup sets ----

    pub async fn set(&self, p: &Principal, id: i64) -> ServiceResult<BackupSet> {
        self.catalog
            .backup_set(&p.account_id, id)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("backup set {id}")))
    }

    /// Every set of the account (of one instance, by id or name), newest first.
    pub async fn list_sets(
        &self,
        p: &Principal,
        instance: Option<&str>,
    ) -> ServiceResult<Vec<BackupSet>> {
        self.list_sets_page(p, instance, None, None).await
    }

    /// One page of sets, newest first: ids below `before_id`, at most `limit`.
    pub async fn list_sets_page(
        &self,
        p: &Principal,
        instance: Option<&str>,
        before_id: Option<i64>,
        limit: Option<u32>,
    ) -> ServiceResult<Vec<BackupSet>> {
        let instance_id = match instance {
            Some(i) => Some(self.instance(p, i).await?.id),
            None => None,
        };
        let f = stowage_catalog::SetFilter {
            instance_id,
            before_id,
            limit,
        };
        Ok(self.catalog.list_backup_sets(&p.account_id, &f).await?)
    }

    /// Forgets a set; its data is reclaimed by the next gc.
    pub async fn delete_set(&self, p: &Principal, id: i64) -> ServiceResult<()> {
        let s = self.set(p, id).await?;
        self.catalog.delete_backup_set(&p.account_id, id).await?;
        let repo = self.repo.clone();
        let deleted = tokio::task::spawn_blocking(move || repo.delete_snapshot(&s.snapshot_id))
            .await
            .map_err(|e| ServiceError::internal(e.to_string()));
        // Even when the snapshot's deletion failed: the gc deletes a
        // snapshot no set names once its task has ended.
        self.note_gc_needed().await;
        deleted??;
        Ok(())
    }

    /// Records in the catalog that data waits to be reclaimed (a set was
    /// deleted, a gc failed): the node that schedules starts a gc, whichever
    /// node deleted. A failure to record it is logged: the next deletion or
    /// a manual gc reclaims the space.
    pub(crate) async fn note_gc_needed(&self) {
        if let Err(e) = self.catalog.set_setting(GC_NEEDED, "1").await {
            tracing::warn!(error = %e, "could not record that a gc is needed");
        }
    }

    /// The repository manifest of a set (file list, engine facts).
    pub async fn set_manifest(
        &self,
        p: &Principal,
        id: i64,
    ) -> ServiceResult<stowage_core::manifest::Manifest> {
        let s = self.set(p, id).await?;
        let repo = self.repo.clone();
        tokio::task::spawn_blocking(move || repo.read_snapshot(&s.snapshot_id))
            .await
            .map_err(|e| ServiceError::internal(e.to_string()))?
            .map_err(Into::into)
    }

    // ---- jobs: restore, verify, gc ----

    /// Starts restoring a set into a folder on the server's machine. The
    /// target is resolved and checked against the restore roots and the
    /// protected folders (`restore_target`); a non-empty target needs
    /// `force` and must hold nothing that may never be removed.
    pub async fn start_restore(
        self: &Arc<Self>,
        p: &Principal,
        set_id: i64,
        target: &str,
        force: bool,
    ) -> ServiceResult<Task> {
        let set = self.set(p, set_id).await?;
        if !self
            .restoring
            .lock()
            .expect("lock")
            .insert(p.account_id.clone())
        {
            return Err(ServiceError::new(
                ErrorKind::InvalidState,
                "a restore of this account is running; wait for it to end (`stowage job list --kind restore --state running`)",
            ));
        }
        let slot = RestoreSlot {
            svc: self.clone(),
            account: p.account_id.clone(),
        };
        let caller = restore_target::Caller {
            account_id: p.account_id.clone(),
            admin: p.admin,
        };
        let roots = self.restore_roots.clone();
        let requested = target.to_string();
        let c = caller.clone();
        let target = tokio::task::spawn_blocking(move || -> ServiceResult<PathBuf> {
            let real = roots.resolve(&c, &requested)?;
            if real.exists() && !real.is_dir() {
                return Err(ServiceError::invalid(format!(
                    "target {} exists and is not a folder",
                    real.display()
                )));
            }
            let non_empty = std::fs::read_dir(&real)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if non_empty && !force {
                return Err(ServiceError::new(
                    ErrorKind::TargetNotEmpty,
                    format!(
                        "restore target {} is not empty; choose an empty folder, or force to replace its contents",
                        real.display()
                    ),
                ));
            }
            if non_empty {
                restore_target::check_clearable(&real)?;
            }
            Ok(real)
        })
        .await
        .map_err(|e| ServiceError::internal(e.to_string()))??;
        let job = self
            .catalog
            .create_task(
                &NewTask {
                    lease_until_ms: self.lease_until(),
                    params: serde_json::json!({"target": target, "force": force}),
                    node: Some(self.node.clone()),
                    ..NewTask::of_kind(&p.account_id, TaskKind::Restore, Some(set_id))
                },
                now_ms(),
            )
            .await?;
        self.spawn_job(
            job.clone(),
            runner::JobWork::Restore {
                set: Box::new(set),
                target,
                force,
                caller,
                slot,
            },
        );
        Ok(job)
    }

    /// Starts restoring a set into a running server: a registered instance
    /// of the set's engine owned by the caller (never an address the
    /// request names), optionally under renamed databases; a database the
    /// target holds already is refused unless `drop`.
    pub async fn start_restore_into(
        self: &Arc<Self>,
        p: &Principal,
        set_id: i64,
        instance: &str,
        opts: stowage_engines::RestoreIntoOptions,
    ) -> ServiceResult<Task> {
        let stowage_engines::RestoreIntoOptions {
            rename,
            drop,
            part,
            accounts,
        } = opts;
        let set = self.set(p, set_id).await?;
        let i = self.instance(p, instance).await?;
        // The set's shape against the target's, before anything runs.
        let cluster_set = match &set.consistent_point {
            Some(stowage_core::ConsistentPoint::ClusterTime { parts, .. }) => Some(parts.clone()),
            _ => None,
        };
        let target_sharded = i.topology == "sharded";
        match (&cluster_set, target_sharded, &part) {
            (Some(parts), false, None) => {
                return Err(ServiceError::invalid(format!(
                    "set {set_id} is of a sharded cluster ({} parts: {}): restore it into a sharded instance with as many shards, or one part (part) into a replica set",
                    parts.len(),
                    parts.join(", ")
                )));
            }
            (Some(parts), true, None) => {
                let set_shards = parts.iter().filter(|p| !p.ends_with("_config")).count();
                let target_shards = i
                    .options
                    .get("shards")
                    .and_then(|v| v.as_array())
                    .map_or(0, |a| a.len());
                if set_shards != target_shards {
                    return Err(ServiceError::invalid(format!(
                        "set {set_id} has {set_shards} shards, instance {} {target_shards}: restore into a cluster with as many shards, or part by part (part)",
                        i.id
                    )));
                }
            }
            (None, true, _) => {
                return Err(ServiceError::invalid(format!(
                    "set {set_id} is of a replica set: restore it into a replica set, not into sharded instance {}",
                    i.id
                )));
            }
            _ => {}
        }
        if let Some(want) = &part {
            let parts = match &set.consistent_point {
                Some(stowage_core::ConsistentPoint::ClusterTime { parts, .. }) => parts.clone(),
                _ => {
                    return Err(ServiceError::invalid(format!(
                        "part: set {set_id} is of a replica set (one part); parts are for sets of sharded clusters"
                    )));
                }
            };
            if !parts.contains(want) {
                return Err(ServiceError::invalid(format!(
                    "part: set {set_id} has no part {want:?} (its parts: {})",
                    parts.join(", ")
                )));
            }
        }
        if i.engine != set.engine {
            return Err(ServiceError::invalid(format!(
                "set {set_id} is a {} backup; instance {} is {}",
                set.engine, i.id, i.engine
            )));
        }
        if set.engine == "postgresql" {
            return Err(ServiceError::invalid(
                "a PostgreSQL set restores into a folder (target), not into a running server",
            ));
        }
        if accounts && set.engine != "mysql" {
            return Err(ServiceError::invalid(format!(
                "accounts: only MySQL sets carry user accounts; set {set_id} is a {} backup",
                set.engine
            )));
        }
        if set.method == "physical" && set.engine == "mysql" {
            return Err(ServiceError::invalid(
                "a physical MySQL set restores into a folder (--target): the folder is then a data directory to start mariadbd on",
            ));
        }
        let valid_db = |n: &str| {
            !n.is_empty() && n.len() <= 63 && !n.contains(['/', '\\', '.', ' ', '"', '$', '\0'])
        };
        for (a, b) in &rename {
            if !valid_db(a) || !valid_db(b) {
                return Err(ServiceError::invalid(format!(
                    "rename {a:?}={b:?}: database names are 1 to 63 characters without / \\ . space \" $"
                )));
            }
        }
        let addrs = self
            .check_tenant_host(&i.account_id, &i.host, i.port)
            .await?;
        let mut spec = self.conn_spec(&i)?;
        spec.addrs = addrs;
        // The target instance's slot is held for the restore: no backup of
        // a half-restored server, no two restores into one server.
        let created = self
            .catalog
            .create_task(
                &NewTask {
                    lease_until_ms: self.lease_until(),
                    instance_id: Some(i.id.clone()),
                    params: serde_json::json!({"into": i.id, "rename": rename, "drop": drop, "part": part, "accounts": accounts}),
                    node: Some(self.node.clone()),
                    ..NewTask::of_kind(&p.account_id, TaskKind::Restore, Some(set_id))
                },
                now_ms(),
            )
            .await;
        let job = match created {
            Ok(t) => t,
            Err(stowage_catalog::CatalogError::InstanceBusy(_)) => {
                return Err(self.busy(p, &i.id).await);
            }
            Err(e) => return Err(e.into()),
        };
        self.spawn_job(
            job.clone(),
            runner::JobWork::RestoreInto {
                set: Box::new(set),
                spec: Box::new(spec),
                opts: stowage_engines::RestoreIntoOptions {
                    rename,
                    drop,
                    part,
                    accounts,
                },
            },
        );
        Ok(job)
    }

    /// Verifies the whole repository (admin only), or with `set` only the
    /// packs that set needs (the set's owner).
    pub async fn start_verify(
        self: &Arc<Self>,
        p: &Principal,
        set: Option<i64>,
    ) -> ServiceResult<Task> {
        let snapshot = match set {
            None => {
                Self::require_admin_for(
                    p,
                    "verifying the whole repository (use a set id to verify one of your sets)",
                )?;
                None
            }
            Some(id) => Some(self.set(p, id).await?.snapshot_id),
        };
        let job = self
            .catalog
            .create_task(
                &NewTask {
                    lease_until_ms: self.lease_until(),
                    node: Some(self.node.clone()),
                    ..NewTask::of_kind(&p.account_id, TaskKind::Verify, set)
                },
                now_ms(),
            )
            .await?;
        self.spawn_job(job.clone(), runner::JobWork::Verify { snapshot });
        Ok(job)
    }

    /// Reclaims unused repository space: acts on every account's data, so
    /// admin only.
    pub async fn start_gc(self: &Arc<Self>, p: &Principal) -> ServiceResult<Task> {
        Self::require_admin_for(p, "gc, which acts on the whole shared repository,")?;
        let job = self
            .catalog
            .create_task(
                &NewTask {
                    lease_until_ms: self.lease_until(),
                    node: Some(self.node.clone()),
                    ..NewTask::of_kind(&p.account_id, TaskKind::Gc, None)
                },
                now_ms(),
            )
            .await?;
        self.spawn_job(job.clone(), runner::JobWork::Gc);
        Ok(job)
    }

    /// Packages one part of a set (default: its only part, or PostgreSQL's
    /// data directory) into a file served by an expiring link.
    pub async fn start_download(
        self: &Arc<Self>,
        p: &Principal,
        set_id: i64,
        part: Option<String>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> ServiceResult<Task> {
        let set = self.set(p, set_id).await?;
        if let Some(part) = &part
            && (part.is_empty()
                || part.len() > 128
                || !part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(ServiceError::invalid(
                "part: 1 to 128 letters, digits, '-', '_' or '.'",
            ));
        }
        let job = self
            .catalog
            .create_task(
                &NewTask {
                    lease_until_ms: self.lease_until(),
                    node: Some(self.node.clone()),
                    params: {
                        let mut m = extra;
                        m.insert("part".into(), part.clone().into());
                        m.insert("instance".into(), set.instance_id.clone().into());
                        serde_json::Value::Object(m)
                    },
                    // Listed with the instance; a download holds no slot.
                    instance_id: Some(set.instance_id.clone()),
                    ..NewTask::of_kind(&p.account_id, TaskKind::Download, Some(set_id))
                },
                now_ms(),
            )
            .await?;
        self.spawn_job(
            job.clone(),
            runner::JobWork::Download {
                set: Box::new(set),
                part,
            },
        );
        Ok(job)
    }

    /// A finished download task's link (path and query) and when it expires
    /// (Unix seconds); `None` while it is not finished or once it expired.
    pub fn download_link(&self, t: &Task) -> Option<(String, i64)> {
        if t.kind != TaskKind::Download || t.state != TaskState::Finished {
            return None;
        }
        let file = t.result.as_ref()?.get("file")?.as_str()?;
        let expires = t.finished_ms? / 1000 + self.downloads.link_secs() as i64;
        (expires >= now_ms() / 1000).then(|| (self.downloads.link(t.id, file, expires), expires))
    }

    /// A download link for each `(set id, part, file)` of the caller's
    /// (`file`: the part's export file, `stowage_engines::export_file_name`), to show
    /// with a backup listing: a finished download task's link while it works
    /// for at least ten more minutes, else an on-demand set link (packaged
    /// as it is fetched; see `downloads`). Unix-second expiries with them.
    pub async fn backup_links(
        &self,
        p: &Principal,
        wanted: &[(i64, String, String)],
    ) -> ServiceResult<Vec<(String, i64)>> {
        let done = if wanted.is_empty() {
            Vec::new()
        } else {
            // The finished downloads of the listed sets only.
            let f = TaskFilter {
                kinds: vec![TaskKind::Download],
                states: vec![TaskState::Finished],
                set_ids: wanted.iter().map(|(set, _, _)| *set).collect(),
                limit: Some(1000),
                ..Default::default()
            };
            self.list_tasks(p, &f).await?
        };
        let now = now_ms() / 1000;
        Ok(wanted
            .iter()
            .map(|(set, part, file)| {
                done.iter()
                    .filter(|t| {
                        t.set_id == Some(*set)
                            && t.result.as_ref().and_then(|r| r.get("part"))
                                == Some(&serde_json::Value::from(part.as_str()))
                    })
                    .filter_map(|t| self.download_link(t))
                    .find(|(_, expires)| *expires > now + 600)
                    .unwrap_or_else(|| {
                        let expires = now + self.downloads.link_secs() as i64;
                        let link = self.downloads.set_link(&p.account_id, *set, file, expires);
                        (link, expires)
                    })
            })
            .collect())
    }

    /// The set and part an on-demand set link names, if the link is valid
    /// and the set still exists (an error only when the catalog fails).
    pub async fn open_set_link(
        &self,
        account: &str,
        set: i64,
        file: &str,
        expires: i64,
        sig: &str,
    ) -> ServiceResult<Option<(BackupSet, String)>> {
        let Some(part) =
            self.downloads
                .open_set_link(account, set, file, expires, sig, now_ms() / 1000)
        else {
            return Ok(None);
        };
        // The file's format is the set's engine's (a signed name always
        // is; checked so a file is never served under another's type).
        Ok(self
            .catalog
            .backup_set(account, set)
            .await?
            .filter(|s| export_file_name(&s.engine, &part) == file)
            .map(|s| (s, part)))
    }

    /// The set and part behind a download task's link (already checked:
    /// its signature is the permission, no account asked) when this node
    /// does not hold the file: another node packaged it. `None` unless the
    /// task is a finished download of that file whose set still exists.
    pub async fn task_link_source(
        &self,
        task: i64,
        file: &str,
    ) -> ServiceResult<Option<(BackupSet, String)>> {
        let Some(t) = self.catalog.task_by_id(task).await? else {
            return Ok(None);
        };
        let r = t.result.as_ref();
        let (Some(set_id), Some(part)) = (
            t.set_id,
            r.and_then(|r| r.get("part")).and_then(|p| p.as_str()),
        ) else {
            return Ok(None);
        };
        if t.kind != TaskKind::Download
            || t.state != TaskState::Finished
            || r.and_then(|r| r.get("file")).and_then(|f| f.as_str()) != Some(file)
        {
            return Ok(None);
        }
        let part = part.to_string();
        Ok(self
            .catalog
            .backup_set(&t.account_id, set_id)
            .await?
            .filter(|s| export_file_name(&s.engine, &part) == file)
            .map(|s| (s, part)))
    }

    /// Opens one part of a set for export (blocking: reads the manifest).
    pub fn open_export(
        &self,
        set: &BackupSet,
        part: &str,
    ) -> Result<runner::PartExport, stowage_engines::EngineError> {
        runner::PartExport::open(self, set, Some(part))
    }

    /// Deletes download files whose links expired.
    pub fn clean_downloads(&self) -> usize {
        self.downloads.clean_expired(now_ms() / 1000)
    }

    fn spawn_job(self: &Arc<Self>, job: Task, work: runner::JobWork) {
        let live = Arc::new(LiveTask::default());
        self.live_tasks
            .lock()
            .expect("lock")
            .insert(job.id, live.clone());
        self.hold(&job);
        let svc = self.clone();
        tokio::spawn(async move { runner::run_job(svc, job, work, live).await });
    }

    pub fn repository(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// When a lease given now ends (`None`: no leases, one node), by the
    /// catalog's clock.
    pub(crate) fn lease_until(&self) -> Option<i64> {
        self.lease
            .map(|d| self.catalog_now_ms() + d.as_millis() as i64)
    }

    /// Now by the catalog's clock (as last measured; this machine's clock
    /// with one node).
    pub fn catalog_now_ms(&self) -> i64 {
        now_ms()
            + self
                .clock_offset_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Measures how far the catalog's clock is from this machine's (half
    /// the round trip taken as the reading's moment).
    pub async fn measure_catalog_clock(&self) -> ServiceResult<i64> {
        if self.lease.is_none() {
            return Ok(0);
        }
        let t0 = now_ms();
        let db = self.catalog.clock_ms().await?;
        let t1 = now_ms();
        let offset = db - (t0 + t1) / 2;
        let before = self
            .clock_offset_ms
            .swap(offset, std::sync::atomic::Ordering::Relaxed);
        if (offset - before).abs() > 1_000 {
            tracing::warn!(
                offset_ms = offset,
                "this machine's clock differs from the catalog's; leases follow the catalog's"
            );
        }
        Ok(offset)
    }

    /// Records the lease this node runs `t` under.
    fn hold(&self, t: &Task) {
        if self.lease.is_some() && t.lease_epoch > 0 {
            let now = std::time::Instant::now();
            self.leases.lock().expect("lock").insert(
                t.id,
                Held {
                    epoch: t.lease_epoch,
                    renewed: now,
                    tried: now,
                },
            );
        }
    }

    /// The lease epoch this node holds on task `id`, if any.
    pub(crate) fn lease_of(&self, id: i64) -> Option<i64> {
        self.leases.lock().expect("lock").get(&id).map(|h| h.epoch)
    }

    pub(crate) fn release(&self, id: i64) {
        self.leases.lock().expect("lock").remove(&id);
    }

    /// [`Service::renew`] when a quarter lease has passed since this node
    /// last tried to renew its lease on `id` (the runners call it as often
    /// as they like); true when nothing was due.
    pub(crate) async fn renew_if_due(&self, id: i64, live: &LiveTask) -> bool {
        let Some(lease) = self.lease else {
            return true;
        };
        {
            let mut m = self.leases.lock().expect("lock");
            let Some(h) = m.get_mut(&id) else {
                return true;
            };
            if h.tried.elapsed() < lease / 4 {
                return true;
            }
            h.tried = std::time::Instant::now();
        }
        self.renew(id, live).await
    }

    /// Extends this node's lease on `id` while its work runs: false once
    /// the lease was taken over by another node (the work must stop). A
    /// cancel asked through another node cancels `live`.
    pub(crate) async fn renew(&self, id: i64, live: &LiveTask) -> bool {
        let (Some(epoch), Some(until)) = (self.lease_of(id), self.lease_until()) else {
            return true;
        };
        match self.catalog.renew_lease(id, epoch, until).await {
            Ok(Some(cancel)) => {
                if let Some(h) = self.leases.lock().expect("lock").get_mut(&id) {
                    h.renewed = std::time::Instant::now();
                }
                if cancel && !live.is_cancelled() {
                    tracing::info!(task = id, "cancel asked through another node");
                    live.cancel();
                }
                true
            }
            Ok(None) => {
                if !live.is_cancelled() {
                    tracing::warn!(
                        task = id,
                        epoch,
                        "lease lost: another node took the task over; stopping this attempt"
                    );
                    live.cancel();
                }
                false
            }
            // The catalog unreachable: keep working a while; once the lease
            // may be about to expire (another node may take the task over),
            // stop, so two attempts never run for long side by side.
            Err(e) => {
                let since = self
                    .leases
                    .lock()
                    .expect("lock")
                    .get(&id)
                    .map(|h| h.renewed.elapsed());
                let lease = self.lease.unwrap_or_default();
                if since.is_some_and(|s| s > lease * 3 / 4) {
                    tracing::warn!(task = id, error = %e, "the task's lease could not be renewed for most of its time; stopping this attempt");
                    live.cancel();
                    return false;
                }
                tracing::warn!(task = id, error = %e, "could not renew the task's lease");
                true
            }
        }
    }

    /// Takes over, one at a time, the tasks whose lease expired (their node
    /// died or was cut off) and runs them here: a backup, verify, gc or
    /// download again from the start as a new attempt of the same task; a
    /// restore fails (its target may be half-written, and a folder target
    /// is on the other node's machine).
    pub fn spawn_lease_keeper(self: &Arc<Self>) {
        let Some(lease) = self.lease else {
            return;
        };
        let svc = self.clone();
        tokio::spawn(async move {
            let every = (lease / 4).max(std::time::Duration::from_millis(250));
            loop {
                tokio::time::sleep(every).await;
                if svc.is_shutting_down() {
                    break;
                }
                if let Err(e) = svc.measure_catalog_clock().await {
                    tracing::warn!(error = %e.message, "could not read the catalog's clock");
                }
                // Counted as running again if the catalog lost its session;
                // a key rotation may have run meanwhile: a node with the
                // old key must not seal another secret.
                match svc.catalog.join_as_node().await {
                    Ok(()) => match svc
                        .catalog
                        .setting_or_insert("server_key_check", svc.secrets.check_value())
                        .await
                    {
                        Ok(v) if v != svc.secrets.check_value() => svc.stop_fatally(
                            "the server key was rotated while this node's catalog session was away: \
                             restart it with the new key file (--server-key-file)"
                                .into(),
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not read the server key's check value"),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "could not count this node as running in the catalog")
                    }
                }
                while let Some(until) = svc.lease_until() {
                    // Its own expired tasks too (a final write lost while
                    // the catalog was away), unless it still runs them.
                    let mut running: Vec<i64> =
                        svc.leases.lock().expect("lock").keys().copied().collect();
                    running.extend(svc.live_tasks.lock().expect("lock").keys().copied());
                    match svc
                        .catalog
                        .claim_expired_task(&svc.node, until, svc.catalog_now_ms(), &running)
                        .await
                    {
                        Ok(Some(t)) => svc.take_over(t).await,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not look for tasks to take over");
                            break;
                        }
                    }
                }
            }
        });
    }

    async fn take_over(self: &Arc<Self>, t: Task) {
        tracing::warn!(
            task = t.id,
            kind = t.kind.as_str(),
            attempt = t.attempts,
            "taking over a task whose node stopped renewing its lease"
        );
        self.hold(&t);
        let started = match t.kind {
            TaskKind::Backup => match self
                .catalog
                .instance(&t.account_id, t.instance())
                .await
            {
                Ok(Some(i)) => self.launch(t.clone(), i).await.map_err(|e| e.message),
                Ok(None) => Err("its instance was removed".to_string()),
                Err(e) => Err(e.to_string()),
            },
            TaskKind::Verify | TaskKind::Download => {
                let set = match t.set_id {
                    Some(id) => match self.catalog.backup_set(&t.account_id, id).await {
                        Ok(Some(s)) => Some(s),
                        Ok(None) => {
                            self.take_over_failed(&t, "its set was deleted").await;
                            return;
                        }
                        Err(e) => {
                            self.take_over_failed(&t, &e.to_string()).await;
                            return;
                        }
                    },
                    None => None,
                };
                let work = match (t.kind, set) {
                    (TaskKind::Verify, s) => runner::JobWork::Verify {
                        snapshot: s.map(|s| s.snapshot_id),
                    },
                    (_, Some(set)) => runner::JobWork::Download {
                        part: t
                            .params
                            .get("part")
                            .and_then(|p| p.as_str())
                            .map(String::from),
                        set: Box::new(set),
                    },
                    (_, None) => {
                        self.take_over_failed(&t, "it names no set").await;
                        return;
                    }
                };
                self.spawn_job(t.clone(), work);
                Ok(())
            }
            TaskKind::Gc => {
                self.spawn_job(t.clone(), runner::JobWork::Gc);
                Ok(())
            }
            TaskKind::Restore => Err(
                "its node stopped while it ran; a restore is not repeated elsewhere (its target may be half-written, a folder target is on that node's machine): check the target and start the restore again"
                    .into(),
            ),
        };
        if let Err(why) = started {
            self.take_over_failed(&t, &why).await;
        }
    }

    async fn take_over_failed(&self, t: &Task, why: &str) {
        let u = stowage_catalog::StateUpdate {
            error: Some(why.to_string()),
            lease_epoch: self.lease_of(t.id),
            ..Default::default()
        };
        if let Err(e) = self
            .catalog
            .set_task_state(t.id, TaskState::Failed, u, now_ms())
            .await
        {
            tracing::error!(task = t.id, error = %e, "could not record a task that could not be taken over");
        }
        self.release(t.id);
    }

    /// Number of tasks (and parts) running on this node.
    pub fn running(&self) -> usize {
        self.live_tasks.lock().expect("lock").len()
    }

    /// Asks the server to stop (gracefully) because it must not go on;
    /// the first reason wins.
    pub fn stop_fatally(&self, why: String) {
        tracing::error!(reason = %why, "stopping this node");
        if self.fatal.set(why).is_ok() {
            self.fatal_notify.notify_one();
        }
    }

    /// Waits until [`stop_fatally`](Self::stop_fatally) is called; its reason.
    pub async fn fatal(&self) -> String {
        if self.fatal.get().is_none() {
            self.fatal_notify.notified().await;
        }
        self.fatal.get().cloned().unwrap_or_default()
    }

    /// Why the node stopped fatally, if it did.
    pub fn fatal_reason(&self) -> Option<String> {
        self.fatal.get().cloned()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops cleanly: cancels every running task and job (a task already
    /// finishing completes) and waits up to `grace` for each to record how
    /// it ended. Returns how many were still running at the deadline (those
    /// are marked failed at the next start).
    pub async fn shutdown(&self, grace: std::time::Duration) -> usize {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        for l in self.live_tasks.lock().expect("lock").values() {
            l.cancel();
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Another node schedules from now on, without waiting for the
        // role's lease to expire.
        if self.lease.is_some()
            && let Err(e) = self.catalog.release_role("scheduler", &self.node).await
        {
            tracing::warn!(error = %e, "could not release the scheduler role");
        }
        self.running()
    }
}

fn check_rate(r: Option<u32>) -> ServiceResult<()> {
    match r {
        Some(r) if !(32..=1_048_576).contains(&r) => {
            Err(ServiceError::invalid("max_rate_kbps: 32 to 1048576 (kB/s)"))
        }
        _ => Ok(()),
    }
}

/// Validates a MongoDB connection string without credentials; returns it
/// and its hosts (port 27017 when not given).
fn check_mongo_uri(uri: Option<&str>) -> ServiceResult<(String, Vec<(String, u16)>)> {
    let uri = uri
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ServiceError::invalid(
                "uri: a MongoDB instance needs --uri mongodb://host:port/?replicaSet=name",
            )
        })?;
    if uri.len() > 2048 || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ServiceError::invalid(
            "uri: at most 2048 characters, no spaces",
        ));
    }
    if uri.starts_with("mongodb+srv://") {
        return Err(ServiceError::invalid(
            "uri: mongodb+srv:// (DNS seed lists) is not supported by this build; list the hosts: mongodb://h1:27017,h2:27017/?replicaSet=…",
        ));
    }
    let rest = uri
        .strip_prefix("mongodb://")
        .ok_or_else(|| ServiceError::invalid("uri: must start with mongodb://"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(ServiceError::invalid(
            "uri: no credentials in the connection string (it would be stored and shown); give --user, and the password through STOWAGE_DB_PASSWORD or --password-file",
        ));
    }
    let mut hosts = Vec::new();
    for h in authority.split(',') {
        // `host`, `host:port`, `[v6]` or `[v6]:port`.
        let (host, port) = match h.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((a, "")) => (a, None),
                Some((a, rest)) if rest.starts_with(':') => (a, Some(&rest[1..])),
                _ => return Err(ServiceError::invalid(format!("uri: bad host {h:?}"))),
            },
            None => match h.split_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (h, None),
            },
        };
        let port = match port {
            None => 27017,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ServiceError::invalid(format!("uri: bad port in {h:?}")))?,
        };
        if host.is_empty()
            || host.len() > 255
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(ServiceError::invalid(format!("uri: bad host {h:?}")));
        }
        hosts.push((host.to_string(), port));
    }
    Ok((uri.to_string(), hosts))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The backup method (logical, physical) of an engine, if this build has it.
pub fn engine_method(engine: &str) -> Option<&'static str> {
    stowage_engines::engine_for(engine).map(|e| e.method())
}

/// Progress of a task for display.
pub fn percent(t: &Task) -> u8 {
    Progress {
        bytes_done: t.bytes_done,
        bytes_total: t.bytes_total,
        bytes_stored: t.bytes_stored,
    }
    .percent(t.state == TaskState::Finished)
}

#[cfg(test)]
mod tests {
    use super::check_mongo_uri;

    #[test]
    fn mongo_uris_give_their_hosts() {
        let (_, h) =
            check_mongo_uri(Some("mongodb://a:1,b,[::1]:3,[fe80::1]/?replicaSet=x")).unwrap();
        let h: Vec<(&str, u16)> = h.iter().map(|(a, p)| (a.as_str(), *p)).collect();
        assert_eq!(h, [("a", 1), ("b", 27017), ("::1", 3), ("fe80::1", 27017)]);
        for bad in [
            "mongodb://u:p@a/",
            "mongodb+srv://a/",
            "http://a/",
            "mongodb://a:0/",
            "mongodb://[::1]x/",
            "mongodb://a b/",
            "mongodb:///",
        ] {
            assert!(check_mongo_uri(Some(bad)).is_err(), "{bad}");
        }
        assert!(check_mongo_uri(None).is_err());
    }
}
