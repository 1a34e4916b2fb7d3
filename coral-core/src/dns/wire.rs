//! DNS messages in and out, through `hickory-proto`: the one file that names
//! it (convention 11). The redirector above works on [`Query`] and
//! [`Response`], which say only what it needs.
//!
//! Decoding is strict and total: every input ends as a [`Decoded`] value,
//! never a panic. Names are bounded and validated by hickory-proto (at most
//! 255 octets, labels of at most 63); the query name keeps the case it was
//! sent in, so answers echo it (the 0x20 trick resolvers use against
//! spoofing).

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::ProtoError;
use hickory_proto::op::{
    Edns, Message, MessageType, Metadata, OpCode, Query as HQuery, ResponseCode, emit_message_parts,
};
use hickory_proto::rr::rdata::{A, AAAA, NS, NULL, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use smallvec::SmallVec;

/// The largest DNS message over TCP (a 16-bit length prefix).
pub const MAX_TCP_MESSAGE: usize = 65_535;

/// The UDP size every DNS client accepts (RFC 1035 §2.3.4).
pub const CLASSIC_UDP: usize = 512;

/// Query types the redirector answers; the rest get NODATA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qtype {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Name servers.
    Ns,
    /// Start of authority.
    Soa,
    /// Subtree alias (RFC 6672).
    Dname,
    /// Everything (`ANY`, type 255).
    Any,
    /// Anything else, by number.
    Other(u16),
}

/// The EDNS(0) part of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdnsQuery {
    /// The largest UDP response the client accepts (at least 512).
    pub payload: u16,
    /// The EDNS version the client speaks.
    pub version: u8,
}

/// A decoded query with one question.
#[derive(Clone, Debug)]
pub struct Query {
    id: u16,
    recursion_desired: bool,
    checking_disabled: bool,
    name: Name,
    qtype: Qtype,
    qclass: DNSClass,
    edns: Option<EdnsQuery>,
    /// Where the question ends in the message it came in (it starts right
    /// after the 12-byte header).
    question_end: usize,
}

impl Query {
    /// The question's labels as sent (case kept), leftmost first; compare
    /// them with `eq_ignore_ascii_case`.
    pub fn labels(&self) -> SmallVec<[&[u8]; 12]> {
        self.name.iter().collect()
    }

    /// The question's type.
    pub fn qtype(&self) -> Qtype {
        self.qtype
    }

    /// Whether the question's class is IN (or ANY).
    pub fn class_in(&self) -> bool {
        matches!(self.qclass, DNSClass::IN | DNSClass::ANY)
    }

    /// The query's EDNS(0) record, if it carried one.
    pub fn edns(&self) -> Option<EdnsQuery> {
        self.edns
    }

    /// The query id.
    pub fn id(&self) -> u16 {
        self.id
    }
}

/// What a datagram or TCP message turned out to be.
#[derive(Debug)]
pub enum Decoded {
    /// A standard query with one question.
    Query(Query),
    /// A message with a readable header whose body is malformed (or has
    /// other than one question): answered FORMERR.
    Malformed {
        /// Its id.
        id: u16,
        /// Its opcode, as sent.
        opcode: u8,
    },
    /// An opcode other than QUERY: answered NOTIMP.
    NotImplemented {
        /// Its id.
        id: u16,
        /// Its opcode, as sent.
        opcode: u8,
    },
    /// Not worth an answer: shorter than a header, or itself a response
    /// (answering responses would let two servers loop).
    Ignore,
}

