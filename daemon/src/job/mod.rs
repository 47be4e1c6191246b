//! One job's runtime: its directory, the trainer process it starts, and the actor that owns both.
//!
//! - [`actor`]: the JobActor (one per active job), child of the Supervisor.
//! - [`executor`]: where an attempt runs (this host under a shim, or a Slurm job), behind one interface.
//! - [`watch`]: the progress-directory watcher that wakes the actor.
//! - [`hooks`]: fault injection for the tests (`--test-hooks` only).
//! - [`checkpoints`]: which checkpoint an attempt resumes from (recorded, or found in the directory).
//! - [`resume`]: resuming an unchanged script from a glob of its own checkpoints (`--resume-arg`).
//! - [`output`]: progress from output lines (`--progress-regex`).
//! - [`stall`]: the stall clock, a pure verdict from the job's limits and its last signs of life.

pub mod actor;
pub mod checkpoints;
pub mod executor;
pub mod guard;
pub mod hooks;
pub mod output;
pub mod resume;
pub mod stall;
pub mod watch;

use crate::store::records::{JobId, JobSpec, RunAs};
use crate::untrusted;
use std::io::Read;
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
    match untrusted::read_prefix(path, MAX_PROGRESS_BYTES + 1) {
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

/// Makes the job's log paths usable again when something other than a regular file (a FIFO, a link,
/// a socket a trainer put there) took their place: the logs are trainerd's, so whatever is there is
/// removed, and the next attempt's logs start afresh. Returns one line per path reclaimed.
pub fn reclaim_logs(paths: &JobPaths) -> Vec<String> {
    let mut reclaimed = Vec::new();
    for path in [&paths.stdout, &paths.stderr] {
        match untrusted::kind(path) {
            Ok(untrusted::Kind::Regular) | Err(untrusted::Refused::Missing(_)) => {}
            Ok(kind) => {
                let removed = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
                reclaimed.push(match removed {
                    Ok(()) => format!("{} was {}, not a log; removed, a new log begins", path.display(), kind.words()),
                    Err(e) => format!("{} is {}, not a log, and cannot be removed: {e}", path.display(), kind.words()),
                });
            }
            Err(e) => reclaimed.push(e.to_string()),
        }
    }
    reclaimed
}

/// Keeps a log file under `cap` bytes by copy-truncate: the newest half of its content moves to
/// `NAME.1` (replacing the older rotation) and the file is truncated. The trainer writes with
/// O_APPEND, so its next write lands at the new end. Returns whether it rotated.
pub fn cap_log(path: &Path, cap: u64) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let len = match std::fs::symlink_metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= cap {
        return Ok(false);
    }
    let keep = cap / 2;
    let mut file = untrusted::open_read_write(path).map_err(std::io::Error::other)?;
    file.seek(SeekFrom::Start(len - keep))?;
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    // Replaced, never opened as found: whatever is at NAME.1 (a FIFO, a link) is removed first, and
    // a new regular file created exclusively.
    match std::fs::remove_file(&rotated) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&rotated)?
    };
    std::io::copy(&mut (&mut file).take(keep), &mut out)?;
    file.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_over_its_cap_keeps_its_newest_half_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut writer = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        writer.write_all(&[b'a'; 600]).unwrap();
        writer.write_all(&[b'b'; 600]).unwrap();
        assert!(!cap_log(&path, 2000).unwrap());
        assert!(cap_log(&path, 1000).unwrap());
        assert_eq!(std::fs::read(dir.path().join("stdout.log.1")).unwrap(), vec![b'b'; 500]);
        writer.write_all(b"next").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"next", "an O_APPEND writer continues at the new end");
    }
}
