//! Per-prefix state of the redirector: resolver RTTs (spec §6.2, open
//! question 13) and response-rate limiting. Both key on the client's
//! network prefix (IPv4 /24, IPv6 /48), both are bounded maps.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::dsht::hints::Hint;
use crate::time::Instant;

/// A client's network prefix: IPv4 /24 or IPv6 /48.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prefix {
    /// The top 24 bits of an IPv4 address.
    V4(u32),
    /// The top 48 bits of an IPv6 address.
    V6(u64),
}

impl Prefix {
    /// The prefix `ip` is in.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self::V4(u32::from(a) >> 8),
            IpAddr::V6(a) => Self::V6((u128::from(a) >> 80) as u64),
        }
    }
}

/// What is known of one prefix's RTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rtt {
    /// A probe was asked for and has not come back.
    Pending,
    /// The probe measured this.
    Measured(Duration),
    /// The probe got nothing back.
    Unmeasurable,
}

/// One prefix's entry.
#[derive(Clone, Debug)]
struct RttEntry {
    rtt: Rtt,
    /// When the last probe was asked for: at most one per `ttl`.
    probed_at: Instant,
    /// Nodes the DSHT's hints name as near the prefix; `None` until a hint
    /// lookup came back.
    near: Option<Vec<Hint>>,
    /// A hint lookup was asked for and has not come back.
    looking: bool,
}

/// Resolver RTTs and the nodes hints name near them, cached per prefix,
/// and the probes still to send.
#[derive(Debug)]
pub struct ResolverRtts {
    entries: BTreeMap<Prefix, RttEntry>,
    queue: VecDeque<IpAddr>,
    ttl: Duration,
    cap: usize,
    queue_cap: usize,
    /// Probes not asked for because the table or the queue was full.
    pub dropped: u64,
}

impl ResolverRtts {
    /// A cache keeping results for `ttl`, for at most `cap` prefixes.
    pub fn new(ttl: Duration, cap: usize, queue_cap: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            queue: VecDeque::new(),
            ttl,
            cap: cap.max(1),
            queue_cap: queue_cap.max(1),
            dropped: 0,
        }
    }

    /// What is known of `ip`'s prefix's RTT. Asks for a probe when the
    /// prefix has not been probed within `ttl` (answering `Unmeasurable`
    /// when no probe can be asked for): a prefix is never probed more
    /// often than that, however many queries come from it.
    pub fn lookup(&mut self, now: Instant, ip: IpAddr) -> Rtt {
        let p = Prefix::of(ip);
        if let Some(e) = self.entries.get(&p)
            && now.saturating_duration_since(e.probed_at) < self.ttl
        {
            return e.rtt;
        }
        if self.queue.len() >= self.queue_cap {
            self.dropped += 1;
            return Rtt::Unmeasurable;
        }
        if !self.entries.contains_key(&p) && self.entries.len() >= self.cap {
            let ttl = self.ttl;
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.probed_at) < ttl);
            if self.entries.len() >= self.cap {
                self.dropped += 1;
                return Rtt::Unmeasurable;
            }
        }
        self.entries.insert(
            p,
            RttEntry {
                rtt: Rtt::Pending,
                probed_at: now,
                near: None,
                looking: false,
            },
        );
        self.queue.push_back(ip);
        Rtt::Pending
    }

    /// What is known of `ip`'s prefix, in one look-up: its RTT (asking for
    /// a probe as [`Self::lookup`] does), and whether all is known (the
    /// RTT is in and no hint lookup is outstanding).
    pub fn view(&mut self, now: Instant, ip: IpAddr) -> (Rtt, bool) {
        let rtt = self.lookup(now, ip);
        let ready = rtt != Rtt::Pending
            && self
                .entries
                .get(&Prefix::of(ip))
                .is_none_or(|e| e.near.is_some() || !e.looking);
        (rtt, ready)
    }

    /// The next address to probe.
    pub fn poll_probe(&mut self) -> Option<IpAddr> {
        self.queue.pop_front()
    }

    /// A probe's outcome: the RTT, or `None` when nothing came back.
    pub fn record(&mut self, target: IpAddr, rtt: Option<Duration>) {
        if let Some(e) = self.entries.get_mut(&Prefix::of(target)) {
            e.rtt = match (e.rtt, rtt) {
                // Several probes of one prefix: keep the nearest host's.
                (Rtt::Measured(a), Some(b)) => Rtt::Measured(a.min(b)),
                (_, Some(b)) => Rtt::Measured(b),
                (Rtt::Measured(a), None) => Rtt::Measured(a),
                (_, None) => Rtt::Unmeasurable,
            };
        }
    }

    /// The RTT last measured for `ip`'s prefix, however old; asks for no
    /// probe.
    pub fn measured(&self, ip: IpAddr) -> Option<Duration> {
        match self.entries.get(&Prefix::of(ip))?.rtt {
            Rtt::Measured(d) => Some(d),
            Rtt::Pending | Rtt::Unmeasurable => None,
        }
    }

    /// The nodes hints name near `ip`'s prefix, once looked up.
    pub fn near(&self, ip: IpAddr) -> Option<&[Hint]> {
        self.entries
            .get(&Prefix::of(ip))
            .and_then(|e| e.near.as_deref())
    }

    /// Marks a hint lookup for `ip`'s prefix as asked for; false when one
    /// is running or done, or the prefix is not tracked.
    pub fn start_near(&mut self, ip: IpAddr) -> bool {
        match self.entries.get_mut(&Prefix::of(ip)) {
            Some(e) if !e.looking && e.near.is_none() => {
                e.looking = true;
                true
            }
            _ => false,
        }
    }

    /// Whether a hint lookup for `ip`'s prefix is asked for and not back.
    pub fn looking(&self, ip: IpAddr) -> bool {
        self.entries.get(&Prefix::of(ip)).is_some_and(|e| e.looking)
    }

    /// A hint lookup's outcome for `ip`'s prefix (empty when it failed).
    pub fn set_near(&mut self, ip: IpAddr, nodes: Vec<Hint>) {
        if let Some(e) = self.entries.get_mut(&Prefix::of(ip)) {
            e.looking = false;
            e.near = Some(nodes);
        }
    }

    /// Prefixes tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no prefix is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Response-rate limiting per client prefix: a token bucket of `rate`
