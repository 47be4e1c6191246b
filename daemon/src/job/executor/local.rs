//! The local executor: each attempt under a `trainerd-shim` on this host. The shim is the trainer's
//! parent, in a session of its own, so a trainer outlives trainerd; trainerd learns the end from the
//! shim's exit (tokio's child wait, or a pidfd for a shim an earlier trainerd started) and the exact
//! status from the shim's pipe when the shim says (exit code 0) its `exit.json` holds the same, else
//! from that `exit.json`.

use super::shim::{self, Found, Identity, ShimEnd, Waiter};
use super::{Adopted, End, Ended, Running, Started};
use crate::blocking::FILE_DEADLINE;
use crate::job::{JobPaths, Launch};
use crate::process;
use crate::store::records::{Attempt, JobSpec};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A local attempt: its shim (once known) and the trainer's process group (once started).
pub struct Local {
    pub shim: Option<Identity>,
    /// The trainer's pid, the leader of its process group.
    pub pgid: Option<u32>,
    /// The job directory (the shim's records) and the attempt's number.
    dir: PathBuf,
    attempt: u32,
}

/// The end of a local attempt: the shim's exit, then its exit record.
pub struct EndOf {
    waiter: Waiter,
    dir: PathBuf,
    attempt: u32,
}

impl EndOf {
    /// Waits for the shim, then takes what it said on its pipe when it also wrote its exit record,
    /// else reads that record, else takes the pipe's word alone (a shim that could not write it).
    pub async fn wait(self) -> Ended {
        let attempt = self.attempt;
        let said = match self.waiter.wait().await {
            // The shim wrote its record and said the same on its pipe: the end is known without a
            // trip to the blocking pool and the file (this is on the exit-detection path).
            Ok(ShimEnd { said: Some(status), recorded: true }) => {
                return Ended { status: Some(status), allocation_ended: false, note: None };
            }
            Ok(end) => end.said,
            Err(e) => {
                tracing::error!("cannot wait for the shim of attempt {attempt}: {e}");
                None
            }
        };
        let dir = self.dir;
        let recorded = crate::blocking::run("reading the exit record", FILE_DEADLINE, move || {
            shim::read_exit(&dir, attempt).map(|e| e.status())
        })
        .await
        .ok()
        .flatten();
        match (recorded, said) {
            (None, Some(_)) => {
                tracing::warn!(
                    "the shim of attempt {attempt} wrote no exit record; its pipe said how the trainer ended"
                )
            }
            (None, None) => tracing::warn!("the shim of attempt {attempt} ended without an exit record"),
            _ => {}
        }
        Ended { status: recorded.or(said), allocation_ended: false, note: None }
    }
}

/// Starts attempt `launch.attempt` under a new shim, which starts the trainer as the leader of its own
/// process group, with the protocol's environment and its output appended to the job's log files.
/// The previous attempt's progress file and shim files are removed first, so nothing it wrote is
/// mistaken for this one's heartbeat or exit.
pub async fn start(spec: &JobSpec, launch: &Launch<'_>) -> io::Result<Started> {
    let switch = crate::job::prepare(spec, launch)?;
    shim::clear(&launch.paths.dir)?;
    let stderr = crate::untrusted::open_append(&launch.paths.stderr).map_err(io::Error::other)?;
    let mut cmd = tokio::process::Command::new(launch.shim);
    // The built-in shim's path is /proc/self/fd/N: what `ps` shows is its name.
    cmd.arg0("trainerd-shim");
    let workdir = if spec.workdir.as_os_str().is_empty() { &launch.paths.trainer } else { &spec.workdir };
    cmd.current_dir(workdir).stderr(stderr);
    crate::job::trainer_env(spec, launch, switch, cmd.as_std_mut());
    if let Some(gpus) = launch.gpus {
        let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
        cmd.env("CUDA_VISIBLE_DEVICES", list.join(","));
    }
    let command: Vec<String> = spec.command.iter().chain(launch.extra_args).cloned().collect();
    let started = shim::start(cmd, &launch.paths.dir, launch.attempt, &launch.paths.stdout, switch, &command).await?;
    let identity = started.identity;
    Ok(Started {
        running: Running::Local(Local {
            shim: Some(identity),
            pgid: identity.trainer_pid,
            dir: launch.paths.dir.clone(),
            attempt: launch.attempt,
        }),
        end: End::Local(EndOf {
            waiter: Waiter::Child(Box::new((started.shim, started.report))),
            dir: launch.paths.dir.clone(),
            attempt: launch.attempt,
        }),
    })
}

