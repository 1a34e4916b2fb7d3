//! A traceroute that needs no privileges (spec §5, §6.2): the routers on
//! the path to a host, each with the RTT to it, for Coral's router hints.
//!
//! One UDP socket sends a datagram per TTL, 1 to `max_hops`, all at once,
//! each to its own closed high port (`base_port + ttl`). Linux reports what
//! comes back on the socket's error queue when `IP_RECVERR` is on, with no
//! raw socket and no root: a router where a datagram's TTL ran out answers
//! ICMP time-exceeded and is named as the offender, and the target itself
//! answers port-unreachable. The original destination port says which TTL
//! each report is for. Hops that stay silent are left out.
//!
//! A DNS server traces the path toward a resolver and keeps the last hops
//! before it ([`Trace::last_hops`]); a node traces its own way out and
//! publishes the first ones ([`Trace::first_hops`]). IPv6 works the same
//! way (`IPV6_RECVERR`, the hop limit, ICMPv6 time-exceeded).
//!
//! A [`Tracer`] is driven by an event loop (coral-mio registers its
//! socket; the tokio node makes it a tokio socket and waits on
//! [`Tracer::wait`]); [`trace`] drives one to the end, blocking. Either
//! way it ends by its deadline.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use coral_core::dsht::hints::Router;
use coral_core::node::MAX_ROUTER_HINTS;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recv, recvmsg, setsockopt, sockopt,
};

/// ICMP type of a TTL that ran out on the way.
const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMPv6 type of a hop limit that ran out on the way.
const ICMP6_TIME_EXCEEDED: u8 = 3;
/// `sock_extended_err.ee_origin` of a report that an ICMP message made.
const SO_EE_ORIGIN_ICMP: u8 = 2;
/// The same for ICMPv6.
const SO_EE_ORIGIN_ICMP6: u8 = 3;

/// How a trace is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceOptions {
    /// The largest TTL sent (a path longer than this is cut short).
    pub max_hops: u8,
    /// Datagram `ttl` goes to port `base_port + ttl` (traceroute's 33434
    /// range: ports nothing listens on).
    pub base_port: u16,
    /// How long to wait for the reports after sending.
    pub timeout: Duration,
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            max_hops: 20,
            base_port: 33_434,
            timeout: Duration::from_millis(500),
        }
    }
}

/// One hop that answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The TTL that expired there.
    pub ttl: u8,
    /// The router that said so, and the RTT to it.
    pub router: Router,
}

/// What a trace found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The routers that answered, by TTL, before the target.
    pub hops: Vec<Hop>,
    /// The TTL at which the target answered, and its RTT, if it did.
    pub reached: Option<(u8, Duration)>,
}

impl Trace {
    /// The `n` hops that answered nearest the target, the nearest first (a
    /// DNS server's view of where a resolver sits).
    pub fn last_hops(&self, n: usize) -> Vec<Router> {
        self.hops.iter().rev().take(n).map(|h| h.router).collect()
    }

    /// What a DNS probe reports to the core: the resolver's RTT (`connect`,
    /// its TCP connect's, else its answer to the trace) and the last
    /// [`MAX_ROUTER_HINTS`] hops, the nearest it first.
    pub fn probe_result(&self, connect: Option<Duration>) -> (Option<Duration>, Vec<Router>) {
        (
            connect.or(self.reached.map(|(_, rtt)| rtt)),
            self.last_hops(MAX_ROUTER_HINTS),
        )
    }

    /// The `n` hops that answered nearest the tracing host, the nearest
    /// first (the routers a node publishes its hints under).
    pub fn first_hops(&self, n: usize) -> Vec<Router> {
        self.hops.iter().take(n).map(|h| h.router).collect()
    }
}

/// A trace under way, driven by whoever owns the event loop: send at
/// [`Tracer::start`], [`Tracer::read`] whenever its socket is ready (the
/// reports arrive as errors: `POLLERR`, mio's `is_error`, tokio's
/// `Interest::ERROR`), and [`Tracer::finish`] once [`Tracer::is_complete`]
/// or [`Tracer::deadline`] has passed. The socket is non-blocking.
#[derive(Debug)]
pub struct Tracer<S = UdpSocket> {
    socket: S,
    state: State,
}

