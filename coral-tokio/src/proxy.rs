//! The HTTP proxy's sockets: a TCP listener for clients, HTTP/1.1 clients
//! for origins and peers, DNS resolution of origins, and the timers.
//!
//! Every decision is made by [`coral_core::http::Proxy`], which this module
//! holds behind one mutex shared by the connection tasks: it hands the core
//! each request head, carries out the effects the core asks for
//! ([`Output`]: DSHT gets and puts through the node task, claims, upstream
//! requests), and feeds the core the upstream's head and body bytes. Client
//! tasks read their response from the core ([`Read`]) and wait on a
//! per-fetch [`Notify`] while a fetch makes progress, so a body streams to
//! every waiting client and into the cache at once (cut-through).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use coral_core::Levels;
use coral_core::http::parse::{self, ChunkedDecoder, Framing, ResponseHead};
use coral_core::http::proxy::{CONTINUE, ClaimReply};
use coral_core::http::{
    Answer, DiskOp, FetchId, HttpConfig, Output, Proxy, ReaderId, Upstream, UpstreamError,
};
use coral_core::time::Instant as CoreInstant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use crate::proxy_shared::{
    BUSY, BodyReader, PerClient, ResponseWriter, Step, allowed_origin_addr, take_response_head,
    unix_now, upload as upload_pieces,
};
use crate::runtime::{BindError, NodeHandle};

pub mod disk;
pub mod pool;

use disk::{DiskCache, DiskOptions};
use pool::{Pool, PoolOptions};

/// Socket limits and timeouts of the proxy, each with the reason for its default.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The core's configuration.
    pub http: HttpConfig,
    /// Where to listen (loopback by default; the port is the network-wide proxy port).
    pub listen: SocketAddr,
    /// Most client connections at once; more get a quick 503 (a volunteer
    /// box must shed load, not queue it).
    pub max_connections: usize,
    /// Most connections at once from one client IP address; more get 503.
    pub max_connections_per_client: usize,
    /// Time for a client to send a whole request head (slowloris defence).
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Time to connect upstream (open question 15: fall back after 2 s).
    pub connect_timeout: Duration,
    /// Time from sending a request upstream to its first byte.
    pub first_byte_timeout: Duration,
    /// Time a client may take to accept a write, and a body may stall.
    pub io_timeout: Duration,
    /// Time a DSHT lookup may take before the fetch goes on without it.
    pub lookup_timeout: Duration,
    /// The disk tier, if any (`--data-dir`): objects kept across restarts.
    pub disk: Option<DiskOptions>,
    /// Idle keep-alive connections kept to origins and peers.
    pub pool: PoolOptions,
}

impl ProxyOptions {
    /// Defaults for a proxy listening on `listen`.
    pub fn new(listen: SocketAddr, mut http: HttpConfig) -> Self {
        http.peer_port = listen.port();
        Self {
            http,
            listen,
            max_connections: 4096,
            // Enough for a browser's parallel connections behind a NAT of
            // a few hosts; one client cannot take the whole budget.
            max_connections_per_client: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(15),
            io_timeout: Duration::from_secs(30),
            lookup_timeout: Duration::from_secs(3),
            disk: None,
            pool: PoolOptions::default(),
        }
    }
}

/// State shared by the proxy's tasks.
pub struct Shared {
    core: Mutex<Proxy>,
    notify: Mutex<HashMap<FetchId, Arc<Notify>>>,
    node: NodeHandle,
    opts: ProxyOptions,
    epoch: std::time::Instant,
    connections: Arc<Semaphore>,
    /// Open connections per client address; an entry lives only while its
    /// count is above zero, so the map holds at most `max_connections`.
    per_client: Arc<Mutex<PerClient>>,
    /// The disk tier, when configured and its directory could be opened.
    disk: Option<Arc<DiskCache>>,
    /// Idle upstream connections.
    pool: Pool,
}

/// One client connection counted against its address's limit, released on drop.
struct ClientSlot {
    counts: Arc<Mutex<PerClient>>,
    ip: IpAddr,
}

impl ClientSlot {
    /// Counts a connection from `ip`, unless it already has `limit` open.
    fn take(counts: &Arc<Mutex<PerClient>>, ip: IpAddr, limit: usize) -> Option<Self> {
        counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(ip, limit)
            .then(|| Self {
                counts: Arc::clone(counts),
                ip,
            })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release(self.ip);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("listen", &self.opts.listen)
            .finish()
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct RunningProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state, for metrics.
    pub shared: Arc<Shared>,
    /// The accept loop.
    pub task: JoinHandle<()>,
}

impl Shared {
    fn now(&self) -> CoreInstant {
        CoreInstant::from_duration(self.epoch.elapsed())
    }

