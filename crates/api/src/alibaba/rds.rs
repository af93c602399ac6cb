//! ApsaraDB RDS (2014-08-15): backup tasks (spec §9.1).

use super::policy::{Names, Ty, next_time, policy_body, render_extra, update_from};
use super::rpc::{RpcError, RpcRequest, ok_response, start_manual_backup};
use super::shared::{
    Page, RowFilters, binlog_fields, default_part, delete_sets, engine_version, instance_engine,
    mode_of, product_instances, query_sets, set_engine, set_engine_version, set_method,
    with_download_urls,
};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use stowage_catalog::{BackupSet, Task, TaskFilter};
use stowage_core::time::format_rfc3339;
use stowage_core::{TaskMode, TaskState};
use stowage_service::Service;

/// The rds view of the one task state machine: (BackupStatus,
/// BackupProgressStatus). Written once, tested as a table.
pub fn rds_status(s: TaskState) -> (&'static str, &'static str) {
    match s {
        TaskState::Pending => ("NoStart", "NoStart"),
        // Waiting to start again after a transient failure.
        TaskState::Retrying => ("NoStart", "NoStart"),
        TaskState::Checking => ("Checking", "Checking"),
        TaskState::Preparing => ("Preparing", "Preparing"),
        TaskState::Running | TaskState::Finishing => ("Uploading", "Uploading"),
        TaskState::Finished => ("Finished", "Finished"),
        TaskState::Failed | TaskState::Cancelled => ("Failed", "Finished"),
    }
}

/// `BackupJobStatus` filter values.
fn job_status_states(v: &str) -> Option<Vec<TaskState>> {
    match v {
        "NoStart" => Some(vec![TaskState::Pending, TaskState::Retrying]),
        "Progressing" => Some(vec![
            TaskState::Checking,
            TaskState::Preparing,
            TaskState::Running,
            TaskState::Finishing,
        ]),
        _ => None,
    }
}

fn job_json(t: &Task) -> Value {
    let (status, progress_status) = rds_status(t.state);
    let pct = stowage_service::percent(t);
    let mut j = json!({
        // A number, as the product's own JSON examples show (spec §8).
        "BackupJobId": t.id,
        "Process": pct.to_string(),
        "BackupStatus": status,
        "BackupProgressStatus": progress_status,
        "JobMode": if t.mode == TaskMode::Automated { "Automated" } else { "Manual" },
        "TaskAction": if t.mode == TaskMode::Automated { "NormalBackupTask" } else { "TempBackupTask" },
    });
    if let (TaskState::Finished, Some(set)) = (t.state, t.set_id) {
        j["BackupId"] = Value::String(set.to_string());
    }
    j
}

/// `InvalidDBInstanceId.NotFound` (404), shared with dds.
pub(super) fn instance_not_found(id: &str) -> RpcError {
    RpcError::new(
        StatusCode::NOT_FOUND,
        "InvalidDBInstanceId.NotFound",
        format!("The specified instance {id} is not found."),
    )
}

async fn instance_id(svc: &Service, req: &RpcRequest) -> Result<String, RpcError> {
    super::rpc::owned_instance(svc, req, "DBInstanceId", "rm-", instance_not_found).await
}

pub async fn dispatch(
    svc: &std::sync::Arc<Service>,
    req: &RpcRequest,
) -> Option<Result<Response, RpcError>> {
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

async fn describe_backup_tasks(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    // Ownership is checked with the listing (`owned_instance_tasks`).
    let inst = req.required("DBInstanceId")?.to_string();
    let mut f = TaskFilter {
        kinds: vec![stowage_core::TaskKind::Backup],
        instance_id: Some(inst),
        limit: Some(1000),
        ..Default::default()
    };
    let mode = match req.get("BackupMode") {
        Some(m) => Some(
            mode_of(m)
                .ok_or_else(|| RpcError::invalid("BackupMode", "expected Automated or Manual"))?,
        ),
        None => None,
    };
    if let Some(s) = req.get("BackupJobStatus") {
        f.states = job_status_states(s).ok_or_else(|| {
            RpcError::invalid("BackupJobStatus", "expected NoStart or Progressing")
        })?;
    }
    match req.get("BackupJobId") {
        // A named task is returned in any state.
        Some(j) => {
            f.task_id =
                Some(j.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    RpcError::invalid("BackupJobId", "expected a positive integer")
                })?)
        }
        // Otherwise only tasks that are not finished yet.
        None if f.states.is_empty() => {
            f.states = TaskState::ALL
                .into_iter()
                .filter(|s| s.is_active())
                .collect()
        }
        None => {}
    }
    let tasks =
        super::rpc::owned_instance_tasks(svc, req, "DBInstanceId", "rm-", instance_not_found, &f)
            .await?;
    let jobs: Vec<Value> = tasks
        .iter()
        .filter(|t| mode.is_none_or(|m| t.mode == m))
        .map(job_json)
        .collect();
    Ok(ok_response(
        json!({"Items": {"BackupJob": jobs}}),
        &req.request_id,
    ))
}

