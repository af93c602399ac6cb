//! Restoring a replica set's dump into a running server: collections with
//! their options (views as views), documents loaded in batches as the raw
//! BSON that was backed up, indexes built after the data. Databases may be
//! renamed; a target that already holds a database is refused unless asked
//! to drop it. Between the data and the indexes, the backup's oplog slice is
//! replayed (`oplog.rs`), so the result is the source's state at the set's
//! consistent point.

use super::{driver, err, join_all};
use crate::{EngineError, ErrorKind};
use mongodb::bson::{Bson, Document, RawDocumentBuf, doc};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use stowage_core::LiveTask;
use stowage_core::manifest::{Archive, FileEntry};
use stowage_repo::Repository;

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreInto {
    /// Source database → target database.
    pub rename: BTreeMap<String, String>,
    /// Drop target databases that exist already (otherwise refused).
    pub drop: bool,
    /// Collections loaded at once; 0: one per CPU.
    pub threads: usize,
    /// Every member of the target replica set must pass it before
    /// anything is written (`--tenant-allow`).
    pub host_check: Option<crate::HostCheck>,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct RestoreStats {
    pub databases: u64,
    pub collections: u64,
    pub views: u64,
    pub documents: u64,
    pub indexes: u64,
    /// Oplog entries replayed up to the consistent point.
    pub oplog_applied: u64,
}

/// Reverses [`super::escape`].
pub fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out == [0] {
        return Some(String::new());
    }
    String::from_utf8(out).ok()
}

struct Entry<'a> {
    db: String,
    coll: String,
    meta: &'a FileEntry,
    docs: Option<&'a FileEntry>,
}

fn entries(a: &Archive) -> Result<Vec<Entry<'_>>, EngineError> {
    let by_path: HashMap<&str, &FileEntry> = a.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut out = Vec::new();
    for f in &a.files {
        let Some(base) = f.path.strip_suffix(".metadata.json") else {
            continue;
        };
        let Some((db, coll)) = base.split_once('/') else {
            continue;
        };
        let bad = || {
            err(
                ErrorKind::Protocol,
                format!("unreadable name in the backup: {base}"),
            )
        };
        out.push(Entry {
            db: unescape(db).ok_or_else(bad)?,
            coll: unescape(coll).ok_or_else(bad)?,
            meta: f,
            docs: by_path.get(format!("{base}.bson").as_str()).copied(),
        });
    }
    Ok(out)
}

fn read_all(repo: &Arc<Repository>, f: &FileEntry) -> Result<Vec<u8>, EngineError> {
    let mut v = Vec::new();
    repo.file_reader(f)
        .read_to_end(&mut v)
        .map_err(|e| err(ErrorKind::Repository, format!("{}: {e}", f.path)))?;
    Ok(v)
}

