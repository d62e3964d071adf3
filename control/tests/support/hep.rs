//! HEP capture test harness: a collector socket of the test and Kamailio's
//! `sipcapture` module as the real decoder (a Homer capture node storing every
//! decapsulated message in PostgreSQL). Include with
//! `#[path = "support/hep.rs"] mod hep_support;` next to `db_support` and
//! `support`.

#![allow(dead_code)]

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

use crate::db_support::{runtime, KamailioDb, Postgres};
use crate::support::{
    free_tcp_port, free_udp_addr, localhost, require_binary, ChildGuard, WorkDir,
};

pub const AGENT: u32 = 4242;
pub const KEY: &str = "s3cret";

/// One captured message as the test sees it: Call-ID, kind ("INVITE",
/// "180 INVITE", ...), source, destination, IP protocol (17 UDP, 6 TCP).
pub type Seen = (String, String, SocketAddr, SocketAddr, u8);

/// Per Call-ID: the (kind, from-role, to-role) of each of its messages.
pub type Calls = BTreeMap<String, BTreeSet<(String, &'static str, &'static str)>>;

/// Receives HEP datagrams until stopped, forwarding each to `forward`.
pub struct Collector {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<Vec<u8>>>>,
}

impl Collector {
    pub fn start(forward: Option<SocketAddr>) -> Collector {
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

    pub fn finish(mut self) -> Vec<Vec<u8>> {
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

/// Kamailio with `sipcapture` listening for HEP on a free UDP port (and, with
/// [`Kamailio::start_tcp`], a TCP one) and storing every decoded message in a
/// private PostgreSQL (`db_postgres`).
pub struct Kamailio {
    /// HEP over UDP.
    pub addr: SocketAddr,
    /// HEP over TCP (`tcp_accept_hep3`), when started with it.
    pub tcp: Option<SocketAddr>,
    child: ChildGuard,
    dir: WorkDir,
    db: KamailioDb,
}

impl Kamailio {
    pub fn start() -> Kamailio {
        Self::launch(false)
    }

    /// Also accepts HEP3 on a TCP listener: Kamailio's core reads HEP3 packets
    /// from a TCP connection when `tcp_accept_hep3` is set and hands them to
    /// `sipcapture` like UDP ones.
    pub fn start_tcp() -> Kamailio {
        Self::launch(true)
    }

    fn launch(tcp: bool) -> Kamailio {
        let bin = require_binary("kamailio", "install it with scripts/deps.sh");
        let rt = runtime();
        let db = KamailioDb::Pg(rt.block_on(Postgres::start()));
        rt.block_on(db.create_schema(&[], &[SIP_CAPTURE_DDL.to_string()]));
        let dir = WorkDir::new("hep", "kamailio");
        let addr = free_udp_addr();
        let tcp = tcp.then(|| localhost(free_tcp_port()));
        let modules = [
            "/usr/lib/x86_64-linux-gnu/kamailio/modules",
            "/usr/lib/kamailio/modules",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).join("db_postgres.so").exists())
        .expect(
            "kamailio's sipcapture and db_postgres modules (kamailio, kamailio-postgres-modules)",
        );
        let transport = match tcp {
            Some(t) => format!("tcp_accept_hep3=yes\ntcp_children=1\nlisten=tcp:{t}"),
            None => "disable_tcp=yes".to_string(),
        };
        let cfg = format!(
            r#"#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=1
{transport}
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
            tcp,
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }

    /// (Call-ID, kind, source, destination, protocol) of every message
    /// Kamailio stored, read back from its `sip_capture` table once the row
    /// count reaches `expected` (or stops growing).
    pub fn stop(mut self, expected: usize) -> BTreeSet<Seen> {
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
             destination_ip, CAST(destination_port AS TEXT), CAST(proto AS TEXT) \
             FROM sip_capture",
            8,
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
                // Kamailio's own protocol numbers (PROTO_UDP, PROTO_TCP).
                let proto = match r[7].as_str() {
                    "1" => 17,
                    "2" => 6,
                    p => panic!("sipcapture stored protocol {p}"),
                };
                (
                    r[0].clone(),
                    kind,
                    addr(&r[3], &r[4]),
                    addr(&r[5], &r[6]),
                    proto,
                )
            })
            .collect()
    }
}

/// Decodes every packet with sipvane's decoder, checking the fixed chunks.
pub fn decode_all(packets: &[Vec<u8>]) -> Vec<Seen> {
    packets
        .iter()
        .map(|p| {
            let c = hep::decode(p).unwrap_or_else(|e| panic!("undecodable HEP: {e}"));
            assert_eq!(c.agent_id, AGENT);
            assert_eq!(c.auth_key, Some(KEY.as_bytes()));
            assert_eq!(c.proto_type, 1);
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
            (
                String::from_utf8_lossy(cid).to_string(),
                kind,
                c.src,
                c.dst,
                c.ip_proto,
            )
        })
        .collect()
}

/// What one call through sipvane must show: (kind, from, to) with "uac", "uas"
/// or "sv" (one of sipvane's addresses).
pub fn expected_call() -> BTreeSet<(String, &'static str, &'static str)> {
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
    .map(|(k, f, t)| (k.to_string(), f, t))
    .collect()
}

/// Groups the calls' messages by Call-ID as (kind, from-role, to-role);
/// `roles` names the two ends of a message. A call is one whose INVITE came
/// from the "uac".
pub fn by_call(
    seen: &[Seen],
    roles: impl Fn(SocketAddr, SocketAddr) -> (&'static str, &'static str),
) -> Calls {
    let calls: BTreeSet<&String> = seen
        .iter()
        .filter(|(_, k, s, d, _)| k == "INVITE" && roles(*s, *d).0 == "uac")
        .map(|(c, ..)| c)
        .collect();
    let mut out: BTreeMap<String, BTreeSet<_>> = BTreeMap::new();
    for (cid, kind, src, dst, _) in seen {
        if calls.contains(cid) {
            let (from, to) = roles(*src, *dst);
            out.entry(cid.clone())
                .or_default()
                .insert((kind.clone(), from, to));
        }
    }
    out
}

/// Every call shows every message of [`expected_call`].
pub fn assert_complete(calls: &Calls) {
    let want = expected_call();
    for (cid, got) in calls {
        assert!(
            got.is_superset(&want),
            "call {cid}: missing {:?}",
            want.difference(got).collect::<Vec<_>>()
        );
    }
}
