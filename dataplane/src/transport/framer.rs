//! Cuts a SIP byte stream (TCP, later TLS) into messages (RFC 3261 §18.3).
//!
//! A message is its header (up to and including the first empty line, CRLFCRLF)
//! followed by exactly Content-Length bytes of body; on a stream a missing
//! Content-Length is an error, not "the rest of the packet". Between messages RFC 5626
//! §4.4.1 keep-alives may appear: a double CRLF is a ping (answered with a single CRLF
//! pong by the caller), a lone CRLF (a pong, or a sloppy peer) is skipped.
//!
//! Sans-IO: the driver feeds received bytes and `now`; complete messages are handed to
//! a callback as slices, straight out of the received bytes when nothing was pending
//! (the common case: one read, whole messages), else out of the connection's own
//! buffer, which never holds more than `max_message` bytes.

use std::time::Instant;

use memchr::memmem;

/// What a stream yields besides errors.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One complete SIP message (header and body).
    Message(&'a [u8]),
    /// A double-CRLF keep-alive ping; the caller answers with [`PONG`].
    Ping,
}

/// The keep-alive answer to a [`Frame::Ping`] (RFC 5626 §4.4.1).
pub const PONG: &[u8] = b"\r\n";

/// Why a stream cannot go on; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header or a whole message exceeds `max_message` bytes.
    #[error("message larger than max_message")]
    Oversize,
    /// A complete header without Content-Length (required on streams, §18.3).
    #[error("no Content-Length on a stream")]
    MissingContentLength,
    /// An unreadable Content-Length, or two that disagree.
    #[error("bad Content-Length")]
    BadContentLength,
}

/// The framing state of one connection.
#[derive(Debug)]
pub struct Framer {
    max_message: usize,
    /// Bytes of an incomplete message (or of a keep-alive not yet decided).
    buf: Vec<u8>,
    /// When the first byte of the pending incomplete header arrived (slowloris clock);
    /// `None` while no header is pending.
    header_since: Option<Instant>,
    /// What is known about the message at the start of `buf`, so a message trickling
    /// in is not scanned from its start on every read.
    known: Pending,
}

/// A capacity beyond which an emptied buffer is given back, so one large message
/// does not pin its memory for the connection's lifetime.
const KEEP_CAPACITY: usize = 8 * 1024;

/// What is known about an incomplete unit at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Nothing, or keep-alive bytes waiting to be told apart.
    Nothing,
    /// A header has begun; its first `searched` bytes hold no CRLFCRLF.
    Header { searched: usize },
    /// The header is complete; the whole message is `total` bytes.
    Body { total: usize },
}

/// Outcome of looking at the start of some bytes.
enum Cut {
    /// `n` bytes of keep-alive noise consumed; `ping` if it was a double CRLF.
    Skip { n: usize, ping: bool },
    /// A complete message of `n` bytes.
    Message(usize),
    /// More bytes are needed.
    Incomplete(Pending),
}

impl Framer {
    /// A framer accepting messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Framer {
            max_message: max_message.max(1),
            buf: Vec::new(),
            header_since: None,
            known: Pending::Nothing,
        }
    }

    /// When the pending incomplete header began, if one is pending.
    pub fn header_since(&self) -> Option<Instant> {
        self.header_since
    }

    /// Bytes held for an incomplete message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds received bytes; `on` gets every complete message and ping in order.
    /// After an error the connection must be closed (the stream is out of sync).
    pub fn feed(
        &mut self,
        now: Instant,
        data: &[u8],
        mut on: impl FnMut(Frame<'_>),
    ) -> Result<(), FrameError> {
        let left = if self.buf.is_empty() {
            // Frame in place; only a trailing partial message is copied.
            let (used, left) = cut_all(self.max_message, data, Pending::Nothing, &mut on)?;
            self.buf
                .extend_from_slice(data.get(used..).unwrap_or_default());
            left
        } else {
            self.buf.extend_from_slice(data);
            let buf = std::mem::take(&mut self.buf);
            let cut = cut_all(self.max_message, &buf, self.known, &mut on);
            self.buf = buf;
            let (used, left) = cut?;
            self.buf.drain(..used);
            if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
            left
        };
        self.known = left;
        self.header_since = match left {
            Pending::Header { .. } => self.header_since.or(Some(now)),
            Pending::Nothing | Pending::Body { .. } => None,
        };
        Ok(())
    }
}

