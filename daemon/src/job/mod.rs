//! One job's runtime: its directory, the trainer process it starts, and the actor that owns both.
//!
//! - [`actor`]: the JobActor (one per active job), child of the Supervisor.
//! - [`executor`]: where an attempt runs (this host under a shim, or a Slurm job), behind one interface.
//! - [`watch`]: the progress-directory watcher that wakes the actor.
//! - [`hooks`]: fault injection for the tests (`--test-hooks` only).
//! - [`checkpoints`]: which checkpoint an attempt resumes from (recorded, or found in the directory).
//! - [`resume`]: resuming an unchanged script from a glob of its own checkpoints (`--resume-arg`).
//! - [`output`]: progress from output lines (`--progress-regex`).
//! - [`logfiles`]: the job's log files: reclaimed when something took their place, kept under their cap.
//! - [`stall`]: the stall clock, a pure verdict from the job's limits and its last signs of life.
//! - [`grid`]: far deadlines moved onto one grid, so that many jobs' timers share a wake-up.

pub mod actor;
pub mod checkpoints;
pub mod executor;
pub mod grid;
pub mod guard;
pub mod hooks;
pub mod logfiles;
pub mod output;
pub mod report;
pub mod resume;
pub mod stall;
pub mod wake;
pub mod watch;

use crate::store::records::{JobId, JobSpec, RunAs};
use crate::untrusted;
use std::path::{Path, PathBuf};
use trainerd_proto::trainer::{env, Progress, ProgressError, MAX_PROGRESS_BYTES};

/// The files of one job under the state dir: `jobs/<id>/`, owned by trainerd, holds the logs and the
/// shim's records; `jobs/<id>/trainer/`, owned by the user the trainer runs as, holds what the
/// trainer writes (progress file, checkpoints). A trainer can thus never replace a log or forge its
/// own exit record, even with a symlink.
#[derive(Debug, Clone)]
pub struct JobPaths {
    pub dir: PathBuf,
    /// The trainer's own directory.
    pub trainer: PathBuf,
    pub progress: PathBuf,
    pub checkpoints: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// The progress file's name inside the job directory.
pub const PROGRESS_NAME: &str = "progress.json";

impl JobPaths {
    /// The paths of job `id` under `state_dir`.
    pub fn new(state_dir: &Path, id: JobId) -> JobPaths {
        let dir = state_dir.join("jobs").join(id.to_string());
        let trainer = dir.join("trainer");
        JobPaths {
            progress: trainer.join(PROGRESS_NAME),
            checkpoints: trainer.join("checkpoints"),
            trainer,
            stdout: dir.join("stdout.log"),
            stderr: dir.join("stderr.log"),
            dir,
        }
    }
}

/// Why the progress file could not be used this time.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no progress file yet")]
    Missing,
    #[error("progress file refused: {0}")]
    Refused(untrusted::Refused),
    #[error(transparent)]
    Invalid(#[from] ProgressError),
    #[error("progress file not read: {0}")]
    Overrun(#[from] crate::blocking::Overrun),
}

/// Reads and validates the progress file, never more than the size cap (plus one byte to tell). The
/// trainer's directory is the trainer's: anything there but a regular file (a symlink, a FIFO, a
/// device) is refused without being opened or followed (see [`crate::untrusted`]). Blocking: run it
/// through [`read_progress_bounded`] on the runtime.
pub fn read_progress(path: &Path) -> Result<Progress, ReadError> {
    progress_of(untrusted::read_prefix(path, MAX_PROGRESS_BYTES + 1))
}

/// [`read_progress`] of the progress file in `dir`, the trainer's directory held open on a local
/// disk: safe to run inline (see [`untrusted::LocalDir`]), which spares each progress write two thread
/// hand-offs.
pub fn read_progress_in(dir: &untrusted::LocalDir) -> Result<Progress, ReadError> {
    progress_of(dir.read_prefix(PROGRESS_NAME, MAX_PROGRESS_BYTES + 1))
}

/// The progress record in a capped read of the progress file, or why there is none.
fn progress_of(read: Result<Vec<u8>, untrusted::Refused>) -> Result<Progress, ReadError> {
    match read {
        Ok(bytes) => Ok(Progress::parse(&bytes)?),
        Err(untrusted::Refused::Missing(_)) => Err(ReadError::Missing),
        Err(e) => Err(ReadError::Refused(e)),
    }
}

/// [`read_progress`] on the blocking pool, in the job's lane, under [`crate::blocking::FILE_DEADLINE`].
pub async fn read_progress_bounded(lane: &crate::blocking::Lane, path: &Path) -> Result<Progress, ReadError> {
    let path = path.to_path_buf();
    lane.run("reading the progress file", crate::blocking::FILE_DEADLINE, move || read_progress(&path)).await?
}

/// What a trainer is started with beyond its spec.
pub struct Launch<'a> {
    pub id: JobId,
    pub paths: &'a JobPaths,
    pub attempt: u32,
    pub resume_from: Option<&'a Path>,
    /// Arguments appended to the job's command for this attempt (`--resume-arg`).
    pub extra_args: &'a [String],
    pub heartbeat_interval: std::time::Duration,
    /// The assigned GPUs, when this host has a GPU pool (an empty list hides every GPU).
    pub gpus: Option<&'a [u32]>,
    pub stop_grace_ms: u64,
    /// The trainerd-shim executable.
    pub shim: &'a Path,
    /// Whom the trainer runs as (`None`: as trainerd).
    pub run_as: Option<RunAs>,
    /// Rollbacks of the job so far (`TRAINERD_ROLLBACK`).
    pub rollbacks: u32,
    /// Test hook: trainerd aborts right after submitting the attempt to Slurm, before it stores the
    /// Slurm id.
    pub abort_after_submit: bool,
}

/// Readies the job's directories for attempt `launch.attempt`, whatever runs it: the checkpoint
/// directory exists and belongs to the user the trainer runs as, and the previous attempt's progress
/// file is gone, so nothing it wrote is taken for this one's heartbeat. Returns the user to switch to
/// (`None`: the trainer runs as trainerd).
pub fn prepare(spec: &JobSpec, launch: &Launch<'_>) -> std::io::Result<Option<RunAs>> {
    if spec.command.is_empty() {
        return Err(std::io::Error::other("empty command"));
    }
    std::fs::create_dir_all(&launch.paths.checkpoints)?;
    let switch = launch.run_as.filter(|r| r.uid != crate::users::euid());
    if let Some(user) = switch {
        for dir in [&launch.paths.trainer, &launch.paths.checkpoints] {
            std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid))?;
        }
        // The user must pass through `jobs/` and `jobs/<id>/` (trainerd's) to reach `trainer/`,
        // whatever trainerd's umask (the system unit's is 027): search, not read.
        use std::os::unix::fs::PermissionsExt;
        for dir in [launch.paths.dir.as_path(), launch.paths.dir.parent().unwrap_or(&launch.paths.dir)] {
            let mode = std::fs::symlink_metadata(dir)?.permissions().mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode & 0o7777) | 0o011))?;
            }
        }
    }
    match std::fs::remove_file(&launch.paths.progress) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(switch)
}

