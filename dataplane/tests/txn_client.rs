//! Client transaction transitions, driven with a synthetic clock.

use std::time::{Duration, Instant};

use dataplane::txn::{ClientAction as A, ClientInvite, ClientInviteState as CI, ClientNonInvite};
use dataplane::txn::{ClientNonInviteState as CN, Reliability, TimerConfig};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

const UDP: Reliability = Reliability::Unreliable;
const TCP: Reliability = Reliability::Reliable;

fn long_fr() -> TimerConfig {
    TimerConfig {
        fr_timer: s(100),
        ..TimerConfig::default()
    }
}

/// Drives `on_timer` at each `next_deadline` until `until`, returning
/// (offset from base in ms, action) for every non-None action.
fn run_inv(t: &mut ClientInvite, base: Instant, until: Duration) -> Vec<(u64, A)> {
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

fn run_nict(t: &mut ClientNonInvite, base: Instant, until: Duration) -> Vec<(u64, A)> {
    let mut out = Vec::new();
    while let Some(d) = t.next_deadline() {
        if d > base + until {
            break;
        }
        let a = t.on_timer(d);
        assert_ne!(a, A::None);
        out.push(((d - base).as_millis() as u64, a));
    }
    out
}

// ---------------------------------------------------------------- INVITE

#[test]
fn timer_a_doubles_uncapped() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &long_fr(), UDP);
    assert_eq!(t.state(), CI::Calling);
    assert_eq!(t.next_deadline(), Some(base + ms(500)));
    assert_eq!(
        run_inv(&mut t, base, s(20)),
        vec![
            (500, A::Retransmit),
            (1500, A::Retransmit),
            (3500, A::Retransmit),
            (7500, A::Retransmit),
            (15500, A::Retransmit)
        ]
    );
    assert_eq!(
        t.next_deadline(),
        Some(base + ms(31500)),
        "Timer A is not capped at T2"
    );
    assert_eq!(t.state(), CI::Calling);
}

#[test]
fn fr_timer_times_out_at_two_seconds_without_reply() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(
        run_inv(&mut t, base, s(60)),
        vec![
            (500, A::Retransmit),
            (1500, A::Retransmit),
            (2000, A::Timeout)
        ]
    );
    assert_eq!(t.state(), CI::Terminated);
    assert!(t.is_terminated() && t.timed_out());
    assert_eq!(t.next_deadline(), None);
    assert_eq!(t.on_timer(base + s(100)), A::None);
}

#[test]
fn spurious_and_early_timer_calls_are_noops() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    for at in [0, 1, 250, 499] {
        assert_eq!(t.on_timer(base + ms(at)), A::None);
    }
    assert_eq!(t.next_deadline(), Some(base + ms(500)));
    assert_eq!(t.on_timer(base + ms(500)), A::Retransmit);
    assert_eq!(
        t.on_timer(base + ms(500)),
        A::None,
        "same instant twice: no second retransmit"
    );
    assert_eq!(t.on_timer(base + ms(1499)), A::None);
    assert_eq!(t.state(), CI::Calling);
}

#[test]
fn late_servicing_keeps_schedule_and_stall_does_not_burst() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &long_fr(), UDP);
    assert_eq!(t.on_timer(base + ms(900)), A::Retransmit);
    assert_eq!(
        t.next_deadline(),
        Some(base + ms(1500)),
        "anchored to the schedule, not to now"
    );
    // A 10 s stall: one retransmission, then the next interval from now.
    assert_eq!(t.on_timer(base + s(10)), A::Retransmit);
    assert_eq!(t.on_timer(base + s(10)), A::None);
    assert_eq!(
        t.next_deadline(),
        Some(base + s(12)),
        "interval 2 s, counted from now"
    );
}

#[test]
fn provisional_stops_retransmissions_and_starts_fr_inv() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(t.on_response(base + ms(300), 100), A::PassUp);
    assert_eq!(t.state(), CI::Proceeding);
    assert_eq!(t.next_deadline(), Some(base + ms(300) + s(120)));
    for at in [500, 1500, 2000, 3500, 60_000] {
        assert_eq!(
            t.on_timer(base + ms(at)),
            A::None,
            "no Timer A, no fr_timer after a 1xx"
        );
    }
    // Kamailio restart_fr_on_each_reply: every provisional restarts fr_inv_timer.
    assert_eq!(t.on_response(base + s(60), 180), A::PassUp);
    assert_eq!(t.next_deadline(), Some(base + s(180)));
    assert_eq!(t.on_response(base + s(61), 180), A::PassUp);
    assert_eq!(t.next_deadline(), Some(base + s(181)));
}

