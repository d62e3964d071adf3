//! Configuration errors: every problem is one line `FILE:LINE: problem`, on the line of
//! the offending key, and all of them are reported at once.

use control::config::Config;

/// The diagnostics of `text`, as printed.
fn errors(text: &str) -> Vec<String> {
    match Config::from_toml_str(text, "sipvane.toml") {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => {
            let lines: Vec<String> = e.diagnostics.iter().map(|d| d.to_string()).collect();
            assert_eq!(e.to_string(), lines.join("\n"));
            for l in &lines {
                assert!(!l.contains('\n'), "multi-line diagnostic: {l:?}");
                assert!(l.starts_with("sipvane.toml:"), "{l}");
            }
            lines
        }
    }
}

fn one_error(text: &str) -> String {
    let mut e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.remove(0)
}

#[test]
fn unknown_key() {
    assert_eq!(
        one_error("# sipvane\n\n[proxy]\nlisten = \"0.0.0.0:5060\"\nlistne = \"1.2.3.4:5060\"\n"),
        "sipvane.toml:5: unknown key \"listne\" in [proxy]; expected one of listen, workers, \
         private_port_base, advertise, io, domains, unknown_domain, max_transactions, \
         max_dialogs, overload_watermark, retry_after_s, overload_control, \
         overload_control_start, overload_control_validity_ms, shed_backlog_ms, balance, \
         record_route, server_header, dialog_timeout_s"
    );
}

#[test]
fn unknown_section_and_top_level_key() {
    assert_eq!(
        one_error("[log]\nlevel = \"info\"\n\n[dispatch]\nalgorithm = 4\n"),
        "sipvane.toml:4: unknown section [dispatch]; expected one of proxy, dispatcher, \
         rtpengine, events, acc, hep, mgmt, log, security, registrar, tcp, tls"
    );
    assert_eq!(
        one_error("\nlisten = \"0.0.0.0:5060\"\n"),
        "sipvane.toml:2: unknown key \"listen\" outside any section; expected a section: \
         proxy, dispatcher, rtpengine, events, acc, hep, mgmt, log, security, registrar, tcp, tls"
    );
}

#[test]
fn unknown_key_in_a_rule() {
    // The misspelt key is unknown, and so the required one is missing: both reported.
    assert_eq!(
        errors("[[dispatcher.rules]]\nprefix = \"+44\"\nsett = 2\n"),
        vec![
            "sipvane.toml:1: [[dispatcher.rules]] is missing required key \"set\"",
            "sipvane.toml:3: unknown key \"sett\" in [[dispatcher.rules]]; expected one of \
             prefix, domain, set, rtpengine",
        ]
    );
    assert_eq!(
        one_error("[[dispatcher.rules]]\nprefix = \"+44\"\nset = 2\nweight = 1\n"),
        "sipvane.toml:4: unknown key \"weight\" in [[dispatcher.rules]]; expected one of \
         prefix, domain, set, rtpengine"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        one_error("[proxy]\n\nworkers = 0\n"),
        "sipvane.toml:3: workers must be \"auto\" or a number ≥ 1 (got 0)"
    );
    assert_eq!(
        one_error("[proxy]\nworkers = \"many\"\n"),
        "sipvane.toml:2: workers must be \"auto\" or a number ≥ 1 (got \"many\")"
    );
    assert_eq!(
        one_error("[proxy]\nprivate_port_base = 70000\n"),
        "sipvane.toml:2: private_port_base must be an integer from 0 to 65535 (got 70000)"
    );
    assert_eq!(
        one_error("[proxy]\nrecord_route = \"yes\"\n"),
        "sipvane.toml:2: record_route must be true or false (got \"yes\")"
    );
    assert_eq!(
        one_error("[proxy]\nio = \"kqueue\"\n"),
        "sipvane.toml:2: io must be one of \"auto\", \"uring\", \"epoll\" (got \"kqueue\")"
    );
    assert_eq!(
        one_error("[dispatcher]\nprobing_mode = 1\n"),
        "sipvane.toml:2: probing_mode must be one of \"all\", \"flagged\", \"inactive\" (got 1)"
    );
    assert_eq!(
        one_error("[events]\nbatch = \"lots\"\n"),
        "sipvane.toml:2: batch must be an integer from 0 to 4294967295 (got \"lots\")"
    );
    assert_eq!(
        one_error("proxy = 3\n"),
        "sipvane.toml:1: proxy must be a table (got 3)"
    );
}

