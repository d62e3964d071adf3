//! CANCEL: the caller's, relayed to the attempt in progress, and the ones
//! sipvane sends itself to attempts it gave up on that ring late.

use super::*;

impl Worker {
    pub(super) fn handle_cancel(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        out: &mut Outbox,
    ) {
        let via = &info.common.via;
        let invite_key = server_key(&self.hasher, msg, via, Method::Invite, b"INVITE");
        let Some(id) = self.txns.find(&invite_key) else {
            if let Some(owner) = self.located_owner(now, socket, info) {
                // Its INVITE was forked on the worker owning the phone's
                // connection: so is the CANCEL.
                bump(&self.stats.handoffs);
                out.handoff(owner, SOCK_PRIVATE | HANDED_OVER, src, msg.buf());
                return;
            }
            self.reply(socket, src, msg, 481, None, None, out);
            return;
        };
        // The CANCEL itself is answered at once (RFC 3261 §16.10).
        self.reply(socket, src, msg, 200, None, None, out);
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if txn.cancelled || txn.final_sent {
            return;
        }
        txn.cancelled = true;
        bump(&self.stats.calls_cancelled);
        if txn.client.is_none() && matches!(txn.media, MediaLeg::Offering { .. }) {
            // Nothing was forwarded yet (no branch either): the INVITE ends here.
            self.reply_final(now, id, 487, None, out);
            self.reschedule(id);
            return;
        }
        if txn.fork.is_some() {
            self.fork_cancel(now, id, out);
            self.reschedule(id);
            return;
        }
        let send_now = txn.client.as_mut().is_some_and(|c| c.request_cancel(now));
        if send_now {
            self.send_cancel(now, id, out);
        }
        self.reschedule(id);
    }

    /// Sends CANCEL for the current attempt and starts its client transaction.
    pub(super) fn send_cancel(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let Ok(fwd) = parse(&txn.forwarded) else {
            return;
        };
        self.scratch.clear();
        if build::cancel_for(&fwd, &mut self.scratch).is_err() {
            return;
        }
        out.send(txn.target.socket, txn.target.addr, &self.scratch);
        bump(&self.stats.tx_datagrams);
        let reliable = stream_out(txn.target.socket);
        txn.cancel = Some(ClientTx::new(
            Method::Cancel,
            now,
            &self.cfg.timers,
            reliable,
        ));
    }

