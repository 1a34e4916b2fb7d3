//! The `coral node` configuration file (TOML) and its embedded defaults.
//!
//! Every section and key is optional; a missing one takes the default that
//! `coral.example.toml` (next to this crate's `Cargo.toml`) documents. An
//! unknown key is an error that names it, so a typo never silently falls
//! back to a default. The DSHT tunables map one to one onto
//! [`coral_core::config::DshtConfig`], whose docs give each default's reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coral_core::config::{Config, DshtConfig, LevelConfig};
use serde::{Deserialize, Serialize};

use crate::runtime::NodeOptions;

/// The example configuration shipped with the crate; it documents every key.
pub const EXAMPLE: &str = include_str!("../coral.example.toml");

/// Most bounded levels below the global one (the wire carries eight levels).
const MAX_BOUNDED_LEVELS: usize = 7;

/// A configuration that cannot be used; the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A key has a value the node cannot use.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The dotted key, e.g. `levels.diameters_ms`.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Addresses, bootstrap peers and identity.
    pub node: NodeSection,
    /// The clustering hierarchy.
    pub levels: LevelsSection,
    /// DSHT tunables.
    pub dsht: DshtSection,
    /// Kernel socket buffers.
    pub socket: SocketSection,
    /// The HTTP proxy's cache and connection limits.
    pub proxy: ProxySection,
    /// The DNS redirector.
    pub dns: DnsSection,
    /// Logging.
    pub log: LogSection,
}

/// `[node]`: where the node listens and whom it joins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// UDP address of the DSHT RPC socket.
    pub rpc: SocketAddr,
    /// TCP address of the admin endpoint (`/`, `/metrics`, `/status.json`).
    pub admin: SocketAddr,
    /// TCP address of the HTTP proxy.
    pub http: SocketAddr,
    /// UDP and TCP address of the DNS server (`[dns]` configures it).
    pub dns: SocketAddr,
    /// RPC addresses of nodes to join through; empty starts a new network.
    pub join: Vec<SocketAddr>,
    /// Directory for the node's persistent identity (and later its cache).
    pub data_dir: Option<PathBuf>,
    /// A fixed RNG seed, to replay a run; normally drawn from the OS.
    pub seed: Option<u64>,
    /// The Coral domain appended to origin host names.
    pub coral_domain: String,
    /// Private networks the HTTP proxy may fetch origins from (CIDR, e.g.
    /// `"127.0.0.1/32"`); everything private is refused otherwise (SSRF).
    pub allow_origins: Vec<String>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            rpc: SocketAddr::from(([127, 0, 0, 1], 8091)),
            admin: SocketAddr::from(([127, 0, 0, 1], 8092)),
            http: SocketAddr::from(([127, 0, 0, 1], 8090)),
            dns: SocketAddr::from(([127, 0, 0, 1], 5353)),
            join: Vec::new(),
            data_dir: None,
            seed: None,
            coral_domain: crate::coralize::DEFAULT_DOMAIN.to_owned(),
            allow_origins: Vec::new(),
        }
    }
}

/// `[levels]`: the latency hierarchy below the global level (spec §4.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LevelsSection {
    /// Cluster diameters in milliseconds, loosest first; the global level 0
    /// is always present. The paper uses `[60, 20]`.
    pub diameters_ms: Vec<u64>,
}

impl Default for LevelsSection {
    fn default() -> Self {
        Self {
            diameters_ms: vec![60, 20],
        }
    }
}

/// `[socket]`: kernel buffer sizes of the RPC socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketSection {
    /// `SO_RCVBUF` in bytes (the kernel may cap it); 0 keeps the OS default.
    pub recv_buffer_bytes: usize,
    /// `SO_SNDBUF` in bytes; 0 keeps the OS default.
    pub send_buffer_bytes: usize,
    /// Send runs of RPC datagrams to one peer with UDP segmentation
    /// offload (`UDP_SEGMENT`) where the kernel allows (coral-mio).
    pub gso: bool,
}

impl Default for SocketSection {
    fn default() -> Self {
        Self {
            recv_buffer_bytes: 4 << 20,
            send_buffer_bytes: 1 << 20,
            gso: true,
        }
    }
}

