//! trainerd under systemd: the notify protocol on a socket the test owns, and the unit file.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use trainerd_proto::v1::JobState;
use trainerd_tests::{
    bin, ensure_group, events, fake_job, first_line_within, get, submit, wait_gone, watch_until, Daemon, OutputWithin,
};

const LIMIT: Duration = Duration::from_secs(60);

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification before the read timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_restore_then_watchdog_pings_then_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // Something to restore: a running job, and a job that ends while trainerd is down.
    let mut daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    let running = submit(&mut client, fake_job("running", &[("FAKE_STEPS", "100000"), ("FAKE_STEP_MS", "20")])).await;
    let pid = watch_until(&mut client, &running.id, LIMIT, |j| j.step > 0).await.pop().unwrap().pid;
    let ending = submit(&mut client, fake_job("ending", &[("FAKE_STEPS", "100000"), ("FAKE_STEP_MS", "20")])).await;
    let ending_pid = watch_until(&mut client, &ending.id, LIMIT, |j| j.step > 0).await.pop().unwrap().pid.unwrap();
    drop(client);
    daemon.kill();
    // SAFETY: kill(2) on a trainer this test's daemon started.
    unsafe { libc::kill(ending_pid as i32, libc::SIGKILL) };
    wait_gone(ending_pid, LIMIT);
    daemon.env = vec![("NOTIFY_SOCKET".into(), path.display().to_string()), ("WATCHDOG_USEC".into(), "200000".into())];
    daemon.relaunch();
    let first = receive(&socket);
    assert!(first.starts_with("READY=1\nSTATUS=serving"), "{first:?}");
    // READY=1 came after the restore: the running job is re-adopted with its pid, and the one that
    // ended unseen is already resolved, before anyone could ask.
    let mut client = daemon.client().await;
    let now = get(&mut client, &running.id).await;
    assert_eq!((now.state(), now.pid), (JobState::Running, pid), "{now:?}");
    let ended = get(&mut client, &ending.id).await;
    // Resolved: attempt 1's end is recorded (backing off, or already restarted), never "running".
    assert!(
        ended.attempt > 1 || ended.state() == JobState::Backoff,
        "the job killed while trainerd was down was resolved before READY: {ended:?}"
    );
    let kinds: Vec<String> = events(&mut client, &ending.id).await.into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"ended_unseen".to_string()), "{kinds:?}");
    drop(client);
    let started = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        let message = receive(&socket);
        assert!(message.starts_with("WATCHDOG=1\nSTATUS="), "{message:?}");
        pings += 1;
    }
    // Half of WATCHDOG_USEC: a timer cannot fire early, so five pings take at least ~400 ms.
    assert!(started.elapsed() >= Duration::from_millis(350), "pings come faster than half the watchdog period");
    let child = daemon.child.take().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut seen = Vec::new();
    loop {
        let message = receive(&socket);
        if message == "STOPPING=1" {
            break;
        }
        seen.push(message);
        assert!(seen.len() < 50, "no STOPPING=1 after SIGTERM: {seen:?}");
    }
    wait_gone(child.id(), LIMIT);
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "an orderly shutdown exits 0: {status:?}");
}

const UNITS: [&str; 2] = ["trainerd.service", "user/trainerd.service"];

fn unit_text(unit: &str) -> String {
    std::fs::read_to_string(format!("{}/../systemd/{unit}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A unit's `KEY=` value, the last one when repeated.
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit_text(unit).lines().rev().find_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_string)
}

#[test]
fn both_units_pass_systemd_analyze_verify_with_no_output() {
    for unit in UNITS {
        let dir = tempfile::tempdir().unwrap();
        // verify insists that ExecStart exists: point it at the built binary.
        let path = dir.path().join("trainerd.service");
        std::fs::write(&path, unit_text(unit).replace("/usr/bin/trainerd", &bin("trainerd").display().to_string()))
            .unwrap();
        let mut cmd = std::process::Command::new("systemd-analyze");
        if unit.starts_with("user/") {
            // A user manager's view: it needs a runtime directory, as a login session has.
            cmd.arg("--user").env("XDG_RUNTIME_DIR", dir.path());
        }
        let out = cmd.arg("verify").arg(&path).output_within().expect("systemd-analyze (Debian package systemd)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify {unit} said: {text}");
        assert_eq!(unit_value(unit, "KillMode").as_deref(), Some("process"), "{unit}: live restore needs it");
        assert_eq!(unit_value(unit, "Type").as_deref(), Some("notify"), "{unit}");
    }
}

/// The unit's `ExecStart` with the built binary (in `dir`, readable by everyone) for /usr/bin/trainerd.
fn exec_start(unit: &str, trainerd: &std::path::Path) -> Vec<String> {
    let line = unit_value(unit, "ExecStart").expect("ExecStart");
    line.split_whitespace().map(|w| w.replace("/usr/bin/trainerd", &trainerd.display().to_string())).collect()
}

/// A directory that only `uid` may enter, outside any state dir: where a job writes its outputs.
fn private_dir(path: &std::path::Path, uid: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Runs `trainctl submit --watch` as `uid` with `env`, for a job that writes `file`, and checks the
/// job completed and the file belongs to `uid`.
fn submit_a_job_writing(
    trainctl: &std::path::Path,
    uid: u32,
    groups: &[u32],
    env: &[(&str, String)],
    file: &std::path::Path,
) {
    use std::os::unix::fs::MetadataExt;
    // Its own checkpoint directory too: reached through trainerd's `jobs/<id>/`, whatever its umask.
    let script = format!("echo written > {} && touch \"$TRAINERD_CHECKPOINT_DIR/probe\"", file.display());
    let mut cmd = std::process::Command::new(trainctl);
    cmd.env_clear().env("PATH", "/usr/bin:/bin").envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args(["submit", "--watch", "--name", "writer", "--workdir", "/", "--", "/bin/sh", "-c", &script]);
    let out = trainerd_tests::as_user_in(&mut cmd, uid, uid, groups).output_within().expect("trainctl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the job did not complete: {text}");
    let meta = std::fs::metadata(file).unwrap_or_else(|e| panic!("{}: {e}; trainctl said {text}", file.display()));
    assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o644), "written as its submitter, with a user's umask");
}

