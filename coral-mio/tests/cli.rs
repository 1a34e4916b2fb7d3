//! The `coral-mio` binary as a user runs it: errors that name the key or
//! address at fault (the HTTP proxy's and DNS server's too), two nodes that
//! join through `--join` and serve their HTTP proxies, DNS servers and
//! admin endpoints, the identity kept in `--data-dir`, and a clean exit on
//! SIGTERM. Every child process is bounded in time and killed if it
//! overstays; nothing asserts speed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use coral_tokio::status::NodeStatus;

const BIN: &str = env!("CARGO_BIN_EXE_coral-mio");
const LIMIT: Duration = Duration::from_secs(60);

fn coral_mio(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` at most [`LIMIT`], killing it past that.
fn wait(mut child: Child) -> Output {
    let deadline = Instant::now() + LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "coral-mio overstayed {LIMIT:?}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("coral-mio-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Polls `/status.json` on `admin` until `ready` holds (bounded by [`LIMIT`]).
fn status_when(admin: SocketAddr, ready: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(r) = http_get(admin, "/status.json")
            && let Some((_, body)) = r.split_once("\r\n\r\n")
            && let Ok(s) = serde_json::from_str::<NodeStatus>(body)
            && ready(&s)
        {
            return s;
        }
        assert!(Instant::now() < deadline, "{admin} never got ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn a_bad_config_key_is_named_and_the_exit_is_non_zero() {
    let p = scratch("bad.toml");
    std::fs::write(&p, "[node]\nrpc = \"127.0.0.1:0\"\nadmn = \"x\"\n").unwrap();
    let o = wait(
        coral_mio(&["node", "--config", p.to_str().unwrap()])
            .spawn()
            .unwrap(),
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("admn") && e.contains("bad.toml"), "{e}");
}

#[test]
fn a_busy_address_is_named() {
    let busy = std::net::UdpSocket::bind("127.0.0.230:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = wait(
        coral_mio(&["node", "--rpc", &addr, "--admin", "127.0.0.230:0"])
            .spawn()
            .unwrap(),
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&addr) && e.contains("node.rpc"), "{e}");
}

#[test]
fn a_busy_http_address_is_named() {
    let busy = std::net::TcpListener::bind("127.0.0.233:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = wait(
        coral_mio(&[
            "node",
            "--rpc",
            "127.0.0.233:0",
            "--admin",
            "127.0.0.233:0",
            "--http",
            &addr,
        ])
        .spawn()
        .unwrap(),
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&addr) && e.contains("node.http"), "{e}");
}

#[test]
fn a_busy_dns_address_is_named() {
    let busy = std::net::UdpSocket::bind("127.0.0.234:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = wait(
        coral_mio(&[
            "node",
            "--rpc",
            "127.0.0.234:0",
            "--admin",
            "127.0.0.234:0",
            "--http",
            "127.0.0.234:0",
            "--dns",
            &addr,
        ])
        .spawn()
        .unwrap(),
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&addr) && e.contains("node.dns"), "{e}");
}

/// A DNS query for `name` to `server` over UDP: the response's bytes.
fn dns_query(server: SocketAddr, name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let s = std::net::UdpSocket::bind("127.0.0.235:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(&q, server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).expect("a DNS answer within 5 s");
    buf[..n].to_vec()
}

#[test]
fn two_nodes_join_serve_their_admin_endpoints_and_stop_on_sigterm() {
    let (a_admin, b_admin): (SocketAddr, SocketAddr) = (
        "127.0.0.231:8092".parse().unwrap(),
        "127.0.0.232:8092".parse().unwrap(),
    );
    let data = scratch("data-a");
    let a = coral_mio(&[
        "node",
        "--rpc",
        "127.0.0.231:8091",
        "--admin",
        "127.0.0.231:8092",
        "--http",
        "127.0.0.231:8090",
        "--dns",
        "127.0.0.231:5353",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .spawn()
    .unwrap();
    let sa = status_when(a_admin, |_| true);
    let b = coral_mio(&[
        "node",
        "--rpc",
        "127.0.0.232:8091",
        "--admin",
        "127.0.0.232:8092",
        "--http",
        "127.0.0.232:8090",
        "--dns",
        "127.0.0.232:5353",
        "--join",
        "127.0.0.231:8091",
        "--log-json",
    ])
    .spawn()
    .unwrap();

    // b joined a: each lists the other at level 0.
    let sb = status_when(b_admin, |s| s.levels[0].routing_len == 1);
    assert_eq!(sb.levels[0].contacts[0].addr, sa.addr);
    let sa = status_when(a_admin, |s| s.levels[0].routing_len == 1);
    assert_eq!(sa.levels[0].contacts[0].addr, sb.addr);
    assert_eq!(sa.levels.len(), 3, "three levels by default");

    // The seed a uses is the one its data directory keeps.
    let identity = std::fs::read_to_string(data.join("identity.toml")).unwrap();
    assert!(
        identity.contains(&format!("seed = {}", sa.seed)),
        "{identity}"
    );

    let metrics = http_get(a_admin, "/metrics").unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    assert!(
        metrics.contains("coral_routing_contacts{level=\"0\"} 1"),
        "{metrics}"
    );
    let page = http_get(a_admin, "/").unwrap();
    assert!(page.contains("<!doctype html>"), "{page}");

    // The proxy answers on the same process: a host that is not Coralized
    // is refused (never fetched), and the refusal shows in /metrics.
    let refused = http_get("127.0.0.231:8090".parse().unwrap(), "/").unwrap();
    assert!(refused.starts_with("HTTP/1.1 400 "), "{refused}");
    assert!(refused.contains("Coralized"), "{refused}");
    let metrics = http_get(a_admin, "/metrics").unwrap();
    assert!(
        metrics.contains("coral_http_requests_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("coral_http_refused_total 1\n"),
        "{metrics}"
    );

    // So does the DNS server: a Coralized name is answered (NOERROR, AA,
    // two answers: both nodes' proxies), and counted.
    let r = dns_query(
        "127.0.0.231:5353".parse().unwrap(),
        "www.example.com.nyud.net",
    );
    assert_eq!(&r[..2], &[0x12, 0x34], "{r:?}");
    assert_eq!(r[2] & 0x84, 0x84, "a response, authoritative: {r:?}");
    assert_eq!(r[3] & 0x0f, 0, "NOERROR: {r:?}");
    assert_eq!(u16::from_be_bytes([r[6], r[7]]), 2, "two proxies: {r:?}");
    let metrics = http_get(a_admin, "/metrics").unwrap();
    assert!(metrics.contains("coral_dns_queries_total 1\n"), "{metrics}");
    let sa = status_when(a_admin, |_| true);
    assert!(sa.dns.is_some(), "{sa:?}");

    for child in [a, b] {
        sigterm(&child);
        let o = wait(child);
        assert!(o.status.success(), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("node stopped"), "{e}");
    }
}
