//! The actor that drives one core [`Node`] on a tokio UDP socket.
//!
//! One task owns the `Node`. Its loop waits, in one `select!`, on three
//! inputs: a datagram on the RPC socket (read into one buffer reused for the
//! life of the task, so the hot path allocates nothing per packet), the
//! core's deadline (one `Sleep`, reset only when [`Node::poll_timeout`]
//! changes), and an application command from a [`NodeHandle`] over an mpsc
//! channel. After every input it drains the core as the crate documentation
//! of `coral_core` prescribes: every transmit, then every event, then the
//! next deadline. Commands become core calls, and events that finish an
//! operation are matched to its caller, in [`crate::dispatch`] (shared with
//! coral-mio); answers go back over oneshot channels.
//!
//! The task makes no protocol decision: retries, timeouts, peer choice and
//! clustering all happen inside the core, which this file only feeds.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use coral_core::config::Config;
use coral_core::contact::{Contact, Level, Services};
use coral_core::dsht::hints::Router;
use coral_core::id::Id;
use coral_core::time::Instant as CoreInstant;
use coral_core::{Event, Levels, Node};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;
use tracing::{debug, info, warn};

use crate::batch_udp::{BATCH, Headers, SendQueue};
use crate::dispatch::{self, Dispatch, Replies};
pub use crate::dispatch::{GetResult, Joined, NodeError, NodesResult, PutResult};
use crate::dns::{self, DnsInputs, DnsService, DnsState, TcpQuery};
use crate::status::{self, NodeStatus};
use coral_core::dns::{Handled, Transport};

/// Largest datagram the receive buffer holds. Coral's own datagrams are far
/// smaller; a larger one is truncated by the kernel and then counted as
/// malformed by the core, which is what it is.
const RECV_BUFFER: usize = 64 * 1024;

/// Most queued datagrams handled after a wake-up before the loop looks at
/// commands and the timer again (so neither waits behind a flood).
const RECV_BATCH: usize = 32;

/// The next value of an optional receiver; never, when there is none.
async fn next_of<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The DNS socket is readable; never, without a DNS server.
async fn dns_readable(d: Option<&DnsState>) -> io::Result<()> {
    match d {
        Some(d) => d.udp.readable().await,
        None => std::future::pending().await,
    }
}

thread_local! {
    /// The kernel headers of DNS batches, per worker thread: they hold raw
    /// pointers, so the node task (which may move between threads) cannot
    /// own them, but it uses them only inside one synchronous call, never
    /// across an await, so each thread's set serves whichever task runs on
    /// it. One set per direction: sendmmsg repoints what recvmmsg fills.
    static RECV_HEADERS: std::cell::RefCell<Headers> = std::cell::RefCell::new(Headers::new());
    static SEND_HEADERS: std::cell::RefCell<Headers> = std::cell::RefCell::new(Headers::new());
}

/// Sends what the DNS send queue holds, waiting for writability while the
/// kernel's buffer is full (bounded: a few rounds, then what is left waits
/// for the next flush).
async fn flush_dns(udp: &UdpSocket, tx: &mut SendQueue) {
    for _ in 0..8 {
        let r = udp.try_io(Interest::WRITABLE, || {
            SEND_HEADERS.with_borrow_mut(|h| tx.flush(udp, h));
            if tx.is_blocked() {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if udp.writable().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                debug!(error = %e, "DNS sendmmsg failed");
                return;
            }
        }
    }
}

/// How the adapter binds and sizes its socket; everything else is the core's [`Config`].
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The core's configuration, including the RNG seed (log it!).
    pub core: Config,
    /// Where the RPC socket listens (IPv4 or IPv6; port 0 picks one).
    pub rpc_addr: SocketAddr,
    /// Kernel receive buffer (`SO_RCVBUF`) in bytes; 0 keeps the OS default.
    pub recv_buffer_bytes: usize,
    /// Kernel send buffer (`SO_SNDBUF`) in bytes; 0 keeps the OS default.
    pub send_buffer_bytes: usize,
    /// Application commands that may wait for the node task at once.
    pub command_queue: usize,
    /// Whether RPC datagrams to one peer leave in one send with UDP
    /// segmentation offload where the kernel allows (coral-mio's loop;
    /// see `batch_udp`).
    pub gso: bool,
}

