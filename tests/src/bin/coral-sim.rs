//! `coral-sim`: runs the paper's experiments in the deterministic simulator.
//!
//! ```text
//! coral-sim lookup  --nodes 1000 --keys 200 --seed 1 [--latency sphere|planetlab] [--loss P] [--json]
//! coral-sim hotspot --nodes 500 --minutes 10 --seed 1 [--rate R] [--json]
//! coral-sim clusters (--synthetic 500 | --matrix FILE | --latency planetlab) (--seed 1 | --seeds 1-9) --minutes 30 [--json]
//! coral-sim latency  (--synthetic 500 | --matrix FILE | --latency planetlab) --levels 1|3 --seed 1 [--json]
//! coral-sim nodes    (--synthetic 500 | --matrix FILE | --latency planetlab) --seed 1 [--json]
//! coral-sim dns      (--synthetic 500 | --matrix FILE | --latency planetlab) --seed 1 [--resolvers R] [--queries 3] [--json]
//! ```
//!
//! With `--json` stdout carries exactly one JSON object; progress goes to
//! stderr. The same arguments and seed always print the same result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use coral_tests::dns::{self as dns_sim, DnsParams, MAX_RESOLVERS};
use coral_tests::experiments::{
    self, ClusterParams, HotspotParams, LatencyKind, LookupParams, NetParams,
};
use coral_tests::latency::{PLANETLAB_RTT_PATH, RttMatrix};
use coral_tests::locality::{self, LatencyParams, NodesParams};

