//! Stowage's own REST API, version 1.
//!
//! JSON in and out. Every route but `/v1/health` needs
//! `Authorization: Bearer <access-key-id>:<access-key-secret>`.
//! Errors are `{"error": {"code": "...", "message": "..."}}` with a fitting
//! status; a client's mistake is never a 500.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use stowage_catalog::{BackupSet, Instance, Task, TaskFilter};
use stowage_core::time::format_rfc3339;
use stowage_core::{Progress, TaskKind, TaskMode, TaskState};
use stowage_service::{ErrorKind, NewInstance, Principal, Service, ServiceError};

type Svc = Arc<Service>;

pub struct ApiError(ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

fn status_and_code(k: ErrorKind) -> (StatusCode, &'static str) {
    match k {
        ErrorKind::InvalidParameter => (StatusCode::BAD_REQUEST, "InvalidParameter"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "Conflict"),
        ErrorKind::InstanceBusy => (StatusCode::CONFLICT, "InstanceBusy"),
        ErrorKind::TargetNotEmpty => (StatusCode::CONFLICT, "TargetNotEmpty"),
        ErrorKind::TargetNotAllowed => (StatusCode::FORBIDDEN, "TargetNotAllowed"),
        ErrorKind::UnsafeTarget => (StatusCode::CONFLICT, "UnsafeTarget"),
        ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        ErrorKind::KeyDisabled => (StatusCode::UNAUTHORIZED, "KeyDisabled"),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "Forbidden"),
        ErrorKind::InvalidState => (StatusCode::CONFLICT, "InvalidState"),
        ErrorKind::Database(k) => {
            use stowage_service::DbErrorKind as D;
            // The database, not Stowage, said no: 422 with what kind of no.
            let code = match k {
                D::Unreachable => "DatabaseUnreachable",
                D::Authentication => "DatabaseAuthentication",
                D::Permission => "DatabasePermission",
                D::Capacity => "DatabaseCapacity",
                D::ServerGone => "DatabaseGone",
                D::Unsupported => "DatabaseUnsupported",
                D::Protocol => "DatabaseProtocol",
                D::Cancelled => "Cancelled",
                D::Repository => "RepositoryError",
                D::Filesystem => "FilesystemError",
                D::Busy => "RepositoryBusy",
            };
            (StatusCode::UNPROCESSABLE_ENTITY, code)
        }
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = status_and_code(self.0.kind);
        (
            status,
            Json(json!({"error": {"code": code, "message": self.0.message}})),
        )
            .into_response()
    }
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError(ServiceError::invalid(m))
}

type ApiResult<T> = Result<T, ApiError>;

/// The caller, from the `Authorization` header.
pub struct Auth(pub Principal);

impl FromRequestParts<Svc> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, svc: &Svc) -> Result<Self, Self::Rejection> {
        let unauthorized = |m: &str| ApiError(ServiceError::new(ErrorKind::Unauthorized, m));
        let h = parts.headers.get("authorization").ok_or_else(|| {
            unauthorized(
                "missing Authorization header (Bearer <access-key-id>:<access-key-secret>)",
            )
        })?;
        let h = h
            .to_str()
            .map_err(|_| unauthorized("malformed Authorization header"))?;
        let token = h.strip_prefix("Bearer ").ok_or_else(|| {
            unauthorized("Authorization must be: Bearer <access-key-id>:<access-key-secret>")
        })?;
        let (id, secret) = token.split_once(':').ok_or_else(|| {
            unauthorized("Authorization must be: Bearer <access-key-id>:<access-key-secret>")
        })?;
        let p = svc.authenticate(id.trim(), secret.trim()).await?;
        if p.policy.is_some() {
            return Err(ApiError(ServiceError::new(
                ErrorKind::Forbidden,
                "this access key is limited by a RAM policy, which the cloud dialects enforce; \
                 the REST API needs a key without one",
            )));
        }
        Ok(Auth(p))
    }
}

