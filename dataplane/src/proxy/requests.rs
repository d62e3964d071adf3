//! Requests arriving at a worker: flood limits, validation, the routing
//! decision, new transactions and what is forwarded for them, and the
//! stateless relay of end-to-end ACKs.

use super::*;

impl Worker {
    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        if self.cfg.flood.is_some()
            && !self.handed_over
            && self.over_flood_limit(now, socket, src, msg, out)
        {
            return;
        }
        if self.cfg.balance_by_call_id && socket == SOCK_PUBLIC && !self.handed_over {
            if let Some(owner) = route::steer(msg, &self.cfg, self.workers) {
                if owner != self.index {
                    bump(&self.stats.handoffs);
                    out.handoff(owner, socket | HANDED_OVER, src, msg.buf());
                    return;
                }
            }
        }
        self.route_request(now, socket, src, msg, out);
    }

    /// A request past the flood limits and Call-ID steering (also a parked
    /// request routed again once its name resolved).
    pub(super) fn route_request(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        bump(&self.stats.requests);
        let method = msg.method().unwrap_or(Method::Other);
        // Parsed once here; the routing decision works from it.
        let info = match msg.validated_request() {
            Ok(info) => info,
            Err(e) => {
                bump(&self.stats.bad_requests);
                // Never answer an ACK (RFC 3261 §17.2.3), not even a broken one.
                if method != Method::Ack {
                    let warning = e.to_string();
                    self.reply(socket, src, msg, 400, None, Some(warning.as_bytes()), out);
                }
                return;
            }
        };
        let via = info.common.via;
        let key = server_key(&self.hasher, msg, &via, method, method_raw(msg));
        if self.cfg.predecessor.is_some() {
            // A CANCEL belongs to the INVITE it cancels.
            let owner_key = match method {
                Method::Cancel => server_key(&self.hasher, msg, &via, Method::Invite, b"INVITE"),
                _ => key,
            };
            if self.relay_to_predecessor(&owner_key, socket, src, msg, out) {
                return;
            }
        }

        match method {
            Method::Ack => {
                if let Some(id) = self.txns.find(&key) {
                    // Hop-by-hop ACK for a non-2xx final we sent ends Timer G;
                    // a 2xx ACK reusing the INVITE's branch goes on.
                    let route_on = self
                        .txns
                        .get_mut(id)
                        .is_some_and(|txn| txn.server.on_ack(now));
                    self.reschedule(id);
                    if !route_on {
                        bump(&self.stats.retransmissions_absorbed);
                        return;
                    }
                } else if msg.values(HeaderName::Route).next().is_none() {
                    // The ACK of a non-2xx final (no route set yet) for an
                    // INVITE forked on the worker owning the callee's
                    // connection goes there.
                    if let Some(owner) = self.located_owner(now, socket, &info) {
                        bump(&self.stats.handoffs);
                        out.handoff(owner, SOCK_PRIVATE | HANDED_OVER, src, msg.buf());
                        return;
                    }
                }
                // ACK for a 2xx is end-to-end: relay it along the route set.
                self.relay_stateless(now, socket, src, msg, &info, out);
            }
            Method::Cancel => self.handle_cancel(now, socket, src, msg, &info, out),
            _ => {
                if let Some(id) = self.txns.find(&key) {
                    self.absorb_retransmission(now, id, out);
                    return;
                }
                self.new_request(now, socket, src, msg, &info, key, method, out);
            }
        }
    }

    /// The routing decision for a request from `src`. Trust is looked up
    /// only where the policy needs it.
    pub(super) fn decide(
        &self,
        now: Instant,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        method: Method,
        src: SocketAddr,
    ) -> Decision {
        if let Some(tag) = info.common.to.tag {
            let flow = flow_token::target(&self.minter, msg, tag, &self.cfg).filter(|f| {
                // Only the worker owning the dialog (and so the caller's
                // connection) sends on it; elsewhere the routing decision
                // hands the request over first.
                f.worker.is_none_or(|w| w == self.index) || self.handed_over || self.from_stream
            });
            if let Some(flow) = flow {
                // Towards a caller on a TCP or TLS connection, through our
                // Record-Route: its connection is found by its address.
                return Decision::Relay {
                    to: flow.peer,
                    tcp: true,
                    tls: flow.tls,
                    pop_routes: flow.pop,
                    strict: false,
                };
            }
        }
        let table = self.table.load();
        route::decide(
            route::Request {
                msg,
                info,
                method,
                trusted: &|| self.cfg.is_trusted_ip(src.ip()) || table.has_addr(src),
                // A message from a TCP connection stays on the worker owning it.
                handed_over: self.handed_over || self.from_stream,
            },
            &self.cfg,
            self.index,
            &|ip| {
                self.cfg.is_trusted_ip(ip)
                    || table.has_ip(ip)
                    || self
                        .cfg
                        .registrar
                        .as_ref()
                        .is_some_and(|r| r.location.is_target(ip))
            },
            &|uri| self.lookup_name(uri, now),
        )
    }

    /// The per-source limit, before anything else: true when the request was
    /// refused. Trust is looked up only for a source over its rate.
    pub(super) fn over_flood_limit(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) -> bool {
        let Some(guard) = self.cfg.flood.as_deref() else {
            return false;
        };
        let Verdict::Blocked { started } = guard.check(src.ip(), now) else {
            return false;
        };
        let limits = *guard.limits();
        if self.cfg.is_trusted_ip(src.ip()) || self.table.load().has_addr(src) {
            return false;
        }
        if started {
            bump(&self.stats.flood_blocks);
            tracing::warn!(
                worker = self.index,
                source = %src.ip(),
                rps = limits.per_source_rps,
                block_s = limits.block.as_secs(),
                "source over its request rate: blocked"
            );
        }
        bump(&self.stats.flood_rejects);
        if !limits.drop && msg.method() != Some(Method::Ack) {
            let retry = u32::try_from(limits.block.as_secs()).unwrap_or(u32::MAX);
            self.reply(
                socket,
                src,
                msg,
                503,
                Some(retry),
                Some(b"Too many requests"),
                out,
            );
        }
        true
    }

    pub(super) fn absorb_retransmission(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        bump(&self.stats.retransmissions_absorbed);
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let upstream = txn.server.on_request(now);
        self.send_upstream(id, upstream, out);
        self.reschedule(id);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_request(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        key: TxnKey,
        method: Method,
        out: &mut Outbox,
    ) {
        let via = &info.common.via;
        let in_dialog = info.common.to.tag.is_some();
        let mut candidates: SmallVec<[u16; 16]> = SmallVec::new();
        let mut set_table = None;
        let mut anchor = false;
        let decision = self.decide(now, msg, info, method, src);
        let mut found = Vec::new();
        if let Decision::Location { .. } = decision {
            found = self.locate(now, info);
            if let Some(owner) = self.binding_owner(socket, &found) {
                // The phone's connection belongs to another worker: the
                // request is forked there (before any challenge, so the
                // nonce is that worker's), and its Record-Route brings the
                // dialog back there.
                bump(&self.stats.handoffs);
                out.handoff(owner, SOCK_PRIVATE | HANDED_OVER, src, msg.buf());
                return;
            }
        }
        let caller = if matches!(
            decision,
            Decision::Dispatch { .. } | Decision::Location { .. }
        ) {
            self.caller_allowed(now, socket, src, msg, info, key, out)
        } else {
            Caller::Allowed
        };
        if caller == Caller::Answered {
            return;
        }
        let mut strict_route = false;
        // A request to a registered user: forked to its bindings.
        let mut fork = None;
        let mut how = Located::No;
        // Whether a caller behind a NAT gets its media anchored: initial
        // requests to a dispatcher set (unless its rule says no) or to a
        // registered user.
        let mut nat_anchors = false;
        let (target, pop_routes) = match decision {
            Decision::Reply { code, warning } => {
                match code {
                    400 => bump(&self.stats.bad_requests),
                    482 | 483 => bump(&self.stats.loops),
                    403 | 404 => bump(&self.stats.relay_denied),
                    478 => bump(&self.stats.dns_unresolvable),
                    _ => {}
                }
                let warning = warning.map(str::as_bytes);
                self.reply(socket, src, msg, code, None, warning, out);
                return;
            }
            Decision::Options => {
                self.reply_options(socket, src, msg, out);
                return;
            }
            Decision::Handoff(w) => {
                bump(&self.stats.handoffs);
                out.handoff(w, socket | HANDED_OVER, src, msg.buf());
                return;
            }
            Decision::Resolve => {
                self.park(now, socket, src, msg, out);
                return;
            }
            Decision::Register => {
                self.handle_register(now, socket, src, msg, info, key, out);
                return;
            }
            Decision::Location { pop_routes } => {
                self.count_lookup(!found.is_empty());
                let found = std::mem::take(&mut found);
                let Some(best) = found.first() else {
                    self.reply(socket, src, msg, 404, None, Some(b"Not registered"), out);
                    return;
                };
                how = if best.nated {
                    Located::Nated
                } else {
                    Located::Direct
                };
                // A phone behind a NAT gets its media through the engine
                // whatever the sets' anchoring says (Kamailio's
                // rtpengine_manage() under nat_uac_test): its SDP names an
                // address the other side cannot reach.
                anchor = method == Method::Invite
                    && found.iter().any(|b| b.nated)
                    && self
                        .media
                        .as_ref()
                        .is_some_and(|m| m.shared().anchors_any())
                    && has_sdp(msg);
                nat_anchors = true;
                let target = Target {
                    addr: best.addr,
                    socket: best.socket,
                    dest: None,
                };
                fork = Some(Worker::new_fork(found));
                (target, pop_routes)
            }
            Decision::Relay {
                to,
                tcp,
                tls,
                pop_routes,
                strict,
            } => {
                strict_route = strict;
                (
                    Target {
                        addr: to,
                        socket: relay_socket(tcp, tls),
                        dest: None,
                    },
                    pop_routes,
                )
            }
            Decision::Dispatch {
                set: set_id,
                media: rule_media,
                pop_routes,
            } => {
                if method == Method::Invite && self.txns.len() >= self.cfg.overload_transactions {
                    bump(&self.stats.overload_rejects);
                    self.reply_unavailable(socket, src, msg, b"Overloaded", out);
                    return;
                }
                if method == Method::Invite && self.backlogged {
                    bump(&self.stats.backlog_rejects);
                    self.reply_unavailable(socket, src, msg, b"Overloaded", out);
                    return;
                }
                anchor = method == Method::Invite
                    && self.media.as_ref().is_some_and(|m| {
                        rule_media.unwrap_or_else(|| m.shared().anchors_set(set_id))
                    })
                    && has_sdp(msg);
                nat_anchors = rule_media != Some(false);
                let table = self.table.load_full();
                let Some(set) = table.set(set_id) else {
                    bump(&self.stats.no_destination);
                    self.reply(
                        socket,
                        src,
                        msg,
                        503,
                        None,
                        Some(b"No such dispatcher set"),
                        out,
                    );
                    return;
                };
                let key = SelectKey {
                    call_id: info.common.call_id,
                    from_uri: info.common.from.uri,
                    to_uri: info.common.to.uri,
                    ruri: msg.request_uri().unwrap_or(b""),
                    auth_user: (self.cfg.algorithm == crate::dispatch::Algorithm::HashAuthUser)
                        .then(|| crate::sip::auth::credentials_username(msg))
                        .flatten(),
                };
                let set_index = set.index();
                self.selector
                    .select(set, self.cfg.algorithm, &key, now, &mut candidates);
                let Some(&first) = candidates.first() else {
                    bump(&self.stats.no_destination);
                    if method == Method::Invite {
                        self.emit_failed(now, msg, 503, None);
                    }
                    self.reply_unavailable(socket, src, msg, b"No destination available", out);
                    return;
                };
                let Some(dest) = set.get(first) else { return };
                let target = Target {
                    addr: dest.addr,
                    socket: dest_socket(dest),
                    dest: Some(dest.stats.clone()),
                };
                set_table = Some((table.clone(), set_index));
                (target, pop_routes)
            }
        };

        if method == Method::Invite && !in_dialog {
            bump(&self.stats.initial_invites);
            if let (Some(sink), Some((table, set_index))) = (&self.events, &set_table) {
                let set = table.sets().get(*set_index).map_or(0, |s| s.id);
                sink.push(CallEvent::Start {
                    at: now,
                    call_id: events::text(msg.call_id().unwrap_or(b"")),
                    from: events::text(msg.from().map(|f| f.uri).unwrap_or(b"")),
                    to: events::text(msg.to().map(|t| t.uri).unwrap_or(b"")),
                    ruri: events::text(msg.request_uri().unwrap_or(b"")),
                    set,
                    dest: target.addr,
                    worker: u16::try_from(self.index).unwrap_or(u16::MAX),
                });
            }
        }
        // A re-INVITE with SDP of an anchored dialog goes to the engine
        // holding its session (the new offer may move either side's media).
        let pinned = if method == Method::Invite && in_dialog && has_sdp(msg) {
            self.dialog_media_engine(&info.common)
        } else {
            None
        };
        if in_dialog && method != Method::Bye && method != Method::Ack {
            self.dialog_refreshed(now, &info.common);
        }
        if method == Method::Bye && in_dialog {
            // Like Kamailio's dialog module, the BYE ends the dialog whatever
            // its reply: a BYE to a dead destination still frees its call slot.
            self.dialog_ended(now, &info.common, out);
        }
        if in_dialog && method != Method::Ack && self.from_stream {
            self.note_dialog_owner(src, msg, out);
        }
        let mut request = self.pool.get();
        let nated = self.nated_contact(msg, info, method, src);
        // A caller behind a NAT (its Contact just rewritten): its SDP names
        // a private address too, so its media is anchored as well.
        if nated.is_some()
            && nat_anchors
            && method == Method::Invite
            && self
                .media
                .as_ref()
                .is_some_and(|m| m.shared().anchors_any())
            && has_sdp(msg)
        {
            anchor = true;
        }
        let registrar = self.cfg.registrar.clone();
        let consumed_realm = match (caller, &registrar) {
            (Caller::Authenticated { domain }, Some(r)) => {
                r.config.domains.get(domain).map(String::as_bytes)
            }
            _ => None,
        };
        let rewritten = nated.is_some() || consumed_realm.is_some();
        if rewritten {
            // A NATed caller's Contact names where it really is; the
            // credentials the caller proved itself with stay here.
            let rw = build::Rewrite {
                contact: nated.as_deref(),
                consumed_realm,
            };
            build::rewrite_request(msg, &rw, &mut request);
        } else {
            request.extend_from_slice(msg.buf());
        }
        let received = annotate_received(via, src);
        let (fork, first_branches) = match fork {
            Some((f, first)) => (Some(f), first),
            None => (None, 0..0),
        };
        let forked = fork.is_some();
        let record_route = self.cfg.record_route
            && !in_dialog
            && matches!(method, Method::Invite | Method::Subscribe);
        let txn = ProxyTxn {
            method,
            upstream: src,
            upstream_socket: socket,
            upstream_tls: socket == SOCK_TCP && self.from_tls,
            server: ServerTx::new(method, now, &self.cfg.timers, socket == SOCK_TCP),
            request,
            forwarded: self.pool.get(),
            last_response: self.pool.get(),
            client: None,
            cancel: None,
            attempt: 0,
            target,
            candidates,
            next_candidate: 1,
            set: set_table,
            pop_routes,
            strict_route,
            record_route,
            received,
            cancelled: false,
            final_sent: false,
            sent_at: now,
            timer: None,
            media: MediaLeg::Off,
            media_sdp: Vec::new(),
            held: Vec::new(),
            queued: Vec::new(),
            abandoned: Vec::new(),
            holds_call: false,
            makes_dialog: method == Method::Invite && !in_dialog,
            located: how,
            oc: self.cfg.overload_control.is_some()
                && crate::sip::overload::offers_loss(via.params),
            mtu: MtuSwitch::No,
            fork,
        };
        let id = match self.txns.insert(key, txn) {
            Ok(id) => {
                bump(&self.stats.transactions_created);
                id
            }
            Err(_) => {
                bump(&self.stats.table_full);
                self.reply_unavailable(socket, src, msg, b"Transaction table full", out);
                return;
            }
        };
        if method == Method::Invite && !in_dialog {
            // Counted now, not at the 2xx: call-load selection and `maxload`
            // must see the calls that are still ringing.
            if let Some(txn) = self.txns.get_mut(id) {
                if let Some(d) = &txn.target.dest {
                    d.call_started();
                    txn.holds_call = true;
                }
            }
        }
        // No 100 Trying yet: the server transaction sends one only if no
        // provisional came from the destination within 200 ms (TRYING_DELAY).
        if (anchor || pinned.is_some()) && self.start_offer(now, id, msg, pinned, out) {
            // The INVITE waits in its transaction for the engine's SDP (and
            // its 100 Trying timer runs meanwhile).
            self.reschedule(id);
            return;
        }
        if forked {
            // Each binding's Contact becomes its branch's Request-URI (RFC
            // 3261 §16.5).
            self.fork_start(now, id, first_branches, out);
            return;
        }
        // The first attempt is written from the message as parsed on
        // receipt: the stored copy has the same bytes, no second parse
        // (unless the registrar rewrote the copy).
        self.forward_attempt_from(now, id, (!rewritten).then_some(msg), out);
    }

    /// Sends the transaction's request to its current target with a fresh
    /// branch and a fresh client transaction.
    pub(super) fn forward_attempt(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        self.forward_attempt_from(now, id, None, out);
    }

    /// [`Self::forward_attempt`] with the request already parsed (`received`:
    /// the message whose bytes the transaction stored), or `None` to parse
    /// the stored copy.
    fn forward_attempt_from(
        &mut self,
        now: Instant,
        id: TxnId,
        received: Option<&Message<'_>>,
        out: &mut Outbox,
    ) {
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let mut fwd = std::mem::take(&mut txn.forwarded);
        fwd.clear();
        let attempt = txn.attempt;
        let mut ok = self.write_forward(id, attempt, received, &mut fwd);
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        // RFC 3261 §18.1.1: too large for UDP goes over TCP to the same
        // address and port (the Via then says TCP: written again).
        if ok
            && self.cfg.udp_mtu > 0
            && fwd.len() > self.cfg.udp_mtu
            && txn.target.socket == SOCK_PRIVATE
            && txn.mtu == MtuSwitch::No
            && txn.fork.is_none()
        {
            txn.target.socket = SOCK_TCP_OUT;
            txn.mtu = MtuSwitch::ToTcp;
            bump(&self.stats.udp_mtu_switches);
            fwd.clear();
            ok = self.write_forward(id, attempt, received, &mut fwd);
        }
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        txn.forwarded = fwd;
        if !ok {
            return;
        }
        out.send(txn.target.socket, txn.target.addr, &txn.forwarded);
        bump(&self.stats.tx_datagrams);
        let reliable = stream_out(txn.target.socket);
        txn.client = Some(ClientTx::new(txn.method, now, &self.cfg.timers, reliable));
        txn.sent_at = now;
        self.reschedule(id);
    }

    /// Writes the request of transaction `id` as forwarded in `attempt`.
    /// Deterministic: the same attempt always yields the same bytes, so an
    /// abandoned attempt's request can be rebuilt to ACK its late final.
    /// `received`: the request already parsed (same bytes as the stored copy).
    pub(super) fn write_forward(
        &self,
        id: TxnId,
        attempt: u8,
        received: Option<&Message<'_>>,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(txn) = self.txns.get(id) else {
            return false;
        };
        match received {
            Some(req) => self.write_forward_of(txn, id, attempt, req, out),
            None => match parse(&txn.request) {
                Ok(req) => self.write_forward_of(txn, id, attempt, &req, out),
                Err(_) => false,
            },
        }
    }

    fn write_forward_of(
        &self,
        txn: &ProxyTxn,
        id: TxnId,
        attempt: u8,
        req: &Message<'_>,
        out: &mut Vec<u8>,
    ) -> bool {
        let branch = self.minter.seal(&Branch {
            worker: self.index as u8,
            slot: id.slot(),
            generation: id.generation(),
            attempt,
            epoch: self.minter.epoch(),
        });
        let received_ip = txn.received.map(|(ip, _)| ip_bytes(ip));
        let (socket, tls) = Worker::leg_socket(txn, attempt);
        // One entry, or two when the transport changes (rr.rs); a caller on
        // a TCP or TLS connection: in-dialog requests towards it come back
        // over that connection (flow token), not to its Contact.
        let rr = if txn.record_route {
            let up = Leg::of(txn.upstream_socket, txn.upstream_tls);
            let tag = req.from().ok().and_then(|f| f.tag).unwrap_or_default();
            self.record_route.write(
                &self.minter,
                up,
                Leg::of(socket, tls),
                up.stream().then_some((txn.upstream, tag)),
            )
        } else {
            SmallVec::new()
        };
        let rr_values: SmallVec<[&[u8]; 2]> = rr.iter().map(|e| e.as_slice()).collect();
        let edits = RequestEdits {
            via: NewVia {
                host: self.cfg.advertise.as_bytes(),
                port: self.private_port(),
                tcp: socket == SOCK_TCP_OUT || socket == SOCK_TCP,
                tls: socket == SOCK_TLS_OUT || (socket == SOCK_TCP && tls),
                branch: &branch,
            },
            request_uri: if txn.strict_route {
                route::last_route_uri(req)
            } else {
                Worker::fork_contact(txn, attempt)
            },
            pop_routes: txn.pop_routes,
            drop_last_route: txn.strict_route,
            push_route: Worker::fork_path(txn, attempt),
            record_route: &rr_values,
            received: match (&received_ip, txn.received) {
                (Some(ip), Some((_, port))) => Some((ip.as_slice(), port)),
                _ => None,
            },
            body: match txn.media {
                MediaLeg::Anchored { .. } if !txn.media_sdp.is_empty() => {
                    Some(txn.media_sdp.as_slice())
                }
                _ => None,
            },
        };
        build::forward_request(req, &edits, out).is_ok()
    }

    /// Relays an end-to-end ACK (or any request we keep no state for) along
    /// its route set, under the same policy as every other request.
    pub(super) fn relay_stateless(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        out: &mut Outbox,
    ) {
        let via = &info.common.via;
        let decision = self.decide(now, msg, info, Method::Ack, src);
        let (dst, tcp, tls, pop_routes, strict) = match decision {
            Decision::Relay {
                to,
                tcp,
                tls,
                pop_routes,
                strict,
            } => (to, tcp, tls, pop_routes, strict),
            Decision::Handoff(w) => {
                bump(&self.stats.handoffs);
                out.handoff(w, socket | HANDED_OVER, src, msg.buf());
                return;
            }
            Decision::Resolve => {
                self.park(now, socket, src, msg, out);
                return;
            }
            // An ACK is never answered: what has nowhere to go is dropped.
            _ => {
                bump(&self.stats.unmatched_acks);
                return;
            }
        };
        // A stateless relay derives its branch from the incoming one so a
        // retransmitted ACK gets the same branch (RFC 3261 §16.11).
        let branch = stateless_branch(via.branch.unwrap_or(b""), msg.call_id().unwrap_or(b""));
        let received = annotate_received(via, src);
        let received_ip = received.map(|(ip, _)| ip_bytes(ip));
        let edits = RequestEdits {
            via: NewVia {
                host: self.cfg.advertise.as_bytes(),
                port: self.private_port(),
                tcp,
                tls,
                branch: &branch,
            },
            request_uri: if strict {
                route::last_route_uri(msg)
            } else {
                None
            },
            pop_routes,
            drop_last_route: strict,
            push_route: None,
            record_route: &[],
            received: match (&received_ip, received) {
                (Some(ip), Some((_, port))) => Some((ip.as_slice(), port)),
                _ => None,
            },
            body: None,
        };
        self.scratch.clear();
        if build::forward_request(msg, &edits, &mut self.scratch).is_ok() {
            out.send(relay_socket(tcp, tls), dst, &self.scratch);
            bump(&self.stats.tx_datagrams);
            bump(&self.stats.stateless_forwards);
        }
    }
}
