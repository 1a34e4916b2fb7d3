//! The HTTP proxy on the node's own loop: client connections, upstream
//! connections to origins and peers, and the DSHT work of each fetch, all
//! on the one `mio::Poll` the RPC socket uses.
//!
//! Every decision is [`coral_core::http::Proxy`]'s, driven as
//! coral-tokio's proxy drives it: a client's request head goes to
//! [`Proxy::handle_request`]; each [`Output`] the core queues is carried
//! out here (a DSHT get together with a walk to the key's closest node for
//! the claim's arbiter, puts and publications on the node this loop owns,
//! a claim or a fetch over a new upstream connection); upstream heads and
//! body bytes go back with `handle_upstream_*`; and a client streaming a
//! fetch writes what [`Proxy::read`] hands it, so one body reaches every
//! waiting client and the cache at once (cut-through). The byte mechanics
//! both runtimes share (body framing, chunk framing, bare status
//! responses, the per-client count) are [`coral_tokio::proxy_shared`]'s.
//!
//! Sockets follow the loop's rules: edge-triggered readiness consumed until
//! `WouldBlock`, with at most [`READ_TURN`] reads per connection and
//! [`ACCEPT_TURN`] accepts per turn before the loop looks at its other
//! sources; a client's write queue is bounded (the core is asked for more
//! of a body only while less than [`WRITE_HIGH`] bytes wait) and flushed
//! with vectored writes on writability. There is no timer: connection,
//! lookup and resolver deadlines sit in one ordered set whose first entry
//! becomes part of the `epoll_wait` timeout.
//!
//! Origin names are resolved off the loop by at most [`RESOLVERS`] threads
//! (`std::net::ToSocketAddrs`, which blocks) fed by a bounded queue; they
//! report over a channel and wake the loop with its `mio::Waker`. The core
//! checks every resolved address (the SSRF rule) before a connection opens.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::{IpAddr, Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use bytes::{Buf, Bytes, BytesMut};
use coral_core::contact::{Contact, Level};
use coral_core::http::parse::{self, HeadLimits};
use coral_core::http::proxy::{CONTINUE, ClaimReply};
use coral_core::http::{
    Answer, FetchId, Output, Proxy, ProxyStats, ReaderId, Upstream, UpstreamError,
};
use coral_core::id::Id;
use coral_core::time::Instant as CoreInstant;
use coral_core::{Event, Levels, Node, OpId};
use coral_tokio::proxy::ProxyOptions;
use coral_tokio::proxy_shared::{
    BUSY, BodyReader, PerClient, ResponseWriter, Step, allowed_origin_addr, bare_response,
    take_response_head, unix_now, upload,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token, Waker};
use slab::Slab;
use tracing::{debug, info};

/// Proxy connection tokens are slab keys plus this (below it: the loop's
/// own sources and the admin endpoint's at most 64 connections).
pub(crate) const FIRST_PROXY_CONN: usize = 1 << 10;

/// Connections accepted per turn before the loop looks at its other sources.
pub const ACCEPT_TURN: usize = 64;
/// Reads (or core reads, for a streaming client) per connection per turn.
pub const READ_TURN: usize = 16;
/// Bytes written to one client per turn before the loop looks at the others.
pub const WRITE_TURN: usize = 256 * 1024;
/// A client's queued response bytes above which the core is not asked for more.
pub const WRITE_HIGH: usize = 256 * 1024;
/// Most body bytes taken from the core in one [`Proxy::read`].
const READ_MAX: usize = 64 * 1024;
/// Bytes read from a socket at once.
const SCRATCH: usize = 64 * 1024;
/// Buffers handed to one vectored write.
const IOV: usize = 16;
/// Resolver threads, started when the first origin name needs one.
pub const RESOLVERS: usize = 2;
/// A resolver thread's stack: `getaddrinfo` and its NSS modules need more
/// than a minimal stack, far less than the 2 MiB default.
const RESOLVER_STACK: usize = 256 * 1024;
/// Origin names waiting for a resolver thread; a fetch finding it full
/// fails as a DNS failure rather than queueing without bound.
const RESOLVE_QUEUE: usize = 64;
/// How often the core's claims and negative entries are expired; only
/// when the loop is awake anyway (they are bounded and checked for
/// freshness when used, so an idle node need not wake for them).
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// What a deadline in [`HttpProxy::timers`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A connection (slab key): head, idle, stall, I/O, connect or first-byte limit.
    Conn(usize),
    /// A fetch's DSHT lookup.
    Lookup(FetchId),
    /// A fetch's origin name resolution.
    Resolve(FetchId),
}

enum Conn {
    Client(Client),
    Up(Up),
}

/// Where a client connection is in its request/response cycle.
enum Phase {
    /// Reading a request head.
    Head,
    /// Reading a pass-through request's body into the core.
    Upload {
        fetch: FetchId,
        reader: ReaderId,
        body: BodyReader,
    },
    /// Writing a fetch's response as the core hands it out.
    Stream {
        fetch: FetchId,
        reader: ReaderId,
        writer: ResponseWriter,
    },
    /// The whole response is queued; then the next request, or close.
    Done { keep_alive: bool },
}

struct Client {
    stream: TcpStream,
    ip: IpAddr,
    inbuf: BytesMut,
    out: VecDeque<Bytes>,
    out_len: usize,
    phase: Phase,
    /// Read readiness not yet consumed down to `WouldBlock`.
    readable: bool,
    /// The last write found the socket full: a writable edge will come.
    blocked: bool,
    deadline: Option<StdInstant>,
}

/// What an upstream connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A claim at the key's arbiter.
    Claim,
    /// One of the peers raced for a fetch; the first usable answer wins.
    Candidate,
    /// The fetch's one transfer (the origin, or the winning peer).
    Transfer,
}

enum UpPhase {
    Connecting,
    Head,
    Body(BodyReader),
}

