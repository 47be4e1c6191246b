//! Fault injection for the end-to-end tests, on only with `trainerd --test-hooks` (never in
//! production). A job opts in through its environment; each hook plays a fault that real systems
//! produce rarely and that the tests must be able to produce on demand:
//!
//! - `TRAINERD_TEST_PANIC_AFTER_STEP=N`: the job's actor panics once when progress reaches step N.
//! - `TRAINERD_TEST_WEDGE_AT_STEP=N`: the job's actor stops answering once (awaits forever) when
//!   progress reaches step N, as an actor stuck on a hung file system would.
//! - `TRAINERD_TEST_IGNORE_SHIM_EXIT=N`: the end of attempt N's shim is not reported to the actor,
//!   as if the notification were lost: only reconciliation can find it.
//! - `TRAINERD_TEST_CANCEL_WITHOUT_STOP=1`: a cancel is recorded without stopping the trainer, as if
//!   the stop were lost: the job is CANCELLED while its trainer runs on.
//! - `TRAINERD_TEST_ABORT_AFTER_SBATCH=N`: trainerd aborts (as a SIGKILL would end it) once, right
//!   after `sbatch` accepted attempt N and before its Slurm id is stored.
//!
//! Each once-only hook leaves a marker file in the job directory, so it fires once per job across
//! actor re-creations.

use crate::store::records::JobSpec;
use std::path::Path;

/// The environment variables' common prefix; submissions may set these (and no other `TRAINERD_`).
pub const PREFIX: &str = "TRAINERD_TEST_";

/// The hooks a job asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub panic_at: Option<u64>,
    pub wedge_at: Option<u64>,
    pub ignore_shim_exit: Option<u32>,
    pub cancel_without_stop: bool,
    pub abort_after_sbatch: Option<u32>,
}

impl Hooks {
    /// The hooks of `spec`, when trainerd runs with `--test-hooks`; none otherwise.
    pub fn of(spec: &JobSpec, enabled: bool) -> Hooks {
        if !enabled {
            return Hooks::default();
        }
        let var = |name: &str| spec.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        Hooks {
            panic_at: var("TRAINERD_TEST_PANIC_AFTER_STEP").and_then(|v| v.parse().ok()),
            wedge_at: var("TRAINERD_TEST_WEDGE_AT_STEP").and_then(|v| v.parse().ok()),
            ignore_shim_exit: var("TRAINERD_TEST_IGNORE_SHIM_EXIT").and_then(|v| v.parse().ok()),
            cancel_without_stop: var("TRAINERD_TEST_CANCEL_WITHOUT_STOP") == Some("1"),
            abort_after_sbatch: var("TRAINERD_TEST_ABORT_AFTER_SBATCH").and_then(|v| v.parse().ok()),
        }
    }
}

/// Whether a once-only hook named `name` may fire now for the job in `dir` (and marks it fired).
pub fn once(dir: &Path, name: &str) -> bool {
    let marker = dir.join(format!("test-hook-{name}"));
    if marker.exists() {
        return false;
    }
    std::fs::write(&marker, b"").is_ok()
}
