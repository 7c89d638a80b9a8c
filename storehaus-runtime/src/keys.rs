//! Cache key grammar: `{global_prefix}:{store_prefix}:{id}`. It sits below
//! every layer: the configuration checks prefixes with it, backends take the
//! hash-tag segments from it, the cache and the stores build keys with it.
//!
//! Prefixes are restricted to `[A-Za-z0-9_.-]` (checked by the derive and by
//! [`CacheManager::new`](crate::CacheManager::new)). Ids are rendered with
//! `Display`; every byte outside that safe set (and `%` itself) is
//! percent-encoded, so two different ids never share a key and an id can never
//! reach into another namespace (`:` `*` `?` `[` `]` `\` and whitespace are all
//! escaped). Ids made only of safe characters, every integer and UUID, appear
//! verbatim.

use std::fmt::{Display, Write};

use crate::error::CacheError;

/// Whether `b` may appear unescaped in a key segment: `[A-Za-z0-9_.-]`, the
/// set the derive checks tables and prefixes against too.
#[inline]
fn is_safe(b: u8) -> bool {
    SAFE[usize::from(b)]
}

/// [`storehaus_limits::is_key_safe`] of every byte: one load per byte of
/// every key built (a third of the instructions of the comparisons).
const SAFE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = storehaus_limits::is_key_safe(b as u8);
        b += 1;
    }
    table
};

/// Checks a global or store prefix: non-empty, only `[A-Za-z0-9_.-]`, and not
/// starting with `__` (reserved for StoreHaus' own keys).
///
/// # Errors
/// [`CacheError::InvalidConfig`] naming `what` and the offending value.
pub fn validate_prefix(what: &str, prefix: &str) -> Result<(), CacheError> {
    if prefix.is_empty() {
        return Err(CacheError::InvalidConfig(format!("{what} must not be empty")));
    }
    if let Some(bad) = prefix.bytes().find(|b| !is_safe(*b)) {
        return Err(CacheError::InvalidConfig(format!(
            "{what} {prefix:?} holds {:?}; use only letters, digits, '_', '.' and '-'",
            bad as char
        )));
    }
    if storehaus_limits::is_reserved_prefix(prefix) {
        return Err(CacheError::InvalidConfig(format!(
            "{what} {prefix:?} starts with \"__\", which StoreHaus reserves for its own keys"
        )));
    }
    Ok(())
}

