//! A second real HEP decoder: Debian's `sngrep` (1.6, built with HEP/EEP
//! support) listens for sipvane's HEP packets (`-L udp:…`), decapsulates them
//! and writes the inner SIP messages to a pcap file (`-O`), headless (`-N -q`,
//! stdin closed). Wireshark's `tshark` then reads that file with its SIP
//! dissector; every SIP message of the calls must be there with the Call-ID
//! and the addresses sipvane put into the HEP packets (which sipvane's own
//! decoder reads from the same packets, forwarded by the test's collector).
//!
//! sngrep writes every decapsulated message as a UDP frame, so the protocol a
//! HEP packet names (TCP for the callers' leg here) is not in the pcap; the
//! addresses and ports are.

#[path = "support/db.rs"]
mod db_support;
#[path = "support/hep.rs"]
mod hep_support;
#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hep_support::{assert_complete, by_call, decode_all, Collector, AGENT, KEY};
use support::{
    free_udp_addr, require_binary, udp_bound, ChildGuard, Scenario, Sipvane, Uac, Uas, WorkDir,
};

const RUN_LIMIT: Duration = Duration::from_secs(40);
const CALLS: u32 = 5;

on_both_drivers!(sngrep_and_tshark_decode_every_message);

/// Call-ID, kind ("INVITE", "180 INVITE", ...), source, destination.
type Msg = (String, String, SocketAddr, SocketAddr);

/// `sngrep` listening for HEP on a free UDP port, writing what it decodes to
/// `out.pcap` in its work dir.
struct Sngrep {
    addr: SocketAddr,
    child: ChildGuard,
    dir: WorkDir,
}

impl Sngrep {
    fn start() -> Sngrep {
        let bin = require_binary("sngrep", "run scripts/deps.sh (apt-get install sngrep)");
        let dir = WorkDir::new("hep", "sngrep");
        let addr = free_udp_addr();
        // -N: no interface (no terminal needed), -q: nothing printed, -F: no
        // user configuration file.
        let child = ChildGuard::spawn(
            Command::new(bin)
                .args(["-N", "-q", "-F", "-L"])
                .arg(format!("udp:{addr}"))
                .arg("-O")
                .arg(dir.file("out.pcap"))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(File::create(dir.file("sngrep.log")).unwrap())
                .stderr(File::create(dir.file("sngrep.err")).unwrap()),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !udp_bound(addr) {
            assert!(
                Instant::now() < deadline,
                "sngrep does not listen on {addr}: {}",
                dir.read("sngrep.err")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sngrep { addr, child, dir }
    }

    /// Stops sngrep (it closes the pcap file on SIGINT) and reads the file
    /// back with tshark's SIP dissector.
    fn stop(mut self) -> Vec<Msg> {
        let status = self.child.stop(libc::SIGINT, Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.success()),
            "sngrep: {status:?}: {}",
            self.dir.read("sngrep.err")
        );
        let tshark = require_binary("tshark", "run scripts/deps.sh (apt-get install tshark)");
        let out = self.dir.file("tshark.tsv");
        let mut child = ChildGuard::spawn(
            Command::new(tshark)
                .arg("-r")
                .arg(self.dir.file("out.pcap"))
                .args(["-Y", "sip", "-T", "fields", "-E", "separator=/t"])
                .args(["-e", "sip.Call-ID", "-e", "sip.Status-Code"])
                .args(["-e", "sip.CSeq.method", "-e", "ip.src", "-e", "udp.srcport"])
                .args(["-e", "ip.dst", "-e", "udp.dstport"])
                .stdin(Stdio::null())
                .stdout(File::create(&out).unwrap())
                .stderr(File::create(self.dir.file("tshark.err")).unwrap()),
        )
        .unwrap();
        let status = child.wait_timeout(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "tshark: {status:?}: {}",
            self.dir.read("tshark.err")
        );
        let addr =
            |ip: &str, port: &str| SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
        std::fs::read_to_string(out)
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 7, "{l:?}");
                let kind = match f[1] {
                    "" => f[2].to_string(),
                    code => format!("{code} {}", f[2]),
                };
                (f[0].to_string(), kind, addr(f[3], f[4]), addr(f[5], f[6]))
            })
            .collect()
    }
}

/// SIPp callers over TCP (a connection per call) and a UDP callee: sngrep
/// decodes every HEP packet sipvane sent, and the pcap it writes holds the
/// same messages between the same addresses as sipvane's own decoder reads.
fn sngrep_and_tshark_decode_every_message(io: &str) {
    let sngrep = Sngrep::start();
    let collector = Collector::start(Some(sngrep.addr));
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let uas_addr = uas.addr();
    let mut sipvane = Sipvane::builder("hep-sngrep")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{uas_addr}"))
        .toml(&format!(
            "[hep]\ncollector = \"udp:{}\"\nagent_id = {AGENT}\npassword = \"{KEY}\"",
            collector.addr
        ))
        .start();
    let sv = sipvane.addr();
    Uac::new(Scenario::Uac, sv)
        .transport("tn")
        .calls(CALLS)
        .rate(20)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(u64::from(CALLS));
    uas.wait_until(Duration::from_secs(5), |s| {
        s.count("BYE", "Recv") >= u64::from(CALLS)
    });
    uas.stop();
    let c = sipvane.stop();
    let packets = collector.finish();
    assert_eq!(c.get("hep_sent"), packets.len() as u64);
    let ours: Vec<Msg> = decode_all(&packets)
        .into_iter()
        .map(|(cid, kind, src, dst, _)| (cid, kind, src, dst))
        .collect();
    let theirs = sngrep.stop();
    assert_eq!(
        theirs.len(),
        ours.len(),
        "sngrep/tshark saw {} messages, sipvane sent {}",
        theirs.len(),
        ours.len()
    );
    let ours_set: BTreeSet<&Msg> = ours.iter().collect();
    let theirs_set: BTreeSet<&Msg> = theirs.iter().collect();
    assert_eq!(
        theirs_set, ours_set,
        "sngrep/tshark disagree with the captures"
    );

    // And those are the calls, whole: callers on their own connections to
    // sipvane's listener, the callee on UDP.
    let ours_addrs = [sv, sipvane.private_addr(0), sipvane.private_addr(1)];
    let role = |a: SocketAddr| match a {
        a if a == uas_addr => "uas",
        a if ours_addrs.contains(&a) => "sv",
        _ => "uac",
    };
    let seen: Vec<_> = theirs
        .iter()
        .map(|(c, k, s, d)| (c.clone(), k.clone(), *s, *d, 17))
        .collect();
    let calls = by_call(&seen, |s, d| (role(s), role(d)));
    assert_eq!(calls.len(), CALLS as usize, "{calls:#?}");
    assert_complete(&calls);
}
