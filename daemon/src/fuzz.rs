//! The entry points of the fuzz targets (`fuzz/`, run with cargo-fuzz) and of the test suite's
//! fuzz smoke run: the parsers that take bytes from outside trainerd. Each must return, never panic,
//! whatever the input.

use crate::config::Flags;

/// A progress file's bytes, as a trainer may write them.
pub fn progress(data: &[u8]) {
    let _ = trainerd_proto::trainer::Progress::parse(data);
}

/// One line on the JSON-lines control socket.
pub fn control_line(data: &[u8]) {
    let _ = crate::api::jsonl::parse_line(data);
}

/// A configuration file's text, parsed and resolved (settings that would read other files or run
/// nvidia-smi are cleared: those are checked by the tests, not fuzzed).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(flags) = Flags::parse_file(text) else { return };
    let flags = Flags {
        gpus: flags.gpus.filter(|g| g != "auto").or(Some("none".into())),
        token_file: None,
        tls_cert: None,
        tls_key: None,
        shim: Some("/nonexistent/trainerd-shim".into()),
        ..flags
    };
    let _ = flags.resolve();
}

#[cfg(test)]
mod smoke;
