//! The trainer protocol, version 1: what trainerd gives a training process and what it reads back.
//!
//! `docs/trainer-protocol.md` is the normative text; this module is its Rust form, used by
//! trainer-proc to speak the protocol and by the daemon to understand it. Nothing here performs I/O
//! except [`Progress::write`], so the daemon can apply its own size caps when reading.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The protocol version this crate speaks; written as `protocol` in every progress file.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest progress file a reader accepts. A real one is well under 4 KiB.
pub const MAX_PROGRESS_BYTES: usize = 64 * 1024;

/// The longest heartbeat interval a trainer may promise, in seconds (a day).
pub const MAX_HEARTBEAT_INTERVAL: f64 = 86_400.0;

/// The longest phase a trainer may announce with `phase_timeout_s`, in seconds (a week).
pub const MAX_PHASE_TIMEOUT: f64 = 7.0 * 86_400.0;

/// The environment variables trainerd sets for a trainer.
pub mod env {
    /// The job's id.
    pub const JOB_ID: &str = "TRAINERD_JOB_ID";
    /// Where the trainer writes its progress file (atomically replaced).
    pub const PROGRESS_FILE: &str = "TRAINERD_PROGRESS_FILE";
    /// The directory the trainer writes its checkpoints into.
    pub const CHECKPOINT_DIR: &str = "TRAINERD_CHECKPOINT_DIR";
    /// The checkpoint to resume from; absent on a fresh start.
    pub const RESUME_FROM: &str = "TRAINERD_RESUME_FROM";
    /// The attempt number, 1 on the first start.
    pub const ATTEMPT: &str = "TRAINERD_ATTEMPT";
    /// Seconds between heartbeats that trainerd expects (the trainer may beat more often).
    pub const HEARTBEAT_INTERVAL: &str = "TRAINERD_HEARTBEAT_INTERVAL";
    /// Seconds between SIGTERM and SIGKILL: how long a stop request leaves to checkpoint.
    pub const STOP_GRACE: &str = "TRAINERD_STOP_GRACE";
    /// How many times the divergence guard rolled this job back (0 when it never did): a script may
    /// change its data order or learning rate after a rollback.
    pub const ROLLBACK: &str = "TRAINERD_ROLLBACK";
}

/// Exit codes and what they mean to trainerd.
pub mod exit {
    /// Completed, or paused when the progress file says `paused`.
    pub const OK: i32 = 0;
    /// EX_USAGE: bad flags or arguments. Permanent.
    pub const USAGE: i32 = 64;
    /// EX_DATAERR: the input data or the resume checkpoint cannot be read. Permanent, except that
    /// trainerd retries an attempt that failed with it on its resume checkpoint from the checkpoint
    /// before that one.
    pub const DATA_ERR: i32 = 65;
    /// EX_TEMPFAIL: retryable; restart me from my latest checkpoint. Also the answer to a stop
    /// request (SIGTERM).
    pub const RETRY: i32 = 75;
    /// EX_CONFIG: bad configuration. Permanent.
    pub const CONFIG: i32 = 78;

    /// What an exit code asks of trainerd.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ExitClass {
        /// 0: look at the progress file for completed or paused.
        Success,
        /// 75: restart from the latest checkpoint, within the restart budget.
        Retry,
        /// 64–78 other than 75: fail without restarting.
        Permanent,
        /// Anything else: a crash, restarted within the budget.
        Crash,
    }

    /// Classifies a plain exit code (death by a signal is always [`ExitClass::Crash`], unless
    /// trainerd itself sent the signal, which only trainerd's records can tell).
    pub fn classify(code: i32) -> ExitClass {
        match code {
            OK => ExitClass::Success,
            RETRY => ExitClass::Retry,
            64..=78 => ExitClass::Permanent,
            _ => ExitClass::Crash,
        }
    }
}

/// What the trainer says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainerState {
    /// Loading data, building the model, restoring a checkpoint.
    Starting,
    /// Training steps.
    Running,
    /// Running validation.
    Evaluating,
    /// Writing a checkpoint.
    Checkpointing,
    /// Stopped at an epoch boundary with a checkpoint (after a pause request); exits 0.
    Paused,
    /// Stopped on a stop request (SIGTERM), with a checkpoint when the grace period allowed; exits 75.
    Stopped,
    /// Finished training; exits 0.
    Completed,
    /// Gave up; exits non-zero.
    Failed,
}

/// A checkpoint the trainer has completely written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// The checkpoint's path: what `TRAINERD_RESUME_FROM` is set to when resuming from it.
    pub path: PathBuf,
    /// Optimizer steps completed when it was taken.
    pub step: u64,
    /// The epoch (1-based) that step belongs to.
    pub epoch: u64,
}

