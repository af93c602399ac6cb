//! Restores a logical MySQL/MariaDB set into a running server: databases
//! (renamed if asked), tables, the data files loaded by N connections at
//! once (largest first), then views, routines, triggers and events, so no
//! trigger fires on restored rows.

use super::dump::{DumpIndex, OpenedDump, SYSTEM_DATABASES};
use super::sql;
use super::{Session, err, runtime};
use crate::{ConnSpec, EngineError, ErrorKind, join_all};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use stowage_core::manifest::{FileEntry, Manifest};
use stowage_core::{LiveTask, TaskState};
use stowage_repo::Repository;

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Source database → target database.
    pub rename: BTreeMap<String, String>,
    /// Drop target databases that exist already (otherwise refused).
    pub drop: bool,
    /// Connections loading at once; 0: one per core.
    pub threads: usize,
    /// Create plain secondary indexes after the rows are in (one sorted
    /// build per index instead of an insert into each per row); tables with
    /// foreign keys keep theirs.
    pub defer_indexes: bool,
    /// Also create the set's user accounts with their grants (those the
    /// target lacks; `accounts.rs`).
    pub accounts: bool,
}

/// A statement file's text, without its trailing `;` and newlines.
fn text(d: &OpenedDump<'_>, p: &str) -> Result<String, EngineError> {
    Ok(String::from_utf8_lossy(&d.statement(p)?).into_owned())
}

/// `CREATE DATABASE `a` …` for database `b`: the statement with its name
/// replaced (the rest, character set and collation, kept).
fn create_database_as(stmt: &str, name: &str) -> String {
    let rest = stmt
        .find('`')
        .and_then(|start| {
            let b = stmt.as_bytes();
            let mut j = start + 1;
            while j < b.len() {
                if b[j] == b'`' {
                    if b.get(j + 1) == Some(&b'`') {
                        j += 2;
                        continue;
                    }
                    return Some(&stmt[j + 1..]);
                }
                j += 1;
            }
            None
        })
        .unwrap_or("");
    format!("CREATE DATABASE {}{rest}", sql::ident(name))
}

/// Consecutive `INSERT` statements of one table merged into one of up to
/// `limit` bytes before they are sent: the dump keeps its small,
/// deduplicating statements, the server gets fewer, larger ones.
struct Batch {
    pending: Vec<u8>,
    /// Length of `pending`'s `INSERT INTO … VALUES\n` header.
    header: usize,
    limit: usize,
    sent: u64,
}

impl Batch {
    fn new(limit: usize) -> Batch {
        Batch {
            pending: Vec::with_capacity(limit.min(8 << 20)),
            header: 0,
            limit,
            sent: 0,
        }
    }

    /// The header of an `INSERT` statement: up to its first `VALUES\n`.
    fn header_len(stmt: &[u8]) -> Option<usize> {
        const V: &[u8] = b" VALUES\n";
        if !stmt.starts_with(b"INSERT INTO ") {
            return None;
        }
        stmt.windows(V.len())
            .position(|w| w == V)
            .map(|p| p + V.len())
    }

    /// Takes one complete statement (ending with `;`).
    fn push(&mut self, s: &mut Session, stmt: &[u8]) -> Result<(), EngineError> {
        let h = Self::header_len(stmt);
        let same = h
            .is_some_and(|h| self.header > 0 && h == self.header && stmt[..h] == self.pending[..h]);
        if same && self.pending.len() + stmt.len() <= self.limit {
            let h = h.expect("header");
            // `…);` + `,\n` + the next statement's rows.
            self.pending.pop();
            self.pending.extend_from_slice(b",\n");
            self.pending.extend_from_slice(&stmt[h..]);
            return Ok(());
        }
        self.flush(s)?;
        self.pending.extend_from_slice(stmt);
        self.header = h.unwrap_or(0);
        Ok(())
    }

    fn flush(&mut self, s: &mut Session) -> Result<(), EngineError> {
        if self.pending.iter().any(|b| !b.is_ascii_whitespace()) {
            s.exec_retrying(&self.pending)?;
            self.sent += 1;
        }
        self.pending.clear();
        self.header = 0;
        Ok(())
    }
}

