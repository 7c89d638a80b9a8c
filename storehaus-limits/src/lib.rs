//! The limits StoreHaus enforces twice: at compile time in
//! `#[derive(Cached)]` (`storehaus-derive`) and at run time in
//! `storehaus-runtime`. A proc-macro crate cannot export constants and the
//! runtime must not depend on one, so both read them from here, and the two
//! checks cannot drift apart.

#![no_std]
#![warn(missing_docs)]

/// The largest TTL accepted anywhere, in seconds: one year (365 days).
///
/// `#[cache(ttl = N)]`, `CacheConfig`'s default TTL and a store's TTL are
/// all checked against it.
///
/// ```
/// assert_eq!(storehaus_limits::MAX_TTL_SECS, 365 * 24 * 60 * 60);
/// ```
pub const MAX_TTL_SECS: u64 = 31_536_000;

/// Whether byte `b` may appear in a table name or a key prefix, and
/// unescaped in a cache key segment: `[A-Za-z0-9_.-]`.
///
/// ```
/// use storehaus_limits::is_key_safe;
///
/// assert!("users_v2.x-y".bytes().all(is_key_safe));
/// assert!(!is_key_safe(b':'));
/// assert!(!is_key_safe(b'*'));
/// ```
#[inline]
#[must_use]
pub const fn is_key_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// The start of the key space StoreHaus keeps for itself (tag sets live at
/// `{global}:__tag:`); no key prefix may begin with it.
pub const RESERVED_PREFIX: &str = "__";

/// Whether `prefix` begins with [`RESERVED_PREFIX`], and so may not be used
/// as a key prefix.
///
/// ```
/// use storehaus_limits::is_reserved_prefix;
///
/// assert!(is_reserved_prefix("__tag"));
/// assert!(!is_reserved_prefix("_users"));
/// assert!(!is_reserved_prefix("users__"));
/// ```
#[inline]
#[must_use]
pub fn is_reserved_prefix(prefix: &str) -> bool {
    prefix.starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_safe_bytes_are_exactly_the_documented_set() {
        for b in 0..=u8::MAX {
            let expected =
                b.is_ascii_uppercase() || b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b);
            assert_eq!(is_key_safe(b), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn one_year_is_the_ttl_limit() {
        assert_eq!(MAX_TTL_SECS, 365 * 86_400);
    }
}
