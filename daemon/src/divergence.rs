//! What `trainctl health` counts as divergent and `trainctl reconcile` repairs, defined once so the
//! two agree: a record that claims a process (starting, running, pausing, stopping) whose trainer or
//! shim is gone, and a finished or paused job with a process of it still alive. Reads only what the
//! kernel and the shim's records say; decides nothing and fixes nothing but [`Leftovers::stop`].

use crate::job::shim;
use crate::job::JobPaths;
use crate::process;
use crate::store::records::JobRecord;
use std::path::Path;
use trainerd_proto::state::{has_process, is_terminal};
use trainerd_proto::v1::JobState;

/// How a record and reality disagree.
#[derive(Debug)]
pub enum Divergence {
    /// The record claims a process, and the trainer or its shim is gone (what, in words).
    Gone(String),
    /// The job is finished or paused, and these processes of it still run.
    Leftover(Leftovers),
}

/// Whether `record` disagrees with reality, and how.
pub fn of(record: &JobRecord, state_dir: &Path) -> Option<Divergence> {
    let state = record.state();
    if is_terminal(state) || state == JobState::Paused {
        let left = Leftovers::of(record, state_dir);
        return (left.trainer.is_some() || left.shim.is_some()).then_some(Divergence::Leftover(left));
    }
    if !has_process(state) {
        return None;
    }
    let attempt = record.attempts.last()?;
    match (attempt.pid, attempt.pid_start_ticks) {
        (Some(pid), Some(ticks)) if shim::is_alive(pid, ticks) == Some(false) => {
            return Some(Divergence::Gone(format!("trainer {pid} is gone")));
        }
        // Starting: the pid is recorded right after the spawn.
        (None, _) | (_, None) if state != JobState::Starting => {
            return Some(Divergence::Gone("no trainer is recorded".into()));
        }
        _ => {}
    }
    let dir = JobPaths::new(state_dir, record.id).dir;
    let identity = shim::read_identity(&dir, attempt.number)?;
    (shim::is_alive(identity.shim_pid, identity.shim_start_ticks) == Some(false))
        .then(|| Divergence::Gone(format!("shim {} is gone", identity.shim_pid)))
}

/// The processes of `record`'s last attempt that are still alive and still the same processes (pid
/// and start time). For a finished or paused job, both should be `None`.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub trainer: Option<u32>,
    pub shim: Option<u32>,
}

impl Leftovers {
    pub fn of(record: &JobRecord, state_dir: &std::path::Path) -> Leftovers {
        let Some(attempt) = record.attempts.last() else { return Leftovers::default() };
        // An attempt with a recorded end had its shim's exit seen, and a shim exits only after every
        // process of the attempt is reaped: only an unended attempt can have left a shim.
        let identity = match attempt.ended_at {
            Some(_) => None,
            None => shim::read_identity(&crate::job::JobPaths::new(state_dir, record.id).dir, attempt.number),
        };
        let trainer = attempt
            .pid
            .zip(attempt.pid_start_ticks)
            .or(identity.and_then(|i| i.trainer_pid.zip(i.trainer_start_ticks)))
            .filter(|(pid, ticks)| shim::is_alive(*pid, *ticks) == Some(true));
        let shim = identity.filter(|i| shim::is_alive(i.shim_pid, i.shim_start_ticks) == Some(true));
        Leftovers { trainer: trainer.map(|(pid, _)| pid), shim: shim.map(|i| i.shim_pid) }
    }

    /// SIGKILLs the trainer's group (its shim then exits by itself), or a shim left without one.
    /// Returns what was found, in words, or None when nothing was.
    pub fn stop(&self) -> Option<String> {
        match (self.trainer, self.shim) {
            (Some(trainer), shim) => {
                let _ = process::signal_group(trainer, libc::SIGKILL);
                Some(shim.map_or(format!("trainer {trainer}"), |s| format!("trainer {trainer} and shim {s}")))
            }
            (None, Some(shim)) => {
                // SAFETY: kill(2); the pid was just identified by its start time.
                unsafe { libc::kill(shim as i32, libc::SIGKILL) };
                Some(format!("shim {shim}"))
            }
            (None, None) => None,
        }
    }
}
