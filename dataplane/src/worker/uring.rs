//! io_uring driver: one ring per worker, a multishot `RecvMsg` per socket fed by a
//! provided-buffer ring, all sends of a turn submitted as one batch of `SendMsg`,
//! and a `Read` on the worker's eventfd for wakeups.
//!
//! Memory the kernel may touch (receive buffers, the recv `msghdr`, the eventfd
//! read buffer, send headers and payloads) lives in [`Mem`], which is only freed
//! once every operation has completed (see [`Uring::quiesce`]); if that cannot be
//! established it is leaked rather than risk the kernel writing into freed memory.

use std::io;
use std::mem::{self, ManuallyDrop};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use socket2::SockAddr;

use super::shell::{sockaddr_from_bytes, Shell};
use super::stream::Streams;
use super::{is_stream, Core, Io, Outbox, SocketId};

const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;
/// Provided receive buffers per worker (a power of two).
const BUF_COUNT: u16 = 256;
/// Size of one receive buffer: the kernel's `io_uring_recvmsg_out` header and the
/// source address come first, so the largest datagram accepted is
/// `BUF_SIZE - RECV_OVERHEAD` (≈ 16 KiB, well above any SIP-over-UDP message;
/// bigger ones are dropped and counted as truncated).
const BUF_SIZE: usize = 16 * 1024;
const BGID: u16 = 0;
/// Room for the source address: `sockaddr_in6` covers both families.
const NAME_LEN: usize = mem::size_of::<libc::sockaddr_in6>();
/// Consecutive hard receive errors on one socket after which the worker gives up
/// (instead of spinning on re-arming a multishot receive that keeps failing).
const MAX_RECV_ERRORS: u32 = 64;

const TAG_SHIFT: u32 = 56;
const TAG_RECV: u64 = 1;
const TAG_SEND: u64 = 2;
const TAG_WAKE: u64 = 3;
const TAG_CANCEL: u64 = 4;
/// The `PollAdd` on the TCP side's own epoll fd (see `stream`).
const TAG_STREAMS: u64 = 5;
const PAYLOAD_MASK: u64 = (1 << TAG_SHIFT) - 1;

fn tag(kind: u64, payload: u64) -> u64 {
    (kind << TAG_SHIFT) | (payload & PAYLOAD_MASK)
}

fn os_err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// A ring with the flags we want, degrading on kernels that lack them.
fn build_ring() -> io::Result<IoUring> {
    let fast = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES);
    let ring = match fast {
        Ok(r) => r,
        // DEFER_TASKRUN / SINGLE_ISSUER need 6.1; the driver works without them.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)?,
        Err(e) => return Err(e),
    };
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)",
        ));
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Read::CODE, "READ"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks IORING_OP_{name}"),
            ));
        }
    }
    Ok(ring)
}

/// Anonymous, page-aligned, zeroed memory.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: anonymous private mapping; no file, no aliasing.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping created in `new`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) and the buffers it hands out.
struct BufRing {
    ring: Region,
    data: Region,
    count: u16,
    buf_size: usize,
    /// Our producer tail; published to the kernel by `commit`.
    tail: u16,
}

impl BufRing {
    fn new(count: u16, buf_size: usize) -> io::Result<Self> {
        debug_assert!(count.is_power_of_two());
        let ring = Region::new(usize::from(count) * mem::size_of::<BufRingEntry>())?;
        let data = Region::new(usize::from(count) * buf_size)?;
        let mut br = BufRing {
            ring,
            data,
            count,
            buf_size,
            tail: 0,
        };
        for bid in 0..count {
            br.push(bid);
        }
        br.commit();
        Ok(br)
    }

