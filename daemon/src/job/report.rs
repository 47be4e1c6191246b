//! A job's steady progress reports, applied by the progress watcher without waking the job's actor.
//!
//! At a thousand jobs writing progress once a second, a message per report to the job's actor
//! (ractor's send and receive, the wake of the actor's task and, with two runtime workers, of the
//! second worker) was most of trainerd's CPU (docs/benchmarks.md). Most reports change nothing the
//! actor acts on: the heartbeat and the step move, and the view shows them. So while the actor is
//! idle and its attempt runs steadily, it leaves a [`Steady`] here, and the watcher reads such a
//! report itself and applies it: the beat's and the step's times, the newest report, the view's
//! patch, the metric point. Everything else (a new checkpoint, a trainer state other than running, a
//! new metric name, a file that cannot be used) goes to the actor as before. The actor takes what
//! the watcher applied before it handles any message ([`Reports::take`]), which also stops the
//! watcher from applying anything until the actor leaves a new [`Steady`] after the message.

use super::stall::Phase;
use super::ReadError;
use crate::hub::{Fallback, LiveFacts};
use crate::shared::Shared;
use crate::store::metrics;
use crate::store::records::{JobId, JobRecord};
use crate::store::Store;
use crate::untrusted::LocalDir;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use trainerd_proto::trainer::{unix_now, Progress, TrainerState};
use trainerd_proto::v1 as pb;

/// A metric point as last recorded: a report that repeats it records nothing, and a report with
/// its names (the usual one) needs no look at the job's set of names. Flat (each name after its
/// length, in one buffer), so comparing a report with it reads two allocations, not one per name:
/// at a thousand reports a second each is a cache miss.
#[derive(Debug, Default, PartialEq)]
pub struct LastPoint {
    recorded: bool,
    step: u64,
    names: Vec<u8>,
    values: Vec<f64>,
}

impl Clone for LastPoint {
    fn clone(&self) -> LastPoint {
        LastPoint { recorded: self.recorded, step: self.step, names: self.names.clone(), values: self.values.clone() }
    }

    fn clone_from(&mut self, source: &LastPoint) {
        (self.recorded, self.step) = (source.recorded, source.step);
        self.names.clone_from(&source.names);
        self.values.clone_from(&source.values);
    }
}

impl LastPoint {
    /// Whether `values` have this point's names, in its order.
    pub fn same_names(&self, values: &[(&str, f64)]) -> bool {
        let mut rest = self.names.as_slice();
        self.recorded
            && values.iter().all(|(name, _)| {
                let len = usize::from(rest.first().copied().unwrap_or(0));
                let same = rest.len() > len && len == name.len() && &rest[1..=len] == name.as_bytes();
                rest = rest.get(len + 1..).unwrap_or_default();
                same
            })
            && rest.is_empty()
    }

    /// Whether `values` at `step` are this point.
    fn repeats(&self, step: u64, values: &[(&str, f64)]) -> bool {
        self.step == step
            && self.values.len() == values.len()
            && self.values.iter().zip(values).all(|(a, (_, b))| a == b)
            && self.same_names(values)
    }

    /// Becomes the point of `values` at `step` (their names are at most `NAME_MAX` bytes each).
    fn set(&mut self, step: u64, values: &[(&str, f64)]) {
        if !self.same_names(values) {
            self.names.clear();
            for (name, _) in values {
                let len = name.len().min(metrics::NAME_MAX).min(usize::from(u8::MAX));
                self.names.push(len as u8);
                self.names.extend_from_slice(&name.as_bytes()[..len]);
            }
        }
        (self.recorded, self.step) = (true, step);
        self.values.clear();
        self.values.extend(values.iter().map(|(_, v)| *v));
    }
}

