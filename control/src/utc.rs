//! Calendar fields of a Unix time in UTC, for the timestamps sipvane writes
//! (dispatcher snapshots, accounting rows) without a date-time dependency.

/// `(year, month, day, hour, minute, second)` of `secs` seconds after
/// 1970-01-01T00:00:00Z.
pub fn fields(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Unix seconds of `YYYY-MM-DD HH:MM:SS` (UTC; anything after the seconds,
/// such as a fraction, is ignored), as databases print a timestamp.
pub fn parse_sql_time(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| std::str::from_utf8(&b[r]).ok()?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// (year, month, day) → days since 1970-01-01 (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(fields(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(fields(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(fields(1_764_849_600 + 3_723), (2025, 12, 4, 13, 2, 3));
    }

    #[test]
    fn parses_what_databases_print() {
        for t in [0, 951_782_400, 1_764_849_600 + 3_723, 1_900_000_000] {
            let (y, m, d, hh, mm, ss) = fields(t);
            let text = format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}");
            assert_eq!(parse_sql_time(&text), Some(t), "{text}");
        }
        assert_eq!(
            parse_sql_time("2030-05-28 21:32:15.25"),
            parse_sql_time("2030-05-28 21:32:15")
        );
        assert_eq!(parse_sql_time("2030-13-28 21:32:15"), None);
        assert_eq!(parse_sql_time("yesterday"), None);
    }
}
