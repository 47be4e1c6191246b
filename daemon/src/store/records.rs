//! The persisted records. These are what survives a restart; runtime handles (pids being waited on,
//! watchers, channels) live in the actors and never here.
//!
//! Changing a field changes the encoding: bump [`super::codec::FORMAT`] and teach the decoder the old
//! format (the committed fixture test fails until you do).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use trainerd_proto::trainer::CheckpointRef;
use trainerd_proto::v1::{JobState, Reason};

/// A job's identity: its creation sequence number (1, 2, ...). Displayed as 12 hex digits; clients
/// may abbreviate it (see `api::Api::resolve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnFailure {
    /// Restart from the latest checkpoint, within the budget.
    Restart,
    /// Fail the job at once.
    Fail,
}

/// How a job is restarted after a failure, in the manner of Erlang's intensity and period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub on_failure: OnFailure,
    /// Restarts allowed within `window_ms`.
    pub max_restarts: u32,
    pub window_ms: u64,
    /// The first backoff; it doubles per consecutive failure, with jitter, up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// An attempt that stays healthy this long resets the consecutive-failure count.
    pub healthy_after_ms: u64,
}

/// The deadlines of the stall ladder and of stopping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Deadline for the first heartbeat after a start.
    pub startup_grace_ms: u64,
    /// Silence after which the trainer is stopped as stalled.
    pub heartbeat_timeout_ms: u64,
    /// SIGTERM to SIGKILL.
    pub stop_grace_ms: u64,
    /// How long a pause may take before the documented pause-timeout rule applies.
    pub pause_timeout_ms: u64,
}

/// Whether a job's trainer speaks the trainer protocol, which decides what its silence means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// RUNNING once started; heartbeat deadlines from its first valid progress file (or progress
    /// line) on, none before it: an unchanged script is never killed for not speaking the protocol.
    #[default]
    Auto,
    /// It speaks protocol v1: STARTING until its first heartbeat, stopped if none comes within the
    /// startup grace.
    V1,
    /// Supervised as a process only: RUNNING once started, no heartbeat deadlines, no pause.
    None,
}

impl Protocol {
    /// The protocol's word (`auto`, `v1`, `none`).
    pub fn word(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::V1 => "v1",
            Protocol::None => "none",
        }
    }

    /// The protocol a word names.
    pub fn from_word(word: &str) -> Option<Protocol> {
        match word {
            "auto" => Some(Protocol::Auto),
            "v1" => Some(Protocol::V1),
            "none" => Some(Protocol::None),
            _ => None,
        }
    }
}

/// Resuming a script that knows nothing of `TRAINERD_RESUME_FROM`: at each restart, the newest
/// complete checkpoint matching `glob` (relative to the workdir) is appended as `arg`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeRule {
    /// A glob pattern relative to the job's workdir (`output/checkpoint-*`).
    pub glob: String,
    /// The arguments to append, `{checkpoint}` replaced by the path (`--resume_from_checkpoint
    /// {checkpoint}`), split at whitespace.
    pub arg: String,
    /// A file a checkpoint directory must hold to count as complete (Hugging Face: `trainer_state.json`).
    pub marker: Option<String>,
}

/// What the user asked for. Never changes after submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// The program and its arguments; never empty.
    pub command: Vec<String>,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub gpus: u32,
    /// Higher runs first; FIFO within a priority.
    pub priority: i32,
    pub idempotency_key: Option<String>,
    pub restart: RestartPolicy,
    pub timeouts: Timeouts,
    /// Added in format 3, as are the fields below.
    pub protocol: Protocol,
    /// No output on stdout or stderr (nor progress) for this long is a stall.
    pub idle_timeout_ms: Option<u64>,
    /// Progress from output lines: a regular expression with named groups (`step`, `total`, `epoch`,
    /// `loss`, others as metrics).
    pub progress_regex: Option<String>,
    pub resume_rule: Option<ResumeRule>,
    /// Added in format 4: the settings of later submissions, as a JSON object (see [`SpecMore`]).
    #[serde(with = "json_blob")]
    pub more: SpecMore,
}

/// Submission settings added from format 4 on. They are stored as one JSON object inside the
/// positional record, so a field added here (with its default) needs no new store format: a record
/// written before it reads the default, and an older trainerd ignores what it does not know.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecMore {
    /// While the trainer reports `running`, a step that does not advance for this long is a stall
    /// (a loop blocked in a collective or a data loader while its heartbeat thread still beats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_timeout_ms: Option<u64>,
    /// The divergence guard (see `job::guard`); `None`: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divergence: Option<DivergenceRule>,
    /// Set when the job's attempts run as Slurm jobs (the `slurm` executor); unset: on this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmSpec>,
}

/// What a job run by the Slurm executor asks Slurm for, each attempt one `sbatch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SlurmSpec {
    /// `--partition`; empty: the cluster's default.
    pub partition: String,
    /// `--account`; empty: none.
    pub account: String,
    /// `--nodes`.
    pub nodes: u32,
    /// `--ntasks-per-node`: the ranks on each node (one trainer process each).
    pub tasks_per_node: u32,
    /// `--gpus-per-node`; 0: none asked for.
    pub gpus_per_node: u32,
    /// `--time` in minutes; 0: the partition's limit.
    pub time_minutes: u32,
    /// Seconds before the time limit at which the ranks get SIGTERM (`--signal=TERM@S`), to
    /// checkpoint and exit 75; trainerd then submits the next allocation.
    pub signal_margin_s: u32,
    /// More `sbatch` arguments, passed as given.
    pub args: Vec<String>,
}

