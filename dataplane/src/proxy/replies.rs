//! Stateless replies sipvane makes itself (with a keyed To-tag).

use super::*;

impl Worker {
    /// A stateless local reply to `req`, sent back where it came from.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reply(
        &mut self,
        socket: SocketId,
        src: SocketAddr,
        req: &Message<'_>,
        code: u16,
        retry_after: Option<u32>,
        warning: Option<&[u8]>,
        out: &mut Outbox,
    ) {
        self.reply_full(socket, src, req, code, retry_after, warning, &[], out);
    }

    /// A stateless local reply with extra header lines (challenges, the
    /// Contact list of a REGISTER's 200, Min-Expires).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reply_with(
        &mut self,
        socket: SocketId,
        src: SocketAddr,
        req: &Message<'_>,
        code: u16,
        warning: Option<&[u8]>,
        extra_headers: &[(&[u8], &[u8])],
        out: &mut Outbox,
    ) {
        self.reply_full(socket, src, req, code, None, warning, extra_headers, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn reply_full(
        &mut self,
        socket: SocketId,
        src: SocketAddr,
        req: &Message<'_>,
        code: u16,
        retry_after: Option<u32>,
        warning: Option<&[u8]>,
        extra_headers: &[(&[u8], &[u8])],
        out: &mut Outbox,
    ) {
        let tag = local_tag(&self.minter, req);
        let opts = ReplyOpts {
            to_tag: Some(&tag),
            retry_after,
            warning,
            extra_headers,
            server: Some(self.cfg.server_header.as_bytes()),
        };
        let oc = self.oc_for(self.offers_oc(req));
        self.scratch.clear();
        if build::reply(
            req,
            code,
            build::reason_phrase(code),
            &opts,
            &mut self.scratch,
        )
        .is_ok()
        {
            overload::stamp(&self.stats, oc, &mut self.scratch);
            out.send(socket, src, &self.scratch);
            bump(&self.stats.tx_datagrams);
            count_reply(&self.stats, code);
        } else {
            // Nothing was sent: the REGISTER path keeps no half answer.
            self.scratch.clear();
        }
    }

    /// `503` with `Retry-After: retry_after_s`: sipvane cannot take the
    /// request now (overload, no destination, full table), try again later.
    pub(super) fn reply_unavailable(
        &mut self,
        socket: SocketId,
        src: SocketAddr,
        req: &Message<'_>,
        warning: &[u8],
        out: &mut Outbox,
    ) {
        let retry = self.cfg.retry_after_s;
        self.reply(socket, src, req, 503, Some(retry), Some(warning), out);
    }

    pub(super) fn reply_options(
        &mut self,
        socket: SocketId,
        src: SocketAddr,
        req: &Message<'_>,
        out: &mut Outbox,
    ) {
        let extra: [(&[u8], &[u8]); 2] = [
            (b"Allow", b"INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, MESSAGE"),
            (b"Accept", b"application/sdp"),
        ];
        let tag = local_tag(&self.minter, req);
        let opts = ReplyOpts {
            to_tag: Some(&tag),
            server: Some(self.cfg.server_header.as_bytes()),
            extra_headers: &extra,
            ..ReplyOpts::default()
        };
        let oc = self.oc_for(self.offers_oc(req));
        self.scratch.clear();
        if build::reply(req, 200, b"OK", &opts, &mut self.scratch).is_ok() {
            overload::stamp(&self.stats, oc, &mut self.scratch);
            out.send(socket, src, &self.scratch);
            bump(&self.stats.tx_datagrams);
            count_reply(&self.stats, 200);
        }
    }
}
