//! Progress from a trainer's output lines (`--progress-regex`), for scripts that print their progress
//! but write no progress file: tqdm bars, `step 120/1000 loss 0.53`, a framework's log lines. trainerd
//! already captures stdout and stderr into the job's logs; this reads what they gained, splits it into
//! lines (at `\n` and at `\r`, which is how tqdm redraws its bar), and matches each against the job's
//! regular expression. The named groups `step`, `total`, `epoch` and `loss` fill the job's progress,
//! and every other named group that parses as a number is a metric; a later line's value wins, so one
//! expression with alternatives can take the step from a bar and the loss from a log line.
//!
//! Bounded: a line is matched on its first [`MAX_LINE`] bytes only, each scan reads at most
//! [`MAX_READ`] bytes per log, and the regular expression's compiled size is capped.
//!
//! Blocking: [`Scanner::scan`] reads files; run it on the job's lane.

use regex::Regex;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The longest prefix of a line that is matched; the rest of a longer line is ignored.
pub const MAX_LINE: usize = 4096;
/// The most bytes one scan reads from one log.
pub const MAX_READ: u64 = 1 << 20;
/// The longest regular expression a submission may give.
pub const MAX_REGEX: usize = 4096;

/// Compiles a submission's expression, or says exactly why not (the message for `progress_regex`).
pub fn compile(text: &str) -> Result<Regex, String> {
    if text.len() > MAX_REGEX {
        return Err(format!("is {} bytes; give at most {MAX_REGEX}", text.len()));
    }
    let regex = regex::RegexBuilder::new(text)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| format!("is not a regular expression: {e}"))?;
    if regex.capture_names().flatten().next().is_none() {
        return Err(format!(
            "{text:?} names no group; name what it captures, like (?P<step>\\d+)/(?P<total>\\d+).*loss=(?P<loss>[0-9.]+)"
        ));
    }
    Ok(regex)
}

/// What one matching line said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Match {
    pub step: Option<u64>,
    pub total: Option<u64>,
    pub epoch: Option<u64>,
    pub loss: Option<f64>,
    /// The other named groups that parse as numbers.
    pub metrics: Vec<(String, f64)>,
}

impl Match {
    /// The progress this line shows, over `p` (the trainer's last; a new one when none): running, at
    /// `now`, with the step, total, epoch and loss the line gave.
    pub fn apply(&self, p: &mut trainerd_proto::trainer::Progress, now: f64) {
        p.state = trainerd_proto::trainer::TrainerState::Running;
        p.updated_at = now;
        p.step = self.step.unwrap_or(p.step);
        p.total_steps = self.total.unwrap_or(p.total_steps);
        p.epoch = self.epoch.unwrap_or(p.epoch);
        p.loss = self.loss.or(p.loss);
    }

    /// `later`'s values over this one's.
    fn merge(&mut self, later: Match) {
        self.step = later.step.or(self.step);
        self.total = later.total.or(self.total);
        self.epoch = later.epoch.or(self.epoch);
        self.loss = later.loss.or(self.loss);
        for (name, value) in later.metrics {
            self.metrics.retain(|(n, _)| *n != name);
            self.metrics.push((name, value));
        }
    }

    fn of(regex: &Regex, line: &str) -> Option<Match> {
        let captures = regex.captures(line)?;
        let mut m = Match::default();
        for name in regex.capture_names().flatten() {
            let Some(value) = captures.name(name).map(|v| v.as_str().trim()) else { continue };
            // "12.0" is a step too; a number with a unit or a thousands separator is not.
            let count = || {
                value.parse::<u64>().ok().or_else(|| value.parse::<f64>().ok().filter(|f| *f >= 0.0).map(|f| f as u64))
            };
            match name {
                "step" => m.step = count(),
                "total" => m.total = count(),
                "epoch" => m.epoch = count(),
                "loss" => m.loss = value.parse().ok().filter(|f: &f64| f.is_finite()),
                other => {
                    if let Ok(v) = value.parse::<f64>() {
                        m.metrics.push((other.to_string(), v));
                    }
                }
            }
        }
        Some(m)
    }
}

/// Follows the job's two logs and matches their new lines.
pub struct Scanner {
    regex: Regex,
    /// Per log: the offset read up to, and the line begun but not ended yet.
    offsets: [u64; 2],
    partial: [Vec<u8>; 2],
    /// Per log: the current line passed MAX_LINE; its rest is skipped up to the next line end.
    overflow: [bool; 2],
}

