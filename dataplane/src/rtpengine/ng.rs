//! RTPEngine's ng control protocol: `COOKIE SP bencoded-dict` over UDP.
//!
//! - Requests are written into a caller buffer by [`write_request`] from a
//!   borrowed [`Request`]; flags configured as a Kamailio-style string are
//!   parsed once by [`NgFlags::parse`] into the dict entries Kamailio's
//!   `rtpengine` module would send for the same string.
//! - Replies are read in place by [`Reply::parse`].
//! - [`CookieGen`] makes cookies unique per process instance, worker and
//!   request, and maps a reply's cookie back to its sequence number.

use std::fmt;
use std::net::IpAddr;

use smallvec::SmallVec;
use thiserror::Error;

use super::bencode::{self, DecodeError, Dict, DictWriter, EncodeError, List};

/// Largest ng datagram we send or accept (IPv4 UDP payload limit).
pub const MAX_DATAGRAM: usize = 65_507;

/// Errors building or reading ng messages, and from the client.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NgError {
    /// No space separates the cookie from the payload.
    #[error("ng: no cookie separator")]
    MissingCookie,
    /// The payload is not valid bencode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The payload is valid bencode but not a dict.
    #[error("ng: payload is not a dictionary")]
    NotDict,
    /// The reply has no `result` string.
    #[error("ng: reply has no result")]
    MissingResult,
    /// The request could not be encoded (a flag collides with a field the
    /// request sets itself).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The request would not fit in one UDP datagram.
    #[error("ng: request of {0} bytes exceeds one datagram")]
    TooLarge(usize),
    /// A required field (call-id, from-tag, to-tag, sdp) is empty.
    #[error("ng: {0} is required for this command")]
    MissingField(&'static str),
    /// No engine is up (or all were tried) for a request that may fail over.
    #[error("ng: no rtpengine available")]
    NoEngine,
    /// An engine index outside the engine set.
    #[error("ng: no engine with index {0}")]
    BadEngine(usize),
    /// The per-worker limit on outstanding requests is reached.
    #[error("ng: {0} requests already pending")]
    TooManyPending(usize),
}

/// Errors in a configured flags string; reported when the config is loaded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FlagsError {
    /// `key=` with nothing after `=`.
    #[error("rtpengine flag {0:?} has an empty value")]
    EmptyValue(String),
    /// A value that must be a number, address or similar is not.
    #[error("rtpengine flag {key:?}: invalid value {value:?}")]
    InvalidValue {
        /// The flag.
        key: String,
        /// Its value.
        value: String,
    },
    /// A flag that names per-message data sipvane fills in itself.
    #[error("rtpengine flag {0:?} is taken from the SIP message and cannot be configured")]
    NotConfigurable(String),
    /// `key=value` whose key is a field the request or another flag sets.
    #[error("rtpengine flag {0:?} clashes with a field sipvane sets")]
    Reserved(String),
    /// The same `key=value` key twice.
    #[error("rtpengine flag {0:?} given twice")]
    Duplicate(String),
}

/// ng commands sipvane sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Liveness check; the reply's result is `pong`.
    Ping,
    /// SDP offer (INVITE / re-INVITE with SDP).
    Offer,
    /// SDP answer (18x / 2xx with SDP).
    Answer,
    /// Tear down a call or one branch of it.
    Delete,
    /// Per-call statistics.
    Query,
    /// Call-IDs the engine knows.
    List,
}

impl Command {
    /// The command string on the wire.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Command::Ping => b"ping",
            Command::Offer => b"offer",
            Command::Answer => b"answer",
            Command::Delete => b"delete",
            Command::Query => b"query",
            Command::List => b"list",
        }
    }
}

// ------------------------------------------------------------------ cookies

/// A cookie: `INSTANCE_WORKER_SEQ`, at most 36 ASCII bytes, kept inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cookie {
    buf: [u8; 40],
    len: u8,
}

impl Cookie {
    /// The cookie bytes as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cookie({})", self.as_bytes().escape_ascii())
    }
}

impl fmt::Display for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_bytes().escape_ascii())
    }
}

/// Generates the cookies of one worker and recognises them in replies.
///
/// RTPEngine caches each reply under its cookie for a while and answers a
/// repeated cookie from that cache — that is how retransmissions stay
/// idempotent. So cookies must never repeat, not even across a restart of
/// sipvane while the engine keeps running: `instance` should differ per
/// process start (the driver picks it, e.g. from the start time or a random
/// number; the sans-IO core cannot). `worker` keeps workers apart; `seq`
/// counts requests.
#[derive(Clone, Debug)]
pub struct CookieGen {
    prefix: [u8; 16],
    prefix_len: u8,
    next: u64,
}

impl CookieGen {
    /// A generator for `worker` of process instance `instance`.
    pub fn new(instance: u32, worker: u16) -> Self {
        let mut prefix = [0u8; 16];
        let mut w = Vec::with_capacity(16);
        push_hex_u32(&mut w, instance);
        w.push(b'_');
        push_dec(&mut w, u64::from(worker));
        w.push(b'_');
        let len = w.len().min(prefix.len());
        prefix[..len].copy_from_slice(&w[..len]);
        CookieGen {
            prefix,
            prefix_len: len as u8,
            next: 0,
        }
    }

    fn prefix(&self) -> &[u8] {
        self.prefix
            .get(..usize::from(self.prefix_len))
            .unwrap_or_default()
    }

    /// Allocates the next sequence number and its cookie.
    pub fn next_cookie(&mut self) -> (u64, Cookie) {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        (seq, self.cookie(seq))
    }

