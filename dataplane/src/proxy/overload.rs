//! RFC 7339 overload control towards upstream clients (the server side).
//!
//! The signal is the same one that sheds load: open transactions. Below
//! `start_transactions` a client that offered `oc` is told `oc=0` with
//! `oc-validity=0` (control off); from there the loss percentage grows
//! linearly to 100 at the 503 watermark (`overload_transactions`), where
//! new INVITEs are shed anyway. A compliant client therefore slows down
//! before the cliff instead of finding it. Every worker answers from its
//! own table; `oc-seq` is wall-clock microseconds, so the values of all
//! workers (and of a restarted process) only grow.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::stats::{bump, ProxyStats};
use super::Worker;
use crate::sip::overload::{stamp_top_via, Feedback};

/// Percentage of its requests a client should stop sending with `open`
/// transactions: 0 up to `start`, 100 from `high` on, linear (rounded up)
/// between.
pub(crate) fn loss_percent(open: usize, start: usize, high: usize) -> u8 {
    if open <= start {
        0
    } else if open >= high || high <= start {
        100
    } else {
        ((open - start) * 100).div_ceil(high - start).min(100) as u8
    }
}

/// Maps the workers' monotonic `now` to wall-clock microseconds for
/// `oc-seq`, from one reading taken when the worker starts. `now` is the
/// time of the event being handled (replies are built deep in the
/// request path, which does not carry it).
#[derive(Debug, Clone, Copy)]
pub(super) struct SeqClock {
    at: Instant,
    unix_us: u64,
    pub(super) now: Instant,
}

impl SeqClock {
    pub(super) fn new(now: Instant) -> SeqClock {
        let unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        SeqClock {
            at: now,
            unix_us,
            now,
        }
    }

    fn seq_us(&self) -> u64 {
        self.unix_us + self.now.saturating_duration_since(self.at).as_micros() as u64
    }
}

impl Worker {
    /// The feedback this worker gives a client that offered `oc`, or
    /// `None` when overload control is off.
    pub(super) fn oc_feedback(&self) -> Option<Feedback> {
        let oc = self.cfg.overload_control?;
        let loss = loss_percent(
            self.txns.len(),
            oc.start_transactions,
            self.cfg.overload_transactions,
        );
        Some(Feedback {
            loss,
            validity_ms: if loss == 0 { 0 } else { oc.validity_ms },
            seq_us: self.oc_clock.seq_us(),
        })
    }

    /// The feedback for a client that `offered` overload control, `None`
    /// when it did not or control is off.
    pub(super) fn oc_for(&self, offered: bool) -> Option<Feedback> {
        if offered {
            self.oc_feedback()
        } else {
            None
        }
    }

    /// Whether overload control is on and the request's client offered it.
    pub(super) fn offers_oc(&self, req: &crate::sip::Message<'_>) -> bool {
        self.cfg.overload_control.is_some() && crate::sip::overload::request_offers_loss(req)
    }
}

