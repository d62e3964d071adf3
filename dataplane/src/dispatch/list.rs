//! `dispatcher.list` parsing (Kamailio's file format) and the `attrs` column.
//!
//! One destination per line:
//!
//! ```text
//! setid destination [flags [priority [attrs [description]]]]
//! 1 sip:10.0.0.1:5060 0 10 weight=50;duid=ast1;maxload=500 first Asterisk
//! ```
//!
//! Fields are separated by spaces or tabs. A line whose first non-blank
//! character is `#` is a comment, and so is everything from a field that
//! starts with `#` to the end of the line. The description is the rest of the
//! line after the attributes (it may contain spaces); Kamailio keeps it only in
//! its database table, sipvane accepts it in the file too.
//!
//! Defaults of the attributes (Kamailio's meaning is kept):
//! - `weight` 0 = unset: the destination gets no share of algorithm 9 unless
//!   no destination of its set has a weight, in which case all share equally.
//! - `rweight` 0 = unset: same rule for algorithm 11.
//! - `maxload` 0 = no limit on active calls.

use std::fmt;

/// Flag bit: destination starts inactive.
pub const FLAG_INACTIVE: u32 = 1;
/// Flag bit: destination is "trying" (Kamailio: still selected, on its way to
/// inactive if keepalives keep failing).
pub const FLAG_TRYING: u32 = 2;
/// Flag bit: destination is administratively disabled.
pub const FLAG_DISABLED: u32 = 4;
/// Flag bit: destination is probed with keepalives.
pub const FLAG_PROBING: u32 = 8;
/// Flag bit: skip the DNS A/AAAA lookup at load time.
pub const FLAG_NODNS: u32 = 16;
/// Every flag bit a `dispatcher.list` line may carry.
pub const FLAGS_KNOWN: u32 =
    FLAG_INACTIVE | FLAG_TRYING | FLAG_DISABLED | FLAG_PROBING | FLAG_NODNS;

/// One destination line of a `dispatcher.list` file (or one database row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestDef {
    /// Set (group) id.
    pub set: u32,
    /// Destination SIP URI, as written.
    pub uri: String,
    /// Kamailio flag bits (see the `FLAG_*` constants).
    pub flags: u32,
    /// Priority: higher values come first inside the set.
    pub priority: i32,
    /// Parsed attributes.
    pub attrs: Attrs,
    /// The attributes exactly as written, for display and the API.
    pub attrs_raw: String,
    /// Free text description (may be empty).
    pub description: String,
    /// 1-based line number in the file (or the row id for database sources).
    pub line: usize,
}

impl DestDef {
    /// Validates one row of Kamailio's `dispatcher(id, setid, destination,
    /// flags, priority, attrs, description)` table; `id` stands in for the
    /// line number in errors.
    pub fn from_row(
        id: usize,
        set: i64,
        uri: &str,
        flags: i64,
        priority: i64,
        attrs: &str,
        description: &str,
    ) -> Result<DestDef, ListError> {
        let err = |m: String| ListError::new(id, m);
        let set = u32::try_from(set).map_err(|_| {
            err(format!(
                "invalid set id '{set}': expected a non-negative integer"
            ))
        })?;
        let uri = uri.trim();
        validate_uri(uri).map_err(err)?;
        let flags = u32::try_from(flags)
            .map_err(|_| format!("invalid flags '{flags}': expected a non-negative integer"))
            .and_then(|f| parse_flags(&f.to_string()))
            .map_err(err)?;
        let priority = i32::try_from(priority)
            .map_err(|_| err(format!("invalid priority '{priority}': out of range")))?;
        let attrs_raw = attrs.trim();
        Ok(DestDef {
            set,
            uri: uri.to_string(),
            flags,
            priority,
            attrs: parse_attrs(attrs_raw).map_err(err)?,
            attrs_raw: attrs_raw.to_string(),
            description: description.trim().to_string(),
            line: id,
        })
    }
}

