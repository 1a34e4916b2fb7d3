//! The DSHT as a system: lookups, loss, churn and the hot spot, in the
//! simulator. Every assertion is on a metric of the run (found rate, hops,
//! RPC counts), never on wall time; every failure message carries the seed
//! (replay with `CORAL_SIM_SEED=<seed>`, scale with `CORAL_SIM_NODES`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use coral_core::id::Id;
use coral_core::{Event, Levels};
use coral_tests::experiments::{
    self, HotspotParams, LatencyKind, LookupParams, LookupReport, NetParams,
};
use coral_tests::sim::{Command, JoinOptions, Sim, SimConfig};

fn nodes() -> usize {
    common::env_u64("CORAL_SIM_NODES", 200) as usize
}

fn lookup(seed: u64, loss: f64, latency: LatencyKind) -> LookupReport {
    let net = NetParams {
        nodes: nodes(),
        seed,
        latency,
        loss,
    };
    let mut p = LookupParams::new(net, 40);
    p.gets_per_node = 2;
    experiments::lookup(&p).expect("the network builds")
}

/// The lossless run, shared by the tests that only read its report.
fn lossless() -> &'static LookupReport {
    static REPORT: OnceLock<LookupReport> = OnceLock::new();
    REPORT.get_or_init(|| lookup(common::seed(), 0.0, LatencyKind::Sphere))
}

fn json(r: &impl serde::Serialize) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// Runs in CI while the strict tests below wait for core fixes: the
/// simulator drives a whole network end to end and most gets work.
#[test]
fn smoke_most_gets_succeed() {
    let seed = common::announce("smoke_most_gets_succeed");
    let r = lossless();
    assert_eq!(r.join.joined, r.nodes, "seed {seed}: {}", json(r));
    assert_eq!(r.gets_completed, r.gets, "seed {seed}: {}", json(r));
    assert!(r.get_success_rate >= 0.9, "seed {seed}: {}", json(r));
    assert!(r.hops_p50 <= 2.0 * r.log2_nodes, "seed {seed}: {}", json(r));
}

#[test]
fn every_get_of_a_put_key_succeeds() {
    let seed = common::announce("every_get_of_a_put_key_succeeds");
    let r = lossless();
    assert_eq!(r.join.joined, r.nodes, "seed {seed}: {}", json(r));
    assert_eq!(r.put_success_rate, 1.0, "seed {seed}: {}", json(r));
    assert_eq!(r.gets_completed, r.gets, "seed {seed}: {}", json(r));
    assert_eq!(r.get_success_rate, 1.0, "seed {seed}: {}", json(r));
}

#[test]
fn hops_are_logarithmic() {
    let seed = common::announce("hops_are_logarithmic");
    let r = lossless();
    let bound = r.log2_nodes + 2.0;
    assert!(
        r.hops_p99 <= bound,
        "seed {seed}: p99 hops {} > log2(n)+2 = {bound:.2}: {}",
        r.hops_p99,
        json(r)
    );
    assert!(
        r.hops_mean >= 1.0,
        "seed {seed}: gets answered without asking anyone? {}",
        json(r)
    );
}

#[test]
fn planetlab_latency_lookups_succeed() {
    let seed = common::announce("planetlab_latency_lookups_succeed");
    let r = lookup(seed, 0.0, LatencyKind::Planetlab);
    assert_eq!(r.get_success_rate, 1.0, "seed {seed}: {}", json(&r));
    // Lookups are sequences of round trips on a matrix whose median RTT is
    // 131 ms: the median get cannot beat one RTT, nor take a minute.
    assert!(
        r.latency_ms_p50 > 20.0 && r.latency_ms_p50 < 60_000.0,
        "seed {seed}: {}",
        json(&r)
    );
}

#[test]
fn five_percent_loss_keeps_gets_succeeding() {
    let seed = common::announce("five_percent_loss_keeps_gets_succeeding");
    let r = lookup(seed, 0.05, LatencyKind::Sphere);
    assert!(r.datagrams_lost > 0, "seed {seed}: nothing was lost");
    assert!(
        r.get_success_rate >= 0.99,
        "seed {seed}: success {} < 0.99: {}",
        r.get_success_rate,
        json(&r)
    );
}

/// Puts `values[k]` under `keys[k]` from random nodes of `from`, waits, and
/// returns how many puts reported a storing node.
fn put_all(sim: &mut Sim, from: &[usize], keys: &[Id], values: &[Bytes]) -> usize {
    let t = sim.now();
    for (k, key) in keys.iter().enumerate() {
        let who = from[sim.rng().below(from.len() as u64) as usize];
        let at = t + sim.rng().jitter(Duration::from_secs(5));
        let (value, ttl) = (values[k].clone(), Duration::from_secs(3600));
        sim.schedule(
            at,
            who,
            k as u64,
            Command::Put {
                key: *key,
                value,
                ttl,
                levels: Levels::ALL,
            },
        );
    }
    assert!(
        sim.run_until_idle(t + Duration::from_secs(120)),
        "seed {}: puts did not finish",
        sim.seed()
    );
    sim.take_completions()
        .iter()
        .filter(|c| matches!(c.event(), Some(Event::PutDone { stored, .. }) if !stored.is_empty()))
        .count()
}

