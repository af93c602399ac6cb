//! The mongodb 2019-07-25 operations (spec §8), on the service.

use super::layer::{TcError, TcRequest, ok_response};
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use stowage_catalog::BackupSet;
use stowage_catalog::Instance;
use stowage_core::time::format_rfc3339;
use stowage_core::{TaskMode, TaskState};
use stowage_service::{ErrorKind, Service};

pub async fn dispatch(st: &super::layer::TcState, req: &TcRequest) -> Result<Response, TcError> {
    authorize(req)?;
    let svc = &st.gate.svc;
    match req.action.as_str() {
        "CreateBackupDownloadTask" => create_download_task(svc, req).await,
        "DescribeBackupDownloadTask" => {
            let now = stowage_service::now_ms();
            if st
                .download_limit
                .lock()
                .expect("limit")
                .take(&req.key_id, now)
                .is_err()
            {
                return Err(TcError::new(
                    "RequestLimitExceeded",
                    "DescribeBackupDownloadTask takes at most 20 requests per second.",
                ));
            }
            describe_download_tasks(svc, req).await
        }
        "DescribeDBInstances" => describe_db_instances(svc, req).await,
        "CreateBackupDBInstance" => create_backup(svc, req).await,
        "DescribeAsyncRequestInfo" => describe_async_request(svc, req).await,
        "DescribeDBBackups" => describe_db_backups(svc, req).await,
        "DeleteDBBackups" => delete_db_backups(svc, req).await,
        "DescribeBackupRules" => describe_backup_rules(svc, req).await,
        "SetBackupRules" => set_backup_rules(svc, req).await,
        "RestoreDBInstance" => Err(TcError::new(
            "UnsupportedOperation",
            "RestoreDBInstance restores to a point in time, which this server does not do yet; restore a backup set with `stowage restore <set> --into <instance>`.",
        )),
        other => Err(TcError::new(
            "InvalidAction",
            format!(
                "The action {other} is not supported by this server (mongodb {}).",
                super::layer::VERSION
            ),
        )),
    }
}

/// The resource a request acts on, as a key policy names it:
/// `qcs::mongodb:<region>:uin/<account>:instance/<id or *>`.
pub fn resource(req: &TcRequest) -> String {
    let id = req
        .params
        .get("InstanceId")
        .and_then(Value::as_str)
        .unwrap_or("*");
    format!(
        "qcs::mongodb:{}:uin/{}:instance/{id}",
        req.region, req.principal.account_id
    )
}

/// A key limited by a policy may call only what it allows (actions
/// `mongodb:<Action>`), as the cloud refuses it.
fn authorize(req: &TcRequest) -> Result<(), TcError> {
    let Some(policy) = &req.principal.policy else {
        return Ok(());
    };
    let action = format!("mongodb:{}", req.action);
    let res = resource(req);
    if policy.evaluate(&action, &res) == stowage_core::ram::Decision::Allow {
        return Ok(());
    }
    Err(TcError::new(
        "AuthFailure.UnauthorizedOperation",
        format!("This key is not authorized to perform {action} on {res}."),
    ))
}

/// Parameters the operation takes; any other is refused by name.
fn only(p: &Map<String, Value>, known: &[&str]) -> Result<(), TcError> {
    match p.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(TcError::new(
            "UnknownParameter",
            format!("The parameter `{k}` is not recognized."),
        )),
        None => Ok(()),
    }
}

/// An integer written as a number or a string (GET and form send strings).
fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// An integer parameter.
fn int(p: &Map<String, Value>, name: &str) -> Result<Option<i64>, TcError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_int(v)
            .map(Some)
            .ok_or_else(|| TcError::invalid(name, "an integer")),
    }
}

/// A list parameter whose every item `item` reads (`what` names them).
fn list<T>(
    p: &Map<String, Value>,
    name: &str,
    what: &str,
    item: fn(&Value) -> Option<T>,
) -> Result<Option<Vec<T>>, TcError> {
    let bad = || TcError::invalid(name, &format!("a list of {what}"));
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| item(v).ok_or_else(bad))
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