/// Runs a data file's statements (each ends with `;` and a newline: a
/// newline never occurs inside a value, the dump escapes it), merged into
/// statements of up to `limit` bytes.
fn load_file(
    s: &mut Session,
    repo: &Arc<Repository>,
    f: &FileEntry,
    live: &LiveTask,
    limit: usize,
) -> Result<u64, EngineError> {
    let mut r = repo.file_reader(f);
    let mut stmt: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut buf = vec![0u8; 1 << 18];
    let mut batch = Batch::new(limit);
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| err(ErrorKind::Repository, format!("{}: {e}", f.path)))?;
        if n == 0 {
            break;
        }
        let mut start = 0;
        for i in 0..n {
            if buf[i] == b'\n' {
                let prev = if i > start {
                    Some(buf[i - 1])
                } else {
                    stmt.last().copied()
                };
                if prev == Some(b';') {
                    stmt.extend_from_slice(&buf[start..i]);
                    batch.push(s, &stmt)?;
                    stmt.clear();
                    start = i + 1;
                }
            }
        }
        stmt.extend_from_slice(&buf[start..n]);
        live.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
        if live.is_cancelled() {
            return Err(err(ErrorKind::Cancelled, "cancelled"));
        }
    }
    if stmt.iter().any(|b| !b.is_ascii_whitespace()) {
        batch.push(s, &stmt)?;
    }
    batch.flush(s)?;
    Ok(batch.sent)
}

