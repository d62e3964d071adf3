//! The response context of a forked request (RFC 3261 §16.6–16.7): which
//! branches run, which get a CANCEL, and which response the caller gets.
//!
//! Targets come best first and are split into groups of equal `q`: a group
//! rings in parallel, groups are tried one after the other (§16.6 / Kamailio
//! `t_load_contacts()` + `t_next_contacts()`). The first 2xx is forwarded and
//! cancels every other pending branch; a 6xx cancels the rest and starts no
//! new group; otherwise, once every branch has ended and no group is left,
//! the best final response is chosen (§16.7 step 6).
//!
//! Pure: it sees branch indexes and status codes only; the proxy holds the
//! client transactions and the bytes, and acts on the returned [`Step`].

use std::ops::Range;

use smallvec::SmallVec;

/// Where one branch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    /// In a later group, not sent.
    Idle,
    /// Sent, no final yet; `rang` once a provisional arrived.
    Pending { rang: bool },
    /// Ended with this final (408: gave up on it).
    Done(u16),
}

/// What the proxy must do after an event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Relay the response just received to the caller.
    pub relay: bool,
    /// Keep the response just received: it is the best final so far.
    pub keep: bool,
    /// Branches to CANCEL (still pending).
    pub cancel: SmallVec<[usize; 4]>,
    /// Branches to send now (the next group).
    pub start: Range<usize>,
    /// Every branch has ended without a 2xx: answer the caller.
    pub finish: Option<Final>,
}

/// The answer once every branch ended without a 2xx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Final {
    /// The response kept last (`Step::keep`), with its code.
    Kept(u16),
    /// No branch sent a final response (all were given up on).
    NoAnswer,
}

/// The forking state of one request.
#[derive(Clone, Debug)]
pub struct Fork {
    legs: SmallVec<[Leg; 4]>,
    /// `groups[g]` is the first branch of group `g`; groups end where the
    /// next begins.
    groups: SmallVec<[usize; 4]>,
    /// The next group to start.
    next_group: usize,
    /// The code of the response kept as the best so far.
    best: Option<u16>,
    /// A 2xx arrived: nothing else is chosen or started.
    answered: bool,
    /// A 6xx arrived or the caller cancelled: no new branch (§16.7 step 5).
    closed: bool,
    /// The final answer was given.
    finished: bool,
}

impl Fork {
    /// A fork over targets with these `q` values, best (highest) first:
    /// consecutive equal values form a parallel group. Returns the fork and
    /// the branches to send at once.
    pub fn new(qs: &[u16]) -> (Fork, Range<usize>) {
        let mut groups: SmallVec<[usize; 4]> = SmallVec::new();
        for (i, q) in qs.iter().enumerate() {
            if i == 0 || qs[i - 1] != *q {
                groups.push(i);
            }
        }
        let mut fork = Fork {
            legs: qs.iter().map(|_| Leg::Idle).collect(),
            groups,
            next_group: 0,
            best: None,
            answered: false,
            closed: false,
            finished: false,
        };
        let first = fork.start_next();
        (fork, first)
    }

