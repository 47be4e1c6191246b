//! A job's log files (`stdout.log`, `stderr.log`, trainerd's, appended to by every attempt): made
//! usable again when something else took their place, and kept under their size cap while the job
//! runs, looked at as often as their growth asks.

use crate::untrusted;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::JobPaths;

/// The longest wait between two looks at a job's log sizes.
const EVERY_MAX: Duration = Duration::from_secs(10);

/// Whether both log paths are usable as they are: a regular file, or nothing yet. When not,
/// [`reclaim_logs`] makes them so.
pub fn logs_usable(paths: &JobPaths) -> bool {
    [&paths.stdout, &paths.stderr]
        .into_iter()
        .all(|path| matches!(untrusted::kind(path), Ok(untrusted::Kind::Regular) | Err(untrusted::Refused::Missing(_))))
}

/// Makes the job's log paths usable again when something other than a regular file (a FIFO, a link,
/// a socket a trainer put there) took their place: the logs are trainerd's, so whatever is there is
/// removed, and the next attempt's logs start afresh. Returns one line per path reclaimed.
pub fn reclaim_logs(paths: &JobPaths) -> Vec<String> {
    let mut reclaimed = Vec::new();
    for path in [&paths.stdout, &paths.stderr] {
        match untrusted::kind(path) {
            Ok(untrusted::Kind::Regular) | Err(untrusted::Refused::Missing(_)) => {}
            Ok(kind) => {
                let removed = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
                reclaimed.push(match removed {
                    Ok(()) => format!("{} was {}, not a log; removed, a new log begins", path.display(), kind.words()),
                    Err(e) => format!("{} is {}, not a log, and cannot be removed: {e}", path.display(), kind.words()),
                });
            }
            Err(e) => reclaimed.push(e.to_string()),
        }
    }
    reclaimed
}

/// Keeps a log file under `cap` bytes by copy-truncate: the newest half of its content moves to
/// `NAME.1` (replacing the older rotation) and the file is truncated. The trainer writes with
/// O_APPEND, so its next write lands at the new end. Returns whether it rotated.
pub fn cap_log(path: &Path, cap: u64) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let len = match std::fs::symlink_metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= cap {
        return Ok(false);
    }
    let keep = cap / 2;
    let mut file = untrusted::open_read_write(path).map_err(std::io::Error::other)?;
    file.seek(SeekFrom::Start(len - keep))?;
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    // Replaced, never opened as found: whatever is at NAME.1 (a FIFO, a link) is removed first, and
    // a new regular file created exclusively.
    match std::fs::remove_file(&rotated) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&rotated)?
    };
    std::io::copy(&mut (&mut file).take(keep), &mut out)?;
    file.set_len(0)?;
    Ok(true)
}

/// When to look at a running job's log sizes, and what the last look found. A quiet trainer's logs
/// are looked at every 10 s, a flooding one's within the time it takes to fill half their remaining
/// room (at least every 100 ms), so a thousand jobs cost few `statx` calls and a flood still meets
/// its cap. A look may come up to half that time late (to share the job's timer with its stall
/// deadline): by then the flood has filled at most three quarters of the room.
#[derive(Debug, Clone)]
pub struct LogCaps {
    checked: Instant,
    sizes: [u64; 2],
    every: Duration,
}

/// What one look did to one log.
pub enum Looked {
    /// Under its cap.
    Fine,
    /// Over its cap, and rotated (its path).
    Rotated(PathBuf),
    /// Over its cap, and the rotation failed.
    Failed(PathBuf, std::io::Error),
}

impl Default for LogCaps {
    fn default() -> Self {
        LogCaps { checked: Instant::now(), sizes: [0; 2], every: Duration::from_secs(1) }
    }
}

impl LogCaps {
    /// How long until the next look.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// A look is taken now (when is the job's timer's to say, `super::wake`): the time since the
    /// last one.
    pub fn looking(&mut self) -> Duration {
        let since = self.checked.elapsed();
        self.checked = Instant::now();
        since
    }

