//! The fault suite's cache configuration and timing, shared by
//! `tests/test_faults.rs` (which asserts what every fault does) and
//! `benches/faults.rs` (the fault matrix: what every fault costs), so that
//! the matrix measures the configuration the tests hold to their bounds.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use storehaus::{CacheManager, CacheParams, GenericStore};

use crate::records::items::Item;
use crate::{manager_on, raw_redis, wait_for_value, Db};

/// The cache budget (`with_timeout`) of every fault manager, in ms.
pub const TIMEOUT_MS: u64 = 200;

/// A manager on `url` with the suite's budget ([`TIMEOUT_MS`]), 2 retries
/// 5 ms apart, 4 connections and the given breaker settings.
pub fn fault_manager(url: &str, breaker_threshold: u32, cooldown_ms: u64) -> Arc<CacheManager> {
    manager_on(url, |c| {
        c.with_timeout(TIMEOUT_MS)
            .with_retry_attempts(2)
            .with_retry_delay(5)
            .with_pool_size(4)
            .with_circuit_breaker(breaker_threshold, cooldown_ms)
    })
}

/// A store of [`Item`]s on `db`, cached by `manager`.
pub fn store_on(db: &Db, manager: &Arc<CacheManager>) -> GenericStore<Item> {
    GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())))
}

/// Reads every id once and waits until each is cached (`url` is the
/// manager's Redis).
pub async fn warm(store: &GenericStore<Item>, url: &str, ids: impl IntoIterator<Item = i64>) {
    let mut redis = raw_redis(url).await;
    for id in ids {
        store.get_by_id(&id).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&id)).await;
    }
}

/// Runs `f`, returning its output and how long it took.
pub async fn timed<F: Future>(f: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}
