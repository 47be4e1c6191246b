//! trainer-proc as trainerd meets it: the real binary, real libtorch training, real signals.
//! Every run is small (a few hundred milliseconds of training) so the whole file takes seconds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use trainerd_proto::trainer::{env, Progress, TrainerState};

const BIN: &str = env!("CARGO_BIN_EXE_trainer-proc");
/// Three epochs of 20 steps, a periodic checkpoint every 7 steps.
const SMALL: &[&str] = &[
    "--epochs",
    "3",
    "--steps-per-epoch",
    "20",
    "--batch-size",
    "32",
    "--train-samples",
    "1024",
    "--val-samples",
    "256",
    "--hidden",
    "32",
    "--checkpoint-every",
    "7",
    "--keep-last",
    "50",
    "--patience",
    "0",
    "--device",
    "cpu",
    "--progress-every",
    "0.05",
];

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        Run { dir: tempfile::tempdir().unwrap() }
    }
    fn progress_path(&self) -> PathBuf {
        self.dir.path().join("progress.json")
    }
    fn checkpoints(&self) -> PathBuf {
        self.dir.path().join("checkpoints")
    }
    fn command(&self, attempt: u32, resume: Option<&Path>, fault: Option<&str>) -> Command {
        self.command_with(&[], attempt, resume, fault)
    }
    /// A command with some of the SMALL settings replaced (clap refuses a flag given twice).
    fn command_with(
        &self,
        overrides: &[(&str, &str)],
        attempt: u32,
        resume: Option<&Path>,
        fault: Option<&str>,
    ) -> Command {
        let mut args: Vec<&str> = SMALL.to_vec();
        for (flag, value) in overrides {
            let at = args.iter().position(|a| a == flag).expect("only SMALL's flags can be overridden");
            args[at + 1] = value;
        }
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env(env::PROGRESS_FILE, self.progress_path())
            .env(env::CHECKPOINT_DIR, self.checkpoints())
            .env(env::ATTEMPT, attempt.to_string())
            .env_remove(env::RESUME_FROM)
            .env_remove("TRAINER_FAULT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = resume {
            cmd.env(env::RESUME_FROM, path);
        }
        if let Some(fault) = fault {
            cmd.env("TRAINER_FAULT", fault);
        }
        cmd
    }
    fn run(&self, attempt: u32, resume: Option<&Path>, fault: Option<&str>) -> (ExitStatus, String) {
        let out = self.command(attempt, resume, fault).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status, text)
    }
    fn progress(&self) -> Progress {
        Progress::parse(&std::fs::read(self.progress_path()).unwrap()).unwrap()
    }
}

/// Waits for the child's first stdout line: it is printed once the model is built, before step 1.
fn wait_for_start(child: &mut Child) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("trainer-proc: training") || line.starts_with("trainer-proc: resuming"), "{line}");
    out
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// The optimizer steps this run itself took, from its `stats` line: a resumed run takes only the
/// steps after its checkpoint (equal weights alone cannot tell a resume from a restart at step 0,
/// since a deterministic run from scratch ends with the same weights).
fn steps_run(out: &str) -> u64 {
    let line = out.lines().find(|l| l.starts_with("trainer-proc: stats ")).unwrap_or_else(|| panic!("no stats: {out}"));
    let steps = line.split_whitespace().find_map(|w| w.strip_prefix("steps=")).expect(line);
    steps.parse().expect(line)
}

fn uninterrupted_digest() -> String {
    let run = Run::new();
    let (status, out) = run.run(1, None, None);
    assert!(status.success(), "{out}");
    let p = run.progress();
    assert_eq!((p.state, p.step, p.epoch), (TrainerState::Completed, 60, 3), "{out}");
    p.weights_sha256.expect("a completed run reports its digest")
}

