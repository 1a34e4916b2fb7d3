//! The DNS redirector on coral-mio's loop over real loopback sockets: mio
//! nodes on 127.0.5.x, each with an HTTP proxy and a DNS server, answer a
//! Rust DNS client (hickory-proto). A Coralized name gets addresses of
//! proxies that answer HTTP, authoritatively, with nameservers and glue of
//! the tightest cluster (the first query from a client waits for its probe,
//! a TCP connect to its port 53 that loopback refuses at once), over UDP
//! and over TCP (a held answer finds its connection; queries on one
//! connection are answered in order); a malformed packet gets FORMERR and
//! the server keeps answering; a foreign name gets REFUSED; the status
//! snapshot and `/metrics` carry the DNS counters; a TCP connection over
//! the limit waits in the backlog and an idle one is closed; a mio DNS
//! node names a tokio node's proxy; a proxy the hints name but that the
//! server has not heard from is pinged first, and left out when dead; and
//! across network namespaces (root only) the probe traces the routers
//! toward a resolver, whose hints then name its proxy.
//!
//! Every test runs on a worker thread bounded by [`LIMIT`], every socket
//! read has a timeout, and assertions are on what comes back, never on
//! speed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

#[path = "../../tests/tests/common/mod.rs"]
mod common;
#[path = "../../tests/tests/common/dns_client.rs"]
mod dns_client;
#[path = "../../tests/tests/common/netns.rs"]
mod netns;

use dns_client::{addresses, glue, nameservers, query};

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use coral_core::Levels;
use coral_core::contact::{Contact, Services};
use coral_core::http::HttpConfig;
use coral_core::id::Id;
use coral_core::wire;
use coral_mio::{DnsSockets, Listeners, RunningNode};
use coral_tokio::config::FileConfig;
use coral_tokio::dns::DnsOptions;
use coral_tokio::proxy::ProxyOptions;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

/// Upper bound of every test; far above what a healthy run needs.
const LIMIT: Duration = Duration::from_secs(60);
/// How long a client waits for one answer.
const ANSWER: Duration = Duration::from_secs(5);

/// Runs `f` on its own thread and fails the test if it overstays [`LIMIT`].
fn bounded(f: impl FnOnce() + Send + 'static) {
    common::bounded(LIMIT, f);
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 5, last)
}

/// A mio node on `me` with a proxy on `proxy_port` (0: any), a DNS server
/// (`tune` adjusts its options, `file` its configuration) and optionally
/// an admin endpoint.
fn mio_node(
    me: Ipv4Addr,
    seed: u64,
    proxy_port: u16,
    admin: Option<std::net::TcpListener>,
    file: &dyn Fn(&mut FileConfig),
    tune: &dyn Fn(&mut DnsOptions),
) -> RunningNode {
    let mut cfg = FileConfig::default();
    cfg.node.rpc = (me, 0).into();
    cfg.node.dns = (me, 0).into();
    cfg.dsht.rpc_timeout_min_ms = Some(50);
    cfg.dsht.rpc_timeout_max_ms = Some(300);
    file(&mut cfg);
    let o = cfg.node_options(seed);
    // The proxy's fixed port first: a DNS listener on port 0 could be
    // given that very port on this address.
    let proxy = ProxyOptions::new((me, proxy_port).into(), HttpConfig::default());
    let http = std::net::TcpListener::bind(proxy.listen).unwrap();
    let mut d = cfg.dns_options().unwrap().expect("DNS is on by default");
    tune(&mut d);
    let dns = DnsSockets::bind(d).unwrap();
    let listeners = Listeners {
        admin,
        proxy: Some((http, proxy)),
    };
    coral_mio::spawn_with_dns(
        o,
        listeners,
        Some(dns),
        Box::new(coral_mio::runtime::LogEvents),
    )
    .unwrap()
}

