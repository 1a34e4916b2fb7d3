//! The experiments behind `coral-sim`: lookup quality, the put hot spot and
//! the latency clusters.
//!
//! Both build a network in the simulator, drive it with application
//! commands only (the simulator never makes a protocol decision), and
//! summarise the [`Event`]s and node counters into a serialisable report.
//! Every random choice (which node puts, which key a node gets, when)
//! comes from the simulator's seeded generator, so a report is a function
//! of its parameters and seed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coral_core::config::LevelConfig;
use coral_core::id::Id;
use coral_core::{Event, Levels};
use serde::Serialize;

use crate::latency::{LatencyModel, LoadError, RttMatrix};
use crate::metrics::{Summary, mean};
use crate::sim::{Command, JoinOptions, JoinReport, Sim, SimConfig};
use crate::trace::mix64;

/// Which latency model a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyKind {
    /// The synthetic seeded sphere ([`LatencyModel::sphere`]).
    Sphere,
    /// The PlanetLab RTT matrix shipped in `tests/data/`.
    Planetlab,
}

impl LatencyKind {
    /// The model for a run with `seed`.
    pub fn model(self, seed: u64) -> Result<LatencyModel, LoadError> {
        let seed = mix64(seed, 0x1a7e);
        Ok(match self {
            Self::Sphere => LatencyModel::sphere(seed),
            Self::Planetlab => LatencyModel::matrix(Arc::new(RttMatrix::planetlab()?), seed),
        })
    }
}

/// How a run's network is built: shared by both experiments.
#[derive(Clone, Debug)]
pub struct NetParams {
    /// Number of nodes.
    pub nodes: usize,
    /// Simulation seed.
    pub seed: u64,
    /// Latency model.
    pub latency: LatencyKind,
    /// Datagram loss probability.
    pub loss: f64,
}

/// Virtual time a network runs after the last join before an experiment
/// starts. Nodes walk toward their own id again 20–40 s after joining (so
/// neighbours that joined in the same batch learn of each other); the
/// experiments measure a settled network, as a deployed one is, not the
/// first seconds of a thousand simultaneous joins.
pub const SETTLE: Duration = Duration::from_secs(60);

/// A joined and settled network, ready for an experiment.
fn build(net: &NetParams) -> Result<(Sim, JoinReport), LoadError> {
    let mut cfg = SimConfig::new(net.seed);
    cfg.latency = net.latency.model(net.seed)?;
    cfg.loss = net.loss;
    let mut sim = Sim::new(cfg);
    sim.add_nodes(net.nodes);
    let join = sim.join_all(JoinOptions::default());
    sim.run_for(SETTLE);
    let _ = sim.take_completions();
    Ok((sim, join))
}

/// How the network came together.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct JoinSummary {
    /// Joins that reported `Joined`.
    pub joined: usize,
    /// Joins that reported zero contacts.
    pub empty: usize,
    /// Joins still running at their batch deadline.
    pub timed_out: usize,
    /// Virtual seconds the joins took.
    pub virtual_secs: f64,
}

impl From<JoinReport> for JoinSummary {
    fn from(r: JoinReport) -> Self {
        Self {
            joined: r.joined,
            empty: r.empty,
            timed_out: r.timed_out,
            virtual_secs: r.elapsed.as_secs_f64(),
        }
    }
}

