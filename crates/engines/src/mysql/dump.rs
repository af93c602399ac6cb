//! The logical backup of a MySQL/MariaDB server: one consistent point for
//! every table, N workers, tables in primary-key ranges, streamed into one
//! archive of the set as it is read.
//!
//! The consistent point:
//! * every table transactional (InnoDB), MariaDB with its binary log on:
//!   each worker starts `START TRANSACTION WITH CONSISTENT SNAPSHOT` and
//!   reads the binary log position of its own snapshot
//!   (`binlog_snapshot_file/position`); when every worker's position is the
//!   same, every snapshot holds exactly the transactions logged up to it. No
//!   lock at all. Tried a few times under heavy writes, then:
//! * otherwise (non-transactional tables, MySQL, no binary log, positions
//!   never agreeing): a brief `FLUSH TABLES WITH READ LOCK`, held while
//!   every worker starts its snapshot and the position is read, and on
//!   until the non-transactional tables are dumped.
//!
//! Every table's `CREATE TABLE` is read before the snapshots and again after
//! the data; a table altered in between fails the backup by name (a read
//! after such a DDL fails too: the server's error 1412). Each range is read
//! after a savepoint that is rolled back afterwards, which releases the
//! table's metadata lock while keeping the snapshot (as mysqldump does), so
//! the backup never holds up a DDL for longer than one range takes.

use super::sql::{self, ValueKind};
use super::{ARCHIVE, Facts, Flavor, Session, check_server, err, runtime};
use crate::new_file as file;
use crate::{BackupOptions, BackupOutcome, ConnSpec, EngineError, ErrorKind, RateLimit, join_all};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use stowage_core::{ConsistentPoint, LiveTask, TaskState};
use stowage_repo::{ArchiveWriter, BackupWriter};

/// The dump's own description of itself, the last file of the archive.
pub const INDEX_FILE: &str = "stowage-dump.json";

/// Databases that are the server's own, never dumped.
pub const SYSTEM_DATABASES: &[&str] = &["information_schema", "performance_schema", "mysql", "sys"];

#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Workers (connections); 0: one per core.
    pub threads: usize,
    pub max_rate_kbps: Option<u32>,
    /// A table larger than this (by the server's estimate) is split into
    /// key ranges of about this size.
    pub range_bytes: u64,
    /// Always line the snapshots up under the brief global read lock (tests).
    pub force_lock: bool,
    /// The instance's newest set, to build on ([`super::binlog`]).
    pub base: Option<crate::BaseSet>,
}

impl DumpOptions {
    pub fn from_backup(o: &BackupOptions) -> DumpOptions {
        DumpOptions {
            threads: 0,
            max_rate_kbps: o.max_rate_kbps,
            range_bytes: 64 << 20,
            force_lock: false,
            base: o.base.clone(),
        }
    }
}

/// A table, view or sequence as the dump index records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    pub db: String,
    pub name: String,
    /// `table`, `view`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The file holding its `CREATE` statement.
    pub schema: String,
    /// The columns the data files name (generated columns are left out:
    /// the server computes them again).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Data files, in key order.
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub rows: u64,
    /// A sequence: the next value it hands out without reusing any (its
    /// `next_not_cached_value`, read after the data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_value: Option<String>,
}

/// A routine, trigger or event: its file and the `sql_mode` it was made in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub db: String,
    pub name: String,
    /// `procedure`, `function`, `trigger`, `event`.
    pub kind: String,
    pub sql_mode: String,
    pub file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseEntry {
    pub name: String,
    pub file: String,
}

/// `stowage-dump.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpIndex {
    pub format: u32,
    pub flavor: Flavor,
    pub server_version: String,
    pub point: ConsistentPoint,
    pub databases: Vec<DatabaseEntry>,
    pub tables: Vec<TableEntry>,
    pub objects: Vec<ObjectEntry>,
    /// The largest `INSERT` statement of the data files, in bytes: a
    /// server restored into must take packets this large
    /// (`max_allowed_packet`).
    #[serde(default)]
    pub max_statement: u64,
}

/// A logical set's dump opened for reading: its files by path and its
/// index (what a restore and an export both start from).
pub struct OpenedDump<'a> {
    repo: &'a std::sync::Arc<stowage_repo::Repository>,
    by_path: BTreeMap<&'a str, &'a stowage_core::manifest::FileEntry>,
    pub index: DumpIndex,
}

