//! Far deadlines on one grid shared by every job.
//!
//! Each running job keeps two timers: its stall clock's next deadline (about every ten seconds while
//! heartbeats flow) and its next look at its logs' sizes. A thousand jobs made those two hundred
//! timer expiries a second, each at its own millisecond, so each woke a runtime thread for one
//! message: on a 2-core machine each wake-up cost about as much as reading a progress file. Moved
//! onto a shared grid, the deadlines of many jobs expire in the same tick of the runtime's timer
//! wheel and are served by one wake-up. Near deadlines (under two grid steps) stay exact.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The grid's step.
pub const STEP: Duration = Duration::from_millis(250);

/// `after`, moved earlier onto the grid when it is at least two steps away (by less than one step).
/// For deadlines that must not be late: a timer that fires early looks again and arms what is left,
/// by then near and exact.
pub fn earlier(after: Duration) -> Duration {
    snap(after, Instant::now(), false)
}

/// `after`, moved later onto the grid when it is at least two steps away (by less than one step).
/// For looks that may come a little late but not early (one due only after a full interval).
pub fn later(after: Duration) -> Duration {
    snap(after, Instant::now(), true)
}

fn snap(after: Duration, now: Instant, up: bool) -> Duration {
    if after < 2 * STEP {
        return after;
    }
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| now);
    let at = (now + after).saturating_duration_since(origin).as_nanos();
    let step = STEP.as_nanos();
    let steps = at / step + u128::from(up && !at.is_multiple_of(step));
    let point = origin + Duration::from_nanos(u64::try_from(steps * step).unwrap_or(u64::MAX));
    point.saturating_duration_since(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_deadlines_land_on_shared_points_within_a_step_and_near_ones_stay_exact() {
        let now = Instant::now();
        let near = STEP * 2 - Duration::from_nanos(1);
        assert_eq!(snap(near, now, false), near);
        assert_eq!(snap(near, now, true), near);
        let mut points = std::collections::HashSet::new();
        for ms in (500..20_000).step_by(7) {
            let after = Duration::from_millis(ms);
            let (early, late) = (snap(after, now, false), snap(after, now, true));
            assert!(early <= after && after - early < STEP, "{after:?} → {early:?}");
            assert!(late >= after && late - after < STEP, "{after:?} → {late:?}");
            points.insert(now + early);
        }
        // Deadlines 7 ms apart over 19.5 s share 79 points (one per step), not 2,786.
        assert!(points.len() <= 80, "{} points", points.len());
        // Two jobs that ask at different moments for deadlines in the same step meet on one point.
        let later_now = now + Duration::from_millis(3);
        assert_eq!(
            now + snap(Duration::from_millis(5_100), now, false),
            later_now + snap(Duration::from_millis(5_097), later_now, false)
        );
    }
}
