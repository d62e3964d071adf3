//! The prober's state machine, free of sockets and clocks: the driver passes `now`,
//! the current table and received datagrams in, and takes datagrams to send, state
//! changes to report and the next deadline out.
//!
//! Per destination it counts consecutive probe outcomes, Kamailio style:
//! `probing_threshold` failures in a row take an active destination to `probing`
//! (not selected, waiting for the prober); `inactive_threshold` answers in a row
//! bring a down destination (`probing` or `inactive`) back to `active`. A
//! destination the data plane took out after call failures (inactive with a
//! hold-down) is handed to the prober as `probing`, so with probing on it is the
//! probes, not the hold-down timer, that bring it back. Disabled destinations are
//! never probed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::dispatch::list::FLAG_PROBING;
use dataplane::dispatch::{DestState, DestStats, Table};

use crate::config::ProbingMode;

/// RFC 3261 T1: first retransmission of a probe over UDP.
const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: retransmissions of a non-INVITE request never wait longer.
const T2: Duration = Duration::from_secs(4);
/// Prefix of every probe branch, so replies to probes are told from strays.
const BRANCH_PREFIX: &str = "z9hG4bK-sp";

/// The prober's settings (from `[dispatcher]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between the starts of two rounds.
    pub interval: Duration,
    /// A probe not answered within this is a failure (at most `interval`).
    pub timeout: Duration,
    /// Consecutive failures that take an active destination down (≥ 1).
    pub probing_threshold: u32,
    /// Consecutive answers that bring a down destination back (≥ 1).
    pub inactive_threshold: u32,
    /// Final reply codes that count as alive besides 2xx.
    pub reply_codes: Vec<u16>,
    /// From URI of probes.
    pub from: String,
    /// Method of probes.
    pub method: String,
    /// Which destinations are probed while active.
    pub mode: ProbingMode,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
    /// Over a TCP connection of its own (a `;transport=tcp` destination): the
    /// reply comes back on it; a connection that cannot be opened is a failed
    /// probe ([`Prober::connect_failed`]).
    pub tcp: bool,
    /// Over TLS on that connection (a `;transport=tls` / `sips:` destination):
    /// the name its certificate must carry (URI host name or IP address). A
    /// failed handshake is a failed probe, as a failed connect.
    pub tls: Option<String>,
}

/// A state change the prober made; the driver logs it and emits `dst_up` /
/// `dst_down`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub set: u32,
    pub uri: String,
    pub old: DestState,
    pub new: DestState,
    pub reason: Cow<'static, str>,
}

impl Change {
    /// Whether the destination became usable (`dst_up`) rather than unusable.
    pub fn is_up(&self) -> bool {
        self.new == DestState::Active
    }
}

/// What the prober remembers about one destination between rounds.
struct Target {
    /// Held so the key (the stats' address) cannot be reused while we track it.
    stats: Arc<DestStats>,
    set: u32,
    uri: String,
    /// State seen at the end of our last look, to tell our changes from others'.
    last_state: DestState,
    failures: u32,
    successes: u32,
    /// Round in which the destination was last in the table.
    round: u64,
}

struct Pending {
    target: usize,
    to: SocketAddr,
    tcp: bool,
    bytes: Vec<u8>,
    sent: Instant,
    deadline: Instant,
    /// `None` once a provisional reply arrived (the request got through).
    retransmit: Option<(Instant, Duration)>,
}

/// The OPTIONS prober.
pub struct Prober {
    cfg: ProbeConfig,
    /// `host:port` written in the Via of probes, per address family (v4, v6);
    /// `None`: that family cannot be probed.
    sent_by: [Option<String>; 2],
    /// Keyed by the address of the destination's `DestStats`, which persists
    /// across reloads.
    targets: HashMap<usize, Target>,
    /// Keyed by the number in the probe's branch.
    pending: HashMap<u64, Pending>,
    next_probe: u64,
    round: u64,
    /// Makes branches and Call-IDs unique across restarts.
    instance: u64,
    /// Seals each branch to its probe number and destination address (key
    /// from OS randomness): a reply with a guessed or replayed branch — say
    /// from a peer that saw one probe and counts on — is ignored, so no
    /// forged reply keeps a dead destination up.
    seal_key: (u64, u64),
    /// Replies ignored because their branch's seal was wrong.
    forged: u64,
}

