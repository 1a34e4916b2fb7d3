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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes};
use smallvec::SmallVec;

use crate::contact::{ClusterInfo, Contact, Level, Services};
use crate::id::{Distance, ID_LEN, Id};

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
        ///
        /// Values and contacts do not both fit at their caps: with
        /// [`MAX_VALUES`] values of [`MAX_VALUE_LEN`] bytes and
        /// [`MAX_LEVELS`] clusters, only 3 IPv6 contacts stay within
        /// [`MAX_DATAGRAM`]. Send contacts only when `values` is empty.
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
    /// "Send me the nodes you measured nearest to you": how a node finds
    /// latency-near nodes that XOR routing never shows it (answered with
    /// `Nodes`; see `dsht::neighbours`).
    Neighbours,
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

// Type bytes. Replies set the high bit so a capture reads at a glance.
const T_PING: u8 = 0x01;
const T_FIND_NEAR: u8 = 0x02;
const T_GET_PROBE: u8 = 0x03;
const T_PUT_PROBE: u8 = 0x04;
const T_STORE: u8 = 0x05;
const T_NEIGHBOURS: u8 = 0x06;
const T_PONG: u8 = 0x81;
const T_NODES: u8 = 0x82;
const T_GET_REPLY: u8 = 0x83;
const T_PUT_PROBE_REPLY: u8 = 0x84;
const T_STORE_REPLY: u8 = 0x85;
const T_ERROR: u8 = 0xFF;

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// Version, type, request id, sender, services, cluster count.
const HEADER_LEN: usize = 1 + 1 + 8 + ID_LEN + 1 + 1;
/// Level, cluster id, size, age.
const CLUSTER_LEN: usize = 1 + ID_LEN + 4 + 4;
/// Level, cluster id.
const SCOPE_LEN: usize = 1 + ID_LEN;
/// Scope, key, target distance.
const PROBE_LEN: usize = SCOPE_LEN + ID_LEN + ID_LEN;
/// Id, services, family and port, without the address bytes.
const CONTACT_FIXED_LEN: usize = ID_LEN + 1 + 1 + 2;
/// The smallest contact (IPv4), used to bound a count by the bytes left.
const CONTACT_MIN_LEN: usize = CONTACT_FIXED_LEN + 4;
/// Fingerprint, TTL.
const STORED_LEN: usize = 8 + 4;

/// The first `cap` items of `items`: the encoder never writes more than a
/// decoder accepts, so a list over its cap is cut rather than sent broken.
fn capped<T>(items: &[T], cap: usize) -> &[T] {
    items.get(..cap).unwrap_or(items)
}

/// A count the caller has already capped at a `MAX_*` constant, all of which
/// fit a byte.
fn count_byte(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

fn contact_len(c: &Contact) -> usize {
    CONTACT_FIXED_LEN
        + match c.addr {
            SocketAddr::V4(_) => 4,
            SocketAddr::V6(_) => 16,
        }
}

fn contacts_len(cs: &[Contact]) -> usize {
    1 + capped(cs, MAX_CONTACTS)
        .iter()
        .map(contact_len)
        .sum::<usize>()
}

fn value_len(v: &Bytes) -> usize {
    1 + v.len().min(MAX_VALUE_LEN)
}

fn put_id(buf: &mut impl BufMut, id: &[u8; ID_LEN]) {
    buf.put_slice(id);
}

fn put_scope(buf: &mut impl BufMut, s: &Scope) {
    buf.put_u8(s.level);
    put_id(buf, &s.cluster.0);
}

fn put_probe(buf: &mut impl BufMut, scope: &Scope, key: &Id, target: &Distance) {
    put_scope(buf, scope);
    put_id(buf, &key.0);
    put_id(buf, &target.0);
}

fn put_value(buf: &mut impl BufMut, v: &Bytes) {
    let v = capped(v, MAX_VALUE_LEN);
    buf.put_u8(count_byte(v.len()));
    buf.put_slice(v);
}

fn put_contacts(buf: &mut impl BufMut, cs: &[Contact]) {
    let cs = capped(cs, MAX_CONTACTS);
    buf.put_u8(count_byte(cs.len()));
    for c in cs {
        put_contact(buf, c);
    }
}

fn put_contact(buf: &mut impl BufMut, c: &Contact) {
    put_id(buf, &c.id.0);
    buf.put_u8(c.services.0);
    match c.addr {
        SocketAddr::V4(a) => {
            buf.put_u8(FAMILY_V4);
            buf.put_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            buf.put_u8(FAMILY_V6);
            buf.put_slice(&a.ip().octets());
        }
    }
    buf.put_u16(c.addr.port());
}

/// A contact as a DSHT value, for values that name a node (network hints,
/// proxy references): the same bytes as a contact inside a message.
pub fn contact_value(c: &Contact) -> Bytes {
    let mut buf = Vec::with_capacity(contact_len(c));
    put_contact(&mut buf, c);
    Bytes::from(buf)
}

/// Reads a value written by [`contact_value`]. Never panics.
pub fn contact_from_value(value: &[u8]) -> Result<Contact, DecodeError> {
    let mut r = Reader(value);
    let c = r.contact()?;
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(c)
}

/// A network hint as a DSHT value (spec §5): the node it names, then,
/// when the node measured it, its RTT to the hinted place in µs.
///
/// ```text
/// contact            as in a message (id, services, family, address, port)
/// [rtt_us: u32]      optional; absent for a prefix hint or an unmeasured hop
/// ```
///
/// A hint without the RTT is byte for byte a [`contact_value`].
pub fn hint_value(c: &Contact, rtt: Option<std::time::Duration>) -> Bytes {
    let mut buf = Vec::with_capacity(contact_len(c) + 4);
    put_contact(&mut buf, c);
    if let Some(rtt) = rtt {
        buf.put_u32(u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX));
    }
    Bytes::from(buf)
}

