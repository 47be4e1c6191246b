//! trainerd-shim: the parent of one trainer attempt, in the manner of conmon and containerd-shim.
//!
//! trainerd starts one shim per attempt; the shim starts the trainer and outlives trainerd, so a
//! restart or upgrade of trainerd never stops training, and the trainer's exact exit status is never
//! lost. A host runs as many shims as trainers, for days, so each must cost next to nothing: this
//! program uses no C library, no allocator, no threads and no formatting machinery, only the system
//! calls in `sys.rs`, and is linked static (built by `daemon/build.rs`, embedded in trainerd and run
//! from a sealed memory file: nothing to install beside trainerd).
//!
//! ```text
//! trainerd-shim JOB_DIR ATTEMPT STDOUT_LOG [UID:GID:GROUPS] -- PROGRAM [ARGS...]
//! ```
//!
//! With `UID:GID:GROUPS` (trainerd runs as root and the job as a user; GROUPS is a comma-separated
//! list of the user's supplementary groups, which trainerd looked up), the trainer drops to that
//! user and those groups before exec; the shim itself stays root, so the trainer can neither signal
//! it nor write its records. PROGRAM without a slash is looked up on PATH.
//!
//! 1. Leaves trainerd's session (`setsid`) and becomes a child subreaper, so the trainer's orphaned
//!    grandchildren are reparented to it rather than to init.
//! 2. Forks the trainer's process, which waits until step 3 is done before it runs PROGRAM.
//! 3. Writes `JOB_DIR/shim.json`: its own pid and start time and the trainer's, for a later trainerd
//!    to find both. Written once, before PROGRAM runs, so no trainer ever runs unnamed, and a start
//!    replaces no file (on an ext4 without a journal every file freed in the last minute slows each
//!    file creation after it in its block group, and a burst of starts would free one per start).
//! 4. Lets the trainer run PROGRAM as the leader of its own process group (trainerd signals that
//!    group), stdin from /dev/null, stdout appended to STDOUT_LOG (refused unless a regular file:
//!    opened without following a link or blocking on a FIFO), stderr inherited (trainerd passes the
//!    job's stderr log), all signals unblocked and SIGPIPE at its default. The environment passes
//!    through. A shim that dies before it lets the trainer go takes the trainer with it.
//! 5. Writes `started PID START_TICKS` on stdout (a pipe to trainerd); on failure to start,
//!    `error MESSAGE` and exit 127. It also writes `JOB_DIR/exit.json.tmp` full of spaces now, so that
//!    the exit record's blocks are allocated before the disk can fill up.
//! 6. Reaps children until the trainer itself exits, writes `JOB_DIR/exit.json` atomically (attempt,
//!    pid, code or signal, time) over the reserved blocks, and says the same on stdout
//!    (`exited CODE` or `killed SIGNAL`) for a trainerd that is still listening: when the record
//!    could not be written (a full disk), that line is trainerd's word of the end. Then it SIGKILLs
//!    what is left of the trainer's process group, reaps every remaining descendant (at most 30 s),
//!    and exits: 0 when the exit record was written, 3 when it was not. Its own exit is how trainerd
//!    learns of the end.

#![no_std]
#![no_main]
// The shim defines memcpy and friends itself: nothing here may be turned into a call to them.
#![no_builtins]
// The error lines are returned by value: there is no allocator to box them into.
#![allow(clippy::result_large_err)]

mod mem;
mod sys;
mod text;

use sys::CStr;
use text::Text;

core::arch::global_asm!(
    ".globl _start",
    "_start:",
    #[cfg(target_arch = "x86_64")]
    "mov rdi, rsp",
    #[cfg(target_arch = "x86_64")]
    "and rsp, -16",
    #[cfg(target_arch = "x86_64")]
    "call {main}",
    #[cfg(target_arch = "aarch64")]
    "mov x0, sp",
    #[cfg(target_arch = "aarch64")]
    "bl {main}",
    main = sym start,
);

/// How many bytes the exit record may take (it is about 100).
const EXIT_RECORD_ROOM: usize = 512;

/// The process's start: `stack` points at argc, then argv's pointers, a NULL, envp's pointers, a NULL.
extern "C" fn start(stack: *const usize) -> ! {
    // SAFETY: the kernel lays out the initial stack so: argc, argc pointers, NULL, the environment,
    // NULL. Every pointer names a NUL-terminated string that lives as long as the process.
    let (args, envp) = unsafe {
        let argc = *stack;
        let argv = stack.add(1) as *const CStr;
        (core::slice::from_raw_parts(argv, argc), argv.add(argc + 1))
    };
    sys::exit(run(args, envp))
}

