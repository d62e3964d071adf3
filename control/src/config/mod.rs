//! The sipvane configuration file (TOML).
//!
//! Every key has a default, so an empty file, a file with a single section, or no file
//! at all is a valid configuration. Unknown keys are rejected so a typo never silently
//! falls back to a default.
//!
//! Loading runs in three stages, and reports every problem it can find as one line
//! `FILE:LINE: problem`:
//! 1. TOML syntax (one error: nothing after a syntax error can be trusted);
//! 2. deserialisation (unknown keys, wrong types); after each such error the offending
//!    key is blanked out of a copy of the text (offsets and line numbers preserved) and
//!    deserialisation is retried, so one typo does not hide the next;
//! 3. [`Config::validate`], whose [`Problem`]s carry a key path that is located in the
//!    document to find its line.

mod diagnostics;
mod schema;
#[cfg(test)]
mod tests;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml_edit::{ArrayOfTables, ImDocument, Item, Table, Value};

pub use diagnostics::*;
pub use schema::*;
pub use validate::*;
pub use values::*;