async fn create_backup(
    svc: &std::sync::Arc<Service>,
    req: &RpcRequest,
) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    // PostgreSQL takes Physical; MySQL Logical (its default) or Physical
    // (mariadb-backup on the database's machine). Snapshot is the cloud's
    // disk-snapshot method, which Stowage has not.
    let mysql = svc.instance(&req.principal, &inst).await?.engine == "mysql";
    let method = match (req.get("BackupMethod"), mysql) {
        (None, _) => None,
        (Some("Physical"), false) => None,
        (Some("Logical"), true) => Some("logical"),
        (Some("Physical"), true) => Some("physical"),
        (Some(_), false) => {
            return Err(RpcError::invalid(
                "BackupMethod",
                "only Physical backups are supported for this instance",
            ));
        }
        (Some(_), true) => {
            return Err(RpcError::invalid(
                "BackupMethod",
                "expected Logical or Physical for this instance",
            ));
        }
    };
    if let Some(t) = req.get("BackupType")
        && !["Auto", "FullBackup", "IncrementalBackup"].contains(&t)
    {
        return Err(RpcError::invalid(
            "BackupType",
            "expected Auto, FullBackup or IncrementalBackup",
        ));
    }
    match req.get("BackupStrategy") {
        None | Some("instance") => {}
        Some("db") => {
            return Err(RpcError::invalid(
                "BackupStrategy",
                "database-level backups are not supported: the whole instance is backed up",
            ));
        }
        Some(_) => {
            return Err(RpcError::invalid(
                "BackupStrategy",
                "expected db or instance",
            ));
        }
    }
    if req.get("DBName").is_some() {
        return Err(RpcError::invalid(
            "DBName",
            "database-level backups are not supported: the whole instance is backed up",
        ));
    }
    let t = start_manual_backup(svc, req, &inst, "IncorrectDBInstanceState", method).await?;
    Ok(ok_response(
        json!({"BackupJobId": t.id.to_string()}),
        &req.request_id,
    ))
}

fn backup_json(s: &BackupSet) -> Value {
    let version = set_engine_version(s);
    let mut v = json!({
        "BackupId": s.id.to_string(),
        "DBInstanceId": s.instance_id,
        "BackupStatus": "Success",
        "BackupStartTime": format_rfc3339(s.started_ms),
        "BackupEndTime": format_rfc3339(s.finished_ms),
        "BackupType": "FullBackup",
        "BackupMode": if s.mode == TaskMode::Automated { "Automated" } else { "Manual" },
        "BackupMethod": set_method(s),
        "BackupInitiator": if s.mode == TaskMode::Automated { "System" } else { "User" },
        // Size of the data the set holds (before dedup and compression).
        "BackupSize": s.bytes_logical,
        "ConsistentTime": s.finished_ms / 1000,
        "Engine": set_engine(s),
        "EngineVersion": version,
        "IsAvail": 1,
        "StoreStatus": "Disabled",
        "StorageClass": "0",
        "HostInstanceID": "",
    });
    // MySQL: where in the binary log the set is consistent (fields outside
    // the SDK's model, which has none for it; its raw JSON carries them).
    if let Value::Object(m) = &mut v {
        m.extend(binlog_fields(s));
    }
    v
}

async fn describe_backups(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    let type_ok = match req.get("BackupType") {
        None | Some("FullBackup") => true,
        Some("IncrementalBackup") => false,
        Some(_) => {
            return Err(RpcError::invalid(
                "BackupType",
                "expected FullBackup or IncrementalBackup",
            ));
        }
    };
    let page = Page::from(req, 1..=100, 30)?;
    let mut sets = query_sets(svc, req, &inst).await?;
    sets.retain(|_| type_ok);
    let items = with_download_urls(svc, req, page.slice(&sets), default_part, backup_json).await?;
    Ok(ok_response(
        json!({
            "Items": {"Backup": items},
            "PageNumber": page.number.to_string(),
            "PageRecordCount": items.len().to_string(),
            "TotalRecordCount": sets.len().to_string(),
            "TotalEcsSnapshotSize": 0,
        }),
        &req.request_id,
    ))
}

async fn delete_backup(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    delete_sets(svc, req, &inst).await?;
    Ok(ok_response(json!({}), &req.request_id))
}

