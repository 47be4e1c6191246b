//! The JobActor: owns one job's trainer process while the job is active (starting, running, backing
//! off, stopping). Child of the Supervisor, which spawns it when the job is admitted and re-creates
//! it from the stored record if it panics.
//!
//! Every wait is a message: the attempt's end comes from a task that awaits its shim (tokio's child
//! wait, or a pidfd for a shim a previous trainerd started; both from the kernel) and reaches us
//! through the Supervisor; progress comes from the inotify watcher (which applies a steady report
//! itself and leaves it for us to take in: `super::report`); deadlines come from `send_after`.
//! No handler awaits anything unbounded.
//!
//! A job found at start-up with a process recorded (Mode::Restored) is re-adopted when its shim still
//! runs, with the stall clock taken from the progress file; when the shim is gone, its exit record
//! decides exactly as if we had been watching, and without one the attempt is `lost`.
//!
//! Files the trainer controls are read through `untrusted` on the job's `blocking::Lane` (off the
//! runtime's threads, under a deadline), so a FIFO, a device or a hung file system never holds this
//! actor, let alone another. An attempt's end is recorded with its last progress if that can be read
//! in time and without it otherwise. When the store cannot write (a full disk), the end is held in
//! memory (`ended`), as are the messages whose handling needs a write (`held`), and both are handled
//! again once the Supervisor says the store is writable.

use super::executor::{self, Adopted, Delivered, End, Running};
use super::hooks::{self, Hooks};
use super::logfiles::{LogCaps, Looked};
use super::{read_progress_bounded, JobPaths, Launch, ReadError};
use crate::blocking::{Lane, FILE_DEADLINE};
use crate::config::ShutdownPolicy;
use crate::hub::{job_view, LiveFacts};
use crate::policy::{self, AttemptEnd, Decision, History, StopCause};
use crate::refusal::{not_pausable, Refusal};
use crate::shared::Shared;
use crate::store::metrics;
use crate::store::records::Protocol;
use crate::store::records::{Attempt, AttemptMore, ExitStatus, JobId, JobRecord};
use crate::store::StoreError;
use crate::untrusted;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use trainerd_proto::state::{has_process, is_terminal};
use trainerd_proto::trainer::{unix_now, CheckpointRef, Progress, TrainerState};
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::{JobState, Reason};

/// Messages to a JobActor.
pub enum JobMsg {
    /// Start an attempt: the job was admitted, or its backoff ended.
    Start,
    /// Attempt `attempt`'s process ended; `None` when its end could not be observed (lost).
    /// `allocation_ended`: its executor took the allocation back (see `policy`).
    Exited { attempt: u32, status: Option<ExitStatus>, allocation_ended: bool, at: Option<Instant> },
    /// The job directory saw a new progress file.
    ProgressChanged,
    /// The job's timer (see `super::wake`): a stall deadline may have passed, or a look at the logs
    /// be due. What is due is due by the clock, so a stale generation looks too.
    Tick { generation: u64 },
    /// The stop grace ran out: SIGKILL the group if attempt `attempt` still runs.
    Kill { attempt: u32 },
    /// The backoff is over (stale generations are ignored).
    BackoffOver { generation: u64 },
    /// A user cancels the job; the reply comes once no process of the job is left.
    Cancel { by: String, reply: RpcReplyPort<Result<pb::Job, Refusal>> },
    /// A user pauses the job; the reply comes at once (PAUSING, or PAUSED when nothing runs).
    Pause { by: String, reply: RpcReplyPort<Result<pb::Job, Refusal>> },
    /// The pause of attempt `attempt` took longer than `pause_timeout`.
    PauseTimeout { attempt: u32 },
    /// Reconciliation: check the record against the process and the progress file, fix what
    /// disagrees, and reply with one line per fix.
    Check { reply: RpcReplyPort<Vec<String>> },
    /// trainerd is stopping under this policy.
    Shutdown { policy: ShutdownPolicy },
    /// The store accepts writes again: record a held end, handle held messages.
    StoreWritable,
    /// The job's logs grew (only for jobs that read progress from their output).
    OutputChanged,
    /// Time to read attempt `attempt`'s progress file and its executor's word on a timer (executors
    /// whose trainers write where inotify does not see).
    Poll { attempt: u32 },
}

impl JobMsg {
    /// A copy of a message whose handling can be tried again as it is (no reply port): what is held
    /// when the store cannot write.
    fn again(&self) -> Option<JobMsg> {
        Some(match self {
            JobMsg::Start => JobMsg::Start,
            JobMsg::Tick { generation } => JobMsg::Tick { generation: *generation },
            JobMsg::BackoffOver { generation } => JobMsg::BackoffOver { generation: *generation },
            JobMsg::PauseTimeout { attempt } => JobMsg::PauseTimeout { attempt: *attempt },
            JobMsg::Shutdown { policy } => JobMsg::Shutdown { policy: *policy },
            JobMsg::Kill { attempt } => JobMsg::Kill { attempt: *attempt },
            JobMsg::OutputChanged => JobMsg::OutputChanged,
            JobMsg::Poll { attempt } => JobMsg::Poll { attempt: *attempt },
            _ => return None,
        })
    }
}

/// What a JobActor tells its parent.
pub enum Report {
    /// Attempt `attempt` of job `id` ended (see [`JobMsg::Exited`]); routed back to the job's actor
    /// through the parent, which holds it while a failed actor is re-created.
    Exited { id: JobId, attempt: u32, status: Option<ExitStatus>, allocation_ended: bool, at: Instant },
    /// Job `id` no longer needs its actor (finished, paused, queued again): its slot is free.
    Released { id: JobId },
}

/// How a JobActor reaches its parent without knowing what the parent is: the Supervisor makes one
/// that turns each report into its own message.
#[derive(Clone)]
pub struct Parent(Arc<dyn Fn(Report) + Send + Sync>);

impl Parent {
    /// A parent that receives reports through `send`.
    pub fn new(send: impl Fn(Report) + Send + Sync + 'static) -> Parent {
        Parent(Arc::new(send))
    }

    /// Tells the parent.
    pub fn send(&self, report: Report) {
        (self.0)(report)
    }
}

/// Whether an actor error is the store refusing a write (to hold and retry, not to fail on).
fn store_unavailable(e: &ActorProcessingErr) -> bool {
    e.downcast_ref::<StoreError>().is_some_and(StoreError::is_unavailable)
}

/// How the actor comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Admitted from the queue, or a backoff found at startup.
    Admitted,
    /// Re-created after a panic or for not answering: the attempt's shim is found again as in
    /// `Restored` (its end may have been what the old actor failed to handle).
    Recreated,
    /// Found in a state with a process that no actor of this trainerd watches (at start-up, or by
    /// reconciliation): adopt its shim, or resolve the attempt from what the shim left.
    Restored,
}

/// Spawn arguments.
pub struct JobArgs {
    pub id: JobId,
    pub shared: Arc<Shared>,
    /// Where the actor's reports go (the Supervisor, which the actor does not know).
    pub parent: Parent,
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
    parent: Parent,
    paths: JobPaths,
    /// Shared with the watcher's steady view of the job (see `super::report`); replaced, never
    /// changed in place.
    record: Arc<JobRecord>,
    /// Changes with every new `record` (see `set_record`), unique in the process: the hub patches
    /// the view it holds only when it was built from this version.
    record_version: u64,
    live: LiveFacts,
    /// The attempt in flight, or the last one until the next start.
    run: Run,
    /// An attempt is in flight: its end has not been handled yet.
    awaiting_exit: bool,
    /// Adoption could not tell whether the shim lives (a /proc or pidfd error): reconciliation retries.
    unadopted: bool,
    cancelled_by: Option<String>,
    cancel_replies: Vec<RpcReplyPort<Result<pb::Job, Refusal>>>,
    /// The one timer of the stall clock's deadline and the look at the logs (see `super::wake`).
    wakes: super::wake::Wakes,
    backoff_generation: u64,
    /// When the kernel reported the exit being handled: the exit-detection metric ends at the
    /// transition that records it.
    exit_seen_at: Option<Instant>,
    /// When the log sizes were last looked at, their sizes then, and when to look next.
    log_caps: LogCaps,
    _watcher: Option<super::watch::WatchGuard>,
    /// Set by the watcher when it sends `ProgressChanged`, cleared when the actor reads the file: one
    /// rename raises two or three inotify events, and a burst of them needs one read, not three.
    progress_pending: Arc<AtomicBool>,
    /// The metric names this actor has recorded for the job (at most `NAMES_MAX`), and whether a
    /// refused name was reported.
    metric_names: std::collections::HashSet<String>,
    names_refused: bool,
    /// The last metric point recorded: a report that repeats it is not recorded again.
    last_point: super::report::LastPoint,
    /// Where this job's blocking file work runs (see `crate::blocking`).
    lane: Lane,
    /// The cell through which the watcher applies steady reports without this actor (see
    /// `super::report`); it holds the trainer's directory when that is on a local disk (the progress
    /// file is then read inline from it, else on the lane).
    reports: Arc<super::report::Reports>,
    /// The job's own directory held open when it is on a local disk: the log sizes are looked at
    /// inline from it (`None`: on the lane).
    job_dir: Option<crate::untrusted::LocalDir>,
    /// The attempt ended (its status, and when the kernel said so) and its end is not recorded yet.
    ended: Option<(Option<ExitStatus>, Option<Instant>)>,
    /// Messages whose handling needed a store write that failed; handled again on `StoreWritable`.
    held: Vec<JobMsg>,
    /// The last checkpoint path refused (it is reported once, not at every progress write).
    refused_checkpoint: Option<PathBuf>,
    hooks: Hooks,
    /// Like `progress_pending`, for log growth.
    output_pending: Arc<AtomicBool>,
    _log_watch: Option<super::watch::WatchGuard>,
    /// When output lines were last scanned (a flood is scanned at most every `MIN_SCAN`).
    last_scan: Instant,
}

