//! The DNS server's sockets (issue 6): UDP queries go to the node task,
//! which owns the `Node` and the core's [`DnsServer`] and answers them in
//! its own loop; TCP connections are served by their own tasks, which pass
//! each length-prefixed query to the node task and write its answer back;
//! resolver probes are TCP connects timed here, with a trace of the last
//! hops toward the resolver made at the same time ([`probe_and_trace`]).
//!
//! Every decision (what to answer, when to probe, rate limits) is the
//! core's; this file moves bytes, bounds connections and keeps time.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use coral_core::OpId;
use coral_core::contact::Contact;
use coral_core::dns::{DnsConfig, DnsServer};
use coral_core::dsht::hints::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;

use crate::batch_udp::{RecvBatch, SendQueue};
use crate::runtime::BindError;
use crate::trace::{TraceOptions, Tracer};

/// How the adapter runs the DNS server; the answers are [`DnsConfig`]'s.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// The core's redirector configuration.
    pub server: DnsConfig,
    /// Where UDP and TCP listen (port 53 in production).
    pub addr: SocketAddr,
    /// Most TCP connections served at once; more wait in the kernel's
    /// backlog.
    pub tcp_max_connections: usize,
    /// A TCP connection idle this long (no complete query) is closed.
    pub tcp_idle_timeout: Duration,
    /// How long a resolver probe waits for anything to come back (open
    /// question 13: 500 ms); silence counts as unmeasurable.
    pub probe_timeout: Duration,
    /// Most probes in flight at once.
    pub max_probes_in_flight: usize,
    /// Whether a probe also traces the last hops toward the resolver, for
    /// the router hints (spec §5). Off, only its /24's hints apply.
    pub trace: bool,
    /// Kernel receive buffer of the UDP socket, bytes (0: the OS default):
    /// a burst of queries waits there while the node task works.
    pub recv_buffer_bytes: usize,
}

impl DnsOptions {
    /// The defaults at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            server: DnsConfig::default(),
            addr,
            tcp_max_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
            probe_timeout: Duration::from_millis(500),
            max_probes_in_flight: 32,
            trace: true,
            // As the RPC socket's (coral.example.toml's socket section).
            recv_buffer_bytes: 4 << 20,
        }
    }
}

/// A query that came over TCP, for the node task to answer.
#[derive(Debug)]
pub(crate) struct TcpQuery {
    pub(crate) from: SocketAddr,
    pub(crate) bytes: Vec<u8>,
    /// The answer, or `None` when there is none to send.
    pub(crate) reply: oneshot::Sender<Option<Vec<u8>>>,
}

/// A probe's outcome, for the node task.
pub(crate) type ProbeResult = (IpAddr, Option<Duration>, Vec<Router>);

/// The bound sockets and the redirector, ready for the node task.
#[derive(Debug)]
pub struct DnsService {
    pub(crate) options: DnsOptions,
    pub(crate) udp: std::net::UdpSocket,
    pub(crate) tcp: std::net::TcpListener,
}

