//! trainerd's settings: flags, over an optional TOML file with the same keys, over defaults for a
//! system service or, for a non-root user, the XDG directories. Every job setting here is the default a submission may override.

use crate::store::records::{OnFailure, RestartPolicy, Timeouts};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The command line.
#[derive(Debug, Clone, Default, Parser, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[command(
    name = "trainerd",
    version,
    about = "Supervises ML training jobs: restarts them from their latest \
checkpoint, detects hung trainers by their missing heartbeats, and keeps accurate state across its own restarts"
)]
pub struct Flags {
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Subcommand>,
    /// A TOML file with any of these settings as kebab-case keys; flags win over it [default:
    /// /etc/trainerd/config.toml as root, else $XDG_CONFIG_HOME/trainerd/config.toml, when it exists].
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where the job store and the job directories live [default: /var/lib/trainerd as root, else
    /// $XDG_STATE_HOME/trainerd or ~/.local/state/trainerd].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The gRPC unix socket [default: /run/trainerd/trainerd.sock as root, else
    /// $XDG_RUNTIME_DIR/trainerd/trainerd.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The JSON-lines control socket for local tools [default: control.sock beside --socket].
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Also serve gRPC on this TCP address. Every TCP request must carry the bearer token of
    /// --token-file; beyond loopback, --tls-cert and --tls-key are required too [default: off].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// A file holding the bearer token TCP clients must present (at least 16 characters; readable
    /// by its owner only).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The PEM certificate chain of the TCP listener's TLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The group that owns the unix sockets (mode 0660); its members may use trainerd [default:
    /// trainerd's own group].
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Users (names or uids, comma-separated) allowed on the unix sockets besides root and
    /// trainerd's own user.
    #[arg(long, value_delimiter = ',')]
    pub allow_users: Option<Vec<String>>,
    /// Groups (names or gids, comma-separated) whose members are allowed on the unix sockets.
    #[arg(long, value_delimiter = ',')]
    pub allow_groups: Option<Vec<String>>,
    /// When trainerd runs as root: the user every job runs as, whoever submitted it [default: the
    /// submitting user; TCP submissions are refused].
    #[arg(long)]
    pub job_user: Option<String>,
    /// Serve Prometheus metrics on this address (GET /metrics), like 127.0.0.1:9184 [default: off].
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// GPU indices jobs may be given, like 0,1,2,3; `auto` asks nvidia-smi (none on a CPU host);
    /// `none` gives none [default: auto].
    #[arg(long)]
    pub gpus: Option<String>,
    /// Jobs running at once. [default: 4].
    #[arg(long)]
    pub slots: Option<u32>,
    /// Default seconds without a heartbeat before a trainer is stopped as stalled. [default: 600].
    #[arg(long)]
    pub heartbeat_timeout: Option<f64>,
    /// Default seconds a new trainer has for its first heartbeat (protocol v1 only). [default: 300].
    #[arg(long)]
    pub startup_grace: Option<f64>,
    /// Default trainer protocol of a job: `auto` (RUNNING once started; heartbeat deadlines from its
    /// first progress on), `v1` (startup grace for the first heartbeat) or `none` (a plain process).
    /// [default: auto].
    #[arg(long)]
    pub protocol: Option<String>,
    /// Default seconds between SIGTERM and SIGKILL. [default: 30].
    #[arg(long)]
    pub stop_grace: Option<f64>,
    /// What a diverging loss does to a job that names nothing: `ignore`, `rollback` (to the newest
    /// checkpoint before the divergence) or `fail`. [default: ignore].
    #[arg(long)]
    pub on_divergence: Option<String>,
    /// Keep at most this many finished jobs (completed, failed, cancelled); older ones are removed
    /// with their logs and checkpoints, hourly and at start. [default: all].
    #[arg(long)]
    pub keep_finished: Option<usize>,
    /// Remove finished jobs this many days after they ended (fractions allowed). [default: never].
    #[arg(long)]
    pub keep_finished_days: Option<f64>,
    /// When the retention policy or `rm` removes a completed job, keep its final checkpoint (moved to
    /// `kept/<id>/` in the state dir). [default: false].
    #[arg(long)]
    pub keep_final_checkpoint: Option<bool>,
    /// Default progress deadline, in seconds: while a trainer reports `running`, a step that does not
    /// advance for this long is a stall (a loop blocked in a collective while its heartbeat thread
    /// beats). [default: off].
    #[arg(long)]
    pub progress_timeout: Option<f64>,
    /// Default restarts allowed within the restart window. [default: 5].
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Default restart window, in seconds. [default: 3600].
    #[arg(long)]
    pub restart_window: Option<f64>,
    /// Default first backoff in seconds (doubles per consecutive failure, with jitter). [default: 1].
    #[arg(long)]
    pub backoff_base: Option<f64>,
    /// Default backoff cap in seconds. [default: 300].
    #[arg(long)]
    pub backoff_max: Option<f64>,
    /// The heartbeat interval trainers are told to keep (TRAINERD_HEARTBEAT_INTERVAL), in seconds. [default: 5].
    #[arg(long)]
    pub heartbeat_interval: Option<f64>,
    /// Largest size of a job's stdout.log and stderr.log, in MiB, before it is rotated (one
    /// rotation, NAME.1, is kept). [default: 64].
    #[arg(long)]
    pub log_cap_mib: Option<u64>,
    /// What trainerd does with running jobs when it is stopped (SIGTERM, `systemctl stop`): `leave`
    /// them running under their shims for the next trainerd to re-adopt (for upgrades), `pause` them
    /// at their epoch boundary (PAUSED), or `stop` them now and queue them again, to resume from
    /// their latest checkpoint at the next start. [default: leave].
    #[arg(long, value_enum)]
    pub shutdown_policy: Option<ShutdownPolicy>,
    /// Seconds between reconciliations of the store with the processes (also `trainctl reconcile`).
    /// [default: 30].
    #[arg(long)]
    pub reconcile_interval: Option<f64>,
    /// Free space (MiB) kept on the state dir's file system for the transitions of running jobs: new
    /// submissions are refused (RESOURCE_EXHAUSTED) while less is free. [default: 64].
    #[arg(long)]
    pub disk_reserve_mib: Option<u64>,
    /// The longest a SIGTERM may take, in seconds: under shutdown-policy pause or stop, jobs that have
    /// not paused or stopped by then are left running under their shims for the next trainerd to
    /// re-adopt. Keep it below systemd's TimeoutStopSec. [default: 60].
    #[arg(long)]
    pub shutdown_timeout: Option<f64>,
    /// trainerd's own log: `auto` (journald when systemd connected stderr to it, else human),
    /// `human`, `json` (one object per line) or `journal`. The level filter is TRAINERD_LOG. [default: auto].
    #[arg(long, value_enum)]
    pub log_format: Option<crate::logging::LogFormat>,
    /// A trainerd-shim executable on disk to parent each trainer [default: the one built into trainerd].
    #[arg(long)]
    pub shim: Option<PathBuf>,
    /// Where a job that names none runs its attempts: `local` (under a shim on this host) or `slurm`
    /// (one Slurm job per attempt; `sbatch`, `squeue` and `scancel` on PATH). [default: local].
    #[arg(long)]
    pub executor: Option<String>,
    /// A directory every Slurm node mounts at the same path: Slurm jobs' files (progress, checkpoints,
    /// exit records, logs) live under it. [default: the state dir, which must then be shared].
    #[arg(long)]
    pub slurm_shared_dir: Option<PathBuf>,
    /// The partition a Slurm job that names none is submitted to [default: the cluster's default].
    #[arg(long)]
    pub slurm_partition: Option<String>,
    /// The account a Slurm job that names none is charged to [default: none].
    #[arg(long)]
    pub slurm_account: Option<String>,
    /// Seconds between two looks at Slurm's queue (one `squeue` for every job) and at Slurm jobs'
    /// progress files (inotify does not see other nodes' writes). [default: 1].
    #[arg(long)]
    pub slurm_poll_interval: Option<f64>,
    /// Enables test hooks (a job env TRAINERD_TEST_PANIC_AFTER_STEP=N panics its actor once). Never
    /// in production.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub test_hooks: bool,
}

/// What happens to running jobs when trainerd stops (see `--shutdown-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownPolicy {
    /// Trainers keep running under their shims; the next trainerd re-adopts them.
    #[default]
    Leave,
    /// Every running job pauses at its epoch boundary and stays PAUSED.
    Pause,
    /// Every running trainer is stopped (SIGTERM, then SIGKILL after its stop grace) and its job
    /// queued again, to resume from its latest checkpoint.
    Stop,
}

