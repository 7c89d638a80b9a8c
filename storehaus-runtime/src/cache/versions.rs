//! Versions of a record type side by side, for rolling deploys.
//!
//! During a rollout, processes built from two versions of a record type
//! (say v2 adds a column) serve one table under one prefix. Their entries
//! cannot be shared (each has its own fingerprint), and must not evict each
//! other either: each would count the other's entry corrupt, delete it and
//! refill it, and the cache would be off until the rollout ends.
//!
//! So every version keeps its own entries:
//! - the **home key** (`{global}:{prefix}:{id}`, or an index entry's key)
//!   holds whichever version filled it first; a reader that finds another
//!   version's entry there ([`Found::Foreign`](crate::cache::codec::Found))
//!   leaves it alone and uses its **side key**, `{home}~{tag}`, where the
//!   tag names its layout ([`codec::layout_tag`]: envelope version and
//!   fingerprint). Side keys are filled behind leases like home keys.
//! - a version that is about to fill a side key first **registers** its tag
//!   in the store's registry, `{global}:__versions:{prefix}` (a sorted set
//!   scored by expiry in the server's clock), *after* taking the lease and
//!   *before* reading the database, for the store's longest TTL plus the
//!   lease TTL: longer than any value that fill can leave.
//! - every invalidation (store writes, `invalidate`, the outbox, manual
//!   deletes, tags, replay) deletes the home key **and** the side key of
//!   every tag in the registry, read *after* the write committed.
//!
//! Why no version is left stale: a side fill that read the database before
//! a write committed registered before that read, so the registry read
//! after the commit holds its tag, and the write's delete of its side key
//! lands after its lease (killing the lease, so the fill is dropped) or
//! after its fill (removing it). A version that registers later reads the
//! database after the commit. A tag whose time has passed had no value left.
//! (A registry that Redis evicts under memory pressure, or that is deleted
//! by hand, takes its tags with it: side entries filled before then are
//! no longer reached by invalidations and live until their TTL, the same
//! limit as an evicted tag set's members. The next side fill registers again.)
//!
//! What it costs: a hit of the version that holds the home key, nothing; a
//! hit of another version, one more `GET`; a miss on a side key, the
//! registration. A write reads the registry in parallel with its own
//! invalidation (one round trip, a second only when a tag it did not know
//! appeared); a store whose registry is empty (no rollout in the last TTL)
//! pays the `ZRANGE` of a missing key. A tag nobody registers any more
//! stops costing anything once its time has passed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::cache::codec;
use crate::cache::CacheManager;
use crate::error::CacheResult;
use crate::keys;

/// Added to a registration's time so that a fill's value never outlives it.
const REGISTRATION_MARGIN_MS: u64 = 1_000;

/// Which layout a store's reader writes, and where its store registers it.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub fingerprint: u64,
    /// [`codec::layout_tag`] of the fingerprint.
    pub tag: String,
    /// The store's registry, `{global}:__versions:{prefix}`.
    pub registry: String,
    /// How long a registration lasts, in ms: the store's longest TTL, the
    /// lease TTL and a margin.
    pub register_ms: u64,
}

impl Layout {
    pub fn new(global: &str, prefix: &str, fingerprint: u64, longest_ttl_secs: u64, lease_ms: u64) -> Self {
        Layout {
            fingerprint,
            tag: codec::layout_tag(fingerprint),
            registry: keys::versions_key(global, prefix),
            register_ms: longest_ttl_secs
                .saturating_mul(1000)
                .saturating_add(lease_ms)
                .saturating_add(REGISTRATION_MARGIN_MS),
        }
    }

    /// This layout's side key of `home`.
    pub fn side(&self, home: &str) -> String {
        keys::side_key(home, &self.tag)
    }
}

/// The tags each registry held when this process last read it, so that a
/// write deletes their side keys in its first round trip.
#[derive(Debug, Default)]
pub(crate) struct Known {
    tags: Mutex<HashMap<String, Arc<[String]>>>,
}

impl Known {
    pub fn get(&self, registry: &str) -> Arc<[String]> {
        self.tags
            .lock()
            .ok()
            .and_then(|t| t.get(registry).cloned())
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    fn set(&self, registry: &str, tags: &[String]) {
        if let Ok(mut t) = self.tags.lock() {
            if tags.is_empty() {
                t.remove(registry);
            } else {
                t.insert(registry.to_string(), Arc::from(tags.to_vec()));
            }
        }
    }
}

/// Whether a registry member can be a tag: what [`codec::layout_tag`]
/// writes is made of key-safe bytes; anything else is ignored.
fn is_tag(member: &str) -> bool {
    !member.is_empty() && member.len() <= 64 && member.bytes().all(storehaus_limits::is_key_safe)
}

/// The side keys of `homes` for each of `tags`. Keys that are side keys
/// already (found by a walk) have none.
pub(crate) fn sides(homes: &[String], tags: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(homes.len() * tags.len());
    for home in homes.iter().filter(|h| !h.contains(keys::SIDE_MARK)) {
        out.extend(tags.iter().map(|t| keys::side_key(home, t)));
    }
    out
}

impl CacheManager {
    /// Registers `layout` before a side key it leased is filled (see the
    /// module doc). Whether it is registered: when not, the fill must not
    /// happen.
    pub(crate) async fn register_layout(&self, layout: &Layout, deadline: tokio::time::Instant) -> bool {
        let registered = self
            .guarded(deadline, "register_version", || {
                self.backend
                    .register_version(&layout.registry, &layout.tag, layout.register_ms)
            })
            .await
            .is_ok();
        if registered {
            self.count(|c| &c.version_registrations);
        }
        registered
    }

