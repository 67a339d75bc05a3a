//! Latency samples, the measuring window and the progress bar.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
    pub samples: u64,
}

/// Latencies of one worker, in microseconds (merged at the end: no lock on the hot path).
#[derive(Debug, Default)]
pub struct Samples {
    pub micros: Vec<u32>,
    pub errors: u64,
    /// The first error's text, so a run with errors says what they were.
    pub first_error: Option<String>,
}

impl Samples {
    pub fn add(&mut self, latency: Duration) {
        self.micros
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn latency(&self) -> Latency {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let ms = |micros: u32| f64::from(micros) / 1000.0;
        let at = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            ms(sorted[rank - 1])
        };
        let sum: u64 = sorted.iter().map(|&m| u64::from(m)).sum();
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: sorted.last().copied().map(ms).unwrap_or(0.0),
            mean: if sorted.is_empty() {
                0.0
            } else {
                sum as f64 / sorted.len() as f64 / 1000.0
            },
            samples: sorted.len() as u64,
        }
    }
}

/// Warm-up, then the measuring window: only operations started inside it count.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub measure_from: Instant,
    pub until: Instant,
}

impl Window {
    pub fn starting_now(warmup: Duration, duration: Duration) -> Window {
        let measure_from = Instant::now() + warmup;
        Window {
            measure_from,
            until: measure_from + duration,
        }
    }

    pub fn counts(&self, started: Instant) -> bool {
        started >= self.measure_from && started < self.until
    }

    pub fn over(&self) -> bool {
        Instant::now() >= self.until
    }

    pub fn seconds(&self) -> f64 {
        (self.until - self.measure_from).as_secs_f64()
    }
}

/// A progress bar over the warm-up and window, showing the operations so far; hidden when
/// stderr is not a terminal or with `--quiet`.
pub struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(
        window: Window,
        done: Arc<AtomicU64>,
        unit: &'static str,
        quiet: bool,
    ) -> Progress {
        let total = (window.until - Instant::now()).as_secs().max(1);
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total)
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} s  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let ticker = bar.clone();
        let task = tokio::spawn(async move {
            let begun = Instant::now();
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                let phase = if Instant::now() < window.measure_from {
                    "warm-up"
                } else {
                    "measuring"
                };
                ticker.set_position(begun.elapsed().as_secs());
                ticker.set_message(format!("{phase}: {} {unit}/s", now - last));
                last = now;
            }
        });
        Progress { bar, task }
    }

    pub fn message(&self, text: String) {
        self.bar.set_message(text);
    }

    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

/// A status line while setting up (users, sockets).
pub fn note(quiet: bool, text: &str) {
    if !quiet {
        eprintln!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples = Samples::default();
        for ms in 1..=100u64 {
            samples.add(Duration::from_millis(ms));
        }
        let l = samples.latency();
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50, 50.0);
        assert_eq!(l.p90, 90.0);
        assert_eq!(l.p99, 99.0);
        assert_eq!(l.max, 100.0);
        assert!((l.mean - 50.5).abs() < 1e-9);
    }

    #[test]
    fn no_samples_give_zeros() {
        let l = Samples::default().latency();
        assert_eq!((l.p50, l.max, l.samples), (0.0, 0.0, 0));
    }
}
