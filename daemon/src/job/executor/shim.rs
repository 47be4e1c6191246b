//! trainerd's side of the shim (`daemon/shim/`, built in: see `builtin_shim`): the files it writes in the job
//! directory, the start handshake, and waiting for a shim's end whether it is our child (started by
//! this trainerd) or an adopted one (started by a previous trainerd).
//!
//! The shim, not trainerd, is the trainer's parent, so the trainer outlives trainerd and its exit
//! status is never lost: the shim writes it to `exit.json` before it exits. Its exit is how we learn
//! of the end: tokio's child wait for our own children, a pidfd for adopted ones. Both come from the
//! kernel; nothing here polls.

use crate::process;
use crate::store::records::{ExitStatus, RunAs};
use serde::Deserialize;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// The shim's identity file in the job directory.
pub const IDENTITY_NAME: &str = "shim.json";
/// The exit record the shim writes when the trainer ends.
pub const EXIT_NAME: &str = "exit.json";
/// How long a shim has to report that it started the trainer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `shim.json`: which shim runs attempt `attempt`, and its trainer once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Identity {
    pub attempt: u32,
    pub shim_pid: u32,
    pub shim_start_ticks: u64,
    pub trainer_pid: Option<u32>,
    pub trainer_start_ticks: Option<u64>,
}

/// `exit.json`: how the trainer of attempt `attempt` ended.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct ExitRecord {
    pub attempt: u32,
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Unix time of the end.
    pub at: f64,
}

impl ExitRecord {
    /// The status in the store's terms.
    pub fn status(&self) -> ExitStatus {
        match (self.code, self.signal) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(-1),
        }
    }
}

/// Reads a small JSON file the shim wrote; `None` when it is absent, unreadable or not for `attempt`.
fn read_for<T: serde::de::DeserializeOwned>(dir: &Path, name: &str, attempt: u32, of: impl Fn(&T) -> u32) -> Option<T> {
    // A trainer running as trainerd's own user could put a FIFO here: never opened as found.
    let bytes = crate::untrusted::read_prefix(&dir.join(name), 4097).ok()?;
    if bytes.len() > 4096 {
        return None;
    }
    let value: T = serde_json::from_slice(&bytes).ok()?;
    (of(&value) == attempt).then_some(value)
}

/// The identity of attempt `attempt`'s shim, if it wrote one.
pub fn read_identity(dir: &Path, attempt: u32) -> Option<Identity> {
    read_for(dir, IDENTITY_NAME, attempt, |i: &Identity| i.attempt)
}

/// Attempt `attempt`'s exit record, if its shim wrote one.
pub fn read_exit(dir: &Path, attempt: u32) -> Option<ExitRecord> {
    read_for(dir, EXIT_NAME, attempt, |e: &ExitRecord| e.attempt)
}

/// Removes a previous attempt's shim files, so nothing of it is taken for the next attempt.
pub fn clear(dir: &Path) -> io::Result<()> {
    for name in [IDENTITY_NAME, EXIT_NAME] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The shim's pipe after its handshake: it says `exited CODE` or `killed SIGNAL` when the trainer
/// ends, which is how trainerd learns the end when the shim could not write `exit.json`.
pub type Report = tokio::io::BufReader<tokio::io::Take<tokio::process::ChildStdout>>;

/// A started attempt: the shim (our child), its report pipe, and the trainer it reported.
pub struct Started {
    pub shim: tokio::process::Child,
    pub report: Report,
    pub identity: Identity,
}

/// Spawns the shim with `cmd` (already holding the trainer's environment and working directory as
/// the shim's own, which it passes on) and waits, at most [`HANDSHAKE_TIMEOUT`], for its report.
pub async fn start(
    mut cmd: tokio::process::Command,
    dir: &Path,
    attempt: u32,
    stdout_log: &Path,
    run_as: Option<RunAs>,
    command: &[String],
) -> io::Result<Started> {
    cmd.arg(dir).arg(attempt.to_string()).arg(stdout_log);
    if let Some(user) = run_as {
        // The user database may be remote (NSS, LDAP): looked up off the runtime's threads.
        let groups = tokio::task::spawn_blocking(move || crate::users::groups_for(user.uid, user.gid))
            .await
            .map_err(io::Error::other)?;
        if groups.len() > crate::builtin_shim::MAX_GROUPS {
            return Err(io::Error::other(format!(
                "user {} is in {} groups; a trainer can be started with at most {}",
                user.uid,
                groups.len(),
                crate::builtin_shim::MAX_GROUPS
            )));
        }
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("{}:{}:{}", user.uid, user.gid, groups.join(",")));
    }
    cmd.arg("--").args(command);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).kill_on_drop(false);
    // The spawn holds its thread until the shim's exec is done (the C library's vfork), a
    // millisecond at times under load: on the blocking pool, not on one of the runtime's workers.
    let mut shim = tokio::task::spawn_blocking(move || cmd.spawn()).await.map_err(io::Error::other)??;
    let shim_pid = shim.id().ok_or_else(|| io::Error::other("the shim exited at once"))?;
    let shim_start_ticks = process::start_ticks(shim_pid)?;
    let stdout = shim.stdout.take().ok_or_else(|| io::Error::other("the shim has no stdout pipe"))?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout.take(4096));
    let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_line(&mut line)).await;
    let report = match read {
        Ok(Ok(_)) => line.trim_end().to_string(),
        Ok(Err(e)) => return Err(abandon(shim, format!("cannot read the shim's report: {e}"))),
        Err(_) => return Err(abandon(shim, format!("the shim did not report within {HANDSHAKE_TIMEOUT:?}"))),
    };
    if let Some(message) = report.strip_prefix("error ") {
        let _ = shim.wait().await;
        return Err(io::Error::other(message.to_string()));
    }
    let mut words = report.strip_prefix("started ").unwrap_or_default().split(' ');
    let (Some(Ok(pid)), Some(Ok(ticks))) = (words.next().map(str::parse), words.next().map(str::parse)) else {
        return Err(abandon(shim, format!("the shim's report {report:?} is not `started PID TICKS`")));
    };
    let identity =
        Identity { attempt, shim_pid, shim_start_ticks, trainer_pid: Some(pid), trainer_start_ticks: Some(ticks) };
    Ok(Started { shim, report: reader, identity })
}

