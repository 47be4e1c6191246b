//! Helpers for the end-to-end tests: the built binaries, a real trainerd on a temporary state dir
//! and socket, and event-driven waits on its WatchJob stream.

/// The WebDriver client the browser test and the benchmark drive the web page with.
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_stream::StreamExt;
use trainctl::Client;
use trainerd_proto::v1 as pb;

/// A binary of this workspace, built next to the test executable (`target/debug/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/debug");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is not built; run `cargo build --workspace --bins` first", path.display());
    path
}

/// How long a test waits for any one answer from trainerd (a cancel waits out its stop grace).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// How long trainerd may take to print its readiness line.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// The first line a child prints on `stdout`, waiting at most `limit` (an empty string when it closed
/// its stdout first or the time ran out): a regression that hangs start-up fails the test in a
/// minute, not CI in 90.
pub fn first_line_within(stdout: std::process::ChildStdout, limit: Duration) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(limit).unwrap_or_default()
}

/// How long a command the tests run (trainctl, trainerd check-config, a tool) may take.
pub const COMMAND_WITHIN: Duration = Duration::from_secs(120);

/// `Command::output` with a deadline: a command that hangs (a trainctl waiting on a wedged trainerd)
/// is killed and the test fails naming it, instead of hanging CI.
pub trait OutputWithin {
    /// Runs the command to its end within [`COMMAND_WITHIN`] and returns its output.
    fn output_within(&mut self) -> std::io::Result<std::process::Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> std::io::Result<std::process::Output> {
        let what = format!("{self:?}");
        let child = self.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(COMMAND_WITHIN) {
            Ok(output) => output,
            Err(_) => {
                // SAFETY: kill(2) on a child this function started; it has not been reaped (its waiter
                // thread has not returned).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("{what} did not finish within {COMMAND_WITHIN:?}");
            }
        }
    }
}

/// A running trainerd on its own temporary state dir and socket.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts trainerd and waits for its readiness line.
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_with_env(extra, &[])
    }

    /// Starts trainerd with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_in(tempfile::tempdir().expect("tempdir"), extra, env)
    }

    /// Starts trainerd in `dir`, which the caller prepared (its state dir is `dir/state`: a file
    /// system mounted there, say).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut daemon = Daemon {
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        daemon.launch();
        daemon
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("trainerd.sock")
    }

    /// The state dir.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn launch(&mut self) {
        let mut child = Command::new(bin("trainerd"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TRAINERD_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(self.log_file())
            .spawn()
            .expect("spawn trainerd");
        let line = first_line_within(child.stdout.take().expect("stdout"), READY_WITHIN);
        if !line.starts_with("trainerd ready") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trainerd did not start within {READY_WITHIN:?}: {line:?}; its log:\n{}", self.log());
        }
        self.child = Some(child);
    }

    /// SIGKILLs trainerd (its trainers live on in their own process groups).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs trainerd and starts it again on the same state dir.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Starts trainerd again (after [`Daemon::kill`] or [`Daemon::terminate`]) on the same state dir.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "trainerd is still running");
        self.launch();
    }

    /// SIGTERM: an orderly shutdown under trainerd's shutdown policy; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("trainerd is running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_gone(child.id(), COMMAND_WITHIN);
        child.wait().expect("wait for trainerd")
    }

    /// trainerd's own log (its stderr, appended across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("trainerd.log")).unwrap_or_default()
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("trainerd.log"))
            .expect("trainerd.log")
    }

    /// The directory of job `id` (its 12-digit form).
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("jobs").join(id)
    }

    /// The shim pid that job `id`'s shim recorded for its current attempt.
    pub fn shim_pid(&self, id: &str) -> u32 {
        let text = std::fs::read_to_string(self.job_dir(id).join("shim.json")).expect("shim.json");
        let value: serde_json::Value = serde_json::from_str(&text).expect("shim.json is JSON");
        value["shim_pid"].as_u64().expect("shim_pid") as u32
    }

    /// A fresh client; every request it makes must be answered within [`ANSWER_WITHIN`].
    pub async fn client(&self) -> Client {
        trainctl::connect_unix_within(&self.socket(), Some(ANSWER_WITHIN)).await.expect("connect")
    }
}

impl Drop for Daemon {
    /// SIGKILL, not SIGTERM: the test's own client connections live on the test's runtime, which is
    /// blocked here, and a graceful shutdown would wait for them. Trainers are stopped with it.
    fn drop(&mut self) {
        self.kill();
        // Trainers outlive a killed daemon; find this test's by the state dir in their environment.
        let marker = self.state_dir().display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
            if String::from_utf8_lossy(&environ).contains(&marker) {
                // SAFETY: kill(2) on the process group of a trainer this test's daemon started.
                unsafe { libc::kill(-libc::getpgid(pid), libc::SIGKILL) };
            }
        }
    }
}

/// A submission of the fake trainer with `env` (name, value) pairs.
pub fn fake_job(name: &str, env: &[(&str, &str)]) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        name: name.into(),
        command: vec![bin("fake-trainer").display().to_string()],
        env: env.iter().map(|(k, v)| pb::EnvVar { name: k.to_string(), value: v.to_string() }).collect(),
        backoff_base_ms: Some(0),
        ..Default::default()
    }
}

