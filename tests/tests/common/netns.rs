//! Four network namespaces joined by veth pairs, for tests that need real
//! routers between two hosts: source 10.201.1.1 (and .3) → router 1 (10.201.1.2 |
//! 10.201.2.1) → router 2 (10.201.2.2 | 10.201.3.1) → target 10.201.3.2,
//! and the same in IPv6 (fd00:201:N::1 and ::2 on link N),
//! made with `ip netns` (root only) and removed on drop.
#![allow(dead_code)]

use std::process::Command;

use nix::sched::{CloneFlags, setns};

/// Namespaces made for one run, removed (with their veth pairs) on drop.
pub(crate) struct Namespaces(Vec<String>);

impl Namespaces {
    /// The source's namespace.
    pub(crate) fn source(&self) -> &str {
        &self.0[0]
    }

    /// The target's namespace.
    pub(crate) fn target(&self) -> &str {
        &self.0[3]
    }
}

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

/// `ip netns exec ns args...`; the command line when it fails.
fn in_ns(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut v = vec!["netns", "exec", ns];
    v.extend_from_slice(args);
    if ip(&v) {
        Ok(())
    } else {
        Err(format!("ip {}", v.join(" ")))
    }
}

/// Builds the four namespaces (see the module doc); `None` when they
/// cannot be made here (not root, no `ip`, no veth), said on stderr.
pub(crate) fn build() -> Option<Namespaces> {
    let tag = std::process::id();
    let names: Vec<String> = ["s", "r1", "r2", "t"]
        .iter()
        .map(|n| format!("coral-trace-{tag}-{n}"))
        .collect();
    let mut guard = Namespaces(Vec::new());
    match setup(tag, &names, &mut guard) {
        Ok(()) => Some(guard),
        Err(step) => {
            eprintln!("cannot build the test namespaces: {step} failed");
            None
        }
    }
}

fn setup(tag: u32, names: &[String], guard: &mut Namespaces) -> Result<(), String> {
    for n in names {
        if !ip(&["netns", "add", n]) {
            return Err(format!("ip netns add {n}"));
        }
        guard.0.push(n.clone());
        // No duplicate address detection on the links made next: a
        // link-local address held back by it would delay neighbour
        // discovery and lose the first IPv6 datagrams.
        sysctl(n, "net/ipv6/conf/default/accept_dad", 0)?;
    }
    let [s, r1, r2, t] = [&names[0], &names[1], &names[2], &names[3]];
    // One veth pair per link, each end made in its namespace.
    for (a, b, net) in [(s, r1, 1), (r1, r2, 2), (r2, t, 3)] {
        let (ea, eb) = (format!("ct{tag}a{net}"), format!("ct{tag}b{net}"));
        let veth = [
            "link", "add", &ea, "netns", a, "type", "veth", "peer", "name", &eb, "netns", b,
        ];
        if !ip(&veth) {
            return Err(format!("ip {}", veth.join(" ")));
        }
        let (aa, ab) = (format!("10.201.{net}.1/24"), format!("10.201.{net}.2/24"));
        in_ns(a, &["ip", "addr", "add", &aa, "dev", &ea])?;
        in_ns(b, &["ip", "addr", "add", &ab, "dev", &eb])?;
        // IPv6 too, without duplicate address detection (it would hold the
        // addresses back for a second or two).
        let (sa, sb) = (
            format!("fd00:201:{net}::1/64"),
            format!("fd00:201:{net}::2/64"),
        );
        in_ns(a, &["ip", "-6", "addr", "add", &sa, "dev", &ea, "nodad"])?;
        in_ns(b, &["ip", "-6", "addr", "add", &sb, "dev", &eb, "nodad"])?;
        in_ns(a, &["ip", "link", "set", &ea, "up"])?;
        in_ns(b, &["ip", "link", "set", &eb, "up"])?;
        if net == 1 {
            // A second host address at the source, for a second server.
            in_ns(a, &["ip", "addr", "add", "10.201.1.3/24", "dev", &ea])?;
        }
    }
    for n in names {
        in_ns(n, &["ip", "link", "set", "lo", "up"])?;
    }
    for r in [r1, r2] {
        sysctl(r, "net/ipv4/ip_forward", 1)?;
        sysctl(r, "net/ipv6/conf/all/forwarding", 1)?;
    }
    let routes = [
        (s, "-4", "default", "10.201.1.2"),
        (r1, "-4", "10.201.3.0/24", "10.201.2.2"),
        (r2, "-4", "10.201.1.0/24", "10.201.2.1"),
        (t, "-4", "default", "10.201.3.1"),
        (s, "-6", "default", "fd00:201:1::2"),
        (r1, "-6", "fd00:201:3::/64", "fd00:201:2::2"),
        (r2, "-6", "fd00:201:1::/64", "fd00:201:2::1"),
        (t, "-6", "default", "fd00:201:3::1"),
    ];
    for (ns, family, to, via) in routes {
        in_ns(ns, &["ip", family, "route", "add", to, "via", via])?;
    }
    Ok(())
}

/// Writes `value` to `/proc/sys/<key>` in namespace `ns` (through `sh`,
/// which every machine has, where the sysctl binary may be missing).
fn sysctl(ns: &str, key: &str, value: u8) -> Result<(), String> {
    let cmd = format!("echo {value} > /proc/sys/{key}");
    in_ns(ns, &["sh", "-c", &cmd])
}

/// Runs `f` on a thread inside namespace `ns` (a socket belongs to the
/// namespace of the thread that makes it).
pub(crate) fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        setns(file, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}
