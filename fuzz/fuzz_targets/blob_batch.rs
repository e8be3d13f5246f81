#![no_main]
//! libFuzzer entry for `satchel_fuzz::blob_batch_target`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| satchel_fuzz::blob_batch_target(data));
