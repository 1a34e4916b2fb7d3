//! `coral testnet`: a whole Coral network on loopback in one process.
//!
//! Node `i` listens on `127.0.0.(first_ip + i)`, with its own RPC socket and
//! admin endpoint, as separate hosts would; an origin web server serves
//! sample files one address below the first node. The nodes join through
//! node 0, then the testnet shows the DSHT at work: every object's URL key is
//! put by one node and got by another, and the clusters each node sits in at
//! each level are listed. With a flash crowd it runs a bounded load of DSHT
//! gets (and the puts a proxy would make after a miss) and summarizes it.
//!
//! Every node also runs its HTTP proxy and its DNS server, and the report
//! ends with a `dig` line and a `curl` line that use them together.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coral_core::Levels;
use coral_core::id::Id;
use serde::Serialize;
use tokio::sync::{Mutex, watch};
use tracing::info;

use crate::config::FileConfig;
use crate::dns::DnsService;
use crate::runtime::{self, NodeHandle, RunningNode};
use crate::{admin, coralize, httpd, identity, origin, proxy};
use coral_core::http::HttpConfig;
use coral_core::http::ssrf::IpNet;

/// How long a value put by the testnet lives.
const TTL: Duration = Duration::from_secs(3600);
/// How often a running testnet prints its clusters.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// Longest wait for one DSHT operation before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// What `coral testnet` was asked to do.
#[derive(Clone, Debug)]
pub struct TestnetOptions {
    /// Nodes to start.
    pub nodes: usize,
    /// Last octet of the first node's address (node i is 127.0.0.(first_ip+i)).
    pub first_ip: u8,
    /// RPC port of every node.
    pub rpc_port: u16,
    /// Admin port of every node.
    pub admin_port: u16,
    /// HTTP proxy port of every node.
    pub http_port: u16,
    /// DNS server port of every node (UDP and TCP).
    pub dns_port: u16,
    /// Port of the origin web server (at 127.0.0.(first_ip-1)).
    pub origin_port: u16,
    /// Generated objects the origin serves besides the sample files.
    pub objects: usize,
    /// Run a flash crowd for this long, then exit.
    pub flash_crowd: Option<Duration>,
    /// Concurrent clients of the flash crowd.
    pub clients: usize,
    /// Most requests the flash crowd makes.
    pub max_requests: u64,
    /// Also print the summary as one JSON object on the last line.
    pub json: bool,
    /// Master seed (node i gets seed + i); drawn from the OS when `None`.
    pub seed: Option<u64>,
    /// The node configuration every node shares (addresses are overridden).
    pub config: FileConfig,
    /// Coral domain for the coralized URLs shown.
    pub coral_domain: String,
}

impl Default for TestnetOptions {
    fn default() -> Self {
        Self {
            nodes: 8,
            first_ip: 10,
            rpc_port: 8091,
            admin_port: 8092,
            http_port: 8090,
            dns_port: 5353,
            origin_port: 8080,
            objects: 20,
            flash_crowd: None,
            clients: 16,
            max_requests: 200_000,
            json: false,
            seed: None,
            config: FileConfig::default(),
            coral_domain: coralize::DEFAULT_DOMAIN.to_owned(),
        }
    }
}

/// The flash-crowd summary; also printed as one JSON object with `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// HTTP requests made through the proxies.
    pub requests: u64,
    /// Requests answered 200 with exactly the origin's bytes.
    pub ok: u64,
    /// Requests that timed out, failed, or got other bytes.
    pub failed: u64,
    /// Requests the origin web server answered during the run, from its own books.
    pub origin_fetches: u64,
    /// Distinct objects requested (the paper's twelve 41 KB files).
    pub objects: usize,
    /// Claims granted by arbiters (total misses allowed to the origin).
    pub claims_granted: u64,
    /// Median get latency, milliseconds.
    pub latency_ms_p50: f64,
    /// 90th percentile get latency, milliseconds.
    pub latency_ms_p90: f64,
    /// 99th percentile get latency, milliseconds.
    pub latency_ms_p99: f64,
    /// Slowest get, milliseconds.
    pub latency_ms_max: f64,
    /// Where answers came from, summed over the proxies' own counters.
    pub served_from: BTreeMap<String, u64>,
    /// Nodes in the network.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Wall seconds the load ran.
    pub seconds: f64,
    /// The testnet's master seed.
    pub seed: u64,
    /// Resident memory of the whole process at the end, MiB (Linux only).
    pub rss_mib: Option<f64>,
}

