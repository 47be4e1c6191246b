//! Hostile trainers: a job runs as its submitter, so any allowed user can run a trainer that plants
//! a FIFO, a socket, a directory or a device where its progress file goes, names a checkpoint that is
//! a FIFO or lies outside the job, rewrites its progress file as fast as it can, replaces its log with
//! a FIFO, or ignores every signal. Each case asserts that trainerd keeps answering every client on
//! time, that another user's job (the witness) runs to its end, and that the hostile job's state ends
//! true.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use trainctl::Client;
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::JobState;
use trainerd_tests::*;

const LIMIT: Duration = Duration::from_secs(60);
/// How long a client waits for an answer before the test calls trainerd wedged. Generous: it only
/// has to tell "answers" from "hangs", on a loaded 2-core machine.
const ANSWER: Duration = Duration::from_secs(3);

fn ended(job: &pb::Job) -> bool {
    trainerd_proto::state::is_terminal(job.state())
}

/// A trainer that is a shell script.
fn sh_job(name: &str, script: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        name: name.into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        backoff_base_ms: Some(0),
        ..Default::default()
    }
}

/// DaemonInfo and ListJobs each answer within [`ANSWER`].
async fn assert_served(client: &mut Client, when: &str) {
    let info = tokio::time::timeout(ANSWER, client.daemon_info(pb::DaemonInfoRequest {})).await;
    assert!(matches!(info, Ok(Ok(_))), "{when}: DaemonInfo did not answer within {ANSWER:?}: {info:?}");
    let list = tokio::time::timeout(ANSWER, client.list_jobs(pb::ListJobsRequest::default())).await;
    assert!(matches!(list, Ok(Ok(_))), "{when}: ListJobs did not answer within {ANSWER:?}");
}

/// Another user's job runs from submission to completion while the hostile one does its worst.
async fn witness_completes(client: &mut Client, when: &str) {
    let job = submit(client, fake_job("witness", &[("FAKE_STEPS", "5"), ("FAKE_STEP_MS", "10")])).await;
    let seen = watch_until(client, &job.id, LIMIT, ended).await;
    assert_eq!(seen.last().unwrap().state(), JobState::Completed, "{when}: the witness did not complete");
}

