//! Proves `scripts/services.sh` (through the harness's `Service`) gives each
//! test a working private Redis, PostgreSQL, MariaDB and RTPEngine on
//! loopback, with the documented database, user and password, and that
//! dropping the handle stops it.

mod support;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use support::{localhost, require_binary, wait_for_tcp_listener, Service, ServiceKind};

const HINT: &str = "run `make deps`";

#[test]
fn redis_answers_ping_and_stops_on_drop() {
    let redis = Service::start(ServiceKind::Redis);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    let mut s = TcpStream::connect(localhost(redis.port())).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    s.write_all(b"*1\r\n$4\r\nPING\r\n").expect("write");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("read");
    assert_eq!(buf.get(..n), Some(&b"+PONG\r\n"[..]));
    drop(s);

    let (port, dir) = (redis.port(), redis.dir().to_path_buf());
    drop(redis);
    assert!(
        TcpStream::connect(localhost(port)).is_err(),
        "redis still up"
    );
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn rtpengine_answers_ng_ping() {
    let rtp = Service::start(ServiceKind::Rtpengine);
    assert_eq!(rtp.url(), format!("udp:127.0.0.1:{}", rtp.port()));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok();
    sock.send_to(b"t1 d7:command4:pinge", localhost(rtp.port()))
        .expect("send");
    let mut buf = [0u8; 256];
    let (n, _) = sock.recv_from(&mut buf).expect("ng reply");
    assert_eq!(buf.get(..n), Some(&b"t1 d6:result4:ponge"[..]));
}

#[test]
fn postgres_has_db_user_and_password() {
    let psql = require_binary("psql", HINT);
    let pg = Service::start(ServiceKind::Postgres);
    assert!(wait_for_tcp_listener(
        localhost(pg.port()),
        Duration::from_secs(5)
    ));
    let out = Command::new(psql)
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string()])
        .args(["-U", "sipvane", "-d", "sipvane", "-Atc"])
        .arg("select current_user || ' ' || current_database()")
        .env("PGPASSWORD", "sipvane")
        .output()
        .expect("psql");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sipvane sipvane",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Password authentication is real: a wrong one is refused.
    let bad = Command::new(require_binary("psql", HINT))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string()])
        .args(["-U", "sipvane", "-d", "sipvane", "-Atc", "select 1"])
        .env("PGPASSWORD", "wrong")
        .output()
        .expect("psql");
    assert!(!bad.status.success());
}

#[test]
fn mariadb_has_db_user_and_password() {
    let client = require_binary("mariadb", HINT);
    let my = Service::start(ServiceKind::Mariadb);
    let out = Command::new(client)
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &my.port().to_string(),
        ])
        .args(["-usipvane", "-psipvane", "sipvane", "-N", "-e"])
        .arg("select concat(substring_index(current_user(), '@', 1), ' ', database())")
        .output()
        .expect("mariadb client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sipvane sipvane",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