/// `[proxy]`: the HTTP proxy's cache and connection limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySection {
    /// Memory for cached objects, in MiB.
    pub cache_mib: u64,
    /// Largest object cached, in MB; larger responses are streamed uncached.
    pub max_object_mb: u64,
    /// Most client connections at once; more are answered 503.
    pub max_connections: usize,
    /// Most connections at once from one client address; more get 503.
    pub max_connections_per_client: usize,
    /// Seconds a client has to send a whole request head (slowloris).
    pub header_timeout_secs: u64,
    /// Seconds an idle keep-alive connection is kept.
    pub idle_timeout_secs: u64,
    /// Forward methods other than GET and HEAD to the origin, uncached,
    /// invalidating the stored object (RFC 9111 §4.4). Only for an
    /// operator running Coral in front of their own site; CONNECT is
    /// always refused.
    pub pass_through_methods: bool,
    /// Largest request body forwarded by pass-through, in MB (413 beyond).
    pub max_upload_mb: u64,
    /// Disk for cached objects under `node.data_dir/http-cache`, in MiB;
    /// they survive a restart. Used only with a data directory; 0 turns
    /// the disk tier off.
    pub disk_mib: u64,
    /// Idle keep-alive connections kept per origin or peer address.
    pub upstream_idle_per_address: usize,
    /// Idle keep-alive connections kept in all (0: no reuse).
    pub upstream_idle_total: usize,
    /// Seconds an idle upstream connection is kept.
    pub upstream_idle_timeout_secs: u64,
    /// A non-recursive proxy (spec §6.3): DNS servers name it only to
    /// resolvers in its own /24 (/48), for a node with little upstream
    /// bandwidth.
    pub local_only: bool,
}

impl Default for ProxySection {
    fn default() -> Self {
        let http = coral_core::http::HttpConfig::default();
        let opts =
            crate::proxy::ProxyOptions::new(SocketAddr::from(([127, 0, 0, 1], 8090)), http.clone());
        Self {
            cache_mib: (http.cache_bytes >> 20) as u64,
            max_object_mb: http.max_object_bytes / 1_000_000,
            max_connections: opts.max_connections,
            max_connections_per_client: opts.max_connections_per_client,
            header_timeout_secs: opts.header_timeout.as_secs(),
            idle_timeout_secs: opts.idle_timeout.as_secs(),
            pass_through_methods: http.pass_through_methods,
            max_upload_mb: http.max_upload_bytes / 1_000_000,
            // Four times the memory budget: a restart or a working set
            // larger than memory is served without the origin.
            disk_mib: 1024,
            upstream_idle_per_address: opts.pool.per_addr,
            upstream_idle_total: opts.pool.total,
            upstream_idle_timeout_secs: opts.pool.idle_timeout.as_secs(),
            local_only: false,
        }
    }
}

/// `[dns]`: the DNS redirector (spec §6) on `node.dns`, UDP and TCP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// Serve DNS at all.
    pub enabled: bool,
    /// The long zone; names end `http.L2.L1.L0.<zone>`.
    pub zone: String,
    /// Proxies (A/AAAA records) per answer.
    pub answer_count: usize,
    /// TTL of proxy records, s.
    pub answer_ttl_secs: u64,
    /// Nameservers (NS records, with glue) per answer.
    pub ns_count: usize,
    /// TTL of NS records, s, once the resolver is measured.
    pub ns_ttl_secs: u64,
    /// How long a resolver's RTT is kept per /24, s; also the least time
    /// between two probes of one prefix.
    pub rtt_cache_secs: u64,
    /// How long a probe waits for the resolver, ms.
    pub probe_timeout_ms: u64,
    /// Whether a probe also traces the last hops toward the resolver.
    pub trace: bool,
    /// How long a first query from an unmeasured resolver may wait for its
    /// probe, hint lookup and the liveness checks of the proxies the hints
    /// name, ms (0: answer at once, at level 0).
    pub hold_budget_ms: u64,
    /// How long a liveness check of a hinted proxy this node has not heard
    /// from counts, s.
    pub checked_ttl_secs: u64,
    /// UDP responses per second per client /24 (0: unlimited).
    pub rrl_rate: u32,
    /// Every this many limited responses one goes out truncated (0: none).
    pub rrl_slip: u32,
    /// Most TCP connections served at once.
    pub tcp_max_connections: usize,
    /// Seconds a TCP connection may sit idle.
    pub tcp_idle_timeout_secs: u64,
}

