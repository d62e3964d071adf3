//! Kamailio's configuration preprocessor, without I/O: comments (`#`, `//`,
//! `/* */`), `#!define` / `#!trydef` / `#!redefine` / `#!undef`, `#!ifdef` /
//! `#!ifndef` / `#!else` / `#!endif`, literal `#!subst` / `#!substdef`, and
//! `include_file` / `import_file`. The result is the list of active lines, each
//! with the file and line it came from, and defines already substituted.
//!
//! Files are read through a caller-supplied loader, so tests run on in-memory
//! files and the parser never touches the file system itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Note;

/// Reads a file (the CLI passes `std::fs::read_to_string`).
pub type Loader<'a> = dyn FnMut(&Path) -> std::io::Result<String> + 'a;

/// Include nesting beyond this is reported as an error (Kamailio's limit is 10).
const MAX_INCLUDE_DEPTH: usize = 16;
/// Rounds of define substitution on one line (defines may use defines).
const MAX_EXPANSIONS: usize = 16;
/// A line that grows beyond this while defines are substituted is left as it was.
const MAX_EXPANDED_LINE: usize = 64 * 1024;

/// One active line after preprocessing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Index into [`Source::files`].
    pub file: usize,
    /// 1-based line number in that file.
    pub line: u32,
    /// Text with comments removed and defines substituted.
    pub text: String,
}

/// The preprocessed configuration.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// File names as displayed in messages (the main file first).
    pub files: Vec<String>,
    /// Active lines, in reading order (included files spliced in place).
    pub lines: Vec<Line>,
}

impl Source {
    /// `Note` at line `idx` of [`Source::lines`].
    pub fn note(&self, idx: usize, message: String) -> Note {
        match self.lines.get(idx) {
            Some(l) => Note::at(&self.files[l.file], l.line, message),
            None => Note::at(self.files.first().map_or("", String::as_str), 0, message),
        }
    }
}

/// Preprocessing output: the source and its warnings, or every error found.
pub struct Preprocessed {
    pub source: Source,
    pub warnings: Vec<Note>,
}

/// Preprocesses `main` with `defines` (as `kamailio -A NAME[=VALUE]`).
pub fn preprocess(
    main: &Path,
    defines: &[(String, String)],
    load: &mut Loader<'_>,
) -> Result<Preprocessed, Vec<Note>> {
    let mut pp = Pp {
        load,
        src: Source::default(),
        warnings: Vec::new(),
        errors: Vec::new(),
        defines: defines.iter().cloned().collect(),
        substs: Vec::new(),
        conds: Vec::new(),
    };
    pp.file(main, 0);
    if pp.errors.is_empty() {
        Ok(Preprocessed {
            source: pp.src,
            warnings: pp.warnings,
        })
    } else {
        Err(pp.errors)
    }
}

struct Frame {
    /// The current branch is taken.
    taking: bool,
    /// The enclosing lines are active.
    parent: bool,
    else_seen: bool,
    file: usize,
    line: u32,
}

struct Pp<'l, 'a> {
    load: &'l mut Loader<'a>,
    src: Source,
    warnings: Vec<Note>,
    errors: Vec<Note>,
    defines: HashMap<String, String>,
    /// Literal `#!subst` replacements applied to every later line.
    substs: Vec<(String, String)>,
    conds: Vec<Frame>,
}

impl Pp<'_, '_> {
    fn active(&self) -> bool {
        self.conds.last().is_none_or(|f| f.taking && f.parent)
    }