/// Delivers every complete unit at the start of `data` (the first one described by
/// `first`); returns the bytes used and what is known about the rest.
fn cut_all(
    max: usize,
    data: &[u8],
    first: Pending,
    on: &mut impl FnMut(Frame<'_>),
) -> Result<(usize, Pending), FrameError> {
    let mut used = 0;
    let mut known = first;
    loop {
        let rest = data.get(used..).unwrap_or_default();
        match cut(max, rest, known)? {
            Cut::Skip { n, ping } => {
                if ping {
                    on(Frame::Ping);
                }
                used += n;
            }
            Cut::Message(n) => {
                on(Frame::Message(rest.get(..n).unwrap_or(rest)));
                used += n;
            }
            Cut::Incomplete(left) => return Ok((used, left)),
        }
        known = Pending::Nothing;
    }
}

/// Looks at the start of `data`, given what is already `known` about it.
fn cut(max: usize, data: &[u8], known: Pending) -> Result<Cut, FrameError> {
    let total = match known {
        Pending::Body { total } => total,
        Pending::Nothing | Pending::Header { .. } => {
            let searched = match known {
                Pending::Header { searched } => searched,
                _ => {
                    if let Some(k) = keepalive(data) {
                        return Ok(k);
                    }
                    0
                }
            };
            // CRLFCRLF may straddle the part already searched.
            let from = searched.saturating_sub(3);
            let tail = data.get(from..).unwrap_or_default();
            let Some(end) = memmem::find(tail, b"\r\n\r\n").map(|e| e + from) else {
                return if data.len() > max {
                    Err(FrameError::Oversize)
                } else {
                    Ok(Cut::Incomplete(Pending::Header {
                        searched: data.len(),
                    }))
                };
            };
            let header_len = end + 4;
            let body = content_length(data.get(..end).unwrap_or_default())?;
            header_len
                .checked_add(body)
                .filter(|t| *t <= max)
                .ok_or(FrameError::Oversize)?
        }
    };
    if data.len() < total {
        // The header is complete; the slowloris clock stops here (the idle
        // timeout still bounds a body that never comes).
        return Ok(Cut::Incomplete(Pending::Body { total }));
    }
    Ok(Cut::Message(total))
}

/// Keep-alive bytes at the start of a unit: `Some` to skip them or wait for more,
/// `None` if a message begins here.
fn keepalive(data: &[u8]) -> Option<Cut> {
    if data.is_empty() || data == b"\r" {
        return Some(Cut::Incomplete(Pending::Nothing));
    }
    if data.starts_with(b"\r\n\r\n") {
        return Some(Cut::Skip { n: 4, ping: true });
    }
    if !data.starts_with(b"\r\n") {
        return None;
    }
    // CRLF then something that is not a CR: a lone CRLF (a pong, or noise between
    // messages). CRLF alone or CRLF CR: wait for the byte that tells a ping apart.
    Some(match data.get(2) {
        Some(b'\r') if data.len() < 4 => Cut::Incomplete(Pending::Nothing),
        Some(_) => Cut::Skip { n: 2, ping: false },
        None => Cut::Incomplete(Pending::Nothing),
    })
}

/// The Content-Length of a header block (start line and header lines, without the
/// final CRLFCRLF): full (`Content-Length`) or compact (`l`) name, case-insensitive;
/// repeated with one value is accepted, with two values is an error.
pub fn content_length(header: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    // Skip the start line; continuation lines (leading SP/HT) are never a name.
    for line in header.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        if name.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            continue;
        }
        let name = name.trim_ascii_end();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        let n = parse_len(value).ok_or(FrameError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(FrameError::BadContentLength);
        }
        found = Some(n);
    }
    found.ok_or(FrameError::MissingContentLength)
}

