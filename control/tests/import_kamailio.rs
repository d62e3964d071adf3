//! `sipvane import-kamailio` on realistic Kamailio configurations
//! (`tests/fixtures/kamailio/`): the TOML it prints is accepted by
//! `sipvane check-config`, carries the values over, names the file and line of
//! everything it leaves out; and an imported dispatcher configuration routes
//! SIPp calls through a real sipvane to SIPp callees.

mod support;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use control::config::{AlgorithmSpec, Config, DispatchRule, ProbingMode};
use support::{
    free_sip_port, free_tcp_port, localhost, require_binary, sip_options_ping, ChildGuard,
    Scenario, Uac, Uas, WorkDir,
};

const LIMIT: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kamailio")
        .join(name)
}

fn sipvane(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipvane"));
    cmd.args(args).env_remove("RUST_LOG");
    support::output_within(&mut cmd, LIMIT, "sipvane")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An import that succeeded: its TOML, stderr, the loaded Config and where the
/// TOML was written.
struct Import {
    toml: String,
    stderr: String,
    config: Config,
    path: PathBuf,
    cfg: String,
    _dir: WorkDir,
}

impl Import {
    /// Asserts a warning for `line` of `file` (a fixture name) containing `what`,
    /// both as a `# warning:` comment in the TOML and on stderr.
    fn warns(&self, file: &str, line: u32, what: &str) {
        let at = format!("{}:{line}: ", fixture(file).display());
        let comment = self
            .toml
            .lines()
            .any(|l| l.starts_with(&format!("# warning: {at}")) && l.contains(what));
        assert!(comment, "no '# warning: {at}…{what}…' in:\n{}", self.toml);
        let err = self.stderr.lines().any(|l| {
            l.starts_with(&format!("sipvane import-kamailio: {at}warning: ")) && l.contains(what)
        });
        assert!(
            err,
            "no 'sipvane import-kamailio: {at}warning: …{what}…' in:\n{}",
            self.stderr
        );
    }

    /// Asserts that nothing was said about `line` of the main file.
    fn silent_about(&self, line: u32) {
        let at = format!("{}:{line}: ", self.cfg);
        assert!(
            !self.stderr.contains(&at),
            "unexpected warning for {at}:\n{}",
            self.stderr
        );
    }
}

/// Imports fixture `name` (with `-D` defines), checks the output with
/// `sipvane check-config` and loads it.
fn import(name: &str, defines: &[&str]) -> Import {
    let cfg = fixture(name).display().to_string();
    let mut args = vec!["import-kamailio"];
    for d in defines {
        args.extend(["-D", d]);
    }
    args.push(&cfg);
    let o = sipvane(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "import failed: {}",
        text(&o.stderr)
    );
    let toml = text(&o.stdout);
    let dir = WorkDir::new("import_kamailio", name);
    let path = dir.file("sipvane.toml");
    std::fs::write(&path, &toml).unwrap();
    let check = sipvane(&["check-config", path.to_str().unwrap()]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "check-config refused the import of {name}:\n{}\n{toml}",
        text(&check.stderr)
    );
    let config = Config::from_toml_str(&toml, "imported").expect("loads");
    Import {
        toml,
        stderr: text(&o.stderr),
        config,
        path,
        cfg,
        _dir: dir,
    }
}

#[test]
fn dispatcher_with_list_file() {
    let i = import("dispatcher-list.cfg", &[]);
    let p = &i.config.proxy;
    assert_eq!(p.listen, "127.0.0.1:5060".parse().unwrap());
    // alias= is Kamailio's "myself": sipvane dispatches every domain.
    assert!(p.domains.is_empty());
    assert_eq!(p.server_header, "edge-lb");
    let d = &i.config.dispatcher;
    // ds_select_dst("1", "4") in route[DISPATCH], called from request_route.
    assert_eq!(d.algorithm, AlgorithmSpec::Name("round-robin".into()));
    assert_eq!(d.default_set, 1);
    assert!(d.rules.is_empty());
    // The list_file, relative to the cfg.
    assert_eq!(
        d.list.as_deref(),
        Some(fixture("dispatcher.list").to_str().unwrap())
    );
    assert_eq!((d.fr_timer_ms, d.fr_inv_timer_ms), (1500, 60_000));
    assert_eq!(d.failover_codes, vec![500, 503]);
    assert_eq!(d.ping_interval_s, 10);
    assert_eq!(d.probing_mode, ProbingMode::All);
    assert_eq!((d.probing_threshold, d.inactive_threshold), (2, 3));
    assert_eq!(d.ping_from, "sip:lb@lb.example.com");
    let mut codes: Vec<u16> = (200..300).collect();
    codes.extend([404, 488]);
    assert_eq!(d.ping_reply_codes, codes);
    assert!(i.config.rtpengine.engines.is_empty());
    // The algorithm is written by name.
    assert!(i.toml.contains("algorithm = \"round-robin\""), "{}", i.toml);

    i.warns(
        "dispatcher-list.cfg",
        35,
        "module pike has no sipvane counterpart",
    );
    i.warns(
        "dispatcher-list.cfg",
        49,
        "modparam(\"dispatcher\", \"ds_hash_size\", 9)",
    );
    i.warns("dispatcher-list.cfg", 58, "pike_check_req()");
    // What was carried over (listen, tm and dispatcher modparams, ds_select_dst,
    // t_check_status) is not warned about.
    for line in [19, 20, 38, 39, 41, 42, 43, 44, 45, 46, 91, 107] {
        i.silent_about(line);
    }
}

#[test]
fn dispatcher_from_database_with_rules_and_includes() {
    let i = import("dispatcher-db.cfg", &[]);
    let p = &i.config.proxy;
    // listen=udp:EDGE_IP:5080 advertise … with #!substdef EDGE_IP.
    assert_eq!(p.listen, "127.0.0.1:5080".parse().unwrap());
    assert_eq!(p.advertise.as_deref(), Some("203.0.113.10"));
    let d = &i.config.dispatcher;
    // db_url and table_name come from the included dispatcher-db-params.cfg.
    assert_eq!(d.source, "postgres://kamailio:secret@127.0.0.1/kamailio");
    assert_eq!(d.list, None);
    assert_eq!(d.db_table, "carrier_dispatcher");
    assert_eq!((d.fr_timer_ms, d.fr_inv_timer_ms), (3000, 90_000));
    // The unconditional ds_select_dst("1", "9").
    assert_eq!(d.algorithm, AlgorithmSpec::Name("weight".into()));
    assert_eq!(d.default_set, 1);
    let rule = |prefix: Option<&str>, domain: Option<&str>, set| DispatchRule {
        prefix: prefix.map(str::to_owned),
        domain: domain.map(str::to_owned),
        set,
        rtpengine: None,
    };
    assert_eq!(
        d.rules,
        vec![
            rule(Some("+44"), None, 2),
            rule(Some("0044"), None, 2),
            rule(Some("+34"), None, 3),
            rule(None, Some("pbx.example.com"), 4),
        ]
    );
    let mut codes = vec![408];
    codes.extend(500..600);
    assert_eq!(d.failover_codes, codes);
    assert_eq!(d.ping_interval_s, 5);
    assert_eq!(d.probing_mode, ProbingMode::Flagged);
    assert_eq!((d.probing_threshold, d.inactive_threshold), (3, 2));
    assert_eq!(d.ping_method, "INFO");

    i.warns(
        "dispatcher-db.cfg",
        32,
        "import_file \"dispatcher-db-local.cfg\"",
    );
    i.warns("dispatcher-db.cfg", 56, "set 3 uses algorithm 1");
    i.warns("dispatcher-db.cfg", 63, "runs only when the condition at");
    i.warns("dispatcher-db.cfg", 70, "t_set_fr()");
    i.warns("dispatcher-db.cfg", 76, "the limit 3");
    i.warns("dispatcher-db.cfg", 91, "t_check_status(\"486\")");
    i.warns("dispatcher-db-params.cfg", 4, "restart_fr_on_each_reply");
    // #!ifdef WITH_TLS is not defined: its listen line is not read at all.
    i.silent_about(16);
}

#[test]
fn registrar_auth_and_acc_become_sections() {
    let i = import("registrar-auth-acc.cfg", &[]);
    // port=5070 completes listen=udp:127.0.0.1.
    assert_eq!(i.config.proxy.listen, "127.0.0.1:5070".parse().unwrap());
    assert!(i.config.proxy.domains.is_empty());
    let d = &i.config.dispatcher;
    assert_eq!(d.source, "mysql://kamailio:kamailiorw@127.0.0.1/kamailio");
    assert_eq!(d.algorithm, AlgorithmSpec::Name("hash-callid".into()));
    assert_eq!(d.default_set, 10);
    assert_eq!(d.fr_timer_ms, 2000);
    // No failure_route: Kamailio does not fail over on any code.
    assert!(d.failover_codes.is_empty());
    assert_eq!(d.ping_interval_s, 15);

    // [registrar] from usrloc / auth_db / registrar / auth and the script
    // (the realm of auth_check, the prefixes lookup() runs under).
    let url = "mysql://kamailio:kamailiorw@127.0.0.1/kamailio";
    let r = &i.config.registrar;
    assert_eq!(r.db_url, url);
    assert_eq!(r.domain, ["sip.example.com"]);
    assert_eq!(r.prefixes, ["6", "7", "8"]);
    assert_eq!(r.subscriber_table, "subscriber");
    assert_eq!(r.location_table, "location");
    assert_eq!(
        (r.min_expires, r.max_expires, r.default_expires),
        (30, 3600, 1800)
    );
    // Kamailio's "no limit" keeps sipvane's.
    assert_eq!(r.max_contacts, 10);
    assert_eq!(r.nonce_expires_s, 60);
    // nathelper's natping_interval and the core's max_branches.
    assert_eq!((r.nat_ping_interval_s, r.max_branches), (20, 8));
    // [acc]: the database, the table, failed transactions, the extra
    // columns sipvane has a source for.
    let a = &i.config.acc;
    assert_eq!(a.db_url, url);
    assert_eq!(a.acc_table, "acc_calls");
    assert!(a.log_failed);
    let extra: Vec<(&str, &str)> = a
        .extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        extra,
        [
            ("dst_domain", "$rd"),
            ("dst_ouser", "$tU"),
            ("dst_user", "$rU"),
            ("src_domain", "$fd"),
            ("src_user", "$fU"),
        ]
    );
    for section in ["[registrar]", "[acc]", "[acc.extra]"] {
        assert!(
            i.toml.lines().any(|l| l == section),
            "no {section} in:\n{}",
            i.toml
        );
    }
    i.warns("registrar-auth-acc.cfg", 38, "Kamailio does not fail over");
    i.warns("registrar-auth-acc.cfg", 50, "src_ip=$si");
    i.warns("registrar-auth-acc.cfg", 64, "max_contacts 0");
    // Carried over as they are: the loadmodules, usrloc db_mode 2,
    // calculate_ha1 with the password column.
    for line in [29, 30, 35, 36, 37, 43, 56, 57, 68, 69, 71] {
        i.silent_about(line);
    }
    i.warns("registrar-auth-acc.cfg", 67, "module nathelper");
    i.warns("registrar-auth-acc.cfg", 70, "sipping_from");
    // Path: use_path 1 is what sipvane does; path_mode 1 is not.
    i.silent_about(72);
    i.warns("registrar-auth-acc.cfg", 73, "path_mode 1");
    for key in ["nat_ping_interval_s = 20", "max_branches = 8"] {
        assert!(i.toml.lines().any(|l| l == key), "no {key} in:\n{}", i.toml);
    }
}