/// The validated settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub control_socket: PathBuf,
    pub listen: Option<std::net::SocketAddr>,
    /// The TCP listener's certificate chain and key.
    pub tls: Option<Tls>,
    /// The unix sockets' group.
    pub socket_group: Option<u32>,
    pub access: crate::access::Access,
    pub metrics: Option<std::net::SocketAddr>,
    pub slots: u32,
    /// The GPU indices of the pool.
    pub gpus: Vec<u32>,
    pub heartbeat_interval: Duration,
    /// A job log's size cap, in bytes.
    pub log_cap: u64,
    pub default_restart: RestartPolicy,
    pub default_timeouts: Timeouts,
    /// The protocol a submission that names none gets.
    pub default_protocol: crate::store::records::Protocol,
    /// The progress deadline a submission that names none gets; None: off.
    pub default_progress_timeout_ms: Option<u64>,
    /// What a diverging loss does to a job that names nothing (`None`: ignore).
    pub default_on_divergence: Option<crate::store::records::OnDivergence>,
    /// Retention: the most finished jobs kept, and for how many days.
    pub keep_finished: Option<usize>,
    pub keep_finished_days: Option<f64>,
    /// A removed completed job's final checkpoint is kept.
    pub keep_final_checkpoint: bool,
    pub shutdown_policy: ShutdownPolicy,
    pub reconcile_interval: Duration,
    /// Free bytes kept on the state dir's file system for running jobs' transitions.
    pub disk_reserve: u64,
    /// The longest a shutdown may take.
    pub shutdown_timeout: Duration,
    /// A trainerd-shim on disk (`--shim`); `None`: the one built into trainerd.
    pub shim: Option<PathBuf>,
    pub test_hooks: bool,
    /// Jobs that name no executor run under Slurm.
    pub default_slurm: bool,
    pub slurm: SlurmDefaults,
}