    fn core(&self) -> MutexGuard<'_, Proxy> {
        // A panic while holding the lock would be a bug; the state is still usable.
        self.core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notifier(&self, f: FetchId) -> Arc<Notify> {
        let mut m = self
            .notify
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(m.entry(f).or_default())
    }

    /// Wakes the readers of `f`; forgets its notifier once the core has
    /// let go of the fetch (no reader can wait on it any more), so the map
    /// holds only fetches in flight.
    fn wake(&self, f: FetchId) {
        let gone = !self.core().has_fetch(f);
        let mut m = self
            .notify
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = if gone {
            m.remove(&f)
        } else {
            m.get(&f).cloned()
        };
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    /// The core's counters.
    pub fn stats(&self) -> coral_core::http::ProxyStats {
        self.core().stats()
    }

    /// Fetches whose readers have a wake-up handle here (in flight, or
    /// with readers still writing); zero when the proxy is idle.
    pub fn notifiers(&self) -> usize {
        self.notify
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// The upstream connection pool's counters.
    pub fn pool_stats(&self) -> pool::PoolStats {
        self.pool.stats()
    }

    /// The disk tier's counters, when there is one.
    pub fn disk_stats(&self) -> Option<disk::DiskStats> {
        self.disk.as_ref().map(|d| d.stats())
    }

    /// Prometheus text for the proxy's counters: the core's, as coral-mio
    /// renders them, then the upstream pool's, the notifiers' and the disk
    /// tier's.
    pub fn metrics(&self) -> String {
        let mut o = crate::proxy_shared::metrics(&self.core());
        let pool = self.pool.stats();
        for (name, v) in [
            ("upstream_reused", pool.reused),
            ("upstream_stale", pool.stale),
        ] {
            o.push_str(&format!(
                "# TYPE coral_http_{name}_total counter\ncoral_http_{name}_total {v}\n"
            ));
        }
        for (name, v) in [
            ("fetch_notifiers", self.notifiers() as u64),
            ("upstream_idle_connections", pool.idle),
        ] {
            o.push_str(&format!(
                "# TYPE coral_http_{name} gauge\ncoral_http_{name} {v}\n"
            ));
        }
        if let Some(d) = self.disk_stats() {
            for (name, v) in [
                ("disk_objects", d.objects),
                ("disk_bytes", d.bytes),
                ("disk_budget_bytes", d.budget),
            ] {
                o.push_str(&format!(
                    "# TYPE coral_http_{name} gauge\ncoral_http_{name} {v}\n"
                ));
            }
            for (name, v) in [
                ("disk_restored", d.restored),
                ("disk_hits", d.hits),
                ("disk_misses", d.misses),
                ("disk_writes", d.writes),
                ("disk_writes_dropped", d.writes_dropped),
                ("disk_evictions", d.evictions),
                ("disk_discarded", d.discarded),
                ("disk_errors", d.errors),
            ] {
                o.push_str(&format!(
                    "# TYPE coral_http_{name}_total counter\ncoral_http_{name}_total {v}\n"
                ));
            }
        }
        o
    }
}

/// Binds the proxy's listener and starts serving until `shutdown` turns true.
pub async fn start(
    opts: ProxyOptions,
    node: NodeHandle,
    shutdown: watch::Receiver<bool>,
) -> Result<RunningProxy, BindError> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| BindError {
            what: "HTTP proxy TCP listener",
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| BindError {
        what: "HTTP proxy TCP listener",
        addr: opts.listen,
        source,
    })?;
    let disk = match &opts.disk {
        Some(d) => match DiskCache::open(d.clone()).await {
            Ok(d) => Some(d),
            Err(e) => {
                // The tier is optional: serve from memory rather than not at all.
                warn!(dir = %d.dir.display(), error = %e, "HTTP disk cache unusable; memory only");
                None
            }
        },
        None => None,
    };
    let mut http = opts.http.clone();
    http.peer_port = addr.port();
    http.disk_tier = disk.is_some();
    let core = Proxy::new(http, addr, node.id());
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        notify: Mutex::new(HashMap::new()),
        node,
        connections: Arc::new(Semaphore::new(opts.max_connections)),
        per_client: Arc::default(),
        disk,
        pool: Pool::new(opts.pool),
        opts,
        epoch: std::time::Instant::now(),
    });
    let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), shutdown));
    Ok(RunningProxy { addr, shared, task })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (mut stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = tick.tick() => {
                let now = shared.now();
                shared.core().handle_timeout(now);
                shared.pool.sweep();
                continue;
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { return; }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = ClientSlot::take(
            &shared.per_client,
            peer.ip(),
            shared.opts.max_connections_per_client,
        );
        let permit = slot
            .as_ref()
            .and_then(|_| Arc::clone(&shared.connections).try_acquire_owned().ok());
        let (Some(slot), Some(permit)) = (slot, permit) else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
            });
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = client(stream, &shared).await {
                debug!(%peer, error = %e, "proxy connection ended with an error");
            }
            drop(permit);
            drop(slot);
        });
    }
}

