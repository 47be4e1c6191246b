//! The durable job store on sled. **Only this module touches sled.**
//!
//! Every change is one sled transaction across the trees it touches, flushed to disk before the call
//! returns: a caller that acts on a transition, or acknowledges it, knows it survives a crash. The
//! legality of a state change is checked here, against `trainerd_proto::state`, so a terminal job can
//! never be started again whatever path a request takes.
//!
//! Trees: `jobs` (JobId → JobRecord), `events` (JobId ++ sequence → Event), `idempotency`
//! (key → JobId), `meta` (counters), `chunks`, `buckets` and the older layout's `points` (each job's
//! metric history, see [`metrics`] and `history`, which writes it behind). Values go through
//! [`codec`]'s versioned envelope.

pub mod codec;
mod history;
pub mod legacy;
pub mod metrics;
pub mod records;

use codec::CodecError;
use records::{Event, JobId, JobRecord, JobSpec, RunAs};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use trainerd_proto::state::{can_transition, state_word};
use trainerd_proto::trainer::unix_now;
use trainerd_proto::v1::{JobState, Reason};

/// What went wrong in the store, with what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store in {path}: {source} (is another trainerd using this state dir?)")]
    Open { path: PathBuf, source: sled::Error },
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {what}: {source}")]
    Codec { what: String, source: CodecError },
    #[error("no job {0}")]
    NotFound(JobId),
    #[error("job {id} is {from}; it cannot become {to}")]
    IllegalTransition { id: JobId, from: &'static str, to: &'static str },
    #[error("job {0}: an update may not change the state; use a transition")]
    StateChangedByUpdate(JobId),
    #[error("{0}")]
    NotRetriable(String),
    #[error("the request key was used to retry job {0}, not this one; use a new key")]
    KeyInUse(JobId),
    #[error("job {id} is {state}; only a finished (completed, failed or cancelled) job can be removed")]
    NotFinished { id: JobId, state: &'static str },
    /// A write failed (a full disk, an I/O error) and the store waits to be reopened; nothing that was
    /// acknowledged is lost, and nothing new is written until then.
    #[error("the state store cannot write: {cause}")]
    Unavailable { cause: String },
}

impl StoreError {
    /// Whether the store could not write (as opposed to a refusal of this request): the caller may
    /// hold what it wanted to record and try again once the store is writable.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. } | StoreError::Sled(sled::Error::Io(_)))
    }
}

/// Why the store stopped accepting writes, since when, and whether trainerd can expect it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The error, in words.
    pub cause: String,
    /// Unix seconds of the first failure.
    pub since: f64,
    /// The error was a lack of space (ENOSPC, EDQUOT): freeing space brings the store back.
    pub out_of_space: bool,
    /// A reopen was tried with space to spare and failed: restarting trainerd is the remedy left.
    pub unrecoverable: bool,
}

/// What [`Store::recover`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// Nothing to recover.
    Healthy,
    /// The store was reopened and accepts writes again.
    Recovered,
    /// Still failed; the reason it was not reopened (yet).
    Waiting(String),
}

/// The sled database and its trees: replaced whole when the store is reopened.
struct Trees {
    db: sled::Db,
    jobs: sled::Tree,
    events: sled::Tree,
    idempotency: sled::Tree,
    /// Counters: `next_job` (the next JobId).
    meta: sled::Tree,
    /// Metric history at full resolution (`chunks`; `points` in stores written before chunks), and
    /// folded (see [`metrics`]).
    points: sled::Tree,
    chunks: sled::Tree,
    buckets: sled::Tree,
    /// The next JobId: `meta`'s `next_job`, or one past the newest job if that is further (a crash
    /// may keep a job whose counter write was lost). Kept here so that a submission needs no
    /// transaction to take an id.
    next_id: AtomicU64,
}