/// Parsed `key=value;key=value` attributes of a destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Percent of calls for algorithm 9 (0 = unset).
    pub weight: u32,
    /// Relative weight for algorithm 11 (0 = unset).
    pub rweight: u32,
    /// Maximum concurrent calls (0 = unlimited).
    pub maxload: u32,
    /// Destination unique id (Kamailio uses it for call-load accounting).
    pub duid: Option<String>,
    /// Sending socket, e.g. `udp:192.168.0.125:5060`.
    pub socket: Option<String>,
    /// From URI for OPTIONS keepalives.
    pub ping_from: Option<String>,
    /// Outbound proxy URI for keepalives.
    pub obproxy: Option<String>,
    /// Every other attribute, in order of appearance (values may be empty).
    pub other: Vec<(String, String)>,
}

impl Attrs {
    /// Value of an attribute kept in [`Attrs::other`] (first match, case-insensitive key).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.other
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// A problem on one line of a destination list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListError {
    /// 1-based line number (or database row id).
    pub line: usize,
    /// One-line description of the problem.
    pub message: String,
}

impl ListError {
    /// Builds an error for `line`.
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ListError {}

/// Parses a whole `dispatcher.list` file. Every bad line is reported, not just
/// the first, so an operator can fix a file in one pass.
pub fn parse_list(text: &str) -> Result<Vec<DestDef>, Vec<ListError>> {
    let mut defs = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        match parse_line(raw, line) {
            Ok(Some(def)) => defs.push(def),
            Ok(None) => {}
            Err(message) => errors.push(ListError { line, message }),
        }
    }
    if errors.is_empty() {
        Ok(defs)
    } else {
        Err(errors)
    }
}

/// Splits off the next whitespace-separated field; `None` at end of line or at
/// a field starting with `#` (a trailing comment).
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() || s.starts_with('#') {
        return None;
    }
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// Parses one line; `Ok(None)` for blank and comment lines.
pub fn parse_line(raw: &str, line: usize) -> Result<Option<DestDef>, String> {
    // `lines()` leaves the `\r` of CRLF files.
    let rest = raw.strip_suffix('\r').unwrap_or(raw);
    let Some((set_s, rest)) = next_field(rest) else {
        return Ok(None);
    };
    let set = parse_set_id(set_s)?;
    let Some((uri, rest)) = next_field(rest) else {
        return Err(format!("set {set}: missing destination URI"));
    };
    validate_uri(uri)?;

    let mut flags = 0;
    let mut priority = 0;
    let mut attrs = Attrs::default();
    let mut attrs_raw = String::new();
    let mut description = String::new();
    if let Some((f, rest)) = next_field(rest) {
        flags = parse_flags(f)?;
        if let Some((p, rest)) = next_field(rest) {
            priority = p
                .parse::<i32>()
                .map_err(|_| format!("invalid priority '{p}': expected an integer"))?;
            if let Some((a, rest)) = next_field(rest) {
                attrs = parse_attrs(a)?;
                attrs_raw = a.to_string();
                let d = rest.trim_matches([' ', '\t']);
                // A description that is only a comment is no description.
                if !d.starts_with('#') {
                    description = d.to_string();
                }
            }
        }
    }
    Ok(Some(DestDef {
        set,
        uri: uri.to_string(),
        flags,
        priority,
        attrs,
        attrs_raw,
        description,
        line,
    }))
}

fn parse_set_id(s: &str) -> Result<u32, String> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid set id '{s}': expected a non-negative integer"
        ));
    }
    s.parse::<u32>()
        .map_err(|_| format!("invalid set id '{s}': larger than {}", u32::MAX))
}

/// Checks that `uri` is a `sip:`/`sips:` URI with a host. The full URI
/// grammar is left to the caller's resolver (the SIP URI parser).
pub fn validate_uri(uri: &str) -> Result<(), String> {
    // Compare bytes: slicing the str before knowing the prefix is ASCII could
    // split a multi-byte character.
    let lower_prefix = |p: &str| {
        uri.len() >= p.len() && uri.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    let rest = if lower_prefix("sip:") {
        &uri[4..]
    } else if lower_prefix("sips:") {
        &uri[5..]
    } else {
        return Err(format!(
            "invalid destination '{uri}': expected a sip: or sips: URI"
        ));
    };
    let hostpart = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = hostpart.split([';', '?']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("invalid destination '{uri}': missing host"));
    }
    Ok(())
}

