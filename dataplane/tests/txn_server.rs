//! Server transaction transitions, driven with a synthetic clock.

use std::time::{Duration, Instant};

use dataplane::txn::{Reliability, ServerAction as A, ServerInvite, ServerInviteState as SI};
use dataplane::txn::{ServerNonInvite, ServerNonInviteState as SN, TimerConfig, TRYING_DELAY};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

const UDP: Reliability = Reliability::Unreliable;
const TCP: Reliability = Reliability::Reliable;

fn run(t: &mut ServerInvite, base: Instant, until: Duration) -> Vec<(u64, A)> {
    let mut out = Vec::new();
    while let Some(d) = t.next_deadline() {
        if d > base + until {
            break;
        }
        let a = t.on_timer(d);
        assert_ne!(a, A::None, "a deadline was reached but nothing happened");
        out.push(((d - base).as_millis() as u64, a));
    }
    out
}

// ---------------------------------------------------------------- INVITE

#[test]
fn proceeding_resends_the_last_provisional() {
    let base = Instant::now();
    let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(t.state(), SI::Proceeding);
    assert!(t.send_provisional(), "180 relayed at once");
    assert_eq!(t.next_deadline(), None, "no 100 Trying due any more");
    assert_eq!(t.on_request(base + ms(500)), A::ResendLast);
    assert!(t.send_provisional(), "183 relayed");
    assert_eq!(t.on_request(base + ms(600)), A::ResendLast);
    assert_eq!(t.on_ack(base + ms(700)), A::Absorb, "ACK before any final");
    assert_eq!(t.on_timer(base + s(1000)), A::None);
    assert_eq!(t.state(), SI::Proceeding);
}

/// RFC 3261 §17.2.1: 100 Trying only if no provisional within 200 ms.
#[test]
fn trying_is_due_200_ms_after_the_invite_unless_a_provisional_went_first() {
    let base = Instant::now();
    let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(t.next_deadline(), Some(base + TRYING_DELAY));
    assert_eq!(TRYING_DELAY, ms(200));
    assert_eq!(t.on_timer(base + ms(199)), A::None);
    assert_eq!(t.on_timer(base + ms(200)), A::SendTrying);
    assert_eq!(t.next_deadline(), None, "once");
    assert_eq!(t.on_timer(base + ms(400)), A::None);
    assert_eq!(t.on_request(base + ms(500)), A::ResendLast, "the 100 again");

    // A provisional within 200 ms: no 100 at all.
    let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
    assert!(t.send_provisional());
    assert_eq!(run(&mut t, base, s(40)), vec![]);

    // A final within 200 ms: no 100 either, straight to its own timers.
    for (code, first) in [
        (200, (5000, A::Terminated)),
        (486, (500, A::RetransmitFinal)),
    ] {
        let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
        assert!(t.send_final(base + ms(50), code));
        let got = run(&mut t, base, s(40));
        assert_eq!(got[0], (first.0 + 50, first.1), "{code}: {got:?}");
        assert!(
            !got.iter().any(|(_, a)| *a == A::SendTrying),
            "{code}: {got:?}"
        );
    }

    // The caller retransmits before 200 ms: the 100 goes at once, once.
    let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(t.on_request(base + ms(100)), A::SendTrying);
    assert_eq!(t.on_timer(base + ms(200)), A::None);
    assert_eq!(t.on_request(base + ms(150)), A::ResendLast);
}

#[test]
fn timer_g_retransmits_final_until_timer_h() {
    let base = Instant::now();
    let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
    t.send_provisional();
    assert!(t.send_final(base, 486));
    assert_eq!(t.state(), SI::Completed);
    let got = run(&mut t, base, s(100));
    let times: Vec<u64> = got.iter().map(|&(t, _)| t).collect();
    assert_eq!(
        times,
        vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500, 32000],
        "G: T1 doubling capped at T2; H = 64·T1"
    );
    assert!(got[..10].iter().all(|&(_, a)| a == A::RetransmitFinal));
    assert_eq!(got[10].1, A::AckTimeout, "terminated without an ACK");
    assert!(t.is_terminated());
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn completed_resends_final_and_ack_confirms() {
    let base = Instant::now();
    let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
    assert!(t.send_final(base, 503));
    assert_eq!(
        t.on_request(base + ms(100)),
        A::ResendLast,
        "retransmitted INVITE: resend final"
    );
    assert!(!t.send_provisional(), "no provisional after a final");
    assert!(!t.send_final(base, 486), "only one non-2xx final");
    assert_eq!(t.on_timer(base + ms(499)), A::None);
    assert_eq!(t.on_timer(base + ms(500)), A::RetransmitFinal);
    assert_eq!(t.on_ack(base + ms(800)), A::AckReceived);
    assert_eq!(t.state(), SI::Confirmed);
    assert_eq!(
        t.next_deadline(),
        Some(base + ms(800) + s(5)),
        "Timer I = wait; G and H stopped"
    );
    assert_eq!(
        t.on_ack(base + s(1)),
        A::Absorb,
        "ACK retransmission absorbed"
    );
    assert_eq!(t.on_request(base + s(1)), A::Absorb);
    assert_eq!(t.on_timer(base + s(5)), A::None);
    assert_eq!(t.on_timer(base + ms(5800)), A::Terminated);
    assert_eq!(t.on_ack(base + s(6)), A::Absorb);
    assert_eq!(t.on_request(base + s(6)), A::Absorb);
}

