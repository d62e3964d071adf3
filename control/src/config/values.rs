//! Value types of the configuration: closed string sets, workers, algorithms,
//! RTPEngine endpoints, dispatcher sources, and the serde plumbing that makes
//! their errors readable.

use super::*;

// ---------------------------------------------------------------------------------------
// Small value types
// ---------------------------------------------------------------------------------------

/// A scalar as the deserialiser saw it, for error messages and parsing.
pub(super) enum Scalar<'a> {
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
pub(super) fn must(what: &str, got: &Scalar<'_>) -> String {
    format!("must be {what} (got {got})")
}

/// Deserialises one value through `parse`. Errors are raised inside the deserialiser's
/// own call, which is what makes toml attach the span of this very value (an element of
/// an array, not the whole array) to them.
pub(super) struct ScalarVisitor<F> {
    expecting: &'static str,
    parse: F,
}

pub(super) fn scalar<'de, D, T, F>(d: D, expecting: &'static str, parse: F) -> Result<T, D::Error>
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

pub(super) fn quoted_list(names: &[&str]) -> String {
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
    pub enum Balance (default Callid) {
        /// Leave it to the kernel's SO_REUSEPORT hash (per source address): a
        /// trunk sending from one address uses one worker.
        Kernel => "kernel",
        /// The receiving worker passes each request on the public port to the
        /// worker chosen by hash(Call-ID): even load even when all traffic comes
        /// from one trunk.
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

pub(super) const WORKERS_MUST: &str = "\"auto\" or a number ≥ 1";

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

pub(super) fn unknown_algorithm(spec: &AlgorithmSpec) -> String {
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

pub(super) const ENGINE_MUST: &str = "\"udp:IP:PORT\" or \"udp:IP:PORT=WEIGHT\" with WEIGHT ≥ 1";

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
pub(super) mod sockaddr {
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