/// The job's pieces, as trainerd passed them.
struct Args<'a> {
    dir: CStr,
    attempt: u64,
    stdout_log: CStr,
    run_as: Option<RunAs>,
    /// PROGRAM and its arguments: a NULL-terminated argv (the rest of our own).
    command: &'a [CStr],
}

/// The user the trainer runs as; at most 64 supplementary groups are passed on.
struct RunAs {
    uid: u32,
    gid: u32,
    groups: [u32; 64],
    count: usize,
}

fn run(args: &[CStr], envp: *const CStr) -> usize {
    sys::prctl(sys::PR_SET_NAME, sys::c(c"trainerd-shim") as usize);
    sys::set_signal(sys::SIGPIPE, true);
    let Some(args) = parse(args) else {
        sys::write_all(
            2,
            b"usage: trainerd-shim JOB_DIR ATTEMPT STDOUT_LOG [UID:GID:GROUPS] -- PROGRAM [ARGS...] (started by trainerd, not by hand)\n",
        );
        return 2;
    };
    let dir = sys::openat(sys::AT_FDCWD, args.dir, sys::O_PATH | sys::O_DIRECTORY | sys::O_CLOEXEC, 0);
    if dir < 0 {
        let mut line = Text::<600>::new();
        line.push(b"error cannot open the job directory ").push_c(args.dir).push(b": ").errno(dir).push(b"\n");
        sys::write_all(1, line.bytes());
        return 127;
    }
    let pid = sys::getpid();
    let me = (pid, start_ticks(pid).unwrap_or(0));
    // setsid fails only for a group leader, which trainerd does not make us; then we stay in its
    // session, which is harmless.
    sys::setsid();
    sys::prctl(sys::PR_SET_CHILD_SUBREAPER, 1);

    let (trainer, ticks) = match spawn(&args, envp, |trainer| write_identity(dir, args.attempt, me, trainer)) {
        Ok(started) => started,
        Err(message) => {
            sys::write_all(1, message.bytes());
            return 127;
        }
    };
    let mut line = Text::<64>::new();
    line.push(b"started ").num(trainer as u64).push(b" ").num(ticks).push(b"\n");
    sys::write_all(1, line.bytes());
    let reserved = reserve(dir);

    let status = loop {
        match sys::wait_any() {
            Ok((pid, status)) if pid == trainer => break status,
            Ok(_) => {}
            Err(e) if e == -sys::EINTR => {}
            // ECHILD: the trainer is not our child any more, which cannot happen; record nothing.
            Err(_) => return 1,
        }
    };
    let (secs, micros) = sys::now();
    let exited = status & 0x7f == 0;
    let (code, signal) = ((status >> 8) & 0xff, status & 0x7f);
    let mut record = Text::<256>::new();
    record.push(b"{\"format\":1,\"attempt\":").num(args.attempt).push(b",\"pid\":").num(trainer as u64);
    if exited {
        record.push(b",\"code\":").num(code as u64).push(b",\"signal\":null");
    } else {
        record.push(b",\"code\":null,\"signal\":").num(signal as u64);
    }
    record.push(b",\"at\":").num(secs).push(b".").padded(micros, 6).push(b"}\n");
    let recorded = write_reserved(dir, reserved, record.bytes()) || write_atomic(dir, c"exit.json", record.bytes());
    // The pipe to the trainerd that started us; when that trainerd is gone the write fails with
    // EPIPE (SIGPIPE is ignored), which changes nothing.
    let mut word = Text::<32>::new();
    if exited {
        word.push(b"exited ").num(code as u64).push(b"\n");
    } else {
        word.push(b"killed ").num(signal as u64).push(b"\n");
    }
    sys::write_all(1, word.bytes());

    // No process of the attempt may outlive it, including those that left its group (they are ours
    // as the subreaper). A descendant stuck in the kernel must not keep us forever: SIGALRM ends us.
    sys::alarm(30);
    loop {
        sys::kill(-trainer, sys::SIGKILL);
        kill_children();
        match sys::wait_any() {
            Err(e) if e != -sys::EINTR => break,
            _ => {}
        }
    }
    if recorded {
        0
    } else {
        3
    }
}