/// Reads the next BSON document of a concatenated stream, `None` at its end.
fn next_doc(r: &mut impl Read) -> Result<Option<RawDocumentBuf>, EngineError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(err(ErrorKind::Repository, e.to_string())),
    }
    let n = i32::from_le_bytes(len);
    if !(5..=48 * 1024 * 1024).contains(&n) {
        return Err(err(
            ErrorKind::Protocol,
            format!("a document of {n} bytes in the backup"),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    buf[..4].copy_from_slice(&len);
    r.read_exact(&mut buf[4..])
        .map_err(|e| err(ErrorKind::Repository, e.to_string()))?;
    RawDocumentBuf::from_bytes(buf)
        .map(Some)
        .map_err(|e| err(ErrorKind::Protocol, format!("a damaged document: {e}")))
}

/// One batch of documents for one collection.
struct Batch {
    db: String,
    coll: String,
    docs: Vec<RawDocumentBuf>,
    bytes: u64,
}

/// Loads the documents of `loads` (target db, collection, file): up to
/// `threads` readers take collections (largest first) and read them from
/// the repository into batches of ≤ 1000 documents or 8 MiB; `threads`
/// inserters send the batches with `insertMany`. Several collections load at
/// once, and a single large collection loads in parallel too. Returns how
/// many documents were inserted.
fn load_parallel(
    c: &mongodb::sync::Client,
    repo: &Arc<Repository>,
    mut loads: Vec<(String, String, &stowage_core::manifest::FileEntry)>,
    threads: usize,
    live: &LiveTask,
) -> Result<u64, EngineError> {
    loads.sort_by_key(|(_, _, f)| f.size); // popped from the end: largest first
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
    .clamp(1, 16);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let docs = std::sync::atomic::AtomicU64::new(0);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(threads * 2);
    let rx = std::sync::Mutex::new(rx);
    let readers = threads.min(loads.len()).max(1);
    let queue = std::sync::Mutex::new(loads);
    let stop = || failed.load(Ordering::Relaxed) || live.is_cancelled();
    let read_one = |tx: std::sync::mpsc::SyncSender<Batch>| -> Result<(), EngineError> {
        loop {
            let Some((db, coll, f)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                return Ok(());
            };
            let mut r = repo.file_reader(f);
            let mut batch = Vec::with_capacity(1000);
            let mut bytes = 0u64;
            loop {
                if stop() {
                    return if live.is_cancelled() {
                        Err(err(ErrorKind::Cancelled, "cancelled"))
                    } else {
                        Ok(())
                    };
                }
                let d = next_doc(&mut r)?;
                let end = d.is_none();
                if let Some(d) = d {
                    bytes += d.as_bytes().len() as u64;
                    batch.push(d);
                }
                if !batch.is_empty() && (end || batch.len() >= 1000 || bytes >= 8 << 20) {
                    let b = Batch {
                        db: db.clone(),
                        coll: coll.clone(),
                        docs: std::mem::replace(&mut batch, Vec::with_capacity(1000)),
                        bytes: std::mem::take(&mut bytes),
                    };
                    if tx.send(b).is_err() {
                        return Ok(()); // every inserter ended: they say why
                    }
                }
                if end {
                    break;
                }
            }
        }
    };
    type Ends = Vec<Result<(), EngineError>>;
    let (read, inserted): (Ends, Ends) = std::thread::scope(|s| {
        let inserters: Vec<_> = (0..threads)
            .map(|_| {
                let (rx, failed, docs) = (&rx, &failed, &docs);
                s.spawn(move || -> Result<(), EngineError> {
                    // An inserter never leaves before the channel closes: after
                    // a failure (its own, another's, a cancel) it drains, so no
                    // reader ever blocks on a full channel.
                    let mut first_err = None;
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(b) = next else {
                            return first_err.map_or(Ok(()), Err);
                        };
                        if failed.load(Ordering::Relaxed) || live.is_cancelled() {
                            failed.store(true, Ordering::Relaxed);
                            continue;
                        }
                        let n = b.docs.len() as u64;
                        let r = c
                            .database(&b.db)
                            .collection::<RawDocumentBuf>(&b.coll)
                            .insert_many(b.docs)
                            .run()
                            .map_err(driver);
                        match r {
                            Ok(_) => {
                                docs.fetch_add(n, Ordering::Relaxed);
                                live.bytes_done.fetch_add(b.bytes, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                })
            })
            .collect();
        let reader_handles: Vec<_> = (0..readers)
            .map(|_| {
                let (tx, read_one, failed) = (tx.clone(), &read_one, &failed);
                s.spawn(move || {
                    let r = read_one(tx);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        drop(tx);
        (
            join_all(reader_handles, "a read thread"),
            join_all(inserters, "an insert thread"),
        )
    });
    for r in read.into_iter().chain(inserted) {
        r?;
    }
    if live.is_cancelled() {
        return Err(err(ErrorKind::Cancelled, "cancelled"));
    }
    Ok(docs.load(Ordering::Relaxed))
}

/// Something the target holds already that the restore would write.
enum Conflict {
    Database(String),
    /// In `admin` or `config`, whose databases are never dropped whole.
    Collection(String, String),
}

impl Conflict {
    fn refusal(&self) -> EngineError {
        err(
            ErrorKind::Unsupported,
            match self {
                Conflict::Database(db) => format!(
                    "the target already holds database {db:?}; restore under another name (rename) or let the restore drop it"
                ),
                Conflict::Collection(db, coll) => format!(
                    "the target already holds collection {db}.{coll}; let the restore drop it"
                ),
            },
        )
    }
}

/// What of `dbs` (target names) the server behind `c` holds already: whole
/// databases, and in `admin`/`config` (the server's own, never dropped
/// whole) the collections `list` would write.
fn conflicts(
    c: &mongodb::sync::Client,
    list: &[Entry],
    dbs: &[String],
    target: &dyn Fn(&str) -> String,
) -> Result<Vec<Conflict>, EngineError> {
    let existing = c.list_database_names().run().map_err(driver)?;
    let mut out = Vec::new();
    for db in dbs {
        if ["admin", "config"].contains(&db.as_str()) {
            let have = c
                .database(db)
                .list_collection_names()
                .run()
                .map_err(driver)?;
            for e in list.iter().filter(|e| &target(&e.db) == db) {
                if have.contains(&e.coll) {
                    out.push(Conflict::Collection(db.clone(), e.coll.clone()));
                }
            }
        } else if existing.contains(db) {
            out.push(Conflict::Database(db.clone()));
        }
    }
    Ok(out)
}

/// The collections of a config server's `config` database that make up the
/// cluster's identity: never restored into another cluster's config
/// servers (a set's export keeps them).
pub const CLUSTER_IDENTITY: [&str; 5] = ["version", "shards", "mongos", "lockpings", "locks"];

/// The cluster time a sharded set is consistent at (every part is restored
/// to exactly it); `None` for a replica set's.
pub fn cluster_time(meta: &serde_json::Value) -> Option<mongodb::bson::Timestamp> {
    let t = meta.get("cluster_time")?;
    Some(mongodb::bson::Timestamp {
        time: u32::try_from(t.get("t")?.as_u64()?).ok()?,
        increment: u32::try_from(t.get("i")?.as_u64()?).ok()?,
    })
}

/// What restoring archive `archive` of `m` writes: its collections, the
/// source databases and their target names.
struct Plan<'a> {
    a: &'a Archive,
    config_part: bool,
    list: Vec<Entry<'a>>,
    source_dbs: Vec<String>,
    dbs: Vec<String>,
}

fn plan<'a>(
    m: &'a stowage_core::manifest::Manifest,
    archive: usize,
    opts: &RestoreInto,
) -> Result<Plan<'a>, EngineError> {
    let a = m
        .archives
        .get(archive)
        .ok_or_else(|| err(ErrorKind::Protocol, "no such archive in the set"))?;
    // A cluster's config servers: their metadata restores, not the
    // identity of the cluster it came from (the target keeps its own shard
    // registry, version, routers and locks).
    let config_part = super::part_meta(&m.engine_meta, &a.name)
        .get("role")
        .and_then(|r| r.as_str())
        == Some("config");
    let list: Vec<Entry> = entries(a)?
        .into_iter()
        .filter(|e| {
            !(config_part && e.db == "config" && CLUSTER_IDENTITY.contains(&e.coll.as_str()))
        })
        .collect();
    // The databases of the dump, and those the set records its oplog slice
    // created (a database that appeared after the dump began).
    let source_dbs: Vec<String> = {
        let mut v: Vec<String> = list.iter().map(|e| e.db.clone()).collect();
        let noted = super::part_meta(&m.engine_meta, &a.name)
            .get("databases")
            .and_then(|d| d.as_array());
        v.extend(
            noted
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str())
                .filter(|d| !["admin", "local", "config"].contains(d))
                .map(str::to_string),
        );
        v.sort();
        v.dedup();
        v
    };
    if let Some(d) = source_dbs
        .iter()
        .find(|d| d.is_empty() || d.contains(['/', '\\', '.', ' ', '"', '$', '\0']))
    {
        return Err(err(
            ErrorKind::Protocol,
            format!("the set names an invalid database {d:?}"),
        ));
    }
    let mut dbs: Vec<String> = source_dbs.iter().map(|d| opts.target(d)).collect();
    dbs.sort();
    dbs.dedup();
    Ok(Plan {
        a,
        config_part,
        list,
        source_dbs,
        dbs,
    })
}

/// Checks, before anything is written anywhere, that archive `archive` of
/// `m` can be restored into the server at `uri`: reachable, allowed, and
/// holding nothing the restore would write (unless `drop`). A restore of
/// several parts checks every target first.
pub fn preflight(
    uri: &str,
    m: &stowage_core::manifest::Manifest,
    archive: usize,
    opts: &RestoreInto,
) -> Result<(), EngineError> {
    let p = plan(m, archive, opts)?;
    let (c, _) = super::connect_checked(uri, opts.host_check.as_ref())?;
    if !opts.drop
        && let Some(first) = conflicts(&c, &p.list, &p.dbs, &|d| opts.target(d))?.first()
    {
        return Err(first.refusal());
    }
    Ok(())
}

impl RestoreInto {
    /// The target name of source database `db`.
    fn target(&self, db: &str) -> String {
        self.rename
            .get(db)
            .cloned()
            .unwrap_or_else(|| db.to_string())
    }
}

/// Restores archive `archive` of manifest `m` into the server at `uri`.
pub fn restore_dump(
    uri: &str,
    repo: &Arc<Repository>,
    m: &stowage_core::manifest::Manifest,
    archive: usize,
    opts: &RestoreInto,
    live: &LiveTask,
) -> Result<RestoreStats, EngineError> {
    let Plan {
        a,
        config_part,
        list,
        source_dbs,
        dbs,
    } = plan(m, archive, opts)?;
    let (c, _) = super::connect_checked(uri, opts.host_check.as_ref())?;
    let target = |db: &str| opts.target(db);
    // What the target holds already: refused, or dropped with `drop`.
    for conflict in conflicts(&c, &list, &dbs, &target)? {
        if !opts.drop {
            return Err(conflict.refusal());
        }
        match conflict {
            Conflict::Database(db) => c.database(&db).drop().run().map_err(driver)?,
            Conflict::Collection(db, coll) => c
                .database(&db)
                .collection::<Document>(&coll)
                .drop()
                .run()
                .map_err(driver)?,
        }
    }
    live.bytes_total.store(
        list.iter().filter_map(|e| e.docs).map(|f| f.size).sum(),
        Ordering::Relaxed,
    );
    let mut st = RestoreStats {
        databases: dbs.len() as u64,
        ..Default::default()
    };
    // Collections first (views last: they name other collections), then
    // each collection's documents, then its indexes.
    let mut metas = Vec::new();
    for e in &list {
        let json: serde_json::Value = serde_json::from_slice(&read_all(repo, e.meta)?)
            .map_err(|x| err(ErrorKind::Protocol, format!("{}: {x}", e.meta.path)))?;
        let meta = match Bson::try_from(json) {
            Ok(Bson::Document(d)) => d,
            _ => {
                return Err(err(
                    ErrorKind::Protocol,
                    format!("{}: not a document", e.meta.path),
                ));
            }
        };
        metas.push((e, meta));
    }
    metas.sort_by_key(|(_, m)| m.get_str("type").ok() == Some("view"));
    // Secondary indexes are built after the data and the oplog replay.
    let mut pending: Vec<(String, String, Vec<Bson>)> = Vec::new();
    // Documents are loaded once every collection exists, several
    // collections at once.
    let mut loads: Vec<(String, String, &stowage_core::manifest::FileEntry)> = Vec::new();
    for (e, meta) in &metas {
        let db = c.database(&target(&e.db));
        let options = meta
            .get_document("info")
            .and_then(|i| i.get_document("options"))
            .cloned()
            .unwrap_or_default();
        let mut create = doc! {"create": &e.coll};
        for (k, v) in options {
            create.insert(k, v);
        }
        let kind = meta.get_str("type").unwrap_or("collection");
        db.run_command(create).run().map_err(|x| {
            let x = driver(x);
            if matches!(x.kind, ErrorKind::Unreachable | ErrorKind::ServerGone | ErrorKind::Authentication | ErrorKind::Permission) {
                return x;
            }
            // A feature the target lacks (views, time series, an option):
            // say which collection and why, not just the server's code.
            err(
                ErrorKind::Unsupported,
                format!(
                    "the target server refused to create {kind} {}.{} as the source defined it; it may lack a feature the source has ({}): {}",
                    e.db,
                    e.coll,
                    match kind {
                        "view" => "views, or a stage of the view's pipeline",
                        "timeseries" => "time-series collections, or one of their options",
                        _ => "one of the collection's options",
                    },
                    x.message
                ),
            )
        })?;
        if kind == "view" {
            st.views += 1;
            continue;
        }
        st.collections += 1;
        if let Some(f) = e.docs {
            loads.push((target(&e.db), e.coll.clone(), f));
        }
        let indexes: Vec<Bson> = meta
            .get_array("indexes")
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.as_document())
                    .filter(|i| i.get_str("name").ok() != Some("_id_"))
                    .map(|i| {
                        let mut i: Document = i.clone();
                        i.remove("ns");
                        Bson::Document(i)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !indexes.is_empty() {
            pending.push((target(&e.db), e.coll.clone(), indexes));
        }
    }

    st.documents = load_parallel(&c, repo, loads, opts.threads, live)?;

    // The oplog slice, from the dump's start to the set's consistent point:
    // for a cluster, to its cluster time exactly (leaving out transactions
    // that time would split: the slice holds them past it).
    let until = cluster_time(&m.engine_meta);
    let skip: Vec<&str> = super::part_meta(&m.engine_meta, &a.name)
        .get("txns_after_cluster_time")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    if let Some(f) = a.files.iter().find(|f| f.path == "oplog.bson") {
        let restored = &source_dbs;
        let mut rp = super::oplog::Replayer::new(&c, &opts.rename, restored);
        rp.until = until;
        if config_part {
            rp.skip_collections = CLUSTER_IDENTITY
                .iter()
                .map(|c| format!("config.{c}"))
                .collect();
        }
        let mut r = repo.file_reader(f);
        while let Some(raw) = next_doc(&mut r)? {
            let e: Document =
                raw.as_ref()
                    .try_into()
                    .map_err(|x: mongodb::bson::error::Error| {
                        err(ErrorKind::Protocol, format!("an oplog entry: {x}"))
                    })?;
            if let Some(t) = until
                && !super::oplog::prepared_protocol(&e)
            {
                let after = e.get_timestamp("ts").is_ok_and(|ts| super::ts_gt(ts, t));
                let split = !skip.is_empty()
                    && super::entry_txn(&e).is_some_and(|k| skip.contains(&k.as_str()));
                if after || split {
                    continue;
                }
            }
            rp.apply(&e)?;
            if live.is_cancelled() {
                return Err(err(ErrorKind::Cancelled, "cancelled"));
            }
        }
        rp.flush()?;
        st.oplog_applied = rp.applied;
        // The dump's indexes follow what the replay did to their collections.
        let mut kept = Vec::new();
        for (db, coll, indexes) in pending {
            let mut ns = format!("{db}.{coll}");
            if rp.dropped.contains(&ns) || rp.dropped_databases.contains(&db) {
                continue;
            }
            while let Some(to) = rp.renamed.get(&ns) {
                ns = to.clone();
            }
            let dropped = rp.dropped_indexes.get(&ns).cloned().unwrap_or_default();
            let indexes: Vec<Bson> = indexes
                .into_iter()
                .filter(|i| {
                    let name = i.as_document().and_then(|d| d.get_str("name").ok());
                    !name.is_some_and(|n| dropped.iter().any(|x| x == n))
                })
                .collect();
            let (db, coll) = ns
                .split_once('.')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .unwrap_or((db, coll));
            kept.push((db, coll, indexes));
        }
        pending = kept;
    }
    for (db, coll, indexes) in pending {
        if indexes.is_empty() {
            continue;
        }
        st.indexes += indexes.len() as u64;
        c.database(&db)
            .run_command(doc! {"createIndexes": &coll, "indexes": indexes})
            .run()
            .map_err(driver)?;
    }
    Ok(st)
}
