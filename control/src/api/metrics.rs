//! `GET /metrics`: Prometheus text exposition. Everything is read at scrape
//! time: per-worker counters summed, destination atomics, worker heartbeats
//! and queue depths. Nothing is kept between scrapes but the rate sampler.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use dataplane::dispatch::DestState;
use dataplane::proxy::Snapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::status::{self, Rates};
use super::ApiState;
use crate::run::Running;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    let mut registry = Registry::with_prefix("sipvane");
    registry.register_collector(Box::new(Scrape {
        running: Arc::clone(&st.running),
        rates: st.rates(),
    }));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => super::error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics"),
    }
}

/// One scrape's view of the proxy.
struct Scrape {
    running: Arc<Running>,
    rates: Rates,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&v, None)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: V,
) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn labelled_counter(m: &mut MetricEncoder, labels: &impl EncodeLabelSet, v: u64) -> fmt::Result {
    m.encode_family(labels)?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&v, None)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let r = &self.running;
        let total = status::totals(r);

        gauge(
            &mut e,
            "uptime_seconds",
            "Seconds since sipvane started.",
            r.epoch.elapsed().as_secs_f64(),
        )?;
        e.encode_descriptor("build", "sipvane version.", None, MetricType::Info)?
            .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        gauge(
            &mut e,
            "calls_per_second",
            "New INVITEs per second over the last second.",
            self.rates.calls_per_s,
        )?;
        gauge(
            &mut e,
            "answered_calls_per_second",
            "INVITEs answered 2xx per second over the last second.",
            self.rates.answered_per_s,
        )?;

        let dns = &r.dns;
        for (name, help, v) in [
            (
                "dns_queries",
                "DNS queries the control thread sent (NAPTR, SRV, A/AAAA).",
                &dns.queries,
            ),
            (
                "dns_failures",
                "DNS queries that failed (timeout, server failure); answers that a name does not exist are not failures.",
                &dns.failures,
            ),
            (
                "dns_cache_hits",
                "DNS questions answered from the control thread's cache.",
                &dns.cache_hits,
            ),
        ] {
            counter(&mut e, name, help, v.load(std::sync::atomic::Ordering::Relaxed))?;
        }
        counter(
            &mut e,
            "probe_forged_replies",
            "OPTIONS probe replies ignored because their sealed branch did not verify (forged or stale).",
            r.probe_forged.load(std::sync::atomic::Ordering::Relaxed),
        )?;

        // Every proxy counter under its own name, replies as one family.
        let names = total.fields();
        let docs = Snapshot::docs();
        for ((name, v), help) in names.iter().zip(docs) {
            if !name.starts_with("replies_") {
                counter(&mut e, name, help, *v)?;
            }
        }
        let mut m = e.encode_descriptor(
            "replies",
            "Replies sent upstream, local and relayed, by class.",
            None,
            MetricType::Counter,
        )?;
        for (name, v) in names.iter() {
            if let Some(class) = name.strip_prefix("replies_") {
                labelled_counter(&mut m, &[("class", class)], *v)?;
            }
        }
        gauge(
            &mut e,
            "dialogs_active",
            "Dialogs tracked now (2xx seen, no BYE yet).",
            total
                .dialogs_created
                .saturating_sub(total.dialogs_ended)
                .saturating_sub(total.dialogs_expired),
        )?;
        gauge(
            &mut e,
            "hep_collector_connections",
            "Workers connected to their TCP HEP collector now (hep_connects - hep_disconnects).",
            total.hep_connects.saturating_sub(total.hep_disconnects),
        )?;
        gauge(
            &mut e,
            "transactions_open",
            "Proxy transactions open now, summed over workers (the overload watermark counts them per worker).",
            self.running
                .stats
                .iter()
                .map(|s| status::open_transactions(&s.snapshot()))
                .sum::<u64>(),
        )?;

        self.encode_workers(&mut e)?;
        self.encode_events(&mut e)?;
        self.encode_acc(&mut e)?;
        self.encode_registrar(&mut e)?;
        self.encode_media(&mut e)?;
        self.encode_destinations(&mut e)
    }
}

