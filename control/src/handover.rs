//! Restart and upgrade without dropped calls: the running process hands its
//! SIP sockets, its branch and key secrets and the keys of its open
//! transactions to a new process over `[mgmt] handover_socket`, then drains.
//!
//! 1. The new process (same configuration, possibly a new binary) connects
//!    before it starts its workers and says which addresses it will serve.
//! 2. The old one checks the peer runs as the same user and serves the same
//!    addresses, makes its workers stop reading their public and private
//!    sockets (what is still queued there is the new process's to read), and
//!    sends: its epoch and secrets, the sockets (SCM_RIGHTS), its management
//!    API listener, one end of a Unix datagram pair, and the transaction keys.
//! 3. The new process starts its workers on those sockets with a new epoch
//!    under the same secrets. A response whose branch opens to the old epoch,
//!    or a request of a transaction the old process reported, is relayed over
//!    the datagram pair; the old process serves it until its transactions end
//!    (bounded), then exits 0 and closes this connection: from then on the new
//!    process relays nothing.
//!
//! Wire format: length-prefixed JSON ([`Hello`], [`Offer`]), then one
//! `sendmsg` carrying the descriptors, then one length-prefixed report per
//! worker (16-byte transaction keys).

use std::io::{Read, Write};
use std::mem;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dataplane::proxy::HANDED_OVER;
use dataplane::worker::{handover as frame, Injector, Pool};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// `sipvane ctl restart`: starts a new process that takes over this one.
#[derive(Debug)]
pub struct Restarter {
    /// The binary this process was started from, as a path: after a package
    /// upgrade it names the new binary.
    exe: Option<std::path::PathBuf>,
    args: Vec<std::ffi::OsString>,
    /// Whether `[mgmt] handover_socket` is set.
    enabled: bool,
    /// The pid of the process this one handed over to (0: none yet).
    pub handed_to: std::sync::atomic::AtomicU32,
    /// A restart is under way.
    pub busy: AtomicBool,
}

impl Restarter {
    /// Captured at start: the binary's path and the command-line arguments.
    pub fn new(enabled: bool) -> Restarter {
        Restarter {
            exe: std::env::current_exe().ok(),
            args: std::env::args_os().skip(1).collect(),
            enabled,
            handed_to: std::sync::atomic::AtomicU32::new(0),
            busy: AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Starts the binary at the path this process was started from, with the
    /// same arguments and environment; it takes over through the hand-over
    /// socket. Its output goes where this process's goes.
    pub fn spawn(&self) -> std::io::Result<std::process::Child> {
        let exe = self.exe.as_ref().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "this process's binary path is unknown",
            )
        })?;
        std::process::Command::new(exe)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .spawn()
    }
}

/// The public and the private port of each worker are handed over.
pub const SOCKETS_PER_WORKER: usize = 2;
/// Largest JSON message or report accepted (a report is 16 bytes per open
/// transaction).
const MAX_MESSAGE: usize = 64 << 20;
/// How long either side waits for the other during the exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const PROTOCOL: u32 = 1;

/// New → old: who asks and what it will serve.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    pid: u32,
    listen: SocketAddr,
    private_ports: Vec<u16>,
}

/// Old → new: the answer.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    /// Why the old process refuses; `None`: descriptors and reports follow.
    refused: Option<String>,
    pid: u32,
    epoch: u16,
    branch_secret: [u64; 4],
    key_seed: [u64; 4],
    workers: usize,
    /// The management API listener follows the SIP sockets.
    mgmt: bool,
}

/// What the new process got from the old one.
#[derive(Debug)]
pub struct Taken {
    pub pid: u32,
    pub epoch: u16,
    pub branch_secret: [u64; 4],
    pub key_seed: [u64; 4],
    /// By worker: public, private.
    pub sockets: Vec<Vec<UdpSocket>>,
    pub mgmt: Option<TcpListener>,
    /// Where datagrams of the old process's transactions go.
    pub relay: UnixDatagram,
    /// Each worker's transaction keys.
    pub reports: Vec<Vec<u8>>,
    /// Closed by the old process when it exits.
    pub connection: UnixStream,
}

