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

/// A metric point as last recorded: its step and values.
pub type LastPoint = Option<(u64, Vec<(String, f64)>)>;

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
            || values.iter().any(|(name, _)| !steady.names.contains(name))
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
        let point =
            record_point(&self.shared.store, self.id, steady.attempt, progress.step, values, &mut steady.last_point);
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
        if message_changed {
            steady.facts.message.clone_from(&progress.message);
        }
        steady.facts.progress = Some(progress);
        steady.applied = true;
        if patched.is_err() {
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
/// (which it then becomes), and returns it for the job's watchers. A store that cannot write loses
/// the point, said in the log.
pub fn record_point(
    store: &Store,
    id: JobId,
    attempt: u32,
    step: u64,
    values: Vec<(String, f64)>,
    last: &mut LastPoint,
) -> Option<pb::MetricValues> {
    let same = last.as_ref().is_some_and(|(s, v)| *s == step && *v == values);
    if values.is_empty() || same {
        return None;
    }
    let point = metrics::Point { step, at: unix_now(), attempt, values };
    if let Err(e) = store.append_point(id, &point) {
        tracing::warn!(job = %id, "metric point at step {step} not recorded: {e}");
        return None;
    }
    *last = Some((step, point.values.clone()));
    Some(pb::MetricValues { step, at: point.at, attempt: point.attempt, values: point.values.into_iter().collect() })
}

/// The named scalars a progress report carries: the protocol's own (loss, val_loss, lr,
/// samples_per_sec) and its `metrics`.
pub fn reported_values(p: &Progress) -> Vec<(String, f64)> {
    let own = [("loss", p.loss), ("val_loss", p.val_loss), ("lr", p.lr), ("samples_per_sec", p.samples_per_sec)];
    own.into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), value?)))
        .chain(p.metrics.iter().map(|(name, value)| (name.clone(), *value)))
        .collect()
}