fn log2(n: usize) -> f64 {
    (n.max(1) as f64).log2()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Parameters of the lookup experiment.
#[derive(Clone, Debug)]
pub struct LookupParams {
    /// The network.
    pub net: NetParams,
    /// Distinct keys put before the gets.
    pub keys: usize,
    /// Gets issued by every node (each of a random key among those put).
    pub gets_per_node: usize,
    /// TTL of every put.
    pub ttl: Duration,
    /// Puts (and then gets) are issued uniformly over this span.
    pub spread: Duration,
    /// Each phase waits at most this long after its last command.
    pub phase_timeout: Duration,
}

impl LookupParams {
    /// The defaults of `coral-sim lookup`: one get per node, 1 h TTL.
    pub fn new(net: NetParams, keys: usize) -> Self {
        Self {
            net,
            keys,
            gets_per_node: 1,
            ttl: Duration::from_secs(3600),
            spread: Duration::from_secs(10),
            phase_timeout: Duration::from_secs(120),
        }
    }
}

/// What the lookup experiment measured.
#[derive(Clone, Debug, Serialize)]
pub struct LookupReport {
    /// Always `"lookup"`.
    pub experiment: &'static str,
    /// Simulation seed.
    pub seed: u64,
    /// Nodes in the network.
    pub nodes: usize,
    /// log2(nodes), the yardstick for hops.
    pub log2_nodes: f64,
    /// Latency model used.
    pub latency: LatencyKind,
    /// Datagram loss probability.
    pub loss: f64,
    /// How the joins went.
    pub join: JoinSummary,
    /// Keys put.
    pub keys: usize,
    /// Puts that reported at least one storing node, over puts issued.
    pub put_success_rate: f64,
    /// Mean hops of the puts.
    pub put_hops_mean: f64,
    /// Gets issued.
    pub gets: usize,
    /// Gets that reported `GetDone` before the phase deadline.
    pub gets_completed: usize,
    /// Gets that returned a value put under their key, over gets issued.
    pub get_success_rate: f64,
    /// Mean hops of completed gets.
    pub hops_mean: f64,
    /// Median hops.
    pub hops_p50: f64,
    /// 99th percentile of hops.
    pub hops_p99: f64,
    /// Most hops of any get.
    pub hops_max: f64,
    /// Mean virtual time from issuing a get to its `GetDone`, ms.
    pub latency_ms_mean: f64,
    /// Median of the same, ms.
    pub latency_ms_p50: f64,
    /// 90th percentile, ms.
    pub latency_ms_p90: f64,
    /// 99th percentile, ms.
    pub latency_ms_p99: f64,
    /// Datagrams delivered during the whole run (joins included).
    pub datagrams_delivered: u64,
    /// Datagrams lost to the loss model.
    pub datagrams_lost: u64,
    /// Virtual seconds simulated.
    pub virtual_secs: f64,
    /// Fingerprint of the run (hex).
    pub trace_hash: String,
}

/// Runs the lookup experiment: join, put `keys` keys from random nodes,
/// then have every node get random keys among them.
pub fn lookup(p: &LookupParams) -> Result<LookupReport, LoadError> {
    let (mut sim, join) = build(&p.net)?;
    let n = sim.len();
    let levels = Levels::ALL;

    // Puts: key k from a random live node, the value being its address.
    let live: Vec<usize> = (0..n).filter(|&i| sim.is_up(i)).collect();
    let mut keys = Vec::with_capacity(p.keys);
    let mut values = Vec::with_capacity(p.keys);
    let start = sim.now();
    for k in 0..p.keys {
        let key = Id::random(sim.rng());
        let who = live[sim.rng().below(live.len() as u64) as usize];
        let value = Bytes::from(sim.addr(who).to_string().into_bytes());
        let at = start + sim.rng().jitter(p.spread);
        keys.push(key);
        values.push(value.clone());
        sim.schedule(
            at,
            who,
            k as u64,
            Command::Put {
                key,
                value,
                ttl: p.ttl,
                levels,
            },
        );
    }
    sim.run_until_idle(start + p.spread + p.phase_timeout);
    let mut puts_ok = 0usize;
    let mut put_hops = Vec::new();
    for c in sim.take_completions() {
        if let Some(Event::PutDone { stored, hops, .. }) = c.event() {
            put_hops.push(f64::from(*hops));
            if !stored.is_empty() {
                puts_ok += 1;
            }
        }
    }

    // Gets: every node, `gets_per_node` times, a random key.
    let start = sim.now();
    let mut gets = 0usize;
    for &i in &live {
        for _ in 0..p.gets_per_node {
            let k = sim.rng().below(keys.len() as u64) as usize;
            let at = start + sim.rng().jitter(p.spread);
            sim.schedule(
                at,
                i,
                k as u64,
                Command::Get {
                    key: keys[k],
                    levels,
                },
            );
            gets += 1;
        }
    }
    sim.run_until_idle(start + p.spread + p.phase_timeout);
    let mut ok = 0usize;
    let mut hops = Vec::new();
    let mut lat = Vec::new();
    for c in sim.take_completions() {
        let Some(Event::GetDone {
            values: got,
            hops: h,
            ..
        }) = c.event()
        else {
            continue;
        };
        hops.push(f64::from(*h));
        if let Some(l) = c.latency() {
            lat.push(ms(l));
        }
        let want = values.get(c.tag as usize);
        if want.is_some_and(|w| got.contains(w)) {
            ok += 1;
        }
    }
    let h = Summary::of(&hops);
    let l = Summary::of(&lat);
    let counters = sim.counters();
    Ok(LookupReport {
        experiment: "lookup",
        seed: p.net.seed,
        nodes: n,
        log2_nodes: log2(n),
        latency: p.net.latency,
        loss: p.net.loss,
        join: join.into(),
        keys: p.keys,
        put_success_rate: ratio(puts_ok, p.keys),
        put_hops_mean: mean(&put_hops),
        gets,
        gets_completed: hops.len(),
        get_success_rate: ratio(ok, gets),
        hops_mean: h.mean,
        hops_p50: h.p50,
        hops_p99: h.p99,
        hops_max: h.max,
        latency_ms_mean: l.mean,
        latency_ms_p50: l.p50,
        latency_ms_p90: l.p90,
        latency_ms_p99: l.p99,
        datagrams_delivered: counters.delivered,
        datagrams_lost: counters.lost,
        virtual_secs: sim.now().since_epoch().as_secs_f64(),
        trace_hash: format!("{:016x}", sim.trace_hash()),
    })
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

impl LookupReport {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lookup: {} nodes (log2 {:.2}), {} keys, seed {}, latency {:?}, loss {}",
            self.nodes, self.log2_nodes, self.keys, self.seed, self.latency, self.loss
        );
        let _ = writeln!(
            s,
            "  join:  {} joined, {} empty, {} timed out, {:.1} virtual s",
            self.join.joined, self.join.empty, self.join.timed_out, self.join.virtual_secs
        );
        let _ = writeln!(
            s,
            "  puts:  success {:.4}, hops mean {:.2}",
            self.put_success_rate, self.put_hops_mean
        );
        let _ = writeln!(
            s,
            "  gets:  {} issued, {} completed, success {:.4}",
            self.gets, self.gets_completed, self.get_success_rate
        );
        let _ = writeln!(
            s,
            "  hops:  mean {:.2}, p50 {}, p99 {}, max {}",
            self.hops_mean, self.hops_p50, self.hops_p99, self.hops_max
        );
        let _ = writeln!(
            s,
            "  latency ms: mean {:.1}, p50 {:.1}, p90 {:.1}, p99 {:.1}",
            self.latency_ms_mean, self.latency_ms_p50, self.latency_ms_p90, self.latency_ms_p99
        );
        let _ = write!(
            s,
            "  {} datagrams delivered, {} lost, {:.1} virtual s, trace {}",
            self.datagrams_delivered, self.datagrams_lost, self.virtual_secs, self.trace_hash
        );
        s
    }
}

/// Parameters of the hot-spot experiment (spec §3.4).
#[derive(Clone, Debug)]
pub struct HotspotParams {
    /// The network.
    pub net: NetParams,
    /// Virtual minutes of load.
    pub minutes: u32,
    /// Puts per node per second, and as many gets.
    pub rate: f64,
    /// TTL of every put. One hour: longer than any run, so no value expires
    /// during the experiment and a node that has `l` values for the key
    /// stays full rather than making room.
    pub ttl: Duration,
    /// How many of the closest nodes to report on.
    pub ranks: usize,
}

impl HotspotParams {
    /// The defaults of `coral-sim hotspot`: 1 put and 1 get per node per
    /// second, 1 h TTL, the 10 closest nodes reported.
    pub fn new(net: NetParams, minutes: u32) -> Self {
        Self {
            net,
            minutes,
            rate: 1.0,
            ttl: Duration::from_secs(3600),
            ranks: 10,
        }
    }
}

