//! The proxy's disk tier: complete objects kept under `--data-dir` so a
//! restarted proxy still has them (issue 5, "The cache").
//!
//! The core decides what is stored and when a copy is fresh; this module
//! only keeps bytes. Through [`Proxy::poll_disk`](coral_core::http::Proxy::poll_disk)
//! the core hands it every object it stores ([`DiskOp::Write`]), asks it on
//! a memory miss before the DSHT ([`DiskOp::Read`]), and tells it to forget
//! a URL an unsafe request changed ([`DiskOp::Remove`]).
//!
//! [`DiskOp::Write`]: coral_core::http::DiskOp::Write
//! [`DiskOp::Read`]: coral_core::http::DiskOp::Read
//! [`DiskOp::Remove`]: coral_core::http::DiskOp::Remove
//!
//! # Files
//!
//! One file per URL, named by the URL key (`Id::for_url`, hex) with
//! `.obj`. A file is written as `.tmp` and renamed into place, so a crash
//! leaves either the old file, the new one, or a `.tmp` that the next start
//! deletes. Renames are not followed by `fsync`: after a power cut a file
//! may be torn, which its checksums catch. Layout, integers little-endian:
//!
//! ```text
//! 0   magic "CORALDT1"
//! 8   meta_len  u32      (the metadata that follows the 64-byte header)
//! 12  0u32
//! 16  body_len  u64
//! 24  meta_sum  [20]     SHA-1 over bytes 0..24, body_sum and the metadata
//! 44  body_sum  [20]     SHA-1 over the body
//! 64  metadata: url, date (Unix ms at which the age was 0), lifetime (ms),
//!     status, version, header fields, Vary fields — each string u32-length-prefixed
//! 64+meta_len  body
//! ```
//!
//! At start the index is rebuilt from the headers and metadata alone (a
//! file whose length, magic or metadata checksum is wrong is deleted); the
//! body checksum is checked on every read, and a damaged file is deleted
//! and reported as a miss, never served.
//!
//! # Budget
//!
//! Files are charged their size rounded up to 4 KiB blocks against the
//! configured byte budget and evicted least recently used. Writes go
//! through one writer task in order; a write that would queue more than
//! [`MAX_QUEUED_BYTES`] is dropped (counted), so a slow disk cannot hold
//! evicted objects in memory.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use coral_core::http::cache::Object;
use coral_core::http::parse::{Headers, ResponseHead};
use coral_core::id::Id;
use coral_core::time::Instant as CoreInstant;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

const MAGIC: &[u8; 8] = b"CORALDT1";
const HEADER: usize = 64;
/// Largest metadata accepted from a file: far above any head the proxy keeps.
const MAX_META: usize = 1 << 20;
/// Disk space is allocated in blocks; charging them keeps the budget honest
/// for many small objects and bounds the index to `budget / BLOCK` entries.
const BLOCK: u64 = 4096;
/// Most bytes waiting in the writer's queue.
pub const MAX_QUEUED_BYTES: u64 = 64 << 20;
/// Most writes waiting in the writer's queue.
const QUEUE: usize = 1024;
/// Most bytes of files being read at once, in KiB (64 MiB): a read holds
/// its whole file in memory until the core has it, so a burst of misses
/// on large objects waits here instead of growing the process.
const MAX_READING_KIB: u32 = 64 * 1024;
/// Most removals remembered while writes are queued; beyond, every queued
/// write is skipped instead (safe: a skipped write is only a later miss).
const MAX_TOMBSTONES: usize = 4096;

/// Where the disk tier lives and how much it may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// The directory (created if missing), e.g. `<data_dir>/http-cache`.
    pub dir: PathBuf,
    /// Bytes of files kept, counted in 4 KiB blocks.
    pub budget_bytes: u64,
}

