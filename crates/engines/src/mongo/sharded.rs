//! Sharded clusters: every shard and the config servers are replica sets,
//! backed up at once (one part each, in parallel) to one cluster time.
//!
//! 1. Every replica set is connected and checked before anything is
//!    stored: an unreachable shard fails the task, named.
//! 2. Where a `mongos` is given, the balancer is stopped for the backup
//!    (chunks moving between shards would be in two dumps or none) and put
//!    back as it was afterwards, on every path.
//! 3. Each part dumps its replica set (or reuses its base set's dump) and
//!    notes its oplog's newest entry once done. The cluster time `T` is the
//!    latest of those.
//! 4. Each part then makes its oplog reach `T` (`appendOplogNote` with
//!    `maxClusterTime`, as mongod documents it, else waiting for the shard's
//!    own writes) and copies its slice up to `T`. A transaction `T` would
//!    split is copied whole and recorded, so a restore to `T` leaves it out.
//! 5. Only when every part has its slice are the parts finished: one part
//!    failing fails the whole task (the others are cancelled), and no set
//!    is made.
//!
//! A restore replays every part's slice to exactly `T`.

use super::{
    Captured, DumpOptions, MongoBackup, ReplicaSet, connect_checked, driver, err, join_all,
    mid_backup, replica_set_name, ts_gt,
};
use crate::{EngineError, ErrorKind};
use mongodb::bson::{Timestamp, doc};
use mongodb::sync::Client;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use stowage_core::{LiveTask, TaskState};
use stowage_repo::BackupWriter;

/// What a part of a cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Shard,
    Config,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Shard => "shard",
            Role::Config => "config",
        }
    }
}

/// One replica set of a cluster: its id (the part's and archive's name,
/// e.g. `dds-x_0`), role and connection string (with credentials).
#[derive(Debug, Clone)]
pub struct PartSpec {
    pub id: String,
    pub role: Role,
    /// With credentials: never shown by `Debug`.
    pub uri: stowage_core::Secret,
}

/// A finished backup of a sharded cluster.
#[derive(Debug, Clone)]
pub struct ShardedBackup {
    /// The cluster time every part is consistent at.
    pub cluster_time: Timestamp,
    pub parts: Vec<(PartSpec, MongoBackup, Vec<String>)>,
    /// The balancer's state before the backup, where a mongos was given.
    pub balancer_was: Option<String>,
}

/// How long a part waits for its oplog to reach the cluster time.
pub const REACH_WAIT: Duration = Duration::from_secs(60);

/// What the parts tell each other once their dumps are done.
#[derive(Default)]
struct Rendezvous {
    /// Dump ends reported so far.
    ends: Vec<Timestamp>,
    /// A part failed: the others stop.
    failed: bool,
}

struct Barrier {
    parts: usize,
    state: Mutex<Rendezvous>,
    cv: Condvar,
    /// Every part, cancelled when one fails.
    lives: Vec<Arc<LiveTask>>,
}

impl Barrier {
    /// Reports a dump's end; waits for every part's and returns the latest
    /// (the cluster time), or `None` once a part failed or the task was
    /// cancelled.
    fn arrive(&self, end: Timestamp, live: &LiveTask) -> Option<Timestamp> {
        let mut st = self.state.lock().expect("barrier");
        st.ends.push(end);
        self.cv.notify_all();
        loop {
            if st.failed || live.is_cancelled() {
                return None;
            }
            if st.ends.len() == self.parts {
                return st
                    .ends
                    .iter()
                    .copied()
                    .reduce(|a, b| if ts_gt(b, a) { b } else { a });
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(200))
                .expect("barrier")
                .0;
        }
    }

    /// A part failed: every other part is cancelled and stops waiting.
    fn fail(&self) {
        self.state.lock().expect("barrier").failed = true;
        for l in &self.lives {
            l.cancel();
        }
        self.cv.notify_all();
    }
}

