//! `sipvane run`: turns a validated configuration into running workers and
//! keeps the control thread until a signal asks it to stop.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dataplane::dispatch::{Algorithm, HealthPolicy, SharedTable};
use dataplane::proxy::media::{MediaConfig, MediaPolicy, MediaShared};
use dataplane::proxy::{self, ProxyConfig, ProxyStats, SetRule, UnknownDomain, Worker};
use dataplane::txn::TimerConfig;
use dataplane::worker::{self, Driver, SocketSpec, TcpSpec, TlsSpec, WorkerSpec};
use tracing::{error, info, warn};

use crate::api;
use crate::config::{Config, DispatchRule, RtpFailure};
use crate::events::{EventQueue, Exporter, ExporterConfig, WallClock};
use crate::handover;
use crate::probe;
use crate::source;
use crate::source::reload::{ReloadHandle, ReloadSource, Reloader};
use crate::supervise::{Supervised, TestPanic, Watched};
use dataplane::proxy::events::EventSink;
use dataplane::proxy::predecessor::Predecessor;

/// Call events one worker may have waiting before it drops (and counts) them.
const WORKER_EVENT_QUEUE: usize = 16_384;
/// How often the control thread collects the workers' call events.
const EVENT_DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// What the control thread's tasks (management API, probing, reloads) share
/// about the running proxy. The worker pool itself stays with `run`, which
/// alone may stop it.
pub struct Running {
    pub table: SharedTable,
    pub stats: Vec<Arc<ProxyStats>>,
    pub proxy: Arc<ProxyConfig>,
    pub listen: SocketAddr,
    pub dispatcher_list: Option<PathBuf>,
    pub epoch: Instant,
    /// The IO driver the workers actually use.
    pub driver: Driver,
    /// Asks the control thread to re-read the dispatcher source.
    pub reload: ReloadHandle,
    /// The control thread's DNS counters (`sipvane_dns_*`).
    pub dns: Arc<crate::dns::DnsStats>,
    /// OPTIONS probe replies ignored because their sealed branch did not
    /// verify (`sipvane_probe_forged_replies`).
    pub probe_forged: Arc<std::sync::atomic::AtomicU64>,
    /// The control thread's resolver (it also answers the workers' questions
    /// about next hops named by host names, `proxy.names`).
    pub resolver: Arc<crate::dns::Resolver>,
    /// RTPEngine anchoring: engines, health, per-worker per-engine counters;
    /// `None` when `[rtpengine] engines` is empty.
    pub media: Option<Arc<MediaShared>>,
    /// The export queue when `[events] redis_url` is set; control tasks push
    /// their own events (dst_up / dst_down) here.
    pub events: Option<EventQueue>,
    /// The Redis exporter's counters (`sipvane_events_*`) when `[events]
    /// redis_url` is set.
    pub events_exporter: Option<Arc<crate::events::ExporterStats>>,
    /// Each worker's call-event queue (empty when neither `[events]` nor
    /// `[acc]` is on).
    pub event_sinks: Vec<Arc<EventSink>>,
    /// Accounting counters when `[acc] db_url` is set.
    pub acc: Option<Arc<crate::acc::AccStats>>,
    /// Worker heartbeats, I/O counters and queue depths.
    pub workers: worker::Monitor,
    /// The registrar's database status when `[registrar] db_url` is set
    /// (the registrar itself is `proxy.registrar`).
    pub registrar_db: Option<Arc<crate::registrar::DbStatus>>,
    /// `POST /restart`: starts the process that takes over this one.
    pub restart: handover::Restarter,
}

/// A worker's TCP limits from `[tcp]`.
fn tcp_limits(t: &crate::config::TcpConfig) -> dataplane::transport::Limits {
    dataplane::transport::Limits {
        max_message: t.max_message as usize,
        header_timeout: Duration::from_secs(u64::from(t.header_timeout_s)),
        idle_timeout: Duration::from_secs(u64::from(t.idle_timeout_s)),
        max_per_source: t.max_per_source,
        max_connections: t.max_connections as usize,
    }
}

