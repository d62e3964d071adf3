//! The snapshot of the last good destination table read from a database.
//!
//! sipvane rewrites it after every successful read and uses it at start-up when
//! the database is unavailable. It is a Kamailio `dispatcher.list` file, so an
//! operator can read it, `sipvane check-config` can validate it, and in an
//! emergency it can serve as `source = "file:…"` (or as Kamailio's own list):
//!
//! ```text
//! # sipvane dispatcher snapshot (Kamailio dispatcher.list format: setid destination flags priority attrs)
//! # source: postgres://sipvane:***@db/kamailio (table dispatcher)
//! # written: 2026-11-23T18:52:49Z
//! # destinations: 2
//! # row id=1: Asterisk one
//! 1 sip:10.0.0.1:5060 0 10 weight=50;duid=ast1;maxload=500
//! # row id=2
//! 1 sip:10.0.0.2:5060 0 5
//! ```
//!
//! The `# row id=N: description` comment before each line keeps what the list
//! format has no field for; [`load_snapshot`] reads it back.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::db::{check_uri, RowDef};

/// Renders `rows` as snapshot text (pure). Fails when a row cannot be written
/// as a `dispatcher.list` line (blanks inside an attribute value), naming it.
pub fn format_snapshot(
    rows: &[RowDef],
    source_desc: &str,
    written: SystemTime,
) -> Result<String, String> {
    let one_line = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let mut out = String::with_capacity(160 + rows.len() * 96);
    out.push_str(
        "# sipvane dispatcher snapshot (Kamailio dispatcher.list format: \
         setid destination flags priority attrs)\n",
    );
    out.push_str(&format!("# source: {}\n", one_line(source_desc)));
    out.push_str(&format!("# written: {}\n", rfc3339_utc(written)));
    out.push_str(&format!("# destinations: {}\n", rows.len()));
    out.push_str(
        "# sipvane rewrites this file after every successful read of the source; edits are lost.\n",
    );
    for r in rows {
        let description = one_line(&r.description);
        if description.trim().is_empty() {
            out.push_str(&format!("# row id={}\n", r.row_id));
        } else {
            out.push_str(&format!("# row id={}: {}\n", r.row_id, description.trim()));
        }
        out.push_str(&format!("{} {} {} {}", r.set, r.uri, r.flags, r.priority));
        let attrs =
            list_attrs(&r.attrs_raw).map_err(|e| format!("dispatcher row id={}: {e}", r.row_id))?;
        if !attrs.is_empty() {
            out.push(' ');
            out.push_str(&attrs);
        }
        out.push('\n');
    }
    Ok(out)
}

/// `attrs` as one whitespace-free field. Kamailio's attribute parser ignores
/// blanks around `;` and `=`, so those are dropped; blanks inside a value (or
/// a value starting with `#`) cannot be written.
fn list_attrs(attrs: &str) -> Result<String, String> {
    let attrs = attrs.trim();
    let canonical = if attrs.contains(char::is_whitespace) {
        attrs
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|seg| match seg.split_once('=') {
                Some((k, v)) => format!("{}={}", k.trim(), v.trim()),
                None => seg.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(";")
    } else {
        attrs.to_owned()
    };
    if canonical.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "attrs '{}' contain blanks inside a value, which a dispatcher.list line cannot hold",
            attrs.escape_debug()
        ));
    }
    if canonical.starts_with('#') {
        return Err(format!(
            "attrs '{canonical}' start with '#', which a dispatcher.list line reads as a comment"
        ));
    }
    Ok(canonical)
}

/// Writes the snapshot atomically: a temporary file next to `path`, flushed to
/// disk, then renamed over it, so a crash leaves the old or the new file, never
/// half of one.
pub fn write_snapshot(path: &Path, rows: &[RowDef], source_desc: &str) -> io::Result<()> {
    let text = format_snapshot(rows, source_desc, SystemTime::now())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; not every file system allows syncing a
    // directory, and the data is already safe in either name.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

/// Reads a snapshot written by [`write_snapshot`] (or any `dispatcher.list`
/// file: lines without a `# row id=` comment get their line number as
/// `row_id`). Every problem is reported, prefixed with the file name.
pub fn load_snapshot(path: &Path) -> Result<Vec<RowDef>, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("cannot read snapshot {}: {e}", path.display()))?;
    parse_snapshot(&text).map_err(|errors| {
        format!(
            "snapshot {} is invalid: {}",
            path.display(),
            errors.join("; ")
        )
    })
}