/// responses per second (burst `rate`). Over the limit, every `slip`-th
/// response goes out as an empty truncated answer (a real client retries
/// over TCP, where no limit applies and spoofing is impossible) and the
/// rest are dropped, so the server never amplifies a spoofed flood.
#[derive(Debug)]
pub struct RateLimit {
    buckets: BTreeMap<Prefix, Bucket>,
    rate: u32,
    slip: u32,
    cap: usize,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    over: u32,
}

/// The verdict on one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Send,
    /// Send an empty truncated answer instead.
    Slip,
    /// Send nothing.
    Drop,
}

impl RateLimit {
    /// `rate` responses per second per prefix (0: no limit), every
    /// `slip`-th limited one slipped (0: none), at most `cap` prefixes.
    pub fn new(rate: u32, slip: u32, cap: usize) -> Self {
        Self {
            buckets: BTreeMap::new(),
            rate,
            slip,
            cap: cap.max(1),
        }
    }

    /// The verdict on one more response to `ip` at `now`.
    pub fn check(&mut self, now: Instant, ip: IpAddr) -> Verdict {
        if self.rate == 0 {
            return Verdict::Send;
        }
        let rate = f64::from(self.rate);
        let p = Prefix::of(ip);
        if !self.buckets.contains_key(&p) && self.buckets.len() >= self.cap {
            // Forget the prefixes whose buckets have refilled: they are
            // the same as new ones.
            let full = Duration::from_secs(1);
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.at) < full);
            if self.buckets.len() >= self.cap {
                // Too many active prefixes to track: answer small only.
                return Verdict::Slip;
            }
        }
        let b = self.buckets.entry(p).or_insert(Bucket {
            tokens: rate,
            at: now,
            over: 0,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.over = 0;
            return Verdict::Send;
        }
        b.over = b.over.wrapping_add(1);
        if self.slip > 0 && b.over.is_multiple_of(self.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_duration(Duration::from_millis(ms))
    }

    #[test]
    fn one_probe_per_prefix_per_period() {
        let mut r = ResolverRtts::new(Duration::from_secs(600), 100, 10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(r.lookup(at(0), a), Rtt::Pending);
        assert_eq!(r.lookup(at(10), b), Rtt::Pending);
        assert_eq!(r.poll_probe(), Some(a));
        assert_eq!(r.poll_probe(), None, "one /24, one probe");
        r.record(a, Some(Duration::from_millis(12)));
        assert_eq!(
            r.lookup(at(20), b),
            Rtt::Measured(Duration::from_millis(12))
        );
        // Hints are looked up once per prefix.
        assert!(r.start_near(b));
        assert!(!r.start_near(a), "one lookup per prefix");
        r.set_near(a, Vec::new());
        assert_eq!(r.near(b), Some(&[][..]));
        // After the period the prefix is probed again; the old value is
        // not used meanwhile.
        assert_eq!(r.lookup(at(600_001), b), Rtt::Pending);
        assert_eq!(r.near(b), None);
        assert_eq!(r.poll_probe(), Some(b));
        r.record(b, None);
        assert_eq!(r.lookup(at(600_002), b), Rtt::Unmeasurable);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut r = ResolverRtts::new(Duration::from_secs(600), 3, 100);
        for i in 0..10u8 {
            r.lookup(at(0), IpAddr::from([10, i, 0, 1]));
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.dropped, 7);
        // Once entries expire, new prefixes fit again.
        r.lookup(at(600_000), IpAddr::from([10, 99, 0, 1]));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn rate_limit_sends_slips_and_drops() {
        let mut l = RateLimit::new(5, 2, 100);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let v: Vec<Verdict> = (0..9).map(|_| l.check(at(0), ip)).collect();
        assert_eq!(&v[..5], &[Verdict::Send; 5]);
        assert_eq!(
            &v[5..],
            &[Verdict::Drop, Verdict::Slip, Verdict::Drop, Verdict::Slip]
        );
        // Another prefix has its own bucket.
        assert_eq!(
            l.check(at(0), "198.51.101.7".parse().unwrap()),
            Verdict::Send
        );
        // A second later the bucket has refilled.
        assert_eq!(l.check(at(1000), ip), Verdict::Send);
        assert_eq!(RateLimit::new(0, 2, 1).check(at(0), ip), Verdict::Send);
    }
}
