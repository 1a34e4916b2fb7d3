//! Fuzz target bodies, shared by `fuzz/` and the corpus replay test.
//!
//! Each `pub fn` here is the whole body of one cargo-fuzz target in
//! `fuzz/fuzz_targets/`, which only forwards its input. Keeping the bodies in
//! the crate lets them reach internals, and lets a stable test
//! (`tests/tests/fuzz_corpus.rs`) replay the checked-in corpus without
//! libFuzzer. A target reports a bug by panicking, so the core's no-panic
//! rule does not hold in this module; it is compiled only for tests and the
//! `fuzzing` feature.
//!
//! - [`wire_decode`]: untrusted bytes into the wire codec.
//! - [`node_inputs`]: a script of datagrams, replies, time steps and
//!   commands into one [`Node`], checking the drive contract's promises
//!   after every input (the script format is documented at its opcodes).
//! - [`http_head`]: untrusted bytes into the HTTP proxy's parser: request
//!   and response heads, their body framing, and the chunked decoder.
//! - [`dns_query`]: untrusted bytes into the DNS redirector, over UDP and
//!   TCP, for a resolver measured near, far, or not at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::config::{Config, LevelConfig};
use crate::contact::{ClusterInfo, Contact, Services};
use crate::dsht::hints::{Hint, Router};
use crate::id::{Distance, Id};
use crate::node::MAX_ROUTER_HINTS;
use crate::time::Instant;
use crate::wire::{
    Body, ErrorCode, MAX_CONTACTS, MAX_DATAGRAM, MAX_LEVELS, MAX_STORED, MAX_VALUE_LEN, MAX_VALUES,
    Message, Scope, StoreResult, StoredInfo,
};
use crate::{Event, Levels, Node, OpError, OpId};