/// `n` mio nodes on 127.0.5.{base+1}.. sharing one proxy port (the port
/// is network-wide), joined through the first.
fn net(base: u8, n: u8, tune: &dyn Fn(&mut DnsOptions)) -> Vec<RunningNode> {
    let mut nodes: Vec<RunningNode> = Vec::new();
    for i in 1..=n {
        let port = nodes
            .first()
            .map_or(0, |f| f.handle.proxy_addr().unwrap().port());
        let seed = u64::from(base) * 100 + u64::from(i);
        let node = mio_node(ip(base + i), seed, port, None, &|_| {}, tune);
        nodes.push(node);
    }
    join_all(&nodes);
    nodes
}

fn join_all(nodes: &[RunningNode]) {
    let first = nodes[0].handle.addr();
    for (i, node) in nodes.iter().enumerate() {
        let boot = if i == 0 { vec![] } else { vec![first] };
        let joined = node.handle.join(boot).unwrap();
        assert!(i == 0 || joined.contacts >= 1, "{i} joined: {joined:?}");
    }
}

fn dns_of(node: &RunningNode) -> SocketAddr {
    node.handle.dns_addr().expect("a node with a DNS server")
}

/// A UDP client socket on `client_ip`.
fn client(client_ip: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind((client_ip, 0)).unwrap();
    s.set_read_timeout(Some(ANSWER)).unwrap();
    s
}

/// One UDP exchange from a client socket on `client_ip`.
fn udp(server: SocketAddr, client_ip: Ipv4Addr, bytes: &[u8]) -> Vec<u8> {
    let s = client(client_ip);
    s.send_to(bytes, server).unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = s
        .recv_from(&mut buf)
        .expect("the DNS server answers within 5 s");
    buf.truncate(n);
    buf
}

fn ask(server: SocketAddr, client_ip: Ipv4Addr, name: &str, rtype: RecordType) -> Message {
    Message::from_vec(&udp(server, client_ip, &query(name, rtype, true))).unwrap()
}

/// A TCP connection to `server` from `client_ip`.
fn connect(server: SocketAddr, client_ip: Ipv4Addr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((client_ip, 0)).into()).unwrap();
    s.connect_timeout(&server.into(), ANSWER).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(ANSWER)).unwrap();
    s
}

fn framed(bytes: &[u8]) -> Vec<u8> {
    let mut f = (bytes.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(bytes);
    f
}

/// Reads one length-prefixed message.
fn read_message(s: &mut TcpStream) -> Message {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("an answer within 5 s");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut body).unwrap();
    Message::from_vec(&body).unwrap()
}

/// A GET to the proxy at `addr` gets an HTTP response.
fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, ANSWER) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(ANSWER));
    let req = "GET / HTTP/1.1\r\nHost: nothing.invalid.nyud.net\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 9];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 "
}