fn strings(p: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, TcError> {
    list(p, name, "strings", as_string)
}

fn ints(p: &Map<String, Value>, name: &str) -> Result<Option<Vec<i64>>, TcError> {
    list(p, name, "integers", as_int)
}

/// The BackupMethod an instance's backups have (cmgo- instances are
/// MongoDB: logical).
fn instance_method(i: &Instance) -> i64 {
    method_number(if i.engine == "mongodb" {
        "logical"
    } else {
        "physical"
    })
}

/// `MONGO_<major><minor>_WT`, as the cloud names a version.
fn mongo_version(v: &str) -> String {
    let mut it = v.split('.');
    let (a, b) = (it.next().unwrap_or("0"), it.next().unwrap_or("0"));
    format!("MONGO_{a}{b}_WT")
}

/// The replica sets of an instance as the cloud names them: `<id>_0` …
/// (a replica set instance has one).
pub fn replica_set_ids(i: &Instance) -> Vec<String> {
    match i.options.get("shards").and_then(Value::as_array) {
        Some(shards) => shards
            .iter()
            .filter_map(|s| s.get("id").and_then(Value::as_str).map(str::to_string))
            .collect(),
        None => vec![format!("{}_0", i.id)],
    }
}

async fn describe_db_instances(svc: &Service, req: &TcRequest) -> Result<Response, TcError> {
    let p = &req.params;
    only(
        p,
        &[
            "InstanceIds",
            "InstanceType",
            "ClusterType",
            "Status",
            "VpcId",
            "SubnetId",
            "PayMode",
            "Limit",
            "Offset",
            "OrderBy",
            "OrderByType",
            "ProjectIds",
            "SearchKey",
            "Tags",
        ],
    )?;
    let ids = strings(p, "InstanceIds")?;
    let cluster = int(p, "ClusterType")?;
    if cluster.is_some_and(|c| !(-1..=1).contains(&c)) {
        return Err(TcError::invalid(
            "ClusterType",
            "0 (replica set), 1 (sharded) or -1 (all)",
        ));
    }
    let status = ints(p, "Status")?;
    let limit = int(p, "Limit")?.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(TcError::invalid("Limit", "1 to 100"));
    }
    let offset = int(p, "Offset")?.unwrap_or(0);
    if offset < 0 {
        return Err(TcError::invalid("Offset", "0 or more"));
    }
    let search = p.get("SearchKey").and_then(Value::as_str).unwrap_or("");
    let mut rows: Vec<Instance> = svc
        .list_instances(&req.principal)
        .await?
        .into_iter()
        .filter(|i| i.id.starts_with("cmgo-"))
        .filter(|i| ids.as_ref().is_none_or(|l| l.contains(&i.id)))
        .filter(|i| {
            let c = i64::from(i.topology == "sharded");
            cluster.is_none_or(|w| w == -1 || w == c)
        })
        // Every registered instance is running (status 2).
        .filter(|_| status.as_ref().is_none_or(|s| s.contains(&2)))
        .filter(|i| search.is_empty() || i.id.contains(search) || i.name.contains(search))
        // Stowage keeps no VPCs, subnets, projects or tags: such filters match none.
        .filter(|_| {
            ["VpcId", "SubnetId"]
                .iter()
                .all(|k| p.get(*k).and_then(Value::as_str).is_none_or(str::is_empty))
                && p.get("Tags")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
        })
        .collect();
    rows.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    if p.get("OrderByType").and_then(Value::as_str) == Some("DESC") {
        rows.reverse();
    }
    let total = rows.len();
    let details: Vec<Value> = rows
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|i| {
            let sharded = i.topology == "sharded";
            let version = i
                .options
                .get("server_version")
                .and_then(Value::as_str)
                .map(mongo_version)
                .unwrap_or_default();
            let sets: Vec<Value> = replica_set_ids(i)
                .into_iter()
                .map(|id| json!({"ReplicaSetId": id, "ReplicaSetName": id, "RealReplicaSetId": id}))
                .collect();
            json!({
                "InstanceId": i.id,
                "InstanceName": i.name,
                "PayMode": 0,
                "ProjectId": 0,
                "ClusterType": i64::from(sharded),
                "Region": req.region,
                "Zone": format!("{}-1", req.region),
                "NetType": 0,
                "Status": 2,
                "Vip": i.host,
                "Vport": i.port,
                "CreateTime": format_rfc3339(i.created_ms).replace('T', " ").trim_end_matches('Z').to_string(),
                "MongoVersion": version,
                "ReplicationSetNum": sets.len(),
                "ReplicaSets": sets,
                "InstanceType": 1,
                "InstanceStatusDesc": "running",
                "RealInstanceId": i.id,
                "Tags": [],
                "ReadonlyInstances": [],
                "StandbyInstances": [],
                "CloneInstances": [],
            })
        })
        .collect();
    Ok(ok_response(
        json!({"TotalCount": total, "InstanceDetails": details}),
        &req.request_id,
    ))
}

