//! Watches the trainer directories for new progress files and tells their job actors.
//!
//! One inotify descriptor, read on tokio's own reactor, serves every job. Two things the notify crate
//! (still used for following logs) cannot give this hot path, measured at a thousand jobs writing once
//! a second: notify subscribes every watch to every event kind, so each progress write queued about ten
//! events, our own read of the file included (IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE); and it hands them
//! over from a thread of its own, a wake-up and a context switch per event. Its thread was 40% of
//! trainerd's CPU. Here the kernel queues only what means "a new progress file" (IN_MOVED_TO for the
//! trainer's rename, IN_CLOSE_WRITE for a plain write, IN_CREATE for a link), and a watch per job would also have stopped at
//! the kernel's per-user limit on inotify instances (128 by default).

use super::PROGRESS_NAME;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What a watched directory's event wakes.
pub trait Wake: Send + Sync {
    /// Runs on the watcher's task for each event that names a watched file: must not block.
    fn wake(&self);
}

impl<F: Fn() + Send + Sync> Wake for F {
    fn wake(&self) {
        self()
    }
}

type Waker = Arc<dyn Wake>;
/// Watch descriptor → the wake-ups of its directory, by guard, with the names that wake them. inotify
/// gives a directory watched twice (a job actor re-created while the old one's guard lives) the same
/// descriptor.
type Wakers = HashMap<i32, Entries>;

/// One wake-up of a watched directory: its guard's id, the names it is for, what it wakes.
type Entry = (u64, &'static [&'static str], Waker);

/// A directory's wake-ups. Nearly always one, held in the map's own slot: at a thousand jobs each
/// event's lookup is a cache miss, and a vector's buffer would be a second.
#[derive(Default)]
struct Entries {
    first: Option<Entry>,
    more: Vec<Entry>,
}

impl Entries {
    fn push(&mut self, entry: Entry) {
        match self.first {
            None => self.first = Some(entry),
            Some(_) => self.more.push(entry),
        }
    }

    /// Removes guard `id`'s; whether none is left.
    fn remove(&mut self, id: u64) -> bool {
        if self.first.as_ref().is_some_and(|(first, _, _)| *first == id) {
            self.first = self.more.pop();
        } else {
            self.more.retain(|(other, _, _)| *other != id);
        }
        self.first.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.first.iter().chain(&self.more)
    }
}

/// The names whose growth a log watch reports.
const LOG_NAMES: &[&str] = &["stdout.log", "stderr.log"];
/// The name a progress watch reports.
const PROGRESS_NAMES: &[&str] = &[PROGRESS_NAME];

/// How many watched directories make the watcher gather events (see [`GATHER`]).
const BUSY_WATCHES: usize = 64;

/// How long a busy watcher lets events gather before it reads them while someone watches a job's
/// updates (a WatchJob stream, the web page's). A thousand trainers writing once a second are a
/// thousand wake-ups of a runtime thread a second, each a context switch in and out: on a 2-core
/// machine those switches were half of trainerd's CPU. Read every 4 ms, the same writes cost at most
/// 250 wake-ups a second, and each write reaches its watchers at most 4 ms later, inside the
/// propagation budget (5 ms). With fewer jobs every event is read as it comes.
pub const GATHER: Duration = Duration::from_millis(4);

/// [`GATHER`] while nobody watches any job: a report's delay is then nobody's wait, and the cost of
/// a wake-up (as much as reading five reports, measured at a thousand jobs) is paid 50 times a
/// second instead of 250. A beat is noted at most this late (the stall clock's deadlines are
/// seconds), and `get` shows a report at most this late.
pub const GATHER_UNWATCHED: Duration = Duration::from_millis(20);

/// The shared progress watcher.
pub struct ProgressWatch {
    /// The inotify descriptor; `run` registers it with the runtime's reactor.
    fd: OwnedFd,
    /// How many jobs someone watches (`Hub::streams`): which gather applies.
    streams: Arc<AtomicUsize>,
    wakers: Mutex<Wakers>,
    next_guard: AtomicU64,
}

/// Keeps one directory watched; dropping it stops the watch (when it was the last guard of it).
pub struct WatchGuard {
    wd: i32,
    id: u64,
    watch: Arc<ProgressWatch>,
}

