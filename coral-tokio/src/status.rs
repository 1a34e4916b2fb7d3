//! A node's state as plain data, and its two renderings for the admin
//! endpoint: Prometheus text (`/metrics`) and a small HTML page (`/`).
//!
//! The snapshot copies what the core's getters expose ([`Node::stats`],
//! [`Node::store_stats`], [`Node::clusters`], [`Node::routing_len`],
//! [`Node::contacts`]) plus the adapter's own socket counters. It is taken
//! inside the node task, so readers never share the `Node`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use coral_core::Node;
use coral_core::time::Instant as CoreInstant;
use serde::{Deserialize, Serialize};

/// Most contacts per level listed in a snapshot (the counts are always exact).
pub const MAX_LISTED_CONTACTS: usize = 64;

/// Everything `coral status`, `/status.json`, `/metrics` and `/` show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    /// The node id, hex.
    pub id: String,
    /// The RPC address.
    pub addr: SocketAddr,
    /// The RNG seed (replays the node in the simulator).
    pub seed: u64,
    /// Seconds since the node started.
    pub uptime_secs: f64,
    /// Services advertised besides the DSHT.
    pub services: Vec<String>,
    /// One entry per level, level 0 (global) first.
    pub levels: Vec<LevelStatus>,
    /// The core's counters.
    pub stats: CoreCounters,
    /// The sloppy store's counters.
    pub store: StoreCounters,
    /// The adapter's socket and loop counters.
    pub adapter: AdapterCounters,
    /// Application operations running in the core.
    pub ops_in_flight: usize,
    /// Callers waiting for an operation's result.
    pub waiting_callers: usize,
    /// Values this node keeps alive (hints included).
    pub publications: usize,
    /// The DNS server's counters, when the node serves DNS.
    #[serde(default)]
    pub dns: Option<Vec<DnsCounter>>,
}

/// One of the DNS server's counters (the core's `DnsStats::counters`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsCounter {
    /// Its name, e.g. `queries` or `answers_level_2`.
    pub name: String,
    /// What it counts.
    pub help: String,
    /// Its value.
    pub value: u64,
}

/// The DNS server's counters, as the core lists them.
pub fn dns_counters(d: &coral_core::dns::DnsStats) -> Vec<DnsCounter> {
    d.counters()
        .into_iter()
        .map(|(name, help, value)| DnsCounter {
            name: name.to_owned(),
            help: help.to_owned(),
            value,
        })
        .collect()
}

/// One level of the hierarchy as this node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelStatus {
    /// 0 is the global level.
    pub level: u8,
    /// The cluster diameter in milliseconds; `None` is unbounded.
    pub diameter_ms: Option<u64>,
    /// The id of the cluster this node belongs to, hex.
    pub cluster: String,
    /// The node's estimate of its cluster's size.
    pub cluster_size: u32,
    /// Seconds since the cluster was founded, as the node knows it.
    pub cluster_age_secs: u32,
    /// Contacts in the routing table of this level.
    pub routing_len: usize,
    /// Up to [`MAX_LISTED_CONTACTS`] of them.
    pub contacts: Vec<ContactStatus>,
}

/// A contact in a routing table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactStatus {
    /// Its id, hex.
    pub id: String,
    /// Its RPC address.
    pub addr: SocketAddr,
}

/// RPC counts by message type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcCounters {
    /// Ping / pong.
    pub ping: u64,
    /// Find-near.
    pub find_near: u64,
    /// Get-probe.
    pub get_probe: u64,
    /// Put-probe.
    pub put_probe: u64,
    /// Store.
    pub store: u64,
    /// Replies of any kind.
    pub replies: u64,
}