#[test]
fn wrong_type_inside_a_list_points_at_the_element() {
    assert_eq!(
        one_error("[dispatcher]\nfailover_codes = [\n  408,\n  \"503\",\n]\n"),
        "sipvane.toml:4: failover_codes[1] must be an integer from 0 to 65535 (got \"503\")"
    );
    assert_eq!(
        one_error(
            "[rtpengine]\nengines = [\n  \"udp:127.0.0.1:22222\",\n  \"127.0.0.1:22223\",\n]\n"
        ),
        "sipvane.toml:4: engines[1] must be \"udp:IP:PORT\" or \"udp:IP:PORT=WEIGHT\" with \
         WEIGHT ≥ 1 (got \"127.0.0.1:22223\")"
    );
}

#[test]
fn bad_algorithm() {
    let e = one_error("[dispatcher]\nalgorithm = \"fastest\"\n");
    assert!(
        e.starts_with("sipvane.toml:2: algorithm \"fastest\" is not supported; expected a Kamailio number (0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 13) or a name (hash-callid, "),
        "{e}"
    );
    assert!(e.ends_with("rendezvous, rendezvous-from)"), "{e}");
    let e = one_error("[dispatcher]\n\nalgorithm = 7\n");
    assert!(
        e.starts_with("sipvane.toml:3: algorithm 7 is not supported;"),
        "{e}"
    );
    assert!(one_error("[dispatcher]\nalgorithm = true\n").starts_with(
        "sipvane.toml:2: algorithm must be an algorithm name or Kamailio number (got true)"
    ));
}

#[test]
fn bad_addresses() {
    assert_eq!(
        one_error("[proxy]\nlisten = \"0.0.0.0\"\n"),
        "sipvane.toml:2: listen must be an IP:PORT socket address such as \"0.0.0.0:5060\" \
         (got \"0.0.0.0\")"
    );
    assert_eq!(
        one_error("[mgmt]\ntoken = \"x\"\nlisten = \"localhost:9060\"\n"),
        "sipvane.toml:3: listen must be an IP:PORT socket address such as \"0.0.0.0:5060\" \
         (got \"localhost:9060\")"
    );
    assert_eq!(
        one_error("[proxy]\nlisten = \"0.0.0.0:0\"\n"),
        "sipvane.toml:2: listen port must not be 0"
    );
    assert_eq!(
        one_error("[proxy]\nadvertise = \"sip example\"\n"),
        "sipvane.toml:2: advertise must be a host name or IP address (got \"sip example\")"
    );
}

#[test]
fn bad_rules() {
    let text = "[dispatcher]\n\n[[dispatcher.rules]]\nprefix = \"+44\"\nset = 2\n\n\
                [[dispatcher.rules]]\nprefix = \"+33\"\ndomain = \"a.example.com\"\nset = 3\n\n\
                [[dispatcher.rules]]\nset = 4\n\n[[dispatcher.rules]]\nprefix = \"+49\"\n";
    assert_eq!(
        errors(text),
        vec![
            "sipvane.toml:7: a dispatcher rule must have exactly one of \"prefix\" or \"domain\"",
            "sipvane.toml:12: a dispatcher rule must have exactly one of \"prefix\" or \"domain\"",
            "sipvane.toml:15: [[dispatcher.rules]] is missing required key \"set\"",
        ]
    );
    assert_eq!(
        one_error("[dispatcher]\nrules = [\n  { prefix = \"+1\", set = 1 },\n  { prefix = \"+1\", set = 2 },\n]\n"),
        "sipvane.toml:4: duplicate rule for prefix \"+1\" (the first one wins)"
    );
}

#[test]
fn bad_codes_and_ranges() {
    assert_eq!(
        errors("[dispatcher]\nfailover_codes = [408, 200]\nping_reply_codes = [\n  200,\n  99,\n]\n\n[proxy]\noverload_watermark = 1.5\n"),
        vec![
            "sipvane.toml:2: failover_codes entries must be final non-2xx codes 300..699 (got 200)",
            "sipvane.toml:5: ping_reply_codes entries must be SIP codes 100..699 (got 99)",
            "sipvane.toml:9: overload_watermark must be a fraction greater than 0 and at most 1 (got 1.5)",
        ]
    );
}