/// JSON body whose rejections use our error shape.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Svc> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, svc: &Svc) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, svc).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(invalid(json_rejection(e))),
        }
    }
}

fn json_rejection(e: JsonRejection) -> String {
    match e {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body (Content-Type: application/json)".into()
        }
        other => format!("invalid JSON body: {}", other.body_text()),
    }
}

/// Query string whose rejections use our error shape.
pub struct Q<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send> FromRequestParts<Svc> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, svc: &Svc) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, svc).await {
            Ok(Query(v)) => Ok(Q(v)),
            Err(e) => Err(invalid(format!(
                "invalid query: {}",
                match e {
                    QueryRejection::FailedToDeserializeQueryString(e) => e.body_text(),
                    other => other.body_text(),
                }
            ))),
        }
    }
}

/// `limit` and `cursor` of a listing. A cursor is opaque to clients: the
/// `next_cursor` of the previous page.
struct Page {
    limit: u32,
    /// Rows sort below this key (ids, newest first) / after it (names).
    cursor: Option<String>,
}

const DEFAULT_LIMIT: u32 = 100;

impl Page {
    fn parse(limit: Option<u32>, cursor: Option<String>) -> ApiResult<Page> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=1000).contains(&limit) {
            return Err(invalid("limit: 1 to 1000"));
        }
        if let Some(c) = &cursor
            && (c.is_empty() || c.len() > 128)
        {
            return Err(invalid("cursor: the next_cursor of the previous page"));
        }
        Ok(Page { limit, cursor })
    }

    /// The cursor as an id (listings in id order).
    fn before_id(&self) -> ApiResult<Option<i64>> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid("cursor: the next_cursor of the previous page"))
            })
            .transpose()
    }

    /// One more than the page holds, to know whether another page follows.
    fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// Cuts `rows` (fetched with [`Page::fetch`]) to the page and builds the
    /// response `{<name>: [...], "next_cursor": ...}`.
    fn respond<T>(
        &self,
        name: &str,
        mut rows: Vec<T>,
        key: impl Fn(&T) -> String,
        to_json: impl Fn(&T) -> Value,
    ) -> Value {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next = if more { rows.last().map(&key) } else { None };
        let items: Vec<Value> = rows.iter().map(to_json).collect();
        json!({ name: items, "next_cursor": next })
    }

    /// Pages a listing held in memory, sorted by `key` (names, ids as text).
    fn in_memory<T>(
        &self,
        name: &str,
        rows: Vec<T>,
        key: impl Fn(&T) -> String,
        to_json: impl Fn(&T) -> Value,
    ) -> Value {
        let rows: Vec<T> = rows
            .into_iter()
            .filter(|r| self.cursor.as_ref().is_none_or(|c| key(r) > *c))
            .take(self.fetch() as usize)
            .collect();
        self.respond(name, rows, key, to_json)
    }
}

/// Query of listings that have no filter of their own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

fn parse_states(s: &str) -> ApiResult<Vec<TaskState>> {
    s.split(',')
        .map(|part| {
            part.trim().parse().map_err(|_| {
                invalid(format!(
                    "state {part:?} is not one of pending, checking, preparing, running, finishing, finished, failed, cancelled"
                ))
            })
        })
        .collect()
}

fn parse_id(s: &str, what: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(format!("{what} id must be a positive integer, got {s:?}")))
}

fn ts(ms: Option<i64>) -> Value {
    ms.map(|m| Value::String(format_rfc3339(m)))
        .unwrap_or(Value::Null)
}

pub fn instance_json(i: &Instance) -> Value {
    let mut v = json!({
        "id": i.id,
        "name": i.name,
        "engine": i.engine,
        "topology": i.topology,
        "host": i.host,
        "port": i.port,
        "user": i.username,
        "has_password": i.password_enc.is_some(),
        "dbname": i.dbname,
        "dialect": i.options.get("dialect"),
        "max_rate_kbps": i.options.get("max_rate_kbps"),
        "sslmode": i.options.get("sslmode").and_then(Value::as_str).unwrap_or("prefer"),
        "sslrootcert": i.options.get("sslrootcert"),
        "created_at": ts(Some(i.created_ms)),
    });
    // MongoDB: how it is reached (never with credentials: none are stored
    // in the strings); a cluster's shards and config servers with their ids.
    if i.engine == "mongodb" {
        for k in ["uri", "shards", "config", "mongos"] {
            if let Some(x) = i.options.get(k).filter(|x| !x.is_null()) {
                v[k] = x.clone();
            }
        }
    }
    v
}

