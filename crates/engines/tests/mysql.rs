//! MySQL/MariaDB logical backup and restore against real MariaDB 10.11
//! servers started per test: every type bit for bit (`CHECKSUM TABLE` and
//! a hex digest of every row), schema objects, renamed databases, the
//! consistent point under concurrent writers, and the failures a user must
//! see clearly.
#![cfg(feature = "mysql")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use stowage_core::{ConsistentPoint, LiveTask};
use stowage_engines::mysql::{dump, load};
use stowage_engines::{ConnSpec, ErrorKind};
use stowage_repo::{ChunkerParams, KdfParams, LocalStorage, Repository, Storage};
use stowage_testkit::{MariaDbOptions, MariaDbServer};

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

fn conn(m: &MariaDbServer, user: &str, password: Option<&str>) -> ConnSpec {
    ConnSpec {
        host: "127.0.0.1".into(),
        port: m.port,
        user: user.into(),
        password: password.map(stowage_core::Secret::new),
        dbname: None,
        connect_timeout: Duration::from_secs(5),
        tls_mode: stowage_engines::tls::TlsMode::Prefer,
        tls_root_cert: None,
        uri: None,
        options: serde_json::Value::Null,
        addrs: Vec::new(),
        host_check: None,
    }
}

fn opts(threads: usize, range_bytes: u64) -> dump::DumpOptions {
    dump::DumpOptions {
        threads,
        max_rate_kbps: None,
        range_bytes,
        force_lock: false,
        base: None,
    }
}

/// Backs up `m` as root; the set's manifest and outcome.
fn backup(
    r: &Arc<Repository>,
    m: &MariaDbServer,
    o: &dump::DumpOptions,
) -> Result<
    (
        stowage_core::manifest::Manifest,
        stowage_engines::BackupOutcome,
    ),
    stowage_engines::EngineError,
> {
    let mut bw = r.start_backup(2).unwrap();
    let out = dump::backup(&conn(m, "root", None), o, &mut bw, &LiveTask::default())?;
    let (_, man) = bw.finish(BTreeMap::new(), out.meta.clone()).unwrap();
    Ok((man, out))
}

fn restore(
    r: &Arc<Repository>,
    man: &stowage_core::manifest::Manifest,
    dst: &MariaDbServer,
    rename: &[(&str, &str)],
    drop: bool,
) -> Result<serde_json::Value, stowage_engines::EngineError> {
    let o = load::LoadOptions {
        rename: rename
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        drop,
        threads: 2,
        defer_indexes: true,
        accounts: false,
    };
    load::restore(&conn(dst, "root", None), r, man, &o, &LiveTask::default())
}

/// Runs an SQL script with the `mariadb` client, as a user restoring a
/// downloaded dump would.
fn mariadb_stdin(m: &MariaDbServer, script: &[u8]) {
    use std::io::Write;
    let mut c = std::process::Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "-h127.0.0.1", "-uroot"])
        .arg(format!("-P{}", m.port))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(script).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mariadb < dump.sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `CHECKSUM TABLE` of every table of `db`, by table name.
fn checksums(m: &MariaDbServer, db: &str) -> BTreeMap<String, String> {
    let tables = m.sql(&format!(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1"
    ));
    tables
        .lines()
        .map(|t| {
            let out = m.sql(&format!("CHECKSUM TABLE `{db}`.`{t}`"));
            let sum = out.split('\t').nth(1).unwrap_or("").to_string();
            (t.to_string(), sum)
        })
        .collect()
}

/// Every row of a table as hex of every column, in key order: what
/// `CHECKSUM TABLE` would miss (it is row-format based) cannot hide here.
fn hex_rows(m: &MariaDbServer, db: &str, table: &str, cols: &str) -> String {
    let exprs: Vec<String> = cols
        .split(',')
        .map(|c| format!("IFNULL(HEX(`{c}`),'NULL')"))
        .collect();
    m.sql(&format!(
        "SET time_zone = '+00:00'; SELECT {} FROM `{db}`.`{table}` ORDER BY 1",
        exprs.join(",")
    ))
}

const TYPES_SQL: &str = r#"
SET time_zone = '+00:00';
SET sql_mode = '';
CREATE DATABASE shop CHARACTER SET utf8mb4;
USE shop;
CREATE TABLE every_type (
  id INT PRIMARY KEY,
  ti TINYINT, si SMALLINT UNSIGNED, mi MEDIUMINT, bi BIGINT UNSIGNED,
  d DECIMAL(65,30), f FLOAT, db DOUBLE, bt BIT(13), y YEAR,
  dt DATE, dtt DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME(2),
  c CHAR(5), vc VARCHAR(300), lat VARCHAR(20) CHARACTER SET latin1, bn BINARY(4), vb VARBINARY(50),
  tx TEXT, bl BLOB, lb LONGBLOB,
  j JSON, e ENUM('a','b','c'), s SET('x','y','z'),
  g GEOMETRY, p POINT,
  gen_v INT AS (id * 2) VIRTUAL, gen_s VARCHAR(310) AS (CONCAT(vc, '!')) PERSISTENT
) ENGINE=InnoDB COMMENT='táble ✓';
INSERT INTO every_type (id, ti, si, mi, bi, d, f, db, bt, y, dt, dtt, ts, tm, c, vc, lat, bn, vb, tx, bl, lb, j, e, s, g, p) VALUES
 (1, -128, 65535, -8388608, 18446744073709551615,
  '12345678901234567890123456789012345.123456789012345678901234567891', 1.2345678, 0.1 + 0.2, b'1010101010101', 2155,
  '0000-00-00', '1000-01-01 00:00:00.000001', '2038-01-19 03:14:07.999', '-838:59:59.99',
  'ab', 'emoji 😀 and ünïcödé', x'636166E9', x'00ff10', x'000102',
  'line1\nline2\r\n\ttab \\ back\'quote"dq', x'00010203FFFE1A5C27', REPEAT(x'AB00', 70000),
  '{"k": [1, 2.5, "ü", null, {"n": true}]}', 'b', 'x,z',
  ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0))'), POINT(1.5, -2.25)),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, 0, 0, 0, 0, '-0.000000000000000000000000000001', -3.4e38, 1.7976931348623157e308, b'0', 1901,
  '2024-02-29', '2024-02-29 23:59:59.5', '1970-01-01 00:00:01', '00:00:00',
  '', '', '', x'', x'', '', x'', x'', '[]', 'a', '', ST_GeomFromText('LINESTRING(0 0,1 1,2 1)'), POINT(0, 0)),
 (4, 1, 2, 3, 4, '0.5', 1e-38, -2.2250738585072014e-308, b'1111111111111', 2000,
  '9999-12-31', '2010-00-00 00:00:00', '2000-06-15 12:00:00', '838:59:59',
  'zzzzz', CONCAT('semi; colon', CHAR(10), ');', CHAR(10)), 'x', x'FFFFFFFF', x'0A3B0A', 'ends with ;', x'3B0A', x'0A', '"str"', 'c', 'x,y,z', NULL, NULL);
