//! The catalog on SQL: the embedded SQLite file (the default, one file under
//! the data dir) or a PostgreSQL database shared by several nodes. One code
//! path for both, on sqlx's `Any` driver: the SQL is portable (`$n`
//! placeholders, `RETURNING`, `IS [NOT] DISTINCT FROM`, `CASE` instead of
//! two-argument `MAX`, a quoted `"window"`), and [`Dialect`] holds the few
//! differences (how a write transaction starts, row locks, SQLite's index
//! hint, the schema migrations).
//!
//! SQLite: one writer connection at a time (SQLite's model) in WAL mode, so
//! reads by the API never wait for a backup's progress writes. PostgreSQL:
//! a pool per node; rows a transaction checks and then changes are locked
//! (`FOR UPDATE`), and the unique indexes hold the invariants across nodes.

use crate::model::*;
use crate::{Catalog, CatalogError, CatalogResult, StateUpdate};
use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::{Any, Row, Transaction};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use stowage_core::{Progress, TaskKind, TaskMode, TaskState};

/// Which SQL database the catalog is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Starts a transaction that will write: SQLite takes its one write
    /// lock at once (a later upgrade could fail with SQLITE_BUSY).
    fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// Locks the rows a write transaction reads before it changes them
    /// (SQLite's transaction already excludes every other writer).
    fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// PostgreSQL's schema: today's SQLite schema in one step (the SQLite
/// migrations below are its history), with 64-bit integers throughout.
const PG_MIGRATIONS: &[(i64, &str)] = &[
    (9, include_str!("migrations/postgres/0009_init.sql")),
    (10, include_str!("migrations/0010_settings.sql")),
    (11, include_str!("migrations/0011_leases.sql")),
    (12, include_str!("migrations/0012_unfinished_index.sql")),
    (13, include_str!("migrations/postgres/0013_nonces.sql")),
];

/// Schema migrations, applied in order; each runs once, in a transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_policies.sql")),
    (3, include_str!("migrations/0003_key_policies.sql")),
    (4, include_str!("migrations/0004_task_state_index.sql")),
    (5, include_str!("migrations/0005_task_retention.sql")),
    (6, include_str!("migrations/0006_task_comment.sql")),
    (7, include_str!("migrations/0007_tasks.sql")),
    (8, include_str!("migrations/0008_set_engine_version.sql")),
    (9, include_str!("migrations/0009_download_instance.sql")),
    (10, include_str!("migrations/0010_settings.sql")),
    (11, include_str!("migrations/0011_leases.sql")),
    (12, include_str!("migrations/0012_unfinished_index.sql")),
    (13, include_str!("migrations/0013_nonces.sql")),
];

/// The catalog on a SQL database ([`Dialect`]).
pub struct SqlCatalog {
    pool: AnyPool,
    dialect: Dialect,
    /// PostgreSQL: the connection holding this node's shared lock on
    /// [`NODES_LOCK`] once it joined (see [`Catalog::join_as_node`]).
    presence: tokio::sync::Mutex<Option<sqlx::AnyConnection>>,
}

/// PostgreSQL advisory lock every running node holds shared (on a
/// connection of its own, for its whole life) and a server key rotation
/// takes exclusively: a rotation never runs beside a node whose session
/// lives. A node whose session was cut joins again at its next lease tick
/// and then checks the key (the service stops it if a rotation ran).
/// Needs session-level connections: not through a pooler in transaction
/// mode (pgbouncer's default), which would drop the lock at once.
const NODES_LOCK: i64 = 8421;

fn bad_row(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Db(format!("malformed row: {e}"))
}

impl SqlCatalog {
    /// Opens (creating if needed) the SQLite catalog file and brings its
    /// schema up to date.
    pub async fn open(path: &Path) -> CatalogResult<SqlCatalog> {
        sqlx::any::install_default_drivers();
        let Some(p) = path.to_str() else {
            return Err(CatalogError::Db(format!(
                "catalog path {} is not UTF-8",
                path.display()
            )));
        };
        // The URL carries the file name (percent-encoded); the rest is set
        // on every new connection.
        let url = format!("sqlite://{}?mode=rwc", percent_path(p));
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|c, _| {
                Box::pin(async move {
                    sqlx::raw_sql(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;
                         PRAGMA mmap_size = 268435456;",
                    )
                    .execute(c)
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let c = SqlCatalog {
            pool,
            dialect: Dialect::Sqlite,
            presence: Default::default(),
        };
        c.migrate().await?;
        Ok(c)
    }

    /// Connects to a PostgreSQL catalog (`postgres://user@host:port/db`,
    /// the password from the URL or `PGPASSWORD`) and brings its schema up
    /// to date; nodes starting at once migrate one after the other.
    pub async fn open_postgres(url: &str) -> CatalogResult<SqlCatalog> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(|e| CatalogError::Db(format!("PostgreSQL catalog: {}", redact(url, &e))))?;
        let c = SqlCatalog {
            pool,
            dialect: Dialect::Postgres,
            presence: Default::default(),
        };
        c.migrate().await?;
        Ok(c)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn begin(&self) -> CatalogResult<Transaction<'static, Any>> {
        Ok(self.pool.begin_with(self.dialect.begin_write()).await?)
    }

    async fn migrate(&self) -> CatalogResult<()> {
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Every node migrates at start: one at a time.
            sqlx::query("SELECT pg_advisory_xact_lock(8420)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let migrations = match self.dialect {
            Dialect::Sqlite => MIGRATIONS,
            Dialect::Postgres => PG_MIGRATIONS,
        };
        for (version, sql) in migrations {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, 0)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// SQLite's plan for each shape of the task query the dialects' hot path
    /// (DescribeBackupTasks) runs: (shape, plan). For benchmarks and the
    /// test that keeps them on an index.
    pub async fn task_query_plans(&self) -> CatalogResult<Vec<(String, String)>> {
        let active: Vec<TaskState> = TaskState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        let inst = Some("rm-x".to_string());
        let shapes = [
            (
                "unfinished tasks of an instance",
                TaskFilter {
                    instance_id: inst.clone(),
                    states: active,
                    ..Default::default()
                },
            ),
            (
                "one task by id",
                TaskFilter {
                    instance_id: inst.clone(),
                    task_id: Some(1),
                    ..Default::default()
                },
            ),
            (
                "latest tasks of an instance",
                TaskFilter {
                    instance_id: inst.clone(),
                    ..Default::default()
                },
            ),
            (
                "an instance's downloads",
                TaskFilter {
                    kinds: vec![TaskKind::Download],
                    instance_id: inst,
                    ..Default::default()
                },
            ),
        ];
        let mut out = Vec::new();
        for (name, f) in shapes {
            let (explain, col) = match self.dialect {
                Dialect::Sqlite => ("EXPLAIN QUERY PLAN", "detail"),
                Dialect::Postgres => ("EXPLAIN", "QUERY PLAN"),
            };
            let sql = format!("{explain} {}", task_query(&f, self.dialect));
            let q = bind_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), "acc", &f);
            let rows = q.fetch_all(&self.pool).await?;
            let plan: Vec<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>(col))
                .collect::<Result<_, _>>()?;
            out.push((name.to_string(), plan.join("; ")));
        }
        Ok(out)
    }
}

