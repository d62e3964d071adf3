//! Property tests: under random event sequences and random timer settings no
//! transaction machine panics, every action is one its state allows, the
//! Terminated state is absorbing, early timer calls are no-ops and a serviced
//! timer never asks to be serviced again at the same instant.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use dataplane::txn::{ClientAction as CA, ClientInvite, ClientInviteState as CI, ClientNonInvite};
use dataplane::txn::{ClientNonInviteState as CN, Reliability, ServerAction as SA, ServerInvite};
use dataplane::txn::{
    ServerInviteState as SI, ServerNonInvite, ServerNonInviteState as SN, TimerConfig,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Prov,
    Ok,
    Fail,
    Invalid,
}

fn class(c: u16) -> Class {
    match c {
        100..=199 => Class::Prov,
        200..=299 => Class::Ok,
        300..=699 => Class::Fail,
        _ => Class::Invalid,
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Advance(u64),
    /// on_timer at the current time (often early: must be a no-op then).
    Timer,
    /// Jump to the machine's next deadline and fire it.
    TimerAtDeadline,
    Response(u16),
    Cancel,
    Request,
    Ack,
    SendProvisional,
    SendFinal(u16),
}

fn code() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![
            100u16, 180, 183, 200, 202, 302, 404, 408, 486, 487, 503, 603
        ]),
        0u16..1000,
        any::<u16>(),
    ]
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => prop_oneof![0u64..600, 0u64..5_000, 0u64..200_000].prop_map(Ev::Advance),
        2 => Just(Ev::Timer),
        3 => Just(Ev::TimerAtDeadline),
        3 => code().prop_map(Ev::Response),
        1 => Just(Ev::Cancel),
        2 => Just(Ev::Request),
        1 => Just(Ev::Ack),
        1 => Just(Ev::SendProvisional),
        2 => code().prop_map(Ev::SendFinal),
    ]
}

fn cfg() -> impl Strategy<Value = (TimerConfig, Reliability)> {
    (
        1u64..2_000,
        1u64..8_000,
        0u64..5_000,
        0u64..200_000,
        any::<bool>(),
        any::<bool>(),
        0u64..40_000,
    )
        .prop_map(|(t1, t2, fr, fr_inv, restart, rel, wait)| {
            let ms = Duration::from_millis;
            (
                TimerConfig {
                    t1: ms(t1),
                    t2: ms(t2),
                    fr_timer: ms(fr),
                    fr_inv_timer: ms(fr_inv),
                    restart_fr_inv_on_each_reply: restart,
                    wait: ms(wait),
                },
                if rel {
                    Reliability::Reliable
                } else {
                    Reliability::Unreliable
                },
            )
        })
}

