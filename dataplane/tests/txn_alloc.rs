//! Memory accounting with a counting allocator: bytes per dialog, and "no
//! allocation once warm" for the timer wheel, the transaction and dialog
//! tables, the key builders and the state machines.
//!
//! Counting is per thread (a thread-local switch), so the test harness's other
//! threads do not disturb the numbers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use dataplane::dialog::{DialogKey, DialogState, DialogTable};
use dataplane::sip::Method;
use dataplane::txn::{ClientInvite, KeyHasher, Reliability, ServerInvite, TimerConfig, TimerWheel};
use dataplane::txn::{TxnKey, TxnTable};

struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize, true);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize, true);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize), false);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize, true);
        System.realloc(ptr, layout, new_size)
    }
}

fn note(bytes: isize, is_alloc: bool) {
    // try_with: the allocator may run during thread teardown.
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
            if is_alloc {
                let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            }
        }
    });
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns (allocation calls, net bytes still allocated).
fn measure<R>(f: impl FnOnce() -> R) -> (usize, isize, R) {
    ALLOCS.with(|a| a.set(0));
    LIVE.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    (ALLOCS.with(|a| a.get()), LIVE.with(|l| l.get()), r)
}

/// A realistic proxy payload: destination stats handle, RTPEngine session
/// flag and engine index, branch counters, timestamps.
#[allow(dead_code)]
struct Payload {
    dst: usize,
    engine: u16,
    flags: u16,
    branch: u32,
    cseq: u32,
    worker: u32,
    started_ms: u64,
}

const DIALOGS: usize = 100_000;

#[test]
fn counter_sees_allocations() {
    let (allocs, live, v) = measure(|| Vec::<u64>::with_capacity(16));
    assert_eq!(allocs, 1);
    assert_eq!(live, 128);
    drop(v);
}

#[test]
fn dialog_state_is_under_512_bytes_per_dialog() {
    assert_eq!(std::mem::size_of::<Payload>(), 32);
    let h = KeyHasher::default();
    let base = Instant::now();
    let keys: Vec<DialogKey> = (0..DIALOGS)
        .map(|i| {
            DialogKey::new(
                &h,
                format!("{i:08x}@10.1.2.3").as_bytes(),
                b"caller-tag",
                b"callee-tag",
            )
        })
        .collect();

    let (_, reserved, mut table) = measure(|| DialogTable::<Payload>::new(base, DIALOGS));
    let (allocs, grown, ()) = measure(|| {
        for (i, k) in keys.iter().enumerate() {
            let p = Payload {
                dst: i,
                engine: 1,
                flags: 0,
                branch: 0,
                cseq: 1,
                worker: 0,
                started_ms: 0,
            };
            table.insert(*k, DialogState::Confirmed, p, base).unwrap();
        }
    });
    assert_eq!(table.len(), DIALOGS);
    assert_eq!(allocs, 0, "filling a reserved table must not allocate");
    assert_eq!(grown, 0);
    let per_dialog = reserved as f64 / DIALOGS as f64;
    eprintln!(
        "dialog table: {reserved} B for {DIALOGS} dialogs = {per_dialog:.1} B/dialog (heap_bytes estimate {})",
        table.heap_bytes()
    );
    assert!(per_dialog <= 512.0, "{per_dialog} B per dialog");
    let est = table.heap_bytes() as f64;
    assert!(
        (est - reserved as f64).abs() / (reserved as f64) < 0.1,
        "heap_bytes estimate off: {est} vs {reserved}"
    );
}

#[test]
fn timer_wheel_does_not_allocate_once_warm() {
    let base = Instant::now();
    let mut w = TimerWheel::with_capacity(base, 4096);
    let mut out = Vec::with_capacity(4096);
    let mut ids = Vec::with_capacity(4096);
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (allocs, _, ()) = measure(|| {
        let mut now = base;
        for round in 0..20_000u64 {
            if w.len() < 4000 {
                let d = Duration::from_micros(next() % 40_000_000);
                ids.push(w.insert(now + d, round));
            }
            if round % 3 == 0 && !ids.is_empty() {
                let i = (next() as usize) % ids.len();
                let id = ids.swap_remove(i);
                w.cancel(id);
            }
            if round % 5 == 0 {
                if let Some(&id) = ids.last() {
                    w.reschedule(id, now + Duration::from_millis(next() % 100_000));
                }
            }
            now += Duration::from_millis(3);
            out.clear();
            w.expire(now, &mut out);
            if ids.len() > 4000 {
                ids.clear();
            }
        }
    });
    assert_eq!(allocs, 0, "timer wheel allocated in steady state");
}

