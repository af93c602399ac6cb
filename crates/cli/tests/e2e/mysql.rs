//! MySQL/MariaDB instances through the product: registered (rds `rm-` and
//! polardb `pc-` ids), checked with a least-privilege user, backed up into
//! a set whose consistent point is a binlog position, restored into another
//! registered instance; a crash of Stowage mid-backup leaves a failed task
//! and a sound repository.

use crate::harness::{Stowage, assert_fails, stderr};
use stowage_testkit::{MariaDbOptions, MariaDbServer};

const BACKUP_GRANTS: &str =
    "SELECT, RELOAD, LOCK TABLES, BINLOG MONITOR, SHOW VIEW, TRIGGER, EVENT";

/// `instance add` of a MySQL instance on 127.0.0.1:`port` as `user`, the
/// password read from `pw_file`.
fn add_args(
    name: &str,
    port: u16,
    user: &str,
    pw_file: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "instance",
        "add",
        "--name",
        name,
        "--engine",
        "mysql",
        "--port",
        &port.to_string(),
        "--user",
        user,
        "--password-file",
        pw_file.to_str().unwrap(),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

fn add(
    s: &Stowage,
    name: &str,
    m: &MariaDbServer,
    pw_file: &std::path::Path,
    extra: &[&str],
) -> serde_json::Value {
    s.json(&strs(&add_args(name, m.port, "bk", pw_file, extra)))
}

#[test]
fn a_mariadb_server_is_registered_backed_up_and_restored_into_another() {
    let src = MariaDbServer::start(MariaDbOptions::default());
    src.sql(&format!(
        "CREATE USER 'bk'@'127.0.0.1' IDENTIFIED BY 'right-pw'; GRANT {BACKUP_GRANTS} ON *.* TO 'bk'@'127.0.0.1';
         CREATE USER 'weak'@'127.0.0.1' IDENTIFIED BY 'right-pw'; GRANT SELECT ON *.* TO 'weak'@'127.0.0.1';
         CREATE DATABASE shop; USE shop;
         CREATE TABLE orders (id INT PRIMARY KEY, note VARCHAR(100), total DECIMAL(10,2)) ENGINE=InnoDB;
         INSERT INTO orders SELECT seq, CONCAT('order ', seq), seq / 100 FROM seq_1_to_20000;
         CREATE VIEW big_orders AS SELECT id FROM orders WHERE total > 150;"
    ));
    let work = tempfile::tempdir().unwrap();
    let pw = work.path().join("pw");
    std::fs::write(&pw, "right-pw").unwrap();
    let s = Stowage::start(&work.path().join("stowage"));

    // A user without the privileges is refused at registration, by name.
    let o = s.cli(&strs(&add_args("weak", src.port, "weak", &pw, &[])));
    assert_fails(&o, 2, "RELOAD");
    assert!(stderr(&o).contains("GRANT"), "{}", stderr(&o));
    // A wrong password: refused, the password never echoed.
    let bad = work.path().join("bad");
    std::fs::write(&bad, "wrong-pw").unwrap();
    let o = s.cli(&strs(&add_args("bad", src.port, "bk", &bad, &[])));
    assert!(
        stderr(&o).contains("DatabaseAuthentication"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("wrong-pw"));
    // dbname means nothing for MySQL: refused rather than ignored.
    let o = s.cli(&strs(&add_args(
        "db",
        src.port,
        "bk",
        &pw,
        &["--dbname", "shop"],
    )));
    assert_fails(&o, 2, "dbname");

    let v = add(&s, "shop", &src, &pw, &[]);
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("rm-"), "{v}");
    assert_eq!(v["engine"], "mysql");
    let pc = add(&s, "shop-pc", &src, &pw, &["--dialect", "polardb"]);
    assert!(pc["id"].as_str().unwrap().starts_with("pc-"), "{pc}");
    let out = s.ok(&["instance", "check", "shop"]);
    assert!(
        out.contains("MariaDB 10.11") && out.contains("binary log on"),
        "{out}"
    );

    let out = s.ok(&["backup", "shop"]);
    assert!(
        out.contains("backup set") && out.contains("binlog binlog."),
        "{out}"
    );
    let set = s.json(&["set", "list"])["sets"][0].clone();
    assert_eq!(set["engine"], "mysql", "{set}");
    assert_eq!(set["method"], "logical", "{set}");
    assert!(
        set["consistent_point"]["binlog_position"].as_u64().unwrap() > 0,
        "{set}"
    );
    assert!(
        set["consistent_point"]["gtid_set"]
            .as_str()
            .unwrap()
            .starts_with("0-1-"),
        "{set}"
    );
    let set_id = set["id"].to_string();
    let files = s.ok(&["set", "show", &set_id, "--files"]);
    assert!(
        files.contains("dump/shop.orders.00000.sql")
            && files.contains("dump/shop.orders-schema.sql")
            && files.contains("dump/stowage-dump.json"),
        "{files}"
    );
    // A folder restore says what to do instead.
    let o = s.cli(&["restore", &set_id, "--target", "m1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--into"), "{}", stderr(&o));

    // Into another registered server, renamed.
    let dst = MariaDbServer::start(MariaDbOptions::default());
    dst.sql("CREATE USER 'bk'@'127.0.0.1' IDENTIFIED BY 'right-pw'; GRANT ALL ON *.* TO 'bk'@'127.0.0.1'");
    add(&s, "target", &dst, &pw, &[]);
    let out = s.ok(&[
        "restore",
        &set_id,
        "--into",
        "target",
        "--rename-db",
        "shop=shop2",
    ]);
    assert!(
        out.contains("restored 20000 rows in 1 tables of 1 databases (1 views"),
        "{out}"
    );
    let sum = |m: &MariaDbServer, db: &str| {
        m.sql(&format!("CHECKSUM TABLE {db}.orders"))
            .split('\t')
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(sum(&src, "shop"), sum(&dst, "shop2"));
    assert_eq!(dst.sql("SELECT COUNT(*) FROM shop2.big_orders"), "5000");
    let o = s.cli(&[
        "restore",
        &set_id,
        "--into",
        "target",
        "--rename-db",
        "shop=shop2",
    ]);
    assert_fails(&o, 1, "--drop");
    // Again, replacing the copy, with the source's accounts: refused while
    // the target's user may not pass on privileges, before anything is
    // written; then the target's own bk is left as it is.
    let o = s.cli(&[
        "restore",
        &set_id,
        "--into",
        "target",
        "--rename-db",
        "shop=shop2",
        "--drop",
        "--accounts",
    ]);
    assert_fails(&o, 1, "GRANT OPTION");
    dst.sql("GRANT ALL ON *.* TO 'bk'@'127.0.0.1' WITH GRANT OPTION");
    let out = s.ok(&[
        "restore",
        &set_id,
        "--into",
        "target",
        "--rename-db",
        "shop=shop2",
        "--drop",
        "--accounts",
    ]);
    assert!(
        out.contains("accounts created with their grants: 'weak'@'127.0.0.1'; left as the target had them: 'bk'@'127.0.0.1'"),
        "{out}"
    );
    assert_eq!(
        dst.sql("SHOW GRANTS FOR 'weak'@'127.0.0.1'"),
        src.sql("SHOW GRANTS FOR 'weak'@'127.0.0.1'")
    );
    assert!(
        dst.sql("SHOW GRANTS FOR 'bk'@'127.0.0.1'")
            .contains("GRANT ALL PRIVILEGES"),
        "the target's own account changed"
    );
    // The download: one SQL script that the mariadb client restores.
    let url = s.ok(&["download", "create", &set_id]).trim().to_string();
    assert!(url.contains("/dump.sql?"), "{url}");
    let mut resp = ureq::get(&url).call().unwrap();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap(),
        "application/sql"
    );
    let mut script = Vec::new();
    std::io::copy(&mut resp.body_mut().as_reader(), &mut script).unwrap();
    let plain = MariaDbServer::start(MariaDbOptions::default());
    let mut c = std::process::Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "-h127.0.0.1", "-uroot"])
        .arg(format!("-P{}", plain.port))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), &script).unwrap();
    assert!(c.wait().unwrap().success());
    assert_eq!(sum(&src, "shop"), sum(&plain, "shop"));
    assert_eq!(plain.sql("SELECT COUNT(*) FROM shop.big_orders"), "5000");

    // The next backup builds on the newest set where the user may read the
    // binary log (REPLICATION SLAVE): the dump by reference, only the log
    // since stored. Without the privilege: a new dump that says why.
    src.sql("UPDATE shop.orders SET total = total + 1 WHERE id % 100 = 0; INSERT INTO shop.orders VALUES (20001, 'late', 1.00)");
    s.ok(&["backup", "shop"]);
    let second = s.json(&["set", "list"])["sets"][0].clone();
    let shown = s.ok(&["set", "show", &second["id"].to_string()]);
    assert!(
        shown.contains("new (set") && shown.contains("REPLICATION SLAVE"),
        "{shown}"
    );
    src.sql("GRANT REPLICATION SLAVE ON *.* TO 'bk'@'127.0.0.1'; UPDATE shop.orders SET note = 'changed' WHERE id % 50 = 0");
    s.ok(&["backup", "shop"]);
    let third = s.json(&["set", "list"])["sets"][0].clone();
    assert_eq!(
        third["meta"]["dump"]["reused_from_set"], second["id"],
        "{third}"
    );
    assert!(
        third["bytes_stored"].as_u64().unwrap() * 5 < second["bytes_stored"].as_u64().unwrap(),
        "{third} {second}"
    );
    let third_id = third["id"].to_string();
    let shown = s.ok(&["set", "show", &third_id]);
    assert!(shown.contains("with the binary log since"), "{shown}");
    let out = s.ok(&[
        "restore",
        &third_id,
        "--into",
        "target",
        "--rename-db",
        "shop=shop3",
    ]);
    assert!(out.contains("restored"), "{out}");
    assert_eq!(sum(&src, "shop"), sum(&dst, "shop3"));
    assert_eq!(
        dst.sql("SELECT note FROM shop3.orders WHERE id = 50"),
        "changed"
    );
    // `--full` takes a new dump whatever the newest set.
    s.ok(&["backup", "shop", "--full"]);
    let fourth = s.json(&["set", "list"])["sets"][0].clone();
    assert!(
        fourth["meta"]["dump"]["reused_from_set"].is_null(),
        "{fourth}"
    );

    // Physical: mariadb-backup on this machine, restored into a folder
    // that mariadbd starts on. mariadb-backup needs PROCESS as well.
    let o = s.cli(&["backup", "shop", "--method", "physical"]);
    assert_fails(&o, 1, "PROCESS");
    src.sql("GRANT PROCESS ON *.* TO 'bk'@'127.0.0.1'");
    let out = s.ok(&["backup", "shop", "--method", "physical"]);
    assert!(
        out.contains("backup set") && out.contains("binlog binlog."),
        "{out}"
    );
    let phys = s.json(&["set", "list"])["sets"][0].clone();
    assert_eq!(phys["method"], "physical", "{phys}");
    let phys_id = phys["id"].to_string();
    let out = s.ok(&["restore", &phys_id, "--target", "maria-data"]);
    assert!(out.contains("restored"), "{out}");
    let folder = work.path().join("acc-default").join("maria-data");
    assert!(folder.join("ibdata1").is_file(), "{out}");
    let started = MariaDbServer::start(MariaDbOptions {
        data_from: Some(folder),
        ..Default::default()
    });
    assert_eq!(sum(&src, "shop"), sum(&started, "shop"));
    let o = s.cli(&["restore", &phys_id, "--into", "target"]);
    assert_fails(&o, 2, "--target");
    // Only the operator may have the server's files read on this machine.
    let (ak, sk) = s.new_account_key("tenant");
    let tpw = work.path().join("tpw");
    std::fs::write(&tpw, "right-pw").unwrap();
    let o = s.cli_as(
        &ak,
        &sk,
        &strs(&add_args("t-shop", src.port, "bk", &tpw, &[])),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli_as(&ak, &sk, &["backup", "t-shop", "--method", "physical"]);
    assert_fails(&o, 2, "Forbidden");
    let o = s.cli(&["backup", "shop", "--method", "snapshot"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let restores = s.json(&["task", "list", "--kind", "restore"]);
    assert_eq!(restores["tasks"][0]["state"], "finished", "{restores}");
    assert!(
        restores["tasks"][0]["result"]["target"].is_string(),
        "{restores}"
    );
    assert!(s.log().lines().all(|l| !l.contains("right-pw")));
}

#[test]
fn a_crash_of_stowage_mid_backup_leaves_a_failed_task_and_the_next_backup_works() {
    let src = MariaDbServer::start(MariaDbOptions::default());
    src.sql(&format!(
        "CREATE USER 'bk'@'127.0.0.1' IDENTIFIED BY 'pw'; GRANT {BACKUP_GRANTS} ON *.* TO 'bk'@'127.0.0.1';
         CREATE DATABASE d; USE d;
         CREATE TABLE t (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB;
         INSERT INTO t SELECT seq, REPEAT('p', 150) FROM seq_1_to_100000;"
    ));
    let work = tempfile::tempdir().unwrap();
    let pw = work.path().join("pw");
    std::fs::write(&pw, "pw").unwrap();
    let dd = work.path().join("stowage");
    let mut s = Stowage::start(&dd);
    add(&s, "slow", &src, &pw, &["--max-rate-kbps", "2048"]);
    let t = s.json(&["backup", "slow", "--no-wait"]);
    let id = t["id"].as_i64().unwrap();
    s.wait_task(id, "running with data", |v| {
        v["state"] == "running" && v["progress"]["bytes_done"].as_u64().unwrap_or(0) > 1_000_000
    });
    s.kill9();
    let s = Stowage::start(&dd);
    let v = s.json(&["task", "show", &id.to_string()]);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("interrupted"), "{v}");
    assert!(
        s.json(&["set", "list"])["sets"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(s.ok(&["verify"]).contains("repository OK"));
    // No transaction or lock of the dead backup is left on the server
    // beyond its connections' end.
    s.ok(&["instance", "set", "slow", "--max-rate-kbps", "1048576"]);
    let out = s.ok(&["backup", "slow"]);
    assert!(out.contains("backup set"), "{out}");
    assert!(s.ok(&["verify"]).contains("repository OK"));
}
