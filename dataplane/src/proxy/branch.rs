//! The identifiers sipvane mints: the Via branch of every request it forwards
//! and the To-tag of every reply it makes itself.
//!
//! A branch names the worker, the transaction slot and generation, the
//! attempt (which destination of a failover) and the process epoch, so a
//! response finds its worker and transaction without a lookup by string. None
//! of that may be readable or forgeable by a peer: an off-path sender that
//! could guess branches could fail calls over with sprayed `503`s, and a
//! restarted process must never send a branch a backend still holds.
//!
//! So the 12-byte record (worker, attempt, slot, generation, the low 16 bits
//! of the epoch) is sealed with a synthetic-IV construction over SipHash
//! keyed per process: `tag = SipHash-2-4(k_mac, record)` (64 bits),
//! `sealed = record XOR SipHash-128(k_enc, tag)`, and the branch is
//! `z9hG4bKsv` + hex(tag ‖ sealed): 40 digits, short because every
//! response parses it. Opening recomputes the tag from the
//! decrypted record; a mismatch (any forged or altered branch) has a 2⁻⁶⁴
//! chance of passing. Everything after the fixed prefix looks random, and
//! because (slot, generation, epoch) never repeats, neither does a branch.

use siphasher::sip::SipHasher24;
use siphasher::sip128::SipHasher24 as SipHasher128;
use smallvec::SmallVec;

/// RFC 3261 magic cookie + sipvane's marker.
pub const PREFIX: &[u8] = b"z9hG4bKsv";

const RECORD: usize = 12;
const TAG: usize = 8;
/// Length of a branch sipvane writes.
pub const LEN: usize = PREFIX.len() + 2 * (TAG + RECORD);

/// What a branch sipvane wrote says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    pub worker: u8,
    pub slot: u32,
    pub generation: u32,
    pub attempt: u8,
    /// The process that wrote it.
    pub epoch: u16,
}

/// Why a branch was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a branch sipvane writes (another hop's, or malformed).
    Foreign,
    /// sipvane's form, but it does not verify: forged, altered or minted
    /// under another key (another process).
    Forged,
}

/// Seals and opens branches and makes local To-tags with one process's keys.
#[derive(Debug, Clone)]
pub struct Minter {
    mac: SipHasher24,
    enc: SipHasher128,
    epoch: u16,
}

impl Minter {
    /// `secret` must come from OS randomness in production; `epoch` tells
    /// this process's branches from another's.
    pub fn new(secret: [u64; 4], epoch: u16) -> Minter {
        Minter {
            mac: SipHasher24::new_with_keys(secret[0], secret[1]),
            enc: SipHasher128::new_with_keys(secret[2], secret[3]),
            epoch,
        }
    }

    pub fn epoch(&self) -> u16 {
        self.epoch
    }

    /// The branch for this process's transaction `b` (its `epoch` is ignored:
    /// the minter's own is written).
    pub fn seal(&self, b: &Branch) -> SmallVec<[u8; 64]> {
        let mut record = [0u8; RECORD];
        record[0] = b.worker;
        record[1] = b.attempt;
        record[2..6].copy_from_slice(&b.slot.to_be_bytes());
        record[6..10].copy_from_slice(&b.generation.to_be_bytes());
        record[10..12].copy_from_slice(&self.epoch.to_be_bytes());
        let tag = self.mac.hash(&record).to_be_bytes();
        let pad = self.enc.hash(&tag).as_bytes();
        let mut raw = [0u8; TAG + RECORD];
        raw[..TAG].copy_from_slice(&tag);
        for ((s, r), p) in raw[TAG..].iter_mut().zip(record).zip(pad) {
            *s = r ^ p;
        }
        // Digits into an array, then one copy: a `push` per digit (bounds
        // and capacity checks) cost ~800 instructions a branch.
        let mut text = [0u8; LEN];
        text[..PREFIX.len()].copy_from_slice(PREFIX);
        for (pair, b) in text[PREFIX.len()..].chunks_exact_mut(2).zip(raw) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        SmallVec::from_slice(&text)
    }

    /// Opens a branch this process (or one sharing its keys) sealed.
    pub fn open(&self, branch: &[u8]) -> Result<Branch, Rejected> {
        let hex = branch.strip_prefix(PREFIX).ok_or(Rejected::Foreign)?;
        if hex.len() != 2 * (TAG + RECORD) {
            return Err(Rejected::Foreign);
        }
        // Decoded by table with the validity of all digits checked at once:
        // a branch is opened for every response.
        let mut raw = [0u8; TAG + RECORD];
        let mut invalid = 0u8;
        for (r, pair) in raw.iter_mut().zip(hex.chunks_exact(2)) {
            let (hi, lo) = (UNHEX[usize::from(pair[0])], UNHEX[usize::from(pair[1])]);
            invalid |= hi | lo;
            *r = (hi << 4) | (lo & 15);
        }
        if invalid & 0xf0 != 0 {
            return Err(Rejected::Foreign);
        }
        let (tag, sealed) = raw.split_at(TAG);
        let pad = self.enc.hash(tag).as_bytes();
        let mut record = [0u8; RECORD];
        for ((r, s), p) in record.iter_mut().zip(sealed).zip(pad) {
            *r = s ^ p;
        }
        if self.mac.hash(&record).to_be_bytes() != tag {
            return Err(Rejected::Forged);
        }
        let word =
            |i: usize| u32::from_be_bytes([record[i], record[i + 1], record[i + 2], record[i + 3]]);
        Ok(Branch {
            worker: record[0],
            attempt: record[1],
            slot: word(2),
            generation: word(6),
            epoch: u16::from_be_bytes([record[10], record[11]]),
        })
    }

