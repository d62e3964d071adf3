//! One proxied request: its server transaction towards the caller, the client
//! transaction of the current attempt towards a destination, and what
//! failover needs to try the next one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::dispatch::{DestStats, Table};
use crate::sip::Method;
use crate::txn::fork::Fork;
use crate::txn::timer::TimerId;
use crate::txn::{
    ClientAction, ClientInvite, ClientNonInvite, Reliability, ServerAction, ServerInvite,
    ServerNonInvite, TimerConfig,
};
use crate::worker::SocketId;

/// RFC 3261 §18.1.1 for the current attempt: a request too large for UDP
/// goes over TCP, unless the next hop refused TCP for it already.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum MtuSwitch {
    /// Sent on the target's own transport.
    #[default]
    No,
    /// A UDP target reached over TCP because the request is too large.
    ToTcp,
    /// The switch was refused (no TCP listener): UDP after all.
    Refused,
}

/// Where the current attempt goes.
pub(crate) struct Target {
    pub addr: SocketAddr,
    /// `SOCK_PRIVATE` (UDP) or `SOCK_TCP_OUT`.
    pub socket: SocketId,
    /// The dispatcher destination, when the target was selected from a set
    /// (loose-routed in-dialog requests have none).
    pub dest: Option<Arc<DestStats>>,
}

pub(crate) struct ProxyTxn {
    pub method: Method,
    pub upstream: SocketAddr,
    pub upstream_socket: SocketId,
    /// The upstream connection ([`crate::worker::SOCK_TCP`]) runs TLS.
    pub upstream_tls: bool,
    pub server: ServerTx,
    /// The request as received; failover re-forwards it from here.
    pub request: Vec<u8>,
    /// The request as last forwarded: retransmissions, CANCEL and ACK are
    /// built from it.
    pub forwarded: Vec<u8>,
    /// The last response sent upstream, resent on retransmitted requests.
    pub last_response: Vec<u8>,
    pub client: Option<ClientTx>,
    /// The CANCEL sipvane sent for the current attempt.
    pub cancel: Option<ClientTx>,
    pub attempt: u8,
    pub target: Target,
    /// Destinations of the set in failover order (indexes into the set).
    pub candidates: SmallVec<[u16; 16]>,
    pub next_candidate: usize,
    /// The table snapshot and set the candidates index into.
    pub set: Option<(Arc<Table>, usize)>,
    pub pop_routes: usize,
    /// Strict routing (RFC 3261 §16.4): the last Route entry is the
    /// Request-URI written.
    pub strict_route: bool,
    pub record_route: bool,
    pub received: Option<(IpAddr, u16)>,
    pub cancelled: bool,
    pub final_sent: bool,
    pub sent_at: Instant,
    pub timer: Option<TimerId>,
    /// Media anchoring of this INVITE.
    pub media: MediaLeg,
    /// The SDP the engine returned for the offer: the forwarded body.
    pub media_sdp: Vec<u8>,
    /// A response held while its `answer` is in flight.
    pub held: Vec<u8>,
    /// The latest response with SDP that arrived while `held` was answered.
    pub queued: Vec<u8>,
    /// INVITE attempts given up without a final response (fr_timer): if
    /// one rings later it gets a CANCEL, so no destination is left ringing.
    /// A `Vec` (allocated only when a destination timed out) rather than
    /// inline storage: an `Abandoned` is 152 bytes that every transaction
    /// would otherwise carry for the rare failover.
    pub abandoned: Vec<Abandoned>,
    /// The target destination's active-call count includes this INVITE
    /// (counted at selection, so call-load and `maxload` see ringing calls;
    /// released on failure, CANCEL and failover, handed to the dialog on 2xx).
    pub holds_call: bool,
    /// The next 2xx makes a dialog: set for an initial INVITE, cleared by
    /// its first 2xx. A 2xx retransmitted after the BYE already ended the
    /// dialog (the ACK was lost), or a re-INVITE's 2xx, must not bring it
    /// back for `dialog_timeout` with its call slot (found by the
    /// simulation, dataplane/tests/sim).
    pub makes_dialog: bool,
    /// Whether the response being relayed comes from a registered user's
    /// binding, and whether that one is behind a NAT (`target.addr`).
    pub located: Located,
    /// The client offered RFC 7339 overload control in its Via: every
    /// response to it carries sipvane's feedback.
    pub oc: bool,
    /// Whether the current attempt left UDP for TCP because of its size.
    pub mtu: MtuSwitch,
    /// A request to a registered user, forked to its bindings: then
    /// `client` stays `None` and each branch has its own. Boxed: most
    /// transactions have none.
    pub fork: Option<Box<Forked>>,
}

