//! The two sources of external invalidations side by side, in one run on
//! one private PostgreSQL cluster with `wal_level = logical` (testkit
//! `PgServer`, `fsync = off` as every private cluster): what a store's
//! `update` costs with no watch, with the trigger outbox
//! (`watch_external_writes`) and with the write-ahead log (`watch_wal`);
//! the delay from an external commit to the first fresh read; how fast a
//! 50 000-row UPDATE is drained.
//!
//! `bash scripts/bench.sh --wal` (release build, feature `wal`, about two
//! minutes); the full `bash scripts/bench.sh` run appends its section to
//! BENCHMARKS.md. Under `cargo test --all-targets --features wal` this
//! binary only prints how to run it. Nothing here asserts on time.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus_testkit::bench::{median, percentile};
use storehaus_testkit::{manager, redis_url, PgServer};

macro_rules! record {
    ($name:ident, $table:literal) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
        #[cache(table = $table, prefix = $table)]
        pub struct $name {
            pub id: i64,
            pub n: i64,
        }
    };
}
record!(Plain, "plain");
record!(Triggered, "triggered");
record!(Logged, "logged");

const LAG_WRITES: usize = 1_000;
const ROUNDS: usize = 15;
const UPDATES_PER_ROUND: usize = 200;
const BULK: i64 = 50_000;

fn main() {
    storehaus_testkit::bench::section_main("wal", "--wal", run);
}

struct Stores {
    plain: GenericStore<Plain>,
    triggered: GenericStore<Triggered>,
    logged: GenericStore<Logged>,
}

async fn run() -> String {
    let server = PgServer::start_logical();
    eprintln!(
        "bench: wal against a private logical cluster on port {} and {}",
        server.port,
        redis_url()
    );
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&server.url())
        .await
        .expect("connect");
    for table in ["plain", "triggered", "logged"] {
        sqlx::query(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, n bigint NOT NULL)"
        ))
        .execute(&pool)
        .await
        .expect("create");
        sqlx::query(&format!(
            "INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {BULK}) g"
        ))
        .execute(&pool)
        .await
        .expect("fill");
    }
    let manager = manager();
    let params = || Some(CacheParams::new(manager.clone()));
    let stores = Stores {
        plain: GenericStore::<Plain>::new(pool.clone(), None, params()),
        triggered: GenericStore::<Triggered>::new(pool.clone(), None, params()),
        logged: GenericStore::<Logged>::new(pool.clone(), None, params()),
    };
    stores
        .triggered
        .watch_external_writes()
        .await
        .expect("watch_external_writes");
    stores.logged.watch_wal().await.expect("watch_wal");
    let other = PgPoolOptions::new()
        .max_connections(2)
        .connect(&server.url())
        .await
        .expect("connect");

    let [plain, triggers, wal] = update_cost(&stores).await;
    let trigger_lag = lag(&other, "triggered", |id| {
        let s = &stores.triggered;
        async move { s.get_by_id(&id).await.expect("read").map(|r| r.n) }
    })
    .await;
    let wal_lag = lag(&other, "logged", |id| {
        let s = &stores.logged;
        async move { s.get_by_id(&id).await.expect("read").map(|r| r.n) }
    })
    .await;
    let trigger_drain = drain(&manager, &other, "triggered").await;
    let wal_drain = drain(&manager, &other, "logged").await;

    let mut out = String::from(
        "## Trigger outbox vs write-ahead log\n\n\
         Written by `bash scripts/bench.sh` (or alone: `--wal`): one run, one private PostgreSQL cluster \
         (`wal_level = logical`, `fsync = off`) and Redis on loopback; the two sources watch two tables of the same shape.\n\n\
         | scenario | no watch | trigger outbox | write-ahead log |\n|---|---|---|---|\n",
    );
    let ratio = |side: &[f64]| median(&side.iter().zip(&plain).map(|(a, b)| a / b).collect::<Vec<_>>());
    let _ = writeln!(
        out,
        "| store `update`, median of {ROUNDS} interleaved rounds × {UPDATES_PER_ROUND} | {:.1} µs | {:.1} µs ({:.2}×) | {:.1} µs ({:.2}×) |",
        median(&plain),
        median(&triggers),
        ratio(&triggers),
        median(&wal),
        ratio(&wal)
    );
    let _ = writeln!(
        out,
        "| external UPDATE → first fresh `get_by_id`, {LAG_WRITES} writes | — | p50 {:.2} ms, p99 {:.2} ms | p50 {:.2} ms, p99 {:.2} ms |",
        percentile(&trigger_lag, 0.50),
        percentile(&trigger_lag, 0.99),
        percentile(&wal_lag, 0.50),
        percentile(&wal_lag, 0.99)
    );
    let _ = writeln!(
        out,
        "| one UPDATE of {BULK} rows → all delivered | — | {:.2} s, {:.0} rows/s | {:.2} s, {:.0} rows/s |",
        trigger_drain.as_secs_f64(),
        BULK as f64 / trigger_drain.as_secs_f64(),
        wal_drain.as_secs_f64(),
        BULK as f64 / wal_drain.as_secs_f64()
    );
    let _ = manager.delete_pattern("*").await;
    drop(stores);
    drop(manager);
    other.close().await;
    pool.close().await;
    out
}

