//! Compile-time behaviour of `#[derive(Cached)]` (trybuild).
//!
//! `ui-tests/pass/` must compile and run: each case asserts what the derive
//! generated. Every other directory holds one misuse per file, with the
//! exact compiler output in the matching `.stderr`. Regenerate those with
//! `TRYBUILD=overwrite cargo test --test ui` and review them as a user.

#[test]
#[cfg_attr(
    not(feature = "sqlite"),
    ignore = "the .stderr files are written with the default `sqlite` feature"
)]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui-tests/pass/*.rs");
    t.compile_fail("ui-tests/container/*.rs");
    t.compile_fail("ui-tests/field/*.rs");
    t.compile_fail("ui-tests/shape/*.rs");
    t.compile_fail("ui-tests/traits/*.rs");
    t.compile_fail("ui-tests/usage/*.rs");
    t.compile_fail("ui-tests/query/*.rs");
}