/// Untrusted bytes into the HTTP parse module. The first byte picks what
/// the rest is: a request head (with its framing), a response head (to a
/// HEAD request when bit 2 is set), a chunked body fed whole and fed in two
/// pieces split at the second byte (both must agree), or a body that is
/// chunk-encoded and must decode back to itself.
pub fn http_head(data: &[u8]) {
    use crate::http::parse::{
        ChunkedDecoder, HeadLimits, encode_chunk, parse_request, parse_response, request_framing,
        response_framing,
    };
    use bytes::BytesMut;

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = HeadLimits {
        max_bytes: 8192,
        max_headers: 64,
    };
    let chunked = |parts: &[&[u8]]| -> (Result<bool, crate::http::parse::ParseError>, Vec<u8>) {
        let (mut dec, mut input, mut out) =
            (ChunkedDecoder::default(), BytesMut::new(), Vec::new());
        let mut last = Ok(false);
        for part in parts {
            input.extend_from_slice(part);
            last = dec.decode(&mut input, &mut out);
            if !matches!(last, Ok(false)) {
                break;
            }
        }
        (last, out.concat())
    };
    match mode % 4 {
        0 => {
            if let Ok(Some((head, n))) = parse_request(rest, limits) {
                assert!(
                    n <= rest.len() && n <= limits.max_bytes,
                    "head of {n} bytes"
                );
                assert!(head.headers.0.len() <= limits.max_headers);
                let _ = request_framing(&head);
            }
        }
        1 => {
            if let Ok(Some((head, n))) = parse_response(rest, limits) {
                assert!(
                    n <= rest.len() && n <= limits.max_bytes,
                    "head of {n} bytes"
                );
                assert!(head.headers.0.len() <= limits.max_headers);
                let _ = response_framing(mode & 4 != 0, &head);
            }
        }
        2 => {
            let Some((&at, body)) = rest.split_first() else {
                return;
            };
            let at = usize::from(at).min(body.len());
            let (whole, whole_out) = chunked(&[body]);
            let (split, split_out) = chunked(&[&body[..at], &body[at..]]);
            // A complete body decodes the same however it arrives.
            if whole == Ok(true) && split == Ok(true) {
                assert_eq!(whole_out, split_out);
            }
        }
        _ => {
            let mut wire = Vec::new();
            if !rest.is_empty() {
                encode_chunk(rest, &mut wire);
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (done, out) = chunked(&[&wire]);
            assert_eq!(done, Ok(true), "{wire:?}");
            assert_eq!(out, rest);
        }
    }
}

/// Decodes `data` as a datagram; whatever decodes must re-encode to exactly
/// `data` and decode again to the same message (the codec's strictness).
pub fn wire_decode(data: &[u8]) {
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    let mut out = Vec::new();
    msg.encode(&mut out);
    assert_eq!(
        out.len(),
        msg.encoded_len(),
        "encoded_len disagrees with encode"
    );
    assert_eq!(out, data, "re-encoding changed the bytes");
    let again = Message::decode(&out).expect("a re-encoded message decodes");
    assert_eq!(again, msg, "decoding the re-encoding changed the message");
}

/// Valid messages of every type, named, from which the seed corpus of
/// `fuzz/corpus/wire_decode/` was generated (one file per message).
pub fn seed_messages() -> Vec<(&'static str, Message)> {
    let id = |b: u8| Id([b; 20]);
    let contact = |b: u8, addr: &str| Contact {
        id: id(b),
        addr: addr.parse::<SocketAddr>().unwrap(),
        services: Services(b % 4),
    };
    let v4 = |n: usize| -> SmallVec<[Contact; 8]> {
        (0..n)
            .map(|i| contact(i as u8, &format!("10.0.{i}.1:8090")))
            .collect()
    };
    let v6 = |n: usize| -> SmallVec<[Contact; 8]> {
        (0..n)
            .map(|i| contact(0x60 + i as u8, &format!("[2001:db8::{i:x}]:8091")))
            .collect()
    };
    let scope = Scope {
        level: 1,
        cluster: id(0xC1),
    };
    let (key, target) = (id(0x4B), Distance([0x0F; 20]));
    let value = |n: usize| Bytes::from(vec![0x56; n]);
    let stored = |n: usize| -> SmallVec<[StoredInfo; 4]> {
        (0..n)
            .map(|i| StoredInfo {
                fingerprint: i as u64 * 0x0101,
                ttl_secs: 3600,
            })
            .collect()
    };
    let msg = |clusters: usize, body: Body| Message {
        request_id: 0x1234_5678_9ABC_DEF0,
        sender: id(0x5E),
        services: Services::HTTP.with(Services::DNS),
        clusters: (0..clusters)
            .map(|l| ClusterInfo {
                level: l as u8,
                cluster: id(0xC0 + l as u8),
                size: 40 >> l,
                age_secs: 600,
            })
            .collect(),
        body,
    };
    vec![
        ("ping", msg(0, Body::Ping)),
        ("ping_3_levels", msg(3, Body::Ping)),
        ("pong", msg(1, Body::Pong)),
        ("pong_max_levels", msg(MAX_LEVELS, Body::Pong)),
        ("find_near", msg(3, Body::FindNear { scope, key, target })),
        ("get_probe", msg(3, Body::GetProbe { scope, key, target })),
        ("put_probe", msg(3, Body::PutProbe { scope, key, target })),
        (
            "store",
            msg(
                3,
                Body::Store {
                    scope,
                    key,
                    value: value(40),
                    ttl_secs: 3600,
                },
            ),
        ),
        (
            "store_empty",
            msg(
                0,
                Body::Store {
                    scope,
                    key,
                    value: Bytes::new(),
                    ttl_secs: 20,
                },
            ),
        ),
        (
            "store_max_value",
            msg(
                3,
                Body::Store {
                    scope,
                    key,
                    value: value(MAX_VALUE_LEN),
                    ttl_secs: 1,
                },
            ),
        ),
        (
            "nodes_empty",
            msg(
                3,
                Body::Nodes {
                    contacts: SmallVec::new(),
                },
            ),
        ),
        ("nodes_v4", msg(3, Body::Nodes { contacts: v4(8) })),
        ("nodes_v6", msg(3, Body::Nodes { contacts: v6(3) })),
        (
            "nodes_max",
            msg(
                MAX_LEVELS,
                Body::Nodes {
                    contacts: v6(MAX_CONTACTS),
                },
            ),
        ),
        (
            "get_reply_values",
            msg(
                3,
                Body::GetReply {
                    values: (0..3).map(value).collect(),
                    contacts: SmallVec::new(),
                },
            ),
        ),
        (
            "get_reply_max_values",
            msg(
                MAX_LEVELS,
                Body::GetReply {
                    values: (0..MAX_VALUES).map(|_| value(MAX_VALUE_LEN)).collect(),
                    contacts: SmallVec::new(),
                },
            ),
        ),
        (
            "get_reply_contacts",
            msg(
                3,
                Body::GetReply {
                    values: SmallVec::new(),
                    contacts: v4(5),
                },
            ),
        ),
        (
            "put_probe_reply",
            msg(
                3,
                Body::PutProbeReply {
                    loaded: false,
                    stored: stored(2),
                    contacts: v4(4),
                },
            ),
        ),
        (
            "put_probe_reply_loaded",
            msg(
                3,
                Body::PutProbeReply {
                    loaded: true,
                    stored: stored(0),
                    contacts: v6(2),
                },
            ),
        ),
        (
            "put_probe_reply_max",
            msg(
                MAX_LEVELS,
                Body::PutProbeReply {
                    loaded: true,
                    stored: stored(MAX_STORED),
                    contacts: v6(MAX_CONTACTS),
                },
            ),
        ),
        (
            "store_reply_ok",
            msg(
                3,
                Body::StoreReply {
                    result: StoreResult::Ok,
                },
            ),
        ),
        (
            "store_reply_full",
            msg(
                3,
                Body::StoreReply {
                    result: StoreResult::Full,
                },
            ),
        ),
        (
            "store_reply_loaded",
            msg(
                3,
                Body::StoreReply {
                    result: StoreResult::Loaded,
                },
            ),
        ),
        (
            "error_wrong_cluster",
            msg(
                3,
                Body::Error {
                    code: ErrorCode::WrongCluster,
                },
            ),
        ),
        (
            "error_no_such_level",
            msg(
                3,
                Body::Error {
                    code: ErrorCode::NoSuchLevel,
                },
            ),
        ),
        (
            "error_busy",
            msg(
                0,
                Body::Error {
                    code: ErrorCode::Busy,
                },
            ),
        ),
        (
            "error_invalid",
            msg(
                3,
                Body::Error {
                    code: ErrorCode::Invalid,
                },
            ),
        ),
    ]
}

// ----- node_inputs --------------------------------------------------------
//
// One `Node` driven by a script decoded from the fuzz input. The first byte
// picks the configuration; then each input is an opcode byte and its
// arguments (a missing byte reads as 0, so every byte string is a script).
// The harness plays the rest of the network: it answers the node's requests,
// plausibly or not, from the addresses they went to, so lookups, puts and
// joins get deep. After every input it drains the node as the drive
// contract says and checks what the node promises; at the end it lets time
// run with no more replies and checks that every operation reports once.

/// Inputs one run processes at most, so that a run stays fast.
const MAX_INPUTS: usize = 256;
/// Virtual time the inputs may cover (time steps beyond it are clamped).
const MAX_VIRTUAL_TIME: Duration = Duration::from_secs(3 * 24 * 3600);
/// Virtual time the final drain may take before an operation that has not
/// reported counts as stuck. Without replies every RPC times out within
/// `rpc_timeout_max` (2 s) and a walk sends at most `lookup_max_rpcs`, so a
/// put over three levels needs minutes at worst.
const DRAIN_TIME: Duration = Duration::from_secs(2 * 3600);
/// Timer steps the final drain may take.
const DRAIN_STEPS: usize = 100_000;
/// The node's latest requests, kept for the harness to answer.
const RECENT_REQUESTS: usize = 64;
/// Nodes in the network the harness invents to answer the node.
const NET_SIZE: usize = 32;
/// Addresses whose advertised id the harness remembers.
const MAX_ADVERTISED: usize = 4096;

/// Opcodes of a `node_inputs` script; arguments in the comments, one byte each.
mod op {
    /// `peer, len, len × byte`: a datagram of raw bytes from a peer.
    pub(super) const RAW: u8 = 0;
    /// `peer, header, kind, level, key, target[, len, fill, ttl]`: a
    /// well-formed request from a peer (see [`super::Harness::request`]).
    pub(super) const REQUEST: u8 = 1;
    /// `index, style, header, contents…`: a reply to one of the node's recent requests.
    pub(super) const REPLY: u8 = 2;
    /// `style, header`: a reply to every recent request not yet answered,
    /// with contents derived from the request.
    pub(super) const REPLY_ALL: u8 = 3;
    /// `peer, style, header, contents…`: a reply nobody asked for.
    pub(super) const UNSOLICITED: u8 = 4;
    /// `unit, amount`: time passes, then `handle_timeout`.
    pub(super) const ADVANCE: u8 = 5;
    /// Time jumps to `poll_timeout`, then `handle_timeout` there.
    pub(super) const STEP: u8 = 6;
    /// `unit, amount`: time passes but the driver is late (no `handle_timeout`).
    pub(super) const LATE: u8 = 7;
    /// `mask`: `join` through the peers whose bit is set.
    pub(super) const JOIN: u8 = 8;
    /// `key, levels`: `get`.
    pub(super) const GET: u8 = 9;
    /// `key, len, fill, ttl, levels`: `put` of `len % 121` bytes.
    pub(super) const PUT: u8 = 10;
    /// `level, count, services`: `nodes`.
    pub(super) const NODES: u8 = 11;
    /// `key`: `find_closest`.
    pub(super) const CLOSEST: u8 = 12;

    /// The opcode of an input byte; the spare values repeat the busiest ones.
    pub(super) fn decode(b: u8) -> u8 {
        match b % 17 {
            16 => REPLY_ALL,
            13 => STEP,
            14 => REPLY,
            15 => REQUEST,
            x => x,
        }
    }
}

/// Reply styles (the low three bits of a style byte); 0–4 are a plausible
/// reply of the right type.
mod style {
    /// `Error`, code from bits 3–4.
    pub(super) const ERROR: u8 = 5;
    /// A plausible body, but from a stranger: a random sender id, or (bit 3)
    /// the expected id from another peer's address.
    pub(super) const IMPOSTOR: u8 = 6;
    /// A body of another type, chosen by bits 3–5.
    pub(super) const MISMATCHED: u8 = 7;
}

/// A cursor over the fuzz input; reads past the end give zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The node's fixed configuration, picked by the first input byte: bit 0
/// gives three levels instead of one; bit 1 small caps (k = 2, l = 1,
/// beta = 2, few ops and RPCs in flight, a tiny store) so that buckets
/// fill, values spill and every cap is reached; bits 2–3 the services the
/// node advertises; bits 4–7 the seed.
fn node_config(flags: u8) -> Config {
    let mut c = Config {
        seed: u64::from(flags >> 4),
        services: Services((flags >> 2) & 3),
        levels: vec![LevelConfig::GLOBAL],
        ..Config::default()
    };
    if flags & 1 != 0 {
        c.levels = LevelConfig::coral_hierarchy();
    }
    if flags & 2 != 0 {
        let d = &mut c.dsht;
        d.k = 2;
        d.l = 1;
        d.beta = 2;
        d.max_keys = 4;
        d.max_values = 8;
        d.reply_contacts = 3;
        d.max_inflight = 16;
        d.max_ops = 8;
        d.lookup_max_rpcs = 8;
    } else {
        c.dsht.max_inflight = 256;
        c.dsht.max_ops = 32;
    }
    c
}

/// The node's address.
fn node_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 8091))
}

/// The peers datagrams come from: IPv4 and IPv6, and last the node's own
/// address (a spoofed source).
fn peers() -> [SocketAddr; 8] {
    let v6 = |seg: [u16; 8], port| SocketAddr::from((Ipv6Addr::from(seg), port));
    [
        SocketAddr::from(([10, 0, 0, 2], 8091)),
        SocketAddr::from(([10, 0, 0, 3], 8091)),
        SocketAddr::from(([10, 0, 7, 9], 9000)),
        SocketAddr::from(([192, 168, 1, 20], 8091)),
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2], 8091),
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 3], 8091),
        v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 9], 4000),
        node_addr(),
    ]
}

/// A TTL from one byte: zero (invalid on the wire), short, long, or beyond `max_ttl`.
fn ttl_secs(b: u8) -> u32 {
    match b % 8 {
        0 => 0,
        1 => 1,
        2 => 30,
        3 => 600,
        4 => 3600,
        5 => 86_400,
        6 => 3 * 86_400,
        _ => u32::MAX,
    }
}

/// A duration from two bytes: a unit (1 ms, 100 ms, 1 s, 1 min) and a count.
fn duration(unit: u8, amount: u8) -> Duration {
    let unit = match unit % 4 {
        0 => Duration::from_millis(1),
        1 => Duration::from_millis(100),
        2 => Duration::from_secs(1),
        _ => Duration::from_secs(60),
    };
    unit * u32::from(amount)
}