impl<'a> OpenedDump<'a> {
    pub fn open(
        repo: &'a std::sync::Arc<stowage_repo::Repository>,
        m: &'a stowage_core::manifest::Manifest,
    ) -> Result<OpenedDump<'a>, EngineError> {
        let a = m
            .archives
            .iter()
            .find(|a| a.name == ARCHIVE)
            .ok_or_else(|| err(ErrorKind::Unsupported, "this set holds no MySQL dump"))?;
        let mut d = OpenedDump {
            repo,
            by_path: a.files.iter().map(|f| (f.path.as_str(), f)).collect(),
            index: DumpIndex {
                format: 0,
                flavor: Flavor::MariaDb,
                server_version: String::new(),
                point: ConsistentPoint::Binlog {
                    server_id: 0,
                    binlog_file: None,
                    binlog_position: None,
                    gtid_set: None,
                },
                databases: Vec::new(),
                tables: Vec::new(),
                objects: Vec::new(),
                max_statement: 0,
            },
        };
        d.index = serde_json::from_slice(&d.read(INDEX_FILE)?)
            .map_err(|e| err(ErrorKind::Protocol, format!("{INDEX_FILE}: {e}")))?;
        Ok(d)
    }

    /// A file the index names.
    pub fn file(&self, p: &str) -> Result<&'a stowage_core::manifest::FileEntry, EngineError> {
        self.by_path.get(p).copied().ok_or_else(|| {
            err(
                ErrorKind::Repository,
                format!("the set lacks {p}, which its dump index names"),
            )
        })
    }

    /// Whether the set has this file.
    pub fn has(&self, p: &str) -> bool {
        self.by_path.contains_key(p)
    }

    /// A whole (small) file.
    pub fn read(&self, p: &str) -> Result<Vec<u8>, EngineError> {
        use std::io::Read;
        let f = self.file(p)?;
        let mut v = Vec::new();
        self.repo
            .file_reader(f)
            .read_to_end(&mut v)
            .map_err(|e| err(ErrorKind::Repository, format!("{}: {e}", f.path)))?;
        Ok(v)
    }

    /// A statement as stored, without its trailing `;` and newlines.
    pub fn statement(&self, p: &str) -> Result<Vec<u8>, EngineError> {
        let mut v = self.read(p)?;
        while matches!(v.last(), Some(b'\n' | b';' | b'\r')) {
            v.pop();
        }
        Ok(v)
    }
}

/// One whole file into the archive.
pub(super) fn put(w: &mut ArchiveWriter, path: String, data: &[u8]) -> Result<(), EngineError> {
    w.begin_file(file(path))?;
    w.write(data)?;
    w.end_file()?;
    Ok(())
}

/// A base table to dump, with what the plan needs.
#[derive(Debug, Clone)]
struct Table {
    db: String,
    name: String,
    engine: String,
    transactional: bool,
    data_length: u64,
    /// Dumped columns (not generated), in order.
    columns: Vec<String>,
    /// What the dump selects for each of `columns`: the name, or for a
    /// `FLOAT` the value as a `DOUBLE` (a `FLOAT`'s own text has 6 digits
    /// and would not read back the same).
    select: Vec<String>,
    /// The primary key's columns.
    key: Vec<String>,
    /// The key is one integer column (ranges can be cut on it).
    int_key: bool,
}

/// Engines whose rows are not the table's own (a MERGE table's are its
/// underlying tables', a FEDERATED/CONNECT/SPIDER table's another server's,
/// a BLACKHOLE table keeps none): their definition is backed up, their rows
/// are not (as mysqldump does), or a restore would duplicate them or write
/// them into another server.
pub fn data_is_elsewhere(engine: &str) -> bool {
    matches!(
        engine.to_ascii_uppercase().as_str(),
        "MRG_MYISAM"
            | "MRG_MYISAM_LEGACY"
            | "MERGE"
            | "FEDERATED"
            | "FEDERATEDX"
            | "CONNECT"
            | "SPIDER"
            | "BLACKHOLE"
    )
}

/// One piece of work: a table or a key range of one.
#[derive(Debug, Clone)]
struct Work {
    table: usize,
    seq: usize,
    /// `[from, to)` on the integer key; `None` ends are open.
    range: Option<(Option<i128>, Option<i128>)>,
    est: u64,
}

fn system_db_list() -> String {
    SYSTEM_DATABASES
        .iter()
        .map(|d| sql::string_literal(d))
        .collect::<Vec<_>>()
        .join(",")
}

fn int_type(t: &str) -> bool {
    matches!(
        t.to_ascii_lowercase().as_str(),
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
    )
}

/// Reads the tables, their columns and keys.
/// A view or sequence: its database and name.
type ObjectName = (String, String);

/// Base tables, views, sequences (MariaDB).
type Listing = (Vec<Table>, Vec<ObjectName>, Vec<ObjectName>);

fn list_tables(c: &mut Session) -> Result<Listing, EngineError> {
    let sys = system_db_list();
    let rows = c.text_rows(format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE, ENGINE, DATA_LENGTH FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA NOT IN ({sys}) ORDER BY TABLE_SCHEMA, TABLE_NAME"
    ))?;
    let mut tables = Vec::new();
    let mut views = Vec::new();
    let mut sequences = Vec::new();
    for r in rows {
        let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let (db, name, ty) = (g(0), g(1), g(2));
        sql::check_name("database", &db).map_err(|m| err(ErrorKind::Unsupported, m))?;
        sql::check_name("table", &format!("{db}.{name}"))
            .map_err(|m| err(ErrorKind::Unsupported, m))?;
        match ty.as_str() {
            "VIEW" | "SYSTEM VIEW" => views.push((db, name)),
            "SEQUENCE" => sequences.push((db, name)),
            "TEMPORARY" => {}
            _ => {
                let engine = g(3);
                tables.push(Table {
                    transactional: engine.eq_ignore_ascii_case("InnoDB"),
                    engine,
                    data_length: g(4).parse().unwrap_or(0),
                    db,
                    name,
                    columns: Vec::new(),
                    select: Vec::new(),
                    key: Vec::new(),
                    int_key: false,
                });
            }
        }
    }
    let idx: BTreeMap<(String, String), usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| ((t.db.clone(), t.name.clone()), i))
        .collect();
    let mut key_types: BTreeMap<(usize, String), String> = BTreeMap::new();
    for r in c.text_rows(format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, EXTRA, DATA_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA NOT IN ({sys}) ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
    ))? {
        let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let Some(&t) = idx.get(&(g(0), g(1))) else {
            continue;
        };
        sql::check_name("column", &format!("{}.{}.{}", g(0), g(1), g(2)))
            .map_err(|m| err(ErrorKind::Unsupported, m))?;
        let extra = g(3).to_ascii_uppercase();
        key_types.insert((t, g(2)), g(4));
        if extra.contains("VIRTUAL") || extra.contains("STORED") || extra.contains("PERSISTENT") {
            continue;
        }
        let name = g(2);
        tables[t].select.push(if g(4).eq_ignore_ascii_case("float") {
            format!("CAST({} AS DOUBLE)", sql::ident(&name))
        } else {
            sql::ident(&name)
        });
        tables[t].columns.push(name);
    }
    for r in c.text_rows(format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
         WHERE INDEX_NAME = 'PRIMARY' AND TABLE_SCHEMA NOT IN ({sys}) ORDER BY TABLE_SCHEMA, TABLE_NAME, SEQ_IN_INDEX"
    ))? {
        let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        if let Some(&t) = idx.get(&(g(0), g(1))) {
            tables[t].key.push(g(2));
        }
    }
    for (i, t) in tables.iter_mut().enumerate() {
        t.int_key = t.key.len() == 1
            && key_types
                .get(&(i, t.key[0].clone()))
                .is_some_and(|ty| int_type(ty));
    }
    Ok((tables, views, sequences))
}

