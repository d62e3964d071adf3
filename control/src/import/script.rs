//! What the route blocks do, as far as sipvane can carry it over: every function
//! call is found together with the conditions it runs under (following
//! `route(NAME)` calls), and conditions on the Request-URI are recognised as a
//! user prefix or a domain when they are simple enough.

use std::collections::{BTreeSet, HashMap};

use super::kamailio_cfg::{calls, Call, Cfg, CondKind, Route, RouteKind, Stmt, Tok, Token, Val};

/// Stop collecting beyond this many call sites (a route called from very many places).
const MAX_SITES: usize = 100_000;
/// `route(X)` nesting followed at most this deep.
const MAX_ROUTE_DEPTH: usize = 64;

/// A condition a call runs under.
#[derive(Clone, Debug)]
pub struct CondCtx<'a> {
    pub toks: &'a [Token],
    /// The call is in the `else` branch.
    pub else_branch: bool,
    pub kind: CondKind,
    pub line: usize,
}

/// A function call and the conditions around it.
#[derive(Clone, Debug)]
pub struct Site<'a> {
    pub call: Call,
    pub conds: Vec<CondCtx<'a>>,
    /// The kind of route the walk started from.
    pub root: RouteKind,
}

/// Every call site, walking from the request routes, then the other entry routes,
/// then named routes nobody calls.
pub fn sites(cfg: &Cfg) -> Vec<Site<'_>> {
    let mut w = Walker {
        named: cfg
            .routes
            .iter()
            .filter(|r| r.kind == RouteKind::Named)
            .map(|r| (r.name.as_str(), r))
            .collect(),
        out: Vec::new(),
        visited: BTreeSet::new(),
        path: Vec::new(),
    };
    let order = [
        RouteKind::Request,
        RouteKind::Failure,
        RouteKind::Branch,
        RouteKind::Reply,
        RouteKind::Send,
        RouteKind::Event,
    ];
    for kind in order {
        for r in cfg.routes.iter().filter(|r| r.kind == kind) {
            w.walk(&r.body, &mut Vec::new(), kind);
        }
    }
    for r in cfg.routes.iter().filter(|r| r.kind == RouteKind::Named) {
        if !w.visited.contains(r.name.as_str()) {
            w.visited.insert(r.name.clone());
            w.path.push(r.name.clone());
            w.walk(&r.body, &mut Vec::new(), RouteKind::Named);
            w.path.pop();
        }
    }
    w.out
}

struct Walker<'a> {
    named: HashMap<&'a str, &'a Route>,
    out: Vec<Site<'a>>,
    visited: BTreeSet<String>,
    path: Vec<String>,
}

impl<'a> Walker<'a> {
    fn walk(&mut self, stmts: &'a [Stmt], ctx: &mut Vec<CondCtx<'a>>, root: RouteKind) {
        for s in stmts {
            if self.out.len() >= MAX_SITES {
                return;
            }
            match s {
                Stmt::Simple(toks) => {
                    for c in calls(toks) {
                        self.visit(c, ctx, root);
                    }
                }
                Stmt::Block(b) => self.walk(b, ctx, root),
                Stmt::Cond {
                    kind,
                    cond,
                    then,
                    els,
                    line,
                } => {
                    for c in calls(cond) {
                        self.visit(c, ctx, root);
                    }
                    ctx.push(CondCtx {
                        toks: cond,
                        else_branch: false,
                        kind: *kind,
                        line: *line,
                    });
                    self.walk(then, ctx, root);
                    ctx.pop();
                    if !els.is_empty() {
                        ctx.push(CondCtx {
                            toks: cond,
                            else_branch: true,
                            kind: *kind,
                            line: *line,
                        });
                        self.walk(els, ctx, root);
                        ctx.pop();
                    }
                }
            }
        }
    }

    fn visit(&mut self, call: Call, ctx: &mut Vec<CondCtx<'a>>, root: RouteKind) {
        let target = (call.name == "route")
            .then(|| call.args.first().map(Val::text))
            .flatten();
        self.out.push(Site {
            call,
            conds: ctx.clone(),
            root,
        });
        let Some(name) = target else { return };
        let Some(route) = self.named.get(name.as_str()).copied() else {
            return;
        };
        if self.path.contains(&name) || self.path.len() >= MAX_ROUTE_DEPTH {
            return;
        }
        self.visited.insert(name.clone());
        self.path.push(name);
        self.walk(&route.body, ctx, root);
        self.path.pop();
    }
}

