//! The admin endpoint: `GET /` (HTML status page), `GET /metrics`
//! (Prometheus text) and `GET /status.json` (what `coral status` reads).
//! Each request asks the node task for a fresh snapshot over its channel.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::httpd::{self, Request, Response};
use crate::runtime::NodeHandle;
use crate::status::{self, NodeStatus};

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
    let Some(route) = route(&req.path) else {
        return Response::error(404);
    };
    let Ok(Ok(s)) = tokio::time::timeout(SNAPSHOT_TIMEOUT, node.status()).await else {
        return Response::error(503);
    };
    render_with_proxy(route, &s, proxy)
}

/// What an admin path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/` or `/index.html`: the HTML status page.
    Html,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/status.json`: what `coral status` reads.
    Json,
}

/// The route for `path` (without its query string), or `None` for a 404.
///
/// Runtimes call this before taking a snapshot, so an unknown path costs
/// the node nothing.
pub fn route(path: &str) -> Option<Route> {
    match path {
        "/" | "/index.html" => Some(Route::Html),
        "/metrics" => Some(Route::Metrics),
        "/status.json" => Some(Route::Json),
        _ => None,
    }
}

/// The response to `route` given a fresh snapshot `s`: what every runtime's
/// admin endpoint sends, byte for byte.
pub fn render(route: Route, s: &NodeStatus) -> Response {
    render_with_proxy(route, s, None)
}

/// [`render`], with the HTTP proxy's counters appended to `/metrics`.
fn render_with_proxy(
    route: Route,
    s: &NodeStatus,
    proxy: Option<&crate::proxy::Shared>,
) -> Response {
    match route {
        Route::Html => Response::ok("text/html; charset=utf-8", status::html(s)),
        Route::Metrics => Response::ok(
            "text/plain; version=0.0.4; charset=utf-8",
            status::prometheus(s) + &proxy.map(crate::proxy::Shared::metrics).unwrap_or_default(),
        ),
        Route::Json => match serde_json::to_string_pretty(s) {
            Ok(j) => Response::ok("application/json", j + "\n"),
            Err(_) => Response::error(503),
        },
    }
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

#[cfg(test)]
mod tests {
    use coral_core::Node;
    use coral_core::config::Config;
    use coral_core::time::Instant as CoreInstant;

    use super::*;
    use crate::status::AdapterCounters;

    #[test]
    fn paths_route_and_render_as_the_endpoint_serves_them() {
        assert_eq!(route("/"), Some(Route::Html));
        assert_eq!(route("/index.html"), Some(Route::Html));
        assert_eq!(route("/metrics"), Some(Route::Metrics));
        assert_eq!(route("/status.json"), Some(Route::Json));
        assert_eq!(route("/nope"), None);

        let addr = "127.0.0.1:8091".parse().unwrap();
        let node = Node::new(Config::default(), addr, CoreInstant::ZERO);
        let s = status::snapshot(&node, CoreInstant::ZERO, 7, AdapterCounters::default(), 0);
        let json = render(Route::Json, &s);
        assert_eq!((json.status, json.content_type), (200, "application/json"));
        let back: NodeStatus = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(back, s);
        let metrics = render(Route::Metrics, &s);
        assert_eq!(metrics.body, status::prometheus(&s));
        let html = render(Route::Html, &s);
        assert!(html.content_type.starts_with("text/html"));
        assert_eq!(html.cache_control, "no-store");
    }
}
