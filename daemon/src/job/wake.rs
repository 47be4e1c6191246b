//! A job's one timer for its far deadlines: the stall clock's next deadline and the next look at its
//! logs' sizes.
//!
//! A steady job has both about every ten seconds. With a timer each, a thousand jobs made two hundred
//! timer expiries a second, each a message to a job's actor (and a task of its own for the timer):
//! as much of trainerd's CPU as all of their progress reports' patches. Here one timer serves both:
//! it fires at the earlier deadline, and a look at the logs due within a slack (half its interval)
//! of a stall deadline is taken with it: early (which only makes the cap stricter) or late by at most
//! the slack. After the first such look the two deadlines come round together: one expiry per job
//! per round. The stall deadline itself is never moved.

use std::time::{Duration, Instant};

/// The deadlines, and the timer armed for them.
#[derive(Debug, Default)]
pub struct Wakes {
    stall: Option<Instant>,
    logs: Option<Instant>,
    /// How far the look at the logs may move to meet the stall deadline.
    slack: Duration,
    /// The timer in flight: its generation, and when it fires.
    armed: Option<(u64, Instant)>,
    generation: u64,
}

/// A timer to arm: send the wake-up of `generation` after `after`.
#[derive(Debug, PartialEq, Eq)]
pub struct Arm {
    pub generation: u64,
    pub after: Duration,
}

/// What is due when a wake-up comes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// The stall clock's deadline has passed: judge it (see [`Wakes::judging`]).
    pub stall: bool,
    /// The logs' sizes are to be looked at (taken: set the next look with [`Wakes::logs_at`]).
    pub logs: bool,
}

impl Wakes {
    /// The stall clock's next deadline (`None`: it has none). Arm what this returns.
    pub fn stall_at(&mut self, at: Option<Instant>, now: Instant) -> Option<Arm> {
        self.stall = at;
        self.arm(now)
    }

    /// The next look at the logs (`None`: no more looks), which may move by `slack` to meet the
    /// stall deadline. Arm what this returns.
    pub fn logs_at(&mut self, at: Option<Instant>, slack: Duration, now: Instant) -> Option<Arm> {
        (self.logs, self.slack) = (at, slack);
        self.arm(now)
    }

    /// A wake-up of `generation` came at `now`. A stale one too: what is due is due by the clock (and
    /// a wake-up handled again after a failed store write finds the same).
    pub fn woke(&mut self, generation: u64, now: Instant) -> Due {
        if self.armed.is_some_and(|(g, _)| g == generation) {
            self.armed = None;
        }
        let stall = self.stall.is_some_and(|at| at <= now);
        // Early only with the stall judge, which it came to meet.
        let logs = self.logs.is_some_and(|at| at <= now || (stall && at <= now + self.slack));
        if logs {
            self.logs = None;
        }
        Due { stall, logs }
    }

    /// The attempt ended: no deadline is left (a timer in flight finds nothing due).
    pub fn clear(&mut self) {
        (self.stall, self.logs) = (None, None);
    }

    /// The stall deadline is being judged: until the judge sets the next one, there is none. Give
    /// what this returns to [`Wakes::judge_failed`] when the judging fails, to have it again.
    pub fn judging(&mut self) -> Option<Instant> {
        self.stall.take()
    }

    /// The judging of deadline `taken` failed before it set a next one: it is the deadline again.
    pub fn judge_failed(&mut self, taken: Option<Instant>) {
        self.stall = self.stall.or(taken);
    }

