//! Loading configurations that are valid: defaults, partial files, the example file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use control::config::{
    AlgorithmSpec, Balance, Config, DispatchRule, DispatcherSource, EngineSpec, IoMode, LogFormat,
    ProbingMode, RtpFailure, UnknownDomain, Workers,
};

fn load(text: &str) -> Config {
    match Config::from_toml_str(text, "test.toml") {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn defaults_match_the_documented_contract() {
    let c = Config::default();
    let p = &c.proxy;
    assert_eq!(p.listen, addr("0.0.0.0:5060"));
    assert_eq!(p.workers, Workers::Auto);
    assert_eq!(p.private_port_base, 0);
    assert_eq!(p.private_port(0), Some(5061));
    assert_eq!(p.advertise, None);
    assert_eq!(p.advertise_host(), "127.0.0.1");
    assert_eq!(p.io, IoMode::Auto);
    assert!(p.domains.is_empty());
    assert_eq!(p.unknown_domain, UnknownDomain::Reject);
    let s = &c.security;
    assert!(s.trusted_sources.is_empty());
    assert_eq!(s.preloaded_route, control::config::PreloadedRoute::Strip);
    assert_eq!(s.dialog_targets, control::config::DialogTargets::Known);
    assert_eq!((s.flood.per_source_rps, s.flood.block_s), (0, 10));
    assert_eq!(p.max_transactions, 262_144);
    assert_eq!(p.max_dialogs, 262_144);
    assert_eq!(p.overload_watermark, 0.9);
    assert_eq!(p.retry_after_s, 5);
    assert_eq!(p.balance, Balance::Callid);
    assert!(p.record_route);
    assert_eq!(p.server_header, "sipvane");

    let d = &c.dispatcher;
    assert_eq!(d.source, "");
    assert_eq!(d.list, None);
    assert_eq!(d.resolved_source(), Ok(None));
    assert_eq!(d.algorithm, AlgorithmSpec::Name("round-robin".into()));
    assert_eq!(d.algorithm.kamailio_number(), Some(4));
    assert_eq!(d.default_set, 1);
    assert_eq!(d.failover_codes, vec![408, 500, 503]);
    assert_eq!(d.fr_timer_ms, 2000);
    assert_eq!(d.fr_timer(), std::time::Duration::from_secs(2));
    assert_eq!(d.fr_inv_timer_ms, 120_000);
    assert_eq!(d.failure_threshold, 3);
    assert_eq!(d.hold_down_s, 30);
    assert_eq!(d.ping_interval_s, 5);
    assert_eq!(d.ping_interval(), Some(std::time::Duration::from_secs(5)));
    assert_eq!(d.probing_threshold, 3);
    assert_eq!(d.inactive_threshold, 2);
    assert_eq!(d.ping_reply_codes, vec![200]);
    assert_eq!(d.ping_from, "sip:sipvane@localhost");
    assert_eq!(d.ping_method, "OPTIONS");
    assert_eq!(d.probing_mode, ProbingMode::All);
    assert_eq!(d.reload_interval_s, 0);
    assert_eq!(d.reload_interval(), None);
    assert_eq!(d.snapshot_path, "");
    assert!(d.rules.is_empty());

    let r = &c.rtpengine;
    assert!(r.engines.is_empty());
    assert_eq!(r.offer_flags, "replace-origin replace-session-connection");
    assert_eq!(r.answer_flags, "replace-origin replace-session-connection");
    assert!(r.sets.is_empty());
    assert_eq!(r.timeout_ms, 1000);
    assert_eq!(r.retries, 2);
    assert_eq!(r.on_failure, RtpFailure::Reject);
    assert_eq!(r.ping_interval_s, 5);
    assert!(!r.anchors_set(1));

    assert_eq!(c.events.redis_url, "");
    assert_eq!(c.events.list, "sipvane:events");
    assert_eq!(c.events.batch, 256);
    assert_eq!(c.events.buffer, 100_000);
    assert_eq!(c.mgmt.listen, addr("127.0.0.1:9060"));
    assert_eq!(c.mgmt.token, "");
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);

    assert!(c.validate().is_empty(), "{:?}", c.validate());
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(load(""), Config::default());
    assert_eq!(load("# only a comment\n\n"), Config::default());
}

#[test]
fn single_section_file_keeps_every_other_default() {
    let c = load("[rtpengine]\nengines = [\"udp:127.0.0.1:22222\", \"udp:10.0.0.2:22222=3\"]\n");
    let mut want = Config::default();
    want.rtpengine.engines = vec![
        EngineSpec {
            addr: addr("127.0.0.1:22222"),
            weight: 1,
        },
        EngineSpec {
            addr: addr("10.0.0.2:22222"),
            weight: 3,
        },
    ];
    assert_eq!(c, want);
    assert!(c.rtpengine.anchors_set(9));

    // An empty section is fine too.
    assert_eq!(load("[mgmt]\n"), Config::default());
}

#[test]
fn every_section_and_value_form_parses() {
    let c = load(
        r#"
[proxy]
listen = "10.1.2.3:5080"
workers = 6
private_port_base = 6000
advertise = "sip.example.com"
io = "epoll"
domains = ["example.com", "10.1.2.3"]
unknown_domain = "reject"
overload_watermark = 0.75
balance = "callid"
record_route = false
server_header = ""

[dispatcher]
source = "postgres://kamailio:pw@db/kamailio"
algorithm = 10
probing_mode = "flagged"
rules = [ { prefix = "+1", set = 4 }, { domain = "b.example.com", set = 5 } ]

[rtpengine]
on_failure = "passthrough"
sets = [2]
engines = ["udp:[::1]:22222"]

[events]
redis_url = "redis://127.0.0.1:6379/0"

[mgmt]
listen = "[::1]:9061"
token = "s3cret"

[log]
level = "warn,control=debug"
format = "json"
"#,
    );
    assert_eq!(c.proxy.workers, Workers::Count(6));
    assert_eq!(c.proxy.private_port(2), Some(6002));
    assert_eq!(c.proxy.advertise_host(), "sip.example.com");
    assert_eq!(c.proxy.balance, Balance::Callid);
    assert_eq!(
        c.dispatcher.resolved_source(),
        Ok(Some(DispatcherSource::Postgres(
            "postgres://kamailio:pw@db/kamailio".into()
        )))
    );
    assert_eq!(c.dispatcher.algorithm, AlgorithmSpec::Number(10));
    assert_eq!(c.dispatcher.probing_mode, ProbingMode::Flagged);
    assert_eq!(
        c.dispatcher.rules,
        vec![
            DispatchRule {
                prefix: Some("+1".into()),
                domain: None,
                set: 4,
                rtpengine: None,
            },
            DispatchRule {
                prefix: None,
                domain: Some("b.example.com".into()),
                set: 5,
                rtpengine: None,
            },
        ]
    );
    assert!(c.rtpengine.anchors_set(2));
    assert!(!c.rtpengine.anchors_set(1));
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn list_is_shorthand_for_a_file_source() {
    let c = load("[dispatcher]\nlist = \"/etc/sipvane/dispatcher.list\"\n");
    assert_eq!(
        c.dispatcher.resolved_source(),
        Ok(Some(DispatcherSource::File(PathBuf::from(
            "/etc/sipvane/dispatcher.list"
        ))))
    );
    let c = load("[dispatcher]\nsource = \"file:d.list\"\n");
    assert_eq!(
        c.dispatcher.resolved_source(),
        Ok(Some(DispatcherSource::File(PathBuf::from("d.list"))))
    );
    let c = load("[dispatcher]\nsource = \"mysql://u:p@h/kamailio\"\n");
    assert_eq!(
        c.dispatcher.resolved_source(),
        Ok(Some(DispatcherSource::Mysql(
            "mysql://u:p@h/kamailio".into()
        )))
    );
}

#[test]
fn algorithm_numbers_and_names_are_accepted() {
    for n in [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 13] {
        let c = load(&format!("[dispatcher]\nalgorithm = {n}\n"));
        assert_eq!(c.dispatcher.algorithm.kamailio_number(), Some(n));
    }
    for name in [
        "hash-callid",
        "hash-from",
        "hash-to",
        "hash-ruri",
        "round-robin",
        "rr",
        "hash-auth-user",
        "random",
        "priority",
        "serial",
        "weight",
        "call-load",
        "relative-weight",
        "latency",
        "rendezvous",
        "rendezvous-from",
    ] {
        let c = load(&format!("[dispatcher]\nalgorithm = \"{name}\"\n"));
        assert_eq!(c.dispatcher.algorithm, AlgorithmSpec::Name(name.into()));
    }
    // A number written as a string is the number.
    let c = load("[dispatcher]\nalgorithm = \"9\"\n");
    assert_eq!(c.dispatcher.algorithm, AlgorithmSpec::Number(9));
}

#[test]
fn example_file_is_the_defaults_plus_its_marked_changes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sipvane.example.toml");
    let c = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("sipvane.example.toml does not load:\n{e}"),
    };
    let mut want = Config::default();
    want.dispatcher.list = Some("/etc/sipvane/dispatcher.list".into());
    want.dispatcher.rules = vec![
        DispatchRule {
            prefix: Some("+44".into()),
            domain: None,
            set: 2,
            rtpengine: None,
        },
        DispatchRule {
            prefix: None,
            domain: Some("pbx.example.com".into()),
            set: 3,
            rtpengine: None,
        },
    ];
    want.rtpengine.engines = vec![EngineSpec {
        addr: addr("127.0.0.1:22222"),
        weight: 1,
    }];
    assert_eq!(c, want);
}

