//! The admin endpoint: `GET /` (HTML status page), `GET /metrics`
//! (Prometheus text) and `GET /status.json` (what `coral status` reads).
//! Each request asks the node task for a fresh snapshot over its channel.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::httpd::{self, Request, Response};
use crate::runtime::NodeHandle;
use crate::status;

/// How long a request waits for the node task's snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers one admin request.
pub async fn handle(node: &NodeHandle, req: &Request) -> Response {
    handle_with_proxy(node, None, req).await
}

/// [`handle`], with the HTTP proxy's counters appended to `/metrics`.
pub async fn handle_with_proxy(
    node: &NodeHandle,
    proxy: Option<&crate::proxy::Shared>,
    req: &Request,
) -> Response {
    let route = match req.path.as_str() {
        "/" | "/index.html" => Route::Html,
        "/metrics" => Route::Metrics,
        "/status.json" => Route::Json,
        _ => return Response::error(404),
    };
    let Ok(Ok(s)) = tokio::time::timeout(SNAPSHOT_TIMEOUT, node.status()).await else {
        return Response::error(503);
    };
    match route {
        Route::Html => Response::ok("text/html; charset=utf-8", status::html(&s)),
        Route::Metrics => Response::ok(
            "text/plain; version=0.0.4; charset=utf-8",
            status::prometheus(&s) + &proxy.map(crate::proxy::Shared::metrics).unwrap_or_default(),
        ),
        Route::Json => match serde_json::to_string_pretty(&s) {
            Ok(j) => Response::ok("application/json", j + "\n"),
            Err(_) => Response::error(503),
        },
    }
}

enum Route {
    Html,
    Metrics,
    Json,
}

/// Serves the admin endpoint of `node` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, node: NodeHandle, shutdown: watch::Receiver<bool>) {
    serve_with_proxy(listener, node, shutdown, None).await;
}

/// [`serve`], with the HTTP proxy's counters in `/metrics`.
pub async fn serve_with_proxy(
    listener: TcpListener,
    node: NodeHandle,
    shutdown: watch::Receiver<bool>,
    proxy: Option<Arc<crate::proxy::Shared>>,
) {
    httpd::serve(listener, shutdown, move |req| {
        let node = node.clone();
        let proxy = proxy.clone();
        async move { handle_with_proxy(&node, proxy.as_deref(), &req).await }
    })
    .await;
}
