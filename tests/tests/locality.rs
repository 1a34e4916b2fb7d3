//! What the latency hierarchy buys (issue 3, "What it must show"): gets for
//! objects held nearby are answered by the tight levels and are faster than
//! with one global level, and `nodes()` names a proxy nearer the target
//! than a random one. Small networks so CI stays quick; the issue's goals
//! at full size are the `#[ignore]`d tests at the end (run them with
//! `cargo test --release -p coral-tests --test locality -- --ignored`).
//! Every message carries the seed and the report (replay with
//! `CORAL_SIM_SEED=<seed>`, scale with `CORAL_SIM_NODES`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

mod common;

use std::sync::OnceLock;

use coral_tests::experiments::ClusterParams;
use coral_tests::locality::{self, LatencyParams, LatencyReport, NodesParams, NodesReport};

/// Virtual minutes before the workload in CI: the issue's convergence
/// budget, so clusters have formed.
const MINUTES: u32 = 10;

/// Virtual minutes before the workload of the full-size goals: the cluster
/// test's run length, with room past the convergence budget.
const FULL_MINUTES: u32 = 15;

fn net(levels: usize) -> ClusterParams {
    let nodes = common::env_u64("CORAL_SIM_NODES", 80) as usize;
    let mut p = ClusterParams::synthetic(nodes, common::seed(), MINUTES);
    if levels == 1 {
        p.levels = locality::one_level();
    }
    p
}

/// The one-level and three-level runs of one seed, shared by the tests.
fn runs() -> &'static (LatencyReport, LatencyReport) {
    static RUNS: OnceLock<(LatencyReport, LatencyReport)> = OnceLock::new();
    RUNS.get_or_init(|| {
        (
            locality::latency(&LatencyParams::new(net(1))),
            locality::latency(&LatencyParams::new(net(3))),
        )
    })
}

fn json<T: serde::Serialize>(r: &T) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

#[test]
fn both_settings_issue_the_same_gets_and_find_them() {
    let seed = common::announce("both_settings_issue_the_same_gets_and_find_them");
    let (one, three) = runs();
    assert!(
        one.gets > 0,
        "seed {seed}: no client had a near holder: {}",
        json(one)
    );
    assert_eq!(
        (one.gets, one.clients_without_near_holder),
        (three.gets, three.clients_without_near_holder),
        "seed {seed}: the workload must not depend on the levels"
    );
    for r in [one, three] {
        assert_eq!(r.join.joined, r.nodes, "seed {seed}: {}", json(r));
        assert!(
            r.put_success_rate >= 0.99 && r.get_success_rate >= 0.95,
            "seed {seed}: puts or gets failed: {}",
            json(r)
        );
    }
    assert_eq!(one.found_at_level.len(), 1, "seed {seed}: {}", json(one));
    assert_eq!(
        three.found_at_level.len(),
        3,
        "seed {seed}: {}",
        json(three)
    );
}

#[test]
fn three_levels_make_near_gets_faster() {
    let seed = common::announce("three_levels_make_near_gets_faster");
    let (one, three) = runs();
    assert!(
        three.get_latency_ms_p50 < one.get_latency_ms_p50,
        "seed {seed}: 3-level p50 {:.1} ms not below 1-level p50 {:.1} ms:\n{}\n{}",
        three.get_latency_ms_p50,
        one.get_latency_ms_p50,
        json(one),
        json(three)
    );
}

/// Whatever the clusters look like, a get whose client and holder share a
/// level-2 cluster should be answered there: the holder put its value at
/// that level, and a get starts at level 2.
#[test]
fn gets_are_answered_at_level_2_when_clustering_allows() {
    let seed = common::announce("gets_are_answered_at_level_2_when_clustering_allows");
    let (_, three) = runs();
    let (found, shared) = (three.found_at_level[2], three.same_cluster_at_level[2]);
    assert!(
        shared > 0.0,
        "seed {seed}: no client shares a level-2 cluster with a near holder: {}",
        json(three)
    );
    assert!(
        found >= 0.9 * shared,
        "seed {seed}: {found:.3} of gets answered at level 2, but {shared:.3} shared the cluster: {}",
        json(three)
    );
}

fn nodes_report() -> &'static NodesReport {
    static REPORT: OnceLock<NodesReport> = OnceLock::new();
    REPORT.get_or_init(|| {
        let nodes = common::env_u64("CORAL_SIM_NODES", 80) as usize;
        let mut p = NodesParams::new(ClusterParams::synthetic(nodes, common::seed(), MINUTES));
        p.targets = 40;
        locality::nodes(&p)
    })
}

