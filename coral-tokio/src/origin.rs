//! The testnet's origin web server: a handful of sample files plus
//! `--objects` generated ones, and a count of every request it served, so
//! the flash-crowd summary reports origin load from the origin's own books.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::httpd::{self, Response};
use crate::runtime::BindError;

/// A running origin server.
#[derive(Debug)]
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    paths: Vec<String>,
    served: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Origin {
    /// The absolute URLs of every object it serves, sample files first.
    pub fn urls(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|p| format!("http://{}{}", self.addr, p))
            .collect()
    }

    /// Requests answered with 200 so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Waits for the server task after its shutdown channel turned true.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Files of the flash-crowd workload (the paper's: twelve 41 KB files).
pub const FLASH_OBJECTS: usize = 12;
/// Size of each flash-crowd file.
pub const FLASH_BYTES: usize = 41 * 1024;
/// The origin's uplink in the flash-crowd workload (the paper's 384 kbit/s).
pub const FLASH_BITS_PER_SEC: u64 = 384_000;

/// The body of flash-crowd file `i`: distinct per file, so a mix-up shows.
pub fn flash_body(i: usize) -> Bytes {
    (0..FLASH_BYTES)
        .map(|j| (j.wrapping_mul(31).wrapping_add(i.wrapping_mul(97)) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The sample files, by path.
fn files(objects: usize) -> BTreeMap<String, (&'static str, Bytes)> {
    let mut m = BTreeMap::new();
    let index = "<!doctype html><html><head><title>Coral testnet origin</title></head><body>\
        <h1>Hello from the origin</h1><p>This page and the files below are served by the \
        testnet's origin server. Coralized, they would be served by Coral proxies.</p>\
        <ul><li><a href=\"/coral.txt\">coral.txt</a></li><li><a href=\"/logo.svg\">logo.svg</a>\
        </li><li><a href=\"/data/64k.bin\">data/64k.bin</a></li></ul></body></html>\n";
    m.insert(
        "/index.html".to_owned(),
        ("text/html; charset=utf-8", Bytes::from(index)),
    );
    m.insert(
        "/coral.txt".to_owned(),
        (
            "text/plain; charset=utf-8",
            Bytes::from_static(
                b"Coral: a peer-to-peer content distribution network (NSDI 2004).\n",
            ),
        ),
    );
    m.insert(
        "/logo.svg".to_owned(),
        (
            "image/svg+xml",
            Bytes::from_static(
                b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\">\
                  <circle cx=\"32\" cy=\"32\" r=\"28\" fill=\"coral\"/></svg>\n",
            ),
        ),
    );
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    m.insert(
        "/data/64k.bin".to_owned(),
        ("application/octet-stream", Bytes::from(big)),
    );
    for i in 0..FLASH_OBJECTS {
        m.insert(
            format!("/flash/{i}.bin"),
            ("application/octet-stream", flash_body(i)),
        );
    }
    for i in 0..objects {
        let body = format!("object {i}\n").repeat(64);
        m.insert(
            format!("/obj/{i}.txt"),
            ("text/plain; charset=utf-8", Bytes::from(body)),
        );
    }
    m
}

/// Starts the origin on `addr` with the sample files and `objects` generated ones.
pub async fn start(
    addr: SocketAddr,
    objects: usize,
    shutdown: watch::Receiver<bool>,
) -> Result<Origin, BindError> {
    start_throttled(addr, objects, shutdown, None).await
}

/// [`start`] with the origin's uplink limited to `bits_per_sec`.
pub async fn start_throttled(
    addr: SocketAddr,
    objects: usize,
    shutdown: watch::Receiver<bool>,
    bits_per_sec: Option<u64>,
) -> Result<Origin, BindError> {
    let listener = httpd::bind("origin TCP listener", addr).await?;
    let addr = listener.local_addr().map_err(|source| BindError {
        what: "origin TCP listener",
        addr,
        source,
    })?;
    let files = Arc::new(files(objects));
    let paths = files.keys().cloned().collect();
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    let throttle = bits_per_sec.map(|b| Arc::new(httpd::Throttle::new(b)));
    let task = tokio::spawn(httpd::serve_throttled(
        listener,
        shutdown,
        move |req| {
            let files = Arc::clone(&files);
            let counter = Arc::clone(&counter);
            async move {
                let path = if req.path == "/" {
                    "/index.html"
                } else {
                    &req.path
                };
                match files.get(path) {
                    Some((ctype, body)) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        Response::ok(ctype, body.clone()).with_cache_control("max-age=3600")
                    }
                    None => Response::error(404),
                }
            }
        },
        throttle,
    ));
    Ok(Origin {
        addr,
        paths,
        served,
        task,
    })
}
