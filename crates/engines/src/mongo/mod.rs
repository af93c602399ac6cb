//! MongoDB replica sets, logically, through the official driver (its
//! blocking API: engines run on worker threads) and standard commands only,
//! so the same code serves a real `mongod` and the SecantusDB test server.
//!
//! A backup of a replica set:
//! 1. notes the newest oplog entry (`start`);
//! 2. dumps every database but `local` and `config` (and `admin.system.*`)
//!    collection by collection, on several threads, documents as the raw
//!    BSON the server sent (never decoded), each collection's options,
//!    indexes and UUID beside them;
//! 3. copies the oplog from `start` to an `end` taken after the dump, moved
//!    past any transaction that `end` would split (SecantusDB logs each
//!    write of a transaction as its own entry carrying `lsid`/`txnNumber`;
//!    mongod logs one `applyOps` entry, which cannot be split);
//! 4. fails if the oplog no longer holds `start` ("oplog window overrun").
//!
//! Layout inside the set: one archive per replica set, in mongodump's
//! directory layout, so an export can hand it to `mongorestore` as is:
//! `<db>/<collection>.bson` (documents, concatenated BSON),
//! `<db>/<collection>.metadata.json` (`options`, `indexes`, `uuid`, `type`)
//! and `oplog.bson` (the entries from `start`, exclusive, to `end`,
//! inclusive). Names are escaped so every path component is safe.

pub(crate) use crate::join_all;
use crate::{EngineError, ErrorKind, RateLimit};

pub mod oplog;
pub mod restore;
pub mod sharded;
use mongodb::bson::{Bson, Document, RawDocument, Timestamp, doc};
use mongodb::options::ClientOptions;
use mongodb::sync::Client;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stowage_core::manifest::FileKind;
use stowage_core::{LiveTask, TaskState};
use stowage_repo::writer::FileMeta;
use stowage_repo::{ArchiveWriter, BackupWriter};

/// Facts about a MongoDB server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MongoFacts {
    pub version: String,
    /// Replica-set name (`hello.setName`); `None` for a standalone server.
    pub set_name: Option<String>,
    pub is_primary: bool,
    /// Every member the server advertises (`hello.hosts`, `passives`,
    /// `arbiters`), as `host:port`: the driver may connect to any of them.
    pub members: Vec<String>,
}

/// Checks every member a replica set advertises against `check` (the
/// operator's `--tenant-allow`), before any data moves: the driver follows
/// the members, which need not be the hosts of the connection string.
pub fn check_members(
    members: &[String],
    check: Option<&crate::HostCheck>,
) -> Result<(), EngineError> {
    let Some(check) = check else {
        return Ok(());
    };
    for m in members {
        let (host, port) = match m.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse().unwrap_or(27017),
            ),
            None => (m.as_str(), 27017),
        };
        check.check(host, port).map_err(|why| {
            err(
                ErrorKind::Permission,
                format!(
                    "the replica set advertises member {m}, which this account may not reach: {why}"
                ),
            )
        })?;
    }
    Ok(())
}

/// What a finished replica-set backup established.
#[derive(Debug, Clone)]
pub struct MongoBackup {
    pub facts: MongoFacts,
    /// The oplog entry the data is consistent at.
    pub end: Timestamp,
    /// The newest oplog entry when the dump began.
    pub start: Timestamp,
    pub collections: u64,
    /// The databases dumped, sorted.
    pub databases: Vec<String>,
    pub documents: u64,
    /// Entries in the set's oplog slice (from the dump's start).
    pub oplog_entries: u64,
    /// BLAKE3 of the raw oplog entry at `end`: a later backup builds on
    /// this set only while the oplog still holds this very entry.
    pub end_hash: String,
    /// Where the set's dump comes from.
    pub dump: DumpSource,
    /// Bytes of the replica set's part: its dump and its oplog slice.
    pub bytes: u64,
}

/// Where a set's dump comes from: taken by this backup, or reused from an
/// earlier set (the oplog since then captured on top of it).
#[derive(Debug, Clone, Default)]
pub struct DumpSource {
    /// When the dump began (ms since the epoch).
    pub started_ms: i64,
    /// The set whose dump was reused.
    pub reused_from: Option<i64>,
    /// Why a base set offered was not built on.
    pub why_new: Option<String>,
    /// Whether every collection was read at the dump's start (snapshot reads).
    pub snapshot_reads: bool,
    /// Why not, if the server refused or gave them up.
    pub why_no_snapshot: Option<String>,
}

/// How to back up a replica set.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions<'a> {
    /// The archive's name (default: the replica set's name, escaped).
    pub archive: Option<&'a str>,
    /// Collections dumped at once (at least 1).
    pub threads: usize,
    /// Transfer-rate limit of the dump, kB/s.
    pub max_rate_kbps: Option<u32>,
    /// An earlier set of the same replica set whose dump may be reused.
    pub base: Option<&'a crate::BaseSet>,
    /// Every member the replica set advertises must pass it.
    pub host_check: Option<&'a crate::HostCheck>,
    /// Fault injection for tests: once snapshot reads are found to work,
    /// read at this time instead of the dump's start (one the server no
    /// longer keeps, as after a read longer than its history window).
    #[doc(hidden)]
    pub snapshot_at_for_tests: Option<Timestamp>,
}

/// A new dump is taken rather than reusing one older than this.
pub const REDUMP_AFTER_DAYS: i64 = 7;
/// ... or once the oplog since the dump holds more entries than the dump's
/// documents / 20 (at least 10,000): a restore replays entries ~9× slower
/// than it loads documents (bench/README.md), so this keeps the replay
/// under about half the load.
pub const REDUMP_DOCS_PER_ENTRY: u64 = 20;
pub const REDUMP_ENTRIES_FLOOR: u64 = 10_000;
/// ... or once the oplog's bytes exceed a quarter of the dump's (at least
/// 64 MiB).
pub const REDUMP_OPLOG_SHARE: u64 = 4;
pub const REDUMP_OPLOG_FLOOR: u64 = 64 << 20;

/// A dump a backup might reuse, and the oplog captured since it began.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpAge {
    pub age_ms: i64,
    pub dump_bytes: u64,
    pub documents: u64,
    pub oplog_bytes: u64,
    pub oplog_entries: u64,
}

/// Why a backup must take a new dump rather than reuse `d`; `None`: reuse
/// it. (The oplog counted is the base set's: the slice a backup adds is
/// judged by the next one.)
pub fn redump_reason(d: DumpAge) -> Option<String> {
    let mb = |b: u64| b as f64 / 1e6;
    if d.age_ms > REDUMP_AFTER_DAYS * 86_400_000 {
        Some(format!(
            "its dump is {} days old (a new dump at least every {REDUMP_AFTER_DAYS} days)",
            d.age_ms / 86_400_000
        ))
    } else if d.oplog_entries > (d.documents / REDUMP_DOCS_PER_ENTRY).max(REDUMP_ENTRIES_FLOOR) {
        Some(format!(
            "the oplog since its dump holds {} entries for {} documents: a restore would spend too long replaying them (a new dump loads faster)",
            d.oplog_entries, d.documents
        ))
    } else if d.oplog_bytes > (d.dump_bytes / REDUMP_OPLOG_SHARE).max(REDUMP_OPLOG_FLOOR) {
        Some(format!(
            "the oplog since its dump ({:.1} MB) is over a quarter of the dump ({:.1} MB)",
            mb(d.oplog_bytes),
            mb(d.dump_bytes)
        ))
    } else {
        None
    }
}

fn err(kind: ErrorKind, m: impl Into<String>) -> EngineError {
    EngineError::new(kind, m)
}

/// Maps a driver error to what went wrong, for the person reading it.
/// A driver error as a user should read it: what happened and its kind,
/// without the driver's debugging fields.
fn driver(e: mongodb::error::Error) -> EngineError {
    use mongodb::error::ErrorKind as K;
    match *e.kind {
        K::Authentication { ref message, .. } => err(
            ErrorKind::Authentication,
            format!("MongoDB authentication failed (check the user and password): {message}"),
        ),
        K::ServerSelection { ref message, .. } => err(
            ErrorKind::Unreachable,
            format!(
                "MongoDB server unreachable: no member answered in time ({})",
                // The driver's topology dump follows; the first words say it.
                message
                    .split(" Topology:")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_end_matches('.')
            ),
        ),
        K::DnsResolve { ref message, .. } => err(
            ErrorKind::Unreachable,
            format!("MongoDB server unreachable: {message}"),
        ),
        K::Io(ref io) => err(
            ErrorKind::ServerGone,
            format!(
                "the connection to the MongoDB server was lost during the backup (did it stop?): {io}"
            ),
        ),
        K::ConnectionPoolCleared { ref message, .. } => err(
            ErrorKind::ServerGone,
            format!(
                "the connection to the MongoDB server was lost during the backup (did it stop?): {message}"
            ),
        ),
        K::Command(ref c) => {
            let kind = match c.code {
                18 => ErrorKind::Authentication,
                13 => ErrorKind::Permission,
                59 | 115 => ErrorKind::Unsupported,
                _ => ErrorKind::Protocol,
            };
            err(
                kind,
                format!(
                    "MongoDB refused a command: {} ({}): {}",
                    c.code_name, c.code, c.message
                ),
            )
        }
        K::InvalidArgument { ref message, .. } => {
            err(ErrorKind::Unsupported, format!("MongoDB: {message}"))
        }
        ref k => err(ErrorKind::Protocol, format!("MongoDB: {k}")),
    }
}

