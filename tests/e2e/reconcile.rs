//! Reconciliation repairs what health reports. Each test makes a real divergence between the store
//! and the processes (with `--test-hooks` faults where a real system makes it only rarely: a lost
//! notification, a lost stop, an actor stuck on a hung file system), sees `health` count it, runs one
//! `reconcile`, and asserts the fix, the job's state after it, and that `health` counts nothing.

use std::time::{Duration, Instant};
use trainctl::Client;
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::{JobState, Reason};
use trainerd_tests::*;

const LIMIT: Duration = Duration::from_secs(60);

async fn health(client: &mut Client) -> pb::HealthResponse {
    client.health(pb::HealthRequest {}).await.expect("health").into_inner()
}

async fn reconcile(client: &mut Client) -> Vec<String> {
    client.reconcile(pb::ReconcileRequest {}).await.expect("reconcile").into_inner().fixes
}

/// Waits, at most 20 s, until health counts `n` divergent jobs (a divergence appears when the process
/// ends, an instant after the test causes it).
async fn divergent(client: &mut Client, n: u32) -> pb::HealthResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = health(client).await;
        if h.divergent == n {
            return h;
        }
        assert!(Instant::now() < deadline, "health never counted {n} divergent job(s): {h:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_record_that_says_running_for_a_trainer_that_is_gone_is_resolved_from_the_exit_record() {
    // No periodic reconciliation: the test's own call must be the one that finds the divergence.
    let daemon = Daemon::start(&["--test-hooks", "--gpus", "none", "--reconcile-interval", "3600"]);
    let mut client = daemon.client().await;
    let req = fake_job("unreported", &[("FAKE_STEPS", "10"), ("TRAINERD_TEST_IGNORE_SHIM_EXIT", "1")]);
    let job = submit(&mut client, req).await;
    let pid = watch_until(&mut client, &job.id, LIMIT, |j| j.pid.is_some()).await.last().unwrap().pid.unwrap();
    let shim = daemon.shim_pid(&job.id);
    wait_gone(pid, LIMIT);
    // The shim outlives its trainer a moment (it records the exit, then reaps the group); until it is
    // gone the attempt is not known to have ended, and reconciliation rightly leaves it.
    wait_gone(shim, LIMIT);
    let h = divergent(&mut client, 1).await;
    assert_eq!(h.status, "divergent");
    let before = get(&mut client, &job.id).await;
    assert_eq!(before.state(), JobState::Running, "the lost notification left the record saying running");

    let fixes = reconcile(&mut client).await;
    let expected =
        format!("job {}: the shim of attempt 1 had ended unreported (exited 0); its end is handled now", job.id);
    assert_eq!(fixes, vec![expected]);
    let after = get(&mut client, &job.id).await;
    assert_eq!(
        (after.state(), after.exit_code, after.weights_sha256.as_str()),
        (JobState::Completed, Some(0), "fake-10-0")
    );
    let h = health(&mut client).await;
    assert_eq!((h.status.as_str(), h.divergent), ("ok", 0), "{h:?}");
}

#[tokio::test]
async fn a_shim_killed_before_its_exit_is_recorded_is_lost_and_its_orphan_stopped_before_the_next_attempt() {
    // No periodic reconciliation: the test's own call must be the one that finds the divergence.
    let daemon = Daemon::start(&["--test-hooks", "--gpus", "none", "--reconcile-interval", "3600"]);
    let mut client = daemon.client().await;
    let env = [
        ("FAKE_STEPS", "100000"),
        ("FAKE_STEP_MS", "10"),
        ("FAKE_CHECKPOINT_EVERY", "5"),
        ("TRAINERD_TEST_IGNORE_SHIM_EXIT", "1"),
    ];
    let job = submit(&mut client, fake_job("orphaned", &env)).await;
    let running = watch_until(&mut client, &job.id, LIMIT, |j| j.latest_checkpoint.is_some()).await;
    let orphan = running.last().unwrap().pid.unwrap();
    let shim = daemon.shim_pid(&job.id);
    // SAFETY: kill(2) on the shim this test's trainerd started.
    unsafe { libc::kill(shim as i32, libc::SIGKILL) };
    wait_gone(shim, LIMIT);
    assert!(alive(orphan), "the trainer outlives its shim");
    let h = divergent(&mut client, 1).await;
    assert_eq!(h.status, "divergent");

    let fixes = reconcile(&mut client).await;
    let expected =
        format!("job {}: the shim of attempt 1 had ended unreported (no exit record); its end is handled now", job.id);
    assert_eq!(fixes, vec![expected]);
    // The orphan is stopped before the lost attempt is recorded, so before any next attempt starts:
    // never two copies of one job.
    assert!(!alive(orphan), "attempt 1's trainer {orphan} still runs after reconciliation");
    let next = watch_until(&mut client, &job.id, LIMIT, |j| j.attempt == 2 && j.pid.is_some()).await;
    assert_eq!(next.last().unwrap().restarts, 1, "{next:?}");
    let all = events(&mut client, &job.id).await;
    assert!(all.iter().any(|(_, m)| m.contains("lost")), "{all:?}");
    assert!(
        all.iter().any(|(_, m)| m.contains("resuming from")),
        "attempt 2 resumes from the checkpoint, not from step 0: {all:?}"
    );
    let h = divergent(&mut client, 0).await;
    assert_eq!(h.status, "ok");
    client.cancel_job(pb::CancelJobRequest { id: job.id.clone() }).await.unwrap();
}

