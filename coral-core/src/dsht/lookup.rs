//! The iterative lookup that halves the distance to the key at every hop
//! (spec §1.4, the paper's Figure 3).
//!
//! The requester stands at distance `D` from the key (its own distance at
//! first, then the distance of the closest node that has answered). It asks
//! the known node whose distance to the key is nearest `D/2` — and still
//! below `D` — for its contacts near the *next* target, half of that node's
//! own distance. Greedy Kademlia would jump to the closest known node; the
//! halving walk instead makes lookups for one key from anywhere pass through
//! the same few nodes at distances ≈ D/2, D/4, …, a converging tree. Those are
//! the nodes where sloppy storage leaves values (spec §3), so gets meet them
//! early. The walk ends when no known node is closer than the current one.
//!
//! One RPC is outstanding at a time (α = 1, the walk is sequential by
//! nature), plus at most one hedge when a reply is late (spec open question 8);
//! the node decides *when* to hedge and calls [`Lookup::next_hop`] again.
//!
//! This type only decides whom to ask next; the node sends the RPCs, times
//! them out and feeds replies back.
//!
//! The candidates are a `Vec` sorted by distance rather than an ordered
//! map: a get in a small table starts and ends with a handful of them, and
//! a map's first node (about a kilobyte) cost more than the walk itself.
//! A reply's contacts are merged in with one pass from the back.

use smallvec::SmallVec;

use crate::contact::Contact;
use crate::id::{Distance, Id};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    NotAsked,
    InFlight,
    Answered,
    Failed,
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    /// The contact's distance to the key, which orders the candidates.
    distance: Distance,
    contact: Contact,
    state: State,
}

/// A step the lookup wants taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Hop {
    /// Whom to ask.
    pub contact: Contact,
    /// The distance from the key to ask it for contacts near.
    pub target: Distance,
}

/// The halving walk toward one key in one DSHT.
#[derive(Clone, Debug)]
pub struct Lookup {
    key: Id,
    own: Id,
    /// Distance of the closest node that has answered (initially our own).
    position: Distance,
    /// The node at `position`, `None` while it is still ourselves.
    at: Option<Contact>,
    /// Every node known, by distance to the key, closest first; one per distance.
    candidates: Vec<Candidate>,
    /// A node to ask first regardless of the halving rule: where the previous
    /// level's walk stopped (spec §3.5).
    first: Option<Contact>,
    in_flight: u32,
    rpcs: u32,
    answers: u32,
    max_rpcs: u32,
    /// After halving ends, also ask the nodes among the `sweep` closest
    /// known that have not answered (see [`Lookup::with_sweep`]).
    sweep: usize,
    stopped: bool,
}

impl Lookup {
    /// A walk from `own` toward `key`, knowing `seeds`, giving up after `max_rpcs`.
    pub fn new(own: Id, key: Id, seeds: impl IntoIterator<Item = Contact>, max_rpcs: u32) -> Self {
        // A walk toward our own id (a join) has nothing closer than
        // ourselves; it starts from the far end to find our neighbours.
        let position = if own == key {
            Distance::MAX
        } else {
            own.distance(&key)
        };
        let mut l = Self {
            key,
            own,
            position,
            at: None,
            candidates: Vec::new(),
            first: None,
            in_flight: 0,
            rpcs: 0,
            answers: 0,
            max_rpcs,
            sweep: 0,
            stopped: false,
        };
        // One sort for the whole table rather than a merge per seed; the
        // stable sort keeps the first of equal distances, as `learn` does.
        l.candidates = l.unknown(seeds).collect();
        l.candidates.sort_by_key(|c| c.distance);
        l.candidates.dedup_by_key(|c| c.distance);
        l
    }

    /// Once no known node is closer than the current one, keep asking until
    /// the `n` closest nodes known have all answered (or failed), as a
    /// Kademlia lookup ends. A get needs this: the node now closest to a key
    /// may be one that joined after the value was stored one step away.
    #[must_use]
    pub fn with_sweep(mut self, n: usize) -> Self {
        self.sweep = n;
        self
    }

    /// Turns the sweep of [`Lookup::with_sweep`] on for a walk under way
    /// (a put whose path offered no node with room).
    pub fn set_sweep(&mut self, n: usize) {
        self.sweep = n;
    }

    /// Whether a sweep is on.
    pub fn sweeping(&self) -> bool {
        self.sweep > 0
    }

