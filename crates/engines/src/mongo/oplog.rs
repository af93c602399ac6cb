//! Replaying an oplog slice through ordinary commands (no `applyOps`: not
//! every server has it), idempotently, so a fuzzy dump plus the entries
//! from its start converge on the state at the slice's end:
//! * `i`: the document replaces any with its `_id` (upsert);
//! * `u`: a full replacement, or a `$v: 2` diff turned into `$set` /
//!   `$unset` / array truncation; both diff shapes are accepted: mongod's
//!   (`u`, `i`, `d`, `s<field>`, arrays with `a: true`, `u<index>`, `l`) and
//!   the change-stream shape SecantusDB writes (`updatedFields`,
//!   `removedFields`, `truncatedArrays` with dotted paths);
//! * `d`: delete by `_id`;
//! * `c`: `create`, `drop`, `createIndexes` (one index, mongod, or a list),
//!   `dropIndexes`, `renameCollection`, `applyOps` (mongod's transactions:
//!   its operations in order); anything else is refused by name.
//!
//! Databases may be renamed on the way (`rename`).
//!
//! Consecutive writes to one collection go in one `update` (inserts as
//! upserting replacements, updates) or `delete` command of up to
//! [`BATCH_OPS`] statements, ordered: the same operations in the same order
//! as one by one, in far fewer round trips. Commands (`c`) end a batch.

use super::{driver, err};
use crate::{EngineError, ErrorKind};
use mongodb::bson::{Bson, Document, doc};
use mongodb::sync::Client;
use std::collections::BTreeMap;

/// An update document (`$set`, `$unset`, `$push` with `$slice`) for a
/// `$v: 2` diff in either shape. `None` when the diff changes nothing.
pub fn diff_to_update(diff: &Document) -> Result<Option<Document>, String> {
    let mut set = Document::new();
    let mut unset = Document::new();
    let mut slice = Document::new();
    if diff.contains_key("updatedFields")
        || diff.contains_key("removedFields")
        || diff.contains_key("truncatedArrays")
    {
        if let Ok(u) = diff.get_document("updatedFields") {
            for (k, v) in u {
                set.insert(k.clone(), v.clone());
            }
        }
        if let Ok(r) = diff.get_array("removedFields") {
            for f in r {
                let f = f.as_str().ok_or("removedFields: not a string")?;
                unset.insert(f, "");
            }
        }
        if let Ok(t) = diff.get_array("truncatedArrays") {
            for a in t {
                let a = a.as_document().ok_or("truncatedArrays: not a document")?;
                let field = a
                    .get_str("field")
                    .map_err(|_| "truncatedArrays: no field")?;
                let size = number(a.get("newSize")).ok_or("truncatedArrays: no newSize")?;
                slice.insert(field, doc! {"$each": [], "$slice": size});
            }
        }
    } else {
        walk(diff, "", &mut set, &mut unset, &mut slice)?;
    }
    let mut u = Document::new();
    if !set.is_empty() {
        u.insert("$set", set);
    }
    if !unset.is_empty() {
        u.insert("$unset", unset);
    }
    if !slice.is_empty() {
        u.insert("$push", slice);
    }
    Ok((!u.is_empty()).then_some(u))
}

fn number(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(n) => Some(*n as i64),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) => Some(*n as i64),
        _ => None,
    }
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

