//! The `coral` binary as a user runs it: errors that name what is wrong,
//! a node that serves its admin endpoint and stops on SIGTERM, `coral
//! status` against it, `coralize`, and a short testnet flash crowd whose
//! JSON line carries the promised keys. Every child process is bounded in
//! time and killed if it overstays; nothing asserts speed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failure is a bug to see

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coral");

fn coral(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` at most `limit`, killing it past that.
fn wait(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "coral overstayed {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    wait(coral(args).spawn().unwrap(), Duration::from_secs(60))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("coral-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    std::io::Write::write_all(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn a_bad_config_key_is_named_and_the_exit_is_non_zero() {
    let p = scratch("bad.toml", "[node]\nrpc = \"127.0.0.1:0\"\nadmn = \"x\"\n");
    let o = run(&["node", "--config", p.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("admn"), "{e}");
    assert!(e.contains("bad.toml"), "{e}");
}

#[test]
fn an_unreadable_config_file_is_named() {
    let o = run(&["node", "--config", "/nonexistent/coral.toml"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/coral.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_port_in_use_is_named() {
    let busy = std::net::UdpSocket::bind("127.0.0.150:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = run(&["node", "--rpc", &addr, "--admin", "127.0.0.150:0"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&addr) && e.contains("node.rpc"), "{e}");

    let busy = std::net::TcpListener::bind("127.0.0.150:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = run(&["node", "--rpc", "127.0.0.150:0", "--admin", &addr]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&addr) && e.contains("node.admin"), "{e}");
}

#[test]
fn coralize_prints_the_rewritten_url() {
    let o = run(&["coralize", "http://www.x.com/a"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "http://www.x.com.nyud.net:8090/a\n"
    );
    let o = run(&[
        "coralize",
        "http://www.x.com:8080/a",
        "--domain",
        "cdn.test",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "http://www.x.com.8080.cdn.test:8090/a\n"
    );
    let o = run(&["coralize", "ftp://x/"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ftp://x/"), "{}", stderr(&o));
}

#[test]
fn a_node_serves_its_admin_endpoint_and_stops_on_sigterm() {
    let admin: SocketAddr = "127.0.0.151:8092".parse().unwrap();
    let dir = std::env::temp_dir().join(format!("coral-cli-data-{}", std::process::id()));
    let child = coral(&[
        "node",
        "--rpc",
        "127.0.0.151:8091",
        "--admin",
        "127.0.0.151:8092",
        "--http",
        "127.0.0.151:8090",
        "--dns",
        "127.0.0.151:5353",
        "--data-dir",
        dir.to_str().unwrap(),
    ])
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Some(m) = http_get(admin, "/metrics") {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the admin endpoint never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("coral_rpcs_in_total{type=\"ping\"}"),
        "{metrics}"
    );
    let page = http_get(admin, "/").unwrap();
    assert!(page.contains("<h1>Coral node</h1>"), "{page}");

    let o = run(&["status", "--admin", "127.0.0.151:8092"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("rpc       127.0.0.151:8091"), "{text}");
    assert!(text.contains("60 ms") && text.contains("20 ms"), "{text}");

    // The identity written to the data directory carries the logged seed.
    let identity = std::fs::read_to_string(dir.join("identity.toml")).unwrap();
    let o = run(&["status", "--admin", "127.0.0.151:8092", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let seed = status["seed"].as_u64().unwrap();
    assert!(identity.contains(&format!("seed = {seed}")), "{identity}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = wait(child, Duration::from_secs(30));
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(&o));
    assert!(stderr(&o).contains("shutting down"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_of_a_missing_node_fails_naming_the_address() {
    let o = run(&["status", "--admin", "127.0.0.152:9"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("127.0.0.152:9"), "{}", stderr(&o));
}

#[test]
fn a_testnet_flash_crowd_reports_json_on_its_last_line() {
    // The short flash crowd CI runs: 24 clients over 4 proxies all miss on
    // the twelve files of a 384 kbit/s origin at once; every file must be
    // fetched from the origin exactly once, and every answer be right.
    let o = run(&[
        "testnet",
        "--nodes",
        "4",
        "--first-ip",
        "160",
        "--objects",
        "4",
        "--flash-crowd",
        "3",
        "--clients",
        "24",
        "--max-requests",
        "20000",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("joined: 4/4 nodes"), "{out}");
    assert!(out.contains("Flash crowd:"), "{out}");
    let last = out.lines().last().unwrap();
    let j: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "requests",
        "ok",
        "origin_fetches",
        "objects",
        "latency_ms_p50",
        "latency_ms_p99",
        "served_from",
    ] {
        assert!(j.get(key).is_some(), "missing {key}: {last}");
    }
    let requests = j["requests"].as_u64().unwrap();
    let ok = j["ok"].as_u64().unwrap();
    assert!((24..=20000).contains(&requests), "{last}");
    assert_eq!(ok, requests, "{last}");
    assert_eq!(j["objects"], 12, "the paper's twelve files: {last}");
    assert_eq!(j["origin_fetches"], 12, "one origin fetch per file: {last}");
}

/// Polls `coral status --json` on `admin` until `ready` holds (bounded).
fn status_until(admin: &str, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run(&["status", "--admin", admin, "--json"]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            if ready(&v) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "{admin} never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_node_processes_join_through_join_flag() {
    let a = coral(&[
        "node",
        "--rpc",
        "127.0.0.153:8091",
        "--admin",
        "127.0.0.153:8092",
        "--http",
        "127.0.0.153:8090",
        "--dns",
        "127.0.0.153:5353",
    ])
    .spawn()
    .unwrap();
    let b = coral(&[
        "node",
        "--rpc",
        "127.0.0.154:8091",
        "--admin",
        "127.0.0.154:8092",
        "--http",
        "127.0.0.154:8090",
        "--dns",
        "127.0.0.154:5353",
        "--join",
        "127.0.0.153:8091",
    ])
    .spawn()
    .unwrap();
    let contacts = |v: &serde_json::Value| -> Vec<String> {
        v["levels"][0]["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["addr"].as_str().unwrap().to_owned())
            .collect()
    };
    // Each process learns of the other through the join, over real UDP.
    let sb = status_until("127.0.0.154:8092", |v| !contacts(v).is_empty());
    assert_eq!(contacts(&sb), vec!["127.0.0.153:8091"]);
    let sa = status_until("127.0.0.153:8092", |v| !contacts(v).is_empty());
    assert_eq!(contacts(&sa), vec!["127.0.0.154:8091"]);
    assert!(
        sa["stats"]["rpcs_in"]["ping"].as_u64().unwrap() >= 1,
        "{sa}"
    );
    for child in [a, b] {
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let o = wait(child, Duration::from_secs(30));
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

#[path = "../../tests/tests/common/mod.rs"]
mod common;

/// The testnet's `dig` and `curl` lines work together: the address dig
/// returns is a proxy that serves the Coralized URL with the origin's
/// bytes.
#[test]
fn testnet_prints_a_dig_line_and_a_curl_line_that_work_together() {
    common::tool("dig", "-v", "bind9-dnsutils");
    common::tool("curl", "--version", "curl");
    let mut child = coral(&["testnet", "--nodes", "3", "--first-ip", "170"])
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Read the report until both lines are there (bounded).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            let s = String::from_utf8_lossy(&text).into_owned();
            if s.contains("  curl --resolve")
                && s[s.find("  curl --resolve").unwrap()..].contains('\n')
            {
                let _ = tx.send(s);
                break;
            }
        }
    });
    let report = rx.recv_timeout(Duration::from_secs(60));
    let line = |report: &str, start: &str| -> String {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no `{start}` line in:\n{report}"))
            .trim()
            .to_owned()
    };
    let outcome = report.map(|report| {
        let dig = line(&report, "dig @");
        let curl = line(&report, "curl --resolve");
        let sh = |cmd: &str| {
            Command::new("bash")
                .args(["-c", &format!("timeout 20 {cmd}")])
                .output()
                .unwrap()
        };
        let d = sh(&dig);
        let addrs = String::from_utf8_lossy(&d.stdout).into_owned();
        let c = sh(&format!("{curl} -s -w '\\n%{{http_code}}'"));
        (
            report,
            addrs,
            String::from_utf8_lossy(&c.stdout).into_owned(),
        )
    });
    child.kill().unwrap();
    let _ = child.wait();
    let (report, addrs, body) = outcome.expect("the testnet printed its dig and curl lines");
    let proxies: Vec<&str> = addrs.lines().collect();
    assert_eq!(
        proxies.len(),
        2,
        "dig names two proxies: {addrs:?}\n{report}"
    );
    assert!(
        proxies.iter().all(|a| a.starts_with("127.0.0.17")),
        "testnet nodes are 127.0.0.170-172: {addrs:?}"
    );
    assert!(body.ends_with("\n200"), "curl through the proxy: {body}");
    assert!(body.contains("<html"), "the origin's index page: {body}");
}
