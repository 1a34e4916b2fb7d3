//! The DSHT wire protocol: one message per UDP datagram.
//!
//! Every message carries a version byte, a request id that matches a reply to
//! its request, the sender's id and services, and the sender's cluster at
//! every level (so clustering spreads epidemically, spec §4.4), then a body.
//! Requests that address a DSHT name the level and cluster they address
//! ([`Scope`]). Each probe also names a *target distance*: the halving lookup
//! (spec §1.4) asks a node for its contacts nearest that distance from the key.
//!
//! The byte layout is documented next to the encoder below.

use bytes::Bytes;
use smallvec::SmallVec;

use crate::contact::{ClusterInfo, Contact, Level, Services};
use crate::id::{Distance, Id};

/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Largest datagram we send or accept.
pub const MAX_DATAGRAM: usize = 1200;
/// Most cluster infos on one message (one per level).
pub const MAX_LEVELS: usize = 8;
/// Most contacts in one reply.
pub const MAX_CONTACTS: usize = 16;
/// Most values in one get reply.
pub const MAX_VALUES: usize = 8;
/// Longest value on the wire.
pub const MAX_VALUE_LEN: usize = 96;
/// Most stored-value summaries in one put-probe reply.
pub const MAX_STORED: usize = 16;

/// The DSHT a request addresses: one cluster at one level.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Scope {
    /// The level.
    pub level: Level,
    /// The cluster at that level.
    pub cluster: Id,
}

/// Summary of one value a node holds for a key, as a put-probe reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StoredInfo {
    /// A fingerprint of the value (see [`crate::dsht::store::fingerprint`]).
    pub fingerprint: u64,
    /// Seconds until the value expires.
    pub ttl_secs: u32,
}

/// The outcome of a store request (spec §3.2, reverse phase).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StoreResult {
    /// Stored, or an existing copy's TTL refreshed.
    Ok,
    /// Refused: the node holds `l` values that live at least half as long.
    Full,
    /// Refused: the node is full and has also seen more than `beta` puts
    /// for the key in the last minute.
    Loaded,
}

/// Why a request was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ErrorCode {
    /// The receiver is not in the addressed cluster at that level.
    WrongCluster,
    /// The receiver does not serve that level.
    NoSuchLevel,
    /// The receiver is shedding load.
    Busy,
    /// The request was well-formed but unacceptable (e.g. value too long).
    Invalid,
}

/// The body of a message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Body {
    /// Are you alive?
    Ping,
    /// Yes.
    Pong,
    /// The halving step: "send me your contacts nearest `target` from `key`".
    FindNear {
        /// The DSHT addressed.
        scope: Scope,
        /// The key the lookup walks toward.
        key: Id,
        /// The distance from `key` the requester wants contacts near.
        target: Distance,
    },
    /// Reply to `FindNear`.
    Nodes {
        /// Contacts, at most [`MAX_CONTACTS`].
        contacts: SmallVec<[Contact; 8]>,
    },
    /// A get step: values for `key` if held, else contacts nearest `target`.
    GetProbe {
        /// The DSHT addressed.
        scope: Scope,
        /// The key.
        key: Id,
        /// The distance from `key` the requester wants contacts near.
        target: Distance,
    },
    /// Reply to `GetProbe`.
    GetReply {
        /// The values held for the key (at most [`MAX_VALUES`]); empty if none.
        values: SmallVec<[Bytes; 4]>,
        /// Contacts for the next hop (empty when values are returned).
        contacts: SmallVec<[Contact; 8]>,
    },
    /// A put's forward step: "are you loaded for `key`, and what do you hold?"
    PutProbe {
        /// The DSHT addressed.
        scope: Scope,
        /// The key.
        key: Id,
        /// The distance from `key` the requester wants contacts near.
        target: Distance,
    },
    /// Reply to `PutProbe`.
    PutProbeReply {
        /// More than `beta` puts for the key in the last minute.
        loaded: bool,
        /// The values held for the key (at most [`MAX_STORED`]).
        stored: SmallVec<[StoredInfo; 4]>,
        /// Contacts for the next hop.
        contacts: SmallVec<[Contact; 8]>,
    },
    /// A put's reverse step: store this value.
    Store {
        /// The DSHT addressed.
        scope: Scope,
        /// The key.
        key: Id,
        /// The value (at most [`MAX_VALUE_LEN`] bytes).
        value: Bytes,
        /// Seconds the value should live.
        ttl_secs: u32,
    },
    /// Reply to `Store`.
    StoreReply {
        /// What happened.
        result: StoreResult,
    },
    /// A request was refused.
    Error {
        /// Why.
        code: ErrorCode,
    },
}

/// One datagram.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// Matches a reply to its request; chosen at random by the requester.
    pub request_id: u64,
    /// The sender's node id.
    pub sender: Id,
    /// The services the sender runs.
    pub services: Services,
    /// The sender's cluster at each level it is in.
    pub clusters: SmallVec<[ClusterInfo; 3]>,
    /// What the message says.
    pub body: Body,
}

impl Body {
    /// Whether this body is a reply (and so answers a pending request).
    pub fn is_reply(&self) -> bool {
        matches!(
            self,
            Self::Pong
                | Self::Nodes { .. }
                | Self::GetReply { .. }
                | Self::PutProbeReply { .. }
                | Self::StoreReply { .. }
                | Self::Error { .. }
        )
    }
}

/// Why a datagram could not be decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DecodeError {
    /// The datagram ended before a field did.
    #[error("datagram truncated")]
    Truncated,
    /// The datagram is larger than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes exceeds the maximum")]
    TooLong(usize),
    /// A version this code does not speak.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// An unknown message type.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// A field holds a value outside its range.
    #[error("invalid value in field {0}")]
    Invalid(&'static str),
    /// A list longer than its cap.
    #[error("list {field} has {len} entries, above the cap")]
    TooMany {
        /// Which list.
        field: &'static str,
        /// How many entries it claimed.
        len: usize,
    },
    /// Bytes left over after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

impl Message {
    /// Decodes one datagram. Never panics, whatever the bytes.
    pub fn decode(_datagram: &[u8]) -> Result<Self, DecodeError> {
        todo!("codec is being written")
    }

    /// Appends the encoding of `self` to `buf`.
    pub fn encode(&self, _buf: &mut Vec<u8>) {
        todo!("codec is being written")
    }
}
