//! The Kamailio configuration lexer: one preprocessed line at a time (strings do
//! not span lines), pseudo-variables (`$rU`, `$(rU{s.substr,0,2})`, `$avp(x)`) as
//! single tokens, each token tagged with its line.

use super::preprocess::Source;
use super::Note;

/// A token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// A name (`ds_select_dst`, `if`, `pstn.gw_ip`).
    Ident(String),
    /// A quoted string, unescaped.
    Str(String),
    /// A run of digits.
    Num(String),
    /// A pseudo-variable as written (`$rU`, `$(rU{s.substr,0,2})`, `$avp(x)`).
    PVar(String),
    /// Punctuation and operators (`(`, `==`, `=~`, `&&`, …).
    Punct(String),
}

/// A token and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    /// Index into [`Source::lines`].
    pub line: usize,
    /// Byte offset of the token's end in the line (for core parameter values).
    pub end: usize,
}

impl Token {
    pub fn is_punct(&self, p: &str) -> bool {
        matches!(&self.tok, Tok::Punct(s) if s == p)
    }

    pub fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }
}

pub fn lex(src: &Source) -> Result<Vec<Token>, Vec<Note>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (idx, line) in src.lines.iter().enumerate() {
        if let Err(msg) = lex_line(&line.text, idx, &mut out) {
            errors.push(src.note(idx, msg));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

const OPERATORS: &[&str] = &[
    "==", "!=", "=~", "!~", "&&", "||", "<=", ">=", "+=", "=>", "::",
];

fn lex_line(text: &str, line: usize, out: &mut Vec<Token>) -> Result<(), String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let tok = if c == b'"' || c == b'\'' {
            let mut s = Vec::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(&d) if d == c => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let e = b.get(i + 1).copied().unwrap_or(b'\\');
                        s.extend_from_slice(match e {
                            b'n' => b"\n",
                            b'r' => b"\r",
                            b't' => b"\t",
                            b'"' => b"\"",
                            b'\'' => b"'",
                            b'\\' => b"\\",
                            _ => &b[i..(i + 2).min(b.len())],
                        });
                        i += 2;
                    }
                    Some(&d) => {
                        s.push(d);
                        i += 1;
                    }
                }
            }
            Tok::Str(String::from_utf8_lossy(&s).into_owned())
        } else if c == b'$' {
            i += 1;
            if b.get(i) == Some(&b'(') {
                i = balanced(b, i)?;
            } else {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if b.get(i) == Some(&b'(') {
                    i = balanced(b, i)?;
                }
                if b.get(i) == Some(&b'[') {
                    i = balanced(b, i)?;
                }
            }
            Tok::PVar(text[start..i].to_owned())
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            Tok::Ident(text[start..i].to_owned())
        } else if c.is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            Tok::Num(text[start..i].to_owned())
        } else if let Some(op) = OPERATORS
            .iter()
            .find(|op| b[i..].starts_with(op.as_bytes()))
        {
            i += op.len();
            Tok::Punct((*op).to_owned())
        } else {
            // One character (UTF-8 aware).
            let ch = text[i..].chars().next().unwrap_or(' ');
            i += ch.len_utf8();
            Tok::Punct(ch.to_string())
        };
        out.push(Token { tok, line, end: i });
    }
    Ok(())
}

/// Index after the bracket that closes the one at `i` (`(`, `[` or `{`), skipping
/// nested brackets and quoted strings; the whole rest of the line if unclosed.
fn balanced(b: &[u8], mut i: usize) -> Result<usize, String> {
    let mut depth = 0usize;
    let mut quote = None;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'"' | b'\'' => quote = Some(c),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return Ok(i + 1);
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    Err("unterminated pseudo-variable".into())
}

/// A token as text (strings without quotes).
pub fn token_text(t: &Tok) -> String {
    match t {
        Tok::Ident(s) | Tok::Str(s) | Tok::Num(s) | Tok::PVar(s) | Tok::Punct(s) => s.clone(),
    }
}