    /// Whether [`Lookup::stop`] ended the walk.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Ask `contact` before anything else (continuing a walk begun at another level).
    pub fn start_at(&mut self, contact: Contact) {
        if contact.id != self.own {
            self.first = Some(contact);
            self.learn([contact]);
        }
    }

    /// The key walked toward.
    pub fn key(&self) -> Id {
        self.key
    }

    /// `contacts` other than ourselves, as candidates not yet asked.
    fn unknown(
        &self,
        contacts: impl IntoIterator<Item = Contact>,
    ) -> impl Iterator<Item = Candidate> {
        let (own, key) = (self.own, self.key);
        contacts
            .into_iter()
            .filter(move |c| c.id != own)
            .map(move |c| Candidate {
                distance: c.id.distance(&key),
                contact: c,
                state: State::NotAsked,
            })
    }

    /// Where the candidate at distance `d` is, or would be inserted.
    fn find(&self, d: &Distance) -> Result<usize, usize> {
        self.candidates.binary_search_by(|c| c.distance.cmp(d))
    }

    fn get_mut(&mut self, d: &Distance) -> Option<&mut Candidate> {
        let i = self.find(d).ok()?;
        self.candidates.get_mut(i)
    }

    /// How many candidates are nearer the key than `d` (or, with
    /// `inclusive`, at most as near).
    fn rank(&self, d: &Distance, inclusive: bool) -> usize {
        self.candidates
            .partition_point(|c| c.distance < *d || (inclusive && c.distance == *d))
    }

    /// Adds contacts learned from a reply or the routing table. A distance
    /// already known keeps its candidate; among new ones, the first wins.
    pub fn learn(&mut self, contacts: impl IntoIterator<Item = Contact>) {
        // Filled in place: collecting would build it and then move it here
        // whole, inline room and all, for a reply that is often empty.
        let mut new: SmallVec<[Candidate; 8]> = SmallVec::new();
        new.extend(self.unknown(contacts));
        new.sort_by_key(|c| c.distance);
        new.dedup_by_key(|c| c.distance);
        new.retain(|c| self.find(&c.distance).is_err());
        // Merge from the back, largest new first: each known candidate
        // beyond the nearest new one moves once, by the number of new ones
        // nearer than it.
        let mut end = self.candidates.len();
        self.candidates.extend_from_slice(&new);
        for (j, c) in new.iter().enumerate().rev() {
            let at = self.candidates.get(..end).map_or(0, |known| {
                known.partition_point(|k| k.distance < c.distance)
            });
            self.candidates.copy_within(at..end, at + j + 1);
            if let Some(slot) = self.candidates.get_mut(at + j) {
                *slot = *c;
            }
            end = at;
        }
    }

    /// The next node to ask, if the walk should send another RPC now. The
    /// node calls it after every reply or failure, and once more to hedge.
    pub fn next_hop(&mut self) -> Option<Hop> {
        if self.stopped || self.rpcs >= self.max_rpcs {
            return None;
        }
        let chosen = match self.first.take() {
            Some(c) => Some(c.id.distance(&self.key)),
            None => self.pick(),
        };
        let d = chosen?;
        let cand = self.get_mut(&d)?;
        if cand.state != State::NotAsked {
            return self.next_hop();
        }
        cand.state = State::InFlight;
        let contact = cand.contact;
        self.in_flight += 1;
        self.rpcs += 1;
        Some(Hop {
            contact,
            target: d.half(),
        })
    }

    /// Among nodes not yet asked and closer than the current position: the
    /// farthest at or below half of it, so each hop at least halves the
    /// distance when it can; failing that, the closest above half.
    ///
    /// The paper's Figure 3 breaks its tie (distances 4 and 6 around a
    /// target of 5) toward the lower one, which this rule generalises:
    /// choosing the linearly nearest node to D/2 would prefer 0.9·D over
    /// 0.01·D and waste hops.
    fn pick(&self) -> Option<Distance> {
        let half = self.position.half();
        let not_asked = |c: &&Candidate| c.state == State::NotAsked;
        self.candidates
            .get(..self.rank(&half, true))
            .and_then(|at_or_below| at_or_below.iter().rev().find(not_asked))
            .or_else(|| {
                let above = self.rank(&half, false)..self.rank(&self.position, false);
                self.candidates
                    .get(above)
                    .and_then(|above| above.iter().find(not_asked))
            })
            .or_else(|| self.candidates.iter().take(self.sweep).find(not_asked))
            .map(|c| c.distance)
    }

