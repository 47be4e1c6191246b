//! The stall clock: whether a running attempt is stalled, late, or fine, and when to look again. A
//! pure function of the job's limits and the attempt's instants (its start, its last heartbeat, its
//! last output, its last advance), kept in a [`Clock`] value: no clock of its own, no I/O, tested as
//! a table. The job actor notes what it observes on the clock and carries the verdict out.
//!
//! The rules (docs/trainer-protocol.md):
//! - heartbeats (a new progress file, or a line matching `progress_regex`): silence for
//!   `heartbeat_timeout` after the last one is a stall; silence for twice the promised interval is
//!   late (a warning). Not for protocol `none`.
//! - before the first heartbeat: protocol `v1` must beat within `startup_grace`; `auto` and `none`
//!   have no deadline (an unchanged script is not killed for not speaking the protocol).
//! - `idle_timeout`: no output and no heartbeat for that long is a stall, whatever the protocol.
//! - `progress_timeout`: while the trainer reports `running`, its step must advance within it; a
//!   phase it reports instead (`evaluating`, `checkpointing`) must end within its announced
//!   `phase_timeout_s`, or within the progress timeout; `starting` only within an announced length. This catches the loop that is stuck (a
//!   collective waiting on a dead or stopped peer, a deadlocked data loader) while a heartbeat thread
//!   keeps beating.

use crate::store::records::Protocol;
use std::time::{Duration, Instant};
use trainerd_proto::trainer::TrainerState;

/// What a job's silence is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub protocol: Protocol,
    pub startup_grace: Duration,
    pub heartbeat_timeout: Duration,
    /// Late after this much silence since the last heartbeat (twice the promised interval).
    pub late_after: Duration,
    pub idle_timeout: Option<Duration>,
    pub progress_timeout: Option<Duration>,
}

/// The rule a stall broke, as its event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    StartupGrace,
    HeartbeatTimeout,
    IdleTimeout,
    ProgressTimeout,
}

impl Rule {
    /// The rule's word in events (`heartbeat_timeout`).
    pub fn word(self) -> &'static str {
        match self {
            Rule::StartupGrace => "startup_grace",
            Rule::HeartbeatTimeout => "heartbeat_timeout",
            Rule::IdleTimeout => "idle_timeout",
            Rule::ProgressTimeout => "progress_timeout",
        }
    }
}

/// The clock's readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readings {
    pub started: Instant,
    pub last_beat: Option<Instant>,
    pub last_output: Option<Instant>,
    /// When the step or the trainer's phase last changed, and that phase.
    pub last_advance: Option<(Instant, Phase)>,
}

/// What the trainer said it was doing at its last advance, for the progress deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Training steps: the step must advance within the progress timeout.
    Running,
    /// Another phase (`starting`, `evaluating`, `checkpointing`): it must end within its announced
    /// length, or within the progress timeout.
    Other(Option<Duration>),
    /// No deadline: starting without an announced length (loading data, a first compilation, a
    /// download can take any time), or on its way out (paused, stopped, completed, failed).
    Unbounded,
}

/// The verdict at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// A rule is broken: stop the trainer. With the silence that broke it.
    pub stall: Option<(Rule, Duration)>,
    /// Silent past `late_after` since the last heartbeat (not yet a stall).
    pub late: Option<Duration>,
    /// When to look again, if any rule still has a deadline ahead.
    pub next: Option<Duration>,
}

impl Phase {
    /// The phase a progress report's state names, with the length it announced (`phase_timeout_s`).
    pub fn of(state: TrainerState, announced: Option<f64>) -> Phase {
        let announced = announced
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(|t| Duration::from_secs_f64(t.min(trainerd_proto::trainer::MAX_PHASE_TIMEOUT)));
        match state {
            TrainerState::Running => Phase::Running,
            TrainerState::Starting if announced.is_none() => Phase::Unbounded,
            TrainerState::Starting | TrainerState::Evaluating | TrainerState::Checkpointing => Phase::Other(announced),
            TrainerState::Paused | TrainerState::Stopped | TrainerState::Completed | TrainerState::Failed => {
                Phase::Unbounded
            }
        }
    }
}

