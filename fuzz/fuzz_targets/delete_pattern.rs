//! A `delete_pattern` pattern never reaches outside its global prefix.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storehaus_runtime::fuzzing::delete_pattern(data));