    /// `from` answered with `contacts`. Returns whether it moved the walk closer.
    pub fn on_reply(&mut self, from: &Contact, contacts: &[Contact]) -> bool {
        let d = from.id.distance(&self.key);
        let Some(cand) = self.get_mut(&d) else {
            return false;
        };
        if cand.state != State::InFlight {
            return false;
        }
        cand.state = State::Answered;
        cand.contact = *from;
        self.in_flight -= 1;
        self.answers += 1;
        self.learn(contacts.iter().copied());
        if d < self.position {
            self.position = d;
            self.at = Some(*from);
            true
        } else {
            false
        }
    }

    /// The RPC to `id` failed (timeout or refusal).
    pub fn on_failure(&mut self, id: &Id) {
        let d = id.distance(&self.key);
        if let Some(cand) = self.get_mut(&d)
            && cand.state == State::InFlight
        {
            cand.state = State::Failed;
            self.in_flight -= 1;
        }
    }

    /// Ends the walk where it is (a get found values, a put met a full and loaded node).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Whether the walk is over: stopped, out of budget, or no closer node is
    /// known and nothing is in flight.
    pub fn is_done(&self) -> bool {
        if self.in_flight > 0 {
            return self.stopped;
        }
        self.stopped
            || self.rpcs >= self.max_rpcs
            || (self.first.is_none() && self.pick().is_none())
    }

    /// RPCs currently outstanding.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// RPCs sent so far.
    pub fn rpcs(&self) -> u32 {
        self.rpcs
    }

    /// Nodes that answered so far.
    pub fn answers(&self) -> u32 {
        self.answers
    }

    /// The closest node that answered (`None` if only ourselves so far).
    pub fn reached(&self) -> Option<Contact> {
        self.at
    }

    /// The current distance to the key.
    pub fn position(&self) -> Distance {
        self.position
    }

    /// The `n` closest nodes known that have not answered (never asked, or
    /// failed), closest first.
    pub fn closest_unanswered(&self, n: usize) -> Vec<Contact> {
        self.candidates
            .iter()
            .filter(|c| c.state != State::Answered)
            .take(n)
            .map(|c| c.contact)
            .collect()
    }

