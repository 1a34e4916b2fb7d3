//! `coral-sim`: runs the paper's experiments in the deterministic simulator.
//!
//! ```text
//! coral-sim lookup  --nodes 1000 --keys 200 --seed 1 [--latency sphere|planetlab] [--loss P] [--json]
//! coral-sim hotspot --nodes 500 --minutes 10 --seed 1 [--rate R] [--json]
//! coral-sim clusters (--synthetic 500 | --matrix FILE | --latency planetlab) --seed 1 --minutes 30 [--json]
//! coral-sim latency  (--synthetic 500 | --matrix FILE | --latency planetlab) --levels 1|3 --seed 1 [--json]
//! coral-sim nodes    (--synthetic 500 | --matrix FILE | --latency planetlab) --seed 1 [--json]
//! ```
//!
//! With `--json` stdout carries exactly one JSON object; progress goes to
//! stderr. The same arguments and seed always print the same result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
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
        if minutes == 0 {
            bail!("--minutes must be at least 1");
        }
        let matrix = match (&self.matrix, self.latency) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(LatencyKind::Planetlab)) => Some(PathBuf::from(PLANETLAB_RTT_PATH)),
            (None, _) => None,
        };
        let p = match matrix {
            Some(path) => {
                let m = RttMatrix::load(&path)
                    .with_context(|| format!("loading {}", path.display()))?;
                let n = self.nodes.unwrap_or(m.len());
                let name = path.display().to_string();
                ClusterParams::matrix(Arc::new(m), name, n, self.seed, minutes)
            }
            None => ClusterParams::synthetic(
                self.synthetic.or(self.nodes).unwrap_or(500),
                self.seed,
                minutes,
            ),
        };
        check(p.nodes, 0.0)?;
        Ok(p)
    }
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
    seed: u64,
    wall: std::time::Instant,
    json: bool,
    r: &impl serde::Serialize,
    human: String,
) -> Result<()> {
    eprintln!(
        "seed {seed}: done in {:.1} s wall",
        wall.elapsed().as_secs_f64()
    );
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{human}");
    }
    Ok(())
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
            report(seed, wall, json, &r, r.human())?;
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
            report(seed, wall, json, &r, r.human())?;
        }
        Cmd::Clusters { net, minutes } => {
            let p = net.params(minutes)?;
            eprintln!(
                "coral-sim clusters: {} nodes, {minutes} minutes, latency {}, seed {}",
                p.nodes, p.latency_name, net.seed
            );
            let r = experiments::clusters(&p);
            report(net.seed, wall, net.json, &r, r.human())?;
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
            report(net.seed, wall, net.json, &r, r.human())?;
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
            report(net.seed, wall, net.json, &r, r.human())?;
        }
    }
    Ok(())
}