/// DescribeDBInstances: the caller's `rm-` instances, filtered and paged.
async fn describe_db_instances(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let page = Page::from(req, 1..=100, 30)?;
    let region = req.get("RegionId").unwrap_or("local");
    let mut rows = Vec::new();
    for i in product_instances(svc, req, "rm-", "DBInstanceId").await? {
        rows.push(json!({
            "DBInstanceId": i.id,
            "DBInstanceDescription": i.name,
            "Engine": instance_engine(&i),
            "EngineVersion": engine_version(svc, req, &i.id).await?,
            "DBInstanceStatus": "Running",
            "DBInstanceType": "Primary",
            "Category": "Basic",
            "ConnectionMode": "Standard",
            "ConnectionString": i.host,
            "InstanceNetworkType": "Classic",
            "RegionId": region,
            "ZoneId": format!("{region}-a"),
            "CreateTime": format_rfc3339(i.created_ms),
            "PayType": "Postpaid",
            "DBInstanceClass": "stowage.local",
            "LockMode": "Unlock",
        }));
    }
    let rows = RowFilters {
        equal: &[
            ("Engine", "Engine"),
            ("EngineVersion", "EngineVersion"),
            ("DBInstanceStatus", "DBInstanceStatus"),
            ("DBInstanceType", "DBInstanceType"),
            ("DBInstanceClass", "DBInstanceClass"),
            ("Category", "Category"),
            ("ConnectionMode", "ConnectionMode"),
            ("ConnectionString", "ConnectionString"),
            ("InstanceNetworkType", "InstanceNetworkType"),
            ("PayType", "PayType"),
            ("ZoneId", "ZoneId"),
        ],
        contains: &[("SearchKey", &["DBInstanceId", "DBInstanceDescription"])],
        absent: &[
            "VpcId",
            "VSwitchId",
            "ResourceGroupId",
            "DedicatedHostId",
            "DedicatedHostGroupId",
            "proxyId",
            "Tags",
        ],
    }
    .apply(req, rows);
    let items = page.slice(&rows).to_vec();
    Ok(ok_response(
        json!({"Items": {"DBInstance": items}, "PageNumber": page.number, "PageRecordCount": items.len(), "TotalRecordCount": rows.len()}),
        &req.request_id,
    ))
}

const POLICY: Names = Names {
    window: &["PreferredBackupTime"],
    weekdays: &["PreferredBackupPeriod"],
    retention: &["BackupRetentionPeriod"],
    retention_days: 7..=730,
    stored: &[
        ("ArchiveBackupKeepCount", Ty::Int),
        ("ArchiveBackupKeepPolicy", Ty::Str),
        ("ArchiveBackupRetentionPeriod", Ty::Str),
        ("BackupInterval", Ty::Str),
        ("BackupLog", Ty::Str),
        ("BackupMethod", Ty::Str),
        ("BackupPriority", Ty::Int),
        ("Category", Ty::Str),
        ("CompressType", Ty::Str),
        ("EnableBackupLog", Ty::Str),
        ("EnableIncrementDataBackup", Ty::Bool),
        ("EnablePitrProtection", Ty::Bool),
        ("HighSpaceUsageProtection", Ty::Str),
        ("IncBackupInterval", Ty::Int),
        ("LocalLogRetentionHours", Ty::Str),
        ("LocalLogRetentionSpace", Ty::Str),
        ("LogBackupFrequency", Ty::Str),
        ("LogBackupLocalRetentionNumber", Ty::Int),
        ("LogBackupRetentionPeriod", Ty::Str),
        ("ReleasedKeepPolicy", Ty::Str),
    ],
    refused: &["AdvancedDataPolicies", "AdvancedLogPolicies"],
};

/// rds policy fields Stowage stores but does not act on, with the values a
/// new instance shows (typed as the SDK model declares them).
/// `mysql`: the instance is MySQL, whose automated backups are logical
/// unless the policy says Physical.
fn policy_defaults(mysql: bool) -> Vec<(&'static str, Value)> {
    vec![
        ("ArchiveBackupKeepCount", json!("1")),
        ("ArchiveBackupKeepPolicy", json!("ByMonth")),
        ("ArchiveBackupRetentionPeriod", json!("0")),
        ("BackupInterval", json!("-1")),
        ("BackupLog", json!("Enable")),
        (
            "BackupMethod",
            json!(if mysql { "Logical" } else { "Physical" }),
        ),
        ("BackupPriority", json!(1)),
        ("Category", json!("Standard")),
        ("CompressType", json!("1")),
        ("EnableBackupLog", json!("1")),
        ("EnableIncrementDataBackup", json!(false)),
        ("EnablePitrProtection", json!(false)),
        ("HighSpaceUsageProtection", json!("Enable")),
        ("IncBackupInterval", json!(-1)),
        ("LocalLogRetentionHours", json!(18)),
        ("LocalLogRetentionSpace", json!("30")),
        ("LogBackupFrequency", json!("LogInterval")),
        ("LogBackupLocalRetentionNumber", json!(60)),
        ("LogBackupRetentionPeriod", json!(7)),
        ("ReleasedKeepPolicy", json!("None")),
    ]
}

