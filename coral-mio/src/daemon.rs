//! `coral-mio node`: one node, its HTTP proxy, its DNS server and its admin
//! endpoint on one loop on the main thread, until SIGINT or SIGTERM — what
//! `coral node` does, with the same file, flags, defaults and log lines.

use std::net::SocketAddr;

use anyhow::Context as _;
use coral_core::dsht::hints::Router;
use coral_core::node::MAX_ROUTER_HINTS;
use coral_core::time::Instant as CoreInstant;
use coral_core::{Event, Node};
use coral_tokio::config::FileConfig;
use coral_tokio::daemon::resolve_seed;
use coral_tokio::runtime::{BindError, bind_udp};
use coral_tokio::trace::own_hops;
use tracing::{info, warn};

use crate::dns::DnsSockets;
use crate::runtime::{App, Driver, Listeners, LogEvents};

/// The daemon's application: reports the join, then publishes the node's
/// network hints, as `coral node` does.
struct Daemon {
    bootstrap: Vec<SocketAddr>,
    /// The first hops of the node's way out, traced before the loop
    /// started: its router hints.
    routers: Vec<Router>,
}

impl App for Daemon {
    fn on_event(&mut self, node: &mut Node, now: CoreInstant, event: Event) {
        match event {
            Event::Joined { contacts, .. } => {
                if contacts == 0 && !self.bootstrap.is_empty() {
                    warn!(peers = ?self.bootstrap, "no bootstrap peer answered; running alone until one does");
                } else {
                    info!(contacts, "joined the network");
                }
                node.publish_hints(now, &self.routers);
            }
            other => LogEvents.on_event(node, now, other),
        }
    }
}

/// Runs a node as `cfg` says until a shutdown signal; `join` adds bootstrap
/// addresses to the file's. Errors name the key or address at fault.
pub fn run(mut cfg: FileConfig, join: Vec<SocketAddr>) -> anyhow::Result<()> {
    cfg.node.join.extend(join);
    let (seed, seed_from) = resolve_seed(&cfg)?;
    let mut options = cfg.node_options(seed);
    let dns_options = cfg.dns_options()?;
    options.core.services = cfg.services(dns_options.is_some());
    // Bind everything before starting anything, so a busy port fails fast
    // and names the address (node.rpc / node.admin in the config).
    let socket = bind_udp(
        options.rpc_addr,
        options.recv_buffer_bytes,
        options.send_buffer_bytes,
    )
    .context("check `node.rpc` in the config (is another coral node running?)")?;
    let admin = cfg.node.admin;
    let listener = std::net::TcpListener::bind(admin)
        .map_err(|source| BindError {
            what: "admin TCP listener",
            addr: admin,
            source,
        })
        .context("check `node.admin` in the config (is another coral node running?)")?;
    let proxy_options = cfg.proxy_options()?;
    let http = std::net::TcpListener::bind(proxy_options.listen)
        .map_err(|source| BindError {
            what: "HTTP proxy TCP listener",
            addr: proxy_options.listen,
            source,
        })
        .context("check `node.http` in the config (is another coral node running?)")?;
    let dns = dns_options
        .map(DnsSockets::bind)
        .transpose()
        .context("check `node.dns` in the config (is another DNS server running?)")?;
    info!(seed, from = seed_from, "RNG seed");
    let bootstrap = cfg.node.join.clone();
    // Traced once, before the loop runs (at most the trace's 500 ms), so
    // that the loop never blocks on it.
    let routers = own_hops(bootstrap.first().map(SocketAddr::ip), MAX_ROUTER_HINTS);
    let app = Box::new(Daemon {
        bootstrap: bootstrap.clone(),
        routers,
    });
    let listeners = Listeners {
        admin: Some(listener),
        proxy: Some((http, proxy_options)),
    };
    let (mut driver, handle) = Driver::build_with_dns(
        options.core,
        socket,
        listeners,
        dns,
        app,
        options.command_queue,
    )?;
    driver.set_gso(options.gso);
    driver.stop_on_signals()?;
    if let Some(http) = handle.proxy_addr() {
        info!(%http, "HTTP proxy: Coralized URLs such as http://www.example.com.nyud.net/");
    }
    info!(admin = %admin, "admin endpoint: /, /metrics, /status.json");
    if handle.dns_addr().is_none() {
        info!("DNS server off (`dns.enabled = false` in the config)");
    }
    if bootstrap.is_empty() {
        info!("no bootstrap peers: this node starts a new network of one");
    }
    if let Err(e) = driver.with_node(|node, now| node.join(now, &bootstrap)) {
        warn!(error = %e, "join failed");
    }
    driver.run()?;
    // The loop stops when every handle is gone; this one lived until here.
    drop(handle);
    Ok(())
}
