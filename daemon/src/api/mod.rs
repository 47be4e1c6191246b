//! The operations clients can ask for, written once. The gRPC service (`grpc.rs`) and the JSON-lines
//! control socket (`jsonl.rs`) both map onto these handlers. Handlers validate every input and name the field
//! that is wrong.

pub mod grpc;
pub mod jsonl;
mod logs;

use crate::access::Caller;
use crate::config::DaemonConfig;
use crate::hub::{ends_watch, job_view, Hub, LiveFacts};
use crate::refusal::Refusal;
use crate::store::records::{
    DivergenceRule, JobId, JobRecord, JobSpec, OnDivergence, OnFailure, Protocol, RestartPolicy, SlurmSpec, SpecMore,
    Timeouts,
};
use crate::store::{Store, StoreError};
use crate::supervisor::SupervisorMsg;
use ractor::ActorRef;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use trainerd_proto::state::{is_terminal, state_word, ALL_STATES};
use trainerd_proto::trainer::PROTOCOL_VERSION;
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::JobState;

/// Why a request failed; each maps to one gRPC code in `grpc.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The disk under the state dir is (nearly) full, or the store cannot write.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::NotFound(format!("no job {id}")),
            StoreError::IllegalTransition { .. }
            | StoreError::NotRetriable(_)
            | StoreError::KeyInUse(_)
            | StoreError::NotFinished { .. } => ApiError::FailedPrecondition(e.to_string()),
            e if e.is_unavailable() => ApiError::ResourceExhausted(format!(
                "{e}; nothing was changed. Running jobs stay supervised; trainerd reopens the store by itself once \
                 its directory has room (`trainctl health` shows the cause)"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound(message) => ApiError::NotFound(message),
            Refusal::NotNow(message) => ApiError::FailedPrecondition(message),
            Refusal::Store(e) => ApiError::from(e),
            Refusal::Internal(message) => ApiError::Internal(message),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument { field, message: message.into() }
}

/// The handlers and what they need.
pub struct Api {
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub shared: Arc<crate::shared::Shared>,
    pub started: Instant,
}

const MAX_NAME: usize = 128;
const MAX_ARGS_BYTES: usize = 128 * 1024;
const MAX_ENV_BYTES: usize = 128 * 1024;
const MAX_PATH: usize = 4096;
const MAX_ARGS: usize = 4096;
const MAX_ENV_VARS: usize = 1024;
const MAX_KEY: usize = 256;
/// The longest duration a submission may set (deadlines beyond it would overflow clock arithmetic).
const MAX_MS: u64 = 365 * 24 * 3_600_000;

impl Api {
    fn config(&self) -> Arc<DaemonConfig> {
        self.shared.config()
    }

    /// Validates a submission and queues it (or returns the job its idempotency key names).
    pub async fn submit(&self, req: pb::SubmitJobRequest, caller: &Caller) -> Result<pb::SubmitJobResponse, ApiError> {
        let spec = self.validate(req)?;
        let known = match &spec.idempotency_key {
            Some(key) => self.store.find_key(key)?,
            None => None,
        };
        if known.is_none() {
            self.room_for_a_job()?;
        }
        let run_as = self.config().access.run_as(caller).map_err(ApiError::PermissionDenied)?;
        let (record, created) = self
            .supervisor
            .call(|reply| SupervisorMsg::Submit { spec: Box::new(spec), run_as, reply }, Some(Duration::from_secs(30)))
            .await
            .map_err(|e| ApiError::Unavailable(format!("the supervisor did not answer: {e}")))?
            .success_or_unavailable()??;
        if created {
            tracing::info!(target: "trainerd::audit", job = %record.id, run_as = ?record.run_as, "{caller} submitted {}", record.spec.name);
        }
        // A new job is answered as it was created (QUEUED), whatever its actor has done since: the
        // answer does not race the admission. A known key's job is answered as it is now.
        let job = if created { self.stored_view(&record) } else { self.view(&record) };
        Ok(pb::SubmitJobResponse { job: Some(job), created })
    }

    /// Refuses a new job while the store cannot write, or while the state dir has less free space than
    /// the reserve kept for the transitions of jobs already running.
    fn room_for_a_job(&self) -> Result<(), ApiError> {
        let config = self.config();
        let free = crate::disk::free_bytes(&config.state_dir);
        let free_words = match &free {
            Ok(n) => format!("{} free", crate::disk::bytes(*n)),
            Err(e) => format!("free space unknown: {e}"),
        };
        if let Some(failure) = self.store.failure() {
            return Err(ApiError::ResourceExhausted(format!(
                "the state store in {} cannot write ({}; {free_words}); no job is accepted until it can. Free space \
                 there: trainerd reopens the store by itself",
                config.state_dir.display(),
                failure.cause
            )));
        }
        match free {
            Ok(n) if n < config.disk_reserve => Err(ApiError::ResourceExhausted(format!(
                "the state dir {} has {} free, below the reserve of {} kept for the transitions of running jobs; \
                 free space there (or lower disk-reserve-mib)",
                config.state_dir.display(),
                crate::disk::bytes(n),
                crate::disk::bytes(config.disk_reserve)
            ))),
            _ => Ok(()),
        }
    }

    fn validate(&self, req: pb::SubmitJobRequest) -> Result<JobSpec, ApiError> {
        let Some(program) = req.command.first().filter(|p| !p.is_empty()) else {
            return Err(invalid("command", "is empty; give the program and its arguments, like: -- python train.py"));
        };
        if req.command.iter().map(String::len).sum::<usize>() > MAX_ARGS_BYTES || req.command.len() > MAX_ARGS {
            return Err(invalid("command", format!("is longer than {MAX_ARGS_BYTES} bytes or {MAX_ARGS} arguments")));
        }
        if req.command.iter().any(|a| a.contains('\0')) {
            return Err(invalid("command", "an argument contains a NUL byte, which no program can receive"));
        }
        if req.idempotency_key.len() > MAX_KEY {
            return Err(invalid("idempotency_key", format!("is longer than {MAX_KEY} bytes")));
        }
        if req.idempotency_key.contains('\0') {
            return Err(invalid("idempotency_key", "contains a NUL byte; use printable text"));
        }
        if req.env.len() > MAX_ENV_VARS {
            return Err(invalid("env", format!("has more than {MAX_ENV_VARS} variables")));
        }
        if req.workdir.is_empty() && program.contains('/') && !program.starts_with('/') {
            return Err(invalid("command", format!("{program:?} is relative; give a workdir, or an absolute path")));
        }
        let resolved = resolve_program(program, Path::new(&req.workdir)).ok_or_else(|| {
            invalid("command", format!("{program:?} is not an executable file, nor found on trainerd's PATH"))
        })?;
        self.outside_state_dir("command", &resolved)?;
        let name = if req.name.is_empty() {
            resolved.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "job".into())
        } else {
            req.name.clone()
        };
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
            .take(MAX_NAME)
            .collect();
        if !req.name.is_empty() && (req.name != name || name.len() > MAX_NAME) {
            return Err(invalid("name", format!("{:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -", req.name)));
        }
        // Empty: the job's own trainer directory (see `job::spawn`).
        let workdir = if req.workdir.is_empty() {
            PathBuf::new()
        } else {
            let dir = PathBuf::from(&req.workdir);
            if req.workdir.len() > MAX_PATH || req.workdir.contains('\0') {
                return Err(invalid("workdir", format!("must be a path of at most {MAX_PATH} bytes")));
            }
            if !dir.is_absolute() {
                return Err(invalid("workdir", format!("{:?} must be an absolute path", req.workdir)));
            }
            if !dir.is_dir() {
                return Err(invalid("workdir", format!("{:?} is not a directory", req.workdir)));
            }
            self.outside_state_dir("workdir", &dir)?;
            dir
        };
        let mut env_bytes = 0;
        for var in &req.env {
            env_bytes += var.name.len() + var.value.len();
            let ok_name = !var.name.is_empty()
                && !var.name.starts_with(|c: char| c.is_ascii_digit())
                && var.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok_name || var.value.contains('\0') {
                return Err(invalid("env", format!("{:?} is not a valid NAME=VALUE variable", var.name)));
            }
            if var.name.starts_with("TRAINERD_") && !var.name.starts_with(crate::job::hooks::PREFIX) {
                return Err(invalid("env", format!("{} is set by trainerd itself (the trainer protocol)", var.name)));
            }
        }
        if env_bytes > MAX_ENV_BYTES {
            return Err(invalid("env", format!("is larger than {MAX_ENV_BYTES} bytes")));
        }
        if req.gpus as usize > self.config().gpus.len() {
            return Err(invalid(
                "gpus",
                format!(
                    "asks for {} GPU(s); this trainerd has {} ({:?})",
                    req.gpus,
                    self.config().gpus.len(),
                    self.config().gpus
                ),
            ));
        }
        let defaults = &self.config().default_restart;
        let on_failure = match req.on_failure.as_deref() {
            None | Some("") | Some("restart") => OnFailure::Restart,
            Some("fail") => OnFailure::Fail,
            Some(other) => return Err(invalid("on_failure", format!("{other:?}: use restart or fail"))),
        };
        let t = &self.config().default_timeouts;
        let positive = |field: &'static str, v: Option<u64>, default: u64| match v {
            Some(0) => Err(invalid(field, "must be positive")),
            Some(v) if v > MAX_MS => Err(invalid(field, format!("{v} ms is more than a year; give at most {MAX_MS}"))),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let protocol = match req.protocol.as_deref() {
            None | Some("") => self.config().default_protocol,
            Some(word) => Protocol::from_word(word).ok_or_else(|| {
                invalid(
                    "protocol",
                    format!("{word:?}: use auto (the default), v1 (it heartbeats) or none (a plain process)"),
                )
            })?,
        };
        let progress_regex = match req.progress_regex.as_str() {
            "" => None,
            text => Some(
                crate::job::output::compile(text)
                    .map(|_| text.to_string())
                    .map_err(|e| invalid("progress_regex", e))?,
            ),
        };
        let resume_rule = crate::job::resume::rule(&req.checkpoint_glob, &req.resume_arg, &req.checkpoint_marker)
            .map_err(|(field, message)| invalid(field, message))?;
        let bounded = |field: &'static str, v: Option<u64>, default: u64| match v {
            Some(v) if v > MAX_MS => Err(invalid(field, format!("{v} ms is more than a year; give at most {MAX_MS}"))),
            v => Ok(v.unwrap_or(default)),
        };
        let divergence = self.divergence_rule(&req)?;
        let slurm = self.slurm_spec(&req)?;
        Ok(JobSpec {
            name,
            command: std::iter::once(resolved.display().to_string()).chain(req.command[1..].iter().cloned()).collect(),
            workdir,
            env: req.env.iter().map(|v| (v.name.clone(), v.value.clone())).collect(),
            gpus: req.gpus,
            priority: req.priority,
            idempotency_key: Some(req.idempotency_key).filter(|k| !k.is_empty()),
            restart: RestartPolicy {
                on_failure,
                max_restarts: req.max_restarts.unwrap_or(defaults.max_restarts),
                window_ms: positive("restart_window_ms", req.restart_window_ms, defaults.window_ms)?,
                backoff_base_ms: bounded("backoff_base_ms", req.backoff_base_ms, defaults.backoff_base_ms)?,
                backoff_max_ms: bounded("backoff_max_ms", req.backoff_max_ms, defaults.backoff_max_ms)?,
                healthy_after_ms: defaults.healthy_after_ms,
            },
            timeouts: Timeouts {
                startup_grace_ms: positive("startup_grace_ms", req.startup_grace_ms, t.startup_grace_ms)?,
                heartbeat_timeout_ms: positive(
                    "heartbeat_timeout_ms",
                    req.heartbeat_timeout_ms,
                    t.heartbeat_timeout_ms,
                )?,
                stop_grace_ms: positive("stop_grace_ms", req.stop_grace_ms, t.stop_grace_ms)?,
                pause_timeout_ms: positive("pause_timeout_ms", req.pause_timeout_ms, t.pause_timeout_ms)?,
            },
            protocol,
            idle_timeout_ms: match req.idle_timeout_ms {
                Some(_) => Some(positive("idle_timeout_ms", req.idle_timeout_ms, 0)?),
                None => None,
            },
            progress_regex,
            resume_rule,
            more: SpecMore {
                slurm,
                divergence,
                progress_timeout_ms: match req.progress_timeout_ms {
                    Some(0) => None,
                    Some(v) if v > MAX_MS => {
                        return Err(invalid(
                            "progress_timeout_ms",
                            format!("{v} ms is more than a year; give at most {MAX_MS}"),
                        ))
                    }
                    Some(v) => Some(v),
                    None => self.config().default_progress_timeout_ms,
                },
            },
        })
    }

    /// What a submission asks Slurm for, when its attempts run under Slurm (its `executor`, else the
    /// daemon's), with the daemon's Slurm defaults filled in; checked.
    fn slurm_spec(&self, req: &pb::SubmitJobRequest) -> Result<Option<SlurmSpec>, ApiError> {
        let config = self.config();
        let slurm = match req.executor.as_deref() {
            None | Some("") => config.default_slurm,
            Some("local") => false,
            Some("slurm") => true,
            Some(other) => return Err(invalid("executor", format!("{other:?}: use local or slurm"))),
        };
        let given = req.slurm.clone().unwrap_or_default();
        if !slurm {
            if given != pb::SlurmOptions::default() {
                return Err(invalid("slurm", "Slurm options need the slurm executor: add --executor slurm"));
            }
            return Ok(None);
        }
        if given.nodes > 10_000 || given.tasks_per_node > 1_024 || given.gpus_per_node > 64 {
            return Err(invalid(
                "slurm",
                "nodes (at most 10000), tasks per node (1024) or GPUs per node (64) out of range",
            ));
        }
        if req.gpus > 0 {
            return Err(invalid("gpus", "a Slurm job asks Slurm for its GPUs: use --gpus-per-node, not --gpus"));
        }
        for arg in &given.args {
            if !arg.starts_with("--") || arg.contains('\n') {
                return Err(invalid("slurm.args", format!("{arg:?}: give sbatch options as --name=value")));
            }
        }
        let word = |given: &str, default: &str| if given.is_empty() { default.to_string() } else { given.to_string() };
        Ok(Some(SlurmSpec {
            partition: word(&given.partition, &config.slurm.partition),
            account: word(&given.account, &config.slurm.account),
            nodes: given.nodes.max(1),
            tasks_per_node: given.tasks_per_node.max(1),
            gpus_per_node: given.gpus_per_node,
            time_minutes: given.time_minutes,
            signal_margin_s: match (given.time_minutes, given.signal_margin_s) {
                (0, _) => 0,
                (_, 0) => 60,
                (minutes, margin) if u64::from(margin) >= u64::from(minutes) * 60 => {
                    return Err(invalid(
                        "slurm.signal_margin_s",
                        format!("{margin} s is not less than the time limit ({minutes} min)"),
                    ))
                }
                (_, margin) => margin,
            },
            args: given.args,
        }))
    }

    /// The divergence guard a submission asks for (or the daemon's default), checked.
    fn divergence_rule(&self, req: &pb::SubmitJobRequest) -> Result<Option<DivergenceRule>, ApiError> {
        let on = match req.on_divergence.as_deref() {
            None | Some("") => self.config().default_on_divergence,
            Some("ignore") => None,
            Some("rollback") => Some(OnDivergence::Rollback),
            Some("fail") => Some(OnDivergence::Fail),
            Some(other) => return Err(invalid("on_divergence", format!("{other:?}: use ignore, rollback or fail"))),
        };
        let factor = req.spike_factor.unwrap_or(10.0);
        if !(factor.is_finite() && factor > 1.0 && factor <= 1e6) {
            return Err(invalid("spike_factor", format!("{factor}: give a number above 1 and at most 1e6, like 10")));
        }
        let window = req.spike_window.unwrap_or(20);
        if !(1..=10_000).contains(&window) {
            return Err(invalid("spike_window", format!("{window}: give 1 to 10000 reports")));
        }
        let steps = req.spike_steps.unwrap_or(3);
        if !(1..=10_000).contains(&steps) {
            return Err(invalid("spike_steps", format!("{steps}: give 1 to 10000 reports")));
        }
        let max_rollbacks = req.max_rollbacks.unwrap_or(3);
        if max_rollbacks > 1000 {
            return Err(invalid("max_rollbacks", format!("{max_rollbacks}: give at most 1000")));
        }
        Ok(on.map(|on| DivergenceRule {
            on,
            spike_factor: factor,
            spike_window: window,
            spike_steps: steps,
            max_rollbacks,
        }))
    }

    /// Refuses a path that leads (through any symlink or `..`) into the state dir: the store and
    /// every job's files are trainerd's, and a job must not read or replace another's.
    fn outside_state_dir(&self, field: &'static str, path: &Path) -> Result<(), ApiError> {
        let state_dir = self.config().state_dir.clone();
        let state_dir = state_dir.canonicalize().unwrap_or(state_dir);
        let real = path.canonicalize().map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
        if real.starts_with(&state_dir) {
            return Err(invalid(
                field,
                format!(
                    "{} is inside trainerd's state dir {}; jobs run from their own directories",
                    path.display(),
                    state_dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// Finds the job an id names: its number (`7`, `000000000007`), else a unique prefix of its
    /// 12-digit form.
    pub fn resolve(&self, id: &str) -> Result<JobId, ApiError> {
        if id.is_empty() || id.len() > 12 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(
                "id",
                format!("{id:?} is not a job id (up to 12 hex digits; a unique prefix will do)"),
            ));
        }
        let id = id.to_ascii_lowercase();
        let number = JobId(u64::from_str_radix(&id, 16).unwrap_or(0));
        if self.store.get(number)?.is_some() {
            return Ok(number);
        }
        let matches: Vec<JobId> =
            self.store.list()?.into_iter().map(|r| r.id).filter(|j| j.to_string().starts_with(&id)).collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(ApiError::NotFound(format!("no job {id}; `trainctl ls` lists the jobs"))),
            many => {
                Err(invalid("id", format!("{id:?} is ambiguous: it starts {} job ids; give more digits", many.len())))
            }
        }
    }

    fn view(&self, record: &JobRecord) -> pb::Job {
        self.hub.latest(record.id.0).unwrap_or_else(|| self.stored_view(record))
    }

    /// The job as its record alone says (no live facts of a running attempt).
    fn stored_view(&self, record: &JobRecord) -> pb::Job {
        job_view(record, &LiveFacts::default(), self.hub.queue_position(record))
    }

    fn record(&self, id: JobId) -> Result<JobRecord, ApiError> {
        self.store.get(id)?.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<pb::Job, ApiError> {
        let id = self.resolve(id)?;
        let record = self.record(id)?;
        let mut job = self.view(&record);
        (job.queue_position, job.waiting_for) = self.hub.queue_position(&record);
        Ok(job)
    }

    /// Jobs newest first, filtered and paged (the page token is the last id of the previous page).
    pub fn list(&self, req: pb::ListJobsRequest) -> Result<pb::ListJobsResponse, ApiError> {
        let size = match req.page_size {
            0 => 100,
            n => n.min(10_000) as usize,
        };
        let after = match req.page_token.as_str() {
            "" => u64::MAX,
            token => {
                u64::from_str_radix(token, 16).map_err(|_| invalid("page_token", "is not a token this daemon gave"))?
            }
        };
        let states: Vec<i32> = req.states.clone();
        // Newest first, and no further than the page needs: `trainctl ls` over a long history reads
        // its hundred records, not the whole store.
        let mut records = Vec::with_capacity(size.min(1024) + 1);
        for record in self.store.records_before(JobId(after)) {
            let record = record?;
            if (states.is_empty() || states.contains(&record.state))
                && (req.name.is_empty() || record.spec.name == req.name)
            {
                records.push(record);
                if records.len() > size {
                    break;
                }
            }
        }
        let more = records.len() > size;
        records.truncate(size);
        let next_page_token =
            if more { records.last().map(|r| r.id.to_string()).unwrap_or_default() } else { String::new() };
        let jobs = records
            .iter()
            .map(|r| {
                let mut job = self.view(r);
                (job.queue_position, job.waiting_for) = self.hub.queue_position(r);
                job
            })
            .collect();
        Ok(pb::ListJobsResponse { jobs, next_page_token })
    }

    /// A job's updates as WatchJob delivers them: the current view, then every update until the job
    /// ends or pauses.
    pub fn watch(self: &Arc<Self>, id: &str) -> Result<Updates, ApiError> {
        let (snapshot, rx) = self.subscribe(id)?;
        let rx = if ends_watch(snapshot.state()) { None } else { rx };
        let id = snapshot.id.clone();
        let first = pb::JobUpdate { job: Some(snapshot), kind: "snapshot".into(), point: None };
        Ok(Updates { api: self.clone(), id, first: Some(first), rx })
    }

    /// The current view and, unless the job has ended, a receiver of every later update.
    fn subscribe(&self, id: &str) -> Result<(pb::Job, Option<broadcast::Receiver<pb::JobUpdate>>), ApiError> {
        let id = self.resolve(id)?;
        if let Some((job, rx)) = self.hub.subscribe(id.0) {
            return Ok((job, Some(rx)));
        }
        let job = self.get(&id.to_string())?;
        // Not live yet (queued before any publish) or ended. A queued job gets a channel on first
        // publish; subscribe again after reading, so nothing published in between is missed.
        if ends_watch(job.state()) {
            return Ok((job, None));
        }
        self.hub.publish(job.clone(), "snapshot");
        let (job, rx) = self.hub.subscribe(id.0).map(|(j, rx)| (j, Some(rx))).unwrap_or((job, None));
        Ok((job, rx))
    }

    /// A job's event log, oldest first.
    pub fn events(&self, id: &str) -> Result<pb::ListEventsResponse, ApiError> {
        let id = self.resolve(id)?;
        let events = self
            .store
            .events(id)?
            .into_iter()
            .map(|e| pb::Event { at: e.at, kind: e.kind, message: e.message })
            .collect();
        Ok(pb::ListEventsResponse { events })
    }

    /// Cancels a job; returns once it is CANCELLED (no process of it left).
    pub async fn cancel(&self, id: &str, by: String) -> Result<pb::Job, ApiError> {
        let id = self.resolve(id)?;
        tracing::info!(target: "trainerd::audit", job = %id, "{by} cancels the job");
        let grace = self.record(id)?.spec.timeouts.stop_grace_ms;
        self.supervisor
            .call(
                |reply| SupervisorMsg::Cancel { id, by, reply },
                Some(Duration::from_millis(grace) + Duration::from_secs(30)),
            )
            .await
            .map_err(|e| ApiError::Unavailable(format!("the supervisor did not answer: {e}")))?
            .success_or_unavailable()?
            .map_err(ApiError::from)
    }

    /// Pauses a job at its next epoch boundary (a queued job is held); answers at once.
    pub async fn pause(&self, id: &str, by: String) -> Result<pb::Job, ApiError> {
        let id = self.resolve(id)?;
        tracing::info!(target: "trainerd::audit", job = %id, "{by} pauses the job");
        self.supervisor
            .call(|reply| SupervisorMsg::Pause { id, by, reply }, Some(Duration::from_secs(30)))
            .await
            .map_err(|e| ApiError::Unavailable(format!("the supervisor did not answer: {e}")))?
            .success_or_unavailable()?
            .map_err(ApiError::from)
    }

    /// Queues a paused job again, to resume from its pause checkpoint.
    pub async fn resume(&self, id: &str) -> Result<pb::Job, ApiError> {
        let id = self.resolve(id)?;
        let record = self.record(id)?;
        if let (JobState::Paused, Some(checkpoint)) = (record.state(), record.latest_checkpoint) {
            let path = checkpoint.path.clone();
            let usable = crate::blocking::run("looking at the checkpoint", crate::blocking::FILE_DEADLINE, move || {
                crate::untrusted::checkpoint_usable(&path).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|v| v);
            if let Err(why) = usable {
                return Err(ApiError::FailedPrecondition(format!(
                    "job {id} would resume from {}, which is not usable ({why}); it is not started from step 0 \
                     (restore the checkpoint, or cancel the job)",
                    checkpoint.path.display()
                )));
            }
        }
        self.supervisor
            .call(|reply| SupervisorMsg::Resume { id, reply }, Some(Duration::from_secs(30)))
            .await
            .map_err(|e| ApiError::Unavailable(format!("the supervisor did not answer: {e}")))?
            .success_or_unavailable()?
            .map_err(ApiError::from)
    }

    /// Queues a failed or cancelled job again from its latest checkpoint (see `RetryJob`).
    pub async fn retry(&self, req: pb::RetryJobRequest, by: String) -> Result<pb::Job, ApiError> {
        let id = self.resolve(&req.id)?;
        if req.request_key.len() > MAX_KEY || req.request_key.contains('\0') {
            return Err(invalid("request_key", format!("must be at most {MAX_KEY} bytes, without NUL")));
        }
        tracing::info!(target: "trainerd::audit", job = %id, "{by} retries the job");
        let key = Some(req.request_key).filter(|k| !k.is_empty());
        let from_start = req.from_start;
        self.supervisor
            .call(|reply| SupervisorMsg::Retry { id, from_start, key, by, reply }, Some(Duration::from_secs(30)))
            .await
            .map_err(|e| ApiError::Unavailable(format!("the supervisor did not answer: {e}")))?
            .success_or_unavailable()?
            .map_err(ApiError::from)
    }

    /// Removes finished jobs; each named job is checked before any is touched, so a request naming
    /// one unfinished job removes nothing.
    pub async fn remove(&self, req: pb::RemoveJobsRequest, by: String) -> Result<pb::RemoveJobsResponse, ApiError> {
        if req.ids.is_empty() {
            return Err(invalid("ids", "is empty; name the jobs to remove"));
        }
        let mut ids = Vec::new();
        for id in &req.ids {
            let id = self.resolve(id)?;
            let record = self.record(id)?;
            if !is_terminal(record.state()) {
                return Err(ApiError::FailedPrecondition(format!(
                    "job {id} is {}; only finished (completed, failed or cancelled) jobs can be removed, nothing \
                     was removed (cancel it first)",
                    state_word(record.state())
                )));
            }
            ids.push(id);
        }
        tracing::info!(target: "trainerd::audit", "{by} removes jobs {ids:?}");
        let shared = self.shared.clone();
        let keep = req.keep_final_checkpoint || self.config().keep_final_checkpoint;
        let removed = tokio::task::spawn_blocking(move || {
            ids.into_iter().map(|id| crate::removal::remove(&shared, id, keep)).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("the removal task failed: {e}")))?;
        let mut out = pb::RemoveJobsResponse::default();
        for result in removed {
            let r = result.map_err(|e| match e {
                crate::removal::RemoveError::Store(e) => ApiError::from(e),
                other => ApiError::FailedPrecondition(other.to_string()),
            })?;
            out.removed.push(pb::RemovedJob {
                id: r.id.to_string(),
                bytes_freed: r.bytes,
                kept_checkpoint: r.kept.map(|p| p.display().to_string()).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// A job's metric history: the names asked for (all when none), in a step range, each downsampled
    /// to at most `max_points` samples with the extremes and the newest kept.
    pub async fn metrics(&self, req: pb::GetMetricsRequest) -> Result<pb::GetMetricsResponse, ApiError> {
        let id = self.resolve(&req.id)?;
        let max = match req.max_points {
            0 => 1000,
            n if n > 100_000 => return Err(invalid("max_points", format!("{n}: give at most 100000"))),
            n => n as usize,
        };
        let to = req.to_step.unwrap_or(u64::MAX);
        if to < req.from_step {
            return Err(invalid("to_step", format!("{to} is before from_step {}", req.from_step)));
        }
        if let Some(bad) = req.names.iter().find(|n| !crate::store::metrics::valid_name(n)) {
            return Err(invalid("names", format!("{bad:?} is not a metric name (letters, digits, _ . / -)")));
        }
        let store = self.store.clone();
        let from = req.from_step;
        let all = tokio::task::spawn_blocking(move || store.metrics(id, from, to))
            .await
            .map_err(|e| ApiError::Internal(format!("reading the metrics failed: {e}")))??;
        let names: Vec<String> = all.keys().cloned().collect();
        let series = all
            .into_iter()
            .filter(|(name, _)| req.names.is_empty() || req.names.contains(name))
            .map(|(name, samples)| pb::MetricSeries {
                name,
                samples: crate::store::metrics::downsample(&samples, max)
                    .into_iter()
                    .map(|s| pb::MetricSample {
                        step: s.step,
                        value: s.value,
                        min: s.min,
                        max: s.max,
                        at: s.at,
                        attempt: s.attempt,
                    })
                    .collect(),
            })
            .collect();
        Ok(pb::GetMetricsResponse { series, names })
    }

    /// The disk each job's directory uses, largest first.
    pub async fn disk_usage(&self) -> Result<pb::DiskUsageResponse, ApiError> {
        let records: Vec<JobRecord> = self.store.records().collect::<Result<_, _>>()?;
        let config = self.config();
        tokio::task::spawn_blocking(move || {
            let mut jobs: Vec<pb::JobDiskUsage> = records
                .iter()
                .map(|r| {
                    let (bytes, at_least) =
                        crate::removal::disk_use(&config.job_paths(r.id, r.spec.more.slurm.is_some()).dir);
                    pb::JobDiskUsage {
                        id: r.id.to_string(),
                        name: r.spec.name.clone(),
                        state: r.state,
                        bytes,
                        at_least,
                    }
                })
                .collect();
            jobs.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.id.cmp(&b.id)));
            let total_bytes = jobs.iter().map(|j| j.bytes).sum();
            let free = crate::disk::free_bytes(&config.state_dir).unwrap_or(0);
            pb::DiskUsageResponse { jobs, total_bytes, state_dir_free_bytes: free }
        })
        .await
        .map_err(|e| ApiError::Internal(format!("the disk usage task failed: {e}")))
    }

    /// Jobs by state.
    pub fn health(&self) -> Result<pb::HealthResponse, ApiError> {
        let records = self.store.list()?;
        let jobs = ALL_STATES
            .iter()
            .map(|s| pb::StateCount {
                state: *s as i32,
                count: records.iter().filter(|r| r.state() == *s).count() as u32,
            })
            .filter(|c| c.count > 0)
            .collect();
        // What reconciliation repairs (`divergence`): records that claim a process that is gone, and
        // finished or paused jobs with a process left. A job caught between its trainer's exit and
        // the record of it counts for that instant; a lasting count is a fault.
        let state_dir = self.config().state_dir.clone();
        let divergent = records.iter().filter(|r| crate::divergence::of(r, &state_dir).is_some()).count() as u32;
        let free = crate::disk::free_bytes(&state_dir).ok();
        let cause = match (self.store.failure(), free) {
            (Some(failure), _) => {
                let what = if failure.unrecoverable {
                    "cannot reopen it; restart trainerd"
                } else {
                    "it is reopened once there is room"
                };
                let secs = (trainerd_proto::trainer::unix_now() - failure.since).max(0.0);
                format!("the state store has not been able to write for {secs:.0} s ({}); {what}", failure.cause)
            }
            (None, Some(n)) if n < self.config().disk_reserve => format!(
                "the state dir has {} free, below the {} reserve: new jobs are refused",
                crate::disk::bytes(n),
                crate::disk::bytes(self.config().disk_reserve)
            ),
            _ => String::new(),
        };
        let status = match (cause.is_empty(), divergent) {
            (false, _) => "degraded",
            (true, 0) => "ok",
            (true, _) => "divergent",
        };
        let last_reconcile = Some(self.shared.last_reconcile.lock().unwrap_or_else(|p| p.into_inner()).clone());
        Ok(pb::HealthResponse {
            jobs,
            divergent,
            status: status.into(),
            last_reconcile,
            cause,
            state_dir_free_bytes: free.unwrap_or(0),
            resume_ignored: records.iter().filter(|r| r.attempts.last().is_some_and(|a| a.resume_ignored)).count()
                as u32,
        })
    }

    /// Reconciles now and says what was fixed.
    pub async fn reconcile(&self) -> Result<pb::ReconcileResponse, ApiError> {
        self.supervisor
            .call(|reply| SupervisorMsg::Reconcile { reply: Some(reply) }, Some(Duration::from_secs(60)))
            .await
            .map_err(|e| ApiError::Unavailable(format!("the supervisor did not answer: {e}")))?
            .success_or_unavailable()
    }

    /// What this daemon is.
    pub fn info(&self) -> pb::DaemonInfoResponse {
        pb::DaemonInfoResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            slots: self.config().slots,
            state_dir: self.config().state_dir.display().to_string(),
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
            api_version: trainerd_proto::API_VERSION.into(),
        }
    }
}

/// The stream behind WatchJob and the control socket's `watch`, written once for both.
pub struct Updates {
    api: Arc<Api>,
    id: String,
    first: Option<pb::JobUpdate>,
    rx: Option<broadcast::Receiver<pb::JobUpdate>>,
}

impl Updates {
    /// The next update; None after the one that ends the job. A watcher that fell too far behind
    /// gets a fresh snapshot instead of the updates it missed.
    pub async fn next(&mut self) -> Option<pb::JobUpdate> {
        let update = match self.first.take() {
            Some(first) => first,
            None => {
                let rx = self.rx.as_mut()?;
                match rx.recv().await {
                    Ok(update) => update,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        pb::JobUpdate { job: Some(self.api.get(&self.id).ok()?), kind: "snapshot".into(), point: None }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        if update.job.as_ref().is_none_or(|j| ends_watch(j.state())) {
            self.rx = None;
        }
        Some(update)
    }
}

trait CallResultExt<T> {
    fn success_or_unavailable(self) -> Result<T, ApiError>;
}

impl<T> CallResultExt<T> for ractor::rpc::CallResult<T> {
    fn success_or_unavailable(self) -> Result<T, ApiError> {
        match self {
            ractor::rpc::CallResult::Success(v) => Ok(v),
            ractor::rpc::CallResult::Timeout => Err(ApiError::Unavailable("the supervisor timed out".into())),
            ractor::rpc::CallResult::SenderError => {
                Err(ApiError::Unavailable("the supervisor dropped the request".into()))
            }
        }
    }
}

/// The program's path: as given when it has a slash (a relative one under the job's workdir), else
/// searched on PATH. Symlinks are kept: a virtualenv's `bin/python` is a symlink whose own path is
/// what makes it that venv's interpreter.
fn resolve_program(program: &str, workdir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.is_file() && p.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = workdir.join(program);
        return executable(&path).then(|| std::path::absolute(&path).unwrap_or(path));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| executable(p)))
        .unwrap_or(None)
}
