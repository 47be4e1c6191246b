//! cargo fuzz run progress: see `trainerd::fuzz::progress`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trainerd::fuzz::progress(data));
