//! The unprivileged tracer across real routers: four network namespaces
//! joined by veth pairs, a source, two forwarding routers and a target, as
//! `ip netns` builds them (root only: without it the test says so and
//! passes, since nothing can be built; the loopback case in the unit
//! tests needs no privilege). The trace from the source, made on a thread
//! that entered the source's namespace, must name both routers, at TTLs 1
//! and 2, with their RTTs, and reach the target at TTL 3, over IPv4 and
//! IPv6; the DNS probe
//! (TCP connect and trace at once) reports the RTT and those hops.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

#[path = "../../tests/tests/common/netns.rs"]
mod netns;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use coral_tokio::dns::probe_and_trace;
use coral_tokio::trace::{Trace, TraceOptions, Tracer, own_hops, trace};
use netns::in_namespace;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn a_trace_names_each_router_on_the_way_and_reaches_the_target() {
    let Some(ns) = netns::build() else {
        eprintln!("SKIPPED: cannot make network namespaces here (not root, or no `ip`)");
        return;
    };
    let target = v4(10, 201, 3, 2);
    let t = in_namespace(ns.source(), move || {
        trace(target, TraceOptions::default()).unwrap()
    });
    let hops: Vec<(u8, IpAddr)> = t.hops.iter().map(|h| (h.ttl, h.router.addr)).collect();
    assert_eq!(
        hops,
        [(1, v4(10, 201, 1, 2)), (2, v4(10, 201, 2, 2))],
        "{t:?}"
    );
    let (at, rtt) = t.reached.expect("the target answers port-unreachable");
    assert_eq!(at, 3, "{t:?}");
    assert!(rtt < Duration::from_millis(500), "{t:?}");
    assert!(t.hops.iter().all(|h| h.router.rtt.is_some()), "{t:?}");
    // A DNS server keeps the hops nearest the resolver first.
    let last: Vec<IpAddr> = t.last_hops(5).iter().map(|r| r.addr).collect();
    assert_eq!(last, [v4(10, 201, 2, 2), v4(10, 201, 1, 2)]);
    // The same path over IPv6. Neighbour discovery on fresh links may
    // still be under way and lose a first trace's datagrams: up to five
    // traces, 200 ms apart, until one comes back.
    let t6 = in_namespace(ns.source(), || {
        let mut t = Trace::default();
        for _ in 0..5 {
            t = trace("fd00:201:3::2".parse().unwrap(), TraceOptions::default()).unwrap();
            if t.reached.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        t
    });
    let hops6: Vec<(u8, IpAddr)> = t6.hops.iter().map(|h| (h.ttl, h.router.addr)).collect();
    let six = |s: &str| -> IpAddr { s.parse().unwrap() };
    assert_eq!(
        hops6,
        [(1, six("fd00:201:1::2")), (2, six("fd00:201:2::2"))],
        "{t6:?}"
    );
    assert_eq!(t6.reached.map(|(at, _)| at), Some(3), "{t6:?}");
    // What a node there publishes its router hints under: the first hops
    // of its way out, the nearest it first.
    let own = in_namespace(ns.source(), move || own_hops(Some(target), 5));
    let own: Vec<IpAddr> = own.iter().map(|r| r.addr).collect();
    assert_eq!(own, [v4(10, 201, 1, 2), v4(10, 201, 2, 2)]);
    // What a DNS server's probe of a resolver there reports: the RTT (its
    // TCP connect to port 53 is refused) and the hops, nearest it first.
    let (rtt, routers) = in_namespace(ns.source(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(probe_and_trace(target, Duration::from_millis(500)))
    });
    assert!(
        rtt.is_some_and(|r| r < Duration::from_millis(500)),
        "{rtt:?}"
    );
    let addrs: Vec<IpAddr> = routers.iter().map(|r| r.addr).collect();
    assert_eq!(addrs, [v4(10, 201, 2, 2), v4(10, 201, 1, 2)]);
    assert!(routers.iter().all(|r| r.rtt.is_some()), "{routers:?}");
    // A target that router 1 has no route to: it names itself at TTL 1
    // and says "unreachable" past it, which ends the trace there.
    let lost = in_namespace(ns.source(), move || {
        let mut t = Tracer::start(v4(10, 201, 9, 9), TraceOptions::default()).unwrap();
        let deadline = t.deadline(None);
        while !t.is_complete() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            t.read().unwrap();
        }
        (t.is_complete(), t.finish())
    });
    assert!(lost.0, "the router's unreachable ends the trace: {lost:?}");
    let hops: Vec<IpAddr> = lost.1.hops.iter().map(|h| h.router.addr).collect();
    assert_eq!(hops, [v4(10, 201, 1, 2)], "{lost:?}");
    assert!(lost.1.reached.is_none(), "{lost:?}");
}
