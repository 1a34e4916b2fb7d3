//! The DNS redirector experiment of issue 6 (`coral-sim dns`): do
//! unmodified resolvers, following Coral's NS referrals, end up at proxies
//! near them (spec §6.2–6.4, "once local, stay local")?
//!
//! # The network
//!
//! The network is built and settled as for the `nodes()` experiment
//! ([`crate::locality`]): `net.nodes` nodes join from a cold start, run
//! `net.minutes` virtual minutes with three levels (∞ / 60 ms / 20 ms),
//! every node offering the HTTP proxy and DNS services; then every node
//! publishes its network hints (its /24 and the routers on the last hops
//! toward it) and one more virtual minute lets them land. Every node then
//! runs a [`DnsServer`] with the default [`DnsConfig`] (500 ms hold budget,
//! 30 s A TTL, 6 h NS TTL), driven here as an adapter would drive it.
//!
//! # Resolvers
//!
//! A resolver sits at a place of the latency model that holds no node, so
//! that "the nearest proxy" is another host at a real distance:
//!
//! - on the synthetic sphere, resolver `r` is latency index `nodes + r`,
//!   drawn from the same regions as the nodes (a place depends on its
//!   index alone, so the nodes' places are those of a run without
//!   resolvers);
//! - on a measured matrix ([`matrix_split`]), whole sites (the hosts a
//!   /24 LAN groups, [`MatrixTopology`]) in a seeded random order go to the
//!   resolvers, one host each, until there are `resolvers`, and the hosts
//!   of the other sites run one node each; the matrix is reordered so that
//!   the node hosts come first, and resolver `r` is again index
//!   `nodes + r`, a host with no node. No site is shared: PlanetLab sites
//!   ran two or three machines 0.1 to 0.3 ms apart, and a resolver on a
//!   node's LAN would make "the nearest proxy" a sub-millisecond
//!   yardstick that only that one machine meets, where the issue asks
//!   about a resolver at an ISP near, not inside, a Coral site.
//!
//! Resolver `r` has address `172.16.0.53 + r·256` (172.16.0.0/12), one /24
//! each and apart from the nodes' 10.0.0.0/8, so the /24 rule never names a
//! node for it: only router hints (the probe's traceroute, the latency
//! model's [`LatencyModel::routers`]) and RTTs can.
//!
//! A resolver behaves as BIND or Unbound does toward an authoritative
//! server it has no special knowledge of. It keeps a cache zone → (its
//! nameservers, expiry), and starts knowing only the zone apex
//! (`nyucd.net`) served by `primaries` nodes picked at random once per run
//! (the nameservers registered in the parent zone: the deployment had 10
//! to 12), never expiring. Query `k` (`1..=queries`) asks for the A record
//! of a new Coralized long-form name (`www.r<r>q<k>.example.http.L2.L1.L0.
//! nyucd.net`, what a resolver asks after following the `nyud.net` DNAME)
//! at `t0 + (k-1)·gap`, `t0` uniform in `spread` per resolver and `gap`
//! (60 s) longer than the A TTL, as a user browsing site after site. It
//! takes the most specific unexpired cached zone that is a suffix of the
//! name (`L2.L1.L0` > `L1.L0` > `L0` > apex) and one of its servers
//! uniformly at random, and sends a hickory-proto query (RD clear, EDNS(0)
//! 1232 bytes, seeded id and source port). The server handles it RTT/2
//! later; its reply, at once or when a held query is released, reaches the
//! resolver RTT/2 after the server emits it. The resolver parses the reply
//! with hickory-proto, takes the A records as the proxies (a browser
//! connects to the first) and caches the authority section's NS records
//! under their owner zone, with the glue addresses mapped back to nodes and
//! the NS TTL: a later query then goes to that zone's servers when it is
//! the most specific one cached. There is no loss and no crash, so a
//! resolver never retries.
//!
//! # The adapter's part
//!
//! A server's probe ([`DnsServer::poll_probe`]) comes back one RTT later
//! with the latency model's RTT between the server's node and the resolver
//! and the routers on the last hops toward the resolver, each with the
//! server's RTT to it, as a traceroute would find and time them
//! ([`LatencyModel::traced_routers`]; the nodes' hints carry their own RTTs
//! to their hops the same way). A hint lookup ([`DnsServer::poll_lookup`]) runs as
//! [`Node::find_hinted`](coral_core::Node::find_hinted) on the server's
//! node in the simulator ([`Command::FindHinted`]), and its `HintsFound`
//! (empty on failure) goes back through
//! [`DnsServer::handle_lookup_result`]; a liveness check
//! ([`DnsServer::poll_check`]) runs as
//! [`Node::check_live`](coral_core::Node::check_live) the same way
//! ([`Command::CheckLive`]) and goes back through
//! [`DnsServer::handle_check_result`]. Held queries are answered at their
//! deadline through [`DnsServer::handle_timeout`]. After every input to a
//! server every `poll_*` is drained. DNS messages, probes and server
//! timeouts wait in this module's own event queue at exact virtual times;
//! the simulator is run up to each of them in steps of at most
//! [`STEP`], so a lookup result is handled within that of when it came.
//!
//! # Measured
//!
//! Per query index: RTT(resolver, first proxy) / RTT(resolver, nearest
//! node) (every node is a proxy), its median, p90, mean and share ≤ 1.5
//! (issue 6's goal: median ≤ 1.5 by the third query); the answer's latency
//! from send to reply, hold included; the zone the server was reached
//! through and the level zone of the NS records handed back. After the
//! last query: the share of resolvers with some Coral DNS node within
//! [`NEAR_DNS`] that are at a level-2 nameserver (their most specific
//! cached zone is `L2.L1.L0.nyucd.net`, or the last query was answered by
//! a server reached through it). And the servers' counters: queries held,
//! held until their deadline, probes, hint lookups (and what they found),
//! answers per level.

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use coral_core::Event;
use coral_core::contact::{Contact, Level, Services};
use coral_core::dns::{DnsConfig, DnsConfigError, DnsServer, DnsStats, Handled, Transport};
use coral_core::dsht::hints::Router;
use coral_core::rng::Rng;
use coral_core::time::Instant;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::Serialize;

