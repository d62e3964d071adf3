//! The JSON bodies of the management API. `sipvane ctl` decodes the same
//! types, so the server and the client cannot drift apart.

use serde::{Deserialize, Serialize};

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` or `unhealthy`.
    pub status: String,
    pub workers: usize,
    /// Workers whose loop ran recently.
    pub alive: usize,
    /// One line per worker that is not alive.
    pub problems: Vec<String>,
}

/// `GET /status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_s: u64,
    /// Public SIP address.
    pub listen: String,
    /// I/O driver in use (`io_uring` or `epoll`).
    pub io: String,
    pub workers: usize,
    /// New INVITEs per second over the last sampling second.
    pub calls_per_s: f64,
    /// INVITEs answered 2xx per second.
    pub answered_per_s: f64,
    /// INVITEs that ended with a failure sent upstream, per second.
    pub failed_per_s: f64,
    /// New INVITEs since start.
    pub calls_total: u64,
    pub answered_total: u64,
    pub failed_total: u64,
    /// Dialogs the workers track now (2xx seen, no BYE yet).
    pub active_dialogs: u64,
    /// Calls being set up or established, summed over destinations.
    pub active_calls: u64,
    pub sets: usize,
    pub destinations: usize,
    /// Per-worker load, to see how the kernel spreads traffic.
    pub worker_detail: Vec<WorkerStatus>,
    /// RTPEngine instances (empty when media anchoring is off).
    #[serde(default)]
    pub rtpengine: Vec<EngineStatus>,
}

/// One RTPEngine in [`Status`]: health from the control thread's pings and
/// the workers' own timeouts, and ng commands summed over workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// ng address.
    pub address: String,
    pub weight: u32,
    pub up: bool,
    pub offers: u64,
    pub answers: u64,
    pub deletes: u64,
    pub timeouts: u64,
    pub errors: u64,
}

/// One worker in [`Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub index: usize,
    pub alive: bool,
    /// Milliseconds since its loop last turned.
    pub idle_ms: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub initial_invites: u64,
    pub active_dialogs: u64,
    /// Proxy transactions open now (the overload watermark counts these).
    #[serde(default)]
    pub transactions: u64,
    /// Datagrams waiting in its handoff queue.
    pub handoff_queue: usize,
    /// Datagrams it passed to the worker owning them (by Call-ID, branch or
    /// Record-Route) and received from other workers.
    #[serde(default)]
    pub handoffs_out: u64,
    #[serde(default)]
    pub handoffs_in: u64,
    /// TCP connections it holds now (accepted and opened).
    #[serde(default)]
    pub tcp_connections: u64,
    /// TLS connections open (part of `tcp_connections`).
    #[serde(default)]
    pub tls_connections: u64,
}

/// `GET /dispatcher`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dispatcher {
    pub sets: Vec<SetView>,
}

/// One destination set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetView {
    pub id: u32,
    pub destinations: Vec<DestView>,
}

/// One destination with its live state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestView {
    pub uri: String,
    /// Resolved next-hop address.
    pub address: String,
    /// `active`, `inactive`, `disabled` or `probing`.
    pub state: String,
    /// Whether it may be selected right now.
    pub usable: bool,
    pub flags: u32,
    pub priority: i32,
    /// Attributes as configured (`weight=50;maxload=500`).
    pub attrs: String,
    pub weight: u32,
    pub rweight: u32,
    pub maxload: u32,
    pub duid: Option<String>,
    pub description: String,
    pub active_calls: u32,
    /// Times chosen as first candidate.
    pub selected: u64,
    /// Failed attempts (408/500/503/timeout).
    pub failed: u64,
    pub consecutive_failures: u32,
    /// Latency EWMA in microseconds, once measured.
    pub latency_us: Option<u32>,
    /// For a destination taken out by failures: when live traffic retries it.
    pub retry_in_ms: Option<u64>,
}

/// `POST /dispatcher/state` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetStateRequest {
    /// Set id; without it, the URI in every set.
    #[serde(default)]
    pub set: Option<u32>,
    pub uri: String,
    /// `active`, `inactive`, `disabled`, `probing` (or kamcmd letters).
    pub state: String,
}

/// `POST /dispatcher/state` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetStateReply {
    pub changed: Vec<StateChange>,
}

/// One destination whose state was set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub set: u32,
    pub uri: String,
    pub previous: String,
    pub state: String,
}

/// `GET /dialogs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dialogs {
    /// Dialogs tracked now.
    pub active: u64,
    pub created: u64,
    pub ended: u64,
    pub expired: u64,
    /// 2xx'd INVITEs not tracked because a dialog table was full.
    pub not_tracked: u64,
    /// Active dialogs per worker.
    pub per_worker: Vec<u64>,
}

/// `GET /errors/stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorStats {
    /// Datagrams that could not be framed as SIP.
    pub parse_errors: u64,
    /// Requests answered 400.
    pub bad_requests: u64,
    pub replies_4xx: u64,
    pub replies_5xx: u64,
    pub replies_6xx: u64,
    pub calls_failed: u64,
    pub failovers: u64,
    pub timeouts: u64,
    pub no_destination: u64,
    pub overload_rejects: u64,
    pub table_full: u64,
    pub stray_responses: u64,
    pub loops: u64,
    pub dialogs_full: u64,
    pub drops: Drops,
}

/// Datagrams lost by the I/O drivers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drops {
    /// Handoffs to another worker dropped because its queue was full.
    pub handoff_queue_full: u64,
    pub send_errors: u64,
    /// Sends dropped because the socket buffer was full (part of `send_errors`).
    pub send_would_block: u64,
    pub recv_errors: u64,
    /// Datagrams larger than the receive buffer.
    pub truncated: u64,
    /// Call events dropped on the way to Redis (full queues); 0 when
    /// `[events]` is off.
    pub events: u64,
}

/// Every error reply of the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// One entry per problem, when there are several (a bad list file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// `GET /registrations`: the location table, users sorted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registrations {
    /// Users (AORs) with at least one live binding.
    pub aors: u64,
    pub bindings: u64,
    pub users: Vec<Registration>,
}

/// One user's bindings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// `user@domain`.
    pub aor: String,
    pub bindings: Vec<BindingView>,
}

/// One binding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindingView {
    pub contact: String,
    /// `IP:PORT` the requests go to when the phone is behind a NAT.
    pub received: Option<String>,
    /// Seconds left.
    pub expires_in: u64,
    pub q: f64,
    pub call_id: String,
    pub cseq: u32,
    pub user_agent: String,
    pub ruid: String,
}

/// `POST /registrations/remove` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveRegistration {
    /// `user@domain`.
    pub aor: String,
}

/// `POST /registrations/remove` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedRegistration {
    pub aor: String,
    /// Live bindings removed.
    pub removed: u64,
}

/// `POST /restart`: the process that handed over and the one serving now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartReply {
    pub old_pid: u32,
    pub new_pid: u32,
}
