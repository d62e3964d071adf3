//! Lexer and parser for the parts of a preprocessed Kamailio configuration that
//! `import-kamailio` reads: core parameters, `loadmodule`, `modparam` and the
//! route blocks, down to `if` / `else` / `switch` / `while` and function calls.
//! Expressions stay token lists; [`calls`] finds the function calls in them.
//! Every token keeps the index of its [`Line`](super::preprocess::Line), so
//! every finding can name its file and line.

use super::lexer::lex;
pub use super::lexer::{token_text, Tok, Token};
use super::preprocess::Source;
use super::Note;

/// Nesting of blocks and statements beyond this is refused (no stack overflow on
/// hostile input). A chain of `else if` nests one level per branch, and carrier
/// configurations may have hundreds of them.
const MAX_NESTING: usize = 1000;

/// A modparam / function argument value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Str(String),
    Int(i64),
    /// Anything else, as written (a pseudo-variable, a bare word, an expression).
    Other(String),
}

impl Val {
    /// The value as text (strings unquoted).
    pub fn text(&self) -> String {
        match self {
            Val::Str(s) | Val::Other(s) => s.clone(),
            Val::Int(n) => n.to_string(),
        }
    }

    /// An integer, or a string of digits.
    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(n) => Some(*n),
            Val::Str(s) => s.trim().parse().ok(),
            Val::Other(_) => None,
        }
    }
}

/// `name = value` at the top level; `value` is the rest of the line, raw.
#[derive(Clone, Debug)]
pub struct CoreParam {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// `loadmodule "x.so"`; `name` without directory and `.so`.
#[derive(Clone, Debug)]
pub struct Module {
    pub name: String,
    pub line: usize,
}

/// `modparam("module", "name", value)`.
#[derive(Clone, Debug)]
pub struct ModParam {
    pub module: String,
    pub name: String,
    pub value: Val,
    pub line: usize,
}

/// Which kind of route block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `request_route` or `route` without a name.
    Request,
    /// `route[NAME]`.
    Named,
    Failure,
    Reply,
    Branch,
    Event,
    Send,
}

/// A route block.
#[derive(Clone, Debug)]
pub struct Route {
    pub kind: RouteKind,
    pub name: String,
    pub body: Vec<Stmt>,
    pub line: usize,
}

/// What kind of conditional statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CondKind {
    If,
    While,
    Switch,
}

/// A statement of a route block.
#[derive(Clone, Debug)]
pub enum Stmt {
    /// `if (cond) then else els`; `while` and `switch` keep their body in `then`.
    Cond {
        kind: CondKind,
        cond: Vec<Token>,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
        line: usize,
    },
    /// `{ … }`
    Block(Vec<Stmt>),
    /// Anything else up to `;`.
    Simple(Vec<Token>),
}

/// A function call found in a token list.
#[derive(Clone, Debug)]
pub struct Call {
    pub name: String,
    pub args: Vec<Val>,
    pub line: usize,
    /// Directly preceded by `!`.
    pub negated: bool,
}

/// The parsed configuration.
#[derive(Clone, Debug, Default)]
pub struct Cfg {
    pub core: Vec<CoreParam>,
    pub modules: Vec<Module>,
    pub modparams: Vec<ModParam>,
    pub routes: Vec<Route>,
}

/// Parses `src`; warnings for statements it does not understand, errors for broken
/// structure (unbalanced blocks, unterminated strings).
pub fn parse(src: &Source, warnings: &mut Vec<Note>) -> Result<Cfg, Vec<Note>> {
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks: &toks,
        pos: 0,
        warnings,
        depth: 0,
    };
    p.top().map_err(|e| vec![e])
}

struct Parser<'a, 'w> {
    src: &'a Source,
    toks: &'a [Token],
    pos: usize,
    warnings: &'w mut Vec<Note>,
    depth: usize,
}

type PResult<T> = Result<T, Note>;