/// Connects (a short server-selection timeout: a wrong address fails fast).
pub fn connect(uri: &str, timeout: Duration) -> Result<Client, EngineError> {
    Client::with_options(options(uri, timeout)?).map_err(driver)
}

fn options(uri: &str, timeout: Duration) -> Result<ClientOptions, EngineError> {
    let mut o = ClientOptions::parse(uri).run().map_err(|e| {
        err(
            ErrorKind::Unsupported,
            format!("not a usable MongoDB connection string: {e}"),
        )
    })?;
    // The URI's own timeouts win.
    o.server_selection_timeout.get_or_insert(timeout);
    o.connect_timeout.get_or_insert(timeout);
    o.app_name = Some("stowage".into());
    Ok(o)
}

/// Connects only where `check` allows (the operator's `--tenant-allow` for
/// a tenant's instance) and reports the server's facts. The driver follows
/// the members a replica set advertises, which need not be the hosts of the
/// connection string: so first each host of the string is checked and
/// asked, on a direct connection without credentials, which members it
/// advertises (`hello` needs no login); every one must pass before the
/// replica-set client connects anywhere. The members the connected set
/// advertises are checked again. (The driver resolves names itself: a name
/// that resolves differently between the check and the connection is not
/// caught.)
pub fn connect_checked(
    uri: &str,
    check: Option<&crate::HostCheck>,
) -> Result<(Client, MongoFacts), EngineError> {
    let timeout = Duration::from_secs(10);
    if let Some(hc) = check {
        let o = options(uri, timeout)?;
        for seed in &o.hosts {
            let mongodb::options::ServerAddress::Tcp { host, port } = seed else {
                return Err(err(
                    ErrorKind::Permission,
                    format!("{seed}: only TCP hosts may be reached by this account"),
                ));
            };
            let port = port.unwrap_or(27017);
            hc.check(host, port).map_err(|why| {
                err(
                    ErrorKind::Permission,
                    format!("the connection string names {seed}, which this account may not reach: {why}"),
                )
            })?;
            let mut direct = o.clone();
            direct.hosts = vec![seed.clone()];
            direct.direct_connection = Some(true);
            direct.repl_set_name = None;
            direct.credential = None;
            let Ok(hello) = Client::with_options(direct)
                .map_err(driver)?
                .database("admin")
                .run_command(doc! {"hello": 1})
                .run()
            else {
                // Unreachable now: the replica-set client will say so, or
                // reach another host of the string (checked too).
                continue;
            };
            check_members(&members_of(&hello), Some(hc))?;
        }
    }
    let c = connect(uri, timeout)?;
    let f = facts(&c)?;
    check_members(&f.members, check)?;
    Ok((c, f))
}

/// Every member a `hello` reply advertises (`hosts`, `passives`,
/// `arbiters`), as `host:port`.
fn members_of(hello: &Document) -> Vec<String> {
    ["hosts", "passives", "arbiters"]
        .iter()
        .filter_map(|k| hello.get_array(*k).ok())
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_string))
        .collect()
}

/// Server version, replica-set name and role.
pub fn facts(c: &Client) -> Result<MongoFacts, EngineError> {
    let admin = c.database("admin");
    let hello = admin.run_command(doc! {"hello": 1}).run().map_err(driver)?;
    let build = admin
        .run_command(doc! {"buildInfo": 1})
        .run()
        .map_err(driver)?;
    let members = members_of(&hello);
    Ok(MongoFacts {
        version: build.get_str("version").unwrap_or("unknown").to_string(),
        set_name: hello.get_str("setName").ok().map(str::to_string),
        is_primary: hello.get_bool("isWritablePrimary").unwrap_or(false),
        members,
    })
}

/// The oplog entry at one end (`dir` 1: oldest, -1: newest) of `key`'s
/// order: `$natural` (insertion order; O(1) on mongod, which keeps the
/// oplog in that order) or `ts` (a sort: a full scan, for servers that
/// ignore `$natural` on the oplog, as SecantusDB does).
fn oplog_end(c: &Client, key: &str, dir: i32) -> Result<Option<Timestamp>, EngineError> {
    let oplog = c.database("local").collection::<Document>("oplog.rs");
    let d = oplog
        .find_one(doc! {})
        .projection(doc! {"ts": 1})
        .sort(doc! {key: dir})
        .run()
        .map_err(driver)?;
    Ok(d.and_then(|d| d.get_timestamp("ts").ok()))
}

/// How to find the ends of a server's oplog: by `$natural` order where the
/// server keeps it (mongod: O(1) however large the oplog), else by sorting.
#[derive(Clone, Copy, Debug)]
struct OplogEnds {
    natural: bool,
}

impl OplogEnds {
    /// Probes whether the server honours `$natural` order on the oplog:
    /// its `$natural` last entry must not be older than its first.
    fn probe(c: &Client) -> Result<OplogEnds, EngineError> {
        let natural = match (oplog_end(c, "$natural", 1)?, oplog_end(c, "$natural", -1)?) {
            // Equal ends prove nothing (one entry, or the order ignored):
            // then sort, which is right on every server.
            (Some(first), Some(last)) => ts_gt(last, first),
            _ => true,
        };
        if !natural {
            tracing::debug!("the server ignores $natural order on the oplog; sorting by ts");
        }
        Ok(OplogEnds { natural })
    }

    fn end(self, c: &Client, dir: i32) -> Result<Option<Timestamp>, EngineError> {
        oplog_end(c, if self.natural { "$natural" } else { "ts" }, dir)
    }

    fn newest(self, c: &Client) -> Result<Option<Timestamp>, EngineError> {
        self.end(c, -1)
    }

    fn oldest(self, c: &Client) -> Result<Option<Timestamp>, EngineError> {
        self.end(c, 1)
    }
}