    /// Reads and processes one file, included `depth` deep (0: the main file).
    /// Returns false if the file could not be read.
    fn file(&mut self, path: &Path, depth: usize) -> bool {
        let name = path.display().to_string();
        let text = match (self.load)(path) {
            Ok(t) => t,
            Err(e) => {
                if depth == 0 {
                    self.errors
                        .push(Note::file(&name, format!("cannot read {name}: {e}")));
                }
                return false;
            }
        };
        let fid = self.src.files.len();
        self.src.files.push(name.clone());
        let lines = match strip_comments(&text) {
            Ok(l) => l,
            Err(line) => {
                self.errors
                    .push(Note::at(&name, line, "unterminated /* comment".into()));
                return true;
            }
        };
        let depth_at_start = self.conds.len();
        let mut i = 0;
        while i < lines.len() {
            let lineno = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let mut text = lines[i].clone();
            i += 1;
            let trimmed = text.trim_start();
            if let Some(rest) = trimmed
                .strip_prefix("#!")
                .or_else(|| trimmed.strip_prefix("!!"))
            {
                let mut directive = rest.to_owned();
                // A directive continues on the next line after a trailing backslash.
                while directive.trim_end().ends_with('\\') && i < lines.len() {
                    let cut = directive.trim_end().len() - 1;
                    directive.truncate(cut);
                    directive.push(' ');
                    directive.push_str(lines[i].trim());
                    i += 1;
                }
                self.directive(fid, lineno, &directive, path, depth);
                continue;
            }
            if !self.active() {
                continue;
            }
            for (from, to) in &self.substs {
                if text.contains(from.as_str()) {
                    text = text.replace(from.as_str(), to);
                }
            }
            let text = expand(&text, &self.defines);
            if let Some((kind, arg)) = include_statement(&text) {
                self.include(fid, lineno, kind, &arg, path, depth);
                continue;
            }
            self.src.lines.push(Line {
                file: fid,
                line: lineno,
                text,
            });
        }
        if self.conds.len() > depth_at_start {
            for f in self.conds.drain(depth_at_start..) {
                let file = self.src.files[f.file].clone();
                self.errors.push(Note::at(
                    &file,
                    f.line,
                    "#!ifdef / #!ifndef without #!endif".into(),
                ));
            }
        }
        true
    }

    fn directive(&mut self, fid: usize, line: u32, text: &str, path: &Path, depth: usize) {
        let file = self.src.files[fid].clone();
        let text = text.trim();
        let (name, arg) = text
            .split_once(|c: char| c.is_whitespace())
            .map_or((text, ""), |(n, a)| (n, a.trim()));
        let active = self.active();
        match name {
            "ifdef" | "ifndef" => {
                let defined = self.defines.contains_key(first_word(arg));
                self.conds.push(Frame {
                    taking: defined == (name == "ifdef"),
                    parent: active,
                    else_seen: false,
                    file: fid,
                    line,
                });
            }
            "ifexp" => {
                // An expression Kamailio evaluates: read the #!else branch, if any.
                if active {
                    self.warnings.push(Note::at(
                        &file,
                        line,
                        format!("#!ifexp {arg} is not evaluated; taken as false"),
                    ));
                }
                self.conds.push(Frame {
                    taking: false,
                    parent: active,
                    else_seen: false,
                    file: fid,
                    line,
                });
            }
            "else" => match self.conds.last_mut() {
                Some(f) if !f.else_seen => {
                    f.taking = !f.taking;
                    f.else_seen = true;
                }
                Some(_) => self.errors.push(Note::at(
                    &file,
                    line,
                    "second #!else for one #!ifdef".into(),
                )),
                None => self
                    .errors
                    .push(Note::at(&file, line, "#!else without #!ifdef".into())),
            },
            "endif" => {
                if self.conds.pop().is_none() {
                    self.errors
                        .push(Note::at(&file, line, "#!endif without #!ifdef".into()));
                }
            }
            _ if !active => {}
            "define" | "trydef" | "redefine" => {
                let id = first_word(arg);
                if !is_ident(id) {
                    self.warnings.push(Note::at(
                        &file,
                        line,
                        format!("#!{name} {arg}: not a simple define; ignored"),
                    ));
                    return;
                }
                let value = arg[id.len()..].trim().to_owned();
                match (name, self.defines.contains_key(id)) {
                    ("trydef", true) => {}
                    ("define", true) => {
                        self.warnings.push(Note::at(
                            &file,
                            line,
                            format!("{id} is already defined (Kamailio refuses a second #!define; use #!redefine); the new value is used"),
                        ));
                        self.defines.insert(id.to_owned(), value);
                    }
                    _ => {
                        self.defines.insert(id.to_owned(), value);
                    }
                }
            }
            "undef" => {
                self.defines.remove(first_word(arg));
            }
            "subst" | "substdef" | "substdefs" => self.subst(&file, line, name, arg),
            "include_file" | "import_file" => {
                let arg = expand(arg, &self.defines);
                self.include(fid, line, name, &arg, path, depth);
            }
            "KAMAILIO" | "SER" | "OPENSER" | "ALL" | "MAXCOMPAT" => {}
            _ => self.warnings.push(Note::at(
                &file,
                line,
                format!("preprocessor directive #!{name} is not supported; ignored"),
            )),
        }
    }

