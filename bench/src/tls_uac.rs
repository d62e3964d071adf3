//! `sipvane-bench tls-uac`: a SIP caller over TLS on rustls (the client side
//! of the stack sipvane serves with; Python's `ssl` in
//! control/tests/transport_tls.rs is the independent one). Each connection
//! is a trunk: one TLS connection, an OPTIONS, then calls one after another
//! (INVITE → 200 → ACK → BYE → 200, the ACK and BYE along the Record-Route
//! set), paced to the offered rate. Blocking I/O, one thread per connection:
//! this is for correctness and modest load, not for saturating a proxy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dataplane::sip::{parse, HeaderName, NameAddr};
use dataplane::transport::framer::{Frame, Framer};
use hdrhistogram::Histogram;

#[derive(clap::Args)]
pub struct TlsUacArgs {
    /// The proxy's TLS address (host:port).
    target: String,
    /// PEM file of the CA the proxy's certificate must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Name to verify the certificate against (and send as SNI).
    #[arg(long, default_value = "sip.test")]
    server_name: String,
    /// Calls to place, over all connections.
    #[arg(long, default_value_t = 100)]
    calls: u64,
    /// Offered calls per second, over all connections.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// TLS connections (each its own thread, calls one after another).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Request-URI user part.
    #[arg(long, default_value = "bench")]
    user: String,
    /// Request-URI host[:port] of the OPTIONS and the INVITEs (default: the
    /// target address; a proxy answers OPTIONS itself only when they name
    /// one of its addresses, which may be its UDP port rather than the TLS one).
    #[arg(long)]
    domain: Option<String>,
    /// Give up on a response after this long (the connection then stops).
    #[arg(long, default_value_t = 8_000)]
    timeout_ms: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Outcome {
    ok: u64,
    failed: u64,
    /// Why the first failure of the connection happened.
    error: Option<String>,
    setup_us: Vec<u64>,
    handshake_us: u64,
}

pub fn run(a: &TlsUacArgs) -> Result<()> {
    if a.rate.is_nan() || a.rate <= 0.0 {
        bail!("--rate must be > 0");
    }
    let target = crate::resolve(&a.target)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in dataplane::transport::tls::load_certs(&a.ca)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.ca.display()))?
    {
        roots.add(c).context("CA certificate")?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(dataplane::transport::tls::provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let cfg = Arc::new(cfg);
    let name = rustls::pki_types::ServerName::try_from(a.server_name.clone())
        .with_context(|| format!("bad --server-name {:?}", a.server_name))?;
    let conns = a.connections.max(1);
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let calls = a.calls / conns as u64 + u64::from((i as u64) < a.calls % conns as u64);
            let gap = Duration::from_secs_f64(conns as f64 / a.rate);
            let (cfg, name) = (cfg.clone(), name.clone());
            let (user, domain) = (a.user.clone(), a.domain.clone().unwrap_or(a.target.clone()));
            let timeout = Duration::from_millis(a.timeout_ms);
            std::thread::spawn(move || {
                let mut out = Outcome::default();
                if let Err(e) = trunk(
                    target,
                    cfg,
                    name,
                    (&user, &domain),
                    i,
                    calls,
                    gap,
                    timeout,
                    &mut out,
                ) {
                    out.failed = calls - out.ok;
                    out.error = Some(format!("{e:#}"));
                }
                out
            })
        })
        .collect();
    let outcomes: Vec<Outcome> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    let elapsed = start.elapsed();
    let mut hist = Histogram::<u64>::new(3).context("histogram")?;
    for o in &outcomes {
        for &us in &o.setup_us {
            hist.saturating_record(us);
        }
    }
    let ok: u64 = outcomes.iter().map(|o| o.ok).sum();
    let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
    let errors: Vec<&str> = outcomes.iter().filter_map(|o| o.error.as_deref()).collect();
    let handshake = outcomes.iter().map(|o| o.handshake_us).max().unwrap_or(0);
    let cps = ok as f64 / elapsed.as_secs_f64().max(1e-9);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": ok,
                "failed": failed,
                "connections": conns,
                "errors": errors,
                "elapsed_s": elapsed.as_secs_f64(),
                "achieved_cps": cps,
                "handshake_us_max": handshake,
                "setup_us": {
                    "p50": hist.value_at_quantile(0.5),
                    "p99": hist.value_at_quantile(0.99),
                    "max": hist.max(),
                },
            }))?
        );
    } else {
        println!(
            "tls-uac: {ok} calls ok, {failed} failed over {conns} TLS connection(s) in {:.1} s \
             ({cps:.0} calls/s); setup p50 {} µs, p99 {} µs; handshake ≤ {handshake} µs",
            elapsed.as_secs_f64(),
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
        );
        for e in &errors {
            println!("tls-uac: connection stopped: {e}");
        }
    }
    if failed > 0 {
        bail!("{failed} of {} calls failed", ok + failed);
    }
    Ok(())
}

