//! The Slurm executor: each attempt is one Slurm job (`sbatch --parsable`) whose batch script runs the
//! trainer on every node through `srun` and then writes the attempt's exit record on the shared file
//! system, as the shim does locally. Slurm stays the engine (allocation, placement, multi-node
//! launch); trainerd keeps the truth.
//!
//! Where the end comes from: the exit record first (it survives `MinJobAge`, and clusters without
//! slurmdbd have no `sacct`), Slurm's state second (a job Slurm killed, for its time limit, a
//! preemption or a node failure, never writes one). What Slurm says is learned by one `squeue` call
//! for all of this trainerd's jobs per poll interval ([`Cluster`]), never one call per job.
//!
//! No duplicate after a crash: the attempt's handle (the Slurm job's name, `trainerd-<job>-<attempt>`)
//! is stored before `sbatch` runs, so a trainerd killed before it stored the id finds the job by name.

use super::{Adopted, End, Ended, Exit, Running, Started};
use crate::blocking::FILE_DEADLINE;
use crate::job::{JobPaths, Launch};
use crate::store::records::{ExitStatus, Handle, JobId, JobSpec, SlurmSpec};
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The exit record the batch script writes, in the trainer's directory (the script runs as the job's
/// user, on whichever node Slurm chose).
pub const EXIT_NAME: &str = "slurm-exit.json";

/// The longest a Slurm command may take before it counts as failed.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// The name of attempt `attempt` of job `id` in Slurm's queue: how a job is found again.
pub fn job_name(id: JobId, attempt: u32) -> String {
    format!("trainerd-{id}-{attempt}")
}

/// What Slurm last said about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not asked yet.
    Unknown,
    /// Waiting in Slurm's queue, for this reason (`Resources`, `Priority`, ...).
    Pending(String),
    /// Started (RUNNING, CONFIGURING, COMPLETING, SUSPENDED).
    Running,
    /// Ended in this state (COMPLETED, FAILED, CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL,
    /// OUT_OF_MEMORY, BOOT_FAIL, DEADLINE).
    Ended(String),
    /// No longer in `squeue` (forgotten after `MinJobAge`).
    Absent,
}

impl Seen {
    fn of(state: &str, reason: &str) -> Seen {
        match state {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" => Seen::Pending(reason.into()),
            "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "PREEMPTED" | "NODE_FAIL" | "OUT_OF_MEMORY"
            | "BOOT_FAIL" | "DEADLINE" | "SPECIAL_EXIT" | "REVOKED" => Seen::Ended(state.into()),
            _ => Seen::Running,
        }
    }

    fn over(&self) -> bool {
        matches!(self, Seen::Ended(_) | Seen::Absent)
    }
}

/// One line of `squeue -h --states=all -o '%i|%T|%r|%j'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: u64,
    pub state: String,
    pub reason: String,
    pub name: String,
}

/// Parses `squeue`'s output; lines that are not one job (array elements, garbage) are skipped.
pub fn parse_squeue(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(4, '|');
            let id = fields.next()?.parse().ok()?;
            Some(Row {
                id,
                state: fields.next()?.to_string(),
                reason: fields.next()?.to_string(),
                name: fields.next()?.to_string(),
            })
        })
        .collect()
}

/// The jobs watched, and whether a poller runs for them (both under one lock, so a job added as the
/// poller finds nothing left to watch is never missed).
#[derive(Default)]
struct Watched {
    jobs: HashMap<u64, watch::Sender<Seen>>,
    polling: bool,
}

