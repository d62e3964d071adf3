//! What the route blocks decide, carried into the [`Translation`]: the set and
//! algorithm of each `ds_select_*` call (the unconditional one is the default, those
//! under a Request-URI prefix or domain test become `[[dispatcher.rules]]`), the
//! failover codes of the failure route that calls `ds_next_dst`, the RTPEngine
//! flags, the registrar's realm and prefixes; and a warning for each script
//! function sipvane has no counterpart for.

use std::collections::{BTreeMap, BTreeSet};

use super::kamailio_cfg::{Cfg, RouteKind, Val};
use super::preprocess::Source;
use super::script::{self, Site, Target, Test};
use super::translate::Translation;
use crate::config::{AlgorithmSpec, DispatchRule, ALGORITHM_NAMES};

/// Script functions whose effect sipvane has built in (or that only log, or that
/// this module reads).
const KNOWN_FUNCTIONS: &[&str] = &[
    "route",
    "t_relay",
    "t_relay_to_udp",
    "t_relay_to_tcp",
    "record_route",
    "loose_route",
    "has_totag",
    "is_method",
    "mf_process_maxfwd_header",
    "sl_send_reply",
    "send_reply",
    "sl_reply_error",
    "t_reply",
    "t_check_trans",
    "t_precheck_trans",
    "t_newtran",
    "t_on_failure",
    "t_on_reply",
    "t_on_branch",
    "t_is_set",
    "t_is_canceled",
    "t_branch_timeout",
    "t_branch_replied",
    "t_any_timeout",
    "t_any_replied",
    "remove_hf",
    "xlog",
    "xdbg",
    "xinfo",
    "xnotice",
    "xwarn",
    "xerr",
    "xalert",
    "xcrit",
    "log",
    "sanity_check",
    "ds_select_dst",
    "ds_select_domain",
    "ds_select",
    "ds_next_dst",
    "ds_next_domain",
    "ds_next",
    "ds_mark_dst",
    "ds_is_from_list",
    "t_check_status",
    "force_rport",
    "set_reply_no_connect",
    "set_forward_no_connect",
    "is_request",
    "is_reply",
    "rtpengine_manage",
    "rtpengine_offer",
    "rtpengine_answer",
    "rtpengine_delete",
    "lookup",
    "save",
    "auth_check",
    "www_authorize",
    "proxy_authorize",
    "www_challenge",
    "proxy_challenge",
    "auth_challenge",
    "consume_credentials",
    "setflag",
    "resetflag",
    "isflagset",
    "setbflag",
    "resetbflag",
    "isbflagset",
    "t_is_branch_route",
    "t_is_failure_route",
    "t_is_reply_route",
    "is_present_hf",
    "ds_load_update",
    "ds_load_unset",
    "starts_with",
    "has_body",
];

/// Algorithm numbers by name, from the config's table (first name of each number).
fn algorithm_name(n: u32) -> Option<&'static str> {
    ALGORITHM_NAMES
        .iter()
        .find(|(_, num)| *num == Some(n))
        .map(|(name, _)| *name)
}

/// Applies what the route blocks do to `t`.
pub fn apply(t: &mut Translation, src: &Source, cfg: &Cfg) {
    let sites = script::sites(cfg);
    let mut r = R { t, src };
    r.dispatch(&sites, cfg);
    r.failover(&sites, cfg);
    r.media(&sites);
    r.registrar(&sites);
    r.unknown_functions(&sites);
}

struct R<'a> {
    t: &'a mut Translation,
    src: &'a Source,
}