fn key(stats: &Arc<DestStats>) -> usize {
    Arc::as_ptr(stats) as usize
}

impl Prober {
    /// `instance` should differ between runs (e.g. random); it goes into
    /// branches and Call-IDs.
    pub fn new(cfg: ProbeConfig, instance: u64) -> Self {
        let cfg = ProbeConfig {
            timeout: cfg.timeout.min(cfg.interval).max(Duration::from_millis(1)),
            probing_threshold: cfg.probing_threshold.max(1),
            inactive_threshold: cfg.inactive_threshold.max(1),
            ..cfg
        };
        Prober {
            cfg,
            sent_by: [None, None],
            targets: HashMap::new(),
            pending: HashMap::new(),
            next_probe: 0,
            round: 0,
            instance,
            seal_key: random_key(),
            forged: 0,
        }
    }

    /// The effective settings (thresholds clamped, timeout capped).
    /// Replies ignored because their branch's seal did not verify.
    pub fn forged(&self) -> u64 {
        self.forged
    }

    pub fn config(&self) -> &ProbeConfig {
        &self.cfg
    }

    /// Declares the local `host:port` probes to IPv4 (`v6 == false`) or IPv6
    /// destinations are sent from; replies come back to it.
    pub fn set_sent_by(&mut self, v6: bool, sent_by: Option<String>) {
        self.sent_by[usize::from(v6)] = sent_by;
    }

    /// Probes in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Starts a round over `table` (re-read by the caller each round, since it
    /// may have been reloaded): probes what the mode and the flags ask for and
    /// takes over destinations the data plane took out.
    pub fn start_round(
        &mut self,
        now: Instant,
        table: &Table,
        out: &mut Vec<Transmit>,
        changes: &mut Vec<Change>,
    ) {
        // A probe still unanswered from the last round has had its chance.
        self.expire(now, true, changes);
        self.round += 1;
        let round = self.round;
        for (_, d) in table.iter() {
            let k = key(&d.stats);
            let t = self.targets.entry(k).or_insert_with(|| Target {
                stats: Arc::clone(&d.stats),
                set: d.set,
                uri: d.uri.clone(),
                last_state: d.stats.state(),
                failures: 0,
                successes: 0,
                round,
            });
            t.round = round;
            let state = t.stats.state();
            if state == DestState::Inactive && t.stats.inactive_until().is_some() {
                // Taken out by call failures: the probes, not the hold-down
                // timer, decide when it comes back.
                t.stats.set_state(DestState::Probing);
                if t.last_state == DestState::Active {
                    changes.push(Change {
                        set: t.set,
                        uri: t.uri.clone(),
                        old: DestState::Active,
                        new: DestState::Probing,
                        reason: Cow::Borrowed("call failures"),
                    });
                }
                t.successes = 0;
                t.failures = 0;
            } else if state != t.last_state {
                // Changed by an operator or a reload: count afresh.
                t.successes = 0;
                t.failures = 0;
            }
            let state = t.stats.state();
            t.last_state = state;
            let probe = match state {
                DestState::Disabled => false,
                DestState::Inactive | DestState::Probing => true,
                DestState::Active => match self.cfg.mode {
                    ProbingMode::All => true,
                    ProbingMode::Flagged => d.flags & FLAG_PROBING != 0,
                    ProbingMode::Inactive => false,
                },
            };
            // (Nothing is pending here: the round began by expiring every probe.)
            if !probe {
                continue;
            }
            let Some(sent_by) = self.sent_by[usize::from(d.addr.is_ipv6())].as_deref() else {
                continue;
            };
            let n = self.next_probe;
            self.next_probe += 1;
            let seal = seal_of(self.seal_key, self.instance, n, d.addr);
            let tls = d.tls.then(|| tls_name(&d.uri, d.addr));
            let transport = match (d.tcp, d.tls) {
                (_, true) => "TLS",
                (true, _) => "TCP",
                _ => "UDP",
            };
            let bytes = build_probe(
                &self.cfg,
                sent_by,
                &d.uri,
                transport,
                (self.instance, n, seal),
            );
            let stream = d.tcp || d.tls;
            out.push(Transmit {
                to: d.addr,
                bytes: bytes.clone(),
                tcp: stream,
                tls,
            });
            self.pending.insert(
                n,
                Pending {
                    target: k,
                    to: d.addr,
                    tcp: stream,
                    bytes,
                    sent: now,
                    deadline: now + self.cfg.timeout,
                    // Reliable transport: never retransmitted (RFC 3261 §17.1.2.2).
                    retransmit: (!stream).then_some((now + T1, T1)),
                },
            );
        }
        // Forget destinations no longer in the table (and their probes).
        self.targets.retain(|_, t| t.round == round);
        let targets = &self.targets;
        self.pending.retain(|_, p| targets.contains_key(&p.target));
    }