/// Names a part in an error: "shard dds-x_1 (replica set rs1): …".
pub(crate) fn named(p: &PartSpec, set: Option<&str>, e: EngineError) -> EngineError {
    let what = match set {
        Some(s) => format!("{} {} (replica set {s})", p.role.as_str(), p.id),
        None => format!("{} {}", p.role.as_str(), p.id),
    };
    EngineError {
        message: format!("{what}: {}", e.message),
        ..e
    }
}

/// Backs up a sharded cluster: `parts` (the shards, then the config
/// servers) in parallel, each into its own archive named by its id, all to
/// one cluster time. `o.archive` is ignored; `o.threads` are per part.
pub fn backup_sharded(
    parts: &[PartSpec],
    mongos: Option<&str>,
    o: &DumpOptions,
    writer: &mut BackupWriter,
    live: &LiveTask,
) -> Result<ShardedBackup, EngineError> {
    if parts.is_empty() {
        return Err(err(
            ErrorKind::Unsupported,
            "a sharded cluster without shards",
        ));
    }
    live.set_state(TaskState::Checking);
    let lives: Vec<Arc<LiveTask>> = parts
        .iter()
        .map(|p| {
            let l = live.add_part(&p.id);
            l.set_state(TaskState::Checking);
            l
        })
        .collect();
    // Every replica set reachable and allowed before anything is stored.
    let sets: Vec<Result<ReplicaSet, EngineError>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .zip(&lives)
            .map(|(p, l)| {
                s.spawn(move || {
                    let (c, f) = connect_checked(p.uri.expose(), o.host_check)
                        .map_err(|e| named(p, None, e))?;
                    replica_set_name(&f).map_err(|e| named(p, None, e))?;
                    Ok(ReplicaSet {
                        c,
                        f,
                        archive: super::escape(&p.id),
                        part: l.clone(),
                        config_db: p.role == Role::Config,
                    })
                })
            })
            .collect();
        join_all(handles, "a connection check")
    });
    let sets: Vec<ReplicaSet> = sets.into_iter().collect::<Result<_, _>>()?;
    let balancer = match mongos {
        Some(uri) => Some(BalancerPause::stop(uri, o.host_check)?),
        None => None,
    };
    let barrier = Barrier {
        parts: sets.len(),
        state: Mutex::new(Rendezvous::default()),
        cv: Condvar::new(),
        lives: lives.clone(),
    };
    let shared: &BackupWriter = writer;
    // One transfer-rate limit for the whole cluster; the dump threads
    // shared out between the parts.
    let limit = super::RateLimit::new(o.max_rate_kbps);
    let per_part = DumpOptions {
        threads: o.threads.max(1).div_ceil(sets.len()),
        ..o.clone()
    };
    let results: Vec<Result<_, EngineError>> = std::thread::scope(|s| {
        let handles: Vec<_> = sets
            .iter()
            .zip(parts)
            .map(|(rs, p)| {
                let (barrier, limit, o) = (&barrier, &limit, &per_part);
                s.spawn(move || {
                    // A part that ends without its result (an error, a
                    // panic) releases the others from the rendezvous.
                    let guard = FailOnDrop(barrier);
                    let set = rs.f.set_name.clone();
                    let r = run_part(rs, o, limit, shared, barrier);
                    if r.is_ok() {
                        std::mem::forget(guard);
                    }
                    r.map_err(|e| named(p, set.as_deref(), e))
                })
            })
            .collect();
        join_all(handles, "a shard's backup")
    });
    let resumed = balancer.map(BalancerPause::resume);
    // The first real error, not a sibling's cancellation because of it
    // (and a part's error before the balancer's).
    if results.iter().any(|r| r.is_err()) {
        let mut errs: Vec<EngineError> = results.into_iter().filter_map(|r| r.err()).collect();
        let first = errs
            .iter()
            .position(|e| e.kind != ErrorKind::Cancelled)
            .unwrap_or(0);
        if let Some(Err(e)) = &resumed {
            tracing::error!(error = %e.message, "could not start the balancer again; start it with sh.startBalancer()");
        }
        return Err(errs.swap_remove(first));
    }
    let balancer_was = resumed.transpose()?;
    let mut out = Vec::new();
    let mut cluster_time = None;
    for (r, p) in results.into_iter().zip(parts) {
        let (cap, writers, t): (Captured, _, Timestamp) = r?;
        cluster_time = Some(t);
        for w in writers {
            writer.add_archive(w)?;
        }
        out.push((p.clone(), cap.backup, cap.txns_after));
    }
    for l in &lives {
        l.set_state(TaskState::Finishing);
        l.set_state(TaskState::Finished);
    }
    Ok(ShardedBackup {
        cluster_time: cluster_time.expect("parts"),
        parts: out,
        balancer_was,
    })
}

