//! Network hints (spec §5): which Coral nodes are near a place of the
//! network, and how near.
//!
//! A node publishes itself under its own /24 (or /48) prefix and under each
//! router on the last hops toward it, as a traceroute finds them. A
//! traceroute times every hop too, so a router hint carries the node's RTT
//! to that router ([`crate::wire::hint_value`]); a prefix hint carries none
//! (the node is on the target's own network).
//!
//! A DNS server that wants nodes near a resolver traces the path to it: it
//! learns the resolver's last hops and, subtracting its own RTT to a hop
//! from its RTT to the resolver, how far the resolver is from that hop.
//! A node hinted under a hop is then estimated at (resolver → hop) +
//! (hop → node), the RTT of a path through the hop, which bounds the direct
//! one from above as long as the hop is on the way. A node in the
//! resolver's own prefix is estimated at its RTT to the prefix alone (zero
//! when it gave none). Without these RTTs every hinted node of a hop looks
//! alike, and among the nodes of one metro area the access links alone
//! differ by tens of milliseconds: [`rank`] puts the estimate first, and
//! orders the nodes whose estimate is unknown by the hints' own order (the
//! prefix's, then each hop's, the hop nearest the target first).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::contact::{Contact, Services};
use crate::wire;

/// One router on the path toward a place (a hop of a traceroute), and an
/// RTT that goes with it (what the RTT measures is said where a `Router`
/// is taken).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Router {
    /// The router's address.
    pub addr: IpAddr,
    /// The RTT, if it was measured.
    pub rtt: Option<Duration>,
}

impl Router {
    /// A router whose RTT is unknown.
    pub const fn unmeasured(addr: IpAddr) -> Self {
        Self { addr, rtt: None }
    }
}

/// A node the hints name near a target.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Hint {
    /// The node.
    pub contact: Contact,
    /// Its estimated RTT to the target (see the module doc), when the
    /// hints and the trace to the target carried the RTTs to make one.
    pub rtt: Option<Duration>,
}

/// The nodes offering `services` that the values of the target's prefix
/// key (`prefix`) and of its hops' keys (`hops`, each with the target's
/// RTT to that hop, nearest the target first) name, each once, best
/// estimate first, at most `count`. Values that are no hint are skipped.
pub fn rank<'a>(
    prefix: &[Bytes],
    hops: impl IntoIterator<Item = (Option<Duration>, &'a [Bytes])>,
    services: Services,
    count: usize,
) -> Vec<Hint> {
    // (estimate, first position, node)
    let mut found: Vec<(Option<Duration>, usize, Contact)> = Vec::new();
    let prefix = prefix
        .iter()
        .map(|v| (Some(Duration::ZERO), Some(Duration::ZERO), v));
    let hops = hops
        .into_iter()
        .flat_map(|(via, vs)| vs.iter().map(move |v| (via, None, v)));
    for (i, (via, own_default, v)) in prefix.chain(hops).enumerate() {
        let Ok((c, own)) = wire::hint_from_value(v) else {
            continue;
        };
        if !c.services.contains(services) {
            continue;
        }
        let est = via.zip(own.or(own_default)).map(|(a, b)| a + b);
        match found.iter_mut().find(|(_, _, d)| d.id == c.id) {
            Some(seen) => {
                seen.0 = match (seen.0, est) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            None => found.push((est, i, c)),
        }
    }
    found.sort_by_key(|&(est, i, _)| (est.is_none(), est, i));
    found
        .into_iter()
        .take(count)
        .map(|(rtt, _, contact)| Hint { contact, rtt })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::id::{ID_LEN, Id};
    use crate::wire::hint_value;

    fn node(n: u8, services: Services) -> Contact {
        Contact {
            id: Id([n; ID_LEN]),
            addr: format!("10.0.{n}.1:8091").parse().unwrap(),
            services,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ids(hints: &[Hint]) -> Vec<u8> {
        hints.iter().map(|h| h.contact.id.0[0]).collect()
    }

    #[test]
    fn the_estimate_through_each_hop_orders_the_nodes() {
        let s = Services::HTTP;
        // Hop 1 (1 ms from the target): node 1 behind a 30 ms access link,
        // node 2 at 3 ms. Hop 2 (6 ms from the target): node 3 at 1 ms.
        let hop1 = [
            hint_value(&node(1, s), Some(ms(30))),
            hint_value(&node(2, s), Some(ms(3))),
        ];
        let hop2 = [hint_value(&node(3, s), Some(ms(1)))];
        let hints = rank(
            &[],
            [(Some(ms(1)), &hop1[..]), (Some(ms(6)), &hop2[..])],
            s,
            8,
        );
        assert_eq!(ids(&hints), vec![2, 3, 1]);
        assert_eq!(hints[0].rtt, Some(ms(4)));
        assert_eq!(hints[1].rtt, Some(ms(7)));
        assert_eq!(hints[2].rtt, Some(ms(31)));
        // `count` keeps the best.
        let two = rank(
            &[],
            [(Some(ms(1)), &hop1[..]), (Some(ms(6)), &hop2[..])],
            s,
            2,
        );
        assert_eq!(ids(&two), vec![2, 3]);
    }

    #[test]
    fn a_prefix_hint_is_near_and_unknown_estimates_keep_the_hints_order() {
        let s = Services::HTTP;
        let prefix = [hint_value(&node(9, s), None)];
        // Hop 1's distance from the target is unknown; hop 2's node carries
        // no RTT of its own.
        let hop1 = [
            hint_value(&node(1, s), Some(ms(2))),
            hint_value(&node(2, s), None),
        ];
        let hop2 = [
            hint_value(&node(3, s), None),
            hint_value(&node(4, s), Some(ms(1))),
        ];
        let hints = rank(&prefix, [(None, &hop1[..]), (Some(ms(5)), &hop2[..])], s, 8);
        assert_eq!(ids(&hints), vec![9, 4, 1, 2, 3]);
        assert_eq!(hints[0].rtt, Some(Duration::ZERO));
        assert_eq!(hints[1].rtt, Some(ms(6)));
        assert!(hints[2..].iter().all(|h| h.rtt.is_none()));
    }

    #[test]
    fn a_node_named_twice_counts_once_at_its_best_estimate() {
        let s = Services::HTTP.with(Services::DNS);
        let hop1 = [hint_value(&node(1, s), Some(ms(20)))];
        let hop2 = [
            hint_value(&node(1, s), Some(ms(2))),
            hint_value(&node(2, s), Some(ms(8))),
        ];
        let hints = rank(
            &[],
            [(Some(ms(1)), &hop1[..]), (Some(ms(3)), &hop2[..])],
            s,
            8,
        );
        assert_eq!(ids(&hints), vec![1, 2]);
        assert_eq!(hints[0].rtt, Some(ms(5)));
    }

    #[test]
    fn services_and_garbage_are_filtered() {
        let hop = [
            hint_value(&node(1, Services::DNS), Some(ms(1))),
            Bytes::from_static(b"not a hint"),
            hint_value(&node(2, Services::HTTP), Some(ms(9))),
        ];
        let hints = rank(&[], [(Some(ms(1)), &hop[..])], Services::HTTP, 8);
        assert_eq!(ids(&hints), vec![2]);
        assert!(rank(&[], [(Some(ms(1)), &hop[..])], Services::HTTP, 0).is_empty());
    }
}
