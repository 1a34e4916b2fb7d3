//! The DNS redirector (spec §6) on the node's own loop: its UDP socket,
//! its TCP listener and connections, and its resolver probes are more
//! sources on the one `mio::Poll` the RPC socket uses, and the core's
//! [`DnsServer`] reads the node this loop owns.
//!
//! Every decision (what to answer, whom to hold, when to probe, the rate
//! limit) is the core's, driven as coral-tokio's node task drives it; this
//! file moves bytes, bounds what the network can make it hold, and keeps
//! time:
//!
//! - **UDP**: queries are taken in `recvmmsg` batches, at most
//!   [`RECV_TURNS`] batches per turn; each response is written by the core
//!   straight into a slot of the bounded send queue, which `sendmmsg`
//!   flushes at the end of a batch, when full, and on writability (asked
//!   for only while datagrams wait). A query that finds every slot taken
//!   while the socket is blocked is dropped and counted (the resolver
//!   retries).
//! - **TCP**: at most `tcp_max_connections` connections (more wait in the
//!   kernel's backlog), each reading 2-byte length-prefixed queries and
//!   writing length-prefixed answers, one query at a time as coral-tokio
//!   does; no new query is taken while more than [`WRITE_HIGH`] bytes wait
//!   to be written, and no more is read while a whole message waits, so a
//!   connection holds at most about two messages each way. A connection
//!   with no complete query for `tcp_idle_timeout` is closed.
//! - **Held queries** (a resolver not yet measured waits for its probe):
//!   the core answers them later through [`DnsServer::poll_answer`]; UDP
//!   answers go to the address, TCP answers to the connection the query's
//!   token names, or nowhere if it closed meanwhile.
//! - **Probes**: a non-blocking TCP connect to the resolver's port 53,
//!   registered on the poller with a `probe_timeout` deadline; the time to
//!   a connect accepted or refused is the RTT (one round trip, no
//!   privileges needed), a timeout or any other error is unmeasurable.
//!   With it a trace of the last hops toward the resolver
//!   ([`coral_tokio::trace::Tracer`]) runs on its own registered socket;
//!   the probe ends when the connect has come back and the trace is
//!   complete or past its deadline, and hands the core both. At most
//!   `max_probes_in_flight` run at once; the core queues the rest.
//! - **Hint lookups** run on the node with [`Node::find_hinted`], and
//!   **liveness checks** of the proxies they name with
//!   [`Node::check_live`]; the `HintsFound` and `Checked` events that
//!   finish them are taken here before anyone else sees them.
//!
//! There is no timer: connection and probe deadlines sit in one ordered
//! set, and its first entry and [`DnsServer::poll_timeout`] join the
//! loop's `epoll_wait` timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant as StdInstant};

use coral_core::contact::{Contact, Services};
use coral_core::dns::{DnsServer, DnsStats, Handled, Transport};
use coral_core::dsht::hints::Router;
use coral_core::time::Instant as CoreInstant;
use coral_core::{Event, Node, OpId};
use coral_tokio::dns::DnsOptions;
use coral_tokio::runtime::BindError;
use coral_tokio::trace::{TraceOptions, Tracer};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use slab::Slab;
use tracing::debug;

use crate::runtime::RECV_TURNS;
use crate::udp::{BATCH, Headers, RecvBatch, SendQueue};

/// DNS TCP connection tokens are slab keys plus this. It lies far above
/// the proxy's range (from [`crate::proxy::FIRST_PROXY_CONN`]), which file
/// descriptor limits keep well below it; the loop routes this range first.
pub(crate) const FIRST_DNS_CONN: usize = 1 << 30;
/// Most slab keys of each DNS range: connection and probe limits are
/// clamped to it, so the ranges never overlap.
const MAX_KEYS: usize = 1 << 28;
/// Probe tokens are slab keys plus this.
const FIRST_DNS_PROBE: usize = FIRST_DNS_CONN + MAX_KEYS;
/// A probe's trace socket: its slab key plus this.
const FIRST_DNS_TRACE: usize = FIRST_DNS_PROBE + MAX_KEYS;
// The DNS ranges start above the proxy's and end within a 32-bit usize.
const _: () = assert!(
    FIRST_DNS_CONN > crate::proxy::FIRST_PROXY_CONN
        && FIRST_DNS_TRACE.checked_add(MAX_KEYS).is_some()
);