fn parse<'a>(args: &'a [CStr]) -> Option<Args<'a>> {
    let split = args.iter().position(|a| text::c_bytes(*a) == b"--")?;
    // args[0] is our own name.
    if !(4..=5).contains(&split) || args.len() <= split + 1 {
        return None;
    }
    let attempt = text::parse_u64(text::c_bytes(args[2]))?;
    let run_as = if split == 5 { Some(parse_user(text::c_bytes(args[4]))?) } else { None };
    Some(Args { dir: args[1], attempt, stdout_log: args[3], run_as, command: &args[split + 1..] })
}

/// `UID:GID:G1,G2,...` (the list may be empty) or `UID:GID` (the primary group alone).
fn parse_user(spec: &[u8]) -> Option<RunAs> {
    let mut parts = spec.splitn(3, |b| *b == b':');
    let uid = u32::try_from(text::parse_u64(parts.next()?)?).ok()?;
    let gid = u32::try_from(text::parse_u64(parts.next()?)?).ok()?;
    let mut user = RunAs { uid, gid, groups: [0; 64], count: 0 };
    match parts.next() {
        None => {
            user.groups[0] = gid;
            user.count = 1;
        }
        Some(list) => {
            for group in list.split(|b| *b == b',').filter(|g| !g.is_empty()) {
                if user.count == user.groups.len() {
                    break;
                }
                user.groups[user.count] = u32::try_from(text::parse_u64(group)?).ok()?;
                user.count += 1;
            }
        }
    }
    Some(user)
}

/// Starts the trainer: forks it, calls `named` with its pid and start time while it waits, then lets
/// it exec. Returns its pid and start time, or the `error ...` line to report. The child waits on a
/// pipe whose write end only we hold (our death closes it: the child then exits unexecuted), and
/// tells an exec failure through a close-on-exec pipe: nothing read means the exec happened.
fn spawn(args: &Args, envp: *const CStr, named: impl FnOnce((isize, u64))) -> Result<(isize, u64), Text<600>> {
    let refuse = |what: &[u8], errno: isize| {
        let mut line = Text::<600>::new();
        line.push(b"error ").push(what).push(b": ").errno(errno).push(b"\n");
        line
    };
    let log = open_log(args.stdout_log)?;
    let null = sys::openat(sys::AT_FDCWD, sys::c(c"/dev/null"), sys::O_RDONLY | sys::O_CLOEXEC, 0);
    if null < 0 {
        return Err(refuse(b"cannot open /dev/null", null));
    }
    let (report_read, report_write) = sys::pipe_cloexec().map_err(|e| refuse(b"cannot make a pipe", e))?;
    let (go_read, go_write) = sys::pipe_cloexec().map_err(|e| refuse(b"cannot make a pipe", e))?;
    let pid = sys::fork();
    if pid == 0 {
        sys::close(go_write);
        if sys::read_retrying(go_read, &mut [0u8; 1]) != 1 {
            sys::exit(127);
        }
        let errno = exec_trainer(args, envp, null, log);
        sys::write_all(report_write, &(errno as i32).to_ne_bytes());
        sys::exit(127);
    }
    sys::close(report_write);
    sys::close(go_read);
    sys::close(null);
    sys::close(log);
    if pid < 0 {
        sys::close(go_write);
        sys::close(report_read);
        return Err(refuse(b"cannot fork", pid));
    }
    // Its own group before anyone learns its pid, so a signal to that group (trainerd's) reaches it
    // from the start; the child makes the same call itself, and whichever comes second changes
    // nothing. The child cannot be reaped before we wait, so its pid and start time (the fork's;
    // exec keeps them) name it from here on.
    sys::setpgid_leader(pid);
    let ticks = start_ticks(pid).unwrap_or(0);
    named((pid, ticks));
    sys::write_all(go_write, b"g");
    sys::close(go_write);
    let mut word = [0u8; 4];
    let n = sys::read_retrying(report_read, &mut word);
    sys::close(report_read);
    if n == 4 {
        // The child exits at once; reap it so it is not taken for a descendant later.
        let _ = sys::wait_any();
        let mut what = Text::<600>::new();
        what.push(b"cannot start ").push_c(args.command[0]);
        return Err(refuse(what.bytes(), i32::from_ne_bytes(word) as isize));
    }
    Ok((pid, ticks))
}