/// One connection: handshake, OPTIONS, then `calls` calls `gap` apart.
#[allow(clippy::too_many_arguments)]
fn trunk(
    target: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    (user, domain): (&str, &str),
    index: usize,
    calls: u64,
    gap: Duration,
    timeout: Duration,
    out: &mut Outcome,
) -> Result<()> {
    let t0 = Instant::now();
    let sock = TcpStream::connect_timeout(&target, timeout).context("connect")?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_nodelay(true)?;
    let local = sock.local_addr()?;
    let conn = rustls::ClientConnection::new(cfg, name).context("TLS client")?;
    let mut c = Caller {
        tls: rustls::StreamOwned::new(conn, sock),
        framer: Framer::new(MAX_MESSAGE),
        ready: std::collections::VecDeque::new(),
        local,
        domain: domain.to_owned(),
        tag: format!("tls{index}-{}", std::process::id()),
    };
    // The handshake runs on the first write; finish it here to time it.
    while c.tls.conn.is_handshaking() {
        c.tls
            .conn
            .complete_io(&mut c.tls.sock)
            .context("TLS handshake")?;
    }
    out.handshake_us = t0.elapsed().as_micros() as u64;
    let uri = format!("sip:{domain}");
    c.send("OPTIONS", &uri, "options", 1, &format!("<{uri}>"), &[], "")?;
    let r = c.final_response()?;
    if status(&r) != 200 {
        bail!("OPTIONS answered {}", status(&r));
    }
    let mut next = Instant::now();
    for n in 0..calls {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += gap;
        let call_id = format!("{n}");
        let started = Instant::now();
        match c.call(user, &call_id) {
            Ok(()) => {
                out.ok += 1;
                out.setup_us.push(started.elapsed().as_micros() as u64);
            }
            Err(e) => {
                // A call that failed with an answer leaves the connection
                // usable; anything else (no answer, closed) stops it.
                if e.downcast_ref::<Rejected>().is_none() {
                    return Err(e);
                }
                out.failed += 1;
                out.error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Ok(())
}

/// A call answered with a failure; the connection stays usable.
#[derive(Debug)]
struct Rejected(u16);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "INVITE answered {}", self.0)
    }
}

impl std::error::Error for Rejected {}

struct Caller {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    framer: Framer,
    /// Messages framed but not yet read.
    ready: std::collections::VecDeque<Vec<u8>>,
    local: SocketAddr,
    domain: String,
    tag: String,
}

const MAX_MESSAGE: usize = 65_536;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 6000 RTP/AVP 0\r\n";

impl Caller {
    /// INVITE → 200 → ACK → BYE → 200.
    fn call(&mut self, user: &str, call_id: &str) -> Result<()> {
        let ruri = format!("sip:{user}@{}", self.domain);
        let to = format!("<{ruri}>");
        self.send("INVITE", &ruri, call_id, 1, &to, &[], SDP)?;
        let ok = self.final_response()?;
        let msg = parse(&ok).map_err(|e| anyhow!("unparsable answer: {e:?}"))?;
        let code = msg.status().unwrap_or(0);
        if code != 200 {
            return Err(Rejected(code).into());
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        let to_tag = msg
            .to()
            .ok()
            .and_then(|t| t.tag)
            .map(text)
            .context("200 without a To-tag")?;
        let to = format!("{to};tag={to_tag}");
        let mut routes: Vec<String> = msg.values(HeaderName::RecordRoute).map(text).collect();
        routes.reverse();
        let contact = msg
            .values(HeaderName::Contact)
            .next()
            .and_then(|v| NameAddr::parse(v).ok())
            .map(|n| text(n.uri))
            .context("200 without a Contact")?;
        self.send("ACK", &contact, call_id, 1, &to, &routes, "")?;
        self.send("BYE", &contact, call_id, 2, &to, &routes, "")?;
        let bye = self.final_response()?;
        if status(&bye) != 200 {
            bail!("BYE answered {}", status(&bye));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        method: &str,
        uri: &str,
        call_id: &str,
        cseq: u32,
        to: &str,
        routes: &[String],
        body: &str,
    ) -> Result<()> {
        use std::fmt::Write as _;
        let (local, tag) = (self.local, &self.tag);
        let mut m = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS {local};rport;branch=z9hG4bK{tag}-{call_id}-{cseq}{method}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:tls-uac@{local}>;tag={tag}\r\nTo: {to}\r\n\
             Call-ID: {tag}-{call_id}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:tls-uac@{local};transport=tls>\r\n"
        );
        for r in routes {
            let _ = write!(m, "Route: {r}\r\n");
        }
        if !body.is_empty() {
            m.push_str("Content-Type: application/sdp\r\n");
        }
        let _ = write!(m, "Content-Length: {}\r\n\r\n{body}", body.len());
        self.tls.write_all(m.as_bytes()).context("send")?;
        self.tls.flush().context("send")
    }

    /// The next final response; provisional ones and requests are skipped.
    fn final_response(&mut self) -> Result<Vec<u8>> {
        loop {
            while let Some(m) = self.ready.pop_front() {
                if parse(&m).is_ok_and(|msg| msg.status().is_some_and(|c| c >= 200)) {
                    return Ok(m);
                }
            }
            let mut chunk = [0u8; 16384];
            let n = self.tls.read(&mut chunk).context("read")?;
            if n == 0 {
                bail!("connection closed by the proxy");
            }
            let ready = &mut self.ready;
            self.framer
                .feed(Instant::now(), &chunk[..n], |f| {
                    if let Frame::Message(m) = f {
                        ready.push_back(m.to_vec());
                    }
                })
                .map_err(|e| anyhow!("framing: {e}"))?;
        }
    }
}

/// The status code of a response (0 when it does not parse as one).
fn status(msg: &[u8]) -> u16 {
    parse(msg).ok().and_then(|m| m.status()).unwrap_or(0)
}
