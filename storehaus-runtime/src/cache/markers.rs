//! Replica markers: what the cache tells a reader about writes a database
//! replica may not have replayed yet (Facebook's "remote markers").
//!
//! A store read from a PostgreSQL standby (`GenericStore::with_read_replica`)
//! must never load, and then cache, a row older than a write that has
//! already been invalidated. So every committed write to such a store
//! raises, in the same round trip as its invalidation and *before* its
//! `DEL`s, a marker per record it wrote, `{global}:__lsn:{{home}}`, and its
//! store's marker, `{global}:__lsn:{{global}:{prefix}}`, to the write-ahead
//! log position it committed at (read on the primary after the commit). A
//! marker is a max-register (`ZADD GT`), lives [`REPLICA_LAG_BUDGET`], and
//! shares its record's cluster slot.
//!
//! A load (after its lease, see `cache::read`) reads its marker — the
//! record's for `get_by_id`/`get_many`, the store's for `get_by` and cached
//! queries, whose rows are not known before they are loaded — and uses a
//! replica only when the replica has replayed past it (see
//! `store::replica`). Why no write is missed: a reader whose lease was
//! taken before a write's `DEL` has its fill dropped by the `DEL`; a
//! reader that took it after the `DEL` reads the marker after it was raised.
//! A marker that has expired was raised more than the budget ago, and a
//! replica is used at all only when it has replayed what the primary had
//! written by the budget ago.
//!
//! Markers are raised for the stores this manager was told have replicas
//! (`register`); a marker whose position is unknown — an invalidation
//! replayed after an outage or a failover, a commit whose position could
//! not be read — is raised to `u64::MAX`: the primary only, for the budget.
//! While the manager has invalidations waiting for replay, its recent
//! invalidations are being delivered again, or an outbox worker is behind,
//! the markers may be missing: loads use the primary.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::backend::Marker;
use crate::cache::CacheManager;
use crate::keys;

/// How long a replica marker lives, and the most a replica may lag behind
/// the primary and still serve reads: 5 s. A replica further behind is
/// skipped (reads use the primary) until it catches up.
pub const REPLICA_LAG_BUDGET: Duration = Duration::from_secs(5);

/// The stores of a manager whose readers use replicas, and when its cache
/// server's data was last replaced (markers lost with it).
#[derive(Debug)]
pub(crate) struct ReplicaScopes {
    /// Store prefixes (escaped, as in keys).
    prefixes: RwLock<HashSet<String>>,
    /// The contact epoch last seen, and when it was seen to move (ms since
    /// `born`; `u64::MAX`: never).
    epoch: AtomicU64,
    moved_ms: AtomicU64,
    born: Instant,
}

impl Default for ReplicaScopes {
    fn default() -> Self {
        ReplicaScopes {
            prefixes: RwLock::default(),
            epoch: AtomicU64::new(0),
            moved_ms: AtomicU64::new(u64::MAX),
            born: Instant::now(),
        }
    }
}

impl ReplicaScopes {
    fn has(&self, prefix: &str) -> bool {
        let prefixes = self.prefixes.read().unwrap_or_else(|p| p.into_inner());
        !prefixes.is_empty() && prefixes.contains(prefix)
    }

    fn any(&self) -> bool {
        !self.prefixes.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Whether the contact epoch moved within the budget (markers raised
    /// before it may be lost); records a move it sees.
    fn recently_moved(&self, epoch: u64) -> bool {
        let now_ms = self.born.elapsed().as_millis() as u64;
        if self.epoch.swap(epoch, Ordering::AcqRel) != epoch {
            self.moved_ms.store(now_ms, Ordering::Release);
            return true;
        }
        let moved = self.moved_ms.load(Ordering::Acquire);
        moved != u64::MAX && now_ms.saturating_sub(moved) < REPLICA_LAG_BUDGET.as_millis() as u64
    }
}

impl CacheManager {
    /// Records that the store `prefix` (escaped) is read from replicas:
    /// from now on, every invalidation of its keys raises markers.
    pub(crate) fn register_replica_scope(&self, prefix: &str) {
        let mut prefixes = self.replica_scopes.prefixes.write().unwrap_or_else(|p| p.into_inner());
        prefixes.insert(prefix.to_string());
    }

    /// Whether writes to the store `prefix` raise markers (and so read
    /// their commit's position).
    pub(crate) fn marks_scope(&self, prefix: &str) -> bool {
        self.replica_scopes.has(prefix)
    }

    /// Whether any store of this manager is read from replicas.
    pub(crate) fn marks_any(&self) -> bool {
        self.replica_scopes.any()
    }

    /// The markers an invalidation of `keys` (record keys, index entries,
    /// side keys, generation counters: any key of a store's key space)
    /// raises: each record key's, and the store's, for the stores read from
    /// replicas; at `lsn`, or `u64::MAX` when it is unknown.
    pub(crate) fn markers_for<'k>(&self, keys: impl IntoIterator<Item = &'k String>, lsn: Option<u64>) -> Vec<Marker> {
        if !self.replica_scopes.any() {
            return Vec::new();
        }
        let global = self.global_prefix();
        let raise = |key: String| Marker {
            key,
            lsn: lsn.unwrap_or(u64::MAX),
            ttl_ms: REPLICA_LAG_BUDGET.as_millis() as u64,
        };
        let mut stores = HashSet::new();
        let mut out = Vec::new();
        for k in keys {
            let Some(prefix) = keys::prefix_of(global, k).filter(|p| self.replica_scopes.has(p)) else {
                continue;
            };
            let rest = &k[global.len() + prefix.len() + 2..];
            if !rest.contains([':', keys::SIDE_MARK]) {
                out.push(raise(keys::record_marker_key(global, k)));
            }
            if stores.insert(prefix) {
                out.push(raise(keys::store_marker_key(global, prefix)));
            }
        }
        out
    }

    /// The highest position among the markers `keys` (0: none), or `None`
    /// when the markers cannot be trusted or read: the load then uses the
    /// primary. Markers cannot be trusted while invalidations of this
    /// manager wait for replay, its outbox is behind, or within the budget
    /// after the cache server's data was replaced.
    pub(crate) async fn marker_position(&self, keys: &[String]) -> Option<u64> {
        let moved = self.replica_scopes.recently_moved(self.contact.epoch());
        if moved || self.pending.any() || self.contact_moved() || self.watchers.lagging() {
            return None;
        }
        let read = self
            .guarded(self.deadline(), "replica_marker", || self.backend.markers(keys))
            .await;
        match read {
            Ok(found) => Some(found.into_iter().flatten().max().unwrap_or(0)),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheConfig;

    #[test]
    fn only_stores_read_from_replicas_raise_markers() {
        let mgr = CacheManager::new(CacheConfig::new("memory://", 60, "app")).unwrap();
        let keys: Vec<String> = [
            "app:users:7",
            "app:users:idx:email:a",
            "app:users:7~2-ab",
            "app:users:query:gen",
            "app:other:1",
        ]
        .iter()
        .map(|k| k.to_string())
        .collect();
        assert!(mgr.markers_for(&keys, Some(9)).is_empty());
        mgr.register_replica_scope("users");
        let markers = mgr.markers_for(&keys, Some(9));
        let names: Vec<&str> = markers.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(names, vec!["app:__lsn:{app:users:7}", "app:__lsn:{app:users}"]);
        assert!(markers.iter().all(|m| m.lsn == 9));
        let unknown = mgr.markers_for(&keys[3..], None);
        assert_eq!(unknown.len(), 1);
        assert_eq!(unknown[0].lsn, u64::MAX);
    }
}