/// Escapes one path component: letters, digits, `-`, `_` and `.` stay
/// (a component of only dots is escaped whole), anything else is `%XX`.
pub fn escape(name: &str) -> String {
    let all_dots = !name.is_empty() && name.bytes().all(|b| b == b'.');
    let mut out = String::new();
    for b in name.bytes() {
        if !all_dots && (b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// One collection (or view) to back up.
#[derive(Debug, Clone)]
struct Coll {
    db: String,
    name: String,
    /// `collection`, `view`, `timeseries`.
    kind: String,
    info: Document,
    size: u64,
}

pub(crate) use crate::new_file as file;

fn dir(path: String) -> FileMeta {
    FileMeta {
        kind: FileKind::Dir,
        mode: 0o700,
        ..file(path)
    }
}

/// Whether a collection is the server's own state, never backed up or
/// replayed: users and roles (`admin.system.*`), sessions, transactions and
/// caches of `config`, anything of `local`.
pub fn internal_collection(db: &str, coll: &str) -> bool {
    match db {
        "local" => true,
        "admin" => coll.starts_with("system."),
        "config" => {
            coll.starts_with("system.")
                || coll.starts_with("cache.")
                || ["transactions", "image_collection"].contains(&coll)
        }
        _ => false,
    }
}

/// The collections to dump: every database but `local`, and `config` only
/// where it holds a cluster's metadata (`config_db`: the config servers).
fn collections(c: &Client, config_db: bool) -> Result<Vec<Coll>, EngineError> {
    let mut out = Vec::new();
    for db in c.list_database_names().run().map_err(driver)? {
        if db == "local" || (db == "config" && !config_db) {
            continue;
        }
        let d = c.database(&db);
        let cur = d.list_collections().run().map_err(driver)?;
        for spec in cur {
            let spec = spec.map_err(driver)?;
            if internal_collection(&db, &spec.name) {
                continue;
            }
            let kind = match spec.collection_type {
                mongodb::results::CollectionType::View => "view",
                mongodb::results::CollectionType::Timeseries => "timeseries",
                _ => "collection",
            }
            .to_string();
            let info = mongodb::bson::serialize_to_document(&spec).unwrap_or_default();
            let size = if kind == "collection" {
                d.run_command(doc! {"collStats": &spec.name})
                    .run()
                    .ok()
                    .and_then(|s| number(s.get("size")))
                    .unwrap_or(0)
            } else {
                0
            };
            out.push(Coll {
                db: db.clone(),
                name: spec.name.clone(),
                kind,
                info,
                size,
            });
        }
    }
    // Smallest first: the threads pop from the end, so they take the
    // largest first and finish together.
    out.sort_by_key(|c| c.size);
    Ok(out)
}

/// Int32, Int64 or Double as a byte count (servers differ).
fn number(v: Option<&Bson>) -> Option<u64> {
    match v? {
        Bson::Int32(n) => Some((*n).max(0) as u64),
        Bson::Int64(n) => Some((*n).max(0) as u64),
        Bson::Double(n) => Some(n.max(0.0) as u64),
        _ => None,
    }
}

/// Snapshot reads at the dump's start, where the server has them: every
/// collection is then read as it was when the dump began. Without them
/// (an older server, or one that refuses them) the dump is still correct:
/// the oplog replay from the start is idempotent, as mongodump's is.
struct SnapshotReads {
    at: Mutex<Option<Timestamp>>,
    why_not: Mutex<Option<String>>,
}

impl SnapshotReads {
    /// Tries a snapshot read at `start` on the first collection: the
    /// server's refusal (any command error) turns them off, with its reason.
    fn probe(c: &Client, start: Timestamp, colls: &[Coll]) -> Result<SnapshotReads, EngineError> {
        let s = SnapshotReads {
            at: Mutex::new(None),
            why_not: Mutex::new(None),
        };
        let Some(coll) = colls.iter().find(|c| c.kind == "collection") else {
            return Ok(s);
        };
        let tried = c
            .start_session()
            .snapshot(true)
            .snapshot_time(start)
            .run()
            .and_then(|mut ses| {
                c.database(&coll.db)
                    .collection::<mongodb::bson::RawDocumentBuf>(&coll.name)
                    .find_one(doc! {})
                    .session(&mut ses)
                    .run()
            });
        match tried {
            Ok(_) => *s.at.lock().expect("snapshot") = Some(start),
            Err(e) => {
                let e = driver(e);
                if matches!(e.kind, ErrorKind::Unreachable | ErrorKind::ServerGone) {
                    return Err(e);
                }
                s.turn_off(format!("the server refused a snapshot read: {}", e.message));
            }
        }
        Ok(s)
    }

    fn at(&self) -> Option<Timestamp> {
        *self.at.lock().expect("snapshot")
    }

    fn turn_off(&self, why: String) {
        tracing::info!(reason = %why, "dumping without snapshot reads");
        *self.at.lock().expect("snapshot") = None;
        self.why_not.lock().expect("snapshot").get_or_insert(why);
    }
}

/// Whether a failed snapshot read means the server no longer keeps (or
/// never had) the snapshot: SnapshotTooOld (239), SnapshotUnavailable (246).
/// A longer read than its history window (mongod's
/// `minSnapshotHistoryWindowInSeconds`, 5 minutes by default) ends so.
pub fn snapshot_gone(code: i32) -> bool {
    matches!(code, 239 | 246)
}

/// A failed read of a collection: the server's error, or one of ours.
enum ReadFail {
    Driver(mongodb::error::Error),
    Other(EngineError),
}

impl From<EngineError> for ReadFail {
    fn from(e: EngineError) -> Self {
        ReadFail::Other(e)
    }
}

impl ReadFail {
    fn snapshot_gone(&self) -> bool {
        matches!(self, ReadFail::Driver(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if snapshot_gone(c.code)))
    }

    fn into_engine(self) -> EngineError {
        match self {
            ReadFail::Driver(e) => driver(e),
            ReadFail::Other(e) => e,
        }
    }
}

/// Reads every document of a collection (at `at` with a snapshot session,
/// else plainly), handing each to `each` as the raw bytes the server sent.
fn read_docs(
    c: &Client,
    coll: &Coll,
    at: Option<Timestamp>,
    each: &mut dyn FnMut(&RawDocument) -> Result<(), EngineError>,
) -> Result<(), ReadFail> {
    let col = c.database(&coll.db).collection::<Document>(&coll.name);
    match at {
        None => {
            let mut cur = col
                .find(doc! {})
                .batch_size(1000)
                .run()
                .map_err(ReadFail::Driver)?;
            while cur.advance().map_err(ReadFail::Driver)? {
                each(cur.current())?;
            }
        }
        Some(ts) => {
            let mut ses = c
                .start_session()
                .snapshot(true)
                .snapshot_time(ts)
                .run()
                .map_err(ReadFail::Driver)?;
            let mut cur = col
                .find(doc! {})
                .batch_size(1000)
                .session(&mut ses)
                .run()
                .map_err(ReadFail::Driver)?;
            while cur.advance(&mut ses).map_err(ReadFail::Driver)? {
                each(cur.current())?;
            }
        }
    }
    Ok(())
}

/// Writes one collection: documents as read, then its metadata. A snapshot
/// read the server gives up on is started over without one (and snapshot
/// reads are off for the rest of the dump).
fn dump_collection(
    c: &Client,
    coll: &Coll,
    w: &mut ArchiveWriter,
    live: &LiveTask,
    docs: &AtomicU64,
    limit: &RateLimit,
    snap: &SnapshotReads,
) -> Result<(), EngineError> {
    let base = format!("{}/{}", escape(&coll.db), escape(&coll.name));
    let d = c.database(&coll.db);
    let mut indexes = Vec::new();
    if coll.kind != "view" {
        loop {
            let at = snap.at();
            w.begin_file(file(format!("{base}.bson")))?;
            let (mut n, mut bytes_read) = (0u64, 0u64);
            let res = read_docs(c, coll, at, &mut |raw| {
                let bytes = raw.as_bytes();
                w.write(bytes)?;
                live.bytes_done
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                docs.fetch_add(1, Ordering::Relaxed);
                (n, bytes_read) = (n + 1, bytes_read + bytes.len() as u64);
                limit.consume(bytes.len() as u64, live);
                if live.is_cancelled() {
                    return Err(err(ErrorKind::Cancelled, "cancelled"));
                }
                Ok(())
            });
            match res {
                Ok(()) => break,
                Err(e) if at.is_some() && e.snapshot_gone() => {
                    w.discard_file();
                    live.bytes_done.fetch_sub(bytes_read, Ordering::Relaxed);
                    docs.fetch_sub(n, Ordering::Relaxed);
                    snap.turn_off(format!(
                        "the server gave up the snapshot while {}.{} was read ({}); it was read again without",
                        coll.db,
                        coll.name,
                        e.into_engine().message
                    ));
                }
                Err(e) => return Err(e.into_engine()),
            }
        }
        w.end_file()?;
        let ic = d
            .collection::<Document>(&coll.name)
            .list_indexes()
            .run()
            .map_err(driver)?;
        for i in ic {
            let i = i.map_err(driver)?;
            indexes.push(mongodb::bson::serialize_to_document(&i).unwrap_or_default());
        }
    }
    let meta = doc! {
        "type": &coll.kind,
        "info": coll.info.clone(),
        "indexes": indexes,
    };
    // Canonical extended JSON keeps every BSON type of options and indexes
    // (mongodump's metadata.json is the same).
    let json = Bson::Document(meta).into_canonical_extjson().to_string();
    w.begin_file(file(format!("{base}.metadata.json")))?;
    w.write(json.as_bytes())?;
    w.end_file()?;
    Ok(())
}

/// Backs up a replica set into one archive of `writer` (see
/// [`DumpOptions`]). Moves `live` to checking, then opens a part of it
/// named after the replica set and moves that through preparing and
/// running to finished; the caller finishes the set. (A sharded cluster
/// runs the same phases per shard: `sharded.rs`.)
///
/// With a base set whose dump can be reused ([`redump_reason`], the oplog
/// still holding the very entry the base ended at), the new set takes the
/// base's dump by reference and its oplog slice continued to now: a
/// complete set that stores only the changes. Otherwise a new dump.
pub fn backup_replica_set(
    uri: &str,
    o: &DumpOptions,
    writer: &mut BackupWriter,
    live: &LiveTask,
) -> Result<MongoBackup, EngineError> {
    live.set_state(TaskState::Checking);
    let (c, f) = connect_checked(uri, o.host_check)?;
    let set_name = replica_set_name(&f)?;
    let archive = o.archive.map_or_else(|| escape(&set_name), str::to_string);
    let part = live.add_part(&set_name);
    part.set_state(TaskState::Checking);
    let rs = ReplicaSet {
        c,
        f,
        archive,
        part,
        config_db: false,
    };
    let d = rs.dump(o, &RateLimit::new(o.max_rate_kbps), writer)?;
    let end = d.dump_end;
    let (out, writers) = rs.capture(d, end, None, false, o.host_check, writer)?;
    for w in writers {
        writer.add_archive(w)?;
    }
    rs.part.set_state(TaskState::Finishing);
    rs.part.set_state(TaskState::Finished);
    Ok(out.backup)
}

/// The replica-set name a consistent backup needs (a standalone server
/// has no oplog).
pub(crate) fn replica_set_name(f: &MongoFacts) -> Result<String, EngineError> {
    f.set_name.clone().ok_or_else(|| {
        err(
            ErrorKind::Unsupported,
            "this MongoDB server is standalone (no replica set, no oplog): a consistent online backup needs a replica set",
        )
    })
}

/// One replica set being backed up (a whole instance, or a shard or the
/// config servers of a cluster): its client, facts, archive and part.
pub(crate) struct ReplicaSet {
    pub(crate) c: Client,
    pub(crate) f: MongoFacts,
    /// The archive its files go in.
    pub(crate) archive: String,
    pub(crate) part: std::sync::Arc<LiveTask>,
    /// A cluster's config servers: their `config` database is dumped too.
    pub(crate) config_db: bool,
}

/// A replica set's dump, taken or reused, before its oplog slice is
/// captured ([`ReplicaSet::capture`]).
pub(crate) struct Dumped {
    ends: OplogEnds,
    /// The newest oplog entry when the dump began.
    start: Timestamp,
    /// The slice is captured from here: `start`, or the base set's end.
    from: Timestamp,
    /// What `from` is, for the overrun message.
    from_what: String,
    /// The newest oplog entry once the dump was read.
    pub(crate) dump_end: Timestamp,
    collections: u64,
    databases: BTreeSet<String>,
    documents: u64,
    /// Oplog entries already in the slice continued (a reused base's).
    oplog_entries: u64,
    /// Bytes of the dump's documents (read, or reused).
    dump_bytes: u64,
    /// The base set's oplog slice, continued rather than begun.
    continued: Option<stowage_core::manifest::FileEntry>,
    dump: DumpSource,
    /// Writers holding the dump's files, added to the set after the slice.
    writers: Vec<ArchiveWriter>,
}

/// A replica set's finished backup and its slice's details.
pub(crate) struct Captured {
    pub(crate) backup: MongoBackup,
    /// Transactions the slice holds past the `end` it was asked for (an
    /// `end` would have split them): a restore to that `end` leaves them out.
    pub(crate) txns_after: Vec<String>,
}

impl ReplicaSet {
    /// Takes the dump (or reuses the base set's), moving the part to
    /// running.
    pub(crate) fn dump(
        &self,
        o: &DumpOptions,
        limit: &RateLimit,
        writer: &BackupWriter,
    ) -> Result<Dumped, EngineError> {
        let (c, live, archive) = (&self.c, &*self.part, self.archive.as_str());
        let set_name = replica_set_name(&self.f)?;
        live.set_state(TaskState::Preparing);
        let ends = OplogEnds::probe(c)?;
        let mut why_new = None;
        if let Some(b) = o.base {
            match plan_reuse(c, b, &set_name, archive, writer)? {
                Ok(r) => return reuse_dump(c, ends, r, archive, writer, live),
                Err(why) => {
                    tracing::info!(base = b.id, part = archive, reason = %why, "taking a new dump");
                    why_new = Some(format!("set {} not built on: {why}", b.id));
                }
            }
        }
        let dump_ms = stowage_repo::lock::now_ms();
        let start = ends.newest(c)?.ok_or_else(|| {
            err(
                ErrorKind::Unsupported,
                "the server's oplog (local.oplog.rs) is empty or missing",
            )
        })?;
        let colls = collections(c, self.config_db)?;
        let snap = SnapshotReads::probe(c, start, &colls)?;
        if let (Some(t), Some(_)) = (o.snapshot_at_for_tests, snap.at()) {
            *snap.at.lock().expect("snapshot") = Some(t);
        }
        live.bytes_total
            .store(colls.iter().map(|c| c.size).sum(), Ordering::Relaxed);
        live.set_state(TaskState::Running);

        // Collections from a shared queue, one archive writer per thread;
        // their files land in the same archive.
        let queue = Mutex::new(colls.clone());
        let docs = AtomicU64::new(0);
        let threads = o.threads.clamp(1, 16).min(colls.len().max(1));
        let mut writers: Vec<ArchiveWriter> = (0..threads)
            .map(|_| writer.archive_writer(archive, None))
            .collect();
        let databases: BTreeSet<String> = colls.iter().map(|c| c.db.clone()).collect();
        for db in &databases {
            writers[0].add_entry(dir(escape(db)))?;
        }
        let results: Vec<Result<ArchiveWriter, EngineError>> = std::thread::scope(|s| {
            let handles: Vec<_> = writers
                .drain(..)
                .map(|mut w| {
                    let (queue, docs, snap) = (&queue, &docs, &snap);
                    s.spawn(move || -> Result<ArchiveWriter, EngineError> {
                        loop {
                            let next = queue.lock().expect("queue").pop();
                            let Some(coll) = next else {
                                return Ok(w);
                            };
                            dump_collection(c, &coll, &mut w, live, docs, limit, snap)?;
                        }
                    })
                })
                .collect();
            join_all(handles, "a dump thread")
        });
        let mut done = Vec::new();
        for r in results {
            done.push(r.map_err(mid_backup)?);
        }
        let dump_end = ends.newest(c).map_err(mid_backup)?.unwrap_or(start);
        Ok(Dumped {
            ends,
            start,
            from: start,
            from_what: "the entry the dump started at".into(),
            dump_end,
            collections: colls.len() as u64,
            databases,
            documents: docs.load(Ordering::Relaxed),
            oplog_entries: 0,
            dump_bytes: live.bytes_done.load(Ordering::Relaxed),
            continued: None,
            dump: DumpSource {
                started_ms: dump_ms,
                reused_from: None,
                why_new,
                snapshot_reads: snap.at().is_some(),
                why_no_snapshot: snap.why_not.into_inner().expect("snapshot"),
            },
            writers: done,
        })
    }

    /// Captures the oplog slice from the dump's `from` to `end` (never
    /// splitting a transaction; `cut` and `complete` as [`copy_oplog`]), checks the oplog still holds `from` and
    /// the members still pass `host_check`. Returns the backup and the
    /// writers to add to the set; the part stays running (the caller
    /// finishes it once every part is done).
    pub(crate) fn capture(
        &self,
        d: Dumped,
        end: Timestamp,
        cut: Option<Timestamp>,
        complete: bool,
        host_check: Option<&crate::HostCheck>,
        writer: &BackupWriter,
    ) -> Result<(Captured, Vec<ArchiveWriter>), EngineError> {
        let c = &self.c;
        let mut writers = d.writers;
        let mut w = writer.archive_writer(&self.archive, None);
        match &d.continued {
            Some(f) => w.continue_file(f)?,
            None => w.begin_file(file("oplog.bson".into()))?,
        }
        let mut end = end;
        let copied = copy_oplog(c, d.from, &mut end, cut, complete, &mut w).map_err(mid_backup)?;
        w.end_file()?;
        writers.push(w);
        check_window(c, d.ends, d.from, &d.from_what)?;
        // A member added by a reconfiguration while the backup ran must
        // pass too, or no set is made of what was read.
        if host_check.is_some() {
            check_members(&facts(c).map_err(mid_backup)?.members, host_check)?;
        }
        let end_hash = entry_hash(c, end).map_err(mid_backup)?.unwrap_or_default();
        let mut databases = d.databases;
        databases.extend(copied.databases);
        let backup = MongoBackup {
            facts: self.f.clone(),
            end,
            start: d.start,
            collections: d.collections,
            databases: databases.into_iter().collect(),
            documents: d.documents,
            oplog_entries: d.oplog_entries + copied.entries,
            end_hash,
            dump: d.dump,
            bytes: d.dump_bytes + d.continued.as_ref().map_or(0, |f| f.size) + copied.bytes,
        };
        Ok((
            Captured {
                backup,
                txns_after: copied.txns_after,
            },
            writers,
        ))
    }
}

/// Fails if the oplog no longer holds `from` (its oldest entry is newer):
/// entries after it may have been lost before they were copied.
fn check_window(
    c: &Client,
    ends: OplogEnds,
    from: Timestamp,
    what: &str,
) -> Result<(), EngineError> {
    if ends
        .oldest(c)
        .map_err(mid_backup)?
        .is_none_or(|o| ts_gt(o, from))
    {
        return Err(err(
            ErrorKind::Capacity,
            format!(
                "oplog window overrun: the oplog no longer holds {what}; raise the oplog size or back up at a less busy time"
            ),
        ));
    }
    Ok(())
}

/// BLAKE3 (hex) of the raw oplog entry at `ts`, if the oplog holds it.
fn entry_hash(c: &Client, ts: Timestamp) -> Result<Option<String>, EngineError> {
    let oplog = c
        .database("local")
        .collection::<mongodb::bson::RawDocumentBuf>("oplog.rs");
    let e = oplog.find_one(doc! {"ts": ts}).run().map_err(driver)?;
    Ok(e.map(|e| blake3::hash(e.as_bytes()).to_hex().to_string()))
}

/// A count a set's `engine_meta` records (0 when absent).
fn meta_u64(m: &serde_json::Value, k: &str) -> u64 {
    m.get(k).and_then(|v| v.as_u64()).unwrap_or(0)
}

/// What a set's `engine_meta` records of the replica set behind archive
/// `archive`: a sharded set's entry in `parts`, else the whole meta.
pub fn part_meta<'a>(m: &'a serde_json::Value, archive: &str) -> &'a serde_json::Value {
    match m.get("parts").and_then(|p| p.as_array()) {
        Some(parts) => parts
            .iter()
            .find(|p| p.get("archive").and_then(|a| a.as_str()) == Some(archive))
            .unwrap_or(&serde_json::Value::Null),
        None => m,
    }
}

/// What a backup reuses from its base set.
struct Reuse<'a> {
    base: i64,
    archive: &'a stowage_core::manifest::Archive,
    oplog: &'a stowage_core::manifest::FileEntry,
    /// The dump's start and the base set's end.
    start: Timestamp,
    base_end: Timestamp,
    meta: &'a serde_json::Value,
    dump_ms: i64,
}

