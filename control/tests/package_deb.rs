//! The Debian package (`make deb`, scripts/deb.sh) end to end:
//!
//! - its files, conffiles and metadata (`dpkg-deb -c` / `-I`), and the packaged
//!   configuration's effective values;
//! - a real installation with `dpkg -i` (twice: install, then the upgrade path):
//!   the `sipvane` system user, `/var/lib/sipvane`, the configuration's
//!   permissions, the unit enabled; `systemd-analyze verify` and `security`;
//! - the daemon in the foreground exactly as the unit's `ExecStart=` runs it
//!   (PID 1 is not systemd here, so `systemctl start` cannot): as the unit's
//!   `User=`, with `NOTIFY_SOCKET` and `WATCHDOG_USEC` as systemd sets them,
//!   against a copy of the packaged configuration moved to loopback test ports,
//!   with a SIPp call routed through it and a reload through `ExecReload=`; it
//!   runs under strace, and every syscall it makes, every socket family and
//!   every memory mapping is checked against the unit's `SystemCallFilter=`,
//!   `RestrictAddressFamilies=` and `MemoryDenyWriteExecute=`;
//! - an upgrade under load: `dpkg -i` of a newer version while that daemon
//!   carries SIPp's 500 calls/s; postinst's `sipvane ctl restart` hands over
//!   to the new binary and no call fails;
//! - `dpkg -r`, then `dpkg --purge`, and what each leaves behind.
//!
//! The package is built before the tests run: `make test` packages the binaries
//! of its own build (`scripts/deb.sh --profile ci --no-build`) and passes the
//! path in `SIPVANE_DEB`; otherwise `make deb`'s
//! `target/debian/sipvane_<version>_<arch>.deb` is used. Without a package
//! the tests fail. The installation test needs root (CI runs as root) and
//! changes the machine: it purges any installed `sipvane` package first and
//! purges its own at the end (also on failure); the `sipvane` system user
//! stays, as Debian packages leave theirs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{
    free_sip_port, free_tcp_port, free_udp_addr, free_udp_port, localhost, output_within,
    repo_root, require_binary, ChildGuard, NotifySocket, Scenario, Uac, Uas, WorkDir,
};

const UNIT: &str = "/lib/systemd/system/sipvane.service";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/sipvane.service";
const CONF: &str = "/etc/sipvane/sipvane.toml";
const LIST: &str = "/etc/sipvane/dispatcher.list";

/// The package under test; fails when there is none.
fn require_deb() -> PathBuf {
    let path = match std::env::var_os("SIPVANE_DEB") {
        Some(p) => PathBuf::from(p),
        None => {
            let arch = run(Command::new("dpkg").arg("--print-architecture"), "dpkg");
            repo_root().join(format!(
                "target/debian/sipvane_{}_{}.deb",
                env!("CARGO_PKG_VERSION"),
                String::from_utf8_lossy(&arch.stdout).trim()
            ))
        }
    };
    assert!(
        path.is_file(),
        "{} not found: run `make deb` first (`make test` builds the package before the tests)",
        path.display()
    );
    path
}

/// Runs `cmd` to completion (at most 2 minutes) and returns its output; panics
/// unless it succeeded.
fn run(cmd: &mut Command, what: &str) -> Output {
    let out = output_within(cmd.stdin(Stdio::null()), Duration::from_secs(120), what);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command, what: &str) -> String {
    String::from_utf8_lossy(&run(cmd, what).stdout).into_owned()
}

/// `dpkg ARGS`, waiting (bounded) while another dpkg or apt holds the lock.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = output_within(
            Command::new("dpkg")
                .args(["--force-confdef", "--force-confold"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null()),
            Duration::from_secs(120),
            "dpkg",
        );
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        return out;
    }
}