/// `d` shifted right by `bytes` bytes, with `mix` in its last byte: a node
/// at about `d / 256^bytes` from the key.
fn nearer(d: Distance, bytes: usize, mix: u8) -> Distance {
    let mut out = [0u8; 20];
    out[bytes.min(20)..].copy_from_slice(&d.0[..20 - bytes.min(20)]);
    out[19] ^= mix;
    Distance(out)
}

/// An address made up for a node the harness invents, a function of its id.
fn synthetic_addr(id: &Id) -> SocketAddr {
    let b = &id.0;
    if b[15] & 1 == 0 {
        SocketAddr::from((
            [10, 100 + b[19] % 100, b[18], b[17]],
            1024 + u16::from(b[16]),
        ))
    } else {
        let seg = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let ip = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, seg(16), seg(18));
        SocketAddr::from((ip, 8091))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AppKind {
    Join,
    Get,
    Put,
    Nodes,
    Closest,
    Check,
}

/// An application operation the harness started.
struct AppOp {
    kind: AppKind,
    key: Option<Id>,
    done: bool,
}

/// A request the node sent.
struct Sent {
    to: SocketAddr,
    msg: Message,
    answered: bool,
}

/// The node, the network around it, and what the harness has checked so far.
struct Harness {
    node: Node,
    config: Config,
    now: Instant,
    /// No time has passed since the last `handle_timeout`, so every timer is
    /// in the future.
    timers_current: bool,
    /// End of the virtual time the inputs may cover.
    horizon: Instant,
    peers: [SocketAddr; 8],
    keys: [Id; 4],
    /// The ids of the invented network that answers `REPLY_ALL`.
    net: Vec<Id>,
    /// The node's latest requests, oldest first.
    recent: VecDeque<Sent>,
    /// The id the harness told the node each invented address has.
    advertised: BTreeMap<SocketAddr, Id>,
    /// Every application operation started, by id.
    ops: BTreeMap<OpId, AppOp>,
    /// The most operations seen running at once.
    ops_peak: usize,
    /// What each `find_nodes` asked for.
    nodes_asked: BTreeMap<OpId, (usize, Services)>,
    /// Every event, in order (at most one per operation).
    events: Vec<Event>,
    /// The value of the latest `put`, whose fingerprint replies may name.
    last_value: Bytes,
    next_request_id: u64,
    buf: Vec<u8>,
}

impl Harness {
    fn new(flags: u8) -> Self {
        let config = node_config(flags);
        let node = Node::new(config.clone(), node_addr(), Instant::ZERO);
        let keys = [0u8, 1, 2, 3].map(|i| Id::for_url(&format!("http://example.com/{i}")));
        let mut h = Self {
            node,
            config,
            now: Instant::ZERO,
            timers_current: true,
            horizon: Instant::ZERO + MAX_VIRTUAL_TIME,
            peers: peers(),
            keys,
            net: (0..NET_SIZE as u8)
                .map(|i| Id::hash("fuzz-net", &[i]))
                .collect(),
            recent: VecDeque::new(),
            advertised: BTreeMap::new(),
            ops: BTreeMap::new(),
            ops_peak: 0,
            nodes_asked: BTreeMap::new(),
            events: Vec::new(),
            last_value: Bytes::new(),
            next_request_id: 0,
            buf: Vec::new(),
        };
        h.settle(None);
        h
    }

    fn levels(&self) -> usize {
        self.config.levels.len()
    }

    /// A key from one byte: a URL key, our own id, a peer's id, an id next
    /// to ours, or one of 32 hashed ids.
    fn key(&self, b: u8) -> Id {
        match b % 8 {
            i @ 0..=3 => self.keys[usize::from(i)],
            4 => self.node.id(),
            5 => Id::for_node(self.peers[usize::from(b >> 5)]),
            6 => self.node.id().xor(&nearer(Distance::MAX, 17, b)),
            _ => Id::hash("fuzz-key", &[b]),
        }
    }

    /// The id a well-behaved node at `addr` has.
    fn expected_id(&self, addr: SocketAddr) -> Id {
        self.advertised
            .get(&addr)
            .copied()
            .unwrap_or_else(|| Id::for_node(addr))
    }

    /// A node the harness invents at id `id`; it answers at its made-up address.
    fn invent(&mut self, id: Id) -> Contact {
        let addr = synthetic_addr(&id);
        if self.advertised.len() < MAX_ADVERTISED || self.advertised.contains_key(&addr) {
            self.advertised.insert(addr, id);
        }
        Contact {
            id,
            addr,
            services: Services(id.0[0] & 3),
        }
    }

    /// A contact from one byte, for a reply about `key` near `target`.
    fn contact(&mut self, g: u8, key: Id, target: Distance) -> Contact {
        let peer = self.peers[usize::from(g >> 5)];
        let services = Services(g >> 6);
        match g % 8 {
            0 | 1 => Contact {
                id: Id::for_node(peer),
                addr: peer,
                services,
            },
            2 | 3 => self.invent(key.xor(&nearer(target, usize::from((g >> 3) % 4) * 5, g))),
            4 => self.invent(self.net[usize::from(g >> 3) % NET_SIZE]),
            5 => self.node.contact(),
            // Lies: our own id at a peer's address, a stranger's id at one.
            6 => Contact {
                id: self.node.id(),
                addr: peer,
                services,
            },
            _ => Contact {
                id: Id::hash("fuzz-impostor", &[g]),
                addr: peer,
                services,
            },
        }
    }

    fn contacts(
        &mut self,
        input: &mut Input<'_>,
        key: Id,
        target: Distance,
    ) -> SmallVec<[Contact; 8]> {
        let n = input.byte() % (MAX_CONTACTS as u8 + 1);
        (0..n)
            .map(|_| {
                let g = input.byte();
                self.contact(g, key, target)
            })
            .collect()
    }

    /// Contacts a cooperative network would return: the members of the
    /// invented network nearest the target distance, so that a walk ends in
    /// a few hops as in a real network of `NET_SIZE` nodes.
    fn helpful_contacts(&mut self, key: Id, target: Distance) -> SmallVec<[Contact; 8]> {
        let mut net: Vec<(Distance, Id)> = self
            .net
            .iter()
            .map(|id| (id.distance(&key).abs_diff(&target), *id))
            .collect();
        net.select_nth_unstable(2);
        net[..3].sort_unstable();
        net[..3].iter().map(|&(_, id)| self.invent(id)).collect()
    }

    fn values(input: &mut Input<'_>) -> SmallVec<[Bytes; 4]> {
        let n = 1 + input.byte() % MAX_VALUES as u8;
        let len = usize::from(input.byte() % (MAX_VALUE_LEN as u8 + 4));
        let fill = input.byte();
        (0..n)
            .map(|i| Bytes::from(vec![fill.wrapping_add(i); len]))
            .collect()
    }

    fn stored(&self, input: &mut Input<'_>) -> SmallVec<[StoredInfo; 4]> {
        let n = input.byte() % (MAX_STORED as u8 + 1);
        (0..n)
            .map(|_| {
                let b = input.byte();
                let fingerprint = if b & 1 == 0 {
                    crate::dsht::store::fingerprint(&self.last_value)
                } else {
                    u64::from(b).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                };
                StoredInfo {
                    fingerprint,
                    ttl_secs: ttl_secs(b >> 1),
                }
            })
            .collect()
    }

    /// A message from `from` with header byte `m`: bits 0–2 the clusters
    /// (mostly ours, so the node learns the sender), bits 3–5 the sender id
    /// (mostly the expected one), bits 6–7 the services.
    fn message(&self, m: u8, from: SocketAddr, request_id: u64, body: Body) -> Message {
        let sender = match (m >> 3) % 8 {
            6 => Id::hash("fuzz-sender", &[m]),
            7 => self.node.id(),
            _ => self.expected_id(from),
        };
        let own = self.node.clusters();
        let clusters = match m % 8 {
            5 => SmallVec::new(),
            6 => own
                .iter()
                .take(1)
                .copied()
                .chain([ClusterInfo {
                    level: 1,
                    cluster: Id::hash("fuzz-cluster", &[m]),
                    size: 7,
                    age_secs: 1,
                }])
                .collect(),
            // Every level, repeated and unknown ones included.
            7 => (0..MAX_LEVELS)
                .map(|i| {
                    let level = (i * 3 % 9) as u8;
                    ClusterInfo {
                        level,
                        cluster: own.get(usize::from(level)).map_or(Id::ZERO, |c| c.cluster),
                        size: u32::MAX,
                        age_secs: u32::MAX,
                    }
                })
                .collect(),
            _ => own
                .iter()
                .map(|c| ClusterInfo {
                    size: u32::from(m),
                    ..*c
                })
                .collect(),
        };
        Message {
            request_id,
            sender,
            services: Services(m >> 6),
            clusters,
            body,
        }
    }

    /// A reply to `req` in style `s`, contents from `input`.
    fn reply_body(&mut self, req: &Body, s: u8, input: &mut Input<'_>) -> Body {
        let (key, target) = match req {
            Body::FindNear { key, target, .. }
            | Body::GetProbe { key, target, .. }
            | Body::PutProbe { key, target, .. } => (*key, *target),
            Body::Store { key, .. } => (*key, Distance::MAX),
            _ => (self.node.id(), Distance::MAX),
        };
        match s % 8 {
            style::ERROR => Body::Error {
                code: match (s >> 3) % 4 {
                    0 => ErrorCode::WrongCluster,
                    1 => ErrorCode::NoSuchLevel,
                    2 => ErrorCode::Busy,
                    _ => ErrorCode::Invalid,
                },
            },
            style::MISMATCHED => match (s >> 3) % 6 {
                0 => Body::Pong,
                1 => Body::Nodes {
                    contacts: self.contacts(input, key, target),
                },
                2 => Body::GetReply {
                    values: Self::values(input),
                    contacts: SmallVec::new(),
                },
                3 => Body::PutProbeReply {
                    loaded: s & 0x40 != 0,
                    stored: self.stored(input),
                    contacts: SmallVec::new(),
                },
                4 => Body::StoreReply {
                    result: StoreResult::Ok,
                },
                // A request where a reply belongs: handled as a request.
                _ => Body::Ping,
            },
            _ => match req {
                Body::FindNear { .. } | Body::Neighbours => Body::Nodes {
                    contacts: self.contacts(input, key, target),
                },
                Body::GetProbe { .. } if s & 8 != 0 => Body::GetReply {
                    values: Self::values(input),
                    contacts: SmallVec::new(),
                },
                Body::GetProbe { .. } => Body::GetReply {
                    values: SmallVec::new(),
                    contacts: self.contacts(input, key, target),
                },
                Body::PutProbe { .. } => Body::PutProbeReply {
                    loaded: s & 16 != 0,
                    stored: self.stored(input),
                    contacts: self.contacts(input, key, target),
                },
                Body::Store { .. } => Body::StoreReply {
                    result: match (s >> 3) % 3 {
                        0 => StoreResult::Ok,
                        1 => StoreResult::Full,
                        _ => StoreResult::Loaded,
                    },
                },
                _ => Body::Pong,
            },
        }
    }

    /// A reply a cooperative network gives `req`, shaped by style byte `r`:
    /// bits 0–1 pick helpful contacts, values for gets, no contacts, or Busy;
    /// bit 2 makes put-probed nodes full and loaded; bits 3–4 the store result.
    fn auto_reply(&mut self, req: &Body, r: u8) -> Body {
        if r % 4 == 3 {
            return Body::Error {
                code: ErrorCode::Busy,
            };
        }
        let helpful = r.is_multiple_of(4) || r % 4 == 1;
        let near = |h: &mut Self, key: Id, target: Distance| {
            if helpful {
                h.helpful_contacts(key, target)
            } else {
                SmallVec::new()
            }
        };
        match req {
            Body::FindNear { key, target, .. } => Body::Nodes {
                contacts: near(self, *key, *target),
            },
            Body::GetProbe { .. } if r % 4 == 1 => Body::GetReply {
                values: (0..2)
                    .map(|i| Bytes::from(vec![r.wrapping_add(i); 10]))
                    .collect(),
                contacts: SmallVec::new(),
            },
            Body::GetProbe { key, target, .. } => Body::GetReply {
                values: SmallVec::new(),
                contacts: near(self, *key, *target),
            },
            Body::PutProbe { key, target, .. } => {
                let long = StoredInfo {
                    fingerprint: 1,
                    ttl_secs: u32::MAX,
                };
                let full = r & 4 != 0;
                Body::PutProbeReply {
                    loaded: full,
                    stored: if full {
                        SmallVec::from_elem(long, self.config.dsht.l)
                    } else {
                        SmallVec::new()
                    },
                    contacts: near(self, *key, *target),
                }
            }
            Body::Store { .. } => Body::StoreReply {
                result: match (r >> 3) % 4 {
                    0 | 1 => StoreResult::Ok,
                    2 => StoreResult::Full,
                    _ => StoreResult::Loaded,
                },
            },
            _ => Body::Pong,
        }
    }

    // ----- inputs ---------------------------------------------------------

    /// Processes one input.
    fn step(&mut self, input: &mut Input<'_>) {
        match op::decode(input.byte()) {
            op::RAW => {
                let from = self.peers[usize::from(input.byte() % 8)];
                let len = usize::from(input.byte());
                let data = input.take(len).to_vec();
                self.deliver(from, &data);
            }
            op::REQUEST => self.request(input),
            op::REPLY => {
                let i = usize::from(input.byte());
                let (s, m) = (input.byte(), input.byte());
                if self.recent.is_empty() {
                    return;
                }
                let i = i % self.recent.len();
                self.recent[i].answered = true;
                let (to, req_id, req) = {
                    let r = &self.recent[i];
                    (r.to, r.msg.request_id, r.msg.body.clone())
                };
                let body = self.reply_body(&req, s, input);
                let mut msg = self.message(m, to, req_id, body);
                let mut from = to;
                if s % 8 == style::IMPOSTOR {
                    if s & 8 != 0 {
                        from = self.peers[usize::from(s >> 4) % 8];
                    } else {
                        msg.sender = Id::hash("fuzz-impostor", &[s, m]);
                    }
                }
                self.send(from, &msg);
            }
            op::REPLY_ALL => {
                let (r, m) = (input.byte(), input.byte());
                let pending: Vec<(SocketAddr, u64, Body)> = self
                    .recent
                    .iter_mut()
                    .filter(|s| !s.answered)
                    .map(|s| {
                        s.answered = true;
                        (s.to, s.msg.request_id, s.msg.body.clone())
                    })
                    .collect();
                for (to, req_id, req) in pending {
                    let body = self.auto_reply(&req, r);
                    let msg = self.message(m, to, req_id, body);
                    self.send(to, &msg);
                }
            }
            op::UNSOLICITED => {
                let from = self.peers[usize::from(input.byte() % 8)];
                let (s, m) = (input.byte(), input.byte());
                let req = Body::FindNear {
                    scope: Scope {
                        level: 0,
                        cluster: Id::ZERO,
                    },
                    key: self.key(s),
                    target: Distance::MAX,
                };
                let body = self.reply_body(&req, s, input);
                let id = self.fresh_request_id(m);
                let msg = self.message(m, from, id, body);
                self.send(from, &msg);
            }
            op::ADVANCE => {
                let d = duration(input.byte(), input.byte());
                self.now = (self.now + d).min(self.horizon.max(self.now));
                self.timeout();
            }
            op::STEP => {
                let at = self.node.poll_timeout().expect("a node always has a timer");
                self.now = self.now.max(at);
                self.timeout();
            }
            op::LATE => {
                let d = duration(input.byte(), input.byte());
                let later = (self.now + d).min(self.horizon.max(self.now));
                if later > self.now {
                    self.now = later;
                    self.timers_current = false;
                }
            }
            op::JOIN => {
                let mask = input.byte();
                let bootstrap: Vec<SocketAddr> = (0..8)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| self.peers[i])
                    .collect();
                let busy = self.busy();
                match self.node.join(self.now, &bootstrap) {
                    Ok(op) => {
                        assert!(!busy, "join accepted at the cap");
                        self.started(op, AppKind::Join, None);
                    }
                    Err(OpError::Busy) => {
                        assert!(busy, "join refused below the cap");
                        self.settle(None);
                    }
                    Err(e) => panic!("join refused: {e}"),
                }
            }
            op::GET => {
                let key = self.key(input.byte());
                let levels = Levels(input.byte());
                let busy = self.busy();
                match self.node.get(self.now, key, levels) {
                    Ok(op) => {
                        assert!(!busy, "get accepted at the cap");
                        self.started(op, AppKind::Get, Some(key));
                    }
                    Err(OpError::Busy) => {
                        assert!(busy, "get refused below the cap");
                        self.settle(None);
                    }
                    Err(e) => panic!("get refused: {e}"),
                }
            }
            op::CLOSEST => {
                let key = self.key(input.byte());
                let busy = self.busy();
                match self.node.find_closest(self.now, key) {
                    Ok(op) => {
                        assert!(!busy, "find_closest accepted at the cap");
                        self.started(op, AppKind::Closest, Some(key));
                    }
                    Err(OpError::Busy) => {
                        assert!(busy, "find_closest refused below the cap");
                        self.settle(None);
                    }
                    Err(e) => panic!("find_closest refused: {e}"),
                }
            }
            op::PUT => {
                let key = self.key(input.byte());
                let len = usize::from(input.byte() % 121);
                let fill = input.byte();
                let ttl = Duration::from_secs(u64::from(ttl_secs(input.byte())));
                let levels = Levels(input.byte());
                let value = Bytes::from(vec![fill; len]);
                let busy = self.busy();
                let max_len = self.config.dsht.max_value_len.min(MAX_VALUE_LEN);
                match self.node.put(self.now, key, value.clone(), ttl, levels) {
                    Ok(op) => {
                        assert!(
                            len <= max_len && !busy,
                            "put accepted: {len} bytes, busy {busy}"
                        );
                        self.last_value = value;
                        self.started(op, AppKind::Put, Some(key));
                    }
                    Err(OpError::ValueTooLong { len: l, max }) => {
                        assert_eq!((l, max), (len, max_len));
                        assert!(len > max_len);
                        self.settle(None);
                    }
                    Err(OpError::Busy) => {
                        assert!(busy && len <= max_len, "put refused as busy");
                        self.settle(None);
                    }
                }
            }
            op::NODES => {
                let level = input.byte() % 5;
                let count = usize::from(input.byte() % 32);
                let services = Services(input.byte() % 4);
                let got = self.node.nodes(self.now, level, count, None, services);
                assert!(got.len() <= count);
                let table = self.node.contacts(level);
                let me = self.node.contact();
                for c in &got {
                    assert!(c.services.contains(services), "{c:?} lacks {services:?}");
                    assert!(table.contains(c) || *c == me, "nodes() invented {c:?}");
                }
                // The same question through the DSHT's hints, near a peer,
                // behind up to 7 routers (other peers' addresses); with bit
                // 7 of the router count, the hints alone, each router with
                // an RTT from the input (0: unknown).
                let peer = self.peers[usize::from(input.byte() % 8)];
                let target = peer.ip();
                let n = input.byte();
                // With bit 6, a liveness check of that peer first.
                if n & 0x40 != 0 {
                    let contact = Contact {
                        id: Id::for_node(peer),
                        addr: peer,
                        services: Services::NONE,
                    };
                    match self.node.check_live(self.now, contact) {
                        Ok(op) => self.started(op, AppKind::Check, None),
                        Err(OpError::Busy) => {
                            assert!(self.busy(), "check_live refused below the cap");
                            self.settle(None);
                        }
                        Err(e) => panic!("check_live refused: {e}"),
                    }
                }
                let routers: Vec<IpAddr> = (0..n % 8)
                    .map(|i| self.peers[usize::from(i)].ip())
                    .collect();
                // Either way the node refuses as busy exactly when the new
                // gets would pass `max_ops`: one for find_nodes, one per
                // hint key (the prefix and each distinct router) for
                // find_hinted.
                let (started, busy, what) = if n & 0x80 != 0 {
                    let routers: Vec<Router> = routers
                        .into_iter()
                        .map(|addr| Router {
                            addr,
                            rtt: match input.byte() {
                                0 => None,
                                b => Some(Duration::from_millis(u64::from(b))),
                            },
                        })
                        .collect();
                    let mut keys: Vec<IpAddr> = routers.iter().map(|r| r.addr).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    let parts = 1 + keys.len().min(MAX_ROUTER_HINTS);
                    let busy = self.node.ops_in_flight() + parts > self.config.dsht.max_ops;
                    let started = self
                        .node
                        .find_hinted(self.now, level, count, target, &routers, services);
                    (started, busy, "find_hinted")
                } else {
                    let busy = self.busy();
                    let started = self
                        .node
                        .find_nodes_via(self.now, level, count, target, &routers, services);
                    (started, busy, "find_nodes")
                };
                match started {
                    Ok(op) => {
                        assert!(!busy, "{what} accepted at the cap");
                        self.nodes_asked.insert(op, (count, services));
                        self.started(op, AppKind::Nodes, None);
                    }
                    Err(OpError::Busy) => {
                        assert!(busy, "{what} refused below the cap");
                        self.settle(None);
                    }
                    Err(e) => panic!("{what} refused: {e}"),
                }
            }
            _ => unreachable!("op::decode returns only opcodes"),
        }
    }

    /// `REQUEST`: `peer, header, kind, level, key, target`, then for a
    /// store `len, fill, ttl`. Level 3 is never served; bit 7 of the level
    /// byte names a cluster we are not in.
    fn request(&mut self, input: &mut Input<'_>) {
        let from = self.peers[usize::from(input.byte() % 8)];
        let m = input.byte();
        let kind = input.byte() % 6;
        let lb = input.byte();
        let level = lb % 4;
        let cluster = if lb & 0x80 != 0 {
            Id::hash("fuzz-cluster", &[lb])
        } else {
            self.node
                .clusters()
                .get(usize::from(level))
                .map_or(Id::ZERO, |c| c.cluster)
        };
        let scope = Scope { level, cluster };
        let key = self.key(input.byte());
        let target = Distance([input.byte(); 20]);
        let body = match kind {
            0 => Body::Ping,
            1 => Body::FindNear { scope, key, target },
            2 => Body::GetProbe { scope, key, target },
            3 => Body::PutProbe { scope, key, target },
            5 => Body::Neighbours,
            _ => {
                let len = usize::from(input.byte() % (MAX_VALUE_LEN as u8 + 1));
                let fill = input.byte();
                Body::Store {
                    scope,
                    key,
                    value: Bytes::from(vec![fill; len]),
                    ttl_secs: ttl_secs(input.byte()),
                }
            }
        };
        let id = self.fresh_request_id(m);
        let msg = self.message(m, from, id, body);
        self.send(from, &msg);
    }

    fn fresh_request_id(&mut self, m: u8) -> u64 {
        self.next_request_id += 1;
        (u64::from(m) << 56) | self.next_request_id
    }

    fn send(&mut self, from: SocketAddr, msg: &Message) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        self.deliver(from, &bytes);
    }

    /// Hands a datagram to the node; a request must be answered at once,
    /// anything else must not be.
    fn deliver(&mut self, from: SocketAddr, data: &[u8]) {
        let malformed = self.node.stats().malformed;
        self.node.handle_datagram(self.now, from, data);
        let expect = match Message::decode(data) {
            Ok(m) if m.sender != self.node.id() => {
                (!m.body.is_reply()).then_some((from, m.request_id, m.body))
            }
            _ => {
                assert_eq!(
                    self.node.stats().malformed,
                    malformed + 1,
                    "an undecodable datagram, or one claiming our id, is counted"
                );
                None
            }
        };
        self.settle(expect);
    }

    fn timeout(&mut self) {
        self.node.handle_timeout(self.now);
        self.timers_current = true;
        self.settle(None);
    }

    /// What find_nodes or find_hinted operation `op` asked for: how many
    /// nodes, offering what.
    fn asked(&self, op: OpId) -> (usize, Services) {
        self.nodes_asked
            .get(&op)
            .copied()
            .unwrap_or((0, Services::NONE))
    }

    fn busy(&self) -> bool {
        self.node.ops_in_flight() >= self.config.dsht.max_ops
    }

    fn started(&mut self, op: OpId, kind: AppKind, key: Option<Id>) {
        let fresh = self.ops.insert(
            op,
            AppOp {
                kind,
                key,
                done: false,
            },
        );
        assert!(fresh.is_none(), "{op:?} issued twice");
        self.settle(None);
    }

    // ----- the drive contract and the checks ------------------------------

    /// Drains every output as the drive contract says, checking each, and
    /// then the node's state. `expect` is a request just delivered: exactly
    /// one reply to it must go out.
    fn settle(&mut self, expect: Option<(SocketAddr, u64, Body)>) {
        let mut replies = 0;
        while let Some(t) = self.node.poll_transmit(&mut self.buf) {
            assert!(
                t.size <= MAX_DATAGRAM && t.size <= self.buf.len(),
                "datagram of {} bytes",
                t.size
            );
            let msg = Message::decode(&self.buf[..t.size])
                .unwrap_or_else(|e| panic!("the node sent an undecodable datagram: {e}"));
            assert_eq!(msg.sender, self.node.id());
            assert_eq!(msg.clusters.len(), self.levels());
            if msg.body.is_reply() {
                replies += 1;
                let Some((from, req_id, req)) = &expect else {
                    panic!("a reply nobody asked for: {msg:?}");
                };
                assert_eq!((t.destination, msg.request_id), (*from, *req_id));
                self.check_reply(req, &msg.body);
            } else {
                if self.recent.len() == RECENT_REQUESTS {
                    self.recent.pop_front();
                }
                self.recent.push_back(Sent {
                    to: t.destination,
                    msg,
                    answered: false,
                });
            }
        }
        assert_eq!(
            replies,
            usize::from(expect.is_some()),
            "one reply per request"
        );

        while let Some(event) = self.node.poll_event() {
            self.check_event(&event);
            self.events.push(event);
        }

        let at = self.node.poll_timeout().expect("a node always has a timer");
        if self.timers_current {
            // Every timer is a positive delay from an input's `now`, and
            // `handle_timeout(now)` leaves none at or before `now`: a driver
            // that obeys `poll_timeout` never spins.
            assert!(
                at > self.now,
                "timer at {at:?} is not after now {:?}",
                self.now
            );
        }

        self.ops_peak = self.ops_peak.max(self.node.ops_in_flight());
        let max_ops = self.config.dsht.max_ops;
        assert!(
            self.node.ops_in_flight() <= max_ops,
            "{} operations running, cap {max_ops}",
            self.node.ops_in_flight()
        );
        let k = self.config.dsht.k;
        for level in 0..=self.levels() as u8 {
            let len = self.node.routing_len(level);
            assert!(len <= 160 * k, "level {level} holds {len} contacts");
        }
    }

    /// The routing tables hold what they claim: distinct contacts, never
    /// ourselves. Checked once per input (a `REPLY_ALL` delivers many
    /// datagrams), as it walks every table.
    fn check_tables(&self) {
        for level in 0..=self.levels() as u8 {
            let contacts = self.node.contacts(level);
            assert_eq!(contacts.len(), self.node.routing_len(level));
            let ids: BTreeSet<Id> = contacts.iter().map(|c| c.id).collect();
            assert_eq!(ids.len(), contacts.len(), "an id twice at level {level}");
            assert!(!ids.contains(&self.node.id()), "our own id in our table");
        }
    }

    /// The node's answer to a request of ours has the matching type.
    fn check_reply(&self, req: &Body, reply: &Body) {
        let scope = match req {
            Body::FindNear { scope, .. }
            | Body::GetProbe { scope, .. }
            | Body::PutProbe { scope, .. }
            | Body::Store { scope, .. } => Some(scope),
            _ => None,
        };
        if let Some(scope) = scope
            && usize::from(scope.level) >= self.levels()
        {
            assert_eq!(
                reply,
                &Body::Error {
                    code: ErrorCode::NoSuchLevel
                }
            );
            return;
        }
        let n = self.config.dsht.reply_contacts;
        match (req, reply) {
            (Body::Ping, Body::Pong) | (_, Body::Error { .. }) => {}
            (Body::FindNear { .. }, Body::Nodes { contacts })
            | (Body::PutProbe { .. }, Body::PutProbeReply { contacts, .. }) => {
                assert!(contacts.len() <= n);
            }
            (Body::Neighbours, Body::Nodes { contacts }) => {
                // Nodes it measured: never itself, each once.
                assert!(contacts.len() <= n);
                for (i, c) in contacts.iter().enumerate() {
                    assert_ne!(c.id, self.node.id(), "{contacts:?}");
                    assert!(contacts[..i].iter().all(|d| d.id != c.id), "{contacts:?}");
                }
            }
            (Body::GetProbe { .. }, Body::GetReply { values, contacts }) => {
                assert!(contacts.len() <= n);
                assert!(
                    values.is_empty() || contacts.is_empty(),
                    "a get reply carries values or contacts, never both"
                );
            }
            (Body::Store { .. }, Body::StoreReply { .. }) => {}
            _ => panic!("{reply:?} answers {req:?}"),
        }
    }

    fn check_event(&mut self, event: &Event) {
        let levels = self.levels();
        let (op, kind, key) = match event {
            Event::Joined { op, .. } => (*op, AppKind::Join, None),
            Event::GetDone {
                op,
                key,
                values,
                level,
                ..
            } => {
                assert_eq!(values.is_empty(), level.is_none(), "{event:?}");
                assert!(level.is_none_or(|l| usize::from(l) < levels), "{event:?}");
                assert!(values.len() <= MAX_VALUES, "{event:?}");
                assert!(values.iter().all(|v| v.len() <= MAX_VALUE_LEN), "{event:?}");
                (*op, AppKind::Get, Some(*key))
            }
            Event::PutDone {
                op, key, stored, ..
            } => {
                let mut seen = Vec::new();
                for (l, _) in stored {
                    assert!(usize::from(*l) < levels, "{event:?}");
                    assert!(!seen.contains(l), "stored twice at one level: {event:?}");
                    seen.push(*l);
                }
                (*op, AppKind::Put, Some(*key))
            }
            Event::NodesFound { op, nodes, hinted } => {
                let (count, services) = self.asked(*op);
                assert!(nodes.len() <= count, "{event:?}");
                assert!(*hinted <= nodes.len() || nodes.len() == count, "{event:?}");
                for (i, c) in nodes.iter().enumerate() {
                    assert!(c.services.contains(services), "{event:?}");
                    assert!(
                        nodes[..i].iter().all(|d| d.id != c.id),
                        "duplicate: {event:?}"
                    );
                }
                (*op, AppKind::Nodes, None)
            }
            Event::HintsFound { op, hints } => {
                let (count, services) = self.asked(*op);
                assert!(hints.len() <= count, "{event:?}");
                for (i, h) in hints.iter().enumerate() {
                    assert!(h.contact.services.contains(services), "{event:?}");
                    assert!(
                        hints[..i].iter().all(|d| d.contact.id != h.contact.id),
                        "duplicate: {event:?}"
                    );
                }
                // Estimated nodes first, nearest first; the unknown after.
                assert!(
                    hints.windows(2).all(
                        |w| w[1].rtt.is_none() || w[0].rtt.is_some_and(|a| Some(a) <= w[1].rtt)
                    ),
                    "not ranked: {event:?}"
                );
                (*op, AppKind::Nodes, None)
            }
            Event::Checked { op, contact, .. } => {
                assert!(self.peers.contains(&contact.addr), "{event:?}");
                (*op, AppKind::Check, None)
            }
            Event::ClosestFound {
                op, key, closest, ..
            } => {
                // Never a node farther than this node itself.
                let me = self.node.id();
                assert!(closest.id.distance(key) <= me.distance(key), "{event:?}");
                (*op, AppKind::Closest, Some(*key))
            }
            Event::ClusterChanged {
                level, from, to, ..
            } => {
                // Level 0 is one global cluster; a move changes the cluster.
                assert!(*level > 0 && usize::from(*level) < levels, "{event:?}");
                assert!(from.level == *level && to.level == *level, "{event:?}");
                assert_ne!(from.cluster, to.cluster, "{event:?}");
                return;
            }
        };
        let app = self
            .ops
            .get_mut(&op)
            .unwrap_or_else(|| panic!("an event for an operation never started: {event:?}"));
        assert!(!app.done, "a second event for {op:?}: {event:?}");
        assert_eq!((app.kind, app.key), (kind, key), "{event:?}");
        app.done = true;
    }

    /// No more replies: every operation must end by its timeouts alone.
    fn drain(&mut self) {
        let end = self.now + DRAIN_TIME;
        for _ in 0..DRAIN_STEPS {
            if self.ops.values().all(|o| o.done) {
                return;
            }
            let at = self.node.poll_timeout().expect("a node always has a timer");
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.timeout();
        }
        let stuck: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| !o.done)
            .map(|(op, _)| *op)
            .collect();
        assert!(
            stuck.is_empty(),
            "operations {stuck:?} never reported ({:?})",
            self.node
        );
    }
}

