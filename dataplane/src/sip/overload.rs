//! RFC 7339 overload control: the `oc` Via parameters.
//!
//! A client that supports overload control offers it on its own Via entry
//! of each request: `;oc;oc-algo="loss"` (a list of algorithms; `loss` is
//! mandatory to implement). A server answering such a request fills in, on
//! that same Via entry of every response: `oc` (for the loss algorithm, the
//! percentage of its requests the client should stop sending), `oc-algo`
//! (the one algorithm chosen), `oc-validity` (milliseconds the value holds;
//! `0` turns control off) and `oc-seq` (a timestamp that only grows, so a
//! late response never overrides a newer value). The client's own `oc` and
//! `oc-algo` are replaced by the server's.
//!
//! Only the loss algorithm is implemented; a client that offers only others
//! (`oc-algo="rate"`) gets nothing.

use smallvec::SmallVec;

use super::build::put_num;
use super::header::{params, split_comma};
use super::parse::parse;
use super::HeaderName;

/// What a server tells an overload-control client in its Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    /// Percentage (0–100) of requests the client should not send.
    pub loss: u8,
    /// How long the value holds, in milliseconds; `0`: control is off.
    pub validity_ms: u32,
    /// `oc-seq` in microseconds since the Unix epoch (written as
    /// `seconds.fraction`).
    pub seq_us: u64,
}

/// Whether a Via entry's parameters (from its first `;`) offer loss-based
/// overload control: `oc` present and `oc-algo` absent or naming `loss`.
pub fn offers_loss(via_params: &[u8]) -> bool {
    // Almost no Via offers it: rule that out with a byte search for "oc"
    // before walking the parameters (a walk is ~170 instructions a Via).
    let named = memchr::memchr2_iter(b'o', b'O', via_params)
        .any(|i| via_params.get(i + 1).is_some_and(|c| c | 0x20 == b'c'));
    if !named {
        return false;
    }
    let mut oc = false;
    let mut loss = true;
    for p in params(via_params).map_while(Result::ok) {
        if p.name.eq_ignore_ascii_case(b"oc") {
            oc = true;
        } else if p.name.eq_ignore_ascii_case(b"oc-algo") {
            let v = p.value.unwrap_or_default();
            let v = v
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v);
            loss = v
                .split(|&b| b == b',')
                .any(|a| a.trim_ascii().eq_ignore_ascii_case(b"loss"));
        }
    }
    oc && loss
}

/// Whether the top Via entry of `msg` (a request) offers loss-based
/// overload control. One parameter scan; no Via parse.
pub fn request_offers_loss(msg: &super::Message<'_>) -> bool {
    let Some(entry) = msg.values(HeaderName::Via).next() else {
        return false;
    };
    match memchr::memchr(b';', entry) {
        Some(i) => offers_loss(&entry[i..]),
        None => false,
    }
}

/// Parameters a server replaces on the client's Via entry.
const OC_PARAMS: [&[u8]; 4] = [b"oc", b"oc-algo", b"oc-validity", b"oc-seq"];

/// Writes `fb` into the top Via entry of the message in `out` (a response
/// sipvane built: a local reply, or a relayed one after its own Via was
/// popped), replacing any `oc` parameters there. Leaves `out` unchanged and
/// returns `false` when it has no Via or the entry's parameters do not parse.
pub fn stamp_top_via(out: &mut Vec<u8>, fb: &Feedback) -> bool {
    let mut entry_new: SmallVec<[u8; 256]> = SmallVec::new();
    let (start, end) = {
        let Ok(msg) = parse(out) else {
            return false;
        };
        let Some(h) = msg.header_entry(HeaderName::Via) else {
            return false;
        };
        let Some(entry) = split_comma(h.value).next() else {
            return false;
        };
        let start = entry.as_ptr() as usize - out.as_ptr() as usize;
        let head_len = memchr::memchr(b';', entry).unwrap_or(entry.len());
        entry_new.extend_from_slice(entry[..head_len].trim_ascii_end());
        for p in params(&entry[head_len..]) {
            let Ok(p) = p else { return false };
            if OC_PARAMS.iter().any(|n| p.name.eq_ignore_ascii_case(n)) {
                continue;
            }
            entry_new.push(b';');
            entry_new.extend_from_slice(p.name);
            if let Some(v) = p.value {
                entry_new.push(b'=');
                entry_new.extend_from_slice(v);
            }
        }
        (start, start + entry.len())
    };
    write_params(&mut entry_new, fb);
    out.splice(start..end, entry_new);
    true
}

