//! The modparams of Kamailio's registrar role (`registrar`, `usrloc`, `auth`,
//! `auth_db`, `nathelper`'s keep-alive) and of `acc`, carried over into `[registrar]` and `[acc]`. What
//! the route blocks name (realm, tables, prefixes) is read by
//! [`super::routing`]; [`finish`] then drops a `[registrar]` that could not
//! start (no database, no domain) with a warning.

use super::kamailio_cfg::{ModParam, Val};
use super::preprocess::Source;
use super::translate::{show, Translation};

/// Carries over `modparam(module, …)` for the registrar modules and acc.
/// False: not carried over (the caller warns).
pub fn modparam(t: &mut Translation, src: &Source, module: &str, mp: &ModParam) -> bool {
    let mut m = M { t, src, mp };
    match module {
        "registrar" => m.registrar(),
        "usrloc" => m.usrloc(),
        "auth" => m.auth(),
        "auth_db" => m.auth_db(),
        "acc" => m.acc(),
        "nathelper" => m.nathelper(),
        _ => false,
    }
}

/// A `[registrar]` sipvane would refuse to start with is left out, saying why.
pub fn finish(t: &mut Translation, src: &Source, line: usize) {
    if !t.registrar {
        return;
    }
    let r = &mut t.config.registrar;
    let why = if r.db_url.is_empty() {
        "no usrloc / auth_db db_url"
    } else if r.domain.is_empty() {
        "no realm in auth_check / www_authorize / proxy_authorize and no alias"
    } else {
        return;
    };
    *r = Default::default();
    t.explicit.retain(|k| !k.starts_with("registrar."));
    let msg = format!("[registrar] left out: {why}; sipvane's registrar needs the database (Kamailio's schema) and a domain");
    t.warnings.push(src.note(line, msg));
}

struct M<'a> {
    t: &'a mut Translation,
    src: &'a Source,
    mp: &'a ModParam,
}

