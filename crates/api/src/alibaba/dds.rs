//! ApsaraDB for MongoDB (2015-12-01): backup tasks, sets, policies and
//! instances (spec §9.2) of `dds-` instances, which are MongoDB replica sets
//! (sharded clusters next).

use super::policy::{Names, Ty, next_time, policy_body, update_from};
use super::rds::instance_not_found;
use super::rpc::{
    RpcError, RpcRequest, backup_task_filter, ok_response, owned_instance, start_manual_backup,
};
use super::shared::{
    Page, RowFilters, default_part, delete_sets, engine_version, mode_name, mode_of,
    product_instances, query_sets, set_engine_version, with_download_urls,
};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use stowage_catalog::{BackupSet, Task};
use stowage_core::time::format_rfc3339;
use stowage_core::{TaskMode, TaskState};
use stowage_service::Service;

/// The dds view of the task state machine (`BackupSetStatus`).
pub fn dds_status(s: TaskState) -> &'static str {
    match s {
        // Waiting: to start, or to start again after a transient failure.
        TaskState::Pending | TaskState::Retrying => "Scheduled",
        TaskState::Checking | TaskState::Preparing => "Checking",
        TaskState::Running | TaskState::Finishing => "Backuping",
        TaskState::Finished => "Finished",
        TaskState::Failed | TaskState::Cancelled => "Failed",
    }
}

/// A backup method as the product names it.
fn method_name(m: &str) -> &'static str {
    match m {
        "logical" => "Logical",
        _ => "Physical",
    }
}

/// The caller's `dds-` instance named by `DBInstanceId`.
async fn instance_id(svc: &Service, req: &RpcRequest) -> Result<String, RpcError> {
    owned_instance(svc, req, "DBInstanceId", "dds-", instance_not_found).await
}

pub async fn dispatch(svc: &Arc<Service>, req: &RpcRequest) -> Option<Result<Response, RpcError>> {
    Some(match req.action.as_str() {
        "DescribeBackupTasks" => describe_backup_tasks(svc, req).await,
        "CreateBackup" => create_backup(svc, req).await,
        "DescribeBackups" => describe_backups(svc, req).await,
        "DeleteBackup" => delete_backup(svc, req).await,
        "DescribeDBInstances" => describe_db_instances(svc, req).await,
        "DescribeBackupPolicy" => describe_backup_policy(svc, req).await,
        "ModifyBackupPolicy" => modify_backup_policy(svc, req).await,
        _ => return None,
    })
}

fn job_json(t: &Task) -> Value {
    let mut j = json!({
        // A number, as the product's example sends it (the lower-case `j` is the wire's).
        "BackupjobId": t.id,
        "BackupSetStatus": dds_status(t.state),
        // A waiting automated task: when its window opens.
        "BackupStartTime": format_rfc3339(t.started_ms.or(t.scheduled_ms).unwrap_or(t.created_ms)),
        "JobMode": if t.mode == TaskMode::Automated { "Automated" } else { "Manual" },
    });
    if t.state.is_running() {
        let pct = stowage_service::percent(t);
        j["Progress"] = Value::String(format!("{pct}%"));
    }
    j
}

async fn describe_backup_tasks(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    // Ownership is checked with the listing (`owned_instance_tasks`).
    let inst = req.required("DBInstanceId")?.to_string();
    let f = backup_task_filter(req, inst)?;
    let mode = match req.get("BackupMode") {
        Some(m) => Some(
            mode_of(m)
                .ok_or_else(|| RpcError::invalid("BackupMode", "expected Automated or Manual"))?,
        ),
        None => None,
    };
    let jobs: Vec<Value> =
        super::rpc::owned_instance_tasks(svc, req, "DBInstanceId", "dds-", instance_not_found, &f)
            .await?
            .iter()
            .filter(|t| mode.is_none_or(|m| t.mode == m))
            .map(job_json)
            .collect();
    // A flat array: a wrapper object here gives SDK callers a None body.
    Ok(ok_response(json!({"BackupJobs": jobs}), &req.request_id))
}