/// The load on one of the nodes closest to the hot key.
#[derive(Clone, Debug, Serialize)]
pub struct RankLoad {
    /// 0 for the closest node by XOR distance, 1 for the next, …
    pub rank: usize,
    /// Node index in the simulation.
    pub node: usize,
    /// The node's id (hex).
    pub id: String,
    /// log2 of the XOR distance from the key.
    pub distance_log2: f64,
    /// Store + put-probe RPCs received per minute, averaged after minute 1.
    pub rpcs_per_min: f64,
    /// Of those, store RPCs.
    pub stores_per_min: f64,
    /// Get-probe RPCs received per minute, averaged after minute 1.
    pub get_probes_per_min: f64,
    /// Whether some put reported storing a value at this node.
    pub stores_value: bool,
}

/// What the hot-spot experiment measured.
#[derive(Clone, Debug, Serialize)]
pub struct HotspotReport {
    /// Always `"hotspot"`.
    pub experiment: &'static str,
    /// Simulation seed.
    pub seed: u64,
    /// Nodes in the network.
    pub nodes: usize,
    /// log2(nodes).
    pub log2_nodes: f64,
    /// The load threshold `beta` (puts per key per minute).
    pub beta: u32,
    /// The paper's bound on the closest node's load: beta × ceil(log2 nodes).
    pub bound: u64,
    /// Virtual minutes of load.
    pub minutes: u32,
    /// Puts per node per second (and as many gets).
    pub rate: f64,
    /// TTL of every put, seconds.
    pub ttl_secs: u64,
    /// Latency model used.
    pub latency: LatencyKind,
    /// How the joins went.
    pub join: JoinSummary,
    /// Puts issued per minute, over all nodes.
    pub aggregate_puts_per_min: f64,
    /// Gets issued per minute, over all nodes.
    pub aggregate_gets_per_min: f64,
    /// Store + put-probe RPCs received per minute over all nodes, averaged
    /// after minute 1: how much put traffic reached the network at all.
    pub aggregate_put_rpcs_per_min: f64,
    /// Index of the node closest to the key.
    pub closest_node: usize,
    /// Store + put-probe RPCs the closest node received per minute, averaged
    /// over the minutes after the first.
    pub closest_node_rpcs_per_min: f64,
    /// The same quantity for the busiest node.
    pub max_node_rpcs_per_min: f64,
    /// Index of the busiest node.
    pub max_node: usize,
    /// The busiest node's distance rank from the key (0 = closest).
    pub max_node_rank: usize,
    /// Distinct nodes reported as storing a value for the key by any put.
    pub nodes_storing_value: usize,
    /// Nodes whose store holds a value for the key at the end of the run
    /// (read from the nodes, a cross-check of the previous field).
    pub nodes_holding_value_at_end: usize,
    /// The most store RPCs (alone) any node received per minute, averaged
    /// after minute 1.
    pub max_node_stores_per_min: f64,
    /// Load of the closest nodes, by distance rank.
    pub closest_ranks: Vec<RankLoad>,
    /// The closest node's store + put-probe RPCs in each minute.
    pub closest_node_per_minute: Vec<u64>,
    /// Puts that reported at least one storing node, over puts finished.
    pub put_success_rate: f64,
    /// Gets that returned at least one value, over gets finished.
    pub get_success_rate: f64,
    /// Mean hops of finished gets.
    pub get_hops_mean: f64,
    /// Puts finished.
    pub puts_done: usize,
    /// Gets finished.
    pub gets_done: usize,
    /// Operations refused or lost (node down, put refused).
    pub ops_failed: usize,
    /// Datagrams delivered during the whole run.
    pub datagrams_delivered: u64,
    /// Fingerprint of the run (hex).
    pub trace_hash: String,
}

const TAG_PUT: u64 = 1;
const TAG_GET: u64 = 2;

