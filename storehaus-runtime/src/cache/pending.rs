//! Invalidations that could not reach the cache yet, kept for replay.
//!
//! A committed write whose `DEL` (or generation bump, or tag addition) did
//! not reach the cache is remembered here. While a key, a counter or a
//! scope is remembered, cached reads of this process bypass the cache (one
//! atomic load tells them); a pending tag addition makes no entry stale and
//! gates nothing. A replayer delivers the work in bounded batches, each
//! under a budget of its own:
//!
//! - keys, counters and tag additions, at most [`BATCH`] keys per round
//!   trip; an entry is forgotten only if no later write remembered it again
//!   meanwhile (each entry carries the epoch of the write that last needed it);
//! - past the configured bound (`CacheConfig::with_max_pending_invalidations`)
//!   a store's keys are replaced by its whole *scope*, `{global}:{prefix}:`,
//!   cleared on recovery by a `SCAN` + `UNLINK` walk, one step per budget.
//!   A write to the scope during the walk restarts it, so a walk that
//!   completes covers every write that came before its start.
//!
//! Memory stays bounded by the bound; a read costs one atomic load while
//! work is pending, and replay never holds the lock across a round trip.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::backend::TagAdd;

/// Keys (and tag members) delivered per round trip of a replay.
pub(crate) const BATCH: usize = 1_000;

#[derive(Debug)]
pub(crate) struct Pending {
    set: Mutex<PendingSet>,
    /// Whether a key, a counter or a scope is pending (an entry in the
    /// cache may be older than a write): the read path's one atomic load.
    any: AtomicBool,
    /// Held by the one task replaying a batch right now.
    claimed: AtomicBool,
    max: usize,
}

#[derive(Debug, Default)]
struct PendingSet {
    keys: HashMap<String, u64>,
    counters: HashMap<String, u64>,
    scopes: HashMap<String, Scope>,
    tags: HashMap<String, PendingTag>,
    tag_members: usize,
    epoch: u64,
    overflows: u64,
    replayer_running: bool,
}

/// A store's whole key space, to be cleared by a SCAN walk.
#[derive(Debug, Clone, Copy)]
struct Scope {
    /// The epoch of the last write that needed it.
    epoch: u64,
    /// The epoch when the current walk started.
    walk_epoch: u64,
    /// Where the current walk stands (0: not started).
    cursor: u64,
}

#[derive(Debug)]
struct PendingTag {
    members: HashSet<String>,
    ttl_secs: u64,
    epoch: u64,
}

/// Work taken out for one round trip.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub keys: Vec<String>,
    pub counters: Vec<String>,
    pub tags: Vec<TagAdd>,
    /// A scope walk step: the glob and the cursor to continue from.
    pub scope: Option<(String, u64)>,
    epochs: Vec<u64>,
    counter_epochs: Vec<u64>,
    tag_epochs: Vec<u64>,
    scope_key: String,
}

/// What one replay step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Nothing is pending any more.
    Done,
    /// A batch was delivered; more is pending.
    Progress,
    /// The batch could not be delivered.
    Failed,
    /// Another task is replaying.
    Busy,
}

