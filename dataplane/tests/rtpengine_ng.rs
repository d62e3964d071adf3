//! The ng client against a real RTPEngine (Debian's `rtpengine-daemon`),
//! started privately on loopback in userspace mode and killed on drop.
//!
//! The daemon must be installed (`make deps`); without it these tests fail
//! rather than pass silently.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::rtpengine::client::{Client, ClientConfig, EngineSet, NgOutcome, Output};
use dataplane::rtpengine::ng::{NgFlags, NgResult, Reply, Request};

const CALLER_SDP: &str = "v=0\r\n\
o=- 1545997027 1 IN IP4 192.0.2.10\r\n\
s=caller\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 20000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n";

const CALLEE_SDP: &str = "v=0\r\n\
o=- 2890844526 1 IN IP4 192.0.2.20\r\n\
s=callee\r\n\
c=IN IP4 192.0.2.20\r\n\
t=0 0\r\n\
m=audio 30000 RTP/AVP 8 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n";

/// A private rtpengine; killed (by its own pid) when dropped.
struct Daemon {
    child: Child,
    ng: SocketAddr,
    port_min: u16,
    port_max: u16,
    log: PathBuf,
}

fn rtpengine_binary() -> PathBuf {
    for cand in ["rtpengine", "/usr/bin/rtpengine", "/usr/sbin/rtpengine"] {
        if Command::new(cand)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return PathBuf::from(cand);
        }
    }
    panic!("rtpengine not found: run `make deps`");
}

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

impl Daemon {
    fn start() -> Daemon {
        let bin = rtpengine_binary();
        let ng_port = free_udp_port();
        // A small media range of our own below the ephemeral range, spread by
        // the ng port so parallel runs rarely share one.
        let port_min = 20_000 + (ng_port % 250) * 50;
        let port_max = port_min + 49;
        let log = std::env::temp_dir().join(format!("sipvane-rtpengine-{ng_port}.log"));
        let child = Command::new(&bin)
            .args([
                "--config-file=none",
                "--table=-1",
                "--interface=127.0.0.1",
                &format!("--listen-ng=127.0.0.1:{ng_port}"),
                "--foreground",
                "--log-stderr",
                "--log-level=6",
                &format!("--port-min={port_min}"),
                &format!("--port-max={port_max}"),
                "--delete-delay=0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut d = Daemon {
            child,
            ng: SocketAddr::from(([127, 0, 0, 1], ng_port)),
            port_min,
            port_max,
            log,
        };
        d.wait_ready();
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 256];
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("rtpengine exited with {status}:\n{}", self.log());
            }
            let _ = sock.send_to(b"ready d7:command4:pinge", self.ng);
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if &buf[..n] == b"ready d6:result4:ponge" {
                    return;
                }
            }
        }
        panic!("rtpengine did not answer ping within 10 s:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("rtpengine log:\n{}", self.log());
        }
    }
}

/// Drives a sans-IO [`Client`] over a real socket.
struct Driver {
    client: Client,
    sock: UdpSocket,
    out: Output,
    buf: Vec<u8>,
    rx: Vec<u8>,
    token: u64,
}

/// What a finished exchange gave back (owned: the completion borrows the
/// receive buffer).
struct Done {
    engine: usize,
    reply: Option<Vec<u8>>,
    timed_out: bool,
    retransmits: usize,
}

impl Driver {
    fn new(engines: &[(SocketAddr, u32)], cfg: ClientConfig) -> Driver {
        Driver {
            client: Client::new(cfg, EngineSet::new(engines).unwrap()),
            sock: UdpSocket::bind("127.0.0.1:0").unwrap(),
            out: Output::new(),
            buf: Vec::new(),
            rx: vec![0u8; 65_536],
            token: 0,
        }
    }

