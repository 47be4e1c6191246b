//! trainerd-shim: the parent of one trainer attempt, in the manner of conmon and containerd-shim.
//!
//! trainerd starts one shim per attempt; the shim starts the trainer and outlives trainerd, so a
//! restart or upgrade of trainerd never stops training, and the trainer's exact exit status is never
//! lost. It uses no threads and no async runtime; from trainerd's library only `process`, `users`
//! and `untrusted` (std and libc, all three).
//!
//! ```text
//! trainerd-shim JOB_DIR ATTEMPT STDOUT_LOG [UID:GID] -- PROGRAM [ARGS...]
//! ```
//!
//! With `UID:GID` (trainerd runs as root and the job as a user), the trainer drops to that user,
//! its primary group and its supplementary groups before exec; the shim itself stays root, so the
//! trainer can neither signal it nor write its records.
//!
//! 1. Writes `JOB_DIR/shim.json` (its own pid and start time, for a later trainerd to find it), then
//!    leaves trainerd's session (`setsid`) and becomes a child subreaper, so the trainer's orphaned
//!    grandchildren are reparented to it rather than to init.
//! 2. Starts PROGRAM as the leader of its own process group (trainerd signals that group), stdin
//!    from /dev/null, stdout appended to STDOUT_LOG, stderr inherited (trainerd passes the job's
//!    stderr log). The environment passes through unchanged.
//! 3. Writes `started PID START_TICKS` on stdout (a pipe to trainerd) and `JOB_DIR/shim.json` again
//!    with the trainer's identity; on failure to start, `error MESSAGE` and exit 127. It also writes
//!    `JOB_DIR/exit.json.tmp` full of spaces now, so that the exit record's blocks are allocated
//!    before the disk can fill up.
//! 4. Reaps children until the trainer itself exits, writes `JOB_DIR/exit.json` atomically (attempt,
//!    pid, code or signal, time) over the reserved blocks, and says the same on stdout
//!    (`exited CODE` or `killed SIGNAL`) for a trainerd that is still listening: when the record
//!    could not be written (a full disk), that line is trainerd's word of the end. Then it SIGKILLs
//!    what is left of the trainer's process group, reaps every remaining descendant (at most 30 s),
//!    and exits: 0 when the exit record was written, 3 when it was not. Its own exit is how trainerd
//!    learns of the end.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Makes `cmd` exec as `uid`:`gid` with the user's supplementary groups (looked up now: nothing
/// between fork and exec may allocate or take locks).
fn drop_privileges(cmd: &mut Command, uid: u32, gid: u32) {
    let groups: Vec<libc::gid_t> = match trainerd::users::user_by_uid(uid) {
        Some(user) => trainerd::users::groups_of(&trainerd::users::User { gid, ..user }),
        None => vec![gid],
    };
    // SAFETY: the closure runs between fork and exec and calls only setgroups, setgid, setuid and
    // umask, which are async-signal-safe; `groups` was built before the fork. The order matters:
    // groups and gid can be changed only while still root.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The umask a user's own login has, whatever the service's (the system unit's is 027):
            // the job's outputs are as readable as if its owner had run it.
            libc::umask(0o022);
            Ok(())
        });
    }
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(split) = args.iter().position(|a| a == "--") else { usage() };
    if !(3..=4).contains(&split) || args.len() <= split + 1 {
        usage();
    }
    let run_as = if split == 4 {
        let parsed = args[3]
            .to_str()
            .and_then(|s| s.split_once(':'))
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
        let Some((uid, gid)) = parsed else { usage() };
        Some((uid, gid))
    } else {
        None
    };
    let dir = PathBuf::from(&args[0]);
    let Some(attempt) = args[1].to_str().and_then(|a| a.parse::<u32>().ok()) else { usage() };
    let stdout_log = PathBuf::from(&args[2]);
    let (program, rest) = (&args[split + 1], &args[split + 2..]);

    let me = std::process::id();
    // Written before anything else, so a trainerd that dies before it learns our pid can still find us.
    write_identity(&dir, attempt, me, None);
    // SAFETY: setsid and prctl take no pointers. setsid fails only for a group leader, which trainerd
    // does not make us; then we stay in its session, which is harmless.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }

    // The log is in trainerd's directory, but a trainer running as trainerd's user could have put a
    // FIFO there; opened without blocking, refused unless it is a regular file.
    let log = trainerd::untrusted::open_append(&stdout_log).map_err(std::io::Error::other);
    let started = log.and_then(|log| {
        let mut cmd = Command::new(program);
        cmd.args(rest).process_group(0).stdin(Stdio::null()).stdout(log);
        if let Some((uid, gid)) = run_as {
            drop_privileges(&mut cmd, uid, gid);
        }
        cmd.spawn()
    });
    let mut handshake = std::io::stdout().lock();
    let trainer = match started {
        Ok(child) => child.id(),
        Err(e) => {
            let _ = writeln!(handshake, "error {e}");
            std::process::exit(127);
        }
    };
    // The trainer cannot be reaped before we wait, so its pid and start time still name it here.
    let ticks = start_ticks(trainer).unwrap_or(0);
    write_identity(&dir, attempt, me, Some((trainer, ticks)));
    let _ = writeln!(handshake, "started {trainer} {ticks}");
    let _ = handshake.flush();
    drop(handshake);
    let exit_path = dir.join("exit.json");
    let reserved = reserve(&exit_path);

    let status = loop {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == trainer as i32 {
            break status;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // ECHILD: the trainer is not our child any more, which cannot happen; record nothing.
            std::process::exit(1);
        }
    };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let (code, signal) = if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status).to_string(), "null".to_string())
    } else {
        ("null".to_string(), libc::WTERMSIG(status).to_string())
    };
    let record = format!(
        "{{\"format\":1,\"attempt\":{attempt},\"pid\":{trainer},\"code\":{code},\"signal\":{signal},\"at\":{now:.6}}}\n"
    );
    let recorded =
        write_reserved(reserved, &exit_path, record.as_bytes()) || write_atomic(&exit_path, record.as_bytes());
    // The pipe to the trainerd that started us; when that trainerd is gone the write fails with EPIPE
    // (Rust ignores SIGPIPE), which changes nothing.
    let word = if libc::WIFEXITED(status) { format!("exited {code}") } else { format!("killed {signal}") };
    let _ = writeln!(std::io::stdout().lock(), "{word}");

    // No process of the attempt may outlive it, including those that left its group (they are ours
    // as the subreaper). A descendant stuck in the kernel must not keep us forever: SIGALRM ends us.
    // SAFETY: kill, alarm and waitpid take no pointers we do not own.
    unsafe {
        libc::alarm(30);
        loop {
            libc::kill(-(trainer as i32), libc::SIGKILL);
            kill_children(me);
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
    std::process::exit(if recorded { 0 } else { 3 });
}

/// How many bytes the exit record may take (it is about 100).
const EXIT_RECORD_ROOM: usize = 512;

/// Writes the exit record's temporary file now, full of spaces, so its blocks are the shim's before
/// the trainer can fill the disk. Returns the open file, or None when even that failed.
fn reserve(exit_path: &Path) -> Option<(std::fs::File, PathBuf)> {
    let mut tmp = exit_path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).ok()?;
    // No fsync: the file systems that allocate late (ext4's delayed allocation) reserve the space at
    // write(2) already, and a sync per start would cost every start a disk flush.
    file.write_all(&[b' '; EXIT_RECORD_ROOM]).ok()?;
    Some((file, tmp))
}

