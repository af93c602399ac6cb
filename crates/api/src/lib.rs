//! Stowage's HTTP API.
//!
//! One module per dialect, each turning its wire format into calls on
//! [`stowage_service::Service`] and service errors into its own error shape:
//!
//! * [`rest`]: Stowage's own JSON API under `/v1` (documented in `docs/api.md`).
//! * [`alibaba`]: the Alibaba Cloud RPC dialect (rds, polardb, dds); so far its
//!   request signatures (`alibaba::signature`), the rest comes with issue 4.
//!
//! The cloud dialects (Alibaba RPC, Tencent TC3) come next to it, on the same
//! listener, routed by their own request markers.

pub mod alibaba;
pub mod download;
pub mod gate;
pub mod rest;
pub mod tencent;

use std::net::SocketAddr;
use std::sync::Arc;
use stowage_service::Service;

/// The whole HTTP application.
pub fn app(svc: Arc<Service>, rpc: alibaba::RpcConfig) -> axum::Router {
    let gate = Arc::new(gate::Gate::new(svc.clone(), rpc.rate_per_key));
    let clouds = Arc::new(Clouds {
        alibaba: alibaba::rpc::RpcState {
            svc: svc.clone(),
            gate: gate.clone(),
        },
        tencent: tencent::layer::TcState::new(gate),
    });
    let cloud_routes = axum::Router::new()
        .route("/", axum::routing::get(cloud_entry).post(cloud_entry))
        .with_state(clouds);
    rest::router(svc)
        .merge(cloud_routes)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(axum::middleware::from_fn(body_limit_in_dialect))
}

/// The cloud dialects on `/`, sharing one gate (key lookup, rate limit,
/// nonce replay).
struct Clouds {
    alibaba: alibaba::rpc::RpcState,
    tencent: tencent::layer::TcState,
}

/// `/`: a Tencent request (TC3 authorization, `X-TC-Action`, or the legacy
/// signature with mongodb's version) or else an Alibaba RPC request.
async fn cloud_entry(
    axum::extract::State(c): axum::extract::State<Arc<Clouds>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if tencent::layer::is_tencent(&uri, &headers, &body) {
        tencent::layer::handle(&c.tencent, method, uri, headers, body).await
    } else {
        alibaba::rpc::handle(&c.alibaba, method, uri, headers, body).await
    }
}

/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// The body-limit layer answers 413 in plain text; every client mistake is
/// answered in its dialect's own error shape instead.
async fn body_limit_in_dialect(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let rest = req.uri().path().starts_with("/v1/");
    let tencent = req.headers().contains_key("x-tc-action")
        || req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .is_some_and(|a| a.starts_with("TC3-"));
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let resp = next.run(req).await;
    if resp.status() != axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return resp;
    }
    let message = format!("the request body is larger than {} bytes", MAX_BODY);
    if rest {
        (
            resp.status(),
            axum::Json(
                serde_json::json!({"error": {"code": "PayloadTooLarge", "message": message}}),
            ),
        )
            .into_response()
    } else if tencent {
        let rid = stowage_service::secrets::random_uuid();
        tencent::layer::error_response(
            &tencent::layer::TcError::new("InvalidParameter", message),
            &rid,
        )
    } else {
        alibaba::rpc::early_error(resp.status(), "RequestEntityTooLarge", &message, &host)
    }
}

/// Serves until `shutdown` resolves; takes an already bound listener so the
/// caller (and tests) choose the port.
pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: Arc<Service>,
    rpc: alibaba::RpcConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(svc, rpc).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