/// One node of the testnet.
struct TestNode {
    node: RunningNode,
    admin: SocketAddr,
    /// Where its DNS server listens, when it serves one.
    dns: Option<SocketAddr>,
}

fn node_ip(first_ip: u8, i: usize) -> Option<Ipv4Addr> {
    let last = usize::from(first_ip).checked_add(i)?;
    let last = u8::try_from(last).ok().filter(|&l| l < 255)?;
    Some(Ipv4Addr::new(127, 0, 0, last))
}

/// Resident set size of this process in MiB, from `/proc/self/status`.
pub fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The value a node puts for an object it holds: its RPC address as text.
/// (The proxy issue will store a proxy contact; this is the testnet's own.)
fn holder_value(node: &NodeHandle) -> Bytes {
    Bytes::from(node.addr().to_string())
}

/// Runs the testnet; returns when the flash crowd ends or on SIGINT/SIGTERM.
pub async fn run(opts: TestnetOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(opts.first_ip >= 2, "--first-ip must be at least 2");
    anyhow::ensure!(
        node_ip(opts.first_ip, opts.nodes - 1).is_some(),
        "{} nodes from 127.0.0.{} do not fit in 127.0.0.0/24",
        opts.nodes,
        opts.first_ip
    );
    let seed = opts.seed.unwrap_or_else(identity::os_seed);
    info!(
        seed,
        nodes = opts.nodes,
        "testnet master seed (node i uses seed + i)"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let origin_addr = SocketAddr::from((
        Ipv4Addr::new(127, 0, 0, opts.first_ip - 1),
        opts.origin_port,
    ));
    // The paper's flash crowd: the origin's uplink is 384 kbit/s.
    let origin = origin::start_throttled(
        origin_addr,
        opts.objects,
        stop_rx.clone(),
        opts.flash_crowd.map(|_| origin::FLASH_BITS_PER_SEC),
    )
    .await?;

    let mut nodes = Vec::with_capacity(opts.nodes);
    let mut proxies = Vec::with_capacity(opts.nodes);
    let mut admin_tasks = Vec::new();
    for i in 0..opts.nodes {
        let ip = node_ip(opts.first_ip, i)
            .ok_or_else(|| anyhow::anyhow!("no loopback address for node {i}"))?;
        let mut cfg = opts.config.clone();
        cfg.node.rpc = SocketAddr::from((ip, opts.rpc_port));
        cfg.node.admin = SocketAddr::from((ip, opts.admin_port));
        cfg.node.http = SocketAddr::from((ip, opts.http_port));
        cfg.node.dns = SocketAddr::from((ip, opts.dns_port));
        let mut options = cfg.node_options(seed.wrapping_add(i as u64));
        let dns = cfg.dns_options()?.map(DnsService::bind).transpose()?;
        options.core.services = cfg.services(dns.is_some());
        let listener = httpd::bind("admin TCP listener", cfg.node.admin).await?;
        let rpc = runtime::bind_udp(
            options.rpc_addr,
            options.recv_buffer_bytes,
            options.send_buffer_bytes,
        )?;
        let node = runtime::spawn_with_dns(options.core, rpc, options.command_queue, dns)?;
        let http = HttpConfig {
            // The testnet's origin lives on loopback; nothing else private is allowed.
            allow_origins: vec![IpNet {
                addr: origin_addr.ip(),
                prefix: 32,
            }],
            suffixes: vec![opts.coral_domain.clone()],
            ..HttpConfig::default()
        };
        proxies.push(
            proxy::start(
                proxy::ProxyOptions::new(cfg.node.http, http),
                node.handle.clone(),
                stop_rx.clone(),
            )
            .await?,
        );
        admin_tasks.push(tokio::spawn(admin::serve_with_proxy(
            listener,
            node.handle.clone(),
            stop_rx.clone(),
            proxies
                .last()
                .map(|p: &proxy::RunningProxy| Arc::clone(&p.shared)),
        )));
        nodes.push(TestNode {
            node,
            admin: cfg.node.admin,
            dns: cfg.dns.enabled.then_some(cfg.node.dns),
        });
    }
    let handles: Vec<NodeHandle> = nodes.iter().map(|n| n.node.handle.clone()).collect();
    // The report is always printed; --json adds one JSON line at the end.
    let human = true;
    let mut out = String::new();

    // Join: node 0 founds the network, the others join through it.
    let started = Instant::now();
    let seed_addr = handles[0].addr();
    let joins = handles.iter().enumerate().map(|(i, h)| {
        let h = h.clone();
        let bootstrap = if i == 0 { vec![] } else { vec![seed_addr] };
        async move { tokio::time::timeout(OP_TIMEOUT * 3, h.join(bootstrap)).await }
    });
    let joined = futures_join_all(joins).await;
    // Node 0 founds the network (no contacts); the others must find some.
    let ok_joins = joined
        .iter()
        .enumerate()
        .filter(|(i, r)| matches!(r, Ok(Ok(j)) if j.contacts > 0 || *i == 0))
        .count();
    if human {
        let _ = writeln!(
            out,
            "Coral testnet: {} nodes on 127.0.0.{}-{}, origin at http://{} (seed {seed})",
            opts.nodes,
            opts.first_ip,
            usize::from(opts.first_ip) + opts.nodes - 1,
            origin.addr
        );
        let _ = writeln!(
            out,
            "joined: {ok_joins}/{} nodes in {:.2} s",
            opts.nodes,
            started.elapsed().as_secs_f64()
        );
        print!("{out}");
        out.clear();
    }

    // The DSHT at work: each sample object put by one node, got by another.
    let urls = origin.urls();
    let demo: Vec<&String> = urls
        .iter()
        .filter(|u| !u.contains("/obj/") && !u.contains("/flash/"))
        .collect();
    if human {
        println!("\nDSHT puts and gets (key = sha1 of the URL, value = the holder's address):");
    }
    for (i, url) in demo.iter().enumerate() {
        let key = Id::for_url(url);
        let holder = &handles[i % handles.len()];
        let getter = &handles[(i + handles.len() / 2 + 1) % handles.len()];
        let put = tokio::time::timeout(
            OP_TIMEOUT,
            holder.put(key, holder_value(holder), TTL, Levels::ALL),
        )
        .await;
        let get = tokio::time::timeout(OP_TIMEOUT, getter.get(key, Levels::ALL)).await;
        if human {
            let put_s = match put {
                Ok(Ok(p)) => format!(
                    "put by {} stored at {} node(s) over levels {:?}",
                    holder.addr().ip(),
                    p.stored.len(),
                    p.stored.iter().map(|(l, _)| *l).collect::<Vec<_>>()
                ),
                Ok(Err(e)) => format!("put failed: {e}"),
                Err(_) => "put timed out".to_owned(),
            };
            let get_s = match get {
                Ok(Ok(g)) if !g.values.is_empty() => format!(
                    "get by {} found {} at level {} in {} hops",
                    getter.addr().ip(),
                    g.values
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect::<Vec<_>>()
                        .join(", "),
                    g.level.map_or_else(|| "?".to_owned(), |l| l.to_string()),
                    g.hops
                ),
                Ok(Ok(g)) => format!(
                    "get by {} found nothing ({} hops)",
                    getter.addr().ip(),
                    g.hops
                ),
                Ok(Err(e)) => format!("get failed: {e}"),
                Err(_) => "get timed out".to_owned(),
            };
            println!("  {url}\n    {put_s}\n    {get_s}");
        }
    }

    if human {
        print!("{}", levels_table(&nodes).await);
        print!(
            "{}",
            try_this(
                &nodes,
                &origin,
                &opts.coral_domain,
                opts.http_port,
                opts.flash_crowd
            )
        );
    }

    let result = match opts.flash_crowd {
        Some(duration) => {
            let summary = flash_crowd(&proxies, &origin, &opts, duration, seed).await;
            if human {
                print!("{}", summary_table(&summary));
            }
            if opts.json {
                println!("{}", serde_json::to_string(&summary)?);
            }
            Ok(())
        }
        None => {
            println!(
                "\nRunning; press Ctrl-C to stop. Clusters per level every {} s:",
                REPORT_EVERY.as_secs()
            );
            let stop = crate::daemon::shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(REPORT_EVERY) => {
                        println!("{}", cluster_line(&handles, started.elapsed()).await);
                    }
                }
            }
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    for p in proxies {
        p.task.abort();
    }
    for n in nodes {
        n.node.shutdown().await;
    }
    for t in admin_tasks {
        let _ = t.await;
    }
    origin.join().await;
    result
}

/// Awaits every future, concurrently, keeping their order.
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(v) = t.await {
            out.push(v);
        }
    }
    out
}

