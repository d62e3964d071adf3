//! sipvane-bench against real peers on loopback: its own responder, a real
//! sipvane, and the compare ladder with a real Kamailio. Every run is bounded
//! by `--calls`/`--duration-ms`; nothing here asserts on speed.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_sipvane-bench");

/// A child killed and reaped when the test ends, even on panic.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free for both UDP and TCP: sipvane's listen binds both when TCP is on.
fn free_port() -> u16 {
    loop {
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free UDP port on 127.0.0.1");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sipvane-bench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

fn uas(args: &[&str]) -> (Guard, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(BENCH)
        .args(["uas", "--listen", &addr, "--max-seconds", "60"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipvane-bench uas");
    // Ready when it answers OPTIONS (which sipvane's probes also rely on).
    assert_eq!(
        options(&addr),
        Some(200),
        "uas on {addr} answers OPTIONS 200"
    );
    (Guard(child), addr)
}

/// One OPTIONS, retried for up to 5 s; the final status code.
fn options(addr: &str) -> Option<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
    let l = s.local_addr().ok()?;
    let msg = format!(
        "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKt{p}\r\n\
Max-Forwards: 70\r\nFrom: <sip:t@{l}>;tag=t\r\nTo: <sip:{addr}>\r\nCall-ID: t{p}\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        p = l.port()
    );
    let end = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        s.send_to(msg.as_bytes(), addr).ok()?;
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            return text.get(8..11)?.parse().ok();
        }
    }
    None
}

fn uac(target: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(BENCH)
        .args(["uac", target, "--json", "--quiet", "--threads", "1"])
        .args(extra)
        .output()
        .expect("run sipvane-bench uac");
    json_of(&out)
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn uac_completes_every_call_against_uas() {
    let (_uas, addr) = uas(&[]);
    let r = uac(
        &addr,
        &["--rate", "400", "--calls", "300", "--duration-ms", "3000"],
    );
    assert_eq!(r["started"], 300, "{r}");
    assert_eq!(r["ok"], 300, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["setup_us"]["p50"].as_u64().is_some_and(|v| v > 0), "{r}");
}

#[test]
fn uac_counts_rejections_by_reason() {
    let (_uas, addr) = uas(&["--reply", "503"]);
    let r = uac(
        &addr,
        &["--rate", "200", "--calls", "50", "--duration-ms", "2000"],
    );
    assert_eq!(r["ok"], 0, "{r}");
    assert_eq!(r["failed"], 50, "{r}");
    assert_eq!(r["failed_by_reason"]["503"], 50, "{r}");
}

#[test]
fn uac_reports_timeouts_when_nobody_answers() {
    // A bound port that never answers: every call must end as a timeout,
    // and the run must stop by itself.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let t = Instant::now();
    let r = uac(
        &addr,
        &[
            "--rate",
            "100",
            "--calls",
            "10",
            "--duration-ms",
            "500",
            "--timeout-ms",
            "700",
        ],
    );
    assert_eq!(r["failed_by_reason"]["timeout"], 10, "{r}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(
        r["retransmissions"].as_u64().is_some_and(|n| n >= 10),
        "{r}"
    );
}

#[test]
fn uas_delays_its_answer() {
    let (_uas, addr) = uas(&["--delay-ms", "300"]);
    let r = uac(
        &addr,
        &["--rate", "50", "--calls", "10", "--duration-ms", "1000"],
    );
    assert_eq!(r["ok"], 10, "{r}");
    assert!(
        r["setup_us"]["p50"].as_u64().is_some_and(|v| v >= 300_000),
        "{r}"
    );
}

/// The sipvane binary of the same build (cargo test --workspace builds it;
/// `cargo test -p bench` alone builds it here).
fn sipvane_binary() -> PathBuf {
    let dir = Path::new(BENCH).parent().expect("target dir").to_path_buf();
    let bin = dir.join("sipvane");
    if !bin.is_file() {
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(p) => p.to_string(),
            None => "dev".to_string(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args([
                "build",
                "--profile",
                &profile,
                "-p",
                "control",
                "--bin",
                "sipvane",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for sipvane");
        assert!(st.success(), "building sipvane failed");
    }
    assert!(bin.is_file(), "no sipvane at {}", bin.display());
    bin
}

/// Starts sipvane (one worker, I/O driver `io`) in `dir` with `backends` as
/// set 1 and `extra` appended to its configuration; its SIP port once it
/// answers OPTIONS.
fn start_sipvane(dir: &Path, io: &str, backends: &[&str], extra: &str) -> (Guard, u16) {
    let list = dir.join("dispatcher.list");
    let lines: String = backends.iter().map(|b| format!("1 sip:{b}\n")).collect();
    std::fs::write(&list, lines).expect("write list");
    let port = loop {
        let p = free_port();
        if p < u16::MAX && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let cfg = dir.join("sipvane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\nio = \"{io}\"\n\
             private_port_base = {}\n[dispatcher]\nlist = \"{}\"\n\
             [mgmt]\nlisten = \"127.0.0.1:{}\"\n{extra}",
            port + 1,
            list.display(),
            free_tcp_port()
        ),
    )
    .expect("write config");
    let log = std::fs::File::create(dir.join("sipvane.log")).expect("log");
    let sipvane = Guard(
        Command::new(sipvane_binary())
            .args(["run", "-c"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sipvane"),
    );
    let target = format!("127.0.0.1:{port}");
    assert_eq!(options(&target), Some(200), "sipvane answers OPTIONS");
    (sipvane, port)
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

/// SIGTERM: sipvane prints its counters and exits; the counters line.
fn stop_sipvane(mut sipvane: Guard, dir: &Path) -> String {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(sipvane.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && matches!(sipvane.0.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(dir.join("sipvane.log")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("sipvane: counters "))
        .unwrap_or_else(|| panic!("no counters in sipvane's log:\n{text}"))
        .to_owned()
        + " "
}

#[test]
fn uac_through_sipvane_follows_record_route() {
    let (_a, a) = uas(&[]);
    let (_b, b) = uas(&[]);
    let dir = scratch("through-sipvane");
    let (sipvane, port) = start_sipvane(&dir, "epoll", &[&a, &b], "");
    let target = format!("127.0.0.1:{port}");
    let r = uac(
        &target,
        &[
            "--rate",
            "300",
            "--calls",
            "300",
            "--duration-ms",
            "3000",
            "--sockets",
            "4",
        ],
    );
    // BYE only reaches a backend through sipvane if the UAC routed it by the
    // Record-Route set (the backends' Contact alone would bypass sipvane, and
    // sipvane then could not end the dialog: see dialogs_ended below).
    assert_eq!(r["ok"], 300, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    let counters = stop_sipvane(sipvane, &dir);
    for want in [
        "dialogs_created=300 ",
        "dialogs_ended=300 ",
        "calls_answered=300 ",
    ] {
        assert!(counters.contains(want), "{want} in {counters}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `openssl req -x509` with `args`; panics with its stderr on failure.
fn openssl_req(args: &[&str]) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2"])
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tls-uac` (rustls) places calls over TLS through sipvane to UDP backends:
/// OPTIONS, then INVITE … BYE along the Record-Route set on each connection;
/// against another CA it fails at the handshake, quickly and clearly. Both
/// I/O drivers.
#[test]
fn tls_uac_places_calls_through_sipvane_over_tls() {
    for io in ["epoll", "uring"] {
        tls_uac_through_sipvane(io);
    }
}

fn tls_uac_through_sipvane(io: &str) {
    let (_a, a) = uas(&[]);
    let dir = scratch(&format!("tls-uac-{io}"));
    let p = |f: &str| dir.join(f).to_str().expect("utf-8 path").to_owned();
    for ca in ["ca", "other-ca"] {
        openssl_req(&[
            "-subj",
            "/CN=sipvane-bench test CA",
            "-keyout",
            &p(&format!("{ca}.key")),
            "-out",
            &p(&format!("{ca}.crt")),
        ]);
    }
    openssl_req(&[
        "-subj",
        "/CN=sip.test",
        "-addext",
        "subjectAltName=DNS:sip.test",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.crt"),
    ]);
    let tls_port = free_tcp_port();
    let (sipvane, port) = start_sipvane(
        &dir,
        io,
        &[&a],
        &format!(
            "[tcp]\nenabled = true\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\n\
             certificate = \"{}\"\nprivate_key = \"{}\"\n",
            p("server.crt"),
            p("server.key")
        ),
    );
    let tls_uac = |ca: &str| {
        Command::new(BENCH)
            .args(["tls-uac", &format!("127.0.0.1:{tls_port}"), "--ca", ca])
            .args(["--domain", &format!("127.0.0.1:{port}")])
            .args(["--calls", "200", "--rate", "200", "--connections", "2"])
            .args(["--timeout-ms", "5000", "--json"])
            .output()
            .expect("run sipvane-bench tls-uac")
    };
    let out = tls_uac(&p("ca.crt"));
    let r = json_of(&out);
    assert_eq!(r["ok"], 200, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    let started = Instant::now();
    let bad = tls_uac(&p("other-ca.crt"));
    assert!(!bad.status.success());
    let why = String::from_utf8_lossy(&bad.stdout);
    assert!(why.contains("invalid peer certificate"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let counters = stop_sipvane(sipvane, &dir);
    for want in ["dialogs_ended=200 ", "calls_answered=200 "] {
        assert!(counters.contains(want), "{want} in {counters}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_runs_sipvane_and_kamailio_on_a_tiny_ladder() {
    let dir = scratch("compare");
    let json = dir.join("result.json");
    let svg = dir.join("result.svg");
    let sipvane = sipvane_binary();
    let out = Command::new(BENCH)
        .args([
            "compare",
            "--rates",
            "100,200",
            "--step-ms",
            "1000",
            "--quiet",
        ])
        .arg("--sipvane")
        .arg(&sipvane)
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .output()
        .expect("run sipvane-bench compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid JSON");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{v}");
    for proxy in ["sipvane", "kamailio"] {
        let mine: Vec<_> = rows.iter().filter(|r| r["proxy"] == proxy).collect();
        assert_eq!(mine.len(), 2, "{proxy}: {v}");
        for r in mine {
            assert!(
                r["completed"].as_u64().is_some_and(|c| c > 0),
                "{proxy}: {r}"
            );
            assert!(
                r["cpu_s"].as_f64().is_some_and(|c| c >= 0.0),
                "{proxy}: {r}"
            );
            assert!(r["mem_kib"].as_u64().is_some_and(|m| m > 0), "{proxy}: {r}");
        }
    }
    assert!(stdout.contains("| kamailio |"), "table printed:\n{stdout}");
    let plot = std::fs::read_to_string(&svg).expect("svg written");
    assert!(
        plot.starts_with("<svg") && plot.contains("kamailio"),
        "svg:\n{plot}"
    );
    // The saved JSON gives the same table back.
    let again = Command::new(BENCH)
        .arg("plot")
        .arg(&json)
        .output()
        .expect("run sipvane-bench plot");
    assert!(again.status.success(), "{again:?}");
    let table = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("| sipvane") || l.starts_with("| kamailio"))
            .map(str::to_string)
            .collect()
    };
    let replayed = String::from_utf8_lossy(&again.stdout).to_string();
    assert_eq!(table(&replayed), table(&stdout), "replayed:\n{replayed}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_drives_sipvane_with_sipp_as_generator() {
    let dir = scratch("compare-sipp");
    let json = dir.join("result.json");
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sipp-scenarios");
    let out = Command::new(BENCH)
        .args(["compare", "--generator", "sipp", "--proxies", "sipvane"])
        .args(["--rates", "50", "--step-ms", "1000", "--quiet"])
        .args(["--timeout-ms", "10000"])
        .arg("--sipvane")
        .arg(sipvane_binary())
        .arg("--sipp-scenarios")
        .arg(&scenarios)
        .arg("--json")
        .arg(&json)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .output()
        .expect("run sipvane-bench compare --generator sipp");
    assert!(
        out.status.success(),
        "compare failed: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid JSON");
    assert_eq!(v["generator"], "sipp", "{v}");
    let row = &v["rows"][0];
    // SIPp's own statistics file: 50 calls offered, all completed.
    assert_eq!(row["completed"], 50, "{row}");
    assert_eq!(row["failed"], 0, "{row}");
    assert_eq!(row["latency_resolution_us"], 1000, "{row}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_runs_callers_over_tcp_through_sipvane_and_kamailio() {
    let dir = scratch("compare-tcp");
    let json = dir.join("result.json");
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sipp-scenarios");
    let out = Command::new(BENCH)
        .args(["compare", "--generator", "sipp", "--transport", "tcp"])
        .args(["--rates", "50", "--step-ms", "1000", "--quiet"])
        .args(["--timeout-ms", "10000"])
        .arg("--sipvane")
        .arg(sipvane_binary())
        .arg("--sipp-scenarios")
        .arg(&scenarios)
        .arg("--json")
        .arg(&json)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .output()
        .expect("run sipvane-bench compare --transport tcp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Callers over TCP"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid JSON");
    assert_eq!(v["transport"], "tcp", "{v}");
    // SIPp -t t1 connects to the proxy's TCP port: a proxy without a TCP
    // listener would complete nothing.
    for proxy in ["sipvane", "kamailio"] {
        let row = v["rows"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["proxy"] == proxy))
            .unwrap_or_else(|| panic!("no {proxy} row: {v}"));
        assert_eq!(row["completed"], 50, "{proxy}: {row}");
        assert_eq!(row["failed"], 0, "{proxy}: {row}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_refuses_tcp_with_the_native_generator() {
    let out = Command::new(BENCH)
        .args(["compare", "--transport", "tcp", "--rates", "50", "--quiet"])
        .arg("--sipvane")
        .arg(sipvane_binary())
        .output()
        .expect("run sipvane-bench compare");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--generator sipp"), "{err}");
}
