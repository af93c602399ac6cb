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
pub mod rest;
pub mod tencent;

use std::net::SocketAddr;
use std::sync::Arc;
use stowage_service::Service;

/// The whole HTTP application.
pub fn app(svc: Arc<Service>, rpc: alibaba::RpcConfig) -> axum::Router {
    rest::router(svc.clone())
        .merge(alibaba::router(svc, rpc))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(axum::middleware::from_fn(body_limit_in_dialect))
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
