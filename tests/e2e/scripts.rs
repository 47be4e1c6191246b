//! The scripts people already have, supervised unchanged: a plain Python script runs to its end with
//! default settings (never killed for not speaking the protocol), a silent one is caught by
//! `--idle-timeout`, tqdm output fills the job's progress through `--progress-regex`, a Hugging Face
//! Trainer script (the real library) killed mid-run resumes from its newest complete checkpoint with
//! its own `--resume_from_checkpoint`, and trainers that checkpoint every 10 steps and die at step 75
//! resume from step 70. A trainer that ignores its checkpoint is caught (`resume_ignored`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::{JobState, Reason};
use trainerd_tests::*;

const LIMIT: Duration = Duration::from_secs(120);

fn ended(job: &pb::Job) -> bool {
    trainerd_proto::state::is_terminal(job.state())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> String {
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh", python.display());
    python.display().to_string()
}

/// A Python script as a job, in `workdir`.
fn script(name: &str, code: &str, workdir: &Path) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        name: name.into(),
        command: vec![python(), "-c".into(), code.into()],
        workdir: workdir.display().to_string(),
        backoff_base_ms: Some(0),
        ..Default::default()
    }
}

/// The silence trainerd measured in the job's `stalled` event.
fn stalled_after(events: &[(String, String)]) -> (String, f64) {
    let (_, message) = events.iter().find(|(k, _)| k == "stalled").unwrap_or_else(|| panic!("no stall: {events:?}"));
    let rest = message.strip_prefix("no heartbeat for ").or(message.strip_prefix("no output for ")).expect(message);
    (message.clone(), rest.split(' ').next().and_then(|n| n.parse().ok()).expect(message))
}

#[tokio::test]
async fn an_unchanged_script_runs_past_a_short_startup_grace_to_the_end_and_is_running_at_once() {
    // A startup grace far below the script's length: under protocol auto (the default) it does not
    // apply to a script that never heartbeats.
    let daemon = Daemon::start(&["--gpus", "none", "--startup-grace", "1"]);
    let mut client = daemon.client().await;
    let work = tempfile::tempdir().unwrap();
    let job = submit(&mut client, script("plain", "import time\ntime.sleep(4)\nprint('done')", work.path())).await;
    let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
    let running = seen.iter().position(|j| j.state() == JobState::Running).expect("RUNNING was shown");
    assert!(seen[..running].iter().all(|j| j.pid.is_none() || j.state() == JobState::Starting), "{seen:?}");
    assert!(seen[running].pid.is_some(), "RUNNING as soon as its process started: {:?}", seen[running]);
    let last = seen.last().unwrap();
    assert_eq!((last.state(), last.restarts, last.exit_code), (JobState::Completed, 0, Some(0)), "{last:?}");
    assert_eq!(
        (last.protocol.as_str(), last.resumed_from.as_str()),
        ("auto", "from the beginning: no checkpoint known")
    );
    let all = events(&mut client, &job.id).await;
    assert!(!all.iter().any(|(k, _)| k == "stalled"), "{all:?}");
    assert!(
        all.iter().any(|(_, m)| m == "queued -> starting: attempt 1, from the beginning: no checkpoint known"),
        "{all:?}"
    );
    assert!(
        all.iter().any(|(_, m)| m == "starting -> running: started (protocol auto: running once started)"),
        "{all:?}"
    );
}

#[tokio::test]
async fn idle_timeout_catches_a_silent_script_and_spares_a_chatty_one() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    let work = tempfile::tempdir().unwrap();
    let silent = pb::SubmitJobRequest {
        idle_timeout_ms: Some(1000),
        on_failure: Some("fail".into()),
        stop_grace_ms: Some(500),
        ..script("silent", "import time\nprint('loading', flush=True)\ntime.sleep(600)", work.path())
    };
    let chatty = pb::SubmitJobRequest {
        idle_timeout_ms: Some(1000),
        ..script(
            "chatty",
            "import time\nfor i in range(15):\n    print(i, flush=True)\n    time.sleep(0.2)",
            work.path(),
        )
    };
    let silent = submit(&mut client, silent).await;
    let chatty = submit(&mut client, chatty).await;
    let last = watch_until(&mut client, &silent.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.reason()), (JobState::Failed, Reason::Stalled), "{last:?}");
    let (message, quiet) = stalled_after(&events(&mut client, &silent.id).await);
    assert!(message.ends_with("(idle_timeout): stopping the trainer"), "{message}");
    assert!((1.0..=2.5).contains(&quiet), "stopped after {quiet} s without output; the idle timeout is 1 s");
    let last = watch_until(&mut client, &chatty.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.restarts), (JobState::Completed, 0), "output kept it alive: {last:?}");
}

