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

// ---------------------------------------------------------------------------------------
// Small value types
// ---------------------------------------------------------------------------------------

/// A scalar as the deserialiser saw it, for error messages and parsing.
enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    /// Anything else, already described (`true`, `1.5`, `a list`).
    Other(String),
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => write!(f, "{s:?}"),
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Other(s) => f.write_str(s),
        }
    }
}

/// `must be WHAT (got VALUE)`: the wording every value error uses, so the error printer
/// can put the key name in front of it.
fn must(what: &str, got: &Scalar<'_>) -> String {
    format!("must be {what} (got {got})")
}

/// Deserialises one value through `parse`. Errors are raised inside the deserialiser's
/// own call, which is what makes toml attach the span of this very value (an element of
/// an array, not the whole array) to them.
struct ScalarVisitor<F> {
    expecting: &'static str,
    parse: F,
}

fn scalar<'de, D, T, F>(d: D, expecting: &'static str, parse: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(Scalar<'_>) -> Result<T, String>,
{
    d.deserialize_any(ScalarVisitor { expecting, parse })
}

impl<'de, T, F> serde::de::Visitor<'de> for ScalarVisitor<F>
where
    F: FnOnce(Scalar<'_>) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(Scalar::Str(v)).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        (self.parse)(Scalar::Int(v)).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        let s = i64::try_from(v).map_or_else(|_| Scalar::Other(v.to_string()), Scalar::Int);
        (self.parse)(s).map_err(E::custom)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<T, E> {
        (self.parse)(Scalar::Other(v.to_string())).map_err(E::custom)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        (self.parse)(Scalar::Other(v.to_string())).map_err(E::custom)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        (self.parse)(Scalar::Other("a list".into())).map_err(A::Error::custom)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        (self.parse)(Scalar::Other("a table".into())).map_err(A::Error::custom)
    }
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Declares a closed set of string values (`io = "uring"`): parsing, printing and serde
/// all from one table, with error messages that list the accepted spellings.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident (default $default:ident) {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every accepted spelling, in documentation order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The spelling used in the configuration file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $( $text => Ok(Self::$variant), )+
                    _ => Err(format!("must be one of {} (got \"{s}\")", quoted_list(Self::NAMES))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                scalar(d, "a string", |v| match v {
                    Scalar::Str(s) => s.parse(),
                    other => Err(must(&format!("one of {}", quoted_list(Self::NAMES)), &other)),
                })
            }
        }
    };
}

string_enum! {
    /// Which I/O driver the workers use.
    pub enum IoMode (default Auto) {
        /// io_uring when the kernel supports it, epoll otherwise.
        Auto => "auto",
        /// io_uring only; start-up fails without it.
        Uring => "uring",
        /// mio/epoll only.
        Epoll => "epoll",
    }
}

string_enum! {
    /// What to do with a request for a domain not in `proxy.domains`.
    pub enum UnknownDomain (default Reject) {
        /// Forward it to the Request-URI host, for trusted sources only
        /// (`security.trusted_sources`); everyone else gets 404.
        Relay => "relay",
        /// Answer 404 Not Found.
        Reject => "reject",
    }
}

string_enum! {
    /// What an initial request's pre-loaded Route headers get (`security.preloaded_route`).
    pub enum PreloadedRoute (default Strip) {
        /// Removed, the request routed by its Request-URI (Kamailio's default script).
        Strip => "strip",
        /// 403 for untrusted sources; a trusted source's are removed.
        Reject => "reject",
        /// Followed for trusted sources; removed for everyone else.
        Follow => "follow",
    }
}

string_enum! {
    /// Where an untrusted peer's in-dialog request may be relayed (`security.dialog_targets`).
    pub enum DialogTargets (default Known) {
        /// Only to dispatcher destinations' addresses and trusted networks.
        Known => "known",
        /// Wherever the route set or Request-URI says (Kamailio's `loose_route`).
        Any => "any",
    }
}

string_enum! {
    /// What a source over its rate gets (`security.flood.action`).
    pub enum FloodAction (default Reply) {
        /// A stateless 503 + Retry-After (block_s) to requests; ACKs and responses dropped.
        Reply => "reply",
        /// Dropped silently.
        Drop => "drop",
    }
}

string_enum! {
    /// How new calls are spread over workers.
    pub enum Balance (default Kernel) {
        /// Leave it to the kernel's SO_REUSEPORT hash (per source address).
        Kernel => "kernel",
        /// The receiving worker passes each new INVITE to the worker chosen by
        /// hash(Call-ID): even load even when all traffic comes from one trunk.
        Callid => "callid",
    }
}

string_enum! {
    /// Which destinations the OPTIONS prober pings (Kamailio's `ds_probing_mode`).
    /// Destinations that are down (inactive or probing) are pinged in every mode, so
    /// that the prober can bring them back; disabled ones never are.
    pub enum ProbingMode (default All) {
        /// Every destination that is not disabled (Kamailio mode 1).
        All => "all",
        /// Destinations whose list flags include 8 (probing), plus those that are down
        /// (Kamailio mode 0).
        Flagged => "flagged",
        /// Only destinations that are down (Kamailio mode 2).
        Inactive => "inactive",
    }
}

string_enum! {
    /// What to do with a call when no RTPEngine answers.
    pub enum RtpFailure (default Reject) {
        /// Fail the call (the INVITE is answered with 503).
        Reject => "reject",
        /// Relay the call without media anchoring.
        Passthrough => "passthrough",
    }
}

string_enum! {
    /// Log line format.
    pub enum LogFormat (default Text) {
        /// Human-readable lines.
        Text => "text",
        /// One JSON object per line.
        Json => "json",
    }
}

/// `proxy.workers`: how many worker threads to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Workers {
    /// One per online CPU.
    #[default]
    Auto,
    /// Exactly this many (≥ 1).
    Count(usize),
}

impl Workers {
    /// The number of workers to start: `Auto` asks the OS how many CPUs are online.
    pub fn resolve(self) -> usize {
        match self {
            // A branch names its worker in one byte.
            Workers::Auto => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_WORKERS),
            Workers::Count(n) => n.max(1),
        }
    }
}

const WORKERS_MUST: &str = "\"auto\" or a number ≥ 1";

/// Most workers one process runs (the Via branch names its worker in a byte).
pub const MAX_WORKERS: usize = 256;

impl FromStr for Workers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Workers::Auto),
            _ => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Workers::Count(n)),
                _ => Err(format!("must be {WORKERS_MUST} (got \"{s}\")")),
            },
        }
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Auto => f.write_str("auto"),
            Workers::Count(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(d, WORKERS_MUST, |v| match v {
            Scalar::Str("auto") => Ok(Workers::Auto),
            Scalar::Int(n) if n >= 1 => usize::try_from(n)
                .map(Workers::Count)
                .map_err(|_| must(WORKERS_MUST, &v)),
            other => Err(must(WORKERS_MUST, &other)),
        })
    }
}

/// Kamailio `dispatcher` algorithm numbers sipvane implements.
pub const ALGORITHM_NUMBERS: &[u32] = &[0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 13];

/// Algorithm names sipvane accepts, with the Kamailio number each one is an alias of
/// (`None`: sipvane-only algorithm).
pub const ALGORITHM_NAMES: &[(&str, Option<u32>)] = &[
    ("hash-callid", Some(0)),
    ("hash-from", Some(1)),
    ("hash-to", Some(2)),
    ("hash-ruri", Some(3)),
    ("round-robin", Some(4)),
    ("rr", Some(4)),
    ("hash-auth-user", Some(5)),
    ("random", Some(6)),
    ("priority", Some(8)),
    ("serial", Some(8)),
    ("weight", Some(9)),
    ("call-load", Some(10)),
    ("relative-weight", Some(11)),
    ("latency", Some(13)),
    ("rendezvous", None),
    ("rendezvous-from", None),
];

