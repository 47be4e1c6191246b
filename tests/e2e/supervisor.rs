//! The supervisor: jobs run to completion, restart from their latest checkpoint after a crash, are
//! stopped when they stall, and end as the exit-code contract and the restart budget say.

use std::time::Duration;
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::{JobState, Reason};
use trainerd_tests::{events, fake_job, submit, trainer_proc_job, watch_until, Daemon};

const LIMIT: Duration = Duration::from_secs(60);

fn ended(job: &pb::Job) -> bool {
    trainerd_proto::state::is_terminal(job.state())
}

#[tokio::test]
async fn a_job_runs_to_completed_with_its_step_digest_and_exit_code() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let job = submit(&mut client, fake_job("plain", &[])).await;
    assert_eq!(job.state(), JobState::Queued);
    let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
    let last = seen.last().unwrap();
    assert_eq!((last.state(), last.reason()), (JobState::Completed, Reason::Completed));
    assert_eq!((last.step, last.exit_code, last.attempt), (20, Some(0), 1));
    assert_eq!(last.weights_sha256, "fake-20-0");
    let states: Vec<JobState> = seen.iter().map(|j| j.state()).collect();
    assert!(states.contains(&JobState::Running), "{states:?}");
    // What the store says after the fact agrees with what was streamed.
    let got = client.get_job(pb::GetJobRequest { id: job.id.clone() }).await.unwrap().into_inner();
    assert_eq!((got.state(), got.step, got.weights_sha256.as_str()), (JobState::Completed, 20, "fake-20-0"));
}

#[tokio::test]
async fn a_sigkilled_trainer_restarts_from_its_latest_checkpoint() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let job = submit(&mut client, fake_job("crash", &[("FAKE_FAULT", "crash@12")])).await;
    let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), JobState::Completed);
    assert_eq!((last.restarts, last.attempt), (1, 2));
    assert_eq!(last.weights_sha256, "fake-20-10", "resumed from the step-10 checkpoint, not from 0");
    let backoff = seen.iter().find(|j| j.state() == JobState::Backoff).expect("a backoff state");
    assert_eq!(backoff.reason(), Reason::Crashed);
    assert!(backoff.message.contains("killed by signal 9"), "{}", backoff.message);
}

#[tokio::test]
async fn a_hung_trainer_is_stopped_after_the_heartbeat_timeout_and_restarted() {
    let daemon = Daemon::start(&["--heartbeat-interval", "0.1"]);
    let mut client = daemon.client().await;
    let mut req = fake_job("hang", &[("FAKE_FAULT", "hang@6"), ("FAKE_CHILDREN", "1")]);
    req.heartbeat_timeout_ms = Some(800);
    req.stop_grace_ms = Some(300);
    let job = submit(&mut client, req).await;
    let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
    assert!(seen.iter().any(|j| j.stalled), "the late heartbeat was flagged before the timeout");
    let stopping = seen.iter().find(|j| j.state() == JobState::Stopping).expect("a stopping state");
    assert_eq!(stopping.reason(), Reason::Stalled);
    let last = seen.last().unwrap();
    assert_eq!((last.state(), last.attempt, last.weights_sha256.as_str()), (JobState::Completed, 2, "fake-20-5"));
    let all = events(&mut client, &job.id).await;
    let kinds: Vec<&str> = all.iter().map(|e| e.0.as_str()).collect();
    for kind in ["heartbeat_late", "stalled", "killed"] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    // When: trainerd's own measure of the silence at detection, from the last heartbeat it saw. Never
    // before the timeout; no later than the timeout plus a generous allowance for a loaded machine
    // (the deadline is a timer armed for the exact moment, not a poll).
    let silence = stalled_after(&all);
    assert!((0.8..=1.8).contains(&silence), "stalled after {silence} s of silence; the timeout is 0.8 s");
}