/// Runs a script and returns the harness, for tests to inspect.
fn run_node_inputs(data: &[u8]) -> Harness {
    let mut input = Input(data);
    let mut h = Harness::new(input.byte());
    for i in 0..MAX_INPUTS {
        if input.is_empty() {
            break;
        }
        h.step(&mut input);
        if i % 4 == 3 {
            h.check_tables();
        }
    }
    h.drain();
    h.check_tables();
    h
}

/// Drives one [`Node`] through a script of inputs decoded from `data` —
/// datagrams (raw, well-formed requests, plausible and hostile replies to
/// the node's own requests), time steps, and the commands `join`, `get`,
/// `put` and `nodes` — obeying the drive contract after each and checking
/// what the node promises: every datagram it sends fits and decodes, each
/// request gets one reply of the matching type, timers lie in the future
/// once handled, state stays within its caps, and every operation reports
/// exactly once, at the latest when time runs on without replies.
pub fn node_inputs(data: &[u8]) {
    run_node_inputs(data);
}

/// Builds `node_inputs` scripts.
struct Script(Vec<u8>);

impl Script {
    fn new(flags: u8) -> Self {
        Self(vec![flags])
    }

    fn op(mut self, op: u8, args: &[u8]) -> Self {
        self.0.push(op);
        self.0.extend_from_slice(args);
        self
    }