    /// The timer for what is left, unless one in flight fires no later than it is needed. A timer
    /// that fires early finds nothing due and arms what is left.
    pub fn arm(&mut self, now: Instant) -> Option<Arm> {
        let at = match (self.stall, self.logs) {
            // The look waits for the stall deadline just after it.
            (Some(stall), Some(logs)) if logs <= stall && stall <= logs + self.slack => stall,
            (stall, logs) => stall.into_iter().chain(logs).min()?,
        };
        if self.armed.is_some_and(|(_, armed)| armed <= at) {
            return None;
        }
        self.generation += 1;
        self.armed = Some((self.generation, at));
        Some(Arm { generation: self.generation, after: at.saturating_duration_since(now) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// What a steady job does with its wake-ups over `rounds` of `stall_every`: each stall judged
    /// sets the next deadline `stall_every` later, each look the next `logs_every` later (slack:
    /// half that). Returns the wake-ups, the stall judges' lateness (max) and the gaps between looks.
    fn steady(
        stall_every: Duration,
        logs_every: Duration,
        phase: Duration,
        horizon: Duration,
    ) -> (usize, Duration, Vec<Duration>) {
        let t0 = Instant::now();
        let mut w = Wakes::default();
        let mut timers: Vec<(Instant, u64)> = Vec::new();
        let arm = |timers: &mut Vec<(Instant, u64)>, a: Option<Arm>, now: Instant| {
            if let Some(a) = a {
                timers.push((now + a.after, a.generation));
            }
        };
        let mut deadline = t0 + stall_every;
        arm(&mut timers, w.stall_at(Some(deadline), t0), t0);
        arm(&mut timers, w.logs_at(Some(t0 + phase), logs_every / 2, t0), t0);
        let (mut wakes, mut late, mut looks) = (0, Duration::ZERO, vec![t0]);
        while let Some(i) = (0..timers.len()).min_by_key(|i| timers[*i].0) {
            let (now, generation) = timers.swap_remove(i);
            if now > t0 + horizon {
                break;
            }
            wakes += 1;
            let due = w.woke(generation, now);
            if due.stall {
                late = late.max(now - deadline);
                w.judging();
                deadline = now + stall_every;
                arm(&mut timers, w.stall_at(Some(deadline), now), now);
            }
            assert!(w.stall.is_some_and(|at| at > now), "a stall deadline passed without its judge");
            if due.logs {
                looks.push(now);
                arm(&mut timers, w.logs_at(Some(now + logs_every), logs_every / 2, now), now);
            }
            arm(&mut timers, w.arm(now), now);
        }
        (wakes, late, looks.windows(2).map(|p| p[1] - p[0]).collect())
    }

    #[test]
    fn one_timer_serves_both_deadlines_and_the_look_at_the_logs_joins_the_stall_judge() {
        for tenths in 1..100 {
            let phase = S * tenths / 10;
            let (wakes, late, gaps) = steady(10 * S, 10 * S, phase, 300 * S);
            assert_eq!(late, Duration::ZERO, "phase {phase:?}: a stall judged late");
            // 30 rounds: one wake-up each once joined (a few before), not 60.
            assert!(wakes <= 33, "phase {phase:?}: {wakes} wake-ups");
            assert!(
                gaps.iter().all(|g| *g <= 15 * S),
                "phase {phase:?}: a look {:?} after the last",
                gaps.iter().max()
            );
            assert!(gaps.len() >= 29, "phase {phase:?}: {} looks", gaps.len());
        }
        // Frequent stall deadlines take every look with them; rare ones leave the looks their own.
        let (wakes, late, gaps) = steady(2 * S, 10 * S, 3 * S, 300 * S);
        assert_eq!((wakes, late), (150, Duration::ZERO));
        assert!(gaps.iter().all(|g| *g <= 10 * S) && gaps.len() >= 30);
        let (wakes, late, gaps) = steady(120 * S, 10 * S, 3 * S, 300 * S);
        assert_eq!(late, Duration::ZERO);
        assert!(wakes <= 32, "{wakes} wake-ups");
        assert!(gaps.iter().all(|g| *g <= 15 * S) && gaps.len() >= 29);
    }

    #[test]
    fn a_failed_judging_keeps_its_deadline_and_no_deadline_arms_nothing() {
        let t0 = Instant::now();
        let mut w = Wakes::default();
        let arm = w.stall_at(Some(t0 + S), t0).unwrap();
        assert_eq!(w.woke(arm.generation, t0 + S), Due { stall: true, logs: false });
        let taken = w.judging();
        assert_eq!(w.arm(t0 + S), None, "nothing left while it is judged");
        w.judge_failed(taken);
        // The wake-up handled again later (a stale generation by then) still finds it due.
        assert!(w.woke(arm.generation, t0 + 3 * S).stall);
        // A judge that set a next deadline before failing keeps that one.
        let taken = w.judging();
        w.stall_at(Some(t0 + 9 * S), t0 + 3 * S);
        w.judge_failed(taken);
        assert_eq!(w.stall, Some(t0 + 9 * S));
        // A sooner deadline arms a sooner timer; a later one keeps the timer in flight.
        let sooner = w.stall_at(Some(t0 + 4 * S), t0 + 3 * S).unwrap();
        assert_eq!(sooner.after, S);
        assert_eq!(w.stall_at(Some(t0 + 8 * S), t0 + 3 * S), None);
        assert_eq!(w.woke(sooner.generation, t0 + 4 * S), Due::default(), "early: nothing due");
        assert_eq!(w.arm(t0 + 4 * S).unwrap().after, 4 * S);
        w.stall_at(None, t0 + 4 * S);
        assert_eq!(w.woke(w.armed.unwrap().0, t0 + 8 * S), Due::default());
        assert_eq!(w.arm(t0 + 8 * S), None, "no deadline, no timer");
    }
}
