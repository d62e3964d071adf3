//! CPU time and memory of a process tree, from /proc.
//!
//! CPU is utime + stime of every process of the tree (each process's
//! figure already sums its threads), so a multi-process proxy (Kamailio's
//! main, UDP receivers, timers) and a multi-threaded one (sipvane's workers
//! and control thread) are measured the same way.

use std::fs;

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse().ok())) {
                parents.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// Fields of /proc/PID/stat after the command name: index 0 is the state
/// (field 3 of proc(5)), so utime (field 14) is index 11.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user, system) used so far by the tree rooted at `pid`.
pub fn cpu_seconds(pid: u32) -> (f64, f64) {
    let (mut user, mut sys) = (0u64, 0u64);
    for f in tree(pid).into_iter().filter_map(stat_fields) {
        let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        user += n(11);
        sys += n(12);
    }
    let t = clock_ticks();
    (user as f64 / t, sys as f64 / t)
}

/// Memory of the tree in KiB: the sum of proportional set sizes (shared
/// pages split between the processes sharing them, so Kamailio's shared
/// memory is not counted once per process), or of RSS where PSS is not
/// readable.
pub fn memory_kib(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .map(|p| {
            field_kib(&format!("/proc/{p}/smaps_rollup"), "Pss:")
                .or_else(|| field_kib(&format!("/proc/{p}/status"), "VmRSS:"))
                .unwrap_or(0)
        })
        .sum()
}

fn field_kib(path: &str, key: &str) -> Option<u64> {
    let s = fs::read_to_string(path).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_and_memory() {
        let me = std::process::id();
        // Burn a little CPU so the counter moves past zero ticks.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let (user, sys) = cpu_seconds(me);
        assert!(user + sys > 0.0);
        assert!(memory_kib(me) > 0);
        assert_eq!(tree(me)[0], me);
    }
}