    fn repeat(mut self, n: usize, op: u8, args: &[u8]) -> Self {
        for _ in 0..n {
            self = self.op(op, args);
        }
        self
    }

    /// Cooperative replies to everything, `rounds` times.
    fn converse(self, rounds: usize, style: u8) -> Self {
        self.repeat(rounds, op::REPLY_ALL, &[style, 0])
    }
}

/// Scripts that join, put, get, time out and answer, from which the seed
/// corpus of `fuzz/corpus/node_inputs/` was generated (one file per script).
pub fn seed_node_inputs() -> Vec<(&'static str, Vec<u8>)> {
    const ONE: u8 = 0;
    const THREE: u8 = 1;
    const SMALL: u8 = 2;
    let joined = |flags| Script::new(flags).op(op::JOIN, &[0x0f]).converse(16, 0);
    let scripts = vec![
        (
            "join_alone_put_get",
            Script::new(ONE)
                .op(op::JOIN, &[0])
                .op(op::PUT, &[0, 10, b'v', 3, 0xff])
                .op(op::GET, &[0, 0xff])
                .op(op::ADVANCE, &[3, 11])
                .op(op::GET, &[0, 0xff]),
        ),
        ("join_one_level", joined(ONE)),
        ("join_three_levels", joined(THREE)),
        ("join_small_caps", joined(THREE | SMALL)),
        (
            "join_ipv6_bootstrap",
            Script::new(ONE).op(op::JOIN, &[0x70]).converse(8, 0),
        ),
        (
            "join_timeouts",
            Script::new(THREE)
                .op(op::JOIN, &[0xff])
                .repeat(12, op::STEP, &[])
                .op(op::ADVANCE, &[3, 30]),
        ),
        (
            "put_remote",
            joined(ONE)
                .op(op::PUT, &[3, 40, b'p', 4, 0xff])
                .converse(24, 0),
        ),
        (
            "put_three_levels_spill",
            joined(THREE)
                .op(op::PUT, &[2, 20, b'q', 5, 0xff])
                .converse(3, 0)
                .converse(3, 4)
                .converse(20, 0x10),
        ),
        (
            "put_refused_steps_back",
            joined(ONE)
                .op(op::PUT, &[3, 8, b'r', 3, 1])
                .converse(12, 0)
                .converse(12, 0x18),
        ),
        (
            "put_too_long_and_busy",
            Script::new(SMALL)
                .op(op::PUT, &[0, 120, b'x', 3, 1])
                .op(op::PUT, &[0, 97, b'x', 3, 1])
                .op(op::JOIN, &[0xff])
                .repeat(10, op::GET, &[7, 0xff])
                .op(op::PUT, &[0, 1, b'x', 3, 1]),
        ),
        (
            "get_found_remote",
            joined(THREE)
                .op(op::GET, &[2, 0xff])
                .converse(2, 0)
                .converse(2, 1),
        ),
        (
            "get_miss_every_level",
            joined(THREE).op(op::GET, &[5, 0xff]).converse(8, 2),
        ),
        (
            "get_hedged_and_late",
            joined(ONE)
                .op(op::GET, &[2, 1])
                .converse(1, 0)
                .repeat(3, op::STEP, &[])
                .op(op::LATE, &[2, 5])
                .converse(2, 0)
                .repeat(6, op::STEP, &[]),
        ),
        (
            "requests_of_every_kind",
            Script::new(THREE)
                .op(op::REQUEST, &[0, 0, 0, 0, 0, 0])
                .op(op::REQUEST, &[1, 0, 1, 0, 1, 0x40])
                .op(op::REQUEST, &[4, 0, 4, 1, 2, 0, 30, b's', 4])
                .op(op::REQUEST, &[5, 0, 2, 1, 2, 0x80])
                .op(op::REQUEST, &[2, 0, 3, 2, 2, 0x10])
                .op(op::REQUEST, &[3, 0, 1, 3, 0, 0])
                .op(op::REQUEST, &[6, 0, 2, 0x81, 0, 0])
                .op(op::REQUEST, &[7, 0x38, 0, 0, 0, 0])
                .op(op::NODES, &[0, 8, 0])
                .op(op::NODES, &[2, 8, 1]),
        ),
        (
            "hints_ranked",
            joined(THREE)
                .op(op::NODES, &[0, 8, 0, 2, 0x83, 5, 0, 40])
                .converse(16, 0),
        ),
        (
            "hot_spot_stores",
            Script::new(ONE | SMALL)
                .repeat(3, op::REQUEST, &[0, 0, 4, 0, 0, 0, 20, b'a', 5])
                .repeat(3, op::REQUEST, &[1, 0, 4, 0, 0, 0, 20, b'b', 4])
                .op(op::REQUEST, &[4, 0, 3, 0, 0, 0])
                .op(op::PUT, &[0, 20, b'c', 4, 1])
                .converse(4, 0),
        ),
        (
            "hostile_replies",
            Script::new(ONE)
                .op(op::JOIN, &[0x0f])
                .op(op::REPLY, &[0, 0x05, 0])
                .op(op::REPLY, &[1, 0x06, 0])
                .op(op::REPLY, &[2, 0x0e, 0])
                .op(op::REPLY, &[3, 0x07, 0x38])
                .op(op::REPLY, &[3, 0, 0x3d])
                .op(op::REPLY, &[0, 0, 0])
                .converse(3, 0)
                .op(op::GET, &[0, 1])
                .op(op::REPLY, &[0xff, 0x27, 0, 3, 4, 0])
                .op(op::REPLY, &[0xff, 0x08, 0, 2, 50, 7]),
        ),
        (
            "replies_with_contacts",
            Script::new(ONE)
                .op(op::JOIN, &[0x01])
                .op(op::REPLY, &[0, 0, 0])
                .op(op::REPLY, &[0xff, 0, 0, 6, 2, 10, 0x8a, 0x33, 4, 5])
                .op(op::REPLY, &[0xff, 0, 0, 4, 0x12, 0x1a, 7, 0x20])
                .converse(4, 0),
        ),
        // Regressions for the operation cap (see `settle`): three joins
        // whose level walks start bucket refreshes, and ten gets on a node
        // with a few contacts, each past `max_ops`.
        (
            "joins_refresh_past_max_ops",
            Script::new(THREE | SMALL | 0x0c)
                .op(op::JOIN, &[0x98])
                .op(op::JOIN, &[0x98])
                .op(op::JOIN, &[3])
                .op(op::REPLY_ALL, &[0x98, 3])
                .op(op::JOIN, &[]),
        ),
        (
            "gets_past_max_ops",
            (0..6)
                .fold(Script::new(SMALL), |s, p| {
                    s.op(op::REQUEST, &[p, 0, 0, 0, 0, 0])
                })
                .repeat(10, op::GET, &[7, 1]),
        ),
        (
            "garbage_and_unsolicited",
            Script::new(THREE)
                .op(op::RAW, &[0, 4, 1, 2, 3, 4])
                .op(op::RAW, &[4, 0])
                .op(op::UNSOLICITED, &[1, 0x00, 0, 3, 2, 10, 0x12])
                .op(op::UNSOLICITED, &[5, 0x0d, 0])
                .op(op::ADVANCE, &[3, 200])
                .repeat(3, op::STEP, &[]),
        ),
    ];
    scripts.into_iter().map(|(n, s)| (n, s.0)).collect()
}

