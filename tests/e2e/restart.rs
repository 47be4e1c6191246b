//! The crash suite: trainerd's own restarts never stop training, never lose a job, never start a
//! finished one again, and what it shows afterwards is what is true. Real trainerd, real shims,
//! real trainers; trainerd is killed with SIGKILL unless a test says otherwise.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use trainctl::Client;
use trainerd_proto::state::{has_process, is_terminal};
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::{JobState, Reason};
use trainerd_tests::{
    alive, events, fake_job, get, job_processes, submit, trainer_proc_job, wait_gone, watch_until, Daemon,
};

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
    // A trainer (with a child in its group) that would outlive the test: only trainerd can end it.
    let env =
        [("FAKE_STEPS", "100000"), ("FAKE_STEP_MS", "30"), ("FAKE_CHECKPOINT_EVERY", "5"), ("FAKE_CHILDREN", "1")];
    let job = submit(&mut client, fake_job("orphan", &env)).await;
    let seen = watch_until(&mut client, &job.id, LIMIT, |j| j.state() == JobState::Running && j.step >= 12).await;
    let (shim, trainer) = (daemon.shim_pid(&job.id), seen.last().unwrap().pid.unwrap());
    let first_attempt: Vec<u32> =
        job_processes(&daemon.state_dir(), &job.id).into_iter().filter(|p| *p != shim).collect();
    assert_eq!(first_attempt.len(), 2, "the trainer and its child: {first_attempt:?}");
    daemon.kill();
    signal(shim, libc::SIGKILL);
    wait_gone(shim, LIMIT);
    assert!(first_attempt.iter().all(|p| alive(*p)), "the orphans outlive their shim");
    daemon.relaunch();
    let mut client = daemon.client().await;
    // Attempt 2 runs; by then no process of attempt 1 may be alive: never two copies at once.
    let second = watch_until(&mut client, &job.id, LIMIT, |j| j.attempt == 2 && j.pid.is_some()).await;
    let still: Vec<u32> = first_attempt.iter().copied().filter(|p| alive(*p)).collect();
    assert!(still.is_empty(), "attempt 1's processes {still:?} still run while attempt 2 ({:?}) does", second.last());
    assert!(!alive(trainer));
    let messages = events(&mut client, &job.id).await;
    assert!(messages.iter().any(|(k, m)| k == "lost" && m.contains("runs unwatched and is stopped")), "{messages:?}");
    client.cancel_job(pb::CancelJobRequest { id: job.id.clone() }).await.unwrap();
    assert!(job_processes(&daemon.state_dir(), &job.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_jobs_queued_starting_running_pausing_backing_off_and_completing() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none", "--slots", "5"]);
    let mut client = daemon.client().await;
    let running = submit(&mut client, fake_job("running", &[("FAKE_STEPS", "100"), ("FAKE_STEP_MS", "30")])).await;
    // Protocol v1: STARTING until its first heartbeat (under auto it would be running at once).
    let starting_req =
        pb::SubmitJobRequest { protocol: Some("v1".into()), ..fake_job("starting", &[("FAKE_START_MS", "1500")]) };
    let starting = submit(&mut client, starting_req).await;
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
    // A starting trainer's pid is found again through its shim.json (the record's copy is not
    // flushed on its own).
    assert!(before[&starting.id].pid.is_some());
    assert_eq!(after[&starting.id].pid, before[&starting.id].pid, "the starting trainer was adopted");
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

/// splitmix64: a seeded, reproducible stream without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn crash_job(n: usize) -> pb::SubmitJobRequest {
    let env = [("FAKE_STEPS", "100"), ("FAKE_STEP_MS", "15"), ("FAKE_CHECKPOINT_EVERY", "5")];
    pb::SubmitJobRequest {
        max_restarts: Some(10_000),
        heartbeat_timeout_ms: Some(1500),
        stop_grace_ms: Some(300),
        ..fake_job(&format!("crash-{n}"), &env)
    }
}

/// The invariants after a fault: no job lost, no finished job changed (never started again), and
/// state equal to reality.
async fn check_invariants(
    daemon: &Daemon,
    client: &mut Client,
    submitted: &[String],
    finished_jobs: &mut HashMap<String, (JobState, u32)>,
    fault: &str,
) {
    let jobs = list(client).await;
    let mut ids: Vec<&String> = jobs.iter().map(|j| &j.id).collect();
    ids.sort();
    let mut expected: Vec<&String> = submitted.iter().collect();
    expected.sort();
    assert_eq!(ids, expected, "after {fault}: jobs lost or invented");
    for job in &jobs {
        let now = (job.state(), job.attempt);
        if let Some(before) = finished_jobs.get(&job.id) {
            assert_eq!(*before, now, "after {fault}: finished job {} changed", job.id);
        } else if finished(job) {
            finished_jobs.insert(job.id.clone(), now);
        }
    }
    assert_state_is_reality(daemon, client, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_never_lose_a_job_never_rerun_a_finished_one_and_keep_state_true() {
    let seed = std::env::var("TRAINERD_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let faults: usize = std::env::var("TRAINERD_CRASH_FAULTS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    println!("crash suite: seed {seed}, {faults} faults (replay with TRAINERD_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none", "--slots", "4"]);
    let mut client = daemon.client().await;
    let mut submitted = Vec::new();
    let mut finished_jobs = HashMap::new();
    let mut tally: HashMap<&str, usize> = HashMap::new();
    for n in 0..faults {
        // Keep about five jobs unfinished, so that faults find running trainers.
        let open = list(&mut client).await.iter().filter(|j| !finished(j)).count();
        for _ in open..5 {
            let job = submit(&mut client, crash_job(submitted.len())).await;
            submitted.push(job.id);
        }
        tokio::time::sleep(Duration::from_millis(rng.below(250) as u64)).await;
        let running: Vec<pb::Job> =
            list(&mut client).await.into_iter().filter(|j| j.state() == JobState::Running && j.pid.is_some()).collect();
        let kinds =
            ["kill trainerd", "kill a trainer", "hang a trainer", "corrupt a progress file", "restart trainerd"];
        let mut kind = kinds[rng.below(kinds.len())];
        if running.is_empty() && matches!(kind, "kill a trainer" | "hang a trainer" | "corrupt a progress file") {
            kind = "kill trainerd";
        }
        let mut target = (!running.is_empty()).then(|| running[rng.below(running.len())].clone());
        // A corrupt file planted over a trainer's final record would be its last word (completed, with
        // no digest): corrupt only jobs far from their end.
        if kind == "corrupt a progress file" && target.as_ref().is_some_and(|j| j.step >= 50) {
            kind = "kill a trainer";
        }
        if kind == "corrupt a progress file" {
            target = target.filter(|j| j.step < 50);
        }
        match (kind, target) {
            ("kill trainerd", _) => {
                daemon.kill();
                daemon.relaunch();
                client = daemon.client().await;
            }
            ("restart trainerd", _) => {
                assert!(daemon.terminate().success(), "a graceful stop exits 0");
                daemon.relaunch();
                client = daemon.client().await;
            }
            ("kill a trainer", Some(job)) => signal(job.pid.unwrap(), libc::SIGKILL),
            ("hang a trainer", Some(job)) => signal(job.pid.unwrap(), libc::SIGSTOP),
            ("corrupt a progress file", Some(job)) => {
                let path = daemon.job_dir(&job.id).join("trainer/progress.json");
                let tmp = path.with_extension("corrupt");
                std::fs::write(&tmp, b"{\"protocol\": 1, \"state\": \"runn").unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            }
            _ => unreachable!(),
        }
        *tally.entry(kind).or_default() += 1;
        let what = format!("fault {n} ({kind}, seed {seed})");
        check_invariants(&daemon, &mut client, &submitted, &mut finished_jobs, &what).await;
    }
    println!("crash suite: {tally:?}; {} jobs", submitted.len());
    for id in &submitted {
        let done = watch_until(&mut client, id, LIMIT, finished).await.pop().unwrap();
        assert_eq!(done.state(), JobState::Completed, "seed {seed}: {done:?}");
        assert!(done.weights_sha256.starts_with("fake-100-"), "{done:?}");
    }
    check_invariants(&daemon, &mut client, &submitted, &mut finished_jobs, "the end").await;
}

/// A job of 200 steps of 20 ms with a checkpoint every 10, watched until it runs past step 12.
async fn job_past_step_12(client: &mut Client) -> pb::Job {
    let env = [("FAKE_STEPS", "200"), ("FAKE_STEP_MS", "20"), ("FAKE_CHECKPOINT_EVERY", "10")];
    let job = submit(client, fake_job("policy", &env)).await;
    watch_until(client, &job.id, LIMIT, |j| j.state() == JobState::Running && j.step > 12).await.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_policy_leave_keeps_trainers_running_for_the_next_trainerd() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none"]);
    let mut client = daemon.client().await;
    let job = job_past_step_12(&mut client).await;
    assert!(daemon.terminate().success());
    assert!(job_processes(&daemon.state_dir(), &job.id).contains(&job.pid.unwrap()), "the trainer outlives trainerd");
    daemon.relaunch();
    let mut client = daemon.client().await;
    let done = watch_until(&mut client, &job.id, LIMIT, finished).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt, done.weights_sha256.as_str()), (JobState::Completed, 1, "fake-200-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_policy_pause_pauses_every_job_at_a_checkpoint_before_exiting() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none", "--shutdown-policy", "pause"]);
    let mut client = daemon.client().await;
    let job = job_past_step_12(&mut client).await;
    assert!(daemon.terminate().success());
    assert!(job_processes(&daemon.state_dir(), &job.id).is_empty(), "no process of a paused job is left");
    daemon.relaunch();
    let mut client = daemon.client().await;
    let paused = get(&mut client, &job.id).await;
    assert_eq!((paused.state(), paused.reason()), (JobState::Paused, Reason::Paused), "{paused:?}");
    assert_eq!(paused.step % 10, 0, "paused at a checkpoint step: {paused:?}");
    client.resume_job(pb::ResumeJobRequest { id: job.id.clone() }).await.unwrap();
    let done = watch_until(&mut client, &job.id, LIMIT, finished).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt), (JobState::Completed, 2));
    assert_eq!(done.weights_sha256, format!("fake-200-{}", paused.step), "resumed from the pause checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_policy_stop_stops_every_trainer_and_queues_its_job_again() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none", "--shutdown-policy", "stop"]);
    let mut client = daemon.client().await;
    let job = job_past_step_12(&mut client).await;
    let waiting = submit(
        &mut client,
        pb::SubmitJobRequest { backoff_base_ms: Some(60_000), ..fake_job("backoff", &[("FAKE_FAULT", "crash@2")]) },
    )
    .await;
    watch_until(&mut client, &waiting.id, LIMIT, |j| j.state() == JobState::Backoff).await;
    assert!(daemon.terminate().success());
    assert!(job_processes(&daemon.state_dir(), &job.id).is_empty(), "the trainer was stopped");
    daemon.relaunch();
    let mut client = daemon.client().await;
    let messages = events(&mut client, &job.id).await;
    assert!(
        messages.iter().any(|(_, m)| m.contains("stopping -> queued") && m.contains("shutdown_policy = stop")),
        "{messages:?}"
    );
    let backoff_messages = events(&mut client, &waiting.id).await;
    assert!(backoff_messages.iter().any(|(_, m)| m.contains("backoff -> queued")), "{backoff_messages:?}");
    let done = watch_until(&mut client, &job.id, LIMIT, finished).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt), (JobState::Completed, 2), "{done:?}");
    let start: u64 = done.weights_sha256.strip_prefix("fake-200-").unwrap().parse().unwrap();
    assert!(start >= job.step, "resumed from the checkpoint written at the stop (step {start}), not from 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_stall_clock_counts_from_the_last_heartbeat_not_from_trainerd_start() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "0.1", "--gpus", "none"]);
    let mut client = daemon.client().await;
    let request = pb::SubmitJobRequest { heartbeat_timeout_ms: Some(2000), stop_grace_ms: Some(200), ..crash_job(0) };
    let job = submit(&mut client, request).await;
    let running = watch_until(&mut client, &job.id, LIMIT, |j| j.state() == JobState::Running && j.step > 5).await;
    daemon.kill();
    signal(running.last().unwrap().pid.unwrap(), libc::SIGSTOP);
    // Silent for longer than the timeout while nobody watches.
    std::thread::sleep(Duration::from_millis(3000));
    daemon.relaunch();
    let mut client = daemon.client().await;
    let done = watch_until(&mut client, &job.id, LIMIT, finished).await.pop().unwrap();
    assert_eq!((done.state(), done.attempt), (JobState::Completed, 2));
    let messages = events(&mut client, &job.id).await;
    let (_, stalled) = messages.iter().find(|(k, _)| k == "stalled").expect("a stall event");
    let silence: f64 = stalled
        .strip_prefix("no heartbeat for ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stalled}"));
    assert!(silence >= 3.0, "the silence ({silence} s) includes the time trainerd was down: {stalled}");
}