/// A file path as the SQLite URL carries it: `%`, `?` and `#` (and
/// anything not printable ASCII) percent-encoded; the driver decodes it.
fn percent_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A connection error without the URL's password (the driver's message may
/// quote the URL).
fn redact(url: &str, e: &sqlx::Error) -> String {
    let msg = e.to_string();
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, pw)| pw)
        .filter(|pw| !pw.is_empty());
    match password {
        Some(pw) => msg.replace(pw, "***"),
        None => msg,
    }
}

fn json_opt(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn task_from_row(r: &AnyRow) -> CatalogResult<Task> {
    Ok(Task {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        kind: TaskKind::from_str(&r.try_get::<String, _>("kind")?).map_err(bad_row)?,
        parent_id: r.try_get("parent_id")?,
        part: r.try_get("part")?,
        instance_id: r.try_get("instance_id")?,
        set_id: r.try_get("set_id")?,
        mode: TaskMode::from_str(&r.try_get::<String, _>("mode")?).map_err(bad_row)?,
        method: r.try_get("method")?,
        state: TaskState::from_str(&r.try_get::<String, _>("state")?).map_err(bad_row)?,
        created_ms: r.try_get("created_ms")?,
        started_ms: r.try_get("started_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        bytes_done: r.try_get::<i64, _>("bytes_done")? as u64,
        bytes_total: r.try_get::<i64, _>("bytes_total")? as u64,
        bytes_stored: r.try_get::<i64, _>("bytes_stored")? as u64,
        consistent_point: json_opt(r.try_get("consistent_point")?),
        error: r.try_get("error")?,
        result: json_opt(r.try_get("result")?),
        params: json_opt(r.try_get("params")?).unwrap_or(serde_json::Value::Null),
        node: r.try_get("node")?,
        client_token: r.try_get("client_token")?,
        scheduled_ms: r.try_get("scheduled_ms")?,
        retention_days: r
            .try_get::<Option<i64>, _>("retention_days")?
            .map(|d| d as u32),
        comment: r.try_get("comment")?,
        lease_epoch: r.try_get("lease_epoch")?,
        attempts: r.try_get::<i64, _>("attempts")? as u32,
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
    })
}

fn set_from_row(r: &AnyRow) -> CatalogResult<BackupSet> {
    Ok(BackupSet {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        instance_id: r.try_get("instance_id")?,
        task_id: r.try_get("task_id")?,
        snapshot_id: r.try_get("snapshot_id")?,
        engine: r.try_get("engine")?,
        engine_version: r.try_get("engine_version")?,
        method: r.try_get("method")?,
        mode: TaskMode::from_str(&r.try_get::<String, _>("mode")?).map_err(bad_row)?,
        started_ms: r.try_get("started_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        bytes_logical: r.try_get::<i64, _>("bytes_logical")? as u64,
        bytes_stored: r.try_get::<i64, _>("bytes_stored")? as u64,
        consistent_point: json_opt(r.try_get("consistent_point")?)
            .as_ref()
            .and_then(stowage_core::ConsistentPoint::from_json),
        meta: json_opt(r.try_get("meta")?).unwrap_or(serde_json::Value::Null),
        expires_ms: r.try_get("expires_ms")?,
    })
}

fn instance_from_row(r: &AnyRow) -> CatalogResult<Instance> {
    Ok(Instance {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        name: r.try_get("name")?,
        engine: r.try_get("engine")?,
        topology: r.try_get("topology")?,
        host: r.try_get("host")?,
        port: r.try_get::<i64, _>("port")? as u16,
        username: r.try_get("username")?,
        password_enc: r.try_get("password_enc")?,
        dbname: r.try_get("dbname")?,
        options: json_opt(r.try_get("options")?).unwrap_or(serde_json::Value::Null),
        created_ms: r.try_get("created_ms")?,
    })
}

fn policy_from_row(r: &AnyRow) -> CatalogResult<StoredPolicy> {
    let window: String = r.try_get("window")?;
    let weekdays: String = r.try_get("weekdays")?;
    let extra = match json_opt(r.try_get("extra")?) {
        Some(serde_json::Value::Object(m)) => m,
        _ => Default::default(),
    };
    Ok(StoredPolicy {
        policy: stowage_core::BackupPolicy {
            enabled: r.try_get::<i64, _>("enabled")? != 0,
            window: stowage_core::Window::parse(&window).map_err(bad_row)?,
            weekdays: stowage_core::Weekdays::parse(&weekdays).map_err(bad_row)?,
            retention_days: r.try_get::<i64, _>("retention_days")? as u32,
        },
        extra,
        updated_ms: r.try_get("updated_ms")?,
    })
}

fn key_from_row(r: &AnyRow) -> CatalogResult<AccessKey> {
    Ok(AccessKey {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        secret_enc: r.try_get("secret_enc")?,
        status: r.try_get("status")?,
        description: r.try_get("description")?,
        created_ms: r.try_get("created_ms")?,
        policy: json_opt(r.try_get("policy")?),
    })
}

/// The query behind `list_tasks` for a filter's shape.
fn task_query(f: &TaskFilter, d: Dialect) -> String {
    let mut p = Params::default();
    let mut sql = task_where(f, "SELECT *", d, &mut p);
    sql.push_str(match f.order {
        TaskOrder::NewestFirst => " ORDER BY id DESC",
        TaskOrder::OldestFirst => " ORDER BY id",
        TaskOrder::FinishedAsc => " ORDER BY COALESCE(finished_ms, 9223372036854775807), id",
        TaskOrder::FinishedDesc => {
            " ORDER BY COALESCE(finished_ms, 9223372036854775807) DESC, id DESC"
        }
    });
    // Numbers, written into the statement like the kinds and states: a
    // generic plan that knows its LIMIT costs what a custom one does, so
    // PostgreSQL stops planning each execution.
    sql.push_str(&format!(
        " LIMIT {} OFFSET {}",
        f.limit.unwrap_or(100),
        f.offset.unwrap_or(0)
    ));
    sql
}

/// Numbers the placeholders of a query built from fragments: `$1`, `$2` …
#[derive(Default)]
struct Params(usize);

impl Params {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }

    fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.next()).collect::<Vec<_>>().join(",")
    }
}

