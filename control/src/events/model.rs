//! The event model: what a call or a destination reports, and its JSON form.
//!
//! Only `serde` and `std` are used here so the module can move to the data plane
//! unchanged if workers are to build events without going through control.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One call or destination event. Serialised as a JSON object whose `"type"` field names
/// the variant (`call_start`, `call_answered`, `call_end`, `call_failed`, `dst_up`,
/// `dst_down`) and whose other fields are those of the payload struct.
///
/// Cost trade-off: an event owns a few small heap strings (Call-ID, URIs). That is one to
/// three allocations per call on the worker, acceptable next to the per-call dialog
/// state, and it keeps the queue simple (no arena shared between threads). The two
/// large payloads are boxed so the enum, and thus every queue slot, stays at 64 bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An initial INVITE was relayed to its first destination.
    CallStart(Box<CallStart>),
    /// A 2xx final response to the INVITE was relayed upstream.
    CallAnswered(CallAnswered),
    /// An answered call ended.
    CallEnd(CallEnd),
    /// The call never got a 2xx: every destination failed, or none was available.
    CallFailed(Box<CallFailed>),
    /// A destination became usable again.
    DstUp(DstChange),
    /// A destination was marked unusable.
    DstDown(DstChange),
}

/// Payload of [`Event::CallStart`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallStart {
    /// Call-ID header value.
    pub call_id: Box<str>,
    /// URI of the From header (no display name, no tag).
    pub from: Box<str>,
    /// URI of the To header.
    pub to: Box<str>,
    /// Request-URI as received.
    pub ruri: Box<str>,
    /// Dispatcher set the destination was chosen from.
    pub set: u32,
    /// URI of the destination the INVITE was relayed to.
    pub destination: Box<str>,
    /// Index of the worker that owns the call.
    pub worker: u16,
    /// Unix time in milliseconds.
    pub ts: u64,
}

/// Payload of [`Event::CallAnswered`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAnswered {
    /// Call-ID header value.
    pub call_id: Box<str>,
    /// Destination that answered (after failover it differs from `call_start`'s).
    pub destination: Box<str>,
    /// Milliseconds from the INVITE to the 2xx (post-dial delay).
    pub setup_ms: u64,
    /// Unix time in milliseconds.
    pub ts: u64,
}

/// Payload of [`Event::CallEnd`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallEnd {
    /// Call-ID header value.
    pub call_id: Box<str>,
    /// Destination that carried the call.
    pub destination: Box<str>,
    /// Seconds from answer to end, millisecond resolution (see [`duration_secs`]).
    pub duration_s: f64,
    /// Why the call ended.
    pub reason: EndReason,
    /// Unix time in milliseconds.
    pub ts: u64,
}

/// Why an answered call ended. Serialised in lower case (`"bye"`, `"timeout"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Either side sent BYE.
    Bye,
    /// The dialog expired without a BYE (ACK never came, session timer, dialog timeout).
    Timeout,
}

impl EndReason {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Bye => "bye",
            EndReason::Timeout => "timeout",
        }
    }
}

/// Payload of [`Event::CallFailed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallFailed {
    /// Call-ID header value.
    pub call_id: Box<str>,
    /// Final status code sent upstream (e.g. 503, 486, 408).
    pub code: u16,
    /// Reason phrase or a short cause such as `"no destination"`; `Cow` so static
    /// phrases cost no allocation.
    pub reason: Cow<'static, str>,
    /// Destinations tried, in order.
    pub tried: Vec<Box<str>>,
    /// Unix time in milliseconds.
    pub ts: u64,
}

/// Payload of [`Event::DstUp`] and [`Event::DstDown`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DstChange {
    /// Dispatcher set.
    pub set: u32,
    /// Destination URI.
    pub uri: Box<str>,
    /// What caused the change (e.g. `"probe timeout"`, `"503 from destination"`, `"admin"`).
    pub reason: Cow<'static, str>,
    /// Unix time in milliseconds.
    pub ts: u64,
}