impl Default for DnsSection {
    fn default() -> Self {
        let c = coral_core::dns::DnsConfig::default();
        let o = crate::dns::DnsOptions::new(SocketAddr::from(([127, 0, 0, 1], 5353)));
        Self {
            enabled: true,
            zone: c.zone,
            answer_count: c.answer_count,
            answer_ttl_secs: c.answer_ttl.as_secs(),
            ns_count: c.ns_count,
            ns_ttl_secs: c.ns_ttl.as_secs(),
            rtt_cache_secs: c.rtt_ttl.as_secs(),
            probe_timeout_ms: o.probe_timeout.as_millis() as u64,
            trace: o.trace,
            hold_budget_ms: c.hold_budget.as_millis() as u64,
            checked_ttl_secs: c.checked_ttl.as_secs(),
            rrl_rate: c.rrl_rate,
            rrl_slip: c.rrl_slip,
            tcp_max_connections: o.tcp_max_connections,
            tcp_idle_timeout_secs: o.tcp_idle_timeout.as_secs(),
        }
    }
}

/// `[log]`: what is logged and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A `tracing` filter, e.g. `info` or `coral_tokio=debug,info`
    /// (the `RUST_LOG` environment variable overrides it).
    pub filter: String,
    /// Log lines as JSON objects instead of human text.
    pub json: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
            json: false,
        }
    }
}

/// `[dsht]`: the DSHT tunables. An unset key keeps the core's default
/// (`coral_core::config::DshtConfig`, which documents each one's reason).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DshtSection {
    /// `k`, contacts per k-bucket.
    pub k: Option<usize>,
    /// `l`, values per key before a node is full.
    pub l: Option<usize>,
    /// `beta`, puts per key per window before a node is loaded.
    pub beta: Option<u32>,
    /// The window `beta` is counted over, in seconds.
    pub beta_window_secs: Option<u64>,
    /// Most keys stored for others.
    pub max_keys: Option<usize>,
    /// Most values stored for others.
    pub max_values: Option<usize>,
    /// Longest TTL accepted, in seconds.
    pub max_ttl_secs: Option<u64>,
    /// Lower bound of the RPC timeout, in milliseconds.
    pub rpc_timeout_min_ms: Option<u64>,
    /// Upper bound (and initial value) of the RPC timeout, in milliseconds.
    pub rpc_timeout_max_ms: Option<u64>,
    /// Retransmissions before a request fails.
    pub rpc_retries: Option<u8>,
    /// Consecutive failures after which a contact is dropped.
    pub max_failures: Option<u8>,
    /// Seconds after which an untouched bucket is refreshed.
    pub bucket_refresh_secs: Option<u64>,
    /// Seconds between housekeeping ticks.
    pub maintenance_interval_secs: Option<u64>,
    /// Seconds after a join before the node walks toward its own id again.
    pub rejoin_after_secs: Option<u64>,
    /// Seconds between cluster evaluations at each bounded level.
    pub cluster_eval_interval_secs: Option<u64>,
    /// TTL of network hints, in seconds.
    pub hint_ttl_secs: Option<u64>,
    /// Most RPCs in flight.
    pub max_inflight: Option<usize>,
    /// Most application operations running at once.
    pub max_ops: Option<usize>,
    /// Most values this node keeps alive with publish.
    pub max_published: Option<usize>,
}

fn positive(key: &'static str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::Invalid {
            key,
            reason: "must be greater than 0".to_owned(),
        });
    }
    Ok(())
}

