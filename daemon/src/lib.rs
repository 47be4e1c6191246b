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
//! - [`refusal`]: why the actors refuse a request, in domain terms (the API maps them).
//! - [`shared`]: what every actor and the API share (store, hub, configuration, metrics).
//! - [`recovery`]: reopens a store that failed to write (a full disk) once there is room again.
//! - [`store`]: the durable job records in sled; the only module that touches sled.
//! - [`config`]: flags, the TOML file and defaults.
//! - [`divergence`]: what health counts as divergent and reconcile repairs, defined once.
//! - [`disk`]: free space on the state dir, and the reserve kept for running jobs' transitions.
//! - [`systemd`]: READY/STATUS/WATCHDOG/STOPPING notifications.
//! - [`logging`]: trainerd's own log: journald, human text or JSON.
//! - [`access`]: who may use trainerd (peer credentials, bearer token) and as whom jobs run.
//! - [`users`]: the host's user and group database.
//! - [`fuzz`]: the parsers of outside bytes, as the fuzz targets call them.
//! - [`untrusted`]: the only way trainerd opens a path a trainer controls (no FIFO, link or device).
//! - [`blocking`]: where blocking file work runs: the blocking pool, under a deadline, one lane a job.

pub mod access;
pub mod api;
pub mod blocking;
pub mod builtin_shim;
pub mod config;
pub mod disk;
pub mod divergence;
pub mod fuzz;
pub mod gpus;
pub mod hub;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod process;
pub mod recovery;
pub mod refusal;
pub mod removal;
pub mod run;
pub mod shared;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod untrusted;
pub mod users;
