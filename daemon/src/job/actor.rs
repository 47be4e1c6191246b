//! The JobActor: owns one job's trainer process while the job is active (starting, running, backing
//! off, stopping). Child of the Supervisor, which spawns it when the job is admitted and re-creates
//! it from the stored record if it panics.
//!
//! Every wait is a message: the attempt's end comes from a task that awaits its shim (tokio's child
//! wait, or a pidfd for a shim a previous trainerd started; both from the kernel) and reaches us
//! through the Supervisor; progress comes from the notify watcher; deadlines come from `send_after`.
//! No handler awaits anything unbounded.
//!
//! A job found at start-up with a process recorded (Mode::Restored) is re-adopted when its shim still
//! runs, with the stall clock taken from the progress file; when the shim is gone, its exit record
//! decides exactly as if we had been watching, and without one the attempt is `lost`.

use super::shim::{self, Found, Identity, Waiter};
use super::{cap_log, read_progress, spawn, JobPaths, Launch, ReadError};
use crate::api::ApiError;
use crate::config::ShutdownPolicy;
use crate::hub::{job_view, LiveFacts};
use crate::policy::{self, AttemptEnd, Decision, History, StopCause};
use crate::process;
use crate::store::records::{Attempt, ExitStatus, JobId, JobRecord};
use crate::supervisor::{Shared, SupervisorMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use trainerd_proto::state::{has_process, is_terminal};
use trainerd_proto::trainer::unix_now;
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::{JobState, Reason};

/// Messages to a JobActor.
pub enum JobMsg {
    /// Start an attempt: the job was admitted, or its backoff ended.
    Start,
    /// Attempt `attempt`'s process ended; `None` when its end could not be observed (lost).
    Exited { attempt: u32, status: Option<ExitStatus>, at: Option<Instant> },
    /// The job directory saw a new progress file.
    ProgressChanged,
    /// A heartbeat deadline may have passed (stale generations are ignored).
    Tick { generation: u64 },
    /// The stop grace ran out: SIGKILL the group if attempt `attempt` still runs.
    Kill { attempt: u32 },
    /// The backoff is over (stale generations are ignored).
    BackoffOver { generation: u64 },
    /// A user cancels the job; the reply comes once no process of the job is left.
    Cancel { by: String, reply: RpcReplyPort<Result<pb::Job, ApiError>> },
    /// A user pauses the job; the reply comes at once (PAUSING, or PAUSED when nothing runs).
    Pause { by: String, reply: RpcReplyPort<Result<pb::Job, ApiError>> },
    /// The pause of attempt `attempt` took longer than `pause_timeout`.
    PauseTimeout { attempt: u32 },
    /// Reconciliation: check the record against the process and the progress file, fix what
    /// disagrees, and reply with one line per fix.
    Check { reply: RpcReplyPort<Vec<String>> },
    /// trainerd is stopping under this policy.
    Shutdown { policy: ShutdownPolicy },
}

/// How the actor comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Admitted from the queue, or a backoff found at startup.
    Admitted,
    /// Re-created after a panic: a running process is still ours and its wait task still reports.
    Recreated,
    /// Found in a state with a process that no actor of this trainerd watches (at start-up, or by
    /// reconciliation): adopt its shim, or resolve the attempt from what the shim left.
    Restored,
}

/// Spawn arguments.
pub struct JobArgs {
    pub id: JobId,
    pub shared: Arc<Shared>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub mode: Mode,
    /// The GPUs the Supervisor assigned (CUDA_VISIBLE_DEVICES).
    pub gpus: Vec<u32>,
}

/// The actor (configuration only; everything else is in [`State`]).
pub struct JobActor;

/// The actor's state.
pub struct State {
    id: JobId,
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    paths: JobPaths,
    record: JobRecord,
    live: LiveFacts,
    /// The process group of the running attempt (the trainer's pid).
    pgid: Option<u32>,
    /// The running attempt's shim, when known.
    identity: Option<Identity>,
    /// An attempt is in flight: its end has not been handled yet.
    awaiting_exit: bool,
    /// Adoption could not tell whether the shim lives (a /proc or pidfd error): reconciliation retries.
    unadopted: bool,
    attempt_started: Instant,
    /// The last heartbeat: its sequence number and when we saw it.
    last_beat: Option<(u64, Instant)>,
    stop_cause: Option<StopCause>,
    cancelled_by: Option<String>,
    cancel_replies: Vec<RpcReplyPort<Result<pb::Job, ApiError>>>,
    tick_generation: u64,
    backoff_generation: u64,
    last_invalid: Option<String>,
    /// A pause asked for while the trainer had not heartbeated yet: SIGUSR1 goes at the first beat
    /// (before it, the trainer may not handle the signal, and its default action kills).
    pause_unsignalled: bool,
    /// When the kernel reported the exit being handled: the exit-detection metric ends at the
    /// transition that records it.
    exit_seen_at: Option<Instant>,
    /// When the log sizes were last checked, their sizes then, and when to check next.
    logs_checked: Instant,
    log_sizes: [u64; 2],
    logs_every: Duration,
    _watcher: Option<super::watch::WatchGuard>,
    /// Set by the watcher when it sends `ProgressChanged`, cleared when the actor reads the file: one
    /// rename raises two or three inotify events, and a burst of them needs one read, not three.
    progress_pending: Arc<AtomicBool>,
}