/// Fails the rendezvous when dropped (a part ended without its result).
struct FailOnDrop<'a>(&'a Barrier);

impl Drop for FailOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fail();
    }
}

/// One part: its dump, the rendezvous on the cluster time, its slice to it.
fn run_part(
    rs: &ReplicaSet,
    o: &DumpOptions,
    limit: &super::RateLimit,
    writer: &BackupWriter,
    barrier: &Barrier,
) -> Result<(Captured, Vec<stowage_repo::ArchiveWriter>, Timestamp), EngineError> {
    let d = rs.dump(o, limit, writer)?;
    let Some(t) = barrier.arrive(d.dump_end, &rs.part) else {
        return Err(err(ErrorKind::Cancelled, "cancelled: another part failed"));
    };
    let by_clock = reach(&rs.c, d.ends, t, REACH_WAIT, &rs.part).map_err(mid_backup)?;
    // The slice goes on to the oplog's newest entry now (readable: so no
    // transaction straddles it), past T: the restore cuts at T and leaves
    // out the transactions with entries on both sides of it. A shard whose
    // clock passed T without an entry after it: up to T.
    let end = if by_clock {
        t
    } else {
        d.ends.newest(&rs.c).map_err(mid_backup)?.unwrap_or(t)
    };
    let (cap, writers) = rs.capture(d, end, Some(t), by_clock, o.host_check, writer)?;
    Ok((cap, writers, t))
}

