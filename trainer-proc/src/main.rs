//! trainer-proc: the reference trainer of trainerd. A real tch training loop (an MLP classifier,
//! AdamW over tensors, cosine LR with warm-up, validation every epoch, early stopping) that speaks
//! the trainer protocol v1 (`docs/trainer-protocol.md`) and resumes bit-exactly from its checkpoints.

mod checkpoint;
mod config;
mod data;
mod faults;
mod model;
mod optim;
mod reporter;
mod run_env;
mod signals;
mod train;

use clap::Parser;
use trainerd_proto::trainer::exit;

/// Why a run ended without completing, and so which exit code it ends with.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad settings: EX_CONFIG (78), permanent.
    #[error("{0}")]
    Config(String),
    /// Unreadable data or resume checkpoint: EX_DATAERR (65).
    #[error("{0}")]
    Data(String),
    /// A file could not be written (disk full, say): EX_TEMPFAIL (75), retry from the checkpoint.
    #[error("{0}")]
    Io(String),
    /// libtorch failed (a CUDA error, say): exit 1, a crash.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl TrainError {
    fn exit_code(&self) -> i32 {
        match self {
            TrainError::Config(_) => exit::CONFIG,
            TrainError::Data(_) => exit::DATA_ERR,
            TrainError::Io(_) => exit::RETRY,
            TrainError::Torch(_) => 1,
        }
    }
}

fn main() {
    let settings = match config::Settings::try_parse() {
        Ok(settings) => settings,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    let code = match train::run(settings) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trainer-proc: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