    /// A response from an attempt given up without a final: CANCEL it once
    /// it rings (RFC 3261 §9.1: not before), relay a 2xx (§16.7), ACK any
    /// other final.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn abandoned_response(
        &mut self,
        now: Instant,
        id: TxnId,
        i: usize,
        msg: &Message<'_>,
        code: u16,
        src: SocketAddr,
        out: &mut Outbox,
    ) {
        let Some(txn) = self.txns.get(id) else { return };
        let Some(a) = txn.abandoned.get(i) else {
            return;
        };
        let (attempt, addr, socket, cancelled) = (a.attempt, a.addr, a.socket, a.cancel.is_some());
        match code {
            100..=199 if !cancelled => {
                if self.send_attempt_cancel(id, attempt, (socket, addr), out) {
                    bump(&self.stats.abandoned_cancels);
                    let timers = self.cfg.timers;
                    let reliable = stream_out(socket);
                    if let Some(a) = self.txns.get_mut(id).and_then(|t| t.abandoned.get_mut(i)) {
                        a.cancel = Some(ClientTx::new(Method::Cancel, now, &timers, reliable));
                    }
                }
            }
            100..=199 => {}
            200..=299 => {
                // The call is answered there: tracked like any other, so
                // its BYE, slot and events are not lost (found by the
                // simulation, dataplane/tests/sim). Once forgotten, its
                // retransmissions are relayed as an old attempt's.
                let current = self.txns.get_mut(id).and_then(|t| {
                    (t.attempt == attempt).then(|| std::mem::take(&mut t.makes_dialog))
                });
                match current {
                    // Given up with nowhere to fail over to: still the
                    // current attempt, whose first 2xx this is.
                    Some(makes_dialog) => {
                        if makes_dialog {
                            self.call_answered(now, id, msg, code, None);
                        }
                    }
                    None => {
                        let dest = self.attempt_dest(id, addr);
                        let target = Target { addr, socket, dest };
                        self.call_answered(now, id, msg, code, Some(target));
                        self.cancel_current(now, id, out);
                    }
                }
                self.relay_response(now, id, msg, code, out);
                self.forget_abandoned(id, attempt);
            }
            _ => {
                self.ack_old_attempt(id, attempt, msg, (socket, src), out);
                self.forget_abandoned(id, attempt);
            }
        }
        self.reschedule(id);
    }

    /// Another attempt answered 2xx: the current one is cancelled (RFC 3261
    /// §16.7 step 10), now if it rang, else at its first provisional, so
    /// that destination is not left ringing.
    pub(super) fn cancel_current(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let send_now = self
            .txns
            .get_mut(id)
            .and_then(|t| t.client.as_mut())
            .is_some_and(|c| c.is_pending() && c.request_cancel(now));
        if send_now {
            self.send_cancel(now, id, out);
        }
    }

    /// The dispatcher destination at `addr` in the transaction's set.
    fn attempt_dest(&self, id: TxnId, addr: SocketAddr) -> Option<Arc<DestStats>> {
        let (table, set_index) = self.txns.get(id)?.set.clone()?;
        let set = table.sets().get(set_index)?;
        set.dests()
            .iter()
            .find(|d| d.addr == addr)
            .map(|d| d.stats.clone())
    }

    pub(super) fn forget_abandoned(&mut self, id: TxnId, attempt: u8) {
        if let Some(txn) = self.txns.get_mut(id) {
            txn.abandoned.retain(|a| a.attempt != attempt);
        }
    }

    /// Retransmits the CANCELs of abandoned attempts and forgets those
    /// watched long enough.
    pub(super) fn abandoned_timers(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        txn.abandoned.retain(|a| a.until > now);
        let mut resend: SmallVec<[(u8, SocketId, SocketAddr); 2]> = SmallVec::new();
        for a in txn.abandoned.iter_mut() {
            if let Some(c) = a.cancel.as_mut() {
                if c.on_timer(now) == transaction::ClientTimer::Retransmit {
                    resend.push((a.attempt, a.socket, a.addr));
                }
            }
        }
        for (attempt, socket, addr) in resend {
            self.send_attempt_cancel(id, attempt, (socket, addr), out);
        }
    }

    /// Sends the CANCEL for `attempt` of transaction `id` to `addr`: its
    /// INVITE is rebuilt (forwarding is deterministic per attempt) and the
    /// CANCEL made from it. False when it could not be built.
    fn send_attempt_cancel(
        &mut self,
        id: TxnId,
        attempt: u8,
        (socket, addr): (SocketId, SocketAddr),
        out: &mut Outbox,
    ) -> bool {
        let mut fwd = self.pool.get();
        let mut built = false;
        if self.write_forward(id, attempt, None, &mut fwd) {
            if let Ok(inv) = parse(&fwd) {
                self.scratch.clear();
                built = build::cancel_for(&inv, &mut self.scratch).is_ok();
            }
        }
        self.pool.put(fwd);
        if built {
            out.send(socket, addr, &self.scratch);
            bump(&self.stats.tx_datagrams);
        }
        built
    }

    /// The worker a CANCEL, or the ACK of a non-2xx final, without a
    /// transaction here goes to: the one its INVITE was handed to, the
    /// owner of the registered user's connection ([`Worker::binding_owner`]).
    pub(super) fn located_owner(
        &self,
        now: Instant,
        socket: SocketId,
        info: &RequestInfo<'_>,
    ) -> Option<usize> {
        let registrar = self.cfg.registrar.as_ref()?;
        if !registrar
            .config
            .is_local_user(info.ruri.user.unwrap_or(b""))
        {
            return None;
        }
        self.binding_owner(socket, &self.locate(now, info))
    }
}