/// Reads a value written by [`hint_value`] (or [`contact_value`]): the
/// node and its RTT to the hinted place, if it carried one. Never panics.
pub fn hint_from_value(
    value: &[u8],
) -> Result<(Contact, Option<std::time::Duration>), DecodeError> {
    let mut r = Reader(value);
    let c = r.contact()?;
    let rtt = if r.0.is_empty() {
        None
    } else {
        Some(std::time::Duration::from_micros(u64::from(r.u32()?)))
    };
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok((c, rtt))
}

impl StoreResult {
    fn to_byte(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Full => 1,
            Self::Loaded => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, DecodeError> {
        match b {
            0 => Ok(Self::Ok),
            1 => Ok(Self::Full),
            2 => Ok(Self::Loaded),
            _ => Err(DecodeError::Invalid("store result")),
        }
    }
}

impl ErrorCode {
    fn to_byte(self) -> u8 {
        match self {
            Self::WrongCluster => 0,
            Self::NoSuchLevel => 1,
            Self::Busy => 2,
            Self::Invalid => 3,
        }
    }

    fn from_byte(b: u8) -> Result<Self, DecodeError> {
        match b {
            0 => Ok(Self::WrongCluster),
            1 => Ok(Self::NoSuchLevel),
            2 => Ok(Self::Busy),
            3 => Ok(Self::Invalid),
            _ => Err(DecodeError::Invalid("error code")),
        }
    }
}

impl Body {
    fn type_byte(&self) -> u8 {
        match self {
            Self::Ping => T_PING,
            Self::FindNear { .. } => T_FIND_NEAR,
            Self::GetProbe { .. } => T_GET_PROBE,
            Self::PutProbe { .. } => T_PUT_PROBE,
            Self::Store { .. } => T_STORE,
            Self::Neighbours => T_NEIGHBOURS,
            Self::Pong => T_PONG,
            Self::Nodes { .. } => T_NODES,
            Self::GetReply { .. } => T_GET_REPLY,
            Self::PutProbeReply { .. } => T_PUT_PROBE_REPLY,
            Self::StoreReply { .. } => T_STORE_REPLY,
            Self::Error { .. } => T_ERROR,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Ping | Self::Pong | Self::Neighbours => 0,
            Self::FindNear { .. } | Self::GetProbe { .. } | Self::PutProbe { .. } => PROBE_LEN,
            Self::Store { value, .. } => SCOPE_LEN + ID_LEN + value_len(value) + 4,
            Self::Nodes { contacts } => contacts_len(contacts),
            Self::GetReply { values, contacts } => {
                1 + capped(values, MAX_VALUES)
                    .iter()
                    .map(value_len)
                    .sum::<usize>()
                    + contacts_len(contacts)
            }
            Self::PutProbeReply {
                stored, contacts, ..
            } => 1 + 1 + STORED_LEN * capped(stored, MAX_STORED).len() + contacts_len(contacts),
            Self::StoreReply { .. } | Self::Error { .. } => 1,
        }
    }

    fn encode(&self, buf: &mut impl BufMut) {
        match self {
            Self::Ping | Self::Pong | Self::Neighbours => {}
            Self::FindNear { scope, key, target }
            | Self::GetProbe { scope, key, target }
            | Self::PutProbe { scope, key, target } => put_probe(buf, scope, key, target),
            Self::Store {
                scope,
                key,
                value,
                ttl_secs,
            } => {
                put_scope(buf, scope);
                put_id(buf, &key.0);
                put_value(buf, value);
                buf.put_u32(*ttl_secs);
            }
            Self::Nodes { contacts } => put_contacts(buf, contacts),
            Self::GetReply { values, contacts } => {
                let values = capped(values, MAX_VALUES);
                buf.put_u8(count_byte(values.len()));
                for v in values {
                    put_value(buf, v);
                }
                put_contacts(buf, contacts);
            }
            Self::PutProbeReply {
                loaded,
                stored,
                contacts,
            } => {
                buf.put_u8(u8::from(*loaded));
                let stored = capped(stored, MAX_STORED);
                buf.put_u8(count_byte(stored.len()));
                for s in stored {
                    buf.put_u64(s.fingerprint);
                    buf.put_u32(s.ttl_secs);
                }
                put_contacts(buf, contacts);
            }
            Self::StoreReply { result } => buf.put_u8(result.to_byte()),
            Self::Error { code } => buf.put_u8(code.to_byte()),
        }
    }
}

impl Message {
    /// Decodes one datagram. Never panics, whatever the bytes.
    ///
    /// Decoding is strict: every byte must be where the layout (see
    /// [`Message::encode`]) puts it, so a datagram is accepted only if
    /// re-encoding the message gives back the same bytes. Nothing is
    /// allocated before the bytes that justify it have been seen: a list's
    /// count is checked against its cap and against the bytes left first.
    pub fn decode(datagram: &[u8]) -> Result<Self, DecodeError> {
        let mut msg = Self::empty();
        msg.decode_into(datagram)?;
        Ok(msg)
    }

    /// A message to decode into: all zeros, a ping.
    pub(crate) fn empty() -> Self {
        Self {
            request_id: 0,
            sender: Id::ZERO,
            services: Services::NONE,
            clusters: SmallVec::new(),
            body: Body::Ping,
        }
    }

