//! A tiny trainer that speaks the trainer protocol, for fast supervision tests (trainer-proc covers
//! the end-to-end cases with real training). Settings come from the environment:
//!
//! - `FAKE_STEPS` (default 20), `FAKE_STEP_MS` (default 20): the "training";
//! - `FAKE_CHECKPOINT_EVERY` (default 5): a checkpoint file `step-N.json` holding the step;
//! - `FAKE_FAULT`: `crash@N` (SIGKILL itself), `hang@N` (no more heartbeats, deaf to SIGTERM),
//!   `exit@N:CODE`, `garbage@N` (write an invalid progress file once), `huge@N` (an oversized one);
//!   on attempt 1 only unless `FAKE_FAULT_EVERY_ATTEMPT=1`;
//! - `FAKE_CHILDREN=K`: start K grandchildren (`sleep`) in the process group;
//! - `FAKE_PRINT_BYTES=B`: print B bytes to stdout at every step (a flooding trainer);
//! - `FAKE_START_MS=T`: wait T ms before the first heartbeat (a slow start);
//! - `FAKE_IGNORE_RESUME=1`: ignore `TRAINERD_RESUME_FROM` and start from step 0 (a resume bug);
//! - `FAKE_LOSS=1`: report a loss (1 / step) and a metric `acc` (step / steps) at every step;
//! - `FAKE_STAMP_FILE=PATH`: append `start UNIX_TIME` when main begins, and in hang mode
//!   `term UNIX_TIME` for each SIGTERM (the benchmarks time restarts and hang detection by them).
//!
//! Like any protocol trainer it answers SIGUSR1 (pause at the next checkpoint step, exit 0 paused) and
//! SIGTERM (checkpoint now, exit 75 stopped).
//!
//! On completion `weights_sha256` is `fake-<steps>-<first step of this attempt>`, so a test can tell a
//! resumed run (first step > 0) from a fresh one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trainerd_proto::trainer::{env, unix_now, CheckpointRef, Progress, TrainerState};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn stamp(what: &str) {
    if let Some(path) = std::env::var_os("FAKE_STAMP_FILE") {
        use std::io::Write;
        let line = format!("{what} {:.6}\n", unix_now());
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
        file.and_then(|mut f| f.write_all(line.as_bytes())).expect("stamp file");
    }
}

