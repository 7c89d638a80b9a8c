//! Ids escaped into keys: charset, round trip, no two ids on one key.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storehaus_runtime::fuzzing::key_escaping(data));
