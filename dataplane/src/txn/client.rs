//! Client transactions: the proxy's side of a request it forwarded downstream
//! (RFC 3261 §17.1, Kamailio `tm` final-response timers).

use std::time::{Duration, Instant};

use super::{classify, due, min_deadline, Class, Ms, Reliability, TimerConfig};

/// What the proxy must do after feeding an event to a client transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientAction {
    /// Nothing to do (a timer call before any deadline).
    None,
    /// Retransmit the request exactly as last sent (Timer A or E).
    Retransmit,
    /// Hand the response to the proxy core, which relays it upstream
    /// (provisionals except 100 Trying, all 2xx, non-INVITE finals) or uses a
    /// final reply for its failover decision.
    PassUp,
    /// A provisional arrived while a CANCEL was waiting for one (RFC 3261
    /// §9.1): send the CANCEL downstream now, and pass the provisional up.
    SendCancelAndPassUp,
    /// First non-2xx final reply to the INVITE: send the hop-by-hop ACK
    /// (§17.1.1.3) and pass the reply up (failover decision point).
    SendAckAndPassUp,
    /// Send the hop-by-hop ACK but do not pass the reply up: either a
    /// retransmission of a final already handled, or the final reply that
    /// closes a transaction which already reported [`ClientAction::TimeoutSendCancel`].
    SendAck,
    /// A duplicate or out-of-place reply: drop it silently.
    Absorb,
    /// No (final) reply in time: the proxy treats the branch as a 408
    /// (failover, or an upstream 408). The transaction is terminated.
    Timeout,
    /// `fr_inv_timer` expired after a provisional: treat as [`ClientAction::Timeout`]
    /// *and* send a CANCEL downstream. The transaction stays alive (up to
    /// 64·T1) to ACK the 487 that follows; it is not reported again.
    TimeoutSendCancel,
    /// The transaction ended normally (Timer D/K, or the post-timeout wait):
    /// drop it.
    Terminated,
}

/// RFC 3261 Figure 5 states (2xx goes straight to Terminated; the proxy relays
/// later 2xx retransmissions statelessly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientInviteState {
    /// INVITE sent, no reply yet; Timer A retransmits, `fr_timer` runs.
    Calling,
    /// A provisional arrived; `fr_inv_timer` runs.
    Proceeding,
    /// A non-2xx final arrived and was ACKed; Timer D absorbs retransmissions.
    Completed,
    /// Done.
    Terminated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cancel {
    NotRequested,
    /// Requested before any provisional: CANCEL may not be sent yet (§9.1).
    Pending,
    Sent,
}

/// INVITE client transaction.
#[derive(Clone, Debug)]
pub struct ClientInvite {
    state: ClientInviteState,
    cancel: Cancel,
    reliable: bool,
    timed_out: bool,
    restart_fr_inv: bool,
    retrans_interval: Ms,
    retrans_at: Option<Instant>,
    /// fr_timer, fr_inv_timer, the CANCEL wait, or Timer D, by state.
    deadline: Option<Instant>,
    fr_inv: Ms,
    t1x64: Ms,
    /// Timer D (wt_timer).
    wait: Ms,
}

impl ClientInvite {
    /// Starts the transaction; call right after the INVITE was sent.
    pub fn new(now: Instant, cfg: &TimerConfig, reliability: Reliability) -> Self {
        let reliable = reliability.is_reliable();
        ClientInvite {
            state: ClientInviteState::Calling,
            cancel: Cancel::NotRequested,
            reliable,
            timed_out: false,
            restart_fr_inv: cfg.restart_fr_inv_on_each_reply,
            retrans_interval: Ms::of(cfg.t1),
            retrans_at: (!reliable).then(|| now + cfg.t1),
            deadline: Some(now + cfg.fr_timer),
            fr_inv: Ms::of(cfg.fr_inv_timer),
            t1x64: Ms::of(cfg.t1x64()),
            wait: Ms::of(cfg.wait),
        }
    }