impl FileConfig {
    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks the values serde cannot check alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.levels.diameters_ms;
        if d.len() > MAX_BOUNDED_LEVELS {
            return Err(ConfigError::Invalid {
                key: "levels.diameters_ms",
                reason: format!(
                    "at most {MAX_BOUNDED_LEVELS} bounded levels, got {}",
                    d.len()
                ),
            });
        }
        if d.contains(&0) || d.windows(2).any(|w| w[1] >= w[0]) {
            return Err(ConfigError::Invalid {
                key: "levels.diameters_ms",
                reason: format!("diameters must be positive and strictly decreasing, got {d:?}"),
            });
        }
        let s = &self.dsht;
        let checks: [(&'static str, Option<u64>); 11] = [
            ("dsht.k", s.k.map(|v| v as u64)),
            ("dsht.l", s.l.map(|v| v as u64)),
            ("dsht.beta", s.beta.map(u64::from)),
            ("dsht.beta_window_secs", s.beta_window_secs),
            ("dsht.max_keys", s.max_keys.map(|v| v as u64)),
            ("dsht.max_values", s.max_values.map(|v| v as u64)),
            ("dsht.rpc_timeout_min_ms", s.rpc_timeout_min_ms),
            (
                "dsht.maintenance_interval_secs",
                s.maintenance_interval_secs,
            ),
            (
                "dsht.cluster_eval_interval_secs",
                s.cluster_eval_interval_secs,
            ),
            ("dsht.max_inflight", s.max_inflight.map(|v| v as u64)),
            ("dsht.max_ops", s.max_ops.map(|v| v as u64)),
        ];
        for (key, v) in checks {
            if let Some(v) = v {
                positive(key, v)?;
            }
        }
        let d = DshtConfig::default();
        let min = s
            .rpc_timeout_min_ms
            .map_or(d.rpc_timeout_min, Duration::from_millis);
        let max = s
            .rpc_timeout_max_ms
            .map_or(d.rpc_timeout_max, Duration::from_millis);
        if max < min {
            return Err(ConfigError::Invalid {
                key: "dsht.rpc_timeout_max_ms",
                reason: format!(
                    "{} ms is below the RPC timeout minimum of {} ms",
                    max.as_millis(),
                    min.as_millis()
                ),
            });
        }
        self.http_config()?;
        for (key, v) in [
            ("dns.answer_count", self.dns.answer_count as u64),
            ("dns.ns_count", self.dns.ns_count as u64),
            ("dns.answer_ttl_secs", self.dns.answer_ttl_secs),
            ("dns.rtt_cache_secs", self.dns.rtt_cache_secs),
            ("dns.probe_timeout_ms", self.dns.probe_timeout_ms),
            (
                "dns.tcp_max_connections",
                self.dns.tcp_max_connections as u64,
            ),
            ("dns.tcp_idle_timeout_secs", self.dns.tcp_idle_timeout_secs),
        ] {
            positive(key, v)?;
        }
        self.dns_options()?;
        if self.node.coral_domain.trim_matches('.').is_empty() {
            return Err(ConfigError::Invalid {
                key: "node.coral_domain",
                reason: "must be a domain name such as nyud.net".to_owned(),
            });
        }
        Ok(())
    }

    /// The HTTP proxy's configuration: the core's defaults, this node's
    /// Coral domain and origin allow-list.
    pub fn http_config(&self) -> Result<coral_core::http::HttpConfig, ConfigError> {
        let mut allow = Vec::new();
        for a in &self.node.allow_origins {
            allow.push(a.parse().map_err(|reason| ConfigError::Invalid {
                key: "node.allow_origins",
                reason,
            })?);
        }
        let mut suffixes = coral_core::http::HttpConfig::default().suffixes;
        let mine = self
            .node
            .coral_domain
            .trim_matches('.')
            .to_ascii_lowercase();
        if !suffixes.contains(&mine) {
            suffixes.insert(0, mine);
        }
        let cache_bytes = usize::try_from(self.proxy.cache_mib)
            .ok()
            .and_then(|m| m.checked_mul(1 << 20))
            .ok_or_else(|| ConfigError::Invalid {
                key: "proxy.cache_mib",
                reason: format!("{} MiB does not fit this machine", self.proxy.cache_mib),
            })?;
        let max_object_bytes =
            self.proxy
                .max_object_mb
                .checked_mul(1_000_000)
                .ok_or_else(|| ConfigError::Invalid {
                    key: "proxy.max_object_mb",
                    reason: format!("{} MB is too large", self.proxy.max_object_mb),
                })?;
        let max_upload_bytes =
            self.proxy
                .max_upload_mb
                .checked_mul(1_000_000)
                .ok_or_else(|| ConfigError::Invalid {
                    key: "proxy.max_upload_mb",
                    reason: format!("{} MB is too large", self.proxy.max_upload_mb),
                })?;
        Ok(coral_core::http::HttpConfig {
            allow_origins: allow,
            suffixes,
            cache_bytes,
            max_object_bytes,
            pass_through_methods: self.proxy.pass_through_methods,
            max_upload_bytes,
            ..coral_core::http::HttpConfig::default()
        })
    }

