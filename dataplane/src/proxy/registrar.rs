//! The registrar on a worker: REGISTER answered here (digest check, then
//! the bindings' updates queued for the control thread), and the location
//! lookup for requests to registered users. The decisions are in
//! [`crate::registrar`]; this is the glue to sockets and replies.

use super::*;
use crate::registrar::auth::{self, AuthOutcome, Context};
use crate::registrar::{self as reg, register};
use crate::sip::{NameAddr, Uri};

/// An answer the registrar sent without a transaction (a challenge, a 403,
/// the answer to a REGISTER), kept for the request's retransmissions.
pub(super) struct StatelessAnswer {
    socket: SocketId,
    dst: SocketAddr,
    response: Box<[u8]>,
}

/// What [`Worker::caller_allowed`] decided about an initial request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    /// Answered here (407, 403, 400 or handed to another worker): stop.
    Answered,
    /// Not one of the registrar's users, or exempt: go on as received.
    Allowed,
    /// Proved to be a user of `domains[domain]`: go on, without the
    /// credentials it proved it with.
    Authenticated { domain: usize },
}

impl Worker {
    /// Sends again the answer a retransmitted request got (true), when it
    /// was one the registrar made without a transaction: a challenge, or
    /// the answer to a REGISTER. A second challenge would carry another
    /// nonce (a client that already answered the first sees an unexpected
    /// 401 — SIPp fails the call), and a REGISTER whose nonce count the
    /// original used up would be challenged instead of answered.
    pub(super) fn repeat_answer(&mut self, now: Instant, key: &TxnKey, out: &mut Outbox) -> bool {
        let Some(a) = self.answered.get(key, now) else {
            return false;
        };
        // To where the first answer went (its Via), as a transaction would.
        out.send(a.socket, a.dst, &a.response);
        bump(&self.stats.retransmissions_absorbed);
        bump(&self.stats.tx_datagrams);
        true
    }

    /// Keeps the answer just built in `scratch` (cleared before the request
    /// was handled) for the request's retransmissions; nothing on TCP,
    /// where there are none.
    fn keep_answer(&mut self, now: Instant, key: TxnKey, socket: SocketId, src: SocketAddr) {
        if socket == SOCK_TCP || self.from_stream || self.scratch.is_empty() {
            return;
        }
        let answer = StatelessAnswer {
            socket,
            dst: src,
            response: self.scratch.as_slice().into(),
        };
        self.answered.insert(key, answer, now);
    }

