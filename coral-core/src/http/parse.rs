//! HTTP/1.x message heads and chunked bodies: the one file that touches `httparse`.
//!
//! Requests and responses are parsed into owned heads whose header names are
//! lower-cased, so the rest of the proxy compares names with `==`. Untrusted
//! bytes never panic: a bad head is a [`ParseError`] the exchange turns into a
//! status code; a bad chunk is an error the adapter ends the connection on.

use bytes::{Buf, BytesMut};

/// Limits on a message head, from [`super::HttpConfig`].
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Largest head in bytes.
    pub max_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
}

/// Why a head was refused; each maps to one status code.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ParseError {
    /// Not HTTP/1.x (400).
    #[error("malformed HTTP head")]
    Malformed,
    /// Too many bytes or fields (431).
    #[error("HTTP head too large")]
    TooLarge,
}

impl ParseError {
    /// The status code a client gets for it.
    pub const fn status(self) -> u16 {
        match self {
            Self::Malformed => 400,
            Self::TooLarge => 431,
        }
    }
}

/// Header fields in order, names lower-cased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Vec<u8>)>);

impl Headers {
    /// The first value of `name` (lower-case) as text, if it is valid UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Every value of `name`, comma-joined fields split into items.
    pub fn items<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// How many fields named `name` there are.
    pub fn count(&self, name: &str) -> usize {
        self.0.iter().filter(|(n, _)| n == name).count()
    }

    /// Whether a field named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// Removes every field named `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    /// Replaces every field named `name` with one value.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.remove(name);
        self.0.push((name.to_owned(), value.into()));
    }

    fn from_httparse(h: &[httparse::Header<'_>]) -> Self {
        Self(
            h.iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect(),
        )
    }
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The header fields.
    pub headers: Headers,
}

impl RequestHead {
    /// Whether the client asked to keep the connection open afterwards.
    pub fn keep_alive(&self) -> bool {
        let close = self
            .headers
            .items("connection")
            .any(|t| t.eq_ignore_ascii_case("close"));
        let keep = self
            .headers
            .items("connection")
            .any(|t| t.eq_ignore_ascii_case("keep-alive"));
        if self.version == 0 { keep } else { !close }
    }
}

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// The minor version.
    pub version: u8,
    /// The header fields.
    pub headers: Headers,
}

/// How a message body is delimited (RFC 9112 §6).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Parses a request head from the front of `buf`: `Ok(None)` while incomplete,
/// otherwise the head and its length in bytes.
pub fn parse_request(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(RequestHead, usize)>, ParseError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= limits.max_bytes => Ok(Some((
            RequestHead {
                method: req.method.unwrap_or("").to_owned(),
                target: req.path.unwrap_or("").to_owned(),
                version: req.version.unwrap_or(1),
                headers: Headers::from_httparse(req.headers),
            },
            n,
        ))),
        Ok(httparse::Status::Complete(_)) => Err(ParseError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_bytes => Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            Err(ParseError::TooLarge)
        }
        Err(_) => Err(ParseError::Malformed),
    }
}

/// Parses a response head from the front of `buf`, like [`parse_request`].
pub fn parse_response(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(ResponseHead, usize)>, ParseError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= limits.max_bytes => Ok(Some((
            ResponseHead {
                status: resp.code.unwrap_or(0),
                version: resp.version.unwrap_or(1),
                headers: Headers::from_httparse(resp.headers),
            },
            n,
        ))),
        Ok(httparse::Status::Complete(_)) => Err(ParseError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_bytes => Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            Err(ParseError::TooLarge)
        }
        Err(_) => Err(ParseError::Malformed),
    }
}

/// The body framing of a request (RFC 9112 §6.3): chunked, a valid single
/// `Content-Length`, or none. Conflicting or invalid lengths are malformed
/// (request smuggling defence).
pub fn request_framing(head: &RequestHead) -> Result<Framing, ParseError> {
    if head.headers.contains("transfer-encoding") {
        let last = head.headers.items("transfer-encoding").last();
        return match last {
            Some(t) if t.eq_ignore_ascii_case("chunked") => {
                if head.headers.contains("content-length") {
                    Err(ParseError::Malformed)
                } else {
                    Ok(Framing::Chunked)
                }
            }
            _ => Err(ParseError::Malformed),
        };
    }
    match content_length(&head.headers)? {
        Some(0) | None => Ok(Framing::Empty),
        Some(n) => Ok(Framing::Length(n)),
    }
}

