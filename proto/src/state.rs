//! The job state machine: the one table of legal transitions over the proto's [`JobState`].
//!
//! The daemon's store refuses any transition not listed here, so a terminal job can never be
//! started again whatever path a request takes; the one exception is a user's explicit retry of a
//! failed or cancelled job ([`can_retry`]), a store operation of its own. A completed job never runs
//! again. `docs/job-states.md` draws the same table.

use crate::v1::JobState;

/// Whether `from → to` is a legal transition.
pub fn can_transition(from: JobState, to: JobState) -> bool {
    use JobState::*;
    matches!(
        (from, to),
        // Admission, pausing a queued job (it is held), cancelling a waiting job.
        (Queued, Starting | Paused | Cancelled)
            // A started trainer heartbeats, or ends before its first heartbeat.
            | (Starting, Running | Pausing | Stopping | Backoff | Completed | Failed | Paused)
            | (Running, Pausing | Stopping | Backoff | Completed | Failed | Paused)
            // A pause ends paused; the trainer may also finish or fail on its way there.
            | (Pausing, Paused | Stopping | Backoff | Completed | Failed)
            // Resume queues again; a paused job needs no process to cancel.
            | (Paused, Queued | Cancelled)
            // A stop ends by what was asked (cancel), or by what the trainer really did.
            | (Stopping, Cancelled | Failed | Backoff | Paused | Completed | Queued)
            // Backoff ends in the next attempt, or by a user's pause or cancel.
            | (Backoff, Starting | Queued | Paused | Cancelled | Failed)
    )
}

/// Whether a user's explicit retry may queue a job in this state again: a failed or cancelled job
/// continues from its latest checkpoint as a new attempt. Never a completed one. This is the one way
/// out of a terminal state, and not a transition of the table above: nothing else takes it.
pub fn can_retry(state: JobState) -> bool {
    matches!(state, JobState::Failed | JobState::Cancelled)
}

/// Whether nothing can ever follow this state (short of a user's retry, see [`can_retry`]).
pub fn is_terminal(state: JobState) -> bool {
    matches!(state, JobState::Completed | JobState::Failed | JobState::Cancelled)
}

/// Whether a trainer process may exist for a job in this state.
pub fn has_process(state: JobState) -> bool {
    matches!(state, JobState::Starting | JobState::Running | JobState::Pausing | JobState::Stopping)
}

/// The lowercase word for a state, as shown by trainctl and written in JSON (`running`, `completed`).
pub fn state_word(state: JobState) -> &'static str {
    match state {
        JobState::Unspecified => "unspecified",
        JobState::Queued => "queued",
        JobState::Starting => "starting",
        JobState::Running => "running",
        JobState::Pausing => "pausing",
        JobState::Paused => "paused",
        JobState::Stopping => "stopping",
        JobState::Backoff => "backoff",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// Parses a lowercase state word; the inverse of [`state_word`].
pub fn parse_state_word(word: &str) -> Option<JobState> {
    ALL_STATES.iter().copied().find(|s| state_word(*s) == word)
}

/// Every real state (without `Unspecified`), in the proto's order.
pub const ALL_STATES: [JobState; 10] = [
    JobState::Queued,
    JobState::Starting,
    JobState::Running,
    JobState::Pausing,
    JobState::Paused,
    JobState::Stopping,
    JobState::Backoff,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_states_with_a_trainer_process_have_one() {
        use JobState::*;
        let with: Vec<JobState> = ALL_STATES.into_iter().filter(|s| has_process(*s)).collect();
        assert_eq!(with, [Starting, Running, Pausing, Stopping]);
        assert!(!has_process(Unspecified));
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in ALL_STATES.into_iter().filter(|s| is_terminal(*s)) {
            for to in ALL_STATES {
                assert!(!can_transition(from, to), "{from:?} -> {to:?} must be illegal");
            }
        }
    }

    fn reachable(from: JobState) -> Vec<JobState> {
        let mut seen = vec![from];
        let mut i = 0;
        while i < seen.len() {
            for to in ALL_STATES {
                if can_transition(seen[i], to) && !seen.contains(&to) {
                    seen.push(to);
                }
            }
            i += 1;
        }
        seen
    }

    #[test]
    fn every_state_is_reachable_from_queued() {
        assert_eq!(reachable(JobState::Queued).len(), ALL_STATES.len());
    }

    #[test]
    fn every_live_state_can_reach_a_terminal_state() {
        for from in ALL_STATES.into_iter().filter(|s| !is_terminal(*s)) {
            assert!(reachable(from).into_iter().any(is_terminal), "{from:?} is a dead end");
        }
        assert!(!can_transition(JobState::Unspecified, JobState::Queued));
    }

    #[test]
    fn state_words_round_trip() {
        for s in ALL_STATES {
            assert_eq!(parse_state_word(state_word(s)), Some(s));
        }
        assert_eq!(parse_state_word("Running"), None);
    }
}
