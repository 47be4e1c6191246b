//! The restart-or-fail policy: what the end of an attempt means for the job. Pure functions of the
//! job's policy, its failure history, how the attempt ended and the clock, so every rule is tested
//! here without processes; the job actor only carries the decision out.
//!
//! Rules, in order: a stop trainerd sent for a cancel or a pause timeout ends as the user asked,
//! whatever the exit; exit 0 completes (or pauses, when the progress file says `paused`); 64–78 other
//! than 75 fail at once, except 65 on a resume checkpoint, which retries from the checkpoint before
//! it; a stall, exit 75, any other code and any signal are failures counted against the budget of
//! `max_restarts` within `window_ms` (Erlang's intensity and period), restarted after an exponential
//! backoff with jitter and a cap. An attempt that stayed up `healthy_after_ms` resets the backoff.
//! An attempt whose allocation its executor took back (a Slurm time limit, preemption or node
//! failure) and that did not complete continues at once, apart from the budget.

use crate::store::records::{ExitStatus, OnFailure, RestartPolicy};
use std::time::Duration;
use trainerd_proto::trainer::{exit, TrainerState};
use trainerd_proto::v1::Reason;

/// Why trainerd itself stopped the trainer, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// No heartbeat within the timeout.
    Stall,
    /// A user cancelled the job.
    Cancel,
    /// A pause did not finish within `pause_timeout`: the documented rule keeps the latest checkpoint
    /// and ends PAUSED.
    PauseTimeout,
    /// trainerd is stopping under `shutdown_policy = stop`: the job goes back to the queue.
    Shutdown,
    /// The loss diverged: roll back to a checkpoint before it (`rollback`), or fail. A rollback is
    /// counted apart from the restart budget.
    Diverged { rollback: bool },
}

/// How an attempt ended, as far as the policy cares.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    /// None when the attempt's end was never observed (trainerd was down and the process is gone):
    /// the job was `lost`, counted as a failure.
    pub exit: Option<ExitStatus>,
    /// The last state the trainer's progress file showed.
    pub trainer_state: Option<TrainerState>,
    pub stopped_by_daemon: Option<StopCause>,
    /// How long the attempt ran.
    pub ran_for: Duration,
    /// Whether the attempt was started from a checkpoint.
    pub resumed: bool,
    /// The executor took the allocation back (a Slurm time limit, preemption or node failure): not
    /// the trainer's failure.
    pub allocation_ended: bool,
}

/// The failure history the budget is counted on (stored in the job's record).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Times (Unix seconds) of the failures counted against the budget.
    pub restart_times: Vec<f64>,
    /// Failures since the last healthy stretch: the backoff exponent.
    pub consecutive_failures: u32,
}

/// What to do with the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Complete,
    Pause,
    Cancel,
    /// Queue the job again (trainerd is shutting down); it resumes from its latest checkpoint.
    Requeue,
    /// Start again after `delay`; from the checkpoint before the latest when `previous_checkpoint`.
    Restart {
        reason: Reason,
        delay: Duration,
        previous_checkpoint: bool,
    },
    /// Fail the job. `exhausted`: because the restart budget is spent; `reason` is then the last
    /// attempt's own cause (stalled, crashed, ...), so the cause stays visible.
    Fail {
        reason: Reason,
        message: String,
        exhausted: bool,
    },
}