/// Runs the hot-spot experiment: every node puts (its own address) and gets
/// one single key at `rate` per second each, with a random phase per node,
/// for `minutes` virtual minutes, and we count the put traffic (store and
/// put-probe RPCs) each node receives per minute.
pub fn hotspot(p: &HotspotParams) -> Result<HotspotReport, LoadError> {
    let (mut sim, join) = build(&p.net)?;
    let n = sim.len();
    let levels = Levels::ALL;
    let key = Id::hash("coral-sim-hotspot", &p.net.seed.to_be_bytes());
    let beta = sim.node_config().dsht.beta;

    let period = Duration::from_secs_f64(1.0 / p.rate.max(1e-9));
    let phase: Vec<Duration> = (0..n).map(|_| sim.rng().jitter(period)).collect();
    let values: Vec<Bytes> = (0..n)
        .map(|i| Bytes::from(sim.addr(i).to_string().into_bytes()))
        .collect();

    // [store, put-probe, get-probe] RPCs received so far.
    let load = |sim: &Sim, i: usize| -> [u64; 3] {
        sim.stats(i).map_or([0; 3], |s| {
            [s.rpcs_in.store, s.rpcs_in.put_probe, s.rpcs_in.get_probe]
        })
    };
    let t0 = sim.now();
    let mut last: Vec<[u64; 3]> = (0..n).map(|i| load(&sim, i)).collect();
    // per_min[i][m] = [store, put-probe, get-probe] RPCs node i received in minute m.
    let mut per_min: Vec<Vec<[u64; 3]>> = vec![Vec::with_capacity(p.minutes as usize); n];
    let mut storing: Vec<Id> = Vec::new();
    let (mut puts_issued, mut gets_issued) = (0u64, 0u64);
    let (mut puts_done, mut puts_ok, mut gets_done, mut gets_ok, mut failed) = (0, 0, 0, 0, 0);
    let mut get_hops = Vec::new();
    let mut absorb = |sim: &mut Sim, storing: &mut Vec<Id>| {
        for c in sim.take_completions() {
            match c.event() {
                Some(Event::PutDone { stored, .. }) => {
                    puts_done += 1;
                    if !stored.is_empty() {
                        puts_ok += 1;
                    }
                    storing.extend(stored.iter().map(|(_, id)| *id));
                }
                Some(Event::GetDone { values, hops, .. }) => {
                    gets_done += 1;
                    get_hops.push(f64::from(*hops));
                    if !values.is_empty() {
                        gets_ok += 1;
                    }
                }
                Some(_) => {}
                None => failed += 1,
            }
        }
        storing.sort_unstable();
        storing.dedup();
    };

    for m in 0..u64::from(p.minutes) {
        let from = t0 + Duration::from_secs(60 * m);
        let to = from + Duration::from_secs(60);
        for (i, value) in values.iter().enumerate() {
            let mut t = from + phase[i];
            while t < to {
                sim.schedule(
                    t,
                    i,
                    TAG_PUT,
                    Command::Put {
                        key,
                        value: value.clone(),
                        ttl: p.ttl,
                        levels,
                    },
                );
                sim.schedule(t + period / 2, i, TAG_GET, Command::Get { key, levels });
                puts_issued += 1;
                gets_issued += 1;
                t += period;
            }
        }
        sim.run_until(to);
        for (i, row) in per_min.iter_mut().enumerate() {
            let now = load(&sim, i);
            row.push([0, 1, 2].map(|k| now[k].saturating_sub(last[i][k])));
            last[i] = now;
        }
        absorb(&mut sim, &mut storing);
    }
    // Let the last operations finish so their outcomes count.
    let end = sim.now();
    sim.run_until_idle(end + Duration::from_secs(60));
    absorb(&mut sim, &mut storing);

    let skip = usize::from(p.minutes > 1);
    let avg = |row: &[[u64; 3]], pick: fn(&[u64; 3]) -> u64| {
        let tail = &row[skip.min(row.len())..];
        if tail.is_empty() {
            0.0
        } else {
            tail.iter().map(pick).sum::<u64>() as f64 / tail.len() as f64
        }
    };
    let mut by_distance: Vec<usize> = (0..n).collect();
    by_distance.sort_by_key(|&i| (sim.id(i).distance(&key), i));
    let put_avg: Vec<f64> = per_min.iter().map(|r| avg(r, |x| x[0] + x[1])).collect();
    let store_avg: Vec<f64> = per_min.iter().map(|r| avg(r, |x| x[0])).collect();
    let max_stores = store_avg.iter().copied().fold(0.0, f64::max);
    let now = sim.now();
    let holding = (0..n)
        .filter(|&i| {
            sim.node(i).is_some_and(|node| {
                node.levels()
                    .iter()
                    .enumerate()
                    .any(|(l, _)| !node.stored_values(now, l as u8, &key).is_empty())
            })
        })
        .count();
    let (max_node, max_load) =
        put_avg.iter().enumerate().fold(
            (0, f64::MIN),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        );
    let closest = by_distance.first().copied().unwrap_or(0);
    let closest_ranks = by_distance
        .iter()
        .take(p.ranks)
        .enumerate()
        .map(|(rank, &i)| {
            let id = sim.id(i);
            RankLoad {
                rank,
                node: i,
                id: id.to_string(),
                distance_log2: id.distance(&key).log2(),
                rpcs_per_min: put_avg[i],
                stores_per_min: store_avg[i],
                get_probes_per_min: avg(&per_min[i], |x| x[2]),
                stores_value: storing.binary_search(&id).is_ok(),
            }
        })
        .collect();
    let minutes = f64::from(p.minutes.max(1));
    let bound = u64::from(beta) * (n.max(1) as f64).log2().ceil() as u64;
    Ok(HotspotReport {
        experiment: "hotspot",
        seed: p.net.seed,
        nodes: n,
        log2_nodes: log2(n),
        beta,
        bound,
        minutes: p.minutes,
        rate: p.rate,
        ttl_secs: p.ttl.as_secs(),
        latency: p.net.latency,
        join: join.into(),
        aggregate_puts_per_min: puts_issued as f64 / minutes,
        aggregate_gets_per_min: gets_issued as f64 / minutes,
        aggregate_put_rpcs_per_min: put_avg.iter().sum(),
        closest_node: closest,
        closest_node_rpcs_per_min: put_avg.get(closest).copied().unwrap_or(0.0),
        max_node_rpcs_per_min: max_load.max(0.0),
        max_node,
        max_node_rank: by_distance.iter().position(|&i| i == max_node).unwrap_or(0),
        nodes_storing_value: storing.len(),
        nodes_holding_value_at_end: holding,
        max_node_stores_per_min: max_stores,
        closest_ranks,
        closest_node_per_minute: per_min
            .get(closest)
            .map(|r| r.iter().map(|x| x[0] + x[1]).collect())
            .unwrap_or_default(),
        put_success_rate: ratio(puts_ok, puts_done),
        get_success_rate: ratio(gets_ok, gets_done),
        get_hops_mean: mean(&get_hops),
        puts_done,
        gets_done,
        ops_failed: failed,
        datagrams_delivered: sim.counters().delivered,
        trace_hash: format!("{:016x}", sim.trace_hash()),
    })
}

impl HotspotReport {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "hotspot: {} nodes (log2 {:.2}), {} minutes, {} puts+gets/node/s, seed {}, latency {:?}",
            self.nodes, self.log2_nodes, self.minutes, self.rate, self.seed, self.latency
        );
        let _ = writeln!(
            s,
            "  join: {} joined, {} empty, {} timed out, {:.1} virtual s",
            self.join.joined, self.join.empty, self.join.timed_out, self.join.virtual_secs
        );
        let _ = writeln!(
            s,
            "  aggregate: {:.0} puts/min, {:.0} gets/min; puts ok {:.4}, gets ok {:.4}, get hops {:.2}, {} failed",
            self.aggregate_puts_per_min,
            self.aggregate_gets_per_min,
            self.put_success_rate,
            self.get_success_rate,
            self.get_hops_mean,
            self.ops_failed
        );
        let _ = writeln!(
            s,
            "  beta {} -> bound beta*ceil(log2 n) = {} RPCs/min; {:.1} put RPCs/min reached the network",
            self.beta, self.bound, self.aggregate_put_rpcs_per_min
        );
        let _ = writeln!(
            s,
            "  closest node {}: {:.1} store+put-probe RPCs/min (per minute: {:?})",
            self.closest_node, self.closest_node_rpcs_per_min, self.closest_node_per_minute
        );
        let _ = writeln!(
            s,
            "  busiest node {} (distance rank {}): {:.1} RPCs/min",
            self.max_node, self.max_node_rank, self.max_node_rpcs_per_min
        );
        let _ = writeln!(
            s,
            "  nodes storing a value: {} (per PutDone), {} (holding at the end); busiest store load {:.1} stores/min",
            self.nodes_storing_value, self.nodes_holding_value_at_end, self.max_node_stores_per_min
        );
        let _ = writeln!(
            s,
            "  rank  node   log2(dist)  put RPCs/min  (stores)  get-probes/min  holds"
        );
        for r in &self.closest_ranks {
            let _ = writeln!(
                s,
                "  {:>4}  {:>5}  {:>10.2}  {:>12.1}  {:>8.1}  {:>14.1}  {}",
                r.rank,
                r.node,
                r.distance_log2,
                r.rpcs_per_min,
                r.stores_per_min,
                r.get_probes_per_min,
                r.stores_value
            );
        }
        let _ = write!(
            s,
            "  {} datagrams delivered, trace {}",
            self.datagrams_delivered, self.trace_hash
        );
        s
    }
}