fn dpkg_ok(args: &[&str]) {
    let out = dpkg(args);
    assert!(
        out.status.success(),
        "dpkg {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// dpkg's status of the sipvane package ("" when it never was installed).
fn package_status() -> String {
    let out = output_within(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", "sipvane"])
            .stdin(Stdio::null()),
        Duration::from_secs(30),
        "dpkg-query",
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Purges the package when dropped, so a failed test leaves nothing installed.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        if !package_status().is_empty() && !package_status().ends_with("not-installed") {
            let out = dpkg(&["--purge", "sipvane"]);
            if !out.status.success() {
                eprintln!(
                    "cleanup: dpkg --purge sipvane failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// `Key=value` settings of a unit file, every value of a repeated key kept.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            map.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    map
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("the unit must set {key}= once, has {other:?}"),
    }
}

#[test]
fn deb_has_the_files_conffiles_and_safe_defaults() {
    let deb = require_deb();
    let deb_s = deb.to_str().unwrap();

    let info = stdout(Command::new("dpkg-deb").args(["-f", deb_s]), "dpkg-deb -f");
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in control:\n{info}"))
            .to_string()
    };
    assert_eq!(field("Package"), "sipvane");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let depends = field("Depends");
    for dep in ["libc6", "adduser"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }

    let conffiles = stdout(
        Command::new("dpkg-deb").args(["-I", deb_s, "conffiles"]),
        "dpkg-deb -I conffiles",
    );
    assert_eq!(conffiles, format!("{CONF}\n{LIST}\n"));
    for script in ["postinst", "prerm", "postrm"] {
        let text = stdout(
            Command::new("dpkg-deb").args(["-I", deb_s, script]),
            "dpkg-deb -I",
        );
        assert!(text.starts_with("#!/bin/sh\n"), "{script}:\n{text}");
    }

    // path -> (mode, owner)
    let listing = stdout(Command::new("dpkg-deb").args(["-c", deb_s]), "dpkg-deb -c");
    let files: BTreeMap<String, (String, String)> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').to_string();
            (path, (f[0].to_string(), f[1].to_string()))
        })
        .collect();
    for (path, mode) in [
        ("/usr/bin/sipvane", "-rwxr-xr-x"),
        ("/usr/bin/sipvane-bench", "-rwxr-xr-x"),
        (CONF, "-rw-r--r--"),
        (LIST, "-rw-r--r--"),
        (UNIT, "-rw-r--r--"),
        ("/usr/share/doc/sipvane/copyright", "-rw-r--r--"),
        ("/usr/share/doc/sipvane/deployment.md", "-rw-r--r--"),
        ("/usr/share/doc/sipvane/sipvane.example.toml", "-rw-r--r--"),
    ] {
        let (m, _) = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        assert_eq!(m, mode, "{path}");
    }
    for (path, (_, owner)) in &files {
        assert_eq!(owner, "root/root", "{path}");
    }

    // The packaged binaries and configuration, unpacked: the configuration is
    // valid and its effective values are the safe ones.
    let dir = WorkDir::new("deb", "contents");
    let root = dir.file("root");
    run(
        Command::new("dpkg-deb").args(["-x", deb_s]).arg(&root),
        "dpkg-deb -x",
    );
    let bin = root.join("usr/bin/sipvane");
    let version = stdout(Command::new(&bin).arg("--version"), "sipvane --version");
    assert_eq!(
        version.trim(),
        format!("sipvane {}", env!("CARGO_PKG_VERSION"))
    );
    let bench = stdout(
        Command::new(root.join("usr/bin/sipvane-bench")).arg("--help"),
        "sipvane-bench --help",
    );
    assert!(bench.contains("Usage"), "{bench}");
    let conf = root.join(CONF.trim_start_matches('/'));
    let printed = stdout(
        Command::new(&bin)
            .args(["run", "--print-config", "-c"])
            .arg(&conf),
        "sipvane run --print-config",
    );
    let eff: toml::Value = toml::from_str(&printed).expect("print-config is TOML");
    assert_eq!(eff["mgmt"]["listen"].as_str(), Some("127.0.0.1:9060"));
    assert_eq!(eff["mgmt"]["token"].as_str(), Some(""));
    assert_eq!(eff["proxy"]["listen"].as_str(), Some("127.0.0.1:5060"));
    assert_eq!(eff["dispatcher"]["list"].as_str(), Some(LIST));
    assert_eq!(
        eff["dispatcher"]["snapshot_path"].as_str(),
        Some("/var/lib/sipvane/dispatcher.snapshot")
    );
    assert_eq!(
        eff["rtpengine"]["engines"].as_array().map(Vec::len),
        Some(0)
    );
    assert!(
        eff["dispatcher"]
            .get("rules")
            .and_then(toml::Value::as_array)
            .is_none_or(Vec::is_empty),
        "no routing rules by default:\n{printed}"
    );
    assert_eq!(eff["events"]["redis_url"].as_str(), Some(""));
    // Every key the example documents is in the packaged file too.
    let example: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo_root().join("sipvane.example.toml")).unwrap())
            .unwrap();
    let packaged: toml::Table = toml::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    for (section, keys) in &example {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for key in keys.keys().filter(|k| *k != "rules") {
            assert!(
                packaged.get(section).and_then(|s| s.get(key)).is_some(),
                "the packaged sipvane.toml lacks [{section}] {key}"
            );
        }
    }
    // The packaged dispatcher.list holds no destination.
    let list = std::fs::read_to_string(root.join(LIST.trim_start_matches('/'))).unwrap();
    assert!(
        list.lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "{list}"
    );
}

