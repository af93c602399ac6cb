//! MongoDB sharded clusters through the product: registered with their
//! shards and config servers (or the shards read from `config.shards`),
//! backed up as one task with a part per shard and one for the config
//! servers, restored whole into another cluster or one part alone.

use crate::harness::{Stowage, assert_fails, stderr};
use stowage_testkit::{MongoOptions, MongoServer};

/// A replica set named `name` (the Python server: it takes any name).
fn rs(name: &str) -> MongoServer {
    MongoServer::start(MongoOptions {
        replica_set: name.into(),
        ..Default::default()
    })
}

/// `config.shards` as mongod's config servers hold it (written by hand:
/// there is no mongos here).
fn register_shards(config: &MongoServer, shards: &[&MongoServer]) {
    let mut code = String::from("client.config.shards.insert_many([");
    for s in shards {
        code.push_str(&format!(
            "{{'_id': '{0}', 'host': '{0}/127.0.0.1:{1}'}},",
            s.replica_set, s.port
        ));
    }
    code.push_str("])\nclient.config.databases.insert_one({'_id': 'shop', 'primary': 'sh0'})");
    config.pymongo(&code);
}

#[test]
fn a_sharded_cluster_is_backed_up_per_shard_and_restored_whole_or_by_part() {
    let sh0 = rs("sh0");
    let sh1 = rs("sh1");
    let cfg = rs("cfg");
    sh0.pymongo("client.shop.orders.insert_many([{'_id': i, 'shard': 0} for i in range(0, 300)])");
    sh1.pymongo(
        "client.shop.orders.insert_many([{'_id': i, 'shard': 1} for i in range(300, 500)])",
    );
    register_shards(&cfg, &[&sh0, &sh1]);
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));

    // Bad registrations say what is wrong.
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "x",
        "--engine",
        "mongodb",
        "--shard",
        &sh0.uri(),
    ]);
    assert_fails(&o, 2, "config servers");
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "x",
        "--engine",
        "mongodb",
        "--uri",
        &sh0.uri(),
        "--config",
        &cfg.uri(),
    ]);
    assert_ne!(o.status.code(), Some(0));
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "x",
        "--shard",
        &sh0.uri(),
        "--config",
        &cfg.uri(),
    ]);
    // Refused by the CLI before anything is sent (exit 4).
    assert_fails(&o, 4, "--engine mongodb");
    // The same replica set twice; a bad string names its field.
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "x",
        "--engine",
        "mongodb",
        "--shard",
        &sh0.uri(),
        "--shard",
        &sh0.uri(),
        "--config",
        &cfg.uri(),
    ]);
    assert_fails(&o, 2, "given twice");
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "x",
        "--engine",
        "mongodb",
        "--shard",
        &sh0.uri(),
        "--shard",
        "http://nope",
        "--config",
        &cfg.uri(),
    ]);
    assert_fails(&o, 2, "shards[1]: must start with mongodb://");
    // A shard that cannot be reached: refused, naming it.
    let o = s.cli(&[
        "instance",
        "add",
        "--name",
        "x",
        "--engine",
        "mongodb",
        "--shard",
        &sh0.uri(),
        "--shard",
        "mongodb://127.0.0.1:1/?replicaSet=gone&serverSelectionTimeoutMS=500",
        "--config",
        &cfg.uri(),
    ]);
    assert!(
        stderr(&o).contains("DatabaseUnreachable") && stderr(&o).contains("_1"),
        "{}",
        stderr(&o)
    );

    let v = s.json(&[
        "instance",
        "add",
        "--name",
        "big",
        "--engine",
        "mongodb",
        "--shard",
        &sh0.uri(),
        "--shard",
        &sh1.uri(),
        "--config",
        &cfg.uri(),
    ]);
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("dds-"), "{v}");
    assert_eq!(v["topology"], "sharded", "{v}");
    assert_eq!(v["shards"][0]["id"], format!("{id}_0"), "{v}");
    assert_eq!(v["shards"][1]["id"], format!("{id}_1"), "{v}");
    assert_eq!(v["config"]["id"], format!("{id}_config"), "{v}");
    // Registered from the config servers alone: the same shards, read from
    // config.shards.
    let v2 = s.json(&[
        "instance",
        "add",
        "--name",
        "big2",
        "--engine",
        "mongodb",
        "--config",
        &cfg.uri(),
    ]);
    assert_eq!(v2["shards"].as_array().unwrap().len(), 2, "{v2}");
    assert_eq!(v2["shards"][0]["uri"], v["shards"][0]["uri"], "{v2}");
    assert_eq!(v2["shards"][1]["uri"], v["shards"][1]["uri"], "{v2}");
    let shown = s.ok(&["instance", "show", "big"]);
    assert!(
        shown.contains(&format!("{id}_1"))
            && shown.contains("config servers")
            && shown.contains("sharded"),
        "{shown}"
    );
    let out = s.ok(&["instance", "check", "big"]);
    assert!(
        out.contains("sh0") && out.contains("sh1") && out.contains("cfg"),
        "{out}"
    );

    // One backup task; one part per shard and one for the config servers.
    let out = s.ok(&["backup", "big"]);
    assert!(out.contains("backup set"), "{out}");
    let set = s.json(&["set", "list"])["sets"][0].clone();
    let set_id = set["id"].to_string();
    assert!(
        set["consistent_point"]["cluster_time"]["t"]
            .as_u64()
            .unwrap()
            > 0,
        "{set}"
    );
    let task = s.json(&["task", "show", &set["task_id"].to_string()]);
    let parts: Vec<(String, String)> = task["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["part"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            (format!("{id}_0"), "finished".to_string()),
            (format!("{id}_1"), "finished".to_string()),
            (format!("{id}_config"), "finished".to_string()),
        ],
        "{task}"
    );
    let shown = s.ok(&["set", "show", &set_id]);
    assert!(
        shown.contains("cluster time")
            && shown.contains(&format!("shard {id}_1 (replica set sh1)")),
        "{shown}"
    );

    // Restored whole into another cluster of as many shards: shard i into
    // shard i, the config servers' metadata into its config servers (not
    // the source's shard registry: the target keeps its own).
    let (t0, t1, tc) = (rs("t0"), rs("t1"), rs("tcfg"));
    s.ok(&[
        "instance",
        "add",
        "--name",
        "target",
        "--engine",
        "mongodb",
        "--shard",
        &t0.uri(),
        "--shard",
        &t1.uri(),
        "--config",
        &tc.uri(),
    ]);
    // Shard 1's target holds the database already: refused before any
    // part writes anything (shard 0's target stays empty).
    t1.pymongo("client.shop.x.insert_one({'_id': 1})");
    let o = s.cli(&["restore", &set_id, "--into", "target"]);
    assert_fails(&o, 1, "already holds database");
    assert!(
        stderr(&o).contains(&format!("part {id}_1")),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        t0.pymongo("print('shop' in client.list_database_names())"),
        "False"
    );
    t1.pymongo("client.drop_database('shop')");
    let out = s.ok(&["restore", &set_id, "--into", "target"]);
    assert!(out.contains("restored 501 documents"), "{out}");
    assert_eq!(
        t0.pymongo("print(client.shop.orders.count_documents({'shard': 0}))"),
        "300"
    );
    assert_eq!(
        t1.pymongo("print(client.shop.orders.count_documents({'shard': 1}))"),
        "200"
    );
    assert_eq!(
        tc.pymongo(
            "print([d['_id'] for d in client.config.databases.find()], client.config.shards.count_documents({}))"
        ),
        "['shop'] 0"
    );
    let r = s.json(&["task", "list", "--kind", "restore"])["tasks"][0].clone();
    let r = s.json(&["task", "show", &r["id"].to_string()]);
    assert_eq!(r["parts"].as_array().unwrap().len(), 3, "{r}");
    // Again: the config servers' collections exist now; refused unless dropped.
    let o = s.cli(&["restore", &set_id, "--into", "target"]);
    assert_fails(&o, 1, "already holds");

    // One shard's part alone into a replica set (what a per-shard download
    // needs); the whole set into a replica set is refused, saying why.
    let one = rs("one");
    s.ok(&[
        "instance",
        "add",
        "--name",
        "one",
        "--engine",
        "mongodb",
        "--uri",
        &one.uri(),
    ]);
    let o = s.cli(&["restore", &set_id, "--into", "one"]);
    assert_fails(&o, 2, "one part (part) into a replica set");
    let o = s.cli(&["restore", &set_id, "--into", "one", "--part", "nosuch"]);
    assert_fails(&o, 2, "has no part");
    let out = s.ok(&[
        "restore",
        &set_id,
        "--into",
        "one",
        "--part",
        &format!("{id}_1"),
    ]);
    assert!(out.contains("restored 200 documents"), "{out}");
    assert_eq!(
        one.pymongo("print(client.shop.orders.count_documents({}))"),
        "200"
    );
    // A cluster's set into a cluster of another shape is refused.
    s.ok(&[
        "instance",
        "add",
        "--name",
        "small",
        "--engine",
        "mongodb",
        "--shard",
        &t0.uri(),
        "--config",
        &tc.uri(),
    ]);
    let o = s.cli(&["restore", &set_id, "--into", "small", "--drop"]);
    assert_fails(&o, 2, "as many shards");
    // A replica set's instance cannot be given shards later.
    let o = s.cli(&["instance", "set", "big", "--uri", &sh0.uri()]);
    assert_fails(&o, 2, "sharded cluster");
}

