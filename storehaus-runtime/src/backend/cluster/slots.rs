//! Splitting a multi-key primitive by hash slot, and putting the answers
//! back in the keys' order.

use super::layout::{self, physical};
use crate::backend::{Invalidation, Marker, TagAdd};

/// One slot's share of an invalidation.
#[derive(Default)]
pub(super) struct SlotInvalidation {
    pub markers: Vec<Marker>,
    pub keys: Vec<String>,
    pub counters: Vec<String>,
    pub tags: Vec<TagAdd>,
}

/// Splits an invalidation by slot (physical keys): each key, counter and
/// tag set goes to its slot's pipeline; a tag's members are record keys
/// that need not share the set's slot (a set holds names, not values).
pub(super) fn split_invalidation(inv: &Invalidation<'_>) -> Vec<SlotInvalidation> {
    let mut parts: Vec<(u16, SlotInvalidation)> = Vec::new();
    let mut part = |key: &str| -> usize {
        let s = layout::slot(key);
        match parts.iter().position(|(g, _)| *g == s) {
            Some(i) => i,
            None => {
                parts.push((s, SlotInvalidation::default()));
                parts.len() - 1
            }
        }
    };
    let mut marker_index = Vec::new();
    for m in inv.markers {
        let key = physical(&m.key).into_owned();
        marker_index.push((part(&key), Marker { key, ..m.clone() }));
    }
    let mut index = Vec::new();
    for k in inv.keys {
        let k = physical(k).into_owned();
        index.push((part(&k), 0u8, k));
    }
    for c in inv.counters {
        let c = physical(c).into_owned();
        index.push((part(&c), 1, c));
    }
    let mut tag_index = Vec::new();
    for t in inv.tags {
        let set = physical(&t.set).into_owned();
        tag_index.push((part(&set), set, t));
    }
    for (i, marker) in marker_index {
        parts[i].1.markers.push(marker);
    }
    for (i, kind, key) in index {
        let p = &mut parts[i].1;
        if kind == 0 {
            p.keys.push(key);
        } else {
            p.counters.push(key);
        }
    }
    for (i, set, t) in tag_index {
        parts[i].1.tags.push(TagAdd {
            set,
            members: t.members.clone(),
            ttl_secs: t.ttl_secs,
        });
    }
    parts.into_iter().map(|(_, p)| p).collect()
}

/// Puts per-group answers back in the keys' order.
pub(super) fn scatter<T: Default + Clone>(len: usize, groups: &[Vec<usize>], answers: Vec<Vec<T>>) -> Vec<T> {
    let mut out = vec![T::default(); len];
    for (group, answer) in groups.iter().zip(answers) {
        for (&i, v) in group.iter().zip(answer) {
            out[i] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Marker;
    use crate::keys;

    #[test]
    fn a_marker_goes_with_its_record_and_a_store_marker_with_the_query_keys() {
        let home = keys::record_key("app", "users", &7);
        let markers = [
            Marker {
                key: keys::record_marker_key("app", &home),
                lsn: 9,
                ttl_ms: 5_000,
            },
            Marker {
                key: keys::store_marker_key("app", "users"),
                lsn: 9,
                ttl_ms: 5_000,
            },
        ];
        let keys = [home.clone()];
        let counters = [keys::generation_key("app", "users")];
        let inv = Invalidation {
            markers: &markers,
            keys: &keys,
            counters: &counters,
            tags: &[],
        };
        let parts = split_invalidation(&inv);
        assert_eq!(parts.len(), 2);
        let record = parts.iter().find(|p| p.keys == vec![home.clone()]).unwrap();
        assert_eq!(record.markers.len(), 1);
        assert_eq!(record.markers[0].key, markers[0].key);
        let query = parts.iter().find(|p| !p.counters.is_empty()).unwrap();
        assert_eq!(query.markers.len(), 1);
        assert_eq!(query.markers[0].key, markers[1].key);
    }
}