/// A shim that broke the handshake is killed (its trainer, if any, is then orphaned in its group and
/// stopped by the caller's lost-attempt handling); the error says why.
fn abandon(mut shim: tokio::process::Child, why: String) -> io::Error {
    let _ = shim.start_kill();
    io::Error::other(why)
}

/// Something that resolves when a shim exits.
pub enum Waiter {
    /// A shim this trainerd started: tokio reaps it, and its pipe reports the trainer's end.
    Child(Box<(tokio::process::Child, Report)>),
    /// A shim a previous trainerd started: a pidfd, readable once it has exited.
    Pidfd(tokio::io::unix::AsyncFd<OwnedFd>),
}

/// What a shim's end tells without reading its files.
pub struct ShimEnd {
    /// The trainer's end as the shim's pipe reported it (only a shim this trainerd started has one).
    pub said: Option<ExitStatus>,
    /// The shim's own word (its exit code 0) that its exit record holds the same end: then the
    /// record need not be read. False where it could not write it, or where nobody heard it.
    pub recorded: bool,
}

impl Waiter {
    /// Waits for the shim's exit. An error means the end could not be observed.
    pub async fn wait(self) -> io::Result<ShimEnd> {
        match self {
            Waiter::Child(started) => {
                let (mut child, mut report) = *started;
                // The pipe closes when the shim exits; its last line (if any) is the trainer's end.
                let mut said = None;
                let mut line = String::new();
                while matches!(report.read_line(&mut line).await, Ok(n) if n > 0) {
                    said = parse_report(line.trim_end()).or(said);
                    line.clear();
                }
                let status = child.wait().await?;
                Ok(ShimEnd { said, recorded: status.code() == Some(0) })
            }
            Waiter::Pidfd(fd) => fd.readable().await.map(|_| ShimEnd { said: None, recorded: false }),
        }
    }
}

/// `exited CODE` or `killed SIGNAL`, as the shim writes them.
fn parse_report(line: &str) -> Option<ExitStatus> {
    let (word, number) = line.split_once(' ')?;
    let number = number.parse().ok()?;
    match word {
        "exited" => Some(ExitStatus::Code(number)),
        "killed" => Some(ExitStatus::Signal(number)),
        _ => None,
    }
}

/// What became of a shim a previous trainerd started.
pub enum Found {
    /// It runs: wait on this.
    Alive(Waiter),
    /// It is gone (or its pid names another process now).
    Gone,
    /// /proc or pidfd_open failed for another reason: not known to be dead.
    Unknown(io::Error),
}

/// Finds the shim `identity` names. The pidfd is opened before the start time is compared, so a pid
/// recycled in between is caught by the comparison and never waited on.
pub fn adopt(identity: &Identity) -> Found {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, identity.shim_pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ESRCH) { Found::Gone } else { Found::Unknown(e) };
    }
    // SAFETY: a descriptor pidfd_open just returned, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    match process::runs(identity.shim_pid, identity.shim_start_ticks) {
        Ok(true) => {}
        Ok(false) => return Found::Gone,
        Err(e) => return Found::Unknown(e),
    }
    // SAFETY: the AsyncFd owns the descriptor, so it stays open until the registration is dropped.
    match unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        Ok(fd) => Found::Alive(Waiter::Pidfd(fd)),
        Err(e) => Found::Unknown(e.into()),
    }
}

