//! A committed write's invalidation: delete its keys (and the side keys of
//! the other versions of its record type that live beside them, see
//! `versions`), bump its store's query generation and record its tags, in
//! one round trip under one budget. What cannot be delivered is remembered
//! for replay (see `replay`).

use std::sync::Arc;

use crate::backend::{Invalidated, Invalidation, TagAdd};
use crate::cache::versions::sides;
use crate::cache::CacheManager;
use crate::error::CacheResult;

/// A change to one store's entries, from outside its own writes: its key
/// space (`{global}:{prefix}:`), the record keys to delete and the query
/// generations to bump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub scope: String,
    pub keys: Vec<String>,
    pub counters: Vec<String>,
}

impl CacheManager {
    /// Invalidates `keys` and bumps `counters` after a committed write, and
    /// records `tags`, in one round trip under one budget: a write's cache
    /// work never takes more than one timeout. Detaches in-flight loads first.
    /// `scope` is the writing store's key space, `{global}:{prefix}:`.
    ///
    /// What cannot reach the cache is remembered: cached reads bypass the
    /// cache until it has been replayed, by the next read or by a background
    /// task. That includes a caller whose future is dropped before the
    /// invalidation answered: the drop remembers it.
    ///
    /// `lsn`: the write-ahead log position the write committed at, for the
    /// replica markers of a store read from replicas (see `markers`;
    /// `None`: unknown, the primary only for a while).
    pub(crate) async fn invalidate_committed(
        self: &Arc<Self>,
        scope: &str,
        keys: Vec<String>,
        counters: Vec<String>,
        (tags, lsn): (Vec<TagAdd>, Option<u64>),
    ) {
        self.invalidate_versions(scope, (keys, Vec::new()), counters, (tags, lsn))
            .await;
    }