/// A registrar cfg without a database: sipvane's registrar could not start,
/// so the import leaves `[registrar]` out and says why.
#[test]
fn a_registrar_without_database_is_left_out() {
    let i = import("registrar-memory.cfg", &[]);
    assert_eq!(
        i.config.registrar,
        control::config::RegistrarConfig::default()
    );
    assert!(!i.toml.lines().any(|l| l == "[registrar]"), "{}", i.toml);
    i.warns("registrar-memory.cfg", 11, "[registrar] left out");
    i.warns("registrar-memory.cfg", 15, "usrloc db_mode 0");
}

#[test]
fn rtpengine_and_nat() {
    let i = import("rtpengine-nat.cfg", &[]);
    assert_eq!(i.config.proxy.listen, "127.0.0.1:5090".parse().unwrap());
    let r = &i.config.rtpengine;
    let engines: Vec<String> = r.engines.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        engines,
        vec!["udp:127.0.0.1:22222=2", "udp:127.0.0.2:22222"]
    );
    let flags = "replace-origin replace-session-connection ICE=remove RTP/AVP";
    assert_eq!(
        (r.offer_flags.as_str(), r.answer_flags.as_str()),
        (flags, flags)
    );
    assert_eq!((r.timeout_ms, r.retries), (800, 3));
    let d = &i.config.dispatcher;
    assert_eq!(d.algorithm, AlgorithmSpec::Name("weight".into()));
    assert_eq!(d.failover_codes, vec![408, 480, 503]);
    assert_eq!(d.fr_timer_ms, 2500);
    // Kamailio's defaults where the cfg sets nothing.
    assert_eq!(d.fr_inv_timer_ms, 120_000);
    assert_eq!((d.probing_threshold, d.inactive_threshold), (1, 1));

    i.warns("rtpengine-nat.cfg", 12, "listen=udp:eth0:5060");
    i.warns("rtpengine-nat.cfg", 22, "module nathelper");
    // No registrar modules: nothing for the pings to keep open.
    i.warns("rtpengine-nat.cfg", 33, "natping_interval");
    i.warns("rtpengine-nat.cfg", 43, "nat_uac_test()");
    i.warns("rtpengine-nat.cfg", 85, "fix_nated_contact()");
}

