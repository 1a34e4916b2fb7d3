//! The locality experiments of issue 3: does the latency hierarchy make a
//! get for a nearby-held object fast, and does `nodes()` hand a client a
//! nearby proxy?
//!
//! - [`latency`] (`coral-sim latency`): the paper's §6 claim that a
//!   hierarchical get finds data held nearby at the tight levels. Every node
//!   puts a few objects (its own contact as the value, as a proxy does after
//!   fetching), then clients get objects held by a node within
//!   [`NEAR_HOLDER`] of them. With three levels the get starts in the
//!   client's 20 ms cluster; with one level it walks the global DSHT.
//!   Reported: get latency percentiles (the paper gives the 50th and 96th),
//!   the level each get was answered at, and how often client and holder
//!   shared a cluster at each level (an upper bound on what that level can
//!   answer, so a miss can be told apart as clustering or lookup).
//! - [`nodes`] (`coral-sim nodes`): spec §5's `nodes(level, count, target,
//!   services)` as the DNS server uses it to pick a proxy for a resolver.
//!   For random targets, the RTT from the target to the first node returned
//!   is compared with the RTT to the truly nearest node.
//!
//! Both build the network from the same description as the cluster
//! experiment ([`ClusterParams`]: nodes, latency model, level hierarchy,
//! and virtual minutes from the cold start before the workload begins), so
//! clusters have formed when the measurement starts. Every node offers the
//! HTTP proxy and DNS services. Workload choices (which objects, which
//! clients, which targets) come from a generator seeded from the run seed
//! alone, not from the simulator's, so a one-level and a three-level run of
//! one seed and matrix issue exactly the same gets.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use coral_core::config::LevelConfig;
use coral_core::contact::{Level, Services};
use coral_core::id::Id;
use coral_core::rng::Rng;
use coral_core::wire;
use coral_core::{Event, Levels};
use serde::Serialize;

use crate::experiments::{ClusterParams, JoinSummary};
use crate::metrics::{mean, percentile};
use crate::sim::{Command, Outcome, Sim, SimConfig};
use crate::trace::mix64;

/// By default a client gets objects held by nodes at most this far (RTT)
/// from it: the diameter of the tightest default level. Not every such
/// pair can share a 20 ms cluster (two neighbours 15 ms away on opposite
/// sides are 30 ms apart), which is why the cluster experiment's coverage
/// counts pairs within half the diameter; `--near-ms 10` asks that here.
pub const NEAR_HOLDER: Duration = Duration::from_millis(20);

/// The single global level of a hierarchy-less run (`--levels 1`).
pub fn one_level() -> Vec<LevelConfig> {
    vec![LevelConfig { diameter: None }]
}

/// The services every node of these experiments offers.
fn services() -> Services {
    Services::HTTP.with(Services::DNS)
}

/// A network joined from a cold start and run until `net.minutes` virtual
/// minutes have passed, with every node offering HTTP and DNS.
pub(crate) fn build(net: &ClusterParams) -> (Sim, JoinSummary) {
    let mut cfg = SimConfig::new(net.seed);
    cfg.latency = net.latency.clone();
    cfg.node.levels = net.levels.clone();
    cfg.node.services = services();
    let mut sim = Sim::new(cfg);
    let t0 = sim.now();
    sim.add_nodes(net.nodes);
    let join = sim.join_all(crate::sim::JoinOptions::default());
    sim.run_until(t0 + Duration::from_secs(60 * u64::from(net.minutes)));
    let _ = sim.take_completions();
    (sim, join.into())
}

/// The workload generator of a run: seeded from the run seed alone.
pub(crate) fn workload_rng(seed: u64, which: u64) -> Rng {
    Rng::new(mix64(seed, 0x10ca_0000 + which))
}

/// Each node's cluster id per level (`None`: node down or level missing).
fn cluster_ids(sim: &Sim, i: usize, levels: usize) -> Vec<Option<Id>> {
    let mut row = vec![None; levels];
    if let Some(node) = sim.node(i) {
        for info in node.clusters() {
            if let Some(slot) = row.get_mut(usize::from(info.level)) {
                *slot = Some(info.cluster);
            }
        }
    }
    row
}

