//! What invalidation from the database costs (`watch_external_writes`):
//! the delay from an external commit to the first fresh read, the price of
//! the outbox triggers on a store's update, and how fast a worker drains a
//! backlog.
//!
//! `bash scripts/bench.sh --outbox` (release build, about a minute); the full
//! `bash scripts/bench.sh` run appends its section to BENCHMARKS.md. Under
//! `cargo test --all-targets` this binary only prints how to run it.
//! Nothing here asserts on time.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus_testkit::{database_url, manager, redis_url, Db};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "watched", prefix = "watched")]
pub struct Watched {
    pub id: i64,
    pub n: i64,
}

/// The same shape on a table without triggers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "plain", prefix = "plain")]
pub struct Plain {
    pub id: i64,
    pub n: i64,
}

const LAG_WRITES: usize = 1_000;
const ROUNDS: usize = 15;
const UPDATES_PER_ROUND: usize = 200;
const BACKLOG: i64 = 50_000;

fn main() {
    storehaus_testkit::bench::section_main("outbox", "--outbox", run);
}

async fn run() -> String {
    eprintln!("bench: outbox against {} and {}", database_url(), redis_url());
    let db = Db::with_max_connections(10).await;
    db.exec("CREATE TABLE watched (id bigint PRIMARY KEY, n bigint NOT NULL)")
        .await;
    db.exec("CREATE TABLE plain (id bigint PRIMARY KEY, n bigint NOT NULL)")
        .await;
    db.exec(&format!(
        "INSERT INTO watched SELECT g, 0 FROM generate_series(1, {BACKLOG}) g"
    ))
    .await;
    db.exec("INSERT INTO plain SELECT g, 0 FROM generate_series(1, 1000) g")
        .await;
    let manager = manager();
    let watched = GenericStore::<Watched>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let plain = GenericStore::<Plain>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    watched.watch_external_writes().await.expect("watch");
    let other = other_service(&db).await;

    let lag = lag(&watched, &other).await;
    let (with, without) = update_cost(&watched, &plain).await;
    let (rows, drain) = drain_rate(&manager, &other).await;

    let mut out = String::from(
        "## Invalidation from the database\n\n\
         Written by `bash scripts/bench.sh` (or alone: `--outbox`); PostgreSQL and Redis on loopback.\n\n\
         | scenario | figure |\n|---|---|\n",
    );
    let _ = writeln!(
        out,
        "| external UPDATE on another pool → first fresh `get_by_id`, {LAG_WRITES} writes (NOTIFY) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        pct(&lag, 0.50),
        pct(&lag, 0.99),
        pct(&lag, 1.0)
    );
    let ratio = median(&with.iter().zip(&without).map(|(a, b)| a / b).collect::<Vec<_>>());
    let _ = writeln!(
        out,
        "| `update` on a watched table (trigger + outbox) vs the same `update` without, {ROUNDS} interleaved rounds × {UPDATES_PER_ROUND} | {:.1} µs vs {:.1} µs: {ratio:.2}× |",
        median(&with),
        median(&without)
    );
    let _ = writeln!(
        out,
        "| worker drain rate: one UPDATE of {rows} rows (one statement) → all delivered | {:.2} s, {:.0} rows/s |",
        drain.as_secs_f64(),
        rows as f64 / drain.as_secs_f64()
    );
    let _ = manager.delete_pattern("*").await;
    drop((watched, plain));
    other.close().await;
    db.cleanup().await;
    out
}

async fn other_service(db: &Db) -> PgPool {
    let opts: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts.options([("search_path", db.schema.as_str())]))
        .await
        .expect("connect")
}

/// Milliseconds from each external commit to the first read that sees it.
async fn lag(store: &GenericStore<Watched>, other: &PgPool) -> Vec<f64> {
    let mut out = Vec::with_capacity(LAG_WRITES);
    for i in 1..=LAG_WRITES as i64 {
        let id = i % 100 + 1;
        // Cached before the write: a stale read is possible until delivery.
        while store.get_by_id(&id).await.expect("read").is_none() {}
        sqlx::query("UPDATE watched SET n = $2 WHERE id = $1")
            .bind(id)
            .bind(i)
            .execute(other)
            .await
            .expect("update");
        let committed = Instant::now();
        loop {
            if store.get_by_id(&id).await.expect("read").map(|w| w.n) == Some(i) {
                break;
            }
            assert!(committed.elapsed() < Duration::from_secs(30), "never delivered");
            tokio::task::yield_now().await;
        }
        out.push(committed.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Microseconds per store update with and without the triggers, per round.
async fn update_cost(watched: &GenericStore<Watched>, plain: &GenericStore<Plain>) -> (Vec<f64>, Vec<f64>) {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let mut pair = [0.0; 2];
        for side in [round % 2, 1 - round % 2] {
            let start = Instant::now();
            for i in 0..UPDATES_PER_ROUND as i64 {
                let id = i % 1000 + 1;
                let n = round as i64 * 1_000 + i;
                if side == 0 {
                    watched.update(&id, Watched { id, n }, None).await.expect("update");
                } else {
                    plain.update(&id, Plain { id, n }, None).await.expect("update");
                }
            }
            pair[side] = start.elapsed().as_secs_f64() * 1e6 / UPDATES_PER_ROUND as f64;
        }
        if round > 0 {
            // Round 0 warms up.
            with.push(pair[0]);
            without.push(pair[1]);
        }
    }
    (with, without)
}

/// One statement changes every row; how long until the worker delivered all.
async fn drain_rate(manager: &Arc<CacheManager>, other: &PgPool) -> (i64, Duration) {
    let before = manager.get_stats().await.expect("stats").outbox_delivered;
    sqlx::query("UPDATE watched SET n = n + 1")
        .execute(other)
        .await
        .expect("bulk update");
    let start = Instant::now();
    while manager.get_stats().await.expect("stats").outbox_delivered < before + BACKLOG as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the backlog was never drained"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (BACKLOG, start.elapsed())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
