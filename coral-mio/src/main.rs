//! `coral-mio`: run a Coral node on the hand-written mio loop.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coral_tokio::cli::NodeArgs;
use coral_tokio::logging;

/// Coral on one epoll loop: the same node as `coral node`, for small boxes.
///
/// `coral-mio node` takes the same flags, defaults and configuration file
/// as `coral node` (it refuses `--http` until it serves the HTTP proxy);
/// `coral status` and the admin endpoint read it alike.
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
    #[command(mut_arg("http", |a| a.help(HTTP_HELP)))]
    Node {
        #[command(flatten)]
        args: NodeArgs,
    },
}

/// `--http` in `coral-mio node --help`: the flag is `coral node`'s, shared
/// so both binaries parse one command line, and refused here.
const HTTP_HELP: &str = "HTTP proxy address: refused, coral-mio does not serve the \
                         HTTP proxy yet (run `coral node` for it)";

/// Refuses flags that ask for what coral-mio does not serve yet, before
/// anything is bound: a node started without the proxy its command line
/// asked for would look healthy while every Coralized URL pointed at it
/// fails. (The file's `node.http` is different: one file serves both
/// binaries, and the daemon logs that coral-mio leaves it to `coral node`.)
fn refuse_unserved(args: &NodeArgs) -> anyhow::Result<()> {
    if let Some(http) = args.http {
        anyhow::bail!(
            "--http {http}: coral-mio does not serve the HTTP proxy yet; \
             run `coral node` with the same flags to serve it"
        );
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Command::Node { args } = cli.command;
    refuse_unserved(&args)?;
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
    fn http_is_parsed_like_coral_node_and_then_refused() {
        let Command::Node { args } = parse(&["--http", "127.0.0.1:8090"]).command;
        let e = refuse_unserved(&args).unwrap_err().to_string();
        assert!(
            e.contains("--http 127.0.0.1:8090") && e.contains("`coral node`"),
            "{e}"
        );
        let Command::Node { args } = parse(&[
            "--rpc",
            "127.0.0.1:1",
            "--admin",
            "127.0.0.1:2",
            "--join",
            "10.0.0.1:8091",
        ])
        .command;
        refuse_unserved(&args).unwrap();
    }

    #[test]
    fn help_says_http_is_refused() {
        let mut cmd = Cli::command();
        let node = cmd.find_subcommand_mut("node").unwrap();
        let help = node.render_help().to_string();
        assert!(help.contains("refused, coral-mio does not serve"), "{help}");
    }
}
