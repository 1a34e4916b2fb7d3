//! Latency-near discovery: the nodes this node measured nearest, and whom to
//! ask next for theirs.
//!
//! XOR routing shows a node contacts spread uniformly over the network, so
//! among 500 nodes it may never exchange a message with the two or three
//! within 20 ms of it, and a level-2 cluster (spec §4.1) can only form
//! between nodes that have measured each other. The paper finds candidates
//! with network hints (spec §4.3 step 2, §5); hints only help when nodes
//! share a /24 or a traceroute hop, and a node behind a home router shares
//! neither with the volunteer two streets away.
//!
//! So every node also keeps its **neighbourhood**: the `capacity` nodes with
//! the lowest RTT it has measured, fed by every timed RPC. Every
//! maintenance tick it asks one of its nearest neighbours (nearest first;
//! each again after `first_ask_interval`, doubling with every question up
//! to `ask_interval`) for *their* nearest nodes (the
//! `Neighbours` RPC) and pings those it has not met. By the triangle
//! inequality a neighbour's neighbours are near us too, so the walk moves
//! down the latency landscape until it finds the local group, much as
//! greedy nearest-neighbour search does in Meridian or Tapestry. The pings'
//! answers are RTT samples that carry the other nodes' clusters, which is
//! all clustering needs ([`super::cluster::LevelClusters::observe`]).
//!
//! Everything is bounded: `capacity` neighbours, `max_probed` remembered
//! candidates, and one question per tick.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::contact::Contact;
use crate::id::Id;
use crate::time::Instant;

/// Tunables of the neighbourhood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourParams {
    /// Most neighbours kept (the nearest measured).
    pub capacity: usize,
    /// How many of the nearest neighbours are asked for theirs.
    pub ask_nearest: usize,
    /// A neighbour is asked again only after this long.
    pub ask_interval: Duration,
    /// The wait before a neighbour is asked a second time; it doubles with
    /// every question, up to `ask_interval`.
    pub first_ask_interval: Duration,
    /// A neighbour with no RTT sample this recent is forgotten; RTT minima
    /// restart after half of it, so a lasting route change shows through.
    pub sample_ttl: Duration,
    /// Most candidates remembered as already probed.
    pub max_probed: usize,
}

impl Default for NeighbourParams {
    fn default() -> Self {
        Self {
            // Four k-buckets' worth: enough to hold a level-2 group and the
            // nearest members of the level-1 one around it.
            capacity: 32,
            // The nearest eight are where nodes nearer still are found.
            ask_nearest: 8,
            // Ten minutes: a neighbour's list changes slowly once the
            // network has settled; eight asks per ten minutes cost under one
            // RPC per minute at steady state.
            ask_interval: Duration::from_secs(10 * 60),
            // Thirty seconds, then 1, 2, 4, 8 and 10 minutes. Right after a
            // cold start every neighbour's own list is still thin, and what
            // it learns in the next minutes is what clustering needs: with
            // a flat ten minutes, singletons found their partners at the
            // second round, ten minutes in, and the 500-node sphere had
            // not settled after 19-25 min on seeds 1-3 (after 640-870 s
            // with the doubling, one Neighbours RPC more per node-minute).
            first_ask_interval: Duration::from_secs(30),
            // As clustering's sample lifetime (cluster.rs, 30 min).
            sample_ttl: Duration::from_secs(30 * 60),
            // Two full answers per neighbour asked, over the ask interval.
            max_probed: 128,
        }
    }
}

/// Counters for diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighbourStats {
    /// Neighbours held now.
    pub len: usize,
    /// Questions asked.
    pub asked: u64,
    /// Candidates handed out to be probed.
    pub probed: u64,
    /// Neighbours pushed out by nearer ones.
    pub displaced: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    contact: Contact,
    /// Minimum RTT since `window_start`.
    rtt: Duration,
    window_start: Instant,
    last_sample: Instant,
    asked: Option<Instant>,
    /// Questions asked of it while a neighbour.
    times: u32,
}