/// One line: per level, how many clusters the nodes form and their sizes,
/// and the process's memory.
async fn cluster_line(handles: &[NodeHandle], elapsed: Duration) -> String {
    let mut per_level: BTreeMap<u8, BTreeMap<String, usize>> = BTreeMap::new();
    let mut contacts = 0usize;
    for h in handles {
        let Ok(Ok(s)) = tokio::time::timeout(OP_TIMEOUT, h.status()).await else {
            continue;
        };
        for l in &s.levels {
            *per_level
                .entry(l.level)
                .or_default()
                .entry(l.cluster.clone())
                .or_default() += 1;
            contacts += l.routing_len;
        }
    }
    let mut line = format!("  t={:>4.0}s", elapsed.as_secs_f64());
    for (level, clusters) in per_level {
        let mut sizes: Vec<usize> = clusters.into_values().collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let shown: Vec<String> = sizes.iter().take(6).map(|n| n.to_string()).collect();
        let more = if sizes.len() > 6 { "+..." } else { "" };
        let _ = write!(
            line,
            "  level {level}: {} cluster(s) [{}{more}]",
            sizes.len(),
            shown.join(",")
        );
    }
    let _ = write!(line, "  routing entries {contacts}");
    if let Some(r) = rss_mib() {
        let _ = write!(line, "  RSS {r:.1} MiB");
    }
    line
}

