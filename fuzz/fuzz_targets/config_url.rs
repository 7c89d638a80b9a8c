//! Cache URLs: `CacheManager::new` never panics, never shows the password.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| storehaus_runtime::fuzzing::config_url(data));
