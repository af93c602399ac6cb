//! Operation parts the three products share: backup-set queries and
//! deletion, instance listing and paging. Each product shapes the result.

use super::rpc::{RpcError, RpcRequest};
use axum::http::StatusCode;
use serde_json::Value;
use stowage_catalog::{BackupSet, Instance};
use stowage_core::TaskMode;
use stowage_core::time::parse_rfc3339;
use stowage_service::{ErrorKind, Service};

pub fn mode_of(v: &str) -> Option<TaskMode> {
    match v {
        "Automated" => Some(TaskMode::Automated),
        "Manual" => Some(TaskMode::Manual),
        _ => None,
    }
}

pub fn mode_name(m: TaskMode) -> &'static str {
    match m {
        TaskMode::Automated => "Automated",
        TaskMode::Manual => "Manual",
    }
}

/// The optional `BackupMode` filter.
pub fn mode_param(req: &RpcRequest) -> Result<Option<TaskMode>, RpcError> {
    req.get("BackupMode")
        .map(|m| {
            mode_of(m)
                .ok_or_else(|| RpcError::invalid("BackupMode", "expected Automated or Manual"))
        })
        .transpose()
}

pub fn time_param(req: &RpcRequest, name: &str) -> Result<Option<i64>, RpcError> {
    req.get(name)
        .map(|v| {
            parse_rfc3339(v)
                .ok_or_else(|| RpcError::invalid(name, "expected yyyy-MM-ddTHH:mmZ (UTC)"))
        })
        .transpose()
}

pub fn int_param(
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

/// `PageNumber` (from 1) and `PageSize` (`sizes`, default `default`).
pub struct Page {
    pub number: u64,
    pub size: u64,
}

impl Page {
    pub fn from(
        req: &RpcRequest,
        sizes: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> Result<Page, RpcError> {
        Ok(Page {
            size: int_param(req, "PageSize", sizes, default)?,
            number: int_param(req, "PageNumber", 1..=1_000_000, 1)?,
        })
    }

    pub fn slice<'a, T>(&self, all: &'a [T]) -> &'a [T] {
        let start = ((self.number - 1) * self.size).min(all.len() as u64) as usize;
        let end = (start + self.size as usize).min(all.len());
        &all[start..end]
    }
}

/// The sets of `instance` that match DescribeBackups' common filters:
/// `BackupId`, `BackupMode`, `BackupStatus`, `StartTime`/`EndTime` (on the
/// set's start). Newest first.
pub async fn query_sets(
    svc: &Service,
    req: &RpcRequest,
    instance: &str,
) -> Result<Vec<BackupSet>, RpcError> {
    let mode = mode_param(req)?;
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
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err(RpcError::invalid("EndTime", "must not be before StartTime"));
    }
    Ok(svc
        .list_sets(&req.principal, Some(instance))
        .await?
        .into_iter()
        .filter(|_| status_ok)
        .filter(|s| id.is_none_or(|i| s.id == i))
        .filter(|s| mode.is_none_or(|m| s.mode == m))
        .filter(|s| {
            start.is_none_or(|t| s.started_ms >= t) && end.is_none_or(|t| s.started_ms <= t)
        })
        .collect())
}

/// DeleteBackup: `BackupId` (one id or several separated by commas), all
/// checked to be sets of `instance` before any is deleted.
pub async fn delete_sets(svc: &Service, req: &RpcRequest, instance: &str) -> Result<(), RpcError> {
    let ids = req.required("BackupId")?;
    let not_found = |v: &str| {
        RpcError::new(
            StatusCode::NOT_FOUND,
            "InvalidBackupId.NotFound",
            format!("The specified backup set {v} is not found."),
        )
    };
    let mut sets = Vec::new();
    for v in ids.split(',').map(str::trim) {
        let n = v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            RpcError::invalid("BackupId", "expected backup set ids separated by commas")
        })?;
        match svc.set(&req.principal, n).await {
            Ok(s) if s.instance_id == instance => sets.push(n),
            Ok(_) => return Err(not_found(v)),
            Err(e) if e.kind == ErrorKind::NotFound => return Err(not_found(v)),
            Err(e) => return Err(e.into()),
        }
    }
    for n in sets {
        svc.delete_set(&req.principal, n).await?;
    }
    Ok(())
}

