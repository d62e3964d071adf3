//! Loading and diagnostics: TOML syntax, deserialisation retried past each bad
//! key, and every problem turned into one `FILE:LINE: problem` line.

use super::*;

/// One step of a key path: `dispatcher.rules[1].prefix` is
/// `[Key("dispatcher"), Key("rules"), Index(1), Key("prefix")]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSeg {
    /// A table key.
    Key(String),
    /// An array element (0-based).
    Index(usize),
}

pub(super) fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_owned())
}

/// A validation problem: which key, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key the problem is about (used to find its line).
    pub path: Vec<PathSeg>,
    /// What is wrong, as a sentence fragment without location, e.g.
    /// `listen port must not be 0`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A located problem, printed as `FILE:LINE: message` (or `FILE: message` when no line
/// applies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// File name as given by the user.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found while loading a configuration file (at least one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// One entry per problem, in file order within each stage.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// Upper bound on deserialisation retries, so a pathological file cannot loop for long.
pub(super) const MAX_DESER_ERRORS: usize = 64;

impl Config {
    /// Reads, parses and validates a configuration file. Diagnostics name the file as
    /// `path` is displayed.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml_str(&text, &file),
            Err(e) => Err(ConfigError {
                diagnostics: vec![Diagnostic {
                    file,
                    line: None,
                    message: format!("cannot read configuration file: {e}"),
                }],
            }),
        }
    }

    /// Parses and validates configuration text; `file` is the name used in diagnostics.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        let diag = |line: Option<usize>, message: String| Diagnostic {
            file: file.to_owned(),
            line,
            message,
        };
        let doc = match ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let line = e.span().map(|s| line_of(text, s.start));
                let message = format!("invalid TOML: {}", one_line(e.message()));
                return Err(ConfigError {
                    diagnostics: vec![diag(line, message)],
                });
            }
        };

        let mut diagnostics = Vec::new();
        let mut working = text.to_owned();
        let mut config = None;
        for _ in 0..MAX_DESER_ERRORS {
            let err = match toml::from_str::<Config>(&working) {
                Ok(c) => {
                    config = Some(c);
                    break;
                }
                Err(e) => e,
            };
            let Some(span) = err.span() else {
                diagnostics.push(diag(None, one_line(err.message())));
                break;
            };
            let hit = find_at(doc.as_table(), span.start);
            diagnostics.push(diag(
                Some(line_of(text, span.start)),
                describe_de_error(err.message(), &hit.path, hit.is_table),
            ));
            let blank = hit.extent.unwrap_or(span);
            if !blank_lines(&mut working, blank) {
                break;
            }
        }

        // Validation of a config whose bad keys were blanked still finds the problems
        // in the keys that remain. Keys are located in the blanked text: blanking a
        // `[[table]]` shifts the indexes of the ones after it, but no offsets.
        if let Some(cfg) = &config {
            let problems = cfg.validate();
            if !problems.is_empty() {
                let blanked = ImDocument::parse(working.as_str()).ok();
                let root = blanked.as_ref().map_or(doc.as_table(), |d| d.as_table());
                for p in problems {
                    let line = locate(root, &p.path).map(|pos| line_of(text, pos));
                    diagnostics.push(diag(line, p.message));
                }
            }
        }
        diagnostics.sort_by_key(|d| d.line);
        match config {
            Some(cfg) if diagnostics.is_empty() => Ok(cfg),
            _ => Err(ConfigError { diagnostics }),
        }
    }

    /// The configuration as TOML (what `sipvane run --print-config` prints); loading it
    /// back gives an equal `Config`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}

// ---------------------------------------------------------------------------------------
// Locating keys in the document
// ---------------------------------------------------------------------------------------

/// 1-based line of byte offset `pos`.
pub(super) fn line_of(text: &str, pos: usize) -> usize {
    1 + text.bytes().take(pos).filter(|&b| b == b'\n').count()
}