/// What a condition tests, as far as sipvane's routing rules can express it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Test {
    /// Nothing about where the request goes (`is_method`, flags, …).
    Neutral,
    /// The Request-URI user starts with one of these; `exact` is false when the
    /// regular expression says more than "starts with" (`^44[0-9]{8}$`).
    Prefix { prefixes: Vec<String>, exact: bool },
    /// The Request-URI host is this.
    Domain(String),
    /// About the request's destination or source, but not in a form sipvane has.
    Unrecognised,
}

/// Where a call runs: everywhere, under a recognised test, or under a test
/// sipvane cannot express (at that line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Always,
    Only(Test),
    Unknown(usize),
}

/// The routing constraint the conditions of `site` put on it.
pub fn target(site: &Site<'_>) -> Target {
    let mut found: Option<Test> = None;
    for c in &site.conds {
        let test = if c.kind == CondKind::Switch {
            if mentions_routing(c.toks) {
                Test::Unrecognised
            } else {
                Test::Neutral
            }
        } else {
            classify(c.toks)
        };
        match (test, c.else_branch) {
            // The else branch of a test is what the rules before it let through: the
            // default set's traffic in sipvane. (An unrecognised test gets its warning
            // on its own branch.)
            (_, true) | (Test::Neutral, false) => {}
            (Test::Unrecognised, false) => return Target::Unknown(c.line),
            (t, false) => {
                if found.is_some() {
                    return Target::Unknown(c.line);
                }
                found = Some(t);
            }
        }
    }
    found.map_or(Target::Always, Target::Only)
}

/// Parentheses and `!` nested deeper than this in one condition are not looked into.
const MAX_COND_DEPTH: usize = 64;

/// Classifies a condition (the tokens between `if (` and `)`).
pub fn classify(toks: &[Token]) -> Test {
    classify_at(toks, 0)
}

fn classify_at(toks: &[Token], depth: usize) -> Test {
    if depth > MAX_COND_DEPTH {
        return Test::Unrecognised;
    }
    let classify = |t: &[Token]| classify_at(t, depth + 1);
    let toks = strip_parens(toks);
    let ors = split_top(toks, "||");
    if ors.len() > 1 {
        let tests: Vec<Test> = ors.iter().map(|t| classify(t)).collect();
        if tests.iter().all(|t| *t == Test::Neutral) {
            return Test::Neutral;
        }
        let mut all = Vec::new();
        let mut exact = true;
        for t in tests {
            match t {
                Test::Prefix { prefixes, exact: e } => {
                    all.extend(prefixes);
                    exact &= e;
                }
                _ => return Test::Unrecognised,
            }
        }
        return Test::Prefix {
            prefixes: all,
            exact,
        };
    }
    let ands = split_top(toks, "&&");
    if ands.len() > 1 {
        let mut found = None;
        for part in ands {
            match classify(part) {
                Test::Neutral => {}
                Test::Unrecognised => return Test::Unrecognised,
                t if found.is_none() => found = Some(t),
                _ => return Test::Unrecognised,
            }
        }
        return found.unwrap_or(Test::Neutral);
    }
    term(toks, depth)
}

fn term(toks: &[Token], depth: usize) -> Test {
    if let Some((first, rest)) = toks.split_first() {
        if is_punct(first, "!") {
            // A negated test only says where a request does *not* go: what reaches the
            // call is decided by the other rules, as with an else branch.
            return match classify_at(rest, depth + 1) {
                Test::Prefix { .. } | Test::Domain(_) | Test::Neutral => Test::Neutral,
                Test::Unrecognised => Test::Unrecognised,
            };
        }
    }
    if let Some(t) = comparison(toks) {
        return t;
    }
    if let [f, open, Token {
        tok: Tok::Str(var), ..
    }, comma, Token {
        tok: Tok::Str(lit), ..
    }, close] = toks
    {
        let is_call = f.tok == Tok::Ident("starts_with".into())
            && is_punct(open, "(")
            && is_punct(comma, ",")
            && is_punct(close, ")");
        if is_call {
            if let Some(p) = user_literal(var, lit) {
                return Test::Prefix {
                    prefixes: vec![p],
                    exact: true,
                };
            }
        }
    }
    if mentions_routing(toks) {
        Test::Unrecognised
    } else {
        Test::Neutral
    }
}

