//! Progress and ETA math, shared by every renderer (CLI bar, API dialects).
//!
//! Progress is always bytes really streamed against the database server's
//! own estimate of the total. Estimates can be wrong (WAL written during the
//! backup is not in the estimate), so the percentage is clamped below 100
//! until the task is finished: only a finished task shows 100 %.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes read from the database so far.
    pub bytes_done: u64,
    /// The server's estimate of the total, 0 when unknown.
    pub bytes_total: u64,
    /// Bytes newly written to the repository (after dedup, compression).
    pub bytes_stored: u64,
}

impl Progress {
    /// Whole percent 0..=99 while running; `finished` gives 100.
    pub fn percent(&self, finished: bool) -> u8 {
        if finished {
            return 100;
        }
        if self.bytes_total == 0 {
            return 0;
        }
        let p = (self.bytes_done as u128 * 100 / self.bytes_total as u128) as u64;
        p.min(99) as u8
    }

    /// The total to show a progress bar against: never below what is done.
    pub fn display_total(&self) -> u64 {
        self.bytes_total.max(self.bytes_done)
    }
}

/// Rate over a sliding time window, as restic's rate estimator does: a rate
/// from the whole run reacts too slowly, a rate from the last sample jitters.
#[derive(Debug, Clone)]
pub struct RateEstimator {
    window_ms: u64,
    samples: VecDeque<(u64, u64)>,
}

impl RateEstimator {
    pub fn new(window_ms: u64) -> Self {
        RateEstimator {
            window_ms: window_ms.max(1),
            samples: VecDeque::new(),
        }
    }

