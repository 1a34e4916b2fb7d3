//! The node's state as coral-tokio's [`NodeStatus`], so `/status.json`,
//! `/metrics`, `/` and `coral status` read the same from either runtime.
//!
//! This is `coral_tokio::status::snapshot`, which coral-tokio keeps
//! `pub(crate)`; once it is `pub` this module is deleted and the driver
//! calls it directly (the one-word change is in the issue note).

use coral_core::Node;
use coral_core::time::Instant as CoreInstant;
use coral_tokio::status::{
    AdapterCounters, ContactStatus, CoreCounters, LevelStatus, MAX_LISTED_CONTACTS, NodeStatus,
    RpcCounters, StoreCounters,
};

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

/// Copies the node's state; `waiting` is the number of callers waiting.
pub(crate) fn snapshot(
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
    }
}
