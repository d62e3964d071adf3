//! HEPv3 capture end to end: SIPp calls through the real `sipvane` with `[hep]`
//! pointing at a UDP socket of the test. Every datagram is decoded twice: by
//! sipvane's own decoder (agent id, auth key, correlation id, addresses) and by a
//! real HEP decoder, Kamailio's `sipcapture` module, which decapsulates it and
//! stores the inner SIP message with its HEP addresses in a PostgreSQL
//! `sip_capture` table (`sip_capture()`, as a Homer capture node does); the
//! rows must match what was sent exactly. Calls over UDP and over TCP (SIPp
//! `-t tn` and, through HAProxy's PROXY protocol, `-t t1`).

#[path = "support/db.rs"]
mod db_support;
#[path = "support/hep.rs"]
mod hep_support;
#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use hep_support::{
    assert_complete, by_call, decode_all, Calls, Collector, Kamailio, Seen, AGENT, KEY,
};
use support::{
    free_tcp_port, free_udp_addr, free_udp_port, localhost, metric, metrics, require_binary,
    wait_for_tcp_listener, ChildGuard, Scenario, Sipvane, Uac, Uas, WorkDir,
};

const RUN_LIMIT: Duration = Duration::from_secs(40);

on_both_drivers!(
    every_message_of_every_call_is_captured,
    every_message_of_tcp_calls_is_captured,
);

fn hep_toml(collector: SocketAddr, sample: f64) -> String {
    format!(
        "[hep]\ncollector = \"udp:{collector}\"\nagent_id = {AGENT}\npassword = \"{KEY}\"\nsample = {sample:?}"
    )
}

/// Stops everything once the callee has seen every BYE and checks that what
/// sipvane counted, what the collector got, sipvane's decoder and Kamailio's
/// `sipcapture` all agree. Returns the decoded captures.
fn collect(
    mut sipvane: Sipvane,
    mut uas: Uas,
    calls: u32,
    collector: Collector,
    kamailio: Kamailio,
) -> Vec<Seen> {
    uas.wait_until(Duration::from_secs(5), |s| {
        s.count("BYE", "Recv") >= u64::from(calls)
    });
    uas.stop();
    let text = metrics(&sipvane);
    assert!(metric(&text, "sipvane_hep_sent_total") > 0, "{text}");
    assert_eq!(metric(&text, "sipvane_hep_dropped_total"), 0);
    let counters = sipvane.stop();
    let packets = collector.finish();
    let decoded_by_kamailio = kamailio.stop(packets.len());

    let seen = decode_all(&packets);
    assert_eq!(counters.get("hep_sent"), packets.len() as u64);
    assert_eq!(counters.get("hep_dropped"), 0);
    // Kamailio stored the same messages, with the same Call-IDs, addresses and
    // protocols.
    let ours: BTreeSet<Seen> = seen.iter().cloned().collect();
    assert_eq!(
        decoded_by_kamailio, ours,
        "Kamailio's sipcapture disagrees with the captures"
    );
    seen
}

fn run_calls(io: &str, sample: f64, calls: u32) -> Calls {
    let kamailio = Kamailio::start();
    let collector = Collector::start(Some(kamailio.addr));
    let uas = Uas::start(Scenario::Uas, free_udp_addr());
    let uas_addr = uas.addr();
    let uac_port = free_udp_port();
    let sipvane = Sipvane::builder("hep")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{uas_addr}"))
        .toml(&hep_toml(collector.addr, sample))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(calls)
        .rate(20)
        .local_port(uac_port)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(u64::from(calls));
    let seen = collect(sipvane, uas, calls, collector, kamailio);
    assert!(seen.iter().all(|s| s.4 == 17), "UDP calls captured as UDP");
    let role = |a: SocketAddr| match a.port() {
        p if p == uac_port => "uac",
        p if p == uas_addr.port() => "uas",
        _ => "sv",
    };
    by_call(&seen, |s, d| (role(s), role(d)))
}

fn every_message_of_every_call_is_captured(io: &str) {
    let calls = run_calls(io, 1.0, 10);
    assert_eq!(calls.len(), 10, "{calls:#?}");
    assert_complete(&calls);
}

#[test]
fn sampling_captures_whole_calls_only() {
    let calls = run_calls("epoll", 0.5, 40);
    assert!(
        (1..40).contains(&calls.len()),
        "sample = 0.5 captured {} of 40 calls",
        calls.len()
    );
    assert_complete(&calls);
}

/// The ends of a TCP call's messages: the callee's listener, sipvane's listener
/// (`sv`), sipvane's outbound connection to the callee (also `sv`) and the
/// caller's connection (`uac`, the only address left).
fn tcp_roles(
    sv: SocketAddr,
    uas: SocketAddr,
) -> impl Fn(SocketAddr, SocketAddr) -> (&'static str, &'static str) {
    move |s, d| match (s, d) {
        (s, _) if s == uas => ("uas", "sv"),
        (_, d) if d == uas => ("sv", "uas"),
        (s, d) if s == sv && d != sv => ("sv", "uac"),
        (s, d) if d == sv && s != sv => ("uac", "sv"),
        _ => panic!("a message from {s} to {d} in a TCP call"),
    }
}