/// Sampling period of the cluster experiment: every node's clusters are read
/// this often. Below the ~40 s a switch takes at least (two agreeing checks
/// of the 20 s re-evaluation), so two switches of one node at one level
/// never fall between two samples.
pub const CLUSTER_SAMPLE: Duration = Duration::from_secs(10);

/// How long no node may switch for the cluster experiment to call the
/// network converged: about five re-evaluation periods (20 s, up to 25 s
/// with jitter). The issue asks for one whole period; a pending switch
/// needs two agreeing checks, so a window of one or two periods can end
/// just before a decided switch lands. 120 s is the conservative choice: a
/// 50 s window made seed 1 on the 500-node sphere "converge" at 541 s
/// instead of 1411 s and counted the tail as switches after convergence.
pub const CLUSTER_QUIET: Duration = Duration::from_secs(120);

/// The level hierarchy of the cluster experiment: the core's default,
/// Coral's unbounded level 0, 60 ms level 1 and 20 ms level 2.
pub fn three_levels() -> Vec<LevelConfig> {
    LevelConfig::coral_hierarchy()
}

/// Parameters of the cluster experiment.
#[derive(Clone, Debug)]
pub struct ClusterParams {
    /// Number of nodes.
    pub nodes: usize,
    /// Simulation seed.
    pub seed: u64,
    /// RTTs between the nodes.
    pub latency: LatencyModel,
    /// A name of the latency model for the report (`"sphere"`, a file path).
    pub latency_name: String,
    /// Virtual minutes from the cold start (nodes created, none joined) to
    /// the end of the run; the joins are part of it.
    pub minutes: u32,
    /// The level hierarchy every node runs.
    pub levels: Vec<LevelConfig>,
}

impl ClusterParams {
    /// `nodes` nodes on the synthetic sphere of `seed`, three levels.
    pub fn synthetic(nodes: usize, seed: u64, minutes: u32) -> Self {
        Self {
            nodes,
            seed,
            latency: LatencyModel::sphere(mix64(seed, 0x1a7e)),
            latency_name: "sphere".to_owned(),
            minutes,
            levels: three_levels(),
        }
    }

    /// `nodes` nodes on a measured matrix (node `i` at host `i % len`).
    pub fn matrix(
        matrix: Arc<RttMatrix>,
        name: String,
        nodes: usize,
        seed: u64,
        minutes: u32,
    ) -> Self {
        Self {
            nodes,
            seed,
            latency: LatencyModel::matrix(matrix, mix64(seed, 0x1a7e)),
            latency_name: name,
            minutes,
            levels: three_levels(),
        }
    }
}

/// The clusters of one bounded level at the end of the cluster experiment.
#[derive(Clone, Debug, Serialize)]
pub struct LevelClusterReport {
    /// The level (1, 2, …; level 0 is unbounded and not reported).
    pub level: u8,
    /// The level's RTT diameter, ms.
    pub threshold_ms: f64,
    /// Distinct cluster ids among the live nodes at the end.
    pub clusters: usize,
    /// Members of the largest cluster at the end.
    pub largest: usize,
    /// Clusters with a single member at the end.
    pub singletons: usize,
    /// Of the node pairs in one cluster at the end, the fraction whose RTT is
    /// below `threshold_ms` (null when no two nodes share a cluster).
    pub purity: Option<f64>,
    /// Of the node pairs whose RTT is below `threshold_ms / 2`, the fraction
    /// in one cluster at the end (null when there is no such pair).
    pub coverage: Option<f64>,
    /// Node pairs in one cluster at the end (the denominator of `purity`).
    pub same_cluster_pairs: u64,
    /// Node pairs with RTT below half the threshold (that of `coverage`).
    pub near_pairs: u64,
    /// Cluster changes seen at this level over the whole run.
    pub switches: u64,
    /// Virtual seconds from the start to the last sample at which some
    /// node's cluster at this level had changed (null: never changed).
    pub last_switch_s: Option<f64>,
    /// The most switches any one node made at this level.
    pub max_switches_one_node: u64,
    /// Switches at this level in each virtual minute of the run.
    pub switches_per_minute: Vec<u64>,
    /// Of the nodes' own switches, how many founded a new cluster (the
    /// node's cluster stopped qualifying and nothing else did) rather than
    /// joining one.
    pub founded: u64,
}

/// Requests the nodes sent, by type, per node per virtual minute of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestRates {
    /// Pings (RTT measurement, liveness, telling neighbours about us).
    pub ping: f64,
    /// Find-near (lookup steps of joins and refreshes).
    pub find_near: f64,
    /// Get-probes.
    pub get_probe: f64,
    /// Put-probes.
    pub put_probe: f64,
    /// Stores.
    pub store: f64,
    /// Neighbour exchanges (latency-near discovery).
    pub neighbours: f64,
    /// All requests and replies sent.
    pub total: f64,
}

impl RequestRates {
    /// The rates of `sim`'s live nodes over `minutes`.
    pub fn of(sim: &Sim, minutes: f64) -> Self {
        let mut r = Self::default();
        let mut nodes = 0usize;
        for s in (0..sim.len()).filter_map(|i| sim.stats(i)) {
            nodes += 1;
            let o = &s.rpcs_out;
            r.ping += o.ping as f64;
            r.find_near += o.find_near as f64;
            r.get_probe += o.get_probe as f64;
            r.put_probe += o.put_probe as f64;
            r.store += o.store as f64;
            r.neighbours += o.neighbours as f64;
            r.total += (o.ping
                + o.find_near
                + o.get_probe
                + o.put_probe
                + o.store
                + o.neighbours
                + o.replies) as f64;
        }
        let per = nodes as f64 * minutes;
        if per > 0.0 {
            for x in [
                &mut r.ping,
                &mut r.find_near,
                &mut r.get_probe,
                &mut r.put_probe,
                &mut r.store,
                &mut r.neighbours,
                &mut r.total,
            ] {
                *x /= per;
            }
        }
        r
    }
}