/// The longest wait between two looks at a job's log sizes.
const LOGS_EVERY_MAX: Duration = Duration::from_secs(10);

fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl Actor for JobActor {
    type Msg = JobMsg;
    type State = State;
    type Arguments = JobArgs;

    async fn pre_start(&self, myself: ActorRef<JobMsg>, args: JobArgs) -> Result<State, ActorProcessingErr> {
        let record = args.shared.store.get(args.id)?.ok_or_else(|| format!("job {} is not in the store", args.id))?;
        let paths = JobPaths::new(&args.shared.config().state_dir, args.id);
        std::fs::create_dir_all(&paths.trainer)?;
        let me = myself.clone();
        let progress_pending = Arc::new(AtomicBool::new(false));
        let pending = progress_pending.clone();
        let watcher = match args.shared.progress_watch.watch(&paths.trainer, move || {
            if !pending.swap(true, Ordering::AcqRel) {
                let _ = me.cast(JobMsg::ProgressChanged);
            }
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                // Without inotify the heartbeat deadline's re-read still sees progress, only later.
                tracing::warn!(job = %args.id, "cannot watch {}: {e}", paths.trainer.display());
                None
            }
        };
        let pid = record.attempts.last().and_then(|a| a.pid);
        let mut state = State {
            id: args.id,
            shared: args.shared,
            supervisor: args.supervisor,
            paths,
            record,
            live: LiveFacts { gpus: args.gpus, ..LiveFacts::default() },
            pgid: None,
            identity: None,
            awaiting_exit: false,
            unadopted: false,
            attempt_started: Instant::now(),
            last_beat: None,
            stop_cause: None,
            cancelled_by: None,
            cancel_replies: Vec::new(),
            tick_generation: 0,
            backoff_generation: 0,
            last_invalid: None,
            pause_unsignalled: false,
            exit_seen_at: None,
            logs_checked: Instant::now(),
            log_sizes: [0; 2],
            logs_every: Duration::from_secs(1),
            _watcher: watcher,
            progress_pending,
        };
        let job_state = state.record.state();
        match args.mode {
            Mode::Recreated if has_process(job_state) => {
                state.pgid = pid;
                state.live.pid = pid;
                state.awaiting_exit = true;
                state.identity = shim::read_identity(&state.paths.dir, state.current_attempt());
                myself.cast(JobMsg::ProgressChanged)?;
                state.arm_tick(&myself, ms(1));
            }
            Mode::Restored if has_process(job_state) => state.restore(&myself)?,
            _ if job_state == JobState::Backoff => {
                let wait = state.record.next_restart_at.map(|t| (t - unix_now()).max(0.0)).unwrap_or(0.0);
                state.arm_backoff(&myself, Duration::from_secs_f64(wait));
            }
            _ => {}
        }
        state.publish("snapshot");
        Ok(state)
    }

    async fn handle(&self, myself: ActorRef<JobMsg>, msg: JobMsg, state: &mut State) -> Result<(), ActorProcessingErr> {
        let span = tracing::info_span!("job", id = %state.id);
        state.dispatch(myself, msg).instrument(span).await
    }
}

impl State {
    async fn dispatch(&mut self, myself: ActorRef<JobMsg>, msg: JobMsg) -> Result<(), ActorProcessingErr> {
        let state = self;
        match msg {
            JobMsg::Start => state.start(&myself).await?,
            JobMsg::ProgressChanged => {
                // Cleared before the read: an event after this point sends a new message.
                state.progress_pending.store(false, Ordering::Release);
                state.progress_changed(&myself)?
            }
            JobMsg::Tick { generation } if generation == state.tick_generation => state.tick(&myself)?,
            JobMsg::Tick { .. } => {}
            JobMsg::Kill { attempt } => {
                if state.current_attempt() == attempt {
                    if let Some(pgid) = state.pgid {
                        state.event("killed", format!("stop grace over: SIGKILL to process group {pgid}"));
                        process::signal_group(pgid, libc::SIGKILL)?;
                    }
                }
            }
            JobMsg::Exited { attempt, status, at } if attempt == state.current_attempt() && state.awaiting_exit => {
                state.exit_seen_at = at;
                state.exited(&myself, status).await?
            }
            JobMsg::Exited { .. } => {}
            JobMsg::BackoffOver { generation } => {
                if generation == state.backoff_generation && state.record.state() == JobState::Backoff {
                    state.start(&myself).await?;
                }
            }
            JobMsg::Cancel { by, reply } => state.cancel(&myself, by, reply)?,
            JobMsg::Pause { by, reply } => {
                let result = state.pause(&myself, &by)?;
                let _ = reply.send(result);
            }
            JobMsg::Check { reply } => {
                let fixes = state.check(&myself).await?;
                let _ = reply.send(fixes);
            }
            JobMsg::Shutdown { policy } => state.shutdown(&myself, policy)?,
            JobMsg::PauseTimeout { attempt } => {
                if attempt == state.current_attempt() && state.record.state() == JobState::Pausing {
                    let message = format!(
                        "the pause took longer than pause_timeout ({} s): stopping the trainer; the job will be \
                         paused at its latest checkpoint",
                        state.record.spec.timeouts.pause_timeout_ms / 1000
                    );
                    state.event("pause_timeout", message.clone());
                    state.stop(&myself, StopCause::PauseTimeout, &message)?;
                }
            }
        }
        Ok(())
    }