use crate::experiments::{ClusterParams, JoinSummary};
use crate::latency::{LatencyModel, LoadError, MatrixTopology, RttMatrix};
use crate::locality::{Ratio, build, frac, ms_us, sorted, workload_rng};
use crate::metrics::{mean, percentile};
use crate::sim::{Command, Outcome, Sim, Timed};
use crate::trace::{TraceHash, mix64};

/// A resolver with a Coral DNS node at most this far (RTT, exclusive, as
/// the level thresholds are) should end at a level-2 nameserver: the
/// diameter of the tightest default level.
pub const NEAR_DNS: Duration = Duration::from_millis(20);

/// The longest the simulator runs ahead of this module's event queue, so
/// that a hint lookup's result is handled at most this late.
pub const STEP: Duration = Duration::from_millis(1);

/// The first resolver address (172.16.0.0/12); resolver `r` is this plus
/// `r · 256 + 53`.
const RESOLVER_NET: u32 = 0xAC10_0000;

/// Resolvers the address range holds (one /24 each).
pub const MAX_RESOLVERS: usize = 1 << 12;

/// How long a probe of an address that is no resolver takes to fail.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the resolvers cannot be placed on a matrix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// Nodes and resolvers need more hosts than the matrix has.
    #[error("{nodes} nodes and {resolvers} resolvers need more hosts than the matrix's {hosts}")]
    TooFewHosts {
        /// Nodes asked for.
        nodes: usize,
        /// Resolvers asked for.
        resolvers: usize,
        /// Hosts in the matrix.
        hosts: usize,
    },
    /// No node or no resolver.
    #[error("at least one node and one resolver are needed")]
    Empty,
    /// The reordered matrix did not load (a bug).
    #[error("the reordered matrix: {0}")]
    Matrix(#[from] LoadError),
}

/// The network of a DNS run on a measured matrix, and the resolver
/// count: whole sites (the LANs [`MatrixTopology`] infers), in a seeded
/// random order, go to the resolvers, one host each, until there are
/// `resolvers`, and the hosts of the other sites run one node each, up to
/// `nodes`; a
/// site is never shared, so a resolver's nearest node is at another site,
/// as for a resolver at an ISP rather than at a Coral site (see the module
/// doc). `resolvers` defaults to a fifth of the hosts, `nodes` to every
/// host of the other sites. Hosts left over are dropped.
pub fn matrix_split(
    m: &RttMatrix,
    name: String,
    nodes: Option<usize>,
    resolvers: Option<usize>,
    seed: u64,
    minutes: u32,
) -> Result<(ClusterParams, usize), PlacementError> {
    let hosts = m.len();
    let want_r = resolvers.unwrap_or_else(|| (hosts / 5).max(1));
    if want_r == 0 || nodes == Some(0) {
        return Err(PlacementError::Empty);
    }
    let topo = MatrixTopology::of(m);
    let mut sites: Vec<Vec<usize>> = vec![Vec::new(); topo.lans()];
    for h in 0..hosts {
        sites[topo.lan(h)].push(h);
    }
    Rng::new(mix64(seed, 0xd25_0001)).shuffle(&mut sites);
    let (mut at_nodes, mut at_resolvers) = (Vec::new(), Vec::new());
    for site in sites {
        if at_resolvers.len() < want_r {
            // One resolver per site: more places for as many resolvers.
            at_resolvers.extend(site.first().copied());
        } else {
            at_nodes.extend(site);
        }
    }
    let want_n = nodes.unwrap_or(at_nodes.len());
    if at_resolvers.len() < want_r || at_nodes.len() < want_n || want_n == 0 {
        return Err(PlacementError::TooFewHosts {
            nodes: want_n,
            resolvers: want_r,
            hosts,
        });
    }
    at_nodes.truncate(want_n);
    // Each side in file order, so sites and points of presence are
    // inferred from the reordered matrix as from the whole one.
    at_nodes.sort_unstable();
    at_resolvers.sort_unstable();
    let chosen: Vec<usize> = at_nodes.into_iter().chain(at_resolvers).collect();
    // Through the public loader: microseconds written as exact decimals.
    let mut text = String::with_capacity(chosen.len() * chosen.len() * 8);
    for &i in &chosen {
        for (c, &j) in chosen.iter().enumerate() {
            let us = m.rtt_us(i, j);
            let sep = if c == 0 { "" } else { " " };
            let _ = write!(text, "{sep}{}.{:03}", us / 1000, us % 1000);
        }
        text.push('\n');
    }
    let sub = RttMatrix::parse(&text)?;
    Ok((
        ClusterParams::matrix(Arc::new(sub), name, want_n, seed, minutes),
        want_r,
    ))
}

/// Parameters of the DNS experiment.
#[derive(Clone, Debug)]
pub struct DnsParams {
    /// The network; `net.minutes` is the settling time before the hints
    /// are published. Latency indices `net.nodes..net.nodes + resolvers`
    /// must be places without a node (any index on the sphere;
    /// [`matrix_split`] arranges it on a matrix).
    pub net: ClusterParams,
    /// Resolvers (at most [`MAX_RESOLVERS`]).
    pub resolvers: usize,
    /// Nameservers of the zone apex every resolver starts with.
    pub primaries: usize,
    /// Queries per resolver.
    pub queries: usize,
    /// Time between a resolver's queries.
    pub gap: Duration,
    /// Resolvers' first queries are spread uniformly over this.
    pub spread: Duration,
    /// Every server's configuration.
    pub dns: DnsConfig,
}

impl DnsParams {
    /// The defaults of `coral-sim dns`: 10 primaries, 3 queries 60 s apart,
    /// first queries spread over 30 s, the default server configuration.
    pub fn new(net: ClusterParams, resolvers: usize) -> Self {
        Self {
            net,
            resolvers,
            primaries: 10,
            queries: 3,
            gap: Duration::from_secs(60),
            spread: Duration::from_secs(30),
            dns: DnsConfig::default(),
        }
    }
}