/// What belongs to one attempt, replaced whole when the next one starts.
struct Run {
    /// The attempt, as its executor knows it (a local shim and trainer, or a Slurm job); `None` once
    /// its end is recorded.
    running: Option<Running>,
    /// Its start, heartbeats, output and advances (the stall clock's readings).
    clock: super::stall::Clock,
    /// Its divergence guard, when the job has one.
    guard: Option<super::guard::Guard>,
    /// The first diverging step of the divergence this attempt is being stopped for: checkpoints
    /// from it on are not recorded, and are set aside before the rollback.
    diverged_at: Option<u64>,
    /// Why trainerd stops it, once it does.
    stop_cause: Option<StopCause>,
    /// The last reason its progress file was refused (reported once, not at every write).
    last_invalid: Option<String>,
    /// A pause asked for while the trainer had not heartbeated yet: SIGUSR1 goes at the first beat
    /// (before it, the trainer may not handle the signal, and its default action kills).
    pause_unsignalled: bool,
    /// A valid progress file was read: it wins over progress from output lines.
    file_progress: bool,
    /// Its first progress was noted (its step, and whether it ignored its resume).
    first_step_noted: bool,
    /// Matches the job's output lines (`progress_regex`), from the attempt's start.
    scanner: Option<Arc<std::sync::Mutex<super::output::Scanner>>>,
    /// Its executor took the allocation back (see `policy`).
    allocation_ended: bool,
}

impl Run {
    /// A new attempt, started now through `running` (None: none yet).
    fn new(running: Option<Running>, started: Instant) -> Run {
        Run {
            running,
            clock: super::stall::Clock::new(started),
            guard: None,
            diverged_at: None,
            stop_cause: None,
            last_invalid: None,
            pause_unsignalled: false,
            file_progress: false,
            first_step_noted: false,
            scanner: None,
            allocation_ended: false,
        }
    }
}

/// How often a job holding an unrecorded end tries the store again, besides being told it is back.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// The least time between two scans of a job's output lines.
const MIN_SCAN: Duration = Duration::from_millis(200);

/// An actor error as the answer to a user's request: a cancel or pause that could not be recorded is
/// not carried out, and the user is told why.
fn answer(e: &ActorProcessingErr) -> Refusal {
    match e.downcast_ref::<StoreError>() {
        Some(StoreError::Unavailable { cause }) => Refusal::Store(StoreError::Unavailable { cause: cause.clone() }),
        Some(store) if store.is_unavailable() => Refusal::Store(StoreError::Unavailable { cause: store.to_string() }),
        _ => Refusal::Internal(e.to_string()),
    }
}

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
        let paths = args.shared.config().job_paths(args.id, record.spec.more.slurm.is_some());
        std::fs::create_dir_all(&paths.trainer)?;
        let held = |dir: &std::path::Path| {
            crate::untrusted::LocalDir::open(dir).unwrap_or_else(|e| {
                tracing::warn!(job = %args.id, "{} is read on the blocking pool: {e}", dir.display());
                None
            })
        };
        let (progress_dir, job_dir) = (held(&paths.trainer), held(&paths.dir));
        let me = myself.clone();
        let progress_pending = Arc::new(AtomicBool::new(false));
        let pending = progress_pending.clone();
        let reports = Arc::new(super::report::Reports::new(args.id, args.shared.clone(), progress_dir, move || {
            if !pending.swap(true, Ordering::AcqRel) {
                let _ = me.cast(JobMsg::ProgressChanged);
            }
        }));
        let watcher = match args.shared.progress_watch.watch(&paths.trainer, reports.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                // Without inotify the heartbeat deadline's re-read still sees progress, only later.
                tracing::warn!(job = %args.id, "cannot watch {}: {e}", paths.trainer.display());
                None
            }
        };
        let hooks = Hooks::of(&record.spec, args.shared.config().test_hooks);
        let output_pending = Arc::new(AtomicBool::new(false));
        let log_watch = match record.spec.progress_regex {
            Some(_) => {
                let (me, pending) = (myself.clone(), output_pending.clone());
                args.shared
                    .progress_watch
                    .watch_logs(&paths.dir, move || {
                        if !pending.swap(true, Ordering::AcqRel) {
                            let _ = me.cast(JobMsg::OutputChanged);
                        }
                    })
                    .map_err(
                        |e| tracing::warn!(job = %args.id, "cannot watch the logs of {}: {e}", paths.dir.display()),
                    )
                    .ok()
            }
            None => None,
        };
        let first_step_noted = record.attempts.last().is_some_and(|a| a.first_step.is_some());
        let mut state = State {
            id: args.id,
            shared: args.shared,
            parent: args.parent,
            paths,
            record: Arc::new(record),
            record_version: next_record_version(),
            live: LiveFacts { gpus: args.gpus, ..LiveFacts::default() },
            run: Run { first_step_noted, ..Run::new(None, Instant::now()) },
            awaiting_exit: false,
            unadopted: false,
            cancelled_by: None,
            cancel_replies: Vec::new(),
            wakes: super::wake::Wakes::default(),
            backoff_generation: 0,
            exit_seen_at: None,
            log_caps: LogCaps::default(),
            _watcher: watcher,
            progress_pending,
            lane: Lane::default(),
            reports,
            job_dir,
            metric_names: Default::default(),
            names_refused: false,
            last_point: Default::default(),
            ended: None,
            held: Vec::new(),
            refused_checkpoint: None,
            hooks,
            output_pending,
            _log_watch: log_watch,
            last_scan: Instant::now(),
        };
        let job_state = state.record.state();
        match args.mode {
            Mode::Recreated | Mode::Restored if has_process(job_state) => {
                state.restore(&myself, args.mode == Mode::Recreated).await?
            }
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
        let again = msg.again();
        if let Some(applied) = state.reports.take() {
            state.absorb(applied);
        }
        let result = state.dispatch(myself.clone(), msg).instrument(span).await;
        if state.reports.leave(state.steady()) {
            state.reports.give(&mut state.live.progress);
        }
        match result {
            Err(e) if store_unavailable(&e) => {
                tracing::warn!(job = %state.id, "held until the store accepts writes: {e}");
                if let Some(msg) = again {
                    state.held.push(msg);
                }
                state.wait_for_store(&myself);
                Ok(())
            }
            other => other,
        }
    }
}

/// Arms the job's timer when its deadlines need it (see `super::wake`).
fn send_wake(myself: &ActorRef<JobMsg>, arm: Option<super::wake::Arm>) {
    if let Some(super::wake::Arm { generation, after }) = arm {
        myself.send_after(after, move || JobMsg::Tick { generation });
    }
}