impl RpcCounters {
    /// `(type label, count)` pairs, in a fixed order.
    pub fn by_type(&self) -> [(&'static str, u64); 6] {
        [
            ("ping", self.ping),
            ("find_near", self.find_near),
            ("get_probe", self.get_probe),
            ("put_probe", self.put_probe),
            ("store", self.store),
            ("reply", self.replies),
        ]
    }
}

/// The core's [`coral_core::Stats`], copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreCounters {
    /// Requests and replies received, by type.
    pub rpcs_in: RpcCounters,
    /// Requests and replies sent, by type.
    pub rpcs_out: RpcCounters,
    /// Datagrams that failed to decode.
    pub malformed: u64,
    /// Replies that matched no pending request.
    pub unsolicited: u64,
    /// RPC attempts that timed out.
    pub timeouts: u64,
    /// Requests sent again after a timeout.
    pub retransmits: u64,
    /// Extra RPCs sent because a reply was late.
    pub hedges: u64,
    /// Lookups finished (one per level walked).
    pub lookups: u64,
    /// Sum of hops over finished lookups.
    pub lookup_hops: u64,
    /// Puts kept because this node was loaded for their key.
    pub puts_kept: u64,
    /// Stores refused because this node was full.
    pub refused_full: u64,
    /// Stores refused because this node was full and loaded.
    pub refused_loaded: u64,
    /// Cluster switches at any level.
    pub cluster_switches: u64,
    /// Contacts dropped after repeated failures.
    pub contacts_dropped: u64,
    /// Requests dropped because too many RPCs were in flight.
    pub inflight_overflow: u64,
}

/// The sloppy store's counters, copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreCounters {
    /// Key entries held.
    pub keys: usize,
    /// Values held.
    pub values: usize,
    /// New values stored.
    pub stored: u64,
    /// Stores that refreshed a value already held.
    pub refreshed: u64,
    /// Stores refused: full.
    pub refused_full: u64,
    /// Stores refused: full and loaded.
    pub refused_loaded: u64,
    /// Stores refused: value too long.
    pub refused_invalid: u64,
    /// Put traversals not counted for lack of room.
    pub untracked_puts: u64,
    /// Values evicted to make room.
    pub evicted: u64,
    /// Key entries evicted to make room.
    pub evicted_keys: u64,
    /// Values that expired.
    pub expired: u64,
}

/// What the adapter itself counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterCounters {
    /// Datagrams received and handed to the core.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Of those, datagrams that left within GSO sends (coral-mio).
    #[serde(default)]
    pub datagrams_out_gso: u64,
    /// `send_to` failures.
    pub send_errors: u64,
    /// `recv_from` failures.
    pub recv_errors: u64,
    /// Times the core's deadline woke the loop.
    pub timer_wakeups: u64,
    /// Core events no caller was waiting for.
    pub other_events: u64,
}

fn rpc(c: &coral_core::node::RpcCounts) -> RpcCounters {
    RpcCounters {
        ping: c.ping,
        find_near: c.find_near,
        get_probe: c.get_probe,
        put_probe: c.put_probe,
        store: c.store,
        replies: c.replies,
    }
}

/// Copies the node's state into a [`NodeStatus`].
///
/// Every runtime adapter calls this on the thread that owns the `Node`, so
/// `/status.json`, `/metrics`, `/` and `coral status` read alike whichever
/// runtime serves them. `now` is the adapter's current core instant (the
/// uptime is its time since the node's epoch), `seed` the RNG seed the node
/// was started with, `adapter` the adapter's own socket counters, and
/// `waiting` the number of callers waiting for an answer from the node.
pub fn snapshot(
    node: &Node,
    now: CoreInstant,
    seed: u64,
    adapter: AdapterCounters,
    waiting: usize,
) -> NodeStatus {
    let s = node.stats();
    let st = node.store_stats();
    let clusters = node.clusters();
    let levels = node
        .levels()
        .iter()
        .enumerate()
        .map(|(i, lc)| {
            let level = u8::try_from(i).unwrap_or(u8::MAX);
            let info = clusters.iter().find(|c| c.level == level);
            LevelStatus {
                level,
                diameter_ms: lc
                    .diameter
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                cluster: info.map(|c| c.cluster.to_string()).unwrap_or_default(),
                cluster_size: info.map_or(0, |c| c.size),
                cluster_age_secs: info.map_or(0, |c| c.age_secs),
                routing_len: node.routing_len(level),
                contacts: node
                    .contacts(level)
                    .into_iter()
                    .take(MAX_LISTED_CONTACTS)
                    .map(|c| ContactStatus {
                        id: c.id.to_string(),
                        addr: c.addr,
                    })
                    .collect(),
            }
        })
        .collect();
    let services = node.contact().services;
    let mut service_names = Vec::new();
    if services.contains(coral_core::contact::Services::HTTP) {
        service_names.push("http".to_owned());
    }
    if services.contains(coral_core::contact::Services::DNS) {
        service_names.push("dns".to_owned());
    }
    NodeStatus {
        id: node.id().to_string(),
        addr: node.contact().addr,
        seed,
        uptime_secs: now.since_epoch().as_secs_f64(),
        services: service_names,
        levels,
        stats: CoreCounters {
            rpcs_in: rpc(&s.rpcs_in),
            rpcs_out: rpc(&s.rpcs_out),
            malformed: s.malformed,
            unsolicited: s.unsolicited,
            timeouts: s.timeouts,
            retransmits: s.retransmits,
            hedges: s.hedges,
            lookups: s.lookups,
            lookup_hops: s.lookup_hops,
            puts_kept: s.puts_kept,
            refused_full: s.refused_full,
            refused_loaded: s.refused_loaded,
            cluster_switches: s.cluster_switches,
            contacts_dropped: s.contacts_dropped,
            inflight_overflow: s.inflight_overflow,
        },
        store: StoreCounters {
            keys: st.keys,
            values: st.values,
            stored: st.stored,
            refreshed: st.refreshed,
            refused_full: st.refused_full,
            refused_loaded: st.refused_loaded,
            refused_invalid: st.refused_invalid,
            untracked_puts: st.untracked_puts,
            evicted: st.evicted,
            evicted_keys: st.evicted_keys,
            expired: st.expired,
        },
        adapter,
        ops_in_flight: node.ops_in_flight(),
        waiting_callers: waiting,
        publications: node.publications(),
        dns: None,
    }
}

