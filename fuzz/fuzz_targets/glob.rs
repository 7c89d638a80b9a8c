//! The in-process glob matcher against Redis' `stringmatchlen`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storehaus_runtime::fuzzing::glob(data));
