//! MongoDB instances through the product: registered with a connection
//! string (never a password in it), checked, backed up into a set whose
//! consistent point is an oplog timestamp.

use crate::harness::{Stowage, assert_fails, stderr};
use stowage_testkit::{MongoOptions, MongoServer};

#[test]
fn a_mongodb_replica_set_is_registered_checked_and_backed_up() {
    let m = MongoServer::start(MongoOptions {
        replica_set: "rs-e2e".into(),
        ..Default::default()
    });
    m.pymongo("import os\nclient.shop.orders.insert_many([{'n': i, 'p': os.urandom(300)} for i in range(1000)])");
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));

    // Credentials never go into the stored connection string.
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "bad",
        "--engine",
        "mongodb",
        "--uri",
        "mongodb://admin:hunter2@127.0.0.1:27017/",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no credentials"), "{}", stderr(&o));
    let o = s.cli(&["instance", "add", "--name", "none", "--engine", "mongodb"]);
    assert!(stderr(&o).contains("--uri"), "{}", stderr(&o));
    // PostgreSQL's TLS settings are refused, not silently ignored.
    let uri = m.uri();
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "tls",
        "--engine",
        "mongodb",
        "--uri",
        &uri,
        "--sslmode",
        "verify-full",
    ]);
    assert_fails(&o, 2, "TLS in its connection string");
    // Unreachable: refused at registration with the database's reason.
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "gone",
        "--engine",
        "mongodb",
        "--uri",
        "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500",
    ]);
    assert!(stderr(&o).contains("DatabaseUnreachable"), "{}", stderr(&o));

    let v = s.json(&[
        "instance",
        "add",
        "--name",
        "mongo",
        "--engine",
        "mongodb",
        "--uri",
        &m.uri(),
    ]);
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("dds-"), "{v}");
    assert_eq!(v["engine"], "mongodb");
    let out = s.ok(&["instance", "check", "mongo"]);
    assert!(out.contains("MongoDB 8") && out.contains("rs-e2e"), "{out}");

    let out = s.ok(&["backup", "mongo"]);
    assert!(
        out.contains("backup set") && out.contains("oplog "),
        "{out}"
    );
    let set = s.json(&["set", "list"])["sets"][0].clone();
    // The backup task has one part, the replica set, finished with the
    // bytes it read; the task's progress is its parts' sum.
    let task = s.json(&["task", "show", &set["task_id"].to_string()]);
    let parts = task["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{task}");
    assert_eq!(parts[0]["part"], "rs-e2e");
    assert_eq!(parts[0]["state"], "finished");
    assert_eq!(parts[0]["parent_id"], task["id"]);
    assert!(
        parts[0]["progress"]["bytes_done"].as_u64().unwrap() > 0,
        "{task}"
    );
    assert!(
        task["progress"]["bytes_done"].as_u64() >= parts[0]["progress"]["bytes_done"].as_u64(),
        "{task}"
    );
    let shown = s.ok(&["task", "show", &set["task_id"].to_string()]);
    assert!(
        shown.contains("parts:") && shown.contains("rs-e2e"),
        "{shown}"
    );
    // Parts are not top-level tasks, and cannot be cancelled on their own.
    let listed = s.json(&["task", "list"]);
    assert!(
        listed["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["part"].is_null()),
        "{listed}"
    );
    let o = s.cli(&["task", "cancel", &parts[0]["id"].to_string()]);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(set["engine"], "mongodb");
    assert_eq!(set["method"], "logical");
    assert!(
        set["consistent_point"]["oplog_ts"]["t"].as_u64().unwrap() > 0,
        "{set}"
    );
    let files = s.ok(&["set", "show", &set["id"].to_string(), "--files"]);
    assert!(
        files.contains("rs-e2e/shop/orders.bson") && files.contains("rs-e2e/oplog.bson"),
        "{files}"
    );
    // A folder restore of a MongoDB set says what to do instead.
    let set_id = set["id"].to_string();
    let o = s.cli(&["restore", &set_id, "--target", "m1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--into"), "{}", stderr(&o));

    // Into another registered instance, under a new database name.
    let m2 = MongoServer::start(MongoOptions {
        replica_set: "rs-target".into(),
        ..Default::default()
    });
    s.ok(&[
        "instance",
        "add",
        "--name",
        "mongo2",
        "--engine",
        "mongodb",
        "--uri",
        &m2.uri(),
    ]);
    let out = s.ok(&[
        "restore",
        &set_id,
        "--into",
        "mongo2",
        "--rename-db",
        "shop=shop2",
    ]);
    assert!(out.contains("restored 1000 documents"), "{out}");
    assert_eq!(
        m2.pymongo("print(client.shop2.orders.count_documents({}))"),
        "1000"
    );
    // The restore is a task too (kind restore), with a part per archive.
    let restores = s.json(&["task", "list", "--kind", "restore"]);
    let r = &restores["tasks"][0];
    assert_eq!(
        (r["kind"].as_str(), r["state"].as_str()),
        (Some("restore"), Some("finished")),
        "{restores}"
    );
    let r = s.json(&["task", "show", &r["id"].to_string()]);
    assert_eq!(r["parts"][0]["part"], "rs-e2e", "{r}");
    assert_eq!(r["parts"][0]["state"], "finished", "{r}");
    // Again: the database exists now; refused unless dropped.
    let o = s.cli(&[
        "restore",
        &set_id,
        "--into",
        "mongo2",
        "--rename-db",
        "shop=shop2",
    ]);
    assert_fails(&o, 1, "already holds database");
    s.ok(&[
        "restore",
        &set_id,
        "--into",
        "mongo2",
        "--rename-db",
        "shop=shop2",
        "--drop",
    ]);
    assert_eq!(
        m2.pymongo("print(client.shop2.orders.count_documents({}))"),
        "1000"
    );
    // Bad requests: both forms, an unknown instance, a bad rename.
    let o = s.cli(&["restore", &set_id, "--into", "nosuch"]);
    assert!(stderr(&o).contains("NotFound"), "{}", stderr(&o));
    let o = s.cli(&[
        "restore",
        &set_id,
        "--into",
        "mongo2",
        "--rename-db",
        "shop=a.b",
    ]);
    assert!(stderr(&o).contains("InvalidParameter"), "{}", stderr(&o));
    let (st, v) = s.http(
        "POST",
        &format!("/v1/sets/{set_id}/restore"),
        Some(r#"{"target": "x", "into": "mongo2"}"#),
    );
    assert_eq!(st, 400, "{v}");

    // The next backup builds on this set: its dump by reference, only the
    // oplog since stored; it restores on its own, changes included.
    m.pymongo(
        "for i in range(0, 1000, 100):\n    client.shop.orders.update_one({'n': i}, {'$set': {'n': -i}})\n\
         client.audit.log.insert_one({'_id': 1})",
    );
    s.ok(&["backup", "mongo", "--comment", "on the first"]);
    let sets = s.json(&["set", "list"]);
    let (second, first) = (&sets["sets"][0], &sets["sets"][1]);
    assert_eq!(
        second["meta"]["dump"]["reused_from_set"], first["id"],
        "{second}"
    );
    assert!(
        second["bytes_stored"].as_u64().unwrap() * 10 < first["bytes_stored"].as_u64().unwrap(),
        "{sets}"
    );
    let shown = s.ok(&["set", "show", &second["id"].to_string()]);
    assert!(
        shown.contains(&format!("reused from set {}", first["id"])),
        "{shown}"
    );
    s.ok(&[
        "restore",
        &second["id"].to_string(),
        "--into",
        "mongo2",
        "--rename-db",
        "shop=shop3",
    ]);
    assert_eq!(
        m2.pymongo("print(client.shop3.orders.count_documents({'n': {'$lt': 0}}), client.audit.log.count_documents({}))"),
        "9 1"
    );
    // --full takes a new dump.
    s.ok(&["backup", "mongo", "--full"]);
    let third = s.json(&["set", "list"])["sets"][0].clone();
    assert!(
        third["meta"]["dump"]["reused_from_set"].is_null(),
        "{third}"
    );
    assert!(
        third["meta"]["dump"]["started_ms"].as_i64().unwrap() > 0,
        "{third}"
    );
    // The set built on the first outlives it: with the first deleted and
    // its space reclaimed, the second still verifies and restores whole.
    s.ok(&["set", "delete", &first["id"].to_string()]);
    s.ok(&["gc"]);
    assert!(s.ok(&["verify"]).contains("repository OK"));
    assert!(
        s.ok(&["verify", "--set", &second["id"].to_string()])
            .contains("OK")
    );
    s.ok(&[
        "restore",
        &second["id"].to_string(),
        "--into",
        "mongo2",
        "--rename-db",
        "shop=shop4",
        "--rename-db",
        "audit=audit4",
    ]);
    assert_eq!(
        m2.pymongo("print(client.shop4.orders.count_documents({}), client.shop4.orders.count_documents({'n': {'$lt': 0}}))"),
        "1000 9"
    );
}

/// Errors a user must see clearly, each leaving nothing broken: a wrong
/// password, the server killed mid-backup (task and part failed, the
/// repository verifies), the server down at start, and the next backup
/// after it comes back works. On the Rust server (with authentication).
#[test]
fn mongodb_failures_are_clear_and_leave_the_repository_sound() {
    let mut m = MongoServer::start(MongoOptions {
        auth: true,
        ..MongoOptions::rust()
    });
    m.pymongo("client.admin.command('createUser', 'backup', pwd='right-pw', roles=['root'])");
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    let pw = |p: &str| {
        let f = work.path().join(format!("pw-{p}"));
        std::fs::write(&f, p).unwrap();
        f.to_str().unwrap().to_string()
    };
    let add = |name: &str, password: &str| {
        s.cli(&[
            "instance",
            "add",
            "--name",
            name,
            "--engine",
            "mongodb",
            "--uri",
            &m.uri(),
            "--user",
            "backup",
            "--password-file",
            &pw(password),
            "--max-rate-kbps",
            "2048",
        ])
    };
    // Wrong password: refused at registration, saying why, the password
    // nowhere in the answer.
    let o = add("wrong", "wrong-pw");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("DatabaseAuthentication") && !stderr(&o).contains("wrong-pw"),
        "{}",
        stderr(&o)
    );
    // Registered without the check, then fixed with `instance set`.
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "mongo",
        "--engine",
        "mongodb",
        "--uri",
        &m.uri(),
        "--user",
        "backup",
        "--password-file",
        &pw("wrong-pw"),
        "--no-check",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["instance", "check", "mongo"]);
    assert!(
        stderr(&o).contains("DatabaseAuthentication"),
        "{}",
        stderr(&o)
    );
    let o = s.cli(&["instance", "set", "mongo", "--host", "elsewhere"]);
    assert!(stderr(&o).contains("connection string"), "{}", stderr(&o));
    let o = s.cli(&[
        "instance",
        "set",
        "mongo",
        "--uri",
        "mongodb://u:p@127.0.0.1/",
    ]);
    assert!(stderr(&o).contains("no credentials"), "{}", stderr(&o));
    s.ok(&[
        "instance",
        "set",
        "mongo",
        "--password-file",
        &pw("right-pw"),
        "--uri",
        &m.uri(),
        "--max-rate-kbps",
        "2048",
    ]);
    s.ok(&["instance", "check", "mongo"]);

    // ~8 MB dumped at 2 MB/s: killed while the part copies data.
    let mut client = String::from("import pymongo\n");
    client.push_str(&format!(
        "c = pymongo.MongoClient('mongodb://backup:right-pw@127.0.0.1:{}/?replicaSet=secantus')\n",
        m.port
    ));
    let load = format!(
        "{client}for b in range(8):\n    c.shop.big.insert_many([{{'_id': b * 1000 + i, 'pad': 'x' * 1000}} for i in range(1000)])"
    );
    m.pymongo(&format!("exec({load:?})"));
    let t = s.json(&["backup", "mongo", "--no-wait"]);
    let id = t["id"].to_string();
    s.wait_task(t["id"].as_i64().unwrap(), "copying data", |t| {
        t["parts"][0]["progress"]["bytes_done"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    m.kill9();
    let o = s.cli(&["task", "watch", &id]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let t = s.json(&["task", "show", &id]);
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["parts"][0]["state"], "failed", "{t}");
    let why = t["error"].as_str().unwrap_or("");
    assert!(
        why.contains("connection to the MongoDB server was lost")
            && !why.contains("right-pw")
            && !why.contains("Topology"),
        "{t}"
    );
    assert!(
        s.json(&["set", "list"])["sets"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let out = s.ok(&["verify"]);
    assert!(out.contains("repository OK"), "{out}");

    // Down at start: the backup fails at once, saying the server is unreachable.
    let o = s.cli(&["backup", "mongo"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("MongoDB server unreachable"),
        "{}",
        stderr(&o)
    );

    // Back up again once the server is back: a complete set.
    m.restart();
    let out = s.ok(&["backup", "mongo"]);
    assert!(out.contains("backup set"), "{out}");
    let set = &s.json(&["set", "list"])["sets"][0];
    assert!(set["bytes_logical"].as_u64().unwrap() > 8_000_000, "{set}");
    s.ok(&["verify"]);
}

/// A runner that panics while its task has parts fails the task and its
/// parts and frees the instance (a test-only fault of debug builds).
#[test]
fn a_panicking_runner_fails_the_task_and_its_parts() {
    let m = MongoServer::start(MongoOptions {
        replica_set: "rs-panic".into(),
        ..Default::default()
    });
    m.pymongo("client.shop.orders.insert_many([{'n': i} for i in range(100)])");
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start_with_env(
        &work.path().join("stowage"),
        &[],
        &[("STOWAGE_FAULT", "panic-with-parts")],
    );
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
    for _ in 0..2 {
        let o = s.cli(&["backup", "m"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("internal error"), "{}", stderr(&o));
    }
    let t = &s.json(&["task", "list"])["tasks"][0];
    let t = s.json(&["task", "show", &t["id"].to_string()]);
    assert_eq!(t["state"], "failed", "{t}");
    let parts = t["parts"].as_array().unwrap();
    assert!(!parts.is_empty(), "{t}");
    assert!(parts.iter().all(|p| p["state"] == "failed"), "{t}");
}

/// `--tenant-allow` covers every member a replica set advertises, not only
/// the hosts of the connection string: the driver follows the members. Here
/// the operator allows the name `localhost`; the server advertises itself
/// as 127.0.0.1, which the rules do not name, so a tenant's instance is
/// refused before any data moves, at registration and at backup. The admin
/// account is not bound by the rules.
#[test]
fn a_tenant_reaches_only_the_replica_set_members_the_operator_allows() {
    let m = MongoServer::start(MongoOptions::default());
    m.pymongo("client.shop.a.insert_one({'_id': 1})");
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start_with(
        &work.path().join("stowage"),
        &["--tenant-allow", "localhost"],
    );
    let (kid, ksec) = s.new_account_key("team-b");
    let tenant = |args: &[&str]| s.cli_as(&kid, &ksec, args);
    let uri = format!(
        "mongodb://localhost:{}/?replicaSet={}",
        m.port, m.replica_set
    );
    let add = |name: &str, extra: &[&str]| {
        let mut a = vec![
            "instance", "add", "--name", name, "--engine", "mongodb", "--uri", &uri,
        ];
        a.extend_from_slice(extra);
        tenant(&a)
    };
    let o = add("m", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("advertises member 127.0.0.1:{}", m.port))
            && e.contains("--tenant-allow"),
        "{e}"
    );
    // Registered unchecked, its backup fails the same way, reading nothing.
    let o = add("m", &["--no-check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tenant(&["backup", "m"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("advertises member"), "{}", stderr(&o));
    let sets: serde_json::Value =
        serde_json::from_slice(&tenant(&["set", "list", "--json"]).stdout).unwrap();
    assert_eq!(sets["sets"].as_array().unwrap().len(), 0, "{sets}");
    // The admin account is not bound by the rules.
    s.ok(&[
        "instance", "add", "--name", "a", "--engine", "mongodb", "--uri", &uri,
    ]);
    assert!(s.ok(&["backup", "a"]).contains("backup set"));
}