pub(super) fn one_line(msg: &str) -> String {
    msg.trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn contains(span: &Range<usize>, pos: usize) -> bool {
    span.start <= pos && pos < span.end.max(span.start + 1)
}

/// What sits at a byte offset of the document.
#[derive(Default)]
pub(super) struct Hit {
    /// Key path of the innermost key or value there.
    path: Vec<PathSeg>,
    /// Byte range of the table-level entry around it (a `key = value` line or a whole
    /// `[table]`), which is what gets blanked to look for further errors.
    extent: Option<Range<usize>>,
    /// Whether the innermost item is a table (for "unknown section" wording).
    is_table: bool,
}

pub(super) fn find_at(root: &Table, pos: usize) -> Hit {
    let mut hit = Hit::default();
    find_in_table(root, pos, None, &mut hit);
    hit
}

/// Byte range from a table's header to the end of its last entry.
pub(super) fn table_extent(t: &Table) -> Option<Range<usize>> {
    let mut ext = t.span()?;
    for (_, item) in t.iter() {
        let end = match item {
            Item::Value(v) => v.span().map(|s| s.end),
            Item::Table(sub) if sub.is_dotted() => {
                table_extent(sub).map(|s| s.end).or_else(|| dotted_end(sub))
            }
            _ => None,
        };
        if let Some(end) = end {
            ext.end = ext.end.max(end);
        }
    }
    Some(ext)
}

/// End of the last value under a dotted-key table (which has no span of its own).
pub(super) fn dotted_end(t: &Table) -> Option<usize> {
    t.iter()
        .filter_map(|(_, item)| match item {
            Item::Value(v) => v.span().map(|s| s.end),
            Item::Table(sub) => dotted_end(sub),
            _ => None,
        })
        .max()
}

/// Finds `pos` under `table`; `dotted_start` is the start of the first key of a dotted
/// key (`proxy.listen = …`) whose inner tables are being searched.
pub(super) fn find_in_table(
    table: &Table,
    pos: usize,
    dotted_start: Option<usize>,
    hit: &mut Hit,
) -> bool {
    for (k, item) in table.iter() {
        let key_span = table.key(k).and_then(|k| k.span());
        match item {
            Item::Value(v) => {
                let (Some(ks), Some(vs)) = (key_span.clone(), v.span()) else {
                    continue;
                };
                let entry = dotted_start.unwrap_or(ks.start)..vs.end;
                if contains(&entry, pos) {
                    hit.path.push(key(k));
                    hit.extent = Some(entry);
                    hit.is_table = matches!(v, Value::InlineTable(_));
                    find_in_value(v, pos, hit);
                    return true;
                }
            }
            Item::Table(t) => {
                hit.path.push(key(k));
                let ds = if t.is_dotted() {
                    dotted_start.or(key_span.as_ref().map(|s| s.start))
                } else {
                    None
                };
                if find_in_table(t, pos, ds, hit) {
                    return true;
                }
                let on_header = t.span().is_some_and(|s| contains(&s, pos))
                    || key_span.as_ref().is_some_and(|s| contains(s, pos));
                if on_header {
                    hit.extent = table_extent(t);
                    hit.is_table = true;
                    return true;
                }
                hit.path.pop();
            }
            Item::ArrayOfTables(a) => {
                hit.path.push(key(k));
                if find_in_aot(a, pos, hit) {
                    return true;
                }
                hit.path.pop();
            }
            Item::None => {}
        }
    }
    false
}

pub(super) fn find_in_aot(a: &ArrayOfTables, pos: usize, hit: &mut Hit) -> bool {
    for (i, t) in a.iter().enumerate() {
        hit.path.push(PathSeg::Index(i));
        if find_in_table(t, pos, None, hit) {
            return true;
        }
        if t.span().is_some_and(|s| contains(&s, pos)) {
            hit.extent = table_extent(t);
            hit.is_table = true;
            return true;
        }
        hit.path.pop();
    }
    false
}

pub(super) fn find_in_value(v: &Value, pos: usize, hit: &mut Hit) {
    match v {
        Value::Array(arr) => {
            for (i, e) in arr.iter().enumerate() {
                if e.span().is_some_and(|s| contains(&s, pos)) {
                    hit.path.push(PathSeg::Index(i));
                    hit.is_table = matches!(e, Value::InlineTable(_));
                    find_in_value(e, pos, hit);
                    return;
                }
            }
        }
        Value::InlineTable(t) => {
            for (k, val) in t.iter() {
                let Some(ks) = t.key(k).and_then(|k| k.span()) else {
                    continue;
                };
                let end = val.span().map_or(ks.end, |s| s.end);
                if contains(&(ks.start..end), pos) {
                    hit.path.push(key(k));
                    hit.is_table = matches!(val, Value::InlineTable(_));
                    find_in_value(val, pos, hit);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Byte offset where `path` (or the deepest written part of it) appears: the key for
/// table entries, the element for array entries, the header for `[[tables]]`.
pub(super) fn locate(root: &Table, path: &[PathSeg]) -> Option<usize> {
    enum Node<'a> {
        Table(&'a Table),
        Aot(&'a ArrayOfTables),
        Value(&'a Value),
    }
    fn node(item: &Item) -> Option<Node<'_>> {
        match item {
            Item::Table(t) => Some(Node::Table(t)),
            Item::ArrayOfTables(a) => Some(Node::Aot(a)),
            Item::Value(v) => Some(Node::Value(v)),
            Item::None => None,
        }
    }
    let mut best = None;
    let mut cur = Node::Table(root);
    for seg in path {
        let next = match (&cur, seg) {
            (Node::Table(t), PathSeg::Key(k)) => t.get_key_value(k).and_then(|(kk, item)| {
                best = kk.span().map(|s| s.start).or(best);
                node(item)
            }),
            (Node::Value(Value::InlineTable(t)), PathSeg::Key(k)) => {
                t.get_key_value(k).and_then(|(kk, item)| {
                    best = kk.span().map(|s| s.start).or(best);
                    node(item)
                })
            }
            (Node::Aot(a), PathSeg::Index(i)) => a.get(*i).map(|t| {
                best = t.span().map(|s| s.start).or(best);
                Node::Table(t)
            }),
            (Node::Value(Value::Array(arr)), PathSeg::Index(i)) => arr.get(*i).map(|v| {
                best = v.span().map(|s| s.start).or(best);
                Node::Value(v)
            }),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    best
}

/// Replaces every line touched by `range` with spaces (newlines kept, so offsets and
/// line numbers stay valid). Returns false if there was nothing left to blank.
pub(super) fn blank_lines(text: &mut String, range: Range<usize>) -> bool {
    let bytes = text.as_bytes();
    let len = bytes.len();
    let start = range.start.min(len);
    let end = range.end.clamp(start, len);
    let line_start = bytes[..start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let line_end = bytes[end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(len, |p| end + p);
    let mut out = bytes.to_vec();
    let mut changed = false;
    for b in &mut out[line_start..line_end] {
        if !matches!(*b, b'\n' | b'\r' | b' ') {
            *b = b' ';
            changed = true;
        }
    }
    // Only whole lines of a valid UTF-8 string were replaced by ASCII: still UTF-8.
    match String::from_utf8(out) {
        Ok(s) if changed => {
            *text = s;
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Wording of deserialisation errors
// ---------------------------------------------------------------------------------------

/// Backtick-quoted words in `s`, e.g. the field list of serde's "expected one of `a`, `b`".
pub(super) fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// `[proxy]`, `[[dispatcher.rules]]`, … for the table at `path`.
pub(super) fn table_name(path: &[PathSeg]) -> String {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            PathSeg::Key(k) => Some(k.as_str()),
            PathSeg::Index(_) => None,
        })
        .collect();
    if matches!(path.last(), Some(PathSeg::Index(_))) {
        format!("[[{}]]", keys.join("."))
    } else {
        format!("[{}]", keys.join("."))
    }
}

/// How a key is named in messages: relative to its section (`workers`,
/// `failover_codes[1]`, `rules[0].set`); a section by its own name.
pub(super) fn key_name(path: &[PathSeg]) -> String {
    let rel = if path.len() > 1 { &path[1..] } else { path };
    let mut s = String::new();
    for seg in rel {
        match seg {
            PathSeg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

pub(super) fn pretty_expected(ty: &str) -> String {
    let ty = ty.trim();
    match ty {
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" => "an integer from 0 to 4294967295".into(),
        "u64" | "usize" => "a non-negative integer".into(),
        "i64" | "i32" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        _ if ty.starts_with("struct ") || ty == "a map" => "a table".into(),
        _ => ty.to_owned(),
    }
}

pub(super) fn pretty_got(what: &str) -> String {
    let what = what.trim();
    if let Some(s) = what.strip_prefix("string ") {
        return s.to_owned();
    }
    if let Some(v) = backticked(what).first() {
        return (*v).to_owned();
    }
    match what {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        _ => what.to_owned(),
    }
}

pub(super) const SECTIONS: &str =
    "proxy, dispatcher, rtpengine, events, acc, hep, mgmt, log, security, registrar, tcp, tls";

/// Rewords a serde/toml deserialisation message for the key at `path`.
pub(super) fn describe_de_error(msg: &str, path: &[PathSeg], is_table: bool) -> String {
    let msg = one_line(msg);
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let words = backticked(rest);
        let name = words.first().copied().unwrap_or("?");
        let expected = words.get(1..).unwrap_or(&[]).join(", ");
        let parent = match path.last() {
            Some(PathSeg::Key(k)) if k == name => &path[..path.len() - 1],
            _ => path,
        };
        return if parent.is_empty() {
            if is_table {
                format!("unknown section [{name}]; expected one of {SECTIONS}")
            } else {
                format!(
                    "unknown key \"{name}\" outside any section; expected a section: {SECTIONS}"
                )
            }
        } else if expected.is_empty() {
            format!("unknown key \"{name}\" in {}", table_name(parent))
        } else {
            format!(
                "unknown key \"{name}\" in {}; expected one of {expected}",
                table_name(parent)
            )
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let name = backticked(rest).first().copied().unwrap_or("?").to_owned();
        return format!("{} is missing required key \"{name}\"", table_name(path));
    }
    let name = key_name(path);
    if name.is_empty() {
        return msg;
    }
    if msg.starts_with("must ") {
        return format!("{name} {msg}");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((got, ty)) = rest.rsplit_once(", expected ") {
                return format!(
                    "{name} must be {} (got {})",
                    pretty_expected(ty),
                    pretty_got(got)
                );
            }
        }
    }
    format!("{name}: {msg}")
}