/// `SHOW CREATE <what> <name>`'s statement (its second column), `None`
/// when the server returns no row.
fn show_create(c: &mut Session, what: &str, name: &str) -> Result<Option<String>, EngineError> {
    Ok(c.text_rows(format!("SHOW CREATE {what} {name}"))?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().nth(1).flatten()))
}

/// [`show_create`] of `db`.`name`, which must exist.
fn show_create_of(
    c: &mut Session,
    what: &str,
    db: &str,
    name: &str,
) -> Result<String, EngineError> {
    show_create(c, what, &sql::qualified(db, name))?.ok_or_else(|| {
        err(
            ErrorKind::Protocol,
            format!("SHOW CREATE {what} {db}.{name} returned nothing"),
        )
    })
}

/// `SHOW CREATE TABLE` of every table, by position.
fn table_schemas(c: &mut Session, tables: &[Table]) -> Result<Vec<String>, EngineError> {
    tables
        .iter()
        .map(|t| show_create_of(c, "TABLE", &t.db, &t.name))
        .collect()
}

impl TableEntry {
    /// A view or sequence: its definition's file, no data.
    fn definition(db: &str, name: &str, kind: &str, schema: String) -> TableEntry {
        TableEntry {
            db: db.to_string(),
            name: name.to_string(),
            kind: kind.to_string(),
            engine: None,
            schema,
            columns: Vec::new(),
            files: Vec::new(),
            rows: 0,
            next_value: None,
        }
    }
}

/// Cuts tables into work: integer-keyed tables larger than `range_bytes`
/// into about equal key ranges; the largest pieces first.
fn plan(c: &mut Session, tables: &[Table], range_bytes: u64) -> Result<Vec<Work>, EngineError> {
    let mut work = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        if data_is_elsewhere(&t.engine) {
            continue;
        }
        let pieces = t.data_length.div_ceil(range_bytes.max(1)).clamp(1, 1024);
        let mut ranges: Vec<Option<(Option<i128>, Option<i128>)>> = vec![None];
        if t.int_key && pieces > 1 {
            let k = sql::ident(&t.key[0]);
            let r = c.text_rows(format!(
                "SELECT MIN({k}), MAX({k}) FROM {}",
                sql::qualified(&t.db, &t.name)
            ))?;
            let row = r.into_iter().next().unwrap_or_default();
            let lo = row
                .first()
                .cloned()
                .flatten()
                .and_then(|v| v.parse::<i128>().ok());
            let hi = row
                .get(1)
                .cloned()
                .flatten()
                .and_then(|v| v.parse::<i128>().ok());
            if let (Some(lo), Some(hi)) = (lo, hi) {
                let n = (pieces as i128).min(hi - lo + 1).max(1);
                let cut = |j: i128| lo + (hi - lo + 1) * j / n;
                ranges = (0..n)
                    .map(|j| Some(((j > 0).then(|| cut(j)), (j < n - 1).then(|| cut(j + 1)))))
                    .collect();
            }
        }
        let n = ranges.len() as u64;
        for (seq, range) in ranges.into_iter().enumerate() {
            work.push(Work {
                table: i,
                seq,
                range,
                est: t.data_length / n,
            });
        }
    }
    work.sort_by_key(|w| std::cmp::Reverse(w.est));
    Ok(work)
}

/// One range's share of the dump's progress. The total starts as the
/// sum of the server's estimates (`information_schema` DATA_LENGTH, stale
/// right after a bulk load, and not the size of the SQL text), and each
/// range corrects it by its own error: a range read past its estimate
/// grows the total as it goes, one that ends short shrinks it. So the
/// total is always what was read plus what the unread ranges are
/// estimated at, and the bar never sits at 100 % while ranges remain.
struct Tally {
    est: u64,
    counted: u64,
}

impl Tally {
    fn new(est: u64) -> Tally {
        Tally { est, counted: 0 }
    }

