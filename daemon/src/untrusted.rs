//! Access to files a trainer controls: its progress file, the checkpoints that file names, and
//! anything in a job's directories that a trainer running as trainerd's own user could replace (the
//! logs, the shim's records).
//!
//! The rule (docs/security.md): such a path is looked at with `lstat` first, and opened only when it
//! is a regular file, with `O_NONBLOCK | O_NOFOLLOW`; the opened file is `fstat`ed and must be the same
//! regular file. So a FIFO never blocks an `open` (a FIFO with no writer would wait forever), a device
//! node is never opened at all (opening some has side effects), a symlink is never followed, and a
//! directory or socket is refused by name. Reads are capped. Whatever is refused is an error that names
//! the path and what it is, for the job's event log.
//!
//! Everything here is blocking file-system work: callers on the runtime run it through
//! [`crate::blocking`], which moves it off the runtime's threads under a deadline.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a path is, in the words an event uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    fn of(file_type: std::fs::FileType) -> Kind {
        if file_type.is_file() {
            Kind::Regular
        } else if file_type.is_dir() {
            Kind::Directory
        } else if file_type.is_symlink() {
            Kind::Symlink
        } else if file_type.is_fifo() {
            Kind::Fifo
        } else if file_type.is_socket() {
            Kind::Socket
        } else if file_type.is_char_device() {
            Kind::CharDevice
        } else {
            Kind::BlockDevice
        }
    }

    /// The kind in words ("a FIFO").
    pub fn words(self) -> &'static str {
        match self {
            Kind::Regular => "a regular file",
            Kind::Directory => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
        }
    }
}

/// Why a trainer-controlled path was not used.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("{} is {}, not a regular file", .path.display(), .kind.words())]
    NotRegular { path: PathBuf, kind: Kind },
    #[error("{} changed while it was opened; refused this time", .0.display())]
    Replaced(PathBuf),
    #[error("cannot read {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl Refused {
    fn io(path: &Path, source: std::io::Error) -> Refused {
        match source.kind() {
            std::io::ErrorKind::NotFound => Refused::Missing(path.to_path_buf()),
            _ => Refused::Io { path: path.to_path_buf(), source },
        }
    }
}

/// What `path` is, without following a link; `Missing` when nothing is there.
pub fn kind(path: &Path) -> Result<Kind, Refused> {
    std::fs::symlink_metadata(path).map(|m| Kind::of(m.file_type())).map_err(|e| Refused::io(path, e))
}

/// Opens `path` for reading when it is a regular file, never blocking and never following a link.
pub fn open_regular(path: &Path) -> Result<File, Refused> {
    open_checked(path, std::fs::OpenOptions::new().read(true))
}

/// Opens `path` for reading and writing (a log being rotated) on the same terms as [`open_regular`].
pub fn open_read_write(path: &Path) -> Result<File, Refused> {
    open_checked(path, std::fs::OpenOptions::new().read(true).write(true))
}

/// Opens (creating it if absent) a log for appending, on the same terms: a FIFO, socket, device or
/// link in its place is refused rather than written through.
pub fn open_append(path: &Path) -> Result<File, Refused> {
    match kind(path) {
        Ok(Kind::Regular) | Err(Refused::Missing(_)) => {}
        Ok(kind) => return Err(Refused::NotRegular { path: path.to_path_buf(), kind }),
        Err(e) => return Err(e),
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(SAFE_OPEN)
        .open(path)
        .map_err(|e| Refused::io(path, e))?;
    regular_or_refuse(path, file)
}

/// How every trainer-controlled path is opened: never blocking (a FIFO), never through a link, never
/// inherited by a child.
const SAFE_OPEN: i32 = libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn open_checked(path: &Path, options: &mut std::fs::OpenOptions) -> Result<File, Refused> {
    let before = std::fs::symlink_metadata(path).map_err(|e| Refused::io(path, e))?;
    let kind = Kind::of(before.file_type());
    if kind != Kind::Regular {
        return Err(Refused::NotRegular { path: path.to_path_buf(), kind });
    }
    let file = options.custom_flags(SAFE_OPEN).open(path).map_err(|e| Refused::io(path, e))?;
    let file = regular_or_refuse(path, file)?;
    let after = file.metadata().map_err(|e| Refused::io(path, e))?;
    // Replaced between the lstat and the open (by a rename, say): use it only if it is still the file
    // we looked at. The next change of the file brings the next read.
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) {
        return Err(Refused::Replaced(path.to_path_buf()));
    }
    Ok(file)
}

