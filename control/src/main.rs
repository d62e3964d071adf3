//! The `sipvane` binary.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use control::cli::{Cli, Command, RunArgs};
use control::config::{Config, DispatcherSource, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(&args),
        Command::CheckConfig(args) => check_config(&args.file),
        Command::Ctl(args) => control::ctl::main(&args),
        Command::ImportKamailio(args) => control::import::main(&args),
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let mut cfg = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    args.apply(&mut cfg);
    // The file on its own was valid, so anything wrong now came from the flags.
    let problems = cfg.validate();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("command line: {p}");
        }
        return ExitCode::FAILURE;
    }

    if args.print_config {
        return match cfg.to_toml() {
            Ok(text) => {
                println!("# effective sipvane configuration (defaults, file, then flags)");
                if cfg.proxy.advertise.is_none() {
                    println!(
                        "# proxy.advertise is unset: Via and Record-Route use {}",
                        cfg.proxy.advertise_host()
                    );
                }
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sipvane: cannot print the configuration: {e}");
                ExitCode::FAILURE
            }
        };
    }

    init_logging(&cfg, args.log_level.is_some());
    if cfg.proxy.advertise.is_none() && cfg.proxy.listen.ip().is_unspecified() {
        tracing::warn!(
            advertise = %cfg.proxy.advertise_host(),
            "proxy.listen is a wildcard address and proxy.advertise is unset: peers will be \
             told to reach this proxy at the loopback address; set proxy.advertise"
        );
    }
    match control::run::run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipvane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up tracing: `--log-level` wins, then RUST_LOG, then `[log] level`.
fn init_logging(cfg: &Config, level_from_flag: bool) {
    let from_env = if level_from_flag {
        None
    } else {
        std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.is_empty())
            .and_then(|v| EnvFilter::builder().parse(v).ok())
    };
    let filter = from_env.unwrap_or_else(|| {
        EnvFilter::builder()
            .parse(&cfg.log.level)
            .unwrap_or_else(|_| EnvFilter::new("info"))
    });
    // Colour only on a terminal: under systemd stderr is the journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match cfg.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        eprintln!("sipvane: cannot set up logging: {e}");
    }
}

fn check_config(path: &Path) -> ExitCode {
    let file = path.display().to_string();
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let problems = check_dispatcher_source(&cfg);
    if !problems.is_empty() {
        for p in problems {
            eprintln!("{p}");
        }
        return ExitCode::FAILURE;
    }
    println!("{file}: ok");
    ExitCode::SUCCESS
}

/// Checks the dispatcher source named by `cfg`: a dispatcher.list is parsed
/// and every destination resolved. Each entry is one problem; list problems
/// already carry `LIST:LINE:`, others get `FILE: ` from check-config.
fn check_dispatcher_source(cfg: &Config) -> Vec<String> {
    match cfg.dispatcher.resolved_source() {
        Ok(Some(DispatcherSource::File(path))) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return vec![format!("cannot start a runtime to resolve names: {e}")],
            };
            let dns = {
                let _rt = rt.enter();
                match control::dns::Resolver::new(&cfg.dns) {
                    Ok(d) => d.with_tls(!cfg.tls.ca.is_empty()),
                    Err(e) => return vec![e],
                }
            };
            let now = std::time::Instant::now();
            match rt.block_on(control::source::file::load(&path, now, &dns)) {
                Ok(_) => Vec::new(),
                Err(problems) => problems,
            }
        }
        // Validation already reported a malformed source.
        Ok(_) | Err(_) => Vec::new(),
    }
}
