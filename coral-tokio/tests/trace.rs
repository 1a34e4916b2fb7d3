//! The unprivileged tracer across real routers: four network namespaces
//! joined by veth pairs, a source, two forwarding routers and a target, as
//! `ip netns` builds them (root only: without it the test says so and
//! passes, since nothing can be built; the loopback case in the unit
//! tests needs no privilege). The trace from the source, made on a thread
//! that entered the source's namespace, must name both routers, at TTLs 1
//! and 2, with their RTTs, and reach the target at TTL 3; the DNS probe
//! (TCP connect and trace at once) reports the RTT and those hops.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use coral_tokio::dns::probe_and_trace;
use coral_tokio::trace::{TraceOptions, Tracer, trace};
use nix::sched::{CloneFlags, setns};

/// Namespaces made for one run, removed (with their veth pairs) on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn in_ns(ns: &str, args: &[&str]) {
    let mut v = vec!["netns", "exec", ns];
    v.extend_from_slice(args);
    let ok = Command::new("ip")
        .args(&v)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {v:?} failed");
}

/// source 10.201.1.1 → router 1 (10.201.1.2 | 10.201.2.1) → router 2
/// (10.201.2.2 | 10.201.3.1) → target 10.201.3.2. `None` when namespaces
/// cannot be made here.
fn build() -> Option<(Namespaces, String)> {
    let tag = std::process::id();
    let names: Vec<String> = ["s", "r1", "r2", "t"]
        .iter()
        .map(|n| format!("coral-trace-{tag}-{n}"))
        .collect();
    if !ip(&["netns", "add", &names[0]]) {
        return None;
    }
    let guard = Namespaces(vec![names[0].clone()]);
    let mut guard = guard;
    for n in &names[1..] {
        assert!(ip(&["netns", "add", n]), "netns add {n}");
        guard.0.push(n.clone());
    }
    let [s, r1, r2, t] = [&names[0], &names[1], &names[2], &names[3]];
    // One veth pair per link, each end moved into its namespace.
    let links = [(s, r1, "1"), (r1, r2, "2"), (r2, t, "3")];
    for (a, b, net) in links {
        let (ea, eb) = (format!("ct{tag}a{net}"), format!("ct{tag}b{net}"));
        assert!(ip(&[
            "link", "add", &ea, "netns", a, "type", "veth", "peer", "name", &eb, "netns", b
        ]));
        in_ns(
            a,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.201.{net}.1/24"),
                "dev",
                &ea,
            ],
        );
        in_ns(
            b,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.201.{net}.2/24"),
                "dev",
                &eb,
            ],
        );
        in_ns(a, &["ip", "link", "set", &ea, "up"]);
        in_ns(b, &["ip", "link", "set", &eb, "up"]);
    }
    for n in &names {
        in_ns(n, &["ip", "link", "set", "lo", "up"]);
    }
    for r in [r1, r2] {
        in_ns(r, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    }
    in_ns(s, &["ip", "route", "add", "default", "via", "10.201.1.2"]);
    in_ns(
        r1,
        &["ip", "route", "add", "10.201.3.0/24", "via", "10.201.2.2"],
    );
    in_ns(
        r2,
        &["ip", "route", "add", "10.201.1.0/24", "via", "10.201.2.1"],
    );
    in_ns(t, &["ip", "route", "add", "default", "via", "10.201.3.1"]);
    Some((guard, s.clone()))
}

/// Runs `f` on a thread inside namespace `ns` (a socket belongs to the
/// namespace of the thread that makes it).
fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        setns(file, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn a_trace_names_each_router_on_the_way_and_reaches_the_target() {
    let Some((_guard, source)) = build() else {
        eprintln!("SKIPPED: cannot make network namespaces here (not root, or no `ip`)");
        return;
    };
    let target = v4(10, 201, 3, 2);
    let t = in_namespace(&source, move || {
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
    // What a DNS server's probe of a resolver there reports: the RTT (its
    // TCP connect to port 53 is refused) and the hops, nearest it first.
    let (rtt, routers) = in_namespace(&source, move || {
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
    assert!(
        routers
            .iter()
            .all(|r| r.rtt.is_some_and(|h| h <= rtt.unwrap() * 2))
    );
    // A target that router 1 has no route to: it names itself at TTL 1
    // and says "unreachable" past it, which ends the trace there.
    let lost = in_namespace(&source, move || {
        let mut t = Tracer::start(v4(10, 201, 9, 9), TraceOptions::default())
            .unwrap()
            .unwrap();
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
