//! The admin endpoint on the node's own loop: `GET /` (HTML status page),
//! `GET /metrics` (Prometheus text) and `GET /status.json`, routed and
//! rendered by coral-tokio's [`route`] and [`render`] so both runtimes
//! answer byte for byte alike. It keeps coral-tokio's limits: one request
//! per connection, `GET`/`HEAD` only, a head of at most 8 KiB that must
//! arrive within 5 s (else 431 / 408), at most 64 connections at once (more
//! wait in the kernel's backlog). Request heads are parsed by `httparse`.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use coral_tokio::admin::{Route, render, route};
use coral_tokio::httpd::{Response, reason};
use coral_tokio::status::NodeStatus;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use tracing::debug;

use crate::runtime::FIRST_CONN;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most headers parsed.
const MAX_HEADERS: usize = 32;
/// Time a client has to send its whole head, and to read the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// The bytes of a whole response (the body left out for `HEAD`).
fn encode(r: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    out
}

/// What a complete or failed head asks for.
enum Parsed {
    Partial,
    Get { route: Option<Route>, head: bool },
    Status(u16),
}

fn parse(head: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let method = req.method.unwrap_or("");
            if method != "GET" && method != "HEAD" {
                return Parsed::Status(405);
            }
            let path = req.path.unwrap_or("/");
            let path = path.split(['?', '#']).next().unwrap_or("/");
            Parsed::Get {
                route: route(path),
                head: method == "HEAD",
            }
        }
        Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => Parsed::Partial,
        Ok(httparse::Status::Partial) => Parsed::Status(431),
        Err(_) => Parsed::Status(400),
    }
}

struct Conn {
    stream: TcpStream,
    head: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    responded: bool,
    deadline: Instant,
}

/// The listener and its connections.
pub(crate) struct Admin {
    listener: TcpListener,
    conns: Slab<Conn>,
    /// The listener may hold connections not accepted for lack of room.
    backlog: bool,
}

impl Admin {
    pub(crate) fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            conns: Slab::with_capacity(MAX_CONNECTIONS),
            backlog: false,
        }
    }

    /// The earliest connection deadline, if any connection is open.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|(_, c)| c.deadline).min()
    }

    /// Accepts until `WouldBlock` or until the connection cap is reached.
    pub(crate) fn accept_ready(&mut self, registry: &Registry) {
        self.backlog = true;
        while self.conns.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    let entry = self.conns.vacant_entry();
                    let token = Token(FIRST_CONN + entry.key());
                    if let Err(e) = registry.register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        debug!(%peer, error = %e, "cannot register an admin connection");
                        continue;
                    }
                    entry.insert(Conn {
                        stream,
                        head: Vec::with_capacity(1024),
                        out: Vec::new(),
                        written: 0,
                        responded: false,
                        deadline: Instant::now() + IO_TIMEOUT,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backlog = false;
                    return;
                }
                Err(e) => {
                    // Out of file descriptors and the like: retry when a
                    // connection closes.
                    debug!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    /// Reads, answers and writes for connection `key`; `snapshot` is called
    /// only when a complete request needs the node's state, and
    /// `more_metrics` (the HTTP proxy's counters) only for `/metrics`.
    pub(crate) fn connection_ready(
        &mut self,
        registry: &Registry,
        key: usize,
        readable: bool,
        writable: bool,
        snapshot: impl FnOnce() -> NodeStatus,
        more_metrics: impl FnOnce() -> String,
    ) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut open = true;
        if readable && !c.responded {
            let mut chunk = [0u8; 1024];
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(n) => {
                        c.head.extend_from_slice(&chunk[..n]);
                        match parse(&c.head) {
                            Parsed::Partial => {}
                            Parsed::Get { route, head } => {
                                let r = match route {
                                    None => Response::error(404),
                                    Some(Route::Metrics) => {
                                        let mut r = render(Route::Metrics, &snapshot());
                                        let more = more_metrics();
                                        if !more.is_empty() {
                                            let mut body = r.body.to_vec();
                                            body.extend_from_slice(more.as_bytes());
                                            r.body = body.into();
                                        }
                                        r
                                    }
                                    Some(route) => render(route, &snapshot()),
                                };
                                respond(c, &r, head);
                                break;
                            }
                            Parsed::Status(code) => {
                                respond(c, &Response::error(code), false);
                                break;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        if open && c.responded && (writable || c.written == 0) {
            open = write_out(c);
        }
        if !open {
            self.close(registry, key);
        }
    }

    /// Answers 408 to connections whose head is late, and closes those
    /// whose response is not taken in time.
    pub(crate) fn expire(&mut self, registry: &Registry, now: Instant) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| k)
            .collect();
        for key in late {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.responded {
                self.close(registry, key);
            } else {
                respond(c, &Response::error(408), false);
                if !write_out(c) {
                    self.close(registry, key);
                }
            }
        }
        if self.backlog && self.conns.len() < MAX_CONNECTIONS {
            self.accept_ready(registry);
        }
    }

    fn close(&mut self, registry: &Registry, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = registry.deregister(&mut c.stream);
        }
        if self.backlog {
            self.accept_ready(registry);
        }
    }
}

fn respond(c: &mut Conn, r: &Response, head_only: bool) {
    c.out = encode(r, head_only);
    c.written = 0;
    c.responded = true;
    c.deadline = Instant::now() + IO_TIMEOUT;
}

/// Writes what it can; false once the connection is done (all written and
/// shut down, or failed).
fn write_out(c: &mut Conn) -> bool {
    while c.written < c.out.len() {
        match c.stream.write(&c.out[c.written..]) {
            Ok(0) => return false,
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    let _ = c.stream.shutdown(Shutdown::Write);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_as_coral_tokio_answers_them() {
        assert!(matches!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Get {
                route: Some(Route::Metrics),
                head: false
            }
        ));
        assert!(matches!(
            parse(b"HEAD / HTTP/1.1\r\n\r\n"),
            Parsed::Get {
                route: Some(Route::Html),
                head: true
            }
        ));
        assert!(matches!(
            parse(b"GET /nope HTTP/1.1\r\n\r\n"),
            Parsed::Get { route: None, .. }
        ));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHo"), Parsed::Partial));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\n\r\n"),
            Parsed::Status(405)
        ));
        assert!(matches!(parse(b"\x00\x01 x\r\n\r\n"), Parsed::Status(400)));
        let mut huge = b"GET / HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert!(matches!(parse(&huge), Parsed::Status(431)));
    }

    #[test]
    fn responses_carry_the_reason_and_length() {
        let r = encode(&Response::error(404), false);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 14\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n404 Not Found\n"), "{text}");
        let head = encode(&Response::ok("text/plain", "abc"), true);
        let text = String::from_utf8(head).unwrap();
        assert!(text.contains("Content-Length: 3\r\n") && text.ends_with("\r\n\r\n"));
        assert_eq!(reason(431), "Request Header Fields Too Large");
    }
}
