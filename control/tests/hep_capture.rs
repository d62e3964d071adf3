//! HEPv3 capture end to end: SIPp calls through the real `sipvane` with `[hep]`
//! pointing at a UDP socket of the test. Every datagram is decoded twice: by
//! sipvane's own decoder (agent id, auth key, correlation id, addresses) and by a
//! real HEP decoder, Kamailio's `sipcapture` module, which decapsulates it and
//! stores the inner SIP message with its HEP addresses in a PostgreSQL
//! `sip_capture` table (`sip_capture()`, as a Homer capture node does); the
//! rows must match what was sent exactly.

#[path = "support/db.rs"]
mod db_support;
#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use dataplane::hep;
use dataplane::sip::parse::parse;
use db_support::{runtime, KamailioDb, Postgres};
use support::{
    free_udp_addr, free_udp_port, metric, metrics, require_binary, ChildGuard, Scenario, Sipvane,
    Uac, Uas, WorkDir,
};

const RUN_LIMIT: Duration = Duration::from_secs(40);
const AGENT: u32 = 4242;
const KEY: &str = "s3cret";

on_both_drivers!(every_message_of_every_call_is_captured);

/// One captured message as the test sees it: Call-ID, kind ("INVITE",
/// "180 INVITE", ...), source and destination.
type Seen = (String, String, SocketAddr, SocketAddr);

/// Per Call-ID: the (kind, from-role, to-role) of each of its messages.
type Calls = BTreeMap<String, BTreeSet<(String, &'static str, &'static str)>>;

/// Receives HEP datagrams until stopped, forwarding each to `forward`.
struct Collector {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<Vec<u8>>>>,
}

impl Collector {
    fn start(forward: Option<SocketAddr>) -> Collector {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65_536];
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(n) = sock.recv(&mut buf) {
                    if let Some(f) = forward {
                        let _ = sock.send_to(&buf[..n], f);
                    }
                    got.push(buf[..n].to_vec());
                }
            }
            got
        });
        Collector {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// The `sip_capture` table `sipcapture` inserts into. Debian ships no DDL for
/// it (Homer creates its own, partitioned by day), so this is the module's
/// column list with permissive types: what matters is what Kamailio writes.
const SIP_CAPTURE_DDL: &str = "CREATE TABLE sip_capture (
    id BIGSERIAL PRIMARY KEY, date TIMESTAMP, micro_ts BIGINT,
    method TEXT, reply_reason TEXT, ruri TEXT, ruri_user TEXT, ruri_domain TEXT,
    from_user TEXT, from_domain TEXT, from_tag TEXT, to_user TEXT, to_domain TEXT,
    to_tag TEXT, pid_user TEXT, contact_user TEXT, auth_user TEXT, callid TEXT,
    callid_aleg TEXT, via_1 TEXT, via_1_branch TEXT, cseq TEXT, diversion TEXT,
    reason TEXT, content_type TEXT, auth TEXT, user_agent TEXT, source_ip TEXT,
    source_port INTEGER, destination_ip TEXT, destination_port INTEGER,
    contact_ip TEXT, contact_port INTEGER, originator_ip TEXT,
    originator_port INTEGER, expires INTEGER, correlation_id TEXT,
    custom_field1 TEXT, custom_field2 TEXT, custom_field3 TEXT, proto INTEGER,
    family INTEGER, rtp_stat TEXT, type INTEGER, node TEXT, msg TEXT)";

/// Kamailio with `sipcapture` listening for HEP on a free port and storing
/// every decoded message in a private PostgreSQL (`db_postgres`).
struct Kamailio {
    addr: SocketAddr,
    child: ChildGuard,
    dir: WorkDir,
    db: KamailioDb,
}

