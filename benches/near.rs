//! The near cache (`CacheConfig::with_near_cache`): what an L1 hit costs
//! against a Redis hit through StoreHaus and a raw redis-rs GET + decode (1
//! and 32 tasks), what it costs a store whose rows are written as often as
//! they are read, and how long another process's write takes to reach it.
//!
//! `bash scripts/bench.sh --near` (release build, under a minute); the full
//! `bash scripts/bench.sh` run appends its section to BENCHMARKS.md. Under
//! `cargo test --all-targets` this binary only prints how to run it.
//! Nothing here asserts on time.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus_testkit::bench::median;
use storehaus_testkit::{random_name, raw_redis, redis_url, Db};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "near_bench", prefix = "nb")]
pub struct Hot {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub age: i32,
}

const ROWS: i64 = 100;
const ROUNDS: usize = 11;
const NEAR_OPS: usize = 20_000;
const REDIS_OPS: usize = 2_000;
const TASKS: usize = 32;
const PAIRS: usize = 300;
const DELIVERIES: usize = 1_000;

fn main() {
    storehaus_testkit::bench::section_main("near", "--near", run);
}

/// Nanoseconds per `get_by_id` over the hot ids, one task.
async fn per_get(store: &GenericStore<Hot>, n: usize) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        black_box(store.get_by_id(&(1 + (i as i64 % ROWS))).await.expect("get"));
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Nanoseconds per raw GET + MessagePack decode of the same rows.
async fn per_raw(conn: &MultiplexedConnection, keys: &[String], n: usize) -> f64 {
    let mut conn = conn.clone();
    let start = Instant::now();
    for i in 0..n {
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg(&keys[i % keys.len()])
            .query_async(&mut conn)
            .await
            .expect("GET");
        black_box(rmp_serde::from_slice::<Hot>(&bytes).expect("decode"));
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Nanoseconds per hit at `TASKS` tasks (wall time / operations).
async fn per_get_parallel(store: &GenericStore<Hot>, per_task: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..per_task {
                black_box(store.get_by_id(&(1 + ((t * 7 + i) as i64 % ROWS))).await.expect("get"));
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    start.elapsed().as_nanos() as f64 / (TASKS * per_task) as f64
}

async fn per_raw_parallel(conn: &MultiplexedConnection, keys: &Arc<Vec<String>>, per_task: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (conn, keys) = (conn.clone(), keys.clone());
        tasks.spawn(async move {
            let mut conn = conn;
            for i in 0..per_task {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(&keys[(t * 7 + i) % keys.len()])
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                black_box(rmp_serde::from_slice::<Hot>(&bytes).expect("decode"));
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    start.elapsed().as_nanos() as f64 / (TASKS * per_task) as f64
}

/// Microseconds per update + get of one row (rows written as often as read).
async fn per_pair(store: &GenericStore<Hot>, base: i32) -> f64 {
    let start = Instant::now();
    for i in 0..PAIRS {
        let id = 1 + (i as i64 % ROWS);
        let row = Hot {
            id,
            name: format!("n{id}"),
            email: format!("{id}@example.com"),
            age: base + i as i32,
        };
        store.update(&id, row, None).await.expect("update");
        black_box(store.get_by_id(&id).await.expect("get"));
    }
    start.elapsed().as_secs_f64() * 1e6 / PAIRS as f64
}

async fn warm(store: &GenericStore<Hot>, manager: &CacheManager) {
    // Until every hot row is answered near (the first reads fill Redis and
    // start the tracking connection).
    let start = Instant::now();
    loop {
        let before = manager.get_stats().await.expect("stats").near_hits;
        for id in 1..=ROWS {
            store.get_by_id(&id).await.expect("get");
        }
        let after = manager.get_stats().await.expect("stats").near_hits;
        if after - before == ROWS as u64 || start.elapsed() > Duration::from_secs(10) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run() -> String {
    let db = Db::with_max_connections(10).await;
    db.exec("CREATE TABLE near_bench (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, age integer NOT NULL)")
        .await;
    db.exec(&format!(
        "INSERT INTO near_bench SELECT g, 'n' || g, g || '@example.com', 30 FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let global = random_name("nbench");
    let near_mgr = Arc::new(
        CacheManager::new(CacheConfig::new(redis_url(), 3600, global.clone()).with_near_cache(100_000))
            .expect("config"),
    );
    let writer_mgr = Arc::new(CacheManager::new(CacheConfig::new(redis_url(), 3600, global.clone())).expect("config"));
    let near = GenericStore::<Hot>::new(db.pool.clone(), None, Some(CacheParams::new(near_mgr.clone())));
    let plain = GenericStore::<Hot>::new(
        db.pool.clone(),
        None,
        Some(CacheParams::new(near_mgr.clone()).with_near_cache(false)),
    );
    let writer = GenericStore::<Hot>::new(db.pool.clone(), None, Some(CacheParams::new(writer_mgr.clone())));
    let raw = raw_redis(&redis_url()).await;
    // The raw baseline reads its own copies of the rows, plain MessagePack.
    let raw_keys: Arc<Vec<String>> = Arc::new((1..=ROWS).map(|id| format!("{global}:raw:{id}")).collect());
    {
        let mut conn = raw.clone();
        for (i, key) in raw_keys.iter().enumerate() {
            let id = i as i64 + 1;
            let row = Hot {
                id,
                name: format!("n{id}"),
                email: format!("{id}@example.com"),
                age: 30,
            };
            let bytes = rmp_serde::to_vec(&row).expect("encode");
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(bytes)
                .query_async(&mut conn)
                .await
                .expect("SET");
        }
    }
    warm(&near, &near_mgr).await;

    eprintln!("bench: near cache hits");
    let (mut l1, mut redis_hit, mut raw_hit) = (Vec::new(), Vec::new(), Vec::new());
    let (mut l1_32, mut redis_32, mut raw_32) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        l1.push(per_get(&near, NEAR_OPS).await);
        redis_hit.push(per_get(&plain, REDIS_OPS).await);
        raw_hit.push(per_raw(&raw, &raw_keys, REDIS_OPS).await);
        l1_32.push(per_get_parallel(&near, NEAR_OPS / TASKS).await);
        redis_32.push(per_get_parallel(&plain, REDIS_OPS * 4 / TASKS).await);
        raw_32.push(per_raw_parallel(&raw, &raw_keys, REDIS_OPS * 4 / TASKS).await);
    }
    let (l1, redis_hit, raw_hit) = (median(&l1), median(&redis_hit), median(&raw_hit));
    let (l1_32, redis_32, raw_32) = (median(&l1_32), median(&redis_32), median(&raw_32));

    eprintln!("bench: rows written as often as read");
    let (mut with_l1, mut without) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let base = 1_000 * (round as i32 + 1);
        if round % 2 == 0 {
            with_l1.push(per_pair(&near, base).await);
            without.push(per_pair(&plain, base + 500).await);
        } else {
            without.push(per_pair(&plain, base).await);
            with_l1.push(per_pair(&near, base + 500).await);
        }
    }
    let (with_l1, without) = (median(&with_l1), median(&without));

    eprintln!("bench: delivery delay of another process's write");
    let key = near.cache_key(&1);
    let mut delays = Vec::with_capacity(DELIVERIES);
    for i in 0..DELIVERIES {
        // Until row 1 is held near again.
        let start = Instant::now();
        loop {
            let before = near_mgr.get_stats().await.expect("stats").near_hits;
            near.get_by_id(&1).await.expect("get");
            if near_mgr.get_stats().await.expect("stats").near_hits > before || start.elapsed() > Duration::from_secs(2)
            {
                break;
            }
        }
        let row = Hot {
            id: 1,
            name: "n1".into(),
            email: "1@example.com".into(),
            age: i as i32,
        };
        writer.update(&1, row, None).await.expect("update");
        let returned = Instant::now();
        // Evicted once a read is no longer answered near.
        loop {
            let before = near_mgr.get_stats().await.expect("stats").near_hits;
            let seen = near.get_by_id(&1).await.expect("get").map(|r| r.age);
            let after = near_mgr.get_stats().await.expect("stats").near_hits;
            if after == before || seen == Some(i as i32) {
                break;
            }
            if returned.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        delays.push(returned.elapsed().as_secs_f64() * 1e3);
    }
    let _ = key;
    delays.sort_by(f64::total_cmp);
    let pct = |p: usize| delays[(delays.len() * p / 100).min(delays.len() - 1)];

    let stats = near_mgr.get_stats().await.expect("stats");
    let _ = near_mgr.delete_pattern("*").await;
    db.cleanup().await;

    let mut out = String::new();
    let _ = writeln!(out, "## Near cache\n");
    let _ = writeln!(
        out,
        "`bash scripts/bench.sh --near`: {ROWS} hot rows of 4 fields; medians of {ROUNDS} interleaved rounds \
         ({NEAR_OPS} near reads, {REDIS_OPS} Redis reads per round at 1 task; {TASKS} tasks share the same \
         rows). Redis hits go through a store of the same manager with `with_near_cache(false)`.\n"
    );
    let _ = writeln!(out, "| scenario | StoreHaus | baseline | ratio |");
    let _ = writeln!(out, "|---|---|---|---|");
    let _ = writeln!(
        out,
        "| near hit, 1 task, vs a StoreHaus Redis hit | {l1:.0} ns | {redis_hit:.0} ns | {:.0}× faster |",
        redis_hit / l1
    );
    let _ = writeln!(
        out,
        "| near hit, 1 task, vs raw redis-rs GET + decode | {l1:.0} ns | {raw_hit:.0} ns | {:.0}× faster |",
        raw_hit / l1
    );
    let _ = writeln!(
        out,
        "| near hit, {TASKS} tasks (wall time per hit), vs a StoreHaus Redis hit | {l1_32:.0} ns | {redis_32:.0} ns | {:.0}× faster |",
        redis_32 / l1_32
    );
    let _ = writeln!(
        out,
        "| near hit, {TASKS} tasks, vs raw GET + decode | {l1_32:.0} ns | {raw_32:.0} ns | {:.0}× faster |",
        raw_32 / l1_32
    );
    let _ = writeln!(
        out,
        "| update + get of one row, near cache on vs off | {with_l1:.0} µs | {without:.0} µs | {:.3}× |",
        with_l1 / without
    );
    let _ = writeln!(
        out,
        "| another process's write → this L1 no longer serves it ({DELIVERIES} writes) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | | |",
        pct(50),
        pct(99),
        delays[delays.len() - 1]
    );
    let _ = writeln!(
        out,
        "\nNear cache counters over the run: {} near hits, {} near misses, {} invalidations, {} flushes.",
        stats.near_hits, stats.near_misses, stats.near_invalidations, stats.near_flushes
    );
    out
}