/// A trace's progress, apart from its socket.
#[derive(Debug)]
struct State {
    target: IpAddr,
    opts: TraceOptions,
    /// When each TTL's datagram went out (index `ttl - 1`).
    sent: Vec<Instant>,
    hops: Vec<Hop>,
    reached: Option<(u8, Duration)>,
    /// The least TTL a router said "unreachable" at.
    ended: Option<u8>,
}

/// What a router adds to a report's time on top of the path: ICMP is made
/// on a router's slow path. The trace waits this much past twice the
/// target's RTT for the hops before it.
const ICMP_SLACK: Duration = Duration::from_millis(20);

impl Tracer {
    /// Sends the datagrams toward `target`. Errors only when the socket
    /// cannot be set up or sent from.
    pub fn start(target: IpAddr, opts: TraceOptions) -> io::Result<Self> {
        let socket = match target {
            IpAddr::V4(_) => {
                let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
                setsockopt(&s, sockopt::Ipv4RecvErr, &true)?;
                s
            }
            IpAddr::V6(_) => {
                let s = UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))?;
                setsockopt(&s, sockopt::Ipv6RecvErr, &true)?;
                s
            }
        };
        socket.set_nonblocking(true)?;
        let max = opts.max_hops.max(1);
        let mut sent = Vec::with_capacity(usize::from(max));
        for ttl in 1..=max {
            match target {
                IpAddr::V4(_) => setsockopt(&socket, sockopt::Ipv4Ttl, &i32::from(ttl))?,
                IpAddr::V6(_) => setsockopt(&socket, sockopt::Ipv6Ttl, &i32::from(ttl))?,
            }
            let to = SocketAddr::new(target, opts.base_port.wrapping_add(u16::from(ttl)));
            sent.push(Instant::now());
            // A report that came back already (for an earlier TTL) is also
            // returned, once, by the next call on the socket: that send is
            // then retried. The report itself stays on the error queue.
            if let Err(e) = socket.send_to(&[ttl], to) {
                if e.raw_os_error().is_none() || e.kind() == io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                socket.send_to(&[ttl], to)?;
            }
        }
        Ok(Self {
            socket,
            state: State {
                target,
                opts,
                sent,
                hops: Vec::new(),
                reached: None,
                ended: None,
            },
        })
    }

    /// The same trace on `f`'s socket made of this one (an event loop's
    /// own type, such as tokio's).
    pub fn with_socket<T: AsRawFd>(
        self,
        f: impl FnOnce(UdpSocket) -> io::Result<T>,
    ) -> io::Result<Tracer<T>> {
        Ok(Tracer {
            socket: f(self.socket)?,
            state: self.state,
        })
    }
}

