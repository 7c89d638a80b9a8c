//! Arbitrary bytes read back as a cached entry: a value or a counted
//! corrupt entry, never a panic or an allocation the input cannot back.
#![no_main]

use storehaus_runtime::fuzzing::{codec_decode, PeakAlloc};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| codec_decode(data));
