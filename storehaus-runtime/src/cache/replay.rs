//! Delivering what could not reach the cache: reads replay one bounded
//! batch before they trust the cache again, and a background task replays
//! the rest with backoff (the pending set itself is `pending`). When the
//! backend's contact epoch moves, the log of recent invalidations
//! (`recent`) is handed to the pending set first.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backend::{Invalidation, TagAdd};
use crate::cache::pending::Replay;
use crate::cache::CacheManager;

impl CacheManager {
    /// Whether cached reads may proceed: nothing waits for replay (or this
    /// read's one replay step, bounded to one batch, delivered the last of
    /// it), the server's data was not replaced since the recent
    /// invalidations were last handed over, and no outbox worker of this
    /// manager is behind. A few atomic loads when nothing is pending.
    pub(crate) async fn ready(&self, deadline: tokio::time::Instant) -> bool {
        if !self.pending.any() && !self.contact_moved() {
            return !self.watchers.lagging();
        }
        self.replay_step(deadline).await;
        self.ready_now()
    }

    /// Whether cached reads may proceed without a replay step: nothing
    /// waits for replay, the server's data was not replaced, and no outbox
    /// worker is behind ([`ready`](Self::ready) without its replay step).
    #[inline]
    pub(crate) fn ready_now(&self) -> bool {
        !self.pending.any() && !self.contact_moved() && !self.watchers.lagging()
    }

    /// Whether the server's data may have been replaced by an older copy
    /// since the recent invalidations were last handed to replay. Two
    /// atomic loads.
    #[inline]
    pub(crate) fn contact_moved(&self) -> bool {
        self.contact.epoch() != self.recent.seen()
    }

    /// Hands the log of recent invalidations to the pending set (once per
    /// contact epoch), as deletions: cached reads bypass the cache until
    /// they are delivered to whichever node now serves each key. The work
    /// is pending before the epoch is marked seen, so no read can find
    /// the epoch seen and nothing pending in between.
    pub(crate) fn hand_over_recent(&self) {
        let epoch = self.contact.epoch();
        if epoch <= self.recent.seen() {
            return;
        }
        let log = self.recent.snapshot();
        let keys: usize = log.iter().map(|(_, k)| k.len()).sum();
        for (scope, keys) in log {
            if self.pending.remember(&scope, keys, Vec::new(), Vec::new()) {
                // No handle to spawn a replayer from here: reads replay, and
                // so does the next write (`kick_replayer`).
                self.pending.replayer_may_stop(true);
            }
        }
        if self.recent.mark_seen(epoch) {
            tracing::info!(target: "storehaus",
                keys,
                "the cache's primary may have changed: recent invalidations are delivered again before cached values are served"
            );
        }
    }

    /// Starts a background replayer if work is pending and none runs.
    pub(crate) fn kick_replayer(self: &Arc<Self>) {
        if self.contact_moved() {
            self.hand_over_recent();
        }
        if self.pending.any() && self.pending.claim_replayer() {
            self.spawn_replayer();
        }
    }

    fn spawn_replayer(self: &Arc<Self>) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(replay_in_background(Arc::downgrade(self)));
            }
            // Outside a runtime (a drop during shutdown) the next read replays.
            Err(_) => {
                self.pending.replayer_may_stop(true);
            }
        }
    }

    /// Delivers one batch of pending work (see [`crate::cache::pending`]) within
    /// `deadline`, unless another task is delivering one. A batch refused
    /// because the primary changed under it (its connect found a new
    /// `run_id`: the log of recent invalidations has just joined the
    /// pending work) is sent again at once, with that work.
    async fn replay_step(&self, deadline: tokio::time::Instant) -> Replay {
        let handovers = self.recent.handovers();
        match self.replay_batch(deadline).await {
            Replay::Failed if self.recent.handovers() != handovers => self.replay_batch(deadline).await,
            outcome => outcome,
        }
    }

    async fn replay_batch(&self, deadline: tokio::time::Instant) -> Replay {
        if self.contact_moved() {
            self.hand_over_recent();
        }
        let Some(claim) = self.pending.claim() else {
            return Replay::Busy;
        };
        let batch = claim.next_batch();
        if let Some((glob, cursor)) = &batch.scope {
            let stepped = self
                .guarded(deadline, "replay_scope", || self.backend.scan_step(*cursor, glob, None))
                .await;
            return match stepped {
                Ok(step) => {
                    self.count_n(|c| &c.invalidations, step.removed);
                    claim.scope_step(&batch, step.next)
                }
                Err(_) => {
                    claim.scope_failed(&batch);
                    Replay::Failed
                }
            };
        }
        // The side keys of the versions registered now (see `versions`).
        let Ok(sides) = self.side_keys(&batch.keys, deadline).await else {
            return Replay::Failed;
        };
        let keys: Vec<String> = batch.keys.iter().cloned().chain(sides).collect();
        // Their commits' positions are not known here: the primary only.
        let markers = self.markers_for(batch.keys.iter().chain(&batch.counters), None);
        let inv = Invalidation {
            markers: &markers,
            keys: &keys,
            counters: &batch.counters,
            tags: &batch.tags,
        };
        let Ok(done) = self
            .guarded(deadline, "replay_invalidations", || self.backend.invalidate(&inv))
            .await
        else {
            return Replay::Failed;
        };
        if done.markers_refused {
            // Out of memory: kept, and loads use the primary meanwhile.
            return Replay::Failed;
        }
        self.count_resets(&done);
        self.count_n(|c| &c.invalidations, batch.keys.len() as u64);
        tracing::info!(target: "storehaus",
            keys = batch.keys.len(),
            counters = batch.counters.len(),
            "replayed invalidations that failed during a cache outage"
        );
        match claim.delivered(&batch, !done.tags_refused) {
            // Refused tag additions (out of memory) stay; back off.
            Replay::Progress if done.tags_refused => Replay::Failed,
            outcome => outcome,
        }
    }

    /// Remembers invalidations for replay and makes sure a replayer runs.
    pub(crate) fn remember(self: &Arc<Self>, scope: &str, keys: Vec<String>, counters: Vec<String>, tags: Vec<TagAdd>) {
        if self.pending.remember(scope, keys, counters, tags) {
            self.spawn_replayer();
        }
    }
}

/// Replays the pending invalidations, batch after batch, with backoff after
/// a failure (cut short when the backend finds the deployment healed), so
/// that a process that only writes still cleans up after an outage. Ends
/// when nothing is pending, or when the manager is gone.
async fn replay_in_background(manager: Weak<CacheManager>) {
    let mut pause = Duration::from_millis(50);
    loop {
        let Some(this) = manager.upgrade() else {
            return;
        };
        let outcome = this.replay_step(this.deadline()).await;
        let wait = match outcome {
            Replay::Done if this.pending.replayer_may_stop(false) => return,
            Replay::Done | Replay::Progress => {
                pause = Duration::from_millis(50);
                Duration::ZERO
            }
            Replay::Failed => {
                let wait = pause;
                pause = (pause * 2).min(Duration::from_secs(5));
                wait
            }
            Replay::Busy => Duration::from_millis(5),
        };
        let contact = this.contact.clone();
        drop(this);
        if wait.is_zero() {
            tokio::task::yield_now().await;
        } else {
            // A backoff ends early when the backend finds the deployment
            // healed (a failover completed): other processes read the keys
            // this one could not invalidate until it delivers them.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = contact.next_heal() => pause = Duration::from_millis(50),
            }
        }
    }
}