/// Decodes one DNS message: the header, the one question, and every
/// record after it (a query normally carries only its OPT record), each
/// read by hickory-proto, without building a whole `Message`.
pub fn decode(bytes: &[u8]) -> Decoded {
    let mut d = BinDecoder::new(bytes);
    let Ok(header) = hickory_proto::op::Header::read(&mut d) else {
        return Decoded::Ignore;
    };
    let meta = header.metadata;
    if meta.message_type == MessageType::Response {
        return Decoded::Ignore;
    }
    let opcode = u8::from(meta.op_code);
    if meta.op_code != OpCode::Query {
        return Decoded::NotImplemented {
            id: meta.id,
            opcode,
        };
    }
    let malformed = Decoded::Malformed {
        id: meta.id,
        opcode,
    };
    let counts = header.counts;
    if counts.queries != 1 {
        return malformed;
    }
    let Ok(q) = HQuery::read(&mut d) else {
        return malformed;
    };
    let question_end = d.index();
    let mut edns = None;
    let records = u32::from(counts.answers) + u32::from(counts.authorities);
    for i in 0..records + u32::from(counts.additionals) {
        let Ok(r) = Record::read(&mut d) else {
            return malformed;
        };
        if r.record_type() == RecordType::OPT {
            // Only one OPT, and only in the additional section (RFC 6891).
            if i < records || edns.is_some() {
                return malformed;
            }
            let e = Edns::from(&r);
            edns = Some(EdnsQuery {
                payload: e.max_payload().max(CLASSIC_UDP as u16),
                version: e.version(),
            });
        }
    }
    if !d.is_empty() {
        // Bytes after the last record: not a well-formed message.
        return malformed;
    }
    let qtype = match q.query_type() {
        RecordType::A => Qtype::A,
        RecordType::AAAA => Qtype::Aaaa,
        RecordType::NS => Qtype::Ns,
        RecordType::SOA => Qtype::Soa,
        RecordType::DNAME => Qtype::Dname,
        RecordType::ANY => Qtype::Any,
        other => Qtype::Other(u16::from(other)),
    };
    Decoded::Query(Query {
        id: meta.id,
        recursion_desired: meta.recursion_desired,
        checking_disabled: meta.checking_disabled,
        qclass: q.query_class(),
        name: q.name,
        qtype,
        edns,
        question_end,
    })
}

/// Response codes the redirector sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    /// No error (also NODATA, with no answer).
    NoError,
    /// Malformed query.
    FormErr,
    /// The name does not exist.
    NxDomain,
    /// Opcode not implemented.
    NotImp,
    /// Not our zone, or not our class.
    Refused,
    /// EDNS version not supported (extended code 16).
    BadVers,
}

/// Who a record is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The query name, with the case it was sent in.
    QueryName,
    /// Another name, in presentation form (`ns-1.nyucd.net`).
    Name(String),
}

/// Record data the redirector sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// A name server's host name.
    Ns(String),
    /// The zone's start of authority.
    Soa {
        /// Primary name server.
        mname: String,
        /// Responsible mailbox, as a name.
        rname: String,
        /// Zone serial.
        serial: u32,
        /// Secondary refresh interval, s.
        refresh: u32,
        /// Secondary retry interval, s.
        retry: u32,
        /// Secondary expiry, s.
        expire: u32,
        /// Negative-caching TTL, s (RFC 2308).
        minimum: u32,
    },
    /// The target of a subtree alias.
    Dname(String),
}

/// One resource record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rr {
    /// Owner name.
    pub owner: Owner,
    /// Time to live, s.
    pub ttl: u32,
    /// Data.
    pub data: Data,
}

/// A response to describe and encode.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// Response code.
    pub rcode: Option<Rcode>,
    /// Authoritative answer (AA).
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<Rr>,
    /// Authority section.
    pub authority: Vec<Rr>,
    /// Additional section (glue); the OPT record is added by [`encode`].
    pub additional: Vec<Rr>,
    /// Send it truncated whatever its size (the rate limit's slip).
    pub truncated: bool,
}

/// Why a response could not be encoded (a name we built is not a valid
/// DNS name: a configuration error the caller reports).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a DNS response: {0}")]
pub struct EncodeError(String);

fn name(s: &str) -> Result<Name, EncodeError> {
    let mut n = Name::from_ascii(s).map_err(|e| EncodeError(e.to_string()))?;
    n.set_fqdn(true);
    Ok(n)
}

/// Whether `s` is a valid DNS name in presentation form.
pub fn valid_name(s: &str) -> bool {
    name(s).is_ok()
}