/// The progress file: one JSON object, replaced atomically by the trainer.
///
/// Unknown fields are ignored, so a trainer may add its own (`accuracy`, say) without breaking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Always [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// What the trainer is doing.
    pub state: TrainerState,
    /// Optimizer steps completed.
    pub step: u64,
    /// Steps the whole training will take (0 when unknown).
    #[serde(default)]
    pub total_steps: u64,
    /// The current epoch, 1-based (0 before the first).
    #[serde(default)]
    pub epoch: u64,
    /// Epochs the whole training will take (0 when unknown).
    #[serde(default)]
    pub total_epochs: u64,
    /// The latest training loss. JSON has no NaN or infinity: a non-finite loss is written as the
    /// string `"NaN"`, `"Infinity"` or `"-Infinity"` (what a divergence guard must see).
    #[serde(default, with = "loss_value")]
    pub loss: Option<f64>,
    /// The latest validation loss (non-finite as for `loss`).
    #[serde(default, with = "loss_value")]
    pub val_loss: Option<f64>,
    /// The current learning rate.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Training throughput over the last reporting interval.
    #[serde(default)]
    pub samples_per_sec: Option<f64>,
    /// Incremented on every write, heartbeat or not.
    pub heartbeat_seq: u64,
    /// Seconds between heartbeats the trainer promises (trainerd's stall ladder starts at twice it).
    #[serde(default)]
    pub heartbeat_interval: Option<f64>,
    /// When the file was written, in Unix seconds.
    pub updated_at: f64,
    /// The newest complete checkpoint, if any.
    #[serde(default)]
    pub latest_checkpoint: Option<CheckpointRef>,
    /// A human-readable line: what is happening, or why it failed.
    #[serde(default)]
    pub message: Option<String>,
    /// On completion: the SHA-256 of the final weights, so two runs can be compared.
    #[serde(default)]
    pub weights_sha256: Option<String>,
    /// Seconds the current phase (`evaluating`, `checkpointing`, ...) may take before a step must
    /// advance again, when the job has a progress deadline; without it the phase gets the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_timeout_s: Option<f64>,
    /// Any other named scalars (accuracy, grad_norm, tokens_per_sec, ...), kept in the job's metric
    /// history with loss, val_loss, lr and samples_per_sec. Names of `[A-Za-z0-9_./-]`, at most 64
    /// bytes; non-finite values as for `loss`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty", with = "metric_values")]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// The `metrics` object: values as for a loss (a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`).
mod metric_values {
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    #[derive(serde::Serialize)]
    struct Value(#[serde(with = "super::loss_value")] Option<f64>);

    #[derive(Deserialize)]
    struct Read(#[serde(with = "super::loss_value")] Option<f64>);

    pub fn serialize<S: Serializer>(values: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(values.len()))?;
        for (name, value) in values {
            map.serialize_entry(name, &Value(Some(*value)))?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let read = BTreeMap::<String, Read>::deserialize(d)?;
        Ok(read.into_iter().filter_map(|(name, Read(value))| Some((name, value?))).collect())
    }
}

/// A loss as JSON: a number, or for a non-finite one the string `"NaN"`, `"Infinity"` or
/// `"-Infinity"` (JSON numbers cannot be non-finite; Python's `json` writes bare `NaN`, which is not
/// JSON, and serde_json writes `null`, which loses the fact).
mod loss_value {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(v) if v.is_nan() => s.serialize_str("NaN"),
            Some(v) if v.is_infinite() && *v > 0.0 => s.serialize_str("Infinity"),
            Some(v) if v.is_infinite() => s.serialize_str("-Infinity"),
            Some(v) => s.serialize_f64(*v),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Number(f64),
        Word(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Wire>::deserialize(d)? {
            None => Ok(None),
            Some(Wire::Number(v)) => Ok(Some(v)),
            Some(Wire::Word(w)) => match w.as_str() {
                "NaN" => Ok(Some(f64::NAN)),
                "Infinity" => Ok(Some(f64::INFINITY)),
                "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
                other => Err(serde::de::Error::custom(format!(
                    "a loss is a number, null, or \"NaN\", \"Infinity\" or \"-Infinity\", not {other:?}"
                ))),
            },
        }
    }
}

/// Why a progress file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// Larger than [`MAX_PROGRESS_BYTES`].
    #[error("progress file is {0} bytes, over the {MAX_PROGRESS_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not a valid progress object (truncated, malformed, missing fields, wrong field types).
    #[error("progress file is not a valid protocol v1 object: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written for another protocol version.
    #[error("progress file speaks protocol {0}, trainerd speaks {PROTOCOL_VERSION}")]
    Version(u32),
    /// Well-formed, but a value is out of its range.
    #[error("progress file has {0}")]
    OutOfRange(String),
}

impl Progress {
    /// A fresh `starting` record at step 0.
    pub fn starting(now: f64) -> Self {
        Progress {
            protocol: PROTOCOL_VERSION,
            state: TrainerState::Starting,
            step: 0,
            total_steps: 0,
            epoch: 0,
            total_epochs: 0,
            loss: None,
            val_loss: None,
            lr: None,
            samples_per_sec: None,
            heartbeat_seq: 0,
            heartbeat_interval: None,
            updated_at: now,
            latest_checkpoint: None,
            message: None,
            weights_sha256: None,
            phase_timeout_s: None,
            metrics: Default::default(),
        }
    }

