//! The records as earlier formats wrote them, frozen, and their conversion to the current ones.
//! bincode is positional: a field added inside `JobSpec` or `Attempt` changes every byte after it,
//! so each format's layout is kept here as it was, and a stored record is decoded by its format byte.
//!
//! - Formats 1 and 2: `JobRecordV2` (format 1 lacks its last field, `run_as`; see
//!   `codec::upgrade_job`). Their jobs were submitted under protocol v1's rules and keep them.
//! - Format 3: `JobRecordV3`, whose `JobSpec` ends before `more`.
//! - Formats 3 and 4: `AttemptV4`, which ends before `more`; format 4: `JobRecordV4`.

use super::records::{
    Attempt, AttemptMore, ExitStatus, JobId, JobRecord, JobSpec, Protocol, RestartPolicy, ResumeRule, RunAs, SpecMore,
    Timeouts,
};
use serde::Deserialize;
use std::path::PathBuf;
use trainerd_proto::trainer::CheckpointRef;

#[derive(Deserialize)]
struct JobSpecV2 {
    name: String,
    command: Vec<String>,
    workdir: PathBuf,
    env: Vec<(String, String)>,
    gpus: u32,
    priority: i32,
    idempotency_key: Option<String>,
    restart: RestartPolicy,
    timeouts: Timeouts,
}

#[derive(Deserialize)]
struct AttemptV2 {
    number: u32,
    pid: Option<u32>,
    pid_start_ticks: Option<u64>,
    started_at: f64,
    ended_at: Option<f64>,
    exit: Option<ExitStatus>,
    reason: i32,
    resumed_from: Option<PathBuf>,
}

/// A job record of formats 1 and 2.
#[derive(Deserialize)]
pub struct JobRecordV2 {
    id: JobId,
    spec: JobSpecV2,
    state: i32,
    reason: i32,
    created_at: f64,
    updated_at: f64,
    attempts: Vec<AttemptV2>,
    restart_times: Vec<f64>,
    consecutive_failures: u32,
    next_restart_at: Option<f64>,
    latest_checkpoint: Option<CheckpointRef>,
    previous_checkpoint: Option<CheckpointRef>,
    step: u64,
    total_steps: u64,
    epoch: u64,
    total_epochs: u64,
    loss: Option<f64>,
    val_loss: Option<f64>,
    exit_code: Option<i32>,
    weights_sha256: Option<String>,
    cancelled_by: Option<String>,
    message: Option<String>,
    run_as: Option<RunAs>,
}

impl From<JobRecordV2> for JobRecord {
    fn from(r: JobRecordV2) -> JobRecord {
        let s = r.spec;
        JobRecord {
            id: r.id,
            spec: JobSpec {
                name: s.name,
                command: s.command,
                workdir: s.workdir,
                env: s.env,
                gpus: s.gpus,
                priority: s.priority,
                idempotency_key: s.idempotency_key,
                restart: s.restart,
                timeouts: s.timeouts,
                protocol: Protocol::V1,
                idle_timeout_ms: None,
                progress_regex: None,
                resume_rule: None,
                more: SpecMore::default(),
            },
            state: r.state,
            reason: r.reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            attempts: r
                .attempts
                .into_iter()
                .map(|a| Attempt {
                    number: a.number,
                    pid: a.pid,
                    pid_start_ticks: a.pid_start_ticks,
                    started_at: a.started_at,
                    ended_at: a.ended_at,
                    exit: a.exit,
                    reason: a.reason,
                    resumed_from: a.resumed_from,
                    resumed_step: None,
                    first_step: None,
                    resume_ignored: false,
                    more: AttemptMore::default(),
                })
                .collect(),
            restart_times: r.restart_times,
            consecutive_failures: r.consecutive_failures,
            next_restart_at: r.next_restart_at,
            latest_checkpoint: r.latest_checkpoint,
            previous_checkpoint: r.previous_checkpoint,
            step: r.step,
            total_steps: r.total_steps,
            epoch: r.epoch,
            total_epochs: r.total_epochs,
            loss: r.loss,
            val_loss: r.val_loss,
            exit_code: r.exit_code,
            weights_sha256: r.weights_sha256,
            cancelled_by: r.cancelled_by,
            message: r.message,
            run_as: r.run_as,
            restarts_exhausted: false,
        }
    }
}

#[derive(Deserialize)]
struct JobSpecV3 {
    name: String,
    command: Vec<String>,
    workdir: PathBuf,
    env: Vec<(String, String)>,
    gpus: u32,
    priority: i32,
    idempotency_key: Option<String>,
    restart: RestartPolicy,
    timeouts: Timeouts,
    protocol: Protocol,
    idle_timeout_ms: Option<u64>,
    progress_regex: Option<String>,
    resume_rule: Option<ResumeRule>,
}