/// How many queries went through, or NS records named, one zone.
#[derive(Clone, Debug, Serialize)]
pub struct ZoneCount {
    /// The zone (`nyucd.net`, `L0.nyucd.net`, ...; `none` for answers
    /// without NS records).
    pub zone: String,
    /// How many.
    pub count: usize,
}

/// What came of the `k`-th query of every resolver.
#[derive(Clone, Debug, Serialize)]
pub struct QueryReport {
    /// `k`, from 1.
    pub query: usize,
    /// Queries sent.
    pub sent: usize,
    /// Replies received.
    pub answered: usize,
    /// Replies with at least one A record of a node.
    pub with_proxies: usize,
    /// RTT(resolver, first proxy) / RTT(resolver, nearest node).
    pub ratio: Ratio,
    /// Median RTT from the resolver to the first proxy, ms.
    pub proxy_rtt_ms_p50: f64,
    /// Median RTT from the resolver to its nearest node, ms.
    pub nearest_rtt_ms_p50: f64,
    /// Median RTT from the resolver to the server it asked, ms.
    pub server_rtt_ms_p50: f64,
    /// Replies whose first proxy is the answering server's own node, over
    /// replies naming proxies.
    pub proxy_is_server: f64,
    /// Median time from sending the query to its reply, hold included, ms.
    pub latency_ms_p50: f64,
    /// 90th percentile of the same, ms.
    pub latency_ms_p90: f64,
    /// Mean of the same, ms.
    pub latency_ms_mean: f64,
    /// Replies the server held (came later than one RTT to it), over replies.
    pub waited: f64,
    /// Queries by the zone whose server was asked.
    pub via_zone: Vec<ZoneCount>,
    /// Replies by the zone of the NS records handed back.
    pub ns_zone: Vec<ZoneCount>,
    /// Replies whose NS records carried the long TTL (the server knew all
    /// it waits for), over replies with NS records.
    pub ns_long_ttl: f64,
}

/// Whether resolvers near a Coral DNS node end at a level-2 nameserver.
#[derive(Clone, Debug, Serialize)]
pub struct Level2Report {
    /// RTT below which a DNS node counts as near, ms.
    pub near_ms: f64,
    /// Resolvers with a DNS node that near.
    pub near_resolvers: usize,
    /// Of those, the ones at a level-2 nameserver after the last query.
    pub at_level2: usize,
    /// `at_level2 / near_resolvers`.
    pub fraction: f64,
    /// The share of all resolvers at a level-2 nameserver.
    pub fraction_of_all: f64,
    /// Every resolver's most specific unexpired cached zone after its last
    /// reply.
    pub final_zone: Vec<ZoneCount>,
}

/// The servers' counters summed, and how the hint lookups went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServerTotals {
    /// DNS messages received.
    pub queries: u64,
    /// Responses sent.
    pub responses: u64,
    /// Queries held for a probe or a hint lookup.
    pub held: u64,
    /// Held queries answered at their deadline before all was known.
    pub held_expired: u64,
    /// Probes asked for.
    pub probes: u64,
    /// Probe results handed in.
    pub probe_results: u64,
    /// Hint lookups asked for.
    pub hint_lookups: u64,
    /// Hint lookups that finished (in the simulator).
    pub hint_lookups_done: usize,
    /// Of those, the ones that found no node.
    pub hint_lookups_empty: usize,
    /// Mean nodes a finished hint lookup found.
    pub hint_lookup_nodes_mean: f64,
    /// Median time a finished hint lookup took, ms.
    pub hint_lookup_ms_p50: f64,
    /// Liveness checks of hinted proxies asked for, and of those the ones
    /// that failed.
    pub checks: u64,
    /// See `checks`.
    pub checks_failed: u64,
    /// Answers naming proxies, per level they were chosen at.
    pub answered_at_level: Vec<u64>,
    /// Answers that named any known proxy (none heard from recently).
    pub fallback_answers: u64,
    /// Coralized names answered with no proxy (NODATA).
    pub no_proxy: u64,
    /// Queries a server answered with nothing (dropped).
    pub unanswered: u64,
}

/// What the DNS experiment measured.
#[derive(Clone, Debug, Serialize)]
pub struct DnsReport {
    /// Always `"dns"`.
    pub experiment: &'static str,
    /// Simulation seed.
    pub seed: u64,
    /// Nodes in the network (each a proxy and a DNS server).
    pub nodes: usize,
    /// Resolvers.
    pub resolvers: usize,
    /// The latency model.
    pub latency: String,
    /// Virtual minutes from the cold start before the hints were published.
    pub settle_minutes: u32,
    /// How the joins went.
    pub join: JoinSummary,
    /// Nameservers of the zone apex.
    pub primaries: usize,
    /// Seconds between a resolver's queries.
    pub gap_secs: f64,
    /// Per query index.
    pub queries: Vec<QueryReport>,
    /// Level-2 nameservers at the end.
    pub level2: Level2Report,
    /// The servers' side.
    pub servers: ServerTotals,
    /// Replies a resolver could not parse or match to its query.
    pub bad_replies: u64,
    /// Virtual seconds simulated.
    pub virtual_secs: f64,
    /// Fingerprint of the simulator's run (hex).
    pub trace_hash: String,
    /// Fingerprint of the DNS messages (time, server, query, bytes), hex.
    pub dns_trace_hash: String,
}

/// The address of resolver `r`.
fn resolver_ip(r: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(RESOLVER_NET + ((r as u32) << 8) + 53))
}

/// The resolver at `ip`, if it is one.
fn resolver_of(ip: IpAddr) -> Option<usize> {
    let IpAddr::V4(v4) = ip else { return None };
    let a = u32::from(v4);
    (a & 0xfff0_0000 == RESOLVER_NET && a & 0xff == 53).then(|| ((a - RESOLVER_NET) >> 8) as usize)
}

/// A name as the cache keys it: lowercase, no final dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `zone` is `name` or one of its ancestors.
fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

/// One cached delegation.
#[derive(Clone, Debug)]
struct Cached {
    servers: Vec<usize>,
    /// `None`: never expires (the parent zone's delegation).
    expires: Option<Instant>,
}

