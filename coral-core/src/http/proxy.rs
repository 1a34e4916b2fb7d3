//! The exchange: every decision the proxy makes about a request (spec §7.1–7.4).
//!
//! For each client request [`Proxy::handle_request`] answers at once with a
//! complete response (an error, a local hit, a claim verdict) or with a
//! reader on a *fetch*: the one upstream transfer of a URL that any number of
//! requests share (coalescing). A fetch walks these states:
//!
//! ```text
//! Lookup ──holders──▶ Peer(level) ──fails──▶ Origin
//!    │                                         ▲
//!    └──none──▶ Claim ──granted / no arbiter───┘
//!                  └──held by P──▶ Peer(P) ──fails──▶ Origin
//! ```
//!
//! Effects come out of [`Proxy::poll_output`]: DSHT gets and puts, claims,
//! and upstream requests (with the exact bytes to send). The adapter
//! performs them and reports back with `handle_*`; it reads the body for a
//! client with [`Proxy::read`], which hands out the response head built here
//! and then the body bytes as they arrive (cut-through). After any input the
//! adapter drains `poll_output`, then [`Proxy::poll_disk`] (its disk tier's
//! work, only when [`HttpConfig::disk_tier`] is set), to `None`, and again
//! while either has more.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::cache::{Cache, CacheStats, Object};
use super::freshness::{self, Storable, has_directive};
use super::host::{self, HostError, OriginUrl};
use super::parse::{self, Framing, Headers, RequestHead, ResponseHead};
use super::range::{self, RangeAnswer};
use super::{HttpConfig, holder_from_value, holder_value, ssrf};
use crate::contact::{Contact, Level, Services};
use crate::id::Id;
use crate::time::Instant;

/// Identifies one shared upstream transfer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FetchId(pub u64);

/// Identifies one client reading a fetch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ReaderId(pub u64);

/// Where an upstream request goes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Upstream {
    /// The origin: the adapter resolves the name and asks
    /// [`Proxy::origin_addr_allowed`] for every address before connecting.
    Origin {
        /// Host name or IP literal.
        host: String,
        /// Port.
        port: u16,
    },
    /// Peer proxies: connect to all at once, the first usable answer wins
    /// (see [`Proxy::peer_answer_usable`]); the others are dropped.
    Peers(Vec<SocketAddr>),
}

/// An effect the adapter must carry out.
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use]
pub enum Output {
    /// DSHT get of `key` at every level; report with [`Proxy::handle_lookup`].
    Lookup {
        /// The fetch waiting for it.
        fetch: FetchId,
        /// The URL key.
        key: Id,
    },
    /// Send `request` to the arbiter's proxy; report with [`Proxy::handle_claim_reply`].
    Claim {
        /// The fetch waiting for it.
        fetch: FetchId,
        /// The arbiter's proxy.
        arbiter: SocketAddr,
        /// The request bytes.
        request: Vec<u8>,
    },
    /// Send `request` upstream; report with `handle_upstream_*`.
    Fetch {
        /// The fetch.
        fetch: FetchId,
        /// Where.
        upstream: Upstream,
        /// The request bytes.
        request: Vec<u8>,
    },
    /// A one-shot DSHT put (the "fetching" reference).
    Put {
        /// Key.
        key: Id,
        /// Value.
        value: Bytes,
        /// Lifetime.
        ttl: Duration,
    },
    /// Put and keep renewing (the complete object's reference).
    Publish {
        /// Key.
        key: Id,
        /// Value.
        value: Bytes,
        /// Lifetime of each put.
        ttl: Duration,
    },
    /// Stop renewing a reference (the object left the cache).
    Withdraw {
        /// Key.
        key: Id,
        /// Value.
        value: Bytes,
    },
}

/// Work for the adapter's disk tier, from [`Proxy::poll_disk`]; only with
/// [`HttpConfig::disk_tier`], so an adapter without one never sees any.
/// Carry them out in order: a removal must follow every earlier write.
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use]
pub enum DiskOp {
    /// Look `url` up; report with [`Proxy::handle_disk_read`], `None` when
    /// it is not there or its file is damaged.
    Read {
        /// The fetch waiting for it.
        fetch: FetchId,
        /// The URL.
        url: String,
    },
    /// Keep `object` under `url`, replacing an older copy. Leaving the
    /// memory cache does not remove it from disk.
    Write {
        /// The URL.
        url: String,
        /// The object; its age at the time of writing is `object.age(now)`.
        object: Arc<Object>,
    },
    /// Forget `url`: an unsafe request changed it (RFC 9111 §4.4).
    Remove {
        /// The URL.
        url: String,
    },
}

/// The answer to a client request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Answer {
    /// A complete response: write `head` then `body`.
    Respond {
        /// The serialized head.
        head: Vec<u8>,
        /// The body (empty for HEAD).
        body: Bytes,
        /// Whether the connection may carry another request.
        keep_alive: bool,
    },
    /// Read the response from a fetch with [`Proxy::read`].
    Stream {
        /// The fetch.
        fetch: FetchId,
        /// This client's reader.
        reader: ReaderId,
    },
    /// A pass-through request with a body (operators only, see
    /// [`HttpConfig::pass_through_methods`]): read the body with `framing`
    /// from the client, hand it over with [`Proxy::handle_upload_data`]
    /// and [`Proxy::handle_upload_end`], then read the response as for
    /// [`Answer::Stream`].
    Upload {
        /// The fetch.
        fetch: FetchId,
        /// This client's reader.
        reader: ReaderId,
        /// How the body is delimited: [`Framing::Length`] or [`Framing::Chunked`].
        framing: Framing,
        /// Write [`CONTINUE`] first: the client waits for it before sending
        /// the body (`Expect: 100-continue`, RFC 9110 §10.1.1).
        expect_continue: bool,
    },
}

/// The interim response a client that sent `Expect: 100-continue` waits for.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What [`Proxy::read`] has for a reader.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Read {
    /// The response head; the body follows with the given framing.
    Head {
        /// The serialized head.
        head: Vec<u8>,
        /// Write body bytes as chunks (then [`parse::LAST_CHUNK`]).
        chunked: bool,
        /// Whether the connection may carry another request afterwards.
        keep_alive: bool,
    },
    /// Body bytes.
    Data(Bytes),
    /// Nothing yet: wait for the fetch to make progress.
    Pending,
    /// The body is complete (the reader is gone).
    End,
    /// The fetch failed before its head: send this error instead (the reader is gone).
    Failed {
        /// The serialized head.
        head: Vec<u8>,
        /// The body.
        body: Bytes,
    },
    /// The fetch failed mid-body: close the connection (the reader is gone).
    Abort,
}

/// Why an upstream request failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UpstreamError {
    /// The origin's name did not resolve.
    Dns,
    /// Every address the origin resolved to is forbidden (SSRF rule).
    Forbidden,
    /// Connecting failed.
    Connect,
    /// Connect or first byte took too long.
    Timeout,
    /// The answer was not valid HTTP, or ended early.
    Protocol,
    /// No peer gave a usable answer.
    NoPeer,
}

/// What the arbiter said about a claim.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClaimReply {
    /// Fetch from the origin.
    Granted,
    /// Fetch from this proxy.
    Held(SocketAddr),
    /// No answer: behave as Coral would (go to the origin).
    Failed,
}

/// Counters of the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client requests parsed.
    pub requests: u64,
    /// Responses served from a fresh local copy.
    pub hits_local: u64,
    /// Responses served from a peer, per DSHT level (index 3: a claim holder).
    pub hits_peer: [u64; 4],
    /// Responses served from the origin.
    pub hits_origin: u64,
    /// Responses served from the disk tier (a memory miss).
    pub hits_disk: u64,
    /// Responses served from a stale copy because the origin failed.
    pub served_stale: u64,
    /// Requests refused (4xx/5xx decided here).
    pub refused: u64,
    /// Upstream fetches started from the origin.
    pub origin_fetches: u64,
    /// Upstream fetches started from peers.
    pub peer_fetches: u64,
    /// Revalidations answered 304.
    pub revalidated: u64,
    /// Requests that joined an in-flight fetch.
    pub coalesced: u64,
    /// Claims granted by this node as arbiter.
    pub claims_granted: u64,
    /// Claims this node answered with a holder.
    pub claims_held: u64,
    /// Body bytes handed to clients.
    pub bytes_served: u64,
    /// Body bytes received from upstream.
    pub bytes_fetched: u64,
    /// Requests with other methods forwarded to the origin (pass-through).
    pub passed_through: u64,
    /// Stored objects dropped because an unsafe request changed them (RFC 9111 §4.4).
    pub invalidated: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Receiving a pass-through request's body from the client.
    Upload,
    /// Waiting for the disk tier.
    Disk,
    Lookup,
    Claim,
    Peer(Option<Level>),
    Origin,
    Done,
    Failed(u16),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Src {
    Peer(usize),
    Origin,
    Disk,
}

struct Reader {
    offset: u64,
    head_sent: bool,
    head_only: bool,
    keep_alive: bool,
    http10: bool,
}

struct Fetch {
    url: String,
    /// The method sent upstream: GET, or the client's for pass-through.
    method: String,
    /// A pass-through request's body, sent after the head.
    upload: Vec<u8>,
    origin: OriginUrl,
    key: Id,
    state: State,
    shared: bool,
    /// Request fields forwarded upstream (Accept-*, Authorization when passed through).
    forward: Headers,
    vary_req: Headers,
    stale: Option<Arc<Object>>,
    head: Option<ResponseHead>,
    src: Option<Src>,
    storable: Storable,
    initial_age: Duration,
    arrived: Instant,
    length: Option<u64>,
    chunks: Vec<Bytes>,
    starts: Vec<u64>,
    len: u64,
    too_big: bool,
    readers: BTreeMap<ReaderId, Reader>,
    from_stale: bool,
}

impl Fetch {
    fn joinable_by_peer(&self) -> bool {
        // Before its source is decided a fetch may end up waiting on the
        // very peer that joins it.
        !matches!(
            self.state,
            State::Upload | State::Disk | State::Lookup | State::Failed(_)
        ) && self.shared
            && !self.too_big
    }
}

