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

    /// The kind of a `stat`'s mode.
    fn of_mode(mode: libc::mode_t) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::Regular,
            libc::S_IFDIR => Kind::Directory,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            _ => Kind::BlockDevice,
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
    #[error("{} lies on another file system than its directory; refused", .0.display())]
    OtherFileSystem(PathBuf),
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

/// A directory trainerd made for a trainer (its `trainer/` directory), held open, whose files are
/// read without leaving it: no link followed, no mount point crossed, nothing but a regular file
/// opened. Only a directory on a local disk file system is held so ([`LocalDir::open`] refuses any
/// other), which is what makes a read here safe to do inline, on the caller's thread: with no
/// network, FUSE or other mount reachable, a capped read of a regular file cannot hang. Every other
/// trainer path goes through [`crate::blocking`].
#[derive(Debug)]
pub struct LocalDir {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
    /// Whether reads may ask for `O_NOATIME` (the files are trainerd's own, or trainerd may).
    noatime: std::sync::atomic::AtomicBool,
}

/// The file systems whose reads finish on their own: local disks and memory. A network or FUSE file
/// system (where a read may wait on a server or a process forever) is not among them.
const LOCAL_FILE_SYSTEMS: [i64; 9] = [
    0xef53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683e, // btrfs
    0x0102_1994, // tmpfs
    0x858_458f6, // ramfs
    0x794c_7630, // overlayfs
    0xf2f5_2010, // f2fs
    0x2fc1_2fc1, // zfs
    0xca45_1a4e, // bcachefs
];