/// Counters of the disk tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Objects indexed.
    pub objects: u64,
    /// Bytes charged (whole blocks).
    pub bytes: u64,
    /// The budget.
    pub budget: u64,
    /// Objects found at start.
    pub restored: u64,
    /// Reads that found a sound file.
    pub hits: u64,
    /// Reads of a URL not on disk.
    pub misses: u64,
    /// Files written.
    pub writes: u64,
    /// Writes dropped because the queue was full or the object too big.
    pub writes_dropped: u64,
    /// Files deleted to stay within the budget.
    pub evictions: u64,
    /// Files deleted because they were partial or damaged.
    pub discarded: u64,
    /// I/O errors (the object is then simply not on disk).
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    restored: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    writes_dropped: AtomicU64,
    evictions: AtomicU64,
    discarded: AtomicU64,
    errors: AtomicU64,
}

struct Entry {
    /// Order of the write that made the file (to tell it from newer ones).
    seq: u64,
    /// Recency: the key of this entry in `Index::lru`.
    tick: u64,
    charged: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    lru: BTreeMap<u64, String>,
    used: u64,
    next_tick: u64,
    /// Order given to writes and removals as the core asked for them.
    next_seq: u64,
    /// URLs removed while writes queued before the removal may still run:
    /// those writes are skipped. Emptied whenever the queue is.
    tombstones: HashMap<String, u64>,
    /// Writes queued before this order are skipped (tombstones overflowed).
    barrier: u64,
    queued: usize,
    queued_bytes: u64,
}

impl Index {
    fn touch(&mut self, url: &str) {
        let tick = self.next_tick;
        if let Some(e) = self.entries.get_mut(url) {
            self.next_tick += 1;
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, url.to_owned());
        }
    }

    fn insert(&mut self, url: String, seq: u64, charged: u64) {
        self.forget(&url);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(tick, url.clone());
        self.used += charged;
        self.entries.insert(url, Entry { seq, tick, charged });
    }

    fn forget(&mut self, url: &str) -> Option<Entry> {
        let e = self.entries.remove(url)?;
        self.lru.remove(&e.tick);
        self.used -= e.charged;
        Some(e)
    }
}

struct Job {
    url: String,
    object: Arc<Object>,
    /// Unix time in ms at which the object's age was zero.
    date_ms: u64,
    seq: u64,
    size: u64,
}

/// The disk tier of one proxy.
pub struct DiskCache {
    dir: PathBuf,
    budget: u64,
    index: Mutex<Index>,
    counters: Counters,
    tx: mpsc::Sender<Job>,
    reading: tokio::sync::Semaphore,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn charge(file_len: u64) -> u64 {
    file_len.div_ceil(BLOCK).max(1) * BLOCK
}

/// The file of `url` in `dir`.
fn file_of(dir: &Path, url: &str) -> PathBuf {
    dir.join(format!("{}.obj", Id::for_url(url)))
}

impl DiskCache {
    /// Opens (creating) the directory, rebuilds the index from the files
    /// there (deleting partial and damaged ones, then the least recently
    /// written beyond the budget), and starts the writer task.
    pub async fn open(opts: DiskOptions) -> std::io::Result<Arc<Self>> {
        let dir = opts.dir.clone();
        let budget = opts.budget_bytes;
        let (index, restored, discarded, evicted) =
            tokio::task::spawn_blocking(move || rebuild(&dir, budget))
                .await
                .map_err(std::io::Error::other)??;
        let (tx, rx) = mpsc::channel(QUEUE);
        let disk = Arc::new(Self {
            dir: opts.dir,
            budget,
            index: Mutex::new(index),
            counters: Counters::default(),
            tx,
            reading: tokio::sync::Semaphore::new(MAX_READING_KIB as usize),
        });
        disk.counters.restored.store(restored, Ordering::Relaxed);
        disk.counters.discarded.store(discarded, Ordering::Relaxed);
        disk.counters.evictions.store(evicted, Ordering::Relaxed);
        info!(
            dir = %disk.dir.display(),
            objects = restored,
            discarded,
            budget_bytes = budget,
            "HTTP disk cache opened"
        );
        tokio::spawn(writer(Arc::downgrade(&disk), rx));
        Ok(disk)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `url` has a file (a cheap check before a read).
    pub fn contains(&self, url: &str) -> bool {
        self.index().entries.contains_key(url)
    }

    /// The stored copy of `url`, with `stored_at = now` and its age since
    /// its date; `None` when absent or damaged (the file is then deleted).
    pub async fn read(self: &Arc<Self>, url: String, now: CoreInstant) -> Option<Object> {
        let charged = self.index().entries.get(&url).map_or(0, |e| e.charged);
        let kib = u32::try_from(charged.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, MAX_READING_KIB);
        let _permit = self.reading.acquire_many(kib).await.ok()?;
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.read_blocking(&url, now))
            .await
            .ok()
            .flatten()
    }

