//! The SIP messages the generator and the responder write.
//!
//! Parsing is `dataplane::sip`; writing is here because a UA's messages
//! (a fresh INVITE, a dialog's ACK and BYE, a UAS answer with SDP and the
//! echoed Record-Route) are not the edits a proxy makes, which is all
//! `dataplane::sip::build` writes. Every writer appends to a reused buffer.

use std::io::Write;
use std::net::SocketAddr;

use dataplane::sip::{HeaderName, Message, NameAddr};

/// `host:port` as written in a URI or Via (IPv6 in brackets).
pub fn hostport(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

/// A call's identity: `sb<run>.<thread>.<slot>.<generation>` in Call-ID,
/// From-tag and branches, so a response names its call without a lookup
/// table. `run` differs between runs: a proxy still holding a transaction of
/// the previous run must not take a new INVITE for its retransmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRef {
    pub run: u32,
    pub thread: u32,
    pub slot: u32,
    pub generation: u32,
}

impl CallRef {
    pub fn parse(call_id: &[u8]) -> Option<CallRef> {
        let rest = call_id.strip_prefix(b"sb")?;
        let rest = rest.split(|&b| b == b'@').next()?;
        let mut it = rest.split(|&b| b == b'.');
        let mut num = || -> Option<u32> { std::str::from_utf8(it.next()?).ok()?.parse().ok() };
        let r = CallRef {
            run: num()?,
            thread: num()?,
            slot: num()?,
            generation: num()?,
        };
        Some(r)
    }
}

impl std::fmt::Display for CallRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sb{}.{}.{}.{}",
            self.run, self.thread, self.slot, self.generation
        )
    }
}

const SDP: &str = "v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