/// Asks a running sipvane at `path` to hand over. `Ok(None)` when nothing
/// listens there (a plain start); an error when one listens but refuses or
/// the exchange fails (two processes must never serve the same ports).
pub fn take(path: &Path, listen: SocketAddr, private_ports: &[u16]) -> Result<Option<Taken>> {
    let mut conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot reach a running sipvane to take over from; starting afresh");
            return Ok(None);
        }
    };
    let ctx = || format!("taking over from the sipvane at {}", path.display());
    conn.set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .with_context(ctx)?;
    conn.set_write_timeout(Some(EXCHANGE_TIMEOUT))
        .with_context(ctx)?;
    let hello = Hello {
        protocol: PROTOCOL,
        pid: std::process::id(),
        listen,
        private_ports: private_ports.to_vec(),
    };
    write_message(&mut conn, &serde_json::to_vec(&hello)?).with_context(ctx)?;
    let offer: Offer =
        serde_json::from_slice(&read_message(&mut conn).with_context(ctx)?).with_context(ctx)?;
    if let Some(why) = offer.refused {
        bail!(
            "the running sipvane (pid {}) refused to hand over: {why}; stop it first or fix [mgmt] handover_socket",
            offer.pid
        );
    }
    let want = offer.workers * SOCKETS_PER_WORKER + 1 + usize::from(offer.mgmt);
    let mut fds = recv_fds(&conn, want).with_context(ctx)?.into_iter();
    let mut sockets = Vec::with_capacity(offer.workers);
    for _ in 0..offer.workers {
        let mut w = Vec::with_capacity(SOCKETS_PER_WORKER);
        for _ in 0..SOCKETS_PER_WORKER {
            let fd = fds
                .next()
                .ok_or_else(|| anyhow!("{}: too few sockets", ctx()))?;
            w.push(UdpSocket::from(fd));
        }
        sockets.push(w);
    }
    let relay = UnixDatagram::from(
        fds.next()
            .ok_or_else(|| anyhow!("{}: no relay socket", ctx()))?,
    );
    let mgmt = if offer.mgmt {
        fds.next().map(TcpListener::from)
    } else {
        None
    };
    let mut reports = Vec::with_capacity(offer.workers);
    for _ in 0..offer.workers {
        reports.push(read_message(&mut conn).with_context(ctx)?);
    }
    conn.set_read_timeout(None).with_context(ctx)?;
    Ok(Some(Taken {
        pid: offer.pid,
        epoch: offer.epoch,
        branch_secret: offer.branch_secret,
        key_seed: offer.key_seed,
        sockets,
        mgmt,
        relay,
        reports,
        connection: conn,
    }))
}

/// Listens at `path` for the next process (replacing whatever socket file is
/// there: by now nothing answers on it, or its owner handed over to us).
/// `None`, with a warning, when the path cannot be used.
pub fn listen(path: &Path) -> Option<UnixListener> {
    if path.as_os_str().is_empty() {
        return None;
    }
    let bound = (|| -> std::io::Result<UnixListener> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Created owner-only: whoever connects gets the process's sockets.
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o177) };
        let l = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let l = l?;
        l.set_nonblocking(true)?;
        Ok(l)
    })();
    match bound {
        Ok(l) => {
            info!(path = %path.display(), "restart hand-over socket ready");
            Some(l)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "restarts will drop transactions in flight: cannot listen for a hand-over (set [mgmt] handover_socket)");
            None
        }
    }
}

/// What the old process serves, to check the new one against.
pub struct Serving<'a> {
    pub pool: &'a Pool,
    pub listen: SocketAddr,
    pub private_ports: &'a [u16],
    pub epoch: u16,
    pub branch_secret: [u64; 4],
    pub key_seed: [u64; 4],
    pub mgmt: Option<&'a TcpListener>,
    /// The process this one took over from, while it may still drain.
    pub predecessor: Option<(u32, &'a dataplane::proxy::predecessor::Predecessor)>,
}

/// Old side: answers one connection. `Ok(Some(relay))` when the sockets were
/// handed over (the workers no longer read them; datagrams for our
/// transactions arrive on `relay`), `Ok(None)` when the peer was refused.
///
/// An error means the workers may have stopped reading already: the process
/// can no longer serve and must stop. Problems before that are logged and
/// answered `Ok(None)`.
pub fn give(conn: &mut UnixStream, serving: &Serving<'_>) -> Result<Option<UnixDatagram>> {
    let hello = (|| -> Result<(Hello, u32)> {
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
        conn.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
        let uid = peer_uid(conn)?;
        Ok((serde_json::from_slice(&read_message(conn)?)?, uid))
    })();
    let (hello, peer_uid) = match hello {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "ignored a broken hand-over request");
            return Ok(None);
        }
    };
    // SAFETY: geteuid has no failure mode.
    let our_uid = unsafe { libc::geteuid() };
    let mut offer = Offer {
        refused: None,
        pid: std::process::id(),
        epoch: serving.epoch,
        branch_secret: [0; 4],
        key_seed: [0; 4],
        workers: serving.pool.workers(),
        mgmt: serving.mgmt.is_some(),
    };
    let draining = serving.predecessor.filter(|(_, p)| !p.is_gone());
    offer.refused = if let Some((pid, _)) = draining {
        // Its responses would reach a process that does not know its epoch.
        Some(format!(
            "the previous restart is still draining (pid {pid} serves its last transactions); try again once it has exited"
        ))
    } else if peer_uid != our_uid {
        Some(format!(
            "it runs as uid {peer_uid}, this process as {our_uid}"
        ))
    } else if hello.protocol != PROTOCOL {
        Some(format!(
            "hand-over protocol {} (this process speaks {PROTOCOL})",
            hello.protocol
        ))
    } else if hello.listen != serving.listen || hello.private_ports != serving.private_ports {
        Some(format!(
            "it would serve {} with private ports {:?}, this process serves {} with {:?}",
            hello.listen, hello.private_ports, serving.listen, serving.private_ports
        ))
    } else {
        None
    };
    if let Some(why) = &offer.refused {
        warn!(pid = hello.pid, "refused a hand-over: {why}");
        let _ = write_message(conn, &serde_json::to_vec(&offer)?);
        return Ok(None);
    }
    info!(
        pid = hello.pid,
        "handing the SIP sockets over to a new process"
    );
    let reports = serving
        .pool
        .handover(SOCKETS_PER_WORKER, EXCHANGE_TIMEOUT)
        .context("stopping the workers' reads")?;
    let (ours, theirs) = UnixDatagram::pair()?;
    // Room for bursts of relayed datagrams while our workers catch up.
    let _ = set_buffer(&ours, libc::SO_RCVBUF, 4 << 20);
    let _ = set_buffer(&theirs, libc::SO_SNDBUF, 4 << 20);
    ours.set_read_timeout(Some(Duration::from_millis(100)))?;
    offer.branch_secret = serving.branch_secret;
    offer.key_seed = serving.key_seed;
    write_message(conn, &serde_json::to_vec(&offer)?)?;
    let mut fds: Vec<RawFd> = Vec::new();
    for w in 0..serving.pool.workers() {
        let socks = serving.pool.sockets(w);
        if socks.len() < SOCKETS_PER_WORKER {
            bail!("worker {w} has {} sockets", socks.len());
        }
        fds.extend(socks[..SOCKETS_PER_WORKER].iter().map(AsRawFd::as_raw_fd));
    }
    fds.push(theirs.as_raw_fd());
    if let Some(m) = serving.mgmt {
        fds.push(m.as_raw_fd());
    }
    send_fds(conn, &fds)?;
    drop(theirs);
    let open: usize = reports.iter().map(|r| r.len() / 16).sum();
    for r in &reports {
        write_message(conn, r)?;
    }
    info!(
        pid = hello.pid,
        transactions = open,
        "handed over; serving open transactions until they end"
    );
    Ok(Some(ours))
}