#[test]
fn pause_by_sigusr1_after_epoch_1_then_resume_gives_identical_weights() {
    let reference = uninterrupted_digest();
    let run = Run::new();
    // The evaluation after epoch 1 takes 2 s (heartbeats go on), so the pause request, sent as soon as
    // training starts, lands inside epoch 1 even on a loaded machine.
    let mut child = run.command(1, None, Some("slow-eval@2")).spawn().unwrap();
    let _out = wait_for_start(&mut child);
    signal(&child, libc::SIGUSR1);
    assert_eq!(child.wait().unwrap().code(), Some(0), "a pause exits 0");
    let paused = run.progress();
    assert_eq!(paused.state, TrainerState::Paused);
    let checkpoint = paused.latest_checkpoint.expect("a pause records its checkpoint");
    assert_eq!((checkpoint.step, checkpoint.epoch, paused.step), (20, 1, 20), "paused at the end of epoch 1");

    let (status, out) = run.run(2, Some(&checkpoint.path), None);
    assert!(status.success(), "{out}");
    assert!(out.contains("resuming") && !out.contains("epoch 1/3"), "resumes at epoch 2: {out}");
    assert_eq!(steps_run(&out), 40, "continued from step 20, not from 0: {out}");
    assert_eq!(run.progress().weights_sha256, Some(reference));
}