/// Whether the process `pid` with start time `ticks` is alive: `Some(false)` only when the kernel
/// says it is gone or that pid is another process; `None` when it could not be told.
pub fn is_alive(pid: u32, ticks: u64) -> Option<bool> {
    process::runs(pid, ticks).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pid_that_names_another_process_now_is_not_taken_for_the_recorded_one() {
        let mut child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id();
        let ticks = process::start_ticks(pid).unwrap();
        assert_eq!(is_alive(pid, ticks), Some(true));
        // A record from before a pid was recycled names the same pid with an earlier start time: that
        // is another process, neither alive for the record nor adopted.
        assert_eq!(is_alive(pid, ticks.wrapping_sub(1)), Some(false));
        let stale = Identity {
            attempt: 1,
            shim_pid: pid,
            shim_start_ticks: ticks.wrapping_sub(1),
            trainer_pid: None,
            trainer_start_ticks: None,
        };
        assert!(matches!(adopt(&stale), Found::Gone), "a recycled pid was adopted");
        let current = Identity { shim_start_ticks: ticks, ..stale };
        assert!(matches!(adopt(&current), Found::Alive(Waiter::Pidfd(_))));
        child.kill().unwrap();
        // A zombie (exited, not yet reaped) is gone too.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !process::is_zombie(pid) {
            assert!(std::time::Instant::now() < deadline, "the child never became a zombie");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(is_alive(pid, ticks), Some(false));
        assert!(matches!(adopt(&current), Found::Gone));
        child.wait().unwrap();
        assert_eq!(is_alive(pid, ticks), Some(false), "a reaped pid is gone");
    }

    /// The trainer's program already finds itself named in `shim.json` (a trainerd that dies at any
    /// moment of a start can find the trainer again), which is written once (a start frees no file)
    /// and leaves no temporary.
    #[tokio::test]
    async fn shim_json_names_the_trainer_before_its_program_runs_and_is_written_once() {
        use std::os::fd::{AsRawFd, FromRawFd};
        let dir = tempfile::tempdir().unwrap();
        let shim = crate::builtin_shim::Executable::builtin(dir.path()).unwrap();
        // SAFETY: inotify_init1 returns a new descriptor we own, or -1.
        let inotify = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(inotify >= 0);
        // SAFETY: as above; the descriptor is owned by `events` from here on.
        let mut events = unsafe { std::fs::File::from_raw_fd(inotify) };
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid descriptor and a NUL-terminated path.
        assert!(
            unsafe { libc::inotify_add_watch(events.as_raw_fd(), path.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO) }
                >= 0
        );
        let mut cmd = tokio::process::Command::new(shim.path());
        cmd.current_dir(dir.path()).stderr(std::process::Stdio::null());
        // `$$` is the shell's pid, which is the trainer's: the shim execs the shell in its place.
        let check = r#"grep -q "\"trainer_pid\":$$," shim.json"#;
        let command = ["sh".to_string(), "-c".to_string(), check.to_string()];
        let started = start(cmd, dir.path(), 1, &dir.path().join("stdout.log"), None, &command).await.unwrap();
        let identity = read_identity(dir.path(), 1).expect("shim.json");
        assert_eq!(identity.trainer_pid, started.identity.trainer_pid);
        assert_eq!(identity.trainer_start_ticks, started.identity.trainer_start_ticks);
        let end = Waiter::Child(Box::new((started.shim, started.report))).wait().await.unwrap();
        assert_eq!(end.said, Some(ExitStatus::Code(0)), "the trainer did not find its pid in shim.json");
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["exit.json", "shim.json", "stdout.log"]);
        // Creations as well as renames: inotify merges an event into an identical one just before it.
        let mut buf = vec![0u8; 64 * 1024];
        let n = std::io::Read::read(&mut events, &mut buf).unwrap();
        let (mut at, mut seen) = (0, Vec::new());
        while at + 16 <= n {
            let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            let name = String::from_utf8_lossy(&buf[at + 16..at + 16 + len]).trim_end_matches('\0').to_string();
            if name.starts_with("shim.json") {
                seen.push((if mask & libc::IN_CREATE != 0 { "created" } else { "renamed" }, name));
            }
            at += 16 + len;
        }
        let once = [("created", "shim.json.tmp".to_string()), ("renamed", "shim.json".to_string())];
        assert_eq!(seen, once, "shim.json is written once");
    }

    #[test]
    fn the_shims_report_of_the_end_is_read_exactly() {
        assert_eq!(parse_report("exited 0"), Some(ExitStatus::Code(0)));
        assert_eq!(parse_report("exited 75"), Some(ExitStatus::Code(75)));
        assert_eq!(parse_report("killed 9"), Some(ExitStatus::Signal(9)));
        for line in ["", "exited", "exited x", "started 1 2", "killed -"] {
            assert_eq!(parse_report(line), None, "{line:?}");
        }
    }
}