    /// Blocking (run it on the job's lane): the logs' sizes now (before any rotation), each rotated
    /// when over `cap`.
    pub fn look(paths: [PathBuf; 2], cap: u64) -> [(u64, Looked); 2] {
        paths.map(|path| {
            let size = std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            if size <= cap {
                return (size, Looked::Fine);
            }
            match cap_log(&path, cap) {
                Ok(_) => (size, Looked::Rotated(path)),
                Err(e) => (size, Looked::Failed(path, e)),
            }
        })
    }

    /// Takes a look `since` the one before, and sets when to look next: as soon as the faster of the
    /// logs would fill half its remaining room at the rate it grew.
    pub fn took(&mut self, looked: &[(u64, Looked); 2], since: Duration, cap: u64) {
        let mut next = EVERY_MAX;
        for (i, (size, what)) in looked.iter().enumerate() {
            let grew = size.saturating_sub(self.sizes[i]);
            // A rotated log starts again from empty.
            let size = if matches!(what, Looked::Rotated(_)) { 0 } else { *size };
            self.sizes[i] = size;
            if grew > 0 {
                let room = cap.saturating_sub(size) as f64;
                let fill_half = since.as_secs_f64() * room / (2.0 * grew as f64);
                next = next.min(Duration::from_secs_f64(fill_half.clamp(0.1, EVERY_MAX.as_secs_f64())));
            }
        }
        self.every = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn logs_are_usable_as_regular_files_or_absent_and_a_fifo_in_their_place_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let paths = JobPaths::new(dir.path(), crate::store::records::JobId(7));
        std::fs::create_dir_all(&paths.dir).unwrap();
        assert!(logs_usable(&paths), "no logs yet");
        std::fs::write(&paths.stdout, b"earlier attempt\n").unwrap();
        assert!(logs_usable(&paths), "a regular log and a missing one");
        let fifo = std::ffi::CString::new(paths.stderr.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(!logs_usable(&paths), "a FIFO where stderr.log belongs");
        let reclaimed = reclaim_logs(&paths);
        assert_eq!(reclaimed.len(), 1, "{reclaimed:?}");
        assert!(logs_usable(&paths));
        assert_eq!(std::fs::read(&paths.stdout).unwrap(), b"earlier attempt\n", "the regular log is kept");
    }

    #[test]
    fn a_log_over_its_cap_keeps_its_newest_half_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut writer = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        writer.write_all(&[b'a'; 600]).unwrap();
        writer.write_all(&[b'b'; 600]).unwrap();
        assert!(!cap_log(&path, 2000).unwrap());
        assert!(cap_log(&path, 1000).unwrap());
        assert_eq!(std::fs::read(dir.path().join("stdout.log.1")).unwrap(), vec![b'b'; 500]);
        writer.write_all(b"next").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"next", "an O_APPEND writer continues at the new end");
    }

    #[test]
    fn a_flooding_log_is_looked_at_sooner_and_a_quiet_one_every_ten_seconds() {
        let mut caps = LogCaps::default();
        let quiet = [(100, Looked::Fine), (0, Looked::Fine)];
        caps.took(&quiet, Duration::from_secs(1), 1_000_000);
        // 100 bytes a second into 1 MB of room: half of it fills in about 5000 s, so the cap's 10 s.
        assert_eq!(caps.every(), EVERY_MAX);
        caps.took(&quiet, Duration::from_secs(1), 1_000_000);
        assert_eq!(caps.every(), EVERY_MAX, "no growth since");
        // 600 kB in a second with 1 MB of room: half the room left fills in about 0.25 s.
        let flood = [(600_100, Looked::Fine), (0, Looked::Fine)];
        caps.took(&flood, Duration::from_secs(1), 1_000_000);
        assert!(
            caps.every() < Duration::from_millis(400) && caps.every() >= Duration::from_millis(100),
            "{:?}",
            caps.every()
        );
        // Rotated: it starts again from empty, and the rate it grew at still counts.
        let rotated = [(1_200_000, Looked::Rotated(PathBuf::from("x"))), (0, Looked::Fine)];
        caps.took(&rotated, Duration::from_secs(1), 1_000_000);
        assert!(caps.every() < Duration::from_secs(1), "{:?}", caps.every());
    }
}
