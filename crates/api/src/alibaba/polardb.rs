//! PolarDB (2017-08-01): clusters instead of instances (spec §9.3).

use super::policy::{Names, Ty, next_time, policy_body, update_from};
use super::rds::rds_status;
use super::rpc::{
    RpcError, RpcRequest, backup_task_filter, ok_response, owned_instance, start_manual_backup,
};
use super::shared::{
    Page, RowFilters, default_part, delete_sets, engine_version, instance_engine, mode_name,
    mode_of, product_instances, query_sets, with_download_urls,
};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use stowage_catalog::{BackupSet, Task};
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
        "DescribeBackups" => describe_backups(svc, req).await,
        "DeleteBackup" => delete_backup(svc, req).await,
        "DescribeDBClusters" => describe_db_clusters(svc, req).await,
        "DescribeBackupPolicy" => describe_backup_policy(svc, req).await,
        "ModifyBackupPolicy" => modify_backup_policy(svc, req).await,
        _ => return None,
    })
}

fn job_json(t: &Task) -> Value {
    let pct = stowage_service::percent(t);
    // Strings, as the product's own example sends them.
    json!({
        "BackupJobId": t.id.to_string(),
        "Process": pct.to_string(),
        "BackupProgressStatus": rds_status(t.state).1,
        "JobMode": if t.mode == TaskMode::Automated { "Automated" } else { "Manual" },
        "TaskAction": if t.mode == TaskMode::Automated { "NormalBackupTask" } else { "TempBackupTask" },
        "StartTime": format_rfc3339(t.started_ms.or(t.scheduled_ms).unwrap_or(t.created_ms)),
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
    let t =
        start_manual_backup(svc, req, &cluster, "OperationDenied.DBClusterStatus", None).await?;
    Ok(ok_response(
        json!({"BackupJobId": t.id.to_string()}),
        &req.request_id,
    ))
}

fn backup_json(s: &BackupSet) -> Value {
    // Strings throughout, as the SDK model declares them.
    json!({
        "BackupId": s.id.to_string(),
        "DBClusterId": s.instance_id,
        "BackupStatus": "Success",
        "BackupStartTime": format_rfc3339(s.started_ms),
        "BackupEndTime": format_rfc3339(s.finished_ms),
        "BackupType": "FullBackup",
        "BackupMode": mode_name(s.mode),
        // PostgreSQL sets are the cluster's files ("Snapshot" in the
        // product); MySQL sets are logical.
        "BackupMethod": if s.method == "logical" { "Logical" } else { "Snapshot" },
        "BackupSetSize": s.bytes_logical.to_string(),
        "BackupsLevel": "Level-1",
        "ConsistentTime": (s.finished_ms / 1000).to_string(),
        "ExpectExpireTime": s.expires_ms.map(format_rfc3339).unwrap_or_default(),
        "ExpectExpireType": if s.expires_ms.is_some() { "EXPIRED_TIME" } else { "NEVER" },
        "IsAvail": "1",
        "Comment": s.meta.get("comment").and_then(Value::as_str).unwrap_or(""),
        "TableRestoreMetaStatus": "",
    })
}

async fn describe_backups(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let cluster = cluster_id(svc, req).await?;
    if let Some(r) = req.get("BackupRegion")
        && r != req.get("RegionId").unwrap_or(r)
    {
        return Err(RpcError::invalid(
            "BackupRegion",
            "cross-region backups are not supported",
        ));
    }
    let page = Page::from(req, 30..=100, 30)?;
    let sets = query_sets(svc, req, &cluster).await?;
    // Not in the SDK's model (which leaves them out), but in the JSON for
    // any client that reads it: the same links rds and dds list.
    let items = with_download_urls(svc, req, page.slice(&sets), default_part, backup_json).await?;
    Ok(ok_response(
        json!({
            "Items": {"Backup": items},
            "PageNumber": page.number.to_string(),
            "PageRecordCount": items.len().to_string(),
            "TotalRecordCount": sets.len().to_string(),
            "TotalLevel2BackupSize": "0",
        }),
        &req.request_id,
    ))
}

async fn delete_backup(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let cluster = cluster_id(svc, req).await?;
    delete_sets(svc, req, &cluster).await?;
    Ok(ok_response(json!({}), &req.request_id))
}

async fn describe_db_clusters(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let page = Page::from(req, 1..=100, 30)?;
    let region = req.get("RegionId").unwrap_or("local");
    let mut rows = Vec::new();
    for i in product_instances(svc, req, "pc-", "DBClusterIds").await? {
        let node = format!("pi-{}", &i.id[3..]);
        rows.push(json!({
            "DBClusterId": i.id,
            "DBClusterDescription": i.name,
            "DBClusterStatus": "Running",
            "DBType": instance_engine(&i),
            "DBVersion": engine_version(svc, req, &i.id).await?,
            "Engine": "POLARDB",
            "RegionId": region,
            "ZoneId": format!("{region}-a"),
            "CreateTime": format_rfc3339(i.created_ms),
            "PayType": "Postpaid",
            "LockMode": "Unlock",
            "Expired": "false",
            "DBNodeNumber": 1,
            "DBNodes": {"DBNode": [{"DBNodeId": node, "DBNodeRole": "Writer", "DBNodeClass": "stowage.local", "RegionId": region, "ZoneId": format!("{region}-a")}]},
            "Tags": {"Tag": []},
            "ConnectionString": i.host,
        }));
    }
    if let Some(ids) = req.get("DBNodeIds") {
        let ids: Vec<&str> = ids.split(',').map(str::trim).collect();
        rows.retain(|r| {
            ids.contains(&r["DBNodes"]["DBNode"][0]["DBNodeId"].as_str().unwrap_or(""))
        });
    }
    let mut rows = RowFilters {
        equal: &[
            ("DBType", "DBType"),
            ("DBVersion", "DBVersion"),
            ("DBClusterStatus", "DBClusterStatus"),
            ("PayType", "PayType"),
            ("ConnectionString", "ConnectionString"),
        ],
        contains: &[("DBClusterDescription", &["DBClusterDescription"])],
        absent: &["ResourceGroupId", "Tag."],
    }
    .apply(req, rows);
    // Created within the last N hours.
    if let Some(h) = req.get("RecentCreationInterval") {
        let hours = h.parse::<i64>().map_err(|_| {
            RpcError::invalid("RecentCreationInterval", "expected a number of hours")
        })?;
        let since = stowage_service::now_ms() - hours * 3_600_000;
        rows.retain(|r| {
            r["CreateTime"]
                .as_str()
                .and_then(stowage_core::time::parse_rfc3339)
                .is_some_and(|t| t >= since)
        });
    }
    // Nothing Stowage registers expires.
    if req.get("RecentExpirationInterval").is_some() {
        rows.clear();
    }
    let items = page.slice(&rows).to_vec();
    Ok(ok_response(
        json!({"Items": {"DBCluster": items}, "PageNumber": page.number, "PageRecordCount": items.len(), "TotalRecordCount": rows.len()}),
        &req.request_id,
    ))
}

const POLICY: Names = Names {
    window: &["PreferredBackupTime", "DataLevel1BackupTime"],
    weekdays: &["PreferredBackupPeriod", "DataLevel1BackupPeriod"],
    retention: &["DataLevel1BackupRetentionPeriod", "BackupRetentionPeriod"],
    retention_days: 3..=14,
    stored: &[
        ("BackupFrequency", Ty::Str),
        ("BackupPolicyLevel", Ty::Str),
        ("BackupRetentionPolicyOnClusterDeletion", Ty::Str),
        ("DataLevel1BackupFrequency", Ty::Str),
        ("DataLevel2BackupAnotherRegionRegion", Ty::Str),
        ("DataLevel2BackupAnotherRegionRetentionPeriod", Ty::Str),
        ("DataLevel2BackupPeriod", Ty::Str),
        ("DataLevel2BackupRetentionPeriod", Ty::Str),
    ],
    refused: &["AdvancedDataPolicies"],
};

fn policy_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("BackupFrequency", json!("Normal")),
        ("BackupPolicyLevel", json!("Normal")),
        ("BackupRetentionPolicyOnClusterDeletion", json!("NONE")),
        ("DataLevel1BackupFrequency", json!("Normal")),
        ("DataLevel2BackupAnotherRegionRegion", json!("")),
        ("DataLevel2BackupAnotherRegionRetentionPeriod", json!("0")),
        ("DataLevel2BackupPeriod", json!("")),
        ("DataLevel2BackupRetentionPeriod", json!("0")),
    ]
}