impl NodeOptions {
    /// Options with the socket defaults of the example config file.
    pub fn new(core: Config, rpc_addr: SocketAddr) -> Self {
        Self {
            core,
            rpc_addr,
            recv_buffer_bytes: 4 << 20,
            send_buffer_bytes: 1 << 20,
            command_queue: 1024,
            gso: true,
        }
    }
}

/// A socket could not be set up; the message names the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} {addr}")]
pub struct BindError {
    /// What the socket is for ("RPC UDP socket", "admin TCP listener", ...).
    pub what: &'static str,
    /// The address that could not be bound.
    pub addr: SocketAddr,
    /// The operating system's reason.
    #[source]
    pub source: io::Error,
}

/// Replies go back over tokio's oneshot channels.
struct Oneshot;

impl Replies for Oneshot {
    type To<T> = oneshot::Sender<T>;

    fn send<T>(to: Self::To<T>, value: T) {
        let _ = to.send(value);
    }
}

type Reply<T> = dispatch::Reply<Oneshot, T>;

/// What a [`NodeHandle`] sends the node task.
enum Command {
    /// An operation on the node.
    Node(dispatch::Command<Oneshot>),
    Status(oneshot::Sender<NodeStatus>),
    Shutdown,
}

/// A cheap, cloneable handle to a running node task.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    addr: SocketAddr,
    id: Id,
    seed: u64,
}

impl NodeHandle {
    /// The RPC socket's address (with the port the OS picked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's id.
    pub fn id(&self) -> Id {
        self.id
    }