/// An initial INVITE with SDP. `user` is the Request-URI user part.
pub fn invite(out: &mut Vec<u8>, c: CallRef, local: &str, target: &str, user: &str) {
    let _ = write!(
        out,
        "INVITE sip:{user}@{target} SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};branch=z9hG4bK{c}.i;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:bench@{local}>;tag={c}\r\n\
To: <sip:{user}@{target}>\r\n\
Call-ID: {c}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:bench@{local}>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
}

/// The ACK for a non-2xx final response: same branch and Request-URI as the
/// INVITE, To from the response (RFC 3261 §17.1.1.3).
pub fn ack_non2xx(
    out: &mut Vec<u8>,
    c: CallRef,
    local: &str,
    target: &str,
    user: &str,
    resp: &Message,
) {
    let to = resp.header(HeaderName::To).unwrap_or_default();
    let _ = write!(
        out,
        "ACK sip:{user}@{target} SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};branch=z9hG4bK{c}.i;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:bench@{local}>;tag={c}\r\n\
To: "
    );
    out.extend_from_slice(to);
    let _ = write!(
        out,
        "\r\nCall-ID: {c}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
}

/// What a UAC keeps from the 2xx to send in-dialog requests: the remote
/// target (Contact), the route set (Record-Route reversed) and the To line.
#[derive(Debug, Default)]
pub struct Dialog {
    pub target: Vec<u8>,
    pub routes: Vec<u8>,
    pub to: Vec<u8>,
    /// Where in-dialog requests go: the first Route entry, else the remote
    /// target (RFC 3261 §12.2.1.1, loose routing); `None` when that URI has
    /// no literal IP (the caller then uses its configured target).
    pub next_hop: Option<SocketAddr>,
}

/// `sip:host[:port]` with an IP literal host → its address (default 5060).
fn uri_addr(uri: &[u8]) -> Option<SocketAddr> {
    let u = dataplane::sip::Uri::parse(uri).ok()?;
    let ip = dataplane::sip::parse_ip(u.host)?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

impl Dialog {
    /// Fills from a 2xx; `fallback_target` when it has no usable Contact.
    pub fn fill_from_2xx(&mut self, resp: &Message, fallback_target: &[u8]) {
        self.target.clear();
        self.routes.clear();
        self.to.clear();
        match resp
            .header(HeaderName::Contact)
            .and_then(|v| dataplane::sip::split_comma(v).next())
            .and_then(|v| NameAddr::parse(v).ok())
        {
            Some(na) => self.target.extend_from_slice(na.uri),
            None => self.target.extend_from_slice(fallback_target),
        }
        let rr: Vec<&[u8]> = resp.values(HeaderName::RecordRoute).collect();
        self.next_hop = match rr.last() {
            Some(first_route) => NameAddr::parse(first_route)
                .ok()
                .and_then(|na| uri_addr(na.uri)),
            None => uri_addr(&self.target),
        };
        for r in rr.iter().rev() {
            self.routes.extend_from_slice(b"Route: ");
            self.routes.extend_from_slice(r);
            self.routes.extend_from_slice(b"\r\n");
        }
        self.to
            .extend_from_slice(resp.header(HeaderName::To).unwrap_or_default());
    }

    /// An in-dialog request (ACK for the 2xx, BYE) on a new branch.
    pub fn request(&self, out: &mut Vec<u8>, method: &str, cseq: u32, c: CallRef, local: &str) {
        let _ = write!(out, "{method} ");
        out.extend_from_slice(&self.target);
        let _ = write!(
            out,
            " SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{c}.{cseq}{method};rport\r\n\
Max-Forwards: 70\r\n"
        );
        out.extend_from_slice(&self.routes);
        let _ = write!(out, "From: <sip:bench@{local}>;tag={c}\r\nTo: ");
        out.extend_from_slice(&self.to);
        let _ = write!(
            out,
            "\r\nCall-ID: {c}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        );
    }
}

/// A UAS response to `req`: every Via, the Record-Route set (echoed on
/// 18x/2xx so the UAC learns the route), From, To with `tag` added when it
/// has none, Call-ID, CSeq, Contact on 18x/2xx, SDP on 2xx to INVITE.
pub fn uas_response(
    out: &mut Vec<u8>,
    req: &Message,
    code: u16,
    tag: &[u8],
    contact: &str,
    with_sdp: bool,
) {
    let _ = write!(
        out,
        "SIP/2.0 {code} {}\r\n",
        String::from_utf8_lossy(dataplane::sip::build::reason_phrase(code))
    );
    let dialog_forming = (101..300).contains(&code);
    for h in req.headers() {
        let copy = match h.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => true,
            HeaderName::RecordRoute => dialog_forming,
            _ => false,
        };
        if copy {
            out.extend_from_slice(h.raw_name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        } else if h.name == HeaderName::To {
            out.extend_from_slice(b"To: ");
            out.extend_from_slice(h.value);
            let has_tag = NameAddr::parse(h.value).is_ok_and(|na| na.tag.is_some());
            if code > 100 && !has_tag {
                out.extend_from_slice(b";tag=");
                out.extend_from_slice(tag);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    if dialog_forming {
        let _ = write!(out, "Contact: <sip:uas@{contact}>\r\n");
    }
    if with_sdp {
        let _ = write!(
            out,
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
            SDP.len()
        );
    } else {
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    }
}

/// A stable To-tag for a request, so retransmissions get the same one.
pub fn to_tag(call_id: &[u8]) -> [u8; 16] {
    // FNV-1a: cheap and deterministic; not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in call_id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut tag = [0u8; 16];
    for (i, t) in tag.iter_mut().enumerate() {
        *t = b"0123456789abcdef"[((h >> (60 - 4 * i)) & 0xf) as usize];
    }
    tag
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::sip::parse;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn call_ref_round_trips() {
        let c = CallRef {
            run: 77,
            thread: 3,
            slot: 70000,
            generation: 12,
        };
        assert_eq!(CallRef::parse(c.to_string().as_bytes()), Some(c));
        assert_eq!(CallRef::parse(b"sb1.2.3"), None);
        assert_eq!(CallRef::parse(b"abc"), None);
    }

    #[test]
    fn invite_answer_ack_bye_parse_and_follow_record_route() {
        let c = CallRef {
            run: 1,
            thread: 0,
            slot: 1,
            generation: 2,
        };
        let local = hostport(addr("127.0.0.1:4000"));
        let mut inv = Vec::new();
        invite(&mut inv, c, &local, "127.0.0.1:5060", "svc");
        let m = parse(&inv).expect("INVITE parses");
        m.validated_request().expect("INVITE valid");
        // A proxy record-routes it; the UAS echoes Record-Route in its 200.
        let mut proxied = inv.clone();
        let at = proxied
            .windows(5)
            .position(|w| w == b"From:")
            .expect("From");
        proxied.splice(
            at..at,
            b"Record-Route: <sip:127.0.0.1:5061;lr>\r\nRecord-Route: <sip:10.0.0.1;lr>\r\n"
                .iter()
                .copied(),
        );
        let req = parse(&proxied).expect("proxied parses");
        let mut ok = Vec::new();
        uas_response(&mut ok, &req, 200, b"t1", "127.0.0.1:5070", true);
        let resp = parse(&ok).expect("200 parses");
        resp.validated_response().expect("200 valid");
        assert_eq!(resp.status(), Some(200));
        assert_eq!(resp.to().expect("To").tag, Some(&b"t1"[..]));
        let mut d = Dialog::default();
        d.fill_from_2xx(&resp, b"sip:svc@127.0.0.1:5060");
        assert_eq!(d.target, b"sip:uas@127.0.0.1:5070");
        // The first route is the last Record-Route: the proxy nearest the
        // UAC (no port: 5060).
        assert_eq!(d.next_hop, Some(addr("10.0.0.1:5060")));
        let mut bye = Vec::new();
        d.request(&mut bye, "BYE", 2, c, &local);
        let b = parse(&bye).expect("BYE parses");
        b.validated_request().expect("BYE valid");
        let routes: Vec<&[u8]> = b.values(HeaderName::Route).collect();
        assert_eq!(
            routes,
            vec![&b"<sip:10.0.0.1;lr>"[..], &b"<sip:127.0.0.1:5061;lr>"[..]]
        );
        assert_eq!(CallRef::parse(b.call_id().expect("Call-ID")), Some(c));
        let mut ack = Vec::new();
        ack_non2xx(&mut ack, c, &local, "127.0.0.1:5060", "svc", &resp);
        parse(&ack)
            .expect("ACK parses")
            .validated_request()
            .expect("ACK valid");
    }
}
