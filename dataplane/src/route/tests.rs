//! Every policy value against every kind of relay attempt.

use super::*;
use crate::sip::parse;

const PBX: &str = "10.0.0.5";

fn cfg() -> ProxyConfig {
    ProxyConfig {
        private_ports: vec![5061, 5062],
        ..ProxyConfig::default()
    }
}

/// A request from a caller; `to_tag` makes it in-dialog.
fn request(ruri: &str, routes: &[&str], to_tag: bool, method: &str) -> Vec<u8> {
    let mut m =
        format!("{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-1\r\n");
    for r in routes {
        m.push_str(&format!("Route: <{r}>\r\n"));
    }
    let tag = if to_tag { ";tag=callee" } else { "" };
    m.push_str(&format!(
        "Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>{tag}\r\nCall-ID: c\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ));
    m.into_bytes()
}

fn decide_with(cfg: &ProxyConfig, raw: &[u8], trusted: bool) -> Decision {
    let msg = parse(raw).unwrap();
    let info = msg.validated_request().unwrap();
    let method = msg.method().unwrap();
    let pbx: IpAddr = PBX.parse().unwrap();
    decide(
        Request {
            msg: &msg,
            info: &info,
            method,
            trusted: &|| trusted,
            handed_over: false,
        },
        cfg,
        0,
        &|ip| ip == pbx || cfg.is_trusted_ip(ip),
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn is_refusal(d: Decision) -> bool {
    matches!(
        d,
        Decision::Reply {
            code: 403 | 404,
            ..
        }
    )
}

#[test]
fn initial_request_preloaded_foreign_route_is_stripped_by_default() {
    let raw = request(
        "sip:100@127.0.0.1",
        &["sip:203.0.113.7;lr"],
        false,
        "INVITE",
    );
    for trusted in [false, true] {
        assert_eq!(
            decide_with(&cfg(), &raw, trusted),
            Decision::Dispatch {
                set: 1,
                media: None,
                pop_routes: 1
            },
        );
    }
}

#[test]
fn preloaded_route_reject_refuses_untrusted_and_strips_for_trusted() {
    let c = ProxyConfig {
        preloaded_route: PreloadedRoute::Reject,
        ..cfg()
    };
    let raw = request(
        "sip:100@127.0.0.1",
        &["sip:203.0.113.7;lr"],
        false,
        "INVITE",
    );
    assert!(matches!(
        decide_with(&c, &raw, false),
        Decision::Reply { code: 403, .. }
    ));
    assert!(matches!(
        decide_with(&c, &raw, true),
        Decision::Dispatch { pop_routes: 1, .. }
    ));
    // A route naming only us is an outbound-proxy setting, never refused.
    let ours = request("sip:100@127.0.0.1", &["sip:127.0.0.1;lr"], false, "INVITE");
    assert!(matches!(
        decide_with(&c, &ours, false),
        Decision::Dispatch { pop_routes: 1, .. }
    ));
}

#[test]
fn preloaded_route_follow_applies_to_trusted_sources_only() {
    let c = ProxyConfig {
        preloaded_route: PreloadedRoute::Follow,
        ..cfg()
    };
    let raw = request(
        "sip:100@127.0.0.1",
        &["sip:127.0.0.1;lr", "sip:198.51.100.1;lr"],
        false,
        "INVITE",
    );
    assert_eq!(
        decide_with(&c, &raw, true),
        Decision::Relay {
            to: addr("198.51.100.1:5060"),
            pop_routes: 1,
            strict: false
        }
    );
    assert!(matches!(
        decide_with(&c, &raw, false),
        Decision::Dispatch { pop_routes: 2, .. }
    ));
}

#[test]
fn in_dialog_foreign_top_route_is_refused_unless_trusted() {
    let raw = request("sip:b@10.0.0.5", &["sip:203.0.113.7;lr"], true, "BYE");
    assert!(is_refusal(decide_with(&cfg(), &raw, false)));
    assert_eq!(
        decide_with(&cfg(), &raw, true),
        Decision::Relay {
            to: addr("203.0.113.7:5060"),
            pop_routes: 0,
            strict: false
        }
    );
}

#[test]
fn in_dialog_without_route_is_refused_unless_trusted() {
    let raw = request("sip:b@203.0.113.7", &[], true, "BYE");
    assert!(is_refusal(decide_with(&cfg(), &raw, false)));
    assert_eq!(
        decide_with(&cfg(), &raw, true),
        Decision::Relay {
            to: addr("203.0.113.7:5060"),
            pop_routes: 0,
            strict: false
        }
    );
}

#[test]
fn in_dialog_through_our_record_route_reaches_known_targets_only() {
    let to_pbx = request(
        "sip:b@10.0.0.5:5080",
        &["sip:127.0.0.1:5061;lr"],
        true,
        "BYE",
    );
    assert_eq!(
        decide_with(&cfg(), &to_pbx, false),
        Decision::Relay {
            to: addr("10.0.0.5:5080"),
            pop_routes: 1,
            strict: false
        }
    );
    let to_victim = request(
        "sip:b@203.0.113.7",
        &["sip:127.0.0.1:5061;lr"],
        true,
        "INVITE",
    );
    assert!(matches!(
        decide_with(&cfg(), &to_victim, false),
        Decision::Reply { code: 403, .. }
    ));
    // A dispatcher destination (trusted) may send its in-dialog requests anywhere:
    // that is how the callee's BYE reaches the caller.
    assert!(matches!(
        decide_with(&cfg(), &to_victim, true),
        Decision::Relay { .. }
    ));
    // Kamailio's behaviour, on request.
    let any = ProxyConfig {
        dialog_targets: DialogTargets::Any,
        ..cfg()
    };
    assert!(matches!(
        decide_with(&any, &to_victim, false),
        Decision::Relay { .. }
    ));
    // A trusted network is a known target.
    let net = ProxyConfig {
        trusted_sources: vec!["203.0.113.0/24".parse().unwrap()],
        ..cfg()
    };
    assert!(matches!(
        decide_with(&net, &to_victim, false),
        Decision::Relay { .. }
    ));
}

#[test]
fn in_dialog_route_of_another_worker_is_handed_over_once() {
    let raw = request("sip:b@10.0.0.5", &["sip:127.0.0.1:5062;lr"], true, "BYE");
    assert_eq!(decide_with(&cfg(), &raw, false), Decision::Handoff(1));
    let msg = parse(&raw).unwrap();
    let info = msg.validated_request().unwrap();
    let again = decide(
        Request {
            msg: &msg,
            info: &info,
            method: Method::Bye,
            trusted: &|| false,
            handed_over: true,
        },
        &cfg(),
        0,
        &|_| true,
    );
    assert!(
        matches!(again, Decision::Relay { pop_routes: 1, .. }),
        "{again:?}"
    );
}

#[test]
fn unknown_domain_is_relayed_for_trusted_sources_only() {
    let relay = ProxyConfig {
        domains: vec!["example.com".into()],
        unknown_domain: UnknownDomain::Relay,
        ..cfg()
    };
    let raw = request("sip:100@203.0.113.7", &[], false, "INVITE");
    assert!(matches!(
        decide_with(&relay, &raw, false),
        Decision::Reply { code: 404, .. }
    ));
    assert_eq!(
        decide_with(&relay, &raw, true),
        Decision::Relay {
            to: addr("203.0.113.7:5060"),
            pop_routes: 0,
            strict: false
        }
    );
    let reject = ProxyConfig {
        unknown_domain: UnknownDomain::Reject,
        ..relay
    };
    assert!(matches!(
        decide_with(&reject, &raw, true),
        Decision::Reply { code: 404, .. }
    ));
    let served = request("sip:100@example.com", &[], false, "INVITE");
    assert!(matches!(
        decide_with(&reject, &served, false),
        Decision::Dispatch { .. }
    ));
}

#[test]
fn options_to_us_loops_and_bad_routes() {
    let ping = request("sip:127.0.0.1", &[], false, "OPTIONS");
    assert_eq!(decide_with(&cfg(), &ping, false), Decision::Options);
    let exhausted = String::from_utf8(request("sip:100@127.0.0.1", &[], false, "INVITE"))
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert!(matches!(
        decide_with(&cfg(), exhausted.as_bytes(), false),
        Decision::Reply { code: 483, .. }
    ));
    let twice = request(
        "sip:b@10.0.0.5",
        &["sip:127.0.0.1:5061;lr", "sip:127.0.0.1:5061;lr"],
        true,
        "BYE",
    );
    assert!(matches!(
        decide_with(&cfg(), &twice, false),
        Decision::Reply { code: 482, .. }
    ));
    let bad = request("sip:b@10.0.0.5", &["not a uri"], true, "BYE");
    assert!(matches!(
        decide_with(&cfg(), &bad, false),
        Decision::Reply { code: 400, .. }
    ));
}

#[test]
fn a_strict_router_puts_our_record_route_in_the_request_uri() {
    // The previous hop put our RR into the Request-URI and the real target
    // last in the route set (RFC 3261 §16.4).
    let raw = request("sip:127.0.0.1:5061", &["sip:b@10.0.0.5:5080"], true, "BYE");
    assert_eq!(
        decide_with(&cfg(), &raw, false),
        Decision::Relay {
            to: addr("10.0.0.5:5080"),
            pop_routes: 0,
            strict: true
        }
    );
    let msg = parse(&raw).unwrap();
    assert_eq!(last_route_uri(&msg), Some(&b"sip:b@10.0.0.5:5080"[..]));
    // With a route set left, the next hop is its first entry.
    let raw = request(
        "sip:127.0.0.1:5061",
        &["sip:10.0.0.5:5090;lr", "sip:b@10.0.0.5:5080"],
        true,
        "BYE",
    );
    assert_eq!(
        decide_with(&cfg(), &raw, false),
        Decision::Relay {
            to: addr("10.0.0.5:5090"),
            pop_routes: 0,
            strict: true
        }
    );
    // Another worker's RR: handed over; a foreign target from an untrusted source: 403.
    let other = request("sip:127.0.0.1:5062", &["sip:b@10.0.0.5"], true, "BYE");
    assert_eq!(decide_with(&cfg(), &other, false), Decision::Handoff(1));
    let victim = request("sip:127.0.0.1:5061", &["sip:b@203.0.113.7"], true, "BYE");
    assert!(matches!(
        decide_with(&cfg(), &victim, false),
        Decision::Reply { code: 403, .. }
    ));
}
