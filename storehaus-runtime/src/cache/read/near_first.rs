//! The near cache, asked before the read's future is built (see
//! [`near_first`]), and the lookup the read path shares with it.

use super::RecordRead;
use crate::cache::near::Near;
use crate::cache::stats::Figures;
use crate::cache::versions::Layout;
use crate::cache::CacheManager;

/// What [`near_first`] found.
pub(crate) enum NearFirst<V> {
    /// A near hit, counted.
    Hit(Option<V>),
    /// The near cache was asked and has nothing: the read goes on in Redis.
    Missed,
    /// Not asked (no near cache for this store, or the cache may not serve
    /// before a replay step): the read decides.
    NotAsked,
}

/// The near cache, asked before the read's future is built: that future is
/// large, and moving it into place cost a near hit more than its lookup
/// (callgrind). Counts the hit for the manager and for `store`.
pub(crate) fn near_first<V: Clone + Send + Sync + 'static>(
    mgr: &CacheManager,
    key: &str,
    read: &RecordRead<'_>,
    store: &Figures,
) -> NearFirst<V> {
    let Some(near) = read.near.then(|| mgr.near()).flatten() else {
        return NearFirst::NotAsked;
    };
    if !mgr.ready_now() {
        return NearFirst::NotAsked;
    }
    match near_hit::<V>(near, key, read.layout) {
        Some(v) => {
            mgr.count_in(store, |c| &c.hits);
            NearFirst::Hit(v)
        }
        None => NearFirst::Missed,
    }
}

/// What the near cache holds for `key`: the home key, or this version's
/// side key (a rollout).
#[inline]
pub(super) fn near_hit<V: Clone + Send + Sync + 'static>(near: &Near, key: &str, layout: &Layout) -> Option<Option<V>> {
    near.get::<V>(key).or_else(|| near.get::<V>(&layout.side(key)))
}
