//! Sharded clusters against real servers: several SecantusDB replica sets
//! play the shards and the config servers (there is no mongos in the
//! reachable registries; the shard list is given). Each shard is written
//! during the backup by a writer whose writes carry a sequence number; every
//! restored shard must be its source at the set's one cluster time `T`,
//! checked against the shard's own oplog.
#![cfg(feature = "mongo")]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use stowage_core::{LiveTask, TaskState};
use stowage_engines::ErrorKind;
use stowage_engines::mongo::{self, sharded};
use stowage_repo::{ChunkerParams, KdfParams, LocalStorage, Repository, Storage};
use stowage_testkit::{MongoOptions, MongoServer, mongo_venv};

fn repo(dir: &std::path::Path) -> Arc<Repository> {
    let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir).unwrap());
    Arc::new(
        Repository::init(
            s,
            "pw",
            ChunkerParams::default(),
            KdfParams::insecure_fast(),
        )
        .unwrap(),
    )
}

/// Three shards and a config server (the Rust SecantusDB: fast enough to
/// write while a throttled backup runs). Shard k holds `k + 1` × 1,500
/// documents of ~1 KB, so their dumps end at different times.
fn cluster() -> (Vec<MongoServer>, MongoServer) {
    let shards: Vec<MongoServer> = (0..3)
        .map(|k| {
            let s = MongoServer::start(MongoOptions::rust());
            s.pymongo(&format!(
                "client.shop.items.insert_many([{{'k': {k}, 'i': i, 'pad': 'x' * 1000}} for i in range({})])",
                (k + 1) * 1500
            ));
            s
        })
        .collect();
    let config = MongoServer::start(MongoOptions::rust());
    let mut code = String::from("client.config.shards.insert_many([");
    for (k, s) in shards.iter().enumerate() {
        code.push_str(&format!(
            "{{'_id': 'c_{k}', 'host': 'secantus/127.0.0.1:{}'}},",
            s.port
        ));
    }
    code.push_str("])\nclient.config.databases.insert_one({'_id': 'shop', 'primary': 'c_0'})");
    config.pymongo(&code);
    (shards, config)
}

fn parts(shards: &[MongoServer], config: &MongoServer) -> Vec<sharded::PartSpec> {
    let mut v: Vec<sharded::PartSpec> = shards
        .iter()
        .enumerate()
        .map(|(k, s)| sharded::PartSpec {
            id: format!("c_{k}"),
            role: sharded::Role::Shard,
            uri: s.uri().into(),
        })
        .collect();
    v.push(sharded::PartSpec {
        id: "c_config".into(),
        role: sharded::Role::Config,
        uri: config.uri().into(),
    });
    v
}

fn opts(max_rate_kbps: Option<u32>) -> mongo::DumpOptions<'static> {
    mongo::DumpOptions {
        archive: None,
        threads: 2,
        max_rate_kbps,
        base: None,
        host_check: None,
        snapshot_at_for_tests: None,
    }
}

