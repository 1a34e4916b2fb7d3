//! The DNS server of the tokio node over real sockets on loopback (issue
//! 6): nodes with proxies and DNS servers on 127.0.3.x answer a Rust DNS
//! client (hickory-proto) and `dig` (installed with apt-get when missing).
//! A Coralized name gets addresses of proxies that answer HTTP with the
//! authority section filled; apexes serve SOA and NS; a missing name gets
//! NXDOMAIN with the SOA; a foreign one REFUSED; a malformed packet FORMERR
//! while the server keeps answering; a UDP answer too large for 512 bytes
//! comes truncated and whole over TCP; a proxy the hints name but that the
//! server has not heard from is pinged first, and left out when dead;
//! across network namespaces (root only) the probe traces the routers
//! toward a resolver, whose hints then name its proxy.
//! Every test is bounded by a timeout
//! and asserts on what came back, never on speed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

mod common;
#[path = "common/dns_client.rs"]
mod dns_client;
#[path = "common/netns.rs"]
mod netns;

use dns_client::{addresses, query};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use coral_core::Levels;
use coral_core::contact::{Contact, Services};
use coral_core::http::HttpConfig;
use coral_core::id::Id;
use coral_core::wire;
use coral_tokio::config::FileConfig;
use coral_tokio::dns::{DnsOptions, DnsService};
use coral_tokio::proxy::{self, ProxyOptions, RunningProxy};
use coral_tokio::{RunningNode, runtime};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

struct Net {
    nodes: Vec<RunningNode>,
    proxies: Vec<RunningProxy>,
    dns: Vec<SocketAddr>,
    _stop: watch::Sender<bool>,
}

/// `n` nodes on 127.0.3.{base+1}.., each with a proxy and a DNS server
/// (`tune` adjusts the DNS options), joined through the first.
async fn net(base: u8, n: u8, tune: impl Fn(&mut DnsOptions)) -> Net {
    let ips: Vec<Ipv4Addr> = (1..=n)
        .map(|i| Ipv4Addr::new(127, 0, 3, base + i))
        .collect();
    net_on(&ips, |_| {}, tune).await
}

/// [`net`] with the nodes at `ips`, and `file` adjusting their
/// configuration.
async fn net_on(
    ips: &[Ipv4Addr],
    file: impl Fn(&mut FileConfig),
    tune: impl Fn(&mut DnsOptions),
) -> Net {
    let (stop, stop_rx) = watch::channel(false);
    let (mut nodes, mut proxies, mut dns) = (Vec::new(), Vec::new(), Vec::new());
    for (&ip, i) in ips.iter().zip(1u64..) {
        let mut cfg = FileConfig::default();
        cfg.node.rpc = SocketAddr::from((ip, 0));
        cfg.node.dns = SocketAddr::from((ip, 0));
        cfg.dsht.rpc_timeout_min_ms = Some(50);
        cfg.dsht.rpc_timeout_max_ms = Some(300);
        file(&mut cfg);
        let seed = u64::from(u32::from(ip)) * 100 + i;
        let mut o = cfg.node_options(seed);
        o.core.services = cfg.services(true);
        let mut d = cfg.dns_options().unwrap().unwrap();
        tune(&mut d);
        let service = DnsService::bind(d).unwrap();
        dns.push(service.addr());
        let socket = runtime::bind_udp(o.rpc_addr, 0, 0).unwrap();
        let node = runtime::spawn_with_dns(o.core, socket, o.command_queue, Some(service)).unwrap();
        let port = proxies.first().map_or(0, |p: &RunningProxy| p.addr.port());
        let p = proxy::start(
            ProxyOptions::new(SocketAddr::from((ip, port)), HttpConfig::default()),
            node.handle.clone(),
            stop_rx.clone(),
        )
        .await
        .unwrap();
        nodes.push(node);
        proxies.push(p);
    }
    let first = nodes[0].handle.addr();
    for (i, node) in nodes.iter().enumerate() {
        let boot = if i == 0 { vec![] } else { vec![first] };
        timeout(LIMIT, node.handle.join(boot))
            .await
            .unwrap()
            .unwrap();
    }
    Net {
        nodes,
        proxies,
        dns,
        _stop: stop,
    }
}

/// One UDP exchange from a client socket on `client_ip`.
async fn udp(server: SocketAddr, client_ip: Ipv4Addr, bytes: &[u8]) -> Vec<u8> {
    let s = UdpSocket::bind((client_ip, 0)).await.unwrap();
    s.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("the DNS server answers within 5 s")
        .unwrap();
    buf.truncate(n);
    buf
}

async fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let b = udp(
        server,
        Ipv4Addr::new(127, 0, 3, 200),
        &query(name, rtype, true),
    )
    .await;
    Message::from_vec(&b).unwrap()
}

