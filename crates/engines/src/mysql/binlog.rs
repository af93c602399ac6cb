//! Sets built on the binary log (MariaDB).
//!
//! A logical backup of an instance whose newest set is a logical MariaDB set
//! reuses that set's dump by reference and stores only the binary log since
//! the set's point: the events read as a replica reads them, in files a
//! `mariadb-binlog` reads (`binlog/000001.bin` …, each a log file's magic
//! and format description event followed by the events of one server log
//! file). The new set is complete on its own: dump + every segment up to
//! its point. A restore loads the dump, then replays the segments through
//! `mariadb-binlog` (which decodes them to SQL; its row events stay
//! `BINLOG` statements the server applies itself). The events of the
//! server's own databases and account management are left out, as the
//! dump leaves them out.
//!
//! A new dump is taken instead when the base cannot be built on (another
//! server, a reset or purged log, a week old, a log grown past a quarter
//! of the dump, `LOAD DATA` in statement format, no `REPLICATION SLAVE`,
//! no `mariadb-binlog` here); the set says why.

use super::dump::{INDEX_FILE as DUMP_INDEX, OpenedDump, SYSTEM_DATABASES};
use super::{ARCHIVE, Facts, Flavor, Session, err, sql};
use crate::{BaseSet, EngineError, ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::sync::atomic::Ordering;
use stowage_core::ConsistentPoint;
use stowage_core::manifest::{Archive, FileEntry};
use stowage_repo::{ArchiveWriter, BackupWriter};

/// The segments' index in the set's dump archive.
pub const INDEX_FILE: &str = "stowage-binlog.json";
/// A binary log file's first bytes.
const MAGIC: &[u8; 4] = b"\xfebin";
/// A dump older than this is taken again.
const MAX_DUMP_AGE_MS: i64 = 7 * 24 * 3600 * 1000;

/// A point in the server's binary log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub server_id: u64,
    pub file: String,
    pub position: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
}

impl Position {
    pub fn of(p: &ConsistentPoint) -> Option<Position> {
        match p {
            ConsistentPoint::Binlog {
                server_id,
                binlog_file: Some(file),
                binlog_position: Some(position),
                gtid_set,
            } => Some(Position {
                server_id: *server_id,
                file: file.clone(),
                position: *position,
                gtid: gtid_set.clone(),
            }),
            _ => None,
        }
    }

    pub fn point(&self) -> ConsistentPoint {
        ConsistentPoint::Binlog {
            server_id: self.server_id,
            binlog_file: Some(self.file.clone()),
            binlog_position: Some(self.position),
            gtid_set: self.gtid.clone(),
        }
    }
}

/// Events of one server log file, stored as a log file of their own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    /// Its path in the archive.
    pub path: String,
    /// The server's log file the events came from, and their span in it.
    pub source_file: String,
    pub from: u64,
    pub to: u64,
    pub events: u64,
}

/// `stowage-binlog.json`: what is replayed on top of the dump, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BinlogIndex {
    pub format: u32,
    /// Where the dump is consistent (the first segment starts here).
    pub dump_point: Position,
    /// Where the set is consistent (the last segment ends here).
    pub end: Position,
    pub segments: Vec<Segment>,
    /// Databases the events act in (a database created after the dump is
    /// only here).
    pub databases: Vec<String>,
}

/// Reads the set's binary log index, if it has one.
pub fn open_index(d: &OpenedDump<'_>) -> Result<Option<BinlogIndex>, EngineError> {
    if !d.has(INDEX_FILE) {
        return Ok(None);
    }
    serde_json::from_slice(&d.read(INDEX_FILE)?)
        .map(Some)
        .map_err(|e| err(ErrorKind::Protocol, format!("{INDEX_FILE}: {e}")))
}

/// The program that decodes binary logs: `mariadb-binlog` (or
/// `mysqlbinlog`), `STOWAGE_MARIADB_BINLOG` to name another.
pub fn tool() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("STOWAGE_MARIADB_BINLOG") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    for name in ["mariadb-binlog", "mysqlbinlog"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn no_tool() -> String {
    "mariadb-binlog, which replays the binary log, is not installed on this machine (Debian: apt-get install mariadb-client)".into()
}

/// What a set built on another takes from it.
pub struct Plan<'a> {
    pub base: &'a BaseSet,
    archive: &'a Archive,
    from: Position,
    dump: serde_json::Value,
    segments: Vec<Segment>,
    databases: BTreeSet<String>,
    /// Bytes of binary log since the base's end.
    since: u64,
}

/// The binary log files the server has, with their sizes.
fn binary_logs(c: &mut Session) -> Result<Vec<(String, u64)>, EngineError> {
    Ok(c.text_rows("SHOW BINARY LOGS")?
        .into_iter()
        .filter_map(|r| {
            let name = r.first().cloned().flatten()?;
            let size = r.get(1).cloned().flatten()?.parse().ok()?;
            Some((name, size))
        })
        .collect())
}

/// Bytes of the log from `from` to the end of the log.
fn bytes_since(logs: &[(String, u64)], from: &Position) -> Option<u64> {
    let i = logs.iter().position(|(n, _)| *n == from.file)?;
    Some(
        logs[i].1.saturating_sub(from.position) + logs[i + 1..].iter().map(|(_, s)| s).sum::<u64>(),
    )
}

