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

use std::net::SocketAddr;
use std::sync::Arc;
use stowage_service::Service;

/// The whole HTTP application.
pub fn app(svc: Arc<Service>, rpc: alibaba::RpcConfig) -> axum::Router {
    rest::router(svc.clone())
        .merge(alibaba::router(svc, rpc))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1024 * 1024))
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