impl Trees {
    fn open(dir: &Path) -> Result<Trees, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            // sled's default page cache is 1 GiB; the records trainerd reads often are a few MB, and the
            // daemon's RSS is a published figure (docs/benchmarks.md).
            .cache_capacity(CACHE_BYTES);
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Err(e) if lock_held(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                other => break other.map_err(|source| StoreError::Open { path: dir.to_path_buf(), source })?,
            }
        };
        let (jobs, meta) = (db.open_tree("jobs")?, db.open_tree("meta")?);
        let stored = meta.get(b"next_job")?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes);
        let after_newest =
            jobs.last()?.and_then(|(k, _)| k.as_ref().try_into().ok()).map(|b| u64::from_be_bytes(b) + 1);
        let next_id = AtomicU64::new(stored.unwrap_or(1).max(after_newest.unwrap_or(1)).max(1));
        Ok(Trees {
            jobs,
            events: db.open_tree("events")?,
            idempotency: db.open_tree("idempotency")?,
            meta,
            points: db.open_tree("points")?,
            chunks: db.open_tree("chunks")?,
            buckets: db.open_tree("buckets")?,
            next_id,
            db,
        })
    }
}

/// A new job's record: queued, nothing run yet.
fn queued_record(id: JobId, spec: JobSpec, run_as: Option<RunAs>, now: f64) -> JobRecord {
    JobRecord {
        id,
        spec,
        state: JobState::Queued as i32,
        reason: Reason::Unspecified as i32,
        created_at: now,
        updated_at: now,
        attempts: Vec::new(),
        restart_times: Vec::new(),
        consecutive_failures: 0,
        next_restart_at: None,
        latest_checkpoint: None,
        previous_checkpoint: None,
        step: 0,
        total_steps: 0,
        epoch: 0,
        total_epochs: 0,
        loss: None,
        val_loss: None,
        exit_code: None,
        weights_sha256: None,
        cancelled_by: None,
        message: None,
        run_as,
        restarts_exhausted: false,
    }
}

/// The open store.
///
/// sled remembers its first I/O error and fails every later write with it, even after the disk has
/// room again; only a fresh open clears it (reads go on working meanwhile). So the first failed write
/// marks the store failed, writes are refused at once with [`StoreError::Unavailable`], and
/// [`Store::recover`] closes and reopens the database once space is back. A reopen recovers everything
/// up to the last flush, which is everything that was ever acknowledged.
pub struct Store {
    dir: PathBuf,
    trees: RwLock<Option<Arc<Trees>>>,
    failure: Mutex<Option<Failure>>,
    /// Woken when the store fails, for the task that brings it back.
    failed: tokio::sync::Notify,
    /// How long flushes take.
    flushes: crate::metrics::Histogram,
    /// Each job's metric points not written yet, and its count of those written (see `history`).
    histories: Mutex<history::Histories>,
}

