//! The mio adapter over real sockets on loopback, by the same cases as
//! `net_tokio.rs` — join, put and get; a stopped node detected and dropped;
//! malformed datagrams counted and ignored; the admin endpoint — written
//! once over a small [`TestNode`] that either runtime implements, so the
//! mixed networks (tokio and mio nodes in one DSHT) run the very same code.
//! Every test runs on a worker thread bounded by [`LIMIT`] and asserts
//! results (values found, contacts, counters, bodies), never speed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coral_core::Levels;
use coral_core::id::Id;
use coral_tokio::config::FileConfig;
use coral_tokio::runtime::{GetResult, Joined, PutResult};
use coral_tokio::status::NodeStatus;

/// Upper bound of every test; far above what a healthy run needs.
const LIMIT: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(600);

/// Runs `f` on its own thread and fails the test if it overstays [`LIMIT`].
fn bounded(f: impl FnOnce() + Send + 'static) {
    common::bounded(LIMIT, f);
}

/// A node config with short RPC timeouts so failures show quickly on loopback.
fn config(addr: SocketAddr) -> FileConfig {
    let mut cfg = FileConfig::default();
    cfg.dsht.rpc_timeout_min_ms = Some(50);
    cfg.dsht.rpc_timeout_max_ms = Some(300);
    cfg.node.rpc = addr;
    cfg
}

fn v4(last_octet: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, last_octet), 0))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tokio,
    Mio,
}

/// A node of either runtime behind blocking calls.
enum TestNode {
    Tokio(coral_tokio::RunningNode, Arc<tokio::runtime::Runtime>),
    Mio(coral_mio::RunningNode),
}

impl TestNode {
    fn start(kind: Kind, addr: SocketAddr, seed: u64) -> Self {
        let options = config(addr).node_options(seed);
        match kind {
            Kind::Mio => Self::Mio(coral_mio::spawn(options).expect("bind a loopback address")),
            Kind::Tokio => {
                let rt = Arc::new(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .unwrap(),
                );
                let node = rt
                    .block_on(async { coral_tokio::spawn(options) })
                    .expect("bind a loopback address");
                Self::Tokio(node, rt)
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Self::Tokio(n, _) => n.handle.addr(),
            Self::Mio(n) => n.handle.addr(),
        }
    }

    fn id(&self) -> Id {
        match self {
            Self::Tokio(n, _) => n.handle.id(),
            Self::Mio(n) => n.handle.id(),
        }
    }

    fn join(&self, bootstrap: Vec<SocketAddr>) -> Joined {
        match self {
            Self::Tokio(n, rt) => rt.block_on(n.handle.join(bootstrap)),
            Self::Mio(n) => n.handle.join(bootstrap),
        }
        .expect("the node runs")
    }

    fn put(&self, key: Id, value: &'static [u8]) -> PutResult {
        let value = Bytes::from_static(value);
        match self {
            Self::Tokio(n, rt) => rt.block_on(n.handle.put(key, value, TTL, Levels::ALL)),
            Self::Mio(n) => n.handle.put(key, value, TTL, Levels::ALL),
        }
        .expect("the node runs")
    }

    fn get(&self, key: Id) -> GetResult {
        match self {
            Self::Tokio(n, rt) => rt.block_on(n.handle.get(key, Levels::ALL)),
            Self::Mio(n) => n.handle.get(key, Levels::ALL),
        }
        .expect("the node runs")
    }

    fn status(&self) -> NodeStatus {
        match self {
            Self::Tokio(n, rt) => rt.block_on(n.handle.status()),
            Self::Mio(n) => n.handle.status(),
        }
        .expect("the node runs")
    }

    fn shutdown(self) {
        match self {
            Self::Tokio(n, rt) => rt.block_on(n.shutdown()),
            Self::Mio(n) => n.shutdown(),
        }
    }
}

fn level0_addrs(s: &NodeStatus) -> Vec<SocketAddr> {
    s.levels[0].contacts.iter().map(|c| c.addr).collect()
}

/// One node per kind, on consecutive loopback addresses from `base`; the
/// first founds the network and the others join through it.
fn network(kinds: &[Kind], base: u8, seed: u64) -> Vec<TestNode> {
    let nodes: Vec<TestNode> = kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| TestNode::start(k, v4(base + i as u8), seed + i as u64))
        .collect();
    assert_eq!(
        nodes[0].join(vec![]).contacts,
        0,
        "the first founds the network"
    );
    for n in &nodes[1..] {
        let j = n.join(vec![nodes[0].addr()]);
        assert!(
            j.contacts >= 1,
            "{} knows the first after joining: {j:?}",
            n.addr()
        );
    }
    nodes
}

