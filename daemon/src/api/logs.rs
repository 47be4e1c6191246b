//! Log streaming: the tail of a job's stdout and stderr, then, when following, every new byte until
//! the job ends. New bytes are found through notify on the job directory, not by polling; a log that
//! shrank was rotated (see `job::cap_log`) and is read again from its start. A trainer running as
//! trainerd's user could replace a log with a FIFO or a link: logs are opened through `untrusted`,
//! and read on the blocking pool under a deadline.

use super::{Api, ApiError};
use crate::hub::ends_watch;
use notify::{EventKind, RecursiveMode, Watcher};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;
use trainerd_proto::v1 as pb;

const DEFAULT_TAIL: u64 = 64 * 1024;
const CHUNK: u64 = 64 * 1024;

impl Api {
    /// Starts streaming a job's logs; the receiver ends when the logs do (or at once without follow).
    pub fn logs(self: &Arc<Self>, id: &str, follow: bool, tail: u64) -> Result<mpsc::Receiver<pb::LogChunk>, ApiError> {
        let id = self.resolve(id)?;
        let slurm = self.store.get(id).ok().flatten().is_some_and(|r| r.spec.more.slurm.is_some());
        let paths = self.config().job_paths(id, slurm);
        let tail = if tail == 0 { DEFAULT_TAIL } else { tail };
        // A queued job has no directory yet; make it, so following can watch it from the start.
        std::fs::create_dir_all(&paths.dir)
            .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", paths.dir.display())))?;
        let (tx, rx) = mpsc::channel(16);
        let (job, updates) = self.subscribe(&id.to_string())?;
        let ended = ends_watch(job.state());
        tokio::spawn(async move {
            let files = [("stdout", paths.stdout.clone()), ("stderr", paths.stderr.clone())];
            let mut offsets = [0u64; 2];
            for (i, (name, path)) in files.iter().enumerate() {
                let len = std::fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
                offsets[i] = len.saturating_sub(tail);
                if send_new(&tx, name, path, &mut offsets[i]).await.is_err() {
                    return;
                }
            }
            let (Some(mut updates), true, false) = (updates, follow, ended) else { return };
            let (wake_tx, mut wake) = mpsc::channel::<()>(1);
            let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok_and(|e| matches!(e.kind, EventKind::Modify(_) | EventKind::Create(_))) {
                    let _ = wake_tx.try_send(());
                }
            })
            .and_then(|mut w| w.watch(&paths.dir, RecursiveMode::NonRecursive).map(|()| w));
            let Ok(_watcher) = watcher else { return };
            loop {
                let done = tokio::select! {
                    _ = wake.recv() => false,
                    update = updates.recv() => match update {
                        Ok(u) => u.job.is_some_and(|j| ends_watch(j.state())),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => false,
                        Err(_) => true,
                    },
                    _ = tx.closed() => return,
                };
                for (i, (name, path)) in files.iter().enumerate() {
                    if send_new(&tx, name, path, &mut offsets[i]).await.is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Sends what `path` holds past `offset`, in chunks; Err when the receiver is gone. A log that is not
/// a regular file, or that cannot be read in time, sends nothing this time.
async fn send_new(tx: &mpsc::Sender<pb::LogChunk>, stream: &str, path: &Path, offset: &mut u64) -> Result<(), ()> {
    loop {
        let (path, from) = (path.to_path_buf(), *offset);
        let read =
            crate::blocking::run("reading a log", crate::blocking::FILE_DEADLINE, move || read_chunk(&path, from))
                .await;
        let Ok(Some((start, data))) = read else { return Ok(()) };
        *offset = start + data.len() as u64;
        tx.send(pb::LogChunk { stream: stream.into(), data }).await.map_err(|_| ())?;
    }
}

/// The next chunk of `path` from `offset` (from 0 when the file shrank: it was rotated), with the
/// offset it starts at; None at the end or when the file cannot be used.
fn read_chunk(path: &Path, offset: u64) -> Option<(u64, Vec<u8>)> {
    let mut file = crate::untrusted::open_regular(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = if len < offset { 0 } else { offset };
    if start >= len {
        return None;
    }
    let mut data = Vec::new();
    file.seek(SeekFrom::Start(start)).ok()?;
    (&mut file).take(CHUNK.min(len - start)).read_to_end(&mut data).ok()?;
    (!data.is_empty()).then_some((start, data))
}
