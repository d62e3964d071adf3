//! The proxy end to end: real SIPp callers and callees on loopback, the real
//! `sipvane` binary in between, on both I/O drivers (io_uring and epoll).

#[macro_use]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use support::{api_get, free_udp_addr, status_code, Scenario, Sipvane, Uac, Uas};

const SETTLE: Duration = Duration::from_secs(5);
const RUN_LIMIT: Duration = Duration::from_secs(40);

on_both_drivers!(
    calls_complete_and_follow_record_route,
    hash_from_keeps_a_caller_on_one_destination,
    weights_are_honoured,
    failover_on_503_loses_no_call,
    failover_on_dead_destination_via_timeout,
    cancel_before_answer,
    retransmitted_invite_is_absorbed,
    bad_requests_get_clear_answers,
    one_source_spreads_over_workers_by_default,
    rules_pick_sets_and_unknown_domains_are_refused,
);

fn calls_complete_and_follow_record_route(io: &str) {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("basic")
        .io(io)
        .algorithm("round-robin")
        .destination(format!("1 sip:{}", a.addr()))
        .destination(format!("1 sip:{}", b.addr()))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(200)
        .rate(100)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(200);

    a.wait_until(SETTLE, |s| s.count("BYE", "Recv") >= 100);
    let (fa, fb) = (a.stop(), b.stop());
    // One source address lands on one worker, whose round-robin alternates.
    assert_eq!(fa.invites_received(), 100, "{fa:?}");
    assert_eq!(fb.invites_received(), 100, "{fb:?}");
    // ACK and BYE reached the callees through sipvane's Record-Route.
    for f in [&fa, &fb] {
        assert_eq!(f.count("ACK", "Recv"), 100, "{f:?}");
        assert_eq!(f.count("BYE", "Recv"), 100, "{f:?}");
        assert_eq!(f.failed, 0);
    }
    let c = sipvane.stop();
    assert_eq!(c.get("initial_invites"), 200);
    assert_eq!(c.get("calls_answered"), 200);
    assert_eq!(c.get("dialogs_created"), 200);
    assert_eq!(c.get("dialogs_ended"), 200);
    assert_eq!(c.get("failovers"), 0);
    assert_eq!(c.get("parse_errors"), 0);
}

fn hash_from_keeps_a_caller_on_one_destination(io: &str) {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("hash")
        .io(io)
        .algorithm("hash-from")
        .destination(format!("1 sip:{}", a.addr()))
        .destination(format!("1 sip:{}", b.addr()))
        .start();
    // SIPp uses one From URI for every call.
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(40)
        .rate(100)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(40);
    let (fa, fb) = (a.stop(), b.stop());
    let counts = [fa.invites_received(), fb.invites_received()];
    assert!(counts.contains(&40) && counts.contains(&0), "{counts:?}");
    sipvane.stop();
}

fn weights_are_honoured(io: &str) {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("weight")
        .io(io)
        .algorithm("9")
        .destination(format!("1 sip:{} 0 0 weight=75", a.addr()))
        .destination(format!("1 sip:{} 0 0 weight=25", b.addr()))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(400)
        .rate(200)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(400);
    let (fa, fb) = (a.stop(), b.stop());
    let share = fa.invites_received() as f64 / 400.0;
    assert!(
        (share - 0.75).abs() <= 0.05,
        "75/25 weights gave {} / {}",
        fa.invites_received(),
        fb.invites_received()
    );
    assert_eq!(fa.invites_received() + fb.invites_received(), 400);
    sipvane.stop();
}

fn failover_on_503_loses_no_call(io: &str) {
    let mut bad = Uas::start(Scenario::Uas503, free_udp_addr());
    let mut good = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("fail503")
        .io(io)
        .algorithm("round-robin")
        .destination(format!("1 sip:{}", bad.addr()))
        .destination(format!("1 sip:{}", good.addr()))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(100)
        .rate(100)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(100);
    let (fbad, fgood) = (bad.stop(), good.stop());
    assert!(
        fbad.invites_received() >= 1,
        "the 503 destination was never tried"
    );
    // Each 503 was ACKed hop by hop by sipvane.
    assert_eq!(
        fbad.count("ACK", "Recv"),
        fbad.invites_received(),
        "{fbad:?}"
    );
    assert_eq!(fgood.invites_received(), 100);
    let c = sipvane.stop();
    assert_eq!(c.get("failovers"), fbad.invites_received());
    assert_eq!(c.get("calls_failed"), 0);
    assert_eq!(c.get("replies_5xx"), 0, "no 503 may reach the caller");
}

