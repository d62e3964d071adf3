//! Reused byte buffers, so a warm worker does not allocate per transaction.

/// A free list of cleared `Vec<u8>` with their capacity kept.
pub struct BufPool {
    free: Vec<Vec<u8>>,
    keep: usize,
    capacity: usize,
}

impl BufPool {
    /// Keeps at most `keep` spare buffers of at least `capacity` bytes each.
    pub fn new(keep: usize, capacity: usize) -> Self {
        BufPool {
            free: Vec::with_capacity(keep),
            keep,
            capacity,
        }
    }

    pub fn get(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    pub fn put(&mut self, mut buf: Vec<u8>) {
        // A buffer that grew huge for one odd message is not worth keeping;
        // nor is the empty placeholder `mem::take` leaves (it would make the
        // next `get` allocate).
        let cap = buf.capacity();
        if self.free.len() < self.keep && cap > 0 && cap <= 16 * self.capacity {
            buf.clear();
            self.free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_capacity() {
        let mut p = BufPool::new(2, 64);
        let mut a = p.get();
        a.extend_from_slice(b"hello");
        let ptr = a.as_ptr();
        p.put(a);
        let b = p.get();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr);
    }

    #[test]
    fn empty_placeholders_are_not_kept() {
        let mut p = BufPool::new(2, 64);
        p.put(Vec::new());
        assert!(p.get().capacity() >= 64);
    }
}