/// The proxy's state: the cache, fetches in flight, claims held as arbiter.
pub struct Proxy {
    cfg: HttpConfig,
    me: SocketAddr,
    my_id: Id,
    cache: Cache,
    fetches: BTreeMap<FetchId, Fetch>,
    by_url: BTreeMap<String, FetchId>,
    claims: BTreeMap<String, (SocketAddr, Instant)>,
    negative: BTreeMap<String, (Instant, u16)>,
    out: VecDeque<Output>,
    disk: VecDeque<DiskOp>,
    next_fetch: u64,
    next_reader: u64,
    stats: ProxyStats,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("me", &self.me)
            .field("fetches", &self.fetches.len())
            .field("cache", &self.cache)
            .finish()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        _ => "Unknown",
    }
}

/// Fields never forwarded (RFC 9110 §7.6.1 hop-by-hop, plus cookies, spec §7.3).
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "set-cookie",
    "set-cookie2",
    "content-length",
    "age",
];

/// Request fields passed to upstream (everything else is dropped: cookies,
/// client identity, conditionals the proxy makes itself).
const FORWARD: &[&str] = &["accept", "accept-encoding", "accept-language"];

/// Request fields a pass-through request also carries: the body's
/// description and the preconditions an origin checks before changing a
/// resource (RFC 9110 §13.1).
const FORWARD_UPLOAD: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "if-match",
    "if-unmodified-since",
    "if-none-match",
    "if-modified-since",
];

/// Whether `method` is one a shared cache may serve and store (GET, HEAD).
fn is_safe(method: &str) -> bool {
    method == "GET" || method == "HEAD"
}

/// The URL `location` (a Location or Content-Location value) names when it
/// is on `origin`'s host and port: an absolute path, or an absolute URL.
fn same_origin(origin: &OriginUrl, location: &str) -> Option<String> {
    let path = if location.starts_with('/') && !location.starts_with("//") {
        location
    } else {
        let base = format!("http://{}", origin.host_header());
        let head = location.get(..base.len())?;
        if !head.eq_ignore_ascii_case(&base) {
            return None;
        }
        let rest = &location[base.len()..];
        if !rest.starts_with('/') {
            return None;
        }
        rest
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return None;
    }
    Some(
        OriginUrl {
            path: path.to_owned(),
            ..origin.clone()
        }
        .url(),
    )
}

fn head_bytes(status: u16, headers: &Headers, extra: &str) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    let mut v = s.into_bytes();
    for (n, val) in &headers.0 {
        v.extend_from_slice(n.as_bytes());
        v.extend_from_slice(b": ");
        v.extend_from_slice(val);
        v.extend_from_slice(b"\r\n");
    }
    s = String::from(extra);
    v.extend_from_slice(s.as_bytes());
    v.extend_from_slice(b"\r\n");
    v
}

