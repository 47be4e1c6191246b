//! The executor seam: where an attempt runs, and the one interface through which the JobActor
//! starts it, learns its end, signals it, stops it and finds it again. The actor never knows which
//! executor runs an attempt.
//!
//! - [`local`]: on this host, under a `trainerd-shim` (the trainer's parent, in a session of its own,
//!   so trainers outlive trainerd); the end from the kernel (child wait, or a pidfd).
//! - [`slurm`]: one Slurm job per attempt (`sbatch`), the ranks launched by `srun`; the end from the
//!   exit record the batch script writes on the shared file system, and from Slurm's own word.
//! - [`shim`]: the local shim's files, its start handshake, and waiting for its end.
//!
//! An attempt's handle ([`Handle`]) is stored in its record, written before the attempt is acted on:
//! for Slurm the intent (the job's name) before `sbatch`, so a trainerd that dies before it learns the
//! Slurm id finds the job by its name instead of submitting a second one.

pub mod local;
pub mod shim;
pub mod slurm;

use super::{JobPaths, Launch};
use crate::store::records::{Attempt, ExitStatus, Handle, JobSpec};
use std::io;

/// A live attempt as its executor knows it.
pub enum Running {
    Local(local::Local),
    Slurm(slurm::SlurmJob),
}

/// What a start gives back: the attempt, and the future of its end.
pub struct Started {
    pub running: Running,
    pub end: End,
}

/// The end of an attempt, to be awaited in a task of its own.
pub enum End {
    Local(local::EndOf),
    Slurm(slurm::EndOf),
}

/// How an attempt ended, as its executor saw it.
pub struct Ended {
    /// The trainer's exit status; `None` when it could not be observed (the attempt is then `lost`).
    pub status: Option<ExitStatus>,
    /// The executor took the allocation back (a Slurm time limit, preemption or node failure).
    pub allocation_ended: bool,
    /// What the executor has to say about it (Slurm's state when it ended the attempt), for the event
    /// log.
    pub note: Option<String>,
}

impl End {
    /// Waits for the attempt's end.
    pub async fn wait(self) -> Ended {
        match self {
            End::Local(end) => end.wait().await,
            End::Slurm(end) => end.wait().await,
        }
    }
}

/// What became of an attempt that no actor of this trainerd watched (at start-up, or after an actor
/// was re-created).
pub enum Adopted {
    /// It still runs: its end is awaited again.
    Alive { running: Running, end: End, what: String },
    /// It is over. `orphan`: a process of it that still runs unwatched and must be stopped.
    Gone { orphan: Option<Running> },
    /// Whether it runs cannot be told now (a /proc, pidfd or Slurm error): not known to be dead.
    Unknown(String),
}

/// What an executor needs beyond the attempt: the daemon-wide Slurm client, when Slurm is configured.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub slurm: &'a slurm::Cluster,
}

/// The handle a new attempt of `spec` gets before it starts (its intent): for Slurm, the job name.
pub fn intent(spec: &JobSpec, launch_id: crate::store::records::JobId, attempt: u32) -> Option<Handle> {
    spec.more.slurm.as_ref().map(|_| Handle::Slurm { name: slurm::job_name(launch_id, attempt), job_id: None })
}

/// Starts attempt `launch.attempt` of `spec` with its executor.
pub async fn start(ctx: Context<'_>, spec: &JobSpec, launch: &Launch<'_>) -> io::Result<Started> {
    match &spec.more.slurm {
        None => local::start(spec, launch).await,
        Some(slurm) => slurm::start(ctx.slurm, spec, slurm, launch).await,
    }
}

/// Finds attempt `attempt` again: still running, over, or unknown.
pub async fn adopt(ctx: Context<'_>, paths: &JobPaths, attempt: &Attempt) -> Adopted {
    match &attempt.more.handle {
        Some(Handle::Slurm { name, job_id }) => slurm::adopt(ctx.slurm, paths, attempt.number, name, *job_id).await,
        _ => local::adopt(paths, attempt),
    }
}

