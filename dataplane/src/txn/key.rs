//! Fixed-size, allocation-free transaction keys (RFC 3261 §17.1.3, §17.2.3).
//!
//! A key is a 128-bit keyed hash of the matching fields, so it is `Copy`, needs
//! no borrowed bytes and compares in two instructions. Two independent ahash
//! passes give 128 bits: accidental collisions are out of reach (~2⁻⁶⁴ at
//! billions of live keys). Deliberate ones are prevented by seeding the
//! [`KeyHasher`] with secret randomness at startup: the seeds of the
//! [`Default`] hasher are public, so remote peers could aim collisions at it.

use std::hash::{BuildHasher, Hash, Hasher};

use crate::sip::Method;

/// RFC 3261 branch prefix that marks a globally unique branch.
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// True if a Via branch starts with the RFC 3261 magic cookie (exact case).
pub fn is_rfc3261_branch(branch: &[u8]) -> bool {
    branch.starts_with(MAGIC_COOKIE)
}

/// Builds [`TxnKey`]s and `DialogKey`s. Construct one per process from a
/// random seed and share it by reference (it is `Sync` and read-only). Keys
/// built by hashers with different seeds never match.
#[derive(Clone)]
pub struct KeyHasher {
    a: ahash::RandomState,
    b: ahash::RandomState,
}

impl KeyHasher {
    /// A hasher keyed by 256 bits of seed; pass OS randomness in production.
    pub fn new(seed: [u64; 4]) -> Self {
        let mut s = [0u64; 8];
        let mut x =
            seed[0] ^ seed[1].rotate_left(17) ^ seed[2].rotate_left(34) ^ seed[3].rotate_left(51);
        for (i, w) in s.iter_mut().enumerate() {
            x = splitmix64(x ^ seed[i % 4]);
            *w = x;
        }
        KeyHasher {
            a: ahash::RandomState::with_seeds(s[0], s[1], s[2], s[3]),
            b: ahash::RandomState::with_seeds(s[4], s[5], s[6], s[7]),
        }
    }

    pub(crate) fn hash128(&self, f: impl Fn(&mut dyn Hasher)) -> (u64, u64) {
        let mut h = self.a.build_hasher();
        f(&mut h);
        let mut g = self.b.build_hasher();
        f(&mut g);
        (h.finish(), g.finish())
    }
}

impl Default for KeyHasher {
    /// Fixed public seeds: deterministic, for tests and tools only.
    fn default() -> Self {
        KeyHasher::new([
            0x5149_5048_4f4e_0001,
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
        ])
    }
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher { .. }")
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Length-prefixed, so adjacent fields cannot run into each other.
pub(crate) fn write_bytes(h: &mut dyn Hasher, b: &[u8]) {
    h.write_usize(b.len());
    h.write(b);
}

/// Host names compare case-insensitively (RFC 3261 §19.1.4); lower-case them
/// through a small stack buffer instead of allocating.
fn write_host(h: &mut dyn Hasher, host: &[u8]) {
    h.write_usize(host.len());
    let mut buf = [0u8; 64];
    for chunk in host.chunks(buf.len()) {
        let out = &mut buf[..chunk.len()];
        for (d, s) in out.iter_mut().zip(chunk) {
            *d = s.to_ascii_lowercase();
        }
        h.write(out);
    }
}

/// The method part of a key: ACK maps to INVITE (the ACK for a non-2xx final
/// belongs to the INVITE transaction); CANCEL and every other method stand for
/// themselves; extension methods by their raw token.
fn write_method(h: &mut dyn Hasher, method: Method, method_raw: &[u8]) {
    match method {
        Method::Invite | Method::Ack => write_bytes(h, b"INVITE"),
        Method::Other => {
            h.write_u8(0xff);
            write_bytes(h, method_raw);
        }
        m => write_bytes(h, m.as_bytes()),
    }
}

/// A transaction key: a 128-bit keyed hash of the RFC 3261 matching fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TxnKey {
    lo: u64,
    hi: u64,
}

impl Hash for TxnKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: hand 64 bits straight to the table.
        state.write_u64(self.lo);
    }
}

/// Fields of the RFC 2543 matching rule (§17.2.3, for top Via branches
/// without the magic cookie). The To tag is deliberately left out: the ACK
/// for a non-2xx carries the tag of the reply, the INVITE did not.
#[derive(Clone, Copy, Debug)]
pub struct LegacyKeyParts<'a> {
    /// Call-ID value.
    pub call_id: &'a [u8],
    /// From tag, if any (RFC 2543 did not require one).
    pub from_tag: Option<&'a [u8]>,
    /// CSeq sequence number.
    pub cseq: u32,
    /// The whole top Via entry as received (sent-protocol, sent-by, params).
    pub top_via: &'a [u8],
    /// Request-URI as received (an ACK for a non-2xx repeats the INVITE's).
    pub request_uri: &'a [u8],
    /// Request method (ACK matches INVITE).
    pub method: Method,
    /// The method token as received; only used when `method` is `Other`.
    pub method_raw: &'a [u8],
}