/// `$rU =~ "^44"`, `$rd == "pbx.example.com"`, `$(rU{s.substr,0,2}) == "44"`, …
fn comparison(toks: &[Token]) -> Option<Test> {
    let [lhs, op, Token {
        tok: Tok::Str(rhs), ..
    }] = toks
    else {
        return None;
    };
    let lhs = match &lhs.tok {
        Tok::PVar(v) => v.as_str(),
        Tok::Ident(v) if v == "uri" => "$ru",
        _ => return None,
    };
    let op = match &op.tok {
        Tok::Punct(p) => p.as_str(),
        _ => return None,
    };
    let var = normal_var(lhs);
    match (var.as_str(), op) {
        ("$rU", "=~") => prefix_regex(rhs),
        ("$ru", "=~") => rhs
            .strip_prefix("^sip:")
            .or_else(|| rhs.strip_prefix("^sips:"))
            .and_then(|r| prefix_regex(&format!("^{r}"))),
        ("$rd", "==") if is_host(rhs) => Some(Test::Domain(rhs.clone())),
        ("$rd", "=~") => domain_regex(rhs).map(Test::Domain),
        (v, "==") => {
            let n = v
                .strip_prefix("$(rU{s.substr,0,")?
                .strip_suffix("})")?
                .parse::<usize>()
                .ok()?;
            (n == rhs.chars().count() && n > 0).then(|| Test::Prefix {
                prefixes: vec![rhs.clone()],
                exact: true,
            })
        }
        _ => None,
    }
}

/// `$(rU)` → `$rU`; anything else unchanged.
fn normal_var(v: &str) -> String {
    match v.strip_prefix("$(").and_then(|r| r.strip_suffix(')')) {
        Some(inner) if inner.chars().all(|c| c.is_ascii_alphanumeric()) => format!("${inner}"),
        _ => v.to_owned(),
    }
}

/// The literal a `starts_with("$rU", "44")` call tests.
fn user_literal(var: &str, lit: &str) -> Option<String> {
    match normal_var(var).as_str() {
        "$rU" if !lit.is_empty() => Some(lit.to_owned()),
        "$ru" => lit
            .strip_prefix("sip:")
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
        _ => None,
    }
}

/// `^44`, `^(44|0044)`, `^\+44[0-9]+$` → prefixes; `None` if it is not anchored
/// literal text followed by "anything".
pub fn prefix_regex(re: &str) -> Option<Test> {
    let rest = re.strip_prefix('^')?;
    let (alts, tail) = if let Some(inner) = rest.strip_prefix('(') {
        let close = inner.find(')')?;
        let alts: Option<Vec<String>> = inner[..close]
            .split('|')
            .map(|a| {
                let (lit, tail) = literal(a);
                (tail.is_empty() && !lit.is_empty()).then_some(lit)
            })
            .collect();
        (alts?, &inner[close + 1..])
    } else {
        let (lit, tail) = literal(rest);
        if lit.is_empty() {
            return None;
        }
        (vec![lit], tail)
    };
    let exact = matches!(tail, "" | ".*");
    if !exact && !tail_is_digits(tail) {
        return None;
    }
    Some(Test::Prefix {
        prefixes: alts,
        exact,
    })
}

/// Leading literal characters of a regular expression (unescaped), and the rest.
fn literal(re: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = re.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c == '\\' {
            let mut ahead = re[i + 1..].chars();
            match ahead.next() {
                Some(d) if "+*#.".contains(d) => {
                    out.push(d);
                    chars.next();
                    chars.next();
                    continue;
                }
                _ => return (out, &re[i..]),
            }
        }
        if c.is_ascii_alphanumeric() || c == '#' || c == '-' || c == '_' || c == '@' {
            // A character followed by a quantifier is not literal.
            let after = re[i + c.len_utf8()..].chars().next();
            if matches!(after, Some('?' | '*' | '+' | '{')) {
                return (out, &re[i..]);
            }
            out.push(c);
            chars.next();
        } else {
            return (out, &re[i..]);
        }
    }
    (out, "")
}

/// `[0-9]+`, `\d{3,20}$`, `.+`, … : "followed by more digits (or anything)".
fn tail_is_digits(tail: &str) -> bool {
    let mut t = tail.strip_suffix('$').unwrap_or(tail);
    if t.is_empty() {
        return false;
    }
    while !t.is_empty() {
        t = if let Some(r) = t.strip_prefix("[0-9]").or_else(|| t.strip_prefix("\\d")) {
            r
        } else if let Some(r) = t.strip_prefix('.') {
            r
        } else {
            return false;
        };
        if let Some(r) = t.strip_prefix(['*', '+', '?']) {
            t = r;
        } else if let Some(r) = t.strip_prefix('{') {
            let Some(end) = r.find('}') else { return false };
            if !r[..end].chars().all(|c| c.is_ascii_digit() || c == ',') {
                return false;
            }
            t = &r[end + 1..];
        }
    }
    true
}

