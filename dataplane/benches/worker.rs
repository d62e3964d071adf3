//! Loopback echo throughput of each I/O driver: one worker, one client thread
//! keeping a window of datagrams in flight. Rough numbers: client and worker share
//! the machine.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::worker::{start, Core, Driver, Outbox, SocketId, SocketSpec, WorkerSpec};

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

const WINDOW: usize = 64;
const BATCH: usize = 32;
/// A typical small SIP message size.
const PAYLOAD: [u8; 600] = [b's'; 600];

/// A client that batches with sendmmsg / recvmmsg, so that the worker, not the
/// client's syscalls, is the bottleneck.
struct Client {
    sock: UdpSocket,
    to: socket2::SockAddr,
    bufs: Vec<[u8; 2048]>,
    /// Windows given up as lost; reported so a lossy run is not mistaken for a slow one.
    timeouts: u64,
}

impl Client {
    fn new(to: SocketAddr) -> Self {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        sock.set_recv_buffer_size(1 << 20).unwrap();
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let sock: UdpSocket = sock.into();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Client {
            sock,
            to: to.into(),
            bufs: vec![[0u8; 2048]; BATCH],
            timeouts: 0,
        }
    }

    /// Sends `n` (≤ BATCH) datagrams with one syscall.
    fn send(&mut self, n: usize) {
        use std::os::fd::AsRawFd;
        let mut iov = libc::iovec {
            iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
            iov_len: PAYLOAD.len(),
        };
        // SAFETY: zeroed mmsghdr is valid; pointers refer to locals alive for the call.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for m in msgs.iter_mut().take(n) {
            m.msg_hdr.msg_name = self.to.as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = self.to.len();
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: `msgs[done..n]` are initialised above.
            let r = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    msgs.as_mut_ptr().add(done),
                    (n - done) as u32,
                    0,
                )
            };
            assert!(r > 0, "sendmmsg: {}", io::Error::last_os_error());
            done += r as usize;
        }
    }

    /// Receives up to BATCH echoes (at least one, or none after a timeout).
    fn recv(&mut self) -> usize {
        use std::os::fd::AsRawFd;
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as in `send`.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((m, iov), buf) in msgs
            .iter_mut()
            .zip(iovs.iter_mut())
            .zip(self.bufs.iter_mut())
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live buffer.
        let r = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{e}"
            );
            return 0;
        }
        r as usize
    }

    /// Runs until `count` echoes came back, keeping WINDOW in flight (a timeout
    /// counts the window as lost and refills it).
    fn run(&mut self, count: u64) {
        let mut in_flight = 0;
        let mut got = 0u64;
        while got < count {
            while in_flight < WINDOW {
                let n = BATCH.min(WINDOW - in_flight);
                self.send(n);
                in_flight += n;
            }
            let r = self.recv();
            if r == 0 {
                self.timeouts += 1;
                in_flight = 0;
            }
            in_flight -= r.min(in_flight);
            got += r as u64;
        }
        // Drain the tail so the next sample starts clean.
        while in_flight > 0 {
            let r = self.recv();
            if r == 0 {
                break;
            }
            in_flight -= r.min(in_flight);
        }
    }
}

fn echo(c: &mut Criterion) {
    let mut group = c.benchmark_group("worker_echo");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for driver in [Driver::Epoll, Driver::Uring] {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let specs = vec![WorkerSpec {
            sockets: vec![SocketSpec {
                recv_buffer: Some(1 << 20),
                ..SocketSpec::new(any)
            }],
            cpu: None,
            tcp: None,
        }];
        let Ok(pool) = start(driver, specs, |_| Echo) else {
            eprintln!("{driver} unavailable, skipped");
            continue;
        };
        let mut client = Client::new(pool.local_addrs(0)[0]);
        group.bench_function(driver.to_string(), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                client.run(iters);
                t.elapsed()
            })
        });
        if client.timeouts > 0 {
            eprintln!("{driver}: {} windows lost to timeouts", client.timeouts);
        }
        let st = &pool.stats()[0];
        eprintln!(
            "{driver}: {} datagrams in {} loop turns",
            st.datagrams_in, st.turns
        );
        pool.stop().unwrap();
    }
    group.finish();
}

criterion_group!(benches, echo);
criterion_main!(benches);
