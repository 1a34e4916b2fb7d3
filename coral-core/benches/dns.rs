//! The DNS redirector's user-space cost per query: decode, level
//! selection, the answer (from the answer cache, or chosen anew), encode.
//! The kernel's share (recvmmsg/sendmmsg) is what scripts/bench-dns.sh
//! measures on top of this against NSD; a profile there put about 1.0 µs of
//! user time per query on us and 0.5 µs on NSD (issue 6).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use coral_core::Node;
use coral_core::config::Config;
use coral_core::contact::{ClusterInfo, Services};
use coral_core::dns::{DnsConfig, DnsServer, Handled, Transport};
use coral_core::id::Id;
use coral_core::time::Instant;
use coral_core::wire::{Body, Message};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Message as DnsMessage, Query};
use hickory_proto::rr::{Name, RecordType};

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 8091))
}

/// A three-level node that has heard from 200 proxies and DNS servers.
fn node(now: Instant) -> Node {
    let config = Config {
        seed: 1,
        services: Services::HTTP.with(Services::DNS),
        ..Config::default()
    };
    let mut node = Node::new(config, addr(0), now);
    let mut out = Vec::new();
    for i in 1..200u32 {
        let m = Message {
            request_id: u64::from(i),
            sender: Id::for_node(addr(i)),
            services: Services::HTTP.with(Services::DNS),
            clusters: node
                .clusters()
                .into_iter()
                .map(|c| ClusterInfo { age_secs: 60, ..c })
                .collect(),
            body: Body::Ping,
        };
        let mut buf = Vec::new();
        m.encode(&mut buf);
        node.handle_datagram(now, addr(i), &buf);
        while node.poll_transmit(&mut out).is_some() {}
    }
    node
}

/// Queries for distinct Coralized names, as dnsperf sends them (no EDNS).
fn queries(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut m = DnsMessage::query();
            let name = Name::from_ascii(format!("host{i}.example.com.nyud.net.")).unwrap();
            m.add_query(Query::query(name, RecordType::A));
            m.to_vec().unwrap()
        })
        .collect()
}

/// A server that has measured `resolver` (near: level 2) and looked up its
/// hints.
fn measured(config: DnsConfig, node: &Node, now: Instant, resolver: SocketAddr) -> DnsServer {
    let mut s = DnsServer::new(config, node.levels().len()).unwrap();
    let mut out = Vec::new();
    let q = &queries(1)[0];
    let _ = s.handle_query(now, node, resolver, Transport::Udp, 0, q, &mut out);
    while let Some(t) = s.poll_probe() {
        s.handle_probe_result(now, node, t, Some(Duration::from_millis(5)), &[]);
    }
    while let Some(l) = s.poll_lookup() {
        s.handle_lookup_result(now, node, l.target, Vec::new());
    }
    while s.poll_answer().is_some() {}
    s
}

fn bench(c: &mut Criterion) {
    let now = Instant::from_millis(1000);
    let node = node(now);
    let resolver: SocketAddr = "192.0.2.53:5353".parse().unwrap();
    let qs = queries(1024);
    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(1));
    let cached = DnsConfig {
        rrl_rate: 0,
        ..DnsConfig::default()
    };
    let uncached = DnsConfig {
        answer_cache: Duration::ZERO,
        ..cached.clone()
    };
    for (name, config) in [
        ("coralized_a_cached", cached),
        ("coralized_a_chosen", uncached),
    ] {
        let mut s = measured(config, &node, now, resolver);
        let mut out = Vec::with_capacity(1500);
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let q = &qs[i & 1023];
                i += 1;
                let h = s.handle_query(
                    now,
                    &node,
                    resolver,
                    Transport::Udp,
                    0,
                    black_box(q),
                    &mut out,
                );
                assert_eq!(h, Handled::Reply);
                black_box(&out);
            })
        });
        let st = s.stats();
        eprintln!(
            "{name}: {} queries, {} from the cache, answers by level {:?}, {} bytes",
            st.queries,
            st.cached_answers,
            st.answered_at_level,
            out.len()
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
