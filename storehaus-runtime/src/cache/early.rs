//! Probabilistic early refresh (XFetch: Vattani, Chierichetti and Lowenstein,
//! "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015), for
//! `CacheParams::with_early_refresh(beta)`.
//!
//! A hit reads the entry's remaining TTL in the same round trip (`GET` +
//! `PTTL`, pipelined) and refreshes the entry from the database when
//! `δ·β·(−ln u) ≥ remaining`, `u` uniform in (0, 1], δ the time a load of
//! this store takes: the closer the expiry and the slower the load, the
//! likelier. One reader refreshes (through the same guarded fill, which
//! only replaces the very bytes it read, so a write that deletes the key
//! meanwhile wins), while the others keep being served the cached value.
//!
//! δ is measured in each process, per store (an exponentially weighted
//! mean of its loads), not stored in the entry: the value format stays
//! what every reader expects.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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
