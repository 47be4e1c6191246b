//! trainerd's settings: flags with defaults for a system service or, for a non-root user, the XDG
//! directories. Every job setting here is the default a submission may override.

use crate::store::records::{OnFailure, RestartPolicy, Timeouts};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "trainerd",
    version,
    about = "Supervises ML training jobs: restarts them from their latest \
checkpoint, detects hung trainers by their missing heartbeats, and keeps accurate state across its own restarts"
)]
pub struct Flags {
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
    /// Also serve gRPC on this TCP address (loopback only: 127.0.0.1:PORT or [::1]:PORT).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// GPU indices jobs may be given, like 0,1,2,3; `auto` asks nvidia-smi (none on a CPU host);
    /// `none` gives none.
    #[arg(long, default_value = "auto")]
    pub gpus: String,
    /// Jobs running at once.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Default seconds without a heartbeat before a trainer is stopped as stalled.
    #[arg(long, default_value_t = 600.0)]
    pub heartbeat_timeout: f64,
    /// Default seconds a new trainer has for its first heartbeat.
    #[arg(long, default_value_t = 300.0)]
    pub startup_grace: f64,
    /// Default seconds between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 30.0)]
    pub stop_grace: f64,
    /// Default restarts allowed within the restart window.
    #[arg(long, default_value_t = 5)]
    pub max_restarts: u32,
    /// Default restart window, in seconds.
    #[arg(long, default_value_t = 3600.0)]
    pub restart_window: f64,
    /// Default first backoff in seconds (doubles per consecutive failure, with jitter).
    #[arg(long, default_value_t = 1.0)]
    pub backoff_base: f64,
    /// Default backoff cap in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub backoff_max: f64,
    /// The heartbeat interval trainers are told to keep (TRAINERD_HEARTBEAT_INTERVAL), in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_interval: f64,
    /// Largest size of a job's stdout.log and stderr.log, in MiB, before it is rotated (one
    /// rotation, NAME.1, is kept).
    #[arg(long, default_value_t = 64)]
    pub log_cap_mib: u64,
    /// Enables test hooks (a job env TRAINERD_TEST_PANIC_AFTER_STEP=N panics its actor once). Never
    /// in production.
    #[arg(long, hide = true)]
    pub test_hooks: bool,
}

/// The validated settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub control_socket: PathBuf,
    pub listen: Option<std::net::SocketAddr>,
    pub slots: u32,
    /// The GPU indices of the pool.
    pub gpus: Vec<u32>,
    pub heartbeat_interval: Duration,
    /// A job log's size cap, in bytes.
    pub log_cap: u64,
    pub default_restart: RestartPolicy,
    pub default_timeouts: Timeouts,
    pub test_hooks: bool,
}

fn seconds(name: &str, value: f64) -> Result<u64, String> {
    if value.is_finite() && value >= 0.0 {
        Ok((value * 1000.0).round() as u64)
    } else {
        Err(format!("--{name} must be zero or a positive number of seconds, not {value}"))
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

impl Flags {
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
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "--listen {addr}: TCP beyond loopback needs TLS and a bearer token, which this trainerd                      does not offer yet; listen on 127.0.0.1 and tunnel (ssh -L) instead"
                ));
            }
        }
        let gpus = match self.gpus.as_str() {
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
        if self.slots == 0 {
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
        let interval = seconds("heartbeat-interval", self.heartbeat_interval)?;
        if interval == 0 {
            return Err("--heartbeat-interval must be positive".into());
        }
        Ok(DaemonConfig {
            state_dir,
            socket,
            control_socket,
            listen: self.listen,
            slots: self.slots,
            gpus,
            heartbeat_interval: Duration::from_millis(interval),
            log_cap: self.log_cap_mib.max(1) * 1024 * 1024,
            default_restart: RestartPolicy {
                on_failure: OnFailure::Restart,
                max_restarts: self.max_restarts,
                window_ms: seconds("restart-window", self.restart_window)?,
                backoff_base_ms: seconds("backoff-base", self.backoff_base)?,
                backoff_max_ms: seconds("backoff-max", self.backoff_max)?,
                healthy_after_ms: seconds("restart-window", self.restart_window)?,
            },
            default_timeouts: Timeouts {
                startup_grace_ms: seconds("startup-grace", self.startup_grace)?,
                heartbeat_timeout_ms: seconds("heartbeat-timeout", self.heartbeat_timeout)?,
                stop_grace_ms: seconds("stop-grace", self.stop_grace)?,
                pause_timeout_ms: 3_600_000,
            },
            test_hooks: self.test_hooks,
        })
    }
}

/// The socket a client looks for when told nothing: the same rule as the daemon's default.
pub fn default_socket() -> PathBuf {
    if is_root() {
        PathBuf::from("/run/trainerd/trainerd.sock")
    } else {
        user_dir("XDG_RUNTIME_DIR", ".local/run").join("trainerd/trainerd.sock")
    }
}
