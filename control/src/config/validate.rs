//! Validation: what the types alone do not check (ranges, formats,
//! combinations), as [`Problem`]s with a key path.

use super::*;

impl Config {
    /// Checks everything the types alone do not: ranges, formats, combinations.
    /// Returns every problem found (empty: valid).
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Validator::default();
        self.validate_proxy(&mut v);
        self.validate_tcp(&mut v);
        self.validate_tls(&mut v);
        self.validate_dispatcher(&mut v);
        self.validate_rtpengine(&mut v);
        self.validate_events(&mut v);
        self.validate_acc(&mut v);
        self.validate_hep(&mut v);
        self.validate_mgmt_log(&mut v);
        self.validate_security(&mut v);
        self.validate_registrar(&mut v);
        self.validate_dns(&mut v);
        v.problems
    }

    fn validate_proxy(&self, v: &mut Validator) {
        let p = &self.proxy;
        let at = |k: &str| vec![key("proxy"), key(k)];
        if p.listen.port() == 0 {
            v.err(at("listen"), "listen port must not be 0".into());
        }
        if p.workers == Workers::Count(0) {
            v.err(at("workers"), format!("workers must be {WORKERS_MUST}"));
        }
        if let Workers::Count(n) = p.workers {
            if n > MAX_WORKERS {
                v.err(
                    at("workers"),
                    format!("workers must be at most {MAX_WORKERS} (got {n})"),
                );
            }
        }
        match p.private_base() {
            None => v.err(
                at("listen"),
                "listen port 65535 leaves no room for private ports; set private_port_base".into(),
            ),
            Some(base) => {
                let n = match p.workers {
                    Workers::Count(n) => n.max(1),
                    Workers::Auto => 1,
                };
                let last = usize::from(base) + n - 1;
                let path = if p.private_port_base == 0 {
                    at("workers")
                } else {
                    at("private_port_base")
                };
                if last > usize::from(u16::MAX) {
                    v.err(
                        path,
                        format!("private ports {base}..{last} for {n} workers exceed 65535"),
                    );
                } else if (usize::from(base)..=last).contains(&usize::from(p.listen.port())) {
                    v.err(
                        path,
                        format!(
                            "private ports {base}..{last} include the listen port {}",
                            p.listen.port()
                        ),
                    );
                }
            }
        }
        if let Some(a) = &p.advertise {
            if !is_host(a) {
                v.err(
                    at("advertise"),
                    format!("advertise must be a host name or IP address (got \"{a}\")"),
                );
            }
        }
        for (i, d) in p.domains.iter().enumerate() {
            if !is_host(d) {
                v.err(
                    vec![key("proxy"), key("domains"), PathSeg::Index(i)],
                    format!("domains entries must be host names or IP addresses (got \"{d}\")"),
                );
            }
        }
        if p.max_transactions == 0 {
            v.err(
                at("max_transactions"),
                "max_transactions must be ≥ 1".into(),
            );
        }
        if p.max_dialogs == 0 {
            v.err(at("max_dialogs"), "max_dialogs must be ≥ 1".into());
        }
        let w = p.overload_watermark;
        if !(w > 0.0 && w <= 1.0) {
            v.err(
                at("overload_watermark"),
                format!(
                    "overload_watermark must be a fraction greater than 0 and at most 1 (got {w})"
                ),
            );
        }
        let s = p.overload_control_start;
        if !(0.0..1.0).contains(&s) {
            v.err(
                at("overload_control_start"),
                format!("overload_control_start must be a fraction from 0 to below 1 (got {s})"),
            );
        }
        if !(1..=3_600_000).contains(&p.overload_control_validity_ms) {
            v.err(
                at("overload_control_validity_ms"),
                format!(
                    "overload_control_validity_ms must be from 1 to 3600000 (got {})",
                    p.overload_control_validity_ms
                ),
            );
        }
        if p.shed_backlog_ms > 60_000 {
            v.err(
                at("shed_backlog_ms"),
                format!(
                    "shed_backlog_ms must be from 0 (off) to 60000 (got {})",
                    p.shed_backlog_ms
                ),
            );
        }
        if p.dialog_timeout_s == 0 {
            v.err(
                at("dialog_timeout_s"),
                "dialog_timeout_s must be ≥ 1".into(),
            );
        }
        if !is_header_text(&p.server_header) {
            v.err(
                at("server_header"),
                "server_header must not contain control characters".into(),
            );
        }
    }

    fn validate_dispatcher(&self, v: &mut Validator) {
        let d = &self.dispatcher;
        let at = |k: &str| vec![key("dispatcher"), key(k)];
        if let Err(e) = DispatcherSource::parse(&d.source) {
            v.err(at("source"), e);
        }
        match &d.list {
            Some(l) if l.is_empty() => {
                v.err(at("list"), "list must not be empty".into());
            }
            Some(_) if !d.source.is_empty() => v.err(
                at("list"),
                "set either source or list (shorthand for source = \"file:PATH\"), not both".into(),
            ),
            _ => {}
        }
        if !d.algorithm.is_known() {
            v.err(at("algorithm"), unknown_algorithm(&d.algorithm));
        }
        if crate::source::db::validate_table_name(&d.db_table).is_err() {
            v.err(
                at("db_table"),
                format!(
                    "db_table must be a plain SQL name, optionally schema.table (got \"{}\")",
                    d.db_table
                ),
            );
        }
        if d.db_timeout_ms == 0 {
            v.err(at("db_timeout_ms"), "db_timeout_ms must be ≥ 1".into());
        }
        for (i, &c) in d.failover_codes.iter().enumerate() {
            if !(300..=699).contains(&c) {
                v.err(
                    vec![key("dispatcher"), key("failover_codes"), PathSeg::Index(i)],
                    format!(
                        "failover_codes entries must be final non-2xx codes 300..699 (got {c})"
                    ),
                );
            }
        }
        for (i, &c) in d.ping_reply_codes.iter().enumerate() {
            if !(100..=699).contains(&c) {
                v.err(
                    vec![
                        key("dispatcher"),
                        key("ping_reply_codes"),
                        PathSeg::Index(i),
                    ],
                    format!("ping_reply_codes entries must be SIP codes 100..699 (got {c})"),
                );
            }
        }
        if d.ping_interval_s > 0 && d.ping_reply_codes.is_empty() {
            v.err(
                at("ping_reply_codes"),
                "ping_reply_codes must not be empty while probing is on".into(),
            );
        }
        for (k, val) in [
            ("fr_timer_ms", d.fr_timer_ms),
            ("fr_inv_timer_ms", d.fr_inv_timer_ms),
            ("wait_timer_ms", d.wait_timer_ms),
            ("failure_threshold", u64::from(d.failure_threshold)),
            ("probing_threshold", u64::from(d.probing_threshold)),
            ("inactive_threshold", u64::from(d.inactive_threshold)),
        ] {
            if val == 0 {
                v.err(at(k), format!("{k} must be ≥ 1"));
            }
        }
        let from_ok = (d.ping_from.starts_with("sip:") || d.ping_from.starts_with("sips:"))
            && !d
                .ping_from
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'));
        if !from_ok {
            v.err(
                at("ping_from"),
                format!(
                    "ping_from must be a sip: or sips: URI (got \"{}\")",
                    d.ping_from
                ),
            );
        }
        if d.ping_method.is_empty() || !d.ping_method.bytes().all(is_token_byte) {
            v.err(
                at("ping_method"),
                format!(
                    "ping_method must be a SIP method name (got \"{}\")",
                    d.ping_method
                ),
            );
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (i, r) in d.rules.iter().enumerate() {
            let rule_path = |k: Option<&str>| {
                let mut p = vec![key("dispatcher"), key("rules"), PathSeg::Index(i)];
                p.extend(k.map(key));
                p
            };
            let (kind, value) = match (&r.prefix, &r.domain) {
                (Some(p), None) => ("prefix", p.as_str()),
                (None, Some(dm)) => ("domain", dm.as_str()),
                _ => {
                    v.err(
                        rule_path(None),
                        "a dispatcher rule must have exactly one of \"prefix\" or \"domain\""
                            .into(),
                    );
                    continue;
                }
            };
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                v.err(
                    rule_path(Some(kind)),
                    format!(
                        "rule {kind} must be a non-empty word without spaces (got \"{value}\")"
                    ),
                );
            } else if kind == "domain" && !is_host(value) {
                v.err(
                    rule_path(Some(kind)),
                    format!("rule domain must be a host name (got \"{value}\")"),
                );
            } else if seen.contains(&(kind, value)) {
                v.err(
                    rule_path(Some(kind)),
                    format!("duplicate rule for {kind} \"{value}\" (the first one wins)"),
                );
            }
            seen.push((kind, value));
            if r.rtpengine == Some(true) && self.rtpengine.engines.is_empty() {
                v.err(
                    rule_path(Some("rtpengine")),
                    "rule rtpengine = true needs [rtpengine] engines".into(),
                );
            }
        }
    }

    fn validate_rtpengine(&self, v: &mut Validator) {
        let r = &self.rtpengine;
        let at = |k: &str| vec![key("rtpengine"), key(k)];
        for (i, e) in r.engines.iter().enumerate() {
            if e.weight == 0 {
                v.err(
                    vec![key("rtpengine"), key("engines"), PathSeg::Index(i)],
                    format!("engines weight must be ≥ 1 (got \"{e}\")"),
                );
            }
            if r.engines[..i].iter().any(|o| o.addr == e.addr) {
                v.err(
                    vec![key("rtpengine"), key("engines"), PathSeg::Index(i)],
                    format!("engine {} is listed twice", e.addr),
                );
            }
        }
        for k in ["offer_flags", "answer_flags"] {
            let flags = if k == "offer_flags" {
                &r.offer_flags
            } else {
                &r.answer_flags
            };
            if !is_header_text(flags) {
                v.err(at(k), format!("{k} must not contain control characters"));
            } else if let Err(e) = dataplane::rtpengine::NgFlags::parse(flags) {
                v.err(at(k), format!("{k}: {e}"));
            }
        }
        if r.engines.len() > dataplane::rtpengine::client::MAX_ENGINES {
            v.err(
                at("engines"),
                format!(
                    "at most {} engines (got {})",
                    dataplane::rtpengine::client::MAX_ENGINES,
                    r.engines.len()
                ),
            );
        }
        if let Some(first) = r.engines.first() {
            if r.engines
                .iter()
                .any(|e| e.addr.is_ipv4() != first.addr.is_ipv4())
            {
                v.err(
                    at("engines"),
                    "engines must all be IPv4 or all IPv6 (each worker has one ng socket)".into(),
                );
            }
        }
        if r.timeout_ms == 0 {
            v.err(at("timeout_ms"), "timeout_ms must be ≥ 1".into());
        }
    }

    fn validate_events(&self, v: &mut Validator) {
        let e = &self.events;
        let at = |k: &str| vec![key("events"), key(k)];
        let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
        if !e.redis_url.is_empty() && !schemes.iter().any(|s| e.redis_url.starts_with(s)) {
            v.err(
                at("redis_url"),
                format!(
                    "redis_url must start with redis://, rediss://, redis+unix:// or unix:// (got \"{}\")",
                    e.redis_url
                ),
            );
        }
        if e.list.is_empty() {
            v.err(at("list"), "list must not be empty".into());
        }
        if e.batch == 0 {
            v.err(at("batch"), "batch must be ≥ 1".into());
        }
        if e.buffer == 0 {
            v.err(at("buffer"), "buffer must be ≥ 1".into());
        } else if e.batch > e.buffer {
            v.err(
                at("batch"),
                format!("batch ({}) must not exceed buffer ({})", e.batch, e.buffer),
            );
        }
    }

    fn validate_hep(&self, v: &mut Validator) {
        let h = &self.hep;
        let at = |k: &str| vec![key("hep"), key(k)];
        if !h.collector.is_empty() && h.collector_addr().is_none() {
            v.err(
                at("collector"),
                format!(
                    "collector must be udp:IP:PORT or tcp:IP:PORT, e.g. \"udp:10.0.0.5:9060\" (got \"{}\")",
                    h.collector
                ),
            );
        }
        if !(0.0..=1.0).contains(&h.sample) {
            v.err(
                at("sample"),
                format!("sample must be between 0.0 and 1.0 (got {})", h.sample),
            );
        }
        // At least one packet of the largest size fits; at most 1 GiB per worker.
        if !(65_536..=1 << 30).contains(&h.queue_bytes) {
            v.err(
                at("queue_bytes"),
                format!(
                    "queue_bytes must be between 65536 and 1073741824 (got {})",
                    h.queue_bytes
                ),
            );
        }
    }

    fn validate_tcp(&self, v: &mut Validator) {
        let t = &self.tcp;
        let at = |k: &str| vec![key("tcp"), key(k)];
        // Below ~1 KB not even a bare INVITE fits; above 16 MB one connection could
        // pin far more memory than any SIP message needs.
        if !(1024..=16 << 20).contains(&t.max_message) {
            v.err(
                at("max_message"),
                format!(
                    "max_message must be between 1024 and 16777216 bytes (got {})",
                    t.max_message
                ),
            );
        }
        for (k, n) in [
            ("header_timeout_s", t.header_timeout_s),
            ("idle_timeout_s", t.idle_timeout_s),
            ("max_per_source", t.max_per_source),
            ("max_connections", t.max_connections),
        ] {
            if n == 0 {
                v.err(at(k), format!("{k} must be ≥ 1"));
            }
        }
        for (i, c) in t.proxy_protocol_from.iter().enumerate() {
            if parse_cidr(c).is_err() {
                v.err(
                    vec![key("tcp"), key("proxy_protocol_from"), PathSeg::Index(i)],
                    format!(
                        "proxy_protocol_from entries must be IP addresses or CIDRs like \"10.0.0.0/8\" (got \"{c}\")"
                    ),
                );
            }
        }
        if t.udp_mtu != 0 && !(576..=65_535).contains(&t.udp_mtu) {
            v.err(
                at("udp_mtu"),
                format!(
                    "udp_mtu must be 0 (never switch to TCP) or from 576 to 65535 bytes (got {})",
                    t.udp_mtu
                ),
            );
        }
        if t.max_per_source > t.max_connections {
            v.err(
                at("max_per_source"),
                format!(
                    "max_per_source ({}) must not exceed max_connections ({})",
                    t.max_per_source, t.max_connections
                ),
            );
        }
    }

    /// Also loads the certificate and key: a file that is missing, not PEM, or a
    /// key that does not fit the certificate is reported at its key's line.
    fn validate_tls(&self, v: &mut Validator) {
        let t = &self.tls;
        let at = |k: &str| vec![key("tls"), key(k)];
        if t.client_certificate.is_empty() != t.client_private_key.is_empty() {
            let missing = match t.client_certificate.is_empty() {
                true => "client_certificate",
                false => "client_private_key",
            };
            v.err(
                at(missing),
                "client_certificate and client_private_key go together".into(),
            );
        } else if !t.client_certificate.is_empty() && t.ca.is_empty() {
            v.err(
                at("client_certificate"),
                "client_certificate is presented to TLS destinations, which need ca".into(),
            );
        } else if !t.client_certificate.is_empty() {
            use dataplane::transport::tls;
            let cert = std::path::Path::new(&t.client_certificate);
            let key = std::path::Path::new(&t.client_private_key);
            if let Err(e) = tls::load_certs(cert) {
                v.err(at("client_certificate"), e);
            } else if let Err(e) = tls::load_server(cert, key) {
                v.err(at("client_private_key"), e);
            }
        }
        if !t.ca.is_empty() {
            if !self.tcp.enabled {
                v.err(
                    at("ca"),
                    "TLS destinations need [tcp] enabled = true (they share its connection handling)"
                        .into(),
                );
            } else if let Err(e) =
                dataplane::transport::tls::load_client(std::path::Path::new(&t.ca), None)
            {
                v.err(at("ca"), e);
            }
        }
        if !t.client_ca.is_empty() && t.listen.is_empty() {
            v.err(
                at("client_ca"),
                "client_ca applies to the TLS listener: set listen too".into(),
            );
        }
        if t.listen.is_empty() {
            return;
        }
        match t.listen_addr() {
            None => v.err(
                at("listen"),
                format!(
                    "listen must be an IP or IP:PORT such as \"0.0.0.0\" or \"0.0.0.0:5061\" (got \"{}\")",
                    t.listen
                ),
            ),
            Some(a) if a.port() == 0 => v.err(at("listen"), "listen port must not be 0".into()),
            Some(_) if !self.tcp.enabled => v.err(
                at("listen"),
                "TLS needs [tcp] enabled = true (it shares its connection handling)".into(),
            ),
            Some(_) => {}
        }
        for k in ["certificate", "private_key"] {
            let value = if k == "certificate" {
                &t.certificate
            } else {
                &t.private_key
            };
            if value.is_empty() {
                v.err(
                    at(k),
                    format!("{k} (a PEM file) is required when listen is set"),
                );
            }
        }
        if t.certificate.is_empty() || t.private_key.is_empty() {
            return;
        }
        use dataplane::transport::tls;
        let cert = std::path::Path::new(&t.certificate);
        if let Err(e) = tls::load_certs(cert) {
            v.err(at("certificate"), e);
            return;
        }
        if let Err(e) = tls::load_server(cert, std::path::Path::new(&t.private_key)) {
            v.err(at("private_key"), e);
        } else if !t.client_ca.is_empty() {
            let ca = std::path::Path::new(&t.client_ca);
            let key = std::path::Path::new(&t.private_key);
            if let Err(e) = tls::load_server_sni(cert, key, &[], Some(ca)) {
                v.err(at("client_ca"), e);
            }
        }
        for (i, e) in t.sni.iter().enumerate() {
            let at = |k: &str| vec![key("tls"), key("sni"), PathSeg::Index(i), key(k)];
            if e.names.is_empty() {
                v.err(
                    at("names"),
                    "names must list at least one server name".into(),
                );
            }
            let cert = std::path::Path::new(&e.certificate);
            if let Err(err) = tls::load_certs(cert) {
                v.err(at("certificate"), err);
                continue;
            }
            if let Err(err) = tls::load_server(cert, std::path::Path::new(&e.private_key)) {
                v.err(at("private_key"), err);
            }
        }
    }

    fn validate_dns(&self, v: &mut Validator) {
        let d = &self.dns;
        let at = |k: &str| vec![key("dns"), key(k)];
        for (i, s) in d.servers.iter().enumerate() {
            if let Err(e) = parse_dns_server(s) {
                v.err(vec![key("dns"), key("servers"), PathSeg::Index(i)], e);
            }
        }
        if d.timeout_ms == 0 {
            v.err(at("timeout_ms"), "timeout_ms must be ≥ 1".into());
        }
        if d.max_parked == 0 {
            v.err(at("max_parked"), "max_parked must be ≥ 1".into());
        }
        if d.max_wait_ms == 0 {
            v.err(at("max_wait_ms"), "max_wait_ms must be ≥ 1".into());
        }
        if d.max_ttl_s < d.min_ttl_s {
            v.err(
                at("max_ttl_s"),
                format!(
                    "max_ttl_s ({}) must not be below min_ttl_s ({})",
                    d.max_ttl_s, d.min_ttl_s
                ),
            );
        }
    }

    fn validate_security(&self, v: &mut Validator) {
        let sec = &self.security;
        for (i, c) in sec.trusted_sources.iter().enumerate() {
            if parse_cidr(c).is_err() {
                v.err(
                    vec![key("security"), key("trusted_sources"), PathSeg::Index(i)],
                    format!(
                        "trusted_sources entries must be IP addresses or CIDRs like \"10.0.0.0/8\" (got \"{c}\")"
                    ),
                );
            }
        }
        let at = |k: &str| vec![key("security"), key("flood"), key(k)];
        if sec.flood.per_source_rps > 0 && sec.flood.block_s == 0 {
            v.err(
                at("block_s"),
                "block_s must be ≥ 1 when per_source_rps is set".into(),
            );
        }
        if sec.flood.per_source_rps > 1_000_000 {
            // The rate is kept in whole microseconds per request.
            v.err(
                at("per_source_rps"),
                "per_source_rps must be ≤ 1000000".into(),
            );
        }
        if sec.flood.max_sources == 0 {
            v.err(at("max_sources"), "max_sources must be ≥ 1".into());
        }
    }

    fn validate_acc(&self, v: &mut Validator) {
        use crate::acc::row::{is_column_name, Source, ACC_COLUMNS, CDR_COLUMNS, SOURCE_NAMES};
        let a = &self.acc;
        let at = |k: &str| vec![key("acc"), key(k)];
        if !a.db_url.is_empty() && !crate::source::db::is_database_url(&a.db_url) {
            v.err(
                at("db_url"),
                format!(
                    "db_url must start with postgres://, postgresql://, mysql:// or mariadb:// (got \"{}\")",
                    crate::source::db::redact_url(&a.db_url)
                ),
            );
        }
        for k in ["acc_table", "missed_table", "cdr_table", "spool_table"] {
            let t = match k {
                "acc_table" => &a.acc_table,
                "missed_table" => &a.missed_table,
                "cdr_table" => &a.cdr_table,
                _ => &a.spool_table,
            };
            if crate::source::db::validate_table_name(t).is_err() {
                v.err(
                    at(k),
                    format!("{k} must be a table name (letters, digits, _, optionally schema.table; got \"{t}\")"),
                );
            }
        }
        for (k, n) in [("batch", a.batch), ("buffer", a.buffer)] {
            if n == 0 {
                v.err(at(k), format!("{k} must be ≥ 1"));
            }
        }
        for (k, n) in [
            ("flush_interval_ms", a.flush_interval_ms),
            ("timeout_ms", a.timeout_ms),
        ] {
            if n == 0 {
                v.err(at(k), format!("{k} must be ≥ 1"));
            }
        }
        if a.spool_max_bytes < 4096 {
            v.err(
                at("spool_max_bytes"),
                format!("spool_max_bytes must be ≥ 4096 (got {})", a.spool_max_bytes),
            );
        }
        if a.spool_dir.as_os_str().is_empty() {
            v.err(at("spool_dir"), "spool_dir must not be empty".into());
        }
        for (section, map, fixed) in [
            ("extra", &a.extra, &ACC_COLUMNS[..]),
            ("cdr_extra", &a.cdr_extra, &CDR_COLUMNS[..]),
        ] {
            for (col, src) in map {
                let path = vec![key("acc"), key(section), key(col)];
                if !is_column_name(col) {
                    v.err(
                        path,
                        format!("{section} column \"{col}\" must be letters, digits and _ (not starting with a digit)"),
                    );
                } else if fixed.contains(&col.as_str()) {
                    v.err(
                        path,
                        format!("{section} column \"{col}\" is already written by sipvane"),
                    );
                } else if Source::parse(src).is_none() {
                    v.err(
                        path,
                        format!("unknown source \"{src}\" for column \"{col}\"; expected one of {SOURCE_NAMES}"),
                    );
                }
            }
        }
    }

    fn validate_registrar(&self, v: &mut Validator) {
        let r = &self.registrar;
        let at = |k: &str| vec![key("registrar"), key(k)];
        if r.db_url.is_empty() {
            if !r.domain.is_empty() || !r.prefixes.is_empty() {
                v.err(
                    at("db_url"),
                    "db_url is needed for the registrar (domain or prefixes are set)".into(),
                );
            }
            return;
        }
        if !crate::source::db::is_database_url(&r.db_url) {
            v.err(
                at("db_url"),
                format!(
                    "db_url must start with postgres://, postgresql://, mysql:// or mariadb:// (got \"{}\")",
                    crate::source::db::redact_url(&r.db_url)
                ),
            );
        }
        if r.domain.is_empty() {
            v.err(
                at("domain"),
                "domain must name at least one domain when db_url is set".into(),
            );
        }
        for d in &r.domain {
            if !is_host(d) {
                v.err(
                    at("domain"),
                    format!("domain must be a host name or IP address (got \"{d}\")"),
                );
            }
        }
        for p in &r.prefixes {
            if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                v.err(
                    at("prefixes"),
                    format!("prefixes must be non-empty user prefixes (got \"{p}\")"),
                );
            }
        }
        if r.min_expires == 0 {
            v.err(at("min_expires"), "min_expires must be ≥ 1".into());
        }
        if r.max_expires < r.min_expires {
            v.err(
                at("max_expires"),
                format!(
                    "max_expires ({}) must be ≥ min_expires ({})",
                    r.max_expires, r.min_expires
                ),
            );
        }
        if r.default_expires < r.min_expires || r.default_expires > r.max_expires {
            v.err(
                at("default_expires"),
                format!(
                    "default_expires ({}) must be between min_expires ({}) and max_expires ({})",
                    r.default_expires, r.min_expires, r.max_expires
                ),
            );
        }
        if !(1..=1000).contains(&r.max_contacts) {
            v.err(
                at("max_contacts"),
                format!("max_contacts must be 1..1000 (got {})", r.max_contacts),
            );
        }
        // Branch numbers travel in the sealed Via branch as one byte.
        if !(1..=32).contains(&r.max_branches) {
            v.err(
                at("max_branches"),
                format!("max_branches must be 1..32 (got {})", r.max_branches),
            );
        }
        if r.nat_ping_interval_s > 3600 {
            v.err(
                at("nat_ping_interval_s"),
                format!(
                    "nat_ping_interval_s must be 0 (off) .. 3600 (got {})",
                    r.nat_ping_interval_s
                ),
            );
        }
        if !(1..=100).contains(&r.nat_ping_max_misses) {
            v.err(
                at("nat_ping_max_misses"),
                format!(
                    "nat_ping_max_misses must be 1..100 (got {})",
                    r.nat_ping_max_misses
                ),
            );
        }
        if r.algorithms.is_empty() {
            v.err(
                at("algorithms"),
                "algorithms must name MD5, SHA-256 or both".into(),
            );
        }
        for a in &r.algorithms {
            if dataplane::registrar::Algorithm::parse(a.as_bytes()).is_none() {
                v.err(
                    at("algorithms"),
                    format!("unknown digest algorithm \"{a}\"; expected MD5 or SHA-256"),
                );
            }
        }
        if r.nonce_expires_s < 10 {
            v.err(at("nonce_expires_s"), "nonce_expires_s must be ≥ 10".into());
        }
        for (k, n) in [
            ("credentials_refresh_s", u64::from(r.credentials_refresh_s)),
            ("max_subscribers", u64::from(r.max_subscribers)),
            ("write_back_ms", r.write_back_ms),
            ("timeout_ms", r.timeout_ms),
        ] {
            if n == 0 {
                v.err(at(k), format!("{k} must be ≥ 1"));
            }
        }
        for (k, t) in [
            ("subscriber_table", &r.subscriber_table),
            ("location_table", &r.location_table),
        ] {
            if crate::source::db::validate_table_name(t).is_err() {
                v.err(
                    at(k),
                    format!("{k} must be a table name (letters, digits, _, optionally schema.table; got \"{t}\")"),
                );
            }
        }
    }

    fn validate_mgmt_log(&self, v: &mut Validator) {
        if self
            .mgmt
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            v.err(
                vec![key("mgmt"), key("token")],
                "token must not contain spaces or control characters".into(),
            );
        }
        let handover = &self.mgmt.handover_socket;
        // sun_path holds 108 bytes including the terminating NUL.
        if handover.len() > 107 || handover.contains('\0') {
            v.err(
                vec![key("mgmt"), key("handover_socket")],
                "handover_socket must be a path of at most 107 bytes without NUL".into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            v.err(
                vec![key("log"), key("level")],
                format!(
                    "level must be a log level (error, warn, info, debug, trace, off) or a filter directive (got \"{}\": {e})",
                    self.log.level
                ),
            );
        }
    }
}

#[derive(Default)]
pub(super) struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn err(&mut self, path: Vec<PathSeg>, message: String) {
        self.problems.push(Problem { path, message });
    }
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<dataplane::route::Cidr, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<dataplane::route::Cidr>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(dataplane::route::Cidr::from)
        .map_err(|e| e.to_string())
}

/// RFC 3261 `token` characters (method names).
pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Text that may be written into a header value: no CR/LF or other control characters
/// (which would let a config value inject headers).
pub(super) fn is_header_text(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// A host name, IPv4 address or IPv6 address (bare or in brackets).
pub(super) fn is_host(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