    /// Handles a datagram received on the probe socket. Anything that is not a
    /// reply to a probe of ours is ignored.
    pub fn handle(&mut self, now: Instant, bytes: &[u8], changes: &mut Vec<Change>) {
        let Ok(msg) = dataplane::sip::parse(bytes) else {
            return;
        };
        let Some(code) = msg.status() else { return };
        let Ok(via) = msg.top_via() else { return };
        let Some((n, seal)) = via
            .branch
            .and_then(|b| b.strip_prefix(BRANCH_PREFIX.as_bytes()))
            .and_then(|rest| parse_branch(rest, self.instance))
        else {
            return;
        };
        let method_ok = msg
            .cseq()
            .is_ok_and(|c| c.method_raw == self.cfg.method.as_bytes());
        if !method_ok {
            return;
        }
        let Some(to) = self.pending.get(&n).map(|p| p.to) else {
            return;
        };
        if seal != seal_of(self.seal_key, self.instance, n, to) {
            self.forged += 1;
            tracing::debug!(%to, "probe reply with a forged branch ignored");
            return;
        }
        let Some(p) = self.pending.get_mut(&n) else {
            return;
        };
        if code < 200 {
            p.retransmit = None;
            return;
        }
        let Some(p) = self.pending.remove(&n) else {
            return;
        };
        let ok = (200..300).contains(&code) || self.cfg.reply_codes.contains(&code);
        let reason = if ok {
            Cow::Owned(format!("probe answered {code}"))
        } else {
            Cow::Owned(format!("probe reply {code}"))
        };
        self.outcome(
            p.target,
            ok,
            now.saturating_duration_since(p.sent),
            reason,
            changes,
        );
    }

    /// Retransmits due probes and fails those past their deadline.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Transmit>, changes: &mut Vec<Change>) {
        self.expire(now, false, changes);
        for p in self.pending.values_mut() {
            if let Some((at, wait)) = p.retransmit {
                if now >= at {
                    out.push(Transmit {
                        to: p.to,
                        bytes: p.bytes.clone(),
                        tcp: false,
                        tls: None,
                    });
                    let wait = (wait * 2).min(T2);
                    p.retransmit = Some((now + wait, wait));
                }
            }
        }
    }

    /// When [`poll`](Self::poll) has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .flat_map(|p| [Some(p.deadline), p.retransmit.map(|(at, _)| at)])
            .flatten()
            .min()
    }

    /// The TCP connection for the probes to `to` could not be opened (refused,
    /// or not up within the probe timeout): each is a failed probe now.
    pub fn connect_failed(&mut self, to: SocketAddr, changes: &mut Vec<Change>) {
        let failed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.tcp && p.to == to)
            .map(|(&n, _)| n)
            .collect();
        for n in failed {
            if let Some(p) = self.pending.remove(&n) {
                let reason = Cow::Borrowed("probe connection failed");
                self.outcome(p.target, false, Duration::ZERO, reason, changes);
            }
        }
    }

    fn expire(&mut self, now: Instant, all: bool, changes: &mut Vec<Change>) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| all || now >= p.deadline)
            .map(|(&n, _)| n)
            .collect();
        for n in expired {
            if let Some(p) = self.pending.remove(&n) {
                let reason = Cow::Borrowed("probe timeout");
                self.outcome(p.target, false, Duration::ZERO, reason, changes);
            }
        }
    }

    fn outcome(
        &mut self,
        target: usize,
        ok: bool,
        latency: Duration,
        reason: Cow<'static, str>,
        changes: &mut Vec<Change>,
    ) {
        let Some(t) = self.targets.get_mut(&target) else {
            return;
        };
        let state = t.stats.state();
        if state != t.last_state {
            // Someone else changed it while the probe was out: start afresh.
            t.successes = 0;
            t.failures = 0;
            t.last_state = state;
        }
        if ok {
            t.stats.record_latency(latency);
            t.failures = 0;
        } else {
            t.successes = 0;
        }
        let new = match state {
            DestState::Active if !ok => {
                t.failures += 1;
                (t.failures >= self.cfg.probing_threshold).then_some(DestState::Probing)
            }
            DestState::Inactive | DestState::Probing if ok => {
                t.successes += 1;
                (t.successes >= self.cfg.inactive_threshold).then_some(DestState::Active)
            }
            _ => None,
        };
        if let Some(new) = new {
            t.stats.set_state(new);
            t.failures = 0;
            t.successes = 0;
            t.last_state = new;
            changes.push(Change {
                set: t.set,
                uri: t.uri.clone(),
                old: state,
                new,
                reason,
            });
        }
    }
}