/// SIPp callers with a TCP connection per call (`-t tn`), a TCP callee
/// (`;transport=tcp`, sipvane's pooled connections): every message is
/// captured once, as TCP, with the connection's addresses.
fn every_message_of_tcp_calls_is_captured(io: &str) {
    const CALLS: u32 = 10;
    let kamailio = Kamailio::start();
    let collector = Collector::start(Some(kamailio.addr));
    let uas = Uas::builder(Scenario::Uas).tcp().start();
    let uas_addr = uas.addr();
    let sipvane = Sipvane::builder("hep-tcp")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{uas_addr};transport=tcp"))
        .toml(&hep_toml(collector.addr, 1.0))
        .start();
    let sv = sipvane.addr();
    Uac::new(Scenario::Uac, sv)
        .transport("tn")
        .calls(CALLS)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(u64::from(CALLS));
    let seen = collect(sipvane, uas, CALLS, collector, kamailio);
    let calls = by_call(&seen, tcp_roles(sv, uas_addr));
    assert_eq!(calls.len(), CALLS as usize, "{calls:#?}");
    assert_complete(&calls);
    // (The harness's readiness ping before the calls is UDP.)
    let udp: Vec<_> = seen
        .iter()
        .filter(|s| calls.contains_key(&s.0) && s.4 != 6)
        .collect();
    assert!(udp.is_empty(), "TCP calls captured as UDP: {udp:#?}");
    // Each call's caller leg is one connection of its own (`-t tn`).
    let mut callers = BTreeSet::new();
    for cid in calls.keys() {
        let ends: BTreeSet<SocketAddr> = seen
            .iter()
            .filter(|m| &m.0 == cid && (m.2 == sv || m.3 == sv))
            .map(|m| if m.2 == sv { m.3 } else { m.2 })
            .collect();
        assert_eq!(ends.len(), 1, "call {cid}: caller legs {ends:?}");
        callers.extend(ends);
    }
    assert_eq!(callers.len(), CALLS as usize, "{callers:?}");
}

/// HAProxy in `mode tcp` in front of sipvane, sending a PROXY v2 header from
/// 127.0.0.2: the captures name the caller (127.0.0.1 and SIPp's own port),
/// not HAProxy's connection, as everywhere else in sipvane.
#[test]
fn proxied_tcp_callers_are_captured_with_their_address() {
    const CALLS: u32 = 5;
    let kamailio = Kamailio::start();
    let collector = Collector::start(Some(kamailio.addr));
    let uas = Uas::start(Scenario::Uas, free_udp_addr());
    let uas_addr = uas.addr();
    let sipvane = Sipvane::builder("hep-pp")
        .io("epoll")
        .workers(2)
        .destination(format!("1 sip:{uas_addr}"))
        .toml(&format!(
            "{}\n[tcp]\nproxy_protocol_from = [\"127.0.0.2/32\"]",
            hep_toml(collector.addr, 1.0)
        ))
        .start();
    let sv = sipvane.addr();
    let front = localhost(free_tcp_port());
    let dir = WorkDir::new("haproxy", "hep");
    std::fs::write(
        dir.file("haproxy.cfg"),
        format!(
            "global\n  maxconn 100\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend f\n  bind {front}\n  default_backend b\n\
             backend b\n  server s {sv} send-proxy-v2 source 127.0.0.2\n"
        ),
    )
    .unwrap();
    let _haproxy = ChildGuard::spawn(
        Command::new(require_binary("haproxy", "run scripts/deps.sh"))
            .arg("-db")
            .arg("-f")
            .arg(dir.file("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    assert!(wait_for_tcp_listener(front, Duration::from_secs(5)));
    let uac_port = free_tcp_port();
    let caller = localhost(uac_port);
    Uac::new(Scenario::Uac, front)
        .transport("t1")
        .local_port(uac_port)
        .calls(CALLS)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(u64::from(CALLS));
    let seen = collect(sipvane, uas, CALLS, collector, kamailio);
    let roles = |a: SocketAddr| match a {
        a if a == caller => "uac",
        a if a == uas_addr => "uas",
        a if a.ip() == sv.ip() && a.port() != sv.port() => "sv",
        // sipvane's listener as the TCP end, its public socket as the UDP one.
        a if a == sv => "sv",
        a => panic!("{a} is neither the caller, the callee nor sipvane"),
    };
    let calls = by_call(&seen, |s, d| (roles(s), roles(d)));
    assert_eq!(calls.len(), CALLS as usize, "{calls:#?}");
    assert_complete(&calls);
    for m in &seen {
        let tcp = m.2 == caller || m.3 == caller;
        assert_eq!(m.4, if tcp { 6 } else { 17 }, "{m:?}");
    }
}
