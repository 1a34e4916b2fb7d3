//! 160-bit identifiers, the XOR metric, and domain-separated keys.
//!
//! Node ids and keys share one 160-bit space (spec §1.1). Distance is the XOR
//! of two ids read as an unsigned big-endian integer (Kademlia, spec §1.2), so
//! a longer common prefix means a smaller distance. The halving lookup
//! (spec §1.4) also needs arithmetic on distances: halving and the absolute
//! difference between two distances, which [`Distance`] provides.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sha1::{Digest, Sha1};

use crate::rng::Rng;

/// Number of bytes in an id.
pub const ID_LEN: usize = 20;
/// Number of bits in an id, and so the number of k-buckets per routing table.
pub const ID_BITS: usize = ID_LEN * 8;

/// A 160-bit identifier: a node id or a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Id(pub [u8; ID_LEN]);

// The numeric (big-endian) order of the bytes, compared as two machine
// words: ids key the node's ordered maps, and the derived byte-array order
// calls `memcmp` on every comparison.
impl Ord for Id {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        Distance(self.0).words().cmp(&Distance(other.0).words())
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Keys and node ids are the same kind of value.
pub type Key = Id;

/// The XOR distance between two ids, ordered as a 160-bit unsigned integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Distance(pub [u8; ID_LEN]);

// Compared as two machine words: the derived byte-array order calls
// `memcmp`, which dominated the halving reply on the RPC hot path.
impl Ord for Distance {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.words().cmp(&other.words())
    }
}

impl PartialOrd for Distance {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Id {
    /// The all-zero id.
    pub const ZERO: Self = Self([0; ID_LEN]);

    /// SHA-1 of `domain ‖ 0x00 ‖ data`. Every kind of key uses its own
    /// domain string so that, say, a URL can never collide with a prefix.
    pub fn hash(domain: &str, data: &[u8]) -> Self {
        let mut h = Sha1::new();
        h.update(domain.as_bytes());
        h.update([0u8]);
        h.update(data);
        Self(h.finalize().into())
    }