/// A registered user's binding as a target: where to send, the Contact that
/// becomes the Request-URI, its Path (pushed as Route lines), whether the
/// address is its NAT's, and its `q` (equal ones ring in parallel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BindingTarget {
    pub addr: SocketAddr,
    pub contact: Box<str>,
    /// The binding's Path values (RFC 3327), the pre-loaded route set of
    /// its branch; empty: none.
    pub path: Box<str>,
    pub nated: bool,
    pub q: u16,
    /// [`SOCK_PRIVATE`](super::SOCK_PRIVATE) (UDP), or
    /// [`SOCK_TCP`](crate::worker::SOCK_TCP) for a binding registered over a
    /// connection: the branch goes over that connection only.
    pub socket: SocketId,
    /// That connection runs TLS.
    pub tls: bool,
    /// The worker owning that connection (`None`: not known, it is gone).
    pub owner: Option<usize>,
}

/// A request forked to a registered user's bindings: the response context
/// and one branch per binding. Branch `i` is sent as attempt `i` (its
/// sealed Via branch names it).
pub(crate) struct Forked {
    pub state: Fork,
    pub legs: Vec<ForkLeg>,
    /// The best final response so far, answered once every branch ended.
    pub best: Vec<u8>,
    /// The branches sent first: an INVITE held for its media offer sends
    /// them once the engine answered.
    pub first: std::ops::Range<usize>,
}

/// One branch of a forked request.
pub(crate) struct ForkLeg {
    pub target: BindingTarget,
    /// The request as sent to it: retransmissions, CANCEL and ACK.
    pub forwarded: Vec<u8>,
    pub client: Option<ClientTx>,
    pub cancel: Option<ClientTx>,
    /// Given up on at fr_timer without any response: watched until then
    /// (64·T1) so a late provisional gets a CANCEL and a late final an ACK.
    pub watch_until: Option<Instant>,
}

impl Forked {
    fn next_deadline(&self) -> Option<Instant> {
        self.legs
            .iter()
            .flat_map(|l| {
                [
                    l.client.as_ref().and_then(ClientTx::next_deadline),
                    l.cancel.as_ref().and_then(ClientTx::next_deadline),
                    l.watch_until,
                ]
            })
            .flatten()
            .min()
    }

    fn is_finished(&self) -> bool {
        self.legs.iter().all(|l| {
            l.client.as_ref().is_none_or(ClientTx::is_terminated)
                && l.cancel.as_ref().is_none_or(ClientTx::is_terminated)
                && l.watch_until.is_none()
        })
    }
}

/// Whether a request went to a registered user's binding, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Located {
    No,
    /// To the address its Contact names.
    Direct,
    /// To the source its REGISTER came from (behind a NAT): the Contact of
    /// its responses is rewritten to that address (`target.addr`).
    Nated,
}

/// An INVITE attempt sipvane stopped waiting for before it answered.
pub(crate) struct Abandoned {
    pub attempt: u8,
    pub addr: SocketAddr,
    pub socket: SocketId,
    /// Watched until then (64·T1 after it was given up, RFC 3261 Timer B).
    pub until: Instant,
    /// The CANCEL sent once it rang.
    pub cancel: Option<ClientTx>,
}

/// Where an INVITE stands with RTPEngine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MediaLeg {
    /// Not anchored (no SDP, set not anchored, or passed through).
    Off,
    /// `offer` in flight to the engine; the INVITE waits.
    Offering { engine: u8 },
    /// The engine holds a session; `answering` while an `answer` is in flight.
    Anchored { engine: u8, answering: bool },
}

impl MediaLeg {
    /// The engine that holds (or may hold) a session for the call.
    pub fn engine(self) -> Option<usize> {
        match self {
            MediaLeg::Off => None,
            MediaLeg::Offering { engine } | MediaLeg::Anchored { engine, .. } => {
                Some(usize::from(engine))
            }
        }
    }
}

