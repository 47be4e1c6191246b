//! cargo fuzz run control_line: see `trainerd::fuzz::control_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trainerd::fuzz::control_line(data));
