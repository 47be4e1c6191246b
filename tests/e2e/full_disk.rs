//! A full disk is survived, not suffered: trainerd's state dir on a small tmpfs the test mounts (the
//! tests run as root; where mounting is impossible the test says so and skips), filled by another
//! process. Submissions are refused with RESOURCE_EXHAUSTED naming the state dir and its free space;
//! health says degraded and why, and so does systemd's STATUS; a store write that fails holds the end
//! of a running job in memory; once space returns the store is reopened with no restart, the held end
//! is recorded, and nothing is lost.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;
use trainctl::Client;
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::JobState;
use trainerd_tests::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A tmpfs mounted for the test; unmounted (lazily, whatever still holds it) when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output_within()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // The last bytes a page at a time, so not even a small write finds room.
    while let Ok(n) = file.write(&chunk[..512]) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    written
}

/// The STATUS= lines trainerd sent so far.
fn statuses(socket: &UnixDatagram, seen: &mut Vec<String>) -> Vec<String> {
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        seen.extend(text.lines().filter_map(|l| l.strip_prefix("STATUS=")).map(str::to_string));
    }
    seen.clone()
}

async fn submit_status(client: &mut Client, name: &str) -> Result<pb::Job, tonic::Status> {
    let req = fake_job(name, &[("FAKE_STEPS", "3")]);
    client.submit_job(req).await.map(|r| r.into_inner().job.unwrap())
}

#[tokio::test]
async fn a_full_disk_refuses_new_jobs_holds_ends_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _mount = match Mount::tmpfs(&state, "24m") {
        Ok(m) => m,
        Err(why) => {
            println!("skipped: cannot mount a tmpfs for the state dir here ({why})");
            return;
        }
    };
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let daemon = Daemon::start_in(
        dir,
        &["--gpus", "none", "--slots", "1", "--disk-reserve-mib", "4"],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")],
    );
    let mut client = daemon.client().await;
    let flags = tempfile::tempdir().unwrap();
    let go = flags.path().join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done; echo done; exit 0", go.display());
    let running = pb::SubmitJobRequest {
        name: "long".into(),
        command: vec!["/bin/sh".into(), "-c".into(), script],
        ..Default::default()
    };
    let long = submit(&mut client, running).await;
    watch_until(&mut client, &long.id, LIMIT, |j| j.pid.is_some()).await;
    let queued = submit_status(&mut client, "queued").await.unwrap();

    // Another process fills the disk.
    let filler = state.join("filler");
    let written = fill(&filler);
    assert!(written > 1 << 20, "filled {written} bytes");

    let refused = submit_status(&mut client, "refused").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let message = refused.message();
    assert!(message.contains(&format!("the state dir {} has", state.display())), "{message}");
    assert!(message.contains("free, below the reserve of 4.0 MiB"), "{message}");
    let health = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.status, "degraded", "{health:?}");
    assert!(health.cause.contains("below the 4.0 MiB reserve: new jobs are refused"), "{health:?}");

    // Transitions that bypass the reserve (pause and resume of the queued job) go on until the store
    // itself can no longer write; then they are refused too, with the cause.
    let mut store_failed = None;
    for _ in 0..2000 {
        let paused = client.pause_job(pb::PauseJobRequest { id: queued.id.clone() }).await;
        let resumed = client.resume_job(pb::ResumeJobRequest { id: queued.id.clone() }).await;
        if let Some(e) = [paused.err(), resumed.err()].into_iter().flatten().next() {
            store_failed = Some(e);
            break;
        }
    }
    let failed = store_failed.expect("the store never failed on a full disk");
    assert_eq!(failed.code(), Code::ResourceExhausted, "{failed:?}");
    assert!(
        failed.message().starts_with("the state store cannot write: no space left on the file system of"),
        "{failed:?}"
    );
    assert!(failed.message().contains("nothing was changed"), "{failed:?}");
    let health = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.status, "degraded");
    assert!(health.cause.starts_with("the state store has not been able to write for"), "{health:?}");
    let refused = submit_status(&mut client, "refused-too").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("cannot write"), "{refused:?}");

    // The running job ends while nothing can be written: its end is held, not lost, and it is not
    // shown as running.
    std::fs::write(&go, b"").unwrap();
    let held = watch_until(&mut client, &long.id, LIMIT, |j| j.message.contains("its end is recorded once")).await;
    let last = held.last().unwrap();
    assert_eq!(last.pid, None, "{last:?}");
    assert!(last.message.starts_with("the trainer ended (exited 0)"), "{last:?}");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !statuses(&notify, &mut seen).iter().any(|s| s.starts_with("degraded: the state store cannot write")) {
        assert!(Instant::now() < deadline, "no degraded STATUS: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Space returns: the store is reopened by itself, the held end recorded, submissions accepted.
    std::fs::remove_file(&filler).unwrap();
    let done = watch_until(&mut client, &long.id, LIMIT, |j| j.state() == JobState::Completed).await;
    assert_eq!(done.last().unwrap().exit_code, Some(0));
    let accepted = submit_status(&mut client, "after").await.expect("submissions are accepted again");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = client.health(pb::HealthRequest {}).await.unwrap().into_inner();
        if h.status == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "health never came back to ok: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(statuses(&notify, &mut seen).iter().any(|s| s.contains("reopened and accepts writes again")), "{seen:?}");
    // Nothing lost: every job is there, and the queued one (paused or queued, as its last recorded
    // transition says) and the new one run to completion.
    let jobs = client.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let q = get(&mut client, &queued.id).await;
    if q.state() == JobState::Paused {
        client.resume_job(pb::ResumeJobRequest { id: queued.id.clone() }).await.unwrap();
    }
    for id in [&queued.id, &accepted.id] {
        let seen = watch_until(&mut client, id, LIMIT, |j| trainerd_proto::state::is_terminal(j.state())).await;
        assert_eq!(seen.last().unwrap().state(), JobState::Completed, "job {id}");
    }
    let kinds: Vec<String> = events(&mut client, &long.id).await.into_iter().map(|(_, m)| m).collect();
    assert!(kinds.iter().any(|m| m.contains("-> completed")), "{kinds:?}");
}
