//! The HTTP proxy on coral-mio's loop, end to end over loopback: a miss
//! fetched from a counting origin, a second mio proxy fetching from the
//! first instead of the origin, keep-alive and pipelined requests, the
//! socket limits (408, 431, 503), origin names resolved off the loop (and
//! refused on the resolved address when private), and mixed networks where tokio and mio
//! proxies share objects — one object fetched from the origin once, and a
//! short flash crowd across both runtimes in which every object leaves the
//! origin once and every client gets 200 with the right bytes.
//!
//! Every test runs on a worker thread bounded by [`LIMIT`] and asserts
//! counts and bytes, never speed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use coral_core::contact::Services;
use coral_core::http::ssrf::IpNet;
use coral_core::http::{HttpConfig, ProxyStats};
use coral_tokio::config::FileConfig;
use coral_tokio::origin::{self, Origin};
use coral_tokio::proxy::{self, ProxyOptions, RunningProxy, client_get};
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// Upper bound of every test; far above what a healthy run needs.
const LIMIT: Duration = Duration::from_secs(90);

/// Runs `f` on its own thread and fails the test if it overstays [`LIMIT`].
fn bounded(f: impl FnOnce() + Send + 'static) {
    common::bounded(LIMIT, f);
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn runtime() -> Arc<Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tokio,
    Mio,
}

/// A node with its HTTP proxy, of either runtime.
enum Peer {
    Tokio {
        node: coral_tokio::RunningNode,
        proxy: RunningProxy,
    },
    Mio(coral_mio::RunningNode),
}

impl Peer {
    fn rpc(&self) -> SocketAddr {
        match self {
            Self::Tokio { node, .. } => node.handle.addr(),
            Self::Mio(n) => n.handle.addr(),
        }
    }

    fn http(&self) -> SocketAddr {
        match self {
            Self::Tokio { proxy, .. } => proxy.addr,
            Self::Mio(n) => n.handle.proxy_addr().expect("a mio node with a proxy"),
        }
    }

    fn stats(&self) -> ProxyStats {
        match self {
            Self::Tokio { proxy, .. } => proxy.shared.stats(),
            Self::Mio(n) => n.handle.proxy_stats().unwrap().unwrap(),
        }
    }
}

/// Proxies of the given kinds on 127.0.0.{base+1}.. sharing one port (the
/// port is network-wide), an origin on 127.0.0.{base} allow-listed, every
/// node joined through the first.
struct Net {
    rt: Arc<Runtime>,
    peers: Vec<Peer>,
    origin: Origin,
    _stop: watch::Sender<bool>,
}

impl Net {
    fn start(
        kinds: &[Kind],
        base: u8,
        throttle: Option<u64>,
        tune: impl Fn(&mut ProxyOptions),
    ) -> Self {
        let rt = runtime();
        let (stop, stop_rx) = watch::channel(false);
        let origin = rt
            .block_on(origin::start_throttled(
                (ip(base), 0).into(),
                0,
                stop_rx.clone(),
                throttle,
            ))
            .unwrap();
        let mut peers: Vec<Peer> = Vec::new();
        for (i, &kind) in kinds.iter().enumerate() {
            let me = ip(base + 1 + i as u8);
            let mut cfg = FileConfig::default();
            cfg.dsht.rpc_timeout_min_ms = Some(50);
            cfg.dsht.rpc_timeout_max_ms = Some(300);
            cfg.node.rpc = (me, 0).into();
            let mut o = cfg.node_options(u64::from(base) * 100 + i as u64);
            o.core.services = o.core.services.with(Services::HTTP);
            let port = peers.first().map_or(0, |p| p.http().port());
            let http = HttpConfig {
                allow_origins: vec![IpNet {
                    addr: ip(base).into(),
                    prefix: 32,
                }],
                ..HttpConfig::default()
            };
            let mut opts = ProxyOptions::new((me, port).into(), http);
            tune(&mut opts);
            let peer = match kind {
                Kind::Tokio => rt.block_on(async {
                    let node = coral_tokio::spawn(o).unwrap();
                    let proxy = proxy::start(opts, node.handle.clone(), stop_rx.clone())
                        .await
                        .unwrap();
                    Peer::Tokio { node, proxy }
                }),
                Kind::Mio => {
                    let listener = std::net::TcpListener::bind(opts.listen).unwrap();
                    let listeners = coral_mio::Listeners {
                        admin: None,
                        proxy: Some((listener, opts)),
                    };
                    Peer::Mio(
                        coral_mio::spawn_listeners(
                            o,
                            listeners,
                            Box::new(coral_mio::runtime::LogEvents),
                        )
                        .unwrap(),
                    )
                }
            };
            peers.push(peer);
        }
        let first = peers[0].rpc();
        for (i, p) in peers.iter().enumerate() {
            let boot = if i == 0 { vec![] } else { vec![first] };
            let joined = match p {
                Peer::Tokio { node, .. } => rt.block_on(node.handle.join(boot)),
                Peer::Mio(n) => n.handle.join(boot),
            }
            .unwrap();
            assert!(i == 0 || joined.contacts >= 1, "{i} joined: {joined:?}");
        }
        Self {
            rt,
            peers,
            origin,
            _stop: stop,
        }
    }