    /// The tags registered in `registry` now (remembered as known). A
    /// registry of another type (someone else's data) holds no tag; it is
    /// counted as corrupt, and the next registration replaces it.
    pub(crate) async fn live_tags(&self, registry: &str, deadline: tokio::time::Instant) -> CacheResult<Vec<String>> {
        let read = self
            .guarded(deadline, "versions", || self.backend.versions(registry))
            .await;
        let tags: Vec<String> = match read {
            Ok(members) => members.into_iter().filter(|m| is_tag(m)).collect(),
            Err(e) if e.server_error_kind() == Some(&crate::error::ServerErrorKind::WrongType) => {
                self.count_corrupt(1);
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        self.known_versions.set(registry, &tags);
        Ok(tags)
    }

    /// The registry of the store whose key space is `scope` (`{global}:{prefix}:`).
    pub(crate) fn registry_of_scope(&self, scope: &str) -> Option<String> {
        let prefix = keys::prefix_of(self.global_prefix(), scope)?;
        Some(keys::versions_key(self.global_prefix(), prefix))
    }

    /// The side keys of every registered version for `homes` (record keys
    /// and index entries, of any stores of this manager), reading each
    /// store's registry now.
    ///
    /// # Errors
    /// When a registry cannot be read (the caller must treat its
    /// invalidation as undelivered).
    pub(crate) async fn side_keys(&self, homes: &[String], deadline: tokio::time::Instant) -> CacheResult<Vec<String>> {
        let mut by_registry: HashMap<String, Vec<String>> = HashMap::new();
        for home in homes.iter().filter(|h| !h.contains(keys::SIDE_MARK)) {
            if let Some(prefix) = keys::prefix_of(self.global_prefix(), home) {
                by_registry
                    .entry(keys::versions_key(self.global_prefix(), prefix))
                    .or_default()
                    .push(home.clone());
            }
        }
        let mut out = Vec::new();
        for (registry, homes) in by_registry {
            let tags = self.live_tags(&registry, deadline).await?;
            out.extend(sides(&homes, &tags));
        }
        Ok(out)
    }

    /// The keys to delete for the records `ids` of the store prefix
    /// `prefix` (as it appears in keys): each record's key and its side key
    /// for every version registered now. What the outbox deletes for a row
    /// written outside the stores.
    ///
    /// # Errors
    /// When the store's registry cannot be read.
    pub(crate) async fn record_keys_to_delete(&self, prefix: &str, ids: &[String]) -> CacheResult<Vec<String>> {
        let mut keys: Vec<String> = ids
            .iter()
            .map(|id| keys::record_key(self.global_prefix(), prefix, id.as_str()))
            .collect();
        let registry = keys::versions_key(self.global_prefix(), prefix);
        let tags = self.live_tags(&registry, self.deadline()).await?;
        let sides = sides(&keys, &tags);
        keys.extend(sides);
        Ok(keys)
    }

    /// Removes the side entries (see `versions`) of keys an invalidation
    /// removed; what cannot be removed now is remembered for replay.
    pub(crate) async fn drop_side_entries(&self, homes: &[String], deadline: tokio::time::Instant) {
        let dropped = match self.side_keys(homes, deadline).await {
            Ok(sides) if sides.is_empty() => Ok(()),
            Ok(sides) => {
                self.near_forget(&sides);
                self.guarded(deadline, "invalidate_tag", || self.backend.delete(&sides))
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        if dropped.is_err() {
            let mut by_scope: HashMap<String, Vec<String>> = Default::default();
            for home in homes {
                if let Some(prefix) = keys::prefix_of(self.global_prefix(), home) {
                    let scope = keys::store_scope(self.global_prefix(), prefix);
                    by_scope.entry(scope).or_default().push(home.clone());
                }
            }
            for (scope, homes) in by_scope {
                // No handle to spawn a replayer from here: reads replay, and
                // so does the next write.
                if self.pending.remember(&scope, homes, Vec::new(), Vec::new()) {
                    self.pending.replayer_may_stop(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_home_gets_a_side_key_per_tag_and_side_keys_get_none() {
        let homes = vec!["g:p:1".to_string(), "g:p:2~2-ab".to_string()];
        let tags = vec!["2-ab".to_string(), "2-cd".to_string()];
        assert_eq!(sides(&homes, &tags), vec!["g:p:1~2-ab", "g:p:1~2-cd"]);
        assert!(is_tag("2-00000000000000ab"));
        assert!(!is_tag("a*") && !is_tag("") && !is_tag("a:b"));
    }

    #[test]
    fn a_registration_outlives_every_value_its_fill_can_leave() {
        let layout = Layout::new("g", "p", 0xab, 60, 5_000);
        assert_eq!(layout.registry, "g:__versions:p");
        assert_eq!(layout.side("g:p:1"), "g:p:1~2-00000000000000ab");
        assert!(layout.register_ms > 60_000 + 5_000);
    }
}
