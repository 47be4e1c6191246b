//! Percentiles of a sample, and how figures are shown.

use std::time::Duration;

/// Sorted durations.
pub struct Sample(Vec<Duration>);

impl Sample {
    pub fn new(mut values: Vec<Duration>) -> Sample {
        values.sort();
        Sample(values)
    }

    /// The `q` quantile (0..=1), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }

    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// A duration in the unit that reads best.
pub fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.1} s", us / 1e6)
    }
}

/// n, p50, p99 and max of a sample: what every timed row states.
pub fn summary(s: &Sample) -> String {
    format!("n={}, p50 {}, p99 {}, max {}", s.len(), show(s.p50()), show(s.p99()), show(s.max()))
}

/// A duration in milliseconds, for a headline.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