/// Parses snapshot text (pure). Errors read `line 5: …`.
pub fn parse_snapshot(text: &str) -> Result<Vec<RowDef>, Vec<String>> {
    let mut defs = Vec::new();
    let mut errors = Vec::new();
    // (row id, description) from the `# row id=` comment above the next line.
    let mut pending: Option<(i64, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(p) = row_comment(comment) {
                pending = Some(p);
            }
            continue;
        }
        match parse_line(line, line_no, pending.take()) {
            Ok(d) => defs.push(d),
            Err(e) => errors.push(format!("line {line_no}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(defs)
    } else {
        Err(errors)
    }
}

/// `" row id=7: text"` → `(7, "text")`.
fn row_comment(comment: &str) -> Option<(i64, String)> {
    let rest = comment.trim_start().strip_prefix("row id=")?;
    let (id, desc) = match rest.split_once(':') {
        Some((id, d)) => (id, d.trim()),
        None => (rest, ""),
    };
    Some((id.trim().parse().ok()?, desc.to_owned()))
}

fn parse_line(
    line: &str,
    line_no: usize,
    pending: Option<(i64, String)>,
) -> Result<RowDef, String> {
    let mut rest = line;
    let mut next = || -> Option<&str> {
        let s = rest.trim_start();
        if s.is_empty() || s.starts_with('#') {
            return None;
        }
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        let (field, tail) = s.split_at(end);
        rest = tail;
        Some(field)
    };
    let set_s = next().unwrap_or("");
    let set = if set_s.bytes().all(|b| b.is_ascii_digit()) {
        set_s
            .parse::<u32>()
            .map_err(|_| format!("invalid set id '{set_s}'"))?
    } else {
        return Err(format!(
            "invalid set id '{set_s}': expected a non-negative integer"
        ));
    };
    let uri = next().ok_or_else(|| format!("set {set}: missing destination URI"))?;
    check_uri(uri)?;
    let flags = match next() {
        Some(f) => match f.strip_prefix("0x").or_else(|| f.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => f.parse::<u32>(),
        }
        .map_err(|_| format!("invalid flags '{f}'"))?,
        None => 0,
    };
    let priority = match next() {
        Some(p) => p
            .parse::<i32>()
            .map_err(|_| format!("invalid priority '{p}'"))?,
        None => 0,
    };
    let attrs_raw = next().unwrap_or("").to_owned();
    let trailing = rest.trim();
    let (row_id, description) = match pending {
        Some((id, d)) => (id, d),
        None => {
            // sipvane's list format allows a description after the attributes.
            let d = if trailing.starts_with('#') {
                ""
            } else {
                trailing
            };
            (i64::try_from(line_no).unwrap_or(i64::MAX), d.to_owned())
        }
    };
    Ok(RowDef {
        set,
        uri: uri.to_owned(),
        flags,
        priority,
        attrs_raw,
        description,
        row_id,
    })
}

/// `2026-11-23T18:52:49Z` for `t` (UTC, whole seconds; times before 1970 print
/// as the epoch).
fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d, hh, mm, ss) = crate::utc::fields(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn def(id: i64, set: u32, uri: &str, attrs: &str, desc: &str) -> RowDef {
        RowDef {
            set,
            uri: uri.into(),
            flags: 8,
            priority: 10,
            attrs_raw: attrs.into(),
            description: desc.into(),
            row_id: id,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day 2000
        assert_eq!(rfc3339_utc(t), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_459_969);
        assert_eq!(rfc3339_utc(t), "2026-11-23T18:52:49Z");
    }

    #[test]
    fn format_and_parse_round_trip() {
        let rows = vec![
            def(
                1,
                1,
                "sip:10.0.0.1:5060",
                "weight=50;duid=ast1;maxload=500",
                "Asterisk one",
            ),
            def(2, 1, "sip:10.0.0.2:5060", "", ""),
            def(
                9,
                2,
                "sips:pbx.example;transport=tls",
                "",
                "no attrs: but a description",
            ),
        ];
        let t = UNIX_EPOCH + Duration::from_secs(1_795_459_969);
        let text = format_snapshot(&rows, "postgres://u:***@db/k (table dispatcher)", t).unwrap();
        let expected = "\
# sipvane dispatcher snapshot (Kamailio dispatcher.list format: setid destination flags priority attrs)
# source: postgres://u:***@db/k (table dispatcher)
# written: 2026-11-23T18:52:49Z
# destinations: 3
# sipvane rewrites this file after every successful read of the source; edits are lost.
# row id=1: Asterisk one
1 sip:10.0.0.1:5060 8 10 weight=50;duid=ast1;maxload=500
# row id=2
1 sip:10.0.0.2:5060 8 10
# row id=9: no attrs: but a description
2 sips:pbx.example;transport=tls 8 10
";
        assert_eq!(text, expected);
        assert_eq!(parse_snapshot(&text).unwrap(), rows);
    }

    #[test]
    fn attrs_with_blanks() {
        assert_eq!(
            list_attrs(" weight = 5 ; duid=a ;").unwrap(),
            "weight=5;duid=a"
        );
        assert_eq!(list_attrs("weight=5;").unwrap(), "weight=5;");
        assert!(list_attrs("duid=a b").unwrap_err().contains("blanks"));
        assert!(list_attrs("#x=1").unwrap_err().contains("comment"));
        let e =
            format_snapshot(&[def(4, 1, "sip:a", "duid=a b", "")], "s", UNIX_EPOCH).unwrap_err();
        assert!(e.starts_with("dispatcher row id=4: "), "{e}");
    }

    #[test]
    fn plain_kamailio_list() {
        let text =
            "# a comment\n\n1 sip:a\n2 sip:b 0x9 -3 weight=1 backup box\n3 sip:c 0 0 # trailing\n";
        let defs = parse_snapshot(text).unwrap();
        assert_eq!(defs.len(), 3);
        assert_eq!((defs[0].set, defs[0].flags, defs[0].row_id), (1, 0, 3));
        assert_eq!(
            (defs[1].flags, defs[1].priority, defs[1].attrs_raw.as_str()),
            (9, -3, "weight=1")
        );
        assert_eq!(defs[1].description, "backup box");
        assert_eq!(defs[2].description, "");
    }

    #[test]
    fn parse_errors_name_lines() {
        let text = "x sip:a\n1\n1 http://a\n1 sip:a z\n1 sip:a 0 p\n99999999999 sip:a\n-1 sip:a\n";
        let errs = parse_snapshot(text).unwrap_err();
        assert_eq!(
            errs,
            vec![
                "line 1: invalid set id 'x': expected a non-negative integer",
                "line 2: set 1: missing destination URI",
                "line 3: destination 'http://a' is not a sip: or sips: URI",
                "line 4: invalid flags 'z'",
                "line 5: invalid priority 'p'",
                "line 6: invalid set id '99999999999'",
                "line 7: invalid set id '-1': expected a non-negative integer",
            ]
        );
    }

    #[test]
    fn write_is_atomic_and_loadable() {
        let dir = std::env::temp_dir().join(format!("sipvane-snap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dispatcher.snapshot");
        let rows = vec![def(1, 1, "sip:a", "weight=5", "d")];
        write_snapshot(&path, &rows, "src").unwrap();
        assert_eq!(load_snapshot(&path).unwrap(), rows);
        write_snapshot(&path, &[], "src").unwrap();
        assert_eq!(load_snapshot(&path).unwrap(), vec![]);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("dispatcher.snapshot")]);
        // A row that cannot be written leaves the old file in place.
        let bad = vec![def(2, 1, "sip:a", "duid=a b", "")];
        let e = write_snapshot(&path, &bad, "src").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(load_snapshot(&path).unwrap(), vec![]);
        fs::write(&path, "1 nope\n").unwrap();
        let e = load_snapshot(&path).unwrap_err();
        assert!(e.contains("is invalid: line 1: destination 'nope'"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
        let e = load_snapshot(&dir.join("missing")).unwrap_err();
        assert!(e.starts_with("cannot read snapshot "), "{e}");
        assert!(write_snapshot(&dir.join("missing/x"), &rows, "s").is_err());
    }
}
