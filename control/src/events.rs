//! Call events to Redis (issue 5, item 8).
//!
//! Workers describe what happens to calls and destinations as [`Event`]s and push them on
//! an [`EventQueue`], a bounded lock-free queue that never blocks them (full → the event
//! is dropped and counted). On the control thread an [`Exporter`] drains the queue,
//! serialises each event to a JSON object with a `"type"` field and RPUSHes them, in
//! order and in batches, onto a Redis list, buffering through Redis outages.
//! The schema and delivery guarantees are documented in `docs/events.md`.
//!
//! `model` and `queue` depend only on `serde`, `crossbeam` and `std`, so they can move
//! into the data-plane crate as they are if workers need to name the types directly.

pub mod bridge;
mod exporter;
mod model;
mod queue;

pub use exporter::{Exporter, ExporterConfig, ExporterError, ExporterStats, StatsSnapshot};
pub use model::{
    duration_secs, text, CallAnswered, CallEnd, CallFailed, CallStart, DstChange, EndReason, Event,
    WallClock,
};
pub use queue::{EventQueue, DEFAULT_QUEUE_CAPACITY};