/// Builds the proxy core's settings from the file's.
pub fn proxy_config(cfg: &Config, workers: usize) -> Result<ProxyConfig> {
    let listen = cfg.proxy.listen;
    let private_ports = (0..workers)
        .map(|i| {
            cfg.proxy
                .private_port(i)
                .ok_or_else(|| anyhow!("{workers} workers need private ports beyond 65535; lower proxy.private_port_base"))
        })
        .collect::<Result<Vec<u16>>>()?;
    let advertise = cfg.proxy.advertise_host();
    let mut local_hosts = vec![listen.ip().to_string(), advertise.clone()];
    if listen.ip().is_unspecified() {
        local_hosts.push("127.0.0.1".into());
    }
    let algorithm: Algorithm = cfg
        .dispatcher
        .algorithm
        .to_string()
        .parse()
        .map_err(|e| anyhow!("dispatcher algorithm: {e}"))?;
    let max_transactions = cfg.proxy.max_transactions as usize;
    Ok(ProxyConfig {
        advertise,
        local_hosts,
        public_port: listen.port(),
        tls_port: cfg
            .tls
            .listen_addr()
            .filter(|_| cfg.tcp.enabled)
            .map(|a| a.port()),
        private_ports,
        algorithm,
        default_set: cfg.dispatcher.default_set,
        rules: cfg
            .dispatcher
            .rules
            .iter()
            .map(|r: &DispatchRule| match (&r.prefix, &r.domain) {
                (Some(p), _) => SetRule::Prefix {
                    prefix: p.clone(),
                    set: r.set,
                    media: r.rtpengine,
                },
                (None, Some(d)) => SetRule::Domain {
                    domain: d.clone(),
                    set: r.set,
                    media: r.rtpengine,
                },
                // Validation guarantees exactly one of the two.
                (None, None) => SetRule::Prefix {
                    prefix: String::new(),
                    set: r.set,
                    media: r.rtpengine,
                },
            })
            .collect(),
        failover_codes: cfg.dispatcher.failover_codes.clone(),
        timers: TimerConfig {
            fr_timer: cfg.dispatcher.fr_timer(),
            fr_inv_timer: cfg.dispatcher.fr_inv_timer(),
            wait: std::time::Duration::from_millis(cfg.dispatcher.wait_timer_ms),
            ..TimerConfig::default()
        },
        health: HealthPolicy {
            failure_threshold: cfg.dispatcher.failure_threshold,
            hold_down: cfg.dispatcher.hold_down(),
        },
        max_transactions,
        overload_transactions: ((max_transactions as f64) * cfg.proxy.overload_watermark) as usize,
        max_dialogs: cfg.proxy.max_dialogs as usize,
        retry_after_s: cfg.proxy.retry_after_s,
        overload_control: cfg.proxy.overload_control.then_some({
            dataplane::proxy::config::OverloadControl {
                start_transactions: ((max_transactions as f64)
                    * cfg.proxy.overload_watermark
                    * cfg.proxy.overload_control_start)
                    as usize,
                validity_ms: cfg.proxy.overload_control_validity_ms,
            }
        }),
        // Only with a TCP side to switch to.
        udp_mtu: if cfg.tcp.enabled {
            cfg.tcp.udp_mtu as usize
        } else {
            0
        },
        shed_backlog: (cfg.proxy.shed_backlog_ms > 0)
            .then(|| std::time::Duration::from_millis(u64::from(cfg.proxy.shed_backlog_ms))),
        record_route: cfg.proxy.record_route,
        domains: cfg.proxy.domains.clone(),
        unknown_domain: match cfg.proxy.unknown_domain {
            crate::config::UnknownDomain::Reject => UnknownDomain::Reject,
            crate::config::UnknownDomain::Relay => UnknownDomain::Relay,
        },
        server_header: cfg.proxy.server_header.clone(),
        dialog_timeout: std::time::Duration::from_secs(u64::from(cfg.proxy.dialog_timeout_s)),
        balance_by_call_id: cfg.proxy.balance == crate::config::Balance::Callid,
        key_seed: random_seed()?,
        branch_secret: random_seed()?,
        epoch: random_seed()?[0] as u16,
        media: media_config(cfg, workers)?.map(Arc::new),
        trusted_sources: cfg
            .security
            .trusted_sources
            .iter()
            .map(|c| {
                crate::config::parse_cidr(c)
                    .map_err(|e| anyhow!("security.trusted_sources: {c}: {e}"))
            })
            .collect::<Result<_>>()?,
        preloaded_route: match cfg.security.preloaded_route {
            crate::config::PreloadedRoute::Strip => dataplane::route::PreloadedRoute::Strip,
            crate::config::PreloadedRoute::Reject => dataplane::route::PreloadedRoute::Reject,
            crate::config::PreloadedRoute::Follow => dataplane::route::PreloadedRoute::Follow,
        },
        dialog_targets: match cfg.security.dialog_targets {
            crate::config::DialogTargets::Known => dataplane::route::DialogTargets::Known,
            crate::config::DialogTargets::Any => dataplane::route::DialogTargets::Any,
        },
        registrar: crate::registrar::shared(cfg)?,
        flood: match cfg.security.flood.per_source_rps {
            0 => None,
            rps => Some(Arc::new(dataplane::proxy::flood::FloodGuard::new(
                dataplane::proxy::flood::FloodLimits {
                    per_source_rps: rps,
                    block: std::time::Duration::from_secs(u64::from(cfg.security.flood.block_s)),
                    drop: cfg.security.flood.action == crate::config::FloodAction::Drop,
                    max_sources: cfg.security.flood.max_sources as usize,
                },
                random_seed()?,
                std::time::Instant::now(),
            ))),
        },
        // Set by `start` when this process takes over from a running one.
        predecessor: None,
        names: Some(dataplane::proxy::NameSettings {
            bridge: Arc::new(dataplane::route::names::NameBridge::new(
                workers,
                (cfg.dns.max_parked as usize).max(16),
            )),
            max_parked: cfg.dns.max_parked as usize,
            max_wait: std::time::Duration::from_millis(cfg.dns.max_wait_ms),
        }),
    })
}

