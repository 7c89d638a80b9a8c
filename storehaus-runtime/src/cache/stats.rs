//! Counters of cache behaviour, read with
//! [`CacheManager::get_stats`](crate::CacheManager::get_stats).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

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
    /// Corrupt entries met in the cache: values that failed to decode,
    /// lease-shaped values without an
    /// expiry, generation counters that held no integer. Each was removed or
    /// replaced, and the database answered. (An entry of another version of
    /// the record type is not corrupt: see `foreign_entries`.)
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
    /// Reads answered by the near cache (`CacheConfig::with_near_cache`),
    /// without a round trip. Also counted in `hits`.
    pub near_hits: u64,
    /// Near cache lookups that found nothing servable (then Redis was asked).
    pub near_misses: u64,
    /// Keys the near cache dropped because Redis said they changed, or this
    /// process wrote them.
    pub near_invalidations: u64,
    /// Times the whole near cache was dropped: its tracking connection was
    /// lost or (re)subscribed, Redis was flushed, or many keys changed at once.
    pub near_flushes: u64,
    /// Hits that refreshed their entry early from the database
    /// (`CacheParams::with_early_refresh`), before it expired.
    pub early_refreshes: u64,
    /// Entries of another version of the record type (another schema
    /// fingerprint, or a newer value format) found at a home key: left in
    /// place, and read beside it under this version's side key (see
    /// `docs/FORMAT.md`, rolling deploys).
    pub foreign_entries: u64,
    /// Times this version registered itself in a store's live-version
    /// registry, before filling a side key.
    pub version_registrations: u64,
    /// Reads answered from the cache: how long they took.
    pub hit_latency: LatencySummary,
    /// Reads that went to the database: how long they took.
    pub miss_latency: LatencySummary,
    /// Store writes (commit and invalidation): how long they took.
    pub write_latency: LatencySummary,
}

/// How long operations of one kind took: how many, and the median and 99th
/// percentile in µs. Percentiles come from a histogram with four buckets
/// per doubling, so each is an upper bound at most 19 % above the true value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Operations recorded.
    pub count: u64,
    /// Median, µs (0 when none).
    pub p50_us: u64,
    /// 99th percentile, µs (0 when none).
    pub p99_us: u64,
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

/// Buckets of a [`Latency`] histogram: four per doubling from 1 µs, up to
/// about 2^32 µs (71 minutes); longer durations land in the last one.
const BUCKETS: usize = 128;

/// A latency histogram (lock-free: one atomic add per record).
#[derive(Debug)]
pub(crate) struct Latency {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Latency {
    fn bucket(us: u64) -> usize {
        if us <= 1 {
            return 0;
        }
        // log2 in quarter steps: the integer log2, then the two bits after
        // the leading one.
        let log = 63 - us.leading_zeros() as usize;
        let frac = if log >= 2 {
            ((us >> (log - 2)) & 3) as usize
        } else {
            ((us << (2 - log)) & 3) as usize
        };
        (log * 4 + frac).min(BUCKETS - 1)
    }

    /// The upper bound of bucket `i`, µs.
    fn upper(i: usize) -> u64 {
        let (log, frac) = (i / 4, (i % 4) as u64);
        let base = 1u64 << log.min(62);
        base + (base * (frac + 1)) / 4
    }

    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::bucket(us)].fetch_add(1, Relaxed);
    }

    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let at = |q: f64| {
            let rank = ((count as f64 * q).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Self::upper(i);
                }
            }
            0
        };
        if count == 0 {
            return LatencySummary::default();
        }
        LatencySummary {
            count,
            p50_us: at(0.50),
            p99_us: at(0.99),
        }
    }
}

/// Which latency an operation records.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Hit,
    Miss,
    Write,
}

/// The counters and latencies of one manager, or of one store.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub counters: Counters,
    pub hit: Latency,
    pub miss: Latency,
    pub write: Latency,
}

impl Figures {
    pub fn latency(&self, op: Op) -> &Latency {
        match op {
            Op::Hit => &self.hit,
            Op::Miss => &self.miss,
            Op::Write => &self.write,
        }
    }

    /// The counters and latencies as [`CacheStats`] (the manager adds what
    /// only it knows).
    pub fn snapshot(&self, pending_invalidations: u64, breaker_open: bool) -> CacheStats {
        let mut stats = self.counters.snapshot(pending_invalidations, breaker_open);
        stats.hit_latency = self.hit.summary();
        stats.miss_latency = self.miss.summary();
        stats.write_latency = self.write.summary();
        stats
    }
}

tokio::task_local! {
    /// The figures of the store whose operation the current task runs, so
    /// the manager's counting sites count for it too.
    pub(crate) static STORE: Option<Arc<Figures>>;
}

/// The current task's store figures, if any.
pub(crate) fn current_store() -> Option<Arc<Figures>> {
    STORE.try_with(|s| s.clone()).ok().flatten()
}

/// Runs `f` on the current task's store figures, if any (no clone).
#[inline]
pub(crate) fn with_store(f: impl FnOnce(&Figures)) {
    let _ = STORE.try_with(|s| {
        if let Some(store) = s {
            f(store);
        }
    });
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
    pub foreign_entries: AtomicU64,
    pub version_registrations: AtomicU64,
}

impl Counters {
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
            near_hits: 0,
            near_misses: 0,
            near_invalidations: 0,
            near_flushes: 0,
            early_refreshes: self.early_refreshes.load(Relaxed),
            foreign_entries: self.foreign_entries.load(Relaxed),
            version_registrations: self.version_registrations.load(Relaxed),
            hit_latency: LatencySummary::default(),
            miss_latency: LatencySummary::default(),
            write_latency: LatencySummary::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_close_upper_bounds() {
        let l = Latency::default();
        assert_eq!(l.summary(), LatencySummary::default());
        for us in 1..=100u64 {
            l.record(Duration::from_micros(us * 10));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((500..=600).contains(&s.p50_us), "{s:?}");
        assert!((990..=1200).contains(&s.p99_us), "{s:?}");
        for us in [0, 1, 2, 3, 5, 7, 1000, 123_456, u64::MAX / 2] {
            let i = Latency::bucket(us);
            assert!(Latency::upper(i) >= us || i == BUCKETS - 1, "{us} -> {i}");
        }
    }
}