/// The caller's `cmgo-` instance named by `InstanceId`; any other (missing
/// from this account, another product's) is `InvalidParameterValue.NotFoundInstance`.
async fn instance(svc: &Service, req: &TcRequest) -> Result<Instance, TcError> {
    let id = req
        .params
        .get("InstanceId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TcError::missing("InstanceId"))?;
    let not_found = || {
        TcError::new(
            "InvalidParameterValue.NotFoundInstance",
            format!("Instance {id} does not exist."),
        )
    };
    if !id.starts_with("cmgo-") {
        return Err(not_found());
    }
    match svc.instance(&req.principal, id).await {
        Ok(i) if i.id == id => Ok(i),
        Ok(_) => Err(not_found()),
        Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::InvalidParameter) => {
            Err(not_found())
        }
        Err(e) => Err(e.into()),
    }
}

/// `2021-03-26 10:47:37`: the cloud's time format (UTC here).
pub fn cloud_time(ms: i64) -> String {
    format_rfc3339(ms)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

/// BackupMethod as the cloud numbers it: 0 logical, 1 physical, 3 snapshot.
fn method_number(m: &str) -> i64 {
    if m == "logical" { 0 } else { 1 }
}

async fn create_backup(svc: &Arc<Service>, req: &TcRequest) -> Result<Response, TcError> {
    let p = &req.params;
    only(
        p,
        &[
            "InstanceId",
            "BackupMethod",
            "BackupRemark",
            "BackupRetentionDays",
        ],
    )?;
    let inst = instance(svc, req).await?;
    if let Some(m) = int(p, "BackupMethod")? {
        let ours = instance_method(&inst);
        if ![0, 1, 3].contains(&m) {
            return Err(TcError::invalid(
                "BackupMethod",
                "0 (logical), 1 (physical) or 3 (snapshot)",
            ));
        }
        if m != ours {
            return Err(TcError::invalid(
                "BackupMethod",
                &format!("this instance takes BackupMethod {ours} backups"),
            ));
        }
    }
    let retention = match int(p, "BackupRetentionDays")? {
        None | Some(0) => None,
        Some(d @ 1..=7300) => Some(d as u32),
        Some(-1 | -2) => {
            return Err(TcError::invalid(
                "BackupRetentionDays",
                "keeping a set forever is `stowage set expire <set> --never`; give 1 to 7300 days or 0 for the policy's",
            ));
        }
        Some(_) => {
            return Err(TcError::invalid(
                "BackupRetentionDays",
                "0, or 1 to 7300 days",
            ));
        }
    };
    let remark = match p.get("BackupRemark") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 256 => Some(s.clone()),
        Some(_) => {
            return Err(TcError::invalid(
                "BackupRemark",
                "text of at most 256 characters",
            ));
        }
    };
    let t = svc
        .start_backup(
            &req.principal,
            &inst.id,
            TaskMode::Manual,
            stowage_service::BackupRequest {
                client_token: None,
                retention_days: retention,
                comment: remark,
                full: false,
                method: None,
            },
        )
        .await
        .map_err(|e| match e.kind {
            ErrorKind::InstanceBusy => TcError::new("InvalidParameterValue.LockFailed", e.message),
            _ => e.into(),
        })?;
    Ok(ok_response(
        json!({"AsyncRequestId": t.id.to_string()}),
        &req.request_id,
    ))
}

