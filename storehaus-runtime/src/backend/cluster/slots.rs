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
