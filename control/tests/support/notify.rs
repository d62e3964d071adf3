//! A stand-in for systemd's notification socket (`sd_notify(3)`): a Unix
//! datagram socket the test binds; its path goes into the child's
//! `NOTIFY_SOCKET`, and every datagram the child sends is kept.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The socket and the messages received so far, in order.
pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    messages: Vec<String>,
}

impl NotifySocket {
    /// Binds `dir/notify.sock`, writable by any user (a service may drop
    /// privileges before it notifies).
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .expect("chmod notify socket");
        NotifySocket {
            sock,
            path,
            messages: Vec::new(),
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every datagram received so far.
    pub fn messages(&self) -> &[String] {
        &self.messages
    }

    /// How many datagrams so far carry the line `line` (e.g. `READY=1`).
    pub fn count(&self, line: &str) -> usize {
        self.messages
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }

    /// Receives until `line` has arrived `n` times in all, or `timeout`
    /// passes; true when it did. `on_message` sees each new datagram as it
    /// arrives (to check what holds at that moment).
    pub fn wait_for(
        &mut self,
        line: &str,
        n: usize,
        timeout: Duration,
        mut on_message: impl FnMut(&str),
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while self.count(line) < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.sock
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .expect("set_read_timeout");
            match self.sock.recv(&mut buf) {
                Ok(len) => {
                    let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
                    on_message(&msg);
                    self.messages.push(msg);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv on {}: {e}", self.path.display()),
            }
        }
        true
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
