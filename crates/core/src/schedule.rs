//! Backup policies: when automated backups run and how long sets are kept.
//!
//! A policy is a daily window in UTC (`02:00Z-03:00Z`, the clouds' format),
//! the weekdays it applies to and a retention in days. The scheduler in the
//! service asks [`BackupPolicy::occurrence`] for the window occurrence that
//! has not ended yet and creates one automated task per occurrence; the
//! occurrence's start is the task's identity, so a restart or a second
//! node never schedules the same window twice.

use crate::time::{MS_PER_DAY, format_rfc3339, iso_weekday};
use std::fmt;

const MS_PER_MIN: i64 = 60_000;
const MIN_PER_DAY: u32 = 1440;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("expected a window like 02:00Z-03:00Z (UTC, HH:mmZ-HH:mmZ, start and end different)")]
    Window,
    #[error("expected weekday names separated by commas, e.g. Monday,Wednesday,Friday")]
    Weekdays,
    #[error("retention must be from {min} to {max} days")]
    Retention { min: u32, max: u32 },
}

/// A daily window in UTC; it may cross midnight (`23:00Z-01:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes after 00:00 UTC.
    pub start_min: u32,
    pub end_min: u32,
}

fn parse_hhmm_z(s: &str) -> Option<u32> {
    let s = s.strip_suffix('Z')?;
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl Window {
    pub fn parse(s: &str) -> Result<Window, PolicyError> {
        let (a, b) = s.trim().split_once('-').ok_or(PolicyError::Window)?;
        let w = Window {
            start_min: parse_hhmm_z(a).ok_or(PolicyError::Window)?,
            end_min: parse_hhmm_z(b).ok_or(PolicyError::Window)?,
        };
        if w.start_min == w.end_min {
            return Err(PolicyError::Window);
        }
        Ok(w)
    }

    /// Length in minutes (1 to 1439).
    pub fn len_min(self) -> u32 {
        (self.end_min + MIN_PER_DAY - self.start_min) % MIN_PER_DAY
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}Z-{:02}:{:02}Z",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

const DAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A set of ISO weekdays (bit 0 = Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weekdays(u8);

impl Weekdays {
    pub const ALL: Weekdays = Weekdays(0x7f);

    /// Comma-separated English day names, any case, any order; duplicates
    /// are allowed, an empty list is not.
    pub fn parse(s: &str) -> Result<Weekdays, PolicyError> {
        let mut bits = 0u8;
        for part in s.split(',') {
            let part = part.trim();
            let i = DAY_NAMES
                .iter()
                .position(|d| d.eq_ignore_ascii_case(part))
                .ok_or(PolicyError::Weekdays)?;
            bits |= 1 << i;
        }
        Ok(Weekdays(bits))
    }

    /// `iso`: Monday = 1 … Sunday = 7.
    pub fn contains(self, iso: u32) -> bool {
        (1..=7).contains(&iso) && self.0 & (1 << (iso - 1)) != 0
    }
}

impl fmt::Display for Weekdays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = (0..7)
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| DAY_NAMES[i])
            .collect();
        f.write_str(&names.join(","))
    }
}

/// What an instance's automated backups follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPolicy {
    /// Automated backups on or off (retention applies either way).
    pub enabled: bool,
    pub window: Window,
    pub weekdays: Weekdays,
    /// A finished set expires this many days after it finished.
    pub retention_days: u32,
}

/// Retention limits accepted from any API.
pub const RETENTION_DAYS: std::ops::RangeInclusive<u32> = 1..=7300;

impl Default for BackupPolicy {
    /// Every day between 02:00 and 03:00 UTC, kept 7 days: what the clouds
    /// give a new instance.
    fn default() -> Self {
        BackupPolicy {
            enabled: true,
            window: Window {
                start_min: 120,
                end_min: 180,
            },
            weekdays: Weekdays::ALL,
            retention_days: 7,
        }
    }
}

