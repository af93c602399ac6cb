//! ApsaraDB for MongoDB (2015-12-01): backup tasks (spec §9.2). Until the
//! MongoDB engine exists, a `dds-` instance of any engine can be used; the
//! state mapping is already the real one.

use super::rds::mode_of;
use super::rpc::{RpcError, RpcRequest, ok_response, owned_instance};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use stowage_catalog::{BackupTask, TaskFilter};
use stowage_core::time::format_rfc3339;
use stowage_core::{Progress, TaskMode, TaskState};
use stowage_service::{ErrorKind, Service};

/// The dds view of the task state machine (`BackupSetStatus`).
pub fn dds_status(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "Scheduled",
        TaskState::Checking | TaskState::Preparing => "Checking",
        TaskState::Running | TaskState::Finishing => "Backuping",
        TaskState::Finished => "Finished",
        TaskState::Failed | TaskState::Cancelled => "Failed",
    }
}

fn instance_not_found(id: &str) -> RpcError {
    RpcError::new(
        StatusCode::NOT_FOUND,
        "InvalidDBInstanceId.NotFound",
        format!("The specified instance {id} is not found."),
    )
}

pub async fn dispatch(svc: &Arc<Service>, req: &RpcRequest) -> Option<Result<Response, RpcError>> {
    Some(match req.action.as_str() {
        "DescribeBackupTasks" => describe_backup_tasks(svc, req).await,
        "CreateBackup" => create_backup(svc, req).await,
        _ => return None,
    })
}

fn job_json(t: &BackupTask) -> Value {
    let mut j = json!({
        // A number, as the product's example sends it (the lower-case `j` is the wire's).
        "BackupjobId": t.id,
        "BackupSetStatus": dds_status(t.state),
        "BackupStartTime": format_rfc3339(t.started_ms.unwrap_or(t.created_ms)),
        "JobMode": if t.mode == TaskMode::Automated { "Automated" } else { "Manual" },
    });
    if t.state.is_running() {
        let pct = Progress {
            bytes_done: t.bytes_done,
            bytes_total: t.bytes_total,
            bytes_stored: t.bytes_stored,
        }
        .percent(false);
        j["Progress"] = Value::String(format!("{pct}%"));
    }
    j
}

async fn describe_backup_tasks(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = owned_instance(svc, req, "DBInstanceId", "dds-", instance_not_found).await?;
    let mut f = TaskFilter {
        instance_id: Some(inst),
        limit: Some(1000),
        ..Default::default()
    };
    match req.get("BackupJobId") {
        Some(j) => {
            f.task_id = Some(
                j.parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| RpcError::invalid("BackupJobId", "expected a backup job id"))?,
            )
        }
        None => {
            f.states = TaskState::ALL
                .into_iter()
                .filter(|s| s.is_active())
                .collect()
        }
    }
    let mode = match req.get("BackupMode") {
        Some(m) => Some(
            mode_of(m)
                .ok_or_else(|| RpcError::invalid("BackupMode", "expected Automated or Manual"))?,
        ),
        None => None,
    };
    let jobs: Vec<Value> = svc
        .list_tasks(&req.principal, &f)
        .await?
        .iter()
        .filter(|t| mode.is_none_or(|m| t.mode == m))
        .map(job_json)
        .collect();
    // A flat array: a wrapper object here gives SDK callers a None body.
    Ok(ok_response(json!({"BackupJobs": jobs}), &req.request_id))
}

async fn create_backup(svc: &Arc<Service>, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = owned_instance(svc, req, "DBInstanceId", "dds-", instance_not_found).await?;
    if let Some(m) = req.get("BackupMethod")
        && m != "Physical"
        && m != "Snapshot"
    {
        return Err(RpcError::invalid(
            "BackupMethod",
            "only physical backups are supported for this instance",
        ));
    }
    match svc
        .start_backup(
            &req.principal,
            &inst,
            TaskMode::Manual,
            req.get("ClientToken").map(str::to_string),
        )
        .await
    {
        // The set a task produces gets the task's id (see the catalog).
        Ok(t) => Ok(ok_response(
            json!({"BackupJobId": t.id.to_string(), "BackupId": t.id.to_string()}),
            &req.request_id,
        )),
        Err(e) if e.kind == ErrorKind::InstanceBusy => Err(RpcError::new(
            StatusCode::FORBIDDEN,
            "IncorrectDBInstanceState",
            e.message,
        )),
        Err(e) => Err(e.into()),
    }
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
        ];
        for (s, e) in expected {
            assert_eq!(dds_status(s), e, "{s}");
        }
    }
}