    /// Answers a REGISTER for one of the registrar's domains; `key`: its
    /// server transaction key (its retransmissions get the same answer).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_register(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        key: TxnKey,
        out: &mut Outbox,
    ) {
        if self.repeat_answer(now, &key, out) {
            return;
        }
        self.scratch.clear();
        self.answer_register(now, socket, src, msg, info, out);
        self.keep_answer(now, key, socket, src);
    }

    fn answer_register(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        out: &mut Outbox,
    ) {
        let Some(registrar) = self.cfg.registrar.clone() else {
            return;
        };
        let Ok(to) = Uri::parse(info.common.to.uri) else {
            self.reply(socket, src, msg, 400, None, Some(b"Bad To URI"), out);
            return;
        };
        let local = self.cfg.is_local_host(to.host);
        let Some(domain) = registrar.config.domain_of(to.host, local) else {
            reg::bump(&registrar.stats.registers_refused);
            self.reply(
                socket,
                src,
                msg,
                403,
                None,
                Some(b"Domain not served here"),
                out,
            );
            return;
        };
        let cx = Context {
            realm: domain,
            worker: self.index,
            workers: self.workers,
            now,
        };
        let to_user = to.user.unwrap_or(b"");
        let matches_to = match auth::check(
            &registrar,
            &mut self.nonce_counts,
            msg,
            HeaderName::Authorization,
            &cx,
        ) {
            AuthOutcome::Ok { user } => user == to_user,
            outcome => {
                self.auth_refused(now, &registrar, outcome, domain, 401, socket, src, msg, out);
                return;
            }
        };
        if matches_to {
            self.register_authenticated(now, &registrar, domain, to_user, socket, src, msg, out);
        } else {
            reg::bump(&registrar.stats.auth_failures);
            let w = b"Authentication user differs from the To user";
            self.reply(socket, src, msg, 403, None, Some(w), out);
        }
    }

    /// The bindings' updates and the answer of a REGISTER whose credentials
    /// passed and name its To user.
    #[allow(clippy::too_many_arguments)]
    fn register_authenticated(
        &mut self,
        now: Instant,
        registrar: &reg::Registrar,
        domain: &str,
        to_user: &[u8],
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        let aor = reg::aor_key(to_user, domain);
        let current = registrar.location.lookup(&aor);
        let now_unix = registrar.config.unix(now);
        let trusted = self.cfg.is_trusted_ip(src.ip());
        // Over a connection this worker owns: calls to the phone go over it.
        let stream = (socket == SOCK_TCP && self.from_stream).then(|| reg::Stream {
            tls: self.from_tls,
            worker: u16::try_from(self.index).ok(),
        });
        let result = register::process(
            &registrar.config,
            msg,
            &aor,
            current.as_deref().unwrap_or(&[]),
            (src, trusted),
            stream,
            now_unix,
        );
        let accepted = match result {
            Ok(a) => a,
            Err(r) => {
                reg::bump(&registrar.stats.registers_refused);
                let min = r.min_expires.map(|m| m.to_string());
                let extra: Vec<(&[u8], &[u8])> = min
                    .iter()
                    .map(|m| (&b"Min-Expires"[..], m.as_bytes()))
                    .collect();
                self.reply_with(
                    socket,
                    src,
                    msg,
                    r.code,
                    Some(r.warning.as_bytes()),
                    &extra,
                    out,
                );
                return;
            }
        };
        if !registrar.submit(accepted.updates) {
            self.reply_unavailable(socket, src, msg, b"Registrar busy", out);
            return;
        }
        reg::bump(&registrar.stats.registers_ok);
        let contacts = register::contact_values(&accepted.bindings, now_unix);
        // RFC 3327 §5.3: the Path the registrar stored, for a client that
        // understands it (Kamailio's default path_mode 2: not listed, and
        // the REGISTER still accepted, for one that does not).
        let path = reg::path::supported(msg)
            .then(|| reg::path::of_register(msg).ok())
            .flatten()
            .filter(|p| !p.is_empty());
        let extra: Vec<(&[u8], &[u8])> = contacts
            .iter()
            .map(|c| (&b"Contact"[..], c.as_slice()))
            .chain(path.iter().map(|p| (&b"Path"[..], p.as_bytes())))
            .collect();
        self.reply_with(socket, src, msg, 200, None, &extra, out);
    }

    /// Answers a request whose credentials did not pass: a challenge
    /// (`code` 401 or 407; again after a wrong password, as Kamailio), 400 or
    /// a handoff to the nonce's worker.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn auth_refused(
        &mut self,
        now: Instant,
        registrar: &reg::Registrar,
        outcome: AuthOutcome<'_>,
        realm: &str,
        code: u16,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        let (stale, warning) = match outcome {
            AuthOutcome::Ok { .. } => return,
            AuthOutcome::Challenge { stale } => (stale, None),
            AuthOutcome::WrongCredentials(w) => {
                reg::bump(&registrar.stats.auth_failures);
                (false, Some(w.as_bytes()))
            }
            AuthOutcome::Malformed(w) => {
                reg::bump(&registrar.stats.auth_failures);
                self.reply(socket, src, msg, 400, None, Some(w.as_bytes()), out);
                return;
            }
            AuthOutcome::Handoff(w) => {
                bump(&self.stats.handoffs);
                out.handoff(w, socket | HANDED_OVER, src, msg.buf());
                return;
            }
        };
        reg::bump(&registrar.stats.challenges);
        let values = auth::challenges(
            registrar,
            &mut self.nonce_counts,
            realm,
            self.index,
            stale,
            now,
        );
        let name: &[u8] = if code == 407 {
            b"Proxy-Authenticate"
        } else {
            b"WWW-Authenticate"
        };
        let extra: Vec<(&[u8], &[u8])> = values.iter().map(|v| (name, v.as_slice())).collect();
        self.reply_with(socket, src, msg, code, warning, &extra, out);
    }

    /// Whether an initial request may go on: callers that claim to be one of
    /// the registrar's users (From in a registrar domain) must prove it with
    /// `Proxy-Authorization` (407 otherwise) and may only call as
    /// themselves (From user = digest user, 403 otherwise). Trusted sources
    /// and dispatcher destinations are exempt.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn caller_allowed(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        key: TxnKey,
        out: &mut Outbox,
    ) -> Caller {
        // Retransmissions of a request answered here (407, 403): the same
        // answer. An allowed request has a transaction that absorbs them.
        if self.repeat_answer(now, &key, out) {
            return Caller::Answered;
        }
        self.scratch.clear();
        let caller = self.check_caller(now, socket, src, msg, info, out);
        if caller == Caller::Answered {
            self.keep_answer(now, key, socket, src);
        }
        caller
    }

    fn check_caller(
        &mut self,
        now: Instant,
        socket: SocketId,
        src: SocketAddr,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        out: &mut Outbox,
    ) -> Caller {
        let Some(registrar) = self.cfg.registrar.clone() else {
            return Caller::Allowed;
        };
        if !registrar.config.auth_calls {
            return Caller::Allowed;
        }
        let Ok(from) = Uri::parse(info.common.from.uri) else {
            return Caller::Allowed;
        };
        let local = self.cfg.is_local_host(from.host);
        let Some(domain) = registrar.config.domain_index(from.host, local) else {
            return Caller::Allowed;
        };
        if self.cfg.is_trusted_ip(src.ip()) || self.table.load().has_addr(src) {
            return Caller::Allowed;
        }
        let realm = registrar.config.domains[domain].as_str();
        let cx = Context {
            realm,
            worker: self.index,
            workers: self.workers,
            now,
        };
        let header = HeaderName::ProxyAuthorization;
        match auth::check(&registrar, &mut self.nonce_counts, msg, header, &cx) {
            AuthOutcome::Ok { user } if Some(user) == from.user => Caller::Authenticated { domain },
            AuthOutcome::Ok { .. } => {
                reg::bump(&registrar.stats.auth_failures);
                let w = b"From user differs from the authenticated user";
                self.reply(socket, src, msg, 403, None, Some(w), out);
                Caller::Answered
            }
            outcome => {
                self.auth_refused(now, &registrar, outcome, realm, 407, socket, src, msg, out);
                Caller::Answered
            }
        }
    }

    /// The Contact URI a dialog-forming request from one of the
    /// registrar's users behind a NAT should carry: its own with the host
    /// and port it was sent from (Kamailio's `fix_nated_contact`), so
    /// requests inside the dialog reach it. `None`: leave it.
    pub(super) fn nated_contact(
        &self,
        msg: &Message<'_>,
        info: &RequestInfo<'_>,
        method: Method,
        src: SocketAddr,
    ) -> Option<Vec<u8>> {
        let registrar = self.cfg.registrar.as_ref()?;
        let dialog_forming = matches!(method, Method::Invite | Method::Subscribe);
        if !dialog_forming || info.common.to.tag.is_some() {
            return None;
        }
        let from = Uri::parse(info.common.from.uri).ok()?;
        let local = self.cfg.is_local_host(from.host);
        registrar.config.domain_of(from.host, local)?;
        if self.cfg.is_trusted_ip(src.ip()) || self.table.load().has_addr(src) {
            return None;
        }
        let contact = NameAddr::parse(msg.values(HeaderName::Contact).next()?).ok()?;
        let uri = Uri::parse(contact.uri).ok()?;
        reg::register::nated_uri(&uri, src)
    }

    /// The live bindings of the registered user a request is for, best
    /// first (highest `q`, then the most recent), those with an address to
    /// send to, at most `max_branches`. Empty: not registered (404). Not
    /// counted: see [`Worker::count_lookup`].
    pub(super) fn locate(&self, now: Instant, info: &RequestInfo<'_>) -> Vec<BindingTarget> {
        let Some(registrar) = self.cfg.registrar.as_ref() else {
            return Vec::new();
        };
        let ruri = &info.ruri;
        let local = self.cfg.is_local_host(ruri.host);
        let Some(domain) = registrar.config.domain_of(ruri.host, local) else {
            return Vec::new();
        };
        let aor = reg::aor_key(ruri.user.unwrap_or(b""), domain);
        let found: Vec<BindingTarget> = registrar
            .live_bindings(&aor, now)
            .into_iter()
            .filter_map(|b| {
                Some(BindingTarget {
                    addr: b.target()?,
                    nated: b.nated(),
                    socket: if b.stream.is_some() {
                        SOCK_TCP
                    } else {
                        SOCK_PRIVATE
                    },
                    tls: b.stream.is_some_and(|s| s.tls),
                    owner: b.stream.and_then(|s| s.worker).map(usize::from),
                    contact: b.contact,
                    path: b.path,
                    q: b.q,
                })
            })
            .take(registrar.config.max_branches)
            .collect();
        found
    }

    /// Counts a location lookup (once per request, on the worker that
    /// forks it).
    pub(super) fn count_lookup(&self, found: bool) {
        if let Some(registrar) = self.cfg.registrar.as_ref() {
            reg::bump(if found {
                &registrar.stats.lookups_found
            } else {
                &registrar.stats.lookups_missing
            });
        }
    }

    /// The worker a request to these bindings must be forked on: the owner
    /// of the best binding's connection, when that is another worker and
    /// the request may still move. A request from one of this worker's
    /// connections stays (its answers leave on it); one already handed
    /// over moves only if it was steered here by its Call-ID (it then
    /// arrives at the owner as from the private port, never to move again).
    pub(super) fn binding_owner(&self, socket: SocketId, found: &[BindingTarget]) -> Option<usize> {
        let owner = found.first()?.owner?;
        let may_move = !self.from_stream && (!self.handed_over || socket == SOCK_PUBLIC);
        (owner != self.index && owner < self.workers && may_move).then_some(owner)
    }

    /// A response of a NATed registered callee with its Contact naming the
    /// address it really is at (`to`), written into `fixed`; `None` when
    /// its Contact already does (or it has none).
    pub(super) fn nated_response(msg: &Message<'_>, to: SocketAddr, fixed: &mut Vec<u8>) -> bool {
        let Some(uri) = msg
            .values(HeaderName::Contact)
            .next()
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|na| Uri::parse(na.uri).ok())
        else {
            return false;
        };
        let Some(new) = reg::register::nated_uri(&uri, to) else {
            return false;
        };
        let rw = build::Rewrite {
            contact: Some(&new),
            ..build::Rewrite::default()
        };
        build::rewrite_request(msg, &rw, fixed);
        true
    }
}
