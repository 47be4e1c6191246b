//! The training loop and its protocol duties: progress at every step, checkpoints at the configured
//! steps and at every epoch's end, a pause at the epoch's end on SIGUSR1, a stop at the next step on
//! SIGTERM, and the exit code the protocol prescribes for each outcome.

use crate::checkpoint::{self, TrainState};
use crate::config::{Config, DeviceChoice, Settings};
use crate::data::{batch_indices, permutation, Dataset};
use crate::faults::{self, Fault};
use crate::model::{weights_sha256, Mlp};
use crate::optim::{cosine_lr, AdamW, AdamWConfig};
use crate::reporter::Reporter;
use crate::run_env::RunEnv;
use crate::signals::Requests;
use crate::TrainError;
use std::time::{Duration, Instant};
use tch::{nn, nn::Module, Device, Tensor};
use trainerd_proto::trainer::{exit, unix_now, CheckpointRef, Progress, TrainerState};

/// Runs one attempt and returns the exit code. Errors have already been written to the progress file
/// as `failed` when this returns them.
pub fn run(settings: Settings) -> Result<i32, TrainError> {
    let config = settings.with_file().and_then(Settings::resolve).map_err(|e| TrainError::Config(e.to_string()))?;
    let env = RunEnv::from_env(&config)?;
    let fault = faults::from_env(env.attempt)?;
    let requests = Requests::install().map_err(|e| TrainError::Io(format!("cannot install signal handlers: {e}")))?;
    for dir in [trainerd_proto::atomic::parent_dir(&env.progress_file), env.checkpoint_dir.as_path()] {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut initial = Progress::starting(unix_now());
    initial.total_steps = config.total_steps();
    initial.total_epochs = config.epochs;
    initial.heartbeat_interval = Some(env.heartbeat.as_secs_f64());
    let reporter = Reporter::start(
        env.progress_file.clone(),
        env.heartbeat,
        Duration::from_secs_f64(config.progress_every),
        initial,
    )
    .map_err(|e| TrainError::Io(format!("cannot write progress file {}: {e}", env.progress_file.display())))?;
    let result = Trainer::build(&config, &env, &reporter, fault).and_then(|mut t| t.train(&requests));
    if let Err(e) = &result {
        let _ = reporter.update_now(|p| {
            p.state = TrainerState::Failed;
            p.message = Some(e.to_string());
        });
    }
    result
}

struct Trainer<'a> {
    config: &'a Config,
    env: &'a RunEnv,
    reporter: &'a Reporter,
    fault: Option<Fault>,
    device: Device,
    data: Dataset,
    vs: nn::VarStore,
    model: Mlp,
    opt: AdamW,
    state: TrainState,
    latest: Option<CheckpointRef>,
    checkpoint_time: Option<Duration>,
    /// Checkpoints saved by this attempt and the time they took, for the final statistics line.
    checkpoints: (u32, Duration),
    /// How long loading the resume checkpoint took.
    restore_time: Option<Duration>,
    /// The step this attempt started from.
    first_step: u64,
    started: Instant,
}

fn pick_device(choice: DeviceChoice) -> Result<Device, TrainError> {
    match choice {
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(TrainError::Config(
            "--device cuda: no usable CUDA device (libtorch sees none); use --device auto or cpu".into(),
        )),
    }
}

impl<'a> Trainer<'a> {
    fn build(
        config: &'a Config,
        env: &'a RunEnv,
        reporter: &'a Reporter,
        fault: Option<Fault>,
    ) -> Result<Self, TrainError> {
        let started = Instant::now();
        if config.threads > 0 {
            tch::set_num_threads(config.threads);
        }
        let device = pick_device(config.device)?;
        let data = Dataset::load(config, device)?;
        tch::manual_seed(config.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = Mlp::new(&vs.root(), data.features, &config.hidden, data.classes);
        let mut opt =
            AdamW::new(&vs, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: config.weight_decay });
        let mut restore_time = None;
        let (state, latest) = match &env.resume_from {
            None => (fresh_state(config, opt.config), None),
            Some(path) => {
                let loading = Instant::now();
                let state = checkpoint::load(path, &vs, &mut opt)?;
                restore_time = Some(loading.elapsed());
                check_fingerprint(&state.fingerprint, &config.fingerprint(), path)?;
                let latest =
                    CheckpointRef { path: path.clone(), step: state.step, epoch: epoch_of(state.step, config) };
                (state, Some(latest))
            }
        };
        println!(
            "trainer-proc: {} on {device:?}, {} train / {} val samples, {} epochs of {} steps{}",
            if latest.is_some() { "resuming" } else { "training" },
            data.train_len(),
            data.val_x.size()[0],
            config.epochs,
            config.steps_per_epoch,
            latest.as_ref().map(|c| format!(", from step {} ({})", c.step, c.path.display())).unwrap_or_default(),
        );
        let first_step = state.step;
        Ok(Trainer {
            config,
            env,
            reporter,
            fault,
            device,
            data,
            vs,
            model,
            opt,
            state,
            latest,
            checkpoint_time: None,
            checkpoints: (0, Duration::ZERO),
            restore_time,
            first_step,
            started,
        })
    }