pub(crate) fn ms_us(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub(crate) fn frac(a: usize, b: usize) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Parameters of the latency experiment.
#[derive(Clone, Debug)]
pub struct LatencyParams {
    /// The network; `net.minutes` is the settling time before the puts.
    pub net: ClusterParams,
    /// Objects every node puts.
    pub objects_per_node: usize,
    /// Gets every client with a nearby holder issues.
    pub gets_per_client: usize,
    /// A get's object is held by a node at most this far (RTT) from the client.
    pub near_holder: Duration,
    /// TTL of every put (longer than the run, so nothing expires).
    pub ttl: Duration,
    /// Puts, then gets, are issued uniformly over this span.
    pub spread: Duration,
    /// Each phase waits at most this long after its last command.
    pub phase_timeout: Duration,
}

impl LatencyParams {
    /// The defaults of `coral-sim latency`: 4 objects per node, 2 gets per
    /// client, 1 h TTL, each phase spread over 20 s.
    pub fn new(net: ClusterParams) -> Self {
        Self {
            net,
            objects_per_node: 4,
            gets_per_client: 2,
            near_holder: NEAR_HOLDER,
            ttl: Duration::from_secs(3600),
            spread: Duration::from_secs(20),
            phase_timeout: Duration::from_secs(120),
        }
    }
}

/// What the latency experiment measured.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    /// Always `"latency"`.
    pub experiment: &'static str,
    /// Simulation seed.
    pub seed: u64,
    /// Nodes in the network.
    pub nodes: usize,
    /// The latency model (`"sphere"` or the matrix file).
    pub latency: String,
    /// Levels every node runs (1 or 3).
    pub levels: usize,
    /// RTT diameter per level, ms (null: unbounded).
    pub level_diameters_ms: Vec<Option<f64>>,
    /// Virtual minutes from the cold start before the puts began.
    pub settle_minutes: u32,
    /// How the joins went.
    pub join: JoinSummary,
    /// A get's object is held by a node within this RTT of the client, ms.
    pub near_holder_ms: f64,
    /// Puts issued.
    pub puts: usize,
    /// Puts that reported storing the value somewhere, over puts issued.
    pub put_success_rate: f64,
    /// Nodes with no other node within `near_holder_ms` (they issue no get).
    pub clients_without_near_holder: usize,
    /// Gets issued.
    pub gets: usize,
    /// Gets that reported `GetDone` before the phase deadline.
    pub gets_completed: usize,
    /// Gets that returned the holder's value, over gets issued.
    pub get_success_rate: f64,
    /// Fraction of gets issued that found values at each level (index =
    /// level); the rest found nothing or did not finish.
    pub found_at_level: Vec<f64>,
    /// Fraction of gets issued that found no value.
    pub not_found: f64,
    /// Fraction of gets issued whose client and holder were in one cluster
    /// at each level when the gets began: at most this fraction can be
    /// answered at that level by the holder's own put.
    pub same_cluster_at_level: Vec<f64>,
    /// Median virtual time from issuing a get to its `GetDone`, ms (completed gets).
    pub get_latency_ms_p50: f64,
    /// 96th percentile of the same, ms.
    pub get_latency_ms_p96: f64,
    /// Mean of the same, ms.
    pub get_latency_ms_mean: f64,
    /// Median get latency of the gets answered at each level, ms (null: none).
    pub get_latency_ms_p50_at_level: Vec<Option<f64>>,
    /// Median RTT from client to holder over the gets issued, ms: the
    /// yardstick a perfectly local get would approach.
    pub client_holder_rtt_ms_p50: f64,
    /// Mean hops of completed gets.
    pub hops_mean: f64,
    /// Datagrams delivered during the whole run.
    pub datagrams_delivered: u64,
    /// Virtual seconds simulated.
    pub virtual_secs: f64,
    /// Fingerprint of the run (hex).
    pub trace_hash: String,
}

/// One planned get: `client` fetches object `object` of `holder`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PlannedGet {
    client: usize,
    holder: usize,
    object: usize,
}

