//! The measurements. Each starts from the user's side (a signal, a file write, a request) and stops
//! at what a user would see (a WatchJob update, a process started, a reply), on the real daemon.

use crate::daemon::{bin, comm, cpu_ticks, processes_with, pss_kb, status_field, Daemon};
use crate::stats::{ms, show, summary, Sample};
use crate::Figure;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use trainerd_proto::trainer::{unix_now, Progress, TrainerState};
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::JobState;

type Client = trainctl::Client;
type Updates = tonic::Streaming<pb::JobUpdate>;

/// A fake-trainer job that runs until stopped, writing progress once every `step_ms`.
fn fake(name: &str, step_ms: u64, env: &[(&str, &str)]) -> pb::SubmitJobRequest {
    let mut vars = vec![
        ("FAKE_STEPS".to_string(), "100000000".to_string()),
        ("FAKE_STEP_MS".to_string(), step_ms.to_string()),
        ("FAKE_CHECKPOINT_EVERY".to_string(), "0".to_string()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    pb::SubmitJobRequest {
        name: name.into(),
        command: vec![bin("fake-trainer").display().to_string()],
        env: vars.into_iter().map(|(name, value)| pb::EnvVar { name, value }).collect(),
        backoff_base_ms: Some(0),
        backoff_max_ms: Some(0),
        // RUNNING at the first heartbeat (after the trainer's main has stamped), not at its start.
        protocol: Some("v1".into()),
        ..Default::default()
    }
}

async fn submit(client: &mut Client, req: pb::SubmitJobRequest) -> pb::Job {
    client.submit_job(req).await.expect("submit").into_inner().job.expect("job")
}

async fn watch(client: &mut Client, id: &str) -> Updates {
    client.watch_job(pb::WatchJobRequest { id: id.into() }).await.expect("watch").into_inner()
}

/// The next update for which `done` holds, and when it arrived.
async fn until(updates: &mut Updates, done: impl Fn(&pb::Job) -> bool) -> (pb::Job, Instant) {
    let wait = async {
        while let Some(update) = updates.next().await {
            let job = update.expect("update").job.expect("job");
            if done(&job) {
                return (job, Instant::now());
            }
        }
        panic!("the watch ended before the condition held");
    };
    tokio::time::timeout(Duration::from_secs(120), wait).await.expect("condition within 120 s")
}

fn kill(pid: u32) {
    // SAFETY: kill(2) on a trainer this benchmark started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

fn running(job: &pb::Job) -> bool {
    job.state() == JobState::Running && job.pid.is_some()
}

/// Starts a job that fails at its first crash, waits until it runs, and SIGKILLs its trainer; returns
/// the job's updates, its id and the instant of the kill.
async fn start_and_kill(client: &mut Client, name: &str) -> (Updates, String, Instant) {
    let req = pb::SubmitJobRequest { on_failure: Some("fail".into()), ..fake(name, 100, &[]) };
    let job = submit(client, req).await;
    let mut updates = watch(client, &job.id).await;
    let (job, _) = until(&mut updates, running).await;
    let killed = Instant::now();
    kill(job.pid.unwrap_or_default());
    (updates, job.id, killed)
}

/// SIGKILL of a trainer until its job's state changes: on a WatchJob stream, and through
/// `trainctl get` run again and again, as a script would.
pub async fn exit_detection(daemon: &Daemon, watch_runs: usize, get_runs: usize) -> Vec<Figure> {
    let mut client = daemon.client().await;
    let mut on_watch = Vec::new();
    // The exit path's parts: the shim's reap (its exit record's own time) after the SIGKILL, and what
    // trainerd's metrics say of its part (its wake to the recorded, flushed transition) and of flushes.
    let before = daemon.metrics();
    let mut reaped = Vec::new();
    for _ in 0..watch_runs {
        let (mut updates, id, started) = start_and_kill(&mut client, "exit").await;
        let killed_at = unix_now() - started.elapsed().as_secs_f64();
        let (_, seen) = until(&mut updates, |j| j.state() != JobState::Running).await;
        on_watch.push(seen - started);
        let record = std::fs::read(daemon.state_dir().join("jobs").join(&id).join("exit.json")).unwrap_or_default();
        let at = serde_json::from_slice::<serde_json::Value>(&record).ok().and_then(|v| v["at"].as_f64());
        if let Some(at) = at.filter(|at| *at >= killed_at) {
            reaped.push(Duration::from_secs_f64(at - killed_at));
        }
    }
    let after = daemon.metrics();
    let mean_of = |name: &str| {
        let delta = |key: &str| after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0);
        let count = delta(&format!("{name}_count"));
        (count > 0.0).then(|| Duration::from_secs_f64(delta(&format!("{name}_sum")) / count))
    };
    let mean = |d: &[Duration]| d.iter().sum::<Duration>() / d.len().max(1) as u32;
    let breakdown = match (mean_of("trainerd_exit_detection_seconds"), mean_of("trainerd_store_flush_seconds")) {
        (Some(trainerd), Some(flush)) if !reaped.is_empty() => {
            let (total, reap) = (mean(&on_watch), mean(&reaped));
            let rest = total.saturating_sub(reap + trainerd);
            Some(
                Figure::new(
                    "exit path, means: SIGKILL → shim reaps → trainerd wakes, records, flushes → WatchJob update",
                    format!(
                        "{} in all (n={}): SIGKILL → the shim's reap {}; trainerd from its wake to the transition \
                     recorded and flushed {} (of which the flush {}, mean of {} flushes); the rest {} (the shim \
                     writing its record and exiting, trainerd's wake, the update through gRPC to the client)",
                        show(total),
                        on_watch.len(),
                        show(reap),
                        show(trainerd),
                        show(flush),
                        (after.get("trainerd_store_flush_seconds_count").copied().unwrap_or(0.0)
                            - before.get("trainerd_store_flush_seconds_count").copied().unwrap_or(0.0))
                            as u64,
                        show(rest)
                    ),
                    "figure reported",
                    true,
                )
                .headline(ms(trainerd), "ms"),
            )
        }
        _ => None,
    };
    let mut through_get = Vec::new();
    for _ in 0..get_runs {
        let (_updates, id, started) = start_and_kill(&mut client, "exit-get").await;
        loop {
            let out = Command::new(bin("trainctl"))
                .arg("--socket")
                .arg(daemon.socket())
                .args(["--json", "get", &id])
                .output()
                .expect("trainctl");
            let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("trainctl --json get");
            if value["state"] != "running" {
                through_get.push(started.elapsed());
                break;
            }
        }
    }
    let (w, g) = (Sample::new(on_watch), Sample::new(through_get));
    let mut figures = vec![
        Figure::new(
            "exit detection: SIGKILL → WatchJob update",
            summary(&w),
            "p50 < 1 ms, p99 < 3 ms",
            w.p50() < Duration::from_millis(1) && w.p99() < Duration::from_millis(3),
        )
        .headline(ms(w.p50()), "ms"),
        Figure::new(
            "exit detection through `trainctl get`",
            summary(&g),
            "p50 < 3 ms",
            g.p50() < Duration::from_millis(3),
        )
        .headline(ms(g.p50()), "ms"),
    ];
    figures.extend(breakdown);
    figures
}

/// `trainctl get` of a running job as a new process, spawn to exit, as a script calls it; beside
/// it, in the same run, `/bin/true` (the floor any new process pays here) and `trainctl --version`
/// (the same binary started, its command line parsed, no call): what lies between the three is
/// trainctl's own start and the call.
pub async fn trainctl_get(daemon: &Daemon, runs: usize) -> Vec<Figure> {
    let mut client = daemon.client().await;
    let job = submit(&mut client, fake("get", 1000, &[])).await;
    let mut updates = watch(&mut client, &job.id).await;
    until(&mut updates, running).await;
    let time = |cmd: &mut Command| {
        let started = Instant::now();
        let out = cmd.output().expect("spawn");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        started.elapsed()
    };
    let (mut gets, mut trues, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        gets.push(time(
            Command::new(bin("trainctl")).arg("--socket").arg(daemon.socket()).args(["--json", "get", &job.id]),
        ));
        trues.push(time(&mut Command::new("/bin/true")));
        starts.push(time(Command::new(bin("trainctl")).arg("--version")));
    }
    let _ = client.cancel_job(pb::CancelJobRequest { id: job.id }).await;
    let (g, t, v) = (Sample::new(gets), Sample::new(trues), Sample::new(starts));
    vec![Figure::new(
        "`trainctl get` as a new process (spawn → exit)",
        format!(
            "{}; `/bin/true` in the same run: {}; `trainctl --version` (its own start, no call): {}",
            summary(&g),
            summary(&t),
            summary(&v)
        ),
        "p50 < 2 ms",
        g.p50() < Duration::from_millis(2),
    )
    .headline(ms(g.p50()), "ms")]
}

/// Writes progress files (temporary file, then rename) for a trainer that has gone quiet, and times
/// each rename to the WatchJob update that carries its step.
pub async fn propagation(daemon: &Daemon, runs: usize) -> Vec<Figure> {
    let mut client = daemon.client().await;
    let req = pb::SubmitJobRequest {
        heartbeat_timeout_ms: Some(3_600_000),
        ..fake("quiet", 10, &[("FAKE_FAULT", "hang@1")])
    };
    let job = submit(&mut client, req).await;
    let mut updates = watch(&mut client, &job.id).await;
    until(&mut updates, |j| j.step >= 1).await;
    let dir = daemon.trainer_dir(&job.id);
    let mut lags = Vec::new();
    for i in 0..runs as u64 {
        let mut progress = Progress::starting(unix_now());
        progress.state = TrainerState::Running;
        progress.step = 1000 + i;
        progress.heartbeat_seq = 1000 + i;
        let tmp = dir.join(".bench.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&progress).expect("json")).expect("write");
        let started = Instant::now();
        std::fs::rename(&tmp, dir.join("progress.json")).expect("rename");
        let (_, seen) = until(&mut updates, |j| j.step == 1000 + i).await;
        lags.push(seen - started);
    }
    let _ = client.cancel_job(pb::CancelJobRequest { id: job.id }).await;
    let s = Sample::new(lags);
    vec![Figure::new(
        "progress propagation: rename → WatchJob update",
        summary(&s),
        "p99 < 5 ms",
        s.p99() < Duration::from_millis(5),
    )
    .headline(ms(s.p99()), "ms")]
}

/// Trainers that stop their heartbeats: the time from the last heartbeat plus the timeout to the
/// SIGTERM they receive (each stamps it in a file).
pub async fn hang_detection(daemon: &Daemon, runs: usize, timeout: Duration) -> Vec<Figure> {
    let mut client = daemon.client().await;
    let stamps = tempfile::tempdir().expect("tempdir");
    let mut jobs = Vec::new();
    for i in 0..runs {
        let stamp = stamps.path().join(format!("hang-{i}"));
        let req = pb::SubmitJobRequest {
            heartbeat_timeout_ms: Some(timeout.as_millis() as u64),
            stop_grace_ms: Some(200),
            on_failure: Some("fail".into()),
            ..fake("hang", 10, &[("FAKE_FAULT", "hang@3"), ("FAKE_STAMP_FILE", stamp.to_str().unwrap())])
        };
        jobs.push((submit(&mut client, req).await, stamp));
    }
    let mut late = Vec::new();
    for (job, stamp) in jobs {
        let mut updates = watch(&mut client, &job.id).await;
        until(&mut updates, |j| j.state() == JobState::Failed).await;
        let text = std::fs::read_to_string(&stamp).expect("stamp file");
        let term: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("term "))
            .and_then(|t| t.parse().ok())
            .expect("the trainer got SIGTERM");
        let progress = std::fs::read(daemon.trainer_dir(&job.id).join("progress.json")).expect("progress file");
        let last_beat = Progress::parse(&progress).expect("progress").updated_at;
        late.push(Duration::from_secs_f64((term - last_beat - timeout.as_secs_f64()).max(0.0)));
    }
    let s = Sample::new(late);
    vec![Figure::new(
        &format!("hang detection: last heartbeat + {} s → SIGTERM", timeout.as_secs_f64()),
        format!("T + ({})", summary(&s)),
        "within T + 50 ms",
        s.max() < Duration::from_millis(50),
    )
    .headline(ms(s.max()), "ms")]
}

/// Last `start` stamp in a stamp file.
fn last_start(stamp: &Path) -> f64 {
    let text = std::fs::read_to_string(stamp).expect("stamp file");
    text.lines().rev().filter_map(|l| l.strip_prefix("start ")).find_map(|t| t.parse().ok()).expect("a start")
}

/// SIGKILL of a trainer until its replacement's `main` runs (restart without backoff), beside the
/// time the same program takes to reach `main` when simply spawned.
pub async fn restart(daemon: &Daemon, runs: usize) -> Vec<Figure> {
    let mut client = daemon.client().await;
    let stamps = tempfile::tempdir().expect("tempdir");
    let stamp = stamps.path().join("restart");
    let req = pb::SubmitJobRequest {
        max_restarts: Some(1_000_000),
        ..fake("restart", 100, &[("FAKE_STAMP_FILE", stamp.to_str().unwrap())])
    };
    let job = submit(&mut client, req).await;
    let mut updates = watch(&mut client, &job.id).await;
    let mut restarts = Vec::new();
    for i in 0..runs as u32 {
        let (running, _) = until(&mut updates, |j| running(j) && j.attempt == i + 1).await;
        let killed = unix_now();
        kill(running.pid.unwrap_or_default());
        until(&mut updates, |j| j.attempt == i + 2 && j.state() == JobState::Running).await;
        restarts.push(Duration::from_secs_f64((last_start(&stamp) - killed).max(0.0)));
    }
    let _ = client.cancel_job(pb::CancelJobRequest { id: job.id }).await;
    let mut startups = Vec::new();
    for i in 0..runs {
        let own = stamps.path().join(format!("own-{i}"));
        let spawned = unix_now();
        // Without the protocol's environment it stops right after stamping; only the start matters.
        let _ = Command::new(bin("fake-trainer")).env_clear().env("FAKE_STAMP_FILE", &own).output();
        startups.push(Duration::from_secs_f64((last_start(&own) - spawned).max(0.0)));
    }
    let (r, s) = (Sample::new(restarts), Sample::new(startups));
    let beyond = r.p50().saturating_sub(s.p50());
    vec![Figure::new(
        "restart: SIGKILL → replacement trainer's main (no backoff)",
        format!("{}; the trainer's own spawn → main: p50 {}; beyond it: {}", summary(&r), show(s.p50()), show(beyond)),
        "p50 < 20 ms beyond the process's own start-up",
        beyond < Duration::from_millis(20),
    )
    .headline(ms(beyond), "ms")]
}

/// Sequential submissions over the unix socket (each a transaction flushed before its reply) while
/// one job holds the only slot, then cancels of all of them, then `trainctl ls` over the store.
pub async fn store(daemon: &Daemon, jobs: usize) -> Vec<Figure> {
    let mut client = daemon.client().await;
    let blocker = submit(&mut client, fake("blocker", 1000, &[])).await;
    let mut latencies = Vec::with_capacity(jobs);
    let mut ids = Vec::with_capacity(jobs);
    let started = Instant::now();
    for _ in 0..jobs {
        let sent = Instant::now();
        ids.push(submit(&mut client, fake("queued", 1000, &[])).await.id);
        latencies.push(sent.elapsed());
    }
    let submitting = started.elapsed();
    let cancelling = Instant::now();
    for id in ids {
        client.cancel_job(pb::CancelJobRequest { id }).await.expect("cancel");
    }
    let cancelling = cancelling.elapsed();
    let _ = client.cancel_job(pb::CancelJobRequest { id: blocker.id }).await;
    let ls = |limit: &str| {
        let runs: Vec<Duration> = (0..5)
            .map(|_| {
                let started = Instant::now();
                let out = Command::new(bin("trainctl"))
                    .arg("--socket")
                    .arg(daemon.socket())
                    .args(["ls", "--limit", limit])
                    .output()
                    .expect("trainctl ls");
                assert!(out.status.success(), "trainctl ls failed");
                started.elapsed()
            })
            .collect();
        Sample::new(runs).p50()
    };
    let (page, all) = (ls("100"), ls("100000"));
    let records = jobs + 1;
    let rate = jobs as f64 / submitting.as_secs_f64();
    let l = Sample::new(latencies);
    vec![
        Figure::new(
            "submissions over the unix socket, one sequential client",
            format!("{rate:.0}/s ({jobs} jobs; cancels {:.0}/s)", jobs as f64 / cancelling.as_secs_f64()),
            "≥ 2,000/s",
            rate >= 2000.0,
        )
        .headline(rate, "/s"),
        Figure::new(
            "state transition written and flushed before the ack (a submission's round trip)",
            summary(&l),
            "figure reported",
            true,
        )
        .headline(ms(l.p50()), "ms"),
        Figure::new(
            &format!("`trainctl ls` with {records} jobs in the store"),
            format!("{} (newest 100), {} (all {records})", show(page), show(all)),
            "< 100 ms",
            page < Duration::from_millis(100) && all < Duration::from_millis(100),
        )
        .headline(ms(all), "ms"),
    ]
}

/// Submissions from 16 clients at once, each on its own connection, into a store of its own (so the
/// other figures' stores keep their size), while one job holds the only slot: concurrent submissions
/// share their flushes, each still on disk before its reply.
pub async fn concurrent_submissions(jobs: usize, idle: Duration) -> Vec<Figure> {
    let daemon = Daemon::start(&["--slots", "1", "--heartbeat-interval", "5", "--reconcile-interval", "30"]);
    let mut client = daemon.client().await;
    let blocker = submit(&mut client, fake("blocker", 1000, &[])).await;
    let clients = 16;
    let each = (jobs / clients).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = daemon.client().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                submit(&mut c, fake("queued", 1000, &[])).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a submitting client");
    }
    let rate = (clients * each) as f64 / started.elapsed().as_secs_f64();
    // Then the jobs wait in the queue behind the blocker, whose trainer writes progress once a
    // second: over a window longer than a reconciliation interval, trainerd's CPU.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = daemon.pid();
    let (before, watched) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(idle).await;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (cpu_ticks(pid) - before) as f64 / hz / watched.elapsed().as_secs_f64() * 100.0;
    let _ = client.cancel_job(pb::CancelJobRequest { id: blocker.id }).await;
    vec![
        Figure::new(
            "submissions over the unix socket, 16 concurrent clients (each durable before its reply)",
            format!("{rate:.0}/s ({} jobs)", clients * each),
            "≥ 10,000/s",
            rate >= 10_000.0,
        )
        .headline(rate, "/s"),
        Figure::new(
            &format!("{} idle queued jobs (and one running), over {:.0} s", clients * each, idle.as_secs_f64()),
            format!("trainerd CPU {cpu:.2}% of one core (a reconciliation every 30 s included)"),
            "no CPU (< 0.5%)",
            cpu < 0.5,
        )
        .headline(cpu, "%"),
    ]
}

/// What durability costs below trainerd, on the same file system as the daemons' state dirs: a
/// 4 KiB `pwrite` + `fdatasync`, and sled (the store's database, configured as trainerd configures
/// it) inserting one 1 KiB record and flushing.
pub fn floors(runs: usize) -> Vec<Figure> {
    use std::os::unix::fs::FileExt;
    let runs = runs.max(20) * 2;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::fs::File::create(dir.path().join("floor")).expect("floor file");
    let block = [7u8; 4096];
    let mut syncs = Vec::new();
    for i in 0..runs {
        let started = Instant::now();
        file.write_all_at(&block, (i * block.len()) as u64).expect("pwrite");
        file.sync_data().expect("fdatasync");
        syncs.push(started.elapsed());
    }
    let db = sled::Config::new().path(dir.path().join("sled")).cache_capacity(16 << 20).open().expect("sled");
    let tree = db.open_tree("jobs").expect("tree");
    let record = vec![3u8; 1024];
    let mut flushes = Vec::new();
    for i in 0..runs as u64 {
        let started = Instant::now();
        tree.insert(i.to_be_bytes(), record.as_slice()).expect("insert");
        db.flush().expect("flush");
        flushes.push(started.elapsed());
    }
    let (d, f) = (Sample::new(syncs), Sample::new(flushes));
    vec![
        Figure::new(
            "floor: 4 KiB pwrite + fdatasync on the state dir's file system",
            format!("{} (at most {:.0} durable writes/s one after another)", summary(&d), 1.0 / d.p50().as_secs_f64()),
            "figure reported",
            true,
        )
        .headline(ms(d.p50()), "ms"),
        Figure::new(
            "floor: sled insert of one 1 KiB record + flush",
            format!("{} (at most {:.0} durable records/s one after another)", summary(&f), 1.0 / f.p50().as_secs_f64()),
            "figure reported",
            true,
        )
        .headline(ms(f.p50()), "ms"),
    ]
}

/// trainerd SIGKILLed with `jobs` running jobs and started again on the same state dir, `runs` times:
/// from the new trainerd's spawn to its first answer (READY, then a GetJob's reply).
pub async fn first_answer(jobs: usize, runs: usize) -> Vec<Figure> {
    let mut daemon = Daemon::start(&["--slots", "100", "--heartbeat-interval", "5"]);
    let ids = {
        let mut client = daemon.client().await;
        let mut ids = Vec::new();
        for _ in 0..jobs {
            ids.push(submit(&mut client, fake("survivor", 1000, &[])).await.id);
        }
        while running_jobs(&mut client, "survivor").await.len() < jobs {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ids
    };
    let mut answers = Vec::new();
    for _ in 0..runs {
        daemon.kill();
        let started = Instant::now();
        daemon.launch();
        let mut client = daemon.client().await;
        client.get_job(pb::GetJobRequest { id: ids[0].clone() }).await.expect("first answer");
        answers.push(started.elapsed());
    }
    let mut client = daemon.client().await;
    let running = running_jobs(&mut client, "survivor").await.len();
    let a = Sample::new(answers);
    vec![Figure::new(
        &format!("trainerd SIGKILLed with {jobs} running jobs → the restarted daemon's first answer"),
        format!("{} ({running}/{jobs} jobs still running after the last restart)", summary(&a)),
        "< 15 ms",
        a.p50() < Duration::from_millis(15) && running == jobs,
    )
    .headline(ms(a.p50()), "ms")]
}

/// Submits `count` long-running jobs and waits until all run; returns the time from the first
/// submission until all run, and until the last was submitted.
async fn start_jobs(daemon: &Daemon, count: usize, name: &str) -> (Duration, Duration) {
    let mut client = daemon.client().await;
    let started = Instant::now();
    for _ in 0..count {
        // A loss and one metric in every report, as a real trainer's: each is a point of the job's
        // metric history.
        submit(&mut client, fake(name, 1000, &[("FAKE_LOSS", "1")])).await;
    }
    let submitted = started.elapsed();
    loop {
        let pids = running_jobs(&mut client, name).await;
        if pids.len() >= count {
            return (started.elapsed(), submitted);
        }
        // Each ListJobs reads the store: asking every 5 ms would itself load the daemon under test.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn running_jobs(client: &mut Client, name: &str) -> HashMap<String, u32> {
    let req = pb::ListJobsRequest {
        states: vec![JobState::Running as i32],
        name: name.into(),
        page_size: 100_000,
        page_token: String::new(),
    };
    let jobs = client.list_jobs(req).await.expect("list").into_inner().jobs;
    jobs.into_iter().filter_map(|j| Some((j.id, j.pid?))).collect()
}

/// The floor of the burst row: the same `burst` jobs submitted until all run, with trainerd's state
/// dir, and so every job's directories, logs and progress files, in memory (tmpfs at `/dev/shm`)
/// rather than on the disk. What the disk run takes beyond this is the disk's file system: creating
/// the jobs' directories and files, and their flushes. None where `/dev/shm` is not a tmpfs.
pub async fn burst_in_memory(burst: usize) -> Option<Figure> {
    let shm = Path::new("/dev/shm");
    // SAFETY: statfs into a zeroed struct, with a NUL-terminated path.
    let tmpfs = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c"/dev/shm".as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
    };
    if !tmpfs {
        return None;
    }
    let daemon = Daemon::start_under(shm, &["--slots", &(burst + 10).to_string(), "--heartbeat-interval", "5"]);
    let busy_before = system_cpu();
    let (took, submitted) = start_jobs(&daemon, burst, "burst").await;
    let busy = busy_share(busy_before, system_cpu());
    drop(daemon);
    Some(
        Figure::new(
            &format!("floor: {burst} jobs submitted → all running, the state dir in memory (tmpfs)"),
            format!(
                "{} (the last submitted after {}; all cores {busy:.0}% busy meanwhile)",
                show(took),
                show(submitted)
            ),
            "figure reported",
            true,
        )
        .headline(ms(took), "ms"),
    )
}

/// `burst` jobs submitted until all run; then `live` in all, each writing progress once a second,
/// and trainerd's memory and CPU over `window`; the shims' memory; then trainerd killed and
/// restarted on the same store, until READY, and every live job re-adopted.
pub async fn scale_and_recovery(daemon: &mut Daemon, burst: usize, live: usize, window: Duration) -> Vec<Figure> {
    let busy_before = system_cpu();
    let (burst_time, burst_submitted) = start_jobs(daemon, burst, "burst").await;
    let busy = busy_share(busy_before, system_cpu());
    let (daemon_kb, shims_kb, shims_at_burst) = memory(daemon);
    let probe = daemon.dir.path().join("start-files");
    let disk = tokio::task::spawn_blocking(move || start_files(&probe, burst)).await.expect("the disk probe");
    let (_, _) = start_jobs(daemon, live - burst, "scale").await;
    let mut client = daemon.client().await;
    let mut pids = running_jobs(&mut client, "burst").await;
    pids.extend(running_jobs(&mut client, "scale").await);
    assert_eq!(pids.len(), live, "every live job runs");

    let pid = daemon.pid();
    let before = cpu_ticks(pid);
    let started = Instant::now();
    let mut rss_max = 0;
    while started.elapsed() < window {
        rss_max = rss_max.max(status_field(pid, "VmRSS:").unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (cpu_ticks(pid) - before) as f64 / hz / started.elapsed().as_secs_f64() * 100.0;

    // The same with one job watched: while a WatchJob stream is open, reports are read as soon as
    // its propagation budget asks (`job::watch::GATHER`), not as the unwatched pace allows.
    let watched = pids.keys().next().cloned().expect("a live job");
    let mut stream = watch(&mut client, &watched).await;
    let updates = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = updates.clone();
    let drain = tokio::spawn(async move {
        while let Ok(Some(_)) = stream.message().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let (before, started) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(window / 3).await;
    let watched_for = started.elapsed();
    let cpu_watched = (cpu_ticks(pid) - before) as f64 / hz / watched_for.as_secs_f64() * 100.0;
    drain.abort();
    let updates = updates.load(std::sync::atomic::Ordering::Relaxed);

    let shims = shims_of(daemon);
    let pss: Vec<u64> = shims.iter().filter_map(|p| pss_kb(*p)).collect();
    let threads = shims.iter().filter_map(|p| status_field(*p, "Threads:")).max().unwrap_or(0);
    let pss_mean = pss.iter().sum::<u64>() as f64 / pss.len().max(1) as f64;
    let pss_max = pss.iter().copied().max().unwrap_or(0);

    daemon.kill();
    let ready = daemon.launch();
    let mut client = daemon.client().await;
    let mut after = running_jobs(&mut client, "burst").await;
    after.extend(running_jobs(&mut client, "scale").await);
    let adopted = pids.iter().filter(|(id, pid)| after.get(*id) == Some(pid)).count();
    let records = client
        .list_jobs(pb::ListJobsRequest { page_size: 1_000_000, ..Default::default() })
        .await
        .expect("list")
        .into_inner()
        .jobs
        .len();
    vec![
        Figure::new(
            &format!("{burst} jobs submitted → all running"),
            format!(
                "{} (the last submitted after {}; all cores {busy:.0}% busy meanwhile; the disk's floor in this run, \
                 the same files made alone: {})",
                show(burst_time),
                show(burst_submitted),
                disk.as_ref().map_or_else(|e| format!("not measured: {e}"), |took| show(*took))
            ),
            "< 1 s",
            burst_time < Duration::from_secs(1),
        )
        .headline(ms(burst_time), "ms"),
        match disk {
            Ok(took) => Figure::new(
                &format!("floor: the directories and files {burst} starts create, made alone on the same disk"),
                format!(
                    "{} ({} a start: 3 directories, 5 files, 2 of them renamed into place)",
                    show(took),
                    show(took / burst.max(1) as u32)
                ),
                "figure reported",
                true,
            )
            .headline(ms(took), "ms"),
            Err(e) => Figure::new(
                "floor: the files the starts create, on the same disk",
                format!("not measured: {e}"),
                "figure reported",
                false,
            ),
        },
        Figure::new(
            &format!("memory with {burst} running jobs: trainerd's RSS + its shims' total PSS"),
            format!(
                "{:.1} MiB: trainerd {:.1} MiB + {shims_at_burst} shims {:.1} MiB ({:.0} kB each)",
                (daemon_kb + shims_kb) as f64 / 1024.0,
                daemon_kb as f64 / 1024.0,
                shims_kb as f64 / 1024.0,
                shims_kb as f64 / shims_at_burst.max(1) as f64
            ),
            "< 45 MiB",
            daemon_kb + shims_kb < 45 * 1024,
        )
        .headline((daemon_kb + shims_kb) as f64 / 1024.0, "MiB"),
        Figure::new(
            &format!(
                "scale: {live} jobs, progress with a loss and a metric once a second each, over {:.0} s",
                window.as_secs_f64()
            ),
            format!("trainerd RSS {:.1} MiB (max), CPU {cpu:.2}% of one core", rss_max as f64 / 1024.0),
            "RSS < 64 MiB, CPU < 3%",
            rss_max < 64 * 1024 && cpu < 3.0,
        )
        .headline(cpu, "%"),
        Figure::new(
            &format!(
                "scale, one of the {live} jobs watched (a WatchJob stream open), over {:.0} s",
                watched_for.as_secs_f64()
            ),
            format!("trainerd CPU {cpu_watched:.2}% of one core ({updates} updates streamed)"),
            "figure reported",
            true,
        )
        .headline(cpu_watched, "%"),
        Figure::new(
            "the per-job shim",
            format!("PSS {pss_mean:.0} kB mean, {pss_max} kB max, {threads} thread(s) (n={})", shims.len()),
            "PSS ≤ 40 kB, no extra threads",
            pss_max <= 40 && threads == 1,
        )
        .headline(pss_mean, "kB"),
        Figure::new(
            &format!("recovery: {records} records, {live} live jobs"),
            format!("READY after {}, {adopted}/{live} re-adopted (same pid)", show(ready)),
            "READY < 2 s, every live job re-adopted",
            ready < Duration::from_secs(2) && adopted == live,
        )
        .headline(ms(ready), "ms"),
    ]
}

/// The disk's part of `count` starts, measured apart from trainerd: under `root` (beside the jobs'
/// directories, so on the same file system as they are, as aged as they are) one thread makes what a
/// start makes there (trainerd the job's directories and stderr log, its shim the stdout log, the
/// exit record's reservation and `shim.json`, the trainer its first progress file), with nothing else
/// of a start. On ext4 without a journal each new inode is allocated past every inode freed in the
/// last minute or so (`recently_deleted`), so this cost rises with the churn before it.
fn start_files(root: &Path, count: usize) -> std::io::Result<Duration> {
    std::fs::create_dir(root)?;
    let started = Instant::now();
    for i in 0..count {
        let job = root.join(format!("{i:012}"));
        let trainer = job.join("trainer");
        std::fs::create_dir(&job)?;
        std::fs::create_dir(&trainer)?;
        std::fs::create_dir(trainer.join("checkpoints"))?;
        for file in ["stderr.log", "stdout.log", "exit.json.tmp"] {
            std::fs::File::create(job.join(file))?;
        }
        for (dir, name) in [(&job, "shim.json"), (&trainer, "progress.json")] {
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, b"{}")?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
    }
    Ok(started.elapsed())
}

/// The shims of `daemon`'s jobs.
fn shims_of(daemon: &Daemon) -> Vec<u32> {
    processes_with(&daemon.state_dir().display().to_string())
        .into_iter()
        .filter(|p| comm(*p) == "trainerd-shim")
        .collect()
}

/// trainerd's RSS and its shims' total PSS (kB), and how many shims.
fn memory(daemon: &Daemon) -> (u64, u64, usize) {
    let shims = shims_of(daemon);
    let pss: u64 = shims.iter().filter_map(|p| pss_kb(*p)).sum();
    (status_field(daemon.pid(), "VmRSS:").unwrap_or(0), pss, shims.len())
}

/// The whole machine's busy and total CPU time so far, from the first line of /proc/stat.
fn system_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are fields 4 and 5.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn busy_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64 * 100.0
}

/// trainer-proc on the CPU: steps per second, checkpoint save and restore, progress overhead, from
/// the statistics line it prints at the end.
pub fn trainer_proc(epochs: u32, steps_per_epoch: u32) -> Vec<Figure> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let run = |resume: Option<&Path>| {
        let mut cmd = Command::new(bin("trainer-proc"));
        cmd.arg("--out").arg(&out).args(["--device", "cpu", "--threads", "1", "--epochs", &epochs.to_string()]);
        cmd.args(["--steps-per-epoch", &steps_per_epoch.to_string(), "--checkpoint-every", "50", "--patience", "0"]);
        cmd.env_remove("TRAINERD_PROGRESS_FILE").env_remove("TRAINERD_RESUME_FROM");
        if let Some(path) = resume {
            cmd.env("TRAINERD_RESUME_FROM", path).env("TRAINERD_ATTEMPT", "2");
        }
        let output = cmd.output().expect("trainer-proc");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "trainer-proc failed: {text}{}", String::from_utf8_lossy(&output.stderr));
        let line = text.lines().find_map(|l| l.strip_prefix("trainer-proc: stats ")).expect("stats line").to_string();
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse::<f64>().unwrap_or(f64::NAN)))
            .collect::<HashMap<String, f64>>()
    };
    let first = run(None);
    let mut checkpoints: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .expect("checkpoints")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    checkpoints.sort();
    let resumed = run(Some(&checkpoints[0]));
    let overhead = first["progress_overhead_pct"];
    vec![
        Figure::new(
            "trainer-proc on the CPU (1 thread)",
            format!(
                "{:.0} steps/s; checkpoint save {:.2} ms mean ({} saves); restore {:.2} ms",
                first["steps_per_s"], first["checkpoint_ms_mean"], first["checkpoints"], resumed["restore_ms"]
            ),
            "figures reported",
            true,
        )
        .headline(first["steps_per_s"], "steps/s"),
        Figure::new(
            "trainer-proc: progress reporting's share of the run",
            format!("{overhead:.3}%"),
            "< 1%",
            overhead < 1.0,
        )
        .headline(overhead, "%"),
    ]
}
