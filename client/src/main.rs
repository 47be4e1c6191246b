//! trainctl: the command-line client of trainerd.

mod cli;
mod format;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_stream::StreamExt;
use trainerd_proto::state::parse_state_word;
use trainerd_proto::v1 as pb;

/// EX_UNAVAILABLE: trainerd could not be reached.
const UNREACHABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trainctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(Failure::Unreachable(message)) => {
            eprintln!("trainctl: {message}");
            ExitCode::from(UNREACHABLE)
        }
        Err(Failure::Rpc(status)) => {
            eprintln!("trainctl: {}", status.message());
            ExitCode::FAILURE
        }
        Err(Failure::Usage(message)) => {
            eprintln!("trainctl: {message}");
            ExitCode::from(2)
        }
    }
}

enum Failure {
    Unreachable(String),
    Rpc(tonic::Status),
    Usage(String),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        if status.code() == tonic::Code::Unavailable && status.message().contains("connect") {
            Failure::Unreachable(status.message().to_string())
        } else {
            Failure::Rpc(status)
        }
    }
}

fn socket_path(cli: &Cli) -> PathBuf {
    cli.socket.clone().unwrap_or_else(trainerd_default_socket)
}

/// The daemon's default socket, by the same rule trainerd uses.
fn trainerd_default_socket() -> PathBuf {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/trainerd/trainerd.sock");
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".local/run"));
    runtime.join("trainerd/trainerd.sock")
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// The answer to a state-changing command: the job and its new state.
fn print_state(job: &pb::Job, json: bool) {
    if json {
        print_json(&trainerd_proto::json::job_json(job));
    } else {
        println!("{} {}", job.id, trainerd_proto::state::state_word(job.state()));
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "trainctl", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Failure::Usage(format!("cannot write the man page: {e}")))?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let socket = socket_path(&cli);
    let mut client = match &cli.addr {
        Some(addr) => trainctl::connect_tcp(addr, tcp_options(&cli)?).await.map_err(Failure::Unreachable)?,
        None => trainctl::connect_unix(&socket).await.map_err(|e| Failure::Unreachable(e.to_string()))?,
    };
    let json = cli.json;
    match cli.command {
        Command::Submit(submit) => {
            let follow = submit.watch;
            let req = submission(*submit)?;
            let resp = client.submit_job(req).await?.into_inner();
            let job = resp.job.unwrap_or_default();
            if json {
                let mut value = trainerd_proto::json::job_json(&job);
                value["created"] = resp.created.into();
                print_json(&value);
            } else if resp.created {
                println!("{}", job.id);
            } else {
                println!("{} (existing job for this idempotency key)", job.id);
            }
            if follow {
                return watch(&mut client, &job.id, json).await;
            }
        }
        Command::Ls(ls) => {
            let mut states = Vec::new();
            for word in &ls.state {
                let state = parse_state_word(word).ok_or_else(|| {
                    Failure::Usage(format!(
                        "--state {word:?}: use one of queued, starting, running, pausing, paused, stopping, backoff, \
                         completed, failed, cancelled"
                    ))
                })?;
                states.push(state as i32);
            }
            let req = pb::ListJobsRequest {
                states,
                name: ls.name.unwrap_or_default(),
                page_size: ls.limit,
                page_token: String::new(),
            };
            let jobs = client.list_jobs(req).await?.into_inner().jobs;
            if json {
                print_json(&serde_json::Value::Array(jobs.iter().map(trainerd_proto::json::job_json).collect()));
            } else {
                println!("{}", format::table(&jobs));
            }
        }
        Command::Get { id } => {
            let job = client.get_job(pb::GetJobRequest { id }).await?.into_inner();
            if json {
                print_json(&trainerd_proto::json::job_json(&job));
            } else {
                println!("{}", format::detail(&job));
            }
        }
        Command::Watch { id } => return watch(&mut client, &id, json).await,
        Command::Logs { id, follow, tail } => {
            let mut stream =
                client.stream_logs(pb::StreamLogsRequest { id, follow, tail_bytes: tail.max(1) }).await?.into_inner();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if json {
                    let data = String::from_utf8_lossy(&chunk.data);
                    print_json(&serde_json::json!({"stream": chunk.stream, "data": data}));
                } else if chunk.stream == "stderr" {
                    let _ = std::io::stderr().write_all(&chunk.data);
                } else {
                    let _ = std::io::stdout().write_all(&chunk.data);
                }
            }
        }
        Command::Events { id } => {
            let events = client.list_events(pb::ListEventsRequest { id }).await?.into_inner().events;
            for e in events {
                if json {
                    print_json(&trainerd_proto::json::event_json(&e));
                } else {
                    println!("{}  {:<18} {}", format::local_time(e.at), e.kind, e.message);
                }
            }
        }
        Command::Cancel { id } => {
            let job = client.cancel_job(pb::CancelJobRequest { id }).await?.into_inner();
            print_state(&job, json);
        }
        Command::Pause { id } => {
            let job = client.pause_job(pb::PauseJobRequest { id }).await?.into_inner();
            print_state(&job, json);
        }
        Command::Resume { id } => {
            let job = client.resume_job(pb::ResumeJobRequest { id }).await?.into_inner();
            print_state(&job, json);
        }
        Command::Retry { id, from_start, request_key } => {
            let request_key = request_key.unwrap_or_default();
            let job = client.retry_job(pb::RetryJobRequest { id, from_start, request_key }).await?.into_inner();
            print_state(&job, json);
        }
        Command::Rm { ids, keep_final_checkpoint } => {
            let removed = client.remove_jobs(pb::RemoveJobsRequest { ids, keep_final_checkpoint }).await?.into_inner();
            if json {
                print_json(&trainerd_proto::json::removed_json(&removed));
            } else {
                for r in &removed.removed {
                    let kept = if r.kept_checkpoint.is_empty() {
                        String::new()
                    } else {
                        format!("; kept {}", r.kept_checkpoint)
                    };
                    println!("{}  removed, {} freed{kept}", r.id, trainerd_proto::units::bytes(r.bytes_freed));
                }
            }
        }
        Command::Metrics { id, names, from_step, to_step, max_points, csv } => {
            let req = pb::GetMetricsRequest { id, names, from_step, to_step, max_points };
            let metrics = client.get_metrics(req).await?.into_inner();
            if json {
                print_json(&trainerd_proto::json::metrics_json(&metrics));
            } else {
                print!("{}", format::metrics_table(&metrics, csv));
            }
        }
        Command::Df => {
            let usage = client.disk_usage(pb::DiskUsageRequest {}).await?.into_inner();
            if json {
                print_json(&trainerd_proto::json::disk_json(&usage));
            } else {
                println!("{:<12}  {:<10}  {:>10}  NAME", "ID", "STATE", "SIZE");
                for j in &usage.jobs {
                    let size =
                        format!("{}{}", if j.at_least { ">" } else { "" }, trainerd_proto::units::bytes(j.bytes));
                    println!(
                        "{:<12}  {:<10}  {:>10}  {}",
                        j.id,
                        trainerd_proto::state::state_word(j.state()),
                        size,
                        j.name
                    );
                }
                println!(
                    "total {}; {} free in the state dir",
                    trainerd_proto::units::bytes(usage.total_bytes),
                    trainerd_proto::units::bytes(usage.state_dir_free_bytes)
                );
            }
        }
        Command::Health => {
            let health = client.health(pb::HealthRequest {}).await?.into_inner();
            if json {
                print_json(&trainerd_proto::json::health_json(&health));
            } else {
                println!("{:<9} {}", "status", health.status);
                if !health.cause.is_empty() {
                    println!("{:<9} {}", "cause", health.cause);
                }
                println!("{:<9} {}", "divergent", health.divergent);
                if health.resume_ignored > 0 {
                    println!(
                        "{:<9} {} job(s) started over instead of resuming (`trainctl events ID`: resume_ignored)",
                        "resume", health.resume_ignored
                    );
                }
                println!("{:<9} {}", "free", trainerd_proto::units::bytes(health.state_dir_free_bytes));
                for c in &health.jobs {
                    println!("{:<9} {}", trainerd_proto::state::state_word(c.state()), c.count);
                }
                print_reconcile("reconciled", &health.last_reconcile.unwrap_or_default());
            }
        }
        Command::Reconcile => {
            let report = client.reconcile(pb::ReconcileRequest {}).await?.into_inner();
            if json {
                print_json(&trainerd_proto::json::reconcile_json(&report));
            } else {
                print_reconcile("reconciled", &report);
            }
        }
        Command::Ui { port } => {
            if cli.addr.is_some() {
                return Err(Failure::Usage(
                    "trainctl ui talks to trainerd over its unix socket (as you); run it on trainerd's host, \
                     with --socket if need be"
                        .into(),
                ));
            }
            // trainerd answers before the page is offered: a wrong socket is said now, not in the browser.
            client.daemon_info(pb::DaemonInfoRequest {}).await?;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .map_err(|e| Failure::Usage(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
            let host = listener.local_addr().map_err(|e| Failure::Usage(e.to_string()))?.to_string();
            let token = trainctl::ui::new_token().map_err(|e| Failure::Usage(format!("no random token: {e}")))?;
            println!("http://{host}/?token={token}#/");
            let _ = std::io::stdout().flush();
            let ui = std::sync::Arc::new(trainctl::ui::Ui { socket, token, host });
            trainctl::ui::serve(listener, ui).await.map_err(|e| Failure::Usage(format!("the web page failed: {e}")))?;
        }
        Command::Info => {
            let info = client.daemon_info(pb::DaemonInfoRequest {}).await?.into_inner();
            if json {
                let mut value = trainerd_proto::json::info_json(&info);
                value["socket"] = socket.display().to_string().into();
                print_json(&value);
            } else {
                println!("version   {} (API {})", info.version, info.api_version);
                println!("pid       {}", info.pid);
                println!("uptime    {:.0}s", info.uptime_s);
                println!("slots     {}", info.slots);
                println!("state dir {}", info.state_dir);
                println!("socket    {}", socket.display());
                println!("protocol  v{}", info.protocol_version);
            }
        }
        Command::Completions { .. } | Command::Man => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the request: the workdir and a relative program become absolute from here, and a bare
/// program name is looked up on this PATH, so the job runs what the user would have run.
fn submission(s: cli::Submit) -> Result<pb::SubmitJobRequest, Failure> {
    let slurm = slurm_options(&s);
    let cwd = std::env::current_dir().map_err(|e| Failure::Usage(format!("cannot read the current directory: {e}")))?;
    let workdir = s.workdir.map(|w| if w.is_absolute() { w } else { cwd.join(w) }).unwrap_or_else(|| cwd.clone());
    let mut command = s.command;
    if let Some(program) = command.first_mut() {
        let path = Path::new(program.as_str());
        if program.contains('/') && path.is_relative() {
            *program = workdir.join(path).display().to_string();
        } else if !program.contains('/') {
            if let Some(found) = on_path(program) {
                *program = found.display().to_string();
            }
        }
    }
    let mut env = Vec::new();
    for pair in s.env {
        let (name, value) =
            pair.split_once('=').ok_or_else(|| Failure::Usage(format!("--env {pair:?}: write it as NAME=VALUE")))?;
        env.push(pb::EnvVar { name: name.into(), value: value.into() });
    }
    Ok(pb::SubmitJobRequest {
        name: s.name.unwrap_or_default(),
        command,
        workdir: workdir.display().to_string(),
        env,
        gpus: s.gpus,
        priority: s.priority,
        idempotency_key: s.idempotency_key.unwrap_or_default(),
        max_restarts: s.max_restarts,
        on_failure: s.on_failure,
        heartbeat_timeout_ms: s.heartbeat_timeout,
        startup_grace_ms: s.startup_grace,
        stop_grace_ms: s.stop_grace,
        restart_window_ms: s.restart_window,
        backoff_base_ms: s.backoff_base,
        backoff_max_ms: s.backoff_max,
        pause_timeout_ms: s.pause_timeout,
        protocol: s.protocol,
        idle_timeout_ms: s.idle_timeout,
        progress_timeout_ms: s.progress_timeout,
        on_divergence: s.on_divergence,
        spike_factor: s.spike_factor,
        spike_window: s.spike_window,
        spike_steps: s.spike_steps,
        max_rollbacks: s.max_rollbacks,
        slurm,
        executor: s.executor,
        progress_regex: s.progress_regex.unwrap_or_default(),
        checkpoint_glob: s.checkpoint_glob.unwrap_or_default(),
        resume_arg: s.resume_arg.unwrap_or_default(),
        checkpoint_marker: s.checkpoint_marker.unwrap_or_default(),
    })
}

/// The Slurm options given on the command line; none when no Slurm flag was.
fn slurm_options(s: &cli::Submit) -> Option<pb::SlurmOptions> {
    let minutes = |ms: u64| u32::try_from(ms.div_ceil(60_000)).unwrap_or(u32::MAX);
    let options = pb::SlurmOptions {
        partition: s.partition.clone().unwrap_or_default(),
        account: s.account.clone().unwrap_or_default(),
        nodes: s.nodes.unwrap_or(0),
        tasks_per_node: s.tasks_per_node.unwrap_or(0),
        gpus_per_node: s.gpus_per_node.unwrap_or(0),
        time_minutes: s.time.map(minutes).unwrap_or(0),
        signal_margin_s: s.signal_margin.map(|ms| u32::try_from(ms / 1000).unwrap_or(u32::MAX)).unwrap_or(0),
        args: s.slurm_args.clone(),
    };
    (options != pb::SlurmOptions::default()).then_some(options)
}

fn on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file() && p.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0))
}