/// `^pbx\.example\.com$` → `pbx.example.com`.
fn domain_regex(re: &str) -> Option<String> {
    let inner = re.strip_prefix('^')?.strip_suffix('$')?;
    let host = inner.replace("\\.", ".");
    (is_host(&host) && !inner.replace("\\.", "").contains('.')).then_some(host)
}

fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Whether a condition looks at where the request goes or comes from.
fn mentions_routing(toks: &[Token]) -> bool {
    const VARS: &[&str] = &[
        "$rU", "$ru", "$rd", "$rz", "$rp", "$(rU", "$(ru", "$(rd", "$tU", "$tu", "$td", "$(tU",
        "$(tu", "$fU", "$fu", "$fd", "$(fU", "$(fu", "$si", "$sp", "$ou", "$oU", "$od", "$hdr(",
        "$(hdr",
    ];
    const IDENTS: &[&str] = &["uri", "from_uri", "to_uri", "src_ip", "src_port", "dst_ip"];
    const FUNCS: &[&str] = &[
        "starts_with",
        "pcre_match",
        "is_domain_local",
        "is_uri_host_local",
        "ds_is_from_list",
        "allow_source_address",
        "is_in_subnet",
        "dp_match",
        "dp_translate",
        "lookup",
        "registered",
        "is_from_local",
        "does_uri_exist",
    ];
    toks.iter().any(|t| match &t.tok {
        Tok::PVar(v) => VARS.iter().any(|p| {
            v.strip_prefix(p).is_some_and(|r| {
                r.is_empty() || !r.starts_with(|c: char| c.is_ascii_alphanumeric())
            })
        }),
        Tok::Ident(i) => IDENTS.contains(&i.as_str()) || FUNCS.contains(&i.as_str()),
        _ => false,
    })
}

fn is_punct(t: &Token, p: &str) -> bool {
    matches!(&t.tok, Tok::Punct(s) if s == p)
}

/// Removes parentheses around the whole token list.
fn strip_parens(mut toks: &[Token]) -> &[Token] {
    while toks.len() >= 2 && is_punct(&toks[0], "(") && is_punct(&toks[toks.len() - 1], ")") {
        let mut depth = 0usize;
        let mut closes_at_end = true;
        for (i, t) in toks.iter().enumerate() {
            if is_punct(t, "(") {
                depth += 1;
            } else if is_punct(t, ")") {
                depth = depth.saturating_sub(1);
                if depth == 0 && i != toks.len() - 1 {
                    closes_at_end = false;
                    break;
                }
            }
        }
        if !closes_at_end {
            break;
        }
        toks = &toks[1..toks.len() - 1];
    }
    toks
}

/// Splits at operator `op` outside parentheses.
fn split_top<'t>(toks: &'t [Token], op: &str) -> Vec<&'t [Token]> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        if is_punct(t, "(") {
            depth += 1;
        } else if is_punct(t, ")") {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && is_punct(t, op) {
            out.push(&toks[start..i]);
            start = i + 1;
        }
    }
    out.push(&toks[start..]);
    out
}

/// Status codes matched by a `t_check_status` pattern (`408|500|503`, `5[0-9][0-9]`,
/// `^(408|5..)$`); `None` if it is not a list of three-character patterns.
pub fn status_codes(re: &str) -> Option<BTreeSet<u16>> {
    let mut re = re.trim();
    re = re.strip_prefix('^').unwrap_or(re);
    re = re.strip_suffix('$').unwrap_or(re);
    if let Some(inner) = re.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        re = inner;
    }
    let mut out = BTreeSet::new();
    for alt in re.split('|') {
        let positions = digit_positions(alt.trim())?;
        if positions.len() != 3 {
            return None;
        }
        for a in &positions[0] {
            for b in &positions[1] {
                for c in &positions[2] {
                    out.insert(u16::from(*a) * 100 + u16::from(*b) * 10 + u16::from(*c));
                }
            }
        }
    }
    Some(out)
}

