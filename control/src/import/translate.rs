//! From a parsed Kamailio configuration to a sipvane [`Config`]: core parameters,
//! loaded modules and their `modparam`s. What the route blocks do is read by
//! [`super::routing`]. Every value that is not carried over becomes a warning
//! naming its file and line.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::kamailio_cfg::{Cfg, ModParam, Val};
use super::preprocess::{resolve, unquote, Source};
use super::Note;
use crate::config::{Config, EngineSpec, ProbingMode};

/// The outcome of a translation.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    pub config: Config,
    /// Keys (`section.key`) set from the Kamailio configuration, written out even
    /// when equal to sipvane's default.
    pub explicit: BTreeSet<&'static str>,
    /// The configuration loads registrar / usrloc / auth modules: the route
    /// blocks name its realm, tables and prefixes; the line of the first.
    pub registrar: bool,
    pub registrar_line: usize,
    pub warnings: Vec<Note>,
    /// Explanations printed as comments (not warnings).
    pub notes: Vec<String>,
    /// Core parameters with nothing to carry over in sipvane (worker counts, memory).
    pub ignored: BTreeSet<String>,
    /// `alias=` host names (Kamailio's "myself").
    pub aliases: Vec<String>,
}

/// Modules whose job sipvane does without configuration, or that only provide
/// script functions read by [`super::routing`].
const COVERED_MODULES: &[&str] = &[
    "tm",
    "tmx",
    "sl",
    "rr",
    "maxfwd",
    "pv",
    "textops",
    "textopsx",
    "siputils",
    "xlog",
    "sanity",
    "kex",
    "corex",
    "ctl",
    "jsonrpcs",
    "cfg_rpc",
    "counters",
    "dispatcher",
    "rtpengine",
    "db_mysql",
    "db_postgres",
    "xhttp",
    "xhttp_prom",
    "statistics",
    "cfgutils",
    "dialog",
    "usrloc",
    "registrar",
    "auth",
    "auth_db",
    "acc",
];

/// Core parameters that tune Kamailio itself and mean nothing for sipvane.
const IGNORED_CORE: &[&str] = &[
    "children",
    "tcp_children",
    "sctp_children",
    "memdbg",
    "memlog",
    "log_facility",
    "log_prefix",
    "log_stderror",
    "log_name",
    "fork",
    "mhomed",
    "auto_aliases",
    "dns",
    "rev_dns",
    "use_dns_cache",
    "use_dns_failover",
    "dns_try_ipv6",
    "dns_srv_lb",
    "enable_sctp",
    "disable_sctp",
    "sip_warning",
    "mpath",
    "loadpath",
    "tcp_connection_lifetime",
    "tcp_max_connections",
    "tls_max_connections",
    "tcp_accept_no_cl",
    "tcp_connect_timeout",
    "tcp_send_timeout",
    "tcp_rd_buf_size",
    "tcp_keepalive",
    "disable_tcp",
    "enable_tls",
    "maxbuffer",
    "max_while_loops",
    "user",
    "group",
    "workdir",
    "rundir",
    "pv_buffer_size",
    "pv_buffer_slots",
    "corelog",
    "latency_log",
    "latency_limit_action",
    "latency_limit_db",
    "async_workers",
    "shm_mem_size",
    "pkg_mem_size",
    "received_route_mode",
    "udp_mtu",
    "udp_mtu_try_proto",
    "tos",
    "open_files_limit",
    "dns_cache_init",
    "auto_bind_ipv6",
];

/// Runs the translation of core parameters and modparams; `cwd` makes a relative
/// dispatcher list path absolute.
pub fn translate_static(src: &Source, cfg: &Cfg, cwd: &Path) -> Translation {
    let mut t = T {
        src,
        cwd,
        out: Translation::default(),
        modules: cfg.modules.iter().map(|m| m.name.clone()).collect(),
    };
    t.modules_loaded(cfg);
    t.kamailio_defaults();
    t.core(cfg);
    for mp in &cfg.modparams {
        let several = mp.module.contains('|');
        for module in mp.module.split('|').map(str::trim) {
            // "nathelper|registrar" applies to whichever of them is loaded.
            if !several || t.modules.contains(module) {
                t.modparam(module, mp);
            }
        }
    }
    t.out
}