struct Resolver {
    /// Latency index.
    place: usize,
    ip: IpAddr,
    /// RTT to the nearest live node, µs.
    nearest_us: u64,
    rng: Rng,
    cache: BTreeMap<String, Cached>,
}

impl Resolver {
    /// The most specific unexpired cached zone holding `name`.
    fn best_zone(&self, now: Instant, name: &str) -> Option<(&str, &Cached)> {
        self.cache
            .iter()
            .filter(|(z, c)| {
                !c.servers.is_empty() && c.expires.is_none_or(|e| e > now) && in_zone(name, z)
            })
            .max_by_key(|(z, _)| z.split('.').count())
            .map(|(z, c)| (z.as_str(), c))
    }
}

/// What a reply said.
#[derive(Clone, Debug)]
struct Reply {
    at: Instant,
    proxies: Vec<usize>,
    /// The zone of the NS records, if any, and whether their TTL was the long one.
    ns: Option<(String, bool)>,
}

/// One query sent.
struct Sent {
    resolver: usize,
    k: usize,
    id: u16,
    at: Instant,
    server: usize,
    via: String,
    reply: Option<Reply>,
}

enum Ev {
    Send {
        resolver: usize,
        k: usize,
    },
    AtServer {
        q: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    AtResolver {
        q: usize,
        bytes: Vec<u8>,
    },
    Probe {
        server: usize,
        target: IpAddr,
        rtt: Option<Duration>,
        routers: Vec<Router>,
    },
    Wake {
        server: usize,
    },
}

type Entry = Timed<Ev>;

/// A finished hint lookup: how long it took and how many nodes it found.
struct LookupDone {
    took: Duration,
    found: usize,
}

/// The DNS adapter of every node, the resolvers, and their event queue.
struct Driver {
    sim: Sim,
    /// The simulator's model with the resolvers placed too.
    lat: LatencyModel,
    servers: Vec<DnsServer>,
    /// Each server's deadline with a wake-up queued for it.
    wake: Vec<Option<Instant>>,
    queue: BinaryHeap<Entry>,
    seq: u64,
    resolvers: Vec<Resolver>,
    sent: Vec<Sent>,
    /// Hint lookups running: tag → (server, target, started).
    lookups: BTreeMap<u64, (usize, IpAddr, Instant)>,
    /// Liveness checks running: tag → (server, proxy checked).
    checks: BTreeMap<u64, (usize, Contact)>,
    next_tag: u64,
    lookups_done: Vec<LookupDone>,
    node_at: BTreeMap<IpAddr, usize>,
    /// Cache key of the zone apex and of each level zone.
    apex: String,
    level_zones: Vec<String>,
    /// The same zones as named in reports: `nyucd.net`, `L0.nyucd.net`, ...
    zone_names: Vec<String>,
    suffix: String,
    long_ttl: u32,
    trace: TraceHash,
    out: Vec<u8>,
    unanswered: u64,
    bad_replies: u64,
}

impl Driver {
    fn push(&mut self, at: Instant, ev: Ev) {
        let seq = self.seq;
        self.seq += 1;
        self.queue.push(Entry { at, seq, item: ev });
    }

    fn one_way(&self, server: usize, resolver: usize) -> Duration {
        Duration::from_micros(self.lat.one_way_us(server, self.resolvers[resolver].place))
    }

    /// Runs every event, the simulator keeping pace.
    fn run(&mut self) {
        while let Some(at) = self.queue.peek().map(|e| e.at) {
            if self.sim.now() < at {
                self.sim.run_until(at.min(self.sim.now() + STEP));
                self.completions();
                continue;
            }
            let Some(e) = self.queue.pop() else { break };
            self.handle(e.at, e.item);
        }
    }

    fn handle(&mut self, now: Instant, ev: Ev) {
        match ev {
            Ev::Send { resolver, k } => self.send(now, resolver, k),
            Ev::AtServer { q, from, bytes } => self.at_server(now, q, from, &bytes),
            Ev::AtResolver { q, bytes } => self.at_resolver(now, q, &bytes),
            Ev::Probe {
                server,
                target,
                rtt,
                routers,
            } => {
                if let Some(node) = self.sim.node(server) {
                    self.servers[server].handle_probe_result(now, node, target, rtt, &routers);
                }
                self.drain(now, server);
            }
            Ev::Wake { server } => {
                if self.wake[server] != Some(now) {
                    return;
                }
                self.wake[server] = None;
                if let Some(node) = self.sim.node(server) {
                    self.servers[server].handle_timeout(now, node);
                }
                self.drain(now, server);
            }
        }
    }

    /// Hint lookups that finished in the simulator.
    fn completions(&mut self) {
        for c in self.sim.take_completions() {
            if let Some((server, contact)) = self.checks.remove(&c.tag) {
                let alive = matches!(
                    c.outcome,
                    Outcome::Event(Event::Checked { alive: true, .. })
                );
                if let Some(node) = self.sim.node(server) {
                    self.servers[server].handle_check_result(c.done, node, contact, alive);
                }
                self.drain(c.done, server);
                continue;
            }
            let Some((server, target, started)) = self.lookups.remove(&c.tag) else {
                continue;
            };
            let hints = match c.outcome {
                Outcome::Event(Event::HintsFound { hints, .. }) => hints,
                _ => Vec::new(),
            };
            self.lookups_done.push(LookupDone {
                took: c.done - started,
                found: hints.len(),
            });
            if let Some(node) = self.sim.node(server) {
                self.servers[server].handle_lookup_result(c.done, node, target, hints);
            }
            self.drain(c.done, server);
        }
    }

