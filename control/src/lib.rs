//! siphon control plane: configuration, command line, and (later) dispatcher sources,
//! probing, management API and event export. The `siphon` binary is `main.rs`.

pub mod cli;
pub mod config;
pub mod events;