/// Node 1 puts; every other node gets it; a missing key is not found.
fn join_put_and_get(kinds: &[Kind], base: u8, seed: u64) {
    let nodes = network(kinds, base, seed);
    let key = Id::for_url("http://127.0.0.9:8080/index.html");
    let put = nodes[1].put(key, b"held by 1");
    assert!(!put.stored.is_empty(), "the put was stored: {put:?}");
    for (i, getter) in nodes.iter().enumerate().filter(|(i, _)| *i != 1) {
        let got = getter.get(key);
        assert_eq!(
            got.values,
            vec![Bytes::from_static(b"held by 1")],
            "get at node {i} ({:?}): {got:?}",
            kinds[i]
        );
        assert!(got.level.is_some());
    }
    let missing = nodes[2].get(Id::for_url("http://nowhere.invalid/"));
    assert!(missing.values.is_empty(), "{missing:?}");

    // The RPCs really crossed the sockets.
    let s0 = nodes[0].status();
    assert!(s0.adapter.datagrams_in > 0 && s0.adapter.datagrams_out > 0);
    assert!(
        s0.stats.rpcs_in.get_probe + s0.stats.rpcs_in.store > 0,
        "{s0:?}"
    );
    for n in &nodes {
        assert_eq!(n.status().stats.malformed, 0);
    }
    for n in nodes {
        n.shutdown();
    }
}

#[test]
fn three_mio_nodes_join_put_and_get() {
    bounded(|| join_put_and_get(&[Kind::Mio; 3], 151, 1));
}

#[test]
fn a_mixed_network_joins_puts_and_gets() {
    use Kind::{Mio, Tokio};
    bounded(|| {
        join_put_and_get(&[Mio, Tokio, Mio], 154, 101);
        join_put_and_get(&[Tokio, Mio, Tokio], 157, 201);
    });
}

/// Three tokio and three mio nodes; each puts its own key, and every node
/// gets every key.
#[test]
fn in_a_mixed_network_every_node_finds_every_put() {
    use Kind::{Mio, Tokio};
    bounded(|| {
        let kinds = [Tokio, Mio, Tokio, Mio, Tokio, Mio];
        let nodes = network(&kinds, 160, 301);
        const VALUES: [&[u8]; 6] = [b"v0", b"v1", b"v2", b"v3", b"v4", b"v5"];
        let keys: Vec<Id> = (0..nodes.len())
            .map(|i| Id::for_url(&format!("http://127.0.0.9:8080/mixed/{i}")))
            .collect();
        for (i, n) in nodes.iter().enumerate() {
            let put = n.put(keys[i], VALUES[i]);
            assert!(
                !put.stored.is_empty(),
                "put by {:?} node {i}: {put:?}",
                kinds[i]
            );
        }
        for (g, getter) in nodes.iter().enumerate() {
            for (i, &key) in keys.iter().enumerate() {
                let got = getter.get(key);
                assert_eq!(
                    got.values,
                    vec![Bytes::from_static(VALUES[i])],
                    "{:?} node {g} getting the key of {:?} node {i}",
                    kinds[g],
                    kinds[i]
                );
            }
        }
        for n in nodes {
            n.shutdown();
        }
    });
}