    fn add(&mut self, live: &LiveTask, n: u64) {
        let over = (self.counted + n).saturating_sub(self.counted.max(self.est));
        self.counted += n;
        if over > 0 {
            live.bytes_total.fetch_add(over, Ordering::Relaxed);
        }
        live.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    fn finish(self, live: &LiveTask) {
        if self.counted < self.est {
            live.bytes_total
                .fetch_sub(self.est - self.counted, Ordering::Relaxed);
        }
    }
}

/// What the workers of one dump share.
#[derive(Clone, Copy)]
struct RunState<'a> {
    live: &'a LiveTask,
    limit: &'a RateLimit,
    rows_done: &'a AtomicU64,
    /// Set by the first worker that fails.
    abort: &'a std::sync::atomic::AtomicBool,
    /// The largest statement written (a restore's target must take it).
    max_statement: &'a AtomicU64,
}

/// Reads a table's (or range's) rows and writes them as `INSERT` statements.
fn dump_work(
    s: &mut Session,
    t: &Table,
    w: &Work,
    out: &mut ArchiveWriter,
    run: &RunState<'_>,
) -> Result<(String, u64), EngineError> {
    let RunState {
        live,
        limit,
        rows_done,
        abort,
        max_statement,
    } = *run;
    let path = format!(
        "{}.{}.{:05}.sql",
        sql::file_name(&t.db),
        sql::file_name(&t.name),
        w.seq
    );
    let cols: Vec<String> = t.columns.iter().map(|c| sql::ident(c)).collect();
    let mut q = format!(
        "SELECT {} FROM {}",
        t.select.join(","),
        sql::qualified(&t.db, &t.name)
    );
    if let Some((from, to)) = w.range {
        let k = sql::ident(&t.key[0]);
        let mut conds = Vec::new();
        if let Some(f) = from {
            conds.push(format!("{k} >= {f}"));
        }
        if let Some(to) = to {
            conds.push(format!("{k} < {to}"));
        }
        if !conds.is_empty() {
            q.push_str(" WHERE ");
            q.push_str(&conds.join(" AND "));
        }
    }
    if !t.key.is_empty() {
        let k: Vec<String> = t.key.iter().map(|c| sql::ident(c)).collect();
        q.push_str(" ORDER BY ");
        q.push_str(&k.join(","));
    }
    let mut header = b"INSERT INTO ".to_vec();
    sql::push_ident(&mut header, &t.name);
    header.extend_from_slice(b" (");
    header.extend_from_slice(cols.join(",").as_bytes());
    header.extend_from_slice(b") VALUES\n");

    let mut tally = Tally::new(w.est);
    out.begin_file(file(path.clone()))?;
    s.exec("SAVEPOINT stowage_range")?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 18);
    let mut row: Vec<u8> = Vec::with_capacity(1024);
    let mut kinds: Vec<ValueKind> = Vec::new();
    let mut in_statement = false;
    let mut stmt_bytes = 0usize;
    let mut rows = 0u64;
    let res = s.stream(q, &mut |columns, values| {
        if kinds.is_empty() {
            kinds = columns.iter().map(value_kind).collect();
        }
        if values.len() != kinds.len() {
            return Err(err(
                ErrorKind::Protocol,
                format!(
                    "{}.{}: a row with {} values for {} columns",
                    t.db,
                    t.name,
                    values.len(),
                    kinds.len()
                ),
            ));
        }
        row.clear();
        row.push(b'(');
        for (i, (v, k)) in values.iter().zip(&kinds).enumerate() {
            if i > 0 {
                row.push(b',');
            }
            sql::push_value(&mut row, *k, v.as_deref());
        }
        row.push(b')');
        if !in_statement {
            buf.extend_from_slice(&header);
            in_statement = true;
            stmt_bytes = 0;
        }
        buf.extend_from_slice(&row);
        stmt_bytes += row.len() + 2;
        rows += 1;
        max_statement.fetch_max((header.len() + stmt_bytes) as u64, Ordering::Relaxed);
        if sql::ends_statement(&row, 8) || stmt_bytes >= 1 << 20 {
            buf.extend_from_slice(b";\n");
            in_statement = false;
        } else {
            buf.extend_from_slice(b",\n");
        }
        if buf.len() >= 1 << 18 {
            out.write(&buf)?;
            tally.add(live, buf.len() as u64);
            limit.consume(buf.len() as u64, live);
            buf.clear();
            if live.is_cancelled() || abort.load(Ordering::Relaxed) {
                return Err(err(ErrorKind::Cancelled, "cancelled"));
            }
        }
        Ok(())
    });
    res.map_err(|e| EngineError {
        message: format!("{}.{}: {}", t.db, t.name, e.message),
        ..e
    })?;
    if in_statement {
        // The last row ended with ",\n": close the statement instead.
        buf.truncate(buf.len() - 2);
        buf.extend_from_slice(b";\n");
    }
    out.write(&buf)?;
    tally.add(live, buf.len() as u64);
    tally.finish(live);
    out.end_file()?;
    s.exec("ROLLBACK TO SAVEPOINT stowage_range")?;
    rows_done.fetch_add(rows, Ordering::Relaxed);
    Ok((path, rows))
}

