//! Dispatcher accounting at selection, end to end: a burst of overlapping
//! calls under algorithm 10 (call-load) never puts more calls on a
//! destination than its `maxload`, because ringing calls count.

#[macro_use]
mod support;

use std::time::Duration;

use support::{free_udp_addr, Scenario, Sipvane, Uac, Uas};

fn a_burst_never_exceeds_maxload(io: &str) {
    // Both answer 1.5 s after ringing: every call of the burst overlaps.
    let slow = || {
        Uas::builder(Scenario::UasSlow)
            .addr(free_udp_addr())
            .answer_delay(Duration::from_millis(1500))
            .start()
    };
    let (mut a, mut b) = (slow(), slow());
    let mut sv = Sipvane::builder("call-load-maxload")
        .io(io)
        .workers(2)
        .algorithm("10")
        .destination(format!("1 sip:{} 0 0 maxload=3", a.addr()))
        .destination(format!("1 sip:{} 0 0 maxload=3", b.addr()))
        .start();
    // 10 calls in 100 ms; 6 fit, the rest get 503 (no destination available).
    let run = Uac::new(Scenario::Uac, sv.addr()).calls(10).rate(100).run();
    let (sa, sb) = (a.stop(), b.stop());
    assert_eq!(sa.invites_received(), 3, "{sa:?}");
    assert_eq!(sb.invites_received(), 3, "{sb:?}");
    assert_eq!(run.stats.successful, 6, "{:?}\n{}", run.stats, run.errors());
    assert_eq!(
        run.stats.unexpected_codes.get(&503),
        Some(&4),
        "{:?}",
        run.stats
    );
    let c = sv.stop();
    assert_eq!(c.get("no_destination"), 4);
}

on_both_drivers!(a_burst_never_exceeds_maxload);
