//! How to reach a node: its id, its RPC address and the services it runs.

use std::fmt;
use std::net::SocketAddr;

use crate::id::Id;

/// A cluster level: 0 is the global level, higher levels are tighter clusters.
pub type Level = u8;

/// Services a node offers besides the DSHT itself, advertised in every message.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Services(pub u8);

impl Services {
    /// No service besides the DSHT.
    pub const NONE: Self = Self(0);
    /// The node runs a Coral HTTP proxy.
    pub const HTTP: Self = Self(1);
    /// The node runs a Coral DNS server.
    pub const DNS: Self = Self(2);
    /// The node's HTTP proxy is non-recursive (spec §6.3): it has little
    /// upstream bandwidth, so DNS servers name it only to resolvers in its
    /// own network prefix.
    pub const LOCAL_ONLY: Self = Self(4);

    /// Whether every service in `other` is offered.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two sets of services.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.contains(Self::HTTP) {
            names.push("http");
        }
        if self.contains(Self::DNS) {
            names.push("dns");
        }
        if self.contains(Self::LOCAL_ONLY) {
            names.push("local-only");
        }
        write!(f, "[{}]", names.join(","))
    }
}

/// A node as others see it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Contact {
    /// The node's id.
    pub id: Id,
    /// Where its RPC socket listens (IPv4 or IPv6).
    pub addr: SocketAddr,
    /// What it runs besides the DSHT.
    pub services: Services,
}

impl Contact {
    /// This contact as a DSHT value (the compact wire form), as a proxy
    /// stores it under a URL key to say "I hold it" (spec §7.1).
    pub fn to_value(&self) -> bytes::Bytes {
        crate::wire::contact_value(self)
    }

    /// A contact from a DSHT value made by [`Self::to_value`]; `None` if
    /// the bytes are not exactly one contact.
    pub fn from_value(value: &[u8]) -> Option<Self> {
        crate::wire::contact_from_value(value).ok()
    }

    /// A contact whose id is derived from its address (spec §1.1).
    pub fn from_addr(addr: SocketAddr, services: Services) -> Self {
        Self {
            id: Id::for_node(addr),
            addr,
            services,
        }
    }
}

/// What a node says about its cluster at one level, on every message, so that
/// clusters spread epidemically (spec §4.4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ClusterInfo {
    /// The level this cluster belongs to.
    pub level: Level,
    /// The cluster's random 160-bit id.
    pub cluster: Id,
    /// The sender's estimate of the cluster's size.
    pub size: u32,
    /// Seconds since the cluster was founded, as the sender knows it.
    pub age_secs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_survives_the_value_form_and_garbage_is_refused() {
        for addr in ["10.1.2.3:8091", "[2001:db8::7]:8090"] {
            let c = Contact::from_addr(addr.parse().unwrap(), Services::HTTP);
            assert_eq!(Contact::from_value(&c.to_value()), Some(c));
        }
        let c = Contact::from_addr("10.1.2.3:8091".parse().unwrap(), Services::NONE);
        let v = c.to_value();
        assert_eq!(Contact::from_value(&v[..v.len() - 1]), None);
        assert_eq!(Contact::from_value(b"127.0.0.1:8091"), None);
    }
}