#[derive(Parser, Debug)]
#[command(
    name = "coral-sim",
    about = "Coral DSHT experiments on a simulated network"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N nodes join, K keys are put from random nodes, then every node gets
    /// random keys among them; reports success rate, hops and latency.
    Lookup {
        /// Number of nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Number of distinct keys put.
        #[arg(long, default_value_t = 200)]
        keys: usize,
        /// Simulation seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Gets issued by every node.
        #[arg(long, default_value_t = 1)]
        gets_per_node: usize,
        /// Latency model.
        #[arg(long, value_enum, default_value_t = LatencyKind::Sphere)]
        latency: LatencyKind,
        /// Probability that a datagram is lost.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// The hot-spot experiment (spec §3.4): every node puts and gets one key
    /// at a fixed rate; reports the put traffic at the nodes closest to it.
    Hotspot {
        /// Number of nodes.
        #[arg(long, default_value_t = 500)]
        nodes: usize,
        /// Virtual minutes of load.
        #[arg(long, default_value_t = 10)]
        minutes: u32,
        /// Simulation seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Puts per node per second, and as many gets.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// TTL of every put, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Latency model.
        #[arg(long, value_enum, default_value_t = LatencyKind::Sphere)]
        latency: LatencyKind,
        /// Probability that a datagram is lost.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Latency clusters (spec §4): nodes with levels ∞ / 60 ms / 20 ms join
    /// from a cold start and run idle; every node's clusters are sampled
    /// every 10 virtual s. Reports per level the clusters, their purity and
    /// coverage, when the network converged and how often nodes switch after.
    Clusters {
        #[command(flatten)]
        net: NetArgs,
        /// Virtual minutes from the cold start (joins included).
        #[arg(long, default_value_t = 30)]
        minutes: u32,
        /// Run these seeds instead of --seed (`1-9`, `1,4,7`, or both, as
        /// `1-3,8`), as many at once as there are CPUs, and report how many
        /// meet each of issue 3's goals.
        #[arg(long, value_parser = parse_seeds)]
        seeds: Option<SeedList>,
    },
    /// Get latency for nearby-held objects (issue 3): the network settles
    /// with 1 level or 3 (∞ / 60 ms / 20 ms), every node puts a few objects,
    /// then every node gets objects held by a node within 20 ms of it.
    /// Reports get latency p50/p96 and the level each get was answered at.
    Latency {
        #[command(flatten)]
        net: NetArgs,
        /// Virtual minutes from the cold start (joins included) before the
        /// workload, so that clusters have formed.
        #[arg(long, default_value_t = 15)]
        minutes: u32,
        /// Levels every node runs: 1 (global only), 2 (∞ / 60 ms) or 3 (∞ / 60 ms / 20 ms).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
        levels: u8,
        /// Objects every node puts.
        #[arg(long, default_value_t = 4)]
        objects: usize,
        /// Gets every node with a holder within --near-ms issues.
        #[arg(long, default_value_t = 2)]
        gets: usize,
        /// A get's object is held by a node at most this RTT (ms) from the client.
        #[arg(long, default_value_t = 20)]
        near_ms: u64,
    },
    /// nodes() proxy choice (issue 3): every node publishes its prefix and
    /// router hints; for random targets (resolvers at a node's host), a
    /// random other member of the target's level-2 cluster runs
    /// find_nodes_via(2, 3, target, routers toward it, http); reports
    /// RTT(target, answer) over RTT(target, nearest other node).
    Nodes {
        #[command(flatten)]
        net: NetArgs,
        /// Virtual minutes from the cold start (joins included) before the
        /// queries, so that clusters have formed.
        #[arg(long, default_value_t = 15)]
        minutes: u32,
        /// Targets queried.
        #[arg(long, default_value_t = 200)]
        targets: usize,
    },
    /// The DNS redirector (issue 6): every node runs a DNS server; resolvers
    /// at places without a node (extra points on the sphere, or hosts of the
    /// matrix left without a node) query a random primary Coral nameserver,
    /// then follow the NS records handed back; reports per query
    /// RTT(resolver, proxy returned) over RTT(resolver, nearest proxy), and
    /// how many resolvers with a DNS node within 20 ms end at a level-2
    /// nameserver.
    Dns {
        #[command(flatten)]
        net: NetArgs,
        /// Virtual minutes from the cold start (joins included) before the
        /// hints are published and the queries begin.
        #[arg(long, default_value_t = 15)]
        minutes: u32,
        /// Resolvers (default: 200 on the sphere; on a matrix a fifth of the
        /// hosts, the nodes taking the rest unless --nodes says otherwise).
        #[arg(long)]
        resolvers: Option<usize>,
        /// Queries per resolver.
        #[arg(long, default_value_t = 3)]
        queries: usize,
        /// Seconds between a resolver's queries (longer than the 30 s A TTL).
        #[arg(long, default_value_t = 60)]
        gap: u64,
        /// Nameservers of the zone apex every resolver starts with.
        #[arg(long, default_value_t = 10)]
        primaries: usize,
        /// How long a server may hold a query from a resolver it has not
        /// measured, ms (default: the server's, 500).
        #[arg(long)]
        hold_ms: Option<u64>,
    },
}

/// The network of the cluster and locality experiments.
#[derive(clap::Args, Debug)]
struct NetArgs {
    /// N nodes on the synthetic sphere (the default, 500).
    #[arg(long, conflicts_with_all = ["matrix", "latency"])]
    synthetic: Option<usize>,
    /// An RTT matrix file; one node per host unless --nodes says otherwise.
    #[arg(long, conflicts_with = "latency")]
    matrix: Option<PathBuf>,
    /// `planetlab` is --matrix with the shipped PlanetLab file; `sphere`
    /// is --synthetic.
    #[arg(long, value_enum)]
    latency: Option<LatencyKind>,
    /// Node count for --matrix/--latency (default: one per host, or 500 on the sphere).
    #[arg(long)]
    nodes: Option<usize>,
    /// Simulation seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

impl NetArgs {
    /// The network as the cluster experiment builds it, three levels,
    /// run for `minutes` virtual minutes from the cold start.
    fn params(&self, minutes: u32) -> Result<ClusterParams> {
        self.params_for(self.seed, minutes)
    }

    /// The RTT matrix file asked for (`--matrix`, or the shipped PlanetLab
    /// one for `--latency planetlab`); `None` for the synthetic sphere.
    fn matrix_path(&self) -> Option<PathBuf> {
        match (&self.matrix, self.latency) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(LatencyKind::Planetlab)) => Some(PathBuf::from(PLANETLAB_RTT_PATH)),
            (None, _) => None,
        }
    }

    /// [`Self::params`] with another seed.
    fn params_for(&self, seed: u64, minutes: u32) -> Result<ClusterParams> {
        if minutes == 0 {
            bail!("--minutes must be at least 1");
        }
        let matrix = self.matrix_path();
        let p = match matrix {
            Some(path) => {
                let m = RttMatrix::load(&path)
                    .with_context(|| format!("loading {}", path.display()))?;
                let n = self.nodes.unwrap_or(m.len());
                let name = path.display().to_string();
                ClusterParams::matrix(Arc::new(m), name, n, seed, minutes)
            }
            None => ClusterParams::synthetic(
                self.synthetic.or(self.nodes).unwrap_or(500),
                seed,
                minutes,
            ),
        };
        check(p.nodes, 0.0)?;
        Ok(p)
    }
}