/// Connections accepted per turn before the loop looks at its other sources.
pub const ACCEPT_TURN: usize = 16;
/// Reads per connection per turn.
pub const READ_TURN: usize = 8;
/// Bytes of answers waiting on a connection above which no new query is
/// taken from it (its reading stops until the client reads).
pub const WRITE_HIGH: usize = 64 * 1024;
/// A whole length-prefixed message: reading stops while one waits.
const MAX_FRAME: usize = 2 + u16::MAX as usize;
/// Bytes read from a connection at once.
const READ_CHUNK: usize = 16 * 1024;
/// The DNS port a resolver probe connects to.
const PROBE_PORT: u16 = 53;

/// The DNS server's sockets, bound before the loop starts (so a busy port
/// fails before anything runs), and how to run it.
#[derive(Debug)]
pub struct DnsSockets {
    /// The UDP socket (non-blocking).
    pub udp: std::net::UdpSocket,
    /// The TCP listener on the same address (non-blocking).
    pub tcp: std::net::TcpListener,
    /// The options; `addr` is where both really listen.
    pub options: DnsOptions,
}

impl DnsSockets {
    /// Binds UDP and TCP at `options.addr` (port 0 picks one port for
    /// both), with coral-tokio's `DnsService::bind`.
    pub fn bind(options: DnsOptions) -> Result<Self, BindError> {
        let (udp, tcp, options) = coral_tokio::dns::DnsService::bind(options)?.into_parts();
        Ok(Self { udp, tcp, options })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.options.addr
    }
}

/// What a deadline in [`Dns::timers`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A connection's idle limit (slab key).
    Conn(usize),
    /// A probe's limit (slab key).
    Probe(usize),
}

/// One TCP client.
struct Conn {
    stream: TcpStream,
    from: SocketAddr,
    /// Bytes read and not yet taken as queries.
    inbuf: Vec<u8>,
    /// Framed answers; `out[written..]` waits for the socket.
    out: Vec<u8>,
    written: usize,
    /// The token of the query whose answer the core holds.
    held: Option<u64>,
    /// Read readiness not yet consumed down to `WouldBlock`.
    readable: bool,
    /// The client closed its side, or the stream is out of step: close
    /// once what is owed is written.
    ending: bool,
    deadline: StdInstant,
}

impl Conn {
    fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// Queues `answer` with its length prefix (a TCP message is at most
    /// 64 KiB, which the core already keeps to).
    fn push(&mut self, answer: &[u8]) {
        let n = u16::try_from(answer.len()).unwrap_or(u16::MAX);
        self.out.extend_from_slice(&n.to_be_bytes());
        self.out.extend_from_slice(&answer[..usize::from(n)]);
    }

    /// The next complete query's length, when one is in `inbuf`.
    fn frame(&self) -> Option<usize> {
        let [a, b, ..] = self.inbuf[..] else {
            return None;
        };
        let n = usize::from(u16::from_be_bytes([a, b]));
        (self.inbuf.len() >= 2 + n).then_some(n)
    }

    /// Writes what waits until done or `WouldBlock`; false on failure.
    fn write_out(&mut self) -> bool {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return false,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written >= WRITE_HIGH {
            self.out.drain(..self.written);
            self.written = 0;
        }
        true
    }
}

/// A resolver probe: a TCP connect, and a trace of the last hops toward
/// the resolver, in flight at once.
struct Probe {
    stream: TcpStream,
    /// What the connect came to, once it did (the RTT, or `None`).
    connect: Option<Option<Duration>>,
    /// The trace, when one could be started.
    tracer: Option<Tracer>,
    target: IpAddr,
    started: StdInstant,
    /// The probe's timer: the connect's limit, then the trace's.
    deadline: StdInstant,
}