/// Writes the record over the reserved blocks (no allocation needed), trims the file to it, and
/// renames it into place.
fn write_reserved(reserved: Option<(std::fs::File, PathBuf)>, path: &Path, bytes: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let Some((file, tmp)) = reserved else { return false };
    bytes.len() <= EXIT_RECORD_ROOM
        && file.write_all_at(bytes, 0).is_ok()
        && file.set_len(bytes.len() as u64).is_ok()
        && std::fs::rename(&tmp, path).is_ok()
}

/// SIGKILLs our children: after the trainer's end, every one is a descendant it left behind (we are
/// their subreaper); their own children become ours as they die, and the next round gets them.
fn kill_children(me: u32) {
    let Ok(list) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else { return };
    for pid in list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        // SAFETY: kill takes no pointers; these pids are our unreaped children, so they name them.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: trainerd-shim JOB_DIR ATTEMPT STDOUT_LOG [UID:GID] -- PROGRAM [ARGS...] (started by trainerd, not by hand)"
    );
    std::process::exit(2);
}

fn write_identity(dir: &Path, attempt: u32, shim: u32, trainer: Option<(u32, u64)>) {
    let ticks = start_ticks(shim).unwrap_or(0);
    let (trainer_pid, trainer_ticks) = match trainer {
        Some((pid, ticks)) => (pid.to_string(), ticks.to_string()),
        None => ("null".to_string(), "null".to_string()),
    };
    let text = format!(
        "{{\"format\":1,\"attempt\":{attempt},\"shim_pid\":{shim},\"shim_start_ticks\":{ticks},\
         \"trainer_pid\":{trainer_pid},\"trainer_start_ticks\":{trainer_ticks}}}\n"
    );
    write_atomic(&dir.join("shim.json"), text.as_bytes());
}

/// Write-temp then rename: a reader sees the old file or the new one, never a part. No fsync: the
/// reader is trainerd on the same machine, and a machine crash ends the attempt anyway.
fn write_atomic(path: &Path, bytes: &[u8]) -> bool {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_ok()
}

/// The start time that, with the pid, identifies a process (trainerd compares it at adoption).
fn start_ticks(pid: u32) -> Option<u64> {
    trainerd::process::start_ticks(pid).ok()
}
