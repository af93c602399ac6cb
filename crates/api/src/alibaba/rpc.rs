//! The shared Alibaba RPC layer (spec §1, §3–§7): one route `/` for every
//! product, GET and POST, parameters from the query and a form body,
//! authentication by either signature, routing on (Version, Action), and
//! the cloud's error shape. Product modules plug in through [`Product`].

use super::signature as sig;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use stowage_service::{ErrorKind, Principal, Service, ServiceError};

/// The products this layer routes to, by API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Rds,
    Dds,
    Polardb,
}

impl Product {
    pub fn from_version(v: &str) -> Option<Product> {
        match v {
            "2014-08-15" => Some(Product::Rds),
            "2015-12-01" => Some(Product::Dds),
            "2017-08-01" => Some(Product::Polardb),
            _ => None,
        }
    }

    /// The product's name in RAM actions and resources.
    pub fn ram_name(self) -> &'static str {
        match self {
            Product::Rds => "rds",
            Product::Dds => "dds",
            Product::Polardb => "polardb",
        }
    }

    fn host(self) -> &'static str {
        match self {
            Product::Rds => "rds.aliyuncs.com",
            Product::Dds => "mongodb.aliyuncs.com",
            Product::Polardb => "polardb.aliyuncs.com",
        }
    }
}

/// An error in the dialect's own shape.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Sent as `x-acs-retry-after` (the Tea SDK's ThrottlingException reads it).
    pub retry_after_ms: Option<u64>,
    /// `AccessDeniedDetail` of a `Forbidden.RAM` answer.
    pub access_denied: Option<Value>,
}

impl RpcError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        RpcError {
            status,
            code: code.into(),
            message: message.into(),
            retry_after_ms: None,
            access_denied: None,
        }
    }
    pub fn missing(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            format!(
                "The input parameter \"{name}\" that is mandatory for processing this request is not supplied."
            ),
        )
    }
    pub fn invalid(name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            format!("The specified parameter \"{name}\" is not valid: {why}"),
        )
    }
}

impl From<ServiceError> for RpcError {
    fn from(e: ServiceError) -> Self {
        let (status, code) = match e.kind {
            ErrorKind::InvalidParameter => (StatusCode::BAD_REQUEST, "InvalidParameter"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "InvalidDBInstanceId.NotFound"),
            ErrorKind::Unauthorized => (StatusCode::NOT_FOUND, "InvalidAccessKeyId.NotFound"),
            ErrorKind::KeyDisabled => (StatusCode::BAD_REQUEST, "InvalidAccessKeyId.Inactive"),
            ErrorKind::Forbidden | ErrorKind::TargetNotAllowed => {
                (StatusCode::FORBIDDEN, "Forbidden")
            }
            ErrorKind::Conflict
            | ErrorKind::UnsafeTarget
            | ErrorKind::InstanceBusy
            | ErrorKind::TargetNotEmpty
            | ErrorKind::Database(_)
            | ErrorKind::InvalidState => (StatusCode::FORBIDDEN, "IncorrectDBInstanceState"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        RpcError::new(status, code, e.message)
    }
}

/// A request that passed authentication.
pub struct RpcRequest {
    pub principal: Principal,
    pub product: Product,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub request_id: String,
    /// The `Host` the caller reached this server by (download links use it).
    pub host: String,
}

impl RpcRequest {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
    pub fn required(&self, name: &str) -> Result<&str, RpcError> {
        self.get(name).ok_or_else(|| RpcError::missing(name))
    }
}

/// The id of an instance (or cluster) of the caller's account, named by
/// parameter `param`, whose id has `prefix`. Anything else (missing,
/// malformed, another account's, another product's) is `not_found`.
pub async fn owned_instance(
    svc: &Service,
    req: &RpcRequest,
    param: &str,
    prefix: &str,
    not_found: fn(&str) -> RpcError,
) -> Result<String, RpcError> {
    let id = req.required(param)?;
    if !id.starts_with(prefix) {
        return Err(not_found(id));
    }
    match svc.instance(&req.principal, id).await {
        Ok(i) if i.id == id => Ok(i.id),
        Ok(_) => Err(not_found(id)),
        Err(e) if e.kind == ErrorKind::NotFound || e.kind == ErrorKind::InvalidParameter => {
            Err(not_found(id))
        }
        Err(e) => Err(e.into()),
    }
}

/// The tasks `f` lists (its instance: the one `param` names), refused as
/// not found unless the caller owns that instance. An unfinished backup
/// among them proves it (an instance is deleted only without one: its
/// slot holder blocks the delete, and the delete cancels the pending
/// automated ones in the same transaction), which spares the instance's
/// lookup on the hot path: a client polling its running backup.
pub async fn owned_instance_tasks(
    svc: &Service,
    req: &RpcRequest,
    param: &str,
    prefix: &str,
    not_found: fn(&str) -> RpcError,
    f: &stowage_catalog::TaskFilter,
) -> Result<Vec<stowage_catalog::Task>, RpcError> {
    let id = req.required(param)?;
    if !id.starts_with(prefix) || f.instance_id.as_deref() != Some(id) {
        return Err(not_found(id));
    }
    let tasks = svc.list_tasks(&req.principal, f).await?;
    let proven = tasks.iter().any(|t| {
        t.kind == stowage_core::TaskKind::Backup
            && t.parent_id.is_none()
            && t.state.is_active()
            && t.instance_id.as_deref() == Some(id)
    });
    if !proven {
        owned_instance(svc, req, param, prefix, not_found).await?;
    }
    Ok(tasks)
}

/// Per-key token buckets: `rate` requests a second, bursts up to `rate`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    buckets: std::collections::HashMap<String, (f64, i64)>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            rate: per_second.max(1) as f64,
            buckets: Default::default(),
        }
    }

    /// `Ok` to go ahead, or `Err(ms)` to wait before the next token.
    pub fn take(&mut self, key: &str, now_ms: i64) -> Result<(), u64> {
        let rate = self.rate;
        let (tokens, last) = self
            .buckets
            .entry(key.to_string())
            .or_insert((rate, now_ms));
        *tokens = (*tokens + (now_ms - *last).max(0) as f64 * rate / 1000.0).min(rate);
        *last = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) * 1000.0 / rate).ceil() as u64)
        }
    }
}

