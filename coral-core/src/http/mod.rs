//! Coral's cooperative HTTP proxy (spec §7), as sans-IO state machines.
//!
//! - [`parse`]: HTTP/1.x heads and chunked bodies (the one file using `httparse`);
//! - [`host`]: Coralized names (`www.x.com.nyud.net`) back into origin URLs;
//! - [`freshness`]: RFC 9111 storability, lifetimes and ages;
//! - [`cache`]: the object store (S3-FIFO under a byte budget);
//! - [`range`]: byte ranges from a complete object;
//! - [`ssrf`]: which resolved origin addresses may be contacted;
//! - [`proxy`]: the exchange — for each request, serve a local copy, join an
//!   in-flight fetch of the same URL, or fetch from peers found in the DSHT
//!   or from the origin, streaming to every waiter and into the cache at once.
//!
//! # One origin fetch per object for the whole network ("Beyond Coral")
//!
//! Coral puts a 20-second "fetching" reference to itself in the DSHT when a
//! fetch starts, so proxies that miss *later* fetch from it. Proxies that
//! miss before that reference is stored (a flash crowd's first second) all
//! go to the origin. We close that window with a **claim at the key's
//! arbiter**: the node whose id is XOR-closest to `Id::for_url(url)`, as
//! the adapter finds it with `Node::find_closest` (a level-0 walk toward
//! the key that every proxy asking about it converges on), together with
//! the level-0 nodes the proxy knows (itself included). Every total miss —
//! a DSHT get at all levels that found no holder — asks the arbiter, over
//! HTTP with an `X-Coral-Claim: <claimer>` header, before touching the
//! origin. The arbiter's proxy is one state machine, so claims are
//! serialized: the first claimer of a URL is *granted* (it fetches from the
//! origin and puts its fetching reference), every later claimer within the
//! claim lifetime is told the holder (`X-Coral-Holder`) and fetches from it
//! with `Cache-Control: only-if-cached`, which the holder serves cut-through
//! from its in-flight fetch. An arbiter that holds the object itself, or is
//! fetching it from upstream, names itself. Because a claimer is told a
//! holder only when that holder's fetch is decided (granted, or served by a
//! peer), waiting never forms a cycle; and a holder that fails sends its
//! waiters to the origin, as Coral would.
//!
//! When the walk fails or times out and two proxies pick different
//! arbiters from their own routing tables, the object is fetched once per
//! arbiter, never wrongly: the claim degrades to Coral's behaviour, not
//! below it.

use std::net::SocketAddr;
use std::time::Duration;

pub mod cache;
pub mod freshness;
pub mod host;
pub mod parse;
pub mod proxy;
pub mod range;
pub mod ssrf;

pub use proxy::{
    Answer, DiskOp, FetchId, Output, Proxy, ProxyStats, Read, ReaderId, Upstream, UpstreamError,
};