#[test]
fn fr_inv_not_restarted_when_configured() {
    let base = Instant::now();
    let cfg = TimerConfig {
        restart_fr_inv_on_each_reply: false,
        ..TimerConfig::default()
    };
    let mut t = ClientInvite::new(base, &cfg, UDP);
    t.on_response(base + s(1), 100);
    t.on_response(base + s(50), 183);
    assert_eq!(t.next_deadline(), Some(base + s(121)));
}

#[test]
fn fr_inv_timeout_cancels_then_acks_the_487_quietly() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    t.on_response(base + s(1), 180);
    assert_eq!(t.on_timer(base + s(120)), A::None);
    assert_eq!(t.on_timer(base + s(121)), A::TimeoutSendCancel);
    assert!(t.timed_out() && t.cancel_sent());
    assert_eq!(t.state(), CI::Proceeding, "kept to ACK the 487");
    assert_eq!(t.next_deadline(), Some(base + s(121 + 32)));
    assert!(!t.request_cancel(base + s(122)), "CANCEL already sent");
    assert_eq!(
        t.on_response(base + s(122), 180),
        A::Absorb,
        "already reported upstream"
    );
    assert_eq!(
        t.on_response(base + s(122), 487),
        A::SendAck,
        "ACK it, do not report twice"
    );
    assert_eq!(t.state(), CI::Completed);
    assert_eq!(t.on_response(base + s(123), 487), A::SendAck);
    assert_eq!(t.next_deadline(), Some(base + s(122 + 5)), "Timer D = wait");
    assert_eq!(
        run_inv(&mut t, base, s(1000)),
        vec![(127_000, A::Terminated)]
    );
}

#[test]
fn fr_inv_timeout_without_final_terminates_after_64_t1() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    t.on_response(base, 183);
    assert_eq!(
        run_inv(&mut t, base, s(1000)),
        vec![(120_000, A::TimeoutSendCancel), (152_000, A::Terminated)]
    );
    assert!(t.is_terminated());
}

#[test]
fn fr_inv_timeout_then_2xx_still_passes_up() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    t.on_response(base, 180);
    assert_eq!(t.on_timer(base + s(120)), A::TimeoutSendCancel);
    assert_eq!(
        t.on_response(base + s(121), 200),
        A::PassUp,
        "every 2xx reaches the caller"
    );
    assert!(t.is_terminated());
}

#[test]
fn non_2xx_final_acks_and_timer_d_absorbs_retransmissions() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(t.on_response(base + ms(100), 503), A::SendAckAndPassUp);
    assert_eq!(t.state(), CI::Completed);
    assert_eq!(
        t.next_deadline(),
        Some(base + ms(100) + s(5)),
        "Timer D = wait (5 s, Kamailio wt_timer), no Timer A"
    );
    assert_eq!(
        t.on_response(base + s(1), 503),
        A::SendAck,
        "retransmitted final: re-send the ACK only"
    );
    assert_eq!(t.on_response(base + s(2), 503), A::SendAck);
    assert_eq!(t.on_response(base + s(2), 180), A::Absorb);
    assert_eq!(
        t.on_response(base + s(3), 200),
        A::PassUp,
        "a forked 2xx after a 6xx still goes up"
    );
    assert_eq!(t.state(), CI::Completed);
    assert!(!t.request_cancel(base + s(3)), "nothing left to cancel");
    assert_eq!(t.on_timer(base + ms(5_099)), A::None);
    assert_eq!(t.on_timer(base + ms(5_100)), A::Terminated);
    assert_eq!(t.on_timer(base + ms(5_100)), A::None);
}

#[test]
fn non_2xx_after_provisional() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    t.on_response(base, 100);
    assert_eq!(t.on_response(base + s(5), 486), A::SendAckAndPassUp);
    assert_eq!(t.state(), CI::Completed);
}

#[test]
fn success_terminates_and_later_2xx_pass_up() {
    for first_provisional in [false, true] {
        let base = Instant::now();
        let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
        if first_provisional {
            t.on_response(base, 180);
        }
        assert_eq!(t.on_response(base + ms(700), 200), A::PassUp);
        assert_eq!(t.state(), CI::Terminated);
        assert!(!t.timed_out());
        assert_eq!(t.next_deadline(), None);
        assert_eq!(
            t.on_response(base + s(1), 200),
            A::PassUp,
            "2xx retransmission"
        );
        assert_eq!(t.on_response(base + s(1), 180), A::Absorb);
        assert_eq!(t.on_response(base + s(1), 486), A::Absorb);
        assert_eq!(t.on_timer(base + s(50)), A::None);
        assert!(!t.request_cancel(base + s(1)));
    }
}