/// `dispatcher.algorithm` as written: a Kamailio algorithm number or a name.
///
/// Deserialisation accepts any name or number; [`Config::validate`] checks it against
/// [`ALGORITHM_NUMBERS`] / [`ALGORITHM_NAMES`] so the error can point at its line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AlgorithmSpec {
    /// A Kamailio algorithm number (`algorithm = 4`).
    Number(u32),
    /// A name (`algorithm = "round-robin"`).
    Name(String),
}

impl Default for AlgorithmSpec {
    fn default() -> Self {
        AlgorithmSpec::Name("round-robin".to_owned())
    }
}

impl AlgorithmSpec {
    /// Whether sipvane implements this algorithm.
    pub fn is_known(&self) -> bool {
        match self {
            AlgorithmSpec::Number(n) => ALGORITHM_NUMBERS.contains(n),
            AlgorithmSpec::Name(s) => ALGORITHM_NAMES.iter().any(|(name, _)| name == s),
        }
    }

    /// The Kamailio number this is, or is an alias of; `None` for sipvane-only algorithms
    /// (rendezvous) and unknown ones.
    pub fn kamailio_number(&self) -> Option<u32> {
        match self {
            AlgorithmSpec::Number(n) => ALGORITHM_NUMBERS.contains(n).then_some(*n),
            AlgorithmSpec::Name(s) => ALGORITHM_NAMES
                .iter()
                .find(|(name, _)| name == s)
                .and_then(|(_, n)| *n),
        }
    }

    /// Parses and checks a command-line value (`--algorithm 4`, `--algorithm rr`).
    pub fn parse_known(s: &str) -> Result<Self, String> {
        let spec: AlgorithmSpec = s.parse()?;
        if spec.is_known() {
            Ok(spec)
        } else {
            Err(unknown_algorithm(&spec))
        }
    }
}

fn unknown_algorithm(spec: &AlgorithmSpec) -> String {
    let numbers = ALGORITHM_NUMBERS
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let names = ALGORITHM_NAMES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    let what = match spec {
        AlgorithmSpec::Number(n) => n.to_string(),
        AlgorithmSpec::Name(s) => format!("\"{s}\""),
    };
    format!(
        "algorithm {what} is not supported; expected a Kamailio number ({numbers}) or a name ({names})"
    )
}

impl FromStr for AlgorithmSpec {
    type Err = String;
    /// Digits are a number, anything else a name; no check that it is known.
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse()
                .map(AlgorithmSpec::Number)
                .map_err(|_| format!("algorithm number {s} is out of range"))
        } else {
            Ok(AlgorithmSpec::Name(s.to_owned()))
        }
    }
}

impl fmt::Display for AlgorithmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlgorithmSpec::Number(n) => write!(f, "{n}"),
            AlgorithmSpec::Name(s) => f.write_str(s),
        }
    }
}

impl Serialize for AlgorithmSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AlgorithmSpec::Number(n) => s.serialize_u32(*n),
            AlgorithmSpec::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for AlgorithmSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const WHAT: &str = "an algorithm name or Kamailio number";
        scalar(d, WHAT, |v| match v {
            Scalar::Int(n) => u32::try_from(n)
                .map(AlgorithmSpec::Number)
                .map_err(|_| must(WHAT, &v)),
            Scalar::Str(s) => s.parse().map_err(|_| must(WHAT, &v)),
            other => Err(must(WHAT, &other)),
        })
    }
}

/// One `rtpengine.engines` entry: `"udp:IP:PORT"` or `"udp:IP:PORT=WEIGHT"`
/// (Kamailio's `rtpengine_sock` syntax; IPv6 as `udp:[::1]:22222`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EngineSpec {
    /// Address of the engine's ng control port.
    pub addr: SocketAddr,
    /// Relative share of new calls (≥ 1, default 1).
    pub weight: u32,
}

const ENGINE_MUST: &str = "\"udp:IP:PORT\" or \"udp:IP:PORT=WEIGHT\" with WEIGHT ≥ 1";

impl FromStr for EngineSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("must be {ENGINE_MUST} (got \"{s}\")");
        let rest = s.strip_prefix("udp:").ok_or_else(bad)?;
        let (addr, weight) = match rest.split_once('=') {
            Some((a, w)) => (
                a,
                w.parse::<u32>().ok().filter(|w| *w >= 1).ok_or_else(bad)?,
            ),
            None => (rest, 1),
        };
        let addr = addr.parse::<SocketAddr>().map_err(|_| bad())?;
        Ok(EngineSpec { addr, weight })
    }
}

impl fmt::Display for EngineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "udp:{}", self.addr)?;
        if self.weight != 1 {
            write!(f, "={}", self.weight)?;
        }
        Ok(())
    }
}

impl Serialize for EngineSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EngineSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(d, ENGINE_MUST, |v| match v {
            Scalar::Str(s) => s.parse(),
            other => Err(must(ENGINE_MUST, &other)),
        })
    }
}

/// serde for `SocketAddr` fields, with an error message that shows the expected form.
mod sockaddr {
    use super::*;

    const WHAT: &str = "an IP:PORT socket address such as \"0.0.0.0:5060\"";

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        scalar(d, WHAT, |v| match v {
            Scalar::Str(s) => s.parse().map_err(|_| must(WHAT, &v)),
            other => Err(must(WHAT, &other)),
        })
    }
}

/// Where the dispatcher destinations come from, as resolved from `dispatcher.source` /
/// `dispatcher.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DispatcherSource {
    /// A Kamailio `dispatcher.list` file. Relative paths are relative to the working
    /// directory.
    File(PathBuf),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`) holding Kamailio's
    /// `dispatcher` table.
    Postgres(String),
    /// A MySQL / MariaDB URL (`mysql://` or `mariadb://`) holding Kamailio's `dispatcher` table.
    Mysql(String),
}

impl DispatcherSource {
    /// Parses a `source` value; `Ok(None)` for the empty string (no source).
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        if s.is_empty() {
            Ok(None)
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                Err(
                    "source \"file:\" needs a path, e.g. \"file:/etc/sipvane/dispatcher.list\""
                        .into(),
                )
            } else {
                Ok(Some(DispatcherSource::File(PathBuf::from(path))))
            }
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Some(DispatcherSource::Postgres(s.to_owned())))
        } else if s.starts_with("mysql://") || s.starts_with("mariadb://") {
            Ok(Some(DispatcherSource::Mysql(s.to_owned())))
        } else {
            Err(format!(
                "source must be \"file:PATH\", \"postgres://…\" or \"mysql://…\" (got \"{s}\")"
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------------------

/// The whole configuration file. `Config::default()` is what sipvane runs with when
/// given no file.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[proxy]`: the SIP side.
    pub proxy: ProxyConfig,
    /// `[dispatcher]`: destination sets, selection, failover and probing.
    pub dispatcher: DispatcherConfig,
    /// `[rtpengine]`: media anchoring.
    pub rtpengine: RtpengineConfig,
    /// `[events]`: call events to Redis.
    pub events: EventsConfig,
    /// `[acc]`: accounting rows in Kamailio's `acc` / `missed_calls` tables.
    pub acc: AccConfig,
    /// `[mgmt]`: management HTTP API and metrics.
    pub mgmt: MgmtConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[security]`: trust boundaries and flood limits.
    pub security: SecurityConfig,
}

/// `[proxy]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Public SIP address every worker binds with SO_REUSEPORT. Default `0.0.0.0:5060`.
    #[serde(with = "sockaddr")]
    pub listen: SocketAddr,
    /// Worker threads. Default `auto` (one per online CPU).
    pub workers: Workers,
    /// First private port: worker `i` binds `private_port_base + i`. `0` (default) means
    /// `listen` port + 1.
    pub private_port_base: u16,
    /// Host or IP written into Via and Record-Route. Default: the `listen` IP, or
    /// 127.0.0.1 (`::1`) when `listen` is the unspecified address — see
    /// [`ProxyConfig::advertise_host`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// I/O driver. Default `auto`.
    pub io: IoMode,
    /// Domains this proxy serves (Request-URI host). Empty (default): every domain.
    pub domains: Vec<String>,
    /// What to do with other domains when `domains` is not empty. Default `reject`.
    pub unknown_domain: UnknownDomain,
    /// Maximum concurrent transactions per worker. Default 262144.
    pub max_transactions: u32,
    /// Maximum dialogs per worker. Default 262144.
    pub max_dialogs: u32,
    /// Fraction of `max_transactions` above which new INVITEs get 503. Default 0.9.
    pub overload_watermark: f64,
    /// Retry-After (seconds) sent with overload 503s. Default 5.
    pub retry_after_s: u32,
    /// How new calls are spread over workers. Default `kernel`.
    pub balance: Balance,
    /// Insert Record-Route on initial requests. Default true.
    pub record_route: bool,
    /// Server / User-Agent header value in locally generated messages; empty: none.
    /// Default `sipvane`.
    pub server_header: String,
    /// Seconds a dialog without BYE and without in-dialog traffic is kept
    /// (Kamailio dialog `default_timeout`); a 2xx's `Session-Expires`
    /// shortens it to the session interval + 32 s. Default 43200.
    pub dialog_timeout_s: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            workers: Workers::Auto,
            private_port_base: 0,
            advertise: None,
            io: IoMode::Auto,
            domains: Vec::new(),
            unknown_domain: UnknownDomain::Reject,
            max_transactions: 262_144,
            max_dialogs: 262_144,
            overload_watermark: 0.9,
            retry_after_s: 5,
            balance: Balance::Kernel,
            record_route: true,
            server_header: "sipvane".to_owned(),
            dialog_timeout_s: 43_200,
        }
    }
}