    fn train(&mut self, requests: &Requests) -> Result<i32, TrainError> {
        let (spe, total, bs) = (self.config.steps_per_epoch, self.config.total_steps(), self.config.batch_size);
        let step = self.state.step;
        let latest = self.latest.clone();
        self.report_now(|p| {
            p.state = TrainerState::Running;
            p.step = step;
            p.epoch = epoch_of(step, self.config);
            p.latest_checkpoint = latest;
        })?;
        let mut window = (Instant::now(), 0u64);
        while self.state.step < total && !self.state.stopped_early {
            let epoch_index = self.state.step / spe;
            let epoch = epoch_index + 1;
            let order = permutation(self.data.train_len() as usize, self.state.data_seed, epoch_index);
            for batch in self.state.step % spe..spe {
                let loss = self.step(&order, batch);
                window.1 += bs;
                let rate = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                if window.0.elapsed() > Duration::from_secs(2) {
                    window = (Instant::now(), 0);
                }
                let (step, lr) =
                    (self.state.step, cosine_lr(self.state.step, self.config.lr, self.config.warmup_steps, total));
                let loss = faults::reported_loss(self.fault, step, loss);
                self.reporter.update(|p| {
                    p.state = TrainerState::Running;
                    p.step = step;
                    p.epoch = epoch;
                    p.loss = Some(loss);
                    p.lr = Some(lr);
                    p.samples_per_sec = Some(rate);
                });
                if let Some(code) = self.inject_fault(step)? {
                    return Ok(code);
                }
                if requests.stop() {
                    return self.stop();
                }
                let every = self.config.checkpoint_every;
                if every > 0 && step % every == 0 && batch + 1 < spe {
                    self.checkpoint()?;
                }
            }
            self.end_epoch(epoch, requests)?;
            if self.state.step >= total || self.state.stopped_early {
                break;
            }
            if requests.stop() {
                return self.stop();
            }
            if requests.pause() {
                return self.pause();
            }
        }
        self.complete()
    }

    /// One optimizer step on batch `batch` of the epoch ordered by `order`; returns the loss.
    fn step(&mut self, order: &[usize], batch: u64) -> f64 {
        let idx = Tensor::from_slice(&batch_indices(order, batch, self.config.batch_size)).to_device(self.device);
        let x = self.data.train_x.index_select(0, &idx);
        let y = self.data.train_y.index_select(0, &idx);
        let lr = cosine_lr(self.state.step, self.config.lr, self.config.warmup_steps, self.config.total_steps());
        self.opt.zero_grad();
        let loss = self.model.forward(&x).cross_entropy_for_logits(&y);
        loss.backward();
        self.opt.step(lr);
        self.state.step += 1;
        self.state.optimizer_t = self.opt.t;
        loss.double_value(&[])
    }

    fn inject_fault(&self, step: u64) -> Result<Option<i32>, TrainError> {
        match self.fault {
            Some(Fault::Crash { step: at }) if at == step => {
                eprintln!("trainer-proc: fault injected: crash at step {step}");
                // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                Ok(None)
            }
            Some(Fault::Hang { step: at }) if at == step => {
                eprintln!("trainer-proc: fault injected: hang at step {step}");
                self.reporter.suspend();
                loop {
                    std::thread::park();
                }
            }
            Some(Fault::Stuck { step: at }) if at == step => {
                eprintln!("trainer-proc: fault injected: stuck at step {step} (heartbeats go on)");
                loop {
                    std::thread::park();
                }
            }
            Some(Fault::Exit { step: at, code }) if at == step => {
                eprintln!("trainer-proc: fault injected: exit {code} at step {step}");
                self.report_now(|p| {
                    p.state = TrainerState::Failed;
                    p.message = Some(format!("fault injected: exit {code} at step {step}"));
                })?;
                Ok(Some(code))
            }
            _ => Ok(None),
        }
    }