struct Prom<'a> {
    out: &'a mut String,
}

impl Prom<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    fn labelled(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
    }
}

/// Prometheus text exposition (format 0.0.4) of a snapshot.
pub fn prometheus(s: &NodeStatus) -> String {
    let mut out = String::with_capacity(4096);
    let mut p = Prom { out: &mut out };
    p.family("coral_node_info", "gauge", "The node's id and RPC address.");
    p.labelled(
        "coral_node_info",
        &format!("id=\"{}\",addr=\"{}\"", s.id, s.addr),
        1,
    );
    p.one(
        "coral_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        s.uptime_secs,
    );
    for (dir, counts) in [("in", &s.stats.rpcs_in), ("out", &s.stats.rpcs_out)] {
        let name = format!("coral_rpcs_{dir}_total");
        p.family(
            &name,
            "counter",
            &format!("RPC messages {dir}, by message type."),
        );
        for (t, v) in counts.by_type() {
            p.labelled(&name, &format!("type=\"{t}\""), v);
        }
    }
    let c = &s.stats;
    let counters: [(&str, &str, u64); 13] = [
        (
            "coral_malformed_datagrams_total",
            "Datagrams that failed to decode and were dropped.",
            c.malformed,
        ),
        (
            "coral_unsolicited_replies_total",
            "Replies that matched no pending request.",
            c.unsolicited,
        ),
        (
            "coral_rpc_timeouts_total",
            "RPC attempts that timed out.",
            c.timeouts,
        ),
        (
            "coral_rpc_retransmits_total",
            "Requests sent again after a timeout.",
            c.retransmits,
        ),
        (
            "coral_rpc_hedges_total",
            "Extra RPCs sent because a reply was late.",
            c.hedges,
        ),
        (
            "coral_lookups_total",
            "Lookups finished (one per level walked).",
            c.lookups,
        ),
        (
            "coral_lookup_hops_total",
            "Sum of hops over finished lookups.",
            c.lookup_hops,
        ),
        (
            "coral_puts_kept_total",
            "Puts this node kept because it was loaded for their key.",
            c.puts_kept,
        ),
        (
            "coral_refused_full_total",
            "Stores refused because this node was full.",
            c.refused_full,
        ),
        (
            "coral_refused_loaded_total",
            "Stores refused because this node was full and loaded.",
            c.refused_loaded,
        ),
        (
            "coral_cluster_switches_total",
            "Cluster switches at any level.",
            c.cluster_switches,
        ),
        (
            "coral_contacts_dropped_total",
            "Contacts dropped after repeated RPC failures.",
            c.contacts_dropped,
        ),
        (
            "coral_inflight_overflow_total",
            "Requests dropped because too many RPCs were in flight.",
            c.inflight_overflow,
        ),
    ];
    for (name, help, v) in counters {
        p.one(name, "counter", help, v);
    }
    p.one(
        "coral_store_keys",
        "gauge",
        "Keys held in the sloppy store.",
        s.store.keys,
    );
    p.one(
        "coral_store_values",
        "gauge",
        "Values held in the sloppy store.",
        s.store.values,
    );
    p.one(
        "coral_store_stored_total",
        "counter",
        "New values stored.",
        s.store.stored,
    );
    p.one(
        "coral_store_evicted_total",
        "counter",
        "Values evicted before expiry to make room.",
        s.store.evicted,
    );
    p.one(
        "coral_store_expired_total",
        "counter",
        "Values removed because their TTL ran out.",
        s.store.expired,
    );
    p.family(
        "coral_routing_contacts",
        "gauge",
        "Contacts in the routing table, by level.",
    );
    for l in &s.levels {
        p.labelled(
            "coral_routing_contacts",
            &format!("level=\"{}\"", l.level),
            l.routing_len,
        );
    }
    p.family(
        "coral_cluster_size",
        "gauge",
        "The node's estimate of its cluster's size, by level.",
    );
    for l in &s.levels {
        p.labelled(
            "coral_cluster_size",
            &format!("level=\"{}\"", l.level),
            l.cluster_size,
        );
    }
    // The cluster id in its own info series, so the size series keeps one
    // label set when the node switches clusters.
    p.family(
        "coral_cluster_info",
        "gauge",
        "The cluster this node belongs to, by level.",
    );
    for l in &s.levels {
        p.labelled(
            "coral_cluster_info",
            &format!("level=\"{}\",cluster=\"{}\"", l.level, l.cluster),
            1,
        );
    }
    p.one(
        "coral_ops_in_flight",
        "gauge",
        "Application operations running in the core.",
        s.ops_in_flight,
    );
    p.one(
        "coral_publications",
        "gauge",
        "Values this node keeps alive in the DSHT.",
        s.publications,
    );
    let a = &s.adapter;
    for (name, help, v) in [
        (
            "coral_datagrams_in_total",
            "Datagrams received on the RPC socket.",
            a.datagrams_in,
        ),
        (
            "coral_datagrams_out_total",
            "Datagrams sent on the RPC socket.",
            a.datagrams_out,
        ),
        (
            "coral_datagrams_out_gso_total",
            "Datagrams sent on the RPC socket within GSO sends.",
            a.datagrams_out_gso,
        ),
        (
            "coral_send_errors_total",
            "Failed sends on the RPC socket.",
            a.send_errors,
        ),
        (
            "coral_recv_errors_total",
            "Failed receives on the RPC socket.",
            a.recv_errors,
        ),
    ] {
        p.one(name, "counter", help, v);
    }
    for c in s.dns.iter().flatten() {
        p.one(
            &format!("coral_dns_{}_total", c.name),
            "counter",
            &c.help,
            c.value,
        );
    }
    out
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// A small self-contained HTML status page.
pub fn html(s: &NodeStatus) -> String {
    let mut o = String::with_capacity(8192);
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>coral node {short}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head><body>\
         <h1>Coral node</h1><p>id <code>{id}</code><br>RPC <code>{addr}</code><br>\
         seed <code>{seed}</code> &middot; up {up:.0} s &middot; \
         <a href=\"/metrics\">/metrics</a> &middot; <a href=\"/status.json\">/status.json</a></p>",
        short = esc(s.id.get(..12).unwrap_or(&s.id)),
        id = esc(&s.id),
        addr = s.addr,
        seed = s.seed,
        up = s.uptime_secs,
    );
    o.push_str(
        "<h2>Levels</h2><table><tr><th>level</th><th>diameter</th><th>cluster</th>\
         <th>size</th><th>age (s)</th><th>routing table</th></tr>",
    );
    for l in &s.levels {
        let d = l
            .diameter_ms
            .map_or_else(|| "unbounded".to_owned(), |d| format!("{d} ms"));
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            l.level,
            d,
            esc(l.cluster.get(..12).unwrap_or(&l.cluster)),
            l.cluster_size,
            l.cluster_age_secs,
            l.routing_len
        );
    }
    o.push_str("</table><h2>Counters</h2><table>");
    let c = &s.stats;
    let mut row = |k: &str, v: String| {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    for (dir, counts) in [("in", &c.rpcs_in), ("out", &c.rpcs_out)] {
        let v: Vec<String> = counts
            .by_type()
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        row(&format!("RPCs {dir}"), v.join(", "));
    }
    row("malformed datagrams", c.malformed.to_string());
    row("timeouts", c.timeouts.to_string());
    row("retransmits", c.retransmits.to_string());
    row(
        "lookups / hops",
        format!("{} / {}", c.lookups, c.lookup_hops),
    );
    row(
        "refused full / loaded",
        format!("{} / {}", c.refused_full, c.refused_loaded),
    );
    row("cluster switches", c.cluster_switches.to_string());
    row("contacts dropped", c.contacts_dropped.to_string());
    row(
        "store keys / values",
        format!("{} / {}", s.store.keys, s.store.values),
    );
    row("publications", s.publications.to_string());
    row("operations in flight", s.ops_in_flight.to_string());
    row(
        "datagrams in / out",
        format!("{} / {}", s.adapter.datagrams_in, s.adapter.datagrams_out),
    );
    o.push_str("</table>");
    for l in &s.levels {
        let _ = write!(
            o,
            "<h3>Level {} contacts ({} of {})</h3><ul>",
            l.level,
            l.contacts.len(),
            l.routing_len
        );
        for c in &l.contacts {
            let _ = write!(
                o,
                "<li><code>{}</code> {}</li>",
                esc(c.id.get(..12).unwrap_or(&c.id)),
                c.addr
            );
        }
        o.push_str("</ul>");
    }
    o.push_str("</body></html>\n");
    o
}