fn failover_on_dead_destination_via_timeout(io: &str) {
    // Nothing listens here.
    let dead = free_udp_addr();
    let mut good = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("dead")
        .io(io)
        .algorithm("round-robin")
        .destination(format!("1 sip:{dead}"))
        .destination(format!("1 sip:{}", good.addr()))
        .toml("fr_timer_ms = 400")
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(40)
        .rate(40)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(40);
    let fgood = good.stop();
    assert_eq!(fgood.invites_received(), 40);
    let c = sipvane.stop();
    // failure_threshold (3) timeouts take the dead destination out.
    assert!(c.get("timeouts") >= 1, "{c:?}");
    assert_eq!(c.get("timeouts"), c.get("failovers"), "{c:?}");
    assert_eq!(c.get("calls_failed"), 0);
}

fn cancel_before_answer(io: &str) {
    let mut uas = Uas::start(Scenario::UasCancel, free_udp_addr());
    let mut sipvane = Sipvane::builder("cancel")
        .io(io)
        .destination(format!("1 sip:{}", uas.addr()))
        .start();
    let run = Uac::new(Scenario::UacCancel, sipvane.addr())
        .calls(20)
        .rate(40)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(20);
    assert_eq!(run.stats.count("487", "Recv"), 20);
    uas.wait_until(SETTLE, |s| s.count("ACK", "Recv") >= 20);
    let f = uas.stop();
    assert_eq!(f.count("CANCEL", "Recv"), 20, "{f:?}");
    assert_eq!(f.count("ACK", "Recv"), 20, "{f:?}");
    let c = sipvane.stop();
    assert_eq!(c.get("calls_cancelled"), 20);
    assert_eq!(c.get("failovers"), 0);
}

