//! The server-side request forgery rule: an origin must resolve to a public
//! address. Loopback, private, shared (CGNAT), link-local, multicast,
//! broadcast, documentation and unspecified addresses are refused unless an
//! operator allow-listed them (the testnet allows its own loopback origin).
//! The adapter resolves names; this rule is applied to every address it got.

use std::net::IpAddr;

/// An IP network `addr/prefix`, for the allow-list.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IpNet {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("bad address in {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse()
                .ok()
                .filter(|&n| n <= max)
                .ok_or(format!("bad prefix in {s:?}"))?
        };
        Ok(Self { addr, prefix })
    }
}

/// Whether an origin at `ip` may be contacted.
pub fn origin_allowed(ip: IpAddr, allow: &[IpNet]) -> bool {
    if allow.iter().any(|n| n.contains(ip)) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return origin_allowed(IpAddr::V4(v4), allow);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ip: &str, allow: &[&str]) -> bool {
        let allow: Vec<IpNet> = allow.iter().map(|s| s.parse().unwrap()).collect();
        origin_allowed(ip.parse().unwrap(), &allow)
    }

    #[test]
    fn private_addresses_are_refused_unless_allowed() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!ok(bad, &[]), "{bad} must be refused");
        }
        for good in ["8.8.8.8", "93.184.216.34", "2606:4700::1111"] {
            assert!(ok(good, &[]), "{good} must be allowed");
        }
        assert!(ok("127.0.0.9", &["127.0.0.9/32"]));
        assert!(!ok("127.0.0.8", &["127.0.0.9/32"]));
        assert!(ok("10.9.9.9", &["10.0.0.0/8"]));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
    }
}
