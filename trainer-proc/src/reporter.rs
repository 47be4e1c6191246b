//! The progress file and its heartbeat.
//!
//! The training loop only edits an in-memory [`Progress`] (a mutex and a few stores: this is what keeps
//! reporting under 1% of training time). A separate thread writes the file when it changed and at
//! least every heartbeat interval, so a trainer busy in a long evaluation or a slow data load still
//! beats. Its writes are atomic for readers but not fsynced: a heartbeat is a sign of life, and its two
//! fsyncs were most of reporting's cost. State changes (paused, completed, a checkpoint written) are
//! written durably at once, from the caller's thread, before the call returns.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trainerd_proto::trainer::{unix_now, Progress};

/// Owns the progress file and the heartbeat thread.
pub struct Reporter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    path: PathBuf,
    heartbeat: Duration,
    min_interval: Duration,
    inner: Mutex<Inner>,
    wake: Condvar,
    /// Serialises writes so that the file's `heartbeat_seq` only ever grows.
    write_lock: Mutex<()>,
}

struct Inner {
    progress: Progress,
    dirty: bool,
    last_write: Instant,
    suspended: bool,
    shutdown: bool,
    stats: Stats,
}

/// What reporting cost, for the overhead figure.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Files written.
    pub writes: u64,
    /// Time spent writing them (any thread).
    pub write_time: Duration,
    /// Time the training loop spent in [`Reporter::update`].
    pub update_time: Duration,
    /// Write errors (the trainer keeps training; trainerd will see the silence).
    pub errors: u64,
}

/// Whether a write must survive a power cut.
#[derive(Debug, Clone, Copy)]
enum Durability {
    /// fsynced file and directory: a state change trainerd must find after any crash.
    Synced,
    /// Atomic for readers only: a heartbeat.
    ForReaders,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reporter {
    /// Writes the first `starting` record at once, then starts the heartbeat thread.
    pub fn start(
        path: PathBuf,
        heartbeat: Duration,
        min_interval: Duration,
        initial: Progress,
    ) -> std::io::Result<Reporter> {
        let shared = Arc::new(Shared {
            path,
            heartbeat,
            min_interval,
            inner: Mutex::new(Inner {
                progress: initial,
                dirty: true,
                last_write: Instant::now(),
                suspended: false,
                shutdown: false,
                stats: Stats::default(),
            }),
            wake: Condvar::new(),
            write_lock: Mutex::new(()),
        });
        shared.write(Durability::Synced)?;
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new().name("heartbeat".into()).spawn(move || shared.run())?
        };
        Ok(Reporter { shared, thread: Some(thread) })
    }

    /// Edits the in-memory progress; the heartbeat thread writes it within `min_interval`.
    pub fn update(&self, edit: impl FnOnce(&mut Progress)) {
        let started = Instant::now();
        let mut inner = lock(&self.shared.inner);
        edit(&mut inner.progress);
        if !inner.dirty {
            // The thread may be in a heartbeat-long wait: wake it once per write cycle, not per step.
            inner.dirty = true;
            self.shared.wake.notify_one();
        }
        inner.stats.update_time += started.elapsed();
    }

    /// Edits the progress and writes the file before returning: for state changes that trainerd must
    /// see before the trainer acts on them (paused, completed, checkpoint written).
    pub fn update_now(&self, edit: impl FnOnce(&mut Progress)) -> std::io::Result<()> {
        self.update(edit);
        self.shared.write(Durability::Synced)
    }

    /// Edits the progress and writes the file before returning, atomically for readers but without
    /// an fsync: for what trainerd must see before the trainer goes on but a power cut may lose (a
    /// checkpoint written: its own files are durable, and trainerd finds the newest in the
    /// checkpoint directory at the next start).
    pub fn update_visible(&self, edit: impl FnOnce(&mut Progress)) -> std::io::Result<()> {
        self.update(edit);
        self.shared.write(Durability::ForReaders)
    }

    /// Stops all writes, heartbeats included: the trainer looks hung from outside (fault injection).
    pub fn suspend(&self) {
        lock(&self.shared.inner).suspended = true;
    }

    /// The current in-memory progress.
    pub fn snapshot(&self) -> Progress {
        lock(&self.shared.inner).progress.clone()
    }

    /// What reporting has cost so far.
    pub fn stats(&self) -> Stats {
        lock(&self.shared.inner).stats
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        lock(&self.shared.inner).shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        let mut inner = lock(&self.inner);
        loop {
            if inner.shutdown {
                return;
            }
            let since = inner.last_write.elapsed();
            let due = if inner.dirty { self.min_interval } else { self.heartbeat };
            if since < due || inner.suspended {
                let wait = if inner.suspended { self.heartbeat } else { due - since };
                inner = self.wake.wait_timeout(inner, wait).unwrap_or_else(|p| p.into_inner()).0;
                continue;
            }
            drop(inner);
            let _ = self.write(Durability::ForReaders);
            inner = lock(&self.inner);
        }
    }

    /// Writes the current progress with the next `heartbeat_seq`.
    fn write(&self, durability: Durability) -> std::io::Result<()> {
        let _serial = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = {
            let mut inner = lock(&self.inner);
            if inner.suspended {
                return Ok(());
            }
            inner.progress.heartbeat_seq += 1;
            inner.progress.updated_at = unix_now();
            inner.dirty = false;
            inner.last_write = Instant::now();
            inner.progress.clone()
        };
        let started = Instant::now();
        let result = match durability {
            Durability::Synced => snapshot.write(&self.path),
            Durability::ForReaders => snapshot.write_unsynced(&self.path),
        };
        let mut inner = lock(&self.inner);
        inner.stats.writes += 1;
        inner.stats.write_time += started.elapsed();
        if let Err(e) = &result {
            inner.stats.errors += 1;
            if inner.stats.errors == 1 {
                eprintln!("trainer-proc: cannot write progress file {}: {e}", self.path.display());
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainerd_proto::trainer::TrainerState;

    fn read(path: &std::path::Path) -> Progress {
        Progress::parse(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn heartbeats_continue_while_the_loop_is_silent_and_stop_when_suspended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.json");
        let reporter =
            Reporter::start(path.clone(), Duration::from_millis(20), Duration::from_millis(5), Progress::starting(0.0))
                .unwrap();
        let first = read(&path).heartbeat_seq;
        let deadline = Instant::now() + Duration::from_secs(10);
        while read(&path).heartbeat_seq < first + 3 {
            assert!(Instant::now() < deadline, "no heartbeats without updates");
            std::thread::sleep(Duration::from_millis(5));
        }
        reporter.suspend();
        std::thread::sleep(Duration::from_millis(30));
        let frozen = read(&path).heartbeat_seq;
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(read(&path).heartbeat_seq, frozen, "a suspended reporter must not beat");
    }

    #[test]
    fn update_now_is_on_disk_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.json");
        let reporter =
            Reporter::start(path.clone(), Duration::from_secs(60), Duration::from_secs(60), Progress::starting(0.0))
                .unwrap();
        reporter.update_now(|p| p.state = TrainerState::Paused).unwrap();
        assert_eq!(read(&path).state, TrainerState::Paused);
    }
}