/// One attempt's stall clock: the instants the verdict is judged on, kept as the actor observes
/// them (a new attempt gets a new clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    started: Instant,
    /// The last heartbeat: its sequence number (`u64::MAX` when not read: an output line, or a file
    /// only dated) and when it was seen.
    last_beat: Option<(u64, Instant)>,
    last_output: Option<Instant>,
    /// The step and phase last reported, and when they last changed.
    last_advance: Option<(u64, Phase, Instant)>,
}

impl Clock {
    /// The clock of an attempt started at `started`.
    pub fn new(started: Instant) -> Clock {
        Clock { started, last_beat: None, last_output: None, last_advance: None }
    }

    /// When the attempt started (for the startup grace and its run time).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The trainer started later than the attempt did (it waited in its executor's queue): the
    /// startup grace counts from `at`.
    pub fn started_at(&mut self, at: Instant) {
        self.started = at;
    }

    /// A heartbeat numbered `seq` seen at `at`. Returns whether it is new, and whether it is the first.
    pub fn beat(&mut self, seq: u64, at: Instant) -> (bool, bool) {
        let first = self.last_beat.is_none();
        let new = self.last_beat.is_none_or(|(last, _)| last != seq);
        if new {
            self.last_beat = Some((seq, at));
        }
        (new, first)
    }

    /// A sign of life with no sequence number (an output line, a progress file only dated) at `at`:
    /// any progress file read next counts as a new beat. Returns whether it is the first.
    pub fn alive_at(&mut self, at: Instant) -> bool {
        let first = self.last_beat.is_none();
        self.last_beat = Some((u64::MAX, at));
        first
    }

    /// The heartbeat a progress file read after a restart of trainerd shows: numbered `seq`, written at
    /// `at` (a trainer silent for an hour before the restart is an hour late now).
    pub fn beat_was(&mut self, seq: u64, at: Instant) {
        self.last_beat = Some((seq, at));
    }

    /// Whether any heartbeat was seen.
    pub fn has_beaten(&self) -> bool {
        self.last_beat.is_some()
    }

    /// Output (a log write) at `at`; an earlier one than already seen changes nothing.
    pub fn output(&mut self, at: Instant) {
        self.last_output = Some(self.last_output.map_or(at, |o| o.max(at)));
    }

    /// A report of `step` in `phase` at `at`: the progress deadline counts from its last change.
    pub fn advance(&mut self, step: u64, phase: Phase, at: Instant) {
        if self.last_advance.is_none_or(|(s, p, _)| s != step || p != phase) {
            self.last_advance = Some((step, phase, at));
        }
    }

    /// The step last reported (0 before any).
    pub fn step(&self) -> u64 {
        self.last_advance.map_or(0, |(step, _, _)| step)
    }

    /// The readings the verdict is judged on.
    pub fn readings(&self) -> Readings {
        Readings {
            started: self.started,
            last_beat: self.last_beat.map(|(_, at)| at),
            last_output: self.last_output,
            last_advance: self.last_advance.map(|(_, phase, at)| (at, phase)),
        }
    }
}

fn since(now: Instant, then: Instant) -> Duration {
    now.saturating_duration_since(then)
}