#[tokio::test]
async fn progress_regex_fills_step_total_and_loss_from_tqdm_output() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    let work = tempfile::tempdir().unwrap();
    let code = "import sys, time\nfor i in range(1, 61):\n    \
                sys.stderr.write(f'\\rtrain: {i*100//60:3d}%|##| {i}/60 [00:01<00:02, loss={1/i:.4f}, lr=0.001]')\n    \
                sys.stderr.flush()\n    time.sleep(0.05)\nsys.stderr.write('\\n')";
    let req = pb::SubmitJobRequest {
        progress_regex: r"(?P<step>\d+)/(?P<total>\d+) \[.*loss=(?P<loss>[0-9.]+), lr=(?P<lr>[0-9.]+)".into(),
        ..script("tqdm", code, work.path())
    };
    let job = submit(&mut client, req).await;
    let seen = watch_until(&mut client, &job.id, LIMIT, |j| j.step >= 20 || ended(j)).await;
    let mid = seen.last().unwrap();
    assert_eq!(mid.total_steps, 60, "{mid:?}");
    let loss = mid.loss.expect("the loss from the bar");
    assert!((loss - 1.0 / mid.step as f64).abs() < 1e-3, "loss {loss} at step {}", mid.step);
    assert_eq!(mid.metrics.get("lr"), Some(&0.001), "{mid:?}");
    let last = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.step, last.total_steps), (JobState::Completed, 60, 60), "{last:?}");
    // A bad expression is refused at submission, with the reason.
    let bad = pb::SubmitJobRequest { progress_regex: "(?P<step>\\d+".into(), ..script("bad", "pass", work.path()) };
    let e = client.submit_job(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("progress_regex: is not a regular expression: regex parse error"),
        "{}",
        e.message()
    );
}

