//! The DNS redirector (spec §6): an authoritative server that sends
//! unmodified resolvers to Coral HTTP proxies near them, and hands them
//! nameservers near them so their later queries stay local.
//!
//! # Names
//!
//! With the default zone `nyucd.net` and three levels, any name ending in
//! `http.L2.L1.L0.nyucd.net` names a Coralized host, and the alias zone
//! `nyud.net` means that same suffix (`www.x.com.nyud.net` ≡
//! `www.x.com.http.L2.L1.L0.nyucd.net`). We are authoritative for both,
//! so names under the alias are answered directly; the alias apex also
//! serves a `DNAME` to the long suffix for resolvers that ask for it. SOA
//! and NS are served at each apex and at the level zones `L0.nyucd.net`,
//! `L1.L0.nyucd.net` and `L2.L1.L0.nyucd.net`. A Coral DNS node's
//! nameserver host name is `ns-<first 16 hex digits of its id>.nyucd.net`.
//!
//! # Answers for a Coralized name (spec §6.2–6.4)
//!
//! The query's source address stands for the client. Its RTT (cached per
//! /24 or /48, see [`limits::ResolverRtts`]) picks the tightest level whose
//! diameter it is under; the answer holds A (or AAAA) records of live
//! proxies: first those the DSHT's hints name near the resolver, ranked by
//! their estimated RTT to it ([`crate::dsht::hints`]; this node among them
//! by the RTT it measured), then those of this node's cluster at that
//! level chosen by [`Node::nodes`] for the resolver (its prefix first,
//! then measured RTT). The authority section holds NS records, with glue,
//! of DNS nodes for the level zone of that level: those the hints estimate
//! nearer the resolver than this node, when there are any, else the
//! hinted ones and this node's cluster's. A far resolver gets
//! `L0.nyucd.net`'s servers, a close one `L2.L1.L0.nyucd.net`'s, which it
//! then prefers as the most specific zone it knows ("once local, stay
//! local").
//!
//! **A resolver not yet measured** waits: its first query is held until
//! the probe comes back, the DSHT's hints have named nodes near it and the
//! proxies among them this node has not heard from have answered a ping
//! (spec §6.3), at most `hold_budget` (500 ms, open question 13), then
//! answered with what is known. An answer
//! made before all was known names this server as the level zone's only
//! nameserver, for `partial_ns_ttl`, so the resolver's next query comes
//! back here, where the probe and the hint lookup have finished by then;
//! the answer after that hands it on to nameservers near it with the long
//! TTL. Holding costs a near resolver one probe RTT on its first query;
//! answering at once would have every new server meet every resolver
//! unmeasured, and a far resolver would never be sent nearer.

//! # Hygiene
//!
//! Answers are authoritative (AA), never recursive (RA clear); names
//! outside our zones get REFUSED; missing names NXDOMAIN, missing types
//! NODATA, both with the zone's SOA; malformed queries FORMERR, other
//! opcodes NOTIMP; responses to responses are never sent. A UDP answer
//! never exceeds what the query allows (512 bytes, or its EDNS(0) size up
//! to ours) and is sent truncated when it does not fit; TCP carries up to
//! 64 KiB. UDP answers are rate-limited per client prefix
//! ([`limits::RateLimit`]).

pub mod limits;
pub mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::contact::{Contact, Level, Services};
use crate::dsht::hints::{Hint, Router};
use crate::id::Id;
use crate::node::Node;
use crate::time::Instant;

use self::limits::{Prefix, RateLimit, ResolverRtts, Rtt, Verdict};
use self::wire::{Data, Decoded, Owner, Qtype, Query, Rcode, Response, Rr};

/// Configuration of the redirector.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The long zone (spec §6.1: `nyucd.net`).
    pub zone: String,
    /// The short alias meaning `http.L2.L1.L0.<zone>` (spec §6.1:
    /// `nyud.net`); `None` serves the long form only.
    pub alias: Option<String>,
    /// The service label before the level labels (`http`).
    pub service_label: String,
    /// A records per answer (open question 11: two live proxies, so a
    /// browser has a second address to try).
    pub answer_count: usize,
    /// TTL of A/AAAA records (open question 11: 30 s, for fast failover).
    pub answer_ttl: Duration,
    /// NS records per answer (open question 12: 3).
    pub ns_count: usize,
    /// TTL of NS records and their glue (open question 12: 6 h, long
    /// enough to lock a resolver onto near servers).
    pub ns_ttl: Duration,
    /// Negative-caching TTL (the SOA minimum, RFC 2308): short, because
    /// our names come and go with the network.
    pub negative_ttl: Duration,
    /// The responsible mailbox in the SOA, as a name.
    pub hostmaster: String,
    /// How long a resolver RTT is cached per prefix, and the least time
    /// between two probes of a prefix (open question 13: 10 min).
    pub rtt_ttl: Duration,
    /// Most prefixes with a cached RTT.
    pub max_prefixes: usize,
    /// Most probes waiting for the adapter.
    pub max_pending_probes: usize,
    /// UDP responses per second per client prefix (0: unlimited). Over it,
    /// responses are dropped, every `rrl_slip`-th sent as an empty
    /// truncated answer.
    pub rrl_rate: u32,
    /// See `rrl_rate` (0: never slip; NSD and BIND use 2).
    pub rrl_slip: u32,
    /// Most prefixes the rate limiter tracks.
    pub rrl_max_prefixes: usize,
    /// Our EDNS(0) UDP payload size: 1232 bytes, the DNS flag day 2020
    /// value that avoids IP fragmentation on common paths.
    pub udp_payload: u16,
    /// How long the first query from a resolver not yet measured may wait
    /// for its probe (and, for a resolver not near us, for the hint lookup
    /// of nodes near it) before it is answered with what is known (open
    /// question 13: 500 ms). 0 answers at once.
    pub hold_budget: Duration,
    /// Most queries waiting at once; more are answered at once.
    pub max_held: usize,
    /// Nodes asked of a hint lookup.
    pub hint_count: usize,
    /// TTL of the NS record of an answer made before all was known of the
    /// resolver: that record names this server alone, so the resolver's
    /// next query comes back here, where the probe and the hint lookup
    /// have finished by then. Ten minutes: longer than the gaps between a
    /// browsing user's lookups, no longer than the RTT is cached.
    pub partial_ns_ttl: Duration,
    /// How long the records chosen for one resolver prefix at one level
    /// are reused (0: chosen anew for every query). The level itself is
    /// selected for every query; what is reused is the choice of proxies
    /// and nameservers for it, which changes on the scale of the routing
    /// tables' refresh, not per query.
    pub answer_cache: Duration,
    /// Most answers kept in that cache.
    pub answer_cache_entries: usize,
    /// How long a liveness check of a proxy counts (spec §6.3: a proxy is
    /// named only if this node heard from it recently, itself or by a
    /// check; [`DnsServer::poll_check`]).
    pub checked_ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            zone: "nyucd.net".into(),
            alias: Some("nyud.net".into()),
            service_label: "http".into(),
            answer_count: 2,
            answer_ttl: Duration::from_secs(30),
            ns_count: 3,
            ns_ttl: Duration::from_secs(6 * 3600),
            negative_ttl: Duration::from_secs(30),
            hostmaster: "hostmaster.nyucd.net".into(),
            rtt_ttl: Duration::from_secs(600),
            max_prefixes: 65_536,
            max_pending_probes: 1024,
            // NSD's default rrl-ratelimit: far above what one resolver
            // sends, low enough that a spoofed flood is not amplified.
            rrl_rate: 200,
            rrl_slip: 2,
            rrl_max_prefixes: 65_536,
            udp_payload: 1232,
            hold_budget: Duration::from_millis(500),
            max_held: 1024,
            hint_count: 8,
            partial_ns_ttl: Duration::from_secs(600),
            answer_cache: Duration::from_secs(1),
            answer_cache_entries: 4096,
            checked_ttl: Duration::from_secs(300),
        }
    }
}

/// A configuration the redirector cannot serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsConfigError {
    /// A zone, alias or label is not a valid DNS name.
    #[error("not a valid DNS name: {0:?}")]
    BadName(String),
    /// The alias lies inside the zone or the other way round.
    #[error("the alias {alias:?} and the zone {zone:?} overlap")]
    Overlap {
        /// The zone.
        zone: String,
        /// The alias.
        alias: String,
    },
    /// No level to serve.
    #[error("the node has no cluster levels")]
    NoLevels,
}

/// How a query arrived: it decides the size limit and rate limiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// A length-prefixed TCP message.
    Tcp,
}

/// What [`DnsServer::handle_query`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The response is in the output buffer: send it.
    Reply,
    /// The query waits for a probe or a hint lookup; its response comes
    /// out of [`DnsServer::poll_answer`] with the same token.
    Held,
    /// Nothing to send.
    Nothing,
}

/// A response to a held query, for the adapter to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The client.
    pub to: SocketAddr,
    /// How the query came.
    pub transport: Transport,
    /// The token the adapter gave with the query.
    pub token: u64,
    /// The response.
    pub bytes: Vec<u8>,
}

/// A hint lookup for the adapter to start with [`Node::find_hinted`] at
/// `level` and report with [`DnsServer::handle_lookup_result`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintLookup {
    /// The resolver.
    pub target: IpAddr,
    /// The last hops toward it, nearest it first, as the probe found them,
    /// each with the resolver's estimated RTT to it: the probe's RTT to the
    /// resolver less its RTT to the hop, as [`Node::find_hinted`] takes
    /// them.
    pub routers: Vec<Router>,
    /// The level whose hints to read (0: the whole network).
    pub level: Level,
    /// How many nodes to ask for.
    pub count: usize,
}

/// What an answer to a Coralized name depends on besides the node's
/// tables: the resolver's prefix, the level selected for it, whether all
/// was known of it, and the address families asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CacheKey {
    prefix: Prefix,
    level: Level,
    ready: bool,
    qtype: u16,
}

/// A cached answer and the counters it moved when it was made, moved again
/// whenever it is reused.
#[derive(Debug)]
struct Cached {
    until: Instant,
    prepared: wire::Prepared,
    counted: Counted,
    /// The answer encoded behind questions of a few lengths, made as
    /// queries of those lengths come (at most [`TEMPLATES`]).
    templates: Vec<wire::Template>,
}

/// Most question lengths one cached answer keeps encoded.
const TEMPLATES: usize = 16;