/// A submission of trainer-proc on a small task: `epochs` epochs of 20 steps, a periodic checkpoint
/// every 7 steps, on the CPU (a second or two of real training).
pub fn trainer_proc_job(name: &str, epochs: u32, env: &[(&str, &str)]) -> pb::SubmitJobRequest {
    let epochs = epochs.to_string();
    let args = [
        "--epochs",
        &epochs,
        "--steps-per-epoch",
        "20",
        "--batch-size",
        "32",
        "--train-samples",
        "1024",
        "--val-samples",
        "256",
        "--hidden",
        "32",
        "--checkpoint-every",
        "7",
        "--patience",
        "0",
        "--device",
        "cpu",
    ];
    pb::SubmitJobRequest {
        name: name.into(),
        command: std::iter::once(bin("trainer-proc").display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .collect(),
        env: env.iter().map(|(k, v)| pb::EnvVar { name: k.to_string(), value: v.to_string() }).collect(),
        backoff_base_ms: Some(0),
        ..Default::default()
    }
}

/// Submits and returns the job.
pub async fn submit(client: &mut Client, req: pb::SubmitJobRequest) -> pb::Job {
    client.submit_job(req).await.expect("submit").into_inner().job.expect("job")
}

/// Watches a job until `done` holds for an update, within `limit`; returns every update seen.
pub async fn watch_until(
    client: &mut Client,
    id: &str,
    limit: Duration,
    done: impl Fn(&pb::Job) -> bool,
) -> Vec<pb::Job> {
    let mut stream = client.watch_job(pb::WatchJobRequest { id: id.into() }).await.expect("watch").into_inner();
    let mut seen = Vec::new();
    let result = tokio::time::timeout(limit, async {
        while let Some(update) = stream.next().await {
            let job = update.expect("stream item").job.expect("job");
            let stop = done(&job);
            seen.push(job);
            if stop {
                return true;
            }
        }
        false
    })
    .await;
    let states: Vec<_> = seen.iter().map(|j| (j.state().as_str_name(), j.step)).collect();
    assert!(matches!(result, Ok(true)), "condition not reached within {limit:?}; saw {states:?}");
    seen
}

/// The kinds and messages of a job's events.
pub async fn events(client: &mut Client, id: &str) -> Vec<(String, String)> {
    let events = client.list_events(pb::ListEventsRequest { id: id.into() }).await.expect("events").into_inner();
    events.events.into_iter().map(|e| (e.kind, e.message)).collect()
}

/// Waits, by pidfd (no polling), until process `pid` has exited, at most `limit`. A process that is
/// already gone returns at once. Panics when it is still alive at the deadline, or when the kernel
/// cannot tell (any pidfd_open error but ESRCH).
pub fn wait_gone(pid: u32, limit: Duration) {
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "cannot wait for process {pid}: {e}");
        return;
    }
    let mut poll = libc::pollfd { fd: fd as i32, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd we own; the descriptor is closed right after.
    let ready = unsafe { libc::poll(&mut poll, 1, limit.as_millis() as i32) };
    unsafe { libc::close(fd as i32) };
    assert!(ready == 1, "process {pid} still runs after {limit:?}");
}

/// Whether `pid` names a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// The live (not zombie) processes started for job `id` by the trainerd on `state_dir`: trainers,
/// their children and shims, found by the job's progress file in their environment.
pub fn job_processes(state_dir: &Path, id: &str) -> Vec<u32> {
    let marker =
        format!("TRAINERD_PROGRESS_FILE={}", state_dir.join("jobs").join(id).join("trainer/progress.json").display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !environ.split(|b| *b == 0).any(|var| var == marker.as_bytes()) {
            continue;
        }
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()));
        if !matches!(state, Some('Z') | Some('X') | None) {
            found.push(pid);
        }
    }
    found
}

/// Lets other users reach a test's directory (tempdirs are 0700).
pub fn open_dir(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A copy of one of our binaries in `dir` that other users can run: the checkout itself may sit in a
/// directory only its owner can enter.
pub fn public_bin(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    open_dir(dir);
    let path = dir.join(name);
    std::fs::copy(bin(name), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Makes `cmd` run as `uid`:`gid` with no supplementary groups (the tests run as root and play
/// other users this way).
pub fn as_user(cmd: &mut Command, uid: u32, gid: u32) -> &mut Command {
    as_user_in(cmd, uid, gid, &[])
}

/// Makes `cmd` run as `uid`:`gid` with the supplementary `groups` (a user added to a group, as
/// production users are to the socket's).
pub fn as_user_in<'a>(cmd: &'a mut Command, uid: u32, gid: u32, groups: &[u32]) -> &'a mut Command {
    use std::os::unix::process::CommandExt;
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: only async-signal-safe calls between fork and exec; `groups` was built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// GetJob.
pub async fn get(client: &mut Client, id: &str) -> pb::Job {
    client.get_job(pb::GetJobRequest { id: id.into() }).await.expect("get").into_inner()
}

/// The gid of group `name`, creating it (a system group) when it is missing, as systemd-sysusers
/// would. Needs root.
pub fn ensure_group(name: &str) -> u32 {
    let lookup = || getent_id("group", name);
    if let Some(gid) = lookup() {
        return gid;
    }
    let out = Command::new("groupadd").args(["--system", name]).output_within().unwrap();
    assert!(out.status.success(), "groupadd {name}: {}", String::from_utf8_lossy(&out.stderr));
    lookup().expect("the group just added")
}

/// The uid of user `name`, creating it (a system user without a home, whose supplementary groups are
/// `groups`) when it is missing. Needs root.
pub fn ensure_user(name: &str, groups: &[&str]) -> u32 {
    let lookup = || getent_id("passwd", name);
    if let Some(uid) = lookup() {
        return uid;
    }
    let out = Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups", &groups.join(","), name])
        .output_within()
        .unwrap();
    assert!(out.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
    lookup().expect("the user just added")
}

/// The id (third field) of `name` in the `database` getent reads.
fn getent_id(database: &str, name: &str) -> Option<u32> {
    let out = Command::new("getent").args([database, name]).output_within().unwrap();
    String::from_utf8_lossy(&out.stdout).split(':').nth(2).and_then(|id| id.trim().parse().ok())
}