impl Event {
    /// The `"type"` field of the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::CallStart(_) => "call_start",
            Event::CallAnswered(_) => "call_answered",
            Event::CallEnd(_) => "call_end",
            Event::CallFailed(_) => "call_failed",
            Event::DstUp(_) => "dst_up",
            Event::DstDown(_) => "dst_down",
        }
    }

    /// Unix time in milliseconds at which the event happened.
    pub fn ts(&self) -> u64 {
        match self {
            Event::CallStart(e) => e.ts,
            Event::CallAnswered(e) => e.ts,
            Event::CallEnd(e) => e.ts,
            Event::CallFailed(e) => e.ts,
            Event::DstUp(e) | Event::DstDown(e) => e.ts,
        }
    }

    /// Call-ID of a call event; `None` for destination events.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            Event::CallStart(e) => Some(&e.call_id),
            Event::CallAnswered(e) => Some(&e.call_id),
            Event::CallEnd(e) => Some(&e.call_id),
            Event::CallFailed(e) => Some(&e.call_id),
            Event::DstUp(_) | Event::DstDown(_) => None,
        }
    }
}

/// Owned text from SIP bytes. Header values are not guaranteed UTF-8 but JSON strings
/// must be, so invalid sequences become U+FFFD instead of failing the event.
pub fn text(bytes: &[u8]) -> Box<str> {
    String::from_utf8_lossy(bytes).into()
}

/// A duration as seconds with millisecond resolution, the unit of `call_end.duration_s`.
pub fn duration_secs(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// Maps the monotonic `Instant`s the sans-IO core is given onto Unix milliseconds, so
/// event timestamps need no clock read in the core. The driver creates one at start-up.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    base: Instant,
    base_unix_ms: u64,
}

