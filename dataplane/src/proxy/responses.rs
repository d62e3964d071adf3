//! Responses from destinations: matching by sealed branch, failover,
//! relaying upstream, ACKs for non-2xx finals, and final replies of our own.

use super::*;

impl Worker {
    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        bump(&self.stats.responses);
        let code = msg.status().unwrap_or(0);
        let branch = match sealed_branch(msg) {
            Some(b) => b,
            None => match msg.top_via() {
                Ok(via) => via.branch.unwrap_or(b""),
                Err(_) => {
                    bump(&self.stats.stray_responses);
                    return;
                }
            },
        };
        if self.natping.is_some() && self.nat_ping_reply(socket, src, msg, branch, out) {
            return;
        }
        let b = match self.minter.open(branch) {
            Ok(b) if b.epoch == self.minter.epoch() => b,
            // A response to a request the process this one took over from
            // forwarded: that process still holds the transaction.
            Ok(b)
                if self
                    .cfg
                    .predecessor
                    .as_ref()
                    .is_some_and(|p| p.owns_epoch(b.epoch)) =>
            {
                bump(&self.stats.relayed_to_predecessor);
                out.to_predecessor(b.worker, socket, src, msg.buf());
                return;
            }
            Err(Rejected::Forged) => {
                // sipvane's form but not its seal: a guess or a tamper. It
                // must change nothing (no failover, no health mark).
                bump(&self.stats.forged_responses);
                return;
            }
            // Not a Via this process wrote: nothing to do with it.
            _ => {
                bump(&self.stats.stray_responses);
                return;
            }
        };
        let owner = usize::from(b.worker);
        if owner != self.index {
            if owner < self.workers && !self.handed_over {
                bump(&self.stats.handoffs);
                out.handoff(owner, socket | HANDED_OVER, src, msg.buf());
            } else {
                bump(&self.stats.stray_responses);
            }
            return;
        }
        let cseq_method = msg.cseq().map(|c| c.method).unwrap_or(Method::Other);
        let id = TxnId::from_parts(b.slot, b.generation);
        let Some((id, txn)) = id.and_then(|id| Some((id, self.txns.get_mut(id)?))) else {
            // The transaction is gone; a 2xx to INVITE must still reach the
            // caller (the callee retransmits it until the ACK arrives).
            if cseq_method == Method::Invite && (200..300).contains(&code) {
                self.forward_stateless_response(msg, out);
            } else {
                bump(&self.stats.stray_responses);
            }
            return;
        };

        if txn.fork.is_some() {
            self.fork_response(now, id, b.attempt, cseq_method, msg, code, out);
            return;
        }
        let abandoned = txn.abandoned.iter().position(|a| a.attempt == b.attempt);
        if cseq_method == Method::Cancel {
            let cancel = match abandoned {
                Some(i) => txn.abandoned[i].cancel.as_mut(),
                None => txn.cancel.as_mut(),
            };
            if let Some(c) = cancel {
                c.on_response(code, now);
            }
            self.reschedule(id);
            return;
        }
        if let Some(i) = abandoned {
            self.abandoned_response(now, id, i, msg, code, src, out);
            return;
        }

        if b.attempt != txn.attempt {
            // A response from a destination we already moved away from.
            if txn.method == Method::Invite && (200..300).contains(&code) {
                self.cancel_current(now, id, out);
                self.relay_response(now, id, msg, code, out);
            } else if txn.method == Method::Invite && code >= 300 {
                self.ack_old_attempt(id, b.attempt, msg, (reply_socket(socket), src), out);
            }
            return;
        }