/// What the actor lets the watcher apply on its own, and what the watcher applied since.
struct Steady {
    /// Whether the watcher may apply reports now (not while the actor handles a message).
    open: bool,
    /// The attempt the reports belong to.
    attempt: u32,
    /// The record the hub's view was built from, and its version: a patch applies only to that view.
    version: u64,
    record: Arc<JobRecord>,
    /// What the view shows from that record where a report says nothing.
    fallback: Fallback,
    /// The live facts of that view; each applied report sets their progress and message. Their
    /// progress is the actor's own while nothing was applied ([`Reports::give`]).
    facts: LiveFacts,
    /// A report was applied since the actor last took what was.
    applied: bool,
    /// The metric names the job has recorded: a report with another goes to the actor.
    names: HashSet<String>,
    /// The last metric point recorded: a report that repeats it records nothing.
    last_point: LastPoint,
    /// The heartbeat number and the step last seen, to tell a new beat and a new step.
    seq: u64,
    step: u64,
    /// Applied since the actor last took them: the newest new beat, the newest change of step.
    beat: Option<(u64, Instant)>,
    advance: Option<(u64, Phase, Instant)>,
}

/// What the watcher applied while the actor was idle, for the actor to take in.
pub struct Applied {
    /// The attempt it belongs to.
    pub attempt: u32,
    /// The newest new heartbeat (its number, when it was seen).
    pub beat: Option<(u64, Instant)>,
    /// The newest change of step (the step, its phase, when it was seen).
    pub advance: Option<(u64, Phase, Instant)>,
    /// The newest report: the actor's own given back (see [`Reports::give`]), or the newest the
    /// watcher applied.
    pub progress: Option<Progress>,
    /// Whether the watcher applied any report, and then the last metric point recorded since.
    pub applied: Option<LastPoint>,
}

/// The actor's word after a message: the job runs steadily, as these say.
pub struct Leave<'a> {
    pub attempt: u32,
    pub version: u64,
    pub record: &'a Arc<JobRecord>,
    pub facts: &'a LiveFacts,
    pub names: &'a HashSet<String>,
    pub last_point: &'a LastPoint,
    /// The heartbeat number and the step of the last report the actor knows.
    pub seq: u64,
    pub step: u64,
}

/// The job's cell shared by its actor and the watcher, which holds it as the job's wake-up (see
/// [`Reports::wake`]): what a report needs is in this one allocation (the directory, the steady view),
/// a pointer from the watcher's entry, not three.
pub struct Reports {
    id: JobId,
    shared: Arc<Shared>,
    /// The trainer's directory held open; without it (not a local disk) every report goes to the
    /// actor, which reads it off the runtime.
    dir: Option<LocalDir>,
    steady: Mutex<Option<Steady>>,
    /// Tells the actor that the progress file changed (a report the watcher leaves to it).
    tell: Box<dyn Fn() + Send + Sync>,
}

impl Reports {
    /// The cell of job `id`, whose trainer's directory is `dir` when it is read inline; `tell` hands
    /// a report to the job's actor.
    pub fn new(
        id: JobId,
        shared: Arc<Shared>,
        dir: Option<LocalDir>,
        tell: impl Fn() + Send + Sync + 'static,
    ) -> Reports {
        Reports { id, shared, dir, steady: Mutex::new(None), tell: Box::new(tell) }
    }