fn progress_json(done: u64, total: u64, stored: u64, finished: bool) -> Value {
    let p = Progress {
        bytes_done: done,
        bytes_total: total,
        bytes_stored: stored,
    };
    json!({"percent": p.percent(finished), "bytes_done": done, "bytes_total": p.display_total(), "bytes_stored": stored})
}

/// A task of any kind, or a part of one.
pub fn task_json(t: &Task) -> Value {
    let mut v = json!({
        "id": t.id,
        "kind": t.kind,
        "instance_id": t.instance_id,
        "set_id": t.set_id,
        "mode": t.mode,
        "state": t.state,
        "progress": progress_json(t.bytes_done, t.bytes_total, t.bytes_stored, t.state == TaskState::Finished),
        "created_at": ts(Some(t.created_ms)),
        "started_at": ts(t.started_ms),
        "finished_at": ts(t.finished_ms),
        "updated_at": ts(Some(t.updated_ms)),
        "duration_ms": t.finished_ms.map(|f| f - t.created_ms),
        "error": t.error,
        "node": t.node,
        "attempts": t.attempts,
    });
    let m = v.as_object_mut().expect("object");
    if let Some(parent) = t.parent_id {
        m.insert("parent_id".into(), json!(parent));
        m.insert("part".into(), json!(t.part));
    }
    if t.kind == TaskKind::Backup {
        m.insert("method".into(), json!(t.method));
        m.insert("consistent_point".into(), json!(t.consistent_point));
        m.insert("scheduled_for".into(), json!(ts(t.scheduled_ms)));
    } else {
        m.insert("params".into(), t.params.clone());
        m.insert("result".into(), json!(t.result));
    }
    v
}

/// A task with its parts (`parts` is empty for a task without parts).
fn task_with_parts(t: &Task, parts: &[Task]) -> Value {
    let mut v = task_json(t);
    if t.parent_id.is_none() {
        v["parts"] = Value::Array(parts.iter().map(task_json).collect());
    }
    v
}

pub fn set_json(s: &BackupSet) -> Value {
    json!({
        "id": s.id,
        "instance_id": s.instance_id,
        "task_id": s.task_id,
        "engine": s.engine,
        "method": s.method,
        "mode": s.mode,
        "started_at": ts(Some(s.started_ms)),
        "finished_at": ts(Some(s.finished_ms)),
        "bytes_logical": s.bytes_logical,
        "bytes_stored": s.bytes_stored,
        "consistent_point": s.consistent_point,
        "snapshot_id": s.snapshot_id,
        "meta": s.meta,
        "expires_at": ts(s.expires_ms),
    })
}

