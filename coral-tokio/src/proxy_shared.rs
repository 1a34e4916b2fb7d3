//! The HTTP proxy adapter's work that does not depend on how a runtime
//! waits for sockets, shared by this crate's tokio proxy and coral-mio's
//! epoll loop so both move the same bytes the same way.
//!
//! Every decision stays in [`coral_core::http::Proxy`]; what lives here is
//! mechanics around it: the bare status responses an adapter sends before
//! the core sees a request (a full server's 503, a slow head's 408, an
//! unparsable head's 400/431), the per-client connection count, reading an
//! upstream response head and body off a byte buffer with the framing the
//! core's parser names, writing what [`Proxy::read`] hands a client
//! (including chunk framing), the choice of a resolved origin address the
//! core allows, and the Prometheus text of the proxy's counters.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use coral_core::http::parse::{self, ChunkedDecoder, Framing, HeadLimits, ResponseHead};
use coral_core::http::{FetchId, Proxy, Read, UpstreamError};

/// The answer to a client turned away because the proxy (or its address's
/// share of it) is full: quick, so a volunteer box sheds load instead of
/// queueing it.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
    Retry-After: 1\r\nConnection: close\r\n\r\n";

/// A bodiless response with `status` that closes the connection: what an
/// adapter sends when a head never completes (408) or cannot be parsed
/// (the parser's 400 or 431).
pub fn bare_response(status: u16) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        crate::httpd::reason(status)
    )
    .into_bytes()
}

/// Seconds since the Unix epoch, which the core's freshness rules take
/// with every upstream head (`Date`, `Expires`, `Last-Modified`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Open client connections per address, for the per-client limit. An
/// entry lives only while its count is above zero, so the map never holds
/// more addresses than there are open connections.
#[derive(Debug, Default)]
pub struct PerClient {
    counts: BTreeMap<IpAddr, usize>,
}

impl PerClient {
    /// Counts one more connection from `ip`, unless it already has `limit`.
    pub fn take(&mut self, ip: IpAddr, limit: usize) -> bool {
        let n = self.counts.entry(ip).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                self.counts.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a connection [`Self::take`] counted.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.counts.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&ip);
            }
        }
    }

    /// Addresses with a connection open.
    pub fn addresses(&self) -> usize {
        self.counts.len()
    }
}

