//! The registrar end to end, on Kamailio's own schema files
//! (`/usr/share/kamailio/{postgres,mysql}/{standard,auth_db,usrloc}-create.sql`)
//! in a private PostgreSQL and a private MariaDB, with SIPp clients that
//! answer digest challenges (`-au` / `-ap`):
//!
//! - a wrong password gets 401 then a fresh 401 (as Kamailio), and nothing
//!   is stored;
//! - the right one gets 401 then 200, and a row appears in `location`;
//!   a re-REGISTER replaces it (one row, the new Call-ID);
//! - a call from a caller of the registrar's domain without credentials
//!   gets 407; with them (as another registered user) it reaches the SIPp
//!   UAS at the callee's contact, without the credentials (consumed); a number outside `prefixes` goes to the
//!   dispatcher set; an unregistered extension gets 404;
//! - the binding survives a sipvane restart (reloaded from `location`);
//! - a client whose Contact carries a private address it does not send from
//!   is stored with `received` = its real source and called there (NAT);
//! - `sipvane ctl ul show` / `ul rm` and `/metrics` show and change the table;
//! - unREGISTER (`Expires: 0`) and expiry remove the binding and its row;
//! - with two bindings (same q), a call rings both; one answers, the
//!   other gets a CANCEL and the caller one 200 (parallel forking).
//!
//! One test per server runs every phase in sequence so each server starts once.

#[path = "support/db.rs"]
mod db_support;
mod support;

use std::time::{Duration, Instant};

use db_support::{runtime, KamailioDb, MariaDb, Postgres};
use support::{
    free_udp_addr, free_udp_port, metric, metrics, received_messages, Scenario, SippRun, Sipvane,
    Uac, Uas,
};

const WAIT: Duration = Duration::from_secs(10);
/// The dispatcher set's number (outside `prefixes`).
const PBX_NUMBER: &str = "1000";

struct Bed {
    db: KamailioDb,
    rt: tokio::runtime::Runtime,
    sipvane: Sipvane,
}

/// One `location` row: (contact, received, callid).
type Row = (String, String, String);

impl Bed {
    fn rows(&self, user: &str) -> Vec<Row> {
        let t = self.db.text_type();
        let sql = format!(
            "SELECT contact, CAST(COALESCE(received, '') AS {t}), callid FROM location \
             WHERE username = '{user}' AND domain = 'example.com' ORDER BY id"
        );
        self.rt
            .block_on(self.db.query(&sql, 3))
            .into_iter()
            .map(|v| (v[0].clone(), v[1].clone(), v[2].clone()))
            .collect()
    }

