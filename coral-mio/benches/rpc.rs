//! RPC round trips per second between two Coral nodes on loopback — the
//! mio loop and the tokio actor — next to two UDP echo pairs measured in the
//! same run: one system call per datagram (the plain ceiling),
//! `recvmmsg`/`sendmmsg` batches (the batched ceiling), and those batches
//! with each run to one peer sent as one GSO send, as the mio node sends
//! (the GSO ceiling).
//!
//! Every pair is a server thread and a client thread, pinned to one core
//! each where the machine has two (`sched_setaffinity` through nix's safe
//! wrapper; the mio loops are pinned from inside with `Handle::call`, the
//! tokio sides run a current-thread runtime on a pinned thread). Each pair
//! keeps `WINDOW` requests in flight. The node pairs form a two-node,
//! one-level network; node B keeps `WINDOW` DSHT gets in flight (from an
//! application on its own loop for mio, from tasks on its own runtime for
//! tokio), so every get is get-probe RPCs to node A. Round trips are read
//! from B's own counters (requests sent, replies received).
//!
//! `cargo bench -p coral-mio --bench rpc`; `CORAL_BENCH_SECS` sets the
//! measuring time per pair (default 5). With `CORAL_BENCH_TARGET=IP:PORT`
//! it only runs a mio client node against that running node (for
//! measuring a `coral-mio node` process under load).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: a failure is a bug to see

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use coral_core::id::Id;
use coral_core::time::Instant as CoreInstant;
use coral_core::{Event, Levels, Node};
use coral_mio::udp::{Headers, RecvBatch, SendQueue};
use coral_tokio::bench_support::{
    NodeRun, PAYLOAD, ServerNode, WINDOW, bench_config, current_thread, measure,
};
use coral_tokio::status::NodeStatus;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// Warm-up before counting.
const WARM: Duration = Duration::from_millis(500);
/// CPU of the server side and of the client side.
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;

/// CPUs the process may run on, counted once before any thread is pinned:
/// `available_parallelism` reads the calling thread's affinity, so a thread
/// started by a pinned thread would count one CPU and pin to CPU 0, which
/// put both sides of every pair on the same core.
static CPUS: OnceLock<usize> = OnceLock::new();

/// Pins the calling thread to `cpu` (modulo the CPUs there are); false if
/// the OS refused.
fn pin(cpu: usize) -> bool {
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut set = CpuSet::new();
    set.set(cpu % cpus).is_ok() && sched_setaffinity(Pid::from_raw(0), &set).is_ok()
}

/// Counts round trips after the warm-up; says the rate once `measure` is over.
struct Meter {
    warm_until: Instant,
    start: Instant,
    count: u64,
    measure: Duration,
}

impl Meter {
    fn new(measure: Duration) -> Self {
        let now = Instant::now();
        Self {
            warm_until: now + WARM,
            start: now,
            count: 0,
            measure,
        }
    }

    fn add(&mut self, n: usize) -> Option<f64> {
        let now = Instant::now();
        if now < self.warm_until {
            self.start = now;
            return None;
        }
        self.count += n as u64;
        let el = now - self.start;
        (el >= self.measure).then(|| self.count as f64 / el.as_secs_f64())
    }
}