#[test]
fn source_errors() {
    assert_eq!(
        one_error("[dispatcher]\nsource = \"sqlite:///x\"\n"),
        "sipvane.toml:2: source must be \"file:PATH\", \"postgres://…\" or \"mysql://…\" \
         (got \"sqlite:///x\")"
    );
    assert_eq!(
        one_error("[dispatcher]\nsource = \"file:/a\"\nlist = \"/b\"\n"),
        "sipvane.toml:3: set either source or list (shorthand for source = \"file:PATH\"), not both"
    );
}

#[test]
fn syntax_error_is_one_line() {
    assert_eq!(
        one_error("[proxy]\nlisten = \"0.0.0.0:5060\n"),
        "sipvane.toml:2: invalid TOML: invalid basic string"
    );
}

#[test]
fn all_problems_are_reported_in_line_order() {
    let text = "\
[proxy]
listne = \"1.2.3.4:5060\"
workers = 0
overload_watermark = 2.0

[dispatcher]
algorithm = \"fastest\"
failover_codes = [\"x\"]

[nonsense]
a = 1

[log]
level = \"info,[[[\"
";
    let e = errors(text);
    let lines: Vec<&str> = e.iter().map(|l| l.split(':').nth(1).unwrap()).collect();
    assert_eq!(lines, vec!["2", "3", "4", "7", "8", "10", "14"], "{e:#?}");
}

#[test]
fn unreadable_file() {
    let e = Config::load(std::path::Path::new("/nonexistent/sipvane.toml")).unwrap_err();
    assert_eq!(e.diagnostics.len(), 1);
    assert!(e
        .to_string()
        .starts_with("/nonexistent/sipvane.toml: cannot read configuration file: "));
}

#[test]
fn bad_rtpengine_flags_and_engine_families() {
    assert_eq!(
        one_error("[rtpengine]\nengines = [\"udp:127.0.0.1:22222\"]\noffer_flags = \"ICE=remove call-id=x\"\n"),
        "sipvane.toml:3: offer_flags: rtpengine flag \"call-id\" is taken from the SIP message and cannot be configured"
    );
    assert_eq!(
        one_error("[rtpengine]\nanswer_flags = \"TOS=lots\"\n"),
        "sipvane.toml:2: answer_flags: rtpengine flag \"TOS\": invalid value \"lots\""
    );
    assert_eq!(
        one_error("[rtpengine]\nengines = [\"udp:127.0.0.1:22222\", \"udp:[::1]:22222\"]\n"),
        "sipvane.toml:2: engines must all be IPv4 or all IPv6 (each worker has one ng socket)"
    );
}

#[test]
fn rule_anchoring_needs_engines() {
    assert_eq!(
        one_error("[[dispatcher.rules]]\nprefix = \"+44\"\nset = 2\nrtpengine = true\n"),
        "sipvane.toml:4: rule rtpengine = true needs [rtpengine] engines"
    );
}

#[test]
fn acc_errors() {
    assert_eq!(
        errors(
            "[acc]\ndb_url = \"sqlite:///acc.db\"\nbatch = 0\nacc_table = \"acc; drop\"\n\
             spool_max_bytes = 10\n[acc.extra]\nsrc_user = \"$fU\"\ncallid = \"callid\"\n\
             dst_user = \"$oU\"\n\"bad col\" = \"$rU\"\n"
        ),
        vec![
            "sipvane.toml:2: db_url must start with postgres://, postgresql://, mysql:// or \
             mariadb:// (got \"sqlite:///acc.db\")",
            "sipvane.toml:3: batch must be ≥ 1",
            "sipvane.toml:4: acc_table must be a table name (letters, digits, _, optionally \
             schema.table; got \"acc; drop\")",
            "sipvane.toml:5: spool_max_bytes must be ≥ 4096 (got 10)",
            "sipvane.toml:8: extra column \"callid\" is already written by sipvane",
            "sipvane.toml:9: unknown source \"$oU\" for column \"dst_user\"; expected one of \
             from_user ($fU), from_domain ($fd), from_uri ($fu), to_user ($tU), to_domain ($td), \
             to_uri ($tu), ruri_user ($rU), ruri_domain ($rd), ruri ($ru), dst_uri ($du), set, \
             callid ($ci), duration",
            "sipvane.toml:10: extra column \"bad col\" must be letters, digits and _ (not \
             starting with a digit)",
        ]
    );
    // The password never shows.
    let e = one_error("[acc]\ndb_url = \"redis://u:hunter22@db/0\"\n");
    assert!(e.starts_with("sipvane.toml:2: db_url must start"), "{e}");
    assert!(!e.contains("hunter22"), "{e}");
}

#[test]
fn bad_hep_values() {
    assert_eq!(
        one_error("[hep]\ncollector = \"127.0.0.1:9060\"\n"),
        "sipvane.toml:2: collector must be udp:IP:PORT or tcp:IP:PORT, e.g. \
         \"udp:10.0.0.5:9060\" (got \"127.0.0.1:9060\")"
    );
    assert_eq!(
        one_error("[hep]\ncollector = \"tcp:homer.example:9060\"\n"),
        "sipvane.toml:2: collector must be udp:IP:PORT or tcp:IP:PORT, e.g. \
         \"udp:10.0.0.5:9060\" (got \"tcp:homer.example:9060\")"
    );
    assert_eq!(
        one_error("\n[hep]\ncollector = \"udp:127.0.0.1:9060\"\nsample = 1.5\n"),
        "sipvane.toml:4: sample must be between 0.0 and 1.0 (got 1.5)"
    );
    assert_eq!(
        one_error("[hep]\ncollector = \"tcp:127.0.0.1:9060\"\nqueue_bytes = 1000\n"),
        "sipvane.toml:3: queue_bytes must be between 65536 and 1073741824 (got 1000)"
    );
}

#[test]
fn registrar_settings() {
    assert_eq!(
        errors("[registrar]\ndomain = \"example.com\"\nprefixes = [\"6\"]\n"),
        vec!["sipvane.toml:1: db_url is needed for the registrar (domain or prefixes are set)"]
    );
    assert_eq!(
        errors(
            "[registrar]\ndb_url = \"redis://x\"\nprefixes = [\"\"]\nmin_expires = 600\n\
             max_expires = 60\nmax_contacts = 0\nalgorithms = [\"MD5-sess\"]\nlocation_table = \"a b\"\n\
             max_branches = 33\nnat_ping_interval_s = 3601\nnat_ping_max_misses = 0\n"
        ),
        vec![
            "sipvane.toml:1: domain must name at least one domain when db_url is set",
            "sipvane.toml:1: default_expires (3600) must be between min_expires (600) and \
             max_expires (60)",
            "sipvane.toml:2: db_url must start with postgres://, postgresql://, mysql:// or \
             mariadb:// (got \"redis://x\")",
            "sipvane.toml:3: prefixes must be non-empty user prefixes (got \"\")",
            "sipvane.toml:5: max_expires (60) must be ≥ min_expires (600)",
            "sipvane.toml:6: max_contacts must be 1..1000 (got 0)",
            "sipvane.toml:7: unknown digest algorithm \"MD5-sess\"; expected MD5 or SHA-256",
            "sipvane.toml:8: location_table must be a table name (letters, digits, _, optionally \
             schema.table; got \"a b\")",
            "sipvane.toml:9: max_branches must be 1..32 (got 33)",
            "sipvane.toml:10: nat_ping_interval_s must be 0 (off) .. 3600 (got 3601)",
            "sipvane.toml:11: nat_ping_max_misses must be 1..100 (got 0)",
        ]
    );
    let ok = Config::from_toml_str(
        "[registrar]\ndb_url = \"postgres://k@127.0.0.1/kamailio\"\n\
         domain = [\"a.example\", \"b.example\"]\nalgorithms = [\"SHA-256\", \"MD5\"]\n",
        "sipvane.toml",
    )
    .unwrap();
    assert_eq!(ok.registrar.domain, vec!["a.example", "b.example"]);
}

#[test]
fn overload_control_bounds() {
    assert_eq!(
        errors("[proxy]\noverload_control_start = 1.0\noverload_control_validity_ms = 0\n"),
        vec![
            "sipvane.toml:2: overload_control_start must be a fraction from 0 to below 1 (got 1)",
            "sipvane.toml:3: overload_control_validity_ms must be from 1 to 3600000 (got 0)",
        ]
    );
}

#[test]
fn tls_files_and_listen() {
    let dir = std::env::temp_dir().join(format!("sipvane-tls-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.crt");
    let text = format!(
        "[tls]\nlisten = \"127.0.0.1\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        missing.display(),
        missing.display()
    );
    let e = one_error(&text);
    assert!(
        e.starts_with(&format!(
            "sipvane.toml:3: {}: cannot read",
            missing.display()
        )),
        "{e}"
    );
    // Not PEM at all.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let text = format!(
        "[tls]\nlisten = \"127.0.0.1\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        junk.display(),
        junk.display()
    );
    assert_eq!(
        one_error(&text),
        format!(
            "sipvane.toml:3: {}: no CERTIFICATE in the file",
            junk.display()
        )
    );
    assert_eq!(
        errors("[tls]\nlisten = \"127.0.0.1:0\"\ncertificate = \"a\"\nprivate_key = \"b\"\n")[0],
        "sipvane.toml:2: listen port must not be 0"
    );
    assert_eq!(
        errors("[tls]\nlisten = \"nowhere\"\n"),
        [
            "sipvane.toml:1: certificate (a PEM file) is required when listen is set",
            "sipvane.toml:1: private_key (a PEM file) is required when listen is set",
            "sipvane.toml:2: listen must be an IP or IP:PORT such as \"0.0.0.0\" or \"0.0.0.0:5061\" (got \"nowhere\")",
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_ca_must_load() {
    let dir = std::env::temp_dir().join(format!("sipvane-tls-ca-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing-ca.pem");
    let e = one_error(&format!("[tls]\nca = \"{}\"\n", missing.display()));
    assert!(
        e.starts_with(&format!(
            "sipvane.toml:2: {}: cannot read",
            missing.display()
        )),
        "{e}"
    );
    let junk = dir.join("junk-ca.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    assert_eq!(
        one_error(&format!("[tls]\nca = \"{}\"\n", junk.display())),
        format!(
            "sipvane.toml:2: {}: no CERTIFICATE in the file",
            junk.display()
        )
    );
    assert_eq!(
        one_error(&format!(
            "[tcp]\nenabled = false\n[tls]\nca = \"{}\"\n",
            junk.display()
        )),
        "sipvane.toml:4: TLS destinations need [tcp] enabled = true (they share its connection handling)"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A self-signed certificate and key made by `openssl` in `dir` (`NAME.crt`, `NAME.key`).
fn self_signed(dir: &std::path::Path, name: &str) -> (String, String) {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=sip.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok);
    let s = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    (s(crt), s(key))
}

#[test]
fn tls_client_ca_and_client_certificate() {
    let dir = std::env::temp_dir().join(format!("sipvane-tls-mutual-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, key) = self_signed(&dir, "a");
    let (other_crt, other_key) = self_signed(&dir, "b");
    let listener = format!(
        "[tls]\nlisten = \"127.0.0.1\"\ncertificate = \"{crt}\"\nprivate_key = \"{key}\"\n"
    );
    // Good: a client_ca bundle, and a client certificate with its ca.
    let good = format!(
        "{listener}client_ca = \"{other_crt}\"\nca = \"{other_crt}\"\n\
         client_certificate = \"{other_crt}\"\nclient_private_key = \"{other_key}\"\n"
    );
    Config::from_toml_str(&good, "sipvane.toml").unwrap();
    // client_ca not PEM.
    assert_eq!(
        one_error(&format!("{listener}client_ca = \"{key}\"\n")),
        format!("sipvane.toml:5: {key}: no CERTIFICATE in the file")
    );
    // client_ca without a listener.
    assert_eq!(
        one_error(&format!("[tls]\nclient_ca = \"{crt}\"\n")),
        "sipvane.toml:2: client_ca applies to the TLS listener: set listen too"
    );
    // One of the client pair only; a key that does not fit; no ca.
    assert_eq!(
        one_error(&format!(
            "[tls]\nca = \"{crt}\"\nclient_certificate = \"{crt}\"\n"
        )),
        "sipvane.toml:1: client_certificate and client_private_key go together"
    );
    let e = one_error(&format!(
        "[tls]\nca = \"{crt}\"\nclient_certificate = \"{crt}\"\nclient_private_key = \"{other_key}\"\n"
    ));
    assert!(
        e.starts_with("sipvane.toml:4: ") && e.contains("does not fit"),
        "{e}"
    );
    assert_eq!(
        one_error(&format!(
            "[tls]\nclient_certificate = \"{crt}\"\nclient_private_key = \"{key}\"\n"
        )),
        "sipvane.toml:2: client_certificate is presented to TLS destinations, which need ca"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn flood_limits_out_of_range() {
    assert_eq!(
        errors("[security.flood]\nper_source_rps = 2000000\nblock_s = 0\nmax_sources = 0\n"),
        vec![
            "sipvane.toml:2: per_source_rps must be ≤ 1000000",
            "sipvane.toml:3: block_s must be ≥ 1 when per_source_rps is set",
            "sipvane.toml:4: max_sources must be ≥ 1",
        ]
    );
}