#[test]
fn accepted_absorbs_invite_retransmissions_rfc6026() {
    let base = Instant::now();
    let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
    t.send_provisional();
    assert!(t.send_final(base + s(1), 200));
    assert_eq!(t.state(), SI::Accepted);
    assert_eq!(
        t.next_deadline(),
        Some(base + s(6)),
        "Timer L = wt_timer (5 s), no Timer G for 2xx"
    );
    assert_eq!(
        t.on_request(base + s(2)),
        A::Absorb,
        "the UAS retransmits its 2xx, not us"
    );
    assert_eq!(
        t.on_ack(base + s(2)),
        A::PassUp,
        "ACK for 2xx is routed end to end"
    );
    assert!(
        t.send_final(base + s(3), 200),
        "further 2xx (forking) are relayed"
    );
    assert!(!t.send_final(base + s(3), 486), "no non-2xx after a 2xx");
    assert!(!t.send_provisional());
    assert_eq!(t.state(), SI::Accepted);
    assert_eq!(run(&mut t, base, s(100)), vec![(6_000, A::Terminated)]);
}

#[test]
fn two_xx_after_non_2xx_final_is_still_sent() {
    let base = Instant::now();
    let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
    t.send_final(base, 603);
    assert!(t.send_final(base + s(1), 200));
    assert_eq!(
        t.state(),
        SI::Completed,
        "the 2xx does not change the transaction"
    );
    t.on_ack(base + s(1));
    assert!(t.send_final(base + s(2), 200));
    assert_eq!(t.state(), SI::Confirmed);
}

#[test]
fn server_invite_reliable() {
    let base = Instant::now();
    let mut t = ServerInvite::new(base, &TimerConfig::default(), TCP);
    t.send_final(base, 404);
    assert_eq!(
        t.next_deadline(),
        Some(base + s(32)),
        "no Timer G, Timer H still runs"
    );
    assert_eq!(t.on_ack(base + s(1)), A::AckReceived);
    assert!(t.is_terminated(), "Timer I = 0");

    let mut t = ServerInvite::new(base, &TimerConfig::default(), TCP);
    t.send_final(base, 404);
    assert_eq!(run(&mut t, base, s(100)), vec![(32_000, A::AckTimeout)]);
}

#[test]
fn server_invite_rejects_non_final_codes() {
    let base = Instant::now();
    let mut t = ServerInvite::new(base, &TimerConfig::default(), UDP);
    for code in [0, 99, 100, 183, 700] {
        assert!(!t.send_final(base, code));
    }
    assert_eq!(t.state(), SI::Proceeding);
}

// ------------------------------------------------------------ non-INVITE

#[test]
fn non_invite_trying_proceeding_completed_terminated() {
    let base = Instant::now();
    let mut t = ServerNonInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(t.state(), SN::Trying);
    assert_eq!(
        t.on_request(base),
        A::Absorb,
        "Trying: retransmissions discarded"
    );
    assert!(t.send_provisional());
    assert_eq!(t.state(), SN::Proceeding);
    assert_eq!(t.on_request(base + ms(10)), A::ResendLast);
    assert!(t.send_provisional());
    assert_eq!(t.next_deadline(), None);
    assert!(t.send_final(base + s(1), 200));
    assert_eq!(t.state(), SN::Completed);
    assert_eq!(
        t.next_deadline(),
        Some(base + s(6)),
        "Timer J = wt_timer (5 s)"
    );
    assert_eq!(t.on_request(base + s(2)), A::ResendLast, "resend final");
    assert!(!t.send_final(base + s(2), 500));
    assert!(!t.send_provisional());
    assert_eq!(t.on_timer(base + s(5)), A::None);
    assert_eq!(t.on_timer(base + s(6)), A::Terminated);
    assert!(t.is_terminated());
    assert_eq!(t.on_request(base + s(7)), A::Absorb);
    assert_eq!(t.on_timer(base + s(34)), A::None);
}

#[test]
fn non_invite_final_straight_from_trying() {
    let base = Instant::now();
    let mut t = ServerNonInvite::new(base, &TimerConfig::default(), UDP);
    assert!(!t.send_final(base, 100));
    assert!(!t.send_final(base, 42));
    assert!(t.send_final(base, 404));
    assert_eq!(t.state(), SN::Completed);
}

#[test]
fn non_invite_reliable_terminates_on_final() {
    let base = Instant::now();
    let mut t = ServerNonInvite::new(base, &TimerConfig::default(), TCP);
    assert!(t.send_final(base, 200));
    assert!(t.is_terminated(), "Timer J = 0");
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn timer_i_follows_the_configured_wait_timer() {
    let cfg = TimerConfig {
        wait: ms(1500),
        ..TimerConfig::default()
    };
    let base = Instant::now();
    let mut t = ServerInvite::new(base, &cfg, UDP);
    assert!(t.send_final(base, 486));
    assert_eq!(t.on_ack(base + ms(100)), A::AckReceived);
    assert_eq!(t.next_deadline(), Some(base + ms(1600)), "Timer I = wait");
    assert_eq!(t.on_timer(base + ms(1600)), A::Terminated);
}