    /// The drive contract, after any input to server `s`: probes, hint
    /// lookups, answers, then the deadline.
    fn drain(&mut self, now: Instant, s: usize) {
        while let Some(target) = self.servers[s].poll_probe() {
            match resolver_of(target).filter(|&r| r < self.resolvers.len()) {
                Some(r) => {
                    let place = self.resolvers[r].place;
                    let rtt = self.lat.rtt(s, place);
                    let routers = self.lat.traced_routers(place, s);
                    self.push(
                        now + rtt,
                        Ev::Probe {
                            server: s,
                            target,
                            rtt: Some(rtt),
                            routers,
                        },
                    );
                }
                None => self.push(
                    now + PROBE_TIMEOUT,
                    Ev::Probe {
                        server: s,
                        target,
                        rtt: None,
                        routers: Vec::new(),
                    },
                ),
            }
        }
        while let Some(l) = self.servers[s].poll_lookup() {
            self.next_tag += 1;
            let tag = self.next_tag;
            self.lookups.insert(tag, (s, l.target, now));
            let cmd = Command::FindHinted {
                level: l.level,
                count: l.count,
                target: l.target,
                routers: l.routers,
                services: Services::NONE,
            };
            self.sim.schedule(now, s, tag, cmd);
        }
        while let Some(contact) = self.servers[s].poll_check() {
            self.next_tag += 1;
            let tag = self.next_tag;
            self.checks.insert(tag, (s, contact));
            self.sim
                .schedule(now, s, tag, Command::CheckLive { contact });
        }
        while let Some(a) = self.servers[s].poll_answer() {
            let q = usize::try_from(a.token).unwrap_or(usize::MAX);
            let Some(sent) = self.sent.get(q).filter(|x| x.server == s) else {
                continue;
            };
            let at = now + self.one_way(s, sent.resolver);
            self.push(at, Ev::AtResolver { q, bytes: a.bytes });
        }
        match self.servers[s].poll_timeout() {
            None => self.wake[s] = None,
            Some(d) => {
                let at = d.max(now);
                if self.wake[s] != Some(at) {
                    self.wake[s] = Some(at);
                    self.push(at, Ev::Wake { server: s });
                }
            }
        }
    }

    fn send(&mut self, now: Instant, r: usize, k: usize) {
        let name = format!("www.r{r}q{k}.example.{}", self.suffix);
        let res = &mut self.resolvers[r];
        let Some((zone, cached)) = res.best_zone(now, &key(&name)) else {
            return;
        };
        let (zone, servers) = (zone.to_owned(), cached.servers.clone());
        let server = servers[res.rng.below(servers.len() as u64) as usize];
        let id = res.rng.u64() as u16;
        let port = 1024 + res.rng.below(64_512) as u16;
        let from = SocketAddr::V4(SocketAddrV4::new(
            match res.ip {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            },
            port,
        ));
        let Some(bytes) = build_query(id, &format!("{name}.")) else {
            return;
        };
        let q = self.sent.len();
        self.sent.push(Sent {
            resolver: r,
            k,
            id,
            at: now,
            server,
            via: zone,
            reply: None,
        });
        let at = now + self.one_way(server, r);
        self.push(at, Ev::AtServer { q, from, bytes });
    }

    fn at_server(&mut self, now: Instant, q: usize, from: SocketAddr, bytes: &[u8]) {
        let s = self.sent[q].server;
        self.trace.word(now.as_micros());
        self.trace.word(((s as u64) << 32) | q as u64);
        self.trace.bytes(bytes);
        let Some(node) = self.sim.node(s) else {
            self.unanswered += 1;
            return;
        };
        self.out.clear();
        let h = self.servers[s].handle_query(
            now,
            node,
            from,
            Transport::Udp,
            q as u64,
            bytes,
            &mut self.out,
        );
        match h {
            Handled::Reply => {
                let bytes = self.out.clone();
                let at = now + self.one_way(s, self.sent[q].resolver);
                self.push(at, Ev::AtResolver { q, bytes });
            }
            Handled::Held => {}
            Handled::Nothing => self.unanswered += 1,
        }
        self.drain(now, s);
    }

    fn at_resolver(&mut self, now: Instant, q: usize, bytes: &[u8]) {
        self.trace.word(now.as_micros());
        self.trace.word((1 << 63) | q as u64);
        self.trace.bytes(bytes);
        let Ok(m) = Message::from_vec(bytes) else {
            self.bad_replies += 1;
            return;
        };
        let sent = &self.sent[q];
        if m.metadata.id != sent.id
            || m.metadata.message_type != MessageType::Response
            || sent.reply.is_some()
        {
            self.bad_replies += 1;
            return;
        }
        let proxies: Vec<usize> = m
            .answers
            .iter()
            .filter_map(|rr| match &rr.data {
                RData::A(a) => self.node_at.get(&IpAddr::V4(a.0)).copied(),
                _ => None,
            })
            .collect();
        let glue: BTreeMap<String, usize> = m
            .additionals
            .iter()
            .filter_map(|rr| match &rr.data {
                RData::A(a) => Some((
                    key(&rr.name.to_ascii()),
                    *self.node_at.get(&IpAddr::V4(a.0))?,
                )),
                _ => None,
            })
            .collect();
        // Owner zone → (servers, least TTL).
        let mut delegations: BTreeMap<String, (Vec<usize>, u32)> = BTreeMap::new();
        let mut first_zone = None;
        for rr in &m.authorities {
            let RData::NS(ns) = &rr.data else { continue };
            let zone = key(&rr.name.to_ascii());
            first_zone.get_or_insert_with(|| (zone.clone(), rr.ttl >= self.long_ttl));
            if !(zone == self.apex || self.level_zones.contains(&zone)) {
                continue;
            }
            let e = delegations.entry(zone).or_insert((Vec::new(), u32::MAX));
            e.1 = e.1.min(rr.ttl);
            if let Some(&n) = glue.get(&key(&ns.0.to_ascii()))
                && !e.0.contains(&n)
            {
                e.0.push(n);
            }
        }
        let r = sent.resolver;
        let res = &mut self.resolvers[r];
        for (zone, (servers, ttl)) in delegations {
            if servers.is_empty() {
                continue;
            }
            let expires = Some(now + Duration::from_secs(u64::from(ttl)));
            res.cache.insert(zone, Cached { servers, expires });
        }
        self.sent[q].reply = Some(Reply {
            at: now,
            proxies,
            ns: first_zone,
        });
    }