/// The workers' RTPEngine settings; `None` when no engine is configured.
fn media_config(cfg: &Config, workers: usize) -> Result<Option<MediaShared>> {
    let r = &cfg.rtpengine;
    if r.engines.is_empty() {
        return Ok(None);
    }
    let flags = |k: &str, v: &str| {
        dataplane::rtpengine::NgFlags::parse(v).map_err(|e| anyhow!("rtpengine.{k}: {e}"))
    };
    let media = MediaConfig {
        engines: r.engines.iter().map(|e| (e.addr, e.weight)).collect(),
        offer_flags: flags("offer_flags", &r.offer_flags)?,
        answer_flags: flags("answer_flags", &r.answer_flags)?,
        sets: r.sets.clone(),
        timeout: r.timeout(),
        retries: r.retries,
        on_failure: match r.on_failure {
            RtpFailure::Reject => MediaPolicy::Reject,
            RtpFailure::Passthrough => MediaPolicy::Passthrough,
        },
        recheck_interval: Some(
            r.ping_interval()
                .unwrap_or(std::time::Duration::from_secs(5)),
        ),
    };
    // Cookies must differ per process start (RTPEngine caches replies by cookie).
    let instance = random_seed()?[0] as u32;
    Ok(Some(MediaShared::new(media, workers, instance)))
}

