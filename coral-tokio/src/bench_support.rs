//! What the RPC benchmarks of coral-tokio and coral-mio share, so that both
//! measure the same way: the measuring time, the configuration of a bench
//! node, the rates read from node B's counters, and node A served by a
//! tokio runtime on a thread of its own. Not an API (hidden from the docs).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::FileConfig;
use crate::runtime::{self, NodeOptions};
use crate::status::{NodeStatus, RpcCounters};

/// Requests in flight at once, in every pair.
pub const WINDOW: usize = 64;

/// Size of an echo datagram: about a get-probe's.
pub const PAYLOAD: usize = 64;

/// How long each pair is measured: `CORAL_BENCH_SECS` (default 5 s) under
/// `cargo bench`, which passes `--bench`; 200 ms under `cargo test
/// --benches`, which also runs the measurement and should stay short.
pub fn measure() -> Duration {
    if !std::env::args().any(|a| a == "--bench") {
        return Duration::from_millis(200);
    }
    let s = std::env::var("CORAL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(s)
}

/// A current-thread tokio runtime, one per benchmark thread.
pub fn current_thread() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A one-level network (no latency levels) with the RPC socket on `ip`.
pub fn bench_config(ip: [u8; 4]) -> FileConfig {
    let mut cfg = FileConfig::default();
    cfg.levels.diameters_ms = Vec::new();
    cfg.node.rpc = SocketAddr::from((ip, 0));
    cfg
}

/// Rates of node B over a measured interval.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeRun {
    /// DSHT gets finished per second.
    pub gets_per_sec: f64,
    /// RPC requests sent per second.
    pub rpcs_per_sec: f64,
    /// RPC replies received per second.
    pub replies_per_sec: f64,
    /// RPCs that timed out in the interval.
    pub timeouts: u64,
}

impl NodeRun {
    /// The rates between two status snapshots `secs` apart, in which `gets`
    /// gets finished.
    pub fn between(before: &NodeStatus, after: &NodeStatus, gets: u64, secs: f64) -> Self {
        let (b, a) = (&before.stats, &after.stats);
        Self {
            gets_per_sec: gets as f64 / secs,
            rpcs_per_sec: (requests(&a.rpcs_out) - requests(&b.rpcs_out)) as f64 / secs,
            replies_per_sec: (a.rpcs_in.replies - b.rpcs_in.replies) as f64 / secs,
            timeouts: a.timeouts - b.timeouts,
        }
    }
}

fn requests(r: &RpcCounters) -> u64 {
    r.ping + r.find_near + r.get_probe + r.put_probe + r.store
}

/// Node A: a tokio node that joined a network of one, on its own thread
/// with a current-thread runtime, until [`Self::stop`].
#[derive(Debug)]
pub struct ServerNode {
    /// Its RPC address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl ServerNode {
    /// Starts the node; `on_thread` runs first on the new thread (to pin it
    /// to a CPU, say).
    pub fn spawn(
        options: NodeOptions,
        on_thread: impl FnOnce() + Send + 'static,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<io::Result<SocketAddr>>();
        let a_stop = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            on_thread();
            let rt = match current_thread() {
                Ok(rt) => rt,
                Err(e) => return drop(tx.send(Err(e))),
            };
            rt.block_on(async move {
                let a = match runtime::spawn(options) {
                    Ok(a) => a,
                    Err(e) => return drop(tx.send(Err(io::Error::other(e)))),
                };
                if let Err(e) = a.handle.join(vec![]).await {
                    return drop(tx.send(Err(io::Error::other(e))));
                }
                let _ = tx.send(Ok(a.handle.addr()));
                while !a_stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                a.shutdown().await;
            });
        });
        let addr = rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the node thread died")))?;
        Ok(Self { addr, stop, thread })
    }

    /// Stops the node and waits for its thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