/// What the cluster experiment measured.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    /// Always `"clusters"`.
    pub experiment: &'static str,
    /// Simulation seed.
    pub seed: u64,
    /// Nodes in the network.
    pub nodes: usize,
    /// Virtual minutes run, from the cold start.
    pub minutes: u32,
    /// The latency model (`"sphere"` or the matrix file).
    pub latency: String,
    /// How the joins went (they start at time 0 and are part of the run).
    pub join: JoinSummary,
    /// Seconds between samples of every node's clusters.
    pub sample_s: f64,
    /// The quiet window that defines convergence, seconds.
    pub quiet_s: f64,
    /// Per bounded level (level 0, one global cluster, is left out).
    pub levels: Vec<LevelClusterReport>,
    /// Virtual seconds from the cold start to the first sample at which
    /// some node's cluster (at any level) changed and after which no node's
    /// changed for `quiet_s`; the time of the first sample if nothing ever
    /// changed; null if no such quiet window ended before the run did.
    pub converged_after_s: Option<f64>,
    /// Cluster changes (all levels) seen after `converged_after_s`, per node
    /// per hour of the time left (null if not converged).
    pub switches_per_node_hour_after_convergence: Option<f64>,
    /// Cluster changes (all levels) seen after `converged_after_s`.
    pub switches_after_convergence: Option<u64>,
    /// Virtual seconds from the cold start to the last sample at which any
    /// node's cluster changed (null: never).
    pub last_switch_s: Option<f64>,
    /// Cluster changes (all levels) seen in each virtual minute of the run,
    /// from the cold start.
    pub switches_per_minute: Vec<u64>,
    /// Cluster changes the sampling saw over the whole run (all levels).
    pub switches_sampled: u64,
    /// The nodes' own count of cluster switches (`Stats::cluster_switches`,
    /// summed): a cross-check of `switches_sampled`, which misses a switch
    /// only if one node switches twice at one level within a sample period.
    pub switches_reported: u64,
    /// Datagrams delivered during the whole run.
    pub datagrams_delivered: u64,
    /// What the nodes sent, per node per minute: the cost of clustering
    /// on an otherwise idle network.
    pub sent_per_node_minute: RequestRates,
    /// Fingerprint of the run (hex).
    pub trace_hash: String,
}

/// Every node's cluster id per level (`None`: node down or level missing).
fn cluster_snapshot(sim: &Sim, levels: usize) -> Vec<Vec<Option<Id>>> {
    (0..sim.len())
        .map(|i| {
            let mut row = vec![None; levels];
            if let Some(node) = sim.node(i) {
                for info in node.clusters() {
                    if let Some(slot) = row.get_mut(usize::from(info.level)) {
                        *slot = Some(info.cluster);
                    }
                }
            }
            row
        })
        .collect()
}

/// Runs the cluster experiment: `nodes` nodes are created at time 0 with
/// the three-level hierarchy, join in the simulator's usual batches, and
/// run with no application traffic until `minutes` have passed since time
/// 0; every node's [`coral_core::Node::clusters`] is read every
/// [`CLUSTER_SAMPLE`]. A *switch* is a change of one node's cluster id at
/// one level between two consecutive samples (changes during the joins
/// show up at the first sample after them).
pub fn clusters(p: &ClusterParams) -> ClusterReport {
    let mut cfg = SimConfig::new(p.seed);
    cfg.latency = p.latency.clone();
    cfg.node.levels = p.levels.clone();
    let mut sim = Sim::new(cfg);
    let t0 = sim.now();
    sim.add_nodes(p.nodes);
    let n = sim.len();
    let nl = p.levels.len();
    let mut prev = cluster_snapshot(&sim, nl);
    let join = sim.join_all(JoinOptions::default());
    let _ = sim.take_completions();

    let end = t0 + Duration::from_secs(60 * u64::from(p.minutes));
    // (seconds since t0, switches per level) of every sample after the first.
    let mut samples: Vec<(f64, Vec<u64>)> = Vec::new();
    // Switches of each node at each level over the run.
    let mut by_node = vec![vec![0u64; nl]; n];
    loop {
        let t = sim.now();
        let snap = cluster_snapshot(&sim, nl);
        let mut changed = vec![0u64; nl];
        for ((a, b), mine) in prev.iter().zip(&snap).zip(&mut by_node) {
            for (l, (x, y)) in a.iter().zip(b).enumerate() {
                if x.is_some() && y.is_some() && x != y {
                    changed[l] += 1;
                    mine[l] += 1;
                }
            }
        }
        samples.push(((t - t0).as_secs_f64(), changed));
        prev = snap;
        if t >= end {
            break;
        }
        sim.run_until((t + CLUSTER_SAMPLE).min(end));
        let _ = sim.take_completions();
    }
    let end_s = (sim.now() - t0).as_secs_f64();
    let quiet = CLUSTER_QUIET.as_secs_f64();

    let total = |s: &(f64, Vec<u64>)| s.1.iter().sum::<u64>();
    let changes: Vec<f64> = samples
        .iter()
        .filter(|s| total(s) > 0)
        .map(|s| s.0)
        .collect();
    let converged = converged_at(&changes, samples.first().map(|s| s.0), end_s, quiet);
    let after = converged.map(|c| samples.iter().filter(|s| s.0 > c).map(total).sum::<u64>());
    let rate = converged.zip(after).map(|(c, a)| {
        let hours = (end_s - c) / 3600.0;
        if hours > 0.0 && n > 0 {
            a as f64 / (n as f64 * hours)
        } else {
            0.0
        }
    });
    // Per level (index `nl` = all levels) the switches seen in each minute;
    // a change seen at the sample closing a minute belongs to that minute.
    let mut per_minute = vec![vec![0u64; p.minutes.max(1) as usize]; nl + 1];
    for s in &samples {
        let m = ((s.0 / 60.0).ceil() as usize).saturating_sub(1);
        for (l, row) in per_minute.iter_mut().enumerate() {
            let c = s.1.get(l).copied().unwrap_or_else(|| total(s));
            if let Some(slot) = row.get_mut(m) {
                *slot += c;
            }
        }
    }

    let lat = sim.latency();
    let levels = p
        .levels
        .iter()
        .enumerate()
        .filter_map(|(l, lc)| Some((l, lc.diameter?)))
        .filter(|&(l, _)| l > 0)
        .map(|(l, d)| {
            let threshold_us = d.as_micros() as u64;
            let ids: Vec<Option<Id>> = prev.iter().map(|row| row[l]).collect();
            let mut sizes: BTreeMap<Id, usize> = BTreeMap::new();
            for id in ids.iter().flatten() {
                *sizes.entry(*id).or_default() += 1;
            }
            let (mut same, mut same_close, mut near, mut near_same) = (0u64, 0u64, 0u64, 0u64);
            for i in 0..n {
                for j in (i + 1)..n {
                    let (Some(a), Some(b)) = (ids[i], ids[j]) else {
                        continue;
                    };
                    let rtt = lat.rtt_us(i, j);
                    let together = a == b;
                    if together {
                        same += 1;
                        same_close += u64::from(rtt < threshold_us);
                    }
                    if 2 * rtt < threshold_us {
                        near += 1;
                        near_same += u64::from(together);
                    }
                }
            }
            let frac = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
            LevelClusterReport {
                level: l as u8,
                threshold_ms: ms(d),
                clusters: sizes.len(),
                largest: sizes.values().copied().max().unwrap_or(0),
                singletons: sizes.values().filter(|&&s| s == 1).count(),
                purity: frac(same_close, same),
                coverage: frac(near_same, near),
                same_cluster_pairs: same,
                near_pairs: near,
                switches: samples.iter().map(|s| s.1[l]).sum(),
                last_switch_s: samples.iter().rev().find(|s| s.1[l] > 0).map(|s| s.0),
                max_switches_one_node: by_node.iter().map(|r| r[l]).max().unwrap_or(0),
                switches_per_minute: per_minute[l].clone(),
                founded: (0..n)
                    .filter_map(|i| sim.node(i)?.cluster_stats(l as u8))
                    .map(|c| c.founded)
                    .sum(),
            }
        })
        .collect();

    ClusterReport {
        experiment: "clusters",
        seed: p.seed,
        nodes: n,
        minutes: p.minutes,
        latency: p.latency_name.clone(),
        join: join.into(),
        sample_s: CLUSTER_SAMPLE.as_secs_f64(),
        quiet_s: quiet,
        levels,
        converged_after_s: converged,
        switches_per_node_hour_after_convergence: rate,
        switches_after_convergence: after,
        last_switch_s: changes.last().copied(),
        switches_per_minute: per_minute[nl].clone(),
        switches_sampled: samples.iter().map(total).sum(),
        switches_reported: (0..n)
            .filter_map(|i| sim.stats(i))
            .map(|s| s.cluster_switches)
            .sum(),
        datagrams_delivered: sim.counters().delivered,
        sent_per_node_minute: RequestRates::of(&sim, end_s / 60.0),
        trace_hash: format!("{:016x}", sim.trace_hash()),
    }
}