struct Up {
    stream: TcpStream,
    fetch: FetchId,
    role: Role,
    request: Bytes,
    phase: UpPhase,
    buf: BytesMut,
    readable: bool,
    deadline: Option<StdInstant>,
}

/// A fetch's DSHT lookup: the get and the walk to the arbiter run at once.
struct Lookup {
    values: Vec<Bytes>,
    level: Option<Level>,
    get_done: bool,
    closest_done: bool,
    contacts: Vec<Contact>,
    deadline: StdInstant,
}

struct ResolveJob {
    fetch: FetchId,
    host: String,
    port: u16,
}

struct Resolved {
    fetch: FetchId,
    addrs: Vec<SocketAddr>,
}

/// The bounded pool of resolver threads.
struct Resolver {
    jobs: Option<SyncSender<ResolveJob>>,
    results_tx: SyncSender<Resolved>,
    results: Receiver<Resolved>,
    waker: Arc<Waker>,
    /// Fetches waiting for an address, with their request and deadline.
    pending: BTreeMap<FetchId, (Bytes, StdInstant)>,
}

impl Resolver {
    fn new(waker: Arc<Waker>) -> Self {
        let (results_tx, results) = mpsc::sync_channel(RESOLVE_QUEUE + RESOLVERS);
        Self {
            jobs: None,
            results_tx,
            results,
            waker,
            pending: BTreeMap::new(),
        }
    }

    /// Queues `job`; false when the queue is full or no thread could start.
    fn submit(&mut self, job: ResolveJob) -> bool {
        if self.jobs.is_none() {
            self.jobs = self.start();
        }
        let Some(tx) = &self.jobs else {
            return false;
        };
        match tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => {
                self.jobs = None;
                false
            }
        }
    }

    fn start(&self) -> Option<SyncSender<ResolveJob>> {
        let (tx, rx) = mpsc::sync_channel::<ResolveJob>(RESOLVE_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..RESOLVERS {
            let rx = Arc::clone(&rx);
            let out = self.results_tx.clone();
            let waker = Arc::clone(&self.waker);
            let spawned = std::thread::Builder::new()
                .name(format!("coral-mio resolver {i}"))
                .stack_size(RESOLVER_STACK)
                .spawn(move || resolve_worker(&rx, &out, &waker));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => debug!(error = %e, "cannot start a resolver thread"),
            }
        }
        (started > 0).then_some(tx)
    }
}

/// A resolver thread: names in, addresses out, until the proxy is gone.
fn resolve_worker(rx: &Mutex<Receiver<ResolveJob>>, out: &SyncSender<Resolved>, waker: &Waker) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        let addrs = (job.host.as_str(), job.port)
            .to_socket_addrs()
            .map(Iterator::collect)
            .unwrap_or_default();
        if out
            .send(Resolved {
                fetch: job.fetch,
                addrs,
            })
            .is_err()
        {
            return;
        }
        let _ = waker.wake();
    }
}

/// The HTTP proxy's sockets and the core exchange they feed.
pub(crate) struct HttpProxy {
    core: Proxy,
    opts: ProxyOptions,
    limits: HeadLimits,
    listener: TcpListener,
    addr: SocketAddr,
    epoch: StdInstant,
    conns: Slab<Conn>,
    clients: usize,
    per_client: PerClient,
    /// Connections turned away with 503.
    busy: u64,
    /// The listener may hold connections not yet accepted.
    accept_more: bool,
    /// Connections whose readiness was not consumed this turn (budget).
    more: BTreeSet<usize>,
    /// Fetches that made progress: their waiting clients are pumped.
    dirty: BTreeSet<FetchId>,
    /// Clients waiting (`Read::Pending`) on each fetch; stale keys are
    /// skipped when pumped, so closing needs no search.
    waiters: BTreeMap<FetchId, BTreeSet<usize>>,
    timers: BTreeSet<(StdInstant, Timer)>,
    lookups: BTreeMap<FetchId, Lookup>,
    /// The node operations of lookups: a get or a closest-node walk.
    ops: BTreeMap<OpId, FetchId>,
    /// Candidate connections still racing, per fetch.
    races: BTreeMap<FetchId, Vec<usize>>,
    resolver: Resolver,
    last_housekeeping: CoreInstant,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProxy")
            .field("addr", &self.addr)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

/// Moves `slot`'s deadline to `at` in `timers`. A later deadline moves
/// only when it is a second or more past the current one: a busy
/// connection would otherwise reorder the set on every read.
fn set_deadline(
    timers: &mut BTreeSet<(StdInstant, Timer)>,
    slot: &mut Option<StdInstant>,
    key: Timer,
    at: Option<StdInstant>,
) {
    if let (Some(old), Some(new)) = (*slot, at)
        && new >= old
        && new - old < Duration::from_secs(1)
    {
        return;
    }
    if *slot == at {
        return;
    }
    if let Some(old) = slot.take() {
        timers.remove(&(old, key));
    }
    if let Some(new) = at {
        timers.insert((new, key));
    }
    *slot = at;
}

/// Registers connection `key` for both directions, edge-triggered.
fn register(registry: &Registry, stream: &mut TcpStream, key: usize) -> io::Result<()> {
    registry.register(
        stream,
        Token(FIRST_PROXY_CONN + key),
        Interest::READABLE | Interest::WRITABLE,
    )
}

/// What one read from a socket gave.
enum Got {
    Bytes,
    Blocked,
    Closed,
}

/// One read into `buf` through `scratch`.
fn read_once(stream: &mut TcpStream, scratch: &mut [u8], buf: &mut BytesMut) -> Got {
    loop {
        match stream.read(scratch) {
            Ok(0) => return Got::Closed,
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                return Got::Bytes;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Got::Closed,
        }
    }
}

/// What a client read under the turn's budget gave.
enum Pull {
    /// Bytes arrived in `inbuf`.
    Got,
    /// Nothing now: no readiness left, or the budget ran out (the
    /// connection is then in `more` for the next turn).
    Wait,
    /// The client closed or failed.
    Close,
}

impl Client {
    /// Reads once into `inbuf` if readiness and budget are left.
    fn pull(
        &mut self,
        scratch: &mut [u8],
        budget: &mut usize,
        more: &mut BTreeSet<usize>,
        key: usize,
    ) -> Pull {
        if !self.readable {
            return Pull::Wait;
        }
        if *budget == 0 {
            more.insert(key);
            return Pull::Wait;
        }
        *budget -= 1;
        match read_once(&mut self.stream, scratch, &mut self.inbuf) {
            Got::Bytes => Pull::Got,
            Got::Blocked => {
                self.readable = false;
                Pull::Wait
            }
            Got::Closed => Pull::Close,
        }
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.out_len += b.len();
            self.out.push_back(b);
        }
    }

