//! A task made of parts (one per shard, per replica set, per table range …):
//! the parent's state and progress follow from its parts' by one rule, so
//! every API reports the same thing.
//!
//! * Failed as soon as any part failed: no set is ever reported finished
//!   unless every part finished.
//! * Once every part ended: finished if all finished; cancelled if parts
//!   were cancelled and none finished; failed if some finished and others
//!   were cancelled (the set is incomplete).
//! * Otherwise the least advanced unfinished part sets the state, except
//!   that once any part copies data (running, finishing or finished) the
//!   parent is at least running, and it is finishing only when every
//!   unfinished part is.
//! * Progress is the sum over the parts: bytes done against bytes estimated.
//!
//! Parts only move forward (they never retry: only a whole task of
//! repeatable work does), so the parent does too (property-tested).

use crate::progress::Progress;
use crate::task::TaskState;

fn rank(s: TaskState) -> u8 {
    s.rank()
}

fn from_rank(r: u8) -> TaskState {
    match r {
        0 => TaskState::Pending,
        1 => TaskState::Checking,
        2 => TaskState::Preparing,
        3 => TaskState::Running,
        4 => TaskState::Finishing,
        _ => TaskState::Finished,
    }
}

/// The parent's state from its parts' states (`Pending` for no parts).
pub fn converge_state(parts: &[TaskState]) -> TaskState {
    if parts.contains(&TaskState::Failed) {
        return TaskState::Failed;
    }
    if !parts.is_empty() && parts.iter().all(|s| s.is_terminal()) {
        return if !parts.contains(&TaskState::Cancelled) {
            TaskState::Finished
        } else if parts.contains(&TaskState::Finished) {
            // Some parts finished, others were cancelled: no complete set.
            TaskState::Failed
        } else {
            TaskState::Cancelled
        };
    }
    let Some(hi) = parts.iter().map(|s| rank(*s)).max() else {
        return TaskState::Pending;
    };
    let lo = parts
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| rank(*s))
        .min()
        .expect("not all parts are terminal");
    let running = rank(TaskState::Running);
    if hi >= running && lo < running {
        TaskState::Running
    } else {
        from_rank(lo)
    }
}

/// The parent's progress: the sum of its parts'.
pub fn converge_progress(parts: &[Progress]) -> Progress {
    parts.iter().fold(Progress::default(), |a, p| Progress {
        bytes_done: a.bytes_done.saturating_add(p.bytes_done),
        bytes_total: a.bytes_total.saturating_add(p.bytes_total),
        bytes_stored: a.bytes_stored.saturating_add(p.bytes_stored),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(converge_state(&[]), Pending);
        assert_eq!(converge_state(&[Pending, Pending]), Pending);
        assert_eq!(converge_state(&[Pending, Checking]), Pending);
        assert_eq!(converge_state(&[Checking, Preparing]), Checking);
        assert_eq!(converge_state(&[Pending, Running]), Running);
        assert_eq!(converge_state(&[Finished, Preparing]), Running);
        assert_eq!(converge_state(&[Finishing, Running]), Running);
        assert_eq!(converge_state(&[Finishing, Finished]), Finishing);
        assert_eq!(converge_state(&[Finished, Finished]), Finished);
        assert_eq!(converge_state(&[Finished, Failed, Running]), Failed);
        assert_eq!(converge_state(&[Cancelled, Running]), Running);
        assert_eq!(converge_state(&[Cancelled, Cancelled]), Cancelled);
        assert_eq!(converge_state(&[Cancelled, Finished]), Failed);
        assert_eq!(converge_state(&[Cancelled, Failed]), Failed);
        let p = converge_progress(&[
            Progress {
                bytes_done: 1,
                bytes_total: 10,
                bytes_stored: 1,
            },
            Progress {
                bytes_done: 5,
                bytes_total: 10,
                bytes_stored: 2,
            },
        ]);
        assert_eq!((p.bytes_done, p.bytes_total, p.bytes_stored), (6, 20, 3));
        assert_eq!(p.percent(false), 30);
    }

    /// `to` is reachable from `from` by legal transitions (the runner
    /// persists every intermediate state).
    fn reachable(from: TaskState, to: TaskState) -> bool {
        let mut seen = vec![from];
        let mut i = 0;
        while i < seen.len() {
            for n in forward(seen[i]) {
                if !seen.contains(&n) {
                    seen.push(n);
                }
            }
            i += 1;
        }
        seen.contains(&to)
    }

    /// Legal moves of a part. Parts never retry (`Retrying` is for a whole
    /// task of repeatable work, which has no parts).
    fn forward(s: TaskState) -> Vec<TaskState> {
        TaskState::ALL
            .into_iter()
            .filter(|n| s.can_transition_to(*n) && *n != Retrying)
            .collect()
    }

    proptest! {
        /// Whatever part moves, by any legal transition, the parent moves
        /// forward or stays, never back; and it is finished only when every
        /// part is.
        #[test]
        fn parent_moves_only_forward(
            n in 1usize..5,
            moves in proptest::collection::vec((0usize..5, 0usize..8), 0..40),
        ) {
            let mut parts = vec![Pending; n];
            let mut parent = converge_state(&parts);
            for (i, k) in moves {
                let i = i % n;
                let next = forward(parts[i]);
                if next.is_empty() {
                    continue;
                }
                parts[i] = next[k % next.len()];
                let now = converge_state(&parts);
                prop_assert!(reachable(parent, now), "{parent} -> {now} for {parts:?}");
                prop_assert_eq!(now == Finished, parts.iter().all(|p| *p == Finished));
                parent = now;
            }
        }
    }
}
