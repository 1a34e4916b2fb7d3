//! `coral-mio`: run a Coral node on the hand-written mio loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coral_tokio::config::FileConfig;
use coral_tokio::logging;

/// Coral on one epoll loop: the same node as `coral node`, for small boxes.
///
/// `coral-mio node` takes the same flags, defaults and configuration file
/// as `coral node`; `coral status` and the admin endpoint read it alike.
#[derive(Parser, Debug)]
#[command(name = "coral-mio", version, propagate_version = true)]
struct Cli {
    /// Log lines as JSON objects instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,

    /// Log filter, e.g. `info`, `debug`, `coral_mio=debug,warn`
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
    /// `/status.json`), and starts a new network of one. See
    /// coral-tokio/coral.example.toml for every setting.
    Node {
        /// TOML configuration file (every key is optional; unknown keys are errors).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// RPC address (IP:port) of a running node to join through; repeatable.
        #[arg(long, value_name = "ADDR")]
        join: Vec<SocketAddr>,
        /// Directory for the node's persistent identity (overrides node.data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// RPC address to listen on (overrides node.rpc).
        #[arg(long, value_name = "ADDR")]
        rpc: Option<SocketAddr>,
        /// Admin address to listen on (overrides node.admin).
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Command::Node {
        config,
        join,
        data_dir,
        rpc,
        admin,
    } = cli.command;
    let mut cfg = match config {
        Some(p) => FileConfig::load(&p)?,
        None => FileConfig::default(),
    };
    if let Some(d) = data_dir {
        cfg.node.data_dir = Some(d);
    }
    if let Some(a) = rpc {
        cfg.node.rpc = a;
    }
    if let Some(a) = admin {
        cfg.node.admin = a;
    }
    let filter = cli.log.unwrap_or_else(|| cfg.log.filter.clone());
    logging::init(&filter, cli.log_json || cfg.log.json);
    coral_mio::daemon::run(cfg, join)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coral-mio: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
