//! The durable job store on sled. **Only this module touches sled.**
//!
//! Every change is one sled transaction across the trees it touches, flushed to disk before the call
//! returns: a caller that acts on a transition, or acknowledges it, knows it survives a crash. The
//! legality of a state change is checked here, against `trainerd_proto::state`, so a terminal job can
//! never be started again whatever path a request takes.
//!
//! Trees: `jobs` (JobId → JobRecord), `events` (JobId ++ sequence → Event), `idempotency`
//! (key → JobId), `meta` (counters). Values go through [`codec`]'s versioned envelope.

pub mod codec;
pub mod records;

use codec::CodecError;
use records::{Event, JobId, JobRecord, JobSpec, RunAs};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::{Path, PathBuf};
use trainerd_proto::state::{can_transition, state_word};
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
}

/// The open store.
pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    events: sled::Tree,
    idempotency: sled::Tree,
    /// Counters: `next_job` (the next JobId).
    meta: sled::Tree,
    /// How long flushes take.
    flushes: crate::metrics::Histogram,
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

fn decode_job(bytes: &[u8]) -> Result<JobRecord, StoreError> {
    codec::decode(&codec::upgrade_job(bytes)).map_err(|source| StoreError::Codec { what: "job".into(), source })
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

fn event_key(id: JobId, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.0.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// sled's page cache.
const CACHE_BYTES: u64 = 16 << 20;

impl Store {
    /// Opens (or creates) the store in `dir`. A second process cannot open the same store.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // sled's default page cache is 1 GiB; the records trainerd reads often are a few MB, and the
            // daemon's RSS is a published figure (docs/benchmarks.md).
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| StoreError::Open { path: dir.to_path_buf(), source })?;
        Ok(Store {
            jobs: db.open_tree("jobs")?,
            events: db.open_tree("events")?,
            idempotency: db.open_tree("idempotency")?,
            meta: db.open_tree("meta")?,
            flushes: crate::metrics::Histogram::default(),
            db,
        })
    }

    /// Creates a QUEUED job, or, when `spec.idempotency_key` names an existing job, returns that one.
    /// The boolean says whether a job was created.
    pub fn create(&self, spec: JobSpec, run_as: Option<RunAs>, now: f64) -> Result<(JobRecord, bool), StoreError> {
        let result = (&self.jobs, &self.events, &self.idempotency, &self.meta)
            .transaction(|(jobs, events, idempotency, meta)| {
                if let Some(key) = &spec.idempotency_key {
                    if let Some(existing) = idempotency.get(key.as_bytes())? {
                        let id = u64::from_be_bytes(existing.as_ref().try_into().unwrap_or_default());
                        return Ok((read_job(jobs, JobId(id))?, false));
                    }
                }
                let next = meta.get(b"next_job")?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes);
                let id = JobId(next.unwrap_or(1));
                meta.insert(b"next_job", &(id.0 + 1).to_be_bytes())?;
                let record = JobRecord {
                    id,
                    spec: spec.clone(),
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
                };
                jobs.insert(&id.0.to_be_bytes(), encode("job", &record).or_else(abort)?)?;
                if let Some(key) = &spec.idempotency_key {
                    idempotency.insert(key.as_bytes(), &id.0.to_be_bytes())?;
                }
                let event = Event { at: now, kind: "submitted".into(), message: format!("queued as {}", spec.name) };
                events.insert(&event_key(id, events.generate_id()?), encode("event", &event).or_else(abort)?)?;
                Ok((record, true))
            })
            .map_err(flatten)?;
        self.flush()?;
        Ok(result)
    }

    /// The job's record, if it exists.
    pub fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.jobs.get(id.0.to_be_bytes())?.map(|bytes| decode_job(&bytes)).transpose()
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
        self.jobs.range(..before.0.to_be_bytes()).values().rev().map(|v| decode_job(&v?))
    }

    /// How many jobs the store holds (without decoding them).
    pub fn count(&self) -> usize {
        self.jobs.len()
    }

    /// Every job, oldest first, decoded one at a time: a pass over a large store (reconciliation)
    /// holds one record, not all of them.
    pub fn records(&self) -> impl Iterator<Item = Result<JobRecord, StoreError>> + Send + 'static {
        self.jobs.iter().values().map(|v| decode_job(&v?))
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
        let record = (&self.jobs, &self.events)
            .transaction(|(jobs, events)| {
                let mut record = read_job(jobs, id)?;
                let from = record.state();
                if !can_transition(from, to) {
                    return abort(StoreError::IllegalTransition { id, from: state_word(from), to: state_word(to) });
                }
                edit(&mut record);
                record.state = to as i32;
                record.reason = reason as i32;
                record.updated_at = now;
                if !message.is_empty() {
                    record.message = Some(message.to_string());
                }
                jobs.insert(&id.0.to_be_bytes(), encode("job", &record).or_else(abort)?)?;
                let text = if message.is_empty() {
                    format!("{} -> {}", state_word(from), state_word(to))
                } else {
                    format!("{} -> {}: {message}", state_word(from), state_word(to))
                };
                let event = Event { at: now, kind: "transition".into(), message: text };
                events.insert(&event_key(id, events.generate_id()?), encode("event", &event).or_else(abort)?)?;
                Ok(record)
            })
            .map_err(flatten)?;
        self.flush()?;
        Ok(record)
    }

    /// Changes a job's record without changing its state (progress, an attempt's pid); flushed
    /// before it returns.
    pub fn update(&self, id: JobId, edit: impl Fn(&mut JobRecord)) -> Result<JobRecord, StoreError> {
        let record = self
            .jobs
            .transaction(|jobs| {
                let mut record = read_job(jobs, id)?;
                let state = record.state;
                edit(&mut record);
                if record.state != state {
                    return abort(StoreError::StateChangedByUpdate(id));
                }
                jobs.insert(&id.0.to_be_bytes(), encode("job", &record).or_else(abort)?)?;
                Ok(record)
            })
            .map_err(flatten)?;
        self.flush()?;
        Ok(record)
    }

    /// Appends an event to a job's log.
    pub fn append_event(&self, id: JobId, event: &Event) -> Result<(), StoreError> {
        self.events.insert(event_key(id, self.db.generate_id()?), encode("event", event)?)?;
        Ok(())
    }

    /// A job's events, oldest first.
    pub fn events(&self, id: JobId) -> Result<Vec<Event>, StoreError> {
        self.events
            .scan_prefix(id.0.to_be_bytes())
            .values()
            .map(|v| codec::decode(&v?).map_err(|source| StoreError::Codec { what: "event".into(), source }))
            .collect()
    }

    /// Writes everything to disk; returns the bytes flushed.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let started = std::time::Instant::now();
        let bytes = self.db.flush()?;
        self.flushes.observe(started.elapsed());
        Ok(bytes)
    }

    /// The flush latency histogram.
    pub fn flush_histogram(&self) -> &crate::metrics::Histogram {
        &self.flushes
    }
}

#[cfg(test)]
mod tests;