#[test]
fn deb_installs_runs_as_its_unit_says_and_purges() {
    let deb = require_deb();
    // SAFETY: plain getter.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "installing the package needs root (CI runs make test as root)"
    );
    for tool in ["systemd-analyze", "strace", "setpriv", "deb-systemd-helper"] {
        require_binary(tool, "run `make deps`");
    }
    let _purge = PurgeOnDrop;
    // A package left by an interrupted run: start from nothing.
    if !package_status().is_empty() && !package_status().ends_with("not-installed") {
        dpkg_ok(&["--purge", "sipvane"]);
    }

    // Install, then install again (postinst's upgrade path: idempotent).
    let deb_s = deb.to_str().unwrap();
    dpkg_ok(&["-i", deb_s]);
    assert_eq!(package_status(), "install ok installed");
    dpkg_ok(&["-i", deb_s]);
    assert_eq!(package_status(), "install ok installed");

    let passwd = stdout(Command::new("getent").args(["passwd", "sipvane"]), "getent");
    let p: Vec<&str> = passwd.trim().split(':').collect();
    let (uid, gid): (u32, u32) = (p[2].parse().unwrap(), p[3].parse().unwrap());
    assert!(uid < 1000, "a system user: {passwd}");
    assert_eq!(p[5], "/var/lib/sipvane", "{passwd}");
    assert_eq!(p[6], "/usr/sbin/nologin", "{passwd}");
    let group = stdout(Command::new("getent").args(["group", "sipvane"]), "getent");
    assert!(group.contains(&format!(":{gid}:")), "{group}");
    let state = std::fs::metadata("/var/lib/sipvane").expect("/var/lib/sipvane");
    assert!(state.is_dir());
    assert_eq!((state.uid(), state.gid()), (uid, gid));
    assert_eq!(state.permissions().mode() & 0o7777, 0o750);
    let conf = std::fs::metadata(CONF).unwrap();
    assert_eq!((conf.uid(), conf.gid()), (0, gid), "{CONF} is root:sipvane");
    assert_eq!(conf.permissions().mode() & 0o777, 0o640);
    // Enabled by deb-systemd-helper (systemd links it the same way).
    assert_eq!(std::fs::read_link(WANTS).ok(), Some(PathBuf::from(UNIT)));
    if Path::new("/run/systemd/system").exists() {
        // A host run by systemd: postinst started the service.
        run(
            Command::new("systemctl").args(["is-active", "sipvane.service"]),
            "systemctl is-active sipvane",
        );
    } else {
        // PID 1 is not systemd (a container, CI): nothing was started, and
        // postinst did not fail for it.
        let ps = stdout(Command::new("ps").args(["-eo", "args"]), "ps");
        assert!(
            !ps.lines().any(|l| l.starts_with("/usr/bin/sipvane")),
            "{ps}"
        );
    }

    run(
        Command::new("/usr/bin/sipvane").args(["check-config", CONF]),
        "sipvane check-config",
    );

    // The unit: verified, and hardened.
    let verify = run(
        Command::new("systemd-analyze").args(["verify", UNIT]),
        "systemd-analyze verify",
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(!said.contains("sipvane"), "systemd-analyze verify:\n{said}");
    let security = stdout(
        Command::new("systemd-analyze").args(["security", "--offline=true", UNIT]),
        "systemd-analyze security",
    );
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for sipvane.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    assert!(exposure <= 3.0, "exposure {exposure}:\n{security}");

    let unit = unit_settings(&std::fs::read_to_string(UNIT).unwrap());
    assert_eq!(one(&unit, "Type"), "notify");
    assert_eq!(one(&unit, "User"), "sipvane");
    assert_eq!(one(&unit, "StateDirectory"), "sipvane");
    assert_eq!(one(&unit, "Restart"), "on-failure");
    assert!(one(&unit, "WatchdogSec").ends_with('s'));
    assert!(one(&unit, "LimitNOFILE").parse::<u64>().unwrap() >= 65536);
    assert_eq!(one(&unit, "AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one(&unit, "CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("StandardOutput", "journal"),
        ("StandardError", "journal"),
    ] {
        assert_eq!(one(&unit, key), value, "{key}");
    }
    let exec_start: Vec<String> = one(&unit, "ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(exec_start[0], "/usr/bin/sipvane");
    let exec_reload: Vec<&str> = one(&unit, "ExecReload").split_whitespace().collect();
    assert_eq!(exec_reload, ["/bin/kill", "-HUP", "$MAINPID"]);
    let families: BTreeSet<String> = one(&unit, "RestrictAddressFamilies")
        .split_whitespace()
        .map(String::from)
        .collect();
    let filter: Vec<&str> = one(&unit, "SystemCallFilter").split_whitespace().collect();
    assert!(filter.contains(&"@system-service"), "{filter:?}");
    for s in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(filter.contains(&s), "{s} must stay allowed: {filter:?}");
    }
    let allowed = expand_syscall_filter(&filter);
    for s in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.contains(s));
    }

    foreground_run(&exec_start, &exec_reload, &families, &allowed);
    upgrade_under_load(&exec_start, &deb);

    // Remove: the files go, the configuration stays.
    dpkg_ok(&["-r", "sipvane"]);
    assert_eq!(package_status(), "deinstall ok config-files");
    for gone in ["/usr/bin/sipvane", "/usr/bin/sipvane-bench", UNIT] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is still there after dpkg -r"
        );
    }
    assert!(Path::new(CONF).exists(), "dpkg -r keeps the configuration");

    // Purge: nothing of it is left, but the user.
    dpkg_ok(&["--purge", "sipvane"]);
    assert!(package_status().is_empty() || package_status().ends_with("not-installed"));
    for gone in [
        "/etc/sipvane",
        "/var/lib/sipvane",
        WANTS,
        "/etc/systemd/system/sipvane.service",
    ] {
        assert!(
            std::fs::symlink_metadata(gone).is_err(),
            "{gone} is still there after purge"
        );
    }
    let overrides = stdout(
        Command::new("dpkg-statoverride").arg("--list"),
        "dpkg-statoverride",
    );
    assert!(!overrides.contains(CONF), "{overrides}");
}

