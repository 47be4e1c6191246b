//! The bad-input corpus: every case asserts the exact error a client gets, and after all of them the
//! same trainerd still serves, with its running job untouched and no job created by any bad request.
//! Cases across gRPC, the JSON-lines control socket, the configuration and progress files.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;
use trainerd_proto::v1 as pb;
use trainerd_tests::*;

fn submission(command: &[&str]) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest { command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn env(pairs: &[(&str, &str)]) -> Vec<pb::EnvVar> {
    pairs.iter().map(|(k, v)| pb::EnvVar { name: k.to_string(), value: v.to_string() }).collect()
}

/// Asserts a status: its code and its message (exactly, or as a prefix when `expected` ends in `…`).
fn assert_status(case: &str, result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, expected: &str) {
    let status = result.expect_err(case);
    assert_eq!(status.code(), code, "{case}: {}", status.message());
    match expected.strip_suffix('…') {
        Some(prefix) => assert!(status.message().starts_with(prefix), "{case}: {:?}", status.message()),
        None => assert_eq!(status.message(), expected, "{case}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_exact_errors_and_trainerd_keeps_serving_with_nothing_lost() {
    let daemon = Daemon::start(&["--gpus", "none"]);
    let mut client = daemon.client().await;
    let state_dir = daemon.state_dir().canonicalize().unwrap();
    // The witness: a job that runs throughout, whose pid must not change.
    let witness = submit(&mut client, fake_job("witness", &[("FAKE_STEPS", "100000"), ("FAKE_STEP_MS", "50")])).await;
    let running = watch_until(&mut client, &witness.id, Duration::from_secs(30), |j| j.step > 0).await;
    let pid = running.last().unwrap().pid;

    let fake = bin("fake-trainer").display().to_string();
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch.path().join("into-state");
    std::os::unix::fs::symlink(&state_dir, &link).unwrap();
    let planted = state_dir.join("planted.sh");
    std::fs::write(&planted, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inside = |p: &std::path::Path| {
        format!(
            "{} is inside trainerd's state dir {}; jobs run from their own directories",
            p.display(),
            state_dir.display()
        )
    };
    let invalid = Code::InvalidArgument;
    let plain = scratch.path().join("notes.txt");
    std::fs::write(&plain, "not a program\n").unwrap();

    let mut cases: Vec<(&str, pb::SubmitJobRequest, Code, String)> = vec![
        (
            "empty command",
            submission(&[]),
            invalid,
            "command: is empty; give the program and its arguments, like: -- python train.py".into(),
        ),
        (
            "empty program",
            submission(&[""]),
            invalid,
            "command: is empty; give the program and its arguments, like: -- python train.py".into(),
        ),
        (
            "unknown program",
            submission(&["no-such-program-here"]),
            invalid,
            "command: \"no-such-program-here\" is not an executable file, nor found on trainerd's PATH".into(),
        ),
        (
            "not executable",
            submission(&[plain.to_str().unwrap()]),
            invalid,
            format!("command: {plain:?} is not an executable file, nor found on trainerd's PATH"),
        ),
        (
            "a directory as program",
            submission(&["/tmp"]),
            invalid,
            "command: \"/tmp\" is not an executable file, nor found on trainerd's PATH".into(),
        ),
        (
            "NUL in an argument",
            submission(&[&fake, "a\0b"]),
            invalid,
            "command: an argument contains a NUL byte, which no program can receive".into(),
        ),
        (
            "relative program without workdir",
            submission(&["./train.sh"]),
            invalid,
            "command: \"./train.sh\" is relative; give a workdir, or an absolute path".into(),
        ),
        (
            "program inside the state dir",
            submission(&[planted.to_str().unwrap()]),
            invalid,
            format!("command: {}", inside(&planted)),
        ),
    ];
    let many: Vec<&str> = std::iter::once(fake.as_str()).chain(std::iter::repeat_n("a", 5000)).collect();
    cases.push((
        "too many arguments",
        submission(&many),
        invalid,
        "command: is longer than 131072 bytes or 4096 arguments".into(),
    ));
    let long_arg = "x".repeat(140_000);
    cases.push((
        "arguments too long",
        submission(&[&fake, &long_arg]),
        invalid,
        "command: is longer than 131072 bytes or 4096 arguments".into(),
    ));
    for (case, name) in
        [("a space in the name", "a b"), ("a slash in the name", "../x"), ("a 129-byte name", &"n".repeat(129))]
    {
        let req = pb::SubmitJobRequest { name: name.to_string(), ..submission(&[&fake]) };
        cases.push((case, req, invalid, format!("name: {name:?}: use 1 to 128 of A-Z a-z 0-9 . _ -")));
    }
    let with_workdir = |w: &str| pb::SubmitJobRequest { workdir: w.into(), ..submission(&[&fake]) };
    cases.push(("relative workdir", with_workdir("tmp"), invalid, "workdir: \"tmp\" must be an absolute path".into()));
    cases.push((
        "workdir is a file",
        with_workdir(plain.to_str().unwrap()),
        invalid,
        format!("workdir: {plain:?} is not a directory"),
    ));
    cases.push((
        "workdir is the state dir",
        with_workdir(state_dir.to_str().unwrap()),
        invalid,
        format!("workdir: {}", inside(&state_dir)),
    ));
    let other = daemon.job_dir(&witness.id);
    cases.push((
        "workdir is another job's dir",
        with_workdir(other.to_str().unwrap()),
        invalid,
        format!("workdir: {}", inside(&other)),
    ));
    cases.push((
        "workdir links into the state dir",
        with_workdir(link.to_str().unwrap()),
        invalid,
        format!("workdir: {}", inside(&link)),
    ));
    let dotdot = format!("{}/jobs/..", state_dir.display());
    cases.push((
        "workdir climbs into the state dir",
        with_workdir(&dotdot),
        invalid,
        format!("workdir: {}", inside(std::path::Path::new(&dotdot))),
    ));
    let with_env = |pairs: &[(&str, &str)]| pb::SubmitJobRequest { env: env(pairs), ..submission(&[&fake]) };
    cases.push((
        "env name starts with a digit",
        with_env(&[("1X", "v")]),
        invalid,
        "env: \"1X\" is not a valid NAME=VALUE variable".into(),
    ));
    cases.push((
        "env name with =",
        with_env(&[("A=B", "v")]),
        invalid,
        "env: \"A=B\" is not a valid NAME=VALUE variable".into(),
    ));
    cases.push((
        "env empty name",
        with_env(&[("", "v")]),
        invalid,
        "env: \"\" is not a valid NAME=VALUE variable".into(),
    ));
    cases.push((
        "env value with NUL",
        with_env(&[("A", "x\0y")]),
        invalid,
        "env: \"A\" is not a valid NAME=VALUE variable".into(),
    ));
    cases.push((
        "env sets the protocol",
        with_env(&[("TRAINERD_PROGRESS_FILE", "/etc/passwd")]),
        invalid,
        "env: TRAINERD_PROGRESS_FILE is set by trainerd itself (the trainer protocol)".into(),
    ));
    let big = "v".repeat(140_000);
    cases.push(("env too large", with_env(&[("BIG", &big)]), invalid, "env: is larger than 131072 bytes".into()));
    let names: Vec<String> = (0..1025).map(|i| format!("V{i}")).collect();
    let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    cases.push(("too many env vars", with_env(&pairs), invalid, "env: has more than 1024 variables".into()));
    cases.push((
        "more GPUs than the host has",
        pb::SubmitJobRequest { gpus: 1, ..submission(&[&fake]) },
        invalid,
        "gpus: asks for 1 GPU(s); this trainerd has 0 ([])".into(),
    ));
    let with = |edit: fn(&mut pb::SubmitJobRequest)| {
        let mut req = submission(&[&fake]);
        edit(&mut req);
        req
    };
    cases.push((
        "unknown protocol",
        with(|r| r.protocol = Some("v2".into())),
        invalid,
        "protocol: \"v2\": use auto (the default), v1 (it heartbeats) or none (a plain process)".into(),
    ));
    cases.push((
        "zero idle timeout",
        with(|r| r.idle_timeout_ms = Some(0)),
        invalid,
        "idle_timeout_ms: must be positive".into(),
    ));
    cases.push((
        "a progress regex that does not parse",
        with(|r| r.progress_regex = "(?P<step>\\d+".into()),
        invalid,
        "progress_regex: is not a regular expression: regex parse error…".into(),
    ));
    cases.push((
        "a progress regex without a named group",
        with(|r| r.progress_regex = "\\d+/\\d+".into()),
        invalid,
        "progress_regex: \"\\\\d+/\\\\d+\" names no group…".into(),
    ));
    cases.push((
        "a resume argument without {checkpoint}",
        with(|r| {
            r.checkpoint_glob = "out/checkpoint-*".into();
            r.resume_arg = "--resume".into();
        }),
        invalid,
        "resume_arg: \"--resume\" must hold {checkpoint}, where the path goes (--resume_from_checkpoint {checkpoint})"
            .into(),
    ));
    cases.push((
        "a checkpoint glob outside the workdir",
        with(|r| {
            r.checkpoint_glob = "../other/*".into();
            r.resume_arg = "--resume {checkpoint}".into();
        }),
        invalid,
        "checkpoint_glob: \"../other/*\" must be relative to the workdir, without `..` or `.`".into(),
    ));
    cases.push((
        "a resume argument without a glob",
        with(|r| r.resume_arg = "--resume {checkpoint}".into()),
        invalid,
        "checkpoint_glob: is empty; resume_arg needs the checkpoints to choose from".into(),
    ));
    cases.push((
        "unknown on_failure",
        pb::SubmitJobRequest { on_failure: Some("maybe".into()), ..submission(&[&fake]) },
        invalid,
        "on_failure: \"maybe\": use restart or fail".into(),
    ));
    cases.push((
        "zero heartbeat timeout",
        pb::SubmitJobRequest { heartbeat_timeout_ms: Some(0), ..submission(&[&fake]) },
        invalid,
        "heartbeat_timeout_ms: must be positive".into(),
    ));
    cases.push((
        "stop grace over a year",
        pb::SubmitJobRequest { stop_grace_ms: Some(99_999_999_999_999), ..submission(&[&fake]) },
        invalid,
        "stop_grace_ms: 99999999999999 ms is more than a year; give at most 31536000000".into(),
    ));
    cases.push((
        "backoff at u64::MAX",
        pb::SubmitJobRequest { backoff_max_ms: Some(u64::MAX), ..submission(&[&fake]) },
        invalid,
        format!("backoff_max_ms: {} ms is more than a year; give at most 31536000000", u64::MAX),
    ));
    cases.push((
        "long idempotency key",
        pb::SubmitJobRequest { idempotency_key: "k".repeat(300), ..submission(&[&fake]) },
        invalid,
        "idempotency_key: is longer than 256 bytes".into(),
    ));
    cases.push((
        "an idempotency key with NUL",
        pb::SubmitJobRequest { idempotency_key: "retry\0k".into(), ..submission(&[&fake]) },
        invalid,
        "idempotency_key: contains a NUL byte; use printable text".into(),
    ));
    let huge = "h".repeat(2 << 20);
    cases.push((
        "a request over 1 MiB",
        submission(&[&fake, &huge]),
        Code::OutOfRange,
        "Error, decoded message length too large…".into(),
    ));
    let count = cases.len();
    for (case, req, code, message) in cases {
        assert_status(case, client.submit_job(req).await, code, &message);
    }

    let bad_id = "id: \"xyz!\" is not a job id (up to 12 hex digits; a unique prefix will do)";
    assert_status("get: bad id", client.get_job(pb::GetJobRequest { id: "xyz!".into() }).await, invalid, bad_id);
    assert_status(
        "get: empty id",
        client.get_job(pb::GetJobRequest { id: "".into() }).await,
        invalid,
        "id: \"\" is not a job id (up to 12 hex digits; a unique prefix will do)",
    );
    assert_status(
        "get: 13 digits",
        client.get_job(pb::GetJobRequest { id: "0000000000001".into() }).await,
        invalid,
        "id: \"0000000000001\" is not a job id (up to 12 hex digits; a unique prefix will do)",
    );
    assert_status(
        "get: unknown",
        client.get_job(pb::GetJobRequest { id: "fff".into() }).await,
        Code::NotFound,
        "no job fff; `trainctl ls` lists the jobs",
    );
    assert_status(
        "cancel: unknown",
        client.cancel_job(pb::CancelJobRequest { id: "ffff".into() }).await,
        Code::NotFound,
        "no job ffff; `trainctl ls` lists the jobs",
    );
    assert_status(
        "watch: bad id",
        client.watch_job(pb::WatchJobRequest { id: "xyz!".into() }).await.map(|_| ()),
        invalid,
        bad_id,
    );
    assert_status(
        "logs: bad id",
        client.stream_logs(pb::StreamLogsRequest { id: "xyz!".into(), ..Default::default() }).await.map(|_| ()),
        invalid,
        bad_id,
    );
    assert_status(
        "list: bad page token",
        client.list_jobs(pb::ListJobsRequest { page_token: "zz".into(), ..Default::default() }).await,
        invalid,
        "page_token: is not a token this daemon gave",
    );
    assert_status(
        "resume: a running job",
        client.resume_job(pb::ResumeJobRequest { id: witness.id.clone() }).await,
        Code::FailedPrecondition,
        "job 000000000001 is running…",
    );
    let grpc_cases = count + 9;

    // The JSON-lines control socket.
    let control = daemon.dir.path().join("control.sock");
    let stream = std::os::unix::net::UnixStream::connect(&control).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |line: &[u8]| -> serde_json::Value {
        // trainerd stops reading an oversized line at its limit, answers and closes: the rest of
        // that line may meet a closed socket (EPIPE), which is not the test's concern.
        let sent = writer.write_all(line).and_then(|()| writer.write_all(b"\n"));
        if let Err(e) = sent {
            assert!(line.len() > 1 << 20 && e.kind() == std::io::ErrorKind::BrokenPipe, "{e}");
        }
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
    };
    let hint = "; send one JSON object per line, like {\"op\":\"list\"}";
    let json_cases: Vec<(&[u8], &str, String)> = vec![
        (b"hello", "invalid_argument", format!("request: expected value at line 1 column 1{hint}")),
        (b"{\"op\":\"explode\"}", "invalid_argument", format!("request: unknown variant `explode`, expected one of `submit`, `get`, `list`, `watch`, `events`, `logs`, `cancel`, `pause`, `resume`, `retry`, `rm`, `df`, `metrics`, `health`, `reconcile`, `info` at line 1 column 15{hint}")),
        (b"{\"id\":\"1\"}", "invalid_argument", format!("request: missing field `op` at line 1 column 10{hint}")),
        (b"{\"op\":\"get\"}", "invalid_argument", format!("request: missing field `id`{hint}")),
        (b"{\"op\":\"health\",\"x\":1}", "invalid_argument", format!("request: unknown field `x`, there are no fields{hint}")),
        (b"{\"op\":\"submit\",\"command\":\"python\"}", "invalid_argument", format!("request: invalid type: string \"python\", expected a sequence{hint}")),
        (b"{\"op\":\"get\",\"id\":\"1\"", "invalid_argument", format!("request: EOF while parsing an object at line 2 column 0{hint}")),
        (b"[1,2,3]", "invalid_argument", format!("request: invalid type: integer `1`, expected variant identifier at line 1 column 2{hint}")),
        (b"{\"op\":\"list\",\"states\":[\"sleeping\"]}", "invalid_argument", "states: \"sleeping\" is not a job state".into()),
        (b"{\"op\":\"submit\",\"command\":[]}", "invalid_argument", "command: is empty; give the program and its arguments, like: -- python train.py".into()),
        (b"{\"op\":\"get\",\"id\":\"fff\"}", "not_found", "no job fff; `trainctl ls` lists the jobs".into()),
        (b"{\"op\":\"submit\",\"command\":[\"/bin/true\"],\"heartbeat_timeout_ms\":-5}", "invalid_argument", format!("request: invalid value: integer `-5`, expected u64{hint}")),
    ];
    let mut wrong = Vec::new();
    for (line, code, message) in &json_cases {
        let reply = ask(line);
        if reply["ok"] != false || reply["error"]["code"] != *code || reply["error"]["message"] != message.as_str() {
            wrong.push(format!("{}\n  got      {reply}\n  expected {code} {message:?}", String::from_utf8_lossy(line)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The connection stays usable after every bad line; a line over 1 MiB closes it.
    assert_eq!(ask(b"{\"op\":\"health\"}")["ok"], true);
    let reply = ask(&vec![b' '; (1 << 20) + 10]);
    assert_eq!(reply["error"]["message"], "request: a line is over 1048576 bytes");

    // Progress files: a second job whose trainer stops writing after step 1, so the files the test
    // writes are the only ones.
    let req = pb::SubmitJobRequest {
        heartbeat_timeout_ms: Some(600_000),
        stop_grace_ms: Some(100),
        ..fake_job("quiet", &[("FAKE_FAULT", "hang@1")])
    };
    let quiet = submit(&mut client, req).await;
    watch_until(&mut client, &quiet.id, Duration::from_secs(30), |j| j.step >= 1).await;
    let trainer_dir = daemon.job_dir(&quiet.id).join("trainer");
    let progress = trainer_dir.join("progress.json");
    let valid = |step: u64| {
        format!(
            r#"{{"protocol":1,"state":"running","step":{step},"heartbeat_seq":{step},"updated_at":{}}}"#,
            trainerd_proto::trainer::unix_now()
        )
    };
    let put = |bytes: &[u8]| {
        let tmp = trainer_dir.join(".test.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &progress).unwrap();
    };
    let ignored = "; ignored, the last good progress stands";
    let progress_cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("garbage", b"\x00\x01garbage".to_vec(), format!("progress file is not a valid protocol v1 object: expected value at line 1 column 1{ignored}")),
        ("truncated", valid(5).as_bytes()[..30].to_vec(), format!("progress file is not a valid protocol v1 object: EOF while parsing a string at line 1 column 30{ignored}")),
        ("too large", vec![b' '; 100_000], format!("progress file is 65537 bytes, over the 65536-byte limit{ignored}")),
        ("another protocol", valid(5).replace("\"protocol\":1", "\"protocol\":2").into_bytes(), format!("progress file speaks protocol 2, trainerd speaks 1{ignored}")),
        ("missing heartbeat_seq", br#"{"protocol":1,"state":"running","step":3,"updated_at":1}"#.to_vec(), format!("progress file is not a valid protocol v1 object: missing field `heartbeat_seq` at line 1 column 56{ignored}")),
        ("unknown state", valid(5).replace("running", "dancing").into_bytes(), "progress file is not a valid protocol v1 object: unknown variant `dancing`…".into()),
        ("negative step", valid(5).replace("\"step\":5", "\"step\":-5").into_bytes(), "progress file is not a valid protocol v1 object: invalid value: integer `-5`, expected u64…".into()),
        ("absurd heartbeat interval", valid(5).replace("\"step\"", "\"heartbeat_interval\":1e300,\"step\"").into_bytes(), format!("progress file has heartbeat_interval 1e300; give seconds above 0 and at most 86400{ignored}")),
    ];
    for (i, (case, bytes, message)) in progress_cases.iter().enumerate() {
        put(bytes);
        let event = wait_for_event(&mut client, &quiet.id, message).await;
        assert!(event.is_some(), "{case}: no event {message:?}; events: {:?}", events(&mut client, &quiet.id).await);
        // A good record in between, seen before the next case starts.
        let step = 10 + i as u64;
        put(valid(step).as_bytes());
        watch_until(&mut client, &quiet.id, Duration::from_secs(10), |j| j.step == step).await;
    }
    // Anything but a regular file at the progress path is refused by name, without being opened (a
    // FIFO would block an open, a device could do anything) or followed; and trainerd keeps answering.
    type Make = fn(&Path);
    let place: [(&str, Make); 5] = [
        ("a symbolic link", |p| std::os::unix::fs::symlink("/etc/passwd", p).unwrap()),
        ("a FIFO", mkfifo),
        ("a directory", |p| std::fs::create_dir(p).unwrap()),
        ("a socket", |p| std::mem::forget(std::os::unix::net::UnixListener::bind(p).unwrap())),
        ("a character device", mknod_null),
    ];
    for (kind, make) in &place {
        remove_any(&progress);
        make(&progress);
        let message = format!("progress file refused: {} is {kind}, not a regular file{ignored}", progress.display());
        assert!(
            wait_for_event(&mut client, &quiet.id, &message).await.is_some(),
            "{kind}: no event {message:?}; events: {:?}",
            events(&mut client, &quiet.id).await
        );
        let answered = tokio::time::timeout(Duration::from_secs(5), client.daemon_info(pb::DaemonInfoRequest {})).await;
        assert!(matches!(answered, Ok(Ok(_))), "{kind}: trainerd did not answer within 5 s");
    }
    remove_any(&progress);
    put(valid(100).as_bytes());
    watch_until(&mut client, &quiet.id, Duration::from_secs(10), |j| j.step == 100).await;

    // Still serving, nothing lost: the witness runs on in the same process, and no bad request
    // created a job.
    client.daemon_info(pb::DaemonInfoRequest {}).await.expect("trainerd still answers");
    let now = get(&mut client, &witness.id).await;
    assert_eq!((now.state(), now.pid), (pb::JobState::Running, pid));
    let jobs = client.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(jobs.len(), 2, "bad requests created jobs: {jobs:?}");
    let total = grpc_cases + json_cases.len() + 1 + progress_cases.len() + place.len();
    assert!(total >= 40, "the corpus has {total} cases");
}

/// Removes whatever is at `path` (file, link, FIFO, socket, device or empty directory).
fn remove_any(path: &Path) {
    if std::fs::remove_file(path).is_err() {
        let _ = std::fs::remove_dir(path);
    }
}

/// A FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

/// A character device at `path` with /dev/null's numbers (the tests run as root).
pub fn mknod_null(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; makedev takes numbers.
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)) };
    assert_eq!(made, 0, "mknod {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Waits (at most 10 s) until the job's event log holds `message` (a trailing `…` matches a prefix).
async fn wait_for_event(client: &mut trainctl::Client, id: &str, message: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let matches = |m: &str| match message.strip_suffix('…') {
        Some(prefix) => m.starts_with(prefix),
        None => m == message,
    };
    loop {
        let seen = events(client, id).await;
        if let Some((_, m)) = seen.iter().rev().find(|(kind, m)| kind == "progress_invalid" && matches(m)) {
            return Some(m.clone());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn bad_configuration_is_refused_at_start_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("slots = 0\n", "--slots must be at least 1"),
        ("gpus = \"0,zero\"\n", "--gpus \"0,zero\": give GPU indices like 0,1,2, or auto, or none"),
        ("gpus = \"1,1\"\n", "--gpus \"1,1\": GPU 1 is listed twice"),
        ("slot = 4\n", "did you mean `slots`?"),
        ("slots = \"four\"\n", "invalid type: string \"four\", expected u32"),
        ("slots = \n", "TOML parse error at line 1, column 9"),
        (
            "heartbeat-interval = -1.0\n",
            "--heartbeat-interval must be a number of seconds from 0 to 31536000 (a year), not -1.0",
        ),
        ("stop-grace = 1e300\n", "--stop-grace must be a number of seconds from 0 to 31536000 (a year), not 1e300"),
        ("heartbeat-interval = 0.0\n", "--heartbeat-interval must be positive"),
        ("reconcile-interval = 0.01\n", "--reconcile-interval must be at least 0.1 seconds"),
        ("shutdown-policy = \"explode\"\n", "unknown variant `explode`, expected one of `leave`, `pause`, `stop`"),
        ("allow-users = [\"no-such-user-here\"]\n", "--allow-users: no user \"no-such-user-here\" on this host"),
        ("allow-groups = [\"no-such-group-here\"]\n", "--allow-groups: no group \"no-such-group-here\" on this host"),
        (
            "socket-group = \"no-such-group-here\"\n",
            "--socket-group \"no-such-group-here\": no such group on this host",
        ),
        ("listen = \"127.0.0.1:7072\"\n", "each must present a bearer token"),
        ("listen = \"not an address\"\n", "invalid socket address syntax"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("config-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new(bin("trainerd"))
            .arg("--config")
            .arg(&file)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .arg("check-config")
            .output_within()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?} was accepted: {stderr}");
        assert!(stderr.contains(expected), "{text:?}: expected {expected:?} in {stderr}");
    }
}
