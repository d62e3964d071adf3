//! Child processes that never outlive the test, and per-run scratch directories.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Root of the crate's repository checkout (the workspace root).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Runs `cmd` to its exit and returns its output, for a program expected to
/// stop by itself (a refusal to start, say). It is killed, failing the test
/// with `what`, if it is still running after `limit`, so a regression that
/// keeps it running cannot hang the suite. Meant for short outputs (a full
/// pipe would stall the child until the limit).
pub fn output_within(cmd: &mut Command, limit: Duration, what: &str) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait for child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("child output")
}

/// Looks `name` up in `PATH` (or takes it as is when it contains a `/`).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Returns the path of binary `name` or panics with `hint` (how to install it).
/// Tests that need a real peer must fail loudly when it is missing, never skip.
pub fn require_binary(name: &str, hint: &str) -> PathBuf {
    which(name).unwrap_or_else(|| panic!("{name} not found: {hint}"))
}

/// A spawned child that is killed (SIGKILL) and reaped when dropped, so a
/// panicking test leaves no process behind. The child also gets
/// `PR_SET_PDEATHSIG = SIGKILL`, so it dies if the test binary itself is
/// killed. Note that the "parent" for PDEATHSIG is the *thread* that spawned
/// it: spawn from the test's own thread, not from a short-lived helper thread.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` with the parent-death signal set.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildGuard> {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(ChildGuard {
            child: Some(child),
            status: None,
        })
    }

    /// The child's stdout, when spawned with `Stdio::piped()` (once).
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// Process id (while it has not been reaped).
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Exit status if the child has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    self.status = Some(st);
                }
            }
        }
        self.status
    }

    /// True while the child runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Sends `sig` (e.g. `libc::SIGINT`) if the child still runs.
    pub fn signal(&mut self, sig: i32) {
        if self.is_running() {
            if let Some(pid) = self.id() {
                // SAFETY: plain syscall on a pid we own and have not reaped.
                unsafe {
                    libc::kill(pid as libc::pid_t, sig);
                }
            }
        }
    }

    /// Waits until the child exits or `timeout` passes; `None` on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig`, waits up to `grace`, then SIGKILLs; returns the exit status.
    pub fn stop(&mut self, sig: i32, grace: Duration) -> Option<ExitStatus> {
        self.signal(sig);
        if let Some(st) = self.wait_timeout(grace) {
            return Some(st);
        }
        self.kill()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
                if let Ok(st) = child.wait() {
                    self.status = Some(st);
                }
            }
        }
        self.status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scratch directory under cargo's per-test tmp dir (`target/tmp`). Removed
/// on drop, except while panicking: the logs of a failed test are kept and
/// their location printed.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `target/tmp/<group>/<name>-<pid>-<n>`.
    pub fn new(group: &str, name: &str) -> WorkDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(group)
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        WorkDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file inside it.
    pub fn file(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// Content of a file inside it ("" when missing).
    pub fn read(&self, name: &str) -> String {
        std::fs::read(self.path.join(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
