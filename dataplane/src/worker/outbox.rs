//! The per-worker arena of datagrams a core wants sent or handed to another worker.

use std::net::{Ipv4Addr, SocketAddr};

use super::SocketId;

/// Marks a slot as a datagram to send rather than a handoff.
const NO_TARGET: usize = usize::MAX;
/// Set on the target of a datagram for the previous process (during a
/// restart, [`super::handover`]); the low bits name its worker there.
pub(crate) const PREDECESSOR: usize = 1 << (usize::BITS - 2);

/// One queued datagram. Each slot keeps its own buffer so that a slot reused on the
/// next turn already has the capacity the last message needed: once warm, queueing
/// a datagram costs a memcpy and no allocation.
#[derive(Debug)]
struct Slot {
    socket: SocketId,
    addr: SocketAddr,
    /// Worker index for a handoff, `NO_TARGET` for a send.
    target: usize,
    data: Vec<u8>,
}

/// Datagrams produced by a [`Core`](super::Core) during one driver turn: sends (to a
/// destination, from one of the worker's sockets) and handoffs (to another worker).
///
/// The driver flushes and [`clear`](Outbox::clear)s it; the buffers stay allocated,
/// so once warm nothing on the receive → send path allocates.
#[derive(Debug)]
pub struct Outbox {
    slots: Vec<Slot>,
    len: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Outbox {
            slots: Vec::new(),
            len: 0,
        }
    }

    /// Queues `data` to be sent to `dst` from the worker's socket `socket`.
    pub fn send(&mut self, socket: SocketId, dst: SocketAddr, data: &[u8]) {
        self.send_with(socket, dst, |buf| buf.extend_from_slice(data));
    }

    /// Queues a datagram built in place: `f` appends the bytes to an empty buffer
    /// (the `sip::build` writers fit directly). Nothing is queued if `f` writes nothing.
    pub fn send_with(&mut self, socket: SocketId, dst: SocketAddr, f: impl FnOnce(&mut Vec<u8>)) {
        let slot = self.next_slot();
        f(&mut slot.data);
        if slot.data.is_empty() {
            return;
        }
        slot.socket = socket;
        slot.addr = dst;
        slot.target = NO_TARGET;
        self.len += 1;
    }

    /// Like [`send_with`](Outbox::send_with) for a fallible builder: on `Err` nothing is
    /// queued (a half-written message never leaves) and the error is returned.
    pub fn try_send_with<E>(
        &mut self,
        socket: SocketId,
        dst: SocketAddr,
        f: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let slot = self.next_slot();
        f(&mut slot.data)?;
        if !slot.data.is_empty() {
            slot.socket = socket;
            slot.addr = dst;
            slot.target = NO_TARGET;
            self.len += 1;
        }
        Ok(())
    }

    /// Queues a received datagram for worker `worker`, which will see it through
    /// [`Core::on_datagram`](super::Core::on_datagram) with the same `socket` and `src`.
    pub fn handoff(&mut self, worker: usize, socket: SocketId, src: SocketAddr, data: &[u8]) {
        let slot = self.next_slot();
        slot.data.extend_from_slice(data);
        slot.socket = socket;
        slot.addr = src;
        // Guard the markers: an absurd index must stay a handoff to a worker of
        // this process (and be dropped as such by the driver), not turn into a
        // send or a relay to the previous process.
        slot.target = worker.min(PREDECESSOR - 1);
        self.len += 1;
    }

    /// Queues a received datagram for worker `worker` of the previous process,
    /// which still owns the transaction it belongs to (a restart hand-over):
    /// the driver relays it there with `socket` and `src`. Dropped (and counted)
    /// when no previous process is attached.
    pub fn to_predecessor(&mut self, worker: u8, socket: SocketId, src: SocketAddr, data: &[u8]) {
        let slot = self.next_slot();
        slot.data.extend_from_slice(data);
        slot.socket = socket;
        slot.addr = src;
        slot.target = PREDECESSOR | usize::from(worker);
        self.len += 1;
    }

    /// Number of queued entries, sends and handoffs together.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The queued sends, in order: `(socket, destination, bytes)`.
    pub fn iter(&self) -> impl Iterator<Item = (SocketId, SocketAddr, &[u8])> {
        self.slots[..self.len]
            .iter()
            .filter(|s| s.target == NO_TARGET)
            .map(|s| (s.socket, s.addr, s.data.as_slice()))
    }

    /// The queued handoffs, in order: `(worker, socket, source, bytes)`; a
    /// worker with [`PREDECESSOR`] set is one of the previous process's.
    pub fn handoffs(&self) -> impl Iterator<Item = (usize, SocketId, SocketAddr, &[u8])> {
        self.slots[..self.len]
            .iter()
            .filter(|s| s.target != NO_TARGET)
            .map(|s| (s.target, s.socket, s.addr, s.data.as_slice()))
    }

    /// Forgets every entry, keeping the buffers for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// A cleared slot past the last entry; `len` is bumped by the caller once the
    /// slot holds a complete entry.
    fn next_slot(&mut self) -> &mut Slot {
        if self.len == self.slots.len() {
            self.slots.push(Slot {
                socket: 0,
                addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                target: NO_TARGET,
                data: Vec::new(),
            });
        }
        let slot = &mut self.slots[self.len];
        slot.data.clear();
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn sends_and_handoffs_keep_order_and_kind() {
        let mut out = Outbox::new();
        assert!(out.is_empty());
        out.send(0, addr(1), b"one");
        out.handoff(3, 1, addr(2), b"two");
        out.send_with(1, addr(3), |b| b.extend_from_slice(b"three"));
        assert_eq!(out.len(), 3);
        let sends: Vec<_> = out.iter().collect();
        assert_eq!(
            sends,
            vec![(0, addr(1), &b"one"[..]), (1, addr(3), &b"three"[..])]
        );
        let hs: Vec<_> = out.handoffs().collect();
        assert_eq!(hs, vec![(3, 1, addr(2), &b"two"[..])]);
    }

    #[test]
    fn clear_reuses_buffers_without_leaking_old_bytes() {
        let mut out = Outbox::new();
        out.send(0, addr(1), b"a long first message");
        let cap = out.slots[0].data.capacity();
        out.clear();
        assert!(out.is_empty());
        assert_eq!(out.iter().count(), 0);
        out.send(0, addr(1), b"short");
        assert_eq!(out.iter().next().map(|e| e.2), Some(&b"short"[..]));
        assert_eq!(out.slots[0].data.capacity(), cap);
    }

    #[test]
    fn empty_or_failed_builds_are_not_queued() {
        let mut out = Outbox::new();
        out.send_with(0, addr(1), |_| {});
        assert!(out.is_empty());
        let r: Result<(), &str> = out.try_send_with(0, addr(1), |b| {
            b.extend_from_slice(b"half");
            Err("boom")
        });
        assert_eq!(r, Err("boom"));
        assert!(out.is_empty());
        let r: Result<(), ()> = out.try_send_with(0, addr(1), |b| {
            b.extend_from_slice(b"ok");
            Ok(())
        });
        assert_eq!(r, Ok(()));
        assert_eq!(
            out.iter().map(|e| e.2).collect::<Vec<_>>(),
            vec![&b"ok"[..]]
        );
    }

    #[test]
    fn absurd_handoff_target_stays_a_handoff() {
        let mut out = Outbox::new();
        out.handoff(usize::MAX, 0, addr(1), b"x");
        assert_eq!(out.iter().count(), 0);
        let hs: Vec<_> = out.handoffs().collect();
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].0 & PREDECESSOR, 0);
    }

    #[test]
    fn predecessor_relays_are_handoffs_marked_as_such() {
        let mut out = Outbox::new();
        out.to_predecessor(3, 1, addr(2), b"late 200");
        out.handoff(1, 0, addr(1), b"x");
        assert_eq!(out.iter().count(), 0);
        let targets: Vec<_> = out.handoffs().map(|h| h.0).collect();
        assert_eq!(targets, vec![PREDECESSOR | 3, 1]);
    }
}