/// A human summary for `coral status`.
pub fn text(s: &NodeStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "node      {}", s.id);
    let _ = writeln!(o, "rpc       {}", s.addr);
    let _ = writeln!(o, "seed      {}", s.seed);
    let _ = writeln!(o, "uptime    {:.0} s", s.uptime_secs);
    let services = if s.services.is_empty() {
        "dsht only".to_owned()
    } else {
        s.services.join(", ")
    };
    let _ = writeln!(o, "services  {services}");
    let _ = writeln!(
        o,
        "\nlevel  diameter    cluster        size  age(s)  routing"
    );
    for l in &s.levels {
        let d = l
            .diameter_ms
            .map_or_else(|| "unbounded".to_owned(), |d| format!("{d} ms"));
        let _ = writeln!(
            o,
            "{:<5}  {:<10}  {:<12}  {:>5}  {:>6}  {:>7}",
            l.level,
            d,
            l.cluster.get(..12).unwrap_or(&l.cluster),
            l.cluster_size,
            l.cluster_age_secs,
            l.routing_len
        );
    }
    let st = &s.store;
    let _ = writeln!(
        o,
        "\nstore     {} keys, {} values ({} stored, {} expired, {} evicted)",
        st.keys, st.values, st.stored, st.expired, st.evicted
    );
    let c = &s.stats;
    let total = |r: &RpcCounters| r.by_type().iter().map(|(_, n)| n).sum::<u64>();
    let _ = writeln!(
        o,
        "rpcs      {} in, {} out, {} timeouts, {} malformed",
        total(&c.rpcs_in),
        total(&c.rpcs_out),
        c.timeouts,
        c.malformed
    );
    let _ = writeln!(
        o,
        "lookups   {} ({} hops), refused full {} / loaded {}, cluster switches {}",
        c.lookups, c.lookup_hops, c.refused_full, c.refused_loaded, c.cluster_switches
    );
    if let Some(d) = &s.dns {
        let count = |name: &str| d.iter().find(|c| c.name == name).map_or(0, |c| c.value);
        let _ = writeln!(
            o,
            "dns       {} queries, answers at level 0/1/2 {}/{}/{}, {} fallback, {} refused, {} rate-limited, {} probes",
            count("queries"),
            count("answers_level_0"),
            count("answers_level_1"),
            count("answers_level_2"),
            count("fallback_answers"),
            count("refused"),
            count("rate_limited"),
            count("probes")
        );
    }
    o
}