impl ProxyConfig {
    /// The host written into Via and Record-Route: `advertise`, else the `listen` IP,
    /// else (listen on the unspecified address) the loopback address of that family.
    /// An IPv6 address is returned without brackets.
    pub fn advertise_host(&self) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        match self.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            IpAddr::V6(ip) if ip.is_unspecified() => "::1".to_owned(),
            ip => ip.to_string(),
        }
    }

    /// The first private port (worker 0's).
    pub fn private_base(&self) -> Option<u16> {
        if self.private_port_base == 0 {
            self.listen.port().checked_add(1)
        } else {
            Some(self.private_port_base)
        }
    }

    /// Worker `worker`'s private port; `None` if it would exceed 65535.
    pub fn private_port(&self, worker: usize) -> Option<u16> {
        let base = usize::from(self.private_base()?);
        u16::try_from(base.checked_add(worker)?).ok()
    }
}

/// One `[[dispatcher.rules]]` entry: requests whose Request-URI user starts with
/// `prefix`, or whose Request-URI host is `domain`, go to destination set `set`.
/// Exactly one of `prefix` / `domain` is set (checked by [`Config::validate`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchRule {
    /// Request-URI user prefix, e.g. `+44`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Request-URI host, e.g. `pbx.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Destination set id.
    pub set: u32,
    /// Anchor the media of calls this rule matches (`true`) or not (`false`),
    /// whatever `rtpengine.sets` says; unset: as the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtpengine: Option<bool>,
}

/// `[dispatcher]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// `"file:PATH"`, `"postgres://…"` or `"mysql://…"`; empty (default): none.
    pub source: String,
    /// Shorthand for `source = "file:PATH"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// Selection algorithm, by name or Kamailio number. Default `round-robin`.
    pub algorithm: AlgorithmSpec,
    /// Set used by requests that no rule matches. Default 1.
    pub default_set: u32,
    /// Final responses that make sipvane try the next destination. Default 408, 500, 503.
    pub failover_codes: Vec<u16>,
    /// Timeout (ms) for a first response to a request. Default 2000.
    pub fr_timer_ms: u64,
    /// Timeout (ms) for the final response to an INVITE after a provisional one.
    /// Default 120000.
    pub fr_inv_timer_ms: u64,
    /// How long (ms) a finished transaction lingers to absorb retransmissions
    /// (Kamailio `wt_timer`; RFC 3261 Timers J and L). Default 5000.
    pub wait_timer_ms: u64,
    /// Consecutive failed attempts that take a destination out of rotation. Default 3.
    pub failure_threshold: u32,
    /// Seconds such a destination stays out before being probed again. Default 30.
    pub hold_down_s: u64,
    /// Seconds between OPTIONS probes; 0 turns probing off. Default 5.
    pub ping_interval_s: u64,
    /// Consecutive failed probes that make a destination inactive. Default 3.
    pub probing_threshold: u32,
    /// Consecutive answered probes that make it active again. Default 2.
    pub inactive_threshold: u32,
    /// Probe replies that count as alive. Default 200.
    pub ping_reply_codes: Vec<u16>,
    /// From URI of probes. Default `sip:sipvane@localhost`.
    pub ping_from: String,
    /// Probe method. Default `OPTIONS`.
    pub ping_method: String,
    /// Which destinations are probed. Default `all`.
    pub probing_mode: ProbingMode,
    /// Seconds between re-reads of the source; 0 (default): only on demand.
    pub reload_interval_s: u64,
    /// File where the last good destination table is saved and read back at start-up
    /// if the source is unavailable; empty (default): none.
    pub snapshot_path: String,
    /// Table read from a database source. Default `dispatcher` (Kamailio's).
    pub db_table: String,
    /// Connect and query timeout (ms) for a database source. Default 5000.
    pub db_timeout_ms: u64,
    /// Prefix / domain routing rules, first match wins. Default: none.
    pub rules: Vec<DispatchRule>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            source: String::new(),
            list: None,
            algorithm: AlgorithmSpec::default(),
            default_set: 1,
            failover_codes: vec![408, 500, 503],
            fr_timer_ms: 2000,
            fr_inv_timer_ms: 120_000,
            wait_timer_ms: 5000,
            failure_threshold: 3,
            hold_down_s: 30,
            ping_interval_s: 5,
            probing_threshold: 3,
            inactive_threshold: 2,
            ping_reply_codes: vec![200],
            ping_from: "sip:sipvane@localhost".to_owned(),
            ping_method: "OPTIONS".to_owned(),
            probing_mode: ProbingMode::All,
            reload_interval_s: 0,
            snapshot_path: String::new(),
            db_table: "dispatcher".to_owned(),
            db_timeout_ms: 5000,
            rules: Vec::new(),
        }
    }
}

impl DispatcherConfig {
    /// The destination source: `list` if set, else `source`; `Ok(None)` if neither.
    pub fn resolved_source(&self) -> Result<Option<DispatcherSource>, String> {
        match &self.list {
            Some(path) if !path.is_empty() => Ok(Some(DispatcherSource::File(path.into()))),
            Some(_) => Err("list must not be empty".into()),
            None => DispatcherSource::parse(&self.source),
        }
    }

    /// `fr_timer_ms` as a Duration.
    pub fn fr_timer(&self) -> Duration {
        Duration::from_millis(self.fr_timer_ms)
    }

    /// `fr_inv_timer_ms` as a Duration.
    pub fn fr_inv_timer(&self) -> Duration {
        Duration::from_millis(self.fr_inv_timer_ms)
    }

    /// `hold_down_s` as a Duration.
    pub fn hold_down(&self) -> Duration {
        Duration::from_secs(self.hold_down_s)
    }

    /// Probe interval; `None` when probing is off.
    pub fn ping_interval(&self) -> Option<Duration> {
        (self.ping_interval_s > 0).then(|| Duration::from_secs(self.ping_interval_s))
    }

    /// Periodic reload interval; `None` when off.
    pub fn reload_interval(&self) -> Option<Duration> {
        (self.reload_interval_s > 0).then(|| Duration::from_secs(self.reload_interval_s))
    }
}

