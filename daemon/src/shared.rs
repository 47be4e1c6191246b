//! What every actor and the API share: the store, the live hub, the configuration in force, metrics,
//! the progress watcher and the Slurm client. Owned by `run`, handed to each actor at its spawn.

use crate::config::DaemonConfig;
use crate::hub::Hub;
use crate::store::records::JobId;
use crate::store::Store;
use std::sync::Arc;
use trainerd_proto::v1 as pb;

/// What every actor and the API share.
pub struct Shared {
    pub metrics: crate::metrics::Metrics,
    pub notifier: crate::systemd::Notifier,
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    /// The configuration; SIGHUP replaces it (see `run::reload`).
    pub config: std::sync::RwLock<Arc<DaemonConfig>>,
    /// The last reconciliation's report, for Health.
    pub last_reconcile: std::sync::Mutex<pb::ReconcileResponse>,
    /// The one inotify watcher of every job's progress file.
    pub progress_watch: Arc<crate::job::watch::ProgressWatch>,
    /// Finished jobs whose removal is under way: a retry of one is refused meanwhile.
    pub removing: std::sync::Mutex<std::collections::HashSet<JobId>>,
    /// The shim executable every local attempt runs under (chosen at start; a reload keeps it).
    pub shim: crate::builtin_shim::Executable,
    /// The Slurm executor's client of the cluster (asks nothing until a Slurm job runs).
    pub slurm: crate::job::executor::slurm::Cluster,
}

impl Shared {
    /// The configuration in force.
    pub fn config(&self) -> Arc<DaemonConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether job `id` is being removed.
    pub fn removing(&self, id: JobId) -> bool {
        self.removing.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }
}