/// The Slurm executor's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmDefaults {
    /// Where Slurm jobs' files live (`None`: under the state dir).
    pub shared_dir: Option<PathBuf>,
    pub partition: String,
    pub account: String,
    pub poll_interval: Duration,
}

impl DaemonConfig {
    /// The files of job `id`, run by Slurm (`slurm`) or on this host.
    pub fn job_paths(&self, id: crate::store::records::JobId, slurm: bool) -> crate::job::JobPaths {
        let root = match (slurm, &self.slurm.shared_dir) {
            (true, Some(shared)) => shared.as_path(),
            _ => self.state_dir.as_path(),
        };
        crate::job::JobPaths::new(root, id)
    }
}

fn seconds(name: &str, value: f64) -> Result<u64, String> {
    // A year bounds every duration: deadlines far beyond it would overflow clock arithmetic.
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    if value.is_finite() && (0.0..=YEAR).contains(&value) {
        Ok((value * 1000.0).round() as u64)
    } else {
        Err(format!("--{name} must be a number of seconds from 0 to {YEAR} (a year), not {value:?}"))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn user_dir(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(fallback))
}

/// What trainerd does besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Subcommand {
    /// Validate the configuration (file and flags) and print it, without starting.
    CheckConfig,
}

macro_rules! prefer_flags {
    ($flags:ident, $file:ident, $($field:ident),*) => {
        Flags {
            command: $flags.command,
            config: $flags.config,
            test_hooks: $flags.test_hooks,
            $($field: $flags.$field.or($file.$field)),*
        }
    };
}

/// Where trainerd as root looks for a configuration file when not told.
pub const DEFAULT_CONFIG: &str = "/etc/trainerd/config.toml";

/// The configuration file trainerd reads when not told: as root /etc/trainerd/config.toml; as any
/// other user (the user service) `$XDG_CONFIG_HOME/trainerd/config.toml` (`~/.config/...`).
pub fn default_config() -> PathBuf {
    if is_root() {
        PathBuf::from(DEFAULT_CONFIG)
    } else {
        user_dir("XDG_CONFIG_HOME", ".config").join("trainerd/config.toml")
    }
}