/// What a diverging loss does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDivergence {
    /// Stop the attempt and start a new one from the newest checkpoint before the divergence.
    Rollback,
    /// Fail the job with reason `diverged`.
    Fail,
}

/// The divergence guard of a job: a reported loss that is NaN or infinite, or above `spike_factor`
/// times the median of the last `spike_window` reported values, for `spike_steps` reports in a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DivergenceRule {
    pub on: OnDivergence,
    pub spike_factor: f64,
    pub spike_window: u32,
    pub spike_steps: u32,
    /// Rollbacks allowed (apart from the restart budget); one more divergence fails the job.
    pub max_rollbacks: u32,
}

/// A value stored as a JSON string inside a bincode record: self-describing, so it can grow.
mod json_blob {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// How a trainer process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// One start of the trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first start.
    pub number: u32,
    pub pid: Option<u32>,
    /// Field 22 of /proc/PID/stat: with the pid, identifies the process across pid reuse.
    pub pid_start_ticks: Option<u64>,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub exit: Option<ExitStatus>,
    /// `Reason` as its proto number.
    pub reason: i32,
    pub resumed_from: Option<PathBuf>,
    /// The step of the checkpoint it was given, when known (added in format 3, as are the next two).
    pub resumed_step: Option<u64>,
    /// The step of the attempt's first progress.
    pub first_step: Option<u64>,
    /// The attempt was given a checkpoint at step S and reported a step below S first: it started
    /// over instead of resuming.
    pub resume_ignored: bool,
    /// Fields added since format 5, as a JSON object (see [`AttemptMore`]).
    #[serde(with = "json_blob")]
    pub more: AttemptMore,
}

/// What an attempt records beyond format 4's fields, kept as one JSON object so that adding one needs
/// no store format of its own.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AttemptMore {
    /// How the attempt's executor finds it again (after a restart of trainerd, or by reconciliation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<Handle>,
}

/// An attempt as its executor names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "executor")]
pub enum Handle {
    /// On this host, under the shim with this pid and start time (in clock ticks since boot).
    Local { shim_pid: u32, shim_start_ticks: u64 },
    /// A Slurm job named `name`. `job_id` is unset between the intent to submit (written before
    /// `sbatch`) and the id `sbatch` printed: a trainerd that died in between finds the job by name.
    Slurm { name: String, job_id: Option<u64> },
}

/// The durable state of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    /// `JobState` as its proto number; read it with [`JobRecord::state`].
    pub state: i32,
    /// `Reason` of the latest transition, as its proto number.
    pub reason: i32,
    pub created_at: f64,
    pub updated_at: f64,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// Failures counted against the restart budget: their times, within the window.
    pub restart_times: Vec<f64>,
    /// Consecutive failures since the last healthy stretch: the backoff exponent.
    pub consecutive_failures: u32,
    /// When BACKOFF ends.
    pub next_restart_at: Option<f64>,
    pub latest_checkpoint: Option<CheckpointRef>,
    /// The checkpoint before the latest: the fallback when the latest cannot be read.
    pub previous_checkpoint: Option<CheckpointRef>,
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub total_epochs: u64,
    /// The last losses the trainer reported, kept after it exits.
    pub loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub exit_code: Option<i32>,
    pub weights_sha256: Option<String>,
    /// Who cancelled the job (a user name or uid), when it was cancelled.
    pub cancelled_by: Option<String>,
    /// Why the job is in its state, in words (the last transition's message).
    pub message: Option<String>,
    /// The user and group the trainer runs as; `None`: as trainerd itself. Set at submission (see
    /// `access::Access::run_as`). Added in format 2.
    pub run_as: Option<RunAs>,
    /// The job failed because its restart budget was spent (its reason is the last attempt's cause).
    /// Added in format 3.
    pub restarts_exhausted: bool,
}

/// A uid and gid a trainer runs as (with the user's supplementary groups, looked up at each start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl JobRecord {
    /// How many times the divergence guard rolled the job back: its attempts that ended diverged,
    /// less the last one when the job failed for it.
    pub fn rollbacks(&self) -> u32 {
        let diverged = Reason::Diverged as i32;
        let ended = self.attempts.iter().filter(|a| a.reason == diverged).count() as u32;
        let failed = self.state() == JobState::Failed && self.reason == diverged;
        ended.saturating_sub(u32::from(failed))
    }

    /// The job's state; an unknown number (a newer daemon's record) reads as `Unspecified`.
    pub fn state(&self) -> JobState {
        JobState::try_from(self.state).unwrap_or(JobState::Unspecified)
    }

    /// The latest transition's reason.
    pub fn reason(&self) -> Reason {
        Reason::try_from(self.reason).unwrap_or(Reason::Unspecified)
    }
}

/// One entry of a job's append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: f64,
    /// A short stable word: `transition`, `heartbeat_late`, `progress_invalid`, ...
    pub kind: String,
    pub message: String,
}