/// The job's event of `kind` whose message contains `part`, waiting for it at most 20 s.
async fn event_containing(client: &mut Client, id: &str, kind: &str, part: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = events(client, id).await;
        if let Some((_, m)) = all.iter().find(|(k, m)| k == kind && m.contains(part)) {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "no {kind} event containing {part:?}; events: {all:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `path` exists (made by the trainer), at most 20 s.
async fn appears(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::symlink_metadata(path).is_err() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn progress_path(daemon: &Daemon, id: &str) -> PathBuf {
    daemon.job_dir(id).join("trainer/progress.json")
}

#[tokio::test]
async fn a_fifo_socket_directory_or_device_at_the_progress_path_blocks_nothing_and_is_named() {
    let daemon = Daemon::start(&["--gpus", "none", "--slots", "8"]);
    let mut client = daemon.client().await;
    let plant = [
        ("a FIFO", "mkfifo \"$P\""),
        ("a socket", "python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' \"$P\""),
        ("a directory", "mkdir \"$P\""),
        ("a character device", "mknod \"$P\" c 1 3"),
    ];
    // A flag file lets each trainer exit when the test has seen what it needs.
    let flags = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    for (i, (kind, make)) in plant.iter().enumerate() {
        let go = flags.path().join(i.to_string());
        let script = format!(
            "P=\"$TRAINERD_PROGRESS_FILE\"; rm -f \"$P\"; {make}; while [ ! -e {go} ]; do sleep 0.05; done; exit 0",
            go = go.display()
        );
        let job = submit(&mut client, sh_job(&format!("hostile-{i}"), &script)).await;
        jobs.push((kind, job.id, go));
    }
    for (kind, id, _) in &jobs {
        let path = progress_path(&daemon, id);
        appears(&path).await;
        let message = event_containing(&mut client, id, "progress_invalid", "not a regular file").await;
        assert_eq!(
            message,
            format!(
                "progress file refused: {} is {kind}, not a regular file; ignored, the last good progress stands",
                path.display()
            )
        );
        assert_served(&mut client, kind).await;
    }
    witness_completes(&mut client, "with four hostile progress paths").await;
    for (kind, id, go) in &jobs {
        std::fs::write(go, b"").unwrap();
        let seen = watch_until(&mut client, id, LIMIT, ended).await;
        let last = seen.last().unwrap();
        // Exit 0 with no readable progress: completed, exactly as its exit code says.
        assert_eq!((last.state(), last.exit_code, last.attempt), (JobState::Completed, Some(0), 1), "{kind}");
        assert!(job_processes(&daemon.state_dir(), id).is_empty(), "{kind}: a process of the job is left");
    }
    let health = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!((health.status.as_str(), health.divergent), ("ok", 0), "{health:?}");
}

#[tokio::test]
async fn sigterm_ends_trainerd_within_its_grace_while_a_trainer_holds_a_fifo() {
    let mut daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    let script = "P=\"$TRAINERD_PROGRESS_FILE\"; rm -f \"$P\"; mkfifo \"$P\"; sleep 600";
    let job = submit(&mut client, sh_job("fifo-forever", script)).await;
    let pid_before = watch_until(&mut client, &job.id, LIMIT, |j| j.pid.is_some()).await.last().unwrap().pid;
    appears(&progress_path(&daemon, &job.id)).await;
    event_containing(&mut client, &job.id, "progress_invalid", "is a FIFO").await;
    drop(client);
    let pid = daemon.child.as_ref().unwrap().id();
    // SAFETY: kill(2) on the test's own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    // The documented bound under the default policy (leave): the connections' one-second grace,
    // the supervisor's, and the runtime's half second; 10 s tells "exits" from "hangs".
    wait_gone(pid, Duration::from_secs(10));
    let status = daemon.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "trainerd exited with {status:?}: {}", daemon.log());
    // Its job was left running (shutdown policy leave), and the next trainerd re-adopts it.
    daemon.relaunch();
    let mut client = daemon.client().await;
    let now = get(&mut client, &job.id).await;
    assert!(trainerd_proto::state::has_process(now.state()), "{now:?}");
    assert_eq!(now.pid, pid_before, "the same trainer, re-adopted");
    assert_served(&mut client, "after the restart").await;
}

#[tokio::test]
async fn a_checkpoint_that_is_a_fifo_or_outside_the_job_is_refused_and_never_resumed_from() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    // Attempt 1 names a checkpoint and exits 75 (retry me from it); attempt 2 prints what it was given.
    let write = |checkpoint: &str| {
        format!(
            "if [ \"$TRAINERD_ATTEMPT\" = 1 ]; then {checkpoint}; \
             printf '{{\"protocol\":1,\"state\":\"running\",\"step\":5,\"heartbeat_seq\":1,\"updated_at\":%s,\
             \"latest_checkpoint\":{{\"path\":\"%s\",\"step\":5,\"epoch\":1}}}}' \"$(date +%s)\" \"$C\" > \"$TRAINERD_PROGRESS_FILE.tmp\"; \
             mv \"$TRAINERD_PROGRESS_FILE.tmp\" \"$TRAINERD_PROGRESS_FILE\"; sleep 0.5; exit 75; fi; \
             echo \"RESUME=${{TRAINERD_RESUME_FROM:-none}}\"; exit 0"
        )
    };
    let cases = [
        ("fifo", write("C=\"$TRAINERD_CHECKPOINT_DIR/step-5\"; mkfifo \"$C\""), "is a FIFO, not a regular file"),
        ("outside", write("C=/etc"), "is not under the job's directories"),
        (
            "link-out",
            write("C=\"$TRAINERD_CHECKPOINT_DIR/out/passwd\"; ln -s /etc \"$TRAINERD_CHECKPOINT_DIR/out\""),
            "is not under the job's directories",
        ),
    ];
    for (name, script, why) in cases {
        let job = submit(&mut client, sh_job(name, &script)).await;
        let message = event_containing(&mut client, &job.id, "checkpoint_refused", why).await;
        assert!(message.starts_with("checkpoint at step 5 refused: "), "{message}");
        let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
        let last = seen.last().unwrap();
        assert_eq!((last.state(), last.attempt), (JobState::Completed, 2), "{name}: {last:?}");
        assert!(last.latest_checkpoint.is_none(), "{name}: a refused checkpoint was recorded: {last:?}");
        let stdout = std::fs::read_to_string(daemon.job_dir(&job.id).join("stdout.log")).unwrap();
        assert_eq!(stdout.trim(), "RESUME=none", "{name}: attempt 2 was handed a refused checkpoint");
    }
    assert_served(&mut client, "after the checkpoint cases").await;
}

#[tokio::test]
async fn a_progress_file_rewritten_as_fast_as_possible_costs_other_clients_nothing() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    let flags = tempfile::tempdir().unwrap();
    let go = flags.path().join("go");
    let program = flags.path().join("flood.py");
    std::fs::write(
        &program,
        r#"import json, os, sys, time
p = os.environ["TRAINERD_PROGRESS_FILE"]
n = 0
while not os.path.exists(sys.argv[1]):
    n += 1
    with open(p + ".tmp", "w") as f:
        json.dump({"protocol": 1, "state": "running", "step": n, "heartbeat_seq": n, "updated_at": time.time()}, f)
    os.replace(p + ".tmp", p)
print(n)
"#,
    )
    .unwrap();
    let script = format!("exec python3 {} {}", program.display(), go.display());
    let job = submit(&mut client, sh_job("flood", &script)).await;
    watch_until(&mut client, &job.id, LIMIT, |j| j.step > 1000).await;
    for round in 0..20 {
        assert_served(&mut client, &format!("round {round} of the flood")).await;
    }
    witness_completes(&mut client, "during the flood").await;
    std::fs::write(&go, b"").unwrap();
    let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
    let last = seen.last().unwrap();
    assert_eq!((last.state(), last.exit_code), (JobState::Completed, Some(0)));
    let written: u64 =
        std::fs::read_to_string(daemon.job_dir(&job.id).join("stdout.log")).unwrap().trim().parse().unwrap();
    assert!(last.step <= written && last.step > 1000, "step {} of {written} written", last.step);
}