/// `rr` as hickory-proto's record; an owner that is the query name is
/// `q`'s, or the root as a placeholder when no query is given.
fn record(q: Option<&Query>, rr: &Rr) -> Result<Record, EncodeError> {
    let owner = match (&rr.owner, q) {
        (Owner::QueryName, Some(q)) => q.name.clone(),
        (Owner::QueryName, None) => Name::root(),
        (Owner::Name(s), _) => name(s)?,
    };
    let data = match &rr.data {
        Data::A(a) => RData::A(A(*a)),
        Data::Aaaa(a) => RData::AAAA(AAAA(*a)),
        Data::Ns(n) => RData::NS(NS(name(n)?)),
        Data::Soa {
            mname,
            rname,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        } => RData::SOA(SOA::new(
            name(mname)?,
            name(rname)?,
            *serial,
            i32::try_from(*refresh).unwrap_or(i32::MAX),
            i32::try_from(*retry).unwrap_or(i32::MAX),
            i32::try_from(*expire).unwrap_or(i32::MAX),
            *minimum,
        )),
        Data::Dname(target) => {
            // hickory-proto has no typed DNAME; its rdata is the target name
            // in uncompressed wire form (RFC 6672 §2.5), which hickory's
            // own name encoder writes.
            let mut buf = Vec::new();
            name(target)?
                .emit(&mut BinEncoder::new(&mut buf))
                .map_err(|e| EncodeError(e.to_string()))?;
            RData::Unknown {
                code: RecordType::DNAME,
                rdata: NULL::with(buf),
            }
        }
    };
    Ok(Record::from_rdata(owner, rr.ttl, data))
}

fn response_code(rcode: Rcode) -> ResponseCode {
    match rcode {
        Rcode::NoError => ResponseCode::NoError,
        Rcode::FormErr => ResponseCode::FormErr,
        Rcode::NxDomain => ResponseCode::NXDomain,
        Rcode::NotImp => ResponseCode::NotImp,
        Rcode::Refused => ResponseCode::Refused,
        Rcode::BadVers => ResponseCode::BADVERS,
    }
}

fn record_type(t: Qtype) -> RecordType {
    match t {
        Qtype::A => RecordType::A,
        Qtype::Aaaa => RecordType::AAAA,
        Qtype::Ns => RecordType::NS,
        Qtype::Soa => RecordType::SOA,
        Qtype::Dname => RecordType::DNAME,
        Qtype::Any => RecordType::ANY,
        Qtype::Other(n) => RecordType::from(n),
    }
}

fn response_message(id: u16, opcode: u8, rcode: Rcode) -> Message {
    let mut m = Message::response(id, OpCode::from_u8(opcode));
    m.metadata.response_code = response_code(rcode);
    m
}

/// An error response to a message that was not a usable query: header
/// only, no question, no recursion available.
pub fn encode_error(id: u16, opcode: u8, rcode: Rcode, out: &mut Vec<u8>) {
    out.clear();
    let m = response_message(id, opcode, rcode);
    // A header-only message always encodes.
    if let Ok(bytes) = m.to_vec() {
        out.extend_from_slice(&bytes);
    }
}

/// A response's records converted to hickory-proto's form once, so that
/// answers reused across queries (see the redirector's answer cache) are
/// not converted again for every query.
#[derive(Clone, Debug)]
pub struct Prepared {
    rcode: Rcode,
    authoritative: bool,
    truncated: bool,
    /// Per section, each record and whether its owner is the query name.
    sections: [Vec<(bool, Record)>; 3],
}

/// A prepared record emitted under `owner` (the query's name, for records
/// about it), without copying the record: the same fields, in the same
/// order and through the same hickory-proto encoders as `Record::emit`.
struct Emit<'a> {
    owner: &'a Name,
    record: &'a Record,
}

impl BinEncodable for Emit<'_> {
    fn emit(&self, encoder: &mut BinEncoder<'_>) -> Result<(), ProtoError> {
        self.owner.emit(encoder)?;
        self.record.record_type().emit(encoder)?;
        self.record.dns_class.emit(encoder)?;
        encoder.emit_u32(self.record.ttl)?;
        let place = encoder.place::<u16>()?;
        self.record.data.emit(encoder)?;
        let len = encoder.len_since_place(&place);
        place.replace(encoder, u16::try_from(len).unwrap_or(u16::MAX))?;
        Ok(())
    }
}

/// Converts `r`'s names and records.
pub fn prepare(r: &Response) -> Result<Prepared, EncodeError> {
    let convert = |rrs: &[Rr]| -> Result<Vec<(bool, Record)>, EncodeError> {
        rrs.iter()
            .map(|rr| Ok((rr.owner == Owner::QueryName, record(None, rr)?)))
            .collect()
    };
    Ok(Prepared {
        rcode: r.rcode.unwrap_or(Rcode::NoError),
        authoritative: r.authoritative,
        truncated: r.truncated,
        sections: [
            convert(&r.answers)?,
            convert(&r.authority)?,
            convert(&r.additional)?,
        ],
    })
}