    /// [`invalidate_committed`](Self::invalidate_committed), where every
    /// home key (`keys`: records, index entries) goes with the side keys of
    /// every version registered for the store (see `versions`); `filled`:
    /// homes this write filled itself, whose side keys alone go.
    ///
    /// The registry is read in parallel with the invalidation, after the
    /// commit: the side keys of the versions this process knew go in the
    /// first round trip, those of versions it meets only now in a second.
    async fn invalidate_versions(
        self: &Arc<Self>,
        scope: &str,
        (keys, filled): (Vec<String>, Vec<String>),
        counters: Vec<String>,
        (tags, lsn): (Vec<TagAdd>, Option<u64>),
    ) {
        self.flights.detach(&keys);
        if keys.is_empty() && filled.is_empty() && counters.is_empty() && tags.is_empty() {
            return;
        }
        let invalidated = keys.len() as u64;
        let mut homes = keys.clone();
        homes.extend(filled);
        let registry = self.registry_of_scope(scope).filter(|_| !homes.is_empty());
        let known = registry.as_deref().map(|r| self.known_versions.get(r));
        let mut all = keys;
        all.extend(sides(&homes, known.as_deref().unwrap_or_default()));
        let mut work = Unfinished {
            manager: self,
            scope,
            keys: homes,
            counters,
            tags,
            done: false,
        };
        // Logged before it is sent: a failover noticed while it is under
        // way then delivers it again (with the side keys registered then).
        self.recent.record(scope, &work.keys, &work.counters);
        let markers = self.markers_for(work.keys.iter().chain(&work.counters), lsn);
        let inv = Invalidation {
            markers: &markers,
            keys: &all,
            counters: &work.counters,
            tags: &work.tags,
        };
        let deadline = self.deadline();
        let (delivered, live) = tokio::join!(
            self.guarded(deadline, "invalidate", || self.backend.invalidate(&inv)),
            async {
                match &registry {
                    Some(r) => self.live_tags(r, deadline).await.map(Some),
                    None => Ok(None),
                }
            }
        );
        // After Redis answered (or failed), never before: a reader whose GET
        // raced the DEL holds an older ticket, and its entry is not served.
        self.near_forget(&all);
        let delivered = match (delivered, live) {
            (Ok(done), Ok(live)) => {
                let known = known.as_deref().unwrap_or_default();
                let new: Vec<String> = live
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| !known.contains(t))
                    .collect();
                self.delete_new_sides(&work.keys, &new, deadline).await.map(|()| done)
            }
            (Ok(_), Err(e)) | (Err(e), _) => Err(e),
        };
        work.done = true;
        match delivered {
            // A refused marker (out of memory): replayed whole, and loads
            // use the primary until then.
            Ok(done) if done.markers_refused => work.remember(),
            Ok(done) => {
                self.count_resets(&done);
                self.count_n(|c| &c.invalidations, invalidated);
                if done.tags_refused {
                    self.remember(scope, Vec::new(), Vec::new(), std::mem::take(&mut work.tags));
                }
            }
            // Replayed whole: the replay reads the registry again.
            Err(_) => work.remember(),
        }
        self.kick_replayer();
    }

    /// Deletes the side keys of `homes` for versions `tags` met only now.
    async fn delete_new_sides(
        &self,
        homes: &[String],
        tags: &[String],
        deadline: tokio::time::Instant,
    ) -> crate::error::CacheResult<()> {
        let extra = sides(homes, tags);
        if extra.is_empty() {
            return Ok(());
        }
        let deleted = self
            .guarded(deadline, "invalidate", || self.backend.delete(&extra))
            .await;
        self.near_forget(&extra);
        deleted.map(|_| ())
    }

    /// A committed write's invalidation for a write that fills the cache
    /// with what it wrote: `key` held `lease` (taken by `read::write_lease`
    /// before the write was sent) and gets `value` if it still holds it;
    /// otherwise it is deleted like any invalidated key. The keys `also`
    /// (index entries), the counters and the tags are delivered as by [`invalidate_committed`](Self::invalidate_committed).
    ///
    /// Why this never leaves an older row: every write deletes the key after
    /// its commit, or (this path) replaces its own lease by its value. A
    /// write whose lease was still in place when it filled had no other
    /// write's lease or delete land after its own lease, and every write
    /// committed after it deletes or replaces the key after its commit.
    /// The key is in the log of recent invalidations all the same, so a
    /// failover that loses the value deletes it rather than leaving an older one.
    pub(crate) async fn fill_committed(
        self: &Arc<Self>,
        scope: &str,
        key: String,
        fill: (Vec<u8>, crate::cache::flight::Lease, u64),
        (also, counters): (Vec<String>, Vec<String>),
        (tags, lsn): (Vec<TagAdd>, Option<u64>),
    ) {
        let (value, lease, ttl_secs) = fill;
        let keys = vec![key];
        self.flights.detach(&keys);
        self.recent.record(scope, &keys, &[]);
        // Raised before the fill lands: a reader that misses after the
        // fill (an eviction) must find it.
        self.raise_markers(&keys, lsn).await;
        let fill = crate::cache::fill::Fill {
            keys,
            values: vec![value],
            guard: crate::cache::fill::Guard::Lease(lease),
            ttl_secs,
        };
        let filled = self.land(&fill).await == 1;
        // The near cache may hold the row from before the write.
        self.near_forget(&fill.keys);
        let (mut keys, filled) = if filled {
            (Vec::new(), fill.keys)
        } else {
            (fill.keys, Vec::new())
        };
        keys.extend(also);
        // Other versions' side entries of the key go in any case.
        self.invalidate_versions(scope, (keys, filled), counters, (tags, lsn))
            .await;
    }

    /// Raises the markers of `keys` on their own (see `markers`), before a
    /// write fills what it wrote; a failure is left to the invalidation
    /// that follows, which raises them again.
    async fn raise_markers(&self, keys: &[String], lsn: Option<u64>) {
        let markers = self.markers_for(keys, lsn);
        if markers.is_empty() {
            return;
        }
        let inv = Invalidation {
            markers: &markers,
            ..Invalidation::default()
        };
        let _ = self
            .guarded(self.deadline(), "replica_marker", || self.backend.invalidate(&inv))
            .await;
    }

    /// Delivers changes the database logged (the outbox): deletes their
    /// keys and bumps their counters, in one round trip under one budget.
    /// Like a write's invalidation, each change joins the log of recent
    /// invalidations before it is sent, so a failover that loses the `DEL`
    /// delivers it again; unlike one, a failure is returned rather than
    /// kept for replay: the outbox keeps the entries, and the caller's
    /// reads bypass the cache until they are delivered. `lsn`: a
    /// write-ahead log position at or after the changes' commits, for the
    /// replica markers (`None`: unknown, the primary only for a while).
    pub(crate) async fn deliver_logged(&self, changes: &[Change], lsn: Option<u64>) -> CacheResult<()> {
        let mut keys = Vec::new();
        let mut counters = Vec::new();
        for change in changes {
            self.recent.record(&change.scope, &change.keys, &change.counters);
            keys.extend_from_slice(&change.keys);
            counters.extend_from_slice(&change.counters);
        }
        if keys.is_empty() && counters.is_empty() {
            return Ok(());
        }
        self.flights.detach(&keys);
        let markers = self.markers_for(keys.iter().chain(&counters), lsn);
        let inv = Invalidation {
            markers: &markers,
            keys: &keys,
            counters: &counters,
            tags: &[],
        };
        let delivered = self
            .guarded(self.deadline(), "outbox", || self.backend.invalidate(&inv))
            .await;
        self.near_forget(&keys);
        let done = delivered?;
        if done.markers_refused {
            return Err(crate::error::CacheError::Command(
                "OOM: a replica marker was refused (out of memory)".into(),
            ));
        }
        self.count_resets(&done);
        self.count_n(|c| &c.invalidations, keys.len() as u64);
        Ok(())
    }

    /// Counts the generation counters an invalidation had to reset.
    pub(crate) fn count_resets(&self, done: &Invalidated) {
        if done.corrupt > 0 {
            self.count_corrupt(done.corrupt);
            tracing::warn!(target: "storehaus",
                counters = done.corrupt,
                "a query generation counter held something else than an integer: replaced by a fresh seed"
            );
        }
        self.count_n(|c| &c.command_errors, done.refused);
    }
}

/// An invalidation under way; if its future is dropped before the cache
/// answered, the work is remembered for replay.
struct Unfinished<'a> {
    manager: &'a Arc<CacheManager>,
    scope: &'a str,
    keys: Vec<String>,
    counters: Vec<String>,
    tags: Vec<TagAdd>,
    done: bool,
}

impl Unfinished<'_> {
    fn remember(&mut self) {
        self.manager.remember(
            self.scope,
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.counters),
            std::mem::take(&mut self.tags),
        );
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.manager.near_forget(&self.keys);
            self.remember();
        }
    }
}
