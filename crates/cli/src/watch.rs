//! Following a task or job until it ends: a live progress bar on a terminal,
//! plain periodic lines otherwise (logs, CI, pipes).

use crate::client::{CallError, Client};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use stowage_core::RateEstimator;

const POLL: Duration = Duration::from_millis(500);
const PLAIN_EVERY: Duration = Duration::from_secs(2);

fn terminal(state: &str) -> bool {
    matches!(state, "finished" | "failed" | "cancelled")
}

/// Polls `path` until the task/job ends; returns its last JSON. Plain lines
/// go to stdout, or to stderr when stdout is reserved for `--json` output.
pub fn follow(c: &Client, path: &str, label: &str, json: bool) -> Result<Value, CallError> {
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{prefix} {msg:>10} [{elapsed_precise}] [{wide_bar:.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
                .expect("template")
                .progress_chars("=> "),
        );
        b.set_prefix(label.to_string());
        Some(b)
    } else {
        None
    };
    let mut rate = RateEstimator::new(10_000);
    let started = Instant::now();
    let mut last_line = Instant::now() - PLAIN_EVERY;
    let mut last_state = String::new();
    loop {
        let v = c.get(path)?;
        let state = v["state"].as_str().unwrap_or("?").to_string();
        let done = v["progress"]["bytes_done"].as_u64().unwrap_or(0);
        let total = v["progress"]["bytes_total"].as_u64().unwrap_or(0);
        let pct = v["progress"]["percent"].as_u64().unwrap_or(0);
        rate.record(started.elapsed().as_millis() as u64, done);
        match &bar {
            Some(b) => {
                b.set_length(total.max(done));
                b.set_position(done);
                b.set_message(state.clone());
            }
            None => {
                if state != last_state || last_line.elapsed() >= PLAIN_EVERY || terminal(&state) {
                    let speed = rate
                        .rate()
                        .map(|r| format!(", {}/s", HumanBytes(r as u64)))
                        .unwrap_or_default();
                    let eta = match rate.eta_secs(total) {
                        Some(s) if !terminal(&state) && total > 0 => format!(", ETA {s} s"),
                        _ => String::new(),
                    };
                    let line = format!(
                        "{label}: {state} {pct}% {} of {}{speed}{eta}",
                        HumanBytes(done),
                        HumanBytes(total.max(done))
                    );
                    if json {
                        eprintln!("{line}");
                    } else {
                        println!("{line}");
                    }
                    last_line = Instant::now();
                }
            }
        }
        last_state = state.clone();
        if terminal(&state) {
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
