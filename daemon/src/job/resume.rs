//! Resuming a script that knows nothing of `TRAINERD_RESUME_FROM` (`--checkpoint-glob` and
//! `--resume-arg`): at each restart trainerd finds the newest complete checkpoint matching the glob,
//! relative to the job's workdir, and appends the resume argument with its path, the way a person
//! would rerun `python train.py --resume_from_checkpoint output/checkpoint-400`.
//!
//! "Complete" (docs/trainer-protocol.md, "Resuming unchanged scripts"):
//! - a directory is complete when it holds the marker file (`--checkpoint-marker`; the Hugging Face
//!   Trainer writes `trainer_state.json` last), or, without a marker, when it is not empty;
//! - a file is complete when it is not empty, has not been written for [`QUIET`], and its name is not
//!   a temporary one (hidden, or ending in `.tmp`, `.partial`, `.part`, `~`).
//!
//! "Newest": the highest number in the file name (`checkpoint-400` > `checkpoint-90`), then the latest
//! modification time. The glob supports `*`, `?` and literal components; it never follows a link, and
//! a match must lie under the workdir.
//!
//! Blocking: reads directories; run it on the job's lane.

use crate::store::records::ResumeRule;
use crate::untrusted::{self, Kind};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long a checkpoint file must have been left alone to count as complete.
pub const QUIET: Duration = Duration::from_secs(2);
/// The most entries looked at in one directory.
const MAX_ENTRIES: usize = 100_000;
/// Bounds on what a submission may give.
const MAX_GLOB: usize = 1024;
const MAX_ARG: usize = 4096;

/// The resume rule of a submission, or the field that is wrong and why.
pub fn rule(glob: &str, arg: &str, marker: &str) -> Result<Option<ResumeRule>, (&'static str, String)> {
    match (glob.is_empty(), arg.is_empty()) {
        (true, true) if marker.is_empty() => return Ok(None),
        (true, true) => {
            return Err(("checkpoint_marker", "goes with checkpoint_glob and resume_arg; give them too".into()))
        }
        (true, false) => {
            return Err(("checkpoint_glob", "is empty; resume_arg needs the checkpoints to choose from".into()))
        }
        (false, true) => {
            return Err((
                "resume_arg",
                "is empty; say how the script takes a checkpoint, like --resume {checkpoint}".into(),
            ))
        }
        (false, false) => {}
    }
    if glob.len() > MAX_GLOB || glob.contains('\0') {
        return Err(("checkpoint_glob", format!("must be at most {MAX_GLOB} bytes, without NUL")));
    }
    let path = Path::new(glob);
    if path.is_absolute() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(("checkpoint_glob", format!("{glob:?} must be relative to the workdir, without `..` or `.`")));
    }
    if arg.len() > MAX_ARG || arg.contains('\0') || !arg.contains("{checkpoint}") {
        return Err((
            "resume_arg",
            format!("{arg:?} must hold {{checkpoint}}, where the path goes (--resume_from_checkpoint {{checkpoint}})"),
        ));
    }
    if !marker.is_empty() && (marker.contains('/') || marker.contains('\0') || marker == "." || marker == "..") {
        return Err(("checkpoint_marker", format!("{marker:?} must be a file name, without a slash")));
    }
    Ok(Some(ResumeRule {
        glob: glob.into(),
        arg: arg.into(),
        marker: Some(marker.to_string()).filter(|m| !m.is_empty()),
    }))
}

/// The arguments that resume from `checkpoint`.
pub fn arguments(rule: &ResumeRule, checkpoint: &Path) -> Vec<String> {
    let path = checkpoint.display().to_string();
    rule.arg.split_whitespace().map(|word| word.replace("{checkpoint}", &path)).collect()
}

/// The newest complete checkpoint under `workdir` that the rule's glob matches.
pub fn newest(rule: &ResumeRule, workdir: &Path, now: SystemTime) -> Option<PathBuf> {
    let mut found: Vec<(Option<u64>, SystemTime, PathBuf)> = matches(workdir, &rule.glob)
        .into_iter()
        .filter(|p| complete(p, rule.marker.as_deref(), now))
        .map(|p| {
            let modified = std::fs::symlink_metadata(&p).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            (last_number(&p), modified, p)
        })
        .collect();
    found.sort();
    found.pop().map(|(_, _, p)| p)
}