#[tokio::test]
async fn a_log_replaced_by_a_fifo_blocks_no_reader_and_is_reclaimed_for_the_next_attempt() {
    use std::os::unix::fs::FileTypeExt;
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    // Attempt 1 replaces both logs with FIFOs and exits 75 when told; attempt 2 writes to its log.
    let flags = tempfile::tempdir().unwrap();
    let go = flags.path().join("go");
    let script = format!(
        "D=$(dirname \"$(dirname \"$TRAINERD_PROGRESS_FILE\")\"); \
         if [ \"$TRAINERD_ATTEMPT\" = 1 ]; then rm -f \"$D/stdout.log\" \"$D/stderr.log\"; \
         mkfifo \"$D/stdout.log\" \"$D/stderr.log\"; while [ ! -e {} ]; do sleep 0.05; done; exit 75; fi; \
         echo attempt 2 writes here; exit 0",
        go.display()
    );
    let job = submit(&mut client, sh_job("log-fifo", &script)).await;
    let stdout = daemon.job_dir(&job.id).join("stdout.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::symlink_metadata(&stdout).is_ok_and(|m| m.file_type().is_fifo()) {
        assert!(Instant::now() < deadline, "the trainer never planted its FIFO");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Reading the logs now neither blocks the reader nor trainerd.
    let request = pb::StreamLogsRequest { id: job.id.clone(), follow: false, tail_bytes: 0 };
    let mut logs = tokio::time::timeout(ANSWER, client.stream_logs(request))
        .await
        .expect("StreamLogs answers")
        .expect("StreamLogs")
        .into_inner();
    let read = tokio::time::timeout(ANSWER, async { while let Ok(Some(_)) = logs.message().await {} }).await;
    assert!(read.is_ok(), "the log stream did not end within {ANSWER:?}");
    assert_served(&mut client, "with FIFOs for logs").await;
    std::fs::write(&go, b"").unwrap();
    let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
    let last = seen.last().unwrap();
    assert_eq!((last.state(), last.attempt), (JobState::Completed, 2), "{last:?}");
    let reclaimed = event_containing(&mut client, &job.id, "log_reclaimed", "stdout.log was a FIFO").await;
    assert!(reclaimed.ends_with("not a log; removed, a new log begins"), "{reclaimed}");
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), "attempt 2 writes here\n");
}

