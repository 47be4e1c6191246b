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

use crate::gpus::GpuPool;
use crate::hub::{job_view, LiveFacts, QueueView};
use crate::job::actor::{JobActor, JobArgs, JobMsg, Mode, Parent, Report};
use crate::refusal::{not_pausable, Refusal};
use crate::shared::Shared;
use crate::store::records::{ExitStatus, JobId, JobRecord, JobSpec, RunAs};
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
    Submit { spec: Box<JobSpec>, run_as: Option<RunAs>, reply: RpcReplyPort<Submitted> },
    /// Flush the submissions written since the last commit, then queue and acknowledge them.
    Commit,
    /// Cancel a job; the reply comes when it is CANCELLED.
    Cancel { id: JobId, by: String, reply: RpcReplyPort<Result<pb::Job, Refusal>> },
    /// Pause a job (hold it, when queued); the reply comes at once.
    Pause { id: JobId, by: String, reply: RpcReplyPort<Result<pb::Job, Refusal>> },
    /// Queue a paused job again.
    Resume { id: JobId, reply: RpcReplyPort<Result<pb::Job, Refusal>> },
    /// Queue a failed or cancelled job again, from its latest checkpoint (a user's retry); `key` makes
    /// a repeated request queue it once.
    Retry {
        id: JobId,
        from_start: bool,
        key: Option<String>,
        by: String,
        reply: RpcReplyPort<Result<pb::Job, Refusal>>,
    },
    /// A trainer process ended (from its wait task).
    Exited { id: JobId, attempt: u32, status: Option<ExitStatus>, allocation_ended: bool, at: std::time::Instant },
    /// A JobActor finished its work (terminal or paused): its slot is free.
    Released { id: JobId },
    /// The configuration was reloaded: more slots may be free.
    Reloaded,
    /// Time to tell systemd's watchdog the actor tree is alive (sent by a timer into this loop, so a
    /// wedged Supervisor misses it).
    Watchdog,
    /// Check every unfinished record against reality and fix mismatches; the timer sends it with no
    /// reply port, `trainctl reconcile` with one.
    Reconcile { reply: Option<RpcReplyPort<pb::ReconcileResponse>> },
    /// The JobActors answered their part of a reconciliation.
    ReconcileDone { report: pb::ReconcileResponse, reply: Option<RpcReplyPort<pb::ReconcileResponse>> },
    /// trainerd is stopping: apply the shutdown policy; the reply comes once no job needs an actor
    /// any more (at once under `leave`).
    Shutdown { reply: RpcReplyPort<()> },
    /// A JobActor did not answer a reconciliation in time: replace it (if it is still that actor);
    /// the reply is the new actor, if one was made.
    Unresponsive { id: JobId, actor: ActorId, reply: RpcReplyPort<Option<ActorRef<JobMsg>>> },
    /// The store was reopened and accepts writes again (from `recovery`).
    StoreRecovered,
}

/// How long a JobActor has to answer a reconciliation before it is replaced.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// What a submission comes to: the job and whether it was created (an idempotency key may name an
/// existing one), or why not.
type Submitted = Result<(JobRecord, bool), Refusal>;

/// A queued job.
#[derive(Debug, Clone, Copy)]
struct Queued {
    priority: i32,
    id: JobId,
    gpus: u32,
    /// Its attempts run under Slurm: Slurm queues it, it takes no slot or GPU of this host.
    elsewhere: bool,
}

impl Queued {
    fn of(record: &JobRecord) -> Queued {
        Queued {
            priority: record.spec.priority,
            id: record.id,
            gpus: record.spec.gpus,
            elsewhere: record.spec.more.slurm.is_some(),
        }
    }
}

/// The actor (configuration only).
pub struct Supervisor;