struct T<'a> {
    src: &'a Source,
    cwd: &'a Path,
    out: Translation,
    modules: BTreeSet<String>,
}

impl T<'_> {
    fn warn(&mut self, line: usize, msg: String) {
        self.out.warnings.push(self.src.note(line, msg));
    }

    fn set(&mut self, key: &'static str) {
        self.out.explicit.insert(key);
    }

    fn modules_loaded(&mut self, cfg: &Cfg) {
        for m in &cfg.modules {
            if m.name == "nathelper" || m.name == "nat_traversal" {
                self.warn(
                    m.line,
                    format!("module {}: its script functions are not carried over; sipvane answers to the received address and rport, and with [registrar] fixes NATed REGISTER and INVITE Contacts itself (Contact ≠ source) and pings NATed bindings with OPTIONS (natping_interval becomes nat_ping_interval_s, default 30)", m.name),
                );
            } else if !COVERED_MODULES.contains(&m.name.as_str()) {
                self.warn(
                    m.line,
                    format!("module {} has no sipvane counterpart; what the script does with it is not carried over", m.name),
                );
            }
        }
        let registrar = ["usrloc", "registrar", "auth", "auth_db"];
        if let Some(m) = cfg
            .modules
            .iter()
            .find(|m| registrar.contains(&m.name.as_str()))
        {
            self.out.registrar = true;
            self.out.registrar_line = m.line;
        }
    }

    /// Kamailio's own defaults where they differ from sipvane's, so calls are routed
    /// as they were even for parameters the file does not set.
    fn kamailio_defaults(&mut self) {
        let d = &mut self.out.config.dispatcher;
        if self.modules.contains("tm") {
            d.fr_timer_ms = 30_000;
            d.fr_inv_timer_ms = 120_000;
            self.set("dispatcher.fr_timer_ms");
            self.set("dispatcher.fr_inv_timer_ms");
        }
        if self.modules.contains("dispatcher") {
            let d = &mut self.out.config.dispatcher;
            d.ping_interval_s = 0;
            d.probing_mode = ProbingMode::Flagged;
            d.probing_threshold = 1;
            d.inactive_threshold = 1;
            d.ping_from = "sip:dispatcher@localhost".into();
            d.list = Some("/etc/kamailio/dispatcher.list".into());
            for k in [
                "dispatcher.ping_interval_s",
                "dispatcher.probing_mode",
                "dispatcher.probing_threshold",
                "dispatcher.inactive_threshold",
                "dispatcher.ping_from",
                "dispatcher.list",
            ] {
                self.set(k);
            }
            self.out.notes.push(
                "Kamailio's defaults are written out where the cfg sets nothing (tm fr_timer 30 s, \
                 no OPTIONS probing, probing/inactive thresholds 1): sipvane's own defaults differ"
                    .into(),
            );
        }
    }

    fn core(&mut self, cfg: &Cfg) {
        let port = cfg
            .core
            .iter()
            .rev()
            .find(|p| p.name == "port")
            .and_then(|p| plain(&p.value).parse::<u16>().ok());
        let mut listens = Vec::new();
        for p in &cfg.core {
            let value = plain(&p.value);
            match p.name.as_str() {
                "listen" => listens.push((p.line, value.to_owned())),
                "port" => {
                    if value.parse::<u16>().is_err() {
                        self.warn(
                            p.line,
                            format!("port {value} is not a port number; ignored"),
                        );
                    }
                }
                "alias" => {
                    // Kamailio's "myself" names. sipvane's [proxy] domains would relay
                    // every other domain without dispatching it, which a dispatcher
                    // script does not do: kept only for the registrar's domain.
                    let host = value.split_once(':').map_or(value, |(proto, h)| {
                        if ["udp", "tcp", "tls", "sctp"].contains(&proto) {
                            h
                        } else {
                            value
                        }
                    });
                    let host = match host.rsplit_once(':') {
                        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
                        _ => host,
                    };
                    let host = host_of(host).to_owned();
                    if !self.out.aliases.contains(&host) {
                        self.out.aliases.push(host);
                    }
                }
                "debug" => match value.parse::<i32>() {
                    Ok(n) => {
                        self.out.config.log.level = match n {
                            i32::MIN..=-1 => "error",
                            0 => "warn",
                            1 | 2 => "info",
                            3 => "debug",
                            _ => "trace",
                        }
                        .into();
                        self.set("log.level");
                    }
                    Err(_) => self.warn(p.line, format!("debug={value} is not a number; ignored")),
                },
                "server_header" | "user_agent_header" => {
                    let v = value
                        .split_once(':')
                        .map_or(value, |(_, v)| v)
                        .trim()
                        .to_owned();
                    if p.name == "server_header"
                        || !self.out.explicit.contains("proxy.server_header")
                    {
                        self.out.config.proxy.server_header = v;
                        self.set("proxy.server_header");
                    }
                }
                "server_signature" => {
                    if matches!(value, "no" | "0" | "off" | "false") {
                        self.out.config.proxy.server_header.clear();
                        self.set("proxy.server_header");
                    }
                }
                // tm's branch limit; sipvane's applies to calls to registered users.
                "max_branches" if self.out.registrar => match value.parse::<u32>() {
                    Ok(n @ 1..=32) => {
                        self.out.config.registrar.max_branches = n;
                        self.set("registrar.max_branches");
                    }
                    _ => self.warn(
                        p.line,
                        format!("max_branches={value}: sipvane forks a call to at most 1..32 bindings; not carried over"),
                    ),
                },
                name if IGNORED_CORE.contains(&name) => {
                    self.out.ignored.insert(name.to_owned());
                }
                name => {
                    self.warn(
                        p.line,
                        format!("core parameter {name}={value} is not carried over"),
                    );
                }
            }
        }
        self.listen(&listens, port);
        if !self.out.aliases.is_empty() {
            self.out.notes.push(format!(
                "alias {} (Kamailio's \"myself\") is not needed: sipvane dispatches requests for every domain ([proxy] domains would relay other domains undispatched)",
                self.out.aliases.join(", ")
            ));
        }
    }

    fn listen(&mut self, listens: &[(usize, String)], port: Option<u16>) {
        let mut chosen: Option<(SocketAddr, usize)> = None;
        for (line, value) in listens {
            let line = *line;
            let mut words = value.split_whitespace();
            let sock = words.next().unwrap_or("");
            let rest: Vec<&str> = words.collect();
            let (proto, addr) = match sock.split_once(':') {
                Some((p, a)) if ["udp", "tcp", "tls", "sctp", "ws", "wss"].contains(&p) => (p, a),
                _ => ("udp", sock),
            };
            let (host, lport) = split_host_port(addr);
            let lport = match lport {
                Some(p) => p.parse::<u16>().ok(),
                None => Some(port.unwrap_or(if proto == "tls" { 5061 } else { 5060 })),
            };
            let ip = host_of(host).parse::<IpAddr>().ok();
            if proto != "udp" && proto != "tcp" {
                self.warn(line, format!("listen={value}: {proto} sockets are not carried over (sipvane listens on UDP and TCP at [proxy] listen)"));
                continue;
            }
            let (Some(ip), Some(lport)) = (ip, lport) else {
                self.warn(line, format!("listen={value}: sipvane needs an IP address and port here (not an interface or host name); not carried over"));
                continue;
            };
            let addr = SocketAddr::new(ip, lport);
            match chosen {
                None => {
                    chosen = Some((addr, line));
                    self.out.config.proxy.listen = addr;
                    self.set("proxy.listen");
                    self.advertise(line, &rest, lport);
                }
                Some((a, _)) if a == addr => {}
                Some((a, _)) => self.warn(
                    line,
                    format!("listen={value}: sipvane listens on one address ({a}, UDP and TCP); this one is not carried over"),
                ),
            }
        }
        if chosen.is_none() {
            let p = port.unwrap_or(5060);
            self.out.config.proxy.listen = SocketAddr::from(([0, 0, 0, 0], p));
            self.set("proxy.listen");
            self.out.notes.push(format!(
                "no usable listen= line: Kamailio listens on every local address, sipvane on 0.0.0.0:{p}; set [proxy] advertise to the address peers should use"
            ));
        }
    }

    fn advertise(&mut self, line: usize, rest: &[&str], lport: u16) {
        let mut it = rest.iter();
        while let Some(w) = it.next() {
            match *w {
                "advertise" => {
                    let Some(a) = it.next() else { break };
                    let (host, port) = split_host_port(a);
                    self.out.config.proxy.advertise = Some(host_of(host).to_owned());
                    self.set("proxy.advertise");
                    if port.is_some_and(|p| p.parse::<u16>().ok() != Some(lport)) {
                        self.warn(line, format!("advertised port in {a} differs from the listen port; sipvane advertises the listen port"));
                    }
                }
                "name" => {
                    it.next();
                }
                other => self.warn(line, format!("listen option {other} is not carried over")),
            }
        }
    }

    fn modparam(&mut self, module: &str, mp: &ModParam) {
        let line = mp.line;
        let handled = match module {
            "tm" => self.tm(mp),
            "dispatcher" => self.dispatcher(mp),
            "rtpengine" => self.rtpengine(mp),
            "auth" | "auth_db" | "usrloc" | "registrar" | "acc" | "nathelper" => {
                super::registrar::modparam(&mut self.out, self.src, module, mp)
            }
            _ => false,
        };
        if !handled {
            self.warn(
                line,
                format!(
                    "modparam(\"{module}\", \"{}\", {}) is not carried over",
                    mp.name,
                    show(&mp.value)
                ),
            );
        }
    }

    fn int(&mut self, mp: &ModParam) -> Option<u64> {
        match mp.value.int().and_then(|n| u64::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                self.warn(
                    mp.line,
                    format!(
                        "{} must be a non-negative number (got {}); not carried over",
                        mp.name,
                        show(&mp.value)
                    ),
                );
                None
            }
        }
    }

    fn tm(&mut self, mp: &ModParam) -> bool {
        let key = match mp.name.as_str() {
            "fr_timer" => "dispatcher.fr_timer_ms",
            "fr_inv_timer" => "dispatcher.fr_inv_timer_ms",
            "wt_timer" => "dispatcher.wait_timer_ms",
            _ => return false,
        };
        if let Some(ms) = self.int(mp).filter(|ms| *ms > 0) {
            let d = &mut self.out.config.dispatcher;
            match key {
                "dispatcher.fr_timer_ms" => d.fr_timer_ms = ms,
                "dispatcher.fr_inv_timer_ms" => d.fr_inv_timer_ms = ms,
                _ => d.wait_timer_ms = ms,
            }
            self.set(key);
        }
        true
    }

    fn dispatcher(&mut self, mp: &ModParam) -> bool {
        let line = mp.line;
        let text = mp.value.text();
        match mp.name.as_str() {
            "list_file" => {
                if self.out.config.dispatcher.source.is_empty() {
                    let file = &self.src.files[self.src.lines.get(line).map_or(0, |l| l.file)];
                    let path = resolve(Path::new(file), &text);
                    let abs = self.cwd.join(&path);
                    if Path::new(&text).is_relative() {
                        self.out.notes.push(format!(
                            "the relative list_file {text:?} is read from {} (next to the cfg)",
                            abs.display()
                        ));
                    }
                    self.out.config.dispatcher.list = Some(abs.display().to_string());
                    self.set("dispatcher.list");
                }
            }
            "db_url" => {
                if text.starts_with("postgres://")
                    || text.starts_with("postgresql://")
                    || text.starts_with("mysql://")
                {
                    self.out.config.dispatcher.source = text;
                    self.out.config.dispatcher.list = None;
                    self.set("dispatcher.source");
                } else {
                    self.warn(line, format!("dispatcher db_url {text:?}: sipvane reads PostgreSQL and MySQL/MariaDB only; not carried over"));
                }
            }
            "table_name" => {
                self.out.config.dispatcher.db_table = text;
                self.set("dispatcher.db_table");
            }
            "ds_ping_interval" => {
                if let Some(n) = self.int(mp) {
                    self.out.config.dispatcher.ping_interval_s = n;
                    self.set("dispatcher.ping_interval_s");
                }
            }
            "ds_probing_threshold" | "ds_inactive_threshold" => {
                if let Some(n) = self.int(mp).filter(|n| *n >= 1) {
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    if mp.name == "ds_probing_threshold" {
                        self.out.config.dispatcher.probing_threshold = n;
                    } else {
                        self.out.config.dispatcher.inactive_threshold = n;
                    }
                }
            }
            "ds_probing_mode" => match mp.value.int() {
                Some(0) => self.out.config.dispatcher.probing_mode = ProbingMode::Flagged,
                Some(1) => self.out.config.dispatcher.probing_mode = ProbingMode::All,
                Some(2) => self.out.config.dispatcher.probing_mode = ProbingMode::Inactive,
                _ => self.warn(line, format!("ds_probing_mode {text}: sipvane has modes 0 (flagged), 1 (all) and 2 (inactive); not carried over")),
            },
            "ds_ping_reply_codes" => self.ping_reply_codes(line, &text),
            "ds_ping_from" => {
                self.out.config.dispatcher.ping_from = text;
                self.set("dispatcher.ping_from");
            }
            "ds_ping_method" => {
                self.out.config.dispatcher.ping_method = text;
                self.set("dispatcher.ping_method");
            }
            "flags" => {
                let f = mp.value.int().unwrap_or(0);
                if f & 1 != 0 {
                    self.warn(line, "dispatcher flags 1 (hash over the URI user only) is not carried over: sipvane hashes the whole URI".into());
                }
                if f & !3 != 0 {
                    self.warn(line, format!("dispatcher flags {f}: only 1 and 2 are known; the rest is not carried over"));
                }
                // Flag 2 (failover) needs nothing: sipvane always keeps the rest of the set.
            }
            "setid_col" | "destination_col" | "flags_col" | "priority_col" | "attrs_col" => {
                let default = &mp.name[..mp.name.len() - 4];
                let default = if default == "destination" { "destination" } else { default };
                if text != default {
                    self.warn(line, format!("{} {text:?}: sipvane reads Kamailio's default column names; not carried over", mp.name));
                }
            }
            _ => return false,
        }
        true
    }

    fn ping_reply_codes(&mut self, line: usize, text: &str) {
        let mut codes: BTreeSet<u16> = [200].into();
        for part in text
            .split([';', ':', ','])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let parsed = match part.split_once('=') {
                Some(("code", c)) => c
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=699).contains(c))
                    .map(|c| vec![c]),
                Some(("class", c)) => c
                    .parse::<u16>()
                    .ok()
                    .map(|c| if c >= 100 { c / 100 } else { c })
                    .filter(|c| (1..=6).contains(c))
                    .map(|c| (c * 100..c * 100 + 100).collect()),
                _ => None,
            };
            match parsed {
                Some(v) => codes.extend(v),
                None => self.warn(line, format!("ds_ping_reply_codes entry {part:?} is not code=N or class=N; not carried over")),
            }
        }
        self.out.config.dispatcher.ping_reply_codes = codes.into_iter().collect();
        self.set("dispatcher.ping_reply_codes");
    }

    fn rtpengine(&mut self, mp: &ModParam) -> bool {
        let line = mp.line;
        match mp.name.as_str() {
            "rtpengine_sock" => {
                let text = mp.value.text();
                let (set, socks) = match text.split_once("==") {
                    Some((set, socks)) => (set.trim().to_owned(), socks),
                    None => (String::new(), text.as_str()),
                };
                if !set.is_empty() && !self.out.config.rtpengine.engines.is_empty() {
                    self.warn(line, format!("rtpengine set {set}: sipvane has one set of engines; these are not carried over"));
                    return true;
                }
                for s in socks.split_whitespace() {
                    match engine(s) {
                        Ok(e) => {
                            if !self
                                .out
                                .config
                                .rtpengine
                                .engines
                                .iter()
                                .any(|o| o.addr == e.addr)
                            {
                                self.out.config.rtpengine.engines.push(e);
                            }
                        }
                        Err(why) => {
                            self.warn(line, format!("rtpengine_sock {s}: {why}; not carried over"))
                        }
                    }
                }
                self.set("rtpengine.engines");
            }
            "rtpengine_tout_ms" => {
                if let Some(ms) = self.int(mp).filter(|ms| *ms > 0) {
                    self.out.config.rtpengine.timeout_ms = ms;
                    self.set("rtpengine.timeout_ms");
                }
            }
            "rtpengine_retr" => {
                if let Some(n) = self.int(mp) {
                    self.out.config.rtpengine.retries = u32::try_from(n).unwrap_or(u32::MAX);
                    self.set("rtpengine.retries");
                }
            }
            _ => return false,
        }
        true
    }
}