/// Whether `b`'s dump of archive `archive` can be reused for this backup of
/// `set_name`: the reuse, or (inner `Err`) why not.
fn plan_reuse<'a>(
    c: &Client,
    b: &'a crate::BaseSet,
    set_name: &str,
    archive: &str,
    writer: &BackupWriter,
) -> Result<Result<Reuse<'a>, String>, EngineError> {
    let m = part_meta(&b.manifest.engine_meta, archive);
    let ts = |k: &str| {
        let v = m.get(k)?;
        Some(Timestamp {
            time: u32::try_from(v.get("t")?.as_u64()?).ok()?,
            increment: u32::try_from(v.get("i")?.as_u64()?).ok()?,
        })
    };
    let hash = m.get("end_hash").and_then(|v| v.as_str()).unwrap_or("");
    let (Some(start), Some(base_end)) = (ts("start_ts"), ts("end_ts")) else {
        return Ok(Err("it does not record its oplog end".into()));
    };
    if hash.is_empty() {
        return Ok(Err("it does not record its oplog end".into()));
    }
    if m.get("replica_set").and_then(|v| v.as_str()) != Some(set_name) {
        return Ok(Err(format!("it is not of replica set {set_name}")));
    }
    let Some(a) = b.manifest.archives.iter().find(|a| a.name == archive) else {
        return Ok(Err(format!("it has no part {archive}")));
    };
    let Some(oplog) = a.files.iter().find(|f| f.path == "oplog.bson") else {
        return Ok(Err("it has no oplog slice".into()));
    };
    let dump_ms = m
        .pointer("/dump/started_ms")
        .and_then(|v| v.as_i64())
        .unwrap_or(b.manifest.started_ms);
    let dump_bytes = a
        .files
        .iter()
        .filter(|f| f.path.ends_with(".bson") && f.path != "oplog.bson")
        .map(|f| f.size)
        .sum();
    let n = |k: &str| meta_u64(m, k);
    let age = DumpAge {
        age_ms: stowage_repo::lock::now_ms() - dump_ms,
        dump_bytes,
        documents: n("documents"),
        oplog_bytes: oplog.size,
        oplog_entries: n("oplog_entries"),
    };
    if let Some(why) = redump_reason(age) {
        return Ok(Err(why));
    }
    if let Some(f) = a.files.iter().find(|f| !writer.holds_file(f)) {
        return Ok(Err(format!(
            "the repository no longer holds all of its {}",
            f.path
        )));
    }
    let found = match entry_hash(c, base_end) {
        Ok(h) => h,
        Err(e) if matches!(e.kind, ErrorKind::Unreachable | ErrorKind::ServerGone) => {
            return Err(e);
        }
        Err(e) => {
            return Ok(Err(format!(
                "its end entry could not be read back: {}",
                e.message
            )));
        }
    };
    match found {
        Some(h) if h == hash => {}
        Some(_) => {
            return Ok(Err(
                "the oplog entry it ended at is not the same any more (a rollback?)".into(),
            ));
        }
        None => {
            return Ok(Err(
                "the oplog no longer holds the entry it ended at (rolled over since)".into(),
            ));
        }
    }
    Ok(Ok(Reuse {
        base: b.id,
        archive: a,
        oplog,
        start,
        base_end,
        meta: m,
        dump_ms,
    }))
}