/// Decimal digits only, at most 9 of them (no message is near a gigabyte).
fn parse_len(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] =
        b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 4\r\n\r\nbody";
    const OPTIONS: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\nCall-ID: x\r\n\r\n";

    /// Everything `feed` delivered: messages as owned bytes, pings as "PING".
    fn feed(f: &mut Framer, now: Instant, data: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut got = Vec::new();
        f.feed(now, data, |fr| match fr {
            Frame::Message(m) => got.push(m.to_vec()),
            Frame::Ping => got.push(b"PING".to_vec()),
        })?;
        Ok(got)
    }

    #[test]
    fn whole_messages_in_one_read() {
        let mut f = Framer::new(65_535);
        let now = Instant::now();
        let data = [INVITE, OPTIONS, INVITE].concat();
        let got = feed(&mut f, now, &data).unwrap();
        assert_eq!(
            got,
            vec![INVITE.to_vec(), OPTIONS.to_vec(), INVITE.to_vec()]
        );
        assert_eq!(f.pending(), 0);
        assert_eq!(f.header_since(), None);
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        let data = [INVITE, b"\r\n\r\n", OPTIONS, b"\r\n", INVITE].concat();
        let want = vec![
            INVITE.to_vec(),
            b"PING".to_vec(),
            OPTIONS.to_vec(),
            INVITE.to_vec(),
        ];
        let now = Instant::now();
        for a in 0..=data.len() {
            for b in a..=data.len() {
                let mut f = Framer::new(65_535);
                let mut got = feed(&mut f, now, &data[..a]).unwrap();
                got.extend(feed(&mut f, now, &data[a..b]).unwrap());
                got.extend(feed(&mut f, now, &data[b..]).unwrap());
                assert_eq!(got, want, "split at {a}, {b}");
                assert_eq!(f.pending(), 0);
            }
        }
    }

    #[test]
    fn keepalives_ping_and_lone_crlf() {
        let mut f = Framer::new(100);
        let now = Instant::now();
        assert_eq!(
            feed(&mut f, now, b"\r\n\r\n").unwrap(),
            vec![b"PING".to_vec()]
        );
        // A lone CRLF waits (it may be half a ping), then is skipped.
        assert!(feed(&mut f, now, b"\r\n").unwrap().is_empty());
        assert_eq!(f.header_since(), None, "keep-alives start no header clock");
        assert_eq!(feed(&mut f, now, OPTIONS).unwrap(), vec![OPTIONS.to_vec()]);
        assert_eq!(
            feed(&mut f, now, b"\r\n\r\n\r\n\r\n").unwrap(),
            vec![b"PING".to_vec(), b"PING".to_vec()]
        );
    }

    #[test]
    fn missing_or_bad_content_length_is_an_error() {
        let now = Instant::now();
        let cases: [(&[u8], FrameError); 5] = [
            (
                b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n",
                FrameError::MissingContentLength,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nContent-Length: x1\r\n\r\n",
                FrameError::BadContentLength,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nContent-Length: -1\r\n\r\n",
                FrameError::BadContentLength,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\n",
                FrameError::BadContentLength,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 9999999999\r\n\r\n",
                FrameError::BadContentLength,
            ),
        ];
        for (data, err) in cases {
            let mut f = Framer::new(65_535);
            assert_eq!(
                feed(&mut f, now, data),
                Err(err),
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn content_length_forms() {
        let cl = |h: &[u8]| content_length(h);
        assert_eq!(cl(b"X sip:a SIP/2.0\r\ncontent-length  :  12 "), Ok(12));
        assert_eq!(cl(b"X sip:a SIP/2.0\r\nL:3\r\nl: 3"), Ok(3));
        // The start line and continuation lines are never a header name.
        assert_eq!(
            cl(b"l: 5 sip:a SIP/2.0\r\nSubject: a\r\n l: 7\r\nl: 0"),
            Ok(0)
        );
        assert_eq!(
            cl(b"X sip:a SIP/2.0\r\nLength: 3"),
            Err(FrameError::MissingContentLength)
        );
    }

    #[test]
    fn oversize_header_and_body_are_refused() {
        let now = Instant::now();
        let mut f = Framer::new(64);
        // A header that never ends, fed a byte at a time, fails once it passes 64.
        let mut failed_at = None;
        for i in 0..200 {
            if f.feed(now, b"a", |_| {}).is_err() {
                failed_at = Some(i);
                break;
            }
        }
        assert_eq!(failed_at, Some(64));
        // A declared body past the limit fails as soon as the header is complete.
        let mut f = Framer::new(64);
        let r = feed(&mut f, now, b"X sip:a SIP/2.0\r\nl: 100\r\n\r\n");
        assert_eq!(r, Err(FrameError::Oversize));
        // Exactly at the limit is fine.
        let msg = b"X sip:a SIP/2.0\r\nl: 38\r\n\r\n";
        let body = vec![b'b'; 64 - msg.len()];
        let whole = [&msg[..], &body].concat();
        let mut f = Framer::new(64);
        let got = feed(&mut f, now, &whole[..10]).unwrap();
        assert!(got.is_empty());
        assert_eq!(
            feed(&mut f, now, &whole[10..]).unwrap(),
            vec![whole.clone()]
        );
    }

    #[test]
    fn header_clock_runs_only_while_a_header_is_incomplete() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(1);
        let mut f = Framer::new(65_535);
        feed(&mut f, t0, &INVITE[..5]).unwrap();
        assert_eq!(f.header_since(), Some(t0));
        feed(&mut f, t1, &INVITE[5..10]).unwrap();
        assert_eq!(
            f.header_since(),
            Some(t0),
            "the clock is not reset by more bytes"
        );
        // Header complete, body pending: the header clock stops.
        let hdr_end = INVITE.len() - 4;
        feed(&mut f, t1, &INVITE[10..hdr_end]).unwrap();
        assert_eq!(f.header_since(), None);
        assert_eq!(
            feed(&mut f, t1, &INVITE[hdr_end..]).unwrap(),
            vec![INVITE.to_vec()]
        );
        assert_eq!(f.header_since(), None);
    }

    #[test]
    fn big_buffers_are_released_once_emptied() {
        let now = Instant::now();
        let body = vec![b'x'; 20_000];
        let head = format!("X sip:a SIP/2.0\r\nl: {}\r\n\r\n", body.len());
        let msg = [head.as_bytes(), &body].concat();
        let mut f = Framer::new(65_535);
        feed(&mut f, now, &msg[..100]).unwrap();
        assert_eq!(feed(&mut f, now, &msg[100..]).unwrap().len(), 1);
        assert_eq!(f.buf.capacity(), 0);
        assert_eq!(f.known, Pending::Nothing);
    }
}
