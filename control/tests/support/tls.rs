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
        openssl_req(&[
            "-subj",
            &format!("/CN={name}"),
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
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls_sip_server.py");
        let port = free_tcp_port();
        let mut child = ChildGuard::spawn(
            Command::new("python3")
                .arg(script)
                .args(["127.0.0.1", &port.to_string()])
                .arg(certs.path(&format!("{name}.crt")))
                .arg(certs.path(&format!("{name}.key")))
                .arg("120")
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