#[tokio::test]
async fn a_finished_job_whose_trainer_still_runs_has_it_stopped() {
    // No periodic reconciliation: the test's own call must be the one that finds the divergence.
    let daemon = Daemon::start(&["--test-hooks", "--gpus", "none", "--reconcile-interval", "3600"]);
    let mut client = daemon.client().await;
    let env = [("FAKE_STEPS", "100000"), ("FAKE_STEP_MS", "10"), ("TRAINERD_TEST_CANCEL_WITHOUT_STOP", "1")];
    let job = submit(&mut client, fake_job("leftover", &env)).await;
    let pid = watch_until(&mut client, &job.id, LIMIT, |j| j.step > 0).await.last().unwrap().pid.unwrap();
    let cancelled = client.cancel_job(pb::CancelJobRequest { id: job.id.clone() }).await.unwrap().into_inner();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    assert!(alive(pid), "the hook left the trainer running");
    let h = divergent(&mut client, 1).await;
    assert_eq!(h.status, "divergent");

    let fixes = reconcile(&mut client).await;
    assert_eq!(fixes.len(), 1, "{fixes:?}");
    assert!(fixes[0].starts_with(&format!("job {} is cancelled but trainer {pid}", job.id)), "{fixes:?}");
    assert!(fixes[0].ends_with("still ran; stopped"), "{fixes:?}");
    wait_gone(pid, Duration::from_secs(10));
    // Its shim exits once it has reaped the group.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !job_processes(&daemon.state_dir(), &job.id).is_empty() {
        assert!(Instant::now() < deadline, "a process of the cancelled job is left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&mut client, &job.id).await.state(), JobState::Cancelled);
    let h = health(&mut client).await;
    assert_eq!((h.status.as_str(), h.divergent), ("ok", 0), "{h:?}");
}

#[tokio::test]
async fn an_actor_that_stops_answering_is_replaced_and_the_exit_it_missed_applied() {
    // No periodic reconciliation: the test's own call must be the one that finds the divergence.
    let daemon = Daemon::start(&["--test-hooks", "--gpus", "none", "--reconcile-interval", "3600"]);
    let mut client = daemon.client().await;
    let env = [("FAKE_STEPS", "30"), ("FAKE_STEP_MS", "20"), ("TRAINERD_TEST_WEDGE_AT_STEP", "3")];
    let job = submit(&mut client, fake_job("wedged", &env)).await;
    let pid = watch_until(&mut client, &job.id, LIMIT, |j| j.step >= 3).await.last().unwrap().pid.unwrap();
    wait_gone(pid, LIMIT);
    // The trainer exited 0; its actor, wedged, never recorded it.
    let h = divergent(&mut client, 1).await;
    assert_eq!(h.status, "divergent");
    // Other jobs and clients are not held by one job's wedged actor.
    let other = submit(&mut client, fake_job("other", &[("FAKE_STEPS", "3")])).await;
    let seen = watch_until(&mut client, &other.id, LIMIT, |j| trainerd_proto::state::is_terminal(j.state())).await;
    assert_eq!(seen.last().unwrap().state(), JobState::Completed);

    let fixes = reconcile(&mut client).await;
    let replaced = format!(
        "job {}: its actor did not answer within 5 s; it was replaced by one made from the stored record",
        job.id
    );
    assert!(fixes.contains(&replaced), "{fixes:?}");
    let after = get(&mut client, &job.id).await;
    assert_eq!((after.state(), after.reason()), (JobState::Completed, Reason::Completed), "{after:?}");
    assert_eq!((after.exit_code, after.weights_sha256.as_str(), after.attempt), (Some(0), "fake-30-0", 1));
    let kinds: Vec<String> = events(&mut client, &job.id).await.into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"actor_replaced".to_string()) && kinds.contains(&"ended_unseen".to_string()), "{kinds:?}");
    let h = health(&mut client).await;
    assert_eq!((h.status.as_str(), h.divergent), ("ok", 0), "{h:?}");
}
