//! The tokio adapter over real sockets on loopback: nodes on distinct
//! 127.0.0.x addresses (and ::1) join, put and get; a stopped node is
//! detected and dropped; malformed datagrams are counted and ignored; the
//! admin endpoints answer. Every test is bounded by a tokio timeout and
//! asserts results (values found, contacts, counters, bodies), never speed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use coral_core::Levels;
use coral_core::id::Id;
use coral_tokio::config::FileConfig;
use coral_tokio::status::NodeStatus;
use coral_tokio::{RunningNode, admin, httpd, runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::timeout;

/// Upper bound of every test; far above what a healthy run needs.
const LIMIT: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(600);

/// A node config with short RPC timeouts so failures show quickly on loopback.
fn config() -> FileConfig {
    let mut cfg = FileConfig::default();
    cfg.dsht.rpc_timeout_min_ms = Some(50);
    cfg.dsht.rpc_timeout_max_ms = Some(300);
    cfg
}

fn start_at(addr: SocketAddr, seed: u64) -> RunningNode {
    let mut cfg = config();
    cfg.node.rpc = addr;
    runtime::spawn(cfg.node_options(seed)).expect("bind a loopback address")
}

fn start(last_octet: u8, seed: u64) -> RunningNode {
    start_at(
        SocketAddr::from((Ipv4Addr::new(127, 0, 0, last_octet), 0)),
        seed,
    )
}

async fn status(n: &RunningNode) -> NodeStatus {
    n.handle.status().await.expect("the node runs")
}

fn level0_addrs(s: &NodeStatus) -> Vec<SocketAddr> {
    s.levels[0].contacts.iter().map(|c| c.addr).collect()
}

/// Three nodes on three loopback addresses; b and c join through a.
async fn three(base: u8, seed: u64) -> [RunningNode; 3] {
    let a = start(base, seed);
    let b = start(base + 1, seed + 1);
    let c = start(base + 2, seed + 2);
    let ja = a.handle.join(vec![]).await.unwrap();
    assert_eq!(ja.contacts, 0, "a founds the network");
    let jb = b.handle.join(vec![a.handle.addr()]).await.unwrap();
    assert!(jb.contacts >= 1, "b knows a after joining: {jb:?}");
    let jc = c.handle.join(vec![a.handle.addr()]).await.unwrap();
    assert!(jc.contacts >= 1, "c knows a after joining: {jc:?}");
    [a, b, c]
}

#[tokio::test]
async fn three_nodes_join_put_and_get() {
    timeout(LIMIT, async {
        let [a, b, c] = three(101, 1).await;
        let key = Id::for_url("http://127.0.0.9:8080/index.html");
        let put = b
            .handle
            .put(key, Bytes::from_static(b"held by b"), TTL, Levels::ALL)
            .await
            .unwrap();
        assert!(!put.stored.is_empty(), "the put was stored: {put:?}");

        for getter in [&a, &c] {
            let got = getter.handle.get(key, Levels::ALL).await.unwrap();
            assert_eq!(
                got.values,
                vec![Bytes::from_static(b"held by b")],
                "get at {}: {got:?}",
                getter.handle.addr()
            );
            assert!(got.level.is_some());
        }
        let missing = c
            .handle
            .get(Id::for_url("http://nowhere.invalid/"), Levels::ALL)
            .await
            .unwrap();
        assert!(missing.values.is_empty(), "{missing:?}");

        // The RPCs really crossed the sockets.
        let sa = status(&a).await;
        assert!(sa.adapter.datagrams_in > 0 && sa.adapter.datagrams_out > 0);
        assert!(
            sa.stats.rpcs_in.get_probe + sa.stats.rpcs_in.store > 0,
            "{sa:?}"
        );
        assert_eq!(sa.stats.malformed, 0);
        for n in [a, b, c] {
            n.shutdown().await;
        }
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn a_stopped_node_is_detected_and_dropped() {
    timeout(LIMIT, async {
        let [a, b, c] = three(111, 11).await;
        let c_addr = c.handle.addr();
        let sa = status(&a).await;
        assert!(
            level0_addrs(&sa).contains(&c_addr),
            "a learned of c when it joined: {:?}",
            level0_addrs(&sa)
        );
        // A key whose value b stores away from c, so it outlives c.
        let c_id = c.handle.id();
        let mut key = None;
        for i in 0..32 {
            let k = Id::for_url(&format!("http://127.0.0.9:8080/{i}.txt"));
            let put = b
                .handle
                .put(k, Bytes::from_static(b"b"), TTL, Levels::ALL)
                .await
                .unwrap();
            if !put.stored.is_empty() && put.stored.iter().all(|(_, id)| *id != c_id) {
                key = Some(k);
                break;
            }
        }
        let key = key.expect("some key is stored away from c");

        c.shutdown().await;

        // Lookups from a keep asking c until its failures add up and the
        // core drops it; the loop is bounded by the test's timeout.
        let mut i = 0u32;
        let sa = loop {
            let probe = Id::for_url(&format!("http://probe.invalid/{i}"));
            a.handle.get(probe, Levels::ALL).await.unwrap();
            i += 1;
            let s = status(&a).await;
            if !level0_addrs(&s).contains(&c_addr) {
                break s;
            }
        };
        assert!(sa.stats.contacts_dropped >= 1, "{:?}", sa.stats);
        assert!(sa.stats.timeouts >= 1, "{:?}", sa.stats);
        assert!(
            level0_addrs(&sa).contains(&b.handle.addr()),
            "the live node stays: {:?}",
            level0_addrs(&sa)
        );
        // The network still answers without c.
        let got = a.handle.get(key, Levels::ALL).await.unwrap();
        assert_eq!(got.values, vec![Bytes::from_static(b"b")], "{got:?}");
        for n in [a, b] {
            n.shutdown().await;
        }
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn malformed_datagrams_are_counted_and_ignored() {
    timeout(LIMIT, async {
        let a = start(121, 21);
        a.handle.join(vec![]).await.unwrap();
        let sender = tokio::net::UdpSocket::bind("127.0.0.122:0").await.unwrap();
        let big = vec![0xAB; 60_000];
        let junk: [&[u8]; 3] = [b"", b"\xffnot a coral message", &big];
        for d in junk {
            sender.send_to(d, a.handle.addr()).await.unwrap();
        }
        let s = loop {
            let s = status(&a).await;
            if s.adapter.datagrams_in >= 3 {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(s.stats.malformed, 3, "{:?}", s.stats);
        assert_eq!(s.adapter.datagrams_in, 3);
        assert_eq!(s.adapter.datagrams_out, 0, "nothing answers garbage");
        assert_eq!(s.levels[0].routing_len, 0, "garbage adds no contact");

        // The node still works: a peer joins it and finds what it stored.
        let b = start(123, 22);
        let j = b.handle.join(vec![a.handle.addr()]).await.unwrap();
        assert_eq!(j.contacts, 1);
        let key = Id::for_url("http://127.0.0.9:8080/logo.svg");
        a.handle
            .put(key, Bytes::from_static(b"a"), TTL, Levels::ALL)
            .await
            .unwrap();
        let got = b.handle.get(key, Levels::ALL).await.unwrap();
        assert_eq!(got.values, vec![Bytes::from_static(b"a")]);
        assert_eq!(status(&a).await.stats.malformed, 3);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("the test finished in time");
}

async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn admin_endpoints_answer() {
    timeout(LIMIT, async {
        let a = start(131, 31);
        let b = start(132, 32);
        a.handle.join(vec![]).await.unwrap();
        b.handle.join(vec![a.handle.addr()]).await.unwrap();
        let listener = httpd::bind("admin", "127.0.0.131:0".parse().unwrap())
            .await
            .unwrap();
        let admin_addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(admin::serve(listener, a.handle.clone(), stopped));
        let id = a.handle.id().to_string();

        let (code, metrics) = httpd::get(admin_addr, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        assert!(
            metrics.contains(&format!("coral_node_info{{id=\"{id}\"")),
            "{metrics}"
        );
        assert!(
            metrics.contains("# TYPE coral_rpcs_in_total counter"),
            "{metrics}"
        );
        assert!(
            metrics.contains("coral_rpcs_in_total{type=\"ping\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("coral_malformed_datagrams_total 0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("coral_routing_contacts{level=\"0\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("coral_cluster_size{level=\"2\"} "),
            "{metrics}"
        );
        assert!(
            metrics.contains("coral_cluster_info{level=\"0\",cluster=\""),
            "{metrics}"
        );
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
        }

        let (code, page) = httpd::get(admin_addr, "/").await.unwrap();
        assert_eq!(code, 200);
        assert!(page.starts_with("<!doctype html>"), "{page}");
        assert!(page.contains(&id), "{page}");
        assert!(page.contains(&b.handle.addr().to_string()), "{page}");

        let (code, json) = httpd::get(admin_addr, "/status.json").await.unwrap();
        assert_eq!(code, 200);
        let s: NodeStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(s.id, id);
        assert_eq!(s.addr, a.handle.addr());
        assert_eq!(s.seed, 31);
        assert_eq!(s.levels.len(), 3);
        assert_eq!(s.levels[0].routing_len, 1);
        assert_eq!(s.levels[0].contacts[0].addr, b.handle.addr());

        let (code, _) = httpd::get(admin_addr, "/nope").await.unwrap();
        assert_eq!(code, 404);
        let r = raw_http(admin_addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = raw_http(admin_addr, b"\x00\x01 garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let mut huge = b"GET / HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 9000));
        let r = raw_http(admin_addr, &huge).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        let r = raw_http(admin_addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"),
            "{r}"
        );

        stop.send(true).unwrap();
        server.await.unwrap();
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn ipv6_nodes_join_put_and_get() {
    timeout(LIMIT, async {
        let any6 = SocketAddr::from((IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 0));
        let a = start_at(any6, 41);
        let b = start_at(any6, 42);
        assert!(a.handle.addr().is_ipv6());
        a.handle.join(vec![]).await.unwrap();
        let j = b.handle.join(vec![a.handle.addr()]).await.unwrap();
        assert_eq!(j.contacts, 1);
        let key = Id::for_url("http://[::1]/six");
        b.handle
            .put(key, Bytes::from_static(b"v6"), TTL, Levels::ALL)
            .await
            .unwrap();
        let got = a.handle.get(key, Levels::ALL).await.unwrap();
        assert_eq!(got.values, vec![Bytes::from_static(b"v6")]);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn a_stopped_node_answers_callers_with_an_error() {
    timeout(LIMIT, async {
        let a = start(141, 51);
        let handle = a.handle.clone();
        a.shutdown().await;
        let r = handle.get(Id::for_url("http://x/"), Levels::ALL).await;
        assert_eq!(r, Err(coral_tokio::NodeError::Stopped));
        assert!(handle.status().await.is_err());
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn the_admin_endpoint_times_out_a_client_that_sends_no_request() {
    timeout(LIMIT, async {
        let a = start(142, 61);
        let listener = httpd::bind("admin", "127.0.0.142:0".parse().unwrap())
            .await
            .unwrap();
        let admin_addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(admin::serve(listener, a.handle.clone(), stopped));
        // Half a request head, then silence: the server answers 408 and closes.
        let r = raw_http(admin_addr, b"GET /metrics HTTP/1.1\r\nHo").await;
        assert!(r.starts_with("HTTP/1.1 408"), "{r}");
        // A complete request still works afterwards.
        let (code, _) = httpd::get(admin_addr, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        stop.send(true).unwrap();
        server.await.unwrap();
        a.shutdown().await;
    })
    .await
    .expect("the test finished in time");
}