    fn current_attempt(&self) -> u32 {
        self.record.attempts.last().map(|a| a.number).unwrap_or(0)
    }

    fn view(&self) -> pb::Job {
        job_view(&self.record, &self.live, (0, String::new()))
    }

    fn publish(&self, kind: &str) {
        self.shared.hub.publish(self.view(), kind);
    }

    fn event(&self, kind: &str, message: String) {
        tracing::info!(job = %self.id, kind, "{message}");
        let event = crate::store::records::Event { at: unix_now(), kind: kind.into(), message };
        if let Err(e) = self.shared.store.append_event(self.id, &event) {
            tracing::error!(job = %self.id, "cannot record event: {e}");
        }
    }

    fn transition(
        &mut self,
        to: JobState,
        reason: Reason,
        message: &str,
        edit: impl Fn(&mut JobRecord),
    ) -> Result<(), ActorProcessingErr> {
        self.record = self.shared.store.transition(self.id, to, reason, unix_now(), message, edit)?;
        // Observed before the publish, so a client that sees the new state also sees it counted.
        if let Some(at) = self.exit_seen_at.take() {
            self.shared.metrics.exit_detection.observe(at.elapsed());
        }
        self.publish("state");
        Ok(())
    }

    fn arm_tick(&mut self, myself: &ActorRef<JobMsg>, after: Duration) {
        self.tick_generation += 1;
        let generation = self.tick_generation;
        myself.send_after(after, move || JobMsg::Tick { generation });
    }

    fn arm_backoff(&mut self, myself: &ActorRef<JobMsg>, after: Duration) {
        self.backoff_generation += 1;
        let generation = self.backoff_generation;
        myself.send_after(after, move || JobMsg::BackoffOver { generation });
    }

    /// The checkpoint to resume from: the latest, or the one before it when the latest is gone.
    /// Err when checkpoints were recorded but none is left: a job never silently restarts at step 0.
    fn resume_point(&self) -> Result<Option<PathBuf>, String> {
        let candidates = [&self.record.latest_checkpoint, &self.record.previous_checkpoint];
        let recorded: Vec<_> = candidates.iter().filter_map(|c| c.as_ref()).collect();
        if recorded.is_empty() {
            return Ok(None);
        }
        recorded.iter().map(|c| c.path.clone()).find(|p| p.exists()).map(Some).ok_or_else(|| {
            format!(
                "checkpoint {} is missing and no earlier one is left; refusing to restart from step 0",
                recorded[0].path.display()
            )
        })
    }

    async fn start(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        let resume = match self.resume_point() {
            Ok(r) => r,
            Err(message) => {
                self.transition(JobState::Starting, Reason::Unspecified, "", |_| {})?;
                return self.finish(myself, JobState::Failed, Reason::SpawnFailed, &message, |_| {});
            }
        };
        let number = self.current_attempt() + 1;
        let now = unix_now();
        let resumed_from = resume.clone();
        let message = match &resume {
            Some(p) => format!("attempt {number}, resuming from {}", p.display()),
            None => format!("attempt {number}"),
        };
        self.transition(JobState::Starting, Reason::Unspecified, &message, |r| {
            r.next_restart_at = None;
            r.attempts.push(Attempt {
                number,
                pid: None,
                pid_start_ticks: None,
                started_at: now,
                ended_at: None,
                exit: None,
                reason: Reason::Unspecified as i32,
                resumed_from: resumed_from.clone(),
            });
        })?;
        let launch = Launch {
            id: self.id,
            paths: &self.paths,
            attempt: number,
            resume_from: resume.as_deref(),
            heartbeat_interval: self.shared.config().heartbeat_interval,
            gpus: (!self.shared.config().gpus.is_empty()).then_some(self.live.gpus.as_slice()),
            stop_grace_ms: self.record.spec.timeouts.stop_grace_ms,
            shim: &self.shared.config().shim,
            run_as: self.record.run_as,
        };
        let started = match spawn(&self.record.spec, &launch).await {
            Ok(started) => {
                self.shared.metrics.starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                started
            }
            Err(e) => {
                let message = format!("cannot start {:?}: {e}", self.record.spec.command[0]);
                return self.finish(myself, JobState::Failed, Reason::SpawnFailed, &message, |r| {
                    if let Some(a) = r.attempts.last_mut() {
                        a.ended_at = Some(unix_now());
                        a.reason = Reason::SpawnFailed as i32;
                    }
                });
            }
        };
        let identity = started.identity;
        self.record_pids(&identity)?;
        self.pgid = identity.trainer_pid;
        self.identity = Some(identity);
        self.awaiting_exit = true;
        self.live = LiveFacts { pid: self.pgid, gpus: std::mem::take(&mut self.live.gpus), ..LiveFacts::default() };
        self.attempt_started = Instant::now();
        self.last_beat = None;
        self.last_invalid = None;
        self.watch_exit(Waiter::Child(started.shim), number);
        self.arm_tick(myself, ms(self.record.spec.timeouts.startup_grace_ms));
        self.publish("state");
        Ok(())
    }