async fn describe_async_request(svc: &Service, req: &TcRequest) -> Result<Response, TcError> {
    let p = &req.params;
    only(p, &["AsyncRequestId"])?;
    let id = p
        .get("AsyncRequestId")
        .and_then(|v| match v {
            Value::String(s) => s.trim().parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        })
        .filter(|n| *n > 0)
        .ok_or_else(|| match p.get("AsyncRequestId") {
            None => TcError::missing("AsyncRequestId"),
            Some(_) => TcError::invalid("AsyncRequestId", "an id CreateBackupDBInstance returned"),
        })?;
    // Only this dialect's backups (of cmgo- instances) are its requests.
    let t = svc
        .task(&req.principal, id)
        .await
        .ok()
        .filter(|t| {
            t.kind == stowage_core::TaskKind::Backup
                && t.parent_id.is_none()
                && t.instance_id
                    .as_deref()
                    .is_some_and(|i| i.starts_with("cmgo-"))
        })
        .ok_or_else(|| {
            TcError::new(
                "ResourceNotFound",
                format!("The asynchronous request {id} does not exist."),
            )
        })?;
    let status = match t.state {
        TaskState::Finished => "success",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "undoed",
        TaskState::Pending => "initial",
        _ => "running",
    };
    Ok(ok_response(
        json!({
            "Status": status,
            "StartTime": t.started_ms.map(cloud_time).unwrap_or_default(),
            "EndTime": t.finished_ms.map(cloud_time).unwrap_or_default(),
        }),
        &req.request_id,
    ))
}

fn backup_info(i: &Instance, s: &BackupSet) -> Value {
    json!({
        "InstanceId": i.id,
        "BackupType": if s.mode == TaskMode::Automated { 0 } else { 1 },
        "BackupName": backup_name(i, s),
        "BackupDesc": s.meta.get("comment").and_then(Value::as_str).unwrap_or(""),
        // KB, as the cloud counts it.
        "BackupSize": s.bytes_logical.div_ceil(1024),
        "StartTime": cloud_time(s.started_ms),
        "EndTime": cloud_time(s.finished_ms),
        "Status": 2,
        "BackupMethod": method_number(&s.method),
        "BackId": s.id,
        "DeleteTime": s.expires_ms.map(cloud_time).unwrap_or_default(),
        "BackupRegion": "",
        "RestoreTime": "",
    })
}

async fn describe_db_backups(svc: &Service, req: &TcRequest) -> Result<Response, TcError> {
    let p = &req.params;
    only(p, &["InstanceId", "BackupMethod", "Limit", "Offset"])?;
    let inst = instance(svc, req).await?;
    let method = int(p, "BackupMethod")?;
    if method.is_some_and(|m| ![0, 1, 3].contains(&m)) {
        return Err(TcError::invalid(
            "BackupMethod",
            "0 (logical), 1 (physical) or 3 (snapshot)",
        ));
    }
    let limit = int(p, "Limit")?.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(TcError::invalid("Limit", "1 to 100"));
    }
    let offset = int(p, "Offset")?.unwrap_or(0);
    if offset < 0 {
        return Err(TcError::invalid("Offset", "0 or more"));
    }
    let sets: Vec<BackupSet> = svc
        .list_sets(&req.principal, Some(&inst.id))
        .await?
        .into_iter()
        .filter(|s| method.is_none_or(|m| m == method_number(&s.method)))
        .collect();
    let list: Vec<Value> = sets
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|s| backup_info(&inst, s))
        .collect();
    Ok(ok_response(
        json!({"BackupList": list, "TotalCount": sets.len()}),
        &req.request_id,
    ))
}