/// `[rtpengine]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpengineConfig {
    /// Engines; empty (default): no media anchoring.
    pub engines: Vec<EngineSpec>,
    /// Flags sent with `offer`. Default `replace-origin replace-session-connection`.
    pub offer_flags: String,
    /// Flags sent with `answer`. Default `replace-origin replace-session-connection`.
    pub answer_flags: String,
    /// Destination sets whose calls are anchored; empty (default): all sets.
    pub sets: Vec<u32>,
    /// Time (ms) to wait for an engine's reply before retrying. Default 1000.
    pub timeout_ms: u64,
    /// Retries (each to the next healthy engine) before giving up. Default 2.
    pub retries: u32,
    /// What to do when no engine answers. Default `reject`.
    pub on_failure: RtpFailure,
    /// Seconds between ng `ping`s to each engine; 0: off. Default 5.
    pub ping_interval_s: u64,
}

const DEFAULT_RTP_FLAGS: &str = "replace-origin replace-session-connection";

impl Default for RtpengineConfig {
    fn default() -> Self {
        RtpengineConfig {
            engines: Vec::new(),
            offer_flags: DEFAULT_RTP_FLAGS.to_owned(),
            answer_flags: DEFAULT_RTP_FLAGS.to_owned(),
            sets: Vec::new(),
            timeout_ms: 1000,
            retries: 2,
            on_failure: RtpFailure::Reject,
            ping_interval_s: 5,
        }
    }
}

impl RtpengineConfig {
    /// Whether calls routed to destination set `set` are anchored.
    pub fn anchors_set(&self, set: u32) -> bool {
        !self.engines.is_empty() && (self.sets.is_empty() || self.sets.contains(&set))
    }

    /// `timeout_ms` as a Duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Engine ping interval; `None` when off.
    pub fn ping_interval(&self) -> Option<Duration> {
        (self.ping_interval_s > 0).then(|| Duration::from_secs(self.ping_interval_s))
    }
}

/// `[events]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `redis://…`; empty (default): events off.
    pub redis_url: String,
    /// Redis list events are RPUSHed to. Default `sipvane:events`.
    pub list: String,
    /// Events per RPUSH. Default 256.
    pub batch: u32,
    /// Events buffered while Redis is slow or down; beyond that they are dropped and
    /// counted. Default 100000.
    pub buffer: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            redis_url: String::new(),
            list: "sipvane:events".to_owned(),
            batch: 256,
            buffer: 100_000,
        }
    }
}

/// `[acc]`: one `acc` row per answered INVITE and per BYE, one
/// `missed_calls` row per unanswered call (docs/accounting.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccConfig {
    /// `postgres://…` or `mysql://…`; empty (default): accounting off.
    pub db_url: String,
    /// Table of answered INVITEs and BYEs. Default `acc`.
    pub acc_table: String,
    /// Table of unanswered calls. Default `missed_calls`.
    pub missed_table: String,
    /// Table of CDRs (with `cdrs`). Default `acc_cdrs`.
    pub cdr_table: String,
    /// Also write one `acc_cdrs` row per answered call when it ends. Default false.
    pub cdrs: bool,
    /// Also write failed transactions to `acc` (Kamailio's
    /// `failed_transaction_flag` with `db_flag`). Default false.
    pub log_failed: bool,
    /// Extra columns of `acc` and `missed_calls`: column → source
    /// (`src_user = "from_user"`, `dst_uri = "$du"` …). Default none.
    pub extra: BTreeMap<String, String>,
    /// Extra columns of `acc_cdrs`. Default none.
    pub cdr_extra: BTreeMap<String, String>,
    /// Rows per database transaction. Default 200.
    pub batch: u32,
    /// Rows held in memory before they go to the spool. Default 10000.
    pub buffer: u32,
    /// Milliseconds between writes when idle. Default 100.
    pub flush_interval_ms: u64,
    /// Bound (ms) on connecting and on each transaction. Default 5000.
    pub timeout_ms: u64,
    /// Directory of the spool file `acc.spool`. Default `/var/lib/sipvane`.
    pub spool_dir: PathBuf,
    /// Largest spool file; beyond it new rows are dropped and counted.
    /// Default 268435456 (256 MiB).
    pub spool_max_bytes: u64,
    /// sipvane's progress table in the accounting database (created if
    /// missing). Default `sipvane_acc_spool`.
    pub spool_table: String,
}

impl Default for AccConfig {
    fn default() -> Self {
        AccConfig {
            db_url: String::new(),
            acc_table: "acc".to_owned(),
            missed_table: "missed_calls".to_owned(),
            cdr_table: "acc_cdrs".to_owned(),
            cdrs: false,
            log_failed: false,
            extra: BTreeMap::new(),
            cdr_extra: BTreeMap::new(),
            batch: 200,
            buffer: 10_000,
            flush_interval_ms: 100,
            timeout_ms: 5000,
            spool_dir: PathBuf::from("/var/lib/sipvane"),
            spool_max_bytes: 256 << 20,
            spool_table: "sipvane_acc_spool".to_owned(),
        }
    }
}

/// `[mgmt]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MgmtConfig {
    /// Address of the management HTTP API and /metrics. Default `127.0.0.1:9060`.
    #[serde(with = "sockaddr")]
    pub listen: SocketAddr,
    /// Bearer token required by the API; empty (default): none.
    pub token: String,
}

impl Default for MgmtConfig {
    fn default() -> Self {
        MgmtConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9060)),
            token: String::new(),
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level or tracing filter directive (`info`, `warn,control=debug`). Default `info`.
    pub level: String,
    /// Line format. Default `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// `[security]`: who may do what (docs/security.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// CIDRs whose requests may follow pre-loaded routes, reach any in-dialog
    /// target and relay to domains not served, and are exempt from flood
    /// limits. Dispatcher destinations are trusted by address and port anyway.
    /// Default: none.
    pub trusted_sources: Vec<String>,
    /// Pre-loaded Route headers of initial requests. Default `strip`.
    pub preloaded_route: PreloadedRoute,
    /// Where untrusted in-dialog requests may go. Default `known`.
    pub dialog_targets: DialogTargets,
    /// `[security.flood]`: per-source rate limit.
    pub flood: FloodConfig,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            trusted_sources: Vec::new(),
            preloaded_route: PreloadedRoute::Strip,
            dialog_targets: DialogTargets::Known,
            flood: FloodConfig::default(),
        }
    }
}

/// `[security.flood]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodConfig {
    /// Requests per second one source IP may send (per worker that receives
    /// them); 0 (default) turns the limit off.
    pub per_source_rps: u32,
    /// How long a source over its rate stays blocked, in seconds. Default 10.
    pub block_s: u32,
    /// What a blocked source's requests get. Default `reply` (503).
    pub action: FloodAction,
    /// Sources tracked per worker; beyond it the quietest are forgotten. Default 65536.
    pub max_sources: u32,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            per_source_rps: 0,
            block_s: 10,
            action: FloodAction::Reply,
            max_sources: 65_536,
        }
    }
}

/// One step of a key path: `dispatcher.rules[1].prefix` is
/// `[Key("dispatcher"), Key("rules"), Index(1), Key("prefix")]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSeg {
    /// A table key.
    Key(String),
    /// An array element (0-based).
    Index(usize),
}

fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_owned())
}

/// A validation problem: which key, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key the problem is about (used to find its line).
    pub path: Vec<PathSeg>,
    /// What is wrong, as a sentence fragment without location, e.g.
    /// `listen port must not be 0`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A located problem, printed as `FILE:LINE: message` (or `FILE: message` when no line
/// applies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// File name as given by the user.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found while loading a configuration file (at least one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// One entry per problem, in file order within each stage.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// Upper bound on deserialisation retries, so a pathological file cannot loop for long.
const MAX_DESER_ERRORS: usize = 64;