/// The probe for destination `uri`: (instance, probe number, seal).
fn build_probe(
    cfg: &ProbeConfig,
    sent_by: &str,
    uri: &str,
    transport: &str,
    id: (u64, u64, u64),
) -> Vec<u8> {
    let m = &cfg.method;
    let (instance, n, seal) = id;
    // Over TCP the reply returns on the probe's connection whatever the Via
    // says (RFC 3261 §18.2.2); the UDP sent-by names sipvane all the same.
    format!(
        "{m} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {sent_by};branch={BRANCH_PREFIX}{instance:x}.{n:x}.{seal:016x};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <{from}>;tag={instance:x}\r\n\
         To: <{uri}>\r\n\
         Call-ID: {instance:x}.{n:x}@sipvane.probe\r\n\
         CSeq: 1 {m}\r\n\
         Content-Length: 0\r\n\r\n",
        from = cfg.from,
    )
    .into_bytes()
}

/// The name a TLS destination's certificate must carry: its URI's host name,
/// or (an IP literal) its address.
fn tls_name(uri: &str, addr: SocketAddr) -> String {
    dataplane::sip::Uri::parse(uri.as_bytes())
        .ok()
        .filter(|u| dataplane::route::parse_ip(u.host).is_none())
        .map_or_else(
            || addr.ip().to_string(),
            |u| String::from_utf8_lossy(u.host).into_owned(),
        )
}

/// The probe number and seal from the branch after the prefix:
/// `<instance hex>.<n hex>.<seal hex>`.
fn parse_branch(rest: &[u8], instance: u64) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(rest).ok()?;
    let mut parts = s.split('.');
    let (i, n, seal) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || u64::from_str_radix(i, 16).ok()? != instance {
        return None;
    }
    Some((
        u64::from_str_radix(n, 16).ok()?,
        u64::from_str_radix(seal, 16).ok()?,
    ))
}

/// The seal of probe `n` of `instance` to `to`.
fn seal_of(key: (u64, u64), instance: u64, n: u64, to: SocketAddr) -> u64 {
    let mut h = siphasher::sip::SipHasher24::new_with_keys(key.0, key.1);
    h.write_u64(instance);
    h.write_u64(n);
    match to.ip() {
        std::net::IpAddr::V4(ip) => h.write(&ip.octets()),
        std::net::IpAddr::V6(ip) => h.write(&ip.octets()),
    }
    h.write_u16(to.port());
    h.finish()
}