/// `;oc=N;oc-algo="loss";oc-validity=MS;oc-seq=S.FFFFFF`.
fn write_params(out: &mut SmallVec<[u8; 256]>, fb: &Feedback) {
    out.extend_from_slice(b";oc=");
    put_num(out, u64::from(fb.loss.min(100)), 1);
    out.extend_from_slice(b";oc-algo=\"loss\";oc-validity=");
    put_num(out, u64::from(fb.validity_ms), 1);
    out.extend_from_slice(b";oc-seq=");
    put_num(out, fb.seq_us / 1_000_000, 1);
    out.push(b'.');
    put_num(out, fb.seq_us % 1_000_000, 6);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Via;

    const FB: Feedback = Feedback {
        loss: 40,
        validity_ms: 500,
        seq_us: 1_764_000_000_000_042,
    };

    #[test]
    fn offers() {
        assert!(offers_loss(b";branch=z9hG4bK1;oc;oc-algo=\"loss\""));
        assert!(offers_loss(b";OC;oc-algo=\"rate, loss\""));
        assert!(offers_loss(b";branch=x;oc"), "loss is the default");
        assert!(!offers_loss(b";branch=x;oc-algo=\"loss\""), "no oc");
        assert!(!offers_loss(b";oc;oc-algo=\"rate\""), "rate only");
        assert!(!offers_loss(b";branch=x;rport"));
        assert!(!offers_loss(b""));
        assert!(!offers_loss(
            b";branch=z9hG4bKsv0o;received=10.0.0.1;rport=5060"
        ));
        assert!(offers_loss(b" ; Oc ; branch=x"), "any case, white space");
    }

    fn top_via(msg: &[u8]) -> Vec<u8> {
        let m = parse(msg).unwrap();
        m.values(HeaderName::Via).next().unwrap().to_vec()
    }

    #[test]
    fn stamps_replacing_the_clients_offer() {
        let mut msg = b"SIP/2.0 503 Service Unavailable\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;oc;oc-algo=\"loss,rate\";rport=5060, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKb\r\n\
v: SIP/2.0/UDP 10.0.0.3;branch=z9hG4bKc;oc\r\n\
Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            .to_vec();
        assert!(stamp_top_via(&mut msg, &FB));
        let top = top_via(&msg);
        assert_eq!(
            top,
            b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport=5060;oc=40;oc-algo=\"loss\";oc-validity=500;oc-seq=1764000000.000042"
        );
        let m = parse(&msg).unwrap();
        let v = Via::parse(&top).unwrap();
        assert_eq!(v.branch, Some(&b"z9hG4bKa"[..]));
        let mut vias = m.values(HeaderName::Via);
        vias.next();
        assert_eq!(
            vias.next().unwrap(),
            b"SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKb"
        );
        assert_eq!(
            vias.next().unwrap(),
            b"SIP/2.0/UDP 10.0.0.3;branch=z9hG4bKc;oc"
        );
        assert_eq!(m.header(HeaderName::CallId), Some(&b"x"[..]));
    }

    #[test]
    fn stamps_compact_via_and_control_off() {
        let mut msg =
            b"SIP/2.0 200 OK\r\nv: SIP/2.0/TCP [::1]:5070 ; branch=z9hG4bKa ; oc\r\nCall-ID: y\r\n\r\n"
                .to_vec();
        let off = Feedback {
            loss: 0,
            validity_ms: 0,
            seq_us: 7,
        };
        assert!(stamp_top_via(&mut msg, &off));
        assert_eq!(
            top_via(&msg),
            b"SIP/2.0/TCP [::1]:5070;branch=z9hG4bKa;oc=0;oc-algo=\"loss\";oc-validity=0;oc-seq=0.000007"
        );
    }

    #[test]
    fn leaves_bad_messages_alone() {
        for bad in [
            &b"SIP/2.0 200 OK\r\nCall-ID: y\r\n\r\n"[..],
            &b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;=x\r\n\r\n"[..],
            &b"garbage"[..],
        ] {
            let mut msg = bad.to_vec();
            assert!(!stamp_top_via(&mut msg, &FB));
            assert_eq!(msg, bad);
        }
    }
}