    /// Writes what the queue holds until it is empty or the socket is
    /// full; returns the bytes written.
    /// At most `budget` bytes are written (and taken off it), so one fast
    /// reader of a large body cannot hold the loop: a connection stopped by
    /// the budget rather than by a full socket is not `blocked`, and goes on
    /// next turn.
    fn flush(&mut self, budget: &mut usize) -> io::Result<usize> {
        let mut total = 0;
        while !self.out.is_empty() && *budget > 0 {
            let mut iov = [IoSlice::new(&[]); IOV];
            let mut n = 0;
            let mut room = *budget;
            for (slot, b) in iov.iter_mut().zip(self.out.iter()) {
                let take = b.len().min(room);
                *slot = IoSlice::new(&b[..take]);
                n += 1;
                room -= take;
                if room == 0 {
                    break;
                }
            }
            let written = match self.stream.write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.blocked = false;
            total += written;
            *budget -= written;
            self.out_len -= written;
            let mut left = written;
            while left > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        Ok(total)
    }
}

/// What a client's turn ended with.
enum ClientEnd {
    /// Waiting for readiness, the fetch, or the next turn.
    Open,
    /// Close the connection.
    Close,
}

/// What an upstream connection's I/O turned up.
enum UpEvent {
    Head(parse::ResponseHead),
    Body,
    Closed,
    Blocked,
    Budget,
    Failed(UpstreamError),
}

impl HttpProxy {
    /// Takes over a bound listener; `my_id` is the node's id (the claim's
    /// arbiter is chosen by distance to it), `waker` the loop's (resolver
    /// threads wake the loop through it), `epoch` the loop's time origin.
    pub(crate) fn new(
        listener: std::net::TcpListener,
        mut opts: ProxyOptions,
        my_id: Id,
        registry: &Registry,
        token: Token,
        waker: Arc<Waker>,
        epoch: StdInstant,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut listener = TcpListener::from_std(listener);
        registry.register(&mut listener, token, Interest::READABLE)?;
        // Peers reach this proxy on the port it really listens on.
        opts.http.peer_port = addr.port();
        opts.listen = addr;
        // The disk tier is coral-tokio's (its file I/O would block this
        // loop): the core must not queue disk work nobody carries out.
        opts.http.disk_tier = false;
        if let Some(d) = opts.disk.take() {
            info!(
                dir = %d.dir.display(),
                "coral-mio keeps its HTTP cache in memory (the disk tier is coral node's)"
            );
        }
        let core = Proxy::new(opts.http.clone(), addr, my_id);
        Ok(Self {
            limits: opts.http.head_limits(),
            core,
            opts,
            listener,
            addr,
            epoch,
            conns: Slab::new(),
            clients: 0,
            per_client: PerClient::default(),
            busy: 0,
            accept_more: true,
            more: BTreeSet::new(),
            dirty: BTreeSet::new(),
            waiters: BTreeMap::new(),
            timers: BTreeSet::new(),
            lookups: BTreeMap::new(),
            ops: BTreeMap::new(),
            races: BTreeMap::new(),
            resolver: Resolver::new(waker),
            last_housekeeping: CoreInstant::ZERO,
            scratch: vec![0; SCRATCH],
        })
    }

    /// Where the proxy listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The core's counters.
    pub(crate) fn stats(&self) -> ProxyStats {
        self.core.stats()
    }

    /// Prometheus text of the proxy's counters, and of this adapter's.
    pub(crate) fn metrics(&self) -> String {
        let mut m = coral_tokio::proxy_shared::metrics(&self.core);
        m.push_str(&format!(
            "# TYPE coral_http_busy_total counter\ncoral_http_busy_total {}\n\
             # TYPE coral_http_connections gauge\ncoral_http_connections {}\n",
            self.busy, self.clients
        ));
        m
    }

    fn now(&self) -> CoreInstant {
        CoreInstant::from_duration(self.epoch.elapsed())
    }

    /// How long the loop may sleep as far as the proxy is concerned: not at
    /// all while readiness is left over, else until the first deadline.
    pub(crate) fn wait(&self) -> Option<Duration> {
        if self.accept_more || !self.more.is_empty() || !self.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        self.timers
            .first()
            .map(|(t, _)| t.saturating_duration_since(StdInstant::now()))
    }

    /// The listener is readable: accept up to [`ACCEPT_TURN`] connections.
    pub(crate) fn accept_ready(&mut self, node: &mut Node, registry: &Registry) {
        self.accept_more = true;
        self.accept(registry);
        self.settle(node, registry);
    }

    fn accept(&mut self, registry: &Registry) {
        for _ in 0..ACCEPT_TURN {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_more = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: retry when a
                    // connection closes rather than spin on the error.
                    debug!(error = %e, "proxy accept failed");
                    self.accept_more = false;
                    return;
                }
            };
            let ip = peer.ip();
            let room = self.clients < self.opts.max_connections
                && self
                    .per_client
                    .take(ip, self.opts.max_connections_per_client);
            if !room {
                // A fresh socket's send buffer takes these few bytes at once.
                self.busy += 1;
                let _ = stream.write(BUSY);
                let _ = stream.shutdown(Shutdown::Write);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = register(registry, &mut stream, key) {
                debug!(%peer, error = %e, "cannot register a proxy connection");
                self.per_client.release(ip);
                continue;
            }
            entry.insert(Conn::Client(Client {
                stream,
                ip,
                inbuf: BytesMut::new(),
                out: VecDeque::new(),
                out_len: 0,
                phase: Phase::Head,
                readable: true,
                blocked: false,
                deadline: None,
            }));
            self.clients += 1;
            let at = StdInstant::now() + self.opts.header_timeout;
            self.set_conn_deadline(key, Some(at));
            self.client_turn(registry, key);
        }
    }