/// Untrusted bytes into the DNS redirector. The first byte picks the
/// transport (bit 0: TCP), what the server knows of the resolver (bits 1-2:
/// nothing, near, far, unmeasurable) and whether queries are held for it
/// (bit 3); the rest is the message. Checks the promises the server makes
/// to any client: no panic, a UDP response never larger than the query
/// allows, every response a DNS message that echoes the query's id, and a
/// held query answered by its deadline.
pub fn dns_query(data: &[u8]) {
    use crate::dns::{DnsConfig, DnsServer, Handled, Transport};

    let Some((&mode, msg)) = data.split_first() else {
        return;
    };
    let now = Instant::ZERO;
    let config = Config {
        services: Services::HTTP.with(Services::DNS),
        ..Config::default()
    };
    let node = Node::new(config, SocketAddr::from(([10, 0, 0, 1], 8091)), now);
    let dns = DnsConfig {
        hold_budget: if mode & 8 == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(500)
        },
        ..DnsConfig::default()
    };
    let mut server = DnsServer::new(dns, node.levels().len()).unwrap();
    let client = SocketAddr::from(([192, 0, 2, 53], 5353));
    let transport = if mode & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let rtt = match (mode >> 1) & 3 {
        0 => None,
        1 => Some(Some(Duration::from_millis(5))),
        2 => Some(Some(Duration::from_millis(150))),
        _ => Some(None),
    };
    if let Some(rtt) = rtt {
        // Learn of the resolver first, so the message is answered on it.
        let mut probe = Vec::new();
        let warm = [
            0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 4, b'n', b'y', b'u', b'd', 3, b'n',
            b'e', b't', 0, 0, 1, 0, 1,
        ];
        let _ = server.handle_query(now, &node, client, Transport::Tcp, 0, &warm, &mut probe);
        while let Some(t) = server.poll_probe() {
            server.handle_probe_result(now, &node, t, rtt, &[]);
        }
        while let Some(l) = server.poll_lookup() {
            let hint = Hint {
                contact: node.contact(),
                rtt: None,
            };
            server.handle_lookup_result(now, &node, l.target, vec![hint]);
        }
        while let Some(c) = server.poll_check() {
            server.handle_check_result(now, &node, c, true);
        }
        while server.poll_answer().is_some() {}
    }
    // Without an additional record there is no EDNS: the classic 512;
    // with one, at most our own payload size of 1232.
    let limit = match transport {
        Transport::Tcp => 65_535,
        Transport::Udp if msg.len() >= 12 && msg[10] == 0 && msg[11] == 0 => 512,
        Transport::Udp => 1232,
    };
    let check = |out: &[u8]| {
        assert!(out.len() >= 12, "a response is at least a header");
        assert!(out.len() <= limit, "{} bytes over {transport:?}", out.len());
        if msg.len() >= 2 {
            assert_eq!(out[..2], msg[..2], "the response echoes the query id");
        }
        assert!(out[2] & 0x80 != 0, "QR is set");
        assert!(out[3] & 0x80 == 0, "RA is never set");
    };
    let mut out = Vec::new();
    match server.handle_query(now, &node, client, transport, 7, msg, &mut out) {
        Handled::Reply => check(&out),
        Handled::Nothing => {}
        Handled::Held => {
            let deadline = server.poll_timeout().expect("a held query has a deadline");
            assert!(deadline <= now + Duration::from_millis(500));
            server.handle_timeout(deadline, &node);
            let a = server.poll_answer().expect("answered at its deadline");
            assert_eq!(a.token, 7);
            check(&a.bytes);
        }
    }
}

