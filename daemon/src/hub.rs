//! The live view of jobs that clients read and watch: per job, the latest `Job` message (the stored
//! record with the trainer's live progress on top) and a broadcast of every update.
//!
//! Job actors publish; the API reads. The hub holds no authority: the store is the truth, and a job
//! that is not live here is read from the store.

use crate::store::records::{ExitStatus, JobRecord};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;
use trainerd_proto::state::is_terminal;
use trainerd_proto::trainer::Progress;
use trainerd_proto::v1 as pb;

/// How many updates a slow watcher may fall behind before it is sent a fresh snapshot instead. Each
/// job's channel holds this many updates from its creation: 1,024 cost 400 KiB a job.
const BACKLOG: usize = 16;

/// The live views and their broadcasts.
/// The queue as clients see it: admission order and what its head waits for (everyone else waits
/// for the jobs ahead).
#[derive(Debug, Default)]
pub struct QueueView {
    /// `key(priority, id)` of each queued job, ascending: the admission order (a deque: jobs join at
    /// the back and leave at the front).
    pub order: std::collections::VecDeque<(std::cmp::Reverse<i32>, u64)>,
    /// What the first job waits for.
    pub head: String,
}

impl QueueView {
    /// The sort key of the admission order: higher priority first, then older first.
    pub fn key(priority: i32, id: u64) -> (std::cmp::Reverse<i32>, u64) {
        (std::cmp::Reverse(priority), id)
    }
}

#[derive(Default)]
pub struct Hub {
    jobs: Mutex<HashMap<u64, Live>>,
    /// The queue; the supervisor replaces it on every change.
    queue: Mutex<QueueView>,
    /// How many jobs have a channel of updates: someone watches them (or did, until their next
    /// update finds no one left). See [`Hub::streams`].
    channels: Arc<AtomicUsize>,
}

struct Live {
    latest: pb::Job,
    /// Which version of the job's record `latest` was built from (see [`Hub::patch_live`]); 0 when
    /// no version was given.
    version: u64,
    /// Every update; the receiving ends are the WatchJob streams. Made at the first subscription and
    /// dropped when the last watcher leaves: a channel holds `BACKLOG` updates from its creation, and
    /// ten thousand queued jobs nobody watches need none.
    tx: Option<broadcast::Sender<pb::JobUpdate>>,
}