    /// The proxy's options: listening on `node.http`, the core's HTTP
    /// configuration, and the `[proxy]` connection limits.
    pub fn proxy_options(&self) -> Result<crate::proxy::ProxyOptions, ConfigError> {
        let p = &self.proxy;
        for (key, v) in [
            ("proxy.max_connections", p.max_connections),
            (
                "proxy.max_connections_per_client",
                p.max_connections_per_client,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        let mut o = crate::proxy::ProxyOptions::new(self.node.http, self.http_config()?);
        o.max_connections = p.max_connections;
        o.max_connections_per_client = p.max_connections_per_client;
        o.header_timeout = Duration::from_secs(p.header_timeout_secs.max(1));
        o.idle_timeout = Duration::from_secs(p.idle_timeout_secs.max(1));
        o.pool = crate::proxy::pool::PoolOptions {
            per_addr: p.upstream_idle_per_address,
            total: p.upstream_idle_total,
            idle_timeout: Duration::from_secs(p.upstream_idle_timeout_secs),
        };
        if let (Some(dir), true) = (&self.node.data_dir, p.disk_mib > 0) {
            let budget_bytes =
                p.disk_mib
                    .checked_mul(1 << 20)
                    .ok_or_else(|| ConfigError::Invalid {
                        key: "proxy.disk_mib",
                        reason: format!("{} MiB is too large", p.disk_mib),
                    })?;
            o.disk = Some(crate::proxy::disk::DiskOptions {
                dir: dir.join("http-cache"),
                budget_bytes,
            });
        }
        Ok(o)
    }

    /// The core's configuration with the given RNG seed.
    pub fn core_config(&self, seed: u64) -> Config {
        let s = &self.dsht;
        let mut dsht = DshtConfig::default();
        let secs = Duration::from_secs;
        let ms = Duration::from_millis;
        if let Some(v) = s.k {
            dsht.k = v;
        }
        if let Some(v) = s.l {
            dsht.l = v;
        }
        if let Some(v) = s.beta {
            dsht.beta = v;
        }
        if let Some(v) = s.beta_window_secs {
            dsht.beta_window = secs(v);
        }
        if let Some(v) = s.max_keys {
            dsht.max_keys = v;
        }
        if let Some(v) = s.max_values {
            dsht.max_values = v;
        }
        if let Some(v) = s.max_ttl_secs {
            dsht.max_ttl = secs(v);
        }
        if let Some(v) = s.rpc_timeout_min_ms {
            dsht.rpc_timeout_min = ms(v);
        }
        if let Some(v) = s.rpc_timeout_max_ms {
            dsht.rpc_timeout_max = ms(v);
        }
        if let Some(v) = s.rpc_retries {
            dsht.rpc_retries = v;
        }
        if let Some(v) = s.max_failures {
            dsht.max_failures = v;
        }
        if let Some(v) = s.bucket_refresh_secs {
            dsht.bucket_refresh = secs(v);
        }
        if let Some(v) = s.maintenance_interval_secs {
            dsht.maintenance_interval = secs(v);
        }
        if let Some(v) = s.rejoin_after_secs {
            dsht.rejoin_after = secs(v);
        }
        if let Some(v) = s.cluster_eval_interval_secs {
            dsht.cluster_eval_interval = secs(v);
        }
        if let Some(v) = s.hint_ttl_secs {
            dsht.hint_ttl = secs(v);
        }
        if let Some(v) = s.max_inflight {
            dsht.max_inflight = v;
        }
        if let Some(v) = s.max_ops {
            dsht.max_ops = v;
        }
        if let Some(v) = s.max_published {
            dsht.max_published = v;
        }
        let mut levels = vec![LevelConfig { diameter: None }];
        levels.extend(self.levels.diameters_ms.iter().map(|&ms| LevelConfig {
            diameter: Some(Duration::from_millis(ms)),
        }));
        Config {
            seed,
            levels,
            dsht,
            ..Config::default()
        }
    }

    /// The services a node run from this file advertises: its HTTP proxy
    /// (non-recursive when `proxy.local_only`), and its DNS server when
    /// `dns` is served.
    pub fn services(&self, dns: bool) -> coral_core::contact::Services {
        use coral_core::contact::Services;
        let mut s = Services::HTTP;
        if self.proxy.local_only {
            s = s.with(Services::LOCAL_ONLY);
        }
        if dns {
            s = s.with(Services::DNS);
        }
        s
    }

    /// The DNS server's options, `None` when `dns.enabled` is off. The
    /// alias zone is `node.coral_domain`.
    pub fn dns_options(&self) -> Result<Option<crate::dns::DnsOptions>, ConfigError> {
        let d = &self.dns;
        if !d.enabled {
            return Ok(None);
        }
        let mut o = crate::dns::DnsOptions::new(self.node.dns);
        let alias = self
            .node
            .coral_domain
            .trim_matches('.')
            .to_ascii_lowercase();
        o.server = coral_core::dns::DnsConfig {
            zone: d.zone.trim_matches('.').to_ascii_lowercase(),
            hostmaster: format!("hostmaster.{}", d.zone.trim_matches('.')),
            alias: Some(alias),
            answer_count: d.answer_count,
            answer_ttl: Duration::from_secs(d.answer_ttl_secs),
            ns_count: d.ns_count,
            ns_ttl: Duration::from_secs(d.ns_ttl_secs),
            rtt_ttl: Duration::from_secs(d.rtt_cache_secs),
            rrl_rate: d.rrl_rate,
            rrl_slip: d.rrl_slip,
            hold_budget: Duration::from_millis(d.hold_budget_ms),
            checked_ttl: Duration::from_secs(d.checked_ttl_secs),
            ..o.server
        };
        o.probe_timeout = Duration::from_millis(d.probe_timeout_ms);
        o.trace = d.trace;
        o.recv_buffer_bytes = self.socket.recv_buffer_bytes;
        o.tcp_max_connections = d.tcp_max_connections;
        o.tcp_idle_timeout = Duration::from_secs(d.tcp_idle_timeout_secs);
        let levels = self.levels.diameters_ms.len() + 1;
        coral_core::dns::DnsServer::new(o.server.clone(), levels).map_err(|e| {
            ConfigError::Invalid {
                key: "dns.zone",
                reason: e.to_string(),
            }
        })?;
        Ok(Some(o))
    }

    /// The adapter's options for the node's RPC socket, with the given seed.
    pub fn node_options(&self, seed: u64) -> NodeOptions {
        let mut o = NodeOptions::new(self.core_config(seed), self.node.rpc);
        o.recv_buffer_bytes = self.socket.recv_buffer_bytes;
        o.send_buffer_bytes = self.socket.send_buffer_bytes;
        o.gso = self.socket.gso;
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_section_sets_the_redirector_and_refuses_zero() {
        let text = "[node]\ncoral_domain = \"coral.example\"\n[dns]\nhold_budget_ms = 0\nrrl_rate = 5\nns_count = 4\ntrace = false\n";
        let cfg = FileConfig::parse(text, Path::new("t.toml")).unwrap();
        let o = cfg.dns_options().unwrap().expect("DNS is on by default");
        assert_eq!(o.server.hold_budget, Duration::ZERO);
        assert!(!o.trace, "dns.trace reaches the probes");
        assert!(FileConfig::default().dns_options().unwrap().unwrap().trace);
        assert_eq!((o.server.rrl_rate, o.server.ns_count), (5, 4));
        assert_eq!(
            o.server.alias.as_deref(),
            Some("coral.example"),
            "the alias is the Coral domain"
        );
        assert!(
            cfg.services(true)
                .contains(coral_core::contact::Services::DNS)
        );
        let off = FileConfig::parse("[dns]\nenabled = false\n", Path::new("t.toml")).unwrap();
        assert!(off.dns_options().unwrap().is_none());
        let err = FileConfig::parse("[dns]\nanswer_count = 0\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("dns.answer_count"), "{err}");
        let err =
            FileConfig::parse("[dns]\nzone = \"nyud.net\"\n", Path::new("t.toml")).unwrap_err();
        assert!(
            err.to_string().contains("dns.zone"),
            "the zone may not be the alias: {err}"
        );
    }

    #[test]
    fn proxy_section_sets_the_proxy_limits_and_refuses_zero() {
        let text = "[proxy]\ncache_mib = 8\nmax_object_mb = 2\nmax_connections = 10\n\
                    max_connections_per_client = 3\nheader_timeout_secs = 4\nidle_timeout_secs = 5\n";
        let cfg = FileConfig::parse(text, Path::new("t.toml")).unwrap();
        let o = cfg.proxy_options().unwrap();
        assert_eq!(o.http.cache_bytes, 8 << 20);
        assert_eq!(o.http.max_object_bytes, 2_000_000);
        assert_eq!((o.max_connections, o.max_connections_per_client), (10, 3));
        assert_eq!(o.header_timeout, Duration::from_secs(4));
        assert_eq!(o.idle_timeout, Duration::from_secs(5));
        assert!(!o.http.pass_through_methods, "off unless asked for");
        let cfg = FileConfig::parse(
            "[proxy]\npass_through_methods = true\nmax_upload_mb = 3\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let o = cfg.proxy_options().unwrap();
        assert!(o.http.pass_through_methods);
        assert_eq!(o.http.max_upload_bytes, 3_000_000);
        assert_eq!(o.disk, None, "no data directory, no disk tier");
        assert_eq!(o.pool, crate::proxy::pool::PoolOptions::default());
        let cfg = FileConfig::parse(
            "[node]\ndata_dir = \"/var/lib/coral\"\n[proxy]\ndisk_mib = 2\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let d = cfg.proxy_options().unwrap().disk.unwrap();
        assert_eq!(d.dir, Path::new("/var/lib/coral/http-cache"));
        assert_eq!(d.budget_bytes, 2 << 20);
        let mut off = cfg.clone();
        off.proxy.disk_mib = 0;
        assert_eq!(off.proxy_options().unwrap().disk, None);
        let bad = FileConfig::parse(
            "[proxy]\nmax_connections_per_client = 0\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let e = bad.proxy_options().unwrap_err().to_string();
        assert!(e.contains("proxy.max_connections_per_client"), "{e}");
    }

    #[test]
    fn example_parses_and_documents_the_defaults() {
        let cfg = FileConfig::parse(EXAMPLE, Path::new("coral.example.toml")).unwrap();
        assert_eq!(cfg, FileConfig::default());
    }

    /// Every commented-out `key = value` line of the example is a real key
    /// with a valid value, so the documentation cannot name a key that the
    /// parser would refuse.
    #[test]
    fn example_with_every_key_uncommented_parses() {
        let mut uncommented = 0;
        let text: String = EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    uncommented += 1;
                    format!("{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        assert!(uncommented >= 20, "only {uncommented} commented keys found");
        let cfg = FileConfig::parse(&text, Path::new("uncommented.toml")).unwrap();
        assert_eq!(cfg.node.seed, Some(12345));
        assert!(cfg.node.data_dir.is_some());
        assert!(cfg.dsht.k.is_some() && cfg.dsht.max_published.is_some());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let cfg = FileConfig::parse("", Path::new("empty.toml")).unwrap();
        assert_eq!(cfg, FileConfig::default());
        assert_eq!(cfg.node.rpc, "127.0.0.1:8091".parse().unwrap());
        assert_eq!(cfg.node.admin, "127.0.0.1:8092".parse().unwrap());
        assert_eq!(cfg.node.http, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(cfg.node.dns, "127.0.0.1:5353".parse().unwrap());
        assert!(cfg.node.join.is_empty());
        assert_eq!(cfg.core_config(7).levels.len(), 3);
        assert_eq!(cfg.core_config(7).seed, 7);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = FileConfig::parse("[node]\nrcp = \"127.0.0.1:1\"\n", Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rcp"), "{e}");
        assert!(e.contains("bad.toml"), "{e}");
        let e = FileConfig::parse("[nodes]\n", Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodes"), "{e}");
    }

    #[test]
    fn bad_address_is_named() {
        let e = FileConfig::parse("[node]\nadmin = \"localhost\"\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let e = FileConfig::parse("[levels]\ndiameters_ms = [20, 60]\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("levels.diameters_ms"), "{e}");
        let e = FileConfig::parse("[dsht]\nk = 0\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dsht.k"), "{e}");
    }

    #[test]
    fn dsht_keys_reach_the_core() {
        let cfg = FileConfig::parse(
            "[dsht]\nk = 4\nrpc_timeout_max_ms = 500\n[levels]\ndiameters_ms = []\n",
            Path::new("a.toml"),
        )
        .unwrap();
        let c = cfg.core_config(1);
        assert_eq!(c.dsht.k, 4);
        assert_eq!(c.dsht.rpc_timeout_max, Duration::from_millis(500));
        assert_eq!(c.levels.len(), 1);
    }

    #[test]
    fn unreadable_file_is_named() {
        let e = FileConfig::load(Path::new("/nonexistent/coral.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/coral.toml"), "{e}");
    }
}