/// `what` from the tasks `f` matches (placeholders bound by `bind_filter`).
fn task_where(f: &TaskFilter, what: &str, d: Dialect, p: &mut Params) -> String {
    // By state: look up each state's few rows rather than walk the
    // instance's whole history in id order (SQLite's planner, without
    // statistics, prefers the walk because it avoids a sort).
    let mut sql = format!(
        "{what} FROM tasks{} WHERE account_id = {}",
        if d == Dialect::Sqlite
            && f.instance_id.is_some()
            && !f.states.is_empty()
            && f.task_id.is_none()
        {
            " INDEXED BY tasks_instance_state"
        } else {
            ""
        },
        p.next()
    );
    if f.instance_id.is_some() {
        sql.push_str(&format!(" AND instance_id = {}", p.next()));
    }
    if f.task_id.is_some() {
        sql.push_str(&format!(" AND id = {}", p.next()));
    }
    if f.set_id.is_some() {
        sql.push_str(&format!(" AND set_id = {}", p.next()));
    }
    if !f.set_ids.is_empty() {
        sql.push_str(&format!(" AND set_id IN ({})", p.list(f.set_ids.len())));
    }
    match f.parent_id {
        Some(_) => sql.push_str(&format!(" AND parent_id = {}", p.next())),
        None => sql.push_str(" AND parent_id IS NULL"),
    }
    if f.before_id.is_some() {
        sql.push_str(&format!(" AND id < {}", p.next()));
    }
    // Whole seconds: from the start of the bound's second, up to the end
    // of the bound's second.
    if f.created_from_ms.is_some() {
        sql.push_str(&format!(" AND created_ms >= {} / 1000 * 1000", p.next()));
    }
    if f.ended_by_ms.is_some() {
        let (now, by) = (p.next(), p.next());
        sql.push_str(&format!(
            " AND COALESCE(finished_ms, {now}) < {by} / 1000 * 1000 + 1000"
        ));
    }
    // Kinds and states are written into the statement (fixed words of
    // their enums, never a caller's text): PostgreSQL can then prove the
    // partial index of unfinished tasks for the statement itself, and keep
    // one generic plan for it instead of planning every execution.
    if !f.kinds.is_empty() {
        sql.push_str(&format!(
            " AND kind IN ({})",
            literals(f.kinds.iter().map(|k| k.as_str()))
        ));
    }
    if !f.states.is_empty() {
        sql.push_str(&format!(
            " AND state IN ({})",
            literals(f.states.iter().map(|s| s.as_str()))
        ));
    }
    sql
}