/// A writer on shard `k`: insert `{_id: n, k, seq: n}` and set the counter
/// document to `n`, for n = 0, 1, 2 … until killed. Prints nothing.
fn writer(s: &MongoServer, k: usize) -> std::process::Child {
    Command::new(mongo_venv().join("bin/python"))
        .arg("-c")
        .arg(format!(
            "import pymongo, itertools\n\
             c = pymongo.MongoClient({:?})\n\
             for n in itertools.count():\n    \
                 c.shop.seq.insert_one({{'_id': n, 'k': {k}, 'seq': n}})\n    \
                 c.shop.counter.update_one({{'_id': 'last'}}, {{'$set': {{'seq': n}}}}, upsert=True)\n",
            s.uri()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A fresh server and the restore of archive `i` of the set into it.
fn restore_part(
    r: &Arc<Repository>,
    man: &stowage_core::manifest::Manifest,
    i: usize,
) -> (MongoServer, mongo::restore::RestoreStats) {
    let dst = MongoServer::start(MongoOptions::rust());
    let st = mongo::restore::restore_dump(
        &dst.uri(),
        r,
        man,
        i,
        &mongo::restore::RestoreInto::default(),
        &LiveTask::default(),
    )
    .unwrap();
    (dst, st)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed().as_secs() < 60, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn key(t: bson::Timestamp) -> (u32, u32) {
    (t.time, t.increment)
}

#[test]
fn every_shard_is_restored_to_one_cluster_time() {
    let (shards, config) = cluster();
    let mut writers: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(k, s)| writer(s, k))
        .collect();
    for s in &shards {
        wait_until("a writer does not run", || {
            s.pymongo("print(client.shop.seq.count_documents({}))")
                .parse::<u64>()
                .unwrap_or(0)
                > 20
        });
    }
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let mut bw = r.start_backup(2).unwrap();
    let live = LiveTask::default();
    // Throttled, so the writers run through the whole backup.
    let out = sharded::backup_sharded(
        &parts(&shards, &config),
        None,
        &opts(Some(2000)),
        &mut bw,
        &live,
    )
    .unwrap();
    let meta = sharded::meta_of(&out);
    let (_, man) = bw.finish(BTreeMap::new(), meta.clone()).unwrap();
    for w in &mut writers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let t = out.cluster_time;

    // One part per shard and one for the config servers, each finished,
    // each with its own progress; one archive each, named by the part.
    let lp = live.parts();
    let names: Vec<&str> = lp.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["c_0", "c_1", "c_2", "c_config"]);
    for (n, p) in &lp {
        assert_eq!(p.state(), TaskState::Finished, "{n}");
        assert!(p.progress().bytes_done > 0, "{n}");
    }
    let archives: Vec<&str> = man.archives.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(archives, ["c_0", "c_1", "c_2", "c_config"]);
    assert_eq!(meta["cluster_time"]["t"], t.time);
    assert_eq!(meta["parts"][3]["role"], "config");
    // Every part's slice is whole up to T: it goes on to the oplog's
    // newest entry when the part captured it (the restore cuts at T), or,
    // where the part's clock passed T before an entry at or after T was
    // readable, it ends at its last entry before T, and the source's oplog
    // must then hold nothing between that entry and T.
    for (i, (p, b, _)) in out.parts.iter().enumerate() {
        if key(b.end) >= key(t) {
            continue;
        }
        let src = shards.get(i).unwrap_or(&config);
        let missed = src.pymongo(&format!(
            "import bson\n\
             print(client.local.oplog.rs.count_documents({{'ts': {{'$gt': bson.Timestamp({}, {}), '$lte': bson.Timestamp({}, {})}}}}))",
            b.end.time, b.end.increment, t.time, t.increment
        ));
        assert_eq!(
            missed, "0",
            "{}: the slice ends at {:?}, before T {:?}, and leaves out entries up to T",
            p.id, b.end, t
        );
    }
    // The config part holds the cluster's metadata.
    assert!(
        man.archives[3]
            .files
            .iter()
            .any(|f| f.path == "config/shards.bson"),
        "config.shards not backed up"
    );

    for (k, s) in shards.iter().enumerate() {
        // The source shard's own oplog says what it held at T: the writer's
        // inserts up to T are seq 0..=last, the counter's value at T is the
        // last update at or before T.
        let src = s.pymongo(&format!(
            "import bson\n\
             T = bson.Timestamp({}, {})\n\
             ins = [e['o']['seq'] for e in client.local.oplog.rs.find({{'ns': 'shop.seq', 'op': 'i', 'ts': {{'$lte': T}}}})]\n\
             ups = list(client.local.oplog.rs.find({{'ns': 'shop.counter', 'ts': {{'$lte': T}}}}).sort('ts', -1).limit(1))\n\
             later = client.local.oplog.rs.count_documents({{'ns': 'shop.seq', 'ts': {{'$gt': T}}}})\n\
             u = ups[0]['o'] if ups else {{}}\n\
             diff = u.get('diff', {{}})\n\
             last = u.get('seq', diff.get('updatedFields', diff.get('u', {{}})).get('seq', -1))\n\
             print(len(ins), max(ins), last, later)",
            t.time, t.increment
        ));
        let v: Vec<i64> = src.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let (n_at_t, max_at_t, counter_at_t, later) = (v[0], v[1], v[2], v[3]);
        assert_eq!(
            n_at_t,
            max_at_t + 1,
            "shard {k}: the writer's inserts are sequential"
        );
        assert!(later > 0, "shard {k}: the writer kept writing after T");

        // That part alone, into a fresh server (what a per-shard download
        // needs): exactly the writes at or before T, none after.
        let (dst, st) = restore_part(&r, &man, k);
        assert!(st.documents > 0);
        let got = dst.pymongo(
            "seqs = sorted(d['seq'] for d in client.shop.seq.find())\n\
             c = client.shop.counter.find_one({'_id': 'last'})\n\
             print(len(seqs), seqs[-1], c['seq'] if c else -1, len(set(seqs)), client.shop.items.count_documents({}))",
        );
        let g: Vec<i64> = got.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(
            (g[0], g[1], g[2], g[3]),
            (n_at_t, max_at_t, counter_at_t, n_at_t),
            "shard {k}: restored (count, max seq, counter, distinct) vs the source at T"
        );
        assert_eq!(g[4], (k as i64 + 1) * 1500, "shard {k}: items");
    }

    // The config part into a fresh server: the cluster's metadata, not its
    // identity (the shard registry stays the target's).
    let (dst, _) = restore_part(&r, &man, 3);
    assert_eq!(
        dst.pymongo(
            "print([d['_id'] for d in client.config.databases.find()], client.config.shards.count_documents({}))"
        ),
        "['shop'] 0"
    );
    assert!(r.verify(0, &|_, _| {}).unwrap().ok());
}

#[test]
fn an_unreachable_shard_fails_the_backup_before_anything_is_stored() {
    let (shards, config) = cluster();
    let mut ps = parts(&shards, &config);
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    ps[1].uri =
        format!("mongodb://127.0.0.1:{port}/?replicaSet=secantus&serverSelectionTimeoutMS=1500")
            .into();
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let mut bw = r.start_backup(2).unwrap();
    let live = LiveTask::default();
    let e = sharded::backup_sharded(&ps, None, &opts(None), &mut bw, &live).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e:?}");
    assert!(e.message.starts_with("shard c_1"), "{}", e.message);
    assert!(
        live.parts()
            .iter()
            .all(|(_, p)| p.state() == TaskState::Checking),
        "no part went further than checking"
    );
    assert_eq!(
        bw.stats()
            .bytes_in
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing was read or stored"
    );
}

#[test]
fn a_shard_gone_mid_backup_fails_the_whole_backup() {
    let (mut shards, config) = cluster();
    let ps = parts(&shards, &config);
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let live = Arc::new(LiveTask::default());
    let l2 = live.clone();
    let run = std::thread::spawn(move || {
        let mut bw = r.start_backup(2).unwrap();
        // 1 MB/s: shard 2's 4.5 MB take several seconds.
        let res = sharded::backup_sharded(&ps, None, &opts(Some(1000)), &mut bw, &l2);
        (res, r)
    });
    wait_until("the backup does not start", || {
        live.parts()
            .get(2)
            .is_some_and(|(_, p)| p.progress().bytes_done > 0)
    });
    shards[2].kill9();
    let (res, r) = run.join().unwrap();
    let e = res.unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::ServerGone | ErrorKind::Unreachable),
        "{e:?}"
    );
    assert!(e.message.starts_with("shard c_2"), "{}", e.message);
    // No part is finished: the others stopped when it failed.
    for (n, p) in live.parts() {
        assert_ne!(p.state(), TaskState::Finished, "{n}");
    }
    assert!(r.verify(0, &|_, _| {}).unwrap().ok());
}