/// Node 2 stops; node 0 notices through timeouts and drops it, keeps node 1,
/// and still finds a value stored away from node 2.
fn a_stopped_node_is_detected(kinds: &[Kind; 3], base: u8, seed: u64) {
    let mut nodes = network(kinds, base, seed);
    let c = nodes.pop().unwrap();
    let (a, b) = (&nodes[0], &nodes[1]);
    let c_addr = c.addr();
    let sa = a.status();
    assert!(
        level0_addrs(&sa).contains(&c_addr),
        "a learned of c when it joined: {:?}",
        level0_addrs(&sa)
    );
    // A key whose value b stores away from c, so it outlives c.
    let c_id = c.id();
    let key = (0..32)
        .map(|i| Id::for_url(&format!("http://127.0.0.9:8080/{i}.txt")))
        .find(|&k| {
            let put = b.put(k, b"b");
            !put.stored.is_empty() && put.stored.iter().all(|(_, id)| *id != c_id)
        })
        .expect("some key is stored away from c");

    c.shutdown();

    // Lookups from a keep asking c until its failures add up and the core
    // drops it; the loop is bounded by the test's limit.
    let mut i = 0u32;
    let sa = loop {
        a.get(Id::for_url(&format!("http://probe.invalid/{i}")));
        i += 1;
        let s = a.status();
        if !level0_addrs(&s).contains(&c_addr) {
            break s;
        }
    };
    assert!(sa.stats.contacts_dropped >= 1, "{:?}", sa.stats);
    assert!(sa.stats.timeouts >= 1, "{:?}", sa.stats);
    assert!(
        level0_addrs(&sa).contains(&b.addr()),
        "the live node stays: {:?}",
        level0_addrs(&sa)
    );
    let got = a.get(key);
    assert_eq!(got.values, vec![Bytes::from_static(b"b")], "{got:?}");
    for n in nodes {
        n.shutdown();
    }
}

#[test]
fn a_stopped_mio_node_is_detected_and_dropped() {
    bounded(|| a_stopped_node_is_detected(&[Kind::Mio; 3], 171, 11));
}

#[test]
fn a_stopped_node_is_detected_across_runtimes() {
    use Kind::{Mio, Tokio};
    bounded(|| {
        a_stopped_node_is_detected(&[Mio, Tokio, Tokio], 174, 21);
        a_stopped_node_is_detected(&[Tokio, Mio, Mio], 177, 31);
    });
}

