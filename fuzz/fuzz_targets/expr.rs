#![no_main]
//! libFuzzer entry for `satchel_fuzz::expr_target`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| satchel_fuzz::expr_target(data));