/// The Supervisor's state.
pub struct State {
    shared: Arc<Shared>,
    /// The JobActor of each active job.
    actors: HashMap<JobId, ActorRef<JobMsg>>,
    /// The active jobs whose attempts run elsewhere (Slurm): they hold no slot of this host.
    elsewhere: std::collections::HashSet<JobId>,
    jobs_by_actor: HashMap<ActorId, JobId>,
    /// Queued jobs in admission order: higher priority first, FIFO (by id) within a priority; with
    /// the GPUs each needs.
    queue: std::collections::VecDeque<Queued>,
    gpus: GpuPool,
    /// Messages for a job whose actor is being re-created.
    pending: HashMap<JobId, Vec<JobMsg>>,
    /// Set once trainerd is stopping: nothing more is admitted, and the reply goes out when the last
    /// actor is gone.
    shutdown: Option<Vec<RpcReplyPort<()>>>,
    /// Reconciliations so far.
    reconciliations: u64,
    /// Finished jobs a reconciliation found with nothing left running: nothing can start under them
    /// again unless they are retried (which takes them out), so the periodic pass skips them.
    settled: std::collections::HashSet<JobId>,
    /// Submissions written but not yet flushed, with their replies (see `Commit`).
    uncommitted: Vec<(Submitted, RpcReplyPort<Submitted>)>,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = State;
    type Arguments = Arc<Shared>;