/// Decides the job's next step and updates `history` to match. `jitter` is a number in [0, 1).
pub fn decide(policy: &RestartPolicy, history: &mut History, end: &AttemptEnd, now: f64, jitter: f64) -> Decision {
    match end.stopped_by_daemon {
        Some(StopCause::Cancel) => return Decision::Cancel,
        Some(StopCause::PauseTimeout) => return Decision::Pause,
        Some(StopCause::Stall) => return failure(policy, history, end, now, jitter, Reason::Stalled, false),
        Some(StopCause::Diverged { rollback: true }) => {
            return Decision::Restart { reason: Reason::Diverged, delay: Duration::ZERO, previous_checkpoint: false }
        }
        Some(StopCause::Diverged { rollback: false }) => {
            return Decision::Fail {
                reason: Reason::Diverged,
                message: "the loss diverged; not rolled back (on_divergence = fail, or max_rollbacks reached)".into(),
                exhausted: false,
            }
        }
        // A trainer that finished before it saw the stop has completed; nothing else counts as a failure.
        Some(StopCause::Shutdown) => {
            let done =
                end.exit == Some(ExitStatus::Code(exit::OK)) && end.trainer_state == Some(TrainerState::Completed);
            return if done { Decision::Complete } else { Decision::Requeue };
        }
        None => {}
    }
    let Some(status) = end.exit else {
        return failure(policy, history, end, now, jitter, Reason::Lost, false);
    };
    // A trainer that completed (or paused) as its allocation ended has done so; anything else goes
    // on from its latest checkpoint in a new allocation, counted apart from the restart budget.
    if end.allocation_ended && status != ExitStatus::Code(exit::OK) {
        return Decision::Restart {
            reason: Reason::AllocationEnded,
            delay: Duration::ZERO,
            previous_checkpoint: false,
        };
    }
    match status {
        ExitStatus::Code(exit::OK) if end.trainer_state == Some(TrainerState::Paused) => Decision::Pause,
        ExitStatus::Code(exit::OK) => Decision::Complete,
        ExitStatus::Code(exit::RETRY) => failure(policy, history, end, now, jitter, Reason::RetryableExit, false),
        ExitStatus::Code(exit::DATA_ERR) if end.resumed => {
            failure(policy, history, end, now, jitter, Reason::PermanentExit, true)
        }
        ExitStatus::Code(code @ 64..=78) => Decision::Fail {
            reason: Reason::PermanentExit,
            message: format!("the trainer exited {code}, a permanent failure: not restarted"),
            exhausted: false,
        },
        ExitStatus::Code(_) | ExitStatus::Signal(_) => {
            failure(policy, history, end, now, jitter, Reason::Crashed, false)
        }
    }
}

/// The attempt's end in words, for the job's message.
pub fn describe(end: &AttemptEnd, reason: Reason) -> String {
    match (reason, end.exit) {
        (Reason::Stalled, _) => {
            "stalled (no heartbeat, output or progress within its deadline; see the stalled event)".into()
        }
        (_, None) => {
            "the attempt's shim ended without an exit record, so how the trainer ended is unknown (lost)".into()
        }
        (_, Some(ExitStatus::Code(code))) => format!("exited {code}"),
        (_, Some(ExitStatus::Signal(signal))) => format!("killed by signal {signal}"),
    }
}

fn failure(
    policy: &RestartPolicy,
    history: &mut History,
    end: &AttemptEnd,
    now: f64,
    jitter: f64,
    reason: Reason,
    previous_checkpoint: bool,
) -> Decision {
    let what = describe(end, reason);
    if policy.on_failure == OnFailure::Fail {
        return Decision::Fail { reason, message: format!("{what}; on_failure = fail"), exhausted: false };
    }
    if end.ran_for >= Duration::from_millis(policy.healthy_after_ms) {
        history.consecutive_failures = 0;
    }
    let window = policy.window_ms as f64 / 1e3;
    history.restart_times.retain(|t| now - t < window);
    if history.restart_times.len() >= policy.max_restarts as usize {
        return Decision::Fail {
            reason,
            message: format!(
                "{what}; not restarted: the restart budget is spent ({} restarts within {} s already, max_restarts {})",
                history.restart_times.len(),
                window,
                policy.max_restarts
            ),
            exhausted: true,
        };
    }
    history.restart_times.push(now);
    history.consecutive_failures += 1;
    Decision::Restart { reason, delay: backoff(policy, history.consecutive_failures, jitter), previous_checkpoint }
}

