//! Test hooks (cargo feature `test-hooks`, for tests and benchmarks only):
//! pause points inside the read path, so tests can hold a reader between its
//! database read and its cache fill and prove the fill guard works. Without
//! the feature they are compiled out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// What telemetry adds to a read, timed over `n` reads.
pub use crate::cache::telemetry::time_reads;

/// The Lua source of the guarded fill (for benchmarks that rebuild it by hand).
#[cfg(feature = "redis")]
pub use crate::backend::redis::FILL_SCRIPT;

/// The key a logical key (as `cache_key` and the documented layout name
/// it) is stored under on a Redis Cluster: query results, generation
/// counters and tag sets carry a hash tag there (see the README, "Redis
/// Cluster"); record keys are unchanged.
#[cfg(feature = "cluster")]
pub fn cluster_key(key: &str) -> String {
    crate::backend::cluster::layout::physical(key).into_owned()
}

/// A fill held at the pause point: the test waits for [`reached`](Self::reached),
/// does its writes, then calls [`release`](Self::release).
#[derive(Debug, Clone)]
pub struct FillPause {
    key: String,
    reached: Arc<Notify>,
    release: Arc<Notify>,
}

impl FillPause {
    /// Waits until a reader of the paused key has read the database and is
    /// about to fill.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held fill go on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

/// Pause points in the read path; see [`CacheManager::test_hooks`](crate::CacheManager::test_hooks).
#[derive(Debug, Default)]
pub struct TestHooks {
    active: AtomicBool,
    fill_delay_us: AtomicU64,
    near_delay_us: AtomicU64,
    pause: Mutex<Option<FillPause>>,
    near_pause: Mutex<Option<FillPause>>,
    wal_pause: Mutex<Option<FillPause>>,
}

impl TestHooks {
    /// Delays every fill by `delay` (a slow reader), or stops delaying with zero.
    pub fn set_fill_delay(&self, delay: Duration) {
        self.fill_delay_us.store(delay.as_micros() as u64, Ordering::Relaxed);
        self.refresh();
    }

    /// Delays every near-cache insert by a random time up to `max` (a slow
    /// reader between Redis's reply and the insert: the race the near
    /// cache's tickets close happens often), or stops with zero.
    pub fn set_near_insert_delay(&self, max: Duration) {
        self.near_delay_us.store(max.as_micros() as u64, Ordering::Relaxed);
        self.refresh();
    }

    /// Holds the next fill of `key` until the returned pause is released.
    pub fn pause_fill(&self, key: &str) -> FillPause {
        self.arm(&self.pause, key)
    }

    /// Holds the next near-cache insert of `key` (a Redis hit about to be
    /// kept in the L1) until the returned pause is released.
    pub fn pause_near_insert(&self, key: &str) -> FillPause {
        self.arm(&self.near_pause, key)
    }

    /// Holds the write-ahead log reader (feature `wal`) after its next
    /// delivery reached the cache and before it confirms the slot's
    /// position, until the returned pause is released.
    pub fn pause_wal_confirm(&self) -> FillPause {
        self.arm(&self.wal_pause, "wal")
    }

    /// Called by the write-ahead log reader between a delivery and the
    /// confirmation of its position.
    #[cfg_attr(not(feature = "wal"), allow(dead_code))]
    pub(crate) async fn before_wal_confirm(&self) {
        if self.active.load(Ordering::Acquire) {
            self.hold(&self.wal_pause, "wal").await;
        }
    }

    fn arm(&self, slot: &Mutex<Option<FillPause>>, key: &str) -> FillPause {
        let pause = FillPause {
            key: key.to_string(),
            reached: Arc::new(Notify::new()),
            release: Arc::new(Notify::new()),
        };
        if let Ok(mut p) = slot.lock() {
            *p = Some(pause.clone());
        }
        self.refresh();
        pause
    }

    fn refresh(&self) {
        let armed = |slot: &Mutex<Option<FillPause>>| slot.lock().map(|p| p.is_some()).unwrap_or(false);
        let delayed = self.fill_delay_us.load(Ordering::Relaxed) > 0 || self.near_delay_us.load(Ordering::Relaxed) > 0;
        self.active.store(
            armed(&self.pause) || armed(&self.near_pause) || armed(&self.wal_pause) || delayed,
            Ordering::Release,
        );
    }

    /// Called by the read path between a Redis hit and its near-cache insert.
    pub(crate) async fn before_near_insert(&self, key: &str) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let max = self.near_delay_us.load(Ordering::Relaxed);
        if max > 0 {
            tokio::time::sleep(Duration::from_micros(rand::random_range(0..=max))).await;
        }
        self.hold(&self.near_pause, key).await;
    }

    async fn hold(&self, slot: &Mutex<Option<FillPause>>, key: &str) {
        let pause = match slot.lock() {
            Ok(mut p) if p.as_ref().is_some_and(|p| p.key == key) => p.take(),
            _ => None,
        };
        if let Some(pause) = pause {
            self.refresh();
            pause.reached.notify_one();
            pause.release.notified().await;
        }
    }

    /// Called by the read path between the database read and the fill.
    pub(crate) async fn before_fill(&self, key: &str) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let delay = self.fill_delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        self.hold(&self.pause, key).await;
    }
}
