//! trainer-proc's settings: one definition serves as the command-line flags and as the TOML file's
//! keys, so the two can never drift apart. Flags win over the file; defaults fill the rest.

use clap::Parser;
use serde::Deserialize;
use std::path::PathBuf;

/// Where the training data comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum DataSource {
    /// A classification set generated deterministically from the seed.
    Synthetic,
    /// A CSV file: numeric feature columns, the last column an integer class label.
    Csv(PathBuf),
}

/// Which device to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA; an error when no GPU is usable.
    Cuda,
}

/// The flags, and (the same names) the keys of the optional TOML file.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "trainer-proc",
    version,
    about = "The reference trainer of trainerd: an MLP classifier \
trained with AdamW, speaking the trainer protocol v1 (docs/trainer-protocol.md)"
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// A TOML file with any of these settings (kebab-case keys); flags win over it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Epochs to train [default: 10].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Optimizer steps per epoch [default: 100].
    #[arg(long)]
    pub steps_per_epoch: Option<u64>,
    /// Samples per step [default: 64].
    #[arg(long)]
    pub batch_size: Option<u64>,
    /// Peak learning rate [default: 0.003].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warm-up steps before the cosine decay [default: a tenth of all steps, at most 100].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// AdamW decoupled weight decay [default: 0.05].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Hidden layer sizes, comma-separated [default: 64,64].
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<i64>>,
    /// Seed of the data, the initial weights and the data order [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// `synthetic`, or `csv:PATH` (numeric columns, the last an integer label) [default: synthetic].
    #[arg(long)]
    pub data: Option<String>,
    /// Synthetic data: training samples [default: 16384].
    #[arg(long)]
    pub train_samples: Option<u64>,
    /// Synthetic data: validation samples [default: 1024].
    #[arg(long)]
    pub val_samples: Option<u64>,
    /// Synthetic data: input features [default: 32].
    #[arg(long)]
    pub features: Option<u64>,
    /// Synthetic data: classes [default: 4].
    #[arg(long)]
    pub classes: Option<u64>,
    /// Epochs without a better validation loss before stopping early; 0 never stops early [default: 5].
    #[arg(long)]
    pub patience: Option<u64>,
    /// Write a checkpoint every this many steps, besides one at every epoch's end; 0 only at epoch ends
    /// [default: 50].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints to keep, besides the best one [default: 3].
    #[arg(long)]
    pub keep_last: Option<u64>,
    /// auto, cpu or cuda [default: auto].
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    /// CPU threads for libtorch; 0 lets libtorch choose [default: 1].
    #[arg(long)]
    pub threads: Option<i32>,
    /// Standalone output directory for the progress file and checkpoints, used unless trainerd's
    /// TRAINERD_PROGRESS_FILE and TRAINERD_CHECKPOINT_DIR say otherwise [default: trainer-out].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds between heartbeats; TRAINERD_HEARTBEAT_INTERVAL wins when set [default: 5].
    #[arg(long)]
    pub heartbeat_interval: Option<f64>,
    /// Least seconds between progress writes while training [default: 0.5].
    #[arg(long)]
    pub progress_every: Option<f64>,
}

/// The validated settings a run uses.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub epochs: u64,
    pub steps_per_epoch: u64,
    pub batch_size: u64,
    pub lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub hidden: Vec<i64>,
    pub seed: u64,
    pub data: DataSource,
    pub train_samples: u64,
    pub val_samples: u64,
    pub features: u64,
    pub classes: u64,
    pub patience: u64,
    pub checkpoint_every: u64,
    pub keep_last: u64,
    pub device: DeviceChoice,
    pub threads: i32,
    pub out: PathBuf,
    pub heartbeat_interval: f64,
    pub progress_every: f64,
}

/// A setting that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{0}")]
    Invalid(String),
}

macro_rules! prefer_flags {
    ($flags:ident, $file:ident, $($field:ident),*) => {
        Settings { config: $flags.config, $($field: $flags.$field.or($file.$field)),* }
    };
}

