//! Latency clusters as a system (issue 3, "What it must show"): from a cold
//! start on the synthetic sphere, with levels ∞ / 60 ms / 20 ms, nodes
//! gather into clusters that are pure (same cluster ⇒ RTT under the level's
//! diameter), cover close pairs, settle within 10 virtual minutes and then
//! stay put. Each goal is its own test over one shared run, so a failure
//! names the goal missed; every message carries the seed and the report
//! (replay with `CORAL_SIM_SEED=<seed>`, scale with `CORAL_SIM_NODES`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

mod common;

use std::sync::OnceLock;

use coral_tests::experiments::{self, ClusterParams, ClusterReport};

/// Virtual minutes of the shared run: the 10-minute convergence budget plus
/// room to measure switching after it.
const MINUTES: u32 = 15;

fn report() -> &'static ClusterReport {
    static REPORT: OnceLock<ClusterReport> = OnceLock::new();
    REPORT.get_or_init(|| {
        let nodes = common::env_u64("CORAL_SIM_NODES", 120) as usize;
        let p = ClusterParams::synthetic(nodes, common::seed(), MINUTES);
        experiments::clusters(&p)
    })
}

fn json(r: &ClusterReport) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// Runs in CI whatever the core's tuning: the run completes, every node
/// joins, both bounded levels are reported, and clusters actually form.
#[test]
fn smoke_clusters_form() {
    let seed = common::announce("smoke_clusters_form");
    let r = report();
    assert_eq!(r.join.joined, r.nodes, "seed {seed}: {}", json(r));
    assert_eq!(
        r.switches_sampled,
        r.switches_reported,
        "seed {seed}: sampling missed switches the nodes counted: {}",
        json(r)
    );
    let levels: Vec<u8> = r.levels.iter().map(|l| l.level).collect();
    assert_eq!(levels, [1, 2], "seed {seed}: {}", json(r));
    for l in &r.levels {
        assert!(
            l.largest > 1 && l.clusters < r.nodes,
            "seed {seed}: level {} formed no cluster: {}",
            l.level,
            json(r)
        );
    }
}

#[test]
fn same_seed_same_run() {
    let seed = common::announce("same_seed_same_run");
    let p = ClusterParams::synthetic(40, seed, 4);
    let (a, b) = (experiments::clusters(&p), experiments::clusters(&p));
    assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
    assert_eq!(json(&a), json(&b), "seed {seed}");
}

#[test]
fn clusters_are_pure() {
    let seed = common::announce("clusters_are_pure");
    let r = report();
    for l in &r.levels {
        let purity = l.purity.unwrap_or(0.0);
        assert!(
            purity >= 0.95,
            "seed {seed}: level {} purity {purity:.4} < 0.95: {}",
            l.level,
            json(r)
        );
    }
}

#[test]
fn close_pairs_share_a_cluster() {
    let seed = common::announce("close_pairs_share_a_cluster");
    let r = report();
    for l in &r.levels {
        let coverage = l.coverage.unwrap_or(0.0);
        assert!(
            coverage >= 0.8,
            "seed {seed}: level {} coverage {coverage:.4} < 0.80: {}",
            l.level,
            json(r)
        );
    }
}

#[test]
fn converges_within_ten_minutes() {
    let seed = common::announce("converges_within_ten_minutes");
    let r = report();
    let c = r.converged_after_s;
    assert!(
        c.is_some_and(|s| s <= 600.0),
        "seed {seed}: converged after {c:?} s (budget 600): {}",
        json(r)
    );
}

#[test]
fn stable_after_convergence() {
    let seed = common::announce("stable_after_convergence");
    let r = report();
    let rate = r.switches_per_node_hour_after_convergence;
    assert!(
        rate.is_some_and(|x| x < 0.1),
        "seed {seed}: {rate:?} switches per node-hour after convergence (goal < 0.1): {}",
        json(r)
    );
}
