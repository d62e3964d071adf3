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
        &test_names,
    )
}

/// What the tests' worker knows of names: `pbx1.test` is the PBX (and
/// `pbx1.test;transport=tcp` over TCP), `evil.test` a foreign host,
/// `gone.test` does not exist, `broken.test`'s server failed; anything
/// else has not been asked yet.
fn test_names(uri: &Uri<'_>) -> Lookup {
    let key = names::name_key(uri);
    let found = |to: &str, tcp| Lookup::Known(Resolved::Found { to: addr(to), tcp });
    match &key[..] {
        b"sip:pbx1.test" => found("10.0.0.5:5070", false),
        b"sip:pbx1.test;transport=tcp" => found("10.0.0.5:5070", true),
        b"sip:evil.test" => found("203.0.113.7:5060", false),
        b"sip:gone.test" => Lookup::Known(Resolved::NoSuchName),
        b"sip:broken.test" => Lookup::Known(Resolved::Failed),
        _ => Lookup::Unknown,
    }
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
            tcp: false,
            tls: false,
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
            tcp: false,
            tls: false,
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
            tcp: false,
            tls: false,
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
            tcp: false,
            tls: false,
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
        &test_names,
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
            tcp: false,
            tls: false,
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
            tcp: false,
            tls: false,
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
            tcp: false,
            tls: false,
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

/// `request` with its own Call-ID.
fn with_call_id(raw: Vec<u8>, call_id: &str) -> Vec<u8> {
    String::from_utf8(raw)
        .unwrap()
        .replace("Call-ID: c\r\n", &format!("Call-ID: {call_id}\r\n"))
        .into_bytes()
}

fn steer_of(raw: &[u8], workers: usize) -> Option<usize> {
    steer(&parse(raw).unwrap(), &cfg(), workers)
}

#[test]
fn steering_keeps_every_request_of_a_call_together() {
    for n in 0..200 {
        let id = format!("call-{n}@trunk");
        let invite = with_call_id(request("sip:100@127.0.0.1", &[], false, "INVITE"), &id);
        let owner = steer_of(&invite, 2).expect("steered");
        // Retransmission, CANCEL, the ACK of a non-2xx (To-tag of the final),
        // an end-to-end ACK and BYE sent to the public address: one owner.
        for (method, tag) in [
            ("INVITE", false),
            ("CANCEL", false),
            ("ACK", true),
            ("BYE", true),
        ] {
            let raw = with_call_id(request("sip:100@127.0.0.1", &[], tag, method), &id);
            assert_eq!(steer_of(&raw, 2), Some(owner), "{method} of {id}");
        }
    }
}

#[test]
fn steering_spreads_one_sources_calls_over_the_workers() {
    for workers in [2usize, 3, 8] {
        let mut per = vec![0u32; workers];
        for n in 0..4000 {
            let raw = with_call_id(
                request("sip:100@127.0.0.1", &[], false, "INVITE"),
                &format!("{n:08x}-a1b2@10.1.1.1"),
            );
            per[steer_of(&raw, workers).expect("steered")] += 1;
        }
        let fair = 4000 / workers as u32;
        for (w, &got) in per.iter().enumerate() {
            assert!(
                got > fair * 8 / 10 && got < fair * 12 / 10,
                "{workers} workers: worker {w} got {got}: {per:?}"
            );
        }
    }
}

#[test]
fn steering_leaves_our_record_route_to_the_routing_decision() {
    // First Route entry is worker 1's Record-Route: `decide` hands it there.
    let rr = request("sip:b@10.0.0.5", &["sip:127.0.0.1:5062;lr"], true, "BYE");
    assert_eq!(steer_of(&rr, 2), None);
    // A strict router put worker 0's Record-Route in the Request-URI.
    let strict = request("sip:127.0.0.1:5061", &["sip:b@10.0.0.5"], true, "BYE");
    assert_eq!(steer_of(&strict, 2), None);
    // A pre-loaded Route to the public port is no worker's: steered.
    let public = request(
        "sip:100@127.0.0.1",
        &["sip:127.0.0.1:5060;lr"],
        false,
        "INVITE",
    );
    assert!(steer_of(&public, 2).is_some());
    // One worker: nothing to steer.
    assert_eq!(
        steer_of(&request("sip:100@127.0.0.1", &[], false, "INVITE"), 1),
        None
    );
}

#[test]
fn in_dialog_names_resolve_through_the_cache_and_park_when_unknown() {
    // The backend's Contact was `sip:pbx1.test`: the caller's BYE names it.
    let bye = |ruri: &str| request(ruri, &["sip:127.0.0.1:5061;lr"], true, "BYE");
    assert_eq!(
        decide_with(&cfg(), &bye("sip:b@pbx1.test"), false),
        Decision::Relay {
            to: addr("10.0.0.5:5070"),
            tcp: false,
            tls: false,
            pop_routes: 1,
            strict: false
        }
    );
    assert!(matches!(
        decide_with(&cfg(), &bye("sip:b@PBX1.test;transport=TCP"), false),
        Decision::Relay { tcp: true, .. }
    ));
    assert_eq!(
        decide_with(&cfg(), &bye("sip:b@new.test"), false),
        Decision::Resolve
    );
    assert!(matches!(
        decide_with(&cfg(), &bye("sip:b@gone.test"), false),
        Decision::Reply { code: 478, .. }
    ));
    assert!(matches!(
        decide_with(&cfg(), &bye("sip:b@broken.test"), false),
        Decision::Reply { code: 503, .. }
    ));
    // A name in the next Route entry (a backend's own Record-Route).
    let via_name = request(
        "sip:b@10.0.0.5",
        &["sip:127.0.0.1:5061;lr", "sip:pbx1.test;lr"],
        true,
        "BYE",
    );
    assert!(matches!(
        decide_with(&cfg(), &via_name, false),
        Decision::Relay { pop_routes: 1, .. }
    ));
}

#[test]
fn a_resolved_name_is_still_held_to_the_relay_policy() {
    // `evil.test` resolves to a foreign host: an untrusted peer gets 403,
    // exactly as with the address written out.
    let raw = request("sip:b@evil.test", &["sip:127.0.0.1:5061;lr"], true, "BYE");
    assert!(is_refusal(decide_with(&cfg(), &raw, false)));
    assert!(matches!(
        decide_with(&cfg(), &raw, true),
        Decision::Relay { .. }
    ));
    // Strict routing to a name: the same check.
    let strict = request("sip:127.0.0.1:5061;lr", &["sip:b@evil.test"], true, "BYE");
    assert!(is_refusal(decide_with(&cfg(), &strict, false)));
    let strict = request("sip:127.0.0.1:5061;lr", &["sip:b@pbx1.test"], true, "BYE");
    assert!(matches!(
        decide_with(&cfg(), &strict, false),
        Decision::Relay { strict: true, .. }
    ));
    // An initial request never resolves what an untrusted caller names.
    let initial = request("sip:100@127.0.0.1", &["sip:evil.test;lr"], false, "INVITE");
    assert!(matches!(
        decide_with(&cfg(), &initial, false),
        Decision::Dispatch { .. }
    ));
}

#[test]
fn a_double_record_route_of_ours_is_popped_whole() {
    let tls = ProxyConfig {
        tls_port: Some(5081),
        ..cfg()
    };
    // The callee's side of a TLS caller's call: our UDP entry (worker 1),
    // then the TLS one facing the caller; the caller's Contact last.
    let pair = [
        "sip:127.0.0.1:5062;lr",
        "sip:127.0.0.1:5081;transport=tls;lr",
    ];
    let raw = request("sip:a@10.0.0.5", &pair, true, "BYE");
    assert_eq!(decide_with(&tls, &raw, false), Decision::Handoff(1));
    let on_owner = |routes: &[&str], handed_over| {
        let raw = request("sip:a@10.0.0.5", routes, true, "BYE");
        let msg = parse(&raw).unwrap();
        let info = msg.validated_request().unwrap();
        decide(
            Request {
                msg: &msg,
                info: &info,
                method: Method::Bye,
                trusted: &|| false,
                handed_over,
            },
            &tls,
            1,
            &|_| true,
            &test_names,
        )
    };
    assert_eq!(
        on_owner(&pair, false),
        Decision::Relay {
            to: addr("10.0.0.5:5060"),
            tcp: false,
            tls: false,
            pop_routes: 2,
            strict: false
        }
    );
    // The caller's side: the reverse, arriving over its connection on the
    // worker that owns it; the owner is found on the second entry.
    let back = [pair[1], pair[0]];
    let raw = request("sip:b@10.0.0.5", &back, true, "BYE");
    assert_eq!(decide_with(&tls, &raw, false), Decision::Handoff(1));
    assert!(matches!(
        on_owner(&back, false),
        Decision::Relay { pop_routes: 2, .. }
    ));
    // A further hop after the pair is the next hop.
    let more = [pair[0], pair[1], "sip:10.0.0.5:5080;transport=tcp;lr"];
    assert_eq!(
        on_owner(&more, false),
        Decision::Relay {
            to: addr("10.0.0.5:5080"),
            tcp: true,
            tls: false,
            pop_routes: 2,
            strict: false
        }
    );
    // Two of ours on the same transport are no pair: a loop (482), as is a
    // third of ours after a pair.
    for looped in [
        &["sip:127.0.0.1:5062;lr", "sip:127.0.0.1:5062;lr"][..],
        &[pair[0], pair[1], "sip:127.0.0.1:5060;transport=tcp;lr"][..],
    ] {
        assert!(
            matches!(on_owner(looped, true), Decision::Reply { code: 482, .. }),
            "{looped:?}"
        );
    }
    // Without a TLS listener the TLS port is nobody's: not our entry.
    assert!(matches!(
        decide(
            Request {
                msg: &parse(&raw).unwrap(),
                info: &parse(&raw).unwrap().validated_request().unwrap(),
                method: Method::Bye,
                trusted: &|| false,
                handed_over: true,
            },
            &cfg(),
            1,
            &|_| true,
            &test_names,
        ),
        Decision::Reply { code: 404, .. }
    ));
    // Steering by Call-ID leaves a request through our pair to the decision.
    let raw = request("sip:b@10.0.0.5", &back, true, "BYE");
    let msg = parse(&raw).unwrap();
    assert_eq!(steer(&msg, &tls, 2), None);
}