/// The key of object `k` of node `i` in run `seed`.
fn object_key(seed: u64, i: usize, k: usize) -> Id {
    let mut data = [0u8; 24];
    data[..8].copy_from_slice(&seed.to_be_bytes());
    data[8..16].copy_from_slice(&(i as u64).to_be_bytes());
    data[16..].copy_from_slice(&(k as u64).to_be_bytes());
    Id::hash("coral-sim-locality-object", &data)
}

/// The gets of a run: for each node in index order, `per_client` gets of a
/// random object of a random node within `near_us` of it (never itself).
/// Returns the plan and the number of nodes with no such neighbour.
fn plan_gets(
    rtt_us: impl Fn(usize, usize) -> u64,
    n: usize,
    near_us: u64,
    per_client: usize,
    objects: usize,
    rng: &mut Rng,
) -> (Vec<PlannedGet>, usize) {
    let mut plan = Vec::new();
    let mut lonely = 0;
    for client in 0..n {
        let near: Vec<usize> = (0..n)
            .filter(|&j| j != client && rtt_us(client, j) <= near_us)
            .collect();
        if near.is_empty() || objects == 0 {
            lonely += 1;
            continue;
        }
        for _ in 0..per_client {
            let holder = near[rng.below(near.len() as u64) as usize];
            let object = rng.below(objects as u64) as usize;
            plan.push(PlannedGet {
                client,
                holder,
                object,
            });
        }
    }
    (plan, lonely)
}