/// Concurrent submissions share their flushes (group commit), and still none is acknowledged before
/// it is on disk: 16 clients submit at once, trainerd is SIGKILLed the moment the last reply arrives,
/// and every acknowledged job is there after the restart, once, with its own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_are_each_durable_before_their_reply() {
    let mut daemon = Daemon::start(&["--gpus", "none", "--slots", "1"]);
    let mut tasks = Vec::new();
    for c in 0..16 {
        let mut client = daemon.client().await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..20 {
                let key = format!("c{c}-n{n}");
                let mut req = fake_job(&format!("g{c}"), &[("FAKE_STEPS", "100000")]);
                req.idempotency_key = key.clone();
                let reply = client.submit_job(req).await.expect("submit").into_inner();
                assert!(reply.created, "{key} was new");
                acked.push((key, reply.job.expect("job").id));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    daemon.restart();
    let mut client = daemon.client().await;
    let ids: std::collections::HashSet<&String> = acked.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 16 * 20, "one job per submission");
    for (key, id) in &acked {
        let mut again = fake_job("again", &[]);
        again.idempotency_key = key.clone();
        let reply = client.submit_job(again).await.expect("resubmit").into_inner();
        assert_eq!((reply.created, reply.job.unwrap().id.as_str()), (false, id.as_str()), "{key} survived");
    }
}