#[tokio::test]
async fn a_loop_stuck_while_its_heartbeat_thread_beats_is_stopped_by_the_progress_deadline_and_resumed() {
    let daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--backoff-base", "0"]);
    let mut client = daemon.client().await;
    // trainer-proc's loop blocks at step 25 while its reporter keeps beating every 0.1 s.
    let mut req = trainer_proc_job("stuck", 2, &[("TRAINER_FAULT", "stuck@25")]);
    req.heartbeat_timeout_ms = Some(5_000);
    req.progress_timeout_ms = Some(1_500);
    req.stop_grace_ms = Some(300);
    let job = submit(&mut client, req).await;
    let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
    let last = seen.last().unwrap();
    assert_eq!((last.state(), last.attempt, last.step), (JobState::Completed, 2, 40), "{}", last.message);
    let all = events(&mut client, &job.id).await;
    let (_, stalled) = all.iter().find(|(k, _)| k == "stalled").expect("a stalled event");
    assert!(stalled.starts_with("no progress for ") && stalled.contains("at step 25 (progress_timeout"), "{stalled}");
    let after: f64 = stalled["no progress for ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!((1.5..=3.0).contains(&after), "stopped after {after} s without progress; the deadline is 1.5 s");
    // From the latest checkpoint (every 7 steps: 21), not from step 0.
    assert!(all.iter().any(|(_, m)| m.contains("step-000000000021")), "{all:?}");
}

#[tokio::test]
async fn a_checkpoint_completed_but_never_reported_is_found_in_the_checkpoint_directory_and_resumed_from() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    // Attempt 1 renames a checkpoint into place and dies before any progress write names it (exit 75:
    // retry me from my latest checkpoint); attempt 2 prints what it was handed.
    let script = "if [ \"$TRAINERD_ATTEMPT\" = 1 ]; then \
                  echo 7 > \"$TRAINERD_CHECKPOINT_DIR/step-7.tmp\"; \
                  mv \"$TRAINERD_CHECKPOINT_DIR/step-7.tmp\" \"$TRAINERD_CHECKPOINT_DIR/step-7\"; exit 75; fi; \
                  echo \"RESUME=${TRAINERD_RESUME_FROM:-none}\"; exit 0";
    let req = pb::SubmitJobRequest {
        name: "unreported".into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        backoff_base_ms: Some(0),
        ..Default::default()
    };
    let job = submit(&mut client, req).await;
    let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
    let last = seen.last().unwrap();
    assert_eq!((last.state(), last.attempt), (JobState::Completed, 2), "{last:?}");
    let found = daemon.job_dir(&job.id).join("trainer/checkpoints/step-7");
    let stdout = std::fs::read_to_string(daemon.job_dir(&job.id).join("stdout.log")).unwrap();
    assert_eq!(stdout.trim(), format!("RESUME={}", found.display()), "attempt 2 was not handed the checkpoint");
    let all = events(&mut client, &job.id).await;
    assert!(
        all.iter()
            .any(|(_, m)| m.contains("attempt 2, resuming from") && m.contains("found in the checkpoint directory")),
        "{all:?}"
    );
}

/// The silence, in seconds, that the `stalled` event says trainerd measured.
fn stalled_after(events: &[(String, String)]) -> f64 {
    let (_, message) = events.iter().find(|(k, _)| k == "stalled").expect("a stalled event");
    let rest = message.strip_prefix("no heartbeat for ").expect(message);
    rest.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{message}"))
}

#[tokio::test]
async fn a_trainer_that_never_heartbeats_is_stopped_at_its_startup_grace_not_later() {
    let daemon = Daemon::start(&["--heartbeat-interval", "0.1"]);
    let mut client = daemon.client().await;
    let mut req = fake_job("silent-start", &[("FAKE_START_MS", "600000")]);
    req.protocol = Some("v1".into());
    req.startup_grace_ms = Some(1000);
    req.stop_grace_ms = Some(200);
    req.on_failure = Some("fail".into());
    let job = submit(&mut client, req).await;
    let last = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.reason()), (JobState::Failed, Reason::Stalled));
    let all = events(&mut client, &job.id).await;
    let (_, message) = all.iter().find(|(k, _)| k == "stalled").unwrap();
    assert!(message.contains("(startup_grace)"), "{message}");
    let silence = stalled_after(&all);
    assert!((1.0..=2.0).contains(&silence), "stalled after {silence} s; the startup grace is 1 s");
}