    /// Record that `bytes` (a running total) were done at `t_ms`.
    pub fn record(&mut self, t_ms: u64, bytes: u64) {
        if let Some(&(lt, lb)) = self.samples.back()
            && (t_ms < lt || bytes < lb)
        {
            // Clock went back or counter reset: start over.
            self.samples.clear();
        }
        self.samples.push_back((t_ms, bytes));
        while let (Some(&(first, _)), Some(&(last, _))) =
            (self.samples.front(), self.samples.back())
        {
            if last - first > self.window_ms && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Bytes per second over the window, `None` before two samples.
    pub fn rate(&self) -> Option<f64> {
        let (t0, b0) = *self.samples.front()?;
        let (t1, b1) = *self.samples.back()?;
        if t1 <= t0 {
            return None;
        }
        Some((b1 - b0) as f64 * 1000.0 / (t1 - t0) as f64)
    }

    /// Seconds until `total` is reached at the current rate.
    pub fn eta_secs(&self, total: u64) -> Option<u64> {
        let rate = self.rate()?;
        let (_, done) = *self.samples.back()?;
        if rate <= 0.0 {
            return None;
        }
        Some((total.saturating_sub(done) as f64 / rate).ceil() as u64)
    }
}

/// Decides when throttled progress is due to be persisted (at most one write
/// per `interval_ms` per task, plus always the last one).
#[derive(Debug, Clone)]
pub struct Throttle {
    interval_ms: u64,
    last: Option<u64>,
}

impl Throttle {
    pub fn new(interval_ms: u64) -> Self {
        Throttle {
            interval_ms,
            last: None,
        }
    }

    pub fn due(&mut self, now_ms: u64) -> bool {
        match self.last {
            Some(l) if now_ms < l + self.interval_ms && now_ms >= l => false,
            _ => {
                self.last = Some(now_ms);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_clamped_until_finished() {
        let p = Progress {
            bytes_done: 150,
            bytes_total: 100,
            bytes_stored: 0,
        };
        assert_eq!(p.percent(false), 99);
        assert_eq!(p.percent(true), 100);
        assert_eq!(p.display_total(), 150);
        let p = Progress {
            bytes_done: 25,
            bytes_total: 100,
            bytes_stored: 0,
        };
        assert_eq!(p.percent(false), 25);
        assert_eq!(Progress::default().percent(false), 0);
    }

    #[test]
    fn rate_over_window() {
        let mut r = RateEstimator::new(10_000);
        assert_eq!(r.rate(), None);
        r.record(0, 0);
        r.record(1000, 1000);
        assert_eq!(r.rate(), Some(1000.0));
        assert_eq!(r.eta_secs(5000), Some(4));
        // Old samples fall out of the window: the rate follows the recent speed.
        for s in 2..=30 {
            r.record(s * 1000, 1000 + (s - 1) * 100);
        }
        let rate = r.rate().unwrap();
        assert!((rate - 100.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn throttle_at_most_once_per_interval() {
        let mut t = Throttle::new(1000);
        assert!(t.due(0));
        assert!(!t.due(500));
        assert!(!t.due(999));
        assert!(t.due(1000));
        assert!(!t.due(1500));
        assert!(t.due(2600));
    }
}

/// The live state of one running task, shared between the thread doing the
/// work and the service that persists and serves it. Plain atomics: the
/// worker never waits on the catalog, and readers never wait on the worker.
#[derive(Debug)]
pub struct LiveTask {
    state: std::sync::atomic::AtomicU8,
    pub bytes_done: std::sync::atomic::AtomicU64,
    pub bytes_total: std::sync::atomic::AtomicU64,
    pub bytes_stored: std::sync::atomic::AtomicU64,
    cancel: std::sync::atomic::AtomicBool,
    /// Parts the engine opened (a replica set, a shard …), in order.
    parts: std::sync::Mutex<Vec<(String, std::sync::Arc<LiveTask>)>>,
}

impl Default for LiveTask {
    fn default() -> Self {
        LiveTask {
            state: std::sync::atomic::AtomicU8::new(0),
            bytes_done: Default::default(),
            bytes_total: Default::default(),
            bytes_stored: Default::default(),
            cancel: Default::default(),
            parts: Default::default(),
        }
    }
}

impl LiveTask {
    pub fn state(&self) -> crate::TaskState {
        crate::TaskState::ALL[self.state.load(std::sync::atomic::Ordering::Acquire) as usize]
    }

    pub fn set_state(&self, s: crate::TaskState) {
        let i = crate::TaskState::ALL
            .iter()
            .position(|x| *x == s)
            .expect("known state");
        self.state
            .store(i as u8, std::sync::atomic::Ordering::Release);
    }

    pub fn progress(&self) -> Progress {
        use std::sync::atomic::Ordering::Relaxed;
        Progress {
            bytes_done: self.bytes_done.load(Relaxed),
            bytes_total: self.bytes_total.load(Relaxed),
            bytes_stored: self.bytes_stored.load(Relaxed),
        }
    }

    /// Cancels the task and every part of it.
    pub fn cancel(&self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Release);
        for (_, p) in self.parts.lock().expect("parts lock").iter() {
            p.cancel();
        }
    }

    /// Opens a part of this task (the engine's plan: one per replica set,
    /// shard …): its own state and counters, cancelled with the task. The
    /// service records it as a sub-task and derives this task's state and
    /// progress from its parts (`crate::parts`).
    pub fn add_part(&self, name: &str) -> std::sync::Arc<LiveTask> {
        let p = std::sync::Arc::new(LiveTask::default());
        let mut parts = self.parts.lock().expect("parts lock");
        parts.push((name.to_string(), p.clone()));
        // Checked under the lock `cancel` takes: a part opened after the
        // task was cancelled starts cancelled.
        if self.is_cancelled() {
            p.cancel();
        }
        p
    }

    /// The task's progress as every API shows it: its own, or with parts,
    /// their sum (`crate::parts`), and the bytes the task itself stored.
    pub fn overall_progress(&self) -> Progress {
        let own = self.progress();
        let parts = self.parts();
        if parts.is_empty() {
            return own;
        }
        let ps: Vec<Progress> = parts.iter().map(|(_, p)| p.progress()).collect();
        let mut p = crate::parts::converge_progress(&ps);
        p.bytes_stored = p.bytes_stored.max(own.bytes_stored);
        p
    }

    /// The parts opened so far, in order.
    pub fn parts(&self) -> Vec<(String, std::sync::Arc<LiveTask>)> {
        self.parts.lock().expect("parts lock").clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn cancel_flag(&self) -> &std::sync::atomic::AtomicBool {
        &self.cancel
    }
}
