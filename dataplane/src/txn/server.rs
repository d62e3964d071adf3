//! Server transactions: the proxy's side of a request it received from
//! upstream (RFC 3261 §17.2 as corrected by RFC 6026).
//!
//! The proxy decides what to send (it relays replies from its client
//! transactions or builds local ones) and asks the machine first with
//! `send_provisional` / `send_final`; the machine tracks what retransmissions
//! of the request and of the final reply require.

use std::time::{Duration, Instant};

use super::client::next_retransmit;
use super::{classify, due, min_deadline, Class, Ms, Reliability, TimerConfig};

/// What the proxy must do after feeding an event to a server transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerAction {
    /// Nothing to do (a timer call before any deadline).
    None,
    /// The request was retransmitted: resend the last response sent on this
    /// transaction (the provisional, e.g. the proxy's 100 Trying, while
    /// proceeding; the final once completed).
    ResendLast,
    /// Timer G fired: retransmit the non-2xx final reply.
    RetransmitFinal,
    /// No provisional went upstream within [`TRYING_DELAY`] of the INVITE (or
    /// the caller retransmitted it before one did): send `100 Trying` now. The
    /// machine counts it as the provisional sent.
    SendTrying,
    /// A duplicate or out-of-place message: drop it silently.
    Absorb,
    /// An ACK reached an INVITE transaction in the Accepted state: it
    /// acknowledges a 2xx, is end-to-end, and the proxy routes it on
    /// (RFC 6026 §7.1).
    PassUp,
    /// The ACK for the non-2xx final arrived: stop retransmitting; nothing to
    /// send (the ACK is hop-by-hop and is not forwarded).
    AckReceived,
    /// Timer H fired: no ACK ever came for the non-2xx final. The transaction
    /// is terminated; the proxy may count it as a delivery failure.
    AckTimeout,
    /// The transaction ended normally (Timer I, J or L): drop it.
    Terminated,
}

/// How long an INVITE server transaction waits for a provisional from the
/// destination before it sends its own `100 Trying` (RFC 3261 §17.2.1: the
/// 100 may be left out when the TU answers within 200 ms). Most destinations
/// ring sooner, so most calls never carry the proxy's 100 — one datagram less
/// per call — while a slow one still stops the caller's retransmissions
/// (its first comes at T1 = 500 ms).
pub const TRYING_DELAY: Duration = Duration::from_millis(200);

/// RFC 6026 Figure 7 states of the INVITE server transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerInviteState {
    /// No final reply sent yet.
    Proceeding,
    /// A non-2xx final was sent; Timer G retransmits it, Timer H waits for the ACK.
    Completed,
    /// The ACK arrived; Timer I absorbs ACK retransmissions.
    Confirmed,
    /// A 2xx was sent; Timer L absorbs INVITE retransmissions (RFC 6026).
    Accepted,
    /// Done.
    Terminated,
}

/// INVITE server transaction.
#[derive(Clone, Debug)]
pub struct ServerInvite {
    state: ServerInviteState,
    reliable: bool,
    sent_provisional: bool,
    retrans_interval: Ms,
    /// Proceeding: when to send 100 Trying if no provisional went upstream
    /// by then. Completed: Timer G. (One field: the machine stays small.)
    retrans_at: Option<Instant>,
    /// Timer H, I or L, by state.
    deadline: Option<Instant>,
    t1: Ms,
    t2: Ms,
    /// Timers I and L (wt_timer).
    wait: Ms,
}

impl ServerInvite {
    /// Starts the transaction for a newly received INVITE.
    pub fn new(now: Instant, cfg: &TimerConfig, reliability: Reliability) -> Self {
        ServerInvite {
            state: ServerInviteState::Proceeding,
            reliable: reliability.is_reliable(),
            sent_provisional: false,
            retrans_interval: Ms::of(cfg.t1),
            retrans_at: Some(now + TRYING_DELAY),
            deadline: None,
            t1: Ms::of(cfg.t1),
            t2: Ms::of(cfg.t2),
            wait: Ms::of(cfg.wait),
        }
    }