/// The counters one answer to a Coralized name moves.
#[derive(Clone, Copy, Debug, Default)]
struct Counted {
    answered_at_level: [u64; 3],
    fallback_answers: u64,
    no_proxy: u64,
    nodata: u64,
}

impl Counted {
    fn between(before: &DnsStats, after: &DnsStats) -> Self {
        let mut c = Self {
            fallback_answers: after.fallback_answers - before.fallback_answers,
            no_proxy: after.no_proxy - before.no_proxy,
            nodata: after.nodata - before.nodata,
            ..Self::default()
        };
        for (i, n) in c.answered_at_level.iter_mut().enumerate() {
            *n = after.answered_at_level[i] - before.answered_at_level[i];
        }
        c
    }

    fn add_to(&self, s: &mut DnsStats) {
        for (i, n) in self.answered_at_level.iter().enumerate() {
            s.answered_at_level[i] += n;
        }
        s.fallback_answers += self.fallback_answers;
        s.no_proxy += self.no_proxy;
        s.nodata += self.nodata;
    }
}

/// A query waiting for what is known of its resolver.
#[derive(Debug)]
struct Held {
    deadline: Instant,
    from: SocketAddr,
    transport: Transport,
    token: u64,
    bytes: Vec<u8>,
}

/// Counters of the redirector, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Messages handed in.
    pub queries: u64,
    /// Responses sent (all codes).
    pub responses: u64,
    /// Answers naming proxies, per level they were chosen at.
    pub answered_at_level: [u64; 3],
    /// Answers for which no recently heard proxy was known at any level,
    /// so any known proxy was named.
    pub fallback_answers: u64,
    /// Coralized names with no proxy known at all (NODATA sent).
    pub no_proxy: u64,
    /// NXDOMAIN responses.
    pub nxdomain: u64,
    /// NODATA responses (name exists, type does not).
    pub nodata: u64,
    /// REFUSED responses (outside our zones, or not class IN).
    pub refused: u64,
    /// FORMERR responses.
    pub formerr: u64,
    /// NOTIMP responses.
    pub notimp: u64,
    /// Messages dropped unanswered: too short, or responses.
    pub ignored: u64,
    /// UDP responses sent truncated because they did not fit.
    pub truncated: u64,
    /// UDP responses dropped by the rate limit.
    pub rate_limited: u64,
    /// UDP responses replaced by an empty truncated one by the rate limit.
    pub slipped: u64,
    /// Resolver probes asked of the adapter.
    pub probes: u64,
    /// Probe results reported.
    pub probe_results: u64,
    /// Probes not asked for because a table was full.
    pub probes_dropped: u64,
    /// Queries that waited for a probe or a hint lookup.
    pub held: u64,
    /// Held queries answered at their deadline, before all was known.
    pub held_expired: u64,
    /// Hint lookups asked for.
    pub hint_lookups: u64,
    /// Liveness checks of hinted proxies asked of the adapter.
    pub checks: u64,
    /// Of those, proxies that did not answer.
    pub checks_failed: u64,
    /// Answers whose records came from the answer cache.
    pub cached_answers: u64,
    /// Of those, answers sent as a cached encoding behind the query's own
    /// question (the rest were encoded from the cached records).
    pub templated_answers: u64,
}

impl DnsStats {
    /// Every counter as (name, what it counts, value), for metrics.
    pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let [l0, l1, l2] = self.answered_at_level;
        vec![
            ("queries", "DNS messages received.", self.queries),
            ("responses", "DNS responses sent.", self.responses),
            (
                "answers_level_0",
                "Answers naming proxies of the level-0 cluster.",
                l0,
            ),
            (
                "answers_level_1",
                "Answers naming proxies of the level-1 cluster.",
                l1,
            ),
            (
                "answers_level_2",
                "Answers naming proxies of the level-2 cluster.",
                l2,
            ),
            (
                "fallback_answers",
                "Answers naming any known proxy: none heard from recently.",
                self.fallback_answers,
            ),
            (
                "no_proxy",
                "Coralized names answered with no proxy known.",
                self.no_proxy,
            ),
            ("nxdomain", "NXDOMAIN responses.", self.nxdomain),
            ("nodata", "NODATA responses.", self.nodata),
            (
                "refused",
                "REFUSED responses (outside our zones).",
                self.refused,
            ),
            (
                "formerr",
                "FORMERR responses (malformed queries).",
                self.formerr,
            ),
            (
                "notimp",
                "NOTIMP responses (opcodes other than QUERY).",
                self.notimp,
            ),
            (
                "ignored",
                "Messages dropped unanswered (runts, responses).",
                self.ignored,
            ),
            (
                "truncated",
                "UDP responses sent truncated (too large).",
                self.truncated,
            ),
            (
                "rate_limited",
                "UDP responses dropped by the rate limit.",
                self.rate_limited,
            ),
            (
                "slipped",
                "UDP responses sent empty and truncated by the rate limit.",
                self.slipped,
            ),
            ("probes", "Resolver RTT probes asked for.", self.probes),
            (
                "probe_results",
                "Resolver RTT probe results.",
                self.probe_results,
            ),
            (
                "probes_dropped",
                "Resolver probes not asked for: a table was full.",
                self.probes_dropped,
            ),
            (
                "held",
                "Queries that waited for a probe or a hint lookup.",
                self.held,
            ),
            (
                "held_expired",
                "Held queries answered at the deadline, before all was known.",
                self.held_expired,
            ),
            (
                "hint_lookups",
                "Lookups of nodes that hints name near a resolver.",
                self.hint_lookups,
            ),
            (
                "liveness_checks",
                "Liveness checks of hinted proxies not heard from recently.",
                self.checks,
            ),
            (
                "liveness_checks_failed",
                "Liveness checks the proxy did not answer.",
                self.checks_failed,
            ),
            (
                "cached_answers",
                "Answers whose records were reused from the answer cache.",
                self.cached_answers,
            ),
            (
                "templated_answers",
                "Cached answers sent as a ready encoding behind the query's question.",
                self.templated_answers,
            ),
        ]
    }
}

/// The zone a name falls in, after its labels are matched.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// The apex of the long zone (`nyucd.net`).
    ZoneApex,
    /// The apex of the alias (`nyud.net`).
    AliasApex,
    /// The apex of a level zone (`L1.L0.nyucd.net`).
    LevelApex(Level),
    /// A Coralized host name (the labels before the suffix, for logging).
    Coralized,
    /// A nameserver host name `ns-<hex>`.
    Nameserver(String),
    /// An empty non-terminal: an ancestor of our names with no data.
    EmptyNonTerminal(Level),
    /// Inside our zone (the apex of the zone it is in), but no such name.
    Missing(Apex),
    /// Not ours.
    Outside,
}

/// An apex, for the SOA of negative answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Apex {
    Zone,
    Alias,
    Level(Level),
}

/// Strips `suffix` (lowercase labels) from the end of `labels`.
fn strip<'a, L: AsRef<[u8]>>(labels: &'a [L], suffix: &[String]) -> Option<&'a [L]> {
    let n = labels.len().checked_sub(suffix.len())?;
    labels[n..]
        .iter()
        .zip(suffix)
        .all(|(l, s)| l.as_ref().eq_ignore_ascii_case(s.as_bytes()))
        .then_some(&labels[..n])
}

fn label_is(label: &[u8], lower: &str) -> bool {
    label.eq_ignore_ascii_case(lower.as_bytes())
}