#[test]
fn cancel_before_provisional_waits_for_it() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    assert!(
        !t.request_cancel(base + ms(100)),
        "§9.1: no CANCEL before a provisional"
    );
    assert!(t.cancel_requested() && !t.cancel_sent());
    assert!(!t.request_cancel(base + ms(150)));
    assert_eq!(
        t.on_timer(base + ms(500)),
        A::Retransmit,
        "INVITE still retransmitted"
    );
    assert_eq!(t.on_response(base + ms(600), 100), A::SendCancelAndPassUp);
    assert!(t.cancel_sent());
    assert_eq!(t.state(), CI::Proceeding);
    assert_eq!(
        t.next_deadline(),
        Some(base + ms(600) + s(32)),
        "final expected within 64·T1 of the CANCEL"
    );
    assert_eq!(
        t.on_response(base + ms(700), 180),
        A::PassUp,
        "CANCEL is sent once"
    );
    assert_eq!(
        t.next_deadline(),
        Some(base + ms(600) + s(32)),
        "provisionals no longer extend the wait"
    );
    assert_eq!(t.on_response(base + ms(800), 487), A::SendAckAndPassUp);
    assert_eq!(t.state(), CI::Completed);
}

#[test]
fn cancel_pending_when_fr_timer_expires_times_out() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    t.request_cancel(base);
    assert_eq!(
        run_inv(&mut t, base, s(10)),
        vec![
            (500, A::Retransmit),
            (1500, A::Retransmit),
            (2000, A::Timeout)
        ]
    );
    assert!(t.cancel_requested() && !t.cancel_sent());
}

#[test]
fn cancel_in_proceeding_is_sent_now_and_bounds_the_wait() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    t.on_response(base, 180);
    assert!(t.request_cancel(base + s(5)));
    assert!(!t.request_cancel(base + s(6)), "only once");
    assert_eq!(t.next_deadline(), Some(base + s(37)));
    assert_eq!(t.on_response(base + s(6), 180), A::PassUp);
    assert_eq!(t.next_deadline(), Some(base + s(37)));
    assert_eq!(run_inv(&mut t, base, s(1000)), vec![(37_000, A::Timeout)]);
    assert!(t.is_terminated() && t.timed_out());
}

#[test]
fn reliable_transport_no_retransmit_no_timer_d() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), TCP);
    assert_eq!(t.next_deadline(), Some(base + s(2)));
    assert_eq!(run_inv(&mut t, base, s(10)), vec![(2000, A::Timeout)]);

    let mut t = ClientInvite::new(base, &TimerConfig::default(), TCP);
    assert_eq!(t.on_response(base + ms(10), 404), A::SendAckAndPassUp);
    assert!(t.is_terminated(), "Timer D = 0 on reliable transports");
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn invalid_status_codes_are_absorbed() {
    let base = Instant::now();
    let mut t = ClientInvite::new(base, &TimerConfig::default(), UDP);
    for code in [0, 99, 700, 999, u16::MAX] {
        assert_eq!(t.on_response(base, code), A::Absorb);
        assert_eq!(t.state(), CI::Calling);
    }
    assert_eq!(t.next_deadline(), Some(base + ms(500)));
}

// ------------------------------------------------------------ non-INVITE

#[test]
fn timer_e_doubles_to_t2() {
    let base = Instant::now();
    let cfg = TimerConfig {
        fr_timer: s(32),
        ..TimerConfig::default()
    };
    let mut t = ClientNonInvite::new(base, &cfg, UDP);
    assert_eq!(t.state(), CN::Trying);
    let got = run_nict(&mut t, base, s(40));
    let times: Vec<u64> = got.iter().map(|&(t, _)| t).collect();
    assert_eq!(
        times,
        vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500, 32000]
    );
    assert!(got[..10].iter().all(|&(_, a)| a == A::Retransmit));
    assert_eq!(got[10].1, A::Timeout);
    assert!(t.is_terminated());
}

