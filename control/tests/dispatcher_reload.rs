//! Hot reload and database sources with the real `sipvane` binary, real SIPp
//! callers and callees, and private PostgreSQL / MariaDB servers: the
//! destination table changes under load and no call is lost.

mod support;

#[path = "support/db.rs"]
mod db_support;

use std::process::Command;
use std::time::{Duration, Instant};

use db_support::{runtime, MariaDb, Postgres, MYSQL_DDL, PG_DDL};
use support::{free_udp_addr, Scenario, Sipvane, Uac, Uas};

const RUN_LIMIT: Duration = Duration::from_secs(60);

/// SIGHUP reloads a rewritten dispatcher.list again and again while SIPp
/// keeps calling: every call completes (calls in progress finish on the
/// destination they started on, their BYE following Record-Route), and new
/// calls follow the table in service.
#[test]
fn reload_under_load_loses_no_call() {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("reload-load")
        .destination(format!("1 sip:{}", a.addr()))
        .toml("ping_interval_s = 0")
        .start();
    let lists = [
        format!("1 sip:{}\n1 sip:{}\n", a.addr(), b.addr()),
        format!("1 sip:{}\n", b.addr()),
        format!("1 sip:{}\n", a.addr()),
    ];
    let calls = 600;
    let mut uac = Uac::new(Scenario::Uac, sipvane.addr())
        .calls(calls)
        .rate(100)
        .hold(Duration::from_millis(300))
        .timeout(RUN_LIMIT)
        .spawn();
    let deadline = Instant::now() + RUN_LIMIT;
    let mut reloads = 0;
    while !uac.is_finished() && Instant::now() < deadline && reloads < 200 {
        std::fs::write(sipvane.list_path(), &lists[reloads % lists.len()]).expect("rewrite list");
        sipvane.signal(libc::SIGHUP);
        reloads += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    let run = uac.wait();
    run.assert_all_succeeded(u64::from(calls));
    assert!(
        reloads >= 10,
        "only {reloads} reloads happened during the run"
    );
    assert!(
        sipvane.wait_for_log("dispatcher reloaded", 10, Duration::from_secs(5)),
        "{}",
        sipvane.log()
    );
    let (fa, fb) = (a.stop(), b.stop());
    assert_eq!(
        fa.invites_received() + fb.invites_received(),
        u64::from(calls)
    );
    assert!(fa.invites_received() > 0 && fb.invites_received() > 0);
    for f in [&fa, &fb] {
        assert_eq!(f.count("BYE", "Recv"), f.invites_received(), "{f:?}");
    }
    let c = sipvane.stop();
    assert_eq!(c.get("calls_answered"), u64::from(calls));
}

/// A broken list is refused with `file:line:` in the log and the table in
/// service keeps routing.
#[test]
fn a_broken_list_keeps_the_table_in_service() {
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut sipvane = Sipvane::builder("reload-broken")
        .destination(format!("1 sip:{}", a.addr()))
        .toml("ping_interval_s = 0")
        .start();
    std::fs::write(
        sipvane.list_path(),
        format!("1 sip:{}\nnot-a-set sip:x\n", a.addr()),
    )
    .expect("rewrite list");
    sipvane.signal(libc::SIGHUP);
    let needle = format!("{}:2:", sipvane.list_path().display());
    assert!(
        sipvane.wait_for_log(&needle, 1, Duration::from_secs(5)),
        "{}",
        sipvane.log()
    );
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(20)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(20);
    assert_eq!(a.stop().invites_received(), 20);
    sipvane.stop();
}

const USER: &str = "sipvane";
const PASSWORD: &str = "Reload-Pw1";

fn calls_to(sipvane: &Sipvane, n: u32) {
    Uac::new(Scenario::Uac, sipvane.addr())
        .calls(n)
        .rate(50)
        .timeout(RUN_LIMIT)
        .run()
        .assert_all_succeeded(u64::from(n));
}

/// INVITEs `uas` received, once its periodic statistics show at least
/// `n` (or after 5 s): assert on the returned count.
fn invites(uas: &Uas, n: u64) -> u64 {
    uas.wait_until(Duration::from_secs(5), |s| s.invites_received() >= n)
        .invites_received()
}

/// sipvane runs from Kamailio's `dispatcher` table in PostgreSQL: rows changed
/// in the database reach the proxy by the periodic resync; a database outage
/// keeps the table in service; a restart during the outage comes up from the
/// snapshot, and without a snapshot sipvane refuses to start with one clear
/// line.
#[test]
fn postgres_source_resyncs_and_survives_an_outage() {
    let rt = runtime();
    let mut pg = rt.block_on(Postgres::start());
    let url = pg.url(USER, PASSWORD, "kamailio");
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    rt.block_on(async {
        pg.exec(
            "postgres",
            &[
                &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
                "CREATE DATABASE kamailio",
            ],
        )
        .await;
        pg.exec(
            "kamailio",
            &[
                PG_DDL[1],
                &format!("GRANT SELECT ON dispatcher TO {USER}"),
                &format!(
                    "INSERT INTO dispatcher (setid, destination, description) \
                     VALUES (1, 'sip:{}', 'A')",
                    a.addr()
                ),
            ],
        )
        .await;
    });

    let mut sipvane = Sipvane::builder("reload-pg")
        .source(&url)
        .toml("reload_interval_s = 1\nping_interval_s = 0")
        .toml(&format!(
            "snapshot_path = \"{}\"",
            snapshot_in("pg").display()
        ))
        .start();
    calls_to(&sipvane, 10);
    assert_eq!(invites(&a, 10), 10);

    rt.block_on(pg.exec(
        "kamailio",
        &[&format!(
            "UPDATE dispatcher SET destination = 'sip:{}' WHERE description = 'A'",
            b.addr()
        )],
    ));
    assert!(
        sipvane.wait_for_log("dispatcher reloaded", 1, Duration::from_secs(10)),
        "{}",
        sipvane.log()
    );
    calls_to(&sipvane, 10);
    assert_eq!(invites(&b, 10), 10, "new calls follow the changed row");
    assert_eq!(invites(&a, 10), 10);

    pg.stop();
    assert!(
        sipvane.wait_for_log(
            "keeping the current destinations",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        sipvane.log()
    );
    calls_to(&sipvane, 10);
    assert_eq!(invites(&b, 20), 20, "the outage keeps the table in service");
    sipvane.stop();

    // A restart while the database is down comes up from the snapshot.
    let mut again = Sipvane::builder("reload-pg-snap")
        .source(&url)
        .toml("ping_interval_s = 0")
        .toml(&format!(
            "snapshot_path = \"{}\"",
            snapshot_in("pg").display()
        ))
        .start();
    assert!(
        again.log().contains("using the snapshot"),
        "{}",
        again.log()
    );
    calls_to(&again, 10);
    assert_eq!(invites(&b, 30), 30);
    again.stop();

    // Without a snapshot there is nothing safe to run: one clear line, exit 1.
    let out = run_expecting_exit(&url);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to") && err.contains("no snapshot to fall back on"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "the password leaked: {err}");
    a.stop();
    b.stop();
}

/// MariaDB through a `mysql://` URL; an on-demand reload (SIGHUP) picks up a
/// new row at once.
#[test]
fn mariadb_source_reloads_on_demand() {
    let rt = runtime();
    let mut my = rt.block_on(MariaDb::start());
    let url = my.url("mysql", USER, PASSWORD, "kamailio");
    let mut a = Uas::start(Scenario::Uas, free_udp_addr());
    let mut b = Uas::start(Scenario::Uas, free_udp_addr());
    rt.block_on(async {
        my.exec(
            "",
            &[
                "CREATE DATABASE kamailio",
                &format!("CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'"),
                &format!("GRANT SELECT ON kamailio.* TO '{USER}'@'%'"),
            ],
        )
        .await;
        my.exec(
            "kamailio",
            &[
                MYSQL_DDL[1],
                &format!(
                    "INSERT INTO dispatcher (setid, destination, flags, priority) \
                     VALUES (1, 'sip:{}', 0, 10)",
                    a.addr()
                ),
            ],
        )
        .await;
    });
    let mut sipvane = Sipvane::builder("reload-maria")
        .source(&url)
        .toml("ping_interval_s = 0")
        .start();
    calls_to(&sipvane, 10);
    assert_eq!(invites(&a, 10), 10);

    // Replace the destination: the next reload must send every new call to B.
    rt.block_on(my.exec(
        "kamailio",
        &[
            "DELETE FROM dispatcher",
            &format!(
                "INSERT INTO dispatcher (setid, destination) VALUES (1, 'sip:{}')",
                b.addr()
            ),
        ],
    ));
    sipvane.signal(libc::SIGHUP);
    assert!(
        sipvane.wait_for_log("dispatcher reloaded", 1, Duration::from_secs(10)),
        "{}",
        sipvane.log()
    );
    calls_to(&sipvane, 10);
    assert_eq!(invites(&b, 10), 10);
    assert_eq!(invites(&a, 10), 10);
    sipvane.stop();
    my.stop();
    a.stop();
    b.stop();
}

fn snapshot_in(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sipvane-reload-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join("dispatcher.snapshot")
}

/// `sipvane run` against `url` with no snapshot; killed after 30 s so a
/// regression cannot hang the suite.
fn run_expecting_exit(url: &str) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("sipvane-reload-nosnap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let cfg = dir.join("sipvane.toml");
    let port = support::free_udp_port();
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[mgmt]\nlisten = \"127.0.0.1:0\"\n\
             [dispatcher]\nsource = \"{url}\"\ndb_timeout_ms = 2000\n"
        ),
    )
    .expect("write config");
    support::output_within(
        Command::new(env!("CARGO_BIN_EXE_sipvane"))
            .args(["run", "-c"])
            .arg(&cfg)
            .args(["--log-level", "error"]),
        Duration::from_secs(30),
        "sipvane without a database and without a snapshot",
    )
}