pub fn router(svc: Svc) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/instances", get(list_instances).post(add_instance))
        .route(
            "/v1/instances/{id}",
            get(get_instance)
                .delete(remove_instance)
                .patch(update_instance),
        )
        .route("/v1/instances/{id}/check", post(check_instance))
        .route("/v1/instances/{id}/backups", post(create_backup))
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/cancel", post(cancel_task))
        .route("/v1/sets", get(list_sets))
        .route(
            "/v1/sets/{id}",
            get(get_set).delete(delete_set).patch(patch_set),
        )
        .route("/v1/instances/{id}/policy", get(get_policy).put(put_policy))
        .route("/v1/sets/{id}/manifest", get(set_manifest))
        .route("/v1/sets/{id}/restore", post(restore_set))
        .route("/v1/sets/{id}/download", post(download_set))
        .route("/v1/downloads", get(list_downloads))
        .route(
            "/v1/downloads/{task}/{file}",
            get(crate::download::serve_link),
        )
        .route(
            "/v1/downloads/sets/{account}/{set}/{file}",
            get(crate::download::serve_set_link),
        )
        // Older name of the restore, verify and gc tasks' routes.
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_task))
        .route("/v1/jobs/{id}/cancel", post(cancel_task))
        .route("/v1/accounts", get(list_accounts).post(add_account))
        .route("/v1/accounts/{name}/keys", get(list_keys).post(create_key))
        .route("/v1/keys", get(list_own_keys).post(create_own_key))
        .route("/v1/keys/{id}", axum::routing::delete(delete_key))
        .route("/v1/keys/{id}/disable", post(disable_key))
        .route("/v1/keys/{id}/enable", post(enable_key))
        .route(
            "/v1/keys/{id}/policy",
            axum::routing::put(put_key_policy).delete(delete_key_policy),
        )
        .route("/v1/verify", post(verify))
        .route("/v1/gc", post(gc))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(svc)
}

async fn not_found() -> ApiError {
    ApiError(ServiceError::new(
        ErrorKind::NotFound,
        "no such API route (see docs/api.md)",
    ))
}

async fn method_not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, Json(json!({"error": {"code": "MethodNotAllowed", "message": "this route does not accept that HTTP method"}}))).into_response()
}

async fn health(State(svc): State<Svc>) -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "running": svc.running()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInstanceBody {
    name: String,
    #[serde(default)]
    engine: Option<String>,
    /// PostgreSQL: required. MongoDB: taken from `uri`.
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    /// PostgreSQL: required. MongoDB: optional (no authentication without).
    #[serde(default)]
    user: Option<String>,
    /// MongoDB: the connection string, without credentials.
    #[serde(default)]
    uri: Option<String>,
    /// MongoDB sharded cluster: the shards' connection strings.
    #[serde(default)]
    shards: Vec<String>,
    /// MongoDB sharded cluster: the config servers' connection string.
    #[serde(default)]
    config: Option<String>,
    /// MongoDB sharded cluster: a mongos (balancer paused during backups).
    #[serde(default)]
    mongos: Option<String>,
    #[serde(default)]
    password: Option<stowage_core::Secret>,
    #[serde(default)]
    dbname: Option<String>,
    #[serde(default)]
    dialect: Option<String>,
    #[serde(default)]
    max_rate_kbps: Option<u32>,
    #[serde(default)]
    sslmode: Option<String>,
    #[serde(default)]
    sslrootcert: Option<String>,
    /// Connect and check before registering (default true).
    #[serde(default)]
    check: Option<bool>,
}

