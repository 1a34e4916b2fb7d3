//! `coral-mio`: run a Coral node on the hand-written mio loop.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coral_tokio::cli::NodeArgs;
use coral_tokio::logging;

/// Coral on one epoll loop: the same node as `coral node`, for small boxes.
///
/// `coral-mio node` takes the same flags, defaults and configuration file
/// as `coral node` and serves the same things (the DSHT, the HTTP proxy,
/// the DNS redirector, the admin endpoint) on one thread; `coral status`
/// reads it alike.
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
    /// With no options it listens for DSHT RPCs on UDP 127.0.0.1:8091,
    /// serves the HTTP proxy on 127.0.0.1:8090, DNS on 127.0.0.1:5353 (UDP
    /// and TCP; `[dns] enabled = false` turns it off) and its admin
    /// endpoint on http://127.0.0.1:8092/ (`/metrics`, `/status.json`), and
    /// starts a new network of one. See coral-tokio/coral.example.toml for
    /// every setting.
    Node {
        #[command(flatten)]
        args: NodeArgs,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Command::Node { args } = cli.command;
    let cfg = args.load()?;
    let filter = cli.log.unwrap_or_else(|| cfg.log.filter.clone());
    logging::init(&filter, cli.log_json || cfg.log.json);
    coral_mio::daemon::run(cfg, args.join)
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(line: &[&str]) -> Cli {
        Cli::try_parse_from(
            ["coral-mio", "node"]
                .into_iter()
                .chain(line.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn http_is_parsed_like_coral_node() {
        let Command::Node { args } = parse(&["--http", "127.0.0.1:8090"]).command;
        assert_eq!(args.http, Some("127.0.0.1:8090".parse().unwrap()));
        let cfg = args.load().unwrap();
        assert_eq!(cfg.node.http, "127.0.0.1:8090".parse().unwrap());
    }

    #[test]
    fn help_names_the_proxy_flag() {
        let mut cmd = Cli::command();
        let node = cmd.find_subcommand_mut("node").unwrap();
        let help = node.render_help().to_string();
        assert!(help.contains("--http <ADDR>"), "{help}");
        assert!(!help.contains("refused"), "{help}");
    }
}