    fn read_blocking(&self, url: &str, now: CoreInstant) -> Option<Object> {
        let seq = {
            let mut ix = self.index();
            let Some(seq) = ix.entries.get(url).map(|e| e.seq) else {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            ix.touch(url);
            seq
        };
        let path = file_of(&self.dir, url);
        let bytes = match std::fs::read(&path) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                debug!(error = %e, path = %path.display(), "disk cache read failed");
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.drop_entry(url, seq);
                return None;
            }
        };
        match decode(&bytes, true) {
            Some(f) if f.url == url => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                let age = Duration::from_millis(unix_ms().saturating_sub(f.date_ms));
                Some(Object {
                    head: f.head,
                    body: f.body,
                    stored_at: now,
                    initial_age: age,
                    lifetime: f.lifetime,
                    vary: f.vary,
                })
            }
            _ => {
                warn!(path = %path.display(), "damaged disk cache file discarded");
                self.counters.discarded.fetch_add(1, Ordering::Relaxed);
                let mut ix = self.index();
                if ix.entries.get(url).is_some_and(|e| e.seq == seq) {
                    ix.forget(url);
                    let _ = std::fs::remove_file(&path);
                }
                None
            }
        }
    }

    fn drop_entry(&self, url: &str, seq: u64) {
        let mut ix = self.index();
        if ix.entries.get(url).is_some_and(|e| e.seq == seq) {
            ix.forget(url);
        }
    }

    /// Queues `object` to be written for `url`; `age` is its age now.
    /// Dropped (and counted) when the queue is full or it cannot fit.
    pub fn write(&self, url: String, object: Arc<Object>, age: Duration) {
        let size = object.body.len() as u64;
        let date_ms = unix_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        let mut ix = self.index();
        if charge(size + HEADER as u64) > self.budget || ix.queued_bytes + size > MAX_QUEUED_BYTES {
            self.counters.writes_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let seq = ix.next_seq;
        let job = Job {
            url,
            object,
            date_ms,
            seq,
            size,
        };
        // Sent under the lock, so the queue's order is the order of `seq`.
        if self.tx.try_send(job).is_ok() {
            ix.next_seq += 1;
            ix.queued += 1;
            ix.queued_bytes += size;
        } else {
            self.counters.writes_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets `url` at once: no later read finds it, and no write queued
    /// before this call stores it again.
    pub fn remove(&self, url: &str) {
        let mut ix = self.index();
        ix.forget(url);
        let seq = ix.next_seq;
        ix.next_seq += 1;
        if ix.queued > 0 {
            if ix.tombstones.len() >= MAX_TOMBSTONES {
                ix.tombstones.clear();
                ix.barrier = seq;
            } else {
                ix.tombstones.insert(url.to_owned(), seq);
            }
        }
        // Unlinked under the lock, ordered with the writer's renames.
        match std::fs::remove_file(file_of(&self.dir, url)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> DiskStats {
        let (objects, bytes) = {
            let ix = self.index();
            (ix.entries.len() as u64, ix.used)
        };
        let c = &self.counters;
        DiskStats {
            objects,
            bytes,
            budget: self.budget,
            restored: c.restored.load(Ordering::Relaxed),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            writes_dropped: c.writes_dropped.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }

    /// Writes one queued object: a temporary file, then a rename under the
    /// index lock unless a removal came after it; then evicts to the budget.
    fn write_blocking(&self, job: &Job) {
        let path = file_of(&self.dir, &job.url);
        let tmp = self
            .dir
            .join(format!("{}.{}.tmp", Id::for_url(&job.url), job.seq));
        let written = (|| -> std::io::Result<u64> {
            let (header, meta) = encode(&job.url, &job.object, job.date_ms);
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&header)?;
            f.write_all(&meta)?;
            f.write_all(&job.object.body)?;
            Ok((header.len() + meta.len()) as u64 + job.size)
        })();
        let mut victims = Vec::new();
        {
            let mut ix = self.index();
            ix.queued = ix.queued.saturating_sub(1);
            ix.queued_bytes = ix.queued_bytes.saturating_sub(job.size);
            let superseded =
                job.seq < ix.barrier || ix.tombstones.get(&job.url).is_some_and(|&t| t > job.seq);
            match written {
                Ok(len) if !superseded => match std::fs::rename(&tmp, &path) {
                    Ok(()) => {
                        ix.insert(job.url.clone(), job.seq, charge(len));
                        self.counters.writes.fetch_add(1, Ordering::Relaxed);
                        while ix.used > self.budget {
                            let Some((_, url)) = ix.lru.pop_first() else {
                                break;
                            };
                            if let Some(e) = ix.entries.remove(&url) {
                                ix.used -= e.charged;
                            }
                            victims.push(file_of(&self.dir, &url));
                        }
                    }
                    Err(_) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        let _ = std::fs::remove_file(&tmp);
                    }
                },
                Ok(_) => {
                    let _ = std::fs::remove_file(&tmp);
                }
                Err(e) => {
                    debug!(error = %e, "disk cache write failed");
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            if ix.queued == 0 {
                ix.tombstones.clear();
            }
            // Unlinked under the lock: a later write of the same URL renames after.
            for v in &victims {
                let _ = std::fs::remove_file(v);
            }
        }
        self.counters
            .evictions
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
    }
}

/// The writer task: one job at a time, in the order they were queued.
async fn writer(disk: std::sync::Weak<DiskCache>, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Some(d) = disk.upgrade() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || d.write_blocking(&job)).await;
    }
}

/// The header and metadata of a file for `object`.
fn encode(url: &str, object: &Object, date_ms: u64) -> ([u8; HEADER], Vec<u8>) {
    let mut meta = Vec::with_capacity(256 + url.len());
    put_str(&mut meta, url.as_bytes());
    meta.put_u64_le(date_ms);
    meta.put_u64_le(u64::try_from(object.lifetime.as_millis()).unwrap_or(u64::MAX));
    meta.put_u16_le(object.head.status);
    meta.put_u8(object.head.version);
    meta.put_u32_le(object.head.headers.0.len() as u32);
    for (n, v) in &object.head.headers.0 {
        put_str(&mut meta, n.as_bytes());
        put_str(&mut meta, v);
    }
    meta.put_u32_le(object.vary.len() as u32);
    for (n, v) in &object.vary {
        put_str(&mut meta, n.as_bytes());
        match v {
            Some(v) => {
                meta.put_u8(1);
                put_str(&mut meta, v.as_bytes());
            }
            None => meta.put_u8(0),
        }
    }
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&(meta.len() as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(object.body.len() as u64).to_le_bytes());
    let body_sum = Id::hash("coral-disk-body", &object.body);
    header[44..64].copy_from_slice(&body_sum.0);
    let meta_sum = meta_sum(&header, &meta);
    header[24..44].copy_from_slice(&meta_sum.0);
    (header, meta)
}

fn meta_sum(header: &[u8; HEADER], meta: &[u8]) -> Id {
    let mut v = Vec::with_capacity(24 + 20 + meta.len());
    v.extend_from_slice(&header[..24]);
    v.extend_from_slice(&header[44..64]);
    v.extend_from_slice(meta);
    Id::hash("coral-disk-meta", &v)
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.put_u32_le(s.len() as u32);
    out.extend_from_slice(s);
}

/// A decoded file.
struct Decoded {
    url: String,
    date_ms: u64,
    lifetime: Duration,
    head: ResponseHead,
    vary: Vec<(String, Option<String>)>,
    body: Bytes,
}

/// The header's metadata length and body length, if the magic is right.
fn lengths(header: &[u8]) -> Option<(usize, u64)> {
    if header.len() < HEADER || &header[..8] != MAGIC {
        return None;
    }
    let meta_len = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
    let body_len = u64::from_le_bytes(header[16..24].try_into().ok()?);
    (meta_len <= MAX_META).then_some((meta_len, body_len))
}

/// Decodes a whole file (`with_body`) or its header and metadata alone;
/// `None` when anything is off: length, magic, a checksum, the metadata.
fn decode(file: &Bytes, with_body: bool) -> Option<Decoded> {
    let (meta_len, body_len) = lengths(file)?;
    let meta_end = HEADER.checked_add(meta_len)?;
    let header: &[u8; HEADER] = file.get(..HEADER)?.try_into().ok()?;
    let meta = file.get(HEADER..meta_end)?;
    if meta_sum(header, meta).0[..] != header[24..44] {
        return None;
    }
    let body = if with_body {
        let end = u64::try_from(meta_end).ok()?.checked_add(body_len)?;
        if file.len() as u64 != end {
            return None;
        }
        let body = file.slice(meta_end..);
        if Id::hash("coral-disk-body", &body).0[..] != header[44..64] {
            return None;
        }
        body
    } else {
        Bytes::new()
    };
    let mut m = meta;
    let url = String::from_utf8(get_str(&mut m)?.to_vec()).ok()?;
    if m.remaining() < 8 + 8 + 2 + 1 + 4 {
        return None;
    }
    let date_ms = m.get_u64_le();
    let lifetime = Duration::from_millis(m.get_u64_le());
    let status = m.get_u16_le();
    let version = m.get_u8();
    let n = m.get_u32_le() as usize;
    let mut headers = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        let name = String::from_utf8(get_str(&mut m)?.to_vec()).ok()?;
        let value = get_str(&mut m)?.to_vec();
        headers.push((name, value));
    }
    if m.remaining() < 4 {
        return None;
    }
    let n = m.get_u32_le() as usize;
    let mut vary = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let name = String::from_utf8(get_str(&mut m)?.to_vec()).ok()?;
        if !m.has_remaining() {
            return None;
        }
        let value = match m.get_u8() {
            0 => None,
            1 => Some(String::from_utf8(get_str(&mut m)?.to_vec()).ok()?),
            _ => return None,
        };
        vary.push((name, value));
    }
    if m.has_remaining() {
        return None;
    }
    Some(Decoded {
        url,
        date_ms,
        lifetime,
        head: ResponseHead {
            status,
            version,
            headers: Headers(headers),
        },
        vary,
        body,
    })
}

fn get_str<'a>(m: &mut &'a [u8]) -> Option<&'a [u8]> {
    if m.remaining() < 4 {
        return None;
    }
    let n = m.get_u32_le() as usize;
    let s = m.get(..n)?;
    m.advance(n);
    Some(s)
}