impl Proxy {
    /// A proxy whose own HTTP listener is `me`, on the node `my_id`.
    pub fn new(cfg: HttpConfig, me: SocketAddr, my_id: Id) -> Self {
        Self {
            cache: Cache::new(cfg.cache_bytes),
            cfg,
            me,
            my_id,
            fetches: BTreeMap::new(),
            by_url: BTreeMap::new(),
            claims: BTreeMap::new(),
            negative: BTreeMap::new(),
            out: VecDeque::new(),
            disk: VecDeque::new(),
            next_fetch: 0,
            next_reader: 0,
            stats: ProxyStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    /// The cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Fetches in flight.
    pub fn fetches_in_flight(&self) -> usize {
        self.fetches.len()
    }

    /// Whether fetch `f` is still held: in flight, or with readers left.
    /// Once it is not, nothing about it will change again.
    pub fn has_fetch(&self, f: FetchId) -> bool {
        self.fetches.contains_key(&f)
    }

    /// The next effect to carry out.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next disk-tier operation (never any without [`HttpConfig::disk_tier`]).
    /// Drain it after [`Self::poll_output`]; answering a read may queue outputs.
    #[must_use]
    pub fn poll_disk(&mut self) -> Option<DiskOp> {
        self.disk.pop_front()
    }

    /// Whether an origin address may be contacted (the SSRF rule).
    pub fn origin_addr_allowed(&self, ip: IpAddr) -> bool {
        ssrf::origin_allowed(ip, &self.cfg.allow_origins)
    }

    /// Whether a peer's response head is an answer (not "I don't have it").
    pub fn peer_answer_usable(head: &ResponseHead) -> bool {
        head.status != 504 && head.status < 500
    }

    /// The arbiter's verdict in a claim response.
    pub fn claim_reply(head: &ResponseHead) -> ClaimReply {
        if head.headers.get("x-coral-claim") == Some("granted") {
            return ClaimReply::Granted;
        }
        match head
            .headers
            .get("x-coral-holder")
            .and_then(|h| h.parse().ok())
        {
            Some(a) => ClaimReply::Held(a),
            None => ClaimReply::Failed,
        }
    }

    fn error(&mut self, status: u16, detail: &str, keep_alive: bool, extra: &str) -> Answer {
        self.stats.refused += 1;
        let body = format!(
            "<!doctype html><html><head><title>{status} {r}</title></head><body><h1>{status} {r}</h1>\
             <p>{detail}</p><hr><p>{p} (Coral content distribution network)</p></body></html>\n",
            r = reason(status),
            p = self.cfg.product
        );
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: {}\r\n{extra}\r\n",
            reason(status),
            body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        Answer::Respond {
            head: head.into_bytes(),
            body: Bytes::from(body),
            keep_alive,
        }
    }

    /// Decides what to do with a client request.
    pub fn handle_request(&mut self, now: Instant, req: &RequestHead) -> Answer {
        self.stats.requests += 1;
        let keep = req.keep_alive();
        let pass = !is_safe(&req.method);
        // CONNECT is never tunnelled; other methods only for an operator's own site.
        if pass && (req.method == "CONNECT" || !self.cfg.pass_through_methods) {
            return self.error(
                405,
                "This Coral proxy serves GET and HEAD only.",
                false,
                "Allow: GET, HEAD\r\n",
            );
        }
        let framing = match parse::request_framing(req) {
            Ok(Framing::Empty) => Framing::Empty,
            Ok(f) if pass => f,
            Ok(_) => return self.error(400, "GET and HEAD requests carry no body.", false, ""),
            Err(e) => return self.error(e.status(), "Malformed request framing.", false, ""),
        };
        let (authority, path) = if req.target.starts_with('/') {
            (req.headers.get("host").unwrap_or(""), req.target.as_str())
        } else if let Some(ap) = host::split_absolute(&req.target) {
            ap
        } else {
            return self.error(400, "Malformed request target.", false, "");
        };
        let origin = match host::parse_coralized(authority, path, &self.cfg.suffixes) {
            Ok(o) => o,
            Err(HostError::NotCoralized) => {
                return self.error(
                    400,
                    "This is a Coral proxy: it serves only Coralized URLs such as \
                     <code>http://www.example.com.nyud.net/</code>, never arbitrary hosts.",
                    keep,
                    "",
                );
            }
            Err(HostError::Loop) => {
                return self.error(508, "This Coralized URL points back into Coral.", false, "");
            }
            Err(HostError::Invalid) => {
                return self.error(400, "The Coralized host name is not valid.", keep, "");
            }
        };
        let ours = req
            .headers
            .items("via")
            .filter(|v| v.contains(self.cfg.product.as_str()))
            .count();
        if ours >= 2 {
            return self.error(508, "Request loop between Coral proxies.", false, "");
        }
        let url = origin.url();
        if pass {
            return self.pass_through(now, origin, url, req, framing);
        }
        if let Some(claimer) = req.headers.get("x-coral-claim") {
            let Ok(claimer) = claimer.parse::<SocketAddr>() else {
                return self.error(400, "Bad claim.", false, "");
            };
            return self.arbitrate(now, &url, claimer, keep);
        }
        let only_if_cached = has_directive(&req.headers, "only-if-cached");
        let private = req.headers.contains("authorization");
        if private {
            // Passed through uncached and unshared.
            let f = self.new_fetch(now, origin, url, req, false);
            self.go_origin(f);
            return self.join(f, req);
        }
        // A local copy.
        if let Some(obj) = self.cache.get(&url) {
            let vary_ok = obj
                .vary
                .iter()
                .all(|(n, v)| req.headers.get(n).map(str::to_owned) == *v);
            if vary_ok && obj.is_fresh(now) {
                self.stats.hits_local += 1;
                return self.serve_object(now, &obj, req, keep);
            }
        }
        if let Some(&f) = self.by_url.get(&url) {
            let joinable = self.fetches.get(&f).is_some_and(|x| {
                if only_if_cached {
                    x.joinable_by_peer()
                } else {
                    x.shared && !x.too_big
                }
            });
            if joinable {
                self.stats.coalesced += 1;
                return self.join(f, req);
            }
        }
        if only_if_cached {
            return self.error(504, "Not cached here.", keep, "");
        }
        if let Some(&(until, status)) = self.negative.get(&url) {
            if until > now {
                return self.error(
                    status,
                    "The origin failed recently; try again shortly.",
                    keep,
                    "",
                );
            }
            self.negative.remove(&url);
        }
        if self.fetches.len() >= self.cfg.max_fetches {
            return self.error(
                503,
                "Too many fetches in progress.",
                false,
                "Retry-After: 1\r\n",
            );
        }
        let stale = self.cache.peek(&url).cloned();
        let revalidate = stale.is_some();
        let f = self.new_fetch(now, origin, url.clone(), req, true);
        if let Some(x) = self.fetches.get_mut(&f) {
            x.stale = stale;
        }
        self.by_url.insert(url, f);
        if revalidate {
            // Our own copy has validators the origin can confirm with a 304.
            self.go_origin(f);
        } else if self.cfg.disk_tier {
            if let Some(x) = self.fetches.get_mut(&f) {
                x.state = State::Disk;
            }
            let url = self
                .fetches
                .get(&f)
                .map_or_else(String::new, |x| x.url.clone());
            self.disk.push_back(DiskOp::Read { fetch: f, url });
        } else {
            let key = self.fetches.get(&f).map_or(Id::for_url(""), |x| x.key);
            self.out.push_back(Output::Lookup { fetch: f, key });
        }
        self.join(f, req)
    }

    /// Forwards an unsafe request to the origin, uncached. Its body (if
    /// any) comes first through [`Self::handle_upload_data`]; the stored
    /// object is invalidated once the origin accepts it.
    fn pass_through(
        &mut self,
        now: Instant,
        origin: OriginUrl,
        url: String,
        req: &RequestHead,
        framing: Framing,
    ) -> Answer {
        if let Framing::Length(n) = framing
            && n > self.cfg.max_upload_bytes
        {
            return self.error(413, "The request body is too large.", false, "");
        }
        if self.fetches.len() >= self.cfg.max_fetches {
            return self.error(
                503,
                "Too many fetches in progress.",
                false,
                "Retry-After: 1\r\n",
            );
        }
        self.stats.passed_through += 1;
        let f = self.new_fetch(now, origin, url, req, false);
        if let Some(x) = self.fetches.get_mut(&f) {
            x.method.clone_from(&req.method);
            for (n, v) in &req.headers.0 {
                if FORWARD_UPLOAD.contains(&n.as_str()) {
                    x.forward.0.push((n.clone(), v.clone()));
                }
            }
            x.state = State::Upload;
        }
        let reader = self.join_reader(f, req);
        if framing == Framing::Empty {
            self.go_origin(f);
            return Answer::Stream { fetch: f, reader };
        }
        Answer::Upload {
            fetch: f,
            reader,
            framing,
            expect_continue: req
                .headers
                .items("expect")
                .any(|t| t.eq_ignore_ascii_case("100-continue")),
        }
    }

    /// Body bytes of a pass-through request arrived from the client.
    /// Returns whether more are wanted: `false` once the body is too large
    /// (the reader then gets 413) or the fetch is gone; stop reading then.
    pub fn handle_upload_data(&mut self, f: FetchId, data: &[u8]) -> bool {
        let max = self.cfg.max_upload_bytes;
        let Some(x) = self.fetches.get_mut(&f) else {
            return false;
        };
        if x.state != State::Upload {
            return false;
        }
        if (x.upload.len() + data.len()) as u64 > max {
            x.upload = Vec::new();
            x.state = State::Failed(413);
            return false;
        }
        x.upload.extend_from_slice(data);
        true
    }

    /// The pass-through request's body is complete: forward it.
    pub fn handle_upload_end(&mut self, f: FetchId) {
        if self
            .fetches
            .get(&f)
            .is_some_and(|x| x.state == State::Upload)
        {
            self.go_origin(f);
        }
    }

    /// The disk tier answered [`DiskOp::Read`]: `object` is the stored
    /// copy (its `stored_at` and `initial_age` set so that `age(now)` is its
    /// age now), or `None`. A fresh copy is served and kept in memory; a
    /// stale one is revalidated with the origin; none is looked up.
    pub fn handle_disk_read(&mut self, now: Instant, f: FetchId, object: Option<Object>) {
        let Some(x) = self.fetches.get_mut(&f) else {
            return;
        };
        if x.state != State::Disk {
            return;
        }
        // The copy must have been chosen for the same request fields (Vary).
        let object = object.filter(|o| {
            o.vary
                .iter()
                .all(|(n, v)| x.vary_req.get(n).map(str::to_owned) == *v)
        });
        match object {
            Some(o) if o.is_fresh(now) => {
                let len = o.body.len() as u64;
                x.head = Some(o.head.clone());
                x.src = Some(Src::Disk);
                x.length = Some(len);
                x.chunks = vec![o.body.clone()];
                x.starts = vec![0];
                x.len = len;
                x.initial_age = o.age(now);
                x.arrived = now;
                x.state = State::Done;
                let (url, key) = (x.url.clone(), x.key);
                self.put_in_memory(now, &url, key, Arc::new(o), false);
                if self.by_url.get(&url) == Some(&f) {
                    self.by_url.remove(&url);
                }
                self.reap(f);
            }
            Some(o) => {
                x.stale = Some(Arc::new(o));
                self.go_origin(f);
            }
            None => {
                x.state = State::Lookup;
                let key = x.key;
                self.out.push_back(Output::Lookup { fetch: f, key });
            }
        }
    }

    /// Drops the stored object for `url` (RFC 9111 §4.4) and detaches an
    /// in-flight fetch of it, which still serves its readers but is not
    /// stored: it may carry the representation the unsafe request replaced.
    fn invalidate(&mut self, url: &str) {
        if self.cache.remove(url) {
            self.stats.invalidated += 1;
            self.out.push_back(Output::Withdraw {
                key: Id::for_url(url),
                value: holder_value(self.me),
            });
        }
        if self.cfg.disk_tier {
            self.disk.push_back(DiskOp::Remove {
                url: url.to_owned(),
            });
        }
        if let Some(f) = self.by_url.remove(url)
            && let Some(x) = self.fetches.get_mut(&f)
        {
            x.shared = false;
            x.storable = Storable::No;
        }
    }

    fn arbitrate(&mut self, now: Instant, url: &str, claimer: SocketAddr, keep: bool) -> Answer {
        let verdict = self.decide_claim(now, url, claimer);
        let extra = match verdict {
            ClaimReply::Held(a) => format!("X-Coral-Holder: {a}\r\n"),
            _ => "X-Coral-Claim: granted\r\n".to_owned(),
        };
        let head = format!(
            "HTTP/1.1 204 No Content\r\n{extra}Cache-Control: no-store\r\nConnection: {}\r\n\r\n",
            if keep { "keep-alive" } else { "close" }
        );
        Answer::Respond {
            head: head.into_bytes(),
            body: Bytes::new(),
            keep_alive: keep,
        }
    }

    fn decide_claim(&mut self, now: Instant, url: &str, claimer: SocketAddr) -> ClaimReply {
        if let Some(&(holder, until)) = self.claims.get(url)
            && until > now
        {
            if holder == claimer {
                return ClaimReply::Granted;
            }
            self.stats.claims_held += 1;
            return ClaimReply::Held(holder);
        }
        let have = self.cache.peek(url).is_some_and(|o| o.is_fresh(now))
            || self
                .by_url
                .get(url)
                .and_then(|f| self.fetches.get(f))
                .is_some_and(Fetch::joinable_by_peer);
        if have && claimer != self.me {
            self.stats.claims_held += 1;
            return ClaimReply::Held(self.me);
        }
        if self.claims.len() >= self.cfg.max_claims {
            self.claims.retain(|_, (_, until)| *until > now);
        }
        if self.claims.len() < self.cfg.max_claims {
            self.claims
                .insert(url.to_owned(), (claimer, now + self.cfg.claim_ttl));
        }
        self.stats.claims_granted += 1;
        ClaimReply::Granted
    }

    fn new_fetch(
        &mut self,
        now: Instant,
        origin: OriginUrl,
        url: String,
        req: &RequestHead,
        shared: bool,
    ) -> FetchId {
        let id = FetchId(self.next_fetch);
        self.next_fetch += 1;
        let mut forward = Headers::default();
        for (n, v) in &req.headers.0 {
            if FORWARD.contains(&n.as_str()) || (!shared && n == "authorization") {
                forward.0.push((n.clone(), v.clone()));
            }
        }
        self.fetches.insert(
            id,
            Fetch {
                key: Id::for_url(&url),
                url,
                method: "GET".to_owned(),
                upload: Vec::new(),
                origin,
                state: State::Lookup,
                shared,
                forward,
                vary_req: req.headers.clone(),
                stale: None,
                head: None,
                src: None,
                storable: Storable::No,
                initial_age: Duration::ZERO,
                arrived: now,
                length: None,
                chunks: Vec::new(),
                starts: Vec::new(),
                len: 0,
                too_big: false,
                readers: BTreeMap::new(),
                from_stale: false,
            },
        );
        id
    }

    fn join(&mut self, f: FetchId, req: &RequestHead) -> Answer {
        let reader = self.join_reader(f, req);
        Answer::Stream { fetch: f, reader }
    }

    fn join_reader(&mut self, f: FetchId, req: &RequestHead) -> ReaderId {
        let r = ReaderId(self.next_reader);
        self.next_reader += 1;
        if let Some(x) = self.fetches.get_mut(&f) {
            x.readers.insert(
                r,
                Reader {
                    offset: 0,
                    head_sent: false,
                    head_only: req.method == "HEAD",
                    keep_alive: req.keep_alive(),
                    http10: req.version == 0,
                },
            );
        }
        r
    }

    fn serve_object(
        &mut self,
        now: Instant,
        obj: &Object,
        req: &RequestHead,
        keep: bool,
    ) -> Answer {
        let age = format!("Age: {}\r\n", obj.age(now).as_secs());
        let via = format!("Via: 1.1 {}\r\n", self.cfg.product);
        let conn = if keep {
            "Connection: keep-alive\r\n"
        } else {
            "Connection: close\r\n"
        };
        let h = &obj.head.headers;
        // Conditional requests from the client (RFC 9110 §13).
        let not_modified = match (req.headers.get("if-none-match"), h.get("etag")) {
            (Some(inm), Some(etag)) => inm.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.trim_start_matches("W/") == etag.trim_start_matches("W/")
            }),
            (Some(_), None) => false,
            (None, _) => match (
                req.headers
                    .get("if-modified-since")
                    .and_then(freshness::parse_http_date),
                h.get("last-modified").and_then(freshness::parse_http_date),
            ) {
                (Some(ims), Some(lm)) => lm <= ims,
                _ => false,
            },
        };
        if not_modified && obj.head.status == 200 {
            let head = head_bytes(304, h, &format!("{age}{via}{conn}"));
            return Answer::Respond {
                head,
                body: Bytes::new(),
                keep_alive: keep,
            };
        }
        let len = obj.body.len() as u64;
        let is_head = req.method == "HEAD";
        let range = if obj.head.status == 200 && !req.headers.contains("if-range") {
            range::resolve(req.headers.get("range"), len)
        } else {
            RangeAnswer::Full
        };
        let (status, body, extra) = match range {
            RangeAnswer::Full => (
                obj.head.status,
                obj.body.clone(),
                format!("Content-Length: {len}\r\n"),
            ),
            RangeAnswer::Partial { start, end } => (
                206,
                obj.body.slice(start as usize..end as usize),
                format!(
                    "Content-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\n",
                    end - start,
                    end - 1
                ),
            ),
            RangeAnswer::Unsatisfiable => {
                let head = format!(
                    "HTTP/1.1 416 {}\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n{via}{conn}\r\n",
                    reason(416)
                );
                return Answer::Respond {
                    head: head.into_bytes(),
                    body: Bytes::new(),
                    keep_alive: keep,
                };
            }
        };
        let accept = if obj.head.status == 200 {
            "Accept-Ranges: bytes\r\n"
        } else {
            ""
        };
        let head = head_bytes(status, h, &format!("{extra}{accept}{age}{via}{conn}"));
        let body = if is_head { Bytes::new() } else { body };
        self.stats.bytes_served += body.len() as u64;
        Answer::Respond {
            head,
            body,
            keep_alive: keep,
        }
    }