#[test]
fn one_shards_oplog_overrun_fails_the_backup() {
    let (shards, _config) = cluster();
    // Shard 1 keeps only 300 oplog entries and is written busily while
    // the throttled dump runs: its window is overrun.
    let small = MongoServer::start(MongoOptions {
        oplog_max_entries: Some(300),
        ..MongoOptions::rust()
    });
    small.pymongo("client.shop.items.insert_many([{'pad': 'x' * 1000} for i in range(3000)])");
    let mut w = writer(&small, 1);
    let ps = vec![
        sharded::PartSpec {
            id: "c_0".into(),
            role: sharded::Role::Shard,
            uri: shards[0].uri().into(),
        },
        sharded::PartSpec {
            id: "c_1".into(),
            role: sharded::Role::Shard,
            uri: small.uri().into(),
        },
    ];
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let mut bw = r.start_backup(2).unwrap();
    let live = LiveTask::default();
    let e = sharded::backup_sharded(&ps, None, &opts(Some(1000)), &mut bw, &live).unwrap_err();
    let _ = w.kill();
    let _ = w.wait();
    assert_eq!(e.kind, ErrorKind::Capacity, "{e:?}");
    assert!(e.message.starts_with("shard c_1"), "{}", e.message);
    assert!(e.message.contains("oplog window overrun"), "{}", e.message);
}