/// Whether this backup can build on `b`: the plan, or (inner `Err`) why not.
pub fn plan<'a>(
    c: &mut Session,
    f: &Facts,
    user: &str,
    b: &'a BaseSet,
    writer: &BackupWriter,
) -> Result<Result<Plan<'a>, String>, EngineError> {
    if f.flavor != Flavor::MariaDb {
        return Ok(Err("sets build on the binary log only with MariaDB".into()));
    }
    if !f.log_bin {
        return Ok(Err("the binary log is off".into()));
    }
    let m = &b.manifest.engine_meta;
    let Some(archive) = b.manifest.archives.iter().find(|a| a.name == ARCHIVE) else {
        return Ok(Err("it holds no logical dump".into()));
    };
    if !archive.files.iter().any(|f| f.path == DUMP_INDEX) {
        return Ok(Err("it holds no logical dump".into()));
    }
    let Some(from) = m
        .get("binlog_end")
        .and_then(|v| serde_json::from_value::<Position>(v.clone()).ok())
    else {
        return Ok(Err("it records no binary log position".into()));
    };
    if from.server_id != f.server_id {
        return Ok(Err(format!(
            "it is of server_id {}, and the server is now server_id {}",
            from.server_id, f.server_id
        )));
    }
    let mut dump = m.get("dump").cloned().unwrap_or_default();
    let started = dump
        .get("started_ms")
        .and_then(|v| v.as_i64())
        .unwrap_or(b.manifest.started_ms);
    if stowage_repo::lock::now_ms() - started > MAX_DUMP_AGE_MS {
        return Ok(Err("its dump is more than 7 days old".into()));
    }
    if dump.get("set").is_none_or(|v| v.is_null()) {
        dump["set"] = b.id.into();
    }
    if let Some(f) = archive.files.iter().find(|f| !writer.holds_file(f)) {
        return Ok(Err(format!(
            "the repository no longer holds all of its {}",
            f.path
        )));
    }
    let have = super::own_privileges(c)?;
    if !have.contains("REPLICATION SLAVE") && !have.contains("SUPER") {
        return Ok(Err(format!(
            "the user {user:?} lacks REPLICATION SLAVE, which reading the binary log needs (GRANT REPLICATION SLAVE ON *.* TO '{user}'@'<host>')"
        )));
    }
    if tool().is_none() {
        return Ok(Err(no_tool()));
    }
    let logs = binary_logs(c)?;
    let Some(since) = bytes_since(&logs, &from) else {
        return Ok(Err(format!(
            "the server no longer holds binary log {} (purged since)",
            from.file
        )));
    };
    // The log at the base's end must be the one the base read: the GTID
    // position there tells a reset log or another server apart.
    let here = c
        .value(format!(
            "SELECT BINLOG_GTID_POS({}, {})",
            sql::string_literal(&from.file),
            from.position
        ))?
        .unwrap_or_default();
    if here != from.gtid.clone().unwrap_or_default() {
        return Ok(Err(format!(
            "the binary log at {}:{} is not the one it ended at (GTID position {here:?}, it recorded {:?}): the log was reset, or this is another server",
            from.file,
            from.position,
            from.gtid.as_deref().unwrap_or("")
        )));
    }
    let index: Option<BinlogIndex> = m
        .get("binlog")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let (segments, databases) = match index {
        Some(i) => (i.segments, i.databases.into_iter().collect()),
        None => (Vec::new(), BTreeSet::new()),
    };
    let dump_bytes: u64 = archive
        .files
        .iter()
        .filter(|f| !f.path.starts_with("binlog/") && f.path != INDEX_FILE)
        .map(|f| f.size)
        .sum();
    let logged: u64 = archive
        .files
        .iter()
        .filter(|f| f.path.starts_with("binlog/"))
        .map(|f| f.size)
        .sum::<u64>()
        + since;
    if logged > dump_bytes / 4 {
        return Ok(Err(format!(
            "the binary log since its dump ({logged} bytes) outgrew a quarter of the dump ({dump_bytes} bytes): a new dump restores faster"
        )));
    }
    dump["bytes"] = dump_bytes.into();
    Ok(Ok(Plan {
        base: b,
        archive,
        from,
        dump,
        segments,
        databases,
        since,
    }))
}

/// The replica id the capture announces: unique, so it never takes over
/// a real replica's connection (the server drops an older connection of
/// the same id).
fn replica_id(own: u64) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let id = (h.finish() as u32) | 0x4000_0000;
        if u64::from(id) != own {
            return id;
        }
    }
}

/// Event types (the numbers of the log format, MariaDB's included).
mod ev {
    pub const QUERY: u8 = 2;
    pub const STOP: u8 = 3;
    pub const ROTATE: u8 = 4;
    pub const LOAD: u8 = 6;
    pub const CREATE_FILE: u8 = 8;
    pub const APPEND_BLOCK: u8 = 9;
    pub const EXEC_LOAD: u8 = 10;
    pub const DELETE_FILE: u8 = 11;
    pub const NEW_LOAD: u8 = 12;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const BEGIN_LOAD_QUERY: u8 = 17;
    pub const EXECUTE_LOAD_QUERY: u8 = 18;
    pub const TABLE_MAP: u8 = 19;
    pub const INCIDENT: u8 = 26;
    pub const HEARTBEAT: u8 = 27;
    pub const BINLOG_CHECKPOINT: u8 = 161;
    pub const GTID_LIST: u8 = 163;
    pub const START_ENCRYPTION: u8 = 164;
    pub const QUERY_COMPRESSED: u8 = 165;

    /// Row events (v1, v2, MariaDB's compressed ones): their data starts
    /// with the 6-byte table id.
    pub fn rows(t: u8) -> bool {
        matches!(t, 23..=25 | 30..=32 | 166..=171)
    }
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |a, &x| (a << 8) | u64::from(x))
}

/// A table map's table id, database and table.
fn table_map(d: &[u8]) -> Option<(u64, String, String)> {
    let id = le(d.get(..6)?);
    let dl = *d.get(8)? as usize;
    let db = d.get(9..9 + dl)?;
    let tl = *d.get(10 + dl)? as usize;
    let t = d.get(11 + dl..11 + dl + tl)?;
    Some((
        id,
        String::from_utf8_lossy(db).into_owned(),
        String::from_utf8_lossy(t).into_owned(),
    ))
}