/// Carries out every effect the core has queued, its disk tier's work
/// included (a disk miss queues a lookup).
fn drain(shared: &Arc<Shared>) {
    loop {
        drain_outputs(shared);
        if !drain_disk(shared) {
            return;
        }
    }
}

fn drain_outputs(shared: &Arc<Shared>) {
    loop {
        let Some(out) = shared.core().poll_output() else {
            return;
        };
        let s = Arc::clone(shared);
        match out {
            Output::Lookup { fetch, key } => {
                tokio::spawn(async move {
                    let t = s.opts.lookup_timeout;
                    // The claim's arbiter is the node closest to the key:
                    // the walk finds the one every proxy converges on, and
                    // the level-0 contacts stand in if it does not serve
                    // HTTP or the walk fails.
                    let (got, contacts, closest) = tokio::join!(
                        tokio::time::timeout(t, s.node.get(key, Levels::ALL)),
                        tokio::time::timeout(t, s.node.contacts(0)),
                        tokio::time::timeout(t, s.node.find_closest(key)),
                    );
                    let (values, level) = match got {
                        Ok(Ok(g)) => (g.values, g.level),
                        _ => (Vec::new(), None),
                    };
                    let mut contacts = contacts.ok().and_then(Result::ok).unwrap_or_default();
                    contacts.extend(closest.ok().and_then(Result::ok));
                    s.core().handle_lookup(fetch, &values, level, &contacts);
                    drain(&s);
                });
            }
            Output::Claim {
                fetch,
                arbiter,
                request,
            } => {
                tokio::spawn(async move {
                    let reply = match exchange_head(&s, arbiter, &request).await {
                        Ok((head, rest, stream)) => {
                            let framing = parse::response_framing(false, &head);
                            if rest.is_empty()
                                && matches!(framing, Ok(Framing::Empty | Framing::Length(0)))
                                && pool::keeps_alive(&head)
                            {
                                s.pool.put(arbiter, stream);
                            }
                            Proxy::claim_reply(&head)
                        }
                        Err(_) => ClaimReply::Failed,
                    };
                    s.core().handle_claim_reply(fetch, reply);
                    drain(&s);
                });
            }
            Output::Fetch {
                fetch,
                upstream,
                request,
            } => {
                tokio::spawn(async move {
                    let r = upstream_fetch(&s, fetch, upstream, &request).await;
                    let now = s.now();
                    s.core().handle_upstream_end(now, fetch, r);
                    s.wake(fetch);
                    drain(&s);
                });
            }
            Output::Put { key, value, ttl } => {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        s.node.put(key, value, ttl, Levels::ALL),
                    )
                    .await;
                });
            }
            Output::Publish { key, value, ttl } => {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        s.node.publish(key, value, ttl, Levels::ALL),
                    )
                    .await;
                });
            }
            Output::Withdraw { key, value } => {
                tokio::spawn(async move {
                    let _ = s.node.withdraw(key, value).await;
                });
            }
        }
    }
}