        let Some(client) = txn.client.as_mut() else {
            return;
        };
        let action = client.on_response(code, now);
        use transaction::ClientEvent as E;
        match action {
            E::Absorb => {
                bump(&self.stats.retransmissions_absorbed);
            }
            E::ResendAck => {
                bump(&self.stats.retransmissions_absorbed);
                self.send_ack(id, msg, out);
            }
            E::Provisional { send_cancel } => {
                if send_cancel {
                    self.send_cancel(now, id, out);
                }
                if code > 100 {
                    self.relay_response(now, id, msg, code, out);
                }
            }
            E::Success => {
                if let Some(txn) = self.txns.get_mut(id) {
                    if let Some(d) = &txn.target.dest {
                        d.record_success();
                        d.record_latency(now.saturating_duration_since(txn.sent_at));
                    }
                }
                // Only the first 2xx of the transaction makes the dialog: a
                // retransmission may come after the BYE already ended it.
                let makes_dialog = self
                    .txns
                    .get_mut(id)
                    .is_some_and(|t| std::mem::take(&mut t.makes_dialog));
                if makes_dialog {
                    self.call_answered(now, id, msg, code, None);
                }
                self.relay_response(now, id, msg, code, out);
            }
            E::Failure { send_ack } => {
                if send_ack {
                    self.send_ack(id, msg, out);
                }
                if self.cfg.failover_codes.contains(&code) {
                    if let Some(d) = self.txns.get(id).and_then(|t| t.target.dest.clone()) {
                        d.record_failure(now, &self.cfg.health);
                    }
                    if self.try_failover(now, id, out) {
                        return;
                    }
                    if self.dispatched(id) {
                        // Every destination of the set refused: one 503 upstream.
                        self.reply_final(now, id, 503, Some(b"All destinations failed"), out);
                        // Timer G from now, not the last attempt's stale
                        // fr_inv deadline (found by the simulation,
                        // dataplane/tests/sim).
                        self.reschedule(id);
                        return;
                    }
                } else if let Some(d) = self.txns.get(id).and_then(|t| t.target.dest.clone()) {
                    // Any other final answer proves the destination alive.
                    d.record_success();
                }
                self.relay_final(now, id, msg, code, out);
            }
        }
        self.reschedule(id);
    }

    /// A 2xx answered the call of transaction `id`: its dialog is recorded,
    /// the call counted and reported. `attempt` names the destination when
    /// it is not the current target (an attempt given up at fr_timer that
    /// answered late).
    pub(super) fn call_answered(
        &mut self,
        now: Instant,
        id: TxnId,
        msg: &Message<'_>,
        code: u16,
        attempt: Option<Target>,
    ) {
        let dest_addr = match &attempt {
            Some(t) => t.addr,
            None => match self.txns.get(id) {
                Some(t) => t.target.addr,
                None => return,
            },
        };
        if !self.dialog_started(now, id, msg, attempt) {
            return;
        }
        bump(&self.stats.calls_answered);
        if let (Some(sink), Some(txn)) = (&self.events, self.txns.get(id)) {
            sink.push(CallEvent::Answered {
                at: now,
                call_id: events::text(msg.call_id().unwrap_or(b"")),
                dest: dest_addr,
                setup: now.saturating_duration_since(txn.sent_at),
                code,
                reply: events::Reply::of(msg),
            });
        }
    }

    pub(super) fn dispatched(&self, id: TxnId) -> bool {
        self.txns.get(id).is_some_and(|t| t.set.is_some())
    }

    /// Moves the transaction to its next candidate destination of its
    /// dispatcher set, if any is left and failover is allowed. Returns
    /// whether it did.
    pub(super) fn try_failover(&mut self, now: Instant, id: TxnId, out: &mut Outbox) -> bool {
        let Some(txn) = self.txns.get_mut(id) else {
            return false;
        };
        if txn.cancelled || txn.final_sent {
            return false;
        }
        let Some((table, set_index)) = txn.set.clone() else {
            return false;
        };
        let Some(set) = table.sets().get(set_index) else {
            return false;
        };
        while let Some(&next) = txn.candidates.get(txn.next_candidate) {
            txn.next_candidate += 1;
            let Some(dest) = set.get(next) else { continue };
            if !dest.is_available(now) {
                continue;
            }
            dest.stats.record_selected();
            if txn.holds_call {
                if let Some(old) = &txn.target.dest {
                    old.call_ended();
                }
                dest.stats.call_started();
            }
            txn.target = Target {
                addr: dest.addr,
                socket: dest_socket(dest),
                dest: Some(dest.stats.clone()),
            };
            txn.mtu = MtuSwitch::No;
            txn.attempt = txn.attempt.wrapping_add(1);
            bump(&self.stats.failovers);
            self.forward_attempt(now, id, out);
            return true;
        }
        false
    }

    /// Sends a response from the current destination upstream, keeping it
    /// for retransmission when it is a final one.
    pub(super) fn relay_response(
        &mut self,
        now: Instant,
        id: TxnId,
        msg: &Message<'_>,
        code: u16,
        out: &mut Outbox,
    ) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if let MediaLeg::Anchored { engine, answering } = txn.media {
            let sdp = (101..300).contains(&code) && !msg.body().is_empty();
            if sdp && txn.final_sent {
                // A retransmitted 2xx: resend what the engine made of the first.
                if !txn.last_response.is_empty() {
                    out.send(txn.upstream_socket, txn.upstream, &txn.last_response);
                    bump(&self.stats.tx_datagrams);
                }
                return;
            }
            if sdp && answering {
                // One answer at a time; keep the latest, a final over a provisional.
                let keep = code >= 200
                    || parse(&txn.queued)
                        .ok()
                        .and_then(|q| q.status())
                        .is_none_or(|c| c < 200);
                if keep {
                    txn.queued.clear();
                    txn.queued.extend_from_slice(msg.buf());
                }
                return;
            }
            if sdp && self.start_answer(now, id, usize::from(engine), msg, out) {
                return;
            }
            if code >= 300 && answering {
                // A failure overtakes the held provisional.
                if let Some(m) = self.media.as_mut() {
                    m.cancel(id);
                }
                if let Some(txn) = self.txns.get_mut(id) {
                    txn.media = MediaLeg::Anchored {
                        engine,
                        answering: false,
                    };
                    txn.queued.clear();
                }
            }
        }
        self.relay_response_body(now, id, msg, code, None, out);
    }

    /// Relays the final (non-2xx) response chosen for the caller; a 503
    /// goes as 500 (RFC 3261 §16.7 step 6): the next hop being unavailable
    /// does not mean sipvane is, and a 503 would make the caller stop
    /// sending anything to sipvane (§21.5.4).
    pub(super) fn relay_final(
        &mut self,
        now: Instant,
        id: TxnId,
        msg: &Message<'_>,
        code: u16,
        out: &mut Outbox,
    ) {
        if code == 503 {
            let mut remapped = Vec::with_capacity(msg.buf().len());
            if with_status_500(msg.buf(), &mut remapped) {
                if let Ok(m) = parse(&remapped) {
                    self.relay_response(now, id, &m, 500, out);
                    return;
                }
            }
        }
        self.relay_response(now, id, msg, code, out);
    }

    /// Relays a response upstream, with its body replaced when `body` is given.
    pub(super) fn relay_response_body(
        &mut self,
        now: Instant,
        id: TxnId,
        msg: &Message<'_>,
        code: u16,
        body: Option<&[u8]>,
        out: &mut Outbox,
    ) {
        // Feedback only for a client that offered overload control.
        let oc = self.oc_for(self.txns.get(id).is_some_and(|t| t.oc));
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if txn.final_sent && !(txn.method == Method::Invite && (200..300).contains(&code)) {
            return;
        }
        // A NATed registered callee's Contact names where it really is, so
        // the caller's in-dialog requests reach it (fix_nated_contact).
        let mut fixed = Vec::new();
        let nated = txn.located == Located::Nated
            && (101..300).contains(&code)
            && Worker::nated_response(msg, txn.target.addr, &mut fixed);
        txn.last_response.clear();
        let built = match nated.then(|| parse(&fixed).ok()).flatten() {
            Some(m) => build::forward_response_with_body(&m, body, &mut txn.last_response),
            None => build::forward_response_with_body(msg, body, &mut txn.last_response),
        };
        if built.is_err() {
            return;
        }
        if txn.oc {
            overload::stamp(&self.stats, oc, &mut txn.last_response);
        }
        out.send(txn.upstream_socket, txn.upstream, &txn.last_response);
        bump(&self.stats.tx_datagrams);
        count_reply(&self.stats, code);
        if code >= 200 {
            self.final_sent(now, id, code, out);
        } else {
            txn.server.on_provisional_sent();
        }
    }

    /// Sends a final response sipvane makes itself for the transaction.
    pub(super) fn reply_final(
        &mut self,
        now: Instant,
        id: TxnId,
        code: u16,
        warning: Option<&[u8]>,
        out: &mut Outbox,
    ) {
        let retry = (code == 503).then_some(self.cfg.retry_after_s);
        let oc = self.oc_feedback();
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if txn.final_sent {
            return;
        }
        txn.last_response.clear();
        let built = match parse(&txn.request) {
            Ok(req) => {
                let tag = local_tag(&self.minter, &req);
                let opts = ReplyOpts {
                    to_tag: Some(&tag),
                    retry_after: retry,
                    warning,
                    server: Some(self.cfg.server_header.as_bytes()),
                    ..ReplyOpts::default()
                };
                build::reply(
                    &req,
                    code,
                    build::reason_phrase(code),
                    &opts,
                    &mut txn.last_response,
                )
                .is_ok()
            }
            Err(_) => false,
        };
        if !built {
            return;
        }
        if txn.oc {
            overload::stamp(&self.stats, oc, &mut txn.last_response);
        }
        out.send(txn.upstream_socket, txn.upstream, &txn.last_response);
        bump(&self.stats.tx_datagrams);
        count_reply(&self.stats, code);
        self.final_sent(now, id, code, out);
    }

    pub(super) fn final_sent(&mut self, now: Instant, id: TxnId, code: u16, out: &mut Outbox) {
        if code >= 300 {
            self.end_txn_media(now, id, out);
        }
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        if !txn.final_sent && txn.method == Method::Invite && code >= 300 && !txn.cancelled {
            bump(&self.stats.calls_failed);
        }
        if let (false, Some(sink)) = (txn.final_sent, &self.events) {
            let dest = txn.target.dest.is_some().then_some(txn.target.addr);
            let (m, c) = (txn.method, txn.cancelled);
            if let Some(ev) = events::on_final(now, m, code, c, dest, &txn.last_response) {
                sink.push(ev);
            }
        }
        if code >= 300 && std::mem::take(&mut txn.holds_call) {
            if let Some(d) = &txn.target.dest {
                d.call_ended();
            }
        }
        txn.final_sent = true;
        txn.server.on_final_sent(code, now);
        // What a finished transaction still needs is its last response; the
        // request copies go back to the pool now rather than at Timer J/L.
        // An abandoned attempt that rings late needs the request to be
        // rebuilt for its CANCEL (or its final's ACK): kept until then.
        if code >= 200 && txn.abandoned.is_empty() {
            let request = std::mem::take(&mut txn.request);
            self.pool.put(request);
            // The current attempt may still be waiting when another
            // attempt answered: it keeps its request to retransmit and
            // CANCEL (found by the simulation, dataplane/tests/sim).
            let waiting = txn.client.as_ref().is_some_and(ClientTx::is_pending);
            let invite_failed = txn.method == Method::Invite && code >= 300;
            if !invite_failed && !waiting {
                // The forwarded INVITE is kept for ACKs of late finals only
                // while the client transaction is alive.
                let fwd = std::mem::take(&mut txn.forwarded);
                self.pool.put(fwd);
            }
            // An INVITE answered 2xx never resends its response itself (the
            // callee retransmits the 2xx, relayed afresh; RFC 6026), so its
            // copy goes back too — halving what a busy worker holds for the
            // wait timer. An anchored call keeps it: a retransmitted 2xx gets
            // the engine's rewrite of the first one.
            if txn.method == Method::Invite
                && (200..300).contains(&code)
                && !matches!(txn.media, MediaLeg::Anchored { .. })
            {
                let resp = std::mem::take(&mut txn.last_response);
                self.pool.put(resp);
            }
        }
    }

    /// The hop-by-hop ACK for a non-2xx final from the current attempt.
    pub(super) fn send_ack(&mut self, id: TxnId, resp: &Message<'_>, out: &mut Outbox) {
        let Some(txn) = self.txns.get(id) else { return };
        let Ok(fwd) = parse(&txn.forwarded) else {
            return;
        };
        self.scratch.clear();
        if build::ack_for(&fwd, resp, &mut self.scratch).is_ok() {
            out.send(txn.target.socket, txn.target.addr, &self.scratch);
            bump(&self.stats.tx_datagrams);
        }
    }

    /// ACKs a non-2xx final from an attempt we already abandoned, so that
    /// destination stops retransmitting it. Its request is rebuilt (it is
    /// deterministic per attempt) and the ACK goes where the response came from.
    pub(super) fn ack_old_attempt(
        &mut self,
        id: TxnId,
        attempt: u8,
        resp: &Message<'_>,
        (socket, src): (SocketId, SocketAddr),
        out: &mut Outbox,
    ) {
        let mut old = self.pool.get();
        if self.write_forward(id, attempt, None, &mut old) {
            if let Ok(fwd) = parse(&old) {
                self.scratch.clear();
                if build::ack_for(&fwd, resp, &mut self.scratch).is_ok() {
                    out.send(socket, src, &self.scratch);
                    bump(&self.stats.tx_datagrams);
                }
            }
        }
        self.pool.put(old);
    }

    pub(super) fn forward_stateless_response(&mut self, msg: &Message<'_>, out: &mut Outbox) {
        // The next Via tells where the caller is (received/rport if present).
        let Some(second) = msg.values(HeaderName::Via).nth(1) else {
            bump(&self.stats.stray_responses);
            return;
        };
        let Ok(v) = Via::parse(second) else {
            bump(&self.stats.stray_responses);
            return;
        };
        let host = v.received.unwrap_or(v.host);
        let port = match v.rport {
            Some(Some(p)) => p,
            _ => v.port.unwrap_or(5060),
        };
        let Some(ip) = parse_ip(host) else {
            bump(&self.stats.stray_responses);
            return;
        };
        self.scratch.clear();
        if build::forward_response(msg, &mut self.scratch).is_ok() {
            out.send(SOCK_PUBLIC, SocketAddr::new(ip, port), &self.scratch);
            bump(&self.stats.tx_datagrams);
            bump(&self.stats.stateless_forwards);
        }
    }
}

