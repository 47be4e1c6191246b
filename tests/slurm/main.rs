//! The Slurm executor against a real Slurm (Debian's slurmctld, slurmd and munge): a one-node cluster
//! on this machine per test, started and stopped by `scripts/slurm-cluster.sh` (its own ports, config
//! and state in a temp dir). Every test runs the real trainerd with `--executor slurm`-jobs and checks
//! what Slurm itself says (`squeue`) beside what trainerd shows.
//!
//! Skipped, loudly, only when Slurm is not installed and cannot be (not root); `.ci/run` installs it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use trainerd_proto::state::is_terminal;
use trainerd_proto::v1::{self as pb, JobState};
use trainerd_tests::{events, fake_job, get, submit, trainer_proc_job, watch_until, Daemon, OutputWithin};

const LIMIT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Ports for the next cluster: two per cluster, apart per test process.
fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 200) as u16 * 100;
    base + NEXT.fetch_add(2, Ordering::Relaxed)
}

/// A one-node Slurm cluster; stopped (its jobs cancelled first) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts one, or returns None when Slurm is not installed here (said on stderr).
    fn start() -> Option<Cluster> {
        if Command::new("slurmctld").arg("-V").output().is_err() {
            eprintln!("SKIPPED: Slurm is not installed (apt-get install slurmctld slurmd slurm-client munge)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(repo().join("scripts/slurm-cluster.sh"))
            .arg("start")
            .arg(dir.path())
            .arg(next_port().to_string())
            .output_within()
            .expect("slurm-cluster.sh");
        assert!(out.status.success(), "the cluster did not start: {}", String::from_utf8_lossy(&out.stderr));
        Some(Cluster { dir })
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// A Slurm command against this cluster.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", self.conf());
        cmd
    }

    /// Every job Slurm knows (those ended within MinJobAge too): (id, state, name).
    fn jobs(&self) -> Vec<(u64, String, String)> {
        let out = self.command("squeue").args(["-h", "--states=all", "-o", "%i|%T|%j"]).output_within().unwrap();
        assert!(out.status.success(), "squeue: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split('|');
                Some((f.next()?.parse().ok()?, f.next()?.to_string(), f.next()?.to_string()))
            })
            .collect()
    }

    /// The Slurm jobs of trainerd job `id` (all attempts), oldest first.
    fn jobs_of(&self, id: &str) -> Vec<(u64, String, String)> {
        let prefix = format!("trainerd-{id}-");
        let mut jobs: Vec<_> = self.jobs().into_iter().filter(|(_, _, name)| name.starts_with(&prefix)).collect();
        jobs.sort();
        jobs
    }

    /// A trainerd that runs Slurm jobs on this cluster.
    fn daemon(&self, extra: &[&str]) -> Daemon {
        let mut args = vec!["--gpus", "none", "--backoff-base", "0", "--slurm-poll-interval", "0.3"];
        args.extend_from_slice(extra);
        let conf = self.conf().display().to_string();
        Daemon::start_with_env(&args, &[("SLURM_CONF", conf.as_str())])
    }

    fn scancel(&self, args: &[&str]) {
        let out = self.command("scancel").args(args).output_within().unwrap();
        assert!(out.status.success(), "scancel {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command("scancel").args(["--full", "--signal=KILL", "--user=root"]).output_within();
        let _ = Command::new(repo().join("scripts/slurm-cluster.sh")).arg("stop").arg(self.dir.path()).output_within();
    }
}

fn slurm(mut req: pb::SubmitJobRequest) -> pb::SubmitJobRequest {
    req.executor = Some("slurm".into());
    req
}

fn done(j: &pb::Job) -> bool {
    is_terminal(j.state())
}

/// The fake trainer, long enough to be caught mid-run.
fn long_fake(name: &str, extra: &[(&str, &str)]) -> pb::SubmitJobRequest {
    let mut env = vec![("FAKE_STEPS", "60"), ("FAKE_STEP_MS", "50"), ("FAKE_CHECKPOINT_EVERY", "5")];
    env.extend_from_slice(extra);
    let mut req = fake_job(name, &env);
    req.stop_grace_ms = Some(2_000);
    slurm(req)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slurm_job_trains_to_the_local_weights_and_continues_after_scancel_kill_in_a_new_slurm_job() {
    let Some(cluster) = Cluster::start() else { return };
    let daemon = cluster.daemon(&["--slots", "1"]);
    let mut client = daemon.client().await;

    // The same training locally and through Slurm: the same weights. The local job holds the only
    // slot; the Slurm job needs none of this host's.
    let local = submit(&mut client, trainer_proc_job("local", 3, &[])).await;
    let through = submit(&mut client, slurm(trainer_proc_job("slurm", 3, &[]))).await;
    let local = watch_until(&mut client, &local.id, LIMIT, done).await.pop().unwrap();
    let seen = watch_until(&mut client, &through.id, LIMIT, done).await;
    let through = seen.last().unwrap().clone();
    assert_eq!(local.state(), JobState::Completed, "{}", local.message);
    assert_eq!(through.state(), JobState::Completed, "{}", through.message);
    assert_eq!(through.weights_sha256, local.weights_sha256, "Slurm's run and the local one differ");
    assert_eq!(through.executor, "slurm");
    let admitted = events(&mut client, &through.id).await;
    assert!(admitted.iter().any(|(k, m)| k == "admitted" && m.contains("takes no slot of this host")), "{admitted:?}");
    let slurm_id = through.slurm_job_id.expect("the Slurm job id");
    assert_eq!(cluster.jobs_of(&through.id), [(slurm_id, "COMPLETED".into(), format!("trainerd-{}-1", through.id))]);
    assert!(seen.iter().all(|j| j.state() != JobState::Running || j.waiting_for.is_empty()));
    let log = std::fs::read_to_string(daemon.job_dir(&through.id).join("stdout.log")).unwrap_or_default();
    assert!(log.contains("trainer-proc: completed 3 epochs"), "trainer-proc's output reaches the job's logs: {log}");

    // SIGKILL to the whole Slurm job mid-run: a new Slurm job continues from the checkpoint.
    let job = submit(&mut client, long_fake("killed", &[])).await;
    watch_until(&mut client, &job.id, LIMIT, |j| j.latest_checkpoint.as_ref().is_some_and(|c| c.step >= 10)).await;
    let first = get(&mut client, &job.id).await.slurm_job_id.expect("a Slurm id");
    cluster.scancel(&["--full", "--signal=KILL", &first.to_string()]);
    let end = watch_until(&mut client, &job.id, LIMIT, done).await.pop().unwrap();
    assert_eq!(end.state(), JobState::Completed, "{}", end.message);
    let resumed_at: u64 = end.weights_sha256.rsplit('-').next().unwrap().parse().unwrap();
    assert!(resumed_at >= 10, "attempt 2 started over instead of resuming: {}", end.weights_sha256);
    let jobs = cluster.jobs_of(&job.id);
    assert_eq!(jobs.len(), 2, "one Slurm job per attempt: {jobs:?}");
    assert_eq!((jobs[0].0, jobs[1].2.as_str()), (first, format!("trainerd-{}-2", job.id).as_str()));
    assert_eq!(end.slurm_job_id, Some(jobs[1].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pause_resume_and_a_hang_through_slurm() {
    let Some(cluster) = Cluster::start() else { return };
    let daemon = cluster.daemon(&["--heartbeat-interval", "0.2"]);
    let mut client = daemon.client().await;

    // A hung trainer (deaf to SIGTERM) is stopped by its heartbeat timeout, killed through Slurm
    // after its stop grace, and restarted as a new Slurm job that completes.
    let mut hung = long_fake("hung", &[("FAKE_FAULT", "hang@12")]);
    hung.heartbeat_timeout_ms = Some(1_500);
    let hung = submit(&mut client, hung).await;
    // Pause and cancel meanwhile.
    let paused = submit(&mut client, long_fake("paused", &[])).await;
    let cancelled = submit(&mut client, long_fake("cancelled", &[("FAKE_STEPS", "100000")])).await;
    let mut later = long_fake("pending", &[]);
    later.slurm = Some(pb::SlurmOptions { args: vec!["--begin=now+600".into()], ..Default::default() });
    let later = submit(&mut client, later).await;

    // A job still pending in Slurm's queue is cancelled there.
    watch_until(&mut client, &later.id, LIMIT, |j| j.waiting_for.contains("pending (BeginTime)")).await;
    let reply = client.cancel_job(pb::CancelJobRequest { id: later.id.clone() }).await.expect("cancel");
    assert_eq!(reply.into_inner().state(), JobState::Cancelled);
    let gone = cluster.jobs_of(&later.id);
    assert!(gone.len() == 1 && gone[0].1 == "CANCELLED", "{gone:?}");

    watch_until(&mut client, &paused.id, LIMIT, |j| j.step >= 8).await;
    client.pause_job(pb::PauseJobRequest { id: paused.id.clone() }).await.expect("pause");
    let p = watch_until(&mut client, &paused.id, LIMIT, |j| j.state() == JobState::Paused).await.pop().unwrap();
    let ended = cluster.jobs_of(&paused.id);
    assert!(
        ended.len() == 1 && ended[0].1 != "RUNNING" && ended[0].1 != "PENDING",
        "the allocation is released: {ended:?}"
    );
    client.resume_job(pb::ResumeJobRequest { id: paused.id.clone() }).await.expect("resume");
    let r = watch_until(&mut client, &paused.id, LIMIT, done).await.pop().unwrap();
    assert_eq!(r.state(), JobState::Completed, "{}", r.message);
    let first: u64 = r.weights_sha256.rsplit('-').next().unwrap().parse().unwrap();
    assert!(first >= p.step.min(5), "resumed from the pause checkpoint: {} (paused at {})", r.weights_sha256, p.step);
    assert_eq!(cluster.jobs_of(&paused.id).len(), 2, "a new allocation for the resume");

    watch_until(&mut client, &cancelled.id, LIMIT, |j| j.state() == JobState::Running && j.step >= 2).await;
    let reply = client.cancel_job(pb::CancelJobRequest { id: cancelled.id.clone() }).await.expect("cancel");
    assert_eq!(reply.into_inner().state(), JobState::Cancelled);
    let left = cluster.jobs_of(&cancelled.id);
    assert!(
        left.iter().all(|(_, state, _)| state != "RUNNING" && state != "PENDING" && state != "COMPLETING"),
        "a cancel returns once Slurm says the job ended: {left:?}"
    );
    assert!(trainerd_tests::job_processes(&daemon.state_dir(), &cancelled.id).is_empty(), "no process left");

    let h = watch_until(&mut client, &hung.id, LIMIT, done).await.pop().unwrap();
    assert_eq!(h.state(), JobState::Completed, "{}", h.message);
    let kinds: Vec<String> = events(&mut client, &hung.id).await.into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"stalled".to_string()) && kinds.contains(&"killed".to_string()), "{kinds:?}");
    assert_eq!(cluster.jobs_of(&hung.id).len(), 2, "{:?}", cluster.jobs_of(&hung.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainerd_killed_after_sbatch_while_pending_running_and_ending_duplicates_nothing() {
    let Some(cluster) = Cluster::start() else { return };
    let mut daemon = cluster.daemon(&["--test-hooks", "--reconcile-interval", "3600"]);
    let mut client = daemon.client().await;

    // (a) trainerd dies right after sbatch, before it stored the Slurm id.
    let aborted = submit(&mut client, long_fake("aborted", &[("TRAINERD_TEST_ABORT_AFTER_SBATCH", "1")])).await;
    let status = daemon.child.as_mut().unwrap().wait().unwrap();
    assert!(!status.success(), "the hook aborts trainerd");
    daemon.child = None;
    daemon.relaunch();
    let mut client = daemon.client().await;
    let a = watch_until(&mut client, &aborted.id, LIMIT, done).await.pop().unwrap();
    assert_eq!((a.state(), a.attempt), (JobState::Completed, 1), "{}", a.message);
    assert_eq!(cluster.jobs_of(&aborted.id).len(), 1, "found by name, not submitted again");
    assert_eq!(a.weights_sha256, "fake-60-0", "one uninterrupted attempt");

    // (b) while pending in Slurm's queue, (c) while running.
    let mut pending = long_fake("pending", &[]);
    pending.slurm = Some(pb::SlurmOptions { args: vec!["--begin=now+4".into()], ..Default::default() });
    let pending = submit(&mut client, pending).await;
    let running = submit(&mut client, long_fake("running", &[])).await;
    let w = watch_until(&mut client, &pending.id, LIMIT, |j| j.waiting_for.contains("pending")).await;
    assert_eq!(w.last().unwrap().state(), JobState::Starting, "pending in Slurm is not running");
    watch_until(&mut client, &running.id, LIMIT, |j| j.step >= 5).await;
    daemon.restart();
    let mut client = daemon.client().await;
    for id in [&pending.id, &running.id] {
        let j = watch_until(&mut client, id, LIMIT, done).await.pop().unwrap();
        assert_eq!(
            (j.state(), j.attempt, j.weights_sha256.as_str()),
            (JobState::Completed, 1, "fake-60-0"),
            "{id}: {}",
            j.message
        );
        assert_eq!(cluster.jobs_of(id).len(), 1, "{id}: {:?}", cluster.jobs_of(id));
    }

    // (d) while the job ends: trainerd is down when the batch script records the end.
    let ending = submit(&mut client, long_fake("ending", &[("FAKE_STEPS", "20")])).await;
    watch_until(&mut client, &ending.id, LIMIT, |j| j.step >= 19).await;
    daemon.kill();
    let deadline = Instant::now() + LIMIT;
    while cluster.jobs_of(&ending.id).iter().any(|(_, s, _)| s == "RUNNING" || s == "COMPLETING") {
        assert!(Instant::now() < deadline, "the Slurm job never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.relaunch();
    let mut client = daemon.client().await;
    let e = watch_until(&mut client, &ending.id, LIMIT, done).await.pop().unwrap();
    assert_eq!((e.state(), e.attempt), (JobState::Completed, 1), "{}", e.message);
    assert_eq!(cluster.jobs_of(&ending.id).len(), 1);
    let kinds: Vec<String> = events(&mut client, &ending.id).await.into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"ended_unseen".to_string()), "{kinds:?}");

    // A lost notification of the end: the record says running while Slurm says the job ended, and
    // reconciliation fixes it with the real outcome.
    let unreported =
        submit(&mut client, long_fake("unreported", &[("FAKE_STEPS", "10"), ("TRAINERD_TEST_IGNORE_SHIM_EXIT", "1")]))
            .await;
    let slurm_id = watch_until(&mut client, &unreported.id, LIMIT, |j| j.slurm_job_id.is_some())
        .await
        .pop()
        .unwrap()
        .slurm_job_id
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while !cluster.jobs_of(&unreported.id).iter().any(|(_, s, _)| s == "COMPLETED") {
        assert!(Instant::now() < deadline, "the Slurm job never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get(&mut client, &unreported.id).await.state(), JobState::Running, "the lost end left it running");
    let fixes = client.reconcile(pb::ReconcileRequest {}).await.expect("reconcile").into_inner().fixes;
    let expected = format!(
        "job {}: attempt 1 (Slurm job {slurm_id}) had ended unreported (exited 0); its end is handled now",
        unreported.id
    );
    assert_eq!(fixes, vec![expected]);
    let fixed = get(&mut client, &unreported.id).await;
    assert_eq!((fixed.state(), fixed.weights_sha256.as_str()), (JobState::Completed, "fake-10-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_get_their_variables_and_a_time_limit_continues_in_the_next_allocation() {
    let Some(cluster) = Cluster::start() else { return };
    let daemon = cluster.daemon(&[]);
    let mut client = daemon.client().await;

    // Two ranks on one node: each sees its rank, the world size and the rendezvous address.
    let ranks = pb::SubmitJobRequest {
        name: "ranks".into(),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK node=$NODE_RANK master=$MASTER_ADDR:$MASTER_PORT"
                .into(),
        ],
        protocol: Some("none".into()),
        executor: Some("slurm".into()),
        slurm: Some(pb::SlurmOptions { nodes: 1, tasks_per_node: 2, ..Default::default() }),
        ..Default::default()
    };
    let ranks = submit(&mut client, ranks).await;
    let r = watch_until(&mut client, &ranks.id, LIMIT, done).await.pop().unwrap();
    assert_eq!(r.state(), JobState::Completed, "{}", r.message);
    let out = std::fs::read_to_string(daemon.job_dir(&ranks.id).join("stdout.log")).unwrap();
    let mut lines: Vec<&str> = out.lines().filter(|l| l.starts_with("rank=")).collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{out}");
    for (rank, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("rank={rank} world=2 local={rank} node=0 master=")), "{line}");
        assert!(!line.ends_with("master=:"), "{line}");
    }

    // A 1-minute allocation for a training that needs more: SIGTERM before the limit, a checkpoint,
    // and the next allocation continues exactly (the weights of an uninterrupted local run).
    let env = [("TRAINER_FAULT", "slow-eval@12"), ("TRAINER_FAULT_EVERY_ATTEMPT", "1")];
    let local = submit(&mut client, trainer_proc_job("local", 5, &env)).await;
    let mut long = slurm(trainer_proc_job("walltime", 5, &env));
    long.slurm = Some(pb::SlurmOptions { time_minutes: 1, signal_margin_s: 30, ..Default::default() });
    long.max_restarts = Some(0);
    let long = submit(&mut client, long).await;
    let local = watch_until(&mut client, &local.id, Duration::from_secs(240), done).await.pop().unwrap();
    let l = watch_until(&mut client, &long.id, Duration::from_secs(300), done).await.pop().unwrap();
    assert_eq!(l.state(), JobState::Completed, "{}", l.message);
    assert!(l.attempt >= 2, "the training outlasted one allocation: attempt {}", l.attempt);
    assert_eq!(l.weights_sha256, local.weights_sha256, "each allocation continued exactly");
    let all = events(&mut client, &long.id).await;
    assert!(
        all.iter().any(|(_, m)| m.contains("allocation_ended") || m.contains("time limit")),
        "the allocation's end is said: {all:?}"
    );
    assert_eq!(cluster.jobs_of(&long.id).len() as u32, l.attempt);
}