/// In the child: becomes its own process group with the standard descriptors and signals, drops to
/// the job's user, and execs the trainer. Returns only on failure, with the (negative) errno.
fn exec_trainer(args: &Args, envp: *const CStr, null: isize, log: isize) -> isize {
    sys::setpgid_self();
    for (from, to) in [(null, 0), (log, 1)] {
        let rc = sys::dup_to(from, to);
        if rc < 0 {
            return rc;
        }
    }
    sys::unblock_all();
    sys::set_signal(sys::SIGPIPE, false);
    if let Some(user) = &args.run_as {
        // Groups and gid can be changed only while still root: this order.
        for rc in [sys::setgroups(&user.groups[..user.count]), sys::setgid(user.gid), sys::setuid(user.uid)] {
            if rc < 0 {
                return rc;
            }
        }
        // The umask a user's own login has, whatever the service's (the system unit's is 027): the
        // job's outputs are as readable as if its owner had run it.
        sys::umask(0o022);
    }
    let program = args.command[0];
    let argv = args.command.as_ptr();
    if text::c_bytes(program).contains(&b'/') {
        return sys::execve(program, argv, envp);
    }
    // As execvp: each PATH directory in turn; EACCES from any of them wins over ENOENT.
    let path = env_value(envp, b"PATH=").unwrap_or(b"/usr/local/bin:/usr/bin:/bin");
    let mut result = -sys::ENOENT;
    for dir in path.split(|b| *b == b':') {
        let mut full = Text::<4096>::new();
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        full.push(dir).push(b"/").push(text::c_bytes(program)).push(b"\0");
        if full.overflowed() {
            continue;
        }
        let rc = sys::execve(full.bytes().as_ptr(), argv, envp);
        if rc == -sys::EACCES || result != -sys::EACCES {
            result = rc;
        }
    }
    result
}

/// The value of the environment variable whose `NAME=` is `prefix`.
fn env_value(envp: *const CStr, prefix: &[u8]) -> Option<&'static [u8]> {
    let mut at = envp;
    loop {
        // SAFETY: envp is the kernel's NULL-terminated array of NUL-terminated strings.
        let entry = unsafe { *at };
        if entry.is_null() {
            return None;
        }
        let bytes = text::c_bytes(entry);
        if let Some(value) = bytes.strip_prefix(prefix) {
            return Some(value);
        }
        // SAFETY: not past the terminating NULL, checked above.
        at = unsafe { at.add(1) };
    }
}

/// Opens the trainer's stdout log for appending: created if absent, never through a link, never
/// blocking on a FIFO a trainer put there, and refused unless it is a regular file.
fn open_log(path: CStr) -> Result<isize, Text<600>> {
    let flags = sys::O_WRONLY | sys::O_APPEND | sys::O_CREAT | sys::O_NONBLOCK | sys::O_NOFOLLOW | sys::O_CLOEXEC;
    let fd = sys::openat(sys::AT_FDCWD, path, flags, 0o640);
    let found = if fd < 0 { sys::path_type(path) } else { sys::file_type(fd) };
    if fd >= 0 {
        if found == Ok(sys::S_IFREG) {
            return Ok(fd);
        }
        sys::close(fd);
    }
    let mut line = Text::<600>::new();
    match found {
        // Not a regular file (a FIFO with no reader fails the open itself): say what it is.
        Ok(kind) if kind != sys::S_IFREG => {
            line.push(b"error ").push_c(path).push(b" is ").push(kind_words(kind)).push(b", not a regular file\n");
        }
        _ => {
            line.push(b"error cannot open ").push_c(path).push(b": ").errno(if fd < 0 { fd } else { -sys::EACCES });
            line.push(b"\n");
        }
    }
    Err(line)
}

fn kind_words(kind: u16) -> &'static [u8] {
    match kind {
        sys::S_IFDIR => b"a directory",
        sys::S_IFIFO => b"a FIFO",
        sys::S_IFSOCK => b"a socket",
        sys::S_IFCHR => b"a character device",
        sys::S_IFBLK => b"a block device",
        sys::S_IFLNK => b"a symbolic link",
        _ => b"not a file",
    }
}

/// `shim.json`, written atomically in the job directory: `shim` is our pid and start time, read
/// once, `trainer` the trainer's.
fn write_identity(dir: isize, attempt: u64, (shim, ticks): (isize, u64), trainer: (isize, u64)) {
    let mut text = Text::<256>::new();
    text.push(b"{\"format\":1,\"attempt\":").num(attempt).push(b",\"shim_pid\":").num(shim as u64);
    text.push(b",\"shim_start_ticks\":").num(ticks);
    text.push(b",\"trainer_pid\":").num(trainer.0 as u64).push(b",\"trainer_start_ticks\":").num(trainer.1);
    text.push(b"}\n");
    write_atomic(dir, c"shim.json", text.bytes());
}

