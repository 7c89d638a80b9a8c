//! Probabilistic early refresh (XFetch: Vattani, Chierichetti and Lowenstein,
//! "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015), for
//! `CacheParams::with_early_refresh(beta)`.
//!
//! A hit reads the entry's remaining TTL in the same round trip (`GET` +
//! `PTTL`, pipelined) and refreshes the entry from the database when
//! `δ·β·(−ln u) ≥ remaining`, `u` uniform in (0, 1], δ the time a load of
//! this store takes: the closer the expiry and the slower the load, the
//! likelier. One reader refreshes, while the others keep being served the
//! cached value.
//!
//! The refresh replaces the entry only if the key still holds the very
//! bytes it read, and those bytes name one fill: every value is written
//! with a random fill token in its envelope (`codec`), so a key that a
//! write deleted and another reader filled again with the same row holds
//! other bytes (no ABA: W1 X→Y, the refresh loads Y, W2 Y→X and a reader
//! fills X again; the refresh then finds another fill's X and drops its Y).
//! A version-1 entry (no token) is served but never refreshed in place.
//!
//! δ is measured in each process, per store (an exponentially weighted
//! mean of its loads), not stored in the entry.
//!
//! A refresh marks its key in the manager's `refreshing` set while it
//! loads, so that one reader of the process refreshes at a time; the mark
//! is removed when the refresh ends or its reader is dropped.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cache::fill::{Fill, Guard, Ttls};
use crate::cache::versions::Layout;
use crate::cache::CacheManager;
use crate::error::Result;

/// One store's early-refresh setting and its measured load time.
#[derive(Debug)]
pub(crate) struct Early {
    beta: f64,
    /// δ in µs (0: nothing measured yet, no early refresh).
    delta_us: AtomicU64,
}

impl Early {
    /// `None` unless `beta` is a positive, finite number.
    pub fn new(beta: f64) -> Option<Self> {
        (beta.is_finite() && beta > 0.0).then(|| Early {
            beta,
            delta_us: AtomicU64::new(0),
        })
    }

    /// Adds a load's duration to δ (weight 1/8; the first one sets it).
    pub fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.delta_us.load(Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.delta_us.store(new, Relaxed);
    }

    /// Whether a hit with `pttl_ms` left should refresh now.
    pub fn due(&self, pttl_ms: i64) -> bool {
        self.due_with(pttl_ms, rand::random::<f64>())
    }

    fn due_with(&self, pttl_ms: i64, random: f64) -> bool {
        let delta_ms = self.delta_us.load(Relaxed) as f64 / 1000.0;
        if pttl_ms <= 0 || delta_ms == 0.0 {
            return false;
        }
        // `random` is in [0, 1): 1 − random is in (0, 1], its log finite.
        let gap = delta_ms * self.beta * -(1.0 - random).ln();
        gap >= pttl_ms as f64
    }
}

/// A hit due for an early refresh: unless a refresh of this process is
/// already loading the key, loads the row and replaces the entry with it,
/// only if the entry still holds the very bytes (the very fill) that were
/// read: a write deletes the key, so it wins. On a side key (`side`: the
/// version's layout) the version registers again first, since the new
/// value lives longer. Answers the loaded row; the cached one if the
/// database fails (the caller had a hit).
pub(crate) async fn refresh_early<V, F, Fut>(
    mgr: &Arc<CacheManager>,
    key: String,
    (cached, bytes): (Option<V>, Vec<u8>),
    (fingerprint, side): (u64, Option<&Layout>),
    ttls: Ttls,
    load: F,
) -> Option<V>
where
    V: Serialize + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>>>,
{
    let Some(_mark) = Refreshing::mark(mgr, &key) else {
        return cached;
    };
    if let Some(layout) = side {
        if !mgr.register_layout(layout, mgr.deadline()).await {
            return cached;
        }
    }
    let Ok(value) = load().await else {
        return cached;
    };
    mgr.count(|c| &c.early_refreshes);
    if let Some(fresh) = mgr.encode_fill(fingerprint, value.as_ref()) {
        let fill = Fill {
            keys: vec![key],
            values: vec![fresh],
            guard: Guard::Value(bytes),
            ttl_secs: ttls.of(value.as_ref()),
        };
        mgr.spawn_fill(fill, None);
    }
    value
}

/// A key's mark in the manager's `refreshing` set, removed when dropped:
/// when the refresh ends, and when its reader is dropped mid-load.
struct Refreshing<'a> {
    mgr: &'a CacheManager,
    key: String,
}

impl<'a> Refreshing<'a> {
    /// Marks `key`; `None` when a refresh of this process holds it already.
    fn mark(mgr: &'a CacheManager, key: &str) -> Option<Self> {
        let first = mgr.refreshing.lock().is_ok_and(|mut set| set.insert(key.to_string()));
        first.then(|| Refreshing {
            mgr,
            key: key.to_string(),
        })
    }
}

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.mgr.refreshing.lock() {
            set.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_get_likelier_near_the_expiry() {
        assert!(Early::new(0.0).is_none());
        assert!(Early::new(f64::NAN).is_none());
        let early = Early::new(1.0).unwrap();
        assert!(!early.due_with(10, 0.99), "nothing measured yet");
        early.record(Duration::from_millis(10));
        // u = 1 − 0.5: gap = 10 ms · ln 2 ≈ 6.9 ms.
        assert!(early.due_with(5, 0.5));
        assert!(!early.due_with(10, 0.5));
        assert!(!early.due_with(1000, 0.99), "gap ≈ 46 ms");
        assert!(early.due_with(40, 0.99));
        assert!(!early.due_with(-2, 0.99), "no such key");
        early.record(Duration::from_millis(2));
        assert_eq!(early.delta_us.load(Relaxed), 10_000 - 1_250 + 250);
    }
}
