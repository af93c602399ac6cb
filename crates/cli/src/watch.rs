//! Following a task or job until it ends: a live progress bar on a terminal,
//! plain periodic lines otherwise (logs, CI, pipes).

use crate::client::{CallError, Client};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use stowage_core::RateEstimator;

const POLL: Duration = Duration::from_millis(500);
const PLAIN_EVERY: Duration = Duration::from_secs(2);
/// How long the server may be unreachable mid-follow before giving up.
const LOST_AFTER: Duration = Duration::from_secs(10);

fn terminal(state: &str) -> bool {
    matches!(state, "finished" | "failed" | "cancelled")
}

/// Polls `path` until the task/job ends; returns its last JSON. Progress
/// goes to stderr (a bar on a terminal, plain lines otherwise), so stdout
/// keeps only the result (or `--json`). The rate and ETA count only the time
/// since data started moving, not time spent waiting.
pub fn follow(c: &Client, path: &str, label: &str, _json: bool) -> Result<Value, CallError> {
    let tty = std::io::stderr().is_terminal();
    // One bar for the task and, below it, one per part (shard, replica set …).
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let bar = if tty {
        let b = multi.add(ProgressBar::new(0));
        b.set_style(bar_style());
        b.set_prefix(label.to_string());
        Some(b)
    } else {
        None
    };
    let mut part_bars: Vec<ProgressBar> = Vec::new();
    let mut rate = RateEstimator::new(10_000);
    let mut moving_since: Option<Instant> = None;
    let mut last_line = Instant::now() - PLAIN_EVERY;
    let mut last_state = String::new();
    let mut lost_since: Option<Instant> = None;
    loop {
        let v = match c.get(path) {
            Ok(v) => {
                lost_since = None;
                v
            }
            // The server stopping (e.g. SIGTERM) ends its tasks first; give
            // it a moment to come back or answer before giving up.
            Err(CallError::Unreachable(m)) if !last_state.is_empty() => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > LOST_AFTER {
                    return Err(CallError::Unreachable(format!(
                        "lost contact with the server while {label} was {last_state} ({m}); \
                         it may have been stopped: see the task later with `stowage task show`/`job show`"
                    )));
                }
                std::thread::sleep(POLL);
                continue;
            }
            Err(e) => return Err(e),
        };
        let state = v["state"].as_str().unwrap_or("?").to_string();
        let done = v["progress"]["bytes_done"].as_u64().unwrap_or(0);
        let total = v["progress"]["bytes_total"].as_u64().unwrap_or(0);
        let pct = v["progress"]["percent"].as_u64().unwrap_or(0);
        let waiting = state == "pending";
        let mut started_moving = false;
        if !waiting && moving_since.is_none() && (done > 0 || state == "running") {
            moving_since = Some(Instant::now());
            started_moving = true;
        }
        if let Some(t0) = moving_since {
            rate.record(t0.elapsed().as_millis() as u64, done);
        }
        let parts = v["parts"].as_array().cloned().unwrap_or_default();
        if bar.is_some() {
            for (i, p) in parts.iter().enumerate() {
                if part_bars.len() <= i {
                    let b = multi.add(ProgressBar::new(0));
                    b.set_style(bar_style());
                    b.set_prefix(format!("  part {}", p["part"].as_str().unwrap_or("?")));
                    part_bars.push(b);
                }
                let b = &part_bars[i];
                let (d, t) = (
                    p["progress"]["bytes_done"].as_u64().unwrap_or(0),
                    p["progress"]["bytes_total"].as_u64().unwrap_or(0),
                );
                b.set_length(t.max(d));
                b.set_position(d);
                b.set_message(p["state"].as_str().unwrap_or("?").to_string());
            }
        }
        let parts_note = if parts.is_empty() {
            String::new()
        } else {
            let each: Vec<String> = parts
                .iter()
                .map(|p| {
                    format!(
                        "{} {} {}%",
                        p["part"].as_str().unwrap_or("?"),
                        p["state"].as_str().unwrap_or("?"),
                        p["progress"]["percent"].as_u64().unwrap_or(0)
                    )
                })
                .collect();
            format!(" [parts: {}]", each.join(", "))
        };
        let wait_note = match v["scheduled_for"].as_str() {
            Some(at) if waiting => format!("waiting for its window at {at}"),
            _ if waiting => "waiting to start".to_string(),
            _ => String::new(),
        };
        match &bar {
            Some(b) => {
                if waiting {
                    // No bar for a task that has not started: nothing to measure.
                    b.set_style(wait_style());
                    b.set_message(wait_note.clone());
                    b.tick();
                } else {
                    if last_state == "pending" || last_state.is_empty() {
                        b.set_style(bar_style());
                    }
                    b.set_length(total.max(done));
                    b.set_position(done);
                    if started_moving {
                        // Rate and ETA from here, not from the wait before.
                        b.reset_eta();
                    }
                    b.set_message(state.clone());
                }
            }
            None => {
                if state != last_state || last_line.elapsed() >= PLAIN_EVERY || terminal(&state) {
                    let line = if waiting {
                        format!("{label}: {wait_note}")
                    } else {
                        let speed = rate
                            .rate()
                            .map(|r| format!(", {}/s", HumanBytes(r as u64)))
                            .unwrap_or_default();
                        let eta = match rate.eta_secs(total) {
                            Some(s) if !terminal(&state) && total > 0 => format!(", ETA {s} s"),
                            _ => String::new(),
                        };
                        format!(
                            "{label}: {state} {pct}% {} of {}{speed}{eta}{parts_note}",
                            HumanBytes(done),
                            HumanBytes(total.max(done))
                        )
                    };
                    eprintln!("{line}");
                    last_line = Instant::now();
                }
            }
        }
        last_state = state.clone();
        if terminal(&state) {
            for (b, p) in part_bars.iter().zip(&parts) {
                let st = p["state"].as_str().unwrap_or("?").to_string();
                if st == "finished" {
                    b.finish_with_message(st);
                } else {
                    b.abandon_with_message(st);
                }
            }
            if let Some(b) = bar {
                if state == "finished" {
                    b.finish_with_message(state);
                } else {
                    b.abandon_with_message(state);
                }
            }
            return Ok(v);
        }
        std::thread::sleep(POLL);
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {msg:>10} [{elapsed_precise}] [{wide_bar:.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
        .expect("template")
        .progress_chars("=> ")
}

fn wait_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {spinner} {msg} [{elapsed_precise}]").expect("template")
}
