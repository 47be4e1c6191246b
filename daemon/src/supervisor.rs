//! The Supervisor: the root actor. It owns the job registry (which JobActor runs which job), the
//! admission queue and the slots, spawns one JobActor per active job with `spawn_linked`, and
//! re-creates a JobActor that panicked from the job's stored record, so the job is neither lost nor
//! run twice.
//!
//! ```text
//! Supervisor
//!  ├── JobActor (job a)  ── trainer process group a
//!  ├── JobActor (job b)  ── trainer process group b
//!  └── ...
//! ```
//!
//! Process exits reach JobActors through here (`Exited`), so an exit is never lost while a panicked
//! actor is being re-created: a message for a job without a live actor waits in `pending`.

use crate::api::ApiError;
use crate::config::DaemonConfig;
use crate::gpus::GpuPool;
use crate::hub::{job_view, Hub, LiveFacts};
use crate::job::actor::{JobActor, JobArgs, JobMsg, Mode};
use crate::process;
use crate::store::records::{ExitStatus, JobId, JobRecord, JobSpec};
use crate::store::Store;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use trainerd_proto::state::{has_process, is_terminal, state_word};
use trainerd_proto::trainer::unix_now;
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::{JobState, Reason};

/// Messages to the Supervisor.
pub enum SupervisorMsg {
    /// A validated submission; replies with the job and whether it was created.
    Submit { spec: JobSpec, reply: RpcReplyPort<Result<(JobRecord, bool), ApiError>> },
    /// Cancel a job; the reply comes when it is CANCELLED.
    Cancel { id: JobId, by: String, reply: RpcReplyPort<Result<pb::Job, ApiError>> },
    /// Pause a job (hold it, when queued); the reply comes at once.
    Pause { id: JobId, by: String, reply: RpcReplyPort<Result<pb::Job, ApiError>> },
    /// Queue a paused job again.
    Resume { id: JobId, reply: RpcReplyPort<Result<pb::Job, ApiError>> },
    /// A trainer process ended (from its wait task).
    Exited { id: JobId, attempt: u32, status: Option<ExitStatus>, at: std::time::Instant },
    /// A JobActor finished its work (terminal or paused): its slot is free.
    Released { id: JobId },
    /// The configuration was reloaded: more slots may be free.
    Reloaded,
    /// Time to tell systemd's watchdog the actor tree is alive (sent by a timer into this loop, so a
    /// wedged Supervisor misses it).
    Watchdog,
}

/// A queued job.
#[derive(Debug, Clone, Copy)]
struct Queued {
    priority: i32,
    id: JobId,
    gpus: u32,
}

impl Queued {
    fn of(record: &JobRecord) -> Queued {
        Queued { priority: record.spec.priority, id: record.id, gpus: record.spec.gpus }
    }
}

/// What every actor and the API share.
pub struct Shared {
    pub metrics: crate::metrics::Metrics,
    pub notifier: crate::systemd::Notifier,
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    /// The configuration; SIGHUP replaces it (see `run::reload`).
    pub config: std::sync::RwLock<Arc<DaemonConfig>>,
}

impl Shared {
    /// The configuration in force.
    pub fn config(&self) -> Arc<DaemonConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The actor (configuration only).
pub struct Supervisor;

/// The Supervisor's state.
pub struct State {
    shared: Arc<Shared>,
    /// The JobActor of each active job.
    actors: HashMap<JobId, ActorRef<JobMsg>>,
    jobs_by_actor: HashMap<ActorId, JobId>,
    /// Queued jobs in admission order: higher priority first, FIFO (by id) within a priority; with
    /// the GPUs each needs.
    queue: Vec<Queued>,
    gpus: GpuPool,
    /// Messages for a job whose actor is being re-created.
    pending: HashMap<JobId, Vec<JobMsg>>,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = State;
    type Arguments = Arc<Shared>;