/// Finds a local attempt again: its shim still runs (pid and start time, from `shim.json`), or it is
/// gone (with its trainer possibly left running, orphaned), or it cannot be told.
pub fn adopt(paths: &JobPaths, attempt: &Attempt) -> Adopted {
    let identity = shim::read_identity(&paths.dir, attempt.number);
    let trainer =
        identity.and_then(|i| i.trainer_pid.zip(i.trainer_start_ticks)).or(attempt.pid.zip(attempt.pid_start_ticks));
    let pgid = trainer.map(|(pid, _)| pid);
    match identity.map(|i| (i, shim::adopt(&i))) {
        Some((identity, Found::Alive(waiter))) => {
            let what = format!(
                "shim {}, trainer {}",
                identity.shim_pid,
                pgid.map_or("not started yet".into(), |p| p.to_string())
            );
            Adopted::Alive {
                running: Running::Local(Local {
                    shim: Some(identity),
                    pgid,
                    dir: paths.dir.clone(),
                    attempt: attempt.number,
                }),
                end: End::Local(EndOf { waiter, dir: paths.dir.clone(), attempt: attempt.number }),
                what,
            }
        }
        Some((_, Found::Unknown(e))) => Adopted::Unknown(format!("cannot tell whether its shim runs: {e}")),
        Some((_, Found::Gone)) | None => {
            let orphan = trainer.filter(|(pid, ticks)| shim::is_alive(*pid, *ticks) == Some(true));
            Adopted::Gone {
                orphan: orphan.map(|(pid, _)| {
                    Running::Local(Local {
                        shim: None,
                        pgid: Some(pid),
                        dir: paths.dir.clone(),
                        attempt: attempt.number,
                    })
                }),
            }
        }
    }
}

impl Local {
    /// The attempt's end when its shim is gone without the end having been reported (a lost
    /// notification): the exit record it left, if any. `None` while the shim runs, or when that
    /// cannot be told.
    pub async fn ended_unreported(&self) -> Option<Ended> {
        let identity = self.shim?;
        if shim::is_alive(identity.shim_pid, identity.shim_start_ticks) != Some(false) {
            return None;
        }
        let (dir, attempt) = (self.dir.clone(), self.attempt);
        let status = crate::blocking::run("reading the exit record", FILE_DEADLINE, move || {
            shim::read_exit(&dir, attempt).map(|e| e.status())
        })
        .await
        .ok()
        .flatten();
        Some(Ended { status, allocation_ended: false, note: None })
    }

    /// SIGUSR1 to every process of the job that handles it: the trainer, and each rank a launcher
    /// started (in its group or in sessions of its own); never to a launcher or helper that would die
    /// of it (docs/trainer-protocol.md, "Multi-process jobs").
    pub fn pause(&self) -> io::Result<Vec<u32>> {
        let Some(pid) = self.pgid else { return Ok(Vec::new()) };
        match self.shim {
            Some(identity) => process::signal_catchers(identity.shim_pid, libc::SIGUSR1, None),
            None => {
                // SAFETY: kill(2) on the trainer we started; its pid is ours until we reap it.
                if unsafe { libc::kill(pid as i32, libc::SIGUSR1) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(vec![pid])
            }
        }
    }

    /// SIGTERM to the trainer's group, and to the ranks a launcher started in sessions of their own
    /// that handle it.
    pub fn terminate(&self) -> io::Result<()> {
        let Some(pgid) = self.pgid else { return Ok(()) };
        process::signal_group(pgid, libc::SIGTERM)?;
        if let Some(identity) = self.shim {
            if let Err(e) = process::signal_catchers(identity.shim_pid, libc::SIGTERM, Some(pgid)) {
                tracing::warn!("cannot list the job's processes: {e}");
            }
        }
        Ok(())
    }

    /// SIGKILL to the group and to every descendant of the shim (workers a launcher started in
    /// sessions of their own, torchrun's).
    pub fn kill(&self) -> io::Result<String> {
        let Some(pgid) = self.pgid else { return Ok("nothing to kill".into()) };
        process::signal_group(pgid, libc::SIGKILL)?;
        if let Some(identity) = self.shim {
            if let Err(e) = process::kill_descendants(identity.shim_pid) {
                tracing::warn!("cannot list the job's processes: {e}");
            }
        }
        Ok(format!("stop grace over: SIGKILL to process group {pgid}"))
    }

    /// SIGKILLs what is left of the attempt's process group and waits (at most 5 s) until no live
    /// member is left: none may outlive the attempt. Failures are reported, not raised: the end must
    /// still be recorded.
    pub async fn drain(&self) -> Option<String> {
        let pgid = self.pgid?;
        if let Err(e) = process::signal_group(pgid, libc::SIGKILL) {
            tracing::error!("cannot signal process group {pgid}: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match process::live_group_members(pgid) {
                Ok(left) if left.is_empty() => return None,
                Ok(left) if Instant::now() >= deadline => {
                    return Some(format!("processes {left:?} of group {pgid} survived SIGKILL"))
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => {
                    tracing::error!("cannot list process group {pgid}: {e}");
                    return None;
                }
            }
        }
    }
}
