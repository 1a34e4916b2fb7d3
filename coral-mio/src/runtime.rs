//! The loop: one thread, one `mio::Poll`, one core [`Node`].
//!
//! Sources, each with its own token: the RPC UDP socket, the admin TCP
//! listener and its connections (keys of a `slab`), a `Waker` for commands
//! from other threads, and optionally SIGINT/SIGTERM. Every source is
//! registered edge-triggered, so a readiness event is a promise to read
//! until `WouldBlock`: the UDP socket is drained with `recvmmsg`, at most
//! [`RECV_TURNS`] batches per turn (a flood must not starve commands, the
//! admin endpoint or the timer); when the budget runs out before
//! `WouldBlock` the loop polls again without sleeping and carries on.
//!
//! After every input the loop drains the core as `coral_core`'s crate
//! documentation prescribes: every transmit (into the bounded send queue of
//! [`crate::udp`], flushed with `sendmmsg` when full, at the end of a batch,
//! and on writability), then every event, then the next deadline. The
//! core's [`Node::poll_timeout`] is the loop's protocol timer: it becomes
//! the `epoll_wait` timeout, so an idle node sleeps until the core has
//! something to do. The other deadlines joined into that timeout are the
//! DNS redirector's (held queries) and the sockets' own limits (admin,
//! proxy and DNS connections, resolver probes).
//!
//! With a proxy listener ([`Listeners::proxy`]) the loop also serves the
//! HTTP proxy ([`crate::proxy`]): its listener, client and upstream
//! connections are more sources on the same poller, its connection and
//! lookup deadlines join the `epoll_wait` timeout, the node operations of
//! its fetches run on this loop's node, and the events that finish them go
//! to the proxy before anyone else.
//!
//! With DNS sockets ([`DnsSockets`], given to [`spawn_with_dns`] or
//! [`Driver::build_with_dns`]) the loop also serves the DNS redirector
//! ([`crate::dns`]): its UDP socket, TCP listener, TCP connections and
//! resolver probes are more sources on the same poller, the core's
//! [`coral_core::dns::DnsServer`] reads this loop's node, its held queries'
//! deadline and the sockets' deadlines join the `epoll_wait` timeout, and
//! the hint lookups it asks for run on the node, their events going to it
//! before anyone else.
//!
//! Commands from a [`Handle`] become core calls, and the events that finish
//! them go back to their callers, through [`coral_tokio::dispatch`], the same
//! code the tokio runtime uses; other events go to the loop's [`App`].
//!
//! The loop makes no protocol decision: retries, timeouts, peer choice and
//! clustering happen inside the core.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use coral_core::config::Config;
use coral_core::contact::Services;
use coral_core::dsht::hints::Router;
use coral_core::http::ProxyStats;
use coral_core::id::Id;
use coral_core::time::Instant as CoreInstant;
use coral_core::{Event, Levels, Node};
use coral_tokio::dispatch::{self, Dispatch, GetResult, Joined, NodeError, PutResult, Replies};
use coral_tokio::proxy::ProxyOptions;
use coral_tokio::runtime::{BindError, NodeOptions};
use coral_tokio::status::{AdapterCounters, NodeStatus, dns_counters, snapshot};
use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};

use crate::admin::Admin;
use crate::dns::{Dns, DnsSockets, FIRST_DNS_CONN};
use crate::proxy::{FIRST_PROXY_CONN, HttpProxy};
use crate::udp::{Headers, RecvBatch, SendQueue};

const UDP: Token = Token(0);
const WAKER: Token = Token(1);
const LISTENER: Token = Token(2);
const SIGNALS: Token = Token(3);
const PROXY_LISTENER: Token = Token(4);
const DNS_UDP: Token = Token(5);
const DNS_LISTENER: Token = Token(6);
/// Connection tokens are slab keys plus this.
pub(crate) const FIRST_CONN: usize = 16;

/// `recvmmsg` batches taken per turn before the loop looks at its other
/// sources (32 datagrams each).
pub const RECV_TURNS: usize = 8;

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// Most commands handled per turn, for the same reason as [`RECV_TURNS`].
const COMMAND_TURN: usize = 256;