impl Config {
    /// Reads, parses and validates a configuration file. Diagnostics name the file as
    /// `path` is displayed.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml_str(&text, &file),
            Err(e) => Err(ConfigError {
                diagnostics: vec![Diagnostic {
                    file,
                    line: None,
                    message: format!("cannot read configuration file: {e}"),
                }],
            }),
        }
    }

    /// Parses and validates configuration text; `file` is the name used in diagnostics.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        let diag = |line: Option<usize>, message: String| Diagnostic {
            file: file.to_owned(),
            line,
            message,
        };
        let doc = match ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let line = e.span().map(|s| line_of(text, s.start));
                let message = format!("invalid TOML: {}", one_line(e.message()));
                return Err(ConfigError {
                    diagnostics: vec![diag(line, message)],
                });
            }
        };

        let mut diagnostics = Vec::new();
        let mut working = text.to_owned();
        let mut config = None;
        for _ in 0..MAX_DESER_ERRORS {
            let err = match toml::from_str::<Config>(&working) {
                Ok(c) => {
                    config = Some(c);
                    break;
                }
                Err(e) => e,
            };
            let Some(span) = err.span() else {
                diagnostics.push(diag(None, one_line(err.message())));
                break;
            };
            let hit = find_at(doc.as_table(), span.start);
            diagnostics.push(diag(
                Some(line_of(text, span.start)),
                describe_de_error(err.message(), &hit.path, hit.is_table),
            ));
            let blank = hit.extent.unwrap_or(span);
            if !blank_lines(&mut working, blank) {
                break;
            }
        }

        // Validation of a config whose bad keys were blanked still finds the problems
        // in the keys that remain. Keys are located in the blanked text: blanking a
        // `[[table]]` shifts the indexes of the ones after it, but no offsets.
        if let Some(cfg) = &config {
            let problems = cfg.validate();
            if !problems.is_empty() {
                let blanked = ImDocument::parse(working.as_str()).ok();
                let root = blanked.as_ref().map_or(doc.as_table(), |d| d.as_table());
                for p in problems {
                    let line = locate(root, &p.path).map(|pos| line_of(text, pos));
                    diagnostics.push(diag(line, p.message));
                }
            }
        }
        diagnostics.sort_by_key(|d| d.line);
        match config {
            Some(cfg) if diagnostics.is_empty() => Ok(cfg),
            _ => Err(ConfigError { diagnostics }),
        }
    }

    /// The configuration as TOML (what `sipvane run --print-config` prints); loading it
    /// back gives an equal `Config`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    /// Checks everything the types alone do not: ranges, formats, combinations.
    /// Returns every problem found (empty: valid).
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Validator::default();
        self.validate_proxy(&mut v);
        self.validate_dispatcher(&mut v);
        self.validate_rtpengine(&mut v);
        self.validate_events(&mut v);
        self.validate_acc(&mut v);
        self.validate_mgmt_log(&mut v);
        self.validate_security(&mut v);
        v.problems
    }

    fn validate_proxy(&self, v: &mut Validator) {
        let p = &self.proxy;
        let at = |k: &str| vec![key("proxy"), key(k)];
        if p.listen.port() == 0 {
            v.err(at("listen"), "listen port must not be 0".into());
        }
        if p.workers == Workers::Count(0) {
            v.err(at("workers"), format!("workers must be {WORKERS_MUST}"));
        }
        if let Workers::Count(n) = p.workers {
            if n > MAX_WORKERS {
                v.err(
                    at("workers"),
                    format!("workers must be at most {MAX_WORKERS} (got {n})"),
                );
            }
        }
        match p.private_base() {
            None => v.err(
                at("listen"),
                "listen port 65535 leaves no room for private ports; set private_port_base".into(),
            ),
            Some(base) => {
                let n = match p.workers {
                    Workers::Count(n) => n.max(1),
                    Workers::Auto => 1,
                };
                let last = usize::from(base) + n - 1;
                let path = if p.private_port_base == 0 {
                    at("workers")
                } else {
                    at("private_port_base")
                };
                if last > usize::from(u16::MAX) {
                    v.err(
                        path,
                        format!("private ports {base}..{last} for {n} workers exceed 65535"),
                    );
                } else if (usize::from(base)..=last).contains(&usize::from(p.listen.port())) {
                    v.err(
                        path,
                        format!(
                            "private ports {base}..{last} include the listen port {}",
                            p.listen.port()
                        ),
                    );
                }
            }
        }
        if let Some(a) = &p.advertise {
            if !is_host(a) {
                v.err(
                    at("advertise"),
                    format!("advertise must be a host name or IP address (got \"{a}\")"),
                );
            }
        }
        for (i, d) in p.domains.iter().enumerate() {
            if !is_host(d) {
                v.err(
                    vec![key("proxy"), key("domains"), PathSeg::Index(i)],
                    format!("domains entries must be host names or IP addresses (got \"{d}\")"),
                );
            }
        }
        if p.max_transactions == 0 {
            v.err(
                at("max_transactions"),
                "max_transactions must be ≥ 1".into(),
            );
        }
        if p.max_dialogs == 0 {
            v.err(at("max_dialogs"), "max_dialogs must be ≥ 1".into());
        }
        let w = p.overload_watermark;
        if !(w > 0.0 && w <= 1.0) {
            v.err(
                at("overload_watermark"),
                format!(
                    "overload_watermark must be a fraction greater than 0 and at most 1 (got {w})"
                ),
            );
        }
        if p.dialog_timeout_s == 0 {
            v.err(
                at("dialog_timeout_s"),
                "dialog_timeout_s must be ≥ 1".into(),
            );
        }
        if !is_header_text(&p.server_header) {
            v.err(
                at("server_header"),
                "server_header must not contain control characters".into(),
            );
        }
    }

    fn validate_dispatcher(&self, v: &mut Validator) {
        let d = &self.dispatcher;
        let at = |k: &str| vec![key("dispatcher"), key(k)];
        if let Err(e) = DispatcherSource::parse(&d.source) {
            v.err(at("source"), e);
        }
        match &d.list {
            Some(l) if l.is_empty() => {
                v.err(at("list"), "list must not be empty".into());
            }
            Some(_) if !d.source.is_empty() => v.err(
                at("list"),
                "set either source or list (shorthand for source = \"file:PATH\"), not both".into(),
            ),
            _ => {}
        }
        if !d.algorithm.is_known() {
            v.err(at("algorithm"), unknown_algorithm(&d.algorithm));
        }
        if crate::source::db::validate_table_name(&d.db_table).is_err() {
            v.err(
                at("db_table"),
                format!(
                    "db_table must be a plain SQL name, optionally schema.table (got \"{}\")",
                    d.db_table
                ),
            );
        }
        if d.db_timeout_ms == 0 {
            v.err(at("db_timeout_ms"), "db_timeout_ms must be ≥ 1".into());
        }
        for (i, &c) in d.failover_codes.iter().enumerate() {
            if !(300..=699).contains(&c) {
                v.err(
                    vec![key("dispatcher"), key("failover_codes"), PathSeg::Index(i)],
                    format!(
                        "failover_codes entries must be final non-2xx codes 300..699 (got {c})"
                    ),
                );
            }
        }
        for (i, &c) in d.ping_reply_codes.iter().enumerate() {
            if !(100..=699).contains(&c) {
                v.err(
                    vec![
                        key("dispatcher"),
                        key("ping_reply_codes"),
                        PathSeg::Index(i),
                    ],
                    format!("ping_reply_codes entries must be SIP codes 100..699 (got {c})"),
                );
            }
        }
        if d.ping_interval_s > 0 && d.ping_reply_codes.is_empty() {
            v.err(
                at("ping_reply_codes"),
                "ping_reply_codes must not be empty while probing is on".into(),
            );
        }
        for (k, val) in [
            ("fr_timer_ms", d.fr_timer_ms),
            ("fr_inv_timer_ms", d.fr_inv_timer_ms),
            ("wait_timer_ms", d.wait_timer_ms),
            ("failure_threshold", u64::from(d.failure_threshold)),
            ("probing_threshold", u64::from(d.probing_threshold)),
            ("inactive_threshold", u64::from(d.inactive_threshold)),
        ] {
            if val == 0 {
                v.err(at(k), format!("{k} must be ≥ 1"));
            }
        }
        let from_ok = (d.ping_from.starts_with("sip:") || d.ping_from.starts_with("sips:"))
            && !d
                .ping_from
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'));
        if !from_ok {
            v.err(
                at("ping_from"),
                format!(
                    "ping_from must be a sip: or sips: URI (got \"{}\")",
                    d.ping_from
                ),
            );
        }
        if d.ping_method.is_empty() || !d.ping_method.bytes().all(is_token_byte) {
            v.err(
                at("ping_method"),
                format!(
                    "ping_method must be a SIP method name (got \"{}\")",
                    d.ping_method
                ),
            );
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (i, r) in d.rules.iter().enumerate() {
            let rule_path = |k: Option<&str>| {
                let mut p = vec![key("dispatcher"), key("rules"), PathSeg::Index(i)];
                p.extend(k.map(key));
                p
            };
            let (kind, value) = match (&r.prefix, &r.domain) {
                (Some(p), None) => ("prefix", p.as_str()),
                (None, Some(dm)) => ("domain", dm.as_str()),
                _ => {
                    v.err(
                        rule_path(None),
                        "a dispatcher rule must have exactly one of \"prefix\" or \"domain\""
                            .into(),
                    );
                    continue;
                }
            };
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                v.err(
                    rule_path(Some(kind)),
                    format!(
                        "rule {kind} must be a non-empty word without spaces (got \"{value}\")"
                    ),
                );
            } else if kind == "domain" && !is_host(value) {
                v.err(
                    rule_path(Some(kind)),
                    format!("rule domain must be a host name (got \"{value}\")"),
                );
            } else if seen.contains(&(kind, value)) {
                v.err(
                    rule_path(Some(kind)),
                    format!("duplicate rule for {kind} \"{value}\" (the first one wins)"),
                );
            }
            seen.push((kind, value));
            if r.rtpengine == Some(true) && self.rtpengine.engines.is_empty() {
                v.err(
                    rule_path(Some("rtpengine")),
                    "rule rtpengine = true needs [rtpengine] engines".into(),
                );
            }
        }
    }

    fn validate_rtpengine(&self, v: &mut Validator) {
        let r = &self.rtpengine;
        let at = |k: &str| vec![key("rtpengine"), key(k)];
        for (i, e) in r.engines.iter().enumerate() {
            if e.weight == 0 {
                v.err(
                    vec![key("rtpengine"), key("engines"), PathSeg::Index(i)],
                    format!("engines weight must be ≥ 1 (got \"{e}\")"),
                );
            }
            if r.engines[..i].iter().any(|o| o.addr == e.addr) {
                v.err(
                    vec![key("rtpengine"), key("engines"), PathSeg::Index(i)],
                    format!("engine {} is listed twice", e.addr),
                );
            }
        }
        for k in ["offer_flags", "answer_flags"] {
            let flags = if k == "offer_flags" {
                &r.offer_flags
            } else {
                &r.answer_flags
            };
            if !is_header_text(flags) {
                v.err(at(k), format!("{k} must not contain control characters"));
            } else if let Err(e) = dataplane::rtpengine::NgFlags::parse(flags) {
                v.err(at(k), format!("{k}: {e}"));
            }
        }
        if r.engines.len() > dataplane::rtpengine::client::MAX_ENGINES {
            v.err(
                at("engines"),
                format!(
                    "at most {} engines (got {})",
                    dataplane::rtpengine::client::MAX_ENGINES,
                    r.engines.len()
                ),
            );
        }
        if let Some(first) = r.engines.first() {
            if r.engines
                .iter()
                .any(|e| e.addr.is_ipv4() != first.addr.is_ipv4())
            {
                v.err(
                    at("engines"),
                    "engines must all be IPv4 or all IPv6 (each worker has one ng socket)".into(),
                );
            }
        }
        if r.timeout_ms == 0 {
            v.err(at("timeout_ms"), "timeout_ms must be ≥ 1".into());
        }
    }

    fn validate_events(&self, v: &mut Validator) {
        let e = &self.events;
        let at = |k: &str| vec![key("events"), key(k)];
        let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
        if !e.redis_url.is_empty() && !schemes.iter().any(|s| e.redis_url.starts_with(s)) {
            v.err(
                at("redis_url"),
                format!(
                    "redis_url must start with redis://, rediss://, redis+unix:// or unix:// (got \"{}\")",
                    e.redis_url
                ),
            );
        }
        if e.list.is_empty() {
            v.err(at("list"), "list must not be empty".into());
        }
        if e.batch == 0 {
            v.err(at("batch"), "batch must be ≥ 1".into());
        }
        if e.buffer == 0 {
            v.err(at("buffer"), "buffer must be ≥ 1".into());
        } else if e.batch > e.buffer {
            v.err(
                at("batch"),
                format!("batch ({}) must not exceed buffer ({})", e.batch, e.buffer),
            );
        }
    }

    fn validate_security(&self, v: &mut Validator) {
        let sec = &self.security;
        for (i, c) in sec.trusted_sources.iter().enumerate() {
            if parse_cidr(c).is_err() {
                v.err(
                    vec![key("security"), key("trusted_sources"), PathSeg::Index(i)],
                    format!(
                        "trusted_sources entries must be IP addresses or CIDRs like \"10.0.0.0/8\" (got \"{c}\")"
                    ),
                );
            }
        }
        let at = |k: &str| vec![key("security"), key("flood"), key(k)];
        if sec.flood.per_source_rps > 0 && sec.flood.block_s == 0 {
            v.err(
                at("block_s"),
                "block_s must be ≥ 1 when per_source_rps is set".into(),
            );
        }
        if sec.flood.max_sources == 0 {
            v.err(at("max_sources"), "max_sources must be ≥ 1".into());
        }
    }

    fn validate_acc(&self, v: &mut Validator) {
        use crate::acc::row::{is_column_name, Source, ACC_COLUMNS, CDR_COLUMNS, SOURCE_NAMES};
        let a = &self.acc;
        let at = |k: &str| vec![key("acc"), key(k)];
        if !a.db_url.is_empty() && !crate::source::db::is_database_url(&a.db_url) {
            v.err(
                at("db_url"),
                format!(
                    "db_url must start with postgres://, postgresql://, mysql:// or mariadb:// (got \"{}\")",
                    crate::source::db::redact_url(&a.db_url)
                ),
            );
        }
        for k in ["acc_table", "missed_table", "cdr_table", "spool_table"] {
            let t = match k {
                "acc_table" => &a.acc_table,
                "missed_table" => &a.missed_table,
                "cdr_table" => &a.cdr_table,
                _ => &a.spool_table,
            };
            if crate::source::db::validate_table_name(t).is_err() {
                v.err(
                    at(k),
                    format!("{k} must be a table name (letters, digits, _, optionally schema.table; got \"{t}\")"),
                );
            }
        }
        for (k, n) in [("batch", a.batch), ("buffer", a.buffer)] {
            if n == 0 {
                v.err(at(k), format!("{k} must be ≥ 1"));
            }
        }
        for (k, n) in [
            ("flush_interval_ms", a.flush_interval_ms),
            ("timeout_ms", a.timeout_ms),
        ] {
            if n == 0 {
                v.err(at(k), format!("{k} must be ≥ 1"));
            }
        }
        if a.spool_max_bytes < 4096 {
            v.err(
                at("spool_max_bytes"),
                format!("spool_max_bytes must be ≥ 4096 (got {})", a.spool_max_bytes),
            );
        }
        if a.spool_dir.as_os_str().is_empty() {
            v.err(at("spool_dir"), "spool_dir must not be empty".into());
        }
        for (section, map, fixed) in [
            ("extra", &a.extra, &ACC_COLUMNS[..]),
            ("cdr_extra", &a.cdr_extra, &CDR_COLUMNS[..]),
        ] {
            for (col, src) in map {
                let path = vec![key("acc"), key(section), key(col)];
                if !is_column_name(col) {
                    v.err(
                        path,
                        format!("{section} column \"{col}\" must be letters, digits and _ (not starting with a digit)"),
                    );
                } else if fixed.contains(&col.as_str()) {
                    v.err(
                        path,
                        format!("{section} column \"{col}\" is already written by sipvane"),
                    );
                } else if Source::parse(src).is_none() {
                    v.err(
                        path,
                        format!("unknown source \"{src}\" for column \"{col}\"; expected one of {SOURCE_NAMES}"),
                    );
                }
            }
        }
    }

    fn validate_mgmt_log(&self, v: &mut Validator) {
        if self
            .mgmt
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            v.err(
                vec![key("mgmt"), key("token")],
                "token must not contain spaces or control characters".into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            v.err(
                vec![key("log"), key("level")],
                format!(
                    "level must be a log level (error, warn, info, debug, trace, off) or a filter directive (got \"{}\": {e})",
                    self.log.level
                ),
            );
        }
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn err(&mut self, path: Vec<PathSeg>, message: String) {
        self.problems.push(Problem { path, message });
    }
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<dataplane::route::Cidr, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<dataplane::route::Cidr>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(dataplane::route::Cidr::from)
        .map_err(|e| e.to_string())
}