async fn levels_table(nodes: &[TestNode]) -> String {
    let mut out =
        String::from("\nNodes per level (cluster id prefix and size; routing table contacts):\n");
    let mut per_level: BTreeMap<u8, BTreeMap<String, usize>> = BTreeMap::new();
    let _ = write!(out, "  {:<16} {:<10}", "node", "id");
    let mut header_done = false;
    let mut rows = String::new();
    for n in nodes {
        let Ok(Ok(s)) = tokio::time::timeout(OP_TIMEOUT, n.node.handle.status()).await else {
            continue;
        };
        if !header_done {
            for l in &s.levels {
                let d = l
                    .diameter_ms
                    .map_or_else(|| "global".to_owned(), |d| format!("{d} ms"));
                let _ = write!(out, " level {} ({d}){:width$}", l.level, "", width = 8);
            }
            out.push('\n');
            header_done = true;
        }
        let _ = write!(
            rows,
            "  {:<16} {:<10}",
            s.addr.to_string(),
            s.id.get(..8).unwrap_or(&s.id)
        );
        for l in &s.levels {
            let _ = write!(
                rows,
                " {:<8} n={:<3} rt={:<4}",
                l.cluster.get(..8).unwrap_or(&l.cluster),
                l.cluster_size,
                l.routing_len
            );
            *per_level
                .entry(l.level)
                .or_default()
                .entry(l.cluster.clone())
                .or_default() += 1;
        }
        rows.push('\n');
    }
    out.push_str(&rows);
    for (level, clusters) in per_level {
        let sizes: Vec<String> = clusters.values().map(|n| n.to_string()).collect();
        let _ = writeln!(
            out,
            "  level {level}: {} cluster(s) with {} node(s)",
            clusters.len(),
            sizes.join(" + ")
        );
    }
    out.push_str(
        "  (bounded levels start as clusters of one and merge as nodes measure each other;\n   \
         cluster evaluations run every dsht.cluster_eval_interval_secs)\n",
    );
    out
}