#[tokio::test]
async fn a_stall_with_on_failure_fail_ends_failed_stalled() {
    let daemon = Daemon::start(&["--heartbeat-interval", "0.1"]);
    let mut client = daemon.client().await;
    let mut req = fake_job("hang-fail", &[("FAKE_FAULT", "hang@3")]);
    req.heartbeat_timeout_ms = Some(600);
    req.stop_grace_ms = Some(200);
    req.on_failure = Some("fail".into());
    let job = submit(&mut client, req).await;
    let last = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.reason(), last.attempt), (JobState::Failed, Reason::Stalled, 1));
}

#[tokio::test]
async fn a_slow_trainer_that_keeps_its_heartbeat_is_never_killed() {
    let daemon = Daemon::start(&["--heartbeat-interval", "0.1"]);
    let mut client = daemon.client().await;
    // Each step takes longer than the heartbeat timeout; the heartbeat thread keeps beating.
    let mut req = fake_job("slow", &[("FAKE_STEPS", "3"), ("FAKE_STEP_MS", "1200"), ("FAKE_CHECKPOINT_EVERY", "0")]);
    req.heartbeat_timeout_ms = Some(800);
    let job = submit(&mut client, req).await;
    let last = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.attempt), (JobState::Completed, 1));
}

#[tokio::test]
async fn exit_codes_follow_the_contract_and_the_budget_ends_in_failed() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let retry = submit(&mut client, fake_job("retry", &[("FAKE_FAULT", "exit@7:75")])).await;
    let permanent = submit(&mut client, fake_job("permanent", &[("FAKE_FAULT", "exit@7:78")])).await;
    let mut req = fake_job("budget", &[("FAKE_FAULT", "exit@2:75"), ("FAKE_FAULT_EVERY_ATTEMPT", "1")]);
    req.max_restarts = Some(2);
    let budget = submit(&mut client, req).await;

    let last = watch_until(&mut client, &retry.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.attempt, last.weights_sha256.as_str()), (JobState::Completed, 2, "fake-20-5"));
    let last = watch_until(&mut client, &permanent.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!(
        (last.state(), last.reason(), last.attempt, last.exit_code),
        (JobState::Failed, Reason::PermanentExit, 1, Some(78))
    );
    let last = watch_until(&mut client, &budget.id, LIMIT, ended).await.pop().unwrap();
    // The cause stays the reason (exit 75, retryable); the spent budget is its own field and message.
    assert_eq!(
        (last.state(), last.reason(), last.attempt, last.restarts_exhausted),
        (JobState::Failed, Reason::RetryableExit, 3, true)
    );
    assert!(
        last.message.contains("the restart budget is spent") && last.message.contains("max_restarts 2"),
        "{}",
        last.message
    );
}

#[tokio::test]
async fn a_daemon_restart_in_the_middle_of_a_backoff_keeps_the_count() {
    let mut daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let mut req = fake_job("backoff", &[("FAKE_FAULT", "exit@2:75"), ("FAKE_FAULT_EVERY_ATTEMPT", "1")]);
    req.max_restarts = Some(3);
    req.backoff_base_ms = Some(1500);
    let job = submit(&mut client, req).await;
    watch_until(&mut client, &job.id, LIMIT, |j| j.state() == JobState::Backoff && j.attempt == 2).await;
    daemon.restart();
    let mut client = daemon.client().await;
    let last = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.reason(), last.restarts_exhausted), (JobState::Failed, Reason::RetryableExit, true));
    assert_eq!(last.attempt, 4, "1 start + 3 restarts, counted across the daemon restart");
}