    /// A connection of the proxy's is ready.
    pub(crate) fn conn_ready(
        &mut self,
        node: &mut Node,
        registry: &Registry,
        token: usize,
        readable: bool,
        writable: bool,
    ) {
        let key = token - FIRST_PROXY_CONN;
        match self.conns.get_mut(key) {
            Some(Conn::Client(c)) => {
                c.readable |= readable;
                self.client_turn(registry, key);
            }
            Some(Conn::Up(u)) => {
                u.readable |= readable;
                self.up_turn(registry, key, writable || readable);
            }
            None => return,
        }
        self.settle(node, registry);
    }

    /// The work of a turn that is not a readiness event: resolver answers,
    /// connections left over by a budget, the listener's backlog, expired
    /// deadlines, clients of fetches that progressed, housekeeping.
    pub(crate) fn turn(&mut self, node: &mut Node, registry: &Registry) {
        while let Ok(r) = self.resolver.results.try_recv() {
            self.resolved(registry, r);
        }
        for key in std::mem::take(&mut self.more) {
            match self.conns.get(key) {
                Some(Conn::Client(_)) => self.client_turn(registry, key),
                Some(Conn::Up(_)) => self.up_turn(registry, key, false),
                None => {}
            }
        }
        if self.accept_more {
            self.accept(registry);
        }
        self.expire(registry);
        let now = self.now();
        if now.saturating_duration_since(self.last_housekeeping) >= HOUSEKEEPING {
            self.last_housekeeping = now;
            self.core.handle_timeout(now);
        }
        self.settle(node, registry);
    }

    /// A core event: the end of a lookup's get or walk is taken here;
    /// anything else is handed back.
    pub(crate) fn on_event(
        &mut self,
        node: &mut Node,
        registry: &Registry,
        event: Event,
    ) -> Option<Event> {
        let op = match &event {
            Event::GetDone { op, .. } | Event::ClosestFound { op, .. } => *op,
            _ => return Some(event),
        };
        let Some(f) = self.ops.remove(&op) else {
            return Some(event);
        };
        // Ours, for a lookup that may already have ended on its deadline.
        let l = self.lookups.get_mut(&f)?;
        match event {
            Event::GetDone { values, level, .. } => {
                l.values = values;
                l.level = level;
                l.get_done = true;
            }
            Event::ClosestFound { closest, .. } => {
                l.contacts.push(closest);
                l.closest_done = true;
            }
            _ => {}
        }
        if l.get_done && l.closest_done {
            self.finish_lookup(f);
            self.settle(node, registry);
        }
        None
    }

    /// Drains the core's outputs and pumps the clients of fetches that
    /// progressed, until neither has anything left (a pumped client may
    /// send its next request, which may queue outputs).
    fn settle(&mut self, node: &mut Node, registry: &Registry) {
        loop {
            self.drain(node, registry);
            let Some(f) = self.dirty.pop_first() else {
                return;
            };
            for key in self.waiters.remove(&f).unwrap_or_default() {
                let waiting = matches!(
                    self.conns.get(key),
                    Some(Conn::Client(Client { phase: Phase::Stream { fetch, .. }, .. })) if *fetch == f
                );
                if waiting {
                    self.client_turn(registry, key);
                }
            }
        }
    }

    /// Carries out every effect the core has queued.
    fn drain(&mut self, node: &mut Node, registry: &Registry) {
        while let Some(out) = self.core.poll_output() {
            let now = self.now();
            match out {
                Output::Lookup { fetch, key } => self.lookup(node, now, fetch, key),
                Output::Claim {
                    fetch,
                    arbiter,
                    request,
                } => {
                    if self
                        .connect(registry, fetch, Role::Claim, arbiter, request.into())
                        .is_none()
                    {
                        self.core.handle_claim_reply(fetch, ClaimReply::Failed);
                    }
                }
                Output::Fetch {
                    fetch,
                    upstream: Upstream::Origin { host, port },
                    request,
                } => self.origin(registry, fetch, host, port, request.into()),
                Output::Fetch {
                    fetch,
                    upstream: Upstream::Peers(peers),
                    request,
                } => {
                    let request = Bytes::from(request);
                    let racing: Vec<usize> = peers
                        .into_iter()
                        .filter_map(|p| {
                            self.connect(registry, fetch, Role::Candidate, p, request.clone())
                        })
                        .collect();
                    if racing.is_empty() {
                        self.end(fetch, Err(UpstreamError::NoPeer));
                    } else {
                        self.races.insert(fetch, racing);
                    }
                }
                Output::Put { key, value, ttl } => {
                    if let Err(e) = node.put(now, key, value, ttl, Levels::ALL) {
                        debug!(error = %e, "proxy put refused by the node");
                    }
                }
                Output::Publish { key, value, ttl } => {
                    if let Err(e) = node.publish(now, key, value, ttl, Levels::ALL) {
                        debug!(error = %e, "proxy publish refused by the node");
                    }
                }
                Output::Withdraw { key, value } => {
                    let _ = node.withdraw(&key, &value);
                }
            }
        }
    }