CREATE TABLE composite (a INT, b VARCHAR(10), v INT, PRIMARY KEY (a, b)) ENGINE=InnoDB;
INSERT INTO composite SELECT seq % 7, CONCAT('k', seq), seq FROM seq_1_to_3000;
CREATE TABLE nokey (v VARCHAR(20), n INT) ENGINE=InnoDB;
INSERT INTO nokey SELECT CONCAT('v', seq % 13), seq FROM seq_1_to_2000;
INSERT INTO nokey VALUES ('dup', 1), ('dup', 1);
CREATE TABLE big (id BIGINT PRIMARY KEY AUTO_INCREMENT, pad VARCHAR(200), KEY pad_k (pad(10)), KEY both_k (pad(3), id)) ENGINE=InnoDB;
INSERT INTO big (pad) SELECT REPEAT(CHAR(65 + seq % 26), 150) FROM seq_1_to_30000;
CREATE TABLE legacy (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=MyISAM;
INSERT INTO legacy VALUES (1, 'one'), (2, 'two');
CREATE TABLE `odd.name ü` (`col ``q` INT PRIMARY KEY, `x` INT) ENGINE=InnoDB;
INSERT INTO `odd.name ü` VALUES (1, 2);
CREATE TABLE child (id INT PRIMARY KEY, big_id BIGINT, FOREIGN KEY (big_id) REFERENCES big(id)) ENGINE=InnoDB;
INSERT INTO child VALUES (1, 5), (2, 7);
CREATE VIEW v_big AS SELECT id, LEFT(pad, 3) AS p FROM big WHERE id < 10;
CREATE VIEW v_on_v AS SELECT COUNT(*) AS n FROM v_big;
CREATE TABLE audit (n INT);
CREATE TRIGGER legacy_ins AFTER INSERT ON legacy FOR EACH ROW INSERT INTO audit VALUES (NEW.id);
DELIMITER //
CREATE PROCEDURE add_legacy(IN i INT) BEGIN INSERT INTO legacy VALUES (i, 'p'); SELECT 1; END//
DELIMITER ;
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE DO DELETE FROM audit;
CREATE SEQUENCE seq1 START WITH 100 INCREMENT BY 5 CACHE 10;
CREATE TABLE numbered (n BIGINT PRIMARY KEY DEFAULT NEXTVAL(seq1), v INT) ENGINE=InnoDB;
INSERT INTO numbered (v) SELECT seq FROM seq_1_to_25;
CREATE DATABASE second;
CREATE TABLE second.t (id INT PRIMARY KEY, ref_big BIGINT) ENGINE=InnoDB;
INSERT INTO second.t VALUES (1, 1);
CREATE VIEW second.cross_v AS SELECT t.id, b.pad FROM second.t JOIN shop.big b ON b.id = t.ref_big;
"#;

const EVERY_TYPE_COLS: &str =
    "id,ti,si,mi,bi,d,f,db,bt,y,dt,dtt,ts,tm,c,vc,lat,bn,vb,tx,bl,lb,j,e,s,g,p,gen_v,gen_s";

#[test]
fn every_type_and_object_restores_bit_for_bit_into_renamed_databases() {
    let src = MariaDbServer::start(MariaDbOptions::default());
    src.sql(TYPES_SQL);
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    // Small ranges: the 30,000-row table is cut into several.
    let (man, out) = backup(&r, &src, &opts(2, 1 << 20)).unwrap();
    let ConsistentPoint::Binlog {
        binlog_file,
        binlog_position,
        gtid_set,
        ..
    } = &out.consistent_point
    else {
        panic!("{:?}", out.consistent_point)
    };
    assert!(binlog_file.as_deref().unwrap().starts_with("binlog."));
    assert!(binlog_position.unwrap() > 4);
    assert!(
        gtid_set.as_deref().unwrap().starts_with("0-1-"),
        "{gtid_set:?}"
    );
    // A MyISAM table: the snapshots were lined up under the brief lock.
    assert_eq!(out.meta["lineup"]["method"], "read_lock", "{}", out.meta);
    let files: Vec<&str> = man.archives[0]
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert!(
        files.iter().filter(|f| f.starts_with("shop.big.")).count() > 2,
        "{files:?}"
    );
    assert!(files.contains(&"stowage-dump.json"), "{files:?}");

    let dst = MariaDbServer::start(MariaDbOptions::default());
    let st = restore(&r, &man, &dst, &[("shop", "shop2")], false).unwrap();
    assert_eq!(st["databases"], 2, "{st}");
    // `big`'s two secondary indexes were built after its rows.
    assert_eq!(st["tables_with_deferred_indexes"], 1, "{st}");
    assert_eq!(st["views"], 3, "{st}");
    assert_eq!(st["objects"], 4, "{st}");

    // Column by column first, so a failure names the type.
    for col in EVERY_TYPE_COLS.split(',') {
        assert_eq!(
            hex_rows(&src, "shop", "every_type", &format!("id,{col}")),
            hex_rows(&dst, "shop2", "every_type", &format!("id,{col}")),
            "column {col}"
        );
    }
    assert_eq!(checksums(&src, "shop"), checksums(&dst, "shop2"));
    assert_eq!(checksums(&src, "second"), checksums(&dst, "second"));
    assert_eq!(
        hex_rows(&src, "shop", "nokey", "v,n"),
        hex_rows(&dst, "shop2", "nokey", "v,n")
    );
    // Schema: identical definitions (the database name aside).
    for t in [
        "every_type",
        "composite",
        "nokey",
        "big",
        "legacy",
        "odd.name ü",
        "child",
    ] {
        let a = src.sql(&format!("SHOW CREATE TABLE shop.`{t}`"));
        let b = dst.sql(&format!("SHOW CREATE TABLE shop2.`{t}`"));
        assert_eq!(
            a.split('\t')
                .nth(1)
                .map(|s| s.replace(" AUTO_INCREMENT=30001", "")),
            b.split('\t')
                .nth(1)
                .map(|s| s.replace(" AUTO_INCREMENT=30001", "")),
            "{t}"
        );
    }
    // Views, the trigger, the routines, the event: in the renamed database,
    // and working.
    assert_eq!(dst.sql("SELECT n FROM shop2.v_on_v"), "9");
    assert_eq!(dst.sql("SELECT COUNT(*) FROM second.cross_v"), "1");
    assert!(
        dst.sql("SHOW CREATE VIEW second.cross_v")
            .contains("`shop2`.`big`"),
        "the cross-database view follows the rename"
    );
    assert_eq!(dst.sql("SELECT shop2.twice(21)"), "42");
    // The sequence: same definition, and its next value is past every
    // value the rows hold.
    let def = |m: &MariaDbServer, db: &str| {
        m.sql(&format!("SHOW CREATE SEQUENCE {db}.seq1"))
            .split('\t')
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(def(&src, "shop"), def(&dst, "shop2"));
    let next: i64 = dst.sql("SELECT NEXTVAL(shop2.seq1)").parse().unwrap();
    let max: i64 = dst
        .sql("SELECT MAX(n) FROM shop2.numbered")
        .parse()
        .unwrap();
    assert!(next > max, "{next} <= {max}");
    dst.sql("INSERT INTO shop2.numbered (v) VALUES (99)");
    // The trigger did not fire on restored rows, and fires on new ones.
    assert_eq!(dst.sql("SELECT COUNT(*) FROM shop2.audit"), "0");
    dst.sql("CALL shop2.add_legacy(3)");
    assert_eq!(dst.sql("SELECT n FROM shop2.audit"), "3");
    assert_eq!(
        dst.sql(
            "SELECT EVENT_NAME, STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'shop2'"
        ),
        "nightly\tDISABLED"
    );

    // The export: one SQL script the mariadb client restores as it is.
    let mut script = Vec::new();
    let info = stowage_engines::mysql::export::export_sql(&r, &man, "dump", &mut script).unwrap();
    assert_eq!(info.bytes, script.len() as u64);
    let plain = MariaDbServer::start(MariaDbOptions::default());
    mariadb_stdin(&plain, &script);
    assert_eq!(checksums(&src, "shop"), checksums(&plain, "shop"));
    assert_eq!(checksums(&src, "second"), checksums(&plain, "second"));
    assert_eq!(
        hex_rows(&src, "shop", "every_type", EVERY_TYPE_COLS),
        hex_rows(&plain, "shop", "every_type", EVERY_TYPE_COLS)
    );
    assert_eq!(plain.sql("SELECT n FROM shop.v_on_v"), "9");
    assert_eq!(plain.sql("SELECT shop.twice(4)"), "8");
    let next: i64 = plain.sql("SELECT NEXTVAL(shop.seq1)").parse().unwrap();
    assert!(next > 220, "{next}");
    assert_eq!(plain.sql("SELECT COUNT(*) FROM shop.audit"), "0");
    plain.sql("INSERT INTO shop.legacy VALUES (50, 'x')");
    assert_eq!(plain.sql("SELECT n FROM shop.audit"), "50");

    // Restoring again is refused while the databases exist, then replaces
    // them with --drop.
    let e = restore(&r, &man, &dst, &[("shop", "shop2")], false).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("--drop"), "{}", e.message);
    dst.sql("INSERT INTO shop2.legacy VALUES (99, 'later')");
    restore(&r, &man, &dst, &[("shop", "shop2")], true).unwrap();
    assert_eq!(checksums(&src, "shop"), checksums(&dst, "shop2"));
    // Unknown database to rename, system database as a target.
    let e = restore(&r, &man, &dst, &[("nope", "x")], true).unwrap_err();
    assert!(e.message.contains("no database \"nope\""), "{}", e.message);
    let e = restore(&r, &man, &dst, &[("shop", "mysql")], true).unwrap_err();
    assert!(e.message.contains("server's own"), "{}", e.message);
}

/// The binlog file and position a set is consistent at.
fn binlog_point(out: &stowage_engines::BackupOutcome) -> (String, u64) {
    match &out.consistent_point {
        ConsistentPoint::Binlog {
            binlog_file: Some(file),
            binlog_position: Some(pos),
            ..
        } => (file.clone(), *pos),
        p => panic!("{p:?}"),
    }
}

/// Moves money between 200 accounts in transactions (and, with `myisam`,
/// appends to a MyISAM ledger in the same loop) until `stop`.
fn transfers(
    m: &MariaDbServer,
    seed: u64,
    myisam: bool,
    pause: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let c = conn(m, "root", None);
    std::thread::spawn(move || {
        let rt = stowage_engines::mysql::runtime().unwrap();
        let mut s = stowage_engines::mysql::Session::connect(&rt, &c).unwrap();
        let mut x = seed;
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b, amt) = ((x >> 33) % 200, (x >> 17) % 200, (x >> 7) % 50);
            // Rows locked in key order: writers never deadlock each other.
            let (first, second, d1, d2) = if a <= b {
                (a, b, -(amt as i64), amt as i64)
            } else {
                (b, a, amt as i64, -(amt as i64))
            };
            // As an application does: a transaction the server rolled
            // back for a lock wait timeout is run again. (One writer's
            // statement waiting for a row lock of another writer, which
            // waits for the global read lock, holds FLUSH TABLES WITH READ
            // LOCK back until InnoDB's lock wait timeout ends the cycle.)
            loop {
                let tx = (|| {
                    s.exec("START TRANSACTION")?;
                    s.exec(format!(
                        "UPDATE bank.accounts SET balance = balance + ({d1}) WHERE id = {first}"
                    ))?;
                    s.exec(format!(
                        "UPDATE bank.accounts SET balance = balance + ({d2}) WHERE id = {second}"
                    ))?;
                    s.exec(format!(
                        "INSERT INTO bank.moves (a, b, amt) VALUES ({a}, {b}, {amt})"
                    ))?;
                    s.exec("COMMIT")
                })();
                match tx {
                    Ok(()) => break,
                    Err(e) if e.message.contains("(error 1205)") => {
                        eprintln!("writer {seed}: {}; run again", e.message);
                        s.exec("ROLLBACK").unwrap();
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
            if myisam {
                s.exec(format!(
                    "INSERT INTO bank.ledger (a, amt) VALUES ({a}, {amt})"
                ))
                .unwrap();
            }
            n += 1;
            std::thread::sleep(pause);
        }
        n
    })
}

/// The source's state at a binlog position: a fresh server fed the
/// source's binary log up to it with `mariadb-binlog --stop-position`.
fn replayed_to(src: &MariaDbServer, file: &str, pos: u64) -> MariaDbServer {
    let mut files: Vec<_> = std::fs::read_dir(&src.data)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("binlog.0") && n.as_str() <= file)
        .collect();
    files.sort();
    let replica = MariaDbServer::start(MariaDbOptions {
        extra: vec![
            "--gtid-strict-mode=0".into(),
            "--max-allowed-packet=256M".into(),
        ],
        ..Default::default()
    });
    let script = format!(
        "mariadb-binlog --no-defaults --stop-position={pos} {} | mariadb --no-defaults --max-allowed-packet=256M --protocol=TCP -h127.0.0.1 -uroot -P{}",
        files
            .iter()
            .map(|f| src.data.join(f).display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        replica.port
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    replica
}

/// Returns the lineup method the backup used.
fn consistent_under_writers(myisam: bool, pause: Duration) -> String {
    let src = MariaDbServer::start(MariaDbOptions::default());
    src.sql(&format!(
        "CREATE DATABASE bank; USE bank;
         CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO accounts SELECT seq, 1000 FROM seq_0_to_199;
         CREATE TABLE moves (id BIGINT PRIMARY KEY AUTO_INCREMENT, a INT, b INT, amt INT) ENGINE=InnoDB;
         CREATE TABLE filler (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB;
         INSERT INTO filler SELECT seq, REPEAT('f', 150) FROM seq_1_to_100000;
         CREATE TABLE ledger (id BIGINT PRIMARY KEY AUTO_INCREMENT, a INT, amt INT) ENGINE={};",
        if myisam { "MyISAM" } else { "InnoDB" }
    ));
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|i| transfers(&src, 7 + i, myisam, pause, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Throttled, so the writers keep writing through the whole dump.
    let o = dump::DumpOptions {
        max_rate_kbps: Some(8_000),
        ..opts(2, 4 << 20)
    };
    let (man, out) = backup(&r, &src, &o).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moved: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    eprintln!("lineup {} after {moved} transfers", out.meta["lineup"]);
    if myisam {
        assert_eq!(out.meta["lineup"]["method"], "read_lock", "{}", out.meta);
    }
    let (file, pos) = &binlog_point(&out);
    let dst = MariaDbServer::start(MariaDbOptions::default());
    restore(&r, &man, &dst, &[], false).unwrap();
    // No money made or lost.
    assert_eq!(dst.sql("SELECT SUM(balance) FROM bank.accounts"), "200000");
    let at_point = replayed_to(&src, file, *pos);
    // Writes went on after the point, so the source has moved on …
    assert_ne!(checksums(&src, "bank"), checksums(&at_point, "bank"));
    // … and the restored data is exactly the state at the point.
    assert_eq!(
        checksums(&dst, "bank"),
        checksums(&at_point, "bank"),
        "lineup {}; point {file}:{pos}; moves restored {} / at the point {} (max id {} / {})",
        out.meta["lineup"],
        dst.sql("SELECT COUNT(*) FROM bank.moves"),
        at_point.sql("SELECT COUNT(*) FROM bank.moves"),
        dst.sql("SELECT MAX(id) FROM bank.moves"),
        at_point.sql("SELECT MAX(id) FROM bank.moves"),
    );
    let n_moves: u64 = dst.sql("SELECT COUNT(*) FROM bank.moves").parse().unwrap();
    assert!(n_moves > 0 && n_moves < moved, "{n_moves} of {moved}");
    out.meta["lineup"]["method"].as_str().unwrap().to_string()
}

#[test]
fn innodb_tables_are_consistent_at_the_recorded_binlog_position_under_transfers() {
    // Writers as fast as they go: the snapshots are lined up without a
    // lock when their positions agree, else under the brief lock; either
    // way the result is the state at the recorded position.
    consistent_under_writers(false, Duration::ZERO);
    // Writers with pauses: lined up without any lock.
    assert_eq!(
        consistent_under_writers(false, Duration::from_millis(20)),
        "snapshot"
    );
}

#[test]
fn a_myisam_table_written_during_the_backup_lands_at_the_same_point() {
    consistent_under_writers(true, Duration::ZERO);
}

#[test]
fn without_writers_the_snapshots_line_up_without_a_lock() {
    let src = MariaDbServer::start(MariaDbOptions::default());
    src.sql("CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO d.t VALUES (1), (2);");
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    let (_, out) = backup(&r, &src, &opts(2, 1 << 20)).unwrap();
    assert_eq!(out.meta["lineup"]["method"], "snapshot", "{}", out.meta);
    assert_eq!(out.meta["lineup"]["attempts"], 1, "{}", out.meta);
}

#[test]
fn credentials_and_each_missing_privilege_are_named() {
    let m = MariaDbServer::start(MariaDbOptions::default());
    let all = [
        "SELECT",
        "RELOAD",
        "LOCK TABLES",
        "BINLOG MONITOR",
        "SHOW VIEW",
        "TRIGGER",
        "EVENT",
    ];
    m.sql("CREATE USER 'bk'@'127.0.0.1' IDENTIFIED BY 'pw-right'");
    m.sql(&format!(
        "GRANT {} ON *.* TO 'bk'@'127.0.0.1'",
        all.join(", ")
    ));
    let engine = stowage_engines::engine_for("mysql").unwrap();
    let info = engine.check(&conn(&m, "bk", Some("pw-right"))).unwrap();
    assert!(info.version.starts_with("10.11."), "{info:?}");
    assert_eq!(info.details["flavor"], "mariadb");

    let e = engine.check(&conn(&m, "bk", Some("pw-wrong"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Authentication, "{e:?}");
    assert!(!e.message.contains("pw-wrong"), "{}", e.message);

    for (i, p) in all.iter().enumerate() {
        let user = format!("bk{i}");
        let rest: Vec<&str> = all.iter().filter(|x| *x != p).copied().collect();
        m.sql(&format!(
            "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw'; GRANT {} ON *.* TO '{user}'@'127.0.0.1'",
            rest.join(", ")
        ));
        let e = engine.check(&conn(&m, &user, Some("pw"))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permission, "{p}: {e:?}");
        assert!(
            e.message.contains(&format!("privilege {p} ")),
            "{p}: {}",
            e.message
        );
        assert!(e.message.contains("GRANT"), "{}", e.message);
    }
    // The older name of BINLOG MONITOR counts as it.
    m.sql("CREATE USER 'old'@'127.0.0.1' IDENTIFIED BY 'pw'; GRANT SELECT, RELOAD, LOCK TABLES, REPLICATION CLIENT, SHOW VIEW, TRIGGER, EVENT ON *.* TO 'old'@'127.0.0.1'");
    engine.check(&conn(&m, "old", Some("pw"))).unwrap();

    // No server at all.
    let mut gone = conn(&m, "bk", Some("pw-right"));
    gone.port = stowage_testkit::free_port();
    let e = engine.check(&gone).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e:?}");
}

#[test]
fn a_server_killed_mid_backup_fails_the_backup_clearly() {
    let mut m = MariaDbServer::start(MariaDbOptions::default());
    m.sql("CREATE DATABASE d; USE d; CREATE TABLE t (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB; INSERT INTO t SELECT seq, REPEAT('p', 150) FROM seq_1_to_100000;");
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    let pid = m.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        stowage_testkit::signal(pid, "KILL");
    });
    let o = dump::DumpOptions {
        max_rate_kbps: Some(2_000),
        ..opts(2, 1 << 20)
    };
    let mut bw = r.start_backup(2).unwrap();
    let e = dump::backup(&conn(&m, "root", None), &o, &mut bw, &LiveTask::default()).unwrap_err();
    killer.join().unwrap();
    drop(bw);
    assert_eq!(e.kind, ErrorKind::ServerGone, "{e:?}");
    assert!(e.message.contains("lost"), "{}", e.message);
    m.kill9();
    assert!(r.verify(0, &|_, _| {}).unwrap().ok());
}

#[test]
fn a_table_altered_during_the_backup_fails_it_by_name() {
    let m = MariaDbServer::start(MariaDbOptions::default());
    m.sql("CREATE DATABASE d; USE d; CREATE TABLE a (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB; INSERT INTO a SELECT seq, REPEAT('p', 150) FROM seq_1_to_60000; CREATE TABLE z (id INT PRIMARY KEY, v INT) ENGINE=InnoDB; INSERT INTO z SELECT seq, seq FROM seq_1_to_60000;");
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    let port = m.port;
    let alter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let out = std::process::Command::new("mariadb")
            .args(["--no-defaults", "--protocol=TCP", "-h127.0.0.1", "-uroot"])
            .arg(format!("-P{port}"))
            .args([
                "-e",
                "ALTER TABLE d.z ADD COLUMN w INT NOT NULL DEFAULT 7, FORCE",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    // One worker, throttled: the ALTER lands while `a` is being read.
    let o = dump::DumpOptions {
        max_rate_kbps: Some(4_000),
        ..opts(1, 1 << 30)
    };
    let mut bw = r.start_backup(2).unwrap();
    let e = dump::backup(&conn(&m, "root", None), &o, &mut bw, &LiveTask::default()).unwrap_err();
    alter.join().unwrap();
    assert!(e.message.contains("altered"), "{e:?}");
    assert!(e.message.contains("z"), "{e:?}");
}

#[test]
fn a_64_mib_longblob_restores_bit_for_bit() {
    let big = MariaDbOptions {
        extra: vec!["--max-allowed-packet=512M".into()],
        ..Default::default()
    };
    let src = MariaDbServer::start(big.clone());
    src.sql("CREATE DATABASE d; USE d; CREATE TABLE b (id INT PRIMARY KEY, v LONGBLOB) ENGINE=InnoDB; INSERT INTO b SELECT 1, RANDOM_BYTES(1024) FROM DUAL; UPDATE b SET v = REPEAT(CONCAT(v, x'00275C0A0D1A'), 65536) WHERE id = 1; INSERT INTO b VALUES (2, 'small');");
    assert_eq!(
        src.sql("SELECT LENGTH(v) FROM d.b WHERE id = 1"),
        (1030 * 65536).to_string()
    );
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    let (man, _) = backup(&r, &src, &opts(2, 64 << 20)).unwrap();
    // A target with the default packet size cannot take the row: refused
    // before anything is written, saying what to raise.
    let small = MariaDbServer::start(MariaDbOptions::default());
    let e = restore(&r, &man, &small, &[], false).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("max_allowed_packet"), "{}", e.message);
    assert_eq!(
        small.sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'd'"),
        "0"
    );
    let dst = MariaDbServer::start(big);
    restore(&r, &man, &dst, &[], false).unwrap();
    assert_eq!(checksums(&src, "d"), checksums(&dst, "d"));
    assert_eq!(
        src.sql("SELECT SHA2(v, 256) FROM d.b ORDER BY id"),
        dst.sql("SELECT SHA2(v, 256) FROM d.b ORDER BY id")
    );
}

#[test]
fn a_physical_backup_under_writers_restores_into_a_folder_mariadbd_starts_on() {
    use std::sync::atomic::AtomicBool;
    use stowage_engines::mysql::physical;
    let src = MariaDbServer::start(MariaDbOptions::default());
    src.sql(
        "CREATE DATABASE bank; USE bank;
         CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO accounts SELECT seq, 1000 FROM seq_0_to_199;
         CREATE TABLE moves (id BIGINT PRIMARY KEY AUTO_INCREMENT, a INT, b INT, amt INT) ENGINE=InnoDB;
         CREATE TABLE filler (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB;
         INSERT INTO filler SELECT seq, REPEAT('f', 150) FROM seq_1_to_100000;
         CREATE TABLE ledger (id BIGINT PRIMARY KEY AUTO_INCREMENT, a INT, amt INT) ENGINE=MyISAM;",
    );
    let work = tempfile::tempdir().unwrap();
    let r = repo(&work.path().join("repo"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|i| transfers(&src, 11 + i, true, Duration::ZERO, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let live = LiveTask::default();
    let mut bw = r.start_backup(2).unwrap();
    let out = physical::backup(&conn(&src, "root", None), None, 2, &mut bw, &live).unwrap();
    let (snap, man) = bw.finish(BTreeMap::new(), out.meta.clone()).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let _ = snap;
    assert_eq!(man.archives.len(), 1);
    assert_eq!(man.archives[0].name, "data");
    let names: Vec<&str> = man.archives[0]
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert!(
        names.contains(&"ibdata1")
            && names.contains(&"xtrabackup_binlog_info")
            && names.iter().any(|n| n.starts_with("bank/filler.")),
        "{names:?}"
    );
    assert!(live.bytes_done.load(std::sync::atomic::Ordering::Relaxed) > 10_000_000);
    let (file, pos) = &binlog_point(&out);

    // Into a folder, prepared: a data directory.
    let target = work.path().join("restored");
    let engine = stowage_engines::engine_for("mysql").unwrap();
    let targets = engine.restore_targets(&man, &target).unwrap();
    let plan = stowage_repo::restore::plan(&man, &r.index(), &targets).unwrap();
    r.restore(
        &plan,
        &stowage_repo::restore::RestoreOptions::default(),
        &|_, _| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    engine
        .after_restore(&man, &target, &targets, false)
        .unwrap();
    let restored = MariaDbServer::start(MariaDbOptions {
        data_from: Some(target),
        ..Default::default()
    });
    assert_eq!(
        restored.sql("SELECT SUM(balance) FROM bank.accounts"),
        "200000"
    );
    let at_point = replayed_to(&src, file, *pos);
    assert_eq!(checksums(&restored, "bank"), checksums(&at_point, "bank"));

    // A physical set restores into a folder, not into a server.
    let e = engine
        .restore_into(
            &conn(&at_point, "root", None),
            &r,
            &man,
            &Default::default(),
            &LiveTask::default(),
        )
        .unwrap_err();
    assert!(e.message.contains("--target"), "{}", e.message);
}

#[test]
fn objects_that_would_act_on_the_original_engines_whose_rows_live_elsewhere_and_odd_names() {
    let src = MariaDbServer::start(MariaDbOptions::default());
    src.sql(
        "SET GLOBAL event_scheduler = OFF;
         CREATE DATABASE a; USE a;
         CREATE TABLE log (n INT) ENGINE=InnoDB;
         CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB;
         CREATE TRIGGER t_ins AFTER INSERT ON t FOR EACH ROW INSERT INTO a.log VALUES (NEW.id);
         CREATE EVENT tick ON SCHEDULE EVERY 1 HOUR DO INSERT INTO `a`.`log` VALUES (0);
         CREATE TABLE m1 (id INT, v INT) ENGINE=MyISAM; CREATE TABLE m2 (id INT, v INT) ENGINE=MyISAM;
         INSERT INTO m1 VALUES (1, 1), (2, 2); INSERT INTO m2 VALUES (3, 3);
         CREATE TABLE m (id INT, v INT) ENGINE=MRG_MyISAM UNION=(m1, m2);
         CREATE TABLE p (created DATE NOT NULL, id INT NOT NULL AUTO_INCREMENT, v INT,
           PRIMARY KEY (created, id), KEY id (id), KEY v (v)) ENGINE=InnoDB;
         INSERT INTO p (created, v) SELECT '2024-01-01' + INTERVAL seq DAY, seq FROM seq_1_to_500;
         CREATE VIEW z_v AS SELECT id FROM t; CREATE VIEW a_v AS SELECT * FROM z_v;",
    );
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    let (man, out) = backup(&r, &src, &opts(2, 1 << 20)).unwrap();
    // The MERGE table's rows are its underlying tables': not dumped twice.
    let files: Vec<&str> = man.archives[0]
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert!(!files.iter().any(|f| f.starts_with("a.m.0")), "{files:?}");
    assert!(files.contains(&"a.m-schema.sql"), "{files:?}");
    // MyISAM tables: lined up under the lock; the MERGE table alone would not.
    assert_eq!(out.meta["lineup"]["method"], "read_lock", "{}", out.meta);

    // Into another name: the trigger names `a` unquoted, which the rename
    // cannot follow; refused before anything is written.
    let dst = MariaDbServer::start(MariaDbOptions::default());
    let e = restore(&r, &man, &dst, &[("a", "b")], false).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(
        e.message.contains("trigger a.t_ins") && e.message.contains("without backquotes"),
        "{}",
        e.message
    );
    assert_eq!(
        dst.sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'b'"),
        "0"
    );
    // Under its own name it restores whole: MERGE rows once, the table whose
    // AUTO_INCREMENT column's index must stay, views in dependency order.
    let st = restore(&r, &man, &dst, &[], false).unwrap();
    assert_eq!(st["events_disabled"].as_array().unwrap().len(), 0, "{st}");
    assert_eq!(dst.sql("SELECT COUNT(*) FROM a.m"), "3");
    assert_eq!(checksums(&src, "a"), checksums(&dst, "a"));
    assert_eq!(
        src.sql("SHOW CREATE TABLE a.p").split('\t').nth(1),
        dst.sql("SHOW CREATE TABLE a.p").split('\t').nth(1)
    );
    // The SQL download restores with the client too (views in order).
    let mut script = Vec::new();
    stowage_engines::mysql::export::export_sql(&r, &man, "dump", &mut script).unwrap();
    assert!(script.starts_with(b"/*M!999999\\- enable the sandbox mode */\n"));
    let plain = MariaDbServer::start(MariaDbOptions::default());
    mariadb_stdin(&plain, &script);
    assert_eq!(checksums(&src, "a"), checksums(&plain, "a"));
    assert_eq!(plain.sql("SELECT COUNT(*) FROM a.a_v"), "0");

    // A renamed restore of objects that quote their names: events disabled.
    src.sql("DROP TRIGGER a.t_ins; USE a; CREATE TRIGGER t_ins AFTER INSERT ON t FOR EACH ROW INSERT INTO `a`.`log` VALUES (NEW.id);");
    let (man2, _) = backup(&r, &src, &opts(2, 1 << 20)).unwrap();
    let st = restore(&r, &man2, &dst, &[("a", "b")], false).unwrap();
    assert_eq!(st["events_disabled"], serde_json::json!(["b.tick"]), "{st}");
    assert_eq!(
        dst.sql("SELECT STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'b'"),
        "DISABLED"
    );
    dst.sql("INSERT INTO b.t VALUES (7)");
    assert_eq!(dst.sql("SELECT n FROM b.log"), "7");
    assert_eq!(src.sql("SELECT COUNT(*) FROM a.log"), "0");

    // A name a dump cannot carry: refused at backup, by name.
    src.sql("CREATE DATABASE `x\n\\! echo pwned`");
    let e = backup(&r, &src, &opts(2, 1 << 20)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("control character"), "{}", e.message);
}

/// Backs up `m` building on `base` (a set of `r` and its id).
fn backup_on(
    r: &Arc<Repository>,
    m: &MariaDbServer,
    base: Option<(i64, &stowage_core::manifest::Manifest)>,
) -> (
    stowage_core::manifest::Manifest,
    stowage_engines::BackupOutcome,
    u64,
) {
    let o = dump::DumpOptions {
        base: base.map(|(id, man)| stowage_engines::BaseSet {
            id,
            manifest: Arc::new(man.clone()),
        }),
        ..opts(2, 1 << 20)
    };
    let mut bw = r.start_backup(2).unwrap();
    let stats = bw.stats();
    let out = dump::backup(&conn(m, "root", None), &o, &mut bw, &LiveTask::default()).unwrap();
    let (_, man) = bw.finish(BTreeMap::new(), out.meta.clone()).unwrap();
    let stored = stats
        .bytes_stored
        .load(std::sync::atomic::Ordering::Relaxed);
    (man, out, stored)
}

/// Sets built on the binary log: each set reuses the dump and stores the
/// log since; restored (as it is, renamed, or through its SQL download)
/// it equals the source replayed to the set's point. Statement-format
/// events (`binlog_format=MIXED`, MariaDB's default) and row events.
fn chain_of_sets(format: &str) {
    let src = MariaDbServer::start(MariaDbOptions {
        extra: vec![format!("--binlog-format={format}")],
        ..Default::default()
    });
    src.sql(
        "CREATE DATABASE bank; USE bank;
         CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO accounts SELECT seq, 1000 FROM seq_0_to_199;
         CREATE TABLE moves (id BIGINT PRIMARY KEY AUTO_INCREMENT, a INT, b INT, amt INT) ENGINE=InnoDB;
         CREATE TABLE filler (id INT PRIMARY KEY, pad VARCHAR(200), KEY p (pad(5))) ENGINE=InnoDB;
         INSERT INTO filler SELECT seq, CONCAT(SHA2(seq, 256), SHA2(seq + 1, 256)) FROM seq_1_to_60000;
         CREATE TABLE notes (id INT PRIMARY KEY, body TEXT, at DATETIME) ENGINE=MyISAM;
         CREATE TABLE audit (n INT) ENGINE=InnoDB;
         CREATE TRIGGER notes_ins AFTER INSERT ON notes FOR EACH ROW INSERT INTO audit VALUES (NEW.id);
         CREATE VIEW `rich` AS SELECT id FROM `bank`.`accounts` WHERE balance > 1000;",
    );
    let dir = tempfile::tempdir().unwrap();
    let r = repo(dir.path());
    let (man1, out1, stored1) = backup_on(&r, &src, None);
    assert!(out1.meta["binlog_end"]["file"].is_string(), "{}", out1.meta);

    // Between the sets: transfers, DDL, a new database, statements with
    // per-session state, odd bytes, and what a restore must leave out.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|i| transfers(&src, 3 + i, false, Duration::from_millis(2), stop.clone()))
        .collect();
    src.sql(
        "USE bank;
         UPDATE filler SET pad = CONCAT(pad, 'x') WHERE id % 100 = 0;
         DELETE FROM filler WHERE id % 997 = 0;
         ALTER TABLE filler ADD COLUMN extra INT NOT NULL DEFAULT 7;
         SET time_zone = '+05:00';
         INSERT INTO notes VALUES (1, 'quote \\' and ; and /*!*/; and \\n newline', NOW()), (2, x'00E9FF', '2024-01-01');
         SET time_zone = SYSTEM;
         CREATE DATABASE later;
         CREATE TABLE later.t (id INT PRIMARY KEY, v VARCHAR(20));
         INSERT INTO later.t VALUES (1, 'one'), (2, 'two');
         CREATE USER 'intruder'@'%' IDENTIFIED BY 'x';
         GRANT ALL ON *.* TO 'intruder'@'%';
         SET @v = 41; UPDATE accounts SET balance = balance + 0 * @v WHERE id = 1;",
    );
    std::thread::sleep(Duration::from_millis(300));
    // The second set is taken while the writers go on.
    let (man2, out2, stored2) = backup_on(&r, &src, Some((1, &man1)));
    assert_eq!(out2.meta["dump"]["reused_from_set"], 1, "{}", out2.meta);
    assert!(out2.meta["dump"].get("why_new").is_none(), "{}", out2.meta);
    src.sql("USE bank; INSERT INTO notes VALUES (3, 'third', NOW()); DROP TABLE later.t; CREATE TABLE later.u (x INT PRIMARY KEY); INSERT INTO later.u VALUES (5);");
    std::thread::sleep(Duration::from_millis(200));
    let (man3, out3, stored3) = backup_on(&r, &src, Some((2, &man2)));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(out3.meta["dump"]["reused_from_set"], 2, "{}", out3.meta);
    assert_eq!(out3.meta["dump"]["set"], 1, "{}", out3.meta);
    eprintln!(
        "{format}: stored {stored1} / {stored2} / {stored3} bytes; events {} / {}",
        out2.meta["binlog_events"], out3.meta["binlog_events"]
    );
    assert!(stored2 * 10 < stored1 && stored3 * 10 < stored1);

    for (man, out) in [(&man2, &out2), (&man3, &out3)] {
        let (file, pos) = binlog_point(out);
        let at_point = replayed_to(&src, &file, pos);
        let dst = MariaDbServer::start(MariaDbOptions::default());
        let res = restore(&r, man, &dst, &[], false).unwrap();
        assert!(res["binlog_statements"].as_u64().unwrap() > 0, "{res}");
        for db in ["bank", "later"] {
            assert_eq!(
                checksums(&dst, db),
                checksums(&at_point, db),
                "{db} at {file}:{pos}"
            );
        }
        assert_eq!(dst.sql("SELECT SUM(balance) FROM bank.accounts"), "200000");
        assert_eq!(
            dst.sql("SELECT COUNT(*) FROM mysql.user WHERE user = 'intruder'"),
            "0",
            "account management is not replayed"
        );
    }
    // Renamed, and through the download.
    let (file, pos) = binlog_point(&out3);
    let at_point = replayed_to(&src, &file, pos);
    let dst = MariaDbServer::start(MariaDbOptions::default());
    // `CREATE TABLE later.t` names `later` unquoted: a copy under another
    // name cannot follow it, refused before anything is written.
    let e = restore(&r, &man3, &dst, &[("later", "later2")], false).unwrap_err();
    assert!(
        e.message
            .contains("names database later without backquotes"),
        "{e:?}"
    );
    assert_eq!(dst.sql("SHOW DATABASES LIKE 'later%'"), "");
    if format == "ROW" {
        // Row events name their tables by id: renamed by the decoder.
        restore(&r, &man3, &dst, &[("bank", "bank2")], false).unwrap();
        assert_eq!(checksums(&dst, "bank2"), checksums(&at_point, "bank"));
        assert_eq!(checksums(&dst, "later"), checksums(&at_point, "later"));
        assert_eq!(dst.sql("SHOW DATABASES LIKE 'bank'"), "");
    } else {
        // The writers' statements say `bank.accounts`.
        let e = restore(&r, &man3, &dst, &[("bank", "bank2")], false).unwrap_err();
        assert!(
            e.message.contains("names database bank without backquotes"),
            "{e:?}"
        );
    }
    let mut sql = Vec::new();
    stowage_engines::mysql::export::export_sql(&r, &man3, "dump", &mut sql).unwrap();
    let dst = MariaDbServer::start(MariaDbOptions::default());
    mariadb_stdin(&dst, &sql);
    for db in ["bank", "later"] {
        assert_eq!(
            checksums(&dst, db),
            checksums(&at_point, db),
            "{db} via dump.sql"
        );
    }

    // A base whose log was purged since: a new dump, saying why.
    src.sql("FLUSH BINARY LOGS; FLUSH BINARY LOGS;");
    let last = src.sql("SHOW MASTER STATUS");
    let last = last.split('\t').next().unwrap();
    // PURGE keeps (with a warning) a log the server still needs: one a
    // binlog dump thread reads, or one its binlog checkpoint (crash
    // recovery) has not passed yet, which lags the writes above by a
    // moment. Purge until only `last` is left.
    let t0 = std::time::Instant::now();
    loop {
        src.sql(&format!("PURGE BINARY LOGS TO '{last}'"));
        let logs = src.sql("SHOW BINARY LOGS");
        if logs.lines().count() == 1 {
            break;
        }
        assert!(t0.elapsed().as_secs() < 30, "not purged: {logs}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, out4, _) = backup_on(&r, &src, Some((3, &man3)));
    let why = out4.meta["dump"]["why_new"].as_str().unwrap_or_default();
    assert!(
        why.contains("set 3 not built on") && why.contains("purged"),
        "{}",
        out4.meta
    );
}

#[test]
fn sets_built_on_the_binary_log_restore_to_their_point_row_format() {
    chain_of_sets("ROW");
}

#[test]
fn sets_built_on_the_binary_log_restore_to_their_point_mixed_format() {
    chain_of_sets("MIXED");
}

/// A server that takes only TLS connections: the instance's TLS mode and CA
/// reach both the logical backup's connections and mariadb-backup's.
#[test]
fn verify_full_backs_up_a_server_that_requires_tls_logical_and_physical() {
    use stowage_engines::mysql::physical;
    use stowage_engines::tls::TlsMode;
    let certs = tempfile::tempdir().unwrap();
    let (ca, crt, key) = stowage_testkit::test_ca_and_cert(certs.path(), "localhost");
    let (other_ca, _, _) = stowage_testkit::test_ca_and_cert(certs.path(), "elsewhere");
    let src = MariaDbServer::start(MariaDbOptions {
        extra: vec![
            format!("--ssl-ca={}", ca.display()),
            format!("--ssl-cert={}", crt.display()),
            format!("--ssl-key={}", key.display()),
            "--require-secure-transport=ON".into(),
        ],
        ..Default::default()
    });
    src.sql(
        "CREATE DATABASE t; CREATE TABLE t.a (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB;
         INSERT INTO t.a VALUES (1, 'x'), (2, 'y');",
    );
    // As the service hands it over: the name the certificate carries, the
    // address it resolved to.
    let secure = |mode: TlsMode, root: Option<&std::path::Path>| ConnSpec {
        host: "localhost".into(),
        tls_mode: mode,
        tls_root_cert: root.map(Into::into),
        addrs: vec![std::net::SocketAddr::from(([127, 0, 0, 1], src.port))],
        ..conn(&src, "root", None)
    };
    let work = tempfile::tempdir().unwrap();
    let r = repo(&work.path().join("repo"));
    let c = secure(TlsMode::VerifyFull, Some(&ca));
    let mut bw = r.start_backup(2).unwrap();
    let out = dump::backup(&c, &opts(2, 1 << 26), &mut bw, &LiveTask::default()).unwrap();
    let (_, man) = bw.finish(BTreeMap::new(), out.meta.clone()).unwrap();
    let dst = MariaDbServer::start(MariaDbOptions::default());
    restore(&r, &man, &dst, &[], false).unwrap();
    assert_eq!(checksums(&dst, "t"), checksums(&src, "t"));

    let mut bw = r.start_backup(2).unwrap();
    let out = physical::backup(&c, None, 2, &mut bw, &LiveTask::default()).unwrap();
    let (_, man) = bw.finish(BTreeMap::new(), out.meta.clone()).unwrap();
    assert!(
        man.archives[0]
            .files
            .iter()
            .any(|f| f.path.starts_with("t/a.")),
        "{:?}",
        man.archives[0]
            .files
            .iter()
            .map(|f| &f.path)
            .collect::<Vec<_>>()
    );

    // A certificate another CA signed, and a connection without TLS, fail
    // clearly before anything is read.
    for (c, want) in [
        (secure(TlsMode::VerifyFull, Some(&other_ca)), "certificate"),
        (secure(TlsMode::Disable, None), "refused"),
    ] {
        let mut bw = r.start_backup(2).unwrap();
        let e = dump::backup(&c, &opts(2, 1 << 26), &mut bw, &LiveTask::default()).unwrap_err();
        assert!(e.message.contains(want), "{:?}: {}", c.tls_mode, e.message);
    }
}

/// `SHOW GRANTS FOR` an account, one statement per line.
fn grants_of(m: &MariaDbServer, account: &str) -> String {
    m.sql(&format!("SHOW GRANTS FOR {account}"))
}

/// Whether `user` logs in with `password` (the client's exit status).
fn logs_in(m: &MariaDbServer, user: &str, password: &str) -> bool {
    std::process::Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "-h127.0.0.1", "-N", "-B"])
        .arg(format!("-P{}", m.port))
        .arg(format!("-u{user}"))
        .arg(format!("-p{password}"))
        .args(["-e", "SELECT 1"])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn accounts_and_grants_restore_when_asked_and_the_targets_own_are_left_alone() {
    let src = MariaDbServer::start(MariaDbOptions::default());
    src.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, secret VARCHAR(10));
         INSERT INTO shop.t VALUES (1, 'a');
         CREATE PROCEDURE shop.p() SELECT 1;
         CREATE ROLE reader; GRANT SELECT ON shop.* TO reader;
         CREATE USER 'app'@'%' IDENTIFIED BY 'app-pw';
         GRANT INSERT, UPDATE ON shop.t TO 'app'@'%';
         GRANT SELECT (id) ON shop.t TO 'app'@'%';
         GRANT EXECUTE ON PROCEDURE shop.p TO 'app'@'%';
         GRANT reader TO 'app'@'%'; SET DEFAULT ROLE reader FOR 'app'@'%';
         CREATE USER 'ops'@'127.0.0.1' IDENTIFIED BY 'ops-pw' WITH MAX_QUERIES_PER_HOUR 100;
         GRANT PROCESS ON *.* TO 'ops'@'127.0.0.1';
         CREATE USER 'keep'@'%' IDENTIFIED BY 'source-pw'; GRANT SELECT ON shop.* TO 'keep'@'%';",
    );
    let work = tempfile::tempdir().unwrap();
    let r = repo(&work.path().join("repo"));
    let (man, out) = backup(&r, &src, &opts(2, 1 << 26)).unwrap();
    assert!(out.meta["accounts"].as_u64().unwrap() >= 4, "{}", out.meta);
    let load = |dst: &MariaDbServer, accounts: bool, drop: bool| {
        let o = load::LoadOptions {
            rename: [("shop".to_string(), "shop2".to_string())].into(),
            drop,
            threads: 2,
            defer_indexes: true,
            accounts,
        };
        load::restore(&conn(dst, "root", None), &r, &man, &o, &LiveTask::default())
    };

    // The target has an account of the same name, with its own password.
    let dst = MariaDbServer::start(MariaDbOptions::default());
    dst.sql("CREATE USER 'keep'@'%' IDENTIFIED BY 'target-pw';");
    // Without being asked, no account is created.
    load(&dst, false, false).unwrap();
    // The restoring account's own grants stay as they are (MariaDB gives
    // the creator of a role its admin option: taken back).
    let me = dst.sql("SELECT CURRENT_USER()");
    let (u, h) = me.rsplit_once('@').unwrap();
    let root = format!("'{u}'@'{h}'");
    let root_before = grants_of(&dst, &root);
    assert_eq!(
        dst.sql("SELECT COUNT(*) FROM mysql.user WHERE User IN ('app', 'ops', 'reader')"),
        "0"
    );
    let res = load(&dst, true, true).unwrap();
    let created: Vec<&str> = res["accounts"]["created"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        ["`reader`", "'app'@'%'", "'ops'@'127.0.0.1'"]
            .iter()
            .all(|a| created.contains(a))
            && !created.iter().any(|a| a.contains("root")),
        "{res}"
    );
    assert_eq!(res["accounts"]["kept"], serde_json::json!(["'keep'@'%'"]));
    assert_eq!(grants_of(&dst, &root), root_before);
    // Each created account holds what it held, on the renamed database.
    for a in ["reader", "'app'@'%'", "'ops'@'127.0.0.1'"] {
        assert_eq!(
            grants_of(&dst, a),
            grants_of(&src, a).replace("`shop`", "`shop2`"),
            "{a}"
        );
    }
    // Passwords and the default role work; the kept account is the target's.
    assert_eq!(
        dst.sql_as("app", "app-pw", "SELECT secret FROM shop2.t"),
        "a"
    );
    assert!(logs_in(&dst, "ops", "ops-pw"));
    assert!(logs_in(&dst, "keep", "target-pw") && !logs_in(&dst, "keep", "source-pw"));
    assert_eq!(
        grants_of(&dst, "'keep'@'%'").lines().count(),
        1,
        "{}",
        grants_of(&dst, "'keep'@'%'")
    );

    // A restoring user who may not create accounts is refused before
    // anything is written.
    let other = MariaDbServer::start(MariaDbOptions::default());
    other.sql(
        "CREATE USER 'loader'@'%' IDENTIFIED BY 'l-pw'; GRANT ALL ON shop2.* TO 'loader'@'%';
         GRANT SELECT ON *.* TO 'loader'@'%';",
    );
    let o = load::LoadOptions {
        rename: [("shop".to_string(), "shop2".to_string())].into(),
        drop: false,
        threads: 2,
        defer_indexes: true,
        accounts: true,
    };
    let e = load::restore(
        &conn(&other, "loader", Some("l-pw")),
        &r,
        &man,
        &o,
        &LiveTask::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("CREATE USER"), "{}", e.message);
    assert_eq!(
        other.sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'shop2'"),
        "0"
    );

    // A grant the restoring user may not give (PROCESS, to ops) fails the
    // restore after the data: the accounts it created are dropped again.
    other.sql(
        "CREATE USER 'half'@'%' IDENTIFIED BY 'h-pw';
         GRANT ALL ON *.* TO 'half'@'%' WITH GRANT OPTION;
         REVOKE PROCESS ON *.* FROM 'half'@'%';",
    );
    let e = load::restore(
        &conn(&other, "half", Some("h-pw")),
        &r,
        &man,
        &o,
        &LiveTask::default(),
    )
    .unwrap_err();
    assert!(
        e.message.contains("'ops'@'127.0.0.1'") && e.message.contains("dropped again"),
        "{}",
        e.message
    );
    assert_eq!(
        other.sql("SELECT COUNT(*) FROM mysql.user WHERE User IN ('app', 'ops', 'reader', 'keep')"),
        "0"
    );
    assert_eq!(other.sql("SELECT secret FROM shop2.t"), "a");
}
