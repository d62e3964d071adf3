//! The Via branch sipvane writes: it names the worker and the transaction.
//!
//! `z9hG4bK` (RFC 3261 magic cookie) + `sp` + worker + `.` + slot + `.` +
//! generation + `.` + attempt, all lower-case hex. A response therefore finds
//! its worker (and is handed over if it arrived elsewhere) and its transaction
//! without a table lookup by string. The generation makes a late response to a
//! finished transaction miss instead of hitting the slot's next tenant; the
//! attempt number tells responses of a failed-over destination from the
//! current one. The branch is fixed for the life of an attempt, so
//! retransmissions and the CANCEL for it carry the same one.

use std::io::Write;

use smallvec::SmallVec;

pub const PREFIX: &[u8] = b"z9hG4bKsp";

/// What sipvane encoded into a branch it generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    pub worker: u16,
    pub slot: u32,
    pub generation: u32,
    pub attempt: u8,
}

impl Branch {
    /// The branch value, on the stack.
    pub fn encode(&self) -> SmallVec<[u8; 48]> {
        let mut out = SmallVec::new();
        out.extend_from_slice(PREFIX);
        // Writing to a SmallVec cannot fail.
        let _ = write!(
            out,
            "{:x}.{:x}.{:x}.{:x}",
            self.worker, self.slot, self.generation, self.attempt
        );
        out
    }

    /// Decodes a branch sipvane wrote; anything else (another proxy's branch,
    /// a tampered one) is `None`.
    pub fn parse(b: &[u8]) -> Option<Branch> {
        let rest = b.strip_prefix(PREFIX)?;
        let mut parts = rest.split(|&c| c == b'.');
        let worker = hex(parts.next()?)?;
        let slot = hex(parts.next()?)?;
        let generation = hex(parts.next()?)?;
        let attempt = hex(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Branch {
            worker: u16::try_from(worker).ok()?,
            slot: u32::try_from(slot).ok()?,
            generation: u32::try_from(generation).ok()?,
            attempt: u8::try_from(attempt).ok()?,
        })
    }
}

fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 8 {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(worker in any::<u16>(), slot in any::<u32>(), generation in any::<u32>(), attempt in any::<u8>()) {
            let b = Branch { worker, slot, generation, attempt };
            prop_assert_eq!(Branch::parse(&b.encode()), Some(b));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut v = PREFIX.to_vec();
            v.extend_from_slice(&bytes);
            let _ = Branch::parse(&v);
        }
    }

    #[test]
    fn rejects_foreign_branches() {
        assert_eq!(Branch::parse(b"z9hG4bK776asdhds"), None);
        assert_eq!(Branch::parse(b"z9hG4bKsp1.2.3"), None);
        assert_eq!(Branch::parse(b"z9hG4bKsp1.2.3.4.5"), None);
        assert_eq!(Branch::parse(b"z9hG4bKsp1.2.3.G"), None);
    }
}