    /// Parses and validates a progress file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProgressError> {
        if bytes.len() > MAX_PROGRESS_BYTES {
            return Err(ProgressError::TooLarge(bytes.len()));
        }
        let p: Progress = serde_json::from_slice(bytes)?;
        if p.protocol != PROTOCOL_VERSION {
            return Err(ProgressError::Version(p.protocol));
        }
        if let Some(i) = p.heartbeat_interval {
            if i.is_nan() || i <= 0.0 || i > MAX_HEARTBEAT_INTERVAL {
                return Err(ProgressError::OutOfRange(format!(
                    "heartbeat_interval {i:?}; give seconds above 0 and at most {MAX_HEARTBEAT_INTERVAL}"
                )));
            }
        }
        if let Some(t) = p.phase_timeout_s {
            if t.is_nan() || t <= 0.0 || t > MAX_PHASE_TIMEOUT {
                return Err(ProgressError::OutOfRange(format!(
                    "phase_timeout_s {t:?}; give seconds above 0 and at most {MAX_PHASE_TIMEOUT}"
                )));
            }
        }
        if p.updated_at.is_nan() || p.updated_at < 0.0 {
            return Err(ProgressError::OutOfRange(format!("updated_at {:?}; give Unix seconds", p.updated_at)));
        }
        Ok(p)
    }

    /// Writes the record atomically to `path` (see [`crate::atomic::write_atomic`]).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::atomic::write_atomic(path, &bytes)
    }

    /// Replaces the progress file at `path` atomically for readers but without fsync
    /// ([`crate::atomic::replace`]): for a heartbeat that changes no state and names no new
    /// checkpoint, where losing the write to a power cut loses nothing.
    pub fn write_unsynced(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::atomic::replace(path, &bytes)
    }
}

/// The current time in Unix seconds, as `updated_at` wants it.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_record_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.json");
        let mut p = Progress::starting(1.5);
        p.state = TrainerState::Paused;
        p.latest_checkpoint = Some(CheckpointRef { path: "/c/step-10".into(), step: 10, epoch: 1 });
        p.write(&path).unwrap();
        assert_eq!(Progress::parse(&std::fs::read(&path).unwrap()).unwrap(), p);
    }

    #[test]
    fn the_minimal_python_record_parses() {
        let p = Progress::parse(br#"{"protocol":1,"state":"running","step":3,"heartbeat_seq":7,"updated_at":1.0}"#)
            .unwrap();
        assert_eq!((p.state, p.step, p.latest_checkpoint), (TrainerState::Running, 3, None));
    }

    #[test]
    fn bad_records_are_rejected_with_the_reason() {
        let ok = br#"{"protocol":1,"state":"running","step":3,"heartbeat_seq":7,"updated_at":1.0}"#;
        assert!(matches!(Progress::parse(&ok[..ok.len() - 5]), Err(ProgressError::Malformed(_))));
        assert!(matches!(Progress::parse(b""), Err(ProgressError::Malformed(_))));
        let v2 = br#"{"protocol":2,"state":"running","step":3,"heartbeat_seq":7,"updated_at":1.0}"#;
        assert!(matches!(Progress::parse(v2), Err(ProgressError::Version(2))));
        let state = br#"{"protocol":1,"state":"dancing","step":3,"heartbeat_seq":7,"updated_at":1.0}"#;
        assert!(matches!(Progress::parse(state), Err(ProgressError::Malformed(_))));
        let wrong_type = br#"{"protocol":1,"state":"running","step":"3","heartbeat_seq":7,"updated_at":1.0}"#;
        assert!(matches!(Progress::parse(wrong_type), Err(ProgressError::Malformed(_))));
        let extra = br#"{"protocol":1,"state":"running","step":3,"heartbeat_seq":7,"updated_at":1.0,"acc":1}"#;
        assert!(Progress::parse(extra).is_ok(), "a trainer's own fields are ignored");
        let big = vec![b' '; MAX_PROGRESS_BYTES + 1];
        assert!(matches!(Progress::parse(&big), Err(ProgressError::TooLarge(_))));
    }

    #[test]
    fn exit_codes_classify_as_the_protocol_says() {
        use exit::*;
        assert_eq!(classify(0), ExitClass::Success);
        assert_eq!(classify(75), ExitClass::Retry);
        for code in [64, 65, 74, 76, 78] {
            assert_eq!(classify(code), ExitClass::Permanent, "{code}");
        }
        for code in [1, 2, 63, 79, 137, -1] {
            assert_eq!(classify(code), ExitClass::Crash, "{code}");
        }
    }
}