/// Seeds for [`dns_query`]: a mode byte, then a query (a Coralized name,
/// an apex SOA with EDNS, a name outside the zones).
pub fn seed_dns_queries() -> Vec<(&'static str, Vec<u8>)> {
    let name = |labels: &[&str]| -> Vec<u8> {
        let mut v = Vec::new();
        for l in labels {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    };
    let query = |labels: &[&str], qtype: u16, edns: bool| -> Vec<u8> {
        let mut v = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        v.extend(name(labels));
        v.extend_from_slice(&qtype.to_be_bytes());
        v.extend_from_slice(&[0, 1]);
        if edns {
            // OPT: root owner, type 41, payload 1232, no flags, no options.
            v.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        v
    };
    let with = |mode: u8, q: Vec<u8>| -> Vec<u8> { std::iter::once(mode).chain(q).collect() };
    vec![
        (
            "coralized_udp",
            with(
                0,
                query(&["www", "Example", "com", "nyud", "net"], 1, false),
            ),
        ),
        (
            "coralized_tcp_near",
            with(3, query(&["www", "example", "com", "nyud", "net"], 1, true)),
        ),
        (
            "long_form_far",
            with(
                4,
                query(&["a", "http", "L2", "L1", "L0", "nyucd", "net"], 28, true),
            ),
        ),
        ("held", with(8, query(&["x", "nyud", "net"], 1, false))),
        ("apex_soa_edns", with(0, query(&["nyucd", "net"], 6, true))),
        ("outside", with(1, query(&["example", "org"], 1, false))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed scripts reach what their names say, so the fuzzer starts
    /// deep in the node rather than at its decoder.
    #[test]
    fn seed_scripts_reach_their_states() {
        let seeds: BTreeMap<&str, Vec<u8>> = seed_node_inputs().into_iter().collect();
        assert!((10..=24).contains(&seeds.len()));
        let run = |name: &str| run_node_inputs(&seeds[name]);
        let joined = |h: &Harness| {
            h.events
                .iter()
                .any(|e| matches!(e, Event::Joined { contacts, .. } if *contacts > 0))
        };
        let stored_remotely = |h: &Harness| {
            h.events.iter().any(|e| {
                matches!(e, Event::PutDone { stored, .. }
                    if stored.iter().any(|(_, id)| *id != h.node.id()))
            })
        };

        let h = run("join_alone_put_get");
        assert!(matches!(
            &h.events[..],
            [
                Event::Joined { contacts: 0, .. },
                Event::PutDone { .. },
                Event::GetDone { level: Some(0), .. },
                Event::GetDone { level: None, .. },
            ]
        ));
        for name in [
            "join_one_level",
            "join_three_levels",
            "join_small_caps",
            "join_ipv6_bootstrap",
            "replies_with_contacts",
        ] {
            assert!(joined(&run(name)), "{name}");
        }
        let h = run("join_timeouts");
        assert!(h.node.stats().timeouts > 0 && !joined(&h));
        for name in [
            "put_remote",
            "put_three_levels_spill",
            "put_refused_steps_back",
        ] {
            assert!(stored_remotely(&run(name)), "{name}");
        }
        let h = run("get_found_remote");
        assert!(
            h.events
                .iter()
                .any(|e| matches!(e, Event::GetDone { level: Some(2), .. }))
        );
        let h = run("get_miss_every_level");
        assert!(
            h.events
                .iter()
                .any(|e| matches!(e, Event::GetDone { level: None, hops, .. } if *hops > 0))
        );
        assert!(run("get_hedged_and_late").node.stats().hedges > 0);
        let h = run("requests_of_every_kind");
        let c = h.node.stats().rpcs_in;
        assert!(
            c.ping * c.find_near * c.get_probe * c.put_probe * c.store > 0,
            "{c:?}"
        );
        let h = run("hints_ranked");
        assert!(
            h.events
                .iter()
                .any(|e| matches!(e, Event::HintsFound { .. })),
            "{:?}",
            h.events
        );
        let h = run("hot_spot_stores");
        assert!(h.node.stats().refused_full + h.node.stats().refused_loaded > 0);
        for name in ["hostile_replies", "garbage_and_unsolicited"] {
            let h = run(name);
            assert!(
                h.node.stats().malformed > 0 && h.node.stats().unsolicited > 0,
                "{name}"
            );
        }
        let h = run("put_too_long_and_busy");
        assert!(h.events.iter().any(|e| matches!(e, Event::PutDone { .. })));
        for name in ["joins_refresh_past_max_ops", "gets_past_max_ops"] {
            let h = run(name);
            assert!(h.ops_peak >= h.config.dsht.max_ops, "{name}");
        }
    }

    #[test]
    fn any_short_input_is_a_script() {
        node_inputs(&[]);
        for flags in 0..4 {
            for op in 0..=u8::MAX {
                node_inputs(&[flags, op]);
            }
        }
    }

    #[test]
    fn seed_messages_are_valid_targets() {
        for (name, m) in seed_messages() {
            let mut b = Vec::new();
            m.encode(&mut b);
            assert!(b.len() <= MAX_DATAGRAM, "{name}");
            wire_decode(&b);
            assert_eq!(Message::decode(&b).as_ref(), Ok(&m), "{name}");
        }
    }
}