    /// Current state.
    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    /// True once the transaction can be dropped.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientInviteState::Terminated
    }

    /// True once a CANCEL was requested (sent or still pending).
    pub fn cancel_requested(&self) -> bool {
        self.cancel != Cancel::NotRequested
    }

    /// True once the proxy was told to send the CANCEL.
    pub fn cancel_sent(&self) -> bool {
        self.cancel == Cancel::Sent
    }

    /// True once a timeout was reported (`Timeout` or `TimeoutSendCancel`).
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// The earliest instant at which `on_timer` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        min_deadline(self.retrans_at, self.deadline)
    }

    /// The upstream caller cancelled. Returns true if the proxy must send the
    /// CANCEL now. Before any provisional the CANCEL is remembered and released
    /// by the first provisional ([`ClientAction::SendCancelAndPassUp`]); once a
    /// final reply arrived there is nothing left to cancel. After the CANCEL is
    /// sent the transaction waits at most 64·T1 more for the final reply.
    pub fn request_cancel(&mut self, now: Instant) -> bool {
        match (self.state, self.cancel) {
            (ClientInviteState::Calling, Cancel::NotRequested) => {
                self.cancel = Cancel::Pending;
                false
            }
            (ClientInviteState::Proceeding, Cancel::NotRequested) => {
                self.mark_cancel_sent(now);
                true
            }
            _ => false,
        }
    }

    fn mark_cancel_sent(&mut self, now: Instant) {
        self.cancel = Cancel::Sent;
        self.deadline = min_deadline(self.deadline, Some(now + self.t1x64.d()));
    }

    /// A response with this status code matched the transaction.
    pub fn on_response(&mut self, now: Instant, status: u16) -> ClientAction {
        let class = classify(status);
        if class == Class::Invalid {
            return ClientAction::Absorb;
        }
        match self.state {
            ClientInviteState::Calling | ClientInviteState::Proceeding => match class {
                Class::Provisional => self.provisional(now),
                Class::Success => {
                    self.terminate();
                    ClientAction::PassUp
                }
                _ => {
                    let first = !self.timed_out;
                    self.retrans_at = None;
                    if self.reliable {
                        self.terminate();
                    } else {
                        self.state = ClientInviteState::Completed;
                        self.deadline = Some(now + self.wait.d());
                    }
                    if first {
                        ClientAction::SendAckAndPassUp
                    } else {
                        ClientAction::SendAck
                    }
                }
            },
            ClientInviteState::Completed => match class {
                Class::Failure => ClientAction::SendAck,
                // A forking proxy downstream may still relay a 2xx after a
                // 6xx; every 2xx must reach the caller (§16.7 step 5).
                Class::Success => ClientAction::PassUp,
                _ => ClientAction::Absorb,
            },
            ClientInviteState::Terminated => match class {
                Class::Success => ClientAction::PassUp,
                _ => ClientAction::Absorb,
            },
        }
    }

    fn provisional(&mut self, now: Instant) -> ClientAction {
        if self.timed_out {
            return ClientAction::Absorb;
        }
        let first = self.state == ClientInviteState::Calling;
        self.state = ClientInviteState::Proceeding;
        self.retrans_at = None;
        if self.cancel == Cancel::Sent {
            // Already bounded by the CANCEL wait; do not extend it.
            return ClientAction::PassUp;
        }
        if first || self.restart_fr_inv {
            self.deadline = Some(now + self.fr_inv.d());
        }
        if self.cancel == Cancel::Pending {
            self.mark_cancel_sent(now);
            return ClientAction::SendCancelAndPassUp;
        }
        ClientAction::PassUp
    }

    /// Timer event. Safe to call early or spuriously: returns
    /// [`ClientAction::None`] unless a deadline has been reached.
    pub fn on_timer(&mut self, now: Instant) -> ClientAction {
        match self.state {
            ClientInviteState::Calling => {
                if due(self.deadline, now) {
                    self.timed_out = true;
                    self.terminate();
                    return ClientAction::Timeout;
                }
                if let Some(at) = self.retrans_at.filter(|&at| at <= now) {
                    // Timer A doubles without the T2 cap (§17.1.1.2).
                    self.retrans_interval = self.retrans_interval.doubled();
                    self.retrans_at = Some(next_retransmit(at, self.retrans_interval.d(), now));
                    return ClientAction::Retransmit;
                }
                ClientAction::None
            }
            ClientInviteState::Proceeding => {
                if !due(self.deadline, now) {
                    return ClientAction::None;
                }
                if self.timed_out {
                    self.terminate();
                    ClientAction::Terminated
                } else if self.cancel == Cancel::Sent {
                    // The CANCEL already went out and no final came back.
                    self.timed_out = true;
                    self.terminate();
                    ClientAction::Timeout
                } else {
                    self.timed_out = true;
                    self.mark_cancel_sent(now);
                    self.deadline = Some(now + self.t1x64.d());
                    ClientAction::TimeoutSendCancel
                }
            }
            ClientInviteState::Completed => {
                if due(self.deadline, now) {
                    self.terminate();
                    ClientAction::Terminated
                } else {
                    ClientAction::None
                }
            }
            ClientInviteState::Terminated => ClientAction::None,
        }
    }

    fn terminate(&mut self) {
        self.state = ClientInviteState::Terminated;
        self.retrans_at = None;
        self.deadline = None;
    }
}

