//! The Python SDK under the real trainerd: `examples/pytorch_mnist_like.py` (real PyTorch, on the
//! project's torch venv) submitted through trainctl, SIGKILLed, restarted from its checkpoint, paused
//! and resumed, ends with the weights of an uninterrupted run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use trainerd_proto::state::is_terminal;
use trainerd_proto::v1::JobState;
use trainerd_tests::{bin, events, watch_until, Daemon, OutputWithin};

const LIMIT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `trainctl --json submit ... -- python example ARGS`; returns the job id.
fn submit_example(daemon: &Daemon, name: &str, args: &[&str]) -> String {
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh (it installs torch)", python.display());
    let example = repo().join("examples/pytorch_mnist_like.py");
    let out = Command::new(bin("trainctl"))
        .env("TRAINERD_SOCKET", daemon.socket())
        .args(["--json", "submit", "--name", name, "--"])
        .arg(&python)
        .args(["-W", "ignore"])
        .arg(&example)
        .args(["--epochs", "6", "--steps-per-epoch", "10"])
        .args(args)
        .output_within()
        .expect("trainctl");
    assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    job["id"].as_str().expect("id").to_string()
}

fn trainctl(daemon: &Daemon, args: &[&str]) {
    let out = Command::new(bin("trainctl")).env("TRAINERD_SOCKET", daemon.socket()).args(args).output_within().unwrap();
    assert!(out.status.success(), "trainctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pytorch_example_survives_a_kill_and_a_pause_and_ends_with_the_uninterrupted_weights() {
    let daemon =
        Daemon::start(&["--heartbeat-interval", "0.2", "--gpus", "none", "--slots", "2", "--backoff-base", "0"]);
    let mut client = daemon.client().await;
    let reference = submit_example(&daemon, "reference", &[]);
    let job = submit_example(&daemon, "interrupted", &["--step-sleep", "0.05"]);
    // Past its first checkpoint (epoch 1 ends at step 10): SIGKILL; trainerd restarts it from there.
    let seen = watch_until(&mut client, &job, LIMIT, |j| j.latest_checkpoint.is_some() && j.step >= 12).await;
    let pid = seen.last().unwrap().pid.expect("a running trainer has a pid");
    // SAFETY: kill(2) on the trainer this test's daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    watch_until(&mut client, &job, LIMIT, |j| j.attempt == 2 && j.state() == JobState::Running).await;
    trainctl(&daemon, &["pause", &job]);
    let paused = watch_until(&mut client, &job, LIMIT, |j| j.state() == JobState::Paused || is_terminal(j.state()))
        .await
        .pop()
        .unwrap();
    assert_eq!(paused.state(), JobState::Paused, "{}", paused.message);
    assert_eq!(paused.step % 10, 0, "paused at an epoch boundary");
    trainctl(&daemon, &["resume", &job]);
    let done = watch_until(&mut client, &job, LIMIT, |j| is_terminal(j.state())).await.pop().unwrap();
    let reference = watch_until(&mut client, &reference, LIMIT, |j| is_terminal(j.state())).await.pop().unwrap();
    assert_eq!((reference.state(), done.state()), (JobState::Completed, JobState::Completed), "{}", done.message);
    assert_eq!((done.attempt, done.step), (3, 60), "killed, restarted, paused and resumed");
    assert_eq!(done.weights_sha256.len(), 64);
    assert_eq!(done.weights_sha256, reference.weights_sha256, "exact resume through the SDK");
    let kinds: Vec<String> = events(&mut client, &job).await.into_iter().map(|(_, m)| m).collect();
    assert!(kinds.iter().any(|m| m.contains("resuming from")), "{kinds:?}");
    // Equal weights cannot tell a resume from a rerun from step 0: the attempt that completed took
    // only the steps after the pause checkpoint.
    let out = std::fs::read_to_string(daemon.job_dir(&job).join("stdout.log")).unwrap();
    let expected = format!("attempt 3: {} steps, from step {}", 60 - paused.step, paused.step);
    assert!(out.lines().any(|l| l == expected), "no {expected:?} in {out}");
}
