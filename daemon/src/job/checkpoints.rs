//! Which checkpoint an attempt resumes from. A trainer names its checkpoints in its progress file,
//! and trainerd records them; but a trainer killed between renaming a checkpoint into place and its
//! next progress write leaves a newer checkpoint than the record knows. So at each start trainerd
//! also looks in the job's checkpoint directory for checkpoints in the protocol's layout
//! (docs/trainer-protocol.md, "Discoverable checkpoints") and resumes from the newest usable one.
//!
//! The layout: an entry directly in `TRAINERD_CHECKPOINT_DIR` named `step-N` with N the optimizer
//! steps done (any number of digits), optionally with one extension (`step-28.pt`); a non-empty
//! regular file or directory, reached without a link. Hidden names and `.tmp`/`.partial` names are
//! never taken: a checkpoint is renamed to its `step-N` name only when complete.
//!
//! Also here: which checkpoints a rollback sets aside, and which named checkpoints are admissible.
//!
//! Blocking: reads the trainer's directory through `untrusted`. Run it on the job's lane.

use crate::untrusted;
use std::path::{Path, PathBuf};
use trainerd_proto::trainer::CheckpointRef;

/// How many directory entries are looked at, at most (a trainer could fill its directory).
const MAX_ENTRIES: usize = 100_000;

/// The step a discoverable checkpoint's name says, if the name follows the layout.
pub fn step_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("step-")?;
    let (digits, extension) = match rest.split_once('.') {
        Some((d, e)) => (d, Some(e)),
        None => (rest, None),
    };
    // Digits only: u64's parser would take a leading `+`, and refuses empty and overflowing input.
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(e) = extension {
        if e.is_empty() || !e.bytes().all(|b| b.is_ascii_alphanumeric()) || matches!(e, "tmp" | "partial") {
            return None;
        }
    }
    digits.parse().ok()
}

/// Every entry of `dir` named in the protocol's layout, with its step (usable or not).
pub fn all_in(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .take(MAX_ENTRIES)
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((step_of(e.file_name().to_str()?)?, e.path())))
        .collect()
}

/// The newest usable checkpoint in `dir` in the protocol's layout, with its step.
pub fn newest_in(dir: &Path) -> Option<(u64, PathBuf)> {
    let mut found = all_in(dir);
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    found.into_iter().find(|(_, path)| untrusted::checkpoint_usable(path).is_ok())
}

/// Before a rollback: sets aside (renames to `.diverged-NAME`) the checkpoints in `dir` from step
/// `first_step` on, so that nothing resumes from them, and returns the newest usable checkpoint before
/// it, from the directory or else from `recorded` (the job's recorded ones).
pub fn set_aside_from(dir: &Path, first_step: u64, recorded: Vec<CheckpointRef>) -> Option<CheckpointRef> {
    let mut before: Option<(u64, PathBuf)> = None;
    for (step, path) in all_in(dir) {
        if step >= first_step {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                let _ = std::fs::rename(&path, dir.join(format!(".diverged-{name}")));
            }
        } else if before.as_ref().is_none_or(|(s, _)| step > *s) && untrusted::checkpoint_usable(&path).is_ok() {
            before = Some((step, path));
        }
    }
    let recorded = recorded
        .into_iter()
        .filter(|c| c.step < first_step && untrusted::checkpoint_usable(&c.path).is_ok())
        .max_by_key(|c| c.step);
    match (before, recorded) {
        (Some((step, _)), Some(r)) if r.step >= step => Some(r),
        (Some((step, path)), _) => Some(CheckpointRef { path, step, epoch: 0 }),
        (None, r) => r,
    }
}

/// Whether a checkpoint a trainer named may be handed back to it: under the job's own directories
/// (`roots`: the trainer's directory, the job's workdir), reached without a link, and a non-empty
/// regular file or directory. The error says why not.
pub fn admissible(path: &Path, roots: &[&Path]) -> Result<(), String> {
    if !untrusted::lies_under(path, roots) {
        return Err(format!(
            "{} is not under the job's directories ({}); only the job's own files are resumed from",
            path.display(),
            roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    untrusted::checkpoint_usable(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_the_layout_and_names_that_are_not() {
        assert_eq!(step_of("step-000000000028"), Some(28));
        assert_eq!(step_of("step-7.json"), Some(7));
        assert_eq!(step_of("step-7.pt"), Some(7));
        for name in
            ["step-", "step-x", "step-7.tmp", "step-7.partial", ".tmp-step-7-99", "step-7.old-99", "steps-7", "step-7."]
        {
            assert_eq!(step_of(name), None, "{name}");
        }
    }

    #[test]
    fn the_newest_usable_checkpoint_wins_and_an_empty_or_strange_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("step-000000000010")).unwrap();
        std::fs::write(d.join("step-000000000010/state.pt"), b"x").unwrap();
        std::fs::write(d.join("step-20.json"), b"20").unwrap();
        std::fs::create_dir(d.join("step-000000000030")).unwrap();
        std::fs::write(d.join(".tmp-step-000000000040-1"), b"half").unwrap();
        std::fs::write(d.join("step-50.tmp"), b"half").unwrap();
        std::os::unix::fs::symlink("/etc", d.join("step-60")).unwrap();
        assert_eq!(newest_in(d), Some((20, d.join("step-20.json"))), "30 is empty, 40 and 50 temporary, 60 a link");
        assert_eq!(newest_in(&d.join("absent")), None);
    }
}