    /// The `n` closest nodes that answered, closest first.
    pub fn closest_answered(&self, n: usize) -> Vec<Contact> {
        self.candidates
            .iter()
            .filter(|c| c.state == State::Answered)
            .take(n)
            .map(|c| c.contact)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::Services;
    use std::net::SocketAddr;

    fn id(n: u8) -> Id {
        let mut b = [0u8; 20];
        b[19] = n;
        Id(b)
    }

    fn c(n: u8) -> Contact {
        let addr: SocketAddr = format!("10.0.0.{n}:1").parse().unwrap();
        Contact {
            id: id(n),
            addr,
            services: Services::NONE,
        }
    }

    /// The first step of the paper's Figure 3 (spec §1.4): R = 14 looks up
    /// key 4 knowing 13, 3, 2, 0, 5. D = 10; the node at distance 5 (node 1)
    /// is unknown, so R asks node 0 (distance 4) for contacts near distance 2.
    #[test]
    fn figure_three_first_hop() {
        let mut l = Lookup::new(id(14), id(4), [c(13), c(3), c(2), c(0), c(5)], 10);
        let h = l.next_hop().unwrap();
        assert_eq!(h.contact.id, id(0));
        assert_eq!(h.target, id(2).distance(&Id::ZERO));
        // A hedge goes to the next-best candidate below D = 10: of 5 (d = 1),
        // 2 (d = 6), 3 (d = 7) and 13 (d = 9), only node 5 is at or below 5.
        let hedge = l.next_hop().unwrap();
        assert_eq!(hedge.contact.id, id(5));
        assert_eq!(l.in_flight(), 2);
    }

    #[test]
    fn walks_to_the_closest_node_by_halving() {
        let mut l = Lookup::new(id(14), id(4), [c(13), c(3), c(2), c(0), c(5)], 10);
        let h = l.next_hop().unwrap();
        assert_eq!(h.contact.id, id(0));
        assert!(l.on_reply(&c(0), &[c(4), c(5), c(7)]));
        // Distance now 4; half is 2 (node 6, unknown): of 5 (d = 1), 7 (d = 3)
        // and 4 (d = 0), the farthest at or below 2 is node 5, as in the paper.
        let h = l.next_hop().unwrap();
        assert_eq!(h.contact.id, id(5));
        assert!(l.on_reply(&c(5), &[c(4), c(5), c(7)]));
        let h = l.next_hop().unwrap();
        assert_eq!(h.contact.id, id(4));
        assert!(l.on_reply(&c(4), &[c(5)]));
        assert!(l.is_done());
        assert_eq!(l.reached().unwrap().id, id(4));
        assert_eq!(l.answers(), 3);
        assert_eq!(l.closest_answered(2), vec![c(4), c(5)]);
    }

    #[test]
    fn never_asks_a_farther_node_and_respects_budget() {
        let mut l = Lookup::new(id(4), id(5), [c(12), c(13)], 10);
        // Our distance is 1; 12 and 13 are farther: nothing to do.
        assert!(l.next_hop().is_none());
        assert!(l.is_done());
        let mut l = Lookup::new(id(0), id(255), (1..=200u8).map(c), 3);
        for _ in 0..3 {
            let h = l.next_hop().unwrap();
            l.on_failure(&h.contact.id);
        }
        assert!(l.next_hop().is_none());
        assert!(l.is_done());
    }

    #[test]
    fn a_walk_toward_our_own_id_finds_neighbours() {
        let mut l = Lookup::new(id(4), id(4), [c(200), c(5)], 10);
        let h = l.next_hop().unwrap();
        assert_eq!(
            h.contact.id,
            id(200),
            "nearest half of the whole space first"
        );
        assert!(l.on_reply(&c(200), &[c(6)]));
        assert_eq!(l.next_hop().unwrap().contact.id, id(6));
    }

    #[test]
    fn sweep_asks_the_closest_nodes_beyond_the_halving_end() {
        // We are node 0 looking up key 4; 5 (d = 1) answers and knows 4 (d = 0)
        // and 6 (d = 2). Halving ends at 4; with a sweep of 3, node 6 is
        // asked too although it is farther than 4.
        let mut l = Lookup::new(id(0), id(4), [c(5)], 10).with_sweep(3);
        assert_eq!(l.next_hop().unwrap().contact.id, id(5));
        l.on_reply(&c(5), &[c(4), c(6)]);
        assert_eq!(l.next_hop().unwrap().contact.id, id(4));
        l.on_reply(&c(4), &[]);
        assert_eq!(l.next_hop().unwrap().contact.id, id(6));
        l.on_reply(&c(6), &[]);
        assert!(l.next_hop().is_none());
        assert!(l.is_done());
        assert_eq!(l.reached().unwrap().id, id(4));
    }

    #[test]
    fn start_at_is_asked_first() {
        let mut l = Lookup::new(id(14), id(4), [c(13), c(0)], 10);
        l.start_at(c(5));
        assert_eq!(l.next_hop().unwrap().contact.id, id(5));
    }

    /// A contact `n` reached at `port`: the same id at two ports tells
    /// which copy a lookup kept.
    fn at_port(n: u8, port: u16) -> Contact {
        Contact {
            addr: SocketAddr::from(([10, 0, 0, n], port)),
            ..c(n)
        }
    }

    proptest::proptest! {
        /// Seeds and every reply's contacts end up as an ordered map
        /// filled with `or_insert` would hold them: by distance, one per
        /// id, the first copy heard, never ourselves.
        #[test]
        fn candidates_are_what_an_ordered_map_would_hold(
            own in 0u8..40,
            key in 0u8..=255,
            seeds in proptest::collection::vec((0u8..40, 0u16..3), 0..30),
            replies in proptest::collection::vec(
                proptest::collection::vec((0u8..40, 0u16..3), 0..20),
                0..6,
            ),
        ) {
            let mut model = std::collections::BTreeMap::new();
            let mut heard = |batch: &[(u8, u16)]| {
                let contacts: Vec<Contact> =
                    batch.iter().map(|&(n, port)| at_port(n, port)).collect();
                for c in &contacts {
                    if c.id != id(own) {
                        model.entry(c.id.distance(&id(key))).or_insert(*c);
                    }
                }
                contacts
            };
            let mut l = Lookup::new(id(own), id(key), heard(&seeds), 10);
            for batch in &replies {
                l.learn(heard(batch));
            }
            let want: Vec<Contact> = model.into_values().collect();
            proptest::prop_assert_eq!(l.closest_unanswered(usize::MAX), want);
        }
    }

    #[test]
    fn late_reply_from_failed_node_is_ignored() {
        let mut l = Lookup::new(id(14), id(4), [c(0)], 10);
        let h = l.next_hop().unwrap();
        l.on_failure(&h.contact.id);
        assert!(!l.on_reply(&c(0), &[c(4)]));
        assert!(l.is_done());
    }
}