    /// `#!subst "/ID/value/flags"`: only literal patterns (Kamailio takes a regex).
    fn subst(&mut self, file: &str, line: u32, name: &str, arg: &str) {
        let body = unquote(arg.trim()).unwrap_or(arg.trim());
        let mut chars = body.chars();
        let parts: Vec<&str> = match chars.next() {
            Some(delim) => chars.as_str().split(delim).collect(),
            None => Vec::new(),
        };
        let (Some(from), Some(to)) = (parts.first(), parts.get(1)) else {
            self.warnings.push(Note::at(
                file,
                line,
                format!("#!{name} {arg}: expected \"/ID/value/\"; ignored"),
            ));
            return;
        };
        if from.is_empty()
            || !from
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.warnings.push(Note::at(
                file,
                line,
                format!("#!{name} with the regular expression {from:?} is not supported (only literal words); ignored"),
            ));
            return;
        }
        self.substs.push(((*from).to_owned(), (*to).to_owned()));
        match name {
            "substdef" => {
                self.defines.insert((*from).to_owned(), (*to).to_owned());
            }
            "substdefs" => {
                self.defines.insert((*from).to_owned(), format!("\"{to}\""));
            }
            _ => {}
        }
    }

    fn include(&mut self, fid: usize, line: u32, kind: &str, arg: &str, path: &Path, depth: usize) {
        let file = self.src.files[fid].clone();
        let Some(target) = unquote(arg.trim()) else {
            self.errors.push(Note::at(
                &file,
                line,
                format!("{kind} needs a quoted file name (got {arg})"),
            ));
            return;
        };
        if depth + 1 > MAX_INCLUDE_DEPTH {
            self.errors.push(Note::at(
                &file,
                line,
                format!("{kind} {target:?}: files included more than {MAX_INCLUDE_DEPTH} deep (an include loop?)"),
            ));
            return;
        }
        let resolved = resolve(path, target);
        if !self.file(&resolved, depth + 1) {
            let extra = if kind.ends_with("import_file") {
                " (Kamailio skips a missing import_file silently)"
            } else {
                ""
            };
            self.warnings.push(Note::at(
                &file,
                line,
                format!(
                    "{kind} {target:?}: cannot read {}; its content is not imported{extra}",
                    resolved.display()
                ),
            ));
        }
    }
}

/// A relative path is taken relative to the directory of the file naming it.
pub fn resolve(from_file: &Path, target: &str) -> PathBuf {
    let t = Path::new(target);
    if t.is_absolute() {
        t.to_path_buf()
    } else {
        from_file.parent().unwrap_or(Path::new("")).join(t)
    }
}

/// `include_file "x"` / `import_file "x"` as a statement line.
fn include_statement(text: &str) -> Option<(&'static str, String)> {
    let t = text.trim();
    for kind in ["include_file", "import_file"] {
        if let Some(rest) = t.strip_prefix(kind) {
            if rest.starts_with(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                let arg = rest.trim().trim_end_matches(';').trim_end();
                return Some((kind, arg.to_owned()));
            }
        }
    }
    None
}

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or("")
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The text between matching quotes, if `s` is exactly one quoted string.
pub fn unquote(s: &str) -> Option<&str> {
    let q = s.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = s.get(1..)?.strip_suffix(q)?;
    Some(inner)
}