    /// The Coralized host of the origin.
    fn host(&self) -> String {
        format!(
            "{}.{}.nyud.net",
            self.origin.addr.ip(),
            self.origin.addr.port()
        )
    }

    /// GET `path` through proxy `i`: status and body.
    fn get(&self, i: usize, path: &str) -> (u16, Vec<u8>) {
        let (status, _, body) = self
            .rt
            .block_on(client_get(self.peers[i].http(), &self.host(), path, ""))
            .unwrap();
        (status, body.to_vec())
    }

    fn shutdown(self) {
        for p in self.peers {
            match p {
                Peer::Tokio { node, proxy } => {
                    proxy.task.abort();
                    self.rt.block_on(node.shutdown());
                }
                Peer::Mio(n) => n.shutdown(),
            }
        }
    }
}

/// Lets the first fetch's DSHT reference settle before the next proxy asks.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

fn flash(i: usize) -> Vec<u8> {
    origin::flash_body(i).to_vec()
}

#[test]
fn a_miss_comes_from_the_origin_and_a_second_mio_proxy_fetches_from_the_first() {
    bounded(|| {
        let net = Net::start(&[Kind::Mio, Kind::Mio], 60, None, |_| {});
        let (status, body) = net.get(0, "/flash/0.bin");
        assert_eq!(status, 200);
        assert!(
            body == flash(0),
            "the origin's bytes, {} of them",
            body.len()
        );
        assert_eq!(net.origin.served(), 1);
        let a = net.peers[0].stats();
        assert_eq!((a.origin_fetches, a.hits_origin), (1, 1), "{a:?}");
        settle();
        let (status, body) = net.get(1, "/flash/0.bin");
        assert_eq!(status, 200);
        assert!(body == flash(0));
        assert_eq!(
            net.origin.served(),
            1,
            "the second proxy must not go to the origin"
        );
        let b = net.peers[1].stats();
        assert_eq!(b.hits_peer.iter().sum::<u64>(), 1, "{b:?}");
        assert_eq!(b.origin_fetches, 0, "{b:?}");
        // Now B holds it itself.
        let (status, body) = net.get(1, "/flash/0.bin");
        assert_eq!(status, 200);
        assert!(body == flash(0));
        assert_eq!(net.peers[1].stats().hits_local, 1);
        // A answered B's peer request from its cache.
        let a = net.peers[0].stats();
        assert_eq!((a.requests, a.hits_local), (2, 1), "{a:?}");
        net.shutdown();
    });
}

/// Responses read off one keep-alive connection, keeping whatever arrived
/// past the last one for the next.
struct Responses {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Responses {
    fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let k = self.s.read(&mut chunk).unwrap();
        assert!(k > 0, "closed early");
        self.buf.extend_from_slice(&chunk[..k]);
    }

    /// The next head, and its Content-Length.
    fn head(&mut self) -> (String, usize) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
                self.buf.drain(..end + 4);
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                return (head, len);
            }
            self.fill();
        }
    }

    /// The next response with a body of its Content-Length.
    fn response(&mut self) -> (String, Vec<u8>) {
        let (head, len) = self.head();
        while self.buf.len() < len {
            self.fill();
        }
        (head, self.buf.drain(..len).collect())
    }
}