/// Waits until `path` exists, at most 60 s.
async fn appears(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hugging_face_trainer_script_killed_mid_run_resumes_from_its_newest_complete_checkpoint() {
    let daemon = Daemon::start(&["--gpus", "none", "--slots", "2"]);
    let mut client = daemon.client().await;
    let work = tempfile::tempdir().unwrap();
    let example = repo().join("examples/hf_trainer_tiny.py").display().to_string();
    let job = |name: &str, out: &str, sleep: &str| pb::SubmitJobRequest {
        name: name.into(),
        command: vec![python(), "-W".into(), "ignore".into(), example.clone(), "--output-dir".into(), out.into()]
            .into_iter()
            .chain(["--step-sleep".into(), sleep.into()])
            .collect(),
        workdir: work.path().display().to_string(),
        checkpoint_glob: format!("{out}/checkpoint-*"),
        resume_arg: "--resume_from_checkpoint {checkpoint}".into(),
        checkpoint_marker: "trainer_state.json".into(),
        progress_regex: r"(?P<step>\d+)/(?P<total>\d+) \[".into(),
        backoff_base_ms: Some(0),
        ..Default::default()
    };
    let reference = submit(&mut client, job("reference", "ref", "0")).await;
    let interrupted = submit(&mut client, job("interrupted", "int", "0.1")).await;
    let out = work.path().join("int");
    appears(&out.join("checkpoint-20/trainer_state.json")).await;
    // A checkpoint being written when the kill comes: newer by its number, but without its marker.
    std::fs::create_dir_all(out.join("checkpoint-9990")).unwrap();
    std::fs::write(out.join("checkpoint-9990/model.safetensors"), b"half").unwrap();
    let now = get(&mut client, &interrupted.id).await;
    assert!(now.step > 0 && now.total_steps == 60, "progress from the tqdm bar: {now:?}");
    // SAFETY: kill(2) on the trainer this test's trainerd started.
    unsafe { libc::kill(now.pid.expect("running") as i32, libc::SIGKILL) };
    wait_gone(now.pid.unwrap(), LIMIT);
    let newest = (1..=6)
        .rev()
        .map(|n| out.join(format!("checkpoint-{}", n * 10)))
        .find(|c| c.join("trainer_state.json").exists())
        .unwrap();
    let done = watch_until(&mut client, &interrupted.id, LIMIT, ended).await.pop().unwrap();
    let reference = watch_until(&mut client, &reference.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!(
        (done.state(), done.attempt, reference.state()),
        (JobState::Completed, 2, JobState::Completed),
        "{done:?}"
    );
    assert_eq!(
        done.resumed_from,
        newest.display().to_string(),
        "the newest complete checkpoint, not the half-written one"
    );
    let all = events(&mut client, &interrupted.id).await;
    let expected =
        format!("backoff -> starting: attempt 2, resuming from {0} (--resume_from_checkpoint {0})", newest.display());
    assert!(all.iter().any(|(_, m)| *m == expected), "no {expected:?} in {all:?}");
    let stdout = |id: &str| std::fs::read_to_string(daemon.job_dir(id).join("stdout.log")).unwrap();
    let digest = |text: &str| text.lines().find_map(|l| l.strip_prefix("weights_sha256 ")).map(str::to_string);
    assert!(stdout(&interrupted.id).contains(&format!("resuming from {}", newest.display())));
    assert_eq!(digest(&stdout(&interrupted.id)), digest(&stdout(&reference.id)), "the uninterrupted run's weights");
    assert!(digest(&stdout(&reference.id)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainer_proc_and_the_sdk_checkpointing_every_10_steps_and_killed_at_75_resume_from_70() {
    let daemon = Daemon::start(&["--gpus", "none", "--slots", "2"]);
    let mut client = daemon.client().await;
    let args =
        ["--epochs", "1", "--steps-per-epoch", "100", "--hidden", "64", "--checkpoint-every", "10", "--device", "cpu"];
    let proc = pb::SubmitJobRequest {
        name: "trainer-proc".into(),
        command: std::iter::once(bin("trainer-proc").display().to_string()).chain(args.map(String::from)).collect(),
        env: vec![pb::EnvVar { name: "TRAINER_FAULT".into(), value: "crash@75".into() }],
        backoff_base_ms: Some(0),
        ..Default::default()
    };
    let sdk = repo().join("sdk/python/src").display().to_string();
    let code = format!(
        "import os, signal, sys\nsys.path.insert(0, {sdk:?})\nimport trainerd\n\
         run = trainerd.Run(total_steps=100)\nstate = run.resume()\nstart = state['step'] if state else 0\n\
         print('started at', start, flush=True)\nfor step in range(start + 1, 101):\n    run.step(loss=1.0 / step)\n    \
         if step % 10 == 0:\n        run.checkpoint({{'step': step}})\n    \
         if step == 75 and run.attempt == 1:\n        os.kill(os.getpid(), signal.SIGKILL)\nrun.complete()"
    );
    let work = tempfile::tempdir().unwrap();
    let sdk_job = script("sdk", &code, work.path());
    for req in [proc, sdk_job] {
        let name = req.name.clone();
        let job = submit(&mut client, req).await;
        let done = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
        assert_eq!((done.state(), done.attempt, done.step), (JobState::Completed, 2, 100), "{name}: {done:?}");
        assert!(done.resumed_from.ends_with("step-000000000070"), "{name} resumed from {:?}", done.resumed_from);
        assert!(!done.resume_ignored, "{name}");
    }
}

#[tokio::test]
async fn a_trainer_that_ignores_its_checkpoint_is_flagged_resume_ignored() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    let env = [("FAKE_FAULT", "crash@12"), ("FAKE_IGNORE_RESUME", "1")];
    let job = submit(&mut client, fake_job("ignores", &env)).await;
    let done = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt), (JobState::Completed, 2));
    assert!(done.resume_ignored, "{done:?}");
    assert_eq!(done.weights_sha256, "fake-20-0", "it did start over");
    let all = events(&mut client, &job.id).await;
    let (_, message) = all.iter().find(|(k, _)| k == "resume_ignored").unwrap_or_else(|| panic!("{all:?}"));
    assert!(message.starts_with("attempt 2 was given the checkpoint at step 10 ("), "{message}");
    assert!(message.contains("and reported step 1 first: it started over instead of resuming"), "{message}");
    let health = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.resume_ignored, 1, "{health:?}");
    // A trainer that does resume is not flagged.
    let good = submit(&mut client, fake_job("resumes", &[("FAKE_FAULT", "crash@12")])).await;
    let done = watch_until(&mut client, &good.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((done.attempt, done.resume_ignored, done.weights_sha256.as_str()), (2, false, "fake-20-10"));
}