fn digit_positions(alt: &str) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let b = alt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            d @ b'0'..=b'9' => {
                out.push(vec![d - b'0']);
                i += 1;
            }
            b'.' => {
                out.push((0..10).collect());
                i += 1;
            }
            b'\\' if b.get(i + 1) == Some(&b'd') => {
                out.push((0..10).collect());
                i += 2;
            }
            b'[' => {
                let end = i + alt[i..].find(']')?;
                let class = &b[i + 1..end];
                let mut set = Vec::new();
                let mut j = 0;
                while j < class.len() {
                    let lo = class[j];
                    if class.get(j + 1) == Some(&b'-') && j + 2 < class.len() {
                        let hi = class[j + 2];
                        if !lo.is_ascii_digit() || !hi.is_ascii_digit() || lo > hi {
                            return None;
                        }
                        set.extend((lo - b'0')..=(hi - b'0'));
                        j += 3;
                    } else if lo.is_ascii_digit() {
                        set.push(lo - b'0');
                        j += 1;
                    } else {
                        return None;
                    }
                }
                out.push(set);
                i = end + 1;
            }
            _ => return None,
        }
        if out.len() > 3 {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::kamailio_cfg::parse;
    use super::super::preprocess::{Line, Source};
    use super::*;

    fn cfg(text: &str) -> Cfg {
        let src = Source {
            files: vec!["k.cfg".into()],
            lines: text
                .lines()
                .enumerate()
                .map(|(i, l)| Line {
                    file: 0,
                    line: i as u32 + 1,
                    text: l.to_owned(),
                })
                .collect(),
        };
        parse(&src, &mut Vec::new()).unwrap()
    }

    fn targets(text: &str, func: &str) -> Vec<Target> {
        let c = cfg(text);
        sites(&c)
            .iter()
            .filter(|s| s.call.name == func)
            .map(target)
            .collect()
    }

    fn prefix(p: &[&str], exact: bool) -> Target {
        Target::Only(Test::Prefix {
            prefixes: p.iter().map(|s| s.to_string()).collect(),
            exact,
        })
    }

    #[test]
    fn prefixes_domains_and_fallbacks() {
        let t = targets(
            "request_route {\n if (is_method(\"INVITE\") && $rU =~ \"^\\+44\") { route(UK); }\n\
             else if ($rd == \"pbx.example.com\") { ds_select_dst(\"3\", \"4\"); }\n\
             else if (starts_with(\"$rU\", \"00\")) { ds_select_dst(\"4\", \"4\"); }\n\
             else if ($rU =~ \"^(33|34)[0-9]{6,}$\") { ds_select_dst(\"5\", \"4\"); }\n\
             else if ($si == \"10.0.0.1\") { ds_select_dst(\"6\", \"4\"); }\n\
             else { if (!ds_select_dst(\"1\", \"4\")) { exit; } }\n}\n\
             route[UK] { ds_select_dst(\"2\", \"4\"); }\n",
            "ds_select_dst",
        );
        assert_eq!(
            t,
            vec![
                prefix(&["+44"], true),
                Target::Only(Test::Domain("pbx.example.com".into())),
                prefix(&["00"], true),
                prefix(&["33", "34"], false),
                Target::Unknown(5),
                Target::Always,
            ]
        );
    }

    #[test]
    fn regex_shapes() {
        assert_eq!(prefix_regex("44"), None);
        assert_eq!(prefix_regex("^4?4"), None);
        assert_eq!(prefix_regex("^44$"), None);
        assert_eq!(
            prefix_regex("^44.*"),
            Some(Test::Prefix {
                prefixes: vec!["44".into()],
                exact: true
            })
        );
        assert_eq!(domain_regex("^a\\.b$"), Some("a.b".into()));
        assert_eq!(domain_regex("^a.b$"), None);
    }

    #[test]
    fn status_code_patterns() {
        let c = |s: &str| status_codes(s).map(|s| s.into_iter().collect::<Vec<_>>());
        assert_eq!(c("408|500|503"), Some(vec![408, 500, 503]));
        assert_eq!(c("^(486|60[0-3])$"), Some(vec![486, 600, 601, 602, 603]));
        assert_eq!(c("5[0-9][0-9]").map(|v| v.len()), Some(100));
        assert_eq!(c("5.."), c("5\\d\\d"));
        assert_eq!(c("50"), None);
        assert_eq!(c("[a-z]00"), None);
        assert_eq!(c("5[9-0]0"), None);
    }

    #[test]
    fn deep_conditions_are_bounded() {
        let deep = format!(
            "request_route {{ if ({}$rU =~ \"^4\") {{ ds_select_dst(\"1\", \"4\"); }} }}",
            "!".repeat(100_000)
        );
        assert_eq!(targets(&deep, "ds_select_dst"), vec![Target::Unknown(0)]);
    }

    #[test]
    fn route_recursion_terminates() {
        let c = cfg(
            "request_route { route(A); }\nroute[A] { route(B); x(); }\nroute[B] { route(A); }\n",
        );
        let s = sites(&c);
        assert_eq!(s.iter().filter(|s| s.call.name == "x").count(), 1);
    }
}
