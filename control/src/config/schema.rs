//! The configuration schema: every section, every key, every default.

use super::*;

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
    /// `[hep]`: HEPv3 capture of every SIP message to a Homer collector.
    pub hep: HepConfig,
    /// `[mgmt]`: management HTTP API and metrics.
    pub mgmt: MgmtConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[security]`: trust boundaries and flood limits.
    pub security: SecurityConfig,
    /// `[registrar]`: REGISTER, digest authentication and location.
    pub registrar: RegistrarConfig,
    /// `[tcp]`: the TCP transport on `[proxy] listen` and its limits.
    pub tcp: TcpConfig,
    /// `[tls]`: SIP over TLS on its own port.
    pub tls: TlsConfig,
    /// `[dns]`: the control thread's resolver (RFC 3263).
    pub dns: DnsConfig,
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
    /// RFC 7339 loss-based overload control feedback (`oc` Via parameters) to
    /// upstream clients that offer it. Default true.
    pub overload_control: bool,
    /// Fraction of the shedding point (`max_transactions × overload_watermark`)
    /// from which the loss percentage told to those clients grows (0 % below,
    /// 100 % at the shedding point). Default 0.75.
    pub overload_control_start: f64,
    /// `oc-validity` (milliseconds) of a non-zero loss value. Default 500.
    pub overload_control_validity_ms: u32,
    /// New INVITEs get 503 + Retry-After while a worker's receive queue has
    /// stayed at least a quarter full this long (it cannot keep up); 0 = off. Default 0
    /// (off: it would also shed other callers while `[security.flood]` drops a flooding
    /// source); 100 is a good value.
    pub shed_backlog_ms: u32,
    /// How new calls are spread over workers. Default `callid`.
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
            overload_control: true,
            overload_control_start: 0.75,
            overload_control_validity_ms: 500,
            shed_backlog_ms: 0,
            balance: Balance::Callid,
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

pub(super) const DEFAULT_RTP_FLAGS: &str = "replace-origin replace-session-connection";

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

/// `[hep]`: every SIP message received or sent, encoded as HEPv3 and sent to a
/// collector such as Homer (docs/capture.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HepConfig {
    /// `udp:IP:PORT` or `tcp:IP:PORT`; empty (default): capture off.
    pub collector: String,
    /// Capture agent id (HEP chunk 0x000c). Default 2001.
    pub agent_id: u32,
    /// Auth key (HEP chunk 0x000e); empty (default): none sent.
    pub password: String,
    /// Fraction of calls captured, 0.0 to 1.0, decided by a hash of the Call-ID so
    /// a call is captured whole or not at all. Default 1.0.
    pub sample: f64,
    /// TCP collector only: bytes of captures each worker holds while the
    /// collector is slow or away; more are dropped (counted). Default 4 MiB.
    pub queue_bytes: usize,
}

impl Default for HepConfig {
    fn default() -> Self {
        HepConfig {
            collector: String::new(),
            agent_id: 2001,
            password: String::new(),
            sample: 1.0,
            queue_bytes: dataplane::hep::tcp::QUEUE_BYTES,
        }
    }
}

impl HepConfig {
    /// The transport and address of a `udp:IP:PORT` or `tcp:IP:PORT` value;
    /// `None` for anything else (and for the empty value: capture off).
    pub fn collector_addr(&self) -> Option<(dataplane::hep::Transport, SocketAddr)> {
        use dataplane::hep::Transport;
        let (transport, addr) = match self.collector.split_once(':')? {
            ("udp", a) => (Transport::Udp, a),
            ("tcp", a) => (Transport::Tcp, a),
            _ => return None,
        };
        Some((transport, addr.parse().ok()?))
    }
}

/// `[registrar]`: sipvane as the registrar of its domains, on Kamailio's
/// `subscriber` and `location` tables (docs/registrar.md). Off while `db_url`
/// is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    /// Domains users register in, one or a list; the first is the realm of
    /// requests that name an address of this proxy instead. Default none.
    #[serde(deserialize_with = "one_or_many")]
    pub domain: Vec<String>,
    /// `postgres://…` or `mysql://…` holding `subscriber` and `location`;
    /// empty (default): registrar off.
    pub db_url: String,
    /// Request-URI users starting with one of these are registered users,
    /// looked up in location (`["6", "7", "8"]`). Default none.
    pub prefixes: Vec<String>,
    /// Shortest registration accepted (423 below). Default 60.
    pub min_expires: u32,
    /// Longest registration granted (longer ones are cut). Default 3600.
    pub max_expires: u32,
    /// Lifetime of a Contact that asks for none. Default 3600.
    pub default_expires: u32,
    /// Contacts per user at most (503 beyond). Default 10.
    pub max_contacts: u32,
    /// Bindings a call to a registered user rings at most (the best ones;
    /// equal `q` in parallel). Default 4.
    pub max_branches: u32,
    /// Seconds between OPTIONS keep-alives to NATed bindings; 0: none.
    /// Default 30.
    pub nat_ping_interval_s: u32,
    /// Keep-alives in a row a NATed binding may leave unanswered before it
    /// is removed. Default 3.
    pub nat_ping_max_misses: u32,
    /// Digest algorithms offered, in order: `MD5`, `SHA-256`. SHA-256 needs
    /// the `password` column. Default `["MD5"]`.
    pub algorithms: Vec<String>,
    /// Seconds a nonce may be used (then `stale=true`). Default 300.
    pub nonce_expires_s: u32,
    /// Initial requests whose From is in a registrar domain must authenticate
    /// (407) as the From user, unless they come from `trusted_sources` or a
    /// dispatcher destination. Default true.
    pub authenticate_calls: bool,
    /// Seconds between re-reads of `subscriber`. Default 60.
    pub credentials_refresh_s: u32,
    /// Accounts read from `subscriber` at most. Default 1000000.
    pub max_subscribers: u32,
    /// Bound (ms) on the delay before a change reaches `location`. Default 1000.
    pub write_back_ms: u64,
    /// Bound (ms) on connecting and on each query. Default 5000.
    pub timeout_ms: u64,
    /// Table of accounts. Default `subscriber`.
    pub subscriber_table: String,
    /// Table of bindings. Default `location`.
    pub location_table: String,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            domain: Vec::new(),
            db_url: String::new(),
            prefixes: Vec::new(),
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts: 10,
            max_branches: 4,
            nat_ping_interval_s: 30,
            nat_ping_max_misses: 3,
            algorithms: vec!["MD5".to_owned()],
            nonce_expires_s: 300,
            authenticate_calls: true,
            credentials_refresh_s: 60,
            max_subscribers: 1_000_000,
            write_back_ms: 1000,
            timeout_ms: 5000,
            subscriber_table: "subscriber".to_owned(),
            location_table: "location".to_owned(),
        }
    }
}