    fn register(&self, ring: &IoUring, bgid: u16) -> io::Result<()> {
        // SAFETY: the ring memory is page aligned, `count` entries long and stays
        // mapped until `Mem` is dropped after the ring is quiescent.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(self.ring.ptr as u64, self.count, bgid, 0)
        }
    }

    fn entries(&self) -> *mut BufRingEntry {
        self.ring.ptr.cast()
    }

    /// Gives buffer `bid` back to the kernel (visible after `commit`).
    fn push(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let idx = usize::from(self.tail & (self.count - 1));
        // SAFETY: `idx < count`, inside the mapping. The kernel only reads entries
        // between its head and our published tail, and this slot is past the tail.
        let entry = unsafe { &mut *self.entries().add(idx) };
        entry.set_addr(self.data.ptr as u64 + u64::from(bid) * self.buf_size as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn commit(&self) {
        // SAFETY: the tail field lives in the first entry of our mapping and is
        // shared with the kernel, hence the atomic release store.
        unsafe {
            let tail = BufRingEntry::tail(self.entries()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, which the kernel has handed to us.
    fn get(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.count || len > self.buf_size {
            return None;
        }
        // SAFETY: in bounds of the data mapping; the kernel wrote this buffer and
        // will not touch it again until we `push` it back.
        Some(unsafe {
            std::slice::from_raw_parts(self.data.ptr.add(usize::from(bid) * self.buf_size), len)
        })
    }
}

/// One batch of sends: the outbox that owns the payloads plus the kernel-facing
/// headers, all kept until every `SendMsg` of the batch has completed.
struct SendSlot {
    out: Outbox,
    fds: Vec<RawFd>,
    addrs: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::msghdr>,
    pending: usize,
}

impl SendSlot {
    fn new() -> Self {
        SendSlot {
            out: Outbox::new(),
            fds: Vec::new(),
            addrs: Vec::new(),
            iovs: Vec::new(),
            hdrs: Vec::new(),
            pending: 0,
        }
    }
}

fn recv_msghdr() -> Box<libc::msghdr> {
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut h: libc::msghdr = unsafe { mem::zeroed() };
    h.msg_namelen = NAME_LEN as libc::socklen_t;
    Box::new(h)
}

/// Everything the kernel may read or write while operations are in flight.
struct Mem {
    bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    wake_buf: Box<u64>,
    slots: Vec<SendSlot>,
}

/// Driver state other than the ring itself, so completions can be handled while
/// the completion queue borrows the ring.
struct State {
    sockets: Vec<UdpSocket>,
    mem: ManuallyDrop<Mem>,
    armed: Vec<bool>,
    /// Sockets handed over to a successor: their receive is cancelled and
    /// never re-armed.
    muted: Vec<bool>,
    recv_errors: Vec<u32>,
    wake_armed: bool,
    /// Slot whose outbox the core is currently filling (never has sends pending).
    cur: usize,
    /// TCP listener and connections; `None` without TCP.
    streams: Option<Streams>,
    /// A `PollAdd` on the streams' fd is in flight.
    streams_armed: bool,
}

pub(crate) struct Uring {
    ring: IoUring,
    st: State,
}

impl Uring {
    pub fn new(sockets: Vec<UdpSocket>, streams: Option<Streams>) -> io::Result<Self> {
        let mut u = Self::with_buffers(sockets, BUF_COUNT, BUF_SIZE)?;
        u.st.streams = streams;
        Ok(u)
    }

    /// `buf_count` must be a power of two.
    fn with_buffers(sockets: Vec<UdpSocket>, buf_count: u16, buf_size: usize) -> io::Result<Self> {
        let ring = build_ring()?;
        let bufs = BufRing::new(buf_count, buf_size)?;
        bufs.register(&ring, BGID)?;
        let n = sockets.len();
        Ok(Uring {
            ring,
            st: State {
                sockets,
                mem: ManuallyDrop::new(Mem {
                    bufs,
                    recv_hdr: recv_msghdr(),
                    wake_buf: Box::new(0),
                    slots: vec![SendSlot::new()],
                }),
                armed: vec![false; n],
                muted: vec![false; n],
                recv_errors: vec![0; n],
                wake_armed: false,
                cur: 0,
                streams: None,
                streams_armed: false,
            },
        })
    }

    /// Queues an SQE, submitting (without waiting) to make room if the SQ is full.
    fn push(ring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
        for _ in 0..3 {
            // SAFETY: every entry we build points into `Mem`, which outlives the op.
            if unsafe { ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            match ring.submit() {
                Ok(_) => {}
                Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => {}
                Err(err) => return Err(err),
            }
        }
        // Counted like a full socket buffer; `ErrorKind` alone avoids an allocation.
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// (Re-)arms the multishot receives and the wakeup read that are not active.
    fn arm(&mut self, wake_fd: RawFd) -> io::Result<()> {
        for i in 0..self.st.sockets.len() {
            if self.st.armed[i] || self.st.muted[i] {
                continue;
            }
            if self.st.recv_errors[i] > MAX_RECV_ERRORS {
                return Err(io::Error::other(format!(
                    "socket {i}: receive keeps failing"
                )));
            }
            let fd = self.st.sockets[i].as_raw_fd();
            let hdr: *const libc::msghdr = &*self.st.mem.recv_hdr;
            let e = opcode::RecvMsgMulti::new(Fd(fd), hdr, BGID)
                .build()
                .user_data(tag(TAG_RECV, i as u64));
            Self::push(&mut self.ring, &e)?;
            self.st.armed[i] = true;
        }
        if !self.st.wake_armed {
            let buf: *mut u64 = &mut *self.st.mem.wake_buf;
            let e = opcode::Read::new(Fd(wake_fd), buf.cast(), 8)
                .build()
                .user_data(tag(TAG_WAKE, 0));
            Self::push(&mut self.ring, &e)?;
            self.st.wake_armed = true;
        }
        if let (Some(st), false) = (&self.st.streams, self.st.streams_armed) {
            let e = opcode::PollAdd::new(Fd(st.fd()), libc::POLLIN as u32)
                .build()
                .user_data(tag(TAG_STREAMS, 0));
            Self::push(&mut self.ring, &e)?;
            self.st.streams_armed = true;
        }
        Ok(())
    }

    /// Submits what is queued and waits for a completion or `timeout`.
    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn reap<C: Core>(&mut self, now: Instant, shell: &mut Shell<C>) {
        let st = &mut self.st;
        for cqe in self.ring.completion() {
            st.complete(cqe.user_data(), cqe.result(), cqe.flags(), now, shell);
        }
        st.mem.bufs.commit();
    }

    /// Routes this turn's handoffs and submits its sends as one batch.
    fn flush<C: Core>(&mut self, shell: &mut Shell<C>) -> io::Result<()> {
        let cur = self.st.cur;
        let State {
            sockets,
            mem,
            cur: cur_slot,
            streams,
            ..
        } = &mut self.st;
        let slot = &mut mem.slots[cur];
        if slot.out.is_empty() {
            return Ok(());
        }
        shell.capture_sends(&slot.out);
        shell.route_handoffs(&slot.out);

        slot.fds.clear();
        slot.addrs.clear();
        slot.iovs.clear();
        slot.hdrs.clear();
        let now = Instant::now();
        for (socket, dst, data) in slot.out.iter() {
            if is_stream(socket) {
                // Stream writes are plain non-blocking syscalls (see `stream`).
                match streams.as_mut() {
                    Some(st) => st.send(now, socket, dst, data, shell),
                    None => shell.counters.tcp.no_connection += 1,
                }
                continue;
            }
            let Some(sock) = sockets.get(usize::from(socket)) else {
                shell.counters.sent(
                    // An id the core made up; `ErrorKind` alone avoids an allocation.
                    Err(io::ErrorKind::InvalidInput.into()),
                );
                continue;
            };
            slot.fds.push(sock.as_raw_fd());
            slot.addrs.push(SockAddr::from(dst));
            slot.iovs.push(libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            });
        }
        // Headers point into `addrs` / `iovs`, which are complete and will not
        // reallocate before the batch has completed.
        let iovs = slot.iovs.as_mut_ptr();
        for (k, addr) in slot.addrs.iter().enumerate() {
            // SAFETY: all-zero is a valid msghdr.
            let mut h: libc::msghdr = unsafe { mem::zeroed() };
            h.msg_name = addr.as_ptr() as *mut libc::c_void;
            h.msg_namelen = addr.len();
            // SAFETY: `k < iovs.len()`.
            h.msg_iov = unsafe { iovs.add(k) };
            h.msg_iovlen = 1;
            slot.hdrs.push(h);
        }

        let mut pushed = 0;
        for (k, (&fd, hdr)) in slot.fds.iter().zip(&slot.hdrs).enumerate() {
            // MSG_DONTWAIT makes the kernel fail a send on a full socket buffer with
            // EAGAIN (dropped and counted) instead of parking it.
            let e = opcode::SendMsg::new(Fd(fd), hdr)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .user_data(tag(TAG_SEND, ((cur as u64) << 32) | k as u64));
            match Self::push(&mut self.ring, &e) {
                Ok(()) => pushed += 1,
                Err(err) => shell.counters.sent(Err(err)),
            }
        }
        slot.pending = pushed;
        if pushed > 0 {
            // The payloads must stay put until the sends complete: continue in a
            // free slot (there is almost always one; a new one is made only while
            // the kernel still holds the others).
            *cur_slot = match mem.slots.iter().position(|s| s.pending == 0) {
                Some(i) => i,
                None => {
                    mem.slots.push(SendSlot::new());
                    mem.slots.len() - 1
                }
            };
        }
        mem.slots[*cur_slot].out.clear();
        Ok(())
    }

    /// Restart hand-over: cancels the receives on the first `k` sockets (their
    /// completions still deliver what was read) and reports once none is
    /// armed any more.
    fn hand_over<C: Core>(&mut self, k: usize, now: Instant, shell: &mut Shell<C>) {
        for i in 0..k.min(self.st.sockets.len()) {
            if self.st.muted[i] {
                continue;
            }
            self.st.muted[i] = true;
            if self.st.armed[i] {
                let e = opcode::AsyncCancel::new(tag(TAG_RECV, i as u64))
                    .build()
                    .user_data(tag(TAG_CANCEL, 0));
                if Self::push(&mut self.ring, &e).is_err() {
                    tracing::warn!(socket = i, "could not queue the cancel of a receive");
                }
            }
        }
        let reading = (0..k.min(self.st.sockets.len())).any(|i| self.st.armed[i]);
        if !reading {
            shell.report_handover(now);
        }
    }

    /// Cancels the multishot receives and the wakeup read and waits (bounded) for
    /// every operation to finish. `true` when nothing is in flight any more.
    fn quiesce(&mut self, wake_fd: Option<RawFd>) -> bool {
        let deadline = Instant::now() + Duration::from_millis(500);
        for i in 0..self.st.sockets.len() {
            if self.st.armed[i] {
                let e = opcode::AsyncCancel::new(tag(TAG_RECV, i as u64))
                    .build()
                    .user_data(tag(TAG_CANCEL, 0));
                let _ = Self::push(&mut self.ring, &e);
            }
        }
        if self.st.streams_armed {
            let e = opcode::AsyncCancel::new(tag(TAG_STREAMS, 0))
                .build()
                .user_data(tag(TAG_CANCEL, 0));
            let _ = Self::push(&mut self.ring, &e);
        }
        if self.st.wake_armed {
            // Completing the read is simpler and surer than cancelling it.
            match wake_fd {
                Some(fd) => {
                    let one: u64 = 1;
                    // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
                    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
                }
                None => {
                    let e = opcode::AsyncCancel::new(tag(TAG_WAKE, 0))
                        .build()
                        .user_data(tag(TAG_CANCEL, 0));
                    let _ = Self::push(&mut self.ring, &e);
                }
            }
        }
        loop {
            let busy = self.st.armed.iter().any(|a| *a)
                || self.st.wake_armed
                || self.st.streams_armed
                || self.st.mem.slots.iter().any(|s| s.pending > 0);
            if !busy {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || self.wait(Duration::from_millis(10)).is_err() {
                return false;
            }
            for cqe in self.ring.completion() {
                self.st.retire(cqe.user_data(), cqe.flags());
            }
            self.st.mem.bufs.commit();
        }
    }
}

impl State {
    fn complete<C: Core>(
        &mut self,
        ud: u64,
        res: i32,
        flags: u32,
        now: Instant,
        shell: &mut Shell<C>,
    ) {
        let payload = ud & PAYLOAD_MASK;
        match ud >> TAG_SHIFT {
            TAG_RECV => self.on_recv(payload as usize, res, flags, now, shell),
            TAG_SEND => {
                self.retire(ud, flags);
                shell
                    .counters
                    .sent(if res < 0 { Err(os_err(-res)) } else { Ok(()) });
            }
            TAG_WAKE => {
                self.wake_armed = false;
                if res < 0 && res != -libc::ECANCELED {
                    tracing::debug!(error = %os_err(-res), "eventfd read failed");
                }
            }
            TAG_STREAMS => {
                self.streams_armed = false;
                if let Some(st) = self.streams.as_mut() {
                    st.wake();
                }
            }
            _ => {}
        }
    }

    fn on_recv<C: Core>(
        &mut self,
        i: usize,
        res: i32,
        flags: u32,
        now: Instant,
        shell: &mut Shell<C>,
    ) {
        if i >= self.armed.len() {
            return;
        }
        if !cqueue::more(flags) {
            // The kernel ended the multishot (ENOBUFS, error, cancel): re-armed next turn.
            self.armed[i] = false;
        }
        if res < 0 {
            match -res {
                libc::ECANCELED => {}
                libc::ENOBUFS => shell.counters.recv_buffers_exhausted += 1,
                code => {
                    shell.counters.recv_errors += 1;
                    self.recv_errors[i] += 1;
                    tracing::debug!(socket = i, error = %os_err(code), "multishot recvmsg failed");
                }
            }
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.mem.bufs.push(bid);
            }
            return;
        }
        self.recv_errors[i] = 0;
        let Some(bid) = cqueue::buffer_select(flags) else {
            shell.counters.recv_errors += 1;
            return;
        };
        let mem = &mut *self.mem;
        let parsed = mem
            .bufs
            .get(bid, res as usize)
            .and_then(|buf| RecvMsgOut::parse(buf, &mem.recv_hdr).ok());
        match parsed {
            Some(msg) if msg.is_payload_truncated() => shell.counters.truncated += 1,
            Some(msg) => match sockaddr_from_bytes(msg.name_data()) {
                Some(src) => {
                    // `i` < 256 is guaranteed by `start`.
                    let id = SocketId::try_from(i).unwrap_or(SocketId::MAX);
                    let out = &mut mem.slots[self.cur].out;
                    shell.deliver(now, id, src, msg.payload_data(), out);
                }
                None => shell.counters.recv_errors += 1,
            },
            None => shell.counters.recv_errors += 1,
        }
        mem.bufs.push(bid);
    }

    /// Bookkeeping of a completion without delivering anything (also used while
    /// shutting down).
    fn retire(&mut self, ud: u64, flags: u32) {
        let payload = ud & PAYLOAD_MASK;
        match ud >> TAG_SHIFT {
            TAG_RECV => {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.mem.bufs.push(bid);
                }
                if !cqueue::more(flags) {
                    if let Some(a) = self.armed.get_mut(payload as usize) {
                        *a = false;
                    }
                }
            }
            TAG_SEND => {
                if let Some(s) = self.mem.slots.get_mut((payload >> 32) as usize) {
                    s.pending = s.pending.saturating_sub(1);
                }
            }
            TAG_WAKE => self.wake_armed = false,
            TAG_STREAMS => self.streams_armed = false,
            _ => {}
        }
    }
}

impl Io for Uring {
    fn run<C: Core>(&mut self, shell: &mut Shell<C>) -> io::Result<()> {
        let wake_fd = shell
            .wake_fd()
            .ok_or_else(|| io::Error::other("io_uring worker without a wakeup eventfd"))?;
        if let Some(public) = self.st.sockets.first() {
            shell.watch_backlog(public.as_raw_fd());
        }
        let result = (|| {
            while !shell.stopping() {
                self.arm(wake_fd)?;
                let busy = self.st.streams.as_ref().is_some_and(Streams::busy);
                let wait = if busy {
                    Duration::ZERO
                } else {
                    shell.wait_time(Instant::now())
                };
                self.wait(wait)?;
                let now = Instant::now();
                self.reap(now, shell);
                if let Some(k) = shell.handover_requested() {
                    self.hand_over(k, now, shell);
                }
                let out = &mut self.st.mem.slots[self.st.cur].out;
                if let Some(st) = self.st.streams.as_mut() {
                    st.turn(now, shell, out);
                }
                shell.poll_handoffs(now, out);
                shell.poll_timer(now, out);
                self.flush(shell)?;
                shell.end_turn(now);
            }
            Ok(())
        })();
        if let Some(st) = self.st.streams.as_mut() {
            st.shutdown(shell);
        }
        if !self.quiesce(Some(wake_fd)) {
            tracing::warn!(
                worker = shell.index,
                "io_uring operations still in flight at shutdown; leaking their buffers"
            );
        }
        result
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let quiet = !self.st.armed.iter().any(|a| *a)
            && !self.st.wake_armed
            && !self.st.streams_armed
            && !self.st.mem.slots.iter().any(|s| s.pending > 0);
        if quiet || self.quiesce(None) {
            // SAFETY: nothing in flight references `mem` any more; dropped once.
            unsafe { ManuallyDrop::drop(&mut self.st.mem) };
        }
        // Otherwise `mem` is leaked on purpose (see the module docs).
    }
}

/// Checks that this kernel runs the io_uring driver: ring features, opcodes,
/// buffer-ring registration and a multishot `RecvMsg` round trip on loopback.
pub(crate) fn probe() -> io::Result<()> {
    let mut ring = build_ring()?;
    let bufs = BufRing::new(8, 2048)?;
    bufs.register(&ring, BGID)?;
    let hdr = recv_msghdr();
    let Ok(sock) = UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)) else {
        // No loopback to test on; what could be checked passed.
        return Ok(());
    };
    let addr: SocketAddr = sock.local_addr()?;
    let e = opcode::RecvMsgMulti::new(Fd(sock.as_raw_fd()), &*hdr, BGID)
        .build()
        .user_data(tag(TAG_RECV, 0));
    // SAFETY: `hdr` and `bufs` outlive the operation: it is cancelled and reaped
    // below, or both are leaked.
    unsafe { ring.submission().push(&e) }
        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
    sock.send_to(b"probe", addr)?;

    let mut verdict = Ok(());
    let mut armed = true;
    let mut cancelled = false;
    let deadline = Instant::now() + Duration::from_millis(200);
    while armed && Instant::now() < deadline {
        let ts = Timespec::from(Duration::from_millis(20));
        match ring
            .submitter()
            .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
        {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
        let mut got_data = false;
        for cqe in ring.completion() {
            if cqe.user_data() != tag(TAG_RECV, 0) {
                continue;
            }
            if !cqueue::more(cqe.flags()) {
                armed = false;
            }
            match cqe.result() {
                res if res >= 0 => got_data = true,
                res if res == -libc::ECANCELED => {}
                res => verdict = Err(os_err(-res)),
            }
        }
        // Once the datagram came back (or the op was accepted but the datagram got
        // lost on a filtered loopback) multishot recvmsg is known to work.
        let near_end = Instant::now() + Duration::from_millis(40) >= deadline;
        if armed && !cancelled && (got_data || near_end) {
            let c = opcode::AsyncCancel::new(tag(TAG_RECV, 0))
                .build()
                .user_data(tag(TAG_CANCEL, 0));
            // SAFETY: a cancel references no memory.
            let _ = unsafe { ring.submission().push(&c) };
            cancelled = true;
        }
    }
    if armed {
        // Could not confirm the kernel is done with them: never free.
        mem::forget(bufs);
        mem::forget(hdr);
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::super::shell::{EventFd, Shared, Wake};
    use super::*;
    use std::sync::atomic::Ordering as AtomicOrdering;
    use std::sync::Arc;

    struct Echo;

    impl Core for Echo {
        fn on_datagram(
            &mut self,
            _: Instant,
            socket: SocketId,
            src: SocketAddr,
            data: &[u8],
            out: &mut Outbox,
        ) {
            out.send(socket, src, data);
        }
        fn on_timer(&mut self, _: Instant, _: &mut Outbox) {}
        fn next_deadline(&self) -> Option<Instant> {
            None
        }
    }

    /// With only 4 provided buffers and 40 datagrams already queued, the kernel must
    /// end the multishot receive with ENOBUFS; the driver re-arms it and every
    /// datagram is still echoed.
    #[test]
    fn rearms_multishot_after_buffer_exhaustion() {
        if std::env::var_os("SIPVANE_SKIP_URING").is_some() {
            return;
        }
        const N: usize = 40;
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let to = server.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        for i in 0..N {
            client.send_to(&(i as u32).to_be_bytes(), to).unwrap();
        }

        let shared = Arc::new(Shared::new(vec![Wake::EventFd(EventFd::new().unwrap())]));
        let mut shell = Shell::new(Echo, 0, Arc::clone(&shared));
        let mut io = Uring::with_buffers(vec![server], 4, 256).unwrap();

        let stopper = Arc::clone(&shared);
        let receiver = std::thread::spawn(move || {
            let mut seen = [false; N];
            let end = Instant::now() + Duration::from_secs(5);
            let mut buf = [0u8; 16];
            while seen.iter().any(|s| !s) && Instant::now() < end {
                if let Ok((4, _)) = client.recv_from(&mut buf) {
                    let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if let Some(s) = seen.get_mut(i) {
                        *s = true;
                    }
                }
            }
            stopper.stop.store(true, AtomicOrdering::Release);
            if let Wake::EventFd(e) = &stopper.workers[0].wake {
                e.wake();
            }
            seen.iter().filter(|s| **s).count()
        });
        io.run(&mut shell).unwrap();
        assert_eq!(receiver.join().unwrap(), N);
        let c = shell.counters;
        assert_eq!(c.datagrams_in, N as u64, "{c:?}");
        assert_eq!(c.datagrams_out, N as u64, "{c:?}");
        assert!(c.recv_buffers_exhausted >= 1, "{c:?}");
        assert_eq!(c.recv_errors, 0, "{c:?}");
    }

    #[test]
    fn oversized_datagram_is_counted_as_truncated() {
        if std::env::var_os("SIPVANE_SKIP_URING").is_some() {
            return;
        }
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let to = server.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // 256-byte buffers hold 256 - 16 - 28 = 212 payload bytes.
        client.send_to(&[7u8; 300], to).unwrap();
        client.send_to(&[8u8; 212], to).unwrap();

        let shared = Arc::new(Shared::new(vec![Wake::EventFd(EventFd::new().unwrap())]));
        let mut shell = Shell::new(Echo, 0, Arc::clone(&shared));
        let mut io = Uring::with_buffers(vec![server], 4, 256).unwrap();
        let stopper = Arc::clone(&shared);
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let end = Instant::now() + Duration::from_secs(5);
            let mut got = None;
            while got.is_none() && Instant::now() < end {
                if let Ok((len, _)) = client.recv_from(&mut buf) {
                    got = Some((len, buf[0]));
                }
            }
            stopper.stop.store(true, AtomicOrdering::Release);
            if let Wake::EventFd(e) = &stopper.workers[0].wake {
                e.wake();
            }
            got
        });
        io.run(&mut shell).unwrap();
        assert_eq!(receiver.join().unwrap(), Some((212, 8)));
        assert_eq!(shell.counters.truncated, 1);
        assert_eq!(shell.counters.datagrams_in, 1);
    }
}