    /// The trainer's directory, when it is read inline.
    pub fn dir(&self) -> Option<&LocalDir> {
        self.dir.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Steady>> {
        self.steady.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The actor is about to handle a message: what the watcher applied, and no more applying until
    /// [`Reports::leave`].
    pub fn take(&self) -> Option<Applied> {
        let mut held = self.lock();
        let steady = held.as_mut().filter(|s| s.open)?;
        steady.open = false;
        let applied = std::mem::take(&mut steady.applied).then(|| steady.last_point.clone());
        Some(Applied {
            attempt: steady.attempt,
            beat: steady.beat.take(),
            advance: steady.advance.take(),
            progress: steady.facts.progress.take(),
            applied,
        })
    }

    /// While the job is steady, the cell holds the actor's last report instead of the actor (which
    /// takes it back with the next message): a job keeps one report in memory, not two.
    pub fn give(&self, progress: &mut Option<Progress>) {
        if let Some(steady) = self.lock().as_mut().filter(|s| s.open && s.facts.progress.is_none()) {
            steady.facts.progress = progress.take();
        }
    }

    /// The actor handled its message: the watcher may apply reports while `leave` says the job runs
    /// steadily (the view held since is kept when it still says the same), and none otherwise.
    /// Whether it may now.
    pub fn leave(&self, leave: Option<Leave<'_>>) -> bool {
        let mut held = self.lock();
        let Some(l) = leave else {
            *held = None;
            return false;
        };
        if let Some(s) = held.as_mut().filter(|s| {
            s.attempt == l.attempt
                && s.version == l.version
                && s.names.len() == l.names.len()
                && same_facts(&s.facts, l.facts)
        }) {
            (s.seq, s.step, s.open) = (l.seq, l.step, true);
            s.last_point.clone_from(l.last_point);
            s.facts.message.clone_from(&l.facts.message);
            return true;
        }
        *held = Some(Steady {
            open: true,
            attempt: l.attempt,
            version: l.version,
            record: l.record.clone(),
            fallback: Fallback::of(l.record),
            // The message the view shows: a report's is shown only when it differs (see
            // `Hub::patch_report`). The progress is each report's.
            facts: LiveFacts { progress: None, ..l.facts.clone() },
            names: l.names.clone(),
            last_point: l.last_point.clone(),
            seq: l.seq,
            step: l.step,
            applied: false,
            beat: None,
            advance: None,
        });
        true
    }

    /// Applies a report when the job is steady and the report needs nothing of the actor. False
    /// when the actor must handle it.
    fn apply(&self) -> bool {
        let Some(dir) = &self.dir else { return false };
        let mut held = self.lock();
        let Some(steady) = held.as_mut().filter(|s| s.open) else { return false };
        let progress = match super::read_progress_in(dir) {
            Ok(progress) => progress,
            // Gone between the event and the read: the next file brings the next event.
            Err(ReadError::Missing) => return true,
            Err(_) => return false,
        };
        let checkpoint_known = match &progress.latest_checkpoint {
            Some(c) => steady.record.latest_checkpoint.as_ref().is_some_and(|known| known.path == c.path),
            None => true,
        };
        let values = reported_values(&progress);
        if progress.state != TrainerState::Running
            || !checkpoint_known
            || (!steady.last_point.same_names(&values) && values.iter().any(|(name, _)| !steady.names.contains(*name)))
        {
            return false;
        }
        let now = Instant::now();
        if progress.heartbeat_seq != steady.seq {
            steady.seq = progress.heartbeat_seq;
            steady.beat = Some((progress.heartbeat_seq, now));
        }
        if progress.step != steady.step {
            steady.step = progress.step;
            steady.advance = Some((progress.step, Phase::Running, now));
        }
        let (step, attempt) = (progress.step, steady.attempt);
        let recorded = record_point(&self.shared.store, self.id, attempt, step, &values, &mut steady.last_point);
        // Built only for a job someone watches.
        let point = || recorded.map(|at| point_update(step, at, attempt, &values));
        let written_at = progress.updated_at;
        let message_changed = steady.facts.message != progress.message;
        let hub = &self.shared.hub;
        let patched = hub.patch_report(
            self.id.0,
            steady.version,
            &steady.record,
            &steady.fallback,
            &progress,
            message_changed,
            point,
        );
        drop(values);
        if message_changed {
            steady.facts.message.clone_from(&progress.message);
        }
        steady.facts.progress = Some(progress);
        steady.applied = true;
        if !patched {
            // The hub's view is another version's: the actor publishes its own (what was applied
            // here is taken by it first, and reading the same file again changes nothing more).
            return false;
        }
        let lag = unix_now() - written_at;
        if lag.is_finite() && (0.0..3600.0).contains(&lag) {
            self.shared.metrics.progress_propagation.observe(Duration::from_secs_f64(lag));
        }
        true
    }
}

impl super::watch::Wake for Reports {
    /// A new progress file: applied here, or handed to the actor.
    fn wake(&self) {
        if !self.apply() {
            (self.tell)();
        }
    }
}

/// Whether two live views agree on everything but the report they show.
fn same_facts(a: &LiveFacts, b: &LiveFacts) -> bool {
    a.stalled == b.stalled
        && a.pid == b.pid
        && a.gpus == b.gpus
        && a.metrics == b.metrics
        && a.waiting_for == b.waiting_for
}

/// Records the metric point of `values` at `step` in the job's history, unless it repeats `last`
/// (which it then becomes), and returns the point's time (Unix seconds). A store that cannot write
/// loses the point, said in the log.
pub fn record_point(
    store: &Store,
    id: JobId,
    attempt: u32,
    step: u64,
    values: &[(&str, f64)],
    last: &mut LastPoint,
) -> Option<f64> {
    if values.is_empty() || last.repeats(step, values) {
        return None;
    }
    let point = metrics::PointRef { step, at: unix_now(), attempt, values };
    if let Err(e) = store.append_point(id, &point) {
        tracing::warn!(job = %id, "metric point at step {step} not recorded: {e}");
        return None;
    }
    last.set(step, values);
    Some(point.at)
}

/// A recorded point as its job's watchers get it.
pub fn point_update(step: u64, at: f64, attempt: u32, values: &[(&str, f64)]) -> pb::MetricValues {
    pb::MetricValues {
        step,
        at,
        attempt,
        values: values.iter().map(|(name, value)| (name.to_string(), *value)).collect(),
    }
}

/// The named scalars a progress report carries: the protocol's own (loss, val_loss, lr,
/// samples_per_sec) and its `metrics`.
pub fn reported_values(p: &Progress) -> Vec<(&str, f64)> {
    let own = [("loss", p.loss), ("val_loss", p.val_loss), ("lr", p.lr), ("samples_per_sec", p.samples_per_sec)];
    own.into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .chain(p.metrics.iter().map(|(name, value)| (name.as_str(), *value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_point_knows_its_names_only_in_full_and_in_order_and_its_repeats_exactly() {
        let mut last = LastPoint::default();
        assert!(!last.same_names(&[]), "nothing recorded yet");
        last.set(5, &[("loss", 0.5), ("acc", 0.25)]);
        assert!(last.same_names(&[("loss", 9.0), ("acc", 9.0)]));
        for other in [
            &[("loss", 0.5)][..],
            &[("acc", 0.25), ("loss", 0.5)],
            &[("loss", 0.5), ("acc", 0.25), ("lr", 0.1)],
            &[("loss", 0.5), ("acc2", 0.25)],
            &[("loss\u{3}acc", 0.5)],
            &[],
        ] {
            assert!(!last.same_names(other), "{other:?}");
        }
        assert!(last.repeats(5, &[("loss", 0.5), ("acc", 0.25)]));
        assert!(!last.repeats(6, &[("loss", 0.5), ("acc", 0.25)]), "another step");
        assert!(!last.repeats(5, &[("loss", 0.5), ("acc", 0.3)]), "another value");
        last.set(6, &[("loss", f64::NAN)]);
        assert!(!last.repeats(6, &[("loss", f64::NAN)]), "a NaN is recorded again: it equals nothing");
        let mut copy = LastPoint::default();
        copy.clone_from(&last);
        assert!(copy.same_names(&[("loss", 1.0)]) && copy.step == 6);
    }

    #[test]
    fn a_point_is_recorded_once_and_its_update_carries_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (job, _) = store.create(crate::store::tests::spec("m", None), None, 1.0).unwrap();
        let mut last = LastPoint::default();
        let values = [("loss", 0.5), ("acc", 0.25)];
        let at = record_point(&store, job.id, 1, 3, &values, &mut last).expect("recorded");
        assert_eq!(record_point(&store, job.id, 1, 3, &values, &mut last), None, "a repeat records nothing");
        assert_eq!(record_point(&store, job.id, 1, 3, &[], &mut LastPoint::default()), None, "nor does nothing");
        let update = point_update(3, at, 1, &values);
        assert_eq!((update.step, update.attempt, update.values.len(), update.values["acc"]), (3, 1, 2, 0.25));
        assert_eq!(store.metrics(job.id, 0, 10).unwrap()["loss"].len(), 1);
    }
}