/// The paths under `root` that `glob` matches, component by component, never through a link.
fn matches(root: &Path, glob: &str) -> Vec<PathBuf> {
    let mut at = vec![root.to_path_buf()];
    let parts: Vec<&str> = glob.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for dir in &at {
            if !matches!(untrusted::kind(dir), Ok(Kind::Directory)) {
                continue;
            }
            if !part.contains(['*', '?']) {
                let path = dir.join(part);
                if last || matches!(untrusted::kind(&path), Ok(Kind::Directory)) {
                    next.push(path);
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.take(MAX_ENTRIES).flatten() {
                let name = entry.file_name();
                if name.to_str().is_some_and(|n| wildcard(part, n)) {
                    next.push(entry.path());
                }
            }
        }
        at = next;
    }
    at.retain(|p| untrusted::lies_under(p, &[root]));
    at
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character; a leading `.` only literally).
pub fn wildcard(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn complete(path: &Path, marker: Option<&str>, now: SystemTime) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let temporary = name.starts_with('.')
        || [".tmp", ".partial", ".part", "~"].iter().any(|s| name.ends_with(s))
        || name.contains(".tmp.");
    if temporary {
        return false;
    }
    match untrusted::kind(path) {
        Ok(Kind::Directory) => match marker {
            Some(marker) => matches!(untrusted::kind(&path.join(marker)), Ok(Kind::Regular)),
            None => untrusted::checkpoint_usable(path).is_ok(),
        },
        Ok(Kind::Regular) => {
            let quiet = std::fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() >= QUIET)
                .unwrap_or(false);
            quiet && untrusted::checkpoint_usable(path).is_ok()
        }
        _ => false,
    }
}

/// The last run of digits in the file name (`checkpoint-400` → 400).
fn last_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let end = name.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = name[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    name[start..end].parse().ok()
}