    /// Restores every job from the store: queued jobs queue again in their order, backoffs resume
    /// their stored countdown and count, and a job that had a process under a previous trainerd is
    /// resolved (the process, if it is still that one, is stopped; the attempt is `lost` and the
    /// restart policy decides).
    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        shared: Arc<Shared>,
    ) -> Result<State, ActorProcessingErr> {
        let shared_gpus = shared.config().gpus.clone();
        let mut state = State {
            shared,
            actors: HashMap::new(),
            jobs_by_actor: HashMap::new(),
            queue: Vec::new(),
            gpus: GpuPool::new(&shared_gpus),
            pending: HashMap::new(),
        };
        for record in state.shared.store.list()? {
            let job_state = record.state();
            if job_state == JobState::Queued {
                state.queue.push(Queued::of(&record));
            } else if job_state == JobState::Backoff {
                state.spawn_actor(&myself, Queued::of(&record), Mode::Admitted).await?;
            } else if has_process(job_state) {
                stop_orphan(&record);
                state.spawn_actor(&myself, Queued::of(&record), Mode::Lost).await?;
            }
        }
        state.sort_queue();
        state.admit(&myself).await?;
        if let Some(every) = crate::systemd::Notifier::watchdog_interval() {
            myself.send_interval(every, || SupervisorMsg::Watchdog);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Submit { spec, reply } => {
                let result = state.shared.store.create(spec, unix_now()).map_err(ApiError::from);
                if let Ok((record, true)) = &result {
                    state.queue.push(Queued::of(record));
                    state.sort_queue();
                    state.publish_queued(record);
                }
                let _ = reply.send(result);
                state.admit(&myself).await?;
            }
            SupervisorMsg::Cancel { id, by, reply } => state.cancel(id, by, reply)?,
            SupervisorMsg::Pause { id, by, reply } => state.pause(id, by, reply)?,
            SupervisorMsg::Resume { id, reply } => {
                let result = state.resume(id);
                let _ = reply.send(result);
                state.admit(&myself).await?;
            }
            SupervisorMsg::Exited { id, attempt, status, at } => {
                state.deliver(id, JobMsg::Exited { attempt, status, at: Some(at) })
            }
            SupervisorMsg::Reloaded => state.admit(&myself).await?,
            SupervisorMsg::Watchdog => {
                let status = format!("STATUS={} running, {} queued", state.actors.len(), state.queue.len());
                state.shared.notifier.notify(&format!("WATCHDOG=1\n{status}"));
            }
            SupervisorMsg::Released { id } => {
                if let Some(actor) = state.actors.remove(&id) {
                    state.jobs_by_actor.remove(&actor.get_id());
                }
                state.gpus.release(id);
                state.admit(&myself).await?;
            }
        }
        Ok(())
    }

