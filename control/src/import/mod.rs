//! `sipvane import-kamailio`: reads a Kamailio configuration and writes the
//! equivalent sipvane configuration.
//!
//! The work is sans-IO and split in stages: [`preprocess`] (comments, defines,
//! includes), [`kamailio_cfg`] (statements and route blocks), [`script`] (what
//! the route blocks do: calls and the conditions they run under), [`translate`]
//! (core parameters and modparams to a [`crate::config::Config`] plus the sections
//! sipvane does not have yet), [`routing`] (dispatcher sets, rules, failover codes,
//! RTPEngine flags from the route blocks) and [`render`] (TOML text). Only [`main`]
//! touches the file system.

pub mod kamailio_cfg;
pub mod lexer;
pub mod preprocess;
pub mod render;
pub mod routing;
pub mod script;
pub mod translate;

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use crate::cli::ImportKamailioArgs;

/// A message about a place in the Kamailio configuration: `FILE:LINE: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub file: String,
    /// 1-based; 0 when no line applies.
    pub line: u32,
    pub message: String,
}

impl Note {
    /// A note about line `line` of `file`.
    pub fn at(file: &str, line: u32, message: String) -> Note {
        Note {
            file: file.to_owned(),
            line,
            message,
        }
    }

    /// A note about a whole file.
    pub fn file(file: &str, message: String) -> Note {
        Note::at(file, 0, message)
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

/// The result of an import.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The sipvane configuration, TOML (warnings included as comments).
    pub toml: String,
    /// Everything that was not carried over.
    pub warnings: Vec<Note>,
}

/// Imports the Kamailio configuration `main`, reading it and the files it includes
/// through `load`. `defines` are `NAME[=VALUE]` pairs, as `kamailio -A`; `cwd`
/// makes relative paths written into the output absolute.
/// Errors are problems that stop the import (unreadable file, broken structure).
pub fn import(
    main: &Path,
    defines: &[(String, String)],
    cwd: &Path,
    load: &mut preprocess::Loader<'_>,
) -> Result<Imported, Vec<Note>> {
    let pre = preprocess::preprocess(main, defines, load)?;
    let mut warnings = pre.warnings;
    let cfg = kamailio_cfg::parse(&pre.source, &mut warnings)?;
    let mut out = translate::translate_static(&pre.source, &cfg, cwd);
    routing::apply(&mut out, &pre.source, &cfg);
    let mut found = std::mem::take(&mut out.warnings);
    // File order: line numbers of the main file first, included files where they are.
    found.sort_by_key(|n| (pre.source.files.iter().position(|f| *f == n.file), n.line));
    warnings.extend(found);
    let main_name = pre.source.files.first().cloned().unwrap_or_default();
    let toml = render::render(&mut out, &mut warnings, &main_name);
    Ok(Imported { toml, warnings })
}

/// Splits `NAME=VALUE` (or `NAME`, defined empty).
pub fn parse_define(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').unwrap_or((s, ""));
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok((name.to_owned(), value.to_owned()))
    } else {
        Err(format!("{s:?} is not NAME or NAME=VALUE"))
    }
}

/// Runs `sipvane import-kamailio`: TOML on stdout, each warning also on stderr.
pub fn main(args: &ImportKamailioArgs) -> ExitCode {
    const ME: &str = "sipvane import-kamailio";
    let mut load = |p: &Path| std::fs::read_to_string(p);
    let cwd = std::env::current_dir().unwrap_or_default();
    match import(&args.file, &args.define, &cwd, &mut load) {
        Ok(out) => {
            for w in &out.warnings {
                eprintln!("{ME}: {}", with_severity(w, "warning"));
            }
            print!("{}", out.toml);
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{ME}: {}", with_severity(e, "error"));
            }
            ExitCode::FAILURE
        }
    }
}

/// `FILE:LINE: SEVERITY: message`.
fn with_severity(n: &Note, severity: &str) -> String {
    Note {
        message: format!("{severity}: {}", n.message),
        ..n.clone()
    }
    .to_string()
}