    fn coralized_host(&self, o: &OriginUrl) -> String {
        let sfx = self.cfg.suffixes.first().map_or("nyud.net", String::as_str);
        if o.port == 80 {
            format!("{}.{sfx}", o.host)
        } else {
            format!("{}.{}.{sfx}", o.host, o.port)
        }
    }

    fn upstream_request(&self, f: &Fetch, to_peer: bool, extra: &str) -> Vec<u8> {
        let mut s = String::new();
        let host = if to_peer {
            self.coralized_host(&f.origin)
        } else {
            f.origin.host_header()
        };
        let _ = write!(
            s,
            "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {p}/{v} (+https://example.invalid/coral-rs)\r\n\
             Via: 1.1 {p}\r\nConnection: keep-alive\r\n{extra}",
            f.method,
            f.origin.path,
            p = self.cfg.product,
            v = env!("CARGO_PKG_VERSION"),
        );
        let mut v = s.into_bytes();
        for (n, val) in &f.forward.0 {
            v.extend_from_slice(n.as_bytes());
            v.extend_from_slice(b": ");
            v.extend_from_slice(val);
            v.extend_from_slice(b"\r\n");
        }
        if !to_peer && let Some(stale) = &f.stale {
            if let Some(etag) = stale.head.headers.get("etag") {
                v.extend_from_slice(format!("If-None-Match: {etag}\r\n").as_bytes());
            }
            if let Some(lm) = stale.head.headers.get("last-modified") {
                v.extend_from_slice(format!("If-Modified-Since: {lm}\r\n").as_bytes());
            }
        }
        if !is_safe(&f.method) {
            v.extend_from_slice(format!("Content-Length: {}\r\n", f.upload.len()).as_bytes());
        }
        v.extend_from_slice(b"\r\n");
        v.extend_from_slice(&f.upload);
        v
    }

    fn go_origin(&mut self, f: FetchId) {
        let Some(x) = self.fetches.get(&f) else {
            return;
        };
        let request = self.upstream_request(x, false, "");
        let upstream = Upstream::Origin {
            host: x.origin.host.clone(),
            port: x.origin.port,
        };
        let (key, shared) = (x.key, x.shared);
        if let Some(x) = self.fetches.get_mut(&f) {
            x.state = State::Origin;
            // The body now lives in the request bytes.
            x.upload = Vec::new();
        }
        self.stats.origin_fetches += 1;
        if shared {
            self.out.push_back(Output::Put {
                key,
                value: holder_value(self.me),
                ttl: self.cfg.fetching_ref_ttl,
            });
        }
        self.out.push_back(Output::Fetch {
            fetch: f,
            upstream,
            request,
        });
    }

    fn go_peers(&mut self, f: FetchId, peers: Vec<SocketAddr>, level: Option<Level>) {
        let Some(x) = self.fetches.get(&f) else {
            return;
        };
        let request = self.upstream_request(x, true, "Cache-Control: only-if-cached\r\n");
        let key = x.key;
        if let Some(x) = self.fetches.get_mut(&f) {
            x.state = State::Peer(level);
        }
        self.stats.peer_fetches += 1;
        self.out.push_back(Output::Put {
            key,
            value: holder_value(self.me),
            ttl: self.cfg.fetching_ref_ttl,
        });
        self.out.push_back(Output::Fetch {
            fetch: f,
            upstream: Upstream::Peers(peers),
            request,
        });
    }

    /// The DSHT get for a fetch finished: `values` found at `level`;
    /// `contacts` are the level-0 nodes this node knows (for the arbiter).
    pub fn handle_lookup(
        &mut self,
        f: FetchId,
        values: &[Bytes],
        level: Option<Level>,
        contacts: &[Contact],
    ) {
        let Some(x) = self.fetches.get(&f) else {
            return;
        };
        if x.state != State::Lookup {
            return;
        }
        let mut peers: Vec<SocketAddr> = values
            .iter()
            .filter_map(|v| holder_from_value(v))
            .filter(|a| *a != self.me)
            .collect();
        peers.dedup();
        peers.truncate(self.cfg.max_referrals);
        if !peers.is_empty() {
            self.go_peers(f, peers, level);
            return;
        }
        if !self.cfg.claims {
            self.go_origin(f);
            return;
        }
        let key = x.key;
        let url = x.url.clone();
        let best = contacts
            .iter()
            .filter(|c| c.services.contains(Services::HTTP))
            .min_by_key(|c| c.id.distance(&key));
        let arbiter = match best {
            Some(c) if c.id.distance(&key) < self.my_id.distance(&key) => {
                Some(SocketAddr::new(c.addr.ip(), self.cfg.peer_port))
            }
            _ => None,
        };
        match arbiter {
            Some(a) if a != self.me => {
                let request =
                    self.upstream_request(x, true, &format!("X-Coral-Claim: {}\r\n", self.me));
                if let Some(x) = self.fetches.get_mut(&f) {
                    x.state = State::Claim;
                }
                self.out.push_back(Output::Claim {
                    fetch: f,
                    arbiter: a,
                    request,
                });
            }
            _ => {
                if let Some(x) = self.fetches.get_mut(&f) {
                    x.state = State::Claim;
                }
                let me = self.me;
                // We are the arbiter: our own fetch is in flight, so the claim is ours
                // unless a peer claimed first.
                let verdict = match self.claims.get(&url) {
                    Some(&(h, until)) if until > Instant::ZERO && h != me => ClaimReply::Held(h),
                    _ => ClaimReply::Granted,
                };
                let verdict = match verdict {
                    ClaimReply::Granted => {
                        // Unrecorded when full, like a peer's claim (Coral's behaviour).
                        if self.claims.len() < self.cfg.max_claims {
                            self.claims
                                .insert(url, (me, Instant::from_micros(u64::MAX)));
                        }
                        ClaimReply::Granted
                    }
                    v => v,
                };
                self.handle_claim_reply(f, verdict);
            }
        }
    }

    /// The arbiter answered a claim.
    pub fn handle_claim_reply(&mut self, f: FetchId, reply: ClaimReply) {
        if self.fetches.get(&f).is_none_or(|x| x.state != State::Claim) {
            return;
        }
        match reply {
            ClaimReply::Held(a) if a != self.me => self.go_peers(f, vec![a], Some(u8::MAX)),
            _ => self.go_origin(f),
        }
    }

    /// Expires claims this node holds as arbiter; call now and then with the current time.
    pub fn handle_timeout(&mut self, now: Instant) {
        let me = self.me;
        let live = &self.by_url;
        self.claims.retain(|url, (h, until)| {
            if *h == me && until.as_micros() == u64::MAX {
                // Our own claim lasts while our fetch does.
                live.contains_key(url)
            } else {
                *until > now
            }
        });
        self.negative.retain(|_, (until, _)| *until > now);
    }

    /// The upstream answered with `head`. Returns whether a body follows
    /// that the adapter should read and hand to [`Self::handle_upstream_data`].
    pub fn handle_upstream_head(
        &mut self,
        now: Instant,
        unix: u64,
        f: FetchId,
        head: &ResponseHead,
    ) -> bool {
        let cfg_max = self.cfg.max_object_bytes;
        let Some(x) = self.fetches.get_mut(&f) else {
            return false;
        };
        let src = match x.state {
            State::Peer(l) => Src::Peer(match l {
                Some(l) if l < 3 => usize::from(l),
                _ => 3,
            }),
            _ => Src::Origin,
        };
        if head.status == 304
            && let Some(stale) = x.stale.take()
        {
            // RFC 9111 §4.3.4: update the stored head with the 304's fields.
            let mut h = stale.head.clone();
            for (n, v) in &head.headers.0 {
                if !HOP.contains(&n.as_str()) && n != "content-length" {
                    h.headers.set(n, v.clone());
                }
            }
            let lifetime = match freshness::storable(&self.cfg, &h, unix) {
                Storable::Yes { lifetime } => lifetime,
                Storable::No => Duration::ZERO,
            };
            let obj = Object {
                head: h.clone(),
                body: stale.body.clone(),
                stored_at: now,
                initial_age: freshness::initial_age(head, unix),
                lifetime,
                vary: stale.vary.clone(),
            };
            x.head = Some(h);
            x.src = Some(src);
            x.length = Some(obj.body.len() as u64);
            x.chunks = vec![obj.body.clone()];
            x.starts = vec![0];
            x.len = obj.body.len() as u64;
            x.state = State::Done;
            x.storable = Storable::No;
            let url = x.url.clone();
            let key = x.key;
            self.stats.revalidated += 1;
            self.store(now, &url, key, Arc::new(obj));
            self.by_url.remove(&url);
            return false;
        }
        if !is_safe(&x.method) && head.status < 400 {
            // RFC 9111 §4.4: the origin accepted a change to the target,
            // and to what Location / Content-Location name on the same origin.
            let mut urls = vec![x.url.clone()];
            for name in ["location", "content-location"] {
                if let Some(u) = head
                    .headers
                    .get(name)
                    .and_then(|v| same_origin(&x.origin, v))
                {
                    urls.push(u);
                }
            }
            for u in urls {
                self.invalidate(&u);
            }
        }
        let Some(x) = self.fetches.get_mut(&f) else {
            return false;
        };
        let mut h = head.clone();
        for name in HOP {
            h.headers.remove(name);
        }
        h.headers.0.retain(|(n, _)| !n.starts_with("x-coral-"));
        let framing = parse::response_framing(false, head).unwrap_or(Framing::Close);
        x.length = match framing {
            Framing::Length(n) => Some(n),
            Framing::Empty => Some(0),
            _ => None,
        };
        x.storable = if x.shared {
            freshness::storable(&self.cfg, head, unix)
        } else {
            Storable::No
        };
        if x.length.is_some_and(|n| n > cfg_max) {
            x.too_big = true;
            x.storable = Storable::No;
        }
        x.initial_age = freshness::initial_age(head, unix);
        x.arrived = now;
        x.head = Some(h);
        x.src = Some(src);
        x.stale = None;
        x.length != Some(0)
    }

