//! The Linux system calls the shim makes, issued directly: the shim links no C library, so that
//! each of the hundreds of shims a busy host runs costs a few pages of its own and no dynamic
//! loading. Every call returns the kernel's raw result: a value, or `-errno`.

use core::arch::asm;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const RT_SIGACTION: usize = 13;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const PWRITE64: usize = 18;
    pub const SETITIMER: usize = 38;
    pub const GETPID: usize = 39;
    pub const CLONE: usize = 56;
    pub const EXECVE: usize = 59;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const FTRUNCATE: usize = 77;
    pub const UMASK: usize = 95;
    pub const SETUID: usize = 105;
    pub const SETGID: usize = 106;
    pub const SETPGID: usize = 109;
    pub const SETSID: usize = 112;
    pub const SETGROUPS: usize = 116;
    pub const PRCTL: usize = 157;
    pub const CLOCK_GETTIME: usize = 228;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
    pub const UNLINKAT: usize = 263;
    pub const DUP3: usize = 292;
    pub const PIPE2: usize = 293;
    pub const RENAMEAT2: usize = 316;
    pub const STATX: usize = 332;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const RT_SIGACTION: usize = 134;
    pub const RT_SIGPROCMASK: usize = 135;
    pub const PWRITE64: usize = 68;
    pub const SETITIMER: usize = 103;
    pub const GETPID: usize = 172;
    pub const CLONE: usize = 220;
    pub const EXECVE: usize = 221;
    pub const WAIT4: usize = 260;
    pub const KILL: usize = 129;
    pub const FTRUNCATE: usize = 46;
    pub const UMASK: usize = 166;
    pub const SETUID: usize = 146;
    pub const SETGID: usize = 144;
    pub const SETPGID: usize = 154;
    pub const SETSID: usize = 157;
    pub const SETGROUPS: usize = 159;
    pub const PRCTL: usize = 167;
    pub const CLOCK_GETTIME: usize = 113;
    pub const EXIT_GROUP: usize = 94;
    pub const OPENAT: usize = 56;
    pub const UNLINKAT: usize = 35;
    pub const DUP3: usize = 24;
    pub const PIPE2: usize = 59;
    pub const RENAMEAT2: usize = 276;
    pub const STATX: usize = 291;
}

#[cfg(target_arch = "x86_64")]
unsafe fn call6(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    // SAFETY (caller): the arguments are what system call `n` expects.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn call6(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    // SAFETY (caller): the arguments are what system call `n` expects.
    unsafe {
        asm!("svc 0", in("x8") n, inlateout("x0") a as isize => ret, in("x1") b, in("x2") c, in("x3") d,
             in("x4") e, in("x5") f, options(nostack));
    }
    ret
}

unsafe fn call(n: usize, args: &[usize]) -> isize {
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    // SAFETY: forwarded from the caller.
    unsafe { call6(n, a(0), a(1), a(2), a(3), a(4), a(5)) }
}

pub const EINTR: isize = 4;
pub const EACCES: isize = 13;
pub const ENOENT: isize = 2;

pub const AT_FDCWD: isize = -100;
pub const O_RDONLY: usize = 0;
pub const O_WRONLY: usize = 1;
pub const O_CREAT: usize = 0o100;
pub const O_EXCL: usize = 0o200;
pub const O_TRUNC: usize = 0o1000;
pub const O_APPEND: usize = 0o2000;
pub const O_NONBLOCK: usize = 0o4000;
pub const O_CLOEXEC: usize = 0o2000000;
#[cfg(target_arch = "x86_64")]
pub const O_DIRECTORY: usize = 0o200000;
#[cfg(target_arch = "x86_64")]
pub const O_NOFOLLOW: usize = 0o400000;
#[cfg(target_arch = "aarch64")]
pub const O_DIRECTORY: usize = 0o40000;
#[cfg(target_arch = "aarch64")]
pub const O_NOFOLLOW: usize = 0o100000;
pub const O_PATH: usize = 0o10000000;

pub const SIGKILL: usize = 9;
pub const SIGPIPE: usize = 13;
pub const SIGCHLD: usize = 17;
const SIG_DFL: usize = 0;
const SIG_IGN: usize = 1;
pub const PR_SET_NAME: usize = 15;
pub const PR_SET_CHILD_SUBREAPER: usize = 36;
const AT_EMPTY_PATH: usize = 0x1000;
const AT_SYMLINK_NOFOLLOW: usize = 0x100;
const STATX_TYPE: usize = 1;
pub const S_IFMT: u16 = 0o170000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFIFO: u16 = 0o010000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFBLK: u16 = 0o060000;

/// A NUL-terminated string the kernel reads.
pub type CStr = *const u8;