    /// The cookie for sequence number `seq`.
    pub fn cookie(&self, seq: u64) -> Cookie {
        let mut c = Cookie {
            buf: [0u8; 40],
            len: 0,
        };
        let p = self.prefix();
        c.buf[..p.len()].copy_from_slice(p);
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = seq;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let d = &digits[i..];
        c.buf[p.len()..p.len() + d.len()].copy_from_slice(d);
        c.len = (p.len() + d.len()) as u8;
        c
    }

    /// The sequence number of one of our cookies, `None` for foreign ones.
    pub fn seq_of(&self, cookie: &[u8]) -> Option<u64> {
        let digits = cookie.strip_prefix(self.prefix())?;
        if digits.is_empty() || digits.len() > 20 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        digits.iter().try_fold(0u64, |acc, &b| {
            if b.is_ascii_digit() {
                acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
            } else {
                None
            }
        })
    }
}

fn push_dec(out: &mut Vec<u8>, v: u64) {
    let mut d = [0u8; 20];
    let mut i = d.len();
    let mut v = v;
    loop {
        i -= 1;
        d[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
}

fn push_hex_u32(out: &mut Vec<u8>, v: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.push(HEX[((v >> (shift * 4)) & 0xf) as usize]);
    }
}

// -------------------------------------------------------------------- flags

/// The codec sub-dict (`codec-*` flags), keys in bencode order.
const CODEC_KEYS: [&str; 8] = [
    "accept",
    "consume",
    "except",
    "mask",
    "offer",
    "set",
    "strip",
    "transcode",
];

/// Transport protocol names by Kamailio's transport bits (SRTP = 1, AVPF = 2,
/// DTLS = 4). DTLS implies SRTP, so 5 and 7 — holes in Kamailio's table —
/// map to the DTLS profiles here.
const TRANSPORTS: [&str; 8] = [
    "RTP/AVP",
    "RTP/SAVP",
    "RTP/AVPF",
    "RTP/SAVPF",
    "UDP/TLS/RTP/SAVP",
    "UDP/TLS/RTP/SAVP",
    "UDP/TLS/RTP/SAVPF",
    "UDP/TLS/RTP/SAVPF",
];

/// Keys written by [`write_request`] itself or by list-valued flags; a
/// configured `key=value` may not reuse them.
const RESERVED_KEYS: &[&str] = &[
    "call-id",
    "codec",
    "command",
    "direction",
    "flags",
    "from-tag",
    "limit",
    "received-from",
    "replace",
    "rtcp-mux",
    "SDES",
    "sdp",
    "supports",
    "T.38",
    "to-tag",
    "transport-protocol",
    "via-branch",
];

/// A value of a `key=value` flag that goes straight into the request dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlagValue {
    /// Written as a bencode integer (`TOS`, `delete delay`, `repacketize`).
    Int(i64),
    /// Written as a byte string (everything else).
    Str(String),
}

/// Flags from a configuration string, parsed once into the dict entries
/// Kamailio's `rtpengine` module sends for the same string
/// (`parse_flags()` in its `rtpengine.c`):
///
/// - a plain word goes into the `flags` list (`trust-address`, `SIP-source-address`, …);
/// - `replace-X` / `replace=X` → `replace: [X]`; likewise `SDES-X`, `rtcp-mux-X`,
///   `T38-X` / `T.38-X` (→ `T.38`), `direction=X` and `internal` / `external`
///   (→ `direction`);
/// - `codec-transcode-X` / `transcode-X` / `codec-transcode=X` → `codec: {transcode: [X]}`,
///   and `codec-strip`, `-offer`, `-mask`, `-set`, `-except`, `-accept`, `-consume`;
/// - `RTP/AVP`, `RTP/SAVP`, `RTP/AVPF`, `RTP/SAVPF`, `UDP/TLS/RTP/SAVP(F)` set
///   `transport-protocol`, as do the modifiers `RTP`, `AVP`, `SRTP`, `AVPF`, `DTLS`;
/// - `TOS=N`, `delete-delay=N` (→ `delete delay`), `repacketize=N` → integers;
/// - `received-from=IP` → `received-from: [IP4|IP6, IP]`;
/// - any other `key=value` → `key: value` (`ICE=remove`, `address-family=IP4`,
///   `transport-protocol=RTP/AVP`, `label=caller`, …).
///
/// Words are separated by whitespace. `call-id`, `from-tag`, `to-tag`,
/// `via-branch` and `force-answer` name per-message data and are refused;
/// `directional` is accepted and ignored (sipvane always sends the from-tag).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NgFlags {
    flags: Vec<String>,
    replace: Vec<String>,
    direction: Vec<String>,
    rtcp_mux: Vec<String>,
    sdes: Vec<String>,
    t38: Vec<String>,
    codec: [Vec<String>; 8],
    received_from: Option<(&'static str, String)>,
    transport: u16,
    extra: Vec<(String, FlagValue)>,
}

impl NgFlags {
    /// Parses a Kamailio-style flags string.
    pub fn parse(s: &str) -> Result<NgFlags, FlagsError> {
        let mut f = NgFlags::default();
        for word in s.split_ascii_whitespace() {
            let (key, val) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            if val == Some("") {
                return Err(FlagsError::EmptyValue(key.to_owned()));
            }
            f.add(key, val)?;
        }
        Ok(f)
    }