#[test]
fn broken_configurations_are_errors_with_file_and_line() {
    let dir = WorkDir::new("import_kamailio", "broken");
    let cases = [
        (
            "block.cfg",
            "loadmodule \"tm.so\"\nrequest_route {\n  if (a) {\n    t_relay();\n}\n",
            2,
            "{ opened here is never closed",
        ),
        (
            "ifdef.cfg",
            "#!ifdef WITH_X\nport=5060\n",
            1,
            "#!ifdef / #!ifndef without #!endif",
        ),
        (
            "string.cfg",
            "port=5060\nmodparam(\"tm\", \"fr_timer\n",
            2,
            "unterminated string",
        ),
        (
            "comment.cfg",
            "port=5060\n/* no end\n",
            2,
            "unterminated /* comment",
        ),
    ];
    for (name, body, line, what) in cases {
        let path = dir.file(name);
        std::fs::write(&path, body).unwrap();
        let o = sipvane(&["import-kamailio", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(o.stdout.is_empty(), "{name}: {}", text(&o.stdout));
        let want = format!(
            "sipvane import-kamailio: {}:{line}: error: {what}",
            path.display()
        );
        assert_eq!(
            text(&o.stderr).lines().next(),
            Some(want.as_str()),
            "{name}"
        );
    }
    let o = sipvane(&["import-kamailio", "/nonexistent/kamailio.cfg"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr)
        .starts_with("sipvane import-kamailio: /nonexistent/kamailio.cfg: error: cannot read"));
    // Random bytes: an error or warnings, never a crash.
    let junk = dir.file("junk.cfg");
    let bytes: Vec<u8> = (0..4000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&junk, String::from_utf8_lossy(&bytes).as_bytes()).unwrap();
    let o = sipvane(&["import-kamailio", junk.to_str().unwrap()]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{o:?}");
}

/// The fixtures are configurations Kamailio itself accepts (`kamailio -c`).
#[test]
fn fixtures_are_valid_kamailio_configurations() {
    let kamailio = require_binary("kamailio", "run `make deps` (or apt-get install kamailio)");
    for name in [
        "dispatcher-list.cfg",
        "dispatcher-db.cfg",
        "registrar-auth-acc.cfg",
        "registrar-memory.cfg",
        "rtpengine-nat.cfg",
    ] {
        let mut cmd = Command::new(&kamailio);
        cmd.arg("-c").arg("-f").arg(fixture(name));
        let o = support::output_within(&mut cmd, LIMIT, "kamailio -c");
        assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o.stderr));
    }
}

/// Imports the dispatcher-only cfg with its list pointing at two SIPp callees,
/// runs sipvane on the result and places calls through it, as Kamailio would
/// route them: round-robin over set 1, Record-Route followed by ACK and BYE.
#[test]
fn imported_dispatcher_cfg_routes_calls() {
    support::require_sipp();
    let mut a = Uas::start(Scenario::Uas, support::free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, support::free_udp_addr());
    let dir = WorkDir::new("import_kamailio", "e2e");
    let list = dir.file("dispatcher.list");
    std::fs::write(
        &list,
        format!("1 sip:{} 0 0\n1 sip:{} 0 0\n", a.addr(), b.addr()),
    )
    .unwrap();
    let ds_list = format!("DS_LIST=\"{}\"", list.display());
    let i = import("dispatcher-list.cfg", &[&ds_list]);
    assert_eq!(i.config.dispatcher.list.as_deref(), list.to_str());

    let (mut child, addr) = start_sipvane(&i.path, &dir);
    let calls = 20;
    let run = Uac::new(Scenario::Uac, addr)
        .calls(calls)
        .rate(20)
        .timeout(LIMIT)
        .run();
    run.assert_all_succeeded(u64::from(calls));
    a.wait_until(Duration::from_secs(5), |s| s.count("BYE", "Recv") >= 10);
    let (fa, fb) = (a.stop(), b.stop());
    assert_eq!(fa.invites_received(), 10, "{fa:?}");
    assert_eq!(fb.invites_received(), 10, "{fb:?}");
    for f in [&fa, &fb] {
        assert_eq!(f.count("ACK", "Recv"), 10, "{f:?}");
        assert_eq!(f.count("BYE", "Recv"), 10, "{f:?}");
    }
    let status = child.stop(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "sipvane did not stop cleanly: {}",
        dir.read("sipvane.log")
    );
}

/// The same cfg and list run by Kamailio itself (`kamailio -A` for the list and the
/// listen addresses) spreads the same calls the same way: the reference for the
/// test above.
#[test]
fn the_same_cfg_routes_calls_through_kamailio() {
    support::require_sipp();
    let kamailio = require_binary("kamailio", "run `make deps` (or apt-get install kamailio)");
    let mut a = Uas::start(Scenario::Uas, support::free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, support::free_udp_addr());
    let dir = WorkDir::new("import_kamailio", "kamailio");
    let list = dir.file("dispatcher.list");
    std::fs::write(
        &list,
        format!("1 sip:{} 0 0\n1 sip:{} 0 0\n", a.addr(), b.addr()),
    )
    .unwrap();
    // Kamailio listens on UDP and TCP at the same port.
    let port = free_sip_port();
    let addr = localhost(port);
    let log = std::fs::File::create(dir.file("kamailio.log")).unwrap();
    let mut child = ChildGuard::spawn(
        Command::new(&kamailio)
            .arg("-f")
            .arg(fixture("dispatcher-list.cfg"))
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-n", "1"])
            .arg("-Y")
            .arg(dir.path())
            .arg("-P")
            .arg(dir.file("kamailio.pid"))
            .arg("-w")
            .arg(dir.path())
            .args(["-A", &format!("DS_LIST=\"{}\"", list.display())])
            .args(["-A", &format!("LISTEN=udp:{addr}")])
            .args(["-A", &format!("LISTEN_TCP=tcp:{addr}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .expect("spawn kamailio");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while sip_options_ping(addr, Duration::from_millis(500)) != Some(200) {
        assert!(
            child.is_running() && std::time::Instant::now() < deadline,
            "kamailio did not answer OPTIONS on {addr}:\n{}",
            dir.read("kamailio.log")
        );
    }
    let calls = 20;
    let run = Uac::new(Scenario::Uac, addr)
        .calls(calls)
        .rate(20)
        .timeout(LIMIT)
        .run();
    run.assert_all_succeeded(u64::from(calls));
    a.wait_until(Duration::from_secs(5), |s| s.count("BYE", "Recv") >= 10);
    let (fa, fb) = (a.stop(), b.stop());
    child.stop(libc::SIGTERM, Duration::from_secs(5));
    for f in [&fa, &fb] {
        assert_eq!(f.invites_received(), 10, "{f:?}");
        assert_eq!(f.count("ACK", "Recv"), 10, "{f:?}");
        assert_eq!(f.count("BYE", "Recv"), 10, "{f:?}");
    }
}

/// Runs `sipvane run -c config` on loopback ports chosen here (flags override the
/// imported listen and management addresses); returns once it answers OPTIONS.
fn start_sipvane(config: &Path, dir: &WorkDir) -> (ChildGuard, std::net::SocketAddr) {
    for _ in 0..3 {
        // One worker: its private port is the public one + 1, which must be free too.
        let port = loop {
            let p = free_sip_port();
            if p < u16::MAX && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let addr = localhost(port);
        let mgmt = localhost(free_tcp_port());
        let log = std::fs::File::create(dir.file("sipvane.log")).unwrap();
        let mut child = ChildGuard::spawn(
            Command::new(env!("CARGO_BIN_EXE_sipvane"))
                .arg("run")
                .arg("-c")
                .arg(config)
                .args(["--listen", &addr.to_string(), "--workers", "1"])
                .args(["--mgmt", &mgmt.to_string()])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .expect("spawn sipvane");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline && child.is_running() {
            if sip_options_ping(addr, Duration::from_millis(500)) == Some(200) {
                return (child, addr);
            }
        }
        let log = dir.read("sipvane.log");
        if !log.contains("Address already in use") {
            panic!("sipvane did not answer OPTIONS on {addr}:\n{log}");
        }
    }
    panic!("no free ports for sipvane after 3 attempts")
}