    /// [`Message::decode`] into `self`, reusing its lists: a node decodes
    /// every datagram into one message, and a message is sized for the
    /// longest reply (some 700 bytes), which a decode that returns it by
    /// value copies several times over. Every field is written on success;
    /// after an error `self` holds some mix of old and new fields.
    pub(crate) fn decode_into(&mut self, datagram: &[u8]) -> Result<(), DecodeError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(DecodeError::TooLong(datagram.len()));
        }
        let mut r = Reader(datagram);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let ty = r.u8()?;
        if !matches!(
            ty,
            T_PING
                | T_FIND_NEAR
                | T_GET_PROBE
                | T_PUT_PROBE
                | T_STORE
                | T_NEIGHBOURS
                | T_PONG
                | T_NODES
                | T_GET_REPLY
                | T_PUT_PROBE_REPLY
                | T_STORE_REPLY
                | T_ERROR
        ) {
            return Err(DecodeError::UnknownType(ty));
        }
        self.request_id = r.u64()?;
        self.sender = Id(r.id()?);
        self.services = Services(r.u8()?);
        let n = r.count("clusters", MAX_LEVELS, CLUSTER_LEN)?;
        self.clusters.clear();
        for _ in 0..n {
            self.clusters.push(ClusterInfo {
                level: r.u8()?,
                cluster: Id(r.id()?),
                size: r.u32()?,
                age_secs: r.u32()?,
            });
        }
        // The list-carrying bodies are filled where they lie (after a
        // switch of variant, which a node sees rarely: its peers mostly
        // send it one kind of message).
        match ty {
            T_PING => self.body = Body::Ping,
            T_NEIGHBOURS => self.body = Body::Neighbours,
            T_PONG => self.body = Body::Pong,
            T_FIND_NEAR => {
                let (scope, key, target) = r.probe()?;
                self.body = Body::FindNear { scope, key, target };
            }
            T_GET_PROBE => {
                let (scope, key, target) = r.probe()?;
                self.body = Body::GetProbe { scope, key, target };
            }
            T_PUT_PROBE => {
                let (scope, key, target) = r.probe()?;
                self.body = Body::PutProbe { scope, key, target };
            }
            T_STORE => {
                self.body = Body::Store {
                    scope: r.scope()?,
                    key: Id(r.id()?),
                    value: r.value()?,
                    ttl_secs: r.u32()?,
                }
            }
            T_NODES => {
                if !matches!(self.body, Body::Nodes { .. }) {
                    self.body = Body::Nodes {
                        contacts: SmallVec::new(),
                    };
                }
                if let Body::Nodes { contacts } = &mut self.body {
                    r.contacts_into(contacts)?;
                }
            }
            T_GET_REPLY => {
                if !matches!(self.body, Body::GetReply { .. }) {
                    self.body = Body::GetReply {
                        values: SmallVec::new(),
                        contacts: SmallVec::new(),
                    };
                }
                if let Body::GetReply { values, contacts } = &mut self.body {
                    let n = r.count("values", MAX_VALUES, 1)?;
                    values.clear();
                    for _ in 0..n {
                        values.push(r.value()?);
                    }
                    r.contacts_into(contacts)?;
                }
            }
            T_PUT_PROBE_REPLY => {
                let loaded_now = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Invalid("loaded")),
                };
                if !matches!(self.body, Body::PutProbeReply { .. }) {
                    self.body = Body::PutProbeReply {
                        loaded: false,
                        stored: SmallVec::new(),
                        contacts: SmallVec::new(),
                    };
                }
                if let Body::PutProbeReply {
                    loaded,
                    stored,
                    contacts,
                } = &mut self.body
                {
                    *loaded = loaded_now;
                    let n = r.count("stored", MAX_STORED, STORED_LEN)?;
                    stored.clear();
                    for _ in 0..n {
                        stored.push(StoredInfo {
                            fingerprint: r.u64()?,
                            ttl_secs: r.u32()?,
                        });
                    }
                    r.contacts_into(contacts)?;
                }
            }
            T_STORE_REPLY => {
                self.body = Body::StoreReply {
                    result: StoreResult::from_byte(r.u8()?)?,
                }
            }
            // T_ERROR: the only type byte left after the check above.
            _ => {
                self.body = Body::Error {
                    code: ErrorCode::from_byte(r.u8()?)?,
                }
            }
        }
        match r.0.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }

    /// The number of bytes [`Message::encode`] appends.
    ///
    /// At most [`MAX_DATAGRAM`] for every message within the caps, with one
    /// exception: a [`Body::GetReply`] carrying both values and contacts can
    /// exceed it (see its `contacts` field).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + CLUSTER_LEN * capped(&self.clusters, MAX_LEVELS).len()
            + self.body.encoded_len()
    }

    /// Appends the encoding of `self` to `buf`, reserving room once.
    ///
    /// Lists longer than their caps ([`MAX_LEVELS`], [`MAX_CONTACTS`],
    /// [`MAX_VALUES`], [`MAX_STORED`]) and values longer than
    /// [`MAX_VALUE_LEN`] are cut to the cap, so whatever is sent decodes;
    /// callers that must not lose data check the caps first. An IPv6
    /// address's flow label and scope id are not sent: they mean nothing on
    /// another host.
    ///
    /// # Layout
    ///
    /// All integers are big-endian; ids, keys and distances are 20 raw bytes;
    /// a list is a `u8` count followed by its items.
    ///
    /// Header, on every message (32 bytes + 29 per cluster, at most 264):
    ///
    /// | bytes | field                                              |
    /// |-------|----------------------------------------------------|
    /// | 1     | version, [`VERSION`]                               |
    /// | 1     | type (below)                                       |
    /// | 8     | `request_id`                                       |
    /// | 20    | `sender`                                           |
    /// | 1     | `services` (bit set, unknown bits kept)            |
    /// | 1     | cluster count n, at most [`MAX_LEVELS`]            |
    /// | 29 × n| `{u8 level, [20] cluster, u32 size, u32 age_secs}` |
    ///
    /// Body, by type:
    ///
    /// | type | body        | layout                                                   |
    /// |------|-------------|----------------------------------------------------------|
    /// | 0x01 | `Ping`      | empty                                                    |
    /// | 0x02 | `FindNear`  | scope, `[20] key`, `[20] target` (61 bytes)              |
    /// | 0x03 | `GetProbe`  | as `FindNear`                                            |
    /// | 0x04 | `PutProbe`  | as `FindNear`                                            |
    /// | 0x05 | `Store`     | scope, `[20] key`, value, `u32 ttl_secs`                 |
    /// | 0x06 | `Neighbours`| empty (answered with `Nodes`)                            |
    /// | 0x81 | `Pong`      | empty                                                    |
    /// | 0x82 | `Nodes`     | contacts                                                 |
    /// | 0x83 | `GetReply`  | `u8` count ≤ [`MAX_VALUES`] × value, contacts            |
    /// | 0x84 | `PutProbeReply` | `u8 loaded` (0 or 1), `u8` count ≤ [`MAX_STORED`] × `{u64 fingerprint, u32 ttl_secs}`, contacts |
    /// | 0x85 | `StoreReply`| `u8` result: 0 `Ok`, 1 `Full`, 2 `Loaded`               |
    /// | 0xFF | `Error`     | `u8` code: 0 `WrongCluster`, 1 `NoSuchLevel`, 2 `Busy`, 3 `Invalid` |
    ///
    /// Parts:
    ///
    /// | part     | layout                                                                      |
    /// |----------|-----------------------------------------------------------------------------|
    /// | scope    | `u8 level`, `[20] cluster` (21 bytes)                                       |
    /// | value    | `u8` length ≤ [`MAX_VALUE_LEN`], then the bytes                             |
    /// | contacts | `u8` count ≤ [`MAX_CONTACTS`] × contact                                     |
    /// | contact  | `[20] id`, `u8 services`, `u8` family (4 or 6), 4 or 16 address bytes, `u16 port` (28 or 40 bytes) |
    ///
    /// Any other version, type, family, `loaded`, result or code byte, a
    /// count or length above its cap, a missing byte or a byte left over is
    /// a [`DecodeError`].
    pub fn encode(&self, buf: &mut Vec<u8>) {
        encode_parts(
            buf,
            self.request_id,
            &self.sender,
            self.services,
            &self.clusters,
            &self.body,
        );
    }
}

