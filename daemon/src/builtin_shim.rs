//! The trainerd-shim built into trainerd (`daemon/shim/`, compiled by `build.rs`) and the executable
//! file each attempt runs it from. Built in, trainerd and its shim cannot be installed apart or at
//! different versions; an on-disk shim is still possible with `--shim PATH`.
//!
//! The file is a sealed memory file (`memfd_create`), run as `/proc/self/fd/N`: nothing on disk to
//! go stale, no state dir mounted `noexec` to trip over, and shims of an earlier trainerd keep
//! running their own copy. Where the kernel refuses executable memory files (`vm.memfd_noexec`),
//! the shim is written into the state dir instead.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The shim's static executable, as `build.rs` built it.
const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/trainerd-shim"));

/// The most supplementary groups the shim passes on to a trainer (`daemon/shim/main.rs` has room for
/// this many; a user in more is refused at start with a clear error).
pub const MAX_GROUPS: usize = 256;

/// The shim executable attempts run: a path, and the memory file behind it while trainerd runs.
#[derive(Debug)]
pub struct Executable {
    path: PathBuf,
    _memory: Option<OwnedFd>,
}

impl Executable {
    /// A shim installed on disk (`--shim PATH`).
    pub fn at(path: PathBuf) -> io::Result<Executable> {
        if !path.is_file() {
            return Err(io::Error::other(format!(
                "the shim {} does not exist or is not a file; give --shim the path of a trainerd-shim, or leave it out to use the built-in one",
                path.display()
            )));
        }
        Ok(Executable { path, _memory: None })
    }

    /// The built-in shim, in a sealed memory file, else in `state_dir`; checked by running it once.
    pub fn builtin(state_dir: &Path) -> io::Result<Executable> {
        let memory = in_memory().and_then(|fd| {
            let exe =
                Executable { path: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())), _memory: Some(fd) };
            exe.check().map(|()| exe)
        });
        let memory_error = match memory {
            Ok(exe) => return Ok(exe),
            Err(e) => e,
        };
        tracing::warn!("cannot run the built-in shim from memory ({memory_error}); writing it into the state dir");
        let exe = Executable { path: on_disk(state_dir)?, _memory: None };
        exe.check()?;
        Ok(exe)
    }

    /// The path to exec.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the shim with no arguments: it must start and answer with its usage (exit 2).
    fn check(&self) -> io::Result<()> {
        let status = std::process::Command::new(&self.path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| io::Error::other(format!("cannot run the shim {}: {e}", self.path.display())))?;
        match status.code() {
            Some(2) => Ok(()),
            _ => Err(io::Error::other(format!("the shim {} does not run here ({status})", self.path.display()))),
        }
    }
}

fn in_memory() -> io::Result<OwnedFd> {
    const MFD_EXEC: libc::c_uint = 0x10;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // Kernels from 6.3 want executable memory files asked for (MFD_EXEC); older ones reject the flag.
    // SAFETY: a NUL-terminated name and flags; returns a new descriptor or -1.
    let mut fd = unsafe { libc::memfd_create(c"trainerd-shim".as_ptr(), flags | MFD_EXEC) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(c"trainerd-shim".as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor memfd_create just returned, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(IMAGE)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// `STATE_DIR/trainerd-shim`, replaced atomically when its bytes differ from the built-in ones.
fn on_disk(state_dir: &Path) -> io::Result<PathBuf> {
    let path = state_dir.join("trainerd-shim");
    if std::fs::read(&path).is_ok_and(|bytes| bytes == IMAGE) {
        return Ok(path);
    }
    let tmp = state_dir.join("trainerd-shim.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o755).open(&tmp)?;
    file.write_all(IMAGE)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_shim_runs_from_memory_and_from_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let exe = Executable::builtin(dir.path()).unwrap();
        assert!(exe.path().starts_with("/proc/self/fd"), "{:?}", exe.path());
        let disk = Executable { path: on_disk(dir.path()).unwrap(), _memory: None };
        disk.check().unwrap();
        assert_eq!(std::fs::read(disk.path()).unwrap(), IMAGE);
        assert!(Executable::at(dir.path().join("absent")).is_err());
    }
}