impl Settings {
    /// Merges the TOML file named by `--config` (if any) under the flags.
    pub fn with_file(self) -> Result<Settings, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let file: Settings = toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })?;
        let flags = self;
        Ok(prefer_flags!(
            flags,
            file,
            epochs,
            steps_per_epoch,
            batch_size,
            lr,
            warmup_steps,
            weight_decay,
            hidden,
            seed,
            data,
            train_samples,
            val_samples,
            features,
            classes,
            patience,
            checkpoint_every,
            keep_last,
            device,
            threads,
            out,
            heartbeat_interval,
            progress_every
        ))
    }

    /// Applies the defaults and checks every value.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let epochs = self.epochs.unwrap_or(10);
        let steps_per_epoch = self.steps_per_epoch.unwrap_or(100);
        let total = epochs.saturating_mul(steps_per_epoch);
        let data = match self.data.as_deref() {
            None | Some("synthetic") => DataSource::Synthetic,
            Some(s) => match s.strip_prefix("csv:") {
                Some(path) if !path.is_empty() => DataSource::Csv(PathBuf::from(path)),
                _ => return invalid(format!("--data {s:?}: expected `synthetic` or `csv:PATH`")),
            },
        };
        let config = Config {
            epochs,
            steps_per_epoch,
            batch_size: self.batch_size.unwrap_or(64),
            lr: self.lr.unwrap_or(3e-3),
            warmup_steps: self.warmup_steps.unwrap_or((total / 10).min(100)),
            weight_decay: self.weight_decay.unwrap_or(0.05),
            hidden: self.hidden.unwrap_or_else(|| vec![64, 64]),
            seed: self.seed.unwrap_or(1),
            data,
            train_samples: self.train_samples.unwrap_or(16384),
            val_samples: self.val_samples.unwrap_or(1024),
            features: self.features.unwrap_or(32),
            classes: self.classes.unwrap_or(4),
            patience: self.patience.unwrap_or(5),
            checkpoint_every: self.checkpoint_every.unwrap_or(50),
            keep_last: self.keep_last.unwrap_or(3),
            device: self.device.unwrap_or(DeviceChoice::Auto),
            threads: self.threads.unwrap_or(1),
            out: self.out.unwrap_or_else(|| PathBuf::from("trainer-out")),
            heartbeat_interval: self.heartbeat_interval.unwrap_or(5.0),
            progress_every: self.progress_every.unwrap_or(0.5),
        };
        config.validate()?;
        Ok(config)
    }
}

fn invalid<T>(message: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message))
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("epochs", self.epochs),
            ("steps-per-epoch", self.steps_per_epoch),
            ("batch-size", self.batch_size),
            ("train-samples", self.train_samples),
            ("val-samples", self.val_samples),
            ("features", self.features),
            ("keep-last", self.keep_last),
        ];
        for (name, value) in positive {
            if value == 0 {
                return invalid(format!("--{name} must be at least 1"));
            }
        }
        if self.classes < 2 {
            return invalid("--classes must be at least 2".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return invalid(format!("--lr must be a positive number, not {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return invalid(format!("--weight-decay must be zero or positive, not {}", self.weight_decay));
        }
        if self.hidden.is_empty() || self.hidden.iter().any(|h| *h < 1) {
            return invalid("--hidden must list one or more positive sizes, like 128,128".into());
        }
        for (name, value) in [("heartbeat-interval", self.heartbeat_interval), ("progress-every", self.progress_every)]
        {
            if !(value.is_finite() && value > 0.0) {
                return invalid(format!("--{name} must be a positive number of seconds, not {value}"));
            }
        }
        if self.threads < 0 {
            return invalid("--threads must be 0 (libtorch decides) or more".into());
        }
        Ok(())
    }

    /// Every optimizer step of the whole run.
    pub fn total_steps(&self) -> u64 {
        self.epochs * self.steps_per_epoch
    }

    /// The settings that decide the numbers a run produces. A checkpoint may only be resumed by a run
    /// whose fingerprint is the same; the others (device aside) change only speed and bookkeeping.
    pub fn fingerprint(&self) -> serde_json::Value {
        serde_json::json!({
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay,
            "hidden": self.hidden,
            "seed": self.seed,
            "data": self.data,
            "train_samples": self.train_samples,
            "val_samples": self.val_samples,
            "features": self.features,
            "classes": self.classes,
            "patience": self.patience,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Settings {
        Settings::try_parse_from(std::iter::once("trainer-proc").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "epochs = 7\nlr = 0.5\nhidden = [8, 4]\n").unwrap();
        let config =
            parse(&["--config", file.to_str().unwrap(), "--lr", "0.1"]).with_file().unwrap().resolve().unwrap();
        assert_eq!((config.epochs, config.lr, config.hidden.clone()), (7, 0.1, vec![8, 4]));
        assert_eq!(config.batch_size, 64);
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "epoch = 7\n").unwrap();
        let err = parse(&["--config", file.to_str().unwrap()]).with_file().unwrap_err().to_string();
        assert!(err.contains("unknown field `epoch`"), "{err}");
        let err = parse(&["--epochs", "0"]).resolve().unwrap_err().to_string();
        assert_eq!(err, "--epochs must be at least 1");
        let err = parse(&["--data", "parquet:x"]).resolve().unwrap_err().to_string();
        assert!(err.contains("expected `synthetic` or `csv:PATH`"), "{err}");
    }
}
