//! Every tunable of a node, with the paper's symbols and the reason for each default.

use std::time::Duration;

use crate::contact::Services;
use crate::dsht::neighbours::NeighbourParams;

/// One level of the clustering hierarchy (spec §4.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LevelConfig {
    /// The cluster's RTT diameter; `None` is unbounded (the global level 0).
    pub diameter: Option<Duration>,
}

/// Configuration of one Coral node.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seed of the node's random generator. Required: the core never reads OS
    /// entropy; adapters draw it and log it so a run can be replayed.
    pub seed: u64,
    /// Services this node advertises to others.
    pub services: Services,
    /// The level hierarchy, level 0 first. Level 0 must be unbounded.
    pub levels: Vec<LevelConfig>,
    /// DSHT parameters.
    pub dsht: DshtConfig,
}

impl LevelConfig {
    /// The global level 0: one cluster of unbounded diameter.
    pub const GLOBAL: Self = Self { diameter: None };

    /// Coral's hierarchy (spec §4.1): level 0 unbounded, level 1 clusters
    /// of 60 ms diameter ("national"), level 2 of 20 ms ("regional").
    pub fn coral_hierarchy() -> Vec<Self> {
        vec![
            Self::GLOBAL,
            Self {
                diameter: Some(Duration::from_millis(60)),
            },
            Self {
                diameter: Some(Duration::from_millis(20)),
            },
        ]
    }
}

impl Default for Config {
    /// Coral's three levels ([`LevelConfig::coral_hierarchy`]) and the DSHT
    /// defaults; no services, seed 0 (adapters must set a seed).
    fn default() -> Self {
        Self {
            seed: 0,
            services: Services::NONE,
            levels: LevelConfig::coral_hierarchy(),
            dsht: DshtConfig::default(),
        }
    }
}

/// Parameters of the distributed sloppy hash table.
#[derive(Clone, Debug)]
pub struct DshtConfig {
    /// `k`, contacts per k-bucket. 8: Coral's clusters are small (spec open question 8).
    pub k: usize,
    /// `l`, long-lived values per key before a node is *full* (spec §3.1, question 1).
    pub l: usize,
    /// `beta`, puts per key per `beta_window` above which a node is *loaded*
    /// (12 per minute, the paper's hot-spot experiment, spec §3.4).
    pub beta: u32,
    /// The sliding window over which `beta` is counted.
    pub beta_window: Duration,
    /// Most keys the store holds for others, over all levels.
    pub max_keys: usize,
    /// Most values the store holds for others, over all levels.
    pub max_values: usize,
    /// Longest value accepted, in bytes (a value must fit a datagram with others).
    pub max_value_len: usize,
    /// Longest TTL accepted; longer puts are clamped.
    pub max_ttl: Duration,
    /// Lower bound of the per-contact RPC timeout (spec open question 9).
    pub rpc_timeout_min: Duration,
    /// Upper bound of the per-contact RPC timeout, and its value before any sample.
    pub rpc_timeout_max: Duration,
    /// Times a request is sent again after timing out before its contact
    /// counts as failed. The spec suggests one retry (open question 9);
    /// at 5% datagram loss the simulator needed two for gets to succeed
    /// 0.99 of the time on every seed tried, and the hedge keeps a walk
    /// moving while a retry waits.
    pub rpc_retries: u8,
    /// A lookup hedges with one extra RPC once its RPC has been out for this
    /// many smoothed RTTs (spec open question 8).
    pub hedge_after_srtts: u32,
    /// Consecutive failed RPCs after which a contact is dropped.
    pub max_failures: u8,
    /// A bucket not touched by a lookup for this long is refreshed.
    pub bucket_refresh: Duration,
    /// How often the node does its housekeeping: size estimates, stale
    /// bucket refreshes, re-joins. 10 s: cheap, and quick enough for the
    /// re-join below.
    pub maintenance_interval: Duration,
    /// A node walks toward its own id again between this long and twice
    /// this long after joining (then every `bucket_refresh`): neighbours
    /// that joined at the same moment did not know each other yet. 20 s:
    /// after a batch of joins has settled.
    pub rejoin_after: Duration,
    /// Most bucket-refresh walks started per housekeeping tick (besides the
    /// re-join walks), so a node waking after a long pause does not flood
    /// the network.
    pub max_refresh_per_tick: usize,
    /// Most never-measured contacts pinged per housekeeping tick for an RTT
    /// sample. 4 per 10 s: a table of ~100 contacts is measured within
    /// minutes at negligible cost.
    pub probes_per_tick: usize,
    /// Most values this node keeps alive with `publish` (hints included).
    pub max_published: usize,
    /// TTL of network hints (spec §5, open question 10: 1 h, refreshed
    /// every 30 min).
    pub hint_ttl: Duration,
    /// How often a node re-evaluates its cluster at each bounded level.
    /// Spec open question 7 suggests 60 s; 20 s (with jitter) lets merges
    /// that cascade through several clusters finish within the issue's
    /// 10-minute budget, and evaluating costs no message. A switch still
    /// needs two agreeing evaluations.
    pub cluster_eval_interval: Duration,
    /// Most contacts a node returns in one reply.
    pub reply_contacts: usize,
    /// Most values a node returns in one get reply.
    pub reply_values: usize,
    /// Most RPCs in flight at once; requests beyond it fail at once.
    pub max_inflight: usize,
    /// Most application operations (get, put, join) running at once.
    pub max_ops: usize,
    /// A get that finds nothing by halving also asks the closest nodes it
    /// knows until this many of the closest have answered: the node closest
    /// to a key may have joined after the value was stored beside it.
    pub get_sweep: usize,
    /// Most RPCs one lookup at one level may send before it gives up.
    pub lookup_max_rpcs: u32,
    /// Latency-near discovery, which finds the members of tight clusters
    /// that XOR routing does not show (used only with bounded levels).
    pub neighbours: NeighbourParams,
}

impl Default for DshtConfig {
    fn default() -> Self {
        Self {
            k: 8,
            l: 4,
            beta: 12,
            beta_window: Duration::from_secs(60),
            // A memory budget for small volunteer boxes: measured at about
            // 24 MiB with every value at `max_value_len` (774 bytes per key
            // with two values each; 65,536 keys and 262,144 values took
            // 81 MiB), so a node with a 256 MiB HTTP cache stays within
            // 256 + 40 MiB. A node holds a 1/N share of every level's keys,
            // so 32,768 keys per node serve tens of millions of cached URLs
            // across a thousand nodes.
            max_keys: 32_768,
            max_values: 65_536,
            max_value_len: 96,
            max_ttl: Duration::from_secs(24 * 3600),
            rpc_timeout_min: Duration::from_millis(100),
            rpc_timeout_max: Duration::from_secs(2),
            rpc_retries: 2,
            hedge_after_srtts: 2,
            max_failures: 3,
            bucket_refresh: Duration::from_secs(15 * 60),
            maintenance_interval: Duration::from_secs(10),
            rejoin_after: Duration::from_secs(20),
            max_refresh_per_tick: 4,
            probes_per_tick: 4,
            max_published: 1024,
            hint_ttl: Duration::from_secs(3600),
            cluster_eval_interval: Duration::from_secs(20),
            reply_contacts: 8,
            reply_values: 8,
            max_inflight: 4096,
            max_ops: 4096,
            get_sweep: 3,
            lookup_max_rpcs: 48,
            neighbours: NeighbourParams::default(),
        }
    }
}