/// Settings of the cloud dialects.
#[derive(Debug, Clone, Copy)]
pub struct RpcConfig {
    /// Requests per second per access key before `Throttling.User`.
    pub rate_per_key: u32,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig { rate_per_key: 5000 }
    }
}

/// The task filter of every product's DescribeBackupTasks: the task named
/// by `BackupJobId` in any state, otherwise the tasks not finished yet.
pub fn backup_task_filter(
    req: &RpcRequest,
    instance: String,
) -> Result<stowage_catalog::TaskFilter, RpcError> {
    let mut f = stowage_catalog::TaskFilter {
        kinds: vec![stowage_core::TaskKind::Backup],
        instance_id: Some(instance),
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
            f.states = stowage_core::TaskState::ALL
                .into_iter()
                .filter(|s| s.is_active())
                .collect()
        }
    }
    Ok(f)
}

/// Every product's CreateBackup: a manual backup, `ClientToken` for
/// idempotency, `busy` as the error code while another backup runs.
pub async fn start_manual_backup(
    svc: &Arc<Service>,
    req: &RpcRequest,
    instance: &str,
    busy: &str,
    method: Option<&str>,
) -> Result<stowage_catalog::Task, RpcError> {
    let token = req.get("ClientToken").map(str::to_string);
    // rds and dds: keep this set this many days (the cloud's 7 to 730;
    // its -1, "until the instance is released", is not supported).
    let retention = match req.get("BackupRetentionPeriod") {
        None => None,
        Some(v) => Some(
            v.parse::<u32>()
                .ok()
                .filter(|d| (7..=730).contains(d))
                .ok_or_else(|| {
                    RpcError::invalid(
                        "BackupRetentionPeriod",
                        "expected a number of days from 7 to 730",
                    )
                })?,
        ),
    };
    match svc
        .start_backup(
            &req.principal,
            instance,
            stowage_core::TaskMode::Manual,
            stowage_service::BackupRequest {
                client_token: token,
                retention_days: retention,
                comment: req.get("Comment").map(str::to_string),
                full: false,
                method: method.map(str::to_string),
            },
        )
        .await
    {
        Ok(t) => Ok(t),
        Err(e) if e.kind == ErrorKind::InstanceBusy => {
            Err(RpcError::new(StatusCode::FORBIDDEN, busy, e.message))
        }
        Err(e) => Err(e.into()),
    }
}

pub struct RpcState {
    pub svc: Arc<Service>,
    /// Key lookup, rate limit and nonce replay, shared with the other
    /// cloud dialect.
    pub gate: Arc<crate::gate::Gate>,
}

