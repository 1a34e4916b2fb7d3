//! The command line that `coral node` and `coral-mio node` share.
//!
//! Both binaries flatten [`NodeArgs`] into their `node` subcommand, so they
//! take the same flags with the same `--help` and read them into a
//! [`FileConfig`] the same way: the file named by `--config` (or the
//! defaults), then each flag given overriding the key it names.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{ConfigError, FileConfig};

/// The flags of `coral node` and `coral-mio node`.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeArgs {
    /// TOML configuration file (every key is optional; unknown keys are errors).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// RPC address (IP:port) of a running node to join through; repeatable.
    #[arg(long, value_name = "ADDR")]
    pub join: Vec<SocketAddr>,
    /// Directory for the node's persistent identity (overrides node.data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// RPC address to listen on (overrides node.rpc).
    #[arg(long, value_name = "ADDR")]
    pub rpc: Option<SocketAddr>,
    /// Admin address to listen on (overrides node.admin).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// HTTP proxy address to listen on (overrides node.http).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// DNS server address, UDP and TCP (overrides node.dns).
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<SocketAddr>,
}

impl NodeArgs {
    /// The configuration these flags ask for: `--config` (the defaults
    /// without it) with [`NodeArgs::apply`]'s overrides. Errors name the
    /// file and the key at fault.
    pub fn load(&self) -> Result<FileConfig, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        self.apply(&mut cfg);
        Ok(cfg)
    }

    /// Overrides the keys the flags given name (`node.data_dir`,
    /// `node.rpc`, `node.admin`, `node.http`, `node.dns`); a flag not given leaves its
    /// key as the file has it. `--join` is not applied here: the daemons
    /// take it apart and add it to `node.join`.
    pub fn apply(&self, cfg: &mut FileConfig) {
        if let Some(dir) = &self.data_dir {
            cfg.node.data_dir = Some(dir.clone());
        }
        if let Some(addr) = self.rpc {
            cfg.node.rpc = addr;
        }
        if let Some(addr) = self.admin {
            cfg.node.admin = addr;
        }
        if let Some(addr) = self.http {
            cfg.node.http = addr;
        }
        if let Some(addr) = self.dns {
            cfg.node.dns = addr;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn args(line: &[&str]) -> NodeArgs {
        Cli::try_parse_from(std::iter::once("coral").chain(line.iter().copied()))
            .unwrap()
            .node
    }

    #[test]
    fn no_flags_leave_the_defaults() {
        let a = args(&[]);
        assert_eq!(a, NodeArgs::default());
        assert_eq!(a.load().unwrap(), FileConfig::default());
    }

    #[test]
    fn each_flag_overrides_its_key_and_no_other() {
        let a = args(&[
            "--join",
            "10.0.0.1:8091",
            "--join",
            "10.0.0.2:8091",
            "--data-dir",
            "/var/lib/coral",
            "--rpc",
            "0.0.0.0:9091",
            "--admin",
            "127.0.0.1:9092",
            "--http",
            "0.0.0.0:80",
        ]);
        assert_eq!(a.join.len(), 2);
        let mut cfg = FileConfig::default();
        cfg.node.dns = "127.0.0.1:53".parse().unwrap();
        a.apply(&mut cfg);
        assert_eq!(cfg.node.data_dir, Some(PathBuf::from("/var/lib/coral")));
        assert_eq!(cfg.node.rpc, "0.0.0.0:9091".parse().unwrap());
        assert_eq!(cfg.node.admin, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(cfg.node.http, "0.0.0.0:80".parse().unwrap());
        assert_eq!(cfg.node.dns, "127.0.0.1:53".parse().unwrap());
        assert!(cfg.node.join.is_empty(), "--join is the daemon's to add");
        let mut cfg = FileConfig::default();
        args(&["--dns", "0.0.0.0:53"]).apply(&mut cfg);
        assert_eq!(cfg.node.dns, "0.0.0.0:53".parse().unwrap());

        let only_rpc = args(&["--rpc", "127.0.0.1:1"]);
        let mut cfg = FileConfig::default();
        only_rpc.apply(&mut cfg);
        let mut want = FileConfig::default();
        want.node.rpc = "127.0.0.1:1".parse().unwrap();
        assert_eq!(cfg, want);
    }

    #[test]
    fn a_missing_config_file_is_named() {
        let e = args(&["--config", "/nonexistent/coral.toml"])
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/coral.toml"), "{e}");
    }
}