/// The seeds of `--seeds`, never empty.
#[derive(Clone, Debug)]
struct SeedList(Vec<u64>);

/// `1-9`, `1,4,7` or a mix (`1-3,8`): at most 1000 seeds.
fn parse_seeds(s: &str) -> Result<SeedList, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let num = |x: &str| {
            x.parse::<u64>()
                .map_err(|_| format!("not a seed or a range of seeds: {part:?}"))
        };
        let (a, b) = (num(a)?, num(b)?);
        if a > b {
            return Err(format!("empty range {part:?}"));
        }
        if b - a >= 1000 || out.len() as u64 + (b - a) >= 1000 {
            return Err("at most 1000 seeds".to_owned());
        }
        out.extend(a..=b);
    }
    Ok(SeedList(out))
}

/// Runs the cluster experiment once per seed, as many at once as there
/// are CPUs; the runs come back in the order of `seeds`.
fn cluster_seeds(
    net: &NetArgs,
    seeds: &[u64],
    minutes: u32,
) -> Result<Vec<experiments::ClusterReport>> {
    let params = seeds
        .iter()
        .map(|&s| net.params_for(s, minutes))
        .collect::<Result<Vec<_>>>()?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(vec![None; params.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(params.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = params.get(i) else {
                        break;
                    };
                    let r = experiments::clusters(p);
                    eprintln!("seed {}: done", p.seed);
                    if let Ok(mut d) = done.lock() {
                        d[i] = Some(r);
                    }
                }
            });
        }
    });
    let done = done
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a run panicked"))?;
    done.into_iter()
        .zip(seeds)
        .map(|(r, s)| r.with_context(|| format!("seed {s} did not finish")))
        .collect()
}

fn check(nodes: usize, loss: f64) -> Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !(0.0..=1.0).contains(&loss) {
        bail!("--loss must be within [0, 1], got {loss}");
    }
    Ok(())
}

/// Prints a finished experiment: the JSON object alone on stdout with
/// `--json`, else the human summary; the wall time goes to stderr.
fn report(
    what: &str,
    wall: std::time::Instant,
    json: bool,
    r: &impl serde::Serialize,
    human: String,
) -> Result<()> {
    eprintln!("{what}: done in {:.1} s wall", wall.elapsed().as_secs_f64());
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{human}");
    }
    Ok(())
}