/// Replies go back over std's channels, on which a [`Handle`] blocks.
struct StdChannel;

impl Replies for StdChannel {
    type To<T> = mpsc::Sender<T>;

    fn send<T>(to: Self::To<T>, value: T) {
        let _ = to.send(value);
    }
}

type Reply<T> = dispatch::Reply<StdChannel, T>;
type Call = Box<dyn FnOnce(&mut Node, CoreInstant) + Send>;

/// What a [`Handle`] sends the loop.
enum Command {
    /// An operation on the node.
    Node(dispatch::Command<StdChannel>),
    Status(mpsc::Sender<NodeStatus>),
    ProxyStats(mpsc::Sender<Option<ProxyStats>>),
    Call(Call),
    Shutdown,
}

/// Code that runs on the loop's thread and receives the core events no
/// [`Handle`] caller is waiting for (operations it started itself through
/// the `&mut Node` it is given, cluster changes, ...). The HTTP proxy and
/// the DNS server are served by the loop itself: the events of their own
/// operations are taken before the application sees any.
pub trait App: Send {
    /// One event; the node may be given new work, whose output the loop drains.
    fn on_event(&mut self, node: &mut Node, now: CoreInstant, event: Event);
}

/// The application that only logs: cluster changes at info, the rest at trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogEvents;

impl App for LogEvents {
    fn on_event(&mut self, _node: &mut Node, _now: CoreInstant, event: Event) {
        dispatch::log_event(&event);
    }
}

/// A cheap, cloneable handle to a running loop, usable from any thread.
/// Every method blocks the calling thread until the loop answers.
#[derive(Clone, Debug)]
pub struct Handle {
    commands: SyncSender<Command>,
    waker: Arc<Waker>,
    addr: SocketAddr,
    proxy: Option<SocketAddr>,
    dns: Option<SocketAddr>,
    id: Id,
    seed: u64,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Handle {
    /// The RPC socket's address (with the port the OS picked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP proxy's address, when the loop serves one.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy
    }

    /// The DNS server's address (UDP and TCP), when the loop serves one.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns
    }

    /// The HTTP proxy's counters (`None` when the loop serves no proxy).
    pub fn proxy_stats(&self) -> Result<Option<ProxyStats>, NodeError> {
        self.request(Command::ProxyStats)
    }

    /// The node's id.
    pub fn id(&self) -> Id {
        self.id
    }

    /// The seed of the node's RNG, for replaying an incident in the simulator.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn send(&self, cmd: Command) -> Result<(), NodeError> {
        self.commands.send(cmd).map_err(|_| NodeError::Stopped)?;
        // A failed wake means the poller is gone, i.e. the loop stopped;
        // the reply channel then reports it.
        let _ = self.waker.wake();
        Ok(())
    }

    /// Sends `make`'s command with a fresh reply channel and waits for the answer.
    fn request<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> Result<T, NodeError> {
        let (tx, rx) = mpsc::channel();
        self.send(make(tx))?;
        rx.recv().map_err(|_| NodeError::Stopped)
    }

    /// [`Self::request`] for a node operation that can fail.
    fn ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> dispatch::Command<StdChannel>,
    ) -> Result<T, NodeError> {
        self.request(|r| Command::Node(make(r)))?
    }

    /// Joins the network through `bootstrap` (none: a network of one).
    pub fn join(&self, bootstrap: Vec<SocketAddr>) -> Result<Joined, NodeError> {
        self.ask(|r| dispatch::Command::Join(bootstrap, r))
    }

    /// Gets the values of `key` at `levels`, fastest level first.
    pub fn get(&self, key: Id, levels: Levels) -> Result<GetResult, NodeError> {
        self.ask(|r| dispatch::Command::Get(key, levels, r))
    }

    /// Puts `value` under `key` for `ttl` at `levels`.
    pub fn put(
        &self,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
    ) -> Result<PutResult, NodeError> {
        self.put_or_publish(key, value, ttl, levels, false)
    }

    /// Puts `value` under `key` and has the core keep it alive.
    pub fn publish(
        &self,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
    ) -> Result<PutResult, NodeError> {
        self.put_or_publish(key, value, ttl, levels, true)
    }

    fn put_or_publish(
        &self,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
        publish: bool,
    ) -> Result<PutResult, NodeError> {
        self.ask(|reply| dispatch::Command::Put {
            key,
            value,
            ttl,
            levels,
            publish,
            reply,
        })
    }

    /// Publishes this node's network hints (its prefix and `routers`).
    pub fn publish_hints(&self, routers: Vec<Router>) -> Result<(), NodeError> {
        self.request(|r| Command::Node(dispatch::Command::PublishHints(routers, r)))
    }

    /// A snapshot of the node's state and counters, as coral-tokio reports it.
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        self.request(Command::Status)
    }

    /// Runs `f` on the loop's thread with the node; events of operations it
    /// starts go to the loop's [`App`]. Returns what `f` returns.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node, CoreInstant) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Call(Box::new(move |node, now| {
            let _ = tx.send(f(node, now));
        })))?;
        rx.recv().map_err(|_| NodeError::Stopped)
    }

    /// Asks the loop to stop; callers still waiting get [`NodeError::Stopped`].
    pub fn shutdown(&self) {
        // An error means the loop already stopped, which is what was asked.
        let _ = self.send(Command::Shutdown);
    }
}