impl Scrape {
    fn encode_workers(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let workers = self.running.workers.stats();
        let queues = self.running.workers.queue_depths();
        let label = |i: usize| [("worker", i.to_string())];
        let mut m = e.encode_descriptor(
            "worker_up",
            "1 while the worker's loop turns.",
            None,
            MetricType::Gauge,
        )?;
        for (i, w) in workers.iter().enumerate() {
            m.encode_family(&label(i))?
                .encode_gauge(&i64::from(status::alive(w)))?;
        }
        let mut m = e.encode_descriptor(
            "worker_handoff_queue_depth",
            "Datagrams waiting in the worker's handoff queue.",
            None,
            MetricType::Gauge,
        )?;
        for (i, q) in queues.iter().enumerate() {
            m.encode_family(&label(i))?.encode_gauge(&(*q as u64))?;
        }
        type Field = fn(&dataplane::worker::WorkerStats) -> u64;
        let per_worker: [(&str, &str, Field); 7] = [
            ("worker_datagrams_received", "Datagrams received.", |w| {
                w.datagrams_in
            }),
            ("worker_datagrams_sent", "Datagrams sent.", |w| {
                w.datagrams_out
            }),
            (
                "worker_send_errors",
                "Failed sends (including full socket buffers).",
                |w| w.send_errors,
            ),
            (
                "worker_send_would_block",
                "Sends dropped because the socket buffer was full.",
                |w| w.send_would_block,
            ),
            ("worker_recv_errors", "Receive errors.", |w| w.recv_errors),
            (
                "worker_truncated",
                "Datagrams dropped for not fitting the receive buffer.",
                |w| w.truncated,
            ),
            (
                "worker_handoff_drops",
                "Handoffs dropped because the target queue was full.",
                |w| w.handoff_drops,
            ),
        ];
        for (name, help, get) in per_worker {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (i, w) in workers.iter().enumerate() {
                labelled_counter(&mut m, &label(i), get(w))?;
            }
        }
        Self::encode_tcp(e, &workers)
    }

    /// TCP connections and messages per worker.
    fn encode_tcp(
        e: &mut DescriptorEncoder,
        workers: &[dataplane::worker::WorkerStats],
    ) -> fmt::Result {
        let label = |i: usize| [("worker", i.to_string())];
        let mut m = e.encode_descriptor(
            "worker_tcp_connections_open",
            "TCP connections the worker holds (accepted and opened).",
            None,
            MetricType::Gauge,
        )?;
        for (i, w) in workers.iter().enumerate() {
            m.encode_family(&label(i))?.encode_gauge(&w.tcp.open)?;
        }
        let mut m = e.encode_descriptor(
            "worker_tls_connections_open",
            "TLS connections the worker holds (part of worker_tcp_connections_open).",
            None,
            MetricType::Gauge,
        )?;
        for (i, w) in workers.iter().enumerate() {
            m.encode_family(&label(i))?.encode_gauge(&w.tcp.tls_open)?;
        }
        type Field = fn(&dataplane::worker::TcpStats) -> u64;
        let counters: [(&str, &str, Field); 11] = [
            (
                "worker_tcp_accepted",
                "Inbound TCP connections accepted.",
                |t| t.accepted,
            ),
            (
                "worker_tcp_refused",
                "Inbound TCP connections closed at once (tcp.max_connections / tcp.max_per_source).",
                |t| t.refused,
            ),
            (
                "worker_tcp_connected",
                "Outbound TCP connections established.",
                |t| t.connected,
            ),
            (
                "worker_tcp_messages_received",
                "SIP messages received over TCP.",
                |t| t.messages_in,
            ),
            (
                "worker_tcp_messages_sent",
                "SIP messages written to TCP connections.",
                |t| t.messages_out,
            ),
            (
                "worker_tcp_no_connection",
                "Messages dropped because the connection they were to leave on had closed.",
                |t| t.no_connection,
            ),
            (
                "worker_tls_accepted",
                "Inbound TLS connections accepted (part of worker_tcp_accepted).",
                |t| t.tls_accepted,
            ),
            (
                "tls_handshake_failures",
                "TLS handshakes that failed (a client rejecting the certificate, not speaking TLS, ...).",
                |t| t.tls_handshake_failures,
            ),
            (
                "tls_client_cert_failures",
                "TLS handshakes refused because the client presented no certificate signed by tls.client_ca, or a bad one (mutual TLS; part of tls_handshake_failures).",
                |t| t.tls_client_cert_failures,
            ),
            (
                "worker_tls_connected",
                "Outbound TLS connections established (handshake done) to TLS destinations.",
                |t| t.tls_connected,
            ),
            (
                "tls_out_handshake_failures",
                "TLS handshakes with destinations that failed (certificate not signed by tls.ca or not for the destination's name, not TLS, ...); the request fails over at once.",
                |t| t.tls_out_handshake_failures,
            ),
        ];
        for (name, help, get) in counters {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (i, w) in workers.iter().enumerate() {
                labelled_counter(&mut m, &label(i), get(&w.tcp))?;
            }
        }
        let mut m = e.encode_descriptor(
            "worker_tcp_closed",
            "TCP connections closed, by reason: peer, error, framing (no or bad Content-Length), oversize (tcp.max_message), slowloris (tcp.header_timeout_s), idle (tcp.idle_timeout_s), connect_failed, backlog (peer not reading), proxy_header, refused, tls (a failed TLS handshake or record).",
            None,
            MetricType::Counter,
        )?;
        for (i, w) in workers.iter().enumerate() {
            for r in dataplane::transport::CloseReason::ALL {
                let labels = [("worker", i.to_string()), ("reason", r.as_str().to_owned())];
                labelled_counter(&mut m, &labels, w.tcp.closed[r.index()])?;
            }
        }
        Ok(())
    }