impl Tracer<tokio::net::UdpSocket> {
    /// Waits until reports may be queued, and takes them.
    pub async fn wait(&mut self) -> io::Result<()> {
        let Self { socket, state } = self;
        socket
            .ready(tokio::io::Interest::READABLE | tokio::io::Interest::ERROR)
            .await?;
        let fd = socket.as_raw_fd();
        // Read inside try_io: readiness is cleared only if nothing came in
        // meanwhile.
        for interest in [tokio::io::Interest::ERROR, tokio::io::Interest::READABLE] {
            let taken = socket.try_io(interest, || {
                state.read(fd)?;
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
            if let Err(e) = taken
                && e.kind() != io::ErrorKind::WouldBlock
            {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl<S: AsRawFd> Tracer<S> {
    /// The socket, to register with an event loop.
    pub fn socket(&self) -> &S {
        &self.socket
    }

    /// Takes every report queued on the socket.
    pub fn read(&mut self) -> io::Result<()> {
        self.state.read(self.socket.as_raw_fd())
    }

    /// The target answered, or a router said the path ends with it, and
    /// every TTL before did too.
    pub fn is_complete(&self) -> bool {
        self.state.is_complete()
    }

    /// When to stop waiting: the timeout after sending, or sooner once the
    /// target's RTT is known (its own answer, or `known`, another probe's):
    /// every hop is nearer than the target, so its report is in by twice
    /// that RTT and 20 ms of slack (ICMP is made on a router's slow path).
    pub fn deadline(&self, known: Option<Duration>) -> Instant {
        self.state.deadline(known)
    }

    /// What was found (see [`trace`]).
    pub fn finish(self) -> Trace {
        self.state.finish()
    }
}

impl State {
    fn read(&mut self, fd: RawFd) -> io::Result<()> {
        let max = self.opts.max_hops.max(1);
        while let Some(report) = read_report(fd)? {
            let Some(ttl) = report
                .port
                .checked_sub(self.opts.base_port)
                .and_then(|t| u8::try_from(t).ok())
                .filter(|t| (1..=max).contains(t))
            else {
                continue;
            };
            let rtt = report
                .at
                .saturating_duration_since(self.sent[usize::from(ttl) - 1]);
            match report.kind {
                Kind::Local => {}
                Kind::TimeExceeded(from) | Kind::Unreachable(Some(from)) if from != self.target => {
                    if matches!(report.kind, Kind::Unreachable(_)) {
                        // A router with no way on: the path ends there.
                        self.ended = Some(self.ended.map_or(ttl, |e| e.min(ttl)));
                    }
                    if !self.hops.iter().any(|h| h.ttl == ttl) {
                        self.hops.push(Hop {
                            ttl,
                            router: Router {
                                addr: from,
                                rtt: Some(rtt),
                            },
                        });
                    }
                }
                Kind::TimeExceeded(_) | Kind::Unreachable(_) => {
                    if self.reached.is_none_or(|(at, _)| ttl < at) {
                        self.reached = Some((ttl, rtt));
                    }
                }
            }
        }
        // A plain datagram back (something listened on the port), or the
        // pending error the kernel also keeps for the next call: taken, so
        // that readiness does not stay up.
        let mut buf = [0u8; 64];
        for _ in 0..usize::from(max) {
            if recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) == Err(nix::errno::Errno::EAGAIN) {
                break;
            }
        }
        Ok(())
    }

    fn is_complete(&self) -> bool {
        let end = match (self.reached, self.ended) {
            (Some((at, _)), Some(e)) => at.min(e),
            (Some((at, _)), None) => at,
            (None, Some(e)) => e,
            (None, None) => return false,
        };
        self.hops.iter().filter(|h| h.ttl < end).count() + 1 >= usize::from(end)
    }

    fn deadline(&self, known: Option<Duration>) -> Instant {
        let start = self.sent[0];
        let limit = start + self.opts.timeout;
        match self.reached.map(|(_, rtt)| rtt).or(known) {
            Some(rtt) => limit.min(start + rtt * 2 + ICMP_SLACK),
            None => limit,
        }
    }

    fn finish(self) -> Trace {
        let mut hops = self.hops;
        if let Some((at, _)) = self.reached {
            hops.retain(|h| h.ttl < at);
        }
        if let Some(end) = self.ended {
            hops.retain(|h| h.ttl <= end);
        }
        hops.sort_by_key(|h| h.ttl);
        // A router seen at two TTLs (a loop, or load balancing) counts
        // once, at the first.
        let mut seen: Vec<IpAddr> = Vec::with_capacity(hops.len());
        hops.retain(|h| {
            let fresh = !seen.contains(&h.router.addr);
            seen.push(h.router.addr);
            fresh
        });
        Trace {
            hops,
            reached: self.reached,
        }
    }
}

/// Traces the path to `target` (see the module doc), blocking until the
/// trace is complete or its deadline. Errors only when the socket cannot
/// be set up or sent from; silence is an empty trace.
pub fn trace(target: IpAddr, opts: TraceOptions) -> io::Result<Trace> {
    let mut t = Tracer::start(target, opts)?;
    loop {
        t.read()?;
        let left = t.deadline(None).saturating_duration_since(Instant::now());
        if t.is_complete() || left.is_zero() {
            return Ok(t.finish());
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(
            t.socket.as_fd(),
            PollFlags::POLLERR | PollFlags::POLLIN,
        )];
        poll(&mut fds, PollTimeout::from(ms))?;
    }
}

/// The first hops of this host's way out, as a node publishes its router
/// hints under them (spec §5): a blocking [`trace`] toward `peer` (a
/// bootstrap node, the one far place a new node knows), the nearest this
/// host first, at most `keep`. Empty without a peer, when nothing answered,
/// or when the trace could not run (logged).
pub fn own_hops(peer: Option<IpAddr>, keep: usize) -> Vec<Router> {
    let Some(peer) = peer else {
        return Vec::new();
    };
    match trace(peer, TraceOptions::default()) {
        Ok(t) => {
            let hops = t.first_hops(keep);
            tracing::info!(%peer, hops = hops.len(), "traced the first hops for router hints");
            hops
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot trace a route: router hints left out");
            Vec::new()
        }
    }
}

enum Kind {
    /// ICMP time-exceeded from this router.
    TimeExceeded(IpAddr),
    /// Anything else an ICMP report says (the target's port-unreachable,
    /// or a router's host-unreachable), and who said it: the path ends at
    /// this TTL.
    Unreachable(Option<IpAddr>),
    /// An error of the local stack.
    Local,
}

struct Report {
    /// The destination port of the datagram reported on.
    port: u16,
    at: Instant,
    kind: Kind,
}

/// The next report on the error queue, if any.
fn read_report(fd: RawFd) -> io::Result<Option<Report>> {
    let mut payload = [0u8; 64];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let msg = match recvmsg::<SockaddrStorage>(
        fd,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let at = Instant::now();
    let port = msg.address.as_ref().map_or(0, |a| {
        a.as_sockaddr_in()
            .map(|v4| v4.port())
            .or_else(|| a.as_sockaddr_in6().map(|v6| v6.port()))
            .unwrap_or(0)
    });
    // A queued error that no ICMP message made is a local one: it says
    // nothing of the path.
    let mut kind = Kind::Local;
    for c in msg.cmsgs()? {
        let (err, from, time_exceeded) = match c {
            ControlMessageOwned::Ipv4RecvErr(err, offender)
                if err.ee_origin == SO_EE_ORIGIN_ICMP =>
            {
                (
                    err,
                    offender.map(|o| IpAddr::V4(Ipv4Addr::from(u32::from_be(o.sin_addr.s_addr)))),
                    ICMP_TIME_EXCEEDED,
                )
            }
            ControlMessageOwned::Ipv6RecvErr(err, offender)
                if err.ee_origin == SO_EE_ORIGIN_ICMP6 =>
            {
                (
                    err,
                    offender.map(|o| IpAddr::V6(Ipv6Addr::from(o.sin6_addr.s6_addr))),
                    ICMP6_TIME_EXCEEDED,
                )
            }
            _ => continue,
        };
        kind = match from {
            Some(from) if err.ee_type == time_exceeded => Kind::TimeExceeded(from),
            // Port-unreachable from the target, or a router's
            // host- or network-unreachable.
            _ => Kind::Unreachable(from),
        };
    }
    Ok(Some(Report { port, at, kind }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_reached_at_the_first_hop_with_no_router_between() {
        let t = trace(IpAddr::V4(Ipv4Addr::LOCALHOST), TraceOptions::default()).unwrap();
        let (at, rtt) = t.reached.expect("127.0.0.1 answers port-unreachable");
        assert_eq!(at, 1);
        assert!(rtt < Duration::from_millis(500), "{rtt:?}");
        assert!(t.hops.is_empty(), "{t:?}");
    }

    #[test]
    fn ipv6_loopback_is_reached_at_the_first_hop_too() {
        let t = trace(IpAddr::V6(Ipv6Addr::LOCALHOST), TraceOptions::default()).unwrap();
        let (at, _) = t.reached.expect("::1 answers port-unreachable");
        assert_eq!(at, 1);
        assert!(t.hops.is_empty(), "{t:?}");
    }

    #[test]
    fn last_and_first_hops_read_from_either_end() {
        let hop = |ttl: u8| Hop {
            ttl,
            router: Router {
                addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, ttl)),
                rtt: Some(Duration::from_millis(u64::from(ttl))),
            },
        };
        let t = Trace {
            hops: (1..=7).map(hop).collect(),
            reached: Some((8, Duration::from_millis(8))),
        };
        let last: Vec<u8> = t.last_hops(5).iter().map(|r| octet(r.addr)).collect();
        assert_eq!(last, [7, 6, 5, 4, 3]);
        let first: Vec<u8> = t.first_hops(2).iter().map(|r| octet(r.addr)).collect();
        assert_eq!(first, [1, 2]);
    }

    fn octet(ip: IpAddr) -> u8 {
        match ip {
            IpAddr::V4(a) => a.octets()[3],
            IpAddr::V6(_) => 0,
        }
    }
}
