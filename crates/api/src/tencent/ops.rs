//! The mongodb 2019-07-25 operations (spec §8), on the service.

use super::layer::{TcError, TcRequest, ok_response};
use axum::response::Response;
use serde_json::{Map, Value, json};
use stowage_catalog::Instance;
use stowage_core::time::format_rfc3339;
use stowage_service::Service;

pub async fn dispatch(svc: &Service, req: &TcRequest) -> Result<Response, TcError> {
    authorize(req)?;
    match req.action.as_str() {
        "DescribeDBInstances" => describe_db_instances(svc, req).await,
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

/// An integer given as a number or a string (GET and form send strings).
fn int(p: &Map<String, Value>, name: &str) -> Result<Option<i64>, TcError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| TcError::invalid(name, "an integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| TcError::invalid(name, "an integer")),
        Some(_) => Err(TcError::invalid(name, "an integer")),
    }
}

fn strings(p: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, TcError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| TcError::invalid(name, "a list of strings"))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(TcError::invalid(name, "a list of strings")),
    }
}

fn ints(p: &Map<String, Value>, name: &str) -> Result<Option<Vec<i64>>, TcError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                match v {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| TcError::invalid(name, "a list of integers"))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(TcError::invalid(name, "a list of integers")),
    }
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