impl Flags {
    /// Merges the configuration file under the flags: the one `--config` names (which must exist), else
    /// the default one ([`default_config`]) if it exists.
    pub fn with_file(self) -> Result<Flags, String> {
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (default_config(), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(e) => return Err(format!("cannot read the configuration file {}: {e}", path.display())),
        };
        let file = Flags::parse_file(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let flags = self;
        Ok(prefer_flags!(
            flags,
            file,
            state_dir,
            socket,
            control_socket,
            listen,
            token_file,
            tls_cert,
            tls_key,
            socket_group,
            allow_users,
            allow_groups,
            job_user,
            metrics,
            gpus,
            slots,
            heartbeat_timeout,
            startup_grace,
            protocol,
            stop_grace,
            on_divergence,
            keep_finished,
            keep_finished_days,
            keep_final_checkpoint,
            progress_timeout,
            max_restarts,
            restart_window,
            backoff_base,
            backoff_max,
            heartbeat_interval,
            log_cap_mib,
            shutdown_policy,
            reconcile_interval,
            disk_reserve_mib,
            shutdown_timeout,
            shim,
            log_format,
            executor,
            slurm_shared_dir,
            slurm_partition,
            slurm_account,
            slurm_poll_interval
        ))
    }

    /// Parses a configuration file's text (the keys are the flags' long names); the error names the
    /// line and, for an unknown key, the nearest known one.
    pub fn parse_file(text: &str) -> Result<Flags, String> {
        toml::from_str(text).map_err(with_suggestion)
    }

    /// Applies the defaults and checks every value.
    pub fn resolve(self) -> Result<DaemonConfig, String> {
        let state_dir = self.state_dir.unwrap_or_else(|| {
            if is_root() {
                PathBuf::from("/var/lib/trainerd")
            } else {
                user_dir("XDG_STATE_HOME", ".local/state").join("trainerd")
            }
        });
        let socket = self.socket.unwrap_or_else(default_socket);
        let control_socket =
            self.control_socket.unwrap_or_else(|| socket.parent().unwrap_or(Path::new("/")).join("control.sock"));
        let token = self.token_file.as_deref().map(read_token).transpose()?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Tls { cert: read_pem("tls-cert", cert)?, key: read_pem("tls-key", key)? }),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together; give both, or neither".into()),
        };
        if let Some(addr) = self.listen {
            if token.is_none() {
                return Err(format!(
                    "--listen {addr}: TCP clients have no peer credentials, so each must present a bearer token; \
                     give --token-file FILE (a random string of at least 16 characters, mode 0600)"
                ));
            }
            if !addr.ip().is_loopback() && tls.is_none() {
                return Err(format!(
                    "--listen {addr}: TCP beyond loopback needs TLS and a bearer token; give --tls-cert and \
                     --tls-key, or listen on 127.0.0.1 and tunnel (ssh -L)"
                ));
            }
        } else if tls.is_some() {
            return Err("--tls-cert and --tls-key secure the TCP listener; give --listen ADDR too".into());
        }
        let socket_group = match &self.socket_group {
            Some(name) => Some(
                crate::users::group(name)
                    .ok_or_else(|| format!("--socket-group {name:?}: no such group on this host"))?,
            ),
            None => None,
        };
        let mut allowed_users = Vec::new();
        for name in self.allow_users.iter().flatten().filter(|n| !n.is_empty()) {
            // A number needs no account: the kernel reports uids, not names.
            let uid = match name.parse::<u32>() {
                Ok(uid) => uid,
                Err(_) => {
                    crate::users::user(name).ok_or_else(|| format!("--allow-users: no user {name:?} on this host"))?.uid
                }
            };
            allowed_users.push(uid);
        }
        let mut allowed_groups: Vec<u32> = socket_group.into_iter().collect();
        for name in self.allow_groups.iter().flatten().filter(|n| !n.is_empty()) {
            allowed_groups.push(
                crate::users::group(name).ok_or_else(|| format!("--allow-groups: no group {name:?} on this host"))?,
            );
        }
        let own_uid = crate::users::euid();
        let job_user = match &self.job_user {
            Some(name) => {
                let user =
                    crate::users::user(name).ok_or_else(|| format!("--job-user: no user {name:?} on this host"))?;
                if own_uid != 0 && user.uid != own_uid {
                    return Err(format!(
                        "--job-user {name}: only a trainerd running as root can run jobs as another user"
                    ));
                }
                Some(crate::store::records::RunAs { uid: user.uid, gid: user.gid })
            }
            None => None,
        };
        let access = crate::access::Access { own_uid, users: allowed_users, groups: allowed_groups, token, job_user };
        let gpus = match self.gpus.as_deref().unwrap_or("auto") {
            "auto" => crate::gpus::detect(),
            "none" | "" => Vec::new(),
            list => {
                let mut gpus = Vec::new();
                for part in list.split(',') {
                    let index = part
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| format!("--gpus {list:?}: give GPU indices like 0,1,2, or auto, or none"))?;
                    if gpus.contains(&index) {
                        return Err(format!("--gpus {list:?}: GPU {index} is listed twice"));
                    }
                    gpus.push(index);
                }
                gpus
            }
        };
        if self.slots.unwrap_or(4) == 0 {
            return Err("--slots must be at least 1".into());
        }
        // sockaddr_un holds 108 bytes with the terminating NUL.
        for (flag, path) in [("socket", &socket), ("control-socket", &control_socket)] {
            if path.as_os_str().len() > 107 {
                return Err(format!(
                    "--{flag} {}: a unix socket path may have at most 107 bytes; choose a shorter path",
                    path.display()
                ));
            }
        }
        let interval = seconds("heartbeat-interval", self.heartbeat_interval.unwrap_or(5.0))?;
        if interval == 0 {
            return Err("--heartbeat-interval must be positive".into());
        }
        let reconcile = seconds("reconcile-interval", self.reconcile_interval.unwrap_or(30.0))?;
        if reconcile < 100 {
            return Err("--reconcile-interval must be at least 0.1 seconds".into());
        }
        let shim = self.shim;
        Ok(DaemonConfig {
            state_dir,
            socket,
            control_socket,
            listen: self.listen,
            tls,
            socket_group,
            access,
            metrics: self.metrics,
            slots: self.slots.unwrap_or(4),
            gpus,
            heartbeat_interval: Duration::from_millis(interval),
            log_cap: self.log_cap_mib.unwrap_or(64).max(1) * 1024 * 1024,
            default_restart: RestartPolicy {
                on_failure: OnFailure::Restart,
                max_restarts: self.max_restarts.unwrap_or(5),
                window_ms: seconds("restart-window", self.restart_window.unwrap_or(3600.0))?,
                backoff_base_ms: seconds("backoff-base", self.backoff_base.unwrap_or(1.0))?,
                backoff_max_ms: seconds("backoff-max", self.backoff_max.unwrap_or(300.0))?,
                healthy_after_ms: seconds("restart-window", self.restart_window.unwrap_or(3600.0))?,
            },
            default_timeouts: Timeouts {
                startup_grace_ms: seconds("startup-grace", self.startup_grace.unwrap_or(300.0))?,
                heartbeat_timeout_ms: seconds("heartbeat-timeout", self.heartbeat_timeout.unwrap_or(600.0))?,
                stop_grace_ms: seconds("stop-grace", self.stop_grace.unwrap_or(30.0))?,
                pause_timeout_ms: 3_600_000,
            },
            default_protocol: match self.protocol.as_deref() {
                None => crate::store::records::Protocol::Auto,
                Some(word) => crate::store::records::Protocol::from_word(word)
                    .ok_or_else(|| format!("--protocol {word:?}: use auto, v1 or none"))?,
            },
            default_progress_timeout_ms: match self.progress_timeout {
                Some(t) if t > 0.0 => Some(seconds("progress-timeout", t)?),
                Some(0.0) | None => None,
                Some(t) => return Err(format!("--progress-timeout must be positive seconds (0: off), not {t}")),
            },
            default_on_divergence: match self.on_divergence.as_deref() {
                None | Some("ignore") => None,
                Some("rollback") => Some(crate::store::records::OnDivergence::Rollback),
                Some("fail") => Some(crate::store::records::OnDivergence::Fail),
                Some(other) => return Err(format!("--on-divergence {other:?}: use ignore, rollback or fail")),
            },
            keep_finished: self.keep_finished,
            keep_finished_days: match self.keep_finished_days {
                Some(d) if d.is_finite() && d > 0.0 && d <= 3650.0 => Some(d),
                Some(d) => return Err(format!("--keep-finished-days must be above 0 and at most 3650, not {d}")),
                None => None,
            },
            keep_final_checkpoint: self.keep_final_checkpoint.unwrap_or(false),
            shutdown_policy: self.shutdown_policy.unwrap_or_default(),
            reconcile_interval: Duration::from_millis(reconcile),
            disk_reserve: self
                .disk_reserve_mib
                .unwrap_or(64)
                .checked_mul(1 << 20)
                .ok_or("--disk-reserve-mib is too large; give MiB, like 64")?,
            shutdown_timeout: Duration::from_millis(seconds(
                "shutdown-timeout",
                self.shutdown_timeout.unwrap_or(60.0),
            )?),
            shim,
            test_hooks: self.test_hooks,
            default_slurm: match self.executor.as_deref() {
                None | Some("local") => false,
                Some("slurm") => true,
                Some(other) => return Err(format!("--executor {other:?}: use local or slurm")),
            },
            slurm: SlurmDefaults {
                shared_dir: match self.slurm_shared_dir {
                    Some(dir) if dir.is_absolute() => Some(dir),
                    Some(dir) => {
                        return Err(format!("--slurm-shared-dir must be an absolute path, not {}", dir.display()))
                    }
                    None => None,
                },
                partition: self.slurm_partition.unwrap_or_default(),
                account: self.slurm_account.unwrap_or_default(),
                poll_interval: {
                    let ms = seconds("slurm-poll-interval", self.slurm_poll_interval.unwrap_or(1.0))?;
                    if ms < 100 {
                        return Err("--slurm-poll-interval must be at least 0.1 seconds".into());
                    }
                    Duration::from_millis(ms)
                },
            },
        })
    }
}