    /// Current state.
    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    /// True once the transaction can be dropped.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerInviteState::Terminated
    }

    /// The earliest instant at which `on_timer` has something to do. In
    /// Proceeding only the 100 Trying timer: the proxy's client transactions
    /// bound how long it lasts.
    pub fn next_deadline(&self) -> Option<Instant> {
        min_deadline(self.retrans_at, self.deadline)
    }

    /// The proxy wants to send a provisional reply upstream. Returns true if it
    /// may (only while proceeding); the machine then answers INVITE
    /// retransmissions with [`ServerAction::ResendLast`].
    pub fn send_provisional(&mut self) -> bool {
        if self.state == ServerInviteState::Proceeding {
            self.sent_provisional = true;
            self.retrans_at = None;
            true
        } else {
            false
        }
    }

    /// The proxy wants to send a final reply with this status upstream.
    /// Returns true if it must be sent. Every 2xx is sent (a forking proxy
    /// relays each one, even after a final was sent, RFC 3261 §16.7); a
    /// non-2xx only while proceeding. Provisional or invalid codes: false.
    pub fn send_final(&mut self, now: Instant, status: u16) -> bool {
        match (classify(status), self.state) {
            (Class::Success, ServerInviteState::Proceeding) => {
                self.state = ServerInviteState::Accepted;
                self.retrans_at = None;
                self.deadline = Some(now + self.wait.d());
                true
            }
            (Class::Success, _) => true,
            (Class::Failure, ServerInviteState::Proceeding) => {
                self.state = ServerInviteState::Completed;
                self.retrans_at = None;
                if !self.reliable {
                    self.retrans_interval = self.t1.min(self.t2);
                    self.retrans_at = Some(now + self.retrans_interval.d());
                }
                self.deadline = Some(now + self.t1.d().saturating_mul(64));
                true
            }
            _ => false,
        }
    }

    /// A retransmission of the INVITE matched the transaction.
    pub fn on_request(&mut self, _now: Instant) -> ServerAction {
        match self.state {
            ServerInviteState::Proceeding if self.sent_provisional => ServerAction::ResendLast,
            // Nothing sent yet and the caller is already retransmitting: the
            // 100 is due now rather than at the timer.
            ServerInviteState::Proceeding => self.trying_now(),
            ServerInviteState::Completed => ServerAction::ResendLast,
            // Confirmed; Accepted (RFC 6026: the 2xx is retransmitted end to
            // end by the UAS); Terminated.
            _ => ServerAction::Absorb,
        }
    }

    fn trying_now(&mut self) -> ServerAction {
        self.sent_provisional = true;
        self.retrans_at = None;
        ServerAction::SendTrying
    }

    /// An ACK matched the transaction.
    pub fn on_ack(&mut self, now: Instant) -> ServerAction {
        match self.state {
            ServerInviteState::Completed => {
                self.retrans_at = None;
                if self.reliable {
                    self.terminate();
                } else {
                    self.state = ServerInviteState::Confirmed;
                    self.deadline = Some(now + self.wait.d());
                }
                ServerAction::AckReceived
            }
            ServerInviteState::Accepted => ServerAction::PassUp,
            _ => ServerAction::Absorb,
        }
    }

    /// Timer event. Safe to call early or spuriously.
    pub fn on_timer(&mut self, now: Instant) -> ServerAction {
        match self.state {
            ServerInviteState::Completed => {
                if due(self.deadline, now) {
                    self.terminate();
                    return ServerAction::AckTimeout;
                }
                if let Some(at) = self.retrans_at.filter(|&at| at <= now) {
                    self.retrans_interval = self.retrans_interval.doubled().min(self.t2);
                    self.retrans_at = Some(next_retransmit(at, self.retrans_interval.d(), now));
                    return ServerAction::RetransmitFinal;
                }
                ServerAction::None
            }
            ServerInviteState::Confirmed | ServerInviteState::Accepted
                if due(self.deadline, now) =>
            {
                self.terminate();
                ServerAction::Terminated
            }
            ServerInviteState::Proceeding if due(self.retrans_at, now) => self.trying_now(),
            _ => ServerAction::None,
        }
    }

    fn terminate(&mut self) {
        self.state = ServerInviteState::Terminated;
        self.retrans_at = None;
        self.deadline = None;
    }
}

/// RFC 3261 Figure 8 states of the non-INVITE server transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerNonInviteState {
    /// Request received, nothing sent.
    Trying,
    /// A provisional was sent.
    Proceeding,
    /// The final was sent; Timer J absorbs request retransmissions.
    Completed,
    /// Done.
    Terminated,
}

/// Non-INVITE server transaction.
#[derive(Clone, Debug)]
pub struct ServerNonInvite {
    state: ServerNonInviteState,
    reliable: bool,
    /// Timer J.
    deadline: Option<Instant>,
    /// Timer J's length (wt_timer).
    wait: Ms,
}

impl ServerNonInvite {
    /// Starts the transaction for a newly received non-INVITE request
    /// (never ACK, which has no server transaction of its own).
    pub fn new(_now: Instant, cfg: &TimerConfig, reliability: Reliability) -> Self {
        ServerNonInvite {
            state: ServerNonInviteState::Trying,
            reliable: reliability.is_reliable(),
            deadline: None,
            wait: Ms::of(cfg.wait),
        }
    }

    /// Current state.
    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }

    /// True once the transaction can be dropped.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerNonInviteState::Terminated
    }

    /// The earliest instant at which `on_timer` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The proxy wants to send a provisional upstream. Returns true if it may.
    pub fn send_provisional(&mut self) -> bool {
        match self.state {
            ServerNonInviteState::Trying | ServerNonInviteState::Proceeding => {
                self.state = ServerNonInviteState::Proceeding;
                true
            }
            _ => false,
        }
    }

    /// The proxy wants to send a final reply upstream. Returns true if it may
    /// (the first final only).
    pub fn send_final(&mut self, now: Instant, status: u16) -> bool {
        let is_final = matches!(classify(status), Class::Success | Class::Failure);
        match self.state {
            ServerNonInviteState::Trying | ServerNonInviteState::Proceeding if is_final => {
                if self.reliable {
                    self.state = ServerNonInviteState::Terminated;
                } else {
                    self.state = ServerNonInviteState::Completed;
                    self.deadline = Some(now + self.wait.d());
                }
                true
            }
            _ => false,
        }
    }

    /// A retransmission of the request matched the transaction.
    pub fn on_request(&mut self, _now: Instant) -> ServerAction {
        match self.state {
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed => {
                ServerAction::ResendLast
            }
            _ => ServerAction::Absorb,
        }
    }

    /// Timer event. Safe to call early or spuriously.
    pub fn on_timer(&mut self, now: Instant) -> ServerAction {
        if self.state == ServerNonInviteState::Completed && due(self.deadline, now) {
            self.state = ServerNonInviteState::Terminated;
            self.deadline = None;
            ServerAction::Terminated
        } else {
            ServerAction::None
        }
    }
}