/// A request refused before it reached the RPC layer (e.g. a body over the
/// size limit), in the cloud's error shape.
pub fn early_error(status: StatusCode, code: &str, message: &str, host: &str) -> Response {
    let rid = stowage_service::secrets::random_uuid();
    error_response(&RpcError::new(status, code, message), &rid, host, false)
}

fn error_response(e: &RpcError, request_id: &str, host: &str, xml: bool) -> Response {
    let mut body = json!({
        "RequestId": request_id,
        "HostId": host,
        "Code": e.code,
        "Message": e.message,
        "Recommend": format!("https://api.aliyun.com/troubleshoot?q={}", e.code),
    });
    if let Some(d) = &e.access_denied {
        body["AccessDeniedDetail"] = d.clone();
    }
    let mut r = if xml {
        (
            e.status,
            [("content-type", "text/xml;charset=utf-8")],
            super::xml::document("Error", &body),
        )
            .into_response()
    } else {
        (
            e.status,
            [("content-type", "application/json;charset=utf-8")],
            body.to_string(),
        )
            .into_response()
    };
    if let Some(ms) = e.retry_after_ms {
        r.headers_mut().insert("x-acs-retry-after", ms.into());
    }
    r
}

/// Success: the operation's fields plus `RequestId`.
pub fn ok_response(mut body: Value, request_id: &str) -> Response {
    if let Value::Object(m) = &mut body {
        m.insert("RequestId".into(), Value::String(request_id.into()));
    }
    let mut r = (
        StatusCode::OK,
        [("content-type", "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response();
    // Kept for a `Format=XML` request, which `handle` renders from it.
    r.extensions_mut().insert(Answer(body));
    r
}

/// The body of a successful answer, before it is written as JSON.
#[derive(Clone)]
struct Answer(Value);

fn to_xml(r: Response, action: &str) -> Response {
    match r.extensions().get::<Answer>() {
        Some(Answer(body)) => (
            r.status(),
            [("content-type", "text/xml;charset=utf-8")],
            super::xml::document(&format!("{action}Response"), body),
        )
            .into_response(),
        None => r,
    }
}

/// Answers one Alibaba RPC request (the cloud entry routes it here).
pub async fn handle(
    st: &RpcState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = stowage_service::secrets::random_uuid();
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("stowage")
        .to_string();
    // Errors before the parameters are parsed (bad encoding) answer in JSON.
    let xml = sig::decode_form(uri.query().unwrap_or(""))
        .is_some_and(|q| super::xml::wants_xml(&q))
        || std::str::from_utf8(&body)
            .ok()
            .and_then(sig::decode_form)
            .is_some_and(|f| super::xml::wants_xml(&f));
    match authenticate(st, &method, &uri, &headers, &body, &rid).await {
        Ok(req) => {
            let host = req.product.host();
            let action = req.action.clone();
            match dispatch(st, req).await {
                Ok(r) if xml => to_xml(r, &action),
                Ok(r) => r,
                Err(e) => error_response(&e, &rid, host, xml),
            }
        }
        Err(e) => error_response(&e, &rid, &host, xml),
    }
}

/// The RAM resource a request acts on:
/// `acs:<product>:<RegionId or local>:<account id>:<dbinstance|dbcluster>/<id or *>`.
pub fn ram_resource(req: &RpcRequest) -> String {
    let (kind, param) = match req.product {
        Product::Polardb => ("dbcluster", "DBClusterId"),
        Product::Rds | Product::Dds => ("dbinstance", "DBInstanceId"),
    };
    let listing = matches!(
        req.action.as_str(),
        "DescribeDBInstances" | "DescribeDBClusters"
    );
    let id = match req.get(param) {
        Some(id) if !listing => id,
        _ => "*",
    };
    format!(
        "acs:{}:{}:{}:{kind}/{id}",
        req.product.ram_name(),
        req.get("RegionId").unwrap_or("local"),
        req.principal.account_id
    )
}

/// A key limited by a RAM policy may call only what the policy allows.
fn authorize(req: &RpcRequest) -> Result<(), RpcError> {
    let Some(policy) = &req.principal.policy else {
        return Ok(());
    };
    let action = format!("{}:{}", req.product.ram_name(), req.action);
    let resource = ram_resource(req);
    let d = policy.evaluate(&action, &resource);
    if d == stowage_core::ram::Decision::Allow {
        return Ok(());
    }
    let mut e = RpcError::new(
        StatusCode::FORBIDDEN,
        "Forbidden.RAM",
        format!(
            "User not authorized to operate on the specified resource: {action} on {resource} is not allowed by this access key's policy."
        ),
    );
    e.access_denied = Some(json!({
        "AuthAction": action,
        "AuthPrincipalDisplayName": req.principal.key_id,
        "AuthPrincipalOwnerId": req.principal.account_id,
        "AuthPrincipalType": "AccessKey",
        "NoPermissionType": d.as_str(),
        "PolicyType": "AccessKeyIdentityBasedPolicy",
        "EncodedDiagnosticMessage": "",
    }));
    Err(e)
}

async fn dispatch(st: &RpcState, req: RpcRequest) -> Result<Response, RpcError> {
    authorize(&req)?;
    let handled = match req.product {
        Product::Rds => super::rds::dispatch(&st.svc, &req).await,
        Product::Polardb => super::polardb::dispatch(&st.svc, &req).await,
        Product::Dds => super::dds::dispatch(&st.svc, &req).await,
    };
    if let Some(r) = handled {
        return r;
    }
    Err(RpcError::new(
        StatusCode::NOT_FOUND,
        "InvalidAction.NotFound",
        format!(
            "Specified api is not found, please check your url and method. ({} {:?})",
            req.action, req.product
        ),
    ))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn authenticate(
    st: &RpcState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    rid: &str,
) -> Result<RpcRequest, RpcError> {
    let query = sig::decode_form(uri.query().unwrap_or(""))
        .ok_or_else(|| RpcError::invalid("query", "not valid UTF-8"))?;
    let mut all = query.clone();
    let form = header(headers, "content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if form && !body.is_empty() {
        let b =
            std::str::from_utf8(body).map_err(|_| RpcError::invalid("body", "not valid UTF-8"))?;
        all.extend(
            sig::decode_form(b).ok_or_else(|| RpcError::invalid("body", "not valid UTF-8"))?,
        );
    }
    let params: BTreeMap<String, String> = all.iter().cloned().collect();
    let now = stowage_service::now_ms();
    let (key_id, nonce, principal) = match header(headers, "authorization") {
        Some(a) if a.starts_with("ACS3-HMAC-SHA256") => {
            let auth = sig::parse_acs3_authorization(a).ok_or_else(|| {
                RpcError::new(
                    StatusCode::BAD_REQUEST,
                    "IncompleteSignature",
                    "The Authorization header is not a valid ACS3-HMAC-SHA256 authorization.",
                )
            })?;
            let payload_hash = sig::sha256_hex(body);
            if let Some(claimed) = header(headers, "x-acs-content-sha256")
                && !claimed.eq_ignore_ascii_case(&payload_hash)
            {
                return Err(RpcError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameter",
                    "x-acs-content-sha256 does not match the request body.",
                ));
            }
            let date =
                header(headers, "x-acs-date").ok_or_else(|| RpcError::missing("x-acs-date"))?;
            let nonce = header(headers, "x-acs-signature-nonce")
                .ok_or_else(|| RpcError::missing("x-acs-signature-nonce"))?;
            let hs: Vec<(String, String)> = headers
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        n.as_str().to_ascii_lowercase(),
                        v.to_str().ok()?.to_string(),
                    ))
                })
                .collect();
            let (principal, secret) = st.gate.key(&auth.access_key_id).await.map_err(key_error)?;
            let cr = sig::acs3_canonical_request(
                method.as_str(),
                uri.path(),
                &query,
                &hs,
                &auth.signed_headers,
                &payload_hash,
            )
            .ok_or_else(|| {
                RpcError::new(
                    StatusCode::BAD_REQUEST,
                    "IncompleteSignature",
                    "A header named in SignedHeaders is missing.",
                )
            })?;
            let sts = sig::acs3_string_to_sign(&cr);
            if !sig::signatures_equal(&sig::acs3_signature(secret.expose(), &sts), &auth.signature)
            {
                return Err(signature_mismatch(&sts));
            }
            if !sig::timestamp_ok(date, now) {
                return Err(expired(date));
            }
            (auth.access_key_id, nonce.to_string(), principal)
        }
        Some(_) => {
            return Err(RpcError::new(
                StatusCode::BAD_REQUEST,
                "IncompleteSignature",
                "Unsupported Authorization scheme; use ACS3-HMAC-SHA256 or the RPC signature parameters.",
            ));
        }
        None => {
            for p in [
                "AccessKeyId",
                "Signature",
                "SignatureMethod",
                "SignatureVersion",
                "SignatureNonce",
                "Timestamp",
            ] {
                if params.get(p).is_none_or(|v| v.is_empty()) {
                    return Err(RpcError::missing(p));
                }
            }
            if !params["SignatureMethod"].eq_ignore_ascii_case("HMAC-SHA1") {
                return Err(RpcError::invalid(
                    "SignatureMethod",
                    "only HMAC-SHA1 is supported with signature version 1.0",
                ));
            }
            if params["SignatureVersion"] != "1.0" {
                return Err(RpcError::invalid(
                    "SignatureVersion",
                    "only 1.0 is supported",
                ));
            }
            let (principal, secret) = st
                .gate
                .key(&params["AccessKeyId"])
                .await
                .map_err(key_error)?;
            let sts = sig::rpc_string_to_sign(method.as_str(), &all);
            if !sig::signatures_equal(
                &sig::rpc_signature(secret.expose(), &sts),
                &params["Signature"],
            ) {
                return Err(signature_mismatch(&sts));
            }
            if !sig::timestamp_ok(&params["Timestamp"], now) {
                return Err(expired(&params["Timestamp"]));
            }
            (
                params["AccessKeyId"].clone(),
                params["SignatureNonce"].clone(),
                principal,
            )
        }
    };
    match st.gate.admit(&key_id, Some(&nonce), now).await {
        Ok(()) => {}
        Err(crate::gate::Refused::Throttled(wait_ms)) => {
            let mut e = RpcError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttling.User",
                "Request was denied due to user flow control.",
            );
            e.retry_after_ms = Some(wait_ms);
            return Err(e);
        }
        Err(crate::gate::Refused::NonceUsed) => {
            return Err(RpcError::new(
                StatusCode::BAD_REQUEST,
                "SignatureNonceUsed",
                "The request signature nonce has been used.",
            ));
        }
        Err(crate::gate::Refused::Unavailable) => {
            return Err(RpcError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
            ));
        }
    }
    let action = params
        .get("Action")
        .map(String::as_str)
        .or(header(headers, "x-acs-action"))
        .ok_or_else(|| RpcError::missing("Action"))?
        .to_string();
    let version = params
        .get("Version")
        .map(String::as_str)
        .or(header(headers, "x-acs-version"))
        .ok_or_else(|| RpcError::missing("Version"))?;
    let product = Product::from_version(version).ok_or_else(|| {
        RpcError::new(
            StatusCode::BAD_REQUEST,
            "InvalidVersion",
            format!("Specified parameter Version \"{version}\" is not valid."),
        )
    })?;
    Ok(RpcRequest {
        principal,
        product,
        action,
        params,
        request_id: rid.to_string(),
        // HTTP/2 clients name the host in the URI, not a header.
        host: header(headers, "host")
            .map(str::to_string)
            .or_else(|| uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "127.0.0.1:8420".into()),
    })
}

