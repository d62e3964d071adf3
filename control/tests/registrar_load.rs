//! The registrar under load, on PostgreSQL with Kamailio's schema: 10 000
//! users (rows generated in `subscriber`) register with digest
//! authentication from a SIPp injection file, then all re-register at
//! ~200/s while calls run through the proxy (to a registered user and to
//! the dispatcher set). No REGISTER and no call may fail, every user ends
//! with one `location` row, and memory stays bounded (RSS before and after
//! the re-registration round). Bounded: 20 000 REGISTERs, 240 calls,
//! about a minute. Speed is measured by `make bench-registrar`, not here.

#[path = "support/db.rs"]
mod db_support;
mod support;

use std::io::Write;
use std::time::Duration;

use db_support::{runtime, KamailioDb, Postgres};
use support::{free_udp_addr, free_udp_port, Scenario, Sipvane, Uac, Uas, WorkDir};

const USERS: u32 = 10_000;
/// Users are 60000..69999; the called phone is 70001 (its own REGISTER,
/// from the port its SIPp UAS then listens on).
const FIRST_USER: u32 = 60_000;
const RATE: u32 = 200;

#[test]
fn ten_thousand_users_reregister_while_calls_run() {
    support::require_sipp();
    let rt = runtime();
    let db = KamailioDb::Pg(rt.block_on(Postgres::start()));
    rt.block_on(
        db.create_schema(
            &[
                "standard-create.sql",
                "auth_db-create.sql",
                "usrloc-create.sql",
            ],
            &[
                format!(
                    "INSERT INTO subscriber (username, domain, password, ha1) \
                 SELECT u::text, 'example.com', '', md5(u::text || ':example.com:pw-' || u::text) \
                 FROM generate_series({FIRST_USER}, {}) AS u",
                    FIRST_USER + USERS - 1
                ),
                "INSERT INTO subscriber (username, domain, password) VALUES \
             ('70001', 'example.com', 'pw-70001')"
                    .to_owned(),
            ],
        ),
    );
    let dir = WorkDir::new("registrar-load", "users");
    let csv = dir.path().join("users.csv");
    let mut f = std::fs::File::create(&csv).expect("create users.csv");
    writeln!(f, "SEQUENTIAL").unwrap();
    for u in FIRST_USER..FIRST_USER + USERS {
        writeln!(f, "{u};[authentication username={u} password=pw-{u}]").unwrap();
    }
    drop(f);

    let pbx = Uas::builder(Scenario::Uas).addr(free_udp_addr()).start();
    // The calls come from SIPp's own address, like a PBX's: not challenged.
    let sipvane = Sipvane::builder("registrar-load")
        .workers(2)
        .destination(format!("1 sip:{}", pbx.addr()))
        .toml(&format!(
            "ping_interval_s = 0\n\
             [registrar]\ndomain = \"example.com\"\ndb_url = \"{}\"\nprefixes = [\"6\", \"7\"]\n\
             authenticate_calls = false\nmax_contacts = 2\ntimeout_ms = 5000\n",
            db.url()
        ))
        .start();

    // Every user's Contact names the same (unused) address: they are not
    // called; 70001 is, at its UAS.
    let register_all = |rate: u32| {
        Uac::new(Scenario::RegisterUsers, sipvane.addr())
            .calls(USERS)
            .rate(rate)
            .max_concurrent(2000)
            .timeout(Duration::from_secs(240))
            .arg("-inf")
            .arg(&csv)
            .arg("-key")
            .arg("contact")
            .arg("127.0.0.1:9")
            .arg("-key")
            .arg("expires")
            .arg("3600")
    };
    register_all(500)
        .run()
        .assert_all_succeeded(u64::from(USERS));
    let phone_port = free_udp_port();
    Uac::new(Scenario::RegisterAuth, sipvane.addr())
        .service("70001")
        .local_port(phone_port)
        .arg("-au")
        .arg("70001")
        .arg("-ap")
        .arg("pw-70001")
        .arg("-key")
        .arg("contact")
        .arg(format!("127.0.0.1:{phone_port}"))
        .arg("-key")
        .arg("expires")
        .arg("3600")
        .run()
        .assert_all_succeeded(1);
    let phone = Uas::builder(Scenario::Uas).port(phone_port).start();
    assert_eq!(
        phone.addr().port(),
        phone_port,
        "the phone's port was taken"
    );
    let rows = |db: &KamailioDb| {
        let sql = format!("SELECT CAST(COUNT(*) AS {}) FROM location", db.text_type());
        rt.block_on(db.query(&sql, 1))[0][0].parse::<u64>().unwrap()
    };
    let before = sipvane.rss_kib();

    // Everyone again at ~200/s (~50 s) while calls run.
    let rereg = register_all(RATE).spawn();
    let to_phone = Uac::new(Scenario::Uac, sipvane.addr())
        .service("70001")
        .calls(120)
        .rate(3)
        .timeout(Duration::from_secs(120))
        .spawn();
    let to_pbx = Uac::new(Scenario::Uac, sipvane.addr())
        .service("1000")
        .calls(120)
        .rate(3)
        .timeout(Duration::from_secs(120))
        .spawn();
    let rereg = rereg.wait();
    let (to_phone, to_pbx) = (to_phone.wait(), to_pbx.wait());
    let after = sipvane.rss_kib();
    eprintln!("sipvane RSS: {before} KiB after the first round, {after} KiB after the second");
    // SIPp retransmits a REGISTER whose answer it has not read within
    // 500 ms (a busy machine): the retransmission must get the answer
    // again, not a new challenge (its nonce count is used up).
    eprintln!(
        "REGISTER retransmissions by SIPp: {}",
        rereg.stats.stat_u64("Retransmissions(C)")
    );
    rereg.assert_all_succeeded(u64::from(USERS));
    to_phone.assert_all_succeeded(120);
    to_pbx.assert_all_succeeded(120);
    assert_eq!(
        phone
            .wait_for_calls(120, Duration::from_secs(10))
            .invites_received(),
        120
    );

    // One binding per user (a re-REGISTER replaced it), all written back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = rows(&db);
    while n != u64::from(USERS) + 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        n = rows(&db);
    }
    assert_eq!(n, u64::from(USERS) + 1, "location rows");
    // The second round replaced bindings, it did not add any: memory stays
    // where the first round left it (allocator slack aside).
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB over a round of re-registrations"
    );
    let counters = {
        let mut s = sipvane;
        s.stop()
    };
    assert!(
        counters.get("registrar_registers_ok") >= 2 * u64::from(USERS),
        "{counters:?}"
    );
    assert_eq!(counters.get("registrar_auth_failures"), 0, "{counters:?}");
}
