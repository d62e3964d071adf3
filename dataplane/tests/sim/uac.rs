//! A simulated caller: one RFC 3261 UAC per call, small on purpose. It sends
//! the INVITE (Timers A/B), cancels after a provisional when its plan says
//! so, ACKs every final, and on a 2xx holds the call, optionally re-INVITEs,
//! then hangs up with BYE (Timers E/F). A second 2xx (another destination
//! answering late) is ACKed and hung up at once.

use std::net::SocketAddr;

use dataplane::sip::{parse, Message};

use crate::msg;
use crate::{Ctx, Wake, PROXY_PUBLIC, T1, T2};

/// How a call ended, as the caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered, then ended by a BYE that got a 2xx (ours or the callee's).
    Completed,
    /// Answered; our BYE got this final instead.
    ByeFailed(u16),
    /// Answered; our BYE got no final at all (Timer F).
    ByeTimeout,
    /// A final failure to the INVITE.
    Failed(u16),
    /// 487 after our CANCEL.
    Cancelled,
    /// No response at all (Timer B).
    TimedOut,
    /// Not terminal when its guard expired: an invariant violation.
    Stuck,
}

/// What the caller will do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Encodes the callee's behaviour (see `uas::Behaviour`).
    pub user: String,
    /// CANCEL this long after the first provisional.
    pub cancel_after: Option<u64>,
    /// Talk this long after the 2xx before re-INVITE / BYE.
    pub hold: u64,
    pub reinvite: bool,
}

/// A non-INVITE (or re-INVITE) client transaction of the caller.
pub(crate) struct Ntx {
    pub(crate) bytes: Vec<u8>,
    pub(crate) branch: String,
    invite: bool,
    next: Option<u64>,
    interval: u64,
    deadline: u64,
}

impl Ntx {
    pub(crate) fn start(
        ctx: &mut Ctx,
        to: SocketAddr,
        from: SocketAddr,
        bytes: Vec<u8>,
        invite: bool,
    ) -> Ntx {
        ctx.send(from, to, bytes.clone());
        let branch = parse(&bytes).map(|m| msg::branch(&m)).unwrap_or_default();
        Ntx {
            bytes,
            branch,
            invite,
            next: Some(ctx.now + T1),
            interval: T1,
            deadline: ctx.now + 64 * T1,
        }
    }

    /// Retransmits when due; true when it timed out.
    pub(crate) fn tick(&mut self, ctx: &mut Ctx, from: SocketAddr, to: SocketAddr) -> bool {
        if ctx.now >= self.deadline {
            return true;
        }
        if self.next.is_some_and(|at| at <= ctx.now) {
            ctx.send(from, to, self.bytes.clone());
            self.interval = if self.invite {
                self.interval * 2
            } else {
                (self.interval * 2).min(T2)
            };
            self.next = Some(ctx.now + self.interval);
        }
        false
    }

