//! Requests to a registered user forked to its bindings: one client
//! transaction per branch, driven by the response context of
//! [`crate::txn::fork`] (which branch rings, which is cancelled, what the
//! caller gets). Branch `i` travels as attempt `i` in the sealed Via branch.

use super::*;
use crate::txn::fork::{Final, Fork, Step};
use transaction::{ForkLeg, Forked};

impl Worker {
    /// The fork of a request to these bindings (best first, non-empty), and
    /// the branches to send at once.
    pub(super) fn new_fork(found: Vec<BindingTarget>) -> (Box<Forked>, std::ops::Range<usize>) {
        let qs: SmallVec<[u16; 8]> = found.iter().map(|b| b.q).collect();
        let (state, first) = Fork::new(&qs);
        let legs = found
            .into_iter()
            .map(|target| ForkLeg {
                target,
                forwarded: Vec::new(),
                client: None,
                cancel: None,
                watch_until: None,
            })
            .collect();
        let forked = Forked {
            state,
            legs,
            best: Vec::new(),
            first: first.clone(),
        };
        (Box::new(forked), first)
    }

    /// Sends the branches `legs` of transaction `id`, each with the
    /// binding's Contact as Request-URI.
    pub(super) fn fork_start(
        &mut self,
        now: Instant,
        id: TxnId,
        legs: std::ops::Range<usize>,
        out: &mut Outbox,
    ) {
        let mut unsent: SmallVec<[usize; 4]> = SmallVec::new();
        for i in legs {
            let Ok(attempt) = u8::try_from(i) else { break };
            if !self.leg_reachable(id, i) {
                // A phone registered over a connection this worker does not
                // hold (gone after a restart, or another worker's).
                unsent.push(i);
                continue;
            }
            let mut fwd = self.pool.get();
            if !self.write_forward(id, attempt, None, &mut fwd) {
                self.pool.put(fwd);
                unsent.push(i);
                continue;
            }
            let timers = self.cfg.timers;
            let Some(txn) = self.txns.get_mut(id) else {
                self.pool.put(fwd);
                return;
            };
            let method = txn.method;
            let Some(leg) = txn.fork.as_mut().and_then(|f| f.legs.get_mut(i)) else {
                self.pool.put(fwd);
                return;
            };
            out.send(leg.target.socket, leg.target.addr, &fwd);
            bump(&self.stats.tx_datagrams);
            let old = std::mem::replace(&mut leg.forwarded, fwd);
            // Over a connection: reliable, no retransmissions.
            let reliable = leg.target.socket != SOCK_PRIVATE;
            leg.client = Some(ClientTx::new(method, now, &timers, reliable));
            self.pool.put(old);
        }
        if let Some(txn) = self.txns.get_mut(id) {
            txn.sent_at = now;
        }
        // A branch that could not be written ends as if it never answered,
        // so the fork still comes to an answer.
        for i in unsent {
            let step = self.fork_state(id, |f| f.on_timeout(i));
            self.apply_step_without_response(now, id, step, out);
        }
        self.reschedule(id);
    }

    /// Sends a request held for its media offer: its first branches when
    /// it is forked to a registered user's bindings, else its target.
    pub(super) fn forward_held(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let first = self
            .txns
            .get(id)
            .and_then(|t| t.fork.as_ref())
            .map(|f| f.first.clone());
        match first {
            Some(first) => self.fork_start(now, id, first, out),
            None => self.forward_attempt(now, id, out),
        }
    }

    /// The Contact a branch's request carries as its Request-URI.
    pub(super) fn fork_contact(txn: &ProxyTxn, attempt: u8) -> Option<&[u8]> {
        let leg = txn.fork.as_ref()?.legs.get(usize::from(attempt))?;
        Some(leg.target.contact.as_bytes())
    }

    /// The socket a request of `attempt` leaves from, and whether a
    /// connection behind [`SOCK_TCP`] runs TLS: a forked branch's binding,
    /// else the transaction's target.
    pub(super) fn leg_socket(txn: &ProxyTxn, attempt: u8) -> (SocketId, bool) {
        match txn.fork.as_ref() {
            Some(f) => f
                .legs
                .get(usize::from(attempt))
                .map_or((SOCK_PRIVATE, false), |l| (l.target.socket, l.target.tls)),
            None => (txn.target.socket, false),
        }
    }