impl Parser<'_, '_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn peek_at(&self, n: usize) -> Option<&Token> {
        self.toks.get(self.pos + n)
    }

    fn note(&self, line: usize, msg: String) -> Note {
        self.src.note(line, msg)
    }

    fn err_here(&self, msg: &str) -> Note {
        let line = self
            .peek()
            .or_else(|| self.toks.last())
            .map_or(0, |t| t.line);
        self.note(line, msg.to_owned())
    }

    fn skip_line(&mut self, line: usize) {
        while self.peek().is_some_and(|t| t.line == line) {
            self.pos += 1;
        }
    }

    fn eat_punct(&mut self, p: &str) -> bool {
        if self.peek().is_some_and(|t| t.is_punct(p)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn top(&mut self) -> PResult<Cfg> {
        let mut cfg = Cfg::default();
        while let Some(t) = self.peek() {
            let line = t.line;
            let Some(word) = t.ident().map(str::to_owned) else {
                if !t.is_punct(";") {
                    let msg = format!("unrecognised statement {}; ignored", describe(&t.tok));
                    self.warnings.push(self.note(line, msg));
                    self.skip_statement(line)?;
                } else {
                    self.pos += 1;
                }
                continue;
            };
            let kind = match word.as_str() {
                "request_route" => Some(RouteKind::Request),
                "route" => Some(RouteKind::Named),
                "failure_route" => Some(RouteKind::Failure),
                "onreply_route" | "reply_route" => Some(RouteKind::Reply),
                "branch_route" => Some(RouteKind::Branch),
                "event_route" => Some(RouteKind::Event),
                "onsend_route" => Some(RouteKind::Send),
                _ => None,
            };
            let next = self.peek_at(1);
            if let Some(kind) =
                kind.filter(|_| next.is_some_and(|n| n.is_punct("[") || n.is_punct("{")))
            {
                self.pos += 1;
                cfg.routes.push(self.route(kind, line)?);
            } else if word == "loadmodule" || word == "loadmodulex" {
                self.pos += 1;
                match self.peek().map(|t| t.tok.clone()) {
                    Some(Tok::Str(path)) if self.peek().is_some_and(|t| t.line == line) => {
                        let base = path.rsplit('/').next().unwrap_or(&path);
                        let name = base.strip_suffix(".so").unwrap_or(base).to_owned();
                        cfg.modules.push(Module { name, line });
                    }
                    _ => self.warnings.push(self.note(
                        line,
                        "loadmodule without a quoted module name; ignored".into(),
                    )),
                }
                self.skip_line(line);
            } else if word == "modparam" || word == "modparamx" {
                self.pos += 1;
                if let Some(mp) = self.modparam(line)? {
                    cfg.modparams.push(mp);
                }
            } else if next.is_some_and(|n| n.is_punct("=")) {
                let eq_end = next.map_or(0, |n| n.end);
                let text = &self.src.lines[line].text;
                let value = text.get(eq_end..).unwrap_or("").trim();
                let value = value.strip_suffix(';').unwrap_or(value).trim_end();
                cfg.core.push(CoreParam {
                    name: word,
                    value: value.to_owned(),
                    line,
                });
                self.skip_line(line);
            } else if word == "cfgengine" {
                self.skip_line(line);
            } else {
                let msg = format!("unrecognised statement {word:?}; ignored");
                self.warnings.push(self.note(line, msg));
                self.skip_statement(line)?;
            }
        }
        Ok(cfg)
    }

    /// Skips an unrecognised top-level statement: its line, and a block it opens.
    fn skip_statement(&mut self, line: usize) -> PResult<()> {
        let mut depth = 0usize;
        while let Some(t) = self.peek() {
            if t.line != line && depth == 0 {
                break;
            }
            if t.is_punct("{") {
                depth += 1;
            } else if t.is_punct("}") {
                depth = depth.saturating_sub(1);
            }
            self.pos += 1;
        }
        if depth > 0 {
            return Err(self.note(line, "block opened here is never closed".into()));
        }
        Ok(())
    }

    fn modparam(&mut self, line: usize) -> PResult<Option<ModParam>> {
        if !self.eat_punct("(") {
            self.warnings
                .push(self.note(line, "modparam without ( … ); ignored".into()));
            self.skip_line(line);
            return Ok(None);
        }
        let args = self.args(line)?;
        self.eat_punct(";");
        let (Some(Val::Str(module)), Some(Val::Str(name)), Some(value), 3) =
            (args.first(), args.get(1), args.get(2), args.len())
        else {
            self.warnings.push(self.note(
                line,
                "modparam needs (\"module\", \"name\", value); ignored".into(),
            ));
            return Ok(None);
        };
        Ok(Some(ModParam {
            module: module.clone(),
            name: name.clone(),
            value: value.clone(),
            line,
        }))
    }

    /// Arguments after an opening `(`, through the closing `)`.
    fn args(&mut self, line: usize) -> PResult<Vec<Val>> {
        let start = self.pos;
        let mut depth = 1usize;
        while let Some(t) = self.peek() {
            if t.is_punct("(") {
                depth += 1;
            } else if t.is_punct(")") {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            self.pos += 1;
        }
        if depth != 0 {
            return Err(self.note(line, "( opened here is never closed".into()));
        }
        let vals = split_args(&self.toks[start..self.pos]);
        self.pos += 1;
        Ok(vals)
    }

    fn route(&mut self, kind: RouteKind, line: usize) -> PResult<Route> {
        let mut name = String::new();
        if self.eat_punct("[") {
            while let Some(t) = self.peek() {
                if t.is_punct("]") {
                    break;
                }
                name.push_str(&token_text(&t.tok));
                self.pos += 1;
            }
            if !self.eat_punct("]") {
                return Err(self.note(line, "route name [ opened here is never closed".into()));
            }
        }
        if !self.eat_punct("{") {
            return Err(self.err_here("expected { after the route name"));
        }
        let body = self.block(line)?;
        let kind =
            if kind == RouteKind::Named && (name.is_empty() || name == "0" || name == "DEFAULT") {
                RouteKind::Request
            } else {
                kind
            };
        Ok(Route {
            kind,
            name,
            body,
            line,
        })
    }

    /// Statements after an opening `{`, through the closing `}`.
    fn block(&mut self, open_line: usize) -> PResult<Vec<Stmt>> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.note(
                open_line,
                format!("blocks nested more than {MAX_NESTING} deep"),
            ));
        }
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.note(open_line, "{ opened here is never closed".into())),
                Some(t) if t.is_punct("}") => {
                    self.pos += 1;
                    break;
                }
                Some(_) => {
                    if let Some(s) = self.stmt()? {
                        out.push(s);
                    }
                }
            }
        }
        self.depth -= 1;
        Ok(out)
    }

    fn stmt(&mut self) -> PResult<Option<Stmt>> {
        let Some(t) = self.peek() else {
            return Ok(None);
        };
        let line = t.line;
        if t.is_punct(";") {
            self.pos += 1;
            return Ok(None);
        }
        if t.is_punct("{") {
            self.pos += 1;
            return Ok(Some(Stmt::Block(self.block(line)?)));
        }
        match t.ident() {
            Some("if" | "while" | "switch") if self.peek_at(1).is_some_and(|n| n.is_punct("(")) => {
                let kind = match t.ident() {
                    Some("if") => CondKind::If,
                    Some("while") => CondKind::While,
                    _ => CondKind::Switch,
                };
                self.pos += 2;
                let start = self.pos;
                self.args(line)?;
                let cond = self.toks[start..self.pos - 1].to_vec();
                let then = self.branch(line)?;
                let mut els = Vec::new();
                if kind == CondKind::If && self.peek().and_then(Token::ident) == Some("else") {
                    self.pos += 1;
                    els = self.branch(line)?;
                }
                Ok(Some(Stmt::Cond {
                    kind,
                    cond,
                    then,
                    els,
                    line,
                }))
            }
            Some("case") | Some("default") => {
                // A `switch` label: up to its colon.
                while let Some(colon) = self.peek().map(|t| t.is_punct(":")) {
                    self.pos += 1;
                    if colon {
                        break;
                    }
                }
                Ok(None)
            }
            _ => {
                let start = self.pos;
                let mut depth = 0usize;
                while let Some(t) = self.peek() {
                    if depth == 0 && (t.is_punct(";") || t.is_punct("}")) {
                        break;
                    }
                    if t.is_punct("(") || t.is_punct("[") || t.is_punct("{") {
                        depth += 1;
                    } else if t.is_punct(")") || t.is_punct("]") || t.is_punct("}") {
                        depth = depth.saturating_sub(1);
                    }
                    self.pos += 1;
                }
                let toks = self.toks[start..self.pos].to_vec();
                self.eat_punct(";");
                Ok(Some(Stmt::Simple(toks)))
            }
        }
    }

    /// The statement (or block) after `if (…)` / `else`.
    fn branch(&mut self, line: usize) -> PResult<Vec<Stmt>> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.note(
                line,
                format!("statements nested more than {MAX_NESTING} deep"),
            ));
        }
        let out = match self.stmt()? {
            Some(Stmt::Block(b)) => b,
            Some(s) => vec![s],
            None => Vec::new(),
        };
        self.depth -= 1;
        Ok(out)
    }
}

