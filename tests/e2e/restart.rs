//! The crash suite: trainerd's own restarts never stop training, never lose a job, never start a
//! finished one again, and what it shows afterwards is what is true. Real trainerd, real shims,
//! real trainers; trainerd is killed with SIGKILL unless a test says otherwise.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use trainctl::Client;
use trainerd_proto::state::{has_process, is_terminal};
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::{JobState, Reason};
use trainerd_tests::{events, fake_job, get, job_processes, submit, trainer_proc_job, wait_gone, watch_until, Daemon};

const LIMIT: Duration = Duration::from_secs(90);

fn finished(job: &pb::Job) -> bool {
    is_terminal(job.state())
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process this test's daemon started.
    unsafe { libc::kill(pid as i32, signal) };
}

async fn list(client: &mut Client) -> Vec<pb::Job> {
    let request = pb::ListJobsRequest { page_size: 10_000, ..Default::default() };
    client.list_jobs(request).await.expect("list").into_inner().jobs
}

/// Record and reality agree: Health reports no divergence, every job said to have a process has a
/// live one with its pid, and no job in any other state has a process left. A process that is
/// exiting right now makes a record briefly stale, so this holds within `limit`, and must.
async fn assert_state_is_reality(daemon: &Daemon, client: &mut Client, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let health = client.health(pb::HealthRequest {}).await.expect("health").into_inner();
        let mut wrong = Vec::new();
        if health.divergent != 0 {
            wrong.push(format!("health says {} divergent", health.divergent));
        }
        for job in list(client).await {
            let procs = job_processes(&daemon.state_dir(), &job.id);
            let state = job.state();
            if has_process(state) && state != JobState::Starting {
                if !job.pid.is_some_and(|pid| procs.contains(&pid)) {
                    wrong.push(format!("job {} is {state:?} with pid {:?}, live: {procs:?}", job.id, job.pid));
                }
            } else if !has_process(state) && !procs.is_empty() {
                wrong.push(format!("job {} is {state:?} but processes {procs:?} live", job.id));
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "state is not reality after {limit:?}: {wrong:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_trainer_keeps_its_pid_and_step_across_a_sigkill_of_trainerd_and_ends_exactly() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.2", "--gpus", "none"]);
    let mut client = daemon.client().await;
    let reference = submit(&mut client, trainer_proc_job("reference", 6, &[])).await;
    // Slow evaluations stretch the run (heartbeats go on) without changing a single weight.
    let job = submit(&mut client, trainer_proc_job("survivor", 6, &[("TRAINER_FAULT", "slow-eval@0.5")])).await;
    let seen = watch_until(&mut client, &job.id, LIMIT, |j| j.state() == JobState::Running && j.step >= 30).await;
    let before = seen.last().unwrap().clone();
    daemon.kill();
    daemon.relaunch();
    let mut client = daemon.client().await;
    let after = get(&mut client, &job.id).await;
    assert_eq!(after.state(), JobState::Running, "{after:?}");
    assert_eq!((after.pid, after.attempt), (before.pid, 1), "the same trainer, not a new attempt");
    assert!(after.step >= before.step, "step {} went back to {}", before.step, after.step);
    let done = watch_until(&mut client, &job.id, LIMIT, finished).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt, done.exit_code), (JobState::Completed, 1, Some(0)), "{done:?}");
    let reference = watch_until(&mut client, &reference.id, LIMIT, finished).await.pop().unwrap();
    assert_eq!(reference.state(), JobState::Completed);
    assert!(!done.weights_sha256.is_empty());
    assert_eq!(done.weights_sha256, reference.weights_sha256, "the adopted run ends with the uninterrupted weights");
    let kinds: Vec<String> = events(&mut client, &job.id).await.into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"adopted".to_string()), "{kinds:?}");
    assert_state_is_reality(&daemon, &mut client, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_completes_while_trainerd_is_down_is_completed_with_exit_0_and_never_runs_again() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none"]);
    let mut client = daemon.client().await;
    let job = submit(&mut client, fake_job("short", &[("FAKE_STEPS", "40"), ("FAKE_STEP_MS", "20")])).await;
    watch_until(&mut client, &job.id, LIMIT, |j| j.state() == JobState::Running).await;
    let shim = daemon.shim_pid(&job.id);
    daemon.kill();
    wait_gone(shim, LIMIT);
    daemon.relaunch();
    let mut client = daemon.client().await;
    let after = get(&mut client, &job.id).await;
    assert_eq!((after.state(), after.reason()), (JobState::Completed, Reason::Completed), "{after:?}");
    assert_eq!((after.exit_code, after.attempt, after.step), (Some(0), 1, 40));
    assert_eq!(after.weights_sha256, "fake-40-0");
    let report = client.reconcile(pb::ReconcileRequest {}).await.unwrap().into_inner();
    assert!(report.fixes.is_empty(), "{:?}", report.fixes);
    assert_eq!(get(&mut client, &job.id).await.attempt, 1, "a completed job is never started again");
    let messages: Vec<(String, String)> = events(&mut client, &job.id).await;
    assert!(messages.iter().any(|(k, m)| k == "ended_unseen" && m.contains("exited 0")), "{messages:?}");
    assert_state_is_reality(&daemon, &mut client, Duration::from_secs(10)).await;
}