/// Refuses what cannot be restored before anything is written: unknown
/// renamed databases, system databases as targets, targets that exist
/// (unless `drop`).
fn preflight(
    c: &mut Session,
    index: &DumpIndex,
    logged: &[String],
    o: &LoadOptions,
) -> Result<BTreeMap<String, String>, EngineError> {
    // The set's largest statement (a row that large) must fit the target's
    // packets, or the load would stop halfway.
    let packet: u64 = c
        .value("SELECT @@max_allowed_packet")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    if index.max_statement + 1024 > packet {
        return Err(err(
            ErrorKind::Unsupported,
            format!(
                "the set holds a statement of {} bytes (a row that large), and the target server takes packets of at most {packet} bytes (max_allowed_packet); raise it (SET GLOBAL max_allowed_packet = {}) and restore again",
                index.max_statement,
                (index.max_statement + (1 << 20)).next_power_of_two()
            ),
        ));
    }
    // The dump's databases, and those only the binary log since names.
    let names: BTreeSet<&str> = index
        .databases
        .iter()
        .map(|d| d.name.as_str())
        .chain(logged.iter().map(String::as_str))
        .collect();
    for from in o.rename.keys() {
        if !names.contains(from.as_str()) {
            return Err(err(
                ErrorKind::Unsupported,
                format!(
                    "rename: the set has no database {from:?} (it has: {})",
                    names.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let target: BTreeMap<String, String> = names
        .iter()
        .map(|d| {
            (
                d.to_string(),
                o.rename.get(*d).cloned().unwrap_or_else(|| d.to_string()),
            )
        })
        .collect();
    let mut seen = BTreeSet::new();
    for t in target.values() {
        if SYSTEM_DATABASES.iter().any(|s| s.eq_ignore_ascii_case(t)) {
            return Err(err(
                ErrorKind::Unsupported,
                format!(
                    "{t} is the server's own database: restore into another name (--rename-db)"
                ),
            ));
        }
        if !seen.insert(t.to_ascii_lowercase()) {
            return Err(err(
                ErrorKind::Unsupported,
                format!("two databases of the set would be restored into {t}"),
            ));
        }
    }
    if !target.is_empty() {
        let list: Vec<String> = target.values().map(|t| sql::string_literal(t)).collect();
        let existing: Vec<String> = c
            .text_rows(format!(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ({})",
                list.join(",")
            ))?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        if !existing.is_empty() && !o.drop {
            return Err(err(
                ErrorKind::Unsupported,
                format!(
                    "the target server already has database{} {}: restore with --drop to replace {}, or into other names with --rename-db",
                    if existing.len() > 1 { "s" } else { "" },
                    existing.join(", "),
                    if existing.len() > 1 { "them" } else { "it" }
                ),
            ));
        }
    }
    Ok(target)
}

pub fn restore(
    conn: &ConnSpec,
    repo: &Arc<Repository>,
    m: &Manifest,
    o: &LoadOptions,
    live: &LiveTask,
) -> Result<serde_json::Value, EngineError> {
    live.set_state(TaskState::Checking);
    let d = OpenedDump::open(repo, m)?;
    let index = &d.index;
    let file = |p: &str| d.file(p);
    let rt = runtime()?;
    let mut c = Session::connect(&rt, conn)?;
    let logged = super::binlog::open_index(&d)?;
    let target = preflight(
        &mut c,
        index,
        logged.as_ref().map_or(&[][..], |l| &l.databases[..]),
        o,
    )?;
    if let Some(l) = &logged {
        super::binlog::preflight(&mut c, repo, &d, l, &o.rename)?;
    }
    let accounts = if o.accounts {
        let list = super::accounts::of_set(&d, m)?;
        super::accounts::preflight(&mut c, &list)?;
        Some(list)
    } else {
        None
    };
    // A renamed restore must not leave objects acting on the original: a
    // reference the rename cannot follow (an unquoted `db.t`) is refused
    // before anything is written.
    let renamed: Vec<&String> = o
        .rename
        .iter()
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a)
        .collect();
    // Views' and objects' definitions, read once.
    let mut view_defs = Vec::new();
    for v in index.tables.iter().filter(|t| t.kind == "view") {
        view_defs.push((v.db.as_str(), v.name.as_str(), text(&d, &v.schema)?));
    }
    let mut object_defs = Vec::new();
    for ob in &index.objects {
        object_defs.push((ob, text(&d, &ob.file)?));
    }
    if !renamed.is_empty() {
        let bodies = view_defs
            .iter()
            .map(|(db, n, body)| ("view", format!("{db}.{n}"), body))
            .chain(
                object_defs
                    .iter()
                    .map(|(ob, body)| (ob.kind.as_str(), format!("{}.{}", ob.db, ob.name), body)),
            );
        for (kind, name, body) in bodies {
            if let Some(db) = renamed
                .iter()
                .find(|db| sql::names_database_unquoted(body, db))
            {
                return Err(err(
                    ErrorKind::Unsupported,
                    format!(
                        "{kind} {name} names database {db} without backquotes, which a restore into another name cannot follow (the copy would act on {db}); restore without --rename-db, or quote the name in its definition"
                    ),
                ));
            }
        }
    }
    live.set_state(TaskState::Preparing);
    for l in sql::LOAD_SESSION {
        c.exec(l)?;
    }
    for (from, to) in &target {
        if o.drop {
            c.exec(format!("DROP DATABASE IF EXISTS {}", sql::ident(to)))?;
        }
        // A database only the binary log names is created by its replay.
        if let Some(db) = index.databases.iter().find(|x| &x.name == from) {
            c.exec(create_database_as(&text(&d, &db.file)?, to))?;
        }
    }
    let tgt = |db: &str| target.get(db).cloned().unwrap_or_else(|| db.to_string());
    let mut data: Vec<(String, &FileEntry)> = Vec::new();
    let mut alters: Vec<(String, String)> = Vec::new();
    let mut tables = 0u64;
    let mut rows = 0u64;
    // Sequences first: a table's default may take its next value.
    let mut sequences = 0u64;
    for q in index.tables.iter().filter(|t| t.kind == "sequence") {
        c.exec(format!("USE {}", sql::ident(&tgt(&q.db))))?;
        let create = text(&d, &q.schema)?;
        c.exec(&create).map_err(|e| EngineError {
            message: format!("creating sequence {}.{}: {}", tgt(&q.db), q.name, e.message),
            ..e
        })?;
        if let Some(v) = q
            .next_value
            .as_deref()
            .filter(|v| v.parse::<i128>().is_ok())
        {
            c.exec(format!("DO SETVAL({}, {v}, 0)", sql::ident(&q.name)))?;
        }
        sequences += 1;
    }
    for t in index.tables.iter().filter(|t| t.kind == "table") {
        c.exec(format!("USE {}", sql::ident(&tgt(&t.db))))?;
        let mut create = sql::rename_databases(&text(&d, &t.schema)?, &o.rename);
        if o.defer_indexes
            && let Some((table, alter)) = sql::defer_secondary_indexes(&create, &t.name)
        {
            create = table;
            alters.push((tgt(&t.db), alter));
        }
        c.exec(&create).map_err(|e| EngineError {
            message: format!("creating table {}.{}: {}", tgt(&t.db), t.name, e.message),
            ..e
        })?;
        tables += 1;
        rows += t.rows;
        for f in &t.files {
            data.push((tgt(&t.db), file(f)?));
        }
    }
    data.sort_by_key(|d| std::cmp::Reverse(d.1.size));
    let log_bytes: u64 = match &logged {
        Some(l) => l
            .segments
            .iter()
            .map(|s| d.file(&s.path).map(|f| f.size))
            .sum::<Result<u64, EngineError>>()?,
        None => 0,
    };
    live.bytes_total.store(
        data.iter().map(|(_, f)| f.size).sum::<u64>() + log_bytes,
        Ordering::Relaxed,
    );
    live.set_state(TaskState::Running);

    let threads = if o.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        o.threads
    }
    .clamp(1, 16)
    .min(data.len().max(1));
    let statements = AtomicU64::new(0);
    let queue = Mutex::new(data.into_iter().rev().collect::<Vec<_>>());
    let results: Vec<Result<(), EngineError>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (queue, statements, rt) = (&queue, &statements, &rt);
                sc.spawn(move || -> Result<(), EngineError> {
                    let mut s = Session::connect(rt, conn)?;
                    for l in sql::LOAD_SESSION {
                        s.exec(l)?;
                    }
                    // Merged statements stay well inside the server's packet
                    // limit (a single larger row is sent as it is).
                    let packet: usize = s
                        .value("SELECT @@max_allowed_packet")?
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(16 << 20);
                    let limit = (packet / 2).clamp(64 << 10, 4 << 20);
                    let mut current_db = String::new();
                    loop {
                        let next = queue.lock().expect("queue").pop();
                        let Some((db, f)) = next else {
                            s.close();
                            return Ok(());
                        };
                        if db != current_db {
                            s.exec(format!("USE {}", sql::ident(&db)))?;
                            current_db = db.clone();
                        }
                        match load_file(&mut s, repo, f, live, limit) {
                            Ok(n) => {
                                statements.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                queue.lock().expect("queue").clear();
                                return Err(EngineError {
                                    message: format!("loading {db} ({}): {}", f.path, e.message),
                                    ..e
                                });
                            }
                        }
                    }
                })
            })
            .collect();
        join_all(handles, "a load thread")
    });
    let mut errs: Vec<EngineError> = results.into_iter().filter_map(Result::err).collect();
    if !errs.is_empty() {
        let first = errs
            .iter()
            .position(|e| e.kind != ErrorKind::Cancelled)
            .unwrap_or(0);
        return Err(errs.swap_remove(first));
    }

    // The deferred indexes, a table per connection at once.
    let indexes = alters.len();
    if !alters.is_empty() {
        let queue = Mutex::new(alters);
        let results: Vec<Result<(), EngineError>> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..threads.min(indexes))
                .map(|_| {
                    let (queue, rt) = (&queue, &rt);
                    sc.spawn(move || -> Result<(), EngineError> {
                        let mut s = Session::connect(rt, conn)?;
                        loop {
                            let next = queue.lock().expect("queue").pop();
                            let Some((db, alter)) = next else {
                                s.close();
                                return Ok(());
                            };
                            s.exec(format!("USE {}", sql::ident(&db)))?;
                            s.exec(&alter).map_err(|e| EngineError {
                                message: format!("adding the indexes in {db}: {}", e.message),
                                ..e
                            })?;
                            if live.is_cancelled() {
                                return Err(err(ErrorKind::Cancelled, "cancelled"));
                            }
                        }
                    })
                })
                .collect();
            join_all(handles, "an index thread")
        });
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
    }

    // Views (one may use another: repeated while some fail and others
    // succeed), then routines, triggers and events in their own sql_mode.
    // In dependency order where the definitions say (fewer rounds).
    let mut views = sql::order_views(view_defs);
    let mut view_count = 0u64;
    while !views.is_empty() {
        let before = views.len();
        let mut failed = Vec::new();
        let mut last_err = None;
        for v in views {
            let (db, name, body) = &v;
            c.exec(format!("USE {}", sql::ident(&tgt(db))))?;
            let create = sql::rename_databases(body, &o.rename);
            match c.exec(&create) {
                Ok(()) => view_count += 1,
                Err(e) => {
                    last_err = Some(EngineError {
                        message: format!("creating view {}.{name}: {}", tgt(db), e.message),
                        ..e
                    });
                    failed.push(v);
                }
            }
        }
        if failed.len() == before {
            return Err(last_err.expect("a failure"));
        }
        views = failed;
    }
    let mut objects = 0u64;
    let mut events_disabled = Vec::new();
    for (ob, body) in &object_defs {
        c.exec(format!("USE {}", sql::ident(&tgt(&ob.db))))?;
        c.exec(format!(
            "SET SESSION sql_mode = {}",
            sql::string_literal(&ob.sql_mode)
        ))?;
        let create = sql::rename_databases(body, &o.rename);
        c.exec(&create).map_err(|e| EngineError {
            message: format!(
                "creating {} {}.{}: {}",
                ob.kind,
                tgt(&ob.db),
                ob.name,
                e.message
            ),
            ..e
        })?;
        // A copy under another name does not run the original's schedule.
        if ob.kind == "event" && !renamed.is_empty() {
            c.exec(format!("ALTER EVENT {} DISABLE", sql::ident(&ob.name)))?;
            events_disabled.push(format!("{}.{}", tgt(&ob.db), ob.name));
        }
        objects += 1;
    }
    c.close();
    // The binary log since the dump, on top of it all (its statements may
    // fire the triggers and use the views, as they did on the source).
    let replayed = match &logged {
        Some(l) => super::binlog::replay(&rt, conn, repo, &d, l, &o.rename, live)?,
        None => 0,
    };
    // Accounts last: their grants may name any restored object, and a
    // refused grant leaves the data restored (the error says which).
    let accounts = match &accounts {
        Some(list) => {
            let mut c = Session::connect(&rt, conn)?;
            let a = super::accounts::apply(&mut c, list, &o.rename)?;
            c.close();
            Some(a)
        }
        None => None,
    };
    Ok(serde_json::json!({
        "accounts": accounts,
        "binlog_statements": replayed,
        "databases": target.len(),
        "tables": tables,
        "views": view_count,
        "sequences": sequences,
        "objects": objects,
        "rows": rows,
        "tables_with_deferred_indexes": indexes,
        "events_disabled": events_disabled,
        "statements": statements.load(Ordering::Relaxed),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_headers_are_found() {
        let st = b"INSERT INTO `t` (`a`,`b`) VALUES\n(1,'x VALUES\n'),\n(2,'y');";
        assert_eq!(Batch::header_len(st), Some(33));
        assert_eq!(&st[..33], b"INSERT INTO `t` (`a`,`b`) VALUES\n");
        assert_eq!(Batch::header_len(b"CREATE TABLE x"), None);
    }

    #[test]
    fn databases_are_created_under_their_new_name() {
        assert_eq!(
            create_database_as(
                "CREATE DATABASE `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */",
                "shop2"
            ),
            "CREATE DATABASE `shop2` /*!40100 DEFAULT CHARACTER SET utf8mb4 */"
        );
        assert_eq!(
            create_database_as("CREATE DATABASE `a``b`", "c"),
            "CREATE DATABASE `c`"
        );
    }
}