    fn add(&mut self, key: &str, val: Option<&str>) -> Result<(), FlagsError> {
        if let Some(s) = key_val_prefix(key, "replace", val) {
            self.replace.push(s.to_owned());
            return Ok(());
        }
        if let Some(s) = key_val_prefix(key, "received-from", val) {
            let ip: IpAddr = s.parse().map_err(|_| FlagsError::InvalidValue {
                key: key.to_owned(),
                value: s.to_owned(),
            })?;
            let fam = if ip.is_ipv4() { "IP4" } else { "IP6" };
            self.received_from = Some((fam, ip.to_string()));
            return Ok(());
        }
        if let Some(s) = key_val_prefix(key, "SDES", val) {
            self.sdes.push(s.to_owned());
            return Ok(());
        }
        if let Some(s) =
            key_val_prefix(key, "T38", val).or_else(|| key_val_prefix(key, "T.38", val))
        {
            self.t38.push(s.to_owned());
            return Ok(());
        }
        if let Some(s) = key_val_prefix(key, "rtcp-mux", val) {
            self.rtcp_mux.push(s.to_owned());
            return Ok(());
        }
        let codec_prefixes: [(&str, Option<&str>, usize); 8] = [
            ("transcode", Some("codec-transcode"), 7),
            ("codec-strip", None, 6),
            ("codec-offer", None, 4),
            ("codec-mask", None, 3),
            ("codec-set", None, 5),
            ("codec-except", None, 2),
            ("codec-accept", None, 0),
            ("codec-consume", None, 1),
        ];
        for (p1, p2, slot) in codec_prefixes {
            let hit = key_val_prefix(key, p1, val)
                .or_else(|| p2.and_then(|p| key_val_prefix(key, p, val)));
            if let Some(s) = hit {
                self.codec[slot].push(s.to_owned());
                return Ok(());
            }
        }

        match (key, val) {
            ("RTP", None) => self.transport = (self.transport | 0x100) & !0x001,
            ("AVP", None) => self.transport = (self.transport | 0x100) & !0x002,
            ("SRTP", None) => self.transport |= 0x101,
            ("AVPF", None) => self.transport |= 0x102,
            ("DTLS", None) => self.transport |= 0x104,
            ("RTP/AVP", None) => self.transport = 0x100,
            ("RTP/SAVP", None) => self.transport = 0x101,
            ("RTP/AVPF", None) => self.transport = 0x102,
            ("RTP/SAVPF", None) => self.transport = 0x103,
            ("UDP/TLS/RTP/SAVP", None) => self.transport = 0x104,
            ("UDP/TLS/RTP/SAVPF", None) => self.transport = 0x106,
            ("internal" | "external", _) => self.direction.push(key.to_owned()),
            ("direction", Some(v)) => self.direction.push(v.to_owned()),
            ("directional", _) => {}
            ("call-id" | "from-tag" | "to-tag" | "via-branch" | "force-answer", _) => {
                return Err(FlagsError::NotConfigurable(key.to_owned()))
            }
            ("TOS", Some(v)) => self.put("TOS", FlagValue::Int(int_val(key, v, 0, 255)?))?,
            ("delete-delay", Some(v)) => self.put(
                "delete delay",
                FlagValue::Int(int_val(key, v, 0, i64::from(u32::MAX))?),
            )?,
            ("repacketize", Some(v)) => self.put(
                "repacketize",
                FlagValue::Int(int_val(key, v, 1, i64::from(u32::MAX))?),
            )?,
            (_, None) => self.flags.push(key.to_owned()),
            (_, Some(v)) => self.put(key, FlagValue::Str(v.to_owned()))?,
        }
        Ok(())
    }

    fn put(&mut self, key: &str, value: FlagValue) -> Result<(), FlagsError> {
        if RESERVED_KEYS.contains(&key) {
            return Err(FlagsError::Reserved(key.to_owned()));
        }
        if self.extra.iter().any(|(k, _)| k == key) {
            return Err(FlagsError::Duplicate(key.to_owned()));
        }
        self.extra.push((key.to_owned(), value));
        Ok(())
    }

    /// True when the string held no flags at all.
    pub fn is_empty(&self) -> bool {
        *self == NgFlags::default()
    }

    /// Plain words for the `flags` list.
    pub fn flags(&self) -> &[String] {
        &self.flags
    }

    /// Entries of the `replace` list.
    pub fn replace(&self) -> &[String] {
        &self.replace
    }

    /// Entries of the `direction` list.
    pub fn direction(&self) -> &[String] {
        &self.direction
    }

    /// The `transport-protocol` value, if the flags set one via a profile word.
    pub fn transport_protocol(&self) -> Option<&'static str> {
        (self.transport & 0x100 != 0).then(|| TRANSPORTS[usize::from(self.transport & 0x7)])
    }

    /// The `codec` sub-dict as `(key, values)`, non-empty entries only.
    pub fn codec(&self) -> impl Iterator<Item = (&'static str, &[String])> + '_ {
        CODEC_KEYS
            .iter()
            .zip(self.codec.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, v.as_slice()))
    }

    /// Other `key=value` entries, as given.
    pub fn extra(&self) -> &[(String, FlagValue)] {
        &self.extra
    }
}

/// Kamailio's `str_key_val_prefix`: `prefix=value` or `prefix-value`.
fn key_val_prefix<'s>(key: &'s str, prefix: &str, val: Option<&'s str>) -> Option<&'s str> {
    if key == prefix {
        return val.filter(|v| !v.is_empty());
    }
    let rest = key.strip_prefix(prefix)?.strip_prefix('-')?;
    (!rest.is_empty()).then_some(rest)
}

fn int_val(key: &str, v: &str, min: i64, max: i64) -> Result<i64, FlagsError> {
    v.parse::<i64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| FlagsError::InvalidValue {
            key: key.to_owned(),
            value: v.to_owned(),
        })
}