/// A hand-written INVITE (raw UDP: SIPp cannot send the same INVITE twice).
fn invite(from: SocketAddr, to: SocketAddr, branch: &str, max_forwards: u32) -> String {
    format!(
        "INVITE sip:100@{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch={branch};rport\r\n\
         Max-Forwards: {max_forwards}\r\n\
         From: <sip:caller@{from}>;tag=c1\r\n\
         To: <sip:100@{to}>\r\n\
         Call-ID: {branch}@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@{from}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Every datagram `sock` receives within `window`.
fn drain(sock: &UdpSocket, window: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).expect("set timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => got.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    got
}

fn retransmitted_invite_is_absorbed(io: &str) {
    let dest = UdpSocket::bind("127.0.0.1:0").expect("bind destination");
    let dest_addr = dest.local_addr().expect("addr");
    // The raw socket must see only what the test sends: no OPTIONS probes.
    let mut sipvane = Sipvane::builder("retrans")
        .io(io)
        .destination(format!("1 sip:{dest_addr}"))
        .toml("ping_interval_s = 0")
        .start();
    let caller = UdpSocket::bind("127.0.0.1:0").expect("bind caller");
    let me = caller.local_addr().expect("addr");
    let msg = invite(me, sipvane.addr(), "z9hG4bK-retrans-1", 70);
    caller
        .send_to(msg.as_bytes(), sipvane.addr())
        .expect("send");
    std::thread::sleep(Duration::from_millis(50));
    caller
        .send_to(msg.as_bytes(), sipvane.addr())
        .expect("resend");

    // The destination sees exactly one INVITE. The window closes well before
    // T1 (500 ms), when sipvane's own Timer A would retransmit.
    let at_dest = drain(&dest, Duration::from_millis(250));
    assert_eq!(
        at_dest.len(),
        1,
        "{} datagrams reached the destination",
        at_dest.len()
    );
    assert!(at_dest[0].starts_with(b"INVITE "));
    // The silent destination sent nothing provisional: the copy (at 50 ms)
    // got sipvane's 100 Trying at once, and no second one followed at the
    // 200 ms mark (RFC 3261 §17.2.1).
    let at_caller = drain(&caller, Duration::from_millis(200));
    let trying = at_caller
        .iter()
        .filter(|m| status_code(m) == Some(100))
        .count();
    assert_eq!(trying, 1, "one 100 Trying: {at_caller:?}");
    let c = sipvane.stop();
    assert_eq!(c.get("retransmissions_absorbed"), 1);
}

fn bad_requests_get_clear_answers(io: &str) {
    let dest = UdpSocket::bind("127.0.0.1:0").expect("bind destination");
    let dest_addr = dest.local_addr().expect("addr");
    // The raw socket must see only what the test sends: no OPTIONS probes.
    let mut sipvane = Sipvane::builder("bad")
        .io(io)
        .destination(format!("1 sip:{dest_addr}"))
        .toml("ping_interval_s = 0")
        .start();
    let caller = UdpSocket::bind("127.0.0.1:0").expect("bind caller");
    let me = caller.local_addr().expect("addr");

    // Max-Forwards exhausted → 483.
    let msg = invite(me, sipvane.addr(), "z9hG4bK-mf0", 0);
    caller
        .send_to(msg.as_bytes(), sipvane.addr())
        .expect("send");
    let got = drain(&caller, Duration::from_millis(300));
    assert_eq!(
        got.iter()
            .filter_map(|m| status_code(m))
            .collect::<Vec<_>>(),
        vec![483]
    );

    // A broken CSeq → 400 naming the problem.
    let msg = invite(me, sipvane.addr(), "z9hG4bK-badcseq", 70)
        .replace("CSeq: 1 INVITE", "CSeq: x INVITE");
    caller
        .send_to(msg.as_bytes(), sipvane.addr())
        .expect("send");
    let got = drain(&caller, Duration::from_millis(300));
    assert_eq!(got.len(), 1);
    assert_eq!(status_code(&got[0]), Some(400));
    let text = String::from_utf8_lossy(&got[0]);
    assert!(text.contains("Warning: 399"), "{text}");

    // Garbage is dropped and counted, and sipvane keeps working.
    caller
        .send_to(b"\x00\x01garbage\r\n\r\n", sipvane.addr())
        .expect("send");
    assert!(drain(&caller, Duration::from_millis(200)).is_empty());
    assert_eq!(
        support::sip_options_ping(sipvane.addr(), Duration::from_secs(2)),
        Some(200)
    );

    // An in-dialog BYE with no route set, addressed to sipvane itself (what
    // SIPp sends to clean up a failed call) is answered, not looped.
    let bye = invite(me, sipvane.addr(), "z9hG4bK-selfbye", 70)
        .replacen("INVITE sip:100@", "BYE sip:100@", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 2 BYE")
        .replace(">\r\nCall-ID", ">;tag=callee1\r\nCall-ID");
    caller
        .send_to(bye.as_bytes(), sipvane.addr())
        .expect("send");
    let got = drain(&caller, Duration::from_millis(300));
    assert_eq!(
        got.iter()
            .filter_map(|m| status_code(m))
            .collect::<Vec<_>>(),
        vec![404],
        "{:?}",
        got.iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect::<Vec<_>>()
    );

    // Nothing reached the destination.
    assert!(drain(&dest, Duration::from_millis(50)).is_empty());
    let c = sipvane.stop();
    assert_eq!(c.get("loops"), 1);
    assert_eq!(c.get("bad_requests"), 1);
    assert_eq!(c.get("parse_errors"), 1);
}

/// SIPp sends every call from one address, so the kernel's SO_REUSEPORT hash
/// puts all of them on one worker. By default (`balance = "callid"`) each call
/// is handled by the worker its Call-ID names — its INVITE, ACK and BYE, which
/// SIPp all sends to the public port — so the second of two workers carries
/// a fair share (per-worker counts in `/status`) and every call completes.
/// With `balance = "kernel"` the same load stays on one worker.
fn one_source_spreads_over_workers_by_default(io: &str) {
    let per_worker_calls = |toml: &str| {
        let mut a = Uas::start(Scenario::Uas, free_udp_addr());
        let mut sipvane = Sipvane::builder("balance")
            .io(io)
            .workers(2)
            .destination(format!("1 sip:{}", a.addr()))
            .proxy_toml(toml)
            .start();
        Uac::new(Scenario::Uac, sipvane.addr())
            .calls(200)
            .rate(100)
            .timeout(RUN_LIMIT)
            .run()
            .assert_all_succeeded(200);
        a.stop();
        let status: control::api::model::Status =
            serde_json::from_str(&api_get(&sipvane, "/status")).expect("/status");
        let c = sipvane.stop();
        assert_eq!(c.get("calls_answered"), 200);
        assert_eq!(c.get("calls_failed"), 0);
        let w = &status.worker_detail;
        assert_eq!(w.len(), 2, "{status:?}");
        (
            [w[0].initial_invites, w[1].initial_invites],
            w[0].handoffs_out + w[1].handoffs_out,
            c.get("handoffs"),
        )
    };

    let (calls, handoffs_out, handoffs) = per_worker_calls("");
    assert_eq!(calls[0] + calls[1], 200, "{calls:?}");
    // Whichever worker the kernel picked, the other one owns about half.
    assert!(
        calls.iter().all(|&n| n >= 60),
        "at least 30 % of the calls on each worker: {calls:?}"
    );
    // Each steered call is three handoffs (INVITE, ACK, BYE); the workers'
    // own count and the proxy's agree.
    assert_eq!(handoffs_out, handoffs);
    assert!((150..=450).contains(&handoffs), "{handoffs} handoffs");

    let (calls, handoffs_out, _) = per_worker_calls("balance = \"kernel\"");
    assert!(calls.contains(&200) && calls.contains(&0), "{calls:?}");
    assert_eq!(handoffs_out, 0);
}

/// `[[dispatcher.rules]]` send Request-URI users starting with 9 to set 2,
/// everything else to the default set 1; with `domains` set and
/// `unknown_domain = "reject"`, a Request-URI for another domain gets 404.
fn rules_pick_sets_and_unknown_domains_are_refused(io: &str) {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("rules")
        .io(io)
        .destination(format!("1 sip:{}", a.addr()))
        .destination(format!("2 sip:{}", b.addr()))
        .proxy_toml("domains = [\"sipvane.test\"]\nunknown_domain = \"reject\"")
        .toml("[[dispatcher.rules]]\nprefix = \"9\"\nset = 2")
        .start();
    for (user, calls) in [("100", 10), ("900", 15)] {
        Uac::new(Scenario::Uac, sipvane.addr())
            .service(user)
            .calls(calls)
            .rate(50)
            .timeout(RUN_LIMIT)
            .run()
            .assert_all_succeeded(u64::from(calls));
    }
    let caller = UdpSocket::bind("127.0.0.1:0").expect("bind caller");
    let me = caller.local_addr().expect("addr");
    // An IP host (on loopback, in case it were relayed) that is not one of
    // sipvane's: relaying would answer 100 Trying and forward it.
    let elsewhere = invite(me, sipvane.addr(), "z9hG4bK-elsewhere", 70).replacen(
        &format!("INVITE sip:100@{}", sipvane.addr()),
        "INVITE sip:100@127.0.0.2:5999",
        1,
    );
    caller
        .send_to(elsewhere.as_bytes(), sipvane.addr())
        .expect("send");
    let got = drain(&caller, Duration::from_millis(300));
    assert_eq!(got.len(), 1, "{got:?}");
    let text = String::from_utf8_lossy(&got[0]);
    assert!(text.starts_with("SIP/2.0 404 "), "{text}");
    assert!(text.contains("Domain not served here"), "{text}");

    let (fa, fb) = (a.stop(), b.stop());
    assert_eq!(fa.invites_received(), 10, "{fa:?}");
    assert_eq!(fb.invites_received(), 15, "{fb:?}");
    sipvane.stop();
}