impl R<'_> {
    fn warn(&mut self, line: usize, msg: String) {
        self.t.warnings.push(self.src.note(line, msg));
    }

    fn loc(&self, line: usize) -> String {
        let n = self.src.note(line, String::new());
        format!("{}:{}", n.file, n.line)
    }

    fn dispatch(&mut self, sites: &[Site<'_>], cfg: &Cfg) {
        let select = ["ds_select_dst", "ds_select_domain", "ds_select"];
        let mut seen = BTreeSet::new();
        let mut default: Option<(u32, Option<u32>, usize)> = None;
        let mut first_rule_alg: Option<u32> = None;
        let mut others: Vec<(u32, Option<u32>, usize)> = Vec::new();
        let mut any = false;
        for site in sites {
            let c = &site.call;
            if c.name == "ds_select_routes" {
                self.warn(
                    c.line,
                    "ds_select_routes() is not carried over; use [[dispatcher.rules]]".into(),
                );
                continue;
            }
            if !select.contains(&c.name.as_str()) {
                continue;
            }
            let target = script::target(site);
            if !seen.insert((c.line, format!("{target:?}"))) {
                continue;
            }
            any = true;
            if matches!(site.root, RouteKind::Failure) {
                self.warn(c.line, format!("{}() in a failure_route (another set after a failure) is not carried over; sipvane fails over within the set", c.name));
                continue;
            }
            let Some(set) = c
                .args
                .first()
                .and_then(Val::int)
                .and_then(|n| u32::try_from(n).ok())
            else {
                let set = c.args.first().map(Val::text).unwrap_or_default();
                self.warn(
                    c.line,
                    format!(
                        "{}(): set {set:?} is not a number (a variable?); not carried over",
                        c.name
                    ),
                );
                continue;
            };
            let alg_val = c.args.get(1);
            let alg = alg_val
                .and_then(Val::int)
                .and_then(|n| u32::try_from(n).ok());
            let alg = match alg {
                Some(n) if algorithm_name(n).is_some() => Some(n),
                _ => {
                    let text = alg_val.map(Val::text).unwrap_or_default();
                    self.warn(c.line, format!("{}(): algorithm {text:?} is not supported by sipvane; not carried over", c.name));
                    None
                }
            };
            if let Some(limit) = c.args.get(2) {
                self.warn(c.line, format!("{}(): the limit {} is not carried over; sipvane tries every destination of the set", c.name, limit.text()));
            }
            match target {
                Target::Always => match default {
                    None => default = Some((set, alg, c.line)),
                    Some((d, _, l)) if d != set => {
                        let at = self.loc(l);
                        self.warn(c.line, format!("{}() selects set {set} unconditionally, but the one at {at} already made set {d} the default; not carried over", c.name));
                    }
                    Some(_) => others.push((set, alg, c.line)),
                },
                Target::Only(test) => {
                    self.rule(set, &test, c.line);
                    first_rule_alg = first_rule_alg.or(alg);
                    others.push((set, alg, c.line));
                }
                Target::Unknown(cond) => {
                    let at = self.loc(cond);
                    self.warn(c.line, format!("{}() of set {set} runs only when the condition at {at} holds, which sipvane's rules (Request-URI user prefix or domain) cannot express; not carried over", c.name));
                }
            }
        }
        let d = &mut self.t.config.dispatcher;
        let chosen_alg = match default {
            Some((set, alg, _)) => {
                d.default_set = set;
                alg
            }
            None => first_rule_alg,
        };
        if let Some(n) = chosen_alg {
            d.algorithm = AlgorithmSpec::Name(algorithm_name(n).unwrap_or("round-robin").into());
        }
        if any {
            self.t.explicit.insert("dispatcher.default_set");
            self.t.explicit.insert("dispatcher.algorithm");
        }
        for (set, alg, line) in others {
            if alg.is_some() && alg != chosen_alg {
                let n = alg.map(|a| a.to_string()).unwrap_or_default();
                let used = self.t.config.dispatcher.algorithm.clone();
                self.warn(line, format!("set {set} uses algorithm {n} in Kamailio; sipvane uses one algorithm for every set ({used})"));
            }
        }
        let dispatcher_loaded = cfg.modules.iter().any(|m| m.name == "dispatcher");
        if default.is_none() && any {
            let set = self.t.config.dispatcher.default_set;
            self.t.notes.push(format!("no unconditional ds_select_dst(): requests that match no rule go to default_set {set}"));
        } else if !any && dispatcher_loaded {
            let line = cfg
                .modules
                .iter()
                .find(|m| m.name == "dispatcher")
                .map_or(0, |m| m.line);
            self.warn(line, "the dispatcher module is loaded but no ds_select_dst() / ds_select_domain() call was found".into());
        }
    }

    fn rule(&mut self, set: u32, test: &Test, line: usize) {
        let rules = &mut self.t.config.dispatcher.rules;
        let mut new = Vec::new();
        match test {
            Test::Prefix { prefixes, exact } => {
                if !exact {
                    self.t.warnings.push(self.src.note(line, format!("the Request-URI test for set {set} is approximated by the prefix rule(s) {prefixes:?}")));
                }
                for p in prefixes {
                    new.push(DispatchRule {
                        prefix: Some(p.clone()),
                        domain: None,
                        set,
                        rtpengine: None,
                    });
                }
            }
            Test::Domain(d) => new.push(DispatchRule {
                prefix: None,
                domain: Some(d.clone()),
                set,
                rtpengine: None,
            }),
            Test::Neutral | Test::Unrecognised => {}
        }
        for rule in new {
            let same = rules
                .iter()
                .find(|r| r.prefix == rule.prefix && r.domain == rule.domain);
            match same {
                Some(r) if r.set != set => {
                    let msg = format!("a rule for {:?} already sends those requests to set {}; set {set} is not carried over", rule.prefix.as_ref().or(rule.domain.as_ref()), r.set);
                    self.t.warnings.push(self.src.note(line, msg));
                }
                Some(_) => {}
                None => rules.push(rule),
            }
        }
        if !self.t.config.dispatcher.rules.is_empty() {
            self.t.explicit.insert("dispatcher.rules");
        }
    }

    fn failover(&mut self, sites: &[Site<'_>], cfg: &Cfg) {
        let mut codes = BTreeSet::new();
        let mut guarded_lines = BTreeSet::new();
        let mut next_sites = 0;
        for site in sites.iter().filter(|s| {
            matches!(
                s.call.name.as_str(),
                "ds_next_dst" | "ds_next_domain" | "ds_next"
            )
        }) {
            next_sites += 1;
            let mut guarded = false;
            for c in site.conds.iter().filter(|c| !c.else_branch) {
                for call in super::kamailio_cfg::calls(c.toks)
                    .into_iter()
                    .filter(|k| k.name == "t_check_status")
                {
                    guarded_lines.insert(call.line);
                    if call.negated {
                        continue;
                    }
                    let re = call.args.first().map(Val::text).unwrap_or_default();
                    match script::status_codes(&re) {
                        Some(set) => {
                            guarded = true;
                            for code in set {
                                if (300..=699).contains(&code) {
                                    codes.insert(code);
                                }
                            }
                        }
                        None => self.warn(call.line, format!("t_check_status({re:?}): not a list of three-digit codes; not carried over")),
                    }
                }
            }
            if !guarded {
                let line = site.call.line;
                self.warn(line, "ds_next_dst() runs for every failure here; sipvane fails over on failover_codes and on timeouts only".into());
            }
        }
        for site in sites.iter().filter(|s| s.call.name == "t_check_status") {
            if !guarded_lines.contains(&site.call.line) {
                let re = site.call.args.first().map(Val::text).unwrap_or_default();
                self.warn(site.call.line, format!("t_check_status({re:?}) does not guard a ds_next_dst() failover; not carried over"));
            }
        }
        let d = &mut self.t.config.dispatcher;
        if !codes.is_empty() {
            d.failover_codes = codes.into_iter().collect();
            self.t.explicit.insert("dispatcher.failover_codes");
        } else if next_sites == 0 && cfg.modules.iter().any(|m| m.name == "dispatcher") {
            d.failover_codes = Vec::new();
            self.t.explicit.insert("dispatcher.failover_codes");
            let line = cfg
                .modules
                .iter()
                .find(|m| m.name == "dispatcher")
                .map_or(0, |m| m.line);
            self.warn(line, "no failure_route calls ds_next_dst(): Kamailio does not fail over; failover_codes is left empty, but sipvane still fails over when a destination does not answer within fr_timer".into());
        }
        for site in sites
            .iter()
            .filter(|s| s.call.name.starts_with("t_set_fr") || s.call.name == "t_set_max_lifetime")
        {
            self.warn(site.call.line, format!("{}() (per-call timers) is not carried over; sipvane uses fr_timer_ms / fr_inv_timer_ms for every call", site.call.name));
        }
    }

    fn media(&mut self, sites: &[Site<'_>]) {
        let mut offer: Option<(String, usize)> = None;
        let mut answer: Option<(String, usize)> = None;
        let mut conditional: Option<usize> = None;
        let mut any = false;
        for site in sites {
            let name = site.call.name.as_str();
            let (is_offer, is_answer) = match name {
                "rtpengine_manage" => (true, true),
                "rtpengine_offer" => (true, false),
                "rtpengine_answer" => (false, true),
                "rtpengine_delete" => {
                    any = true;
                    continue;
                }
                _ => continue,
            };
            any = true;
            if script::target(site) != Target::Always
                || site
                    .conds
                    .iter()
                    .any(|c| !c.else_branch && mentions_nat(c.toks))
            {
                conditional.get_or_insert(site.call.line);
            }
            let flags = match site.call.args.first() {
                Some(Val::Str(s)) => s.clone(),
                None => String::new(),
                Some(other) => {
                    self.warn(
                        site.call.line,
                        format!(
                            "{name}({}): flags that are not a literal string are not carried over",
                            other.text()
                        ),
                    );
                    continue;
                }
            };
            for (slot, wanted) in [(&mut offer, is_offer), (&mut answer, is_answer)] {
                if !wanted {
                    continue;
                }
                match slot {
                    None => *slot = Some((flags.clone(), site.call.line)),
                    Some((f, l)) if *f != flags => {
                        let at = self.loc(*l);
                        let msg = format!("{name}(\"{flags}\") differs from the flags at {at} ({f:?}); sipvane sends one set of flags, the first");
                        self.t.warnings.push(self.src.note(site.call.line, msg));
                    }
                    Some(_) => {}
                }
            }
        }
        let r = &mut self.t.config.rtpengine;
        if !any {
            if !r.engines.is_empty() {
                let engines: Vec<String> = r.engines.iter().map(|e| e.to_string()).collect();
                r.engines.clear();
                self.t.explicit.remove("rtpengine.engines");
                self.t.notes.push(format!("rtpengine_sock is set but the script never calls rtpengine_manage/offer/answer: no media anchoring ({} left out)", engines.join(" ")));
            }
            return;
        }
        if r.engines.is_empty() {
            self.t.notes.push("the script calls rtpengine functions but no rtpengine_sock is set: no media anchoring".into());
        }
        for (slot, key) in [
            (offer, "rtpengine.offer_flags"),
            (answer, "rtpengine.answer_flags"),
        ] {
            let Some((flags, line)) = slot else { continue };
            let (flags, dropped) = ng_flags(&flags);
            if !dropped.is_empty() {
                self.warn(
                    line,
                    format!(
                        "rtpengine flags {} are Kamailio module options; not carried over",
                        dropped.join(" ")
                    ),
                );
            }
            if flags.is_empty() {
                continue;
            }
            match dataplane::rtpengine::NgFlags::parse(&flags) {
                Ok(_) => {
                    if key == "rtpengine.offer_flags" {
                        self.t.config.rtpengine.offer_flags = flags;
                    } else {
                        self.t.config.rtpengine.answer_flags = flags;
                    }
                    self.t.explicit.insert(key);
                }
                Err(e) => self.warn(
                    line,
                    format!("rtpengine flags {flags:?}: {e}; sipvane's default flags are used"),
                ),
            }
        }
        if let Some(line) = conditional {
            self.warn(line, "RTPEngine is used only under conditions here (e.g. NAT detected); sipvane anchors the media of every call (or of [rtpengine] sets)".into());
        }
    }

    /// The realm(s) the auth functions name become `[registrar] domain`,
    /// their table `subscriber_table`; the table of save()/lookup()
    /// `location_table`; the Request-URI prefixes lookup() runs under
    /// `prefixes`.
    fn registrar(&mut self, sites: &[Site<'_>]) {
        if !self.t.registrar {
            return;
        }
        let auth = [
            "auth_check",
            "www_authorize",
            "proxy_authorize",
            "www_challenge",
            "proxy_challenge",
            "auth_challenge",
        ];
        let mut domains: Vec<String> = Vec::new();
        let mut from_alias = false;
        for site in sites
            .iter()
            .filter(|s| auth.contains(&s.call.name.as_str()))
        {
            let realm = site.call.args.first().map(Val::text).unwrap_or_default();
            if realm.is_empty() || realm.starts_with('$') {
                from_alias = true;
            } else if !domains.contains(&realm) {
                domains.push(realm);
            }
            let checks = ["auth_check", "www_authorize", "proxy_authorize"];
            if checks.contains(&site.call.name.as_str()) {
                let table = site.call.args.get(1).map(Val::text).unwrap_or_default();
                self.table(site.call.line, table, "subscriber_table");
            }
        }
        if domains.is_empty() && from_alias {
            domains.extend(self.t.aliases.first().cloned());
        }
        if !domains.is_empty() {
            self.t.config.registrar.domain = domains;
            self.t.explicit.insert("registrar.domain");
        }
        let mut prefixes = Vec::new();
        for site in sites
            .iter()
            .filter(|s| s.call.name == "save" || s.call.name == "lookup")
        {
            let table = site.call.args.first().map(Val::text).unwrap_or_default();
            self.table(site.call.line, table, "location_table");
            if site.call.name != "lookup" {
                continue;
            }
            if let Target::Only(Test::Prefix { prefixes: ps, .. }) = script::target(site) {
                for p in ps {
                    if !prefixes.contains(&p) {
                        prefixes.push(p);
                    }
                }
            }
        }
        if !prefixes.is_empty() {
            self.t.config.registrar.prefixes = prefixes;
            self.t.explicit.insert("registrar.prefixes");
        }
        let line = self.t.registrar_line;
        super::registrar::finish(self.t, self.src, line);
    }

    /// A table a registrar function names: the first one becomes `key`,
    /// another one is a warning (sipvane uses one of each).
    fn table(&mut self, line: usize, table: String, key: &'static str) {
        if table.is_empty() || table.starts_with('$') {
            return;
        }
        let r = &mut self.t.config.registrar;
        let slot = if key == "location_table" {
            &mut r.location_table
        } else {
            &mut r.subscriber_table
        };
        let explicit = if key == "location_table" {
            "registrar.location_table"
        } else {
            "registrar.subscriber_table"
        };
        if !self.t.explicit.contains(explicit) {
            *slot = table;
            self.t.explicit.insert(explicit);
        } else if *slot != table {
            let msg = format!(
                "table {table:?} differs from {:?}; sipvane's registrar uses one {key}",
                slot
            );
            self.warn(line, msg);
        }
    }

    fn unknown_functions(&mut self, sites: &[Site<'_>]) {
        let mut first: BTreeMap<&str, usize> = BTreeMap::new();
        for s in sites {
            let name = s.call.name.as_str();
            if KNOWN_FUNCTIONS.contains(&name)
                || name.starts_with("t_set_fr")
                || name == "ds_select_routes"
            {
                continue;
            }
            first.entry(name).or_insert(s.call.line);
        }
        let mut by_line: Vec<(usize, &str)> = first.into_iter().map(|(n, l)| (l, n)).collect();
        by_line.sort();
        for (line, name) in by_line {
            self.warn(
                line,
                format!("{name}() has no sipvane counterpart; not carried over"),
            );
        }
    }
}

/// Whether a condition is a NAT test (the usual reason for conditional anchoring).
fn mentions_nat(toks: &[super::kamailio_cfg::Token]) -> bool {
    toks.iter().any(|t| {
        matches!(&t.tok, super::kamailio_cfg::Tok::Ident(i) if i.starts_with("nat_uac_test") || i == "isflagset" || i == "isbflagset")
    })
}

/// Kamailio rtpengine flags to ng flags, and the module-only options left out.
fn ng_flags(s: &str) -> (String, Vec<&str>) {
    let (dropped, kept): (Vec<&str>, Vec<&str>) = s.split_whitespace().partition(|w| {
        let key = w.split_once('=').map_or(*w, |(k, _)| k);
        matches!(
            key,
            "via-branch" | "direction" | "in-iface" | "out-iface" | "internal" | "external"
        )
    });
    (kept.join(" "), dropped)
}