#[test]
fn a_second_backup_builds_on_every_parts_dump() {
    let (shards, config) = cluster();
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let ps = parts(&shards, &config);
    let mut bw = r.start_backup(2).unwrap();
    let first =
        sharded::backup_sharded(&ps, None, &opts(None), &mut bw, &LiveTask::default()).unwrap();
    let (_, m1) = bw
        .finish(BTreeMap::new(), sharded::meta_of(&first))
        .unwrap();
    shards[1].pymongo("client.shop.later.insert_many([{'_id': i} for i in range(50)])");
    let base = stowage_engines::BaseSet {
        id: 1,
        manifest: Arc::new(m1),
    };
    let o = mongo::DumpOptions {
        base: Some(&base),
        ..opts(None)
    };
    let mut bw = r.start_backup(2).unwrap();
    let second = sharded::backup_sharded(&ps, None, &o, &mut bw, &LiveTask::default()).unwrap();
    let stored = bw
        .stats()
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed);
    let (_, m2) = bw
        .finish(BTreeMap::new(), sharded::meta_of(&second))
        .unwrap();
    // Every part took its dump from the first set and stored only the
    // oplog since.
    for (p, b, _) in &second.parts {
        assert_eq!(b.dump.reused_from, Some(1), "{}: {:?}", p.id, b.dump);
    }
    assert!(stored < 200_000, "read {stored} bytes again");
    assert!(key(second.cluster_time) > key(first.cluster_time));
    // Shard 1 of the second set restores whole, with the later writes.
    let (dst, _) = restore_part(&r, &m2, 1);
    assert_eq!(
        dst.pymongo(
            "print(client.shop.items.count_documents({}), client.shop.later.count_documents({}))"
        ),
        "3000 50"
    );
}