#[test]
fn malformed_datagrams_are_counted_and_ignored() {
    bounded(|| {
        let a = TestNode::start(Kind::Mio, v4(181), 41);
        a.join(vec![]);
        let sender = std::net::UdpSocket::bind("127.0.0.182:0").unwrap();
        let big = vec![0xAB; 60_000];
        let junk: [&[u8]; 3] = [b"", b"\xffnot a coral message", &big];
        for d in junk {
            sender.send_to(d, a.addr()).unwrap();
        }
        let s = loop {
            let s = a.status();
            if s.adapter.datagrams_in >= 3 {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(s.stats.malformed, 3, "{:?}", s.stats);
        assert_eq!(s.adapter.datagrams_in, 3);
        assert_eq!(s.adapter.datagrams_out, 0, "nothing answers garbage");
        assert_eq!(s.levels[0].routing_len, 0, "garbage adds no contact");

        // The node still works: a peer joins it and finds what it stored.
        let b = TestNode::start(Kind::Mio, v4(183), 42);
        assert_eq!(b.join(vec![a.addr()]).contacts, 1);
        let key = Id::for_url("http://127.0.0.9:8080/logo.svg");
        a.put(key, b"a");
        assert_eq!(b.get(key).values, vec![Bytes::from_static(b"a")]);
        assert_eq!(a.status().stats.malformed, 3);
        a.shutdown();
        b.shutdown();
    });
}

/// Sends `request` and reads the whole answer (the server closes).
fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET path`: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = raw_http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let (head, body) = r.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "{head}"
    );
    (code, body.to_owned())
}

/// A mio node with its admin endpoint on the same loop.
fn with_admin(last_octet: u8, seed: u64) -> (coral_mio::RunningNode, SocketAddr) {
    let listener = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, last_octet), 0)).unwrap();
    let admin = listener.local_addr().unwrap();
    let options = config(v4(last_octet)).node_options(seed);
    let node = coral_mio::spawn_with(
        options,
        Some(listener),
        Box::new(coral_mio::runtime::LogEvents),
    )
    .unwrap();
    (node, admin)
}

#[test]
fn admin_endpoints_answer() {
    bounded(|| {
        let (a, admin_addr) = with_admin(185, 51);
        let b = TestNode::start(Kind::Tokio, v4(186), 52);
        a.handle.join(vec![]).unwrap();
        b.join(vec![a.handle.addr()]);
        let id = a.handle.id().to_string();

        let (code, metrics) = http_get(admin_addr, "/metrics");
        assert_eq!(code, 200);
        for want in [
            format!("coral_node_info{{id=\"{id}\""),
            "# TYPE coral_rpcs_in_total counter".to_owned(),
            "coral_rpcs_in_total{type=\"ping\"} 1".to_owned(),
            "coral_malformed_datagrams_total 0".to_owned(),
            "coral_routing_contacts{level=\"0\"} 1".to_owned(),
            "coral_cluster_size{level=\"2\"} ".to_owned(),
            "coral_cluster_info{level=\"0\",cluster=\"".to_owned(),
        ] {
            assert!(metrics.contains(&want), "{want} missing from {metrics}");
        }
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
        }

        let (code, page) = http_get(admin_addr, "/");
        assert_eq!(code, 200);
        assert!(page.starts_with("<!doctype html>"), "{page}");
        assert!(page.contains(&id), "{page}");
        assert!(page.contains(&b.addr().to_string()), "{page}");

        let (code, json) = http_get(admin_addr, "/status.json");
        assert_eq!(code, 200);
        let s: NodeStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(s.id, id);
        assert_eq!(s.addr, a.handle.addr());
        assert_eq!(s.seed, 51);
        assert_eq!(s.levels.len(), 3);
        assert_eq!(s.levels[0].routing_len, 1);
        assert_eq!(s.levels[0].contacts[0].addr, b.addr());
        // The same document coral-tokio renders for the same snapshot.
        assert_eq!(
            json,
            serde_json::to_string_pretty(&s).unwrap() + "\n",
            "status.json round-trips"
        );

        let (code, _) = http_get(admin_addr, "/nope");
        assert_eq!(code, 404);
        let r = raw_http(admin_addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = raw_http(admin_addr, b"\x00\x01 garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let mut huge = b"GET / HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 9000));
        let r = raw_http(admin_addr, &huge);
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        let r = raw_http(admin_addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        a.shutdown();
        b.shutdown();
    });
}

#[test]
fn the_admin_endpoint_times_out_a_client_that_sends_no_request() {
    bounded(|| {
        let (a, admin_addr) = with_admin(187, 61);
        // Half a request head, then silence: the server answers 408 and
        // closes, while a complete request on another connection is served.
        let mut slow = TcpStream::connect(admin_addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHo").unwrap();
        let (code, _) = http_get(admin_addr, "/metrics");
        assert_eq!(code, 200);
        let mut r = String::new();
        slow.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.1 408"), "{r}");
        let (code, _) = http_get(admin_addr, "/metrics");
        assert_eq!(code, 200);
        a.shutdown();
    });
}

#[test]
fn ipv6_nodes_join_put_and_get() {
    bounded(|| {
        let any6 = SocketAddr::from((IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 0));
        let a = TestNode::start(Kind::Mio, any6, 71);
        let b = TestNode::start(Kind::Tokio, any6, 72);
        assert!(a.addr().is_ipv6());
        a.join(vec![]);
        assert_eq!(b.join(vec![a.addr()]).contacts, 1);
        let key = Id::for_url("http://[::1]/six");
        b.put(key, b"v6");
        assert_eq!(a.get(key).values, vec![Bytes::from_static(b"v6")]);
        a.shutdown();
        b.shutdown();
    });
}

#[test]
fn a_stopped_node_answers_callers_with_an_error() {
    bounded(|| {
        let a = coral_mio::spawn(config(v4(189)).node_options(81)).unwrap();
        let handle = a.handle.clone();
        a.shutdown();
        let r = handle.get(Id::for_url("http://x/"), Levels::ALL);
        assert_eq!(r, Err(coral_tokio::NodeError::Stopped));
        assert!(handle.status().is_err());
        assert!(handle.call(|node, _| node.id()).is_err());
    });
}

/// An application on the loop's thread starts operations through the node
/// and receives their events; [`coral_mio::Handle::call`] reaches it.
#[test]
fn an_application_on_the_loop_sees_the_events_of_its_operations() {
    use std::sync::atomic::{AtomicU64, Ordering};
    struct Count(Arc<AtomicU64>);
    impl coral_mio::App for Count {
        fn on_event(
            &mut self,
            _node: &mut coral_core::Node,
            _now: coral_core::time::Instant,
            event: coral_core::Event,
        ) {
            if let coral_core::Event::GetDone { values, .. } = event {
                self.0.fetch_add(values.len() as u64, Ordering::Relaxed);
            }
        }
    }
    bounded(|| {
        let found = Arc::new(AtomicU64::new(0));
        let a = TestNode::start(Kind::Mio, v4(190), 91);
        let b = coral_mio::spawn_with(
            config(v4(191)).node_options(92),
            None,
            Box::new(Count(Arc::clone(&found))),
        )
        .unwrap();
        a.join(vec![]);
        b.handle.join(vec![a.addr()]).unwrap();
        let key = Id::for_url("http://127.0.0.9:8080/app");
        a.put(key, b"app");
        for _ in 0..3 {
            b.handle
                .call(move |node, now| node.get(now, key, Levels::ALL).unwrap())
                .unwrap();
        }
        while found.load(Ordering::Relaxed) < 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(found.load(Ordering::Relaxed), 3);
        assert!(b.handle.status().unwrap().adapter.other_events >= 3);
        a.shutdown();
        b.shutdown();
    });
}

/// Counts the gets a mio node finishes.
struct GetsDone(Arc<std::sync::atomic::AtomicUsize>);

impl coral_mio::App for GetsDone {
    fn on_event(
        &mut self,
        _node: &mut coral_core::Node,
        _now: coral_core::time::Instant,
        event: coral_core::Event,
    ) {
        if let coral_core::Event::GetDone { .. } = event {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A burst of gets from a mio node leaves as GSO runs (its get-probes to
/// its one peer are one size), and a tokio peer, whose socket does no GRO,
/// receives them as the plain datagrams they are and answers every one.
#[test]
fn a_burst_of_gets_leaves_as_gso_runs_that_a_tokio_peer_answers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    bounded(|| {
        let a = TestNode::start(Kind::Tokio, v4(191), 51);
        a.join(vec![]);
        let done = Arc::new(AtomicUsize::new(0));
        let b = coral_mio::spawn_with(
            config(v4(192)).node_options(52),
            None,
            Box::new(GetsDone(Arc::clone(&done))),
        )
        .unwrap();
        assert_eq!(b.handle.join(vec![a.addr()]).unwrap().contacts, 1);
        const GETS: usize = 32;
        // All started in one turn: their probes are queued together.
        b.handle
            .call(|node, now| {
                for i in 0..GETS {
                    let key = Id::for_url(&format!("http://burst.invalid/{i}"));
                    node.get(now, key, Levels::ALL).unwrap();
                }
            })
            .unwrap();
        while done.load(Ordering::Relaxed) < GETS {
            std::thread::sleep(Duration::from_millis(10));
        }
        let sb = b.handle.status().unwrap();
        assert!(
            sb.adapter.datagrams_out_gso >= GETS as u64 / 2,
            "the probes left in GSO sends: {:?}",
            sb.adapter
        );
        let sa = a.status();
        assert!(sa.stats.rpcs_in.get_probe >= GETS as u64, "{:?}", sa.stats);
        assert_eq!(sa.stats.malformed, 0);
        assert_eq!(sb.stats.malformed, 0);
        b.shutdown();
        a.shutdown();
    });
}
