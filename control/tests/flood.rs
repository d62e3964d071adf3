//! `[security.flood]` end to end: one source flooding INVITEs as fast as a
//! test thread can send is blocked, while another caller's calls go through
//! and the backend sees at most one burst. A binary of its own: the flood
//! loads the machine, and test binaries run one after another.
//!
//! Addresses: sipvane and the legitimate caller on 127.0.0.1, the flooder on
//! 127.0.0.3 — all loopback.

#[macro_use]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use support::{assert_loopback, free_udp_addr, Scenario, Sipvane, Uac, Uas};

fn bind(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind loopback");
    assert_loopback(s.local_addr().unwrap());
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Distinct INVITEs (by Call-ID; the proxy retransmits to a sink that never
/// answers) received by `sock` within `window`.
fn invites(sock: &UdpSocket, window: Duration) -> usize {
    let end = Instant::now() + window;
    let mut seen = std::collections::HashSet::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < end {
        if let Ok((len, _)) = sock.recv_from(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..len]);
            if let (true, Some(id)) = (
                msg.starts_with("INVITE "),
                msg.lines().find_map(|l| l.strip_prefix("Call-ID: ")),
            ) {
                seen.insert(id.to_string());
            }
        }
    }
    seen.len()
}

fn invite(from: SocketAddr, n: u32) -> String {
    format!(
        "INVITE sip:900@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-fl{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:flood@{from}>;tag=f{n}\r\nTo: <sip:900@127.0.0.1>\r\n\
         Call-ID: flood-{n}@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

fn a_flooding_source_is_blocked_and_other_callers_pass(io: &str) {
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    // The flooder's INVITEs go to set 2 (prefix 9), a counting socket.
    let sink = bind("127.0.0.1");
    let rps = 100;
    let mut sv = Sipvane::builder("security-flood")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .destination(format!("2 sip:{}", sink.local_addr().unwrap()))
        .toml(&format!(
            "[[dispatcher.rules]]\nprefix = \"9\"\nset = 2\n[security.flood]\nper_source_rps = {rps}\nblock_s = 30"
        ))
        .start();
    let target = sv.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    let flooder = std::thread::spawn(move || {
        // Sixteen source ports, so the kernel spreads the flood over both
        // workers: the source is still held to one rate, not one per worker.
        let socks: Vec<UdpSocket> = (0..16).map(|_| bind("127.0.0.3")).collect();
        let end = Instant::now() + Duration::from_secs(20);
        let mut sent = 0u32;
        // As fast as one thread manages, bounded in count and time.
        while !flooding.load(std::sync::atomic::Ordering::Relaxed)
            && Instant::now() < end
            && sent < 2_000_000
        {
            let s = &socks[sent as usize % socks.len()];
            let _ = s.send_to(invite(s.local_addr().unwrap(), sent).as_bytes(), target);
            sent += 1;
        }
        sent
    });
    // 10 calls/s = 30 requests/s (INVITE, ACK, BYE): well under the limit, so
    // SIPp catching up after a stall on a loaded machine (a burst of the calls
    // it owes) does not trip it either.
    let run = Uac::new(Scenario::Uac, sv.addr()).calls(150).rate(10).run();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    let ok = run.stats.successful;
    assert!(
        ok * 100 >= 150 * 98,
        "{ok}/150 calls succeeded while flooded: {}",
        run.errors()
    );
    let reached = invites(&sink, Duration::from_millis(500));
    // One second's burst, over both workers together (a tenth more for what
    // the rate earns while the burst is sent).
    assert!(
        (rps / 2..=rps + rps / 10).contains(&reached),
        "{reached} of {sent} flood INVITEs reached the backend"
    );
    let c = sv.stop();
    // One block, started (and logged) by one worker.
    assert_eq!(c.get("flood_blocks"), 1);
    assert!(
        c.get("flood_rejects") > 1000,
        "{sent} sent, {} refused",
        c.get("flood_rejects")
    );
    uas.stop();
    assert!(sv.log().contains("source over its request rate: blocked"));
}

on_both_drivers!(a_flooding_source_is_blocked_and_other_callers_pass);
