//! The PostgreSQL engine against real PostgreSQL servers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use stowage_core::{LiveTask, Secret, TaskState};
use stowage_engines::{BackupOptions, ConnSpec, Engine, ErrorKind, pg::PostgresPhysical};
use stowage_repo::restore::{self, RestoreOptions};
use stowage_repo::{ChunkerParams, KdfParams, LocalStorage, Repository, Storage};
use stowage_testkit::{PgOptions, PgServer, fix_ownership, is_root};

fn conn(port: u16, user: &str, password: Option<&str>) -> ConnSpec {
    ConnSpec {
        host: "127.0.0.1".into(),
        port,
        user: user.into(),
        password: password.map(Secret::from),
        dbname: None,
        connect_timeout: Duration::from_secs(5),
        tls_mode: Default::default(),
        tls_root_cert: None,
        uri: None,
        options: serde_json::Value::Null,
        addrs: Vec::new(),
        host_check: None,
    }
}

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

#[test]
fn backup_and_restore_a_live_server() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, repeat(md5(g::text), 10) FROM generate_series(1, 20000) g;");
    let work = tempfile::tempdir().unwrap();
    let repo = repo(&work.path().join("repo"));
    let live = LiveTask::default();
    let mut w = repo.start_backup(0).unwrap();
    let opts = BackupOptions {
        label: "test 1".into(),
        max_rate_kbps: None,
        ..Default::default()
    };
    let out = PostgresPhysical
        .backup(&conn(pg.port, "postgres", None), &opts, &mut w, &live)
        .unwrap();
    assert_eq!(live.state(), TaskState::Running);
    let p = live.progress();
    assert!(
        p.bytes_total > 1_000_000 && p.bytes_done >= p.bytes_total / 2,
        "{p:?}"
    );
    let (snap, manifest) = w.finish(BTreeMap::new(), out.meta.clone()).unwrap();
    match &out.consistent_point {
        stowage_core::ConsistentPoint::Wal {
            stop_lsn, timeline, ..
        } => assert!(stop_lsn.contains('/') && *timeline >= 1, "{stop_lsn}"),
        other => panic!("not a WAL point: {other:?}"),
    }
    assert!(out.engine_version.starts_with(|c: char| c.is_ascii_digit()));
    assert!(manifest.archives.iter().any(|a| a.name == "base"));
    assert!(
        manifest
            .archives
            .iter()
            .any(|a| a.files.iter().any(|f| f.path.starts_with("pg_wal/0000"))),
        "WAL included"
    );
    // Written after the backup: must not be in the restored copy.
    pg.psql("INSERT INTO t VALUES (999999, 'after');");

    let target = work.path().join("restored");
    let m = repo.read_snapshot(&snap).unwrap();
    let targets = PostgresPhysical.restore_targets(&m, &target).unwrap();
    let plan = restore::plan(&m, &repo.index(), &targets).unwrap();
    let opts = RestoreOptions {
        preserve_owner: is_root(),
        ..Default::default()
    };
    repo.restore(&plan, &opts, &|_, _| {}, &AtomicBool::new(false))
        .unwrap();
    PostgresPhysical
        .after_restore(&m, &target, &targets, is_root())
        .unwrap();
    fix_ownership(work.path());
    let restored = PgServer::start_existing(&target, PgOptions::default());
    assert_eq!(
        restored.psql("SELECT count(*), sum(length(v)) FROM t"),
        "20000|6400000"
    );
    assert_eq!(
        restored.psql("SELECT count(*) FROM t WHERE id = 999999"),
        "0"
    );
}

#[test]
fn clear_errors_for_connection_problems() {
    let mut pg = PgServer::start(PgOptions {
        password_auth: true,
        ..Default::default()
    });
    pg.psql("CREATE ROLE bk LOGIN REPLICATION PASSWORD 'right'; CREATE ROLE norepl LOGIN PASSWORD 'pw';");
    let e = PostgresPhysical
        .check(&conn(pg.port, "bk", Some("wrong")))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Authentication, "{e}");
    assert!(e.message.contains("password"), "{e}");
    let info = PostgresPhysical
        .check(&conn(pg.port, "bk", Some("right")))
        .unwrap();
    assert!(info.version.starts_with("15"), "{info:?}");
    let e = PostgresPhysical
        .check(&conn(pg.port, "norepl", Some("pw")))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permission, "{e}");
    assert!(e.message.contains("REPLICATION"), "{e}");
    let port = pg.port;
    pg.stop();
    let e = PostgresPhysical
        .check(&conn(port, "bk", Some("right")))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(e.message.contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn no_wal_sender_available() {
    let pg = PgServer::start(PgOptions {
        max_wal_senders: 0,
        ..Default::default()
    });
    let e = PostgresPhysical
        .check(&conn(pg.port, "postgres", None))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Capacity, "{e}");
    assert!(e.message.contains("max_wal_senders"), "{e}");
}