/// (section, key) pairs of a TOML text, counting `# key = …` lines as keys too.
fn section_keys(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let (parent, key) = name.rsplit_once('.').unwrap_or(("", name));
            out.push((parent.to_owned(), key.to_owned()));
            section = name.to_owned();
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((k, _)) = line.trim_start_matches("# ").split_once(" = ") {
            if !k.contains(' ') && !k.starts_with('#') {
                out.push((section.clone(), k.to_owned()));
            }
        }
    }
    out
}

#[test]
fn example_file_names_every_key() {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sipvane.example.toml"),
    )
    .unwrap();
    let mut full = Config::default();
    full.proxy.advertise = Some("x".into());
    full.dispatcher.list = Some("x".into());
    let documented = section_keys(&example);
    let all = section_keys(&full.to_toml().unwrap());
    assert!(all.len() > 40, "{all:?}");
    for k in &all {
        assert!(documented.contains(k), "sipvane.example.toml lacks {k:?}");
    }
}

#[test]
fn to_toml_round_trips() {
    let mut c = Config::default();
    c.proxy.advertise = Some("10.0.0.1".into());
    c.proxy.workers = Workers::Count(3);
    c.dispatcher.algorithm = AlgorithmSpec::Number(13);
    c.dispatcher.rules.push(DispatchRule {
        prefix: Some("+49".into()),
        domain: None,
        set: 7,
        rtpengine: None,
    });
    c.rtpengine.engines.push(EngineSpec {
        addr: addr("127.0.0.1:22222"),
        weight: 5,
    });
    let text = c.to_toml().unwrap();
    assert_eq!(load(&text), c);
    assert_eq!(
        load(&Config::default().to_toml().unwrap()),
        Config::default()
    );
}

