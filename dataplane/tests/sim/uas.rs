//! A simulated destination: a small RFC 3261 UAS. What it does with a call
//! is written in the Request-URI user part by the caller's plan
//! (`sim.KIND.RING.ANSWER.HANGUP`), so every destination a call fails over
//! to behaves the same; the destination's own [`Mode`] adds what is a
//! property of the server (slow to answer anything, refusing everything).

use std::collections::HashMap;
use std::net::SocketAddr;

use dataplane::sip::{parse, HeaderName, Message};

use crate::msg;
use crate::uac::Ntx;
use crate::{Ctx, Wake, T1, T2};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Every first response comes this many ms late (beyond fr_timer: the
    /// proxy gives up on it, then it rings).
    Slow(u64),
    /// Answers every INVITE 503 at once.
    Refuse503,
}

/// A call's behaviour, from the Request-URI user part.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// 'O' answer, 'B' 486, 'E' 500, 'U' 503, 'N' 404, 'R' ring forever,
    /// 'S' silent (never a response).
    pub kind: char,
    /// ms until 180 (0: none).
    pub ring: u64,
    /// ms from then until the final.
    pub answer: u64,
    /// ms after the 2xx until the callee hangs up (0: never).
    pub hangup: u64,
}

impl Behaviour {
    pub fn user(&self) -> String {
        format!(
            "sim.{}.{}.{}.{}",
            self.kind, self.ring, self.answer, self.hangup
        )
    }

    fn of(ruri: &[u8]) -> Behaviour {
        let s = String::from_utf8_lossy(ruri);
        let user = s.trim_start_matches("sip:").split('@').next().unwrap_or("");
        let mut p = user.split('.').skip(1);
        let kind = p.next().and_then(|k| k.chars().next()).unwrap_or('O');
        let mut n = || p.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        Behaviour {
            kind,
            ring: n(),
            answer: n(),
            hangup: n(),
        }
    }