/// Runs the latency experiment: build and settle the network, every node
/// puts `objects_per_node` objects at every level, then every node with a
/// neighbour within `near_holder` (default [`NEAR_HOLDER`]) gets `gets_per_client` of that
/// neighbourhood's objects.
pub fn latency(p: &LatencyParams) -> LatencyReport {
    let (mut sim, join) = build(&p.net);
    let n = sim.len();
    let nl = p.net.levels.len();
    let seed = p.net.seed;
    let mut rng = workload_rng(seed, 1);

    // Puts: each node its own objects, the value being its own contact.
    let values: Vec<Bytes> = (0..n)
        .map(|i| {
            sim.node(i)
                .map(|node| wire::contact_value(&node.contact()))
                .unwrap_or_default()
        })
        .collect();
    let start = sim.now();
    let mut puts = 0;
    for (i, value) in values.iter().enumerate() {
        for k in 0..p.objects_per_node {
            let at = start + rng.jitter(p.spread);
            let cmd = Command::Put {
                key: object_key(seed, i, k),
                value: value.clone(),
                ttl: p.ttl,
                levels: Levels::ALL,
            };
            sim.schedule(at, i, 0, cmd);
            puts += 1;
        }
    }
    sim.run_until_idle(start + p.spread + p.phase_timeout);
    let puts_ok = sim
        .take_completions()
        .iter()
        .filter(|c| matches!(c.event(), Some(Event::PutDone { stored, .. }) if !stored.is_empty()))
        .count();

    // Gets: planned from the latency model alone, so every levels setting
    // of one seed and model issues the same ones.
    let lat = sim.latency().clone();
    let near_us = p.near_holder.as_micros() as u64;
    let (plan, lonely) = plan_gets(
        |a, b| lat.rtt_us(a, b),
        n,
        near_us,
        p.gets_per_client,
        p.objects_per_node,
        &mut rng,
    );
    let clusters: Vec<Vec<Option<Id>>> = (0..n).map(|i| cluster_ids(&sim, i, nl)).collect();
    let mut same_cluster = vec![0usize; nl];
    for g in &plan {
        for (l, slot) in same_cluster.iter_mut().enumerate() {
            let (a, b) = (clusters[g.client][l], clusters[g.holder][l]);
            *slot += usize::from(a.is_some() && a == b);
        }
    }
    let start = sim.now();
    for (tag, g) in plan.iter().enumerate() {
        let at = start + rng.jitter(p.spread);
        let key = object_key(seed, g.holder, g.object);
        let cmd = Command::Get {
            key,
            levels: Levels::ALL,
        };
        sim.schedule(at, g.client, tag as u64, cmd);
    }
    sim.run_until_idle(start + p.spread + p.phase_timeout);

    let mut completed = 0;
    let mut ok = 0;
    let mut at_level = vec![0usize; nl];
    let mut lat_all = Vec::new();
    let mut lat_level: Vec<Vec<f64>> = vec![Vec::new(); nl];
    let mut hops = Vec::new();
    for c in sim.take_completions() {
        let Some(Event::GetDone {
            values: got,
            level,
            hops: h,
            ..
        }) = c.event()
        else {
            continue;
        };
        completed += 1;
        hops.push(f64::from(*h));
        let l_ms = c.latency().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        lat_all.push(l_ms);
        if let Some(l) = level
            .map(usize::from)
            .filter(|&l| l < nl && !got.is_empty())
        {
            at_level[l] += 1;
            lat_level[l].push(l_ms);
        }
        let want = plan.get(c.tag as usize).map(|g| &values[g.holder]);
        ok += usize::from(want.is_some_and(|w| got.contains(w)));
    }
    let gets = plan.len();
    let found: usize = at_level.iter().sum();
    let lat_all = sorted(lat_all);
    let holder_rtt = sorted(
        plan.iter()
            .map(|g| ms_us(lat.rtt_us(g.client, g.holder)))
            .collect(),
    );
    LatencyReport {
        experiment: "latency",
        seed,
        nodes: n,
        latency: p.net.latency_name.clone(),
        levels: nl,
        level_diameters_ms: p
            .net
            .levels
            .iter()
            .map(|l| l.diameter.map(|d| d.as_secs_f64() * 1000.0))
            .collect(),
        settle_minutes: p.net.minutes,
        join,
        near_holder_ms: ms_us(near_us),
        puts,
        put_success_rate: frac(puts_ok, puts),
        clients_without_near_holder: lonely,
        gets,
        gets_completed: completed,
        get_success_rate: frac(ok, gets),
        found_at_level: at_level.iter().map(|&c| frac(c, gets)).collect(),
        not_found: frac(gets - found.min(gets), gets),
        same_cluster_at_level: same_cluster.iter().map(|&c| frac(c, gets)).collect(),
        get_latency_ms_p50: percentile(&lat_all, 50.0),
        get_latency_ms_p96: percentile(&lat_all, 96.0),
        get_latency_ms_mean: mean(&lat_all),
        get_latency_ms_p50_at_level: lat_level
            .into_iter()
            .map(|v| (!v.is_empty()).then(|| percentile(&sorted(v), 50.0)))
            .collect(),
        client_holder_rtt_ms_p50: percentile(&holder_rtt, 50.0),
        hops_mean: mean(&hops),
        datagrams_delivered: sim.counters().delivered,
        virtual_secs: sim.now().since_epoch().as_secs_f64(),
        trace_hash: format!("{:016x}", sim.trace_hash()),
    }
}

fn fmt_levels(v: &[f64]) -> String {
    let parts: Vec<String> = v
        .iter()
        .enumerate()
        .map(|(l, x)| format!("L{l} {x:.3}"))
        .collect();
    parts.join(", ")
}

impl LatencyReport {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "latency: {} nodes, {} level(s) {:?} ms, seed {}, latency {}, settled {} min",
            self.nodes,
            self.levels,
            self.level_diameters_ms,
            self.seed,
            self.latency,
            self.settle_minutes
        );
        let _ = writeln!(
            s,
            "  join: {} joined, {} empty, {} timed out; puts: {} issued, success {:.4}",
            self.join.joined,
            self.join.empty,
            self.join.timed_out,
            self.puts,
            self.put_success_rate
        );
        let _ = writeln!(
            s,
            "  gets: {} issued for objects held within {} ms ({} nodes had no such holder), {} completed, success {:.4}",
            self.gets,
            self.near_holder_ms,
            self.clients_without_near_holder,
            self.gets_completed,
            self.get_success_rate
        );
        let _ = writeln!(
            s,
            "  found at level: {}; not found {:.3}",
            fmt_levels(&self.found_at_level),
            self.not_found
        );
        let _ = writeln!(
            s,
            "  client and holder in one cluster: {}",
            fmt_levels(&self.same_cluster_at_level)
        );
        let _ = writeln!(
            s,
            "  get latency ms: p50 {:.1}, p96 {:.1}, mean {:.1}; p50 by level {:?}; client-holder RTT p50 {:.1}; hops mean {:.2}",
            self.get_latency_ms_p50,
            self.get_latency_ms_p96,
            self.get_latency_ms_mean,
            self.get_latency_ms_p50_at_level,
            self.client_holder_rtt_ms_p50,
            self.hops_mean
        );
        let _ = write!(
            s,
            "  {} datagrams delivered, {:.1} virtual s, trace {}",
            self.datagrams_delivered, self.virtual_secs, self.trace_hash
        );
        s
    }
}