/// A job record of format 3.
#[derive(Deserialize)]
pub struct JobRecordV3 {
    id: JobId,
    spec: JobSpecV3,
    state: i32,
    reason: i32,
    created_at: f64,
    updated_at: f64,
    attempts: Vec<AttemptV4>,
    restart_times: Vec<f64>,
    consecutive_failures: u32,
    next_restart_at: Option<f64>,
    latest_checkpoint: Option<CheckpointRef>,
    previous_checkpoint: Option<CheckpointRef>,
    step: u64,
    total_steps: u64,
    epoch: u64,
    total_epochs: u64,
    loss: Option<f64>,
    val_loss: Option<f64>,
    exit_code: Option<i32>,
    weights_sha256: Option<String>,
    cancelled_by: Option<String>,
    message: Option<String>,
    run_as: Option<RunAs>,
    restarts_exhausted: bool,
}

impl From<JobRecordV3> for JobRecord {
    fn from(r: JobRecordV3) -> JobRecord {
        let s = r.spec;
        JobRecord {
            id: r.id,
            spec: JobSpec {
                name: s.name,
                command: s.command,
                workdir: s.workdir,
                env: s.env,
                gpus: s.gpus,
                priority: s.priority,
                idempotency_key: s.idempotency_key,
                restart: s.restart,
                timeouts: s.timeouts,
                protocol: s.protocol,
                idle_timeout_ms: s.idle_timeout_ms,
                progress_regex: s.progress_regex,
                resume_rule: s.resume_rule,
                more: SpecMore::default(),
            },
            state: r.state,
            reason: r.reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            attempts: r.attempts.into_iter().map(Attempt::from).collect(),
            restart_times: r.restart_times,
            consecutive_failures: r.consecutive_failures,
            next_restart_at: r.next_restart_at,
            latest_checkpoint: r.latest_checkpoint,
            previous_checkpoint: r.previous_checkpoint,
            step: r.step,
            total_steps: r.total_steps,
            epoch: r.epoch,
            total_epochs: r.total_epochs,
            loss: r.loss,
            val_loss: r.val_loss,
            exit_code: r.exit_code,
            weights_sha256: r.weights_sha256,
            cancelled_by: r.cancelled_by,
            message: r.message,
            run_as: r.run_as,
            restarts_exhausted: r.restarts_exhausted,
        }
    }
}

/// An attempt of formats 3 and 4.
#[derive(Deserialize)]
struct AttemptV4 {
    number: u32,
    pid: Option<u32>,
    pid_start_ticks: Option<u64>,
    started_at: f64,
    ended_at: Option<f64>,
    exit: Option<ExitStatus>,
    reason: i32,
    resumed_from: Option<PathBuf>,
    resumed_step: Option<u64>,
    first_step: Option<u64>,
    resume_ignored: bool,
}

impl From<AttemptV4> for Attempt {
    fn from(a: AttemptV4) -> Attempt {
        Attempt {
            number: a.number,
            pid: a.pid,
            pid_start_ticks: a.pid_start_ticks,
            started_at: a.started_at,
            ended_at: a.ended_at,
            exit: a.exit,
            reason: a.reason,
            resumed_from: a.resumed_from,
            resumed_step: a.resumed_step,
            first_step: a.first_step,
            resume_ignored: a.resume_ignored,
            more: AttemptMore::default(),
        }
    }
}

/// A job record of format 4: the current layout but for its attempts' `more`.
#[derive(Deserialize)]
pub struct JobRecordV4 {
    id: JobId,
    spec: JobSpec,
    state: i32,
    reason: i32,
    created_at: f64,
    updated_at: f64,
    attempts: Vec<AttemptV4>,
    restart_times: Vec<f64>,
    consecutive_failures: u32,
    next_restart_at: Option<f64>,
    latest_checkpoint: Option<CheckpointRef>,
    previous_checkpoint: Option<CheckpointRef>,
    step: u64,
    total_steps: u64,
    epoch: u64,
    total_epochs: u64,
    loss: Option<f64>,
    val_loss: Option<f64>,
    exit_code: Option<i32>,
    weights_sha256: Option<String>,
    cancelled_by: Option<String>,
    message: Option<String>,
    run_as: Option<RunAs>,
    restarts_exhausted: bool,
}

impl From<JobRecordV4> for JobRecord {
    fn from(r: JobRecordV4) -> JobRecord {
        JobRecord {
            id: r.id,
            spec: r.spec,
            state: r.state,
            reason: r.reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            attempts: r.attempts.into_iter().map(Attempt::from).collect(),
            restart_times: r.restart_times,
            consecutive_failures: r.consecutive_failures,
            next_restart_at: r.next_restart_at,
            latest_checkpoint: r.latest_checkpoint,
            previous_checkpoint: r.previous_checkpoint,
            step: r.step,
            total_steps: r.total_steps,
            epoch: r.epoch,
            total_epochs: r.total_epochs,
            loss: r.loss,
            val_loss: r.val_loss,
            exit_code: r.exit_code,
            weights_sha256: r.weights_sha256,
            cancelled_by: r.cancelled_by,
            message: r.message,
            run_as: r.run_as,
            restarts_exhausted: r.restarts_exhausted,
        }
    }
}
