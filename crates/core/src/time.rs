//! UTC time as milliseconds since the Unix epoch, and its RFC 3339 form.
//!
//! Only what the wire formats need: `YYYY-MM-DDTHH:MM:SSZ`, weekdays for
//! backup windows, whole days for retention. Pure arithmetic (the civil
//! calendar algorithms of H. Hinnant), so it needs no clock and no time zone
//! database; the caller supplies "now".

pub const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

/// (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2024-01-16T11:04:56Z` (seconds precision, as the clouds use).
pub fn format_rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let rem = ms.rem_euclid(MS_PER_DAY) / 1000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM[:SS[.fff]]Z` (UTC only).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if !s.is_ascii() || b.len() < 17 || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    if b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') || b[13] != b':' {
        return None;
    }
    let (y, mo, d, h, mi) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
    );
    let body = &s[16..s.len() - 1];
    let (sec, frac_ms) = if body.is_empty() {
        (0, 0)
    } else {
        let body = body.strip_prefix(':')?;
        let (sec_s, frac) = match body.split_once('.') {
            Some((a, f)) => (a, Some(f)),
            None => (body, None),
        };
        if sec_s.len() != 2 || !sec_s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let ms = match frac {
            None => 0,
            Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
                let f3: String = f.chars().chain("000".chars()).take(3).collect();
                f3.parse::<i64>().ok()?
            }
            Some(_) => return None,
        };
        (sec_s.parse::<i64>().ok()?, ms)
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    // Reject dates like 02-31 that the arithmetic would roll over.
    if civil_from_days(days) != (y, mo as u32, d as u32) {
        return None;
    }
    Some(days * MS_PER_DAY + ((h * 60 + mi) * 60 + sec) * 1000 + frac_ms)
}

/// ISO weekday, Monday = 1 … Sunday = 7.
pub fn iso_weekday(ms: i64) -> u32 {
    // 1970-01-01 was a Thursday (4).
    ((ms.div_euclid(MS_PER_DAY) + 3).rem_euclid(7) + 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_705_403_096_000), "2024-01-16T11:04:56Z");
        assert_eq!(
            parse_rfc3339("2024-01-16T11:04:56Z"),
            Some(1_705_403_096_000)
        );
        assert_eq!(parse_rfc3339("2024-01-16T11:04Z"), Some(1_705_403_040_000));
        assert_eq!(
            parse_rfc3339("2024-01-16T11:04:56.5Z"),
            Some(1_705_403_096_500)
        );
        assert_eq!(parse_rfc3339("2024-02-30T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-01-16 11:04:56"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2024-01-16T11:04:5xZ"), None);
        assert_eq!(iso_weekday(0), 4);
        assert_eq!(iso_weekday(1_705_403_096_000), 2); // a Tuesday
    }

    proptest::proptest! {
        #[test]
        fn round_trip(secs in -2_000_000_000i64..8_000_000_000i64) {
            let ms = secs * 1000;
            proptest::prop_assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
        }
    }
}
