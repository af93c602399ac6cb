//! PolarDB (2017-08-01): clusters instead of instances (spec §9.3).

use super::rds::{mode_of, rds_status};
use super::rpc::{
    RpcError, RpcRequest, backup_task_filter, ok_response, owned_instance, start_manual_backup,
};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use stowage_catalog::BackupTask;
use stowage_core::TaskMode;
use stowage_core::time::format_rfc3339;
use stowage_service::Service;

fn cluster_not_found(id: &str) -> RpcError {
    // The seed page pairs this code with HTTP 400.
    RpcError::new(
        StatusCode::BAD_REQUEST,
        "InvalidDBClusterId.NotFound",
        format!("The specified DBClusterId {id} is not found."),
    )
}

async fn cluster_id(svc: &Service, req: &RpcRequest) -> Result<String, RpcError> {
    owned_instance(svc, req, "DBClusterId", "pc-", cluster_not_found).await
}

pub async fn dispatch(svc: &Arc<Service>, req: &RpcRequest) -> Option<Result<Response, RpcError>> {
    Some(match req.action.as_str() {
        "DescribeBackupTasks" => describe_backup_tasks(svc, req).await,
        "CreateBackup" => create_backup(svc, req).await,
        _ => return None,
    })
}

fn job_json(t: &BackupTask) -> Value {
    let pct = stowage_service::percent(t);
    // Strings, as the product's own example sends them.
    json!({
        "BackupJobId": t.id.to_string(),
        "Process": pct.to_string(),
        "BackupProgressStatus": rds_status(t.state).1,
        "JobMode": if t.mode == TaskMode::Automated { "Automated" } else { "Manual" },
        "TaskAction": if t.mode == TaskMode::Automated { "NormalBackupTask" } else { "TempBackupTask" },
        "StartTime": format_rfc3339(t.started_ms.unwrap_or(t.created_ms)),
    })
}

async fn describe_backup_tasks(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let cluster = cluster_id(svc, req).await?;
    let mode = match req.get("BackupMode") {
        Some(m) => Some(mode_of(m).ok_or_else(|| {
            RpcError::new(
                StatusCode::BAD_REQUEST,
                "InvalidBackupMode.Malformed",
                "The specified parameter BackupMode is not valid: expected Automated or Manual.",
            )
        })?),
        None => None,
    };
    let f = backup_task_filter(req, cluster)?;
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

async fn create_backup(svc: &Arc<Service>, req: &RpcRequest) -> Result<Response, RpcError> {
    let cluster = cluster_id(svc, req).await?;
    let t = start_manual_backup(svc, req, &cluster, "OperationDenied.DBClusterStatus").await?;
    Ok(ok_response(
        json!({"BackupJobId": t.id.to_string()}),
        &req.request_id,
    ))
}
