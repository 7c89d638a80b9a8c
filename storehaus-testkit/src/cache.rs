//! Cache managers with a random global prefix per test.

use std::sync::Arc;

use storehaus::{CacheConfig, CacheManager, CacheStats};

use crate::random_name;

/// `REDIS_URL`, or the local default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A cache manager on `url` with a random global prefix (`t_...`) and a
/// default TTL of 3600 s, changed by `tweak`.
///
/// ```no_run
/// let manager = storehaus_testkit::manager_on("redis://127.0.0.1:6380", |c| c.with_timeout(200));
/// ```
pub fn manager_on(url: &str, tweak: impl FnOnce(CacheConfig) -> CacheConfig) -> Arc<CacheManager> {
    let config = tweak(CacheConfig::new(url, 3600, random_name("t")));
    Arc::new(CacheManager::new(config).expect("valid cache config"))
}

/// A cache manager on [`redis_url`] with a random global prefix.
pub fn manager() -> Arc<CacheManager> {
    manager_on(&redis_url(), |c| c)
}

/// A cache manager on the in-process backend (`memory://`) with a random
/// global prefix. Every manager has its own cache.
pub fn memory_manager() -> Arc<CacheManager> {
    manager_on("memory://", |c| c)
}

/// Removes every key of a manager's global prefix.
pub async fn clear_prefix(manager: &CacheManager) {
    let _ = manager.delete_pattern("*").await;
}

/// The manager's counters.
pub async fn stats(manager: &CacheManager) -> CacheStats {
    manager.get_stats().await.unwrap()
}