    /// Call-event queues: the Redis exporter's (with `[events]`) and each
    /// worker's (with `[events]` or `[acc]`).
    fn encode_events(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        if let Some(queue) = &self.running.events {
            gauge(
                e,
                "event_queue_depth",
                "Call events waiting for the Redis exporter.",
                queue.len() as u64,
            )?;
            counter(
                e,
                "event_queue_dropped",
                "Call events dropped because the exporter's queue was full.",
                queue.dropped(),
            )?;
        }
        if let Some(x) = &self.running.events_exporter {
            let x = x.snapshot();
            counter(e, "events_sent", "Call events Redis acknowledged.", x.sent)?;
            counter(
                e,
                "events_dropped_buffer_full",
                "Call events dropped, oldest first, because Redis was slow or down longer than [events] buffer holds.",
                x.dropped_buffer_full,
            )?;
            counter(
                e,
                "events_redis_errors",
                "Failed connections to Redis and failed writes (the events stay buffered).",
                x.redis_errors,
            )?;
            counter(
                e,
                "events_reconnects",
                "Connections to Redis established again after a failure.",
                x.reconnects,
            )?;
            gauge(
                e,
                "events_buffered",
                "Call events the exporter holds now, waiting for Redis.",
                x.buffered,
            )?;
            gauge(
                e,
                "events_connected",
                "1 while the exporter is connected to Redis.",
                u64::from(x.connected),
            )?;
        }
        // The workers' queues exist when `[events]` or `[acc]` is on.
        let sinks = &self.running.event_sinks;
        if sinks.is_empty() {
            return Ok(());
        }
        let label = |i: usize| [("worker", i.to_string())];
        let mut m = e.encode_descriptor(
            "worker_event_queue_depth",
            "Call events waiting in the worker's queue for the control thread.",
            None,
            MetricType::Gauge,
        )?;
        for (i, s) in sinks.iter().enumerate() {
            m.encode_family(&label(i))?
                .encode_gauge(&(s.len() as u64))?;
        }
        let mut m = e.encode_descriptor(
            "worker_event_drops",
            "Call events the worker dropped because its queue was full.",
            None,
            MetricType::Counter,
        )?;
        for (i, s) in sinks.iter().enumerate() {
            labelled_counter(&mut m, &label(i), s.dropped())?;
        }
        Ok(())
    }