/// One opening of the window: `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Occurrence {
    pub fn contains(self, ms: i64) -> bool {
        (self.start_ms..self.end_ms).contains(&ms)
    }
}

impl BackupPolicy {
    pub fn check_retention(days: u32) -> Result<u32, PolicyError> {
        if RETENTION_DAYS.contains(&days) {
            Ok(days)
        } else {
            Err(PolicyError::Retention {
                min: *RETENTION_DAYS.start(),
                max: *RETENTION_DAYS.end(),
            })
        }
    }

    /// The first occurrence of the window that has not ended at `now_ms`
    /// (the one open now, or the next one). The weekday is the one the
    /// window starts on. `None` when automated backups are off.
    pub fn occurrence(&self, now_ms: i64) -> Option<Occurrence> {
        if !self.enabled {
            return None;
        }
        let today = now_ms.div_euclid(MS_PER_DAY);
        // A window that started yesterday may still be open; the next
        // allowed weekday is at most a week away.
        (today - 1..=today + 7).find_map(|day| {
            let start_ms = day * MS_PER_DAY + self.window.start_min as i64 * MS_PER_MIN;
            let end_ms = start_ms + self.window.len_min() as i64 * MS_PER_MIN;
            (self.weekdays.contains(iso_weekday(start_ms)) && end_ms > now_ms)
                .then_some(Occurrence { start_ms, end_ms })
        })
    }

    /// The window of the next automated backup at `now_ms`: the one open
    /// now, unless its backup has already started (`taken` is the start of
    /// the window whose backup ran or runs), then the one after it.
    pub fn next_backup(&self, now_ms: i64, taken: Option<i64>) -> Option<Occurrence> {
        let o = self.occurrence(now_ms)?;
        if o.start_ms <= now_ms && taken == Some(o.start_ms) {
            self.occurrence(o.end_ms)
        } else {
            Some(o)
        }
    }

    /// The start of the next automated backup, in the clouds' minute format
    /// (`2026-11-23T02:00Z`).
    pub fn next_backup_time(&self, now_ms: i64) -> Option<String> {
        let o = self.occurrence(now_ms)?;
        let s = format_rfc3339(o.start_ms.max(now_ms - now_ms.rem_euclid(MS_PER_MIN)));
        // "…T02:00:00Z" → "…T02:00Z"
        Some(format!("{}Z", &s[..16]))
    }