    /// Whether branch `i` can be sent from this worker: over UDP, or over
    /// a connection this worker owns.
    fn leg_reachable(&self, id: TxnId, i: usize) -> bool {
        let Some(leg) = self
            .txns
            .get(id)
            .and_then(|t| t.fork.as_ref())
            .and_then(|f| f.legs.get(i))
        else {
            return false;
        };
        leg.target.socket == SOCK_PRIVATE || leg.target.owner == Some(self.index)
    }

    /// The connection to `dst` a branch was sent on is gone: those
    /// branches end at once as unanswered (the caller gets 480 when no
    /// other branch answers).
    pub(super) fn fork_connection_lost(&mut self, now: Instant, dst: SocketAddr, out: &mut Outbox) {
        let lost: SmallVec<[(TxnId, usize); 4]> = self
            .txns
            .iter()
            .filter_map(|(id, t)| Some((id, t.fork.as_ref()?)))
            .flat_map(|(id, f)| {
                f.legs.iter().enumerate().filter_map(move |(i, l)| {
                    (l.target.socket == SOCK_TCP
                        && l.target.addr == dst
                        && l.client.as_ref().is_some_and(ClientTx::is_pending))
                    .then_some((id, i))
                })
            })
            .collect();
        for (id, i) in lost {
            if let Some(leg) = self.leg_mut(id, i) {
                // Nothing reached it: nothing to retransmit or cancel.
                leg.client = None;
            }
            let step = self.fork_state(id, |f| f.on_timeout(i));
            self.apply_step_without_response(now, id, step, out);
            self.reschedule(id);
        }
    }

    /// The Path a branch's request carries as pre-loaded Route lines.
    pub(super) fn fork_path(txn: &ProxyTxn, attempt: u8) -> Option<&[u8]> {
        let leg = txn.fork.as_ref()?.legs.get(usize::from(attempt))?;
        (!leg.target.path.is_empty()).then_some(leg.target.path.as_bytes())
    }