    /// Accounting rows, when `[acc]` is on. Every row built ends up in
    /// exactly one of: written directly, spooled, dropped, or still pending;
    /// every spooled row in: replayed, already_written, dropped (corrupt),
    /// or still in the spool.
    fn encode_acc(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let Some(a) = &self.running.acc else {
            return Ok(());
        };
        let counters: [(&str, &str, u64); 7] = [
            (
                "acc_rows",
                "Accounting rows built from call events.",
                a.rows(),
            ),
            (
                "acc_rows_written",
                "Accounting rows committed to the database (directly or replayed).",
                a.written(),
            ),
            (
                "acc_rows_spooled",
                "Accounting rows appended to the on-disk spool.",
                a.spooled(),
            ),
            (
                "acc_rows_replayed",
                "Spooled accounting rows committed to the database.",
                a.replayed(),
            ),
            (
                "acc_rows_already_written",
                "Spooled rows skipped because the database already had them.",
                a.already_written(),
            ),
            (
                "acc_transactions",
                "Accounting transactions committed.",
                a.transactions(),
            ),
            (
                "acc_db_errors",
                "Failed accounting database connects and transactions.",
                a.db_errors(),
            ),
        ];
        for (name, help, v) in counters {
            counter(e, name, help, v)?;
        }
        let mut m = e.encode_descriptor(
            "acc_rows_dropped",
            "Accounting rows lost, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in [
            ("queue_full", a.dropped_queue_full()),
            ("spool_full", a.dropped_spool_full()),
            ("corrupt", a.dropped_corrupt()),
            ("rejected", a.dropped_rejected()),
        ] {
            labelled_counter(&mut m, &[("reason", reason)], v)?;
        }
        gauge(
            e,
            "acc_spool_rows",
            "Accounting rows in the spool now.",
            a.spool_rows(),
        )?;
        gauge(
            e,
            "acc_spool_bytes",
            "Size of the accounting spool file.",
            a.spool_bytes(),
        )?;
        gauge(
            e,
            "acc_pending_rows",
            "Accounting rows in memory, not yet written or spooled.",
            a.pending() + a.queued(),
        )?;
        gauge(
            e,
            "acc_db_up",
            "1 while the accounting database connection is up.",
            i64::from(a.connected()),
        )
    }

    /// The registrar's counters, table size and database, when it is on.
    fn encode_registrar(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let Some(r) = &self.running.proxy.registrar else {
            return Ok(());
        };
        let s = &r.stats;
        let get = dataplane::registrar::RegistrarStats::get;
        let counters: [(&str, &str, u64); 9] = [
            (
                "registrar_registers_ok",
                "REGISTERs answered 200.",
                get(&s.registers_ok),
            ),
            (
                "registrar_challenges",
                "Requests challenged with 401 or 407.",
                get(&s.challenges),
            ),
            (
                "registrar_auth_failures",
                "Credentials refused (403 or 400): wrong password, unknown user, user mismatch.",
                get(&s.auth_failures),
            ),
            (
                "registrar_registers_refused",
                "REGISTERs refused otherwise (400, 403 domain, 423, 500, 503).",
                get(&s.registers_refused),
            ),
            (
                "registrar_updates_dropped",
                "REGISTERs answered 503 because the queue to the control thread was full.",
                get(&s.updates_dropped),
            ),
            (
                "registrar_lookups_found",
                "Requests to registered users sent to a binding.",
                get(&s.lookups_found),
            ),
            (
                "registrar_lookups_missing",
                "Requests to registered users without a live binding (404).",
                get(&s.lookups_missing),
            ),
            (
                "registrar_nat_pings",
                "OPTIONS keep-alives sent to bindings behind a NAT.",
                get(&s.nat_pings),
            ),
            (
                "registrar_nat_ping_removals",
                "Bindings behind a NAT removed for leaving their keep-alives unanswered.",
                get(&s.nat_ping_removals),
            ),
        ];
        for (name, help, v) in counters {
            counter(e, name, help, v)?;
        }
        let (aors, bindings) = r.location.counts();
        gauge(
            e,
            "registrar_aors",
            "Users with bindings in the location table.",
            aors as i64,
        )?;
        gauge(
            e,
            "registrar_bindings",
            "Bindings in the location table.",
            bindings as i64,
        )?;
        let Some(db) = &self.running.registrar_db else {
            return Ok(());
        };
        use std::sync::atomic::Ordering::Relaxed;
        gauge(
            e,
            "registrar_accounts",
            "Accounts read from subscriber (cached).",
            db.accounts.load(Relaxed) as i64,
        )?;
        gauge(
            e,
            "registrar_db_up",
            "1 while the last registrar database read or write succeeded.",
            i64::from(db.up.load(Relaxed)),
        )?;
        gauge(
            e,
            "registrar_location_pending",
            "Users changed but not yet written to location.",
            db.dirty.load(Relaxed) as i64,
        )?;
        counter(
            e,
            "registrar_credential_failures",
            "Failed reads of subscriber.",
            db.credential_failures.load(Relaxed),
        )?;
        counter(
            e,
            "registrar_location_write_failures",
            "Failed writes to location.",
            db.write_failures.load(Relaxed),
        )
    }