    /// Restores every job from the store: queued jobs queue again in their order, backoffs resume
    /// their stored countdown and count, and a job with a process recorded gets an actor that re-adopts
    /// its shim or resolves the attempt from what the shim left (`Mode::Restored`). Then reconciles
    /// once, so that READY=1 follows a state that matches reality.
    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        shared: Arc<Shared>,
    ) -> Result<State, ActorProcessingErr> {
        let shared_gpus = shared.config().gpus.clone();
        let mut state = State {
            shared,
            actors: HashMap::new(),
            elsewhere: Default::default(),
            jobs_by_actor: HashMap::new(),
            queue: std::collections::VecDeque::new(),
            gpus: GpuPool::new(&shared_gpus),
            pending: HashMap::new(),
            shutdown: None,
            reconciliations: 0,
            settled: Default::default(),
            uncommitted: Vec::new(),
        };
        let mut restored = Vec::new();
        for record in state.shared.store.records() {
            let record = record?;
            let job_state = record.state();
            if job_state == JobState::Queued {
                state.queue.push_back(Queued::of(&record));
            } else if job_state == JobState::Backoff {
                state.spawn_actor(&myself, Queued::of(&record), Mode::Admitted).await?;
            } else if has_process(job_state) {
                state.spawn_actor(&myself, Queued::of(&record), Mode::Restored).await?;
                restored.extend(state.actors.get(&record.id).map(|a| (record.id, a.clone())));
            }
        }
        // A restored actor resolves an attempt that ended unseen with a message to itself; one round
        // trip through each mailbox means those are handled before anyone is told we are ready. All at
        // once, each within ANSWER_WITHIN: one job's files cannot hold the start-up. An actor that does
        // not answer is replaced, as reconciliation would.
        let trips: Vec<_> = restored
            .into_iter()
            .map(|(id, actor)| {
                tokio::spawn(async move {
                    let answer = actor.call(|reply| JobMsg::Check { reply }, Some(ANSWER_WITHIN)).await;
                    (id, actor.get_id(), matches!(answer, Ok(ractor::rpc::CallResult::Timeout)))
                })
            })
            .collect();
        for trip in trips {
            if let Ok((id, actor, true)) = trip.await {
                state.replace_actor(&myself, id, actor, "did not answer within 5 s at start-up").await?;
            }
        }
        state.sort_queue();
        state.admit(&myself).await?;
        if let Some(every) = crate::systemd::Notifier::watchdog_interval() {
            myself.send_interval(every, || SupervisorMsg::Watchdog);
        }
        // The first reconciliation is a full one, as the first message after start-up rather than
        // part of it: every job it could find out of place was just restored from its record, and
        // what it looks for beyond that (processes left under finished jobs) is not what clients
        // are shown, so it need not delay their first answer. It schedules the periodic ones.
        let _ = myself.cast(SupervisorMsg::Reconcile { reply: None });
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Submit { spec, run_as, reply } => {
                // Group commit: written now, flushed (and only then queued and acknowledged) by the
                // Commit message, which comes after every submission already in the mailbox.
                let result = state.shared.store.create_unflushed(*spec, run_as, unix_now()).map_err(Refusal::from);
                state.uncommitted.push((result, reply));
                if state.uncommitted.len() == 1 {
                    myself.cast(SupervisorMsg::Commit)?;
                }
            }
            SupervisorMsg::Commit => {
                let flushed = state.shared.store.flush();
                for (result, reply) in std::mem::take(&mut state.uncommitted) {
                    let result = match (&flushed, result) {
                        (Ok(()), result) => result,
                        (Err(e), Ok(_)) => {
                            Err(Refusal::Store(crate::store::StoreError::Unavailable { cause: e.to_string() }))
                        }
                        (Err(_), Err(refused)) => Err(refused),
                    };
                    if let Ok((record, true)) = &result {
                        state.enqueue(Queued::of(record));
                        state.publish_queued(record);
                    }
                    let _ = reply.send(result);
                }
                state.admit(&myself).await?;
            }
            SupervisorMsg::Cancel { id, by, reply } => state.cancel(id, by, reply)?,
            SupervisorMsg::Pause { id, by, reply } => state.pause(id, by, reply)?,
            SupervisorMsg::Resume { id, reply } => {
                let result = state.resume(id);
                let _ = reply.send(result);
                state.admit(&myself).await?;
            }
            SupervisorMsg::Retry { id, from_start, key, by, reply } => {
                let result = state.retry(id, from_start, key.as_deref(), &by);
                let _ = reply.send(result);
                state.admit(&myself).await?;
            }
            SupervisorMsg::Exited { id, attempt, status, allocation_ended, at } => {
                state.deliver(id, JobMsg::Exited { attempt, status, allocation_ended, at: Some(at) })
            }
            SupervisorMsg::Reloaded => state.admit(&myself).await?,
            SupervisorMsg::Watchdog => {
                let failure = state.shared.store.failure();
                let status = match &failure {
                    None => format!("STATUS={} running, {} queued", state.actors.len(), state.queue.len()),
                    Some(f) => format!(
                        "STATUS=degraded: the state store cannot write ({}); {} running, {} queued",
                        f.cause,
                        state.actors.len(),
                        state.queue.len()
                    ),
                };
                if failure.as_ref().is_some_and(|f| f.unrecoverable) {
                    // A store that cannot be reopened although there is room: systemd's restart is the
                    // remedy left, so the watchdog is no longer fed.
                    tracing::error!(
                        "the state store cannot be reopened; not feeding the watchdog, so systemd restarts trainerd"
                    );
                    state.shared.notifier.notify(&status);
                } else {
                    state.shared.notifier.notify(&format!("WATCHDOG=1\n{status}"));
                }
            }
            SupervisorMsg::Unresponsive { id, actor, reply } => {
                let why = format!("did not answer a reconciliation within {} s", ANSWER_WITHIN.as_secs());
                state.replace_actor(&myself, id, actor, &why).await?;
                let _ = reply.send(state.actors.get(&id).cloned());
            }
            SupervisorMsg::StoreRecovered => {
                for actor in state.actors.values() {
                    let _ = actor.cast(JobMsg::StoreWritable);
                }
                state.admit(&myself).await?;
            }
            SupervisorMsg::Released { id } => {
                if let Some(actor) = state.forget(id) {
                    state.jobs_by_actor.remove(&actor.get_id());
                }
                state.gpus.release(id);
                state.admit(&myself).await?;
            }
            SupervisorMsg::Reconcile { reply } => state.reconcile(&myself, reply).await?,
            SupervisorMsg::ReconcileDone { report, reply } => {
                let report = state.record_reconciliation(report);
                if let Some(reply) = reply {
                    let _ = reply.send(report);
                } else {
                    let every = state.shared.config().reconcile_interval;
                    myself.send_after(every, || SupervisorMsg::Reconcile { reply: None });
                }
            }
            SupervisorMsg::Shutdown { reply } => {
                let policy = state.shared.config().shutdown_policy;
                tracing::info!(?policy, jobs = state.actors.len(), "applying the shutdown policy");
                state.shutdown.get_or_insert_with(Vec::new).push(reply);
                if policy != crate::config::ShutdownPolicy::Leave {
                    for actor in state.actors.values() {
                        let _ = actor.cast(JobMsg::Shutdown { policy });
                    }
                }
                state.check_shutdown(policy);
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
                state.forget(id);
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
                    state.forget(id);
                    state.gpus.release(id);
                    state.admit(&myself).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl State {
    /// The Supervisor's part of reconciliation, over every record: a record that needs an actor has
    /// one (queued jobs are in the queue, backoffs and process states have an actor), and a job that
    /// is finished or paused has no process left. Returns how many unfinished jobs it checked and one
    /// line per fix, each also an event.
    async fn reconcile_records(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        full: bool,
    ) -> Result<(u32, Vec<String>), ActorProcessingErr> {
        let (mut checked, mut fixes) = (0, Vec::new());
        let state_dir = self.shared.config().state_dir.clone();
        let queued: std::collections::HashSet<JobId> = self.queue.iter().map(|q| q.id).collect();
        if full {
            // Rebuilt from what this pass finds: removed jobs leave the set here.
            self.settled.clear();
        }
        for id in self.shared.store.ids() {
            let id = id?;
            let has_actor = self.actors.contains_key(&id);
            // The periodic pass decodes only the records this Supervisor holds no live view of: a
            // job in its queue or with an actor is checked by that view (and the actor's own Check),
            // and a settled one cannot change. A full pass (the first, and `trainctl reconcile`)
            // reads every record.
            if !full && (has_actor || queued.contains(&id) || self.settled.contains(&id)) {
                checked += u32::from(!self.settled.contains(&id));
                continue;
            }
            let Some(record) = self.shared.store.get(id)? else { continue };
            let job_state = record.state();
            checked += u32::from(!is_terminal(job_state));
            let fix = if job_state == JobState::Queued && !has_actor && !queued.contains(&id) {
                self.enqueue(Queued::of(&record));
                Some(format!("job {id} is queued but was not in the queue; queued again in its order"))
            } else if (job_state == JobState::Backoff || has_process(job_state)) && !has_actor {
                let mode = if job_state == JobState::Backoff { Mode::Admitted } else { Mode::Restored };
                self.spawn_actor(myself, Queued::of(&record), mode).await?;
                Some(format!("job {id} is {} but had no actor; one now watches it", state_word(job_state)))
            } else if (is_terminal(job_state) || job_state == JobState::Paused) && !has_actor {
                let what = crate::divergence::Leftovers::of(&record, &state_dir).stop();
                if what.is_none() && is_terminal(job_state) {
                    self.settled.insert(id);
                }
                what.map(|what| format!("job {id} is {} but {what} still ran; stopped", state_word(job_state)))
            } else {
                None
            };
            if let Some(fix) = fix {
                tracing::warn!(job = %id, "reconciliation: {fix}");
                let event =
                    crate::store::records::Event { at: unix_now(), kind: "reconciled".into(), message: fix.clone() };
                let _ = self.shared.store.append_event(id, &event);
                fixes.push(fix);
            }
        }
        Ok((checked, fixes))
    }

    /// A reconciliation: the records here, then each JobActor checks its own process in a task
    /// (so this loop never waits on an actor), which reports back with `ReconcileDone`.
    async fn reconcile(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        reply: Option<RpcReplyPort<pb::ReconcileResponse>>,
    ) -> Result<(), ActorProcessingErr> {
        // The first reconciliation and every one a client asks for read every record.
        let full = reply.is_some() || self.reconciliations == 0;
        let (checked, mut fixes) = self.reconcile_records(myself, full).await?;
        self.admit(myself).await?;
        let actors: Vec<(JobId, ActorRef<JobMsg>)> = self.actors.iter().map(|(id, a)| (*id, a.clone())).collect();
        let supervisor = myself.clone();
        tokio::spawn(async move {
            for (id, actor) in actors {
                match actor.call(|reply| JobMsg::Check { reply }, Some(ANSWER_WITHIN)).await {
                    Ok(ractor::rpc::CallResult::Success(found)) => fixes.extend(found),
                    Ok(ractor::rpc::CallResult::Timeout) => {
                        tracing::warn!(job = %id, "reconciliation: the job's actor did not answer within 5 s; replacing it");
                        fixes.push(format!(
                            "job {id}: its actor did not answer within {} s; it was replaced by one made from the \
                             stored record",
                            ANSWER_WITHIN.as_secs()
                        ));
                        let old = actor.get_id();
                        let replaced = supervisor
                            .call(|reply| SupervisorMsg::Unresponsive { id, actor: old, reply }, Some(ANSWER_WITHIN))
                            .await;
                        // One round trip through the new actor: what it found at its start (an end the
                        // old one never handled) is handled before this reconciliation reports.
                        if let Ok(ractor::rpc::CallResult::Success(Some(new))) = replaced {
                            if let Ok(ractor::rpc::CallResult::Success(found)) =
                                new.call(|reply| JobMsg::Check { reply }, Some(ANSWER_WITHIN)).await
                            {
                                fixes.extend(found);
                            }
                        }
                    }
                    // The actor ended meanwhile (its job finished): nothing to check.
                    _ => {}
                }
            }
            let report = pb::ReconcileResponse { at: unix_now(), checked, fixes, count: 0 };
            let _ = supervisor.cast(SupervisorMsg::ReconcileDone { report, reply });
        });
        Ok(())
    }

    /// Counts a finished reconciliation and publishes it for Health.
    fn record_reconciliation(&mut self, mut report: pb::ReconcileResponse) -> pb::ReconcileResponse {
        self.reconciliations += 1;
        report.count = self.reconciliations;
        self.shared.metrics.reconcile_fixes.fetch_add(report.fixes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        *self.shared.last_reconcile.lock().unwrap_or_else(|p| p.into_inner()) = report.clone();
        report
    }

    /// Answers the shutdown request once no job needs its actor: at once under `leave`, else when
    /// every job has paused or gone back to the queue.
    fn check_shutdown(&mut self, policy: crate::config::ShutdownPolicy) {
        let done = policy == crate::config::ShutdownPolicy::Leave || self.actors.is_empty();
        if done {
            for reply in self.shutdown.as_mut().map(std::mem::take).unwrap_or_default() {
                let _ = reply.send(());
            }
        }
    }

    fn sort_queue(&mut self) {
        self.queue.make_contiguous().sort_by_key(|q| QueueView::key(q.priority, q.id.0));
        let order = self.queue.iter().map(|q| QueueView::key(q.priority, q.id.0)).collect();
        self.shared.hub.set_queue(QueueView { order, head: String::new() });
        self.publish_head();
    }

    /// Adds a job to the queue in its order (a binary search, not a sort: submissions come by the
    /// thousand).
    fn enqueue(&mut self, job: Queued) {
        self.settled.remove(&job.id);
        let key = QueueView::key(job.priority, job.id.0);
        let at = self.queue.partition_point(|q| QueueView::key(q.priority, q.id.0) < key);
        self.queue.insert(at, job);
        // The hub's copy of the order changes by the same one entry: copying the whole queue at each
        // submission made a submission's cost grow with the queue.
        self.shared.hub.queue_insert(key);
        self.publish_head();
    }

    /// Takes job `id` off the queue, if it is there.
    fn dequeue(&mut self, id: JobId) {
        if let Some(at) = self.queue.iter().position(|q| q.id == id) {
            if let Some(job) = self.queue.remove(at) {
                self.shared.hub.queue_remove(QueueView::key(job.priority, job.id.0));
            }
        }
    }

    /// Tells the hub what the queue's head waits for.
    fn publish_head(&self) {
        let slots = self.shared.config().slots as usize;
        let head = match self.queue.front() {
            None => String::new(),
            Some(_) if self.busy() >= slots => format!("a free slot ({} of {slots} busy)", self.busy()),
            Some(q) => format!("{} GPU(s) ({} free)", q.gpus, self.gpus.free()),
        };
        self.shared.hub.set_queue_head(head);
    }

    fn publish_queued(&self, record: &JobRecord) {
        let position = self.shared.hub.queue_position(record);
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
        let me = myself.clone();
        let parent = Parent::new(move |report| {
            let _ = me.cast(match report {
                Report::Exited { id, attempt, status, allocation_ended, at } => {
                    SupervisorMsg::Exited { id, attempt, status, allocation_ended, at }
                }
                Report::Released { id } => SupervisorMsg::Released { id },
            });
        });
        let args = JobArgs { id, shared: self.shared.clone(), parent, mode, gpus };
        let (actor, _) = Actor::spawn_linked(None, JobActor, args, myself.get_cell()).await?;
        self.jobs_by_actor.insert(actor.get_id(), id);
        for msg in self.pending.remove(&id).unwrap_or_default() {
            let _ = actor.cast(msg);
        }
        self.actors.insert(id, actor);
        if job.elsewhere {
            self.elsewhere.insert(id);
        }
        Ok(())
    }

    /// Starts queued jobs while slots are free (none once trainerd is stopping).
    async fn admit(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        if self.shutdown.is_some() {
            self.check_shutdown(self.shared.config().shutdown_policy);
            return Ok(());
        }
        // A start must be recorded before it happens: nothing is admitted until the store can write.
        if self.shared.store.failure().is_some() {
            return Ok(());
        }
        // Jobs Slurm runs wait in Slurm's queue, not ours: admitted at once, whatever the slots.
        let elsewhere: Vec<Queued> = self.queue.iter().filter(|q| q.elsewhere).copied().collect();
        for job in elsewhere {
            self.dequeue(job.id);
            self.start_admitted(myself, job, "admitted (Slurm queues it; it takes no slot of this host)".into())
                .await?;
        }
        // Strict FIFO within a priority: the head waits for its GPUs rather than being overtaken.
        while self.busy() < self.shared.config().slots as usize {
            let Some(head) = self.queue.front().copied() else { break };
            if head.gpus as usize > self.gpus.free() {
                break;
            }
            self.queue.pop_front();
            self.shared.hub.queue_remove(QueueView::key(head.priority, head.id.0));
            let message = format!("given a slot ({} of {} busy before)", self.busy(), self.shared.config().slots);
            self.start_admitted(myself, head, message).await?;
        }
        self.publish_head();
        Ok(())
    }

    /// Records the admission of `job` (taken off the queue), gives it an actor and starts it.
    async fn start_admitted(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        job: Queued,
        message: String,
    ) -> Result<(), ActorProcessingErr> {
        let event = crate::store::records::Event { at: unix_now(), kind: "admitted".into(), message };
        self.shared.store.append_event(job.id, &event)?;
        self.spawn_actor(myself, job, Mode::Admitted).await?;
        if let Some(actor) = self.actors.get(&job.id) {
            actor.cast(JobMsg::Start)?;
        }
        Ok(())
    }

    /// The slots of this host in use: active jobs but those Slurm runs.
    fn busy(&self) -> usize {
        self.actors.len().saturating_sub(self.elsewhere.len())
    }

    /// Forgets job `id`'s actor (gone, or being replaced); returns it.
    fn forget(&mut self, id: JobId) -> Option<ActorRef<JobMsg>> {
        self.elsewhere.remove(&id);
        self.actors.remove(&id)
    }

    fn deliver(&mut self, id: JobId, msg: JobMsg) {
        match self.actors.get(&id) {
            Some(actor) => {
                // The actor died and its failure event is not handled yet: hold the message.
                if let Err(ractor::MessagingErr::SendErr(msg)) = actor.cast(msg) {
                    self.pending.entry(id).or_default().push(msg);
                }
            }
            // Held for an actor about to be (re-)created; a job that needs none any more (finished,
            // paused) never gets one, so its late messages are dropped.
            None => {
                let needs_actor = self.shared.store.get(id).ok().flatten().is_some_and(|r| has_process(r.state()));
                if needs_actor {
                    self.pending.entry(id).or_default().push(msg);
                }
            }
        }
    }

    /// Replaces job `id`'s actor (when it is still `actor`): the old one is killed, which interrupts
    /// whatever it awaited, and a new one is made from the stored record in `Recreated` mode, which
    /// finds the attempt's shim again, or applies the end the old one never handled from the shim's
    /// exit record.
    async fn replace_actor(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: JobId,
        actor: ActorId,
        why: &str,
    ) -> Result<(), ActorProcessingErr> {
        let Some(old) = self.actors.get(&id).filter(|a| a.get_id() == actor).cloned() else { return Ok(()) };
        self.forget(id);
        self.jobs_by_actor.remove(&actor);
        old.kill();
        tracing::error!(job = %id, "the job's actor {why}; replacing it");
        let event = crate::store::records::Event {
            at: unix_now(),
            kind: "actor_replaced".into(),
            message: format!(
                "the job's actor {why}; it was stopped and a new one made from the stored record, which finds the \
                 attempt's shim again or applies its end from the shim's exit record"
            ),
        };
        let _ = self.shared.store.append_event(id, &event);
        match self.shared.store.get(id)? {
            Some(r) if !is_terminal(r.state()) && r.state() != JobState::Paused => {
                self.spawn_actor(myself, Queued::of(&r), Mode::Recreated).await?;
            }
            _ => {
                self.gpus.release(id);
                self.admit(myself).await?;
            }
        }
        Ok(())
    }

    fn cancel(
        &mut self,
        id: JobId,
        by: String,
        reply: RpcReplyPort<Result<pb::Job, Refusal>>,
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
                Refusal::NotNow(format!("job {id} is already {}; there is nothing to cancel", state_word(state)))
            },
        );
        let _ = reply.send(result);
        Ok(())
    }

    fn pause(
        &mut self,
        id: JobId,
        by: String,
        reply: RpcReplyPort<Result<pb::Job, Refusal>>,
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
        refuse: impl Fn(JobId, JobState) -> Refusal,
    ) -> Result<pb::Job, Refusal> {
        let record = self.shared.store.get(id)?.ok_or_else(|| Refusal::NotFound(format!("no job {id}")))?;
        let from = record.state();
        if !matches!(from, JobState::Queued | JobState::Paused) || !trainerd_proto::state::can_transition(from, to) {
            return Err(refuse(id, from));
        }
        let record = self.shared.store.transition(id, to, reason, unix_now(), message, edit)?;
        self.dequeue(id);
        self.publish_head();
        let view = job_view(&record, &LiveFacts::default(), (0, String::new()));
        self.shared.hub.publish(view.clone(), "state");
        Ok(view)
    }

    /// PAUSED → QUEUED (the API checked that what it resumes from is still there).
    fn resume(&mut self, id: JobId) -> Result<pb::Job, Refusal> {
        let record = self.shared.store.get(id)?.ok_or_else(|| Refusal::NotFound(format!("no job {id}")))?;
        if record.state() != JobState::Paused {
            return Err(Refusal::NotNow(format!(
                "job {id} is {}; only a paused job can be resumed",
                state_word(record.state())
            )));
        }
        let record =
            self.shared.store.transition(id, JobState::Queued, Reason::Unspecified, unix_now(), "resumed", |_| {})?;
        self.enqueue(Queued::of(&record));
        let view = job_view(&record, &LiveFacts::default(), self.shared.hub.queue_position(&record));
        self.shared.hub.publish(view.clone(), "state");
        Ok(view)
    }
}

impl State {
    fn retry(&mut self, id: JobId, from_start: bool, key: Option<&str>, by: &str) -> Result<pb::Job, Refusal> {
        if self.shared.removing(id) {
            return Err(Refusal::NotNow(format!("job {id} is being removed")));
        }
        let check = |r: &JobRecord| match (&r.latest_checkpoint, from_start) {
            (Some(c), true) => Err(crate::store::StoreError::NotRetriable(format!(
                "job {id} has a checkpoint at step {} ({}); a retry continues from it, never from step 0: drop \
                 --from-start",
                c.step,
                c.path.display()
            ))),
            (None, false) => Err(crate::store::StoreError::NotRetriable(format!(
                "job {id} has no checkpoint, so a retry starts from step 0; say so with --from-start (from_start)"
            ))),
            _ => Ok(()),
        };
        let record = self.shared.store.get(id)?.ok_or_else(|| Refusal::NotFound(format!("no job {id}")))?;
        // Its actor has recorded the end but not released the job yet: a new one must not overlap it.
        if self.actors.contains_key(&id) && is_terminal(record.state()) {
            return Err(Refusal::NotNow(format!(
                "job {id} is still ending (its processes are being stopped); retry it in a moment"
            )));
        }
        let message = match &record.latest_checkpoint {
            Some(c) => format!("retried by {by}: continues from step {} ({})", c.step, c.path.display()),
            None => format!("retried by {by}: from the start (no checkpoint)"),
        };
        let (record, retried) = self.shared.store.retry(id, key, unix_now(), &message, check)?;
        let view = job_view(&record, &LiveFacts::default(), self.shared.hub.queue_position(&record));
        if retried {
            self.enqueue(Queued::of(&record));
            self.shared.hub.publish(view.clone(), "state");
        }
        Ok(view)
    }
}