impl DnsService {
    /// Binds UDP and TCP at `options.addr` (port 0 picks one port for
    /// both).
    pub fn bind(options: DnsOptions) -> Result<Self, BindError> {
        let addr = options.addr;
        let err = |what, source| BindError { what, addr, source };
        let tcp = std::net::TcpListener::bind(addr).map_err(|e| err("DNS TCP listener", e))?;
        let addr = tcp.local_addr().map_err(|e| err("DNS TCP listener", e))?;
        let udp =
            crate::runtime::bind_udp_for("DNS UDP socket", addr, options.recv_buffer_bytes, 0)?;
        tcp.set_nonblocking(true)
            .map_err(|e| err("DNS TCP listener", e))?;
        Ok(Self {
            options: DnsOptions { addr, ..options },
            udp,
            tcp,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.options.addr
    }

    /// The bound sockets and the options, for a runtime that drives them
    /// itself (coral-mio's loop).
    pub fn into_parts(self) -> (std::net::UdpSocket, std::net::TcpListener, DnsOptions) {
        (self.udp, self.tcp, self.options)
    }
}

/// The node task's part of the DNS server.
#[derive(Debug)]
pub(crate) struct DnsState {
    pub(crate) server: DnsServer,
    pub(crate) udp: UdpSocket,
    pub(crate) out: Vec<u8>,
    /// Batches of queries in and responses out (`recvmmsg`/`sendmmsg`).
    pub(crate) rx: RecvBatch,
    pub(crate) tx: SendQueue,
    pub(crate) probe_timeout: Duration,
    pub(crate) trace: bool,
    pub(crate) max_probes: usize,
    pub(crate) probes_in_flight: usize,
    pub(crate) probe_results: mpsc::Sender<ProbeResult>,
    /// TCP clients whose query is held, by the token given with it.
    pub(crate) tcp_waiting: BTreeMap<u64, oneshot::Sender<Option<Vec<u8>>>>,
    pub(crate) next_token: u64,
    /// Hint lookups running in the node, by operation.
    pub(crate) lookups: BTreeMap<OpId, IpAddr>,
    /// Liveness checks running in the node, by operation.
    pub(crate) checks: BTreeMap<OpId, Contact>,
}

/// The receiving ends the node task's loop waits on.
#[derive(Debug)]
pub(crate) struct DnsInputs {
    pub(crate) tcp: mpsc::Receiver<TcpQuery>,
    pub(crate) probes: mpsc::Receiver<ProbeResult>,
}

/// Starts the TCP server and returns the node task's state and inputs.
pub(crate) fn start(
    service: DnsService,
    levels: usize,
) -> Result<(DnsState, DnsInputs), BindError> {
    let addr = service.options.addr;
    let err = |what, source| BindError { what, addr, source };
    let server = DnsServer::new(service.options.server.clone(), levels).map_err(|e| {
        err(
            "DNS server (configuration)",
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })?;
    let udp = UdpSocket::from_std(service.udp).map_err(|e| err("DNS UDP socket", e))?;
    let tcp = TcpListener::from_std(service.tcp).map_err(|e| err("DNS TCP listener", e))?;
    let (tcp_tx, tcp_rx) = mpsc::channel(service.options.tcp_max_connections.max(1));
    let (probe_tx, probe_rx) = mpsc::channel(service.options.max_probes_in_flight.max(1));
    tokio::spawn(serve_tcp(
        tcp,
        tcp_tx,
        service.options.tcp_max_connections,
        service.options.tcp_idle_timeout,
    ));
    Ok((
        DnsState {
            server,
            udp,
            out: Vec::with_capacity(1500),
            rx: RecvBatch::new(),
            tx: SendQueue::new(),
            probe_timeout: service.options.probe_timeout,
            trace: service.options.trace,
            max_probes: service.options.max_probes_in_flight.max(1),
            probes_in_flight: 0,
            probe_results: probe_tx,
            tcp_waiting: BTreeMap::new(),
            next_token: 0,
            lookups: BTreeMap::new(),
            checks: BTreeMap::new(),
        },
        DnsInputs {
            tcp: tcp_rx,
            probes: probe_rx,
        },
    ))
}

impl DnsState {
    /// Starts the probes the core asks for, up to the in-flight limit.
    pub(crate) fn start_probes(&mut self) {
        while self.probes_in_flight < self.max_probes {
            let Some(target) = self.server.poll_probe() else {
                return;
            };
            self.probes_in_flight += 1;
            let tx = self.probe_results.clone();
            let timeout = self.probe_timeout;
            let trace = self.trace;
            tokio::spawn(async move {
                let (rtt, routers) = if trace {
                    probe_and_trace(target, timeout).await
                } else {
                    (probe(target, timeout).await, Vec::new())
                };
                debug!(%target, ?rtt, hops = routers.len(), "resolver probed");
                let _ = tx.send((target, rtt, routers)).await;
            });
        }
    }
}

/// The RTT to `target`: the time a TCP connect to its port 53 takes to
/// come back, accepted or refused (either is one round trip, and neither
/// needs privileges); `None` when nothing comes back within `timeout`.
pub async fn probe(target: IpAddr, timeout: Duration) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect((target, 53))).await {
        Ok(Ok(_)) => Some(start.elapsed()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Some(start.elapsed()),
        _ => None,
    }
}

/// The RTT to `target` and the last hops on the way to it (spec §5, §6.2),
/// both within `timeout`: a TCP connect to its port 53 ([`probe`]) and a
/// trace ([`Tracer`]) run at once. The RTT is the connect's, else the
/// trace's when the target answered it; the hops are the last
/// [`MAX_ROUTER_HINTS`](coral_core::node::MAX_ROUTER_HINTS) that answered,
/// the nearest the target first.
pub async fn probe_and_trace(target: IpAddr, timeout: Duration) -> (Option<Duration>, Vec<Router>) {
    let opts = TraceOptions {
        timeout,
        ..TraceOptions::default()
    };
    let tracer = Tracer::start(target, opts)
        .and_then(|t| t.with_socket(UdpSocket::from_std))
        .inspect_err(|e| debug!(%target, error = %e, "cannot trace toward a resolver"));
    let Ok(mut t) = tracer else {
        return (probe(target, timeout).await, Vec::new());
    };
    let tcp = probe(target, timeout);
    tokio::pin!(tcp);
    let mut connect: Option<Option<Duration>> = None;
    loop {
        if t.read().is_err() {
            break;
        }
        let deadline = t.deadline(connect.flatten());
        if connect.is_some() && (t.is_complete() || std::time::Instant::now() >= deadline) {
            break;
        }
        tokio::select! {
            r = &mut tcp, if connect.is_none() => connect = Some(r),
            r = t.wait() => if r.is_err() { break },
            () = tokio::time::sleep_until(deadline.into()), if connect.is_some() => {}
        }
    }
    let connect = match connect {
        Some(c) => c,
        None => tcp.await,
    };
    t.finish().probe_result(connect)
}

async fn serve_tcp(
    listener: TcpListener,
    queries: mpsc::Sender<TcpQuery>,
    max_connections: usize,
    idle: Duration,
) {
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        // Take a slot before accepting: over the limit, connections wait
        // in the kernel's backlog instead of costing us memory.
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let (stream, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "DNS TCP accept failed");
                continue;
            }
        };
        let queries = queries.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, from, queries, idle).await {
                debug!(%from, error = %e, "DNS TCP connection ended");
            }
            drop(permit);
        });
    }
}

/// Serves length-prefixed queries on one connection until the client
/// closes it, stays idle for `idle`, or the node stops.
async fn connection(
    mut stream: TcpStream,
    from: SocketAddr,
    queries: mpsc::Sender<TcpQuery>,
    idle: Duration,
) -> io::Result<()> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "idle");
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(idle, stream.read_exact(&mut bytes))
            .await
            .map_err(|_| timed_out())??;
        let (tx, rx) = oneshot::channel();
        let q = TcpQuery {
            from,
            bytes,
            reply: tx,
        };
        if queries.send(q).await.is_err() {
            return Ok(());
        }
        let Ok(answer) = rx.await else {
            return Ok(());
        };
        let Some(answer) = answer else {
            // Nothing to say (a response, a runt): the stream is out of step.
            return Ok(());
        };
        let n = u16::try_from(answer.len()).unwrap_or(u16::MAX);
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&answer[..usize::from(n)]);
        tokio::time::timeout(idle, stream.write_all(&framed))
            .await
            .map_err(|_| timed_out())??;
    }
}
