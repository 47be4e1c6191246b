//! Where trainerd's log goes: to journald when systemd connected our stderr to it (`JOURNAL_STREAM`
//! names that stream), else human-readable text or JSON lines on stderr (`log-format`). The filter is
//! `TRAINERD_LOG` (`info` by default; `trainerd=debug`, `warn`, ...). Job actors log inside a `job`
//! span, so every line about a job carries its id.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The form of trainerd's own log (see `--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// journald when `JOURNAL_STREAM` is our stderr, else human.
    #[default]
    Auto,
    /// Text lines with time, level, span and fields.
    Human,
    /// One JSON object per line.
    Json,
    /// Syslog priority prefixes (`<6>`) and no timestamps: journald adds its own and files the level.
    Journal,
}

/// Whether stderr is the stream systemd connected to journald: `JOURNAL_STREAM` is `DEV:INODE` of it.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(stderr).metadata() else { return false };
    expected.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
}

/// Installs the global subscriber. Called once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRAINERD_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never into a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Human,
        other => other,
    };
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Journal => builder.with_ansi(false).event_format(Journal).init(),
        _ => builder.init(),
    }
}

/// The journald line format: `<PRIORITY>span{fields}: message fields`.
struct Journal;

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                write!(writer, ": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