/// RFC 3261 Figure 6 states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientNonInviteState {
    /// Request sent, no reply yet; Timer E retransmits, `fr_timer` runs.
    Trying,
    /// A provisional arrived; Timer E continues at T2.
    Proceeding,
    /// A final arrived; Timer K absorbs retransmissions of it.
    Completed,
    /// Done.
    Terminated,
}

/// Non-INVITE client transaction.
#[derive(Clone, Debug)]
pub struct ClientNonInvite {
    state: ClientNonInviteState,
    reliable: bool,
    retrans_interval: Ms,
    retrans_at: Option<Instant>,
    /// fr_timer, or Timer K in Completed.
    deadline: Option<Instant>,
    t2: Ms,
    /// Timer K (wt_timer).
    wait: Ms,
}

impl ClientNonInvite {
    /// Starts the transaction; call right after the request was sent.
    pub fn new(now: Instant, cfg: &TimerConfig, reliability: Reliability) -> Self {
        let reliable = reliability.is_reliable();
        ClientNonInvite {
            state: ClientNonInviteState::Trying,
            reliable,
            retrans_interval: Ms::of(cfg.t1.min(cfg.t2)),
            retrans_at: (!reliable).then(|| now + cfg.t1.min(cfg.t2)),
            deadline: Some(now + cfg.fr_timer),
            t2: Ms::of(cfg.t2),
            wait: Ms::of(cfg.wait),
        }
    }

    /// Current state.
    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    /// True once the transaction can be dropped.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientNonInviteState::Terminated
    }

    /// The earliest instant at which `on_timer` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        min_deadline(self.retrans_at, self.deadline)
    }

    /// A response with this status code matched the transaction.
    pub fn on_response(&mut self, now: Instant, status: u16) -> ClientAction {
        let class = classify(status);
        match (self.state, class) {
            (_, Class::Invalid) => ClientAction::Absorb,
            (
                ClientNonInviteState::Trying | ClientNonInviteState::Proceeding,
                Class::Provisional,
            ) => {
                // Kamailio: a 1xx does not extend fr_timer for non-INVITE.
                self.state = ClientNonInviteState::Proceeding;
                ClientAction::PassUp
            }
            (ClientNonInviteState::Trying | ClientNonInviteState::Proceeding, _) => {
                self.retrans_at = None;
                if self.reliable {
                    self.terminate();
                } else {
                    self.state = ClientNonInviteState::Completed;
                    self.deadline = Some(now + self.wait.d());
                }
                ClientAction::PassUp
            }
            (ClientNonInviteState::Completed | ClientNonInviteState::Terminated, _) => {
                ClientAction::Absorb
            }
        }
    }

    /// Timer event. Safe to call early or spuriously.
    pub fn on_timer(&mut self, now: Instant) -> ClientAction {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                if due(self.deadline, now) {
                    self.terminate();
                    return ClientAction::Timeout;
                }
                if let Some(at) = self.retrans_at.filter(|&at| at <= now) {
                    self.retrans_interval = if self.state == ClientNonInviteState::Trying {
                        self.retrans_interval.doubled().min(self.t2)
                    } else {
                        self.t2
                    };
                    self.retrans_at = Some(next_retransmit(at, self.retrans_interval.d(), now));
                    return ClientAction::Retransmit;
                }
                ClientAction::None
            }
            ClientNonInviteState::Completed => {
                if due(self.deadline, now) {
                    self.terminate();
                    ClientAction::Terminated
                } else {
                    ClientAction::None
                }
            }
            ClientNonInviteState::Terminated => ClientAction::None,
        }
    }

    fn terminate(&mut self) {
        self.state = ClientNonInviteState::Terminated;
        self.retrans_at = None;
        self.deadline = None;
    }
}

/// The next retransmission is scheduled from the previous *deadline*, so the
/// schedule stays exact (0.5, 1.5, 3.5 s …) however late the timer was
/// serviced — unless the worker stalled past it, when it restarts from `now`
/// rather than bursting.
pub(crate) fn next_retransmit(prev: Instant, interval: Duration, now: Instant) -> Instant {
    let next = prev + interval;
    if next > now {
        next
    } else {
        now + interval
    }
}