impl TxnKey {
    /// The key as 16 bytes, to hand a live transaction's identity to another
    /// process that keys with the same [`KeyHasher`] seed (a restart).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.lo.to_le_bytes());
        out[8..].copy_from_slice(&self.hi.to_le_bytes());
        out
    }

    /// The inverse of [`TxnKey::to_bytes`].
    pub fn from_bytes(b: [u8; 16]) -> TxnKey {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        TxnKey {
            lo: word(0),
            hi: word(8),
        }
    }

    /// Server-transaction key of a received request (§17.2.3): top Via
    /// branch, its sent-by host and port, and the method class. Returns `None`
    /// when the branch lacks the magic cookie — use [`TxnKey::legacy`].
    ///
    /// `port` is taken as written (`None` when absent); retransmissions,
    /// CANCELs and ACKs copy the Via verbatim, so no default is applied.
    pub fn server(
        h: &KeyHasher,
        branch: &[u8],
        sent_by_host: &[u8],
        sent_by_port: Option<u16>,
        method: Method,
        method_raw: &[u8],
    ) -> Option<TxnKey> {
        if !is_rfc3261_branch(branch) {
            return None;
        }
        let (lo, hi) = h.hash128(|s| {
            s.write_u8(b'S');
            write_bytes(s, branch);
            write_host(s, sent_by_host);
            s.write_u32(sent_by_port.map_or(0, |p| u32::from(p) + 1));
            write_method(s, method, method_raw);
        });
        Some(TxnKey { lo, hi })
    }

    /// Server-transaction key by the RFC 2543 rule.
    pub fn legacy(h: &KeyHasher, p: &LegacyKeyParts<'_>) -> TxnKey {
        let (lo, hi) = h.hash128(|s| {
            s.write_u8(b'L');
            write_bytes(s, p.call_id);
            match p.from_tag {
                Some(t) => {
                    s.write_u8(1);
                    write_bytes(s, t);
                }
                None => s.write_u8(0),
            }
            s.write_u32(p.cseq);
            write_bytes(s, p.top_via);
            write_bytes(s, p.request_uri);
            write_method(s, p.method, p.method_raw);
        });
        TxnKey { lo, hi }
    }

    /// Client-transaction key (§17.1.3): the branch the proxy put in its Via
    /// and the CSeq method. Build it with the request's method when sending,
    /// and with the top Via branch and CSeq method of each response.
    pub fn client(h: &KeyHasher, branch: &[u8], method: Method, method_raw: &[u8]) -> TxnKey {
        let (lo, hi) = h.hash128(|s| {
            s.write_u8(b'C');
            write_bytes(s, branch);
            write_method(s, method, method_raw);
        });
        TxnKey { lo, hi }
    }

    /// The key's 128 bits (for logging or sharding).
    pub fn as_u128(&self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> KeyHasher {
        KeyHasher::default()
    }

    const BR: &[u8] = b"z9hG4bK776asdhds";

    fn srv(branch: &[u8], host: &[u8], port: Option<u16>, m: Method) -> Option<TxnKey> {
        TxnKey::server(&h(), branch, host, port, m, m.as_bytes())
    }

    #[test]
    fn ack_shares_invite_key_cancel_does_not() {
        let inv = srv(BR, b"pc33.atlanta.com", Some(5060), Method::Invite).unwrap();
        let ack = srv(BR, b"pc33.atlanta.com", Some(5060), Method::Ack).unwrap();
        let cancel = srv(BR, b"pc33.atlanta.com", Some(5060), Method::Cancel).unwrap();
        let bye = srv(BR, b"pc33.atlanta.com", Some(5060), Method::Bye).unwrap();
        assert_eq!(inv, ack);
        assert_ne!(inv, cancel);
        assert_ne!(inv, bye);
        assert_ne!(cancel, bye);
    }

    #[test]
    fn every_field_matters_except_host_case() {
        let k = srv(BR, b"pc33.atlanta.com", Some(5060), Method::Invite).unwrap();
        assert_eq!(
            k,
            srv(BR, b"PC33.Atlanta.COM", Some(5060), Method::Invite).unwrap()
        );
        assert_ne!(
            k,
            srv(
                b"z9hG4bK776asdhdt",
                b"pc33.atlanta.com",
                Some(5060),
                Method::Invite
            )
            .unwrap()
        );
        assert_ne!(
            k,
            srv(
                b"z9hG4bK776ASDHDS",
                b"pc33.atlanta.com",
                Some(5060),
                Method::Invite
            )
            .unwrap()
        );
        assert_ne!(
            k,
            srv(BR, b"pc34.atlanta.com", Some(5060), Method::Invite).unwrap()
        );
        assert_ne!(
            k,
            srv(BR, b"pc33.atlanta.com", Some(5061), Method::Invite).unwrap()
        );
        assert_ne!(
            k,
            srv(BR, b"pc33.atlanta.com", None, Method::Invite).unwrap()
        );
        assert_ne!(
            k,
            srv(BR, b"pc33.atlanta.com", Some(0), Method::Invite).unwrap(),
            "None ≠ port 0"
        );
        // Field boundaries: shifting bytes between branch and host changes the key.
        assert_ne!(
            srv(b"z9hG4bKab", b"c", None, Method::Invite),
            srv(b"z9hG4bKa", b"bc", None, Method::Invite)
        );
        // Long hosts go through the chunked lower-casing path.
        let long = [b'A'; 200];
        let lower = [b'a'; 200];
        assert_eq!(
            srv(BR, &long, None, Method::Bye),
            srv(BR, &lower, None, Method::Bye)
        );
    }

    #[test]
    fn extension_methods_keyed_by_token() {
        let a = TxnKey::server(&h(), BR, b"h", None, Method::Other, b"FOO").unwrap();
        let b = TxnKey::server(&h(), BR, b"h", None, Method::Other, b"BAR").unwrap();
        assert_ne!(a, b);
        // Raw bytes are ignored for known methods.
        let c = TxnKey::server(&h(), BR, b"h", None, Method::Bye, b"junk").unwrap();
        let d = TxnKey::server(&h(), BR, b"h", None, Method::Bye, b"BYE").unwrap();
        assert_eq!(c, d);
    }

    #[test]
    fn no_cookie_means_legacy() {
        assert!(srv(b"776asdhds", b"h", None, Method::Invite).is_none());
        assert!(srv(b"Z9HG4BK776", b"h", None, Method::Invite).is_none());
        assert!(srv(b"", b"h", None, Method::Invite).is_none());
        assert!(is_rfc3261_branch(b"z9hG4bKx"));
    }

    #[test]
    fn legacy_key_matches_ack_and_separates_cancel() {
        let p = LegacyKeyParts {
            call_id: b"a84b4c76e66710",
            from_tag: Some(b"1928301774"),
            cseq: 314159,
            top_via: b"SIP/2.0/UDP pc33.atlanta.com;branch=776asdhds",
            request_uri: b"sip:bob@biloxi.com",
            method: Method::Invite,
            method_raw: b"INVITE",
        };
        let inv = TxnKey::legacy(&h(), &p);
        let ack = TxnKey::legacy(
            &h(),
            &LegacyKeyParts {
                method: Method::Ack,
                method_raw: b"ACK",
                ..p
            },
        );
        let cancel = TxnKey::legacy(
            &h(),
            &LegacyKeyParts {
                method: Method::Cancel,
                method_raw: b"CANCEL",
                ..p
            },
        );
        assert_eq!(inv, ack);
        assert_ne!(inv, cancel);
        assert_ne!(
            inv,
            TxnKey::legacy(&h(), &LegacyKeyParts { cseq: 314160, ..p })
        );
        assert_ne!(
            inv,
            TxnKey::legacy(
                &h(),
                &LegacyKeyParts {
                    from_tag: None,
                    ..p
                }
            )
        );
        assert_ne!(
            inv,
            TxnKey::legacy(
                &h(),
                &LegacyKeyParts {
                    from_tag: Some(b""),
                    ..p
                }
            )
        );
        assert_ne!(
            inv,
            TxnKey::legacy(
                &h(),
                &LegacyKeyParts {
                    request_uri: b"sip:carol@chicago.com",
                    ..p
                }
            )
        );
        assert_ne!(
            inv,
            TxnKey::legacy(&h(), &LegacyKeyParts { call_id: b"x", ..p })
        );
        assert_ne!(
            inv,
            TxnKey::legacy(
                &h(),
                &LegacyKeyParts {
                    top_via: b"SIP/2.0/UDP other",
                    ..p
                }
            )
        );
    }

    #[test]
    fn roles_and_seeds_are_separated() {
        let s = srv(BR, b"h", None, Method::Invite).unwrap();
        let c = TxnKey::client(&h(), BR, Method::Invite, b"INVITE");
        assert_ne!(s, c);
        assert_eq!(c, TxnKey::client(&h(), BR, Method::Ack, b"ACK"));
        assert_ne!(c, TxnKey::client(&h(), BR, Method::Cancel, b"CANCEL"));
        let other = KeyHasher::new([1, 2, 3, 4]);
        assert_ne!(c, TxnKey::client(&other, BR, Method::Invite, b"INVITE"));
        assert_eq!(
            TxnKey::client(&other, BR, Method::Invite, b"INVITE"),
            TxnKey::client(&KeyHasher::new([1, 2, 3, 4]), BR, Method::Invite, b"INVITE")
        );
        assert_ne!(c.as_u128() >> 64, c.as_u128() & u128::from(u64::MAX));
    }

    #[test]
    fn no_collisions_among_many_branches() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..50_000u32 {
            let b = format!("z9hG4bK{i:x}");
            assert!(seen.insert(
                srv(b.as_bytes(), b"10.0.0.1", Some(5060), Method::Invite)
                    .unwrap()
                    .as_u128()
            ));
        }
    }
}