impl Live {
    /// Drops the channel when its last watcher has left.
    fn prune(&mut self, channels: &AtomicUsize) {
        if self.tx.as_ref().is_some_and(|tx| tx.receiver_count() == 0) {
            self.tx = None;
            channels.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sends the view as it now is to its watchers, if it has any.
    fn send(&mut self, kind: &str, point: Option<pb::MetricValues>, channels: &AtomicUsize) {
        self.send_with(kind, || point, channels)
    }

    /// [`Live::send`] with a point made only when the view has watchers.
    fn send_with(&mut self, kind: &str, point: impl FnOnce() -> Option<pb::MetricValues>, channels: &AtomicUsize) {
        self.prune(channels);
        if let Some(tx) = &self.tx {
            let _ = tx.send(pb::JobUpdate { job: Some(self.latest.clone()), kind: kind.into(), point: point() });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// Publishes a job's new view to its watchers. A terminal or paused view is the last: the channel
    /// closes after it, which ends every watch stream (a resumed job gets a new channel).
    pub fn publish(&self, job: pb::Job, kind: &str) {
        self.publish_version(job, 0, kind, None)
    }

    /// [`Hub::publish`], with the metric values recorded with this update, saying which version of
    /// the record the view was built from, so that the next update from the same record can be a
    /// [`Hub::patch_live`]. For a job actor's views, built out of the queue (`job_view(record, facts,
    /// (0, String::new()))`).
    pub fn publish_version(&self, job: pb::Job, version: u64, kind: &str, point: Option<pb::MetricValues>) {
        let id = parse_id(&job.id);
        let terminal = ends_watch(job.state());
        let mut jobs = lock(&self.jobs);
        let Some(live) = jobs.get_mut(&id) else {
            if !terminal {
                jobs.insert(id, Live { latest: job, version, tx: None });
            }
            return;
        };
        live.version = version;
        live.prune(&self.channels);
        match &live.tx {
            Some(tx) => {
                live.latest = job.clone();
                let _ = tx.send(pb::JobUpdate { job: Some(job), kind: kind.into(), point });
            }
            None => live.latest = job,
        }
        if terminal && jobs.remove(&id).is_some_and(|l| l.tx.is_some()) {
            self.channels.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Publishes an update that changed only the live facts (a progress report), by applying them to
    /// the view held here instead of building a new one: most of a report's cost at a thousand jobs
    /// was building, moving and dropping whole views. Only when the held view was built from record
    /// `version` (it carries everything the record says); otherwise it publishes nothing and gives
    /// the metric values back.
    pub fn patch_live(
        &self,
        id: u64,
        version: u64,
        record: &JobRecord,
        facts: &LiveFacts,
        kind: &str,
        point: Option<pb::MetricValues>,
    ) -> Result<(), Option<pb::MetricValues>> {
        let mut jobs = lock(&self.jobs);
        let Some(live) = jobs.get_mut(&id).filter(|l| version != 0 && l.version == version) else { return Err(point) };
        apply_live(&mut live.latest, record, facts);
        // A job with an actor is out of the queue: what it waits for is only its executor's word.
        let waiting = facts.waiting_for.as_deref().unwrap_or_default();
        if live.latest.waiting_for != waiting {
            live.latest.waiting_for = waiting.to_string();
        }
        live.send(kind, point, &self.channels);
        Ok(())
    }

    /// [`Hub::patch_live`] for a steady progress report (see `job::report`), whose view's other live
    /// facts are the ones it was last built or patched with: only the report's own fields are set
    /// (with `fallback`, the record's, where it has none), and its message only when
    /// `message_changed` (the record is read only then). At a thousand reports a second, comparing
    /// every live field of each view (each a cold cache line by the time its next report comes) was
    /// half the cost of a patch. `point` makes the report's metric point, called only when the job
    /// has watchers. False when the view is another version's (nothing was patched).
    #[allow(clippy::too_many_arguments)]
    pub fn patch_report(
        &self,
        id: u64,
        version: u64,
        record: &JobRecord,
        fallback: &Fallback,
        report: &Progress,
        message_changed: bool,
        point: impl FnOnce() -> Option<pb::MetricValues>,
    ) -> bool {
        let mut jobs = lock(&self.jobs);
        let Some(live) = jobs.get_mut(&id).filter(|l| version != 0 && l.version == version) else { return false };
        show_report(&mut live.latest, fallback, Some(report));
        if message_changed {
            live.latest.message = report.message.as_ref().or(record.message.as_ref()).cloned().unwrap_or_default();
        }
        live.send_with("progress", point, &self.channels);
        true
    }

    /// The latest live view, if the job is live.
    pub fn latest(&self, id: u64) -> Option<pb::Job> {
        lock(&self.jobs).get(&id).map(|l| l.latest.clone())
    }

    /// The live view and a receiver of the updates after it, with no gap between the two; None when
    /// the job is not live (read it from the store instead).
    pub fn subscribe(&self, id: u64) -> Option<(pb::Job, broadcast::Receiver<pb::JobUpdate>)> {
        lock(&self.jobs).get_mut(&id).map(|l| {
            let rx = match &l.tx {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = broadcast::channel(BACKLOG);
                    l.tx = Some(tx);
                    self.channels.fetch_add(1, Ordering::Relaxed);
                    rx
                }
            };
            (l.latest.clone(), rx)
        })
    }

    /// A count of the jobs someone watches (it may still count one whose last watcher left, until
    /// its next update): what tells the progress watcher that a report's delay is someone's wait.
    pub fn streams(&self) -> Arc<AtomicUsize> {
        self.channels.clone()
    }

    /// Replaces the queue.
    pub fn set_queue(&self, queue: QueueView) {
        *lock(&self.queue) = queue;
    }

    /// A job joined the queue with sort key `key` (see [`QueueView::key`]).
    pub fn queue_insert(&self, key: (std::cmp::Reverse<i32>, u64)) {
        let mut queue = lock(&self.queue);
        let at = queue.order.partition_point(|k| *k < key);
        queue.order.insert(at, key);
    }

    /// The job with sort key `key` left the queue.
    pub fn queue_remove(&self, key: (std::cmp::Reverse<i32>, u64)) {
        let mut queue = lock(&self.queue);
        if let Ok(at) = queue.order.binary_search(&key) {
            queue.order.remove(at);
        }
    }

    /// What the queue's head waits for now.
    pub fn set_queue_head(&self, head: String) {
        lock(&self.queue).head = head;
    }

    /// The 1-based queue position of a job (0 when it is not queued) and what it waits for. A binary
    /// search: `trainctl ls` asks this for every job it lists.
    pub fn queue_position(&self, record: &JobRecord) -> (u32, String) {
        self.position(record.spec.priority, record.id.0)
    }

    fn position(&self, priority: i32, id: u64) -> (u32, String) {
        let queue = lock(&self.queue);
        match queue.order.binary_search(&QueueView::key(priority, id)) {
            Ok(0) => (1, queue.head.clone()),
            Ok(ahead) => (ahead as u32 + 1, format!("{ahead} job(s) ahead in the queue")),
            Err(_) => (0, String::new()),
        }
    }
}

/// Whether a state ends a job's update stream: it ended, or paused (a resumed job streams anew).
pub fn ends_watch(state: pb::JobState) -> bool {
    is_terminal(state) || state == pb::JobState::Paused
}

/// Parses the 12-hex-digit form of a job id.
pub fn parse_id(id: &str) -> u64 {
    u64::from_str_radix(id, 16).unwrap_or(0)
}

/// The live facts about a running attempt that the store does not hold.
#[derive(Debug, Clone, Default)]
pub struct LiveFacts {
    pub progress: Option<Progress>,
    pub stalled: bool,
    pub pid: Option<u32>,
    pub message: Option<String>,
    /// The GPUs the job holds.
    pub gpus: Vec<u32>,
    /// Values from the trainer's output lines beyond step and loss (`progress_regex`'s other groups).
    pub metrics: std::collections::HashMap<String, f64>,
    /// What a started attempt still waits for in its executor (a Slurm job pending in Slurm's queue).
    pub waiting_for: Option<String>,
}

/// Where an attempt started from, in the words `get`, events and the stream use.
pub fn resumed_from_words(attempt: &crate::store::records::Attempt) -> String {
    match &attempt.resumed_from {
        Some(path) => path.display().to_string(),
        None => FROM_THE_BEGINNING.into(),
    }
}

/// What an attempt that was given no checkpoint says.
pub const FROM_THE_BEGINNING: &str = "from the beginning: no checkpoint known";

/// A job as clients see it: the record, with live facts on top.
pub fn job_view(record: &JobRecord, live: &LiveFacts, queue: (u32, String)) -> pb::Job {
    let (queue_position, waiting_for) = queue;
    let last = record.attempts.last();
    let (exit_code, exit_signal) = match last.and_then(|a| a.exit) {
        Some(ExitStatus::Code(c)) => (Some(c), None),
        Some(ExitStatus::Signal(s)) => (None, Some(s)),
        None => (None, None),
    };
    let checkpoint = record.latest_checkpoint.as_ref().map(|c| pb::Checkpoint {
        path: c.path.display().to_string(),
        step: c.step,
        epoch: c.epoch,
    });
    let mut job = pb::Job {
        id: record.id.to_string(),
        name: record.spec.name.clone(),
        state: record.state,
        reason: record.reason,
        restarts: record.attempts.len().saturating_sub(1) as u32,
        attempt: record.attempts.len() as u32,
        exit_code: record.exit_code.or(exit_code),
        exit_signal,
        latest_checkpoint: checkpoint,
        weights_sha256: record.weights_sha256.clone().unwrap_or_default(),
        created_at: record.created_at,
        updated_at: record.updated_at,
        queue_position,
        command: record.spec.command.clone(),
        gpus: record.spec.gpus,
        next_restart_at: record.next_restart_at,
        cancelled_by: record.cancelled_by.clone().unwrap_or_default(),
        waiting_for: match live.waiting_for.clone() {
            Some(executor) if waiting_for.is_empty() => executor,
            _ => waiting_for,
        },
        protocol: record.spec.protocol.word().into(),
        resumed_from: last.map(resumed_from_words).unwrap_or_default(),
        resume_ignored: last.is_some_and(|a| a.resume_ignored),
        restarts_exhausted: record.restarts_exhausted,
        rollbacks: record.rollbacks(),
        executor: if record.spec.more.slurm.is_some() { "slurm" } else { "local" }.into(),
        slurm_job_id: last.and_then(|a| match &a.more.handle {
            Some(crate::store::records::Handle::Slurm { job_id, .. }) => *job_id,
            _ => None,
        }),
        ..Default::default()
    };
    apply_live(&mut job, record, live);
    job
}

/// Sets every field of a view that the live facts decide (with the record's value where the facts
/// say nothing): the one place both a new view and [`Hub::patch_live`] take them from.
fn apply_live(job: &mut pb::Job, record: &JobRecord, live: &LiveFacts) {
    show_report(job, &Fallback::of(record), live.progress.as_ref());
    job.stalled = live.stalled;
    // Reused in place: a report that keeps the message allocates nothing.
    let message = live.message.as_ref().or(record.message.as_ref());
    if job.message.as_str() != message.map(String::as_str).unwrap_or_default() {
        job.message = message.cloned().unwrap_or_default();
    }
    job.pid = live.pid;
    job.assigned_gpus.clone_from(&live.gpus);
    if job.metrics != live.metrics {
        job.metrics.clone_from(&live.metrics);
    }
    if is_terminal(job.state()) {
        job.pid = None;
        job.stalled = false;
    }
}

/// What a view shows from its record where a progress report says nothing: a copy kept with a job's
/// steady view (`job::report`), because at a thousand reports a second each record is a cold cache
/// line, and the report's own fields are not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fallback {
    step: u64,
    total_steps: u64,
    epoch: u64,
    total_epochs: u64,
    loss: Option<f64>,
    val_loss: Option<f64>,
}

impl Fallback {
    /// The record's values.
    pub fn of(record: &JobRecord) -> Fallback {
        Fallback {
            step: record.step,
            total_steps: record.total_steps,
            epoch: record.epoch,
            total_epochs: record.total_epochs,
            loss: record.loss,
            val_loss: record.val_loss,
        }
    }
}

/// Sets the fields of a view that a progress report decides (the record's where there is none).
fn show_report(job: &mut pb::Job, record: &Fallback, p: Option<&Progress>) {
    job.step = p.map(|p| p.step).unwrap_or(record.step);
    job.total_steps = p.map(|p| p.total_steps).filter(|t| *t > 0).unwrap_or(record.total_steps);
    job.epoch = p.map(|p| p.epoch).unwrap_or(record.epoch);
    job.total_epochs = p.map(|p| p.total_epochs).filter(|t| *t > 0).unwrap_or(record.total_epochs);
    job.loss = p.and_then(|p| p.loss).or(record.loss);
    job.val_loss = p.and_then(|p| p.val_loss).or(record.val_loss);
    job.samples_per_sec = p.and_then(|p| p.samples_per_sec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_view_patched_with_new_live_facts_equals_one_built_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let (mut record, _) = store.create(crate::store::tests::spec("patched", None), None, 1.0).unwrap();
        record.message = Some("from the record".into());
        let before = LiveFacts { pid: Some(7), gpus: vec![0], ..LiveFacts::default() };
        let mut progress = Progress::starting(2.0);
        (progress.step, progress.total_steps, progress.loss) = (40, 100, Some(0.5));
        progress.message = Some("epoch 2".into());
        let after = LiveFacts {
            progress: Some(progress),
            stalled: true,
            pid: Some(8),
            message: Some("epoch 2".into()),
            gpus: vec![1, 2],
            metrics: [("acc".to_string(), 0.9)].into(),
            waiting_for: Some("a node".into()),
        };
        let hub = Hub::default();
        let id = record.id.0;
        hub.publish_version(job_view(&record, &before, (0, String::new())), 5, "state", None);
        let (_, mut rx) = hub.subscribe(id).unwrap();
        assert_eq!(hub.patch_live(id, 6, &record, &after, "progress", None), Err(None), "another version");
        assert_eq!(hub.latest(id), Some(job_view(&record, &before, (0, String::new()))), "left alone");
        hub.patch_live(id, 5, &record, &after, "progress", None).unwrap();
        let built = job_view(&record, &after, (0, String::new()));
        assert_eq!(hub.latest(id), Some(built.clone()));
        assert_eq!(rx.recv().await.unwrap().job, Some(built), "watchers get the patched view");
        // And back: facts that say nothing fall back to the record again.
        hub.patch_live(id, 5, &record, &before, "progress", None).unwrap();
        assert_eq!(hub.latest(id), Some(job_view(&record, &before, (0, String::new()))));
    }

    #[tokio::test]
    async fn a_view_patched_with_a_steady_report_equals_one_built_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let (mut record, _) = store.create(crate::store::tests::spec("reported", None), None, 1.0).unwrap();
        (record.message, record.total_steps) = (Some("from the record".into()), 500);
        let report = |step: u64, message: Option<&str>| {
            let mut p = Progress::starting(2.0);
            (p.step, p.loss, p.epoch, p.samples_per_sec) = (step, Some(1.0 / step as f64), step / 10, Some(3.5));
            p.message = message.map(str::to_string);
            p
        };
        let facts = |p: Progress| LiveFacts {
            message: p.message.clone(),
            progress: Some(p),
            pid: Some(8),
            gpus: vec![1],
            metrics: [("acc".to_string(), 0.9)].into(),
            ..LiveFacts::default()
        };
        let hub = Hub::default();
        let id = record.id.0;
        hub.publish_version(
            job_view(&record, &facts(report(1, Some("epoch 0"))), (0, String::new())),
            5,
            "state",
            None,
        );
        let fallback = Fallback::of(&record);
        let unwatched = hub.patch_report(id, 5, &record, &fallback, &report(1, Some("epoch 0")), false, || {
            panic!("a point is made only for a job someone watches")
        });
        assert!(unwatched);
        let (_, mut rx) = hub.subscribe(id).unwrap();
        assert!(
            !hub.patch_report(id, 6, &record, &fallback, &report(2, None), true, || None),
            "another version's view is not patched"
        );
        // Each report after the last: whether its message differs from the last one's.
        for (step, message, changed) in
            [(2, Some("epoch 0"), false), (3, None, true), (4, None, false), (5, Some("e"), true)]
        {
            let p = report(step, message);
            let point = pb::MetricValues { step, ..Default::default() };
            assert!(hub.patch_report(id, 5, &record, &fallback, &p, changed, || Some(point.clone())));
            let built = job_view(&record, &facts(p), (0, String::new()));
            assert_eq!(hub.latest(id), Some(built.clone()), "after step {step}");
            let update = rx.recv().await.unwrap();
            assert_eq!(update.job, Some(built), "watchers get the patched view");
            assert_eq!(update.point, Some(point), "and the report's point");
        }
    }

    #[test]
    fn the_queue_order_follows_single_joins_and_leaves() {
        let hub = Hub::default();
        for (id, priority) in [(1, 0), (2, 0), (3, 5), (4, 0)] {
            hub.queue_insert(QueueView::key(priority, id));
        }
        hub.set_queue_head("a free slot".into());
        let position = |id, priority| hub.position(priority, id);
        assert_eq!(position(3, 5), (1, "a free slot".to_string()), "higher priority first");
        assert_eq!(position(1, 0).0, 2);
        assert_eq!(position(4, 0), (4, "3 job(s) ahead in the queue".to_string()));
        hub.queue_remove(QueueView::key(5, 3));
        hub.queue_remove(QueueView::key(0, 2));
        hub.queue_remove(QueueView::key(0, 99));
        assert_eq!(position(1, 0).0, 1);
        assert_eq!(position(4, 0).0, 2);
        assert_eq!(position(2, 0).0, 0, "a job that left is not queued");
    }

    fn job(id: u64, state: pb::JobState, step: u64) -> pb::Job {
        pb::Job { id: format!("{id:012x}"), state: state as i32, step, ..Default::default() }
    }

    #[test]
    fn a_watch_channel_exists_while_someone_watches_and_the_last_view_ends_it() {
        let hub = Hub::default();
        assert!(hub.subscribe(7).is_none(), "not live before its first view");
        hub.publish(job(7, pb::JobState::Queued, 0), "state");
        assert!(lock(&hub.jobs)[&7].tx.is_none(), "no channel until someone watches");
        let streams = hub.streams();
        assert_eq!(streams.load(Ordering::Relaxed), 0);
        let (seen, mut rx) = hub.subscribe(7).expect("live");
        let (_, second) = hub.subscribe(7).expect("live");
        drop(second);
        assert_eq!(streams.load(Ordering::Relaxed), 1, "one job watched");
        assert_eq!(seen.state(), pb::JobState::Queued);
        hub.publish(job(7, pb::JobState::Running, 3), "progress");
        assert_eq!(rx.try_recv().unwrap().job.unwrap().step, 3);
        drop(rx);
        hub.publish(job(7, pb::JobState::Running, 4), "progress");
        assert!(lock(&hub.jobs)[&7].tx.is_none(), "dropped with its last watcher");
        assert_eq!(streams.load(Ordering::Relaxed), 0, "no job watched");
        assert_eq!(hub.latest(7).unwrap().step, 4, "the view stays current without watchers");
        let (_, mut rx) = hub.subscribe(7).expect("live");
        hub.publish(job(7, pb::JobState::Completed, 5), "state");
        assert_eq!(rx.try_recv().unwrap().job.unwrap().state(), pb::JobState::Completed);
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Closed)), "the last view ends the watch");
        assert!(hub.latest(7).is_none());
        assert_eq!(streams.load(Ordering::Relaxed), 0, "an ended job is watched no more");
    }
}