async fn create_backup(svc: &Arc<Service>, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    // The instance's engine takes one kind of backup (MongoDB: logical,
    // a dump plus the oplog); asking for another is refused, not ignored.
    if let Some(m) = req.get("BackupMethod") {
        let engine = svc.instance(&req.principal, &inst).await?.engine;
        let Some(method) = stowage_service::engine_method(&engine) else {
            return Err(RpcError::invalid(
                "BackupMethod",
                &format!("this build has no {engine} engine"),
            ));
        };
        let asked = match m {
            "Logical" => "logical",
            "Physical" | "Snapshot" => "physical",
            _ => {
                return Err(RpcError::invalid(
                    "BackupMethod",
                    "expected Logical, Physical or Snapshot",
                ));
            }
        };
        if asked != method {
            return Err(RpcError::invalid(
                "BackupMethod",
                &format!(
                    "this instance takes {} backups (BackupMethod={})",
                    method,
                    method_name(method)
                ),
            ));
        }
    }
    let t = start_manual_backup(svc, req, &inst, "IncorrectDBInstanceState", None).await?;
    // The set a task produces gets the task's id (see the catalog).
    Ok(ok_response(
        json!({"BackupJobId": t.id.to_string(), "BackupId": t.id.to_string()}),
        &req.request_id,
    ))
}

fn backup_json(s: &BackupSet) -> Value {
    json!({
        "BackupId": s.id.to_string(),
        "BackupJobId": s.task_id.to_string(),
        "BackupStatus": "Success",
        "BackupStartTime": format_rfc3339(s.started_ms),
        "BackupEndTime": format_rfc3339(s.finished_ms),
        "BackupExpireTime": s.expires_ms.map(format_rfc3339).unwrap_or_default(),
        "BackupType": "FullBackup",
        "BackupMode": mode_name(s.mode),
        "BackupMethod": method_name(&s.method),
        "BackupScale": "DBInstance",
        "BackupSize": s.bytes_logical,
        // The databases the set holds, comma-separated (as the product).
        "BackupDBNames": s.meta.get("databases").and_then(Value::as_array).map(|d| {
            d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
        }).unwrap_or_default(),
        "BackupName": format!("stowage-{}", s.id),
        // Filled by describe_backups (download links made on demand).
        "BackupDownloadURL": "",
        "BackupIntranetDownloadURL": "",
        "EngineVersion": set_engine_version(s),
        "IsAvail": true,
    })
}

/// The ids of a sharded instance's nodes that have backups: its shards
/// (`dds-…_0` …) and config servers (`dds-…_config`), from its options.
fn node_ids(i: &stowage_catalog::Instance) -> Vec<String> {
    let shards = i.options.get("shards").and_then(Value::as_array);
    let config = i.options.get("config").filter(|c| !c.is_null());
    shards
        .into_iter()
        .flatten()
        .chain(config)
        .filter_map(|p| p.get("id").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// One node's part of a sharded cluster's set, as DescribeBackups shows a
/// node's backups: that part's size and databases.
fn node_backup_json(s: &BackupSet, node: &str) -> Value {
    let mut v = backup_json(s);
    let part = s
        .meta
        .get("parts")
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("id").and_then(Value::as_str) == Some(node))
        });
    if let Some(p) = part {
        if let Some(b) = p.get("bytes").and_then(Value::as_u64) {
            v["BackupSize"] = b.into();
        }
        v["BackupDBNames"] = p
            .get("databases")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
            .into();
    }
    v
}