/// `'a','b'` from words of an enum's fixed spelling.
fn literals<'a>(words: impl Iterator<Item = &'a str>) -> String {
    words
        .map(|w| {
            assert!(
                !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "not an enum word: {w:?}"
            );
            format!("'{w}'")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Binds the values of `task_where`'s placeholders, in its order.
fn bind_filter<'q>(
    mut q: sqlx::query::Query<'q, Any, AnyArguments>,
    account_id: &'q str,
    f: &'q TaskFilter,
) -> sqlx::query::Query<'q, Any, AnyArguments> {
    q = q.bind(account_id);
    if let Some(i) = &f.instance_id {
        q = q.bind(i);
    }
    if let Some(id) = f.task_id {
        q = q.bind(id);
    }
    if let Some(id) = f.set_id {
        q = q.bind(id);
    }
    for id in &f.set_ids {
        q = q.bind(id);
    }
    if let Some(id) = f.parent_id {
        q = q.bind(id);
    }
    if let Some(b) = f.before_id {
        q = q.bind(b);
    }
    if let Some(c) = f.created_from_ms {
        q = q.bind(c);
    }
    if let Some((by, now)) = f.ended_by_ms {
        q = q.bind(now).bind(by);
    }
    q
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Refuses a write by a node whose lease on the task was taken over.
fn fenced(t: &Task, epoch: Option<i64>) -> CatalogResult<()> {
    match epoch {
        Some(e) if e != t.lease_epoch => Err(CatalogError::LeaseLost(format!(
            "task {} was taken over (lease {e}, now {})",
            t.id, t.lease_epoch
        ))),
        _ => Ok(()),
    }
}

/// A task read in a write transaction, locked until it ends.
async fn task_in(tx: &mut Transaction<'_, Any>, d: Dialect, id: i64) -> CatalogResult<Task> {
    let sql = format!("SELECT * FROM tasks WHERE id = $1{}", d.for_update());
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| CatalogError::NotFound(format!("task {id}")))?;
    task_from_row(&r)
}

#[async_trait]
impl Catalog for SqlCatalog {
    async fn clock_ms(&self) -> CatalogResult<i64> {
        match self.dialect {
            Dialect::Sqlite => Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)),
            Dialect::Postgres => Ok(sqlx::query_scalar::<_, i64>(
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            )
            .fetch_one(&self.pool)
            .await?),
        }
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> CatalogResult<String> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn join_as_node(&self) -> CatalogResult<()> {
        if self.dialect != Dialect::Postgres {
            return Ok(());
        }
        let mut held = self.presence.lock().await;
        if let Some(c) = held.as_mut() {
            use sqlx::Connection;
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), c.ping()).await {
                return Ok(());
            }
            // The session ended (the database restarted): its lock with it.
            *held = None;
        }
        let mut c = self.pool.acquire().await?.detach();
        let ok: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock_shared($1)")
            .bind(NODES_LOCK)
            .fetch_one(&mut c)
            .await?;
        if !ok {
            return Err(CatalogError::Conflict(
                "a server key rotation is running on this catalog; start the node when it has ended"
                    .into(),
            ));
        }
        *held = Some(c);
        Ok(())
    }

    async fn reseal_secrets(
        &self,
        reseal: &(dyn for<'a> Fn(&'a [u8]) -> Option<Vec<u8>> + Send + Sync),
        check: &str,
    ) -> CatalogResult<u64> {
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Held until the transaction ends; refused while any node runs
            // (it would go on sealing new secrets with the old key).
            let ok: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(NODES_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !ok {
                return Err(CatalogError::Conflict(
                    "a Stowage node is running on this catalog: stop every node before rotating the server key; nothing was changed"
                        .into(),
                ));
            }
        }
        let mut n = 0u64;
        for (table, col) in [("access_keys", "secret_enc"), ("instances", "password_enc")] {
            let sql = format!(
                "SELECT id, {col} AS sealed FROM {table} WHERE {col} IS NOT NULL{}",
                self.dialect.for_update()
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *tx)
                .await?;
            for r in rows {
                let id: String = r.try_get("id")?;
                let sealed: Vec<u8> = r.try_get("sealed")?;
                let Some(new) = reseal(&sealed) else {
                    return Err(CatalogError::Conflict(format!(
                        "a secret of {table} {id} does not open with the current key; nothing was changed"
                    )));
                };
                let sql = format!("UPDATE {table} SET {col} = $1 WHERE id = $2");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(new)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                n += 1;
            }
        }
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('server_key_check', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(check)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn setting(&self, name: &str) -> CatalogResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_setting(&self, name: &str, value: &str) -> CatalogResult<()> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn create_account(&self, name: &str, now_ms: i64) -> CatalogResult<Account> {
        let id = format!("acc-{}", name);
        sqlx::query("INSERT INTO accounts (id, name, created_ms) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(name)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    CatalogError::Conflict(format!("account {name} already exists"))
                } else {
                    e.into()
                }
            })?;
        Ok(Account {
            id,
            name: name.into(),
            created_ms: now_ms,
        })
    }

    async fn account_by_name(&self, name: &str) -> CatalogResult<Option<Account>> {
        let r = sqlx::query("SELECT id, name, created_ms FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            Ok(Account {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                created_ms: r.try_get("created_ms")?,
            })
        })
        .transpose()
    }

    async fn insert_access_key(&self, k: &AccessKey) -> CatalogResult<()> {
        sqlx::query("INSERT INTO access_keys (id, account_id, secret_enc, status, description, created_ms, policy) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&k.id)
            .bind(&k.account_id)
            .bind(&k.secret_enc)
            .bind(&k.status)
            .bind(&k.description)
            .bind(k.created_ms)
            .bind(k.policy.as_ref().map(|p| p.to_string()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn access_key(&self, id: &str) -> CatalogResult<Option<AccessKey>> {
        let r = sqlx::query("SELECT * FROM access_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(key_from_row).transpose()
    }

    async fn list_access_keys(&self, account_id: &str) -> CatalogResult<Vec<AccessKey>> {
        let rows =
            sqlx::query("SELECT * FROM access_keys WHERE account_id = $1 ORDER BY created_ms")
                .bind(account_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn set_access_key_status(&self, id: &str, status: &str) -> CatalogResult<()> {
        let n = sqlx::query("UPDATE access_keys SET status = $1 WHERE id = $2")
            .bind(status)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("access key {id}")));
        }
        Ok(())
    }

    async fn set_access_key_policy(
        &self,
        id: &str,
        policy: Option<&serde_json::Value>,
    ) -> CatalogResult<()> {
        let n = sqlx::query("UPDATE access_keys SET policy = $1 WHERE id = $2")
            .bind(policy.map(|p| p.to_string()))
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("access key {id}")));
        }
        Ok(())
    }

    async fn delete_access_key(&self, id: &str) -> CatalogResult<()> {
        let n = sqlx::query("DELETE FROM access_keys WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("access key {id}")));
        }
        Ok(())
    }

    async fn list_accounts(&self) -> CatalogResult<Vec<Account>> {
        let rows =
            sqlx::query("SELECT id, name, created_ms FROM accounts ORDER BY created_ms, name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(Account {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    async fn insert_instance(&self, i: &Instance) -> CatalogResult<()> {
        sqlx::query(
            "INSERT INTO instances (id, account_id, name, engine, topology, host, port, username, password_enc, dbname, options, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&i.id)
        .bind(&i.account_id)
        .bind(&i.name)
        .bind(&i.engine)
        .bind(&i.topology)
        .bind(&i.host)
        .bind(i.port as i64)
        .bind(&i.username)
        .bind(&i.password_enc)
        .bind(&i.dbname)
        .bind(i.options.to_string())
        .bind(i.created_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                CatalogError::Conflict(format!("an instance named {:?} or with id {} already exists", i.name, i.id))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    async fn instance(&self, account_id: &str, id: &str) -> CatalogResult<Option<Instance>> {
        let r =
            sqlx::query("SELECT * FROM instances WHERE account_id = $1 AND (id = $2 OR name = $3)")
                .bind(account_id)
                .bind(id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        r.as_ref().map(instance_from_row).transpose()
    }

    async fn update_instance(&self, i: &Instance) -> CatalogResult<()> {
        let n = sqlx::query(
            "UPDATE instances SET host = $1, port = $2, username = $3, password_enc = $4, dbname = $5, options = $6
             WHERE account_id = $7 AND id = $8",
        )
        .bind(&i.host)
        .bind(i.port as i64)
        .bind(&i.username)
        .bind(&i.password_enc)
        .bind(&i.dbname)
        .bind(i.options.to_string())
        .bind(&i.account_id)
        .bind(&i.id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("instance {}", i.id)));
        }
        Ok(())
    }

    async fn list_instances(&self, account_id: &str) -> CatalogResult<Vec<Instance>> {
        let rows =
            sqlx::query("SELECT * FROM instances WHERE account_id = $1 ORDER BY created_ms, id")
                .bind(account_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(instance_from_row).collect()
    }

    async fn delete_instance(&self, account_id: &str, id: &str) -> CatalogResult<()> {
        let mut tx = self.begin().await?;
        let busy: Option<i64> =
            sqlx::query_scalar("SELECT id FROM tasks WHERE instance_id = $1 AND active = 1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if busy.is_some() {
            return Err(CatalogError::InstanceBusy(id.into()));
        }
        sqlx::query("DELETE FROM backup_policies WHERE account_id = $1 AND instance_id = $2")
            .bind(account_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE tasks SET state = 'cancelled', error = 'the instance was removed', scheduled_ms = NULL
             WHERE account_id = $1 AND instance_id = $2 AND state = 'pending' AND active IS NULL
               AND kind = 'backup'",
        )
        .bind(account_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query("DELETE FROM instances WHERE account_id = $1 AND id = $2")
            .bind(account_id)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("instance {id}")));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_task(&self, t: &NewTask, now_ms: i64) -> CatalogResult<Task> {
        let mut tx = self.begin().await?;
        if let Some(tok) = &t.client_token {
            // Idempotency: the same token for the same instance returns the first task.
            let r = sqlx::query("SELECT * FROM tasks WHERE account_id = $1 AND kind = $2 AND instance_id IS NOT DISTINCT FROM $3 AND client_token = $4")
                .bind(&t.account_id)
                .bind(t.kind.as_str())
                .bind(&t.instance_id)
                .bind(tok)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(r) = r {
                let first = task_from_row(&r)?;
                // The same token with a different request is a mistake, not a retry.
                if first.retention_days != t.retention_days || first.comment != t.comment {
                    return Err(CatalogError::Conflict(format!(
                        "client token {tok:?} was already used for {} task {} with different options; use a new token for a new request",
                        first.kind.as_str(),
                        first.id
                    )));
                }
                tx.rollback().await?;
                return Ok(first);
            }
        }
        // A top-level task naming an instance takes its slot at once; an
        // automated one only when claimed; parts never; a download only
        // reads the instance's set, never the instance.
        let takes_slot = t.parent_id.is_none()
            && t.instance_id.is_some()
            && t.scheduled_ms.is_none()
            && t.kind != TaskKind::Download;
        let res = sqlx::query(
            "INSERT INTO tasks (account_id, kind, parent_id, part, instance_id, set_id, mode, method, state, active,
               created_ms, updated_ms, params, node, client_token, scheduled_ms, retention_days, comment,
               lease_epoch, lease_expires_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
             RETURNING id",
        )
        .bind(&t.account_id)
        .bind(t.kind.as_str())
        .bind(t.parent_id)
        .bind(&t.part)
        .bind(&t.instance_id)
        .bind(t.set_id)
        .bind(t.mode.as_str())
        .bind(&t.method)
        .bind(if takes_slot { Some(1) } else { None })
        .bind(now_ms)
        .bind(now_ms)
        .bind(t.params.to_string())
        .bind(&t.node)
        .bind(&t.client_token)
        .bind(t.scheduled_ms)
        .bind(t.retention_days.map(|d| d as i64))
        .bind(&t.comment)
        .bind(if t.lease_until_ms.is_some() { 1i64 } else { 0 })
        .bind(t.lease_until_ms)
        .fetch_one(&mut *tx)
        .await;
        let instance = t.instance_id.clone().unwrap_or_default();
        let id = match res {
            Ok(r) => r.try_get::<i64, _>("id")?,
            Err(e) if is_unique_violation(&e) && t.scheduled_ms.is_some() => {
                return Err(CatalogError::Conflict(format!(
                    "instance {instance} already has a task for this window"
                )));
            }
            Err(e) if is_unique_violation(&e) => {
                return Err(CatalogError::InstanceBusy(instance));
            }
            Err(e) => return Err(e.into()),
        };
        let task = task_in(&mut tx, self.dialect, id).await?;
        tx.commit().await?;
        Ok(task)
    }

    async fn task(&self, account_id: &str, id: i64) -> CatalogResult<Option<Task>> {
        let r = sqlx::query("SELECT * FROM tasks WHERE account_id = $1 AND id = $2")
            .bind(account_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(task_from_row).transpose()
    }

    async fn remember_nonce(
        &self,
        key_id: &str,
        nonce: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> CatalogResult<bool> {
        // One short key per (key id, nonce): a 16-byte digest.
        let mut h = blake3::Hasher::new();
        h.update(key_id.as_bytes());
        h.update(b"\n");
        h.update(nonce.as_bytes());
        let id = h.finalize().as_bytes()[..16].to_vec();
        // Inserted, or an expired record of it renewed: one row; a record
        // still in force: none.
        let n = sqlx::query(
            "INSERT INTO nonces (id, expires_ms) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET expires_ms = excluded.expires_ms
             WHERE nonces.expires_ms < $3",
        )
        .bind(id)
        .bind(until_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn forget_nonces(&self, now_ms: i64) -> CatalogResult<u64> {
        Ok(sqlx::query("DELETE FROM nonces WHERE expires_ms < $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn task_by_id(&self, id: i64) -> CatalogResult<Option<Task>> {
        let r = sqlx::query("SELECT * FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(task_from_row).transpose()
    }

    async fn list_tasks(&self, account_id: &str, f: &TaskFilter) -> CatalogResult<Vec<Task>> {
        let sql = task_query(f, self.dialect);
        // Built from fixed fragments, enum words and numbers; every text
        // value is bound.
        let q = bind_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), account_id, f);
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn count_tasks(&self, account_id: &str, f: &TaskFilter) -> CatalogResult<u64> {
        let sql = task_where(f, "SELECT COUNT(*)", self.dialect, &mut Params::default());
        let q = bind_filter(sqlx::query(sqlx::AssertSqlSafe(sql)), account_id, f);
        let n: i64 = q.fetch_one(&self.pool).await?.try_get(0)?;
        Ok(n as u64)
    }

    async fn task_parts(&self, parent_id: i64) -> CatalogResult<Vec<Task>> {
        let rows = sqlx::query("SELECT * FROM tasks WHERE parent_id = $1 ORDER BY id")
            .bind(parent_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn set_task_state(
        &self,
        id: i64,
        to: TaskState,
        u: StateUpdate,
        now_ms: i64,
    ) -> CatalogResult<Task> {
        let mut tx = self.begin().await?;
        let cur = task_in(&mut tx, self.dialect, id).await?;
        fenced(&cur, u.lease_epoch)?;
        cur.state.transition(to)?;
        let p = u.progress.unwrap_or(Progress {
            bytes_done: cur.bytes_done,
            bytes_total: cur.bytes_total,
            bytes_stored: cur.bytes_stored,
        });
        // The slot is given up when the task ends; a task that never held
        // one (a part, a restore into a folder) never takes one here.
        sqlx::query(
            "UPDATE tasks SET state = $1, active = CASE WHEN $2 THEN NULL ELSE active END,
               lease_expires_ms = CASE WHEN $2 THEN NULL ELSE lease_expires_ms END, updated_ms = $3,
               started_ms = COALESCE(started_ms, $4), finished_ms = $5,
               bytes_done = $6, bytes_total = $7, bytes_stored = $8,
               error = COALESCE($9, error), consistent_point = COALESCE($10, consistent_point),
               result = COALESCE($11, result)
             WHERE id = $12",
        )
        .bind(to.as_str())
        .bind(to.is_terminal())
        .bind(now_ms)
        .bind(if to.is_running() { Some(now_ms) } else { None })
        .bind(if to.is_terminal() { Some(now_ms) } else { None })
        .bind(p.bytes_done as i64)
        .bind(p.bytes_total as i64)
        .bind(p.bytes_stored as i64)
        .bind(u.error)
        .bind(u.consistent_point.map(|v| v.to_string()))
        .bind(u.result.map(|v| v.to_string()))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let t = task_in(&mut tx, self.dialect, id).await?;
        tx.commit().await?;
        Ok(t)
    }

    async fn set_task_progress(
        &self,
        id: i64,
        p: Progress,
        now_ms: i64,
        lease_epoch: Option<i64>,
    ) -> CatalogResult<()> {
        let sql = format!(
            "UPDATE tasks SET bytes_done = $1, bytes_total = $2, bytes_stored = $3, updated_ms = $4
             WHERE id = $5 AND state NOT IN ('finished', 'failed', 'cancelled'){}",
            if lease_epoch.is_some() {
                " AND lease_epoch = $6"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(p.bytes_done as i64)
            .bind(p.bytes_total as i64)
            .bind(p.bytes_stored as i64)
            .bind(now_ms)
            .bind(id);
        if let Some(e) = lease_epoch {
            q = q.bind(e);
        }
        q.execute(&self.pool).await?;
        Ok(())
    }

    async fn renew_lease(&self, id: i64, epoch: i64, until_ms: i64) -> CatalogResult<Option<bool>> {
        let r = sqlx::query(
            "UPDATE tasks SET lease_expires_ms = $1
             WHERE id = $2 AND lease_epoch = $3 AND state NOT IN ('finished', 'failed', 'cancelled')
             RETURNING cancel_requested",
        )
        .bind(until_ms)
        .bind(id)
        .bind(epoch)
        .fetch_optional(&self.pool)
        .await?;
        r.map(|r| Ok(r.try_get::<i64, _>("cancel_requested")? != 0))
            .transpose()
    }

    async fn claim_expired_task(
        &self,
        node: &str,
        until_ms: i64,
        now_ms: i64,
        running: &[i64],
    ) -> CatalogResult<Option<Task>> {
        let mut tx = self.begin().await?;
        // Other nodes' claims skip the rows this one locked (PostgreSQL);
        // SQLite has one writer at a time. Candidates in expiry order, the
        // first that is not one this node still runs.
        let sql = format!(
            "SELECT id, node FROM tasks WHERE lease_expires_ms < $1 AND parent_id IS NULL
               AND state NOT IN ('finished', 'failed', 'cancelled')
             ORDER BY lease_expires_ms, id LIMIT $2{}",
            match self.dialect {
                Dialect::Sqlite => "",
                Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            }
        );
        let candidates = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(running.len() as i64 + 1)
            .fetch_all(&mut *tx)
            .await?;
        let mut chosen = None;
        for r in &candidates {
            let id: i64 = r.try_get("id")?;
            let holder: Option<String> = r.try_get("node")?;
            if !(holder.as_deref() == Some(node) && running.contains(&id)) {
                chosen = Some(id);
                break;
            }
        }
        let Some(id) = chosen else {
            // Now, not when dropped: the candidates' row locks must be gone
            // before this node's next claim, on whichever connection.
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query(
            "UPDATE tasks SET node = $1, lease_epoch = lease_epoch + 1, lease_expires_ms = $2,
               attempts = attempts + 1, bytes_done = 0, bytes_stored = 0, updated_ms = $3
             WHERE id = $4",
        )
        .bind(node)
        .bind(until_ms)
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // The parts of the attempt taken over end with it; the new attempt
        // opens its own.
        sqlx::query(
            "UPDATE tasks SET state = 'failed', error = $1, finished_ms = $2, updated_ms = $2
             WHERE parent_id = $3 AND state NOT IN ('finished', 'failed', 'cancelled')",
        )
        .bind(format!(
            "its attempt ended when its node stopped renewing the lease; node {node} took task {id} over"
        ))
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let t = task_in(&mut tx, self.dialect, id).await?;
        tx.commit().await?;
        Ok(Some(t))
    }

    async fn request_cancel(&self, account_id: &str, id: i64) -> CatalogResult<bool> {
        Ok(sqlx::query(
            "UPDATE tasks SET cancel_requested = 1
             WHERE account_id = $1 AND id = $2 AND state NOT IN ('finished', 'failed', 'cancelled')",
        )
        .bind(account_id)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    async fn acquire_role(
        &self,
        role: &str,
        node: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> CatalogResult<bool> {
        let r = sqlx::query(
            "INSERT INTO roles (name, node, epoch, expires_ms) VALUES ($1, $2, 1, $3)
             ON CONFLICT (name) DO UPDATE SET node = excluded.node, expires_ms = excluded.expires_ms,
               epoch = roles.epoch + CASE WHEN roles.node = excluded.node THEN 0 ELSE 1 END
             WHERE roles.node = excluded.node OR roles.expires_ms < $4
             RETURNING node",
        )
        .bind(role)
        .bind(node)
        .bind(until_ms)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.is_some())
    }

    async fn release_role(&self, role: &str, node: &str) -> CatalogResult<()> {
        sqlx::query("DELETE FROM roles WHERE name = $1 AND node = $2")
            .bind(role)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn finish_backup_task(
        &self,
        id: i64,
        s: &NewSet,
        now_ms: i64,
    ) -> CatalogResult<(Task, BackupSet)> {
        let mut tx = self.begin().await?;
        let cur = task_in(&mut tx, self.dialect, id).await?;
        if cur.kind != TaskKind::Backup || cur.parent_id.is_some() {
            return Err(CatalogError::Conflict(format!(
                "task {id} is not a top-level backup task"
            )));
        }
        fenced(&cur, s.lease_epoch)?;
        cur.state.transition(TaskState::Finished)?;
        // A retention asked for this backup pins the set's expiry.
        let (expires_ms, pinned) = match cur.retention_days {
            Some(d) => (
                Some(s.finished_ms + d as i64 * stowage_core::time::MS_PER_DAY),
                1,
            ),
            None => (s.expires_ms, 0),
        };
        let mut meta = s.meta.clone();
        if let (Some(c), serde_json::Value::Object(m)) = (&cur.comment, &mut meta) {
            m.insert("comment".into(), serde_json::Value::String(c.clone()));
        }
        sqlx::query(
            "INSERT INTO backup_sets (id, account_id, instance_id, task_id, snapshot_id, engine, engine_version, method, mode, started_ms, finished_ms,
               bytes_logical, bytes_stored, consistent_point, meta, expires_ms, expiry_pinned)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(id)
        .bind(&cur.account_id)
        .bind(&cur.instance_id)
        .bind(id)
        .bind(&s.snapshot_id)
        .bind(&s.engine)
        .bind(&s.engine_version)
        .bind(&s.method)
        .bind(cur.mode.as_str())
        .bind(s.started_ms)
        .bind(s.finished_ms)
        .bind(s.bytes_logical as i64)
        .bind(s.bytes_stored as i64)
        .bind(s.consistent_point.as_ref().map(|v| v.to_json().to_string()))
        .bind(meta.to_string())
        .bind(expires_ms)
        .bind(pinned)
        .execute(&mut *tx)
        .await?;
        let set_id = id;
        sqlx::query(
            "UPDATE tasks SET state = 'finished', active = NULL, lease_expires_ms = NULL, updated_ms = $1, finished_ms = $2, set_id = $3,
               bytes_done = $4, bytes_stored = $5, bytes_total = CASE WHEN bytes_total > $6 THEN bytes_total ELSE $6 END, consistent_point = $7
             WHERE id = $8",
        )
        .bind(now_ms)
        .bind(now_ms)
        .bind(set_id)
        .bind(s.bytes_logical as i64)
        .bind(s.bytes_stored as i64)
        .bind(s.bytes_logical as i64)
        .bind(s.consistent_point.as_ref().map(|v| v.to_json().to_string()))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let task = task_in(&mut tx, self.dialect, id).await?;
        let r = sqlx::query("SELECT * FROM backup_sets WHERE id = $1")
            .bind(set_id)
            .fetch_one(&mut *tx)
            .await?;
        let set = set_from_row(&r)?;
        tx.commit().await?;
        Ok((task, set))
    }

    async fn fail_interrupted(&self, node: &str, reason: &str, now_ms: i64) -> CatalogResult<u64> {
        Ok(sqlx::query(
            "UPDATE tasks SET state = 'failed', active = NULL, lease_expires_ms = NULL, error = $1, finished_ms = $2, updated_ms = $3
             WHERE state NOT IN ('finished', 'failed', 'cancelled')
               AND (active = 1 OR scheduled_ms IS NULL)
               AND (node = $4 OR node IS NULL)",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(now_ms)
        .bind(node)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn backup_set(&self, account_id: &str, id: i64) -> CatalogResult<Option<BackupSet>> {
        let r = sqlx::query("SELECT * FROM backup_sets WHERE account_id = $1 AND id = $2")
            .bind(account_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(set_from_row).transpose()
    }

    async fn list_backup_sets(
        &self,
        account_id: &str,
        f: &SetFilter,
    ) -> CatalogResult<Vec<BackupSet>> {
        let mut p = Params::default();
        let mut sql = format!("SELECT * FROM backup_sets WHERE account_id = {}", p.next());
        if f.instance_id.is_some() {
            sql.push_str(&format!(" AND instance_id = {}", p.next()));
        }
        if f.before_id.is_some() {
            sql.push_str(&format!(" AND id < {}", p.next()));
        }
        sql.push_str(" ORDER BY id DESC");
        if let Some(l) = f.limit {
            // A number in the statement: see `task_query`.
            sql.push_str(&format!(" LIMIT {l}"));
        }
        // Built from fixed fragments and numbers; every other value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account_id);
        if let Some(i) = &f.instance_id {
            q = q.bind(i);
        }
        if let Some(b) = f.before_id {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(set_from_row).collect()
    }

    async fn delete_backup_set(&self, account_id: &str, id: i64) -> CatalogResult<()> {
        let n = sqlx::query("DELETE FROM backup_sets WHERE account_id = $1 AND id = $2")
            .bind(account_id)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("backup set {id}")));
        }
        Ok(())
    }

    async fn pin_backup_set_expiry(
        &self,
        account_id: &str,
        id: i64,
        expires_ms: Option<i64>,
    ) -> CatalogResult<BackupSet> {
        let r = sqlx::query(
            "UPDATE backup_sets SET expires_ms = $1, expiry_pinned = 1 WHERE account_id = $2 AND id = $3 RETURNING *",
        )
        .bind(expires_ms)
        .bind(account_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| CatalogError::NotFound(format!("backup set {id}")))?;
        set_from_row(&r)
    }

    async fn sets_of_instances_with_expired(&self, now_ms: i64) -> CatalogResult<Vec<BackupSet>> {
        let rows = sqlx::query(
            "SELECT * FROM backup_sets WHERE instance_id IN
               (SELECT instance_id FROM backup_sets WHERE expires_ms <= $1)
             ORDER BY instance_id, id",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(set_from_row).collect()
    }

    async fn backup_policy(
        &self,
        account_id: &str,
        instance_id: &str,
    ) -> CatalogResult<Option<StoredPolicy>> {
        let r =
            sqlx::query("SELECT * FROM backup_policies WHERE account_id = $1 AND instance_id = $2")
                .bind(account_id)
                .bind(instance_id)
                .fetch_optional(&self.pool)
                .await?;
        r.as_ref().map(policy_from_row).transpose()
    }

    async fn put_backup_policy(
        &self,
        account_id: &str,
        instance_id: &str,
        p: &StoredPolicy,
    ) -> CatalogResult<()> {
        let mut tx = self.begin().await?;
        let owned: Option<String> =
            sqlx::query_scalar("SELECT id FROM instances WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(instance_id)
                .fetch_optional(&mut *tx)
                .await?;
        if owned.is_none() {
            return Err(CatalogError::NotFound(format!("instance {instance_id}")));
        }
        sqlx::query(
            "INSERT INTO backup_policies (instance_id, account_id, enabled, \"window\", weekdays, retention_days, extra, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (instance_id) DO UPDATE SET enabled = excluded.enabled, \"window\" = excluded.\"window\",
               weekdays = excluded.weekdays, retention_days = excluded.retention_days,
               extra = excluded.extra, updated_ms = excluded.updated_ms",
        )
        .bind(instance_id)
        .bind(account_id)
        .bind(i64::from(p.policy.enabled))
        .bind(p.policy.window.to_string())
        .bind(p.policy.weekdays.to_string())
        .bind(p.policy.retention_days as i64)
        .bind(serde_json::Value::Object(p.extra.clone()).to_string())
        .bind(p.updated_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE backup_sets SET expires_ms = finished_ms + $1 WHERE instance_id = $2 AND expiry_pinned = 0",
        )
        .bind(p.policy.retention_days as i64 * stowage_core::time::MS_PER_DAY)
        .bind(instance_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn instance_policies(&self) -> CatalogResult<Vec<InstancePolicy>> {
        let rows = sqlx::query(
            "SELECT i.id AS iid, i.account_id AS iacc, i.engine AS iengine, p.* FROM instances i
             LEFT JOIN backup_policies p ON p.instance_id = i.id ORDER BY i.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let has: Option<String> = r.try_get("instance_id")?;
                Ok(InstancePolicy {
                    instance_id: r.try_get("iid")?,
                    account_id: r.try_get("iacc")?,
                    engine: r.try_get("iengine")?,
                    policy: match has {
                        Some(_) => Some(policy_from_row(r)?),
                        None => None,
                    },
                })
            })
            .collect()
    }

    async fn due_scheduled_tasks(&self, now_ms: i64) -> CatalogResult<Vec<Task>> {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE state = 'pending' AND active IS NULL AND scheduled_ms <= $1
             ORDER BY scheduled_ms, id",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn claim_scheduled_task(
        &self,
        id: i64,
        node: &str,
        now_ms: i64,
        lease_until_ms: Option<i64>,
    ) -> CatalogResult<()> {
        let res = sqlx::query(
            "UPDATE tasks SET active = 1, node = $1, updated_ms = $2,
               lease_epoch = lease_epoch + 1, lease_expires_ms = $4, result = NULL
             WHERE id = $3 AND state = 'pending' AND active IS NULL",
        )
        .bind(node)
        .bind(now_ms)
        .bind(id)
        .bind(lease_until_ms)
        .execute(&self.pool)
        .await;
        match res {
            Ok(r) if r.rows_affected() == 1 => Ok(()),
            Ok(_) => Err(CatalogError::Conflict(format!(
                "backup task {id} is no longer waiting for its window"
            ))),
            Err(e) if is_unique_violation(&e) => {
                Err(CatalogError::InstanceBusy(format!("of task {id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn set_snapshot_ids(&self) -> CatalogResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT snapshot_id FROM backup_sets")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn snapshot_named(&self, snapshot_id: &str) -> CatalogResult<bool> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT id FROM backup_sets WHERE snapshot_id = $1 LIMIT 1")
                .bind(snapshot_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(n.is_some())
    }

    async fn queue_scheduled_task(&self, id: i64, now_ms: i64) -> CatalogResult<bool> {
        let note = serde_json::json!({
            "queued_ms": now_ms,
            "why": "the limit of concurrent automated backups is reached",
        });
        Ok(sqlx::query(
            "UPDATE tasks SET result = $1, updated_ms = $2
             WHERE id = $3 AND state = 'pending' AND active IS NULL AND result IS NULL",
        )
        .bind(note.to_string())
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    async fn active_automated_backups(&self) -> CatalogResult<u64> {
        // Through the state index: few tasks are unfinished.
        let sql = format!(
            "SELECT COUNT(*) FROM tasks WHERE state IN ({})
               AND mode = 'automated' AND kind = 'backup' AND parent_id IS NULL AND active IS NOT NULL",
            literals(
                TaskState::ALL
                    .iter()
                    .filter(|s| !s.is_terminal())
                    .map(|s| s.as_str())
            )
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn drop_scheduled_tasks(
        &self,
        instance_id: &str,
        keep_ms: Option<i64>,
        reason: &str,
        now_ms: i64,
    ) -> CatalogResult<u64> {
        Ok(sqlx::query(
            "UPDATE tasks SET state = 'cancelled', error = $1, scheduled_ms = NULL,
               finished_ms = $2, updated_ms = $3
             WHERE instance_id = $4 AND state = 'pending' AND active IS NULL
               AND scheduled_ms IS NOT NULL AND scheduled_ms IS DISTINCT FROM $5",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(now_ms)
        .bind(instance_id)
        .bind(keep_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    /// A catalog from before the one task model keeps its backup task ids
    /// (a set's id is its task's), its jobs get ids after every task and set
    /// id ever used, and the instance slot still works.
    #[tokio::test]
    async fn backup_tasks_and_jobs_migrate_into_one_table() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("catalog.db");
        let pool = SqlitePoolOptions::new()
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::query("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        for (v, sql) in &MIGRATIONS[..6] {
            sqlx::raw_sql(*sql).execute(&pool).await.unwrap();
            sqlx::query("INSERT INTO schema_migrations VALUES (?, 0)")
                .bind(v)
                .execute(&pool)
                .await
                .unwrap();
        }
        sqlx::raw_sql(
            "INSERT INTO backup_tasks (id, account_id, instance_id, mode, method, state, active, created_ms, updated_ms, set_id)
               VALUES (3, 'A', 'rm-1', 'manual', 'physical', 'finished', NULL, 1, 2, 3),
                      (7, 'A', 'rm-1', 'manual', 'physical', 'running', 1, 1, 2, NULL);
             INSERT INTO backup_sets (id, account_id, instance_id, task_id, snapshot_id, engine, method, mode, started_ms, finished_ms, bytes_logical, bytes_stored, meta)
               VALUES (3, 'A', 'rm-1', 3, 'ab', 'postgresql', 'physical', 'manual', 1, 2, 10, 1, '{\"server_version\":\"16.4\"}');
             INSERT INTO jobs (account_id, kind, state, set_id, params, created_ms, updated_ms, result)
               VALUES ('A', 'restore', 'finished', 3, '{\"target\":\"/x\"}', 5, 6, '{\"files\":2}'),
                      ('A', 'verify', 'failed', NULL, '{}', 7, 8, NULL);
             UPDATE sqlite_sequence SET seq = 9 WHERE name = 'backup_tasks';",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let c = SqlCatalog::open(&path).await.unwrap();
        let all = c.list_tasks("A", &TaskFilter::default()).await.unwrap();
        let got: Vec<_> = all.iter().map(|t| (t.id, t.kind, t.state)).collect();
        assert_eq!(
            got,
            vec![
                (11, TaskKind::Verify, TaskState::Failed),
                (10, TaskKind::Restore, TaskState::Finished),
                (7, TaskKind::Backup, TaskState::Running),
                (3, TaskKind::Backup, TaskState::Finished),
            ]
        );
        let r = &all[1];
        assert_eq!(r.set_id, Some(3));
        assert_eq!(r.params["target"], "/x");
        assert_eq!(r.result.as_ref().unwrap()["files"], 2);
        assert_eq!(all[3].set_id, Some(3));
        // Task 7 still holds rm-1's slot.
        assert!(matches!(
            c.create_task(
                &NewTask::backup("A", "rm-1", TaskMode::Manual, "physical"),
                9
            )
            .await,
            Err(CatalogError::InstanceBusy(_))
        ));
        let next = c
            .create_task(
                &NewTask::backup("A", "rm-2", TaskMode::Manual, "physical"),
                9,
            )
            .await
            .unwrap();
        assert_eq!(next.id, 12);
        // Sets get their engine version from their metadata.
        let set = c.backup_set("A", 3).await.unwrap().unwrap();
        assert_eq!(set.engine_version.as_deref(), Some("16.4"));
    }
}
