//! The `siphon` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{AlgorithmSpec, Config, IoMode, Workers};

/// siphon: a SIP load balancer and stateful proxy.
#[derive(Debug, Parser)]
#[command(
    name = "siphon",
    version,
    about = "siphon: SIP load balancer and stateful proxy",
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the proxy (flags override the configuration file).
    Run(RunArgs),
    /// Check a configuration file: prints each problem as FILE:LINE: problem and
    /// exits 1, or prints "FILE: ok" and exits 0.
    CheckConfig(CheckConfigArgs),
}

/// `siphon run`
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// Configuration file (TOML). Without it the built-in defaults apply.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Public SIP address ([proxy] listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Worker threads ([proxy] workers).
    #[arg(long, value_name = "N|auto")]
    pub workers: Option<Workers>,
    /// Kamailio dispatcher.list file ([dispatcher] list); replaces any source in the file.
    #[arg(long = "dispatcher-list", value_name = "FILE")]
    pub dispatcher_list: Option<PathBuf>,
    /// Selection algorithm, name or Kamailio number ([dispatcher] algorithm).
    #[arg(long, value_name = "NAME|NUM", value_parser = AlgorithmSpec::parse_known)]
    pub algorithm: Option<AlgorithmSpec>,
    /// Default destination set ([dispatcher] default_set).
    #[arg(long = "set", value_name = "ID")]
    pub set: Option<u32>,
    /// Management API address ([mgmt] listen).
    #[arg(long, value_name = "ADDR")]
    pub mgmt: Option<SocketAddr>,
    /// I/O driver ([proxy] io).
    #[arg(long, value_name = "auto|uring|epoll")]
    pub io: Option<IoMode>,
    /// Host or IP written into Via and Record-Route ([proxy] advertise).
    #[arg(long, value_name = "HOST")]
    pub advertise: Option<String>,
    /// Log level or filter directive ([log] level); wins over RUST_LOG.
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Print the effective configuration (file + flags) as TOML and exit.
    #[arg(long = "print-config")]
    pub print_config: bool,
}

impl RunArgs {
    /// Writes every flag that was given over the corresponding configuration value.
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(a) = self.listen {
            cfg.proxy.listen = a;
        }
        if let Some(w) = self.workers {
            cfg.proxy.workers = w;
        }
        if let Some(path) = &self.dispatcher_list {
            // The flag names the destinations outright, so it replaces a database
            // source from the file instead of conflicting with it.
            cfg.dispatcher.source = String::new();
            cfg.dispatcher.list = Some(path.display().to_string());
        }
        if let Some(a) = &self.algorithm {
            cfg.dispatcher.algorithm = a.clone();
        }
        if let Some(s) = self.set {
            cfg.dispatcher.default_set = s;
        }
        if let Some(a) = self.mgmt {
            cfg.mgmt.listen = a;
        }
        if let Some(io) = self.io {
            cfg.proxy.io = io;
        }
        if let Some(a) = &self.advertise {
            cfg.proxy.advertise = Some(a.clone());
        }
        if let Some(l) = &self.log_level {
            cfg.log.level = l.clone();
        }
    }
}

/// `siphon check-config`
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration file to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}