/// The opened file must be a regular file; O_NONBLOCK is cleared again (it means nothing for one,
/// and a trainer that inherits the descriptor as its stderr should not see it).
fn regular_or_refuse(path: &Path, file: File) -> Result<File, Refused> {
    use std::os::fd::AsRawFd;
    let meta = file.metadata().map_err(|e| Refused::io(path, e))?;
    let kind = Kind::of(meta.file_type());
    if kind != Kind::Regular {
        return Err(Refused::NotRegular { path: path.to_path_buf(), kind });
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take and return integers only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// Reads at most `limit` bytes of a regular file. A caller with a size cap passes one byte more than
/// the cap, and refuses a result that long.
pub fn read_prefix(path: &Path, limit: usize) -> Result<Vec<u8>, Refused> {
    let file = open_regular(path)?;
    let mut bytes = Vec::with_capacity(limit.min(4096));
    file.take(limit as u64).read_to_end(&mut bytes).map_err(|e| Refused::io(path, e))?;
    Ok(bytes)
}

/// Whether `path` is a usable checkpoint: a regular file that is not empty, or a directory that is
/// not empty, reached without following a link. The error says why not.
pub fn checkpoint_usable(path: &Path) -> Result<(), Refused> {
    match kind(path)? {
        Kind::Directory => {
            let mut entries = std::fs::read_dir(path).map_err(|e| Refused::io(path, e))?;
            match entries.next() {
                Some(_) => Ok(()),
                None => Err(Refused::Io { path: path.to_path_buf(), source: std::io::Error::other("it is empty") }),
            }
        }
        Kind::Regular => {
            let len = std::fs::symlink_metadata(path).map_err(|e| Refused::io(path, e))?.len();
            if len == 0 {
                return Err(Refused::Io { path: path.to_path_buf(), source: std::io::Error::other("it is empty") });
            }
            Ok(())
        }
        kind => Err(Refused::NotRegular { path: path.to_path_buf(), kind }),
    }
}

/// Whether `path`, as written (no link followed, no `..`), lies under one of `roots`. A checkpoint a
/// trainer names must be its own: under its trainer directory, its checkpoint directory or its
/// working directory, never elsewhere on the host.
pub fn lies_under(path: &Path, roots: &[&Path]) -> bool {
    use std::path::Component;
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return false;
    }
    // A link among the path's directories could lead out of the root: each must be a real directory.
    let Some(root) = roots.iter().find(|r| path.starts_with(r)) else { return false };
    let mut at = root.to_path_buf();
    let Ok(rest) = path.strip_prefix(root) else { return false };
    let mut parts = rest.components().peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        if parts.peek().is_some() && !matches!(kind(&at), Ok(Kind::Directory)) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("progress.json");
        mkfifo(&fifo);
        let e = read_prefix(&fifo, 1024).unwrap_err();
        assert!(matches!(e, Refused::NotRegular { kind: Kind::Fifo, .. }), "{e}");
        assert!(e.to_string().ends_with("progress.json is a FIFO, not a regular file"), "{e}");
        let e = open_append(&fifo).unwrap_err();
        assert!(matches!(e, Refused::NotRegular { kind: Kind::Fifo, .. }), "{e}");
    }

    #[test]
    fn links_directories_and_sockets_are_refused_and_regular_files_read() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(read_prefix(&link, 10), Err(Refused::NotRegular { kind: Kind::Symlink, .. })));
        assert!(matches!(read_prefix(dir.path(), 10), Err(Refused::NotRegular { kind: Kind::Directory, .. })));
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(matches!(read_prefix(&sock, 10), Err(Refused::NotRegular { kind: Kind::Socket, .. })));
        let null = read_prefix(Path::new("/dev/null"), 10);
        assert!(matches!(null, Err(Refused::NotRegular { kind: Kind::CharDevice, .. })));
        let file = dir.path().join("f");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(read_prefix(&file, 100).unwrap(), b"hello");
        assert_eq!(read_prefix(&file, 4).unwrap(), b"hell");
        assert!(matches!(read_prefix(&dir.path().join("absent"), 4), Err(Refused::Missing(_))));
    }

    #[test]
    fn an_appended_log_is_created_and_appended_to() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        open_append(&log).unwrap().write_all(b"a").unwrap();
        open_append(&log).unwrap().write_all(b"b").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"ab");
    }

    #[test]
    fn paths_open_nonblocking_without_links_or_inheritance_and_hand_over_blocking_files() {
        use std::os::fd::AsRawFd;
        for flag in [libc::O_NONBLOCK, libc::O_NOFOLLOW, libc::O_CLOEXEC] {
            assert_eq!(SAFE_OPEN & flag, flag, "flag {flag:#o}");
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        for file in [open_append(&log).unwrap(), open_regular(&log).unwrap(), open_read_write(&log).unwrap()] {
            // SAFETY: fcntl on descriptors we own.
            let (status, fd) =
                unsafe { (libc::fcntl(file.as_raw_fd(), libc::F_GETFL), libc::fcntl(file.as_raw_fd(), libc::F_GETFD)) };
            assert_eq!(status & libc::O_NONBLOCK, 0, "O_NONBLOCK is cleared once it is known to be a regular file");
            assert_ne!(fd & libc::FD_CLOEXEC, 0, "not inherited by children");
        }
    }

    #[test]
    fn a_checkpoint_must_lie_under_the_jobs_own_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("trainer");
        std::fs::create_dir_all(root.join("checkpoints/step-1")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        assert!(lies_under(&root.join("checkpoints/step-1"), &[&root]));
        assert!(lies_under(&root.join("checkpoints/step-2"), &[&root]), "a missing leaf is judged by its parents");
        assert!(!lies_under(&root.join("checkpoints/../../x"), &[&root]));
        assert!(!lies_under(Path::new("/etc/passwd"), &[&root]));
        assert!(!lies_under(&root.join("out/passwd"), &[&root]), "a link among the parents leads out");
        assert!(!lies_under(Path::new("relative/step-1"), &[&root]));
        let fifo = root.join("checkpoints/fifo");
        mkfifo(&fifo);
        assert!(matches!(checkpoint_usable(&fifo), Err(Refused::NotRegular { kind: Kind::Fifo, .. })));
        assert!(checkpoint_usable(&root.join("checkpoints")).is_ok());
    }
}
