#![no_main]
//! libFuzzer entry for `satchel_fuzz::chunk_list_target`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| satchel_fuzz::chunk_list_target(data));
