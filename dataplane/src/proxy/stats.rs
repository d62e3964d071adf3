//! Per-worker counters.
//!
//! Each worker is the only writer of its own block, so increments are plain
//! relaxed load+store pairs on a cache line nobody else writes; the control
//! thread sums the blocks at scrape time. No shared atomics on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Counters of one worker. Read with [`Counters::snapshot`].
        #[derive(Default, Debug)]
        pub struct Counters {
            $(#[doc = $doc] pub $name: AtomicU64,)*
        }

        /// A plain copy of the counters, for summing and reporting.
        #[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $(#[doc = $doc] pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Snapshot {
            /// (name, value) pairs, for metrics and the management API.
            pub fn fields(&self) -> [(&'static str, u64); counters!(@count $($name)*)] {
                [$((stringify!($name), self.$name),)*]
            }

            /// The doc line of each counter, in [`Snapshot::fields`] order
            /// (help text for metrics).
            pub fn docs() -> [&'static str; counters!(@count $($name)*)] {
                [$($doc,)*]
            }

            pub fn add(&mut self, other: &Snapshot) {
                $(self.$name += other.$name;)*
            }
        }
    };
    (@count) => { 0 };
    (@count $head:ident $($tail:ident)*) => { 1 + counters!(@count $($tail)*) };
}

counters! {
    rx_datagrams: "Datagrams received.",
    tx_datagrams: "Datagrams handed to the driver to send.",
    parse_errors: "Datagrams dropped because they could not be framed as SIP.",
    bad_requests: "Requests answered 400 because a header was malformed.",
    requests: "Requests received (including retransmissions).",
    responses: "Responses received.",
    retransmissions_absorbed: "Retransmitted requests or responses absorbed by a transaction.",
    initial_invites: "New INVITE transactions (call attempts).",
    transactions_created: "Proxy transactions created (open now: created - ended).",
    transactions_ended: "Proxy transactions finished and removed from the table.",
    calls_answered: "INVITEs that got a 2xx from a destination.",
    calls_failed: "INVITEs that ended with a final failure sent upstream.",
    calls_cancelled: "INVITEs cancelled by the caller.",
    failovers: "Times a request was moved to the next destination.",
    timeouts: "Client transactions that timed out (fr_timer / fr_inv_timer).",
    connect_failures: "Attempts failed at once because their TCP connection could not be opened.",
    udp_mtu_switches: "Requests to a UDP next hop sent over TCP instead because they were larger than [tcp] udp_mtu (RFC 3261 §18.1.1).",
    udp_mtu_fallbacks: "Of those, requests sent over UDP after all because the next hop refused the TCP connection.",
    no_destination: "Requests answered 503 because no destination was usable.",
    overload_rejects: "New INVITEs answered 503 + Retry-After at the overload watermark.",
    overload_feedback: "Responses that asked an RFC 7339 client (oc in its Via) to send less: oc above 0.",
    backlog_rejects: "New INVITEs answered 503 + Retry-After because the worker's receive queue stayed a quarter full for shed_backlog_ms (CPU overload).",
    table_full: "Requests answered 503 because the transaction table was full.",
    replies_1xx: "Provisional replies sent upstream (local and relayed).",
    replies_2xx: "2xx replies sent upstream.",
    replies_3xx: "3xx replies sent upstream.",
    replies_4xx: "4xx replies sent upstream.",
    replies_5xx: "5xx replies sent upstream.",
    replies_6xx: "6xx replies sent upstream.",
    stateless_forwards: "Responses and ACKs relayed without a transaction.",
    stray_responses: "Responses dropped because no transaction or Via matched.",
    relay_denied: "Requests refused by the relay policy (403/404: a route not ours, a domain not served, a target not allowed).",
    abandoned_cancels: "CANCELs sent to an attempt given up at fr_timer that rang later (no destination left ringing).",
    flood_blocks: "Sources blocked for exceeding security.flood.per_source_rps.",
    flood_rejects: "Requests refused (503 or dropped) because their source was blocked.",
    forged_responses: "Responses dropped because their branch has sipvane's form but not its seal (guessed or altered).",
    unmatched_acks: "ACKs dropped because they matched no transaction and route nowhere (e.g. the ACK for a 503 sipvane sent without one).",
    dns_parked: "Requests parked while the control thread resolved their next hop's host name.",
    dns_resumed: "Parked requests routed again once their name's answer came back.",
    dns_refused: "Requests answered 503 because too many were parked for DNS (or the question queue was full).",
    dns_timeouts: "Parked requests answered 503 because no DNS answer came within dns.max_wait_ms.",
    dns_unresolvable: "Requests answered 478 because their next hop's host name does not resolve.",
    handoffs: "Datagrams handed to the worker that owns them.",
    relayed_to_predecessor: "Datagrams of the previous process's transactions relayed to it during a restart.",
    loops: "Requests rejected with 483 (Max-Forwards exhausted).",
    dialogs_created: "Dialogs created (2xx to INVITE).",
    dialogs_ended: "Dialogs ended by BYE.",
    dialogs_expired: "Dialogs forgotten after dialog_timeout.",
    dialogs_full: "Dialogs not tracked because the dialog table was full.",
    hep_sent: "SIP messages sent to the HEP collector ([hep]).",
    hep_dropped: "SIP messages not captured: the HEP send failed or would block, a TCP collector's queue was full or its connection broke mid-packet, or the packet exceeded 64 KiB.",
    hep_connects: "Connections to a TCP HEP collector established (connected now: connects - disconnects).",
    hep_connect_failures: "Connection attempts to a TCP HEP collector that failed (retried with backoff).",
    hep_disconnects: "Established TCP HEP collector connections lost.",
}

/// One worker's counters on a cache line of their own.
pub type ProxyStats = CachePadded<Counters>;

/// Adds one to a counter owned by the calling worker.
#[inline]
pub fn bump(c: &AtomicU64) {
    // Single writer: a relaxed load+store is enough and avoids a locked RMW.
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Counts a reply sent upstream by its class.
pub fn count_reply(c: &Counters, code: u16) {
    let counter = match code {
        100..=199 => &c.replies_1xx,
        200..=299 => &c.replies_2xx,
        300..=399 => &c.replies_3xx,
        400..=499 => &c.replies_4xx,
        500..=599 => &c.replies_5xx,
        _ => &c.replies_6xx,
    };
    bump(counter);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_and_names() {
        let c = Counters::default();
        bump(&c.failovers);
        bump(&c.failovers);
        count_reply(&c, 503);
        let mut total = Snapshot::default();
        total.add(&c.snapshot());
        total.add(&c.snapshot());
        assert_eq!(total.failovers, 4);
        assert_eq!(total.replies_5xx, 2);
        assert!(total
            .fields()
            .iter()
            .any(|&(n, v)| n == "failovers" && v == 4));
        let docs = Snapshot::docs();
        let i = total.fields().iter().position(|&(n, _)| n == "failovers");
        assert_eq!(
            i.map(|i| docs[i]),
            Some("Times a request was moved to the next destination.")
        );
    }
}