/// Parameters of the `nodes()` experiment.
#[derive(Clone, Debug)]
pub struct NodesParams {
    /// The network; `net.minutes` is the settling time before the queries.
    pub net: ClusterParams,
    /// Targets queried (distinct nodes when there are enough).
    pub targets: usize,
    /// The level passed to `nodes()` (the issue asks for 2).
    pub level: Level,
}

impl NodesParams {
    /// The defaults of `coral-sim nodes`: 200 targets, level 2.
    pub fn new(net: ClusterParams) -> Self {
        Self {
            net,
            targets: 200,
            level: 2,
        }
    }
}

/// Where the asked node (the DNS server) of one query came from.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct AskerSources {
    /// A random other member of the target's level-2 cluster.
    pub level2_cluster: usize,
    /// A random node within the level's RTT threshold of the target (its
    /// level-2 cluster was a singleton).
    pub within_threshold: usize,
    /// A random other member of its level-1 cluster (level 2 was a
    /// singleton and no node is within the threshold).
    pub level1_cluster: usize,
    /// A random other node (both clusters were singletons and no node is
    /// within the threshold).
    pub random: usize,
}

/// Why `find_nodes` ranked its first answer first.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct AnswerSources {
    /// A node the DSHT's network hints named: one that published the
    /// target's /24 or a router on the last hops toward the target.
    pub hinted: usize,
    /// It is the asked node itself, which ranks first within its prefix
    /// class: its RTT to itself is zero.
    pub asker_itself: usize,
    /// Another node in the target's network prefix (the /24 rule).
    pub same_prefix: usize,
    /// Another contact, ranked by the asked node's own RTT measurements or,
    /// unmeasured, by id.
    pub ranked: usize,
}

/// Percentiles of one ratio.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ratio {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Mean.
    pub mean: f64,
    /// Fraction of samples at or below 1.5 (the goal for the median).
    pub within_1_5: f64,
}

impl Ratio {
    pub(crate) fn of(v: Vec<f64>) -> Self {
        let n = v.len();
        let ok = v.iter().filter(|&&r| r <= 1.5).count();
        let v = sorted(v);
        Self {
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            mean: mean(&v),
            within_1_5: frac(ok, n),
        }
    }
}

/// What the `nodes()` experiment measured.
#[derive(Clone, Debug, Serialize)]
pub struct NodesReport {
    /// Always `"nodes"`.
    pub experiment: &'static str,
    /// Simulation seed.
    pub seed: u64,
    /// Nodes in the network.
    pub nodes: usize,
    /// The latency model.
    pub latency: String,
    /// Virtual minutes from the cold start before the queries.
    pub settle_minutes: u32,
    /// How the joins went.
    pub join: JoinSummary,
    /// The level passed to `nodes()`.
    pub level: Level,
    /// Targets queried.
    pub targets: usize,
    /// Queries that returned a node other than the target.
    pub answered: usize,
    /// Where the asked node came from.
    pub askers: AskerSources,
    /// Why the first answer ranked first.
    pub answers: AnswerSources,
    /// RTT(target, first answer) / RTT(target, nearest other node), for
    /// `find_nodes_via(level, 3, T, routers toward T, http)`: the DSHT's
    /// prefix and router hints, then the asker's own ranking.
    pub ratio: Ratio,
    /// The same ratio for the local `nodes(level, 3, T, http)`, which reads
    /// no hints (prefix rule and the asker's RTTs only).
    pub local_ratio: Ratio,
    /// The same ratio for the asked node itself (what answering with one's
    /// own address would give).
    pub asker_ratio: Ratio,
    /// The same ratio for a uniformly random other node (no locality).
    pub random_ratio: Ratio,
    /// The same ratio when the target's own node answers (a Coral node at
    /// the resolver's host, ranking by its own RTTs): what `nodes()`
    /// achieves when the asker's RTTs are the target's.
    pub colocated_ratio: Ratio,
    /// Median RTT from the target to the first answer, ms.
    pub answer_rtt_ms_p50: f64,
    /// Median RTT from the target to its nearest other node, ms.
    pub nearest_rtt_ms_p50: f64,
    /// Fingerprint of the run (hex).
    pub trace_hash: String,
}