#[tokio::test]
async fn a_trainer_that_ignores_every_signal_is_paused_by_timeout_and_cancelled_by_sigkill() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    let script = "trap '' TERM USR1 INT HUP; echo started; while :; do sleep 0.2; done";
    let req = pb::SubmitJobRequest { stop_grace_ms: Some(500), pause_timeout_ms: Some(500), ..sh_job("deaf", script) };
    let job = submit(&mut client, req).await;
    watch_until(&mut client, &job.id, LIMIT, |j| j.pid.is_some()).await;
    client.pause_job(pb::PauseJobRequest { id: job.id.clone() }).await.unwrap();
    let seen = watch_until(&mut client, &job.id, LIMIT, |j| j.state() == JobState::Paused).await;
    assert!(seen.iter().any(|j| j.state() == JobState::Stopping), "the pause timeout stopped it");
    assert!(job_processes(&daemon.state_dir(), &job.id).is_empty(), "a process of the paused job is left");
    client.resume_job(pb::ResumeJobRequest { id: job.id.clone() }).await.unwrap();
    watch_until(&mut client, &job.id, LIMIT, |j| j.attempt == 2 && j.pid.is_some()).await;
    // The pid is known before the shell has run its `trap`: wait for attempt 2's "started" line.
    let log = daemon.job_dir(&job.id).join("stdout.log");
    let deadline = Instant::now() + LIMIT;
    while std::fs::read_to_string(&log).unwrap_or_default().matches("started").count() < 2 {
        assert!(Instant::now() < deadline, "attempt 2 never started its loop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let cancelled = client.cancel_job(pb::CancelJobRequest { id: job.id.clone() }).await.unwrap().into_inner();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    // SIGTERM is ignored, so it takes the stop grace and a SIGKILL; never longer than a few seconds.
    assert!(started.elapsed() < Duration::from_secs(10), "cancel took {:?}", started.elapsed());
    assert!(job_processes(&daemon.state_dir(), &job.id).is_empty(), "a process of the cancelled job is left");
    let kinds: Vec<String> = events(&mut client, &job.id).await.into_iter().map(|(k, _)| k).collect();
    assert!(kinds.iter().filter(|k| *k == "killed").count() >= 2, "{kinds:?}");
    assert_served(&mut client, "after the deaf trainer").await;
}

#[tokio::test]
async fn a_shim_that_cannot_write_its_exit_record_reports_the_end_on_its_pipe_and_the_job_is_not_lost() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    // The trainer takes the exit record's place (as a full disk would take its space): the shim
    // cannot write exit.json, and says how the trainer ended on its pipe instead.
    let script = "D=$(dirname \"$(dirname \"$TRAINERD_PROGRESS_FILE\")\"); rm -f \"$D/exit.json.tmp\"; \
                  mkdir \"$D/exit.json.tmp\" \"$D/exit.json\"; exit 0";
    let job = submit(&mut client, sh_job("no-exit-record", script)).await;
    let seen = watch_until(&mut client, &job.id, LIMIT, ended).await;
    let last = seen.last().unwrap();
    assert_eq!((last.state(), last.exit_code, last.attempt), (JobState::Completed, Some(0), 1), "{last:?}");
    assert!(std::fs::metadata(daemon.job_dir(&job.id).join("exit.json")).unwrap().is_dir());
    let kinds: Vec<String> = events(&mut client, &job.id).await.into_iter().map(|(k, _)| k).collect();
    assert!(!kinds.contains(&"lost".to_string()), "{kinds:?}");
}

#[tokio::test]
async fn sigterm_under_the_pause_policy_ends_within_shutdown_timeout_whatever_the_trainer_does() {
    let mut daemon = Daemon::start(&["--gpus", "none", "--shutdown-policy", "pause", "--shutdown-timeout", "2"]);
    let mut client = daemon.client().await;
    // A protocol trainer that heartbeats but ignores SIGUSR1 (and every other signal it can), with a
    // pause_timeout far beyond the shutdown timeout.
    let script = "trap '' TERM USR1 INT HUP; while :; do \
                  printf '{\"protocol\":1,\"state\":\"running\",\"step\":1,\"heartbeat_seq\":%s,\"updated_at\":%s}' \
                  \"$(date +%s%N)\" \"$(date +%s)\" > \"$TRAINERD_PROGRESS_FILE.tmp\"; \
                  mv \"$TRAINERD_PROGRESS_FILE.tmp\" \"$TRAINERD_PROGRESS_FILE\"; sleep 0.2; done";
    let req =
        pb::SubmitJobRequest { pause_timeout_ms: Some(600_000), stop_grace_ms: Some(500), ..sh_job("deaf", script) };
    let job = submit(&mut client, req).await;
    let pid = watch_until(&mut client, &job.id, LIMIT, |j| j.step == 1).await.pop().unwrap().pid.unwrap();
    drop(client);
    let started = Instant::now();
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}: {}", daemon.log());
    let took = started.elapsed();
    // shutdown-timeout (2 s) + the connections' second + the runtime's half second, with room for a
    // loaded machine; without the bound it would wait out the 10-minute pause_timeout.
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    // The trainer that did not pause runs on under its shim; the next trainerd finds it pausing.
    assert!(alive(pid));
    daemon.relaunch();
    let mut client = daemon.client().await;
    assert_eq!(get(&mut client, &job.id).await.state(), JobState::Pausing);
    client.cancel_job(pb::CancelJobRequest { id: job.id.clone() }).await.unwrap();
}