    /// Starts a fetch's DSHT get and its walk to the key's closest node;
    /// the level-0 contacts known now stand in for the walk if it fails.
    fn lookup(&mut self, node: &mut Node, now: CoreInstant, fetch: FetchId, key: Id) {
        let get = node.get(now, key, Levels::ALL).ok();
        let closest = node.find_closest(now, key).ok();
        let deadline = StdInstant::now() + self.opts.lookup_timeout;
        for op in get.iter().chain(closest.iter()) {
            self.ops.insert(*op, fetch);
        }
        self.lookups.insert(
            fetch,
            Lookup {
                values: Vec::new(),
                level: None,
                get_done: get.is_none(),
                closest_done: closest.is_none(),
                contacts: node.contacts(0),
                deadline,
            },
        );
        if get.is_none() && closest.is_none() {
            self.finish_lookup(fetch);
        } else {
            self.timers.insert((deadline, Timer::Lookup(fetch)));
        }
    }

    /// Hands a lookup's results (what arrived by now) to the core.
    fn finish_lookup(&mut self, f: FetchId) {
        let Some(l) = self.lookups.remove(&f) else {
            return;
        };
        self.timers.remove(&(l.deadline, Timer::Lookup(f)));
        self.core.handle_lookup(f, &l.values, l.level, &l.contacts);
    }

    /// Connects to the origin at once for an address literal, else asks a
    /// resolver thread.
    fn origin(&mut self, registry: &Registry, f: FetchId, host: String, port: u16, req: Bytes) {
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>();
        if let Ok(ip) = literal {
            self.connect_origin(registry, f, [SocketAddr::new(ip, port)], req);
            return;
        }
        let deadline = StdInstant::now() + self.opts.connect_timeout;
        if self.resolver.submit(ResolveJob {
            fetch: f,
            host,
            port,
        }) {
            self.resolver.pending.insert(f, (req, deadline));
            self.timers.insert((deadline, Timer::Resolve(f)));
        } else {
            self.end(f, Err(UpstreamError::Dns));
        }
    }

    fn resolved(&mut self, registry: &Registry, r: Resolved) {
        let Some((req, deadline)) = self.resolver.pending.remove(&r.fetch) else {
            // Too late: the fetch already failed on its deadline.
            return;
        };
        self.timers.remove(&(deadline, Timer::Resolve(r.fetch)));
        self.connect_origin(registry, r.fetch, r.addrs, req);
    }

    fn connect_origin(
        &mut self,
        registry: &Registry,
        f: FetchId,
        addrs: impl IntoIterator<Item = SocketAddr>,
        req: Bytes,
    ) {
        match allowed_origin_addr(&self.core, addrs) {
            Ok(addr) => {
                if self
                    .connect(registry, f, Role::Transfer, addr, req)
                    .is_none()
                {
                    self.end(f, Err(UpstreamError::Connect));
                }
            }
            Err(e) => self.end(f, Err(e)),
        }
    }

    /// Opens an upstream connection; `None` when it fails at once.
    fn connect(
        &mut self,
        registry: &Registry,
        fetch: FetchId,
        role: Role,
        addr: SocketAddr,
        request: Bytes,
    ) -> Option<usize> {
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                debug!(%addr, error = %e, "upstream connect failed");
                return None;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = register(registry, &mut stream, key) {
            debug!(%addr, error = %e, "cannot register an upstream connection");
            return None;
        }
        entry.insert(Conn::Up(Up {
            stream,
            fetch,
            role,
            request,
            phase: UpPhase::Connecting,
            buf: BytesMut::new(),
            readable: false,
            deadline: None,
        }));
        let at = StdInstant::now() + self.opts.connect_timeout;
        self.set_conn_deadline(key, Some(at));
        Some(key)
    }

    /// The transfer of fetch `f` ended.
    fn end(&mut self, f: FetchId, r: Result<(), UpstreamError>) {
        let now = self.now();
        self.core.handle_upstream_end(now, f, r);
        self.dirty.insert(f);
    }

    fn set_conn_deadline(&mut self, key: usize, at: Option<StdInstant>) {
        let slot = match self.conns.get_mut(key) {
            Some(Conn::Client(c)) => &mut c.deadline,
            Some(Conn::Up(u)) => &mut u.deadline,
            None => return,
        };
        set_deadline(&mut self.timers, slot, Timer::Conn(key), at);
    }

    /// Removes a connection and what counts it.
    fn close(&mut self, registry: &Registry, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        match conn {
            Conn::Client(mut c) => {
                if let Some(d) = c.deadline {
                    self.timers.remove(&(d, Timer::Conn(key)));
                }
                if let Phase::Stream { fetch, reader, .. } | Phase::Upload { fetch, reader, .. } =
                    c.phase
                {
                    self.core.close_reader(fetch, reader);
                }
                let _ = registry.deregister(&mut c.stream);
                self.clients -= 1;
                self.per_client.release(c.ip);
                // A connection slot is free: the listener's backlog may go on.
                self.accept_more = true;
            }
            Conn::Up(mut u) => {
                if let Some(d) = u.deadline {
                    self.timers.remove(&(d, Timer::Conn(key)));
                }
                let _ = registry.deregister(&mut u.stream);
            }
        }
        self.more.remove(&key);
    }

    /// Reads, answers and writes for client `key` as far as it can go now.
    fn client_turn(&mut self, registry: &Registry, key: usize) {
        match self.client_steps(key) {
            ClientEnd::Open => {}
            ClientEnd::Close => self.close(registry, key),
        }
    }