/// The nearest measured nodes of one node (see the module doc).
#[derive(Clone, Debug)]
pub struct Neighbourhood {
    own: Id,
    params: NeighbourParams,
    /// Sorted by (RTT, id), nearest first; at most `capacity` entries.
    entries: Vec<Entry>,
    /// Candidates handed out for probing, and when.
    probed: BTreeMap<Id, Instant>,
    stats: NeighbourStats,
}

impl Neighbourhood {
    /// An empty neighbourhood of node `own`.
    pub fn new(own: Id, params: NeighbourParams) -> Self {
        Self {
            own,
            params,
            entries: Vec::new(),
            probed: BTreeMap::new(),
            stats: NeighbourStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> NeighbourStats {
        NeighbourStats {
            len: self.entries.len(),
            ..self.stats
        }
    }

    /// Whether `id` is a neighbour.
    pub fn contains(&self, id: &Id) -> bool {
        self.entries.iter().any(|e| e.contact.id == *id)
    }

    /// An RTT `sample` to `contact` was measured at `now`.
    pub fn observe(&mut self, now: Instant, contact: Contact, sample: Duration) {
        if contact.id == self.own {
            return;
        }
        let restart = self.params.sample_ttl / 2;
        let entry = match self.entries.iter().position(|e| e.contact.id == contact.id) {
            Some(i) => {
                let mut e = self.entries.remove(i);
                if now.saturating_duration_since(e.window_start) >= restart {
                    e.rtt = sample;
                    e.window_start = now;
                } else {
                    e.rtt = e.rtt.min(sample);
                }
                e.contact = contact;
                e.last_sample = e.last_sample.max(now);
                e
            }
            None => Entry {
                contact,
                rtt: sample,
                window_start: now,
                last_sample: now,
                asked: None,
                times: 0,
            },
        };
        let at = self
            .entries
            .partition_point(|e| (e.rtt, e.contact.id) < (entry.rtt, entry.contact.id));
        if at >= self.params.capacity {
            return;
        }
        self.entries.insert(at, entry);
        if self.entries.len() > self.params.capacity {
            self.entries.pop();
            self.stats.displaced += 1;
        }
    }

    /// `id` is dead or gone: forget it.
    pub fn forget(&mut self, id: &Id) {
        self.entries.retain(|e| e.contact.id != *id);
    }

    /// Drops neighbours and probe records older than their lifetimes.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.params.sample_ttl;
        self.entries
            .retain(|e| now.saturating_duration_since(e.last_sample) <= ttl);
        let again = self.params.ask_interval;
        self.probed
            .retain(|_, at| now.saturating_duration_since(*at) < again);
    }

    /// Up to `n` neighbours, nearest first, leaving out `except` (the node
    /// asking, which knows itself), with their RTT estimates.
    pub fn nearest(&self, n: usize, except: &Id) -> impl Iterator<Item = (Contact, Duration)> {
        self.entries
            .iter()
            .filter(move |e| e.contact.id != *except)
            .take(n)
            .map(|e| (e.contact, e.rtt))
    }

    /// The neighbour to ask for its neighbours now, if one is due: the
    /// nearest of the `ask_nearest` nearest never asked, or not asked
    /// within its interval (`first_ask_interval` after the first question,
    /// doubling with each one up to `ask_interval`). It is marked as asked.
    pub fn next_to_ask(&mut self, now: Instant) -> Option<Contact> {
        let (first, most) = (self.params.first_ask_interval, self.params.ask_interval);
        let due = |e: &Entry| {
            let doublings = e.times.saturating_sub(1).min(31);
            let wait = first.saturating_mul(1 << doublings).min(most);
            e.asked
                .is_none_or(|t| now.saturating_duration_since(t) >= wait)
        };
        let e = self
            .entries
            .iter_mut()
            .take(self.params.ask_nearest)
            .find(|e| due(e))?;
        e.asked = Some(now);
        e.times = e.times.saturating_add(1);
        self.stats.asked += 1;
        Some(e.contact)
    }

    /// Of the `contacts` neighbour `from` named, those worth a ping: not
    /// us, not already neighbours, not probed within `ask_interval`. They
    /// are remembered as probed (evicting the oldest records past
    /// `max_probed`).
    ///
    /// A neighbour that named someone new is asked again after
    /// `first_ask_interval`, as if asked once: its own list is still
    /// changing, and the next hop of the walk is there. Only a neighbour
    /// with nothing new to tell backs off, doubling its wait (Trickle's
    /// rule, RFC 6206). With a fixed doubling every node re-asked its
    /// neighbours at the same moments after a cold start (0.5, 1.5, 3.5,
    /// 7.5, 15.5 min), and what those late rounds found moved nodes after
    /// the network had settled.
    pub fn to_probe(&mut self, now: Instant, from: &Id, contacts: &[Contact]) -> Vec<Contact> {
        let again = self.params.ask_interval;
        let mut out = Vec::new();
        for c in contacts {
            if c.id == self.own || self.contains(&c.id) {
                continue;
            }
            if self
                .probed
                .get(&c.id)
                .is_some_and(|t| now.saturating_duration_since(*t) < again)
            {
                continue;
            }
            self.probed.insert(c.id, now);
            out.push(*c);
        }
        while self.probed.len() > self.params.max_probed {
            let oldest = self
                .probed
                .iter()
                .min_by_key(|(id, t)| (**t, **id))
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => {
                    self.probed.remove(&id);
                }
                None => break,
            }
        }
        self.stats.probed += out.len() as u64;
        if !out.is_empty()
            && let Some(e) = self.entries.iter_mut().find(|e| e.contact.id == *from)
        {
            e.times = e.times.min(1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::Services;
    use proptest::prelude::*;

    fn contact(i: u8) -> Contact {
        Contact::from_addr(format!("10.0.0.{i}:8091").parse().unwrap(), Services::NONE)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn hood(capacity: usize) -> Neighbourhood {
        Neighbourhood::new(
            contact(0).id,
            NeighbourParams {
                capacity,
                ..NeighbourParams::default()
            },
        )
    }

    #[test]
    fn keeps_the_nearest_and_their_minimum_rtt() {
        let mut h = hood(2);
        let t = Instant::ZERO;
        h.observe(t, contact(1), ms(30));
        h.observe(t, contact(2), ms(10));
        h.observe(t, contact(3), ms(50));
        assert_eq!(h.stats().displaced, 0, "a farther stranger never enters");
        h.observe(t, contact(1), ms(5));
        h.observe(t, contact(1), ms(40));
        h.observe(t, contact(4), ms(7));
        let got: Vec<_> = h.nearest(8, &Id::ZERO).collect();
        assert_eq!(got, vec![(contact(1), ms(5)), (contact(4), ms(7))]);
        assert_eq!(h.stats().displaced, 1);
        h.observe(t, contact(0), ms(1));
        assert!(!h.contains(&contact(0).id), "never our own neighbour");
        let without: Vec<_> = h.nearest(8, &contact(1).id).map(|(c, _)| c).collect();
        assert_eq!(without, vec![contact(4)]);
    }

    #[test]
    fn a_route_change_shows_after_the_window() {
        let mut h = hood(4);
        h.observe(Instant::ZERO, contact(1), ms(5));
        let later = Instant::ZERO + NeighbourParams::default().sample_ttl / 2;
        h.observe(later, contact(1), ms(25));
        assert_eq!(h.nearest(1, &Id::ZERO).next(), Some((contact(1), ms(25))));
        h.expire(later + NeighbourParams::default().sample_ttl + ms(1));
        assert_eq!(h.stats().len, 0);
    }

    #[test]
    fn asks_nearest_first_and_each_once_per_interval() {
        let mut h = hood(8);
        let t = Instant::ZERO;
        for i in 1..=3 {
            h.observe(t, contact(i), ms(u64::from(i)));
        }
        assert_eq!(h.next_to_ask(t), Some(contact(1)));
        assert_eq!(h.next_to_ask(t), Some(contact(2)));
        assert_eq!(h.next_to_ask(t), Some(contact(3)));
        assert_eq!(h.next_to_ask(t), None);
        let again = t + NeighbourParams::default().ask_interval;
        assert_eq!(h.next_to_ask(again), Some(contact(1)));
    }

    #[test]
    fn asks_again_sooner_at_first() {
        let mut h = hood(8);
        let t = Instant::ZERO;
        h.observe(t, contact(1), ms(1));
        let p = NeighbourParams::default();
        let mut at = t;
        let mut waits = Vec::new();
        assert_eq!(h.next_to_ask(at), Some(contact(1)));
        for _ in 0..7 {
            let asked = at;
            // Step a second at a time until it is due again.
            loop {
                at += Duration::from_secs(1);
                if h.next_to_ask(at).is_some() {
                    break;
                }
            }
            waits.push((at - asked).as_secs());
            h.observe(at, contact(1), ms(1));
        }
        let first = p.first_ask_interval.as_secs();
        let most = p.ask_interval.as_secs();
        let want: Vec<u64> = (0..7).map(|i| (first << i).min(most)).collect();
        assert_eq!(waits, want);
    }

    #[test]
    fn a_neighbour_with_news_is_asked_again_soon() {
        let mut h = hood(8);
        let t = Instant::ZERO;
        h.observe(t, contact(1), ms(1));
        let p = NeighbourParams::default();
        let from = contact(1).id;
        // Asked three times with nothing new: the wait has doubled twice.
        let mut at = t;
        for _ in 0..3 {
            while h.next_to_ask(at).is_none() {
                at += Duration::from_secs(1);
            }
            assert!(h.to_probe(at, &from, &[contact(1)]).is_empty());
        }
        let backed_off = p.first_ask_interval * 4;
        assert_eq!(
            h.next_to_ask(at + (backed_off - Duration::from_secs(1))),
            None
        );
        // Now it names a stranger: the next question comes after the first
        // interval again, not after eight times it.
        assert_eq!(h.to_probe(at, &from, &[contact(9)]), vec![contact(9)]);
        assert_eq!(
            h.next_to_ask(at + (p.first_ask_interval - Duration::from_secs(1))),
            None
        );
        assert_eq!(h.next_to_ask(at + p.first_ask_interval), Some(contact(1)));
        // News from a node that is not a neighbour changes no one's wait.
        let mut h2 = hood(8);
        h2.observe(t, contact(1), ms(1));
        assert_eq!(h2.next_to_ask(t), Some(contact(1)));
        assert_eq!(h2.next_to_ask(t + p.first_ask_interval), Some(contact(1)));
        let _ = h2.to_probe(t, &contact(7).id, &[contact(9)]);
        let later = t + p.first_ask_interval;
        assert_eq!(h2.next_to_ask(later + p.first_ask_interval), None);
    }

    #[test]
    fn probes_each_stranger_once_per_interval() {
        let mut h = hood(8);
        let t = Instant::ZERO;
        h.observe(t, contact(1), ms(3));
        let named = [contact(0), contact(1), contact(2), contact(3)];
        assert_eq!(
            h.to_probe(t, &contact(1).id, &named),
            vec![contact(2), contact(3)]
        );
        assert!(h.to_probe(t + ms(1), &contact(1).id, &named).is_empty());
        let again = t + NeighbourParams::default().ask_interval;
        h.expire(again);
        assert_eq!(
            h.to_probe(again, &contact(1).id, &named),
            vec![contact(2), contact(3)]
        );
    }

    proptest! {
        /// Whatever the samples, the neighbourhood stays within its caps,
        /// sorted nearest first, without duplicates or ourselves.
        #[test]
        fn bounded_sorted_and_unique(
            samples in prop::collection::vec((0u8..40, 0u64..200, 0u64..5_000), 0..300),
            cap in 1usize..12,
        ) {
            let mut h = hood(cap);
            let mut now = Instant::ZERO;
            for (who, rtt, dt) in samples {
                now += Duration::from_secs(dt);
                h.observe(now, contact(who), ms(rtt));
                let _ = h.to_probe(now, &contact(who).id, &[contact(who), contact(who.wrapping_add(1))]);
                if dt % 7 == 0 {
                    h.expire(now);
                }
                prop_assert!(h.entries.len() <= cap);
                prop_assert!(h.probed.len() <= h.params.max_probed);
                prop_assert!(!h.contains(&h.own));
                for w in h.entries.windows(2) {
                    prop_assert!((w[0].rtt, w[0].contact.id) < (w[1].rtt, w[1].contact.id));
                }
            }
        }
    }
}
