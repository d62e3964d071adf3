//! Hop-by-hop ACK (for non-2xx finals) and CANCEL of a forwarded INVITE.

use super::*;

/// Parts shared by ACK and CANCEL: they reuse the INVITE's Request-URI, top
/// Via entry, Route set, From and Call-ID, with the INVITE's CSeq number.
fn invite_parts<'a>(invite: &Message<'a>) -> Result<(&'a [u8], &'a [u8], CSeq<'a>), BuildError> {
    let StartLine::Request { method, uri, .. } = *invite.start_line() else {
        return Err(BuildError::NotARequest);
    };
    if method != Method::Invite {
        return Err(BuildError::NotAnInvite);
    }
    let via = invite.header(HeaderName::Via).ok_or(BuildError::NoVia)?;
    let top = split_comma(via).next().ok_or(BuildError::NoVia)?;
    for name in [HeaderName::From, HeaderName::CallId] {
        if invite.header_entry(name).is_none() {
            return Err(ParseError::Missing(name).into());
        }
    }
    Ok((uri, top, invite.cseq()?))
}

/// An ACK or CANCEL derived from a forwarded INVITE.
struct HopRequest<'x> {
    method: &'x [u8],
    uri: &'x [u8],
    top_via: &'x [u8],
    seq: u32,
    /// The To header line to copy and the buffer it lives in.
    to: (&'x [u8], &'x Header<'x>),
    /// Max-Forwards line to copy; `None` writes 70.
    max_forwards: Option<&'x Header<'x>>,
}

fn put_hop_request(out: &mut Vec<u8>, invite: &Message, r: &HopRequest) {
    let buf = invite.buf();
    out.extend_from_slice(r.method);
    out.push(b' ');
    out.extend_from_slice(r.uri);
    out.extend_from_slice(b" SIP/2.0\r\n");
    put_header(out, b"Via", r.top_via);
    for h in invite
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::Route)
    {
        put_line(out, buf, h);
    }
    match r.max_forwards {
        Some(h) => put_line(out, buf, h),
        None => out.extend_from_slice(b"Max-Forwards: 70\r\n"),
    }
    if let Some(h) = invite.header_entry(HeaderName::From) {
        put_line(out, buf, h);
    }
    put_line(out, r.to.0, r.to.1);
    if let Some(h) = invite.header_entry(HeaderName::CallId) {
        put_line(out, buf, h);
    }
    out.extend_from_slice(b"CSeq: ");
    put_num(out, u64::from(r.seq), 1);
    out.push(b' ');
    out.extend_from_slice(r.method);
    out.extend_from_slice(CRLF);
    put_content_length(out, 0);
}

/// Writes the hop-by-hop ACK for a non-2xx final response to an INVITE this
/// proxy forwarded (RFC 3261 §17.1.1.3): the INVITE's Request-URI, its top
/// Via only, its Route set, From, Call-ID and CSeq number; To from the
/// response (it carries the tag).
pub fn ack_for(
    forwarded_invite: &Message,
    response: &Message,
    out: &mut Vec<u8>,
) -> Result<(), BuildError> {
    let (uri, top_via, cseq) = invite_parts(forwarded_invite)?;
    if response.is_request() {
        return Err(BuildError::NotAResponse);
    }
    let to = response
        .header_entry(HeaderName::To)
        .ok_or(ParseError::Missing(HeaderName::To))?;
    atomically(out, |out| {
        let r = HopRequest {
            method: b"ACK",
            uri,
            top_via,
            seq: cseq.seq,
            to: (response.buf(), to),
            max_forwards: forwarded_invite.header_entry(HeaderName::MaxForwards),
        };
        put_hop_request(out, forwarded_invite, &r);
        Ok(())
    })
}

/// Writes a CANCEL for an INVITE this proxy forwarded (RFC 3261 §9.1):
/// same Request-URI, top Via entry, Route set, From, To, Call-ID and CSeq
/// number, method CANCEL, `Max-Forwards: 70`.
pub fn cancel_for(forwarded_invite: &Message, out: &mut Vec<u8>) -> Result<(), BuildError> {
    let (uri, top_via, cseq) = invite_parts(forwarded_invite)?;
    let to = forwarded_invite
        .header_entry(HeaderName::To)
        .ok_or(ParseError::Missing(HeaderName::To))?;
    atomically(out, |out| {
        let r = HopRequest {
            method: b"CANCEL",
            uri,
            top_via,
            seq: cseq.seq,
            to: (forwarded_invite.buf(), to),
            max_forwards: None,
        };
        put_hop_request(out, forwarded_invite, &r);
        Ok(())
    })
}