/// RFC 3261 `token` characters (method names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Text that may be written into a header value: no CR/LF or other control characters
/// (which would let a config value inject headers).
fn is_header_text(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// A host name, IPv4 address or IPv6 address (bare or in brackets).
fn is_host(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

// ---------------------------------------------------------------------------------------
// Locating keys in the document
// ---------------------------------------------------------------------------------------

/// 1-based line of byte offset `pos`.
fn line_of(text: &str, pos: usize) -> usize {
    1 + text.bytes().take(pos).filter(|&b| b == b'\n').count()
}

fn one_line(msg: &str) -> String {
    msg.trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn contains(span: &Range<usize>, pos: usize) -> bool {
    span.start <= pos && pos < span.end.max(span.start + 1)
}

/// What sits at a byte offset of the document.
#[derive(Default)]
struct Hit {
    /// Key path of the innermost key or value there.
    path: Vec<PathSeg>,
    /// Byte range of the table-level entry around it (a `key = value` line or a whole
    /// `[table]`), which is what gets blanked to look for further errors.
    extent: Option<Range<usize>>,
    /// Whether the innermost item is a table (for "unknown section" wording).
    is_table: bool,
}

fn find_at(root: &Table, pos: usize) -> Hit {
    let mut hit = Hit::default();
    find_in_table(root, pos, None, &mut hit);
    hit
}

/// Byte range from a table's header to the end of its last entry.
fn table_extent(t: &Table) -> Option<Range<usize>> {
    let mut ext = t.span()?;
    for (_, item) in t.iter() {
        let end = match item {
            Item::Value(v) => v.span().map(|s| s.end),
            Item::Table(sub) if sub.is_dotted() => {
                table_extent(sub).map(|s| s.end).or_else(|| dotted_end(sub))
            }
            _ => None,
        };
        if let Some(end) = end {
            ext.end = ext.end.max(end);
        }
    }
    Some(ext)
}

/// End of the last value under a dotted-key table (which has no span of its own).
fn dotted_end(t: &Table) -> Option<usize> {
    t.iter()
        .filter_map(|(_, item)| match item {
            Item::Value(v) => v.span().map(|s| s.end),
            Item::Table(sub) => dotted_end(sub),
            _ => None,
        })
        .max()
}

/// Finds `pos` under `table`; `dotted_start` is the start of the first key of a dotted
/// key (`proxy.listen = …`) whose inner tables are being searched.
fn find_in_table(table: &Table, pos: usize, dotted_start: Option<usize>, hit: &mut Hit) -> bool {
    for (k, item) in table.iter() {
        let key_span = table.key(k).and_then(|k| k.span());
        match item {
            Item::Value(v) => {
                let (Some(ks), Some(vs)) = (key_span.clone(), v.span()) else {
                    continue;
                };
                let entry = dotted_start.unwrap_or(ks.start)..vs.end;
                if contains(&entry, pos) {
                    hit.path.push(key(k));
                    hit.extent = Some(entry);
                    hit.is_table = matches!(v, Value::InlineTable(_));
                    find_in_value(v, pos, hit);
                    return true;
                }
            }
            Item::Table(t) => {
                hit.path.push(key(k));
                let ds = if t.is_dotted() {
                    dotted_start.or(key_span.as_ref().map(|s| s.start))
                } else {
                    None
                };
                if find_in_table(t, pos, ds, hit) {
                    return true;
                }
                let on_header = t.span().is_some_and(|s| contains(&s, pos))
                    || key_span.as_ref().is_some_and(|s| contains(s, pos));
                if on_header {
                    hit.extent = table_extent(t);
                    hit.is_table = true;
                    return true;
                }
                hit.path.pop();
            }
            Item::ArrayOfTables(a) => {
                hit.path.push(key(k));
                if find_in_aot(a, pos, hit) {
                    return true;
                }
                hit.path.pop();
            }
            Item::None => {}
        }
    }
    false
}

fn find_in_aot(a: &ArrayOfTables, pos: usize, hit: &mut Hit) -> bool {
    for (i, t) in a.iter().enumerate() {
        hit.path.push(PathSeg::Index(i));
        if find_in_table(t, pos, None, hit) {
            return true;
        }
        if t.span().is_some_and(|s| contains(&s, pos)) {
            hit.extent = table_extent(t);
            hit.is_table = true;
            return true;
        }
        hit.path.pop();
    }
    false
}

fn find_in_value(v: &Value, pos: usize, hit: &mut Hit) {
    match v {
        Value::Array(arr) => {
            for (i, e) in arr.iter().enumerate() {
                if e.span().is_some_and(|s| contains(&s, pos)) {
                    hit.path.push(PathSeg::Index(i));
                    hit.is_table = matches!(e, Value::InlineTable(_));
                    find_in_value(e, pos, hit);
                    return;
                }
            }
        }
        Value::InlineTable(t) => {
            for (k, val) in t.iter() {
                let Some(ks) = t.key(k).and_then(|k| k.span()) else {
                    continue;
                };
                let end = val.span().map_or(ks.end, |s| s.end);
                if contains(&(ks.start..end), pos) {
                    hit.path.push(key(k));
                    hit.is_table = matches!(val, Value::InlineTable(_));
                    find_in_value(val, pos, hit);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Byte offset where `path` (or the deepest written part of it) appears: the key for
/// table entries, the element for array entries, the header for `[[tables]]`.
fn locate(root: &Table, path: &[PathSeg]) -> Option<usize> {
    enum Node<'a> {
        Table(&'a Table),
        Aot(&'a ArrayOfTables),
        Value(&'a Value),
    }
    fn node(item: &Item) -> Option<Node<'_>> {
        match item {
            Item::Table(t) => Some(Node::Table(t)),
            Item::ArrayOfTables(a) => Some(Node::Aot(a)),
            Item::Value(v) => Some(Node::Value(v)),
            Item::None => None,
        }
    }
    let mut best = None;
    let mut cur = Node::Table(root);
    for seg in path {
        let next = match (&cur, seg) {
            (Node::Table(t), PathSeg::Key(k)) => t.get_key_value(k).and_then(|(kk, item)| {
                best = kk.span().map(|s| s.start).or(best);
                node(item)
            }),
            (Node::Value(Value::InlineTable(t)), PathSeg::Key(k)) => {
                t.get_key_value(k).and_then(|(kk, item)| {
                    best = kk.span().map(|s| s.start).or(best);
                    node(item)
                })
            }
            (Node::Aot(a), PathSeg::Index(i)) => a.get(*i).map(|t| {
                best = t.span().map(|s| s.start).or(best);
                Node::Table(t)
            }),
            (Node::Value(Value::Array(arr)), PathSeg::Index(i)) => arr.get(*i).map(|v| {
                best = v.span().map(|s| s.start).or(best);
                Node::Value(v)
            }),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    best
}

/// Replaces every line touched by `range` with spaces (newlines kept, so offsets and
/// line numbers stay valid). Returns false if there was nothing left to blank.
fn blank_lines(text: &mut String, range: Range<usize>) -> bool {
    let bytes = text.as_bytes();
    let len = bytes.len();
    let start = range.start.min(len);
    let end = range.end.clamp(start, len);
    let line_start = bytes[..start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let line_end = bytes[end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(len, |p| end + p);
    let mut out = bytes.to_vec();
    let mut changed = false;
    for b in &mut out[line_start..line_end] {
        if !matches!(*b, b'\n' | b'\r' | b' ') {
            *b = b' ';
            changed = true;
        }
    }
    // Only whole lines of a valid UTF-8 string were replaced by ASCII: still UTF-8.
    match String::from_utf8(out) {
        Ok(s) if changed => {
            *text = s;
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Wording of deserialisation errors
// ---------------------------------------------------------------------------------------

/// Backtick-quoted words in `s`, e.g. the field list of serde's "expected one of `a`, `b`".
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// `[proxy]`, `[[dispatcher.rules]]`, … for the table at `path`.
fn table_name(path: &[PathSeg]) -> String {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            PathSeg::Key(k) => Some(k.as_str()),
            PathSeg::Index(_) => None,
        })
        .collect();
    if matches!(path.last(), Some(PathSeg::Index(_))) {
        format!("[[{}]]", keys.join("."))
    } else {
        format!("[{}]", keys.join("."))
    }
}

/// How a key is named in messages: relative to its section (`workers`,
/// `failover_codes[1]`, `rules[0].set`); a section by its own name.
fn key_name(path: &[PathSeg]) -> String {
    let rel = if path.len() > 1 { &path[1..] } else { path };
    let mut s = String::new();
    for seg in rel {
        match seg {
            PathSeg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn pretty_expected(ty: &str) -> String {
    let ty = ty.trim();
    match ty {
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" => "an integer from 0 to 4294967295".into(),
        "u64" | "usize" => "a non-negative integer".into(),
        "i64" | "i32" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        _ if ty.starts_with("struct ") || ty == "a map" => "a table".into(),
        _ => ty.to_owned(),
    }
}

fn pretty_got(what: &str) -> String {
    let what = what.trim();
    if let Some(s) = what.strip_prefix("string ") {
        return s.to_owned();
    }
    if let Some(v) = backticked(what).first() {
        return (*v).to_owned();
    }
    match what {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        _ => what.to_owned(),
    }
}

const SECTIONS: &str = "proxy, dispatcher, rtpengine, events, acc, mgmt, log";

/// Rewords a serde/toml deserialisation message for the key at `path`.
fn describe_de_error(msg: &str, path: &[PathSeg], is_table: bool) -> String {
    let msg = one_line(msg);
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let words = backticked(rest);
        let name = words.first().copied().unwrap_or("?");
        let expected = words.get(1..).unwrap_or(&[]).join(", ");
        let parent = match path.last() {
            Some(PathSeg::Key(k)) if k == name => &path[..path.len() - 1],
            _ => path,
        };
        return if parent.is_empty() {
            if is_table {
                format!("unknown section [{name}]; expected one of {SECTIONS}")
            } else {
                format!(
                    "unknown key \"{name}\" outside any section; expected a section: {SECTIONS}"
                )
            }
        } else if expected.is_empty() {
            format!("unknown key \"{name}\" in {}", table_name(parent))
        } else {
            format!(
                "unknown key \"{name}\" in {}; expected one of {expected}",
                table_name(parent)
            )
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let name = backticked(rest).first().copied().unwrap_or("?").to_owned();
        return format!("{} is missing required key \"{name}\"", table_name(path));
    }
    let name = key_name(path);
    if name.is_empty() {
        return msg;
    }
    if msg.starts_with("must ") {
        return format!("{name} {msg}");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((got, ty)) = rest.rsplit_once(", expected ") {
                return format!(
                    "{name} must be {} (got {})",
                    pretty_expected(ty),
                    pretty_got(got)
                );
            }
        }
    }
    format!("{name}: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml_str(text, "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn blanking_keeps_lines_and_offsets() {
        let mut s = "a = 1\nb = [1,\n 2]\nc = 3\n".to_owned();
        assert!(blank_lines(&mut s, 10..14));
        assert_eq!(s, "a = 1\n       \n   \nc = 3\n");
        assert!(!blank_lines(&mut s, 7..8));
    }

    #[test]
    fn dotted_keys_are_located() {
        let e = errors("proxy.listen = 5\nproxy.workers = 0\n");
        assert_eq!(
            e,
            vec![
                "t.toml:1: listen must be an IP:PORT socket address such as \"0.0.0.0:5060\" (got 5)",
                "t.toml:2: workers must be \"auto\" or a number ≥ 1 (got 0)",
            ]
        );
    }

    #[test]
    fn inline_rule_errors_point_at_the_element() {
        let e = errors("[dispatcher]\nrules = [\n  { prefix = \"1\", set = 1 },\n  { prefix = \"2\", domain = \"x\", set = 2 },\n]\n");
        assert_eq!(
            e,
            vec!["t.toml:4: a dispatcher rule must have exactly one of \"prefix\" or \"domain\""]
        );
    }

    #[test]
    fn algorithm_numbers_and_names() {
        assert_eq!(
            AlgorithmSpec::parse_known("rr").map(|a| a.kamailio_number()),
            Ok(Some(4))
        );
        assert_eq!(
            AlgorithmSpec::parse_known("13"),
            Ok(AlgorithmSpec::Number(13))
        );
        assert!(AlgorithmSpec::parse_known("7").is_err());
        assert_eq!(
            AlgorithmSpec::Name("rendezvous".into()).kamailio_number(),
            None
        );
        assert!(AlgorithmSpec::Name("rendezvous".into()).is_known());
    }

    #[test]
    fn engine_spec_round_trip() {
        let e: EngineSpec = "udp:[::1]:22222=3".parse().unwrap();
        assert_eq!(e.weight, 3);
        assert_eq!(e.to_string(), "udp:[::1]:22222=3");
        assert!("tcp:1.2.3.4:1".parse::<EngineSpec>().is_err());
        assert!("udp:1.2.3.4:1=0".parse::<EngineSpec>().is_err());
    }

    #[test]
    fn private_ports() {
        let mut p = ProxyConfig::default();
        assert_eq!(p.private_port(0), Some(5061));
        assert_eq!(p.private_port(3), Some(5064));
        p.private_port_base = 7000;
        assert_eq!(p.private_port(2), Some(7002));
        p.private_port_base = 65535;
        assert_eq!(p.private_port(1), None);
    }

    #[test]
    fn advertise_defaults() {
        let mut p = ProxyConfig::default();
        assert_eq!(p.advertise_host(), "127.0.0.1");
        p.listen = "10.0.0.5:5060".parse().unwrap();
        assert_eq!(p.advertise_host(), "10.0.0.5");
        p.listen = "[::]:5060".parse().unwrap();
        assert_eq!(p.advertise_host(), "::1");
        p.advertise = Some("sip.example.com".into());
        assert_eq!(p.advertise_host(), "sip.example.com");
    }
}