#[test]
fn nodes_names_a_proxy_nearer_than_random() {
    let seed = common::announce("nodes_names_a_proxy_nearer_than_random");
    let r = nodes_report();
    assert_eq!(r.answered, r.targets, "seed {seed}: {}", json(r));
    assert!(
        r.ratio.p50 < r.random_ratio.p50 / 2.0,
        "seed {seed}: nodes() answer (p50 ratio {:.2}) is not clearly nearer than a random node ({:.2}): {}",
        r.ratio.p50,
        r.random_ratio.p50,
        json(r)
    );
}

/// The DSHT's router and prefix hints name nodes nearer the target than the
/// asker's local ranking does, and they are used.
#[test]
fn router_hints_beat_the_local_ranking() {
    let seed = common::announce("router_hints_beat_the_local_ranking");
    let r = nodes_report();
    assert!(
        r.answers.hinted > 0,
        "seed {seed}: no hint used: {}",
        json(r)
    );
    assert!(
        r.ratio.p50 <= r.local_ratio.p50,
        "seed {seed}: with hints p50 {:.2}, local nodes() p50 {:.2}: {}",
        r.ratio.p50,
        r.local_ratio.p50,
        json(r)
    );
}

/// A node at the target's host ranks its contacts by its own RTTs, which
/// are the target's: its first answer should be close to the nearest node.
#[test]
fn nodes_ranked_from_the_targets_host_is_near_the_nearest() {
    let seed = common::announce("nodes_ranked_from_the_targets_host_is_near_the_nearest");
    let r = nodes_report();
    assert!(r.colocated_ratio.p50 <= 1.5, "seed {seed}: {}", json(r));
}

#[test]
fn same_seed_same_run() {
    let seed = common::announce("same_seed_same_run");
    let p = ClusterParams::synthetic(40, seed, 3);
    let a = locality::latency(&LatencyParams::new(p.clone()));
    let b = locality::latency(&LatencyParams::new(p));
    assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
    assert_eq!(json(&a), json(&b), "seed {seed}");
}

// ----- the issue's goals at full size (slow in debug: run with --release --ignored)

fn full(levels: usize) -> LatencyReport {
    let nodes = common::env_u64("CORAL_SIM_NODES", 500) as usize;
    let mut p = ClusterParams::synthetic(nodes, common::seed(), FULL_MINUTES);
    if levels == 1 {
        p.levels = locality::one_level();
    }
    let mut lp = LatencyParams::new(p);
    // "Held nearby": within half the level-2 diameter, the pairs the
    // cluster experiment's coverage counts. Pairs up to the full 20 ms
    // cannot all share 20 ms clusters (two such pairs can span 40 ms).
    lp.near_holder = std::time::Duration::from_millis(10);
    locality::latency(&lp)
}

/// Goal: with 3 levels the p50 get latency is at most half the single-level
/// p50, and most gets for nearby-held objects are answered at level 2.
#[test]
#[ignore = "500 nodes: cargo test --release -p coral-tests --test locality -- --ignored"]
fn goal_latency_halved_and_most_near_gets_at_level_2() {
    let seed = common::announce("goal_latency_halved_and_most_near_gets_at_level_2");
    let (one, three) = (full(1), full(3));
    assert!(
        three.get_latency_ms_p50 <= one.get_latency_ms_p50 / 2.0,
        "seed {seed}:\n{}\n{}",
        json(&one),
        json(&three)
    );
    assert!(
        three.found_at_level[2] > 0.5,
        "seed {seed}: {}",
        json(&three)
    );
}

/// Goal: the median RTT ratio of `nodes(2, 1, target, http)`'s answer to
/// the nearest node is at most 1.5.
#[test]
#[ignore = "500 nodes: cargo test --release -p coral-tests --test locality -- --ignored"]
fn goal_nodes_median_ratio_at_most_1_5() {
    let seed = common::announce("goal_nodes_median_ratio_at_most_1_5");
    let nodes = common::env_u64("CORAL_SIM_NODES", 500) as usize;
    let r = locality::nodes(&NodesParams::new(ClusterParams::synthetic(
        nodes,
        seed,
        FULL_MINUTES,
    )));
    assert!(r.ratio.p50 <= 1.5, "seed {seed}: {}", json(&r));
}