fn value_kind(c: &mysql_async::Column) -> ValueKind {
    use mysql_async::consts::ColumnType as T;
    match c.column_type() {
        T::MYSQL_TYPE_TINY
        | T::MYSQL_TYPE_SHORT
        | T::MYSQL_TYPE_LONG
        | T::MYSQL_TYPE_INT24
        | T::MYSQL_TYPE_LONGLONG
        | T::MYSQL_TYPE_FLOAT
        | T::MYSQL_TYPE_DOUBLE
        | T::MYSQL_TYPE_DECIMAL
        | T::MYSQL_TYPE_NEWDECIMAL
        | T::MYSQL_TYPE_YEAR => ValueKind::Number,
        T::MYSQL_TYPE_BIT => ValueKind::Bits,
        T::MYSQL_TYPE_JSON => ValueKind::Json,
        _ => ValueKind::Quoted,
    }
}

/// The binary log file and position the server writes at now
/// (`SHOW MASTER STATUS`); `None` when it reports none.
pub(super) fn binlog_status(
    c: &mut Session,
    f: &Facts,
) -> Result<Option<(String, u64)>, EngineError> {
    let row = c
        .text_rows(f.binlog_status_sql())?
        .into_iter()
        .next()
        .unwrap_or_default();
    Ok(
        match (
            row.first().cloned().flatten(),
            row.get(1).cloned().flatten().and_then(|p| p.parse().ok()),
        ) {
            (Some(file), Some(pos)) => Some((file, pos)),
            _ => None,
        },
    )
}

/// The binary log position (and GTID set) the server is at now; for use
/// under the global read lock.
fn binlog_now(c: &mut Session, f: &Facts) -> Result<ConsistentPoint, EngineError> {
    let (file, pos) = if f.log_bin {
        match binlog_status(c, f)? {
            Some((file, pos)) => (Some(file), Some(pos)),
            None => (None, None),
        }
    } else {
        (None, None)
    };
    let gtid = match f.flavor {
        Flavor::MariaDb => c.value("SELECT @@gtid_binlog_pos")?,
        Flavor::MySql => c.value("SELECT @@gtid_executed")?,
    }
    .filter(|g| !g.is_empty());
    Ok(ConsistentPoint::Binlog {
        server_id: f.server_id,
        binlog_file: file,
        binlog_position: pos,
        gtid_set: gtid,
    })
}

/// How the workers' snapshots were lined up.
#[derive(Debug, Clone, Serialize)]
struct Lineup {
    /// `snapshot` (no lock) or `read_lock`.
    method: &'static str,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    why_lock: Option<String>,
    /// Milliseconds the global read lock was held.
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_ms: Option<u64>,
}

/// A snapshot's binary log file and position.
type SnapshotPos = (Option<String>, Option<u64>);

/// Starts a snapshot on `w` and reads its binary log position (MariaDB).
fn snapshot_position(w: &mut Session) -> Result<SnapshotPos, EngineError> {
    w.exec("START TRANSACTION WITH CONSISTENT SNAPSHOT")?;
    let mut file = None;
    let mut pos = None;
    for r in w.text_rows("SHOW SESSION STATUS LIKE 'binlog_snapshot_%'")? {
        match r.first().cloned().flatten().as_deref() {
            Some("Binlog_snapshot_file") => file = r.get(1).cloned().flatten(),
            Some("Binlog_snapshot_position") => {
                pos = r
                    .get(1)
                    .cloned()
                    .flatten()
                    .and_then(|p| p.parse::<u64>().ok())
            }
            _ => {}
        }
    }
    Ok((file, pos))
}

/// Starts every worker's snapshot at one point without a lock (MariaDB,
/// binary log on): `None` when the positions never agreed.
fn lineup_without_lock(
    c: &mut Session,
    workers: &mut [Session],
    f: &Facts,
) -> Result<Option<(ConsistentPoint, u32)>, EngineError> {
    const ATTEMPTS: u32 = 8;
    for attempt in 1..=ATTEMPTS {
        // All at once, so a commit between two of them is less likely.
        let positions: Vec<Result<SnapshotPos, EngineError>> = std::thread::scope(|sc| {
            let handles: Vec<_> = workers
                .iter_mut()
                .map(|w| sc.spawn(move || snapshot_position(w)))
                .collect();
            join_all(handles, "a snapshot")
        });
        let mut seen = BTreeSet::new();
        for p in positions {
            seen.insert(p?);
        }
        if seen.len() == 1 {
            let (file, pos) = seen.into_iter().next().expect("one");
            if let (Some(file), Some(pos)) = (file, pos) {
                let gtid = c
                    .value(format!(
                        "SELECT BINLOG_GTID_POS({}, {pos})",
                        sql::string_literal(&file)
                    ))?
                    .filter(|g| !g.is_empty());
                return Ok(Some((
                    ConsistentPoint::Binlog {
                        server_id: f.server_id,
                        binlog_file: Some(file),
                        binlog_position: Some(pos),
                        gtid_set: gtid,
                    },
                    attempt,
                )));
            }
        }
        for w in workers.iter_mut() {
            w.exec("ROLLBACK")?;
        }
    }
    Ok(None)
}

