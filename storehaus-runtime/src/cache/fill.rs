//! The one background fill: what a read loaded from the database is written
//! to the cache in a task of its own, guarded so that it can never land
//! after a write that followed the load.
//!
//! Two guards, one routine:
//! - a record (`get_by_id`, `get_many`) is written only where its key still
//!   holds the reader's fill lease (every write deletes the key, and the
//!   lease with it);
//! - a query result is written only while the store's query generation still
//!   holds the value read before the query (every write bumps it).
//!
//! `fills` counts values written, `fills_rejected` values dropped by their
//! guard; a fill that cannot reach the cache is neither (the breaker and the
//! error counters see it).

use std::sync::Arc;

use tracing::Instrument;

use serde::Serialize;

use crate::cache::codec;
use crate::cache::flight::{Lead, Lease};
use crate::cache::stats::Counters;
use crate::cache::CacheManager;

/// What a fill is guarded by.
pub(crate) enum Guard {
    /// Every key must still hold this lease.
    Lease(Lease),
    /// The counter must still hold `expected` (one key per fill).
    Generation { counter: String, expected: u64 },
}

/// Values to write, one per key, and their guard.
pub(crate) struct Fill {
    pub keys: Vec<String>,
    pub values: Vec<Vec<u8>>,
    pub guard: Guard,
    pub ttl_secs: u64,
}

impl CacheManager {
    /// Encodes a value for a fill (`None`: a cached "no such row"). A value
    /// serde cannot encode is counted in `encode_errors` and logged, and is
    /// not cached; the reader has its answer regardless.
    pub(crate) fn encode_fill<V: Serialize + ?Sized>(&self, fingerprint: u64, value: Option<&V>) -> Option<Vec<u8>> {
        match codec::encode(fingerprint, value) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                Counters::bump(&self.counters.encode_errors);
                self.warn("encode", &e);
                None
            }
        }
    }

    /// Writes `fill` in a task of its own, under a budget of its own.
    /// `lead`, when given, is the load's single-flight handle: it is dropped
    /// once the fill has landed, so the load stays joinable until then.
    pub(crate) fn spawn_fill(self: &Arc<Self>, fill: Fill, lead: Option<Lead>) {
        if fill.keys.is_empty() {
            return;
        }
        let mgr = self.clone();
        tokio::spawn(
            async move {
                #[cfg(feature = "test-hooks")]
                for key in &fill.keys {
                    mgr.hooks.before_fill(key).await;
                }
                let deadline = mgr.deadline();
                let ttl_ms = fill.ttl_secs.saturating_mul(1000);
                let written = match &fill.guard {
                    Guard::Lease(lease) => {
                        let keys: Vec<&str> = fill.keys.iter().map(String::as_str).collect();
                        let values: Vec<&[u8]> = fill.values.iter().map(Vec::as_slice).collect();
                        mgr.guarded(deadline, "fill", || mgr.backend.fill(&keys, &values, lease, ttl_ms))
                            .await
                    }
                    Guard::Generation { counter, expected } => mgr
                        .guarded(deadline, "query_fill", || {
                            mgr.backend
                                .fill_if_counter(&fill.keys[0], &fill.values[0], ttl_ms, counter, *expected)
                        })
                        .await
                        .map(u64::from),
                };
                if let Ok(filled) = written {
                    let rejected = fill.keys.len() as u64 - filled;
                    Counters::add(&mgr.counters.fills, filled);
                    Counters::add(&mgr.counters.fills_rejected, rejected);
                    mgr.metrics.fills(filled, rejected);
                    if rejected > 0 {
                        tracing::debug!(target: "storehaus",
                            rejected,
                            "fill rejected: a write invalidated the key while the database was read"
                        );
                    }
                }
                drop(lead);
            }
            .instrument(tracing::Span::current()),
        );
    }
}