/// A loop running on its own thread, and the handle to talk to it.
#[derive(Debug)]
pub struct RunningNode {
    /// The handle; clone it freely.
    pub handle: Handle,
    thread: JoinHandle<()>,
}

impl RunningNode {
    /// Stops the loop and waits until its thread (and sockets) are gone.
    pub fn shutdown(self) {
        self.handle.shutdown();
        if self.thread.join().is_err() {
            warn!("node thread panicked");
        }
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Binds the RPC socket (as coral-tokio binds it) and starts a loop on a
/// new thread, with no admin endpoint and the [`LogEvents`] application.
pub fn spawn(options: NodeOptions) -> Result<RunningNode, BindError> {
    spawn_with(options, None, Box::new(LogEvents))
}

/// [`spawn`] with an admin listener and an application of the caller's.
pub fn spawn_with(
    options: NodeOptions,
    admin: Option<std::net::TcpListener>,
    app: Box<dyn App>,
) -> Result<RunningNode, BindError> {
    spawn_listeners(options, Listeners { admin, proxy: None }, app)
}

/// The TCP services a loop serves besides the RPC socket, each on a bound
/// listener (bind them first, so a busy port fails before anything runs).
/// The DNS server, which has a UDP socket too, is given apart
/// ([`spawn_with_dns`], [`Driver::build_with_dns`]).
#[derive(Debug, Default)]
pub struct Listeners {
    /// The admin endpoint.
    pub admin: Option<std::net::TcpListener>,
    /// The HTTP proxy and its limits (`ProxyOptions::listen` is ignored:
    /// the listener says where it listens). The node then offers the HTTP
    /// service to its peers, as `coral node` does.
    pub proxy: Option<(std::net::TcpListener, ProxyOptions)>,
}

/// [`spawn`] with the TCP services of `listeners` and an application of the caller's.
pub fn spawn_listeners(
    options: NodeOptions,
    listeners: Listeners,
    app: Box<dyn App>,
) -> Result<RunningNode, BindError> {
    spawn_with_dns(options, listeners, None, app)
}

/// [`spawn_listeners`], with the DNS server on `dns`'s sockets served by
/// the same loop (it reads the node's contacts and clusters). The node then
/// offers the DNS service to its peers, as `coral node` does.
pub fn spawn_with_dns(
    options: NodeOptions,
    listeners: Listeners,
    dns: Option<DnsSockets>,
    app: Box<dyn App>,
) -> Result<RunningNode, BindError> {
    let socket = coral_tokio::runtime::bind_udp(
        options.rpc_addr,
        options.recv_buffer_bytes,
        options.send_buffer_bytes,
    )?;
    // The driver holds kernel message headers (raw pointers, not `Send`),
    // so it is built on the thread that runs it and only the handle comes back.
    let (tx, rx) = mpsc::channel();
    let (core, queue, addr, gso) = (
        options.core,
        options.command_queue,
        options.rpc_addr,
        options.gso,
    );
    let thread = std::thread::Builder::new()
        .name(format!("coral-mio {addr}"))
        .spawn(
            move || match Driver::build_with_dns(core, socket, listeners, dns, app, queue) {
                Ok((mut driver, handle)) => {
                    driver.set_gso(gso);
                    let _ = tx.send(Ok(handle));
                    if let Err(e) = driver.run() {
                        warn!(error = %e, "node loop failed");
                    }
                }
                Err(e) => drop(tx.send(Err(e))),
            },
        )
        .map_err(|source| BindError {
            what: "node thread for",
            addr,
            source,
        })?;
    let handle = rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the node thread died")))
        .map_err(|source| BindError {
            what: "mio poller for",
            addr,
            source,
        })?;
    Ok(RunningNode { handle, thread })
}

/// The loop and everything it owns. Build it with [`Driver::new`], then
/// [`Driver::run`] it on the thread that should own it.
pub struct Driver {
    node: Node,
    poll: Poll,
    socket: UdpSocket,
    commands: Receiver<Command>,
    admin: Option<Admin>,
    proxy: Option<HttpProxy>,
    dns: Option<Dns>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    app: Box<dyn App>,
    epoch: StdInstant,
    recv: RecvBatch,
    send: SendQueue,
    /// The kernel headers of each batch, kept for the loop's life (one
    /// per direction: `sendmmsg` repoints the address fields that
    /// `recvmmsg` fills).
    recv_headers: Headers,
    send_headers: Headers,
    scratch: Vec<u8>,
    dispatch: Dispatch<StdChannel>,
    counters: AdapterCounters,
    seed: u64,
    /// The UDP socket may hold more datagrams (the budget ran out first).
    udp_more: bool,
    /// Commands may be queued (the waker fired, or the budget ran out).
    commands_more: bool,
    /// The UDP socket is registered for writability too (only while sends
    /// wait: on loopback every freed send buffer would otherwise wake us).
    want_writable: bool,
    stop: bool,
    /// GSO was asked for and the kernel has not refused it yet.
    gso_wanted: bool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("addr", &self.node.contact().addr)
            .field("pending", &self.dispatch.waiting())
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Takes a bound, non-blocking UDP socket (and optionally a bound admin
    /// listener) and builds the loop and its handle.
    pub fn new(
        core: Config,
        socket: std::net::UdpSocket,
        admin: Option<std::net::TcpListener>,
        app: Box<dyn App>,
        command_queue: usize,
    ) -> io::Result<(Self, Handle)> {
        let listeners = Listeners { admin, proxy: None };
        Self::build(core, socket, listeners, app, command_queue)
    }

    /// [`Driver::new`] with every TCP service of `listeners`.
    pub fn build(
        core: Config,
        socket: std::net::UdpSocket,
        listeners: Listeners,
        app: Box<dyn App>,
        command_queue: usize,
    ) -> io::Result<(Self, Handle)> {
        Self::build_with_dns(core, socket, listeners, None, app, command_queue)
    }

    /// [`Driver::build`], with the DNS server on `dns`'s sockets (the node
    /// then offers the DNS service to its peers).
    pub fn build_with_dns(
        mut core: Config,
        socket: std::net::UdpSocket,
        listeners: Listeners,
        dns: Option<DnsSockets>,
        app: Box<dyn App>,
        command_queue: usize,
    ) -> io::Result<(Self, Handle)> {
        let Listeners { admin, proxy } = listeners;
        socket.set_nonblocking(true)?;
        let addr = socket.local_addr()?;
        let poll = Poll::new()?;
        let mut socket = UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, UDP, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let admin = match admin {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, LISTENER, Interest::READABLE)?;
                Some(Admin::new(l))
            }
            None => None,
        };
        if proxy.is_some() {
            core.services = core.services.with(Services::HTTP);
        }
        if dns.is_some() {
            core.services = core.services.with(Services::DNS);
        }
        let seed = core.seed;
        let node = Node::new(core, addr, CoreInstant::ZERO);
        let id = node.id();
        info!(%addr, id = %id, seed, "node started (replay with this seed)");
        let epoch = StdInstant::now();
        let proxy = match proxy {
            Some((listener, opts)) => Some(HttpProxy::new(
                listener,
                opts,
                id,
                poll.registry(),
                PROXY_LISTENER,
                Arc::clone(&waker),
                epoch,
            )?),
            None => None,
        };
        let proxy_addr = proxy.as_ref().map(HttpProxy::addr);
        let levels = node.levels().len();
        let dns = match dns {
            Some(sockets) => {
                let d = Dns::new(
                    sockets,
                    levels,
                    poll.registry(),
                    DNS_UDP,
                    DNS_LISTENER,
                    epoch,
                )?;
                info!(dns = %d.addr(), "DNS server listening (UDP and TCP)");
                Some(d)
            }
            None => None,
        };
        let dns_addr = dns.as_ref().map(Dns::addr);
        let (tx, rx) = mpsc::sync_channel(command_queue.max(1));
        let driver = Self {
            node,
            poll,
            socket,
            commands: rx,
            admin,
            proxy,
            dns,
            signals: None,
            app,
            epoch,
            recv: RecvBatch::new(),
            send: SendQueue::new(),
            recv_headers: Headers::new(),
            send_headers: Headers::new(),
            scratch: Vec::with_capacity(crate::udp::SLOT),
            dispatch: Dispatch::default(),
            counters: AdapterCounters::default(),
            seed,
            udp_more: true,
            commands_more: true,
            want_writable: false,
            stop: false,
            gso_wanted: false,
        };
        let handle = Handle {
            commands: tx,
            waker,
            addr,
            proxy: proxy_addr,
            dns: dns_addr,
            id,
            seed,
        };
        Ok((driver, handle))
    }

    /// Sends runs of RPC datagrams to one peer with UDP segmentation
    /// offload where the kernel allows (see `coral_tokio::batch_udp`).
    pub fn set_gso(&mut self, on: bool) {
        self.send.set_gso(on);
        self.gso_wanted = on;
    }

    /// Stops the loop cleanly on SIGINT or SIGTERM (for the binary).
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Runs `f` with the node before the loop starts (a join, say), then
    /// drains the core as after any input.
    pub fn with_node<R>(&mut self, f: impl FnOnce(&mut Node, CoreInstant) -> R) -> R {
        let now = self.now();
        let r = f(&mut self.node, now);
        self.drain(now);
        r
    }

    fn now(&self) -> CoreInstant {
        CoreInstant::from_duration(self.epoch.elapsed())
    }

    /// How long `epoll_wait` may sleep: until the core's deadline or an
    /// admin connection's, and not at all while input is known to wait.
    fn wait(&self) -> Option<Duration> {
        if self.udp_more || self.commands_more {
            return Some(Duration::ZERO);
        }
        let core = self
            .node
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.now()));
        let admin = self
            .admin
            .as_ref()
            .and_then(|a| a.next_deadline())
            .map(|t| t.saturating_duration_since(StdInstant::now()));
        let proxy = self.proxy.as_ref().and_then(HttpProxy::wait);
        let dns = self.dns.as_ref().and_then(Dns::wait);
        [core, admin, proxy, dns].into_iter().flatten().min()
    }

    /// Runs until [`Handle::shutdown`] (or a signal, see
    /// [`Self::stop_on_signals`]); errors only if the poller fails.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        let now = self.now();
        self.drain(now);
        while !self.stop {
            let timeout = self.wait();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events {
                match ev.token() {
                    UDP => {
                        if ev.is_readable() {
                            self.udp_more = true;
                        }
                        if ev.is_writable() && !self.send.is_empty() {
                            self.flush();
                        }
                    }
                    WAKER => self.commands_more = true,
                    LISTENER => {
                        if let Some(a) = &mut self.admin {
                            a.accept_ready(self.poll.registry());
                        }
                    }
                    DNS_UDP => {
                        if let Some(d) = &mut self.dns {
                            d.udp_ready(self.poll.registry(), ev.is_readable(), ev.is_writable());
                        }
                    }
                    DNS_LISTENER => {
                        if let Some(d) = &mut self.dns {
                            d.accept_ready(&self.node, self.poll.registry());
                        }
                    }
                    Token(t) if t >= FIRST_DNS_CONN => {
                        if let Some(d) = &mut self.dns {
                            d.ready(&self.node, self.poll.registry(), t, ev.is_readable());
                        }
                    }
                    PROXY_LISTENER => {
                        if let Some(p) = &mut self.proxy {
                            p.accept_ready(&mut self.node, self.poll.registry());
                        }
                    }
                    Token(t) if t >= FIRST_PROXY_CONN => {
                        if let Some(p) = &mut self.proxy {
                            p.conn_ready(
                                &mut self.node,
                                self.poll.registry(),
                                t,
                                ev.is_readable(),
                                ev.is_writable(),
                            );
                        }
                    }
                    SIGNALS => {
                        if let Some(s) = &mut self.signals
                            && s.pending().next().is_some()
                        {
                            info!("signal received: shutting down");
                            self.stop = true;
                        }
                    }
                    Token(t) => {
                        let now = self.now();
                        if let Some(a) = &mut self.admin {
                            let counters = self.counters;
                            let waiting = self.dispatch.waiting();
                            let (node, seed) = (&self.node, self.seed);
                            let (proxy, dns) = (self.proxy.as_ref(), self.dns.as_ref());
                            a.connection_ready(
                                self.poll.registry(),
                                t.wrapping_sub(FIRST_CONN),
                                ev.is_readable(),
                                ev.is_writable(),
                                || status(node, now, seed, counters, waiting, dns),
                                || {
                                    let mut m = proxy.map(HttpProxy::metrics).unwrap_or_default();
                                    m.push_str(&dns.map(Dns::metrics).unwrap_or_default());
                                    m
                                },
                            );
                        }
                    }
                }
            }
            if self.udp_more {
                self.recv_turn();
            }
            if self.commands_more {
                self.command_turn();
            }
            if let Some(p) = &mut self.proxy {
                p.turn(&mut self.node, self.poll.registry());
            }
            if let Some(d) = &mut self.dns {
                d.turn(&mut self.node, self.poll.registry());
            }
            let now = self.now();
            // What the proxy and the DNS server asked of the node leaves now.
            self.drain(now);
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.counters.timer_wakeups += 1;
                self.node.handle_timeout(now);
                self.drain(now);
            }
            if let Some(a) = &mut self.admin {
                a.expire(self.poll.registry(), StdInstant::now());
            }
            self.flush();
        }
        let stopped = self.dispatch.cancel_all();
        self.flush();
        info!(addr = %self.node.contact().addr, operations_cancelled = stopped, "node stopped");
        Ok(())
    }

    /// Up to [`RECV_TURNS`] `recvmmsg` batches; stops early on `WouldBlock`.
    fn recv_turn(&mut self) {
        for _ in 0..RECV_TURNS {
            let n = match self.recv.recv(&self.socket, &mut self.recv_headers) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.udp_more = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors surface here; the core notices the silence
                    // through its own timeouts.
                    self.counters.recv_errors += 1;
                    debug!(error = %e, "recvmmsg failed");
                    continue;
                }
            };
            // Datagrams of one batch arrived together: one clock read.
            let now = self.now();
            for i in 0..n {
                if let Some((from, bytes)) = self.recv.get(i) {
                    self.counters.datagrams_in += 1;
                    self.node.handle_datagram(now, from, bytes);
                }
                self.drain(now);
            }
            // Replies to a batch leave as a batch.
            self.flush();
            // recvmmsg took everything queued when it ran short of a full
            // batch, and any later arrival raises a new edge-triggered event:
            // the read that would only say WouldBlock is skipped.
            if n < crate::udp::BATCH {
                self.udp_more = false;
                return;
            }
        }
    }

    fn command_turn(&mut self) {
        for _ in 0..COMMAND_TURN {
            match self.commands.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                    self.stop = true;
                    self.commands_more = false;
                    return;
                }
                Ok(cmd) => self.command(cmd),
                Err(TryRecvError::Empty) => {
                    self.commands_more = false;
                    return;
                }
            }
        }
    }

    /// Sends what the queue holds; counts what was sent and what failed.
    /// Asks for writability only while datagrams wait for it.
    fn flush(&mut self) {
        if self.send.is_empty() && !self.want_writable {
            return;
        }
        let f = self.send.flush(&self.socket, &mut self.send_headers);
        if self.gso_wanted && !self.send.gso() {
            self.gso_wanted = false;
            warn!("the kernel refused UDP segmentation offload: RPC datagrams go one by one");
        }
        self.counters.datagrams_out += f.sent as u64;
        self.counters.datagrams_out_gso += f.gso as u64;
        self.counters.send_errors += f.failed as u64;
        let want = !self.send.is_empty();
        if want != self.want_writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match self
                .poll
                .registry()
                .reregister(&mut self.socket, UDP, interest)
            {
                Ok(()) => self.want_writable = want,
                Err(e) => warn!(error = %e, "cannot change the RPC socket's interest"),
            }
        }
    }

    /// Every transmit, then every event, until both are empty (an
    /// application may start operations from an event).
    fn drain(&mut self, now: CoreInstant) {
        loop {
            self.drain_transmits();
            let Some(event) = self.node.poll_event() else {
                break;
            };
            self.event(now, event);
        }
    }

    fn drain_transmits(&mut self) {
        loop {
            if self.send.is_full() {
                self.flush();
            }
            match self.send.slot() {
                Some(buf) => match self.node.poll_transmit(buf) {
                    Some(t) => self.send.commit(t.destination, t.size),
                    None => return,
                },
                // Still full: the socket is blocked. The core must still be
                // drained; what does not fit is dropped and counted.
                None => match self.node.poll_transmit(&mut self.scratch) {
                    Some(t) => {
                        self.counters.send_errors += 1;
                        debug!(to = %t.destination, "send queue full: datagram dropped");
                    }
                    None => return,
                },
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Node(cmd) => self.dispatch.command(&mut self.node, now, cmd),
            Command::Status(reply) => {
                let _ = reply.send(status(
                    &self.node,
                    now,
                    self.seed,
                    self.counters,
                    self.dispatch.waiting(),
                    self.dns.as_ref(),
                ));
            }
            Command::ProxyStats(reply) => {
                let _ = reply.send(self.proxy.as_ref().map(HttpProxy::stats));
            }
            Command::Call(f) => f(&mut self.node, now),
            // Handled by the command turn.
            Command::Shutdown => {}
        }
        self.drain(now);
    }

    /// Answers a waiting [`Handle`] caller, or gives the event to the app.
    fn event(&mut self, now: CoreInstant, event: Event) {
        let event = match &mut self.dns {
            Some(d) => match d.on_event(&self.node, self.poll.registry(), event) {
                Some(e) => e,
                None => return,
            },
            None => event,
        };
        let event = match &mut self.proxy {
            Some(p) => match p.on_event(&mut self.node, self.poll.registry(), event) {
                Some(e) => e,
                None => return,
            },
            None => event,
        };
        if let Some(event) = self.dispatch.event(event) {
            self.counters.other_events += 1;
            self.app.on_event(&mut self.node, now, event);
        }
    }
}

/// The status snapshot, with the DNS server's counters when it runs.
fn status(
    node: &Node,
    now: CoreInstant,
    seed: u64,
    counters: AdapterCounters,
    waiting: usize,
    dns: Option<&Dns>,
) -> NodeStatus {
    let mut s = snapshot(node, now, seed, counters, waiting);
    s.dns = dns.map(|d| dns_counters(&d.stats()));
    s
}
