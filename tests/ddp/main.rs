//! Multi-process jobs: `torchrun --standalone --nproc-per-node 2` running `examples/ddp_torchrun.py`
//! (DDP on gloo, real PyTorch from the project venv) under the real trainerd. Every way through
//! (uninterrupted across a SIGKILL of trainerd, paused and resumed, a rank SIGKILLed, a rank stopped
//! so that rank 0 blocks in the all-reduce while its heartbeat thread beats) ends with the weights of
//! an uninterrupted run outside trainerd; a cancel leaves no process of any rank.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use trainerd_proto::state::is_terminal;
use trainerd_proto::v1::{self as pb, JobState};
use trainerd_tests::{events, job_processes, submit, wait_gone, watch_until, Daemon, OutputWithin};

const LIMIT: Duration = Duration::from_secs(240);
const EPOCHS: &str = "4";
const STEPS_PER_EPOCH: u64 = 8;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn torchrun() -> PathBuf {
    let torchrun = repo().join(".venv/bin/torchrun");
    assert!(torchrun.exists(), "{} is missing: run scripts/setup.sh (it installs torch)", torchrun.display());
    torchrun
}

/// The job: torchrun with two CPU ranks, `args` for the script.
fn ddp_job(name: &str, workdir: &Path, args: &[&str]) -> pb::SubmitJobRequest {
    let mut command = vec![torchrun().display().to_string()];
    command.extend(["--standalone", "--nproc-per-node", "2"].map(String::from));
    command.push(repo().join("examples/ddp_torchrun.py").display().to_string());
    command.extend(["--epochs", EPOCHS, "--steps-per-epoch", &STEPS_PER_EPOCH.to_string()].map(String::from));
    command.extend(args.iter().map(|a| a.to_string()));
    pb::SubmitJobRequest {
        name: name.into(),
        command,
        workdir: workdir.display().to_string(),
        env: vec![pb::EnvVar { name: "OMP_NUM_THREADS".into(), value: "1".into() }],
        stop_grace_ms: Some(3_000),
        ..Default::default()
    }
}

/// The digest of an uninterrupted run outside trainerd (the SDK's standalone mode).
fn uninterrupted_digest(dir: &Path) -> String {
    let out = Command::new(torchrun())
        .args(["--standalone", "--nproc-per-node", "2"])
        .arg(repo().join("examples/ddp_torchrun.py"))
        .args(["--epochs", EPOCHS, "--steps-per-epoch", &STEPS_PER_EPOCH.to_string()])
        .current_dir(dir)
        .env("OMP_NUM_THREADS", "1")
        .output_within()
        .expect("torchrun");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let digest = stdout.lines().find_map(|l| l.strip_prefix("weights_sha256 ")).expect("a digest line");
    digest.to_string()
}

/// The pid of rank `rank` of the job (a process with `RANK=<rank>` in its environment).
fn rank_pid(daemon: &Daemon, id: &str, rank: u32) -> Option<u32> {
    let wanted = format!("RANK={rank}");
    job_processes(&daemon.state_dir(), id).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
    })
}

