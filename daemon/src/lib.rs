//! trainerd's library: everything the `trainerd` binary is made of, so tests can reach the parts.
//!
//! - [`run`]: start-up, serving and shutdown.
//! - [`supervisor`]: the root actor: registry, queue, slots; re-creates failed job actors.
//! - [`job`]: one job's runtime: its JobActor, its trainer process, its progress watcher.
//! - [`api`]: the operations clients ask for, and their gRPC face.
//! - [`gpus`]: the GPU pool: all-or-nothing assignment, never one GPU to two jobs.
//! - [`metrics`]: Prometheus counters and histograms, and their text rendering.
//! - [`hub`]: the live views of jobs and their broadcasts to watchers.
//! - [`policy`]: the restart-or-fail decision at the end of an attempt (pure).
//! - [`process`]: process identity, process-group signals and liveness, from the kernel.
//! - [`store`]: the durable job records in sled; the only module that touches sled.
//! - [`config`]: flags, the TOML file and defaults.
//! - [`systemd`]: READY/STATUS/WATCHDOG/STOPPING notifications.
//! - [`logging`]: trainerd's own log: journald, human text or JSON.
//! - [`access`]: who may use trainerd (peer credentials, bearer token) and as whom jobs run.
//! - [`users`]: the host's user and group database.
//! - [`fuzz`]: the parsers of outside bytes, as the fuzz targets call them.

pub mod access;
pub mod api;
pub mod config;
pub mod fuzz;
pub mod gpus;
pub mod hub;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod process;
pub mod run;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod users;
