//! Same seed, same run: the simulator and the core replay bit for bit.
//!
//! A mismatch here means something outside the seed reached the behaviour: a
//! `HashMap` iteration order, a wall clock, an address-dependent allocation.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coral_core::Levels;
use coral_core::id::Id;
use coral_tests::sim::{Command, Completion, JoinOptions, Sim, SimConfig, SimCounters};

struct Run {
    hash: u64,
    completions: Vec<Completion>,
    counters: SimCounters,
}

/// 50 nodes with 5% loss: join, 20 puts, 100 gets, a crash and a restart,
/// then more gets.
fn scenario(seed: u64) -> Run {
    let mut cfg = SimConfig::new(seed);
    cfg.loss = 0.05;
    let mut sim = Sim::new(cfg);
    let tapped = Rc::new(Cell::new(0u64));
    let counter = tapped.clone();
    sim.set_tap(Some(Box::new(move |_, _, _, _| {
        counter.set(counter.get() + 1)
    })));
    sim.add_nodes(50);
    sim.join_all(JoinOptions::default());
    let mut completions = sim.take_completions();
    let keys: Vec<Id> = (0..20).map(|_| Id::random(sim.rng())).collect();
    let t = sim.now();
    for (k, key) in keys.iter().enumerate() {
        let who = sim.rng().below(50) as usize;
        let at = t + sim.rng().jitter(Duration::from_secs(5));
        let value = Bytes::from(format!("value-{k}"));
        let put = Command::Put {
            key: *key,
            value,
            ttl: Duration::from_secs(600),
            levels: Levels::ALL,
        };
        sim.schedule(at, who, k as u64, put);
    }
    sim.run_for(Duration::from_secs(30));
    let t = sim.now();
    for i in 0..100u64 {
        let who = sim.rng().below(50) as usize;
        let key = keys[sim.rng().below(keys.len() as u64) as usize];
        let at = t + sim.rng().jitter(Duration::from_secs(5));
        sim.schedule(
            at,
            who,
            i,
            Command::Get {
                key,
                levels: Levels::ALL,
            },
        );
    }
    sim.run_for(Duration::from_secs(2));
    sim.crash(7);
    sim.run_for(Duration::from_secs(30));
    sim.restart(7, 3).expect("node 7 restarts");
    sim.run_for(Duration::from_secs(10));
    sim.get(7, keys[0], Levels::ALL).expect("node 7 is up");
    sim.run_for(Duration::from_secs(60));
    completions.extend(sim.take_completions());
    assert_eq!(
        tapped.get(),
        sim.counters().delivered,
        "the tap sees every delivery"
    );
    Run {
        hash: sim.trace_hash(),
        completions,
        counters: sim.counters(),
    }
}

#[test]
fn same_seed_same_trace_and_results() {
    let seed = common::announce("same_seed_same_trace_and_results");
    let a = scenario(seed);
    let b = scenario(seed);
    assert!(
        a.counters.delivered > 1000,
        "seed {seed}: too little traffic: {:?}",
        a.counters
    );
    assert!(
        a.counters.lost > 0,
        "seed {seed}: the loss model never fired"
    );
    assert!(
        a.completions.len() > 100,
        "seed {seed}: only {} completions",
        a.completions.len()
    );
    assert_eq!(a.hash, b.hash, "seed {seed}: trace hashes differ");
    assert_eq!(a.counters, b.counters, "seed {seed}");
    assert!(
        a.completions == b.completions,
        "seed {seed}: completions differ"
    );

    let c = scenario(seed.wrapping_add(1));
    assert_ne!(
        a.hash,
        c.hash,
        "seeds {seed} and {}: same trace hash",
        seed.wrapping_add(1)
    );
}
