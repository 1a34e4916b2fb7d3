//! A deliberately small HTTP/1.x server for the admin endpoint and the
//! testnet's origin: one request per connection, `GET`/`HEAD` only, headers
//! bounded in size and time, a bounded number of connections at once.
//! Parsing is `httparse`'s; nothing here is on Coral's data path.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::debug;

use crate::runtime::BindError;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most headers parsed.
const MAX_HEADERS: usize = 32;
/// Time a client has to send its whole request head, and to read the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// A parsed request: what the handlers need and nothing more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The path without the query string.
    pub path: String,
}

/// A complete response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: bytes::Bytes,
    /// `Cache-Control` (admin pages are `no-store`; the testnet origin's files are cacheable).
    pub cache_control: &'static str,
}

impl Response {
    /// A 200 response.
    pub fn ok(content_type: &'static str, body: impl Into<bytes::Bytes>) -> Self {
        Self {
            status: 200,
            content_type,
            body: body.into(),
            cache_control: "no-store",
        }
    }

    /// This response with `Cache-Control: cache_control`.
    #[must_use]
    pub fn with_cache_control(mut self, cache_control: &'static str) -> Self {
        self.cache_control = cache_control;
        self
    }

    /// An error response with a one-line text body.
    pub fn error(status: u16) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{} {}\n", status, reason(status)).into(),
            cache_control: "no-store",
        }
    }
}

/// The reason phrase sent with `status` in the status line and in
/// [`Response::error`] bodies ("Error" for codes this server never sends).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Binds a TCP listener; `what` names it in the error.
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// A bandwidth limit shared by every connection of a server (the testnet
/// origin's 384 kbit/s uplink, as in the paper's experiment).
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Throttle {
    /// A limit of `bits_per_sec`.
    pub fn new(bits_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: (bits_per_sec / 8).max(1),
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `n` more bytes may be sent.
    async fn take(&self, n: usize) {
        let at = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Serves `listener` with `handler` until `shutdown` turns true.
pub async fn serve<H, F>(listener: TcpListener, shutdown: watch::Receiver<bool>, handler: H)
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    serve_throttled(listener, shutdown, handler, None).await;
}

/// [`serve`] with every response body sent through `throttle`.
pub async fn serve_throttled<H, F>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
    throttle: Option<Arc<Throttle>>,
) where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = stopped(&mut shutdown) => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => return,
        };
        let handler = handler.clone();
        let throttle = throttle.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, handler, throttle).await {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn connection<H, F>(
    mut stream: TcpStream,
    handler: H,
    throttle: Option<Arc<Throttle>>,
) -> std::io::Result<()>
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // One deadline for the whole head, so a client trickling bytes cannot
    // hold a connection slot longer than a silent one.
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    let parsed = loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => break Err(408),
        };
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("").to_owned();
                let target = req.path.unwrap_or("/");
                let path = target.split(['?', '#']).next().unwrap_or("/").to_owned();
                break Ok(Request { method, path });
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => break Err(431),
            Err(_) => break Err(400),
        }
    };
    let (response, head_only) = match parsed {
        Ok(req) if req.method == "GET" || req.method == "HEAD" => {
            let head_only = req.method == "HEAD";
            (handler(req).await, head_only)
        }
        Ok(_) => (Response::error(405), false),
        Err(status) => (Response::error(status), false),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: {}\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len(),
        response.cache_control
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    if let Some(t) = throttle {
        // One MSS-sized piece at a time, each waiting for its share of the uplink.
        for piece in out.chunks(1460) {
            t.take(piece.len()).await;
            match tokio::time::timeout(IO_TIMEOUT, stream.write_all(piece)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            }
        }
    } else {
        match tokio::time::timeout(IO_TIMEOUT, stream.write_all(&out)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        }
    }
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.shutdown()).await;
    Ok(())
}

/// A minimal client for the admin endpoint: `GET path` on `addr`, returning
/// the status code and the body. Bounded in time and size.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Error, ErrorKind};
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s).take(16 << 20).read_to_end(&mut buf).await?;
        Ok::<_, Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, format!("no answer from {addr}")))??;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(body_at)) = resp.parse(&buf) else {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("{addr} did not answer with HTTP"),
        ));
    };
    let code = resp.code.unwrap_or(0);
    Ok((code, String::from_utf8_lossy(&buf[body_at..]).into_owned()))
}