fn split_labels(name: &str) -> Vec<String> {
    name.trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The authoritative DNS server's decisions, driven by an adapter: bytes in
/// through [`Self::handle_query`], probes out through
/// [`Self::poll_probe`], probe results in through
/// [`Self::handle_probe_result`]. It reads the [`Node`] for its contacts and
/// clusters and never changes it.
#[derive(Debug)]
pub struct DnsServer {
    config: DnsConfig,
    zone: Vec<String>,
    alias: Option<Vec<String>>,
    /// `l0`, `l1`, ... (index = level), lowercase.
    level_labels: Vec<String>,
    /// The service label, lowercase.
    service_label: String,
    levels: usize,
    rtts: ResolverRtts,
    rrl: RateLimit,
    stats: DnsStats,
    held: Vec<Held>,
    answers: VecDeque<Answer>,
    lookups: VecDeque<HintLookup>,
    cache: BTreeMap<CacheKey, Cached>,
    /// Liveness checks to start.
    checks: VecDeque<Contact>,
    /// Checks outstanding, and the resolver prefixes waiting for each.
    checking: BTreeMap<Id, Vec<Prefix>>,
    /// Checks outstanding per waiting prefix.
    waiting: BTreeMap<Prefix, usize>,
    /// When each checked proxy last answered.
    verified: BTreeMap<Id, Instant>,
}

impl DnsServer {
    /// A redirector for a node with `levels` cluster levels.
    pub fn new(config: DnsConfig, levels: usize) -> Result<Self, DnsConfigError> {
        if levels == 0 {
            return Err(DnsConfigError::NoLevels);
        }
        for n in [&config.zone, &config.hostmaster, &config.service_label]
            .into_iter()
            .chain(config.alias.as_ref())
        {
            if n.is_empty() || !wire::valid_name(n) {
                return Err(DnsConfigError::BadName(n.clone()));
            }
        }
        let zone = split_labels(&config.zone);
        let alias = config.alias.as_deref().map(split_labels);
        if let Some(a) = &alias
            && (strip(a, &zone).is_some() || strip(&zone, a).is_some())
        {
            return Err(DnsConfigError::Overlap {
                zone: config.zone.clone(),
                alias: config.alias.clone().unwrap_or_default(),
            });
        }
        let rtts = ResolverRtts::new(
            config.rtt_ttl,
            config.max_prefixes,
            config.max_pending_probes,
        );
        let rrl = RateLimit::new(config.rrl_rate, config.rrl_slip, config.rrl_max_prefixes);
        Ok(Self {
            level_labels: (0..levels).map(|l| format!("l{l}")).collect(),
            service_label: config.service_label.to_ascii_lowercase(),
            levels,
            zone,
            alias,
            config,
            rtts,
            rrl,
            stats: DnsStats::default(),
            held: Vec::new(),
            answers: VecDeque::new(),
            lookups: VecDeque::new(),
            cache: BTreeMap::new(),
            checks: VecDeque::new(),
            checking: BTreeMap::new(),
            waiting: BTreeMap::new(),
            verified: BTreeMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> DnsStats {
        DnsStats {
            probes_dropped: self.rtts.dropped,
            ..self.stats
        }
    }

    /// The name of level `level`'s zone: `L0.nyucd.net`, `L1.L0.nyucd.net`.
    pub fn level_zone(&self, level: Level) -> String {
        let mut s = String::new();
        for l in (0..=usize::from(level).min(self.levels - 1)).rev() {
            s.push('L');
            s.push_str(&l.to_string());
            s.push('.');
        }
        s.push_str(&self.config.zone);
        s
    }

    /// The suffix naming Coralized hosts: `http.L2.L1.L0.nyucd.net`.
    pub fn coral_suffix(&self) -> String {
        format!(
            "{}.{}",
            self.config.service_label,
            self.level_zone((self.levels - 1) as Level)
        )
    }

    /// The nameserver host name of a node: `ns-<16 hex>.nyucd.net`.
    pub fn nameserver_name(&self, c: &Contact) -> String {
        format!("ns-{}.{}", ns_label(c), self.config.zone)
    }

    /// The next resolver to probe: the adapter measures its RTT (for
    /// example the time a UDP DNS query to its port 53, or a TCP connect
    /// to it, takes to come back) and reports it with
    /// [`Self::handle_probe_result`], `None` when nothing came back.
    #[must_use]
    pub fn poll_probe(&mut self) -> Option<IpAddr> {
        let p = self.rtts.poll_probe();
        if p.is_some() {
            self.stats.probes += 1;
        }
        p
    }

    /// The outcome of a probe asked for by [`Self::poll_probe`]: the RTT
    /// (`None` when nothing came back) and the last hops toward the target
    /// when the probe traced them (nearest the target first, each with this
    /// node's RTT to it when the trace timed it; empty when it did not).
    /// Answers held queries that now have all they wait for.
    pub fn handle_probe_result(
        &mut self,
        now: Instant,
        node: &Node,
        target: IpAddr,
        rtt: Option<Duration>,
        routers: &[Router],
    ) {
        self.stats.probe_results += 1;
        self.rtts.record(target, rtt);
        // Ask the hints which nodes are near the resolver (spec §5), in the
        // tightest cluster that holds every node nearer the resolver than
        // we are: those are within twice its RTT of us. For a resolver
        // 5 ms away that is our level-2 cluster, where the lookup is
        // quick; for one 15 ms away our level-1 cluster (its nearest nodes
        // may be 30 ms from us, outside our level-2 one); for a far one
        // the whole network, to hand it on to servers near it.
        let level = self.level_for(node, rtt.map(|r| r * 2));
        if self.config.hint_count > 0 && self.rtts.start_near(target) {
            if self.lookups.len() < self.config.max_pending_probes {
                self.stats.hint_lookups += 1;
                // The resolver is as far beyond a hop on the way to it as
                // the trace took to get there past that hop.
                let routers = routers
                    .iter()
                    .map(|r| Router {
                        addr: r.addr,
                        rtt: rtt.zip(r.rtt).map(|(all, hop)| all.saturating_sub(hop)),
                    })
                    .collect();
                self.lookups.push_back(HintLookup {
                    target,
                    routers,
                    level,
                    count: self.config.hint_count,
                });
            } else {
                self.rtts.set_near(target, Vec::new());
            }
        }
        self.release(now, node, Some(Prefix::of(target)));
    }

    /// The next hint lookup to start.
    #[must_use]
    pub fn poll_lookup(&mut self) -> Option<HintLookup> {
        self.lookups.pop_front()
    }

    /// The nodes a [`HintLookup`] found, best first (empty when it
    /// failed). This node, whose RTT to the resolver the probe measured,
    /// takes its place among them by that RTT.
    pub fn handle_lookup_result(
        &mut self,
        now: Instant,
        node: &Node,
        target: IpAddr,
        mut hints: Vec<Hint>,
    ) {
        if let Some(rtt) = self.rtts.measured(target) {
            let me = node.contact();
            hints.retain(|h| h.contact.id != me.id);
            let at = hints
                .iter()
                .position(|h| h.rtt.is_none_or(|r| r > rtt))
                .unwrap_or(hints.len());
            hints.insert(
                at,
                Hint {
                    contact: me,
                    rtt: Some(rtt),
                },
            );
        }
        let prefix = Prefix::of(target);
        // The proxies the answer would name first that this node has not
        // heard from itself are checked first (spec §6.3: a dead proxy is
        // what browsers handle worst); the resolver's queries wait for the
        // checks as for the lookup.
        let fresh = fresh_nodes(now, node, Services::HTTP);
        let unheard: Vec<Contact> = hints
            .iter()
            .map(|h| h.contact)
            .filter(|c| {
                c.services.contains(Services::HTTP)
                    && (!c.services.contains(Services::LOCAL_ONLY)
                        || Prefix::of(c.addr.ip()) == prefix)
            })
            .take(self.config.answer_count)
            .filter(|c| !fresh.iter().any(|f| f.id == c.id) && !self.is_verified(now, &c.id))
            .collect();
        self.rtts.set_near(target, hints);
        for c in unheard {
            if !self.checking.contains_key(&c.id) {
                if self.checking.len() >= self.config.max_pending_probes {
                    continue;
                }
                self.stats.checks += 1;
                self.checks.push_back(c);
            }
            let waiters = self.checking.entry(c.id).or_default();
            if !waiters.contains(&prefix) {
                waiters.push(prefix);
                *self.waiting.entry(prefix).or_default() += 1;
            }
        }
        self.release(now, node, Some(prefix));
    }

    /// The next proxy to check: the adapter pings it
    /// ([`Node::check_live`]) and MUST report every check with
    /// [`Self::handle_check_result`] (alive `false` when it could not
    /// start one): the resolver's later queries wait for it.
    #[must_use]
    pub fn poll_check(&mut self) -> Option<Contact> {
        self.checks.pop_front()
    }

    /// Whether a check waits to be taken by [`Self::poll_check`] (for an
    /// adapter that cannot take it at once).
    pub fn has_checks(&self) -> bool {
        !self.checks.is_empty()
    }

    /// The outcome of a check asked for by [`Self::poll_check`]. Answers
    /// held queries that now have all they wait for.
    pub fn handle_check_result(
        &mut self,
        now: Instant,
        node: &Node,
        contact: Contact,
        alive: bool,
    ) {
        if alive {
            if self.verified.len() >= self.config.max_prefixes {
                let ttl = self.config.checked_ttl;
                self.verified
                    .retain(|_, at| now.saturating_duration_since(*at) < ttl);
            }
            if self.verified.len() < self.config.max_prefixes {
                self.verified.insert(contact.id, now);
            }
        } else {
            self.stats.checks_failed += 1;
            self.verified.remove(&contact.id);
        }
        for p in self.checking.remove(&contact.id).unwrap_or_default() {
            if let Some(n) = self.waiting.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    self.waiting.remove(&p);
                }
            }
            self.release(now, node, Some(p));
        }
    }

    /// Whether a check showed `id` alive within `checked_ttl`.
    fn is_verified(&self, now: Instant, id: &Id) -> bool {
        self.verified
            .get(id)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.config.checked_ttl)
    }

    /// Answers the held queries whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant, node: &Node) {
        self.release(now, node, None);
    }

    /// When [`Self::handle_timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.deadline).min()
    }

    /// The next response to a held query.
    #[must_use]
    pub fn poll_answer(&mut self) -> Option<Answer> {
        self.answers.pop_front()
    }

    /// The level a resolver at `rtt` is answered at (spec §6.2): the
    /// tightest level whose diameter `rtt` is under; level 0 when unknown.
    pub fn level_for(&self, node: &Node, rtt: Option<Duration>) -> Level {
        let Some(rtt) = rtt else { return 0 };
        node.levels()
            .iter()
            .enumerate()
            .take(self.levels)
            .filter(|(_, l)| l.diameter.is_none_or(|d| rtt < d))
            .map(|(i, _)| i as Level)
            .max()
            .unwrap_or(0)
    }

    /// Whether all that an answer for `resolver` could use is known: its
    /// RTT, and the nodes hints name near it (unless no lookup was asked
    /// for). Asks for a probe when none was.
    fn ready(&mut self, now: Instant, resolver: IpAddr) -> bool {
        self.view(now, resolver).1
    }

    /// The resolver's RTT as known, and whether all is known of it: the
    /// RTT, the hint lookup and the checks of the proxies it named.
    fn view(&mut self, now: Instant, resolver: IpAddr) -> (Rtt, bool) {
        let (rtt, ready) = self.rtts.view(now, resolver);
        (
            rtt,
            ready && !self.waiting.contains_key(&Prefix::of(resolver)),
        )
    }

    /// Answers held queries: those of `prefix` that are ready, and every
    /// one whose deadline has passed.
    fn release(&mut self, now: Instant, node: &Node, prefix: Option<Prefix>) {
        let mut i = 0;
        while i < self.held.len() {
            let h = &self.held[i];
            let mine = prefix.is_some_and(|p| p == Prefix::of(h.from.ip()));
            let expired = h.deadline <= now;
            let from = h.from.ip();
            if !(expired || (mine && self.ready(now, from))) {
                i += 1;
                continue;
            }
            let h = self.held.swap_remove(i);
            if expired && !self.ready(now, h.from.ip()) {
                self.stats.held_expired += 1;
            }
            let mut out = Vec::new();
            if let Decoded::Query(q) = wire::decode(&h.bytes) {
                self.answer(
                    now,
                    node,
                    h.from,
                    h.transport,
                    (&q, &h.bytes),
                    Verdict::Send,
                    &mut out,
                );
                self.answers.push_back(Answer {
                    to: h.from,
                    transport: h.transport,
                    token: h.token,
                    bytes: out,
                });
            }
        }
    }

    /// The answer-cache key of `q` from `resolver`: for Coralized A, AAAA
    /// and ANY questions, when the cache is on. Selects the level.
    fn cache_key(
        &mut self,
        now: Instant,
        node: &Node,
        resolver: IpAddr,
        q: &Query,
    ) -> Option<CacheKey> {
        let qtype = match q.qtype() {
            Qtype::A => 1,
            Qtype::Aaaa => 28,
            Qtype::Any => 255,
            _ => return None,
        };
        if self.config.answer_cache.is_zero()
            || !q.class_in()
            || q.edns().is_some_and(|e| e.version > 0)
            || self.place(&q.labels()) != Place::Coralized
        {
            return None;
        }
        let (rtt, ready) = self.view(now, resolver);
        let rtt = match rtt {
            Rtt::Measured(d) => Some(d),
            Rtt::Pending | Rtt::Unmeasurable => None,
        };
        Some(CacheKey {
            prefix: Prefix::of(resolver),
            level: self.level_for(node, rtt),
            ready,
            qtype,
        })
    }

    /// Whether `q` should wait for what is known of its resolver.
    fn should_hold(&mut self, now: Instant, from: IpAddr, q: &Query) -> bool {
        !self.config.hold_budget.is_zero()
            && self.held.len() < self.config.max_held
            && q.class_in()
            && matches!(q.qtype(), Qtype::A | Qtype::Aaaa | Qtype::Any)
            && self.place(&q.labels()) == Place::Coralized
            && !self.ready(now, from)
    }

    /// Answers one DNS message from `from`, writing the response into
    /// `out`. A query from a resolver not measured yet may be held (up to
    /// `hold_budget`) and answered later through [`Self::poll_answer`],
    /// carrying `token` (the adapter's handle for the client, for example
    /// its TCP connection).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_query(
        &mut self,
        now: Instant,
        node: &Node,
        from: SocketAddr,
        transport: Transport,
        token: u64,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Handled {
        self.stats.queries += 1;
        let verdict = match transport {
            Transport::Udp => self.rrl.check(now, from.ip()),
            Transport::Tcp => Verdict::Send,
        };
        if verdict == Verdict::Drop {
            self.stats.rate_limited += 1;
            return Handled::Nothing;
        }
        let q = match wire::decode(bytes) {
            Decoded::Query(q) => q,
            Decoded::Malformed { id, opcode } => {
                self.stats.formerr += 1;
                self.stats.responses += 1;
                wire::encode_error(id, opcode, Rcode::FormErr, out);
                return Handled::Reply;
            }
            Decoded::NotImplemented { id, opcode } => {
                self.stats.notimp += 1;
                self.stats.responses += 1;
                wire::encode_error(id, opcode, Rcode::NotImp, out);
                return Handled::Reply;
            }
            Decoded::Ignore => {
                self.stats.ignored += 1;
                return Handled::Nothing;
            }
        };
        let key = (verdict == Verdict::Send)
            .then(|| self.cache_key(now, node, from.ip(), &q))
            .flatten();
        let hold = match key {
            Some(k) => !k.ready,
            // Not cacheable (the cache is off, say): judge it in full.
            None => verdict == Verdict::Send && self.should_hold(now, from.ip(), &q),
        };
        if hold && !self.config.hold_budget.is_zero() && self.held.len() < self.config.max_held {
            self.stats.held += 1;
            self.held.push(Held {
                deadline: now + self.config.hold_budget,
                from,
                transport,
                token,
                bytes: bytes.to_vec(),
            });
            return Handled::Held;
        }
        self.answer_with(now, node, from, transport, (&q, bytes), verdict, key, out);
        Handled::Reply
    }

    /// Encodes the response to `q` into `out`.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        now: Instant,
        node: &Node,
        from: SocketAddr,
        transport: Transport,
        (q, raw): (&Query, &[u8]),
        verdict: Verdict,
        out: &mut Vec<u8>,
    ) {
        let key = (verdict == Verdict::Send)
            .then(|| self.cache_key(now, node, from.ip(), q))
            .flatten();
        self.answer_with(now, node, from, transport, (q, raw), verdict, key, out);
    }

    /// [`Self::answer`] with the cache key already worked out.
    #[allow(clippy::too_many_arguments)]
    fn answer_with(
        &mut self,
        now: Instant,
        node: &Node,
        from: SocketAddr,
        transport: Transport,
        (q, raw): (&Query, &[u8]),
        verdict: Verdict,
        key: Option<CacheKey>,
        out: &mut Vec<u8>,
    ) {
        let limit = match transport {
            Transport::Tcp => wire::MAX_TCP_MESSAGE,
            Transport::Udp => q.edns().map_or(wire::CLASSIC_UDP, |e| {
                usize::from(e.payload.min(self.config.udp_payload)).max(wire::CLASSIC_UDP)
            }),
        };
        if let Some(key) = key
            && let Some(c) = self.cache.get_mut(&key)
            && now < c.until
        {
            c.counted.add_to(&mut self.stats);
            self.stats.cached_answers += 1;
            let payload = self.config.udp_payload;
            if !c.templates.iter().any(|t| t.serves(q))
                && c.templates.len() < TEMPLATES
                && let Ok(Some(t)) = wire::template(q, &c.prepared, limit, payload)
            {
                c.templates.push(t);
            }
            // The encoded sections behind this query's own question, when
            // they fit what it allows; else the full encoder, which also
            // truncates.
            let fast = c.templates.iter().find(|t| t.serves(q)).is_some_and(|t| {
                wire::encode_template(q, raw, t, out).is_ok() && out.len() <= limit
            });
            let encoded = if fast {
                self.stats.templated_answers += 1;
                Ok(false)
            } else {
                wire::encode_prepared(q, &c.prepared, limit, payload, out)
            };
            self.finish(q, verdict, encoded, out);
            return;
        }
        let r = if verdict == Verdict::Slip {
            self.stats.slipped += 1;
            // Empty and truncated: a real client retries over TCP.
            Response {
                truncated: true,
                ..Response::default()
            }
        } else {
            let before = self.stats;
            let r = self.respond(now, node, from.ip(), q);
            if let Some(key) = key
                && let Ok(prepared) = wire::prepare(&r)
            {
                let counted = Counted::between(&before, &self.stats);
                if self.cache.len() >= self.config.answer_cache_entries {
                    self.cache.retain(|_, c| now < c.until);
                }
                if self.cache.len() < self.config.answer_cache_entries {
                    let until = now + self.config.answer_cache;
                    self.cache.insert(
                        key,
                        Cached {
                            until,
                            prepared,
                            counted,
                            templates: Vec::new(),
                        },
                    );
                }
            }
            r
        };
        let encoded = wire::encode(q, &r, limit, self.config.udp_payload, out);
        self.finish(q, verdict, encoded, out);
    }

    /// Counts an encoded response (or answers FORMERR when it could not be
    /// encoded).
    fn finish(
        &mut self,
        q: &Query,
        verdict: Verdict,
        encoded: Result<bool, wire::EncodeError>,
        out: &mut Vec<u8>,
    ) {
        match encoded {
            Ok(true) if verdict == Verdict::Send => self.stats.truncated += 1,
            Ok(_) => {}
            Err(_) => {
                // Only a name built from an unchecked source could fail
                // (configured names are validated): answer FORMERR rather
                // than leave the client waiting.
                wire::encode_error(q.id(), 0, Rcode::FormErr, out);
            }
        }
        self.stats.responses += 1;
    }

    fn place(&self, labels: &[&[u8]]) -> Place {
        if let Some(a) = &self.alias
            && let Some(rest) = strip(labels, a)
        {
            return if rest.is_empty() {
                Place::AliasApex
            } else {
                Place::Coralized
            };
        }
        let Some(rest) = strip(labels, &self.zone) else {
            return Place::Outside;
        };
        if rest.is_empty() {
            return Place::ZoneApex;
        }
        // Level zones: rest ends with ..., l1, l0.
        let mut level_depth = 0;
        while level_depth < self.levels {
            match rest.len().checked_sub(level_depth + 1) {
                Some(i) if label_is(rest[i], &self.level_labels[level_depth]) => level_depth += 1,
                _ => break,
            }
        }
        if level_depth == 0 {
            return match rest {
                [l] if l.len() > 3 && l[..3].eq_ignore_ascii_case(b"ns-") => {
                    Place::Nameserver(String::from_utf8_lossy(&l[3..]).to_ascii_lowercase())
                }
                _ => Place::Missing(Apex::Zone),
            };
        }
        let apex_level = (level_depth - 1) as Level;
        let inner = &rest[..rest.len() - level_depth];
        if inner.is_empty() {
            return Place::LevelApex(apex_level);
        }
        if level_depth == self.levels
            && inner
                .last()
                .is_some_and(|l| label_is(l, &self.service_label))
        {
            return if inner.len() == 1 {
                Place::EmptyNonTerminal(apex_level)
            } else {
                Place::Coralized
            };
        }
        Place::Missing(Apex::Level(apex_level))
    }

    fn respond(&mut self, now: Instant, node: &Node, resolver: IpAddr, q: &Query) -> Response {
        if !q.class_in() {
            self.stats.refused += 1;
            return Response {
                rcode: Some(Rcode::Refused),
                ..Response::default()
            };
        }
        if q.edns().is_some_and(|e| e.version > 0) {
            return Response {
                rcode: Some(Rcode::BadVers),
                ..Response::default()
            };
        }
        let labels = q.labels();
        let mut r = Response {
            authoritative: true,
            ..Response::default()
        };
        match self.place(&labels) {
            Place::Outside => {
                self.stats.refused += 1;
                return Response {
                    rcode: Some(Rcode::Refused),
                    ..Response::default()
                };
            }
            Place::Coralized => self.coralized(now, node, resolver, q, &mut r),
            Place::ZoneApex => self.apex(now, node, resolver, q, Apex::Zone, &mut r),
            Place::AliasApex => self.apex(now, node, resolver, q, Apex::Alias, &mut r),
            Place::LevelApex(l) => self.apex(now, node, resolver, q, Apex::Level(l), &mut r),
            Place::EmptyNonTerminal(l) => self.nodata(Apex::Level(l), &mut r),
            Place::Nameserver(label) => self.nameserver(node, &label, q, &mut r),
            Place::Missing(apex) => {
                self.stats.nxdomain += 1;
                r.rcode = Some(Rcode::NxDomain);
                r.authority.push(self.soa(apex));
            }
        }
        r
    }

    fn apex_name(&self, apex: Apex) -> String {
        match apex {
            Apex::Zone => self.config.zone.clone(),
            Apex::Alias => self.config.alias.clone().unwrap_or_default(),
            Apex::Level(l) => self.level_zone(l),
        }
    }

    fn soa(&self, apex: Apex) -> Rr {
        let neg = secs(self.config.negative_ttl);
        Rr {
            owner: Owner::Name(self.apex_name(apex)),
            ttl: neg,
            data: Data::Soa {
                mname: format!("ns.{}", self.config.zone),
                rname: self.config.hostmaster.clone(),
                // The zone's data is computed per query; nothing transfers
                // it, so the serial never needs to move.
                serial: 1,
                refresh: 3600,
                retry: 600,
                expire: 86_400,
                minimum: neg,
            },
        }
    }

    fn nodata(&mut self, apex: Apex, r: &mut Response) {
        self.stats.nodata += 1;
        r.authority.push(self.soa(apex));
    }

    /// The level a resolver is answered at, whether all is known of it,
    /// and the nodes hints name near it.
    fn resolver_level(
        &mut self,
        now: Instant,
        node: &Node,
        resolver: IpAddr,
    ) -> (Level, bool, Vec<Hint>) {
        let ready = self.ready(now, resolver);
        let rtt = match self.rtts.lookup(now, resolver) {
            Rtt::Measured(d) => Some(d),
            Rtt::Pending | Rtt::Unmeasurable => None,
        };
        let level = self.level_for(node, rtt);
        let near = self
            .rtts
            .near(resolver)
            .map(<[Hint]>::to_vec)
            .unwrap_or_default();
        (level, ready, near)
    }

    /// NS records and their glue for level `level`'s zone, of DNS nodes
    /// near the resolver: those in `near` (named by hints) first, then
    /// [`pick`]'s; `owner` names the zone.
    #[allow(clippy::too_many_arguments)]
    fn nameservers(
        &self,
        now: Instant,
        node: &Node,
        resolver: IpAddr,
        level: Level,
        ttl: u32,
        owner: &Owner,
        near: &[Hint],
    ) -> (Vec<Rr>, Vec<Rr>) {
        let count = self.config.ns_count;
        let dns = |h: &&Hint| h.contact.services.contains(Services::DNS);
        // Servers the hints estimate nearer the resolver than this one, the
        // probe measured, are all it is handed on to: padding the set with
        // servers near this one would send it back as far, since resolvers
        // spread their queries over a zone's servers.
        let me = node.contact().id;
        let nearer: Vec<Contact> = match self.rtts.measured(resolver) {
            Some(mine) => near
                .iter()
                .filter(dns)
                .filter(|h| h.contact.id != me && h.rtt.is_some_and(|r| r < mine))
                .take(count)
                .map(|h| h.contact)
                .collect(),
            None => Vec::new(),
        };
        let servers = if nearer.is_empty() {
            let first = near.iter().filter(dns).take(count).map(|h| h.contact);
            pick(
                now,
                node,
                first.collect(),
                level,
                count,
                resolver,
                Services::DNS,
                |_| true,
            )
            .0
        } else {
            nearer
        };
        let mut ns = Vec::with_capacity(servers.len());
        let mut glue = Vec::with_capacity(servers.len());
        for c in servers {
            let host = self.nameserver_name(&c);
            ns.push(Rr {
                owner: owner.clone(),
                ttl,
                data: Data::Ns(host.clone()),
            });
            glue.push(Rr {
                owner: Owner::Name(host),
                ttl,
                data: address(c.addr.ip()),
            });
        }
        (ns, glue)
    }

    fn coralized(
        &mut self,
        now: Instant,
        node: &Node,
        resolver: IpAddr,
        q: &Query,
        r: &mut Response,
    ) {
        let apex = Apex::Level((self.levels - 1) as Level);
        let want_v4 = matches!(q.qtype(), Qtype::A | Qtype::Any);
        let want_v6 = matches!(q.qtype(), Qtype::Aaaa | Qtype::Any);
        if !want_v4 && !want_v6 {
            self.nodata(apex, r);
            return;
        }
        let (level, ready, near) = self.resolver_level(now, node, resolver);
        let family = |c: &Contact| match c.addr.ip() {
            IpAddr::V4(_) => want_v4,
            IpAddr::V6(_) => want_v6,
        };
        // Non-recursive proxies serve only their own network (spec §6.3).
        let allowed = |c: &Contact| {
            family(c)
                && (!c.services.contains(Services::LOCAL_ONLY)
                    || Prefix::of(c.addr.ip()) == Prefix::of(resolver))
        };
        // Proxies hints name near the resolver, if we have heard from them
        // ourselves or checked them (a dead proxy is what browsers handle
        // worst).
        let first: Vec<Contact> = if near.is_empty() {
            Vec::new()
        } else {
            let fresh = fresh_nodes(now, node, Services::HTTP);
            near.iter()
                .map(|h| h.contact)
                .filter(|c| c.services.contains(Services::HTTP) && allowed(c))
                .filter(|c| fresh.iter().any(|f| f.id == c.id) || self.is_verified(now, &c.id))
                .take(self.config.answer_count)
                .collect()
        };
        let (proxies, chosen_at, fallback) = pick(
            now,
            node,
            first,
            level,
            self.config.answer_count,
            resolver,
            Services::HTTP,
            allowed,
        );
        if proxies.is_empty() {
            self.stats.no_proxy += 1;
            self.nodata(apex, r);
            return;
        }
        if fallback {
            self.stats.fallback_answers += 1;
        }
        if let Some(n) = self.stats.answered_at_level.get_mut(usize::from(chosen_at)) {
            *n += 1;
        }
        let ttl = secs(self.config.answer_ttl);
        for c in proxies {
            r.answers.push(Rr {
                owner: Owner::QueryName,
                ttl,
                data: address(c.addr.ip()),
            });
        }
        let zone = Owner::Name(self.level_zone(level));
        let me = node.contact();
        (r.authority, r.additional) = if ready || !me.services.contains(Services::DNS) {
            let ttl = secs(self.config.ns_ttl);
            self.nameservers(now, node, resolver, level, ttl, &zone, &near)
        } else {
            // Answered before the probe (or the hint lookup) came back:
            // send the resolver back here, where they will have.
            let ttl = secs(self.config.partial_ns_ttl);
            let host = self.nameserver_name(&me);
            (
                vec![Rr {
                    owner: zone,
                    ttl,
                    data: Data::Ns(host.clone()),
                }],
                vec![Rr {
                    owner: Owner::Name(host),
                    ttl,
                    data: address(me.addr.ip()),
                }],
            )
        };
    }

    fn apex(
        &mut self,
        now: Instant,
        node: &Node,
        resolver: IpAddr,
        q: &Query,
        apex: Apex,
        r: &mut Response,
    ) {
        let owner = Owner::QueryName;
        let ns_level = match apex {
            Apex::Level(l) => l,
            _ => 0,
        };
        match q.qtype() {
            Qtype::Soa => r.answers.push(Rr {
                owner,
                ..self.soa(apex)
            }),
            Qtype::Ns => {
                let ttl = secs(self.config.ns_ttl);
                (r.answers, r.additional) =
                    self.nameservers(now, node, resolver, ns_level, ttl, &owner, &[]);
                if r.answers.is_empty() {
                    self.nodata(apex, r);
                }
            }
            Qtype::Dname if apex == Apex::Alias => r.answers.push(Rr {
                owner,
                ttl: secs(self.config.ns_ttl),
                data: Data::Dname(self.coral_suffix()),
            }),
            Qtype::Any => {
                r.answers.push(Rr {
                    owner: owner.clone(),
                    ..self.soa(apex)
                });
                if apex == Apex::Alias {
                    r.answers.push(Rr {
                        owner,
                        ttl: secs(self.config.ns_ttl),
                        data: Data::Dname(self.coral_suffix()),
                    });
                }
            }
            _ => self.nodata(apex, r),
        }
    }

    fn nameserver(&mut self, node: &Node, label: &str, q: &Query, r: &mut Response) {
        let found = known_dns_nodes(node)
            .into_iter()
            .find(|c| ns_label(c) == label);
        let Some(c) = found else {
            self.stats.nxdomain += 1;
            r.rcode = Some(Rcode::NxDomain);
            r.authority.push(self.soa(Apex::Zone));
            return;
        };
        let ip = c.addr.ip();
        let fits = matches!(
            (q.qtype(), ip),
            (Qtype::A | Qtype::Any, IpAddr::V4(_)) | (Qtype::Aaaa | Qtype::Any, IpAddr::V6(_))
        );
        if fits {
            r.answers.push(Rr {
                owner: Owner::QueryName,
                ttl: secs(self.config.ns_ttl),
                data: address(ip),
            });
        } else {
            self.nodata(Apex::Zone, r);
        }
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn address(ip: IpAddr) -> Data {
    match ip {
        IpAddr::V4(a) => Data::A(a),
        IpAddr::V6(a) => Data::Aaaa(a),
    }
}

fn ns_label(c: &Contact) -> String {
    let mut hex = c.id.to_string();
    hex.truncate(16);
    hex
}

/// Every DNS node this node knows, itself included, at any level.
fn known_dns_nodes(node: &Node) -> Vec<Contact> {
    let mut v: Vec<Contact> = Vec::new();
    let me = node.contact();
    if me.services.contains(Services::DNS) {
        v.push(me);
    }
    for level in 0..node.levels().len() {
        for c in node.contacts(level as Level) {
            if c.services.contains(Services::DNS) && !v.iter().any(|d| d.id == c.id) {
                v.push(c);
            }
        }
    }
    v
}

/// Every node heard from recently offering `services`, at any level.
fn fresh_nodes(now: Instant, node: &Node, services: Services) -> Vec<Contact> {
    let mut v: Vec<Contact> = Vec::new();
    for l in 0..node.levels().len() {
        for c in node.nodes(now, l as Level, usize::MAX, None, services) {
            if !v.iter().any(|d| d.id == c.id) {
                v.push(c);
            }
        }
    }
    v
}

/// `first`, then up to `count` nodes in all offering `services` and
/// passing `allowed`, chosen by [`Node::nodes`] for `target` from this
/// node's cluster at `level`, completed from the next looser levels when
/// that cluster has fewer (a small cluster, or a table still filling,
/// still yields `count` addresses to fail over between); when no level
/// has any heard from recently, any known node (the fallback). Returns the
/// nodes, the level the first chosen by rank came from (`level` when
/// `first` filled the answer), and whether the fallback was used.
#[allow(clippy::too_many_arguments)]
fn pick(
    now: Instant,
    node: &Node,
    first: Vec<Contact>,
    level: Level,
    count: usize,
    target: IpAddr,
    services: Services,
    allowed: impl Fn(&Contact) -> bool,
) -> (Vec<Contact>, Level, bool) {
    // Ask for more than needed: some may be filtered out.
    let ask = count.saturating_mul(4).max(8);
    let mut v = first;
    v.truncate(count);
    let mut first_level = (!v.is_empty()).then_some(level);
    for l in (0..=level).rev() {
        if v.len() >= count {
            break;
        }
        for c in node.nodes(now, l, ask, Some(target), services) {
            if v.len() < count && allowed(&c) && !v.iter().any(|d| d.id == c.id) {
                first_level.get_or_insert(l);
                v.push(c);
            }
        }
    }
    if let Some(l) = first_level {
        return (v, l, false);
    }
    for l in 0..node.levels().len() {
        for c in node.contacts(l as Level) {
            if v.len() < count
                && c.services.contains(services)
                && allowed(&c)
                && !v.iter().any(|d| d.id == c.id)
            {
                v.push(c);
            }
        }
    }
    (v, 0, true)
}

#[cfg(test)]
mod tests {
    use super::wire::testing::{Seen, query, seen};
    use super::*;
    use crate::config::Config;
    use crate::testnet::{Net, addr};

    const A: u16 = 1;
    const NS: u16 = 2;
    const SOA: u16 = 6;
    const MX: u16 = 15;
    const AAAA: u16 = 28;
    const DNAME: u16 = 39;
    const NOERROR: u16 = 0;
    const FORMERR: u16 = 1;
    const NXDOMAIN: u16 = 3;
    const NOTIMP: u16 = 4;
    const REFUSED: u16 = 5;

    /// Five nodes running proxies and DNS servers, joined; node 0 serves.
    fn net() -> Net {
        net_of(5)
    }

    /// `n` nodes running proxies and DNS servers, joined and settled for
    /// three minutes so every level's table is filled; node 0 serves.
    fn net_of(n: usize) -> Net {
        let config = Config {
            services: Services::HTTP.with(Services::DNS),
            ..Config::default()
        };
        let mut net = Net::new(n, &config);
        net.join_all();
        net.after(Duration::from_secs(180));
        net
    }

    /// A server that answers at once (most tests look at one answer).
    fn server() -> DnsServer {
        DnsServer::new(immediate(), 3).unwrap()
    }

    fn immediate() -> DnsConfig {
        DnsConfig {
            hold_budget: Duration::ZERO,
            ..DnsConfig::default()
        }
    }

    fn resolver() -> SocketAddr {
        "192.0.2.53:5353".parse().unwrap()
    }

    fn ask(s: &mut DnsServer, net: &Net, from: SocketAddr, t: Transport, q: &[u8]) -> Option<Seen> {
        let mut out = Vec::new();
        (s.handle_query(net.now, &net.nodes[0], from, t, 0, q, &mut out) == Handled::Reply)
            .then(|| seen(&out))
    }

    fn udp(s: &mut DnsServer, net: &Net, name: &str, qtype: u16) -> Seen {
        ask(
            s,
            net,
            resolver(),
            Transport::Udp,
            &query(name, qtype, Some(1232)),
        )
        .unwrap()
    }

    fn node_ips(net: &Net) -> Vec<String> {
        (0..net.nodes.len())
            .map(|i| addr(i).ip().to_string())
            .collect()
    }

    #[test]
    fn a_coralized_name_gets_live_proxies_and_level_0_servers_until_probed() {
        let net = net();
        let mut s = server();
        let r = udp(&mut s, &net, "www.example.com.nyud.net.", A);
        assert_eq!(r.rcode, NOERROR);
        assert!(r.aa && !r.ra && !r.tc);
        assert_eq!(r.answers.len(), 2);
        for (owner, t, ttl, ip) in &r.answers {
            assert_eq!(
                (owner.as_str(), *t, *ttl),
                ("www.example.com.nyud.net.", A, 30)
            );
            assert!(node_ips(&net).contains(ip), "{ip} is not a node");
        }
        // Unmeasured: this server alone, so the resolver comes back here.
        let me = format!("{}.", s.nameserver_name(&net.nodes[0].contact()));
        assert_eq!(
            r.authority,
            [("L0.nyucd.net.".to_owned(), NS, 600, me.clone())]
        );
        assert_eq!(r.additional, [(me, A, 600, addr(0).ip().to_string())]);
        // One probe for the resolver's prefix, however many queries.
        udp(&mut s, &net, "www.example.com.nyud.net.", A);
        assert_eq!(s.poll_probe(), Some(resolver().ip()));
        assert_eq!(s.poll_probe(), None);
    }

    #[test]
    fn the_resolvers_rtt_picks_the_level_and_its_zone() {
        let net = net();
        for (rtt_ms, zone, level, hint_level) in [
            (5, "L2.L1.L0.nyucd.net.", 2, 2),
            (15, "L2.L1.L0.nyucd.net.", 2, 1),
            (40, "L1.L0.nyucd.net.", 1, 0),
            (150, "L0.nyucd.net.", 0, 0),
        ] {
            let mut s = server();
            udp(&mut s, &net, "x.nyud.net.", A);
            let before = s.stats().answered_at_level[level];
            let target = s.poll_probe().unwrap();
            s.handle_probe_result(
                net.now,
                &net.nodes[0],
                target,
                Some(Duration::from_millis(rtt_ms)),
                &[],
            );
            // Every measured resolver gets a hint lookup, in the tightest
            // cluster of ours wider than twice its RTT.
            let l = s.poll_lookup().expect("a hint lookup");
            assert_eq!(
                (l.target, l.level),
                (target, hint_level as Level),
                "rtt {rtt_ms} ms"
            );
            s.handle_lookup_result(net.now, &net.nodes[0], l.target, Vec::new());
            let r = udp(&mut s, &net, "x.nyud.net.", A);
            assert!(!r.authority.is_empty());
            for (owner, _, ttl, _) in &r.authority {
                assert_eq!(owner, zone, "rtt {rtt_ms} ms");
                assert_eq!(*ttl, 6 * 3600);
            }
            assert_eq!(
                s.stats().answered_at_level[level],
                before + 1,
                "rtt {rtt_ms} ms"
            );
        }
    }

    #[test]
    fn a_first_query_waits_for_the_probe_and_is_answered_with_its_token() {
        let net = net();
        let mut s = DnsServer::new(DnsConfig::default(), 3).unwrap();
        let q = query("x.nyud.net.", A, None);
        let mut out = Vec::new();
        let node = &net.nodes[0];
        let h = s.handle_query(net.now, node, resolver(), Transport::Tcp, 77, &q, &mut out);
        assert_eq!(h, Handled::Held);
        assert_eq!(s.poll_timeout(), Some(net.now + Duration::from_millis(500)));
        assert!(s.poll_answer().is_none());
        let target = s.poll_probe().unwrap();
        s.handle_probe_result(net.now, node, target, Some(Duration::from_millis(3)), &[]);
        assert!(s.poll_answer().is_none(), "still waiting for the hints");
        let l = s.poll_lookup().unwrap();
        assert_eq!(
            l.level, 2,
            "a near resolver's hints are read in our level-2 cluster"
        );
        s.handle_lookup_result(net.now, node, l.target, Vec::new());
        let a = s
            .poll_answer()
            .expect("answered once the probe and the hints are in");
        assert_eq!(
            (a.to, a.transport, a.token),
            (resolver(), Transport::Tcp, 77)
        );
        let r = seen(&a.bytes);
        assert_eq!(r.answers.len(), 2);
        assert!(
            r.authority
                .iter()
                .all(|ns| ns.0 == "L2.L1.L0.nyucd.net." && ns.2 == 6 * 3600)
        );
        assert_eq!(s.poll_timeout(), None);
        // The next query from that prefix is answered at once.
        let h = s.handle_query(net.now, node, resolver(), Transport::Udp, 0, &q, &mut out);
        assert_eq!(h, Handled::Reply);
        assert_eq!(s.stats().held, 1);
    }

    #[test]
    fn a_held_query_is_answered_at_its_deadline_with_what_is_known() {
        let net = net();
        let mut s = DnsServer::new(DnsConfig::default(), 3).unwrap();
        let q = query("x.nyud.net.", A, None);
        let node = &net.nodes[0];
        let mut out = Vec::new();
        assert_eq!(
            s.handle_query(net.now, node, resolver(), Transport::Udp, 0, &q, &mut out),
            Handled::Held
        );
        s.handle_timeout(net.now + Duration::from_millis(499), node);
        assert!(s.poll_answer().is_none(), "not before the deadline");
        s.handle_timeout(net.now + Duration::from_millis(500), node);
        let r = seen(&s.poll_answer().unwrap().bytes);
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.authority.len(), 1, "this server alone: {r:?}");
        assert!(
            r.authority
                .iter()
                .all(|ns| ns.0 == "L0.nyucd.net." && ns.2 == 600)
        );
        assert_eq!(s.stats().held_expired, 1);
    }

    #[test]
    fn a_far_resolver_gets_the_nameservers_hints_name_near_it() {
        let net = net();
        let mut s = DnsServer::new(DnsConfig::default(), 3).unwrap();
        let q = query("x.nyud.net.", A, None);
        let node = &net.nodes[0];
        let mut out = Vec::new();
        s.handle_query(net.now, node, resolver(), Transport::Udp, 0, &q, &mut out);
        let target = s.poll_probe().unwrap();
        let ms = Duration::from_millis;
        let hop: IpAddr = "100.64.0.1".parse().unwrap();
        let untimed: IpAddr = "100.64.0.2".parse().unwrap();
        s.handle_probe_result(
            net.now,
            node,
            target,
            Some(ms(150)),
            &[
                Router {
                    addr: hop,
                    rtt: Some(ms(140)),
                },
                Router::unmeasured(untimed),
            ],
        );
        assert!(s.poll_answer().is_none(), "still waiting for the hints");
        let l = s.poll_lookup().unwrap();
        assert_eq!(
            l.routers,
            [
                Router {
                    addr: hop,
                    rtt: Some(ms(10)),
                },
                Router::unmeasured(untimed),
            ],
            "the resolver's RTT to each hop, where the trace timed it"
        );
        let near: Vec<Contact> = [3, 4].iter().map(|&i| net.nodes[i].contact()).collect();
        let hints = near
            .iter()
            .zip([12, 30])
            .map(|(&contact, r)| Hint {
                contact,
                rtt: Some(ms(r)),
            })
            .collect();
        s.handle_lookup_result(net.now, node, l.target, hints);
        let r = seen(&s.poll_answer().unwrap().bytes);
        let hosts: Vec<&str> = r.authority.iter().map(|ns| ns.3.as_str()).collect();
        for (c, host) in near.iter().zip(&hosts) {
            assert_eq!(
                *host,
                format!("{}.", s.nameserver_name(c)),
                "hinted servers first"
            );
        }
        assert!(
            r.authority
                .iter()
                .all(|ns| ns.0 == "L0.nyucd.net." && ns.2 == 6 * 3600)
        );
        let answers: Vec<&str> = r.answers.iter().map(|a| a.3.as_str()).collect();
        let hinted_ips: Vec<String> = near.iter().map(|c| c.addr.ip().to_string()).collect();
        assert_eq!(answers, hinted_ips, "live hinted proxies first");
    }

    /// Asks `s` (on node 0) for a Coralized name from `from`, measured at
    /// `rtt`, with `hints` (node, estimate) found; returns the answer's
    /// proxy addresses and nameserver glue addresses.
    fn answered_with_hints(
        net: &Net,
        s: &mut DnsServer,
        from: &str,
        rtt: Duration,
        hints: &[(usize, Option<Duration>)],
    ) -> (Vec<String>, Vec<String>) {
        let q = query("x.nyud.net.", A, None);
        let node = &net.nodes[0];
        let mut out = Vec::new();
        s.handle_query(
            net.now,
            node,
            from.parse().unwrap(),
            Transport::Udp,
            0,
            &q,
            &mut out,
        );
        let target = s.poll_probe().unwrap();
        s.handle_probe_result(net.now, node, target, Some(rtt), &[]);
        let l = s.poll_lookup().unwrap();
        let hints = hints
            .iter()
            .map(|&(i, rtt)| Hint {
                contact: net.nodes[i].contact(),
                rtt,
            })
            .collect();
        s.handle_lookup_result(net.now, node, l.target, hints);
        let r = seen(&s.poll_answer().unwrap().bytes);
        let addrs = |rrs: &[(String, u16, u32, String)]| rrs.iter().map(|a| a.3.clone()).collect();
        (addrs(&r.answers), addrs(&r.additional))
    }

    #[test]
    fn a_hinted_proxy_not_heard_from_is_checked_before_it_is_named() {
        let net = net();
        let node = &net.nodes[0];
        let ms = Duration::from_millis;
        let stranger = |n: u8| Contact {
            id: Id([n; 20]),
            addr: format!("203.0.113.{n}:8091").parse().unwrap(),
            services: Services::HTTP.with(Services::DNS),
        };
        for alive in [true, false] {
            let mut s = DnsServer::new(DnsConfig::default(), 3).unwrap();
            let q = query("x.nyud.net.", A, None);
            let mut out = Vec::new();
            s.handle_query(net.now, node, resolver(), Transport::Udp, 7, &q, &mut out);
            let target = s.poll_probe().unwrap();
            s.handle_probe_result(net.now, node, target, Some(ms(90)), &[]);
            let l = s.poll_lookup().unwrap();
            // Two hinted proxies this node never heard from, nearer the
            // resolver than it is.
            let hints = [(stranger(91), ms(5)), (stranger(92), ms(9))]
                .into_iter()
                .map(|(contact, rtt)| Hint {
                    contact,
                    rtt: Some(rtt),
                })
                .collect();
            s.handle_lookup_result(net.now, node, l.target, hints);
            assert_eq!(s.poll_check(), Some(stranger(91)));
            assert_eq!(s.poll_check(), Some(stranger(92)));
            assert_eq!(s.poll_check(), None);
            assert!(s.poll_answer().is_none(), "waiting for the checks");
            s.handle_check_result(net.now, node, stranger(91), alive);
            assert!(s.poll_answer().is_none(), "one check still out");
            s.handle_check_result(net.now, node, stranger(92), true);
            let a = s.poll_answer().expect("answered once checked");
            assert_eq!(a.token, 7);
            let r = seen(&a.bytes);
            let answers: Vec<&str> = r.answers.iter().map(|a| a.3.as_str()).collect();
            if alive {
                assert_eq!(answers, ["203.0.113.91", "203.0.113.92"]);
            } else {
                assert_eq!(answers[0], "203.0.113.92", "the dead one left out");
                assert!(!answers.contains(&"203.0.113.91"));
            }
            let st = s.stats();
            assert_eq!((st.checks, st.checks_failed), (2, u64::from(!alive)));
            // The resolver's next query is answered at once, unchecked.
            let r = udp(&mut s, &net, "y.nyud.net.", A);
            assert!(!r.answers.is_empty());
            assert_eq!(s.poll_check(), None);
        }
    }

    #[test]
    fn the_server_takes_its_place_among_the_hints_by_its_own_rtt() {
        let net = net();
        let mut s = DnsServer::new(DnsConfig::default(), 3).unwrap();
        let ms = Duration::from_millis;
        let ip = |i: usize| net.nodes[i].contact().addr.ip().to_string();
        // Node 2 estimated nearer than this server (8 ms), node 3 farther,
        // node 4 without an estimate.
        let hints = [(2, Some(ms(5))), (3, Some(ms(20))), (4, None)];
        let (proxies, glue) = answered_with_hints(&net, &mut s, "192.0.2.53:53", ms(8), &hints);
        assert_eq!(proxies, [ip(2), ip(0)], "the server by its own RTT, second");
        assert_eq!(glue, [ip(2)], "handed on to the nearer server alone");
        // Hints all farther than the server: it comes first, then they do.
        let hints = [(3, Some(ms(20))), (2, Some(ms(30)))];
        let (proxies, glue) = answered_with_hints(&net, &mut s, "198.51.100.53:53", ms(8), &hints);
        assert_eq!(proxies, [ip(0), ip(3)]);
        assert_eq!(glue, [ip(0), ip(3), ip(2)]);
    }

    #[test]
    fn answers_for_one_prefix_and_level_are_reused_for_a_second_and_still_counted() {
        let net = net();
        let config = DnsConfig {
            answer_cache: Duration::from_secs(1),
            ..immediate()
        };
        let mut s = DnsServer::new(config, 3).unwrap();
        let node = &net.nodes[0];
        let mut out = Vec::new();
        let mut ask_at = |s: &mut DnsServer, t: Instant, name: &str| {
            let q = query(name, A, None);
            assert_eq!(
                s.handle_query(t, node, resolver(), Transport::Udp, 0, &q, &mut out),
                Handled::Reply
            );
            seen(&out)
        };
        let a = ask_at(&mut s, net.now, "one.nyud.net.");
        let b = ask_at(&mut s, net.now, "Two.Example.nyud.net.");
        assert_eq!(s.stats().cached_answers, 1);
        assert_eq!(
            s.stats().answered_at_level[0],
            2,
            "a reused answer still counts"
        );
        // Same records, each under its own query name.
        let ips = |r: &Seen| r.answers.iter().map(|a| a.3.clone()).collect::<Vec<_>>();
        assert_eq!(ips(&a), ips(&b));
        assert!(b.answers.iter().all(|r| r.0 == "Two.Example.nyud.net."));
        assert_eq!(b.question.as_deref(), Some("Two.Example.nyud.net."));
        // A second later the records are chosen again.
        ask_at(&mut s, net.now + Duration::from_secs(1), "three.nyud.net.");
        assert_eq!(s.stats().cached_answers, 1);
        // Another prefix has its own entry.
        let other: SocketAddr = "198.51.100.9:53".parse().unwrap();
        let q = query("one.nyud.net.", A, None);
        s.handle_query(net.now, node, other, Transport::Udp, 0, &q, &mut Vec::new());
        assert_eq!(s.stats().cached_answers, 1);
    }

    #[test]
    fn answers_from_templates_read_the_same_as_answers_encoded_in_full() {
        let net = net_of(8);
        let node = &net.nodes[0];
        let measure = |s: &mut DnsServer| {
            let mut out = Vec::new();
            let q = query("warm.nyud.net.", A, None);
            s.handle_query(net.now, node, resolver(), Transport::Udp, 0, &q, &mut out);
            let t = s.poll_probe().unwrap();
            s.handle_probe_result(net.now, node, t, Some(Duration::from_millis(4)), &[]);
            while let Some(l) = s.poll_lookup() {
                s.handle_lookup_result(net.now, node, l.target, Vec::new());
            }
            while s.poll_answer().is_some() {}
        };
        let mut fast = server();
        let mut full = DnsServer::new(
            DnsConfig {
                answer_cache: Duration::ZERO,
                ..immediate()
            },
            3,
        )
        .unwrap();
        measure(&mut fast);
        measure(&mut full);
        let names = [
            "a.nyud.net.",
            "B.nyud.net.",
            "www.Example.com.nyud.net.",
            "www.example.org.nyud.net.",
            "x.y.z.http.L2.L1.L0.nyucd.net.",
            "n-a-m-e-that-is-rather-long-and-has-many-dashes-in-it-for-size.example.nyud.net.",
        ];
        for edns in [None, Some(1232)] {
            for t in [Transport::Udp, Transport::Tcp] {
                for name in names {
                    for _ in 0..2 {
                        let q = query(name, A, edns);
                        let (mut a, mut b) = (Vec::new(), Vec::new());
                        let ha = fast.handle_query(net.now, node, resolver(), t, 0, &q, &mut a);
                        let hb = full.handle_query(net.now, node, resolver(), t, 0, &q, &mut b);
                        assert_eq!((ha, hb), (Handled::Reply, Handled::Reply));
                        let (sa, sb) = (seen(&a), seen(&b));
                        assert_eq!(
                            (sa.id, sa.rcode, sa.aa, sa.tc, sa.ra, &sa.question),
                            (sb.id, sb.rcode, sb.aa, sb.tc, sb.ra, &sb.question),
                            "{name}"
                        );
                        assert_eq!(
                            (&sa.answers, &sa.authority, &sa.additional, sa.edns_payload),
                            (&sb.answers, &sb.authority, &sb.additional, sb.edns_payload),
                            "{name} {t:?} {edns:?}"
                        );
                        assert!(
                            sa.answers.iter().all(|r| r.0 == name),
                            "owner keeps its case"
                        );
                    }
                }
            }
        }
        // Every name after the first of its length came from a template.
        let st = fast.stats();
        assert!(st.templated_answers >= 2 * 2 * 5, "{st:?}");
        assert_eq!(full.stats().templated_answers, 0);
    }

    #[test]
    fn the_long_form_names_the_same_hosts() {
        let net = net();
        let mut s = server();
        let r = udp(&mut s, &net, "www.example.com.http.L2.L1.L0.nyucd.net.", A);
        assert_eq!((r.rcode, r.answers.len()), (NOERROR, 2));
        // The level zones' own names, and names between them.
        let r = udp(&mut s, &net, "http.L2.L1.L0.nyucd.net.", A);
        assert_eq!(
            (r.rcode, r.answers.len()),
            (NOERROR, 0),
            "an empty non-terminal is NODATA"
        );
        assert_eq!(r.authority[0].1, SOA);
        let r = udp(&mut s, &net, "www.example.com.ftp.L2.L1.L0.nyucd.net.", A);
        assert_eq!(r.rcode, NXDOMAIN);
        assert_eq!(
            (r.authority[0].0.as_str(), r.authority[0].1),
            ("L2.L1.L0.nyucd.net.", SOA)
        );
    }

    #[test]
    fn the_case_of_the_query_name_is_kept() {
        let net = net();
        let mut s = server();
        let r = udp(&mut s, &net, "wWw.ExAmPlE.cOm.NyUd.NeT.", A);
        assert_eq!(r.question.as_deref(), Some("wWw.ExAmPlE.cOm.NyUd.NeT."));
        assert!(r.answers.iter().all(|a| a.0 == "wWw.ExAmPlE.cOm.NyUd.NeT."));
        assert_eq!(r.answers.len(), 2);
    }

    #[test]
    fn apexes_serve_soa_ns_and_the_alias_its_dname() {
        let net = net();
        let mut s = server();
        for apex in [
            "nyucd.net.",
            "nyud.net.",
            "L0.nyucd.net.",
            "L1.L0.nyucd.net.",
            "L2.L1.L0.nyucd.net.",
        ] {
            let r = udp(&mut s, &net, apex, SOA);
            assert_eq!(
                (r.rcode, r.answers.len(), r.answers[0].1),
                (NOERROR, 1, SOA),
                "{apex}"
            );
            let r = udp(&mut s, &net, apex, NS);
            assert_eq!(r.answers.len(), 3, "{apex}");
            assert!(r.answers.iter().all(|a| a.1 == NS && a.0 == apex));
            assert_eq!(r.additional.len(), 3, "glue at {apex}");
            let r = udp(&mut s, &net, apex, MX);
            assert_eq!(
                (r.rcode, r.answers.len(), r.authority[0].1),
                (NOERROR, 0, SOA),
                "{apex}"
            );
        }
        let r = udp(&mut s, &net, "nyud.net.", DNAME);
        assert_eq!(r.answers[0].1, DNAME);
        assert_eq!(r.answers[0].3, "http.L2.L1.L0.nyucd.net.");
    }

    #[test]
    fn a_nameserver_host_name_resolves_to_its_node() {
        let net = net();
        let mut s = server();
        let r = udp(&mut s, &net, "x.nyud.net.", A);
        let (host, ip) = (&r.additional[0].0, &r.additional[0].3);
        let a = udp(&mut s, &net, host, A);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(&a.answers[0].3, ip);
        let a = udp(&mut s, &net, host, AAAA);
        assert_eq!((a.rcode, a.answers.len()), (NOERROR, 0));
        let a = udp(&mut s, &net, "ns-0000000000000000.nyucd.net.", A);
        assert_eq!(a.rcode, NXDOMAIN);
    }

    #[test]
    fn hygiene_refused_nxdomain_nodata() {
        let net = net();
        let mut s = server();
        let r = udp(&mut s, &net, "www.example.com.", A);
        assert_eq!((r.rcode, r.aa, r.answers.len()), (REFUSED, false, 0));
        let r = udp(&mut s, &net, "nyucd.net.example.", A);
        assert_eq!(r.rcode, REFUSED);
        let r = udp(&mut s, &net, "nothing.nyucd.net.", A);
        assert_eq!((r.rcode, r.aa), (NXDOMAIN, true));
        assert_eq!(
            (r.authority[0].0.as_str(), r.authority[0].1),
            ("nyucd.net.", SOA)
        );
        let r = udp(&mut s, &net, "www.example.com.nyud.net.", MX);
        assert_eq!((r.rcode, r.answers.len()), (NOERROR, 0));
        assert_eq!(r.authority[0].1, SOA);
        assert!(!r.ra);
    }

    #[test]
    fn malformed_and_unsupported_messages() {
        let net = net();
        let mut s = server();
        let good = query("x.nyud.net.", A, None);
        // Cut inside the question.
        let r = ask(
            &mut s,
            &net,
            resolver(),
            Transport::Udp,
            &good[..good.len() - 3],
        )
        .unwrap();
        assert_eq!((r.id, r.rcode), (0x5a5a, FORMERR));
        // Opcode NOTIFY (4).
        let mut notify = good.clone();
        notify[2] = (notify[2] & 0x87) | (4 << 3);
        let r = ask(&mut s, &net, resolver(), Transport::Udp, &notify).unwrap();
        assert_eq!(r.rcode, NOTIMP);
        // A response is not answered; nor is a runt.
        let mut response = good.clone();
        response[2] |= 0x80;
        assert!(ask(&mut s, &net, resolver(), Transport::Udp, &response).is_none());
        assert!(ask(&mut s, &net, resolver(), Transport::Udp, &good[..5]).is_none());
        // And the server still answers.
        let r = ask(&mut s, &net, resolver(), Transport::Udp, &good).unwrap();
        assert_eq!((r.rcode, r.answers.len()), (NOERROR, 2));
    }

    #[test]
    fn udp_size_is_honoured_and_tcp_carries_it_whole() {
        let net = net_of(16);
        let config = DnsConfig {
            ns_count: 12,
            answer_count: 12,
            ..immediate()
        };
        let mut s = DnsServer::new(config, 3).unwrap();
        let name = "a-rather-long-label-to-fill-the-answer.www.example.com.nyud.net.";
        let plain = query(name, A, None);
        let mut out = Vec::new();
        // Measure the resolver first (near: level 2, nothing more to wait for).
        s.handle_query(
            net.now,
            &net.nodes[0],
            resolver(),
            Transport::Tcp,
            0,
            &plain,
            &mut out,
        );
        let target = s.poll_probe().unwrap();
        s.handle_probe_result(
            net.now,
            &net.nodes[0],
            target,
            Some(Duration::from_millis(2)),
            &[],
        );
        let l = s.poll_lookup().unwrap();
        s.handle_lookup_result(net.now, &net.nodes[0], l.target, Vec::new());
        assert_eq!(
            s.handle_query(
                net.now,
                &net.nodes[0],
                resolver(),
                Transport::Udp,
                0,
                &plain,
                &mut out
            ),
            Handled::Reply
        );
        assert!(out.len() <= 512);
        let r = seen(&out);
        assert!(r.tc && r.answers.is_empty(), "{r:?}");
        assert_eq!(s.stats().truncated, 1);
        let tcp = ask(&mut s, &net, resolver(), Transport::Tcp, &plain).unwrap();
        assert!(!tcp.tc);
        assert_eq!((tcp.answers.len(), tcp.authority.len()), (12, 12));
        assert!(tcp.additional.len() >= 12);
        // With EDNS(0) at 1232 the same answer fits in UDP, with our OPT.
        let big = ask(
            &mut s,
            &net,
            resolver(),
            Transport::Udp,
            &query(name, A, Some(4096)),
        )
        .unwrap();
        assert!(!big.tc);
        assert_eq!(big.edns_payload, Some(1232));
    }

    #[test]
    fn a_flood_from_one_prefix_is_limited_and_slips() {
        let net = net();
        let config = DnsConfig {
            rrl_rate: 10,
            ..immediate()
        };
        let mut s = DnsServer::new(config, 3).unwrap();
        let q = query("x.nyud.net.", A, None);
        let answered: Vec<Option<Seen>> = (0..30)
            .map(|_| ask(&mut s, &net, resolver(), Transport::Udp, &q))
            .collect();
        let full = answered.iter().flatten().filter(|r| !r.tc).count();
        let slips = answered.iter().flatten().filter(|r| r.tc).count();
        assert_eq!(full, 10);
        assert_eq!(slips, 10);
        assert!(
            answered
                .iter()
                .flatten()
                .filter(|r| r.tc)
                .all(|r| r.answers.is_empty())
        );
        assert_eq!(s.stats().rate_limited, 10);
        // TCP is not limited.
        assert!(ask(&mut s, &net, resolver(), Transport::Tcp, &q).is_some_and(|r| !r.tc));
    }

    #[test]
    fn local_only_proxies_serve_only_their_own_prefix() {
        let config = Config {
            services: Services::HTTP
                .with(Services::DNS)
                .with(Services::LOCAL_ONLY),
            ..Config::default()
        };
        let mut net = Net::new(4, &config);
        net.join_all();
        net.after(Duration::from_secs(30));
        let mut s = server();
        let q = query("x.nyud.net.", A, None);
        let far = ask(&mut s, &net, resolver(), Transport::Udp, &q).unwrap();
        assert_eq!((far.rcode, far.answers.len()), (NOERROR, 0));
        assert_eq!(s.stats().no_proxy, 1);
        let local: SocketAddr = "10.0.0.200:5353".parse().unwrap();
        let near = ask(&mut s, &net, local, Transport::Udp, &q).unwrap();
        assert_eq!(near.answers.len(), 2);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let bad = |c: DnsConfig| DnsServer::new(c, 3).err();
        assert!(matches!(
            bad(DnsConfig {
                zone: String::new(),
                ..DnsConfig::default()
            }),
            Some(DnsConfigError::BadName(_))
        ));
        assert!(matches!(
            bad(DnsConfig {
                alias: Some("x.nyucd.net".into()),
                ..DnsConfig::default()
            }),
            Some(DnsConfigError::Overlap { .. })
        ));
        assert_eq!(
            DnsServer::new(DnsConfig::default(), 0).err(),
            Some(DnsConfigError::NoLevels)
        );
        let s = DnsServer::new(DnsConfig::default(), 3).unwrap();
        assert_eq!(s.coral_suffix(), "http.L2.L1.L0.nyucd.net");
        assert_eq!(s.level_zone(1), "L1.L0.nyucd.net");
    }

    proptest::proptest! {
        /// No input makes the server panic, and whatever it sends over UDP
        /// fits in 512 bytes or the size the query's EDNS(0) allows.
        #[test]
        fn any_bytes_get_a_bounded_answer_or_none(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            static NET: std::sync::OnceLock<std::sync::Mutex<Net>> = std::sync::OnceLock::new();
            let net = NET.get_or_init(|| std::sync::Mutex::new(net()));
            let net = net.lock().unwrap();
            let mut s = server();
            let mut out = Vec::new();
            if s.handle_query(net.now, &net.nodes[0], resolver(), Transport::Udp, 0, &bytes, &mut out) == Handled::Reply {
                proptest::prop_assert!(out.len() <= 1232);
                proptest::prop_assert!(out.len() >= 12);
            }
        }
    }
}
