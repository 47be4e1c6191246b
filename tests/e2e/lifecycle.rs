//! After a job ends: a retry continues a failed or cancelled job from its checkpoint as the same job;
//! removal and the retention policy delete finished jobs only, with their files, across restarts.

use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;
use trainctl::Client;
use trainerd_proto::state::is_terminal;
use trainerd_proto::v1::{self as pb, JobState};
use trainerd_tests::{bin, events, fake_job, submit, watch_until, Daemon, OutputWithin};

const LIMIT: Duration = Duration::from_secs(60);

fn ended(j: &pb::Job) -> bool {
    is_terminal(j.state())
}

async fn retry(client: &mut Client, id: &str, from_start: bool, key: &str) -> Result<pb::Job, tonic::Status> {
    let req = pb::RetryJobRequest { id: id.into(), from_start, request_key: key.into() };
    client.retry_job(req).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn a_failed_job_is_retried_from_its_checkpoint_as_the_same_job_and_a_completed_one_never() {
    let daemon = Daemon::start(&["--gpus", "none", "--backoff-base", "0"]);
    let mut client = daemon.client().await;
    // Exit 78 at step 12 (a permanent failure: not restarted), past the checkpoint at step 10.
    let failing = fake_job("failing", &[("FAKE_FAULT", "exit@12:78"), ("FAKE_CHECKPOINT_EVERY", "5")]);
    let job = submit(&mut client, failing).await;
    let failed = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((failed.state(), failed.latest_checkpoint.as_ref().map(|c| c.step)), (JobState::Failed, Some(10)));

    // The same request twice (a script run twice): queued once.
    let retried = retry(&mut client, &job.id, false, "once").await.expect("retry");
    assert_eq!((retried.id.as_str(), retried.state()), (job.id.as_str(), JobState::Queued));
    let again = retry(&mut client, &job.id, false, "once").await.expect("the same key answers again");
    assert_eq!(again.id, job.id);
    let done = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt, done.step), (JobState::Completed, 2, 20), "{}", done.message);
    assert_eq!(done.weights_sha256, "fake-20-10", "attempt 2 began at the checkpoint's step 10, not at 0");
    let all = events(&mut client, &job.id).await;
    let retries: Vec<_> = all.iter().filter(|(_, m)| m.contains("retried by")).collect();
    assert_eq!(retries.len(), 1, "{all:?}");
    assert!(
        retries[0].1.starts_with("failed -> queued: retried by uid 0 (root): continues from step 10"),
        "{retries:?}"
    );
    assert!(all.iter().any(|(k, _)| k == "submitted"), "the history is the job's own: {all:?}");

    // A completed job never runs again; a paused one is told to resume.
    let refused = retry(&mut client, &job.id, false, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("is completed: a completed job never runs again"), "{}", refused.message());
}

#[tokio::test]
async fn a_job_without_a_checkpoint_is_retried_from_the_start_only_when_asked() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    // A permanent failure at step 3, before any checkpoint.
    let failing = fake_job("no-checkpoints", &[("FAKE_FAULT", "exit@3:78"), ("FAKE_CHECKPOINT_EVERY", "0")]);
    let job = submit(&mut client, failing).await;
    let failed = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((failed.state(), failed.latest_checkpoint.is_none()), (JobState::Failed, true));
    let refused = retry(&mut client, &job.id, false, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("has no checkpoint, so a retry starts from step 0"), "{}", refused.message());
    let retried = retry(&mut client, &job.id, true, "").await.expect("retry from the start");
    assert_eq!(retried.state(), JobState::Queued);
    let done = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt, done.weights_sha256.as_str()), (JobState::Completed, 2, "fake-20-0"));
}

fn trainctl(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(bin("trainctl")).env("TRAINERD_SOCKET", daemon.socket()).args(args).output_within().unwrap()
}