impl Scanner {
    /// A scanner from the logs' current ends: what an earlier attempt printed is not read again.
    pub fn new(regex: Regex, logs: [&Path; 2]) -> Scanner {
        let end = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0);
        Scanner { regex, offsets: [end(logs[0]), end(logs[1])], partial: Default::default(), overflow: [false; 2] }
    }

    /// Reads what each log gained (from its start again when it shrank: it was rotated) and returns
    /// what its matching lines said, later lines over earlier ones; None when no line matched.
    pub fn scan(&mut self, logs: [&Path; 2]) -> Option<Match> {
        let mut last: Option<Match> = None;
        for (i, path) in logs.iter().enumerate() {
            let Ok(mut file) = crate::untrusted::open_regular(path) else { continue };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < self.offsets[i] {
                self.offsets[i] = 0;
                self.partial[i].clear();
                self.overflow[i] = false;
            }
            if len == self.offsets[i] || file.seek(SeekFrom::Start(self.offsets[i])).is_err() {
                continue;
            }
            let mut bytes = Vec::new();
            if (&mut file).take(MAX_READ).read_to_end(&mut bytes).is_err() {
                continue;
            }
            self.offsets[i] += bytes.len() as u64;
            if let Some(m) = self.feed(i, &bytes) {
                last.get_or_insert_with(Match::default).merge(m);
            }
        }
        last
    }

    /// Splits new bytes of log `i` into lines and returns what the complete ones that match said.
    pub fn feed(&mut self, i: usize, bytes: &[u8]) -> Option<Match> {
        let mut last: Option<Match> = None;
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if !self.partial[i].is_empty() {
                    let line = String::from_utf8_lossy(&self.partial[i]);
                    if let Some(m) = Match::of(&self.regex, &line) {
                        last.get_or_insert_with(Match::default).merge(m);
                    }
                }
                self.partial[i].clear();
                self.overflow[i] = false;
            } else if self.partial[i].len() < MAX_LINE {
                self.partial[i].push(b);
            } else {
                self.overflow[i] = true;
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TQDM: &str = r"(?P<step>\d+)/(?P<total>\d+) \[.*loss=(?P<loss>[0-9.e-]+)(?:.*lr=(?P<lr>[0-9.e-]+))?";

    #[test]
    fn tqdm_redraws_are_lines_and_the_last_match_wins() {
        let mut s = Scanner {
            regex: compile(TQDM).unwrap(),
            offsets: [0; 2],
            partial: Default::default(),
            overflow: [false; 2],
        };
        let bar = "epoch 1:  10%|#  | 10/100 [00:01<00:09, loss=0.91]\repoch 1:  20%|## | 20/100 [00:02<00:08, loss=0.75, lr=0.001]\r";
        let m = s.feed(0, bar.as_bytes()).unwrap();
        assert_eq!((m.step, m.total, m.loss), (Some(20), Some(100), Some(0.75)));
        assert_eq!(m.metrics, vec![("lr".to_string(), 0.001)]);
        // A line split across two reads is matched once it ends.
        assert_eq!(s.feed(0, b"30/100 [00:03, lo"), None);
        assert_eq!(s.feed(0, b"ss=0.5]\n").unwrap().step, Some(30));
        // The other log has its own partial line.
        assert_eq!(s.feed(1, b"40/100 [x, loss=0.4]"), None);
        assert_eq!(s.feed(0, b"\n"), None, "an empty line matches nothing");
        assert_eq!(s.feed(1, b"\n").unwrap().step, Some(40));
    }

    #[test]
    fn alternatives_take_the_step_from_a_bar_and_the_loss_from_a_log_line() {
        let regex = compile(r"(?P<step>\d+)/(?P<total>\d+) \[|'loss': (?P<loss>[0-9.]+)").unwrap();
        let mut s = Scanner { regex, offsets: [0; 2], partial: Default::default(), overflow: [false; 2] };
        let m = s.feed(0, b"{'loss': 0.69, 'epoch': 0.3}\n 20/60 [00:01<00:02]\r 21/60 [00:01<00:02]\r").unwrap();
        assert_eq!((m.step, m.total, m.loss), (Some(21), Some(60), Some(0.69)));
    }

    #[test]
    fn a_huge_line_is_matched_on_its_prefix_only_and_numbers_are_checked() {
        let regex = compile(r"step=(?P<step>\S+) loss=(?P<loss>\S+)").unwrap();
        let mut s = Scanner { regex, offsets: [0; 2], partial: Default::default(), overflow: [false; 2] };
        let mut line = b"step=7 loss=0.25 ".to_vec();
        line.extend(vec![b'x'; 100_000]);
        line.push(b'\n');
        let m = s.feed(0, &line).unwrap();
        assert_eq!((m.step, m.loss), (Some(7), Some(0.25)));
        assert_eq!(s.partial[0].len(), 0);
        let m = s.feed(0, b"step=ten loss=NaN\n").unwrap();
        assert_eq!((m.step, m.loss), (None, None), "not numbers: ignored, not guessed");
    }

    #[test]
    fn bad_expressions_are_refused_with_the_reason() {
        assert!(compile("(unclosed").unwrap_err().starts_with("is not a regular expression: regex parse error"));
        assert!(compile(r"\d+/\d+").unwrap_err().contains("names no group"));
        assert!(compile(&"a".repeat(MAX_REGEX + 1)).unwrap_err().starts_with("is 4097 bytes"));
        assert!(compile(r"(?P<step>\d+)").is_ok());
        let longest = format!("(?P<step>\\d+){}", "x".repeat(MAX_REGEX - 13));
        assert_eq!(longest.len(), MAX_REGEX);
        assert!(compile(&longest).is_ok(), "exactly the bound is allowed");
    }

    fn scanner(regex: &str) -> Scanner {
        Scanner { regex: compile(regex).unwrap(), offsets: [0; 2], partial: Default::default(), overflow: [false; 2] }
    }

    #[test]
    fn a_later_metric_replaces_its_namesake_and_keeps_the_others() {
        let mut s = scanner(r"lr=(?P<lr>[0-9.]+)|acc=(?P<acc>[0-9.]+)");
        let m = s.feed(0, b"lr=0.1\nacc=0.5\nlr=0.2\n").unwrap();
        assert_eq!(m.metrics, vec![("acc".to_string(), 0.5), ("lr".to_string(), 0.2)]);
    }

    #[test]
    fn a_step_written_as_a_float_counts_and_a_negative_one_does_not() {
        let mut s = scanner(r"step=(?P<step>\S+)");
        assert_eq!(s.feed(0, b"step=12.0\n").unwrap().step, Some(12));
        assert_eq!(s.feed(0, b"step=-3.0\n").unwrap().step, None);
    }

    #[test]
    fn a_line_is_cut_at_exactly_max_line_bytes() {
        let mut s = scanner(r"(?P<step>\d+)$");
        let mut line = vec![b'x'; MAX_LINE - 1];
        line.extend(b"12\n");
        assert_eq!(s.feed(0, &line).unwrap().step, Some(1), "the 4,097th byte is not read");
    }

    #[test]
    fn what_a_scan_read_is_not_read_again() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("stdout.log"), dir.path().join("stderr.log"));
        let mut s = Scanner::new(compile(r"step=(?P<step>\d+)").unwrap(), [&out, &err]);
        std::fs::write(&out, "step=1\n").unwrap();
        assert_eq!(s.scan([&out, &err]).unwrap().step, Some(1));
        assert_eq!(s.scan([&out, &err]), None);
        std::fs::OpenOptions::new().append(true).open(&out).unwrap().write_all(b"step=2\n").unwrap();
        assert_eq!(s.scan([&out, &err]).unwrap().step, Some(2));
        assert_eq!(s.scan([&out, &err]), None);
    }

    #[test]
    fn a_scanner_starts_at_the_logs_ends_and_reads_a_rotated_log_from_its_start() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("stdout.log"), dir.path().join("stderr.log"));
        std::fs::write(&out, "step=1\n").unwrap();
        let mut s = Scanner::new(compile(r"step=(?P<step>\d+)").unwrap(), [&out, &err]);
        assert_eq!(s.scan([&out, &err]), None, "an earlier attempt's lines are not read again");
        std::fs::OpenOptions::new().append(true).open(&out).unwrap().write_all(b"step=2\n").unwrap();
        assert_eq!(s.scan([&out, &err]).unwrap().step, Some(2));
        std::fs::write(&out, "step=3\n").unwrap();
        assert_eq!(s.scan([&out, &err]).unwrap().step, Some(3), "shrunk: rotated, read from the start");
    }
}
