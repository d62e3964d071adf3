//! `sipvane run` under a `Type=notify` unit, simulated: NOTIFY_SOCKET points
//! at a Unix datagram socket the test binds (what systemd does), and the
//! test checks READY=1 (only once SIP and the management API answer),
//! WATCHDOG=1 at half of WATCHDOG_USEC, and STOPPING=1 on SIGTERM.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    free_sip_port, free_tcp_port, free_udp_port, localhost, sip_options_ping, ChildGuard,
    NotifySocket, WorkDir,
};

struct Run {
    child: ChildGuard,
    dir: WorkDir,
    sip: SocketAddr,
    mgmt: SocketAddr,
}

impl Run {
    fn log(&self) -> String {
        self.dir.read("sipvane.log")
    }
}

/// Starts `sipvane run` on loopback with `env` added.
fn start(name: &str, env: &[(&str, String)]) -> Run {
    let dir = WorkDir::new("systemd", name);
    let (sip, mgmt) = (localhost(free_sip_port()), localhost(free_tcp_port()));
    let list = dir.file("dispatcher.list");
    std::fs::write(&list, "# no destinations\n").unwrap();
    let cfg = dir.file("sipvane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"{sip}\"\nworkers = 1\nprivate_port_base = {}\n\
             [dispatcher]\nlist = \"{}\"\nping_interval_s = 0\n[mgmt]\nlisten = \"{mgmt}\"\n",
            free_udp_port(),
            list.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.file("sipvane.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipvane"));
    cmd.args(["run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = ChildGuard::spawn(&mut cmd).expect("spawn sipvane");
    Run {
        child,
        dir,
        sip,
        mgmt,
    }
}

/// Waits for READY=1 and checks, the moment it arrives, that SIP and the
/// management API already answer.
fn expect_ready(run: &mut Run, notify: &mut NotifySocket) {
    let (sip, mgmt) = (run.sip, run.mgmt);
    let mut up_at_ready = None;
    let ready = notify.wait_for("READY=1", 1, Duration::from_secs(15), |m| {
        if m.lines().any(|l| l == "READY=1") {
            up_at_ready = Some((
                TcpStream::connect_timeout(&mgmt, Duration::from_secs(1)).is_ok(),
                sip_options_ping(sip, Duration::from_secs(1)),
            ));
        }
    });
    assert!(
        ready,
        "no READY=1 (got {:?}); log:\n{}",
        notify.messages(),
        run.log()
    );
    assert_eq!(
        up_at_ready,
        Some((true, Some(200))),
        "at READY=1 the management API must accept connections and SIP must answer OPTIONS"
    );
    let msg = notify
        .messages()
        .iter()
        .find(|m| m.contains("READY=1"))
        .unwrap();
    assert!(
        msg.lines()
            .any(|l| l.starts_with("STATUS=") && l.contains(&sip.to_string())),
        "READY=1 comes with a STATUS= line naming the SIP address: {msg:?}"
    );
    assert_eq!(notify.count("READY=1"), 1);
}

/// SIGTERM: STOPPING=1 arrives and sipvane exits 0.
fn expect_stopping(run: &mut Run, notify: &mut NotifySocket) {
    run.child.signal(libc::SIGTERM);
    assert!(
        notify.wait_for("STOPPING=1", 1, Duration::from_secs(10), |_| {}),
        "no STOPPING=1 after SIGTERM (got {:?}); log:\n{}",
        notify.messages(),
        run.log()
    );
    let status = run.child.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "sipvane did not exit cleanly ({status:?}); log:\n{}",
        run.log()
    );
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = WorkDir::new("systemd", "notify-sock");
    let mut notify = NotifySocket::bind(dir.path());
    // WatchdogSec=400ms: a ping every 200 ms.
    let mut run = start(
        "watchdog",
        &[
            ("NOTIFY_SOCKET", notify.path().display().to_string()),
            ("WATCHDOG_USEC", "400000".into()),
        ],
    );
    expect_ready(&mut run, &mut notify);

    assert!(
        notify.wait_for("WATCHDOG=1", 5, Duration::from_secs(5), |_| {}),
        "fewer than 5 WATCHDOG=1 in 5 s (got {:?}); log:\n{}",
        notify.messages(),
        run.log()
    );
    assert!(run.log().contains("systemd watchdog on"), "{}", run.log());

    expect_stopping(&mut run, &mut notify);
}

#[test]
fn no_watchdog_pings_without_watchdog_usec() {
    let dir = WorkDir::new("systemd", "notify-sock");
    let mut notify = NotifySocket::bind(dir.path());
    let mut run = start(
        "no-watchdog",
        &[("NOTIFY_SOCKET", notify.path().display().to_string())],
    );
    expect_ready(&mut run, &mut notify);
    assert!(!notify.wait_for("WATCHDOG=1", 1, Duration::from_secs(1), |_| {}));
    expect_stopping(&mut run, &mut notify);
    assert_eq!(notify.count("WATCHDOG=1"), 0, "{:?}", notify.messages());
}