    /// The node id of a node reachable at `addr`: SHA-1 over its IP and port,
    /// so several nodes can share one host (spec open question 19).
    pub fn for_node(addr: SocketAddr) -> Self {
        let mut buf = [0u8; 18];
        let n = match addr.ip() {
            IpAddr::V4(ip) => {
                buf[..4].copy_from_slice(&ip.octets());
                4
            }
            IpAddr::V6(ip) => {
                buf[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        buf[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
        Self::hash("coral-node", &buf[..n + 2])
    }

    /// The key under which proxies holding `url` are stored. The caller
    /// passes the canonical absolute URL.
    pub fn for_url(url: &str) -> Self {
        Self::hash("coral-url", url.as_bytes())
    }

    /// The network-hint key of the IPv4 /24 that contains `ip` (spec §5).
    pub fn for_ipv4_prefix(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        Self::hash("coral-pfx4-24", &o[..3])
    }

    /// The network-hint key of the IPv6 /48 that contains `ip` (spec §5).
    pub fn for_ipv6_prefix(ip: Ipv6Addr) -> Self {
        let o = ip.octets();
        Self::hash("coral-pfx6-48", &o[..6])
    }

    /// The network-hint key of a router address seen on a node's path (spec §5).
    pub fn for_router(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::hash("coral-rtr", &v4.octets()),
            IpAddr::V6(v6) => Self::hash("coral-rtr", &v6.octets()),
        }
    }

    /// A uniformly random id.
    pub fn random(rng: &mut Rng) -> Self {
        let mut b = [0u8; ID_LEN];
        rng.fill(&mut b);
        Self(b)
    }

    /// A random id whose distance from `self` falls in bucket `bucket`, that
    /// is, whose highest differing bit is bit `bucket` (0 = least significant).
    pub fn random_in_bucket(&self, bucket: usize, rng: &mut Rng) -> Self {
        let mut d = [0u8; ID_LEN];
        rng.fill(&mut d);
        let bucket = bucket.min(ID_BITS - 1);
        // Clear every bit above `bucket`, set bit `bucket`.
        let byte = ID_LEN - 1 - bucket / 8;
        let bit = bucket % 8;
        for b in d.iter_mut().take(byte) {
            *b = 0;
        }
        d[byte] &= (1u16 << bit).wrapping_sub(1) as u8;
        d[byte] |= 1 << bit;
        self.xor(&Distance(d))
    }

    /// The distance from `self` to `other`.
    pub fn distance(&self, other: &Self) -> Distance {
        let mut d = [0u8; ID_LEN];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// The id at distance `d` from `self`.
    pub fn xor(&self, d: &Distance) -> Self {
        Self(self.distance(&Self(d.0)).0)
    }

    /// Number of leading bits `self` and `other` have in common (160 if equal).
    pub fn common_prefix_len(&self, other: &Self) -> usize {
        self.distance(other).leading_zeros()
    }

    /// The k-bucket `other` falls into in a table owned by `self`, or `None`
    /// for `self` itself.
    pub fn bucket_index(&self, other: &Self) -> Option<usize> {
        self.distance(other).bucket()
    }

    /// The first bytes of the id as an integer, for compact logs.
    pub fn short(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
}

impl Distance {
    /// Zero: an id's distance to itself.
    pub const ZERO: Self = Self([0; ID_LEN]);
    /// The largest distance.
    pub const MAX: Self = Self([0xff; ID_LEN]);

    /// Number of leading zero bits (160 for zero).
    pub fn leading_zeros(&self) -> usize {
        for (i, b) in self.0.iter().enumerate() {
            if *b != 0 {
                return i * 8 + b.leading_zeros() as usize;
            }
        }
        ID_BITS
    }

    /// Position of the highest set bit (0 = least significant), or `None` for zero.
    pub fn bucket(&self) -> Option<usize> {
        let lz = self.leading_zeros();
        (lz < ID_BITS).then(|| ID_BITS - 1 - lz)
    }

    /// The distance as (high 32 bits, low 128 bits), for word arithmetic.
    fn words(&self) -> (u32, u128) {
        let mut hi = [0u8; 4];
        let mut lo = [0u8; 16];
        hi.copy_from_slice(&self.0[..4]);
        lo.copy_from_slice(&self.0[4..]);
        (u32::from_be_bytes(hi), u128::from_be_bytes(lo))
    }

    fn from_words(hi: u32, lo: u128) -> Self {
        let mut out = [0u8; ID_LEN];
        out[..4].copy_from_slice(&hi.to_be_bytes());
        out[4..].copy_from_slice(&lo.to_be_bytes());
        Self(out)
    }

    /// `self / 2`, rounding down.
    pub fn half(&self) -> Self {
        let (hi, lo) = self.words();
        Self::from_words(hi >> 1, (lo >> 1) | (u128::from(hi & 1) << 127))
    }

    /// `|self - other|`.
    pub fn abs_diff(&self, other: &Self) -> Self {
        let (a, b) = if self >= other {
            (self.words(), other.words())
        } else {
            (other.words(), self.words())
        };
        let (lo, borrow) = a.1.overflowing_sub(b.1);
        Self::from_words(a.0.wrapping_sub(b.0).wrapping_sub(u32::from(borrow)), lo)
    }

    /// An approximation of the distance as a float, for estimates and logs.
    pub fn as_f64(&self) -> f64 {
        self.0
            .iter()
            .fold(0.0, |acc, b| acc * 256.0 + f64::from(*b))
    }

    /// `log2(self)` (approximately), or `-inf` for zero.
    pub fn log2(&self) -> f64 {
        self.as_f64().log2()
    }
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(f, &self.0[..6])
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(f, &self.0)
    }
}

impl fmt::Debug for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "2^{:.2}", self.log2())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = Id> {
        any::<[u8; ID_LEN]>().prop_map(Id)
    }

    fn small(n: u8) -> Distance {
        let mut d = [0u8; ID_LEN];
        d[ID_LEN - 1] = n;
        Distance(d)
    }

    #[test]
    fn keys_are_domain_separated() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(
            Id::for_ipv4_prefix(ip),
            Id::for_ipv4_prefix(Ipv4Addr::new(10, 1, 2, 200))
        );
        assert_ne!(
            Id::for_ipv4_prefix(ip),
            Id::for_ipv4_prefix(Ipv4Addr::new(10, 1, 3, 3))
        );
        assert_ne!(Id::for_router(IpAddr::V4(ip)), Id::for_ipv4_prefix(ip));
        assert_ne!(
            Id::for_url("http://a/"),
            Id::hash("coral-rtr", b"http://a/")
        );
        let a: SocketAddr = "127.0.0.1:8091".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:8092".parse().unwrap();
        assert_ne!(Id::for_node(a), Id::for_node(b));
        assert_eq!(Id::for_node(a), Id::for_node(a));
        let v6: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Id::for_ipv6_prefix(v6), Id::for_ipv6_prefix(v6b));
    }

