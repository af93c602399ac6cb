//! PostgreSQL physical online backup through the replication protocol.
//!
//! One walsender connection does everything, as `pg_basebackup -X fetch`
//! would, without a temporary file:
//!
//! 1. `IDENTIFY_SYSTEM`: system identifier, timeline.
//! 2. `CREATE_REPLICATION_SLOT … TEMPORARY PHYSICAL RESERVE_WAL`: the server
//!    keeps every WAL segment from here on until the connection ends, so the
//!    WAL the backup needs cannot be recycled however long it runs or however
//!    busy the server is. (Skipped with a warning if no slot is free.)
//! 3. `BASE_BACKUP (PROGRESS, CHECKPOINT 'fast', WAL, WAIT false, MANIFEST 'yes')`:
//!    start LSN, tablespace list with size estimates, then one COPY stream of
//!    typed messages: `n` new archive, `d` data, `p` progress, `m` manifest.
//!    The tar data is parsed on the fly and each file goes straight into the
//!    repository writer.
//! 4. The end LSN. The WAL between start and end is inside the archive
//!    (`pg_wal/`), so the set restores to a consistent state by itself.
//!
//! Requires PostgreSQL 15 or newer (the typed COPY stream and the
//! parenthesised option syntax).

/// TLS is engine-neutral (`crate::tls`); kept here under its old path.
pub use crate::tls;
pub mod wal;
pub mod wire;

use crate::tar::{TarEvent, TarReader};
use crate::{BackupOptions, BackupOutcome, ConnSpec, Engine, EngineError, ErrorKind, ServerInfo};
use postgres_protocol::message::backend::Message;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use stowage_core::manifest::{FileKind, Manifest};
use stowage_core::{LiveTask, TaskState};
use stowage_repo::{BackupWriter, FileMeta};
use wire::{PgConn, ResultSet};

pub struct PostgresPhysical;

/// The archive that holds the backup manifest PostgreSQL produced.
pub const MANIFEST_ARCHIVE: &str = "manifest";
pub const BASE_ARCHIVE: &str = "base";

fn proto(msg: impl Into<String>) -> EngineError {
    EngineError::new(ErrorKind::Protocol, msg)
}

fn server_version_num(c: &PgConn) -> Option<u32> {
    let v = c.params.get("server_version")?;
    let mut it = v.split(|ch: char| !ch.is_ascii_digit());
    let major: u32 = it.next()?.parse().ok()?;
    let minor: u32 = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some(major * 10000 + minor)
}