fn reliability(reliable: bool) -> Reliability {
    if reliable {
        Reliability::Reliable
    } else {
        Reliability::Unreliable
    }
}

impl ProxyTxn {
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.server.next_deadline(),
            self.client.as_ref().and_then(ClientTx::next_deadline),
            self.cancel.as_ref().and_then(ClientTx::next_deadline),
            self.abandoned.iter().map(|a| a.until).min(),
            self.abandoned
                .iter()
                .filter_map(|a| a.cancel.as_ref().and_then(ClientTx::next_deadline))
                .min(),
            self.fork.as_ref().and_then(|f| f.next_deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Nothing left to absorb or retransmit on either side.
    pub fn is_finished(&self) -> bool {
        self.server.is_terminated()
            && self.client.as_ref().is_none_or(ClientTx::is_terminated)
            && self.cancel.as_ref().is_none_or(ClientTx::is_terminated)
            && self.abandoned.is_empty()
            && self.fork.as_ref().is_none_or(|f| f.is_finished())
    }
}

/// The caller-facing side.
pub(crate) enum ServerTx {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

/// What the server side asks the proxy to send upstream, after a timer or a
/// retransmitted request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upstream {
    Nothing,
    /// The last response again (a provisional while proceeding, the non-2xx
    /// final once completed).
    ResendLast,
    /// The INVITE's own `100 Trying`: no provisional came in time.
    SendTrying,
}

impl ServerTx {
    /// `reliable`: the request came over TCP (no response retransmissions).
    pub fn new(method: Method, now: Instant, cfg: &TimerConfig, reliable: bool) -> ServerTx {
        let r = reliability(reliable);
        if method == Method::Invite {
            ServerTx::Invite(ServerInvite::new(now, cfg, r))
        } else {
            ServerTx::NonInvite(ServerNonInvite::new(now, cfg, r))
        }
    }

    /// A retransmitted request arrived.
    pub fn on_request(&mut self, now: Instant) -> Upstream {
        let a = match self {
            ServerTx::Invite(s) => s.on_request(now),
            ServerTx::NonInvite(s) => s.on_request(now),
        };
        upstream(a)
    }

    /// An ACK matched this transaction; true when it acknowledges a 2xx and
    /// must be routed on (RFC 6026), false when it was ours (non-2xx).
    pub fn on_ack(&mut self, now: Instant) -> bool {
        match self {
            ServerTx::Invite(s) => matches!(s.on_ack(now), ServerAction::PassUp),
            ServerTx::NonInvite(_) => false,
        }
    }

    pub fn on_provisional_sent(&mut self) {
        match self {
            ServerTx::Invite(s) => {
                s.send_provisional();
            }
            ServerTx::NonInvite(s) => {
                s.send_provisional();
            }
        }
    }

    pub fn on_final_sent(&mut self, code: u16, now: Instant) {
        match self {
            ServerTx::Invite(s) => {
                s.send_final(now, code);
            }
            ServerTx::NonInvite(s) => {
                s.send_final(now, code);
            }
        }
    }

    pub fn on_timer(&mut self, now: Instant) -> Upstream {
        let a = match self {
            ServerTx::Invite(s) => s.on_timer(now),
            ServerTx::NonInvite(s) => s.on_timer(now),
        };
        upstream(a)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            ServerTx::Invite(s) => s.next_deadline(),
            ServerTx::NonInvite(s) => s.next_deadline(),
        }
    }

    pub fn is_terminated(&self) -> bool {
        match self {
            ServerTx::Invite(s) => s.is_terminated(),
            ServerTx::NonInvite(s) => s.is_terminated(),
        }
    }
}

fn upstream(a: ServerAction) -> Upstream {
    match a {
        ServerAction::ResendLast | ServerAction::RetransmitFinal => Upstream::ResendLast,
        ServerAction::SendTrying => Upstream::SendTrying,
        _ => Upstream::Nothing,
    }
}

/// The destination-facing side of one attempt (or of a CANCEL).
pub(crate) enum ClientTx {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

/// What a response means to the proxy.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientEvent {
    /// A retransmission, or a response the caller must not see.
    Absorb,
    /// A retransmitted non-2xx final (or the 487 after a timeout): ACK it,
    /// nothing else.
    ResendAck,
    /// 1xx; `send_cancel` when a CANCEL was waiting for it (RFC 3261 §9.1).
    Provisional { send_cancel: bool },
    /// 2xx (first or retransmitted): pass it up.
    Success,
    /// First 3xx–6xx: ACK it (INVITE) and fail over or pass it up.
    Failure { send_ack: bool },
}