#[test]
fn acc_section_alone_is_valid_and_keeps_defaults() {
    let c = load(
        "[acc]\ndb_url = \"postgres://kamailio:pw@db/kamailio\"\n\
         [acc.extra]\nsrc_user = \"$fU\"\ndst_uri = \"dst_uri\"\n",
    );
    assert_eq!(c.acc.db_url, "postgres://kamailio:pw@db/kamailio");
    assert_eq!(c.acc.extra.len(), 2);
    assert_eq!(
        (
            c.acc.acc_table.as_str(),
            c.acc.missed_table.as_str(),
            c.acc.cdr_table.as_str()
        ),
        ("acc", "missed_calls", "acc_cdrs")
    );
    assert_eq!(c.acc.spool_dir, PathBuf::from("/var/lib/sipvane"));
    assert_eq!(c.acc.spool_max_bytes, 256 << 20);
    assert_eq!(
        (c.acc.batch, c.acc.cdrs, c.acc.log_failed),
        (200, false, false)
    );
    assert_eq!(c.proxy, Config::default().proxy);
    assert_eq!(c.events, Config::default().events);
    // Accounting is off by default.
    assert_eq!(Config::default().acc.db_url, "");
    // And the printed configuration loads back the same.
    assert_eq!(load(&c.to_toml().unwrap()), c);
}

#[test]
fn hep_section_alone_is_valid_and_keeps_defaults() {
    use dataplane::hep::Transport;
    let c = load("[hep]\ncollector = \"udp:127.0.0.1:9060\"\n");
    assert_eq!(c.hep.collector, "udp:127.0.0.1:9060");
    assert_eq!(
        c.hep.collector_addr(),
        Some((Transport::Udp, "127.0.0.1:9060".parse().unwrap()))
    );
    let tcp = load("[hep]\ncollector = \"tcp:[::1]:9061\"\n");
    assert_eq!(
        tcp.hep.collector_addr(),
        Some((Transport::Tcp, "[::1]:9061".parse().unwrap()))
    );
    assert_eq!((c.hep.agent_id, c.hep.password.as_str()), (2001, ""));
    assert_eq!(c.hep.sample, 1.0);
    assert_eq!(c.hep.queue_bytes, 4 << 20);
    assert_eq!(c.proxy, Config::default().proxy);
    // Capture is off by default.
    assert_eq!(Config::default().hep.collector_addr(), None);
    assert_eq!(load(&c.to_toml().unwrap()), c);
}
