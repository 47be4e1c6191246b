//! The divergence guard: whether a job's reported losses have diverged. A pure value fed one report
//! at a time (no clock, no I/O), so its rules are tested here; the job actor acts on its verdict.
//!
//! Divergence (docs/trainer-protocol.md, "Divergence"): a reported loss that is NaN or infinite, or
//! above `spike_factor` times the median of the last `spike_window` healthy reports, for
//! `spike_steps` reports in a row. A spike is judged only once the window is full; abnormal values
//! never enter the window, so the median stays that of the healthy run. A report at a step already
//! seen (a heartbeat rewriting the same step) counts once.

use crate::store::records::DivergenceRule;
use std::collections::VecDeque;

/// The diverging reports, from the first.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// The step of the first diverging report: the rollback goes to a checkpoint before it.
    pub first_step: u64,
    /// Each diverging report's step and loss.
    pub seen: Vec<(u64, f64)>,
    /// The healthy median it was judged against, when the window was full.
    pub median: Option<f64>,
}

impl Divergence {
    /// The divergence in words, for events and messages.
    pub fn describe(&self) -> String {
        let values: Vec<String> = self.seen.iter().map(|(step, loss)| format!("step {step}: {loss}")).collect();
        match self.median {
            Some(m) => {
                format!("loss diverged from step {} ({}; median of the window {m})", self.first_step, values.join(", "))
            }
            None => format!("loss diverged from step {} ({})", self.first_step, values.join(", ")),
        }
    }
}

/// One attempt's guard.
#[derive(Debug, Clone)]
pub struct Guard {
    rule: DivergenceRule,
    window: VecDeque<f64>,
    streak: Vec<(u64, f64)>,
    last_step: Option<u64>,
}

impl Guard {
    /// A guard with no reports yet.
    pub fn new(rule: DivergenceRule) -> Guard {
        Guard { rule, window: VecDeque::new(), streak: Vec::new(), last_step: None }
    }

    fn median(&self) -> Option<f64> {
        if self.window.len() < self.rule.spike_window.max(1) as usize {
            return None;
        }
        let mut sorted: Vec<f64> = self.window.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        Some(if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] })
    }

    /// Takes one report; returns the divergence once it is sustained.
    pub fn observe(&mut self, step: u64, loss: f64) -> Option<Divergence> {
        if self.last_step == Some(step) {
            return None;
        }
        self.last_step = Some(step);
        let median = self.median();
        let abnormal = !loss.is_finite() || median.is_some_and(|m| loss > self.rule.spike_factor * m);
        if !abnormal {
            self.streak.clear();
            self.window.push_back(loss);
            while self.window.len() > self.rule.spike_window.max(1) as usize {
                self.window.pop_front();
            }
            return None;
        }
        self.streak.push((step, loss));
        if self.streak.len() < self.rule.spike_steps.max(1) as usize {
            return None;
        }
        let seen = std::mem::take(&mut self.streak);
        Some(Divergence { first_step: seen[0].0, seen, median })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::OnDivergence;

    fn rule(window: u32, steps: u32) -> DivergenceRule {
        DivergenceRule {
            on: OnDivergence::Rollback,
            spike_factor: 10.0,
            spike_window: window,
            spike_steps: steps,
            max_rollbacks: 3,
        }
    }

    #[test]
    fn a_sustained_nan_diverges_from_its_first_report_and_a_single_one_does_not() {
        let mut g = Guard::new(rule(4, 2));
        assert_eq!(g.observe(1, 1.0), None);
        assert_eq!(g.observe(2, f64::NAN), None, "one report is not sustained");
        assert_eq!(g.observe(3, 0.9), None, "a healthy report ends the streak");
        assert_eq!(g.observe(4, f64::INFINITY), None);
        assert_eq!(g.observe(4, f64::INFINITY), None, "the same step again counts once");
        let d = g.observe(5, f64::NAN).expect("two in a row");
        assert_eq!(d.first_step, 4);
        assert_eq!(d.seen.len(), 2);
        assert!(d.describe().starts_with("loss diverged from step 4 (step 4: inf, step 5: NaN"), "{}", d.describe());
    }

    #[test]
    fn a_spike_counts_only_against_a_full_window_of_healthy_values() {
        let mut g = Guard::new(rule(4, 2));
        for (step, loss) in [(1, 1.0), (2, 50.0), (3, 60.0)] {
            assert_eq!(g.observe(step, loss), None, "the window is not full: no median yet");
        }
        assert_eq!(g.observe(4, 2.0), None);
        // Window: 1, 50, 60, 2 → median 26; 300 > 260 twice in a row.
        assert_eq!(g.observe(5, 300.0), None);
        let d = g.observe(6, 301.0).expect("a sustained spike");
        assert_eq!((d.first_step, d.median), (5, Some(26.0)));
        // Spikes never entered the window; a value at exactly the factor is not a spike.
        assert_eq!(g.observe(7, 260.0), None);
    }
}