/// Every tunable of the HTTP proxy, with the reason for each default.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Coral domain suffixes, lower-case without a leading dot. `nyud.net`
    /// is the paper's; `nyucd.net` carries the long form (spec §6.1).
    pub suffixes: Vec<String>,
    /// Port every Coral proxy listens on (the DNS server hands out bare
    /// addresses, so the port is network-wide; spec §7, the paper's 8090).
    pub peer_port: u16,
    /// Largest object stored (spec §7.3: 50 MB after 700 MB videos were
    /// served). Larger responses are streamed to the client uncached.
    pub max_object_bytes: u64,
    /// Memory budget of the object cache: 256 MB fits a small volunteer box.
    pub cache_bytes: usize,
    /// Freshness for responses with no validator and no freshness
    /// information: Coral used 12 h (spec §7.3); 0 is strict RFC 9111.
    pub default_lifetime: Duration,
    /// Heuristic freshness as a fraction of `Date − Last-Modified`: 10%,
    /// RFC 9111 §4.2.2's typical value.
    pub heuristic_fraction: f64,
    /// Cap on heuristic freshness: one day, so an old file is rechecked daily.
    pub heuristic_max: Duration,
    /// Freshness of a 404/410 without explicit freshness: 5 minutes (open question 16).
    pub negative_ttl_not_found: Duration,
    /// How long an origin failure (DNS, connect, 5xx) is remembered: 30 s
    /// (open question 16), shielding a dead origin from a crowd.
    pub negative_ttl_error: Duration,
    /// Lifetime of the "fetching" reference put when a fetch starts (20 s, spec §7.1).
    pub fetching_ref_ttl: Duration,
    /// Upper bound on a complete object's reference (1 h, spec §7.1 step 9).
    pub max_ref_ttl: Duration,
    /// Referrals tried in parallel; the first to answer wins (3, open question 15).
    pub max_referrals: usize,
    /// Whether total misses claim the URL at its arbiter before going to the origin.
    pub claims: bool,
    /// How long a claim holds: as long as the fetching reference, which
    /// takes over from it.
    pub claim_ttl: Duration,
    /// Most claims an arbiter remembers; when full, new claims are granted
    /// unrecorded (Coral's behaviour) rather than refused.
    pub max_claims: usize,
    /// Most distinct URLs fetched at once; more are answered 503.
    pub max_fetches: usize,
    /// Most negative-cache entries.
    pub max_negative: usize,
    /// Largest request or response head, bytes (8 KiB, like nginx's default buffers).
    pub max_head_bytes: usize,
    /// Most header fields in a head (64).
    pub max_headers: usize,
    /// Origin networks allowed although private (the SSRF allow-list).
    pub allow_origins: Vec<ssrf::IpNet>,
    /// Other methods forwarded uncached, invalidating the stored object
    /// (RFC 9111 §4.4); off for an open proxy. For an operator running
    /// Coral in front of their own site (form posts, uploads). CONNECT is
    /// refused regardless.
    pub pass_through_methods: bool,
    /// Largest request body forwarded by pass-through, bytes: 10 MB. The
    /// body is held until complete (so a failed upload never reaches the
    /// origin half-sent), hence a bound; larger ones get 413.
    pub max_upload_bytes: u64,
    /// Whether the adapter keeps a disk tier (`--data-dir`): the core then
    /// hands it every object it stores ([`DiskOp::Write`]) and asks it
    /// ([`DiskOp::Read`]) before looking a memory miss up in the DSHT,
    /// through [`Proxy::poll_disk`]. Off by default: nothing is queued there.
    pub disk_tier: bool,
    /// This proxy's `Via` pseudonym and `User-Agent` product.
    pub product: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            suffixes: vec!["nyud.net".to_owned(), "nyucd.net".to_owned()],
            peer_port: 8090,
            max_object_bytes: 50 * 1000 * 1000,
            cache_bytes: 256 << 20,
            default_lifetime: Duration::from_secs(12 * 3600),
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(86_400),
            negative_ttl_not_found: Duration::from_secs(300),
            negative_ttl_error: Duration::from_secs(30),
            fetching_ref_ttl: Duration::from_secs(20),
            max_ref_ttl: Duration::from_secs(3600),
            max_referrals: 3,
            claims: true,
            claim_ttl: Duration::from_secs(20),
            max_claims: 65_536,
            max_fetches: 4096,
            max_negative: 65_536,
            max_head_bytes: 8 * 1024,
            max_headers: 64,
            allow_origins: Vec::new(),
            pass_through_methods: false,
            max_upload_bytes: 10 * 1000 * 1000,
            disk_tier: false,
            product: "coral-rs".to_owned(),
        }
    }
}

impl HttpConfig {
    /// The head limits for the parser.
    pub fn head_limits(&self) -> parse::HeadLimits {
        parse::HeadLimits {
            max_bytes: self.max_head_bytes,
            max_headers: self.max_headers,
        }
    }
}

/// The DSHT value a proxy stores under a URL key: "my HTTP proxy at this
/// address holds (or is fetching) it". Tag `H`, then 4 or 16 address bytes,
/// then the port, big-endian. The fetching and complete references are the
/// same bytes, so the longer-lived put overwrites the shorter (spec §7.1).
pub fn holder_value(http: SocketAddr) -> bytes::Bytes {
    let mut v = vec![b'H'];
    match http.ip() {
        std::net::IpAddr::V4(a) => v.extend_from_slice(&a.octets()),
        std::net::IpAddr::V6(a) => v.extend_from_slice(&a.octets()),
    }
    v.extend_from_slice(&http.port().to_be_bytes());
    bytes::Bytes::from(v)
}

/// The address in a value made by [`holder_value`]; `None` for anything else.
pub fn holder_from_value(v: &[u8]) -> Option<SocketAddr> {
    let (tag, rest) = v.split_first()?;
    if *tag != b'H' {
        return None;
    }
    let (ip, port) = rest.split_at_checked(rest.len().checked_sub(2)?)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip = match ip.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(ip).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(ip).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_values_round_trip_and_garbage_is_refused() {
        for a in ["127.0.0.10:8090", "[2001:db8::1]:80"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(holder_from_value(&holder_value(a)), Some(a));
        }
        assert_eq!(holder_from_value(b"H123"), None);
        assert_eq!(holder_from_value(b""), None);
        assert_eq!(holder_from_value(b"X\x7f\0\0\x01\x1f\x90"), None);
    }
}