/// Parses the flags field: decimal or `0x` hexadecimal, only known bits.
pub fn parse_flags(s: &str) -> Result<u32, String> {
    let v = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else {
        s.parse::<u32>()
    }
    .map_err(|_| format!("invalid flags '{s}': expected a decimal or 0x hex integer"))?;
    let unknown = v & !FLAGS_KNOWN;
    if unknown != 0 {
        return Err(format!(
            "invalid flags '{s}': unknown bits 0x{unknown:x} (known: 1 inactive, 2 trying, 4 disabled, 8 probing, 16 no-dns)"
        ));
    }
    Ok(v)
}

/// Parses Kamailio's `name1=value1;...;nameN=valueN` attributes. Empty
/// segments (a trailing `;`) are ignored; a name without `=` is kept in
/// [`Attrs::other`] with an empty value.
pub fn parse_attrs(s: &str) -> Result<Attrs, String> {
    let mut a = Attrs::default();
    let mut seen: u8 = 0;
    for seg in s.split(';') {
        let seg = seg.trim();
        if seg.is_empty() {
            continue;
        }
        let (key, value) = match seg.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (seg, ""),
        };
        if key.is_empty() {
            return Err(format!(
                "invalid attribute '{seg}': missing name before '='"
            ));
        }
        let known = [
            "weight",
            "rweight",
            "maxload",
            "duid",
            "socket",
            "ping_from",
            "obproxy",
        ];
        let Some(k) = known.iter().position(|n| key.eq_ignore_ascii_case(n)) else {
            a.other.push((key.to_string(), value.to_string()));
            continue;
        };
        let bit = 1u8 << k;
        if seen & bit != 0 {
            return Err(format!("duplicate attribute '{}'", known[k]));
        }
        seen |= bit;
        let text = |v: &str| -> Result<Option<String>, String> {
            if v.is_empty() {
                Err(format!("attribute '{}' needs a value", known[k]))
            } else {
                Ok(Some(v.to_string()))
            }
        };
        match k {
            0 => a.weight = parse_ranged("weight", value, 0, 100)?,
            1 => a.rweight = parse_ranged("rweight", value, 1, 100)?,
            2 => a.maxload = parse_ranged("maxload", value, 0, u32::MAX)?,
            3 => a.duid = text(value)?,
            4 => a.socket = text(value)?,
            5 => a.ping_from = text(value)?,
            _ => a.obproxy = text(value)?,
        }
    }
    Ok(a)
}

