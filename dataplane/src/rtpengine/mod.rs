//! Media anchoring through RTPEngine's ng control protocol, sans-IO.
//!
//! - [`bencode`]: the wire codec (zero-copy decoding with limits, an
//!   order-checking encoder into caller buffers).
//! - [`ng`]: ng messages: request builders, the Kamailio-compatible flags
//!   string, reply parsing, cookies.
//! - [`client`]: per-worker client state: engine set with weights and
//!   health, pending requests keyed by cookie, retransmission, failover.
//!
//! Nothing here touches a socket or reads the clock: drivers pass `now` and
//! received datagrams in and take datagrams to send out.

pub mod bencode;
pub mod client;
pub mod ng;

pub use client::{
    hash_call_id, Client, ClientConfig, Completion, EngineSet, HealthChange, NgOutcome, Output,
    Sent,
};
pub use ng::{
    write_request, CallStats, Command, Cookie, CookieGen, FlagValue, FlagsError, NgError, NgFlags,
    NgResult, PacketCounters, Reply, Request,
};