/// The branch of a response's top Via when it is the one sipvane wrote
/// (`;branch=z9hG4bKsv…`, as written, in the first entry), found with one
/// search instead of a parse of the Via: only the branch matters (its seal
/// is checked next, and the entry is popped, never relayed), and the parse
/// cost ~1 600 instructions a response. `None`: parse the Via.
fn sealed_branch<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    const NEEDLE: &[u8] = b";branch=z9hG4bKsv";
    let v = msg.header(HeaderName::Via)?;
    // Each `;` checked in turn: a Via has few, and `memmem::find` spent
    // more setting up its searcher than the whole search costs.
    let at = memchr::memchr_iter(b';', v).find(|&i| v[i..].starts_with(NEEDLE))?;
    if memchr::memchr2(b',', b'"', &v[..at]).is_some() {
        return None; // not in the first entry, or in a quoted string
    }
    let value = &v[at + NEEDLE.len() - branch::PREFIX.len()..];
    let len = branch::LEN.min(value.len());
    // Exactly the sealed length, ending the parameter.
    match value.get(len) {
        None | Some(b';' | b',' | b' ' | b'\t' | b'\r' | b'\n') if len == branch::LEN => {
            Some(&value[..len])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top_branch(via: &str) -> Option<Vec<u8>> {
        let raw = format!(
            "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\n\
             Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        let msg = parse(raw.as_bytes()).unwrap();
        sealed_branch(&msg).map(<[u8]>::to_vec)
    }

    #[test]
    fn sealed_branch_is_found_only_where_the_via_parse_would_find_it() {
        let m = Minter::new([1, 2, 3, 4], 7);
        let b = m.seal(&Branch {
            worker: 0,
            slot: 5,
            generation: 1,
            attempt: 0,
            epoch: 7,
        });
        let b = std::str::from_utf8(&b).unwrap();
        for via in [
            format!("SIP/2.0/UDP 127.0.0.1:5061;branch={b};rport"),
            format!("SIP/2.0/UDP 127.0.0.1:5061;branch={b}"),
            format!("SIP/2.0/UDP 127.0.0.1:5061;branch={b}, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1"),
        ] {
            assert_eq!(top_branch(&via).as_deref(), Some(b.as_bytes()), "{via}");
        }
        for via in [
            // Ours in the second entry only: the top one is someone else's.
            format!("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1, SIP/2.0/UDP 127.0.0.1;branch={b}"),
            // Longer or shorter than a sealed branch.
            format!("SIP/2.0/UDP 127.0.0.1:5061;branch={b}0"),
            format!("SIP/2.0/UDP 127.0.0.1:5061;branch={}", &b[..b.len() - 1]),
            // Rewritten with LWS or another case: left to the Via parser.
            format!("SIP/2.0/UDP 127.0.0.1:5061 ; branch={b}"),
            format!("SIP/2.0/UDP 127.0.0.1:5061;BRANCH={b}"),
            format!("SIP/2.0/UDP 127.0.0.1:5061;x=\"a,{b}\""),
        ] {
            assert_eq!(top_branch(&via), None, "{via}");
        }
    }
}

/// `resp` with its status line replaced by `500 Server Internal Error`
/// (everything else kept), into `out`; false when it has no status line.
fn with_status_500(resp: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(eol) = memchr::memmem::find(resp, b"\r\n") else {
        return false;
    };
    out.extend_from_slice(b"SIP/2.0 500 Server Internal Error");
    out.extend_from_slice(&resp[eol..]);
    true
}

#[cfg(test)]
mod remap_tests {
    use super::*;

    #[test]
    fn a_503_becomes_a_500_with_the_same_headers() {
        let mut out = Vec::new();
        let r = b"SIP/2.0 503 Service Unavailable\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\
                  Retry-After: 5\r\nContent-Length: 0\r\n\r\n";
        assert!(with_status_500(r, &mut out));
        let m = parse(&out).unwrap();
        assert_eq!(m.status(), Some(500));
        assert_eq!(
            m.header(HeaderName::Via),
            Some(&b"SIP/2.0/UDP a;branch=z9hG4bK1"[..])
        );
        assert!(!with_status_500(b"SIP/2.0 503", &mut Vec::new()));
    }
}