/// Follows a job to its end. The exit status tells the outcome.
/// The token and CA files of a TCP connection, read.
fn tcp_options(cli: &Cli) -> Result<trainctl::TcpOptions, Failure> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Failure::Usage(format!("--{flag} {}: cannot read it: {e}", path.display())))
    };
    let token = match &cli.token_file {
        Some(path) => {
            let text = String::from_utf8_lossy(&read("token-file", path)?).into_owned();
            Some(text.lines().next().unwrap_or_default().trim().to_string())
        }
        None => None,
    };
    let ca = cli.ca.as_deref().map(|p| read("ca", p)).transpose()?;
    Ok(trainctl::TcpOptions { token, ca })
}

async fn watch(client: &mut trainctl::Client, id: &str, json: bool) -> Result<ExitCode, Failure> {
    let mut stream = client.watch_job(pb::WatchJobRequest { id: id.into() }).await?.into_inner();
    let tty = std::io::stdout().is_terminal() && !json;
    let mut last: Option<pb::Job> = None;
    // The loss's recent history, for the sparkline: what is stored, then what each update brings.
    let mut losses: Vec<f64> = Vec::new();
    if tty {
        let req =
            pb::GetMetricsRequest { id: id.into(), names: vec!["loss".into()], max_points: 40, ..Default::default() };
        if let Ok(m) = client.get_metrics(req).await {
            losses = m.into_inner().series.into_iter().flat_map(|s| s.samples).map(|s| s.value).collect();
        }
    }
    while let Some(update) = stream.next().await {
        let update = update?;
        if let Some(loss) = update.point.as_ref().and_then(|p| p.values.get("loss")) {
            losses.push(*loss);
            if losses.len() > 40 {
                losses.remove(0);
            }
        }
        let Some(job) = update.job else { continue };
        if json {
            let mut value = trainerd_proto::json::job_json(&job);
            value["update"] = update_kind(&job, last.as_ref()).into();
            if let Some(point) = &update.point {
                value["point"] = trainerd_proto::json::point_json(point);
            }
            print_json(&value);
        } else if tty {
            print!("\r\x1b[2K{} {}", format::watch_line(&job), format::sparkline(&losses));
            let _ = std::io::stdout().flush();
        } else if last.as_ref().is_none_or(|l| l.state != job.state || l.step != job.step || l.epoch != job.epoch) {
            println!("{}", format::watch_line(&job));
        }
        last = Some(job);
    }
    if tty {
        println!();
    }
    let Some(job) = last else { return Ok(ExitCode::FAILURE) };
    if !json && !job.message.is_empty() {
        println!("{}", job.message);
    }
    Ok(match job.state() {
        pb::JobState::Completed => ExitCode::SUCCESS,
        pb::JobState::Cancelled => ExitCode::from(3),
        pb::JobState::Paused => ExitCode::from(4),
        _ => ExitCode::FAILURE,
    })
}

fn update_kind(job: &pb::Job, last: Option<&pb::Job>) -> &'static str {
    match last {
        None => "snapshot",
        Some(l) if l.state != job.state => "state",
        Some(_) => "progress",
    }
}

/// One line for the reconciliation (its age and how many fixes), then one per fix.
fn print_reconcile(label: &str, r: &pb::ReconcileResponse) {
    if r.count == 0 {
        println!("{label:<9} never");
        return;
    }
    println!("{label:<9} {} ago, {} job(s) checked, {} fix(es)", format::ago(r.at), r.checked, r.fixes.len());
    for fix in &r.fixes {
        println!("  fixed   {fix}");
    }
}