fn key_error(e: ServiceError) -> RpcError {
    match e.kind {
        ErrorKind::KeyDisabled => RpcError::new(
            StatusCode::BAD_REQUEST,
            "InvalidAccessKeyId.Inactive",
            "Specified access key is disabled.",
        ),
        ErrorKind::Internal => e.into(),
        _ => RpcError::new(
            StatusCode::NOT_FOUND,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        ),
    }
}

fn signature_mismatch(sts: &str) -> RpcError {
    // The core SDK splits the message on ':' and compares the rest with its
    // own string to sign (spec §1 rule 6).
    RpcError::new(
        StatusCode::BAD_REQUEST,
        "SignatureDoesNotMatch",
        format!(
            "Specified signature is not matched with our calculation. server string to sign is:{sts}"
        ),
    )
}

fn expired(ts: &str) -> RpcError {
    RpcError::new(
        StatusCode::BAD_REQUEST,
        "InvalidTimeStamp.Expired",
        format!(
            "Specified time stamp or date value is expired ({ts}); it must be within 15 minutes of the server's time."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::RateLimiter;

    #[test]
    fn token_bucket_per_key() {
        let mut l = RateLimiter::new(10);
        for _ in 0..10 {
            assert!(l.take("a", 0).is_ok());
        }
        assert_eq!(l.take("a", 0), Err(100));
        assert!(l.take("b", 0).is_ok(), "buckets are per key");
        assert!(l.take("a", 100).is_ok(), "one token back after 100 ms");
        assert!(l.take("a", 100).is_err());
        assert!(l.take("a", 10_000).is_ok());
    }
}
