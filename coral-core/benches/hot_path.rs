//! The RPC hot path: decode a get-probe, handle it, encode the reply, on a
//! node whose routing table and store are full. Goal: 1 M RPC/s per core.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use coral_core::Node;
use coral_core::config::Config;
use coral_core::contact::{ClusterInfo, Services};
use coral_core::id::{Distance, Id};
use coral_core::rng::Rng;
use coral_core::time::Instant;
use coral_core::wire::{Body, Message, Scope};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smallvec::smallvec;

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8091))
}

fn msg(from: u32, request_id: u64, body: Body) -> Vec<u8> {
    let cluster = ClusterInfo {
        level: 0,
        cluster: Id::hash("coral-cluster", &[0]),
        size: 1000,
        age_secs: 60,
    };
    let m = Message {
        request_id,
        sender: Id::for_node(addr(from)),
        services: Services::HTTP,
        clusters: smallvec![cluster],
        body,
    };
    let mut buf = Vec::new();
    m.encode(&mut buf);
    buf
}

/// A node that has heard from 20 000 peers (so every bucket it can fill is
/// full) and holds `l` values for 10 000 keys.
fn loaded_node() -> (Node, Vec<Id>) {
    let now = Instant::from_millis(1000);
    let mut node = Node::new(
        Config {
            seed: 1,
            ..Config::default()
        },
        addr(0),
        now,
    );
    let scope = Scope {
        level: 0,
        cluster: Id::hash("coral-cluster", &[0]),
    };
    let mut out = Vec::new();
    for i in 1..20_000 {
        node.handle_datagram(now, addr(i), &msg(i, u64::from(i), Body::Ping));
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
            node.handle_datagram(
                now,
                addr(v + 1),
                &msg(v + 1, (n * 4) as u64 + u64::from(v), body),
            );
            while node.poll_transmit(&mut out).is_some() {}
        }
    }
    (node, keys)
}

fn bench(c: &mut Criterion) {
    let (mut node, keys) = loaded_node();
    eprintln!("routing table: {} contacts", node.routing_len(0));
    let now = Instant::from_millis(2000);
    let scope = Scope {
        level: 0,
        cluster: Id::hash("coral-cluster", &[0]),
    };
    let mut rng = Rng::new(9);
    let hits: Vec<Vec<u8>> = (0..1024)
        .map(|i| {
            let key = keys[rng.below(keys.len() as u64) as usize];
            msg(
                5,
                i,
                Body::GetProbe {
                    scope,
                    key,
                    target: Distance::ZERO,
                },
            )
        })
        .collect();
    let misses: Vec<Vec<u8>> = (0..1024)
        .map(|i| {
            let key = Id::random(&mut rng);
            let target = Id::random(&mut rng).distance(&key).half();
            msg(5, i, Body::GetProbe { scope, key, target })
        })
        .collect();
    let from = addr(5);
    let mut out = Vec::with_capacity(1500);

    let mut g = c.benchmark_group("rpc");
    g.throughput(Throughput::Elements(1));
    for (name, inputs) in [("get_probe_hit", &hits), ("get_probe_miss", &misses)] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                node.handle_datagram(now, from, black_box(&inputs[i & 1023]));
                i += 1;
                let t = node.poll_transmit(&mut out).expect("a reply");
                black_box(&out[..t.size]);
            })
        });
    }
    let mut i = 0;
    g.bench_function("decode_get_probe", |b| {
        b.iter(|| {
            i += 1;
            black_box(Message::decode(black_box(&misses[i & 1023])).unwrap())
        })
    });
    g.finish();
    let _ = Duration::ZERO;
}

criterion_group!(benches, bench);
criterion_main!(benches);
