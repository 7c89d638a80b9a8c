// The expansion is warning-free under strict lints, and the generated `cache_key` is documented.
#![deny(
    warnings,
    missing_docs,
    unused,
    unused_qualifications,
    unused_lifetimes,
    single_use_lifetimes
)]
#![deny(
    unreachable_pub,
    trivial_casts,
    trivial_numeric_casts,
    unused_results,
    elided_lifetimes_in_paths
)]
//! Strict crate.

/// A record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table = "strict", ttl = 60)]
pub struct Strict {
    /// The key.
    pub id: i64,
    /// A value.
    pub value: String,
}

fn main() {
    assert_eq!(Strict::cache_key("p", &1), "p:strict:1");
}
