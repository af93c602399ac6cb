//! Download tasks: one part of a set packaged into one file, fetched by an
//! expiring signed link, and restored by a loader that shares no code with
//! Stowage (Python, pymongo's bson, tarfile).

use crate::harness::{Stowage, assert_fails};
use std::process::Command;
use stowage_testkit::{MongoOptions, MongoServer, mongo_venv};

/// Runs Python from the MongoDB test venv (pymongo, bson) with `code`.
fn python(code: &str) -> String {
    let o = Command::new(mongo_venv().join("bin/python"))
        .arg("-c")
        .arg(code)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_downloaded_mongodb_part_loads_into_a_fresh_server_with_standard_tools() {
    let m = MongoServer::start(MongoOptions {
        replica_set: "rs-dl".into(),
        ..Default::default()
    });
    m.pymongo(
        "import datetime, bson\n\
         client.shop.orders.insert_many([{'_id': i, 'total': i * 1.5, 'at': datetime.datetime(2020, 1, 1), 'note': 'ü✓'} for i in range(700)])\n\
         client.crm.people.insert_many([{'_id': i, 'b': bson.Binary(b'x' * 50)} for i in range(50)])",
    );
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    s.ok(&[
        "instance",
        "add",
        "--name",
        "m",
        "--engine",
        "mongodb",
        "--uri",
        &m.uri(),
    ]);
    s.ok(&["backup", "m"]);
    let set = s.json(&["set", "list"])["sets"][0]["id"].to_string();

    // A part the set does not have: the task fails, saying which it has.
    let o = s.cli(&["download", &set, "--part", "nosuch"]);
    assert_fails(&o, 1, "has no part \"nosuch\"");

    let url = s.ok(&["download", &set]).trim().to_string();
    assert!(
        url.starts_with("http://") && url.contains("/v1/downloads/") && url.contains("sig="),
        "{url}"
    );
    let t = s.json(&["task", "list", "--kind", "download"])["tasks"][0].clone();
    assert_eq!(t["state"], "finished", "{t}");
    assert_eq!(t["result"]["file"], "rs-dl.tar", "{t}");

    // The loader: fetch by the link alone (no key), read the tar's mongodump
    // layout, insert every collection into a fresh server.
    let dst = MongoServer::start(MongoOptions {
        replica_set: "rs-fresh".into(),
        ..Default::default()
    });
    let got = python(&format!(
        "import io, tarfile, urllib.request, bson, pymongo\n\
         data = urllib.request.urlopen({url:?}).read()\n\
         c = pymongo.MongoClient({:?})\n\
         t = tarfile.open(fileobj=io.BytesIO(data))\n\
         names = t.getnames()\n\
         assert 'oplog.bson' in names, names\n\
         for n in names:\n    \
             if n.endswith('.bson') and n != 'oplog.bson':\n        \
                 db, coll = n[:-5].split('/')\n        \
                 docs = bson.decode_all(t.extractfile(n).read())\n        \
                 if docs: c[db][coll].insert_many(docs)\n\
         print(len(data), sorted(n for n in names if n.endswith('.metadata.json')))",
        dst.uri()
    ));
    assert!(
        got.contains("crm/people.metadata.json") && got.contains("shop/orders.metadata.json"),
        "{got}"
    );
    // Identical data: every document, in _id order, as the source has it.
    let digest = |srv: &MongoServer| {
        srv.pymongo(
            "import hashlib, bson\n\
             h = hashlib.sha256()\n\
             for db, coll in (('shop', 'orders'), ('crm', 'people')):\n    \
                 for d in client[db][coll].find().sort('_id', 1):\n        \
                     h.update(bson.encode(d))\n\
             print(h.hexdigest())",
        )
    };
    assert_eq!(digest(&dst), digest(&m));

    // A Range request returns exactly those bytes; a changed link is refused
    // without a hint.
    let ranged = python(&format!(
        "import urllib.request\n\
         full = urllib.request.urlopen({url:?}).read()\n\
         r = urllib.request.urlopen(urllib.request.Request({url:?}, headers={{'Range': 'bytes=100-1123'}}))\n\
         part = r.read()\n\
         assert r.status == 206 and part == full[100:1124], (r.status, len(part))\n\
         assert r.headers['Content-Disposition'] == 'attachment; filename=\"rs-dl.tar\"'\n\
         assert r.headers['ETag']\n\
         for bad in ({url:?}.replace('sig=', 'sig=0'), {url:?}.split('&sig=')[0] + '&sig=' + '0' * 64, {url:?}.replace('expires=', 'expires=9')):\n    \
             try:\n        \
                 urllib.request.urlopen(bad)\n        \
                 raise SystemExit('accepted ' + bad)\n    \
             except urllib.error.HTTPError as e:\n        \
                 assert e.code == 403 and b'not valid' in e.read(), e.code\n\
         print('ok')"
    ));
    assert_eq!(ranged, "ok");
}
