//! The Tencent Cloud API 3.0 request layer: takes a request in any of the
//! three forms the clients send (POST JSON with TC3, GET with TC3, POST
//! form or GET with the legacy signature; spec §3), verifies it, lets it
//! through the gate shared with the Alibaba dialect, and answers as the SDK
//! reads it (spec §6): always HTTP 200, `Content-Type: application/json`
//! exactly, `{"Response": {…, "RequestId"}}`, errors in `Response.Error`.

use super::signature as sig;
use crate::gate::{Gate, Refused};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use stowage_service::{ErrorKind, Principal, ServiceError};

/// The only API version served (mongodb 2019-07-25).
pub const VERSION: &str = "2019-07-25";

/// The product's service name in a TC3 credential scope.
pub const SERVICE: &str = "mongodb";

/// Parameters every request carries that are not the operation's.
const COMMON: [&str; 11] = [
    "Action",
    "Version",
    "Region",
    "Timestamp",
    "Nonce",
    "SecretId",
    "Signature",
    "SignatureMethod",
    "Token",
    "RequestClient",
    "Language",
];

pub struct TcState {
    pub gate: Arc<Gate>,
    /// DescribeBackupDownloadTask's own limit per key (the cloud's 20/s).
    pub download_limit: std::sync::Mutex<crate::alibaba::rpc::RateLimiter>,
}

impl TcState {
    pub fn new(gate: Arc<Gate>) -> TcState {
        TcState {
            gate,
            download_limit: std::sync::Mutex::new(crate::alibaba::rpc::RateLimiter::new(20)),
        }
    }
}

/// An error as the cloud words it.
#[derive(Debug, Clone)]
pub struct TcError {
    pub code: String,
    pub message: String,
}

impl TcError {
    pub fn new(code: &str, message: impl Into<String>) -> TcError {
        TcError {
            code: code.into(),
            message: message.into(),
        }
    }
    pub fn missing(name: &str) -> TcError {
        TcError::new(
            "MissingParameter",
            format!("The request is missing a required parameter `{name}`."),
        )
    }
    pub fn invalid(name: &str, why: &str) -> TcError {
        TcError::new(
            "InvalidParameterValue",
            format!("The value of parameter `{name}` is not valid: {why}"),
        )
    }
    fn signature(why: &str) -> TcError {
        TcError::new("AuthFailure.SignatureFailure", why)
    }
}

impl From<ServiceError> for TcError {
    fn from(e: ServiceError) -> Self {
        let code = match e.kind {
            ErrorKind::InvalidParameter => "InvalidParameterValue",
            ErrorKind::NotFound => "ResourceNotFound",
            ErrorKind::Unauthorized | ErrorKind::KeyDisabled => "AuthFailure.SecretIdNotFound",
            ErrorKind::Forbidden => "AuthFailure.UnauthorizedOperation",
            ErrorKind::InstanceBusy | ErrorKind::InvalidState | ErrorKind::Conflict => {
                "OperationDenied"
            }
            ErrorKind::Internal => "InternalError",
            _ => "FailedOperation",
        };
        TcError::new(code, e.message)
    }
}

/// A request that passed authentication and the gate.
pub struct TcRequest {
    pub principal: Principal,
    pub action: String,
    pub region: String,
    /// The operation's parameters (common ones removed), as JSON.
    pub params: Map<String, Value>,
    pub request_id: String,
    /// The access key (rate limits are per key).
    pub key_id: String,
    /// The `Host` the request was sent to, as sent (tccli's carries the
    /// scheme): download links are built on it.
    pub host: String,
}