#[test]
fn sigkill_mid_epoch_then_resume_from_the_latest_periodic_checkpoint_gives_identical_weights() {
    let reference = uninterrupted_digest();
    let run = Run::new();
    let (status, _) = run.run(1, None, Some("crash@31"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Periodic checkpoints at 7, 14, 21(, 28); the epoch-1 checkpoint at 20. The newest is step 28,
    // mid-epoch 2. The progress file may lag it by one write, so ask the directory.
    let newest = newest_checkpoint(&run.checkpoints());
    assert!(newest.ends_with("step-000000000028"), "{newest:?}");

    let (status, out) = run.run(2, Some(&newest), Some("crash@31"));
    assert!(status.success(), "the fault fires on attempt 1 only: {out}");
    assert!(out.contains("from step 28"), "{out}");
    assert_eq!(steps_run(&out), 32, "continued from step 28, not from 0: {out}");
    assert_eq!(run.progress().weights_sha256, Some(reference));
}

#[test]
fn sigterm_checkpoints_exits_75_and_the_resumed_run_is_identical() {
    let reference = uninterrupted_digest();
    let run = Run::new();
    let mut child = run.command(1, None, Some("slow-eval@2")).spawn().unwrap();
    let _out = wait_for_start(&mut child);
    signal(&child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(75), "a stop request exits 75 (EX_TEMPFAIL)");
    let stopped = run.progress();
    assert_eq!(stopped.state, TrainerState::Stopped);
    let checkpoint = stopped.latest_checkpoint.expect("the stop was given time to checkpoint");
    assert_eq!(checkpoint.step, stopped.step, "the checkpoint is taken at the step it stopped at");

    let (status, out) = run.run(2, Some(&checkpoint.path), None);
    assert!(status.success(), "{out}");
    assert_eq!(steps_run(&out), 60 - checkpoint.step, "continued from step {}, not from 0: {out}", checkpoint.step);
    assert_eq!(run.progress().weights_sha256, Some(reference));
}

#[test]
fn the_default_task_learns() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["--out", dir.path().to_str().unwrap(), "--device", "cpu"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let val: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split(" val_loss ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(val.len() >= 5, "{text}");
    // Chance level for 4 classes is ln 4 = 1.386.
    let best = val.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(val[0] < 1.2 && best < 0.75 * val[0], "validation loss must clearly fall: {val:?}");
    assert!(text.contains("weights_sha256"), "{text}");
}

#[test]
fn readers_never_see_a_torn_progress_file() {
    let run = Run::new();
    let mut child = run.command(1, None, None).spawn().unwrap();
    let (mut reads, mut last_seq) = (0, 0);
    while child.try_wait().unwrap().is_none() {
        if let Ok(bytes) = std::fs::read(run.progress_path()) {
            let p = Progress::parse(&bytes).unwrap_or_else(|e| panic!("torn or invalid progress file: {e}"));
            assert!(p.heartbeat_seq >= last_seq, "heartbeat_seq went back");
            last_seq = p.heartbeat_seq;
            reads += 1;
        }
    }
    assert!(reads > 0);
    let names: Vec<String> = std::fs::read_dir(run.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(names.is_empty(), "temporary files left behind: {names:?}");
}

#[test]
fn a_checkpoint_is_complete_or_absent_after_sigkill_at_any_moment() {
    let reference = uninterrupted_digest();
    let run = Run::new();
    // A checkpoint after every step, killed at growing delays after training starts: with a write of
    // three fsynced files per step, some kills land inside a write.
    let every_step = [("--checkpoint-every", "1")];
    for delay_ms in [5, 40, 80, 120, 160] {
        let mut child = run.command_with(&every_step, 1, None, None).spawn().unwrap();
        let _out = wait_for_start(&mut child);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
    }
    // Every step-named directory must hold a whole checkpoint: resuming from the newest must work and
    // give the reference weights.
    let newest = newest_checkpoint(&run.checkpoints());
    for entry in std::fs::read_dir(run.checkpoints()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("step-") {
            for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
                assert!(path.join(file).is_file(), "{} lacks {file}", path.display());
            }
        }
    }
    let out = run.command_with(&every_step, 2, Some(&newest), None).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(run.progress().weights_sha256, Some(reference));
}

#[test]
fn hang_stops_heartbeats_while_the_process_stays_alive() {
    let run = Run::new();
    let mut cmd = run.command(1, None, Some("hang@5"));
    cmd.env(env::HEARTBEAT_INTERVAL, "0.05");
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("fault injected: hang") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0 && Instant::now() < deadline, "no hang reported");
    }
    let frozen = run.progress().heartbeat_seq;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(run.progress().heartbeat_seq, frozen, "a hung trainer must not heartbeat");
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    assert!(child.try_wait().unwrap().is_none(), "a hung trainer ignores SIGTERM, like a real deadlock");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn slow_evaluation_keeps_heartbeating() {
    let run = Run::new();
    let mut cmd = run.command_with(&[("--epochs", "1")], 1, None, Some("slow-eval@1"));
    cmd.env(env::HEARTBEAT_INTERVAL, "0.05");
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline);
        if let Ok(p) = Progress::parse(&std::fs::read(run.progress_path()).unwrap_or_default()) {
            if p.state == TrainerState::Evaluating && !seen.contains(&p.heartbeat_seq) {
                seen.push(p.heartbeat_seq);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(seen.len() >= 5, "heartbeats during a 1 s evaluation at 50 ms: {seen:?}");
    assert_eq!(run.progress().state, TrainerState::Completed);
}

#[test]
fn exit_fault_and_bad_inputs_exit_with_the_protocol_codes() {
    let run = Run::new();
    let (status, out) = run.run(1, None, Some("exit@5:78"));
    assert_eq!(status.code(), Some(78), "{out}");
    assert_eq!((run.progress().state, run.progress().step), (TrainerState::Failed, 5));

    let (status, out) = run.run(1, None, Some("boom@1"));
    assert_eq!(status.code(), Some(78), "{out}");
    assert!(out.contains("expected crash@STEP"), "{out}");

    let status = Command::new(BIN).arg("--no-such-flag").stderr(Stdio::null()).status().unwrap();
    assert_eq!(status.code(), Some(64), "a usage error is EX_USAGE");

    let (status, out) = run.run(2, Some(&run.dir.path().join("nowhere")), None);
    assert_eq!(status.code(), Some(65), "{out}");
    assert!(out.contains("cannot resume from"), "{out}");
    let p = run.progress();
    assert_eq!(p.state, TrainerState::Failed);
    assert!(p.message.unwrap().contains("cannot resume from"));
}

#[test]
fn a_corrupt_or_mismatched_checkpoint_is_refused_never_restarted_from_zero() {
    let run = Run::new();
    let (status, _) = run.run(1, None, Some("crash@15"));
    assert!(!status.success());
    let newest = newest_checkpoint(&run.checkpoints());
    let out = run.command_with(&[("--batch-size", "16")], 2, Some(&newest), None).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch_size (checkpoint 32, now 16)"), "{out:?}");

    std::fs::write(newest.join("model.safetensors"), b"garbage").unwrap();
    let (status, out) = run.run(2, Some(&newest), None);
    assert_eq!(status.code(), Some(65), "{out}");
    assert!(out.contains("model.safetensors"), "{out}");
    assert_eq!(run.progress().step, 0, "nothing was trained from step 0");
    assert_eq!(run.progress().state, TrainerState::Failed);
}

fn newest_checkpoint(dir: &Path) -> PathBuf {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
        .collect();
    steps.sort();
    steps.pop().expect("no checkpoint written")
}
