//! Replay of a million pending invalidations: how long until the cache is
//! used again after an outage, and what remembering them costs in memory.
//!
//! `bash scripts/bench.sh --replay` (release build, about a minute). Under
//! `cargo test --all-targets` this binary only prints how to run it.
//!
//! Staging, on a private `redis-server` on a free loopback port: the store's
//! key space holds 1 000 000 cached entries (`DEBUG POPULATE`); writes are
//! refused by `CLIENT PAUSE .. WRITE` (reads still answered), and one
//! `delete_many` of the 1 000 000 ids commits, so its invalidation times out
//! and is remembered. Then the pause ends and the clock runs until nothing is
//! pending. Two runs: with the bound raised above 1 000 000 (every key
//! remembered and replayed in batches of 1 000), and with the default bound
//! of 100 000 (the store's whole key space is remembered instead and cleared
//! by a SCAN + UNLINK walk).
//!
//! Nothing here asserts on time; the program prints a Markdown section, and
//! appends it to the file given with `--append <path>` (the full
//! `bash scripts/bench.sh` run appends it to `BENCHMARKS.md`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus_testkit::{raw_redis_without_timeout, Db, RedisServer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "pending_rows", prefix = "rows")]
pub struct PendingRow {
    pub id: i64,
    pub version: i64,
}

const KEYS: i64 = 1_000_000;

fn main() {
    storehaus_testkit::bench::section_main("replay", "--replay", run);
}

async fn run() -> String {
    let db = Db::with_max_connections(4).await;
    db.exec("CREATE TABLE pending_rows (id bigint PRIMARY KEY, version bigint NOT NULL)")
        .await;

    let mut out = String::from(
        "## Replay after an outage\n\n\
         Written by `bash scripts/bench.sh` (or alone: `--replay`). A private redis-server holds 1 000 000 \
         cached entries of one store; `CLIENT PAUSE .. WRITE` refuses writes while one `delete_many` of the \
         1 000 000 ids commits, so its invalidation is remembered; then the pause ends and the clock runs \
         until nothing is pending. Memory is this process's resident set after `malloc_trim`, before and \
         while the work is pending. Keys left: the store's query generation counter.\n\n\
         | pending work | bound | remembered as | memory kept while pending | replay after the outage | keys left |\n\
         |---|---:|---|---:|---:|---:|\n",
    );
    for (bound, what) in [
        (1_100_000, "every key, in batches of 1 000"),
        (
            CacheConfig::DEFAULT_MAX_PENDING_INVALIDATIONS,
            "the store's key space (SCAN + UNLINK walk)",
        ),
    ] {
        let r = outage(&db.pool, bound).await;
        let _ = writeln!(
            out,
            "| {KEYS} keys of one store | {bound} | {what}: {} entries | {:.1} MiB | {:.2} s | {} |",
            r.pending,
            r.rss_added as f64 / (1024.0 * 1024.0),
            r.replay.as_secs_f64(),
            r.left
        );
    }
    db.cleanup().await;
    out
}

struct Outcome {
    pending: u64,
    rss_added: u64,
    replay: Duration,
    left: u64,
}

async fn outage(pool: &PgPool, bound: usize) -> Outcome {
    let server = RedisServer::start_with(&["--enable-debug-command", "local"]).await;
    let url = server.url();
    let mut raw = raw_redis_without_timeout(&url).await;
    let global = format!("r{:08x}", rand::random::<u32>());
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(KEYS)
        .arg(format!("{global}:rows"))
        .query_async(&mut raw)
        .await
        .expect("DEBUG POPULATE");
    let manager = Arc::new(
        CacheManager::new(
            CacheConfig::new(url, 3600, global)
                .with_timeout(500)
                .with_max_pending_invalidations(bound),
        )
        .expect("config"),
    );
    let store = GenericStore::<PendingRow>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())));
    manager.health_check().await.expect("redis answers");

    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600_000)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT PAUSE");
    let rss_before = rss();
    let ids: Vec<i64> = (0..KEYS).collect();
    store.delete_many(&ids).await.expect("delete_many");
    drop(ids);
    let pending = manager.get_stats().await.expect("stats").pending_invalidations;
    let rss_added = rss().saturating_sub(rss_before);

    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT UNPAUSE");
    let start = Instant::now();
    while manager.get_stats().await.expect("stats").pending_invalidations > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "replay did not finish in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let replay = start.elapsed();
    let left: u64 = redis::cmd("DBSIZE").query_async(&mut raw).await.expect("DBSIZE");
    Outcome {
        pending,
        rss_added,
        replay,
        left,
    }
}

/// This process's resident set size in bytes, after handing freed heap
/// memory back to the system (so that what a run built and dropped does not
/// count as kept).
fn rss() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only releases free heap pages.
        unsafe {
            malloc_trim(0);
        }
    }
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