fn done(j: &pb::Job) -> bool {
    is_terminal(j.state())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchrun_ddp_job_ends_with_the_uninterrupted_weights_through_pause_kill_hang_and_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let baseline = uninterrupted_digest(scratch.path());
    let mut daemon =
        Daemon::start(&["--heartbeat-interval", "0.2", "--gpus", "none", "--slots", "4", "--backoff-base", "0"]);
    let mut client = daemon.client().await;
    let slow = ["--step-sleep", "0.1"];
    let plain = submit(&mut client, ddp_job("plain", scratch.path(), &["--step-sleep", "0.3"])).await;
    let paused = submit(&mut client, ddp_job("paused", scratch.path(), &["--step-sleep", "0.3"])).await;
    let killed = submit(&mut client, ddp_job("killed", scratch.path(), &slow)).await;
    let mut req = ddp_job("hung", scratch.path(), &slow);
    req.progress_timeout_ms = Some(8_000);
    let hung = submit(&mut client, req).await;

    // Paused mid-epoch: every rank leaves at the same epoch's end; resumed from there.
    watch_until(&mut client, &paused.id, LIMIT, |j| j.step >= 3).await;
    client.pause_job(pb::PauseJobRequest { id: paused.id.clone() }).await.expect("pause");

    // trainerd itself SIGKILLed and restarted while the jobs run: the plain one is re-adopted.
    let before = watch_until(&mut client, &plain.id, LIMIT, |j| j.step >= 5 || done(j)).await.pop().unwrap();
    assert_eq!(before.state(), JobState::Running, "mid-run when trainerd is killed: {}", before.message);
    daemon.restart();
    let mut client = daemon.client().await;

    // A rank SIGKILLed mid-epoch, past the first checkpoint: one restart, from that checkpoint.
    watch_until(&mut client, &killed.id, LIMIT, |j| j.latest_checkpoint.is_some() && j.step >= 10).await;
    let rank1 = rank_pid(&daemon, &killed.id, 1).expect("rank 1 of the killed job");
    // SAFETY: kill(2) on a process of this test's job.
    unsafe { libc::kill(rank1 as i32, libc::SIGKILL) };

    // A rank stopped mid-epoch: rank 0 waits in the all-reduce, its heartbeat thread beating.
    watch_until(&mut client, &hung.id, LIMIT, |j| j.latest_checkpoint.is_some() && j.step >= 10).await;
    let rank1 = rank_pid(&daemon, &hung.id, 1).expect("rank 1 of the hung job");
    // SAFETY: as above.
    unsafe { libc::kill(rank1 as i32, libc::SIGSTOP) };

    let at = watch_until(&mut client, &paused.id, LIMIT, |j| j.state() == JobState::Paused || done(j)).await;
    let at = at.last().unwrap();
    let signalled = events(&mut client, &paused.id).await;
    let stderr = std::fs::read_to_string(daemon.job_dir(&paused.id).join("stderr.log")).unwrap_or_default();
    assert_eq!(
        (at.state(), at.step % STEPS_PER_EPOCH),
        (JobState::Paused, 0),
        "{}: {signalled:?}\nits stderr:\n{}",
        at.message,
        &stderr[stderr.len().saturating_sub(4000)..]
    );
    assert!(
        signalled.iter().any(|(k, m)| k == "pause_signalled" && m.starts_with("SIGUSR1 to 2 processes")),
        "both ranks, and not the launcher, got SIGUSR1: {signalled:?}"
    );

    client.resume_job(pb::ResumeJobRequest { id: paused.id.clone() }).await.expect("resume");

    let deadline = Instant::now() + LIMIT;
    let mut ends = Vec::new();
    for id in [&plain.id, &paused.id, &killed.id, &hung.id] {
        let left = deadline.saturating_duration_since(Instant::now());
        ends.push(watch_until(&mut client, id, left, done).await.pop().unwrap());
    }
    for end in &ends {
        assert_eq!(end.state(), JobState::Completed, "{}: {}", end.name, end.message);
        assert_eq!(end.step, 4 * STEPS_PER_EPOCH, "{}", end.name);
        assert_eq!(end.weights_sha256, baseline, "{} ends with the uninterrupted weights", end.name);
    }
    let [plain_end, paused_end, killed_end, hung_end] = &ends[..] else { unreachable!() };
    assert_eq!((plain_end.attempt, plain_end.restarts), (1, 0), "re-adopted, never restarted");
    if paused_end.attempt != 2 {
        let seen = events(&mut client, &paused.id).await;
        let stderr = std::fs::read_to_string(daemon.job_dir(&paused.id).join("stderr.log")).unwrap_or_default();
        panic!(
            "paused once, resumed once, but {} attempts: {seen:?}\nits stderr:\n{}",
            paused_end.attempt,
            &stderr[stderr.len().saturating_sub(4000)..]
        );
    }
    for (end, id) in [(killed_end, &killed.id), (hung_end, &hung.id)] {
        if (end.attempt, end.restarts) != (2, 1) {
            let seen = events(&mut client, id).await;
            panic!("{}: one restart, not a loop, but attempt {}: {seen:?}", end.name, end.attempt);
        }
    }
    let hung_events = events(&mut client, &hung.id).await;
    assert!(
        hung_events.iter().any(|(k, m)| k == "stalled" && m.contains("(progress_timeout; heartbeats went on)")),
        "{hung_events:?}"
    );
    for (job, events) in [(&killed.id, events(&mut client, &killed.id).await), (&hung.id, hung_events)] {
        assert!(
            events.iter().any(|(k, m)| k == "transition" && m.contains("attempt 2, resuming from")),
            "job {job} resumed from a checkpoint: {events:?}"
        );
    }
    for job in [&plain.id, &paused.id, &killed.id, &hung.id] {
        assert!(job_processes(&daemon.state_dir(), job).is_empty(), "job {job} left processes behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_torchrun_job_leaves_no_process_of_any_rank() {
    let scratch = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&["--heartbeat-interval", "0.2", "--gpus", "none"]);
    let mut client = daemon.client().await;
    let job = submit(&mut client, ddp_job("cancelled", scratch.path(), &["--step-sleep", "0.2"])).await;
    watch_until(&mut client, &job.id, LIMIT, |j| j.step >= 2).await;
    let ranks: Vec<u32> = (0..2).filter_map(|r| rank_pid(&daemon, &job.id, r)).collect();
    assert_eq!(ranks.len(), 2, "two ranks run");
    let all = job_processes(&daemon.state_dir(), &job.id);
    let cancelled = client.cancel_job(pb::CancelJobRequest { id: job.id.clone() }).await.expect("cancel").into_inner();
    assert_eq!(cancelled.state(), JobState::Cancelled, "{}", cancelled.message);
    // Cancel answers once the job's process group is gone; ranks in sessions of their own go with
    // their shim, which kills whatever descends from it before it exits.
    for pid in all {
        wait_gone(pid, Duration::from_secs(60));
    }
    assert!(job_processes(&daemon.state_dir(), &job.id).is_empty());
}
