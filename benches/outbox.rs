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
use storehaus_testkit::bench::{median, percentile};
use storehaus_testkit::{database_url, manager, redis_url, Db};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "watched", prefix = "watched")]
pub struct Watched {
    pub id: i64,
    pub n: i64,
}

/// The same shape on a table with the outbox triggers installed (by
/// migration) but no worker draining them: the triggers' own cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "logged", prefix = "logged")]
pub struct Logged {
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
    db.exec("CREATE TABLE logged (id bigint PRIMARY KEY, n bigint NOT NULL)")
        .await;
    db.exec("INSERT INTO logged SELECT g, 0 FROM generate_series(1, 1000) g")
        .await;
    sqlx::raw_sql(&GenericStore::<Logged>::external_writes_sql())
        .execute(&db.pool)
        .await
        .expect("install the triggers");
    let manager = manager();
    let watched = GenericStore::<Watched>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let plain = GenericStore::<Plain>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let logged = GenericStore::<Logged>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    watched.watch_external_writes().await.expect("watch");
    let other = other_service(&db).await;

    let lag_plain = lag(&watched, &other).await;
    // A transaction open elsewhere on the server (a report, an idle
    // session): the position waits for it, deliveries do not.
    let long = open_transaction(&other).await;
    let lag_long = lag(&watched, &other).await;
    long.rollback().await.expect("rollback");
    // A peer of the deployment that stalled holding its position row.
    let mut peer = other.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM storehaus_outbox_positions WHERE deployment = $1 FOR UPDATE")
        .bind(manager.deployment())
        .execute(&mut *peer)
        .await
        .expect("lock the position row");
    let lag_held = lag(&watched, &other).await;
    peer.rollback().await.expect("rollback");
    let [with, triggers_only, without] = update_cost(&watched, &logged, &plain).await;
    let (rows, drain) = drain_rate(&manager, &other).await;
    let expiry = expiry_effect(&db, &other).await;

    let mut out = String::from(
        "## Invalidation from the database\n\n\
         Written by `bash scripts/bench.sh` (or alone: `--outbox`); PostgreSQL and Redis on loopback.\n\n\
         | scenario | figure |\n|---|---|\n",
    );
    for (what, lag) in [
        ("", &lag_plain),
        (", a transaction open elsewhere on the server", &lag_long),
        (", a stalled peer holding the deployment's position row", &lag_held),
    ] {
        let _ = writeln!(
            out,
            "| external UPDATE on another pool → first fresh `get_by_id`, {LAG_WRITES} writes (NOTIFY){what} | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
            percentile(lag, 0.50),
            percentile(lag, 0.99),
            percentile(lag, 1.0)
        );
    }
    let ratio = |a: &[f64]| median(&a.iter().zip(&without).map(|(a, b)| a / b).collect::<Vec<_>>());
    let _ = writeln!(
        out,
        "| `update` on a watched table (triggers + outbox + its worker delivering each entry) vs the same `update` on a table without triggers, {ROUNDS} interleaved rounds × {UPDATES_PER_ROUND} | {:.1} µs vs {:.1} µs: {:.2}× |",
        median(&with),
        median(&without),
        ratio(&with)
    );
    let _ = writeln!(
        out,
        "| `update` on a table with the triggers but no worker (the triggers' own share), same rounds | {:.1} µs: {:.2}× |",
        median(&triggers_only),
        ratio(&triggers_only)
    );
    let _ = writeln!(
        out,
        "| worker drain rate: one UPDATE of {rows} rows (one statement) → all delivered | {:.2} s, {:.0} rows/s |",
        drain.as_secs_f64(),
        rows as f64 / drain.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| outbox rows while a deployment that went away is registered, {EXPIRY_WRITES} writes; after its expiry ({EXPIRY_MS} ms) | {} rows; {} rows {:.2} s after it stopped |",
        expiry.0, expiry.1, expiry.2.as_secs_f64()
    );
    let _ = manager.delete_pattern("*").await;
    drop((watched, logged, plain));
    other.close().await;
    db.cleanup().await;
    out
}

const EXPIRY_WRITES: i64 = 2_000;
const EXPIRY_MS: u64 = 2_000;

/// A transaction holding an xid, left open.
async fn open_transaction(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *tx)
        .await
        .expect("xid");
    tx
}

/// An in-process deployment watches, goes away, and the log grows behind
/// it until it expires: the rows it held, the rows left once it expired
/// (the live deployment keeps up), and when.
async fn expiry_effect(db: &Db, other: &PgPool) -> (i64, i64, Duration) {
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM storehaus_outbox")
            .fetch_one(other)
            .await
            .expect("count")
    };
    // What earlier scenarios left is pruned first.
    while rows().await > 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = storehaus_testkit::manager_on("memory://", |c| {
        c.with_outbox_poll_interval(100).with_deployment_expiry(EXPIRY_MS)
    });
    GenericStore::<Watched>::new(db.pool.clone(), None, Some(CacheParams::new(gone.clone())))
        .watch_external_writes()
        .await
        .expect("watch");
    drop(gone);
    let stopped = Instant::now();
    sqlx::query(&format!("UPDATE watched SET n = n + 1 WHERE id <= {EXPIRY_WRITES}"))
        .execute(other)
        .await
        .expect("update");
    let held = rows().await;
    loop {
        let now = rows().await;
        if now < EXPIRY_WRITES / 10 || stopped.elapsed() > Duration::from_secs(60) {
            return (held, now, stopped.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn other_service(db: &Db) -> PgPool {
    let opts: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    PgPoolOptions::new()
        .max_connections(4)
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

/// Microseconds per store update on the watched table, the table with
/// triggers only and the plain table, per round (interleaved, the order
/// rotating each round).
async fn update_cost(
    watched: &GenericStore<Watched>,
    logged: &GenericStore<Logged>,
    plain: &GenericStore<Plain>,
) -> [Vec<f64>; 3] {
    let mut out: [Vec<f64>; 3] = Default::default();
    for round in 0..=ROUNDS {
        let mut times = [0.0; 3];
        for k in 0..3 {
            let side = (round + k) % 3;
            let start = Instant::now();
            for i in 0..UPDATES_PER_ROUND as i64 {
                let id = i % 1000 + 1;
                let n = round as i64 * 1_000 + i;
                match side {
                    0 => watched.update(&id, Watched { id, n }, None).await.map(drop),
                    1 => logged.update(&id, Logged { id, n }, None).await.map(drop),
                    _ => plain.update(&id, Plain { id, n }, None).await.map(drop),
                }
                .expect("update");
            }
            times[side] = start.elapsed().as_secs_f64() * 1e6 / UPDATES_PER_ROUND as f64;
        }
        if round > 0 {
            // Round 0 warms up.
            for side in 0..3 {
                out[side].push(times[side]);
            }
        }
    }
    out
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