/// Every syscall name `SystemCallFilter=` allows, groups (`@name`) expanded
/// with the installed systemd's own tables.
fn expand_syscall_filter(filter: &[&str]) -> BTreeSet<String> {
    let tables = stdout(
        Command::new("systemd-analyze").arg("syscall-filter"),
        "systemd-analyze syscall-filter",
    );
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in tables.lines() {
        if let Some(name) = line.strip_prefix('@') {
            current = Some(format!("@{}", name.trim()));
            groups.entry(format!("@{}", name.trim())).or_default();
        } else if let Some(g) = &current {
            let entry = line.trim();
            if !entry.is_empty() && !entry.starts_with('#') {
                groups.get_mut(g).unwrap().push(entry.to_string());
            }
        }
    }
    fn add(name: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        if name.starts_with('@') {
            for entry in groups
                .get(name)
                .unwrap_or_else(|| panic!("no group {name}"))
            {
                add(entry, groups, out);
            }
        } else {
            out.insert(name.to_string());
        }
    }
    let mut out = BTreeSet::new();
    for name in filter {
        add(name, &groups, &mut out);
    }
    out
}

/// A scratch directory every user can reach (the daemon runs as `sipvane`,
/// and the checkout's own `target/tmp` may sit under a private home):
/// `/tmp/sipvane-deb-PID-NAME`, removed on drop unless the test failed.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!("sipvane-deb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        ScratchDir(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn read(&self, name: &str) -> String {
        std::fs::read(self.0.join(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The daemon as the unit starts it, in the foreground, under strace.
fn foreground_run(
    exec_start: &[String],
    exec_reload: &[&str],
    families: &BTreeSet<String>,
    allowed: &BTreeSet<String>,
) {
    let dir = ScratchDir::new("foreground");
    let mut uas = Uas::start(Scenario::Uas, free_udp_addr());
    let list = dir.file("dispatcher.list");
    std::fs::write(&list, format!("1 sip:{}\n", uas.addr())).unwrap();

    // The packaged configuration, moved to loopback test ports.
    let (sip, mgmt) = (localhost(free_sip_port()), localhost(free_tcp_port()));
    let mut conf = std::fs::read_to_string(CONF).unwrap();
    for (from, to) in [
        ("listen = \"127.0.0.1:5060\"", format!("listen = \"{sip}\"")),
        (
            "listen = \"127.0.0.1:9060\"",
            format!("listen = \"{mgmt}\""),
        ),
        ("workers = \"auto\"", "workers = 1".to_string()),
        (
            "private_port_base = 0",
            format!("private_port_base = {}", free_udp_port()),
        ),
        (
            &format!("list = \"{LIST}\""),
            format!("list = \"{}\"", list.display()),
        ),
    ] {
        assert_eq!(conf.matches(from).count(), 1, "{from} in {CONF}");
        conf = conf.replace(from, &to);
    }
    let cfg = dir.file("sipvane.toml");
    std::fs::write(&cfg, conf).unwrap();
    for f in [&cfg, &list] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    // ExecStart=, with the test configuration instead of /etc/sipvane's.
    let mut argv = exec_start.to_vec();
    let c = argv
        .iter()
        .position(|a| a == "-c")
        .expect("ExecStart has -c");
    assert_eq!(argv[c + 1], CONF);
    argv[c + 1] = cfg.display().to_string();

    let mut notify = NotifySocket::bind(dir.path());
    let trace = dir.file("strace.txt");
    let log = std::fs::File::create(dir.file("journal.log")).unwrap();
    // As systemd would: the unit's user, a clean environment, the notify
    // socket, a (short) watchdog; setpriv's parent-death signal keeps the
    // daemon from outliving the test.
    let mut strace = ChildGuard::spawn(
        Command::new("strace")
            .args(["-f", "-qq", "-e", "signal=none", "-o"])
            .arg(&trace)
            .args([
                "--",
                "setpriv",
                "--pdeathsig",
                "KILL",
                "--reuid",
                "sipvane",
                "--regid",
                "sipvane",
                "--clear-groups",
                "--",
            ])
            .args(&argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("USER", "sipvane")
            .env("LOGNAME", "sipvane")
            .env("HOME", "/var/lib/sipvane")
            .env("NOTIFY_SOCKET", notify.path())
            .env("WATCHDOG_USEC", "1000000")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .expect("spawn strace");
    let journal = || dir.read("journal.log");

    let mut up_at_ready = None;
    let ready = notify.wait_for("READY=1", 1, Duration::from_secs(30), |m| {
        if m.lines().any(|l| l == "READY=1") {
            up_at_ready = Some(TcpStream::connect_timeout(&mgmt, Duration::from_secs(1)).is_ok());
        }
    });
    assert!(ready, "no READY=1; log:\n{}", journal());
    assert_eq!(up_at_ready, Some(true), "management API up at READY=1");

    // The daemon's pid ($MAINPID): strace's child, running as sipvane.
    let tracer = strace.id().unwrap();
    let pid: u32 = std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("strace has a child")
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = stdout(Command::new("id").args(["-u", "sipvane"]), "id");
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![uid.trim(); 4],
        "{uids}"
    );

    assert_eq!(http_get(mgmt, "/health").0, 200);

    // A few calls through it.
    let calls = Uac::new(Scenario::Uac, sip)
        .calls(10)
        .rate(20)
        .timeout(Duration::from_secs(30))
        .run();
    calls.assert_all_succeeded(10);
    uas.wait_for_calls(10, Duration::from_secs(5));

    // ExecReload=, $MAINPID substituted: a second destination appears.
    let uas2 = free_udp_addr();
    std::fs::write(&list, format!("1 sip:{}\n1 sip:{uas2}\n", uas.addr())).unwrap();
    let reload: Vec<String> = exec_reload
        .iter()
        .map(|a| a.replace("$MAINPID", &pid.to_string()))
        .collect();
    run(Command::new(&reload[0]).args(&reload[1..]), "ExecReload");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !journal().contains("dispatcher reloaded") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(journal().contains("dispatcher reloaded"), "{}", journal());
    let (code, body) = http_get(mgmt, "/dispatcher");
    assert_eq!(code, 200);
    assert!(body.contains(&uas2.to_string()), "{body}");

    // The watchdog: WATCHDOG_USEC=1 s, so a ping every 500 ms.
    assert!(
        notify.wait_for("WATCHDOG=1", 2, Duration::from_secs(5), |_| {}),
        "no WATCHDOG=1: {:?}",
        notify.messages()
    );

    // systemctl stop: SIGTERM to the main process.
    // SAFETY: plain syscall on the daemon's pid, which is still running.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    assert!(
        notify.wait_for("STOPPING=1", 1, Duration::from_secs(15), |_| {}),
        "no STOPPING=1; log:\n{}",
        journal()
    );
    let exit = strace.wait_timeout(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the daemon did not exit cleanly ({exit:?}); log:\n{}",
        journal()
    );
    let j = journal();
    assert!(j.contains("initial_invites=10"), "{j}");
    assert!(!j.contains('\x1b'), "no colour codes in the journal:\n{j}");
    let fin = uas.stop();
    assert_eq!(fin.invites_received(), 10, "{fin:?}");

    check_trace(
        &std::fs::read_to_string(&trace).unwrap(),
        &argv[0],
        families,
        allowed,
    );
}

/// A process the test did not start itself (the one the upgrade started):
/// SIGTERMed by `stop`, SIGKILLed on drop so a failed test leaves nothing.
struct Adopted(u32);

impl Adopted {
    /// SIGTERM, then its exit (as `systemctl stop`); false if it outlives 20 s.
    fn stop(&self) -> bool {
        // SAFETY: plain kill(2) on a pid this test was told about.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{}", self.0)).exists() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
    }
}

/// The installed package with a higher version: the same files, repacked.
fn newer_package(deb: &Path, dir: &ScratchDir) -> (PathBuf, String) {
    let tree = dir.file("newer");
    run(
        Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree),
        "dpkg-deb -R",
    );
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let old = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("Version in DEBIAN/control")
        .to_string();
    let new = format!("{old}+upgrade1");
    std::fs::write(
        &control,
        text.replace(&format!("Version: {old}\n"), &format!("Version: {new}\n")),
    )
    .unwrap();
    run(
        Command::new("dpkg").args(["--compare-versions", &new, "gt", &old]),
        "dpkg --compare-versions",
    );
    let out = dir.file("sipvane-newer.deb");
    run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&out),
        "dpkg-deb -b",
    );
    (out, new)
}