/// What a client-side timer asks the proxy to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientTimer {
    None,
    Retransmit,
    /// fr_timer (no reply at all) or fr_inv_timer (`proceeding`: rang, never
    /// answered; the proxy must CANCEL) expired.
    Timeout {
        proceeding: bool,
    },
}

impl ClientTx {
    /// `reliable`: the request goes over TCP (no retransmissions).
    pub fn new(method: Method, now: Instant, cfg: &TimerConfig, reliable: bool) -> ClientTx {
        let r = reliability(reliable);
        if method == Method::Invite {
            ClientTx::Invite(ClientInvite::new(now, cfg, r))
        } else if method == Method::Cancel {
            // A CANCEL must get through or the destination rings on: it is
            // retransmitted for RFC 3261 Timer F (64·T1), not fr_timer (how
            // long a destination may take to start answering). With
            // fr_timer's three sends, 15 % loss left one ringing in 300
            // (found by the simulation, dataplane/tests/sim).
            let cfg = TimerConfig {
                fr_timer: 64 * cfg.t1,
                ..*cfg
            };
            ClientTx::NonInvite(ClientNonInvite::new(now, &cfg, r))
        } else {
            ClientTx::NonInvite(ClientNonInvite::new(now, cfg, r))
        }
    }

    pub fn on_response(&mut self, code: u16, now: Instant) -> ClientEvent {
        let invite = matches!(self, ClientTx::Invite(_));
        let a = match self {
            ClientTx::Invite(c) => c.on_response(now, code),
            ClientTx::NonInvite(c) => c.on_response(now, code),
        };
        match a {
            ClientAction::PassUp if code < 200 => ClientEvent::Provisional { send_cancel: false },
            ClientAction::SendCancelAndPassUp => ClientEvent::Provisional { send_cancel: true },
            ClientAction::PassUp if code < 300 => ClientEvent::Success,
            ClientAction::PassUp => ClientEvent::Failure { send_ack: false },
            ClientAction::SendAckAndPassUp => ClientEvent::Failure { send_ack: invite },
            ClientAction::SendAck => ClientEvent::ResendAck,
            // A 2xx retransmission still goes up: the caller needs it until
            // its ACK gets through.
            _ if invite && (200..300).contains(&code) => ClientEvent::Success,
            _ => ClientEvent::Absorb,
        }
    }

    /// Asks to cancel the attempt; true when the CANCEL may go out now.
    pub fn request_cancel(&mut self, now: Instant) -> bool {
        match self {
            ClientTx::Invite(c) => c.request_cancel(now),
            ClientTx::NonInvite(_) => false,
        }
    }

    pub fn on_timer(&mut self, now: Instant) -> ClientTimer {
        let a = match self {
            ClientTx::Invite(c) => c.on_timer(now),
            ClientTx::NonInvite(c) => c.on_timer(now),
        };
        match a {
            ClientAction::Retransmit => ClientTimer::Retransmit,
            ClientAction::Timeout => ClientTimer::Timeout { proceeding: false },
            ClientAction::TimeoutSendCancel => ClientTimer::Timeout { proceeding: true },
            _ => ClientTimer::None,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            ClientTx::Invite(c) => c.next_deadline(),
            ClientTx::NonInvite(c) => c.next_deadline(),
        }
    }

    /// Still waiting for a final response (it may retransmit, be
    /// cancelled or ACKed: its request must be kept).
    pub fn is_pending(&self) -> bool {
        use crate::txn::{ClientInviteState as I, ClientNonInviteState as N};
        match self {
            ClientTx::Invite(c) => matches!(c.state(), I::Calling | I::Proceeding),
            ClientTx::NonInvite(c) => matches!(c.state(), N::Trying | N::Proceeding),
        }
    }

    pub fn is_terminated(&self) -> bool {
        match self {
            ClientTx::Invite(c) => c.is_terminated(),
            ClientTx::NonInvite(c) => c.is_terminated(),
        }
    }
}