    fn totals(&self) -> ServerTotals {
        let mut t = ServerTotals {
            answered_at_level: vec![0; 3],
            unanswered: self.unanswered,
            ..ServerTotals::default()
        };
        for s in &self.servers {
            let st: DnsStats = s.stats();
            t.queries += st.queries;
            t.responses += st.responses;
            t.held += st.held;
            t.held_expired += st.held_expired;
            t.probes += st.probes;
            t.probe_results += st.probe_results;
            t.hint_lookups += st.hint_lookups;
            t.checks += st.checks;
            t.checks_failed += st.checks_failed;
            t.fallback_answers += st.fallback_answers;
            t.no_proxy += st.no_proxy;
            for (a, b) in t.answered_at_level.iter_mut().zip(st.answered_at_level) {
                *a += b;
            }
        }
        t.hint_lookups_done = self.lookups_done.len();
        t.hint_lookups_empty = self.lookups_done.iter().filter(|l| l.found == 0).count();
        let found: Vec<f64> = self.lookups_done.iter().map(|l| l.found as f64).collect();
        t.hint_lookup_nodes_mean = mean(&found);
        let took = sorted(
            self.lookups_done
                .iter()
                .map(|l| l.took.as_secs_f64() * 1000.0)
                .collect(),
        );
        t.hint_lookup_ms_p50 = percentile(&took, 50.0);
        t
    }
}

/// A hickory-proto A query for `name` with id `id`, as a resolver sends
/// it to an authoritative server: RD clear, EDNS(0) with 1232 bytes.
fn build_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().ok()
}

/// Runs the DNS experiment (see the module doc). Fails only when the
/// server configuration is refused.
pub fn dns(p: &DnsParams) -> Result<DnsReport, DnsConfigError> {
    let levels = p.net.levels.len();
    let template = DnsServer::new(p.dns.clone(), levels)?;
    let (mut sim, join) = build(&p.net);
    let n = sim.len();
    for i in 0..n {
        sim.publish_hints(i);
    }
    let settle = sim.now() + Duration::from_secs(60);
    sim.run_until(settle);
    let _ = sim.take_completions();
    let start = sim.now();
    let resolvers = p.resolvers.min(MAX_RESOLVERS);
    let mut lat = sim.latency().clone();
    lat.ensure(n + resolvers);
    let mut rng = workload_rng(p.net.seed, 3);

    let servers: Vec<DnsServer> = (0..n)
        .map(|_| DnsServer::new(p.dns.clone(), levels))
        .collect::<Result<_, _>>()?;
    let live: Vec<usize> = (0..n).filter(|&i| sim.is_up(i)).collect();
    let mut primaries = live.clone();
    rng.shuffle(&mut primaries);
    primaries.truncate(p.primaries.max(1));
    let apex = key(&template.config().zone);
    let level_zones: Vec<String> = (0..levels)
        .map(|l| key(&template.level_zone(l as Level)))
        .collect();
    let suffix = template.coral_suffix();
    let zone_names: Vec<String> = std::iter::once(template.config().zone.clone())
        .chain((0..levels).map(|l| template.level_zone(l as Level)))
        .collect();
    let node_at: BTreeMap<IpAddr, usize> = (0..n).map(|i| (sim.addr(i).ip(), i)).collect();
    let resolvers: Vec<Resolver> = (0..resolvers)
        .map(|r| {
            let place = n + r;
            let nearest_us = live
                .iter()
                .map(|&j| lat.rtt_us(j, place))
                .min()
                .unwrap_or(u64::MAX);
            let mut cache = BTreeMap::new();
            cache.insert(
                apex.clone(),
                Cached {
                    servers: primaries.clone(),
                    expires: None,
                },
            );
            Resolver {
                place,
                ip: resolver_ip(r),
                nearest_us,
                rng: Rng::new(mix64(p.net.seed, 0xd25_0000_0000 + r as u64)),
                cache,
            }
        })
        .collect();
    let mut d = Driver {
        sim,
        lat,
        wake: vec![None; servers.len()],
        servers,
        queue: BinaryHeap::new(),
        seq: 0,
        resolvers,
        sent: Vec::new(),
        lookups: BTreeMap::new(),
        checks: BTreeMap::new(),
        next_tag: 0,
        lookups_done: Vec::new(),
        node_at,
        apex,
        level_zones,
        zone_names,
        suffix,
        long_ttl: u32::try_from(p.dns.ns_ttl.as_secs()).unwrap_or(u32::MAX),
        trace: TraceHash::new(),
        out: Vec::new(),
        unanswered: 0,
        bad_replies: 0,
    };
    for r in 0..d.resolvers.len() {
        let t0 = start + rng.jitter(p.spread);
        for k in 0..p.queries {
            let at = t0 + p.gap * k as u32;
            d.push(at, Ev::Send { resolver: r, k });
        }
    }
    d.run();
    Ok(report(p, &d, join, n))
}

/// The zones in report order, the apex then each level zone, as (cache
/// key, name in reports).
fn zone_order(d: &Driver) -> Vec<(String, String)> {
    std::iter::once(&d.apex)
        .chain(&d.level_zones)
        .cloned()
        .zip(d.zone_names.iter().cloned())
        .collect()
}

/// How often each zone (a cache key, or `none`) occurs, in report order.
fn count_zones<'a>(
    order: &[(String, String)],
    zones: impl Iterator<Item = &'a str>,
) -> Vec<ZoneCount> {
    let mut counts: Vec<(String, ZoneCount)> = order
        .iter()
        .map(|(k, name)| {
            let c = ZoneCount {
                zone: name.clone(),
                count: 0,
            };
            (k.clone(), c)
        })
        .collect();
    for z in zones {
        match counts.iter_mut().find(|(k, _)| k == z) {
            Some((_, c)) => c.count += 1,
            None => {
                let c = ZoneCount {
                    zone: z.to_owned(),
                    count: 1,
                };
                counts.push((z.to_owned(), c));
            }
        }
    }
    counts.into_iter().map(|(_, c)| c).collect()
}