/// What the adapter dropped or lost, for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
struct Drops {
    /// UDP queries not answered because the send queue was full.
    udp_queue_full: u64,
    /// UDP responses the kernel refused.
    udp_send_failed: u64,
    /// Held TCP answers whose connection had closed.
    tcp_answers_lost: u64,
    /// TCP connections closed for idling.
    tcp_idle_closed: u64,
}

/// Starts a trace toward `target` for probe `key`, registered on the
/// poller, ending by `timeout`; `None` when it cannot (a socket error).
fn start_trace(
    registry: &Registry,
    target: IpAddr,
    key: usize,
    timeout: Duration,
) -> Option<Tracer> {
    let opts = TraceOptions {
        timeout,
        ..TraceOptions::default()
    };
    let tracer = Tracer::start(target, opts)
        .inspect_err(|e| debug!(%target, error = %e, "cannot trace toward a resolver"))
        .ok()?;
    let fd = tracer.socket().as_raw_fd();
    let token = Token(FIRST_DNS_TRACE + key);
    registry
        .register(&mut SourceFd(&fd), token, Interest::READABLE)
        .inspect_err(|e| debug!(%target, error = %e, "cannot register a trace"))
        .ok()?;
    Some(tracer)
}

/// Takes a trace's socket off the poller (it closes when the trace drops).
fn deregister_trace(registry: &Registry, t: &Tracer) {
    let _ = registry.deregister(&mut SourceFd(&t.socket().as_raw_fd()));
}

/// Whether a probe's error still measures a round trip: a refused connect
/// came back from the resolver's host.
fn refused(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ConnectionRefused
}

/// What a probe's connect came to, once its socket is ready: `None` while
/// it is still connecting, else the RTT (accepted or refused: the
/// resolver's host answered) or `None` within (any other error).
fn probe_outcome(stream: &TcpStream, started: StdInstant) -> Option<Option<Duration>> {
    let failed = match stream.take_error() {
        Ok(Some(e)) | Err(e) => Some(e),
        Ok(None) => match stream.peer_addr() {
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
            Err(e) => Some(e),
        },
    };
    Some(match failed {
        None => Some(started.elapsed()),
        Some(e) if refused(&e) => Some(started.elapsed()),
        Some(_) => None,
    })
}

/// The DNS server's sockets and the core redirector they feed.
pub(crate) struct Dns {
    server: DnsServer,
    addr: SocketAddr,
    udp: UdpSocket,
    listener: TcpListener,
    udp_token: Token,
    epoch: StdInstant,
    recv: RecvBatch,
    send: SendQueue,
    /// One set of kernel headers per direction, for the loop's life
    /// (`sendmmsg` repoints the address fields `recvmmsg` fills).
    recv_headers: Headers,
    send_headers: Headers,
    /// The UDP socket may hold more queries (the budget ran out first).
    udp_more: bool,
    /// The UDP socket is registered for writability too.
    want_writable: bool,
    conns: Slab<Conn>,
    max_conns: usize,
    idle: Duration,
    /// The listener may hold connections not yet accepted.
    accept_pending: bool,
    /// Connections whose readiness was not consumed this turn (budget).
    more: BTreeSet<usize>,
    /// TCP queries held by the core: token to connection.
    waiting: BTreeMap<u64, usize>,
    next_token: u64,
    probes: Slab<Probe>,
    max_probes: usize,
    probe_timeout: Duration,
    /// Whether probes trace the hops toward the resolver too.
    trace: bool,
    timers: BTreeSet<(StdInstant, Timer)>,
    /// Hint lookups running on the node, by operation.
    lookups: BTreeMap<OpId, IpAddr>,
    /// Liveness checks running on the node, by operation.
    checks: BTreeMap<OpId, Contact>,
    /// The core's response to a TCP query.
    out: Vec<u8>,
    scratch: Vec<u8>,
    drops: Drops,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("addr", &self.addr)
            .field("connections", &self.conns.len())
            .field("probes", &self.probes.len())
            .finish_non_exhaustive()
    }
}

