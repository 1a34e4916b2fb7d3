//! Idle keep-alive connections to origins and peer proxies, for reuse.
//!
//! A response read to its exact end on a connection the server keeps open
//! (RFC 9112 §9.3) leaves the connection here, keyed by address; the next
//! request to that address takes it instead of connecting. Bounded three
//! ways: connections per address, connections in all, and an idle timeout
//! shorter than common servers' own (Apache closes after 5 s), so a
//! connection is rarely taken just as the server closes it. One taken
//! anyway fails before its first response byte, and an idempotent request
//! is then retried once on a fresh connection (see `exchange_head`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use coral_core::http::parse::ResponseHead;
use tokio::net::TcpStream;

/// Limits of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Idle connections kept per address: 8, enough for the parallel
    /// misses of a busy page without holding a server's slots.
    pub per_addr: usize,
    /// Idle connections kept in all: 256.
    pub total: usize,
    /// Time an idle connection is kept: 4 s, under Apache's 5 s default.
    pub idle_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            per_addr: 8,
            total: 256,
            idle_timeout: Duration::from_secs(4),
        }
    }
}

/// Counters of the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Idle connections held now.
    pub idle: u64,
    /// Connections taken from the pool.
    pub reused: u64,
    /// Connections returned to the pool.
    pub returned: u64,
    /// Reused connections found closed and replaced by a fresh one.
    pub stale: u64,
}

/// The pool.
#[derive(Debug, Default)]
pub struct Pool {
    opts: PoolOptions,
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
    reused: AtomicU64,
    returned: AtomicU64,
    stale: AtomicU64,
}

/// Whether the server keeps the connection open after `head`'s response.
pub fn keeps_alive(head: &ResponseHead) -> bool {
    let token = |t: &str| {
        head.headers
            .items("connection")
            .any(|v| v.eq_ignore_ascii_case(t))
    };
    if head.version == 0 {
        token("keep-alive")
    } else {
        !token("close")
    }
}

impl Pool {
    /// An empty pool with `opts`.
    pub fn new(opts: PoolOptions) -> Self {
        Self {
            opts,
            ..Self::default()
        }
    }

    fn idle(&self) -> MutexGuard<'_, HashMap<SocketAddr, Vec<(TcpStream, Instant)>>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle connection to `addr` that has not been closed by the server
    /// as far as can be seen without waiting, newest first.
    pub fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let now = Instant::now();
        let mut m = self.idle();
        let v = m.get_mut(&addr)?;
        let mut found = None;
        while let Some((s, since)) = v.pop() {
            if now.duration_since(since) >= self.opts.idle_timeout {
                continue;
            }
            // Readable now means the server closed it or sent stray bytes.
            let mut probe = [0u8; 1];
            match s.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    found = Some(s);
                    break;
                }
                _ => {}
            }
        }
        if v.is_empty() {
            m.remove(&addr);
        }
        if found.is_some() {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Keeps `s`, connected to `addr`, for reuse; drops it when full.
    pub fn put(&self, addr: SocketAddr, s: TcpStream) {
        let mut m = self.idle();
        let total: usize = m.values().map(Vec::len).sum();
        if total >= self.opts.total {
            return;
        }
        let v = m.entry(addr).or_default();
        if v.len() >= self.opts.per_addr {
            return;
        }
        v.push((s, Instant::now()));
        self.returned.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reused connection that turned out closed.
    pub fn count_stale(&self) {
        self.stale.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes connections idle for longer than the timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let t = self.opts.idle_timeout;
        self.idle().retain(|_, v| {
            v.retain(|(_, since)| now.duration_since(*since) < t);
            !v.is_empty()
        });
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            idle: self.idle().values().map(|v| v.len() as u64).sum(),
            reused: self.reused.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coral_core::http::parse::Headers;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn head(version: u8, conn: Option<&str>) -> ResponseHead {
        let mut h = Headers::default();
        if let Some(c) = conn {
            h.set("connection", c.as_bytes());
        }
        ResponseHead {
            status: 200,
            version,
            headers: h,
        }
    }

    #[test]
    fn keep_alive_follows_rfc9112() {
        assert!(keeps_alive(&head(1, None)));
        assert!(!keeps_alive(&head(1, Some("close"))));
        assert!(!keeps_alive(&head(0, None)));
        assert!(keeps_alive(&head(0, Some("Keep-Alive"))));
    }

    #[tokio::test]
    async fn connections_are_reused_until_closed_and_the_pool_is_bounded() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let pool = Pool::new(PoolOptions {
            per_addr: 2,
            total: 3,
            idle_timeout: Duration::from_secs(60),
        });
        let mut server = Vec::new();
        for _ in 0..3 {
            let c = TcpStream::connect(addr).await.unwrap();
            server.push(l.accept().await.unwrap().0);
            pool.put(addr, c);
        }
        assert_eq!(pool.stats().idle, 2, "two per address");
        // The server closes the newest pooled one: it is skipped, the older is taken.
        let mut s = server.remove(1);
        s.shutdown().await.unwrap();
        drop(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = pool.take(addr);
        assert!(got.is_some());
        assert_eq!(pool.stats().idle, 0);
        assert!(pool.take(addr).is_none());
        assert_eq!(pool.stats().reused, 1);
    }
}