impl NetArgs {
    /// The network of the DNS experiment and its resolver count: on a
    /// matrix the hosts are split between nodes and resolvers.
    fn dns_params(&self, minutes: u32, resolvers: Option<usize>) -> Result<(ClusterParams, usize)> {
        if minutes == 0 {
            bail!("--minutes must be at least 1");
        }
        let matrix = self.matrix_path();
        let (p, r) = match matrix {
            Some(path) => {
                let m = RttMatrix::load(&path)
                    .with_context(|| format!("loading {}", path.display()))?;
                let name = path.display().to_string();
                dns_sim::matrix_split(&m, name, self.nodes, resolvers, self.seed, minutes)?
            }
            None => (
                ClusterParams::synthetic(
                    self.synthetic.or(self.nodes).unwrap_or(500),
                    self.seed,
                    minutes,
                ),
                resolvers.unwrap_or(200),
            ),
        };
        check(p.nodes, 0.0)?;
        if r == 0 || r > MAX_RESOLVERS {
            bail!("--resolvers must be within 1..={MAX_RESOLVERS}");
        }
        Ok((p, r))
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let wall = std::time::Instant::now();
    match cli.cmd {
        Cmd::Lookup {
            nodes,
            keys,
            seed,
            gets_per_node,
            latency,
            loss,
            json,
        } => {
            check(nodes, loss)?;
            if keys == 0 {
                bail!("--keys must be at least 1");
            }
            eprintln!("coral-sim lookup: {nodes} nodes, {keys} keys, seed {seed}");
            let mut p = LookupParams::new(
                NetParams {
                    nodes,
                    seed,
                    latency,
                    loss,
                },
                keys,
            );
            p.gets_per_node = gets_per_node.max(1);
            let r = experiments::lookup(&p).context("building the network")?;
            report(&format!("seed {seed}"), wall, json, &r, r.human())?;
        }
        Cmd::Hotspot {
            nodes,
            minutes,
            seed,
            rate,
            ttl,
            latency,
            loss,
            json,
        } => {
            check(nodes, loss)?;
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be positive, got {rate}");
            }
            eprintln!(
                "coral-sim hotspot: {nodes} nodes, {minutes} minutes, rate {rate}/s, seed {seed}"
            );
            let mut p = HotspotParams::new(
                NetParams {
                    nodes,
                    seed,
                    latency,
                    loss,
                },
                minutes,
            );
            p.rate = rate;
            p.ttl = Duration::from_secs(ttl);
            let r = experiments::hotspot(&p).context("building the network")?;
            report(&format!("seed {seed}"), wall, json, &r, r.human())?;
        }
        Cmd::Clusters {
            net,
            minutes,
            seeds: Some(SeedList(seeds)),
        } => {
            let p = net.params_for(seeds[0], minutes)?;
            eprintln!(
                "coral-sim clusters: {} nodes, {minutes} minutes, latency {}, seeds {seeds:?}",
                p.nodes, p.latency_name
            );
            let r = experiments::ClusterSeedsReport::new(cluster_seeds(&net, &seeds, minutes)?);
            report(&format!("seeds {seeds:?}"), wall, net.json, &r, r.human())?;
        }
        Cmd::Clusters { net, minutes, .. } => {
            let p = net.params(minutes)?;
            eprintln!(
                "coral-sim clusters: {} nodes, {minutes} minutes, latency {}, seed {}",
                p.nodes, p.latency_name, net.seed
            );
            let r = experiments::clusters(&p);
            report(&format!("seed {}", net.seed), wall, net.json, &r, r.human())?;
        }
        Cmd::Latency {
            net,
            minutes,
            levels,
            objects,
            gets,
            near_ms,
        } => {
            let mut p = net.params(minutes)?;
            if levels == 1 {
                p.levels = locality::one_level();
            } else {
                p.levels.truncate(usize::from(levels));
            }
            eprintln!(
                "coral-sim latency: {} nodes, {levels} level(s), latency {}, seed {}",
                p.nodes, p.latency_name, net.seed
            );
            let mut lp = LatencyParams::new(p);
            lp.objects_per_node = objects;
            lp.gets_per_client = gets;
            lp.near_holder = Duration::from_millis(near_ms);
            let r = locality::latency(&lp);
            report(&format!("seed {}", net.seed), wall, net.json, &r, r.human())?;
        }
        Cmd::Nodes {
            net,
            minutes,
            targets,
        } => {
            let p = net.params(minutes)?;
            eprintln!(
                "coral-sim nodes: {} nodes, {targets} targets, latency {}, seed {}",
                p.nodes, p.latency_name, net.seed
            );
            let mut np = NodesParams::new(p);
            np.targets = targets;
            let r = locality::nodes(&np);
            report(&format!("seed {}", net.seed), wall, net.json, &r, r.human())?;
        }
        Cmd::Dns {
            net,
            minutes,
            resolvers,
            queries,
            gap,
            primaries,
            hold_ms,
        } => {
            let (p, resolvers) = net.dns_params(minutes, resolvers)?;
            if queries == 0 || primaries == 0 {
                bail!("--queries and --primaries must be at least 1");
            }
            eprintln!(
                "coral-sim dns: {} nodes, {resolvers} resolvers, {queries} queries, latency {}, seed {}",
                p.nodes, p.latency_name, net.seed
            );
            let mut dp = DnsParams::new(p, resolvers);
            dp.queries = queries;
            dp.gap = Duration::from_secs(gap);
            dp.primaries = primaries;
            if let Some(ms) = hold_ms {
                dp.dns.hold_budget = Duration::from_millis(ms);
            }
            let r = dns_sim::dns(&dp)?;
            report(&format!("seed {}", net.seed), wall, net.json, &r, r.human())?;
        }
    }
    Ok(())
}