    fn run(&mut self, engine: Option<usize>, req: &Request<'_>) -> Done {
        self.token += 1;
        let token = self.token;
        self.buf.clear();
        let sent = self
            .client
            .send(Instant::now(), engine, req, token, &mut self.buf)
            .unwrap();
        self.sock.send_to(&self.buf, sent.addr).unwrap();
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut retransmits = 0;
        loop {
            let now = Instant::now();
            assert!(now < give_up, "exchange did not finish");
            let wait = self
                .client
                .next_deadline()
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(100))
                .max(Duration::from_millis(1));
            self.sock.set_read_timeout(Some(wait)).unwrap();
            self.out.clear();
            match self.sock.recv_from(&mut self.rx) {
                Ok((n, src)) => {
                    let data = &self.rx[..n];
                    if let Some(c) = self
                        .client
                        .on_reply(Instant::now(), src, data, &mut self.out)
                    {
                        assert_eq!(c.token, token);
                        return Done {
                            engine: c.engine,
                            reply: match c.outcome {
                                NgOutcome::Ok(_) | NgOutcome::Error(_) => Some(data.to_vec()),
                                NgOutcome::Invalid(e) => panic!("invalid reply: {e}"),
                                NgOutcome::Timeout => None,
                            },
                            timed_out: false,
                            retransmits,
                        };
                    }
                }
                Err(_) => self.client.on_timer(Instant::now(), &mut self.out),
            }
            for (addr, data) in self.out.transmits() {
                self.sock.send_to(data, addr).unwrap();
                retransmits += 1;
            }
            if let Some(c) = self.out.completions().first() {
                assert_eq!(c.token, token);
                return Done {
                    engine: c.engine,
                    reply: None,
                    timed_out: c.outcome == NgOutcome::Timeout,
                    retransmits,
                };
            }
        }
    }
}

fn line<'a>(sdp: &'a str, prefix: &str) -> &'a str {
    sdp.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in:\n{sdp}"))
}