/// The body framing of a response to a request with `method` (RFC 9112 §6.3).
pub fn response_framing(method_is_head: bool, head: &ResponseHead) -> Result<Framing, ParseError> {
    if method_is_head || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(Framing::Empty);
    }
    if head.headers.contains("transfer-encoding") {
        let chunked = head
            .headers
            .items("transfer-encoding")
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    match content_length(&head.headers)? {
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::Close),
    }
}

fn content_length(h: &Headers) -> Result<Option<u64>, ParseError> {
    let mut found: Option<u64> = None;
    for v in h.items("content-length") {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 18 {
            return Err(ParseError::Malformed);
        }
        let n: u64 = v.parse().map_err(|_| ParseError::Malformed)?;
        if found.is_some_and(|f| f != n) {
            return Err(ParseError::Malformed);
        }
        found = Some(n);
    }
    Ok(found)
}

/// Decodes a chunked body incrementally (RFC 9112 §7.1); trailers are skipped.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    /// Bytes left in the current chunk's data, then its CRLF.
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Takes what it can from `input`, appending body bytes to `out`.
    /// Returns `Ok(true)` once the last chunk and trailers were read.
    pub fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut Vec<bytes::Bytes>,
    ) -> Result<bool, ParseError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Size => match httparse::parse_chunk_size(input) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        input.advance(used);
                        self.state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if input.len() < 1024 => return Ok(false),
                    _ => return Err(ParseError::Malformed),
                },
                ChunkState::Data(left) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.push(input.split_to(take).freeze());
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if input.len() < 2 {
                        return Ok(false);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(ParseError::Malformed);
                    }
                    input.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // Trailer lines end with an empty line; they are dropped.
                    let Some(pos) = input.windows(2).position(|w| w == b"\r\n") else {
                        if input.len() > 8192 {
                            return Err(ParseError::TooLarge);
                        }
                        return Ok(false);
                    };
                    input.advance(pos + 2);
                    if pos == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// Appends one chunk of the chunked coding (empty data is skipped: it would end the body).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    const L: HeadLimits = HeadLimits {
        max_bytes: 1024,
        max_headers: 8,
    };

    #[test]
    fn request_heads_parse_partial_and_refuse_garbage_and_excess() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: X.nyud.net\r\nConnection: close\r\n\r\nrest";
        let (h, n) = parse_request(raw, L).unwrap().unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), n),
            ("GET", "/a?b=1", raw.len() - 4)
        );
        assert_eq!(h.headers.get("host"), Some("X.nyud.net"));
        assert!(!h.keep_alive());
        assert_eq!(parse_request(&raw[..10], L), Ok(None));
        assert_eq!(
            parse_request(b"\x00\x01 junk\r\n\r\n", L),
            Err(ParseError::Malformed)
        );
        let many: String = (0..20).map(|i| format!("X-{i}: y\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_request(raw.as_bytes(), L), Err(ParseError::TooLarge));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
        assert_eq!(parse_request(long.as_bytes(), L), Err(ParseError::TooLarge));
    }

    #[test]
    fn framing_follows_rfc9112_and_refuses_conflicts() {
        let (h, _) = parse_request(
            b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            L,
        )
        .unwrap()
        .unwrap();
        assert_eq!(request_framing(&h), Err(ParseError::Malformed));
        let (h, _) = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", L)
            .unwrap()
            .unwrap();
        assert_eq!(response_framing(false, &h), Ok(Framing::Chunked));
        assert_eq!(response_framing(true, &h), Ok(Framing::Empty));
        let (h, _) = parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", L)
            .unwrap()
            .unwrap();
        assert_eq!(response_framing(false, &h), Ok(Framing::Empty));
        let (h, _) = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", L)
            .unwrap()
            .unwrap();
        assert_eq!(response_framing(false, &h), Ok(Framing::Close));
    }

    #[test]
    fn chunked_round_trips_in_any_split() {
        let mut enc = Vec::new();
        encode_chunk(b"hello ", &mut enc);
        encode_chunk(b"world", &mut enc);
        enc.extend_from_slice(b"0\r\nX-T: 1\r\n\r\n");
        for split in 0..enc.len() {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut input = BytesMut::from(&enc[..split]);
            let done = d.decode(&mut input, &mut out).unwrap();
            assert!(!done);
            input.extend_from_slice(&enc[split..]);
            assert!(d.decode(&mut input, &mut out).unwrap());
            let body: Vec<u8> = out.concat();
            assert_eq!(body, b"hello world");
        }
        let mut d = ChunkedDecoder::default();
        let mut input = BytesMut::from(&b"zz\r\n"[..]);
        assert!(d.decode(&mut input, &mut Vec::new()).is_err());
    }
}