/// The caller's instances whose id has `prefix`, optionally only those named
/// in the comma-separated parameter `ids_param`.
pub async fn product_instances(
    svc: &Service,
    req: &RpcRequest,
    prefix: &str,
    ids_param: &str,
) -> Result<Vec<Instance>, RpcError> {
    let ids: Option<Vec<&str>> = req
        .get(ids_param)
        .map(|v| v.split(',').map(str::trim).collect());
    Ok(svc
        .list_instances(&req.principal)
        .await?
        .into_iter()
        .filter(|i| i.id.starts_with(prefix))
        .filter(|i| ids.as_ref().is_none_or(|l| l.contains(&i.id.as_str())))
        .collect())
}

/// Major version of the server behind an instance, from its latest set.
pub async fn engine_version(
    svc: &Service,
    req: &RpcRequest,
    instance: &str,
) -> Result<Option<String>, RpcError> {
    // The newest set's server, else what the server said when registered.
    if let Some(v) = svc
        .list_sets(&req.principal, Some(instance))
        .await?
        .first()
        .and_then(set_engine_version)
    {
        return Ok(Some(v));
    }
    let i = svc.instance(&req.principal, instance).await?;
    Ok(i.options
        .get("server_version")
        .and_then(Value::as_str)
        .map(|v| product_version(&i.engine, v)))
}

/// The `Engine` the rds and polardb products show: PostgreSQL, MySQL or
/// MariaDB (a MySQL-engine instance's server, as it said when registered
/// or in its newest set).
pub fn product_engine(engine: &str, flavor: Option<&str>) -> &'static str {
    match (engine, flavor) {
        ("mysql", Some("mariadb")) => "MariaDB",
        ("mysql", _) => "MySQL",
        ("mongodb", _) => "MongoDB",
        _ => "PostgreSQL",
    }
}

/// [`product_engine`] of an instance.
pub fn instance_engine(i: &stowage_catalog::Instance) -> &'static str {
    product_engine(
        &i.engine,
        i.options.get("server_flavor").and_then(Value::as_str),
    )
}

/// [`product_engine`] of a set.
pub fn set_engine(s: &BackupSet) -> &'static str {
    product_engine(&s.engine, s.meta.get("flavor").and_then(Value::as_str))
}

/// `BackupMethod` as the products name it.
pub fn set_method(s: &BackupSet) -> &'static str {
    if s.method == "logical" {
        "Logical"
    } else {
        "Physical"
    }
}

/// The binary log position and GTID set a MySQL set is consistent at, in
/// the fields the SDK models have; empty for other engines.
pub fn binlog_fields(s: &BackupSet) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    if let Some(stowage_core::ConsistentPoint::Binlog {
        binlog_file,
        binlog_position,
        gtid_set,
        ..
    }) = &s.consistent_point
    {
        if let (Some(f), Some(p)) = (binlog_file, binlog_position) {
            m.insert("BinlogFile".into(), Value::from(f.as_str()));
            m.insert("BinlogPosition".into(), Value::from(p.to_string()));
        }
        if let Some(g) = gtid_set {
            m.insert("BackupGtid".into(), Value::from(g.as_str()));
        }
    }
    m
}

pub fn set_engine_version(s: &BackupSet) -> Option<String> {
    s.engine_version
        .as_deref()
        .map(|v| product_version(&s.engine, v))
}

/// A server version as the products name it: PostgreSQL by its major
/// ("16"), MySQL and MongoDB by major.minor ("8.0", "8.2").
pub fn product_version(engine: &str, v: &str) -> String {
    let parts: Vec<&str> = v
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|p| !p.is_empty())
        .collect();
    let keep = if engine == "postgresql" { 1 } else { 2 };
    if parts.is_empty() {
        return v.to_string();
    }
    parts[..parts.len().min(keep)].join(".")
}