    /// 64 bits of keyed hash of `data`, separated by `domain` from the other
    /// uses of the key (flow tokens, [`crate::proxy::flow_token`]).
    pub fn mac(&self, domain: &[u8], data: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = self.mac;
        h.write(domain);
        h.write_u8(0);
        h.write(data);
        h.finish()
    }

    /// The To-tag of a reply sipvane makes to a request: unguessable (64 bits
    /// of keyed hash, RFC 3261 §19.3) and the same for a retransmission of the
    /// request, so a caller sees one dialog however often it asks.
    pub fn to_tag(&self, call_id: &[u8], from_tag: &[u8], branch: &[u8]) -> [u8; 16] {
        let mut h = self.mac;
        use std::hash::Hasher;
        h.write(b"to-tag");
        h.write(call_id);
        h.write_u8(0);
        h.write(from_tag);
        h.write_u8(0);
        h.write(branch);
        let mut out = [0u8; 16];
        for (i, b) in h.finish().to_be_bytes().iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex digit → value; 0xff for anything else.
const UNHEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        t[HEX[i] as usize] = i as u8;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: [u64; 4] = [1, 2, 3, 4];

    proptest! {
        #[test]
        fn round_trips(worker in any::<u8>(), slot in any::<u32>(), generation in any::<u32>(), attempt in any::<u8>(), epoch in any::<u16>()) {
            let m = Minter::new(SECRET, epoch);
            let b = Branch { worker, slot, generation, attempt, epoch };
            let sealed = m.seal(&b);
            prop_assert_eq!(sealed.len(), LEN);
            prop_assert_eq!(m.open(&sealed), Ok(b));
        }

        #[test]
        fn any_altered_digit_is_rejected(pos in 0usize..40, digit in 0u8..16) {
            let m = Minter::new(SECRET, 7);
            let mut sealed = m.seal(&Branch { worker: 1, slot: 2, generation: 3, attempt: 0, epoch: 7 });
            let i = PREFIX.len() + pos;
            prop_assume!(sealed[i] != HEX[usize::from(digit)]);
            sealed[i] = HEX[usize::from(digit)];
            prop_assert_eq!(m.open(&sealed), Err(Rejected::Forged));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let m = Minter::new(SECRET, 7);
            let mut v = PREFIX.to_vec();
            v.extend_from_slice(&bytes);
            let _ = m.open(&v);
        }
    }

    #[test]
    fn rejects_foreign_branches() {
        let m = Minter::new(SECRET, 7);
        assert_eq!(m.open(b"z9hG4bK776asdhds"), Err(Rejected::Foreign));
        assert_eq!(m.open(b"z9hG4bKsp1.2.3.4"), Err(Rejected::Foreign));
        let mut upper = m.seal(&Branch {
            worker: 0,
            slot: 0,
            generation: 1,
            attempt: 0,
            epoch: 7,
        });
        upper[PREFIX.len()..].make_ascii_uppercase();
        // Only when a digit is a letter does case change anything.
        if upper[PREFIX.len()..].iter().any(u8::is_ascii_uppercase) {
            assert_eq!(m.open(&upper), Err(Rejected::Foreign));
        }
    }

    #[test]
    fn another_key_or_epoch_cannot_open_or_collide() {
        let a = Minter::new(SECRET, 7);
        let b = Minter::new([5, 6, 7, 8], 9);
        let br = Branch {
            worker: 0,
            slot: 5,
            generation: 1,
            attempt: 0,
            epoch: 0,
        };
        assert_eq!(b.open(&a.seal(&br)), Err(Rejected::Forged));
        assert_ne!(a.seal(&br), b.seal(&br));
        // Same keys, another epoch (a restart that kept its keys): a new branch.
        assert_ne!(a.seal(&br), Minter::new(SECRET, 8).seal(&br));
    }

    #[test]
    fn consecutive_branches_share_only_the_prefix() {
        let m = Minter::new(SECRET, 7);
        let seal = |generation| {
            m.seal(&Branch {
                worker: 0,
                slot: 0,
                generation,
                attempt: 0,
                epoch: 7,
            })
        };
        let (x, y) = (seal(1), seal(2));
        let same = x[PREFIX.len()..]
            .iter()
            .zip(&y[PREFIX.len()..])
            .filter(|(a, b)| a == b)
            .count();
        // 40 random-looking hex digits agree by chance about 2.5 times.
        assert!(same < 12, "{same} equal digits");
    }

    #[test]
    fn to_tags_are_stable_per_request_and_differ_between_requests() {
        let m = Minter::new(SECRET, 7);
        let t = m.to_tag(b"call-1", b"ft", b"z9hG4bK1");
        assert_eq!(t, m.to_tag(b"call-1", b"ft", b"z9hG4bK1"));
        assert_ne!(t, m.to_tag(b"call-2", b"ft", b"z9hG4bK1"));
        assert_ne!(
            t,
            Minter::new([9, 9, 9, 9], 7).to_tag(b"call-1", b"ft", b"z9hG4bK1")
        );
        assert!(t.iter().all(u8::is_ascii_hexdigit));
    }
}