// ----------------------------------------------------------------- requests

/// One ng request, borrowing everything it sends.
#[derive(Clone, Copy, Debug)]
pub struct Request<'r> {
    /// The command.
    pub command: Command,
    /// SIP Call-ID (empty for `ping` and `list`).
    pub call_id: &'r [u8],
    /// From-tag of the side that sent the offer.
    pub from_tag: Option<&'r [u8]>,
    /// To-tag (required for `answer`).
    pub to_tag: Option<&'r [u8]>,
    /// Via branch, to address one fork of a call.
    pub via_branch: Option<&'r [u8]>,
    /// SDP body (`offer`, `answer`).
    pub sdp: Option<&'r [u8]>,
    /// Configured flags.
    pub flags: Option<&'r NgFlags>,
    /// Most Call-IDs a `list` should return.
    pub limit: Option<u32>,
}

impl<'r> Request<'r> {
    fn new(command: Command, call_id: &'r [u8]) -> Self {
        Request {
            command,
            call_id,
            from_tag: None,
            to_tag: None,
            via_branch: None,
            sdp: None,
            flags: None,
            limit: None,
        }
    }

    /// `ping`.
    pub fn ping() -> Self {
        Request::new(Command::Ping, b"")
    }

    /// `offer` of `sdp` from the side tagged `from_tag`.
    pub fn offer(call_id: &'r [u8], from_tag: &'r [u8], sdp: &'r [u8], flags: &'r NgFlags) -> Self {
        Request {
            from_tag: Some(from_tag),
            sdp: Some(sdp),
            flags: Some(flags),
            ..Request::new(Command::Offer, call_id)
        }
    }

    /// `answer` with `sdp` from the side tagged `to_tag`; `from_tag` is the
    /// offerer's tag, as in the offer.
    pub fn answer(
        call_id: &'r [u8],
        from_tag: &'r [u8],
        to_tag: &'r [u8],
        sdp: &'r [u8],
        flags: &'r NgFlags,
    ) -> Self {
        Request {
            from_tag: Some(from_tag),
            to_tag: Some(to_tag),
            sdp: Some(sdp),
            flags: Some(flags),
            ..Request::new(Command::Answer, call_id)
        }
    }

    /// `delete` of the call (or only the branch between the tags given).
    pub fn delete(
        call_id: &'r [u8],
        from_tag: &'r [u8],
        to_tag: Option<&'r [u8]>,
        flags: Option<&'r NgFlags>,
    ) -> Self {
        Request {
            from_tag: Some(from_tag),
            to_tag,
            flags,
            ..Request::new(Command::Delete, call_id)
        }
    }

    /// `query` of a call's state and statistics.
    pub fn query(call_id: &'r [u8]) -> Self {
        Request::new(Command::Query, call_id)
    }

    /// `list` of known Call-IDs.
    pub fn list(limit: Option<u32>) -> Self {
        Request {
            limit,
            ..Request::new(Command::List, b"")
        }
    }
}

/// One dict entry of a request, before sorting.
enum Field<'r> {
    Bytes(&'r [u8]),
    Int(i64),
    List(&'r [String]),
    Static(&'static [&'static [u8]]),
    Codec(&'r NgFlags),
    ReceivedFrom(&'static str, &'r str),
}

/// Appends `cookie SP dict` for `req` to `out`. On error `out` is restored.
pub fn write_request(cookie: &[u8], req: &Request<'_>, out: &mut Vec<u8>) -> Result<(), NgError> {
    let need = |v: Option<&[u8]>, what| match v {
        Some(b) if !b.is_empty() => Ok(()),
        _ => Err(NgError::MissingField(what)),
    };
    match req.command {
        Command::Ping | Command::List => {}
        Command::Query => need(Some(req.call_id), "call-id")?,
        Command::Delete => {
            need(Some(req.call_id), "call-id")?;
            need(req.from_tag, "from-tag")?;
        }
        Command::Offer => {
            need(Some(req.call_id), "call-id")?;
            need(req.from_tag, "from-tag")?;
            need(req.sdp, "sdp")?;
        }
        Command::Answer => {
            need(Some(req.call_id), "call-id")?;
            need(req.from_tag, "from-tag")?;
            need(req.to_tag, "to-tag")?;
            need(req.sdp, "sdp")?;
        }
    }

    let mut fields: SmallVec<[(&[u8], Field<'_>); 24]> = SmallVec::new();
    fields.push((b"command", Field::Bytes(req.command.as_bytes())));
    if !req.call_id.is_empty() {
        fields.push((b"call-id", Field::Bytes(req.call_id)));
    }
    for (key, v) in [
        (&b"from-tag"[..], req.from_tag),
        (b"to-tag", req.to_tag),
        (b"via-branch", req.via_branch),
        (b"sdp", req.sdp),
    ] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            fields.push((key, Field::Bytes(v)));
        }
    }
    if let Some(limit) = req.limit {
        fields.push((b"limit", Field::Int(i64::from(limit))));
    }
    if !matches!(req.command, Command::Ping | Command::List) {
        // As Kamailio does: lets the engine answer `load limit` instead of
        // failing, so the client can try the next engine.
        fields.push((b"supports", Field::Static(&[b"load limit"])));
    }
    if let Some(f) = req.flags {
        for (key, list) in [
            (&b"flags"[..], &f.flags),
            (b"replace", &f.replace),
            (b"direction", &f.direction),
            (b"rtcp-mux", &f.rtcp_mux),
            (b"SDES", &f.sdes),
            (b"T.38", &f.t38),
        ] {
            if !list.is_empty() {
                fields.push((key, Field::List(list)));
            }
        }
        if f.codec.iter().any(|v| !v.is_empty()) {
            fields.push((b"codec", Field::Codec(f)));
        }
        if let Some(tp) = f.transport_protocol() {
            fields.push((b"transport-protocol", Field::Bytes(tp.as_bytes())));
        }
        if let Some((fam, ip)) = &f.received_from {
            fields.push((b"received-from", Field::ReceivedFrom(fam, ip)));
        }
        for (k, v) in &f.extra {
            let field = match v {
                FlagValue::Int(n) => Field::Int(*n),
                FlagValue::Str(s) => Field::Bytes(s.as_bytes()),
            };
            fields.push((k.as_bytes(), field));
        }
    }
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));

    let start = out.len();
    out.extend_from_slice(cookie);
    out.push(b' ');
    let r = bencode::write_dict(out, |d| {
        for (key, field) in &fields {
            write_field(d, key, field);
        }
    });
    if let Err(e) = r {
        out.truncate(start);
        return Err(e.into());
    }
    let len = out.len() - start;
    if len > MAX_DATAGRAM {
        out.truncate(start);
        return Err(NgError::TooLarge(len));
    }
    Ok(())
}