fn parse_ranged(name: &str, v: &str, min: u32, max: u32) -> Result<u32, String> {
    let expect = if max == u32::MAX {
        "a non-negative integer".to_string()
    } else {
        format!("an integer {min}..={max}")
    };
    match v.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("invalid {name} '{v}': expected {expect}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(line: &str) -> String {
        match parse_line(line, 1) {
            Err(e) => e,
            Ok(d) => panic!("expected an error for {line:?}, got {d:?}"),
        }
    }

    #[test]
    fn full_line() {
        let d = parse_line(
            "1 sip:127.0.0.1:5080 0x8 10 duid=abc;socket=udp:192.168.0.125:5060;my=xyz;weight=50 the  box",
            7,
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.set, 1);
        assert_eq!(d.uri, "sip:127.0.0.1:5080");
        assert_eq!(d.flags, 8);
        assert_eq!(d.priority, 10);
        assert_eq!(d.attrs.duid.as_deref(), Some("abc"));
        assert_eq!(d.attrs.socket.as_deref(), Some("udp:192.168.0.125:5060"));
        assert_eq!(d.attrs.weight, 50);
        assert_eq!(d.attrs.get("MY"), Some("xyz"));
        assert_eq!(d.description, "the  box");
        assert_eq!(d.line, 7);
    }

    #[test]
    fn minimal_and_comments() {
        let d = parse_line("\t2\tsips:gw.example.com   # trailing", 1)
            .unwrap()
            .unwrap();
        assert_eq!((d.set, d.flags, d.priority), (2, 0, 0));
        assert_eq!(d.attrs, Attrs::default());
        assert!(parse_line("   # comment", 1).unwrap().is_none());
        assert!(parse_line("", 1).unwrap().is_none());
        assert!(parse_line(" \t\r", 1).unwrap().is_none());
        let d = parse_line("1 sip:a@h 0 0 weight=5 # c\r", 1)
            .unwrap()
            .unwrap();
        assert_eq!(d.description, "");
        assert_eq!(d.attrs.weight, 5);
    }

    #[test]
    fn attrs_rules() {
        let a = parse_attrs("rweight=50;weight=50;cc=1;").unwrap();
        assert_eq!((a.weight, a.rweight), (50, 50));
        assert_eq!(a.other, vec![("cc".to_string(), "1".to_string())]);
        let a = parse_attrs("flagonly;maxload=0").unwrap();
        assert_eq!(a.other, vec![("flagonly".to_string(), String::new())]);
        assert_eq!(parse_attrs("").unwrap(), Attrs::default());
        for (s, want) in [
            (
                "weight=101",
                "invalid weight '101': expected an integer 0..=100",
            ),
            ("weight=-1", "invalid weight '-1'"),
            (
                "rweight=0",
                "invalid rweight '0': expected an integer 1..=100",
            ),
            (
                "maxload=x",
                "invalid maxload 'x': expected a non-negative integer",
            ),
            ("duid=", "attribute 'duid' needs a value"),
            ("=5", "missing name"),
            ("weight=1;WEIGHT=2", "duplicate attribute 'weight'"),
        ] {
            let e = parse_attrs(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn field_errors() {
        assert!(err_of("x sip:a").contains("invalid set id 'x'"));
        assert!(err_of("-1 sip:a").contains("non-negative"));
        assert!(err_of("99999999999 sip:a").contains("larger than"));
        assert!(err_of("1").contains("missing destination URI"));
        assert!(err_of("1 http://a").contains("expected a sip: or sips: URI"));
        assert!(err_of("1 sé:x").contains("expected a sip: or sips: URI"));
        assert!(err_of("1 sip").contains("expected a sip: or sips: URI"));
        assert!(err_of("1 sip:").contains("missing host"));
        assert!(err_of("1 sip:user@;x").contains("missing host"));
        assert!(err_of("1 sip:a zz").contains("invalid flags 'zz'"));
        assert!(err_of("1 sip:a 0x").contains("invalid flags"));
        assert!(err_of("1 sip:a 32").contains("unknown bits 0x20"));
        assert!(err_of("1 sip:a 0 high").contains("invalid priority 'high'"));
        assert!(err_of("1 sip:a 0 0 weight=abc").contains("invalid weight"));
    }

    #[test]
    fn database_rows() {
        let d = DestDef::from_row(
            7,
            1,
            " sip:10.0.0.1:5060 ",
            8,
            -3,
            "weight=50;duid=a",
            " gw ",
        )
        .unwrap();
        assert_eq!((d.set, d.flags, d.priority, d.line), (1, 8, -3, 7));
        assert_eq!(d.uri, "sip:10.0.0.1:5060");
        assert_eq!(d.attrs.weight, 50);
        assert_eq!(d.description, "gw");
        let e = |r: Result<DestDef, ListError>| r.unwrap_err().to_string();
        assert_eq!(
            e(DestDef::from_row(3, -1, "sip:a", 0, 0, "", "")),
            "line 3: invalid set id '-1': expected a non-negative integer"
        );
        assert!(e(DestDef::from_row(3, 1, "x", 0, 0, "", "")).contains("sip: or sips:"));
        assert!(e(DestDef::from_row(3, 1, "sip:a", -2, 0, "", "")).contains("invalid flags '-2'"));
        assert!(e(DestDef::from_row(3, 1, "sip:a", 64, 0, "", "")).contains("unknown bits"));
        assert!(e(DestDef::from_row(3, 1, "sip:a", 0, 1 << 40, "", "")).contains("priority"));
        assert!(e(DestDef::from_row(3, 1, "sip:a", 0, 0, "weight=x", "")).contains("weight"));
    }

    #[test]
    fn flags_forms() {
        assert_eq!(parse_flags("0x1F").unwrap(), 31);
        assert_eq!(parse_flags("12").unwrap(), 12);
        assert_eq!(parse_flags("0X04").unwrap(), 4);
    }

    #[test]
    fn all_errors_collected() {
        let text = "# header\n1 sip:a\n\nx sip:b\n1 sip:c 0 0 weight=200\n2 sip:d\n3 nope\n";
        let errs = parse_list(text).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![4, 5, 7]);
        assert_eq!(
            errs[0].to_string(),
            "line 4: invalid set id 'x': expected a non-negative integer"
        );
        let ok = parse_list("1 sip:a\n2 sip:b 1\n").unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].line, 2);
        assert_eq!(ok[1].flags, 1);
    }
}
