//! The imported configuration as TOML: a header of notes and warnings (comments),
//! then the sections with the keys that were carried over or differ from
//! sipvane's defaults.
//!
//! The text is checked before it is returned: it must load (with
//! [`Config::from_toml_str`], which validates) into exactly the configuration that
//! was built; a value sipvane would reject is left at its default, with a warning.

use crate::config::{Config, PathSeg};

use super::translate::Translation;
use super::Note;

const SECTIONS: &[&str] = &[
    "proxy",
    "dispatcher",
    "rtpengine",
    "registrar",
    "acc",
    "events",
    "mgmt",
    "log",
];

/// Renders `t` (whose warnings are `warnings`, already complete) for `main`.
/// May add warnings to `warnings` for values sipvane rejects.
pub fn render(t: &mut Translation, warnings: &mut Vec<Note>, main: &str) -> String {
    let body = config_toml(t, warnings, main);
    let mut out = String::new();
    out.push_str(&format!(
        "# sipvane configuration imported from {main} by `sipvane import-kamailio`.\n\
         # Check it with `sipvane check-config FILE`. Each \"warning:\" line is something the\n\
         # Kamailio configuration does that this file does not.\n"
    ));
    for n in &t.notes {
        out.push_str(&format!("# note: {}\n", one_line(n)));
    }
    if !t.ignored.is_empty() {
        let names: Vec<&str> = t.ignored.iter().map(String::as_str).collect();
        out.push_str(&format!(
            "# note: Kamailio process settings with no sipvane equivalent: {}\n",
            names.join(", ")
        ));
    }
    for w in warnings.iter() {
        out.push_str(&format!("# warning: {}\n", one_line(&w.to_string())));
    }
    out.push('\n');
    out.push_str(&body);
    out
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The configuration's TOML: explicit keys and keys that differ from the defaults.
fn config_toml(t: &mut Translation, warnings: &mut Vec<Note>, main: &str) -> String {
    // Values sipvane rejects go back to their defaults, one key at a time.
    for _ in 0..32 {
        let problems = t.config.validate();
        let Some(p) = problems.first() else { break };
        let (Some(PathSeg::Key(section)), Some(PathSeg::Key(key))) =
            (p.path.first(), p.path.get(1))
        else {
            break;
        };
        warnings.push(Note::file(
            main,
            format!(
                "[{section}] {key}: {}; left at sipvane's default",
                p.message
            ),
        ));
        if !reset_key(&mut t.config, section, key) {
            break;
        }
    }
    let text = pruned(t).unwrap_or_default();
    match Config::from_toml_str(&text, "generated") {
        Ok(back) if back == t.config => text,
        // Cannot happen unless pruning lost a value: fall back to every key.
        _ => t.config.to_toml().unwrap_or_default(),
    }
}

/// Sets one key back to its default, through the TOML value tree.
fn reset_key(cfg: &mut Config, section: &str, key: &str) -> bool {
    let (Ok(toml::Value::Table(mut full)), Ok(toml::Value::Table(def))) = (
        toml::Value::try_from(&*cfg),
        toml::Value::try_from(Config::default()),
    ) else {
        return false;
    };
    let Some(toml::Value::Table(sec)) = full.get_mut(section) else {
        return false;
    };
    match def.get(section).and_then(|s| s.get(key)) {
        Some(v) => {
            sec.insert(key.to_owned(), v.clone());
        }
        None => {
            sec.remove(key);
        }
    }
    match toml::Value::Table(full).try_into::<Config>() {
        Ok(c) if c != *cfg => {
            *cfg = c;
            true
        }
        _ => false,
    }
}

fn pruned(t: &Translation) -> Option<String> {
    let toml::Value::Table(full) = toml::Value::try_from(&t.config).ok()? else {
        return None;
    };
    let toml::Value::Table(def) = toml::Value::try_from(Config::default()).ok()? else {
        return None;
    };
    let mut out = String::new();
    for section in SECTIONS {
        let Some(toml::Value::Table(sec)) = full.get(*section) else {
            continue;
        };
        let mut keep = toml::Table::new();
        for (k, v) in sec {
            let explicit = t.explicit.contains(format!("{section}.{k}").as_str());
            if explicit || def.get(*section).and_then(|s| s.get(k)) != Some(v) {
                keep.insert(k.clone(), v.clone());
            }
        }
        if keep.is_empty() {
            continue;
        }
        let mut wrapper = toml::Table::new();
        wrapper.insert((*section).to_owned(), toml::Value::Table(keep));
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&toml::to_string(&wrapper).ok()?);
    }
    Some(out)
}
