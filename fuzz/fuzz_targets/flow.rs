#![no_main]
//! libFuzzer entry for `satchel_fuzz::flow_target`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| satchel_fuzz::flow_target(data));