    /// The seed of the node's RNG, for replaying an incident in the simulator.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Sends `make`'s command with a fresh reply channel and waits for the answer.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// [`Self::request`] for a node operation that can fail.
    async fn ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> dispatch::Command<Oneshot>,
    ) -> Result<T, NodeError> {
        self.request(|r| Command::Node(make(r))).await?
    }

    /// Joins the network through `bootstrap` (none: a network of one).
    pub async fn join(&self, bootstrap: Vec<SocketAddr>) -> Result<Joined, NodeError> {
        self.ask(|r| dispatch::Command::Join(bootstrap, r)).await
    }

    /// Gets the values of `key` at `levels`, fastest level first.
    pub async fn get(&self, key: Id, levels: Levels) -> Result<GetResult, NodeError> {
        self.ask(|r| dispatch::Command::Get(key, levels, r)).await
    }

    /// Puts `value` under `key` for `ttl` at `levels`.
    pub async fn put(
        &self,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
    ) -> Result<PutResult, NodeError> {
        self.ask(|reply| dispatch::Command::Put {
            key,
            value,
            ttl,
            levels,
            publish: false,
            reply,
        })
        .await
    }

    /// Puts `value` under `key` and has the core keep it alive until
    /// [`Self::withdraw`]; returns the first put's result.
    pub async fn publish(
        &self,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
    ) -> Result<PutResult, NodeError> {
        self.ask(|reply| dispatch::Command::Put {
            key,
            value,
            ttl,
            levels,
            publish: true,
            reply,
        })
        .await
    }

    /// Stops keeping a published value alive; returns whether it was published.
    pub async fn withdraw(&self, key: Id, value: Bytes) -> Result<bool, NodeError> {
        self.request(|r| Command::Node(dispatch::Command::Withdraw(key, value, r)))
            .await
    }

    /// Publishes this node's network hints (its prefix and `routers`).
    pub async fn publish_hints(&self, routers: Vec<Router>) -> Result<(), NodeError> {
        self.request(|r| Command::Node(dispatch::Command::PublishHints(routers, r)))
            .await
    }

    /// The live level-0 node closest to `key` (possibly this node), found
    /// by a walk toward it: every node that asks converges on the same one.
    pub async fn find_closest(&self, key: Id) -> Result<Contact, NodeError> {
        self.ask(|reply| dispatch::Command::FindClosest(key, reply))
            .await
    }

    /// Finds up to `count` nodes of this node's cluster at `level` near `target`.
    pub async fn find_nodes(
        &self,
        level: Level,
        count: usize,
        target: IpAddr,
        services: Services,
    ) -> Result<NodesResult, NodeError> {
        self.ask(|reply| dispatch::Command::FindNodes {
            level,
            count,
            target,
            services,
            reply,
        })
        .await
    }

    /// A snapshot of the node's state and counters.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        self.request(Command::Status).await
    }

    /// The contacts of the node's routing table at `level`.
    pub async fn contacts(&self, level: Level) -> Result<Vec<Contact>, NodeError> {
        self.request(|r| Command::Node(dispatch::Command::Contacts(level, r)))
            .await
    }

    /// Asks the node task to stop; operations still running are answered
    /// with [`NodeError::Stopped`].
    pub async fn shutdown(&self) {
        // An error means the task already stopped, which is what was asked.
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

/// A node task and the handle to talk to it.
#[derive(Debug)]
pub struct RunningNode {
    /// The handle; clone it freely.
    pub handle: NodeHandle,
    task: JoinHandle<()>,
}

impl RunningNode {
    /// Stops the node and waits until its task (and socket) is gone.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
        if let Err(e) = self.task.await {
            warn!(error = %e, "node task ended abnormally");
        }
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Binds the RPC UDP socket at `addr` with the given kernel buffer sizes
/// (0 keeps the default); an IPv6 socket is IPv6-only.
pub fn bind_udp(
    addr: SocketAddr,
    recv_buffer_bytes: usize,
    send_buffer_bytes: usize,
) -> Result<std::net::UdpSocket, BindError> {
    bind_udp_for("RPC UDP socket", addr, recv_buffer_bytes, send_buffer_bytes)
}

/// [`bind_udp`] for the socket `what` names in errors and logs.
pub fn bind_udp_for(
    what: &'static str,
    addr: SocketAddr,
    recv_buffer_bytes: usize,
    send_buffer_bytes: usize,
) -> Result<std::net::UdpSocket, BindError> {
    let err = |source| BindError { what, addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    // Buffer sizes are a request: the kernel caps them (net.core.rmem_max),
    // and a refusal is not worth failing the node for.
    if recv_buffer_bytes > 0
        && let Err(e) = socket.set_recv_buffer_size(recv_buffer_bytes)
    {
        warn!(%addr, error = %e, "cannot set the receive buffer size");
    }
    if send_buffer_bytes > 0
        && let Err(e) = socket.set_send_buffer_size(send_buffer_bytes)
    {
        warn!(%addr, error = %e, "cannot set the send buffer size");
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    debug!(
        %addr,
        what,
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "UDP socket bound"
    );
    Ok(socket.into())
}

/// Binds the RPC socket and starts the node task on the current tokio runtime.
pub fn spawn(options: NodeOptions) -> Result<RunningNode, BindError> {
    let std_socket = bind_udp(
        options.rpc_addr,
        options.recv_buffer_bytes,
        options.send_buffer_bytes,
    )?;
    spawn_on_socket(options.core, std_socket, options.command_queue)
}

/// Starts the node task on an already bound, non-blocking UDP socket.
pub fn spawn_on_socket(
    core: Config,
    std_socket: std::net::UdpSocket,
    command_queue: usize,
) -> Result<RunningNode, BindError> {
    spawn_with_dns(core, std_socket, command_queue, None)
}

/// [`spawn_on_socket`], with the DNS server on `dns`'s sockets answered
/// by the same task (it reads the node's contacts and clusters).
pub fn spawn_with_dns(
    core: Config,
    std_socket: std::net::UdpSocket,
    command_queue: usize,
    dns: Option<DnsService>,
) -> Result<RunningNode, BindError> {
    let fallback: SocketAddr = ([0, 0, 0, 0], 0).into();
    let addr = std_socket.local_addr().map_err(|source| BindError {
        what: "RPC UDP socket",
        addr: fallback,
        source,
    })?;
    let socket = UdpSocket::from_std(std_socket).map_err(|source| BindError {
        what: "RPC UDP socket",
        addr,
        source,
    })?;
    let epoch = TokioInstant::now();
    let seed = core.seed;
    let node = Node::new(core, addr, CoreInstant::ZERO);
    let id = node.id();
    info!(%addr, id = %id, seed, "node started (replay with this seed)");
    let levels = node.levels().len();
    let (dns, inputs) = match dns {
        Some(service) => {
            let dns_addr = service.addr();
            let (state, inputs) = dns::start(service, levels)?;
            info!(dns = %dns_addr, "DNS server listening (UDP and TCP)");
            (Some(state), Some(inputs))
        }
        None => (None, None),
    };
    let (tx, rx) = mpsc::channel(command_queue.max(1));
    let driver = Driver {
        dns,
        node,
        socket,
        epoch,
        out: Vec::with_capacity(2048),
        dispatch: Dispatch::default(),
        counters: status::AdapterCounters::default(),
        seed,
    };
    let task = tokio::spawn(driver.run(rx, inputs));
    Ok(RunningNode {
        handle: NodeHandle {
            commands: tx,
            addr,
            id,
            seed,
        },
        task,
    })
}

struct Driver {
    node: Node,
    dns: Option<DnsState>,
    socket: UdpSocket,
    epoch: TokioInstant,
    out: Vec<u8>,
    dispatch: Dispatch<Oneshot>,
    counters: status::AdapterCounters,
    seed: u64,
}

impl Driver {
    fn now(&self) -> CoreInstant {
        CoreInstant::from_duration(self.epoch.elapsed())
    }

    fn to_tokio(&self, t: Option<CoreInstant>) -> TokioInstant {
        // No deadline, or one too far to represent: a day is as good as never,
        // the loop re-arms after every input anyway.
        let far = TokioInstant::now() + Duration::from_secs(86_400);
        t.and_then(|t| self.epoch.checked_add(t.since_epoch()))
            .map_or(far, |t| t.min(far))
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, dns: Option<DnsInputs>) {
        let mut buf = vec![0u8; RECV_BUFFER];
        let (mut tcp_queries, mut probe_results) = match dns {
            Some(d) => (Some(d.tcp), Some(d.probes)),
            None => (None, None),
        };
        let sleep = tokio::time::sleep_until(self.to_tokio(None));
        tokio::pin!(sleep);
        let mut armed: Option<Option<CoreInstant>> = None;
        loop {
            let dns_next = self.dns.as_ref().and_then(|d| d.server.poll_timeout());
            let next = match (self.node.poll_timeout(), dns_next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if armed != Some(next) {
                sleep.as_mut().reset(self.to_tokio(next));
                armed = Some(next);
            }
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown) | None => break,
                    Some(cmd) => self.command(cmd),
                },
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let now = self.now();
                        self.counters.datagrams_in += 1;
                        self.node.handle_datagram(now, from, &buf[..n]);
                    }
                    Err(e) => {
                        // ICMP errors surface here on some platforms; the
                        // core notices the silence through its own timeouts.
                        self.counters.recv_errors += 1;
                        debug!(error = %e, "recv_from failed");
                    }
                },
                r = dns_readable(self.dns.as_ref()) => match r {
                    Ok(()) => self.dns_udp().await,
                    Err(e) => debug!(error = %e, "DNS socket failed"),
                },
                q = next_of(tcp_queries.as_mut()) => match q {
                    Some(q) => self.dns_tcp(q),
                    None => tcp_queries = None,
                },
                p = next_of(probe_results.as_mut()) => match p {
                    Some((target, rtt, routers)) => self.probe_done(target, rtt, &routers),
                    None => probe_results = None,
                },
                () = &mut sleep => {
                    let now = self.now();
                    self.counters.timer_wakeups += 1;
                    self.node.handle_timeout(now);
                    if let Some(d) = self.dns.as_mut() {
                        d.server.handle_timeout(now, &self.node);
                    }
                    // The same deadline may come back; force a re-arm.
                    armed = None;
                }
            }
            self.drain().await;
            self.dns_after().await;
            // Datagrams already queued in the kernel are taken without going
            // back through select!: a burst costs one wake-up, not one each.
            for _ in 0..RECV_BATCH {
                match self.socket.try_recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let now = self.now();
                        self.counters.datagrams_in += 1;
                        self.node.handle_datagram(now, from, &buf[..n]);
                        self.drain().await;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.counters.recv_errors += 1;
                        debug!(error = %e, "try_recv_from failed");
                        break;
                    }
                }
            }
            // Replies in that burst may have finished hint lookups that
            // held queries wait for.
            self.dns_after().await;
        }
        let stopped = self.dispatch.cancel_all();
        drop(tcp_queries);
        info!(addr = %self.node.contact().addr, operations_cancelled = stopped, "node stopped");
    }

    /// Answers the DNS datagrams queued on the socket, taken and answered
    /// in batches (`recvmmsg`, `sendmmsg`), each response written straight
    /// into its send slot; at most [`RECV_BATCH`] batches per wake-up.
    async fn dns_udp(&mut self) {
        let Some(d) = self.dns.as_mut() else { return };
        for _ in 0..RECV_BATCH {
            let got = d.udp.try_io(Interest::READABLE, || {
                RECV_HEADERS.with_borrow_mut(|h| d.rx.recv(&d.udp, h))
            });
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "DNS recvmmsg failed");
                    break;
                }
            };
            let now = CoreInstant::from_duration(self.epoch.elapsed());
            for i in 0..n {
                let Some((from, bytes)) = d.rx.get(i) else {
                    continue;
                };
                if d.tx.is_full() {
                    flush_dns(&d.udp, &mut d.tx).await;
                }
                let Some(slot) = d.tx.slot() else { continue };
                let h =
                    d.server
                        .handle_query(now, &self.node, from, Transport::Udp, 0, bytes, slot);
                if h == Handled::Reply {
                    let size = slot.len();
                    d.tx.commit(from, size);
                }
            }
            flush_dns(&d.udp, &mut d.tx).await;
            if n < BATCH {
                break;
            }
        }
    }

    fn dns_tcp(&mut self, q: TcpQuery) {
        let now = self.now();
        let Some(d) = self.dns.as_mut() else {
            let _ = q.reply.send(None);
            return;
        };
        d.next_token += 1;
        let token = d.next_token;
        match d.server.handle_query(
            now,
            &self.node,
            q.from,
            Transport::Tcp,
            token,
            &q.bytes,
            &mut d.out,
        ) {
            Handled::Reply => {
                let _ = q.reply.send(Some(d.out.clone()));
            }
            Handled::Held => {
                d.tcp_waiting.insert(token, q.reply);
            }
            Handled::Nothing => {
                let _ = q.reply.send(None);
            }
        }
    }

    fn probe_done(&mut self, target: IpAddr, rtt: Option<Duration>, routers: &[Router]) {
        let now = self.now();
        if let Some(d) = self.dns.as_mut() {
            d.probes_in_flight = d.probes_in_flight.saturating_sub(1);
            d.server
                .handle_probe_result(now, &self.node, target, rtt, routers);
        }
    }

    /// After every input: the DNS server's probes and hint lookups start,
    /// and the answers to held queries go out.
    async fn dns_after(&mut self) {
        let now = self.now();
        let Some(d) = self.dns.as_mut() else { return };
        d.start_probes();
        loop {
            let Some(d) = self.dns.as_mut() else { return };
            let mut started = false;
            while let Some(l) = d.server.poll_lookup() {
                match self.node.find_hinted(
                    now,
                    l.level,
                    l.count,
                    l.target,
                    &l.routers,
                    Services::NONE,
                ) {
                    Ok(op) => {
                        d.lookups.insert(op, l.target);
                        started = true;
                    }
                    Err(_) => d
                        .server
                        .handle_lookup_result(now, &self.node, l.target, Vec::new()),
                }
            }
            while let Some(c) = d.server.poll_check() {
                match self.node.check_live(now, c) {
                    Ok(op) => {
                        d.checks.insert(op, c);
                        started = true;
                    }
                    Err(_) => d.server.handle_check_result(now, &self.node, c, false),
                }
            }
            if !started {
                break;
            }
            // The first datagrams go out, and a lookup the node could
            // answer alone finishes (asking for checks, taken above on the
            // next turn), releasing held queries before their answers are
            // sent below.
            self.drain().await;
        }
        let Some(d) = self.dns.as_mut() else { return };
        let mut queued = false;
        while let Some(a) = d.server.poll_answer() {
            match a.transport {
                Transport::Udp => {
                    if d.tx.is_full() {
                        flush_dns(&d.udp, &mut d.tx).await;
                    }
                    if let Some(slot) = d.tx.slot() {
                        slot.clear();
                        slot.extend_from_slice(&a.bytes);
                        d.tx.commit(a.to, a.bytes.len());
                        queued = true;
                    }
                }
                Transport::Tcp => {
                    if let Some(reply) = d.tcp_waiting.remove(&a.token) {
                        let _ = reply.send(Some(a.bytes));
                    }
                }
            }
        }
        if queued {
            flush_dns(&d.udp, &mut d.tx).await;
        }
    }

    /// Every transmit, then every event (the core's drive contract).
    async fn drain(&mut self) {
        while let Some(t) = self.node.poll_transmit(&mut self.out) {
            match self
                .socket
                .send_to(&self.out[..t.size], t.destination)
                .await
            {
                Ok(_) => self.counters.datagrams_out += 1,
                Err(e) => {
                    self.counters.send_errors += 1;
                    debug!(to = %t.destination, error = %e, "send_to failed");
                }
            }
        }
        while let Some(event) = self.node.poll_event() {
            self.event(event);
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Node(cmd) => self.dispatch.command(&mut self.node, now, cmd),
            Command::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
            // Handled by the loop.
            Command::Shutdown => {}
        }
    }

    fn event(&mut self, event: Event) {
        if let Event::HintsFound { op, hints } = &event
            && let Some(d) = self.dns.as_mut()
            && let Some(target) = d.lookups.remove(op)
        {
            let now = CoreInstant::from_duration(self.epoch.elapsed());
            d.server
                .handle_lookup_result(now, &self.node, target, hints.clone());
            return;
        }
        if let Event::Checked { op, contact, alive } = &event
            && let Some(d) = self.dns.as_mut()
            && d.checks.remove(op).is_some()
        {
            let now = CoreInstant::from_duration(self.epoch.elapsed());
            d.server
                .handle_check_result(now, &self.node, *contact, *alive);
            return;
        }
        let Some(event) = self.dispatch.event(event) else {
            return;
        };
        match event {
            Event::ClusterChanged { .. } => dispatch::log_event(&event),
            // Only commands start operations here, and each has a waiter
            // until its event comes.
            _ if dispatch::op_of(&event).is_some() => {}
            other => {
                self.counters.other_events += 1;
                dispatch::log_event(&other);
            }
        }
    }

    fn status(&self, now: CoreInstant) -> NodeStatus {
        let mut s = status::snapshot(
            &self.node,
            now,
            self.seed,
            self.counters,
            self.dispatch.waiting(),
        );
        s.dns = self
            .dns
            .as_ref()
            .map(|d| status::dns_counters(&d.server.stats()));
        s
    }
}
