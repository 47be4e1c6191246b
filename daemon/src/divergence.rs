//! What `trainctl health` counts as divergent and `trainctl reconcile` repairs, defined once so the
//! two agree: a record that claims a process (starting, running, pausing, stopping) whose trainer or
//! shim is gone, and a finished or paused job with a process of it still alive. Reads only what the
//! kernel and the shim's records say; decides nothing and fixes nothing but [`Leftovers::stop`].

use crate::job::executor::shim;
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

/// Whether `record`'s attempts run off this host (under Slurm): their processes are not this host's
/// to look at; the job's actor checks them with Slurm (see `job::executor`).
fn runs_elsewhere(record: &JobRecord) -> bool {
    record.spec.more.slurm.is_some()
}

/// Whether `record` disagrees with reality, and how.
pub fn of(record: &JobRecord, state_dir: &Path) -> Option<Divergence> {
    let state = record.state();
    if is_terminal(state) || state == JobState::Paused {
        let left = Leftovers::of(record, state_dir);
        return (left.trainer.is_some() || left.shim.is_some()).then_some(Divergence::Leftover(left));
    }
    if !has_process(state) || runs_elsewhere(record) {
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
        let Some(attempt) = record.attempts.last().filter(|_| !runs_elsewhere(record)) else {
            return Leftovers::default();
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::*;
    use trainerd_proto::v1::Reason;

    fn record(state: JobState, pid: Option<(u32, u64)>, ended: bool) -> JobRecord {
        let attempt = Attempt {
            number: 1,
            pid: pid.map(|p| p.0),
            pid_start_ticks: pid.map(|p| p.1),
            started_at: 1.0,
            ended_at: ended.then_some(2.0),
            exit: None,
            reason: Reason::Unspecified as i32,
            resumed_from: None,
            resumed_step: None,
            first_step: None,
            resume_ignored: false,
            more: AttemptMore::default(),
        };
        JobRecord {
            id: JobId(7),
            spec: JobSpec {
                name: "j".into(),
                command: vec!["x".into()],
                workdir: Default::default(),
                env: vec![],
                gpus: 0,
                priority: 0,
                idempotency_key: None,
                restart: RestartPolicy {
                    on_failure: OnFailure::Restart,
                    max_restarts: 1,
                    window_ms: 1,
                    backoff_base_ms: 1,
                    backoff_max_ms: 1,
                    healthy_after_ms: 1,
                },
                timeouts: Timeouts {
                    startup_grace_ms: 1,
                    heartbeat_timeout_ms: 1,
                    stop_grace_ms: 1,
                    pause_timeout_ms: 1,
                },
                protocol: Protocol::Auto,
                idle_timeout_ms: None,
                progress_regex: None,
                resume_rule: None,
                more: Default::default(),
            },
            state: state as i32,
            reason: 0,
            created_at: 1.0,
            updated_at: 1.0,
            attempts: vec![attempt],
            restart_times: vec![],
            consecutive_failures: 0,
            next_restart_at: None,
            latest_checkpoint: None,
            previous_checkpoint: None,
            step: 0,
            total_steps: 0,
            epoch: 0,
            total_epochs: 0,
            loss: None,
            val_loss: None,
            exit_code: None,
            weights_sha256: None,
            cancelled_by: None,
            message: None,
            run_as: None,
            restarts_exhausted: false,
        }
    }

    fn shim_json(state_dir: &Path, shim: u32, ticks: u64) {
        let dir = JobPaths::new(state_dir, JobId(7)).dir;
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            r#"{{"format":1,"attempt":1,"shim_pid":{shim},"shim_start_ticks":{ticks},"trainer_pid":null,"trainer_start_ticks":null}}"#
        );
        std::fs::write(dir.join(shim::IDENTITY_NAME), text).unwrap();
    }

    #[test]
    fn a_record_agrees_with_live_processes_and_diverges_from_dead_or_recycled_ones() {
        let dir = tempfile::tempdir().unwrap();
        // A trainer leads its own process group, as under a shim.
        use std::os::unix::process::CommandExt;
        let mut trainer = std::process::Command::new("sleep").arg("1000").process_group(0).spawn().unwrap();
        let mut shim = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let t = (trainer.id(), process::start_ticks(trainer.id()).unwrap());
        let s = (shim.id(), process::start_ticks(shim.id()).unwrap());
        shim_json(dir.path(), s.0, s.1);
        let running = record(JobState::Running, Some(t), false);
        assert!(of(&running, dir.path()).is_none(), "trainer and shim alive: no divergence");
        assert!(of(&record(JobState::Starting, None, false), dir.path()).is_none(), "starting: no pid yet");
        let no_pid = of(&record(JobState::Running, None, false), dir.path());
        assert!(matches!(no_pid, Some(Divergence::Gone(ref w)) if w == "no trainer is recorded"), "{no_pid:?}");
        let recycled = of(&record(JobState::Running, Some((t.0, t.1 + 1)), false), dir.path());
        assert!(matches!(recycled, Some(Divergence::Gone(ref w)) if w == &format!("trainer {} is gone", t.0)));
        for finished in [JobState::Completed, JobState::Failed, JobState::Cancelled, JobState::Paused] {
            let left = of(&record(finished, Some(t), false), dir.path());
            let Some(Divergence::Leftover(left)) = left else { panic!("{finished:?}: {left:?}") };
            assert_eq!((left.trainer, left.shim), (Some(t.0), Some(s.0)), "{finished:?}");
            // An ended attempt's shim exited after reaping everything: only its trainer is looked at.
            let Some(Divergence::Leftover(left)) = of(&record(finished, Some(t), true), dir.path()) else { panic!() };
            assert_eq!((left.trainer, left.shim), (Some(t.0), None));
        }
        assert!(of(&record(JobState::Queued, None, false), dir.path()).is_none());

        shim.kill().unwrap();
        shim.wait().unwrap();
        let gone = of(&running, dir.path());
        assert!(matches!(gone, Some(Divergence::Gone(ref w)) if w == &format!("shim {} is gone", s.0)), "{gone:?}");
        let Some(Divergence::Leftover(left)) = of(&record(JobState::Completed, Some(t), false), dir.path()) else {
            panic!()
        };
        assert_eq!((left.trainer, left.shim), (Some(t.0), None));
        assert_eq!(left.stop(), Some(format!("trainer {}", t.0)));
        trainer.wait().unwrap();
        assert!(matches!(of(&running, dir.path()), Some(Divergence::Gone(_))));
        assert!(of(&record(JobState::Completed, Some(t), false), dir.path()).is_none(), "nothing left");
        assert_eq!(Leftovers::default().stop(), None);
    }
}