impl Dns {
    /// Takes over bound sockets and registers them as `udp_token` and
    /// `listener_token`; `levels` is the node's level count, `epoch` the
    /// loop's time origin.
    pub(crate) fn new(
        sockets: DnsSockets,
        levels: usize,
        registry: &Registry,
        udp_token: Token,
        listener_token: Token,
        epoch: StdInstant,
    ) -> io::Result<Self> {
        let DnsSockets { udp, tcp, options } = sockets;
        let server = DnsServer::new(options.server.clone(), levels)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let addr = tcp.local_addr()?;
        let mut udp = UdpSocket::from_std(udp);
        registry.register(&mut udp, udp_token, Interest::READABLE)?;
        let mut listener = TcpListener::from_std(tcp);
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(Self {
            server,
            addr,
            udp,
            listener,
            udp_token,
            epoch,
            recv: RecvBatch::new(),
            send: SendQueue::new(),
            recv_headers: Headers::new(),
            send_headers: Headers::new(),
            udp_more: true,
            want_writable: false,
            conns: Slab::new(),
            max_conns: options.tcp_max_connections.clamp(1, MAX_KEYS),
            idle: options.tcp_idle_timeout,
            accept_pending: true,
            more: BTreeSet::new(),
            waiting: BTreeMap::new(),
            next_token: 0,
            probes: Slab::new(),
            max_probes: options.max_probes_in_flight.clamp(1, MAX_KEYS),
            probe_timeout: options.probe_timeout,
            trace: options.trace,
            timers: BTreeSet::new(),
            lookups: BTreeMap::new(),
            checks: BTreeMap::new(),
            out: Vec::with_capacity(4096),
            scratch: vec![0; READ_CHUNK],
            drops: Drops::default(),
        })
    }

    /// Where UDP and TCP listen.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The core's counters.
    pub(crate) fn stats(&self) -> DnsStats {
        self.server.stats()
    }

    /// Prometheus text of this adapter's own gauges and drop counters (the
    /// core's counters are in the status snapshot's).
    pub(crate) fn metrics(&self) -> String {
        let d = self.drops;
        format!(
            "# TYPE coral_dns_tcp_connections gauge\ncoral_dns_tcp_connections {}\n\
             # TYPE coral_dns_probes_in_flight gauge\ncoral_dns_probes_in_flight {}\n\
             # TYPE coral_dns_udp_queue_full_total counter\ncoral_dns_udp_queue_full_total {}\n\
             # TYPE coral_dns_udp_send_failed_total counter\ncoral_dns_udp_send_failed_total {}\n\
             # TYPE coral_dns_tcp_answers_lost_total counter\ncoral_dns_tcp_answers_lost_total {}\n\
             # TYPE coral_dns_tcp_idle_closed_total counter\ncoral_dns_tcp_idle_closed_total {}\n",
            self.conns.len(),
            self.probes.len(),
            d.udp_queue_full,
            d.udp_send_failed,
            d.tcp_answers_lost,
            d.tcp_idle_closed,
        )
    }

    fn now(&self) -> CoreInstant {
        CoreInstant::from_duration(self.epoch.elapsed())
    }

