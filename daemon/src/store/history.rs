//! Each job's metric history on disk, written behind: the store's side of [`super::metrics`].
//!
//! A sled insert costs about 15 µs of CPU whatever the value's size (docs/benchmarks.md), and with
//! 1,000 trainers reporting a loss once a second, one insert per report was the largest cost of the
//! daemon. So a job's newest points wait in memory, encoded (its tail), and go to disk as one value
//! (a chunk) when the tail holds [`CHUNK_POINTS`] points or its oldest point is [`CHUNK_AGE`] old,
//! with every transition of the job (a finished job's last points are on disk with its end), and for
//! every job when trainerd stops. A reader sees the tail as well as the chunks. What a SIGKILL of
//! trainerd can lose is the points of the last `CHUNK_AGE`; a transition, never.
//!
//! Tree `chunks`: JobId ++ sequence (sled's `generate_id`, so in the order written) → a chunk, the
//! points in the order they came ([`codec::Sequence`]). A later point at a step replaces an earlier
//! one, in a chunk or across chunks. Stores written before chunks kept one point per entry in tree
//! `points` (JobId ++ step → point): read as they are, and moved into one chunk when the job's
//! history is first written to.
//!
//! Every change to a job's history, and the read of its chunks with its tail, happens under the one
//! `histories` lock, so a reader never sees a tail on its way into a chunk twice or not at all.

use super::codec::{self, Sequence};
use super::metrics::{self, Point, Sample};
use super::records::JobId;
use super::{decode, encode, lock, Store, StoreError, Trees};
use std::collections::{hash_map::Entry, BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A tail this long is written at once.
pub const CHUNK_POINTS: usize = 64;
/// A tail whose oldest point is this old is written (at the job's next point, or at the next
/// point of any job for a job that has gone quiet).
pub const CHUNK_AGE: Duration = Duration::from_secs(30);

/// Every job's history bookkeeping that is not on disk.
#[derive(Default)]
pub(super) struct Histories {
    jobs: HashMap<JobId, History>,
    /// When the tails of quiet jobs were last looked at.
    swept: Option<Instant>,
}

/// One job's count of points in chunks, and the points not written yet.
struct History {
    stored: usize,
    tail: Sequence,
    /// When the tail's oldest point came.
    since: Option<Instant>,
}

impl History {
    fn stale(&self, now: Instant) -> bool {
        self.since.is_some_and(|since| now.saturating_duration_since(since) >= CHUNK_AGE)
    }
}

impl Drop for Store {
    /// A store closed without [`Store::write_metric_tails`] (a test's reopen) writes them here.
    fn drop(&mut self) {
        let _ = self.write_metric_tails();
    }
}

/// The first key of job `id`'s entries (in every history tree).
fn prefix(id: JobId) -> [u8; 8] {
    id.0.to_be_bytes()
}

fn codec_error(what: &str) -> impl FnOnce(codec::CodecError) -> StoreError + '_ {
    move |source| StoreError::Codec { what: what.into(), source }
}

impl Store {
    /// Records one metric point of job `id` (its values at `point.step`, replacing any at that step),
    /// and folds the oldest points into buckets once there are more than [`metrics::RAW_MAX`]. Written
    /// behind (see the module's doc), not flushed by itself.
    pub fn append_point(&self, id: JobId, point: &metrics::PointRef<'_>) -> Result<(), StoreError> {
        self.append_point_at(id, point, Instant::now())
    }

    /// [`Store::append_point`] at `now` (the tests' clock).
    pub(super) fn append_point_at(
        &self,
        id: JobId,
        point: &metrics::PointRef<'_>,
        now: Instant,
    ) -> Result<(), StoreError> {
        let t = self.writable()?;
        let mut histories = lock(&self.histories);
        let Histories { jobs, swept } = &mut *histories;
        let history = self.history(&t, jobs, id)?;
        history.tail.push(point).map_err(codec_error("metric point"))?;
        history.since.get_or_insert(now);
        if history.tail.len() >= CHUNK_POINTS || history.stale(now) {
            self.write_tail(&t, id, history)?;
        }
        if history.stored > metrics::RAW_MAX {
            self.fold(&t, id, history)?;
        }
        if swept.is_none_or(|at| now.saturating_duration_since(at) >= CHUNK_AGE) {
            *swept = Some(now);
            for (quiet, history) in jobs.iter_mut().filter(|(_, h)| h.stale(now)) {
                // Lost points were said in the log by write_tail; this job's point is recorded.
                let _ = self.write_tail(&t, *quiet, history);
            }
        }
        Ok(())
    }