#[tokio::test]
async fn corrupt_or_oversized_progress_files_only_warn() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let garbage =
        submit(&mut client, fake_job("garbage", &[("FAKE_FAULT", "garbage@5"), ("FAKE_STEP_MS", "40")])).await;
    let huge = submit(&mut client, fake_job("huge", &[("FAKE_FAULT", "huge@5"), ("FAKE_STEP_MS", "40")])).await;
    for (job, what) in [(&garbage, "not a valid protocol v1 object"), (&huge, "over the 65536-byte limit")] {
        let last = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
        assert_eq!((last.state(), last.attempt, last.step), (JobState::Completed, 1, 20));
        let warnings: Vec<String> =
            events(&mut client, &job.id).await.into_iter().filter(|e| e.0 == "progress_invalid").map(|e| e.1).collect();
        assert!(warnings.iter().any(|w| w.contains(what)), "{warnings:?}");
    }
}

fn live_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        if fields[2].parse::<u32>() == Ok(pgid) && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}

#[tokio::test]
async fn cancel_leaves_no_process_of_the_group_and_records_who() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let mut req = fake_job("grandchildren", &[("FAKE_CHILDREN", "2"), ("FAKE_FAULT", "hang@3")]);
    req.stop_grace_ms = Some(300);
    let job = submit(&mut client, req).await;
    let running = watch_until(&mut client, &job.id, LIMIT, |j| j.state() == JobState::Running && j.step >= 3).await;
    let pgid = running.last().unwrap().pid.expect("a running job shows its pid");
    assert_eq!(live_members(pgid).len(), 3, "the trainer and its two grandchildren");
    let health = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!((health.divergent, health.status.as_str()), (0, "ok"), "a running job's record matches its process");
    let cancelled = client.cancel_job(pb::CancelJobRequest { id: job.id.clone() }).await.unwrap().into_inner();
    assert_eq!(cancelled.state(), JobState::Cancelled, "the reply comes once the job is cancelled");
    assert!(live_members(pgid).is_empty(), "left alive: {:?}", live_members(pgid));
    assert!(cancelled.cancelled_by.starts_with("uid "), "{}", cancelled.cancelled_by);
    let err = client.cancel_job(pb::CancelJobRequest { id: job.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn a_job_actor_panic_neither_loses_nor_duplicates_the_job() {
    let daemon = Daemon::start(&["--test-hooks"]);
    let mut client = daemon.client().await;
    let job =
        submit(&mut client, fake_job("panic", &[("TRAINERD_TEST_PANIC_AFTER_STEP", "5"), ("FAKE_STEP_MS", "40")]))
            .await;
    let last = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((last.state(), last.attempt, last.weights_sha256.as_str()), (JobState::Completed, 1, "fake-20-0"));
    let kinds: Vec<String> = events(&mut client, &job.id).await.into_iter().map(|e| e.0).collect();
    assert!(kinds.contains(&"actor_restarted".to_string()), "{kinds:?}");
    let all = client.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn trainer_proc_killed_mid_epoch_resumes_to_the_same_weights() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let job = |name: &str, fault: Option<&str>| {
        trainer_proc_job(name, 3, &fault.map(|f| ("TRAINER_FAULT", f)).into_iter().collect::<Vec<_>>())
    };
    let reference = submit(&mut client, job("reference", None)).await;
    let crashed = submit(&mut client, job("crashed", Some("crash@31"))).await;
    let reference = watch_until(&mut client, &reference.id, LIMIT, ended).await.pop().unwrap();
    let crashed = watch_until(&mut client, &crashed.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!((reference.state(), crashed.state()), (JobState::Completed, JobState::Completed));
    assert_eq!((crashed.attempt, crashed.step), (2, 60));
    assert_eq!(crashed.weights_sha256, reference.weights_sha256);
    assert_eq!(reference.weights_sha256.len(), 64);
    // Equal weights cannot tell a resume from a deterministic rerun from step 0: attempt 2 must have
    // been handed the checkpoint and taken only the steps after it.
    let all = events(&mut client, &crashed.id).await;
    let resumed = all.iter().find_map(|(_, m)| m.strip_prefix("backoff -> starting: attempt 2, resuming from "));
    let resumed = resumed.unwrap_or_else(|| panic!("attempt 2 was not resumed from a checkpoint: {all:?}"));
    let from: u64 = resumed.rsplit("step-").next().and_then(|s| s.parse().ok()).expect(resumed);
    assert_eq!(from, 28, "resumed from the newest checkpoint before the crash at step 31 (7, 14, 20, 21, 28)");
    let out = std::fs::read_to_string(daemon.job_dir(&crashed.id).join("stdout.log")).unwrap();
    let stats: Vec<&str> = out.lines().filter(|l| l.starts_with("trainer-proc: stats ")).collect();
    assert_eq!(stats.len(), 1, "only attempt 2 completes: {out}");
    assert!(stats[0].contains(&format!("steps={} ", 60 - from)), "attempt 2 took 60 - {from} steps: {}", stats[0]);
}

#[tokio::test]
async fn an_unreadable_latest_checkpoint_falls_back_to_the_one_before() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let mut req = fake_job("fallback", &[("FAKE_FAULT", "crash@12")]);
    req.backoff_base_ms = Some(1000);
    let job = submit(&mut client, req).await;
    let backoff = watch_until(&mut client, &job.id, LIMIT, |j| j.state() == JobState::Backoff).await.pop().unwrap();
    let latest = backoff.latest_checkpoint.expect("a checkpoint was recorded");
    assert_eq!(latest.step, 10);
    std::fs::write(&latest.path, b"garbage").unwrap();
    let last = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!(last.state(), JobState::Completed);
    assert_eq!(
        (last.attempt, last.weights_sha256.as_str()),
        (3, "fake-20-5"),
        "attempt 2 failed on step 10; 3 used step 5"
    );
}

#[tokio::test]
async fn a_flooding_trainer_has_its_logs_capped() {
    let daemon = Daemon::start(&["--log-cap-mib", "1"]);
    let mut client = daemon.client().await;
    let job = submit(
        &mut client,
        fake_job("flood", &[("FAKE_STEPS", "40"), ("FAKE_STEP_MS", "50"), ("FAKE_PRINT_BYTES", "102400")]),
    )
    .await;
    let last = watch_until(&mut client, &job.id, LIMIT, ended).await.pop().unwrap();
    assert_eq!(last.state(), JobState::Completed);
    let dir = daemon.state_dir().join("jobs").join(&job.id);
    let size = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0);
    let kept = size("stdout.log") + size("stdout.log.1");
    assert!(size("stdout.log.1") > 0, "no rotation happened");
    assert!(kept < 40 * 102_400, "{kept} bytes kept of {} written", 40 * 102_400);
    let kinds: Vec<String> = events(&mut client, &job.id).await.into_iter().map(|e| e.0).collect();
    assert!(kinds.contains(&"log_rotated".to_string()), "{kinds:?}");
}

#[tokio::test]
async fn the_queue_survives_a_daemon_restart_in_its_order() {
    let mut daemon = Daemon::start(&["--slots", "1"]);
    let mut client = daemon.client().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(submit(&mut client, fake_job(&format!("q{i}"), &[("FAKE_STEPS", "15")])).await.id);
    }
    daemon.restart();
    let mut client = daemon.client().await;
    let mut admitted = Vec::new();
    for id in &ids {
        let last = watch_until(&mut client, id, LIMIT, ended).await.pop().unwrap();
        assert_eq!(last.state(), JobState::Completed, "no queued job was lost");
        let all = events(&mut client, id).await;
        let at = client.list_events(pb::ListEventsRequest { id: id.clone() }).await.unwrap().into_inner().events;
        let admissions: Vec<f64> = at.iter().filter(|e| e.kind == "admitted").map(|e| e.at).collect();
        assert!(!admissions.is_empty(), "{all:?}");
        admitted.push(*admissions.last().unwrap());
    }
    assert!(admitted.windows(2).all(|w| w[0] <= w[1]), "queue order changed across the restart: {admitted:?}");
}