fn check_policy_mode(req: &RpcRequest) -> Result<(), RpcError> {
    match req.get("BackupPolicyMode") {
        None | Some("DataBackupPolicy") | Some("LogBackupPolicy") => Ok(()),
        Some(_) => Err(RpcError::invalid(
            "BackupPolicyMode",
            "expected DataBackupPolicy or LogBackupPolicy",
        )),
    }
}

async fn describe_backup_policy(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    check_policy_mode(req)?;
    let sp = svc.policy(&req.principal, &inst).await?;
    let mysql = svc.instance(&req.principal, &inst).await?.engine == "mysql";
    let body = policy_body(
        &sp,
        &policy_defaults(mysql),
        [
            ("BackupRetentionPeriod", json!(sp.policy.retention_days)),
            ("PreferredBackupTime", json!(sp.policy.window.to_string())),
            (
                "PreferredBackupPeriod",
                json!(sp.policy.weekdays.to_string()),
            ),
            ("PreferredNextBackupTime", json!(next_time(&sp))),
            ("AdvancedBackupPolicyEnabled", json!(false)),
            ("AdvancedDataPolicies", json!({"AdvancedDataPolicy": []})),
            ("AdvancedLogPolicies", json!({"AdvancedLogPolicy": []})),
            ("PitrRetentionPeriod", json!(7)),
            ("SupportModifyBackupPriority", json!(false)),
            ("SupportReleasedKeep", json!(1)),
            ("SupportVolumeShadowCopy", json!(0)),
            ("SupportsHighFrequencyBackup", json!(0)),
        ],
    );
    Ok(ok_response(body, &req.request_id))
}

async fn modify_backup_policy(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    check_policy_mode(req)?;
    let mysql = svc.instance(&req.principal, &inst).await?.engine == "mysql";
    // A MySQL instance's automated backups take the policy's method:
    // Physical reads the server's files on Stowage's machine (the
    // operator's keys only).
    if mysql {
        match req.get("BackupMethod") {
            None | Some("Logical") => {}
            Some("Physical") if req.principal.admin => {}
            Some("Physical") => {
                return Err(RpcError::new(
                    StatusCode::FORBIDDEN,
                    "OperationDenied",
                    "BackupMethod Physical reads the server's data directory on Stowage's machine: only the operator's keys may choose it",
                ));
            }
            Some(_) => {
                return Err(RpcError::invalid(
                    "BackupMethod",
                    "expected Logical or Physical for this instance",
                ));
            }
        }
    }
    let u = update_from(req, &POLICY)?;
    let sp = svc.set_policy(&req.principal, &inst, u).await?;
    let all = render_extra(&sp, &policy_defaults(mysql));
    let mut body = serde_json::Map::new();
    body.insert("DBInstanceID".into(), json!(inst));
    for k in [
        "CompressType",
        "EnableBackupLog",
        "EnableIncrementDataBackup",
        "EnablePitrProtection",
        "HighSpaceUsageProtection",
        "IncBackupInterval",
        "LocalLogRetentionHours",
        "LocalLogRetentionSpace",
        "LogBackupLocalRetentionNumber",
    ] {
        body.insert(k.into(), all[k].clone());
    }
    Ok(ok_response(Value::Object(body), &req.request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole mapping, written out once.
    #[test]
    fn state_table() {
        let expected = [
            (TaskState::Pending, ("NoStart", "NoStart")),
            (TaskState::Checking, ("Checking", "Checking")),
            (TaskState::Preparing, ("Preparing", "Preparing")),
            (TaskState::Running, ("Uploading", "Uploading")),
            (TaskState::Finishing, ("Uploading", "Uploading")),
            (TaskState::Finished, ("Finished", "Finished")),
            (TaskState::Failed, ("Failed", "Finished")),
            (TaskState::Cancelled, ("Failed", "Finished")),
            (TaskState::Retrying, ("NoStart", "NoStart")),
        ];
        assert_eq!(expected.len(), TaskState::ALL.len());
        for (s, e) in expected {
            assert_eq!(rds_status(s), e, "{s}");
        }
        assert_eq!(
            job_status_states("NoStart"),
            Some(vec![TaskState::Pending, TaskState::Retrying])
        );
        assert_eq!(job_status_states("Progressing").unwrap().len(), 4);
        assert!(job_status_states("Finished").is_none());
    }
}