fn audio_port(sdp: &str) -> u16 {
    line(sdp, "m=audio ")
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn rtpengine_ping_offer_answer_query_list_delete() {
    let d = Daemon::start();
    let mut drv = Driver::new(&[(d.ng, 1)], ClientConfig::default());
    let call_id = format!("sipvane-test-{}@127.0.0.1", d.ng.port());
    let (ft, tt) = (b"caller-tag".as_slice(), b"callee-tag".as_slice());
    let flags =
        NgFlags::parse("replace-origin replace-session-connection ICE=remove RTP/AVP").unwrap();

    // ping → pong
    let done = drv.run(Some(0), &Request::ping());
    let raw = done.reply.expect("pong");
    assert_eq!(Reply::parse(&raw).unwrap().result, NgResult::Pong);

    // offer → SDP now points at the engine
    let done = drv.run(
        None,
        &Request::offer(call_id.as_bytes(), ft, CALLER_SDP.as_bytes(), &flags),
    );
    assert_eq!(done.engine, 0);
    let raw = done.reply.expect("offer reply");
    let reply = Reply::parse(&raw).unwrap();
    assert_eq!(reply.result, NgResult::Ok, "{reply:?}");
    let sdp = std::str::from_utf8(reply.sdp().expect("sdp")).unwrap();
    assert_eq!(line(sdp, "c="), "c=IN IP4 127.0.0.1", "{sdp}");
    assert!(
        line(sdp, "o=").ends_with("IN IP4 127.0.0.1"),
        "replace-origin: {sdp}"
    );
    let offer_port = audio_port(sdp);
    assert!(
        (d.port_min..=d.port_max).contains(&offer_port),
        "{offer_port} not in {}..={}",
        d.port_min,
        d.port_max
    );
    assert!(!sdp.contains("192.0.2.10"), "{sdp}");

    // answer → the callee's SDP, likewise rewritten, on another port
    let done = drv.run(
        Some(0),
        &Request::answer(call_id.as_bytes(), ft, tt, CALLEE_SDP.as_bytes(), &flags),
    );
    let raw = done.reply.expect("answer reply");
    let reply = Reply::parse(&raw).unwrap();
    assert_eq!(reply.result, NgResult::Ok, "{reply:?}");
    let sdp = std::str::from_utf8(reply.sdp().expect("sdp")).unwrap();
    assert_eq!(line(sdp, "c="), "c=IN IP4 127.0.0.1", "{sdp}");
    let answer_port = audio_port(sdp);
    assert!((d.port_min..=d.port_max).contains(&answer_port));
    assert_ne!(answer_port, offer_port);
    assert!(line(sdp, "m=audio ").contains("RTP/AVP 8"), "{sdp}");

    // query → the call with both parties
    let done = drv.run(Some(0), &Request::query(call_id.as_bytes()));
    let raw = done.reply.expect("query reply");
    let reply = Reply::parse(&raw).unwrap();
    assert_eq!(reply.result, NgResult::Ok, "{reply:?}");
    let stats = reply.stats().expect("stats");
    assert_eq!(stats.tags, 2, "{reply:?}");
    assert!(stats.created.is_some_and(|t| t > 1_600_000_000));
    assert_eq!(stats.rtp.packets, 0);
    let tags = reply.dict.get_dict(b"tags").unwrap();
    assert!(tags.get(ft).is_some() && tags.get(tt).is_some());

    // list → includes it
    let done = drv.run(Some(0), &Request::list(None));
    let raw = done.reply.expect("list reply");
    let reply = Reply::parse(&raw).unwrap();
    assert!(reply
        .calls()
        .expect("calls")
        .iter()
        .any(|v| v.as_bytes() == Some(call_id.as_bytes())));

    // delete → ok
    let done = drv.run(
        Some(0),
        &Request::delete(call_id.as_bytes(), ft, Some(tt), None),
    );
    let raw = done.reply.expect("delete reply");
    let reply = Reply::parse(&raw).unwrap();
    assert_eq!(reply.result, NgResult::Ok, "{reply:?}");

    // query after delete → error
    let done = drv.run(Some(0), &Request::query(call_id.as_bytes()));
    let raw = done.reply.expect("query reply");
    let reply = Reply::parse(&raw).unwrap();
    assert_eq!(reply.result, NgResult::Error);
    assert_eq!(reply.error_reason(), Some(&b"Unknown call-id"[..]));
    assert_eq!(drv.client.pending(), 0);
}

#[test]
fn rtpengine_offer_fails_over_from_a_silent_engine() {
    let d = Daemon::start();
    // A bound socket that never answers stands in for a dead engine.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap();
    let cfg = ClientConfig {
        timeout: Duration::from_millis(50),
        retries: 1,
        ..ClientConfig::default()
    };
    let engines = [(dead, 1), (d.ng, 1)];
    let mut drv = Driver::new(&engines, cfg);
    // Pick a Call-ID that hashes to the dead engine first.
    let set = EngineSet::new(&engines).unwrap();
    let call_id = (0..)
        .map(|i| format!("failover-{i}-{}", d.ng.port()))
        .find(|c| {
            set.choose(dataplane::rtpengine::client::hash_call_id(c.as_bytes()), 0) == Some(0)
        })
        .unwrap();
    let flags = NgFlags::parse("replace-origin replace-session-connection").unwrap();

    let done = drv.run(
        None,
        &Request::offer(call_id.as_bytes(), b"ft", CALLER_SDP.as_bytes(), &flags),
    );
    assert!(!done.timed_out);
    assert_eq!(done.engine, 1, "served by the real engine");
    // One retransmission to the dead engine, then the failover send.
    assert_eq!(done.retransmits, 2);
    let raw = done.reply.expect("offer reply");
    let reply = Reply::parse(&raw).unwrap();
    assert_eq!(reply.result, NgResult::Ok, "{reply:?}");
    assert!(!drv.client.engines().is_up(0));
    assert!(drv.client.engines().is_up(1));
    // The dead engine really got the two sends, with one cookie.
    silent
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut b = [0u8; 4096];
    let (n1, _) = silent.recv_from(&mut b).unwrap();
    let first = b[..n1].to_vec();
    let (n2, _) = silent.recv_from(&mut b).unwrap();
    assert_eq!(&b[..n2], &first[..]);

    // Clean up the session on the engine that holds it.
    let done = drv.run(
        Some(1),
        &Request::delete(call_id.as_bytes(), b"ft", None, None),
    );
    let raw = done.reply.expect("delete reply");
    assert!(Reply::parse(&raw).unwrap().is_success());
}