fn write_field(d: &mut DictWriter<'_>, key: &[u8], field: &Field<'_>) {
    match field {
        Field::Bytes(b) => {
            d.bytes(key, b);
        }
        Field::Int(n) => {
            d.int(key, *n);
        }
        Field::List(items) => {
            d.list(key, |l| {
                for s in items.iter() {
                    l.bytes(s.as_bytes());
                }
            });
        }
        Field::Static(items) => {
            d.list(key, |l| {
                for s in items.iter() {
                    l.bytes(s);
                }
            });
        }
        Field::Codec(f) => {
            d.dict(key, |c| {
                for (k, items) in f.codec() {
                    c.list(k.as_bytes(), |l| {
                        for s in items {
                            l.bytes(s.as_bytes());
                        }
                    });
                }
            });
        }
        Field::ReceivedFrom(fam, ip) => {
            d.list(key, |l| {
                l.bytes(fam.as_bytes()).bytes(ip.as_bytes());
            });
        }
    }
}

// ------------------------------------------------------------------ replies

/// Splits a datagram into cookie and payload at the first space.
pub fn split_cookie(data: &[u8]) -> Result<(&[u8], &[u8]), NgError> {
    let sp = memchr::memchr(b' ', data).ok_or(NgError::MissingCookie)?;
    match (data.get(..sp), data.get(sp + 1..)) {
        (Some(c), Some(p)) if !c.is_empty() => Ok((c, p)),
        _ => Err(NgError::MissingCookie),
    }
}

/// The `result` of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NgResult<'a> {
    /// `ok`
    Ok,
    /// `pong` (reply to `ping`)
    Pong,
    /// `error`; see [`Reply::error_reason`].
    Error,
    /// `load limit`: the engine refuses new calls; try another one.
    LoadLimit,
    /// Anything else.
    Other(&'a [u8]),
}

/// A decoded reply, borrowing the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The cookie the reply echoes.
    pub cookie: &'a [u8],
    /// The whole reply dict, for fields without an accessor.
    pub dict: Dict<'a>,
    /// The `result` field.
    pub result: NgResult<'a>,
}

impl<'a> Reply<'a> {
    /// Parses `cookie SP dict`; the dict must carry a string `result`.
    pub fn parse(data: &'a [u8]) -> Result<Reply<'a>, NgError> {
        let (cookie, payload) = split_cookie(data)?;
        let dict = bencode::decode(payload)?
            .as_dict()
            .ok_or(NgError::NotDict)?;
        let result = match dict.get_bytes(b"result").ok_or(NgError::MissingResult)? {
            b"ok" => NgResult::Ok,
            b"pong" => NgResult::Pong,
            b"error" => NgResult::Error,
            b"load limit" => NgResult::LoadLimit,
            other => NgResult::Other(other),
        };
        Ok(Reply {
            cookie,
            dict,
            result,
        })
    }

    /// True for `ok` and `pong`.
    pub fn is_success(&self) -> bool {
        matches!(self.result, NgResult::Ok | NgResult::Pong)
    }

    /// `error-reason` of an error reply.
    pub fn error_reason(&self) -> Option<&'a [u8]> {
        self.dict.get_bytes(b"error-reason")
    }

    /// `warning`, which may accompany a successful reply.
    pub fn warning(&self) -> Option<&'a [u8]> {
        self.dict.get_bytes(b"warning")
    }

    /// The rewritten SDP of an `offer` / `answer` reply.
    pub fn sdp(&self) -> Option<&'a [u8]> {
        self.dict.get_bytes(b"sdp")
    }

    /// True when the engine declined for lack of capacity (`load limit`, or
    /// the errors Kamailio also treats as "try the next engine").
    pub fn is_overloaded(&self) -> bool {
        match self.result {
            NgResult::LoadLimit => true,
            NgResult::Error => matches!(
                self.error_reason(),
                Some(b"Parallel session limit reached" | b"Ran out of ports")
            ),
            _ => false,
        }
    }

    /// The Call-IDs of a `list` reply.
    pub fn calls(&self) -> Option<List<'a>> {
        self.dict.get_list(b"calls")
    }

    /// Call statistics of a `query` (or `delete`) reply; `None` when the
    /// reply carries none.
    pub fn stats(&self) -> Option<CallStats> {
        let totals = self.dict.get_dict(b"totals");
        let created = self.dict.get_int(b"created");
        if totals.is_none() && created.is_none() {
            return None;
        }
        let counters = |key: &[u8]| {
            totals
                .and_then(|t| t.get_dict(key))
                .map(|d| PacketCounters {
                    packets: d.get_int(b"packets").unwrap_or(0),
                    bytes: d.get_int(b"bytes").unwrap_or(0),
                    errors: d.get_int(b"errors").unwrap_or(0),
                })
                .unwrap_or_default()
        };
        Some(CallStats {
            created,
            last_signal: self.dict.get_int(b"last signal"),
            tags: self.dict.get_dict(b"tags").map_or(0, |t| t.len()),
            rtp: counters(b"RTP"),
            rtcp: counters(b"RTCP"),
        })
    }
}