/// A string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
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
    /// Unix socket where the running process hands its SIP sockets and
    /// transactions over to a new one (a restart or upgrade without dropped
    /// calls). Default `/run/sipvane/handover.sock`; empty: off.
    pub handover_socket: String,
}

/// Where `[mgmt] handover_socket` points by default (the unit's RuntimeDirectory).
pub const DEFAULT_HANDOVER_SOCKET: &str = "/run/sipvane/handover.sock";

impl Default for MgmtConfig {
    fn default() -> Self {
        MgmtConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9060)),
            token: String::new(),
            handover_socket: DEFAULT_HANDOVER_SOCKET.to_owned(),
        }
    }
}

/// `[dns]`: how the control thread resolves host names (dispatcher
/// destinations, and the next hops of relayed requests; docs/configuration.md).
/// Workers never resolve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Servers as `IP:PORT` (or `IP`, port 53), asked over UDP (TCP when an
    /// answer is truncated). Empty (default): the servers of /etc/resolv.conf.
    pub servers: Vec<String>,
    /// How long one query may take, in milliseconds. Default 2000.
    pub timeout_ms: u64,
    /// Answers are kept at least this long, whatever their TTL. Default 5.
    pub min_ttl_s: u32,
    /// Answers are kept at most this long, whatever their TTL. Default 3600.
    pub max_ttl_s: u32,
    /// How long "no such name / record" is kept. Default 30.
    pub negative_ttl_s: u32,
    /// Requests a worker keeps parked while their next hop's host name is
    /// resolved; more get 503. Default 256.
    pub max_parked: u32,
    /// Longest a parked request waits for its answer (ms); then 503.
    /// Default 4000.
    pub max_wait_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout_ms: 2000,
            min_ttl_s: 5,
            max_ttl_s: 3600,
            negative_ttl_s: 30,
            max_parked: 256,
            max_wait_ms: 4000,
        }
    }
}

impl DnsConfig {
    /// `servers` as socket addresses (a bare IP means port 53).
    pub fn server_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        self.servers.iter().map(|s| parse_dns_server(s)).collect()
    }
}

/// One `[dns] servers` entry.
pub fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            format!("servers entries must be IP:PORT or IP, e.g. \"127.0.0.1:53\" (got \"{s}\")")
        })
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