/// Waits until the oplog of `c` is complete up to `t`: no entry at or
/// before `t` can be written any more. Either the oplog holds an entry at
/// or after `t` (returns `false`), or the server's clock, as the
/// `operationTime` of its replies says, has passed `t` (returns `true`: an
/// idle server may have no such entry). mongod's documented way to get an
/// entry is `appendOplogNote` with `maxClusterTime`: it moves the node's
/// clock to `t` and writes a no-op after it; a server that refuses it gets
/// there through its own writes (mongod writes a no-op every 10 s in a
/// replica set) or its clock. Waits at most `wait`.
fn reach(
    c: &Client,
    ends: super::OplogEnds,
    t: Timestamp,
    wait: Duration,
    live: &LiveTask,
) -> Result<bool, EngineError> {
    let deadline = Instant::now() + wait;
    let admin = c.database("admin");
    let mut refused: Option<String> = None;
    let mut noted: Option<Instant> = None;
    loop {
        if ends.newest(c)?.is_some_and(|n| !ts_gt(t, n)) {
            return Ok(false);
        }
        if live.is_cancelled() {
            return Err(err(ErrorKind::Cancelled, "cancelled"));
        }
        // A note per second at most: a server whose clock is behind `t`
        // (and ignores maxClusterTime) gets there by itself.
        if refused.is_none() && noted.is_none_or(|n| n.elapsed() >= Duration::from_secs(1)) {
            noted = Some(Instant::now());
            let note = doc! {
                "appendOplogNote": 1,
                "data": {"msg": "stowage: backup cluster time"},
                "maxClusterTime": t,
            };
            match admin.run_command(note).run() {
                Ok(_) => continue,
                Err(e) => {
                    let e = driver(e);
                    if matches!(e.kind, ErrorKind::Unreachable | ErrorKind::ServerGone) {
                        return Err(e);
                    }
                    tracing::debug!(error = %e.message, "appendOplogNote refused; waiting for the server's clock");
                    refused = Some(e.message);
                }
            }
        }
        // Asked of a member the oplog reads may go to (the connection
        // string's read preference), not always the primary.
        let mut ping = admin.run_command(doc! {"ping": 1});
        if let Some(sc) = c.selection_criteria() {
            ping = ping.selection_criteria(sc.clone());
        }
        let reply = ping.run().map_err(driver)?;
        if reply
            .get_timestamp("operationTime")
            .is_ok_and(|now| !ts_gt(t, now))
        {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Err(err(
                ErrorKind::Protocol,
                format!(
                    "its oplog did not reach the cluster time {}:{} within {} s{}",
                    t.time,
                    t.increment,
                    wait.as_secs(),
                    refused
                        .map(|m| format!(" (appendOplogNote was refused: {m})"))
                        .unwrap_or_default()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The balancer stopped for a backup through a `mongos`; [`resume`] puts it
/// back as it was (dropping it without does too, on an error path).
///
/// Written against the documented commands (`balancerStatus`,
/// `balancerStop`, `balancerStart`); no `mongos` exists in the test
/// servers this project can reach, so this path is not exercised.
///
/// [`resume`]: BalancerPause::resume
struct BalancerPause {
    c: Client,
    /// `balancerStatus.mode` before: `full`, `off` …
    was: String,
    done: bool,
}

impl BalancerPause {
    fn stop(
        uri: &str,
        host_check: Option<&crate::HostCheck>,
    ) -> Result<BalancerPause, EngineError> {
        let (c, _) = connect_checked(uri, host_check).map_err(named_mongos)?;
        let admin = c.database("admin");
        let st = admin
            .run_command(doc! {"balancerStatus": 1})
            .run()
            .map_err(|e| named_mongos(driver(e)))?;
        let was = st.get_str("mode").unwrap_or("full").to_string();
        // The guard first: a balancerStop that fails after it turned the
        // balancer off still gets it started again.
        let pause = BalancerPause {
            c,
            was,
            done: false,
        };
        if pause.was != "off" {
            pause
                .c
                .database("admin")
                .run_command(doc! {"balancerStop": 1})
                .run()
                .map_err(|e| named_mongos(driver(e)))?;
        }
        Ok(pause)
    }

    fn resume(mut self) -> Result<String, EngineError> {
        self.done = true;
        if self.was != "off" {
            self.c
                .database("admin")
                .run_command(doc! {"balancerStart": 1})
                .run()
                .map_err(|e| named_mongos(driver(e)))?;
        }
        Ok(self.was.clone())
    }
}

impl Drop for BalancerPause {
    fn drop(&mut self) {
        if !self.done && self.was != "off" {
            let r = self
                .c
                .database("admin")
                .run_command(doc! {"balancerStart": 1})
                .run();
            if let Err(e) = r {
                tracing::error!(error = %driver(e).message, "could not start the balancer again; start it with sh.startBalancer()");
            }
        }
    }
}

fn named_mongos(e: EngineError) -> EngineError {
    EngineError {
        message: format!("mongos (balancer): {}", e.message),
        ..e
    }
}

/// What a sharded set records (`engine_meta`): the cluster time and, per
/// part, what a replica set's records plus its id, role and archive.
pub fn meta_of(b: &ShardedBackup) -> serde_json::Value {
    let ts = |t: Timestamp| serde_json::json!({"t": t.time, "i": t.increment});
    let parts: Vec<serde_json::Value> = b
        .parts
        .iter()
        .map(|(p, out, txns)| {
            let mut m = super::meta_of(out);
            m["id"] = p.id.clone().into();
            m["role"] = p.role.as_str().into();
            m["archive"] = super::escape(&p.id).into();
            if !txns.is_empty() {
                m["txns_after_cluster_time"] = txns.clone().into();
            }
            m
        })
        .collect();
    let sum = |k: &str| {
        b.parts
            .iter()
            .map(|(_, o, _)| match k {
                "documents" => o.documents,
                "collections" => o.collections,
                _ => o.oplog_entries,
            })
            .sum::<u64>()
    };
    let mut m = serde_json::json!({
        "topology": "sharded",
        "server_version": b.parts.first().map(|(_, o, _)| o.facts.version.clone()),
        "cluster_time": ts(b.cluster_time),
        "parts": parts,
        "documents": sum("documents"),
        "collections": sum("collections"),
        "oplog_entries": sum("oplog_entries"),
        "layout": "mongodump",
    });
    m["balancer"] = match &b.balancer_was {
        Some(was) => format!("paused through the mongos for the backup (was {was})"),
        None => "not paused (no mongos registered): a chunk migrating meanwhile may be in two shards' dumps or none".into(),
    }
    .into();
    if let Some(was) = &b.balancer_was {
        m["balancer_was"] = was.clone().into();
    }
    m
}

/// The shards a cluster's config servers (`config.shards`) or a `mongos`
/// (`listShards`) name, as connection strings without credentials: each
/// shard's hosts and replica set, with the options of `base` (TLS,
/// timeouts …) but its `replicaSet`. `uri` carries the credentials, `base`
/// is the same string without.
pub fn shard_list(
    uri: &str,
    base: &str,
    via_mongos: bool,
    host_check: Option<&crate::HostCheck>,
) -> Result<Vec<String>, EngineError> {
    let docs: Vec<mongodb::bson::Document> = if via_mongos {
        let (c, _) = connect_checked(uri, host_check)?;
        let r = c
            .database("admin")
            .run_command(doc! {"listShards": 1})
            .run()
            .map_err(driver)?;
        r.get_array("shards")
            .map(|a| a.iter().filter_map(|d| d.as_document().cloned()).collect())
            .unwrap_or_default()
    } else {
        let (c, _) = connect_checked(uri, host_check)?;
        c.database("config")
            .collection::<mongodb::bson::Document>("shards")
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .run()
            .map_err(driver)?
            .collect::<Result<_, _>>()
            .map_err(driver)?
    };
    // The cluster's options (TLS, timeouts, authSource …), not those of the
    // one connection: its replica set, a direct or load-balanced connection.
    let query: Vec<&str> = base
        .split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter(|kv| {
                    let k = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
                    !["replicaset", "directconnection", "loadbalanced"].contains(&k.as_str())
                })
                .collect()
        })
        .unwrap_or_default();
    // What the server says is pasted into a connection string: only names
    // and hosts, never options.
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 255
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let hosts_ok = |s: &str| {
        !s.is_empty()
            && s.split(',').all(|h| {
                !h.is_empty()
                    && h.len() <= 261
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".:-[]_".contains(&b))
            })
    };
    let mut out = Vec::new();
    for d in docs {
        let host = d
            .get_str("host")
            .map_err(|_| err(ErrorKind::Protocol, format!("a shard without a host: {d}")))?;
        // "rs/h1:p,h2:p" (a replica set) or "h:p" (a standalone shard).
        let (set, hosts) = match host.split_once('/') {
            Some((set, hosts)) => (Some(set), hosts),
            None => (None, host),
        };
        if !set.is_none_or(name_ok) || !hosts_ok(hosts) {
            return Err(err(
                ErrorKind::Protocol,
                format!("the cluster lists a shard as {host:?}: not a replica set and host list"),
            ));
        }
        let mut q: Vec<String> = query.iter().map(|s| s.to_string()).collect();
        if let Some(set) = set {
            q.insert(0, format!("replicaSet={set}"));
        }
        out.push(if q.is_empty() {
            format!("mongodb://{hosts}/")
        } else {
            format!("mongodb://{hosts}/?{}", q.join("&"))
        });
    }
    if out.is_empty() {
        return Err(err(
            ErrorKind::Unsupported,
            if via_mongos {
                "the mongos lists no shards"
            } else {
                "the config servers list no shards (config.shards is empty): give the shards with --shard"
            },
        ));
    }
    Ok(out)
}