/// The step a checkpoint's name says, when it says one (for the resume check).
pub fn step_of(path: &Path) -> Option<u64> {
    last_number(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_a_shell_would() {
        assert!(wildcard("checkpoint-*", "checkpoint-400"));
        assert!(wildcard("*.ckpt", "last.ckpt"));
        assert!(wildcard("v?", "v1"));
        assert!(wildcard("*", "x"));
        assert!(!wildcard("*", ".hidden"), "a leading dot only literally");
        assert!(!wildcard("checkpoint-*", "checkpoint"));
        assert!(!wildcard("*.ckpt", "last.ckpt.tmp"));
        assert!(wildcard("a*b*c", "aXXbYYc") && !wildcard("a*b*c", "aXXbYY"));
    }

    #[test]
    fn the_newest_complete_hugging_face_checkpoint_is_chosen_and_a_half_written_one_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("output");
        for (name, done) in [("checkpoint-90", true), ("checkpoint-400", true), ("checkpoint-500", false)] {
            std::fs::create_dir_all(out.join(name)).unwrap();
            std::fs::write(out.join(name).join("model.safetensors"), b"w").unwrap();
            if done {
                std::fs::write(out.join(name).join("trainer_state.json"), b"{}").unwrap();
            }
        }
        std::os::unix::fs::symlink("/etc", out.join("checkpoint-999")).unwrap();
        let rule = rule("output/checkpoint-*", "--resume_from_checkpoint {checkpoint}", "trainer_state.json")
            .unwrap()
            .unwrap();
        let found = newest(&rule, dir.path(), SystemTime::now()).unwrap();
        assert_eq!(found, out.join("checkpoint-400"), "500 has no marker yet; 999 is a link");
        assert_eq!(arguments(&rule, &found), ["--resume_from_checkpoint".to_string(), found.display().to_string()]);
        assert_eq!(step_of(&found), Some(400));
    }

    #[test]
    fn a_checkpoint_file_counts_once_it_has_been_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ckpts = dir.path().join("lightning_logs/version_0/checkpoints");
        std::fs::create_dir_all(&ckpts).unwrap();
        std::fs::write(ckpts.join("last.ckpt"), b"weights").unwrap();
        std::fs::write(ckpts.join("last.ckpt.tmp"), b"half").unwrap();
        let rule =
            rule("lightning_logs/version_*/checkpoints/*.ckpt", "--ckpt_path {checkpoint}", "").unwrap().unwrap();
        assert_eq!(newest(&rule, dir.path(), SystemTime::now()), None, "just written: maybe not whole yet");
        let later = SystemTime::now() + QUIET;
        assert_eq!(newest(&rule, dir.path(), later), Some(ckpts.join("last.ckpt")));
        assert_eq!(newest(&rule, &dir.path().join("absent"), later), None);
    }

    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        assert_eq!(rule("", "", ""), Ok(None));
        assert_eq!(rule("out/*", "", "").unwrap_err().0, "resume_arg");
        assert_eq!(rule("", "--r {checkpoint}", "").unwrap_err().0, "checkpoint_glob");
        assert_eq!(rule("/abs/*", "--r {checkpoint}", "").unwrap_err().0, "checkpoint_glob");
        assert_eq!(rule("../up/*", "--r {checkpoint}", "").unwrap_err().0, "checkpoint_glob");
        assert_eq!(rule("out/*", "--resume", "").unwrap_err().0, "resume_arg");
        assert_eq!(rule("out/*", "--r {checkpoint}", "a/b").unwrap_err().0, "checkpoint_marker");
        assert_eq!(rule("", "", "m").unwrap_err().0, "checkpoint_marker");
        let arg = "--r {checkpoint}";
        for marker in [".", "..", "a\0b"] {
            assert_eq!(rule("out/*", arg, marker).unwrap_err().0, "checkpoint_marker", "{marker:?}");
        }
        assert_eq!(rule("out/a\0b", arg, "").unwrap_err().0, "checkpoint_glob");
        assert_eq!(rule("out/*", "--r {checkpoint}\0", "").unwrap_err().0, "resume_arg");
        let glob = |n: usize| format!("o/{}", "g".repeat(n - 2));
        assert!(rule(&glob(MAX_GLOB), arg, "").is_ok(), "exactly the bound is allowed");
        assert_eq!(rule(&glob(MAX_GLOB + 1), arg, "").unwrap_err().0, "checkpoint_glob");
        assert_eq!(rule(&glob(MAX_GLOB + 7), arg, "").unwrap_err().0, "checkpoint_glob");
        let long_arg = |n: usize| format!("{arg} {}", "a".repeat(n - arg.len() - 1));
        assert!(rule("out/*", &long_arg(MAX_ARG), "").is_ok(), "exactly the bound is allowed");
        assert_eq!(rule("out/*", &long_arg(MAX_ARG + 1), "").unwrap_err().0, "resume_arg");
        assert_eq!(rule("out/*", &long_arg(MAX_ARG + 7), "").unwrap_err().0, "resume_arg");
    }

    #[test]
    fn a_literal_last_component_may_be_a_file_and_temporary_names_never_count() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("last.ckpt"), b"w").unwrap();
        let later = SystemTime::now() + QUIET;
        let literal = rule("out/last.ckpt", "--ckpt {checkpoint}", "").unwrap().unwrap();
        assert_eq!(newest(&literal, dir.path(), later), Some(out.join("last.ckpt")));
        let temporary = [".hidden", "x.tmp", "x.partial", "x.part", "x~", "x.tmp.3"];
        for name in temporary {
            std::fs::write(out.join(name), b"w").unwrap();
        }
        // Long after they were written: only their names keep them out.
        let later = SystemTime::now() + QUIET;
        for name in temporary {
            assert!(!complete(&out.join(name), None, later), "{name}");
        }
        assert!(complete(&out.join("last.ckpt"), None, later));
    }

    #[test]
    fn wildcards_backtrack_over_several_characters() {
        assert!(wildcard("*-400", "checkpoint-400"));
        assert!(wildcard("c*t-*0", "checkpoint-400"));
        assert!(wildcard("ab?d", "abcd") && !wildcard("ab?d", "abd"));
        assert!(wildcard("*x*y", "axxbxy") && !wildcard("*x*y", "axxbx"));
    }
}