/// Runs `server` on one pinned thread and `client` (given the server's
/// address) on another; returns the client's rate.
fn echo_pair(
    server: fn(UdpSocket, &AtomicBool),
    client: fn(UdpSocket, SocketAddr, Duration) -> f64,
    measure: Duration,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let s = UdpSocket::bind("127.0.0.201:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = s.local_addr().unwrap();
    let server_stop = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        pin(SERVER_CPU);
        server(s, &server_stop);
    });
    let rate = std::thread::spawn(move || {
        pin(CLIENT_CPU);
        let c = UdpSocket::bind("127.0.0.202:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        client(c, addr, measure)
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    rate
}

fn plain_server(s: UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
}

fn plain_client(c: UdpSocket, server: SocketAddr, measure: Duration) -> f64 {
    let payload = [7u8; PAYLOAD];
    let mut buf = [0u8; 2048];
    for _ in 0..WINDOW {
        c.send_to(&payload, server).unwrap();
    }
    let mut m = Meter::new(measure);
    loop {
        // A datagram lost on loopback would shrink the window: refill on a lull.
        if c.recv_from(&mut buf).is_ok()
            && let Some(rate) = m.add(1)
        {
            return rate;
        }
        c.send_to(&payload, server).unwrap();
    }
}

fn batched_server(s: UdpSocket, stop: &AtomicBool) {
    echo_batches(s, stop, false);
}

/// The batched echo server with its replies sent as GSO runs.
fn gso_server(s: UdpSocket, stop: &AtomicBool) {
    echo_batches(s, stop, true);
}

fn echo_batches(s: UdpSocket, stop: &AtomicBool, gso: bool) {
    let (mut r, mut q) = (RecvBatch::new(), SendQueue::new());
    q.set_gso(gso);
    let (mut rh, mut sh) = (Headers::new(), Headers::new());
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = r.recv(&s, &mut rh) else { continue };
        for i in 0..n {
            if let (Some((from, bytes)), Some(slot)) = (r.get(i), q.slot()) {
                slot.clear();
                slot.extend_from_slice(bytes);
                q.commit(from, bytes.len());
            }
        }
        q.flush(&s, &mut sh);
    }
}

fn batched_client(c: UdpSocket, server: SocketAddr, measure: Duration) -> f64 {
    replay_client(c, server, &[vec![7u8; PAYLOAD]], measure)
}

/// The batched echo client with its requests sent as GSO runs.
fn gso_client(c: UdpSocket, server: SocketAddr, measure: Duration) -> f64 {
    replay_with(c, server, &[vec![7u8; PAYLOAD]], measure, true)
}

/// Keeps `WINDOW` datagrams in flight to `server`, cycling through
/// `payloads`, with recvmmsg/sendmmsg; counts every datagram that comes back.
fn replay_client(c: UdpSocket, server: SocketAddr, payloads: &[Vec<u8>], measure: Duration) -> f64 {
    replay_with(c, server, payloads, measure, false)
}

/// [`replay_client`], sending GSO runs when `gso` is on.
fn replay_with(
    c: UdpSocket,
    server: SocketAddr,
    payloads: &[Vec<u8>],
    measure: Duration,
    gso: bool,
) -> f64 {
    let (mut r, mut q) = (RecvBatch::new(), SendQueue::new());
    q.set_gso(gso);
    let (mut rh, mut sh) = (Headers::new(), Headers::new());
    let mut next = 0usize;
    let mut send = |q: &mut SendQueue, n: usize| {
        for _ in 0..n {
            let p = &payloads[next % payloads.len()];
            next += 1;
            if let Some(slot) = q.slot() {
                slot.clear();
                slot.extend_from_slice(p);
                q.commit(server, p.len());
            }
            if q.is_full() {
                q.flush(&c, &mut sh);
            }
        }
        q.flush(&c, &mut sh);
    };
    send(&mut q, WINDOW);
    let mut m = Meter::new(measure);
    loop {
        let Ok(n) = r.recv(&c, &mut rh) else {
            send(&mut q, 1);
            continue;
        };
        if let Some(rate) = m.add(n) {
            return rate;
        }
        send(&mut q, n);
    }
}

/// Runs [`replay_client`] on the client core against `server`.
fn replay(server: SocketAddr, payloads: Arc<Vec<Vec<u8>>>, measure: Duration) -> f64 {
    std::thread::spawn(move || {
        pin(CLIENT_CPU);
        let c = UdpSocket::bind("127.0.0.209:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        replay_client(c, server, &payloads, measure)
    })
    .join()
    .unwrap()
}

/// `n` get-probe requests exactly as a node sends them: node B joins a
/// node at X, that node stops, a plain socket takes over X and records
/// the get-probes B then sends it. (The bench never builds a datagram
/// itself: the wire format stays the core's.)
fn capture_get_probes(n: usize) -> Vec<Vec<u8>> {
    let a = coral_mio::spawn(bench_config([127, 0, 0, 207]).node_options(7)).unwrap();
    a.handle.join(vec![]).unwrap();
    let x = a.handle.addr();
    let b = coral_mio::spawn(bench_config([127, 0, 0, 208]).node_options(8)).unwrap();
    assert_eq!(b.handle.join(vec![x]).unwrap().contacts, 1);
    a.shutdown();
    let tap = UdpSocket::bind(x).unwrap();
    tap.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    b.handle
        .call(move |node, now| {
            for i in 0..n as u64 {
                node.get(now, key(1_000_000 + i), Levels::ALL).unwrap();
            }
        })
        .unwrap();
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 2048];
    while out.len() < n {
        let (len, _) = tap
            .recv_from(&mut buf)
            .expect("B sends its get-probes to X");
        out.push(buf[..len].to_vec());
    }
    b.shutdown();
    out
}

/// Server capacity: the replay client against each server in turn.
struct Capacity {
    plain_echo: f64,
    batched_echo: f64,
    mio: f64,
    tokio: f64,
}

fn capacity(measure: Duration) -> Capacity {
    let probes = Arc::new(capture_get_probes(WINDOW));
    let echo = |server: fn(UdpSocket, &AtomicBool)| {
        let stop = Arc::new(AtomicBool::new(false));
        let s = UdpSocket::bind("127.0.0.210:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = s.local_addr().unwrap();
        let server_stop = Arc::clone(&stop);
        let t = std::thread::spawn(move || {
            pin(SERVER_CPU);
            server(s, &server_stop);
        });
        let rate = replay(addr, Arc::clone(&probes), measure);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        rate
    };
    let plain_echo = echo(plain_server);
    let batched_echo = echo(batched_server);
    let a = coral_mio::spawn(bench_config([127, 0, 0, 211]).node_options(11)).unwrap();
    a.handle.call(|_, _| pin(SERVER_CPU)).unwrap();
    a.handle.join(vec![]).unwrap();
    let mio = replay(a.handle.addr(), Arc::clone(&probes), measure);
    assert_eq!(a.handle.status().unwrap().stats.malformed, 0);
    a.shutdown();
    let a = ServerNode::spawn(bench_config([127, 0, 0, 212]).node_options(12), || {
        pin(SERVER_CPU);
    })
    .unwrap();
    let tokio = replay(a.addr, probes, measure);
    a.stop();
    Capacity {
        plain_echo,
        batched_echo,
        mio,
        tokio,
    }
}

/// Reads B's counters around `measure` while its gets run.
fn measure_node(status: impl Fn() -> NodeStatus, done: &AtomicU64, measure: Duration) -> NodeRun {
    std::thread::sleep(WARM);
    let (s0, d0, t0) = (status(), done.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(measure);
    let (s1, d1) = (status(), done.load(Ordering::Relaxed));
    NodeRun::between(&s0, &s1, d1 - d0, t0.elapsed().as_secs_f64())
}

fn key(i: u64) -> Id {
    Id::for_url(&format!("bench/{i}"))
}

/// Distinct keys the node pairs' gets cycle through (none is ever stored,
/// so every get is a miss and one get-probe round trip).
const KEYS: usize = 4096;

/// The key of get `i`, hashed once before the run: the URL formatting and
/// SHA-1 were application work on B's core (some 2.5% of it), which the
/// echo clients do not do. Both node pairs read the same table.
fn bench_key(i: u64) -> Id {
    static TABLE: OnceLock<Vec<Id>> = OnceLock::new();
    let t = TABLE.get_or_init(|| (0..KEYS as u64).map(key).collect());
    t[i as usize % KEYS]
}

/// Node B's load on its own loop: every finished get starts the next.
struct Load {
    done: Arc<AtomicU64>,
    go: Arc<AtomicBool>,
    next: u64,
}

impl coral_mio::App for Load {
    fn on_event(&mut self, node: &mut Node, now: CoreInstant, event: Event) {
        if let Event::GetDone { .. } = event {
            self.done.fetch_add(1, Ordering::Relaxed);
            if self.go.load(Ordering::Relaxed) {
                self.next += 1;
                let _ = node.get(now, bench_key(self.next), Levels::ALL);
            }
        }
    }
}

/// A mio node B loading the node at `target` for `measure`.
fn mio_client(target: SocketAddr, measure: Duration) -> NodeRun {
    let done = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicBool::new(true));
    let load = Load {
        done: Arc::clone(&done),
        go: Arc::clone(&go),
        next: WINDOW as u64,
    };
    let b = coral_mio::spawn_with(
        bench_config([127, 0, 0, 206]).node_options(2),
        None,
        Box::new(load),
    )
    .unwrap();
    b.handle.call(|_, _| pin(CLIENT_CPU)).unwrap();
    assert_eq!(b.handle.join(vec![target]).unwrap().contacts, 1);
    b.handle
        .call(|node, now| {
            for w in 0..WINDOW as u64 {
                node.get(now, bench_key(w), Levels::ALL).unwrap();
            }
        })
        .unwrap();
    let run = measure_node(|| b.handle.status().unwrap(), &done, measure);
    go.store(false, Ordering::Relaxed);
    b.shutdown();
    run
}

fn mio_nodes(measure: Duration) -> NodeRun {
    let a = coral_mio::spawn(bench_config([127, 0, 0, 205]).node_options(1)).unwrap();
    a.handle.call(|_, _| pin(SERVER_CPU)).unwrap();
    a.handle.join(vec![]).unwrap();
    let run = mio_client(a.handle.addr(), measure);
    a.shutdown();
    run
}

fn tokio_nodes(measure: Duration) -> NodeRun {
    let a = ServerNode::spawn(bench_config([127, 0, 0, 203]).node_options(1), || {
        pin(SERVER_CPU);
    })
    .unwrap();
    let a_addr = a.addr;
    let done = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicBool::new(true));
    let (b_tx, b_rx) = std::sync::mpsc::channel();
    let (b_done, b_go) = (Arc::clone(&done), Arc::clone(&go));
    let b_thread = std::thread::spawn(move || {
        pin(CLIENT_CPU);
        current_thread().unwrap().block_on(async move {
            let b = coral_tokio::spawn(bench_config([127, 0, 0, 204]).node_options(2)).unwrap();
            assert_eq!(b.handle.join(vec![a_addr]).await.unwrap().contacts, 1);
            let tasks: Vec<_> = (0..WINDOW as u64)
                .map(|w| {
                    let (h, done, go) = (b.handle.clone(), Arc::clone(&b_done), Arc::clone(&b_go));
                    tokio::spawn(async move {
                        let mut i = w;
                        while go.load(Ordering::Relaxed) {
                            i += WINDOW as u64;
                            if h.get(bench_key(i), Levels::ALL).await.is_ok() {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            b_tx.send((b.handle.clone(), tokio::runtime::Handle::current()))
                .unwrap();
            for t in tasks {
                t.await.unwrap();
            }
            b.shutdown().await;
        });
    });
    // Measured from this thread, as the mio pair is: B's runtime answers
    // the status requests between its gets.
    let (b, rt) = b_rx.recv().unwrap();
    let run = measure_node(|| rt.block_on(b.status()).unwrap(), &done, measure);
    go.store(false, Ordering::Relaxed);
    b_thread.join().unwrap();
    a.stop();
    run
}

fn print_node(name: &str, n: &NodeRun) {
    println!(
        "  {name:<28} {:>10.0} round trips/s ({:.0} replies/s, {:.0} gets/s, {} timeouts)",
        n.rpcs_per_sec, n.replies_per_sec, n.gets_per_sec, n.timeouts
    );
}

fn main() {
    let measure = measure();
    bench_key(0); // the key table, before any pair runs
    if let Ok(target) = std::env::var("CORAL_BENCH_TARGET") {
        let n = mio_client(target.parse().expect("CORAL_BENCH_TARGET=IP:PORT"), measure);
        print_node("mio client -> target", &n);
        return;
    }
    let pinned = pin(CLIENT_CPU);
    if let Ok(only) = std::env::var("CORAL_BENCH_ONLY") {
        // One pair or a few, for profiling; the comparison is the full run.
        for pair in only.split(',') {
            match pair {
                "plain" => println!(
                    "plain echo {:.0}",
                    echo_pair(plain_server, plain_client, measure)
                ),
                "batched" => println!(
                    "batched echo {:.0}",
                    echo_pair(batched_server, batched_client, measure)
                ),
                "gso" => println!("GSO echo {:.0}", echo_pair(gso_server, gso_client, measure)),
                "mio" => print_node("mio nodes", &mio_nodes(measure)),
                "tokio" => print_node("tokio nodes", &tokio_nodes(measure)),
                other => {
                    eprintln!(
                        "CORAL_BENCH_ONLY: no pair {other:?} (plain, batched, gso, mio, tokio)"
                    )
                }
            }
        }
        return;
    }
    let plain = echo_pair(plain_server, plain_client, measure);
    let batched = echo_pair(batched_server, batched_client, measure);
    let gso = echo_pair(gso_server, gso_client, measure);
    let mio = mio_nodes(measure);
    let tokio = tokio_nodes(measure);
    let cap = capacity(measure);
    let r = |a: f64, b: f64| a / b.max(1e-9);
    println!(
        "loopback, {WINDOW} in flight, {:.1} s each, server and client threads {}",
        measure.as_secs_f64(),
        if pinned {
            "pinned to one core each"
        } else {
            "not pinned (the OS refused)"
        }
    );
    println!("node pairs (B runs DSHT gets against A; echo clients do nothing per reply):");
    println!("  UDP echo, 1 syscall/datagram {plain:>10.0} round trips/s");
    println!("  UDP echo, recvmmsg/sendmmsg  {batched:>10.0} round trips/s");
    println!("  UDP echo, the same + GSO     {gso:>10.0} round trips/s");
    print_node("mio nodes: RPCs", &mio);
    print_node("tokio nodes: RPCs", &tokio);
    println!(
        "  mio / batched echo {:.2}, mio / plain echo {:.2}, mio / tokio {:.2}, tokio / plain echo {:.2}",
        r(mio.rpcs_per_sec, batched),
        r(mio.rpcs_per_sec, plain),
        r(mio.rpcs_per_sec, tokio.rpcs_per_sec),
        r(tokio.rpcs_per_sec, plain)
    );
    println!(
        "  mio / GSO echo {:.2} (both send runs to one peer as one GSO send)",
        r(mio.rpcs_per_sec, gso)
    );
    println!(
        "server capacity (one batched client replays {WINDOW} captured get-probes to each server):"
    );
    println!(
        "  plain echo server            {:>10.0} round trips/s",
        cap.plain_echo
    );
    println!(
        "  batched echo server          {:>10.0} round trips/s",
        cap.batched_echo
    );
    println!(
        "  mio node                     {:>10.0} get-probe RPCs/s",
        cap.mio
    );
    println!(
        "  tokio node                   {:>10.0} get-probe RPCs/s",
        cap.tokio
    );
    println!(
        "  mio / batched echo {:.2}, mio / plain echo {:.2}, mio / tokio {:.2}, tokio / plain echo {:.2}",
        r(cap.mio, cap.batched_echo),
        r(cap.mio, cap.plain_echo),
        r(cap.mio, cap.tokio),
        r(cap.tokio, cap.plain_echo)
    );
    println!(
        "{{\"echo_plain\":{plain:.0},\"echo_batched\":{batched:.0},\"echo_gso\":{gso:.0},\"mio_rpcs\":{:.0},\"tokio_rpcs\":{:.0},\"mio_gets\":{:.0},\"tokio_gets\":{:.0},\"mio_timeouts\":{},\"tokio_timeouts\":{},\"capacity_echo_plain\":{:.0},\"capacity_echo_batched\":{:.0},\"capacity_mio\":{:.0},\"capacity_tokio\":{:.0}}}",
        mio.rpcs_per_sec,
        tokio.rpcs_per_sec,
        mio.gets_per_sec,
        tokio.gets_per_sec,
        mio.timeouts,
        tokio.timeouts,
        cap.plain_echo,
        cap.batched_echo,
        cap.mio,
        cap.tokio
    );
}