pub fn backup(
    conn: &ConnSpec,
    o: &DumpOptions,
    writer: &mut BackupWriter,
    live: &LiveTask,
) -> Result<BackupOutcome, EngineError> {
    live.set_state(TaskState::Checking);
    let rt = runtime()?;
    let mut c = Session::connect(&rt, conn)?;
    let f = check_server(&mut c, &conn.user)?;
    // Built on the newest set (its dump and the binary log since) where it
    // can be; else a new dump, which says why.
    let mut why_new = None;
    if let Some(b) = &o.base {
        match super::binlog::plan(&mut c, &f, &conn.user, b, writer)? {
            Ok(p) => match super::binlog::build_on(&rt, conn, &mut c, &f, p, writer, live)? {
                Ok(out) => {
                    c.close();
                    return Ok(out);
                }
                Err(why) => why_new = Some(format!("set {} not built on: {why}", b.id)),
            },
            Err(why) => why_new = Some(format!("set {} not built on: {why}", b.id)),
        }
        if let Some(why) = &why_new {
            tracing::info!(base = b.id, reason = %why, "taking a new MySQL dump");
        }
    }
    let started_ms = stowage_repo::lock::now_ms();
    live.set_state(TaskState::Preparing);
    let (tables, views, sequences) = list_tables(&mut c)?;
    let before = table_schemas(&mut c, &tables)?;
    let work = plan(&mut c, &tables, o.range_bytes)?;
    let threads = if o.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        o.threads
    }
    .clamp(1, 16)
    .min(work.len().max(1));
    let mut workers = Vec::with_capacity(threads);
    for _ in 0..threads {
        let mut s = Session::connect(&rt, conn)?;
        s.exec("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")?;
        workers.push(s);
    }
    let non_tx: Vec<&Table> = tables
        .iter()
        .filter(|t| !t.transactional && !data_is_elsewhere(&t.engine))
        .collect();
    let why_lock = if o.force_lock {
        Some("asked for".to_string())
    } else if !non_tx.is_empty() {
        Some(format!(
            "non-transactional tables: {}",
            non_tx
                .iter()
                .take(5)
                .map(|t| format!("{}.{} ({})", t.db, t.name, t.engine))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else if f.flavor != Flavor::MariaDb {
        Some("MySQL reports no binary log position per snapshot".into())
    } else if !f.log_bin {
        Some("the binary log is off: no position to line the snapshots up on".into())
    } else {
        None
    };
    let mut lineup = Lineup {
        method: "snapshot",
        attempts: 0,
        why_lock: why_lock.clone(),
        lock_ms: None,
    };
    let mut point = None;
    if why_lock.is_none() {
        match lineup_without_lock(&mut c, &mut workers, &f)? {
            Some((p, attempts)) => {
                point = Some(p);
                lineup.attempts = attempts;
            }
            None => {
                lineup.why_lock = Some(
                    "the snapshots' positions did not agree in 8 attempts (heavy writes)".into(),
                )
            }
        }
    }
    let mut locked_at = None;
    if point.is_none() {
        lineup.method = "read_lock";
        // A DDL or a long query would hold the lock request (and every
        // writer behind it) for ever: give up after a while instead.
        c.exec("SET SESSION lock_wait_timeout = 60")?;
        c.exec("FLUSH TABLES WITH READ LOCK")
            .map_err(|e| EngineError {
                message: format!("taking the brief global read lock: {}", e.message),
                ..e
            })?;
        locked_at = Some(std::time::Instant::now());
        for w in workers.iter_mut() {
            w.exec("START TRANSACTION WITH CONSISTENT SNAPSHOT")?;
        }
        point = Some(binlog_now(&mut c, &f)?);
    }
    let point = point.expect("lined up");
    // A table created or dropped while the snapshots were lined up may or
    // may not be at the point: listed again, the list must be the same.
    let (again, _, _) = list_tables(&mut c)?;
    let names = |ts: &[Table]| {
        ts.iter()
            .map(|t| (t.db.clone(), t.name.clone()))
            .collect::<BTreeSet<_>>()
    };
    if names(&again) != names(&tables) {
        return Err(err(
            ErrorKind::Protocol,
            "tables were created or dropped while the backup began, so the set could miss one; nothing was stored; run the backup again",
        ));
    }
    tracing::info!(point = %point, method = lineup.method, "MySQL snapshots lined up");

    // The server's estimates (corrected per range as it is read: `Tally`).
    live.bytes_total
        .store(work.iter().map(|w| w.est).sum(), Ordering::Relaxed);
    live.set_state(TaskState::Running);
    let limit = RateLimit::new(o.max_rate_kbps);
    let rows_done = AtomicU64::new(0);
    let max_statement = AtomicU64::new(0);
    let files: Mutex<BTreeMap<(usize, usize), (String, u64)>> = Mutex::new(BTreeMap::new());
    let (nt_work, tx_work): (Vec<Work>, Vec<Work>) = work
        .into_iter()
        .partition(|w| locked_at.is_some() && !tables[w.table].transactional);

    // Runs a queue of work on every worker at once.
    let run = |queue: Vec<Work>, workers: Vec<(Session, ArchiveWriter)>| {
        let queue = Mutex::new(queue.into_iter().rev().collect::<Vec<_>>());
        // Set by the first worker that fails: the others stop at their next
        // write instead of finishing their tables (under the global read
        // lock, every writer of the server waits for them).
        let abort = std::sync::atomic::AtomicBool::new(false);
        let results: Vec<Result<(Session, ArchiveWriter), EngineError>> =
            std::thread::scope(|sc| {
                let handles: Vec<_> = workers
                    .into_iter()
                    .map(|(mut s, mut w)| {
                        let (queue, tables, files, limit, rows_done, abort, max_statement) = (
                            &queue,
                            &tables,
                            &files,
                            &limit,
                            &rows_done,
                            &abort,
                            &max_statement,
                        );
                        sc.spawn(move || -> Result<(Session, ArchiveWriter), EngineError> {
                            loop {
                                let next = queue.lock().expect("queue").pop();
                                let Some(job) = next else {
                                    return Ok((s, w));
                                };
                                let t = &tables[job.table];
                                let state = RunState {
                                    live,
                                    limit,
                                    rows_done,
                                    abort,
                                    max_statement,
                                };
                                let r = dump_work(&mut s, t, &job, &mut w, &state);
                                match r {
                                    Ok(done) => {
                                        files
                                            .lock()
                                            .expect("files")
                                            .insert((job.table, job.seq), done);
                                    }
                                    Err(e) => {
                                        // The others stop at their next write.
                                        abort.store(true, Ordering::Relaxed);
                                        queue.lock().expect("queue").clear();
                                        return Err(e);
                                    }
                                }
                            }
                        })
                    })
                    .collect();
                join_all(handles, "a dump thread")
            });
        let mut ok = Vec::new();
        let mut first_err: Option<EngineError> = None;
        for r in results {
            match r {
                Ok(x) => ok.push(x),
                Err(e) => {
                    if first_err
                        .as_ref()
                        .is_none_or(|f| f.kind == ErrorKind::Cancelled)
                    {
                        first_err = Some(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(ok),
        }
    };
    let pairs: Vec<(Session, ArchiveWriter)> = workers
        .into_iter()
        .map(|s| (s, writer.archive_writer(ARCHIVE, None)))
        .collect();
    let pairs = if nt_work.is_empty() {
        pairs
    } else {
        run(nt_work, pairs)?
    };
    if let Some(at) = locked_at {
        c.exec("UNLOCK TABLES")?;
        lineup.lock_ms = Some(at.elapsed().as_millis() as u64);
    }
    let pairs = run(tx_work, pairs)?;

    // The schema again: a table altered since the first read fails the set.
    let after = table_schemas(&mut c, &tables)?;
    for (t, (a, b)) in tables.iter().zip(before.iter().zip(&after)) {
        if sql::schema_shape(a) != sql::schema_shape(b) {
            return Err(err(
                ErrorKind::Protocol,
                format!(
                    "table {}.{} was altered (DDL) during the backup, so its rows and its definition may not match; nothing was stored; run the backup again",
                    t.db, t.name
                ),
            ));
        }
    }

    // Schema files, views, routines, triggers, events; then the index.
    let mut w = writer.archive_writer(ARCHIVE, None);
    let dbs: BTreeSet<String> = c
        .text_rows(format!(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ({})",
            system_db_list()
        ))?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    for db in &dbs {
        sql::check_name("database", db).map_err(|m| err(ErrorKind::Unsupported, m))?;
    }
    let mut databases = Vec::new();
    for db in &dbs {
        let create = show_create(&mut c, "DATABASE", &sql::ident(db))?
            .unwrap_or_else(|| format!("CREATE DATABASE {}", sql::ident(db)));
        let path = format!("{}-schema-create.sql", sql::file_name(db));
        put(&mut w, path.clone(), format!("{create};\n").as_bytes())?;
        databases.push(DatabaseEntry {
            name: db.clone(),
            file: path,
        });
    }
    let files = files.into_inner().expect("files");
    let mut entries = Vec::new();
    for (i, (t, create)) in tables.iter().zip(&before).enumerate() {
        let schema = format!(
            "{}.{}-schema.sql",
            sql::file_name(&t.db),
            sql::file_name(&t.name)
        );
        put(&mut w, schema.clone(), format!("{create};\n").as_bytes())?;
        let mine: Vec<&(String, u64)> = files.range((i, 0)..(i + 1, 0)).map(|(_, v)| v).collect();
        entries.push(TableEntry {
            db: t.db.clone(),
            name: t.name.clone(),
            kind: "table".into(),
            engine: Some(t.engine.clone()),
            schema,
            columns: t.columns.clone(),
            files: mine.iter().map(|(p, _)| p.clone()).collect(),
            rows: mine.iter().map(|(_, n)| n).sum(),
            next_value: None,
        });
    }
    for (db, name) in &views {
        let create = show_create_of(&mut c, "VIEW", db, name)?;
        let schema = format!(
            "{}.{}-schema-view.sql",
            sql::file_name(db),
            sql::file_name(name)
        );
        put(&mut w, schema.clone(), format!("{create};\n").as_bytes())?;
        entries.push(TableEntry::definition(db, name, "view", schema));
    }
    // Sequences (MariaDB): their definition, and the next value read after
    // the data, so a restored sequence never hands out a value a restored
    // row holds.
    for (db, name) in &sequences {
        let create = show_create_of(&mut c, "SEQUENCE", db, name)?;
        let next = c.value(format!(
            "SELECT next_not_cached_value FROM {}",
            sql::qualified(db, name)
        ))?;
        let schema = format!(
            "{}.{}-schema-sequence.sql",
            sql::file_name(db),
            sql::file_name(name)
        );
        put(&mut w, schema.clone(), format!("{create};\n").as_bytes())?;
        entries.push(TableEntry {
            next_value: next,
            ..TableEntry::definition(db, name, "sequence", schema)
        });
    }
    let objects = schema_objects(&mut c, &mut w)?;
    let accounts = super::accounts::store(&mut c, &f, &mut w)?;
    let index = DumpIndex {
        format: 1,
        flavor: f.flavor,
        server_version: f.version_string.clone(),
        point: point.clone(),
        databases,
        tables: entries,
        objects,
        max_statement: max_statement.load(Ordering::Relaxed),
    };
    let json = serde_json::to_vec_pretty(&index).expect("index serializes");
    put(&mut w, INDEX_FILE.into(), &json)?;
    for (s, aw) in pairs {
        writer.add_archive(aw)?;
        s.close();
    }
    writer.add_archive(w)?;
    c.close();
    let rows = rows_done.load(Ordering::Relaxed);
    let end = super::binlog::Position::of(&point);
    let mut dump = serde_json::json!({
        "set": null,
        "started_ms": started_ms,
        "point": end,
    });
    if let Some(why) = why_new {
        dump["why_new"] = why.into();
    }
    Ok(BackupOutcome {
        consistent_point: point,
        engine_version: f.version(),
        meta: serde_json::json!({
            "dump": dump,
            "binlog_end": end,
            "flavor": f.flavor,
            "server_version": f.version_string,
            "databases": dbs.iter().collect::<Vec<_>>(),
            "tables": tables.len(),
            "views": views.len(),
            "sequences": sequences.len(),
            "objects": index.objects.len(),
            "rows": rows,
            "workers": threads,
            "lineup": lineup,
            "accounts": accounts.as_ref().ok(),
            "accounts_skipped": accounts.err(),
        }),
    })
}

/// Routines, triggers and events, one file each.
fn schema_objects(c: &mut Session, w: &mut ArchiveWriter) -> Result<Vec<ObjectEntry>, EngineError> {
    let sys = system_db_list();
    let mut found: Vec<(String, String, String)> = Vec::new();
    for r in c.text_rows(format!(
        "SELECT ROUTINE_SCHEMA, ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES \
         WHERE ROUTINE_SCHEMA NOT IN ({sys}) ORDER BY 1, 3, 2"
    ))? {
        let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        found.push((g(0), g(1), g(2).to_ascii_lowercase()));
    }
    for r in c.text_rows(format!(
        "SELECT TRIGGER_SCHEMA, TRIGGER_NAME FROM information_schema.TRIGGERS \
         WHERE TRIGGER_SCHEMA NOT IN ({sys}) ORDER BY 1, EVENT_OBJECT_TABLE, ACTION_ORDER"
    ))? {
        let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        found.push((g(0), g(1), "trigger".into()));
    }
    for r in c.text_rows(format!(
        "SELECT EVENT_SCHEMA, EVENT_NAME FROM information_schema.EVENTS \
         WHERE EVENT_SCHEMA NOT IN ({sys}) ORDER BY 1, 2"
    ))? {
        let g = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        found.push((g(0), g(1), "event".into()));
    }
    let mut out = Vec::new();
    for (db, name, kind) in &found {
        sql::check_name(kind, &format!("{db}.{name}"))
            .map_err(|m| err(ErrorKind::Unsupported, m))?;
    }
    for (seq, (db, name, kind)) in found.into_iter().enumerate() {
        let (what, col) = match kind.as_str() {
            "procedure" => ("PROCEDURE", 2),
            "function" => ("FUNCTION", 2),
            "trigger" => ("TRIGGER", 2),
            "event" => ("EVENT", 3),
            _ => continue,
        };
        let row = c
            .text_rows(format!("SHOW CREATE {what} {}", sql::qualified(&db, &name)))?
            .into_iter()
            .next()
            .unwrap_or_default();
        let sql_mode = row.get(1).cloned().flatten().unwrap_or_default();
        let Some(create) = row.get(col).cloned().flatten() else {
            return Err(err(
                ErrorKind::Permission,
                format!(
                    "SHOW CREATE {what} {db}.{name} returned no definition: the user may lack the privilege to read it"
                ),
            ));
        };
        let path = format!("{}.{:05}-{kind}.sql", sql::file_name(&db), seq);
        put(w, path.clone(), create.as_bytes())?;
        out.push(ObjectEntry {
            db,
            name,
            kind,
            sql_mode,
            file: path,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tally_tests {
    use super::Tally;
    use std::sync::atomic::Ordering;
    use stowage_core::LiveTask;

    fn state(live: &LiveTask) -> (u64, u64) {
        (
            live.bytes_done.load(Ordering::Relaxed),
            live.bytes_total.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn the_total_is_what_was_read_plus_the_unread_estimates() {
        let live = LiveTask::default();
        // Two ranges estimated at 100 bytes each.
        live.bytes_total.store(200, Ordering::Relaxed);
        let mut a = Tally::new(100);
        a.add(&live, 60);
        assert_eq!(state(&live), (60, 200));
        // Past its estimate: the total grows with it.
        a.add(&live, 90);
        assert_eq!(state(&live), (150, 250));
        a.finish(&live);
        assert_eq!(state(&live), (150, 250));
        // The other ends short: the total shrinks to what was read.
        let mut b = Tally::new(100);
        b.add(&live, 30);
        b.finish(&live);
        assert_eq!(state(&live), (180, 180));
    }

    #[test]
    fn a_table_the_server_estimates_at_nothing_still_moves_the_total() {
        let live = LiveTask::default();
        let mut t = Tally::new(0);
        t.add(&live, 10);
        t.add(&live, 5);
        t.finish(&live);
        assert_eq!(state(&live), (15, 15));
    }
}