/// A job of 60 steps of 30 ms with a checkpoint every 5, watched until step 12 (a checkpoint at 10).
async fn long_fake_job_at_step_12(daemon: &Daemon, client: &mut Client) -> pb::Job {
    let env = [("FAKE_STEPS", "60"), ("FAKE_STEP_MS", "30"), ("FAKE_CHECKPOINT_EVERY", "5")];
    let job = submit(client, fake_job("long", &env)).await;
    let seen = watch_until(client, &job.id, LIMIT, |j| j.state() == JobState::Running && j.step >= 12).await;
    assert!(daemon.job_dir(&job.id).join("shim.json").exists());
    seen.last().unwrap().clone()
}

fn resumed_from(job: &pb::Job) -> u64 {
    let start = job.weights_sha256.strip_prefix("fake-60-").expect("a fake trainer's digest");
    start.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_killed_while_trainerd_is_down_restarts_from_its_latest_checkpoint() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none"]);
    let mut client = daemon.client().await;
    let job = long_fake_job_at_step_12(&daemon, &mut client).await;
    let (shim, trainer) = (daemon.shim_pid(&job.id), job.pid.unwrap());
    daemon.kill();
    signal(trainer, libc::SIGKILL);
    wait_gone(shim, LIMIT);
    daemon.relaunch();
    let mut client = daemon.client().await;
    let done = watch_until(&mut client, &job.id, LIMIT, finished).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt), (JobState::Completed, 2), "{done:?}");
    assert!(resumed_from(&done) >= 10, "resumed from step {}, not from its checkpoint", resumed_from(&done));
    let messages = events(&mut client, &job.id).await;
    assert!(messages.iter().any(|(k, m)| k == "ended_unseen" && m.contains("killed by signal 9")), "{messages:?}");
    assert_state_is_reality(&daemon, &mut client, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_shim_vanished_too_is_lost_then_restarted_by_policy_from_its_checkpoint() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none"]);
    let mut client = daemon.client().await;
    let job = long_fake_job_at_step_12(&daemon, &mut client).await;
    let (shim, trainer) = (daemon.shim_pid(&job.id), job.pid.unwrap());
    daemon.kill();
    signal(shim, libc::SIGKILL);
    wait_gone(shim, LIMIT);
    signal(trainer, libc::SIGKILL);
    wait_gone(trainer, LIMIT);
    daemon.relaunch();
    let mut client = daemon.client().await;
    let done = watch_until(&mut client, &job.id, LIMIT, finished).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt), (JobState::Completed, 2), "{done:?}");
    assert!(resumed_from(&done) >= 10);
    let messages = events(&mut client, &job.id).await;
    assert!(messages.iter().any(|(k, _)| k == "lost"), "{messages:?}");
    assert!(messages.iter().any(|(_, m)| m.contains("(lost); restarting")), "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_whose_shim_was_killed_is_stopped_and_its_job_restarted_never_run_twice() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none"]);
    let mut client = daemon.client().await;
    let job = long_fake_job_at_step_12(&daemon, &mut client).await;
    let (shim, trainer) = (daemon.shim_pid(&job.id), job.pid.unwrap());
    daemon.kill();
    signal(shim, libc::SIGKILL);
    wait_gone(shim, LIMIT);
    daemon.relaunch();
    // The orphaned trainer cannot be watched any more: it is stopped before a new attempt starts.
    wait_gone(trainer, LIMIT);
    let mut client = daemon.client().await;
    let done = watch_until(&mut client, &job.id, LIMIT, finished).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt), (JobState::Completed, 2), "{done:?}");
    let messages = events(&mut client, &job.id).await;
    assert!(messages.iter().any(|(k, m)| k == "lost" && m.contains("runs unwatched and is stopped")), "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_jobs_queued_starting_running_pausing_backing_off_and_completing() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none", "--slots", "5"]);
    let mut client = daemon.client().await;
    let running = submit(&mut client, fake_job("running", &[("FAKE_STEPS", "100"), ("FAKE_STEP_MS", "30")])).await;
    let starting = submit(&mut client, fake_job("starting", &[("FAKE_START_MS", "1500")])).await;
    let pausing_env = [("FAKE_STEPS", "200"), ("FAKE_STEP_MS", "20"), ("FAKE_CHECKPOINT_EVERY", "60")];
    let pausing = submit(&mut client, fake_job("pausing", &pausing_env)).await;
    let backoff_req = pb::SubmitJobRequest {
        backoff_base_ms: Some(1500),
        ..fake_job("backoff", &[("FAKE_FAULT", "crash@3"), ("FAKE_STEP_MS", "10")])
    };
    let backoff = submit(&mut client, backoff_req).await;
    let completing = submit(&mut client, fake_job("completing", &[("FAKE_STEPS", "15"), ("FAKE_STEP_MS", "20")])).await;
    let queued = submit(&mut client, fake_job("queued", &[("FAKE_STEPS", "10")])).await;
    watch_until(&mut client, &running.id, LIMIT, |j| j.state() == JobState::Running).await;
    watch_until(&mut client, &pausing.id, LIMIT, |j| j.state() == JobState::Running).await;
    client.pause_job(pb::PauseJobRequest { id: pausing.id.clone() }).await.unwrap();
    watch_until(&mut client, &backoff.id, LIMIT, |j| j.state() == JobState::Backoff).await;
    watch_until(&mut client, &completing.id, LIMIT, |j| j.step >= 12 || finished(j)).await;
    let before: HashMap<String, pb::Job> = list(&mut client).await.into_iter().map(|j| (j.id.clone(), j)).collect();
    assert_eq!(before[&starting.id].state(), JobState::Starting);
    assert_eq!(before[&pausing.id].state(), JobState::Pausing);
    assert_eq!(before[&queued.id].state(), JobState::Queued);
    daemon.kill();
    daemon.relaunch();
    let mut client = daemon.client().await;
    let after: HashMap<String, pb::Job> = list(&mut client).await.into_iter().map(|j| (j.id.clone(), j)).collect();
    assert_eq!(after.len(), before.len(), "no job lost or added");
    assert_eq!(after[&running.id].pid, before[&running.id].pid, "the running trainer was adopted");
    assert_state_is_reality(&daemon, &mut client, Duration::from_secs(10)).await;
    // Everything ends as if trainerd had never gone away.
    let paused = watch_until(&mut client, &pausing.id, LIMIT, |j| j.state() == JobState::Paused).await.pop().unwrap();
    assert_eq!((paused.step, paused.attempt), (60, 1), "paused at its checkpoint step by the same trainer");
    client.resume_job(pb::ResumeJobRequest { id: pausing.id.clone() }).await.unwrap();
    for (job, attempts) in [(&running, 1), (&starting, 1), (&pausing, 2), (&backoff, 2), (&completing, 1), (&queued, 1)]
    {
        let done = watch_until(&mut client, &job.id, LIMIT, finished).await.pop().unwrap();
        assert_eq!((done.state(), done.attempt), (JobState::Completed, attempts), "{}: {done:?}", job.name);
    }
    assert_state_is_reality(&daemon, &mut client, Duration::from_secs(10)).await;
}
