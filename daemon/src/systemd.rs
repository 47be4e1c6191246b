//! The systemd notify protocol: `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1` as datagrams to
//! `$NOTIFY_SOCKET`. Without that variable (not started by systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A handle to systemd's notify socket, if trainerd has one.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
            return Notifier::default();
        };
        let addr = match path.to_str().and_then(|p| p.strip_prefix('@')) {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&path),
        };
        match (UnixDatagram::unbound(), addr) {
            (Ok(socket), Ok(addr)) => Notifier { target: Some((socket, addr)) },
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("NOTIFY_SOCKET {path:?} is unusable: {e}");
                Notifier::default()
            }
        }
    }

    /// Sends one notification (newline-separated assignments). Failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!("cannot notify systemd ({state:?}): {e}");
            }
        }
    }

    /// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when the watchdog is meant for us.
    pub fn watchdog_interval() -> Option<Duration> {
        if let Some(pid) = std::env::var("WATCHDOG_PID").ok().filter(|p| !p.is_empty()) {
            if pid.parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|u| *u > 0)?;
        Some(Duration::from_micros(usec / 2))
    }
}
