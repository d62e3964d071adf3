//! Restart and upgrade without dropped calls, end to end: SIPp places calls
//! through sipvane at a steady rate while a new process (the same binary,
//! then a copy of it standing in for an upgraded one) takes over the sockets
//! of the running one. Calls ringing at the switch (their 200 reaches the new
//! process and is relayed to the old one, which holds the INVITE
//! transaction) and calls already up (their BYE routes by Record-Route) all
//! complete; each old process exits 0 by itself once its transactions end.

#[macro_use]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use support::{sip_options_ping, NotifySocket, Scenario, Sipvane, Uac, Uas};

/// SIPp at 500 calls/s, a UAS and two sipvane processes fill the 2-core
/// machine this runs on: the cases run one after another, not side by side.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOAD: Mutex<()> = Mutex::new(());
    // A failed case poisons the lock; the next one still runs.
    LOAD.lock().unwrap_or_else(|e| e.into_inner())
}

/// The load of every case: 500 calls/s (SIPp retransmits over UDP as usual),
/// each call ringing 0.6 s and held 2 s: ~1300 calls in flight at a switch.
const RATE: u32 = 500;

/// SIPp's socket buffers (`-buff_size`, default 64 KB): a SIPp that the
/// shared machine stalls for a moment would drop what arrives meanwhile, as
/// no real peer sized for 500 calls/s does; sipvane's own are 4 MB.
const SIPP_BUFFER: &str = "4194304";

fn calls_in_flight_survive_a_restart_and_an_upgrade(io: &str) {
    let _load = one_at_a_time();
    // Answers 0.6 s after the 180: at any moment ~300 INVITEs are ringing.
    let mut uas = Uas::builder(Scenario::UasSlow)
        .answer_delay(Duration::from_millis(600))
        .arg("-buff_size")
        .arg(SIPP_BUFFER)
        .start();
    let mut sv = Sipvane::builder(&format!("restart-handover-{io}"))
        .io(io)
        .workers(2)
        .destination(format!("1 sip:{}", uas.addr()))
        .start();
    // 16 s of load: the second switch waits for the first old process to
    // finish its transactions (~6 s), and calls still arrive at it.
    const CALLS: u64 = 16 * RATE as u64;
    let mut uac = Uac::new(Scenario::Uac, sv.addr())
        .calls(CALLS as u32)
        .rate(RATE)
        .arg("-buff_size")
        .arg(SIPP_BUFFER)
        .hold(Duration::from_secs(2))
        .timeout(Duration::from_secs(120))
        .spawn();
    let seen = uas.wait_until(Duration::from_secs(30), |s| s.invites_received() >= 1500);
    assert!(seen.invites_received() >= 1500, "{seen:?}");
    let first = sv.pid();

    // A restart onto the same binary.
    let old = sv.handover_restart(None);
    assert_ne!(old.pid(), sv.pid());
    assert_eq!(old.pid(), first);
    let old_counters = old.wait_exit(Duration::from_secs(60));
    assert!(
        old_counters.get("initial_invites") >= 1500,
        "{old_counters:?}"
    );
    assert!(
        old_counters.get("initial_invites") < CALLS,
        "{old_counters:?}"
    );

    // An upgrade: a new binary on disk (a copy) takes over from the first
    // successor, which hands over in turn.
    let upgraded = sv.dir().join("sipvane-upgraded");
    std::fs::copy(env!("CARGO_BIN_EXE_sipvane"), &upgraded).expect("copy the binary");
    let second = sv.handover_restart(Some(&upgraded));
    assert!(
        !uac.is_finished(),
        "the load ended before the upgrade: nothing tested it"
    );
    let second_counters = second.wait_exit(Duration::from_secs(60));
    // The first successor relayed the old process's responses and requests.
    assert!(
        second_counters.get("relayed_to_predecessor") > 0,
        "{second_counters:?}"
    );

    let run = uac.wait();
    run.assert_all_succeeded(CALLS);
    assert_eq!(
        sip_options_ping(sv.addr(), Duration::from_secs(2)),
        Some(200),
        "the upgraded process serves"
    );
    let last = sv.stop();
    assert!(last.get("relayed_to_predecessor") > 0, "{last:?}");
    assert_eq!(last.get("forged_responses"), 0, "{last:?}");
    uas.stop();
}

/// SIGTERMs a process the test did not start itself (the one `ctl restart`
/// started), so a failing test leaves nothing behind; returns its log tail.
struct Adopted(u32);