#[test]
fn tablespaces_are_backed_up_and_relinked_on_restore() {
    let pg = PgServer::start(PgOptions::default());
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ts = work.path().join("ts");
    std::fs::create_dir(&ts).unwrap();
    fix_ownership(&ts);
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts.display()
    ));
    pg.psql("CREATE TABLE far (id int, v text) TABLESPACE extra; INSERT INTO far SELECT g, md5(g::text) FROM generate_series(1, 5000) g;");
    let repo = repo(&work.path().join("repo"));
    let live = LiveTask::default();
    let mut w = repo.start_backup(0).unwrap();
    let opts = BackupOptions {
        label: "ts".into(),
        max_rate_kbps: None,
        ..Default::default()
    };
    let out = PostgresPhysical
        .backup(&conn(pg.port, "postgres", None), &opts, &mut w, &live)
        .unwrap();
    let (snap, m) = w.finish(BTreeMap::new(), out.meta).unwrap();
    let names: Vec<&str> = m.archives.iter().map(|a| a.name.as_str()).collect();
    assert!(
        names.len() == 3 && names.contains(&"base") && names.contains(&"manifest"),
        "{names:?}"
    );
    let ts_archive = m
        .archives
        .iter()
        .find(|a| a.name != "base" && a.name != "manifest")
        .unwrap();
    assert_eq!(
        ts_archive.source_location.as_deref(),
        Some(ts.to_str().unwrap())
    );

    let target = work.path().join("restored");
    let m = repo.read_snapshot(&snap).unwrap();
    let targets = PostgresPhysical.restore_targets(&m, &target).unwrap();
    let plan = restore::plan(&m, &repo.index(), &targets).unwrap();
    let ropts = RestoreOptions {
        preserve_owner: is_root(),
        ..Default::default()
    };
    repo.restore(&plan, &ropts, &|_, _| {}, &AtomicBool::new(false))
        .unwrap();
    PostgresPhysical
        .after_restore(&m, &target, &targets, is_root())
        .unwrap();
    fix_ownership(work.path());
    // The restored link points at the restored tablespace, not the original.
    let link = std::fs::read_link(target.join("pg_tblspc").join(&ts_archive.name)).unwrap();
    assert!(
        link.starts_with(stowage_engines::pg::tablespace_root(&target)),
        "{link:?}"
    );
    drop(pg); // the original is gone: the restore must stand on its own
    std::fs::remove_dir_all(&ts).unwrap();
    let restored = PgServer::start_existing(&target, PgOptions::default());
    assert_eq!(
        restored.psql("SELECT count(*), sum(length(v)) FROM far"),
        "5000|160000"
    );
}

