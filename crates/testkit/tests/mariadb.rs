//! The MariaDB test server: starts on a free port from the shared template,
//! keeps a binary log with GTIDs, answers SQL, and gives each test its own
//! data.

use stowage_testkit::{MariaDbOptions, MariaDbServer};

#[test]
fn a_mariadb_server_starts_with_a_binary_log_and_its_own_data() {
    let a = MariaDbServer::start(MariaDbOptions::default());
    let b = MariaDbServer::start(MariaDbOptions::default());
    assert_ne!(a.port, b.port);
    assert!(a.sql("SELECT VERSION()").contains("MariaDB"));
    a.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB; \
         USE shop; INSERT INTO t SELECT seq, repeat('x', 10) FROM seq_1_to_1000",
    );
    assert_eq!(a.sql("SELECT COUNT(*) FROM shop.t"), "1000");
    assert_eq!(b.sql("SHOW DATABASES LIKE 'shop'"), "");
    assert_eq!(a.sql("SELECT @@log_bin, @@binlog_format"), "1\tROW");
    assert!(a.sql("SELECT @@gtid_binlog_pos").starts_with("0-1-"));
}