fn report(p: &DnsParams, d: &Driver, join: JoinSummary, n: usize) -> DnsReport {
    let order = zone_order(d);
    let l2 = d.level_zones.last().cloned().unwrap_or_default();
    let lat = &d.lat;
    let mut queries = Vec::new();
    for k in 0..p.queries {
        let mine: Vec<&Sent> = d.sent.iter().filter(|s| s.k == k).collect();
        let (mut ratio, mut proxy_rtt, mut nearest, mut server_rtt, mut latency) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut answered, mut with_proxies, mut waited, mut with_ns, mut long, mut itself) =
            (0, 0, 0, 0, 0, 0);
        for s in &mine {
            let res = &d.resolvers[s.resolver];
            let Some(reply) = &s.reply else { continue };
            answered += 1;
            let took = reply.at - s.at;
            latency.push(took.as_secs_f64() * 1000.0);
            let to_server = lat.rtt_us(s.server, res.place);
            server_rtt.push(ms_us(to_server));
            // More than the round trip (to the µs, from halving): held.
            if took.as_micros() as u64 > to_server + 2 {
                waited += 1;
            }
            if let Some((_, l)) = &reply.ns {
                with_ns += 1;
                long += usize::from(*l);
            }
            let Some(&first) = reply.proxies.first() else {
                continue;
            };
            with_proxies += 1;
            itself += usize::from(first == s.server);
            let to_proxy = lat.rtt_us(first, res.place);
            ratio.push(to_proxy as f64 / res.nearest_us.max(1) as f64);
            proxy_rtt.push(ms_us(to_proxy));
            nearest.push(ms_us(res.nearest_us));
        }
        let ns_zones = mine
            .iter()
            .filter_map(|s| s.reply.as_ref())
            .map(|r| r.ns.as_ref().map_or("none", |(z, _)| z.as_str()));
        let lat_sorted = sorted(latency);
        queries.push(QueryReport {
            query: k + 1,
            sent: mine.len(),
            answered,
            with_proxies,
            ratio: Ratio::of(ratio),
            proxy_rtt_ms_p50: percentile(&sorted(proxy_rtt), 50.0),
            nearest_rtt_ms_p50: percentile(&sorted(nearest), 50.0),
            server_rtt_ms_p50: percentile(&sorted(server_rtt), 50.0),
            proxy_is_server: frac(itself, with_proxies),
            latency_ms_p50: percentile(&lat_sorted, 50.0),
            latency_ms_p90: percentile(&lat_sorted, 90.0),
            latency_ms_mean: mean(&lat_sorted),
            waited: frac(waited, answered),
            via_zone: count_zones(&order, mine.iter().map(|s| s.via.as_str())),
            ns_zone: count_zones(&order, ns_zones),
            ns_long_ttl: frac(long, with_ns),
        });
    }

    // Level 2 after each resolver's last query.
    let near_us = NEAR_DNS.as_micros() as u64;
    let (mut near, mut near_l2, mut all_l2) = (0, 0, 0);
    let mut finals = Vec::new();
    for (r, res) in d.resolvers.iter().enumerate() {
        let last = d.sent.iter().rfind(|s| s.resolver == r);
        let when = last.map_or(Instant::ZERO, |s| s.reply.as_ref().map_or(s.at, |x| x.at));
        let probe = format!("www.end.{}", d.suffix);
        let best = res
            .best_zone(when, &key(&probe))
            .map(|(z, _)| z.to_owned())
            .unwrap_or_else(|| "none".to_owned());
        let at_l2 = best == l2 || last.is_some_and(|s| s.reply.is_some() && s.via == l2);
        all_l2 += usize::from(at_l2);
        if res.nearest_us < near_us {
            near += 1;
            near_l2 += usize::from(at_l2);
        }
        finals.push(best);
    }
    let level2 = Level2Report {
        near_ms: ms_us(near_us),
        near_resolvers: near,
        at_level2: near_l2,
        fraction: frac(near_l2, near),
        fraction_of_all: frac(all_l2, d.resolvers.len()),
        final_zone: count_zones(&order, finals.iter().map(String::as_str)),
    };
    DnsReport {
        experiment: "dns",
        seed: p.net.seed,
        nodes: n,
        resolvers: d.resolvers.len(),
        latency: p.net.latency_name.clone(),
        settle_minutes: p.net.minutes,
        join,
        primaries: p.primaries.max(1).min(n),
        gap_secs: p.gap.as_secs_f64(),
        queries,
        level2,
        servers: d.totals(),
        bad_replies: d.bad_replies,
        virtual_secs: d.sim.now().since_epoch().as_secs_f64(),
        trace_hash: format!("{:016x}", d.sim.trace_hash()),
        dns_trace_hash: format!("{:016x}", d.trace.finish()),
    }
}

fn fmt_zones(v: &[ZoneCount]) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|z| format!("{} {}", z.zone, z.count))
        .collect();
    parts.join(", ")
}

