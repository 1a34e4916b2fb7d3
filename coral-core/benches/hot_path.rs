//! The RPC hot path: decode a get-probe, handle it, encode the reply, on a
//! node whose routing table and store are full. Goal: 1 M RPC/s per core.
//! The three-level case measures what carrying and evaluating cluster info
//! on every message costs (issue 3). `get_round_trip` is the other side:
//! the core work of one DSHT get in a network of two (the requester's get,
//! probe, reply and event, and the other node's answer), the user-space
//! part of what coral-mio's RPC bench measures between two nodes (issue 7).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use coral_core::config::{Config, LevelConfig};
use coral_core::contact::{ClusterInfo, Services};
use coral_core::id::{Distance, Id};
use coral_core::rng::Rng;
use coral_core::time::Instant;
use coral_core::wire::{Body, Message, Scope};
use coral_core::{Event, Levels, Node};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8091))
}

/// A message from peer `from` carrying cluster info for `levels` levels:
/// level 0 global; higher levels in a cluster named after the peer's /24,
/// so a three-level node has many clusters to judge.
fn msg(levels: u8, from: u32, request_id: u64, body: Body) -> Vec<u8> {
    let clusters = (0..levels)
        .map(|l| ClusterInfo {
            level: l,
            cluster: if l == 0 {
                Id::hash("coral-cluster", &[0])
            } else {
                Id::hash("bench", &[l, (from >> 8) as u8])
            },
            size: 1000,
            age_secs: 60,
        })
        .collect();
    let m = Message {
        request_id,
        sender: Id::for_node(addr(from)),
        services: Services::HTTP,
        clusters,
        body,
    };
    let mut buf = Vec::new();
    m.encode(&mut buf);
    buf
}

/// A node that has heard from 20 000 peers (so every bucket it can fill is
/// full) and holds `l` values for 10 000 keys; with `levels` = 3 it runs
/// latency clustering at levels 1 and 2.
fn loaded_node(levels: u8) -> (Node, Vec<Id>) {
    let now = Instant::from_millis(1000);
    let mut config = Config {
        seed: 1,
        levels: vec![LevelConfig::GLOBAL],
        ..Config::default()
    };
    if levels == 3 {
        config.levels = LevelConfig::coral_hierarchy();
    }
    let mut node = Node::new(config, addr(0), now);
    let scope = Scope {
        level: 0,
        cluster: Id::hash("coral-cluster", &[0]),
    };
    let mut out = Vec::new();
    for i in 1..20_000 {
        node.handle_datagram(now, addr(i), &msg(levels, i, u64::from(i), Body::Ping));
        while node.poll_transmit(&mut out).is_some() {}
    }
    let mut rng = Rng::new(7);
    let keys: Vec<Id> = (0..10_000).map(|_| Id::random(&mut rng)).collect();
    for (n, key) in keys.iter().enumerate() {
        for v in 0..4u32 {
            let value = Bytes::from(addr(v + 1).to_string());
            let body = Body::Store {
                scope,
                key: *key,
                value,
                ttl_secs: 3600,
            };
            let id = (n * 4) as u64 + u64::from(v);
            node.handle_datagram(now, addr(v + 1), &msg(levels, v + 1, id, body));
            while node.poll_transmit(&mut out).is_some() {}
        }
    }
    (node, keys)
}

/// Delivers every datagram each node has for the other until both are quiet.
fn shuttle(now: Instant, nodes: &mut [Node; 2], out: &mut Vec<u8>) {
    let addrs = [nodes[0].contact().addr, nodes[1].contact().addr];
    let mut moved = true;
    while moved {
        moved = false;
        for from in 0..2 {
            while let Some(t) = nodes[from].poll_transmit(out) {
                assert_eq!(t.destination, addrs[1 - from]);
                nodes[1 - from].handle_datagram(now, addrs[from], &out[..t.size]);
                moved = true;
            }
        }
    }
}

/// Node B gets keys that node A, its only contact, does not hold: one
/// get-probe round trip per get, as in coral-mio's RPC bench.
fn get_round_trip(c: &mut Criterion) {
    let now = Instant::from_millis(1000);
    let config = |seed| Config {
        seed,
        levels: vec![LevelConfig::GLOBAL],
        ..Config::default()
    };
    let mut nodes = [
        Node::new(config(1), addr(1), now),
        Node::new(config(2), addr(2), now),
    ];
    let mut out = Vec::with_capacity(1500);
    nodes[0].join(now, &[]).unwrap();
    nodes[1].join(now, &[addr(1)]).unwrap();
    shuttle(now, &mut nodes, &mut out);
    while nodes[1].poll_event().is_some() {}
    while nodes[0].poll_event().is_some() {}
    let mut rng = Rng::new(11);
    let keys: Vec<Id> = (0..1024).map(|_| Id::random(&mut rng)).collect();
    let mut i = 0;
    let mut g = c.benchmark_group("rpc");
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_round_trip", |b| {
        b.iter(|| {
            i += 1;
            nodes[1].get(now, keys[i & 1023], Levels::ALL).unwrap();
            shuttle(now, &mut nodes, &mut out);
            let done = nodes[1].poll_event();
            assert!(matches!(done, Some(Event::GetDone { .. })), "{done:?}");
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let now = Instant::from_millis(2000);
    let scope = Scope {
        level: 0,
        cluster: Id::hash("coral-cluster", &[0]),
    };
    let mut rng = Rng::new(9);
    let mut out = Vec::with_capacity(1500);
    let mut g = c.benchmark_group("rpc");
    g.throughput(Throughput::Elements(1));

    for levels in [1u8, 3] {
        let (mut node, keys) = loaded_node(levels);
        eprintln!(
            "{levels} level(s): routing table {} contacts",
            node.routing_len(0)
        );
        // Requests come from 4000 different peers, so clustering sees many.
        let from = |i: u64| 5 + (i as u32 % 4000) * 5;
        let hits: Vec<(u32, Vec<u8>)> = (0..1024)
            .map(|i| {
                let key = keys[rng.below(keys.len() as u64) as usize];
                let target = Distance::ZERO;
                (
                    from(i),
                    msg(levels, from(i), i, Body::GetProbe { scope, key, target }),
                )
            })
            .collect();
        let misses: Vec<(u32, Vec<u8>)> = (0..1024)
            .map(|i| {
                let key = Id::random(&mut rng);
                let target = Id::random(&mut rng).distance(&key).half();
                (
                    from(i),
                    msg(levels, from(i), i, Body::GetProbe { scope, key, target }),
                )
            })
            .collect();
        let suffix = if levels == 1 { "" } else { "_3_levels" };
        for (name, inputs) in [("get_probe_hit", &hits), ("get_probe_miss", &misses)] {
            let mut i = 0;
            g.bench_function(format!("{name}{suffix}"), |b| {
                b.iter(|| {
                    let (peer, m) = &inputs[i & 1023];
                    node.handle_datagram(now, addr(*peer), black_box(m));
                    i += 1;
                    while let Some(t) = node.poll_transmit(&mut out) {
                        black_box(&out[..t.size]);
                    }
                })
            });
        }
        if levels == 1 {
            let mut i = 0;
            g.bench_function("decode_get_probe", |b| {
                b.iter(|| {
                    i += 1;
                    black_box(Message::decode(black_box(&misses[i & 1023].1)).unwrap())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, get_round_trip, bench);
criterion_main!(benches);
