//! Where this run writes and what it resumes: the protocol's environment when trainerd started us,
//! else the standalone `--out` directory.

use crate::config::Config;
use crate::TrainError;
use std::path::PathBuf;
use std::time::Duration;
use trainerd_proto::trainer::env;

/// The protocol side of a run.
#[derive(Debug)]
pub struct RunEnv {
    pub progress_file: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub resume_from: Option<PathBuf>,
    pub attempt: u64,
    pub heartbeat: Duration,
    /// How long a stop request leaves before SIGKILL; None when nobody said (standalone).
    pub stop_grace: Option<Duration>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn seconds(name: &str) -> Result<Option<Duration>, TrainError> {
    var(name)
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| TrainError::Config(format!("{name}={v:?} is not a positive number of seconds")))
        })
        .transpose()
}

impl RunEnv {
    /// Reads the protocol variables, falling back to `config.out`.
    pub fn from_env(config: &Config) -> Result<RunEnv, TrainError> {
        let attempt = match var(env::ATTEMPT) {
            None => 1,
            Some(v) => v.parse::<u64>().ok().filter(|a| *a >= 1).ok_or_else(|| {
                TrainError::Config(format!("{}={v:?} is not an attempt number (1, 2, ...)", env::ATTEMPT))
            })?,
        };
        Ok(RunEnv {
            progress_file: var(env::PROGRESS_FILE)
                .map(PathBuf::from)
                .unwrap_or_else(|| config.out.join("progress.json")),
            checkpoint_dir: var(env::CHECKPOINT_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| config.out.join("checkpoints")),
            resume_from: var(env::RESUME_FROM).map(PathBuf::from),
            attempt,
            heartbeat: seconds(env::HEARTBEAT_INTERVAL)?.unwrap_or(Duration::from_secs_f64(config.heartbeat_interval)),
            stop_grace: seconds(env::STOP_GRACE)?,
        })
    }
}
