//! How jobs are shown: the stable JSON form, the human table and detail view, durations.

use trainerd_proto::json::reason_word;
use trainerd_proto::state::state_word;
use trainerd_proto::v1 as pb;

/// Parses a duration like `500ms`, `90s`, `10m`, `1.5h` or a plain number of seconds, into ms.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration; write it like 30s, 10m, 1h"))?;
    let scale = match unit {
        "ms" => 1.0,
        "" | "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        "d" => 86_400e3,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use ms, s, m, h or d")),
    };
    let ms = value * scale;
    if !(ms.is_finite() && ms >= 1.0) {
        return Err(format!("{text:?} must be at least 1ms"));
    }
    Ok(ms.round() as u64)
}

/// Unix time `t` as the local date and time with milliseconds (`2026-12-04 18:21:33.123`), in the
/// time zone the C library finds (TZ, else /etc/localtime).
pub fn local_time(t: f64) -> String {
    if !t.is_finite() || t < 0.0 {
        return format!("{t}");
    }
    let secs = t.floor() as libc::time_t;
    let millis = ((t - t.floor()) * 1000.0).floor() as u32;
    // SAFETY: localtime_r writes into the struct we pass and reads only `secs`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return format!("{t:.3}");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{millis:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// How long ago Unix time `t` was, in words (`3s`, `4m`, `2h`, `5d`).
pub fn ago(t: f64) -> String {
    let secs = (trainerd_proto::trainer::unix_now() - t).max(0.0);
    match secs {
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s if s < 172_800.0 => format!("{:.0}h", s / 3600.0),
        s => format!("{:.0}d", s / 86_400.0),
    }
}

fn progress(job: &pb::Job) -> String {
    if job.total_steps > 0 {
        format!("{}/{}", job.step, job.total_steps)
    } else {
        job.step.to_string()
    }
}

fn state_cell(job: &pb::Job) -> String {
    let mut s = state_word(job.state()).to_string();
    if job.stalled {
        s.push_str(" (late)");
    }
    if job.queue_position > 0 {
        s = format!("{s} #{}", job.queue_position);
    }
    s
}

/// The `ls` table, columns sized to their content.
pub fn table(jobs: &[pb::Job]) -> String {
    let header = ["ID", "NAME", "STATE", "STEP", "EPOCH", "LOSS", "RESTARTS", "AGE"].map(String::from);
    let rows: Vec<[String; 8]> = jobs
        .iter()
        .map(|j| {
            [
                j.id.clone(),
                j.name.clone(),
                state_cell(j),
                progress(j),
                if j.total_epochs > 0 { format!("{}/{}", j.epoch, j.total_epochs) } else { j.epoch.to_string() },
                j.loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
                j.restarts.to_string(),
                ago(j.created_at),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    std::iter::once(&header)
        .chain(rows.iter())
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `get` view: one field per line.
pub fn detail(job: &pb::Job) -> String {
    let mut lines = vec![
        ("id", job.id.clone()),
        ("name", job.name.clone()),
        ("state", state_cell(job)),
        ("waiting_for", job.waiting_for.clone()),
        ("gpus", job.assigned_gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        ("reason", reason_word(job.reason()).to_string()),
        ("message", job.message.clone()),
        ("step", progress(job)),
        ("epoch", job.epoch.to_string()),
        ("loss", job.loss.map(|l| format!("{l:.6}")).unwrap_or_default()),
        ("val_loss", job.val_loss.map(|l| format!("{l:.6}")).unwrap_or_default()),
        ("metrics", metrics(job)),
        ("attempt", job.attempt.to_string()),
        ("resumed_from", job.resumed_from.clone()),
        (
            "resume",
            if job.resume_ignored {
                "ignored: the trainer started over instead of resuming".into()
            } else {
                String::new()
            },
        ),
        ("restarts", job.restarts.to_string()),
        ("budget", if job.restarts_exhausted { "spent: not restarted again".into() } else { String::new() }),
        ("protocol", job.protocol.clone()),
        ("exit_code", job.exit_code.map(|c| c.to_string()).unwrap_or_default()),
        ("exit_signal", job.exit_signal.map(|c| c.to_string()).unwrap_or_default()),
        ("pid", job.pid.map(|p| p.to_string()).unwrap_or_default()),
        (
            "checkpoint",
            job.latest_checkpoint.as_ref().map(|c| format!("step {} at {}", c.step, c.path)).unwrap_or_default(),
        ),
        ("weights_sha256", job.weights_sha256.clone()),
        ("cancelled_by", job.cancelled_by.clone()),
        ("command", job.command.join(" ")),
        ("created", format!("{} ago", ago(job.created_at))),
    ];
    lines.retain(|(_, v)| !v.is_empty());
    lines.iter().map(|(k, v)| format!("{k:<15}{v}")).collect::<Vec<_>>().join("\n")
}

/// The trainer's other metrics, `name=value` in name order.
fn metrics(job: &pb::Job) -> String {
    let mut names: Vec<&String> = job.metrics.keys().collect();
    names.sort();
    names.iter().map(|n| format!("{n}={}", job.metrics[*n])).collect::<Vec<_>>().join(" ")
}

/// One line of `watch`: a bar with step/total, epoch, loss, rate, ETA and restarts.
pub fn watch_line(job: &pb::Job) -> String {
    let state = state_cell(job);
    if job.total_steps == 0 {
        return format!("{} {state} step {}", job.id, job.step);
    }
    let done = (job.step as f64 / job.total_steps as f64).clamp(0.0, 1.0);
    let filled = (done * 24.0).round() as usize;
    let bar = format!("[{}{}]", "#".repeat(filled), "-".repeat(24 - filled));
    let eta = match (job.samples_per_sec, job.state()) {
        (Some(rate), pb::JobState::Running) if rate > 0.0 && job.step > 0 => {
            let elapsed = (job.updated_at - job.created_at).max(0.0);
            let left = elapsed / done.max(1e-9) * (1.0 - done);
            format!(" eta {}", human_secs(left))
        }
        _ => String::new(),
    };
    format!(
        "{} {state:<9} {bar} {}/{} epoch {}{}{}{}{}",
        job.id,
        job.step,
        job.total_steps,
        job.epoch,
        job.loss.map(|l| format!(" loss {l:.4}")).unwrap_or_default(),
        job.samples_per_sec.map(|r| format!(" {r:.0} samples/s")).unwrap_or_default(),
        eta,
        if job.restarts > 0 { format!(" restarts {}", job.restarts) } else { String::new() },
    )
}

/// A small chart of `values` in one line of block characters (lowest ▁, highest █); non-finite
/// values show as `!`.
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    values
        .iter()
        .map(|v| match v {
            v if !v.is_finite() => '!',
            _ if hi <= lo => BARS[0],
            v => BARS[(((v - lo) / (hi - lo)) * 7.0).round().clamp(0.0, 7.0) as usize],
        })
        .collect()
}

/// `trainctl metrics`: one row per step, one column per metric (a folded span's mean marked `~`), or
/// comma-separated values.
pub fn metrics_table(m: &pb::GetMetricsResponse, csv: bool) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let names: Vec<&str> = m.series.iter().map(|s| s.name.as_str()).collect();
    let mut rows: BTreeMap<u64, Vec<Option<(f64, bool)>>> = BTreeMap::new();
    for (i, series) in m.series.iter().enumerate() {
        for sample in &series.samples {
            rows.entry(sample.step).or_insert_with(|| vec![None; names.len()])[i] =
                Some((sample.value, sample.min.is_some()));
        }
    }
    let mut out = String::new();
    if csv {
        let _ = writeln!(out, "step,{}", names.join(","));
        for (step, cells) in &rows {
            let cells: Vec<String> = cells.iter().map(|c| c.map(|(v, _)| v.to_string()).unwrap_or_default()).collect();
            let _ = writeln!(out, "{step},{}", cells.join(","));
        }
        return out;
    }
    if rows.is_empty() {
        let _ = writeln!(out, "no metrics recorded (the trainer reports loss, lr or metrics with its progress)");
        return out;
    }
    let _ = write!(out, "{:>10}", "STEP");
    for name in &names {
        let _ = write!(out, "  {name:>12}");
    }
    out.push('\n');
    for (step, cells) in &rows {
        let _ = write!(out, "{step:>10}");
        for cell in cells {
            let text = match cell {
                Some((v, folded)) => format!("{}{}", if *folded { "~" } else { "" }, short(*v)),
                None => String::new(),
            };
            let _ = write!(out, "  {text:>12}");
        }
        out.push('\n');
    }
    out
}

/// A number in at most about 10 characters.
fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:.3e}")
    } else {
        format!("{v:.5}")
    }
}

fn human_secs(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("2"), Ok(2_000));
        assert!(parse_duration_ms("ten minutes").unwrap_err().contains("not a duration"));
        assert!(parse_duration_ms("10y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration_ms("0s").is_err());
    }
}
