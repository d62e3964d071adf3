//! The worker's side of media anchoring: `offer` for an INVITE's SDP,
//! `answer` for a response's, `delete` when a call or dialog ends.

use super::*;

impl Worker {
    /// Sends the `offer` for a new INVITE. Returns true when the INVITE is
    /// now held (offer in flight) or was answered by the failure policy.
    pub(super) fn start_offer(
        &mut self,
        now: Instant,
        id: TxnId,
        msg: &Message<'_>,
        pinned: Option<usize>,
        out: &mut Outbox,
    ) -> bool {
        let Some(media) = self.media.as_mut() else {
            return false;
        };
        let call_id = msg.call_id().unwrap_or(b"");
        let from_tag = msg.from().ok().and_then(|f| f.tag).unwrap_or(b"");
        match media.offer(now, id, pinned, call_id, from_tag, msg.body(), out) {
            Ok(engine) => {
                if let Some(txn) = self.txns.get_mut(id) {
                    txn.media = MediaLeg::Offering {
                        engine: engine as u8,
                    };
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "rtpengine offer not sent");
                self.media_unavailable(now, id, out)
            }
        }
    }

    /// No engine took the offer: the configured policy decides. Returns true
    /// when the call was rejected, false when it should be forwarded as is.
    pub(super) fn media_unavailable(&mut self, now: Instant, id: TxnId, out: &mut Outbox) -> bool {
        let Some(media) = self.media.as_ref() else {
            return false;
        };
        media.count_policy();
        let policy = media.policy();
        if let Some(txn) = self.txns.get_mut(id) {
            txn.media = MediaLeg::Off;
        }
        match policy {
            MediaPolicy::Reject => {
                self.reply_final(now, id, 503, Some(b"Media relay unavailable"), out);
                self.reschedule(id);
                true
            }
            MediaPolicy::Passthrough => false,
        }
    }

    /// An ng request of transaction `done.txn` finished.
    pub(super) fn media_done(&mut self, now: Instant, done: Done<'_>, out: &mut Outbox) {
        let id = done.txn;
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        match (done.command, txn.media) {
            (crate::rtpengine::Command::Offer, MediaLeg::Offering { engine }) => {
                match done.outcome {
                    Outcome::Sdp(sdp) => {
                        // The engine that answered may be a failover target.
                        let engine = u8::try_from(done.engine).unwrap_or(engine);
                        txn.media = MediaLeg::Anchored {
                            engine,
                            answering: false,
                        };
                        let mut buf = self.pool.get();
                        buf.extend_from_slice(sdp);
                        let old = std::mem::replace(&mut txn.media_sdp, buf);
                        self.pool.put(old);
                        self.forward_held(now, id, out);
                    }
                    Outcome::Failed => {
                        if !self.media_unavailable(now, id, out) {
                            self.forward_held(now, id, out);
                        }
                    }
                }
            }
            (
                crate::rtpengine::Command::Answer,
                MediaLeg::Anchored {
                    engine,
                    answering: true,
                },
            ) => {
                txn.media = MediaLeg::Anchored {
                    engine,
                    answering: false,
                };
                let held = std::mem::take(&mut txn.held);
                let body = match done.outcome {
                    Outcome::Sdp(sdp) => Some(sdp),
                    // The callee's SDP goes through untouched rather than
                    // losing an answered call.
                    Outcome::Failed => None,
                };
                if let Ok(msg) = parse(&held) {
                    let code = msg.status().unwrap_or(0);
                    self.relay_response_body(now, id, &msg, code, body, out);
                }
                self.pool.put(held);
                // A response that arrived meanwhile gets its own answer.
                let Some(txn) = self.txns.get_mut(id) else {
                    return;
                };
                let queued = std::mem::take(&mut txn.queued);
                if !queued.is_empty() {
                    if let Ok(msg) = parse(&queued) {
                        let code = msg.status().unwrap_or(0);
                        self.relay_response(now, id, &msg, code, out);
                    }
                }
                self.pool.put(queued);
            }
            _ => {}
        }
        self.reschedule(id);
    }

    /// Sends `answer` for a response's SDP and holds the response; false
    /// when it must be relayed as it is.
    pub(super) fn start_answer(
        &mut self,
        now: Instant,
        id: TxnId,
        engine: usize,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) -> bool {
        let Some(media) = self.media.as_mut() else {
            return false;
        };
        let (Ok(call_id), Ok(from), Ok(to)) = (msg.call_id(), msg.from(), msg.to()) else {
            return false;
        };
        let (Some(from_tag), Some(to_tag)) = (from.tag, to.tag) else {
            return false;
        };
        if media
            .answer(now, id, engine, call_id, from_tag, to_tag, msg.body(), out)
            .is_err()
        {
            return false;
        }
        let mut held = self.pool.get();
        held.extend_from_slice(msg.buf());
        let Some(txn) = self.txns.get_mut(id) else {
            self.pool.put(held);
            return false;
        };
        let old = std::mem::replace(&mut txn.held, held);
        self.pool.put(old);
        if let MediaLeg::Anchored { engine, .. } = txn.media {
            txn.media = MediaLeg::Anchored {
                engine,
                answering: true,
            };
        }
        true
    }

    /// The call of transaction `id` failed or was cancelled: release its
    /// engine session, if it may have one.
    pub(super) fn end_txn_media(&mut self, now: Instant, id: TxnId, out: &mut Outbox) {
        let Some(media) = self.media.as_mut() else {
            return;
        };
        let Some(txn) = self.txns.get_mut(id) else {
            return;
        };
        let Some(engine) = txn.media.engine() else {
            return;
        };
        txn.media = MediaLeg::Off;
        media.cancel(id);
        if let Ok(req) = parse(&txn.request) {
            if req.to().is_ok_and(|t| t.tag.is_some()) {
                // A failed re-INVITE leaves the call and its session alone.
                return;
            }
            let call_id = req.call_id().unwrap_or(b"");
            let from_tag = req.from().ok().and_then(|f| f.tag).unwrap_or(b"");
            media.delete(now, engine, call_id, from_tag, out);
        }
    }

    /// The engine holding the session of the dialog `msg` belongs to.
    pub(super) fn dialog_media_engine(&self, info: &DialogInfo<'_>) -> Option<usize> {
        self.media.as_ref()?;
        let key = self.dialog_key_of(info);
        let d = self.dialogs.get(self.dialogs.find(&key)?)?;
        d.data.media.as_ref().map(|m| usize::from(m.engine))
    }

    pub(super) fn delete_dialog_media(&mut self, now: Instant, m: &DialogMedia, out: &mut Outbox) {
        if let Some(media) = self.media.as_mut() {
            media.delete(
                now,
                usize::from(m.engine),
                m.call_id(),
                m.offerer_tag(),
                out,
            );
        }
    }
}