    #[test]
    fn distance_arithmetic_on_small_values() {
        assert_eq!(small(10).half(), small(5));
        assert_eq!(small(7).abs_diff(&small(10)), small(3));
        assert_eq!(small(10).abs_diff(&small(7)), small(3));
        assert_eq!(small(1).bucket(), Some(0));
        assert_eq!(small(0x80).bucket(), Some(7));
        assert_eq!(Distance::ZERO.bucket(), None);
        assert_eq!(Distance::MAX.bucket(), Some(159));
        // A borrow across bytes.
        let mut a = [0u8; ID_LEN];
        a[ID_LEN - 2] = 1;
        assert_eq!(Distance(a).abs_diff(&small(1)), small(255));
    }

    proptest! {
        #[test]
        fn xor_metric_laws(a in id(), b in id(), c in id()) {
            prop_assert_eq!(a.distance(&a), Distance::ZERO);
            prop_assert_eq!(a.distance(&b), b.distance(&a));
            prop_assert_eq!(a.distance(&b) == Distance::ZERO, a == b);
            // XOR is a metric; it even satisfies d(a,c) <= d(a,b) xor-sum form,
            // and in particular the triangle inequality.
            let ab = a.distance(&b).as_f64();
            let bc = b.distance(&c).as_f64();
            let ac = a.distance(&c).as_f64();
            prop_assert!(ac <= ab + bc + 1.0);
            // Unidirectionality: for a given point and distance there is one id.
            prop_assert_eq!(a.xor(&a.distance(&b)), b);
            prop_assert_eq!(a.common_prefix_len(&b), a.distance(&b).leading_zeros());
        }

        #[test]
        fn id_order_is_the_byte_order(a in id(), b in id()) {
            prop_assert_eq!(a.cmp(&b), a.0.cmp(&b.0));
        }

        #[test]
        fn bucket_index_matches_prefix(a in id(), b in id()) {
            match a.bucket_index(&b) {
                None => prop_assert_eq!(a, b),
                Some(i) => prop_assert_eq!(i, ID_BITS - 1 - a.common_prefix_len(&b)),
            }
        }

        #[test]
        fn random_in_bucket_lands_in_bucket(a in id(), bucket in 0usize..ID_BITS, seed in any::<u64>()) {
            let mut rng = crate::rng::Rng::new(seed);
            let x = a.random_in_bucket(bucket, &mut rng);
            prop_assert_eq!(a.bucket_index(&x), Some(bucket));
        }

        #[test]
        fn half_and_abs_diff_agree_with_u128_on_low_bits(x in any::<u64>(), y in any::<u64>()) {
            let mk = |v: u64| { let mut d = [0u8; ID_LEN]; d[12..].copy_from_slice(&v.to_be_bytes()); Distance(d) };
            prop_assert_eq!(mk(x).half(), mk(x / 2));
            prop_assert_eq!(mk(x).abs_diff(&mk(y)), mk(x.abs_diff(y)));
            prop_assert_eq!(mk(x).cmp(&mk(y)), x.cmp(&y));
        }
    }
}