/// `dpkg -i` of a newer package while the daemon (as the unit runs it, with
/// the packaged configuration on test SIP ports) carries 500 calls/s:
/// postinst's `sipvane ctl restart` makes the running process start the new
/// `/usr/bin/sipvane`, which takes over the sockets and says `MAINPID=`; the
/// old process drains and exits 0, and no call fails.
fn upgrade_under_load(exec_start: &[String], deb: &Path) {
    let dir = ScratchDir::new("upgrade");
    let (newer, version) = newer_package(deb, &dir);
    let mut uas = Uas::builder(Scenario::UasSlow)
        .answer_delay(Duration::from_millis(600))
        .arg("-buff_size")
        .arg("4194304")
        .start();
    let list = dir.file("dispatcher.list");
    std::fs::write(&list, format!("1 sip:{}\n", uas.addr())).unwrap();

    // The packaged configuration with the SIP side on test ports; the
    // management API stays on its default, where postinst's ctl looks.
    let mgmt = localhost(9060);
    assert!(
        TcpStream::connect_timeout(&mgmt, Duration::from_secs(1)).is_err(),
        "something already listens on {mgmt}, the packaged [mgmt] listen"
    );
    let sip = localhost(free_sip_port());
    let mut conf = std::fs::read_to_string(CONF).unwrap();
    for (from, to) in [
        ("listen = \"127.0.0.1:5060\"", format!("listen = \"{sip}\"")),
        (
            "private_port_base = 0",
            format!("private_port_base = {}", free_udp_port()),
        ),
        (
            &format!("list = \"{LIST}\""),
            format!("list = \"{}\"", list.display()),
        ),
    ] {
        assert_eq!(conf.matches(from).count(), 1, "{from} in {CONF}");
        conf = conf.replace(from, &to);
    }
    assert!(conf.contains("handover_socket = \"/run/sipvane/handover.sock\""));
    let cfg = dir.file("sipvane.toml");
    std::fs::write(&cfg, conf).unwrap();
    for f in [&cfg, &list] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // The unit's RuntimeDirectory=sipvane, as systemd creates it.
    let runtime = Path::new("/run/sipvane");
    let _ = std::fs::remove_dir_all(runtime);
    run(
        Command::new("install")
            .args(["-d", "-o", "sipvane", "-g", "sipvane", "-m", "0750"])
            .arg(runtime),
        "install -d /run/sipvane",
    );
    struct RemoveRuntime;
    impl Drop for RemoveRuntime {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all("/run/sipvane");
        }
    }
    let _runtime = RemoveRuntime;

    let mut argv = exec_start.to_vec();
    let c = argv
        .iter()
        .position(|a| a == "-c")
        .expect("ExecStart has -c");
    argv[c + 1] = cfg.display().to_string();
    let mut notify = NotifySocket::bind(dir.path());
    let log = std::fs::File::create(dir.file("journal.log")).unwrap();
    let mut old = ChildGuard::spawn(
        Command::new("setpriv")
            .args([
                "--reuid",
                "sipvane",
                "--regid",
                "sipvane",
                "--clear-groups",
                "--",
            ])
            .args(&argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("HOME", "/var/lib/sipvane")
            .env("NOTIFY_SOCKET", notify.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .expect("spawn the daemon");
    let journal = || dir.read("journal.log");
    assert!(
        notify.wait_for("READY=1", 1, Duration::from_secs(30), |_| {}),
        "no READY=1; log:\n{}",
        journal()
    );
    let old_pid = old.id().unwrap();

    const CALLS: u32 = 6000;
    let mut uac = Uac::new(Scenario::Uac, sip)
        .calls(CALLS)
        .rate(500)
        .hold(Duration::from_secs(2))
        .arg("-buff_size")
        .arg("4194304")
        .timeout(Duration::from_secs(120))
        .spawn();
    let seen = uas.wait_until(Duration::from_secs(30), |s| s.invites_received() >= 1000);
    assert!(seen.invites_received() >= 1000, "{seen:?}");

    dpkg_ok(&["-i", newer.to_str().unwrap()]);
    let installed = stdout(
        Command::new("dpkg-query").args(["-W", "-f", "${Version}", "sipvane"]),
        "dpkg-query",
    );
    assert_eq!(installed.trim(), version);
    assert!(
        !uac.is_finished(),
        "the load ended before the upgrade: nothing tested it"
    );

    // postinst's ctl restart: a new process, which says it is the main one.
    assert!(
        notify.wait_for("READY=1", 2, Duration::from_secs(30), |_| {}),
        "no second READY=1 ({:?}); log:\n{}",
        notify.messages(),
        journal()
    );
    let new_pid: u32 = notify
        .messages()
        .iter()
        .flat_map(|m| m.lines())
        .find_map(|l| l.strip_prefix("MAINPID="))
        .unwrap_or_else(|| panic!("no MAINPID=: {:?}", notify.messages()))
        .parse()
        .unwrap();
    let new = Adopted(new_pid);
    assert_ne!(new_pid, old_pid);
    // It runs the upgraded file, as the unit's user; the old one the
    // replaced (deleted) file.
    assert_eq!(
        std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap(),
        PathBuf::from("/usr/bin/sipvane")
    );
    let old_exe = std::fs::read_link(format!("/proc/{old_pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    assert!(old_exe.ends_with("(deleted)"), "{old_exe}");
    let status = std::fs::read_to_string(format!("/proc/{new_pid}/status")).unwrap();
    let uid = stdout(Command::new("id").args(["-u", "sipvane"]), "id");
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![uid.trim(); 4],
        "{uids}"
    );

    let exit = old.wait_timeout(Duration::from_secs(90));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the old process did not exit 0 ({exit:?}); log:\n{}",
        journal()
    );
    let calls = uac.wait();
    calls.assert_all_succeeded(u64::from(CALLS));
    assert_eq!(
        http_get(mgmt, "/health").0,
        200,
        "the new process serves the API"
    );
    assert!(new.stop(), "the new process did not stop on SIGTERM");
    let j = journal();
    assert!(j.contains("took over the SIP sockets"), "{j}");
    let counters: Vec<&str> = j
        .lines()
        .filter(|l| l.starts_with("sipvane: counters "))
        .collect();
    assert_eq!(counters.len(), 2, "{j}");
    uas.stop();
}

/// What the daemon did, from its execve on, against the unit's sandbox.
fn check_trace(trace: &str, exe: &str, families: &BTreeSet<String>, allowed: &BTreeSet<String>) {
    let (used, problems) = trace_problems(trace, exe, families, allowed);
    assert!(
        used.contains("io_uring_setup") && used.contains("io_uring_enter"),
        "the io_uring driver ran under the filter: {used:?}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!(
        "the daemon made {} distinct syscalls, all allowed by the unit: {used:?}",
        used.len()
    );
}

/// The syscalls an strace -f log shows from `exe`'s execve on, and what of
/// it the unit's `SystemCallFilter=` (`allowed`), `RestrictAddressFamilies=`
/// (`families`) and `MemoryDenyWriteExecute=` would refuse.
fn trace_problems(
    trace: &str,
    exe: &str,
    families: &BTreeSet<String>,
    allowed: &BTreeSet<String>,
) -> (BTreeSet<String>, Vec<String>) {
    let start = trace
        .find(&format!("execve(\"{exe}\""))
        .unwrap_or_else(|| panic!("no execve of {exe} in the trace"));
    // From the start of that line.
    let start = trace[..start].rfind('\n').map_or(0, |i| i + 1);
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for line in trace[start..].lines() {
        // "PID name(args) = ret", or "PID name(args <unfinished ...>"
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        let Some(open) = rest.find('(') else { continue };
        let name = &rest[..open];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        used.insert(name.to_string());
        let args = &rest[open + 1..];
        if name == "socket" || name == "socketpair" {
            let family = args.split(',').next().unwrap_or("").trim();
            if !families.contains(family) {
                problems.push(format!("RestrictAddressFamilies= refuses: {line}"));
            }
        }
        let exec = args.contains("PROT_EXEC");
        if (name == "mmap" && exec && args.contains("PROT_WRITE"))
            || ((name == "mprotect" || name == "pkey_mprotect") && exec)
        {
            problems.push(format!("MemoryDenyWriteExecute= refuses: {line}"));
        }
    }
    for name in used.difference(allowed) {
        problems.push(format!("SystemCallFilter= refuses the syscall {name}"));
    }
    (used, problems)
}

#[test]
fn the_trace_check_finds_what_the_unit_would_refuse() {
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };
    let trace = "\
100 execve(\"/usr/bin/setpriv\", [\"setpriv\"], 0x7ffc /* 9 vars */) = 0
100 capset({_LINUX_CAPABILITY_VERSION_3, 0}, {}) = 0
100 execve(\"/usr/bin/sipvane\", [\"/usr/bin/sipvane\", \"run\"], 0x55 /* 9 vars */) = 0
100 mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f00
100 mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f10
100 socket(AF_INET, SOCK_DGRAM|SOCK_CLOEXEC, IPPROTO_IP) = 3
100 socket(AF_PACKET, SOCK_RAW, 768) = 4
101 io_uring_setup(256, {flags=0, sq_thread_cpu=0}) = 5
101 futex(0x7f20, FUTEX_WAIT_PRIVATE, 0, NULL <unfinished ...>
100 mprotect(0x7f00, 4096, PROT_READ|PROT_EXEC) = 0
100 kexec_load(0, 0, NULL, 0) = -1 EPERM (Operation not permitted)
101 <... futex resumed>) = 0
101 +++ exited with 0 +++
";
    let (used, problems) = trace_problems(
        trace,
        "/usr/bin/sipvane",
        &set(&["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"]),
        &set(&[
            "execve",
            "mmap",
            "mprotect",
            "socket",
            "futex",
            "io_uring_setup",
        ]),
    );
    // setpriv's capset came before sipvane's execve: not sipvane's.
    assert_eq!(
        used,
        set(&[
            "execve",
            "mmap",
            "socket",
            "io_uring_setup",
            "futex",
            "mprotect",
            "kexec_load"
        ])
    );
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems[0].contains("MemoryDenyWriteExecute")
            && problems[0].contains("PROT_WRITE|PROT_EXEC")
    );
    assert!(problems[1].contains("RestrictAddressFamilies") && problems[1].contains("AF_PACKET"));
    assert!(problems[2].contains("MemoryDenyWriteExecute") && problems[2].contains("mprotect"));
    assert_eq!(
        problems[3],
        "SystemCallFilter= refuses the syscall kexec_load"
    );
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_string())
}