/// Reads the header and metadata of the file at `path` and checks them
/// and the file's length; the URL when sound.
fn check_file(path: &Path) -> Option<(String, u64)> {
    let mut f = std::fs::File::open(path).ok()?;
    let file_len = f.metadata().ok()?.len();
    let mut header = [0u8; HEADER];
    f.read_exact(&mut header).ok()?;
    let (meta_len, body_len) = lengths(&header)?;
    if file_len != (HEADER + meta_len) as u64 + body_len {
        return None;
    }
    let mut buf = vec![0u8; HEADER + meta_len];
    buf[..HEADER].copy_from_slice(&header);
    f.read_exact(&mut buf[HEADER..]).ok()?;
    let d = decode(&Bytes::from(buf), false)?;
    // A file under another URL's name would shadow that URL.
    (path.file_name()? == file_of(Path::new(""), &d.url).file_name()?).then_some((d.url, file_len))
}

/// Scans `dir`: the index of sound files (oldest written first in the
/// LRU order), and how many were restored, discarded and evicted.
fn rebuild(dir: &Path, budget: u64) -> std::io::Result<(Index, u64, u64, u64)> {
    std::fs::create_dir_all(dir)?;
    let mut found = Vec::new();
    let mut discarded = 0;
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") {
            // A write that never finished.
            let _ = std::fs::remove_file(&path);
            discarded += 1;
        } else if name.ends_with(".obj") {
            match check_file(&path) {
                Some((url, len)) => {
                    let mtime = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    found.push((mtime, url, len));
                }
                None => {
                    warn!(path = %path.display(), "partial or damaged disk cache file discarded");
                    let _ = std::fs::remove_file(&path);
                    discarded += 1;
                }
            }
        }
    }
    found.sort();
    let mut ix = Index::default();
    for (_, url, len) in found {
        let seq = ix.next_seq;
        ix.next_seq += 1;
        ix.insert(url, seq, charge(len));
    }
    let mut evicted = 0;
    while ix.used > budget {
        let Some((_, url)) = ix.lru.pop_first() else {
            break;
        };
        if let Some(e) = ix.entries.remove(&url) {
            ix.used -= e.charged;
        }
        let _ = std::fs::remove_file(file_of(dir, &url));
        evicted += 1;
    }
    let restored = ix.entries.len() as u64;
    Ok((ix, restored, discarded, evicted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(body: &[u8]) -> Arc<Object> {
        Arc::new(Object {
            head: ResponseHead {
                status: 200,
                version: 1,
                headers: Headers(vec![
                    ("etag".to_owned(), b"\"x\"".to_vec()),
                    ("content-type".to_owned(), b"text/plain".to_vec()),
                ]),
            },
            body: Bytes::copy_from_slice(body),
            stored_at: CoreInstant::ZERO,
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            vary: vec![
                ("accept-encoding".to_owned(), Some("gzip".to_owned())),
                ("accept-language".to_owned(), None),
            ],
        })
    }

    fn file(url: &str, o: &Object) -> Vec<u8> {
        let (h, m) = encode(url, o, 1_000);
        [&h[..], &m[..], &o.body[..]].concat()
    }

    #[test]
    fn files_round_trip_and_any_damage_is_detected() {
        let o = object(b"hello disk");
        let bytes = file("http://a/x", &o);
        let d = decode(&Bytes::from(bytes.clone()), true).unwrap();
        assert_eq!(d.url, "http://a/x");
        assert_eq!(
            (d.head.clone(), d.vary.clone()),
            (o.head.clone(), o.vary.clone())
        );
        assert_eq!((d.date_ms, d.lifetime), (1_000, Duration::from_secs(60)));
        assert_eq!(&d.body[..], b"hello disk");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                decode(&Bytes::from(bad), true).is_none(),
                "flip at {i} undetected"
            );
        }
        for cut in 0..bytes.len() {
            assert!(decode(&Bytes::from(bytes[..cut].to_vec()), true).is_none());
        }
    }

    #[tokio::test]
    async fn the_index_survives_a_reopen_and_the_budget_holds() {
        let dir = std::env::temp_dir().join(format!("coral-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = DiskOptions {
            dir: dir.clone(),
            budget_bytes: 3 * BLOCK,
        };
        let d = DiskCache::open(opts.clone()).await.unwrap();
        for i in 0..5 {
            d.write(
                format!("http://a/{i}"),
                object(&[i; 100]),
                Duration::from_secs(2),
            );
        }
        // The writer runs in order; wait for it.
        for _ in 0..200 {
            if d.stats().writes == 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = d.stats();
        assert_eq!((s.writes, s.objects, s.evictions), (5, 3, 2), "{s:?}");
        assert!(s.bytes <= 3 * BLOCK);
        assert!(!d.contains("http://a/0") && d.contains("http://a/4"));
        let o = d
            .read("http://a/4".to_owned(), CoreInstant::ZERO)
            .await
            .unwrap();
        assert_eq!(&o.body[..], &[4; 100][..]);
        assert!(o.initial_age >= Duration::from_secs(2));
        d.remove("http://a/4");
        assert!(
            d.read("http://a/4".to_owned(), CoreInstant::ZERO)
                .await
                .is_none()
        );
        drop(d);
        // A partial write left behind and a torn file are discarded on reopen.
        std::fs::write(dir.join("junk.7.tmp"), b"half").unwrap();
        let torn = file_of(&dir, "http://a/3");
        let full = std::fs::read(&torn).unwrap();
        std::fs::write(&torn, &full[..full.len() - 10]).unwrap();
        let d = DiskCache::open(opts).await.unwrap();
        let s = d.stats();
        assert_eq!((s.restored, s.discarded), (1, 2), "{s:?}");
        assert!(
            d.read("http://a/2".to_owned(), CoreInstant::ZERO)
                .await
                .is_some()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
