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
    /// A trainer process ended (from its wait task).
    Exited { id: JobId, attempt: u32, status: Option<ExitStatus> },
    /// A JobActor finished its work (terminal or paused): its slot is free.
    Released { id: JobId },
}

/// What every actor and the API share.
pub struct Shared {
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub config: Arc<DaemonConfig>,
}

/// The actor (configuration only).
pub struct Supervisor;

/// The Supervisor's state.
pub struct State {
    shared: Arc<Shared>,
    /// The JobActor of each active job.
    actors: HashMap<JobId, ActorRef<JobMsg>>,
    jobs_by_actor: HashMap<ActorId, JobId>,
    /// Queued jobs in admission order: higher priority first, FIFO (by id) within a priority.
    queue: Vec<(i32, JobId)>,
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
        let mut state = State {
            shared,
            actors: HashMap::new(),
            jobs_by_actor: HashMap::new(),
            queue: Vec::new(),
            pending: HashMap::new(),
        };
        for record in state.shared.store.list()? {
            let job_state = record.state();
            if job_state == JobState::Queued {
                state.queue.push((record.spec.priority, record.id));
            } else if job_state == JobState::Backoff {
                state.spawn_actor(&myself, record.id, Mode::Admitted).await?;
            } else if has_process(job_state) {
                stop_orphan(&record);
                state.spawn_actor(&myself, record.id, Mode::Lost).await?;
            }
        }
        state.sort_queue();
        state.admit(&myself).await?;
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
                    state.queue.push((record.spec.priority, record.id));
                    state.sort_queue();
                    state.publish_queued(record);
                }
                let _ = reply.send(result);
                state.admit(&myself).await?;
            }
            SupervisorMsg::Cancel { id, by, reply } => state.cancel(id, by, reply)?,
            SupervisorMsg::Exited { id, attempt, status } => state.deliver(id, JobMsg::Exited { attempt, status }),
            SupervisorMsg::Released { id } => {
                if let Some(actor) = state.actors.remove(&id) {
                    state.jobs_by_actor.remove(&actor.get_id());
                }
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
                let record = state.shared.store.get(id)?;
                if record.as_ref().is_some_and(|r| !is_terminal(r.state()) && r.state() != JobState::Paused) {
                    state.spawn_actor(&myself, id, Mode::Recreated).await?;
                } else {
                    state.admit(&myself).await?;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(id) = state.jobs_by_actor.remove(&cell.get_id()) {
                    state.actors.remove(&id);
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
        self.queue.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        self.shared.hub.set_queue(self.queue.iter().map(|(_, id)| id.0).collect());
    }

    fn publish_queued(&self, record: &JobRecord) {
        let position = self.shared.hub.queue_position(record.id.0);
        self.shared.hub.publish(job_view(record, &LiveFacts::default(), position), "state");
    }

    async fn spawn_actor(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: JobId,
        mode: Mode,
    ) -> Result<(), ActorProcessingErr> {
        let args = JobArgs { id, shared: self.shared.clone(), supervisor: myself.clone(), mode };
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
        while self.actors.len() < self.shared.config.slots as usize && !self.queue.is_empty() {
            let (_, id) = self.queue.remove(0);
            self.spawn_actor(myself, id, Mode::Admitted).await?;
            if let Some(actor) = self.actors.get(&id) {
                actor.cast(JobMsg::Start)?;
            }
        }
        self.shared.hub.set_queue(self.queue.iter().map(|(_, id)| id.0).collect());
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
        let Some(record) = self.shared.store.get(id)? else {
            let _ = reply.send(Err(ApiError::NotFound(format!("no job {id}"))));
            return Ok(());
        };
        let state = record.state();
        if !matches!(state, JobState::Queued | JobState::Paused) {
            let _ = reply.send(Err(ApiError::FailedPrecondition(format!(
                "job {id} is already {}; there is nothing to cancel",
                state_word(state)
            ))));
            return Ok(());
        }
        let message = format!("cancelled by {by}");
        let record =
            self.shared.store.transition(id, JobState::Cancelled, Reason::Cancelled, unix_now(), &message, |r| {
                r.cancelled_by = Some(by.clone())
            })?;
        self.queue.retain(|(_, q)| *q != id);
        self.sort_queue();
        let view = job_view(&record, &LiveFacts::default(), 0);
        self.shared.hub.publish(view.clone(), "state");
        let _ = reply.send(Ok(view));
        Ok(())
    }
}
