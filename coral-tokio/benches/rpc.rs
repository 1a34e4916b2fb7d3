//! RPC round trips per second between two tokio nodes on loopback, next to
//! the ceiling of a minimal UDP echo pair measured in the same run.
//!
//! Each side runs a current-thread tokio runtime on its own OS thread (one
//! core each on a two-core machine). The echo pair keeps `WINDOW` datagrams
//! of a Coral-like size in flight; the node pair keeps `WINDOW` DSHT gets in
//! flight from node B to node A (a two-node, one-level network, so every get
//! is get-probe RPCs to A). Round trips are counted from the nodes' own
//! counters (requests B sent, replies B received). Run with
//! `cargo bench -p coral-tokio --bench rpc`; `CORAL_BENCH_SECS` sets the
//! measuring time per pair (default 5).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: a failure is a bug to see

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coral_core::Levels;
use coral_core::id::Id;
use coral_tokio::config::FileConfig;
use coral_tokio::runtime;
use coral_tokio::status::{NodeStatus, RpcCounters};
use tokio::net::UdpSocket;

/// Requests in flight at once, in both pairs.
const WINDOW: usize = 64;
/// Size of an echo datagram: about a get-probe's.
const PAYLOAD: usize = 64;

fn secs() -> Duration {
    let s = std::env::var("CORAL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(s)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Round trips per second of a UDP echo pair.
fn echo(measure: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let server_stop = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let s = UdpSocket::bind("127.0.0.201:0").await.unwrap();
            tx.send(s.local_addr().unwrap()).unwrap();
            let mut buf = vec![0u8; 2048];
            while !server_stop.load(Ordering::Relaxed) {
                let Ok(Ok((n, from))) =
                    tokio::time::timeout(Duration::from_millis(100), s.recv_from(&mut buf)).await
                else {
                    continue;
                };
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
    });
    let server_addr = rx.recv().unwrap();
    let rate = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let c = UdpSocket::bind("127.0.0.202:0").await.unwrap();
            let payload = [7u8; PAYLOAD];
            let mut buf = vec![0u8; 2048];
            for _ in 0..WINDOW {
                c.send_to(&payload, server_addr).await.unwrap();
            }
            let warm = Instant::now() + Duration::from_millis(500);
            let mut count = 0u64;
            let mut start = Instant::now();
            let mut measuring = false;
            loop {
                // A datagram lost on loopback would shrink the window: refill on a lull.
                match tokio::time::timeout(Duration::from_millis(50), c.recv_from(&mut buf)).await {
                    Ok(Ok(_)) => {}
                    _ => {
                        c.send_to(&payload, server_addr).await.unwrap();
                        continue;
                    }
                }
                let now = Instant::now();
                if !measuring && now >= warm {
                    measuring = true;
                    start = now;
                    count = 0;
                }
                if measuring {
                    count += 1;
                    if now - start >= measure {
                        break count as f64 / (now - start).as_secs_f64();
                    }
                }
                c.send_to(&payload, server_addr).await.unwrap();
            }
        })
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    rate
}

fn requests(r: &RpcCounters) -> u64 {
    r.ping + r.find_near + r.get_probe + r.put_probe + r.store
}

struct NodeRun {
    gets_per_sec: f64,
    rpcs_per_sec: f64,
    replies_per_sec: f64,
    timeouts: u64,
}

/// Gets per second and RPC round trips per second between two nodes.
fn nodes(measure: Duration) -> NodeRun {
    let mut cfg = FileConfig::default();
    cfg.levels.diameters_ms = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let a_cfg = cfg.clone();
    let a_stop = Arc::clone(&stop);
    let a_thread = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let mut c = a_cfg;
            c.node.rpc = "127.0.0.203:0".parse().unwrap();
            let a = runtime::spawn(c.node_options(1)).unwrap();
            a.handle.join(vec![]).await.unwrap();
            tx.send(a.handle.addr()).unwrap();
            while !a_stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            a.shutdown().await;
        });
    });
    let a_addr = rx.recv().unwrap();
    let run = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let mut c = cfg;
            c.node.rpc = "127.0.0.204:0".parse().unwrap();
            let b = runtime::spawn(c.node_options(2)).unwrap();
            let j = b.handle.join(vec![a_addr]).await.unwrap();
            assert_eq!(j.contacts, 1);
            let done = Arc::new(AtomicU64::new(0));
            let go = Arc::new(AtomicBool::new(true));
            let mut tasks = Vec::new();
            for w in 0..WINDOW {
                let h = b.handle.clone();
                let done = Arc::clone(&done);
                let go = Arc::clone(&go);
                tasks.push(tokio::spawn(async move {
                    let mut i = 0u64;
                    while go.load(Ordering::Relaxed) {
                        let key = Id::for_url(&format!("bench/{w}/{i}"));
                        i += 1;
                        if h.get(key, Levels::ALL).await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s0: NodeStatus = b.handle.status().await.unwrap();
            let d0 = done.load(Ordering::Relaxed);
            let t0 = Instant::now();
            tokio::time::sleep(measure).await;
            let s1: NodeStatus = b.handle.status().await.unwrap();
            let d1 = done.load(Ordering::Relaxed);
            let el = t0.elapsed().as_secs_f64();
            go.store(false, Ordering::Relaxed);
            for t in tasks {
                t.await.unwrap();
            }
            b.shutdown().await;
            NodeRun {
                gets_per_sec: (d1 - d0) as f64 / el,
                rpcs_per_sec: (requests(&s1.stats.rpcs_out) - requests(&s0.stats.rpcs_out)) as f64
                    / el,
                replies_per_sec: (s1.stats.rpcs_in.replies - s0.stats.rpcs_in.replies) as f64 / el,
                timeouts: s1.stats.timeouts - s0.stats.timeouts,
            }
        })
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    a_thread.join().unwrap();
    run
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful either: both run the measurement, kept short under test.
    let measure = if std::env::args().any(|a| a == "--bench") {
        secs()
    } else {
        Duration::from_millis(200)
    };
    let echo_rate = echo(measure);
    let n = nodes(measure);
    println!(
        "loopback, one current-thread runtime per side, {WINDOW} in flight, {:.1} s each",
        measure.as_secs_f64()
    );
    println!("  UDP echo pair (ceiling)      {echo_rate:>12.0} round trips/s");
    println!(
        "  coral nodes: RPCs            {:>12.0} round trips/s ({:.0} replies/s, {} timeouts)",
        n.rpcs_per_sec, n.replies_per_sec, n.timeouts
    );
    println!(
        "  coral nodes: DSHT gets       {:>12.0} gets/s ({:.2} RPCs per get)",
        n.gets_per_sec,
        n.rpcs_per_sec / n.gets_per_sec.max(1e-9)
    );
    println!(
        "  coral RPCs / echo ceiling    {:>12.1} %",
        100.0 * n.rpcs_per_sec / echo_rate.max(1e-9)
    );
    println!(
        "{{\"echo_round_trips_per_sec\":{echo_rate:.0},\"rpc_round_trips_per_sec\":{:.0},\"gets_per_sec\":{:.0},\"timeouts\":{}}}",
        n.rpcs_per_sec, n.gets_per_sec, n.timeouts
    );
}
