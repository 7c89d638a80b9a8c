//! Delivering what could not reach the cache: reads replay one bounded
//! batch before they trust the cache again, and a background task replays
//! the rest with backoff (the pending set itself is `pending`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backend::{Invalidation, TagAdd};
use crate::cache::pending::Replay;
use crate::cache::stats::Counters;
use crate::cache::CacheManager;

impl CacheManager {
    /// Whether cached reads may proceed: nothing waits for replay (or this
    /// read's one replay step, bounded to one batch, delivered the last of
    /// it), and no outbox worker of this manager is behind. Costs two atomic
    /// loads when nothing is pending.
    pub(crate) async fn ready(&self, deadline: tokio::time::Instant) -> bool {
        if !self.pending.any() {
            return !self.outbox.lagging();
        }
        self.replay_step(deadline).await;
        !self.pending.any() && !self.outbox.lagging()
    }

    /// Delivers one batch of pending work (see [`crate::cache::pending`]) within
    /// `deadline`, unless another task is delivering one.
    async fn replay_step(&self, deadline: tokio::time::Instant) -> Replay {
        let Some(claim) = self.pending.claim() else {
            return Replay::Busy;
        };
        let batch = claim.next_batch();
        if let Some((glob, cursor)) = &batch.scope {
            let stepped = self
                .guarded(deadline, "replay_scope", || self.backend.scan_step(*cursor, glob))
                .await;
            return match stepped {
                Ok(step) => {
                    Counters::add(&self.counters.invalidations, step.removed);
                    claim.scope_step(&batch, step.next)
                }
                Err(_) => {
                    claim.scope_failed(&batch);
                    Replay::Failed
                }
            };
        }
        let inv = Invalidation {
            keys: &batch.keys,
            counters: &batch.counters,
            tags: &batch.tags,
        };
        let Ok(done) = self
            .guarded(deadline, "replay_invalidations", || self.backend.invalidate(&inv))
            .await
        else {
            return Replay::Failed;
        };
        self.count_resets(&done);
        Counters::add(&self.counters.invalidations, batch.keys.len() as u64);
        tracing::info!(
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
        if !self.pending.remember(scope, keys, counters, tags) {
            return;
        }
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
}
/// Replays the pending invalidations, batch after batch, with backoff after
/// a failure, so that a process that only writes still cleans up after an
/// outage. Ends when nothing is pending, or when the manager is gone.
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
        drop(this);
        if wait.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}