/// Appends `segment` to `out`, percent-encoding every unsafe byte.
pub fn push_escaped(out: &mut String, segment: &str) {
    if segment.bytes().all(is_safe) {
        out.push_str(segment);
        return;
    }
    for b in segment.bytes() {
        if is_safe(b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// A store prefix as it appears in keys: every unsafe byte percent-encoded,
/// and a leading `__` (StoreHaus's reserved namespace: tag sets live at
/// `{global}:__tag:`) escaped as `%5F_`, so no store key can land there.
pub fn escape_store_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 2);
    if storehaus_limits::is_reserved_prefix(prefix) {
        // `_` is safe, so escape the first one by hand: `__x` becomes `%5F_x`.
        out.push_str("%5F");
        push_escaped(&mut out, &prefix[1..]);
    } else {
        push_escaped(&mut out, prefix);
    }
    out
}

/// A store's whole key space: `{global}:{prefix}:`.
pub fn store_scope(global_prefix: &str, prefix: &str) -> String {
    format!("{global_prefix}:{prefix}:")
}

/// Builds a record key: `{global}:{prefix}:{escaped id}`.
///
/// The id is rendered once into the key buffer; ids that need no escaping
/// are not copied twice.
pub fn record_key<I: Display + ?Sized>(global_prefix: &str, prefix: &str, id: &I) -> String {
    let mut out = String::with_capacity(global_prefix.len() + prefix.len() + 40);
    out.push_str(global_prefix);
    out.push(':');
    out.push_str(prefix);
    out.push(':');
    let start = out.len();
    let _ = write!(out, "{id}");
    if !out.as_bytes()[start..].iter().all(|b| is_safe(*b)) {
        let raw = out.split_off(start);
        push_escaped(&mut out, &raw);
    }
    out
}

/// Builds the key of a manual record operation, where the id is a `&str`.
pub fn str_key(global_prefix: &str, prefix: &str, id: &str) -> String {
    record_key(global_prefix, prefix, id)
}

/// The index entry of `value` in `column`:
/// `{global}:{prefix}:idx:{column}:{escaped value}`, the value escaped like
/// an id. No record key can take it: an id's `:` is escaped.
pub fn index_key(global_prefix: &str, prefix: &str, column: &str, value: &str) -> String {
    let mut out = String::with_capacity(global_prefix.len() + prefix.len() + column.len() + value.len() + 8);
    out.push_str(global_prefix);
    out.push(':');
    out.push_str(prefix);
    out.push_str(":idx:");
    push_escaped(&mut out, column);
    out.push(':');
    push_escaped(&mut out, value);
    out
}

/// The namespace of cached query results of one store: `{global}:{prefix}:query:`.
pub fn query_namespace(global_prefix: &str, prefix: &str) -> String {
    format!("{global_prefix}:{prefix}:query:")
}

/// The query-generation counter of one store. It lives in the query
/// namespace under a name no hex hash can take.
pub fn generation_key(global_prefix: &str, prefix: &str) -> String {
    format!("{global_prefix}:{prefix}:query:gen")
}

/// The second segment of every tag set's key.
pub(crate) const TAG_SEGMENT: &str = "__tag";

/// The set of keys carrying `tag`: `{global}:__tag:{escaped tag}`.
pub fn tag_key(global_prefix: &str, tag: &str) -> String {
    let mut out = format!("{global_prefix}:{TAG_SEGMENT}:");
    push_escaped(&mut out, tag);
    out
}

/// Where [`invalidate_tag`](crate::CacheManager::invalidate_tag) moves a
/// tag set while it removes its members: `{tag set}:draining`. No tag set
/// ends that way: `:` is escaped in tags.
pub fn tag_draining_key(tag_set: &str) -> String {
    format!("{tag_set}:draining")
}

/// The second segment of every live-version registry's key.
pub(crate) const VERSIONS_SEGMENT: &str = "__versions";

/// The registry of the value layouts that live beside each other in one
/// store's key space: `{global}:__versions:{prefix}` (see `cache::versions`).
pub fn versions_key(global_prefix: &str, prefix: &str) -> String {
    format!("{global_prefix}:{VERSIONS_SEGMENT}:{prefix}")
}

/// The second segment of every replica marker's key.
pub(crate) const MARKER_SEGMENT: &str = "__lsn";

/// The replica marker of the record key `home` (see `cache::markers`):
/// `{global}:__lsn:{{home}}`. Only `home` is hashed (`{...}` is a hash tag),
/// so on a cluster the marker shares the record's slot; no key holds a `{`
/// otherwise (prefixes and ids escape it), so the mapping is injective.
pub fn record_marker_key(global_prefix: &str, home: &str) -> String {
    format!("{global_prefix}:{MARKER_SEGMENT}:{{{home}}}")
}

/// The store-wide replica marker of a store (index lookups and cached
/// queries): `{global}:__lsn:{{global}:{prefix}}`, in the slot of the
/// store's query keys on a cluster (their hash tag is `{global}:{prefix}`).
pub fn store_marker_key(global_prefix: &str, prefix: &str) -> String {
    format!("{global_prefix}:{MARKER_SEGMENT}:{{{global_prefix}:{prefix}}}")
}

/// Where the layout `tag` keeps its entry when another version holds the
/// home key `home` (a record or an index entry): `{home}~{tag}`. No home
/// key holds a `~` (ids and index values escape it, prefixes may not hold
/// it), so a side key is never another entry's home key, and it stays
/// inside the store's key space `{global}:{prefix}:`.
pub fn side_key(home: &str, tag: &str) -> String {
    let mut out = String::with_capacity(home.len() + tag.len() + 1);
    out.push_str(home);
    out.push(SIDE_MARK);
    out.push_str(tag);
    out
}

/// What separates a side key from its home key.
pub(crate) const SIDE_MARK: char = '~';

/// The store prefix segment of a key of the global prefix `global`
/// (`{global}:{prefix}:...`), if it has one.
pub fn prefix_of<'k>(global_prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(global_prefix)?.strip_prefix(':')?;
    let (prefix, _) = rest.split_once(':')?;
    Some(prefix)
}

