//! Removing finished jobs and keeping the disk in bounds: `trainctl rm` for named jobs, the retention
//! policy (`keep-finished`, `keep-finished-days`, `keep-final-checkpoint`) for the rest, and the
//! disk use each job's directory holds (`trainctl df`).
//!
//! A removal deletes the job's directory (logs, progress, checkpoints), then its events and keys, and
//! its record last (`Store::delete`): one that stops half-way leaves the job listed, and removing it
//! again finishes the work. Only finished jobs (completed, failed, cancelled) are ever removed; a
//! job's workdir outside the state dir is the user's and is never touched.
//!
//! Blocking: walks and deletes directories; run it on the blocking pool.

use crate::job::JobPaths;
use crate::shared::Shared;
use crate::store::records::{JobId, JobRecord};
use crate::store::{Store, StoreError};
use std::path::{Path, PathBuf};
use trainerd_proto::state::is_terminal;
use trainerd_proto::v1::JobState;

/// The most directory entries counted for one job's disk use (a trainer may create millions).
const MAX_ENTRIES: usize = 200_000;

/// Why a job could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {0} is being removed already")]
    Busy(JobId),
    #[error("cannot delete {path}: {source}")]
    Files { path: PathBuf, source: std::io::Error },
}

/// What one removal freed.
#[derive(Debug, Clone, PartialEq)]
pub struct Removed {
    pub id: JobId,
    /// Bytes of the job directory deleted (not counting a final checkpoint kept).
    pub bytes: u64,
    /// Where the final checkpoint was kept, when it was.
    pub kept: Option<PathBuf>,
}

/// Bytes under `path` (not following links), and whether the count stopped at [`MAX_ENTRIES`].
pub fn disk_use(path: &Path) -> (u64, bool) {
    let mut bytes = 0;
    let mut entries = 0;
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else { continue };
        for entry in listing.flatten() {
            entries += 1;
            if entries > MAX_ENTRIES {
                return (bytes, true);
            }
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    (bytes, false)
}

/// Removes finished job `id`: its directory, then its store entries. With `keep_final_checkpoint`, a
/// completed job's final checkpoint is moved to `kept/<id>/` in the state dir first.
pub fn remove(shared: &Shared, id: JobId, keep_final_checkpoint: bool) -> Result<Removed, RemoveError> {
    if !shared.removing.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
        return Err(RemoveError::Busy(id));
    }
    let result = remove_marked(shared, id, keep_final_checkpoint);
    shared.removing.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    result
}

fn remove_marked(shared: &Shared, id: JobId, keep_final_checkpoint: bool) -> Result<Removed, RemoveError> {
    let store: &Store = &shared.store;
    let record = store.get(id)?.ok_or(StoreError::NotFound(id))?;
    if !is_terminal(record.state()) {
        return Err(StoreError::NotFinished { id, state: trainerd_proto::state::state_word(record.state()) }.into());
    }
    let state_dir = shared.config().state_dir.clone();
    let paths = shared.config().job_paths(id, record.spec.more.slurm.is_some());
    let kept = match keep_final_checkpoint {
        true => keep_final(&record, &paths, &state_dir)?,
        false => None,
    };
    let (bytes, _) = disk_use(&paths.dir);
    match std::fs::remove_dir_all(&paths.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RemoveError::Files { path: paths.dir, source: e });
        }
        _ => {}
    }
    store.delete(id)?;
    Ok(Removed { id, bytes, kept })
}

/// Moves a completed job's final checkpoint out of its directory, when it lies there.
fn keep_final(record: &JobRecord, paths: &JobPaths, state_dir: &Path) -> Result<Option<PathBuf>, RemoveError> {
    let Some(checkpoint) = &record.latest_checkpoint else { return Ok(None) };
    if record.state() != JobState::Completed || !checkpoint.path.starts_with(&paths.dir) {
        return Ok(None);
    }
    let Some(name) = checkpoint.path.file_name() else { return Ok(None) };
    let into = state_dir.join("kept").join(record.id.to_string());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RemoveError::Files { path, source }
    };
    std::fs::create_dir_all(&into).map_err(io(&into))?;
    let target = into.join(name);
    std::fs::rename(&checkpoint.path, &target).map_err(io(&checkpoint.path))?;
    Ok(Some(target))
}

/// The finished jobs the retention policy removes now: beyond the `keep` newest finished ones, or
/// finished more than `max_age_s` ago. Running, queued, paused and backing-off jobs are never chosen.
pub fn expired(records: &[(JobId, f64)], keep: Option<usize>, max_age_s: Option<f64>, now: f64) -> Vec<JobId> {
    let mut finished = records.to_vec();
    // Newest first (by when they finished), then by id for equal times.
    finished.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0 .0.cmp(&a.0 .0)));
    finished
        .into_iter()
        .enumerate()
        .filter(|(i, (_, at))| keep.is_some_and(|k| *i >= k) || max_age_s.is_some_and(|age| now - at > age))
        .map(|(_, (id, _))| id)
        .collect()
}

/// Applies the retention policy once; returns what it removed. A job that cannot be removed now is
/// logged and tried again at the next run.
pub fn apply_retention(shared: &Shared) -> Vec<Removed> {
    let config = shared.config();
    let (keep, days) = (config.keep_finished, config.keep_finished_days);
    if keep.is_none() && days.is_none() {
        return Vec::new();
    }
    let finished: Vec<(JobId, f64)> = shared
        .store
        .records()
        .filter_map(Result::ok)
        .filter(|r| is_terminal(r.state()))
        .map(|r| (r.id, r.updated_at))
        .collect();
    let now = trainerd_proto::trainer::unix_now();
    let mut removed = Vec::new();
    for id in expired(&finished, keep, days.map(|d| d * 86_400.0), now) {
        match remove(shared, id, config.keep_final_checkpoint) {
            Ok(r) => {
                tracing::info!(job = %id, bytes = r.bytes, "removed by the retention policy");
                removed.push(r);
            }
            Err(e) => tracing::warn!(job = %id, "the retention policy could not remove the job: {e}"),
        }
    }
    removed
}

/// Runs the retention policy at start and then every hour, on the blocking pool.
pub async fn run(shared: std::sync::Arc<Shared>) {
    loop {
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || apply_retention(&s)).await;
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest_and_the_young() {
        let jobs = [(JobId(1), 100.0), (JobId(2), 300.0), (JobId(3), 200.0), (JobId(4), 400.0)];
        assert_eq!(expired(&jobs, Some(2), None, 500.0), [JobId(3), JobId(1)], "beyond the 2 newest");
        assert_eq!(expired(&jobs, None, Some(250.0), 500.0), [JobId(3), JobId(1)], "older than 250 s");
        assert_eq!(expired(&jobs, Some(3), Some(350.0), 500.0), [JobId(1)]);
        assert!(expired(&jobs, None, None, 500.0).is_empty());
        assert!(expired(&jobs, Some(10), Some(1000.0), 500.0).is_empty());
        assert_eq!(expired(&jobs, Some(0), None, 500.0).len(), 4);
    }

    #[test]
    fn disk_use_counts_files_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 24]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("link")).unwrap();
        let (bytes, truncated) = disk_use(dir.path());
        assert!(!truncated);
        // The link counts as its own small size, never as /usr.
        assert!((1024..1024 + 64).contains(&bytes), "{bytes}");
    }
}