/// Old side: a thread that feeds datagrams the new process relays to the
/// workers, until `stop`.
pub fn relay_thread(
    relay: UnixDatagram,
    injector: Injector,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sipvane-relay".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024 + frame::HEADER];
            while !stop.load(Ordering::Relaxed) {
                let n = match relay.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue
                    }
                    Err(_) => break,
                };
                if let Some((worker, socket, src, data)) = frame::decode(&buf[..n]) {
                    injector.inject(usize::from(worker), socket | HANDED_OVER, src, data);
                }
            }
        })
}

fn write_message(conn: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    conn.write_all(&len.to_be_bytes())?;
    conn.write_all(body)
}

fn read_message(conn: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("hand-over message of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    Ok(body)
}

fn peer_uid(conn: &UnixStream) -> std::io::Result<u32> {
    peer_cred(conn).map(|c| c.uid)
}

/// The credentials of the process at the other end of `conn` (SO_PEERCRED).
pub fn peer_cred(conn: &UnixStream) -> std::io::Result<libc::ucred> {
    // SAFETY: all-zero is a valid ucred.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

fn set_buffer(sock: &UnixDatagram, opt: libc::c_int, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: passes a valid c_int of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&bytes as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's limit of descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
const MAX_FDS: usize = 253;

fn send_fds(conn: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} descriptors to pass, at most {MAX_FDS}", fds.len()),
        ));
    }
    let payload = mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut byte = [b'F'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: all-zero is a valid msghdr; every pointer set below stays valid
    // for the duration of the sendmsg call.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer has room for one header of `payload` bytes.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
    }
    // SAFETY: `msg` is fully initialised above.
    let r = unsafe { libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if r != 1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn recv_fds(conn: &UnixStream, want: usize) -> std::io::Result<Vec<OwnedFd>> {
    if want > MAX_FDS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{want} descriptors announced, at most {MAX_FDS}"),
        ));
    }
    let payload = want * mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: as in send_fds.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at buffers that live across the call.
    let r = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::with_capacity(want);
    // SAFETY: walking the control messages the kernel wrote into `cbuf`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let n = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / mem::size_of::<RawFd>();
                for i in 0..n {
                    // Each descriptor is new in this process and ours alone.
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if r != 1 || msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() != want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected {want} descriptors, got {}", fds.len()),
        ));
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_pass_over_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let (x, _y) = UnixDatagram::pair().unwrap();
        send_fds(&a, &[udp.as_raw_fd(), x.as_raw_fd()]).unwrap();
        let got = recv_fds(&b, 2).unwrap();
        let passed = UdpSocket::from(got.into_iter().next().unwrap());
        // The same socket, not a new one on the same address.
        assert_eq!(passed.local_addr().unwrap(), addr);
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.send_to(b"x", addr).unwrap();
        passed
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(passed.recv(&mut buf).unwrap(), 1);
    }

    #[test]
    fn a_message_announcing_too_much_is_refused() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let err = read_message(&mut b).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn fewer_descriptors_than_announced_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        send_fds(&a, &[udp.as_raw_fd()]).unwrap();
        assert!(recv_fds(&b, 2).is_err());
    }
}
