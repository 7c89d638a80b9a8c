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

use std::sync::atomic::{AtomicU64, Ordering};

/// The epoch of the server's data, shared by a manager and its backend.
#[derive(Debug, Default)]
pub(crate) struct Contact {
    epoch: AtomicU64,
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
}