/// Microseconds per store update (no watch, trigger outbox, WAL), per round.
async fn update_cost(stores: &Stores) -> [Vec<f64>; 3] {
    let mut sides: [Vec<f64>; 3] = Default::default();
    for round in 0..=ROUNDS {
        for k in 0..3 {
            let side = (round + k) % 3;
            let start = Instant::now();
            for i in 0..UPDATES_PER_ROUND as i64 {
                let id = i % 1000 + 1;
                let n = round as i64 * 1_000 + i;
                match side {
                    0 => drop(stores.plain.update(&id, Plain { id, n }, None).await.expect("update")),
                    1 => drop(
                        stores
                            .triggered
                            .update(&id, Triggered { id, n }, None)
                            .await
                            .expect("update"),
                    ),
                    _ => drop(stores.logged.update(&id, Logged { id, n }, None).await.expect("update")),
                }
            }
            if round > 0 {
                // Round 0 warms up.
                sides[side].push(start.elapsed().as_secs_f64() * 1e6 / UPDATES_PER_ROUND as f64);
            }
        }
    }
    sides
}

/// Milliseconds from each external commit to the first read that sees it.
async fn lag<F, Fut>(other: &PgPool, table: &str, read: F) -> Vec<f64>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Option<i64>>,
{
    let mut out = Vec::with_capacity(LAG_WRITES);
    for i in 1..=LAG_WRITES as i64 {
        let id = i % 100 + 1;
        let before = 1_000_000 + i;
        // Cached before the write: a stale read is possible until delivery.
        while read(id).await.is_none() {}
        sqlx::query(&format!("UPDATE {table} SET n = $2 WHERE id = $1"))
            .bind(id)
            .bind(before)
            .execute(other)
            .await
            .expect("update");
        let committed = Instant::now();
        while read(id).await != Some(before) {
            assert!(committed.elapsed() < Duration::from_secs(30), "never delivered");
            tokio::task::yield_now().await;
        }
        out.push(committed.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    out
}

/// One statement changes every row of `table`; how long until all of it
/// was delivered.
async fn drain(manager: &Arc<CacheManager>, other: &PgPool, table: &str) -> Duration {
    let before = manager.get_stats().await.expect("stats").outbox_delivered;
    sqlx::query(&format!("UPDATE {table} SET n = n + 1"))
        .execute(other)
        .await
        .expect("bulk update");
    let start = Instant::now();
    while manager.get_stats().await.expect("stats").outbox_delivered < before + BULK as u64 {
        assert!(start.elapsed() < Duration::from_secs(300), "never drained");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}
