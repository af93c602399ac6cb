//! Retention: which backup sets have expired.
//!
//! Each set carries its own expiry time (the policy's retention added to its
//! finish time, or one set explicitly; none = kept until deleted). A plan
//! value comes first (`plan_expiry`), carried out elsewhere: the service
//! deletes the sets the plan names and a garbage collection reclaims their
//! data. The newest `keep_min` sets of an instance are never expired,
//! whatever their expiry says, so a stalled backup schedule cannot leave an
//! instance with no backup at all.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAge {
    pub set_id: i64,
    pub finished_ms: i64,
    pub expires_ms: Option<i64>,
}

/// Ids of the sets (of one instance) that have expired at `now_ms`, oldest first.
pub fn plan_expiry(sets: &[SetAge], keep_min: usize, now_ms: i64) -> Vec<i64> {
    let mut by_age: Vec<&SetAge> = sets.iter().collect();
    by_age.sort_by(|a, b| {
        b.finished_ms
            .cmp(&a.finished_ms)
            .then(b.set_id.cmp(&a.set_id))
    });
    let mut out: Vec<i64> = by_age
        .into_iter()
        .skip(keep_min)
        .filter(|s| s.expires_ms.is_some_and(|e| e <= now_ms))
        .map(|s| s.set_id)
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MS_PER_DAY;

    #[test]
    fn keeps_unexpired_and_the_newest() {
        let now = 100 * MS_PER_DAY;
        // Set i finished 2i days ago and is kept 7 days.
        let sets: Vec<SetAge> = (0..10)
            .map(|i| SetAge {
                set_id: i,
                finished_ms: now - (i * 2) * MS_PER_DAY,
                expires_ms: Some(now - (i * 2) * MS_PER_DAY + 7 * MS_PER_DAY),
            })
            .collect();
        // ages 0,2,4,6 kept; 8..18 expire.
        assert_eq!(plan_expiry(&sets, 1, now), vec![9, 8, 7, 6, 5, 4]);
        // Never expiring sets stay.
        let mut pinned = sets.clone();
        pinned[9].expires_ms = None;
        assert_eq!(plan_expiry(&pinned, 1, now), vec![8, 7, 6, 5, 4]);
        // All expired: keep the newest anyway.
        let old: Vec<SetAge> = (0..3)
            .map(|i| SetAge {
                set_id: i,
                finished_ms: i,
                expires_ms: Some(i + 1),
            })
            .collect();
        assert_eq!(plan_expiry(&old, 1, now), vec![0, 1]);
        assert_eq!(plan_expiry(&old, 0, now), vec![0, 1, 2]);
        assert!(plan_expiry(&[], 1, now).is_empty());
    }
}