/// [`Message::encode`] for a message given by its fields, byte for byte:
/// a node sending a datagram has them at hand and need not assemble a
/// [`Message`] (over 700 bytes, most of it room for reply lists) to encode it.
pub(crate) fn encode_parts(
    buf: &mut Vec<u8>,
    request_id: u64,
    sender: &Id,
    services: Services,
    clusters: &[ClusterInfo],
    body: &Body,
) {
    let clusters = capped(clusters, MAX_LEVELS);
    buf.reserve(HEADER_LEN + CLUSTER_LEN * clusters.len() + body.encoded_len());
    buf.put_u8(VERSION);
    buf.put_u8(body.type_byte());
    buf.put_u64(request_id);
    put_id(buf, &sender.0);
    buf.put_u8(services.0);
    buf.put_u8(count_byte(clusters.len()));
    for c in clusters {
        buf.put_u8(c.level);
        put_id(buf, &c.cluster.0);
        buf.put_u32(c.size);
        buf.put_u32(c.age_secs);
    }
    body.encode(buf);
}

/// A cursor over an untrusted datagram. Every read checks the bytes left
/// first, so no `Buf` getter below can panic.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut a = [0u8; N];
        self.0.copy_to_slice(&mut a);
        Ok(a)
    }

    fn id(&mut self) -> Result<[u8; ID_LEN], DecodeError> {
        self.array()
    }

    /// A list count: at most `cap`, and no more items than the bytes left
    /// could hold at `min_item` bytes each, so the caller may allocate it.
    fn count(
        &mut self,
        field: &'static str,
        cap: usize,
        min_item: usize,
    ) -> Result<usize, DecodeError> {
        let n = usize::from(self.u8()?);
        if n > cap {
            return Err(DecodeError::TooMany { field, len: n });
        }
        self.need(n * min_item)?;
        Ok(n)
    }

    fn scope(&mut self) -> Result<Scope, DecodeError> {
        Ok(Scope {
            level: self.u8()?,
            cluster: Id(self.id()?),
        })
    }

    fn probe(&mut self) -> Result<(Scope, Id, Distance), DecodeError> {
        Ok((self.scope()?, Id(self.id()?), Distance(self.id()?)))
    }

    fn value(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u8()?);
        if len > MAX_VALUE_LEN {
            return Err(DecodeError::Invalid("value length"));
        }
        self.need(len)?;
        Ok(self.0.copy_to_bytes(len))
    }

    /// A contact list, into `out` (cleared first).
    fn contacts_into(&mut self, out: &mut SmallVec<[Contact; 8]>) -> Result<(), DecodeError> {
        let n = self.count("contacts", MAX_CONTACTS, CONTACT_MIN_LEN)?;
        out.clear();
        out.reserve(n);
        for _ in 0..n {
            out.push(self.contact()?);
        }
        Ok(())
    }

    fn contact(&mut self) -> Result<Contact, DecodeError> {
        let id = Id(self.id()?);
        let services = Services(self.u8()?);
        let ip = match self.u8()? {
            FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(DecodeError::Invalid("address family")),
        };
        let addr = SocketAddr::new(ip, self.u16()?);
        Ok(Contact { id, addr, services })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::{SocketAddrV4, SocketAddrV6};

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    // ---- strategies -------------------------------------------------------

    fn id() -> impl Strategy<Value = Id> {
        any::<[u8; ID_LEN]>().prop_map(Id)
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(ip.into(), port))),
            // Flow label and scope id are host-local and not sent.
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(ip.into(), port, 0, 0))),
        ]
    }

    fn contact() -> impl Strategy<Value = Contact> {
        (id(), addr(), any::<u8>()).prop_map(|(id, addr, s)| Contact {
            id,
            addr,
            services: Services(s),
        })
    }

    fn contacts(max: usize) -> impl Strategy<Value = SmallVec<[Contact; 8]>> {
        vec(contact(), 0..=max).prop_map(SmallVec::from_vec)
    }

    fn cluster_info() -> impl Strategy<Value = ClusterInfo> {
        (any::<u8>(), id(), any::<u32>(), any::<u32>()).prop_map(
            |(level, cluster, size, age_secs)| ClusterInfo {
                level,
                cluster,
                size,
                age_secs,
            },
        )
    }

    fn scope() -> impl Strategy<Value = Scope> {
        (any::<u8>(), id()).prop_map(|(level, cluster)| Scope { level, cluster })
    }

    fn value() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..=MAX_VALUE_LEN).prop_map(Bytes::from)
    }

    fn probe() -> impl Strategy<Value = (Scope, Id, Distance)> {
        (scope(), id(), any::<[u8; ID_LEN]>().prop_map(Distance))
    }

    fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            Just(Body::Ping),
            Just(Body::Neighbours),
            Just(Body::Pong),
            probe().prop_map(|(scope, key, target)| Body::FindNear { scope, key, target }),
            probe().prop_map(|(scope, key, target)| Body::GetProbe { scope, key, target }),
            probe().prop_map(|(scope, key, target)| Body::PutProbe { scope, key, target }),
            contacts(MAX_CONTACTS).prop_map(|contacts| Body::Nodes { contacts }),
            // Values or contacts, as the field docs ask: both at their caps
            // do not fit one datagram.
            vec(value(), 1..=MAX_VALUES).prop_map(|v| Body::GetReply {
                values: SmallVec::from_vec(v),
                contacts: SmallVec::new(),
            }),
            contacts(MAX_CONTACTS).prop_map(|contacts| Body::GetReply {
                values: SmallVec::new(),
                contacts
            }),
            (
                any::<bool>(),
                vec((any::<u64>(), any::<u32>()), 0..=MAX_STORED),
                contacts(MAX_CONTACTS)
            )
                .prop_map(|(loaded, stored, contacts)| Body::PutProbeReply {
                    loaded,
                    stored: stored
                        .into_iter()
                        .map(|(fingerprint, ttl_secs)| StoredInfo {
                            fingerprint,
                            ttl_secs
                        })
                        .collect(),
                    contacts,
                }),
            (scope(), id(), value(), any::<u32>()).prop_map(|(scope, key, value, ttl_secs)| {
                Body::Store {
                    scope,
                    key,
                    value,
                    ttl_secs,
                }
            }),
            prop_oneof![
                Just(StoreResult::Ok),
                Just(StoreResult::Full),
                Just(StoreResult::Loaded)
            ]
            .prop_map(|result| Body::StoreReply { result }),
            prop_oneof![
                Just(ErrorCode::WrongCluster),
                Just(ErrorCode::NoSuchLevel),
                Just(ErrorCode::Busy),
                Just(ErrorCode::Invalid)
            ]
            .prop_map(|code| Body::Error { code }),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            any::<u64>(),
            id(),
            any::<u8>(),
            vec(cluster_info(), 0..=MAX_LEVELS),
            body(),
        )
            .prop_map(|(request_id, sender, services, clusters, body)| Message {
                request_id,
                sender,
                services: Services(services),
                clusters: SmallVec::from_vec(clusters),
                body,
            })
    }

    fn enc(m: &Message) -> Vec<u8> {
        let mut b = Vec::new();
        m.encode(&mut b);
        b
    }

    // ---- fixtures ---------------------------------------------------------

    fn v6_contact(i: u8) -> Contact {
        Contact {
            id: Id([i; ID_LEN]),
            addr: SocketAddr::V6(SocketAddrV6::new([i; 16].into(), 8090, 0, 0)),
            services: Services::HTTP,
        }
    }

    fn header(body: Body) -> Message {
        Message {
            request_id: 1,
            sender: Id([1; ID_LEN]),
            services: Services::NONE,
            clusters: SmallVec::new(),
            body,
        }
    }

    /// The largest header: a cluster at every level.
    fn full_header(body: Body) -> Message {
        let clusters = (0..MAX_LEVELS)
            .map(|l| ClusterInfo {
                level: l as u8,
                cluster: Id([l as u8; ID_LEN]),
                size: u32::MAX,
                age_secs: u32::MAX,
            })
            .collect();
        Message {
            clusters,
            ..header(body)
        }
    }

    fn scope0() -> Scope {
        Scope {
            level: 0,
            cluster: Id::ZERO,
        }
    }

    // ---- layout -----------------------------------------------------------

    /// Pins the byte layout: a change here is a protocol version bump.
    #[test]
    fn golden_nodes() {
        let m = Message {
            request_id: 0x0102_0304_0506_0708,
            sender: Id([0xAA; ID_LEN]),
            services: Services::HTTP.with(Services::DNS),
            clusters: smallvec::smallvec![ClusterInfo {
                level: 1,
                cluster: Id([0xCC; ID_LEN]),
                size: 0x10,
                age_secs: 0x0100,
            }],
            body: Body::Nodes {
                contacts: smallvec::smallvec![
                    Contact {
                        id: Id([0x11; ID_LEN]),
                        addr: "10.0.0.1:8090".parse().unwrap(),
                        services: Services::HTTP,
                    },
                    Contact {
                        id: Id([0x22; ID_LEN]),
                        addr: "[2001:db8::1]:443".parse().unwrap(),
                        services: Services::NONE,
                    },
                ],
            },
        };
        let mut want = vec![VERSION, 0x82, 1, 2, 3, 4, 5, 6, 7, 8];
        want.extend([0xAA; 20]);
        want.extend([3, 1]); // services, one cluster
        want.push(1); // level
        want.extend([0xCC; 20]);
        want.extend([0, 0, 0, 0x10, 0, 0, 1, 0]); // size, age
        want.push(2); // two contacts
        want.extend([0x11; 20]);
        want.extend([1, 4, 10, 0, 0, 1, 0x1F, 0x9A]);
        want.extend([0x22; 20]);
        want.extend([
            0, 6, 0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0xBB,
        ]);
        assert_eq!(enc(&m), want);
        assert_eq!(m.encoded_len(), want.len());
        assert_eq!(Message::decode(&want), Ok(m));
    }

    #[test]
    fn golden_store_and_put_probe_reply() {
        let store = header(Body::Store {
            scope: Scope {
                level: 2,
                cluster: Id([0x33; ID_LEN]),
            },
            key: Id([0x44; ID_LEN]),
            value: Bytes::from_static(b"hi"),
            ttl_secs: 3600,
        });
        let mut want = vec![VERSION, 0x05, 0, 0, 0, 0, 0, 0, 0, 1];
        want.extend([1; 20]);
        want.extend([0, 0, 2]);
        want.extend([0x33; 20]);
        want.extend([0x44; 20]);
        want.extend([2, b'h', b'i', 0, 0, 0x0E, 0x10]);
        assert_eq!(enc(&store), want);
        assert_eq!(Message::decode(&want), Ok(store));

        let reply = header(Body::PutProbeReply {
            loaded: true,
            stored: smallvec::smallvec![StoredInfo {
                fingerprint: 0x0A0B,
                ttl_secs: 7
            }],
            contacts: SmallVec::new(),
        });
        let mut want = vec![VERSION, 0x84, 0, 0, 0, 0, 0, 0, 0, 1];
        want.extend([1; 20]);
        want.extend([0, 0]);
        want.extend([1, 1, 0, 0, 0, 0, 0, 0, 0x0A, 0x0B, 0, 0, 0, 7, 0]);
        assert_eq!(enc(&reply), want);
        assert_eq!(Message::decode(&want), Ok(reply));
    }

    #[test]
    fn type_bytes() {
        let key = Id::ZERO;
        let target = Distance::ZERO;
        let cases = [
            (Body::Ping, 0x01),
            (Body::Neighbours, 0x06),
            (
                Body::FindNear {
                    scope: scope0(),
                    key,
                    target,
                },
                0x02,
            ),
            (
                Body::GetProbe {
                    scope: scope0(),
                    key,
                    target,
                },
                0x03,
            ),
            (
                Body::PutProbe {
                    scope: scope0(),
                    key,
                    target,
                },
                0x04,
            ),
            (
                Body::Store {
                    scope: scope0(),
                    key,
                    value: Bytes::new(),
                    ttl_secs: 0,
                },
                0x05,
            ),
            (Body::Pong, 0x81),
            (
                Body::Nodes {
                    contacts: SmallVec::new(),
                },
                0x82,
            ),
            (
                Body::GetReply {
                    values: SmallVec::new(),
                    contacts: SmallVec::new(),
                },
                0x83,
            ),
            (
                Body::PutProbeReply {
                    loaded: false,
                    stored: SmallVec::new(),
                    contacts: SmallVec::new(),
                },
                0x84,
            ),
            (
                Body::StoreReply {
                    result: StoreResult::Loaded,
                },
                0x85,
            ),
            (
                Body::Error {
                    code: ErrorCode::Invalid,
                },
                0xFF,
            ),
        ];
        for (body, ty) in cases {
            let is_reply = body.is_reply();
            let m = header(body);
            let b = enc(&m);
            assert_eq!(b[1], ty, "{m:?}");
            assert_eq!(is_reply, ty & 0x80 != 0, "{m:?}");
            assert_eq!(Message::decode(&b), Ok(m));
        }
    }

    // ---- sizes ------------------------------------------------------------

    /// The largest message of each type, computed by hand from the layout,
    /// fits one datagram (worst case: every level, IPv6 contacts, lists and
    /// values at their caps).
    #[test]
    fn largest_messages_fit_a_datagram() {
        let header = 32 + 29 * MAX_LEVELS; // 264
        let contacts = 1 + 40 * MAX_CONTACTS; // 641
        let values = 1 + (1 + MAX_VALUE_LEN) * MAX_VALUES; // 777
        let probe = 21 + 20 + 20;
        let big_value = Bytes::from(vec![7u8; MAX_VALUE_LEN]);
        let all_contacts: SmallVec<[Contact; 8]> =
            (0..MAX_CONTACTS as u8).map(v6_contact).collect();
        let stored: SmallVec<[StoredInfo; 4]> = (0..MAX_STORED)
            .map(|_| StoredInfo {
                fingerprint: u64::MAX,
                ttl_secs: 9,
            })
            .collect();
        let (key, target) = (Id::ZERO, Distance::MAX);
        let cases = [
            (Body::Ping, header),
            (Body::Pong, header),
            (
                Body::FindNear {
                    scope: scope0(),
                    key,
                    target,
                },
                header + probe,
            ),
            (
                Body::GetProbe {
                    scope: scope0(),
                    key,
                    target,
                },
                header + probe,
            ),
            (
                Body::PutProbe {
                    scope: scope0(),
                    key,
                    target,
                },
                header + probe,
            ),
            (
                Body::Store {
                    scope: scope0(),
                    key,
                    value: big_value.clone(),
                    ttl_secs: 1,
                },
                header + 21 + 20 + 1 + MAX_VALUE_LEN + 4,
            ),
            (
                Body::Nodes {
                    contacts: all_contacts.clone(),
                },
                header + contacts,
            ),
            (
                Body::GetReply {
                    values: (0..MAX_VALUES).map(|_| big_value.clone()).collect(),
                    contacts: SmallVec::new(),
                },
                header + values + 1,
            ),
            (
                Body::GetReply {
                    values: SmallVec::new(),
                    contacts: all_contacts.clone(),
                },
                header + 1 + contacts,
            ),
            (
                Body::PutProbeReply {
                    loaded: true,
                    stored,
                    contacts: all_contacts.clone(),
                },
                header + 1 + 1 + 12 * MAX_STORED + contacts,
            ),
            (
                Body::StoreReply {
                    result: StoreResult::Full,
                },
                header + 1,
            ),
            (
                Body::Error {
                    code: ErrorCode::Busy,
                },
                header + 1,
            ),
        ];
        for (body, want) in cases {
            let m = full_header(body);
            assert_eq!(m.encoded_len(), want, "{m:?}");
            assert_eq!(enc(&m).len(), want, "{m:?}");
            assert!(want <= MAX_DATAGRAM, "{want} bytes: {m:?}");
            assert_eq!(Message::decode(&enc(&m)), Ok(m));
        }

        // The one combination that does not fit (documented on
        // `Body::GetReply::contacts`): full values leave room for 3 IPv6
        // contacts at most.
        let room = MAX_DATAGRAM - (header + values + 1);
        assert_eq!(room / 40, 3);
        let fits = full_header(Body::GetReply {
            values: (0..MAX_VALUES).map(|_| big_value.clone()).collect(),
            contacts: all_contacts[..3].into(),
        });
        assert!(fits.encoded_len() <= MAX_DATAGRAM);
        assert_eq!(Message::decode(&enc(&fits)), Ok(fits));
    }

    #[test]
    fn over_cap_lists_are_cut_to_decodable_size() {
        let m = header(Body::GetReply {
            values: (0..MAX_VALUES + 3)
                .map(|_| Bytes::from(vec![1u8; 300]))
                .collect(),
            contacts: SmallVec::new(),
        });
        let b = enc(&m);
        assert_eq!(b.len(), m.encoded_len());
        let Ok(Message {
            body: Body::GetReply { values, .. },
            ..
        }) = Message::decode(&b)
        else {
            panic!("cut message must decode");
        };
        assert_eq!(values.len(), MAX_VALUES);
        assert!(values.iter().all(|v| v.len() == MAX_VALUE_LEN));

        let m = header(Body::Nodes {
            contacts: (0..40).map(v6_contact).collect(),
        });
        let b = enc(&m);
        assert_eq!(b.len(), m.encoded_len());
        let Ok(Message {
            body: Body::Nodes { contacts },
            ..
        }) = Message::decode(&b)
        else {
            panic!("cut message must decode");
        };
        assert_eq!(contacts.len(), MAX_CONTACTS);
    }

    #[test]
    fn ipv6_flow_label_and_scope_are_not_sent() {
        let mut c = v6_contact(5);
        c.addr = SocketAddr::V6(SocketAddrV6::new([5; 16].into(), 8090, 77, 3));
        let m = header(Body::Nodes {
            contacts: smallvec::smallvec![c],
        });
        let Ok(Message {
            body: Body::Nodes { contacts },
            ..
        }) = Message::decode(&enc(&m))
        else {
            panic!("must decode");
        };
        assert_eq!(contacts[0], v6_contact(5));
    }

    // ---- rejections -------------------------------------------------------

    fn sample() -> Message {
        full_header(Body::PutProbeReply {
            loaded: false,
            stored: smallvec::smallvec![StoredInfo {
                fingerprint: 1,
                ttl_secs: 2
            }],
            contacts: smallvec::smallvec![v6_contact(1), v6_contact(2)],
        })
    }

    #[test]
    fn rejects_truncated() {
        for m in [
            sample(),
            header(Body::Ping),
            header(Body::Error {
                code: ErrorCode::Busy,
            }),
        ] {
            let b = enc(&m);
            for n in 0..b.len() {
                assert_eq!(
                    Message::decode(&b[..n]),
                    Err(DecodeError::Truncated),
                    "prefix {n}"
                );
            }
        }
        // A count that the bytes left cannot hold is refused before allocating.
        let mut b = enc(&header(Body::Nodes {
            contacts: SmallVec::new(),
        }));
        *b.last_mut().unwrap() = MAX_CONTACTS as u8;
        assert_eq!(Message::decode(&b), Err(DecodeError::Truncated));
    }

    #[test]
    fn rejects_too_long() {
        let mut b = enc(&sample());
        b.resize(MAX_DATAGRAM + 1, 0);
        assert_eq!(
            Message::decode(&b),
            Err(DecodeError::TooLong(MAX_DATAGRAM + 1))
        );
        assert_eq!(Message::decode(&[0; 5000]), Err(DecodeError::TooLong(5000)));
    }

    #[test]
    fn rejects_other_versions() {
        let mut b = enc(&sample());
        for v in [0, 2, 0xFF] {
            b[0] = v;
            assert_eq!(Message::decode(&b), Err(DecodeError::Version(v)));
        }
    }

    #[test]
    fn rejects_unknown_types() {
        let known = [
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x81, 0x82, 0x83, 0x84, 0x85, 0xFF,
        ];
        let mut b = enc(&header(Body::Ping));
        for t in 0..=u8::MAX {
            b[1] = t;
            let r = Message::decode(&b);
            if known.contains(&t) {
                assert_ne!(r, Err(DecodeError::UnknownType(t)));
            } else {
                assert_eq!(r, Err(DecodeError::UnknownType(t)));
            }
        }
        // The type is checked before the rest of the header is needed.
        assert_eq!(
            Message::decode(&[VERSION, 0x07]),
            Err(DecodeError::UnknownType(7))
        );
    }

    /// Offset of the body in a message built by `header`.
    const BODY: usize = HEADER_LEN;

    #[test]
    fn rejects_invalid_fields() {
        let bad = |body: Body, at: usize, byte: u8, field: &'static str| {
            let mut b = enc(&header(body));
            b[BODY + at] = byte;
            assert_eq!(Message::decode(&b), Err(DecodeError::Invalid(field)));
        };
        bad(
            Body::Nodes {
                contacts: smallvec::smallvec![v6_contact(1)],
            },
            1 + 21,
            5,
            "address family",
        );
        bad(
            Body::Nodes {
                contacts: smallvec::smallvec![v6_contact(1)],
            },
            1 + 21,
            0,
            "address family",
        );
        bad(
            Body::PutProbeReply {
                loaded: true,
                stored: SmallVec::new(),
                contacts: SmallVec::new(),
            },
            0,
            2,
            "loaded",
        );
        bad(
            Body::StoreReply {
                result: StoreResult::Ok,
            },
            0,
            3,
            "store result",
        );
        bad(
            Body::Error {
                code: ErrorCode::Busy,
            },
            0,
            4,
            "error code",
        );
        bad(
            Body::Store {
                scope: scope0(),
                key: Id::ZERO,
                value: Bytes::new(),
                ttl_secs: 0,
            },
            SCOPE_LEN + ID_LEN,
            MAX_VALUE_LEN as u8 + 1,
            "value length",
        );
        bad(
            Body::GetReply {
                values: smallvec::smallvec![Bytes::new()],
                contacts: SmallVec::new(),
            },
            1,
            MAX_VALUE_LEN as u8 + 1,
            "value length",
        );
    }

    #[test]
    fn rejects_counts_above_caps() {
        let too_many = |b: &mut Vec<u8>, at: usize, field: &'static str, cap: usize| {
            let was = b[at];
            b[at] = cap as u8 + 1;
            assert_eq!(
                Message::decode(b),
                Err(DecodeError::TooMany {
                    field,
                    len: cap + 1
                })
            );
            b[at] = u8::MAX;
            assert_eq!(
                Message::decode(b),
                Err(DecodeError::TooMany { field, len: 255 })
            );
            b[at] = was;
        };
        let mut b = enc(&header(Body::Ping));
        too_many(&mut b, HEADER_LEN - 1, "clusters", MAX_LEVELS);
        let mut b = enc(&header(Body::Nodes {
            contacts: SmallVec::new(),
        }));
        too_many(&mut b, BODY, "contacts", MAX_CONTACTS);
        let mut b = enc(&header(Body::GetReply {
            values: SmallVec::new(),
            contacts: SmallVec::new(),
        }));
        too_many(&mut b, BODY, "values", MAX_VALUES);
        too_many(&mut b, BODY + 1, "contacts", MAX_CONTACTS);
        let mut b = enc(&header(Body::PutProbeReply {
            loaded: false,
            stored: SmallVec::new(),
            contacts: SmallVec::new(),
        }));
        too_many(&mut b, BODY + 1, "stored", MAX_STORED);
    }

    #[test]
    fn rejects_trailing_bytes() {
        for m in [sample(), header(Body::Ping), header(Body::Pong)] {
            let mut b = enc(&m);
            b.push(0);
            assert_eq!(Message::decode(&b), Err(DecodeError::Trailing(1)));
            b.extend([0; 9]);
            assert_eq!(Message::decode(&b), Err(DecodeError::Trailing(10)));
        }
    }

    // ---- invariants -------------------------------------------------------

    /// Bytes that decode must re-encode to themselves.
    fn check_bytes(b: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(m) = Message::decode(b) {
            prop_assert_eq!(m.encoded_len(), b.len());
            prop_assert_eq!(enc(&m), b);
        }
        Ok(())
    }

    fn type_byte() -> impl Strategy<Value = u8> {
        prop::sample::select(vec![
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x81, 0x82, 0x83, 0x84, 0x85, 0xFF,
        ])
    }

    #[test]
    fn hint_values_round_trip_with_and_without_an_rtt() {
        let c = Contact {
            id: Id([7; ID_LEN]),
            addr: "10.1.2.3:8091".parse().unwrap(),
            services: Services(3),
        };
        let plain = hint_value(&c, None);
        assert_eq!(plain, contact_value(&c));
        assert_eq!(hint_from_value(&plain), Ok((c, None)));
        let rtt = std::time::Duration::from_micros(4_321);
        let v = hint_value(&c, Some(rtt));
        assert_eq!(v.len(), plain.len() + 4);
        assert_eq!(hint_from_value(&v), Ok((c, Some(rtt))));
        // A partial RTT or anything after it is refused.
        assert!(hint_from_value(&v[..v.len() - 1]).is_err());
        let mut long = v.to_vec();
        long.push(0);
        assert_eq!(hint_from_value(&long), Err(DecodeError::Trailing(1)));
        // The contact-only reader refuses a hint that carries an RTT.
        assert_eq!(contact_from_value(&v), Err(DecodeError::Trailing(4)));
    }

    #[test]
    fn contact_values_round_trip_and_reject_garbage() {
        for c in [
            v6_contact(3),
            Contact::from_addr("10.1.2.3:8091".parse().unwrap(), Services::HTTP),
        ] {
            let v = contact_value(&c);
            assert!(v.len() <= MAX_VALUE_LEN);
            assert_eq!(contact_from_value(&v), Ok(c));
            assert_eq!(
                contact_from_value(&v[..v.len() - 1]),
                Err(DecodeError::Truncated)
            );
            let mut long = v.to_vec();
            long.push(0);
            assert_eq!(contact_from_value(&long), Err(DecodeError::Trailing(1)));
        }
        assert!(contact_from_value(b"").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn roundtrip(m in message()) {
            let mut b = vec![0xEE]; // encode appends
            m.encode(&mut b);
            let b = &b[1..];
            prop_assert_eq!(m.encoded_len(), b.len());
            prop_assert!(b.len() <= MAX_DATAGRAM);
            prop_assert_eq!(Message::decode(b), Ok(m));
        }

        /// A node decodes every datagram into one message: whatever that
        /// held before, a datagram cut short included, the result is the
        /// fresh decode.
        #[test]
        fn one_message_decodes_a_run_of_datagrams(
            run in vec((message(), any::<prop::sample::Index>()), 1..8),
        ) {
            let mut rx = Message::empty();
            for (m, cut) in run {
                let b = enc(&m);
                let short = &b[..cut.index(b.len())];
                prop_assert_eq!(rx.decode_into(short).is_err(), Message::decode(short).is_err());
                prop_assert_eq!(rx.decode_into(&b), Ok(()));
                prop_assert_eq!(&rx, &m);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in vec(any::<u8>(), 0..1400)) {
            check_bytes(&b)?;
        }

        /// Random bytes rarely get past the version and type; these do.
        #[test]
        fn arbitrary_bodies_never_panic(
            ty in type_byte(),
            n_clusters in 0u8..=3,
            rest in vec(any::<u8>(), 0..1200),
        ) {
            let mut b = vec![VERSION, ty];
            b.extend([0; 30]);
            b[HEADER_LEN - 1] = n_clusters;
            b.extend(rest);
            check_bytes(&b)?;
        }

        #[test]
        fn mutated_encodings_never_panic(
            m in message(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut b = enc(&m);
            for (at, byte) in edits {
                let i = at.index(b.len());
                b[i] = byte;
                check_bytes(&b)?;
            }
            if truncate {
                b.truncate(cut.index(b.len()));
                check_bytes(&b)?;
            }
        }
    }
}