/// `[tcp]` (docs/transports.md). Limits are per worker: each worker owns the
/// connections it accepts or opens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Serve TCP on `[proxy] listen` besides UDP. Default true.
    pub enabled: bool,
    /// Largest message (header + body) on a stream, in bytes. Default 65535.
    pub max_message: u32,
    /// Seconds a connection may take to complete a message header once it began
    /// (slowloris). Default 10.
    pub header_timeout_s: u32,
    /// Seconds without traffic after which a connection is closed. Default 300.
    pub idle_timeout_s: u32,
    /// Inbound connections one source IP may hold per worker. Default 256.
    pub max_per_source: u32,
    /// Inbound connections per worker. Default 16384.
    pub max_connections: u32,
    /// IPs or CIDRs of load balancers (HAProxy `send-proxy`/`send-proxy-v2`) whose
    /// connections start with a PROXY v1 or v2 header naming the client, whose
    /// address then stands for the connection. From anyone else a PROXY header
    /// closes the connection. Default: none.
    pub proxy_protocol_from: Vec<String>,
    /// RFC 3261 §18.1.1: a request to a UDP next hop larger than this many bytes
    /// is sent over TCP to the same address and port (over UDP after all if that
    /// connection is refused). 0: never. Default 1300. Kamailio's `udp_mtu`.
    pub udp_mtu: u32,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            enabled: true,
            max_message: 65_535,
            header_timeout_s: 10,
            idle_timeout_s: 300,
            max_per_source: 256,
            max_connections: 16_384,
            proxy_protocol_from: Vec::new(),
            udp_mtu: 1300,
        }
    }
}

/// `[tls]` (docs/transports.md): a TLS listener on every worker, beside TCP,
/// sharing `[tcp]`'s limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `IP` (port 5061) or `IP:PORT` of the TLS listener. Empty (default): no TLS.
    pub listen: String,
    /// PEM file with the server certificate (and its chain, leaf first).
    pub certificate: String,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
    /// `[[tls.sni]]`: certificates for clients asking for other names (SNI);
    /// `certificate` serves everyone else.
    pub sni: Vec<TlsSniConfig>,
    /// PEM bundle of the CA certificates TLS destinations (`sips:` or
    /// `;transport=tls` dispatcher URIs) are verified against. Required when
    /// there is one.
    pub ca: String,
    /// Mutual TLS: PEM bundle of the CAs whose client certificates the TLS
    /// listener accepts. Set: every client must present one (a client
    /// without, or with one from another CA, fails the handshake). Empty
    /// (default): no client certificate asked for.
    pub client_ca: String,
    /// PEM certificate (chain) presented to TLS destinations that ask for a
    /// client certificate (mutual TLS towards trunks). Empty (default): the
    /// listener's `certificate` (as Kamailio's tls module does), or none
    /// without a listener.
    pub client_certificate: String,
    /// Private key of `client_certificate`.
    pub client_private_key: String,
}

/// `[[tls.sni]]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSniConfig {
    /// Server names (exact, case-insensitive) this certificate is for.
    pub names: Vec<String>,
    /// PEM certificate (chain) file.
    pub certificate: String,
    /// PEM private key file.
    pub private_key: String,
}

impl TlsConfig {
    /// Loads every certificate as the server configuration.
    pub fn load(&self) -> Result<dataplane::transport::tls::ServerConfig, String> {
        let sni: Vec<dataplane::transport::tls::SniCert<'_>> = self
            .sni
            .iter()
            .map(|e| dataplane::transport::tls::SniCert {
                names: &e.names,
                certificate: Path::new(&e.certificate),
                private_key: Path::new(&e.private_key),
            })
            .collect();
        let client_ca = (!self.client_ca.is_empty()).then(|| Path::new(&self.client_ca));
        dataplane::transport::tls::load_server_sni(
            Path::new(&self.certificate),
            Path::new(&self.private_key),
            &sni,
            client_ca,
        )
    }

    /// How TLS destinations are reached: `None` without `ca` (no TLS
    /// destinations), else the CAs and the client certificate presented when a
    /// destination asks for one (`client_certificate`, else the listener's).
    pub fn client(&self) -> Option<Result<dataplane::transport::tls::TlsClient, String>> {
        if self.ca.is_empty() {
            return None;
        }
        let (cert, key) = match self.client_certificate.is_empty() {
            false => (&self.client_certificate, &self.client_private_key),
            true => (&self.certificate, &self.private_key),
        };
        let identity =
            (!cert.is_empty() && !key.is_empty()).then(|| dataplane::transport::tls::Identity {
                certificate: Path::new(cert),
                private_key: Path::new(key),
            });
        Some(dataplane::transport::tls::load_client(
            Path::new(&self.ca),
            identity,
        ))
    }

    /// The listener address (`None`: TLS off, or a bad value `validate` reports).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        if self.listen.is_empty() {
            return None;
        }
        if let Ok(a) = self.listen.parse::<SocketAddr>() {
            return Some(a);
        }
        let ip = self.listen.trim_start_matches('[').trim_end_matches(']');
        ip.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 5061))
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