/// Takes a complete response head off the front of `buf`; `Ok(None)`
/// while it is still partial, an error when it is not HTTP (or too large).
pub fn take_response_head(
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<Option<ResponseHead>, UpstreamError> {
    match parse::parse_response(buf, limits) {
        Ok(Some((head, n))) => {
            let _ = buf.split_to(n);
            Ok(Some(head))
        }
        Ok(None) => Ok(None),
        Err(_) => Err(UpstreamError::Protocol),
    }
}

/// The first address the origin's name resolved to that the core allows
/// (its SSRF rule): [`UpstreamError::Dns`] when there is none at all,
/// [`UpstreamError::Forbidden`] when every one is refused.
pub fn allowed_origin_addr(
    core: &Proxy,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> Result<SocketAddr, UpstreamError> {
    let mut any = false;
    for a in addrs {
        any = true;
        if core.origin_addr_allowed(a.ip()) {
            return Ok(a);
        }
    }
    Err(if any {
        UpstreamError::Forbidden
    } else {
        UpstreamError::Dns
    })
}

/// An upstream response body read off a byte stream: by `Content-Length`,
/// by chunks, or until the connection closes, as the head's framing says.
#[derive(Debug)]
pub struct BodyReader {
    left: Option<u64>,
    chunked: Option<ChunkedDecoder>,
    done: bool,
}

impl BodyReader {
    /// A reader for a body framed as `framing` (from
    /// [`parse::response_framing`]).
    pub fn new(framing: Framing) -> Self {
        Self {
            left: match framing {
                Framing::Length(n) => Some(n),
                Framing::Empty => Some(0),
                _ => None,
            },
            chunked: (framing == Framing::Chunked).then(ChunkedDecoder::default),
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    /// Moves the body bytes in `buf` to `out` (as zero-copy pieces of it);
    /// returns whether the body is complete. Bytes past a length-framed
    /// body are left in `buf`.
    pub fn feed(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<Bytes>,
    ) -> Result<bool, UpstreamError> {
        if self.done || buf.is_empty() {
            return Ok(self.done);
        }
        if let Some(d) = self.chunked.as_mut() {
            self.done = d.decode(buf, out).map_err(|_| UpstreamError::Protocol)?;
            return Ok(self.done);
        }
        let mut take = buf.len();
        if let Some(l) = self.left.as_mut() {
            take = take.min(usize::try_from(*l).unwrap_or(usize::MAX));
            *l -= take as u64;
            self.done = *l == 0;
        }
        out.push(buf.split_to(take).freeze());
        Ok(self.done)
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The upstream closed the connection: the end of a body framed by the
    /// close, and a truncated body otherwise.
    pub fn at_close(&self) -> Result<(), UpstreamError> {
        if self.done || (self.left.is_none() && self.chunked.is_none()) {
            Ok(())
        } else {
            Err(UpstreamError::Protocol)
        }
    }
}

/// Hands pieces of a pass-through request's body to the core, then its
/// end once `done`; returns whether the core wants more (when not, stop
/// reading the body: it is too large, and the reader gets the 413).
pub fn upload(
    core: &mut Proxy,
    f: FetchId,
    pieces: impl IntoIterator<Item = Bytes>,
    done: bool,
) -> bool {
    let mut wanted = true;
    for p in pieces {
        wanted = wanted && core.handle_upload_data(f, &p);
    }
    if wanted && done {
        core.handle_upload_end(f);
    }
    wanted
}

/// What a client connection does after writing one [`Read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask the core for more at once.
    More,
    /// Nothing yet: wait until the fetch makes progress.
    Pending,
    /// The response is complete; the connection may carry another request
    /// when `keep_alive`, and is closed otherwise.
    Done {
        /// Whether the connection stays open.
        keep_alive: bool,
    },
}

/// Turns what [`Proxy::read`] hands one client into the bytes to write:
/// the head, then the body as it arrives, in chunks when the core says the
/// length is unknown (cut-through needs no copy: body pieces are handed on
/// as the core's own [`Bytes`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseWriter {
    chunked: bool,
    keep_alive: bool,
}

impl ResponseWriter {
    /// Hands the bytes for `read` to `write`, in order; says what next.
    pub fn step(&mut self, read: Read, mut write: impl FnMut(Bytes)) -> Step {
        match read {
            Read::Head {
                head,
                chunked,
                keep_alive,
            } => {
                self.chunked = chunked;
                self.keep_alive = keep_alive;
                write(Bytes::from(head));
                Step::More
            }
            Read::Data(d) => {
                if d.is_empty() {
                    return Step::More;
                }
                if self.chunked {
                    write(Bytes::from(format!("{:x}\r\n", d.len())));
                    write(d);
                    write(Bytes::from_static(b"\r\n"));
                } else {
                    write(d);
                }
                Step::More
            }
            Read::Pending => Step::Pending,
            Read::End => {
                if self.chunked {
                    write(Bytes::from_static(parse::LAST_CHUNK));
                }
                Step::Done {
                    keep_alive: self.keep_alive,
                }
            }
            Read::Failed { head, body } => {
                write(Bytes::from(head));
                if !body.is_empty() {
                    write(body);
                }
                Step::Done { keep_alive: false }
            }
            Read::Abort => Step::Done { keep_alive: false },
        }
    }
}

/// Prometheus text for the proxy's counters, appended to the admin
/// endpoint's `/metrics`.
pub fn metrics(core: &Proxy) -> String {
    use std::fmt::Write as _;
    let (s, c, inflight) = (core.stats(), core.cache_stats(), core.fetches_in_flight());
    let mut o = String::new();
    o.push_str("# HELP coral_http_served_total Responses by where they were served from.\n");
    o.push_str("# TYPE coral_http_served_total counter\n");
    let served = [
        ("local", s.hits_local),
        ("peer_level0", s.hits_peer[0]),
        ("peer_level1", s.hits_peer[1]),
        ("peer_level2", s.hits_peer[2]),
        ("peer_claim", s.hits_peer[3]),
        ("origin", s.hits_origin),
        ("stale", s.served_stale),
        ("disk", s.hits_disk),
    ];
    for (from, v) in served {
        let _ = writeln!(o, "coral_http_served_total{{from=\"{from}\"}} {v}");
    }
    let counters = [
        ("requests", s.requests),
        ("refused", s.refused),
        ("origin_fetches", s.origin_fetches),
        ("peer_fetches", s.peer_fetches),
        ("revalidated", s.revalidated),
        ("coalesced", s.coalesced),
        ("claims_granted", s.claims_granted),
        ("claims_held", s.claims_held),
        ("bytes_served", s.bytes_served),
        ("bytes_fetched", s.bytes_fetched),
        ("passed_through", s.passed_through),
        ("invalidated", s.invalidated),
        ("cache_evictions", c.evictions),
    ];
    for (name, v) in counters {
        let _ = writeln!(
            o,
            "# TYPE coral_http_{name}_total counter\ncoral_http_{name}_total {v}"
        );
    }
    let gauges = [
        ("cache_objects", c.objects as u64),
        ("cache_bytes", c.bytes as u64),
        ("cache_budget_bytes", c.budget as u64),
        ("fetches_in_flight", inflight as u64),
    ];
    for (name, v) in gauges {
        let _ = writeln!(o, "# TYPE coral_http_{name} gauge\ncoral_http_{name} {v}");
    }
    o
}

#[cfg(test)]
mod tests {
    use coral_core::http::HttpConfig;
    use coral_core::id::Id;

    use super::*;

    #[test]
    fn per_client_counts_up_to_the_limit_and_forgets_empty_addresses() {
        let mut p = PerClient::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(p.take(a, 2) && p.take(a, 2));
        assert!(!p.take(a, 2), "a third connection is over the limit");
        assert!(p.take(b, 2));
        assert!(!p.take(b, 0));
        assert_eq!(p.addresses(), 2);
        p.release(a);
        assert!(p.take(a, 2));
        p.release(a);
        p.release(a);
        p.release(b);
        p.release(b);
        assert_eq!(p.addresses(), 0);
    }

    #[test]
    fn bodies_are_read_by_length_by_chunks_and_until_close() {
        let mut out = Vec::new();
        let mut r = BodyReader::new(Framing::Length(5));
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(r.feed(&mut buf, &mut out), Ok(false));
        assert_eq!(r.at_close(), Err(UpstreamError::Protocol));
        let mut buf = BytesMut::from(&b"deXTRA"[..]);
        assert_eq!(r.feed(&mut buf, &mut out), Ok(true));
        assert_eq!(&buf[..], b"XTRA", "bytes past the body stay");
        assert_eq!(out.concat(), b"abcde");

        out.clear();
        let mut r = BodyReader::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n"[..]);
        assert_eq!(r.feed(&mut buf, &mut out), Ok(false));
        let mut buf = BytesMut::from(&b"\r\n"[..]);
        assert_eq!(r.feed(&mut buf, &mut out), Ok(true));
        assert_eq!(out.concat(), b"abc");
        let mut bad = BodyReader::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert_eq!(bad.feed(&mut buf, &mut out), Err(UpstreamError::Protocol));

        out.clear();
        let mut r = BodyReader::new(Framing::Close);
        let mut buf = BytesMut::from(&b"all of it"[..]);
        assert_eq!(r.feed(&mut buf, &mut out), Ok(false));
        assert_eq!(r.at_close(), Ok(()));
        assert!(BodyReader::new(Framing::Empty).is_done());
    }

    #[test]
    fn heads_are_taken_off_the_buffer() {
        let limits = HttpConfig::default().head_limits();
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Len"[..]);
        assert_eq!(take_response_head(&mut buf, limits), Ok(None));
        buf.extend_from_slice(b"gth: 2\r\n\r\nhi");
        let head = take_response_head(&mut buf, limits).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(&buf[..], b"hi");
        let mut junk = BytesMut::from(&b"\x00\x01 nonsense\r\n\r\n"[..]);
        assert_eq!(
            take_response_head(&mut junk, limits),
            Err(UpstreamError::Protocol)
        );
    }

    #[test]
    fn the_writer_frames_chunks_and_says_what_next() {
        let mut w = ResponseWriter::default();
        let mut out = Vec::new();
        let head = Read::Head {
            head: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            chunked: true,
            keep_alive: true,
        };
        assert_eq!(w.step(head, |b| out.push(b)), Step::More);
        let data = Read::Data(Bytes::from_static(b"0123456789abcdef!"));
        assert_eq!(w.step(data, |b| out.push(b)), Step::More);
        assert_eq!(w.step(Read::Pending, |b| out.push(b)), Step::Pending);
        assert_eq!(
            w.step(Read::End, |b| out.push(b)),
            Step::Done { keep_alive: true }
        );
        assert_eq!(
            out.concat(),
            b"HTTP/1.1 200 OK\r\n\r\n11\r\n0123456789abcdef!\r\n0\r\n\r\n"
        );
        let mut w = ResponseWriter::default();
        let failed = Read::Failed {
            head: b"H".to_vec(),
            body: Bytes::from_static(b"B"),
        };
        out.clear();
        assert_eq!(
            w.step(failed, |b| out.push(b)),
            Step::Done { keep_alive: false }
        );
        assert_eq!(out.concat(), b"HB");
        assert_eq!(
            w.step(Read::Abort, |b| out.push(b)),
            Step::Done { keep_alive: false }
        );
    }

    #[test]
    fn origin_addresses_pass_the_cores_rule() {
        let me: SocketAddr = "127.0.0.1:8090".parse().unwrap();
        let core = Proxy::new(HttpConfig::default(), me, Id::for_node(me));
        let private: SocketAddr = "10.1.2.3:80".parse().unwrap();
        let public: SocketAddr = "93.184.216.34:80".parse().unwrap();
        assert_eq!(allowed_origin_addr(&core, []), Err(UpstreamError::Dns));
        assert_eq!(
            allowed_origin_addr(&core, [private]),
            Err(UpstreamError::Forbidden)
        );
        assert_eq!(allowed_origin_addr(&core, [private, public]), Ok(public));
    }

    #[test]
    fn bare_responses_and_metrics_read_as_http_and_prometheus() {
        let r = String::from_utf8(bare_response(408)).unwrap();
        assert!(r.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{r}");
        assert!(r.ends_with("Connection: close\r\n\r\n"), "{r}");
        assert!(BUSY.starts_with(b"HTTP/1.1 503 "));
        let me: SocketAddr = "127.0.0.1:8090".parse().unwrap();
        let core = Proxy::new(HttpConfig::default(), me, Id::for_node(me));
        let m = metrics(&core);
        assert!(
            m.contains("coral_http_served_total{from=\"local\"} 0\n"),
            "{m}"
        );
        assert!(m.contains("coral_http_requests_total 0\n"), "{m}");
        assert!(m.contains("# TYPE coral_http_cache_bytes gauge\n"), "{m}");
    }
}