/// Waits until the store lists exactly `ids`, in any order (the retention policy runs after READY).
async fn until_listed(client: &mut Client, ids: &[&str]) {
    let mut want: Vec<&str> = ids.to_vec();
    want.sort();
    let deadline = Instant::now() + LIMIT;
    loop {
        let jobs = client.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs;
        let mut have: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
        have.sort();
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "listed {have:?}, expected {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn removal_and_retention_delete_finished_jobs_only_by_count_and_by_age_across_restarts() {
    let mut daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    let mut finished = Vec::new();
    for name in ["first", "second", "third", "fourth"] {
        let job = submit(&mut client, fake_job(name, &[("FAKE_STEPS", "3"), ("FAKE_CHECKPOINT_EVERY", "1")])).await;
        watch_until(&mut client, &job.id, LIMIT, ended).await;
        finished.push(job.id);
    }
    let running = submit(&mut client, fake_job("running", &[("FAKE_STEPS", "100000")])).await;
    watch_until(&mut client, &running.id, LIMIT, |j| j.step > 0).await;

    // rm: refused, with nothing removed, when one named job still runs; a finished one goes whole.
    let out = trainctl(&daemon, &["rm", &finished[0], &running.id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only finished"), "{out:?}");
    let df = trainctl(&daemon, &["--json", "df"]);
    let usage: serde_json::Value = serde_json::from_slice(&df.stdout).expect("df --json");
    assert!(usage["total_bytes"].as_u64().unwrap() > 0 && usage["jobs"].as_array().unwrap().len() == 5, "{usage}");
    let out = trainctl(&daemon, &["--json", "rm", "--keep-final-checkpoint", &finished[0]]);
    assert!(out.status.success(), "{out:?}");
    assert!(!daemon.job_dir(&finished[0]).exists(), "the job directory went with it");
    let removed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("rm --json");
    let kept = removed["removed"][0]["kept_checkpoint"].as_str().expect("the final checkpoint was kept");
    assert!(
        kept.starts_with(&daemon.state_dir().join("kept").display().to_string()) && std::path::Path::new(kept).exists(),
        "{removed}"
    );
    let mut left: Vec<&str> = finished[1..].iter().map(String::as_str).collect();
    left.push(&running.id);
    until_listed(&mut client, &left).await;

    // By count, at the next start: the newest finished job stays, and the running one.
    daemon.extra = ["--gpus", "none", "--keep-finished", "1"].map(String::from).to_vec();
    daemon.restart();
    let mut client = daemon.client().await;
    until_listed(&mut client, &[&finished[3], &running.id]).await;
    for gone in &finished[1..3] {
        assert!(!daemon.job_dir(gone).exists(), "job {gone}'s directory is left");
    }
    assert!(daemon.job_dir(&finished[3]).exists());

    // By age: finished more than 0.5 s ago (0.000006 days) is gone; the running job never is.
    tokio::time::sleep(Duration::from_millis(600)).await;
    daemon.extra = ["--gpus", "none", "--keep-finished-days", "0.000006"].map(String::from).to_vec();
    daemon.restart();
    let mut client = daemon.client().await;
    until_listed(&mut client, &[&running.id]).await;
    let still = client.get_job(pb::GetJobRequest { id: running.id.clone() }).await.unwrap().into_inner();
    assert_eq!(still.state(), JobState::Running, "re-adopted and left alone");
}

/// trainer-proc, slow enough (a wider model, 400 steps) that its progress file shows many steps.
fn diverging_job(name: &str, env: &[(&str, &str)], on: &str, max_rollbacks: u32) -> pb::SubmitJobRequest {
    let args = [
        "--epochs",
        "4",
        "--steps-per-epoch",
        "100",
        "--hidden",
        "256,256",
        "--checkpoint-every",
        "10",
        "--patience",
        "0",
        "--device",
        "cpu",
    ];
    pb::SubmitJobRequest {
        name: name.into(),
        command: std::iter::once(bin("trainer-proc").display().to_string()).chain(args.map(String::from)).collect(),
        env: env.iter().map(|(k, v)| pb::EnvVar { name: k.to_string(), value: v.to_string() }).collect(),
        on_divergence: Some(on.into()),
        spike_window: Some(5),
        spike_steps: Some(2),
        max_rollbacks: Some(max_rollbacks),
        backoff_base_ms: Some(0),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_loss_is_rolled_back_to_the_checkpoint_before_it_fails_when_asked_and_rollbacks_are_bounded() {
    let daemon = Daemon::start(&["--gpus", "none", "--heartbeat-interval", "0.05", "--slots", "4"]);
    let mut client = daemon.client().await;
    let reference = submit(&mut client, diverging_job("reference", &[], "ignore", 3)).await;
    let nan = submit(&mut client, diverging_job("nan", &[("TRAINER_FAULT", "nan@150")], "rollback", 3)).await;
    let spike = submit(&mut client, diverging_job("spike", &[("TRAINER_FAULT", "spike@150")], "rollback", 3)).await;
    let fail = submit(&mut client, diverging_job("fail", &[("TRAINER_FAULT", "nan@150")], "fail", 3)).await;
    let every = [("TRAINER_FAULT", "nan@150"), ("TRAINER_FAULT_EVERY_ATTEMPT", "1")];
    let bounded = submit(&mut client, diverging_job("bounded", &every, "rollback", 2)).await;
    let limit = Duration::from_secs(240);
    let reference = watch_until(&mut client, &reference.id, limit, ended).await.pop().unwrap();
    assert_eq!(reference.state(), JobState::Completed, "{}", reference.message);
    for job in [&nan, &spike] {
        let done = watch_until(&mut client, &job.id, limit, ended).await.pop().unwrap();
        assert_eq!((done.state(), done.rollbacks, done.attempt), (JobState::Completed, 1, 2), "{}", done.message);
        assert_eq!(
            done.weights_sha256, reference.weights_sha256,
            "{}: the rollback reran what diverged exactly",
            job.name
        );
        let all = events(&mut client, &job.id).await;
        let (_, diverged) = all.iter().find(|(k, _)| k == "diverged").expect("a diverged event");
        let first: u64 = diverged["loss diverged from step ".len()..].split(' ').next().unwrap().parse().unwrap();
        assert!(first >= 150, "{diverged}");
        let (_, resumed) = all.iter().find(|(_, m)| m.contains("attempt 2, resuming from")).expect("a resume");
        let from: u64 =
            resumed.rsplit("step-").next().unwrap().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap();
        // The newest checkpoint left before the divergence (the trainer prunes to its last few, and
        // those written from step `first` on were set aside), never step 0.
        assert!(from < first && from >= 100, "resumed at {from}, diverged at {first}: {resumed}");
        let dir = daemon.job_dir(&job.id).join("trainer/checkpoints");
        let aside: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".diverged-step-"))
            .collect();
        assert!(!aside.is_empty(), "the diverged checkpoints were set aside, not deleted");
    }
    let failed = watch_until(&mut client, &fail.id, limit, ended).await.pop().unwrap();
    assert_eq!((failed.state(), failed.reason(), failed.attempt), (JobState::Failed, pb::Reason::Diverged, 1));
    let bounded = watch_until(&mut client, &bounded.id, limit, ended).await.pop().unwrap();
    assert_eq!(
        (bounded.state(), bounded.reason(), bounded.rollbacks, bounded.attempt),
        (JobState::Failed, pb::Reason::Diverged, 2, 3),
        "two rollbacks, then the third divergence fails it: {}",
        bounded.message
    );
}