/// mongod's diff format, recursively, as dotted paths.
fn walk(
    d: &Document,
    prefix: &str,
    set: &mut Document,
    unset: &mut Document,
    slice: &mut Document,
) -> Result<(), String> {
    let is_array = matches!(d.get("a"), Some(Bson::Boolean(true)));
    for (k, v) in d {
        match k.as_str() {
            "a" if is_array => {}
            "u" | "i" if !is_array => {
                let fields = v.as_document().ok_or("diff: u/i is not a document")?;
                for (f, val) in fields {
                    set.insert(join(prefix, f), val.clone());
                }
            }
            "d" if !is_array => {
                let fields = v.as_document().ok_or("diff: d is not a document")?;
                for (f, _) in fields {
                    unset.insert(join(prefix, f), "");
                }
            }
            "l" if is_array => {
                let n = number(Some(v)).ok_or("diff: l is not a number")?;
                slice.insert(prefix.to_string(), doc! {"$each": [], "$slice": n});
            }
            _ if is_array && k.starts_with('u') => {
                set.insert(join(prefix, &k[1..]), v.clone());
            }
            _ if k.starts_with('s') && k.len() > 1 => {
                let sub = v.as_document().ok_or("diff: s<field> is not a document")?;
                walk(sub, &join(prefix, &k[1..]), set, unset, slice)?;
            }
            other => return Err(format!("diff: unknown field {other:?}")),
        }
    }
    Ok(())
}

/// Applies oplog entries to a server.
pub struct Replayer<'a> {
    pub client: &'a Client,
    /// Source database → target database.
    pub rename: &'a BTreeMap<String, String>,
    /// Databases whose entries are replayed (the ones restored).
    pub databases: &'a [String],
    /// Index names dropped by the replay, per target `db.collection`.
    pub dropped_indexes: BTreeMap<String, Vec<String>>,
    /// Target `db.collection` renamed to another, and dropped ones.
    pub renamed: BTreeMap<String, String>,
    pub dropped: Vec<String>,
    /// Target databases dropped by the replay.
    pub dropped_databases: Vec<String>,
    pub applied: u64,
    /// Writes not sent yet: consecutive ones to one collection.
    batch: Option<Batch>,
    /// Source `db.collection`s whose entries are not replayed.
    pub skip_collections: Vec<String>,
    /// Restoring to a cluster time: a prepared transaction is applied only
    /// if it committed at or before it (its `commitTimestamp`).
    pub until: Option<mongodb::bson::Timestamp>,
    /// Prepared transactions (mongod's cross-shard transactions: an
    /// `applyOps` with `prepare: true`, then `commitTransaction` or
    /// `abortTransaction`), their writes held until they end.
    prepared: std::collections::HashMap<String, Vec<Document>>,
}

/// Whether an oplog entry is part of a prepared transaction's protocol: its
/// `prepare` entry, or its commit or abort. Replayed by their outcome, never
/// cut by position.
pub fn prepared_protocol(e: &Document) -> bool {
    let Ok(o) = e.get_document("o") else {
        return false;
    };
    o.get_bool("prepare").unwrap_or(false)
        || o.contains_key("commitTransaction")
        || o.contains_key("abortTransaction")
}

/// Statements of one `update` or `delete` command, not sent yet.
struct Batch {
    db: String,
    coll: String,
    /// `update` or `delete`.
    cmd: &'static str,
    stmts: Vec<Document>,
    bytes: usize,
}

/// At most this many statements, or [`BATCH_BYTES`], per command.
pub const BATCH_OPS: usize = 1000;
const BATCH_BYTES: usize = 4 << 20;