/// Writes `fb` (from [`Worker::oc_for`]) into the top Via of the response
/// in `out`.
pub(super) fn stamp(stats: &ProxyStats, fb: Option<Feedback>, out: &mut Vec<u8>) {
    if let Some(fb) = fb {
        if stamp_top_via(out, &fb) && fb.loss > 0 {
            bump(&stats.overload_feedback);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_grows_from_start_to_the_watermark() {
        assert_eq!(loss_percent(0, 50, 100), 0);
        assert_eq!(loss_percent(50, 50, 100), 0);
        assert_eq!(loss_percent(51, 50, 100), 2);
        assert_eq!(loss_percent(75, 50, 100), 50);
        assert_eq!(loss_percent(99, 50, 100), 98);
        assert_eq!(loss_percent(100, 50, 100), 100);
        assert_eq!(loss_percent(5000, 50, 100), 100);
        assert_eq!(loss_percent(10, 100, 100), 0, "start at the watermark");
        assert_eq!(loss_percent(101, 100, 100), 100);
    }

    #[test]
    fn seq_follows_the_monotonic_clock() {
        let t0 = Instant::now();
        let mut c = SeqClock::new(t0);
        let a = c.seq_us();
        c.now = t0 + std::time::Duration::from_millis(3);
        let b = c.seq_us();
        assert_eq!(b - a, 3000);
        assert!(a > 1_700_000_000_000_000, "wall clock microseconds");
    }

    use super::super::config::{OverloadControl, ProxyConfig};
    use super::super::tests::{answer, sent, worker, CALLER, DEST};
    use super::super::{SOCK_PRIVATE, SOCK_PUBLIC};
    use crate::sip::{parse, HeaderName};
    use crate::worker::{Core, Outbox};

    fn invite_oc(n: u32, oc: bool) -> Vec<u8> {
        let offer = if oc { ";oc;oc-algo=\"loss\"" } else { "" };
        format!(
            "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-oc{n}{offer}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:a@127.0.0.1>;tag=f{n}\r\n\
             To: <sip:100@127.0.0.1>\r\n\
             Call-ID: oc{n}@t\r\n\
             CSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// The message `out` sent to the caller.
    fn to_caller(out: &Outbox) -> String {
        let caller = CALLER.parse().unwrap();
        sent(out)
            .into_iter()
            .find(|(to, _)| *to == caller)
            .unwrap()
            .1
    }

    fn top_via(resp: &str) -> String {
        let m = parse(resp.as_bytes()).unwrap();
        String::from_utf8(m.values(HeaderName::Via).next().unwrap().to_vec()).unwrap()
    }

    /// A loss value from `oc=N` in a Via entry.
    fn oc_value(via: &str) -> Option<u8> {
        via.split(';')
            .find_map(|p| p.strip_prefix("oc="))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn clients_that_offer_oc_get_feedback_growing_to_the_watermark() {
        let t0 = Instant::now();
        let cfg = ProxyConfig {
            max_transactions: 20,
            overload_transactions: 10,
            overload_control: Some(OverloadControl {
                start_transactions: 4,
                validity_ms: 700,
            }),
            ..ProxyConfig::default()
        };
        let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
        let caller = CALLER.parse().unwrap();
        let dest = DEST.parse().unwrap();
        let mut out = Outbox::new();

        // Idle: a relayed answer tells the client control is off, and
        // says nothing to a client that did not offer it.
        w.on_datagram(t0, SOCK_PUBLIC, caller, &invite_oc(0, true), &mut out);
        let fwd = sent(&out)[0].1.clone();
        assert!(
            fwd.contains(";oc;oc-algo=\"loss\""),
            "the client's offer is relayed as is: {fwd}"
        );
        out.clear();
        w.on_datagram(t0, SOCK_PRIVATE, dest, &answer(&fwd, 486, "t0"), &mut out);
        let via = top_via(&to_caller(&out));
        assert!(
            via.contains(";oc=0;oc-algo=\"loss\";oc-validity=0;oc-seq="),
            "{via}"
        );
        assert_eq!(via.matches("oc-algo").count(), 1, "{via}");
        out.clear();
        w.on_datagram(t0, SOCK_PUBLIC, caller, &invite_oc(1, false), &mut out);
        let fwd = sent(&out)[0].1.clone();
        out.clear();
        w.on_datagram(t0, SOCK_PRIVATE, dest, &answer(&fwd, 486, "t1"), &mut out);
        assert!(!top_via(&to_caller(&out)).contains(";oc"));

        // Unanswered INVITEs fill the table: the loss value grows with it
        // (delayed 100 Trying), then the watermark's 503 says 100.
        let mut last = 0;
        for n in 2..12 {
            out.clear();
            w.on_datagram(t0, SOCK_PUBLIC, caller, &invite_oc(n, true), &mut out);
        }
        out.clear();
        w.on_timer(t0 + std::time::Duration::from_millis(250), &mut out);
        let tryings: Vec<_> = sent(&out)
            .into_iter()
            .filter(|(to, r)| *to == caller && r.starts_with("SIP/2.0 100 "))
            .collect();
        assert!(!tryings.is_empty());
        for (_, r) in &tryings {
            let via = top_via(r);
            let loss = oc_value(&via).expect("oc in the 100");
            assert!(loss >= last, "{via}");
            last = loss;
            if loss > 0 {
                assert!(via.contains("oc-validity=700"), "{via}");
            }
        }
        assert!(last > 50, "the table is near the watermark: {last}");
        out.clear();
        w.on_datagram(t0, SOCK_PUBLIC, caller, &invite_oc(99, true), &mut out);
        let s = sent(&out);
        assert!(s[0].1.starts_with("SIP/2.0 503 "), "{}", s[0].1);
        assert_eq!(oc_value(&top_via(&s[0].1)), Some(100));
        assert!(w.stats().snapshot().overload_feedback > 0);
    }

    #[test]
    fn off_means_the_offer_is_ignored() {
        let t0 = Instant::now();
        let cfg = ProxyConfig {
            overload_control: None,
            ..ProxyConfig::default()
        };
        let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
        let mut out = Outbox::new();
        let mut options = invite_oc(1, true);
        options = String::from_utf8(options)
            .unwrap()
            .replace("INVITE", "OPTIONS")
            .replace("sip:100@", "sip:")
            .into_bytes();
        w.on_datagram(t0, SOCK_PUBLIC, CALLER.parse().unwrap(), &options, &mut out);
        let r = &sent(&out)[0].1;
        assert!(r.starts_with("SIP/2.0 200 "), "{r}");
        assert!(!top_via(r).contains("oc="), "{r}");
    }

    #[test]
    fn a_standing_receive_queue_sheds_new_invites_only() {
        let t0 = Instant::now();
        let cfg = ProxyConfig {
            shed_backlog: Some(std::time::Duration::from_millis(100)),
            ..ProxyConfig::default()
        };
        let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
        let caller = CALLER.parse().unwrap();
        let mut out = Outbox::new();
        let t1 = t0 + std::time::Duration::from_millis(50);
        // A backlog younger than shed_backlog sheds nothing.
        w.on_backlog(t1, Some(t0));
        w.on_datagram(t1, SOCK_PUBLIC, caller, &invite_oc(1, false), &mut out);
        assert_eq!(sent(&out)[0].0, DEST.parse().unwrap(), "relayed");
        // One standing for 100 ms does: 503 + Retry-After, counted.
        let t2 = t0 + std::time::Duration::from_millis(100);
        w.on_backlog(t2, Some(t0));
        out.clear();
        w.on_datagram(t2, SOCK_PUBLIC, caller, &invite_oc(2, false), &mut out);
        let r = to_caller(&out);
        assert!(r.starts_with("SIP/2.0 503 "), "{r}");
        assert!(r.contains("Retry-After: 5\r\n"), "{r}");
        assert_eq!(w.stats().snapshot().backlog_rejects, 1);
        // The first call's transaction still gets its answer through.
        out.clear();
        let fwd = {
            let mut o = Outbox::new();
            w.on_datagram(t2, SOCK_PUBLIC, caller, &invite_oc(1, false), &mut o);
            o
        };
        assert!(sent(&fwd)
            .iter()
            .all(|(_, m)| !m.starts_with("SIP/2.0 503")));
        // Drained: relayed again.
        w.on_backlog(t2, None);
        w.on_datagram(t2, SOCK_PUBLIC, caller, &invite_oc(3, false), &mut out);
        assert_eq!(sent(&out).last().unwrap().0, DEST.parse().unwrap());
        assert_eq!(w.stats().snapshot().backlog_rejects, 1);
    }

    #[test]
    fn backlog_shedding_off() {
        let t0 = Instant::now();
        let cfg = ProxyConfig {
            shed_backlog: None,
            ..ProxyConfig::default()
        };
        let mut w = worker(cfg, &format!("1 sip:{DEST}\n"), t0);
        let mut out = Outbox::new();
        let t1 = t0 + std::time::Duration::from_secs(10);
        w.on_backlog(t1, Some(t0));
        w.on_datagram(
            t1,
            SOCK_PUBLIC,
            CALLER.parse().unwrap(),
            &invite_oc(1, false),
            &mut out,
        );
        assert_eq!(sent(&out)[0].0, DEST.parse().unwrap());
    }
}