    /// RTPEngine health and ng commands per engine, when anchoring is on.
    fn encode_media(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let Some(media) = &self.running.media else {
            return Ok(());
        };
        let engines = status::engines(&self.running);
        let label = |x: &super::model::EngineStatus| [("engine", x.address.clone())];
        let mut m = e.encode_descriptor(
            "rtpengine_up",
            "1 while the engine answers pings (and the workers' requests).",
            None,
            MetricType::Gauge,
        )?;
        for x in &engines {
            m.encode_family(&label(x))?.encode_gauge(&i64::from(x.up))?;
        }
        type Pick = fn(&super::model::EngineStatus) -> u64;
        let families: [(&str, &str, Pick); 5] = [
            ("rtpengine_offers", "ng offer commands sent.", |x| x.offers),
            ("rtpengine_answers", "ng answer commands sent.", |x| {
                x.answers
            }),
            ("rtpengine_deletes", "ng delete commands sent.", |x| {
                x.deletes
            }),
            (
                "rtpengine_timeouts",
                "ng commands given up after every retransmission.",
                |x| x.timeouts,
            ),
            (
                "rtpengine_errors",
                "ng commands answered with result=error.",
                |x| x.errors,
            ),
        ];
        for (name, help, pick) in families {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for x in &engines {
                labelled_counter(&mut m, &label(x), pick(x))?;
            }
        }
        let (rejected, passthrough) = media.policy_totals();
        counter(
            e,
            "rtpengine_rejected_calls",
            "Calls answered 503 because no engine answered (on_failure = reject).",
            rejected,
        )?;
        counter(
            e,
            "rtpengine_passthrough_calls",
            "Calls forwarded without anchoring because no engine answered (on_failure = passthrough).",
            passthrough,
        )
    }

    fn encode_destinations(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let table = self.running.table.load();
        let now = Instant::now();
        let dests: Vec<_> = table
            .iter()
            .map(|(_, d)| {
                let labels = vec![("set", d.set.to_string()), ("uri", d.uri.clone())];
                (labels, d.stats.snapshot(now))
            })
            .collect();
        let mut m = e.encode_descriptor(
            "destination_active_calls",
            "Calls being set up or established through the destination.",
            None,
            MetricType::Gauge,
        )?;
        for (l, s) in &dests {
            m.encode_family(l)?.encode_gauge(&s.active_calls)?;
        }
        let mut m = e.encode_descriptor(
            "destination_state",
            "1 for the destination's current state.",
            None,
            MetricType::Gauge,
        )?;
        for (l, s) in &dests {
            for st in [
                DestState::Active,
                DestState::Inactive,
                DestState::Disabled,
                DestState::Probing,
            ] {
                let mut l = l.clone();
                l.push(("state", st.as_str().to_owned()));
                m.encode_family(&l)?
                    .encode_gauge(&i64::from(s.state == st))?;
            }
        }
        let mut m = e.encode_descriptor(
            "destination_usable",
            "1 if the destination may be selected now.",
            None,
            MetricType::Gauge,
        )?;
        for (l, s) in &dests {
            m.encode_family(l)?.encode_gauge(&i64::from(s.usable))?;
        }
        let mut m = e.encode_descriptor(
            "destination_selected",
            "Times the destination was the first candidate.",
            None,
            MetricType::Counter,
        )?;
        for (l, s) in &dests {
            labelled_counter(&mut m, l, s.selected)?;
        }
        let mut m = e.encode_descriptor(
            "destination_failures",
            "Failed attempts (408, 500, 503, timeout).",
            None,
            MetricType::Counter,
        )?;
        for (l, s) in &dests {
            labelled_counter(&mut m, l, s.failed)?;
        }
        let mut m = e.encode_descriptor(
            "destination_latency_seconds",
            "Latency EWMA, for destinations measured so far.",
            None,
            MetricType::Gauge,
        )?;
        for (l, s) in &dests {
            if let Some(us) = s.latency_us {
                m.encode_family(l)?.encode_gauge(&(f64::from(us) / 1e6))?;
            }
        }
        Ok(())
    }
}