/// Runs the `nodes()` experiment.
///
/// A target is a resolver at a node's host: its address is node `T`'s,
/// and its RTT to any node is `T`'s. Coral's DNS referrals send a resolver
/// to nameservers in its nearest cluster, so the node asked is a random
/// other member of `T`'s level-2 cluster. When that cluster is a
/// singleton, the asked node is a random node within the level's RTT
/// threshold of `T`: a DNS server asks `nodes()` at level 2 only for a
/// resolver that near (spec §6.2), and a level-2 referral leads there.
/// With nobody that near, a member of `T`'s level-1 cluster asks (any node
/// if that is a singleton too). After the network settles every node publishes
/// its hints (its /24 and the routers the latency model puts on the last
/// hops toward it, as an adapter's traceroute would find them), and one
/// more virtual minute lets the puts land. The asked node then runs
/// `find_nodes_via(level, 3, T, routers toward T, http)` with the hops its
/// own trace toward `T` shows ([`LatencyModel::traced_routers`]: those on
/// its path; a DNS server probes the resolver's path the same way, spec §5)
/// and the first answer
/// that is not `T` itself counts: `T` would be at RTT 0 (a proxy on the
/// resolver's own host), which makes the comparison with the nearest
/// *other* node meaningless. Diagnostics: the local `nodes()` answer, the
/// asker's own ratio, a random node's, and `T.nodes(...)`'s first non-`T`
/// answer.
pub fn nodes(p: &NodesParams) -> NodesReport {
    let (mut sim, join) = build(&p.net);
    let n = sim.len();
    let nl = p.net.levels.len();
    for i in 0..n {
        sim.publish_hints(i);
    }
    let settle = sim.now() + Duration::from_secs(60);
    sim.run_until(settle);
    let _ = sim.take_completions();
    let now = sim.now();
    let lat = sim.latency().clone();
    let mut rng = workload_rng(p.net.seed, 2);

    let live: Vec<usize> = (0..n).filter(|&i| sim.is_up(i)).collect();
    let mut pool = live.clone();
    rng.shuffle(&mut pool);
    let targets: Vec<usize> = if p.targets <= pool.len() {
        pool.truncate(p.targets);
        pool
    } else {
        (0..p.targets)
            .map(|_| live[rng.below(live.len() as u64) as usize])
            .collect()
    };
    let clusters: Vec<Vec<Option<Id>>> = (0..n).map(|i| cluster_ids(&sim, i, nl)).collect();

    let threshold_us = p
        .net
        .levels
        .get(usize::from(p.level))
        .and_then(|l| l.diameter)
        .map_or(u64::MAX, |d| d.as_micros() as u64);
    let mut askers = AskerSources::default();
    let (mut asker_ratio, mut random_ratio, mut colocated_ratio, mut local_ratio) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut nearest_rtt = Vec::new();
    let first_other = |sim: &Sim, asker: usize, t: usize| -> Option<usize> {
        let target = sim.addr(t);
        let node = sim.node(asker)?;
        node.nodes(now, p.level, 3, Some(target.ip()), Services::HTTP)
            .into_iter()
            .filter(|c| c.addr != target)
            .find_map(|c| sim.index_of(c.addr))
    };
    // (target, asker, nearest RTT µs) per query, indexed by the query's tag.
    let mut queries: Vec<(usize, usize, u64)> = Vec::new();
    for &t in &targets {
        let others: Vec<usize> = live.iter().copied().filter(|&j| j != t).collect();
        let Some(nearest_us) = others.iter().map(|&j| lat.rtt_us(t, j)).min() else {
            continue;
        };
        let nearest_us = nearest_us.max(1);
        let r = |j: usize| lat.rtt_us(t, j) as f64 / nearest_us as f64;
        let members = |l: usize| -> Vec<usize> {
            let Some(c) = clusters[t].get(l).copied().flatten() else {
                return Vec::new();
            };
            others
                .iter()
                .copied()
                .filter(|&j| clusters[j].get(l).copied().flatten() == Some(c))
                .collect()
        };
        let (l2, l1) = (members(2), members(1));
        let from = if !l2.is_empty() {
            askers.level2_cluster += 1;
            l2
        } else if let near = others
            .iter()
            .copied()
            .filter(|&j| lat.rtt_us(t, j) < threshold_us)
            .collect::<Vec<_>>()
            && !near.is_empty()
        {
            askers.within_threshold += 1;
            near
        } else if !l1.is_empty() {
            askers.level1_cluster += 1;
            l1
        } else {
            askers.random += 1;
            others.clone()
        };
        let asker = from[rng.below(from.len() as u64) as usize];
        let random = others[rng.below(others.len() as u64) as usize];
        asker_ratio.push(r(asker));
        random_ratio.push(r(random));
        nearest_rtt.push(ms_us(nearest_us));
        if let Some(j) = first_other(&sim, t, t) {
            colocated_ratio.push(r(j));
        }
        if let Some(j) = first_other(&sim, asker, t) {
            local_ratio.push(r(j));
        }
        let cmd = Command::FindNodes {
            level: p.level,
            count: 3,
            target: sim.addr(t).ip(),
            // The hops the asker's trace toward T shows: those on its way.
            routers: lat
                .traced_routers(t, asker)
                .into_iter()
                .map(|r| r.addr)
                .collect(),
            services: Services::HTTP,
        };
        sim.schedule(now, asker, queries.len() as u64, cmd);
        queries.push((t, asker, nearest_us));
    }
    sim.run_until(now + Duration::from_secs(30));

    let mut answers = AnswerSources::default();
    let (mut ratio, mut answer_rtt) = (Vec::new(), Vec::new());
    let mut answered = 0;
    for c in sim.take_completions() {
        let Outcome::Event(Event::NodesFound { nodes, hinted, .. }) = c.outcome else {
            continue;
        };
        let Some(&(t, asker, nearest_us)) =
            usize::try_from(c.tag).ok().and_then(|q| queries.get(q))
        else {
            continue;
        };
        let target = sim.addr(t);
        let Some((pos, j)) = nodes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.addr != target)
            .find_map(|(k, c)| Some((k, sim.index_of(c.addr)?)))
        else {
            continue;
        };
        answered += 1;
        if pos < hinted {
            answers.hinted += 1;
        } else if j == asker {
            answers.asker_itself += 1;
        } else if same_prefix(sim.addr(j).ip(), target.ip()) {
            answers.same_prefix += 1;
        } else {
            answers.ranked += 1;
        }
        ratio.push(lat.rtt_us(t, j) as f64 / nearest_us as f64);
        answer_rtt.push(ms_us(lat.rtt_us(t, j)));
    }
    NodesReport {
        experiment: "nodes",
        seed: p.net.seed,
        nodes: n,
        latency: p.net.latency_name.clone(),
        settle_minutes: p.net.minutes,
        join,
        level: p.level,
        targets: queries.len(),
        answered,
        askers,
        answers,
        ratio: Ratio::of(ratio),
        local_ratio: Ratio::of(local_ratio),
        asker_ratio: Ratio::of(asker_ratio),
        random_ratio: Ratio::of(random_ratio),
        colocated_ratio: Ratio::of(colocated_ratio),
        answer_rtt_ms_p50: percentile(&sorted(answer_rtt), 50.0),
        nearest_rtt_ms_p50: percentile(&sorted(nearest_rtt), 50.0),
        trace_hash: format!("{:016x}", sim.trace_hash()),
    }
}