async fn describe_backups(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    let i = svc.instance(&req.principal, &inst).await?;
    // A sharded cluster's backups are listed per node (shard or config
    // servers), as the product's API asks.
    let node = if i.topology == "sharded" {
        let nodes = node_ids(&i);
        let n = req
            .get("NodeId")
            .ok_or_else(|| RpcError::missing("NodeId"))?;
        if !nodes.iter().any(|x| x == n) {
            return Err(RpcError::invalid(
                "NodeId",
                &format!(
                    "instance {inst} has no node {n} (its nodes: {})",
                    nodes.join(", ")
                ),
            ));
        }
        Some(n.to_string())
    } else {
        if req.get("NodeId").is_some() {
            return Err(RpcError::invalid(
                "NodeId",
                "only for sharded cluster instances",
            ));
        }
        None
    };
    let job = req
        .get("BackupJobId")
        .map(|j| {
            j.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| RpcError::invalid("BackupJobId", "expected a backup job id"))
        })
        .transpose()?;
    let page = Page::from(req, 30..=100, 30)?;
    let mut sets = query_sets(svc, req, &inst).await?;
    if let Some(j) = job {
        sets.retain(|s| s.task_id == j);
    }
    if let Some(n) = &node {
        sets.retain(|s| {
            matches!(&s.consistent_point, Some(stowage_core::ConsistentPoint::ClusterTime { parts, .. }) if parts.contains(n))
        });
    }
    let part = |s: &BackupSet| match &node {
        Some(n) => Some(n.clone()),
        None => default_part(s),
    };
    let to_json = |s: &BackupSet| match &node {
        Some(n) => node_backup_json(s, n),
        None => backup_json(s),
    };
    let items = with_download_urls(svc, req, page.slice(&sets), part, to_json).await?;
    Ok(ok_response(
        json!({
            "Backups": {"Backup": items},
            "PageNumber": page.number,
            "PageSize": page.size,
            "TotalCount": sets.len(),
        }),
        &req.request_id,
    ))
}

async fn delete_backup(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    delete_sets(svc, req, &inst).await?;
    Ok(ok_response(json!({}), &req.request_id))
}

async fn describe_db_instances(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let page = Page::from(req, 1..=100, 30)?;
    if let Some(t) = req.get("DBInstanceType")
        && !["replicate", "sharding", "serverless"].contains(&t)
    {
        return Err(RpcError::invalid(
            "DBInstanceType",
            "expected replicate, sharding or serverless",
        ));
    }
    let region = req.get("RegionId").unwrap_or("local");
    let mut rows = Vec::new();
    for i in product_instances(svc, req, "dds-", "DBInstanceId").await? {
        let sharded = i.topology == "sharded";
        let mut row = json!({
            "DBInstanceId": i.id,
            "DBInstanceDescription": i.name,
            "DBInstanceType": if i.topology == "sharded" { "sharding" } else { "replicate" },
            "DBInstanceStatus": "Running",
            "DBInstanceClass": "stowage.local",
            "Engine": "MongoDB",
            "EngineVersion": engine_version(svc, req, &i.id).await?,
            "RegionId": region,
            "ZoneId": format!("{region}-a"),
            "CreationTime": format_rfc3339(i.created_ms),
            "ChargeType": "PostPaid",
            "NetworkType": "Classic",
            "LockMode": "Unlock",
            "Tags": {"Tag": []},
        });
        if sharded {
            // The shards as the model's ShardList carries them (the config
            // servers have no place in this model; DescribeBackups takes
            // their id as a NodeId).
            let shards: Vec<Value> = i
                .options
                .get("shards")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    json!({
                        "NodeId": p.get("id").cloned().unwrap_or(Value::Null),
                        "NodeClass": "stowage.local",
                        "NodeDescription": p.get("uri").cloned().unwrap_or(Value::Null),
                        "ReadonlyReplicas": 0,
                    })
                })
                .collect();
            row["ShardList"] = json!({"ShardAttribute": shards});
            let mongos: Vec<Value> = i
                .options
                .get("mongos")
                .and_then(Value::as_str)
                .map(|u| json!({"NodeId": format!("{}_mongos", i.id), "NodeClass": "stowage.local", "NodeDescription": u}))
                .into_iter()
                .collect();
            row["MongosList"] = json!({"MongosAttribute": mongos});
        }
        rows.push(row);
    }
    let rows = RowFilters {
        equal: &[
            ("DBInstanceType", "DBInstanceType"),
            ("DBInstanceStatus", "DBInstanceStatus"),
            ("DBInstanceClass", "DBInstanceClass"),
            ("Engine", "Engine"),
            ("EngineVersion", "EngineVersion"),
            ("ChargeType", "ChargeType"),
            ("NetworkType", "NetworkType"),
            ("ZoneId", "ZoneId"),
        ],
        contains: &[("DBInstanceDescription", &["DBInstanceDescription"])],
        absent: &[
            "VpcId",
            "VSwitchId",
            "ResourceGroupId",
            "ConnectionDomain",
            "ReplicationFactor",
            "DBNodeType",
            "ExpireTime",
            "Tag.",
        ],
    }
    .apply(req, rows);
    let items = page.slice(&rows).to_vec();
    Ok(ok_response(
        json!({"DBInstances": {"DBInstance": items}, "PageNumber": page.number, "PageSize": page.size, "TotalCount": rows.len()}),
        &req.request_id,
    ))
}

