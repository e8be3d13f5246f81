#![no_main]
//! libFuzzer entry for `satchel_fuzz::pack_index_target`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| satchel_fuzz::pack_index_target(data));