/// Per-call statistics from a `query` reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Call creation time, Unix seconds.
    pub created: Option<i64>,
    /// Last signalling event, Unix seconds.
    pub last_signal: Option<i64>,
    /// Number of call parties (tags) the engine knows.
    pub tags: usize,
    /// RTP totals over the call.
    pub rtp: PacketCounters,
    /// RTCP totals over the call.
    pub rtcp: PacketCounters,
}

/// Packet counters of one protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    /// Packets relayed.
    pub packets: i64,
    /// Bytes relayed.
    pub bytes: i64,
    /// Packets dropped as errors.
    pub errors: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtpengine::bencode::{decode, Value};

    fn dict_of(msg: &[u8]) -> (Vec<u8>, Dict<'_>) {
        let (cookie, payload) = split_cookie(msg).unwrap();
        (cookie.to_vec(), decode(payload).unwrap().as_dict().unwrap())
    }

    fn strs(l: Option<List<'_>>) -> Vec<String> {
        l.unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn ping_is_minimal() {
        let mut out = Vec::new();
        write_request(b"c1", &Request::ping(), &mut out).unwrap();
        assert_eq!(out, b"c1 d7:command4:pinge");
    }

    #[test]
    fn kamailio_style_flags() {
        let f = NgFlags::parse(
            "replace-origin replace-session-connection ICE=remove RTP/AVP \
             codec-transcode=PCMA trust-address codec-mask-all transcode-G722 \
             direction=internal external TOS=184 delete-delay=0 label=caller \
             SDES-off rtcp-mux-demux T38-decode received-from=192.0.2.1 directional",
        )
        .unwrap();
        assert_eq!(f.replace(), ["origin", "session-connection"]);
        assert_eq!(f.flags(), ["trust-address"]);
        assert_eq!(f.direction(), ["internal", "external"]);
        assert_eq!(f.transport_protocol(), Some("RTP/AVP"));

        let mut out = Vec::new();
        let req = Request::offer(b"cid@host", b"ft1", b"v=0\r\n", &f);
        write_request(b"7_0_1", &req, &mut out).unwrap();
        let (cookie, d) = dict_of(&out);
        assert_eq!(cookie, b"7_0_1");
        // Keys are sorted, so the encoder accepted them and a strict reader
        // would too.
        let keys: Vec<&[u8]> = d.iter().map(|(k, _)| k).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);

        assert_eq!(d.get_str(b"command"), Some("offer"));
        assert_eq!(d.get_str(b"call-id"), Some("cid@host"));
        assert_eq!(d.get_str(b"from-tag"), Some("ft1"));
        assert_eq!(d.get_bytes(b"sdp"), Some(&b"v=0\r\n"[..]));
        assert_eq!(d.get(b"to-tag"), None);
        assert_eq!(d.get_str(b"ICE"), Some("remove"));
        assert_eq!(d.get_str(b"label"), Some("caller"));
        assert_eq!(d.get_str(b"transport-protocol"), Some("RTP/AVP"));
        assert_eq!(d.get_int(b"TOS"), Some(184));
        assert_eq!(d.get_int(b"delete delay"), Some(0));
        assert_eq!(
            strs(d.get_list(b"replace")),
            ["origin", "session-connection"]
        );
        assert_eq!(strs(d.get_list(b"flags")), ["trust-address"]);
        assert_eq!(strs(d.get_list(b"direction")), ["internal", "external"]);
        assert_eq!(strs(d.get_list(b"SDES")), ["off"]);
        assert_eq!(strs(d.get_list(b"rtcp-mux")), ["demux"]);
        assert_eq!(strs(d.get_list(b"T.38")), ["decode"]);
        assert_eq!(strs(d.get_list(b"received-from")), ["IP4", "192.0.2.1"]);
        assert_eq!(strs(d.get_list(b"supports")), ["load limit"]);
        let codec = d.get_dict(b"codec").unwrap();
        assert_eq!(strs(codec.get_list(b"transcode")), ["PCMA", "G722"]);
        assert_eq!(strs(codec.get_list(b"mask")), ["all"]);
        assert_eq!(codec.len(), 2);
    }

    #[test]
    fn the_briefs_example_string() {
        let f = NgFlags::parse(
            "replace-origin replace-session-connection ICE=remove RTP/AVP codec-transcode=PCMA",
        )
        .unwrap();
        let mut out = Vec::new();
        write_request(b"c", &Request::offer(b"a", b"b", b"v=0", &f), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "c d3:ICE6:remove7:call-id1:a5:codecd9:transcodel4:PCMAee7:command5:offer\
8:from-tag1:b7:replacel6:origin18:session-connectione3:sdp3:v=08:supportsl10:load limite\
18:transport-protocol7:RTP/AVPe"
        );
    }

    #[test]
    fn transport_modifiers_follow_kamailio_bits() {
        let tp = |s| NgFlags::parse(s).unwrap().transport_protocol();
        assert_eq!(tp(""), None);
        assert_eq!(tp("SRTP"), Some("RTP/SAVP"));
        assert_eq!(tp("AVPF"), Some("RTP/AVPF"));
        assert_eq!(tp("SRTP AVPF"), Some("RTP/SAVPF"));
        assert_eq!(tp("RTP/SAVPF RTP"), Some("RTP/AVPF"));
        assert_eq!(tp("RTP/SAVPF AVP"), Some("RTP/SAVP"));
        assert_eq!(tp("DTLS"), Some("UDP/TLS/RTP/SAVP"));
        assert_eq!(tp("DTLS SRTP AVPF"), Some("UDP/TLS/RTP/SAVPF"));
        assert_eq!(tp("UDP/TLS/RTP/SAVPF"), Some("UDP/TLS/RTP/SAVPF"));
        assert_eq!(tp("RTP/AVPF"), Some("RTP/AVPF"));
        // With a value these are generic entries, as in Kamailio.
        let f = NgFlags::parse("DTLS=passive").unwrap();
        assert_eq!(f.transport_protocol(), None);
        assert_eq!(
            f.extra(),
            [("DTLS".to_owned(), FlagValue::Str("passive".into()))]
        );
    }

    #[test]
    fn prefix_rules_match_str_key_val_prefix() {
        // Bare prefix word with no value is a plain flag.
        let f = NgFlags::parse("replace SDES").unwrap();
        assert_eq!(f.flags(), ["replace", "SDES"]);
        assert!(f.replace().is_empty());
        // Prefix must be followed by '-' and something.
        let f = NgFlags::parse("replacement replace- replace=origin").unwrap();
        assert_eq!(f.flags(), ["replacement", "replace-"]);
        assert_eq!(f.replace(), ["origin"]);
        // Whitespace of any kind separates words.
        let f = NgFlags::parse("\n  trust-address\tstrict-source  \r\n").unwrap();
        assert_eq!(f.flags(), ["trust-address", "strict-source"]);
        assert!(NgFlags::parse("   ").unwrap().is_empty());
        // '=' inside a value is kept.
        let f = NgFlags::parse("label=a=b").unwrap();
        assert_eq!(
            f.extra(),
            [("label".to_owned(), FlagValue::Str("a=b".into()))]
        );
    }

    #[test]
    fn bad_flags_are_config_errors() {
        use FlagsError::*;
        assert_eq!(NgFlags::parse("ICE="), Err(EmptyValue("ICE".into())));
        assert!(matches!(NgFlags::parse("TOS=x"), Err(InvalidValue { .. })));
        assert!(matches!(
            NgFlags::parse("TOS=256"),
            Err(InvalidValue { .. })
        ));
        assert!(matches!(
            NgFlags::parse("repacketize=0"),
            Err(InvalidValue { .. })
        ));
        assert!(matches!(
            NgFlags::parse("received-from=nope"),
            Err(InvalidValue { .. })
        ));
        assert_eq!(
            NgFlags::parse("via-branch=1"),
            Err(NotConfigurable("via-branch".into()))
        );
        assert_eq!(
            NgFlags::parse("to-tag"),
            Err(NotConfigurable("to-tag".into()))
        );
        assert_eq!(NgFlags::parse("sdp=x"), Err(Reserved("sdp".into())));
        assert_eq!(NgFlags::parse("flags=x"), Err(Reserved("flags".into())));
        assert_eq!(
            NgFlags::parse("ICE=remove ICE=force"),
            Err(Duplicate("ICE".into()))
        );
        let f = NgFlags::parse("received-from=2001:db8::1").unwrap();
        let mut out = Vec::new();
        write_request(b"c", &Request::delete(b"a", b"b", None, Some(&f)), &mut out).unwrap();
        let (_, d) = dict_of(&out);
        assert_eq!(strs(d.get_list(b"received-from")), ["IP6", "2001:db8::1"]);
    }

    #[test]
    fn answer_delete_query_list() {
        let f = NgFlags::default();
        let mut out = Vec::new();
        write_request(
            b"c",
            &Request::answer(b"a", b"ft", b"tt", b"v=0", &f),
            &mut out,
        )
        .unwrap();
        let (_, d) = dict_of(&out);
        assert_eq!(d.get_str(b"to-tag"), Some("tt"));
        assert_eq!(d.get_str(b"from-tag"), Some("ft"));
        assert_eq!(d.get(b"flags"), None, "empty lists are not sent");

        out.clear();
        write_request(
            b"c",
            &Request::delete(b"a", b"ft", Some(b"tt"), None),
            &mut out,
        )
        .unwrap();
        let (_, d) = dict_of(&out);
        assert_eq!(d.get_str(b"command"), Some("delete"));
        assert_eq!(d.get_str(b"to-tag"), Some("tt"));
        assert_eq!(d.get(b"sdp"), None);

        out.clear();
        write_request(b"c", &Request::query(b"a"), &mut out).unwrap();
        assert_eq!(
            out,
            &b"c d7:call-id1:a7:command5:query8:supportsl10:load limitee"[..]
        );

        out.clear();
        write_request(b"c", &Request::list(Some(10)), &mut out).unwrap();
        assert_eq!(out, b"c d7:command4:list5:limiti10ee");
    }

    #[test]
    fn missing_fields_and_size_limit() {
        let f = NgFlags::default();
        let mut out = b"keep".to_vec();
        assert_eq!(
            write_request(b"c", &Request::offer(b"", b"ft", b"v=0", &f), &mut out),
            Err(NgError::MissingField("call-id"))
        );
        assert_eq!(
            write_request(b"c", &Request::offer(b"a", b"ft", b"", &f), &mut out),
            Err(NgError::MissingField("sdp"))
        );
        assert_eq!(
            write_request(b"c", &Request::answer(b"a", b"ft", b"", b"v", &f), &mut out),
            Err(NgError::MissingField("to-tag"))
        );
        let huge = vec![b'x'; MAX_DATAGRAM];
        assert!(matches!(
            write_request(b"c", &Request::offer(b"a", b"ft", &huge, &f), &mut out),
            Err(NgError::TooLarge(_))
        ));
        assert_eq!(out, b"keep", "buffer restored after every failure");
    }

    #[test]
    fn cookies_are_unique_and_recognised() {
        let mut g = CookieGen::new(0xdead_beef, 3);
        let (s0, c0) = g.next_cookie();
        let (s1, c1) = g.next_cookie();
        assert_eq!((s0, s1), (0, 1));
        assert_eq!(c0.as_bytes(), b"deadbeef_3_0");
        assert_eq!(c1.to_string(), "deadbeef_3_1");
        assert_eq!(g.seq_of(c1.as_bytes()), Some(1));
        assert_eq!(g.seq_of(g.cookie(u64::MAX).as_bytes()), Some(u64::MAX));
        // Other workers' and instances' cookies are foreign.
        let other = CookieGen::new(0xdead_beef, 4);
        assert_eq!(other.seq_of(c1.as_bytes()), None);
        assert_eq!(CookieGen::new(1, 3).seq_of(c1.as_bytes()), None);
        for bad in [
            &b"deadbeef_3_"[..],
            b"deadbeef_3_01",
            b"deadbeef_3_1x",
            b"deadbeef_3_99999999999999999999",
            b"",
        ] {
            assert_eq!(g.seq_of(bad), None);
        }
        let max = CookieGen::new(u32::MAX, u16::MAX).cookie(u64::MAX);
        assert_eq!(max.as_bytes(), b"ffffffff_65535_18446744073709551615");
    }

    #[test]
    fn replies() {
        let r = Reply::parse(b"abc d6:result4:ponge").unwrap();
        assert_eq!(r.cookie, b"abc");
        assert_eq!(r.result, NgResult::Pong);
        assert!(r.is_success());

        let r =
            Reply::parse(b"c2 d3:sdp9:v=0\r\nm=..6:result2:ok7:warning11:odd codec Xe").unwrap();
        assert_eq!(r.result, NgResult::Ok);
        assert_eq!(r.sdp(), Some(&b"v=0\r\nm=.."[..]));
        assert_eq!(r.warning(), Some(&b"odd codec X"[..]));
        assert!(r.stats().is_none());

        let r = Reply::parse(b"c6 d6:result5:error12:error-reason15:Unknown call-ide").unwrap();
        assert_eq!(r.result, NgResult::Error);
        assert_eq!(r.error_reason(), Some(&b"Unknown call-id"[..]));
        assert!(!r.is_success() && !r.is_overloaded());

        let r = Reply::parse(b"c d6:result5:error12:error-reason16:Ran out of portse").unwrap();
        assert!(r.is_overloaded());
        let r = Reply::parse(b"c d6:result10:load limit7:message4:busye").unwrap();
        assert_eq!(r.result, NgResult::LoadLimit);
        assert!(r.is_overloaded());
        let r = Reply::parse(b"c d6:result3:hmme").unwrap();
        assert_eq!(r.result, NgResult::Other(b"hmm"));

        let r = Reply::parse(b"c4 d5:callsl4:cid1e6:result2:oke").unwrap();
        assert_eq!(
            r.calls().unwrap().iter().collect::<Vec<_>>(),
            vec![Value::Bytes(b"cid1")]
        );

        assert_eq!(Reply::parse(b"nocookie"), Err(NgError::MissingCookie));
        assert_eq!(
            Reply::parse(b" d6:result2:oke"),
            Err(NgError::MissingCookie)
        );
        assert_eq!(Reply::parse(b"c le"), Err(NgError::NotDict));
        assert_eq!(Reply::parse(b"c de"), Err(NgError::MissingResult));
        assert_eq!(
            Reply::parse(b"c d6:resulti1ee"),
            Err(NgError::MissingResult)
        );
        assert!(matches!(
            Reply::parse(b"c d6:result"),
            Err(NgError::Decode(_))
        ));
    }

    #[test]
    fn query_stats_from_a_real_reply() {
        // Trimmed from what rtpengine 10.5 sent in a by-hand session.
        let data: &[u8] = b"c3 d7:createdi1795458898e10:created_usi338637e\
11:last signali1795458899e4:SSRCde4:tagsd3:ft1d3:tag3:ft1e3:tt1d3:tag3:tt1ee\
6:totalsd3:RTPd7:packetsi10e5:bytesi1720e6:errorsi1ee4:RTCPd7:packetsi2e5:bytesi80e6:errorsi0eee\
6:result2:oke";
        let r = Reply::parse(data).unwrap();
        assert_eq!(
            r.stats(),
            Some(CallStats {
                created: Some(1795458898),
                last_signal: Some(1795458899),
                tags: 2,
                rtp: PacketCounters {
                    packets: 10,
                    bytes: 1720,
                    errors: 1
                },
                rtcp: PacketCounters {
                    packets: 2,
                    bytes: 80,
                    errors: 0
                },
            })
        );
    }
}