/// A query event's default database and statement (the statement is
/// `None` when compressed).
fn query(d: &[u8], compressed: bool) -> Option<(String, Option<&[u8]>)> {
    let dl = *d.get(8)? as usize;
    let vl = le(d.get(11..13)?) as usize;
    let db = d.get(13 + vl..13 + vl + dl)?;
    let q = d.get(13 + vl + dl + 1..)?;
    Some((
        String::from_utf8_lossy(db).into_owned(),
        (!compressed).then_some(q),
    ))
}

fn is_system_db(db: &str) -> bool {
    SYSTEM_DATABASES.iter().any(|s| s.eq_ignore_ascii_case(db))
}

/// The statement's first words, upper case, comments skipped.
fn leading_words(q: &[u8], n: usize) -> Vec<String> {
    let s = String::from_utf8_lossy(&q[..q.len().min(256)]).into_owned();
    let mut rest = s.as_str();
    let mut words = Vec::new();
    while words.len() < n {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("/*")
            && !r.starts_with('!')
        {
            match r.find("*/") {
                Some(e) => rest = &r[e + 2..],
                None => break,
            }
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        words.push(rest[..end].to_ascii_uppercase());
        rest = &rest[end..];
    }
    words
}

/// Whether a statement acts on the server itself rather than on a
/// database: accounts, privileges, plugins, servers, flushes.
pub fn is_server_statement(q: &[u8]) -> bool {
    let w = leading_words(q, 3);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["GRANT", ..] | ["REVOKE", ..] | ["FLUSH", ..] | ["INSTALL", ..] | ["UNINSTALL", ..] => {
            true
        }
        [
            "CREATE" | "DROP" | "ALTER" | "RENAME",
            "USER" | "ROLE" | "SERVER",
            ..,
        ] => true,
        ["CREATE", "OR", "REPLACE"] => leading_words(q, 4)
            .get(3)
            .is_some_and(|x| matches!(x.as_str(), "USER" | "ROLE" | "SERVER")),
        ["SET", "PASSWORD", ..] | ["SET", "DEFAULT", "ROLE"] => true,
        _ => false,
    }
}

/// The database a `CREATE DATABASE`/`CREATE SCHEMA` names.
pub fn created_database(q: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(&q[..q.len().min(512)]).into_owned();
    let w = leading_words(q, 2);
    if w.first().map(String::as_str) != Some("CREATE")
        || !matches!(w.get(1).map(String::as_str), Some("DATABASE" | "SCHEMA"))
    {
        return None;
    }
    let upper = s.to_ascii_uppercase();
    let at = upper
        .find("DATABASE")
        .or_else(|| upper.find("SCHEMA"))
        .expect("a leading word");
    let mut rest = s[at..].split_once(char::is_whitespace)?.1.trim_start();
    if rest.to_ascii_uppercase().starts_with("IF NOT EXISTS") {
        rest = rest[13..].trim_start();
    }
    if let Some(r) = rest.strip_prefix('`') {
        let mut name = String::new();
        let mut chars = r.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '`' {
                if chars.peek() == Some(&'`') {
                    chars.next();
                    name.push('`');
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(rest.len());
        (end > 0).then(|| rest[..end].to_string())
    }
}

/// What a capture stored.
struct Slice {
    segments: Vec<Segment>,
    events: u64,
    databases: BTreeSet<String>,
}

/// The event as the log holds it (header, data, checksum), its checksum
/// checked.
fn raw_event(e: &mysql_async::binlog::events::Event) -> Result<Vec<u8>, EngineError> {
    use mysql_async::binlog::BinlogChecksumAlg;
    let mut out = Vec::with_capacity(e.data().len() + 32);
    e.write(mysql_async::binlog::BinlogVersion::Version4, &mut out)
        .map_err(|x| err(ErrorKind::Protocol, format!("binary log event: {x}")))?;
    if let (Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32)), Some(sum)) =
        (e.footer().get_checksum_alg(), e.checksum())
        && u32::from_le_bytes(sum) != e.calc_checksum(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32)
    {
        return Err(err(
            ErrorKind::Protocol,
            format!(
                "a binary log event at {} failed its checksum",
                e.header().log_pos()
            ),
        ));
    }
    Ok(out)
}