    pub fn len(&self) -> usize {
        self.legs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// Whether branch `i` was sent and has no final response yet.
    pub fn is_pending(&self, i: usize) -> bool {
        matches!(self.legs.get(i), Some(Leg::Pending { .. }))
    }

    /// Whether branch `i` was sent (and may still answer late).
    pub fn was_sent(&self, i: usize) -> bool {
        !matches!(self.legs.get(i), Some(Leg::Idle) | None)
    }

    /// The final answer was given (or a 2xx relayed).
    pub fn is_decided(&self) -> bool {
        self.finished || self.answered
    }

    fn start_next(&mut self) -> Range<usize> {
        let Some(&from) = self.groups.get(self.next_group) else {
            return 0..0;
        };
        let to = self
            .groups
            .get(self.next_group + 1)
            .copied()
            .unwrap_or(self.legs.len());
        self.next_group += 1;
        for leg in &mut self.legs[from..to] {
            *leg = Leg::Pending { rang: false };
        }
        from..to
    }

    fn pending(&self, except: usize) -> SmallVec<[usize; 4]> {
        (0..self.legs.len())
            .filter(|&j| j != except && self.is_pending(j))
            .collect()
    }

    /// A provisional response on branch `i`: relayed unless it is a `100`
    /// (hop by hop) or the request is already decided.
    pub fn on_provisional(&mut self, i: usize, code: u16) -> Step {
        if let Some(Leg::Pending { rang }) = self.legs.get_mut(i) {
            *rang = true;
        }
        Step {
            relay: code > 100 && !self.is_decided(),
            ..Step::default()
        }
    }

    /// A final response on branch `i` (its first: the client transaction
    /// filters retransmissions, except a 2xx's, which are relayed again).
    pub fn on_final(&mut self, i: usize, code: u16) -> Step {
        let Some(leg) = self.legs.get_mut(i) else {
            return Step::default();
        };
        let first = matches!(leg, Leg::Pending { .. });
        if first {
            *leg = Leg::Done(code);
        }
        let mut step = Step::default();
        if (200..300).contains(&code) {
            // Every 2xx goes up (§16.7 step 5), even after another final:
            // the callee's dialog is up and the caller must be able to end
            // it. The first ends the fork.
            step.relay = true;
            if !self.answered && !self.finished {
                self.answered = true;
                self.closed = true;
                step.cancel = self.pending(i);
            }
            return step;
        }
        if !first || self.is_decided() {
            return step;
        }
        if code >= 600 && !self.closed {
            self.closed = true;
            step.cancel = self.pending(i);
        }
        if self.best.is_none_or(|b| better(code, b)) {
            self.best = Some(code);
            step.keep = true;
        }
        self.settle(&mut step);
        step
    }

    /// Branch `i` got no final in time (fr_timer / fr_inv_timer): it ends
    /// as a local 408, which any real final beats.
    pub fn on_timeout(&mut self, i: usize) -> Step {
        let mut step = Step::default();
        if let Some(leg @ Leg::Pending { .. }) = self.legs.get_mut(i) {
            *leg = Leg::Done(408);
            if !self.is_decided() {
                self.settle(&mut step);
            }
        }
        step
    }

    /// The caller cancelled: every pending branch gets a CANCEL and no new
    /// one starts; their 487s make the answer.
    pub fn on_cancel(&mut self) -> Step {
        self.closed = true;
        Step {
            cancel: self.pending(usize::MAX),
            ..Step::default()
        }
    }

    /// After a branch ended: the next group, or the answer when nothing is
    /// pending and nothing may start.
    fn settle(&mut self, step: &mut Step) {
        if self.legs.iter().any(|l| matches!(l, Leg::Pending { .. })) {
            return;
        }
        if !self.closed {
            step.start = self.start_next();
            if !step.start.is_empty() {
                return;
            }
        }
        self.finished = true;
        step.finish = Some(match self.best {
            Some(code) => Final::Kept(code),
            None => Final::NoAnswer,
        });
    }
}

/// Whether final `a` is a better answer for the caller than `b` (RFC 3261
/// §16.7 step 6): a 6xx over anything, else the lower class; within 4xx the
/// ones that tell the caller how to retry (401, 407, 415, 420, 484); the
/// first of equals.
fn better(a: u16, b: u16) -> bool {
    let class = |c: u16| if c >= 600 { 0 } else { c / 100 };
    let (ca, cb) = (class(a), class(b));
    if ca != cb {
        return ca < cb;
    }
    let hint = |c: u16| matches!(c, 401 | 407 | 415 | 420 | 484);
    ca == 4 && hint(a) && !hint(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_q_rings_all_and_the_first_2xx_cancels_the_rest() {
        let (mut f, start) = Fork::new(&[1000, 1000, 1000]);
        assert_eq!(start, 0..3);
        assert!(f.on_provisional(1, 180).relay);
        assert!(!f.on_provisional(2, 100).relay, "100 is hop by hop");
        let s = f.on_final(1, 200);
        assert!(s.relay);
        assert_eq!(s.cancel.as_slice(), &[0, 2]);
        assert_eq!(s.finish, None);
        // The cancelled branches' 487s change nothing.
        assert_eq!(f.on_final(0, 487), Step::default());
        assert_eq!(f.on_final(2, 487), Step::default());
        // A second 2xx (it answered before its CANCEL) still goes up.
        let (mut f, _) = Fork::new(&[1000, 1000]);
        f.on_final(0, 200);
        let s = f.on_final(1, 200);
        assert!(s.relay && s.cancel.is_empty());
        assert!(!f.on_provisional(1, 180).relay, "decided");
    }

    #[test]
    fn decreasing_q_rings_one_group_after_the_other() {
        let (mut f, start) = Fork::new(&[1000, 1000, 500, 100]);
        assert_eq!(start, 0..2);
        assert!(!f.was_sent(2));
        let s = f.on_final(0, 486);
        assert!(s.keep && s.start.is_empty() && s.finish.is_none());
        let s = f.on_final(1, 503);
        assert!(!s.keep, "486 stays the best");
        assert_eq!(s.start, 2..3);
        let s = f.on_timeout(2);
        assert_eq!(s.start, 3..4);
        let s = f.on_final(3, 404);
        assert!(!s.keep, "the first of a class stays");
        assert_eq!(s.finish, Some(Final::Kept(486)));
    }

    #[test]
    fn a_6xx_cancels_the_rest_and_wins() {
        let (mut f, _) = Fork::new(&[1000, 1000, 1000, 10]);
        f.on_final(0, 486);
        let s = f.on_final(1, 603);
        assert!(s.keep);
        assert_eq!(s.cancel.as_slice(), &[2]);
        let s = f.on_final(2, 487);
        assert!(s.start.is_empty(), "no new group after a 6xx");
        assert_eq!(s.finish, Some(Final::Kept(603)));
        assert!(!f.was_sent(3));
    }

    #[test]
    fn response_selection_prefers_lower_classes_and_retry_hints() {
        let (mut f, _) = Fork::new(&[1, 1, 1]);
        f.on_final(0, 503);
        assert!(f.on_final(1, 486).keep);
        let s = f.on_final(2, 407);
        assert!(s.keep, "407 tells the caller how to retry");
        assert_eq!(s.finish, Some(Final::Kept(407)));
        let (mut f, _) = Fork::new(&[1, 1]);
        assert!(f.on_final(0, 302).keep);
        assert!(!f.on_final(1, 404).keep);
    }

    #[test]
    fn all_silent_is_no_answer_and_late_events_change_nothing() {
        let (mut f, _) = Fork::new(&[7, 7]);
        assert_eq!(f.on_timeout(0).finish, None);
        assert_eq!(f.on_timeout(1).finish, Some(Final::NoAnswer));
        assert!(f.is_decided());
        assert_eq!(f.on_final(0, 486), Step::default());
        assert_eq!(f.on_timeout(1), Step::default());
        assert_eq!(f.on_final(9, 200), Step::default(), "no such branch");
    }

    #[test]
    fn a_caller_cancel_cancels_the_pending_and_starts_nothing() {
        let (mut f, _) = Fork::new(&[9, 9, 1]);
        f.on_final(0, 486);
        let s = f.on_cancel();
        assert_eq!(s.cancel.as_slice(), &[1]);
        let s = f.on_final(1, 487);
        assert_eq!(s.finish, Some(Final::Kept(486)));
        assert!(!f.was_sent(2));
    }
}
