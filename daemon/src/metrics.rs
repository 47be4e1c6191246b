//! Prometheus metrics: counters and histograms updated where things happen, rendered in the text
//! exposition format by a tiny HTTP endpoint on an opt-in address (`--metrics 127.0.0.1:9184`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Bucket bounds in seconds: sub-millisecond detail for the latencies trainerd promises.
const BOUNDS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// A histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(value.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", bucket.load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Every metric trainerd keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Trainer processes started.
    pub starts: AtomicU64,
    /// Restarts decided, by reason word.
    restarts: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Trainers stopped for silence.
    pub heartbeat_timeouts: AtomicU64,
    /// Mismatches between records and reality that reconciliation fixed.
    pub reconcile_fixes: AtomicU64,
    /// Jobs re-adopted from a previous trainerd (their shim still ran).
    pub adopted: AtomicU64,
    /// From the kernel reporting a trainer's exit to the job's new state being stored.
    pub exit_detection: Histogram,
    /// From a progress file's `updated_at` to its update reaching watchers.
    pub progress_propagation: Histogram,
}

/// One unlabelled counter in the text format: its HELP and TYPE lines, then its value.
fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

impl Metrics {
    /// Counts a restart decided for `reason`.
    pub fn restarted(&self, reason: &'static str) {
        *self.restarts.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
    }

    /// The text exposition, with the gauges the caller reads at scrape time.
    pub fn render(&self, jobs_by_state: &[(&str, u64)], queue_length: usize, store_flush: &Histogram) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP trainerd_jobs Jobs in the store by state.\n# TYPE trainerd_jobs gauge");
        for (state, n) in jobs_by_state {
            let _ = writeln!(out, "trainerd_jobs{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP trainerd_queue_length Jobs waiting for a slot or GPUs.\n# TYPE trainerd_queue_length gauge"
        );
        let _ = writeln!(out, "trainerd_queue_length {queue_length}");
        counter(
            &mut out,
            "trainerd_job_starts_total",
            "Trainer processes started.",
            self.starts.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP trainerd_job_restarts_total Restarts by reason.\n# TYPE trainerd_job_restarts_total counter"
        );
        for (reason, n) in self.restarts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "trainerd_job_restarts_total{{reason=\"{reason}\"}} {n}");
        }
        counter(
            &mut out,
            "trainerd_heartbeat_timeouts_total",
            "Trainers stopped for silence.",
            self.heartbeat_timeouts.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "trainerd_reconcile_fixes_total",
            "Record/reality mismatches fixed by reconciliation.",
            self.reconcile_fixes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "trainerd_jobs_adopted_total",
            "Running jobs re-adopted from a previous trainerd.",
            self.adopted.load(Ordering::Relaxed),
        );
        self.exit_detection.render(
            &mut out,
            "trainerd_exit_detection_seconds",
            "From the kernel reporting a trainer's exit to the job's new state stored and published.",
        );
        self.progress_propagation.render(
            &mut out,
            "trainerd_progress_propagation_seconds",
            "From a progress file's updated_at to the update reaching watchers.",
        );
        store_flush.render(&mut out, "trainerd_store_flush_seconds", "Time to flush the store to disk.");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_render_in_the_text_format() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 2\nx_seconds_sum 0.0033\nx_seconds_count 2\n"), "{out}");
    }
}