    /// Body bytes arrived from upstream.
    pub fn handle_upstream_data(&mut self, f: FetchId, data: Bytes) {
        let max = self.cfg.max_object_bytes;
        let Some(x) = self.fetches.get_mut(&f) else {
            return;
        };
        if data.is_empty() {
            return;
        }
        self.stats.bytes_fetched += data.len() as u64;
        x.starts.push(x.len);
        x.len += data.len() as u64;
        x.chunks.push(data);
        if x.len > max && !x.too_big {
            x.too_big = true;
            x.storable = Storable::No;
            let url = x.url.clone();
            if self.by_url.get(&url) == Some(&f) {
                self.by_url.remove(&url);
            }
        }
        if x.too_big {
            Self::trim(x);
        }
    }

    /// Drops body bytes every reader has passed (only for objects too big to keep).
    fn trim(x: &mut Fetch) {
        let min = x.readers.values().map(|r| r.offset).min().unwrap_or(x.len);
        while x.chunks.len() > 1 {
            let end = x.starts[1];
            if end > min {
                break;
            }
            x.chunks.remove(0);
            x.starts.remove(0);
        }
    }

    /// The upstream transfer ended: cleanly (`Ok`) or not.
    pub fn handle_upstream_end(
        &mut self,
        now: Instant,
        f: FetchId,
        result: Result<(), UpstreamError>,
    ) {
        let neg_ttl = self.cfg.negative_ttl_error;
        let Some(x) = self.fetches.get_mut(&f) else {
            return;
        };
        if matches!(x.state, State::Done | State::Failed(_)) {
            return;
        }
        match result {
            Ok(()) if x.head.is_some() && x.length.is_none_or(|n| n == x.len) => {
                x.state = State::Done;
                let url = x.url.clone();
                let key = x.key;
                let status = x.head.as_ref().map_or(0, |h| h.status);
                if let (Storable::Yes { lifetime }, false) = (x.storable, x.too_big) {
                    // Always a fresh, exact allocation: a chunk is a slice of
                    // the adapter's read buffer, and keeping it would pin the
                    // whole buffer (16 KiB and more behind a 1 KB object)
                    // outside the cache's byte budget.
                    let body = Bytes::from(x.chunks.concat());
                    x.chunks = vec![body.clone()];
                    x.starts = vec![0];
                    let head = x.head.clone().unwrap_or(ResponseHead {
                        status,
                        version: 1,
                        headers: Headers::default(),
                    });
                    let vary = head
                        .headers
                        .items("vary")
                        .map(|n| {
                            let n = n.to_ascii_lowercase();
                            let v = x.vary_req.get(&n).map(str::to_owned);
                            (n, v)
                        })
                        .collect();
                    let obj = Object {
                        head,
                        body,
                        stored_at: x.arrived,
                        initial_age: x.initial_age,
                        lifetime,
                        vary,
                    };
                    self.store(now, &url, key, Arc::new(obj));
                } else if status >= 500 && is_safe(&x.method) {
                    self.remember_failure(now, &url, 502, neg_ttl);
                }
                if self.by_url.get(&url) == Some(&f) {
                    self.by_url.remove(&url);
                }
            }
            _ if x.head.is_none() && matches!(x.state, State::Peer(_)) && x.shared => {
                // No peer had it after all: Coral falls back to the origin.
                self.go_origin(f);
                return;
            }
            r => {
                let url = x.url.clone();
                if x.head.is_none() {
                    if let Some(stale) = x.stale.take() {
                        // Serve liberally: the stale copy beats an error (spec §7.4).
                        x.head = Some(stale.head.clone());
                        x.length = Some(stale.body.len() as u64);
                        x.chunks = vec![stale.body.clone()];
                        x.starts = vec![0];
                        x.len = stale.body.len() as u64;
                        x.state = State::Done;
                        x.from_stale = true;
                        x.initial_age = stale.age(now);
                        x.arrived = now;
                        self.stats.served_stale += 1;
                    } else {
                        let status = match r {
                            Err(UpstreamError::Forbidden) => 403,
                            Err(UpstreamError::Timeout) => 504,
                            _ => 502,
                        };
                        x.state = State::Failed(status);
                        // A failed upload says nothing about GETs of the URL.
                        if status != 403 && is_safe(&x.method) {
                            self.remember_failure(now, &url, status, neg_ttl);
                        }
                    }
                } else {
                    // Never replace a good copy with a truncated one.
                    x.state = State::Failed(502);
                }
                if self.by_url.get(&url) == Some(&f) {
                    self.by_url.remove(&url);
                }
            }
        }
        self.reap(f);
    }

    fn remember_failure(&mut self, now: Instant, url: &str, status: u16, ttl: Duration) {
        if self.negative.len() >= self.cfg.max_negative {
            self.negative.retain(|_, (until, _)| *until > now);
        }
        if self.negative.len() < self.cfg.max_negative {
            self.negative.insert(url.to_owned(), (now + ttl, status));
        }
    }

    fn store(&mut self, now: Instant, url: &str, key: Id, obj: Arc<Object>) {
        self.put_in_memory(now, url, key, obj, true);
    }

    /// Keeps `obj` in the memory cache and advertises it; `persist` also
    /// hands it to the disk tier (not when it came from there).
    fn put_in_memory(&mut self, now: Instant, url: &str, key: Id, obj: Arc<Object>, persist: bool) {
        if persist && self.cfg.disk_tier {
            self.disk.push_back(DiskOp::Write {
                url: url.to_owned(),
                object: Arc::clone(&obj),
            });
        }
        let ttl = obj.fresh_for(now).min(self.cfg.max_ref_ttl);
        let evicted = self.cache.insert(url, obj);
        let value = holder_value(self.me);
        for u in &evicted {
            self.out.push_back(Output::Withdraw {
                key: Id::for_url(u),
                value: value.clone(),
            });
        }
        if !evicted.iter().any(|u| u == url) && ttl >= Duration::from_secs(1) {
            self.out.push_back(Output::Publish { key, value, ttl });
        }
    }

    fn reap(&mut self, f: FetchId) {
        if let Some(x) = self.fetches.get(&f)
            && x.readers.is_empty()
            && matches!(x.state, State::Upload | State::Done | State::Failed(_))
        {
            if self.by_url.get(&x.url) == Some(&f) {
                self.by_url.remove(&x.url);
            }
            self.fetches.remove(&f);
        }
    }

    /// The client behind `r` went away.
    pub fn close_reader(&mut self, f: FetchId, r: ReaderId) {
        if let Some(x) = self.fetches.get_mut(&f) {
            x.readers.remove(&r);
            if x.too_big {
                Self::trim(x);
            }
        }
        self.reap(f);
    }

    /// Whether the fetch still has a reader or may still be stored; an
    /// adapter may stop an upstream transfer nobody wants (too big, no readers).
    pub fn fetch_wanted(&self, f: FetchId) -> bool {
        self.fetches
            .get(&f)
            .is_some_and(|x| !x.readers.is_empty() || !x.too_big)
    }