#[test]
fn txn_table_and_keys_do_not_allocate_once_warm() {
    let h = KeyHasher::default();
    let cfg = TimerConfig::default();
    let base = Instant::now();
    let mut table: TxnTable<ClientInvite> = TxnTable::with_capacity(2048);
    let mut live = std::collections::VecDeque::with_capacity(2048);
    let mut branch = *b"z9hG4bK-00000000";
    let (allocs, _, ()) = measure(|| {
        for i in 0..50_000u32 {
            branch[8..].copy_from_slice(format_hex(i).as_slice());
            let k = TxnKey::client(&h, &branch, Method::Invite, b"INVITE");
            let sk = TxnKey::server(
                &h,
                &branch,
                b"192.0.2.1",
                Some(5060),
                Method::Invite,
                b"INVITE",
            );
            assert!(sk.is_some());
            if live.len() == 2048 {
                let id = live.pop_front().unwrap();
                assert!(table.remove(id).is_some());
            }
            let now = base + Duration::from_millis(u64::from(i));
            let mut m = ClientInvite::new(now, &cfg, Reliability::Unreliable);
            m.on_timer(now + Duration::from_millis(500));
            m.on_response(now, 180);
            let id = table.insert(k, m).unwrap();
            assert_eq!(table.find(&k), Some(id));
            live.push_back(id);
            let mut s = ServerInvite::new(now, &cfg, Reliability::Unreliable);
            s.send_final(now, 486);
            s.on_timer(now + Duration::from_secs(1));
        }
    });
    assert_eq!(allocs, 0, "transaction path allocated in steady state");
}

#[test]
fn dialog_table_does_not_allocate_once_warm() {
    let h = KeyHasher::default();
    let base = Instant::now();
    let mut t: DialogTable<[u8; 32]> =
        DialogTable::with_lifetime(base, 4096, Duration::from_secs(60));
    let mut live = std::collections::VecDeque::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    let mut cid = *b"00000000@host";
    let (allocs, _, ()) = measure(|| {
        let mut now = base;
        for i in 0..40_000u32 {
            cid[..8].copy_from_slice(format_hex(i).as_slice());
            let early = DialogKey::early(&h, &cid, b"ftag");
            if live.len() == 4000 {
                let id = live.pop_front().unwrap();
                t.remove(id);
            }
            let Ok(id) = t.insert(early, DialogState::Early, [0; 32], now) else {
                continue;
            };
            t.rekey(id, DialogKey::new(&h, &cid, b"ftag", b"ttag"))
                .unwrap();
            t.touch(id, now);
            if i % 7 == 0 {
                t.set_expiry(id, now + Duration::from_secs(5));
            }
            live.push_back(id);
            now += Duration::from_millis(20);
            out.clear();
            t.expire(now, &mut out);
        }
    });
    assert_eq!(allocs, 0, "dialog table allocated in steady state");
}

fn format_hex(i: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    for (k, d) in b.iter_mut().enumerate() {
        let nib = (i >> (28 - 4 * k)) & 0xf;
        *d = b"0123456789abcdef"[nib as usize];
    }
    b
}

#[test]
fn machines_are_small() {
    use dataplane::txn::{ClientNonInvite, ServerNonInvite};
    use std::mem::size_of;
    eprintln!(
        "ClientInvite {} ClientNonInvite {} ServerInvite {} ServerNonInvite {} TxnKey {}",
        size_of::<ClientInvite>(),
        size_of::<ClientNonInvite>(),
        size_of::<ServerInvite>(),
        size_of::<ServerNonInvite>(),
        size_of::<TxnKey>()
    );
    // Timer values are kept per machine as 4-byte milliseconds (`txn::Ms`),
    // deadlines as 16-byte `Option<Instant>`s: every transaction carries
    // one client and one server machine (and one more while cancelling).
    assert!(size_of::<ClientInvite>() <= 56);
    assert!(size_of::<ClientNonInvite>() <= 48);
    assert!(size_of::<ServerInvite>() <= 56);
    assert!(size_of::<ServerNonInvite>() <= 24);
    assert_eq!(size_of::<TxnKey>(), 16);
}