pub fn read(fd: isize, buf: &mut [u8]) -> isize {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    unsafe { call(nr::READ, &[fd as usize, buf.as_mut_ptr() as usize, buf.len()]) }
}

/// `read`, again while a signal interrupts it.
pub fn read_retrying(fd: isize, buf: &mut [u8]) -> isize {
    loop {
        match read(fd, buf) {
            n if n == -EINTR => {}
            n => return n,
        }
    }
}

pub fn write(fd: isize, buf: &[u8]) -> isize {
    // SAFETY: the kernel reads `buf.len()` bytes from `buf`.
    unsafe { call(nr::WRITE, &[fd as usize, buf.as_ptr() as usize, buf.len()]) }
}

/// Writes all of `buf`, retrying short writes; false on any error.
pub fn write_all(fd: isize, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        match write(fd, buf) {
            n if n > 0 => buf = &buf[n as usize..],
            n if n == -EINTR => {}
            _ => return false,
        }
    }
    true
}

pub fn pwrite(fd: isize, buf: &[u8], offset: usize) -> isize {
    // SAFETY: as in `write`.
    unsafe { call(nr::PWRITE64, &[fd as usize, buf.as_ptr() as usize, buf.len(), offset]) }
}

pub fn close(fd: isize) {
    // SAFETY: takes no pointers.
    unsafe { call(nr::CLOSE, &[fd as usize]) };
}

/// `path` must be NUL-terminated.
pub fn openat(dir: isize, path: CStr, flags: usize, mode: usize) -> isize {
    // SAFETY: `path` is a NUL-terminated string (the caller's promise).
    unsafe { call(nr::OPENAT, &[dir as usize, path as usize, flags, mode]) }
}

pub fn unlinkat(dir: isize, path: CStr) -> isize {
    // SAFETY: as in `openat`.
    unsafe { call(nr::UNLINKAT, &[dir as usize, path as usize, 0]) }
}

pub fn renameat(dir: isize, from: CStr, to: CStr) -> isize {
    // SAFETY: as in `openat`.
    unsafe { call(nr::RENAMEAT2, &[dir as usize, from as usize, dir as usize, to as usize, 0]) }
}

pub fn ftruncate(fd: isize, len: usize) -> isize {
    // SAFETY: takes no pointers.
    unsafe { call(nr::FTRUNCATE, &[fd as usize, len]) }
}

/// The file type bits (`S_IFMT`) of an open file.
pub fn file_type(fd: isize) -> Result<u16, isize> {
    statx_type(fd, c"", AT_EMPTY_PATH)
}

/// The file type bits of what is at `path`, without following a link.
pub fn path_type(path: CStr) -> Result<u16, isize> {
    // SAFETY: a NUL-terminated string (the caller's promise, as for `openat`).
    statx_type(AT_FDCWD, unsafe { core::ffi::CStr::from_ptr(path.cast()) }, AT_SYMLINK_NOFOLLOW)
}

fn statx_type(dir: isize, path: &core::ffi::CStr, flags: usize) -> Result<u16, isize> {
    // struct statx is 256 bytes; stx_mode is the u16 at offset 28.
    let mut statx = [0u64; 32];
    // SAFETY: the kernel writes a struct statx (256 bytes) into `statx`; `path` is NUL-terminated.
    let rc = unsafe {
        call(nr::STATX, &[dir as usize, path.as_ptr() as usize, flags, STATX_TYPE, statx.as_mut_ptr() as usize])
    };
    if rc < 0 {
        return Err(rc);
    }
    let word = statx[3].to_ne_bytes();
    Ok(u16::from_ne_bytes([word[4], word[5]]) & S_IFMT)
}

pub fn pipe_cloexec() -> Result<(isize, isize), isize> {
    let mut fds = [0i32; 2];
    // SAFETY: the kernel writes two ints into `fds`.
    let rc = unsafe { call(nr::PIPE2, &[fds.as_mut_ptr() as usize, O_CLOEXEC]) };
    if rc < 0 {
        Err(rc)
    } else {
        Ok((fds[0] as isize, fds[1] as isize))
    }
}

pub fn dup_to(from: isize, to: isize) -> isize {
    // SAFETY: takes no pointers.
    unsafe { call(nr::DUP3, &[from as usize, to as usize, 0]) }
}

/// fork(2): 0 in the child, the child's pid in the parent.
pub fn fork() -> isize {
    // SAFETY: without CLONE_VM the child gets a copy of our memory, so both sides go on safely.
    unsafe { call(nr::CLONE, &[SIGCHLD]) }
}

/// `argv` and `envp` are NULL-terminated arrays of NUL-terminated strings.
pub fn execve(path: CStr, argv: *const CStr, envp: *const CStr) -> isize {
    // SAFETY: the caller's promise above.
    unsafe { call(nr::EXECVE, &[path as usize, argv as usize, envp as usize]) }
}