    fn final_code(&self) -> Option<u16> {
        match self.kind {
            'O' => Some(200),
            'B' => Some(486),
            'E' => Some(500),
            'U' => Some(503),
            'N' => Some(404),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SState {
    Proceeding,
    /// Non-2xx final sent, waiting for the ACK (Timers G/H).
    Completed,
    /// 2xx sent, retransmitted until the ACK.
    Accepted,
    Done,
}

/// A server INVITE transaction.
struct Sit {
    branch: String,
    cseq: u32,
    req: Vec<u8>,
    state: SState,
    last: Option<Vec<u8>>,
    rang: bool,
    trying_at: Option<u64>,
    ring_at: Option<u64>,
    final_at: Option<u64>,
    final_code: Option<u16>,
    g_next: Option<u64>,
    g_int: u64,
    h_at: Option<u64>,
    hangup: u64,
    /// Forgotten after this, once done.
    expire: u64,
}

struct UDialog {
    local_tag: String,
    remote_tag: String,
    target: String,
    routes: Vec<String>,
    next_hop: SocketAddr,
    confirmed: bool,
    ended: bool,
    bye: Option<Ntx>,
    bye_at: Option<u64>,
    cseq: u32,
}

#[derive(Default)]
struct UCall {
    invites: Vec<Sit>,
    /// Non-INVITE server transactions: (branch, method, response, expiry).
    nits: Vec<(String, String, Vec<u8>, u64)>,
    dialog: Option<UDialog>,
    scheduled: Option<u64>,
}

/// What a destination saw, for the report.
#[derive(Default, Debug, Clone, Copy)]
pub struct UasStats {
    pub invites: u64,
    pub cancels: u64,
    pub answered: u64,
    pub byes_in: u64,
    pub byes_out: u64,
    pub h_timeouts: u64,
    pub unacked_2xx: u64,
}

pub struct Uas {
    pub addr: SocketAddr,
    pub mode: Mode,
    calls: HashMap<String, UCall>,
    pub stats: UasStats,
}

impl Uas {
    pub fn new(addr: SocketAddr, mode: Mode) -> Uas {
        Uas {
            addr,
            mode,
            calls: HashMap::new(),
            stats: UasStats::default(),
        }
    }

    /// INVITEs that rang and never got a final, by (Call-ID, branch).
    pub fn ringing(&self) -> Vec<(String, String)> {
        self.calls
            .iter()
            .flat_map(|(id, c)| {
                c.invites
                    .iter()
                    .filter(|s| s.state == SState::Proceeding && s.rang)
                    .map(|s| (id.clone(), s.branch.clone()))
            })
            .collect()
    }

    /// Dialogs neither side ended.
    pub fn open_dialogs(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|(_, c)| c.dialog.as_ref().is_some_and(|d| !d.ended))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn on_message(&mut self, ctx: &mut Ctx, m: &Message<'_>) {
        if !m.is_request() {
            self.on_response(ctx, m);
            return;
        }
        let call_id = msg::call_id(m);
        let (seq, method) = msg::cseq(m);
        let branch = msg::branch(m);
        let reply_to = msg::via_addr(m);
        let (me, mode) = (self.addr, self.mode);
        let local_tag = format!("s{}-{}", me.port(), call_id);
        let call = self.calls.entry(call_id.clone()).or_default();
        let in_dialog = msg::to_tag(m).is_some();
        match method.as_str() {
            "INVITE" => {
                if let Some(s) = call.invites.iter().find(|s| s.branch == branch) {
                    if let Some(last) = &s.last {
                        ctx.send(me, reply_to, last.clone());
                    }
                } else if in_dialog {
                    if call.dialog.as_ref().is_none_or(|d| d.ended) {
                        ctx.send(me, reply_to, msg::reply(m, 481, &local_tag, &[]));
                    } else {
                        let ok = answer(m, 200, &local_tag, me);
                        ctx.send(me, reply_to, ok.clone());
                        call.invites.push(Sit {
                            branch,
                            cseq: seq,
                            req: m.buf().to_vec(),
                            state: SState::Accepted,
                            last: Some(ok),
                            rang: false,
                            trying_at: None,
                            ring_at: None,
                            final_at: None,
                            final_code: Some(200),
                            g_next: Some(ctx.now + T1),
                            g_int: T1,
                            h_at: Some(ctx.now + 64 * T1),
                            hangup: 0,
                            expire: u64::MAX,
                        });
                    }
                } else {
                    self.stats.invites += 1;
                    let b = Behaviour::of(m.request_uri().unwrap_or(b""));
                    let late = match mode {
                        Mode::Slow(ms) => ms,
                        _ => 0,
                    };
                    let now = ctx.now;
                    let mut s = Sit {
                        branch,
                        cseq: seq,
                        req: m.buf().to_vec(),
                        state: SState::Proceeding,
                        last: None,
                        rang: false,
                        trying_at: None,
                        ring_at: None,
                        final_at: None,
                        final_code: None,
                        g_next: None,
                        g_int: T1,
                        h_at: None,
                        hangup: b.hangup,
                        expire: u64::MAX,
                    };
                    if mode == Mode::Refuse503 {
                        s.final_code = Some(503);
                        s.final_at = Some(now);
                    } else if b.kind != 'S' {
                        s.trying_at = Some(now + late);
                        s.ring_at = (b.ring > 0).then_some(now + late + b.ring);
                        s.final_code = b.final_code();
                        s.final_at = s.final_code.map(|_| now + late + b.ring + b.answer);
                    }
                    call.invites.push(s);
                }
            }
            "ACK" => {
                let tag = msg::to_tag(m);
                for s in call.invites.iter_mut() {
                    let hop = s.state == SState::Completed && s.branch == branch;
                    let e2e = s.state == SState::Accepted
                        && s.cseq == seq
                        && tag.as_deref() == Some(local_tag.as_str());
                    if hop || e2e {
                        s.state = SState::Done;
                        s.g_next = None;
                        s.h_at = None;
                        s.expire = ctx.now + 64 * T1;
                        if e2e {
                            if let Some(d) = call.dialog.as_mut() {
                                d.confirmed = true;
                            }
                        }
                    }
                }
            }
            _ => {
                if let Some(n) = call.nits.iter().find(|n| n.0 == branch && n.1 == method) {
                    ctx.send(me, reply_to, n.2.clone());
                    return;
                }
                let resp = match method.as_str() {
                    "CANCEL" => {
                        self.stats.cancels += 1;
                        match call.invites.iter_mut().find(|s| s.branch == branch) {
                            Some(s) => {
                                if s.state == SState::Proceeding {
                                    let inv = parse(&s.req).expect("kept INVITE parses");
                                    let r = msg::reply(&inv, 487, &local_tag, &[]);
                                    ctx.send(me, reply_to, r.clone());
                                    s.last = Some(r);
                                    s.state = SState::Completed;
                                    s.trying_at = None;
                                    s.ring_at = None;
                                    s.final_at = None;
                                    s.g_next = Some(ctx.now + T1);
                                    s.g_int = T1;
                                    s.h_at = Some(ctx.now + 64 * T1);
                                }
                                msg::reply(m, 200, &local_tag, &[])
                            }
                            None => msg::reply(m, 481, &local_tag, &[]),
                        }
                    }
                    "BYE" => match call.dialog.as_mut() {
                        Some(d) if msg::to_tag(m).as_deref() == Some(d.local_tag.as_str()) => {
                            self.stats.byes_in += 1;
                            d.ended = true;
                            d.bye_at = None;
                            msg::reply(m, 200, &local_tag, &[])
                        }
                        _ => msg::reply(m, 481, &local_tag, &[]),
                    },
                    _ => msg::reply(m, 200, &local_tag, &[]),
                };
                ctx.send(me, reply_to, resp.clone());
                call.nits.push((branch, method, resp, ctx.now + 64 * T1));
            }
        }
        self.schedule(ctx, &call_id);
    }

    /// Responses to the BYEs this destination sends.
    fn on_response(&mut self, ctx: &mut Ctx, m: &Message<'_>) {
        let call_id = msg::call_id(m);
        let Some(d) = self.calls.get_mut(&call_id).and_then(|c| c.dialog.as_mut()) else {
            return;
        };
        let branch = msg::branch(m);
        if m.status().unwrap_or(0) >= 200 && d.bye.as_ref().is_some_and(|b| b.branch == branch) {
            d.bye = None;
            d.ended = true;
        }
        self.schedule(ctx, &call_id);
    }

    pub fn wake(&mut self, ctx: &mut Ctx, call_id: &str) {
        let (me, now) = (self.addr, ctx.now);
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.scheduled = None;
        let local_tag = format!("s{}-{}", me.port(), call_id);
        let mut new_dialog = None;
        for s in call.invites.iter_mut() {
            let inv = parse(&s.req).expect("kept INVITE parses");
            let to = msg::via_addr(&inv);
            if s.state == SState::Proceeding {
                if s.trying_at.is_some_and(|t| t <= now) {
                    s.trying_at = None;
                    let r = msg::reply(&inv, 100, &local_tag, &[]);
                    ctx.send(me, to, r.clone());
                    s.last = Some(r);
                }
                if s.ring_at.is_some_and(|t| t <= now) {
                    s.ring_at = None;
                    let r = msg::reply(&inv, 180, &local_tag, &[]);
                    ctx.send(me, to, r.clone());
                    s.last = Some(r);
                    s.rang = true;
                }
                if let (Some(t), Some(code)) = (s.final_at, s.final_code) {
                    if t <= now {
                        s.final_at = None;
                        s.trying_at = None;
                        s.ring_at = None;
                        let r = if code < 300 {
                            answer(&inv, code, &local_tag, me)
                        } else {
                            msg::reply(&inv, code, &local_tag, &[])
                        };
                        ctx.send(me, to, r.clone());
                        s.last = Some(r);
                        s.state = if code < 300 {
                            SState::Accepted
                        } else {
                            SState::Completed
                        };
                        s.g_next = Some(now + T1);
                        s.g_int = T1;
                        s.h_at = Some(now + 64 * T1);
                        if code < 300 {
                            self.stats.answered += 1;
                            new_dialog = Some((dialog_of(&inv, &local_tag), s.hangup));
                        }
                    }
                }
            }
            if matches!(s.state, SState::Completed | SState::Accepted) {
                if s.h_at.is_some_and(|t| t <= now) {
                    if s.state == SState::Completed {
                        self.stats.h_timeouts += 1;
                    } else if s.cseq == 1 {
                        self.stats.unacked_2xx += 1;
                        // RFC 3261 §13.3.1.4: a 2xx never ACKed ends the dialog with a BYE.
                        if let Some(d) = call.dialog.as_mut() {
                            if !d.confirmed && !d.ended && d.bye.is_none() {
                                d.bye_at = Some(now);
                            }
                        }
                    }
                    s.state = SState::Done;
                    s.g_next = None;
                    s.h_at = None;
                    s.expire = now + 64 * T1;
                } else if s.g_next.is_some_and(|t| t <= now) {
                    if let Some(last) = &s.last {
                        ctx.send(me, to, last.clone());
                    }
                    s.g_int = (s.g_int * 2).min(T2);
                    s.g_next = Some(now + s.g_int);
                }
            }
        }
        if let Some((mut d, hangup)) = new_dialog {
            if call.dialog.is_none() {
                d.bye_at = (hangup > 0).then_some(now + hangup);
                call.dialog = Some(d);
            }
        }
        if let Some(d) = call.dialog.as_mut() {
            if !d.ended && d.bye.is_none() && d.bye_at.is_some_and(|t| t <= now) {
                d.bye_at = None;
                d.cseq += 1;
                let bye = msg::in_dialog(
                    "BYE",
                    &d.target,
                    &d.routes,
                    me,
                    &format!("z9hG4bK-{local_tag}-bye{}", d.cseq),
                    ("sip:callee@sim", &d.local_tag),
                    ("sip:caller@sim", &d.remote_tag),
                    call_id,
                    d.cseq,
                );
                self.stats.byes_out += 1;
                d.bye = Some(Ntx::start(ctx, d.next_hop, me, bye, false));
            }
            let next_hop = d.next_hop;
            if let Some(b) = d.bye.as_mut() {
                if b.tick(ctx, me, next_hop) {
                    d.bye = None;
                    d.ended = true;
                }
            }
        }
        call.invites.retain(|s| s.expire > now);
        call.nits.retain(|n| n.3 > now);
        let finished = call.invites.is_empty()
            && call.nits.is_empty()
            && call
                .dialog
                .as_ref()
                .is_none_or(|d| d.ended && d.bye.is_none());
        if finished {
            self.calls.remove(call_id);
            return;
        }
        self.schedule(ctx, call_id);
    }

    fn schedule(&mut self, ctx: &mut Ctx, call_id: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let mut next: Option<u64> = None;
        let mut consider = |d: Option<u64>| {
            if let Some(d) = d {
                next = Some(next.map_or(d, |n: u64| n.min(d)));
            }
        };
        for s in &call.invites {
            consider(s.trying_at);
            consider(s.ring_at);
            consider(s.final_at);
            consider(s.g_next);
            consider(s.h_at);
            consider((s.expire != u64::MAX).then_some(s.expire));
        }
        for n in &call.nits {
            consider(Some(n.3));
        }
        if let Some(d) = &call.dialog {
            consider(d.bye_at);
            if let Some(b) = &d.bye {
                b.deadlines().into_iter().for_each(&mut consider);
            }
        }
        if let Some(at) = next {
            if call.scheduled != Some(at) {
                call.scheduled = Some(at);
                ctx.wake(at.max(ctx.now), Wake::Uas(self.addr, call_id.to_owned()));
            }
        }
    }
}

/// A 2xx with the Record-Route copied and our Contact (RFC 3261 §12.1.1).
fn answer(req: &Message<'_>, code: u16, tag: &str, me: SocketAddr) -> Vec<u8> {
    let rr: Vec<Vec<u8>> = req
        .values(HeaderName::RecordRoute)
        .map(<[u8]>::to_vec)
        .collect();
    let contact = format!("<sip:callee@{me}>").into_bytes();
    let mut extra: Vec<(&[u8], &[u8])> = rr
        .iter()
        .map(|v| (b"Record-Route".as_slice(), v.as_slice()))
        .collect();
    extra.push((b"Contact", &contact));
    msg::reply(req, code, tag, &extra)
}

/// The UAS side of the dialog an INVITE's 2xx creates.
fn dialog_of(inv: &Message<'_>, local_tag: &str) -> UDialog {
    let routes = msg::record_routes(inv);
    let target = msg::header(inv, HeaderName::Contact)
        .map(|c| msg::uri_of(&c))
        .unwrap_or_default();
    let next_hop = routes
        .first()
        .map(|r| msg::uri_addr(r))
        .unwrap_or_else(|| msg::uri_addr(&target));
    UDialog {
        local_tag: local_tag.to_owned(),
        remote_tag: msg::from_tag(inv).unwrap_or_default(),
        target,
        routes,
        next_hop,
        confirmed: false,
        ended: false,
        bye: None,
        bye_at: None,
        cseq: 0,
    }
}
