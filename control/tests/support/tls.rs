//! Certificates made by `openssl` for the TLS tests, and a SIP callee over TLS
//! on Python's `ssl` module (tests/fixtures/tls_sip_server.py), an OpenSSL
//! stack independent of sipvane's rustls.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::net::free_tcp_port;
use super::process::ChildGuard;

/// `openssl req -x509` with `args`; panics with its stderr on failure.
fn openssl_req(args: &[&str]) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2"])
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory with two unrelated CAs, `ca` and `other-ca` (`NAME.crt`,
/// `NAME.key`), and the certificates issued by them; removed on drop.
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    pub fn new(tag: &str) -> CertDir {
        let dir = std::env::temp_dir().join(format!("sipvane-tlsout-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cert dir");
        let certs = CertDir { dir };
        for ca in ["ca", "other-ca"] {
            openssl_req(&[
                "-subj",
                &format!("/CN=sipvane test {ca}"),
                "-keyout",
                &certs.path(&format!("{ca}.key")),
                "-out",
                &certs.path(&format!("{ca}.crt")),
            ]);
        }
        certs
    }

    /// A certificate with subjectAltName `san` (`IP:127.0.0.1`, `DNS:x`)
    /// signed by CA `ca`, as `NAME.crt` / `NAME.key`.
    pub fn issue(&self, ca: &str, san: &str, name: &str) {
        self.issue_named(ca, san, name, name);
    }

    /// As `issue`, with subject CN `cn`.
    pub fn issue_named(&self, ca: &str, san: &str, cn: &str, name: &str) {
        openssl_req(&[
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            &format!("subjectAltName={san}"),
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-CA",
            &self.path(&format!("{ca}.crt")),
            "-CAkey",
            &self.path(&format!("{ca}.key")),
            "-keyout",
            &self.path(&format!("{name}.key")),
            "-out",
            &self.path(&format!("{name}.crt")),
        ]);
    }

    pub fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Python TLS callee: answers INVITE/BYE/OPTIONS 200, records what it got.
pub struct PyTlsUas {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    _child: ChildGuard,
}

impl PyTlsUas {
    /// Listens on 127.0.0.1 with certificate `NAME.crt`/`NAME.key` of `certs`
    /// (at most 120 s).
    pub fn start(certs: &CertDir, name: &str) -> PyTlsUas {
        Self::start_with(certs, name, None)
    }

    /// As `start`, requiring a client certificate signed by CA `client_ca`
    /// of `certs` (mutual TLS); prints `PEER-CERT <CN>` for each.
    pub fn start_requiring_client_cert(certs: &CertDir, name: &str, client_ca: &str) -> PyTlsUas {
        Self::start_with(certs, name, Some(certs.path(&format!("{client_ca}.crt"))))
    }

    fn start_with(certs: &CertDir, name: &str, client_ca: Option<String>) -> PyTlsUas {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls_sip_server.py");
        let port = free_tcp_port();
        let mut child = ChildGuard::spawn(
            Command::new("python3")
                .arg(script)
                .args(["127.0.0.1", &port.to_string()])
                .arg(certs.path(&format!("{name}.crt")))
                .arg(certs.path(&format!("{name}.key")))
                .arg("120")
                .args(client_ca)
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .expect("run python3");
        let stdout = child.stdout().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        let uas = PyTlsUas {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            lines,
            _child: child,
        };
        assert!(
            uas.wait_for(|l| l.iter().any(|s| s == "READY"), Duration::from_secs(10)),
            "TLS server did not start"
        );
        uas
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests of `method` received so far.
    pub fn received(&self, method: &str) -> usize {
        let want = format!("RECV {method}");
        self.lines().iter().filter(|l| **l == want).count()
    }

    /// Handshakes that failed so far.
    pub fn handshake_failures(&self) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.starts_with("HANDSHAKE-FAILED"))
            .count()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits until `done` holds for the output lines (polls every 50 ms).
    pub fn wait_for(&self, done: impl Fn(&[String]) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.lines()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Kamailio (5.6, its `tls` module: OpenSSL) as a TLS proxy: listens TLS on a
/// free 127.0.0.1 port with certificate `NAME.crt` of a [`CertDir`] (not asking
/// for a client certificate), record-routes (double Record-Route: TLS towards
/// sipvane, UDP towards the callee) and relays initial requests to `next` over
/// UDP, in-dialog ones along their Route set.
pub struct KamailioTls {
    addr: SocketAddr,
    dir: super::process::WorkDir,
    _child: ChildGuard,
}

impl KamailioTls {
    pub fn start(certs: &CertDir, name: &str, next: SocketAddr) -> KamailioTls {
        let bin = super::process::require_binary("kamailio", "install it with scripts/deps.sh");
        let modules = [
            "/usr/lib/x86_64-linux-gnu/kamailio/modules",
            "/usr/lib/kamailio/modules",
        ]
        .into_iter()
        .find(|p| Path::new(p).join("tls.so").exists())
        .expect("kamailio's tls module (kamailio-tls-modules; scripts/deps.sh)");
        let dir = super::process::WorkDir::new("kamailio", "tls");
        let tls = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let udp = super::net::free_udp_addr();
        let cfg = format!(
            r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
tcp_children=1
enable_tls=yes
listen=udp:{udp}
listen=tls:{tls}
mpath="{modules}/"
loadmodule "pv.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "siputils.so"
loadmodule "tls.so"
modparam("tls", "tls_method", "TLSv1.2+")
modparam("tls", "certificate", "{cert}")
modparam("tls", "private_key", "{key}")
modparam("tls", "verify_certificate", 0)
modparam("tls", "require_certificate", 0)
request_route {{
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if ($rm == "ACK" && t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if ($rm == "CANCEL") {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    record_route();
    $du = "sip:{next}";
    t_relay();
}}
"#,
            cert = certs.path(&format!("{name}.crt")),
            key = certs.path(&format!("{name}.key")),
        );
        let path = dir.file("kamailio.cfg");
        std::fs::write(&path, cfg).expect("write kamailio.cfg");
        let log = std::fs::File::create(dir.file("kamailio.log")).expect("kamailio.log");
        let child = ChildGuard::spawn(
            Command::new(bin)
                .arg("-f")
                .arg(&path)
                .args(["-DD", "-E", "-w"])
                .arg(dir.path())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        )
        .expect("run kamailio");
        let k = KamailioTls {
            addr: tls,
            dir,
            _child: child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(tls).is_err() {
            assert!(
                Instant::now() < deadline,
                "kamailio did not start:\n{}",
                k.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        k
    }

    /// Its TLS listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.file("kamailio.log")).unwrap_or_default()
    }
}