#[test]
fn non_invite_fr_timer_default_two_seconds() {
    let base = Instant::now();
    let mut t = ClientNonInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(
        run_nict(&mut t, base, s(10)),
        vec![
            (500, A::Retransmit),
            (1500, A::Retransmit),
            (2000, A::Timeout)
        ]
    );
}

#[test]
fn non_invite_provisional_keeps_fr_timer_and_retransmits_at_t2() {
    let base = Instant::now();
    let cfg = TimerConfig {
        fr_timer: s(10),
        ..TimerConfig::default()
    };
    let mut t = ClientNonInvite::new(base, &cfg, UDP);
    assert_eq!(t.on_response(base + ms(200), 100), A::PassUp);
    assert_eq!(t.state(), CN::Proceeding);
    assert_eq!(
        run_nict(&mut t, base, s(60)),
        vec![
            (500, A::Retransmit),
            (4500, A::Retransmit),
            (8500, A::Retransmit),
            (10_000, A::Timeout)
        ],
        "Timer E at T2 in Proceeding; a 1xx does not extend fr_timer (Kamailio)"
    );
}

#[test]
fn non_invite_final_then_timer_k() {
    let base = Instant::now();
    let mut t = ClientNonInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(t.on_response(base + ms(100), 180), A::PassUp);
    assert_eq!(t.on_response(base + ms(200), 200), A::PassUp);
    assert_eq!(t.state(), CN::Completed);
    assert_eq!(
        t.next_deadline(),
        Some(base + ms(200) + s(5)),
        "Timer K = wait"
    );
    assert_eq!(
        t.on_response(base + ms(300), 200),
        A::Absorb,
        "retransmitted final absorbed"
    );
    assert_eq!(t.on_response(base + ms(300), 180), A::Absorb);
    assert_eq!(
        t.on_timer(base + ms(500)),
        A::None,
        "no retransmission in Completed"
    );
    assert_eq!(
        t.on_timer(base + s(3)),
        A::None,
        "fr_timer no longer applies"
    );
    assert_eq!(t.on_timer(base + ms(5200)), A::Terminated);
    assert_eq!(t.on_response(base + s(6), 200), A::Absorb);
    assert_eq!(t.on_timer(base + s(6)), A::None);
}

#[test]
fn non_invite_failure_final_directly_from_trying() {
    let base = Instant::now();
    let mut t = ClientNonInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(t.on_response(base, 408), A::PassUp);
    assert_eq!(t.state(), CN::Completed);
}

#[test]
fn non_invite_reliable() {
    let base = Instant::now();
    let mut t = ClientNonInvite::new(base, &TimerConfig::default(), TCP);
    assert_eq!(t.next_deadline(), Some(base + s(2)), "no Timer E");
    assert_eq!(t.on_response(base, 200), A::PassUp);
    assert!(t.is_terminated(), "Timer K = 0");
    let mut t = ClientNonInvite::new(base, &TimerConfig::default(), TCP);
    assert_eq!(run_nict(&mut t, base, s(10)), vec![(2000, A::Timeout)]);
}

#[test]
fn non_invite_spurious_timer_and_invalid_codes() {
    let base = Instant::now();
    let mut t = ClientNonInvite::new(base, &TimerConfig::default(), UDP);
    assert_eq!(t.on_timer(base + ms(499)), A::None);
    assert_eq!(t.on_response(base, 42), A::Absorb);
    assert_eq!(t.state(), CN::Trying);
    assert_eq!(t.next_deadline(), Some(base + ms(500)));
}

#[test]
fn timers_d_and_k_follow_the_configured_wait_timer() {
    // Kamailio's wt_timer bounds how long every finished transaction keeps
    // its slot; a failed call must not hold one for RFC 3261's 32 s.
    let cfg = TimerConfig {
        wait: ms(1500),
        ..TimerConfig::default()
    };
    let base = Instant::now();
    let mut inv = ClientInvite::new(base, &cfg, UDP);
    assert_eq!(inv.on_response(base + ms(100), 486), A::SendAckAndPassUp);
    assert_eq!(inv.next_deadline(), Some(base + ms(1600)), "Timer D");
    assert_eq!(inv.on_timer(base + ms(1600)), A::Terminated);
    let mut bye = ClientNonInvite::new(base, &cfg, UDP);
    assert_eq!(bye.on_response(base + ms(100), 200), A::PassUp);
    assert_eq!(bye.next_deadline(), Some(base + ms(1600)), "Timer K");
    assert_eq!(bye.on_timer(base + ms(1600)), A::Terminated);
}