impl DnsReport {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dns: {} nodes, {} resolvers, seed {}, latency {}, settled {} min; {} primaries, {} queries {} s apart",
            self.nodes,
            self.resolvers,
            self.seed,
            self.latency,
            self.settle_minutes,
            self.primaries,
            self.queries.len(),
            self.gap_secs
        );
        for q in &self.queries {
            let _ = writeln!(
                s,
                "  query {}: {} sent, {} answered, {} naming proxies; RTT(proxy)/RTT(nearest) p50 {:.2}, p90 {:.2}, mean {:.2}, <=1.5 {:.3}",
                q.query,
                q.sent,
                q.answered,
                q.with_proxies,
                q.ratio.p50,
                q.ratio.p90,
                q.ratio.mean,
                q.ratio.within_1_5
            );
            let _ = writeln!(
                s,
                "    RTT ms p50: proxy {:.1}, nearest {:.1}, server asked {:.1} (the proxy is the server {:.3}); answer latency ms p50 {:.1}, p90 {:.1}, mean {:.1}; held {:.3}",
                q.proxy_rtt_ms_p50,
                q.nearest_rtt_ms_p50,
                q.server_rtt_ms_p50,
                q.proxy_is_server,
                q.latency_ms_p50,
                q.latency_ms_p90,
                q.latency_ms_mean,
                q.waited
            );
            let _ = writeln!(
                s,
                "    asked via: {}; NS handed back: {} (long TTL {:.3})",
                fmt_zones(&q.via_zone),
                fmt_zones(&q.ns_zone),
                q.ns_long_ttl
            );
        }
        let l = &self.level2;
        let _ = writeln!(
            s,
            "  level 2: {} of {} resolvers with a DNS node within {} ms end at a level-2 nameserver ({:.3}); {:.3} of all; final zones: {}",
            l.at_level2,
            l.near_resolvers,
            l.near_ms,
            l.fraction,
            l.fraction_of_all,
            fmt_zones(&l.final_zone)
        );
        let t = &self.servers;
        let _ = writeln!(
            s,
            "  servers: {} queries, {} held ({} until the deadline), {} probes, {} hint lookups ({} done, {} empty, {:.1} nodes mean, p50 {:.0} ms), {} liveness checks ({} failed); answers by level {:?}, fallback {}, no proxy {}, dropped {}",
            t.queries,
            t.held,
            t.held_expired,
            t.probes,
            t.hint_lookups,
            t.hint_lookups_done,
            t.hint_lookups_empty,
            t.hint_lookup_nodes_mean,
            t.hint_lookup_ms_p50,
            t.checks,
            t.checks_failed,
            t.answered_at_level,
            t.fallback_answers,
            t.no_proxy,
            t.unanswered
        );
        let _ = write!(
            s,
            "  {} bad replies, {:.1} virtual s, trace {} dns {}",
            self.bad_replies, self.virtual_secs, self.trace_hash, self.dns_trace_hash
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_addresses_round_trip_and_stay_apart_from_nodes() {
        for r in [0, 1, 255, 256, MAX_RESOLVERS - 1] {
            assert_eq!(resolver_of(resolver_ip(r)), Some(r));
        }
        assert_eq!(resolver_ip(1).to_string(), "172.16.1.53");
        assert_eq!(resolver_ip(257).to_string(), "172.17.1.53");
        assert_eq!(resolver_of(IpAddr::from([10, 0, 0, 1])), None);
        assert_eq!(resolver_of(IpAddr::from([172, 16, 0, 54])), None);
        assert_eq!(resolver_of(IpAddr::from([172, 32, 0, 53])), None);
    }

    #[test]
    fn the_most_specific_unexpired_zone_wins() {
        let t = Instant::from_millis(1000);
        let mut res = Resolver {
            place: 0,
            ip: resolver_ip(0),
            nearest_us: 1,
            rng: Rng::new(1),
            cache: BTreeMap::new(),
        };
        let entry = |servers: Vec<usize>, expires| Cached { servers, expires };
        res.cache.insert("nyucd.net".into(), entry(vec![1], None));
        res.cache
            .insert("l0.nyucd.net".into(), entry(vec![2], Some(t)));
        res.cache.insert(
            "l1.l0.nyucd.net".into(),
            entry(vec![3], Some(t + Duration::from_secs(1))),
        );
        res.cache.insert("ucd.net".into(), entry(vec![9], None));
        let name = "www.x.http.l2.l1.l0.nyucd.net";
        let zone = |at| res.best_zone(at, name).map(|(z, _)| z.to_owned());
        assert_eq!(zone(t).as_deref(), Some("l1.l0.nyucd.net"));
        assert_eq!(
            zone(t + Duration::from_secs(1)).as_deref(),
            Some("nyucd.net"),
            "both level zones expired; ucd.net is no ancestor"
        );
        assert!(in_zone("nyucd.net", "nyucd.net"));
        assert!(!in_zone("xnyucd.net", "nyucd.net"));
    }

    #[test]
    fn a_matrix_split_keeps_rtts_and_never_shares_a_site() {
        // Hosts 0 and 1 share a LAN (0.2 ms); the others are sites alone.
        let m = RttMatrix::parse(
            "0 0.2 2 3 4\n0.2 0 5 6 7\n2 5 0 8.25 9\n3 6 8.25 0 10.001\n4 7 9 10.001 0\n",
        )
        .expect("a 5x5 matrix");
        let rtts = |f: &dyn Fn(usize, usize) -> u64, n: usize| {
            let mut v: Vec<u64> = (0..n)
                .flat_map(|i| (0..n).map(move |j| (i, j)))
                .map(|(i, j)| f(i, j))
                .collect();
            v.sort_unstable();
            v
        };
        for seed in 0..20 {
            let (net, r) = matrix_split(&m, "m".into(), None, Some(1), seed, 1).expect("fits");
            let mut lat = net.latency.clone();
            lat.ensure(net.nodes + r);
            assert_eq!(r, 1);
            // The resolver's nearest node is never its LAN-mate.
            let nearest = (0..net.nodes).map(|j| lat.rtt_us(j, net.nodes)).min();
            assert!(
                nearest.is_some_and(|us| us > 500),
                "seed {seed}: {nearest:?}"
            );
            if net.nodes == 4 {
                // Nothing dropped: the same RTTs, reordered.
                let whole = rtts(&|i, j| u64::from(m.rtt_us(i, j)), 5);
                assert_eq!(rtts(&|i, j| lat.rtt_us(i, j), 5), whole);
            } else {
                // The resolver took one host of the LAN; the other is dropped.
                assert_eq!(net.nodes, 3, "seed {seed}");
            }
        }
        assert!(matches!(
            matrix_split(&m, "m".into(), Some(4), Some(2), 7, 1),
            Err(PlacementError::TooFewHosts { .. })
        ));
    }

    #[test]
    fn a_query_is_what_a_resolver_sends() {
        let bytes = build_query(0x1234, "www.x.http.L2.L1.L0.nyucd.net.").expect("a query");
        let m = Message::from_vec(&bytes).expect("parses");
        assert_eq!(m.metadata.id, 0x1234);
        assert!(!m.metadata.recursion_desired);
        assert_eq!(m.queries[0].query_type(), RecordType::A);
        assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(1232));
    }
}