/// A GET to the admin endpoint at `addr`: the whole response.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, ANSWER).unwrap();
    s.set_read_timeout(Some(ANSWER)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A DNS counter of `node`'s status snapshot.
fn counter(node: &RunningNode, name: &str) -> u64 {
    let st = node.handle.status().unwrap();
    let d = st.dns.expect("a DNS node reports DNS counters");
    d.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no counter {name}: {d:?}"))
        .value
}

/// The level-2 answer a client near the network gets once probed: two
/// proxies of the network, three level-2 nameservers with the long TTL,
/// glue for each.
fn assert_near_answer(m: &Message, node_ips: &[IpAddr], proxy_port: u16) {
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    assert!(
        m.metadata.authoritative && !m.metadata.recursion_available,
        "{m:?}"
    );
    let ips = addresses(m);
    assert_eq!(ips.len(), 2, "{m:?}");
    for ip in &ips {
        assert!(node_ips.contains(ip), "{ip} is not a node of the network");
        let proxy = SocketAddr::new(*ip, proxy_port);
        assert!(answers_http(proxy), "no HTTP at {proxy}");
    }
    let ns = nameservers(m);
    assert_eq!(ns.len(), 3, "{m:?}");
    assert!(
        ns.iter()
            .all(|(zone, ttl)| zone == "L2.L1.L0.nyucd.net." && *ttl == 21_600),
        "the probe was refused at once: level-2 servers, long TTL: {m:?}"
    );
    assert_eq!(glue(m), 3, "glue for every nameserver: {m:?}");
}

#[test]
fn a_coralized_name_over_udp_names_proxies_and_near_nameservers() {
    bounded(|| {
        let nodes = net(10, 3, &|_| {});
        let node_ips: Vec<IpAddr> = nodes.iter().map(|n| n.handle.addr().ip()).collect();
        let port = nodes[0].handle.proxy_addr().unwrap().port();
        let me = ip(200);
        let m = ask(
            dns_of(&nodes[0]),
            me,
            "www.Example.com.nyud.net.",
            RecordType::A,
        );
        assert!(
            m.queries[0]
                .name()
                .eq_case(&Name::from_ascii("www.Example.com.nyud.net.").unwrap()),
            "the query name's case is kept"
        );
        assert_near_answer(&m, &node_ips, port);
        let again = ask(
            dns_of(&nodes[0]),
            me,
            "www.example.com.nyud.net.",
            RecordType::A,
        );
        assert_near_answer(&again, &node_ips, port);
        // The first query waited for the probe, the second did not.
        let n = &nodes[0];
        assert_eq!(counter(n, "queries"), 2);
        assert_eq!((counter(n, "probes"), counter(n, "probe_results")), (1, 1));
        assert_eq!((counter(n, "held"), counter(n, "held_expired")), (1, 0));
        assert_eq!(counter(n, "answers_level_2"), 2);
        let st = n.handle.status().unwrap();
        let text = coral_tokio::status::prometheus(&st);
        assert!(text.contains("coral_dns_answers_level_2_total 2"), "{text}");
        // The node tells its peers it serves DNS (and HTTP).
        let services = n.handle.call(|node, _| node.contact().services).unwrap();
        assert!(
            services.contains(Services::DNS) && services.contains(Services::HTTP),
            "{services:?}"
        );
        for node in nodes {
            node.shutdown();
        }
    });
}

#[test]
fn a_coralized_name_over_tcp_held_answers_find_their_connection() {
    bounded(|| {
        let nodes = net(20, 3, &|_| {});
        let node_ips: Vec<IpAddr> = nodes.iter().map(|n| n.handle.addr().ip()).collect();
        let port = nodes[0].handle.proxy_addr().unwrap().port();
        // The first node knows every other (they joined through it), so
        // it names all three nameservers.
        let server = dns_of(&nodes[0]);
        let mut s = connect(server, ip(201));
        // Two queries in one write: the first waits for the client's
        // probe, the second for the first; both come back, in order.
        let mut a = Message::query();
        a.metadata.id = 7;
        a.add_query(Query::query(
            Name::from_ascii("a.example.com.nyud.net.").unwrap(),
            RecordType::A,
        ));
        let mut b = a.clone();
        b.metadata.id = 8;
        let mut both = framed(&a.to_vec().unwrap());
        both.extend(framed(&b.to_vec().unwrap()));
        s.write_all(&both).unwrap();
        let first = read_message(&mut s);
        let second = read_message(&mut s);
        assert_eq!((first.metadata.id, second.metadata.id), (7, 8));
        assert_near_answer(&first, &node_ips, port);
        assert_near_answer(&second, &node_ips, port);
        // The connection stays open for more.
        s.write_all(&framed(&query("nyucd.net.", RecordType::SOA, false)))
            .unwrap();
        let soa = read_message(&mut s);
        assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
        let n = &nodes[0];
        assert_eq!((counter(n, "held"), counter(n, "held_expired")), (1, 0));
        assert_eq!(counter(n, "queries"), 3);
        drop(s);
        for node in nodes {
            node.shutdown();
        }
    });
}

#[test]
fn malformed_and_foreign_queries_get_formerr_and_refused_and_the_server_keeps_answering() {
    bounded(|| {
        let nodes = net(30, 1, &|_| {});
        let server = dns_of(&nodes[0]);
        let me = ip(202);
        let good = query("x.nyud.net.", RecordType::A, false);
        let cut = Message::from_vec(&udp(server, me, &good[..good.len() - 2])).unwrap();
        assert_eq!(cut.metadata.response_code, ResponseCode::FormErr);
        // Garbage with no readable header gets nothing; the server lives on.
        client(me).send_to(&[0xff; 7], server).unwrap();
        let m = ask(server, me, "x.nyud.net.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&m), vec![nodes[0].handle.addr().ip()]);
        let refused = ask(server, me, "www.example.com.", RecordType::A);
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert!(!refused.metadata.authoritative);
        // Over TCP alike; and a message out of step (a response) closes
        // the connection, not the server.
        let mut s = connect(server, me);
        s.write_all(&framed(&good[..good.len() - 2])).unwrap();
        assert_eq!(
            read_message(&mut s).metadata.response_code,
            ResponseCode::FormErr
        );
        s.write_all(&framed(&query("www.example.com.", RecordType::A, false)))
            .unwrap();
        assert_eq!(
            read_message(&mut s).metadata.response_code,
            ResponseCode::Refused
        );
        let mut response = Message::from_vec(&good).unwrap();
        response.metadata.message_type = hickory_proto::op::MessageType::Response;
        s.write_all(&framed(&response.to_vec().unwrap())).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("closed within 5 s");
        assert!(rest.is_empty(), "no answer to a response: {rest:?}");
        let m = ask(server, me, "x.nyud.net.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let n = &nodes[0];
        assert_eq!(counter(n, "formerr"), 2);
        assert_eq!(counter(n, "refused"), 2);
        assert_eq!(counter(n, "ignored"), 2, "the garbage and the response");
        for node in nodes {
            node.shutdown();
        }
    });
}

#[test]
fn tcp_connections_are_limited_idle_ones_closed_and_metrics_shown() {
    bounded(|| {
        let tune = |d: &mut DnsOptions| {
            d.tcp_max_connections = 1;
            d.tcp_idle_timeout = Duration::from_millis(300);
        };
        let admin = std::net::TcpListener::bind((ip(40), 0)).unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let node = mio_node(ip(40), 4000, 0, Some(admin), &|_| {}, &tune);
        join_all(std::slice::from_ref(&node));
        let server = dns_of(&node);
        let me = ip(203);
        // The first connection takes the only slot; the second is accepted
        // by the kernel but served only once the first, which says
        // nothing, is closed for idling: when the second's answer comes,
        // the first's end is already there (the server closed it before
        // it accepted the second).
        let mut first = connect(server, me);
        let mut second = connect(server, me);
        second
            .write_all(&framed(&query("nyucd.net.", RecordType::SOA, false)))
            .unwrap();
        let soa = read_message(&mut second);
        assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
        first.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            first.read(&mut byte).expect("the first was closed before"),
            0
        );
        drop(second);
        // /metrics carries the core's DNS counters and the adapter's own.
        let metrics = http_get(admin_addr, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 "), "{metrics}");
        for line in [
            "coral_dns_queries_total 1\n",
            "coral_dns_responses_total 1\n",
            "coral_dns_tcp_idle_closed_total 1\n",
            "coral_dns_tcp_answers_lost_total 0\n",
        ] {
            assert!(metrics.contains(line), "{line}: {metrics}");
        }
        let status = http_get(admin_addr, "/status.json");
        let (_, body) = status.split_once("\r\n\r\n").unwrap();
        let st: coral_tokio::status::NodeStatus = serde_json::from_str(body).unwrap();
        let dns = st.dns.expect("/status.json carries the DNS counters");
        assert!(
            dns.iter().any(|c| c.name == "queries" && c.value == 1),
            "{dns:?}"
        );
        node.shutdown();
    });
}

#[test]
fn a_mio_dns_node_names_a_tokio_nodes_proxy() {
    bounded(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mio = mio_node(ip(51), 5001, 0, None, &|_| {}, &|_| {});
        let port = mio.handle.proxy_addr().unwrap().port();
        let tokio_ip = ip(52);
        let mut cfg = FileConfig::default();
        cfg.node.rpc = (tokio_ip, 0).into();
        cfg.dsht.rpc_timeout_min_ms = Some(50);
        cfg.dsht.rpc_timeout_max_ms = Some(300);
        let mut o = cfg.node_options(5002);
        o.core.services = cfg.services(false);
        let (tokio_node, _proxy) = rt.block_on(async {
            let node = coral_tokio::spawn(o).unwrap();
            let proxy = coral_tokio::proxy::start(
                ProxyOptions::new((tokio_ip, port).into(), HttpConfig::default()),
                node.handle.clone(),
                stop_rx,
            )
            .await
            .unwrap();
            (node, proxy)
        });
        mio.handle.join(vec![]).unwrap();
        let joined = rt
            .block_on(tokio_node.handle.join(vec![mio.handle.addr()]))
            .unwrap();
        assert!(joined.contacts >= 1, "{joined:?}");
        let m = ask(
            dns_of(&mio),
            ip(204),
            "www.example.com.nyud.net.",
            RecordType::A,
        );
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let mut ips = addresses(&m);
        ips.sort();
        assert_eq!(ips, vec![IpAddr::V4(ip(51)), IpAddr::V4(tokio_ip)], "{m:?}");
        assert!(answers_http(SocketAddr::new(tokio_ip.into(), port)));
        // Only the mio node serves DNS: it is the one nameserver.
        assert_eq!(nameservers(&m).len(), 1, "{m:?}");
        assert_eq!(glue(&m), 1);
        let _ = stop.send(true);
        mio.shutdown();
        rt.block_on(tokio_node.shutdown());
    });
}

/// A proxy that the hints name near the resolver but that this server has
/// not heard from is pinged before it is named (spec §6.3), and a dead one
/// is left out: coral-mio's loop runs the check and reports it.
#[test]
fn a_hinted_proxy_not_heard_from_is_checked_and_a_dead_one_not_named() {
    bounded(|| {
        // The resolver's /24 is 127.0.7.0: one live node there, and a hint
        // naming a proxy at 127.0.7.61 that nothing runs (a node that
        // published its hint and died: the hint outlives it). One level:
        // the hints land in the one cluster at once (the latency clusters
        // of a fresh loopback net take a while to form).
        let at = |c: u8, d: u8| Ipv4Addr::new(127, 0, c, d);
        let one_level = |f: &mut FileConfig| f.levels.diameters_ms = Vec::new();
        let wait = |d: &mut DnsOptions| d.server.hold_budget = Duration::from_secs(20);
        let mut nodes: Vec<RunningNode> = Vec::new();
        for (i, me) in [at(5, 71), at(5, 72), at(7, 62)].into_iter().enumerate() {
            let port = nodes
                .first()
                .map_or(0, |f| f.handle.proxy_addr().unwrap().port());
            nodes.push(mio_node(me, 7100 + i as u64, port, None, &one_level, &wait));
        }
        join_all(&nodes);
        nodes[2].handle.publish_hints(Vec::new()).unwrap();
        let dead_addr = SocketAddr::from((at(7, 61), 9));
        let dead = Contact::from_addr(dead_addr, Services::HTTP.with(Services::DNS));
        let key = Id::for_ipv4_prefix(at(7, 0));
        let put = nodes[2]
            .handle
            .put(
                key,
                wire::hint_value(&dead, None),
                Duration::from_secs(600),
                Levels::ALL,
            )
            .unwrap();
        assert!(!put.stored.is_empty(), "{put:?}");
        // Both hints in the DSHT before the resolver asks. A get stops at
        // the first holder it meets, and the two may sit at two holders:
        // what the three nodes' gets find together counts. The server's
        // hint lookup reads on past the first holder.
        let mut found = Vec::new();
        for _ in 0..50 {
            for n in &nodes {
                for v in n.handle.get(key, Levels::ALL).unwrap().values {
                    if !found.contains(&v) {
                        found.push(v);
                    }
                }
            }
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(found.len(), 2, "the live node's and the dead one's hints");
        let m = ask(
            dns_of(&nodes[0]),
            at(7, 200),
            "www.example.com.nyud.net.",
            RecordType::A,
        );
        let named = addresses(&m);
        assert_eq!(named.first(), Some(&IpAddr::from(at(7, 62))), "{m:?}");
        assert!(
            !named.contains(&dead_addr.ip()),
            "the dead proxy is named: {m:?}"
        );
        assert!(counter(&nodes[0], "liveness_checks") >= 1);
        assert_eq!(counter(&nodes[0], "liveness_checks_failed"), 1);
        assert_eq!(
            (
                counter(&nodes[0], "held"),
                counter(&nodes[0], "held_expired")
            ),
            (1, 0),
            "the query waited for the check, not for its deadline"
        );
    });
}

/// A resolver two routers away (network namespaces; root only, else the
/// test says SKIPPED): coral-mio's probe traces the hops toward it, and a
/// router hint under the last of them names a proxy that the server would
/// otherwise name second, after itself. Both servers sit at the source,
/// on 10.201.1.1 (the DNS node asked) and 10.201.1.3 (the hinted proxy).
#[test]
fn a_probe_traces_the_hops_to_the_resolver_and_their_hints_name_its_proxy() {
    let Some(ns) = netns::build() else {
        eprintln!("SKIPPED: cannot make network namespaces here (not root, or no `ip`)");
        return;
    };
    let source = ns.source().to_owned();
    let target = ns.target().to_owned();
    bounded(move || {
        let _ns = ns;
        let v4 = |d: u8| Ipv4Addr::new(10, 201, 1, d);
        // The nodes' threads are made in the source's namespace, so their
        // sockets (the trace's too) are there.
        let nodes = netns::in_namespace(&source, move || {
            let one_level = |f: &mut FileConfig| f.levels.diameters_ms = Vec::new();
            let wait = |d: &mut DnsOptions| d.server.hold_budget = Duration::from_secs(20);
            let d = mio_node(v4(1), 8101, 0, None, &one_level, &wait);
            let port = d.handle.proxy_addr().unwrap().port();
            let p = mio_node(v4(3), 8102, port, None, &one_level, &wait);
            let nodes = vec![d, p];
            join_all(&nodes);
            nodes
        });
        // The proxy's hint under router 2 (10.201.2.2), the resolver's
        // last hop, at RTT zero: nearer the resolver than the server is.
        let p = &nodes[1].handle;
        let me = Contact::from_addr(p.addr(), Services::HTTP.with(Services::DNS));
        let key = Id::for_router(IpAddr::V4(Ipv4Addr::new(10, 201, 2, 2)));
        let value = wire::hint_value(&me, Some(Duration::ZERO));
        let put = p
            .put(key, value, Duration::from_secs(600), Levels::ALL)
            .unwrap();
        assert!(!put.stored.is_empty(), "{put:?}");
        let mut found = false;
        for _ in 0..50 {
            found = !nodes[0]
                .handle
                .get(key, Levels::ALL)
                .unwrap()
                .values
                .is_empty();
            if found {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(found, "the router hint is readable");
        let server = dns_of(&nodes[0]);
        let m = netns::in_namespace(&target, move || {
            ask(
                server,
                Ipv4Addr::new(10, 201, 3, 2),
                "www.example.com.nyud.net.",
                RecordType::A,
            )
        });
        assert_eq!(
            addresses(&m),
            [IpAddr::V4(v4(3)), IpAddr::V4(v4(1))],
            "the hinted proxy first, then the server: {m:?}"
        );
        assert_eq!(counter(&nodes[0], "hint_lookups"), 1);
        assert_eq!(counter(&nodes[0], "held_expired"), 0);
    });
}