/// A dump reused from a base set: its files by reference; the capture
/// continues its oplog slice from where it ended.
fn reuse_dump(
    c: &Client,
    ends: OplogEnds,
    r: Reuse,
    archive: &str,
    writer: &BackupWriter,
    live: &LiveTask,
) -> Result<Dumped, EngineError> {
    let reused: u64 = r.archive.files.iter().map(|f| f.size).sum();
    live.bytes_total.store(reused, Ordering::Relaxed);
    live.bytes_done.store(reused, Ordering::Relaxed);
    live.set_state(TaskState::Running);
    let mut w = writer.archive_writer(archive, None);
    for f in r.archive.files.iter().filter(|f| f.path != "oplog.bson") {
        w.reuse_file(f)?;
    }
    let dump_end = ends.newest(c).map_err(mid_backup)?.unwrap_or(r.base_end);
    let n = |k: &str| meta_u64(r.meta, k);
    let databases: BTreeSet<String> = r
        .meta
        .get("databases")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    Ok(Dumped {
        ends,
        start: r.start,
        from: r.base_end,
        from_what: format!("the end of set {}", r.base),
        dump_end,
        collections: n("collections"),
        databases,
        documents: n("documents"),
        oplog_entries: n("oplog_entries"),
        dump_bytes: reused - r.oplog.size,
        continued: Some(r.oplog.clone()),
        dump: DumpSource {
            started_ms: r.dump_ms,
            reused_from: Some(r.base),
            why_new: None,
            snapshot_reads: r
                .meta
                .pointer("/dump/snapshot_reads")
                .and_then(|v| v.as_bool())
                == Some(true),
            why_no_snapshot: r
                .meta
                .pointer("/dump/why_no_snapshot")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        },
        writers: vec![w],
    })
}

/// A server that stops answering once the backup has started went away:
/// say so, rather than that it cannot be reached.
fn mid_backup(e: EngineError) -> EngineError {
    match e.kind {
        ErrorKind::Unreachable => err(
            ErrorKind::ServerGone,
            format!(
                "the connection to the MongoDB server was lost during the backup (did it stop?): {}",
                e.message
            ),
        ),
        _ => e,
    }
}

fn ts_gt(a: Timestamp, b: Timestamp) -> bool {
    (a.time, a.increment) > (b.time, b.increment)
}

/// A transaction's identity in an oplog entry, if it belongs to one.
/// mongod logs a transaction as `applyOps` entries (and a prepared one's
/// `commitTransaction`/`abortTransaction`) carrying `lsid` and `txnNumber`;
/// SecantusDB logs each of its writes as an entry carrying them. A
/// retryable write carries them too on mongod, with a `stmtId`: it is not
/// a transaction (a retryable `insertMany` is one entry per document, each
/// its own write).
fn txn_of(d: &Document) -> Option<(Vec<u8>, i64)> {
    if d.contains_key("stmtId") && d.get_str("op").is_ok_and(|op| op != "c") {
        return None;
    }
    let lsid = d.get_document("lsid").ok()?;
    let id = match lsid.get("id")? {
        Bson::Binary(b) => b.bytes.clone(),
        other => other.to_string().into_bytes(),
    };
    let n = match d.get("txnNumber")? {
        Bson::Int64(n) => *n,
        Bson::Int32(n) => *n as i64,
        _ => return None,
    };
    Some((id, n))
}

/// What [`copy_oplog`] copied.
struct OplogCopy {
    entries: u64,
    /// Databases the entries touch (not `admin`, `local`, `config`).
    databases: BTreeSet<String>,
    /// Transactions copied past the `end` asked for ([`txn_key`]).
    txns_after: Vec<String>,
    bytes: u64,
}