/// Binds the sockets, loads the destinations and starts the workers. The
/// returned [`Reloader`] must be run on the control thread for
/// `Running::reload` to be answered.
pub fn start(cfg: &Config, rt: &tokio::runtime::Runtime) -> Result<Started> {
    let listen = cfg.proxy.listen;
    let workers = cfg.proxy.workers.resolve();
    let mut proxy_cfg = proxy_config(cfg, workers)?;
    let epoch = Instant::now();

    let dns = {
        // hickory's runtime handle is taken when the resolver is built.
        let _rt = rt.enter();
        let dns = crate::dns::Resolver::new(&cfg.dns).map_err(|e| anyhow!(e))?;
        Arc::new(dns.with_tls(!cfg.tls.ca.is_empty()))
    };
    let source::reload::Loaded {
        table,
        source,
        defs,
        resolved,
    } = rt
        .block_on(source::reload::initial_load(&cfg.dispatcher, epoch, &dns))
        .map_err(|e| anyhow!(e))?;
    if table.sets().is_empty() {
        warn!("no dispatcher destinations: every initial request will get 503");
    }
    let dispatcher_list = match &source {
        ReloadSource::File { path, .. } => Some(path.clone()),
        _ => None,
    };
    let table = dataplane::dispatch::shared(table);
    let driver: Driver = cfg
        .proxy
        .io
        .as_str()
        .parse()
        .map_err(|e| anyhow!("proxy.io: {e:?}"))?;

    // Credentials and bindings are loaded before the first REGISTER can arrive.
    let registrar = match &proxy_cfg.registrar {
        Some(r) => Some(rt.block_on(crate::registrar::Service::start(cfg, r.clone()))?),
        None => None,
    };

    // Everything slow is done: take over from a running process now, so the
    // SIP sockets go unread for as short a time as possible.
    let handover_path = std::path::Path::new(&cfg.mgmt.handover_socket);
    let taken = match handover_path.as_os_str().is_empty() {
        true => None,
        false => handover::take(handover_path, listen, &proxy_cfg.private_ports)?,
    };
    let mut inherit = worker::Inherit::default();
    let succession = taken.map(|t| {
        proxy_cfg.key_seed = t.key_seed;
        proxy_cfg.branch_secret = t.branch_secret;
        // Same secrets, a new epoch: no branch of the old process repeats,
        // and responses to its requests are told apart.
        proxy_cfg.epoch = t.epoch.wrapping_add(1);
        let predecessor = Arc::new(Predecessor::new(t.epoch, &t.reports));
        proxy_cfg.predecessor = Some(predecessor.clone());
        inherit.sockets = t.sockets;
        inherit.predecessor = Some(t.relay);
        info!(
            pid = t.pid,
            transactions = predecessor.transactions(),
            "took over the SIP sockets from the running process"
        );
        Succession {
            pid: t.pid,
            mgmt: t.mgmt,
            connection: t.connection,
            predecessor,
        }
    });
    let proxy_cfg = Arc::new(proxy_cfg);

    let stats: Vec<Arc<ProxyStats>> = (0..workers)
        .map(|_| Arc::new(ProxyStats::default()))
        .collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let proxy_from = cfg
        .tcp
        .proxy_protocol_from
        .iter()
        .map(|c| {
            crate::config::parse_cidr(c).map_err(|e| anyhow!("tcp.proxy_protocol_from: {c}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    // One server configuration for every worker: a reload swaps it for all.
    let tls = match cfg.tls.listen_addr() {
        Some(addr) => {
            let server = cfg.tls.load().map_err(|e| anyhow!("tls: {e}"))?;
            info!(%addr, "TLS listener");
            Some(TlsSpec {
                addr,
                server: dataplane::transport::tls::TlsServer::new(server),
            })
        }
        None => None,
    };
    // Verifies TLS destinations (`[tls] ca`); validation loaded it already.
    let tls_client = cfg
        .tls
        .client()
        .transpose()
        .map_err(|e| anyhow!("tls.ca: {e}"))?;
    let specs = (0..workers)
        .map(|i| WorkerSpec {
            sockets: vec![
                SocketSpec {
                    addr: listen,
                    reuse_port: true,
                    recv_buffer: Some(4 << 20),
                    send_buffer: Some(4 << 20),
                },
                SocketSpec {
                    addr: SocketAddr::new(listen.ip(), proxy_cfg.private_ports[i]),
                    reuse_port: false,
                    recv_buffer: Some(4 << 20),
                    send_buffer: Some(4 << 20),
                },
            ]
            .into_iter()
            .chain(media_socket(&proxy_cfg))
            .collect(),
            cpu: Some(i % cpus),
            tcp: cfg.tcp.enabled.then(|| TcpSpec {
                addr: listen,
                limits: tcp_limits(&cfg.tcp),
                proxy_from: proxy_from.clone(),
                tls: tls.clone(),
                tls_client: tls_client.clone(),
            }),
        })
        .collect();

    let events = (!cfg.events.redis_url.is_empty())
        .then(|| EventQueue::new(cfg.events.buffer.max(1) as usize));
    // Opens (and checks) the spool before any call can produce a row.
    let acc = crate::acc::start(&cfg.acc, WallClock::new())?;
    let event_sinks: Vec<Arc<EventSink>> = match events.is_some() || acc.is_some() {
        true => (0..workers)
            .map(|_| Arc::new(EventSink::new(WORKER_EVENT_QUEUE)))
            .collect(),
        false => Vec::new(),
    };

    let hep = hep_config(cfg);
    let core_advertise: Option<std::net::IpAddr> = proxy_cfg.advertise.parse().ok();
    let core_cfg = proxy_cfg.clone();
    let core_table = table.clone();
    let core_stats = stats.clone();
    let core_sinks = event_sinks.clone();
    let build = move |ctx: worker::WorkerContext| {
        let worker = Worker::new(
            ctx.index,
            core_cfg.clone(),
            core_table.clone(),
            core_stats[ctx.index].clone(),
            Instant::now(),
        );
        let worker = match core_sinks.get(ctx.index) {
            Some(sink) => worker.with_events(sink.clone()),
            None => worker,
        };
        match &hep {
            Some(h) => {
                // The SIP sockets (public, private) are captured, not the ng socket;
                // a wildcard bind is reported as the advertised address.
                let local = ctx
                    .local_addrs
                    .iter()
                    .take(2)
                    .map(|a| match core_advertise {
                        Some(ip) if a.ip().is_unspecified() => SocketAddr::new(ip, a.port()),
                        _ => *a,
                    })
                    .collect();
                match dataplane::hep::Tap::new(h.clone(), local, core_stats[ctx.index].clone()) {
                    Ok(tap) => worker.with_hep(tap),
                    Err(e) => {
                        warn!(worker = ctx.index, error = %e, "HEP capture off");
                        worker
                    }
                }
            }
            None => worker,
        }
    };
    let panic_on_request = TestPanic::from_env() == Some(TestPanic::Worker);
    let pool = worker::start_with(driver, specs, inherit, move |ctx| Supervised {
        core: build(ctx),
        panic_on_request,
    })
    .with_context(|| format!("starting workers on {listen}"))?;
    info!(
        %listen,
        workers,
        driver = %pool.driver(),
        private_ports = ?proxy_cfg.private_ports,
        advertise = %proxy_cfg.advertise,
        "sipvane is running"
    );
    if let Some(names) = &proxy_cfg.names {
        // An answer wakes its worker like a handed-over datagram would.
        let injector = pool.injector();
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        names.bridge.on_answer(move |w| {
            injector.inject(w, dataplane::proxy::SOCK_NAMES, nowhere, &[]);
        });
    }
    let dns_stats = dns.stats();
    let resolver = dns.clone();
    let (reloader, reload) = Reloader::new(source, table.clone(), dns, defs, resolved);
    let reloader = reloader.with_tls(tls.map(|t| crate::source::reload::TlsReload {
        server: t.server,
        config: cfg.tls.clone(),
    }));
    let driver = pool.driver();
    let media = proxy_cfg.media.clone();
    let running = Running {
        media,
        table,
        stats,
        proxy: proxy_cfg,
        listen,
        dispatcher_list,
        epoch,
        driver,
        reload,
        dns: dns_stats,
        probe_forged: Arc::default(),
        resolver,
        events,
        // Set by `run` when it builds the exporter.
        events_exporter: None,
        event_sinks,
        acc: acc.as_ref().map(|(_, w)| w.stats()),
        workers: pool.monitor(),
        registrar_db: registrar.as_ref().map(crate::registrar::Service::status),
        restart: handover::Restarter::new(!cfg.mgmt.handover_socket.is_empty()),
    };
    Ok((pool, running, reloader, acc, registrar, succession))
}

/// A process that took over from a running one: what it keeps of it.
pub struct Succession {
    pub pid: u32,
    /// The old process's management API listener, if it passed it on.
    pub mgmt: Option<std::net::TcpListener>,
    /// Closed when the old process exits.
    pub connection: std::os::unix::net::UnixStream,
    pub predecessor: Arc<Predecessor>,
}

/// The workers' HEP settings; `None` when `[hep] collector` is empty (off).
fn hep_config(cfg: &Config) -> Option<Arc<dataplane::hep::HepConfig>> {
    let h = &cfg.hep;
    let (transport, collector) = h.collector_addr()?;
    info!(%collector, ?transport, agent_id = h.agent_id, sample = h.sample, "HEP capture on");
    Some(Arc::new(dataplane::hep::HepConfig {
        collector,
        transport,
        queue_bytes: h.queue_bytes,
        agent_id: h.agent_id,
        password: (!h.password.is_empty()).then(|| h.password.clone()),
        sample: h.sample,
    }))
}

/// What [`start`] hands to [`run`]: the workers, the shared state, and the
/// control-thread tasks still to be spawned.
pub type Started = (
    worker::Pool,
    Running,
    Reloader,
    Option<AccParts>,
    Option<crate::registrar::Service>,
    Option<Succession>,
);

/// Accounting's row builder and database writer, run by [`run`].
pub type AccParts = (crate::acc::Feed, crate::acc::Writer);

/// The worker's own ng socket (`proxy::media::SOCK_MEDIA`), on an ephemeral
/// port of the engines' address family.
fn media_socket(p: &ProxyConfig) -> Option<SocketSpec> {
    let first = p.media.as_ref()?.config.engines.first()?.0;
    let any: std::net::IpAddr = if first.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    Some(SocketSpec {
        addr: SocketAddr::new(any, 0),
        reuse_port: false,
        recv_buffer: Some(1 << 20),
        send_buffer: Some(1 << 20),
    })
}

/// Runs until SIGINT or SIGTERM, then stops the workers.
pub fn run(cfg: &Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control thread's runtime")?;
    let (pool, running, reloader, acc, registrar, succession) = start(cfg, &rt)?;
    let inherited_mgmt = succession.as_ref().and_then(|s| {
        let m = s.mgmt.as_ref()?.try_clone().ok()?;
        (m.local_addr().ok() == Some(cfg.mgmt.listen)).then_some(m)
    });
    let mgmt = match inherited_mgmt.map_or_else(
        || api::bind(cfg.mgmt.listen),
        |m| {
            m.set_nonblocking(true)?;
            Ok(m)
        },
    ) {
        Ok(l) => l,
        Err(e) => {
            let _ = pool.stop();
            return Err(e);
        }
    };
    // Passed on at the next hand-over (the API task owns `mgmt`).
    let mgmt_handle = mgmt.try_clone().ok();
    let handover_listener = handover::listen(std::path::Path::new(&cfg.mgmt.handover_socket));
    let mut running = running;
    let exporter = match &running.events {
        Some(queue) => Some(
            Exporter::new(ExporterConfig::from(&cfg.events), queue.clone()).context("[events]")?,
        ),
        None => None,
    };
    running.events_exporter = exporter.as_ref().map(Exporter::stats);
    let running = Arc::new(running);
    let (exporter_stop, exporter) = match exporter {
        Some(exporter) => {
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let task = rt.spawn(exporter.run(async move {
                let _ = stop_rx.await;
            }));
            (Some(stop_tx), Some(task))
        }
        None => (None, None),
    };
    let (acc_feed, acc_writer) = match acc {
        Some((feed, writer)) => {
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let task = rt.spawn(writer.run(async move {
                let _ = stop_rx.await;
            }));
            (Some(feed), Some((stop_tx, task)))
        }
        None => (None, None),
    };
    let registrar_task = registrar.map(|service| {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(service.run(async move {
            let _ = stop_rx.await;
        }));
        (stop_tx, task)
    });
    // One task drains the workers' event queues for Redis and accounting.
    let bridge = (!running.event_sinks.is_empty()).then(|| {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let targets = crate::events::bridge::Targets {
            events: running.events.clone(),
            acc: acc_feed,
        };
        let task = rt.spawn(crate::events::bridge::run(
            running.event_sinks.clone(),
            targets,
            EVENT_DRAIN_INTERVAL,
            async move {
                let _ = stop_rx.await;
            },
        ));
        (stop_tx, task)
    });
    let mut handover_listener = handover_listener.and_then(|l| {
        let _guard = rt.enter();
        tokio::net::UnixListener::from_std(l)
            .map_err(|e| warn!(error = %e, "restart hand-over off"))
            .ok()
    });
    let serving = handover::Serving {
        pool: &pool,
        listen: running.listen,
        private_ports: &running.proxy.private_ports,
        epoch: running.proxy.epoch,
        branch_secret: running.proxy.branch_secret,
        key_seed: running.proxy.key_seed,
        mgmt: mgmt_handle.as_ref(),
        predecessor: succession.as_ref().map(|s| (s.pid, s.predecessor.as_ref())),
    };
    let (failure, handed) = rt
        .block_on(async {
            // Control-thread tasks; they end with the runtime. A panic in one
            // stops the process (supervise.rs).
            let mut watched = Watched::default();
            watched.spawn("reload", reloader.run());
            if let Some(names) = &running.proxy.names {
                let negative = std::time::Duration::from_secs(u64::from(cfg.dns.negative_ttl_s));
                let serve = crate::dns::workers::serve(
                    names.bridge.clone(),
                    running.resolver.clone(),
                    negative,
                );
                watched.spawn("next-hop names", serve);
            }
            if let (Some(m), Some(every)) = (running.media.clone(), cfg.rtpengine.ping_interval()) {
                for i in 0..m.config.engines.len() {
                    let (t, r) = (cfg.rtpengine.timeout(), cfg.rtpengine.retries);
                    let watch = crate::media_health::watch(m.clone(), i, every, t, r);
                    watched.spawn("rtpengine health", watch);
                }
            }
            watched.spawn(
                "management API",
                api::serve(
                    mgmt,
                    api::ApiState::new(Arc::clone(&running), &cfg.mgmt.token),
                ),
            );
            match probe::ProbeConfig::from_config(cfg) {
                Some(p) => {
                    watched.spawn(
                        "probe",
                        probe::run(
                            p,
                            running.table.clone(),
                            running.listen,
                            running.proxy.advertise.clone(),
                            running.events.clone(),
                            running.probe_forged.clone(),
                            // Loaded at start already: a failure here is not expected.
                            cfg.tls.client().and_then(Result::ok),
                        ),
                    );
                }
                None => info!("OPTIONS probing is off (dispatcher.ping_interval_s = 0)"),
            }
            if let Some(every) = crate::systemd::watchdog_interval() {
                info!(?every, "systemd watchdog on");
                let watchdog = crate::systemd::watchdog(every, running.workers.clone());
                watched.spawn("systemd watchdog", watchdog);
            }
            if TestPanic::from_env() == Some(TestPanic::Control) {
                watched.spawn("test panic", crate::supervise::panic_on_sigusr2());
            }
            if let Some(s) = &succession {
                if let Ok(conn) = s.connection.try_clone() {
                    let watch = predecessor_exit(conn, s.pid, s.predecessor.clone());
                    watched.spawn("previous process watch", watch);
                }
            }
            let mut handed = None;
            let mut check = tokio::time::interval(crate::supervise::CHECK_EVERY);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let background = || {
                let ended =
                    |t: Option<&tokio::task::JoinHandle<()>>| t.is_some_and(|t| t.is_finished());
                [
                    ("event exporter", ended(exporter.as_ref())),
                    (
                        "accounting writer",
                        ended(acc_writer.as_ref().map(|(_, t)| t)),
                    ),
                    ("event bridge", ended(bridge.as_ref().map(|(_, t)| t))),
                ]
            };
            let mut failure = None;
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut hup = signal(SignalKind::hangup())?;
            // Workers and the management API are bound, and the signal handlers
            // are in place: tell systemd (Type=notify) the service is up.
            crate::systemd::ready(
                &format!(
                    "{} workers on {}, management API on {}",
                    running.workers.workers(),
                    running.listen,
                    cfg.mgmt.listen
                ),
                succession.is_some(),
            );
            if let Some(s) = &succession {
                // The old process may exit now (and no sooner: under systemd
                // the service would end with it before MAINPID moved here).
                let _ = (&s.connection).write_all(b"R");
            }
            loop {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => { r?; break; }
                    _ = term.recv() => break,
                    // SIGHUP re-reads the dispatcher source, as daemons do; the
                    // outcome is logged by the reloader.
                    _ = hup.recv() => {
                        let reload = running.reload.clone();
                        tokio::spawn(async move { let _ = reload.reload().await; });
                    }
                    _ = check.tick() => {
                        failure = watched.check(&running.workers, &background()).await;
                        if failure.is_some() {
                            break;
                        }
                    }
                    conn = next_handover(handover_listener.as_ref()) => {
                        let Ok(mut conn) = conn.and_then(|c| c.into_std()) else { continue };
                        match handover::give(&mut conn, &serving) {
                            Ok(None) => {}
                            Ok(Some(relay)) => {
                                // The new process serves the API and probes from now on.
                                if let Ok(cred) = peer_pid(&conn) {
                                    running.restart.handed_to.store(cred, std::sync::atomic::Ordering::Relaxed);
                                }
                                watched.abort_all().await;
                                handover_listener = None;
                                handed = Some((relay, conn));
                                break;
                            }
                            Err(e) => {
                                failure = Some(format!("the hand-over to a new process failed: {e:#}"));
                                break;
                            }
                        }
                    }
                }
            }
            Ok::<_, std::io::Error>((failure, handed))
        })
        .context("waiting for a signal")?;
    drop(handover_listener);
    let mut failure = failure;
    if let Some((relay, connection)) = &handed {
        // The successor notifies systemd itself; this process only drains.
        if let Err(e) = drain(&rt, &pool, &running, relay, connection) {
            failure = Some(format!("{e:#}"));
        }
    } else {
        crate::systemd::stopping();
    }
    match &failure {
        Some(why) => {
            error!("{why}: stopping, to exit non-zero for the service manager to restart sipvane")
        }
        None => info!("stopping"),
    }
    let mut total = proxy::Snapshot::default();
    for s in &running.stats {
        total.add(&s.snapshot());
    }
    // What still runs is stopped in order even when a worker died: the
    // events and accounting rows it produced are flushed or spooled.
    let stopped = pool.stop();
    if let Some((stop, task)) = bridge {
        // The workers are gone: hand over what they left.
        let _ = stop.send(());
        let _ = rt.block_on(task);
    }
    if let (Some(stop), Some(task)) = (exporter_stop, exporter) {
        // Let the exporter flush within its grace period.
        let _ = stop.send(());
        let _ = rt.block_on(task);
    }
    if let Some((stop, task)) = registrar_task {
        // The workers are gone: apply and write back what they registered.
        let _ = stop.send(());
        let _ = rt.block_on(task);
    }
    if let Some((stop, task)) = acc_writer {
        // Writes what it can within its grace period, spools the rest.
        let _ = stop.send(());
        let _ = rt.block_on(task);
    }
    // One greppable line with every counter, for operators and tests.
    let mut line: Vec<String> = total
        .fields()
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if let Some(m) = &running.media {
        let (rejected, passthrough) = m.policy_totals();
        line.push(format!("rtpengine_rejected={rejected}"));
        line.push(format!("rtpengine_passthrough={passthrough}"));
        for i in 0..m.config.engines.len() {
            for (n, v) in m.engine_totals(i).fields() {
                line.push(format!("rtpengine{i}_{n}={v}"));
            }
        }
    }
    if let Some(a) = &running.acc {
        for (n, v) in [
            ("rows", a.rows()),
            ("written", a.written()),
            ("spooled", a.spooled()),
            ("replayed", a.replayed()),
            ("already_written", a.already_written()),
            (
                "dropped",
                a.dropped_queue_full()
                    + a.dropped_spool_full()
                    + a.dropped_corrupt()
                    + a.dropped_rejected(),
            ),
            ("spool_rows", a.spool_rows()),
        ] {
            line.push(format!("acc_{n}={v}"));
        }
    }
    if let Some(r) = &running.proxy.registrar {
        let s = &r.stats;
        let get = dataplane::registrar::RegistrarStats::get;
        for (n, v) in [
            ("registers_ok", get(&s.registers_ok)),
            ("challenges", get(&s.challenges)),
            ("auth_failures", get(&s.auth_failures)),
            ("registers_refused", get(&s.registers_refused)),
            ("lookups_found", get(&s.lookups_found)),
            ("lookups_missing", get(&s.lookups_missing)),
            ("nat_pings", get(&s.nat_pings)),
            ("nat_ping_removals", get(&s.nat_ping_removals)),
        ] {
            line.push(format!("registrar_{n}={v}"));
        }
    }
    eprintln!("sipvane: counters {}", line.join(" "));
    if let Some(why) = failure {
        return Err(anyhow!(why));
    }
    stopped.context("stopping workers")?;
    info!("stopped");
    Ok(())
}

/// Waits for a connection on the hand-over socket; never, without one.
async fn next_handover(
    l: Option<&tokio::net::UnixListener>,
) -> std::io::Result<tokio::net::UnixStream> {
    match l {
        Some(l) => l.accept().await.map(|(c, _)| c),
        None => std::future::pending().await,
    }
}

/// Control task of a process that took over: notices the previous process
/// exiting (it closes the hand-over connection) and stops relaying to it.
async fn predecessor_exit(
    conn: std::os::unix::net::UnixStream,
    pid: u32,
    predecessor: Arc<Predecessor>,
) {
    use tokio::io::AsyncReadExt;
    let conn = conn
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(conn));
    if let Ok(mut conn) = conn {
        let mut buf = [0u8; 64];
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }
    predecessor.set_gone();
    info!(
        pid,
        "the previous process has finished its transactions and exited"
    );
}

/// After a hand-over: serve the datagrams the new process relays until every
/// transaction has ended (at most fr_inv_timer + 64·T1 + the wait timer), or
/// until SIGTERM / SIGINT.
fn drain(
    rt: &tokio::runtime::Runtime,
    pool: &worker::Pool,
    running: &Running,
    relay: &std::os::unix::net::UnixDatagram,
    successor: &std::os::unix::net::UnixStream,
) -> Result<()> {
    successor.set_nonblocking(true)?;
    let mut ready = false;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread = handover::relay_thread(
        relay.try_clone().context("relay socket")?,
        pool.injector(),
        stop.clone(),
    )
    .context("starting the relay thread")?;
    let t = &running.proxy.timers;
    let limit = t.fr_inv_timer.max(t.fr_timer) + 64 * t.t1 + t.wait;
    let started = Instant::now();
    let result = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => { r?; break; }
                _ = term.recv() => {
                    warn!("SIGTERM while draining: transactions still open are dropped");
                    break;
                }
                _ = tick.tick() => {
                    if !ready {
                        let mut byte = [0u8; 1];
                        match (&*successor).read(&mut byte) {
                            Ok(0) => return Err(std::io::Error::other(
                                "the new process exited before it was ready: the SIP sockets are no longer read",
                            )),
                            Ok(_) => ready = true,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e),
                        }
                    }
                    let open = running.workers.open_work();
                    if !ready && started.elapsed() < limit {
                        continue;
                    }
                    if open == 0 {
                        info!(after = ?started.elapsed(), "every handed-over transaction has ended");
                        break;
                    }
                    if started.elapsed() >= limit {
                        warn!(open, ?limit, "drain limit reached with transactions still open");
                        break;
                    }
                }
            }
        }
        Ok::<(), std::io::Error>(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = thread.join();
    result.context("draining")
}

/// The process at the other end of a Unix socket.
fn peer_pid(conn: &std::os::unix::net::UnixStream) -> std::io::Result<u32> {
    handover::peer_cred(conn).map(|c| c.pid as u32)
}

/// Per-process secret from the OS random source: keys of the transaction and
/// dialog hash, of the branch seal and local To-tags, the process epoch and
/// the RTPEngine cookie space. Without OS randomness sipvane cannot keep its
/// transactions unforgeable, so it refuses to start.
fn random_seed() -> Result<[u64; 4]> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow!("the OS random source failed: {e}"))?;
    let mut out = [0u64; 4];
    for (o, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
    }
    Ok(out)
}
