//! ApsaraDB for MongoDB (2015-12-01): backup tasks (spec §9.2). Until the
//! MongoDB engine exists, a `dds-` instance of any engine can be used; the
//! state mapping is already the real one.

use super::rds::mode_of;
use super::rpc::{
    RpcError, RpcRequest, backup_task_filter, ok_response, owned_instance, start_manual_backup,
};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use stowage_catalog::BackupTask;
use stowage_core::time::format_rfc3339;
use stowage_core::{TaskMode, TaskState};
use stowage_service::Service;

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
        let pct = stowage_service::percent(t);
        j["Progress"] = Value::String(format!("{pct}%"));
    }
    j
}

async fn describe_backup_tasks(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let inst = owned_instance(svc, req, "DBInstanceId", "dds-", instance_not_found).await?;
    let f = backup_task_filter(req, inst)?;
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
    let t = start_manual_backup(svc, req, &inst, "IncorrectDBInstanceState").await?;
    // The set a task produces gets the task's id (see the catalog).
    Ok(ok_response(
        json!({"BackupJobId": t.id.to_string(), "BackupId": t.id.to_string()}),
        &req.request_id,
    ))
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