/// Transactions on one shard while the cluster is backed up: whatever the
/// cluster time cuts, a restored shard holds every transaction that
/// committed at or before it (all of its writes) and none that committed
/// after (none of its writes), judged from the shard's own oplog (a
/// transaction commits at its last entry).
#[test]
fn transactions_cut_by_the_cluster_time_are_whole_or_absent() {
    let (shards, config) = cluster();
    let txw = Command::new(mongo_venv().join("bin/python"))
        .arg("-c")
        .arg(format!(
            "import pymongo, itertools, signal\n\
             signal.signal(signal.SIGINT, signal.default_int_handler)\n\
             c = pymongo.MongoClient({:?})\n\
             c.shop.create_collection('tx')\n\
             for n in itertools.count():\n    \
                 with c.start_session() as s:\n        \
                     with s.start_transaction():\n            \
                         c.shop.tx.insert_one({{'_id': f'{{n}}a', 'n': n}}, session=s)\n            \
                         c.shop.tx.insert_one({{'_id': f'{{n}}b', 'n': n}}, session=s)\n            \
                         c.shop.tx.insert_one({{'_id': f'{{n}}c', 'n': n}}, session=s)\n",
            shards[1].uri()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Plain writes in between, from another session.
    let mut plain = writer(&shards[1], 1);
    wait_until("the transaction writer does not run", || {
        shards[1]
            .pymongo("print(client.shop.tx.count_documents({}))")
            .parse::<u64>()
            .unwrap_or(0)
            > 30
    });
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let mut bw = r.start_backup(2).unwrap();
    let out = sharded::backup_sharded(
        &parts(&shards, &config),
        None,
        &opts(Some(3000)),
        &mut bw,
        &LiveTask::default(),
    )
    .unwrap();
    let (_, man) = bw.finish(BTreeMap::new(), sharded::meta_of(&out)).unwrap();
    // SIGINT: the writer aborts its open transaction as it exits (a killed
    // one would hold the oplog's newest entries invisible until the server
    // gives the transaction up, 60 s later). The writer installs Python's
    // SIGINT handler itself: a process started from a background job of a
    // non-interactive shell inherits SIGINT ignored, and Python then raises
    // nothing. Killed if it has not exited in 30 s all the same.
    stowage_testkit::stop_child(txw, "INT");
    let _ = plain.kill();
    let _ = plain.wait();
    let t = out.cluster_time;
    // From the source's oplog: the transactions committed at or before T.
    let expected = shards[1].pymongo(&format!(
        "import bson, collections\n\
         T = (bson.Timestamp({}, {}).time, bson.Timestamp({}, {}).inc)\n\
         last, ns = {{}}, {{}}\n\
         for e in client.local.oplog.rs.find({{'ns': 'shop.tx', 'op': 'i'}}):\n    \
             k = (bytes(e['lsid']['id']), e['txnNumber'])\n    \
             last[k] = max(last.get(k, (0, 0)), (e['ts'].time, e['ts'].inc))\n    \
             ns[k] = e['o']['n']\n\
         print(' '.join(str(n) for n in sorted(ns[k] for k in last if last[k] <= T)))",
        t.time, t.increment, t.time, t.increment
    ));
    let (dst, _) = restore_part(&r, &man, 1);
    let got = dst.pymongo(
        "import collections\n\
         c = collections.Counter(d['n'] for d in client.shop.tx.find())\n\
         assert all(v == 3 for v in c.values()), [k for k, v in c.items() if v != 3]\n\
         print(' '.join(str(n) for n in sorted(c)))",
    );
    assert_eq!(
        got, expected,
        "restored transactions vs those committed at or before T"
    );
    assert!(!expected.is_empty());
}

/// A part of a cluster's set written by hand: an empty `shop.t` and the
/// oplog slice `entries`, the cluster time 100:5, `split` the transactions
/// the capture copied past it. Restored into a fresh server; returns the
/// ids of `shop.t` there and the entries applied.
fn restore_hand_made(entries: &[bson::Document], split: &[(u8, i64)]) -> (String, u64) {
    use stowage_core::manifest::FileKind;
    let f = |path: &str, kind| stowage_repo::FileMeta {
        path: path.into(),
        kind,
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime: 0,
        link_target: None,
    };
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let mut bw = r.start_backup(2).unwrap();
    let mut w = bw.archive_writer("c_0", None);
    w.add_entry(f("shop", FileKind::Dir)).unwrap();
    w.begin_file(f("shop/t.metadata.json", FileKind::File))
        .unwrap();
    w.write(br#"{"type":"collection","info":{"name":"t","options":{}},"indexes":[]}"#)
        .unwrap();
    w.end_file().unwrap();
    w.begin_file(f("shop/t.bson", FileKind::File)).unwrap();
    w.end_file().unwrap();
    w.begin_file(f("oplog.bson", FileKind::File)).unwrap();
    for e in entries {
        w.write(&e.to_vec().unwrap()).unwrap();
    }
    w.end_file().unwrap();
    bw.add_archive(w).unwrap();
    let split: Vec<String> = split
        .iter()
        .map(|(s, n)| mongo::txn_key(&(vec![*s; 16], *n)))
        .collect();
    let meta = serde_json::json!({
        "topology": "sharded",
        "cluster_time": {"t": 100, "i": 5},
        "parts": [{
            "id": "c_0", "archive": "c_0", "role": "shard", "databases": ["shop"],
            "txns_after_cluster_time": split,
        }],
    });
    let (_, man) = bw.finish(BTreeMap::new(), meta).unwrap();
    let (dst, st) = restore_part(&r, &man, 0);
    (
        dst.pymongo("print(sorted(d['_id'] for d in client.shop.t.find()))"),
        st.oplog_applied,
    )
}

fn ts100(i: u32) -> bson::Timestamp {
    bson::Timestamp {
        time: 100,
        increment: i,
    }
}

/// An oplog entry at 100:`i`, of transaction (`s`, n) if given.
fn entry(i: u32, mut e: bson::Document, txn: Option<(u8, i64)>) -> bson::Document {
    e.insert("ts", ts100(i));
    if let Some((s, n)) = txn {
        e.insert(
            "lsid",
            bson::doc! {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![s; 16] }},
        );
        e.insert("txnNumber", n);
    }
    e
}

fn insert(id: i32) -> bson::Document {
    bson::doc! {"op": "i", "ns": "shop.t", "o": {"_id": id}}
}

/// The cluster time splits a transaction (SecantusDB logs each of its
/// writes as an entry): the restore applies every entry at or before the
/// cluster time except that transaction's (it commits after), and nothing
/// after.
#[test]
fn a_restore_stops_at_the_cluster_time_and_leaves_out_a_transaction_it_splits() {
    // T = 100:5. Transaction A (entries 2, 3) commits before it; B (4, 6)
    // after it, though its first write is before.
    let entries = [
        entry(1, insert(1), None),
        entry(2, insert(2), Some((0xA, 1))),
        entry(3, insert(3), Some((0xA, 1))),
        entry(4, insert(4), Some((0xB, 7))),
        entry(5, insert(5), None),
        entry(6, insert(6), Some((0xB, 7))),
    ];
    assert_eq!(
        restore_hand_made(&entries, &[(0xB, 7)]),
        ("[1, 2, 3, 5]".to_string(), 4)
    );
}

/// mongod's cross-shard transactions are prepared, then committed at a
/// `commitTimestamp` (or aborted): restored to the cluster time, one
/// applies only if it committed at or before it, wherever its entries lie.
#[test]
fn prepared_transactions_apply_by_their_commit_timestamp() {
    let prepare = |id: i32| {
        bson::doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [insert(id)], "prepare": true}}
    };
    let end = |what: &str, at: Option<u32>| {
        let mut o = bson::doc! {what: 1};
        if let Some(i) = at {
            o.insert("commitTimestamp", ts100(i));
        }
        bson::doc! {"op": "c", "ns": "admin.$cmd", "o": o}
    };
    // T = 100:5. C commits at 100:4 (its commit entry after T), D at 100:6,
    // E is aborted.
    let entries = [
        entry(1, prepare(10), Some((0xC, 1))),
        entry(2, prepare(20), Some((0xD, 1))),
        entry(3, prepare(30), Some((0xE, 1))),
        entry(4, end("abortTransaction", None), Some((0xE, 1))),
        entry(6, end("commitTransaction", Some(4)), Some((0xC, 1))),
        entry(7, end("commitTransaction", Some(6)), Some((0xD, 1))),
    ];
    let (ids, _) = restore_hand_made(&entries, &[(0xC, 1), (0xD, 1)]);
    assert_eq!(ids, "[10]");
}

/// mongod's retryable writes carry `lsid` and `txnNumber` too (with a
/// `stmtId`), one entry per document of an `insertMany`: not a
/// transaction, so the cluster time cuts through them like any writes.
#[test]
fn retryable_writes_are_cut_like_any_writes() {
    let retryable = |i: u32, id: i32| {
        let mut e = entry(i, insert(id), Some((0x5, 9)));
        e.insert("stmtId", i as i32);
        e
    };
    let entries: Vec<bson::Document> = (1..=6).map(|i| retryable(i, i as i32)).collect();
    let (ids, _) = restore_hand_made(&entries, &[(0x5, 9)]);
    assert_eq!(ids, "[1, 2, 3, 4, 5]");
}
