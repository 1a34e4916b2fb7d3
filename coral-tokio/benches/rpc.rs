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
use coral_tokio::bench_support::{
    NodeRun, PAYLOAD, ServerNode, WINDOW, bench_config, current_thread, measure,
};
use coral_tokio::runtime;
use coral_tokio::status::NodeStatus;
use tokio::net::UdpSocket;

/// Round trips per second of a UDP echo pair.
fn echo(measure: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let server_stop = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        current_thread().unwrap().block_on(async move {
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
        current_thread().unwrap().block_on(async move {
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

/// Gets per second and RPC round trips per second between two nodes.
fn nodes(measure: Duration) -> NodeRun {
    let a = ServerNode::spawn(bench_config([127, 0, 0, 203]).node_options(1), || {}).unwrap();
    let a_addr = a.addr;
    let run = std::thread::spawn(move || {
        current_thread().unwrap().block_on(async move {
            let b = runtime::spawn(bench_config([127, 0, 0, 204]).node_options(2)).unwrap();
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
            NodeRun::between(&s0, &s1, d1 - d0, el)
        })
    })
    .join()
    .unwrap();
    a.stop();
    run
}

fn main() {
    let measure = measure();
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
