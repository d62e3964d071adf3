//! sipvane control plane: configuration, command line, start-up, dispatcher
//! sources and the call-event exporter. The `sipvane` binary is `main.rs`.

pub mod acc;
pub mod api;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod dns;
pub mod events;
pub mod import;
pub mod media_health;
pub mod probe;
pub mod registrar;
pub mod run;
pub mod source;
pub mod supervise;
pub mod systemd;
pub mod utc;
