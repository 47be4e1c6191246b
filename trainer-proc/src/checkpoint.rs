//! Checkpoints: a directory `step-NNNNNNNNNNNN` holding `model.safetensors`, `optimizer.safetensors`
//! and `state.json`. Written under a hidden temporary name, fsynced, then renamed into place, so a
//! checkpoint directory with a step name is always complete.

use crate::optim::{AdamW, AdamWConfig};
use crate::TrainError;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use tch::{nn, Tensor};
use trainerd_proto::atomic::{self, sync_dir};

/// The version of `state.json`'s layout.
pub const FORMAT: u32 = 1;

/// Everything besides tensors that decides how training continues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Always [`FORMAT`].
    pub format: u32,
    /// Optimizer steps completed; also the LR schedule's position and, with the seed, the data
    /// position (epoch = step / steps_per_epoch, batch = step % steps_per_epoch).
    pub step: u64,
    /// The seed of the data order: epoch e's order is `data::permutation(n, seed, e)`.
    pub data_seed: u64,
    /// AdamW's hyper-parameters and its step count (the bias-correction exponent).
    pub optimizer: AdamWConfig,
    pub optimizer_t: u64,
    /// The LR schedule: peak, warm-up and total steps (its position is `step`).
    pub lr_peak: f64,
    pub lr_warmup_steps: u64,
    pub lr_total_steps: u64,
    /// Early stopping: the best validation loss so far, its epoch and checkpoint, and the epochs since.
    pub best_val_loss: Option<f64>,
    pub best_epoch: u64,
    pub best_checkpoint: Option<PathBuf>,
    pub bad_epochs: u64,
    /// Set once early stopping fired: a resumed run completes at once.
    pub stopped_early: bool,
    /// The latest validation loss.
    pub last_val_loss: Option<f64>,
    /// The settings that decide the numbers; a resume with other settings is refused.
    pub fingerprint: serde_json::Value,
}

/// The name of the checkpoint taken after `step` steps.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:012}")
}

/// Writes a checkpoint of the model, the optimizer and `state` into `root`; returns its path.
pub fn save(root: &Path, vs: &nn::VarStore, opt: &AdamW, state: &TrainState) -> Result<PathBuf, TrainError> {
    let io = |what: &str, e: &dyn std::fmt::Display| TrainError::Io(format!("checkpoint {what}: {e}"));
    fs::create_dir_all(root).map_err(|e| io("directory", &e))?;
    let final_path = root.join(dir_name(state.step));
    let tmp = root.join(atomic::temp_name(&final_path));
    let write = || -> Result<(), TrainError> {
        fs::create_dir(&tmp).map_err(|e| io("directory", &e))?;
        let mut model: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        model.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&model, tmp.join("model.safetensors")).map_err(|e| io("model", &e))?;
        let moments: Vec<(String, &Tensor)> =
            opt.slots.iter().flat_map(|(name, _, m, v)| [(format!("m.{name}"), m), (format!("v.{name}"), v)]).collect();
        Tensor::write_safetensors(&moments, tmp.join("optimizer.safetensors")).map_err(|e| io("optimizer", &e))?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| io("state", &e))?;
        fs::write(tmp.join("state.json"), json).map_err(|e| io("state", &e))?;
        for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            fs::File::open(tmp.join(file)).and_then(|f| f.sync_all()).map_err(|e| io("fsync", &e))?;
        }
        sync_dir(&tmp).map_err(|e| io("fsync", &e))?;
        if final_path.exists() {
            // A run re-taking a checkpoint at the same step: the old one leaves whole, the new one
            // arrives whole.
            discard(&final_path).map_err(|e| io("replace", &e))?;
        }
        fs::rename(&tmp, &final_path).map_err(|e| io("rename", &e))?;
        sync_dir(root).map_err(|e| io("fsync", &e))
    };
    let result = write();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|()| final_path)
}

/// Restores the model and the optimizer from the checkpoint at `path` and returns its state.
/// Any unreadable or mismatched part is a [`TrainError::Data`] naming it.
pub fn load(path: &Path, vs: &nn::VarStore, opt: &mut AdamW) -> Result<TrainState, TrainError> {
    let bad = |what: String| TrainError::Data(format!("cannot resume from {}: {what}", path.display()));
    let text = fs::read(path.join("state.json")).map_err(|e| bad(format!("state.json: {e}")))?;
    let state: TrainState = serde_json::from_slice(&text).map_err(|e| bad(format!("state.json: {e}")))?;
    if state.format != FORMAT {
        return Err(bad(format!("state.json format {} (this trainer reads {FORMAT})", state.format)));
    }
    let model = read_tensors(&path.join("model.safetensors")).map_err(&bad)?;
    let moments = read_tensors(&path.join("optimizer.safetensors")).map_err(&bad)?;
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &mut vars {
        copy_named(&model, name, var).map_err(&bad)?;
    }
    for (name, _, m, v) in &mut opt.slots {
        copy_named(&moments, &format!("m.{name}"), m).map_err(&bad)?;
        copy_named(&moments, &format!("v.{name}"), v).map_err(&bad)?;
    }
    opt.t = state.optimizer_t;
    opt.config = state.optimizer;
    Ok(state)
}

fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    Tensor::read_safetensors(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn copy_named(from: &[(String, Tensor)], name: &str, into: &mut Tensor) -> Result<(), String> {
    let (_, t) = from.iter().find(|(n, _)| n == name).ok_or_else(|| format!("tensor {name} is missing"))?;
    if t.size() != into.size() {
        return Err(format!("tensor {name} has shape {:?}, the model wants {:?}", t.size(), into.size()));
    }
    tch::no_grad(|| into.f_copy_(t)).map_err(|e| format!("tensor {name}: {e}"))
}

/// Deletes all but the newest `keep_last` checkpoints in `root`, never the one named `keep_also`
/// (the best). Hidden temporary directories left by a crash are removed too.
pub fn prune(root: &Path, keep_last: u64, keep_also: Option<&Path>) -> std::io::Result<()> {
    let mut steps = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            let _ = fs::remove_dir_all(entry.path());
        } else if name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()).is_some() {
            steps.push(entry.path());
        }
    }
    steps.sort();
    let excess = steps.len().saturating_sub(keep_last as usize);
    for path in &steps[..excess] {
        if Some(path.as_path()) != keep_also {
            discard(path)?;
        }
    }
    Ok(())
}

/// Removes a checkpoint without ever leaving a partial one under a step name: it is first renamed to
/// a hidden temporary name (atomic), then deleted. A crash in between leaves a `.tmp-` directory
/// that the next [`prune`] removes.
fn discard(path: &Path) -> std::io::Result<()> {
    let doomed = atomic::parent_dir(path).join(atomic::temp_name(path));
    fs::rename(path, &doomed)?;
    fs::remove_dir_all(&doomed)
}
