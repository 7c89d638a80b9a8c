//! The cluster key layout: which keys must share a slot, and the hash tags
//! that make them.
//!
//! The read-through protocol names keys as on one node (see `crate::keys`).
//! On a cluster, two families of keys are used together by one script or
//! pipeline and must therefore land in one slot; the cluster backend gives
//! them a hash tag (`{...}`: only what is inside is hashed):
//!
//! | logical key (one node)          | on a cluster                            |
//! |---------------------------------|-----------------------------------------|
//! | `{g}:{p}:{id}` (record)         | unchanged: records spread over slots    |
//! | `{g}:{p}:query:gen`             | `{g}:{p}:query:{{g}:{p}}:gen`           |
//! | `{g}:{p}:query:{hash}`          | `{g}:{p}:query:{{g}:{p}}:{hash}`        |
//! | `{g}:__tag:{tag}`               | `{g}:__tag:{{tag}}`                     |
//! | `{g}:__tag:{tag}:draining`      | `{g}:__tag:{{tag}}:draining`            |
//!
//! A store's query results and its generation counter thus share a slot
//! (one `MGET [generation, entry]` per query read, and the fill script
//! checks the counter atomically); a tag set and its draining set share a
//! slot (the drain script moves one into the other). Every key still starts
//! with `{g}:{p}:`, so `delete_pattern` globs and a store's scope walk
//! reach them. No logical key holds `{` or `}` (prefixes are
//! `[A-Za-z0-9_.-]`, ids and tags are percent-escaped), so the mapping is
//! injective and never applies twice.

use std::borrow::Cow;

use crate::keys::TAG_SEGMENT;

/// The key a logical key is stored under on a cluster.
pub(crate) fn physical(key: &str) -> Cow<'_, str> {
    let mut parts = key.splitn(4, ':');
    let (Some(global), Some(prefix), Some(third)) = (parts.next(), parts.next(), parts.next()) else {
        return Cow::Borrowed(key);
    };
    let rest = parts.next();
    if prefix == TAG_SEGMENT {
        return Cow::Owned(match rest {
            None => format!("{global}:{prefix}:{{{third}}}"),
            Some(rest) => format!("{global}:{prefix}:{{{third}}}:{rest}"),
        });
    }
    match rest {
        Some(rest) if third == "query" => Cow::Owned(format!("{global}:{prefix}:query:{{{global}:{prefix}}}:{rest}")),
        _ => Cow::Borrowed(key),
    }
}

/// [`physical`] of every key.
pub(crate) fn physical_all(keys: &[String]) -> Vec<String> {
    keys.iter().map(|k| physical(k).into_owned()).collect()
}

/// The hash slot of a key: CRC16 (XMODEM) of its hash tag, or of the
/// whole key, modulo 16384 (what `Slot::for_key` of redis-rs and
/// `CLUSTER KEYSLOT` compute).
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let inner = &bytes[open + 1..];
            inner
                .iter()
                .position(|b| *b == b'}')
                .filter(|len| *len > 0)
                .map(|len| &inner[..len])
        })
        .unwrap_or(bytes);
    crc16(hashed) % 16_384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for b in bytes {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Positions of `keys` grouped by slot, each group in the keys' order, the
/// groups in the order their first key appears.
pub(crate) fn by_slot<S: AsRef<str>>(keys: &[S]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let s = slot(key.as_ref());
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, members)) => members.push(i),
            None => groups.push((s, vec![i])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_unchanged_and_spread() {
        assert_eq!(physical("app:users:42"), "app:users:42");
        let slots: std::collections::HashSet<u16> = (0..50).map(|i| slot(&format!("app:users:{i}"))).collect();
        assert!(slots.len() > 40, "{}", slots.len());
    }

    #[test]
    fn a_stores_queries_share_the_slot_of_its_generation() {
        let gen = physical("app:users:query:gen");
        assert_eq!(gen, "app:users:query:{app:users}:gen");
        let entry = physical("app:users:query:0123abcd");
        assert_eq!(slot(&gen), slot(&entry));
        assert_ne!(slot(&gen), slot(&physical("app:notes:query:gen")));
        assert!(entry.starts_with("app:users:"), "globs of the store reach it");
    }

    #[test]
    fn a_tag_set_shares_the_slot_of_its_draining_set() {
        let set = physical("app:__tag:vip");
        let draining = physical("app:__tag:vip:draining");
        assert_eq!(set, "app:__tag:{vip}");
        assert_eq!(draining, "app:__tag:{vip}:draining");
        assert_eq!(slot(&set), slot(&draining));
    }

    #[test]
    fn slot_numbers_match_redis() {
        // CLUSTER KEYSLOT foo = 12182, CLUSTER KEYSLOT {user1000}.following = 3443.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), 3443);
    }

    #[test]
    fn slots_agree_with_redis_rs() {
        for key in ["a", "app:users:1", "{x}y", "{}z", "a{b}c{d}"] {
            let ours = slot(key);
            let theirs = redis::cluster_routing::Route::with_key(key, redis::cluster_routing::SlotAddr::Master);
            assert_eq!(
                theirs,
                redis::cluster_routing::Route::new(ours, redis::cluster_routing::SlotAddr::Master),
                "{key}"
            );
        }
    }

    #[test]
    fn keys_group_by_slot_in_order() {
        let keys = ["{a}1", "{b}1", "{a}2"];
        assert_eq!(by_slot(&keys), vec![vec![0, 2], vec![1]]);
    }
}