    /// ractor's default stops the supervisor when any child ends; here a child's end is routine
    /// (a job finished) or a failure to repair (a panic: re-create the actor from the record).
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(id) = state.jobs_by_actor.remove(&cell.get_id()) else { return Ok(()) };
                state.actors.remove(&id);
                tracing::error!(job = %id, "job actor failed: {error}; re-creating it from the stored record");
                let event = crate::store::records::Event {
                    at: unix_now(),
                    kind: "actor_restarted".into(),
                    message: format!("the job's actor failed ({error}) and was re-created from the stored record"),
                };
                let _ = state.shared.store.append_event(id, &event);
                match state.shared.store.get(id)? {
                    Some(r) if !is_terminal(r.state()) && r.state() != JobState::Paused => {
                        state.spawn_actor(&myself, Queued::of(&r), Mode::Recreated).await?;
                    }
                    _ => {
                        state.gpus.release(id);
                        state.admit(&myself).await?;
                    }
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(id) = state.jobs_by_actor.remove(&cell.get_id()) {
                    state.actors.remove(&id);
                    state.gpus.release(id);
                    state.admit(&myself).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A process recorded by a previous trainerd that is still alive and still the same process (pid
/// and start time) is stopped: without a shim (live restore comes later) its exit could not be
/// observed, and two copies of one training must never run.
fn stop_orphan(record: &JobRecord) {
    let Some(attempt) = record.attempts.last() else { return };
    let (Some(pid), Some(ticks)) = (attempt.pid, attempt.pid_start_ticks) else { return };
    if process::start_ticks(pid).ok() == Some(ticks) {
        tracing::warn!(job = %record.id, pid, "stopping the trainer a previous trainerd left running");
        let _ = process::signal_group(pid, libc::SIGKILL);
    }
}

impl State {
    fn sort_queue(&mut self) {
        self.queue.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        self.publish_queue();
    }

    /// Tells the hub the queue order and what each queued job waits for.
    fn publish_queue(&self) {
        let slots = self.shared.config().slots as usize;
        let waiting = self
            .queue
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let why = if i > 0 {
                    format!("{i} job(s) ahead in the queue")
                } else if self.actors.len() >= slots {
                    format!("a free slot ({} of {slots} busy)", self.actors.len())
                } else {
                    format!("{} GPU(s) ({} free)", q.gpus, self.gpus.free())
                };
                (q.id.0, why)
            })
            .collect();
        self.shared.hub.set_queue(waiting);
    }

    fn publish_queued(&self, record: &JobRecord) {
        let position = self.shared.hub.queue_position(record.id.0);
        self.shared.hub.publish(job_view(record, &LiveFacts::default(), position), "state");
    }

    async fn spawn_actor(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        job: Queued,
        mode: Mode,
    ) -> Result<(), ActorProcessingErr> {
        let id = job.id;
        let gpus = self.gpus.assign(id, job.gpus).unwrap_or_default();
        let args = JobArgs { id, shared: self.shared.clone(), supervisor: myself.clone(), mode, gpus };
        let (actor, _) = Actor::spawn_linked(None, JobActor, args, myself.get_cell()).await?;
        self.jobs_by_actor.insert(actor.get_id(), id);
        for msg in self.pending.remove(&id).unwrap_or_default() {
            let _ = actor.cast(msg);
        }
        self.actors.insert(id, actor);
        Ok(())
    }

    /// Starts queued jobs while slots are free.
    async fn admit(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        // Strict FIFO within a priority: the head waits for its GPUs rather than being overtaken.
        while self.actors.len() < self.shared.config().slots as usize {
            let Some(head) = self.queue.first().copied() else { break };
            if head.gpus as usize > self.gpus.free() {
                break;
            }
            self.queue.remove(0);
            let event = crate::store::records::Event {
                at: unix_now(),
                kind: "admitted".into(),
                message: format!("given a slot ({} of {} busy before)", self.actors.len(), self.shared.config().slots),
            };
            self.shared.store.append_event(head.id, &event)?;
            self.spawn_actor(myself, head, Mode::Admitted).await?;
            if let Some(actor) = self.actors.get(&head.id) {
                actor.cast(JobMsg::Start)?;
            }
        }
        self.publish_queue();
        Ok(())
    }

    fn deliver(&mut self, id: JobId, msg: JobMsg) {
        match self.actors.get(&id) {
            Some(actor) => {
                // The actor died and its failure event is not handled yet: hold the message.
                if let Err(ractor::MessagingErr::SendErr(msg)) = actor.cast(msg) {
                    self.pending.entry(id).or_default().push(msg);
                }
            }
            None => self.pending.entry(id).or_default().push(msg),
        }
    }

    fn cancel(
        &mut self,
        id: JobId,
        by: String,
        reply: RpcReplyPort<Result<pb::Job, ApiError>>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(actor) = self.actors.get(&id) {
            actor.cast(JobMsg::Cancel { by, reply })?;
            return Ok(());
        }
        let message = format!("cancelled by {by}");
        let result = self.settle_idle(
            id,
            JobState::Cancelled,
            Reason::Cancelled,
            &message,
            |r| r.cancelled_by = Some(by.clone()),
            |id, state| {
                ApiError::FailedPrecondition(format!(
                    "job {id} is already {}; there is nothing to cancel",
                    state_word(state)
                ))
            },
        );
        let _ = reply.send(result);
        Ok(())
    }

    fn pause(
        &mut self,
        id: JobId,
        by: String,
        reply: RpcReplyPort<Result<pb::Job, ApiError>>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(actor) = self.actors.get(&id) {
            actor.cast(JobMsg::Pause { by, reply })?;
            return Ok(());
        }
        let message = format!("held in the queue by {by}; `trainctl resume {}` queues it again", id.0);
        let result = self.settle_idle(id, JobState::Paused, Reason::Paused, &message, |_| {}, not_pausable);
        let _ = reply.send(result);
        Ok(())
    }

    /// Moves a job without an actor (queued, or paused for a cancel) to `to`, out of the queue. A job
    /// in a state the table does not allow leaving for `to` gets `refuse`'s error.
    fn settle_idle(
        &mut self,
        id: JobId,
        to: JobState,
        reason: Reason,
        message: &str,
        edit: impl Fn(&mut JobRecord),
        refuse: impl Fn(JobId, JobState) -> ApiError,
    ) -> Result<pb::Job, ApiError> {
        let record = self.shared.store.get(id)?.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
        let from = record.state();
        if !matches!(from, JobState::Queued | JobState::Paused) || !trainerd_proto::state::can_transition(from, to) {
            return Err(refuse(id, from));
        }
        let record = self.shared.store.transition(id, to, reason, unix_now(), message, edit)?;
        self.queue.retain(|q| q.id != id);
        self.sort_queue();
        let view = job_view(&record, &LiveFacts::default(), (0, String::new()));
        self.shared.hub.publish(view.clone(), "state");
        Ok(view)
    }

    /// PAUSED → QUEUED, after checking that what it resumes from is still there.
    fn resume(&mut self, id: JobId) -> Result<pb::Job, ApiError> {
        let record = self.shared.store.get(id)?.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
        if record.state() != JobState::Paused {
            return Err(ApiError::FailedPrecondition(format!(
                "job {id} is {}; only a paused job can be resumed",
                state_word(record.state())
            )));
        }
        if let Some(checkpoint) = &record.latest_checkpoint {
            let usable = match std::fs::metadata(&checkpoint.path) {
                Ok(m) if m.is_dir() => std::fs::read_dir(&checkpoint.path).is_ok_and(|mut d| d.next().is_some()),
                Ok(m) => m.len() > 0,
                Err(_) => false,
            };
            if !usable {
                return Err(ApiError::FailedPrecondition(format!(
                    "job {id} would resume from {}, which is missing or empty; it is not started from step 0 \
                     (restore the checkpoint, or cancel the job)",
                    checkpoint.path.display()
                )));
            }
        }
        let record =
            self.shared.store.transition(id, JobState::Queued, Reason::Unspecified, unix_now(), "resumed", |_| {})?;
        self.queue.push(Queued::of(&record));
        self.sort_queue();
        let view = job_view(&record, &LiveFacts::default(), self.shared.hub.queue_position(id.0));
        self.shared.hub.publish(view.clone(), "state");
        Ok(view)
    }
}

/// The refusal for pausing a job in `state`.
pub fn not_pausable(id: JobId, state: JobState) -> ApiError {
    let what = match state {
        JobState::Paused => "is already paused".to_string(),
        JobState::Pausing => "is already pausing".to_string(),
        other => format!("is {}", state_word(other)),
    };
    ApiError::FailedPrecondition(format!(
        "job {id} {what}; only a queued, starting, running or backing-off job can be paused"
    ))
}