    /// Waits (bounded: the write-back delay) until `user` has `n` rows.
    fn wait_rows(&self, user: &str, n: usize) -> Vec<Row> {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.rows(user);
            if rows.len() == n || Instant::now() > deadline {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A digest REGISTER of `user` with `password`, Contact `user@contact`.
    fn register(
        &self,
        scenario: Scenario,
        user: &str,
        password: &str,
        contact: &str,
        expires: u32,
        from_port: Option<u16>,
    ) -> SippRun {
        let mut uac = Uac::new(scenario, self.sipvane.addr())
            .service(user)
            .timeout(Duration::from_secs(20));
        for a in [
            "-au",
            user,
            "-ap",
            password,
            "-key",
            "contact",
            contact,
            "-key",
            "expires",
            &expires.to_string(),
        ] {
            uac = uac.arg(a);
        }
        if let Some(p) = from_port {
            uac = uac.local_port(p);
        }
        uac.run()
    }

    fn call(&self, scenario: Scenario, user: &str) -> SippRun {
        Uac::new(scenario, self.sipvane.addr())
            .service(user)
            .timeout(Duration::from_secs(20))
            .run()
    }

    /// `sipvane ctl ARGS` against this sipvane: (exit code, stdout).
    fn ctl(&self, args: &[&str]) -> (i32, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sipvane"))
            .arg("ctl")
            .arg("--mgmt")
            .arg(self.sipvane.mgmt_addr().to_string())
            .args(args)
            .output()
            .expect("run sipvane ctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// A call to `user` from `caller`, who answers the 407 with `password`.
    fn call_as(&self, caller: &str, password: &str, user: &str) -> SippRun {
        self.call_as_with(caller, password, user, &[])
    }

    /// [`Bed::call_as`] logging what SIPp received (`msg.log`).
    fn call_as_traced(&self, caller: &str, password: &str, user: &str) -> SippRun {
        let trace = ["-trace_msg", "-message_file", "msg.log"];
        self.call_as_with(caller, password, user, &trace)
    }

    fn call_as_with(&self, caller: &str, password: &str, user: &str, extra: &[&str]) -> SippRun {
        let mut uac = Uac::new(Scenario::UacAuth, self.sipvane.addr())
            .service(user)
            .timeout(Duration::from_secs(20));
        for a in ["-key", "caller", caller, "-au", caller, "-ap", password] {
            uac = uac.arg(a);
        }
        for a in extra {
            uac = uac.arg(*a);
        }
        uac.run()
    }
}

fn run_everything(db: KamailioDb) {
    support::require_sipp();
    let rt = runtime();
    rt.block_on(
        db.create_schema(
            &[
                "standard-create.sql",
                "auth_db-create.sql",
                "usrloc-create.sql",
            ],
            &[
                // 6001 as kamctl writes an account (ha1 / ha1b, no password);
                // 6002 with only a password.
                "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES \
             ('6001', 'example.com', '', md5('6001:example.com:pw-6001'), \
             md5('6001@example.com:example.com:pw-6001'))"
                    .to_owned(),
                "INSERT INTO subscriber (username, domain, password) VALUES \
             ('6002', 'example.com', 'pw-6002')"
                    .to_owned(),
            ],
        ),
    );
    bulk_write_back(&rt, &db.url());
    let pbx = Uas::builder(Scenario::Uas)
        .addr(free_udp_addr())
        .traced()
        .start();
    let sipvane = Sipvane::builder("registrar")
        .workers(2)
        .destination(format!("1 sip:{}", pbx.addr()))
        .toml(&format!(
            "ping_interval_s = 0\n\
             [registrar]\ndomain = \"example.com\"\ndb_url = \"{}\"\nprefixes = [\"6\"]\n\
             min_expires = 1\nwrite_back_ms = 200\ntimeout_ms = 3000\n",
            db.url()
        ))
        .start();
    let mut bed = Bed { db, rt, sipvane };

    // A wrong password: 401, then 401 again, and nothing stored.
    let phone_port = free_udp_port();
    let contact = format!("127.0.0.1:{phone_port}");
    let wrong = bed.register(
        Scenario::RegisterWrongPassword,
        "6001",
        "guess",
        &contact,
        3600,
        None,
    );
    wrong.assert_all_succeeded(1);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        bed.rows("6001").is_empty(),
        "a refused REGISTER stored a binding"
    );

    // The right password: 401, then 200 and a row (from the phone's port).
    let ok = bed.register(
        Scenario::RegisterAuth,
        "6001",
        "pw-6001",
        &contact,
        3600,
        Some(phone_port),
    );
    ok.assert_all_succeeded(1);
    let rows = bed.wait_rows("6001", 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, format!("sip:6001@{contact}"));
    assert_eq!(rows[0].1, "", "Contact is the source: no NAT");
    // Re-REGISTER: the same binding, now with the new Call-ID.
    let again = bed.register(
        Scenario::RegisterAuth,
        "6001",
        "pw-6001",
        &contact,
        3600,
        Some(phone_port),
    );
    again.assert_all_succeeded(1);
    let deadline = Instant::now() + WAIT;
    let mut after = bed.rows("6001");
    while after.first().map(|r| &r.2) == Some(&rows[0].2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = bed.rows("6001");
    }
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(
        after[0].2, rows[0].2,
        "the re-REGISTER's Call-ID was not written"
    );

    // The table as operators see it.
    let (code, shown) = bed.ctl(&["ul", "show"]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains(&format!("6001@example.com  sip:6001@{contact}")),
        "{shown}"
    );
    assert!(shown.contains("1 users, 1 bindings"), "{shown}");
    let m = metrics(&bed.sipvane);
    assert_eq!(metric(&m, "sipvane_registrar_bindings"), 1);
    assert_eq!(metric(&m, "sipvane_registrar_accounts"), 2);
    assert_eq!(metric(&m, "sipvane_registrar_db_up"), 1);
    assert!(
        metric(&m, "sipvane_registrar_auth_failures_total") >= 1,
        "the wrong password"
    );

    // Calls: a caller of our domain (SIPp's From is sipvane's address)
    // without credentials gets 407 and reaches nobody.
    let phone = Uas::builder(Scenario::Uas)
        .port(phone_port)
        .traced()
        .start();
    assert_eq!(
        phone.addr().port(),
        phone_port,
        "the phone's port was taken"
    );
    let refused = bed.call(Scenario::Uac, "6001");
    assert_eq!(
        (refused.stats.successful, refused.stats.failed),
        (0, 1),
        "{}",
        refused.errors()
    );
    assert!(refused.errors().contains("407"), "{}", refused.errors());
    // Authenticated (as 6002): to the registered phone, to the pool; and a
    // foreign caller to nobody.
    bed.call_as("6002", "pw-6002", "6001")
        .assert_all_succeeded(1);
    assert_eq!(phone.wait_for_calls(1, WAIT).invites_received(), 1);
    bed.call_as("6002", "pw-6002", PBX_NUMBER)
        .assert_all_succeeded(1);
    assert_eq!(pbx.wait_for_calls(1, WAIT).invites_received(), 1);
    // The credentials were for sipvane: neither peer ever sees them.
    for (peer, uas) in [("phone", &phone), ("pbx", &pbx)] {
        let invites = uas.received("INVITE ");
        assert_eq!(invites.len(), 1, "{peer}: {invites:?}");
        assert!(
            !invites[0]
                .to_ascii_lowercase()
                .contains("proxy-authorization:"),
            "{peer} got our credentials:\n{}",
            invites[0]
        );
    }
    bed.call(Scenario::Uac404, "6999").assert_all_succeeded(1);

    // A restart reloads the binding from `location`.
    bed.sipvane.restart();
    bed.call_as("6002", "pw-6002", "6001")
        .assert_all_succeeded(1);
    assert_eq!(phone.wait_for_calls(2, WAIT).invites_received(), 2);

    // NAT: the Contact names a private address the client does not send
    // from; the source is stored as `received` and called there.
    let nat_port = free_udp_port();
    let nat = bed.register(
        Scenario::RegisterAuth,
        "6002",
        "pw-6002",
        "192.168.77.1:5060",
        3600,
        Some(nat_port),
    );
    nat.assert_all_succeeded(1);
    let rows = bed.wait_rows("6002", 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "sip:6002@192.168.77.1:5060");
    assert_eq!(rows[0].1, format!("sip:127.0.0.1:{nat_port}"));
    let natted = Uas::builder(Scenario::Uas).port(nat_port).start();
    assert_eq!(
        natted.addr().port(),
        nat_port,
        "the NATed phone's port was taken"
    );
    bed.call_as("6001", "pw-6001", "6002")
        .assert_all_succeeded(1);
    assert_eq!(natted.wait_for_calls(1, WAIT).invites_received(), 1);

    // `ctl ul rm`: the binding and its row go.
    let (code, out) = bed.ctl(&["ul", "rm", "6002@example.com"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "6002@example.com: 1 binding(s) removed\n")
    );
    assert!(bed.wait_rows("6002", 0).is_empty(), "ul rm left a row");
    bed.call(Scenario::Uac404, "6002").assert_all_succeeded(1);

    // unREGISTER: the row goes, calls get 404.
    let gone = bed.register(Scenario::RegisterAuth, "6001", "pw-6001", &contact, 0, None);
    gone.assert_all_succeeded(1);
    assert!(bed.wait_rows("6001", 0).is_empty(), "unREGISTER left a row");
    bed.call(Scenario::Uac404, "6001").assert_all_succeeded(1);

    // Expiry: a 2 s registration is removed by the timer, row and all.
    let short = bed.register(
        Scenario::RegisterAuth,
        "6002",
        "pw-6002",
        "192.168.77.1:5060",
        2,
        None,
    );
    short.assert_all_succeeded(1);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        bed.wait_rows("6002", 0).is_empty(),
        "an expired binding kept its row"
    );
    bed.call(Scenario::Uac404, "6002").assert_all_succeeded(1);

    // Parallel forking: two phones of 6001 (same q) both get the INVITE;
    // one answers, the other (ringing) gets a CANCEL, the caller one 200.
    let (answer_port, ring_port) = (free_udp_port(), free_udp_port());
    for port in [answer_port, ring_port] {
        let contact = format!("127.0.0.1:{port}");
        bed.register(
            Scenario::RegisterAuth,
            "6001",
            "pw-6001",
            &contact,
            3600,
            Some(port),
        )
        .assert_all_succeeded(1);
    }
    assert_eq!(bed.wait_rows("6001", 2).len(), 2);
    let answering = Uas::builder(Scenario::Uas).port(answer_port).start();
    let ringing = Uas::builder(Scenario::UasCancel).port(ring_port).start();
    assert_eq!(
        (answering.addr().port(), ringing.addr().port()),
        (answer_port, ring_port),
        "a phone's port was taken"
    );
    let caller = bed.call_as_traced("6002", "pw-6002", "6001");
    caller.assert_all_succeeded(1);
    assert_eq!(answering.wait_for_calls(1, WAIT).invites_received(), 1);
    // The counts and the call statistics are separate files SIPp dumps at
    // its own moments: wait for the CANCEL itself.
    let rang = ringing.wait_until(WAIT, |s| s.count("CANCEL", "Recv") >= 1);
    assert_eq!(rang.invites_received(), 1);
    assert_eq!(
        rang.count("CANCEL", "Recv"),
        1,
        "the other phone was not cancelled"
    );
    let oks = received_messages(caller.log_dir(), "SIP/2.0 200");
    assert_eq!(
        oks.iter()
            .filter(|m| m
                .lines()
                .any(|l| l.starts_with("CSeq:") && l.contains("INVITE")))
            .count(),
        1,
        "the caller must get one 200 to its INVITE: {oks:?}"
    );

    let counters = bed.sipvane.stop();
    assert!(counters.get("registrar_registers_ok") >= 3, "{counters:?}");
    assert!(counters.get("registrar_challenges") >= 5, "{counters:?}");
    drop(bed);
}

/// The location write-back with more AORs than one statement takes (the store
/// writes them in chunks of 500): every binding is there after the first write,
/// and a second write that removes some AORs and shrinks others leaves exactly
/// what it says.
fn bulk_write_back(rt: &tokio::runtime::Runtime, url: &str) {
    use control::registrar::store::Store;
    use dataplane::registrar::{Binding, Bindings};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let binding = |i: usize, k: usize| Binding {
        contact: format!("sip:bulk{i}@127.0.0.{}:5060", k + 1).into(),
        received: (k == 1).then(|| "127.0.0.9:40000".parse().unwrap()),
        path: "".into(),
        expires: now + 600,
        q: 1000,
        call_id: format!("bulk-{i}-{k}").into(),
        cseq: 1,
        user_agent: "bulk".into(),
        ruid: format!("bulk-{i}-{k}").into(),
        last_modified: now,
        stream: None,
    };
    let aor = |i: usize| -> Box<str> { format!("bulk{i}@example.com").into() };
    let n = 1_200;
    // Every other AOR has two contacts: 1 800 rows.
    let first: Vec<(Box<str>, Option<Bindings>)> = (0..n)
        .map(|i| {
            (
                aor(i),
                Some((0..1 + i % 2).map(|k| binding(i, k)).collect()),
            )
        })
        .collect();
    // Then every third AOR is gone and every other one keeps one contact.
    let second: Vec<(Box<str>, Option<Bindings>)> = (0..n)
        .map(|i| {
            (
                aor(i),
                (i % 3 != 0).then(|| [binding(i, 0)].into_iter().collect()),
            )
        })
        .collect();
    rt.block_on(async {
        let mut store = Store::new(
            url,
            Duration::from_secs(20),
            "subscriber",
            "location",
            1_000,
        )
        .unwrap();
        let bulk = |rows: Vec<control::registrar::store::LocationRow>| {
            rows.into_iter()
                .filter(|r| r.username.starts_with("bulk"))
                .collect::<Vec<_>>()
        };
        store.write(&first).await.expect("first bulk write");
        let rows = bulk(store.location(now).await.unwrap());
        assert_eq!(rows.len(), 1_800);
        assert!(rows
            .iter()
            .any(|r| r.username == "bulk1" && r.binding == binding(1, 1)));
        store.write(&second).await.expect("second bulk write");
        let rows = bulk(store.location(now).await.unwrap());
        assert_eq!(rows.len(), 800);
        assert!(rows
            .iter()
            .all(|r| r.binding.contact.ends_with("@127.0.0.1:5060")));
        assert!(!rows.iter().any(|r| r.username == "bulk3"));
        // Leave the table as the rest of the test expects it.
        let gone: Vec<(Box<str>, Option<Bindings>)> = (0..n).map(|i| (aor(i), None)).collect();
        store.write(&gone).await.expect("clearing write");
        assert!(bulk(store.location(now).await.unwrap()).is_empty());
    });
}

#[test]
fn postgres_registrar_on_kamailio_schema() {
    let server = runtime().block_on(Postgres::start());
    run_everything(KamailioDb::Pg(server));
}

#[test]
fn mariadb_registrar_on_kamailio_schema() {
    let server = runtime().block_on(MariaDb::start());
    run_everything(KamailioDb::My(server));
}