fn abort<T>(e: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn flatten(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

/// Decodes a stored job record of any format this build reads (see `codec` and `legacy`).
pub fn decode_job(bytes: &[u8]) -> Result<JobRecord, StoreError> {
    let what = |source| StoreError::Codec { what: "job".into(), source };
    match bytes.first() {
        Some(1 | 2) => {
            codec::decode::<legacy::JobRecordV2>(&codec::upgrade_job(bytes)).map(JobRecord::from).map_err(what)
        }
        Some(3) => codec::decode::<legacy::JobRecordV3>(bytes).map(JobRecord::from).map_err(what),
        Some(4) => codec::decode::<legacy::JobRecordV4>(bytes).map(JobRecord::from).map_err(what),
        _ => codec::decode(bytes).map_err(what),
    }
}

/// Why a job in `state` cannot be retried, and what to do instead.
pub fn not_retriable(id: JobId, state: JobState) -> String {
    let instead = match state {
        JobState::Completed => "a completed job never runs again; submit a new one to train again",
        JobState::Paused => "use resume to continue a paused job",
        _ => "it has not ended; only a failed or cancelled job can be retried",
    };
    format!("job {id} is {}: {instead}", state_word(state))
}

/// Reads a job inside a transaction; a missing job aborts it.
fn read_job(
    jobs: &sled::transaction::TransactionalTree,
    id: JobId,
) -> Result<JobRecord, ConflictableTransactionError<StoreError>> {
    match jobs.get(id.0.to_be_bytes())? {
        Some(bytes) => decode_job(&bytes).or_else(abort),
        None => abort(StoreError::NotFound(id)),
    }
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    codec::encode(value).map_err(|source| StoreError::Codec { what: what.into(), source })
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    codec::decode(bytes).map_err(|source| StoreError::Codec { what: what.into(), source })
}

fn event_key(id: JobId, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.0.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a sled error is a lack of space.
fn out_of_space(e: &sled::Error) -> bool {
    let sled::Error::Io(io) = e else { return false };
    // sled wraps the OS error in a custom one; its text still carries the code.
    io.kind() == std::io::ErrorKind::StorageFull
        || matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || io.to_string().contains("No space left on device")
        || io.to_string().contains("Disk quota exceeded")
}

/// sled's page cache.
const CACHE_BYTES: u64 = 16 << 20;

/// How long opening waits for the directory's lock. sled lets go of it only when its background
/// threads drop their last handle of a closed database, a moment after the close: a store reopened
/// in the same process (after a failure, or a test's reopen) would otherwise find its own lock held
/// and give up. Another process's lock is waited for as long, then refused.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether opening failed only because the directory's lock is held.
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

impl Store {
    /// Opens (or creates) the store in `dir`. A second process cannot open the same store.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            dir: dir.to_path_buf(),
            trees: RwLock::new(Some(Arc::new(Trees::open(dir)?))),
            failure: Mutex::new(None),
            failed: tokio::sync::Notify::new(),
            flushes: crate::metrics::Histogram::default(),
            histories: Mutex::default(),
        })
    }

    /// The open database, for reading (a failed store still serves reads).
    fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        let trees = self.trees.read().unwrap_or_else(|p| p.into_inner()).clone();
        trees.ok_or_else(|| StoreError::Unavailable { cause: self.cause() })
    }

    /// The open database, for writing: refused while the store is failed.
    fn writable(&self) -> Result<Arc<Trees>, StoreError> {
        if let Some(failure) = lock(&self.failure).as_ref() {
            return Err(StoreError::Unavailable { cause: failure.cause.clone() });
        }
        self.trees()
    }

    fn cause(&self) -> String {
        lock(&self.failure).as_ref().map_or_else(|| "the store is being reopened".into(), |f| f.cause.clone())
    }

    /// Notes a failed write: an I/O error marks the store failed (see the type's doc), and the caller
    /// gets [`StoreError::Unavailable`] with the cause in words.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let Err(StoreError::Sled(e @ sled::Error::Io(_))) = &result else { return result };
        let mut failure = lock(&self.failure);
        let failure = failure.get_or_insert_with(|| {
            let cause = self.describe(e);
            tracing::error!("the state store cannot write ({e}): {cause}; new jobs are refused until it can");
            self.failed.notify_one();
            Failure { cause, since: unix_now(), out_of_space: out_of_space(e), unrecoverable: false }
        });
        Err(StoreError::Unavailable { cause: failure.cause.clone() })
    }

    /// A sled I/O error in words (sled's own text is a debug print of the OS error).
    fn describe(&self, e: &sled::Error) -> String {
        if out_of_space(e) {
            return format!("no space left on the file system of {}", self.dir.display());
        }
        match e {
            sled::Error::Io(io) => {
                format!("an I/O error in {}: {}", self.dir.display(), std::io::Error::from(io.kind()))
            }
            other => format!("{other} in {}", self.dir.display()),
        }
    }

    /// Why the store does not accept writes, when it does not.
    pub fn failure(&self) -> Option<Failure> {
        lock(&self.failure).clone()
    }

    /// Resolves when the store has failed (at once if it already has).
    pub async fn wait_failed(&self) {
        loop {
            let notified = self.failed.notified();
            if self.failure().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Marks the store failed as a failed write with `error` would (the tests' way to a failure
    /// without filling a disk).
    #[cfg(test)]
    pub(crate) fn fail_with(&self, error: std::io::Error) {
        let _ = self.note::<()>(Err(StoreError::Sled(sled::Error::Io(error))));
    }

    /// Reopens a failed store when `free` (the state dir's free bytes) reaches `reserve`, or at once
    /// when the failure was not a lack of space. A reopen that fails with space to spare marks the
    /// failure unrecoverable.
    pub fn recover(&self, free: u64, reserve: u64) -> Recovery {
        let Some(failure) = self.failure() else { return Recovery::Healthy };
        if failure.out_of_space && free < reserve {
            return Recovery::Waiting(format!(
                "waiting for space: {} free in the state dir, {} needed",
                crate::disk::bytes(free),
                crate::disk::bytes(reserve)
            ));
        }
        let mut slot = self.trees.write().unwrap_or_else(|p| p.into_inner());
        if let Some(trees) = slot.take() {
            match Arc::try_unwrap(trees) {
                // Closed here: sled releases its lock on the directory when the last handle goes.
                Ok(trees) => drop(trees),
                Err(shared) => {
                    *slot = Some(shared);
                    return Recovery::Waiting("the store is in use; trying again".into());
                }
            }
        }
        match Trees::open(&self.dir) {
            Ok(trees) => {
                *slot = Some(Arc::new(trees));
                *lock(&self.failure) = None;
                tracing::info!("the state store was reopened and accepts writes again");
                Recovery::Recovered
            }
            Err(e) => {
                let mut failure = lock(&self.failure);
                if let Some(f) = failure.as_mut() {
                    f.unrecoverable = !matches!(&e, StoreError::Open { source, .. } if out_of_space(source));
                    f.cause = format!("{}; reopening failed: {e}", f.cause);
                }
                Recovery::Waiting(format!("reopening failed: {e}"))
            }
        }
    }

    /// Creates a QUEUED job, or, when `spec.idempotency_key` names an existing job, returns that one.
    /// The boolean says whether a job was created. Flushed before it returns.
    pub fn create(&self, spec: JobSpec, run_as: Option<RunAs>, now: f64) -> Result<(JobRecord, bool), StoreError> {
        let result = self.create_unflushed(spec, run_as, now)?;
        self.flush()?;
        Ok(result)
    }

    /// [`Store::create`] without its flush: for a caller that commits several submissions with one
    /// [`Store::flush`] (group commit) and acknowledges none of them, and acts on none, before it.
    pub fn create_unflushed(
        &self,
        spec: JobSpec,
        run_as: Option<RunAs>,
        now: f64,
    ) -> Result<(JobRecord, bool), StoreError> {
        let t = self.writable()?;
        let event =
            |spec: &JobSpec| Event { at: now, kind: "submitted".into(), message: format!("queued as {}", spec.name) };
        let Some(key) = spec.idempotency_key.clone() else {
            // No key to look up: three plain writes, not a transaction (a transaction over four trees was
            // most of a submission's time in the Supervisor). Nothing of it is acknowledged or acted on
            // before the flush that follows; a crash before it may keep a prefix of the three, which
            // a reopen reads as a job (or an id) never acknowledged, as with a transaction.
            let id = JobId(t.next_id.fetch_add(1, Ordering::SeqCst));
            let written = (|| {
                let record = queued_record(id, spec, run_as, now);
                t.jobs.insert(id.0.to_be_bytes(), encode("job", &record)?)?;
                t.meta.insert(b"next_job", &(id.0 + 1).to_be_bytes())?;
                let submitted = event(&record.spec);
                t.events.insert(event_key(id, t.db.generate_id()?), encode("event", &submitted)?)?;
                Ok((record, true))
            })();
            return self.note(written);
        };
        let result = (&t.jobs, &t.events, &t.idempotency, &t.meta)
            .transaction(|(jobs, events, idempotency, meta)| {
                if let Some(existing) = idempotency.get(key.as_bytes())? {
                    let id = u64::from_be_bytes(existing.as_ref().try_into().unwrap_or_default());
                    return Ok((read_job(jobs, JobId(id))?, false));
                }
                // A retried transaction takes a new id: ids may skip, never repeat.
                let id = JobId(t.next_id.fetch_add(1, Ordering::SeqCst));
                meta.insert(b"next_job", &(id.0 + 1).to_be_bytes())?;
                let record = queued_record(id, spec.clone(), run_as, now);
                jobs.insert(&id.0.to_be_bytes(), encode("job", &record).or_else(abort)?)?;
                idempotency.insert(key.as_bytes(), &id.0.to_be_bytes())?;
                let submitted = event(&record.spec);
                events.insert(&event_key(id, events.generate_id()?), encode("event", &submitted).or_else(abort)?)?;
                Ok((record, true))
            })
            .map_err(flatten);
        self.note(result)
    }

    /// The job an idempotency key names, if any.
    pub fn find_key(&self, key: &str) -> Result<Option<JobId>, StoreError> {
        let found = self.trees()?.idempotency.get(key.as_bytes())?;
        Ok(found.and_then(|v| v.as_ref().try_into().ok()).map(|b| JobId(u64::from_be_bytes(b))))
    }

    /// The job's record, if it exists.
    pub fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.trees()?.jobs.get(id.0.to_be_bytes())?.map(|bytes| decode_job(&bytes)).transpose()
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.records().collect()
    }

    /// Jobs with ids below `before`, newest first, decoded one at a time.
    pub fn records_before(
        &self,
        before: JobId,
    ) -> impl Iterator<Item = Result<JobRecord, StoreError>> + Send + 'static {
        let range = self.trees().map(|t| t.jobs.range(..before.0.to_be_bytes()));
        Records::new(range.map(|r| r.values().rev()))
    }

    /// How many jobs the store holds (without decoding them).
    pub fn count(&self) -> usize {
        self.trees().map(|t| t.jobs.len()).unwrap_or(0)
    }

    /// Every job's id, oldest first, without decoding any record. (A key that is not 8 bytes names
    /// no job; it is passed over.)
    pub fn ids(&self) -> impl Iterator<Item = Result<JobId, StoreError>> + Send + 'static {
        let mut keys = Some(self.trees().map(|t| t.jobs.iter().keys()));
        std::iter::from_fn(move || loop {
            match keys.as_mut()? {
                Ok(iter) => match iter.next()? {
                    Ok(key) => match <[u8; 8]>::try_from(key.as_ref()) {
                        Ok(bytes) => return Some(Ok(JobId(u64::from_be_bytes(bytes)))),
                        Err(_) => continue,
                    },
                    Err(e) => return Some(Err(e.into())),
                },
                Err(_) => {
                    return match keys.take() {
                        Some(Err(e)) => Some(Err(e)),
                        _ => None,
                    }
                }
            }
        })
    }

    /// Every job, oldest first, decoded one at a time: a pass over a large store (reconciliation)
    /// holds one record, not all of them.
    pub fn records(&self) -> impl Iterator<Item = Result<JobRecord, StoreError>> + Send + 'static {
        Records::new(self.trees().map(|t| t.jobs.iter().values()))
    }

    /// Moves a job to `to` if the state table allows it, applying `edit` and appending a
    /// `transition` event in the same transaction; flushed before it returns.
    pub fn transition(
        &self,
        id: JobId,
        to: JobState,
        reason: Reason,
        now: f64,
        message: &str,
        edit: impl Fn(&mut JobRecord),
    ) -> Result<JobRecord, StoreError> {
        let t = self.writable()?;
        self.write_tail_of(&t, id, trainerd_proto::state::is_terminal(to));
        let mut from = to;
        let record = self.swap_job(&t, id, |mut record| {
            from = record.state();
            if !can_transition(from, to) {
                return Err(StoreError::IllegalTransition { id, from: state_word(from), to: state_word(to) });
            }
            edit(&mut record);
            record.state = to as i32;
            record.reason = reason as i32;
            record.updated_at = now;
            if !message.is_empty() {
                record.message = Some(message.to_string());
            }
            Ok(record)
        })?;
        let text = if message.is_empty() {
            format!("{} -> {}", state_word(from), state_word(to))
        } else {
            format!("{} -> {}: {message}", state_word(from), state_word(to))
        };
        // After the record: a crash between the two (before the flush, so neither was acknowledged)
        // can lose the event, never leave an event for a transition that did not happen.
        self.append_event_to(&t, id, &Event { at: now, kind: "transition".into(), message: text })?;
        self.flush_trees(&t)?;
        Ok(record)
    }

    /// Replaces job `id`'s record by what `change` makes of it, read-modify-write by compare and
    /// swap, again when another writer got there first. Not a sled transaction: each of those makes
    /// sled write and sync its log once more before the flush (two syncs a transition instead of
    /// one, measured in docs/benchmarks.md).
    fn swap_job(
        &self,
        t: &Trees,
        id: JobId,
        mut change: impl FnMut(JobRecord) -> Result<JobRecord, StoreError>,
    ) -> Result<JobRecord, StoreError> {
        let key = id.0.to_be_bytes();
        loop {
            let current = self.note(t.jobs.get(key).map_err(StoreError::from))?.ok_or(StoreError::NotFound(id))?;
            let record = change(decode_job(&current)?)?;
            let new = encode("job", &record)?;
            let swapped =
                self.note(t.jobs.compare_and_swap(key, Some(&current), Some(new)).map_err(StoreError::from))?;
            if swapped.is_ok() {
                return Ok(record);
            }
        }
    }

    /// Queues a failed or cancelled job again (a user's retry): the restart budget starts afresh, and
    /// the next attempt resumes from the latest checkpoint, which `edit` may not remove. A request
    /// `key` already used for this job returns it unchanged (`false`), so a retried request never
    /// queues twice. Flushed before it returns.
    pub fn retry(
        &self,
        id: JobId,
        key: Option<&str>,
        now: f64,
        message: &str,
        check: impl Fn(&JobRecord) -> Result<(), StoreError>,
    ) -> Result<(JobRecord, bool), StoreError> {
        let t = self.writable()?;
        let key = key.filter(|k| !k.is_empty()).map(|k| format!("retry\0{k}"));
        let result = (&t.jobs, &t.events, &t.idempotency)
            .transaction(|(jobs, events, idempotency)| {
                if let Some(key) = &key {
                    if let Some(existing) = idempotency.get(key.as_bytes())? {
                        let earlier = JobId(u64::from_be_bytes(existing.as_ref().try_into().unwrap_or_default()));
                        if earlier == id {
                            return Ok((read_job(jobs, id)?, false));
                        }
                        return abort(StoreError::KeyInUse(earlier));
                    }
                }
                let mut record = read_job(jobs, id)?;
                let from = record.state();
                if !trainerd_proto::state::can_retry(from) {
                    return abort(StoreError::NotRetriable(not_retriable(id, from)));
                }
                check(&record).or_else(abort)?;
                record.state = JobState::Queued as i32;
                record.reason = Reason::Unspecified as i32;
                record.updated_at = now;
                record.restart_times.clear();
                record.consecutive_failures = 0;
                record.next_restart_at = None;
                record.restarts_exhausted = false;
                record.exit_code = None;
                record.cancelled_by = None;
                record.message = Some(message.to_string());
                jobs.insert(&id.0.to_be_bytes(), encode("job", &record).or_else(abort)?)?;
                if let Some(key) = &key {
                    idempotency.insert(key.as_bytes(), &id.0.to_be_bytes())?;
                }
                let text = format!("{} -> queued: {message}", state_word(from));
                let event = Event { at: now, kind: "transition".into(), message: text };
                events.insert(&event_key(id, events.generate_id()?), encode("event", &event).or_else(abort)?)?;
                Ok((record, true))
            })
            .map_err(flatten);
        self.note(result)
    }

    /// Removes a finished job from the store: its events, its idempotency and retry keys, and last its
    /// record, so that a removal that stops half-way leaves the job listed, to be removed again. A job
    /// that is not finished is refused. Flushed before it returns.
    pub fn delete(&self, id: JobId) -> Result<(), StoreError> {
        let t = self.writable()?;
        let record = self.get(id)?.ok_or(StoreError::NotFound(id))?;
        if !trainerd_proto::state::is_terminal(record.state()) {
            return Err(StoreError::NotFinished { id, state: state_word(record.state()) });
        }
        let mut batch = sled::Batch::default();
        for key in t.events.scan_prefix(id.0.to_be_bytes()).keys() {
            batch.remove(self.note(key.map_err(StoreError::from))?);
        }
        self.note(t.events.apply_batch(batch).map_err(StoreError::from))?;
        self.forget_history(&t, id)?;
        // Its submission key, and the retry keys (the only other entries that name a job).
        let mut keys = sled::Batch::default();
        if let Some(key) = &record.spec.idempotency_key {
            keys.remove(key.as_bytes());
        }
        for entry in t.idempotency.scan_prefix(b"retry\0") {
            let (key, value) = self.note(entry.map_err(StoreError::from))?;
            if value.as_ref() == id.0.to_be_bytes() {
                keys.remove(key);
            }
        }
        self.note(t.idempotency.apply_batch(keys).map_err(StoreError::from))?;
        let removed = (&t.jobs,).transaction(|(jobs,)| {
            let record = read_job(jobs, id)?;
            if !trainerd_proto::state::is_terminal(record.state()) {
                return abort(StoreError::NotFinished { id, state: state_word(record.state()) });
            }
            jobs.remove(&id.0.to_be_bytes())?;
            Ok(())
        });
        self.note(removed.map_err(flatten))?;
        self.flush_trees(&t)
    }

    /// Changes a job's record without changing its state (progress, an attempt's pid); flushed
    /// before it returns.
    pub fn update(&self, id: JobId, edit: impl Fn(&mut JobRecord)) -> Result<JobRecord, StoreError> {
        let t = self.writable()?;
        let record = self.update_in(&t, id, edit)?;
        self.flush_trees(&t)?;
        Ok(record)
    }

    /// [`Store::update`] without its flush, for a change that is either flushed by the caller's next
    /// write (a transition it makes at once) or held durably elsewhere until then (a local attempt's
    /// pid, which its `shim.json` names); sled's own background flush makes it durable within half a
    /// second in any case.
    pub fn update_unflushed(&self, id: JobId, edit: impl Fn(&mut JobRecord)) -> Result<JobRecord, StoreError> {
        let t = self.writable()?;
        self.update_in(&t, id, edit)
    }

    fn update_in(&self, t: &Trees, id: JobId, edit: impl Fn(&mut JobRecord)) -> Result<JobRecord, StoreError> {
        self.swap_job(t, id, |mut record| {
            let state = record.state;
            edit(&mut record);
            if record.state != state {
                return Err(StoreError::StateChangedByUpdate(id));
            }
            Ok(record)
        })
    }

    /// Appends an event to a job's log.
    pub fn append_event(&self, id: JobId, event: &Event) -> Result<(), StoreError> {
        let t = self.writable()?;
        self.append_event_to(&t, id, event)
    }

    fn append_event_to(&self, t: &Trees, id: JobId, event: &Event) -> Result<(), StoreError> {
        let key = self.note(t.db.generate_id().map_err(StoreError::from))?;
        self.note(t.events.insert(event_key(id, key), encode("event", event)?).map_err(StoreError::from))?;
        Ok(())
    }

    /// A job's events, oldest first.
    pub fn events(&self, id: JobId) -> Result<Vec<Event>, StoreError> {
        self.trees()?
            .events
            .scan_prefix(id.0.to_be_bytes())
            .values()
            .map(|v| codec::decode(&v?).map_err(|source| StoreError::Codec { what: "event".into(), source }))
            .collect()
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        let t = self.writable()?;
        self.flush_trees(&t)
    }

    fn flush_trees(&self, t: &Trees) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.note(t.db.flush().map_err(StoreError::from))?;
        self.flushes.observe(started.elapsed());
        Ok(())
    }

    /// The flush latency histogram.
    pub fn flush_histogram(&self) -> &crate::metrics::Histogram {
        &self.flushes
    }
}

/// Decoded records from an iterator over the jobs tree; one error item when the store could not be
/// read at all.
struct Records<I> {
    inner: Option<Result<I, StoreError>>,
}

impl<I> Records<I> {
    fn new(inner: Result<I, StoreError>) -> Records<I> {
        Records { inner: Some(inner) }
    }
}

impl<I: Iterator<Item = sled::Result<sled::IVec>>> Iterator for Records<I> {
    type Item = Result<JobRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.as_mut()? {
            Ok(values) => values.next().map(|v| decode_job(&v?)),
            Err(_) => match self.inner.take() {
                Some(Err(e)) => Some(Err(e)),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
