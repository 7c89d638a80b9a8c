//! Counters of cache behaviour, read with
//! [`CacheManager::get_stats`](crate::CacheManager::get_stats).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a [`CacheManager`](crate::CacheManager)'s counters since it
/// was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered from the cache (records and cached "no such row").
    pub hits: u64,
    /// Reads the cache could not answer (absent, corrupt, unreachable, bypassed).
    pub misses: u64,
    /// Connection-level failures (refused, dropped, auth).
    pub connection_errors: u64,
    /// Corrupt entries met in the cache: values that failed to decode or
    /// carried another schema fingerprint, lease-shaped values without an
    /// expiry, generation counters that held no integer. Each was removed or
    /// replaced, and the database answered.
    pub serialization_errors: u64,
    /// Values a read loaded but could not encode (serde refused them): the
    /// reader got its answer, nothing was cached.
    pub encode_errors: u64,
    /// Cache operations that ran out of their time budget.
    pub timeouts: u64,
    /// Commands the server rejected (out of memory, wrong type, ...).
    pub command_errors: u64,
    /// Values written to the cache by reads.
    pub fills: u64,
    /// Fills dropped because a write invalidated the key while the reader
    /// was at the database (the stale-set race, prevented).
    pub fills_rejected: u64,
    /// Reads that joined another task's in-flight database load.
    pub coalesced: u64,
    /// Reads that waited for another process's fill lease.
    pub lease_waits: u64,
    /// Keys invalidated by writes.
    pub invalidations: u64,
    /// Invalidations that could not reach the cache yet and are remembered
    /// for replay (reads bypass the cache until they are replayed).
    pub pending_invalidations: u64,
    /// Times the pending invalidations outgrew their bound
    /// (`CacheConfig::with_max_pending_invalidations`): a store's keys were
    /// replaced by its whole key space, to be cleared on recovery (or a tag
    /// addition was dropped).
    pub pending_overflows: u64,
    /// Outbox entries this manager's workers have still to deliver
    /// (`GenericStore::watch_external_writes`), counted up to 100 000 per
    /// database after a full batch; 0 when they are caught up.
    pub outbox_backlog: u64,
    /// How old the oldest undelivered outbox entry is, in ms (0 when the
    /// workers are caught up).
    pub outbox_lag_ms: u64,
    /// Outbox entries delivered to the cache.
    pub outbox_delivered: u64,
    /// Cache operations skipped because the circuit breaker was open.
    pub breaker_skips: u64,
    /// Times the circuit breaker opened.
    pub breaker_opened: u64,
    /// Whether the circuit breaker is open now.
    pub breaker_open: bool,
    /// Times the recent invalidations were handed to replay because the
    /// cache's primary may have changed (a Sentinel switch, a restart with a
    /// new `run_id`, a failed or redirected cluster command): cached values
    /// were served again only once they were delivered
    /// (`CacheConfig::with_recent_invalidations`).
    pub recent_replays: u64,
    /// Hits that refreshed their entry early from the database
    /// (`CacheParams::with_early_refresh`), before it expired.
    pub early_refreshes: u64,
}

impl CacheStats {
    /// Hits as a fraction of all reads, from 0.0 to 1.0 (0.0 before any read).
    /// Multiply by 100 for a percentage.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub connection_errors: AtomicU64,
    pub serialization_errors: AtomicU64,
    pub encode_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub command_errors: AtomicU64,
    pub fills: AtomicU64,
    pub fills_rejected: AtomicU64,
    pub coalesced: AtomicU64,
    pub lease_waits: AtomicU64,
    pub invalidations: AtomicU64,
    pub breaker_skips: AtomicU64,
    pub breaker_opened: AtomicU64,
    pub early_refreshes: AtomicU64,
}

impl Counters {
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self, pending_invalidations: u64, breaker_open: bool) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            connection_errors: self.connection_errors.load(Relaxed),
            serialization_errors: self.serialization_errors.load(Relaxed),
            encode_errors: self.encode_errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            command_errors: self.command_errors.load(Relaxed),
            fills: self.fills.load(Relaxed),
            fills_rejected: self.fills_rejected.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            lease_waits: self.lease_waits.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            pending_invalidations,
            pending_overflows: 0,
            outbox_backlog: 0,
            outbox_lag_ms: 0,
            outbox_delivered: 0,
            breaker_skips: self.breaker_skips.load(Relaxed),
            breaker_opened: self.breaker_opened.load(Relaxed),
            breaker_open,
            recent_replays: 0,
            early_refreshes: self.early_refreshes.load(Relaxed),
        }
    }
}