/// An attempt's end as its exit record tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: ExitStatus,
    /// The allocation's time limit stopped it (Slurm's warning reached the batch script).
    pub allocation_ended: bool,
}

/// Attempt `attempt`'s exit record, if its executor left one (blocking: run it on a lane).
pub fn read_exit(paths: &JobPaths, attempt: &Attempt) -> Option<Exit> {
    match &attempt.more.handle {
        Some(Handle::Slurm { .. }) => slurm::read_exit(paths, attempt.number),
        _ => shim::read_exit(&paths.dir, attempt.number).map(|e| Exit { status: e.status(), allocation_ended: false }),
    }
}

/// How a signal reached the attempt.
pub enum Delivered {
    /// To these processes (none: no process of the job handles it).
    Processes(Vec<u32>),
    /// Handed to the executor (Slurm signals the job's steps itself).
    Executor,
}

impl Running {
    /// Whether the trainer was started (a local shim may run before its trainer does).
    pub fn started(&self) -> bool {
        match self {
            Running::Local(l) => l.pgid.is_some(),
            Running::Slurm(_) => true,
        }
    }

    /// The trainer's pid on this host, for clients.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Running::Local(l) => l.pgid,
            Running::Slurm(_) => None,
        }
    }

    /// The handle stored in the attempt's record.
    pub fn handle(&self) -> Option<Handle> {
        match self {
            Running::Local(l) => {
                l.shim.map(|i| Handle::Local { shim_pid: i.shim_pid, shim_start_ticks: i.shim_start_ticks })
            }
            Running::Slurm(s) => Some(s.handle()),
        }
    }

    /// SIGUSR1 (the pause) to every process of the job that handles it.
    pub fn pause(&self) -> io::Result<Delivered> {
        match self {
            Running::Local(l) => l.pause().map(Delivered::Processes),
            Running::Slurm(s) => s.signal("USR1").map(|()| Delivered::Executor),
        }
    }

    /// SIGTERM: the trainer checkpoints and exits.
    pub fn terminate(&self) -> io::Result<()> {
        match self {
            Running::Local(l) => l.terminate(),
            Running::Slurm(s) => s.signal("TERM"),
        }
    }

    /// SIGKILL to everything of the attempt; returns what was done, for the event log.
    pub fn kill(&self) -> io::Result<String> {
        match self {
            Running::Local(l) => l.kill(),
            Running::Slurm(s) => s.kill(),
        }
    }

    /// After the attempt's end: makes sure nothing of it is left; returns a line for the event log
    /// when something survived.
    pub async fn drain(&self) -> Option<String> {
        match self {
            Running::Local(l) => l.drain().await,
            Running::Slurm(s) => s.drain().await,
        }
    }

    /// The attempt's end, when the executor knows it ended and the end may not have reached the actor
    /// (reconciliation's repair of a lost notification); `None` while it runs or when unsure.
    pub async fn ended_unreported(&self) -> Option<Ended> {
        match self {
            Running::Local(l) => l.ended_unreported().await,
            Running::Slurm(s) => s.ended_unreported().await,
        }
    }

    /// What the executor says the attempt is waiting for before its trainer starts (Slurm's reason
    /// for a pending job); `None` once it runs.
    pub fn waiting_for(&self) -> Option<String> {
        match self {
            Running::Local(_) => None,
            Running::Slurm(s) => s.waiting_for(),
        }
    }

    /// How often the progress file must be read on a timer (a network file system's writes from
    /// other nodes raise no inotify event here); `None`: inotify sees every write.
    pub fn poll_progress(&self) -> Option<std::time::Duration> {
        match self {
            Running::Local(_) => None,
            Running::Slurm(s) => Some(s.poll_interval()),
        }
    }
}

/// A signal number's conventional exit code from a shell (128 + N) as a status.
pub fn shell_status(code: i32) -> ExitStatus {
    if (129..=128 + 64).contains(&code) {
        ExitStatus::Signal(code - 128)
    } else {
        ExitStatus::Code(code)
    }
}