impl M<'_> {
    fn warn(&mut self, msg: String) {
        self.t.warnings.push(self.src.note(self.mp.line, msg));
    }

    fn set(&mut self, key: &'static str) {
        self.t.explicit.insert(key);
    }

    /// The value as a non-negative number, or a warning.
    fn int(&mut self) -> Option<u32> {
        let n = self.mp.value.int().and_then(|n| u32::try_from(n).ok());
        if n.is_none() {
            let msg = format!(
                "{} must be a non-negative number (got {}); not carried over",
                self.mp.name,
                show(&self.mp.value)
            );
            self.warn(msg);
        }
        n
    }

    /// Kamailio's booleans: 1 / 0, yes / no, on / off, true / false.
    fn flag(&self) -> Option<bool> {
        match &self.mp.value {
            Val::Int(n) => Some(*n != 0),
            Val::Str(s) | Val::Other(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "yes" | "on" | "true" | "enable" => Some(true),
                "0" | "no" | "off" | "false" | "disable" => Some(false),
                _ => None,
            },
        }
    }

    fn db_url(&mut self) {
        let url = self.mp.value.text();
        let module = self.mp.module.clone();
        let r = &mut self.t.config.registrar;
        if r.db_url.is_empty() {
            r.db_url = url;
            self.set("registrar.db_url");
        } else if r.db_url != url {
            let u = crate::source::db::redact_url(&r.db_url);
            self.warn(format!("{module} db_url differs from the one already read ({u}); sipvane's registrar uses one database"));
        }
    }

    fn registrar(&mut self) -> bool {
        let r = &self.t.config.registrar;
        let (min, max) = (r.min_expires, r.max_expires);
        match self.mp.name.as_str() {
            "min_expires" => {
                let Some(n) = self.int() else { return true };
                if n == 0 {
                    self.warn(format!("min_expires 0 (no minimum) is not carried over; sipvane refuses registrations shorter than {min} s"));
                    return true;
                }
                self.t.config.registrar.min_expires = n;
                self.set("registrar.min_expires");
            }
            "max_expires" => {
                let Some(n) = self.int() else { return true };
                if n == 0 {
                    self.warn(format!("max_expires 0 (no maximum) is not carried over; sipvane cuts registrations to {max} s"));
                    return true;
                }
                self.t.config.registrar.max_expires = n;
                self.set("registrar.max_expires");
            }
            "default_expires" => {
                let Some(n) = self.int() else { return true };
                self.t.config.registrar.default_expires = n;
                self.set("registrar.default_expires");
            }
            // sipvane always stores a REGISTER's Path and calls through it.
            "use_path" => {
                if self.flag() == Some(false) {
                    self.warn("registrar use_path 0: sipvane always stores a REGISTER's Path and sends calls through it (RFC 3327)".into());
                }
            }
            "path_mode" => {
                if self.mp.value.int() != Some(2) {
                    self.warn(format!("registrar path_mode {}: sipvane behaves as path_mode 2 (the 200 lists the Path when the REGISTER has Supported: path; one without is accepted)", show(&self.mp.value)));
                }
            }
            "path_check_local" | "path_use_received" => self.warn(format!(
                "registrar {} is not carried over: sipvane sends a call to a Path's first hop only when the REGISTER came from it or from a trusted source, else to the REGISTER's source (docs/registrar.md)",
                self.mp.name
            )),
            "max_contacts" => {
                let Some(n) = self.int() else { return true };
                if n == 0 {
                    let now = self.t.config.registrar.max_contacts;
                    self.warn(format!("max_contacts 0 (no limit) is not carried over; sipvane keeps at most {now} contacts per user"));
                    return true;
                }
                self.t.config.registrar.max_contacts = n;
                self.set("registrar.max_contacts");
            }
            _ => return false,
        }
        true
    }

    fn usrloc(&mut self) -> bool {
        match self.mp.name.as_str() {
            "db_url" => self.db_url(),
            "db_mode" => match self.mp.value.int() {
                // Write-back: what sipvane does.
                Some(2) => {}
                Some(0) => self.warn("usrloc db_mode 0 (memory only): sipvane writes the bindings back to location (as db_mode 2)".into()),
                _ => self.warn(format!(
                    "usrloc db_mode {}: sipvane keeps the bindings in memory and writes them back within write_back_ms (as db_mode 2)",
                    show(&self.mp.value)
                )),
            },
            // sipvane always writes `domain`; rows without one are read as
            // the first domain.
            "use_domain" => {}
            _ => return false,
        }
        true
    }

    /// The keep-alive settings, when there is a registrar whose NATed
    /// bindings they would keep open (sipvane pings them with OPTIONS).
    fn nathelper(&mut self) -> bool {
        if !self.t.registrar {
            return false;
        }
        match self.mp.name.as_str() {
            "natping_interval" => {
                let Some(n) = self.int() else { return true };
                if n > 3600 {
                    self.warn(format!("natping_interval {n}: sipvane pings at most every 3600 s; not carried over"));
                    return true;
                }
                self.t.config.registrar.nat_ping_interval_s = n;
                self.set("registrar.nat_ping_interval_s");
            }
            // sipvane pings only NATed bindings, always with OPTIONS (what
            // sipping_bflag asks Kamailio for).
            "ping_nated_only" | "sipping_bflag" => {}
            _ => return false,
        }
        true
    }

    fn auth(&mut self) -> bool {
        match self.mp.name.as_str() {
            "nonce_expire" => {
                let Some(n) = self.int() else { return true };
                self.t.config.registrar.nonce_expires_s = n;
                self.set("registrar.nonce_expires_s");
            }
            "algorithm" => {
                let a = self.mp.value.text();
                let name = match a.trim().to_ascii_uppercase().as_str() {
                    "" | "MD5" => "MD5",
                    "SHA-256" => "SHA-256",
                    _ => {
                        self.warn(format!("auth algorithm {a:?}: sipvane offers MD5 and SHA-256; not carried over"));
                        return true;
                    }
                };
                self.t.config.registrar.algorithms = vec![name.to_owned()];
                self.set("registrar.algorithms");
            }
            "qop" => {
                let q = self.mp.value.text();
                if q.trim() != "auth" {
                    self.warn(format!("auth qop {q:?}: sipvane always offers qop=\"auth\" (and accepts clients without qop)"));
                }
            }
            // Nonces are signed with a per-process key: nothing to carry.
            "secret" => self.warn("auth secret is not carried over: sipvane signs nonces with a key of its own (a restart makes phones answer a new challenge)".into()),
            _ => return false,
        }
        true
    }

    fn auth_db(&mut self) -> bool {
        match self.mp.name.as_str() {
            "db_url" => self.db_url(),
            // sipvane computes HA1 from `password` whenever `ha1` is empty.
            "calculate_ha1" => {}
            "password_column" | "password_column_2" => {
                let col = self.mp.value.text();
                if !["password", "ha1", "ha1b"].contains(&col.as_str()) {
                    self.warn(format!("auth_db {} {col:?}: sipvane reads the password, ha1 and ha1b columns of Kamailio's schema", self.mp.name));
                }
            }
            "load_credentials" => {
                if !self.mp.value.text().trim().is_empty() {
                    self.warn(format!(
                        "auth_db load_credentials {}: sipvane loads no extra credentials into AVPs",
                        show(&self.mp.value)
                    ));
                }
            }
            _ => return false,
        }
        true
    }

    fn acc(&mut self) -> bool {
        let text = self.mp.value.text();
        let on = self.flag().unwrap_or(false);
        let acc = &mut self.t.config.acc;
        match self.mp.name.as_str() {
            "db_url" => {
                acc.db_url = text;
                self.set("acc.db_url");
            }
            "db_table_acc" => {
                acc.acc_table = text;
                self.set("acc.acc_table");
            }
            "db_table_missed_calls" => {
                acc.missed_table = text;
                self.set("acc.missed_table");
            }
            "cdrs_table" => {
                acc.cdr_table = text;
                self.set("acc.cdr_table");
            }
            "cdr_enable" => {
                acc.cdrs = on;
                self.set("acc.cdrs");
            }
            // Which transactions the script flags: sipvane records every
            // initial INVITE and BYE (docs/accounting.md).
            "db_flag" | "db_missed_flag" => {}
            "failed_transaction_flag" => {
                acc.log_failed = true;
                self.set("acc.log_failed");
            }
            "db_extra" => self.extra(false, &text),
            "cdr_extra" => self.extra(true, &text),
            _ => return false,
        }
        true
    }

    /// `column=$pv;column=$pv` into `[acc.extra]` / `[acc.cdr_extra]`, the
    /// pairs sipvane has no source for left out with a warning.
    fn extra(&mut self, cdr: bool, text: &str) {
        let mut skipped = Vec::new();
        for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((col, source)) = pair.split_once('=') else {
                skipped.push(pair.to_owned());
                continue;
            };
            let (col, source) = (col.trim(), source.trim());
            if crate::acc::row::Source::parse(source).is_none() {
                skipped.push(pair.to_owned());
                continue;
            }
            let map = if cdr {
                &mut self.t.config.acc.cdr_extra
            } else {
                &mut self.t.config.acc.extra
            };
            map.insert(col.to_owned(), source.to_owned());
        }
        if !skipped.is_empty() {
            let msg = format!(
                "acc {} {}: no sipvane source; not carried over (sources: {})",
                self.mp.name,
                skipped.join(";"),
                crate::acc::row::SOURCE_NAMES
            );
            self.warn(msg);
        }
    }
}
