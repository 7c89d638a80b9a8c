//! What the backends tell the cache manager about the server behind them:
//! an epoch that moves whenever the data a cached value came from may have
//! been replaced by an older copy.
//!
//! It moves when a node's `run_id` changes (a restart, possibly from an
//! older RDB/AOF), when Sentinel names another primary, and, on a cluster,
//! when a command meets a connection-level failure, a redirection (`MOVED`,
//! `ASK`) or a cluster that is down (a replica may be promoted next). The
//! manager then replays its log of recent invalidations before it serves
//! cached values again (see `cache::recent`). Bumping is cheap and
//! idempotent in effect: a spurious bump costs one replay of the log.
//!
//! A backend also tells when it found a deployment able to serve again (a
//! cluster's slot map it can trust after a failover): the manager's
//! circuit breaker then probes at once instead of after its cool-down.

use std::sync::atomic::{AtomicU64, Ordering};

/// The epoch of the server's data, shared by a manager and its backend.
#[derive(Debug, Default)]
pub(crate) struct Contact {
    epoch: AtomicU64,
    heals: AtomicU64,
    /// When the last heal was recorded.
    healed_at: std::sync::Mutex<Option<std::time::Instant>>,
    healing: tokio::sync::Notify,
}

impl Contact {
    /// The current epoch. One atomic load.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records that values the server holds may be older than what this
    /// process last wrote (the Redis backends do).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn bump(&self, why: &'static str) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::debug!(target: "storehaus", epoch, why, "the cache's primary may have changed");
    }

    /// How many times the backend found the deployment able to serve
    /// again. One atomic load.
    #[inline]
    pub fn heals(&self) -> u64 {
        self.heals.load(Ordering::Acquire)
    }

    /// Records that the deployment can serve again (after a failover).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only Redis backends fail over
    pub fn healed(&self) {
        *self.healed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        self.heals.fetch_add(1, Ordering::AcqRel);
        self.healing.notify_waiters();
    }

    /// How long ago the last heal was recorded (`Duration::MAX`: never).
    pub fn heal_age(&self) -> std::time::Duration {
        self.healed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(std::time::Duration::MAX, |at| at.elapsed())
    }

    /// Waits for the next [`healed`](Self::healed).
    pub async fn next_heal(&self) {
        self.healing.notified().await;
    }
}
