//! The `sipvane` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{AlgorithmSpec, Config, IoMode, Workers};

/// sipvane: a SIP load balancer and stateful proxy.
#[derive(Debug, Parser)]
#[command(
    name = "sipvane",
    version,
    about = "sipvane: SIP load balancer and stateful proxy",
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
    /// Talk to a running sipvane through its management API.
    Ctl(CtlArgs),
    /// Translate a Kamailio configuration (listen, dispatcher, tm timers, failover
    /// codes, RTPEngine) into sipvane TOML on stdout; what cannot be carried over is
    /// a `# warning:` line there and a FILE:LINE: warning on stderr.
    ImportKamailio(ImportKamailioArgs),
}

/// `sipvane run`
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

/// `sipvane check-config`
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration file to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `sipvane import-kamailio`
#[derive(Debug, Args)]
pub struct ImportKamailioArgs {
    /// Define NAME (optionally =VALUE) before reading, as `kamailio -A`; repeatable.
    #[arg(short = 'D', long = "define", value_name = "NAME[=VALUE]", value_parser = crate::import::parse_define)]
    pub define: Vec<(String, String)>,
    /// The Kamailio configuration (kamailio.cfg).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `sipvane ctl`
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Management API address of the sipvane to talk to ([mgmt] listen).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9060",
        global = true
    )]
    pub mgmt: SocketAddr,
    /// Bearer token ([mgmt] token).
    #[arg(long, value_name = "TOKEN", env = "SIPVANE_MGMT_TOKEN", global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `sipvane ctl` verbs.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Destination sets and their live state.
    #[command(subcommand)]
    Dispatcher(DispatcherCommand),
    /// Version, uptime, calls, dialogs and error counters.
    Stats,
    /// Active dialogs.
    Dialogs,
    /// Health check: exits 0 when every worker is alive, 1 otherwise.
    Ping,
    /// Live view refreshed every second (calls/s, active calls per destination, failures).
    Top(TopArgs),
    /// Registered users (the registrar's location table), as kamctl ul.
    #[command(subcommand)]
    Ul(UlCommand),
    /// Restart without dropping calls: the binary at the path sipvane was
    /// started from (after an upgrade, the new one) takes over the sockets
    /// and open transactions of the running process, which then drains.
    Restart,
}

/// `sipvane ctl ul …`
#[derive(Debug, Subcommand)]
pub enum UlCommand {
    /// Every registered user's bindings, or one user's.
    Show {
        /// user@domain (default: every user).
        #[arg(value_name = "AOR")]
        aor: Option<String>,
    },
    /// Remove every binding of a user.
    Rm {
        /// user@domain.
        #[arg(value_name = "AOR")]
        aor: String,
    },
}

/// `sipvane ctl dispatcher …`
#[derive(Debug, Subcommand)]
pub enum DispatcherCommand {
    /// Every destination with state, active calls and counters.
    List,
    /// Re-read the dispatcher source now.
    Reload,
    /// Set a destination's state (as kamcmd dispatcher.set_state).
    SetState {
        /// active, inactive, disabled or probing (or a, i, d, p).
        #[arg(value_name = "STATE")]
        state: String,
        /// Destination URI as listed, e.g. sip:10.0.0.5:5060.
        #[arg(value_name = "URI")]
        uri: String,
        /// Only in this set (default: every set listing URI).
        #[arg(long = "set", value_name = "ID")]
        set: Option<u32>,
    },
}

/// `sipvane ctl top`
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Stop after N refreshes (default: until interrupted).
    #[arg(long, value_name = "N")]
    pub iterations: Option<u64>,
    /// Milliseconds between refreshes.
    #[arg(long = "interval-ms", value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,
}