impl LocalDir {
    /// Opens the directory `path` (one trainerd created, in a directory the trainer cannot change)
    /// to read from inline. `Ok(None)` when it is not on a local disk file system, or when this
    /// kernel cannot resolve a name beneath a directory (`openat2`, Linux 5.6): read through the
    /// blocking pool instead.
    pub fn open(path: &Path) -> Result<Option<LocalDir>, Refused> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Refused::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("a NUL in the path"),
        })?;
        // SAFETY: a NUL-terminated path; the result is a new descriptor we own, or -1.
        let fd =
            unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(Refused::io(path, std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fstatfs writes one statfs into the zeroed buffer we own.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) } != 0 {
            return Err(Refused::io(path, std::io::Error::last_os_error()));
        }
        if !LOCAL_FILE_SYSTEMS.contains(&(fs.f_type as i64)) {
            return Ok(None);
        }
        let dir = LocalDir { fd, path: path.to_path_buf(), noatime: std::sync::atomic::AtomicBool::new(true) };
        // Whether this kernel has openat2 (Linux 5.6) is asked once per process.
        static OPENAT2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let supported = *OPENAT2.get_or_init(|| match dir.openat2(c".", libc::O_PATH) {
            Ok(probe) => {
                // SAFETY: `probe` was just opened and is owned by nothing else.
                drop(unsafe { OwnedFd::from_raw_fd(probe) });
                true
            }
            Err(e) => e.raw_os_error() != Some(libc::ENOSYS),
        });
        Ok(supported.then_some(dir))
    }

    /// The directory's path, as opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads at most `limit` bytes of the regular file `name` in this directory, on the terms of
    /// [`read_prefix`], resolved beneath the directory without crossing a mount or following a link.
    pub fn read_prefix(&self, name: &str, limit: usize) -> Result<Vec<u8>, Refused> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let c = self.c_name(name)?;
        let refused = |e: std::io::Error| match e.raw_os_error() {
            Some(libc::EXDEV) => Refused::OtherFileSystem(self.path.join(name)),
            _ => Refused::io(&self.path.join(name), e),
        };
        // Looked at first without being opened: a device node's driver never sees an open, a FIFO
        // never a reader. One name in a directory held open: the look crosses no directory and
        // follows no link (and only root could mount something at the name).
        let before = self.stat(&c).map_err(refused)?;
        let kind = Kind::of_mode(before.st_mode);
        if kind != Kind::Regular {
            return Err(Refused::NotRegular { path: self.path.join(name), kind });
        }
        // O_NOATIME: a read would otherwise stamp the access time of each new progress file, an inode
        // write through the journal per progress write. Only the file's owner (or a capable trainerd)
        // may ask it; when refused once, it is not asked again.
        let plain = libc::O_RDONLY | SAFE_OPEN;
        let fd = match self.noatime.load(std::sync::atomic::Ordering::Relaxed) {
            true => match self.openat2(&c, plain | libc::O_NOATIME) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    self.noatime.store(false, std::sync::atomic::Ordering::Relaxed);
                    self.openat2(&c, plain)
                }
                other => other,
            },
            false => self.openat2(&c, plain),
        }
        .map_err(refused)?;
        // SAFETY: `fd` is a descriptor just opened and owned by nothing else.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let after = file.metadata().map_err(refused)?;
        if (after.dev(), after.ino()) != (before.st_dev, before.st_ino) || !after.file_type().is_file() {
            return Err(Refused::Replaced(self.path.join(name)));
        }
        // Sized from the open file, one byte over to see it grew: a regular file on a local disk
        // fills a read to its end, so the common read is one call, with no second one to see EOF.
        let want = usize::try_from(after.len()).unwrap_or(usize::MAX).saturating_add(1).min(limit);
        let mut bytes = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match file.read(&mut bytes[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(refused(e)),
            }
            if filled as u64 >= after.len() && filled < want {
                break;
            }
        }
        bytes.truncate(filled);
        Ok(bytes)
    }

    /// The size of `name` in this directory, without following a link (a link's own size); 0 when
    /// it is missing.
    pub fn size_of(&self, name: &str) -> Result<u64, Refused> {
        let c = self.c_name(name)?;
        match self.stat(&c) {
            Ok(st) => Ok(st.st_size.max(0) as u64),
            Err(e) => match Refused::io(&self.path.join(name), e) {
                Refused::Missing(_) => Ok(0),
                e => Err(e),
            },
        }
    }

    /// `name` for a system call: one name, no directory in it.
    fn c_name(&self, name: &str) -> Result<std::ffi::CString, Refused> {
        let bad =
            |why: &str| Refused::Io { path: self.path.join(name), source: std::io::Error::other(why.to_string()) };
        if name.contains('/') || name == ".." {
            return Err(bad("not a name in the directory"));
        }
        std::ffi::CString::new(name).map_err(|_| bad("a NUL in the name"))
    }

    /// `fstatat` of `name` in this directory, not following a link.
    fn stat(&self, name: &std::ffi::CStr) -> std::io::Result<libc::stat> {
        use std::os::fd::AsRawFd;
        // SAFETY: stat is plain integers; zeroed is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat reads the NUL-terminated name and writes one stat into `st`, which we own.
        if unsafe { libc::fstatat(self.fd.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st)
    }

    /// `openat2` of `name` beneath this directory: no `..` out of it, no mount point crossed, no
    /// link of any kind followed (a trailing link with `O_PATH | O_NOFOLLOW` is opened as itself).
    fn openat2(&self, name: &std::ffi::CStr, flags: i32) -> std::io::Result<i32> {
        use std::os::fd::AsRawFd;
        // SAFETY: open_how is plain integers; zeroed is its empty value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_XDEV | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 reads the NUL-terminated name and `how` (of the size given) and returns a new
        // descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd as i32)
    }
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
    fn a_local_directory_reads_only_its_own_regular_files_and_other_file_systems_are_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let held = LocalDir::open(dir.path()).unwrap().expect("a temporary directory is on a local disk");
        assert_eq!(held.path(), dir.path());
        std::fs::write(dir.path().join("f"), b"hello").unwrap();
        assert_eq!(held.read_prefix("f", 100).unwrap(), b"hello");
        assert_eq!(held.read_prefix("f", 4).unwrap(), b"hell");
        assert!(matches!(held.read_prefix("absent", 4), Err(Refused::Missing(_))));
        assert_eq!(held.size_of("f").unwrap(), 5);
        assert_eq!(held.size_of("absent").unwrap(), 0);
        mkfifo(&dir.path().join("fifo"));
        let e = held.read_prefix("fifo", 10).unwrap_err();
        assert!(matches!(e, Refused::NotRegular { kind: Kind::Fifo, .. }), "{e}");
        assert!(e.to_string().ends_with("fifo is a FIFO, not a regular file"), "{e}");
        std::os::unix::fs::symlink(dir.path().join("f"), dir.path().join("link")).unwrap();
        assert!(matches!(held.read_prefix("link", 10), Err(Refused::NotRegular { kind: Kind::Symlink, .. })));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(matches!(held.read_prefix("sub", 10), Err(Refused::NotRegular { kind: Kind::Directory, .. })));
        let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        assert!(matches!(held.read_prefix("sock", 10), Err(Refused::NotRegular { kind: Kind::Socket, .. })));
        assert!(held.read_prefix("../escape", 10).is_err(), "nothing outside the directory is reached");
        // A directory replaced by a link after it was opened: reads still go to the one held.
        let moved = dir.path().with_extension("moved");
        std::fs::rename(dir.path(), &moved).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path()).unwrap();
        assert_eq!(held.read_prefix("f", 100).unwrap(), b"hello");
        assert!(matches!(held.read_prefix("passwd", 10), Err(Refused::Missing(_))));
        std::fs::remove_file(dir.path()).unwrap();
        std::fs::rename(&moved, dir.path()).unwrap();
        assert!(LocalDir::open(Path::new("/proc")).unwrap().is_none(), "procfs is not a local disk");
        assert!(LocalDir::open(&dir.path().join("link")).is_err(), "a link is not opened as the directory");
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