/// When a run converged, given the times (s, ascending) of the samples at
/// which some node's cluster changed: the first such time followed by at
/// least `quiet` s without a change, the window ending by `end`; `first`
/// (the first sample) if nothing changed; `None` if no window fits.
///
/// The *first* quiet window, not the last change: switches after it are
/// what `switches_per_node_hour_after_convergence` measures, which would be
/// zero by construction if convergence were the last change.
pub fn converged_at(changes: &[f64], first: Option<f64>, end: f64, quiet: f64) -> Option<f64> {
    if changes.is_empty() {
        return first;
    }
    changes.iter().enumerate().find_map(|(k, &t)| {
        let next = changes.get(k + 1).copied().unwrap_or(f64::INFINITY);
        (next - t >= quiet && t + quiet <= end).then_some(t)
    })
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "null".to_owned(), |v| format!("{v:.digits$}"))
}

impl ClusterReport {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "clusters: {} nodes, {} minutes, seed {}, latency {}",
            self.nodes, self.minutes, self.seed, self.latency
        );
        let _ = writeln!(
            s,
            "  join: {} joined, {} empty, {} timed out, {:.1} virtual s",
            self.join.joined, self.join.empty, self.join.timed_out, self.join.virtual_secs
        );
        let _ = writeln!(
            s,
            "  level  threshold  clusters  largest  singletons  purity  coverage  switches  last switch s"
        );
        for l in &self.levels {
            let _ = writeln!(
                s,
                "  {:>5}  {:>6.0} ms  {:>8}  {:>7}  {:>10}  {:>6}  {:>8}  {:>8}  {:>13}",
                l.level,
                l.threshold_ms,
                l.clusters,
                l.largest,
                l.singletons,
                opt(l.purity, 4),
                opt(l.coverage, 4),
                l.switches,
                opt(l.last_switch_s, 0)
            );
        }
        let _ = writeln!(
            s,
            "  converged after {} s (no switch for {} s); {} switches after, {} per node-hour",
            opt(self.converged_after_s, 0),
            self.quiet_s,
            self.switches_after_convergence
                .map_or_else(|| "null".to_owned(), |v| v.to_string()),
            opt(self.switches_per_node_hour_after_convergence, 4)
        );
        let _ = writeln!(
            s,
            "  switches: {} sampled, {} counted by the nodes; per minute: {:?}",
            self.switches_sampled, self.switches_reported, self.switches_per_minute
        );
        let _ = write!(
            s,
            "  {} datagrams delivered, trace {}",
            self.datagrams_delivered, self.trace_hash
        );
        s
    }
}

/// Issue 3's goals for one cluster run: converged within 10 virtual
/// minutes, fewer than 0.1 switches per node-hour after that, purity at
/// least 0.95 and coverage at least 0.80 at every bounded level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterGoals {
    /// `converged_after_s` ≤ 600.
    pub converged: bool,
    /// `switches_per_node_hour_after_convergence` < 0.1.
    pub stable: bool,
    /// Purity ≥ 0.95 at every reported level.
    pub pure: bool,
    /// Coverage ≥ 0.80 at every reported level.
    pub covered: bool,
}