/// The trainer protocol's environment for attempt `launch.attempt` (docs/trainer-protocol.md), on
/// top of the job's own variables; a trainer run as another user (`switch`) gets that user's HOME,
/// USER and LOGNAME unless its spec sets them.
pub fn trainer_env(spec: &JobSpec, launch: &Launch<'_>, switch: Option<RunAs>, cmd: &mut std::process::Command) {
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(env::JOB_ID, launch.id.to_string())
        .env(env::PROGRESS_FILE, &launch.paths.progress)
        .env(env::CHECKPOINT_DIR, &launch.paths.checkpoints)
        .env(env::ATTEMPT, launch.attempt.to_string())
        .env(env::ROLLBACK, launch.rollbacks.to_string())
        .env(env::HEARTBEAT_INTERVAL, format!("{}", launch.heartbeat_interval.as_secs_f64()))
        .env(env::STOP_GRACE, format!("{}", launch.stop_grace_ms as f64 / 1000.0))
        .env_remove(env::RESUME_FROM);
    if let Some(path) = launch.resume_from {
        cmd.env(env::RESUME_FROM, path);
    }
    // Caches under ~ must be the user's own, not trainerd's. A uid with no account gets its trainer
    // dir as HOME.
    if let Some(run_as) = switch {
        let given = |name: &str| spec.env.iter().any(|(k, _)| k == name);
        let (home, name) = match crate::users::user_by_uid(run_as.uid) {
            Some(user) => (user.home, user.name),
            None => (launch.paths.trainer.clone(), run_as.uid.to_string()),
        };
        for (var, value) in [("HOME", home.as_os_str()), ("USER", name.as_ref()), ("LOGNAME", name.as_ref())] {
            if !given(var) {
                cmd.env(var, value);
            }
        }
    }
}