    /// Stores the trainer's pid and start time in the attempt (for clients, and to identify it later).
    fn record_pids(&mut self, identity: &Identity) -> Result<(), ActorProcessingErr> {
        let Some(attempt) = self.record.attempts.last() else { return Ok(()) };
        if attempt.pid == identity.trainer_pid && attempt.pid_start_ticks == identity.trainer_start_ticks {
            return Ok(());
        }
        let (pid, ticks) = (identity.trainer_pid, identity.trainer_start_ticks);
        self.record = self.shared.store.update(self.id, |r| {
            if let Some(a) = r.attempts.last_mut() {
                a.pid = pid;
                a.pid_start_ticks = ticks;
            }
        })?;
        Ok(())
    }

    /// A task that waits for the shim's end and reports the attempt's exit record (None: the shim
    /// ended without one, so the attempt's end was not observed).
    fn watch_exit(&self, waiter: Waiter, attempt: u32) {
        let (id, supervisor, dir) = (self.id, self.supervisor.clone(), self.paths.dir.clone());
        tokio::spawn(async move {
            if let Err(e) = waiter.wait().await {
                tracing::error!(job = %id, "cannot wait for the shim of attempt {attempt}: {e}");
            }
            let at = Instant::now();
            let status = shim::read_exit(&dir, attempt).map(|e| e.status());
            if status.is_none() {
                tracing::warn!(job = %id, "the shim of attempt {attempt} ended without an exit record");
            }
            let _ = supervisor.cast(SupervisorMsg::Exited { id, attempt, status, at });
        });
    }

    /// Mode::Restored: adopt the attempt's shim if it still runs (pid and start time), else resolve
    /// the attempt from the exit record it left, else as `lost` (stopping a trainer left orphaned).
    fn restore(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        let Some(attempt) = self.record.attempts.last().cloned() else {
            // A process state with no attempt cannot be produced by this trainerd; resolve it as lost.
            self.awaiting_exit = true;
            myself.cast(JobMsg::Exited { attempt: 0, status: None, at: None })?;
            return Ok(());
        };
        self.awaiting_exit = true;
        self.unadopted = false;
        self.attempt_started = instant_at(attempt.started_at);
        let identity = shim::read_identity(&self.paths.dir, attempt.number);
        let trainer = identity
            .and_then(|i| i.trainer_pid.zip(i.trainer_start_ticks))
            .or(attempt.pid.zip(attempt.pid_start_ticks));
        self.pgid = trainer.map(|(pid, _)| pid);
        match identity.map(|i| (i, shim::adopt(&i))) {
            Some((identity, Found::Alive(waiter))) => {
                self.record_pids(&identity)?;
                self.identity = Some(identity);
                self.live.pid = self.pgid;
                self.shared.metrics.adopted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.watch_exit(waiter, attempt.number);
                self.event(
                    "adopted",
                    format!(
                        "re-adopted attempt {} (shim {}, trainer {})",
                        attempt.number,
                        identity.shim_pid,
                        self.pgid.map_or("not started yet".into(), |p| p.to_string())
                    ),
                );
                self.resume_clock();
                match self.record.state() {
                    JobState::Pausing if self.last_beat.is_some() => self.signal_pause(myself)?,
                    JobState::Pausing => self.pause_unsignalled = true,
                    JobState::Stopping => {
                        let cause = match self.record.reason() {
                            Reason::Cancelled => StopCause::Cancel,
                            Reason::Stalled => StopCause::Stall,
                            Reason::Shutdown => StopCause::Shutdown,
                            _ => StopCause::PauseTimeout,
                        };
                        self.cancelled_by = self.record.cancelled_by.clone();
                        self.stop(myself, cause, "")?;
                    }
                    _ => {}
                }
                self.arm_tick(myself, ms(1));
            }
            Some((_, Found::Unknown(e))) => {
                // Not known to be dead is not dead: keep the record as it is and try again later.
                self.unadopted = true;
                self.event("adopt_unknown", format!("cannot tell whether attempt {}'s shim runs: {e}", attempt.number));
            }
            Some((_, Found::Gone)) | None => match shim::read_exit(&self.paths.dir, attempt.number) {
                Some(exit) => {
                    self.pgid = None;
                    self.event(
                        "ended_unseen",
                        format!(
                            "attempt {} ended while trainerd was not watching ({}); handled now",
                            attempt.number,
                            describe_status(exit.status())
                        ),
                    );
                    myself.cast(JobMsg::Exited { attempt: attempt.number, status: Some(exit.status()), at: None })?;
                }
                None => {
                    let orphan = trainer.filter(|(pid, ticks)| shim::is_alive(*pid, *ticks) == Some(true));
                    self.pgid = orphan.map(|(pid, _)| pid);
                    let message = match orphan {
                        Some((pid, _)) => format!(
                            "the shim of attempt {} is gone without an exit record; its trainer {pid} runs \
                             unwatched and is stopped",
                            attempt.number
                        ),
                        None => format!("attempt {} and its shim vanished without an exit record", attempt.number),
                    };
                    self.event("lost", message);
                    myself.cast(JobMsg::Exited { attempt: attempt.number, status: None, at: None })?;
                }
            },
        }
        Ok(())
    }