async fn describe_backup_policy(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let cluster = cluster_id(svc, req).await?;
    let sp = svc.policy(&req.principal, &cluster).await?;
    let (window, days) = (sp.policy.window.to_string(), sp.policy.weekdays.to_string());
    let body = policy_body(
        &sp,
        &policy_defaults(),
        [
            ("PreferredBackupTime", json!(window)),
            ("PreferredBackupPeriod", json!(days)),
            ("DataLevel1BackupTime", json!(window)),
            ("DataLevel1BackupPeriod", json!(days)),
            (
                "DataLevel1BackupRetentionPeriod",
                json!(sp.policy.retention_days.to_string()),
            ),
            ("PreferredNextBackupTime", json!(next_time(&sp))),
            ("AdvancedPolicyOption", json!("")),
            ("AdvancedDataPolicies", json!({"AdvancedDataPolicy": []})),
            ("EnableImmutableBackup", json!(false)),
            ("EnableCrossRegionImmutableBackup", json!(false)),
        ],
    );
    Ok(ok_response(body, &req.request_id))
}

async fn modify_backup_policy(svc: &Service, req: &RpcRequest) -> Result<Response, RpcError> {
    let cluster = cluster_id(svc, req).await?;
    let u = update_from(req, &POLICY)?;
    svc.set_policy(&req.principal, &cluster, u).await?;
    Ok(ok_response(json!({}), &req.request_id))
}