/// The test plays this user (the tests run as root).
const USER: u32 = 12345;

#[test]
fn the_user_unit_runs_trainerd_as_its_user_whose_jobs_write_where_that_user_can() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: playing another user needs root");
        return;
    }
    let unit = "user/trainerd.service";
    assert_eq!(unit_value(unit, "User"), None, "a user unit runs as its user");
    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    let trainerd = trainerd_tests::public_bin(&bins, "trainerd");
    let trainctl = trainerd_tests::public_bin(&bins, "trainctl");
    trainerd_tests::open_dir(dir.path());
    // What a systemd user manager gives its services: the user's HOME and XDG_RUNTIME_DIR.
    let (home, runtime) = (dir.path().join("home"), dir.path().join("run"));
    private_dir(&home, USER);
    private_dir(&runtime, USER);
    let env = [("HOME", home.display().to_string()), ("XDG_RUNTIME_DIR", runtime.display().to_string())];
    let args = exec_start(unit, &trainerd);
    let mut cmd = std::process::Command::new(&args[0]);
    cmd.args(&args[1..]).env_clear().env("PATH", "/usr/bin:/bin").envs(env.iter().map(|(k, v)| (k, v)));
    let mut daemon = trainerd_tests::as_user(&mut cmd, USER, USER)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = first_line_within(daemon.stdout.take().unwrap(), trainerd_tests::READY_WITHIN);
    let expected = format!("trainerd ready: socket {}", runtime.join("trainerd/trainerd.sock").display());
    assert!(ready.starts_with(&expected), "{ready:?}");
    assert!(home.join(".local/state/trainerd").is_dir(), "state in the user's XDG state dir");
    // A job writes into a directory of its user's home, where trainerd's sandbox (none) lets it.
    let outputs = home.join("proj/runs");
    private_dir(&outputs, USER);
    submit_a_job_writing(&trainctl, USER, &[], &env, &outputs.join("result.txt"));
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[test]
fn the_system_unit_runs_trainerd_as_root_and_each_job_as_its_submitter_writing_where_they_can() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the system unit runs trainerd as root");
        return;
    }
    let unit = "trainerd.service";
    assert_eq!(unit_value(unit, "User").as_deref(), Some("root"));
    // The unit's socket group, as systemd-sysusers would create it from trainerd.sysusers.conf.
    let group = ensure_group("trainerd");
    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    let trainerd = trainerd_tests::public_bin(&bins, "trainerd");
    let trainctl = trainerd_tests::public_bin(&bins, "trainctl");
    trainerd_tests::open_dir(dir.path());
    // The unit's flags, and the directories systemd gives it (StateDirectory, RuntimeDirectory).
    let (state, runtime) = (dir.path().join("state"), dir.path().join("run"));
    for made in [&state, &runtime] {
        // As systemd makes them: StateDirectoryMode=, RuntimeDirectoryMode= (0755).
        std::fs::create_dir(made).unwrap();
        trainerd_tests::open_dir(made);
    }
    assert_eq!(unit_value(unit, "StateDirectoryMode").as_deref(), Some("0755"));
    let socket = runtime.join("trainerd.sock");
    let mut args = exec_start(unit, &trainerd);
    args.extend(["--state-dir".into(), state.display().to_string(), "--socket".into(), socket.display().to_string()]);
    let umask = u32::from_str_radix(&unit_value(unit, "UMask").expect("UMask"), 8).unwrap();
    let mut cmd = std::process::Command::new(&args[0]);
    // SAFETY: umask(2) is async-signal-safe; it runs between fork and exec, as systemd applies UMask=.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    let mut daemon = cmd
        .args(&args[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = first_line_within(daemon.stdout.take().unwrap(), trainerd_tests::READY_WITHIN);
    assert!(ready.starts_with("trainerd ready"), "{ready:?}");
    // A member of the socket group submits; the job runs as that user and writes into a directory
    // only that user may enter, outside the state dir.
    let outputs = dir.path().join("data/user-runs");
    std::fs::create_dir_all(outputs.parent().unwrap()).unwrap();
    trainerd_tests::open_dir(outputs.parent().unwrap());
    private_dir(&outputs, USER);
    let env = [("TRAINERD_SOCKET", socket.display().to_string())];
    submit_a_job_writing(&trainctl, USER, &[group], &env, &outputs.join("result.txt"));
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[tokio::test]
async fn sighup_reloads_a_changed_value() {
    use trainerd_proto::v1 as pb;
    use trainerd_tests::{fake_job, submit, watch_until};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "slots = 1\ngpus = \"none\"\n").unwrap();
    let daemon = Daemon::start(&["--config", config.to_str().unwrap()]);
    let mut client = daemon.client().await;
    let first = submit(&mut client, fake_job("first", &[("FAKE_FAULT", "hang@1")])).await;
    let second = submit(&mut client, fake_job("second", &[("FAKE_STEPS", "3")])).await;
    watch_until(&mut client, &first.id, Duration::from_secs(30), |j| j.state() == pb::JobState::Running).await;
    let waiting = client.get_job(pb::GetJobRequest { id: second.id.clone() }).await.unwrap().into_inner();
    assert_eq!(waiting.state(), pb::JobState::Queued, "one slot, taken by the hung job");
    std::fs::write(&config, "slots = 2\ngpus = \"none\"\n").unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    let done = watch_until(&mut client, &second.id, Duration::from_secs(30), |j| {
        trainerd_proto::state::is_terminal(j.state())
    })
    .await
    .pop()
    .unwrap();
    assert_eq!(done.state(), pb::JobState::Completed, "the second slot opened without a restart");
    let info = client.daemon_info(pb::DaemonInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.slots, 2);
}

#[tokio::test]
async fn the_metrics_endpoint_is_scraped_and_parsed() {
    use std::io::{Read, Write};
    use trainerd_proto::v1 as pb;
    use trainerd_tests::{fake_job, submit, watch_until};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&["--metrics", &addr]);
    let mut client = daemon.client().await;
    let job = submit(&mut client, fake_job("m", &[("FAKE_FAULT", "crash@3"), ("FAKE_STEPS", "6")])).await;
    watch_until(&mut client, &job.id, Duration::from_secs(30), |j| j.state() == pb::JobState::Completed).await;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/plain; version=0.0.4"), "{head}");
    let mut samples = std::collections::HashMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line:?}"));
        samples.insert(name.to_string(), value);
    }
    assert_eq!(samples["trainerd_jobs{state=\"completed\"}"], 1.0);
    assert_eq!(samples["trainerd_job_starts_total"], 2.0);
    assert_eq!(samples["trainerd_job_restarts_total{reason=\"crashed\"}"], 1.0);
    assert_eq!(samples["trainerd_exit_detection_seconds_count"], 2.0);
    assert!(samples["trainerd_progress_propagation_seconds_count"] >= 6.0);
    assert!(samples["trainerd_store_flush_seconds_count"] >= 5.0);
    assert_eq!(samples["trainerd_queue_length"], 0.0);
}

