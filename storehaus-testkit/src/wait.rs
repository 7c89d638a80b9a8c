//! Waits with a deadline: a test that waits for something that never comes
//! fails, naming what it waited for, instead of hanging.

use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use storehaus::CacheManager;

use crate::raw_get;

/// Polls `check` until it returns true, for at most 5 s.
///
/// ```no_run
/// # async fn example(manager: &storehaus::CacheManager) {
/// storehaus_testkit::eventually("the breaker opened", || async {
///     storehaus_testkit::stats(manager).await.breaker_open
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(5), check).await
}

/// As [`eventually`], for a condition a loaded machine may take up to
/// `within` to reach (background work that walks the key space).
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// How long a test waits for a paused fill to be reached before it fails.
pub const PAUSE_PATIENCE: Duration = Duration::from_secs(10);

/// Waits until a reader has reached `pause` (it read the database and is
/// about to fill). Fails the test after [`PAUSE_PATIENCE`] instead of
/// hanging when no reader ever gets there.
pub async fn reached(pause: &storehaus_runtime::test_hooks::FillPause) {
    if tokio::time::timeout(PAUSE_PATIENCE, pause.reached()).await.is_err() {
        panic!(
            "no reader reached the fill pause within {PAUSE_PATIENCE:?}: the read did not miss, \
             did not take the lease, or never got to its fill"
        );
    }
}

/// Waits until `key` holds a value (not a fill lease), for at most 5 s, and
/// returns its bytes.
pub async fn wait_for_value(conn: &mut impl ConnectionLike, key: &str) -> Vec<u8> {
    let start = Instant::now();
    loop {
        if let Some(v) = raw_get(conn, key).await {
            if v.first() != Some(&0xC1) {
                return v;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no value appeared under {key}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `manager` has landed at least `n` fills (on any backend;
/// reads no key, so it moves no hit or miss counter).
pub async fn wait_for_fills(manager: &CacheManager, n: u64) {
    eventually(&format!("{n} fills"), || async {
        manager.get_stats().await.map(|s| s.fills >= n).unwrap_or(false)
    })
    .await;
}