/// A core parameter value without quotes.
fn plain(v: &str) -> &str {
    let v = v.trim();
    unquote(v).unwrap_or(v)
}

/// `[::1]` → `::1`; anything else unchanged.
fn host_of(h: &str) -> &str {
    h.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(h)
}

/// `1.2.3.4:5060` → (`1.2.3.4`, `5060`); `[::1]:5060`; `1.2.3.4`; a bare IPv6 address.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find(']') {
            Some(end) => (&s[..=end], s[end + 1..].strip_prefix(':')),
            None => (s, None),
        };
    }
    if s.matches(':').count() > 1 {
        return (s, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

/// One `rtpengine_sock` entry; `localhost` is taken as 127.0.0.1 (no DNS here).
fn engine(s: &str) -> Result<EngineSpec, String> {
    let (addr, weight) = s.split_once('=').unwrap_or((s, ""));
    let Some(rest) = addr
        .strip_prefix("udp:")
        .or_else(|| addr.strip_prefix("udp6:"))
    else {
        return Err("only udp: engines are supported".into());
    };
    let (host, port) = split_host_port(rest);
    let host = match host_of(host) {
        "localhost" => "127.0.0.1",
        "ip6-localhost" => "::1",
        h => h,
    };
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("{host} is not an IP address (sipvane does not resolve engine names)")
    })?;
    let port: u16 = port
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| "a port is needed".to_owned())?;
    let weight = if weight.is_empty() {
        1
    } else {
        weight
            .parse::<u32>()
            .ok()
            .filter(|w| *w >= 1)
            .ok_or_else(|| format!("weight {weight} must be ≥ 1"))?
    };
    Ok(EngineSpec {
        addr: SocketAddr::new(ip, port),
        weight,
    })
}

/// A value as it would be written in the cfg.
pub fn show(v: &Val) -> String {
    match v {
        Val::Str(s) => format!("\"{s}\""),
        Val::Int(n) => n.to_string(),
        Val::Other(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_and_addresses() {
        assert_eq!(
            engine("udp:localhost:2223").unwrap().to_string(),
            "udp:127.0.0.1:2223"
        );
        assert_eq!(
            engine("udp:[::1]:2223=3").unwrap().to_string(),
            "udp:[::1]:2223=3"
        );
        assert!(engine("udp:rtp.example.com:2223").is_err());
        assert!(engine("unix:/run/rtp.sock").is_err());
        assert_eq!(split_host_port("[::1]:5060"), ("[::1]", Some("5060")));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("1.2.3.4"), ("1.2.3.4", None));
    }
}
