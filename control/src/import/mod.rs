//! `sipvane import-kamailio`: reads a Kamailio configuration and writes the
//! equivalent sipvane configuration.
//!
//! The work is sans-IO and split in stages: [`preprocess`] (comments, defines,
//! includes), [`kamailio_cfg`] (statements and route blocks), [`script`] (what
//! the route blocks do: calls and the conditions they run under), [`translate`]
//! (core parameters and modparams to a [`crate::config::Config`], with
//! [`registrar`] for the registrar, auth and acc modules), [`routing`]
//! (dispatcher sets, rules, failover codes, RTPEngine flags, the registrar's
//! realm, tables and prefixes from the route blocks) and [`render`] (TOML text). Only [`main`]
//! touches the file system.

pub mod kamailio_cfg;
pub mod lexer;
pub mod preprocess;
pub mod registrar;
pub mod render;
pub mod routing;
pub mod script;
pub mod translate;

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use crate::cli::ImportKamailioArgs;

/// A message about a place in the Kamailio configuration: `FILE:LINE: message`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    // A call reached along several route(…) paths is reported once.
    let mut seen = std::collections::HashSet::new();
    warnings.retain(|n| seen.insert(n.clone()));
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

/// Stack of the import thread.
const STACK: usize = 64 * 1024 * 1024;

/// Runs `sipvane import-kamailio`: TOML on stdout, each warning also on stderr.
pub fn main(args: &ImportKamailioArgs) -> ExitCode {
    const ME: &str = "sipvane import-kamailio";
    // Comments in Latin-1 (or any other bytes) must not stop an import.
    let mut load = |p: &Path| std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned());
    let cwd = std::env::current_dir().unwrap_or_default();
    // Deeply nested route blocks recurse; give the parser room beyond the main
    // thread's stack.
    let result = std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn_scoped(s, || import(&args.file, &args.define, &cwd, &mut load))
            .map(|h| h.join())
    });
    let result = match result {
        Ok(Ok(r)) => r,
        _ => Err(vec![Note::file(
            &args.file.display().to_string(),
            "internal error while importing".into(),
        )]),
    };
    match result {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Imports `text` as `/k/k.cfg` (its includes resolve to `/k/inc.cfg` = `inc`).
    fn run(text: &str, inc: &str) -> Result<Imported, Vec<Note>> {
        let mut load = |p: &Path| match p.to_str() {
            Some("/k/k.cfg") => Ok(text.to_owned()),
            Some("/k/inc.cfg") => Ok(inc.to_owned()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        import(Path::new("/k/k.cfg"), &[], Path::new("/"), &mut load)
    }

    /// Fragments of Kamailio syntax, shuffled: never a panic, and every import that
    /// succeeds prints TOML that sipvane loads.
    #[test]
    fn shuffled_fragments_never_panic() {
        const PARTS: &[&str] = &[
            "if",
            "(",
            ")",
            "{",
            "}",
            "else",
            ";",
            "\n",
            "\"",
            "'",
            "#!ifdef X\n",
            "#!ifndef Y\n",
            "#!else\n",
            "#!endif\n",
            "#!define X 1\n",
            "#!substdef \"!IP!1.2.3.4!\"\n",
            "/*",
            "*/",
            "//",
            "#",
            "$rU",
            "$(rU{s.substr,0,2})",
            "$rd",
            "=~",
            "==",
            "!",
            "&&",
            "||",
            "\"^44\"",
            "\"pbx.example.com\"",
            "ds_select_dst(\"1\", \"4\")",
            "ds_select_dst(\"2\", \"9\", \"3\")",
            "ds_next_dst()",
            "t_check_status(\"5..|408\")",
            "route(A)",
            "route[A]",
            "request_route",
            "failure_route[F]",
            "modparam(\"dispatcher\", \"list_file\", \"d.list\")\n",
            "modparam(\"tm\", \"fr_timer\", ",
            "modparam(\"rtpengine\", \"rtpengine_sock\", \"udp:1.2.3.4:1=0 udp:x\")\n",
            "loadmodule \"dispatcher.so\"\n",
            "loadmodule \"tm.so\"\n",
            "listen=udp:1.2.3.4:5060\n",
            "listen=",
            "port=0\n",
            "port=70000\n",
            "include_file \"inc.cfg\"\n",
            "rtpengine_manage(\"x=\")",
            "switch($rU) { case \"1\": break; default: exit; }",
            "123",
            "-",
            "é",
            "\\",
            "[",
            "]",
            "lookup(\"location\")",
            "auth_check(\"a b\", \"subscriber\", \"1\")",
            "x.y = 1\n",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut ok = 0;
        for _ in 0..10_000 {
            let n = (next() % 60) as usize;
            let text: String = (0..n)
                .map(|_| PARTS[(next() % PARTS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ");
            let inc: String = (0..(next() % 10) as usize)
                .map(|_| PARTS[(next() % PARTS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ");
            let r = run(&text, &inc);
            ok += usize::from(r.is_ok());
            if let Ok(out) = r {
                if let Err(e) = Config::from_toml_str(&out.toml, "out") {
                    panic!("{e}\ninput:\n{text}\noutput:\n{}", out.toml);
                }
            }
        }
        eprintln!("{ok} of 10000 imported");
        // The mix is not all broken input: a fair share gets through to the output.
        assert!(ok > 1000, "{ok}");
    }

    #[test]
    fn an_include_loop_is_an_error() {
        let e = run("include_file \"k.cfg\"\n", "").unwrap_err();
        assert!(
            e[0].to_string().starts_with("/k/k.cfg:1: include_file"),
            "{e:?}"
        );
    }
}