fn lock(m: &Mutex<Wakers>) -> MutexGuard<'_, Wakers> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProgressWatch {
    /// Opens the inotify descriptor and starts the task that reads it, gathering events as long as
    /// `streams` (how many jobs someone watches) says. Must run inside the runtime.
    pub fn new(streams: Arc<AtomicUsize>) -> std::io::Result<Arc<ProgressWatch>> {
        // SAFETY: inotify_init1 takes flags only; a non-negative result is a descriptor we now own.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let watch = Arc::new(ProgressWatch { fd, streams, wakers: Mutex::default(), next_guard: AtomicU64::new(0) });
        // Registered here, so that a runtime that cannot take it fails the start, not the task.
        let registered = watch.register()?;
        tokio::spawn(watch.clone().run(registered));
        Ok(watch)
    }

    /// Registers the descriptor with the runtime's reactor (dropping the result deregisters it).
    fn register(&self) -> std::io::Result<AsyncFd<RawFd>> {
        // SAFETY: the descriptor is `self.fd`, open for as long as `self` lives, and every
        // registration is held by `run`, which holds `self`.
        unsafe { AsyncFd::register_with_interest(self.fd.as_raw_fd(), Interest::READABLE) }
            .map_err(std::io::Error::from)
    }

    /// Watches `dir`; `wake` runs for each new progress file in it, until the guard is dropped.
    pub fn watch(self: &Arc<Self>, dir: &Path, wake: Arc<impl Wake + 'static>) -> std::io::Result<WatchGuard> {
        // IN_CREATE too: a progress file may appear by link or symlink (refused, but seen).
        let mask = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_CREATE | libc::IN_ONLYDIR;
        self.add(dir, mask, PROGRESS_NAMES, wake)
    }

    /// Watches the job directory `dir` for writes to its logs (only jobs that read progress from
    /// their output ask for this: every write(2) of the trainer is an event). `wake` runs for each,
    /// until the guard is dropped.
    pub fn watch_logs(
        self: &Arc<Self>,
        dir: &Path,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<WatchGuard> {
        self.add(dir, libc::IN_MODIFY | libc::IN_ONLYDIR, LOG_NAMES, Arc::new(wake))
    }

    fn add(
        self: &Arc<Self>,
        dir: &Path,
        mask: u32,
        names: &'static [&'static str],
        wake: Waker,
    ) -> std::io::Result<WatchGuard> {
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let id = self.next_guard.fetch_add(1, Ordering::Relaxed);
        lock(&self.wakers).entry(wd).or_default().push((id, names, wake));
        Ok(WatchGuard { wd, id, watch: self.clone() })
    }

    /// Reads events until the descriptor fails; wakes the job of each new progress file. An event
    /// queue overflow wakes every job (each re-reads its file).
    ///
    /// With many jobs watched, the events that arrive within [`GATHER`] of a read wait for the next
    /// read together (see [`GATHER`]). While each such read finds events, the next one is simply
    /// [`GATHER`] later, out of the reactor: leaving it and coming back for every read (an
    /// `epoll_ctl` out, one in, and a registration) cost a tenth of trainerd's CPU at a thousand
    /// jobs. The first read that finds nothing goes back to waiting in the reactor, so a quiet
    /// watcher costs nothing.
    async fn run(self: Arc<Self>, registered: AsyncFd<RawFd>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut registered = Some(registered);
        let mut gathering = false;
        loop {
            let mut ready = None;
            if gathering {
                let watched = self.streams.load(Ordering::Relaxed) > 0;
                tokio::time::sleep(if watched { GATHER } else { GATHER_UNWATCHED }).await;
            } else {
                let fd = match registered.take() {
                    Some(fd) => fd,
                    // Registered again: events that came meanwhile make it ready at once.
                    None => match self.register() {
                        Ok(fd) => fd,
                        Err(e) => {
                            tracing::error!("the progress watcher cannot wait for events any more: {e}");
                            return;
                        }
                    },
                };
                let Ok(guard) = registered.insert(fd).readable().await else { return };
                ready = Some(guard);
            }
            // SAFETY: read(2) into our buffer, at most its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                match std::io::Error::last_os_error().kind() {
                    std::io::ErrorKind::WouldBlock => {
                        if let Some(mut ready) = ready {
                            ready.clear_ready();
                        }
                        gathering = false;
                    }
                    std::io::ErrorKind::Interrupted => {}
                    _ => return,
                }
                continue;
            }
            let wakers = lock(&self.wakers);
            for (wd, mask, name) in events(&buf[..n as usize]) {
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    wakers.values().flat_map(Entries::iter).for_each(|(_, _, w)| w.wake());
                } else {
                    let named = |names: &&[&str]| names.iter().any(|n| n.as_bytes() == name);
                    let entries = wakers.get(&wd).into_iter().flat_map(Entries::iter);
                    entries.filter(|(_, n, _)| named(n)).for_each(|(_, _, w)| w.wake());
                }
            }
            gathering = wakers.len() >= BUSY_WATCHES;
            drop(wakers);
            if gathering {
                // Out of the reactor while events gather: registered, every event would still wake
                // a runtime thread only for it to find nothing to do yet.
                registered = None;
            }
        }
    }
}