impl Pending {
    pub fn new(max: usize) -> Self {
        Pending {
            set: Mutex::new(PendingSet::default()),
            any: AtomicBool::new(false),
            claimed: AtomicBool::new(false),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PendingSet> {
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a key, a counter or a scope waits for replay, so that a
    /// cached entry may be older than a committed write. One atomic load.
    #[inline]
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// How many entries wait (keys, counters, scopes, tag members).
    pub fn len(&self) -> u64 {
        let p = self.lock();
        (p.keys.len() + p.counters.len() + p.scopes.len() + p.tag_members) as u64
    }

    /// How many times a store's keys were replaced by its whole scope.
    pub fn overflows(&self) -> u64 {
        self.lock().overflows
    }

    /// Remembers what a write in `scope` (`{global}:{prefix}:`) could not
    /// deliver. Returns `true` when the caller must start a replayer.
    pub fn remember(&self, scope: &str, keys: Vec<String>, counters: Vec<String>, tags: Vec<TagAdd>) -> bool {
        let mut p = self.lock();
        p.epoch += 1;
        let epoch = p.epoch;
        for c in counters {
            p.counters.insert(c, epoch);
        }
        if let Some(s) = p.scopes.get_mut(scope) {
            // The scope walk covers these keys, if it starts over.
            s.epoch = epoch;
        } else if p.keys.len() + p.tag_members + keys.len() > self.max {
            tracing::warn!(target: "storehaus",
                scope,
                pending = p.keys.len(),
                "too many pending invalidations: this store's whole key space will be cleared on recovery"
            );
            p.keys.retain(|k, _| !k.starts_with(scope));
            p.scopes.insert(
                scope.to_string(),
                Scope {
                    epoch,
                    walk_epoch: epoch,
                    cursor: 0,
                },
            );
            p.overflows += 1;
        } else {
            for k in keys {
                p.keys.insert(k, epoch);
            }
        }
        for t in tags {
            if p.keys.len() + p.tag_members + t.members.len() > self.max {
                // Bounded memory first: this tag association is lost, its
                // keys are still invalidated (above).
                tracing::warn!(target: "storehaus", set = %t.set, "too many pending tag additions: dropping one");
                p.overflows += 1;
                continue;
            }
            let added = {
                let entry = p.tags.entry(t.set).or_insert_with(|| PendingTag {
                    members: HashSet::new(),
                    ttl_secs: 0,
                    epoch,
                });
                entry.epoch = epoch;
                entry.ttl_secs = entry.ttl_secs.max(t.ttl_secs);
                let before = entry.members.len();
                entry.members.extend(t.members);
                entry.members.len() - before
            };
            p.tag_members += added;
        }
        self.any.store(p.gates_reads(), Ordering::Release);
        let start = !p.replayer_running;
        p.replayer_running = true;
        start
    }

    /// Marks a background replayer running unless one is: whether the
    /// caller must start it.
    pub fn claim_replayer(&self) -> bool {
        let mut p = self.lock();
        let start = !p.replayer_running;
        p.replayer_running = true;
        start
    }

    /// Claims the right to replay one batch; `None` when another task holds it.
    pub fn claim(&self) -> Option<Claim<'_>> {
        self.claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Claim { pending: self })
    }

    /// Marks the replayer stopped when nothing is pending (or `force`):
    /// returns whether it may stop.
    pub fn replayer_may_stop(&self, force: bool) -> bool {
        let mut p = self.lock();
        let empty = p.is_empty();
        if empty || force {
            p.replayer_running = false;
        }
        empty || force
    }
}

impl PendingSet {
    /// Whether a cached entry may be older than a committed write.
    fn gates_reads(&self) -> bool {
        !(self.keys.is_empty() && self.counters.is_empty() && self.scopes.is_empty())
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.counters.is_empty() && self.scopes.is_empty() && self.tags.is_empty()
    }
}

/// One task's right to replay; released on drop.
pub(crate) struct Claim<'a> {
    pending: &'a Pending,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.pending.claimed.store(false, Ordering::Release);
    }
}