/// TLS with libpq's sslmode semantics against a server that accepts only
/// TLS over TCP: each mode connects or fails with a clear reason, and a
/// whole backup runs encrypted.
#[test]
fn tls_modes() {
    use stowage_engines::pg::wire::PgConn;
    use stowage_engines::tls::TlsMode;
    let pg = PgServer::start(PgOptions {
        tls: true,
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = stowage_testkit::test_ca_and_cert(work.path(), "other");
    let spec = |mode: TlsMode, root: Option<&std::path::Path>, host: &str| ConnSpec {
        host: host.into(),
        tls_mode: mode,
        tls_root_cert: root.map(|p| p.to_path_buf()),
        ..conn(pg.port, "postgres", None)
    };
    let ca = pg.tls_ca();
    for (mode, root, host) in [
        (TlsMode::Prefer, None, "127.0.0.1"),
        (TlsMode::Require, None, "127.0.0.1"),
        (TlsMode::VerifyCa, Some(ca.as_path()), "127.0.0.1"),
        (TlsMode::VerifyFull, Some(ca.as_path()), "127.0.0.1"),
        (TlsMode::VerifyFull, Some(ca.as_path()), "localhost"),
    ] {
        let mut c = PgConn::connect(&spec(mode, root, host), false)
            .unwrap_or_else(|e| panic!("{mode:?} {host}: {e}"));
        assert!(c.is_tls(), "{mode:?}");
        let r = c
            .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .unwrap();
        assert_eq!(r[0].rows[0][0].as_deref(), Some("t"), "{mode:?}");
    }
    // No TLS: the server's own refusal, which names the missing encryption.
    let e = PgConn::connect(&spec(TlsMode::Disable, None, "127.0.0.1"), false)
        .err()
        .unwrap();
    assert!(e.message.contains("no encryption"), "{e}");
    // A certificate from another CA.
    for mode in [TlsMode::VerifyCa, TlsMode::VerifyFull] {
        let e = PgConn::connect(&spec(mode, Some(&other_ca), "127.0.0.1"), false)
            .err()
            .unwrap();
        assert_eq!(e.kind, stowage_engines::ErrorKind::Authentication, "{e}");
        assert!(e.message.contains("certificate"), "{e}");
    }
    // verify-* without a CA file.
    let e = PgConn::connect(&spec(TlsMode::VerifyFull, None, "127.0.0.1"), false)
        .err()
        .unwrap();
    assert!(e.message.contains("sslrootcert"), "{e}");

    // A whole backup over TLS, verified.
    let repo = repo(&work.path().join("repo"));
    let live = LiveTask::default();
    let mut w = repo.start_backup(0).unwrap();
    let opts = BackupOptions {
        label: "tls".into(),
        max_rate_kbps: None,
        ..Default::default()
    };
    let out = PostgresPhysical
        .backup(
            &spec(TlsMode::VerifyFull, Some(&ca), "localhost"),
            &opts,
            &mut w,
            &live,
        )
        .unwrap();
    let (_, m) = w.finish(BTreeMap::new(), out.meta).unwrap();
    assert!(m.summary.bytes_logical > 1_000_000);

    // A server without TLS: prefer falls back, require refuses clearly.
    let plain = PgServer::start(PgOptions::default());
    let mut c = PgConn::connect(
        &ConnSpec {
            tls_mode: TlsMode::Prefer,
            ..conn(plain.port, "postgres", None)
        },
        false,
    )
    .unwrap();
    assert!(!c.is_tls());
    c.simple_query("SELECT 1").unwrap();
    let e = PgConn::connect(
        &ConnSpec {
            tls_mode: TlsMode::Require,
            ..conn(plain.port, "postgres", None)
        },
        false,
    )
    .err()
    .unwrap();
    assert!(e.message.contains("does not accept TLS"), "{e}");
}

/// `prefer` goes on without TLS when the handshake fails (here: a server
/// that only speaks TLS 1.1, which rustls refuses); the server then refuses
/// the plain connection, which proves the fallback happened. `require` does
/// not fall back.
#[test]
fn prefer_falls_back_when_the_tls_handshake_fails() {
    use stowage_engines::pg::wire::PgConn;
    use stowage_engines::tls::TlsMode;
    let pg = PgServer::start(PgOptions {
        tls: true,
        extra: vec![
            ("ssl_min_protocol_version".into(), "TLSv1".into()),
            ("ssl_max_protocol_version".into(), "TLSv1.1".into()),
        ],
        ..Default::default()
    });
    let spec = |mode| ConnSpec {
        tls_mode: mode,
        ..conn(pg.port, "postgres", None)
    };
    let e = PgConn::connect(&spec(TlsMode::Prefer), false)
        .err()
        .unwrap();
    assert!(e.message.contains("no encryption"), "{e}");
    let e = PgConn::connect(&spec(TlsMode::Require), false)
        .err()
        .unwrap();
    assert!(e.message.contains("TLS"), "{e}");
    assert!(!e.message.contains("no encryption"), "{e}");
}

/// With checked addresses given, the engine connects to them and never
/// resolves the host name again (`--tenant-allow` checked those addresses;
/// a name that resolves elsewhere the second time must not matter).
#[test]
fn checked_addresses_are_used_instead_of_resolving_again() {
    use stowage_engines::pg::wire::PgConn;
    let pg = PgServer::start(PgOptions::default());
    let spec = ConnSpec {
        host: "no-such-host.invalid".into(),
        addrs: vec![std::net::SocketAddr::from(([127, 0, 0, 1], pg.port))],
        host_check: None,
        ..conn(pg.port, "postgres", None)
    };
    let mut c = PgConn::connect(&spec, false).expect("connects to the given address");
    c.simple_query("SELECT 1").unwrap();
    let e = PgConn::connect(
        &ConnSpec {
            addrs: Vec::new(),
            host_check: None,
            ..spec
        },
        false,
    )
    .err()
    .expect("the name alone does not resolve");
    assert!(e.message.contains("cannot resolve"), "{e}");
}