/// A version number no record of any job has had before in this process (never 0).
fn next_record_version() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl State {
    async fn dispatch(&mut self, myself: ActorRef<JobMsg>, msg: JobMsg) -> Result<(), ActorProcessingErr> {
        let state = self;
        match msg {
            JobMsg::Start => state.start(&myself).await?,
            JobMsg::ProgressChanged => {
                // Cleared before the read: an event after this point sends a new message.
                state.progress_pending.store(false, Ordering::Release);
                state.progress_changed(&myself).await?
            }
            JobMsg::Tick { generation } => state.woke(&myself, generation).await?,
            JobMsg::Kill { attempt } => {
                if state.current_attempt() == attempt && state.ended.is_none() {
                    if let Some(running) = state.run.running.as_ref().filter(|r| r.started()) {
                        let what = running.kill()?;
                        state.event("killed", what);
                    }
                }
            }
            JobMsg::Exited { attempt, status, allocation_ended, at }
                if attempt == state.current_attempt() && state.awaiting_exit && state.ended.is_none() =>
            {
                state.run.allocation_ended = allocation_ended;
                state.ended = Some((status, at));
                state.record_end(&myself).await?
            }
            JobMsg::Exited { .. } => {}
            JobMsg::BackoffOver { generation } => {
                if generation == state.backoff_generation && state.record.state() == JobState::Backoff {
                    state.start(&myself).await?;
                }
            }
            JobMsg::Cancel { by, reply } => state.cancel(&myself, by, reply)?,
            JobMsg::Pause { by, reply } => match state.pause(&myself, &by) {
                Ok(result) => {
                    let _ = reply.send(result);
                }
                Err(e) => {
                    let _ = reply.send(Err(answer(&e)));
                    if !store_unavailable(&e) {
                        return Err(e);
                    }
                }
            },
            JobMsg::Check { reply } => {
                let fixes = state.check(&myself).await;
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
            JobMsg::StoreWritable => {
                if state.ended.is_some() {
                    state.record_end(&myself).await?;
                }
                for msg in std::mem::take(&mut state.held) {
                    myself.cast(msg)?;
                }
            }
            JobMsg::OutputChanged => {
                let wait = MIN_SCAN.saturating_sub(state.last_scan.elapsed());
                if !wait.is_zero() {
                    // A flood is scanned at most every MIN_SCAN; the pending flag stays set meanwhile.
                    myself.send_after(wait, || JobMsg::OutputChanged);
                    return Ok(());
                }
                state.output_pending.store(false, Ordering::Release);
                state.scan_output(&myself).await?;
            }
            JobMsg::Poll { attempt } => {
                if attempt == state.current_attempt() && state.awaiting_exit && state.ended.is_none() {
                    state.poll(&myself).await?;
                    state.arm_poll(&myself);
                }
            }
        }
        Ok(())
    }

    /// The timer's look at an attempt its executor runs elsewhere: what it still waits for (a Slurm
    /// job pending in Slurm's queue), its start (the startup grace counts from when the executor
    /// started the trainer, not from the submission), and its progress file.
    async fn poll(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        if self.live.waiting_for.is_some() {
            match self.run.running.as_ref().and_then(Running::waiting_for) {
                None => self.executor_started(myself, "its executor started it")?,
                Some(waiting) if Some(&waiting) != self.live.waiting_for.as_ref() => {
                    self.live.waiting_for = Some(waiting);
                    self.publish("state");
                }
                Some(_) => {}
            }
        }
        self.progress_changed(myself).await
    }

    /// The executor started the trainer (it said so, or the trainer's first progress shows it): the
    /// attempt no longer waits, and its stall clock starts now. Once per attempt.
    fn executor_started(&mut self, myself: &ActorRef<JobMsg>, how: &str) -> Result<(), ActorProcessingErr> {
        if self.live.waiting_for.take().is_none() {
            return Ok(());
        }
        self.run.clock.started_at(Instant::now());
        self.event("executor_started", format!("attempt {} started: {how}", self.current_attempt()));
        self.running_once_started()?;
        self.rearm(myself, Instant::now());
        self.publish("state");
        Ok(())
    }

    /// Protocol auto and none: RUNNING once the trainer starts (an unchanged script never heartbeats).
    fn running_once_started(&mut self) -> Result<(), ActorProcessingErr> {
        if self.record.spec.protocol == Protocol::V1 || self.record.state() != JobState::Starting {
            return Ok(());
        }
        let message = format!("started (protocol {}: running once started)", self.record.spec.protocol.word());
        match self.transition(JobState::Running, Reason::Unspecified, &message, |_| {}) {
            Err(e) if store_unavailable(&e) => {
                tracing::warn!(job = %self.id, "RUNNING not recorded yet: {e}");
                Ok(())
            }
            other => other,
        }
    }

    /// The next look at the logs' sizes, when `log_caps` says.
    fn arm_logs(&mut self, myself: &ActorRef<JobMsg>) {
        let (now, every) = (Instant::now(), self.log_caps.every());
        let arm = self.wakes.logs_at(Some(now + super::grid::later(every)), every / 2, now);
        send_wake(myself, arm);
    }

    /// What the job's silence is measured against now.
    fn limits(&self) -> super::stall::Limits {
        let t = &self.record.spec.timeouts;
        let interval = self
            .live
            .progress
            .as_ref()
            .and_then(|p| p.heartbeat_interval)
            .filter(|i| i.is_finite() && *i > 0.0)
            .map(|i| Duration::from_secs_f64(i.min(trainerd_proto::trainer::MAX_HEARTBEAT_INTERVAL)))
            .unwrap_or(self.shared.config().heartbeat_interval);
        super::stall::Limits {
            protocol: self.record.spec.protocol,
            startup_grace: ms(t.startup_grace_ms),
            heartbeat_timeout: ms(t.heartbeat_timeout_ms),
            late_after: interval * 2,
            idle_timeout: self.record.spec.idle_timeout_ms.map(ms),
            progress_timeout: self.record.spec.more.progress_timeout_ms.map(ms),
        }
    }

    /// Arms the next tick for the stall clock's nearest deadline (none when no rule has one).
    fn rearm(&mut self, myself: &ActorRef<JobMsg>, now: Instant) {
        let verdict = super::stall::judge(&self.limits(), &self.run.clock.readings(), now);
        if let Some(next) = verdict.next {
            self.arm_tick(myself, next.max(ms(1)));
        }
    }

    /// Reads the job's new output lines (off the runtime) and takes the last match as progress: a
    /// heartbeat, and the live step, loss and metrics unless a progress file speaks for the trainer.
    async fn scan_output(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        let Some(scanner) = self.run.scanner.clone() else { return Ok(()) };
        if !self.awaiting_exit {
            return Ok(());
        }
        self.last_scan = Instant::now();
        let paths = [self.paths.stdout.clone(), self.paths.stderr.clone()];
        let found = self
            .lane
            .run("reading output lines", FILE_DEADLINE, move || {
                scanner.lock().unwrap_or_else(|p| p.into_inner()).scan([&paths[0], &paths[1]])
            })
            .await
            .ok()
            .flatten();
        let Some(m) = found else { return Ok(()) };
        let now = Instant::now();
        self.run.clock.output(now);
        // No sequence number: any progress file that comes next counts as a beat too.
        if self.run.clock.alive_at(now) {
            self.arm_tick(myself, ms(1));
        }
        if self.live.stalled {
            self.live.stalled = false;
            self.event("heartbeat_resumed", "a progress line arrived".into());
        }
        self.live.metrics.extend(m.metrics.iter().cloned());
        if !self.run.file_progress {
            m.apply(self.live.progress.get_or_insert_with(|| Progress::starting(unix_now())), unix_now());
        }
        let mut point = None;
        let then_running = self.record.state() == JobState::Starting && self.ended.is_none();
        if let Some(step) = m.step {
            self.note_first_step(step, then_running);
            if !self.run.file_progress {
                self.run.clock.advance(step, super::stall::Phase::Running, now);
                // Without a progress file, the lines' values are the job's metrics.
                let values = m.loss.map(|loss| ("loss", loss)).into_iter();
                let values: Vec<(&str, f64)> = values.chain(m.metrics.iter().map(|(n, v)| (n.as_str(), *v))).collect();
                point = self.record_point(step, &values);
            }
        }
        if then_running {
            match self.transition(JobState::Running, Reason::Unspecified, "first progress line", |_| {}) {
                Err(e) if store_unavailable(&e) => self.publish_progress(point),
                other => other?,
            }
        } else {
            self.publish_progress(point);
        }
        Ok(())
    }

    /// The attempt's first progress: its step is recorded, and an attempt given a checkpoint at step S
    /// that reports an earlier step started over (`resume_ignored`), which the event log, `get` and
    /// `health` say.
    /// `then_running`: the caller records the RUNNING transition right after, whose flush makes this
    /// note durable with it.
    fn note_first_step(&mut self, step: u64, then_running: bool) {
        if self.run.first_step_noted {
            return;
        }
        self.run.first_step_noted = true;
        let Some(attempt) = self.record.attempts.last().cloned() else { return };
        let ignored = attempt.resumed_step.is_some_and(|given| step < given);
        let edit = |r: &mut JobRecord| {
            if let Some(a) = r.attempts.last_mut() {
                a.first_step = Some(step);
                a.resume_ignored = ignored;
            }
        };
        let updated = if then_running {
            self.shared.store.update_unflushed(self.id, edit)
        } else {
            self.shared.store.update(self.id, edit)
        };
        match updated {
            Ok(record) => self.set_record(record),
            Err(e) => tracing::warn!(job = %self.id, "the attempt's first step is not recorded: {e}"),
        }
        // The attempt continues from `step`: what earlier attempts reported after it is not what the
        // final model went through, so the history after it is replaced by this attempt's.
        if attempt.number > 1 {
            match self.shared.store.rewind_metrics(self.id, step) {
                Ok(0) => {}
                Ok(n) => self.event(
                    "metrics_rewound",
                    format!(
                        "attempt {} continues from step {step}: {n} metric point(s) of earlier attempts after step \
                         {step} are replaced by its own",
                        attempt.number
                    ),
                ),
                Err(e) => tracing::warn!(job = %self.id, "the metric history is not rewound: {e}"),
            }
        }
        if ignored {
            let given = attempt.resumed_step.unwrap_or_default();
            let path = attempt.resumed_from.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            self.event(
                "resume_ignored",
                format!(
                    "attempt {} was given the checkpoint at step {given} ({path}) and reported step {step} first: it \
                     started over instead of resuming (does the trainer read TRAINERD_RESUME_FROM, or its resume \
                     argument?)",
                    attempt.number
                ),
            );
        }
    }

    /// Asks to be told (`StoreWritable`) when the store accepts writes again: by the Supervisor when
    /// it reopens the store, and by a timer in case the store came back before this was asked.
    fn wait_for_store(&self, myself: &ActorRef<JobMsg>) {
        myself.send_after(STORE_RETRY, || JobMsg::StoreWritable);
    }

    /// Whether the attempt's trainer was started (and its end not yet recorded).
    fn started(&self) -> bool {
        self.run.running.as_ref().is_some_and(Running::started)
    }

    /// Takes in the reports the watcher applied while this actor was idle, and its own last report
    /// back (see `super::report`).
    fn absorb(&mut self, applied: super::report::Applied) {
        // The attempt changes only in a handler, so the reports are always this attempt's; the check
        // keeps another's from ever reaching its clock.
        let current = applied.attempt == self.current_attempt();
        if current {
            if let Some((seq, at)) = applied.beat {
                self.run.clock.beat(seq, at);
            }
            if let Some((step, phase, at)) = applied.advance {
                self.run.clock.advance(step, phase, at);
            }
        }
        match applied.applied {
            Some(last_point) if current => {
                self.live.message = applied.progress.as_ref().and_then(|p| p.message.clone());
                self.last_point = last_point;
                self.live.progress = applied.progress;
            }
            Some(_) => {}
            None if applied.progress.is_some() => self.live.progress = applied.progress,
            None => {}
        }
    }

    /// What the watcher may apply without this actor until its next message: only while the attempt
    /// runs steadily and a running trainer's report would have the actor do nothing but note the
    /// beat and the step, show it and record its metric point (see `super::report`). A divergence
    /// guard sees every loss, and test hooks every step: their jobs have every report handled here.
    fn steady(&self) -> Option<super::report::Leave<'_>> {
        let progress = self.live.progress.as_ref().filter(|p| p.state == TrainerState::Running)?;
        let steady = self.awaiting_exit
            && self.ended.is_none()
            && self.record.state() == JobState::Running
            && self.reports.dir().is_some()
            && self.live.waiting_for.is_none()
            && !self.live.stalled
            && self.run.clock.has_beaten()
            && self.run.file_progress
            && self.run.first_step_noted
            && self.run.last_invalid.is_none()
            && self.run.guard.is_none()
            && self.run.diverged_at.is_none()
            && self.run.stop_cause.is_none()
            && !self.run.pause_unsignalled
            && self.hooks.panic_at.is_none()
            && self.hooks.wedge_at.is_none();
        steady.then_some(super::report::Leave {
            attempt: self.current_attempt(),
            version: self.record_version,
            record: &self.record,
            facts: &self.live,
            names: &self.metric_names,
            last_point: &self.last_point,
            seq: progress.heartbeat_seq,
            step: progress.step,
        })
    }

    fn current_attempt(&self) -> u32 {
        self.record.attempts.last().map(|a| a.number).unwrap_or(0)
    }

    fn view(&self) -> pb::Job {
        job_view(&self.record, &self.live, (0, String::new()))
    }

    /// The job's record changed: the view the hub holds no longer carries it.
    fn set_record(&mut self, record: JobRecord) {
        self.record = Arc::new(record);
        self.record_version = next_record_version();
    }

    fn publish(&self, kind: &str) {
        self.shared.hub.publish_version(self.view(), self.record_version, kind, None);
    }

    /// Publishes a progress report: the live facts applied to the view the hub holds when it was built
    /// from the same record, else a new view.
    fn publish_progress(&self, point: Option<pb::MetricValues>) {
        let hub = &self.shared.hub;
        if let Err(point) = hub.patch_live(self.id.0, self.record_version, &self.record, &self.live, "progress", point)
        {
            hub.publish_version(self.view(), self.record_version, "progress", point);
        }
    }

    /// Records one report's metric values in the job's history (when they differ from the last one
    /// recorded), and returns them for the watchers. Names that are not metric names, and names past
    /// the job's [`NAMES_MAX`], are not recorded (said once).
    fn record_point(&mut self, step: u64, values: &[(&str, f64)]) -> Option<pb::MetricValues> {
        let mut kept = Vec::with_capacity(values.len());
        for &(name, value) in values {
            let known = self.metric_names.contains(name);
            if known || (metrics::valid_name(name) && self.metric_names.len() < metrics::NAMES_MAX) {
                if !known {
                    self.metric_names.insert(name.to_string());
                }
                kept.push((name, value));
            } else if !self.names_refused {
                self.names_refused = true;
                self.event(
                    "metric_refused",
                    format!(
                        "metric {name:?} is not recorded: names are letters, digits and _ . / - (at most {} bytes), \
                         at most {} per job",
                        metrics::NAME_MAX,
                        metrics::NAMES_MAX
                    ),
                );
            }
        }
        let attempt = self.current_attempt();
        let at = super::report::record_point(&self.shared.store, self.id, attempt, step, &kept, &mut self.last_point)?;
        Some(super::report::point_update(step, at, attempt, &kept))
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
        let record = self.shared.store.transition(self.id, to, reason, unix_now(), message, edit)?;
        self.set_record(record);
        // Observed before the publish, so a client that sees the new state also sees it counted.
        if let Some(at) = self.exit_seen_at.take() {
            self.shared.metrics.exit_detection.observe(at.elapsed());
        }
        self.publish("state");
        Ok(())
    }

    fn arm_tick(&mut self, myself: &ActorRef<JobMsg>, after: Duration) {
        let now = Instant::now();
        let arm = self.wakes.stall_at(Some(now + super::grid::earlier(after)), now);
        send_wake(myself, arm);
    }

    fn arm_backoff(&mut self, myself: &ActorRef<JobMsg>, after: Duration) {
        self.backoff_generation += 1;
        let generation = self.backoff_generation;
        myself.send_after(after, move || JobMsg::BackoffOver { generation });
    }

    /// The checkpoint to resume from: a newer one found in the job's checkpoint directory (see
    /// `checkpoints`), else the latest recorded, else the one before it when the latest is gone (or
    /// is no longer a usable file or directory). A found one comes back as a `CheckpointRef` to
    /// record. Err when checkpoints were recorded but none is left: a job never silently restarts at
    /// step 0.
    async fn resume_point(&self) -> Result<Option<(PathBuf, Option<CheckpointRef>)>, String> {
        let candidates = [&self.record.latest_checkpoint, &self.record.previous_checkpoint];
        let recorded: Vec<PathBuf> = candidates.iter().filter_map(|c| c.as_ref().map(|c| c.path.clone())).collect();
        // Before the first attempt no trainer of this job has run, so its checkpoint directory (made
        // by that attempt's start) holds nothing of its own: no look, no hop to the blocking pool.
        if recorded.is_empty() && self.record.attempts.is_empty() {
            return Ok(None);
        }
        // Newer than the latest recorded one, and than the one the last attempt was given (which may
        // have just failed to load: 65 falls back to the checkpoint before it, never forward again).
        let given = self.record.attempts.last().and_then(|a| a.resumed_step);
        let floor = self.record.latest_checkpoint.as_ref().map(|c| c.step).max(given);
        let dir = self.paths.checkpoints.clone();
        let first = recorded.first().cloned();
        let found = self
            .lane
            .run("looking at the checkpoints", FILE_DEADLINE, move || {
                let discovered = super::checkpoints::newest_in(&dir)
                    .filter(|(step, path)| floor.is_none_or(|f| *step > f) && !recorded.contains(path));
                if let Some((step, path)) = discovered {
                    return Some((path.clone(), Some(CheckpointRef { path, step, epoch: 0 })));
                }
                recorded.into_iter().find(|p| untrusted::checkpoint_usable(p).is_ok()).map(|p| (p, None))
            })
            .await
            .map_err(|e| format!("cannot tell which checkpoint to resume from: {e}"))?;
        match (found, first) {
            (Some(found), _) => Ok(Some(found)),
            (None, None) => Ok(None),
            (None, Some(first)) => Err(format!(
                "checkpoint {} is missing and no earlier one is left; refusing to restart from step 0",
                first.display()
            )),
        }
    }

    async fn start(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        let (resume, discovered) = match self.resume_point().await {
            Ok(Some((path, discovered))) => (Some(path), discovered),
            Ok(None) => (None, None),
            Err(message) => {
                self.transition(JobState::Starting, Reason::Unspecified, "", |_| {})?;
                return self.finish(myself, JobState::Failed, Reason::SpawnFailed, &message, |_| {});
            }
        };
        let number = self.current_attempt() + 1;
        // A script resumed by its own argument: the newest complete checkpoint its glob matches.
        let by_rule = match (&self.record.spec.resume_rule, number > 1) {
            (Some(rule), true) => {
                let (rule, workdir) = (rule.clone(), self.workdir());
                let found = self
                    .lane
                    .run("looking for checkpoints", FILE_DEADLINE, move || {
                        super::resume::newest(&rule, &workdir, std::time::SystemTime::now())
                    })
                    .await
                    .ok()
                    .flatten();
                Some(found)
            }
            _ => None,
        };
        let extra_args = match (&self.record.spec.resume_rule, &by_rule) {
            (Some(rule), Some(Some(path))) => super::resume::arguments(rule, path),
            _ => Vec::new(),
        };
        let now = unix_now();
        // Written with the transition, before the executor acts: a Slurm job's name, so a trainerd
        // that dies before it learns the Slurm id finds the job instead of submitting a second one.
        let intent = executor::intent(&self.record.spec, self.id, number);
        let resumed_from = match &by_rule {
            Some(found) => found.clone(),
            None => resume.clone(),
        };
        let resumed_step = match &by_rule {
            Some(found) => found.as_deref().and_then(super::resume::step_of),
            None => discovered.as_ref().map(|c| c.step).or_else(|| {
                [&self.record.latest_checkpoint, &self.record.previous_checkpoint]
                    .into_iter()
                    .flatten()
                    .find(|c| Some(&c.path) == resume.as_ref())
                    .map(|c| c.step)
            }),
        };
        let message = match (&by_rule, &resume, &discovered) {
            (Some(Some(p)), _, _) => {
                format!("attempt {number}, resuming from {} ({})", p.display(), extra_args.join(" "))
            }
            (Some(None), _, _) => format!(
                "attempt {number}, {}: no complete checkpoint matches {} yet; started as submitted",
                crate::hub::FROM_THE_BEGINNING,
                self.record.spec.resume_rule.as_ref().map(|r| r.glob.as_str()).unwrap_or_default()
            ),
            (None, Some(p), Some(c)) => format!(
                "attempt {number}, resuming from {} (step {}, found in the checkpoint directory, newer than the \
                 recorded one)",
                p.display(),
                c.step
            ),
            (None, Some(p), None) => format!("attempt {number}, resuming from {}", p.display()),
            (None, None, _) => format!("attempt {number}, {}", crate::hub::FROM_THE_BEGINNING),
        };
        self.transition(JobState::Starting, Reason::Unspecified, &message, |r| {
            r.next_restart_at = None;
            if let Some(c) = &discovered {
                r.previous_checkpoint = r.latest_checkpoint.take();
                r.latest_checkpoint = Some(c.clone());
                r.step = c.step;
            }
            r.attempts.push(Attempt {
                number,
                pid: None,
                pid_start_ticks: None,
                started_at: now,
                ended_at: None,
                exit: None,
                reason: Reason::Unspecified as i32,
                resumed_from: resumed_from.clone(),
                resumed_step,
                first_step: None,
                resume_ignored: false,
                more: AttemptMore { handle: intent.clone() },
            });
        })?;
        let launch = Launch {
            id: self.id,
            paths: &self.paths,
            attempt: number,
            resume_from: resume.as_deref(),
            extra_args: &extra_args,
            heartbeat_interval: self.shared.config().heartbeat_interval,
            gpus: (!self.shared.config().gpus.is_empty()).then_some(self.live.gpus.as_slice()),
            stop_grace_ms: self.record.spec.timeouts.stop_grace_ms,
            shim: self.shared.shim.path(),
            run_as: self.record.run_as,
            rollbacks: self.record.rollbacks(),
            abort_after_submit: self.hooks.abort_after_sbatch == Some(number) && hooks::once(&self.paths.dir, "abort"),
        };
        // Two lstat calls in trainerd's own directory, as `prepare` makes: inline. Only a removal
        // (whatever a trainer put in a log's place may be a large tree) goes to the blocking pool.
        let reclaimed = if super::logfiles::logs_usable(&self.paths) {
            Vec::new()
        } else {
            let paths = self.paths.clone();
            self.lane
                .run("checking the logs", FILE_DEADLINE, move || super::logfiles::reclaim_logs(&paths))
                .await
                .unwrap_or_default()
        };
        for line in reclaimed {
            self.event("log_reclaimed", line);
        }
        // Output lines are read from the logs' ends now: an earlier attempt's lines are not this one's.
        let scanner = self.record.spec.progress_regex.as_deref().and_then(|text| {
            let regex = super::output::compile(text).ok()?;
            Some(Arc::new(std::sync::Mutex::new(super::output::Scanner::new(
                regex,
                [&self.paths.stdout, &self.paths.stderr],
            ))))
        });
        let ctx = executor::Context { slurm: &self.shared.slurm };
        let started = match executor::start(ctx, &self.record.spec, &launch).await {
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
        let executor::Started { running, end } = started;
        self.record_handle(&running);
        self.live = LiveFacts {
            pid: running.pid(),
            gpus: std::mem::take(&mut self.live.gpus),
            waiting_for: running.waiting_for(),
            ..LiveFacts::default()
        };
        self.run = Run {
            guard: self.record.spec.more.divergence.clone().map(super::guard::Guard::new),
            scanner,
            ..Run::new(Some(running), Instant::now())
        };
        self.awaiting_exit = true;
        self.watch_exit(end, number);
        self.arm_poll(myself);
        if self.live.waiting_for.is_none() {
            self.running_once_started()?;
        }
        self.arm_logs(myself);
        self.rearm(myself, Instant::now());
        self.publish("state");
        Ok(())
    }

    /// The job's working directory (its trainer directory when none was given).
    fn workdir(&self) -> PathBuf {
        if self.record.spec.workdir.as_os_str().is_empty() {
            self.paths.trainer.clone()
        } else {
            self.record.spec.workdir.clone()
        }
    }

    /// Stores the attempt's handle (its shim, or its Slurm id) and the trainer's pid and start time in
    /// the attempt, to find it again and for clients. Not fatal when the store cannot write: the shim's
    /// `shim.json` names a local attempt, and a Slurm job is found again by its name.
    fn record_handle(&mut self, running: &Running) {
        let Some(attempt) = self.record.attempts.last() else { return };
        let handle = running.handle();
        let trainer = match running {
            Running::Local(l) => l.shim.map(|i| (i.trainer_pid, i.trainer_start_ticks)),
            Running::Slurm(_) => None,
        };
        let (pid, ticks) = trainer.unwrap_or((attempt.pid, attempt.pid_start_ticks));
        if attempt.pid == pid && attempt.pid_start_ticks == ticks && (handle.is_none() || attempt.more.handle == handle)
        {
            return;
        }
        let edit = |r: &mut JobRecord| {
            if let Some(a) = r.attempts.last_mut() {
                a.pid = pid;
                a.pid_start_ticks = ticks;
                if handle.is_some() {
                    a.more.handle = handle.clone();
                }
            }
        };
        // A local attempt's `shim.json` names its shim and trainer before the trainer runs, and is
        // what a restarted trainerd finds them by: the record's copy need not be flushed on its own
        // (the Running transition flushes it). A Slurm job's id is known only here.
        let updated = match running {
            Running::Local(_) => self.shared.store.update_unflushed(self.id, edit),
            Running::Slurm(_) => self.shared.store.update(self.id, edit),
        };
        match updated {
            Ok(record) => self.set_record(record),
            Err(e) => tracing::warn!(job = %self.id, "the attempt's handle is not recorded: {e}"),
        }
    }

    /// Reads the progress file on a timer, for executors whose trainers write it where inotify does
    /// not see (another node of a network file system); also shows what the attempt waits for.
    fn arm_poll(&self, myself: &ActorRef<JobMsg>) {
        if let Some(every) = self.run.running.as_ref().and_then(Running::poll_progress) {
            let attempt = self.current_attempt();
            myself.send_after(every, move || JobMsg::Poll { attempt });
        }
    }

    /// A task that waits for the attempt's end and reports it to the Supervisor, which routes it to
    /// this job's actor (re-created, if need be).
    fn watch_exit(&self, end: End, attempt: u32) {
        let (id, parent) = (self.id, self.parent.clone());
        let ignore = self.hooks.ignore_shim_exit == Some(attempt);
        let store = self.shared.store.clone();
        tokio::spawn(async move {
            let ended = end.wait().await;
            let at = Instant::now();
            if let Some(note) = ended.note {
                tracing::info!(job = %id, "{note}");
                let event = crate::store::records::Event { at: unix_now(), kind: "executor".into(), message: note };
                if let Err(e) = store.append_event(id, &event) {
                    tracing::error!(job = %id, "cannot record event: {e}");
                }
            }
            if ignore {
                tracing::warn!(job = %id, "test hook: the end of attempt {attempt} is not reported");
                return;
            }
            parent.send(Report::Exited {
                id,
                attempt,
                status: ended.status,
                allocation_ended: ended.allocation_ended,
                at,
            });
        });
    }

    /// Mode::Restored: adopt the attempt if it still runs (a local shim by pid and start time, a Slurm
    /// job by its id or name), else resolve it from the exit record it left, else as `lost` (stopping
    /// a trainer left orphaned). `recreated`: this trainerd started the attempt, and a previous actor of
    /// the job failed.
    async fn restore(&mut self, myself: &ActorRef<JobMsg>, recreated: bool) -> Result<(), ActorProcessingErr> {
        let Some(attempt) = self.record.attempts.last().cloned() else {
            // A process state with no attempt cannot be produced by this trainerd; resolve it as lost.
            self.awaiting_exit = true;
            myself.cast(JobMsg::Exited { attempt: 0, status: None, allocation_ended: false, at: None })?;
            return Ok(());
        };
        self.awaiting_exit = true;
        self.unadopted = false;
        self.run =
            Run { first_step_noted: self.run.first_step_noted, ..Run::new(None, instant_at(attempt.started_at)) };
        let ctx = executor::Context { slurm: &self.shared.slurm };
        match executor::adopt(ctx, &self.paths, &attempt).await {
            Adopted::Alive { running, end, what } => {
                self.record_handle(&running);
                self.live.pid = running.pid();
                self.live.waiting_for = running.waiting_for();
                self.run.running = Some(running);
                self.watch_exit(end, attempt.number);
                self.arm_poll(myself);
                if recreated {
                    self.event("reattached", format!("attempt {} still runs ({what})", attempt.number));
                } else {
                    self.shared.metrics.adopted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.event("adopted", format!("re-adopted attempt {} ({what})", attempt.number));
                }
                self.resume_clock().await;
                match self.record.state() {
                    JobState::Pausing if self.run.clock.has_beaten() => {
                        self.signal_pause(myself)?;
                        self.arm_pause_timeout(myself);
                    }
                    JobState::Pausing => {
                        self.run.pause_unsignalled = true;
                        self.arm_pause_timeout(myself);
                    }
                    JobState::Stopping => {
                        let cause = match self.record.reason() {
                            Reason::Cancelled => StopCause::Cancel,
                            Reason::Stalled => StopCause::Stall,
                            Reason::Shutdown => StopCause::Shutdown,
                            // Where the divergence began is not kept across a restart of trainerd:
                            // the rollback goes to the latest recorded checkpoint before the stop.
                            Reason::Diverged => StopCause::Diverged { rollback: self.may_roll_back() },
                            _ => StopCause::PauseTimeout,
                        };
                        self.cancelled_by = self.record.cancelled_by.clone();
                        self.stop(myself, cause, "")?;
                    }
                    _ => {}
                }
                self.run.scanner = self.record.spec.progress_regex.as_deref().and_then(|text| {
                    let regex = super::output::compile(text).ok()?;
                    let logs = [self.paths.stdout.as_path(), self.paths.stderr.as_path()];
                    Some(Arc::new(std::sync::Mutex::new(super::output::Scanner::new(regex, logs))))
                });
                self.arm_tick(myself, ms(1));
                self.arm_logs(myself);
            }
            Adopted::Unknown(e) => {
                // Not known to be dead is not dead: keep the record as it is and try again later.
                self.unadopted = true;
                self.event("adopt_unknown", format!("cannot tell whether attempt {} runs: {e}", attempt.number));
            }
            Adopted::Gone { orphan } => match self.read_exit(&attempt).await {
                Some(exit) => {
                    let unseen = if recreated {
                        "before this job's actor could handle it"
                    } else {
                        "while trainerd was not watching"
                    };
                    self.event(
                        "ended_unseen",
                        format!(
                            "attempt {} ended {unseen} ({}); handled now",
                            attempt.number,
                            describe_status(exit.status)
                        ),
                    );
                    myself.cast(JobMsg::Exited {
                        attempt: attempt.number,
                        status: Some(exit.status),
                        allocation_ended: exit.allocation_ended,
                        at: None,
                    })?;
                }
                None => {
                    let message = match orphan.as_ref().and_then(Running::pid) {
                        Some(pid) => format!(
                            "the shim of attempt {} is gone without an exit record; its trainer {pid} runs \
                             unwatched and is stopped",
                            attempt.number
                        ),
                        None => format!("attempt {} and its shim vanished without an exit record", attempt.number),
                    };
                    self.run.running = orphan;
                    self.event("lost", message);
                    myself.cast(JobMsg::Exited {
                        attempt: attempt.number,
                        status: None,
                        allocation_ended: false,
                        at: None,
                    })?;
                }
            },
        }
        Ok(())
    }

    /// The attempt's exit record, read off the runtime under the file deadline.
    async fn read_exit(&self, attempt: &crate::store::records::Attempt) -> Option<executor::Exit> {
        let (paths, attempt) = (self.paths.clone(), attempt.clone());
        self.lane
            .run("reading the exit record", FILE_DEADLINE, move || executor::read_exit(&paths, &attempt))
            .await
            .ok()
            .flatten()
    }

    /// The progress file: read inline from the trainer's directory on a local disk, else on the
    /// job's lane under the file deadline.
    async fn read_progress(&self) -> Result<Progress, ReadError> {
        match self.reports.dir() {
            Some(dir) => super::read_progress_in(dir),
            None => read_progress_bounded(&self.lane, &self.paths.progress).await,
        }
    }

    /// After adoption, the stall clock starts from the progress file's own time, not from our start:
    /// a trainer silent for an hour before trainerd restarted is an hour late now.
    /// A file that cannot be read now (corrupt, or replaced mid-way) still dates the last beat by its
    /// modification time, for a trainer past its first heartbeat: otherwise the start-up grace would
    /// apply again, and a hung trainer could hide behind a corrupt file for that long.
    async fn resume_clock(&mut self) {
        match self.read_progress().await {
            Ok(progress) => {
                self.run.clock.beat_was(progress.heartbeat_seq, instant_at(progress.updated_at));
                // When the step last changed is not in the file: the deadline counts from now.
                let phase = super::stall::Phase::of(progress.state, progress.phase_timeout_s);
                self.run.clock.advance(progress.step, phase, Instant::now());
                self.live.message = progress.message.clone();
                self.live.progress = Some(progress);
            }
            Err(_) if self.record.state() != JobState::Starting => {
                let path = self.paths.progress.clone();
                let modified = self
                    .lane
                    .run("dating the progress file", FILE_DEADLINE, move || {
                        std::fs::symlink_metadata(&path)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_secs_f64())
                    })
                    .await
                    .ok()
                    .flatten();
                // No sequence number was read: any valid file that comes next counts as a beat.
                self.run.clock.alive_at(instant_at(modified.unwrap_or(self.record.updated_at)));
            }
            Err(_) => {}
        }
    }

    /// Reads the progress file (see `read_progress`) and acts on it: heartbeats,
    /// the first beat's RUNNING, checkpoints (recorded only when they are the job's own usable files),
    /// the live view. A file that cannot be used is an event, once per distinct reason; a store that
    /// cannot write leaves the record as it was, to be written with a later read.
    async fn progress_changed(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        if !self.awaiting_exit {
            return Ok(());
        }
        let progress = match self.read_progress().await {
            Ok(p) => p,
            Err(ReadError::Missing) => return Ok(()),
            Err(e) => {
                let text = e.to_string();
                if self.run.last_invalid.as_deref() != Some(text.as_str()) {
                    tracing::warn!(job = %self.id, "{text}");
                    self.event("progress_invalid", format!("{text}; ignored, the last good progress stands"));
                    self.run.last_invalid = Some(text);
                }
                return Ok(());
            }
        };
        self.run.last_invalid = None;
        self.run.file_progress = true;
        let (beat, first) = self.run.clock.beat(progress.heartbeat_seq, Instant::now());
        if beat {
            self.executor_started(myself, "its first progress arrived")?;
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
                self.note_checkpoint(checkpoint.clone()).await;
            }
        }
        let step = progress.step;
        self.run.clock.advance(step, super::stall::Phase::of(progress.state, progress.phase_timeout_s), Instant::now());
        let diverged = match (&mut self.run.guard, progress.loss) {
            (Some(guard), Some(loss)) if self.run.diverged_at.is_none() => guard.observe(step, loss),
            _ => None,
        };
        // A trainer's first records may say step 0 before it has loaded its checkpoint: neither its
        // first step nor its metrics count until it says it runs.
        let then_running = self.record.state() == JobState::Starting && beat && self.ended.is_none();
        let point = match progress.state {
            TrainerState::Starting => None,
            _ => {
                self.note_first_step(step, then_running);
                self.record_point(step, &super::report::reported_values(&progress))
            }
        };
        let written_at = progress.updated_at;
        self.live.message = progress.message.clone();
        self.live.progress = Some(progress);
        if then_running {
            match self.transition(JobState::Running, Reason::Unspecified, "first heartbeat", |_| {}) {
                Err(e) if store_unavailable(&e) => {
                    tracing::warn!(job = %self.id, "RUNNING not recorded yet: {e}");
                    self.publish_progress(point);
                }
                other => other?,
            }
        } else {
            self.publish_progress(point);
        }
        let lag = unix_now() - written_at;
        if lag.is_finite() && (0.0..3600.0).contains(&lag) {
            self.shared.metrics.progress_propagation.observe(Duration::from_secs_f64(lag));
        }
        if self.run.pause_unsignalled && beat {
            self.signal_pause(myself)?;
        }
        if let Some(divergence) = diverged {
            self.diverged(myself, divergence)?;
        }
        self.test_hooks(step).await;
        Ok(())
    }

    /// Whether one more divergence may be rolled back (the job's rule says rollback, and its rollbacks
    /// are below `max_rollbacks`).
    fn may_roll_back(&self) -> bool {
        self.record.spec.more.divergence.as_ref().is_some_and(|rule| {
            rule.on == crate::store::records::OnDivergence::Rollback && self.record.rollbacks() < rule.max_rollbacks
        })
    }

    /// The loss diverged: stop the attempt, to roll back or to fail (see `policy`).
    fn diverged(&mut self, myself: &ActorRef<JobMsg>, d: super::guard::Divergence) -> Result<(), ActorProcessingErr> {
        if self.run.stop_cause.is_some() || self.ended.is_some() || self.record.state() == JobState::Stopping {
            return Ok(());
        }
        let rollback = self.may_roll_back();
        self.run.diverged_at = Some(d.first_step);
        let then = if rollback {
            format!("rolling back to the newest checkpoint before step {}", d.first_step)
        } else {
            "failing the job (on_divergence = fail, or max_rollbacks reached)".to_string()
        };
        let message = format!("{}: {then}", d.describe());
        self.event("diverged", message.clone());
        self.stop(myself, StopCause::Diverged { rollback }, &message)
    }

    /// Before a rollback: sets aside (renames to `.diverged-NAME`) the checkpoints in the checkpoint
    /// directory from the first diverging step on, so that nothing resumes from them, and returns the
    /// newest checkpoint before it (from the directory, else the recorded ones).
    async fn roll_back_checkpoints(&mut self, first_step: u64) -> Option<CheckpointRef> {
        let dir = self.paths.checkpoints.clone();
        let recorded: Vec<CheckpointRef> =
            [&self.record.latest_checkpoint, &self.record.previous_checkpoint].into_iter().flatten().cloned().collect();
        let found = self
            .lane
            .run("setting diverged checkpoints aside", FILE_DEADLINE, move || {
                super::checkpoints::set_aside_from(&dir, first_step, recorded)
            })
            .await;
        found.ok().flatten()
    }

    /// Records a checkpoint the trainer named, if it is one trainerd may hand back to it: under the
    /// job's own directories (the trainer's directory or the job's workdir), reached without a link,
    /// and a non-empty regular file or directory. Anything else is refused with an event, once.
    async fn note_checkpoint(&mut self, checkpoint: CheckpointRef) {
        // Written while the loss had diverged (a stop's last checkpoint): never resumed from.
        if self.run.diverged_at.is_some_and(|first| checkpoint.step >= first) {
            return;
        }
        let path = checkpoint.path.clone();
        let workdir = self.record.spec.workdir.clone();
        let trainer = self.paths.trainer.clone();
        let verdict = self
            .lane
            .run("checking a checkpoint", FILE_DEADLINE, move || {
                let mut roots = vec![trainer.as_path()];
                if !workdir.as_os_str().is_empty() {
                    roots.push(workdir.as_path());
                }
                super::checkpoints::admissible(&path, &roots)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|v| v);
        if let Err(why) = verdict {
            if self.refused_checkpoint.as_ref() != Some(&checkpoint.path) {
                self.event("checkpoint_refused", format!("checkpoint at step {} refused: {why}", checkpoint.step));
                self.refused_checkpoint = Some(checkpoint.path.clone());
            }
            return;
        }
        let c = checkpoint.clone();
        let updated = self.shared.store.update(self.id, |r| {
            if r.latest_checkpoint.as_ref().map(|l| &l.path) != Some(&c.path) {
                r.previous_checkpoint = r.latest_checkpoint.take();
            }
            r.latest_checkpoint = Some(c.clone());
            r.step = c.step;
            r.epoch = c.epoch;
        });
        match updated {
            Ok(record) => {
                self.set_record(record);
                self.event("checkpoint", format!("step {} at {}", checkpoint.step, checkpoint.path.display()));
            }
            // Not recorded now; the next progress read names it again.
            Err(e) => tracing::warn!(job = %self.id, "checkpoint at step {} not recorded yet: {e}", checkpoint.step),
        }
    }

    /// The test hooks that act on progress (see `hooks`): a panic, or a wedge (this handler never
    /// returns; only the Supervisor's replacement of the actor ends it).
    async fn test_hooks(&self, step: u64) {
        if self.hooks.panic_at.is_some_and(|at| step >= at) && hooks::once(&self.paths.dir, "panic") {
            panic!("test hook: job actor {} panics at step {step}", self.id);
        }
        if self.hooks.wedge_at.is_some_and(|at| step >= at) && hooks::once(&self.paths.dir, "wedge") {
            tracing::warn!(job = %self.id, "test hook: the job's actor stops answering at step {step}");
            std::future::pending::<()>().await;
        }
    }

    /// The job's timer came: look at the logs when due, and judge the stall clock when its deadline
    /// passed (a judge that fails keeps its deadline for the message handled again), then arm the
    /// timer for what is left.
    async fn woke(&mut self, myself: &ActorRef<JobMsg>, generation: u64) -> Result<(), ActorProcessingErr> {
        let due = self.wakes.woke(generation, Instant::now());
        if due.logs && self.awaiting_exit && self.ended.is_none() {
            self.check_logs().await;
            self.arm_logs(myself);
        }
        if due.stall {
            let taken = self.wakes.judging();
            if let Err(e) = self.tick(myself).await {
                self.wakes.judge_failed(taken);
                return Err(e);
            }
        }
        send_wake(myself, self.wakes.arm(Instant::now()));
        Ok(())
    }

    /// A deadline of the stall clock may have passed: judge the readings (read the progress file and
    /// the output again before accusing the trainer: inotify events can be lost under load), stop a
    /// stalled trainer, flag a late one, and arm the next deadline.
    async fn tick(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        // A job still waiting in its executor's queue has no trainer to be late yet.
        if !self.started() || self.run.stop_cause.is_some() || self.ended.is_some() || self.live.waiting_for.is_some() {
            return Ok(());
        }
        if self.record.spec.idle_timeout_ms.is_some() {
            self.read_output_time().await;
        }
        let mut verdict = super::stall::judge(&self.limits(), &self.run.clock.readings(), Instant::now());
        if verdict.stall.is_some() {
            self.progress_changed(myself).await?;
            self.scan_output(myself).await?;
            verdict = super::stall::judge(&self.limits(), &self.run.clock.readings(), Instant::now());
        }
        if let (Some((rule, silence)), None) = (verdict.stall, self.ended) {
            let message = match rule {
                super::stall::Rule::IdleTimeout => {
                    format!("no output for {:.1} s ({}): stopping the trainer", silence.as_secs_f64(), rule.word())
                }
                super::stall::Rule::ProgressTimeout => format!(
                    "no progress for {:.1} s at step {} ({}; heartbeats went on): stopping the trainer",
                    silence.as_secs_f64(),
                    self.run.clock.step(),
                    rule.word()
                ),
                _ => format!("no heartbeat for {:.1} s ({}): stopping the trainer", silence.as_secs_f64(), rule.word()),
            };
            self.stop(myself, StopCause::Stall, &message)?;
            self.event("stalled", message);
            self.shared.metrics.heartbeat_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        if let (Some(quiet), false) = (verdict.late, self.live.stalled) {
            self.live.stalled = true;
            let interval = self.limits().late_after / 2;
            self.event(
                "heartbeat_late",
                format!("no heartbeat for {:.1} s (interval {:.1} s)", quiet.as_secs_f64(), interval.as_secs_f64()),
            );
            self.publish("state");
        }
        if let Some(next) = verdict.next {
            self.arm_tick(myself, next.max(ms(1)));
        }
        Ok(())
    }

    /// Takes the time of the trainer's latest output from its logs' modification times.
    async fn read_output_time(&mut self) {
        let paths = [self.paths.stdout.clone(), self.paths.stderr.clone()];
        let newest = self
            .lane
            .run("dating the logs", FILE_DEADLINE, move || {
                paths
                    .iter()
                    .filter_map(|p| std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok())
                    .max()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64())
            })
            .await
            .ok()
            .flatten();
        if let Some(at) = newest.map(instant_at).filter(|at| *at > self.run.clock.started()) {
            self.run.clock.output(at);
        }
    }

    /// SIGUSR1 to every process of the job that handles it, through its executor (locally: the
    /// trainer and each rank a launcher started, never a launcher or helper that would die of it;
    /// under Slurm: the job's steps). See docs/trainer-protocol.md, "Multi-process jobs".
    fn signal_pause(&mut self, _myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        let Some(running) = self.run.running.as_ref().filter(|r| r.started()) else { return Ok(()) };
        self.run.pause_unsignalled = false;
        match running.pause() {
            Ok(Delivered::Processes(sent)) if sent.is_empty() => self.event(
                "pause_unheard",
                "no process of the job handles SIGUSR1; the pause ends at the pause timeout, from the latest checkpoint"
                    .into(),
            ),
            Ok(Delivered::Processes(sent)) if sent.len() > 1 => {
                self.event("pause_signalled", format!("SIGUSR1 to {} processes of the job: {sent:?}", sent.len()))
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(job = %self.id, "cannot send the pause signal: {e}"),
        }
        Ok(())
    }

    /// The pause_timeout deadline, counted from the request: a trainer that never heartbeats (so is
    /// never signalled) or ignores SIGUSR1 is stopped when it runs out.
    fn arm_pause_timeout(&self, myself: &ActorRef<JobMsg>) {
        let attempt = self.current_attempt();
        myself.send_after(ms(self.record.spec.timeouts.pause_timeout_ms), move || JobMsg::PauseTimeout { attempt });
    }

    fn pause(&mut self, myself: &ActorRef<JobMsg>, by: &str) -> Result<Result<pb::Job, Refusal>, ActorProcessingErr> {
        let message = format!("pause requested by {by}: the trainer stops at the end of its epoch");
        if self.record.spec.protocol == Protocol::None && self.started() {
            return Ok(Err(Refusal::NotNow(format!(
                "job {} runs with protocol none: its trainer does not pause at an epoch boundary (SIGUSR1 would kill \
                 it); cancel it, or submit it with --protocol auto and the trainer protocol",
                self.id
            ))));
        }
        match self.record.state() {
            JobState::Running if self.started() && self.run.clock.has_beaten() => {
                self.transition(JobState::Pausing, Reason::Paused, &message, |_| {})?;
                self.signal_pause(myself)?;
                self.arm_pause_timeout(myself);
            }
            // Before its first heartbeat a trainer may not handle SIGUSR1 yet (its default action
            // kills): the signal goes at the first beat.
            JobState::Starting | JobState::Running if self.started() => {
                self.transition(JobState::Pausing, Reason::Paused, &message, |_| {})?;
                self.run.pause_unsignalled = true;
                self.arm_pause_timeout(myself);
            }
            JobState::Backoff => {
                let message = format!("paused by {by} while backing off; it resumes from its latest checkpoint");
                self.finish(myself, JobState::Paused, Reason::Paused, &message, |r| r.next_restart_at = None)?;
            }
            other => return Ok(Err(not_pausable(self.id, other))),
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

    /// Reconciliation of this job: an end held for the store is recorded if it can be now; an attempt
    /// whose shim is gone but whose end never reached us is resolved now; an adoption that could not
    /// tell is tried again; the heartbeat ladder is re-evaluated from the progress file. Never fails:
    /// what cannot be fixed now is left for the next pass, and the lines say what was fixed.
    async fn check(&mut self, myself: &ActorRef<JobMsg>) -> Vec<String> {
        let mut fixes = Vec::new();
        if self.ended.is_some() {
            if self.record_end(myself).await.is_ok() {
                fixes.push(format!("job {}: the end of its attempt, held for the store, is recorded now", self.id));
            }
            return fixes;
        }
        if !self.awaiting_exit {
            return fixes;
        }
        if self.unadopted {
            if let Err(e) = self.restore(myself, false).await {
                tracing::warn!(job = %self.id, "reconciliation could not restore the job: {e}");
            }
            if !self.unadopted {
                fixes.push(format!("job {}: its shim could not be observed before; now resolved", self.id));
            }
            return fixes;
        }
        let unreported = match &self.run.running {
            Some(running) => running.ended_unreported().await,
            None => None,
        };
        if let Some(ended) = unreported {
            let attempt = self.current_attempt();
            let status = ended.status.map_or("no exit record".into(), describe_status);
            let fix = match self.run.running.as_ref().and_then(Running::handle) {
                Some(crate::store::records::Handle::Slurm { job_id, .. }) => format!(
                    "job {}: attempt {attempt} (Slurm job {}) had ended unreported ({status}); its end is handled now",
                    self.id,
                    job_id.unwrap_or_default(),
                ),
                _ => format!(
                    "job {}: the shim of attempt {attempt} had ended unreported ({status}); its end is handled now",
                    self.id
                ),
            };
            if let Some(note) = ended.note {
                self.event("executor", note);
            }
            self.event("reconciled", fix.clone());
            fixes.push(fix);
            self.run.allocation_ended = ended.allocation_ended;
            self.ended = Some((ended.status, None));
            if let Err(e) = self.record_end(myself).await {
                tracing::warn!(job = %self.id, "the end found by reconciliation is held: {e}");
                self.wait_for_store(myself);
            }
            return fixes;
        }
        if self.run.stop_cause.is_none() && self.started() {
            if let Err(e) = self.tick(myself).await {
                tracing::warn!(job = %self.id, "reconciliation's heartbeat check: {e}");
            }
        }
        fixes
    }

    /// Rotates a log over its cap, as often as `log_caps` says; a rotation (and any look at a directory
    /// not on a local disk) runs on the job's lane.
    async fn check_logs(&mut self) {
        let since = self.log_caps.looking();
        let cap = self.shared.config().log_cap;
        // The common look (both logs under their cap) is two stats: inline, from the job's directory
        // on a local disk. A rotation copies, and goes to the lane.
        if let Some(dir) = &self.job_dir {
            let size = |path: &std::path::Path| {
                path.file_name().and_then(|n| n.to_str()).and_then(|n| dir.size_of(n).ok()).unwrap_or(0)
            };
            let sizes = [size(&self.paths.stdout), size(&self.paths.stderr)];
            if sizes.iter().all(|s| *s <= cap) {
                self.log_caps.took(&sizes.map(|s| (s, Looked::Fine)), since, cap);
                return;
            }
        }
        let paths = [self.paths.stdout.clone(), self.paths.stderr.clone()];
        let Ok(looked) =
            self.lane.run("checking the log sizes", FILE_DEADLINE, move || LogCaps::look(paths, cap)).await
        else {
            return;
        };
        self.log_caps.took(&looked, since, cap);
        for (_, what) in looked {
            match what {
                Looked::Rotated(path) => {
                    self.event("log_rotated", format!("{} reached its cap; older output is in .1", path.display()))
                }
                Looked::Failed(path, e) => tracing::warn!(job = %self.id, "cannot rotate {}: {e}", path.display()),
                Looked::Fine => {}
            }
        }
    }

    /// SIGTERM to the group, then SIGKILL after the stop grace.
    fn stop(&mut self, myself: &ActorRef<JobMsg>, cause: StopCause, message: &str) -> Result<(), ActorProcessingErr> {
        if !self.started() {
            return Ok(());
        }
        if self.run.stop_cause != Some(StopCause::Cancel) {
            self.run.stop_cause = Some(cause);
        }
        let reason = match cause {
            StopCause::Cancel => Reason::Cancelled,
            StopCause::Stall => Reason::Stalled,
            StopCause::PauseTimeout => Reason::Paused,
            StopCause::Shutdown => Reason::Shutdown,
            StopCause::Diverged { .. } => Reason::Diverged,
        };
        if self.record.state() != JobState::Stopping {
            let by = self.cancelled_by.clone().filter(|_| cause == StopCause::Cancel);
            self.transition(JobState::Stopping, reason, message, |r| {
                if by.is_some() {
                    r.cancelled_by = by.clone();
                }
            })?;
        }
        if let Some(running) = &self.run.running {
            running.terminate()?;
        }
        let attempt = self.current_attempt();
        myself.send_after(ms(self.record.spec.timeouts.stop_grace_ms), move || JobMsg::Kill { attempt });
        Ok(())
    }

    fn cancel(
        &mut self,
        myself: &ActorRef<JobMsg>,
        by: String,
        reply: RpcReplyPort<Result<pb::Job, Refusal>>,
    ) -> Result<(), ActorProcessingErr> {
        let state = self.record.state();
        if is_terminal(state) {
            let _ = reply.send(Err(Refusal::NotNow(format!(
                "job {} is already {}; there is nothing to cancel",
                self.id,
                trainerd_proto::state::state_word(state)
            ))));
            return Ok(());
        }
        self.cancelled_by = Some(by.clone());
        if self.hooks.cancel_without_stop && self.started() {
            // Test hook: the stop is "lost"; the record says cancelled while the trainer runs on.
            let message = format!("cancelled by {by} (test hook: the trainer was not stopped)");
            self.run.running = None;
            self.awaiting_exit = false;
            self.transition(JobState::Stopping, Reason::Cancelled, &message, |_| {})?;
            self.finish(myself, JobState::Cancelled, Reason::Cancelled, &message, |r| {
                r.cancelled_by = Some(by.clone())
            })?;
            let _ = reply.send(Ok(self.view()));
            return Ok(());
        }
        if self.started() || self.ended.is_some() {
            // Answered when the attempt's end is recorded (`finish`).
            self.cancel_replies.push(reply);
            if self.ended.is_some() {
                return Ok(());
            }
            if let Err(e) = self.stop(myself, StopCause::Cancel, &format!("cancelled by {by}")) {
                self.cancelled_by = None;
                for reply in self.cancel_replies.drain(..) {
                    let _ = reply.send(Err(answer(&e)));
                }
                return if store_unavailable(&e) { Ok(()) } else { Err(e) };
            }
            return Ok(());
        }
        let message = format!("cancelled by {by}");
        let result = self
            .finish(myself, JobState::Cancelled, Reason::Cancelled, &message, |r| r.cancelled_by = Some(by.clone()));
        match result {
            Ok(()) => {
                let _ = reply.send(Ok(self.view()));
                Ok(())
            }
            Err(e) => {
                self.cancelled_by = None;
                let _ = reply.send(Err(answer(&e)));
                if store_unavailable(&e) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Records the end of the attempt (`self.ended`) and acts on the policy's decision. Nothing of the
    /// attempt's state is dropped before the transition is written: when the store cannot write, the
    /// end stays held and this runs again on `StoreWritable`.
    async fn record_end(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        let Some((status, at)) = self.ended else { return Ok(()) };
        self.exit_seen_at = at;
        if status.is_some() {
            // The trainer's last word (completed or paused) decides an exit 0. A progress file that
            // cannot be read in time is not waited for: the end is recorded with what was read before.
            self.progress_changed(myself).await?;
            // Its last output lines too (the final step of a bar).
            self.scan_output(myself).await?;
        }
        self.live.pid = None;
        self.live.stalled = false;
        if let Some(running) = &self.run.running {
            if let Some(survivors) = running.drain().await {
                self.event("group_survivors", survivors);
            }
        }
        let now = unix_now();
        let attempt = self.record.attempts.last().cloned();
        let end = AttemptEnd {
            exit: status,
            trainer_state: self.live.progress.as_ref().map(|p| p.state),
            stopped_by_daemon: self.run.stop_cause,
            ran_for: self.run.clock.started().elapsed(),
            resumed: attempt.as_ref().is_some_and(|a| a.resumed_from.is_some()),
            allocation_ended: std::mem::take(&mut self.run.allocation_ended),
        };
        let mut history = History {
            restart_times: self.record.restart_times.clone(),
            consecutive_failures: self.record.consecutive_failures,
        };
        let decision = policy::decide(&self.record.spec.restart, &mut history, &end, now, jitter());
        let rolled_back = match (&decision, self.run.stop_cause) {
            (Decision::Restart { reason: Reason::Diverged, .. }, _) => {
                // Unknown after a restart of trainerd: the latest recorded checkpoint bounds it.
                let first = self
                    .run
                    .diverged_at
                    .or(self.record.latest_checkpoint.as_ref().map(|c| c.step.saturating_add(1)))
                    .unwrap_or(u64::MAX);
                Some(self.roll_back_checkpoints(first).await)
            }
            _ => None,
        };
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
        let result = match decision {
            Decision::Complete => {
                let digest = self.live.progress.as_ref().and_then(|p| p.weights_sha256.clone());
                let message = self.live.progress.as_ref().and_then(|p| p.message.clone()).unwrap_or("completed".into());
                self.finish(myself, JobState::Completed, Reason::Completed, &message, |r| {
                    close(r, Reason::Completed);
                    r.weights_sha256 = digest.clone();
                })
            }
            Decision::Pause => self.finish(myself, JobState::Paused, Reason::Paused, "paused with a checkpoint", |r| {
                close(r, Reason::Paused)
            }),
            Decision::Requeue => {
                let message = "queued again: trainerd stopped (shutdown_policy = stop); it resumes from its latest \
                               checkpoint";
                self.finish(myself, JobState::Queued, Reason::Shutdown, message, |r| close(r, Reason::Shutdown))
            }
            Decision::Cancel => {
                let by = self.cancelled_by.clone().unwrap_or_else(|| "unknown".into());
                let message = format!("cancelled by {by}; no process of the job is left");
                self.finish(myself, JobState::Cancelled, Reason::Cancelled, &message, |r| {
                    close(r, Reason::Cancelled);
                    r.cancelled_by = Some(by.clone());
                })
            }
            Decision::Restart { reason, delay, previous_checkpoint } => {
                let what = policy::describe(&end, reason);
                let message = format!("{what}; restarting in {:.1} s", delay.as_secs_f64());
                let at = now + delay.as_secs_f64();
                let message = match &rolled_back {
                    Some(Some(c)) => format!("{what}; from step {} ({}); restarting now", c.step, c.path.display()),
                    Some(None) => {
                        format!("{what}; no checkpoint precedes the divergence: from the start; restarting now")
                    }
                    None => message,
                };
                let written = self.transition(JobState::Backoff, reason, &message, |r| {
                    close(r, reason);
                    r.next_restart_at = Some(at);
                    if previous_checkpoint && r.previous_checkpoint.is_some() {
                        r.latest_checkpoint = r.previous_checkpoint.take();
                    }
                    if let Some(target) = &rolled_back {
                        r.latest_checkpoint = target.clone();
                        r.previous_checkpoint = None;
                    }
                });
                if written.is_ok() {
                    self.shared.metrics.restarted(trainerd_proto::json::reason_word(reason));
                    self.arm_backoff(myself, delay);
                }
                written
            }
            Decision::Fail { reason, message, exhausted } => {
                self.finish(myself, JobState::Failed, reason, &message, |r| {
                    close(r, reason);
                    r.restarts_exhausted = exhausted;
                })
            }
        };
        if let Err(e) = result {
            if store_unavailable(&e) {
                self.live.message = Some(format!(
                    "the trainer ended ({}); its end is recorded once the state store accepts writes",
                    status.map_or("its status unknown".into(), describe_status)
                ));
                self.publish("state");
            }
            return Err(e);
        }
        self.ended = None;
        self.awaiting_exit = false;
        self.run.running = None;
        self.run.stop_cause = None;
        self.wakes.clear();
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
        self.parent.send(Report::Released { id: self.id });
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
