//! `trainerd-bench --peers`: the same scenarios against trainerd, pueue and supervisord in one run,
//! each configured as its users would (trainerd's defaults but no backoff, pueue `parallel N`,
//! supervisord `autorestart=true` with its other defaults) and each driven through its own
//! command-line client, a new process per call, as a script would. What a peer cannot do is printed
//! as such, never as a number.
//!
//! Every job is `sleep SECONDS` with SECONDS unique in the run, so that its process is found in /proc
//! by its command line whichever supervisor started it: that is how kills, survivors and duplicates
//! are counted, the same way for all three.

use crate::daemon::{bin, cpu_ticks, pss_kb, status_field};
use crate::stats::{show, Sample};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How much of everything in the side-by-side run.
pub struct PeerSize {
    pub exits: usize,
    pub restarts: usize,
    pub bursts: &'static [usize],
    pub survivors: usize,
    pub idle_window: Duration,
}

/// One job: `sleep SECONDS`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Job(u64);

impl Job {
    fn name(self) -> String {
        format!("j{}", self.0)
    }

    fn command(self) -> String {
        format!("sleep {}", self.0)
    }
}

/// Hands out jobs no other part of the run uses.
struct Jobs(u64);

impl Jobs {
    fn take(&mut self, n: usize) -> Vec<Job> {
        let first = self.0;
        self.0 += n as u64;
        (first..self.0).map(Job).collect()
    }
}

/// What a supervisor's status client shows for a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Shown {
    running: bool,
    pid: Option<u32>,
    state: String,
}

/// A supervisor under test, driven as its users drive it.
pub trait Peer {
    fn name(&self) -> &'static str;
    /// Starts the daemon on its state (kept across launches).
    fn spawn(&mut self);
    /// Adds jobs through its client; `restart`: started again after a crash where the peer can.
    fn add(&mut self, jobs: &[Job], restart: bool);
    /// One call of its status client: every job it shows, by name; None when it does not answer.
    fn status(&self) -> Option<HashMap<String, Shown>>;
    /// A process that exits once the supervisor reports `job`'s process (`pid`) gone: its stream
    /// or API, started before the kill; Err says what it lacks.
    fn stream_end(&self, job: Job, pid: u32) -> Result<Child, &'static str>;
    /// Whether it starts a job again after its process crashed.
    fn restarts(&self) -> bool;
    /// The daemon's pid, while it runs.
    fn daemon(&self) -> Option<u32>;
    /// Its helper processes (neither the daemon nor the jobs).
    fn helpers(&self) -> Vec<u32>;
    /// Sends `signal` to the daemon and waits for it to exit.
    fn stop(&mut self, signal: i32);
    /// Ends every job through its client, as a user clears up, and waits until their processes are gone.
    fn clear(&mut self, jobs: &[Job]);
}

fn run(cmd: &mut Command) -> Option<std::process::Output> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    out.status.success().then_some(out)
}

/// Every process whose command line is `sleep SECONDS` for a job of `jobs`: job → pids.
fn processes(jobs: &[Job]) -> HashMap<Job, Vec<u32>> {
    let wanted: std::collections::HashSet<u64> = jobs.iter().map(|j| j.0).collect();
    let mut found: HashMap<Job, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let mut args = cmdline.split(|b| *b == 0);
        // argv[0] as each starts it: `sleep` or a resolved `/usr/bin/sleep`.
        let (Some(program), Some(secs)) = (args.next(), args.next()) else { continue };
        if program.rsplit(|b| *b == b'/').next() != Some(b"sleep") {
            continue;
        }
        if let Some(secs) = std::str::from_utf8(secs).ok().and_then(|s| s.parse::<u64>().ok()) {
            if wanted.contains(&secs) {
                found.entry(Job(secs)).or_default().push(pid);
            }
        }
    }
    found
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this benchmark started (a job or a daemon under test).
    unsafe { libc::kill(pid as i32, sig) };
}