    /// When a set that finished at `finished_ms` expires.
    pub fn expiry(&self, finished_ms: i64) -> i64 {
        finished_ms + self.retention_days as i64 * MS_PER_DAY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_backup_skips_the_open_window_once_its_backup_ran() {
        let p = BackupPolicy {
            window: Window::parse("02:00Z-03:00Z").unwrap(),
            ..Default::default()
        };
        let day = 20_000 * MS_PER_DAY;
        let in_window = day + 2 * 60 * MS_PER_MIN + 30 * MS_PER_MIN;
        let open = p.next_backup(in_window, None).unwrap();
        assert_eq!(open.start_ms, day + 120 * MS_PER_MIN);
        let next = p.next_backup(in_window, Some(open.start_ms)).unwrap();
        assert_eq!(next.start_ms, open.start_ms + MS_PER_DAY);
        // Before the window opens, a taken earlier window changes nothing.
        let before = day + 60 * MS_PER_MIN;
        assert_eq!(
            p.next_backup(before, Some(open.start_ms - MS_PER_DAY))
                .unwrap(),
            open
        );
    }
    use crate::time::parse_rfc3339;

    fn t(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn windows() {
        let w = Window::parse("02:00Z-03:00Z").unwrap();
        assert_eq!((w.start_min, w.end_min, w.len_min()), (120, 180, 60));
        assert_eq!(w.to_string(), "02:00Z-03:00Z");
        let wrap = Window::parse("23:30Z-00:30Z").unwrap();
        assert_eq!(wrap.len_min(), 60);
        for bad in [
            "",
            "02:00-03:00",
            "2:00Z-03:00Z",
            "24:00Z-01:00Z",
            "02:60Z-03:00Z",
            "02:00Z-02:00Z",
            "02:00Z",
            "aa:bbZ-cc:ddZ",
            "+2:00Z-03:00Z",
        ] {
            assert_eq!(Window::parse(bad), Err(PolicyError::Window), "{bad}");
        }
    }

    #[test]
    fn weekdays() {
        let d = Weekdays::parse("Friday, monday,Monday").unwrap();
        assert_eq!(d.to_string(), "Monday,Friday");
        assert!(d.contains(1) && d.contains(5) && !d.contains(2) && !d.contains(0));
        assert_eq!(Weekdays::ALL.to_string().split(',').count(), 7);
        for bad in ["", "Mon", "Monday,,Tuesday", "Funday"] {
            assert_eq!(Weekdays::parse(bad), Err(PolicyError::Weekdays), "{bad}");
        }
    }

    #[test]
    fn occurrences() {
        let p = BackupPolicy::default();
        // 2024-01-16 is a Tuesday.
        let o = p.occurrence(t("2024-01-16T01:00:00Z")).unwrap();
        assert_eq!(o.start_ms, t("2024-01-16T02:00:00Z"));
        assert_eq!(o.end_ms, t("2024-01-16T03:00:00Z"));
        // Inside the window: that one.
        let o2 = p.occurrence(t("2024-01-16T02:59:59Z")).unwrap();
        assert_eq!(o, o2);
        assert!(o.contains(t("2024-01-16T02:30:00Z")));
        // At its end: tomorrow's.
        let o3 = p.occurrence(t("2024-01-16T03:00:00Z")).unwrap();
        assert_eq!(o3.start_ms, t("2024-01-17T02:00:00Z"));
        // Weekdays: only Mondays → next Monday.
        let mon = BackupPolicy {
            weekdays: Weekdays::parse("Monday").unwrap(),
            ..p
        };
        let o4 = mon.occurrence(t("2024-01-16T01:00:00Z")).unwrap();
        assert_eq!(o4.start_ms, t("2024-01-22T02:00:00Z"));
        // A window across midnight, still open after midnight.
        let night = BackupPolicy {
            window: Window::parse("23:00Z-01:00Z").unwrap(),
            ..p
        };
        let o5 = night.occurrence(t("2024-01-17T00:30:00Z")).unwrap();
        assert_eq!(o5.start_ms, t("2024-01-16T23:00:00Z"));
        assert_eq!(o5.end_ms, t("2024-01-17T01:00:00Z"));
        // Off: nothing.
        let off = BackupPolicy {
            enabled: false,
            ..p
        };
        assert_eq!(off.occurrence(0), None);
        assert_eq!(
            p.next_backup_time(t("2024-01-16T01:00:00Z")).unwrap(),
            "2024-01-16T02:00Z"
        );
        assert_eq!(p.expiry(0), 7 * MS_PER_DAY);
    }

    proptest::proptest! {
        /// The occurrence found is the earliest one not ended, on an allowed day.
        #[test]
        fn occurrence_is_next(now in 0i64..4_000_000_000_000, start in 0u32..1440, len in 1u32..1440, days in 1u8..128) {
            let p = BackupPolicy {
                enabled: true,
                window: Window { start_min: start, end_min: (start + len) % 1440 },
                weekdays: Weekdays(days),
                retention_days: 7,
            };
            let o = p.occurrence(now).unwrap();
            proptest::prop_assert!(o.end_ms > now);
            proptest::prop_assert_eq!(o.end_ms - o.start_ms, len as i64 * MS_PER_MIN);
            proptest::prop_assert!(p.weekdays.contains(iso_weekday(o.start_ms)));
            // Nothing earlier qualifies: the previous start a day before either
            // ended already or is on a day not allowed.
            let prev = o.start_ms - MS_PER_DAY;
            proptest::prop_assert!(prev + len as i64 * MS_PER_MIN <= now || !p.weekdays.contains(iso_weekday(prev)));
        }
    }
}