impl Kamailio {
    fn start() -> Kamailio {
        let bin = require_binary("kamailio", "install it with scripts/deps.sh");
        let rt = runtime();
        let db = KamailioDb::Pg(rt.block_on(Postgres::start()));
        rt.block_on(db.create_schema(&[], &[SIP_CAPTURE_DDL.to_string()]));
        let dir = WorkDir::new("hep", "kamailio");
        let addr = free_udp_addr();
        let modules = [
            "/usr/lib/x86_64-linux-gnu/kamailio/modules",
            "/usr/lib/kamailio/modules",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).join("db_postgres.so").exists())
        .expect(
            "kamailio's sipcapture and db_postgres modules (kamailio, kamailio-postgres-modules)",
        );
        let cfg = format!(
            r#"#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=1
disable_tcp=yes
listen=udp:{addr}
mpath="{modules}/"
loadmodule "pv.so"
loadmodule "db_postgres.so"
loadmodule "sipcapture.so"
modparam("sipcapture", "db_url", "{url}")
modparam("sipcapture", "table_name", "sip_capture")
modparam("sipcapture", "capture_on", 1)
modparam("sipcapture", "hep_capture_on", 1)
request_route {{
    sip_capture();
    drop;
}}
onreply_route {{
    sip_capture();
    drop;
}}
"#,
            url = db.url()
        );
        let path = dir.file("kamailio.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = File::create(dir.file("kamailio.log")).unwrap();
        let child = ChildGuard::spawn(
            Command::new(bin)
                .arg("-f")
                .arg(&path)
                .args(["-DD", "-E", "-w"])
                .arg(dir.path())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        let k = Kamailio {
            addr,
            child,
            dir,
            db,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !k.log().contains("Listening on") && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(300));
        k
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }

    /// (Call-ID, kind, source, destination) of every message Kamailio stored,
    /// read back from its `sip_capture` table once the row count settles.
    fn stop(mut self, expected: usize) -> BTreeSet<Seen> {
        let rt = runtime();
        let count = || {
            rt.block_on(
                self.db
                    .query("SELECT CAST(COUNT(*) AS TEXT) FROM sip_capture", 1),
            )[0][0]
                .parse::<usize>()
                .unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while count() < expected && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        self.child.stop(libc::SIGTERM, Duration::from_secs(5));
        let rows = rt.block_on(self.db.query(
            "SELECT callid, method, cseq, source_ip, CAST(source_port AS TEXT), \
             destination_ip, CAST(destination_port AS TEXT) FROM sip_capture",
            7,
        ));
        assert!(
            !rows.is_empty(),
            "sipcapture stored nothing; its log:\n{}",
            self.log()
        );
        let addr =
            |ip: &str, port: &str| SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
        rows.into_iter()
            .map(|r| {
                // Requests store their method; replies their status code in
                // `method` and "N METHOD" in `cseq`.
                let cseq_method = r[2].split_whitespace().nth(1).unwrap_or_default();
                let kind = if r[1].parse::<u16>().is_ok() {
                    format!("{} {cseq_method}", r[1])
                } else {
                    r[1].clone()
                };
                (r[0].clone(), kind, addr(&r[3], &r[4]), addr(&r[5], &r[6]))
            })
            .collect()
    }
}

/// Decodes every datagram with sipvane's decoder, checking the fixed chunks.
fn decode_all(packets: &[Vec<u8>]) -> Vec<Seen> {
    packets
        .iter()
        .map(|p| {
            let c = hep::decode(p).unwrap_or_else(|e| panic!("undecodable HEP: {e}"));
            assert_eq!(c.agent_id, AGENT);
            assert_eq!(c.auth_key, Some(KEY.as_bytes()));
            assert_eq!((c.ip_proto, c.proto_type), (17, 1));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(u64::from(c.ts_sec) + 300 > now && c.ts_usec < 1_000_000);
            let msg = parse(c.payload).expect("captured payload is SIP");
            let cid = msg.call_id().expect("Call-ID");
            assert_eq!(c.correlation_id, Some(cid), "correlation id = Call-ID");
            let cseq_method = msg
                .cseq()
                .map(|c| String::from_utf8_lossy(c.method_raw).to_string())
                .unwrap_or_default();
            let kind = match msg.status() {
                Some(code) => format!("{code} {cseq_method}"),
                None => cseq_method,
            };
            (String::from_utf8_lossy(cid).to_string(), kind, c.src, c.dst)
        })
        .collect()
}

/// What one call through sipvane must show: (kind, from, to) with "uac", "uas"
/// or "sv" (any of sipvane's addresses).
fn expected_call() -> BTreeSet<(&'static str, &'static str, &'static str)> {
    [
        ("INVITE", "uac", "sv"),
        ("INVITE", "sv", "uas"),
        // sipvane's own 100 Trying goes only when nothing provisional is
        // relayed within 200 ms (RFC 3261 §17.2.1); the UAS's 100 is hop-by-hop.
        ("100 INVITE", "uas", "sv"),
        ("180 INVITE", "uas", "sv"),
        ("180 INVITE", "sv", "uac"),
        ("200 INVITE", "uas", "sv"),
        ("200 INVITE", "sv", "uac"),
        ("ACK", "uac", "sv"),
        ("ACK", "sv", "uas"),
        ("BYE", "uac", "sv"),
        ("BYE", "sv", "uas"),
        ("200 BYE", "uas", "sv"),
        ("200 BYE", "sv", "uac"),
    ]
    .into_iter()
    .collect()
}

/// Groups the calls' messages by Call-ID as (kind, from-role, to-role).
fn by_call(seen: &[Seen], uac: u16, uas: u16) -> Calls {
    let role = |a: &SocketAddr| match a.port() {
        p if p == uac => "uac",
        p if p == uas => "uas",
        _ => "sv",
    };
    let calls: BTreeSet<&String> = seen
        .iter()
        .filter(|(_, k, s, _)| k == "INVITE" && s.port() == uac)
        .map(|(c, ..)| c)
        .collect();
    let mut out: BTreeMap<String, BTreeSet<_>> = BTreeMap::new();
    for (cid, kind, src, dst) in seen {
        if calls.contains(cid) {
            out.entry(cid.clone())
                .or_default()
                .insert((kind.clone(), role(src), role(dst)));
        }
    }
    out
}

fn run_calls(io: &str, sample: f64, calls: u32) -> Calls {
    let kamailio = Kamailio::start();
    let collector = Collector::start(Some(kamailio.addr));
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let uac_port = free_udp_port();
    let mut sipvane = Sipvane::builder("hep")
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .toml(&format!(
            "[hep]\ncollector = \"udp:{}\"\nagent_id = {AGENT}\npassword = \"{KEY}\"\nsample = {sample:?}",
            collector.addr
        ))
        .start();
    let run = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(calls)
        .rate(20)
        .local_port(uac_port)
        .timeout(RUN_LIMIT)
        .run();
    run.assert_all_succeeded(u64::from(calls));
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
    // Kamailio stored the same messages, with the same Call-IDs and addresses.
    let ours: BTreeSet<Seen> = seen.iter().cloned().collect();
    assert_eq!(
        decoded_by_kamailio, ours,
        "Kamailio's sipcapture disagrees with the captures"
    );
    by_call(&seen, uac_port, uas.addr().port())
}

fn every_message_of_every_call_is_captured(io: &str) {
    let calls = run_calls(io, 1.0, 10);
    assert_eq!(calls.len(), 10, "{calls:#?}");
    let want: BTreeSet<(String, &str, &str)> = expected_call()
        .into_iter()
        .map(|(k, f, t)| (k.to_string(), f, t))
        .collect();
    for (cid, got) in &calls {
        assert!(
            got.is_superset(&want),
            "call {cid}: missing {:?}",
            want.difference(got).collect::<Vec<_>>()
        );
    }
}

#[test]
fn sampling_captures_whole_calls_only() {
    let calls = run_calls("epoll", 0.5, 40);
    assert!(
        (1..40).contains(&calls.len()),
        "sample = 0.5 captured {} of 40 calls",
        calls.len()
    );
    let want: BTreeSet<(String, &str, &str)> = expected_call()
        .into_iter()
        .map(|(k, f, t)| (k.to_string(), f, t))
        .collect();
    for (cid, got) in &calls {
        assert!(
            got.is_superset(&want),
            "call {cid} captured in part: {got:?}"
        );
    }
}
