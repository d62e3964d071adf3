//! Transaction timers: one wheel entry per transaction at its next deadline.

use super::*;

impl Worker {
    /// Keeps exactly one wheel entry per transaction, at its next deadline;
    /// removes the transaction once both sides are done.
    pub(super) fn reschedule(&mut self, id: TxnId) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if txn.is_finished() {
            if let Some(t) = txn.timer.take() {
                self.timers.cancel(t);
            }
            if let Some(txn) = self.txns.remove(id) {
                bump(&self.stats.transactions_ended);
                self.recycle(txn);
            }
            return;
        }
        let next = txn.next_deadline();
        // Moved in place when it is still scheduled: no slot freed and taken.
        if let (Some(t), Some(at)) = (txn.timer, next) {
            if self.timers.reschedule(t, at) {
                return;
            }
        }
        if let Some(t) = txn.timer.take() {
            self.timers.cancel(t);
        }
        if let Some(at) = next {
            txn.timer = Some(self.timers.insert(at, id));
        }
    }

    pub(super) fn txn_timer(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        txn.timer = None;
        use transaction::ClientTimer;
        let upstream = txn.server.on_timer(now);
        self.send_upstream(id, upstream, out);
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if let Some(c) = txn.cancel.as_mut() {
            if c.on_timer(now) == ClientTimer::Retransmit {
                if let Ok(fwd) = parse(&txn.forwarded) {
                    self.scratch.clear();
                    if build::cancel_for(&fwd, &mut self.scratch).is_ok() {
                        out.send(txn.target.socket, txn.target.addr, &self.scratch);
                        bump(&self.stats.tx_datagrams);
                    }
                }
            }
        }
        if !txn.abandoned.is_empty() {
            self.abandoned_timers(now, id, out);
        }
        if self.txns.get(id).is_some_and(|t| t.fork.is_some()) {
            self.fork_timers(now, id, out);
        }
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let client_event = txn.client.as_mut().map(|c| c.on_timer(now));
        match client_event {
            Some(ClientTimer::Retransmit) => {
                out.send(txn.target.socket, txn.target.addr, &txn.forwarded);
                bump(&self.stats.tx_datagrams);
            }
            Some(ClientTimer::Timeout { proceeding }) => {
                bump(&self.stats.timeouts);
                if !proceeding && txn.method == Method::Invite {
                    // Silent so far; if it rings later it must be cancelled.
                    let until = now + 64 * self.cfg.timers.t1;
                    txn.abandoned.push(Abandoned {
                        attempt: txn.attempt,
                        addr: txn.target.addr,
                        socket: txn.target.socket,
                        until,
                        cancel: None,
                    });
                }
                if proceeding && txn.method == Method::Invite && txn.cancel.is_none() {
                    // fr_inv_timer: stop the ringing destination.
                    self.send_cancel(now, id, out);
                }
                if self.attempt_failed(now, id, proceeding, out) {
                    // try_failover rescheduled
                    return;
                }
            }
            Some(ClientTimer::None) | None => {}
        }
        self.reschedule(id);
    }

    /// The current attempt got no final response (fr_timer, fr_inv_timer, or
    /// its TCP connection could not be opened): fail over, or answer the
    /// caller. True when a failover was sent (and the transaction rescheduled).
    fn attempt_failed(
        &mut self,
        now: Instant,
        id: TxnId,
        proceeding: bool,
        out: &mut Outbox,
    ) -> bool {
        let Some(txn) = self.txns.get(id) else {
            return false;
        };
        if txn.cancelled {
            self.reply_final(now, id, 487, None, out);
            return false;
        }
        if let Some(d) = txn.target.dest.clone() {
            d.record_failure(now, &self.cfg.health);
        }
        if !proceeding && self.try_failover(now, id, out) {
            return true;
        }
        let code = if self.dispatched(id) && !proceeding {
            503
        } else {
            408
        };
        self.reply_final(now, id, code, Some(b"Destination did not answer"), out);
        false
    }

    /// A TCP connection to `dst` could not be opened: every attempt that was
    /// waiting on it fails now, like an fr_timer expiry, instead of waiting
    /// for fr_timer (nothing reached the destination).
    pub(super) fn connect_failed(&mut self, now: Instant, dst: SocketAddr, out: &mut Outbox) {
        // Branches to a phone registered over a connection that closed.
        self.fork_connection_lost(now, dst, out);
        let waiting: SmallVec<[TxnId; 8]> = self
            .txns
            .iter()
            .filter(|(_, t)| {
                stream_out(t.target.socket)
                    && t.target.addr == dst
                    && t.client.as_ref().is_some_and(ClientTx::is_pending)
            })
            .map(|(id, _)| id)
            .collect();
        for id in waiting {
            if let Some(txn) = self.txns.get_mut(id) {
                // Nothing was sent: nothing to retransmit, cancel or ACK.
                txn.client = None;
                if txn.mtu == MtuSwitch::ToTcp {
                    // A UDP next hop without TCP: the large request goes over
                    // UDP after all (same attempt, same branch) rather than
                    // failing the call; fragmentation beats no call.
                    txn.target.socket = SOCK_PRIVATE;
                    txn.mtu = MtuSwitch::Refused;
                    bump(&self.stats.udp_mtu_fallbacks);
                    self.forward_attempt(now, id, out);
                    continue;
                }
            }
            bump(&self.stats.connect_failures);
            if !self.attempt_failed(now, id, false, out) {
                self.reschedule(id);
            }
        }
    }

    /// Sends what the server side asked for: the last response again, or the
    /// INVITE's delayed `100 Trying` (built from the request as received and
    /// kept as the response to resend).
    pub(super) fn send_upstream(&mut self, id: TxnId, what: Upstream, out: &mut Outbox) {
        let oc = self.oc_feedback();
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        match what {
            Upstream::Nothing => return,
            Upstream::ResendLast => {}
            Upstream::SendTrying => {
                let Ok(req) = parse(&txn.request) else {
                    return;
                };
                txn.last_response.clear();
                let opts = ReplyOpts::default();
                if build::reply(&req, 100, b"Trying", &opts, &mut txn.last_response).is_err() {
                    return;
                }
                if txn.oc {
                    overload::stamp(&self.stats, oc, &mut txn.last_response);
                }
                count_reply(&self.stats, 100);
            }
        }
        if !txn.last_response.is_empty() {
            out.send(txn.upstream_socket, txn.upstream, &txn.last_response);
            bump(&self.stats.tx_datagrams);
        }
    }

    pub(super) fn recycle(&mut self, txn: ProxyTxn) {
        if txn.holds_call {
            if let Some(d) = &txn.target.dest {
                d.call_ended();
            }
        }
        self.pool.put(txn.request);
        self.pool.put(txn.forwarded);
        self.pool.put(txn.last_response);
        for b in [txn.media_sdp, txn.held, txn.queued] {
            if b.capacity() > 0 {
                self.pool.put(b);
            }
        }
        if let Some(fork) = txn.fork {
            let buffers = fork.legs.into_iter().map(|l| l.forwarded);
            for b in buffers.chain([fork.best]) {
                if b.capacity() > 0 {
                    self.pool.put(b);
                }
            }
        }
    }
}