    pub(crate) fn deadlines(&self) -> [Option<u64>; 2] {
        [self.next, Some(self.deadline)]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LegState {
    Confirmed,
    Ended,
}

/// One dialog the call's INVITE created.
struct Leg {
    to_tag: String,
    target: String,
    routes: Vec<String>,
    next_hop: SocketAddr,
    cseq: u32,
    /// The ACK of the initial 2xx, resent on its retransmissions.
    ack: Vec<u8>,
    /// The ACK of the last re-INVITE's 2xx and its CSeq.
    reinvite_ack: Option<(u32, Vec<u8>)>,
    state: LegState,
    pending: Option<Ntx>,
    pending_is_bye: bool,
    next_action: Option<u64>,
    reinvite_left: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inv {
    Calling,
    Proceeding,
    Done,
}

pub struct Call {
    pub idx: usize,
    pub call_id: String,
    me: SocketAddr,
    plan: Plan,
    invite: Vec<u8>,
    inv_branch: String,
    inv: Inv,
    a_next: Option<u64>,
    a_int: u64,
    b_at: u64,
    cancel_at: Option<u64>,
    cancel: Option<Ntx>,
    cancel_sent: bool,
    legs: Vec<Leg>,
    pub outcome: Option<Outcome>,
    pub answered: bool,
    guard_at: u64,
    scheduled: Option<u64>,
}

/// Nothing may take longer than this from the first INVITE to the last BYE.
const GUARD_MS: u64 = 400_000;

impl Call {
    pub fn new(idx: usize, me: SocketAddr, plan: Plan) -> Call {
        let call_id = format!("c{idx}@sim");
        let inv_branch = format!("z9hG4bK-c{idx}-inv");
        let invite = format!(
            "INVITE sip:{user}@{PROXY_PUBLIC} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={inv_branch}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=u{idx}\r\nTo: <sip:{user}@{PROXY_PUBLIC}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{me}>\r\nContent-Length: 0\r\n\r\n",
            user = plan.user
        )
        .into_bytes();
        Call {
            idx,
            call_id,
            me,
            plan,
            invite,
            inv_branch,
            inv: Inv::Calling,
            a_next: None,
            a_int: T1,
            b_at: 0,
            cancel_at: None,
            cancel: None,
            cancel_sent: false,
            legs: Vec::new(),
            outcome: None,
            answered: false,
            guard_at: 0,
            scheduled: None,
        }
    }

    /// Every dialog ended and an outcome known.
    pub fn is_terminal(&self) -> bool {
        self.outcome.is_some() && self.legs.iter().all(|l| l.state == LegState::Ended)
    }

    pub fn start(&mut self, ctx: &mut Ctx) {
        ctx.send(self.me, PROXY_PUBLIC, self.invite.clone());
        self.a_next = Some(ctx.now + T1);
        self.b_at = ctx.now + 64 * T1;
        self.guard_at = ctx.now + GUARD_MS;
        self.schedule(ctx);
    }

    pub fn on_message(&mut self, ctx: &mut Ctx, m: &Message<'_>) {
        if m.is_request() {
            self.on_request(ctx, m);
        } else {
            self.on_response(ctx, m);
        }
        self.schedule(ctx);
    }

    fn on_request(&mut self, ctx: &mut Ctx, m: &Message<'_>) {
        let from_tag = msg::from_tag(m).unwrap_or_default();
        let (_, method) = msg::cseq(m);
        let reply_to = msg::via_addr(m);
        let leg = self.legs.iter_mut().position(|l| l.to_tag == from_tag);
        match (method.as_str(), leg) {
            ("BYE", Some(i)) => {
                let tag = format!("u{}", self.idx);
                ctx.send(self.me, reply_to, msg::reply(m, 200, &tag, &[]));
                let primary = i == 0;
                let leg = &mut self.legs[i];
                if leg.state != LegState::Ended {
                    leg.state = LegState::Ended;
                    leg.pending = None;
                    leg.next_action = None;
                    if primary && self.outcome.is_none() {
                        self.outcome = Some(Outcome::Completed);
                    }
                }
            }
            ("ACK", _) => {}
            _ => {
                let tag = format!("u{}", self.idx);
                ctx.send(self.me, reply_to, msg::reply(m, 481, &tag, &[]));
            }
        }
    }

    fn on_response(&mut self, ctx: &mut Ctx, m: &Message<'_>) {
        let code = m.status().unwrap_or(0);
        let (seq, method) = msg::cseq(m);
        let branch = msg::branch(m);
        if method == "CANCEL" {
            if code >= 200 {
                self.cancel = None;
            }
            return;
        }
        if method == "INVITE" && seq == 1 {
            self.initial_response(ctx, m, code, &branch);
            return;
        }
        let tag = msg::to_tag(m).unwrap_or_default();
        let Some(i) = self.legs.iter().position(|l| l.to_tag == tag) else {
            return;
        };
        let me = self.me;
        let leg = &mut self.legs[i];
        // A retransmitted 2xx of a finished re-INVITE: ACK it again.
        if method == "INVITE" && (200..300).contains(&code) {
            if let Some((s, ack)) = &leg.reinvite_ack {
                if *s == seq {
                    ctx.send(me, leg.next_hop, ack.clone());
                    return;
                }
            }
        }
        let Some(p) = leg.pending.as_mut() else {
            return;
        };
        if p.branch != branch {
            return;
        }
        if code < 200 {
            if p.invite {
                p.next = None;
            }
            return;
        }
        let p = leg.pending.take().expect("pending checked");
        if leg.pending_is_bye {
            leg.state = LegState::Ended;
            if i == 0 && self.outcome.is_none() {
                self.outcome = Some(if (200..300).contains(&code) {
                    Outcome::Completed
                } else {
                    Outcome::ByeFailed(code)
                });
            }
            return;
        }
        // The re-INVITE's final: ACK it, hang up soon.
        if (200..300).contains(&code) {
            let ack = msg::in_dialog(
                "ACK",
                &leg.target,
                &leg.routes,
                me,
                &format!("z9hG4bK-c{}-ack{seq}", self.idx),
                (&format!("sip:caller@{me}"), &format!("u{}", self.idx)),
                ("sip:callee@sim", &leg.to_tag),
                &self.call_id,
                seq,
            );
            ctx.send(me, leg.next_hop, ack.clone());
            leg.reinvite_ack = Some((seq, ack));
        } else {
            ctx.send(me, leg.next_hop, msg::ack_for(&p.bytes, m));
        }
        leg.next_action = Some(ctx.now + 200);
    }

    fn initial_response(&mut self, ctx: &mut Ctx, m: &Message<'_>, code: u16, branch: &str) {
        if branch != self.inv_branch {
            return;
        }
        if code < 200 {
            if self.inv == Inv::Calling {
                self.inv = Inv::Proceeding;
                self.a_next = None;
                if let Some(after) = self.plan.cancel_after {
                    self.cancel_at = Some(ctx.now + after);
                }
            }
            return;
        }
        self.a_next = None;
        if code >= 300 {
            ctx.send(self.me, PROXY_PUBLIC, msg::ack_for(&self.invite, m));
            if self.inv != Inv::Done {
                self.inv = Inv::Done;
                self.cancel_at = None;
                if self.outcome.is_none() && self.legs.is_empty() {
                    self.outcome = Some(if code == 487 && self.cancel_sent {
                        Outcome::Cancelled
                    } else {
                        Outcome::Failed(code)
                    });
                }
            }
            return;
        }
        self.inv = Inv::Done;
        self.cancel_at = None;
        let tag = msg::to_tag(m).unwrap_or_default();
        if let Some(leg) = self.legs.iter().find(|l| l.to_tag == tag) {
            // A retransmitted 2xx: our ACK was lost.
            ctx.send(self.me, leg.next_hop, leg.ack.clone());
            return;
        }
        let mut routes = msg::record_routes(m);
        // A UAC's route set is the Record-Route in reverse (RFC 3261 §12.1.2).
        routes.reverse();
        let target = msg::header(m, dataplane::sip::HeaderName::Contact)
            .map(|c| msg::uri_of(&c))
            .unwrap_or_default();
        let next_hop = routes
            .first()
            .map(|r| msg::uri_addr(r))
            .unwrap_or_else(|| msg::uri_addr(&target));
        let me = self.me;
        let ack = msg::in_dialog(
            "ACK",
            &target,
            &routes,
            me,
            &format!("z9hG4bK-c{}-ack-{tag}", self.idx),
            (&format!("sip:caller@{me}"), &format!("u{}", self.idx)),
            ("sip:callee@sim", &tag),
            &self.call_id,
            1,
        );
        ctx.send(me, next_hop, ack.clone());
        // The first answer is the call; any later one (another destination
        // answering an attempt the proxy gave up on) is hung up at once, as
        // is an answer that raced our CANCEL or came after we gave up.
        let primary = self.legs.is_empty() && self.outcome.is_none();
        let hang_up_now = !primary || self.cancel_sent;
        if primary {
            self.answered = true;
        }
        self.legs.push(Leg {
            to_tag: tag,
            target,
            routes,
            next_hop,
            cseq: 1,
            ack,
            reinvite_ack: None,
            state: LegState::Confirmed,
            pending: None,
            pending_is_bye: false,
            next_action: Some(if hang_up_now {
                ctx.now
            } else {
                ctx.now + self.plan.hold
            }),
            reinvite_left: primary && !hang_up_now && self.plan.reinvite,
        });
    }

    pub fn wake(&mut self, ctx: &mut Ctx) {
        self.scheduled = None;
        let now = ctx.now;
        let me = self.me;
        if self.inv == Inv::Calling {
            if now >= self.b_at {
                self.inv = Inv::Done;
                self.a_next = None;
                if self.outcome.is_none() && self.legs.is_empty() {
                    self.outcome = Some(Outcome::TimedOut);
                }
            } else if self.a_next.is_some_and(|at| at <= now) {
                ctx.send(me, PROXY_PUBLIC, self.invite.clone());
                self.a_int *= 2;
                self.a_next = Some(now + self.a_int);
            }
        }
        if self.cancel_at.is_some_and(|at| at <= now) {
            self.cancel_at = None;
            if self.inv == Inv::Proceeding && !self.cancel_sent {
                self.cancel_sent = true;
                let c = msg::cancel_for(&self.invite);
                self.cancel = Some(Ntx::start(ctx, PROXY_PUBLIC, me, c, false));
            }
        }
        if let Some(c) = self.cancel.as_mut() {
            if c.tick(ctx, me, PROXY_PUBLIC) {
                self.cancel = None;
            }
        }
        for i in 0..self.legs.len() {
            let idx = self.idx;
            let call_id = self.call_id.clone();
            let leg = &mut self.legs[i];
            if leg.state == LegState::Ended {
                continue;
            }
            if let Some(p) = leg.pending.as_mut() {
                if p.tick(ctx, me, leg.next_hop) {
                    let bye = leg.pending_is_bye;
                    leg.pending = None;
                    if bye {
                        leg.state = LegState::Ended;
                        if i == 0 && self.outcome.is_none() {
                            self.outcome = Some(Outcome::ByeTimeout);
                        }
                        continue;
                    }
                    leg.next_action = Some(now);
                }
            }
            if leg.pending.is_none() && leg.next_action.is_some_and(|at| at <= now) {
                leg.next_action = None;
                leg.cseq += 1;
                let method = if leg.reinvite_left { "INVITE" } else { "BYE" };
                leg.reinvite_left = false;
                let req = msg::in_dialog(
                    method,
                    &leg.target,
                    &leg.routes,
                    me,
                    &format!("z9hG4bK-c{idx}-{}-{}", leg.to_tag, leg.cseq),
                    (&format!("sip:caller@{me}"), &format!("u{idx}")),
                    ("sip:callee@sim", &leg.to_tag),
                    &call_id,
                    leg.cseq,
                );
                leg.pending_is_bye = method == "BYE";
                leg.pending = Some(Ntx::start(ctx, leg.next_hop, me, req, method == "INVITE"));
            }
        }
        if now >= self.guard_at && !self.is_terminal() {
            self.outcome = Some(Outcome::Stuck);
            for l in &mut self.legs {
                l.state = LegState::Ended;
            }
        }
        self.schedule(ctx);
    }

    /// Asks for a wake-up at the earliest deadline (a stale one is harmless).
    fn schedule(&mut self, ctx: &mut Ctx) {
        let mut next: Option<u64> = None;
        let mut consider = |d: Option<u64>| {
            if let Some(d) = d {
                next = Some(next.map_or(d, |n: u64| n.min(d)));
            }
        };
        if self.inv == Inv::Calling {
            consider(self.a_next);
            consider(Some(self.b_at));
        }
        consider(self.cancel_at);
        if let Some(c) = &self.cancel {
            c.deadlines().into_iter().for_each(&mut consider);
        }
        for l in self.legs.iter().filter(|l| l.state != LegState::Ended) {
            consider(l.next_action);
            if let Some(p) = &l.pending {
                p.deadlines().into_iter().for_each(&mut consider);
            }
        }
        if !self.is_terminal() {
            consider(Some(self.guard_at));
        }
        if let Some(at) = next {
            if self.scheduled != Some(at) {
                self.scheduled = Some(at);
                ctx.wake(at.max(ctx.now), Wake::Call(self.idx));
            }
        }
    }
}
