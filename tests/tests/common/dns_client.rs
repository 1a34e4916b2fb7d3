//! A DNS client's view for the DNS servers' loopback tests (tokio and mio
//! nodes), through hickory-proto.
#![allow(dead_code)]

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

/// A query for `name` of type `rtype`, with EDNS(0) at 1232 bytes when
/// `edns`.
pub(crate) fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// The IPv4 addresses of the answer section.
pub(crate) fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

/// The NS records of the authority section: (zone, TTL).
pub(crate) fn nameservers(m: &Message) -> Vec<(String, u32)> {
    m.authorities
        .iter()
        .filter(|r| r.record_type() == RecordType::NS)
        .map(|r| (r.name.to_ascii(), r.ttl))
        .collect()
}

/// How many A records the additional section carries (the glue).
pub(crate) fn glue(m: &Message) -> usize {
    m.additionals
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
        .count()
}