impl ClusterReport {
    /// Which of issue 3's goals this run meets (see [`ClusterGoals`]). A
    /// level with no same-cluster pair, or no close pair, fails the goal
    /// it cannot show.
    pub fn goals(&self) -> ClusterGoals {
        let every = |f: fn(&LevelClusterReport) -> bool| {
            !self.levels.is_empty() && self.levels.iter().all(f)
        };
        ClusterGoals {
            converged: self.converged_after_s.is_some_and(|s| s <= 600.0),
            stable: self
                .switches_per_node_hour_after_convergence
                .is_some_and(|r| r < 0.1),
            pure: every(|l| l.purity.is_some_and(|p| p >= 0.95)),
            covered: every(|l| l.coverage.is_some_and(|c| c >= 0.8)),
        }
    }
}

/// The cluster experiment over several seeds: every run, and how many
/// meet each goal.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterSeedsReport {
    /// `"clusters-seeds"`.
    pub experiment: &'static str,
    /// The seeds, in the order of `runs`.
    pub seeds: Vec<u64>,
    /// Runs meeting each goal: converged, stable, pure, covered.
    pub met: ClusterGoalCounts,
    /// Every run, as `coral-sim clusters --json` prints it.
    pub runs: Vec<ClusterReport>,
}

/// How many runs meet each of issue 3's goals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterGoalCounts {
    /// Runs.
    pub runs: usize,
    /// Converged within 600 s.
    pub converged: usize,
    /// Under 0.1 switches per node-hour after convergence.
    pub stable: usize,
    /// Purity ≥ 0.95 at every level.
    pub pure: usize,
    /// Coverage ≥ 0.80 at every level.
    pub covered: usize,
}

impl ClusterSeedsReport {
    /// Collects finished runs (one per seed).
    pub fn new(runs: Vec<ClusterReport>) -> Self {
        let mut met = ClusterGoalCounts {
            runs: runs.len(),
            ..ClusterGoalCounts::default()
        };
        for g in runs.iter().map(ClusterReport::goals) {
            met.converged += usize::from(g.converged);
            met.stable += usize::from(g.stable);
            met.pure += usize::from(g.pure);
            met.covered += usize::from(g.covered);
        }
        Self {
            experiment: "clusters-seeds",
            seeds: runs.iter().map(|r| r.seed).collect(),
            met,
            runs,
        }
    }

    /// One line per seed, then the counts.
    pub fn human(&self) -> String {
        let opt =
            |v: Option<f64>, d: usize| v.map_or_else(|| "null".to_owned(), |x| format!("{x:.d$}"));
        let mut s = String::new();
        for r in &self.runs {
            let levels: Vec<String> = r
                .levels
                .iter()
                .map(|l| {
                    format!(
                        "L{} purity {} coverage {}",
                        l.level,
                        opt(l.purity, 3),
                        opt(l.coverage, 3)
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "seed {:>3}: converged {} s, {} switches per node-hour after; {}",
                r.seed,
                opt(r.converged_after_s, 0),
                opt(r.switches_per_node_hour_after_convergence, 3),
                levels.join("; ")
            );
        }
        let m = &self.met;
        let _ = write!(
            s,
            "of {} seeds: converged within 600 s {}, under 0.1 switches per node-hour {}, purity >= 0.95 {}, coverage >= 0.80 {}",
            m.runs, m.converged, m.stable, m.pure, m.covered
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_are_the_issues_thresholds() {
        let mut r = clusters(&ClusterParams::synthetic(30, 1, 2));
        let base = r.clone();
        r.converged_after_s = Some(600.0);
        r.switches_per_node_hour_after_convergence = Some(0.099);
        for l in &mut r.levels {
            l.purity = Some(0.95);
            l.coverage = Some(0.8);
        }
        let all = ClusterGoals {
            converged: true,
            stable: true,
            pure: true,
            covered: true,
        };
        assert_eq!(r.goals(), all);
        let mut late = r.clone();
        late.converged_after_s = Some(600.1);
        assert!(!late.goals().converged);
        late.converged_after_s = None;
        assert!(!late.goals().converged);
        assert_eq!(ClusterSeedsReport::new(vec![late]).met.converged, 0);
        let mut busy = r.clone();
        busy.switches_per_node_hour_after_convergence = Some(0.1);
        assert!(!busy.goals().stable);
        let mut one_level = r.clone();
        one_level.levels[1].coverage = Some(0.799);
        assert_eq!(
            one_level.goals(),
            ClusterGoals {
                covered: false,
                ..all
            }
        );
        one_level.levels[0].purity = None;
        assert!(!one_level.goals().pure);

        let base_stable = usize::from(base.goals().stable);
        let seeds = ClusterSeedsReport::new(vec![r, busy, base]);
        assert_eq!(seeds.met.runs, 3);
        assert_eq!(seeds.met.stable, 1 + base_stable);
        assert_eq!(seeds.seeds, vec![1, 1, 1]);
        assert!(seeds.human().ends_with(&format!(
            "of 3 seeds: converged within 600 s {}, under 0.1 switches per node-hour {}, purity >= 0.95 {}, coverage >= 0.80 {}",
            seeds.met.converged, seeds.met.stable, seeds.met.pure, seeds.met.covered
        )));
    }

    #[test]
    fn convergence_is_the_first_change_followed_by_a_quiet_window() {
        // Nothing changed: converged at the first sample.
        assert_eq!(converged_at(&[], Some(10.0), 600.0, 120.0), Some(10.0));
        // Changes every 60 s up to 300, then quiet.
        let c = [60.0, 120.0, 180.0, 240.0, 300.0];
        assert_eq!(converged_at(&c, Some(0.0), 600.0, 120.0), Some(300.0));
        // ... but the run ended before the window closed.
        assert_eq!(converged_at(&c, Some(0.0), 410.0, 120.0), None);
        assert_eq!(converged_at(&c, Some(0.0), 420.0, 120.0), Some(300.0));
        // A later stray switch does not move convergence: it counts after it.
        let c = [60.0, 100.0, 400.0];
        assert_eq!(converged_at(&c, Some(0.0), 900.0, 120.0), Some(100.0));
        // A 110 s gap is not a quiet window.
        assert_eq!(converged_at(&[0.0, 110.0, 220.0], None, 300.0, 120.0), None);
    }
}
