//! Retention: which backup sets have expired.
//!
//! A plan value first (`plan_expiry`), carried out elsewhere: the service
//! deletes the sets the plan names and a garbage collection reclaims their
//! data. The newest `keep_min` finished sets of an instance are never
//! expired, whatever their age, so a stalled backup schedule cannot leave an
//! instance with no backup at all.

use crate::time::MS_PER_DAY;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Sets older than this many days expire.
    pub keep_days: u32,
    /// Never expire the newest `keep_min` sets of an instance.
    pub keep_min: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_days: 7,
            keep_min: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAge {
    pub set_id: i64,
    pub finished_ms: i64,
}

/// Ids of the sets (of one instance) that have expired at `now_ms`.
pub fn plan_expiry(sets: &[SetAge], policy: RetentionPolicy, now_ms: i64) -> Vec<i64> {
    let mut by_age: Vec<&SetAge> = sets.iter().collect();
    by_age.sort_by(|a, b| {
        b.finished_ms
            .cmp(&a.finished_ms)
            .then(b.set_id.cmp(&a.set_id))
    });
    let cutoff = now_ms - policy.keep_days as i64 * MS_PER_DAY;
    by_age
        .into_iter()
        .skip(policy.keep_min as usize)
        .filter(|s| s.finished_ms < cutoff)
        .map(|s| s.set_id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_recent_and_the_newest() {
        let now = 100 * MS_PER_DAY;
        let sets: Vec<SetAge> = (0..10)
            .map(|i| SetAge {
                set_id: i,
                finished_ms: now - (i * 2) * MS_PER_DAY,
            })
            .collect();
        let p = RetentionPolicy {
            keep_days: 7,
            keep_min: 1,
        };
        // ages 0,2,4,6 kept; 8..18 expire.
        assert_eq!(plan_expiry(&sets, p, now), vec![4, 5, 6, 7, 8, 9]);
        // All old: keep the newest anyway.
        let old: Vec<SetAge> = (0..3)
            .map(|i| SetAge {
                set_id: i,
                finished_ms: i,
            })
            .collect();
        assert_eq!(plan_expiry(&old, p, now), vec![1, 0]);
        assert!(plan_expiry(&[], p, now).is_empty());
    }
}