/// A prepared response encoded once for every question of one wire length:
/// the answer, authority and additional sections as they follow a question
/// of that length. Built by encoding the response to a stand-in question of
/// `x` labels of the same length, which no other name in it can be
/// compressed against, so the only pointers into the question are to the
/// whole name at offset 12, which the real question fills: the bytes after
/// it are valid behind any question of that length.
#[derive(Clone, Debug)]
pub struct Template {
    /// The question's length in the message (name, type, class).
    question_len: usize,
    /// Whether the query carried EDNS(0) (the template then ends with OPT).
    edns: bool,
    counts: [u16; 3],
    rcode: Rcode,
    authoritative: bool,
    tail: Vec<u8>,
}

impl Template {
    /// Whether this template serves `q`.
    pub fn serves(&self, q: &Query) -> bool {
        q.plain_question_len() == Some(self.question_len) && self.edns == q.edns.is_some()
    }
}

impl Query {
    /// The question's length in its message when its name is written out
    /// in full (no compression pointer), as templates need.
    fn plain_question_len(&self) -> Option<usize> {
        let wire_len: usize = self.name.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
        let len = self.question_end.checked_sub(12)?;
        (len == wire_len + 4).then_some(len)
    }
}

/// The template of `p` for questions like `q`'s, or `None` when the response
/// would not fit `limit` (the full encoder then truncates it).
pub fn template(
    q: &Query,
    p: &Prepared,
    limit: usize,
    our_payload: u16,
) -> Result<Option<Template>, EncodeError> {
    let Some(question_len) = q.plain_question_len() else {
        return Ok(None);
    };
    if p.truncated {
        return Ok(None);
    }
    // The stand-in name: `x` labels whose wire length is the real name's.
    let wire_len = question_len - 4;
    let mut rest = wire_len - 1;
    let mut labels: Vec<Vec<u8>> = Vec::new();
    while rest > 0 {
        let mut len = (rest - 1).min(63);
        if rest - (len + 1) == 1 {
            len -= 1;
        }
        labels.push(vec![b'x'; len]);
        rest -= len + 1;
    }
    let mut stand_in = Name::from_labels(labels).map_err(|e| EncodeError(e.to_string()))?;
    stand_in.set_fqdn(true);
    let like = Query {
        name: stand_in,
        question_end: q.question_end,
        ..q.clone()
    };
    let mut buf = Vec::new();
    if encode_prepared(&like, p, limit, our_payload, &mut buf)? {
        return Ok(None);
    }
    let [an, ns, ad] = &p.sections;
    Ok(Some(Template {
        question_len,
        edns: q.edns.is_some(),
        counts: [
            an.len() as u16,
            ns.len() as u16,
            (ad.len() + usize::from(q.edns.is_some())) as u16,
        ],
        rcode: p.rcode,
        authoritative: p.authoritative,
        tail: buf.get(12 + question_len..).unwrap_or_default().to_vec(),
    }))
}

/// The response to `q`, which came in `raw`, from `t` (which must serve
/// it): the header hickory-proto writes, the question as it came (its
/// bytes, so its case too), then the template's sections.
pub fn encode_template(
    q: &Query,
    raw: &[u8],
    t: &Template,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let mut metadata = Metadata::new(q.id, MessageType::Response, OpCode::Query);
    metadata.response_code = response_code(t.rcode);
    metadata.authoritative = t.authoritative;
    metadata.recursion_desired = q.recursion_desired;
    metadata.checking_disabled = q.checking_disabled;
    let header = hickory_proto::op::Header {
        metadata,
        counts: hickory_proto::op::HeaderCounts {
            queries: 1,
            answers: t.counts[0],
            authorities: t.counts[1],
            additionals: t.counts[2],
        },
    };
    out.clear();
    header
        .emit(&mut BinEncoder::new(out))
        .map_err(|e| EncodeError(e.to_string()))?;
    let question = raw
        .get(12..q.question_end)
        .ok_or_else(|| EncodeError("the question is not in the message".into()))?;
    out.extend_from_slice(question);
    out.extend_from_slice(&t.tail);
    Ok(())
}