async fn tcp(server: SocketAddr, bytes: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut body).await.unwrap();
    Message::from_vec(&body).unwrap()
}

/// A GET to the proxy at `ip` gets an HTTP response.
async fn answers_http(ip: IpAddr, port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((ip, port)).await else {
        return false;
    };
    let req = "GET / HTTP/1.1\r\nHost: nothing.invalid.nyud.net\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 9];
    timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .is_ok_and(|r| r.is_ok())
        && &head == b"HTTP/1.1 "
}

#[tokio::test]
async fn a_coralized_name_names_proxies_that_answer_http_and_near_servers() {
    timeout(LIMIT, async {
        let net = net(10, 3, |_| {}).await;
        let node_ips: Vec<IpAddr> = net.nodes.iter().map(|n| n.handle.addr().ip()).collect();
        let m = ask(net.dns[0], "www.Example.com.nyud.net.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && !m.metadata.recursion_available);
        assert!(
            m.queries[0]
                .name()
                .eq_case(&Name::from_ascii("www.Example.com.nyud.net.").unwrap()),
            "the query name's case is kept"
        );
        let ips = addresses(&m);
        assert_eq!(ips.len(), 2, "{m:?}");
        let port = net.proxies[0].addr.port();
        for ip in &ips {
            assert!(node_ips.contains(ip), "{ip} is not a testnet node");
            assert!(answers_http(*ip, port).await, "no HTTP at {ip}:{port}");
        }
        let ns: Vec<_> = m
            .authorities
            .iter()
            .filter(|r| r.record_type() == RecordType::NS)
            .collect();
        assert_eq!(ns.len(), 3, "{m:?}");
        // The first query from the client's /24 waited for its probe (a
        // TCP connect to its port 53, refused at once on loopback): it is
        // within 20 ms, so it gets level-2 servers, with the long TTL.
        assert!(
            ns.iter()
                .all(|r| r.name.to_ascii() == "L2.L1.L0.nyucd.net." && r.ttl == 21_600),
            "{m:?}"
        );
        let glue = m
            .additionals
            .iter()
            .filter(|r| r.record_type() == RecordType::A)
            .count();
        assert_eq!(glue, 3, "glue for every nameserver: {m:?}");
        let again = ask(net.dns[0], "www.example.com.nyud.net.", RecordType::A).await;
        assert_eq!(addresses(&again).len(), 2);
        let st = net.nodes[0].handle.status().await.unwrap();
        let d = st.dns.clone().expect("a DNS node reports DNS counters");
        let count = |name: &str| d.iter().find(|c| c.name == name).map_or(0, |c| c.value);
        assert_eq!(
            (count("queries"), count("probes"), count("probe_results")),
            (2, 1, 1),
            "{d:?}"
        );
        assert_eq!((count("held"), count("held_expired")), (1, 0), "{d:?}");
        assert_eq!(count("answers_level_2"), 2, "{d:?}");
        let text = coral_tokio::status::prometheus(&st);
        assert!(text.contains("coral_dns_answers_level_2_total 2"), "{text}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn apex_records_and_negative_answers() {
    timeout(LIMIT, async {
        let net = net(20, 2, |_| {}).await;
        let s = net.dns[1];
        let soa = ask(s, "nyucd.net.", RecordType::SOA).await;
        assert_eq!(soa.answers.len(), 1);
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
        let ns = ask(s, "nyud.net.", RecordType::NS).await;
        assert_eq!(ns.answers.len(), 2, "both DNS nodes: {ns:?}");
        assert_eq!(ns.additionals.len(), 2, "with glue: {ns:?}");
        let nx = ask(s, "nothing-here.nyucd.net.", RecordType::A).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let nodata = ask(s, "www.example.com.nyud.net.", RecordType::MX).await;
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
        let refused = ask(s, "www.example.com.", RecordType::A).await;
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert!(!refused.metadata.authoritative);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn malformed_packets_get_formerr_and_the_server_keeps_answering() {
    timeout(LIMIT, async {
        let net = net(30, 1, |_| {}).await;
        let s = net.dns[0];
        let good = query("x.nyud.net.", RecordType::A, false);
        let cut = udp(s, Ipv4Addr::new(127, 0, 3, 201), &good[..good.len() - 2]).await;
        let m = Message::from_vec(&cut).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Garbage with no readable header gets nothing; the server lives on.
        let sock = UdpSocket::bind((Ipv4Addr::new(127, 0, 3, 201), 0))
            .await
            .unwrap();
        sock.send_to(&[0xff; 7], s).await.unwrap();
        let m = ask(s, "x.nyud.net.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&m).len(), 1, "the one node's proxy");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_truncated_udp_answer_is_whole_over_tcp() {
    timeout(LIMIT, async {
        let net = net(40, 8, |d| {
            d.server.answer_count = 8;
            d.server.ns_count = 8;
        })
        .await;
        let s = net.dns[0];
        let q = query(
            "a-long-label-for-a-long-answer.www.example.com.nyud.net.",
            RecordType::A,
            false,
        );
        let b = udp(s, Ipv4Addr::new(127, 0, 3, 202), &q).await;
        assert!(b.len() <= 512);
        let m = Message::from_vec(&b).unwrap();
        assert!(
            m.metadata.truncation,
            "8 A, 8 NS and 8 glue do not fit 512 bytes"
        );
        let whole = tcp(s, &q).await;
        assert!(!whole.metadata.truncation);
        assert_eq!(addresses(&whole).len(), 8);
        assert_eq!(whole.authorities.len(), 8);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dig_gets_the_same_answers() {
    let dig = common::tool("dig", "-v", "bind9-dnsutils");
    timeout(LIMIT, async {
        let net = net(50, 2, |_| {}).await;
        let s = net.dns[0];
        let node_ips: Vec<String> = net
            .nodes
            .iter()
            .map(|n| n.handle.addr().ip().to_string())
            .collect();
        let run = |args: Vec<String>| {
            tokio::task::spawn_blocking(move || {
                let o = std::process::Command::new(dig)
                    .args(&args)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            })
        };
        let base = vec![
            format!("@{}", s.ip()),
            "-p".into(),
            s.port().to_string(),
            "+time=5".into(),
            "+tries=1".into(),
        ];
        let with = |extra: &[&str]| {
            let mut v = base.clone();
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let short = run(with(&["+short", "www.example.com.nyud.net", "A"]))
            .await
            .unwrap();
        let lines: Vec<&str> = short.lines().collect();
        assert_eq!(lines.len(), 2, "dig +short: {short}");
        assert!(
            lines.iter().all(|l| node_ips.iter().any(|ip| ip == l)),
            "{short}"
        );
        let full = run(with(&["www.example.com.nyud.net", "A"])).await.unwrap();
        assert!(full.contains("flags: qr aa"), "{full}");
        assert!(full.contains("AUTHORITY: 2"), "{full}");
        let nx = run(with(&["nothing.nyucd.net", "A"])).await.unwrap();
        assert!(nx.contains("status: NXDOMAIN"), "{nx}");
        let refused = run(with(&["example.com", "A"])).await.unwrap();
        assert!(refused.contains("status: REFUSED"), "{refused}");
        let tc = run(with(&["+tcp", "nyucd.net", "SOA"])).await.unwrap();
        assert!(tc.contains("status: NOERROR") && tc.contains("SOA"), "{tc}");
    })
    .await
    .unwrap();
}

/// A proxy that the hints name near the resolver but that this server has
/// not heard from is pinged before it is named (spec §6.3), and a dead one
/// is left out: the tokio adapter runs the check and reports it.
#[tokio::test]
async fn a_hinted_proxy_not_heard_from_is_checked_and_a_dead_one_not_named() {
    timeout(LIMIT, async {
        // The resolver's /24 is 127.0.6.0: one live node there, and a hint
        // naming a proxy at 127.0.6.61 that nothing runs (a node that
        // published its hint and died: the hint outlives it).
        let ips = [
            Ipv4Addr::new(127, 0, 3, 61),
            Ipv4Addr::new(127, 0, 3, 62),
            Ipv4Addr::new(127, 0, 6, 62),
        ];
        // One level: the hints land in the one cluster at once (the
        // latency clusters of a fresh loopback net take a while to form).
        let net = net_on(
            &ips,
            |f| f.levels.diameters_ms = Vec::new(),
            |d| d.server.hold_budget = Duration::from_secs(20),
        )
        .await;
        let live = &net.nodes[2].handle;
        live.publish_hints(Vec::new()).await.unwrap();
        let dead_addr = SocketAddr::from((Ipv4Addr::new(127, 0, 6, 61), 9));
        let dead = Contact::from_addr(dead_addr, Services::HTTP.with(Services::DNS));
        let key = Id::for_ipv4_prefix(Ipv4Addr::new(127, 0, 6, 0));
        let put = net.nodes[2]
            .handle
            .put(
                key,
                wire::hint_value(&dead, None),
                Duration::from_secs(600),
                Levels::ALL,
            )
            .await
            .unwrap();
        assert!(!put.stored.is_empty(), "{put:?}");
        // Both hints in the DSHT before the resolver asks (the publication
        // is under way when publish_hints returns). A get stops at the
        // first holder it meets, and the two may sit at two holders: what
        // the three nodes' gets find together counts. The server's hint
        // lookup reads on past the first holder.
        let mut found: Vec<bytes::Bytes> = Vec::new();
        for _ in 0..50 {
            for n in &net.nodes {
                for v in n.handle.get(key, Levels::ALL).await.unwrap().values {
                    if !found.contains(&v) {
                        found.push(v);
                    }
                }
            }
            if found.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(found.len(), 2, "the live node's and the dead one's hints");
        let m = Message::from_vec(
            &udp(
                net.dns[0],
                Ipv4Addr::new(127, 0, 6, 200),
                &query("www.example.com.nyud.net.", RecordType::A, true),
            )
            .await,
        )
        .unwrap();
        let st = net.nodes[0].handle.status().await.unwrap();
        let d = st.dns.clone().expect("a DNS node reports DNS counters");
        let count = |name: &str| d.iter().find(|c| c.name == name).map_or(0, |c| c.value);
        let live_ip = IpAddr::from(ips[2]);
        assert_eq!(
            addresses(&m).first(),
            Some(&live_ip),
            "the hinted live proxy first: {m:?} {d:?}"
        );
        assert!(
            !addresses(&m).contains(&dead_addr.ip()),
            "the dead proxy is named: {m:?} {d:?}"
        );
        assert!(count("liveness_checks") >= 1, "{d:?}");
        assert_eq!(count("liveness_checks_failed"), 1, "{d:?}");
        assert_eq!(
            (count("held"), count("held_expired")),
            (1, 0),
            "the query waited for the check, not for its deadline: {d:?}"
        );
    })
    .await
    .unwrap();
}

/// A resolver two routers away (network namespaces; root only, else the
/// test says SKIPPED): the tokio node's probe traces the hops toward it,
/// and a router hint under the last of them names a proxy that the server
/// would otherwise name second, after itself. Both servers sit at the
/// source, on 10.201.1.1 (the DNS node asked) and 10.201.1.3 (the hinted
/// proxy).
#[test]
fn a_probe_traces_the_hops_to_the_resolver_and_their_hints_name_its_proxy() {
    let Some(ns) = netns::build() else {
        eprintln!("SKIPPED: cannot make network namespaces here (not root, or no `ip`)");
        return;
    };
    // A socket stays in the namespace it was made in.
    let client = netns::in_namespace(ns.target(), || {
        std::net::UdpSocket::bind((Ipv4Addr::new(10, 201, 3, 2), 0)).unwrap()
    });
    let v4 = |d: u8| Ipv4Addr::new(10, 201, 1, d);
    // The runtime's threads are made in the source's namespace, so the
    // nodes' sockets (the traces' too) are there.
    let (m, d) = netns::in_namespace(ns.source(), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            timeout(LIMIT, async move {
                let net = net_on(
                    &[v4(1), v4(3)],
                    |f| f.levels.diameters_ms = Vec::new(),
                    |d| d.server.hold_budget = Duration::from_secs(20),
                )
                .await;
                // The proxy's hint under router 2 (10.201.2.2), the resolver's
                // last hop, at RTT zero: nearer the resolver than the server.
                let p = &net.nodes[1].handle;
                let me = Contact::from_addr(p.addr(), Services::HTTP.with(Services::DNS));
                let key = Id::for_router(IpAddr::V4(Ipv4Addr::new(10, 201, 2, 2)));
                let value = wire::hint_value(&me, Some(Duration::ZERO));
                let put = p
                    .put(key, value, Duration::from_secs(600), Levels::ALL)
                    .await
                    .unwrap();
                assert!(!put.stored.is_empty(), "{put:?}");
                let mut found = false;
                for _ in 0..50 {
                    let got = net.nodes[0].handle.get(key, Levels::ALL).await.unwrap();
                    found = !got.values.is_empty();
                    if found {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert!(found, "the router hint is readable");
                client.set_nonblocking(true).unwrap();
                let client = UdpSocket::from_std(client).unwrap();
                let q = query("www.example.com.nyud.net.", RecordType::A, true);
                client.send_to(&q, net.dns[0]).await.unwrap();
                let mut buf = vec![0u8; 65_536];
                let (n, _) = timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .expect("the DNS server answers within 5 s")
                    .unwrap();
                let st = net.nodes[0].handle.status().await.unwrap();
                (Message::from_vec(&buf[..n]).unwrap(), st.dns.unwrap())
            })
            .await
        })
        .unwrap()
    });
    assert_eq!(
        addresses(&m),
        [IpAddr::V4(v4(3)), IpAddr::V4(v4(1))],
        "the hinted proxy first, then the server: {m:?}"
    );
    let count = |name: &str| d.iter().find(|c| c.name == name).map_or(0, |c| c.value);
    assert_eq!(
        (count("hint_lookups"), count("held_expired")),
        (1, 0),
        "{d:?}"
    );
}