/// Write-temp then rename: a reader sees the old file or the new one, never a part. No fsync: the
/// reader is trainerd on the same machine, and a machine crash ends the attempt anyway.
fn write_atomic(dir: isize, name: &core::ffi::CStr, bytes: &[u8]) -> bool {
    let mut tmp = Text::<32>::new();
    tmp.push(name.to_bytes()).push(b".tmp\0");
    let flags = sys::O_WRONLY | sys::O_CREAT | sys::O_TRUNC | sys::O_CLOEXEC | sys::O_NOFOLLOW;
    let fd = sys::openat(dir, tmp.bytes().as_ptr(), flags, 0o666);
    if fd < 0 {
        return false;
    }
    let written = sys::write_all(fd, bytes);
    sys::close(fd);
    written && sys::renameat(dir, tmp.bytes().as_ptr(), sys::c(name)) == 0
}

/// Writes the exit record's temporary file now, full of spaces, so its blocks are the shim's before
/// the trainer can fill the disk. Returns the open file, or None when even that failed.
fn reserve(dir: isize) -> Option<isize> {
    sys::unlinkat(dir, sys::c(c"exit.json.tmp"));
    let flags = sys::O_WRONLY | sys::O_CREAT | sys::O_EXCL | sys::O_CLOEXEC | sys::O_NOFOLLOW;
    let fd = sys::openat(dir, sys::c(c"exit.json.tmp"), flags, 0o666);
    if fd < 0 {
        return None;
    }
    // No fsync: the file systems that allocate late (ext4's delayed allocation) reserve the space at
    // write(2) already, and a sync per start would cost every start a disk flush.
    if sys::write_all(fd, &[b' '; EXIT_RECORD_ROOM]) {
        Some(fd)
    } else {
        None
    }
}

/// Writes the record over the reserved blocks (no allocation needed), trims the file to it, and
/// renames it into place.
fn write_reserved(dir: isize, reserved: Option<isize>, bytes: &[u8]) -> bool {
    let Some(fd) = reserved else { return false };
    let done = bytes.len() <= EXIT_RECORD_ROOM
        && sys::pwrite(fd, bytes, 0) == bytes.len() as isize
        && sys::ftruncate(fd, bytes.len()) == 0
        && sys::renameat(dir, sys::c(c"exit.json.tmp"), sys::c(c"exit.json")) == 0;
    sys::close(fd);
    done
}

/// SIGKILLs our children: after the trainer's end, every one is a descendant it left behind (we are
/// their subreaper); their own children become ours as they die, and the next round gets them.
fn kill_children() {
    let fd = sys::openat(sys::AT_FDCWD, sys::c(c"/proc/thread-self/children"), sys::O_RDONLY | sys::O_CLOEXEC, 0);
    if fd < 0 {
        return;
    }
    let mut chunk = [0u8; 512];
    let mut pid: isize = 0;
    loop {
        let n = sys::read(fd, &mut chunk);
        if n <= 0 {
            break;
        }
        for &b in &chunk[..n as usize] {
            if b.is_ascii_digit() {
                pid = pid.saturating_mul(10).saturating_add((b - b'0') as isize);
            } else {
                if pid > 1 {
                    sys::kill(pid, sys::SIGKILL);
                }
                pid = 0;
            }
        }
    }
    if pid > 1 {
        sys::kill(pid, sys::SIGKILL);
    }
    sys::close(fd);
}

/// The start time that, with the pid, identifies a process: field 22 of `/proc/PID/stat`, counted
/// after the command name's closing parenthesis (the name itself may hold spaces and parentheses).
fn start_ticks(pid: isize) -> Option<u64> {
    let mut path = Text::<40>::new();
    path.push(b"/proc/").num(pid as u64).push(b"/stat\0");
    let fd = sys::openat(sys::AT_FDCWD, path.bytes().as_ptr(), sys::O_RDONLY | sys::O_CLOEXEC, 0);
    if fd < 0 {
        return None;
    }
    let mut stat = [0u8; 1024];
    let n = sys::read(fd, &mut stat);
    sys::close(fd);
    let stat = stat.get(..usize::try_from(n).ok()?)?;
    let after = stat.iter().rposition(|b| *b == b')')? + 1;
    // Fields 3 onwards follow the name; the start time is field 22, the 20th of those.
    let field = stat[after..].split(|b| *b == b' ').filter(|f| !f.is_empty()).nth(19)?;
    text::parse_u64(field)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    sys::write_all(2, b"trainerd-shim: internal error\n");
    sys::exit(70)
}
