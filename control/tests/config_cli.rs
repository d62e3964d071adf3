//! The `sipvane` binary: check-config, run --print-config, flag overrides, --version.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use control::config::{AlgorithmSpec, Config, IoMode, Workers};

fn sipvane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipvane"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sipvane")
}

/// Writes `text` to a file unique to this test under the target's temp dir.
fn write(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("config_cli-{name}"));
    std::fs::write(&path, text).unwrap();
    path
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_ok_exits_0() {
    let path = write(
        "ok.toml",
        "[rtpengine]\nengines = [\"udp:127.0.0.1:22222\"]\n",
    );
    let p = path.to_str().unwrap();
    let o = sipvane(&["check-config", p]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{p}: ok\n"));
    assert_eq!(stderr(&o), "");
}

#[test]
fn check_config_problems_exit_1_one_line_each() {
    let path = write(
        "bad.toml",
        "[proxy]\nlistne = \"1.2.3.4:5060\"\nworkers = 0\n\n[dispatcher]\nalgorithm = \"fastest\"\n",
    );
    let p = path.to_str().unwrap();
    let o = sipvane(&["check-config", p]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].starts_with(&format!("{p}:2: unknown key \"listne\" in [proxy]")));
    assert_eq!(
        lines[1],
        format!("{p}:3: workers must be \"auto\" or a number ≥ 1 (got 0)")
    );
    assert!(lines[2].starts_with(&format!("{p}:6: algorithm \"fastest\" is not supported")));
}

#[test]
fn check_config_missing_file_exits_1() {
    let o = sipvane(&["check-config", "/nonexistent/sipvane.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("/nonexistent/sipvane.toml: cannot read configuration file:"));
}

#[test]
fn check_config_reports_an_unreadable_dispatcher_list() {
    let path = write(
        "nolist.toml",
        "[dispatcher]\nlist = \"/nonexistent/dispatcher.list\"\n",
    );
    let o = sipvane(&["check-config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("/nonexistent/dispatcher.list: cannot read dispatcher list: "),
        "{}",
        stderr(&o)
    );

    let list = write("dispatcher.list", "1 sip:127.0.0.1:5080\n");
    let path = write(
        "withlist.toml",
        &format!("[dispatcher]\nsource = \"file:{}\"\n", list.display()),
    );
    let o = sipvane(&["check-config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn print_config_without_a_file_is_the_defaults() {
    let o = sipvane(&["run", "--print-config"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let cfg = Config::from_toml_str(&stdout(&o), "stdout").unwrap();
    assert_eq!(cfg, Config::default());
}

#[test]
fn print_config_round_trips_file_plus_flags() {
    let path = write(
        "base.toml",
        "[proxy]\nlisten = \"10.0.0.1:5060\"\nworkers = 2\n\n\
         [dispatcher]\nsource = \"postgres://k@db/kamailio\"\nalgorithm = \"hash-callid\"\n\
         [[dispatcher.rules]]\nprefix = \"+44\"\nset = 2\n\n\
         [rtpengine]\nengines = [\"udp:127.0.0.1:22222=2\"]\n",
    );
    let o = sipvane(&[
        "run",
        "-c",
        path.to_str().unwrap(),
        "--workers",
        "auto",
        "--listen",
        "10.0.0.2:5070",
        "--dispatcher-list",
        "/etc/sipvane/dispatcher.list",
        "--algorithm",
        "13",
        "--set",
        "9",
        "--mgmt",
        "0.0.0.0:9999",
        "--io",
        "epoll",
        "--advertise",
        "sip.example.com",
        "--log-level",
        "debug",
        "--print-config",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = Config::from_toml_str(&stdout(&o), "stdout").unwrap();

    let mut want = Config::load(&path).unwrap();
    want.proxy.workers = Workers::Auto;
    want.proxy.listen = "10.0.0.2:5070".parse().unwrap();
    want.proxy.io = IoMode::Epoll;
    want.proxy.advertise = Some("sip.example.com".into());
    want.dispatcher.source = String::new();
    want.dispatcher.list = Some("/etc/sipvane/dispatcher.list".into());
    want.dispatcher.algorithm = AlgorithmSpec::Number(13);
    want.dispatcher.default_set = 9;
    want.mgmt.listen = "0.0.0.0:9999".parse().unwrap();
    want.log.level = "debug".into();
    assert_eq!(got, want);
    // Flags only override: what the file set and no flag touched is kept.
    assert_eq!(got.dispatcher.rules.len(), 1);
    assert_eq!(got.rtpengine.engines[0].weight, 2);
}

#[test]
fn bad_file_stops_run() {
    let path = write("runbad.toml", "[proxy]\nworkers = -1\n");
    let p = path.to_str().unwrap();
    let o = sipvane(&["run", "-c", p, "--print-config"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("{p}:2: workers must be \"auto\" or a number ≥ 1 (got -1)\n")
    );
}

#[test]
fn bad_flags_are_rejected() {
    // By clap (usage error, exit 2) ...
    for args in [
        ["run", "--workers", "0"],
        ["run", "--algorithm", "7"],
        ["run", "--io", "kqueue"],
        ["run", "--listen", "nope"],
    ] {
        let o = sipvane(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&o).contains("invalid value"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // ... or by validation of the merged configuration (exit 1).
    let o = sipvane(&["run", "--advertise", "bad host", "--print-config"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "command line: advertise must be a host name or IP address (got \"bad host\")\n"
    );
}

/// `sipvane run` refuses to start, with one line naming the file, when its
/// dispatcher list cannot be read. The child is killed after 30 s so a
/// regression that makes it run cannot hang the suite.
#[test]
fn run_with_an_unreadable_dispatcher_list_exits_1() {
    let o = support::output_within(
        Command::new(env!("CARGO_BIN_EXE_sipvane"))
            .args([
                "run",
                "--listen",
                "127.0.0.1:45999",
                "--mgmt",
                "127.0.0.1:0",
                "--dispatcher-list",
                "/nonexistent/run.list",
                "--log-level",
                "error",
            ])
            .env_remove("RUST_LOG"),
        std::time::Duration::from_secs(30),
        "sipvane run with an unreadable dispatcher list",
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "sipvane: /nonexistent/run.list: cannot read dispatcher list: No such file or directory (os error 2)\n"
    );
}

#[test]
fn version() {
    let o = sipvane(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        format!("sipvane {}\n", env!("CARGO_PKG_VERSION"))
    );
}
