use super::*;

fn errors(text: &str) -> Vec<String> {
    match Config::from_toml_str(text, "t.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn blanking_keeps_lines_and_offsets() {
    let mut s = "a = 1\nb = [1,\n 2]\nc = 3\n".to_owned();
    assert!(blank_lines(&mut s, 10..14));
    assert_eq!(s, "a = 1\n       \n   \nc = 3\n");
    assert!(!blank_lines(&mut s, 7..8));
}

#[test]
fn dotted_keys_are_located() {
    let e = errors("proxy.listen = 5\nproxy.workers = 0\n");
    assert_eq!(
        e,
        vec![
            "t.toml:1: listen must be an IP:PORT socket address such as \"0.0.0.0:5060\" (got 5)",
            "t.toml:2: workers must be \"auto\" or a number ≥ 1 (got 0)",
        ]
    );
}

#[test]
fn inline_rule_errors_point_at_the_element() {
    let e = errors("[dispatcher]\nrules = [\n  { prefix = \"1\", set = 1 },\n  { prefix = \"2\", domain = \"x\", set = 2 },\n]\n");
    assert_eq!(
        e,
        vec!["t.toml:4: a dispatcher rule must have exactly one of \"prefix\" or \"domain\""]
    );
}

#[test]
fn algorithm_numbers_and_names() {
    assert_eq!(
        AlgorithmSpec::parse_known("rr").map(|a| a.kamailio_number()),
        Ok(Some(4))
    );
    assert_eq!(
        AlgorithmSpec::parse_known("13"),
        Ok(AlgorithmSpec::Number(13))
    );
    assert!(AlgorithmSpec::parse_known("7").is_err());
    assert_eq!(
        AlgorithmSpec::Name("rendezvous".into()).kamailio_number(),
        None
    );
    assert!(AlgorithmSpec::Name("rendezvous".into()).is_known());
}

#[test]
fn engine_spec_round_trip() {
    let e: EngineSpec = "udp:[::1]:22222=3".parse().unwrap();
    assert_eq!(e.weight, 3);
    assert_eq!(e.to_string(), "udp:[::1]:22222=3");
    assert!("tcp:1.2.3.4:1".parse::<EngineSpec>().is_err());
    assert!("udp:1.2.3.4:1=0".parse::<EngineSpec>().is_err());
}

#[test]
fn private_ports() {
    let mut p = ProxyConfig::default();
    assert_eq!(p.private_port(0), Some(5061));
    assert_eq!(p.private_port(3), Some(5064));
    p.private_port_base = 7000;
    assert_eq!(p.private_port(2), Some(7002));
    p.private_port_base = 65535;
    assert_eq!(p.private_port(1), None);
}

#[test]
fn advertise_defaults() {
    let mut p = ProxyConfig::default();
    assert_eq!(p.advertise_host(), "127.0.0.1");
    p.listen = "10.0.0.5:5060".parse().unwrap();
    assert_eq!(p.advertise_host(), "10.0.0.5");
    p.listen = "[::]:5060".parse().unwrap();
    assert_eq!(p.advertise_host(), "::1");
    p.advertise = Some("sip.example.com".into());
    assert_eq!(p.advertise_host(), "sip.example.com");
}

#[test]
fn tcp_limits_are_checked() {
    assert_eq!(
        errors("[tcp]\nmax_message = 100\nidle_timeout_s = 0\nmax_per_source = 9\nmax_connections = 8\n"),
        vec![
            "t.toml:2: max_message must be between 1024 and 16777216 bytes (got 100)",
            "t.toml:3: idle_timeout_s must be ≥ 1",
            "t.toml:4: max_per_source (9) must not exceed max_connections (8)",
        ]
    );
    assert_eq!(
        errors("[tcp]\nproxy_protocol_from = [\"10.0.0.0/8\", \"haproxy\"]\n"),
        vec![
            "t.toml:2: proxy_protocol_from entries must be IP addresses or CIDRs like \"10.0.0.0/8\" (got \"haproxy\")",
        ]
    );
    let c = Config::from_toml_str("[tcp]\nenabled = false\n", "t.toml").unwrap();
    assert!(!c.tcp.enabled);
    assert!(c.tcp.proxy_protocol_from.is_empty());
    assert_eq!(c.tcp.max_message, 65_535);
    assert!(Config::default().tcp.enabled);
}