    /// How long the loop may sleep as far as DNS is concerned: not at all
    /// while readiness is left over, else until the redirector's deadline
    /// (held queries) or the first connection or probe deadline.
    pub(crate) fn wait(&self) -> Option<Duration> {
        if self.udp_more
            || !self.more.is_empty()
            || (self.accept_pending && self.conns.len() < self.max_conns)
            || self.server.has_checks()
        {
            return Some(Duration::ZERO);
        }
        let core = self
            .server
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.now()));
        let io = self
            .timers
            .first()
            .map(|(t, _)| t.saturating_duration_since(StdInstant::now()));
        core.into_iter().chain(io).min()
    }

    /// The UDP socket is ready: readable means queries wait (taken in the
    /// turn, under its budget); writable lets the send queue go.
    pub(crate) fn udp_ready(&mut self, registry: &Registry, readable: bool, writable: bool) {
        if readable {
            self.udp_more = true;
        }
        if writable && !self.send.is_empty() {
            self.flush(registry);
        }
    }

    /// The listener is readable: accept up to [`ACCEPT_TURN`] connections.
    pub(crate) fn accept_ready(&mut self, node: &Node, registry: &Registry) {
        self.accept_pending = true;
        self.accept(node, registry);
    }

    /// A connection or probe of ours (`token` is in the DNS range) is
    /// ready; a connection's turn writes whatever the edge was, and reads
    /// when it was readable.
    pub(crate) fn ready(&mut self, node: &Node, registry: &Registry, token: usize, readable: bool) {
        if token >= FIRST_DNS_TRACE {
            self.trace_ready(node, registry, token - FIRST_DNS_TRACE);
        } else if token >= FIRST_DNS_PROBE {
            self.probe_ready(node, registry, token - FIRST_DNS_PROBE);
        } else if let Some(c) = self.conns.get_mut(token - FIRST_DNS_CONN) {
            c.readable |= readable;
            self.conn_turn(node, registry, token - FIRST_DNS_CONN);
        }
    }

    /// The work of a turn that is not a readiness event: queued UDP
    /// queries, connections left over by a budget, the listener's backlog,
    /// expired deadlines and held queries, then the probes and hint
    /// lookups the core asks for and the answers it released.
    pub(crate) fn turn(&mut self, node: &mut Node, registry: &Registry) {
        if self.udp_more {
            self.udp_turn(node, registry);
        }
        for key in std::mem::take(&mut self.more) {
            self.conn_turn(node, registry, key);
        }
        if self.accept_pending && self.conns.len() < self.max_conns {
            self.accept(node, registry);
        }
        self.expire(node, registry);
        let now = self.now();
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now, node);
        }
        self.start_probes(node, registry);
        self.start_lookups(node);
        self.start_checks(node);
        self.deliver(node, registry);
        self.flush(registry);
    }

    /// A core event: the end of a hint lookup or of a liveness check is
    /// taken here; anything else is handed back.
    pub(crate) fn on_event(
        &mut self,
        node: &Node,
        registry: &Registry,
        event: Event,
    ) -> Option<Event> {
        let now = self.now();
        match event {
            Event::HintsFound { op, hints } if self.lookups.contains_key(&op) => {
                if let Some(target) = self.lookups.remove(&op) {
                    self.server.handle_lookup_result(now, node, target, hints);
                }
            }
            Event::Checked { op, contact, alive } if self.checks.contains_key(&op) => {
                self.checks.remove(&op);
                self.server.handle_check_result(now, node, contact, alive);
            }
            other => return Some(other),
        }
        self.deliver(node, registry);
        self.flush(registry);
        None
    }

    /// Up to [`RECV_TURNS`] `recvmmsg` batches, each answered into the
    /// send queue and flushed as a batch; stops early on `WouldBlock`.
    fn udp_turn(&mut self, node: &Node, registry: &Registry) {
        for _ in 0..RECV_TURNS {
            let n = match self.recv.recv(&self.udp, &mut self.recv_headers) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.udp_more = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors for earlier responses surface here.
                    debug!(error = %e, "DNS recvmmsg failed");
                    continue;
                }
            };
            let now = self.now();
            for i in 0..n {
                if self.send.is_full() {
                    self.flush(registry);
                }
                let Some((from, bytes)) = self.recv.get(i) else {
                    continue;
                };
                let Some(slot) = self.send.slot() else {
                    self.drops.udp_queue_full += 1;
                    continue;
                };
                let h = self
                    .server
                    .handle_query(now, node, from, Transport::Udp, 0, bytes, slot);
                if h == Handled::Reply {
                    let size = slot.len();
                    self.send.commit(from, size);
                }
            }
            self.flush(registry);
            // A short batch took everything queued; a later arrival raises
            // a new edge.
            if n < BATCH {
                self.udp_more = false;
                return;
            }
        }
    }

    /// Sends what the UDP queue holds; asks for writability only while
    /// datagrams wait for it.
    fn flush(&mut self, registry: &Registry) {
        if self.send.is_empty() && !self.want_writable {
            return;
        }
        let f = self.send.flush(&self.udp, &mut self.send_headers);
        self.drops.udp_send_failed += f.failed as u64;
        let want = !self.send.is_empty();
        if want != self.want_writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match registry.reregister(&mut self.udp, self.udp_token, interest) {
                Ok(()) => self.want_writable = want,
                Err(e) => debug!(error = %e, "cannot change the DNS socket's interest"),
            }
        }
    }

    /// Accepts until `WouldBlock`, the turn's budget, or the connection cap
    /// (the rest waits in the kernel's backlog until a connection closes).
    fn accept(&mut self, node: &Node, registry: &Registry) {
        for _ in 0..ACCEPT_TURN {
            if self.conns.len() >= self.max_conns {
                return;
            }
            let (mut stream, from) = match self.listener.accept() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: the next edge
                    // retries, rather than spinning on the error.
                    debug!(error = %e, "DNS TCP accept failed");
                    self.accept_pending = false;
                    return;
                }
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let token = Token(FIRST_DNS_CONN + key);
            if let Err(e) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                debug!(%from, error = %e, "cannot register a DNS TCP connection");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let deadline = StdInstant::now() + self.idle;
            self.timers.insert((deadline, Timer::Conn(key)));
            entry.insert(Conn {
                stream,
                from,
                inbuf: Vec::new(),
                out: Vec::new(),
                written: 0,
                held: None,
                readable: true,
                ending: false,
                deadline,
            });
            self.conn_turn(node, registry, key);
        }
    }

    /// Takes queries, writes answers and reads, for connection `key`,
    /// under the turn's read budget; closes it when it is done.
    fn conn_turn(&mut self, node: &Node, registry: &Registry, key: usize) {
        let mut reads = READ_TURN;
        loop {
            self.take_queries(node, key);
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if !c.write_out() {
                self.close(registry, key);
                return;
            }
            if c.ending && c.held.is_none() && c.pending() == 0 {
                self.close(registry, key);
                return;
            }
            if !c.readable || c.ending || c.inbuf.len() >= MAX_FRAME {
                return;
            }
            if reads == 0 {
                self.more.insert(key);
                return;
            }
            reads -= 1;
            match c.stream.read(&mut self.scratch) {
                Ok(0) => c.ending = true,
                Ok(n) => c.inbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(registry, key);
                    return;
                }
            }
        }
    }

    /// Answers the complete queries of connection `key`, one at a time:
    /// none while one is held, and none while the client is slow to read.
    fn take_queries(&mut self, node: &Node, key: usize) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if c.held.is_some() || c.pending() >= WRITE_HIGH {
                return;
            }
            let Some(n) = c.frame() else {
                return;
            };
            self.next_token += 1;
            let token = self.next_token;
            let now = CoreInstant::from_duration(self.epoch.elapsed());
            let h = self.server.handle_query(
                now,
                node,
                c.from,
                Transport::Tcp,
                token,
                &c.inbuf[2..2 + n],
                &mut self.out,
            );
            c.inbuf.drain(..2 + n);
            match h {
                Handled::Reply => c.push(&self.out),
                Handled::Held => {
                    c.held = Some(token);
                    self.waiting.insert(token, key);
                }
                Handled::Nothing => {
                    // Nothing to say (a response, a runt): the stream is
                    // out of step, so nothing after it can be trusted.
                    c.inbuf.clear();
                    c.ending = true;
                }
            }
            // A complete query is activity: the idle limit starts again.
            let deadline = StdInstant::now() + self.idle;
            self.timers.remove(&(c.deadline, Timer::Conn(key)));
            self.timers.insert((deadline, Timer::Conn(key)));
            c.deadline = deadline;
        }
    }

    fn close(&mut self, registry: &Registry, key: usize) {
        let Some(mut c) = self.conns.try_remove(key) else {
            return;
        };
        let _ = registry.deregister(&mut c.stream);
        self.timers.remove(&(c.deadline, Timer::Conn(key)));
        self.more.remove(&key);
        if let Some(token) = c.held {
            self.waiting.remove(&token);
        }
    }

    /// Starts the probes the core asks for, up to the in-flight limit.
    fn start_probes(&mut self, node: &Node, registry: &Registry) {
        while self.probes.len() < self.max_probes {
            let Some(target) = self.server.poll_probe() else {
                return;
            };
            let started = StdInstant::now();
            let mut stream = match TcpStream::connect(SocketAddr::new(target, PROBE_PORT)) {
                Ok(s) => s,
                Err(e) => {
                    let rtt = refused(&e).then(|| started.elapsed());
                    self.probe_done(node, target, rtt, &[]);
                    continue;
                }
            };
            let entry = self.probes.vacant_entry();
            let key = entry.key();
            let token = Token(FIRST_DNS_PROBE + key);
            if let Err(e) = registry.register(&mut stream, token, Interest::WRITABLE) {
                debug!(%target, error = %e, "cannot register a resolver probe");
                self.probe_done(node, target, None, &[]);
                continue;
            }
            let deadline = started + self.probe_timeout;
            self.timers.insert((deadline, Timer::Probe(key)));
            let tracer = if self.trace {
                start_trace(registry, target, key, self.probe_timeout)
            } else {
                None
            };
            entry.insert(Probe {
                stream,
                connect: None,
                tracer,
                target,
                started,
                deadline,
            });
        }
    }

    /// A probe's socket is ready: connected or refused is a round trip,
    /// any other error none; still connecting waits for the next edge.
    fn probe_ready(&mut self, node: &Node, registry: &Registry, key: usize) {
        let Some(p) = self.probes.get_mut(key) else {
            return;
        };
        if p.connect.is_none()
            && let Some(rtt) = probe_outcome(&p.stream, p.started)
        {
            p.connect = Some(rtt);
            self.probe_progress(node, registry, key);
        }
    }

    /// Probe `key`'s trace socket is ready: its reports are taken.
    fn trace_ready(&mut self, node: &Node, registry: &Registry, key: usize) {
        let Some(p) = self.probes.get_mut(key) else {
            return;
        };
        if let Some(t) = &mut p.tracer
            && let Err(e) = t.read()
        {
            debug!(target = %p.target, error = %e, "trace failed");
            if let Some(t) = p.tracer.take() {
                deregister_trace(registry, &t);
            }
        }
        self.probe_progress(node, registry, key);
    }

    /// Ends probe `key` once its connect has come back and its trace is
    /// complete or past its deadline (which the connect's RTT brings
    /// forward: every hop is nearer than the resolver); else its timer
    /// moves to that deadline.
    fn probe_progress(&mut self, node: &Node, registry: &Registry, key: usize) {
        let Some(p) = self.probes.get_mut(key) else {
            return;
        };
        let Some(connect) = p.connect else { return };
        let due = match &p.tracer {
            Some(t) if !t.is_complete() => t.deadline(connect),
            _ => StdInstant::now(),
        };
        if due <= StdInstant::now() {
            self.end_probe(node, registry, key);
        } else if due != p.deadline {
            self.timers.remove(&(p.deadline, Timer::Probe(key)));
            p.deadline = due;
            self.timers.insert((due, Timer::Probe(key)));
        }
    }

    /// Drops probe `key`'s sockets and reports its RTT (the connect's,
    /// else the trace's) and the last hops the trace found to the core.
    fn end_probe(&mut self, node: &Node, registry: &Registry, key: usize) {
        let Some(mut p) = self.probes.try_remove(key) else {
            return;
        };
        let _ = registry.deregister(&mut p.stream);
        self.timers.remove(&(p.deadline, Timer::Probe(key)));
        let connect = p.connect.flatten();
        let (rtt, routers) = match p.tracer {
            Some(t) => {
                deregister_trace(registry, &t);
                t.finish().probe_result(connect)
            }
            None => (connect, Vec::new()),
        };
        debug!(target = %p.target, ?rtt, hops = routers.len(), "resolver probed");
        self.probe_done(node, p.target, rtt, &routers);
    }

    fn probe_done(
        &mut self,
        node: &Node,
        target: IpAddr,
        rtt: Option<Duration>,
        routers: &[Router],
    ) {
        let now = self.now();
        self.server
            .handle_probe_result(now, node, target, rtt, routers);
    }

    /// Starts the liveness checks the core asks for on the node. A lookup
    /// that ends in an event asks for them where the node cannot be
    /// borrowed; [`Self::wait`] then keeps the loop awake until this turn.
    fn start_checks(&mut self, node: &mut Node) {
        while let Some(c) = self.server.poll_check() {
            let now = self.now();
            match node.check_live(now, c) {
                Ok(op) => {
                    self.checks.insert(op, c);
                }
                Err(_) => self.server.handle_check_result(now, node, c, false),
            }
        }
    }

    /// Starts the hint lookups the core asks for on the node.
    fn start_lookups(&mut self, node: &mut Node) {
        while let Some(l) = self.server.poll_lookup() {
            let now = self.now();
            match node.find_hinted(now, l.level, l.count, l.target, &l.routers, Services::NONE) {
                Ok(op) => {
                    self.lookups.insert(op, l.target);
                }
                Err(_) => self
                    .server
                    .handle_lookup_result(now, node, l.target, Vec::new()),
            }
        }
    }

    /// Sends the answers the core released: UDP ones to their address,
    /// TCP ones to the connection that asked, if it is still open.
    fn deliver(&mut self, node: &Node, registry: &Registry) {
        while let Some(a) = self.server.poll_answer() {
            match a.transport {
                Transport::Udp => {
                    if self.send.is_full() {
                        self.flush(registry);
                    }
                    match self.send.slot() {
                        Some(slot) => {
                            slot.clear();
                            slot.extend_from_slice(&a.bytes);
                            self.send.commit(a.to, a.bytes.len());
                        }
                        None => self.drops.udp_queue_full += 1,
                    }
                }
                Transport::Tcp => {
                    let key = self.waiting.remove(&a.token);
                    match key.and_then(|k| self.conns.get_mut(k).map(|c| (k, c))) {
                        Some((k, c)) if c.held == Some(a.token) => {
                            c.held = None;
                            c.push(&a.bytes);
                            self.conn_turn(node, registry, k);
                        }
                        _ => self.drops.tcp_answers_lost += 1,
                    }
                }
            }
        }
    }

    /// Expired deadlines: idle connections close, late probes count as
    /// unmeasurable.
    fn expire(&mut self, node: &Node, registry: &Registry) {
        let now = StdInstant::now();
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Conn(key) => {
                    self.drops.tcp_idle_closed += 1;
                    self.close(registry, key);
                }
                Timer::Probe(key) => {
                    // The connect's limit (silence: no RTT), or the trace's.
                    if let Some(p) = self.probes.get_mut(key) {
                        p.connect.get_or_insert(None);
                    }
                    self.end_probe(node, registry, key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `stream`'s connect to its end (bounded), as the loop does.
    fn probe(to: SocketAddr) -> Option<Duration> {
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(4);
        let started = StdInstant::now();
        let mut stream = TcpStream::connect(to).unwrap();
        poll.registry()
            .register(&mut stream, Token(0), Interest::WRITABLE)
            .unwrap();
        for _ in 0..100 {
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            if !events.is_empty()
                && let Some(rtt) = probe_outcome(&stream, started)
            {
                return rtt;
            }
        }
        panic!("the connect to {to} never ended");
    }

    #[test]
    fn an_accepted_or_refused_connect_is_a_round_trip() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        assert!(probe(open).is_some(), "accepted");
        drop(listener);
        assert!(probe(open).is_some(), "refused");
    }

    #[test]
    fn frames_are_taken_only_when_whole() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut c = Conn {
            stream: TcpStream::from_std(s),
            from: "127.0.0.1:1".parse().unwrap(),
            inbuf: vec![0],
            out: Vec::new(),
            written: 0,
            held: None,
            readable: false,
            ending: false,
            deadline: StdInstant::now(),
        };
        assert_eq!(c.frame(), None, "half a prefix");
        c.inbuf = vec![0, 3, 1, 2];
        assert_eq!(c.frame(), None, "a prefix and part of the message");
        c.inbuf.push(3);
        assert_eq!(c.frame(), Some(3));
        c.push(&[9, 8]);
        assert_eq!(c.out, vec![0, 2, 9, 8]);
        assert_eq!(c.pending(), 4);
    }
}