/// "Equal jitter": half of the capped exponential delay, plus a random share of the other half.
pub fn backoff(policy: &RestartPolicy, failures: u32, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(32);
    let capped = policy.backoff_base_ms.saturating_mul(1u64 << exponent).min(policy.backoff_max_ms);
    Duration::from_secs_f64(capped as f64 / 1e3 * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            on_failure: OnFailure::Restart,
            max_restarts: 3,
            window_ms: 60_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 5_000,
            healthy_after_ms: 30_000,
        }
    }

    fn end(exit: ExitStatus) -> AttemptEnd {
        AttemptEnd {
            exit: Some(exit),
            trainer_state: None,
            stopped_by_daemon: None,
            ran_for: Duration::from_secs(1),
            resumed: false,
            allocation_ended: false,
        }
    }

    #[test]
    fn an_allocation_taken_back_continues_at_once_outside_the_budget_unless_the_trainer_completed() {
        let mut h = History { restart_times: vec![1.0; 3], consecutive_failures: 2 };
        let before = h.clone();
        for exit in [ExitStatus::Code(75), ExitStatus::Signal(9), ExitStatus::Code(1)] {
            let taken = AttemptEnd { allocation_ended: true, ..end(exit) };
            assert_eq!(decide(&policy(), &mut h, &taken, 2.0, 0.5), restart(Reason::AllocationEnded, 0), "{exit:?}");
        }
        assert_eq!(h, before, "not counted against the restart budget, which is spent here");
        let completed = AttemptEnd { allocation_ended: true, ..end(ExitStatus::Code(0)) };
        assert_eq!(decide(&policy(), &mut h, &completed, 2.0, 0.5), Decision::Complete);
        let cancelled = AttemptEnd {
            stopped_by_daemon: Some(StopCause::Cancel),
            allocation_ended: true,
            ..end(ExitStatus::Code(75))
        };
        assert_eq!(decide(&policy(), &mut h, &cancelled, 2.0, 0.5), Decision::Cancel, "a cancel stays a cancel");
    }

    fn restart(reason: Reason, delay_ms: u64) -> Decision {
        Decision::Restart { reason, delay: Duration::from_millis(delay_ms), previous_checkpoint: false }
    }

    #[test]
    fn exit_codes_follow_the_protocol() {
        let mut h = History::default();
        assert_eq!(decide(&policy(), &mut h, &end(ExitStatus::Code(0)), 0.0, 0.0), Decision::Complete);
        let paused = AttemptEnd { trainer_state: Some(TrainerState::Paused), ..end(ExitStatus::Code(0)) };
        assert_eq!(decide(&policy(), &mut h, &paused, 0.0, 0.0), Decision::Pause);
        assert!(matches!(
            decide(&policy(), &mut h, &end(ExitStatus::Code(78)), 0.0, 0.0),
            Decision::Fail { reason: Reason::PermanentExit, .. }
        ));
        assert_eq!(h, History::default(), "no failure was counted yet");
        assert_eq!(
            decide(&policy(), &mut h, &end(ExitStatus::Code(75)), 0.0, 0.0),
            restart(Reason::RetryableExit, 500)
        );
        assert_eq!(decide(&policy(), &mut h, &end(ExitStatus::Signal(9)), 1.0, 0.0), restart(Reason::Crashed, 1_000));
        assert_eq!(decide(&policy(), &mut h, &end(ExitStatus::Code(1)), 2.0, 0.0), restart(Reason::Crashed, 2_000));
    }

    #[test]
    fn a_lost_attempt_is_its_own_reason_and_counts() {
        let mut h = History::default();
        let lost = AttemptEnd { exit: None, ..end(ExitStatus::Code(0)) };
        assert_eq!(decide(&policy(), &mut h, &lost, 0.0, 0.0), restart(Reason::Lost, 500));
        assert_eq!(h.restart_times.len(), 1);
    }

    #[test]
    fn a_bad_resume_checkpoint_falls_back_to_the_one_before() {
        let mut h = History::default();
        let bad = AttemptEnd { resumed: true, ..end(ExitStatus::Code(65)) };
        assert_eq!(
            decide(&policy(), &mut h, &bad, 0.0, 0.0),
            Decision::Restart {
                reason: Reason::PermanentExit,
                delay: Duration::from_millis(500),
                previous_checkpoint: true
            }
        );
        assert!(matches!(decide(&policy(), &mut h, &end(ExitStatus::Code(65)), 0.0, 0.0), Decision::Fail { .. }));
    }

    #[test]
    fn the_budget_is_spent_within_the_window_and_refilled_after_it() {
        let mut h = History::default();
        for t in 0..3 {
            assert!(matches!(
                decide(&policy(), &mut h, &end(ExitStatus::Code(75)), 1000.0 + t as f64, 0.0),
                Decision::Restart { .. }
            ));
        }
        let d = decide(&policy(), &mut h, &end(ExitStatus::Code(75)), 1010.0, 0.0);
        let Decision::Fail { reason, message, exhausted } = d else { panic!("{d:?}") };
        assert_eq!((reason, exhausted), (Reason::RetryableExit, true), "the cause stays the reason");
        assert!(
            message.contains("exited 75; not restarted: the restart budget is spent (3 restarts within 60 s"),
            "{message}"
        );
        // A minute after the first failures they no longer count.
        assert!(matches!(decide(&policy(), &mut h, &end(ExitStatus::Code(75)), 1061.0, 0.0), Decision::Restart { .. }));
    }

    #[test]
    fn a_failure_exactly_one_window_old_no_longer_counts() {
        let mut h = History { restart_times: vec![1000.0; 3], consecutive_failures: 3 };
        assert!(matches!(decide(&policy(), &mut h, &end(ExitStatus::Code(1)), 1059.9, 0.0), Decision::Fail { .. }));
        assert!(matches!(decide(&policy(), &mut h, &end(ExitStatus::Code(1)), 1060.0, 0.0), Decision::Restart { .. }));
    }

    #[test]
    fn a_trainer_that_completed_before_it_saw_the_shutdown_stop_has_completed() {
        let mut h = History::default();
        let stopped = |exit, state| AttemptEnd {
            stopped_by_daemon: Some(StopCause::Shutdown),
            trainer_state: state,
            ..end(exit)
        };
        let done = stopped(ExitStatus::Code(0), Some(TrainerState::Completed));
        assert_eq!(decide(&policy(), &mut h, &done, 0.0, 0.0), Decision::Complete);
        let unfinished = stopped(ExitStatus::Code(0), Some(TrainerState::Running));
        assert_eq!(decide(&policy(), &mut h, &unfinished, 0.0, 0.0), Decision::Requeue);
        let failed = stopped(ExitStatus::Code(1), Some(TrainerState::Completed));
        assert_eq!(decide(&policy(), &mut h, &failed, 0.0, 0.0), Decision::Requeue);
    }

    #[test]
    fn daemon_stops_are_classified_from_trainerd_records_not_the_signal() {
        let mut h = History::default();
        let killed = |cause| AttemptEnd { stopped_by_daemon: Some(cause), ..end(ExitStatus::Signal(9)) };
        assert_eq!(decide(&policy(), &mut h, &killed(StopCause::Cancel), 0.0, 0.0), Decision::Cancel);
        assert_eq!(decide(&policy(), &mut h, &killed(StopCause::PauseTimeout), 0.0, 0.0), Decision::Pause);
        assert_eq!(decide(&policy(), &mut h, &killed(StopCause::Shutdown), 0.0, 0.0), Decision::Requeue);
        assert_eq!(h, History::default(), "a shutdown stop is not a failure");
        assert_eq!(decide(&policy(), &mut h, &killed(StopCause::Stall), 0.0, 0.0), restart(Reason::Stalled, 500));
        let before = h.clone();
        let rollback = killed(StopCause::Diverged { rollback: true });
        assert_eq!(decide(&policy(), &mut h, &rollback, 0.0, 0.0), restart(Reason::Diverged, 0));
        assert_eq!(h, before, "a rollback is not counted against the restart budget");
        let fail = killed(StopCause::Diverged { rollback: false });
        assert!(matches!(decide(&policy(), &mut h, &fail, 0.0, 0.0), Decision::Fail { reason: Reason::Diverged, .. }));
        let fail = RestartPolicy { on_failure: OnFailure::Fail, ..policy() };
        assert!(matches!(
            decide(&fail, &mut h, &killed(StopCause::Stall), 0.0, 0.0),
            Decision::Fail { reason: Reason::Stalled, .. }
        ));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets_after_a_healthy_run() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(&p, 3, 0.0), Duration::from_millis(2_000));
        assert_eq!(backoff(&p, 30, 1.0), Duration::from_millis(5_000), "capped");
        assert_eq!(backoff(&RestartPolicy { backoff_base_ms: 0, ..p.clone() }, 5, 0.5), Duration::ZERO);
        let mut h = History { restart_times: vec![], consecutive_failures: 4 };
        let healthy = AttemptEnd { ran_for: Duration::from_secs(31), ..end(ExitStatus::Signal(11)) };
        assert_eq!(decide(&p, &mut h, &healthy, 0.0, 0.0), restart(Reason::Crashed, 500));
        assert_eq!(h.consecutive_failures, 1);
    }
}
