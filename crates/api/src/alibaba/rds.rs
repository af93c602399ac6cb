//! ApsaraDB RDS (2014-08-15): backup tasks (spec §9.1).

use super::rpc::{RpcError, RpcRequest, ok_response, start_manual_backup};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use stowage_catalog::{BackupSet, BackupTask, TaskFilter};
use stowage_core::time::{format_rfc3339, parse_rfc3339};
use stowage_core::{TaskMode, TaskState};
use stowage_service::{ErrorKind, Service};

/// The rds view of the one task state machine: (BackupStatus,
/// BackupProgressStatus). Written once, tested as a table.
pub fn rds_status(s: TaskState) -> (&'static str, &'static str) {
    match s {
        TaskState::Pending => ("NoStart", "NoStart"),
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
        "NoStart" => Some(vec![TaskState::Pending]),
        "Progressing" => Some(vec![
            TaskState::Checking,
            TaskState::Preparing,
            TaskState::Running,
            TaskState::Finishing,
        ]),
        _ => None,
    }
}

pub(super) fn mode_of(v: &str) -> Option<TaskMode> {
    match v {
        "Automated" => Some(TaskMode::Automated),
        "Manual" => Some(TaskMode::Manual),
        _ => None,
    }
}

fn job_json(t: &BackupTask) -> Value {
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

fn instance_not_found(id: &str) -> RpcError {
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
        _ => return None,
    })
}

async fn describe_backup_tasks(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    let mut f = TaskFilter {
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
    let tasks = svc.list_tasks(&req.principal, &f).await?;
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
    if let Some(m) = req.get("BackupMethod")
        && m != "Physical"
    {
        return Err(RpcError::invalid(
            "BackupMethod",
            "only Physical backups are supported for this instance",
        ));
    }
    if let Some(t) = req.get("BackupType")
        && !["Auto", "FullBackup", "IncrementalBackup"].contains(&t)
    {
        return Err(RpcError::invalid(
            "BackupType",
            "expected Auto, FullBackup or IncrementalBackup",
        ));
    }
    if let Some(s) = req.get("BackupStrategy")
        && !["db", "instance"].contains(&s)
    {
        return Err(RpcError::invalid(
            "BackupStrategy",
            "expected db or instance",
        ));
    }
    let t = start_manual_backup(svc, req, &inst, "IncorrectDBInstanceState").await?;
    Ok(ok_response(
        json!({"BackupJobId": t.id.to_string()}),
        &req.request_id,
    ))
}

fn backup_json(s: &BackupSet) -> Value {
    let version = s
        .meta
        .get("server_version_num")
        .and_then(Value::as_u64)
        .map(|v| (v / 10000).to_string());
    json!({
        "BackupId": s.id.to_string(),
        "DBInstanceId": s.instance_id,
        "BackupStatus": "Success",
        "BackupStartTime": format_rfc3339(s.started_ms),
        "BackupEndTime": format_rfc3339(s.finished_ms),
        "BackupType": "FullBackup",
        "BackupMode": if s.mode == TaskMode::Automated { "Automated" } else { "Manual" },
        "BackupMethod": "Physical",
        "BackupInitiator": if s.mode == TaskMode::Automated { "System" } else { "User" },
        // Size of the data the set holds (before dedup and compression).
        "BackupSize": s.bytes_logical,
        "ConsistentTime": s.finished_ms / 1000,
        "Engine": "PostgreSQL",
        "EngineVersion": version,
        "IsAvail": 1,
        "StoreStatus": "Disabled",
        "StorageClass": "0",
        "HostInstanceID": "",
    })
}

fn time_param(req: &RpcRequest, name: &str) -> Result<Option<i64>, RpcError> {
    req.get(name)
        .map(|v| {
            parse_rfc3339(v)
                .ok_or_else(|| RpcError::invalid(name, "expected yyyy-MM-ddTHH:mmZ (UTC)"))
        })
        .transpose()
}

pub(super) fn int_param(
    req: &RpcRequest,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Result<u64, RpcError> {
    match req.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                RpcError::invalid(
                    name,
                    &format!(
                        "expected an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            }),
    }
}

async fn describe_backups(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    let mode = match req.get("BackupMode") {
        Some(m) => Some(
            mode_of(m)
                .ok_or_else(|| RpcError::invalid("BackupMode", "expected Automated or Manual"))?,
        ),
        None => None,
    };
    // Every set Stowage reports is a complete, successful full backup.
    let status_ok = match req.get("BackupStatus") {
        None | Some("Success") => true,
        Some("Failed") => false,
        Some(_) => {
            return Err(RpcError::invalid(
                "BackupStatus",
                "expected Success or Failed",
            ));
        }
    };
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
    let id = match req.get("BackupId") {
        Some(v) => Some(
            v.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| RpcError::invalid("BackupId", "expected a backup set id"))?,
        ),
        None => None,
    };
    let (start, end) = (time_param(req, "StartTime")?, time_param(req, "EndTime")?);
    let page_size = int_param(req, "PageSize", 1..=100, 30)?;
    let page = int_param(req, "PageNumber", 1..=1_000_000, 1)?;
    let sets: Vec<BackupSet> = svc
        .list_sets(&req.principal, Some(&inst))
        .await?
        .into_iter()
        .filter(|_| status_ok && type_ok)
        .filter(|s| id.is_none_or(|i| s.id == i))
        .filter(|s| mode.is_none_or(|m| s.mode == m))
        .filter(|s| {
            start.is_none_or(|t| s.started_ms >= t) && end.is_none_or(|t| s.started_ms <= t)
        })
        .collect();
    let total = sets.len();
    let items: Vec<Value> = sets
        .iter()
        .skip(((page - 1) * page_size) as usize)
        .take(page_size as usize)
        .map(backup_json)
        .collect();
    Ok(ok_response(
        json!({
            "Items": {"Backup": items},
            "PageNumber": page.to_string(),
            "PageRecordCount": items.len().to_string(),
            "TotalRecordCount": total.to_string(),
            "TotalEcsSnapshotSize": 0,
        }),
        &req.request_id,
    ))
}

async fn delete_backup(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = instance_id(svc, req).await?;
    let ids = req.required("BackupId")?;
    let not_found = |v: &str| {
        RpcError::new(
            StatusCode::NOT_FOUND,
            "InvalidBackupId.NotFound",
            format!("The specified backup set {v} is not found."),
        )
    };
    // Check them all before deleting any.
    let mut sets = Vec::new();
    for v in ids.split(',').map(str::trim) {
        let n = v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            RpcError::invalid("BackupId", "expected backup set ids separated by commas")
        })?;
        match svc.set(&req.principal, n).await {
            Ok(s) if s.instance_id == inst => sets.push(n),
            Ok(_) => return Err(not_found(v)),
            Err(e) if e.kind == ErrorKind::NotFound => return Err(not_found(v)),
            Err(e) => return Err(e.into()),
        }
    }
    for n in sets {
        svc.delete_set(&req.principal, n).await?;
    }
    Ok(ok_response(json!({}), &req.request_id))
}