/// The core's network-prefix rule (IPv4 /24, IPv6 /48), restated to
/// classify answers.
fn same_prefix(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.octets()[..6] == b.octets()[..6],
        _ => false,
    }
}

fn fmt_ratio(r: &Ratio) -> String {
    format!(
        "p50 {:.2}, p90 {:.2}, mean {:.2}, <=1.5 {:.3}",
        r.p50, r.p90, r.mean, r.within_1_5
    )
}

impl NodesReport {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "nodes: {} nodes, seed {}, latency {}, settled {} min; find_nodes_via({}, 3, target, routers, http) for {} targets, {} answered",
            self.nodes,
            self.seed,
            self.latency,
            self.settle_minutes,
            self.level,
            self.targets,
            self.answered
        );
        let _ = writeln!(
            s,
            "  asked node from: level-2 cluster {}, within the threshold {}, level-1 cluster {}, random {}",
            self.askers.level2_cluster,
            self.askers.within_threshold,
            self.askers.level1_cluster,
            self.askers.random
        );
        let _ = writeln!(
            s,
            "  first answer was: named by hints {}, the asked node itself {}, another node in the target's /24 {}, ranked by the asker's RTTs {}",
            self.answers.hinted,
            self.answers.asker_itself,
            self.answers.same_prefix,
            self.answers.ranked
        );
        let _ = writeln!(s, "  RTT(answer)/RTT(nearest): {}", fmt_ratio(&self.ratio));
        let _ = writeln!(
            s,
            "    local nodes():      {}",
            fmt_ratio(&self.local_ratio)
        );
        let _ = writeln!(
            s,
            "    asked node itself:  {}",
            fmt_ratio(&self.asker_ratio)
        );
        let _ = writeln!(
            s,
            "    random node:        {}",
            fmt_ratio(&self.random_ratio)
        );
        let _ = writeln!(
            s,
            "    target's own node:  {}",
            fmt_ratio(&self.colocated_ratio)
        );
        let _ = write!(
            s,
            "  RTT ms p50: answer {:.1}, nearest {:.1}; trace {}",
            self.answer_rtt_ms_p50, self.nearest_rtt_ms_p50, self.trace_hash
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gets_target_only_near_holders_and_are_reproducible() {
        // Nodes on a line, 10 ms apart: 0-1-2 ... ; node 9 is 100 ms away.
        let pos = [0u64, 10, 20, 30, 40, 50, 60, 70, 80, 180];
        let rtt = |a: usize, b: usize| pos[a].abs_diff(pos[b]) * 1000;
        let plan = |seed| plan_gets(rtt, pos.len(), 20_000, 3, 4, &mut Rng::new(seed));
        let (a, lonely) = plan(7);
        assert_eq!(lonely, 1, "only node 9 has nobody within 20 ms");
        assert_eq!(a.len(), 9 * 3);
        for g in &a {
            assert_ne!(g.client, g.holder);
            assert!(rtt(g.client, g.holder) <= 20_000, "{g:?}");
            assert!(g.object < 4);
        }
        assert_eq!(plan(7).0, a, "same seed, same plan");
        assert_ne!(plan(8).0, a, "the seed matters");
    }

    #[test]
    fn object_keys_are_distinct_per_seed_node_and_index() {
        let mut keys = vec![
            object_key(1, 0, 0),
            object_key(1, 0, 1),
            object_key(1, 1, 0),
            object_key(2, 0, 0),
        ];
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn ratio_summary() {
        let r = Ratio::of(vec![1.0, 1.0, 2.0, 4.0]);
        assert_eq!((r.p50, r.p90, r.mean, r.within_1_5), (1.0, 4.0, 2.0, 0.5));
        assert!(Ratio::of(Vec::new()).p50.is_nan());
    }

    #[test]
    fn prefix_rule_matches_the_core() {
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 200]);
        let c = IpAddr::from([10, 0, 1, 1]);
        assert!(same_prefix(a, b));
        assert!(!same_prefix(a, c));
    }
}
