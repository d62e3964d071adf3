//! Reading a running sipvane's stream side from outside: its file descriptors,
//! its TCP connections in `/status`, and summed metric families.

use std::time::{Duration, Instant};

use super::sipvane::{api_get, Sipvane};

/// The sum over every label set of a metric (`name{...} value` lines), or of
/// those whose labels contain `label` (e.g. `reason="slowloris"`) when given.
pub fn metric_sum(text: &str, name: &str, label: Option<&str>) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| label.is_none_or(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// File descriptors process `pid` holds open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Waits until process `pid` holds no more file descriptors than `want` again:
/// connections close asynchronously, so one reading proves nothing; a leak keeps
/// the count above `want` until the deadline. (Not "equal": the count taken
/// before may include a transient descriptor, such as the harness's API
/// connection still closing.)
pub fn wait_for_fds(pid: u32, want: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = open_fds(pid);
        if n <= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} file descriptors open, {want} before"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// TCP connections of all workers, from `GET /status`.
pub fn tcp_connections(sipvane: &Sipvane) -> u64 {
    let body = api_get(sipvane, "/status");
    let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    v["worker_detail"]
        .as_array()
        .expect("worker_detail")
        .iter()
        .map(|w| w["tcp_connections"].as_u64().expect("tcp_connections"))
        .sum()
}
