//! What trainerd knows about processes from the kernel: a process's identity across pid reuse (its
//! start time), signals to a whole process group, and whether any live member of a group is left.
//!
//! A trainer runs as the leader of its own process group, so its DataLoader workers and other
//! grandchildren share its group id and are signalled and checked with it. A launcher may start its
//! workers in sessions of their own (torchrun does); they are still descendants of the job's shim,
//! which is their subreaper, so [`descendants`] finds them and [`signal_catchers`] reaches them.

use std::io;

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`). With the pid
/// it identifies a process: a recycled pid has a different start time.
pub fn start_ticks(pid: u32) -> io::Result<u64> {
    stat_fields(pid)?.start_ticks.ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no start time")))
}

/// Whether the process `pid` that started at `ticks` still runs: false when `pid` is gone, a zombie
/// (exited, its parent has not reaped it yet), or another process now; an error when that cannot be
/// told. One read of its stat (a reconciliation asks it of every shim, a restart adopts every shim).
pub fn runs(pid: u32, ticks: u64) -> io::Result<bool> {
    match stat_fields(pid) {
        Ok(s) => {
            let start = s.start_ticks.ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no start time")))?;
            Ok(start == ticks && s.state != 'Z' && s.state != 'X')
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `pid` is a zombie (exited, not yet reaped). A missing process is not a zombie. The
/// tests' way to wait for one; trainerd itself asks [`runs`].
#[cfg(test)]
pub fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_ok_and(|s| s.state == 'Z' || s.state == 'X')
}

/// Sends `signal` to every process in group `pgid`. A group with no process left is not an error.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    let pgid = i32::try_from(pgid).map_err(|_| io::Error::other(format!("process group {pgid} is out of range")))?;
    if pgid <= 1 {
        // kill(-1) or kill(0) would signal far more than one job: refuse whatever the caller passed.
        return Err(io::Error::other(format!("refusing to signal process group {pgid}")));
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        e => Err(e),
    }
}

/// The pids of the live (not zombie) processes in group `pgid`, read from `/proc`. Zombies hold no
/// memory, GPU memory included, so a group of zombies is an empty group.
pub fn live_group_members(pgid: u32) -> io::Result<Vec<u32>> {
    let mut members = Vec::new();
    // Fast path: a group with no process at all (the common end of an attempt) needs no /proc scan.
    if let Ok(group) = i32::try_from(pgid) {
        // SAFETY: kill(2) with signal 0 only checks for existence.
        if group > 1
            && unsafe { libc::kill(-group, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            return Ok(members);
        }
    }
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may exit between the listing and the read: that is not an error.
        if let Ok(stat) = stat_fields(pid) {
            if stat.pgrp == pgid && stat.state != 'Z' && stat.state != 'X' {
                members.push(pid);
            }
        }
    }
    Ok(members)
}

/// The live (not zombie) descendants of `root`, children before grandchildren, read from `/proc`.
/// Under a shim (a child subreaper) these are every process of the job, whatever their group or
/// session: an orphan is re-parented to the shim, not to init.
pub fn descendants(root: u32) -> io::Result<Vec<u32>> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = stat_fields(pid) {
            if stat.state != 'Z' && stat.state != 'X' {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            // A pid seen twice would mean a cycle in a racing listing; never loop on it.
            if child != root && !found.contains(&child) {
                found.push(child);
                next.push(child);
            }
        }
    }
    Ok(found)
}

/// SIGKILLs every descendant of `shim` (the job's processes in any group or session).
pub fn kill_descendants(shim: u32) -> io::Result<()> {
    for pid in descendants(shim)? {
        if let Ok(target) = i32::try_from(pid) {
            // SAFETY: kill(2) on a live descendant of the shim, which reaps it (see signal_catchers).
            unsafe { libc::kill(target, libc::SIGKILL) };
        }
    }
    Ok(())
}

/// Whether `pid` has a handler installed for `signal` (the `SigCgt` mask of `/proc/PID/status`): a
/// process that does not catch SIGUSR1 would be killed by it, so it is not sent one.
pub fn catches(pid: u32, signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let Some(mask) = status.lines().find_map(|l| l.strip_prefix("SigCgt:")) else { return false };
    let Ok(mask) = u64::from_str_radix(mask.trim(), 16) else { return false };
    (1..=64).contains(&signal) && mask & (1 << (signal - 1)) != 0
}

/// Sends `signal` to the main thread of every process of the job under `shim` that catches it (see
/// [`catches`]),
/// except the members of `skip_group` (signalled as a group already), and returns their pids: a
/// launcher or a helper that would die of the signal is left alone.
pub fn signal_catchers(shim: u32, signal: i32, skip_group: Option<u32>) -> io::Result<Vec<u32>> {
    let mut sent = Vec::new();
    for pid in descendants(shim)? {
        if !catches(pid, signal) || (skip_group.is_some() && stat_fields(pid).ok().map(|s| s.pgrp) == skip_group) {
            continue;
        }
        let Ok(target) = i32::try_from(pid) else { continue };
        // To the process's main thread (tgkill), not to the process: a process-directed signal may
        // land on any thread, and one landing on a gloo or NCCL thread in the middle of a collective
        // can abort the rank (measured: 400 SIGUSR1s by kill(2) aborted a two-rank all_reduce loop;
        // the same by tgkill to the main thread, where Python handles them, never did).
        // SAFETY: tgkill(2) has no memory-safety preconditions; the pid is a live descendant of the
        // shim, which reaps it, so it cannot have been recycled to another process meanwhile.
        if unsafe { libc::syscall(libc::SYS_tgkill, target, target, signal) } == 0 {
            sent.push(pid);
        }
    }
    Ok(sent)
}

struct Stat {
    state: char,
    ppid: u32,
    pgrp: u32,
    start_ticks: Option<u64>,
}

fn stat_fields(pid: u32) -> io::Result<Stat> {
    use std::io::Read;
    // One read(2) into the stack: procfs gives the whole line (a few hundred bytes) to the first read
    // that has room for it. `read_to_string` also stats the file and reads again to see the end, which
    // was a visible share of trainerd's CPU when a reconciliation looks at a thousand shims.
    let mut buf = [0u8; 1024];
    let n = std::fs::File::open(format!("/proc/{pid}/stat"))?.read(&mut buf)?;
    let bad = || io::Error::other(format!("malformed /proc/{pid}/stat"));
    if n == buf.len() {
        return Err(bad());
    }
    // The command name (field 2) is in parentheses and may itself contain spaces, ')' and bytes that
    // are not UTF-8; what follows it is ASCII.
    let close = buf[..n].iter().rposition(|b| *b == b')').ok_or_else(bad)?;
    let rest = std::str::from_utf8(&buf[close + 1..n]).map_err(|_| bad())?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field N is fields[N - 3].
    Ok(Stat {
        state: fields.first().and_then(|s| s.chars().next()).ok_or_else(bad)?,
        ppid: fields.get(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?,
        pgrp: fields.get(2).and_then(|s| s.parse().ok()).ok_or_else(bad)?,
        start_ticks: fields.get(19).and_then(|s| s.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn descendants_in_other_sessions_are_found_and_only_the_catchers_get_a_signal() {
        // A "launcher" that does not catch SIGUSR1, with a "worker" in a session of its own that
        // does (the shape of torchrun): the worker gets SIGUSR1, the launcher is not killed by it.
        let mut launcher = Command::new("sh")
            .args([
                "-c",
                // The worker forks nothing: a forked child keeps its parent's handlers until exec.
                "setsid python3 -c 'import os, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))
print(\"worker\", os.getpid(), flush=True)
time.sleep(600)' & wait",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(launcher.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let worker: u32 = line.trim().strip_prefix("worker ").unwrap().parse().unwrap();
        let me = std::process::id();
        let all = descendants(me).unwrap();
        assert!(all.contains(&launcher.id()) && all.contains(&worker), "{all:?}");
        assert_ne!(stat_fields(worker).unwrap().pgrp, stat_fields(launcher.id()).unwrap().pgrp);
        assert!(catches(worker, libc::SIGUSR1) && !catches(launcher.id(), libc::SIGUSR1));
        let sent = signal_catchers(launcher.id(), libc::SIGUSR1, None).unwrap();
        assert_eq!(sent, [worker]);
        let status = launcher.wait().unwrap();
        assert!(status.success(), "the launcher ends when its worker does, unharmed: {status}");
        assert!(descendants(launcher.id()).unwrap().is_empty());
    }

    #[test]
    fn a_command_name_with_parentheses_spaces_and_bytes_that_are_not_utf8_is_read_past() {
        // A thread may rename only itself; /proc/TID/stat has the same form as a process's.
        std::thread::spawn(|| {
            // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes, on this thread.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"x) 1 2 (\xff".as_ptr()) };
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            let stat = stat_fields(tid).unwrap();
            assert_eq!((stat.state, stat.ppid), ('R', std::os::unix::process::parent_id()));
            assert!(stat.start_ticks.is_some());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_start_time_is_read_and_differs_between_processes_started_apart() {
        let me = std::process::id();
        let mine = start_ticks(me).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let mut child = Command::new("sleep").arg("1000").spawn().unwrap();
        let its = start_ticks(child.id()).unwrap();
        assert!(its > mine, "a later process has a later start time ({its} vs {mine})");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(start_ticks(child.id()).is_err(), "a reaped process has no stat");
    }

    #[test]
    fn killing_the_group_leaves_no_grandchild_alive() {
        // A "trainer" with two grandchildren that ignore nothing and outlive it unless signalled.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 1000 & sleep 1000 & echo ready; wait"])
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let pgid = child.id();
        assert_eq!(live_group_members(pgid).unwrap().len(), 3, "sh and two sleeps");
        signal_group(pgid, libc::SIGKILL).unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !live_group_members(pgid).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "group members survived SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
        signal_group(pgid, libc::SIGKILL).unwrap();
    }

    #[test]
    fn signalling_everything_is_refused() {
        assert!(signal_group(0, libc::SIGTERM).is_err());
        assert!(signal_group(1, libc::SIGTERM).is_err());
        assert!(signal_group(u32::MAX, libc::SIGTERM).is_err());
    }
}