/// Carries out the disk tier's queued work; returns whether there was any.
fn drain_disk(shared: &Arc<Shared>) -> bool {
    let mut any = false;
    loop {
        let Some(op) = shared.core().poll_disk() else {
            return any;
        };
        any = true;
        let s = Arc::clone(shared);
        match op {
            DiskOp::Read { fetch, url } => match &s.disk {
                Some(d) if d.contains(&url) => {
                    let d = Arc::clone(d);
                    tokio::spawn(async move {
                        let obj = d.read(url, s.now()).await;
                        let now = s.now();
                        s.core().handle_disk_read(now, fetch, obj);
                        s.wake(fetch);
                        drain(&s);
                    });
                }
                _ => {
                    let now = s.now();
                    s.core().handle_disk_read(now, fetch, None);
                }
            },
            DiskOp::Write { url, object } => {
                if let Some(d) = &s.disk {
                    let age = object.age(s.now());
                    d.write(url, object, age);
                }
            }
            DiskOp::Remove { url } => {
                if let Some(d) = &s.disk {
                    d.remove(&url);
                }
            }
        }
    }
}

fn io_err(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Sends `request` to `addr` and reads the response head; returns the
/// head, the body bytes read past it, and the connection. A pooled
/// connection is tried first for an idempotent request; if it fails before
/// a single response byte (the server closed it meanwhile), the request is
/// sent again on a fresh connection.
async fn exchange_head(
    shared: &Shared,
    addr: SocketAddr,
    request: &[u8],
) -> Result<(ResponseHead, BytesMut, TcpStream), UpstreamError> {
    let idempotent = request.starts_with(b"GET ") || request.starts_with(b"HEAD ");
    if idempotent && let Some(s) = shared.pool.take(addr) {
        match send_for_head(shared, s, request).await {
            Ok(x) => return Ok(x),
            Err((_, true)) => shared.pool.count_stale(),
            Err((e, false)) => return Err(e),
        }
    }
    let o = &shared.opts;
    let s = match tokio::time::timeout(o.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return Err(UpstreamError::Connect),
        Err(_) => return Err(UpstreamError::Timeout),
    };
    let _ = s.set_nodelay(true);
    send_for_head(shared, s, request).await.map_err(|(e, _)| e)
}

/// Writes `request` on `s` and reads the response head. An error says
/// whether it came before any response byte (so a retry is safe).
async fn send_for_head(
    shared: &Shared,
    mut s: TcpStream,
    request: &[u8],
) -> Result<(ResponseHead, BytesMut, TcpStream), (UpstreamError, bool)> {
    let o = &shared.opts;
    let limits = o.http.head_limits();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut received = false;
    let fut = async {
        s.write_all(request).await?;
        loop {
            if s.read_buf(&mut buf).await? == 0 {
                return Err(io_err("closed before a head"));
            }
            received = true;
            // Interim 1xx responses (RFC 9110 §15.2) precede the real one.
            while let Some(head) =
                take_response_head(&mut buf, limits).map_err(|_| io_err("bad head"))?
            {
                if !(100..200).contains(&head.status) || head.status == 101 {
                    return Ok((head, buf.split()));
                }
            }
        }
    };
    match tokio::time::timeout(o.first_byte_timeout, fut).await {
        Ok(Ok((h, rest))) => Ok((h, rest, s)),
        Ok(Err(_)) => Err((UpstreamError::Protocol, !received)),
        Err(_) => Err((UpstreamError::Timeout, false)),
    }
}

async fn upstream_fetch(
    s: &Arc<Shared>,
    f: FetchId,
    upstream: Upstream,
    request: &[u8],
) -> Result<(), UpstreamError> {
    let (head, rest, stream, addr) = match upstream {
        Upstream::Origin { host, port } => {
            let addrs: Vec<SocketAddr> = match tokio::time::timeout(
                s.opts.connect_timeout,
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            {
                Ok(Ok(a)) => a.collect(),
                _ => return Err(UpstreamError::Dns),
            };
            let addr = allowed_origin_addr(&s.core(), addrs)?;
            let (h, rest, st) = exchange_head(s, addr, request).await?;
            (h, rest, st, addr)
        }
        Upstream::Peers(peers) => {
            let mut set = JoinSet::new();
            for p in peers {
                let s2 = Arc::clone(s);
                let req = request.to_vec();
                set.spawn(async move { (p, exchange_head(&s2, p, &req).await) });
            }
            let mut won = None;
            while let Some(r) = set.join_next().await {
                if let Ok((p, Ok((h, rest, st)))) = r
                    && Proxy::peer_answer_usable(&h)
                {
                    won = Some((h, rest, st, p));
                    break;
                }
            }
            won.ok_or(UpstreamError::NoPeer)?
        }
    };
    let framing = parse::response_framing(false, &head).map_err(|_| UpstreamError::Protocol)?;
    let body = {
        let now = s.now();
        s.core().handle_upstream_head(now, unix_now(), f, &head)
    };
    s.wake(f);
    drain(s);
    let idle = if body {
        read_body(s, f, framing, rest, stream).await?
    } else if matches!(framing, Framing::Empty | Framing::Length(0)) && rest.is_empty() {
        Some(stream)
    } else {
        None
    };
    if let Some(stream) = idle.filter(|_| pool::keeps_alive(&head)) {
        s.pool.put(addr, stream);
    }
    Ok(())
}

/// Reads a response body into the core; returns the connection when the
/// body ended exactly where the connection may carry another response.
async fn read_body(
    s: &Arc<Shared>,
    f: FetchId,
    framing: Framing,
    mut buf: BytesMut,
    mut stream: TcpStream,
) -> Result<Option<TcpStream>, UpstreamError> {
    let mut body = BodyReader::new(framing);
    let mut pieces = Vec::new();
    loop {
        let done = body.feed(&mut buf, &mut pieces)?;
        if !pieces.is_empty() {
            let wanted = {
                let mut core = s.core();
                for p in pieces.drain(..) {
                    core.handle_upstream_data(f, p);
                }
                core.fetch_wanted(f)
            };
            s.wake(f);
            if !wanted {
                return Err(UpstreamError::Protocol);
            }
        }
        if done {
            // Bytes past the end: the server is not speaking HTTP/1.1 cleanly.
            return Ok(buf.is_empty().then_some(stream));
        }
        buf.reserve(64 * 1024);
        match tokio::time::timeout(s.opts.io_timeout, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return body.at_close().map(|()| None),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(UpstreamError::Protocol),
            Err(_) => return Err(UpstreamError::Timeout),
        }
    }
}

async fn write(stream: &mut TcpStream, timeout: Duration, data: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, stream.write_all(data)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

/// Most pieces given to one `writev`: a chunk's size line, data and CRLF.
const WRITEV_PIECES: usize = 4;

/// Writes `parts` in order with as few system calls as the socket allows
/// (one `writev` for a hit's head and body, or a chunk and its framing,
/// that fit the socket buffer), without copying; empties `parts`.
async fn write_parts(
    stream: &mut TcpStream,
    timeout: Duration,
    parts: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let fut = async {
        let mut i = 0;
        while i < parts.len() {
            let rest = &parts[i..parts.len().min(i + WRITEV_PIECES)];
            let slices: [std::io::IoSlice<'_>; WRITEV_PIECES] = std::array::from_fn(|k| {
                std::io::IoSlice::new(rest.get(k).map_or(&[][..], |b| &b[..]))
            });
            let mut n = stream.write_vectored(&slices[..rest.len()]).await?;
            if n == 0 && rest.iter().any(|b| !b.is_empty()) {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while i < parts.len() && n >= parts[i].len() {
                n -= parts[i].len();
                i += 1;
            }
            if n > 0 {
                bytes::Buf::advance(&mut parts[i], n);
            }
        }
        parts.clear();
        Ok(())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

async fn client(mut stream: TcpStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    let limits = shared.opts.http.head_limits();
    let io = shared.opts.io_timeout;
    let mut buf = BytesMut::with_capacity(4096);
    let mut first = true;
    loop {
        // Slowloris: one deadline for the whole head; idle keep-alive: a longer one before its first byte.
        let mut deadline = tokio::time::Instant::now()
            + if first || !buf.is_empty() {
                shared.opts.header_timeout
            } else {
                shared.opts.idle_timeout
            };
        first = false;
        let (req, used) = loop {
            match parse::parse_request(&buf, limits) {
                Ok(Some(x)) => break x,
                Ok(None) => {}
                Err(e) => {
                    let msg = format!(
                        "HTTP/1.1 {} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        e.status(),
                        crate::httpd::reason(e.status())
                    );
                    let _ = write(&mut stream, io, msg.as_bytes()).await;
                    return Ok(());
                }
            }
            let was_empty = buf.is_empty();
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {
                    if was_empty {
                        deadline =
                            deadline.min(tokio::time::Instant::now() + shared.opts.header_timeout);
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    if !buf.is_empty() {
                        let _ = write(&mut stream, io, b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    }
                    return Ok(());
                }
            }
        };
        let _ = buf.split_to(used);
        let answer = {
            let now = shared.now();
            shared.core().handle_request(now, &req)
        };
        drain(shared);
        let keep = match answer {
            Answer::Respond {
                head,
                body,
                keep_alive,
            } => {
                let mut parts = vec![Bytes::from(head), body];
                write_parts(&mut stream, io, &mut parts).await?;
                keep_alive
            }
            Answer::Stream { fetch, reader } => {
                stream_fetch(&mut stream, shared, fetch, reader).await?
            }
            Answer::Upload {
                fetch,
                reader,
                framing,
                expect_continue,
            } => {
                let mut r = Ok(());
                if expect_continue {
                    r = write(&mut stream, io, CONTINUE).await;
                }
                if r.is_ok() {
                    r = upload(&mut stream, &mut buf, shared, fetch, framing).await;
                }
                drain(shared);
                match r {
                    Ok(()) => stream_fetch(&mut stream, shared, fetch, reader).await?,
                    Err(e) => {
                        shared.core().close_reader(fetch, reader);
                        return Err(e);
                    }
                }
            }
        };
        if !keep {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}

/// Reads a pass-through request's body from the client (`buf` holds what
/// was read past the head) and hands it to the core. Stops early, leaving
/// the connection unusable, when the core wants no more (too large).
async fn upload(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shared: &Arc<Shared>,
    f: FetchId,
    framing: Framing,
) -> std::io::Result<()> {
    let io = shared.opts.io_timeout;
    let mut body = BodyReader::new(framing);
    let mut pieces = Vec::new();
    loop {
        let done = body
            .feed(buf, &mut pieces)
            .map_err(|_| io_err("bad chunked request body"))?;
        let wanted = upload_pieces(&mut shared.core(), f, pieces.drain(..), done);
        if done || !wanted {
            return Ok(());
        }
        buf.reserve(64 * 1024);
        match tokio::time::timeout(io, stream.read_buf(buf)).await {
            Ok(Ok(0)) => return Err(io_err("closed during the request body")),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io_err("request body timed out")),
        }
    }
}

/// Writes what the core has for reader `r` of fetch `f` until its end;
/// whether the connection may carry another request.
async fn stream_fetch(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    f: FetchId,
    r: ReaderId,
) -> std::io::Result<bool> {
    let res = stream_reader(stream, shared, f, r).await;
    if res.is_err() {
        shared.core().close_reader(f, r);
    }
    // This reader may have been the fetch's last: drop its notifier then.
    shared.wake(f);
    res
}

async fn stream_reader(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    f: FetchId,
    r: ReaderId,
) -> std::io::Result<bool> {
    let io = shared.opts.io_timeout;
    let notify = shared.notifier(f);
    let mut writer = ResponseWriter::default();
    let mut out = Vec::new();
    // Long enough for a lookup, a claim and an origin's first byte.
    let stall = shared.opts.first_byte_timeout
        + shared.opts.lookup_timeout
        + shared.opts.connect_timeout * 2;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let step = {
            let now = shared.now();
            shared.core().read(now, f, r, 256 * 1024)
        };
        let next = writer.step(step, |b| out.push(b));
        write_parts(stream, io, &mut out).await?;
        match next {
            Step::More => {}
            Step::Pending => {
                if tokio::time::timeout(stall, notified).await.is_err() {
                    shared.core().close_reader(f, r);
                    return Ok(false);
                }
            }
            Step::Done { keep_alive } => return Ok(keep_alive),
        }
    }
}

/// Fetches `path` through the proxy at `proxy` with `host` as the Host
/// header: status and body (a small client for the testnet and tests).
pub async fn client_get(
    proxy: SocketAddr,
    host: &str,
    path: &str,
    extra: &str,
) -> std::io::Result<(u16, Vec<(String, String)>, Bytes)> {
    let mut s = TcpStream::connect(proxy).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    (&mut s).take(64 << 20).read_to_end(&mut buf).await?;
    let limits = HttpConfig::default().head_limits();
    let Ok(Some((head, n))) = parse::parse_response(&buf, limits) else {
        return Err(io_err("not HTTP"));
    };
    let headers = head
        .headers
        .0
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let mut body = BytesMut::from(&buf[n..]);
    let body = if head
        .headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        let mut pieces = Vec::new();
        ChunkedDecoder::default()
            .decode(&mut body, &mut pieces)
            .map_err(|_| io_err("bad chunk"))?;
        Bytes::from(pieces.concat())
    } else {
        body.freeze()
    };
    Ok((head.status, headers, body))
}