async fn add_instance(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Body(b): Body<NewInstanceBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let i = svc
        .add_instance(
            &p,
            NewInstance {
                name: b.name,
                engine: b.engine.clone().unwrap_or_else(|| "postgresql".into()),
                host: match (b.host, b.engine.as_deref()) {
                    (Some(h), _) => h,
                    (None, Some("mongodb")) => String::new(),
                    (None, _) => return Err(invalid("host: required")),
                },
                port: match (b.port, b.engine.as_deref()) {
                    (Some(p), _) => p,
                    (None, Some("mongodb")) => 0,
                    (None, _) => return Err(invalid("port: required")),
                },
                user: match (b.user, b.engine.as_deref()) {
                    (Some(u), _) => u,
                    (None, Some("mongodb")) => String::new(),
                    (None, _) => return Err(invalid("user: required")),
                },
                uri: b.uri,
                shards: b.shards,
                config: b.config,
                mongos: b.mongos,
                password: b.password,
                dbname: b.dbname,
                dialect: b.dialect,
                max_rate_kbps: b.max_rate_kbps,
                sslmode: b.sslmode,
                sslrootcert: b.sslrootcert,
                check: b.check.unwrap_or(true),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(instance_json(&i))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceQuery {
    engine: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list_instances(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Q(q): Q<InstanceQuery>,
) -> ApiResult<Json<Value>> {
    let page = Page::parse(q.limit, q.cursor)?;
    let mut rows = svc.list_instances(&p).await?;
    if let Some(e) = &q.engine {
        rows.retain(|i| i.engine == *e);
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(page.in_memory(
        "instances",
        rows,
        |i| i.id.clone(),
        instance_json,
    )))
}

async fn get_instance(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(instance_json(&svc.instance(&p, &id).await?)))
}

async fn update_instance(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(u): Body<stowage_service::InstanceUpdate>,
) -> ApiResult<Json<Value>> {
    Ok(Json(instance_json(&svc.update_instance(&p, &id, u).await?)))
}

async fn remove_instance(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    svc.remove_instance(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn check_instance(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let info = svc.check_instance(&p, &id).await?;
    Ok(Json(json!({"ok": true, "server": info})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    #[serde(default)]
    client_token: Option<String>,
    /// Keep this backup's set this many days instead of the policy's retention.
    #[serde(default)]
    retention_days: Option<u32>,
    #[serde(default)]
    comment: Option<String>,
    /// Take everything again rather than build on the newest set.
    #[serde(default)]
    full: bool,
    /// `logical` or `physical` (MySQL); default the engine's own.
    #[serde(default)]
    method: Option<String>,
}

async fn create_backup(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // The body is optional: an empty POST starts a backup with defaults.
    let b: BackupBody = optional_json(&headers, &body)?;
    let t = svc
        .start_backup(
            &p,
            &id,
            TaskMode::Manual,
            stowage_service::BackupRequest {
                client_token: b.client_token,
                retention_days: b.retention_days,
                comment: b.comment,
                full: b.full,
                method: b.method,
            },
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(task_json(&t))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskQuery {
    /// Comma-separated kinds: backup, restore, verify, gc.
    kind: Option<String>,
    instance: Option<String>,
    state: Option<String>,
    set: Option<i64>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn parse_kinds(k: &str) -> ApiResult<Vec<TaskKind>> {
    k.split(',')
        .map(|part| {
            part.trim().parse::<TaskKind>().map_err(|_| {
                invalid(format!(
                    "kind {part:?} is not one of backup, restore, verify, gc, download"
                ))
            })
        })
        .collect()
}

async fn task_listing(
    svc: &Svc,
    p: &stowage_service::Principal,
    q: TaskQuery,
    key: &str,
    default_kinds: &[TaskKind],
) -> ApiResult<Json<Value>> {
    task_listing_with(svc, p, q, key, default_kinds, task_json).await
}

async fn task_listing_with(
    svc: &Svc,
    p: &stowage_service::Principal,
    q: TaskQuery,
    key: &str,
    default_kinds: &[TaskKind],
    to_json: impl Fn(&Task) -> Value,
) -> ApiResult<Json<Value>> {
    let page = Page::parse(q.limit, q.cursor)?;
    let mut f = TaskFilter {
        kinds: default_kinds.to_vec(),
        set_id: q.set,
        before_id: page.before_id()?,
        limit: Some(page.fetch()),
        ..Default::default()
    };
    if let Some(k) = q.kind {
        f.kinds = parse_kinds(&k)?;
        if let Some(k) = f
            .kinds
            .iter()
            .find(|k| !default_kinds.is_empty() && !default_kinds.contains(k))
        {
            return Err(invalid(format!(
                "kind {:?}: this listing has only {}; see /v1/tasks for every kind",
                k.as_str(),
                default_kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if let Some(i) = q.instance {
        f.instance_id = Some(svc.instance(p, &i).await?.id);
    }
    if let Some(s) = q.state {
        f.states = parse_states(&s)?;
    }
    let rows = svc.list_tasks(p, &f).await?;
    Ok(Json(page.respond(key, rows, |t| t.id.to_string(), to_json)))
}

/// `/v1/downloads`: download tasks, each finished one with its link.
async fn list_downloads(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Q(q): Q<TaskQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let kinds = [TaskKind::Download];
    let with_link = |t: &Task| {
        let mut v = task_json(t);
        add_link(&svc, t, &headers, &mut v);
        v
    };
    task_listing_with(&svc, &p, q, "downloads", &kinds, with_link).await
}

async fn list_tasks(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Q(q): Q<TaskQuery>,
) -> ApiResult<Json<Value>> {
    task_listing(&svc, &p, q, "tasks", &[]).await
}

/// `/v1/jobs`: the tasks that are not backups, under their older name.
async fn list_jobs(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Q(q): Q<TaskQuery>,
) -> ApiResult<Json<Value>> {
    let kinds = [TaskKind::Restore, TaskKind::Verify, TaskKind::Gc];
    task_listing(&svc, &p, q, "jobs", &kinds).await
}

async fn get_task(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let t = svc.task(&p, parse_id(&id, "task")?).await?;
    let parts = svc.task_parts(&p, &t).await?;
    let mut v = task_with_parts(&t, &parts);
    add_link(&svc, &t, &headers, &mut v);
    Ok(Json(v))
}

/// A finished download task's link, as a URL on the host the caller
/// reached this server by, and when it expires.
fn add_link(svc: &Service, t: &Task, headers: &HeaderMap, v: &mut Value) {
    if let Some((path, expires)) = svc.download_link(t) {
        let host = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1:8420");
        v["download"] = json!({
            "url": format!("http://{host}{path}"),
            "expires_at": format_rfc3339(expires * 1000),
        });
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DownloadBody {
    /// The part to package (a replica set, a shard, `base`); default: the
    /// set's only part, or PostgreSQL's data directory.
    #[serde(default)]
    part: Option<String>,
}

async fn download_set(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let b: DownloadBody = optional_json(&headers, &body)?;
    let t = svc
        .start_download(&p, parse_id(&id, "set")?, b.part, Default::default())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(task_json(&t))))
}

async fn cancel_task(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(task_json(
        &svc.cancel_task(&p, parse_id(&id, "task")?).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQuery {
    instance: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list_sets(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Q(q): Q<SetQuery>,
) -> ApiResult<Json<Value>> {
    let page = Page::parse(q.limit, q.cursor)?;
    let rows = svc
        .list_sets_page(
            &p,
            q.instance.as_deref(),
            page.before_id()?,
            Some(page.fetch()),
        )
        .await?;
    Ok(Json(page.respond(
        "sets",
        rows,
        |s| s.id.to_string(),
        set_json,
    )))
}

async fn get_set(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(set_json(&svc.set(&p, parse_id(&id, "set")?).await?)))
}

async fn set_manifest(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let m = svc.set_manifest(&p, parse_id(&id, "set")?).await?;
    let files: Vec<Value> = m
        .archives
        .iter()
        .flat_map(|a| a.files.iter().map(move |f| json!({"archive": a.name, "path": f.path, "kind": f.kind, "size": f.size, "mode": f.mode, "chunks": f.chunks.len()})))
        .collect();
    Ok(Json(
        json!({"summary": m.summary, "engine_meta": m.engine_meta, "labels": m.labels, "files": files}),
    ))
}

async fn delete_set(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    svc.delete_set(&p, parse_id(&id, "set")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"expires_at": "<RFC 3339>"}` or `{"expires_at": null}` (kept until deleted).
async fn patch_set(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(b): Body<serde_json::Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&id, "set")?;
    if let Some(k) = b.keys().find(|k| *k != "expires_at") {
        return Err(invalid(format!("unknown field {k:?}; expected expires_at")));
    }
    let expires = match b.get("expires_at") {
        None => {
            return Err(invalid(
                "expected {\"expires_at\": \"<RFC 3339 time>\" | null}",
            ));
        }
        Some(Value::Null) => None,
        Some(Value::String(t)) => Some(
            stowage_core::time::parse_rfc3339(t)
                .ok_or_else(|| invalid(format!("expires_at: not an RFC 3339 time: {t:?}")))?,
        ),
        Some(_) => {
            return Err(invalid(
                "expires_at must be an RFC 3339 time string or null",
            ));
        }
    };
    Ok(Json(set_json(&svc.set_expiry(&p, id, expires).await?)))
}

pub fn policy_json(
    instance: &str,
    sp: &stowage_catalog::StoredPolicy,
    next_backup_ms: Option<i64>,
) -> Value {
    let p = &sp.policy;
    json!({
        "instance_id": instance,
        "enabled": p.enabled,
        "window": p.window.to_string(),
        "weekdays": p.weekdays.to_string(),
        "retention_days": p.retention_days,
        "next_backup_at": ts(next_backup_ms),
        "product_fields": sp.extra,
        "updated_at": ts(Some(sp.updated_ms)),
    })
}

async fn get_policy(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let i = svc.instance(&p, &id).await?;
    let sp = svc.policy(&p, &i.id).await?;
    let next = svc.next_backup_at(&p, &i.id, &sp.policy).await?;
    Ok(Json(policy_json(&i.id, &sp, next)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    enabled: Option<bool>,
    /// `HH:mmZ-HH:mmZ`, UTC.
    window: Option<String>,
    /// `Monday,Wednesday,…`
    weekdays: Option<String>,
    retention_days: Option<u32>,
}

async fn put_policy(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(b): Body<PolicyBody>,
) -> ApiResult<Json<Value>> {
    let bad = |f: &str, e: stowage_core::PolicyError| invalid(format!("{f}: {e}"));
    let u = stowage_service::PolicyUpdate {
        enabled: b.enabled,
        window: b
            .window
            .map(|w| stowage_core::Window::parse(&w).map_err(|e| bad("window", e)))
            .transpose()?,
        weekdays: b
            .weekdays
            .map(|w| stowage_core::Weekdays::parse(&w).map_err(|e| bad("weekdays", e)))
            .transpose()?,
        retention_days: b.retention_days,
        extra: Default::default(),
    };
    let i = svc.instance(&p, &id).await?;
    let sp = svc.set_policy(&p, &i.id, u).await?;
    let next = svc.next_backup_at(&p, &i.id, &sp.policy).await?;
    Ok(Json(policy_json(&i.id, &sp, next)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    /// A folder on the server's machine (PostgreSQL).
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    force: bool,
    /// A registered instance to restore into (MongoDB).
    #[serde(default)]
    into: Option<String>,
    /// With `into`: source database → target database.
    #[serde(default)]
    rename_db: std::collections::BTreeMap<String, String>,
    /// With `into`: drop target databases that exist already.
    #[serde(default)]
    drop: bool,
    /// With `into`: restore only this part of a sharded cluster's set (a
    /// shard's id, `dds-…_0`).
    #[serde(default)]
    part: Option<String>,
    /// With `into` (MySQL): also create the set's user accounts and their
    /// grants (accounts the target has are left as they are).
    #[serde(default)]
    accounts: bool,
}

async fn restore_set(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(b): Body<RestoreBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let set = parse_id(&id, "set")?;
    let j = match (b.target, b.into) {
        (Some(t), None) => {
            if !b.rename_db.is_empty() || b.drop || b.part.is_some() || b.accounts {
                return Err(invalid(
                    "rename_db, drop, part and accounts go with into, not target",
                ));
            }
            svc.start_restore(&p, set, &t, b.force).await?
        }
        (None, Some(i)) => {
            if b.force {
                return Err(invalid("force goes with target; into takes drop"));
            }
            let opts = stowage_service::RestoreIntoOptions {
                rename: b.rename_db,
                drop: b.drop,
                part: b.part,
                accounts: b.accounts,
            };
            svc.start_restore_into(&p, set, &i, opts).await?
        }
        _ => {
            return Err(invalid(
                "give exactly one of target (a folder, PostgreSQL) and into (an instance, MongoDB)",
            ));
        }
    };
    Ok((StatusCode::ACCEPTED, Json(task_json(&j))))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    /// Verify only the packs this set needs (open to the set's owner);
    /// without it the whole repository (admin only).
    #[serde(default)]
    set_id: Option<i64>,
}

async fn verify(
    State(svc): State<Svc>,
    Auth(p): Auth,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let b: VerifyBody = optional_json(&headers, &body)?;
    if let Some(id) = b.set_id
        && id <= 0
    {
        return Err(invalid("set_id must be a positive integer"));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(task_json(&svc.start_verify(&p, b.set_id).await?)),
    ))
}

/// An optional JSON body: empty means the defaults; otherwise it must be
/// JSON (by content type) with no unknown fields.
fn optional_json<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<T> {
    if body.is_empty() {
        return Ok(T::default());
    }
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        return Err(invalid(
            "expected a JSON body (Content-Type: application/json)",
        ));
    }
    serde_json::from_slice(body).map_err(|e| invalid(format!("invalid JSON body: {e}")))
}

async fn gc(State(svc): State<Svc>, Auth(p): Auth) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(task_json(&svc.start_gc(&p).await?)),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountBody {
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    #[serde(default)]
    description: String,
}

fn account_json(a: &stowage_catalog::Account) -> Value {
    json!({"id": a.id, "name": a.name, "created_at": ts(Some(a.created_ms))})
}

fn key_json(k: &stowage_service::KeyInfo) -> Value {
    json!({"access_key_id": k.access_key_id, "account": k.account, "status": k.status, "description": k.description, "created_at": ts(Some(k.created_ms)), "policy": k.policy})
}

fn keys_json(mut keys: Vec<stowage_service::KeyInfo>, q: PageQuery) -> ApiResult<Value> {
    let page = Page::parse(q.limit, q.cursor)?;
    keys.sort_by(|a, b| a.access_key_id.cmp(&b.access_key_id));
    Ok(page.in_memory("keys", keys, |k| k.access_key_id.clone(), key_json))
}

async fn list_accounts(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Q(q): Q<PageQuery>,
) -> ApiResult<Json<Value>> {
    let page = Page::parse(q.limit, q.cursor)?;
    let mut rows = svc.list_accounts(&p).await?;
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(page.in_memory(
        "accounts",
        rows,
        |a| a.name.clone(),
        account_json,
    )))
}

async fn add_account(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Body(b): Body<AccountBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((
        StatusCode::CREATED,
        Json(account_json(&svc.create_account(&p, &b.name).await?)),
    ))
}

async fn list_keys(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(name): Path<String>,
    Q(q): Q<PageQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(keys_json(svc.list_keys(&p, Some(&name)).await?, q)?))
}

async fn list_own_keys(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Q(q): Q<PageQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(keys_json(svc.list_keys(&p, None).await?, q)?))
}

/// The secret is returned once, here, and never again.
async fn create_key(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(name): Path<String>,
    body: Option<Json<KeyBody>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let d = body.map(|Json(b)| b.description).unwrap_or_default();
    let c = svc.create_key(&p, Some(&name), &d).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"access_key_id": c.access_key_id, "access_key_secret": c.access_key_secret, "account": name}),
        ),
    ))
}

async fn create_own_key(
    State(svc): State<Svc>,
    Auth(p): Auth,
    body: Option<Json<KeyBody>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let d = body.map(|Json(b)| b.description).unwrap_or_default();
    let c = svc.create_key(&p, None, &d).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"access_key_id": c.access_key_id, "access_key_secret": c.access_key_secret})),
    ))
}

async fn disable_key(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    svc.set_key_enabled(&p, &id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body: a RAM policy document (`{"Version": "1", "Statement": [...]}`).
async fn put_key_policy(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(doc): Body<Value>,
) -> ApiResult<StatusCode> {
    svc.set_key_policy(&p, &id, Some(doc)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_key_policy(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    svc.set_key_policy(&p, &id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn enable_key(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    svc.set_key_enabled(&p, &id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_key(
    State(svc): State<Svc>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    svc.delete_key(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