fn one_row(sets: &[ResultSet], what: &str) -> Result<Vec<Option<String>>, EngineError> {
    sets.first()
        .and_then(|s| s.rows.first())
        .cloned()
        .ok_or_else(|| proto(format!("{what}: no row returned")))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

struct Identity {
    system_identifier: String,
    timeline: String,
    version: String,
    version_num: u32,
}

fn identify(c: &mut PgConn) -> Result<Identity, EngineError> {
    let version = c.params.get("server_version").cloned().unwrap_or_default();
    let version_num = server_version_num(c).unwrap_or(0);
    if version_num < 150000 {
        return Err(EngineError::new(
            ErrorKind::Unsupported,
            format!(
                "PostgreSQL {version} is not supported: physical backup needs PostgreSQL 15 or newer"
            ),
        ));
    }
    let row = one_row(&c.simple_query("IDENTIFY_SYSTEM")?, "IDENTIFY_SYSTEM")?;
    Ok(Identity {
        system_identifier: row.first().cloned().flatten().unwrap_or_default(),
        timeline: row.get(1).cloned().flatten().unwrap_or_default(),
        version,
        version_num,
    })
}

impl Engine for PostgresPhysical {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn method(&self) -> &'static str {
        "physical"
    }

    fn check(&self, conn: &ConnSpec) -> Result<ServerInfo, EngineError> {
        let mut c = PgConn::connect(conn, true)?;
        let id = identify(&mut c)?;
        let senders = c
            .simple_query("SHOW max_wal_senders")
            .ok()
            .and_then(|s| one_row(&s, "SHOW").ok())
            .and_then(|r| r[0].clone());
        let wal_level = c
            .simple_query("SHOW wal_level")
            .ok()
            .and_then(|s| one_row(&s, "SHOW").ok())
            .and_then(|r| r[0].clone());
        let tls = c.is_tls();
        c.close();
        Ok(ServerInfo {
            version: id.version,
            system_identifier: Some(id.system_identifier),
            details: serde_json::json!({
                "timeline": id.timeline,
                "server_version_num": id.version_num,
                "max_wal_senders": senders,
                "wal_level": wal_level,
                "tls": tls,
                "sslmode": conn.tls_mode.as_str(),
            }),
        })
    }

    fn backup(
        &self,
        conn: &ConnSpec,
        opts: &BackupOptions,
        w: &mut BackupWriter,
        live: &LiveTask,
    ) -> Result<BackupOutcome, EngineError> {
        let label = opts.label.as_str();
        live.set_state(TaskState::Checking);
        let mut c = PgConn::connect(conn, true)?;
        let id = identify(&mut c)?;
        if live.is_cancelled() {
            return Err(EngineError::new(ErrorKind::Cancelled, "cancelled"));
        }
        live.set_state(TaskState::Preparing);
        let slot_name = format!(
            "stowage_{}_{}",
            std::process::id(),
            label
                .bytes()
                .filter(u8::is_ascii_alphanumeric)
                .map(|b| b.to_ascii_lowercase() as char)
                .take(20)
                .collect::<String>()
        );
        let slot = match c.simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot_name} TEMPORARY PHYSICAL RESERVE_WAL"
        )) {
            Ok(_) => Some(slot_name),
            Err(e) if e.kind == ErrorKind::Capacity || e.kind == ErrorKind::Protocol => {
                tracing::warn!(error = %e, "no temporary replication slot; WAL needed by the backup could be recycled under heavy load");
                None
            }
            Err(e) => return Err(e),
        };
        // A checkpoint can take a while on a busy server before data flows.
        c.set_idle_limit(Duration::from_secs(3600));
        let max_rate = match opts.max_rate_kbps {
            // The server accepts 32 kB/s to 1 GB/s.
            Some(r) => format!(", MAX_RATE {}", r.clamp(32, 1_048_576)),
            None => String::new(),
        };
        c.send_query(&format!(
            "BASE_BACKUP (LABEL {}, PROGRESS, CHECKPOINT 'fast', WAL, WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C'{max_rate})",
            quote_literal(label)
        ))?;
        let cancelled = || live.is_cancelled();
        let mut results: Vec<ResultSet> = Vec::new();
        let mut tar = TarReader::new();
        let mut in_archive = false;
        let mut manifest: Option<Vec<u8>> = None;
        let mut owner = (0u32, 0u32);
        let mut copy_done = false;
        let mut wal_filter: Option<wal::StalePageFilter> = None;
        let mut stale_wal_pages = 0u64;
        let mut server_error = None;
        loop {
            let m = c.read(&cancelled)?;
            match m {
                Message::RowDescription(d) => results.push(ResultSet {
                    columns: wire::columns(&d),
                    rows: vec![],
                }),
                Message::DataRow(r) => {
                    let row = wire::data_row(&r);
                    results
                        .last_mut()
                        .ok_or_else(|| proto("row without description"))?
                        .rows
                        .push(row);
                }
                Message::CopyOutResponse(_) => {
                    // results[1] is the tablespace list: size in kB per tablespace.
                    let total: u64 = results
                        .get(1)
                        .map(|s| {
                            s.rows
                                .iter()
                                .filter_map(|r| r.get(2).cloned().flatten())
                                .filter_map(|v| v.parse::<u64>().ok())
                                .sum::<u64>()
                                * 1024
                        })
                        .unwrap_or(0);
                    live.bytes_total.store(total, Ordering::Relaxed);
                    live.set_state(TaskState::Running);
                }
                Message::CopyData(d) => {
                    let data = d.data();
                    let Some((&kind, body)) = data.split_first() else {
                        continue;
                    };
                    match kind {
                        b'n' => {
                            if in_archive {
                                tar.finish().map_err(|e| proto(e.to_string()))?;
                            }
                            let mut parts = body.split(|b| *b == 0);
                            let name = String::from_utf8_lossy(parts.next().unwrap_or_default())
                                .into_owned();
                            let location =
                                String::from_utf8_lossy(parts.next().unwrap_or_default())
                                    .into_owned();
                            let name = name.strip_suffix(".tar").unwrap_or(&name).to_string();
                            w.begin_archive(&name, (!location.is_empty()).then_some(location))?;
                            tar = TarReader::new();
                            in_archive = true;
                        }
                        b'd' => {
                            live.bytes_done
                                .fetch_add(body.len() as u64, Ordering::Relaxed);
                            if let Some(mf) = manifest.as_mut() {
                                mf.extend_from_slice(body);
                            } else {
                                let mut on = |ev: TarEvent<'_>| -> Result<(), EngineError> {
                                    match ev {
                                        TarEvent::Begin(e) => {
                                            if e.meta.path == "PG_VERSION" {
                                                owner = (e.meta.uid, e.meta.gid);
                                            }
                                            wal_filter = e
                                                .meta
                                                .path
                                                .strip_prefix("pg_wal/")
                                                .and_then(|name| wal::segment_number(name, e.size))
                                                .map(|segno| {
                                                    wal::StalePageFilter::new(segno, e.size)
                                                });
                                            w.begin_file(e.meta)?;
                                        }
                                        TarEvent::Data(d) => match wal_filter.as_mut() {
                                            Some(f) => f.push(d, &mut |p: &[u8]| w.write(p))?,
                                            None => w.write(d)?,
                                        },
                                        TarEvent::End => {
                                            if let Some(mut f) = wal_filter.take() {
                                                f.finish(&mut |p: &[u8]| w.write(p))?;
                                                stale_wal_pages += f.zeroed;
                                            }
                                            w.end_file()?
                                        }
                                    }
                                    Ok(())
                                };
                                tar.feed(body, &mut on)?;
                            }
                            live.bytes_stored.store(
                                w.stats().bytes_stored.load(Ordering::Relaxed),
                                Ordering::Relaxed,
                            );
                        }
                        b'p' => {}
                        b'm' => {
                            if in_archive {
                                tar.finish().map_err(|e| proto(e.to_string()))?;
                                in_archive = false;
                            }
                            manifest = Some(Vec::new());
                        }
                        other => {
                            return Err(proto(format!(
                                "unknown message type {:?} in the backup stream",
                                other as char
                            )));
                        }
                    }
                }
                Message::CopyDone => {
                    copy_done = true;
                    if in_archive {
                        tar.finish().map_err(|e| proto(e.to_string()))?;
                    }
                }
                Message::ErrorResponse(b) => server_error = Some(c.server_error(&b)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        if let Some(e) = server_error {
            return Err(wire::classify(&e, c.user()));
        }
        if !copy_done {
            return Err(proto(
                "the server ended the backup without sending its data",
            ));
        }
        let start = one_row(&results[..1], "BASE_BACKUP start")?;
        let end = results
            .last()
            .and_then(|s| s.rows.first())
            .cloned()
            .ok_or_else(|| proto("BASE_BACKUP sent no end position"))?;
        let tablespaces: Vec<serde_json::Value> = results
            .get(1)
            .map(|s| {
                s.rows
                    .iter()
                    .map(|r| serde_json::json!({"oid": number(&r[0]), "location": r[1], "size_kb": number(&r[2])}))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(mf) = manifest {
            w.begin_archive(MANIFEST_ARCHIVE, None)?;
            w.begin_file(FileMeta {
                path: "backup_manifest".into(),
                kind: FileKind::File,
                mode: 0o600,
                uid: owner.0,
                gid: owner.1,
                mtime: (stowage_repo::lock::now_ms() / 1000),
                link_target: None,
            })?;
            w.write(&mf)?;
            w.end_file()?;
        }
        c.close();
        let stop_lsn = end.first().cloned().flatten().unwrap_or_default();
        let consistent_point = stowage_core::ConsistentPoint::Wal {
            start_lsn: start.first().cloned().flatten().unwrap_or_default(),
            stop_lsn: stop_lsn.clone(),
            timeline: number(&end.get(1).cloned().flatten())
                .as_u64()
                .or_else(|| id.timeline.trim().parse().ok())
                .unwrap_or(0) as u32,
        };
        Ok(BackupOutcome {
            consistent_point,
            engine_version: id.version.clone(),
            meta: serde_json::json!({
                "system_identifier": id.system_identifier,
                "server_version": id.version,
                "server_version_num": id.version_num,
                "timeline": number(&Some(id.timeline.clone())),
                "start_lsn": start.first().cloned().flatten(),
                "stop_lsn": end.first().cloned().flatten(),
                "tablespaces": tablespaces,
                "wal_included": true,
                // The temporary slot (dropped with the connection) kept the WAL from being recycled.
                "wal_reserved_by_slot": slot.is_some(),
                "stale_wal_pages_zeroed": stale_wal_pages,
                "label": label,
            }),
        })
    }

    fn restore_targets(
        &self,
        m: &Manifest,
        target: &Path,
    ) -> Result<Vec<(usize, PathBuf)>, EngineError> {
        let mut out = Vec::new();
        let ts_root = tablespace_root(target);
        for (i, a) in m.archives.iter().enumerate() {
            let dir = match a.name.as_str() {
                BASE_ARCHIVE | MANIFEST_ARCHIVE => target.to_path_buf(),
                oid if oid.bytes().all(|b| b.is_ascii_digit()) && !oid.is_empty() => {
                    ts_root.join(oid)
                }
                other => {
                    return Err(EngineError::new(
                        ErrorKind::Unsupported,
                        format!("unknown archive {other:?} in a PostgreSQL backup"),
                    ));
                }
            };
            out.push((i, dir));
        }
        Ok(out)
    }

    fn after_restore(
        &self,
        m: &Manifest,
        target: &Path,
        targets: &[(usize, PathBuf)],
        set_owner: bool,
    ) -> Result<(), EngineError> {
        let fs_err = |p: &Path, e: std::io::Error| {
            EngineError::new(ErrorKind::Filesystem, format!("{}: {e}", p.display()))
        };
        // The data directory itself is not in the archive: PostgreSQL wants 0700,
        // owned by the server's user (the owner of PG_VERSION).
        let owner = m
            .archives
            .iter()
            .flat_map(|a| a.files.iter())
            .find(|f| f.path == "PG_VERSION")
            .map(|f| (f.uid, f.gid));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fs_err(target, e))?;
        if let (true, Some((uid, gid))) = (set_owner, owner) {
            std::os::unix::fs::chown(target, Some(uid), Some(gid))
                .map_err(|e| fs_err(target, e))?;
        }
        // Point pg_tblspc/<oid> links at the restored tablespaces. The links
        // are replaced inside the restored pg_tblspc, which must be a real
        // folder: one that is a symlink in the backup would lead elsewhere.
        let ts = target.join("pg_tblspc");
        if targets.iter().any(|(i, _)| {
            let n = &m.archives[*i].name;
            n != BASE_ARCHIVE && n != MANIFEST_ARCHIVE
        }) && !std::fs::symlink_metadata(&ts).is_ok_and(|md| md.file_type().is_dir())
        {
            return Err(EngineError::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: not a folder in this backup (a symlink?); its tablespaces cannot be linked safely",
                    ts.display()
                ),
            ));
        }
        for (i, dir) in targets {
            let name = &m.archives[*i].name;
            if name == BASE_ARCHIVE || name == MANIFEST_ARCHIVE {
                continue;
            }
            let link = target.join("pg_tblspc").join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(dir, &link).map_err(|e| fs_err(&link, e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fs_err(dir, e))?;
            if let (true, Some((uid, gid))) = (set_owner, owner) {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| fs_err(dir, e))?;
            }
        }
        Ok(())
    }
}

/// A numeric column of a replication-protocol result (sent as text) as a
/// JSON number; null when absent or not a number.
fn number(v: &Option<String>) -> serde_json::Value {
    v.as_deref()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(serde_json::Value::from)
        .unwrap_or(serde_json::Value::Null)
}

/// Tablespaces of a restored data directory `/x/data` go to `/x/data.tablespaces/<oid>`.
pub fn tablespace_root(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".tablespaces");
    PathBuf::from(s)
}
