//! `coral`: run a Coral node, a local test network, or talk to a node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coral_tokio::cli::NodeArgs;
use coral_tokio::config::FileConfig;
use coral_tokio::{coralize, daemon, httpd, logging, status, testnet};

/// Coral: a peer-to-peer content distribution network that volunteers run.
///
/// Start with `coral testnet` to see a whole network on this machine, or
/// `coral node` to run one node (it starts a new network unless told to
/// `--join` one). Every subcommand has its own `--help`.
#[derive(Parser, Debug)]
#[command(name = "coral", version, propagate_version = true)]
struct Cli {
    /// Log lines as JSON objects instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,

    /// Log filter, e.g. `info`, `debug`, `coral_tokio=debug,warn`
    /// (RUST_LOG overrides it; default: the config file's, else `info`).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one Coral node until Ctrl-C or SIGTERM.
    ///
    /// With no options it listens for DSHT RPCs on UDP 127.0.0.1:8091 and
    /// serves its admin endpoint on http://127.0.0.1:8092/ (`/metrics`,
    /// `/status.json`), serves the HTTP proxy on 127.0.0.1:8090, and starts
    /// a new network of one. The DNS server address (127.0.0.1:5353) is
    /// reserved for a later release. See coral-tokio/coral.example.toml for
    /// every setting.
    Node {
        #[command(flatten)]
        args: NodeArgs,
    },
    /// Run a whole Coral network on loopback addresses, in this process.
    ///
    /// Node i listens on 127.0.0.(10+i) (RPC :8091, admin :8092), and an
    /// origin web server with sample files on 127.0.0.9:8080. The nodes join,
    /// each sample file's URL key is put by one node and got by another, and
    /// the clusters per level are shown. Then it runs until Ctrl-C, or with
    /// --flash-crowd runs a bounded load and prints a summary.
    Testnet {
        /// Number of nodes.
        #[arg(long, short, default_value_t = 8)]
        nodes: usize,
        /// Run a flash crowd for SECONDS: clients spread over every node's
        /// HTTP proxy fetch the paper's twelve 41 KB files from an origin
        /// limited to 384 kbit/s; print a summary and exit.
        #[arg(long, value_name = "SECONDS")]
        flash_crowd: Option<u64>,
        /// Concurrent clients of the flash crowd.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Most requests the flash crowd makes, whatever its duration.
        #[arg(long, default_value_t = 200_000)]
        max_requests: u64,
        /// Objects the origin serves besides its sample files.
        #[arg(long, default_value_t = 20)]
        objects: usize,
        /// Also print the flash-crowd summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Last octet of the first node's loopback address.
        #[arg(long, default_value_t = 10)]
        first_ip: u8,
        /// RPC port of every node.
        #[arg(long, default_value_t = 8091)]
        rpc_port: u16,
        /// Admin port of every node.
        #[arg(long, default_value_t = 8092)]
        admin_port: u16,
        /// HTTP proxy port of every node.
        #[arg(long, default_value_t = 8090)]
        http_port: u16,
        /// DNS server port of every node (UDP and TCP).
        #[arg(long, default_value_t = 5353)]
        dns_port: u16,
        /// Port of the origin web server.
        #[arg(long, default_value_t = 8080)]
        origin_port: u16,
        /// Master seed (node i uses seed + i); drawn from the OS by default.
        #[arg(long)]
        seed: Option<u64>,
        /// Node configuration shared by every node (addresses are overridden).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the Coralized form of an http:// URL.
    ///
    /// http://www.x.com/a becomes http://www.x.com.nyud.net:8090/a; an origin
    /// on a non-default port keeps it as an extra label
    /// (http://www.x.com:8080/a -> http://www.x.com.8080.nyud.net:8090/a).
    Coralize {
        /// The URL to rewrite.
        url: String,
        /// The Coral domain.
        #[arg(long, default_value = coralize::DEFAULT_DOMAIN)]
        domain: String,
        /// The port Coral proxies listen on.
        #[arg(long, default_value_t = coralize::DEFAULT_PROXY_PORT)]
        proxy_port: u16,
    },
    /// Print a running node's state, read from its admin endpoint.
    Status {
        /// The node's admin address.
        #[arg(long, default_value = "127.0.0.1:8092", value_name = "ADDR")]
        admin: SocketAddr,
        /// Print the raw JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<FileConfig> {
    Ok(match path {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node { args } => {
            let cfg = args.load()?;
            let filter = cli.log.unwrap_or_else(|| cfg.log.filter.clone());
            logging::init(&filter, cli.log_json || cfg.log.json);
            runtime()?.block_on(daemon::run(cfg, args.join))
        }
        Command::Testnet {
            nodes,
            flash_crowd,
            clients,
            max_requests,
            objects,
            json,
            first_ip,
            rpc_port,
            admin_port,
            http_port,
            dns_port,
            origin_port,
            seed,
            config,
        } => {
            let cfg = load_config(config.as_ref())?;
            // The testnet prints its own report; logs stay quiet unless asked.
            let filter = cli.log.unwrap_or_else(|| "warn".to_owned());
            logging::init(&filter, cli.log_json);
            let opts = testnet::TestnetOptions {
                nodes,
                first_ip,
                rpc_port,
                admin_port,
                http_port,
                dns_port,
                origin_port,
                objects,
                flash_crowd: flash_crowd.map(Duration::from_secs),
                clients,
                max_requests,
                json,
                seed,
                coral_domain: cfg.node.coral_domain.clone(),
                config: cfg,
            };
            runtime()?.block_on(testnet::run(opts))
        }
        Command::Coralize {
            url,
            domain,
            proxy_port,
        } => {
            println!("{}", coralize::coralize(&url, &domain, proxy_port)?);
            Ok(())
        }
        Command::Status { admin, json } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (code, body) = rt
                .block_on(httpd::get(admin, "/status.json"))
                .map_err(|e| anyhow::anyhow!("cannot reach the admin endpoint {admin}: {e}"))?;
            anyhow::ensure!(
                code == 200,
                "the admin endpoint {admin} answered {code}: {}",
                body.trim()
            );
            if json {
                print!("{body}");
            } else {
                let s: status::NodeStatus = serde_json::from_str(&body).map_err(|e| {
                    anyhow::anyhow!("{admin} did not answer with a coral status: {e}")
                })?;
                print!("{}", status::text(&s));
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coral: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