/// Encodes `r` as the response to `q` into `out`, at most `limit` bytes
/// (see [`encode_prepared`]).
pub fn encode(
    q: &Query,
    r: &Response,
    limit: usize,
    our_payload: u16,
    out: &mut Vec<u8>,
) -> Result<bool, EncodeError> {
    encode_prepared(q, &prepare(r)?, limit, our_payload, out)
}

/// Encodes `p` as the response to `q` into `out`, at most `limit` bytes.
/// A response that does not fit is sent truncated (TC set, sections
/// emptied, question and OPT kept) so the client retries over TCP. Returns
/// whether it was truncated.
pub fn encode_prepared(
    q: &Query,
    p: &Prepared,
    limit: usize,
    our_payload: u16,
    out: &mut Vec<u8>,
) -> Result<bool, EncodeError> {
    let mut meta = Metadata::new(q.id, MessageType::Response, OpCode::Query);
    meta.response_code = response_code(p.rcode);
    meta.authoritative = p.authoritative;
    meta.recursion_desired = q.recursion_desired;
    meta.checking_disabled = q.checking_disabled;
    let mut hq = HQuery::query(q.name.clone(), record_type(q.qtype));
    hq.query_class = q.qclass;
    // hickory-proto moves an extended code's high bits (BADVERS) into the
    // OPT record as it encodes.
    let edns = q.edns.map(|_| {
        let mut e = Edns::new();
        e.set_max_payload(our_payload.max(CLASSIC_UDP as u16));
        e
    });
    fn refs<'a>(section: &'a [(bool, Record)], qname: &'a Name) -> SmallVec<[Emit<'a>; 8]> {
        section
            .iter()
            .map(|(mine, record)| Emit {
                owner: if *mine { qname } else { &record.name },
                record,
            })
            .collect()
    }
    let [an, ns, ad] = &p.sections;
    let (an, ns, ad) = (refs(an, &q.name), refs(ns, &q.name), refs(ad, &q.name));
    let emit = |out: &mut Vec<u8>, meta: &Metadata, full: bool, question: bool| {
        out.clear();
        let none: [Emit<'_>; 0] = [];
        let (a, n, d): (&[Emit<'_>], &[Emit<'_>], &[Emit<'_>]) = if full {
            (&an, &ns, &ad)
        } else {
            (&none, &none, &none)
        };
        let q: &[HQuery] = if question {
            std::slice::from_ref(&hq)
        } else {
            &[]
        };
        emit_message_parts(
            meta,
            &mut q.iter(),
            &mut a.iter(),
            &mut n.iter(),
            &mut d.iter(),
            if question { edns.as_ref() } else { None },
            None,
            &mut BinEncoder::new(out),
        )
        .map(|_| ())
        .map_err(|e| EncodeError(e.to_string()))
    };
    if !p.truncated {
        emit(out, &meta, true, true)?;
        if out.len() <= limit {
            return Ok(false);
        }
    }
    meta.truncation = true;
    emit(out, &meta, false, true)?;
    if out.len() > limit {
        // Even the question does not fit: the header alone, TC set.
        emit(out, &meta, false, false)?;
    }
    Ok(true)
}

/// Queries and readable responses for the redirector's tests, through the
/// same crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A query for `name` of type `qtype` (a number), with EDNS(0) at
    /// `edns` bytes when given.
    pub(crate) fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x5a5a;
        m.metadata.recursion_desired = true;
        m.add_query(HQuery::query(
            Name::from_ascii(name).unwrap(),
            RecordType::from(qtype),
        ));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// One record: owner (as sent), type number, TTL, data as text.
    pub(crate) type Rec = (String, u16, u32, String);

    /// What a test looks at in a response.
    #[derive(Debug)]
    pub(crate) struct Seen {
        pub(crate) id: u16,
        pub(crate) rcode: u16,
        pub(crate) aa: bool,
        pub(crate) tc: bool,
        pub(crate) ra: bool,
        pub(crate) question: Option<String>,
        pub(crate) answers: Vec<Rec>,
        pub(crate) authority: Vec<Rec>,
        pub(crate) additional: Vec<Rec>,
        pub(crate) edns_payload: Option<u16>,
    }

    fn rec(r: &Record) -> Rec {
        let data = match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::NS(n) => n.0.to_ascii(),
            RData::SOA(s) => s.mname.to_ascii(),
            RData::Unknown { rdata, .. } => {
                let b = rdata.anything.clone();
                Name::read(&mut BinDecoder::new(&b)).unwrap().to_ascii()
            }
            other => format!("{other:?}"),
        };
        (r.name.to_ascii(), u16::from(r.record_type()), r.ttl, data)
    }

    /// Decodes a response.
    pub(crate) fn seen(bytes: &[u8]) -> Seen {
        let m = Message::from_vec(bytes).unwrap();
        Seen {
            id: m.metadata.id,
            rcode: u16::from(m.metadata.response_code),
            aa: m.metadata.authoritative,
            tc: m.metadata.truncation,
            ra: m.metadata.recursion_available,
            question: m.queries.first().map(|q| q.name().to_ascii()),
            answers: m.answers.iter().map(rec).collect(),
            authority: m.authorities.iter().map(rec).collect(),
            additional: m.additionals.iter().map(rec).collect(),
            edns_payload: m.edns.as_ref().map(Edns::max_payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_bytes(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.metadata.recursion_desired = true;
        m.add_query(HQuery::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn a_query_decodes_with_its_case_kept() {
        let b = query_bytes("WwW.Example.COM.nyud.net.", RecordType::AAAA, Some(1400));
        let Decoded::Query(q) = decode(&b) else {
            panic!("not a query")
        };
        assert_eq!(q.id(), 7);
        assert_eq!(q.qtype(), Qtype::Aaaa);
        let labels: Vec<&[u8]> = q.labels().into_iter().collect();
        assert_eq!(labels, [&b"WwW"[..], b"Example", b"COM", b"nyud", b"net"]);
        assert_eq!(q.edns().map(|e| e.payload), Some(1400));
        let r = Response {
            answers: vec![Rr {
                owner: Owner::QueryName,
                ttl: 30,
                data: Data::A(Ipv4Addr::new(10, 0, 0, 1)),
            }],
            authoritative: true,
            ..Response::default()
        };
        let mut out = Vec::new();
        assert!(!encode(&q, &r, 1400, 1232, &mut out).unwrap());
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.authoritative && !m.metadata.recursion_available);
        assert!(
            m.answers[0]
                .name
                .eq_case(&Name::from_ascii("WwW.Example.COM.nyud.net.").unwrap())
        );
        assert!(
            m.queries[0]
                .name()
                .eq_case(&Name::from_ascii("WwW.Example.COM.nyud.net.").unwrap())
        );
    }

    #[test]
    fn junk_never_panics_and_short_input_is_ignored() {
        assert!(matches!(decode(&[]), Decoded::Ignore));
        assert!(matches!(decode(&[1, 2, 3]), Decoded::Ignore));
        // A header claiming one question, and no question.
        let b = [0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        assert!(matches!(decode(&b), Decoded::Malformed { id: 9, .. }));
        // A response is never answered.
        let b = [0, 9, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(decode(&b), Decoded::Ignore));
        // Opcode 2 (STATUS).
        let b = [0, 9, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            decode(&b),
            Decoded::NotImplemented { id: 9, opcode: 2 }
        ));
    }

    #[test]
    fn an_answer_too_large_is_truncated_within_the_limit() {
        let b = query_bytes("x.nyud.net.", RecordType::A, None);
        let Decoded::Query(q) = decode(&b) else {
            panic!("not a query")
        };
        let answers = (0..100)
            .map(|i| Rr {
                owner: Owner::QueryName,
                ttl: 30,
                data: Data::A(Ipv4Addr::new(10, 0, 0, i)),
            })
            .collect();
        let r = Response {
            answers,
            ..Response::default()
        };
        let mut out = Vec::new();
        assert!(encode(&q, &r, CLASSIC_UDP, 1232, &mut out).unwrap());
        assert!(out.len() <= CLASSIC_UDP);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn dname_rdata_is_the_target_name() {
        let b = query_bytes("nyud.net.", RecordType::DNAME, None);
        let Decoded::Query(q) = decode(&b) else {
            panic!("not a query")
        };
        let r = Response {
            answers: vec![Rr {
                owner: Owner::QueryName,
                ttl: 60,
                data: Data::Dname("http.L2.L1.L0.nyucd.net".into()),
            }],
            ..Response::default()
        };
        let mut out = Vec::new();
        encode(&q, &r, 512, 1232, &mut out).unwrap();
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.answers[0].record_type(), RecordType::DNAME);
    }
}