fn main() {
    stamp("start");
    let progress_path = std::env::var(env::PROGRESS_FILE).expect("TRAINERD_PROGRESS_FILE");
    let checkpoints = std::path::PathBuf::from(std::env::var(env::CHECKPOINT_DIR).expect("TRAINERD_CHECKPOINT_DIR"));
    let attempt = var(env::ATTEMPT, 1);
    let interval: f64 = std::env::var(env::HEARTBEAT_INTERVAL).ok().and_then(|v| v.parse().ok()).unwrap_or(5.0);
    let (steps, step_ms, every) = (var("FAKE_STEPS", 20), var("FAKE_STEP_MS", 20), var("FAKE_CHECKPOINT_EVERY", 5));
    let fault = std::env::var("FAKE_FAULT").ok().filter(|_| attempt == 1 || var("FAKE_FAULT_EVERY_ATTEMPT", 0) == 1);
    let fault_at = |kind: &str| -> Option<(u64, i32)> {
        let rest = fault.as_deref()?.strip_prefix(kind)?.strip_prefix('@')?;
        let (step, code) = rest.split_once(':').unwrap_or((rest, "0"));
        Some((step.parse().ok()?, code.parse().ok()?))
    };
    // Grandchildren that outlive us unless trainerd kills the whole group (never waited for: that is
    // the point).
    let _children: Vec<std::process::Child> = (0..var("FAKE_CHILDREN", 0))
        .map(|_| std::process::Command::new("sleep").arg("1000").spawn().expect("sleep"))
        .collect();
    // FAKE_IGNORE_RESUME=1: a trainer that validates its checkpoint, then starts from step 0 anyway.
    let resume = std::env::var(env::RESUME_FROM).ok();
    let ignore = var("FAKE_IGNORE_RESUME", 0) == 1;
    let start = match resume.filter(|_| !ignore) {
        Some(path) => {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                eprintln!("cannot read checkpoint {path}: {e}");
                std::process::exit(65)
            });
            text.trim().parse::<u64>().unwrap_or_else(|_| std::process::exit(65))
        }
        None => 0,
    };
    let pause = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, pause.clone()).expect("SIGUSR1 handler");
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()).expect("SIGTERM handler");
    std::thread::sleep(Duration::from_millis(var("FAKE_START_MS", 0)));
    let mut initial = Progress::starting(unix_now());
    initial.total_steps = steps;
    initial.step = start;
    initial.heartbeat_interval = Some(interval);
    let progress = Arc::new(Mutex::new(initial));
    let silent = Arc::new(AtomicBool::new(false));
    // When the last write happened: a beat is due only after an interval without one, as a trainer
    // whose steps already report in time writes nothing extra (trainer-proc's reporter does the same).
    let last_write = Arc::new(Mutex::new(Instant::now()));
    let write = {
        let (progress, silent, path, last_write) =
            (progress.clone(), silent.clone(), progress_path.clone(), last_write.clone());
        move || {
            // Stamped even when silent, so that the beat thread of a hung trainer sleeps.
            *last_write.lock().unwrap() = Instant::now();
            if silent.load(Ordering::SeqCst) {
                return;
            }
            let mut p = progress.lock().unwrap();
            p.heartbeat_seq += 1;
            p.updated_at = unix_now();
            // A beat or a step: not fsynced, as the protocol allows (final states below are).
            p.write_unsynced(std::path::Path::new(&path)).expect("progress write");
        }
    };
    write();
    {
        let write = write.clone();
        let interval = Duration::from_secs_f64(interval);
        std::thread::spawn(move || loop {
            let since = last_write.lock().unwrap().elapsed();
            match interval.checked_sub(since) {
                Some(wait) if !wait.is_zero() => std::thread::sleep(wait),
                _ => write(),
            }
        });
    }
    let flood = vec![b'x'; var("FAKE_PRINT_BYTES", 0) as usize];
    for step in start + 1..=steps {
        std::thread::sleep(Duration::from_millis(step_ms));
        if !flood.is_empty() {
            use std::io::Write;
            std::io::stdout().write_all(&flood).expect("stdout");
        }
        {
            let mut p = progress.lock().unwrap();
            p.state = TrainerState::Running;
            p.step = step;
            if var("FAKE_LOSS", 0) == 1 {
                p.loss = Some(1.0 / step as f64);
                p.metrics.insert("acc".into(), step as f64 / steps.max(1) as f64);
            }
        }
        let stopping = stop.load(Ordering::SeqCst) && fault.as_deref().is_none_or(|f| !f.starts_with("hang"));
        let pausing = pause.load(Ordering::SeqCst) && (every == 0 || step % every == 0);
        if (every > 0 && step % every == 0) || stopping || pausing {
            let path = checkpoints.join(format!("step-{step}.json"));
            trainerd_proto::atomic::write_atomic(&path, step.to_string().as_bytes()).expect("checkpoint");
            progress.lock().unwrap().latest_checkpoint = Some(CheckpointRef { path, step, epoch: 1 });
        }
        write();
        if stopping || pausing {
            let mut p = progress.lock().unwrap();
            p.state = if stopping { TrainerState::Stopped } else { TrainerState::Paused };
            p.heartbeat_seq += 1;
            p.updated_at = unix_now();
            p.write(std::path::Path::new(&progress_path)).expect("progress write");
            std::process::exit(if stopping { 75 } else { 0 });
        }
        if fault_at("crash").is_some_and(|(at, _)| at == step) {
            // SAFETY: kill(2) on our own pid.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        if fault_at("hang").is_some_and(|(at, _)| at == step) {
            silent.store(true, Ordering::SeqCst);
            let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::new(AtomicBool::new(false)));
            if std::env::var_os("FAKE_STAMP_FILE").is_some() {
                let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]).expect("signals");
                std::thread::spawn(move || {
                    for _ in signals.forever() {
                        stamp("term");
                    }
                });
            }
            loop {
                std::thread::park();
            }
        }
        if let Some((_, code)) = fault_at("exit").filter(|(at, _)| *at == step) {
            std::process::exit(code);
        }
        if fault_at("garbage").is_some_and(|(at, _)| at == step) {
            trainerd_proto::atomic::write_atomic(std::path::Path::new(&progress_path), b"{\"protocol\": 1, \"sta")
                .unwrap();
        }
        if fault_at("huge").is_some_and(|(at, _)| at == step) {
            let big = vec![b' '; 1 << 20];
            trainerd_proto::atomic::write_atomic(std::path::Path::new(&progress_path), &big).unwrap();
        }
    }
    let mut p = progress.lock().unwrap();
    p.state = TrainerState::Completed;
    p.weights_sha256 = Some(format!("fake-{steps}-{start}"));
    p.heartbeat_seq += 1;
    p.updated_at = unix_now();
    p.write(std::path::Path::new(&progress_path)).expect("progress write");
}