/// Kills every process of `jobs`.
fn kill_jobs(jobs: &[Job]) {
    for pids in processes(jobs).values() {
        for pid in pids {
            signal(*pid, libc::SIGKILL);
        }
    }
}

/// Waits until the jobs' processes are gone after a peer's own way of ending them; kills what is
/// left after 30 s (a peer that does not end its jobs must not skew the next scenario).
fn gone(jobs: &[Job]) {
    if until_processes(jobs, Duration::from_secs(30), |p| p.is_empty()).is_none() {
        kill_jobs(jobs);
    }
}

/// Waits (scanning /proc) until `done` holds for the jobs' processes; the instant it did.
fn until_processes(jobs: &[Job], limit: Duration, done: impl Fn(&HashMap<Job, Vec<u32>>) -> bool) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done(&processes(jobs)) {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Spawns until the status client answers; the time from the spawn to that first answer.
fn launch(peer: &mut dyn Peer) -> Duration {
    let started = Instant::now();
    peer.spawn();
    while started.elapsed() < Duration::from_secs(60) {
        if peer.status().is_some() {
            return started.elapsed();
        }
    }
    panic!("{} did not answer within 60 s of its start", peer.name());
}

/// A figure of one peer: measured, or what it cannot do.
type Cell = Result<(String, f64), String>;

fn cell(sample: &Sample) -> Cell {
    Ok((
        format!(
            "p50 {}, p99 {}, max {} (n={})",
            show(sample.p50()),
            show(sample.p99()),
            show(sample.max()),
            sample.len()
        ),
        sample.p50().as_secs_f64(),
    ))
}

/// One row of the side-by-side table.
pub struct Row {
    scenario: String,
    cells: Vec<(&'static str, Cell)>,
    /// Whether a lower number is better (times, memory); false for counts where more is better.
    lower_is_better: bool,
}

/// The status client shows `job` no longer running with `pid`.
fn gone_from(status: &HashMap<String, Shown>, job: Job, pid: u32) -> bool {
    match status.get(&job.name()) {
        Some(s) => !(s.running && s.pid.is_none_or(|p| p == pid)),
        None => true,
    }
}

/// SIGKILL of a job's process until the status client (a new process per call) shows it, and until
/// the peer's stream or API does.
fn exit_detection(peer: &mut dyn Peer, jobs: &mut Jobs, runs: usize) -> (Cell, Cell) {
    let mut via_status = Vec::new();
    let mut via_stream = Vec::new();
    let mut no_stream = None;
    for round in 0..runs * 2 {
        let job = jobs.take(1)[0];
        let streamed = round % 2 == 1;
        // Followed to its end on the stream, so a job that is not started again.
        peer.add(&[job], !streamed);
        let pid = wait_running(peer, job);
        let stream = if streamed { Some(peer.stream_end(job, pid)) } else { None };
        if let Some(Err(why)) = &stream {
            no_stream = Some(why.to_string());
            peer.clear(&[job]);
            continue;
        }
        // Let the stream connect and take the job's current state first.
        if stream.is_some() {
            std::thread::sleep(Duration::from_millis(200));
        }
        let killed = Instant::now();
        signal(pid, libc::SIGKILL);
        match stream {
            Some(Ok(mut child)) => {
                let _ = child.wait();
                via_stream.push(killed.elapsed());
            }
            _ => loop {
                if peer.status().is_some_and(|s| gone_from(&s, job, pid)) {
                    via_status.push(killed.elapsed());
                    break;
                }
                assert!(killed.elapsed() < Duration::from_secs(60), "{}: the kill never shown", peer.name());
            },
        }
        peer.clear(&[job]);
    }
    let stream = match no_stream {
        Some(why) => Err(why),
        None => cell(&Sample::new(via_stream)),
    };
    (cell(&Sample::new(via_status)), stream)
}

/// The pid the status client shows running for `job`, waiting for it (and for its process).
fn wait_running(peer: &dyn Peer, job: Job) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let procs = processes(&[job]);
        if let (Some(status), Some(pids)) = (peer.status(), procs.get(&job)) {
            if let Some(s) = status.get(&job.name()).filter(|s| s.running) {
                if s.pid.is_none_or(|p| pids.contains(&p)) && pids.len() == 1 {
                    return pids[0];
                }
            }
        }
        assert!(Instant::now() < deadline, "{}: {} never shown running", peer.name(), job.name());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL of a job's process until its replacement process exists.
fn restart(peer: &mut dyn Peer, jobs: &mut Jobs, runs: usize) -> Cell {
    if !peer.restarts() {
        return Err("cannot: no automatic restart (a crashed task stays failed until restarted by hand)".into());
    }
    let job = jobs.take(1)[0];
    peer.add(&[job], true);
    let mut pid = wait_running(peer, job);
    let mut times = Vec::new();
    for _ in 0..runs {
        // supervisord counts a process that ran less than startsecs (1 s) as a failed start.
        std::thread::sleep(Duration::from_millis(1100));
        let killed = Instant::now();
        signal(pid, libc::SIGKILL);
        let seen = until_processes(&[job], Duration::from_secs(60), |p| p.get(&job).is_some_and(|v| !v.contains(&pid)));
        let Some(seen) = seen else { return Err(format!("no replacement within 60 s after {} restarts", times.len())) };
        times.push(seen - killed);
        pid = processes(&[job])[&job][0];
    }
    peer.clear(&[job]);
    cell(&Sample::new(times))
}

/// CPU time of the daemon and its helpers, in clock ticks.
fn ticks(peer: &dyn Peer) -> u64 {
    peer.daemon().into_iter().chain(peer.helpers()).map(cpu_ticks).sum()
}

/// `n` jobs added through the client → all their processes running; then the memory of the daemon
/// (RSS) and of its helpers (PSS), and their CPU while the jobs run idle.
fn burst(peer: &mut dyn Peer, jobs: &mut Jobs, n: usize, idle: Duration) -> (Cell, Cell, Cell) {
    let batch = jobs.take(n);
    let started = Instant::now();
    peer.add(&batch, true);
    let all = until_processes(&batch, Duration::from_secs(300), |p| p.len() == n);
    let Some(all) = all else {
        return (Err(format!("not all {n} running within 300 s")), Err(String::new()), Err(String::new()));
    };
    let to_running = all - started;
    std::thread::sleep(Duration::from_secs(2));
    let daemon_kb = peer.daemon().and_then(|p| status_field(p, "VmRSS")).unwrap_or(0);
    let helpers = peer.helpers();
    let helpers_kb: u64 = helpers.iter().filter_map(|p| pss_kb(*p)).sum();
    let before = ticks(peer);
    let hz = 100.0; // USER_HZ on Linux
    std::thread::sleep(idle);
    let cpu = (ticks(peer) - before) as f64 / hz / idle.as_secs_f64() * 100.0;
    peer.clear(&batch);
    let mib = |kb: u64| kb as f64 / 1024.0;
    (
        Ok((show(to_running), to_running.as_secs_f64())),
        Ok((
            format!(
                "{:.1} MiB (daemon RSS {:.1} + {} helpers' PSS {:.1})",
                mib(daemon_kb + helpers_kb),
                mib(daemon_kb),
                helpers.len(),
                mib(helpers_kb)
            ),
            mib(daemon_kb + helpers_kb),
        )),
        Ok((format!("{cpu:.2}% of a core"), cpu)),
    )
}

/// The daemon stopped by `sig` with `n` jobs running, then started again: how many job processes
/// outlived it, the time from its start to its client's first answer, what it shows then, and how
/// many second copies it started.
fn daemon_stop(peer: &mut dyn Peer, jobs: &mut Jobs, n: usize, sig: i32) -> [Cell; 4] {
    let batch = jobs.take(n);
    peer.add(&batch, true);
    until_processes(&batch, Duration::from_secs(120), |p| p.len() == n).expect("jobs running");
    for job in &batch {
        wait_running(peer, *job);
    }
    let before = processes(&batch);
    peer.stop(sig);
    std::thread::sleep(Duration::from_millis(500));
    let survivors: Vec<u32> =
        processes(&batch).values().flatten().copied().filter(|p| before.values().flatten().any(|b| b == p)).collect();
    let first_answer = launch(peer);
    // Give it the time to start what it would start again.
    std::thread::sleep(Duration::from_secs(3));
    let after = processes(&batch);
    // A second copy runs beside a surviving first; a job whose process died is merely started again.
    let (mut duplicates, mut again) = (0, 0);
    for pids in after.values() {
        let fresh = pids.iter().filter(|p| !survivors.contains(p)).count();
        if pids.iter().any(|p| survivors.contains(p)) {
            duplicates += fresh;
        } else {
            again += fresh;
        }
    }
    let status = peer.status().unwrap_or_default();
    let mut shown: HashMap<String, usize> = HashMap::new();
    for job in &batch {
        let state = status.get(&job.name()).map(|s| s.state.clone()).unwrap_or_else(|| "not shown".into());
        let alive = after.get(job).is_some_and(|p| !p.is_empty());
        let true_or_not = match (status.get(&job.name()).is_some_and(|s| s.running), alive) {
            (true, true) | (false, false) => "",
            (true, false) => " (wrong: not running)",
            (false, true) => " (wrong: its process runs)",
        };
        *shown.entry(format!("{state}{true_or_not}")).or_default() += 1;
    }
    let mut shown: Vec<String> = shown.into_iter().map(|(s, k)| format!("{k} {s}")).collect();
    shown.sort();
    peer.clear(&batch);
    [
        Ok((format!("{} of {n}", survivors.len()), survivors.len() as f64)),
        Ok((show(first_answer), first_answer.as_secs_f64())),
        Ok((shown.join(", "), 0.0)),
        Ok((format!("{duplicates} ({again} started again, their first gone)"), duplicates as f64)),
    ]
}

/// The whole side-by-side run: every scenario on each peer; the rows of the table.
pub fn compare(size: &PeerSize, peers: &mut [Box<dyn Peer>]) -> Vec<Row> {
    let mut jobs = Jobs(7_000_000 + u64::from(std::process::id()) * 1_000);
    let mut rows: Vec<Row> = Vec::new();
    let put = |rows: &mut Vec<Row>, scenario: String, lower: bool, name: &'static str, c: Cell| match rows
        .iter_mut()
        .find(|r| r.scenario == scenario)
    {
        Some(r) => r.cells.push((name, c)),
        None => rows.push(Row { scenario, cells: vec![(name, c)], lower_is_better: lower }),
    };
    for peer in peers.iter_mut() {
        let peer = peer.as_mut();
        let name = peer.name();
        eprintln!("peers: {name} ...");
        let first = launch(peer);
        let (status, stream) = exit_detection(peer, &mut jobs, size.exits);
        put(
            &mut rows,
            "exit detection: SIGKILL → its status client (a new process per call) shows it".into(),
            true,
            name,
            status,
        );
        put(&mut rows, "exit detection: SIGKILL → its stream or API reports it".into(), true, name, stream);
        put(
            &mut rows,
            "crash → replacement process started".into(),
            true,
            name,
            restart(peer, &mut jobs, size.restarts),
        );
        for &n in size.bursts {
            let (t, mem, cpu) = burst(peer, &mut jobs, n, size.idle_window);
            put(&mut rows, format!("{n} jobs added through the client → all running"), true, name, t);
            put(&mut rows, format!("memory with {n} jobs running, helpers counted"), true, name, mem);
            put(&mut rows, format!("CPU with {n} jobs running, idle"), true, name, cpu);
        }
        put(&mut rows, "start → first answer (empty state)".into(), true, name, Ok((show(first), first.as_secs_f64())));
        for (sig, what) in [(libc::SIGKILL, "SIGKILL"), (libc::SIGTERM, "graceful stop (SIGTERM)")] {
            let n = size.survivors;
            let [alive, answer, shown, dups] = daemon_stop(peer, &mut jobs, n, sig);
            put(&mut rows, format!("daemon {what} with {n} jobs running: jobs that live on"), false, name, alive);
            put(&mut rows, format!("… after the {what}, restarted: start → first answer"), true, name, answer);
            put(&mut rows, format!("… after the {what}: what it shows for the {n} jobs"), true, name, shown);
            put(&mut rows, format!("… after the {what}: second copies it started (duplicates)"), true, name, dups);
        }
        peer.stop(libc::SIGTERM);
    }
    rows
}

/// Prints the table: each peer's figure and, for trainerd, its ratio to the best peer; `hang` is
/// trainerd's hang detection figure (the peers have no notion of progress to measure it by).
pub fn print(rows: &[Row], hang: &str) {
    let names: Vec<&str> = rows.first().map(|r| r.cells.iter().map(|(n, _)| *n).collect()).unwrap_or_default();
    println!("| scenario | {} | trainerd vs the best peer |", names.join(" | "));
    println!("|---{}|---|", "|---".repeat(names.len()));
    for row in rows {
        let cells: Vec<String> = row
            .cells
            .iter()
            .map(|(_, c)| match c {
                Ok((text, _)) => text.clone(),
                Err(why) => why.clone(),
            })
            .collect();
        let ours = row.cells.iter().find(|(n, _)| *n == "trainerd").and_then(|(_, c)| c.as_ref().ok()).map(|(_, v)| *v);
        let best = row
            .cells
            .iter()
            .filter(|(n, _)| *n != "trainerd")
            .filter_map(|(_, c)| c.as_ref().ok().map(|(_, v)| *v))
            .fold(None, |b: Option<f64>, v| {
                Some(match b {
                    None => v,
                    Some(b) if row.lower_is_better => b.min(v),
                    Some(b) => b.max(v),
                })
            });
        let ratio = match (ours, best) {
            (Some(o), Some(b)) if o > 0.0 && b > 0.0 && row.lower_is_better => {
                format!("{:.1}× {}", (b / o).max(o / b), if o <= b { "better" } else { "worse" })
            }
            _ => "".into(),
        };
        println!("| {} | {} | {ratio} |", row.scenario, cells.join(" | "));
    }
    let cannot = "cannot: shown running for as long as the process lives (no notion of progress)";
    let peers = names.iter().filter(|n| **n != "trainerd").map(|_| cannot).collect::<Vec<_>>().join(" | ");
    println!(
        "| a hung trainer (alive, silent) → stopped and restarted | heartbeat timeout (1 s): {hang} | {peers} | |"
    );
}

/// A daemon under test, while it runs; killed when dropped, so a run that fails midway leaves none behind.
struct Spawned(Option<Child>);

impl Spawned {
    fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Sends `sig` and waits for the exit.
    fn stop(&mut self, sig: i32) {
        if let Some(mut child) = self.0.take() {
            signal(child.id(), sig);
            let _ = child.wait();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop(libc::SIGKILL);
    }
}

/// trainerd through trainctl.
pub struct Trainerd {
    dir: tempfile::TempDir,
    child: Spawned,
}

impl Trainerd {
    pub fn new() -> Trainerd {
        Trainerd {
            dir: tempfile::Builder::new().prefix("peers-trainerd").tempdir().expect("tempdir"),
            child: Spawned(None),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("trainerd.sock")
    }

    fn trainctl(&self) -> Command {
        let mut cmd = Command::new(bin("trainctl"));
        cmd.arg("--socket").arg(self.socket());
        cmd
    }
}

impl Peer for Trainerd {
    fn clear(&mut self, jobs: &[Job]) {
        let names: std::collections::HashSet<String> = jobs.iter().map(|j| j.name()).collect();
        let listed = run(self.trainctl().args(["--json", "ls", "--limit", "100000"]))
            .and_then(|o| serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).ok())
            .unwrap_or_default();
        for job in listed {
            let ended = matches!(job["state"].as_str(), Some("completed" | "failed" | "cancelled"));
            if let (Some(id), Some(name)) = (job["id"].as_str(), job["name"].as_str()) {
                if names.contains(name) && !ended {
                    let _ = run(self.trainctl().args(["cancel", id]));
                }
            }
        }
        gone(jobs);
    }

    fn name(&self) -> &'static str {
        "trainerd"
    }

    fn spawn(&mut self) {
        let child = Command::new(bin("trainerd"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--socket")
            .arg(self.socket())
            .args(["--gpus", "none", "--slots", "1000"])
            .env("TRAINERD_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn trainerd");
        self.child = Spawned(Some(child));
    }

    fn add(&mut self, jobs: &[Job], restart: bool) {
        let on_failure = if restart { "restart" } else { "fail" };
        for job in jobs {
            let seconds = job.0.to_string();
            let args = ["submit", "--name", &job.name(), "--on-failure", on_failure, "--max-restarts", "1000000"];
            let no_backoff = ["--backoff-base", "1ms", "--backoff-max", "1ms", "--", "sleep", &seconds];
            let out = run(self.trainctl().args(args).args(no_backoff));
            assert!(out.is_some(), "trainctl submit failed");
        }
    }

    fn status(&self) -> Option<HashMap<String, Shown>> {
        let out = run(self.trainctl().args(["--json", "ls", "--limit", "100000"]))?;
        let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            jobs.into_iter()
                .filter_map(|j| {
                    let state = j["state"].as_str()?.to_string();
                    let pid = j["pid"].as_u64().map(|p| p as u32);
                    Some((j["name"].as_str()?.to_string(), Shown { running: state == "running", pid, state }))
                })
                .collect(),
        )
    }

    fn stream_end(&self, job: Job, pid: u32) -> Result<Child, &'static str> {
        // `trainctl watch` follows the job to its end (the job does not restart: the kill ends it).
        let _ = pid;
        let id = run(self.trainctl().args(["--json", "ls", "--name", &job.name()]))
            .and_then(|o| serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).ok())
            .and_then(|v| v.first().and_then(|j| j["id"].as_str().map(str::to_string)))
            .ok_or("no job")?;
        self.trainctl()
            .args(["watch", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|_| "trainctl watch did not start")
    }

    fn restarts(&self) -> bool {
        true
    }

    fn daemon(&self) -> Option<u32> {
        self.child.pid()
    }

    fn helpers(&self) -> Vec<u32> {
        let marker = self.dir.path().display().to_string();
        crate::daemon::processes_with(&marker)
            .into_iter()
            .filter(|p| crate::daemon::comm(*p) == "trainerd-shim")
            .collect()
    }

    fn stop(&mut self, sig: i32) {
        self.child.stop(sig);
    }
}

/// A directory named by `TRAINERD_PEERS` (scripts/bench.sh --peers installs pueue and supervisord there).
fn peers_dir() -> PathBuf {
    std::env::var_os("TRAINERD_PEERS")
        .map(PathBuf::from)
        .expect("TRAINERD_PEERS: the directory scripts/bench.sh --peers installs the peers into")
}

/// pueue 4 (`pueued` and its client `pueue`), with `parallel` high enough for every job.
pub struct Pueue {
    dir: tempfile::TempDir,
    child: Spawned,
}

impl Pueue {
    pub fn new() -> Pueue {
        let dir = tempfile::Builder::new().prefix("peers-pueue").tempdir().expect("tempdir");
        let d = dir.path().display();
        let config = format!(
            "shared:\n  pueue_directory: {d}/data\n  runtime_directory: {d}/run\n  use_unix_socket: true\n  unix_socket_path: {d}/run/pueue.sock\ndaemon:\n  callback: null\nclient: {{}}\n"
        );
        std::fs::create_dir_all(dir.path().join("run")).expect("pueue run dir");
        std::fs::write(dir.path().join("pueue.yml"), config).expect("pueue config");
        Pueue { dir, child: Spawned(None) }
    }

    fn client(&self) -> Command {
        let mut cmd = Command::new(peers_dir().join("bin/pueue"));
        cmd.arg("-c").arg(self.dir.path().join("pueue.yml"));
        cmd
    }
}

impl Peer for Pueue {
    fn clear(&mut self, jobs: &[Job]) {
        let _ = run(self.client().args(["kill", "--all"]));
        gone(jobs);
        let _ = run(self.client().arg("clean"));
    }

    fn name(&self) -> &'static str {
        "pueue"
    }

    fn spawn(&mut self) {
        let child = Command::new(peers_dir().join("bin/pueued"))
            .arg("-c")
            .arg(self.dir.path().join("pueue.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pueued");
        self.child = Spawned(Some(child));
    }

    fn add(&mut self, jobs: &[Job], _restart: bool) {
        // As its users do: enough parallel slots for what runs at once, then one `pueue add` each.
        run(self.client().args(["parallel", "1000"])).expect("pueue parallel");
        for job in jobs {
            run(self.client().args(["add", "--label", &job.name(), "--", &job.command()])).expect("pueue add");
        }
    }

    fn status(&self) -> Option<HashMap<String, Shown>> {
        let out = run(self.client().args(["status", "--json"]))?;
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let tasks = value["tasks"].as_object()?;
        Some(
            tasks
                .values()
                .filter_map(|t| {
                    let label = t["label"].as_str()?.to_string();
                    let state = match &t["status"] {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Object(o) => match o.iter().next() {
                            Some((k, v)) if k == "Done" => format!(
                                "Done({})",
                                v["result"].as_str().map(str::to_string).unwrap_or_else(|| v["result"].to_string())
                            ),
                            Some((k, _)) => k.clone(),
                            None => "?".into(),
                        },
                        other => other.to_string(),
                    };
                    Some((label, Shown { running: state == "Running", pid: None, state }))
                })
                .collect(),
        )
    }

    fn stream_end(&self, job: Job, _pid: u32) -> Result<Child, &'static str> {
        let id = self.status_ids().get(&job.name()).copied().ok_or("no task")?;
        self.client()
            .args(["wait", &id.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|_| "pueue wait did not start")
    }

    fn restarts(&self) -> bool {
        false
    }

    fn daemon(&self) -> Option<u32> {
        self.child.pid()
    }

    fn helpers(&self) -> Vec<u32> {
        // The shells pueue runs each task's command line through.
        let Some(daemon) = self.daemon() else { return Vec::new() };
        children(daemon).into_iter().filter(|p| crate::daemon::comm(*p) != "sleep").collect()
    }

    fn stop(&mut self, sig: i32) {
        self.child.stop(sig);
    }
}

impl Pueue {
    /// Task ids by label.
    fn status_ids(&self) -> HashMap<String, u64> {
        let out = run(self.client().args(["status", "--json"])).expect("pueue status");
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pueue status --json");
        value["tasks"]
            .as_object()
            .map(|t| t.values().filter_map(|t| Some((t["label"].as_str()?.to_string(), t["id"].as_u64()?))).collect())
            .unwrap_or_default()
    }
}

/// The direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let path = task.path().join("children");
        if let Ok(list) = std::fs::read_to_string(path) {
            found.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    found
}

/// supervisord 4 and supervisorctl: one program section per job (`autorestart=true`), added by
/// `supervisorctl update` as its users add programs.
pub struct Supervisord {
    dir: tempfile::TempDir,
    child: Spawned,
}

impl Supervisord {
    pub fn new() -> Supervisord {
        let dir = tempfile::Builder::new().prefix("peers-supervisord").tempdir().expect("tempdir");
        let d = dir.path().display();
        let config = format!(
            "[unix_http_server]\nfile={d}/supervisor.sock\n\n[supervisord]\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}/logs\nnodaemon=true\n\n[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n[supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\n[include]\nfiles = {d}/programs/*.conf\n"
        );
        std::fs::create_dir_all(dir.path().join("programs")).expect("programs dir");
        std::fs::create_dir_all(dir.path().join("logs")).expect("logs dir");
        std::fs::write(dir.path().join("supervisord.conf"), config).expect("supervisord config");
        Supervisord { dir, child: Spawned(None) }
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("supervisord.conf")
    }

    fn ctl(&self) -> Command {
        let mut cmd = Command::new(peers_dir().join("venv/bin/supervisorctl"));
        cmd.arg("-c").arg(self.conf());
        cmd
    }
}

impl Peer for Supervisord {
    fn clear(&mut self, jobs: &[Job]) {
        for job in jobs {
            let _ = std::fs::remove_file(self.dir.path().join("programs").join(format!("{}.conf", job.name())));
        }
        // `stop all` stops them together; `update` would stop them one a second before removing
        // the programs whose sections are gone.
        let _ = self.ctl().args(["stop", "all"]).stdin(Stdio::null()).output();
        let _ = run(self.ctl().arg("update"));
        gone(jobs);
    }

    fn name(&self) -> &'static str {
        "supervisord"
    }

    fn spawn(&mut self) {
        let child = Command::new(peers_dir().join("venv/bin/supervisord"))
            .arg("-c")
            .arg(self.conf())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn supervisord");
        self.child = Spawned(Some(child));
    }

    fn add(&mut self, jobs: &[Job], restart: bool) {
        for job in jobs {
            let section = format!("[program:{}]\ncommand={}\nautorestart={restart}\n", job.name(), job.command());
            std::fs::write(self.dir.path().join("programs").join(format!("{}.conf", job.name())), section)
                .expect("program file");
        }
        run(self.ctl().arg("update")).expect("supervisorctl update");
    }

    fn status(&self) -> Option<HashMap<String, Shown>> {
        // supervisorctl status exits 3 when any program is not running: its output still answers.
        let out = self.ctl().arg("status").stdin(Stdio::null()).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("refused connection") || text.contains("no such file") || out.status.code() == Some(2) {
            return None;
        }
        Some(
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let name = f.next()?.to_string();
                    let state = f.next()?.to_string();
                    let pid =
                        l.split("pid ").nth(1).and_then(|r| r.split(',').next()).and_then(|p| p.trim().parse().ok());
                    Some((name, Shown { running: state == "RUNNING", pid, state }))
                })
                .collect(),
        )
    }

    fn stream_end(&self, job: Job, pid: u32) -> Result<Child, &'static str> {
        // Its XML-RPC API, polled (its event listeners are processes it starts, not a stream a
        // client opens).
        let script = format!(
            "import sys\nfrom xmlrpc.client import ServerProxy\nfrom supervisor.xmlrpc import SupervisorTransport\n\
             p = ServerProxy('http://127.0.0.1', transport=SupervisorTransport(None, None, 'unix://{}'))\n\
             while True:\n    i = p.supervisor.getProcessInfo('{}')\n    if i['statename'] != 'RUNNING' or i['pid'] != {pid}:\n        sys.exit(0)\n",
            self.dir.path().join("supervisor.sock").display(),
            job.name()
        );
        Command::new(peers_dir().join("venv/bin/python"))
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|_| "python did not start")
    }

    fn restarts(&self) -> bool {
        true
    }

    fn daemon(&self) -> Option<u32> {
        self.child.pid()
    }

    fn helpers(&self) -> Vec<u32> {
        Vec::new()
    }

    fn stop(&mut self, sig: i32) {
        self.child.stop(sig);
    }
}

/// Where the peers are installed, or why they are not.
pub fn installed() -> Result<(), String> {
    let dir = std::env::var_os("TRAINERD_PEERS")
        .map(PathBuf::from)
        .ok_or("TRAINERD_PEERS is not set: run scripts/bench.sh --peers")?;
    for tool in ["bin/pueue", "bin/pueued", "venv/bin/supervisord", "venv/bin/supervisorctl"] {
        if !Path::new(&dir).join(tool).is_file() {
            return Err(format!("{} is missing: scripts/bench.sh --peers installs it", dir.join(tool).display()));
        }
    }
    Ok(())
}