async fn delete_db_backups(svc: &Service, req: &TcRequest) -> Result<Response, TcError> {
    let p = &req.params;
    only(p, &["InstanceId", "BackupIds"])?;
    let inst = instance(svc, req).await?;
    let ids = ints(p, "BackupIds")?.ok_or_else(|| TcError::missing("BackupIds"))?;
    if ids.is_empty() || ids.len() > 100 {
        return Err(TcError::invalid("BackupIds", "1 to 100 backup ids"));
    }
    // Every id first: nothing is deleted when one is not this instance's.
    for id in &ids {
        let found = svc.set(&req.principal, *id).await.ok();
        if found.is_none_or(|s| s.instance_id != inst.id) {
            return Err(TcError::new(
                "InvalidParameterValue.BackupFileNotFound",
                format!("Backup {id} of instance {} does not exist.", inst.id),
            ));
        }
    }
    for id in ids {
        svc.delete_set(&req.principal, id).await?;
    }
    Ok(ok_response(json!({}), &req.request_id))
}

/// Weekdays as the cloud numbers them: 0 Sunday … 6 Saturday.
const TC_DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

fn weekdays_to_tc(w: stowage_core::schedule::Weekdays) -> String {
    // ISO: Monday 1 … Sunday 7.
    (0..7)
        .filter(|d| w.contains(if *d == 0 { 7 } else { *d }))
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn weekdays_from_tc(s: &str) -> Result<stowage_core::schedule::Weekdays, TcError> {
    let bad = || TcError::invalid("ActiveWeekdays", "comma-separated days 0 (Sunday) to 6");
    let names: Vec<&str> = s
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .ok()
                .and_then(|i| TC_DAYS.get(i).copied())
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    stowage_core::schedule::Weekdays::parse(&names.join(",")).map_err(|_| bad())
}

/// Rule fields kept as given and shown back (Stowage has no long-term
/// archive, oplog expiry or alert of its own).
const KEPT_RULES: [(&str, &str); 8] = [
    ("LongTermInterval", "str"),
    ("LongTermActiveDays", "str"),
    ("LongTermUnit", "str"),
    ("LongTermExpiredDays", "int"),
    ("OplogExpiredDays", "int"),
    ("BackupVersion", "int"),
    ("AlertThreshold", "int"),
    ("AlarmWaterLevel", "int"),
];

async fn describe_backup_rules(svc: &Service, req: &TcRequest) -> Result<Response, TcError> {
    only(&req.params, &["InstanceId"])?;
    let inst = instance(svc, req).await?;
    let stored = svc.policy(&req.principal, &inst.id).await?;
    let pol = stored.policy;
    let sets = svc.list_sets(&req.principal, Some(&inst.id)).await?;
    let kept = |k: &str, ty: &str| {
        stored
            .extra
            .get(k)
            .cloned()
            .unwrap_or(if ty == "int" { json!(0) } else { json!("") })
    };
    let mut body = json!({
        "BackupSaveTime": pol.retention_days,
        "BackupFrequency": 24,
        "BackupTime": pol.window.start_min / 60,
        "BackupMethod": instance_method(&inst),
        "ActiveWeekdays": weekdays_to_tc(pol.weekdays),
        "BackupTotalSize": {
            "SnapshotSize": sets.iter().map(|s| s.bytes_stored).sum::<u64>(),
            "OplogSize": 0,
            "FreeQuota": 0,
        },
    });
    for (k, ty) in KEPT_RULES {
        if k != "LongTermUnit" && k != "AlarmWaterLevel" {
            body[k] = kept(k, ty);
        }
    }
    Ok(ok_response(body, &req.request_id))
}

async fn set_backup_rules(svc: &Service, req: &TcRequest) -> Result<Response, TcError> {
    let p = &req.params;
    only(
        p,
        &[
            "InstanceId",
            "BackupMethod",
            "BackupTime",
            "BackupFrequency",
            "Notify",
            "BackupRetentionPeriod",
            "ActiveWeekdays",
            "LongTermUnit",
            "LongTermActiveDays",
            "LongTermExpiredDays",
            "OplogExpiredDays",
            "BackupVersion",
            "AlarmWaterLevel",
            "LongTermInterval",
            "AlertThreshold",
        ],
    )?;
    let inst = instance(svc, req).await?;
    let mut u = stowage_service::PolicyUpdate::default();
    match int(p, "BackupMethod")? {
        None | Some(0) => {}
        Some(_) => {
            return Err(TcError::invalid(
                "BackupMethod",
                "0: a MongoDB instance takes logical backups",
            ));
        }
    }
    let hour = int(p, "BackupTime")?.ok_or_else(|| TcError::missing("BackupTime"))?;
    if !(0..=23).contains(&hour) {
        return Err(TcError::invalid("BackupTime", "an hour from 0 to 23 (UTC)"));
    }
    u.window = Some(stowage_core::schedule::Window {
        start_min: hour as u32 * 60,
        end_min: ((hour as u32 + 1) % 24) * 60,
    });
    match int(p, "BackupFrequency")? {
        None | Some(24) => {}
        Some(12) => {
            return Err(TcError::new(
                "UnsupportedOperation",
                "BackupFrequency 12 (two automated backups a day) is not supported yet; use 24",
            ));
        }
        Some(_) => return Err(TcError::invalid("BackupFrequency", "12 or 24 (hours)")),
    }
    if let Some(d) = int(p, "BackupRetentionPeriod")? {
        if !(7..=365).contains(&d) {
            return Err(TcError::invalid("BackupRetentionPeriod", "7 to 365 days"));
        }
        u.retention_days = Some(d as u32);
    }
    if let Some(w) = p.get("ActiveWeekdays").filter(|v| !v.is_null()) {
        let s = w
            .as_str()
            .ok_or_else(|| TcError::invalid("ActiveWeekdays", "a string like \"0,1,2\""))?;
        u.weekdays = Some(weekdays_from_tc(s)?);
    }
    match p.get("Notify") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(Value::String(s)) if s == "true" || s == "false" => {}
        Some(_) => return Err(TcError::invalid("Notify", "true or false")),
    }
    for (k, ty) in KEPT_RULES {
        let Some(v) = p.get(k).filter(|v| !v.is_null()) else {
            continue;
        };
        let v = if ty == "int" {
            json!(int(p, k)?)
        } else {
            match v {
                Value::String(s) if s.chars().count() <= 256 => v.clone(),
                _ => return Err(TcError::invalid(k, "text of at most 256 characters")),
            }
        };
        u.extra.insert(k.to_string(), v);
    }
    svc.set_policy(&req.principal, &inst.id, u).await?;
    Ok(ok_response(json!({}), &req.request_id))
}