impl WallClock {
    /// Anchors `Instant::now()` to the current system time. Driver code only.
    pub fn new() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        WallClock::from_parts(Instant::now(), unix_ms)
    }

    /// Anchors `base` to `base_unix_ms` (tests, or a driver with its own clock source).
    pub fn from_parts(base: Instant, base_unix_ms: u64) -> Self {
        WallClock { base, base_unix_ms }
    }

    /// Unix milliseconds at `now`. Instants before the anchor map before it too
    /// (saturating at 0) rather than panicking.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.base) {
            Some(d) => self.base_unix_ms.saturating_add(d.as_millis() as u64),
            None => self
                .base_unix_ms
                .saturating_sub(self.base.duration_since(now).as_millis() as u64),
        }
    }
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn start() -> Event {
        Event::CallStart(Box::new(CallStart {
            call_id: "a84b4c76e66710@pc33".into(),
            from: "sip:alice@atlanta.example".into(),
            to: "sip:bob@biloxi.example".into(),
            ruri: "sip:bob@biloxi.example".into(),
            set: 1,
            destination: "sip:10.0.0.11:5060".into(),
            worker: 3,
            ts: 1_700_000_000_123,
        }))
    }

    fn json_of(ev: &Event) -> Value {
        serde_json::to_value(ev).unwrap()
    }

    #[test]
    fn event_stays_small() {
        // Every queue slot is size_of::<Event>(); growing it costs memory per slot.
        assert!(
            std::mem::size_of::<Event>() <= 64,
            "{}",
            std::mem::size_of::<Event>()
        );
    }

    #[test]
    fn call_start_json() {
        assert_eq!(
            json_of(&start()),
            json!({"type": "call_start", "call_id": "a84b4c76e66710@pc33",
                   "from": "sip:alice@atlanta.example", "to": "sip:bob@biloxi.example",
                   "ruri": "sip:bob@biloxi.example", "set": 1,
                   "destination": "sip:10.0.0.11:5060", "worker": 3, "ts": 1_700_000_000_123u64})
        );
    }

    #[test]
    fn other_events_json() {
        let ans = Event::CallAnswered(CallAnswered {
            call_id: "c1".into(),
            destination: "sip:d1".into(),
            setup_ms: 1250,
            ts: 5,
        });
        assert_eq!(
            json_of(&ans),
            json!({"type": "call_answered", "call_id": "c1", "destination": "sip:d1",
                   "setup_ms": 1250, "ts": 5})
        );
        let end = Event::CallEnd(CallEnd {
            call_id: "c1".into(),
            destination: "sip:d1".into(),
            duration_s: duration_secs(Duration::from_millis(62_505)),
            reason: EndReason::Timeout,
            ts: 6,
        });
        assert_eq!(
            json_of(&end),
            json!({"type": "call_end", "call_id": "c1", "destination": "sip:d1",
                   "duration_s": 62.505, "reason": "timeout", "ts": 6})
        );
        let failed = Event::CallFailed(Box::new(CallFailed {
            call_id: "c2".into(),
            code: 503,
            reason: Cow::Borrowed("Service Unavailable"),
            tried: vec!["sip:d1".into(), "sip:d2".into()],
            ts: 7,
        }));
        assert_eq!(
            json_of(&failed),
            json!({"type": "call_failed", "call_id": "c2", "code": 503,
                   "reason": "Service Unavailable", "tried": ["sip:d1", "sip:d2"], "ts": 7})
        );
        let down = Event::DstDown(DstChange {
            set: 2,
            uri: "sip:d2".into(),
            reason: Cow::Borrowed("probe timeout"),
            ts: 8,
        });
        assert_eq!(
            json_of(&down),
            json!({"type": "dst_down", "set": 2, "uri": "sip:d2", "reason": "probe timeout", "ts": 8})
        );
        let up = Event::DstUp(DstChange {
            set: 2,
            uri: "sip:d2".into(),
            reason: Cow::Borrowed("probe ok"),
            ts: 9,
        });
        assert_eq!(json_of(&up)["type"], "dst_up");
        for (ev, kind, ts) in [
            (&ans, "call_answered", 5),
            (&end, "call_end", 6),
            (&failed, "call_failed", 7),
            (&down, "dst_down", 8),
            (&up, "dst_up", 9),
        ] {
            assert_eq!(ev.kind(), kind);
            assert_eq!(json_of(ev)["type"], kind);
            assert_eq!(ev.ts(), ts);
            let back: Event = serde_json::from_value(json_of(ev)).unwrap();
            assert_eq!(&back, ev);
        }
        assert_eq!(down.call_id(), None);
        assert_eq!(failed.call_id(), Some("c2"));
    }

    #[test]
    fn round_trip_and_unknown_fields() {
        let ev = start();
        let s = serde_json::to_string(&ev).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), ev);
        // Consumers built against this version must keep reading events that gain fields.
        let newer = r#"{"type":"call_answered","call_id":"x","destination":"d","setup_ms":1,"ts":2,"new":true}"#;
        assert!(serde_json::from_str::<Event>(newer).is_ok());
        assert!(serde_json::from_str::<Event>(r#"{"type":"nope","ts":1}"#).is_err());
    }

    #[test]
    fn text_is_lossy_not_failing() {
        assert_eq!(&*text(b"abc@host"), "abc@host");
        assert_eq!(&*text(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn wall_clock_maps_instants() {
        let base = Instant::now();
        let wc = WallClock::from_parts(base, 1_000_000);
        assert_eq!(wc.unix_ms(base), 1_000_000);
        assert_eq!(wc.unix_ms(base + Duration::from_millis(1500)), 1_001_500);
        if let Some(earlier) = base.checked_sub(Duration::from_millis(300)) {
            assert_eq!(wc.unix_ms(earlier), 999_700);
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let live = WallClock::new().unix_ms(Instant::now());
        assert!(live.abs_diff(now_ms) < 5_000);
    }
}
