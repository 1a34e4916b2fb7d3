//! `coral node`: one node with its admin endpoint, until SIGINT or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context as _;
use coral_core::node::MAX_ROUTER_HINTS;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::FileConfig;
use crate::trace::own_hops;
use crate::{admin, httpd, identity, proxy, runtime};

/// The node's RNG seed and where it came from, for the log line that
/// records it (so an incident can be replayed in the simulator).
///
/// The order is the same for every runtime: `node.seed` from the config,
/// else the identity kept in `node.data_dir` (created there on first run;
/// a warning says when `node.rpc` changed since, because the node id
/// changes with it), else a fresh seed from the operating system. Errors
/// are the identity file's (unreadable, malformed, not writable).
pub fn resolve_seed(cfg: &FileConfig) -> anyhow::Result<(u64, &'static str)> {
    if let Some(seed) = cfg.node.seed {
        return Ok((seed, "config node.seed"));
    }
    if let Some(dir) = &cfg.node.data_dir {
        let (id, created) = identity::load_or_create(dir, cfg.node.rpc)?;
        if id.rpc != cfg.node.rpc {
            warn!(
                was = %id.rpc, now = %cfg.node.rpc,
                "the RPC address changed since {} was written: the node id changes with it",
                dir.join(identity::FILE_NAME).display()
            );
        }
        let from = if created {
            "new identity in data_dir"
        } else {
            "identity in data_dir"
        };
        return Ok((id.seed, from));
    }
    Ok((identity::os_seed(), "operating system"))
}

/// Runs a node as `cfg` says until a shutdown signal; `join` adds bootstrap
/// addresses to the file's. Errors name the key or address at fault.
pub async fn run(mut cfg: FileConfig, join: Vec<SocketAddr>) -> anyhow::Result<()> {
    cfg.node.join.extend(join);
    let (seed, seed_from) = resolve_seed(&cfg)?;
    let mut options = cfg.node_options(seed);
    let dns_options = cfg.dns_options()?;
    options.core.services = cfg.services(dns_options.is_some());
    // Bind everything before starting anything, so a busy port fails fast
    // and names the address (node.rpc / node.admin in the config).
    let socket = runtime::bind_udp(
        options.rpc_addr,
        options.recv_buffer_bytes,
        options.send_buffer_bytes,
    )
    .context("check `node.rpc` in the config (is another coral node running?)")?;
    let listener = httpd::bind("admin TCP listener", cfg.node.admin)
        .await
        .context("check `node.admin` in the config (is another coral node running?)")?;
    let dns = dns_options
        .map(crate::dns::DnsService::bind)
        .transpose()
        .context("check `node.dns` in the config (is another DNS server running?)")?;
    info!(seed, from = seed_from, "RNG seed");
    let node = runtime::spawn_with_dns(options.core, socket, options.command_queue, dns)?;
    let handle = node.handle.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let proxy = proxy::start(cfg.proxy_options()?, handle.clone(), stop_rx.clone())
        .await
        .context("check `node.http` in the config (is another coral node running?)")?;
    info!(http = %proxy.addr, "HTTP proxy: Coralized URLs such as http://www.example.com.nyud.net/");
    let admin_task = tokio::spawn(admin::serve_with_proxy(
        listener,
        handle.clone(),
        stop_rx,
        Some(std::sync::Arc::clone(&proxy.shared)),
    ));
    info!(admin = %cfg.node.admin, "admin endpoint: /, /metrics, /status.json");
    if cfg.node.join.is_empty() {
        info!("no bootstrap peers: this node starts a new network of one");
    }
    let bootstrap = cfg.node.join.clone();
    let joiner = handle.clone();
    let join_task = tokio::spawn(async move {
        match joiner.join(bootstrap.clone()).await {
            Ok(j) if j.contacts == 0 && !bootstrap.is_empty() => {
                warn!(peers = ?bootstrap, "no bootstrap peer answered; running alone until one does");
            }
            Ok(j) => info!(contacts = j.contacts, "joined the network"),
            Err(e) => warn!(error = %e, "join failed"),
        }
        // The first hops toward a bootstrap peer, for the router hints.
        let peer = bootstrap.first().map(SocketAddr::ip);
        let routers = tokio::task::spawn_blocking(move || own_hops(peer, MAX_ROUTER_HINTS))
            .await
            .unwrap_or_default();
        if let Err(e) = joiner.publish_hints(routers).await {
            warn!(error = %e, "cannot publish network hints");
        }
    });
    shutdown_signal().await;
    info!("shutting down");
    join_task.abort();
    let _ = stop_tx.send(true);
    proxy.task.abort();
    node.shutdown().await;
    let _ = admin_task.await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
