//! Fuzz target bodies, shared by `fuzz/` and the corpus replay test.
//!
//! Each `pub fn` here is the whole body of one cargo-fuzz target in
//! `fuzz/fuzz_targets/`, which only forwards its input. Keeping the bodies in
//! the crate lets them reach internals, and lets a stable test
//! (`tests/tests/fuzz_corpus.rs`) replay the checked-in corpus without
//! libFuzzer. A target reports a bug by panicking, so the core's no-panic
//! rule does not hold in this module; it is compiled only for tests and the
//! `fuzzing` feature.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::contact::{ClusterInfo, Contact, Services};
use crate::id::{Distance, Id};
use crate::wire::{
    Body, ErrorCode, MAX_CONTACTS, MAX_LEVELS, MAX_STORED, MAX_VALUE_LEN, MAX_VALUES, Message,
    Scope, StoreResult, StoredInfo,
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_messages_are_valid_targets() {
        for (name, m) in seed_messages() {
            let mut b = Vec::new();
            m.encode(&mut b);
            assert!(b.len() <= crate::wire::MAX_DATAGRAM, "{name}");
            wire_decode(&b);
            assert_eq!(Message::decode(&b).as_ref(), Ok(&m), "{name}");
        }
    }
}