impl<'a> Replayer<'a> {
    pub fn new(
        client: &'a Client,
        rename: &'a BTreeMap<String, String>,
        databases: &'a [String],
    ) -> Replayer<'a> {
        Replayer {
            client,
            rename,
            databases,
            dropped_indexes: Default::default(),
            renamed: Default::default(),
            dropped: Vec::new(),
            dropped_databases: Vec::new(),
            applied: 0,
            batch: None,
            until: None,
            prepared: Default::default(),
            skip_collections: Vec::new(),
        }
    }

    /// Queues one statement for `db.coll`; sends what was queued first if
    /// it was for another collection or command, or is full.
    fn queue(
        &mut self,
        db: String,
        coll: String,
        cmd: &'static str,
        stmt: Document,
    ) -> Result<(), EngineError> {
        let size = stmt.to_vec().map(|v| v.len()).unwrap_or(BATCH_BYTES);
        let same = self
            .batch
            .as_ref()
            .is_some_and(|b| b.db == db && b.coll == coll && b.cmd == cmd);
        if !same
            || self
                .batch
                .as_ref()
                .is_some_and(|b| b.stmts.len() >= BATCH_OPS || b.bytes + size > BATCH_BYTES)
        {
            self.flush()?;
        }
        let b = self.batch.get_or_insert_with(|| Batch {
            db,
            coll,
            cmd,
            stmts: Vec::new(),
            bytes: 0,
        });
        b.stmts.push(stmt);
        b.bytes += size;
        self.applied += 1;
        Ok(())
    }

    /// Sends the queued writes (call once after the last entry too).
    pub fn flush(&mut self) -> Result<(), EngineError> {
        let Some(b) = self.batch.take() else {
            return Ok(());
        };
        let field = if b.cmd == "update" {
            "updates"
        } else {
            "deletes"
        };
        let n = b.stmts.len();
        let reply = self
            .client
            .database(&b.db)
            .run_command(doc! {b.cmd: &b.coll, field: b.stmts, "ordered": true})
            .run()
            .map_err(driver)?;
        // A command that ran can still have failed statements.
        if let Ok(errs) = reply.get_array("writeErrors")
            && let Some(first) = errs.first().and_then(|e| e.as_document())
        {
            return Err(err(
                ErrorKind::Protocol,
                format!(
                    "replaying the oplog into {}.{}: statement {} of {n} failed: {} ({})",
                    b.db,
                    b.coll,
                    first.get_i32("index").unwrap_or(-1),
                    first.get_str("errmsg").unwrap_or("?"),
                    first.get_i32("code").unwrap_or(0)
                ),
            ));
        }
        Ok(())
    }

    fn target_db(&self, db: &str) -> String {
        self.rename
            .get(db)
            .cloned()
            .unwrap_or_else(|| db.to_string())
    }

    /// `db.coll` in the source → (target db, coll), if restored.
    fn ns(&self, ns: &str) -> Option<(String, String)> {
        let (db, coll) = ns.split_once('.')?;
        if !self.databases.iter().any(|d| d == db) {
            return None;
        }
        if super::internal_collection(db, coll) || self.skip_collections.iter().any(|s| s == ns) {
            return None;
        }
        Some((self.target_db(db), coll.to_string()))
    }

    pub fn apply(&mut self, e: &Document) -> Result<(), EngineError> {
        let op = e.get_str("op").unwrap_or("");
        let ns = e.get_str("ns").unwrap_or("");
        let bad = |m: &str| err(ErrorKind::Protocol, format!("oplog entry on {ns:?}: {m}"));
        match op {
            "n" => Ok(()),
            "i" | "u" | "d" => {
                let Some((db, coll)) = self.ns(ns) else {
                    return Ok(());
                };
                let o = e.get_document("o").map_err(|_| bad("no o"))?;
                match op {
                    "i" => {
                        let id = o.get("_id").ok_or_else(|| bad("insert without _id"))?;
                        let stmt = doc! {"q": {"_id": id.clone()}, "u": o.clone(), "upsert": true};
                        self.queue(db, coll, "update", stmt)
                    }
                    "u" => {
                        let id = e
                            .get_document("o2")
                            .ok()
                            .and_then(|d| d.get("_id"))
                            .ok_or_else(|| bad("update without o2._id"))?;
                        let q = doc! {"_id": id.clone()};
                        let u = if let Ok(diff) = o.get_document("diff") {
                            diff_to_update(diff).map_err(|m| bad(&m))?
                        } else if o.keys().any(|k| k.starts_with('$')) {
                            // Old-style update operators ($set/$unset).
                            let mut u = o.clone();
                            u.remove("$v");
                            (!u.is_empty()).then_some(u)
                        } else {
                            // A full replacement.
                            Some(o.clone())
                        };
                        match u {
                            Some(u) => self.queue(db, coll, "update", doc! {"q": q, "u": u}),
                            None => Ok(()),
                        }
                    }
                    _ => {
                        let id = o.get("_id").ok_or_else(|| bad("delete without _id"))?;
                        let stmt = doc! {"q": {"_id": id.clone()}, "limit": 1};
                        self.queue(db, coll, "delete", stmt)
                    }
                }
            }
            "c" => self.command(e, ns),
            other => Err(bad(&format!("unknown op {other:?}"))),
        }
    }

    fn command(&mut self, e: &Document, ns: &str) -> Result<(), EngineError> {
        let bad = |m: &str| err(ErrorKind::Protocol, format!("oplog command on {ns:?}: {m}"));
        let o = e.get_document("o").map_err(|_| bad("no o"))?;
        let Some((name, _)) = o.iter().next() else {
            return Err(bad("empty command"));
        };
        // The writes before a command land before it (a drop, a rename).
        if name != "applyOps" {
            self.flush()?;
        }
        let db_src = ns.split('.').next().unwrap_or("");
        let txn = super::entry_txn(e);
        if name == "applyOps" {
            let ops = o
                .get_array("applyOps")
                .map_err(|_| bad("applyOps: no list"))?;
            if o.get_bool("prepare").unwrap_or(false) {
                let key =
                    txn.ok_or_else(|| bad("a prepared transaction without lsid/txnNumber"))?;
                let held: Vec<Document> = ops
                    .iter()
                    .filter_map(|b| b.as_document().cloned())
                    .collect();
                self.prepared.entry(key).or_default().extend(held);
                return Ok(());
            }
            for op in ops {
                let op = op
                    .as_document()
                    .ok_or_else(|| bad("applyOps: not a document"))?;
                self.apply(op)?;
            }
            return Ok(());
        }
        if name == "commitTransaction" || name == "abortTransaction" {
            // A prepared transaction ends (logged under `admin.$cmd`): its
            // writes apply if it committed, at or before the cluster time
            // when restoring to one. An unprepared one was applied as it came.
            let held = txn
                .and_then(|k| self.prepared.remove(&k))
                .unwrap_or_default();
            let at = o.get_timestamp("commitTimestamp").ok();
            let visible = match (self.until, at) {
                (Some(t), Some(c)) => !super::ts_gt(c, t),
                _ => true,
            };
            if name == "commitTransaction" && visible {
                for op in &held {
                    self.apply(op)?;
                }
            }
            return Ok(());
        }
        if name != "renameCollection" && !self.databases.iter().any(|d| d == db_src) {
            return Ok(());
        }
        let db = self.target_db(db_src);
        let ignore = |e: mongodb::error::Error, codes: &[i32]| match *e.kind {
            mongodb::error::ErrorKind::Command(ref c) if codes.contains(&c.code) => Ok(()),
            _ => Err(driver(e)),
        };
        match name.as_str() {
            "create" => {
                let r = self.client.database(&db).run_command(o.clone()).run();
                // 48: NamespaceExists (the dump has it already).
                r.map(|_| ()).or_else(|e| ignore(e, &[48]))?;
            }
            "drop" => {
                let coll = o.get_str("drop").map_err(|_| bad("drop: no name"))?;
                self.dropped.push(format!("{db}.{coll}"));
                let r = self
                    .client
                    .database(&db)
                    .run_command(doc! {"drop": coll})
                    .run();
                r.map(|_| ()).or_else(|e| ignore(e, &[26]))?;
            }
            "createIndexes" => {
                let coll = o.get_str("createIndexes").map_err(|_| bad("no name"))?;
                let indexes: Vec<Bson> = match o.get_array("indexes") {
                    Ok(list) => list.clone(),
                    Err(_) => {
                        // mongod: the one index's spec beside the name.
                        let mut spec = o.clone();
                        spec.remove("createIndexes");
                        vec![Bson::Document(spec)]
                    }
                };
                self.client
                    .database(&db)
                    .run_command(doc! {"createIndexes": coll, "indexes": indexes})
                    .run()
                    .map_err(driver)?;
            }
            "dropIndexes" | "deleteIndexes" => {
                let coll = o.get_str(name).map_err(|_| bad("no name"))?;
                if let Ok(index) = o.get_str("index") {
                    self.dropped_indexes
                        .entry(format!("{db}.{coll}"))
                        .or_default()
                        .push(index.to_string());
                }
                let mut cmd = o.clone();
                cmd.remove(name);
                let mut full = doc! {"dropIndexes": coll};
                for (k, v) in cmd {
                    full.insert(k, v);
                }
                let r = self.client.database(&db).run_command(full).run();
                // 26 NamespaceNotFound, 27 IndexNotFound.
                r.map(|_| ()).or_else(|e| ignore(e, &[26, 27]))?;
            }
            "renameCollection" => {
                let from = o
                    .get_str("renameCollection")
                    .map_err(|_| bad("no source"))?;
                let to = o.get_str("to").map_err(|_| bad("no target"))?;
                let (Some((fdb, fc)), Some((tdb, tc))) = (self.ns(from), self.ns(to)) else {
                    return Ok(());
                };
                self.renamed
                    .insert(format!("{fdb}.{fc}"), format!("{tdb}.{tc}"));
                let r = self
                    .client
                    .database("admin")
                    .run_command(doc! {
                        "renameCollection": format!("{fdb}.{fc}"),
                        "to": format!("{tdb}.{tc}"),
                        "dropTarget": o.get_bool("dropTarget").unwrap_or(false),
                    })
                    .run();
                r.map(|_| ()).or_else(|e| ignore(e, &[26]))?;
            }
            "collMod" => {
                // Options (validator, TTL of an index …) as the source set
                // them, on the target's name for the collection.
                let r = self.client.database(&db).run_command(o.clone()).run();
                // 26: NamespaceNotFound (dropped again later in the slice).
                r.map(|_| ()).or_else(|e| ignore(e, &[26]))?;
            }
            "dropDatabase" => {
                self.dropped_databases.push(db.clone());
                self.client.database(&db).drop().run().map_err(driver)?;
            }
            "startIndexBuild" | "commitIndexBuild" | "abortIndexBuild" => {
                // Index builds are replayed by their commit (createIndexes
                // carries the spec on the servers we read).
            }
            other => return Err(bad(&format!("command {other:?} is not replayed"))),
        }
        self.applied += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_diff_shapes_become_updates() {
        // mongod: nested fields, an array element and a truncation.
        let d = doc! {
            "u": {"a": 1},
            "i": {"b": "new"},
            "d": {"c": false},
            "sx": {"u": {"y": 2}, "sz": {"d": {"w": false}}},
            "sarr": {"a": true, "u1": "one", "l": 3},
        };
        let u = diff_to_update(&d).unwrap().unwrap();
        assert_eq!(
            u,
            doc! {
                "$set": {"a": 1, "b": "new", "x.y": 2, "arr.1": "one"},
                "$unset": {"c": "", "x.z.w": ""},
                "$push": {"arr": {"$each": [], "$slice": 3_i64}},
            }
        );
        // SecantusDB: change-stream shape with dotted paths.
        let d = doc! {
            "updatedFields": {"a": 6, "b.x": 2},
            "removedFields": ["c"],
            "truncatedArrays": [{"field": "arr", "newSize": 2}],
        };
        let u = diff_to_update(&d).unwrap().unwrap();
        assert_eq!(
            u,
            doc! {
                "$set": {"a": 6, "b.x": 2},
                "$unset": {"c": ""},
                "$push": {"arr": {"$each": [], "$slice": 2_i64}},
            }
        );
        assert!(diff_to_update(&doc! {}).unwrap().is_none());
        assert!(diff_to_update(&doc! {"q": 1}).is_err());
    }
}