/// Splits argument tokens at top-level commas; adjacent strings are concatenated.
fn split_args(toks: &[Token]) -> Vec<Val> {
    let mut out = Vec::new();
    if toks.is_empty() {
        return out;
    }
    let mut depth = 0usize;
    let mut cur: Vec<&Token> = Vec::new();
    for t in toks {
        if depth == 0 && t.is_punct(",") {
            out.push(value_of(&cur));
            cur.clear();
            continue;
        }
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth = depth.saturating_sub(1);
        }
        cur.push(t);
    }
    out.push(value_of(&cur));
    out
}

fn value_of(toks: &[&Token]) -> Val {
    if !toks.is_empty() && toks.iter().all(|t| matches!(t.tok, Tok::Str(_))) {
        return Val::Str(toks.iter().map(|t| token_text(&t.tok)).collect());
    }
    match toks {
        [t] => match &t.tok {
            Tok::Num(n) => n.parse().map_or_else(|_| Val::Other(n.clone()), Val::Int),
            other => Val::Other(token_text(other)),
        },
        [m, t] if m.is_punct("-") => match &t.tok {
            Tok::Num(n) => n
                .parse::<i64>()
                .map_or_else(|_| Val::Other(format!("-{n}")), |v| Val::Int(-v)),
            other => Val::Other(format!("-{}", token_text(other))),
        },
        _ => Val::Other(
            toks.iter()
                .map(|t| token_text(&t.tok))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Str(s) => format!("\"{s}\""),
        other => format!("{:?}", token_text(other)),
    }
}

/// The function calls in `toks` (nested ones included), in order.
pub fn calls(toks: &[Token]) -> Vec<Call> {
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        let Some(name) = t.ident() else { continue };
        if !toks.get(i + 1).is_some_and(|n| n.is_punct("(")) || is_keyword(name) {
            continue;
        }
        let mut depth = 0usize;
        let mut end = i + 1;
        for (j, u) in toks.iter().enumerate().skip(i + 1) {
            if u.is_punct("(") {
                depth += 1;
            } else if u.is_punct(")") {
                depth -= 1;
                if depth == 0 {
                    end = j;
                    break;
                }
            }
            end = j + 1;
        }
        let inner = toks.get(i + 2..end).unwrap_or(&[]);
        let negated = i > 0 && toks[i - 1].is_punct("!");
        out.push(Call {
            name: name.to_owned(),
            args: split_args(inner),
            line: t.line,
            negated,
        });
    }
    out
}