    /// Job `id`'s bookkeeping, made at its first use in this process: its stored points counted, and
    /// a history of the one-entry-per-point layout moved into a chunk.
    fn history<'a>(
        &self,
        t: &Trees,
        jobs: &'a mut HashMap<JobId, History>,
        id: JobId,
    ) -> Result<&'a mut History, StoreError> {
        match jobs.entry(id) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                self.migrate(t, id)?;
                let mut stored = 0;
                for value in t.chunks.scan_prefix(prefix(id)).values() {
                    stored += codec::sequence_len(&self.note(value.map_err(StoreError::from))?)
                        .map_err(codec_error("metric chunk"))?;
                }
                Ok(e.insert(History { stored, tail: Sequence::default(), since: None }))
            }
        }
    }

    /// Moves job `id`'s points of the one-entry-per-point layout into one chunk (written before the
    /// old entries are removed: a crash between leaves both, and a reader takes each step once).
    fn migrate(&self, t: &Trees, id: JobId) -> Result<(), StoreError> {
        let mut chunk = Sequence::default();
        let mut old = sled::Batch::default();
        for entry in t.points.scan_prefix(prefix(id)) {
            let (key, value) = self.note(entry.map_err(StoreError::from))?;
            let point: Point = decode("metric point", &value)?;
            chunk.push(&point).map_err(codec_error("metric point"))?;
            old.remove(key);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.insert_chunk(t, id, &chunk)?;
        self.note(t.points.apply_batch(old).map_err(StoreError::from))
    }

    fn insert_chunk(&self, t: &Trees, id: JobId, chunk: &Sequence) -> Result<(), StoreError> {
        let value = chunk.value().map_err(codec_error("metric chunk"))?;
        let seq = self.note(t.db.generate_id().map_err(StoreError::from))?;
        self.note(t.chunks.insert(metrics::key(id, seq), value).map_err(StoreError::from))?;
        Ok(())
    }

    /// Writes job `id`'s tail as a chunk. A store that cannot write loses the tail, said in the log.
    fn write_tail(&self, t: &Trees, id: JobId, history: &mut History) -> Result<(), StoreError> {
        if history.tail.is_empty() {
            return Ok(());
        }
        let tail = std::mem::take(&mut history.tail);
        history.since = None;
        match self.insert_chunk(t, id, &tail) {
            Ok(()) => {
                history.stored += tail.len();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(job = %id, "{} metric points not recorded: {e}", tail.len());
                Err(e)
            }
        }
    }

    /// Writes job `id`'s tail now: its transition is about to be flushed, and takes its last points
    /// with it. A job that `ends` records no more points: its bookkeeping goes (counted again from
    /// the disk should a retry record more), so finished jobs hold no memory here.
    pub(super) fn write_tail_of(&self, t: &Trees, id: JobId, ends: bool) {
        let mut histories = lock(&self.histories);
        if let Some(history) = histories.jobs.get_mut(&id) {
            let _ = self.write_tail(t, id, history);
            if ends {
                histories.jobs.remove(&id);
            }
        }
    }

    /// Writes every job's tail (trainerd is stopping; a flush makes them durable, as sled's own
    /// flush does when the store is closed).
    pub fn write_metric_tails(&self) -> Result<(), StoreError> {
        let t = self.writable()?;
        let mut histories = lock(&self.histories);
        let mut result = Ok(());
        for (id, history) in histories.jobs.iter_mut() {
            if let Err(e) = self.write_tail(&t, *id, history) {
                result = Err(e);
            }
        }
        result
    }

    /// Folds job `id`'s oldest chunks (at least half of [`metrics::RAW_MAX`] points, never its newest
    /// chunk) into buckets of 32 points, and merges buckets pairwise past [`metrics::BUCKETS_MAX`].
    fn fold(&self, t: &Trees, id: JobId, history: &mut History) -> Result<(), StoreError> {
        let mut chunks = Vec::new();
        for entry in t.chunks.scan_prefix(prefix(id)) {
            chunks.push(self.note(entry.map_err(StoreError::from))?);
        }
        chunks.pop();
        let (mut oldest, mut gone, mut taken) = (BTreeMap::new(), sled::Batch::default(), 0);
        for (key, value) in chunks {
            if taken >= metrics::RAW_MAX / 2 {
                break;
            }
            let points: Vec<Point> = decode("metric chunk", &value)?;
            taken += points.len();
            oldest.extend(points.into_iter().map(|p| (p.step, p)));
            gone.remove(key);
        }
        let points: Vec<Point> = oldest.into_values().collect();
        let folded = metrics::fold(&points, 32);
        let mut buckets = sled::Batch::default();
        let existing = t.buckets.scan_prefix(prefix(id)).count();
        if existing + folded.len() > metrics::BUCKETS_MAX {
            let mut all: Vec<metrics::Bucket> = Vec::new();
            for entry in t.buckets.scan_prefix(prefix(id)) {
                let (key, value) = self.note(entry.map_err(StoreError::from))?;
                all.push(decode("metric bucket", &value)?);
                buckets.remove(key);
            }
            all.extend(folded);
            for bucket in metrics::merge_pairs(all, metrics::BUCKETS_MAX / 2) {
                buckets.insert(&metrics::key(id, bucket.first_step), encode("metric bucket", &bucket)?);
            }
        } else {
            for bucket in folded {
                buckets.insert(&metrics::key(id, bucket.first_step), encode("metric bucket", &bucket)?);
            }
        }
        self.note(t.buckets.apply_batch(buckets).map_err(StoreError::from))?;
        self.note(t.chunks.apply_batch(gone).map_err(StoreError::from))?;
        history.stored = history.stored.saturating_sub(taken);
        Ok(())
    }

    /// Removes job `id`'s metric history after `step` (points, and buckets that begin after it): an
    /// attempt continues from a checkpoint at `step`. Returns the points removed.
    pub fn rewind_metrics(&self, id: JobId, step: u64) -> Result<usize, StoreError> {
        let t = self.writable()?;
        let mut histories = lock(&self.histories);
        let history = self.history(&t, &mut histories.jobs, id)?;
        let mut removed = 0;
        let kept = |points: Vec<Point>, removed: &mut usize| -> Result<Sequence, StoreError> {
            let mut kept = Sequence::default();
            for point in points {
                if point.step <= step {
                    kept.push(&point).map_err(codec_error("metric point"))?;
                } else {
                    *removed += 1;
                }
            }
            Ok(kept)
        };
        if !history.tail.is_empty() {
            let points = history.tail.decode().map_err(codec_error("metric point"))?;
            history.tail = kept(points, &mut removed)?;
            if history.tail.is_empty() {
                history.since = None;
            }
        }
        let mut chunks = sled::Batch::default();
        for entry in t.chunks.scan_prefix(prefix(id)) {
            let (key, value) = self.note(entry.map_err(StoreError::from))?;
            let points: Vec<Point> = decode("metric chunk", &value)?;
            let (before, len) = (removed, points.len());
            let chunk = kept(points, &mut removed)?;
            match removed - before {
                0 => {}
                n if n == len => chunks.remove(key),
                _ => chunks.insert(key, chunk.value().map_err(codec_error("metric chunk"))?),
            }
            history.stored = history.stored.saturating_sub(removed - before);
        }
        self.note(t.chunks.apply_batch(chunks).map_err(StoreError::from))?;
        let mut buckets = sled::Batch::default();
        for key in t.buckets.range(metrics::key(id, step.saturating_add(1))..=metrics::key(id, u64::MAX)).keys() {
            buckets.remove(self.note(key.map_err(StoreError::from))?);
        }
        self.note(t.buckets.apply_batch(buckets).map_err(StoreError::from))?;
        Ok(removed)
    }

    /// Removes job `id`'s whole metric history (the job is being removed).
    pub(super) fn forget_history(&self, t: &Trees, id: JobId) -> Result<(), StoreError> {
        let mut histories = lock(&self.histories);
        histories.jobs.remove(&id);
        for tree in [&t.points, &t.chunks, &t.buckets] {
            let mut batch = sled::Batch::default();
            for key in tree.scan_prefix(prefix(id)).keys() {
                batch.remove(self.note(key.map_err(StoreError::from))?);
            }
            self.note(tree.apply_batch(batch).map_err(StoreError::from))?;
        }
        Ok(())
    }

    /// Job `id`'s metric history from step `from` to step `to`, by name, in step order: the folded
    /// spans (their mean, with their extremes) and then the points.
    pub fn metrics(&self, id: JobId, from: u64, to: u64) -> Result<BTreeMap<String, Vec<Sample>>, StoreError> {
        let t = self.trees()?;
        let mut series: BTreeMap<String, Vec<Sample>> = Default::default();
        let (lo, hi) = (metrics::key(id, 0), metrics::key(id, to));
        for value in t.buckets.range(lo..=hi).values() {
            let bucket: metrics::Bucket = decode("metric bucket", &value?)?;
            if bucket.last_step < from {
                continue;
            }
            for (name, agg) in bucket.values {
                series.entry(name).or_default().push(Sample {
                    step: bucket.last_step,
                    at: bucket.at,
                    attempt: 0,
                    value: agg.mean(),
                    min: Some(agg.min),
                    max: Some(agg.max),
                });
            }
        }
        // Taken together under the lock (undecoded: the lock is the report path's), oldest first.
        let (old, chunks) = {
            let histories = lock(&self.histories);
            let old = t.points.range(metrics::key(id, from)..=hi).values().collect::<Result<Vec<_>, _>>()?;
            let mut chunks = t.chunks.scan_prefix(prefix(id)).values().collect::<Result<Vec<_>, _>>()?;
            if let Some(history) = histories.jobs.get(&id).filter(|h| !h.tail.is_empty()) {
                chunks.push(history.tail.value().map_err(codec_error("metric point"))?.into());
            }
            (old, chunks)
        };
        let mut points: BTreeMap<u64, Point> = BTreeMap::new();
        for value in old {
            let point: Point = decode("metric point", &value)?;
            points.insert(point.step, point);
        }
        for value in chunks {
            let chunk: Vec<Point> = decode("metric chunk", &value)?;
            points.extend(chunk.into_iter().filter(|p| (from..=to).contains(&p.step)).map(|p| (p.step, p)));
        }
        for point in points.into_values() {
            for (name, value) in point.values {
                series.entry(name).or_default().push(Sample {
                    step: point.step,
                    at: point.at,
                    attempt: point.attempt,
                    value,
                    min: None,
                    max: None,
                });
            }
        }
        Ok(series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::spec;
    use trainerd_proto::v1::{JobState, Reason};

    fn point(step: u64, loss: f64) -> Point {
        Point { step, at: step as f64, attempt: 1, values: vec![("loss".into(), loss)] }
    }

    fn add(store: &Store, id: JobId, step: u64, loss: f64, now: Instant) {
        let point = metrics::PointRef { step, at: step as f64, attempt: 1, values: &[("loss", loss)] };
        store.append_point_at(id, &point, now).unwrap();
    }

    /// The points on disk of job `id`, chunk by chunk.
    fn chunks(store: &Store, id: JobId) -> Vec<Vec<u64>> {
        let t = store.trees().unwrap();
        let chunks = t.chunks.scan_prefix(prefix(id)).values();
        chunks.map(|v| decode::<Vec<Point>>("chunk", &v.unwrap()).unwrap().iter().map(|p| p.step).collect()).collect()
    }

    fn losses(store: &Store, id: JobId) -> Vec<(u64, f64)> {
        let all = store.metrics(id, 0, u64::MAX).unwrap();
        all.get("loss").map(|s| s.iter().map(|s| (s.step, s.value)).collect()).unwrap_or_default()
    }

    #[test]
    fn points_wait_in_memory_are_read_from_there_and_are_written_when_old_or_many() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (job, _) = store.create(spec("m", None), None, 1.0).unwrap();
        let t0 = Instant::now();
        for step in 1..=3 {
            add(&store, job.id, step, step as f64, t0);
        }
        assert!(chunks(&store, job.id).is_empty(), "young points wait");
        assert_eq!(losses(&store, job.id), [(1, 1.0), (2, 2.0), (3, 3.0)], "and are read where they wait");
        add(&store, job.id, 4, 4.0, t0 + CHUNK_AGE);
        assert_eq!(chunks(&store, job.id), [vec![1, 2, 3, 4]], "an old tail is written with the next point");
        let t1 = t0 + CHUNK_AGE;
        for step in 5..5 + CHUNK_POINTS as u64 {
            add(&store, job.id, step, 0.5, t1);
        }
        assert_eq!(chunks(&store, job.id).len(), 2, "a full tail is written at once");
        assert_eq!(chunks(&store, job.id)[1].len(), CHUNK_POINTS);
        assert_eq!(losses(&store, job.id).len(), 4 + CHUNK_POINTS);
    }

    #[test]
    fn a_quiet_jobs_points_are_written_by_another_jobs_point_and_a_transition_writes_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (quiet, _) = store.create(spec("quiet", None), None, 1.0).unwrap();
        let (busy, _) = store.create(spec("busy", None), None, 1.0).unwrap();
        let (ending, _) = store.create(spec("ending", None), None, 1.0).unwrap();
        let t0 = Instant::now();
        add(&store, quiet.id, 1, 1.0, t0);
        add(&store, busy.id, 1, 1.0, t0 + CHUNK_AGE / 2);
        assert!(chunks(&store, quiet.id).is_empty());
        add(&store, busy.id, 2, 1.0, t0 + CHUNK_AGE * 2);
        assert_eq!(chunks(&store, quiet.id), [vec![1]], "swept by the busy job's point");
        add(&store, ending.id, 7, 7.0, t0 + CHUNK_AGE * 2);
        assert!(chunks(&store, ending.id).is_empty());
        store.transition(ending.id, JobState::Cancelled, Reason::Cancelled, 2.0, "", |_| {}).unwrap();
        assert_eq!(chunks(&store, ending.id), [vec![7]], "on disk with the transition");
        assert!(!lock(&store.histories).jobs.contains_key(&ending.id), "a finished job holds no memory");
        assert_eq!(losses(&store, ending.id), [(7, 7.0)]);
        add(&store, ending.id, 8, 8.0, t0 + CHUNK_AGE * 4);
        assert_eq!(lock(&store.histories).jobs[&ending.id].stored, 1, "counted again from the disk");
    }

    #[test]
    fn a_later_point_at_a_step_replaces_the_earlier_one_in_memory_and_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (job, _) = store.create(spec("m", None), None, 1.0).unwrap();
        let t0 = Instant::now();
        add(&store, job.id, 5, 1.0, t0);
        add(&store, job.id, 5, 2.0, t0);
        assert_eq!(losses(&store, job.id), [(5, 2.0)]);
        add(&store, job.id, 6, 6.0, t0 + CHUNK_AGE);
        add(&store, job.id, 5, 3.0, t0 + CHUNK_AGE * 2);
        assert_eq!(chunks(&store, job.id), [vec![5, 5, 6]], "the last 5 waits in memory");
        assert_eq!(losses(&store, job.id), [(5, 3.0), (6, 6.0)]);
        store.write_metric_tails().unwrap();
        assert_eq!(chunks(&store, job.id), [vec![5, 5, 6], vec![5]]);
        assert_eq!(losses(&store, job.id), [(5, 3.0), (6, 6.0)]);
    }

    #[test]
    fn a_rewind_cuts_chunks_and_the_tail_and_the_count_follows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (job, _) = store.create(spec("m", None), None, 1.0).unwrap();
        let t0 = Instant::now();
        for step in 1..=100 {
            add(&store, job.id, step, 1.0, t0);
        }
        assert_eq!(store.rewind_metrics(job.id, 50).unwrap(), 50);
        assert_eq!(chunks(&store, job.id), [(1..=50).collect::<Vec<_>>()], "the full chunk is cut; the tail empty");
        assert_eq!(losses(&store, job.id).last(), Some(&(50, 1.0)));
        let histories = lock(&store.histories);
        let history = &histories.jobs[&job.id];
        assert_eq!((history.stored, history.tail.len(), history.since), (50, 0, None));
    }

    #[test]
    fn a_history_in_the_one_entry_per_point_layout_is_read_and_moved_into_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (job, _) = store.create(spec("m", None), None, 1.0).unwrap();
        {
            let t = store.trees().unwrap();
            for step in [3, 1, 2] {
                t.points.insert(metrics::key(job.id, step), encode("point", &point(step, 0.1)).unwrap()).unwrap();
            }
        }
        assert_eq!(losses(&store, job.id), [(1, 0.1), (2, 0.1), (3, 0.1)]);
        add(&store, job.id, 3, 0.3, Instant::now());
        assert_eq!(chunks(&store, job.id), [vec![1, 2, 3]], "moved at the first write");
        assert_eq!(store.trees().unwrap().points.scan_prefix(prefix(job.id)).count(), 0);
        assert_eq!(losses(&store, job.id), [(1, 0.1), (2, 0.1), (3, 0.3)], "the new point replaces the old");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(losses(&store, job.id), [(1, 0.1), (2, 0.1), (3, 0.3)], "a closed store wrote its tails");
    }
}
