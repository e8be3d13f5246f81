#![no_main]
//! libFuzzer entry for `satchel_fuzz::ignore_target`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| satchel_fuzz::ignore_target(data));