/// Whether a request to `/` is Tencent's: a TC3 `Authorization`, an
/// `X-TC-Action` header, or the legacy signature's `SecretId` with
/// `Version=2019-07-25`.
pub fn is_tencent(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> bool {
    if headers.contains_key("x-tc-action")
        || header(headers, "authorization").is_some_and(|a| a.starts_with("TC3-HMAC-SHA256"))
    {
        return true;
    }
    let legacy = |s: &str| s.contains("SecretId=") && s.contains(&format!("Version={VERSION}"));
    uri.query().is_some_and(legacy) || std::str::from_utf8(body).is_ok_and(legacy)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `{"Response": {…, "RequestId"}}`, HTTP 200, the exact content type the
/// SDK looks for.
pub fn ok_response(body: Value, request_id: &str) -> Response {
    let mut inner = match body {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    inner.insert("RequestId".into(), Value::String(request_id.into()));
    respond(json!({"Response": inner}))
}

pub fn error_response(e: &TcError, request_id: &str) -> Response {
    respond(json!({"Response": {
        "Error": {"Code": e.code, "Message": e.message},
        "RequestId": request_id,
    }}))
}

fn respond(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Answers one Tencent request.
pub async fn handle(
    st: &TcState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = stowage_service::secrets::random_uuid();
    match authenticate(st, &method, &uri, &headers, &body, &rid).await {
        Ok(req) => match super::ops::dispatch(st, &req).await {
            Ok(r) => r,
            Err(e) => error_response(&e, &rid),
        },
        Err(e) => error_response(&e, &rid),
    }
}

/// Verifies the request (either signature), passes it through the gate and
/// gathers its parameters.
async fn authenticate(
    st: &TcState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    rid: &str,
) -> Result<TcRequest, TcError> {
    let now = stowage_service::now_ms();
    let raw_query = uri.query().unwrap_or("");
    let decode = |s: &str| {
        crate::alibaba::signature::decode_form(s)
            .ok_or_else(|| TcError::new("InvalidParameter", "the parameters are not valid UTF-8"))
    };
    let (principal, key_id, nonce, action, version, region, pairs_or_json) = match header(
        headers,
        "authorization",
    ) {
        Some(a) => {
            let auth = sig::parse_tc3_authorization(a).ok_or_else(|| {
                TcError::signature(
                    "The Authorization header is not a TC3-HMAC-SHA256 authorization.",
                )
            })?;
            let ts = header(headers, "x-tc-timestamp")
                .ok_or_else(|| TcError::missing("X-TC-Timestamp"))?;
            let secs: i64 = ts
                .parse()
                .map_err(|_| TcError::invalid("X-TC-Timestamp", "not a Unix time"))?;
            if auth.service != SERVICE {
                return Err(TcError::signature(&format!(
                    "The credential scope names service {}; this endpoint serves {SERVICE}.",
                    auth.service
                )));
            }
            if auth.date != sig::utc_date(secs) {
                return Err(TcError::signature(
                    "The credential scope's date is not the UTC date of X-TC-Timestamp.",
                ));
            }
            // The signed headers' values exactly as sent (tccli signs
            // `Host: http://127.0.0.1:PORT`).
            let mut signed = Vec::new();
            for name in &auth.signed_headers {
                let v = header(headers, name).ok_or_else(|| {
                    TcError::signature(&format!("Signed header {name} is missing."))
                })?;
                signed.push((name.clone(), v.to_string()));
            }
            let payload = match header(headers, "x-tc-content-sha256") {
                Some("UNSIGNED-PAYLOAD") => sig::sha256_hex(b"UNSIGNED-PAYLOAD"),
                _ => sig::sha256_hex(body),
            };
            let query = if method == Method::GET { raw_query } else { "" };
            let canonical = sig::tc3_canonical_request(method.as_str(), query, &signed, &payload);
            let sts = sig::tc3_string_to_sign(ts, &auth.date, &auth.service, &canonical);
            let (principal, secret) = st.gate.key(&auth.secret_id).await.map_err(key_error)?;
            let want = sig::tc3_signature(secret.expose(), &auth.date, &auth.service, &sts);
            if !sig::signatures_equal(&want, &auth.signature) {
                return Err(TcError::signature(
                    "The provided credentials could not be validated. Please check your signature is correct.",
                ));
            }
            if !sig::timestamp_ok(ts, now) {
                return Err(expired(ts));
            }
            let params = if method == Method::GET {
                Err(decode(raw_query)?)
            } else if body.is_empty() {
                Ok(Map::new())
            } else {
                match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(m)) => Ok(m),
                    _ => {
                        return Err(TcError::new(
                            "InvalidParameter",
                            "The request body is not a JSON object.",
                        ));
                    }
                }
            };
            (
                principal,
                auth.secret_id.clone(),
                None,
                header(headers, "x-tc-action")
                    .ok_or_else(|| TcError::missing("X-TC-Action"))?
                    .to_string(),
                header(headers, "x-tc-version").map(str::to_string),
                header(headers, "x-tc-region").unwrap_or("").to_string(),
                params,
            )
        }
        None => {
            // The legacy signature: parameters in the query or form.
            let mut pairs = decode(raw_query)?;
            if method == Method::POST {
                let b = std::str::from_utf8(body).map_err(|_| {
                    TcError::new("InvalidParameter", "the parameters are not valid UTF-8")
                })?;
                pairs.extend(decode(b)?);
            }
            let get = |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.as_str())
                    .filter(|v| !v.is_empty())
            };
            for p in ["SecretId", "Signature", "Timestamp", "Nonce", "Action"] {
                if get(p).is_none() {
                    return Err(TcError::missing(p));
                }
            }
            let (key_id, given, ts, nonce) = (
                get("SecretId").unwrap_or_default().to_string(),
                get("Signature").unwrap_or_default().to_string(),
                get("Timestamp").unwrap_or_default().to_string(),
                get("Nonce").unwrap_or_default().to_string(),
            );
            let method_name = get("SignatureMethod").unwrap_or("HmacSHA1");
            let host = header(headers, "host").unwrap_or("");
            let sts = sig::legacy_string_to_sign(method.as_str(), host, &pairs);
            let (principal, secret) = st.gate.key(&key_id).await.map_err(key_error)?;
            let want = sig::legacy_signature(method_name, secret.expose(), &sts)
                .ok_or_else(|| TcError::invalid("SignatureMethod", "HmacSHA1 or HmacSHA256"))?;
            if !sig::signatures_equal(&want, &given) {
                return Err(TcError::signature(
                    "The provided credentials could not be validated. Please check your signature is correct.",
                ));
            }
            if !sig::timestamp_ok(&ts, now) {
                return Err(expired(&ts));
            }
            let action = get("Action").unwrap_or_default().to_string();
            let version = get("Version").map(str::to_string);
            let region = get("Region").unwrap_or("").to_string();
            (
                principal,
                key_id,
                Some(nonce),
                action,
                version,
                region,
                Err(pairs),
            )
        }
    };
    match version.as_deref() {
        Some(VERSION) => {}
        Some(v) => {
            return Err(TcError::new(
                "NoSuchVersion",
                format!("The requested version {v} of mongodb is not supported; use {VERSION}."),
            ));
        }
        None => return Err(TcError::missing("Version")),
    }
    match st.gate.admit(&key_id, nonce.as_deref(), now).await {
        Ok(()) => {}
        Err(Refused::Throttled(_)) => {
            return Err(TcError::new(
                "RequestLimitExceeded",
                "The number of requests exceeds the frequency limit.",
            ));
        }
        Err(Refused::NonceUsed) => {
            return Err(TcError::new(
                "AuthFailure.SignatureExpire",
                "The request was already received (its Nonce was used): a replay is refused.",
            ));
        }
        Err(Refused::Unavailable) => {
            return Err(TcError::new(
                "InternalError",
                "The request could not be recorded (a temporary failure); retry it.",
            ));
        }
    }
    let params = match pairs_or_json {
        Ok(m) => m,
        Err(pairs) => {
            let own: Vec<(String, String)> = pairs
                .into_iter()
                .filter(|(k, _)| !COMMON.contains(&k.as_str()))
                .collect();
            match super::params::unflatten(&own) {
                Ok(Value::Object(m)) => m,
                Ok(_) => Map::new(),
                Err(why) => return Err(TcError::new("InvalidParameter", why)),
            }
        }
    };
    Ok(TcRequest {
        principal,
        action,
        region,
        params,
        request_id: rid.to_string(),
        key_id,
        host: header(headers, "host").unwrap_or("127.0.0.1").to_string(),
    })
}

fn key_error(e: ServiceError) -> TcError {
    match e.kind {
        ErrorKind::Internal => e.into(),
        ErrorKind::KeyDisabled => {
            TcError::new("AuthFailure.SecretIdNotFound", "The SecretId is disabled.")
        }
        _ => TcError::new(
            "AuthFailure.SecretIdNotFound",
            "The SecretId is not found, please ensure that your SecretId is correct.",
        ),
    }
}

fn expired(ts: &str) -> TcError {
    TcError::new(
        "AuthFailure.SignatureExpire",
        format!(
            "Signature expired: the request's timestamp {ts} is more than {} s away from the server's time.",
            sig::MAX_SKEW_SECS
        ),
    )
}