/// Judges the readings at `now`.
pub fn judge(limits: &Limits, r: &Readings, now: Instant) -> Verdict {
    let mut stall = None;
    let mut late = None;
    let mut next: Option<Duration> = None;
    let mut ahead = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
    match (limits.protocol, r.last_beat) {
        (Protocol::None, _) => {}
        (_, Some(beat)) => {
            let silence = since(now, beat);
            if silence >= limits.heartbeat_timeout {
                stall = Some((Rule::HeartbeatTimeout, silence));
            } else {
                ahead(limits.heartbeat_timeout - silence);
                if silence >= limits.late_after {
                    late = Some(silence);
                } else if limits.late_after < limits.heartbeat_timeout {
                    ahead(limits.late_after - silence);
                }
            }
        }
        (Protocol::V1, None) => {
            let silence = since(now, r.started);
            if silence >= limits.startup_grace {
                stall = Some((Rule::StartupGrace, silence));
            } else {
                ahead(limits.startup_grace - silence);
            }
        }
        (Protocol::Auto, None) => {}
    }
    if let (None, Some(idle)) = (stall, limits.idle_timeout) {
        let activity = [Some(r.started), r.last_beat, r.last_output].into_iter().flatten().max().unwrap_or(r.started);
        let quiet = since(now, activity);
        if quiet >= idle {
            stall = Some((Rule::IdleTimeout, quiet));
        } else {
            ahead(idle - quiet);
        }
    }
    if let (None, Some(deadline), Some((at, phase))) = (stall, limits.progress_timeout, r.last_advance) {
        let allowance = match phase {
            Phase::Running => Some(deadline),
            Phase::Other(announced) => Some(announced.unwrap_or(deadline)),
            Phase::Unbounded => None,
        };
        if let Some(allowance) = allowance {
            let still = since(now, at);
            if still >= allowance {
                stall = Some((Rule::ProgressTimeout, still));
            } else {
                ahead(allowance - still);
            }
        }
    }
    if stall.is_some() {
        next = None;
    }
    Verdict { stall, late, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_counts_new_heartbeats_only_and_signs_of_life_always() {
        let t0 = Instant::now();
        let mut c = Clock::new(t0);
        assert!(!c.has_beaten());
        assert_eq!(c.beat(1, t0 + s(1)), (true, true), "the first beat");
        assert_eq!(c.beat(1, t0 + s(2)), (false, false), "the same file read again is no beat");
        assert_eq!(c.readings().last_beat, Some(t0 + s(1)));
        assert_eq!(c.beat(2, t0 + s(3)), (true, false));
        assert!(!c.alive_at(t0 + s(4)), "an output line after beats");
        assert_eq!(c.readings().last_beat, Some(t0 + s(4)));
        assert_eq!(c.beat(2, t0 + s(5)), (true, false), "after a sign of life, any file is a beat");
        c.advance(7, Phase::Running, t0 + s(5));
        c.advance(7, Phase::Running, t0 + s(6));
        assert_eq!(
            (c.step(), c.readings().last_advance),
            (7, Some((t0 + s(5), Phase::Running))),
            "no change, no advance"
        );
        c.output(t0 + s(9));
        c.output(t0 + s(8));
        assert_eq!(c.readings().last_output, Some(t0 + s(9)), "an older output time changes nothing");
        c.started_at(t0 + s(10));
        assert_eq!(c.started(), t0 + s(10));
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn limits(protocol: Protocol, idle: Option<u64>) -> Limits {
        Limits {
            protocol,
            startup_grace: s(300),
            heartbeat_timeout: s(600),
            late_after: s(10),
            idle_timeout: idle.map(s),
            progress_timeout: None,
        }
    }

    /// The readings `started`, `beat` and `output` seconds after a common origin, judged `now` seconds
    /// after it.
    fn at(l: &Limits, beat: Option<u64>, output: Option<u64>, now: u64) -> Verdict {
        let origin = Instant::now();
        let r = Readings {
            started: origin,
            last_beat: beat.map(|b| origin + s(b)),
            last_output: output.map(|o| origin + s(o)),
            last_advance: None,
        };
        judge(l, &r, origin + s(now))
    }

    #[test]
    fn the_rules_as_a_table() {
        use Protocol::{Auto, V1};
        use Rule::*;
        let off = Protocol::None;
        /// protocol, idle, beat, output, now => stall, late, next (seconds).
        type Case =
            (Protocol, Option<u64>, Option<u64>, Option<u64>, u64, Option<(Rule, u64)>, Option<u64>, Option<u64>);
        let cases: &[Case] = &[
            // protocol, idle, beat, output, now => stall, late, next
            (V1, None, None, None, 0, None, None, Some(300)),
            (V1, None, None, None, 299, None, None, Some(1)),
            (V1, None, None, None, 300, Some((StartupGrace, 300)), None, None),
            (Auto, None, None, None, 100_000, None, None, None),
            (off, None, None, None, 100_000, None, None, None),
            (V1, None, Some(5), None, 10, None, None, Some(5)),
            (Auto, None, Some(5), None, 15, None, Some(10), Some(590)),
            (Auto, None, Some(5), None, 605, Some((HeartbeatTimeout, 600)), None, None),
            (V1, None, Some(5), None, 604, None, Some(599), Some(1)),
            (off, None, Some(5), None, 100_000, None, None, None),
            (Auto, Some(60), None, None, 59, None, None, Some(1)),
            (Auto, Some(60), None, Some(50), 100, None, None, Some(10)),
            (Auto, Some(60), None, Some(50), 110, Some((IdleTimeout, 60)), None, None),
            (off, Some(60), None, None, 60, Some((IdleTimeout, 60)), None, None),
            (Auto, Some(60), Some(100), Some(50), 150, None, Some(50), Some(10)),
            (V1, Some(60), None, None, 60, Some((IdleTimeout, 60)), None, None),
            (V1, Some(600), None, None, 300, Some((StartupGrace, 300)), None, None),
        ];
        for (i, &(protocol, idle, beat, output, now, stall, late, next)) in cases.iter().enumerate() {
            let v = at(&limits(protocol, idle), beat, output, now);
            assert_eq!(v.stall, stall.map(|(r, d)| (r, s(d))), "case {i}");
            assert_eq!(v.late, late.map(s), "case {i}");
            assert_eq!(v.next, next.map(s), "case {i}");
        }
    }

    #[test]
    fn rules_have_their_event_words() {
        let rules = [Rule::StartupGrace, Rule::HeartbeatTimeout, Rule::IdleTimeout, Rule::ProgressTimeout];
        let words: Vec<_> = rules.map(Rule::word).to_vec();
        assert_eq!(words, ["startup_grace", "heartbeat_timeout", "idle_timeout", "progress_timeout"]);
    }

    #[test]
    fn a_step_that_does_not_advance_is_a_stall_even_while_heartbeats_arrive() {
        let l = Limits { progress_timeout: Some(s(60)), late_after: s(600), ..limits(Protocol::V1, None) };
        let origin = Instant::now();
        // Beating every moment (a heartbeat thread), the step unchanged since second 10.
        let judge_at = |phase, now: u64| {
            let r = Readings {
                started: origin,
                last_beat: Some(origin + s(now)),
                last_output: None,
                last_advance: Some((origin + s(10), phase)),
            };
            judge(&l, &r, origin + s(now))
        };
        assert_eq!(judge_at(Phase::Running, 69).stall, None);
        assert_eq!(judge_at(Phase::Running, 69).next, Some(s(1)));
        assert_eq!(judge_at(Phase::Running, 70).stall, Some((Rule::ProgressTimeout, s(60))));
        // An announced phase gets its own length; an unannounced one the deadline.
        assert_eq!(judge_at(Phase::Other(Some(s(300))), 70).stall, None);
        assert_eq!(judge_at(Phase::Other(Some(s(300))), 70).next, Some(s(240)));
        assert_eq!(judge_at(Phase::Other(Some(s(300))), 310).stall, Some((Rule::ProgressTimeout, s(300))));
        assert_eq!(judge_at(Phase::Other(None), 70).stall, Some((Rule::ProgressTimeout, s(60))));
        // A trainer on its way out has no step to take.
        assert_eq!(judge_at(Phase::Unbounded, 10_000).stall, None);
        // Without the deadline, nothing of this counts.
        let off = Limits { progress_timeout: None, ..l };
        let r = Readings {
            started: origin,
            last_beat: Some(origin + s(500)),
            last_output: None,
            last_advance: Some((origin, Phase::Running)),
        };
        assert_eq!(judge(&off, &r, origin + s(500)).stall, None);
    }
}
