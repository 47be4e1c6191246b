//! Where blocking file-system work runs: on tokio's blocking pool, never on the runtime's worker
//! threads, and under a deadline. A read of a progress file on a local disk takes microseconds; on a
//! hung network file system (a Slurm node's shared directory) it can take forever, and a worker thread
//! stuck in it would stall every actor and client scheduled behind it.
//!
//! Each job has a [`Lane`]: at most one of its operations is in flight. When one overruns its deadline
//! the caller gets [`Overrun`] and goes on; the stuck thread finishes (or not) on its own, and until it
//! does the lane answers `Overrun` at once instead of stacking a second stuck thread behind the first.
//! So one hostile or slow job costs at most one blocked thread, and delays no other job and no client.
//!
//! The hand-off costs two thread wake-ups, which a thousand jobs writing progress once a second turned
//! into most of trainerd's CPU: the progress read and the log sizes of a job whose directory is on a
//! local disk skip it, through [`crate::untrusted::LocalDir`], where no read can hang.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a trainer-controlled file may take to read before trainerd stops waiting for it.
pub const FILE_DEADLINE: Duration = Duration::from_secs(2);

/// Blocking work that did not finish in time (or could not start: its lane is still busy with an
/// earlier operation that overran).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} took longer than {deadline:?} (a slow or hung file system?); not waited for")]
pub struct Overrun {
    pub what: &'static str,
    pub deadline: Duration,
}

/// One job's lane of blocking work (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Lane {
    busy: Arc<AtomicBool>,
}

impl Lane {
    /// Runs `work` on the blocking pool and waits for it at most `deadline`.
    pub async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        deadline: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Overrun> {
        let overrun = Overrun { what, deadline };
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(overrun);
        }
        let busy = self.busy.clone();
        let task = tokio::task::spawn_blocking(move || {
            let result = work();
            busy.store(false, Ordering::Release);
            result
        });
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok(value)) => Ok(value),
            // The work panicked: the lane is free again (its flag was never cleared), and the caller
            // treats it as an overrun rather than unwinding the actor.
            Ok(Err(_)) => {
                self.busy.store(false, Ordering::Release);
                Err(overrun)
            }
            Err(_) => Err(overrun),
        }
    }
}

/// Runs one piece of blocking work with its own deadline, outside any lane.
pub async fn run<T: Send + 'static>(
    what: &'static str,
    deadline: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Overrun> {
    Lane::default().run(what, deadline, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stuck_operation_is_not_waited_for_and_its_lane_refuses_a_second() {
        let lane = Lane::default();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let stuck = lane.run("a stuck read", Duration::from_millis(50), move || wait.recv().is_ok()).await;
        assert_eq!(stuck, Err(Overrun { what: "a stuck read", deadline: Duration::from_millis(50) }));
        let second = lane.run("a second read", Duration::from_secs(5), || 1).await;
        assert!(second.is_err(), "the lane is still busy with the stuck thread");
        release.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(v) = lane.run("a later read", Duration::from_secs(5), || 2).await {
                assert_eq!(v, 2);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the lane never became free");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_an_overrun_and_frees_the_lane() {
        let lane = Lane::default();
        assert!(lane.run("a panicking read", Duration::from_secs(5), || panic!("boom")).await.is_err());
        assert_eq!(lane.run("the next read", Duration::from_secs(5), || 3).await, Ok(3));
    }
}