    /// A response (or a response to our CANCEL) on branch `attempt`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fork_response(
        &mut self,
        now: Instant,
        id: TxnId,
        attempt: u8,
        cseq_method: Method,
        msg: &Message<'_>,
        code: u16,
        out: &mut Outbox,
    ) {
        let i = usize::from(attempt);
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let Some(leg) = txn.fork.as_mut().and_then(|f| f.legs.get_mut(i)) else {
            bump(&self.stats.stray_responses);
            return;
        };
        if cseq_method == Method::Cancel {
            if let Some(c) = leg.cancel.as_mut() {
                c.on_response(code, now);
            }
            self.reschedule(id);
            return;
        }
        if leg.watch_until.is_some() && !(200..300).contains(&code) {
            // Given up on while silent: a late ring is cancelled, a late
            // refusal acknowledged; neither reaches the caller.
            if code < 200 {
                if leg.cancel.is_none() {
                    bump(&self.stats.abandoned_cancels);
                    self.start_leg_cancel(now, id, i, out);
                }
            } else {
                leg.watch_until = None;
                self.send_leg_ack(id, i, msg, out);
            }
            self.reschedule(id);
            return;
        }
        let Some(client) = leg.client.as_mut() else {
            return;
        };
        use transaction::ClientEvent as E;
        match client.on_response(code, now) {
            E::Absorb => bump(&self.stats.retransmissions_absorbed),
            E::ResendAck => {
                bump(&self.stats.retransmissions_absorbed);
                self.send_leg_ack(id, i, msg, out);
            }
            E::Provisional { send_cancel } => {
                if send_cancel {
                    self.start_leg_cancel(now, id, i, out);
                }
                let step = self.fork_state(id, |f| f.on_provisional(i, code));
                if step.relay {
                    self.relay_leg(now, id, i, msg, code, out);
                }
            }
            E::Success => {
                if let Some(leg) = self.leg_mut(id, i) {
                    leg.watch_until = None;
                }
                let step = self.fork_state(id, |f| f.on_final(i, code));
                self.point_at_leg(id, i);
                let makes_dialog = self
                    .txns
                    .get_mut(id)
                    .is_some_and(|t| std::mem::take(&mut t.makes_dialog));
                if makes_dialog {
                    self.call_answered(now, id, msg, code, None);
                }
                self.apply_step(now, id, msg, step, out);
            }
            E::Failure { send_ack } => {
                if send_ack {
                    self.send_leg_ack(id, i, msg, out);
                }
                let step = self.fork_state(id, |f| f.on_final(i, code));
                if step.keep {
                    if let Some(f) = self.txns.get_mut(id).and_then(|t| t.fork.as_mut()) {
                        f.best.clear();
                        f.best.extend_from_slice(msg.buf());
                    }
                    self.point_at_leg(id, i);
                }
                self.apply_step(now, id, msg, step, out);
            }
        }
        self.reschedule(id);
    }

    /// The caller cancelled a forked request: every pending branch is
    /// cancelled (now if it rang, else at its first provisional).
    pub(super) fn fork_cancel(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let step = self.fork_state(id, Fork::on_cancel);
        self.cancel_legs(now, id, &step.cancel, out);
    }

    /// Timers of a forked request's branches: retransmissions, CANCEL
    /// retransmissions, branches that got no final in time.
    pub(super) fn fork_timers(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let n = self
            .txns
            .get(id)
            .and_then(|t| t.fork.as_ref())
            .map_or(0, |f| f.legs.len());
        for i in 0..n {
            let t1 = self.cfg.timers.t1;
            let Some(txn) = self.txns.get_mut(id) else {
                return;
            };
            let invite = txn.method == Method::Invite;
            let Some(leg) = txn.fork.as_mut().and_then(|f| f.legs.get_mut(i)) else {
                return;
            };
            if leg.watch_until.is_some_and(|t| t <= now) {
                leg.watch_until = None;
            }
            let cancel_due = leg
                .cancel
                .as_mut()
                .is_some_and(|c| c.on_timer(now) == transaction::ClientTimer::Retransmit);
            let event = leg.client.as_mut().map(|c| c.on_timer(now));
            if cancel_due {
                self.send_leg_cancel(id, i, out);
            }
            use transaction::ClientTimer;
            match event {
                Some(ClientTimer::Retransmit) => {
                    if let Some(leg) = self.leg_mut(id, i) {
                        out.send(leg.target.socket, leg.target.addr, &leg.forwarded);
                        bump(&self.stats.tx_datagrams);
                    }
                }
                Some(ClientTimer::Timeout { proceeding }) => {
                    bump(&self.stats.timeouts);
                    if proceeding && invite {
                        // fr_inv_timer: it rang too long; the client
                        // transaction already counts the CANCEL as sent.
                        self.start_leg_cancel(now, id, i, out);
                    } else if invite {
                        // Silent so far; if it rings later it must be cancelled.
                        if let Some(leg) = self.leg_mut(id, i) {
                            leg.watch_until = Some(now + 64 * t1);
                        }
                    }
                    let step = self.fork_state(id, |f| f.on_timeout(i));
                    self.apply_step_without_response(now, id, step, out);
                }
                Some(ClientTimer::None) | None => {}
            }
        }
    }

    fn leg_mut(&mut self, id: TxnId, i: usize) -> Option<&mut ForkLeg> {
        self.txns.get_mut(id)?.fork.as_mut()?.legs.get_mut(i)
    }

    fn fork_state(&mut self, id: TxnId, f: impl FnOnce(&mut Fork) -> Step) -> Step {
        match self.txns.get_mut(id).and_then(|t| t.fork.as_mut()) {
            Some(forked) => f(&mut forked.state),
            None => Step::default(),
        }
    }

    /// Makes branch `i` the transaction's target while its response is
    /// handled: the dialog, the events and the Contact fix of a NATed
    /// callee (`located`) name the binding that answered.
    fn point_at_leg(&mut self, id: TxnId, i: usize) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let Some(leg) = txn.fork.as_ref().and_then(|f| f.legs.get(i)) else {
            return;
        };
        txn.target = Target {
            addr: leg.target.addr,
            socket: leg.target.socket,
            dest: None,
        };
        txn.located = if leg.target.nated {
            Located::Nated
        } else {
            Located::Direct
        };
    }

    fn relay_leg(
        &mut self,
        now: Instant,
        id: TxnId,
        i: usize,
        msg: &Message<'_>,
        code: u16,
        out: &mut Outbox,
    ) {
        self.point_at_leg(id, i);
        self.relay_response(now, id, msg, code, out);
    }

    /// Acts on a step taken for the response `msg`.
    fn apply_step(
        &mut self,
        now: Instant,
        id: TxnId,
        msg: &Message<'_>,
        step: Step,
        out: &mut Outbox,
    ) {
        if step.relay {
            let code = msg.status().unwrap_or(0);
            self.relay_response(now, id, msg, code, out);
        }
        self.apply_step_without_response(now, id, step, out);
    }

    fn apply_step_without_response(
        &mut self,
        now: Instant,
        id: TxnId,
        step: Step,
        out: &mut Outbox,
    ) {
        self.cancel_legs(now, id, &step.cancel, out);
        if !step.start.is_empty() {
            // The next group of bindings: one more try at the same call.
            bump(&self.stats.failovers);
            self.fork_start(now, id, step.start, out);
        }
        match step.finish {
            None => {}
            Some(Final::Kept(code)) => {
                let Some(best) = self
                    .txns
                    .get_mut(id)
                    .and_then(|t| t.fork.as_mut())
                    .map(|f| std::mem::take(&mut f.best))
                else {
                    return;
                };
                if let Ok(m) = parse(&best) {
                    self.relay_final(now, id, &m, code, out);
                }
                self.pool.put(best);
            }
            Some(Final::NoAnswer) => {
                let cancelled = self.txns.get(id).is_some_and(|t| t.cancelled);
                if cancelled {
                    self.reply_final(now, id, 487, None, out);
                } else {
                    // RFC 3261 §21.4.18: the user is registered but not reachable.
                    self.reply_final(now, id, 480, Some(b"Destination did not answer"), out);
                }
            }
        }
    }

    fn cancel_legs(&mut self, now: Instant, id: TxnId, legs: &[usize], out: &mut Outbox) {
        for &i in legs {
            let send_now = self
                .leg_mut(id, i)
                .and_then(|l| l.client.as_mut())
                .is_some_and(|c| c.request_cancel(now));
            if send_now {
                self.start_leg_cancel(now, id, i, out);
            }
        }
    }

    /// Starts the CANCEL of branch `i` (its INVITE's client transaction
    /// already agreed to it).
    fn start_leg_cancel(&mut self, now: Instant, id: TxnId, i: usize, out: &mut Outbox) {
        let timers = self.cfg.timers;
        if let Some(leg) = self.leg_mut(id, i) {
            let reliable = leg.target.socket != SOCK_PRIVATE;
            leg.cancel = Some(ClientTx::new(Method::Cancel, now, &timers, reliable));
        }
        self.send_leg_cancel(id, i, out);
    }

    /// Sends (again) the CANCEL of branch `i`, built from its request.
    fn send_leg_cancel(&mut self, id: TxnId, i: usize, out: &mut Outbox) {
        let Some(leg) = self
            .txns
            .get(id)
            .and_then(|t| t.fork.as_ref())
            .and_then(|f| f.legs.get(i))
        else {
            return;
        };
        let Ok(fwd) = parse(&leg.forwarded) else {
            return;
        };
        self.scratch.clear();
        if build::cancel_for(&fwd, &mut self.scratch).is_ok() {
            out.send(leg.target.socket, leg.target.addr, &self.scratch);
            bump(&self.stats.tx_datagrams);
        }
    }

    /// The hop-by-hop ACK for a non-2xx final of branch `i`.
    fn send_leg_ack(&mut self, id: TxnId, i: usize, resp: &Message<'_>, out: &mut Outbox) {
        let Some(leg) = self
            .txns
            .get(id)
            .and_then(|t| t.fork.as_ref())
            .and_then(|f| f.legs.get(i))
        else {
            return;
        };
        let Ok(fwd) = parse(&leg.forwarded) else {
            return;
        };
        self.scratch.clear();
        if build::ack_for(&fwd, resp, &mut self.scratch).is_ok() {
            out.send(leg.target.socket, leg.target.addr, &self.scratch);
            bump(&self.stats.tx_datagrams);
        }
    }
}