/// Confines a user pattern to the global prefix: `{global}:{pattern}`.
///
/// The pattern is used as a Redis glob below `{global}:`; because the result
/// always starts with the literal `{global}:`, no pattern (`*`, `../*`,
/// `[a-z]*`) can match a key outside it. A leading `{global}:` that the user
/// repeated is not stripped: the pattern is always relative.
pub fn confined_pattern(global_prefix: &str, pattern: &str) -> String {
    let mut out = String::with_capacity(global_prefix.len() + 1 + pattern.len());
    for b in global_prefix.bytes() {
        // Prefixes hold only safe bytes, which are never glob metacharacters.
        out.push(b as char);
    }
    out.push(':');
    out.push_str(pattern);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids_are_verbatim() {
        assert_eq!(record_key("app", "users", &42i64), "app:users:42");
        assert_eq!(
            record_key("app", "users", "123e4567-e89b-12d3-a456-426614174000"),
            "app:users:123e4567-e89b-12d3-a456-426614174000"
        );
    }

    #[test]
    fn unsafe_ids_are_escaped_injectively() {
        assert_eq!(record_key("a", "p", "x:y"), "a:p:x%3Ay");
        assert_eq!(record_key("a", "p", "x%3Ay"), "a:p:x%253Ay");
        assert_eq!(record_key("a", "p", "*"), "a:p:%2A");
        assert_eq!(record_key("a", "p", "a b"), "a:p:a%20b");
        assert_eq!(record_key("a", "p", "é"), "a:p:%C3%A9");
        assert_ne!(record_key("a", "p", "x:y"), record_key("a", "p:x", "y"));
    }

    #[test]
    fn store_prefixes_never_reach_the_reserved_namespace() {
        assert_eq!(escape_store_prefix("users"), "users");
        assert_eq!(escape_store_prefix("_users"), "_users");
        assert_eq!(escape_store_prefix("__tag"), "%5F_tag");
        assert_eq!(escape_store_prefix("___"), "%5F__");
        assert_eq!(escape_store_prefix("a:b"), "a%3Ab");
        assert!(!record_key("app", &escape_store_prefix("__tag"), "x").starts_with("app:__"));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("prefix", "users_v2.x-y").is_ok());
        assert!(validate_prefix("prefix", "").is_err());
        assert!(validate_prefix("prefix", "a:b").is_err());
        assert!(validate_prefix("prefix", "a*").is_err());
        assert!(validate_prefix("prefix", "__tag").is_err());
    }

    #[test]
    fn side_keys_and_registries_have_keys_of_their_own() {
        let home = record_key("app", "users", &7);
        assert_eq!(side_key(&home, "2-00000000000000ab"), "app:users:7~2-00000000000000ab");
        assert_ne!(side_key(&home, "x"), record_key("app", "users", "7~x"));
        assert_eq!(versions_key("app", "users"), "app:__versions:users");
        assert_eq!(prefix_of("app", &home), Some("users"));
        assert_eq!(prefix_of("app", "app:users"), None);
        assert_eq!(prefix_of("app", "other:users:7"), None);
    }

    #[test]
    fn markers_have_keys_of_their_own_in_their_record_s_slot() {
        let home = record_key("app", "users", &7);
        assert_eq!(record_marker_key("app", &home), "app:__lsn:{app:users:7}");
        assert_eq!(store_marker_key("app", "users"), "app:__lsn:{app:users}");
        assert_eq!(prefix_of("app", &record_marker_key("app", &home)), Some("__lsn"));
        assert_ne!(
            record_marker_key("app", &record_key("app", "users", "x")),
            store_marker_key("app", "users")
        );
    }

    #[test]
    fn patterns_stay_inside_the_global_prefix() {
        assert_eq!(confined_pattern("app", "*"), "app:*");
        assert_eq!(confined_pattern("app", "../*"), "app:../*");
    }
}