const POLICY: Names = Names {
    window: &["PreferredBackupTime"],
    weekdays: &["PreferredBackupPeriod"],
    retention: &["BackupRetentionPeriod"],
    retention_days: 7..=730,
    stored: &[
        ("BackupInterval", Ty::Str),
        ("BackupRetentionPolicyOnClusterDeletion", Ty::Int),
        ("CrossBackupPeriod", Ty::Str),
        ("CrossBackupType", Ty::Str),
        ("CrossLogRetentionType", Ty::Str),
        ("CrossLogRetentionValue", Ty::Int),
        ("CrossRetentionType", Ty::Str),
        ("CrossRetentionValue", Ty::Int),
        ("DestRegion", Ty::Str),
        ("EnableBackupLog", Ty::Int),
        ("EnableCrossLogBackup", Ty::Int),
        ("HighFrequencyBackupRetention", Ty::Int),
        ("LogBackupRetentionPeriod", Ty::Int),
        ("PreserveOneEachHour", Ty::Bool),
        ("SnapshotBackupType", Ty::Str),
        ("SrcRegion", Ty::Str),
    ],
    refused: &[],
};

fn policy_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("BackupInterval", json!(-1)),
        ("BackupRetentionPolicyOnClusterDeletion", json!(0)),
        ("CrossBackupPeriod", json!("")),
        ("CrossLogRetentionType", json!("")),
        ("CrossLogRetentionValue", json!(0)),
        ("CrossRetentionType", json!("")),
        ("CrossRetentionValue", json!(0)),
        ("DestRegion", json!("")),
        ("EnableBackupLog", json!(0)),
        ("EnableCrossLogBackup", json!(0)),
        ("HighFrequencyBackupRetention", json!("1")),
        ("LogBackupRetentionPeriod", json!(7)),
        ("PreserveOneEachHour", json!(false)),
        ("SnapshotBackupType", json!("Standard")),
        ("SrcRegion", json!("")),
    ]
}

async fn describe_backup_policy(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    let sp = svc.policy(&req.principal, &inst).await?;
    let body = policy_body(
        &sp,
        &policy_defaults(),
        [
            (
                "BackupRetentionPeriod",
                json!(sp.policy.retention_days.to_string()),
            ),
            ("PreferredBackupTime", json!(sp.policy.window.to_string())),
            (
                "PreferredBackupPeriod",
                json!(sp.policy.weekdays.to_string()),
            ),
            ("PreferredNextBackupTime", json!(next_time(&sp))),
        ],
    );
    Ok(ok_response(body, &req.request_id))
}

async fn modify_backup_policy(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    let u = update_from(req, &POLICY)?;
    svc.set_policy(&req.principal, &inst, u).await?;
    Ok(ok_response(json!({}), &req.request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_table() {
        let expected = [
            (TaskState::Pending, "Scheduled"),
            (TaskState::Checking, "Checking"),
            (TaskState::Preparing, "Checking"),
            (TaskState::Running, "Backuping"),
            (TaskState::Finishing, "Backuping"),
            (TaskState::Finished, "Finished"),
            (TaskState::Failed, "Failed"),
            (TaskState::Cancelled, "Failed"),
            (TaskState::Retrying, "Scheduled"),
        ];
        assert_eq!(expected.len(), TaskState::ALL.len());
        for (s, e) in expected {
            assert_eq!(dds_status(s), e, "{s}");
        }
    }
}