fn try_this(
    nodes: &[TestNode],
    origin: &origin::Origin,
    domain: &str,
    http_port: u16,
    flash: Option<Duration>,
) -> String {
    let mut out = String::from("\nTry:\n");
    let first = &nodes[0];
    let _ = writeln!(
        out,
        "  coral status --admin {}          # one node's state",
        first.admin
    );
    let _ = writeln!(
        out,
        "  curl http://{}/metrics        # Prometheus metrics",
        first.admin
    );
    let _ = writeln!(
        out,
        "  open http://{}/                # status page",
        first.admin
    );
    let _ = writeln!(
        out,
        "  curl {}                  # the origin",
        origin
            .urls()
            .into_iter()
            .find(|u| u.ends_with("/index.html"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  coral node --config my.toml --join {}   # add a node (set node.rpc/admin to a free 127.0.0.x)",
        first.node.handle.addr()
    );
    out.push_str("Coralized URLs of the origin's files (any node's proxy serves them):\n");
    for url in origin.urls().iter().filter(|u| !u.contains("/obj/")) {
        if let Ok(c) = coralize::coralize(url, domain, http_port) {
            let _ = writeln!(out, "  {c}");
        }
    }
    if let Some(dns) = first.dns {
        // The Coralized host of the origin, as a browser would look it up.
        let host = format!("{}.{}.{domain}", origin.addr.ip(), origin.addr.port());
        let dig = format!("dig @{} -p {} +short {host}", dns.ip(), dns.port());
        let _ = writeln!(
            out,
            "Ask Coral's DNS for proxies near you, then fetch through the first it names:"
        );
        let _ = writeln!(out, "  {dig}");
        let _ = writeln!(
            out,
            "  curl --resolve \"{host}:{http_port}:$({dig} | head -n 1)\" http://{host}:{http_port}/index.html"
        );
    }
    if flash.is_none() {
        out.push_str("  coral testnet --flash-crowd 10   # a bounded load with a summary\n");
    }
    out
}

/// A small xorshift generator for picking nodes and objects; the load's
/// choices are not protocol decisions and need no cryptographic quality.
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Load {
    requests: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    latencies: Mutex<Vec<f64>>,
}

/// Longest wait for one client request of the flash crowd: the origin's
/// throttled uplink needs about 11 s for the whole workload.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

async fn flash_crowd(
    proxies: &[proxy::RunningProxy],
    origin: &origin::Origin,
    opts: &TestnetOptions,
    duration: Duration,
    seed: u64,
) -> Summary {
    let host = format!(
        "{}.{}.{}",
        origin.addr.ip(),
        origin.addr.port(),
        opts.coral_domain
    );
    let bodies: Arc<Vec<Bytes>> =
        Arc::new((0..origin::FLASH_OBJECTS).map(origin::flash_body).collect());
    let load = Arc::new(Load {
        requests: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
    });
    let before: Vec<coral_core::http::ProxyStats> =
        proxies.iter().map(|p| p.shared.stats()).collect();
    let origin_before = origin.served();
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(proxies.iter().map(|p| p.addr).collect());
    let start = Instant::now();
    let deadline = start + duration;
    let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("flash crowd [{bar:30}] {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut clients = Vec::new();
    for c in 0..opts.clients.max(1) {
        let addrs = Arc::clone(&addrs);
        let bodies = Arc::clone(&bodies);
        let load = Arc::clone(&load);
        let host = host.clone();
        let max = opts.max_requests;
        let mut pick = Pick(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(c as u64 + 1)) | 1);
        // Clients are spread over all proxies: client c starts at proxy c.
        let mut next_proxy = c;
        // Client c asks for object c first, so a crowd of at least twelve
        // clients misses on every object at the same moment.
        let mut first = Some(c % bodies.len());
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if load.requests.fetch_add(1, Ordering::Relaxed) >= max {
                    load.requests.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                let proxy = addrs[next_proxy % addrs.len()];
                next_proxy = next_proxy.wrapping_add(1 + pick.below(addrs.len()));
                let obj = first.take().unwrap_or_else(|| pick.below(bodies.len()));
                let t0 = Instant::now();
                let r = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    proxy::client_get(proxy, &host, &format!("/flash/{obj}.bin"), ""),
                )
                .await;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                match r {
                    Ok(Ok((200, _, body))) if body == bodies[obj] => {
                        load.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        load.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                load.latencies.lock().await.push(ms);
            }
        }));
    }
    let ticker_load = Arc::clone(&load);
    let ticker_bar = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let e = start.elapsed();
            ticker_bar.set_position(e.as_secs());
            let n = ticker_load.requests.load(Ordering::Relaxed);
            let ok = ticker_load.ok.load(Ordering::Relaxed);
            ticker_bar.set_message(format!(
                "{n} requests, {ok} ok, {:.0}/s",
                n as f64 / e.as_secs_f64().max(1e-3)
            ));
        }
    });
    for c in clients {
        let _ = c.await;
    }
    ticker.abort();
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *load.latencies.lock().await);
    lat.sort_by(f64::total_cmp);
    let mut served_from = BTreeMap::new();
    let mut claims = 0;
    for (p, b) in proxies.iter().zip(&before) {
        let s = p.shared.stats();
        let mut add = |k: &str, v: u64| *served_from.entry(k.to_owned()).or_insert(0) += v;
        add("local cache", s.hits_local - b.hits_local);
        add("peer, level 0", s.hits_peer[0] - b.hits_peer[0]);
        add("peer, level 1", s.hits_peer[1] - b.hits_peer[1]);
        add("peer, level 2", s.hits_peer[2] - b.hits_peer[2]);
        add("peer, claim holder", s.hits_peer[3] - b.hits_peer[3]);
        add("origin", s.hits_origin - b.hits_origin);
        claims += s.claims_granted - b.claims_granted;
    }
    Summary {
        requests: load.requests.load(Ordering::Relaxed),
        ok: load.ok.load(Ordering::Relaxed),
        failed: load.failed.load(Ordering::Relaxed),
        origin_fetches: origin.served() - origin_before,
        objects: origin::FLASH_OBJECTS,
        claims_granted: claims,
        latency_ms_p50: percentile(&lat, 50.0),
        latency_ms_p90: percentile(&lat, 90.0),
        latency_ms_p99: percentile(&lat, 99.0),
        latency_ms_max: lat.last().copied().unwrap_or(0.0),
        served_from,
        nodes: proxies.len(),
        clients: opts.clients.max(1),
        seconds,
        seed,
        rss_mib: rss_mib(),
    }
}