/// Starts trainerd with stderr in a file and `extra` settings, waits for readiness, stops it, and
/// returns what it logged.
fn log_of(extra: &[&str], journal: bool) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let meta = log.metadata().unwrap();
    let mut cmd = std::process::Command::new(bin("trainerd"));
    cmd.arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("t.sock"))
        .args(["--gpus", "none"])
        .args(extra)
        .env("TRAINERD_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let mut child = cmd.spawn().unwrap();
    let line = first_line_within(child.stdout.take().unwrap(), Duration::from_secs(60));
    assert!(line.starts_with("trainerd ready"), "{line:?}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_gone(child.id(), LIMIT);
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(dir.path().join("stderr")).unwrap()
}

#[test]
fn logs_go_to_journald_with_priorities_when_systemd_connected_stderr_else_human_or_json() {
    let journal = log_of(&[], true);
    assert!(journal.lines().any(|l| l.starts_with("<6>") && l.contains("serving")), "{journal}");
    assert!(journal.lines().all(|l| l.starts_with('<')), "every line carries a priority: {journal}");
    let human = log_of(&[], false);
    assert!(human.lines().any(|l| l.contains(" INFO ") && l.contains("serving")), "{human}");
    let json = log_of(&["--log-format", "json"], false);
    for line in json.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string() && value["fields"].is_object(), "{line}");
    }
    assert!(json.contains("\"serving\""), "{json}");
}