fn is_keyword(s: &str) -> bool {
    matches!(
        s,
        "if" | "while" | "switch" | "return" | "exit" | "drop" | "not" | "and" | "or"
    )
}

#[cfg(test)]
mod tests {
    use super::super::preprocess::Line;
    use super::*;

    fn src(text: &str) -> Source {
        Source {
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
        }
    }

    fn parse_ok(text: &str) -> (Cfg, Vec<Note>) {
        let mut w = Vec::new();
        let cfg = parse(&src(text), &mut w).unwrap();
        (cfg, w)
    }

    #[test]
    fn top_level_statements() {
        let (cfg, w) = parse_ok(
            "listen=udp:127.0.0.1:5060 advertise 1.2.3.4:5060\nport = 5080;\n\
             loadmodule \"/usr/lib/kamailio/modules/dispatcher.so\"\n\
             modparam(\"dispatcher\", \"ds_ping_interval\", 10)\n\
             modparam(\"acc\", \"log_extra\",\n  \"a=$fU;\"\n  \"b=$rU\")\nmodparam(\"x\", \"n\", -1)\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(cfg.core[0].name, "listen");
        assert_eq!(
            cfg.core[0].value,
            "udp:127.0.0.1:5060 advertise 1.2.3.4:5060"
        );
        assert_eq!(cfg.core[1].value, "5080");
        assert_eq!(cfg.modules[0].name, "dispatcher");
        assert_eq!(cfg.modparams[0].value, Val::Int(10));
        assert_eq!(cfg.modparams[1].value, Val::Str("a=$fU;b=$rU".into()));
        assert_eq!(cfg.modparams[2].value, Val::Int(-1));
    }

    #[test]
    fn routes_conditions_and_calls() {
        let (cfg, _) = parse_ok(
            "request_route {\n if (!ds_select_dst(\"1\", \"4\")) { sl_send_reply(\"503\", \"x\"); exit; }\n\
             if ($(rU{s.substr,0,2}) == \"44\") route(UK); else { t_relay(); }\n\
             switch ($rU) { case \"1\": xlog(\"a\"); break; default: exit; }\n}\n\
             failure_route[FO] { if (t_check_status(\"5[0-9][0-9]\")) ds_next_dst(); }\n\
             event_route[xhttp:request] { exit; }\n",
        );
        assert_eq!(cfg.routes.len(), 3);
        assert_eq!(cfg.routes[0].kind, RouteKind::Request);
        assert_eq!(cfg.routes[2].name, "xhttp:request");
        let Stmt::Cond { cond, then, .. } = &cfg.routes[0].body[0] else {
            panic!("{:?}", cfg.routes[0].body)
        };
        let c = calls(cond);
        assert_eq!(c[0].name, "ds_select_dst");
        assert!(c[0].negated);
        assert_eq!(c[0].args, vec![Val::Str("1".into()), Val::Str("4".into())]);
        assert_eq!(then.len(), 2);
        let Stmt::Cond { cond, els, .. } = &cfg.routes[0].body[1] else {
            panic!()
        };
        assert_eq!(cond[0].tok, Tok::PVar("$(rU{s.substr,0,2})".into()));
        assert_eq!(els.len(), 1);
    }

    #[test]
    fn broken_structure_is_an_error_with_a_line() {
        let mut w = Vec::new();
        let e = parse(&src("request_route {\n if (a) {\n x();\n}\n"), &mut w).unwrap_err();
        assert_eq!(e[0].to_string(), "k.cfg:1: { opened here is never closed");
        let e = parse(&src("a=1\nmodparam(\"x\", \"y\n"), &mut w).unwrap_err();
        assert_eq!(e[0].to_string(), "k.cfg:2: unterminated string");
        let deep = format!("request_route {{{}", "{".repeat(1500));
        assert!(parse(&src(&deep), &mut w).is_err());
    }
}
