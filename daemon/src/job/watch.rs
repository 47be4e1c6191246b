//! Watches a job directory for new progress files and tells the job actor.
//!
//! The trainer replaces the file by rename, so the watch is on the directory (a watch on the file
//! goes silent after the first rename). Only events that mean "new content under the progress name"
//! wake the actor; our own reads (IN_OPEN, IN_CLOSE_NOWRITE) must not, or every read would cause
//! another.

use super::PROGRESS_NAME;
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::path::Path;

/// Starts watching `dir`; `wake` runs on notify's thread for each relevant event.
pub fn watch_progress(dir: &Path, wake: impl Fn() + Send + 'static) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
        let Ok(event) = res else {
            // An overflow or watch error: wake anyway, the actor re-reads the file.
            wake();
            return;
        };
        let relevant = matches!(
            event.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both | RenameMode::Any))
                | EventKind::Create(_)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if relevant && event.paths.iter().any(|p| p.file_name().is_some_and(|n| n == PROGRESS_NAME)) {
            wake();
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