    /// After adoption, the stall clock starts from the progress file's own time, not from our start:
    /// a trainer silent for an hour before trainerd restarted is an hour late now.
    /// A file that cannot be read now (corrupt, or replaced mid-way) still dates the last beat by its
    /// modification time, for a trainer past its first heartbeat: otherwise the start-up grace would
    /// apply again, and a hung trainer could hide behind a corrupt file for that long.
    fn resume_clock(&mut self) {
        match read_progress(&self.paths.progress) {
            Ok(progress) => {
                self.last_beat = Some((progress.heartbeat_seq, instant_at(progress.updated_at)));
                self.live.message = progress.message.clone();
                self.live.progress = Some(progress);
            }
            Err(_) if self.record.state() != JobState::Starting => {
                let modified = std::fs::metadata(&self.paths.progress)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64());
                // No sequence number was read: any valid file that comes next counts as a beat.
                self.last_beat = Some((u64::MAX, instant_at(modified.unwrap_or(self.record.updated_at))));
            }
            Err(_) => {}
        }
    }

    fn progress_changed(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        if !self.awaiting_exit {
            return Ok(());
        }
        let progress = match read_progress(&self.paths.progress) {
            Ok(p) => p,
            Err(ReadError::Missing) => return Ok(()),
            Err(e) => {
                let text = e.to_string();
                if self.last_invalid.as_deref() != Some(text.as_str()) {
                    tracing::warn!(job = %self.id, "{text}");
                    self.event("progress_invalid", format!("{text}; ignored, the last good progress stands"));
                    self.last_invalid = Some(text);
                }
                return Ok(());
            }
        };
        self.last_invalid = None;
        self.check_logs();
        let beat = self.last_beat.is_none_or(|(seq, _)| seq != progress.heartbeat_seq);
        if beat {
            let first = self.last_beat.is_none();
            self.last_beat = Some((progress.heartbeat_seq, Instant::now()));
            if first {
                // The pending deadline was startup_grace's; from now on the heartbeat timers apply.
                self.arm_tick(myself, ms(1));
            }
            if self.live.stalled {
                self.live.stalled = false;
                self.event("heartbeat_resumed", format!("heartbeat {} arrived", progress.heartbeat_seq));
            }
        }
        if let Some(checkpoint) = &progress.latest_checkpoint {
            if self.record.latest_checkpoint.as_ref().map(|c| &c.path) != Some(&checkpoint.path) {
                let c = checkpoint.clone();
                self.record = self.shared.store.update(self.id, |r| {
                    if r.latest_checkpoint.as_ref().map(|l| &l.path) != Some(&c.path) {
                        r.previous_checkpoint = r.latest_checkpoint.take();
                    }
                    r.latest_checkpoint = Some(c.clone());
                    r.step = c.step;
                    r.epoch = c.epoch;
                })?;
                self.event("checkpoint", format!("step {} at {}", checkpoint.step, checkpoint.path.display()));
            }
        }
        let step = progress.step;
        let written_at = progress.updated_at;
        self.live.message = progress.message.clone();
        self.live.progress = Some(progress);
        if self.record.state() == JobState::Starting && beat {
            self.transition(JobState::Running, Reason::Unspecified, "first heartbeat", |_| {})?;
        } else {
            self.publish("progress");
        }
        let lag = unix_now() - written_at;
        if lag.is_finite() && (0.0..3600.0).contains(&lag) {
            self.shared.metrics.progress_propagation.observe(Duration::from_secs_f64(lag));
        }
        if self.pause_unsignalled && beat {
            self.signal_pause(myself)?;
        }
        self.test_hook(step);
        Ok(())
    }

    /// With `--test-hooks`, a job whose env has TRAINERD_TEST_PANIC_AFTER_STEP=N panics its actor once
    /// when its progress reaches step N (a marker file makes it once per job, across re-creations).
    fn test_hook(&self, step: u64) {
        if !self.shared.config().test_hooks {
            return;
        }
        let at = self.record.spec.env.iter().find(|(k, _)| k == "TRAINERD_TEST_PANIC_AFTER_STEP");
        let marker = self.paths.dir.join("test-hook-panicked");
        if let Some(at) = at.and_then(|(_, v)| v.parse::<u64>().ok()) {
            if step >= at && !marker.exists() {
                let _ = std::fs::write(&marker, b"");
                panic!("test hook: job actor {} panics at step {step}", self.id);
            }
        }
    }

    fn tick(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        if self.pgid.is_none() || self.stop_cause.is_some() {
            return Ok(());
        }
        self.check_logs();
        let timeouts = self.record.spec.timeouts.clone();
        let silence = |s: &Self| s.last_beat.map(|(_, at)| at.elapsed()).unwrap_or(s.attempt_started.elapsed());
        let limit = |s: &Self| {
            if s.last_beat.is_some() {
                ms(timeouts.heartbeat_timeout_ms)
            } else {
                ms(timeouts.startup_grace_ms)
            }
        };
        if silence(self) >= limit(self) {
            // inotify events can be lost under load: read the file before accusing the trainer.
            self.progress_changed(myself)?;
            if silence(self) >= limit(self) {
                let what = if self.last_beat.is_some() { "heartbeat_timeout" } else { "startup_grace" };
                let message =
                    format!("no heartbeat for {:.1} s ({what}): stopping the trainer", silence(self).as_secs_f64());
                self.event("stalled", message.clone());
                self.shared.metrics.heartbeat_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return self.stop(myself, StopCause::Stall, &message);
            }
        }
        let interval = self
            .live
            .progress
            .as_ref()
            .and_then(|p| p.heartbeat_interval)
            .filter(|i| i.is_finite() && *i > 0.0)
            .map(|i| Duration::from_secs_f64(i.min(trainerd_proto::trainer::MAX_HEARTBEAT_INTERVAL)))
            .unwrap_or(self.shared.config().heartbeat_interval);
        let late_after = interval * 2;
        let quiet = silence(self);
        if self.last_beat.is_some() && quiet >= late_after && !self.live.stalled {
            self.live.stalled = true;
            self.event(
                "heartbeat_late",
                format!("no heartbeat for {:.1} s (interval {:.1} s)", quiet.as_secs_f64(), interval.as_secs_f64()),
            );
            self.publish("state");
        }
        let limit = limit(self);
        let next = if self.last_beat.is_some() && !self.live.stalled && late_after < limit {
            late_after.saturating_sub(quiet)
        } else {
            limit.saturating_sub(quiet)
        };
        self.arm_tick(myself, next.max(ms(1)));
        Ok(())
    }

    /// SIGUSR1 to the trainer itself (not its group: a DataLoader worker would die of it), and the
    /// pause_timeout deadline.
    fn signal_pause(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        let Some(pid) = self.pgid else { return Ok(()) };
        self.pause_unsignalled = false;
        // SAFETY: kill(2) on the trainer we started; its pid is ours until we reap it.
        if unsafe { libc::kill(pid as i32, libc::SIGUSR1) } != 0 {
            tracing::warn!(job = %self.id, "cannot send the pause signal: {}", std::io::Error::last_os_error());
        }
        let attempt = self.current_attempt();
        myself.send_after(ms(self.record.spec.timeouts.pause_timeout_ms), move || JobMsg::PauseTimeout { attempt });
        Ok(())
    }

    fn pause(&mut self, myself: &ActorRef<JobMsg>, by: &str) -> Result<Result<pb::Job, ApiError>, ActorProcessingErr> {
        let message = format!("pause requested by {by}: the trainer stops at the end of its epoch");
        match self.record.state() {
            JobState::Running if self.pgid.is_some() => {
                self.transition(JobState::Pausing, Reason::Paused, &message, |_| {})?;
                self.signal_pause(myself)?;
            }
            JobState::Starting if self.pgid.is_some() => {
                self.transition(JobState::Pausing, Reason::Paused, &message, |_| {})?;
                self.pause_unsignalled = true;
            }
            JobState::Backoff => {
                let message = format!("paused by {by} while backing off; it resumes from its latest checkpoint");
                self.finish(myself, JobState::Paused, Reason::Paused, &message, |r| r.next_restart_at = None)?;
            }
            other => return Ok(Err(crate::supervisor::not_pausable(self.id, other))),
        }
        Ok(Ok(self.view()))
    }

    /// trainerd is stopping: pause the job, or stop it and queue it again, as the policy says.
    fn shutdown(&mut self, myself: &ActorRef<JobMsg>, policy: ShutdownPolicy) -> Result<(), ActorProcessingErr> {
        let state = self.record.state();
        match policy {
            ShutdownPolicy::Leave => {}
            ShutdownPolicy::Pause if matches!(state, JobState::Running | JobState::Starting | JobState::Backoff) => {
                let _ = self.pause(myself, "trainerd's shutdown (shutdown_policy = pause)")?;
            }
            ShutdownPolicy::Pause => {}
            ShutdownPolicy::Stop if state == JobState::Backoff => {
                let message = "queued again: trainerd is stopping (shutdown_policy = stop)";
                self.finish(myself, JobState::Queued, Reason::Shutdown, message, |r| r.next_restart_at = None)?;
            }
            ShutdownPolicy::Stop if matches!(state, JobState::Starting | JobState::Running | JobState::Pausing) => {
                let message = "trainerd is stopping (shutdown_policy = stop): the trainer is stopped and the job \
                               queued again at its latest checkpoint";
                self.stop(myself, StopCause::Shutdown, message)?;
            }
            ShutdownPolicy::Stop => {}
        }
        Ok(())
    }

    /// Reconciliation of this job: an attempt whose shim is gone but whose end never reached us is
    /// resolved now; an adoption that could not tell is tried again; the heartbeat ladder is
    /// re-evaluated from the progress file.
    async fn check(&mut self, myself: &ActorRef<JobMsg>) -> Result<Vec<String>, ActorProcessingErr> {
        let mut fixes = Vec::new();
        if !self.awaiting_exit {
            return Ok(fixes);
        }
        if self.unadopted {
            self.restore(myself)?;
            if !self.unadopted {
                fixes.push(format!("job {}: its shim could not be observed before; now resolved", self.id));
            }
            return Ok(fixes);
        }
        if let Some(identity) = self.identity {
            if shim::is_alive(identity.shim_pid, identity.shim_start_ticks) == Some(false) {
                let attempt = self.current_attempt();
                let status = shim::read_exit(&self.paths.dir, attempt).map(|e| e.status());
                fixes.push(format!(
                    "job {}: the shim of attempt {attempt} had ended unreported ({}); its end is handled now",
                    self.id,
                    status.map_or("no exit record".into(), describe_status)
                ));
                self.event("reconciled", fixes[0].clone());
                self.exited(myself, status).await?;
                return Ok(fixes);
            }
        }
        if self.stop_cause.is_none() && self.pgid.is_some() {
            self.tick(myself)?;
        }
        Ok(fixes)
    }

    /// Rotates the job's logs that outgrew their cap; at most once a second, on progress and deadlines.
    /// Rotates a log over its cap. How soon to look again follows how fast the logs grow: a quiet
    /// trainer's are looked at every 10 s, a flooding one's within the time it takes to fill half
    /// its remaining room (at least every 100 ms), so a thousand jobs cost few `statx` calls and a
    /// flood still meets its cap.
    fn check_logs(&mut self) {
        let since = self.logs_checked.elapsed();
        if since < self.logs_every {
            return;
        }
        self.logs_checked = Instant::now();
        let cap = self.shared.config().log_cap;
        let mut next = LOGS_EVERY_MAX;
        for (i, path) in [self.paths.stdout.clone(), self.paths.stderr.clone()].iter().enumerate() {
            let mut size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let grew = size.saturating_sub(self.log_sizes[i]);
            if size > cap {
                match cap_log(path, cap) {
                    Ok(_) => {
                        self.event("log_rotated", format!("{} reached its cap; older output is in .1", path.display()));
                        size = 0;
                    }
                    Err(e) => tracing::warn!(job = %self.id, "cannot rotate {}: {e}", path.display()),
                }
            }
            self.log_sizes[i] = size;
            if grew > 0 {
                let room = cap.saturating_sub(size) as f64;
                let fill_half = since.as_secs_f64() * room / (2.0 * grew as f64);
                next = next.min(Duration::from_secs_f64(fill_half.clamp(0.1, LOGS_EVERY_MAX.as_secs_f64())));
            }
        }
        self.logs_every = next;
    }

    /// SIGTERM to the group, then SIGKILL after the stop grace.
    fn stop(&mut self, myself: &ActorRef<JobMsg>, cause: StopCause, message: &str) -> Result<(), ActorProcessingErr> {
        let Some(pgid) = self.pgid else { return Ok(()) };
        if self.stop_cause != Some(StopCause::Cancel) {
            self.stop_cause = Some(cause);
        }
        let reason = match cause {
            StopCause::Cancel => Reason::Cancelled,
            StopCause::Stall => Reason::Stalled,
            StopCause::PauseTimeout => Reason::Paused,
            StopCause::Shutdown => Reason::Shutdown,
        };
        if self.record.state() != JobState::Stopping {
            let by = self.cancelled_by.clone().filter(|_| cause == StopCause::Cancel);
            self.transition(JobState::Stopping, reason, message, |r| {
                if by.is_some() {
                    r.cancelled_by = by.clone();
                }
            })?;
        }
        process::signal_group(pgid, libc::SIGTERM)?;
        let attempt = self.current_attempt();
        myself.send_after(ms(self.record.spec.timeouts.stop_grace_ms), move || JobMsg::Kill { attempt });
        Ok(())
    }

    fn cancel(
        &mut self,
        myself: &ActorRef<JobMsg>,
        by: String,
        reply: RpcReplyPort<Result<pb::Job, ApiError>>,
    ) -> Result<(), ActorProcessingErr> {
        let state = self.record.state();
        if is_terminal(state) {
            let _ = reply.send(Err(ApiError::FailedPrecondition(format!(
                "job {} is already {}; there is nothing to cancel",
                self.id,
                trainerd_proto::state::state_word(state)
            ))));
            return Ok(());
        }
        self.cancelled_by = Some(by.clone());
        if self.pgid.is_some() {
            self.cancel_replies.push(reply);
            return self.stop(myself, StopCause::Cancel, &format!("cancelled by {by}"));
        }
        let message = format!("cancelled by {by}");
        self.finish(myself, JobState::Cancelled, Reason::Cancelled, &message, |r| r.cancelled_by = Some(by.clone()))?;
        let _ = reply.send(Ok(self.view()));
        Ok(())
    }

    async fn exited(
        &mut self,
        myself: &ActorRef<JobMsg>,
        status: Option<ExitStatus>,
    ) -> Result<(), ActorProcessingErr> {
        if status.is_some() {
            self.progress_changed(myself)?;
        }
        self.awaiting_exit = false;
        self.identity = None;
        if let Some(pgid) = self.pgid.take() {
            // The leader is gone; grandchildren may not be. None may outlive the attempt. Failures
            // here are reported, not raised: the exit must still be recorded.
            if let Err(e) = process::signal_group(pgid, libc::SIGKILL) {
                tracing::error!(job = %self.id, "cannot signal process group {pgid}: {e}");
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match process::live_group_members(pgid) {
                    Ok(left) if left.is_empty() => break,
                    Ok(left) if Instant::now() >= deadline => {
                        self.event("group_survivors", format!("processes {left:?} of group {pgid} survived SIGKILL"));
                        break;
                    }
                    Ok(_) => tokio::time::sleep(ms(5)).await,
                    Err(e) => {
                        tracing::error!(job = %self.id, "cannot list process group {pgid}: {e}");
                        break;
                    }
                }
            }
        }
        self.tick_generation += 1;
        let now = unix_now();
        let attempt = self.record.attempts.last().cloned();
        let end = AttemptEnd {
            exit: status,
            trainer_state: self.live.progress.as_ref().map(|p| p.state),
            stopped_by_daemon: self.stop_cause.take(),
            ran_for: self.attempt_started.elapsed(),
            resumed: attempt.as_ref().is_some_and(|a| a.resumed_from.is_some()),
        };
        let mut history = History {
            restart_times: self.record.restart_times.clone(),
            consecutive_failures: self.record.consecutive_failures,
        };
        let decision = policy::decide(&self.record.spec.restart, &mut history, &end, now, jitter());
        let progress = self.live.progress.clone();
        let close = move |r: &mut JobRecord, reason: Reason| {
            if let Some(a) = r.attempts.last_mut() {
                a.ended_at = Some(now);
                a.exit = status;
                a.reason = reason as i32;
            }
            if let Some(p) = &progress {
                r.step = p.step;
                r.epoch = p.epoch;
                r.total_steps = p.total_steps;
                r.total_epochs = p.total_epochs;
                r.loss = p.loss;
                r.val_loss = p.val_loss;
            }
            r.exit_code = match status {
                Some(ExitStatus::Code(c)) => Some(c),
                _ => None,
            };
            r.restart_times = history.restart_times.clone();
            r.consecutive_failures = history.consecutive_failures;
        };
        self.live.pid = None;
        self.live.stalled = false;
        match decision {
            Decision::Complete => {
                let digest = self.live.progress.as_ref().and_then(|p| p.weights_sha256.clone());
                let message = self.live.progress.as_ref().and_then(|p| p.message.clone()).unwrap_or("completed".into());
                self.finish(myself, JobState::Completed, Reason::Completed, &message, |r| {
                    close(r, Reason::Completed);
                    r.weights_sha256 = digest.clone();
                })?;
            }
            Decision::Pause => {
                self.finish(myself, JobState::Paused, Reason::Paused, "paused with a checkpoint", |r| {
                    close(r, Reason::Paused)
                })?;
            }
            Decision::Requeue => {
                let message = "queued again: trainerd stopped (shutdown_policy = stop); it resumes from its latest \
                               checkpoint";
                self.finish(myself, JobState::Queued, Reason::Shutdown, message, |r| close(r, Reason::Shutdown))?;
            }
            Decision::Cancel => {
                let by = self.cancelled_by.clone().unwrap_or_else(|| "unknown".into());
                let message = format!("cancelled by {by}; no process of the job is left");
                self.finish(myself, JobState::Cancelled, Reason::Cancelled, &message, |r| {
                    close(r, Reason::Cancelled);
                    r.cancelled_by = Some(by.clone());
                })?;
            }
            Decision::Restart { reason, delay, previous_checkpoint } => {
                self.shared.metrics.restarted(trainerd_proto::json::reason_word(reason));
                let what = policy::describe(&end, reason);
                let message = format!("{what}; restarting in {:.1} s", delay.as_secs_f64());
                let at = now + delay.as_secs_f64();
                self.transition(JobState::Backoff, reason, &message, |r| {
                    close(r, reason);
                    r.next_restart_at = Some(at);
                    if previous_checkpoint && r.previous_checkpoint.is_some() {
                        r.latest_checkpoint = r.previous_checkpoint.take();
                    }
                })?;
                self.arm_backoff(myself, delay);
            }
            Decision::Fail { reason, message } => {
                self.finish(myself, JobState::Failed, reason, &message, |r| close(r, reason))?;
            }
        }
        Ok(())
    }

    /// A transition that ends the actor's work: terminal states and PAUSED release the slot.
    fn finish(
        &mut self,
        myself: &ActorRef<JobMsg>,
        to: JobState,
        reason: Reason,
        message: &str,
        edit: impl Fn(&mut JobRecord),
    ) -> Result<(), ActorProcessingErr> {
        self.transition(to, reason, message, edit)?;
        let view = self.view();
        for reply in self.cancel_replies.drain(..) {
            let _ = reply.send(Ok(view.clone()));
        }
        let _ = self.supervisor.cast(SupervisorMsg::Released { id: self.id });
        myself.stop(None);
        Ok(())
    }
}

fn describe_status(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(code) => format!("exited {code}"),
        ExitStatus::Signal(signal) => format!("killed by signal {signal}"),
    }
}

/// The Instant that corresponds to Unix time `t` (now, for a time in the future or not a number).
fn instant_at(t: f64) -> Instant {
    let ago = unix_now() - t;
    if !ago.is_finite() || ago <= 0.0 {
        return Instant::now();
    }
    Instant::now().checked_sub(Duration::from_secs_f64(ago.min(1e9))).unwrap_or_else(Instant::now)
}