/// The human summary table of a flash crowd.
pub fn summary_table(s: &Summary) -> String {
    let mut o = String::new();
    let pct = |n: u64| {
        if s.requests == 0 {
            0.0
        } else {
            100.0 * n as f64 / s.requests as f64
        }
    };
    let _ = writeln!(
        o,
        "\nFlash crowd: {} clients for {:.1} s against {} nodes, {} objects",
        s.clients, s.seconds, s.nodes, s.objects
    );
    let _ = writeln!(o, "  {:<28} {:>10}", "requests (HTTP GETs)", s.requests);
    let _ = writeln!(
        o,
        "  {:<28} {:>10}  ({:.2}%)",
        "answered correctly",
        s.ok,
        pct(s.ok)
    );
    let _ = writeln!(o, "  {:<28} {:>10}", "failed", s.failed);
    let _ = writeln!(
        o,
        "  {:<28} {:>10}  (counted by the origin; {} objects)",
        "origin fetches", s.origin_fetches, s.objects
    );
    let _ = writeln!(o, "  {:<28} {:>10}", "claims granted", s.claims_granted);
    let _ = writeln!(
        o,
        "  {:<28} {:>10.2} / {:.2} / {:.2} / {:.2}",
        "latency ms p50/p90/p99/max",
        s.latency_ms_p50,
        s.latency_ms_p90,
        s.latency_ms_p99,
        s.latency_ms_max
    );
    o.push_str("  served from:\n");
    for (k, v) in &s.served_from {
        let _ = writeln!(o, "    {k:<26} {v:>10}  ({:.2}%)", pct(*v));
    }
    if let Some(r) = s.rss_mib {
        let _ = writeln!(o, "  {:<28} {:>10.1}", "process RSS (MiB)", r);
    }
    o
}