#[test]
fn keep_alive_connections_carry_pipelined_requests() {
    bounded(|| {
        let net = Net::start(&[Kind::Mio], 64, None, |_| {});
        let mut s = TcpStream::connect(net.peers[0].http()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let host = net.host();
        // Three requests in one write: a miss, the same again (a local hit
        // or a reader of the same fetch), and HEAD of another object.
        let req = format!(
            "GET /flash/1.bin HTTP/1.1\r\nHost: {host}\r\n\r\n\
             GET /flash/1.bin HTTP/1.1\r\nHost: {host}\r\n\r\n\
             HEAD /coral.txt HTTP/1.1\r\nHost: {host}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut r = Responses {
            s: s.try_clone().unwrap(),
            buf: Vec::new(),
        };
        for _ in 0..2 {
            let (head, body) = r.response();
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            assert!(head.contains("Connection: keep-alive"), "{head}");
            assert!(body == flash(1));
        }
        // HEAD: a head with the length and no body; the connection stays usable.
        let (head, len) = r.head();
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(len > 0, "HEAD names the length: {head}");
        s.write_all(
            format!("GET /coral.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let (head, body) = r.response();
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(head.contains("Connection: close"), "{head}");
        assert!(body.ends_with(b"(NSDI 2004).\n"), "{body:?}");
        assert!(r.buf.is_empty(), "nothing past the last response");
        assert_eq!(net.origin.served(), 2, "one fetch per object");
        net.shutdown();
    });
}

/// Reads until the peer closes (or 5 s pass) and returns the status line.
fn status_line(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn limits_answer_slow_heads_408_big_heads_431_and_excess_connections_503() {
    bounded(|| {
        let net = Net::start(&[Kind::Mio], 68, None, |o| {
            o.max_connections = 2;
            o.max_connections_per_client = 1;
            o.header_timeout = Duration::from_secs(1);
        });
        let at = net.peers[0].http();
        // A head that never ends (slowloris) is cut off with 408.
        let mut slow = TcpStream::connect(at).unwrap();
        slow.write_all(b"GET /a HTTP/1.1\r\nHost: x.nyud.net\r\n")
            .unwrap();
        // The same address's second connection is over its share: 503 at once.
        let mut second = TcpStream::connect(at).unwrap();
        assert!(status_line(&mut second).starts_with("HTTP/1.1 503"));
        // Another address is served (400: not Coralized) ...
        let from = |last: u8| {
            let s = net.rt.block_on(async {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind(SocketAddr::from((ip(last), 0))).unwrap();
                s.connect(at).await.unwrap()
            });
            let s = s.into_std().unwrap();
            s.set_nonblocking(false).unwrap();
            s
        };
        let mut other = from(70);
        other
            .write_all(b"GET /a HTTP/1.1\r\nHost: example.com\r\n")
            .unwrap();
        // ... and while it holds the second slot, a third address gets 503.
        std::thread::sleep(Duration::from_millis(100));
        let mut third = from(71);
        assert!(status_line(&mut third).starts_with("HTTP/1.1 503"));
        other.write_all(b"Connection: close\r\n\r\n").unwrap();
        let line = status_line(&mut other);
        assert!(line.starts_with("HTTP/1.1 400"), "{line:?}");
        let line = status_line(&mut slow);
        assert!(line.starts_with("HTTP/1.1 408"), "{line:?}");
        // A head over the byte limit is refused with 431.
        std::thread::sleep(Duration::from_millis(100));
        let mut big = TcpStream::connect(at).unwrap();
        let filler = "x".repeat(HttpConfig::default().max_head_bytes + 10);
        let head = format!("GET /a HTTP/1.1\r\nHost: x.nyud.net\r\nX-Fill: {filler}\r\n\r\n");
        let _ = big.write_all(head.as_bytes());
        let line = status_line(&mut big);
        assert!(line.starts_with("HTTP/1.1 431"), "{line:?}");
        net.shutdown();
    });
}

#[test]
fn a_tokio_proxy_and_a_mio_proxy_share_objects_fetched_from_the_origin_once() {
    bounded(|| {
        let net = Net::start(&[Kind::Tokio, Kind::Mio], 72, None, |_| {});
        // The tokio proxy fetches from the origin, the mio proxy from it ...
        let (status, body) = net.get(0, "/flash/2.bin");
        assert!(status == 200 && body == flash(2));
        settle();
        let (status, body) = net.get(1, "/flash/2.bin");
        assert!(status == 200 && body == flash(2));
        // ... and the other way round.
        let (status, body) = net.get(1, "/flash/3.bin");
        assert!(status == 200 && body == flash(3));
        settle();
        let (status, body) = net.get(0, "/flash/3.bin");
        assert!(status == 200 && body == flash(3));
        assert_eq!(net.origin.served(), 2, "each object left the origin once");
        let (t, m) = (net.peers[0].stats(), net.peers[1].stats());
        assert_eq!((t.origin_fetches, m.origin_fetches), (1, 1), "{t:?} {m:?}");
        assert_eq!(t.hits_peer.iter().sum::<u64>(), 1, "{t:?}");
        assert_eq!(m.hits_peer.iter().sum::<u64>(), 1, "{m:?}");
        net.shutdown();
    });
}

#[test]
fn a_flash_crowd_across_both_runtimes_fetches_each_object_once() {
    bounded(|| {
        let kinds = [Kind::Mio, Kind::Tokio, Kind::Mio, Kind::Tokio];
        // A slow origin (4 Mbit/s) keeps the first fetches in flight while
        // the whole crowd arrives.
        // Every client and every proxy-to-proxy connection of the test comes
        // from 127.0.0.1, so the per-client limit (64 by default) would turn
        // peers away with 503 and send their fetches to the origin.
        let net = Net::start(&kinds, 76, Some(4_000_000), |o| {
            o.max_connections_per_client = 4096;
        });
        let objects = origin::FLASH_OBJECTS;
        let clients_per_object_and_proxy = 3;
        let host = net.host();
        let proxies: Vec<SocketAddr> = net.peers.iter().map(Peer::http).collect();
        let results = net.rt.block_on(async {
            let mut tasks = Vec::new();
            for round in 0..clients_per_object_and_proxy {
                for obj in 0..objects {
                    for (p, &proxy) in proxies.iter().enumerate() {
                        let host = host.clone();
                        tasks.push(tokio::spawn(async move {
                            let r =
                                client_get(proxy, &host, &format!("/flash/{obj}.bin"), "").await;
                            (round, obj, p, r)
                        }));
                    }
                }
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        let requests = results.len();
        let mut ok = 0;
        for (round, obj, p, r) in results {
            let (status, _, body) = r.unwrap_or_else(|e| panic!("{round}/{obj} via {p}: {e}"));
            assert_eq!(status, 200, "object {obj} via proxy {p}");
            assert!(
                body == origin::flash_body(obj),
                "object {obj} via proxy {p}: wrong bytes"
            );
            ok += 1;
        }
        assert_eq!(ok, requests);
        assert_eq!(
            requests,
            objects * proxies.len() * clients_per_object_and_proxy
        );
        let stats: Vec<ProxyStats> = net.peers.iter().map(Peer::stats).collect();
        let fetched: u64 = stats.iter().map(|s| s.origin_fetches).sum();
        assert_eq!(
            net.origin.served(),
            objects as u64,
            "every object leaves the origin once: {stats:?}"
        );
        assert_eq!(fetched, objects as u64, "{stats:?}");
        for (k, s) in kinds.iter().zip(&stats) {
            assert!(s.requests > 0, "{k:?} proxy served: {s:?}");
        }
        net.shutdown();
    });
}

#[test]
fn origin_names_are_resolved_off_the_loop_and_checked_by_the_core() {
    bounded(|| {
        // The origin on 127.0.0.1, allow-listed, reached by the name `localhost`.
        let net = Net::start(&[Kind::Mio], 1, None, |_| {});
        let port = net.origin.addr.port();
        let at = net.peers[0].http();
        let get = |host: String| {
            net.rt
                .block_on(client_get(at, &host, "/flash/4.bin", ""))
                .unwrap()
        };
        let (status, _, body) = get(format!("localhost.{port}.nyud.net"));
        assert_eq!(status, 200);
        assert!(body.to_vec() == flash(4));
        assert_eq!(net.origin.served(), 1);
        // A name that does not resolve is a 502, never a hang.
        let (status, _, _) = get(format!("nonexistent.invalid.{port}.nyud.net"));
        assert_eq!(status, 502);
        net.shutdown();
        // A name resolving to a private address off the allow-list (only
        // the origin's 127.0.0.2 is on it) is refused by the core's rule on
        // the resolved address: 403, and nothing is contacted.
        let net = Net::start(&[Kind::Mio], 2, None, |_| {});
        let at = net.peers[0].http();
        let (status, _, _) = net
            .rt
            .block_on(client_get(
                at,
                &format!("localhost.{port}.nyud.net"),
                "/flash/4.bin",
                "",
            ))
            .unwrap();
        assert_eq!(status, 403);
        assert_eq!(net.origin.served(), 0);
        net.shutdown();
    });
}