#[test]
fn a_shard_killed_mid_backup_fails_the_task_and_every_part() {
    let mut shards: Vec<MongoServer> = (0..2)
        .map(|_| MongoServer::start(MongoOptions::rust()))
        .collect();
    let cfg = MongoServer::start(MongoOptions::rust());
    for (k, sh) in shards.iter().enumerate() {
        sh.pymongo(&format!(
            "for b in range(4):\n    client.shop.big.insert_many([{{'_id': b * 1000 + i, 'k': {k}, 'pad': 'x' * 1000}} for i in range(1000)])"
        ));
    }
    let work = tempfile::tempdir().unwrap();
    let s = Stowage::start(&work.path().join("stowage"));
    s.ok(&[
        "instance",
        "add",
        "--name",
        "big",
        "--engine",
        "mongodb",
        "--shard",
        &shards[0].uri(),
        "--shard",
        &shards[1].uri(),
        "--config",
        &cfg.uri(),
        "--max-rate-kbps",
        "1024",
    ]);
    let t = s.json(&["backup", "big", "--no-wait"]);
    let id = t["id"].to_string();
    s.wait_task(t["id"].as_i64().unwrap(), "copying data", |t| {
        t["parts"][1]["progress"]["bytes_done"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    shards[1].kill9();
    let o = s.cli(&["task", "watch", &id]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let t = s.json(&["task", "show", &id]);
    assert_eq!(t["state"], "failed", "{t}");
    let why = t["error"].as_str().unwrap_or("");
    assert!(why.starts_with("shard ") && why.contains("_1"), "{t}");
    for p in t["parts"].as_array().unwrap() {
        assert_eq!(p["state"], "failed", "{t}");
    }
    assert!(
        s.json(&["set", "list"])["sets"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let out = s.ok(&["verify"]);
    assert!(out.contains("repository OK"), "{out}");

    // Back once the shard is: the next backup is complete.
    shards[1].restart();
    let out = s.ok(&["backup", "big"]);
    assert!(out.contains("backup set"), "{out}");
    let set = &s.json(&["set", "list"])["sets"][0];
    assert!(set["bytes_logical"].as_u64().unwrap() > 8_000_000, "{set}");
    s.ok(&["verify"]);
}
