//! Kamailio-`dispatcher`-compatible destination sets.
//!
//! - [`list`]: `dispatcher.list` lines and the `attrs` column ([`parse_list`],
//!   [`parse_attrs`]).
//! - [`health`]: a destination's state, the failure / hold-down policy and
//!   its live [`DestStats`] atomics.
//! - [`table`]: the immutable [`Table`] snapshot (sets, destinations and
//!   their shared stats) that the control thread publishes through a
//!   [`SharedTable`] and workers read without locks; hot reload keeps the
//!   stats of destinations that persist.
//! - [`algorithm`]: every Kamailio algorithm number plus consistent hashing
//!   ([`maglev`] table);
//!   a per-worker [`Selector`] writes the chosen destination and the failover
//!   order into a caller-owned `SmallVec` without allocating.
//!
//! Nothing here parses SIP or reads the clock: callers pass the byte slices
//! to hash and the current `Instant`.

pub mod algorithm;
pub mod hash;
pub mod health;
pub mod list;
pub mod maglev;
pub mod table;

pub use algorithm::{Algorithm, AlgorithmParseError, SelectKey, Selector, DEFAULT_LIMIT};
pub use health::{DestState, DestStats, HealthPolicy, StateParseError, StatsSnapshot};
pub use list::{parse_attrs, parse_list, Attrs, DestDef, ListError};
pub use table::{shared, DestId, Destination, Set, SharedTable, Table};
