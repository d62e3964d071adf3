//! Dialogs: created by a 2xx, refreshed by in-dialog traffic, ended by BYE
//! or expiry; call events.

use super::*;

impl Worker {
    /// The dialog a request or response belongs to (Call-ID and both tags),
    /// with its Call-ID and From tag; `None` when a header is missing.
    pub(super) fn dialog_key<'m>(
        &self,
        msg: &Message<'m>,
    ) -> Option<(DialogKey, &'m [u8], &'m [u8])> {
        let (Ok(call_id), Ok(from), Ok(to)) = (msg.call_id(), msg.from(), msg.to()) else {
            return None;
        };
        let key = DialogKey::new(
            &self.hasher,
            call_id,
            from.tag.unwrap_or(b""),
            to.tag.unwrap_or(b""),
        );
        Some((key, call_id, from.tag.unwrap_or(b"")))
    }

    /// [`Self::dialog_key`] of a request from what validation parsed: From
    /// and To are not parsed a second time (~2 000 instructions a BYE).
    pub(super) fn dialog_key_of(&self, info: &DialogInfo<'_>) -> DialogKey {
        DialogKey::new(
            &self.hasher,
            info.call_id,
            info.from.tag.unwrap_or(b""),
            info.to.tag.unwrap_or(b""),
        )
    }

    /// Records the dialog a 2xx creates, with the current target's
    /// destination or `attempt`'s (an abandoned attempt that answered).
    /// True when the 2xx answers the call (also when the dialog table is
    /// full); false for a retransmitted 2xx, whose dialog exists.
    pub(super) fn dialog_started(
        &mut self,
        now: Instant,
        id: TxnId,
        resp: &Message<'_>,
        attempt: Option<Target>,
    ) -> bool {
        // Validation guarantees Call-ID, From and To in what reaches here.
        let Some((key, call_id, from_tag)) = self.dialog_key(resp) else {
            return true;
        };
        if self.dialogs.find(&key).is_some() {
            return false; // a retransmitted 2xx
        }
        let Some(txn) = self.txns.get_mut(id) else {
            return false;
        };
        let (dest, addr) = match attempt {
            // The abandoned attempt's slot went to the current target at
            // failover: its dialog takes a slot of its own.
            Some(t) => {
                if let Some(d) = &t.dest {
                    d.call_started();
                }
                (t.dest, t.addr)
            }
            None => {
                // The INVITE's call slot passes to the dialog.
                let dest = txn.target.dest.clone();
                if !std::mem::take(&mut txn.holds_call) {
                    if let Some(d) = &dest {
                        d.call_started();
                    }
                }
                (dest, txn.target.addr)
            }
        };
        let session_expires = session_expires(resp);
        let media = self
            .txns
            .get(id)
            .and_then(|t| t.media.engine())
            .and_then(|e| DialogMedia::new(e, call_id, from_tag));
        let data = DialogData {
            dest: dest.clone(),
            addr,
            call_id: self.events.as_ref().map(|_| events::text(call_id)),
            media,
            session_expires,
        };
        match self.dialogs.insert(key, DialogState::Confirmed, data, now) {
            Ok(d) => {
                bump(&self.stats.dialogs_created);
                if let Some(at) = self.session_deadline(now, session_expires) {
                    self.dialogs.set_expiry(d, at);
                }
            }
            Err(_) => {
                if let Some(d) = &dest {
                    d.call_ended();
                }
                bump(&self.stats.dialogs_full);
            }
        }
        true
    }

    /// In-dialog traffic keeps a dialog alive: its expiry moves to
    /// `dialog_timeout` (or its session interval) from now.
    pub(super) fn dialog_refreshed(&mut self, now: Instant, info: &DialogInfo<'_>) {
        let key = self.dialog_key_of(info);
        let Some(id) = self.dialogs.find(&key) else {
            return;
        };
        let se = self.dialogs.get(id).map_or(0, |d| d.data.session_expires);
        match self.session_deadline(now, se) {
            Some(at) => {
                self.dialogs.set_expiry(id, at);
            }
            None => {
                self.dialogs.touch(id, now);
            }
        }
    }

    /// When a dialog with session interval `se` (RFC 4028) expires if not
    /// refreshed: the interval plus 32 s of grace for the refresh to arrive,
    /// never later than `dialog_timeout`; `None` without an interval.
    pub(super) fn session_deadline(&self, now: Instant, se: u32) -> Option<Instant> {
        (se > 0).then(|| {
            let interval = std::time::Duration::from_secs(u64::from(se) + 32);
            now + interval.min(self.cfg.dialog_timeout)
        })
    }

    pub(super) fn dialog_ended(&mut self, now: Instant, info: &DialogInfo<'_>, out: &mut Outbox) {
        let key = self.dialog_key_of(info);
        let Some(id) = self.dialogs.find(&key) else {
            return;
        };
        if let Some(d) = self.dialogs.remove(id) {
            self.emit_end(now, &d, false);
            if let Some(dest) = d.data.dest {
                dest.call_ended();
            }
            if let Some(m) = &d.data.media {
                self.delete_dialog_media(now, m, out);
            }
            bump(&self.stats.dialogs_ended);
        }
    }

    pub(super) fn emit_end(
        &self,
        now: Instant,
        d: &crate::dialog::Dialog<DialogData>,
        timeout: bool,
    ) {
        let (Some(sink), Some(call_id)) = (&self.events, &d.data.call_id) else {
            return;
        };
        sink.push(CallEvent::End {
            at: now,
            call_id: call_id.clone(),
            dest: d.data.dest.is_some().then_some(d.data.addr),
            duration: now.saturating_duration_since(d.created()),
            timeout,
        });
    }

    /// A call failed with sipvane's own reply to `req` (which carries the
    /// local To-tag and the code's standard phrase).
    pub(super) fn emit_failed(
        &self,
        now: Instant,
        req: &Message<'_>,
        code: u16,
        dest: Option<SocketAddr>,
    ) {
        if let Some(sink) = &self.events {
            sink.push(CallEvent::Failed {
                at: now,
                call_id: events::text(req.call_id().unwrap_or(b"")),
                code,
                dest,
                reply: events::Reply {
                    from_tag: events::text(req.from().ok().and_then(|f| f.tag).unwrap_or(b"")),
                    to_tag: events::text(&local_tag(&self.minter, req)),
                    reason: events::text(build::reason_phrase(code)),
                },
                cancelled: false,
            });
        }
    }

    /// An in-dialog request that came over a connection of this worker
    /// for a dialog another worker holds (its Record-Route names that
    /// worker: a peer that opened a new connection to sipvane's TCP or TLS
    /// port, as RFC 3263 lets it). It is relayed from here (its answers
    /// leave on the connection), and a copy goes to the dialog's worker,
    /// which only ends the dialog (BYE) or refreshes it: its call counts,
    /// media session and timeout live there.
    pub(super) fn note_dialog_owner(&self, src: SocketAddr, msg: &Message<'_>, out: &mut Outbox) {
        let mut entries = msg.values(HeaderName::Route);
        let Some(first) = entries.next().and_then(route::route_uri) else {
            return;
        };
        let second = entries.next().and_then(route::route_uri);
        let own = route::own_entries(&self.cfg, Some(&first), second.as_ref());
        if let Some(w) = own.worker.filter(|&w| w != self.index && w < self.workers) {
            bump(&self.stats.handoffs);
            out.handoff(w, SOCK_DIALOG_NOTE | HANDED_OVER, src, msg.buf());
        }
    }

    /// The copy [`Worker::note_dialog_owner`] sent: the dialog's bookkeeping
    /// only, nothing is relayed or answered.
    pub(super) fn dialog_note(&mut self, now: Instant, data: &[u8], out: &mut Outbox) {
        let Ok(msg) = parse(data) else {
            return;
        };
        let Ok(info) = msg.validated_request() else {
            return;
        };
        if info.common.to.tag.is_none() {
            return;
        }
        match msg.method() {
            Some(Method::Bye) => self.dialog_ended(now, &info.common, out),
            Some(Method::Ack) | None => {}
            Some(_) => self.dialog_refreshed(now, &info.common),
        }
    }
}
