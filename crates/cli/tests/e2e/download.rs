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
    let o = s.cli(&["download", "create", &set, "--part", "nosuch"]);
    assert_fails(&o, 1, "has no part \"nosuch\"");

    let url = s.ok(&["download", "create", &set]).trim().to_string();
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

/// A small replica set with one backup set; returns (server, stowage, set id).
fn backed_up(work: &std::path::Path, rs: &str) -> (MongoServer, Stowage, String) {
    let m = MongoServer::start(MongoOptions {
        replica_set: rs.into(),
        ..Default::default()
    });
    m.pymongo("client.shop.orders.insert_many([{'_id': i, 'v': 'x' * 100} for i in range(300)])");
    let s = Stowage::start(&work.join("stowage"));
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
    (m, s, set)
}

/// Another node's exclusive lock (a gc elsewhere) on the repository, as
/// that node writes it; removed by deleting the file.
fn foreign_lock(work: &std::path::Path) -> std::path::PathBuf {
    let dir = work.join("stowage/repository/locks");
    assert!(dir.is_dir(), "{}", dir.display());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let f = dir.join("0123456789abcdef0123456789abcdef");
    std::fs::write(
        &f,
        format!(
            r#"{{"kind":"exclusive","hostname":"another-node","pid":4242,"time_ms":{now},"purpose":"gc"}}"#
        ),
    )
    .unwrap();
    f
}

#[test]
fn a_download_waits_for_retry_while_the_repository_is_locked_then_completes() {
    let work = tempfile::tempdir().unwrap();
    let (_m, s, set) = backed_up(work.path(), "rs-retry");

    let lock = foreign_lock(work.path());
    let t = s.json(&["download", "create", &set, "--no-wait"]);
    let id = t["id"].as_i64().unwrap();
    let r = s.wait_task(id, "retrying", |t| t["state"] == "retrying");
    assert_eq!(r["result"]["attempt"], 1, "{r}");
    let msg = r["result"]["error"].as_str().unwrap();
    assert!(
        msg.contains("repository is locked") && msg.contains("another-node"),
        "{r}"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = r["result"]["retry_at_ms"].as_i64().unwrap();
    assert!(at > now_ms - 5_000 && at <= now_ms + 5_000, "{r}");
    let shown = s.ok(&["download", "show", &id.to_string()]);
    assert!(
        shown.contains("attempt 1 failed") && shown.contains("retrying"),
        "{shown}"
    );
    // In the Tencent view this is status 4, "waiting for retry"; in REST the
    // task is listed as a download without a link yet.
    let (code, v) = s.http("GET", &format!("/v1/downloads?set={set}"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["downloads"][0]["state"], "retrying", "{v}");
    assert!(v["downloads"][0]["download"].is_null(), "{v}");

    // The other node's gc ends: the next attempt (5 s after the first)
    // packages the part.
    std::fs::remove_file(&lock).unwrap();
    let done = s.wait_task(id, "finished", |t| {
        t["state"].as_str().is_some_and(|s| {
            s != "retrying"
                && s != "checking"
                && s != "preparing"
                && s != "running"
                && s != "finishing"
        })
    });
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["result"]["file"], "rs-retry.tar", "{done}");
    let url = done["download"]["url"].as_str().unwrap().to_string();
    let got = python(&format!(
        "import urllib.request, tarfile, io\n\
         d = urllib.request.urlopen({url:?}).read()\n\
         print(sorted(tarfile.open(fileobj=io.BytesIO(d)).getnames()))"
    ));
    assert!(got.contains("shop/orders.bson"), "{got}");
    let listed = s.ok(&["download", "list"]);
    assert!(
        listed.contains(&url) && listed.contains("finished"),
        "{listed}"
    );

    // Cancelled while it waits for its next attempt: it ends cancelled and
    // does not try again.
    let lock = foreign_lock(work.path());
    let t = s.json(&["download", "create", &set, "--no-wait"]);
    let id = t["id"].as_i64().unwrap();
    s.wait_task(id, "retrying", |t| t["state"] == "retrying");
    s.ok(&["task", "cancel", &id.to_string()]);
    let c = s.wait_task(id, "cancelled", |t| {
        t["state"] == "cancelled" || t["state"] == "failed"
    });
    assert_eq!(c["state"], "cancelled", "{c}");
    std::fs::remove_file(&lock).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(
        s.json(&["task", "show", &id.to_string()])["state"],
        "cancelled"
    );
    assert!(!work.path().join(format!("stowage/downloads/{id}")).exists());
}

#[test]
fn a_link_names_one_task_of_one_account() {
    let work = tempfile::tempdir().unwrap();
    let (_m, s, set) = backed_up(work.path(), "rs-acct");
    let url = s.ok(&["download", "create", &set]).trim().to_string();
    // Another account's download of its own set.
    let (kid, secret) = s.new_account_key("other");
    let m2 = MongoServer::start(MongoOptions {
        replica_set: "rs-other".into(),
        ..Default::default()
    });
    m2.pymongo("client.a.b.insert_one({'_id': 1})");
    let ok = |args: &[&str]| {
        let o = s.cli_as(&kid, &secret, args);
        assert!(o.status.success(), "{}", crate::harness::stderr(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    ok(&[
        "instance",
        "add",
        "--name",
        "o",
        "--engine",
        "mongodb",
        "--uri",
        &m2.uri(),
    ]);
    ok(&["backup", "o"]);
    let other_set: serde_json::Value =
        serde_json::from_str(&ok(&["set", "list", "--json"])).unwrap();
    let other_set = other_set["sets"][0]["id"].to_string();
    let other_url = ok(&["download", "create", &other_set]);
    let other_task = other_url
        .split("/v1/downloads/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // The first account cannot list or show the other's download task, nor
    // download the other's set.
    let mine = s.ok(&["download", "list"]);
    assert!(!mine.contains(&other_url), "{mine}");
    assert_fails(&s.cli(&["download", "show", &other_task]), 2, "not found");
    assert_fails(&s.cli(&["download", "create", &other_set]), 2, "not found");
    // Its link with the other account's task (or file) in place of its own
    // is refused like any changed link.
    let task = url
        .split("/v1/downloads/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let swapped = url.replace(
        &format!("/v1/downloads/{task}/rs-acct.tar"),
        &format!("/v1/downloads/{other_task}/rs-other.tar"),
    );
    assert_ne!(swapped, url);
    let r = python(&format!(
        "import urllib.request, urllib.error\n\
         for u in ({swapped:?}, {:?}):\n    \
             try:\n        \
                 urllib.request.urlopen(u)\n        \
                 raise SystemExit('accepted ' + u)\n    \
             except urllib.error.HTTPError as e:\n        \
                 body = e.read()\n        \
                 assert e.code == 403 and b'rs-' not in body, (e.code, body)\n\
         print(len(urllib.request.urlopen({url:?}).read()) > 0, len(urllib.request.urlopen({other_url:?}).read()) > 0)",
        url.replace("rs-acct.tar", "rs-other.tar")
    ));
    assert_eq!(r, "True True");
}