/// Removes comments, keeping one output line per input line. `Err(line)` for a `/*`
/// never closed. Directive lines (`#!…`, `!!…`) lose only `//` and `/* */` comments.
fn strip_comments(text: &str) -> Result<Vec<String>, u32> {
    let mut out = Vec::new();
    let mut block_start: Option<u32> = None;
    for (n, raw) in text.lines().enumerate() {
        let lineno = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let mut line = String::with_capacity(raw.len());
        let mut chars = raw.char_indices().peekable();
        let lead = raw.trim_start();
        let directive = block_start.is_none() && (lead.starts_with("#!") || lead.starts_with("!!"));
        let mut quote: Option<char> = None;
        while let Some((i, c)) = chars.next() {
            if block_start.is_some() {
                if c == '*' && chars.peek().is_some_and(|&(_, d)| d == '/') {
                    chars.next();
                    block_start = None;
                    line.push(' ');
                }
                continue;
            }
            if let Some(q) = quote {
                line.push(c);
                if c == '\\' {
                    if let Some((_, d)) = chars.next() {
                        line.push(d);
                    }
                } else if c == q {
                    quote = None;
                }
                continue;
            }
            let next = chars.peek().map(|&(_, d)| d);
            match c {
                '"' | '\'' => {
                    quote = Some(c);
                    line.push(c);
                }
                '#' if !(directive && raw[..i].trim().is_empty()) => break,
                '/' if next == Some('/') => break,
                '/' if next == Some('*') => {
                    chars.next();
                    block_start = Some(lineno);
                }
                _ => line.push(c),
            }
        }
        out.push(line);
    }
    match block_start {
        Some(line) => Err(line),
        None => Ok(out),
    }
}

/// Substitutes defined identifiers outside strings (not pseudo-variable names).
fn expand(text: &str, defines: &HashMap<String, String>) -> String {
    if defines.is_empty() {
        return text.to_owned();
    }
    let mut cur = text.to_owned();
    for _ in 0..MAX_EXPANSIONS {
        let (next, changed) = expand_once(&cur, defines);
        // Defines that double at every round stop growing here.
        if !changed || next.len() > MAX_EXPANDED_LINE {
            return if next.len() > MAX_EXPANDED_LINE {
                cur
            } else {
                next
            };
        }
        cur = next;
    }
    cur
}