/// waitpid(-1): the pid that changed and its wait status.
pub fn wait_any() -> Result<(isize, i32), isize> {
    let mut status = 0i32;
    // SAFETY: the kernel writes one int into `status`; no rusage.
    let rc = unsafe { call(nr::WAIT4, &[usize::MAX, &mut status as *mut i32 as usize, 0, 0]) };
    if rc < 0 {
        Err(rc)
    } else {
        Ok((rc, status))
    }
}

pub fn kill(pid: isize, signal: usize) -> isize {
    // SAFETY: takes no pointers.
    unsafe { call(nr::KILL, &[pid as usize, signal]) }
}

pub fn getpid() -> isize {
    // SAFETY: takes no arguments.
    unsafe { call(nr::GETPID, &[]) }
}

pub fn setsid() -> isize {
    // SAFETY: takes no arguments.
    unsafe { call(nr::SETSID, &[]) }
}

pub fn setpgid_self() -> isize {
    // SAFETY: takes no pointers.
    unsafe { call(nr::SETPGID, &[0, 0]) }
}

/// Makes our child `pid` the leader of a process group of its own.
pub fn setpgid_leader(pid: isize) -> isize {
    // SAFETY: takes no pointers.
    unsafe { call(nr::SETPGID, &[pid as usize, pid as usize]) }
}

pub fn prctl(option: usize, arg: usize) -> isize {
    // SAFETY: the options used (PR_SET_CHILD_SUBREAPER, PR_SET_NAME with a NUL-terminated string)
    // read at most 16 bytes through `arg`.
    unsafe { call(nr::PRCTL, &[option, arg, 0, 0, 0]) }
}

pub fn setgroups(groups: &[u32]) -> isize {
    // SAFETY: the kernel reads `groups.len()` gids.
    unsafe { call(nr::SETGROUPS, &[groups.len(), groups.as_ptr() as usize]) }
}

pub fn setgid(gid: u32) -> isize {
    // SAFETY: takes no pointers. The raw call changes this thread only: the shim has one.
    unsafe { call(nr::SETGID, &[gid as usize]) }
}

pub fn setuid(uid: u32) -> isize {
    // SAFETY: as in `setgid`.
    unsafe { call(nr::SETUID, &[uid as usize]) }
}

pub fn umask(mask: usize) {
    // SAFETY: takes no pointers.
    unsafe { call(nr::UMASK, &[mask]) };
}

/// Sets `signal`'s disposition to ignored (`ignore`) or the default.
pub fn set_signal(signal: usize, ignore: bool) {
    // struct kernel_sigaction: handler, flags, restorer, mask (8 bytes each on both architectures).
    let action = [if ignore { SIG_IGN } else { SIG_DFL }, 0, 0, 0];
    // SAFETY: the kernel reads one struct kernel_sigaction; a sigset is 8 bytes.
    unsafe { call(nr::RT_SIGACTION, &[signal, action.as_ptr() as usize, 0, 8]) };
}

/// Unblocks every signal.
pub fn unblock_all() {
    let empty = 0u64;
    const SIG_SETMASK: usize = 2;
    // SAFETY: the kernel reads one 8-byte sigset.
    unsafe { call(nr::RT_SIGPROCMASK, &[SIG_SETMASK, &empty as *const u64 as usize, 0, 8]) };
}

/// Delivers SIGALRM (whose default ends the process) after `seconds`.
pub fn alarm(seconds: usize) {
    // struct itimerval: interval (sec, usec), value (sec, usec).
    let timer = [0usize, 0, seconds, 0];
    const ITIMER_REAL: usize = 0;
    // SAFETY: the kernel reads one struct itimerval; no old value is asked for.
    unsafe { call(nr::SETITIMER, &[ITIMER_REAL, timer.as_ptr() as usize, 0]) };
}

/// The wall clock: seconds and microseconds since the epoch.
pub fn now() -> (u64, u64) {
    let mut ts = [0i64; 2];
    const CLOCK_REALTIME: usize = 0;
    // SAFETY: the kernel writes one struct timespec.
    let rc = unsafe { call(nr::CLOCK_GETTIME, &[CLOCK_REALTIME, ts.as_mut_ptr() as usize]) };
    if rc < 0 {
        (0, 0)
    } else {
        (ts[0].max(0) as u64, (ts[1].max(0) as u64) / 1000)
    }
}

pub fn exit(code: usize) -> ! {
    loop {
        // SAFETY: takes no pointers and does not return.
        unsafe { call(nr::EXIT_GROUP, &[code]) };
    }
}

/// A Rust C-string literal as the pointer the calls above take.
pub fn c(s: &core::ffi::CStr) -> CStr {
    s.as_ptr().cast()
}