/// Listing filters, applied to the rows a Describe… listing returns.
pub struct RowFilters<'a> {
    /// `(parameter, row field)`: the row's value must equal the parameter's
    /// (case-insensitive).
    pub equal: &'a [(&'a str, &'a str)],
    /// `(parameter, row fields)`: any of the fields contains the value.
    pub contains: &'a [(&'a str, &'a [&'a str])],
    /// Things no Stowage instance has (VPCs, tags, resource groups, dedicated
    /// hosts…): a value here matches nothing. A prefix ending in `.` covers
    /// flattened lists (`Tag.1.Key`).
    pub absent: &'a [&'a str],
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl RowFilters<'_> {
    pub fn apply(&self, req: &RpcRequest, rows: Vec<Value>) -> Vec<Value> {
        let absent = self.absent.iter().any(|a| match a.strip_suffix('.') {
            Some(prefix) => req
                .params
                .iter()
                .any(|(k, v)| k.starts_with(&format!("{prefix}.")) && !v.is_empty()),
            None => req.get(a).is_some(),
        });
        if absent
            || req
                .get("Expired")
                .is_some_and(|e| e.eq_ignore_ascii_case("true"))
        {
            return Vec::new();
        }
        rows.into_iter()
            .filter(|r| {
                self.equal.iter().all(|(p, f)| {
                    req.get(p)
                        .is_none_or(|v| text(&r[*f]).eq_ignore_ascii_case(v))
                }) && self.contains.iter().all(|(p, fs)| {
                    req.get(p).is_none_or(|v| {
                        let v = v.to_lowercase();
                        fs.iter().any(|f| text(&r[*f]).to_lowercase().contains(&v))
                    })
                })
            })
            .collect()
    }
}

/// The part of a set a download link packages when the listing names none:
/// PostgreSQL's data directory, a MySQL dump, a replica set's only part (a
/// cluster's parts are listed per node, which names the part).
pub fn default_part(s: &BackupSet) -> Option<String> {
    match s.engine.as_str() {
        "postgresql" => Some("base".into()),
        "mysql" if s.method == "physical" => Some("data".into()),
        "mysql" => Some("dump".into()),
        _ => s
            .meta
            .get("replica_set")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// Each listed set as `to_json` shows it, with `BackupDownloadURL` and
/// `BackupIntranetDownloadURL`: a Stowage download link on the host the
/// caller used, made on demand (`Service::backup_links`; `part` picks the
/// set's part). Stowage has one listener, so the intranet URL is the same
/// link. Empty for a set without a part a link can name.
pub async fn with_download_urls(
    svc: &Service,
    req: &RpcRequest,
    sets: &[BackupSet],
    part: impl Fn(&BackupSet) -> Option<String>,
    to_json: impl Fn(&BackupSet) -> Value,
) -> Result<Vec<Value>, RpcError> {
    let wanted: Vec<(usize, (i64, String, String))> = sets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            part(s).map(|p| {
                let file = stowage_service::export_file_name(&s.engine, &p);
                (i, (s.id, p, file))
            })
        })
        // A part whose name a link cannot carry as is gets no URL.
        .filter(|(_, (_, p, _))| stowage_service::downloads::linkable_part(p))
        .collect();
    let pairs: Vec<(i64, String, String)> = wanted.iter().map(|(_, w)| w.clone()).collect();
    let links = svc.backup_links(&req.principal, &pairs).await?;
    let mut urls = vec![String::new(); sets.len()];
    for ((i, _), (path, _)) in wanted.iter().zip(links) {
        urls[*i] = format!("http://{}{path}", req.host);
    }
    Ok(sets
        .iter()
        .zip(urls)
        .map(|(s, url)| {
            let mut v = to_json(s);
            v["BackupDownloadURL"] = url.clone().into();
            v["BackupIntranetDownloadURL"] = url.into();
            v
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::product_version;

    #[test]
    fn versions_as_the_products_name_them() {
        assert_eq!(product_version("postgresql", "16.4"), "16");
        assert_eq!(product_version("postgresql", "17beta1"), "17");
        assert_eq!(product_version("mongodb", "8.2.11"), "8.2");
        assert_eq!(product_version("mongodb", "7.0"), "7.0");
        assert_eq!(product_version("mongodb", "weird"), "weird");
    }
}