/// Reads the log from `from` to `to` into segments numbered from `first`:
/// the slice, or (inner `Err`) why it cannot be replayed.
fn capture(
    rt: &std::sync::Arc<tokio::runtime::Runtime>,
    conn: &crate::ConnSpec,
    f: &Facts,
    (from, to): (&Position, &Position),
    first: usize,
    w: &mut ArchiveWriter,
    live: &stowage_core::LiveTask,
) -> Result<Result<Slice, String>, EngineError> {
    let mut slice = Slice {
        segments: Vec::new(),
        events: 0,
        databases: BTreeSet::new(),
    };
    if from.file == to.file && from.position >= to.position {
        return Ok(Ok(slice));
    }
    let mut s = Session::connect_with(rt, conn, &[])?;
    // Events before the first format description (the opening rotate)
    // reach the driver with their checksum still on.
    let checksums = s
        .value("SELECT @@GLOBAL.binlog_checksum")?
        .is_some_and(|v| !v.eq_ignore_ascii_case("NONE"));
    let mut seen_fde = false;
    let mut r = s.into_binlog(replica_id(f.server_id), &from.file, from.position)?;
    let mut file = from.file.clone();
    let mut fde: Option<Vec<u8>> = None;
    // The segment being written: its entry and whether it is open.
    let mut seg: Option<Segment> = None;
    let mut system_tables: BTreeSet<u64> = BTreeSet::new();
    let idle = std::time::Duration::from_secs(60);
    let close = |seg: &mut Option<Segment>,
                 w: &mut ArchiveWriter,
                 out: &mut Vec<Segment>|
     -> Result<(), EngineError> {
        if let Some(s) = seg.take() {
            w.end_file()?;
            out.push(s);
        }
        Ok(())
    };
    loop {
        if live.is_cancelled() {
            return Err(err(ErrorKind::Cancelled, "cancelled"));
        }
        let batch = r.next_batch(512, idle)?;
        if batch.is_empty() {
            return Err(err(
                ErrorKind::Protocol,
                format!(
                    "the binary log ended at {file} before {}:{}, where the backup began",
                    to.file, to.position
                ),
            ));
        }
        for e in batch {
            let h = e.header();
            let t = h.event_type_raw();
            let pos = u64::from(h.log_pos());
            let d = e.data();
            match t {
                ev::ROTATE => {
                    let mut n = d.get(8..).unwrap_or_default();
                    if !seen_fde && checksums {
                        n = &n[..n.len().saturating_sub(4)];
                    }
                    let name = String::from_utf8_lossy(n).into_owned();
                    if name != file {
                        close(&mut seg, w, &mut slice.segments)?;
                        if file == to.file {
                            return Err(err(
                                ErrorKind::Protocol,
                                format!(
                                    "the binary log went past {} without reaching position {}",
                                    to.file, to.position
                                ),
                            ));
                        }
                        file = name;
                        fde = None;
                    }
                    continue;
                }
                ev::FORMAT_DESCRIPTION => {
                    seen_fde = true;
                    close(&mut seg, w, &mut slice.segments)?;
                    fde = Some(raw_event(&e)?);
                    continue;
                }
                ev::HEARTBEAT
                | ev::GTID_LIST
                | ev::BINLOG_CHECKPOINT
                | ev::STOP
                | ev::START_ENCRYPTION => {}
                ev::LOAD
                | ev::CREATE_FILE
                | ev::APPEND_BLOCK
                | ev::EXEC_LOAD
                | ev::DELETE_FILE
                | ev::NEW_LOAD
                | ev::BEGIN_LOAD_QUERY
                | ev::EXECUTE_LOAD_QUERY => {
                    return Ok(Err(format!(
                        "the binary log since holds a LOAD DATA statement (statement format, at {file}:{pos}), which a replay cannot read back"
                    )));
                }
                ev::INCIDENT => {
                    return Ok(Err(format!(
                        "the binary log records an incident at {file}:{pos} (events may be missing)"
                    )));
                }
                _ => {
                    let keep = if t == ev::TABLE_MAP {
                        let (id, db, _) = table_map(d).ok_or_else(|| {
                            err(
                                ErrorKind::Protocol,
                                format!("a table map at {file}:{pos} is malformed"),
                            )
                        })?;
                        if is_system_db(&db) {
                            system_tables.insert(id);
                            false
                        } else {
                            system_tables.remove(&id);
                            slice.databases.insert(db);
                            true
                        }
                    } else if ev::rows(t) {
                        !system_tables.contains(&le(d.get(..6).unwrap_or_default()))
                    } else if t == ev::QUERY || t == ev::QUERY_COMPRESSED {
                        let (db, q) = query(d, t == ev::QUERY_COMPRESSED).ok_or_else(|| {
                            err(
                                ErrorKind::Protocol,
                                format!("a query event at {file}:{pos} is malformed"),
                            )
                        })?;
                        let words = q.map(|q| leading_words(q, 1)).unwrap_or_default();
                        let bracket = matches!(
                            words.first().map(String::as_str),
                            Some("BEGIN" | "COMMIT" | "ROLLBACK" | "XA" | "SAVEPOINT")
                        );
                        if bracket {
                            true
                        } else if q.is_some_and(is_server_statement) || is_system_db(&db) {
                            false
                        } else {
                            if !db.is_empty() {
                                slice.databases.insert(db);
                            }
                            if let Some(n) = q.and_then(created_database) {
                                slice.databases.insert(n);
                            }
                            true
                        }
                    } else {
                        true
                    };
                    if keep {
                        if seg.is_none() {
                            let Some(fd) = &fde else {
                                return Err(err(
                                    ErrorKind::Protocol,
                                    format!(
                                        "the server sent events of {file} without its format description"
                                    ),
                                ));
                            };
                            let path = format!("binlog/{:06}.bin", first + slice.segments.len());
                            w.begin_file(crate::new_file(path.clone()))?;
                            w.write(MAGIC)?;
                            w.write(fd)?;
                            seg = Some(Segment {
                                path,
                                source_file: file.clone(),
                                from: if file == from.file { from.position } else { 4 },
                                to: pos,
                                events: 0,
                            });
                        }
                        let bytes = raw_event(&e)?;
                        w.write(&bytes)?;
                        let sg = seg.as_mut().expect("open");
                        sg.events += 1;
                        slice.events += 1;
                        live.bytes_done
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            if pos != 0 {
                if let Some(sg) = seg.as_mut() {
                    sg.to = pos;
                }
                if file == to.file && pos >= to.position {
                    close(&mut seg, w, &mut slice.segments)?;
                    return Ok(Ok(slice));
                }
            }
        }
    }
}

/// Takes a set built on `p.base`: its dump by reference, the log since its
/// end read into new segments. `Ok(Err(why))`: the log cannot be replayed;
/// nothing of this attempt is in the set (a new dump follows).
pub fn build_on(
    rt: &std::sync::Arc<tokio::runtime::Runtime>,
    conn: &crate::ConnSpec,
    c: &mut Session,
    f: &Facts,
    p: Plan<'_>,
    writer: &mut BackupWriter,
    live: &stowage_core::LiveTask,
) -> Result<Result<crate::BackupOutcome, String>, EngineError> {
    use stowage_core::TaskState;
    // The end: the log's current end, the GTID position there.
    let Some((file, position)) = super::dump::binlog_status(c, f)? else {
        return Ok(Err("the server reports no binary log position".into()));
    };
    let gtid = c
        .value(format!(
            "SELECT BINLOG_GTID_POS({}, {position})",
            sql::string_literal(&file)
        ))?
        .filter(|g| !g.is_empty());
    let to = Position {
        server_id: f.server_id,
        file,
        position,
        gtid,
    };
    let reused: u64 = p
        .archive
        .files
        .iter()
        .filter(|f| f.path != INDEX_FILE)
        .map(|f| f.size)
        .sum();
    live.bytes_total.store(reused + p.since, Ordering::Relaxed);
    live.bytes_done.store(reused, Ordering::Relaxed);
    live.set_state(TaskState::Running);
    let mut w = writer.archive_writer(ARCHIVE, None);
    // The accounts are read again: the log leaves account management out.
    for f in p
        .archive
        .files
        .iter()
        .filter(|f| f.path != INDEX_FILE && f.path != super::accounts::FILE)
    {
        w.reuse_file(f)?;
    }
    let accounts = super::accounts::store(c, f, &mut w)?;
    let slice = match capture(
        rt,
        conn,
        f,
        (&p.from, &to),
        p.segments.len() + 1,
        &mut w,
        live,
    )? {
        Ok(s) => s,
        // `w` is dropped unadded: its files are in no set.
        Err(why) => return Ok(Err(why)),
    };
    let mut segments = p.segments;
    segments.extend(slice.segments.iter().cloned());
    let mut databases = p.databases;
    databases.extend(slice.databases.iter().cloned());
    let dump_point = p
        .dump
        .get("point")
        .and_then(|v| serde_json::from_value::<Position>(v.clone()).ok())
        .unwrap_or_else(|| p.from.clone());
    let index = BinlogIndex {
        format: 1,
        dump_point,
        end: to.clone(),
        segments,
        databases: databases.into_iter().collect(),
    };
    let json = serde_json::to_vec_pretty(&index).expect("index serializes");
    super::dump::put(&mut w, INDEX_FILE.into(), &json)?;
    writer.add_archive(w)?;
    let mut meta = p.base.manifest.engine_meta.clone();
    let mut dump = p.dump;
    dump["reused_from_set"] = p.base.id.into();
    if let Some(o) = dump.as_object_mut() {
        o.remove("why_new");
    }
    meta["dump"] = dump;
    meta["binlog_end"] = serde_json::to_value(&to).expect("serializes");
    meta["binlog"] = serde_json::to_value(&index).expect("serializes");
    meta["binlog_events"] = slice.events.into();
    meta["accounts"] = accounts.as_ref().ok().copied().into();
    meta["accounts_skipped"] = accounts.err().into();
    meta["server_version"] = f.version_string.clone().into();
    let mut dbs: BTreeSet<String> = meta
        .get("databases")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    dbs.extend(index.databases.iter().cloned());
    meta["databases"] = dbs.into_iter().collect::<Vec<_>>().into();
    if let Some(o) = meta.as_object_mut() {
        o.remove("lineup");
    }
    Ok(Ok(crate::BackupOutcome {
        consistent_point: to.point(),
        engine_version: f.version(),
        meta,
    }))
}

/// One statement of a `mariadb-binlog` script, as the `mariadb` client
/// would send it, with the log position it came from.
#[derive(Debug, PartialEq)]
pub struct Statement {
    pub sql: Vec<u8>,
    pub at: Option<u64>,
}

/// Splits a `mariadb-binlog` script into statements the way the `mariadb`
/// client does: `DELIMITER` lines, `#` comment lines between statements,
/// quotes and comments that hide the delimiter, the `\C` charset command
/// (sent as `SET NAMES`).
pub struct Script<R> {
    input: R,
    delimiter: Vec<u8>,
    at: Option<u64>,
    /// The line being read, and how far.
    line: Vec<u8>,
    pos: usize,
}

impl<R: BufRead> Script<R> {
    pub fn new(input: R) -> Script<R> {
        Script {
            input,
            delimiter: b";".to_vec(),
            at: None,
            line: Vec::new(),
            pos: 0,
        }
    }

    /// The next statement; `None` at the end.
    pub fn next_statement(&mut self) -> std::io::Result<Option<Statement>> {
        let mut stmt: Vec<u8> = Vec::new();
        // Inside a quote (its character), a /* comment, or neither.
        let mut quote: Option<u8> = None;
        let mut comment = false;
        loop {
            if self.pos >= self.line.len() {
                self.line.clear();
                self.pos = 0;
                if self.input.read_until(b'\n', &mut self.line)? == 0 {
                    let rest = trim(&stmt);
                    return Ok((!rest.is_empty()).then(|| Statement {
                        sql: charset_command(rest.to_vec()),
                        at: self.at,
                    }));
                }
                if quote.is_none() && !comment && trim(&stmt).is_empty() {
                    let t = trim(&self.line);
                    if t.first() == Some(&b'#') {
                        if let Some(n) = t.strip_prefix(b"# at ") {
                            self.at = std::str::from_utf8(n)
                                .ok()
                                .and_then(|n| n.trim().parse().ok());
                        }
                        self.pos = self.line.len();
                        continue;
                    }
                    if t.len() > 10 && t[..10].eq_ignore_ascii_case(b"DELIMITER ") {
                        self.delimiter = trim(&t[10..]).to_vec();
                        self.pos = self.line.len();
                        stmt.clear();
                        continue;
                    }
                }
            }
            let line = &self.line;
            let mut i = self.pos;
            while i < line.len() {
                let b = line[i];
                if let Some(q) = quote {
                    stmt.push(b);
                    if b == b'\\' && q != b'`' {
                        if let Some(&n) = line.get(i + 1) {
                            stmt.push(n);
                            i += 1;
                        }
                    } else if b == q {
                        quote = None;
                    }
                    i += 1;
                    continue;
                }
                if comment {
                    stmt.push(b);
                    if b == b'*' && line.get(i + 1) == Some(&b'/') {
                        stmt.push(b'/');
                        i += 1;
                        comment = false;
                    }
                    i += 1;
                    continue;
                }
                if line[i..].starts_with(&self.delimiter) {
                    self.pos = i + self.delimiter.len();
                    let sql = trim(&stmt).to_vec();
                    if sql.is_empty() {
                        stmt.clear();
                        i = self.pos;
                        continue;
                    }
                    return Ok(Some(Statement {
                        sql: charset_command(sql),
                        at: self.at,
                    }));
                }
                match b {
                    b'\'' | b'"' | b'`' => quote = Some(b),
                    b'#' => {
                        stmt.extend_from_slice(&line[i..]);
                        i = line.len();
                        continue;
                    }
                    b'-' if line.get(i + 1) == Some(&b'-')
                        && line.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) =>
                    {
                        stmt.extend_from_slice(&line[i..]);
                        i = line.len();
                        continue;
                    }
                    // A comment, unless conditional (`/*!`, `/*M!`): those hold SQL.
                    b'/' if line.get(i + 1) == Some(&b'*')
                        && line.get(i + 2) != Some(&b'!')
                        && line.get(i + 2..i + 4) != Some(&b"M!"[..]) =>
                    {
                        comment = true;
                        stmt.extend_from_slice(b"/*");
                        i += 2;
                        continue;
                    }
                    _ => {}
                }
                stmt.push(b);
                i += 1;
            }
            self.pos = line.len();
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e]
}

/// The client's `\C name` (inside a conditional comment, as
/// `mariadb-binlog` writes it) is its `charset` command: `SET NAMES`.
fn charset_command(sql: Vec<u8>) -> Vec<u8> {
    let Some(rest) = sql
        .strip_prefix(b"/*!\\C ")
        .or_else(|| sql.strip_prefix(b"/*M!\\C "))
    else {
        return sql;
    };
    let name: Vec<u8> = rest
        .iter()
        .copied()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
        .collect();
    let mut out = b"SET NAMES ".to_vec();
    out.extend(name);
    out
}

/// Statements of the script a replay leaves out: the source's GTID and
/// server id (the target logs what it replays as its own transactions).
pub fn is_skipped(sql: &[u8]) -> bool {
    let s = String::from_utf8_lossy(&sql[..sql.len().min(96)]).to_ascii_lowercase();
    // Inside a conditional comment (`/*!100001 …*/`, MariaDB's `/*M!…`).
    let s = s
        .strip_prefix("/*m!")
        .or_else(|| s.strip_prefix("/*!"))
        .map_or(s.as_str(), |r| {
            r.trim_start_matches(|c: char| c.is_ascii_digit())
        })
        .trim_start();
    [
        "set @@session.gtid_domain_id=",
        "set @@session.server_id=",
        "set @@session.gtid_seq_no=",
    ]
    .iter()
    .any(|p| s.starts_with(p))
}

/// Runs `mariadb-binlog` on one segment (fed from the repository) and
/// hands each statement of its script to `each`.
pub fn decode_segment(
    repo: &std::sync::Arc<stowage_repo::Repository>,
    f: &FileEntry,
    rename: &BTreeMap<String, String>,
    fed: &std::sync::atomic::AtomicU64,
    each: &mut dyn FnMut(Statement) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let tool = tool().ok_or_else(|| err(ErrorKind::Unsupported, no_tool()))?;
    let mut cmd = std::process::Command::new(&tool);
    cmd.arg("--no-defaults").arg("--skip-annotate-row-events");
    for (a, b) in rename.iter().filter(|(a, b)| a != b) {
        cmd.arg(format!("--rewrite-db={a}->{b}"));
    }
    cmd.arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        err(
            ErrorKind::Unsupported,
            format!("running {}: {e}", tool.display()),
        )
    })?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let result = std::thread::scope(|sc| {
        let feeder = sc.spawn(move || -> std::io::Result<()> {
            let mut r = repo.file_reader(f);
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                stdin.write_all(&buf[..n])?;
                fed.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let errors = sc.spawn(move || {
            let mut v = Vec::new();
            let _ = stderr.read_to_end(&mut v);
            v
        });
        let mut script = Script::new(std::io::BufReader::with_capacity(1 << 20, stdout));
        let mut out = Ok(());
        loop {
            match script.next_statement() {
                Ok(Some(s)) => {
                    if let Err(e) = each(s) {
                        out = Err(e);
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out = Err(err(
                        ErrorKind::Protocol,
                        format!("reading mariadb-binlog's output: {e}"),
                    ));
                    break;
                }
            }
        }
        // Stop the tool if the replay stopped first.
        drop(script);
        let fed_ok = feeder.join();
        let errs = errors.join().unwrap_or_default();
        (out, fed_ok, errs)
    });
    let status = child.wait().map_err(|e| {
        err(
            ErrorKind::Protocol,
            format!("waiting for mariadb-binlog: {e}"),
        )
    })?;
    let (out, fed_ok, errs) = result;
    out?;
    if let Ok(Err(e)) = fed_ok
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(err(
            ErrorKind::Repository,
            format!("reading {} from the repository: {e}", f.path),
        ));
    }
    if !status.success() {
        let text = String::from_utf8_lossy(&errs);
        return Err(err(
            ErrorKind::Protocol,
            format!(
                "mariadb-binlog could not decode {} ({status}): {}",
                f.path,
                sql::comment_text(text.trim())
            ),
        ));
    }
    Ok(())
}

/// Checks that `conn`'s server can take the replay of `idx`: MariaDB (the
/// events are MariaDB's), the privilege `BINLOG` statements need, the
/// decoder here; and, for a renamed restore, that no statement names a
/// renamed database unquoted (decoded once, nothing written).
pub fn preflight(
    c: &mut Session,
    repo: &std::sync::Arc<stowage_repo::Repository>,
    d: &OpenedDump<'_>,
    idx: &BinlogIndex,
    rename: &BTreeMap<String, String>,
) -> Result<(), EngineError> {
    if idx.segments.is_empty() {
        return Ok(());
    }
    if tool().is_none() {
        return Err(err(ErrorKind::Unsupported, no_tool()));
    }
    let version = c.value("SELECT VERSION()")?.unwrap_or_default();
    if super::parse_version(&version).0 != Flavor::MariaDb {
        return Err(err(
            ErrorKind::Unsupported,
            "this set replays MariaDB's binary log on top of its dump, which only a MariaDB server takes: restore into a MariaDB instance",
        ));
    }
    let have = super::own_privileges(c)?;
    if !have.contains("BINLOG REPLAY") && !have.contains("SUPER") {
        return Err(err(
            ErrorKind::Permission,
            "this set replays the binary log since its dump, whose row events the server applies only for a user with BINLOG REPLAY: GRANT BINLOG REPLAY ON *.* TO '<user>'@'<host>'",
        ));
    }
    let renamed: Vec<&String> = rename
        .iter()
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a)
        .collect();
    if renamed.is_empty() {
        return Ok(());
    }
    let none = std::sync::atomic::AtomicU64::new(0);
    for sg in &idx.segments {
        let f = d.file(&sg.path)?;
        decode_segment(repo, f, rename, &none, &mut |st| {
            if is_binlog_or_use(&st.sql) {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&st.sql);
            if let Some(db) = renamed
                .iter()
                .find(|db| sql::names_database_unquoted(&text, db))
            {
                return Err(err(
                    ErrorKind::Unsupported,
                    format!(
                        "a statement of the binary log since the dump ({}, at {}) names database {db} without backquotes, which a restore into another name cannot follow (the copy would act on {db}); restore without --rename-db",
                        sg.source_file,
                        st.at.unwrap_or(0)
                    ),
                ));
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// `BINLOG '…'` (row events, renamed by the decoder) and `use` (likewise).
fn is_binlog_or_use(sql: &[u8]) -> bool {
    let w = leading_words(sql, 1);
    matches!(w.first().map(String::as_str), Some("BINLOG" | "USE"))
}

/// Replays the segments on top of a restored dump, in order, on one
/// session with the server's defaults (the script sets what each event
/// needs). Returns the statements run.
pub fn replay(
    rt: &std::sync::Arc<tokio::runtime::Runtime>,
    conn: &crate::ConnSpec,
    repo: &std::sync::Arc<stowage_repo::Repository>,
    d: &OpenedDump<'_>,
    idx: &BinlogIndex,
    rename: &BTreeMap<String, String>,
    live: &stowage_core::LiveTask,
) -> Result<u64, EngineError> {
    const BATCH_BYTES: usize = 1 << 20;
    const BATCH_STATEMENTS: usize = 200;
    let mut s = Session::connect_with(rt, conn, &[])?;
    let mut count = 0u64;
    for sg in &idx.segments {
        let f = d.file(&sg.path)?;
        let mut batch: Vec<u8> = Vec::new();
        let mut in_batch = 0usize;
        let mut first_at = None;
        let flush = |s: &mut Session,
                     batch: &mut Vec<u8>,
                     in_batch: &mut usize,
                     first_at: &mut Option<u64>|
         -> Result<(), EngineError> {
            if batch.is_empty() {
                return Ok(());
            }
            s.exec(&batch[..]).map_err(|e| EngineError {
                message: format!(
                    "replaying the binary log since the dump ({}, near position {}): {}",
                    sg.source_file,
                    first_at.unwrap_or(0),
                    e.message
                ),
                ..e
            })?;
            batch.clear();
            *in_batch = 0;
            *first_at = None;
            if live.is_cancelled() {
                return Err(err(ErrorKind::Cancelled, "cancelled"));
            }
            Ok(())
        };
        decode_segment(repo, f, rename, &live.bytes_done, &mut |st| {
            if is_skipped(&st.sql) {
                return Ok(());
            }
            let first = leading_words(&st.sql, 1);
            let first = first.first().map(String::as_str);
            let alone = first == Some("BINLOG");
            if alone {
                flush(&mut s, &mut batch, &mut in_batch, &mut first_at)?;
            }
            let sql = if alone || first == Some("USE") {
                st.sql
            } else {
                match std::str::from_utf8(&st.sql) {
                    Ok(t) if !rename.is_empty() => sql::rename_databases(t, rename).into_bytes(),
                    _ => st.sql,
                }
            };
            if !batch.is_empty() {
                // A newline first: the statement may end in a `#` comment.
                batch.extend_from_slice(b"\n;\n");
            }
            batch.extend_from_slice(&sql);
            first_at = first_at.or(st.at);
            in_batch += 1;
            count += 1;
            if alone || batch.len() >= BATCH_BYTES || in_batch >= BATCH_STATEMENTS {
                flush(&mut s, &mut batch, &mut in_batch, &mut first_at)?;
            }
            Ok(())
        })?;
        flush(&mut s, &mut batch, &mut in_batch, &mut first_at)?;
    }
    s.close();
    Ok(count)
}

/// Writes the segments as the tail of an SQL script (`mariadb < dump.sql`):
/// each statement as the decoder gives it, under its own delimiter.
pub fn export(
    repo: &std::sync::Arc<stowage_repo::Repository>,
    d: &OpenedDump<'_>,
    idx: &BinlogIndex,
    put: &mut dyn FnMut(&[u8]) -> Result<(), EngineError>,
) -> Result<u64, EngineError> {
    if idx.segments.is_empty() {
        return Ok(0);
    }
    put(format!(
        "\n-- The binary log since the dump ({}:{} to {}:{}), decoded by mariadb-binlog.\n\
             -- Its row events are BINLOG statements: the loading user needs BINLOG REPLAY.\n\
             SET SESSION time_zone = @@GLOBAL.time_zone;\n\
             SET SESSION sql_mode = @@GLOBAL.sql_mode;\n\
             SET SESSION foreign_key_checks = 1;\n\
             SET SESSION unique_checks = 1;\n\
             DELIMITER /*!*/;\n",
        sql::comment_text(&idx.dump_point.file),
        idx.dump_point.position,
        sql::comment_text(&idx.end.file),
        idx.end.position
    )
    .as_bytes())?;
    let none = std::sync::atomic::AtomicU64::new(0);
    let mut n = 0u64;
    for sg in &idx.segments {
        let f = d.file(&sg.path)?;
        decode_segment(repo, f, &BTreeMap::new(), &none, &mut |st| {
            if is_skipped(&st.sql) {
                return Ok(());
            }
            put(&st.sql)?;
            put(b"\n/*!*/;\n")?;
            n += 1;
            Ok(())
        })?;
    }
    put(b"DELIMITER ;\n")?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statements(script: &str) -> Vec<String> {
        let mut s = Script::new(script.as_bytes());
        let mut out = Vec::new();
        while let Some(st) = s.next_statement().unwrap() {
            out.push(String::from_utf8(st.sql).unwrap());
        }
        out
    }

    #[test]
    fn scripts_split_as_the_client_splits_them() {
        let script = "/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/;\n\
            DELIMITER /*!*/;\n\
            # at 4\n\
            #201201  8:00:00 server id 1  end_log_pos 256 CRC32 0x1 \tStart\n\
            ROLLBACK/*!*/;\n\
            BINLOG '\nAAAA\nBBBB\n'/*!*/;\n\
            # at 300\n\
            /*!100001 SET @@session.gtid_seq_no=5*//*!*/;\n\
            /*M!100001 SET @@session.server_id=1*//*!*/;\n\
            /*!\\C utf8mb4 *//*!*/;\n\
            use `shop`/*!*/;\n\
            INSERT INTO t VALUES ('a/*!*/;b', \"q\\\"/*!*/;\") # it's /*!*/;\n\
            , (2) /* x /*!*/; */\n\
            /*!*/;\n\
            DELIMITER ;\n\
            # End of log file\n\
            ROLLBACK /* added by mysqlbinlog */;\n";
        let got = statements(script);
        assert_eq!(
            got,
            vec![
                "/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/",
                "ROLLBACK",
                "BINLOG '\nAAAA\nBBBB\n'",
                "/*!100001 SET @@session.gtid_seq_no=5*/",
                "/*M!100001 SET @@session.server_id=1*/",
                "SET NAMES utf8mb4",
                "use `shop`",
                "INSERT INTO t VALUES ('a/*!*/;b', \"q\\\"/*!*/;\") # it's /*!*/;\n, (2) /* x /*!*/; */",
                "ROLLBACK /* added by mysqlbinlog */",
            ]
        );
        assert!(is_skipped(got[3].as_bytes()));
        assert!(is_skipped(got[4].as_bytes()));
        assert!(!is_skipped(b"SET @@session.sql_mode=0"));
        let mut s = Script::new(script.as_bytes());
        let mut ats = Vec::new();
        while let Some(st) = s.next_statement().unwrap() {
            ats.push(st.at);
        }
        assert_eq!(ats[2], Some(4));
        assert_eq!(ats[3], Some(300));
        assert_eq!(ats[5], Some(300));
    }

    #[test]
    fn server_statements_are_told_apart() {
        for q in [
            "GRANT SELECT ON *.* TO x",
            "  revoke all on *.* from x",
            "CREATE USER 'a'@'%'",
            "CREATE OR REPLACE USER a",
            "DROP ROLE r",
            "SET PASSWORD FOR a = PASSWORD('x')",
            "FLUSH PRIVILEGES",
            "/* c */ ALTER USER a",
            "INSTALL SONAME 'x'",
        ] {
            assert!(is_server_statement(q.as_bytes()), "{q}");
        }
        for q in [
            "CREATE TABLE user (a int)",
            "UPDATE t SET grant = 1",
            "CREATE OR REPLACE TABLE t (a int)",
            "INSERT INTO t VALUES (1)",
        ] {
            assert!(!is_server_statement(q.as_bytes()), "{q}");
        }
    }

    #[test]
    fn created_databases_are_named() {
        assert_eq!(
            created_database(b"CREATE DATABASE shop2").as_deref(),
            Some("shop2")
        );
        assert_eq!(
            created_database(b"create schema if not exists `a``b` CHARACTER SET x").as_deref(),
            Some("a`b")
        );
        assert_eq!(created_database(b"CREATE TABLE x (a int)"), None);
    }

    #[test]
    fn log_bytes_since_a_position() {
        let logs = vec![("b.1".to_string(), 1000), ("b.2".to_string(), 500)];
        let at = |f: &str, p| Position {
            server_id: 1,
            file: f.into(),
            position: p,
            gtid: None,
        };
        assert_eq!(bytes_since(&logs, &at("b.1", 400)), Some(1100));
        assert_eq!(bytes_since(&logs, &at("b.2", 500)), Some(0));
        assert_eq!(bytes_since(&logs, &at("b.0", 4)), None);
    }
}
