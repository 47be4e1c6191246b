//! The command line, defined once: parsing, help, shell completions and the man page all come from
//! these types.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// trainctl: control trainerd, the supervisor of ML training jobs.
#[derive(Debug, Parser)]
#[command(name = "trainctl", version, about, propagate_version = true)]
pub struct Cli {
    /// trainerd's unix socket [default: $TRAINERD_SOCKET, else trainerd's default socket].
    #[arg(long, global = true, env = "TRAINERD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// trainerd's TCP address, like http://127.0.0.1:7070 (instead of the unix socket).
    #[arg(long, global = true, conflicts_with = "socket")]
    pub addr: Option<String>,
    /// With --addr: a file holding trainerd's bearer token [default: $TRAINERD_TOKEN_FILE].
    #[arg(long, global = true, env = "TRAINERD_TOKEN_FILE", requires = "addr")]
    pub token_file: Option<PathBuf>,
    /// With an https:// --addr: the PEM certificate of the CA that signed trainerd's certificate
    /// [default: the system's roots are not used; give this].
    #[arg(long, global = true, requires = "addr")]
    pub ca: Option<PathBuf>,
    /// Print JSON (one object per line for `watch`) with stable field names.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a job: trainctl submit [OPTIONS] -- COMMAND [ARGS...]
    ///
    /// A multi-GPU job is one job: `trainctl submit --gpus 4 -- torchrun --standalone
    /// --nproc-per-node auto train.py` starts one rank per GPU it was given (CUDA_VISIBLE_DEVICES);
    /// pause and stop reach every rank.
    Submit(Box<Submit>),
    /// List jobs, newest first.
    Ls(Ls),
    /// Show one job (a unique id prefix will do).
    Get { id: String },
    /// Follow a job's progress until it ends; the exit status tells the outcome (0 completed,
    /// 1 failed, 3 cancelled, 4 paused).
    Watch { id: String },
    /// Print a job's stdout and stderr (the last 64 KiB of each); with -f, follow until it ends.
    Logs {
        id: String,
        /// Keep printing what the trainer writes until the job ends.
        #[arg(short, long)]
        follow: bool,
        /// Bytes of each log's tail to print first.
        #[arg(long, default_value_t = 65536)]
        tail: u64,
    },
    /// Show a job's event log.
    Events { id: String },
    /// A job's metric history (loss, val_loss, lr, and every metric its trainer reports), one row
    /// per step; older spans are folded (their mean, marked ~). --csv for a spreadsheet.
    Metrics {
        id: String,
        /// Only this metric (repeatable) [default: all].
        #[arg(long = "name")]
        names: Vec<String>,
        /// From this step.
        #[arg(long, default_value_t = 0)]
        from_step: u64,
        /// To this step [default: the latest].
        #[arg(long)]
        to_step: Option<u64>,
        /// At most this many rows per metric (downsampled by trainerd, extremes kept).
        #[arg(long, default_value_t = 1000)]
        max_points: u32,
        /// Comma-separated values: step, then one column per metric.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// Cancel a job: SIGTERM to its process group, SIGKILL after its stop grace; returns once no
    /// process of the job is left.
    Cancel { id: String },
    /// Pause a job at the end of its epoch, with a checkpoint (a queued job is held).
    Pause { id: String },
    /// Queue a paused job again; it continues from its pause checkpoint.
    Resume { id: String },
    /// Run a failed or cancelled job again from its latest checkpoint, as a new attempt of the same job
    /// (same id, history and events). Never from step 0 while a checkpoint exists; without one, say so
    /// with --from-start.
    Retry {
        id: String,
        /// The job has no checkpoint: start it over from step 0.
        #[arg(long)]
        from_start: bool,
        /// A key that makes a repeated retry (a script run twice) queue the job once.
        #[arg(long)]
        request_key: Option<String>,
    },
    /// Remove finished jobs: their records, events, logs and checkpoints. Refused, and nothing removed,
    /// if one of them has not finished.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Keep a completed job's final checkpoint (moved to kept/<id>/ in the state dir).
        #[arg(long)]
        keep_final_checkpoint: bool,
    },
    /// Disk used by each job (logs, progress, checkpoints), largest first, and the state dir's free space.
    Df,
    /// Jobs by state, whether records and reality agree, and the last reconciliation.
    Health,
    /// Check every unfinished job against reality now (processes, actors, the queue) and fix what
    /// disagrees; prints each fix (none is the normal answer).
    Reconcile,
    /// What the daemon is: version, uptime, slots, state dir.
    Info,
    /// Serve the web page (jobs, loss curves, events, logs, pause/resume/cancel) on 127.0.0.1,
    /// talking to trainerd over its unix socket as you; prints the address to open (it carries a
    /// secret token). Over SSH: `ssh -L 8765:127.0.0.1:8765 host trainctl ui --port 8765`.
    Ui {
        /// The loopback port [default: any free one].
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

/// `trainctl submit`.
#[derive(Debug, Args)]
pub struct Submit {
    /// The job's name (A-Z a-z 0-9 . _ -) [default: the program's name].
    #[arg(long)]
    pub name: Option<String>,
    /// GPUs the job needs.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Higher runs first; FIFO within a priority.
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// Restarts allowed within the restart window [default: the daemon's].
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// `restart` (from the latest checkpoint) or `fail`, when an attempt fails [default: restart].
    #[arg(long)]
    pub on_failure: Option<String>,
    /// Silence after which the trainer is stopped as stalled, like 10m, 90s or 1h [default: the daemon's].
    #[arg(long, value_parser = crate::format::parse_duration_ms)]
    pub heartbeat_timeout: Option<u64>,
    /// Time for the first heartbeat after a start (protocol v1) [default: the daemon's].
    #[arg(long, value_parser = crate::format::parse_duration_ms)]
    pub startup_grace: Option<u64>,
    /// Whether the trainer speaks the trainer protocol: `auto` (running once started; heartbeat
    /// deadlines from its first progress on), `v1` (startup grace for the first heartbeat) or `none`
    /// (a plain process) [default: the daemon's, auto].
    #[arg(long)]
    pub protocol: Option<String>,
    /// No output on stdout or stderr (and no progress) for this long is a stall, like 30m.
    #[arg(long, value_parser = crate::format::parse_duration_ms)]
    pub idle_timeout: Option<u64>,
    /// While the trainer reports `running`, a step that does not advance for this long is a stall,
    /// even while it heartbeats (a rank stuck in a collective), like 10m; 0 turns the daemon's default off.
    #[arg(long, value_parser = crate::format::parse_duration_ms)]
    pub progress_timeout: Option<u64>,
    /// What a diverging loss (NaN, infinite, or a sustained spike) does: ignore, rollback (to the
    /// newest checkpoint before it, TRAINERD_ROLLBACK=N) or fail [default: the daemon's, ignore].
    #[arg(long)]
    pub on_divergence: Option<String>,
    /// A loss above this many times the median of the window is a spike [default: 10].
    #[arg(long)]
    pub spike_factor: Option<f64>,
    /// Reports in the median's window [default: 20].
    #[arg(long)]
    pub spike_window: Option<u32>,
    /// Diverging reports in a row before the guard acts [default: 3].
    #[arg(long)]
    pub spike_steps: Option<u32>,
    /// Rollbacks allowed, apart from the restart budget [default: 3].
    #[arg(long)]
    pub max_rollbacks: Option<u32>,
    /// Where the attempts run: `local` (on the daemon's host) or `slurm` (each attempt one Slurm job,
    /// `sbatch`) [default: the daemon's, local].
    #[arg(long)]
    pub executor: Option<String>,
    /// Slurm: the partition [default: the daemon's --slurm-partition, else the cluster's default].
    #[arg(long, help_heading = "Slurm")]
    pub partition: Option<String>,
    /// Slurm: the account to charge [default: the daemon's --slurm-account].
    #[arg(long, help_heading = "Slurm")]
    pub account: Option<String>,
    /// Slurm: nodes per attempt [default: 1].
    #[arg(long, help_heading = "Slurm")]
    pub nodes: Option<u32>,
    /// Slurm: ranks (trainer processes) per node [default: 1].
    #[arg(long, help_heading = "Slurm")]
    pub tasks_per_node: Option<u32>,
    /// Slurm: GPUs per node.
    #[arg(long, help_heading = "Slurm")]
    pub gpus_per_node: Option<u32>,
    /// Slurm: each allocation's time limit, like 4h or 90m; a longer training checkpoints before it
    /// and continues in the next allocation [default: the partition's limit].
    #[arg(long, value_parser = crate::format::parse_duration_ms, help_heading = "Slurm")]
    pub time: Option<u64>,
    /// Slurm: how long before the time limit the ranks get SIGTERM to checkpoint, like 2m [default: 60s].
    #[arg(long, value_parser = crate::format::parse_duration_ms, help_heading = "Slurm")]
    pub signal_margin: Option<u64>,
    /// Slurm: one more sbatch option, as --name=value (repeatable), like --slurm-arg=--qos=high.
    #[arg(long = "slurm-arg", allow_hyphen_values = true, help_heading = "Slurm")]
    pub slurm_args: Vec<String>,
    /// Progress from output lines: a regular expression with named groups step, total, epoch, loss
    /// (others become metrics), like '(?P<step>\d+)/(?P<total>\d+) .*loss=(?P<loss>[\d.]+)'.
    #[arg(long)]
    pub progress_regex: Option<String>,
    /// Checkpoints of an unchanged script, a glob relative to the workdir, like 'output/checkpoint-*';
    /// the newest complete one is passed with --resume-arg at each restart.
    #[arg(long, requires = "resume_arg")]
    pub checkpoint_glob: Option<String>,
    /// How the script takes a checkpoint, `{checkpoint}` standing for its path, like
    /// '--resume_from_checkpoint {checkpoint}'.
    #[arg(long, requires = "checkpoint_glob")]
    pub resume_arg: Option<String>,
    /// A file a checkpoint directory must hold to count as complete (Hugging Face: trainer_state.json).
    #[arg(long, requires = "checkpoint_glob")]
    pub checkpoint_marker: Option<String>,
    /// The window the restart budget counts in, like 1h [default: the daemon's].
    #[arg(long, value_parser = crate::format::parse_duration_ms)]
    pub restart_window: Option<u64>,
    /// The first backoff before a restart (doubles per consecutive failure) [default: the daemon's].
    #[arg(long, value_parser = crate::format::parse_duration_ms)]
    pub backoff_base: Option<u64>,
    /// The longest backoff [default: the daemon's].
    #[arg(long, value_parser = crate::format::parse_duration_ms)]
    pub backoff_max: Option<u64>,
    /// SIGTERM to SIGKILL [default: the daemon's].
    #[arg(long, value_parser = crate::format::parse_duration_ms)]
    pub stop_grace: Option<u64>,
    /// How long a pause may take before the trainer is stopped and the job paused at its latest
    /// checkpoint [default: the daemon's, 1h].
    #[arg(long, value_parser = crate::format::parse_duration_ms)]
    pub pause_timeout: Option<u64>,
    /// The same key returns the existing job instead of starting a second one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Working directory [default: the current directory].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// An environment variable for the trainer, NAME=VALUE; repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Follow the job after submitting it, as `trainctl watch` does.
    #[arg(long)]
    pub watch: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `trainctl ls`.
#[derive(Debug, Args)]
pub struct Ls {
    /// Only jobs in this state (queued, running, completed, ...); repeatable.
    #[arg(long)]
    pub state: Vec<String>,
    /// Only jobs with this name.
    #[arg(long)]
    pub name: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A field added to SubmitJobRequest reaches gRPC, the JSON socket and the Python client by
    /// generation; trainctl's flags are written by hand, so this holds them to the proto.
    #[test]
    fn trainctl_submit_has_a_flag_for_every_submit_job_field() {
        let cli = Cli::command();
        let submit = cli.find_subcommand("submit").expect("a submit command");
        let flags: Vec<String> = submit.get_arguments().map(|a| a.get_id().to_string()).collect();
        let fields = trainerd_proto::descriptor::fields_of("SubmitJobRequest");
        assert!(!fields.is_empty());
        // Durations are given in words (30s, 4h): the flag drops the field's `_ms`.
        let missing: Vec<&String> = fields
            .iter()
            .filter(|f| *f != "slurm" && !flags.iter().any(|flag| flag == f.trim_end_matches("_ms")))
            .collect();
        assert!(missing.is_empty(), "trainctl submit has no flag for SubmitJobRequest's {missing:?}");
        // The Slurm options are flags of their own; durations drop their unit, `args` is `--slurm-arg`.
        let slurm = trainerd_proto::descriptor::fields_of("SlurmOptions");
        assert!(slurm.len() >= 8, "{slurm:?}");
        let missing: Vec<&String> = slurm
            .iter()
            .filter(|f| {
                let flag = match f.as_str() {
                    "args" => "slurm_args",
                    other => other.trim_end_matches("_minutes").trim_end_matches("_s"),
                };
                !flags.iter().any(|given| given == flag)
            })
            .collect();
        assert!(missing.is_empty(), "trainctl submit has no flag for SlurmOptions' {missing:?}");
    }
}