/// The events in a buffer read from an inotify descriptor: watch descriptor, mask and name (without
/// its NUL padding).
fn events(mut buf: &[u8]) -> impl Iterator<Item = (i32, u32, &[u8])> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    std::iter::from_fn(move || {
        if buf.len() < HEADER {
            return None;
        }
        let field = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let (wd, mask, len) = (field(0) as i32, field(4), field(12) as usize);
        let end = (HEADER + len).min(buf.len());
        let name = &buf[HEADER..end];
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        let event = (wd, mask, name);
        buf = &buf[end..];
        Some(event)
    })
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut wakers = lock(&self.watch.wakers);
        let last = wakers.get_mut(&self.wd).is_some_and(|entries| entries.remove(self.id));
        if last {
            wakers.remove(&self.wd);
            // SAFETY: removing our own watch; EINVAL when the directory is already gone, which is fine.
            unsafe { libc::inotify_rm_watch(self.watch.fd.as_raw_fd(), self.wd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Waits (at most 5 s) until job `which` is woken.
    async fn woken(rx: &mut tokio::sync::mpsc::UnboundedReceiver<usize>, which: usize) {
        let wait = async {
            while let Some(i) = rx.recv().await {
                if i == which {
                    return;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), wait).await.expect("woken within 5 s");
    }

    #[tokio::test]
    async fn one_watcher_wakes_the_job_whose_progress_file_changed_and_no_other() {
        let watch = ProgressWatch::new(Arc::default()).unwrap();
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let counts: Arc<[AtomicUsize; 2]> = Arc::default();
        let guards: Vec<WatchGuard> = [&a, &b]
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let (counts, tx) = (counts.clone(), tx.clone());
                watch
                    .watch(
                        dir,
                        Arc::new(move || {
                            counts[i].fetch_add(1, Ordering::SeqCst);
                            let _ = tx.send(i);
                        }),
                    )
                    .unwrap()
            })
            .collect();
        // One descriptor delivers events in order: once b's wake for a later write arrives, every
        // event before it has been handled.
        std::fs::write(a.join("other.txt"), b"x").unwrap();
        trainerd_proto::atomic::write_atomic(&b.join(PROGRESS_NAME), b"{}").unwrap();
        woken(&mut rx, 1).await;
        assert_eq!(counts[0].load(Ordering::SeqCst), 0, "another file in a's directory woke a");
        // A plain write of the progress file wakes for its creation and for its close.
        std::fs::write(a.join(PROGRESS_NAME), b"{}").unwrap();
        trainerd_proto::atomic::write_atomic(&b.join(PROGRESS_NAME), b"{}").unwrap();
        woken(&mut rx, 1).await;
        assert_eq!(counts[0].load(Ordering::SeqCst), 2, "a plain write is a creation and a close");
        // A second guard on the same directory keeps it watched, and woken, when the first goes.
        let again = watch
            .watch(
                &b,
                Arc::new(move || {
                    let _ = tx.send(2);
                }),
            )
            .unwrap();
        drop(guards);
        assert_eq!(lock(&watch.wakers).len(), 1);
        trainerd_proto::atomic::write_atomic(&b.join(PROGRESS_NAME), b"{}").unwrap();
        woken(&mut rx, 2).await;
        drop(again);
        assert!(lock(&watch.wakers).is_empty());
    }

    #[tokio::test]
    async fn a_busy_watcher_gathering_its_events_still_wakes_every_job_that_wrote() {
        // Gathering for a watched job's sake, and for nobody's.
        for watched in [1, 0] {
            busy_watcher_wakes_every_job_that_wrote(watched).await;
        }
    }

    async fn busy_watcher_wakes_every_job_that_wrote(watched: usize) {
        let watch = ProgressWatch::new(Arc::new(AtomicUsize::new(watched))).unwrap();
        let gather = if watched > 0 { GATHER } else { GATHER_UNWATCHED };
        let root = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let dirs: Vec<_> = (0..BUSY_WATCHES + 6).map(|i| root.path().join(i.to_string())).collect();
        let _guards: Vec<WatchGuard> = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                std::fs::create_dir_all(dir).unwrap();
                let tx = tx.clone();
                watch
                    .watch(
                        dir,
                        Arc::new(move || {
                            let _ = tx.send(i);
                        }),
                    )
                    .unwrap()
            })
            .collect();
        // Several rounds, so that events come while the watcher gathers out of the reactor, and,
        // after a pause longer than a gather (its next read finds nothing), while it waits in the
        // reactor again.
        for round in 0..4 {
            if round % 2 == 1 {
                tokio::time::sleep(gather * 5).await;
            }
            for dir in dirs.iter().skip(round).step_by(7) {
                trainerd_proto::atomic::write_atomic(&dir.join(PROGRESS_NAME), b"{}").unwrap();
            }
            for i in (round..dirs.len()).step_by(7) {
                woken(&mut rx, i).await;
            }
        }
    }

    #[test]
    fn events_are_split_with_their_names_unpadded() {
        let mut buf = Vec::new();
        for (wd, name) in [(3i32, &b"progress.json\0\0\0"[..]), (4, &b""[..])] {
            buf.extend(wd.to_ne_bytes());
            buf.extend(libc::IN_MOVED_TO.to_ne_bytes());
            buf.extend(0u32.to_ne_bytes());
            buf.extend((name.len() as u32).to_ne_bytes());
            buf.extend(name);
        }
        let seen: Vec<_> = events(&buf).collect();
        assert_eq!(seen, vec![(3, libc::IN_MOVED_TO, &b"progress.json"[..]), (4, libc::IN_MOVED_TO, &b""[..])]);
    }
}
