//! The management API and `sipvane ctl` against the real `sipvane` binary,
//! with real SIPp callers and callees on loopback: the numbers the API
//! reports follow the calls, and the state it sets changes where calls go.

mod support;

#[path = "support/redis.rs"]
mod redis_support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use control::api::model::{Dialogs, Dispatcher, ErrorStats, Health, Status};
use serde_json::Value;
use support::{
    free_sip_port, free_tcp_port, free_udp_addr, free_udp_port, localhost, Scenario, Sipvane, Uac,
    Uas,
};

const RUN_LIMIT: Duration = Duration::from_secs(40);
const SETTLE: Duration = Duration::from_secs(10);

/// One HTTP request to the management API: (status, body).
fn http(
    method: &str,
    mgmt: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let url = format!("http://{mgmt}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let sent = match method {
        "GET" => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            match body {
                Some(b) => r.header("Content-Type", "application/json").send(b),
                None => r.send_empty(),
            }
        }
    };
    let mut resp = sent.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
    (status, text)
}

fn get<T: serde::de::DeserializeOwned>(mgmt: SocketAddr, path: &str) -> T {
    let (code, body) = http("GET", mgmt, path, None, None);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn set_state(mgmt: SocketAddr, body: &str) -> (u16, Value) {
    let (code, text) = http("POST", mgmt, "/dispatcher/state", None, Some(body));
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (code, v)
}

/// The destination with `uri` in set 1.
fn dest(d: &Dispatcher, uri: &str) -> control::api::model::DestView {
    d.sets
        .iter()
        .flat_map(|s| s.destinations.iter())
        .find(|x| x.uri == uri)
        .cloned()
        .unwrap_or_else(|| panic!("{uri} not in {d:?}"))
}

/// Polls until `done` holds, at most `limit`; returns whether it did.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `name value` of an unlabelled or labelled sample in Prometheus text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
fn api_follows_real_calls_and_steers_them() {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    let mut c = Uas::start(Scenario::Uas, free_udp_addr());
    let (ua, ub, uc) = (
        format!("sip:{}", a.addr()),
        format!("sip:{}", b.addr()),
        format!("sip:{}", c.addr()),
    );
    // Probing off: an operator-inactive destination that answers OPTIONS
    // would otherwise be brought back by the prober.
    let mut sipvane = Sipvane::builder("api")
        .algorithm("round-robin")
        .destination(format!("1 {ua} 0 0 weight=50;duid=a"))
        .destination(format!("1 {ub}"))
        .toml("ping_interval_s = 0")
        .start();
    let mgmt = sipvane.mgmt_addr();

    // At rest.
    let (code, body) = http("GET", mgmt, "/health", None, None);
    assert_eq!(code, 200, "{body}");
    let h: Health = serde_json::from_str(&body).expect("health JSON");
    assert_eq!((h.status.as_str(), h.workers, h.alive), ("ok", 2, 2));
    let s: Status = get(mgmt, "/status");
    assert_eq!((s.calls_total, s.active_dialogs, s.workers), (0, 0, 2));
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    assert!(s.io == "io_uring" || s.io == "epoll", "{s:?}");
    assert_eq!(s.listen, sipvane.addr().to_string());
    let d: Dispatcher = get(mgmt, "/dispatcher");
    assert_eq!(d.sets.len(), 1);
    let da = dest(&d, &ua);
    assert_eq!(
        (da.state.as_str(), da.weight, da.attrs.as_str()),
        ("active", 50, "weight=50;duid=a")
    );
    assert_eq!(da.duid.as_deref(), Some("a"));

    // Calls held for 2 s: while they last the API sees them.
    let uac = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(40)
        .rate(20)
        .hold(Duration::from_secs(2))
        .timeout(RUN_LIMIT)
        .spawn();
    let mut seen_dialogs = 0;
    let mut seen_active = 0;
    let mut seen_rate = 0.0f64;
    let during = eventually(Duration::from_secs(15), || {
        let s: Status = get(mgmt, "/status");
        let d: Dispatcher = get(mgmt, "/dispatcher");
        seen_dialogs = seen_dialogs.max(s.active_dialogs);
        seen_active = seen_active.max(dest(&d, &ua).active_calls.min(dest(&d, &ub).active_calls));
        seen_rate = seen_rate.max(s.calls_per_s);
        seen_dialogs > 0 && seen_active > 0 && seen_rate > 0.0
    });
    assert!(
        during,
        "while calls were up: dialogs {seen_dialogs}, per-destination active calls {seen_active}, calls/s {seen_rate}"
    );
    let run = uac.wait();
    run.assert_all_succeeded(40);

    // Afterwards every counter adds up.
    let settled = eventually(SETTLE, || {
        let s: Status = get(mgmt, "/status");
        s.active_dialogs == 0 && s.active_calls == 0
    });
    assert!(
        settled,
        "dialogs still open: {:?}",
        get::<Status>(mgmt, "/status")
    );
    let s: Status = get(mgmt, "/status");
    assert_eq!(
        (s.calls_total, s.answered_total, s.failed_total),
        (40, 40, 0)
    );
    assert_eq!(
        s.worker_detail
            .iter()
            .map(|w| w.initial_invites)
            .sum::<u64>(),
        40
    );
    let d: Dispatcher = get(mgmt, "/dispatcher");
    // One caller lands on one worker, whose round-robin alternates.
    assert_eq!((dest(&d, &ua).selected, dest(&d, &ub).selected), (20, 20));
    let dl: Dialogs = get(mgmt, "/dialogs");
    assert_eq!((dl.active, dl.created, dl.ended), (0, 40, 40));
    assert_eq!(dl.per_worker.len(), 2);
    let (code, body) = http("GET", mgmt, "/dialogs?list=1", None, None);
    assert_eq!(code, 501, "{body}");
    let e: ErrorStats = get(mgmt, "/errors/stats");
    assert_eq!((e.parse_errors, e.failovers, e.timeouts), (0, 0, 0));
    assert_eq!((e.replies_4xx, e.replies_5xx, e.calls_failed), (0, 0, 0));

    let (code, metrics) = http("GET", mgmt, "/metrics", None, None);
    assert_eq!(code, 200);
    assert_eq!(
        sample(&metrics, "sipvane_initial_invites_total"),
        Some(40.0)
    );
    assert_eq!(sample(&metrics, "sipvane_calls_answered_total"), Some(40.0));
    assert!(
        sample(&metrics, "sipvane_replies_total{class=\"2xx\"}").is_some_and(|v| v >= 80.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "sipvane_dialogs_active"), Some(0.0));
    let sel = |m: &str, uri: &str| {
        sample(
            m,
            &format!("sipvane_destination_selected_total{{set=\"1\",uri=\"{uri}\"}}"),
        )
    };
    assert_eq!(sel(&metrics, &ua), Some(20.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            &format!("sipvane_destination_state{{set=\"1\",uri=\"{ub}\",state=\"active\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "sipvane_worker_up{worker=\"1\"}"),
        Some(1.0)
    );
    assert!(metrics.contains("sipvane_worker_handoff_queue_depth{worker=\"0\"}"));
    assert!(metrics.ends_with("# EOF\n"));
    assert!(
        !metrics.contains("sipvane_event_queue_depth"),
        "no event queues without [events]"
    );

    // Operator takes b out: new calls go to a only.
    let (code, v) = set_state(
        mgmt,
        &format!(r#"{{"set":1,"uri":"{ub}","state":"inactive"}}"#),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["changed"][0]["previous"], "active");
    assert_eq!(v["changed"][0]["state"], "inactive");
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(20)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(20);
    let d: Dispatcher = get(mgmt, "/dispatcher");
    assert_eq!(dest(&d, &ub).state, "inactive");
    assert!(!dest(&d, &ub).usable);
    assert_eq!(dest(&d, &ub).selected, 20);
    assert_eq!(dest(&d, &ua).selected, 40);

    // Bad requests get clear answers.
    let (code, v) = set_state(
        mgmt,
        &format!(r#"{{"set":1,"uri":"{ub}","state":"sleepy"}}"#),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown destination state 'sleepy'")),
        "{v}"
    );
    let (code, v) = set_state(
        mgmt,
        r#"{"set":1,"uri":"sip:nobody.invalid","state":"active"}"#,
    );
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["error"], "no destination sip:nobody.invalid in set 1");
    let (code, v) = set_state(
        mgmt,
        &format!(r#"{{"set":2,"uri":"{ub}","state":"active"}}"#),
    );
    assert_eq!(code, 404, "{v}");
    let (code, v) = set_state(mgmt, "{not json");
    assert_eq!(code, 400, "{v}");
    let (code, _) = http("GET", mgmt, "/no/such/thing", None, None);
    assert_eq!(code, 404);

    // Reload after editing the list: c joins, b keeps its operator state.
    std::fs::write(
        sipvane.list_path(),
        format!("1 {ua} 0 0 weight=50;duid=a\n1 {ub}\n1 {uc}\n"),
    )
    .expect("rewrite list");
    let (code, body) = http("POST", mgmt, "/dispatcher/reload", None, None);
    assert_eq!(code, 200, "{body}");
    let r: Value = serde_json::from_str(&body).expect("reload JSON");
    assert_eq!(
        (
            r["destinations"].as_u64(),
            r["added"].as_u64(),
            r["removed"].as_u64()
        ),
        (Some(3), Some(1), Some(0))
    );
    let d: Dispatcher = get(mgmt, "/dispatcher");
    assert_eq!(d.sets[0].destinations.len(), 3);
    assert_eq!(dest(&d, &ub).state, "inactive");
    assert_eq!(dest(&d, &uc).state, "active");
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(20)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(20);
    let d: Dispatcher = get(mgmt, "/dispatcher");
    let (sa, sb, sc) = (
        dest(&d, &ua).selected,
        dest(&d, &ub).selected,
        dest(&d, &uc).selected,
    );
    assert_eq!(
        sb, 20,
        "the inactive destination was selected after a reload"
    );
    assert!(sc >= 1, "the added destination got no call: {d:?}");
    assert_eq!(sa + sc, 60);

    // A broken list is refused and the table in service kept.
    std::fs::write(sipvane.list_path(), format!("1 {ua} nonsense\n")).expect("rewrite list");
    let (code, body) = http("POST", mgmt, "/dispatcher/reload", None, None);
    assert_eq!(code, 422, "{body}");
    let v: Value = serde_json::from_str(&body).expect("error JSON");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("dispatcher.list:1:")),
        "{v}"
    );
    assert_eq!(
        get::<Dispatcher>(mgmt, "/dispatcher").sets[0]
            .destinations
            .len(),
        3
    );

    // Back to active: b is selected again.
    let (code, v) = set_state(mgmt, &format!(r#"{{"uri":"{ub}","state":"a"}}"#));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["changed"][0]["state"], "active");

    // What the callees saw matches what the API said.
    let (fa, fb, fc) = (a.stop(), b.stop(), c.stop());
    assert_eq!(
        fb.invites_received(),
        20,
        "an inactive destination got calls"
    );
    assert_eq!(fa.invites_received(), sa);
    assert_eq!(fc.invites_received(), sc);
    let counters = sipvane.stop();
    assert_eq!(counters.get("initial_invites"), 80);
}

/// `sipvane ctl …` against a running sipvane: (exit code, stdout, stderr).
fn ctl(mgmt: SocketAddr, args: &[&str]) -> (i32, String, String) {
    ctl_with(mgmt, args, &[])
}

fn ctl_with(mgmt: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipvane"));
    cmd.arg("ctl")
        .arg("--mgmt")
        .arg(mgmt.to_string())
        .args(args);
    cmd.env_remove("SIPVANE_MGMT_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o: Output = cmd.output().expect("run sipvane ctl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn ctl_verbs_against_real_sipvane() {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    let (ua, ub) = (format!("sip:{}", a.addr()), format!("sip:{}", b.addr()));
    let mut sipvane = Sipvane::builder("ctl")
        .destination(format!("1 {ua}"))
        .destination(format!("1 {ub}"))
        .toml("ping_interval_s = 0")
        .start();
    let mgmt = sipvane.mgmt_addr();
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(10)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(10);
    assert!(eventually(SETTLE, || get::<Status>(mgmt, "/status")
        .active_dialogs
        == 0));

    let (code, out, err) = ctl(mgmt, &["ping"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "ok: 2/2 workers alive\n", "")
    );

    let (code, out, _) = ctl(mgmt, &["dispatcher", "list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SET  URI"), "{out}");
    assert_eq!(lines.len(), 3, "{out}");
    for (line, uri) in lines[1..].iter().zip([&ua, &ub]) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // SET URI STATE ACTIVE SELECTED FAILED ...
        assert_eq!(
            &cols[..6],
            &["1", uri.as_str(), "active", "0", "5", "0"],
            "{out}"
        );
    }
    let (code, out, _) = ctl(mgmt, &["--json", "dispatcher", "list"]);
    assert_eq!(code, 0);
    let d: Dispatcher = serde_json::from_str(&out).expect("ctl --json is the API's JSON");
    assert_eq!(dest(&d, &ua).selected, 5);

    let (code, out, _) = ctl(mgmt, &["stats"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("calls total 10  answered 10  failed 0"),
        "{out}"
    );
    assert!(out.contains("failovers 0  timeouts 0"), "{out}");
    assert!(out.contains("WORKER  ALIVE"), "{out}");
    let (code, out, _) = ctl(mgmt, &["stats", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("stats JSON");
    assert_eq!(v["status"]["calls_total"], 10);
    assert_eq!(v["errors"]["parse_errors"], 0);

    let (code, out, _) = ctl(mgmt, &["dialogs"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("active dialogs 0  (created 10, ended 10,"),
        "{out}"
    );

    let (code, out, _) = ctl(mgmt, &["top", "--iterations", "3", "--interval-ms", "200"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("calls/s ").count(), 3, "three frames:\n{out}");
    assert_eq!(out.matches(&ua).count(), 3, "{out}");
    assert!(!out.contains('\x1b'), "no escape codes when piped:\n{out}");
    let (code, out, _) = ctl(
        mgmt,
        &["top", "--iterations", "2", "--interval-ms", "100", "--json"],
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2);
    for l in out.lines() {
        let v: Value = serde_json::from_str(l).expect("one JSON object per frame");
        assert_eq!(v["status"]["calls_total"], 10);
    }

    // set-state through ctl steers calls.
    let (code, out, err) = ctl(
        mgmt,
        &["dispatcher", "set-state", "inactive", &ub, "--set", "1"],
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, format!("set 1 {ub}: active -> inactive\n"));
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(6)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(6);
    let (code, out, _) = ctl(mgmt, &["dispatcher", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.contains(&ub) && l.contains("inactive")),
        "{out}"
    );

    let (code, out, err) = ctl(mgmt, &["dispatcher", "set-state", "sleepy", &ub]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "sipvane ctl: /dispatcher/state: HTTP 400: unknown destination state 'sleepy' (expected active, inactive, disabled, probing or a, i, d, p, ip, tp)\n"
    );
    let (code, _, err) = ctl(
        mgmt,
        &["dispatcher", "set-state", "active", "sip:nobody.invalid"],
    );
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "sipvane ctl: /dispatcher/state: HTTP 404: no destination sip:nobody.invalid in any set\n"
    );

    // reload through ctl.
    std::fs::write(sipvane.list_path(), format!("1 {ua}\n")).expect("rewrite list");
    let (code, out, err) = ctl(mgmt, &["dispatcher", "reload"]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out,
        format!(
            "reloaded {}: 1 set(s), 1 destination(s) (0 added, 1 removed)\n",
            sipvane.list_path().display()
        )
    );
    std::fs::write(sipvane.list_path(), "1 sip:127.0.0.1:1 bogus\n").expect("rewrite list");
    let (code, out, err) = ctl(mgmt, &["dispatcher", "reload"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with("sipvane ctl: /dispatcher/reload: HTTP 422: reload failed: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let (fa, fb) = (a.stop(), b.stop());
    assert_eq!(
        (fa.invites_received(), fb.invites_received()),
        (11, 5),
        "b was inactive for the last 6 calls"
    );
    sipvane.stop();
}

#[test]
fn token_guards_every_endpoint() {
    let mut sipvane = Sipvane::builder("token")
        .destination(format!("1 sip:{}", free_udp_addr()))
        .mgmt_token("s3cret")
        .start();
    let mgmt = sipvane.mgmt_addr();
    for path in [
        "/health",
        "/status",
        "/dispatcher",
        "/dialogs",
        "/errors/stats",
        "/metrics",
    ] {
        let (code, body) = http("GET", mgmt, path, None, None);
        assert_eq!(code, 401, "GET {path} without a token: {body}");
        let v: Value = serde_json::from_str(&body).expect("401 is JSON");
        assert!(v["error"]
            .as_str()
            .is_some_and(|e| e.contains("bearer token")));
        let (code, _) = http("GET", mgmt, path, Some("wrong"), None);
        assert_eq!(code, 401, "GET {path} with a wrong token");
        let (code, body) = http("GET", mgmt, path, Some("s3cret"), None);
        assert_eq!(code, 200, "GET {path} with the token: {body}");
    }
    let (code, _) = http("POST", mgmt, "/dispatcher/reload", None, None);
    assert_eq!(code, 401);
    let (code, _) = http("POST", mgmt, "/dispatcher/state", Some("nope"), Some("{}"));
    assert_eq!(code, 401);

    let (code, out, err) = ctl(mgmt, &["ping"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "sipvane ctl: /health: HTTP 401: missing or wrong bearer token (Authorization: Bearer …) (pass --token or set SIPVANE_MGMT_TOKEN)\n"
    );
    let (code, out, _) = ctl(mgmt, &["--token", "s3cret", "ping"]);
    assert_eq!((code, out.as_str()), (0, "ok: 2/2 workers alive\n"));
    let (code, out, _) = ctl_with(mgmt, &["ping"], &[("SIPVANE_MGMT_TOKEN", "s3cret")]);
    assert_eq!((code, out.as_str()), (0, "ok: 2/2 workers alive\n"));
    sipvane.stop();
}

#[test]
fn ctl_without_sipvane_exits_1_with_one_line() {
    // Nothing listens on a port that was free a moment ago.
    let closed = localhost(free_tcp_port());
    for verb in [
        &["ping"][..],
        &["stats"],
        &["dispatcher", "list"],
        &["top", "--iterations", "1"],
    ] {
        let (code, out, err) = ctl(closed, verb);
        assert_eq!((code, out.as_str()), (1, ""), "{verb:?}");
        assert_eq!(
            err,
            format!(
                "sipvane ctl: cannot reach sipvane's management API at http://{closed}: Connection refused (os error 111) (is sipvane running? see --mgmt)\n"
            ),
            "{verb:?}"
        );
    }
}

/// A management port already taken stops sipvane with one line, promptly.
#[test]
fn taken_mgmt_port_stops_sipvane() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let dir = std::env::temp_dir().join(format!("sipvane-api-taken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let list = dir.join("dispatcher.list");
    std::fs::write(&list, "1 sip:127.0.0.1:5999\n").expect("write list");
    // Explicit free ports for the public and the private socket, so only
    // the management port can be the one in use.
    let cfg = dir.join("sipvane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{}\"\nworkers = 1\nprivate_port_base = {}\n\
             [dispatcher]\nlist = \"{}\"\n",
            free_sip_port(),
            free_udp_port(),
            list.display()
        ),
    )
    .expect("write config");
    let o = support::output_within(
        Command::new(env!("CARGO_BIN_EXE_sipvane"))
            .args(["run", "--log-level", "error", "-c"])
            .arg(&cfg)
            .arg("--mgmt")
            .arg(taken.to_string())
            .env_remove("RUST_LOG"),
        Duration::from_secs(30),
        "sipvane without its management port",
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!("sipvane: cannot listen for the management API on {taken}: Address already in use (os error 98); set [mgmt] listen or --mgmt\n")
    );
    drop(holder);
}

/// With `[events]` on, the event queues and the Redis exporter show in
/// /metrics and /errors/stats; a Redis outage shows as `connected` 0, errors
/// and buffered events, and its end as a reconnect with nothing dropped.
#[test]
fn event_queues_are_reported() {
    let mut redis = redis_support::RedisServer::start_persistent();
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("api-events")
        .destination(format!("1 sip:{}", uas.addr()))
        .toml(&format!(
            "[events]\nredis_url = \"{}\"\nlist = \"sipvane:api:events\"\n",
            redis.url()
        ))
        .start();
    let mgmt = sipvane.mgmt_addr();
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(10)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(10);
    let mut conn = redis.connection();
    let exported = eventually(SETTLE, || {
        redis::cmd("LLEN")
            .arg("sipvane:api:events")
            .query::<u64>(&mut conn)
            .is_ok_and(|n| n >= 30)
    });
    assert!(
        exported,
        "start, answered and end of 10 calls never reached Redis"
    );

    let (code, m) = http("GET", mgmt, "/metrics", None, None);
    assert_eq!(code, 200);
    assert_eq!(sample(&m, "sipvane_event_queue_depth"), Some(0.0), "{m}");
    assert_eq!(
        sample(&m, "sipvane_event_queue_dropped_total"),
        Some(0.0),
        "{m}"
    );
    for w in ["0", "1"] {
        let depth = format!("sipvane_worker_event_queue_depth{{worker=\"{w}\"}}");
        let drops = format!("sipvane_worker_event_drops_total{{worker=\"{w}\"}}");
        assert_eq!(sample(&m, &depth), Some(0.0), "{m}");
        assert_eq!(sample(&m, &drops), Some(0.0), "{m}");
    }
    let e: ErrorStats = get(mgmt, "/errors/stats");
    assert_eq!(e.drops.events, 0);
    let metric = |name: &str| {
        let (code, m) = http("GET", mgmt, "/metrics", None, None);
        assert_eq!(code, 200);
        sample(&m, name).unwrap_or_else(|| panic!("no {name} in {m}"))
    };
    let sent = metric("sipvane_events_sent_total");
    assert!(sent >= 30.0, "{sent} events sent");
    assert_eq!(metric("sipvane_events_connected"), 1.0);
    assert_eq!(metric("sipvane_events_buffered"), 0.0);
    assert_eq!(metric("sipvane_events_dropped_buffer_full_total"), 0.0);

    // Redis down: calls go on, their events wait in the exporter's buffer.
    redis.kill();
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(5)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(5);
    assert!(
        eventually(SETTLE, || metric("sipvane_events_connected") == 0.0
            && metric("sipvane_events_buffered") >= 15.0),
        "a Redis outage does not show in /metrics"
    );
    assert!(metric("sipvane_events_redis_errors_total") >= 1.0);

    // Back: the buffer drains into Redis, counted as a reconnect.
    redis.restart();
    assert!(
        eventually(SETTLE, || metric("sipvane_events_buffered") == 0.0
            && metric("sipvane_events_connected") == 1.0),
        "the exporter never caught up after Redis came back"
    );
    assert!(metric("sipvane_events_reconnects_total") >= 1.0);
    assert_eq!(metric("sipvane_events_sent_total"), sent + 15.0);
    assert_eq!(metric("sipvane_events_dropped_buffer_full_total"), 0.0);
    uas.stop();
    sipvane.stop();
}