/// Enough of DescribeDBInstances for SDK users to list what is registered.
async fn describe_db_instances(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let ids: Option<Vec<&str>> = req
        .get("DBInstanceId")
        .map(|v| v.split(',').map(str::trim).collect());
    if let Some(e) = req.get("Engine")
        && !e.eq_ignore_ascii_case("PostgreSQL")
    {
        // Only PostgreSQL instances exist so far.
        return Ok(ok_response(
            json!({"Items": {"DBInstance": []}, "PageNumber": 1, "PageRecordCount": 0, "TotalRecordCount": 0}),
            &req.request_id,
        ));
    }
    let page_size = int_param(req, "PageSize", 1..=100, 30)?;
    let page = int_param(req, "PageNumber", 1..=1_000_000, 1)?;
    let region = req.get("RegionId").unwrap_or("local");
    let all: Vec<_> = svc
        .list_instances(&req.principal)
        .await?
        .into_iter()
        .filter(|i| i.id.starts_with("rm-"))
        .filter(|i| ids.as_ref().is_none_or(|l| l.contains(&i.id.as_str())))
        .collect();
    let mut items = Vec::new();
    for i in all
        .iter()
        .skip(((page - 1) * page_size) as usize)
        .take(page_size as usize)
    {
        let version = svc
            .list_sets(&req.principal, Some(&i.id))
            .await?
            .first()
            .and_then(|s| s.meta.get("server_version_num").and_then(Value::as_u64))
            .map(|v| (v / 10000).to_string());
        items.push(json!({
            "DBInstanceId": i.id,
            "DBInstanceDescription": i.name,
            "Engine": "PostgreSQL",
            "EngineVersion": version,
            "DBInstanceStatus": "Running",
            "DBInstanceType": "Primary",
            "RegionId": region,
            "ZoneId": format!("{region}-a"),
            "CreateTime": format_rfc3339(i.created_ms),
            "PayType": "Postpaid",
            "DBInstanceClass": "stowage.local",
            "LockMode": "Unlock",
        }));
    }
    Ok(ok_response(
        json!({"Items": {"DBInstance": items}, "PageNumber": page, "PageRecordCount": items.len(), "TotalRecordCount": all.len()}),
        &req.request_id,
    ))
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
        ];
        for (s, e) in expected {
            assert_eq!(rds_status(s), e, "{s}");
        }
        assert_eq!(job_status_states("NoStart"), Some(vec![TaskState::Pending]));
        assert_eq!(job_status_states("Progressing").unwrap().len(), 4);
        assert!(job_status_states("Finished").is_none());
    }
}
