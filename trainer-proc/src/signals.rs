//! The protocol's signals, turned into flags the training loop checks at step and epoch boundaries.
//! SIGUSR1 asks for a pause at the end of the epoch; SIGTERM asks for a stop at the next step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Requests received by signal.
#[derive(Clone)]
pub struct Requests {
    pause: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Requests {
    /// Installs the handlers. SIGTERM no longer kills the process: the loop must check [`Self::stop`].
    pub fn install() -> std::io::Result<Requests> {
        let requests = Requests { pause: Arc::default(), stop: Arc::default() };
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, requests.pause.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, requests.stop.clone())?;
        Ok(requests)
    }

    /// Whether a pause was requested.
    pub fn pause(&self) -> bool {
        self.pause.load(Ordering::Relaxed)
    }

    /// Whether a stop was requested.
    pub fn stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}