    /// The next thing reader `r` of fetch `f` should write.
    pub fn read(&mut self, now: Instant, f: FetchId, r: ReaderId, max: usize) -> Read {
        let product = self.cfg.product.clone();
        let Some(x) = self.fetches.get_mut(&f) else {
            return Read::Abort;
        };
        let Some(rd) = x.readers.get(&r) else {
            return Read::Abort;
        };
        if let State::Failed(status) = x.state {
            if !rd.head_sent {
                x.readers.remove(&r);
                self.reap(f);
                let detail = if status == 413 {
                    "The request body is too large."
                } else {
                    "The origin could not be reached."
                };
                return match self.error(status, detail, false, "") {
                    Answer::Respond { head, body, .. } => Read::Failed { head, body },
                    Answer::Stream { .. } | Answer::Upload { .. } => Read::Abort,
                };
            }
            let (off, len) = (rd.offset, x.len);
            if off >= len || x.chunks.is_empty() {
                x.readers.remove(&r);
                self.reap(f);
                return Read::Abort;
            }
        }
        let Some(head) = x.head.as_ref() else {
            return Read::Pending;
        };
        let Some(rd) = x.readers.get_mut(&r) else {
            return Read::Abort;
        };
        if !rd.head_sent {
            rd.head_sent = true;
            match x.src {
                Some(Src::Peer(l)) => self.stats.hits_peer[l] += 1,
                Some(Src::Origin) if !x.from_stale => self.stats.hits_origin += 1,
                Some(Src::Disk) => self.stats.hits_disk += 1,
                _ => self.stats.hits_local += 1,
            }
            let age = (x.initial_age + (now - x.arrived)).as_secs();
            let mut keep_alive = rd.keep_alive;
            let (framing, chunked) = match x.length {
                Some(n) => (format!("Content-Length: {n}\r\n"), false),
                None if rd.head_only => (String::new(), false),
                None if rd.http10 => {
                    keep_alive = false;
                    (String::new(), false)
                }
                None => ("Transfer-Encoding: chunked\r\n".to_owned(), true),
            };
            let accept = if head.status == 200 && x.length.is_some() {
                "Accept-Ranges: bytes\r\n"
            } else {
                ""
            };
            let conn = if keep_alive { "keep-alive" } else { "close" };
            let bytes = head_bytes(
                head.status,
                &head.headers,
                &format!(
                    "{framing}{accept}Age: {age}\r\nVia: 1.1 {product}\r\nConnection: {conn}\r\n"
                ),
            );
            let chunked = chunked && !rd.head_only;
            if rd.head_only {
                rd.offset = u64::MAX;
            }
            return Read::Head {
                head: bytes,
                chunked,
                keep_alive,
            };
        }
        let off = rd.offset;
        if off >= x.len {
            if x.state == State::Done || off == u64::MAX {
                x.readers.remove(&r);
                self.reap(f);
                return Read::End;
            }
            return Read::Pending;
        }
        // The chunk holding `off`.
        let i = match x.starts.binary_search(&off) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let (Some(&start), Some(chunk)) = (x.starts.get(i), x.chunks.get(i)) else {
            return Read::Abort;
        };
        if off < start {
            // Trimmed away (cannot happen for readers that joined at offset 0).
            x.readers.remove(&r);
            return Read::Abort;
        }
        let from = (off - start) as usize;
        let to = chunk.len().min(from + max.max(1));
        let data = chunk.slice(from..to);
        rd.offset += data.len() as u64;
        self.stats.bytes_served += data.len() as u64;
        if x.too_big {
            Self::trim(x);
        }
        Read::Data(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{HeadLimits, parse_request, parse_response};

    const L: HeadLimits = HeadLimits {
        max_bytes: 8192,
        max_headers: 64,
    };
    const UNIX: u64 = 1_700_000_000;

    fn me() -> SocketAddr {
        "127.0.0.10:8090".parse().unwrap()
    }

    fn proxy() -> Proxy {
        Proxy::new(HttpConfig::default(), me(), Id::for_node(me()))
    }

    fn req(s: &str) -> RequestHead {
        parse_request(s.as_bytes(), L).unwrap().unwrap().0
    }

    fn resp(s: &str) -> ResponseHead {
        parse_response(s.as_bytes(), L).unwrap().unwrap().0
    }

    fn get(path: &str) -> RequestHead {
        req(&format!(
            "GET {path} HTTP/1.1\r\nHost: www.x.com.nyud.net:8090\r\n\r\n"
        ))
    }

    fn status(a: &Answer) -> u16 {
        match a {
            Answer::Respond { head, .. } => resp(std::str::from_utf8(head).unwrap()).status,
            Answer::Stream { .. } | Answer::Upload { .. } => 0,
        }
    }

    fn outputs(p: &mut Proxy) -> Vec<Output> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    /// Drives one fetch to the origin and back with `body`.
    fn complete(p: &mut Proxy, f: FetchId, head: &str, body: &[u8]) {
        assert!(p.handle_upstream_head(Instant::ZERO, UNIX, f, &resp(head)) || body.is_empty());
        p.handle_upstream_data(f, Bytes::copy_from_slice(body));
        p.handle_upstream_end(Instant::ZERO, f, Ok(()));
    }

    fn drain(p: &mut Proxy, f: FetchId, r: ReaderId) -> (Vec<u8>, Vec<u8>) {
        let mut head = Vec::new();
        let mut body = Vec::new();
        for _ in 0..1000 {
            match p.read(Instant::ZERO, f, r, 1 << 20) {
                Read::Head { head: h, .. } => head = h,
                Read::Data(d) => body.extend_from_slice(&d),
                Read::End => return (head, body),
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no end");
    }

    #[test]
    fn refusals() {
        let mut p = proxy();
        let a = p.handle_request(
            Instant::ZERO,
            &req("POST / HTTP/1.1\r\nHost: a.nyud.net\r\n\r\n"),
        );
        assert_eq!(status(&a), 405);
        let Answer::Respond { head, .. } = a else {
            panic!()
        };
        assert!(
            String::from_utf8(head)
                .unwrap()
                .contains("Allow: GET, HEAD")
        );
        let a = p.handle_request(
            Instant::ZERO,
            &req("CONNECT a.nyud.net:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
        );
        assert_eq!(status(&a), 405);
        let a = p.handle_request(
            Instant::ZERO,
            &req("GET / HTTP/1.1\r\nHost: www.x.com\r\n\r\n"),
        );
        assert_eq!(status(&a), 400);
        let a = p.handle_request(
            Instant::ZERO,
            &req("GET / HTTP/1.1\r\nHost: a.nyud.net.nyud.net\r\n\r\n"),
        );
        assert_eq!(status(&a), 508);
        let a = p.handle_request(
            Instant::ZERO,
            &req("GET / HTTP/1.1\r\nHost: a.nyud.net\r\nVia: 1.1 coral-rs, 1.1 coral-rs\r\n\r\n"),
        );
        assert_eq!(status(&a), 508);
        let a = p.handle_request(
            Instant::ZERO,
            &req("GET http://a.com/ HTTP/1.1\r\nHost: a.nyud.net\r\n\r\n"),
        );
        assert_eq!(status(&a), 400);
        let a = p.handle_request(
            Instant::ZERO,
            &req("GET / HTTP/1.1\r\nHost: a.nyud.net\r\nContent-Length: 3\r\n\r\n"),
        );
        assert_eq!(status(&a), 400);
        assert!(
            outputs(&mut p).is_empty(),
            "a refused request has no effect"
        );
        let a = p.handle_request(
            Instant::ZERO,
            &req("GET http://a.nyud.net/x HTTP/1.1\r\n\r\n"),
        );
        assert!(
            matches!(a, Answer::Stream { .. }),
            "absolute form is accepted"
        );
    }

    #[test]
    fn n_waiters_share_one_upstream_fetch_and_the_second_round_is_local() {
        let mut p = proxy();
        let mut readers = Vec::new();
        for _ in 0..50 {
            match p.handle_request(Instant::ZERO, &get("/a?b")) {
                Answer::Stream { fetch, reader } => readers.push((fetch, reader)),
                a => panic!("{a:?}"),
            }
        }
        let f = readers[0].0;
        assert!(readers.iter().all(|(x, _)| *x == f));
        let outs = outputs(&mut p);
        assert_eq!(
            outs,
            vec![Output::Lookup {
                fetch: f,
                key: Id::for_url("http://www.x.com/a?b")
            }]
        );
        p.handle_lookup(f, &[], None, &[]);
        let outs = outputs(&mut p);
        let fetches: Vec<_> = outs
            .iter()
            .filter(|o| matches!(o, Output::Fetch { .. }))
            .collect();
        assert_eq!(fetches.len(), 1);
        let Output::Fetch {
            upstream, request, ..
        } = fetches[0]
        else {
            panic!()
        };
        assert_eq!(
            *upstream,
            Upstream::Origin {
                host: "www.x.com".into(),
                port: 80
            }
        );
        let r = String::from_utf8(request.clone()).unwrap();
        assert!(
            r.starts_with("GET /a?b HTTP/1.1\r\nHost: www.x.com\r\n")
                && r.contains("Via: 1.1 coral-rs")
        );
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::Put { ttl, .. } if *ttl == Duration::from_secs(20)))
        );
        complete(
            &mut p,
            f,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=b\r\nCache-Control: max-age=60\r\n\r\n",
            b"hello",
        );
        assert!(
            outputs(&mut p).iter().any(
                |o| matches!(o, Output::Publish { ttl, .. } if *ttl == Duration::from_secs(60))
            )
        );
        for (f, r) in readers {
            let (head, body) = drain(&mut p, f, r);
            let head = String::from_utf8(head).unwrap();
            assert!(
                head.starts_with("HTTP/1.1 200 OK") && !head.contains("et-cookie"),
                "{head}"
            );
            assert_eq!(body, b"hello");
        }
        assert_eq!(p.stats().origin_fetches, 1);
        assert_eq!(p.fetches_in_flight(), 0);
        let a = p.handle_request(Instant::ZERO, &get("/a?b"));
        let Answer::Respond { body, .. } = &a else {
            panic!("{a:?}")
        };
        assert_eq!(&body[..], b"hello");
        let a = p.handle_request(
            Instant::ZERO,
            &req("GET /a?b HTTP/1.1\r\nHost: www.x.com.nyud.net\r\nRange: bytes=1-2\r\n\r\n"),
        );
        assert_eq!(status(&a), 206);
        let Answer::Respond { body, head, .. } = &a else {
            panic!()
        };
        assert_eq!(&body[..], b"el");
        assert!(String::from_utf8_lossy(head).contains("Content-Range: bytes 1-2/5"));
        let a = p.handle_request(
            Instant::ZERO,
            &req("GET /a?b HTTP/1.1\r\nHost: www.x.com.nyud.net\r\nRange: bytes=9-\r\n\r\n"),
        );
        assert_eq!(status(&a), 416);
        assert!(outputs(&mut p).is_empty());
    }

    #[test]
    fn referrals_are_tried_then_the_origin() {
        let mut p = proxy();
        let Answer::Stream { fetch: f, reader } = p.handle_request(Instant::ZERO, &get("/p"))
        else {
            panic!()
        };
        let _ = outputs(&mut p);
        let peer: SocketAddr = "127.0.0.11:8090".parse().unwrap();
        p.handle_lookup(
            f,
            &[
                holder_value(peer),
                holder_value(me()),
                Bytes::from_static(b"junk"),
            ],
            Some(2),
            &[],
        );
        let outs = outputs(&mut p);
        let Some(Output::Fetch {
            upstream, request, ..
        }) = outs.iter().find(|o| matches!(o, Output::Fetch { .. }))
        else {
            panic!("{outs:?}")
        };
        assert_eq!(*upstream, Upstream::Peers(vec![peer]));
        let r = String::from_utf8(request.clone()).unwrap();
        assert!(
            r.contains("Host: www.x.com.nyud.net\r\n") && r.contains("only-if-cached"),
            "{r}"
        );
        p.handle_upstream_end(Instant::ZERO, f, Err(UpstreamError::NoPeer));
        let outs = outputs(&mut p);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Fetch {
                upstream: Upstream::Origin { .. },
                ..
            }
        )));
        complete(
            &mut p,
            f,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"xyz",
        );
        let (head, body) = drain(&mut p, f, reader);
        assert!(
            String::from_utf8(head)
                .unwrap()
                .contains("Transfer-Encoding: chunked")
        );
        assert_eq!(body, b"xyz");
    }

    #[test]
    fn only_if_cached_peers_get_504_or_join_a_decided_fetch() {
        let mut p = proxy();
        let peer_req = req(
            "GET /z HTTP/1.1\r\nHost: www.x.com.nyud.net\r\nVia: 1.1 coral-rs\r\nCache-Control: only-if-cached\r\n\r\n",
        );
        assert_eq!(status(&p.handle_request(Instant::ZERO, &peer_req)), 504);
        let Answer::Stream { fetch: f, .. } = p.handle_request(Instant::ZERO, &get("/z")) else {
            panic!()
        };
        // Still looking up: a peer joining now could wait on itself.
        assert_eq!(status(&p.handle_request(Instant::ZERO, &peer_req)), 504);
        p.handle_lookup(f, &[], None, &[]);
        assert!(
            matches!(p.handle_request(Instant::ZERO, &peer_req), Answer::Stream { fetch, .. } if fetch == f)
        );
    }

    #[test]
    fn claims_make_one_origin_fetch_per_network() {
        let arb_addr: SocketAddr = "127.0.0.12:8090".parse().unwrap();
        let mut arbiter = Proxy::new(HttpConfig::default(), arb_addr, Id::for_node(arb_addr));
        let a: SocketAddr = "127.0.0.20:8090".parse().unwrap();
        let b: SocketAddr = "127.0.0.21:8090".parse().unwrap();
        let claim = |who: SocketAddr| {
            req(&format!(
                "GET /c HTTP/1.1\r\nHost: www.x.com.nyud.net\r\nVia: 1.1 coral-rs\r\nX-Coral-Claim: {who}\r\n\r\n"
            ))
        };
        let verdict = |ans: Answer| match ans {
            Answer::Respond { head, .. } => {
                Proxy::claim_reply(&resp(std::str::from_utf8(&head).unwrap()))
            }
            Answer::Stream { .. } | Answer::Upload { .. } => panic!(),
        };
        assert_eq!(
            verdict(arbiter.handle_request(Instant::ZERO, &claim(a))),
            ClaimReply::Granted
        );
        assert_eq!(
            verdict(arbiter.handle_request(Instant::ZERO, &claim(b))),
            ClaimReply::Held(a)
        );
        assert_eq!(
            verdict(arbiter.handle_request(Instant::ZERO, &claim(a))),
            ClaimReply::Granted
        );
        let later = Instant::ZERO + Duration::from_secs(21);
        arbiter.handle_timeout(later);
        assert_eq!(
            verdict(arbiter.handle_request(later, &claim(b))),
            ClaimReply::Granted
        );

        // The claimer side: a total miss asks the closest known node.
        let mut p = Proxy::new(HttpConfig::default(), b, Id::for_node(b));
        let Answer::Stream { fetch: f, .. } = p.handle_request(Instant::ZERO, &get("/c")) else {
            panic!()
        };
        let _ = outputs(&mut p);
        let key = Id::for_url("http://www.x.com/c");
        let contacts: Vec<Contact> = (30..60)
            .map(|i| {
                Contact::from_addr(format!("127.0.0.{i}:8091").parse().unwrap(), Services::HTTP)
            })
            .collect();
        let closest = contacts.iter().min_by_key(|c| c.id.distance(&key)).unwrap();
        p.handle_lookup(f, &[], None, &contacts);
        let outs = outputs(&mut p);
        if closest.id.distance(&key) < Id::for_node(b).distance(&key) {
            let Some(Output::Claim {
                arbiter, request, ..
            }) = outs.first()
            else {
                panic!("{outs:?}")
            };
            assert_eq!(*arbiter, SocketAddr::new(closest.addr.ip(), 8090));
            assert!(String::from_utf8_lossy(request).contains(&format!("X-Coral-Claim: {b}")));
            p.handle_claim_reply(f, ClaimReply::Held(a));
            let outs = outputs(&mut p);
            assert!(outs.iter().any(
                |o| matches!(o, Output::Fetch { upstream: Upstream::Peers(v), .. } if *v == vec![a])
            ));
        }
    }

    #[test]
    fn revalidation_with_304_refreshes_and_failures_serve_stale() {
        let mut p = proxy();
        let Answer::Stream { fetch: f, reader } = p.handle_request(Instant::ZERO, &get("/r"))
        else {
            panic!()
        };
        p.handle_lookup(f, &[], None, &[]);
        let _ = outputs(&mut p);
        complete(
            &mut p,
            f,
            "HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nCache-Control: max-age=10\r\nContent-Length: 2\r\n\r\n",
            b"v1",
        );
        let _ = drain(&mut p, f, reader);
        let later = Instant::ZERO + Duration::from_secs(11);
        let Answer::Stream { fetch: f, reader } = p.handle_request(later, &get("/r")) else {
            panic!()
        };
        let outs = outputs(&mut p);
        let Some(Output::Fetch {
            request,
            upstream: Upstream::Origin { .. },
            ..
        }) = outs.iter().find(|o| matches!(o, Output::Fetch { .. }))
        else {
            panic!("{outs:?}")
        };
        assert!(String::from_utf8_lossy(request).contains("If-None-Match: \"v1\""));
        assert!(!p.handle_upstream_head(
            later,
            UNIX,
            f,
            &resp("HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=100\r\n\r\n")
        ));
        let (head, body) = drain(&mut p, f, reader);
        assert!(String::from_utf8(head).unwrap().starts_with("HTTP/1.1 200"));
        assert_eq!(body, b"v1");
        assert_eq!(p.stats().revalidated, 1);
        assert!(matches!(
            p.handle_request(later, &get("/r")),
            Answer::Respond { .. }
        ));
        // Stale and the origin is down: the stale copy is served.
        let much_later = later + Duration::from_secs(200);
        let Answer::Stream { fetch: f, reader } = p.handle_request(much_later, &get("/r")) else {
            panic!()
        };
        let _ = outputs(&mut p);
        p.handle_upstream_end(much_later, f, Err(UpstreamError::Connect));
        let (_, body) = drain(&mut p, f, reader);
        assert_eq!(body, b"v1");
        // Not cached and the origin is down: 502, then negative-cached.
        let Answer::Stream { fetch: f, reader } = p.handle_request(much_later, &get("/dead"))
        else {
            panic!()
        };
        p.handle_lookup(f, &[], None, &[]);
        let _ = outputs(&mut p);
        p.handle_upstream_end(much_later, f, Err(UpstreamError::Connect));
        assert!(matches!(
            p.read(much_later, f, reader, 100),
            Read::Failed { .. }
        ));
        assert_eq!(status(&p.handle_request(much_later, &get("/dead"))), 502);
        assert!(outputs(&mut p).is_empty());
    }

    #[test]
    fn truncated_bodies_are_not_stored_and_big_ones_stream_uncached() {
        let cfg = HttpConfig {
            max_object_bytes: 10,
            ..HttpConfig::default()
        };
        let mut p = Proxy::new(cfg, me(), Id::for_node(me()));
        let Answer::Stream { fetch: f, reader } = p.handle_request(Instant::ZERO, &get("/t"))
        else {
            panic!()
        };
        p.handle_lookup(f, &[], None, &[]);
        assert!(p.handle_upstream_head(
            Instant::ZERO,
            UNIX,
            f,
            &resp("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        ));
        p.handle_upstream_data(f, Bytes::from_static(b"abc"));
        assert!(matches!(
            p.read(Instant::ZERO, f, reader, 100),
            Read::Head { .. }
        ));
        assert_eq!(
            p.read(Instant::ZERO, f, reader, 100),
            Read::Data(Bytes::from_static(b"abc"))
        );
        p.handle_upstream_end(Instant::ZERO, f, Ok(()));
        assert_eq!(p.read(Instant::ZERO, f, reader, 100), Read::Abort);
        assert_eq!(p.cache_stats().objects, 0);
        let Answer::Stream { fetch: f, reader } = p.handle_request(Instant::ZERO, &get("/big"))
        else {
            panic!()
        };
        p.handle_lookup(f, &[], None, &[]);
        assert!(p.handle_upstream_head(Instant::ZERO, UNIX, f, &resp("HTTP/1.1 200 OK\r\n\r\n")));
        let mut got = Vec::new();
        for i in 0..10u8 {
            p.handle_upstream_data(f, Bytes::from(vec![i; 4]));
            loop {
                match p.read(Instant::ZERO, f, reader, 100) {
                    Read::Data(d) => got.extend_from_slice(&d),
                    Read::Head { .. } => {}
                    Read::Pending => break,
                    r => panic!("{r:?}"),
                }
            }
        }
        p.handle_upstream_end(Instant::ZERO, f, Ok(()));
        assert_eq!(p.read(Instant::ZERO, f, reader, 100), Read::End);
        assert_eq!(got.len(), 40);
        assert_eq!(p.cache_stats().objects, 0);
        assert_eq!(p.fetches_in_flight(), 0);
    }

    #[test]
    fn pass_through_forwards_other_methods_uncached_and_invalidates() {
        let cfg = HttpConfig {
            pass_through_methods: true,
            max_upload_bytes: 16,
            ..HttpConfig::default()
        };
        let mut p = Proxy::new(cfg, me(), Id::for_node(me()));
        // A stored object for /doc.
        let Answer::Stream { fetch: f, reader } = p.handle_request(Instant::ZERO, &get("/doc"))
        else {
            panic!()
        };
        p.handle_lookup(f, &[], None, &[]);
        complete(
            &mut p,
            f,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=600\r\n\r\n",
            b"v1",
        );
        let _ = drain(&mut p, f, reader);
        let _ = outputs(&mut p);
        assert!(matches!(
            p.handle_request(Instant::ZERO, &get("/doc")),
            Answer::Respond { .. }
        ));
        // CONNECT stays refused.
        let a = p.handle_request(
            Instant::ZERO,
            &req("CONNECT www.x.com.nyud.net:443 HTTP/1.1\r\nHost: www.x.com.nyud.net\r\n\r\n"),
        );
        assert_eq!(status(&a), 405);
        // A POST with a body: read it, then forward it.
        let post = req(
            "POST /doc HTTP/1.1\r\nHost: www.x.com.nyud.net\r\nContent-Type: text/plain\r\n\
             Cookie: s=1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        );
        let Answer::Upload {
            fetch: f,
            reader,
            framing,
            expect_continue,
        } = p.handle_request(Instant::ZERO, &post)
        else {
            panic!()
        };
        assert_eq!(framing, Framing::Length(5));
        assert!(expect_continue);
        assert!(
            outputs(&mut p).is_empty(),
            "nothing is sent before the body"
        );
        assert!(p.handle_upload_data(f, b"hel"));
        assert!(p.handle_upload_data(f, b"lo"));
        p.handle_upload_end(f);
        let outs = outputs(&mut p);
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Output::Put { .. } | Output::Lookup { .. })),
            "pass-through is neither looked up nor advertised: {outs:?}"
        );
        let [
            Output::Fetch {
                upstream: Upstream::Origin { host, port: 80 },
                request,
                ..
            },
        ] = &outs[..]
        else {
            panic!("{outs:?}")
        };
        assert_eq!(host, "www.x.com");
        let r = String::from_utf8(request.clone()).unwrap();
        assert!(
            r.starts_with("POST /doc HTTP/1.1\r\nHost: www.x.com\r\n"),
            "{r}"
        );
        assert!(
            r.contains("Content-Type: text/plain\r\n")
                || r.contains("content-type: text/plain\r\n"),
            "{r}"
        );
        assert!(
            r.contains("Content-Length: 5\r\n") && r.ends_with("\r\n\r\nhello"),
            "{r}"
        );
        assert!(
            !r.to_ascii_lowercase().contains("cookie") && !r.contains("Expect"),
            "{r}"
        );
        // The origin accepts it: the stored copy (and Location's) is gone.
        assert!(p.handle_upstream_head(
            Instant::ZERO,
            UNIX,
            f,
            &resp("HTTP/1.1 201 Created\r\nLocation: http://WWW.X.COM/doc\r\nContent-Length: 2\r\n\r\n")
        ));
        p.handle_upstream_data(f, Bytes::from_static(b"ok"));
        p.handle_upstream_end(Instant::ZERO, f, Ok(()));
        let (head, body) = drain(&mut p, f, reader);
        assert!(
            String::from_utf8(head)
                .unwrap()
                .starts_with("HTTP/1.1 201 Created")
        );
        assert_eq!(body, b"ok");
        assert!(outputs(&mut p).iter().any(
            |o| matches!(o, Output::Withdraw { key, .. } if *key == Id::for_url("http://www.x.com/doc"))
        ));
        assert_eq!((p.stats().invalidated, p.stats().passed_through), (1, 1));
        assert_eq!(
            p.cache_stats().objects,
            0,
            "the answer to a POST is not stored"
        );
        assert!(
            matches!(
                p.handle_request(Instant::ZERO, &get("/doc")),
                Answer::Stream { .. }
            ),
            "the next GET misses"
        );
        let _ = outputs(&mut p);

        // An error answer invalidates nothing and is not negative-cached.
        let mut p2 = Proxy::new(p.config().clone(), me(), Id::for_node(me()));
        let del = req("DELETE /e HTTP/1.1\r\nHost: www.x.com.nyud.net\r\n\r\n");
        let Answer::Stream { fetch: f, reader } = p2.handle_request(Instant::ZERO, &del) else {
            panic!()
        };
        let outs = outputs(&mut p2);
        assert!(
            matches!(&outs[..], [Output::Fetch { request, .. }] if request.starts_with(b"DELETE /e "))
        );
        complete(
            &mut p2,
            f,
            "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
            b"",
        );
        let _ = drain(&mut p2, f, reader);
        assert_eq!(p2.stats().invalidated, 0);
        assert!(matches!(
            p2.handle_request(Instant::ZERO, &get("/e")),
            Answer::Stream { .. }
        ));

        // Too large: announced, or found while reading a chunked body.
        let big =
            req("PUT /doc HTTP/1.1\r\nHost: www.x.com.nyud.net\r\nContent-Length: 17\r\n\r\n");
        assert_eq!(status(&p.handle_request(Instant::ZERO, &big)), 413);
        let chunked = req(
            "PUT /doc HTTP/1.1\r\nHost: www.x.com.nyud.net\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let Answer::Upload {
            fetch: f,
            reader,
            framing: Framing::Chunked,
            ..
        } = p.handle_request(Instant::ZERO, &chunked)
        else {
            panic!()
        };
        assert!(p.handle_upload_data(f, &[0; 10]));
        assert!(!p.handle_upload_data(f, &[0; 10]));
        let Read::Failed { head, .. } = p.read(Instant::ZERO, f, reader, 100) else {
            panic!()
        };
        assert!(head.starts_with(b"HTTP/1.1 413 "));
        assert_eq!(p.fetches_in_flight(), 1, "the GET of /doc above");
    }

    #[test]
    fn the_disk_tier_is_asked_before_the_dsht_and_gets_every_stored_object() {
        let cfg = HttpConfig {
            disk_tier: true,
            pass_through_methods: true,
            ..HttpConfig::default()
        };
        let mut p = Proxy::new(cfg.clone(), me(), Id::for_node(me()));
        let url = "http://www.x.com/d".to_owned();
        let Answer::Stream { fetch: f, reader } = p.handle_request(Instant::ZERO, &get("/d"))
        else {
            panic!()
        };
        assert!(outputs(&mut p).is_empty());
        assert_eq!(
            p.poll_disk(),
            Some(DiskOp::Read {
                fetch: f,
                url: url.clone()
            })
        );
        assert_eq!(p.poll_disk(), None);
        p.handle_disk_read(Instant::ZERO, f, None);
        assert_eq!(
            outputs(&mut p),
            vec![Output::Lookup {
                fetch: f,
                key: Id::for_url(&url)
            }]
        );
        p.handle_lookup(f, &[], None, &[]);
        let _ = outputs(&mut p);
        complete(
            &mut p,
            f,
            "HTTP/1.1 200 OK\r\nETag: \"d1\"\r\nCache-Control: max-age=60\r\nContent-Length: 4\r\n\r\n",
            b"disk",
        );
        let _ = drain(&mut p, f, reader);
        let Some(DiskOp::Write { url: u, object }) = p.poll_disk() else {
            panic!()
        };
        assert_eq!((&u, &object.body[..]), (&url, &b"disk"[..]));
        let stored = (*object).clone();

        // A restarted proxy: the disk's fresh copy is served, no lookup, no fetch.
        let mut q = Proxy::new(cfg, me(), Id::for_node(me()));
        let t = Instant::ZERO + Duration::from_secs(5);
        let Answer::Stream { fetch: f, reader } = q.handle_request(t, &get("/d")) else {
            panic!()
        };
        let _ = outputs(&mut q);
        assert!(matches!(q.poll_disk(), Some(DiskOp::Read { .. })));
        q.handle_disk_read(t, f, Some(stored.clone()));
        let (head, body) = drain(&mut q, f, reader);
        assert_eq!(body, b"disk");
        assert!(String::from_utf8(head).unwrap().contains("Age: 5\r\n"));
        let outs = outputs(&mut q);
        assert!(
            outs.iter().all(|o| matches!(o, Output::Publish { .. })),
            "served from disk and advertised: {outs:?}"
        );
        assert_eq!(q.poll_disk(), None, "not written back");
        assert_eq!(q.stats().hits_disk, 1);
        assert!(matches!(
            q.handle_request(t, &get("/d")),
            Answer::Respond { .. }
        ));
        assert_eq!(q.stats().hits_local, 1, "now in memory");

        // A stale disk copy is revalidated with the origin.
        let late = Instant::ZERO + Duration::from_secs(100);
        let mut r = Proxy::new(q.config().clone(), me(), Id::for_node(me()));
        let Answer::Stream { fetch: f, .. } = r.handle_request(late, &get("/d")) else {
            panic!()
        };
        let _ = outputs(&mut r);
        let _ = r.poll_disk();
        r.handle_disk_read(late, f, Some(stored));
        let outs = outputs(&mut r);
        assert!(
            outs.iter().any(
                |o| matches!(o, Output::Fetch { request, upstream: Upstream::Origin { .. }, .. }
                if String::from_utf8_lossy(request).contains("If-None-Match: \"d1\""))
            ),
            "{outs:?}"
        );

        // An unsafe request that succeeds removes the disk copy too.
        let del = req("DELETE /d HTTP/1.1\r\nHost: www.x.com.nyud.net\r\n\r\n");
        let Answer::Stream { fetch: f, .. } = q.handle_request(t, &del) else {
            panic!()
        };
        let _ = outputs(&mut q);
        q.handle_upstream_head(t, UNIX, f, &resp("HTTP/1.1 204 No Content\r\n\r\n"));
        assert_eq!(q.poll_disk(), Some(DiskOp::Remove { url }));
    }

    #[test]
    fn own_claims_respect_the_bound_and_expire_with_their_fetch() {
        let cfg = HttpConfig {
            max_claims: 2,
            ..HttpConfig::default()
        };
        let mut p = Proxy::new(cfg, me(), Id::for_node(me()));
        let mut fetches = Vec::new();
        for i in 0..5 {
            let Answer::Stream { fetch, reader } =
                p.handle_request(Instant::ZERO, &get(&format!("/c{i}")))
            else {
                panic!()
            };
            p.handle_lookup(fetch, &[], None, &[]);
            fetches.push((fetch, reader));
            assert!(p.claims.len() <= 2);
        }
        let _ = outputs(&mut p);
        assert_eq!(
            p.stats().origin_fetches,
            5,
            "unrecorded claims are still granted"
        );
        for (f, r) in fetches {
            complete(
                &mut p,
                f,
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
                b"x",
            );
            let _ = drain(&mut p, f, r);
        }
        p.handle_timeout(Instant::ZERO);
        assert!(p.claims.is_empty());
    }
}
