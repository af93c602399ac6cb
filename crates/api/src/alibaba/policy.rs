//! Backup policies in the three products' shapes, over the one policy model
//! (`stowage_core::BackupPolicy`): window, weekdays and retention act; every
//! other field a product declares is type-checked, stored as sent and
//! returned by DescribeBackupPolicy (what the issue asks for fields Stowage
//! cannot act on yet). Advanced (multi-level, cross-region) policies are
//! refused explicitly.

use super::rpc::{RpcError, RpcRequest};
use serde_json::{Map, Value};
use stowage_catalog::StoredPolicy;
use stowage_core::{Weekdays, Window};
use stowage_service::PolicyUpdate;

/// The wire type of a stored product field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int,
    Bool,
}

/// Where a product keeps window, weekdays and retention.
pub struct Names {
    pub window: &'static [&'static str],
    pub weekdays: &'static [&'static str],
    pub retention: &'static [&'static str],
    /// The product's accepted retention in days.
    pub retention_days: std::ops::RangeInclusive<u32>,
    /// Stored fields: (name, type on the request).
    pub stored: &'static [(&'static str, Ty)],
    /// Refused with `InvalidParameter` when present.
    pub refused: &'static [&'static str],
}

fn first<'a>(req: &'a RpcRequest, names: &[&'static str]) -> Option<(&'static str, &'a str)> {
    names.iter().find_map(|n| req.get(n).map(|v| (*n, v)))
}

fn check_ty(name: &str, ty: Ty, v: &str) -> Result<(), RpcError> {
    let ok = match ty {
        Ty::Str => v.len() <= 1024,
        Ty::Int => v.parse::<i64>().is_ok(),
        Ty::Bool => ["true", "false", "True", "False"].contains(&v),
    };
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid(
            name,
            match ty {
                Ty::Str => "at most 1024 characters",
                Ty::Int => "expected an integer",
                Ty::Bool => "expected true or false",
            },
        ))
    }
}

/// Reads a ModifyBackupPolicy request into a policy change.
pub fn update_from(req: &RpcRequest, n: &Names) -> Result<PolicyUpdate, RpcError> {
    for r in n.refused {
        let flattened = format!("{r}.1.");
        if req.get(r).is_some_and(|v| v != "[]")
            || req.params.keys().any(|k| k.starts_with(&flattened))
        {
            return Err(RpcError::invalid(
                r,
                "advanced backup policies are not supported by this server",
            ));
        }
    }
    let mut u = PolicyUpdate::default();
    if let Some((name, v)) = first(req, n.window) {
        u.window = Some(
            Window::parse(v)
                .map_err(|_| RpcError::invalid(name, "expected HH:mmZ-HH:mmZ in UTC"))?,
        );
    }
    if let Some((name, v)) = first(req, n.weekdays) {
        u.weekdays = Some(Weekdays::parse(v).map_err(|_| {
            RpcError::invalid(
                name,
                "expected weekday names separated by commas, e.g. Monday,Wednesday",
            )
        })?);
    }
    if let Some((name, v)) = first(req, n.retention) {
        let r = &n.retention_days;
        u.retention_days = Some(v.parse::<u32>().ok().filter(|d| r.contains(d)).ok_or_else(
            || {
                RpcError::invalid(
                    name,
                    &format!(
                        "expected a number of days from {} to {}",
                        r.start(),
                        r.end()
                    ),
                )
            },
        )?);
    }
    for (name, ty) in n.stored {
        if let Some(v) = req.get(name) {
            check_ty(name, *ty, v)?;
            u.extra.insert((*name).into(), Value::String(v.into()));
        }
    }
    Ok(u)
}

/// Product fields for DescribeBackupPolicy: the stored value, typed like the
/// default, else the default.
pub fn render_extra(sp: &StoredPolicy, defaults: &[(&str, Value)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, default) in defaults {
        let stored = sp.extra.get(*name).and_then(Value::as_str);
        let v = match (stored, default) {
            (Some(s), Value::Number(_)) => s
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| default.clone()),
            (Some(s), Value::Bool(_)) => Value::Bool(s.eq_ignore_ascii_case("true")),
            (Some(s), _) => Value::String(s.into()),
            (None, d) => d.clone(),
        };
        out.insert((*name).into(), v);
    }
    out
}

/// A DescribeBackupPolicy body: the product fields (see [`render_extra`])
/// and the product's own names for the fields Stowage acts on.
pub fn policy_body<const N: usize>(
    sp: &StoredPolicy,
    defaults: &[(&str, Value)],
    fixed: [(&str, Value); N],
) -> Value {
    let mut body = render_extra(sp, defaults);
    for (k, v) in fixed {
        body.insert(k.into(), v);
    }
    Value::Object(body)
}

/// `PreferredNextBackupTime`, or empty when automated backups are off.
pub fn next_time(sp: &StoredPolicy) -> String {
    sp.policy
        .next_backup_time(stowage_service::now_ms())
        .unwrap_or_default()
}