    /// Validation, early stopping, and the epoch's checkpoint (which a pause or resume starts from).
    fn end_epoch(&mut self, epoch: u64, requests: &Requests) -> Result<(), TrainError> {
        self.reporter.update(|p| p.state = TrainerState::Evaluating);
        let val_loss = self.evaluate();
        let delay = faults::eval_delay(self.fault);
        let until = Instant::now() + delay;
        while Instant::now() < until && !requests.stop() {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        let improved = self.state.best_val_loss.is_none_or(|best| val_loss < best);
        if improved {
            self.state.best_val_loss = Some(val_loss);
            self.state.best_epoch = epoch;
            self.state.best_checkpoint = Some(self.env.checkpoint_dir.join(checkpoint::dir_name(self.state.step)));
            self.state.bad_epochs = 0;
        } else {
            self.state.bad_epochs += 1;
        }
        self.state.last_val_loss = Some(val_loss);
        let patience = self.config.patience;
        self.state.stopped_early =
            patience > 0 && self.state.bad_epochs >= patience && self.state.step < self.config.total_steps();
        self.reporter.update(|p| p.val_loss = Some(val_loss));
        self.checkpoint()?;
        let p = self.reporter.snapshot();
        println!(
            "epoch {epoch}/{} step {}/{} loss {:.4} val_loss {val_loss:.4} lr {:.2e}{}",
            self.config.epochs,
            self.state.step,
            self.config.total_steps(),
            p.loss.unwrap_or(f64::NAN),
            p.lr.unwrap_or(f64::NAN),
            if improved { " (best)" } else { "" },
        );
        Ok(())
    }

    /// Mean cross-entropy over the validation set.
    fn evaluate(&self) -> f64 {
        tch::no_grad(|| {
            let n = self.data.val_x.size()[0];
            let mut sum = 0.0;
            let mut start = 0;
            while start < n {
                let len = (n - start).min(1024);
                let x = self.data.val_x.narrow(0, start, len);
                let y = self.data.val_y.narrow(0, start, len);
                sum += self.model.forward(&x).cross_entropy_for_logits(&y).double_value(&[]) * len as f64;
                start += len;
            }
            sum / n as f64
        })
    }

    fn checkpoint(&mut self) -> Result<(), TrainError> {
        self.reporter.update(|p| p.state = TrainerState::Checkpointing);
        let started = Instant::now();
        let path = checkpoint::save(&self.env.checkpoint_dir, &self.vs, &self.opt, &self.state)?;
        self.checkpoint_time = Some(started.elapsed());
        self.checkpoints = (self.checkpoints.0 + 1, self.checkpoints.1 + started.elapsed());
        let best = self.state.best_checkpoint.clone();
        if let Err(e) = checkpoint::prune(&self.env.checkpoint_dir, self.config.keep_last, best.as_deref()) {
            eprintln!("trainer-proc: cannot prune old checkpoints: {e}");
        }
        let latest = CheckpointRef { path, step: self.state.step, epoch: epoch_of(self.state.step, self.config) };
        self.latest = Some(latest.clone());
        // Written at once, one write per checkpoint (off the per-step path): trainerd records it
        // before the trainer goes on, and a crash of the trainer right after still leaves a progress
        // file naming it. Not fsynced: after a power cut trainerd finds the checkpoint in its directory.
        let written = self.reporter.update_visible(|p| {
            p.state = TrainerState::Running;
            p.latest_checkpoint = Some(latest);
        });
        if let Err(e) = written {
            eprintln!("trainer-proc: cannot write the progress file after a checkpoint: {e}");
        }
        Ok(())
    }

    fn pause(&mut self) -> Result<i32, TrainError> {
        let latest = self.latest.clone();
        self.report_now(|p| {
            p.state = TrainerState::Paused;
            p.message = Some(format!("paused at the end of epoch {}", epoch_of(self.state.step, self.config)));
            p.latest_checkpoint = latest;
        })?;
        println!("trainer-proc: paused at step {}", self.state.step);
        Ok(exit::OK)
    }

    /// A stop request: checkpoint if the grace period leaves time for it, then exit 75.
    fn stop(&mut self) -> Result<i32, TrainError> {
        let fits = match (self.env.stop_grace, self.checkpoint_time) {
            (None, _) => true,
            (Some(grace), Some(took)) => took * 2 < grace,
            (Some(grace), None) => grace >= Duration::from_secs(1),
        };
        let fresh = self.latest.as_ref().is_some_and(|c| c.step == self.state.step);
        if fits && !fresh {
            self.checkpoint()?;
        }
        let latest = self.latest.clone();
        let step = self.state.step;
        self.report_now(|p| {
            p.state = TrainerState::Stopped;
            p.message = Some(format!(
                "stopped on request at step {step}; {}",
                match &latest {
                    Some(c) => format!("resume from step {}", c.step),
                    None => "no checkpoint yet".into(),
                }
            ));
            p.latest_checkpoint = latest;
        })?;
        println!("trainer-proc: stopped at step {step}");
        Ok(exit::RETRY)
    }

    fn complete(&mut self) -> Result<i32, TrainError> {
        let digest = weights_sha256(&self.vs);
        let elapsed = self.started.elapsed();
        let stats = self.reporter.stats();
        let overhead = (stats.update_time + stats.write_time).as_secs_f64() / elapsed.as_secs_f64().max(1e-9) * 100.0;
        let how = if self.state.stopped_early {
            format!(
                "stopped early after epoch {} (best val_loss {:.4} at epoch {})",
                epoch_of(self.state.step, self.config),
                self.state.best_val_loss.unwrap_or(f64::NAN),
                self.state.best_epoch
            )
        } else {
            format!("completed {} epochs", self.config.epochs)
        };
        let latest = self.latest.clone();
        self.report_now(|p| {
            p.state = TrainerState::Completed;
            p.weights_sha256 = Some(digest.clone());
            p.val_loss = self.state.last_val_loss;
            p.latest_checkpoint = latest;
            p.message = Some(how.clone());
        })?;
        println!("trainer-proc: {how}; weights_sha256 {digest}");
        println!(
            "trainer-proc: progress reporting {:.3}% of {:.2} s ({} writes taking {:.1} ms, {:.2} ms in updates)",
            overhead,
            elapsed.as_secs_f64(),
            stats.writes,
            stats.write_time.as_secs_f64() * 1e3,
            stats.update_time.as_secs_f64() * 1e3,
        );
        // One line for tools (the benchmark suite reads it): key=value, stable names.
        let (saved, saving) = self.checkpoints;
        println!(
            "trainer-proc: stats steps={} seconds={:.3} steps_per_s={:.1} checkpoints={saved} checkpoint_ms_mean={:.2} \
             restore_ms={:.2} progress_overhead_pct={overhead:.4}",
            self.state.step - self.first_step,
            elapsed.as_secs_f64(),
            (self.state.step - self.first_step) as f64 / elapsed.as_secs_f64().max(1e-9),
            saving.as_secs_f64() * 1e3 / f64::from(saved.max(1)),
            self.restore_time.map(|t| t.as_secs_f64() * 1e3).unwrap_or(0.0),
        );
        Ok(exit::OK)
    }

    fn report_now(&self, edit: impl FnOnce(&mut Progress)) -> Result<(), TrainError> {
        self.reporter.update_now(edit).map_err(|e| {
            TrainError::Io(format!("cannot write progress file {}: {e}", self.env.progress_file.display()))
        })
    }
}

/// The epoch (1-based) that the `step`-th step belongs to; 0 before any step.
fn epoch_of(step: u64, config: &Config) -> u64 {
    step.div_ceil(config.steps_per_epoch)
}

fn fresh_state(config: &Config, optimizer: AdamWConfig) -> TrainState {
    TrainState {
        format: checkpoint::FORMAT,
        step: 0,
        data_seed: config.seed,
        optimizer,
        optimizer_t: 0,
        lr_peak: config.lr,
        lr_warmup_steps: config.warmup_steps,
        lr_total_steps: config.total_steps(),
        best_val_loss: None,
        best_epoch: 0,
        best_checkpoint: None,
        bad_epochs: 0,
        stopped_early: false,
        last_val_loss: None,
        fingerprint: config.fingerprint(),
    }
}

/// Refuses to resume a checkpoint taken with settings that change the numbers.
fn check_fingerprint(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    path: &std::path::Path,
) -> Result<(), TrainError> {
    let (Some(saved), Some(now)) = (saved.as_object(), now.as_object()) else {
        return Err(TrainError::Data(format!("{}: state.json has no settings fingerprint", path.display())));
    };
    let differing: Vec<String> = now
        .iter()
        .filter(|(k, v)| saved.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!("{k} (checkpoint {}, now {v})", saved.get(k).map(|s| s.to_string()).unwrap_or("unset".into()))
        })
        .collect();
    if differing.is_empty() {
        Ok(())
    } else {
        Err(TrainError::Config(format!(
            "cannot resume {} with different settings: {}; run with the settings it was trained with",
            path.display(),
            differing.join(", ")
        )))
    }
}