/// A key from the OS-seeded hasher keys (std's `RandomState`).
fn random_key() -> (u64, u64) {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new();
    (r.hash_one(1u8), r.hash_one(2u8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::dispatch::{parse_list, HealthPolicy};

    const MS: Duration = Duration::from_millis(1);

    fn cfg(mode: ProbingMode) -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            probing_threshold: 3,
            inactive_threshold: 2,
            reply_codes: vec![404],
            from: "sip:sipvane@localhost".into(),
            method: "OPTIONS".into(),
            mode,
        }
    }

    fn table(text: &str, epoch: Instant) -> Table {
        let mut port = 5060u16;
        Table::build(&parse_list(text).unwrap(), epoch, &mut |_| {
            port += 1;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .unwrap()
    }

    fn prober(mode: ProbingMode) -> Prober {
        let mut p = Prober::new(cfg(mode), 0xabc);
        p.set_sent_by(false, Some("127.0.0.1:4000".into()));
        p
    }

    /// The reply a UAS would send to `probe`.
    fn reply(probe: &[u8], code: u16) -> Vec<u8> {
        let text = String::from_utf8(probe.to_vec()).unwrap();
        let mut out = format!("SIP/2.0 {code} Whatever\r\n");
        for l in text.lines().skip(1) {
            let lower = l.to_ascii_lowercase();
            if ["via:", "from:", "to:", "call-id:", "cseq:"]
                .iter()
                .any(|h| lower.starts_with(h))
            {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out.into_bytes()
    }

    fn round(p: &mut Prober, now: Instant, t: &Table) -> (Vec<Transmit>, Vec<Change>) {
        let (mut out, mut ch) = (Vec::new(), Vec::new());
        p.start_round(now, t, &mut out, &mut ch);
        (out, ch)
    }

    fn state(t: &Table, uri: &str) -> DestState {
        t.find(1, uri).unwrap().1.stats.state()
    }

    #[test]
    fn probe_is_a_well_formed_options() {
        let t0 = Instant::now();
        let t = table("1 sip:127.0.0.1:5061\n", t0);
        let mut p = prober(ProbingMode::All);
        let (out, _) = round(&mut p, t0, &t);
        assert_eq!(out.len(), 1);
        let msg = dataplane::sip::parse(&out[0].bytes).unwrap();
        msg.validate_request().unwrap();
        assert_eq!(msg.method_raw(), Some(&b"OPTIONS"[..]));
        assert_eq!(msg.request_uri(), Some(&b"sip:127.0.0.1:5061"[..]));
        assert_eq!(msg.from().unwrap().uri, b"sip:sipvane@localhost");
        assert_eq!(msg.top_via().unwrap().host, b"127.0.0.1");
        assert_eq!(out[0].to, SocketAddr::from(([127, 0, 0, 1], 5061)));
    }

    #[test]
    fn tcp_destinations_are_probed_over_tcp_without_retransmissions() {
        let t0 = Instant::now();
        let t = table("1 sip:a;transport=tcp\n1 sip:b\n", t0);
        let mut p = prober(ProbingMode::All);
        let (out, _) = round(&mut p, t0, &t);
        assert_eq!(out.len(), 2);
        let tcp = out.iter().find(|o| o.tcp).expect("a TCP probe");
        let text = String::from_utf8_lossy(&tcp.bytes);
        assert!(text.contains("Via: SIP/2.0/TCP 127.0.0.1:4000;"), "{text}");
        // Only the UDP probe is retransmitted.
        let (mut o, mut ch) = (Vec::new(), Vec::new());
        p.poll(t0 + T1, &mut o, &mut ch);
        assert_eq!(o.len(), 1);
        assert!(!o[0].tcp);
        // The reply on the connection counts like a UDP one.
        p.handle(t0 + 10 * MS, &reply(&tcp.bytes, 200), &mut ch);
        assert!(ch.is_empty(), "active stays active");
        assert_eq!(state(&t, "sip:a;transport=tcp"), DestState::Active);
        // A connection that cannot be opened fails the probe at once:
        // probing_threshold (3 here) rounds of refusals take it down.
        for r in 1..=3u32 {
            let now = t0 + Duration::from_secs(10 * u64::from(r));
            let (out, _) = round(&mut p, now, &t);
            let tcp = out.iter().find(|o| o.tcp).unwrap().to;
            p.connect_failed(tcp, &mut ch);
        }
        assert_eq!(state(&t, "sip:a;transport=tcp"), DestState::Probing);
        let down: Vec<_> = ch.iter().filter(|c| c.uri.contains("tcp")).collect();
        assert_eq!(down.len(), 1, "{ch:?}");
        assert_eq!(down[0].reason, "probe connection failed");
    }

    #[test]
    fn failures_take_down_and_answers_bring_back() {
        let t0 = Instant::now();
        let t = table("1 sip:a\n1 sip:b\n", t0);
        let mut p = prober(ProbingMode::All);
        let mut now = t0;
        // Three rounds with no answer from a, b always answers.
        for i in 0..3 {
            let (out, ch) = round(&mut p, now, &t);
            assert_eq!(out.len(), 2, "round {i}");
            assert!(ch.is_empty(), "round {i}: {ch:?}");
            let mut ch = Vec::new();
            p.handle(now + 3 * MS, &reply(&out[1].bytes, 200), &mut ch);
            assert!(ch.is_empty());
            now += Duration::from_secs(5);
            let mut o = Vec::new();
            p.poll(now, &mut o, &mut ch);
            if i < 2 {
                assert!(ch.is_empty(), "round {i}: {ch:?}");
                assert_eq!(state(&t, "sip:a"), DestState::Active);
            } else {
                assert_eq!(ch.len(), 1);
                assert_eq!(ch[0].uri, "sip:a");
                assert_eq!(
                    (ch[0].old, ch[0].new),
                    (DestState::Active, DestState::Probing)
                );
                assert_eq!(ch[0].reason, "probe timeout");
                assert!(!ch[0].is_up());
            }
        }
        assert_eq!(state(&t, "sip:a"), DestState::Probing);
        assert_eq!(state(&t, "sip:b"), DestState::Active);
        assert!(t.find(1, "sip:b").unwrap().1.stats.latency_us().unwrap() >= 3000);
        // a answers twice (404 is in reply_codes): back up on the second.
        for i in 0..2 {
            let (out, ch) = round(&mut p, now, &t);
            assert!(ch.is_empty());
            let mut ch = Vec::new();
            p.handle(now + MS, &reply(&out[0].bytes, 404), &mut ch);
            if i == 0 {
                assert!(ch.is_empty());
            } else {
                assert_eq!(ch.len(), 1);
                assert!(ch[0].is_up());
                assert_eq!(ch[0].reason, "probe answered 404");
            }
            p.handle(now + MS, &reply(&out[1].bytes, 200), &mut ch);
            now += Duration::from_secs(5);
        }
        assert_eq!(state(&t, "sip:a"), DestState::Active);
    }

    #[test]
    fn other_codes_fail_and_a_success_resets_the_streak() {
        let t0 = Instant::now();
        let t = table("1 sip:a\n", t0);
        let mut p = prober(ProbingMode::All);
        let mut now = t0;
        let mut all = Vec::new();
        for code in [503, 503, 200, 500, 486] {
            let (out, _) = round(&mut p, now, &t);
            p.handle(now, &reply(&out[0].bytes, code), &mut all);
            now += Duration::from_secs(5);
        }
        assert!(all.is_empty(), "{all:?}");
        let (out, _) = round(&mut p, now, &t);
        p.handle(now, &reply(&out[0].bytes, 403), &mut all);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].reason, "probe reply 403");
        assert_eq!(state(&t, "sip:a"), DestState::Probing);
    }

    #[test]
    fn retransmits_and_provisional_stops_them() {
        let t0 = Instant::now();
        let t = table("1 sip:a\n", t0);
        let mut p = prober(ProbingMode::All);
        let (out, _) = round(&mut p, t0, &t);
        assert_eq!(p.next_deadline(), Some(t0 + T1));
        let (mut o, mut ch) = (Vec::new(), Vec::new());
        p.poll(t0 + T1, &mut o, &mut ch);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0], out[0]);
        p.poll(t0 + T1 + 2 * T1, &mut o, &mut ch);
        assert_eq!(o.len(), 2);
        p.handle(t0 + 1600 * MS, &reply(&out[0].bytes, 100), &mut ch);
        p.poll(t0 + 1900 * MS, &mut o, &mut ch);
        assert_eq!(o.len(), 2, "no retransmission after a provisional");
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert!(ch.is_empty());
    }

    #[test]
    fn strays_and_foreign_replies_are_ignored() {
        let t0 = Instant::now();
        let t = table("1 sip:a\n", t0);
        let mut p = prober(ProbingMode::All);
        let (out, _) = round(&mut p, t0, &t);
        let mut ch = Vec::new();
        let good = reply(&out[0].bytes, 200);
        let text = String::from_utf8(good.clone()).unwrap();
        let other_instance = text.replace("z9hG4bK-spabc.", "z9hG4bK-spabd.");
        let other_method = text.replace("CSeq: 1 OPTIONS", "CSeq: 1 INFO");
        for junk in [
            b"garbage".to_vec(),
            out[0].bytes.clone(),
            other_instance.into_bytes(),
            other_method.into_bytes(),
            text.replace("z9hG4bK-spabc.0", "z9hG4bK-spabc.zz")
                .into_bytes(),
        ] {
            p.handle(t0, &junk, &mut ch);
            assert_eq!(p.pending(), 1);
        }
        p.handle(t0, &good, &mut ch);
        assert_eq!(p.pending(), 0);
        p.handle(t0, &good, &mut ch);
        assert!(ch.is_empty());
    }

    /// The branch of a reply, and the reply with its branch replaced.
    fn with_branch(reply: &[u8], f: impl Fn(&str) -> String) -> Vec<u8> {
        let text = String::from_utf8(reply.to_vec()).unwrap();
        let start = text.find("branch=").unwrap() + "branch=".len();
        let end = start + text[start..].find(';').unwrap();
        let forged = f(&text[start..end]);
        format!("{}{}{}", &text[..start], forged, &text[end..]).into_bytes()
    }

    #[test]
    fn forged_replies_never_bring_a_destination_up() {
        let t0 = Instant::now();
        let t = table(
            "1 sip:a
1 sip:b
",
            t0,
        );
        let mut p = prober(ProbingMode::All);
        let mut now = t0;
        // a is down after three unanswered rounds.
        for _ in 0..3 {
            round(&mut p, now, &t);
            now += Duration::from_secs(5);
            p.poll(now, &mut Vec::new(), &mut Vec::new());
        }
        assert_eq!(state(&t, "sip:a"), DestState::Probing);
        // An attacker who sees b's probes (or guesses) forges 200s for a's:
        // same instance and probe number, any other seal; or b's own branch
        // (b's seal) with a's probe number.
        for _ in 0..3 {
            let (out, _) = round(&mut p, now, &t);
            let a_probe = reply(&out[0].bytes, 200);
            let b_probe = reply(&out[1].bytes, 200);
            let a_n = |b: &str| b.split('.').nth(1).unwrap().to_owned();
            let b_branch = with_branch(&b_probe, |b| b.to_owned());
            let b_seal = String::from_utf8(b_branch).unwrap();
            let b_seal = b_seal
                .split("branch=")
                .nth(1)
                .unwrap()
                .split(['.', ';'])
                .nth(2)
                .unwrap()
                .to_owned();
            let mut ch = Vec::new();
            for forged in [
                with_branch(&a_probe, |b| {
                    let flipped = if b.ends_with('0') { '1' } else { '0' };
                    format!("{}{flipped}", &b[..b.len() - 1])
                }),
                with_branch(&a_probe, |b| format!("z9hG4bK-spabc.{}.{b_seal}", a_n(b))),
                with_branch(&a_probe, |b| format!("z9hG4bK-spabc.{}.0", a_n(b))),
            ] {
                p.handle(now, &forged, &mut ch);
            }
            assert!(ch.is_empty(), "{ch:?}");
            now += Duration::from_secs(5);
            p.poll(now, &mut Vec::new(), &mut ch);
        }
        assert_eq!(state(&t, "sip:a"), DestState::Probing);
        assert!(p.forged() >= 9, "{}", p.forged());
    }

    #[test]
    fn modes_and_flags_choose_what_is_probed() {
        let t0 = Instant::now();
        // a plain, b flagged probing (8), c disabled (4), d inactive+probing (9).
        let list = "1 sip:a 0\n1 sip:b 8\n1 sip:c 4\n1 sip:d 9\n";
        let probed = |mode| {
            let t = table(list, t0);
            let mut p = prober(mode);
            let (out, _) = round(&mut p, t0, &t);
            let mut uris: Vec<String> = out
                .iter()
                .map(|o| {
                    let m = dataplane::sip::parse(&o.bytes).unwrap();
                    String::from_utf8(m.request_uri().unwrap().to_vec()).unwrap()
                })
                .collect();
            uris.sort();
            uris
        };
        assert_eq!(probed(ProbingMode::All), ["sip:a", "sip:b", "sip:d"]);
        assert_eq!(probed(ProbingMode::Flagged), ["sip:b", "sip:d"]);
        assert_eq!(probed(ProbingMode::Inactive), ["sip:d"]);
    }

    #[test]
    fn data_plane_inactivity_is_taken_over_by_the_prober() {
        let t0 = Instant::now();
        let t = table("1 sip:a\n", t0);
        let stats = Arc::clone(&t.find(1, "sip:a").unwrap().1.stats);
        let mut p = prober(ProbingMode::Inactive);
        let (out, ch) = round(&mut p, t0, &t);
        assert!(out.is_empty() && ch.is_empty());
        let policy = HealthPolicy {
            failure_threshold: 1,
            hold_down: Duration::from_secs(30),
        };
        assert!(stats.record_failure(t0, &policy));
        let (out, ch) = round(&mut p, t0 + MS, &t);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].reason, "call failures");
        assert_eq!(stats.state(), DestState::Probing);
        assert!(
            !stats.is_usable(t0 + Duration::from_secs(60)),
            "the hold-down no longer brings it back"
        );
        let mut ch = Vec::new();
        p.handle(t0, &reply(&out[0].bytes, 200), &mut ch);
        let (out, _) = round(&mut p, t0 + 2 * MS, &t);
        p.handle(t0, &reply(&out[0].bytes, 200), &mut ch);
        assert_eq!(ch.len(), 1);
        assert!(ch[0].is_up());
        assert_eq!(stats.state(), DestState::Active);
    }

    #[test]
    fn operator_changes_and_reloads() {
        let t0 = Instant::now();
        let t = table("1 sip:a\n1 sip:b\n", t0);
        let a = Arc::clone(&t.find(1, "sip:a").unwrap().1.stats);
        let mut p = prober(ProbingMode::All);
        let mut ch = Vec::new();
        // Two failures, then an operator disables it: no probe, no change.
        for i in 0..2 {
            let (out, _) = round(&mut p, t0 + i * Duration::from_secs(5), &t);
            assert_eq!(out.len(), 2);
        }
        a.set_state(DestState::Disabled);
        let (out, c) = round(&mut p, t0 + Duration::from_secs(10), &t);
        ch.extend(c);
        assert_eq!(out.len(), 1);
        // Re-enabled: the old failures do not count.
        a.set_state(DestState::Active);
        let (out, c) = round(&mut p, t0 + Duration::from_secs(15), &t);
        ch.extend(c);
        assert_eq!(out.len(), 2);
        let (_, c) = round(&mut p, t0 + Duration::from_secs(20), &t);
        ch.extend(c);
        // (b never answers and goes down; a must not.)
        assert!(ch.iter().all(|c| c.uri == "sip:b"), "{ch:?}");
        assert_eq!(a.state(), DestState::Active);
        // A reload that drops a forgets it and its probe.
        let t2 = Table::rebuild(&t, &parse_list("1 sip:b\n").unwrap(), &mut |_| {
            Ok(SocketAddr::from(([127, 0, 0, 1], 5062)))
        })
        .unwrap();
        let (out, c) = round(&mut p, t0 + Duration::from_secs(25), &t2);
        assert_eq!(out.len(), 1);
        assert!(c.is_empty());
        assert_eq!(p.targets.len(), 1);
        assert_eq!(p.pending(), 1);
    }

    #[test]
    fn no_socket_for_a_family_means_no_probe() {
        let t0 = Instant::now();
        let t = Table::build(&parse_list("1 sip:[::1]:5060\n").unwrap(), t0, &mut |_| {
            Ok("[::1]:5060".parse().unwrap())
        })
        .unwrap();
        let mut p = prober(ProbingMode::All);
        let (out, _) = round(&mut p, t0, &t);
        assert!(out.is_empty());
        p.set_sent_by(true, Some("[::1]:4000".into()));
        let (out, _) = round(&mut p, t0, &t);
        assert_eq!(out.len(), 1);
    }
}