/// Shared timer checks: early calls change nothing, serviced deadlines move
/// into the future, and a reached deadline always produces an action.
macro_rules! timer_step {
    ($t:expr, $now:expr, $none:expr) => {{
        let pre_state = $t.state();
        let pre_deadline = $t.next_deadline();
        let a = $t.on_timer($now);
        if pre_deadline.map_or(true, |d| $now < d) {
            prop_assert_eq!(a, $none, "early/spurious timer must be a no-op");
            prop_assert_eq!($t.state(), pre_state);
            prop_assert_eq!($t.next_deadline(), pre_deadline);
        } else {
            prop_assert_ne!(a, $none, "deadline reached but nothing happened");
        }
        if let Some(d) = $t.next_deadline() {
            prop_assert!(d > $now, "timer would fire again at the same instant");
        }
        a
    }};
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn client_invite_never_misbehaves((cfg, rel) in cfg(), evs in prop::collection::vec(ev(), 0..48)) {
        let base = Instant::now();
        let mut now = base;
        let mut t = ClientInvite::new(now, &cfg, rel);
        let reliable = rel == Reliability::Reliable;
        for e in evs {
            let pre = t.state();
            let pre_timed_out = t.timed_out();
            let pre_cancel = (t.cancel_requested(), t.cancel_sent());
            match e {
                Ev::Advance(d) => now += Duration::from_millis(d),
                Ev::Timer | Ev::TimerAtDeadline => {
                    if matches!(e, Ev::TimerAtDeadline) {
                        if let Some(d) = t.next_deadline() { now = now.max(d); }
                    }
                    let a = timer_step!(t, now, CA::None);
                    let post = t.state();
                    let ok = match (pre, a) {
                        (_, CA::None) => post == pre,
                        (CI::Calling, CA::Retransmit) => post == CI::Calling && !reliable,
                        (CI::Calling, CA::Timeout) => post == CI::Terminated && t.timed_out(),
                        (CI::Proceeding, CA::TimeoutSendCancel) =>
                            post == CI::Proceeding && t.timed_out() && t.cancel_sent() && !pre_timed_out,
                        (CI::Proceeding, CA::Timeout) => post == CI::Terminated && pre_cancel.1 && !pre_timed_out,
                        (CI::Proceeding, CA::Terminated) => post == CI::Terminated && pre_timed_out,
                        (CI::Completed, CA::Terminated) => post == CI::Terminated,
                        _ => false,
                    };
                    prop_assert!(ok, "on_timer in {:?} gave {:?} -> {:?}", pre, a, post);
                }
                Ev::Response(c) => {
                    let pre_deadline = t.next_deadline();
                    let a = t.on_response(now, c);
                    let post = t.state();
                    let ok = match (pre, class(c), a) {
                        (_, Class::Invalid, CA::Absorb) => post == pre && t.next_deadline() == pre_deadline,
                        (CI::Calling, Class::Prov, CA::PassUp) => post == CI::Proceeding && pre_cancel != (true, false),
                        (CI::Calling, Class::Prov, CA::SendCancelAndPassUp) =>
                            post == CI::Proceeding && pre_cancel == (true, false) && t.cancel_sent(),
                        (CI::Proceeding, Class::Prov, CA::PassUp) => post == CI::Proceeding && !pre_timed_out,
                        (CI::Proceeding, Class::Prov, CA::Absorb) => post == CI::Proceeding && pre_timed_out,
                        (CI::Calling | CI::Proceeding, Class::Ok, CA::PassUp) => post == CI::Terminated,
                        (CI::Calling | CI::Proceeding, Class::Fail, CA::SendAckAndPassUp) =>
                            !pre_timed_out && post == if reliable { CI::Terminated } else { CI::Completed },
                        (CI::Proceeding, Class::Fail, CA::SendAck) =>
                            pre_timed_out && post == if reliable { CI::Terminated } else { CI::Completed },
                        (CI::Completed, Class::Fail, CA::SendAck) => post == CI::Completed,
                        (CI::Completed, Class::Ok, CA::PassUp) => post == CI::Completed,
                        (CI::Completed, Class::Prov, CA::Absorb) => post == CI::Completed,
                        (CI::Terminated, Class::Ok, CA::PassUp) => post == CI::Terminated,
                        (CI::Terminated, Class::Prov | Class::Fail, CA::Absorb) => post == CI::Terminated,
                        _ => false,
                    };
                    prop_assert!(ok, "{:?} + {} gave {:?} -> {:?}", pre, c, a, post);
                }
                Ev::Cancel => {
                    let send = t.request_cancel(now);
                    prop_assert_eq!(send, pre == CI::Proceeding && !pre_cancel.0);
                    prop_assert_eq!(t.state(), pre);
                    if send { prop_assert!(t.cancel_sent()); }
                }
                _ => {}
            }
            if pre == CI::Terminated { prop_assert_eq!(t.state(), CI::Terminated); }
            prop_assert_eq!(t.is_terminated(), t.next_deadline().is_none());
            if t.cancel_sent() && !t.is_terminated() {
                prop_assert!(t.next_deadline().is_some_and(|d| d <= now + cfg.t1 * 64 + Duration::from_secs(32)));
            }
        }
    }

    #[test]
    fn client_non_invite_never_misbehaves((cfg, rel) in cfg(), evs in prop::collection::vec(ev(), 0..48)) {
        let base = Instant::now();
        let mut now = base;
        let mut t = ClientNonInvite::new(now, &cfg, rel);
        let reliable = rel == Reliability::Reliable;
        for e in evs {
            let pre = t.state();
            match e {
                Ev::Advance(d) => now += Duration::from_millis(d),
                Ev::Timer | Ev::TimerAtDeadline => {
                    if matches!(e, Ev::TimerAtDeadline) {
                        if let Some(d) = t.next_deadline() { now = now.max(d); }
                    }
                    let a = timer_step!(t, now, CA::None);
                    let post = t.state();
                    let ok = match (pre, a) {
                        (_, CA::None) => post == pre,
                        (CN::Trying | CN::Proceeding, CA::Retransmit) => post == pre && !reliable,
                        (CN::Trying | CN::Proceeding, CA::Timeout) => post == CN::Terminated,
                        (CN::Completed, CA::Terminated) => post == CN::Terminated,
                        _ => false,
                    };
                    prop_assert!(ok, "on_timer in {:?} gave {:?} -> {:?}", pre, a, post);
                }
                Ev::Response(c) => {
                    let a = t.on_response(now, c);
                    let post = t.state();
                    let ok = match (pre, class(c), a) {
                        (_, Class::Invalid, CA::Absorb) => post == pre,
                        (CN::Trying | CN::Proceeding, Class::Prov, CA::PassUp) => post == CN::Proceeding,
                        (CN::Trying | CN::Proceeding, Class::Ok | Class::Fail, CA::PassUp) =>
                            post == if reliable { CN::Terminated } else { CN::Completed },
                        (CN::Completed | CN::Terminated, _, CA::Absorb) => post == pre,
                        _ => false,
                    };
                    prop_assert!(ok, "{:?} + {} gave {:?} -> {:?}", pre, c, a, post);
                }
                _ => {}
            }
            if pre == CN::Terminated { prop_assert_eq!(t.state(), CN::Terminated); }
            prop_assert_eq!(t.is_terminated(), t.next_deadline().is_none());
        }
    }

    #[test]
    fn server_invite_never_misbehaves((cfg, rel) in cfg(), evs in prop::collection::vec(ev(), 0..48)) {
        let base = Instant::now();
        let mut now = base;
        let mut t = ServerInvite::new(now, &cfg, rel);
        let reliable = rel == Reliability::Reliable;
        let mut sent_provisional = false;
        for e in evs {
            let pre = t.state();
            match e {
                Ev::Advance(d) => now += Duration::from_millis(d),
                Ev::Timer | Ev::TimerAtDeadline => {
                    if matches!(e, Ev::TimerAtDeadline) {
                        if let Some(d) = t.next_deadline() { now = now.max(d); }
                    }
                    let a = timer_step!(t, now, SA::None);
                    let post = t.state();
                    let ok = match (pre, a) {
                        (_, SA::None) => post == pre,
                        (SI::Completed, SA::RetransmitFinal) => post == SI::Completed && !reliable,
                        (SI::Completed, SA::AckTimeout) => post == SI::Terminated,
                        (SI::Confirmed | SI::Accepted, SA::Terminated) => post == SI::Terminated,
                        // The 100 Trying, once, only if nothing provisional went up.
                        (SI::Proceeding, SA::SendTrying) => post == pre && !sent_provisional,
                        _ => false,
                    };
                    prop_assert!(ok, "on_timer in {:?} gave {:?} -> {:?}", pre, a, post);
                    sent_provisional |= a == SA::SendTrying;
                }
                Ev::Request => {
                    let a = t.on_request(now);
                    let ok = match (pre, a) {
                        (SI::Proceeding, SA::ResendLast) => sent_provisional,
                        (SI::Proceeding, SA::SendTrying) => !sent_provisional,
                        (SI::Completed, SA::ResendLast) => true,
                        (SI::Confirmed | SI::Accepted | SI::Terminated, SA::Absorb) => true,
                        _ => false,
                    };
                    prop_assert!(ok && t.state() == pre, "INVITE retransmission in {:?} gave {:?}", pre, a);
                    sent_provisional |= a == SA::SendTrying;
                }
                Ev::Ack => {
                    let a = t.on_ack(now);
                    let post = t.state();
                    let ok = match (pre, a) {
                        (SI::Completed, SA::AckReceived) =>
                            post == if reliable { SI::Terminated } else { SI::Confirmed },
                        (SI::Accepted, SA::PassUp) => post == pre,
                        (SI::Proceeding | SI::Confirmed | SI::Terminated, SA::Absorb) => post == pre,
                        _ => false,
                    };
                    prop_assert!(ok, "ACK in {:?} gave {:?} -> {:?}", pre, a, post);
                }
                Ev::SendProvisional => {
                    let ok = t.send_provisional();
                    prop_assert_eq!(ok, pre == SI::Proceeding);
                    sent_provisional |= ok;
                    prop_assert_eq!(t.state(), pre);
                }
                Ev::SendFinal(c) => {
                    let send = t.send_final(now, c);
                    let post = t.state();
                    let ok = match (pre, class(c), send) {
                        (SI::Proceeding, Class::Ok, true) => post == SI::Accepted,
                        (SI::Proceeding, Class::Fail, true) => post == SI::Completed,
                        (_, Class::Ok, true) => post == pre,
                        (_, _, false) => post == pre && !(pre == SI::Proceeding && matches!(class(c), Class::Ok | Class::Fail)),
                        _ => false,
                    };
                    prop_assert!(ok, "send_final({}) in {:?} gave {} -> {:?}", c, pre, send, post);
                }
                Ev::Response(_) | Ev::Cancel => {}
            }
            if pre == SI::Terminated { prop_assert_eq!(t.state(), SI::Terminated); }
            if t.state() == SI::Proceeding {
                // Only the 100 Trying timer, until a provisional went up.
                prop_assert_eq!(t.next_deadline().is_some(), !sent_provisional);
            } else if t.is_terminated() {
                prop_assert!(t.next_deadline().is_none());
            } else {
                prop_assert!(t.next_deadline().is_some());
            }
        }
    }

    #[test]
    fn server_non_invite_never_misbehaves((cfg, rel) in cfg(), evs in prop::collection::vec(ev(), 0..48)) {
        let base = Instant::now();
        let mut now = base;
        let mut t = ServerNonInvite::new(now, &cfg, rel);
        let reliable = rel == Reliability::Reliable;
        for e in evs {
            let pre = t.state();
            match e {
                Ev::Advance(d) => now += Duration::from_millis(d),
                Ev::Timer | Ev::TimerAtDeadline => {
                    if matches!(e, Ev::TimerAtDeadline) {
                        if let Some(d) = t.next_deadline() { now = now.max(d); }
                    }
                    let a = timer_step!(t, now, SA::None);
                    let ok = match (pre, a) {
                        (_, SA::None) => t.state() == pre,
                        (SN::Completed, SA::Terminated) => t.is_terminated(),
                        _ => false,
                    };
                    prop_assert!(ok, "on_timer in {:?} gave {:?}", pre, a);
                }
                Ev::Request => {
                    let a = t.on_request(now);
                    let ok = matches!(
                        (pre, a),
                        (SN::Proceeding | SN::Completed, SA::ResendLast) | (SN::Trying | SN::Terminated, SA::Absorb)
                    );
                    prop_assert!(ok && t.state() == pre, "retransmission in {:?} gave {:?}", pre, a);
                }
                Ev::SendProvisional => {
                    let ok = t.send_provisional();
                    prop_assert_eq!(ok, matches!(pre, SN::Trying | SN::Proceeding));
                    if ok { prop_assert_eq!(t.state(), SN::Proceeding); } else { prop_assert_eq!(t.state(), pre); }
                }
                Ev::SendFinal(c) => {
                    let is_final = matches!(class(c), Class::Ok | Class::Fail);
                    let send = t.send_final(now, c);
                    prop_assert_eq!(send, is_final && matches!(pre, SN::Trying | SN::Proceeding));
                    if send {
                        prop_assert_eq!(t.state(), if reliable { SN::Terminated } else { SN::Completed });
                    } else {
                        prop_assert_eq!(t.state(), pre);
                    }
                }
                Ev::Response(_) | Ev::Cancel | Ev::Ack => {}
            }
            if pre == SN::Terminated { prop_assert_eq!(t.state(), SN::Terminated); }
            prop_assert_eq!(t.next_deadline().is_some(), t.state() == SN::Completed);
        }
    }
}
