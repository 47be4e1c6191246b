//! cargo fuzz run config: see `trainerd::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trainerd::fuzz::config(data));