/// This trainerd's client of the cluster: the jobs it watches and the task that asks `squeue` about
/// all of them once per poll interval. The task ends when no job is left to watch (an idle trainerd
/// asks Slurm nothing) and starts again with the next.
pub struct Cluster {
    poll: Duration,
    watched: Arc<Mutex<Watched>>,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Cluster {
    /// A client that asks Slurm every `poll`.
    pub fn new(poll: Duration) -> Cluster {
        Cluster { poll, watched: Arc::default(), poller: Mutex::new(None) }
    }

    /// What Slurm says of job `id` from now on. Starts the poller when none runs.
    fn subscribe(&self, id: u64) -> watch::Receiver<Seen> {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let receiver = match watched.jobs.get(&id) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(Seen::Unknown);
                watched.jobs.insert(id, sender);
                receiver
            }
        };
        if !watched.polling {
            watched.polling = true;
            let (shared, every) = (self.watched.clone(), self.poll);
            *self.poller.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(tokio::spawn(async move { poll(shared, every).await }));
        }
        receiver
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(poller) = self.poller.lock().unwrap_or_else(|p| p.into_inner()).take() {
            poller.abort();
        }
    }
}

/// The poller: one `squeue` per interval for every watched job; a job whose every watcher is gone
/// is no longer asked about, and with none left the poller ends.
async fn poll(watched: Arc<Mutex<Watched>>, every: Duration) {
    loop {
        let ids: Vec<u64> = {
            let mut w = watched.lock().unwrap_or_else(|p| p.into_inner());
            w.jobs.retain(|_, sender| sender.receiver_count() > 0);
            if w.jobs.is_empty() {
                w.polling = false;
                return;
            }
            w.jobs.keys().copied().collect()
        };
        match squeue().await {
            Ok(rows) => {
                let by_id: HashMap<u64, &Row> = rows.iter().map(|r| (r.id, r)).collect();
                let w = watched.lock().unwrap_or_else(|p| p.into_inner());
                for id in ids {
                    let seen = by_id.get(&id).map_or(Seen::Absent, |r| Seen::of(&r.state, &r.reason));
                    if let Some(sender) = w.jobs.get(&id) {
                        sender.send_if_modified(|old| {
                            let changed = *old != seen;
                            *old = seen.clone();
                            changed
                        });
                    }
                }
            }
            Err(e) => tracing::warn!("squeue failed ({e}); Slurm jobs' states are asked for again in {every:?}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs a Slurm command (found on PATH, with SLURM_CONF from trainerd's environment) under
/// [`COMMAND_DEADLINE`]; its stdout, or an error with its stderr.
async fn run(mut cmd: tokio::process::Command) -> io::Result<String> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let out = match tokio::time::timeout(COMMAND_DEADLINE, cmd.output()).await {
        Ok(out) => out.map_err(|e| io::Error::new(e.kind(), format!("cannot run {program}: {e}")))?,
        Err(_) => return Err(io::Error::other(format!("{program} took longer than {COMMAND_DEADLINE:?}"))),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!("{program} failed ({}): {}", out.status, stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every job in Slurm's queue (and those it still remembers as ended), by one call.
pub async fn squeue() -> io::Result<Vec<Row>> {
    let mut cmd = tokio::process::Command::new("squeue");
    cmd.args(["-h", "--states=all", "-o", "%i|%T|%r|%j"]);
    run(cmd).await.map(|text| parse_squeue(&text))
}

/// A live Slurm attempt.
pub struct SlurmJob {
    id: u64,
    name: String,
    seen: watch::Receiver<Seen>,
    poll: Duration,
    paths: JobPaths,
    attempt: u32,
}

/// The end of a Slurm attempt: Slurm says it ended (or forgot it), then the exit record.
pub struct EndOf {
    seen: watch::Receiver<Seen>,
    paths: JobPaths,
    attempt: u32,
    id: u64,
}

impl EndOf {
    /// Waits until Slurm says the job ended, then reads the batch script's exit record; without one,
    /// Slurm's state decides (see [`status_from_state`]).
    pub async fn wait(mut self) -> Ended {
        let seen = match self.seen.wait_for(Seen::over).await {
            Ok(seen) => seen.clone(),
            Err(_) => Seen::Absent,
        };
        resolve(seen, &self.paths, self.attempt, self.id).await
    }
}

/// How Slurm job `id` (attempt `attempt`) ended, Slurm having said `seen`: its exit record stands;
/// without one, Slurm's state decides.
async fn resolve(seen: Seen, paths: &JobPaths, attempt: u32, id: u64) -> Ended {
    let paths = paths.clone();
    let recorded = crate::blocking::run("reading the exit record", FILE_DEADLINE, move || read_exit(&paths, attempt))
        .await
        .ok()
        .flatten();
    let state = match &seen {
        Seen::Ended(state) => state.as_str(),
        _ => "",
    };
    let taken_back = allocation_taken_back(state);
    match (recorded, state) {
        (Some(exit), "" | "COMPLETED" | "FAILED") => {
            let note = exit
                .allocation_ended
                .then(|| format!("Slurm job {id}: its time limit came; the ranks were told to checkpoint"));
            Ended { status: Some(exit.status), allocation_ended: exit.allocation_ended, note }
        }
        (Some(exit), state) => Ended {
            status: Some(exit.status),
            allocation_ended: exit.allocation_ended || taken_back,
            note: Some(format!("Slurm job {id} ended {state}; its exit record stands")),
        },
        (None, "") => Ended {
            status: None,
            allocation_ended: false,
            note: Some(format!("Slurm job {id} is gone from squeue and left no exit record")),
        },
        (None, state) => {
            let status = status_from_state(state);
            Ended {
                status,
                allocation_ended: taken_back,
                note: Some(format!(
                    "Slurm job {id} ended {state} without an exit record ({})",
                    status.map_or("its end is unknown".into(), describe)
                )),
            }
        }
    }
}

/// Whether Slurm took the allocation back in `state` (not the trainer's failure): the job continues
/// from its latest checkpoint, apart from the restart budget.
pub fn allocation_taken_back(state: &str) -> bool {
    matches!(state, "TIMEOUT" | "PREEMPTED" | "NODE_FAIL" | "BOOT_FAIL" | "DEADLINE" | "REVOKED")
}

fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(75) => "continues from its latest checkpoint".into(),
        ExitStatus::Code(c) => format!("taken as exit {c}"),
        ExitStatus::Signal(s) => format!("taken as killed by signal {s}"),
    }
}

/// The status of an attempt Slurm ended without the batch script writing its record: a time limit,
/// a preemption, a node failure or a failed boot continue from the latest checkpoint (as exit 75
/// does); a job cancelled outside trainerd or out of memory was killed; a completed one exited 0.
pub fn status_from_state(state: &str) -> Option<ExitStatus> {
    match state {
        "TIMEOUT" | "PREEMPTED" | "NODE_FAIL" | "BOOT_FAIL" | "DEADLINE" | "REVOKED" => Some(ExitStatus::Code(75)),
        "CANCELLED" | "OUT_OF_MEMORY" => Some(ExitStatus::Signal(libc::SIGKILL)),
        "COMPLETED" => Some(ExitStatus::Code(0)),
        _ => None,
    }
}

/// Attempt `attempt`'s exit record, as the batch script wrote it (blocking). The script runs as the
/// job's user, so the record is as trustworthy as the trainer's own files: read through `untrusted`,
/// size-capped, for this attempt only.
pub fn read_exit(paths: &JobPaths, attempt: u32) -> Option<Exit> {
    #[derive(serde::Deserialize)]
    struct Record {
        attempt: u32,
        code: Option<i32>,
        signal: Option<i32>,
        #[serde(default)]
        walltime: bool,
    }
    let bytes = crate::untrusted::read_prefix(&paths.trainer.join(EXIT_NAME), 4097).ok()?;
    if bytes.len() > 4096 {
        return None;
    }
    let record: Record = serde_json::from_slice(&bytes).ok()?;
    if record.attempt != attempt {
        return None;
    }
    let status = match (record.code, record.signal) {
        (Some(code), _) => super::shell_status(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => return None,
    };
    Some(Exit { status, allocation_ended: record.walltime })
}

/// Quotes a word for `sh`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The batch script of one attempt: rank variables from Slurm's, the trainer through `srun` on every
/// node, then the exit record (atomically: written aside, then renamed). The time limit's warning
/// (`sbatch --signal=B:USR2@margin`) reaches this shell, which passes it on to the ranks as SIGTERM
/// (checkpoint, exit 75) and notes it in the record: the allocation ended, not the training.
pub fn batch_script(id: JobId, attempt: u32, command: &[String], exit_record: &Path) -> String {
    let command: Vec<String> = command.iter().map(|w| quote(w)).collect();
    let record = quote(&exit_record.display().to_string());
    let temporary = quote(&format!("{}.tmp", exit_record.display()));
    format!(
        r#"#!/bin/sh
# Written by trainerd for job {id}, attempt {attempt}: runs the trainer on every node of the
# allocation through srun, then records how it ended where trainerd reads it.
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n 1)
export MASTER_ADDR="${{first:-$(hostname)}}"
export MASTER_PORT=$((29500 + SLURM_JOB_ID % 20000))
walltime=false
trap 'walltime=true; scancel --signal=TERM "$SLURM_JOB_ID"' USR2
srun --kill-on-bad-exit=1 sh -c 'export RANK="$SLURM_PROCID" WORLD_SIZE="$SLURM_NTASKS" LOCAL_RANK="$SLURM_LOCALID" NODE_RANK="$SLURM_NODEID" LOCAL_WORLD_SIZE="${{SLURM_NTASKS_PER_NODE:-1}}"; exec "$@"' trainerd-rank {command} &
ranks=$!
while :; do
  wait "$ranks"
  code=$?
  kill -0 "$ranks" 2>/dev/null || break
done
if [ "$code" -gt 128 ]; then status="\"code\":null,\"signal\":$((code - 128))"; else status="\"code\":$code,\"signal\":null"; fi
printf '{{"attempt":{attempt},"pid":0,%s,"walltime":%s,"at":%s}}\n' "$status" "$walltime" "$(date +%s)" > {temporary} && mv -f {temporary} {record}
exit "$code"
"#,
        command = command.join(" "),
    )
}

/// The `sbatch` arguments of an attempt (before the script's path).
pub fn sbatch_args(spec: &SlurmSpec, name: &str, paths: &JobPaths, workdir: &Path) -> Vec<String> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={name}"),
        format!("--output={}", paths.stdout.display()),
        format!("--error={}", paths.stderr.display()),
        "--open-mode=append".to_string(),
        format!("--chdir={}", workdir.display()),
        "--export=ALL".to_string(),
        format!("--nodes={}", spec.nodes.max(1)),
        format!("--ntasks-per-node={}", spec.tasks_per_node.max(1)),
    ];
    if !spec.partition.is_empty() {
        args.push(format!("--partition={}", spec.partition));
    }
    if !spec.account.is_empty() {
        args.push(format!("--account={}", spec.account));
    }
    if spec.gpus_per_node > 0 {
        args.push(format!("--gpus-per-node={}", spec.gpus_per_node));
    }
    if spec.time_minutes > 0 {
        args.push(format!("--time={}", spec.time_minutes));
        if spec.signal_margin_s > 0 {
            // To the batch shell, which passes it on to the ranks as SIGTERM and notes it (see
            // `batch_script`).
            args.push(format!("--signal=B:USR2@{}", spec.signal_margin_s));
        }
    }
    args.extend(spec.args.iter().cloned());
    args
}

/// Submits attempt `launch.attempt`: the batch script in the job's directory, then `sbatch`. The
/// attempt's handle (its name) was stored before this runs.
pub async fn start(cluster: &Cluster, spec: &JobSpec, slurm: &SlurmSpec, launch: &Launch<'_>) -> io::Result<Started> {
    let switch = crate::job::prepare(spec, launch)?;
    let exit_record = launch.paths.trainer.join(EXIT_NAME);
    match std::fs::remove_file(&exit_record) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let command: Vec<String> = spec.command.iter().chain(launch.extra_args).cloned().collect();
    let script_path = launch.paths.dir.join(format!("slurm-{}.sh", launch.attempt));
    std::fs::write(&script_path, batch_script(launch.id, launch.attempt, &command, &exit_record).as_bytes())?;
    let name = job_name(launch.id, launch.attempt);
    let workdir = if spec.workdir.as_os_str().is_empty() { launch.paths.trainer.clone() } else { spec.workdir.clone() };
    let mut cmd = tokio::process::Command::new("sbatch");
    cmd.args(sbatch_args(slurm, &name, launch.paths, &workdir));
    if let Some(user) = switch {
        cmd.arg(format!("--uid={}", user.uid)).arg(format!("--gid={}", user.gid));
    }
    cmd.arg(&script_path).current_dir(&workdir);
    crate::job::trainer_env(spec, launch, switch, cmd.as_std_mut());
    let printed = run(cmd).await?;
    let id: u64 = printed
        .trim()
        .split(';')
        .next()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| io::Error::other(format!("sbatch printed {printed:?}, not a job id")))?;
    if launch.abort_after_submit {
        tracing::error!("test hook: trainerd aborts after sbatch submitted {name} as Slurm job {id}");
        std::process::abort();
    }
    Ok(started(cluster, launch.paths, launch.attempt, id, name))
}

fn started(cluster: &Cluster, paths: &JobPaths, attempt: u32, id: u64, name: String) -> Started {
    let seen = cluster.subscribe(id);
    Started {
        running: Running::Slurm(SlurmJob {
            id,
            name,
            seen: seen.clone(),
            poll: cluster.poll,
            paths: paths.clone(),
            attempt,
        }),
        end: End::Slurm(EndOf { seen, paths: paths.clone(), attempt, id }),
    }
}

/// Finds attempt `attempt` again by its Slurm id, or by its name when the id was never stored.
pub async fn adopt(cluster: &Cluster, paths: &JobPaths, attempt: u32, name: &str, id: Option<u64>) -> Adopted {
    let rows = match squeue().await {
        Ok(rows) => rows,
        Err(e) => return Adopted::Unknown(e.to_string()),
    };
    let row = match id {
        Some(id) => rows.iter().find(|r| r.id == id),
        // Newest first: a name is submitted once, but be sure to take the latest.
        None => rows.iter().filter(|r| r.name == name).max_by_key(|r| r.id),
    };
    let Some(row) = row else { return Adopted::Gone { orphan: None } };
    let seen = Seen::of(&row.state, &row.reason);
    if seen.over() {
        return Adopted::Gone { orphan: None };
    }
    let what = format!("Slurm job {} ({})", row.id, row.state.to_lowercase());
    let Started { running, end } = started(cluster, paths, attempt, row.id, name.to_string());
    Adopted::Alive { running, end, what }
}

impl SlurmJob {
    /// The handle stored in the attempt.
    pub fn handle(&self) -> Handle {
        Handle::Slurm { name: self.name.clone(), job_id: Some(self.id) }
    }

    /// `scancel --signal=SIG` to the job's steps (the ranks, not the batch shell, which must live to
    /// write the exit record). A job still pending has no step: a TERM cancels it outright.
    pub fn signal(&self, signal: &str) -> io::Result<()> {
        let id = self.id.to_string();
        let pending = matches!(*self.seen.borrow(), Seen::Pending(_) | Seen::Unknown);
        let args: Vec<String> =
            if pending && signal == "TERM" { vec![id] } else { vec![format!("--signal={signal}"), id] };
        tokio::spawn(async move {
            let mut cmd = tokio::process::Command::new("scancel");
            cmd.args(&args);
            if let Err(e) = run(cmd).await {
                tracing::warn!("scancel {args:?}: {e}");
            }
        });
        Ok(())
    }

    /// The stop grace is over: the whole job (batch shell and steps) is killed and cancelled.
    pub fn kill(&self) -> io::Result<String> {
        let id = self.id.to_string();
        tokio::spawn(async move {
            for args in [vec!["--full", "--signal=KILL", id.as_str()], vec![id.as_str()]] {
                let mut cmd = tokio::process::Command::new("scancel");
                cmd.args(&args);
                if let Err(e) = run(cmd).await {
                    tracing::warn!("scancel {args:?}: {e}");
                }
            }
        });
        Ok(format!("stop grace over: Slurm job {} killed and cancelled", self.id))
    }

    /// Nothing to drain: the end is reported only once Slurm says the job ended, when no process of
    /// it is left.
    pub async fn drain(&self) -> Option<String> {
        None
    }

    /// The job's end when Slurm says it is over (its end task reports it too, within a poll interval;
    /// this is reconciliation's way when that report was lost).
    pub async fn ended_unreported(&self) -> Option<Ended> {
        let seen = self.seen.borrow().clone();
        if !seen.over() {
            return None;
        }
        Some(resolve(seen, &self.paths, self.attempt, self.id).await)
    }

    /// Slurm's reason for a job still pending.
    pub fn waiting_for(&self) -> Option<String> {
        match &*self.seen.borrow() {
            Seen::Pending(reason) => Some(format!("Slurm job {} pending ({reason})", self.id)),
            Seen::Unknown => Some(format!("Slurm job {} submitted", self.id)),
            _ => None,
        }
    }

    /// How often the progress file is read on a timer.
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_are_read_and_garbage_is_skipped() {
        let rows = parse_squeue(
            "12|RUNNING|None|trainerd-00000000002a-1\n13_1|PENDING|x|y\nnonsense\n14|PENDING|Resources|a|b\n",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            Row { id: 12, state: "RUNNING".into(), reason: "None".into(), name: "trainerd-00000000002a-1".into() }
        );
        assert_eq!(rows[1].name, "a|b", "a name may hold the separator");
        assert_eq!(Seen::of("PENDING", "Resources"), Seen::Pending("Resources".into()));
        assert_eq!(Seen::of("COMPLETING", "None"), Seen::Running);
        assert!(Seen::of("NODE_FAIL", "None").over());
    }

    #[test]
    fn every_terminal_state_without_a_record_has_a_documented_status() {
        for (state, status) in [
            ("TIMEOUT", Some(ExitStatus::Code(75))),
            ("PREEMPTED", Some(ExitStatus::Code(75))),
            ("NODE_FAIL", Some(ExitStatus::Code(75))),
            ("BOOT_FAIL", Some(ExitStatus::Code(75))),
            ("CANCELLED", Some(ExitStatus::Signal(9))),
            ("OUT_OF_MEMORY", Some(ExitStatus::Signal(9))),
            ("COMPLETED", Some(ExitStatus::Code(0))),
            ("FAILED", None),
        ] {
            assert_eq!(status_from_state(state), status, "{state}");
        }
    }

    #[test]
    fn the_batch_script_quotes_every_word_and_records_the_end() {
        let script =
            batch_script(JobId(42), 3, &["python".into(), "it's a file.py".into()], Path::new("/s/x/slurm-exit.json"));
        assert!(script.contains(r#"trainerd-rank 'python' 'it'\''s a file.py'"#), "{script}");
        assert!(script.contains(r#"{"attempt":3,"pid":0,%s,"walltime":%s,"at":%s}"#), "{script}");
        assert!(script.contains("mv -f '/s/x/slurm-exit.json.tmp' '/s/x/slurm-exit.json'"), "{script}");
    }
}