impl Claim<'_> {
    /// The next batch: a scope walk step if a scope is pending, else up to
    /// [`BATCH`] keys, every counter and some tag additions.
    pub fn next_batch(&self) -> Batch {
        let p = self.pending.lock();
        let mut batch = Batch::default();
        if let Some((scope, s)) = p.scopes.iter().next() {
            let mut glob = scope.clone();
            glob.push('*');
            batch.scope = Some((glob, s.cursor));
            batch.scope_key = scope.clone();
            return batch;
        }
        for (k, e) in p.keys.iter().take(BATCH) {
            batch.keys.push(k.clone());
            batch.epochs.push(*e);
        }
        for (c, e) in &p.counters {
            batch.counters.push(c.clone());
            batch.counter_epochs.push(*e);
        }
        let mut room = BATCH.saturating_sub(batch.keys.len()).max(1);
        for (set, t) in &p.tags {
            if room == 0 {
                break;
            }
            let members: Vec<String> = t.members.iter().take(room).cloned().collect();
            room = room.saturating_sub(members.len());
            batch.tags.push(TagAdd {
                set: set.clone(),
                members,
                ttl_secs: t.ttl_secs,
            });
            batch.tag_epochs.push(t.epoch);
        }
        batch
    }

    /// Forgets what `batch` delivered (tag additions too unless
    /// `tags_delivered` is false), keeping whatever a write remembered again
    /// since. Returns whether anything is still pending.
    pub fn delivered(&self, batch: &Batch, tags_delivered: bool) -> Replay {
        let mut p = self.pending.lock();
        for (k, e) in batch.keys.iter().zip(&batch.epochs) {
            if p.keys.get(k) == Some(e) {
                p.keys.remove(k);
            }
        }
        for (c, e) in batch.counters.iter().zip(&batch.counter_epochs) {
            if p.counters.get(c) == Some(e) {
                p.counters.remove(c);
            }
        }
        if tags_delivered {
            for (t, e) in batch.tags.iter().zip(&batch.tag_epochs) {
                let mut removed = 0;
                let mut now_empty = false;
                if let Some(pending) = p.tags.get_mut(&t.set) {
                    // Members added again by a later write stay.
                    if pending.epoch == *e {
                        for m in &t.members {
                            removed += usize::from(pending.members.remove(m));
                        }
                        now_empty = pending.members.is_empty();
                    }
                }
                p.tag_members -= removed;
                if now_empty {
                    p.tags.remove(&t.set);
                }
            }
        }
        self.finish(&mut p)
    }

    /// Records a scope walk step that reached `next` (0: the walk is complete).
    pub fn scope_step(&self, batch: &Batch, next: u64) -> Replay {
        let mut p = self.pending.lock();
        if let Some(s) = p.scopes.get_mut(&batch.scope_key) {
            if next != 0 {
                s.cursor = next;
            } else if s.epoch == s.walk_epoch {
                p.scopes.remove(&batch.scope_key);
            } else {
                // Written to during the walk: walk again from the start.
                s.cursor = 0;
                s.walk_epoch = s.epoch;
            }
        }
        self.finish(&mut p)
    }

    /// A scope walk step failed: the server may have restarted, and a
    /// cursor is only valid on the server that gave it, so start over.
    pub fn scope_failed(&self, batch: &Batch) {
        let mut p = self.pending.lock();
        if let Some(s) = p.scopes.get_mut(&batch.scope_key) {
            s.cursor = 0;
            s.walk_epoch = s.epoch;
        }
    }

    fn finish(&self, p: &mut PendingSet) -> Replay {
        self.pending.any.store(p.gates_reads(), Ordering::Release);
        if p.is_empty() {
            Replay::Done
        } else {
            Replay::Progress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(scope: &str, range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("{scope}{i}")).collect()
    }

    #[test]
    fn delivered_entries_are_forgotten_unless_written_again() {
        let p = Pending::new(100);
        assert!(p.remember("a:u:", keys("a:u:", 0..3), vec!["a:u:query:gen".into()], vec![]));
        assert!(p.any());
        assert!(!p.remember("a:u:", vec![], vec![], vec![]), "a replayer already runs");
        let claim = p.claim().unwrap();
        assert!(p.claim().is_none(), "one replayer at a time");
        let batch = claim.next_batch();
        assert_eq!((batch.keys.len(), batch.counters.len()), (3, 1));
        // A later write needs key 0 again while the batch is in flight.
        p.remember("a:u:", keys("a:u:", 0..1), vec![], vec![]);
        assert_eq!(claim.delivered(&batch, true), Replay::Progress);
        assert_eq!(p.len(), 1);
        let batch = claim.next_batch();
        assert_eq!(batch.keys, vec!["a:u:0".to_string()]);
        assert_eq!(claim.delivered(&batch, true), Replay::Done);
        assert!(!p.any());
    }

    #[test]
    fn past_the_bound_a_store_falls_back_to_its_scope() {
        let p = Pending::new(10);
        p.remember("a:u:", keys("a:u:", 0..6), vec![], vec![]);
        p.remember("a:n:", keys("a:n:", 0..3), vec![], vec![]);
        p.remember("a:u:", keys("a:u:", 6..12), vec![], vec![]);
        assert_eq!(p.len(), 4, "3 keys of a:n: and the scope a:u:");
        assert_eq!(p.overflows(), 1);
        // Later keys of the scope are absorbed by it.
        p.remember("a:u:", keys("a:u:", 12..20), vec![], vec![]);
        assert_eq!(p.len(), 4);

        let claim = p.claim().unwrap();
        let batch = claim.next_batch();
        assert_eq!(batch.scope, Some(("a:u:*".to_string(), 0)));
        assert_eq!(claim.scope_step(&batch, 17), Replay::Progress);
        let batch = claim.next_batch();
        assert_eq!(batch.scope, Some(("a:u:*".to_string(), 17)));
        // A write to the scope during the walk: the walk starts over.
        p.remember("a:u:", keys("a:u:", 0..1), vec![], vec![]);
        assert_eq!(claim.scope_step(&batch, 0), Replay::Progress);
        let batch = claim.next_batch();
        assert_eq!(batch.scope, Some(("a:u:*".to_string(), 0)));
        claim.scope_failed(&batch);
        assert_eq!(claim.scope_step(&batch, 0), Replay::Progress);
        let batch = claim.next_batch();
        assert_eq!(batch.scope, None);
        assert_eq!(batch.keys.len(), 3);
        assert_eq!(claim.delivered(&batch, true), Replay::Done);
    }

    #[test]
    fn batches_are_bounded() {
        let p = Pending::new(1_000_000);
        p.remember("a:u:", keys("a:u:", 0..2_500), vec![], vec![]);
        let claim = p.claim().unwrap();
        let mut rounds = 0;
        loop {
            let batch = claim.next_batch();
            assert!(batch.keys.len() <= BATCH);
            rounds += 1;
            if claim.delivered(&batch, true) == Replay::Done {
                break;
            }
        }
        assert_eq!(rounds, 3);
    }

    #[test]
    fn tag_additions_wait_until_delivered() {
        let p = Pending::new(100);
        let tag = TagAdd {
            set: "a:__tag:t".into(),
            members: keys("a:u:", 0..2),
            ttl_secs: 60,
        };
        p.remember("a:u:", vec![], vec![], vec![tag]);
        assert_eq!(p.len(), 2);
        assert!(!p.any(), "a pending tag addition makes nothing stale");
        let claim = p.claim().unwrap();
        let batch = claim.next_batch();
        assert_eq!(batch.tags.len(), 1);
        assert_eq!(claim.delivered(&batch, false), Replay::Progress, "refused: kept");
        let batch = claim.next_batch();
        assert_eq!(claim.delivered(&batch, true), Replay::Done);
    }
}
