//! Once warm, the receive → send path of both drivers must not allocate.
//!
//! A counting global allocator keeps a per-thread tally; the echo core, running on
//! the worker thread, reports its own thread's tally on request.

mod common;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dataplane::worker::{start, Core, Driver, Outbox, SocketId, SocketSpec, WorkerSpec};

/// Echoes, except that "allocs?" is answered with this thread's allocation count.
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
        if data == b"allocs?" {
            let n = common::allocs();
            out.send(socket, src, &n.to_be_bytes());
        } else {
            out.send(socket, src, data);
        }
    }
    fn on_timer(&mut self, _: Instant, _: &mut Outbox) {}
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

fn round_trip(sock: &UdpSocket, to: SocketAddr, msg: &[u8], buf: &mut [u8]) -> io::Result<usize> {
    sock.send_to(msg, to)?;
    let (len, _) = sock.recv_from(buf)?;
    Ok(len)
}

fn allocs(sock: &UdpSocket, to: SocketAddr) -> u64 {
    let mut buf = [0u8; 64];
    let len = round_trip(sock, to, b"allocs?", &mut buf).unwrap();
    assert_eq!(len, 8);
    u64::from_be_bytes(buf[..8].try_into().unwrap())
}

fn no_alloc_when_warm(driver: Driver) {
    if driver == Driver::Uring && std::env::var_os("SIPVANE_SKIP_URING").is_some() {
        return;
    }
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let specs = vec![WorkerSpec {
        sockets: vec![SocketSpec::reuse_port(any), SocketSpec::new(any)],
        cpu: None,
        tcp: None,
    }];
    let pool = start(driver, specs, |_| Echo).unwrap();
    let addrs = pool.local_addrs(0).to_vec();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    let sizes = [1usize, 200, 1400, 700];
    let mut exchange = |rounds: usize| {
        for i in 0..rounds {
            let size = sizes[i % sizes.len()];
            let msg = vec![b'x'; size];
            let len = round_trip(&sock, addrs[i % 2], &msg, &mut buf).unwrap();
            assert_eq!(len, size);
        }
    };
    // Warm up. The extra query in between shifts which of the io_uring driver's
    // alternating send slots sees which message size, so both reach full capacity.
    exchange(300);
    allocs(&sock, addrs[0]);
    exchange(300);
    let before = allocs(&sock, addrs[0]);
    exchange(2000);
    let after = allocs(&sock, addrs[0]);
    assert_eq!(after, before, "worker allocated {} times", after - before);
    pool.stop().unwrap();
}

#[test]
fn epoll_receive_send_path_does_not_allocate() {
    no_alloc_when_warm(Driver::Epoll);
}

#[test]
fn uring_receive_send_path_does_not_allocate() {
    no_alloc_when_warm(Driver::Uring);
}