/// A transaction's identity as a set's meta records it: its session id
/// (hex) and number.
pub fn txn_key(t: &(Vec<u8>, i64)) -> String {
    let hex: String = t.0.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}:{}", t.1)
}

/// The transaction an oplog entry belongs to, as [`txn_key`] names it.
pub fn entry_txn(d: &Document) -> Option<String> {
    txn_of(d).as_ref().map(txn_key)
}

/// The databases an oplog entry writes to (not `admin`, `local`,
/// `config`): its namespace, the target of a rename (across databases, as
/// `$out` does), and the entries inside mongod's `applyOps` (transactions
/// are logged under `admin.$cmd`).
fn note_databases(d: &Document, out: &mut BTreeSet<String>) {
    let mut add = |ns: &str| {
        let db = ns.split('.').next().unwrap_or("");
        if !["", "admin", "local", "config"].contains(&db) && !out.contains(db) {
            out.insert(db.to_string());
        }
    };
    if let Ok(ns) = d.get_str("ns") {
        add(ns);
    }
    let Ok(o) = d.get_document("o") else {
        return;
    };
    if let Ok(to) = o.get_str("to") {
        add(to);
    }
    if let Ok(ops) = o.get_array("applyOps") {
        for op in ops.iter().filter_map(|b| b.as_document()) {
            note_databases(op, out);
        }
    }
}

/// How long the oplog's newest entries may take to become readable in
/// order (a forward scan sees an entry only once every earlier one is
/// committed).
const OPLOG_VISIBILITY_WAIT: Duration = Duration::from_secs(30);

/// How far back before a cluster time a transaction's first entry may lie
/// (mongod gives a transaction up after `transactionLifetimeLimitSeconds`,
/// 60 s by default): older entries are not remembered as open.
const TXN_HORIZON_SECS: u32 = 600;

/// Appends the oplog entries in (`start`, `end`] to the open file of `w`,
/// waiting for entries up to `end` that a forward scan does not see yet;
/// moves `end` forward while the entries just after it belong to a
/// transaction that has entries at or before it. On return `end` is the
/// last entry copied (or `start`): the set never claims an entry it lacks.
///
/// `cut`: a cluster time the slice will be restored to; every transaction
/// with entries on both sides of it is listed (`txns_after`: it commits
/// after it). `complete`: the server's clock is known to be past `end`, so
/// no entry at or before it can be written any more, though one may still
/// be on its way: the entries are read until two passes in a row find none
/// new up to `end` (an idle shard may have no entry after `end` to wait
/// for).
fn copy_oplog(
    c: &Client,
    start: Timestamp,
    end: &mut Timestamp,
    cut: Option<Timestamp>,
    complete: bool,
    w: &mut ArchiveWriter,
) -> Result<OplogCopy, EngineError> {
    let oplog = c.database("local").collection::<Document>("oplog.rs");
    // Transactions with entries at or before end (and, with a cut, at or
    // before it, within the horizon).
    let mut open: std::collections::HashSet<(Vec<u8>, i64)> = Default::default();
    let mut before_cut: std::collections::HashSet<(Vec<u8>, i64)> = Default::default();
    let mut out = OplogCopy {
        entries: 0,
        databases: BTreeSet::new(),
        txns_after: Vec::new(),
        bytes: 0,
    };
    // A newest entry older than start (another member answered): nothing
    // to copy, and the set stays at start.
    if ts_gt(start, *end) {
        *end = start;
    }
    let mut last = start;
    let deadline = std::time::Instant::now() + OPLOG_VISIBILITY_WAIT;
    let mut quiet_pass = false;
    'scan: loop {
        let mut cur = oplog
            .find(doc! {"ts": {"$gt": last}})
            .sort(doc! {"ts": 1})
            .batch_size(1000)
            .run()
            .map_err(driver)?;
        let mut new_before_cut = false;
        while cur.advance().map_err(driver)? {
            let raw = cur.current();
            let d: Document = raw.try_into().map_err(|e: mongodb::bson::error::Error| {
                err(ErrorKind::Protocol, format!("oplog entry: {e}"))
            })?;
            let Ok(ts) = d.get_timestamp("ts") else {
                continue;
            };
            let txn = txn_of(&d);
            if ts_gt(ts, *end) {
                // Past end: only the rest of a transaction end would split.
                match &txn {
                    Some(t) if open.contains(t) => *end = ts,
                    // Every entry up to end was readable before this one.
                    _ => break 'scan,
                }
            } else if let Some(t) = &txn {
                open.insert(t.clone());
            }
            if let (Some(k), Some(t)) = (cut, &txn) {
                if !ts_gt(ts, k) {
                    if ts.time.saturating_add(TXN_HORIZON_SECS) >= k.time {
                        before_cut.insert(t.clone());
                    }
                } else if before_cut.contains(t) {
                    let key = txn_key(t);
                    if !out.txns_after.contains(&key) {
                        out.txns_after.push(key);
                    }
                }
            }
            if !ts_gt(ts, *end) {
                new_before_cut = true;
            }
            note_databases(&d, &mut out.databases);
            w.write(raw.as_bytes())?;
            out.entries += 1;
            out.bytes += raw.as_bytes().len() as u64;
            last = ts;
        }
        if complete {
            // Two passes in a row with nothing new up to end: none is still
            // on its way.
            if !new_before_cut && quiet_pass {
                break 'scan;
            }
            quiet_pass = !new_before_cut;
        } else if !ts_gt(*end, last) {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(err(
                ErrorKind::Protocol,
                format!(
                    "the oplog's entries up to {}:{} did not become readable within {} s (read up to {}:{})",
                    end.time,
                    end.increment,
                    OPLOG_VISIBILITY_WAIT.as_secs(),
                    last.time,
                    last.increment
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    *end = last;
    Ok(out)
}

/// What a set records of its backup (`engine_meta`): what a later backup
/// needs to build on it (`start_ts`, `end_ts`, `end_hash`, `replica_set`,
/// `dump`) and what it holds.
pub fn meta_of(out: &MongoBackup) -> serde_json::Value {
    let ts = |t: Timestamp| serde_json::json!({"t": t.time, "i": t.increment});
    let mut dump = serde_json::json!({
        "started_ms": out.dump.started_ms,
        "snapshot_reads": out.dump.snapshot_reads,
    });
    if let Some(why) = &out.dump.why_no_snapshot {
        dump["why_no_snapshot"] = why.clone().into();
    }
    if let Some(id) = out.dump.reused_from {
        dump["reused_from_set"] = id.into();
    }
    if let Some(why) = &out.dump.why_new {
        dump["why_new"] = why.clone().into();
    }
    serde_json::json!({
        "server_version": out.facts.version,
        "replica_set": out.facts.set_name,
        "start_ts": ts(out.start),
        "end_ts": ts(out.end),
        "end_hash": out.end_hash,
        "dump": dump,
        "collections": out.collections,
        "databases": out.databases,
        "documents": out.documents,
        "oplog_entries": out.oplog_entries,
        "bytes": out.bytes,
        "layout": "mongodump",
    })
}

/// A quick check: connects and reports the server's facts.
pub fn check(uri: &str, host_check: Option<&crate::HostCheck>) -> Result<MongoFacts, EngineError> {
    connect_checked(uri, host_check).map(|(_, f)| f)
}

/// The instance's connection string with its user and password added
/// (percent-encoded), and its authentication database when one is set.
/// The stored string never holds credentials; this one lives only as long
/// as the connection is made.
fn uri_of(conn: &crate::ConnSpec) -> Result<stowage_core::Secret, EngineError> {
    let uri = conn.uri.as_deref().ok_or_else(|| {
        err(
            ErrorKind::Unsupported,
            "a MongoDB instance needs a connection string",
        )
    })?;
    with_credentials(uri, conn)
}

/// `uri` (one of the instance's connection strings) with the instance's
/// user, password and authentication database added.
fn with_credentials(
    uri: &str,
    conn: &crate::ConnSpec,
) -> Result<stowage_core::Secret, EngineError> {
    let rest = uri.strip_prefix("mongodb://").ok_or_else(|| {
        err(
            ErrorKind::Unsupported,
            "a MongoDB connection string starts with mongodb://",
        )
    })?;
    if rest.split(['/', '?']).next().unwrap_or("").contains('@') {
        return Err(err(
            ErrorKind::Unsupported,
            "the connection string must not hold credentials",
        ));
    }
    let enc = |s: &str| {
        let mut o = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                o.push(b as char);
            } else {
                o.push_str(&format!("%{b:02X}"));
            }
        }
        o
    };
    let mut full = match (&conn.password, conn.user.is_empty()) {
        (Some(pw), false) => format!("mongodb://{}:{}@{rest}", enc(&conn.user), enc(pw.expose())),
        (None, false) => format!("mongodb://{}@{rest}", enc(&conn.user)),
        _ => uri.to_string(),
    };
    if let Some(db) = conn.dbname.as_deref().filter(|d| !d.is_empty())
        && !full.to_ascii_lowercase().contains("authsource=")
    {
        full.push(if full.contains('?') { '&' } else { '?' });
        full.push_str(&format!("authSource={}", enc(db)));
    }
    Ok(stowage_core::Secret::new(full))
}

/// A cluster's replica sets as the instance's options list them
/// (`shards`: `[{id, uri}]`, `config`: `{id, uri}`), shards first, with
/// credentials; `None` for a replica set.
fn cluster_parts(conn: &crate::ConnSpec) -> Result<Option<Vec<sharded::PartSpec>>, EngineError> {
    let Some(shards) = conn.options.get("shards").and_then(|v| v.as_array()) else {
        return Ok(None);
    };
    let bad = || {
        err(
            ErrorKind::Unsupported,
            "the instance's shard list is damaged",
        )
    };
    let mut out = Vec::new();
    let one = |v: &serde_json::Value, role| -> Result<sharded::PartSpec, EngineError> {
        let id = v.get("id").and_then(|x| x.as_str()).ok_or_else(bad)?;
        let uri = v.get("uri").and_then(|x| x.as_str()).ok_or_else(bad)?;
        Ok(sharded::PartSpec {
            id: id.to_string(),
            role,
            uri: with_credentials(uri, conn)?,
        })
    };
    for v in shards {
        out.push(one(v, sharded::Role::Shard)?);
    }
    if let Some(cfg) = conn.options.get("config").filter(|v| !v.is_null()) {
        out.push(one(cfg, sharded::Role::Config)?);
    }
    Ok(Some(out))
}

/// MongoDB replica sets and sharded clusters, logically: the engine behind
/// `--engine mongodb`.
pub struct MongoLogical;

/// Checks every replica set of a cluster (all reachable, allowed, replica
/// sets); reports the first shard's version.
fn check_cluster(
    parts: &[sharded::PartSpec],
    host_check: Option<&crate::HostCheck>,
) -> Result<crate::ServerInfo, EngineError> {
    let mut sets = Vec::new();
    let mut version = None;
    for p in parts {
        let f = check(p.uri.expose(), host_check).map_err(|e| sharded::named(p, None, e))?;
        let name = replica_set_name(&f).map_err(|e| sharded::named(p, None, e))?;
        version.get_or_insert(f.version.clone());
        sets.push(serde_json::json!({"id": p.id, "role": p.role.as_str(), "replica_set": name}));
    }
    Ok(crate::ServerInfo {
        version: version.unwrap_or_default(),
        system_identifier: None,
        details: serde_json::json!({"engine": "mongodb", "topology": "sharded", "parts": sets}),
    })
}

/// Which archive of `m` goes into which server of the target: a cluster's
/// parts into the target cluster's (shard i into shard i, config into
/// config), a replica set's into the target; with `part`, that one part
/// alone (into a replica set, or the same part of a cluster).
fn restore_plan(
    conn: &crate::ConnSpec,
    m: &stowage_core::manifest::Manifest,
    part: Option<&str>,
) -> Result<Vec<(usize, stowage_core::Secret)>, EngineError> {
    let target = cluster_parts(conn)?;
    let source: Vec<(usize, &str)> = m
        .archives
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let role = part_meta(&m.engine_meta, &a.name)
                .get("role")
                .and_then(|r| r.as_str())
                .unwrap_or("replica_set");
            (i, role)
        })
        .collect();
    if let Some(want) = part {
        let Some(&(i, role)) = source.iter().find(|(i, _)| m.archives[*i].name == want) else {
            let names: Vec<&str> = m.archives.iter().map(|a| a.name.as_str()).collect();
            return Err(err(
                ErrorKind::Unsupported,
                format!(
                    "the set has no part {want:?} (its parts: {})",
                    names.join(", ")
                ),
            ));
        };
        return match target {
            None => Ok(vec![(i, uri_of(conn)?)]),
            Some(t) => {
                let same_role: Vec<usize> = source
                    .iter()
                    .filter(|(_, r)| *r == role)
                    .map(|(j, _)| *j)
                    .collect();
                let nth = same_role.iter().position(|j| *j == i).unwrap_or(0);
                let dest = t
                    .iter()
                    .filter(|p| p.role.as_str() == role)
                    .nth(nth)
                    .ok_or_else(|| {
                        err(
                            ErrorKind::Unsupported,
                            format!("the target cluster has no {role} for part {want}"),
                        )
                    })?;
                Ok(vec![(i, dest.uri.clone())])
            }
        };
    }
    let shards: Vec<usize> = source
        .iter()
        .filter(|(_, r)| *r == "shard")
        .map(|(i, _)| *i)
        .collect();
    match target {
        None if shards.is_empty() => Ok((0..m.archives.len())
            .map(|i| uri_of(conn).map(|u| (i, u)))
            .collect::<Result<_, _>>()?),
        None => Err(err(
            ErrorKind::Unsupported,
            format!(
                "the set is of a sharded cluster ({} shards): restore it into a sharded instance with as many shards, or one part (--part) into a replica set",
                shards.len()
            ),
        )),
        Some(_) if shards.is_empty() => Err(err(
            ErrorKind::Unsupported,
            "the set is of a replica set: restore it into a replica set (restoring it into one shard of a cluster is not supported)",
        )),
        Some(t) => {
            let tshards: Vec<&sharded::PartSpec> = t
                .iter()
                .filter(|p| p.role == sharded::Role::Shard)
                .collect();
            if tshards.len() != shards.len() {
                return Err(err(
                    ErrorKind::Unsupported,
                    format!(
                        "the set has {} shards, the target cluster {}: restore into a cluster with as many shards, or part by part",
                        shards.len(),
                        tshards.len()
                    ),
                ));
            }
            let mut plan: Vec<(usize, stowage_core::Secret)> = shards
                .iter()
                .zip(&tshards)
                .map(|(i, p)| (*i, p.uri.clone()))
                .collect();
            if let Some(&(i, _)) = source.iter().find(|(_, r)| *r == "config") {
                let cfg = t
                    .iter()
                    .find(|p| p.role == sharded::Role::Config)
                    .ok_or_else(|| {
                        err(
                            ErrorKind::Unsupported,
                            "the target cluster has no config servers registered",
                        )
                    })?;
                plan.push((i, cfg.uri.clone()));
            }
            Ok(plan)
        }
    }
}