/// Every node of `who` gets a random key; returns the fraction that found
/// the value put under it.
fn get_all(sim: &mut Sim, who: &[usize], keys: &[Id], values: &[Bytes]) -> f64 {
    let t = sim.now();
    for &i in who {
        let k = sim.rng().below(keys.len() as u64) as usize;
        let at = t + sim.rng().jitter(Duration::from_secs(5));
        sim.schedule(
            at,
            i,
            k as u64,
            Command::Get {
                key: keys[k],
                levels: Levels::ALL,
            },
        );
    }
    assert!(
        sim.run_until_idle(t + Duration::from_secs(120)),
        "seed {}: gets did not finish",
        sim.seed()
    );
    let done = sim.take_completions();
    assert_eq!(done.len(), who.len(), "seed {}", sim.seed());
    let found = done
        .iter()
        .filter(|c| {
            matches!(c.event(), Some(Event::GetDone { values: v, .. }) if v.contains(&values[c.tag as usize]))
        })
        .count();
    found as f64 / who.len() as f64
}

/// Crash a fifth of the network, give the survivors time to notice, put
/// fresh keys and get them from every survivor. Then restart the crashed
/// nodes; once they have rejoined, new keys are put and the restarted nodes
/// must find them.
#[test]
fn gets_survive_crashing_a_fifth_of_the_nodes() {
    let seed = common::announce("gets_survive_crashing_a_fifth_of_the_nodes");
    let n = nodes();
    let mut sim = Sim::new(SimConfig::new(seed));
    sim.add_nodes(n);
    let join = sim.join_all(JoinOptions::default());
    assert_eq!(join.joined, n, "seed {seed}: {join:?}");
    let _ = sim.take_completions();

    let mut order: Vec<usize> = (0..n).collect();
    sim.rng().shuffle(&mut order);
    let crashed = order[..n / 5].to_vec();
    for &i in &crashed {
        sim.crash(i);
    }
    sim.run_for(Duration::from_secs(120));
    let live: Vec<usize> = (0..n).filter(|&i| sim.is_up(i)).collect();

    let keys: Vec<Id> = (0..30).map(|_| Id::random(sim.rng())).collect();
    let values: Vec<Bytes> = (0..keys.len())
        .map(|k| Bytes::from(format!("after-crash-{k}")))
        .collect();
    let stored = put_all(&mut sim, &live, &keys, &values);
    assert_eq!(stored, keys.len(), "seed {seed}: some puts stored nowhere");
    let rate = get_all(&mut sim, &live, &keys, &values);
    assert_eq!(
        rate, 1.0,
        "seed {seed}: survivors found {rate} of the keys put after the crash"
    );

    for &i in &crashed {
        sim.restart(i, 3).expect("a crashed node restarts");
    }
    assert!(
        sim.run_until_idle(sim.now() + Duration::from_secs(60)),
        "seed {seed}: rejoins did not finish"
    );
    let rejoined = sim
        .take_completions()
        .iter()
        .filter(|c| matches!(c.event(), Some(Event::Joined { contacts, .. }) if *contacts > 0))
        .count();
    assert_eq!(
        rejoined,
        crashed.len(),
        "seed {seed}: restarted nodes did not all rejoin"
    );
    // Fresh keys: a get stops at the first node holding any value for its
    // key, so a key holding values from before might answer with those.
    let keys: Vec<Id> = (0..30).map(|_| Id::random(sim.rng())).collect();
    let values: Vec<Bytes> = (0..keys.len())
        .map(|k| Bytes::from(format!("after-restart-{k}")))
        .collect();
    let stored = put_all(&mut sim, &live, &keys, &values);
    assert_eq!(
        stored,
        keys.len(),
        "seed {seed}: some puts after the restart stored nowhere"
    );
    let rate = get_all(&mut sim, &crashed, &keys, &values);
    assert_eq!(
        rate, 1.0,
        "seed {seed}: restarted nodes found {rate} of the new keys"
    );
}

/// Spec §3.4: when every node puts the same key, the node closest to it
/// sees at most about beta × log2(n) put RPCs per minute.
#[test]
fn hot_spot_load_at_the_closest_node_is_bounded() {
    let seed = common::announce("hot_spot_load_at_the_closest_node_is_bounded");
    let net = NetParams {
        nodes: 100,
        seed,
        latency: LatencyKind::Sphere,
        loss: 0.0,
    };
    let p = HotspotParams::new(net, 3);
    let r = experiments::hotspot(&p).expect("the network builds");
    assert!(
        r.aggregate_puts_per_min >= 5900.0,
        "seed {seed}: {}",
        json(&r)
    );
    assert!(
        r.closest_node_rpcs_per_min <= r.bound as f64,
        "seed {seed}: closest node {} RPCs/min > bound {}: {}",
        r.closest_node_rpcs_per_min,
        r.bound,
        json(&r)
    );
    // The value spread over more than the l = 4 slots of one node.
    assert!(r.nodes_storing_value > 1, "seed {seed}: {}", json(&r));
    assert!(r.get_success_rate > 0.99, "seed {seed}: {}", json(&r));
}
