//! Simulator speed: virtual minutes per wall second.
//!
//! A joined network (built once, outside the measurement) does a modest
//! application load: every node puts one of 1024 keys and gets two random
//! ones per virtual minute, at random instants. One iteration advances the
//! network by one virtual minute, so criterion's throughput line, in
//! "elem/s", reads directly as virtual minutes per wall second. The
//! `_3_levels` case runs Coral's hierarchy (latency clustering at levels 1
//! and 2, gets and puts at every level) on the same load.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use coral_core::Levels;
use coral_core::config::LevelConfig;
use coral_core::id::Id;
use coral_tests::sim::{Command, JoinOptions, Sim, SimConfig};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

const KEYS: usize = 1024;

fn network(nodes: usize, levels: usize) -> (Sim, Vec<Id>) {
    let mut cfg = SimConfig::new(7);
    if levels == 3 {
        cfg.node.levels = LevelConfig::coral_hierarchy();
    }
    let mut sim = Sim::new(cfg);
    sim.add_nodes(nodes);
    let report = sim.join_all(JoinOptions::default());
    eprintln!("{nodes} nodes joined: {report:?}");
    let keys = (0..KEYS).map(|_| Id::random(sim.rng())).collect();
    (sim, keys)
}

fn one_minute(sim: &mut Sim, keys: &[Id]) {
    let start = sim.now();
    let minute = Duration::from_secs(60);
    for i in 0..sim.len() {
        let value = Bytes::from(sim.addr(i).to_string().into_bytes());
        let key = keys[sim.rng().below(KEYS as u64) as usize];
        let at = start + sim.rng().jitter(minute);
        let put = Command::Put {
            key,
            value,
            ttl: Duration::from_secs(3600),
            levels: Levels::ALL,
        };
        sim.schedule(at, i, 0, put);
        for _ in 0..2 {
            let key = keys[sim.rng().below(KEYS as u64) as usize];
            let at = start + sim.rng().jitter(minute);
            sim.schedule(
                at,
                i,
                0,
                Command::Get {
                    key,
                    levels: Levels::ALL,
                },
            );
        }
    }
    sim.run_until(start + minute);
    let _ = sim.take_completions();
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("virtual_minute");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(1));
    for (nodes, levels, samples, secs) in [
        (1000usize, 1usize, 10usize, 20u64),
        (1000, 3, 10, 30),
        (10_000, 1, 10, 60),
    ] {
        let (mut sim, keys) = network(nodes, levels);
        // One warm-up minute so the bench measures the steady state.
        one_minute(&mut sim, &keys);
        group.sample_size(samples);
        group.measurement_time(Duration::from_secs(secs));
        group.warm_up_time(Duration::from_millis(1));
        let name = if levels == 1 {
            format!("{nodes}_nodes")
        } else {
            format!("{nodes}_nodes_{levels}_levels")
        };
        group.bench_function(name, |b| b.iter(|| one_minute(&mut sim, &keys)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