fn expand_once(text: &str, defines: &HashMap<String, String>) -> (String, bool) {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut quote: Option<char> = None;
    let mut prev: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' {
                if let Some((_, d)) = chars.next() {
                    out.push(d);
                }
            } else if c == q {
                quote = None;
            }
            prev = Some(c);
            continue;
        }
        if c == '"' || c == '\'' {
            quote = Some(c);
            out.push(c);
            prev = Some(c);
            continue;
        }
        let starts_word = (c.is_ascii_alphabetic() || c == '_')
            && !prev.is_some_and(|p| p.is_ascii_alphanumeric() || p == '_' || p == '$');
        if starts_word {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &text[i..end];
            match defines.get(word) {
                Some(v) => {
                    out.push_str(v);
                    changed = true;
                }
                None => out.push_str(word),
            }
            prev = word.chars().last();
            continue;
        }
        out.push(c);
        prev = Some(c);
    }
    (out, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(files: &[(&str, &str)], defines: &[(&str, &str)]) -> Result<Preprocessed, Vec<Note>> {
        let map: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect();
        let mut load = |p: &Path| {
            map.get(p)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let defs: Vec<(String, String)> = defines
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        preprocess(Path::new(files[0].0), &defs, &mut load)
    }

    fn texts(p: &Preprocessed) -> Vec<(u32, &str)> {
        p.source
            .lines
            .iter()
            .filter(|l| !l.text.trim().is_empty())
            .map(|l| (l.line, l.text.trim()))
            .collect()
    }

    #[test]
    fn comments_of_every_kind() {
        let p = run(
            &[(
                "k.cfg",
                "a=1 # c\nb=\"x#y//z\" // c\n/* one\ntwo */ c=3 /* x */ d=4\n#!define X 1\n",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(
            texts(&p),
            vec![(1, "a=1"), (2, "b=\"x#y//z\""), (4, "c=3   d=4")]
        );
    }

    #[test]
    fn defines_and_conditionals() {
        let p = run(
            &[(
                "k.cfg",
                "#!define WITH_A\n#!ifdef WITH_A\n#!define URL \"mysql://a\"\n#!else\n#!define URL \"pg\"\n#!endif\n\
                 #!ifndef WITH_B\nx(URL, $URL, \"URL\")\n#!endif\n#!trydef N 1\n#!trydef N 2\nn=N\n",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(
            texts(&p),
            vec![(8, "x(\"mysql://a\", $URL, \"URL\")"), (12, "n=1")]
        );
    }

    #[test]
    fn command_line_defines_win_over_trydef() {
        let p = run(
            &[("k.cfg", "#!ifexp A > 1\nx=1\n#!else\ny=2\n#!endif\n")],
            &[],
        )
        .unwrap();
        assert_eq!(texts(&p), vec![(4, "y=2")]);
        assert!(p.warnings[0]
            .to_string()
            .starts_with("k.cfg:1: #!ifexp A > 1 is not evaluated"));
        let p = run(
            &[("k.cfg", "#!trydef DS \"/etc/d.list\"\nl=DS\n")],
            &[("DS", "\"/tmp/d.list\"")],
        )
        .unwrap();
        assert_eq!(texts(&p), vec![(2, "l=\"/tmp/d.list\"")]);
    }

    #[test]
    fn substdef_replaces_inside_strings_too() {
        let p = run(
            &[(
                "k.cfg",
                "#!substdef \"!MY_IP!10.0.0.1!g\"\nlisten=udp:MY_IP:5060\nx(\"sip:MY_IP\")\n",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(
            texts(&p),
            vec![(2, "listen=udp:10.0.0.1:5060"), (3, "x(\"sip:10.0.0.1\")")]
        );
    }

    #[test]
    fn includes_keep_their_own_line_numbers() {
        let p = run(
            &[
                (
                    "/c/k.cfg",
                    "a=1\ninclude_file \"sub.cfg\"\nimport_file \"none.cfg\"\nb=2\n",
                ),
                ("/c/sub.cfg", "\ns=1\n"),
            ],
            &[],
        )
        .unwrap();
        let got: Vec<(usize, u32)> = p
            .source
            .lines
            .iter()
            .filter(|l| !l.text.is_empty())
            .map(|l| (l.file, l.line))
            .collect();
        assert_eq!(got, vec![(0, 1), (1, 2), (0, 4)]);
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0]
            .to_string()
            .starts_with("/c/k.cfg:3: import_file \"none.cfg\": cannot read /c/none.cfg"));
    }

    #[test]
    fn structural_errors_carry_file_and_line() {
        let e = run(&[("k.cfg", "#!ifdef X\na=1\n")], &[]).err().unwrap();
        assert_eq!(
            e[0].to_string(),
            "k.cfg:1: #!ifdef / #!ifndef without #!endif"
        );
        let e = run(&[("k.cfg", "a=1\n#!endif\n")], &[]).err().unwrap();
        assert_eq!(e[0].to_string(), "k.cfg:2: #!endif without #!ifdef");
        let e = run(&[("k.cfg", "a=1\n/* open\n")], &[]).err().unwrap();
        assert_eq!(e[0].to_string(), "k.cfg:2: unterminated /* comment");
        let e = run(&[("/k.cfg", "include_file \"k.cfg\"\n")], &[])
            .err()
            .unwrap();
        assert!(e[0].to_string().contains("more than 16 deep"), "{e:?}");
        let e = run(&[("k.cfg", "x")], &[]).map(|_| ()).err();
        assert!(e.is_none());
    }
}