impl Adopted {
    fn stop(&self) {
        // SAFETY: plain kill(2) on a pid this test was handed.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", self.0)).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {} did not stop",
                self.0
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Replaces `path` with a copy of the built binary the way dpkg installs a
/// new version: written beside it, then renamed over it.
fn install_over(path: &Path) {
    let tmp = path.with_extension("dpkg-new");
    std::fs::copy(env!("CARGO_BIN_EXE_sipvane"), &tmp).expect("copy the binary");
    std::fs::rename(&tmp, path).expect("rename over the old binary");
}

/// `sipvane ctl restart` after a package-style upgrade: the running process
/// starts the binary now at its path, which takes over while calls go on.
fn ctl_restart_runs_the_upgraded_binary_without_failing_a_call(io: &str) {
    let _load = one_at_a_time();
    let mut uas = Uas::builder(Scenario::UasSlow)
        .answer_delay(Duration::from_millis(600))
        .arg("-buff_size")
        .arg(SIPP_BUFFER)
        .start();
    let bin_dir = tempdir(&format!("restart-ctl-bin-{io}"));
    let installed = bin_dir.join("sipvane");
    install_over(&installed);
    // As under systemd (Type=notify, NotifyAccess=all).
    let mut notify = NotifySocket::bind(&bin_dir);
    let mut sv = Sipvane::builder(&format!("restart-ctl-{io}"))
        .io(io)
        .workers(2)
        .binary(&installed)
        .env("NOTIFY_SOCKET", &notify.path().display().to_string())
        .destination(format!("1 sip:{}", uas.addr()))
        .start();
    const CALLS: u64 = 8 * RATE as u64;
    let uac = Uac::new(Scenario::Uac, sv.addr())
        .calls(CALLS as u32)
        .rate(RATE)
        .arg("-buff_size")
        .arg(SIPP_BUFFER)
        .hold(Duration::from_secs(2))
        .timeout(Duration::from_secs(120))
        .spawn();
    let seen = uas.wait_until(Duration::from_secs(30), |s| s.invites_received() >= 1500);
    assert!(seen.invites_received() >= 1500, "{seen:?}");
    let old_pid = sv.pid();
    install_over(&installed);

    let out = Command::new(env!("CARGO_BIN_EXE_sipvane"))
        .args([
            "ctl",
            "--json",
            "--mgmt",
            &sv.mgmt_addr().to_string(),
            "restart",
        ])
        .output()
        .expect("run sipvane ctl");
    assert!(
        out.status.success(),
        "ctl restart failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sv.log()
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
    assert_eq!(reply["old_pid"].as_u64(), Some(u64::from(old_pid)));
    let new_pid = reply["new_pid"].as_u64().expect("new_pid") as u32;
    let new = Adopted(new_pid);
    assert_ne!(new_pid, old_pid);
    // The new process runs the binary now installed, the old one the
    // replaced (deleted) file.
    let exe = std::fs::read_link(format!("/proc/{new_pid}/exe")).expect("the new process runs");
    assert_eq!(exe, installed);

    // The new process tells systemd it is the service's main process now.
    let main_pid = format!("MAINPID={new_pid}");
    assert!(
        notify.wait_for(&main_pid, 1, Duration::from_secs(10), |_| {}),
        "no {main_pid}: {:?}",
        notify.messages()
    );
    let status = sv.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process did not exit 0 ({status:?}); log:\n{}",
        sv.log()
    );
    let run = uac.wait();
    run.assert_all_succeeded(CALLS);
    assert_eq!(
        sip_options_ping(sv.addr(), Duration::from_secs(2)),
        Some(200)
    );
    // Only the first process's and the new one's READY=1; the old process
    // never said STOPPING=1 (the service did not stop).
    assert!(
        !notify.wait_for("STOPPING=1", 1, Duration::from_millis(500), |_| {}),
        "{:?}",
        notify.messages()
    );
    assert_eq!(notify.count("READY=1"), 2, "{:?}", notify.messages());
    new.stop();
    // Both processes wrote to the same log: the old one's counters, then the
    // new one's.
    let log = sv.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("sipvane: counters "))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        !lines[1].contains(" relayed_to_predecessor=0 "),
        "{}",
        lines[1]
    );
    uas.stop();
}

/// A scratch directory under the target dir.
fn tempdir(name: &str) -> std::path::PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

on_both_drivers!(
    calls_in_flight_survive_a_restart_and_an_upgrade,
    ctl_restart_runs_the_upgraded_binary_without_failing_a_call,
);
