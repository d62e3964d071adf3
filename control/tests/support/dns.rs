//! A private dnsmasq on 127.0.0.1:<free port> serving only the records a test
//! gives it under `sipvane.test` (`--no-resolv --no-hosts`: it never forwards a query anywhere),
//! killed when the handle is dropped. Records change by [`Dnsmasq::serve`],
//! which restarts it on the same port with the new records.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::net::{free_udp_port, localhost, wait_for_udp_listener};
use super::process::{require_binary, ChildGuard, WorkDir};

/// One dnsmasq record option, e.g. `--srv-host=…`.
#[derive(Clone, Debug)]
pub enum Record {
    /// `name`, IP, TTL seconds.
    A(String, String, u32),
    /// SRV owner (`_sip._udp.pool.test`), target, port, priority, weight.
    Srv(String, String, u16, u16, u16),
    /// NAPTR owner, order, preference, flags, service, replacement.
    Naptr(String, u16, u16, String, String, String),
}

impl Record {
    fn arg(&self) -> String {
        match self {
            Record::A(name, ip, ttl) => format!("--host-record={name},{ip},{ttl}"),
            Record::Srv(owner, target, port, prio, weight) => {
                format!("--srv-host={owner},{target},{port},{prio},{weight}")
            }
            Record::Naptr(owner, order, pref, flags, service, repl) => {
                format!("--naptr-record={owner},{order},{pref},{flags},{service},,{repl}")
            }
        }
    }
}

/// A running dnsmasq.
#[derive(Debug)]
pub struct Dnsmasq {
    addr: SocketAddr,
    dir: WorkDir,
    /// TTL of SRV / NAPTR answers (dnsmasq's `--local-ttl`).
    ttl: u32,
    child: Option<ChildGuard>,
}

impl Dnsmasq {
    /// Starts dnsmasq on a free loopback port with `records`; SRV and NAPTR
    /// answers carry `ttl` seconds.
    pub fn start(ttl: u32, records: &[Record]) -> Dnsmasq {
        let mut d = Dnsmasq {
            addr: localhost(free_udp_port()),
            dir: WorkDir::new("dnsmasq", "dns"),
            ttl,
            child: None,
        };
        d.serve(records);
        d
    }

    /// `IP:PORT` for `[dns] servers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces every record: restarts dnsmasq on the same port.
    pub fn serve(&mut self, records: &[Record]) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
        let bin = require_binary(
            "dnsmasq",
            "run `make deps` (scripts/deps.sh installs dnsmasq-base)",
        );
        let log = std::fs::File::create(self.dir.file("dnsmasq.log")).expect("dnsmasq log");
        let mut cmd = Command::new(bin);
        cmd.arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-poll")
            // Authoritative for the test domain: an unknown name is NXDOMAIN,
            // never forwarded (there is no upstream anyway).
            .arg("--local=/sipvane.test/")
            .arg("--bind-interfaces")
            .arg("--listen-address=127.0.0.1")
            .arg(format!("--port={}", self.addr.port()))
            .arg(format!("--local-ttl={}", self.ttl))
            .arg(format!("--pid-file={}", self.dir.file("pid").display()))
            .arg("--user=root")
            .arg("--log-queries")
            .arg("--log-facility=-")
            .args(records.iter().map(Record::arg))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dnsmasq log"))
            .stderr(log);
        let mut child = ChildGuard::spawn(&mut cmd).expect("start dnsmasq");
        if !wait_for_udp_listener(self.addr, Duration::from_secs(10)) {
            child.kill();
            panic!("dnsmasq did not start:\n{}", self.log());
        }
        self.child = Some(child);
    }

    /// What dnsmasq logged (every query, with `--log-queries`).
    pub fn log(&self) -> String {
        self.dir.read("dnsmasq.log")
    }
}