/// A TLS identity, PEM. Its `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls {{ cert: {} bytes, key: *** }}", self.cert.len())
    }
}

/// The bearer token: the file's first line, at least 16 characters, in a file only its owner can read.
fn read_token(path: &Path) -> Result<crate::access::Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("--token-file {}: cannot read it: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "--token-file {}: other users can read it (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--token-file {}: cannot read it: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "--token-file {}: the token must be at least 16 printable characters without spaces \
             (for example: openssl rand -hex 32)",
            path.display()
        ));
    }
    Ok(crate::access::Secret(token))
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--{flag} {}: cannot read it: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("--{flag} {}: not a PEM file (no -----BEGIN line)", path.display()));
    }
    Ok(bytes)
}

/// toml's "unknown field `slot`, expected one of ..." plus the nearest key, when one is close.
fn with_suggestion(error: toml::de::Error) -> String {
    let text = error.to_string();
    let unknown = text.split_once("unknown field `").and_then(|(_, rest)| rest.split_once('`')).map(|(key, _)| key);
    let Some(unknown) = unknown else { return text };
    let keys = <Flags as clap::CommandFactory>::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|k| !matches!(k.as_str(), "config" | "test-hooks" | "help" | "version"))
        .collect::<Vec<_>>();
    let best = keys.iter().map(|k| (edit_distance(unknown, k), k)).min();
    match best {
        Some((distance, key)) if distance <= 2.max(unknown.len() / 3) => {
            format!("{}\ndid you mean `{key}`?", text.trim_end())
        }
        _ => text,
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The socket a client looks for when told nothing: the same rule as the daemon's default.
pub fn default_socket() -> PathBuf {
    if is_root() {
        PathBuf::from("/run/trainerd/trainerd.sock")
    } else {
        user_dir("XDG_RUNTIME_DIR", ".local/run").join("trainerd/trainerd.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("trainerd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_win_over_the_file_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "slots = 7\nstop-grace = 2.5\ngpus = \"none\"\n").unwrap();
        let config =
            flags(&["--config", file.to_str().unwrap(), "--slots", "3"]).with_file().unwrap().resolve().unwrap();
        assert_eq!((config.slots, config.default_timeouts.stop_grace_ms, config.gpus.len()), (3, 2500, 0));
        std::fs::write(&file, "slot = 7\n").unwrap();
        let err = flags(&["--config", file.to_str().unwrap()]).with_file().unwrap_err();
        assert!(err.contains("unknown field `slot`") && err.ends_with("did you mean `slots`?"), "{err}");
        std::fs::write(&file, "shutdown_policy = \"pause\"\n").unwrap();
        let err = flags(&["--config", file.to_str().unwrap()]).with_file().unwrap_err();
        assert!(err.ends_with("did you mean `shutdown-policy`?"), "{err}");
        std::fs::write(&file, "frobnicate = 1\n").unwrap();
        let err = flags(&["--config", file.to_str().unwrap()]).with_file().unwrap_err();
        assert!(!err.contains("did you mean"), "no suggestion when nothing is close: {err}");
        let err = flags(&["--config", "/nonexistent/trainerd.toml"]).with_file().unwrap_err();
        assert!(err.contains("cannot read the configuration file"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let err = flags(&["--slots", "0", "--gpus", "none"]).resolve().unwrap_err();
        assert_eq!(err, "--slots must be at least 1");
        let err = flags(&["--gpus", "0,zero"]).resolve().unwrap_err();
        assert!(err.contains("give GPU indices"), "{err}");
        let long = format!("/tmp/{}/s.sock", "x".repeat(120));
        let err = flags(&["--socket", &long, "--gpus", "none"]).resolve().unwrap_err();
        assert!(err.contains("at most 107 bytes"), "{err}");
    }
}