    fn client_steps(&mut self, key: usize) -> ClientEnd {
        let now = self.now();
        let limits = self.limits;
        let stall =
            self.opts.first_byte_timeout + self.opts.lookup_timeout + self.opts.connect_timeout * 2;
        let (header, idle, io_timeout) = (
            self.opts.header_timeout,
            self.opts.idle_timeout,
            self.opts.io_timeout,
        );
        let Self {
            conns,
            core,
            timers,
            waiters,
            more,
            scratch,
            ..
        } = self;
        let Some(Conn::Client(c)) = conns.get_mut(key) else {
            return ClientEnd::Open;
        };
        let mut budget = READ_TURN;
        let mut wbudget = WRITE_TURN;
        let mut progress = false;
        loop {
            match &mut c.phase {
                Phase::Head => match parse::parse_request(&c.inbuf, limits) {
                    Ok(Some((req, used))) => {
                        let _ = c.inbuf.split_to(used);
                        match core.handle_request(now, &req) {
                            Answer::Respond {
                                head,
                                body,
                                keep_alive,
                            } => {
                                c.push(Bytes::from(head));
                                c.push(body);
                                c.phase = Phase::Done { keep_alive };
                            }
                            Answer::Stream { fetch, reader } => {
                                c.phase = Phase::Stream {
                                    fetch,
                                    reader,
                                    writer: ResponseWriter::default(),
                                };
                            }
                            Answer::Upload {
                                fetch,
                                reader,
                                framing,
                                expect_continue,
                            } => {
                                if expect_continue {
                                    c.push(Bytes::from_static(CONTINUE));
                                }
                                c.phase = Phase::Upload {
                                    fetch,
                                    reader,
                                    body: BodyReader::new(framing),
                                };
                            }
                        }
                        progress = true;
                    }
                    Ok(None) => {
                        let was_empty = c.inbuf.is_empty();
                        match c.pull(scratch, &mut budget, more, key) {
                            Pull::Got => {
                                if was_empty {
                                    // A head has begun: it must be whole in time.
                                    let at = StdInstant::now() + header;
                                    if c.deadline.is_none_or(|d| at < d) {
                                        set_deadline(
                                            timers,
                                            &mut c.deadline,
                                            Timer::Conn(key),
                                            Some(at),
                                        );
                                    }
                                }
                            }
                            Pull::Wait => break,
                            Pull::Close => return ClientEnd::Close,
                        }
                    }
                    Err(e) => {
                        c.push(Bytes::from(bare_response(e.status())));
                        c.phase = Phase::Done { keep_alive: false };
                    }
                },
                Phase::Upload {
                    fetch,
                    reader,
                    body,
                } => {
                    let (f, r) = (*fetch, *reader);
                    let mut pieces = Vec::new();
                    let Ok(done) = body.feed(&mut c.inbuf, &mut pieces) else {
                        return ClientEnd::Close;
                    };
                    progress |= !pieces.is_empty();
                    let wanted = upload(core, f, pieces, done);
                    if done || !wanted {
                        // The response follows (413 when the body was too large).
                        c.phase = Phase::Stream {
                            fetch: f,
                            reader: r,
                            writer: ResponseWriter::default(),
                        };
                        continue;
                    }
                    // A client that asked for 100 Continue waits for it.
                    if !c.out.is_empty() {
                        match c.flush(&mut wbudget) {
                            Ok(n) => progress |= n > 0,
                            Err(_) => return ClientEnd::Close,
                        }
                    }
                    match c.pull(scratch, &mut budget, more, key) {
                        Pull::Got => {}
                        Pull::Wait => break,
                        Pull::Close => return ClientEnd::Close,
                    }
                }
                Phase::Stream {
                    fetch,
                    reader,
                    writer,
                } => {
                    let (f, r, mut w) = (*fetch, *reader, *writer);
                    if c.out_len >= WRITE_HIGH {
                        match c.flush(&mut wbudget) {
                            Ok(n) => progress |= n > 0,
                            Err(_) => return ClientEnd::Close,
                        }
                        if c.out_len >= WRITE_HIGH {
                            break;
                        }
                    }
                    if budget == 0 {
                        more.insert(key);
                        break;
                    }
                    budget -= 1;
                    let read = core.read(now, f, r, READ_MAX);
                    let step = w.step(read, |b| {
                        progress = true;
                        c.push(b);
                    });
                    match step {
                        Step::More => {
                            c.phase = Phase::Stream {
                                fetch: f,
                                reader: r,
                                writer: w,
                            };
                        }
                        Step::Pending => {
                            waiters.entry(f).or_default().insert(key);
                            break;
                        }
                        Step::Done { keep_alive } => c.phase = Phase::Done { keep_alive },
                    }
                }
                Phase::Done { keep_alive } => {
                    let keep = *keep_alive;
                    match c.flush(&mut wbudget) {
                        Ok(n) => progress |= n > 0,
                        Err(_) => return ClientEnd::Close,
                    }
                    if !c.out.is_empty() {
                        break;
                    }
                    if !keep {
                        let _ = c.stream.shutdown(Shutdown::Write);
                        return ClientEnd::Close;
                    }
                    c.phase = Phase::Head;
                    let at = StdInstant::now() + if c.inbuf.is_empty() { idle } else { header };
                    // Exact, not coarse: the idle limit may be shorter than the last one.
                    if let Some(d) = c.deadline.take() {
                        timers.remove(&(d, Timer::Conn(key)));
                    }
                    set_deadline(timers, &mut c.deadline, Timer::Conn(key), Some(at));
                }
            }
        }
        if !c.out.is_empty() {
            match c.flush(&mut wbudget) {
                Ok(n) => progress |= n > 0,
                Err(_) => return ClientEnd::Close,
            }
            if !c.out.is_empty() && !c.blocked {
                // Stopped by the budget: no writable edge will come.
                more.insert(key);
            }
        }
        if progress && !matches!(c.phase, Phase::Head) {
            let at = StdInstant::now() + if c.out.is_empty() { stall } else { io_timeout };
            set_deadline(timers, &mut c.deadline, Timer::Conn(key), Some(at));
        }
        ClientEnd::Open
    }

    /// Connects, writes the request and reads what an upstream connection
    /// has, handing heads and bodies to the core.
    fn up_turn(&mut self, registry: &Registry, key: usize, ready: bool) {
        let mut budget = READ_TURN;
        loop {
            let ev = self.up_io(key, ready, &mut budget);
            let Some(ev) = ev else {
                return;
            };
            match ev {
                UpEvent::Head(head) => {
                    if !self.up_head(registry, key, &head) {
                        return;
                    }
                }
                UpEvent::Body => {
                    if !self.up_body(registry, key) {
                        return;
                    }
                }
                UpEvent::Closed => {
                    let r = match self.conns.get(key) {
                        Some(Conn::Up(Up {
                            phase: UpPhase::Body(b),
                            ..
                        })) => b.at_close(),
                        _ => Err(UpstreamError::Protocol),
                    };
                    match r {
                        Ok(()) => self.up_done(registry, key),
                        Err(e) => self.up_failed(registry, key, e),
                    }
                    return;
                }
                UpEvent::Blocked => return,
                UpEvent::Budget => {
                    self.more.insert(key);
                    return;
                }
                UpEvent::Failed(e) => {
                    self.up_failed(registry, key, e);
                    return;
                }
            }
        }
    }

