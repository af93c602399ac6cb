//! Where a backup set is consistent: one typed value per kind of engine, so
//! the API dialects and the CLI read it without knowing engine metadata.
//! Stored and served as the JSON each variant serializes to (the shapes are
//! disjoint, so reading needs no tag).

use serde::{Deserialize, Serialize};

/// An oplog timestamp (seconds, increment), as MongoDB orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OplogTs {
    pub t: u32,
    pub i: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConsistentPoint {
    /// PostgreSQL: the WAL range the backup needs; consistent at `stop_lsn`.
    Wal {
        start_lsn: String,
        stop_lsn: String,
        timeline: u32,
    },
    /// MongoDB replica set: the data as of `oplog_ts` of `replica_set`.
    Oplog {
        oplog_ts: OplogTs,
        #[serde(default)]
        replica_set: Option<String>,
    },
    /// MongoDB sharded cluster: every shard (and the config servers) as of
    /// one cluster time.
    ClusterTime {
        cluster_time: OplogTs,
        /// The replica sets restored to it, shards first.
        parts: Vec<String>,
    },
    /// MySQL/MariaDB: the data as of a position of server `server_id`'s
    /// binary log (absent when it logs none), with the GTID set executed
    /// there.
    Binlog {
        server_id: u64,
        binlog_file: Option<String>,
        binlog_position: Option<u64>,
        gtid_set: Option<String>,
    },
}

impl ConsistentPoint {
    /// Reads a stored point; `None` for a shape this build does not know.
    pub fn from_json(v: &serde_json::Value) -> Option<ConsistentPoint> {
        serde_json::from_value(v.clone()).ok()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a point serializes")
    }
}

impl std::fmt::Display for ConsistentPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsistentPoint::Wal {
                stop_lsn, timeline, ..
            } => write!(f, "LSN {stop_lsn} (timeline {timeline})"),
            ConsistentPoint::Oplog {
                oplog_ts,
                replica_set,
            } => {
                write!(f, "oplog {}:{}", oplog_ts.t, oplog_ts.i)?;
                if let Some(rs) = replica_set {
                    write!(f, " of {rs}")?;
                }
                Ok(())
            }
            ConsistentPoint::ClusterTime {
                cluster_time,
                parts,
            } => {
                write!(
                    f,
                    "cluster time {}:{} of {} replica sets",
                    cluster_time.t,
                    cluster_time.i,
                    parts.len()
                )
            }
            ConsistentPoint::Binlog {
                binlog_file,
                server_id: _,
                binlog_position,
                gtid_set,
            } => {
                match (binlog_file, binlog_position) {
                    (Some(file), Some(pos)) => write!(f, "binlog {file}:{pos}")?,
                    _ => write!(f, "binlog off")?,
                }
                if let Some(g) = gtid_set.as_deref().filter(|g| !g.is_empty()) {
                    write!(f, " (GTID {g})")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_shapes_read_back() {
        let wal = json!({"start_lsn": "0/3000028", "stop_lsn": "0/3000100", "timeline": 1});
        let p = ConsistentPoint::from_json(&wal).unwrap();
        assert_eq!(p.to_json(), wal);
        assert_eq!(p.to_string(), "LSN 0/3000100 (timeline 1)");
        let op = json!({"oplog_ts": {"t": 1764500000, "i": 3}, "replica_set": "rs0"});
        let p = ConsistentPoint::from_json(&op).unwrap();
        assert_eq!(p.to_json(), op);
        assert_eq!(p.to_string(), "oplog 1764500000:3 of rs0");
        assert!(ConsistentPoint::from_json(&json!({"gtid": "x"})).is_none());
        let ct = json!({"cluster_time": {"t": 5, "i": 2}, "parts": ["dds-a_0", "dds-a_config"]});
        let p = ConsistentPoint::from_json(&ct).unwrap();
        assert!(matches!(p, ConsistentPoint::ClusterTime { .. }));
        assert_eq!(p.to_json(), ct);
        assert_eq!(p.to_string(), "cluster time 5:2 of 2 replica sets");
        let bl = json!({"server_id": 1, "binlog_file": "binlog.000002", "binlog_position": 1234, "gtid_set": "0-1-42"});
        let p = ConsistentPoint::from_json(&bl).unwrap();
        assert_eq!(p.to_json(), bl);
        assert_eq!(p.to_string(), "binlog binlog.000002:1234 (GTID 0-1-42)");
    }
}