/// A set's name as the cloud shows it: `<instance>_<YYYY-MM-DD hh:mm:ss>`.
fn backup_name(i: &Instance, s: &BackupSet) -> String {
    format!("{}_{}", i.id, cloud_time(s.started_ms))
}

/// `YYYY-MM-DD hh:mm:ss` (UTC) as ms.
fn parse_cloud_time(name: &str, v: &str) -> Result<i64, TcError> {
    let bad = || TcError::invalid(name, "a time as YYYY-MM-DD hh:mm:ss");
    let iso = format!("{}Z", v.trim().replacen(' ', "T", 1));
    stowage_core::time::parse_rfc3339(&iso).ok_or_else(bad)
}

async fn create_download_task(svc: &Arc<Service>, req: &TcRequest) -> Result<Response, TcError> {
    let p = &req.params;
    only(p, &["InstanceId", "BackupName", "BackupSets"])?;
    let inst = instance(svc, req).await?;
    let name = p
        .get("BackupName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TcError::missing("BackupName"))?;
    let sets = svc.list_sets(&req.principal, Some(&inst.id)).await?;
    let set = sets
        .iter()
        .find(|s| backup_name(&inst, s) == name)
        .ok_or_else(|| {
            TcError::new(
                "InvalidParameterValue.BackupFileNotFound",
                format!("Backup {name} of instance {} does not exist.", inst.id),
            )
        })?;
    let wanted: Vec<String> = match p.get("BackupSets") {
        None | Some(Value::Null) => return Err(TcError::missing("BackupSets")),
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 64 => a
            .iter()
            .map(|x| {
                x.get("ReplicaSetId")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        TcError::invalid("BackupSets", "a list of {\"ReplicaSetId\": …}")
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(TcError::invalid(
                "BackupSets",
                "a list of 1 to 64 {\"ReplicaSetId\": …}",
            ));
        }
    };
    let known = replica_set_ids(&inst);
    let sharded = inst.topology == "sharded";
    for r in &wanted {
        if !(known.contains(r) || sharded && *r == format!("{}_config", inst.id)) {
            return Err(TcError::invalid(
                "BackupSets",
                &format!(
                    "instance {} has no replica set {r} (its: {})",
                    inst.id,
                    known.join(", ")
                ),
            ));
        }
    }
    let mut tasks = Vec::new();
    for r in wanted {
        // A replica set instance's one part is its only archive; a
        // cluster's parts are named by their ids.
        let part = sharded.then(|| r.clone());
        let mut extra = Map::new();
        extra.insert("replica_set_id".into(), r.clone().into());
        extra.insert("backup_name".into(), name.into());
        svc.start_download(&req.principal, set.id, part, extra)
            .await?;
        tasks.push(json!({"ReplicaSetId": r, "Status": 0}));
    }
    Ok(ok_response(json!({"Tasks": tasks}), &req.request_id))
}

/// A download task's status as the cloud numbers it.
fn download_status(s: TaskState) -> i64 {
    match s {
        TaskState::Pending => 0,
        TaskState::Finished => 2,
        TaskState::Failed | TaskState::Cancelled => 3,
        TaskState::Retrying => 4,
        _ => 1,
    }
}

async fn describe_download_tasks(svc: &Service, req: &TcRequest) -> Result<Response, TcError> {
    let p = &req.params;
    only(
        p,
        &[
            "InstanceId",
            "BackupName",
            "StartTime",
            "EndTime",
            "Limit",
            "Offset",
            "OrderBy",
            "OrderByType",
            "Status",
        ],
    )?;
    let inst = instance(svc, req).await?;
    let name = p
        .get("BackupName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let start = match p
        .get("StartTime")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(v) => Some(parse_cloud_time("StartTime", v)?),
        None => None,
    };
    let end = match p
        .get("EndTime")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(v) => Some(parse_cloud_time("EndTime", v)?),
        None => None,
    };
    let limit = int(p, "Limit")?.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(TcError::invalid("Limit", "1 to 100"));
    }
    let offset = int(p, "Offset")?.unwrap_or(0);
    if offset < 0 {
        return Err(TcError::invalid("Offset", "0 or more"));
    }
    let by_finish = match p.get("OrderBy").and_then(Value::as_str) {
        None | Some("") | Some("createTime") => false,
        Some("finishTime") => true,
        Some(_) => return Err(TcError::invalid("OrderBy", "createTime or finishTime")),
    };
    let asc = match p.get("OrderByType").and_then(Value::as_str) {
        None | Some("") | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(TcError::invalid("OrderByType", "asc or desc")),
    };
    let status = ints(p, "Status")?;
    if status
        .as_ref()
        .is_some_and(|l| l.iter().any(|s| !(0..=4).contains(s)))
    {
        return Err(TcError::invalid("Status", "a list of 0 to 4"));
    }
    // Filtered, ordered and paged by the catalog, on its indexes: the
    // instance's download tasks only, never the account's whole history.
    let mut f = stowage_catalog::TaskFilter {
        kinds: vec![stowage_core::TaskKind::Download],
        instance_id: Some(inst.id.clone()),
        created_from_ms: start,
        ..Default::default()
    };
    let now = stowage_service::now_ms();
    f.ended_by_ms = end.map(|e| (e, now));
    // The instance's sets, read once, when a name is asked for or shown.
    let mut sets: Option<Vec<BackupSet>> = None;
    if let Some(n) = name {
        let all = svc.list_sets(&req.principal, Some(&inst.id)).await?;
        f.set_ids = all
            .iter()
            .filter(|s| backup_name(&inst, s) == n)
            .map(|s| s.id)
            .collect();
        sets = Some(all);
        if f.set_ids.is_empty() {
            return Err(TcError::new(
                "InvalidParameterValue.BackupFileNotFound",
                format!("Backup {n} of instance {} does not exist.", inst.id),
            ));
        }
    }
    if let Some(l) = &status {
        f.states = TaskState::ALL
            .into_iter()
            .filter(|s| l.contains(&download_status(*s)))
            .collect();
        if f.states.is_empty() {
            return Ok(ok_response(
                json!({"TotalCount": 0, "Tasks": []}),
                &req.request_id,
            ));
        }
    }
    f.order = match (by_finish, asc) {
        (false, false) => stowage_catalog::TaskOrder::NewestFirst,
        (false, true) => stowage_catalog::TaskOrder::OldestFirst,
        (true, true) => stowage_catalog::TaskOrder::FinishedAsc,
        (true, false) => stowage_catalog::TaskOrder::FinishedDesc,
    };
    let total = svc.count_tasks(&req.principal, &f).await?;
    f.offset = Some(offset.min(u32::MAX as i64) as u32);
    f.limit = Some(limit as u32);
    let tasks = svc.list_tasks(&req.principal, &f).await?;
    // A download made through another API names no backup or replica set:
    // the set's name, and the part it packages (a replica set's is `_0`).
    if sets.is_none() && tasks.iter().any(|t| t.params.get("backup_name").is_none()) {
        sets = Some(svc.list_sets(&req.principal, Some(&inst.id)).await?);
    }
    let sets: std::collections::HashMap<i64, String> = sets
        .iter()
        .flatten()
        .map(|s| (s.id, backup_name(&inst, s)))
        .collect();
    let host = if req.host.starts_with("http://") || req.host.starts_with("https://") {
        req.host.clone()
    } else {
        format!("http://{}", req.host)
    };
    let list: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let pct = if t.state == TaskState::Finished {
                100
            } else {
                (t.bytes_done * 100).checked_div(t.bytes_total).unwrap_or(0).min(99)
            };
            let url = svc
                .download_link(t)
                .map(|(path, _)| format!("{host}{path}"))
                .unwrap_or_default();
            let name = t.params.get("backup_name").cloned().unwrap_or_else(|| {
                t.set_id
                    .and_then(|id| sets.get(&id).cloned())
                    .unwrap_or_default()
                    .into()
            });
            let replica_set = t.params.get("replica_set_id").cloned().unwrap_or_else(|| {
                match t.params.get("part").and_then(Value::as_str) {
                    Some(part) if part.starts_with(&format!("{}_", inst.id)) => part.into(),
                    _ => format!("{}_0", inst.id).into(),
                }
            });
            json!({
                "CreateTime": cloud_time(t.created_ms),
                "BackupName": name,
                "ReplicaSetId": replica_set,
                "BackupSize": t.result.as_ref().and_then(|r| r.get("bytes")).and_then(Value::as_u64).unwrap_or(t.bytes_total),
                "Status": download_status(t.state),
                "Percent": pct,
                "TimeSpend": match (t.started_ms, t.finished_ms) {
                    (Some(a), Some(b)) => (b - a).max(0) / 1000,
                    (Some(a), None) => (now - a).max(0) / 1000,
                    _ => 0,
                },
                "Url": url,
                "BackupMethod": 0,
                "BackupDesc": "",
                "Region": req.region,
                "Bucket": "",
            })
        })
        .collect();
    Ok(ok_response(
        json!({"TotalCount": total, "Tasks": list}),
        &req.request_id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The download status of every task state, written out once (the
    /// seed's 0 waiting, 1 downloading, 2 downloaded, 3 failed, 4 waiting
    /// for retry).
    #[test]
    fn download_status_table() {
        let expected = [
            (TaskState::Pending, 0),
            (TaskState::Checking, 1),
            (TaskState::Preparing, 1),
            (TaskState::Running, 1),
            (TaskState::Finishing, 1),
            (TaskState::Finished, 2),
            (TaskState::Failed, 3),
            (TaskState::Cancelled, 3),
            (TaskState::Retrying, 4),
        ];
        assert_eq!(expected.len(), TaskState::ALL.len());
        for (s, n) in expected {
            assert_eq!(download_status(s), n, "{s}");
        }
    }
}