    /// One step of an upstream connection's I/O; `None` if it is gone.
    fn up_io(&mut self, key: usize, ready: bool, budget: &mut usize) -> Option<UpEvent> {
        let first_byte = self.opts.first_byte_timeout;
        let limits = self.limits;
        let Self {
            conns,
            timers,
            scratch,
            ..
        } = self;
        let Some(Conn::Up(u)) = conns.get_mut(key) else {
            return None;
        };
        if matches!(u.phase, UpPhase::Connecting) {
            if !ready {
                return Some(UpEvent::Blocked);
            }
            if let Ok(Some(_)) | Err(_) = u.stream.take_error() {
                return Some(UpEvent::Failed(UpstreamError::Connect));
            }
            match u.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    return Some(UpEvent::Blocked);
                }
                Err(_) => return Some(UpEvent::Failed(UpstreamError::Connect)),
            }
            let _ = u.stream.set_nodelay(true);
            u.phase = UpPhase::Head;
            let at = StdInstant::now() + first_byte;
            set_deadline(timers, &mut u.deadline, Timer::Conn(key), Some(at));
        }
        while !u.request.is_empty() {
            match u.stream.write(&u.request) {
                Ok(0) => return Some(UpEvent::Failed(UpstreamError::Protocol)),
                Ok(n) => u.request.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(UpEvent::Failed(UpstreamError::Protocol)),
            }
        }
        loop {
            match &u.phase {
                UpPhase::Head => match take_response_head(&mut u.buf, limits) {
                    Ok(Some(head)) => return Some(UpEvent::Head(head)),
                    Ok(None) => {}
                    Err(e) => return Some(UpEvent::Failed(e)),
                },
                UpPhase::Body(_) if !u.buf.is_empty() => return Some(UpEvent::Body),
                _ => {}
            }
            if !u.readable {
                return Some(UpEvent::Blocked);
            }
            if *budget == 0 {
                return Some(UpEvent::Budget);
            }
            *budget -= 1;
            match read_once(&mut u.stream, scratch, &mut u.buf) {
                Got::Bytes => {}
                Got::Blocked => {
                    u.readable = false;
                    return Some(UpEvent::Blocked);
                }
                Got::Closed => return Some(UpEvent::Closed),
            }
        }
    }

    /// A head arrived; false when the connection is gone afterwards.
    fn up_head(&mut self, registry: &Registry, key: usize, head: &parse::ResponseHead) -> bool {
        let Some(Conn::Up(u)) = self.conns.get_mut(key) else {
            return false;
        };
        let f = u.fetch;
        match u.role {
            Role::Claim => {
                self.core.handle_claim_reply(f, Proxy::claim_reply(head));
                self.close(registry, key);
                return false;
            }
            Role::Candidate => {
                if !Proxy::peer_answer_usable(head) {
                    self.up_failed(registry, key, UpstreamError::NoPeer);
                    return false;
                }
                u.role = Role::Transfer;
                // The first usable answer wins; the others are dropped.
                for other in self.races.remove(&f).unwrap_or_default() {
                    if other != key {
                        self.close(registry, other);
                    }
                }
            }
            Role::Transfer => {}
        }
        let Ok(framing) = parse::response_framing(false, head) else {
            self.up_failed(registry, key, UpstreamError::Protocol);
            return false;
        };
        let now = self.now();
        let body = self.core.handle_upstream_head(now, unix_now(), f, head);
        self.dirty.insert(f);
        if !body {
            self.up_done(registry, key);
            return false;
        }
        let at = StdInstant::now() + self.opts.io_timeout;
        if let Some(Conn::Up(u)) = self.conns.get_mut(key) {
            u.phase = UpPhase::Body(BodyReader::new(framing));
        }
        self.set_conn_deadline(key, Some(at));
        true
    }

    /// Body bytes are buffered: hand them to the core; false when the
    /// connection is gone afterwards.
    fn up_body(&mut self, registry: &Registry, key: usize) -> bool {
        let Some(Conn::Up(u)) = self.conns.get_mut(key) else {
            return false;
        };
        let f = u.fetch;
        let UpPhase::Body(reader) = &mut u.phase else {
            return true;
        };
        let mut pieces = Vec::new();
        let done = reader.feed(&mut u.buf, &mut pieces);
        for p in pieces {
            self.core.handle_upstream_data(f, p);
        }
        self.dirty.insert(f);
        let at = StdInstant::now() + self.opts.io_timeout;
        self.set_conn_deadline(key, Some(at));
        match done {
            Ok(true) => {
                self.up_done(registry, key);
                false
            }
            // Nobody reads it and it will not be stored: stop the transfer.
            Ok(false) if !self.core.fetch_wanted(f) => {
                self.up_failed(registry, key, UpstreamError::Protocol);
                false
            }
            Ok(false) => true,
            Err(e) => {
                self.up_failed(registry, key, e);
                false
            }
        }
    }

    /// The transfer completed.
    fn up_done(&mut self, registry: &Registry, key: usize) {
        if let Some(Conn::Up(u)) = self.conns.get(key) {
            let f = u.fetch;
            self.end(f, Ok(()));
        }
        self.close(registry, key);
    }

    /// The connection failed: the core hears it as its role says.
    fn up_failed(&mut self, registry: &Registry, key: usize, e: UpstreamError) {
        let Some(Conn::Up(u)) = self.conns.get(key) else {
            return;
        };
        let (f, role) = (u.fetch, u.role);
        self.close(registry, key);
        match role {
            Role::Claim => self.core.handle_claim_reply(f, ClaimReply::Failed),
            Role::Candidate => {
                let left = self.races.get_mut(&f).map(|r| {
                    r.retain(|&k| k != key);
                    r.len()
                });
                if left == Some(0) {
                    self.races.remove(&f);
                    self.end(f, Err(UpstreamError::NoPeer));
                }
            }
            Role::Transfer => self.end(f, Err(e)),
        }
    }

    /// Expired deadlines: clients past a limit, upstreams past a connect or
    /// first-byte limit, lookups and resolutions that took too long.
    fn expire(&mut self, registry: &Registry) {
        let now = StdInstant::now();
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Conn(key) => {
                    match self.conns.get_mut(key) {
                        Some(Conn::Client(c)) => {
                            c.deadline = None;
                            let late_head = matches!(c.phase, Phase::Head) && !c.inbuf.is_empty();
                            if late_head {
                                // Slowloris: a head that never ends is answered 408.
                                c.inbuf.clear();
                                c.readable = false;
                                c.push(Bytes::from(bare_response(408)));
                                c.phase = Phase::Done { keep_alive: false };
                                let at = now + self.opts.io_timeout;
                                set_deadline(
                                    &mut self.timers,
                                    &mut c.deadline,
                                    Timer::Conn(key),
                                    Some(at),
                                );
                                self.client_turn(registry, key);
                            } else {
                                self.close(registry, key);
                            }
                        }
                        Some(Conn::Up(u)) => {
                            u.deadline = None;
                            self.up_failed(registry, key, UpstreamError::Timeout);
                        }
                        None => {}
                    }
                }
                Timer::Lookup(f) => self.finish_lookup(f),
                Timer::Resolve(f) => {
                    if self.resolver.pending.remove(&f).is_some() {
                        self.end(f, Err(UpstreamError::Dns));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use mio::{Events, Poll};

    use super::*;

    #[test]
    fn deadlines_move_earlier_exactly_and_later_only_by_a_second_or_more() {
        let mut timers = BTreeSet::new();
        let mut slot = None;
        let key = Timer::Conn(7);
        let t0 = StdInstant::now();
        set_deadline(
            &mut timers,
            &mut slot,
            key,
            Some(t0 + Duration::from_secs(10)),
        );
        assert_eq!(timers.len(), 1);
        // A little later: not worth reordering the set.
        set_deadline(
            &mut timers,
            &mut slot,
            key,
            Some(t0 + Duration::from_millis(10_500)),
        );
        assert_eq!(slot, Some(t0 + Duration::from_secs(10)));
        // A second or more later: moved.
        set_deadline(
            &mut timers,
            &mut slot,
            key,
            Some(t0 + Duration::from_secs(12)),
        );
        assert_eq!(slot, Some(t0 + Duration::from_secs(12)));
        // Earlier, by any amount: moved.
        set_deadline(
            &mut timers,
            &mut slot,
            key,
            Some(t0 + Duration::from_millis(11_900)),
        );
        assert_eq!(slot, Some(t0 + Duration::from_millis(11_900)));
        assert_eq!(timers.len(), 1, "one entry per connection: {timers:?}");
        assert_eq!(
            timers.first(),
            Some(&(t0 + Duration::from_millis(11_900), key))
        );
        set_deadline(&mut timers, &mut slot, key, None);
        assert!(timers.is_empty() && slot.is_none());
    }

    /// A connected pair of loopback streams: the mio side and a blocking std side.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let far = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (near, _) = l.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        (TcpStream::from_std(near), far)
    }

    #[test]
    fn a_flush_writes_until_the_socket_is_full_and_resumes_where_it_stopped() {
        let (stream, mut far) = pair();
        let mut c = Client {
            stream,
            ip: IpAddr::from([127, 0, 0, 1]),
            inbuf: BytesMut::new(),
            out: VecDeque::new(),
            out_len: 0,
            phase: Phase::Head,
            readable: false,
            blocked: false,
            deadline: None,
        };
        // More than any loopback socket buffer takes at once, in pieces of
        // odd sizes so that writes end inside a piece.
        let mut want = Vec::new();
        for i in 0..40u8 {
            let piece: Vec<u8> = (0..(100_003 + usize::from(i)))
                .map(|j| (j as u8) ^ i)
                .collect();
            want.extend_from_slice(&piece);
            c.push(Bytes::from(piece));
        }
        c.push(Bytes::new());
        assert_eq!(c.out_len, want.len());
        assert_eq!(c.out.len(), 40, "empty pieces are not queued");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        while got.len() < want.len() {
            let mut budget = WRITE_TURN;
            c.flush(&mut budget).unwrap();
            assert!(c.blocked || c.out.is_empty() || budget == 0);
            assert_eq!(c.out_len, c.out.iter().map(Bytes::len).sum::<usize>());
            let n = far.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == want, "bytes arrive whole and in order");
        assert_eq!(c.out_len, 0);
    }

    #[test]
    fn resolver_threads_answer_through_the_channel_and_wake_the_loop() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(1)).unwrap());
        let mut r = Resolver::new(waker);
        assert!(r.jobs.is_none(), "no thread before the first name");
        assert!(r.submit(ResolveJob {
            fetch: FetchId(3),
            host: "localhost".to_owned(),
            port: 8080,
        }));
        let mut events = Events::with_capacity(4);
        let deadline = StdInstant::now() + Duration::from_secs(20);
        let got = loop {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            if let Ok(got) = r.results.try_recv() {
                break got;
            }
            assert!(StdInstant::now() < deadline, "no answer from the resolver");
        };
        assert_eq!(got.fetch, FetchId(3));
        assert!(
            got.addrs
                .iter()
                .all(|a| a.port() == 8080 && a.ip().is_loopback())
                && !got.addrs.is_empty(),
            "{:?}",
            got.addrs
        );
    }
}