impl crate::Engine for MongoLogical {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn method(&self) -> &'static str {
        "logical"
    }

    fn builds_on_earlier_sets(&self) -> bool {
        true
    }

    fn check_options(&self, conn: &crate::ConnSpec) -> Result<(), String> {
        // Adding the credentials checks the string's shape; the driver's
        // parser checks the rest (options, hosts).
        if let Some(parts) = cluster_parts(conn).map_err(|e| e.message)? {
            for p in parts {
                mongodb::options::ConnectionString::parse(p.uri.expose()).map_err(|e| {
                    format!(
                        "{} {}: not a usable MongoDB connection string: {e}",
                        p.role.as_str(),
                        p.id
                    )
                })?;
            }
            if let Some(m) = conn.options.get("mongos").and_then(|v| v.as_str()) {
                let full =
                    with_credentials(m, conn).map_err(|e| format!("mongos: {}", e.message))?;
                mongodb::options::ConnectionString::parse(full.expose())
                    .map_err(|e| format!("mongos: not a usable MongoDB connection string: {e}"))?;
            }
            return Ok(());
        }
        let full = uri_of(conn).map_err(|e| e.message)?;
        mongodb::options::ConnectionString::parse(full.expose())
            .map(|_| ())
            .map_err(|e| format!("uri: not a usable MongoDB connection string: {e}"))
    }

    fn list_shards(&self, conn: &crate::ConnSpec) -> Result<Vec<String>, EngineError> {
        let cfg = conn
            .options
            .get("config")
            .and_then(|c| c.get("uri"))
            .and_then(|u| u.as_str());
        let mongos = conn.options.get("mongos").and_then(|u| u.as_str());
        match (mongos, cfg) {
            (Some(m), _) => sharded::shard_list(
                with_credentials(m, conn)?.expose(),
                m,
                true,
                conn.host_check.as_ref(),
            ),
            (None, Some(c)) => sharded::shard_list(
                with_credentials(c, conn)?.expose(),
                c,
                false,
                conn.host_check.as_ref(),
            ),
            (None, None) => Err(err(
                ErrorKind::Unsupported,
                "the shards are read from the config servers or a mongos: give one",
            )),
        }
    }

    fn check(&self, conn: &crate::ConnSpec) -> Result<crate::ServerInfo, EngineError> {
        if let Some(parts) = cluster_parts(conn)? {
            return check_cluster(&parts, conn.host_check.as_ref());
        }
        let f = check(uri_of(conn)?.expose(), conn.host_check.as_ref())?;
        if f.set_name.is_none() {
            return Err(err(
                ErrorKind::Unsupported,
                "this MongoDB server is standalone (no replica set, no oplog): a consistent online backup needs a replica set",
            ));
        }
        Ok(crate::ServerInfo {
            version: f.version.clone(),
            system_identifier: f.set_name.clone(),
            details: serde_json::json!({
                "engine": "mongodb",
                "replica_set": f.set_name,
                "is_primary": f.is_primary,
            }),
        })
    }

    fn backup(
        &self,
        conn: &crate::ConnSpec,
        opts: &crate::BackupOptions,
        writer: &mut BackupWriter,
        live: &LiveTask,
    ) -> Result<crate::BackupOutcome, EngineError> {
        let o = DumpOptions {
            archive: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_rate_kbps: opts.max_rate_kbps,
            base: opts.base.as_ref(),
            host_check: conn.host_check.as_ref(),
            snapshot_at_for_tests: None,
        };
        if let Some(parts) = cluster_parts(conn)? {
            let mongos = conn
                .options
                .get("mongos")
                .and_then(|v| v.as_str())
                .map(|u| with_credentials(u, conn))
                .transpose()?;
            let out = sharded::backup_sharded(
                &parts,
                mongos.as_ref().map(|m| m.expose()),
                &o,
                writer,
                live,
            )?;
            return Ok(crate::BackupOutcome {
                consistent_point: stowage_core::ConsistentPoint::ClusterTime {
                    cluster_time: stowage_core::OplogTs {
                        t: out.cluster_time.time,
                        i: out.cluster_time.increment,
                    },
                    parts: out.parts.iter().map(|(p, _, _)| p.id.clone()).collect(),
                },
                engine_version: out
                    .parts
                    .first()
                    .map(|(_, b, _)| b.facts.version.clone())
                    .unwrap_or_default(),
                meta: sharded::meta_of(&out),
            });
        }
        // The archive is named after the replica set.
        let out = backup_replica_set(uri_of(conn)?.expose(), &o, writer, live)?;
        Ok(crate::BackupOutcome {
            consistent_point: stowage_core::ConsistentPoint::Oplog {
                oplog_ts: stowage_core::OplogTs {
                    t: out.end.time,
                    i: out.end.increment,
                },
                replica_set: out.facts.set_name.clone(),
            },
            engine_version: out.facts.version.clone(),
            meta: meta_of(&out),
        })
    }

    fn restore_targets(
        &self,
        _m: &stowage_core::manifest::Manifest,
        _target: &std::path::Path,
    ) -> Result<Vec<(usize, std::path::PathBuf)>, EngineError> {
        Err(err(
            ErrorKind::Unsupported,
            "a MongoDB backup restores into a running server, not into a folder: restore it --into a registered MongoDB instance",
        ))
    }

    fn restore_into(
        &self,
        conn: &crate::ConnSpec,
        repo: &std::sync::Arc<stowage_repo::Repository>,
        m: &stowage_core::manifest::Manifest,
        opts: &crate::RestoreIntoOptions,
        live: &LiveTask,
    ) -> Result<serde_json::Value, EngineError> {
        let o = restore::RestoreInto {
            rename: opts.rename.clone(),
            drop: opts.drop,
            threads: 0,
            host_check: conn.host_check.clone(),
        };
        let plan = restore_plan(conn, m, opts.part.as_deref())?;
        // Every target reachable and free before any part writes anything.
        if plan.len() > 1 {
            for (i, uri) in &plan {
                restore::preflight(uri.expose(), m, *i, &o).map_err(|e| EngineError {
                    message: format!("part {}: {}", m.archives[*i].name, e.message),
                    ..e
                })?;
            }
        }
        live.set_state(TaskState::Running);
        // One part per archive (a replica set, a shard), each with its own
        // progress, all at once; the task's progress is their sum.
        let lives: Vec<_> = plan
            .iter()
            .map(|(i, _)| {
                let part = live.add_part(&m.archives[*i].name);
                part.set_state(TaskState::Checking);
                part
            })
            .collect();
        let results: Vec<Result<restore::RestoreStats, EngineError>> = std::thread::scope(|s| {
            let handles: Vec<_> = plan
                .iter()
                .zip(&lives)
                .map(|((i, uri), part)| {
                    let (o, lives, n) = (&o, &lives, plan.len());
                    s.spawn(move || {
                        part.set_state(TaskState::Preparing);
                        part.set_state(TaskState::Running);
                        let r = restore::restore_dump(uri.expose(), repo, m, *i, o, part);
                        if r.is_err() {
                            for l in lives.iter() {
                                l.cancel();
                            }
                        }
                        r.map_err(|e| EngineError {
                            message: if n > 1 {
                                format!("part {}: {}", m.archives[*i].name, e.message)
                            } else {
                                e.message
                            },
                            ..e
                        })
                    })
                })
                .collect();
            join_all(handles, "a part's restore")
        });
        let mut total = restore::RestoreStats::default();
        let mut errs = Vec::new();
        for r in results {
            match r {
                Ok(st) => {
                    total.databases += st.databases;
                    total.collections += st.collections;
                    total.views += st.views;
                    total.documents += st.documents;
                    total.indexes += st.indexes;
                    total.oplog_applied += st.oplog_applied;
                }
                Err(e) => errs.push(e),
            }
        }
        if !errs.is_empty() {
            let first = errs
                .iter()
                .position(|e| e.kind != ErrorKind::Cancelled)
                .unwrap_or(0);
            return Err(errs.swap_remove(first));
        }
        for part in &lives {
            part.set_state(TaskState::Finishing);
            part.set_state(TaskState::Finished);
        }
        Ok(serde_json::json!({
            "databases": total.databases,
            "collections": total.collections,
            "views": total.views,
            "documents": total.documents,
            "indexes": total.indexes,
            "oplog_applied": total.oplog_applied,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn a_dump_is_taken_again_when_old_or_outweighed_by_its_oplog() {
        use super::{DumpAge, redump_reason};
        let day = 86_400_000;
        let d = DumpAge {
            age_ms: day,
            dump_bytes: 1 << 30,
            documents: 1_000_000,
            oplog_bytes: 1 << 20,
            oplog_entries: 10_000,
        };
        assert_eq!(redump_reason(d), None);
        let old = DumpAge {
            age_ms: 8 * day,
            ..d
        };
        assert!(redump_reason(old).unwrap().contains("8 days old"));
        // Entries: 1 per 20 documents, or 10,000 for a small dump.
        assert_eq!(
            redump_reason(DumpAge {
                oplog_entries: 50_000,
                ..d
            }),
            None
        );
        let many = DumpAge {
            oplog_entries: 50_001,
            ..d
        };
        assert!(redump_reason(many).unwrap().contains("replaying"));
        let small = DumpAge {
            documents: 100,
            oplog_entries: 10_000,
            ..d
        };
        assert_eq!(redump_reason(small), None);
        assert!(
            redump_reason(DumpAge {
                oplog_entries: 10_001,
                ..small
            })
            .is_some()
        );
        // Bytes: a quarter of the dump, or 64 MiB for a small one.
        assert_eq!(
            redump_reason(DumpAge {
                oplog_bytes: 1 << 28,
                ..d
            }),
            None
        );
        let big = DumpAge {
            oplog_bytes: (1 << 28) + 1,
            ..d
        };
        assert!(redump_reason(big).unwrap().contains("quarter"));
        let tiny = DumpAge {
            dump_bytes: 1 << 20,
            oplog_bytes: 64 << 20,
            ..d
        };
        assert_eq!(redump_reason(tiny), None);
        assert!(
            redump_reason(DumpAge {
                oplog_bytes: (64 << 20) + 1,
                ..tiny
            })
            .is_some()
        );
    }

    #[test]
    fn escaped_names_are_safe_path_components() {
        assert_eq!(escape("orders"), "orders");
        assert_eq!(escape("system.views"), "system.views");
        assert_eq!(escape("a/b"), "a%2Fb");
        assert_eq!(escape(".."), "%2E%2E");
        assert_eq!(escape(""), "%00");
        assert_eq!(escape("é"), "%C3%A9");
        for n in ["a/b", "..", ".", "", "x y", "ü/.."] {
            assert!(
                stowage_core::manifest::is_safe_relative_path(&escape(n)),
                "{n}"
            );
        }
    }
}
