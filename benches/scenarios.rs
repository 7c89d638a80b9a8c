//! StoreHaus against raw redis-rs, raw sqlx and the `cached` crate.
//!
//! Run `bash scripts/bench.sh` (full run, writes `BENCHMARKS.md`) or
//! `bash scripts/bench.sh --quick` (smoke run for CI: prints the table and
//! writes nothing in the work tree). Under `cargo test --all-targets` this
//! binary only prints how to run it.
//!
//! Method: every scenario measures StoreHaus and its baseline(s) in the same
//! process, in interleaved rounds (A B, B A, ...; the starting variant
//! rotates), after one warm-up round each. A round's value is the mean over
//! its operations; the table shows the median round of each side and the
//! median of the per-round ratios, so a noisy neighbour slows both sides of a
//! round alike instead of skewing one of them. Nothing here asserts on time:
//! the "met" column is information, and the program exits 0 whatever it
//! measures.
//!
//! The payload is a 6-field user row (uuid, name, email, age, active,
//! created_at). PostgreSQL tables live in a fresh schema; Redis keys under a
//! random global prefix; both are removed at the end.

use std::fmt::Write as _;
use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use storehaus::codec::{self, Entry};
use storehaus::prelude::*;
use storehaus_testkit::{database_url, free_port, random_name, raw_redis, redis_url, Db};
use tokio::task::JoinSet;
use uuid::Uuid;

// ----- payload -----

/// The benchmark row: six user-like fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "bench_users", ttl = 3600, prefix = "users")]
pub struct BenchUser {
    #[cache(id)]
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub age: i32,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

/// The same row behind a view that counts every query that reads it (for
/// the single-flight scenario).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "hot_users", ttl = 3600, prefix = "hot")]
pub struct HotUser {
    #[cache(id)]
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub age: i32,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

const COLUMNS_DDL: &str =
    "(id uuid PRIMARY KEY, name text NOT NULL, email text NOT NULL, age integer NOT NULL, active boolean NOT NULL, created_at timestamptz NOT NULL)";
const SELECT_SQL: &str = "SELECT id, name, email, age, active, created_at FROM bench_users WHERE id = $1";
const UPDATE_SQL: &str = "UPDATE bench_users SET name = $1, email = $2, age = $3, active = $4, created_at = $5 \
                          WHERE id = $6 RETURNING id, name, email, age, active, created_at";

fn user(i: usize) -> BenchUser {
    BenchUser {
        id: Uuid::new_v4(),
        name: format!("User Number {i}"),
        email: format!("user{i}@example.com"),
        age: 18 + (i % 60) as i32,
        active: !i.is_multiple_of(3),
        created_at: DateTime::from_timestamp(1_700_000_000 + i as i64 * 37, 0).expect("valid timestamp"),
    }
}

fn users(n: usize) -> Vec<BenchUser> {
    (0..n).map(user).collect()
}

/// Inserts rows in one statement (`UNNEST` of six arrays).
async fn insert(pool: &PgPool, table: &str, rows: &[BenchUser]) {
    let sql = format!(
        "INSERT INTO {table} (id, name, email, age, active, created_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::bool[], $6::timestamptz[])"
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|u| u.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|u| u.name.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|u| u.email.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|u| u.age).collect::<Vec<_>>())
        .bind(rows.iter().map(|u| u.active).collect::<Vec<_>>())
        .bind(rows.iter().map(|u| u.created_at).collect::<Vec<_>>())
        .execute(pool)
        .await
        .expect("insert benchmark rows");
}

// ----- plan -----

/// How much to measure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    /// Measured rounds per scenario (odd, so the median is one round).
    rounds: usize,
    hit_ops: usize,
    tasks: usize,
    ops_per_task: usize,
    miss_ops: usize,
    many_calls: usize,
    update_ops: usize,
    down_ops: usize,
    cold_rounds: usize,
    cold_tasks: usize,
    codec_ops: usize,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            quick: false,
            rounds: 31,
            hit_ops: 1500,
            tasks: 32,
            ops_per_task: 150,
            miss_ops: 200,
            many_calls: 30,
            update_ops: 40,
            down_ops: 400,
            cold_rounds: 5,
            cold_tasks: 1000,
            codec_ops: 30_000,
        }
    }

    fn quick() -> Plan {
        Plan {
            quick: true,
            rounds: 5,
            hit_ops: 200,
            tasks: 32,
            ops_per_task: 25,
            miss_ops: 40,
            many_calls: 5,
            update_ops: 10,
            down_ops: 60,
            cold_rounds: 1,
            cold_tasks: 1000,
            codec_ops: 5_000,
        }
    }
}

// ----- measurement -----

type RoundFuture = Pin<Box<dyn Future<Output = f64>>>;
/// One side of a comparison: given the round number (0 = warm-up), runs one
/// round and returns its value (µs per operation, or operations per second).
type Variant = Box<dyn FnMut(usize) -> RoundFuture>;

fn variant<F, Fut>(mut f: F) -> Variant
where
    F: FnMut(usize) -> Fut + 'static,
    Fut: Future<Output = f64> + 'static,
{
    Box::new(move |round| Box::pin(f(round)))
}

/// Runs one warm-up round of each variant, then `rounds` measured rounds in
/// rotating order. Returns the measured values per variant.
async fn interleave(rounds: usize, variants: &mut [Variant]) -> Vec<Vec<f64>> {
    let k = variants.len();
    for v in variants.iter_mut() {
        v(0).await;
        settle().await;
    }
    let mut out = vec![Vec::with_capacity(rounds); k];
    for round in 1..=rounds {
        for j in 0..k {
            let v = (round + j) % k;
            out[v].push(variants[v](round).await);
            settle().await;
        }
    }
    out
}

/// Lets background work of the previous round (fills) finish before the
/// next round starts.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

/// Mean µs per iteration of `$body`, run `$n` times in sequence.
macro_rules! latency_us {
    ($n:expr, |$i:ident| $body:expr) => {{
        let n: usize = $n;
        let start = Instant::now();
        for $i in 0..n {
            $body;
        }
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    }};
}

/// Operations per second of `$tasks` tasks each awaiting `$op(&shared, i)`
/// `$per` times.
macro_rules! throughput {
    ($shared:expr, $tasks:expr, $per:expr, $op:path) => {{
        let (tasks, per): (usize, usize) = ($tasks, $per);
        let start = Instant::now();
        let mut set = JoinSet::new();
        for t in 0..tasks {
            let s = $shared.clone();
            set.spawn(async move {
                for i in 0..per {
                    $op(&s, t * 31 + i).await;
                }
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("benchmark task");
        }
        (tasks * per) as f64 / start.elapsed().as_secs_f64()
    }};
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of both sides and the median of the per-round ratios `ours / base`.
#[derive(Debug, Clone, Copy)]
struct Pair {
    ours: f64,
    base: f64,
    ratio: f64,
}

fn pair(ours: &[f64], base: &[f64]) -> Pair {
    let ratios: Vec<f64> = ours.iter().zip(base).map(|(a, b)| a / b).collect();
    Pair {
        ours: median(ours),
        base: median(base),
        ratio: median(&ratios),
    }
}

// ----- report rows -----

#[derive(Debug, Clone, Copy)]
enum Goal {
    /// ours / baseline at most this (latency).
    AtMost(f64),
    /// ours / baseline at least this (throughput).
    AtLeast(f64),
    /// ours / baseline below 1 (faster or smaller).
    Below1,
}

impl Goal {
    fn text(self) -> String {
        match self {
            Goal::AtMost(x) => format!("≤ {x:.2}×"),
            Goal::AtLeast(x) => format!("≥ {x:.2}×"),
            Goal::Below1 => "< 1.00×".to_string(),
        }
    }

    fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtMost(x) => ratio <= x,
            Goal::AtLeast(x) => ratio >= x,
            Goal::Below1 => ratio < 1.0,
        }
    }
}

struct Row {
    scenario: String,
    baseline_name: String,
    ours: String,
    base: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn compare(scenario: &str, baseline_name: &str, ours: String, base: String, ratio: f64, goal: Goal) -> Row {
        Row {
            scenario: scenario.to_string(),
            baseline_name: baseline_name.to_string(),
            ours,
            base,
            ratio: format!("{ratio:.2}×"),
            target: goal.text(),
            met: Some(goal.met(ratio)),
        }
    }
}

/// A latency row: both medians in µs and the median ratio.
fn latency_row(scenario: &str, baseline_name: &str, p: &Pair, goal: Goal) -> Row {
    Row::compare(scenario, baseline_name, us(p.ours), us(p.base), p.ratio, goal)
}

fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.1} µs")
    } else {
        format!("{v:.2} µs")
    }
}

fn ops(v: f64) -> String {
    format!("{:.1}k ops/s", v / 1000.0)
}

fn ns(v: f64) -> String {
    format!("{v:.0} ns")
}

// ----- shared state -----

/// Everything a hit scenario needs; cheap to clone into tasks.
#[derive(Clone)]
struct Shared {
    store: Arc<GenericStore<BenchUser>>,
    raw: MultiplexedConnection,
    cached: Arc<AsyncRedisCache<String, BenchUser>>,
    hot: Arc<[BenchUser]>,
    hot_ids: Arc<[Uuid]>,
    /// The `cached` crate's keys are the ids as strings.
    hot_names: Arc<[String]>,
    /// Raw keys: `{raw_prefix}:{id}` holds the compact MessagePack row.
    raw_prefix: Arc<str>,
    pool: PgPool,
}

impl Shared {
    fn pick(&self, i: usize) -> usize {
        i % self.hot.len()
    }
}

async fn hit_ours(s: &Shared, i: usize) {
    let id = &s.hot_ids[s.pick(i)];
    let got = s.store.get_by_id(id).await.expect("get_by_id");
    black_box(got.expect("hot row"));
}

async fn hit_raw(s: &Shared, i: usize) {
    let id = &s.hot_ids[s.pick(i)];
    let key = format!("{}:{}", s.raw_prefix, id);
    let mut conn = s.raw.clone();
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET");
    let row: BenchUser = rmp_serde::from_slice(&bytes.expect("raw key present")).expect("decode");
    black_box(row);
}

async fn hit_cached(s: &Shared, i: usize) {
    let got = s
        .cached
        .async_cache_get(&s.hot_names[s.pick(i)])
        .await
        .expect("cached crate get");
    black_box(got.expect("cached crate key present"));
}

/// A cache manager on `url` with its own random global prefix.
fn manager(url: &str, tweak: impl FnOnce(CacheConfig) -> CacheConfig) -> Arc<CacheManager> {
    let config = tweak(CacheConfig::new(url, 3600, random_name("bench")));
    Arc::new(CacheManager::new(config).expect("valid cache config"))
}

/// Waits until every key holds a value (not a fill lease).
async fn wait_filled(conn: &MultiplexedConnection, keys: &[String]) {
    let start = Instant::now();
    let mut conn = conn.clone();
    for key in keys {
        loop {
            let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut conn).await.expect("GET");
            if v.as_ref().is_some_and(|b| !codec::is_lease(b)) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "cache fill of {key} never landed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

// ----- scenarios -----

/// get_by_id hits at 1 task and at 32 tasks, against raw redis-rs GET +
/// decode and against the `cached` crate, all three interleaved.
async fn hits(s: &Shared, plan: &Plan, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    eprintln!("bench: get_by_id hit, 1 task");
    let n = plan.hit_ops;
    let mut variants = vec![
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { latency_us!(n, |i| hit_ours(&s, i).await) }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { latency_us!(n, |i| hit_raw(&s, i).await) }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { latency_us!(n, |i| hit_cached(&s, i).await) }
            })
        },
    ];
    let m = interleave(plan.rounds, &mut variants).await;
    let raw = pair(&m[0], &m[1]);
    let cached = pair(&m[0], &m[2]);
    let cached_vs_raw = pair(&m[2], &m[1]);
    rows.push(Row::compare(
        "get_by_id hit, 1 task (latency)",
        "raw redis-rs GET + rmp-serde decode",
        us(raw.ours),
        us(raw.base),
        raw.ratio,
        // Issue 26: a lone reader must not wait for a batch.
        Goal::AtMost(1.05),
    ));
    rows.push(Row::compare(
        "get_by_id hit, 1 task (latency)",
        "`cached` crate AsyncRedisCache get",
        us(cached.ours),
        us(cached.base),
        cached.ratio,
        Goal::Below1,
    ));

    eprintln!("bench: get_by_id hit, {} tasks", plan.tasks);
    let (tasks, per) = (plan.tasks, plan.ops_per_task);
    let mut variants = vec![
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { throughput!(s, tasks, per, hit_ours) }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { throughput!(s, tasks, per, hit_raw) }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { throughput!(s, tasks, per, hit_cached) }
            })
        },
    ];
    let m = interleave(plan.rounds, &mut variants).await;
    let raw32 = pair(&m[0], &m[1]);
    let cached32 = pair(&m[0], &m[2]);
    let cached32_vs_raw = pair(&m[2], &m[1]);
    let label = format!("get_by_id hit, {tasks} tasks (throughput)");
    rows.push(Row::compare(
        &label,
        "raw redis-rs multiplexed GET + decode",
        ops(raw32.ours),
        ops(raw32.base),
        raw32.ratio,
        Goal::AtLeast(1.2),
    ));
    rows.push(Row::compare(
        &label,
        "`cached` crate AsyncRedisCache get",
        ops(cached32.ours),
        ops(cached32.base),
        cached32.ratio,
        Goal::AtLeast(1.2),
    ));
    notes.push(format!(
        "Reference, same runs: the `cached` crate relative to raw redis-rs GET + decode is {:.2}× latency at 1 task \
         and {:.2}× throughput at {tasks} tasks (orientation figures: 1.00–1.14× and 0.83–1.02×).",
        cached_vs_raw.ratio, cached32_vs_raw.ratio
    ));
}

/// A true miss every iteration (fresh ids): ours (lease, database, background
/// fill) against the floor, a raw GET that misses plus a sqlx SELECT.
/// Hits spread over 200 cached rows, 32 tasks each reading ids
/// `(task * 7 + i) % 200` in sequence, through stores whose managers have
/// 1, 4, 10 and 16 connections, against 32 tasks sharing one raw
/// multiplexed connection that GET + decode one key (issue 18's scenario).
async fn spread_hits(s: &Shared, plan: &Plan, rows: &mut Vec<Row>) {
    const KEYS: usize = 200;
    eprintln!(
        "bench: get_by_id hit, {} tasks over {KEYS} keys, pool sizes 1, 4, 10, 16",
        plan.tasks
    );
    let spread: Arc<[BenchUser]> = users(KEYS).into();
    insert(&s.pool, "bench_users", &spread).await;
    let ids: Arc<[Uuid]> = spread.iter().map(|u| u.id).collect();
    let pools = [16usize, 1, 4, 10];
    let mut stores = Vec::new();
    for pool in pools {
        let mgr = manager(&redis_url(), |c| c.with_pool_size(pool));
        let store = Arc::new(GenericStore::<BenchUser>::new(
            s.pool.clone(),
            None,
            Some(CacheParams::new(mgr.clone())),
        ));
        for id in ids.iter() {
            store.get_by_id(id).await.expect("fill");
        }
        mgr.flush_fills().await;
        stores.push((mgr, store));
    }
    let (tasks, per) = (plan.tasks, plan.ops_per_task);
    let mut variants = Vec::new();
    for (_, store) in &stores {
        let (store, ids) = (store.clone(), ids.clone());
        variants.push(variant(move |_| {
            let (store, ids) = (store.clone(), ids.clone());
            async move {
                let start = Instant::now();
                let mut set = JoinSet::new();
                for t in 0..tasks {
                    let (store, ids) = (store.clone(), ids.clone());
                    set.spawn(async move {
                        for i in 0..per {
                            let got = store.get_by_id(&ids[(t * 7 + i) % ids.len()]).await.expect("get_by_id");
                            black_box(got.expect("spread row"));
                        }
                    });
                }
                while let Some(done) = set.join_next().await {
                    done.expect("benchmark task");
                }
                (tasks * per) as f64 / start.elapsed().as_secs_f64()
            }
        }));
    }
    {
        let s = s.clone();
        variants.push(variant(move |_| {
            let s = s.clone();
            async move { throughput!(s, tasks, per, hit_raw_one_key) }
        }));
    }
    let m = interleave(plan.rounds, &mut variants).await;
    let base = m.len() - 1;
    for (k, pool) in pools.iter().enumerate() {
        let p = pair(&m[k], &m[base]);
        rows.push(Row::compare(
            &format!("get_by_id hit, {tasks} tasks, {KEYS} keys, pool {pool} (throughput)"),
            "raw multiplexed GET + decode of one key, one shared connection",
            ops(p.ours),
            ops(p.base),
            p.ratio,
            Goal::AtLeast(1.2),
        ));
    }
    for (mgr, _) in &stores {
        let _ = mgr.delete_pattern("*").await;
    }
}

/// A raw GET + decode of the first hot key, whatever `i` is.
async fn hit_raw_one_key(s: &Shared, _i: usize) {
    hit_raw(s, 0).await;
}

async fn miss_fill(s: &Shared, plan: &Plan, rows: &mut Vec<Row>) {
    eprintln!("bench: get_by_id miss + fill");
    let n = plan.miss_ops;
    let per_side = (plan.rounds + 1) * n;
    let ours_rows = users(per_side);
    let floor_rows = users(per_side);
    insert(&s.pool, "bench_users", &ours_rows).await;
    insert(&s.pool, "bench_users", &floor_rows).await;
    let ours_ids: Arc<[Uuid]> = ours_rows.iter().map(|u| u.id).collect();
    let floor_ids: Arc<[Uuid]> = floor_rows.iter().map(|u| u.id).collect();
    let floor_prefix = format!("{}:floor", s.raw_prefix);
    // The same misses with `with_single_command_reads(true)`: one round trip
    // less per miss (the lease is taken by the read itself).
    let single_rows = users(per_side);
    insert(&s.pool, "bench_users", &single_rows).await;
    let single_ids: Arc<[Uuid]> = single_rows.iter().map(|u| u.id).collect();
    let single_mgr = manager(&redis_url(), |c| c.with_single_command_reads(true));
    let single_store = Arc::new(GenericStore::<BenchUser>::new(
        s.pool.clone(),
        None,
        Some(CacheParams::new(single_mgr.clone())),
    ));
    let mut variants = vec![
        {
            let s = s.clone();
            variant(move |round| {
                let (s, ids) = (s.clone(), ours_ids.clone());
                async move {
                    latency_us!(n, |i| {
                        let got = s.store.get_by_id(&ids[round * n + i]).await.expect("get_by_id");
                        black_box(got.expect("row exists"));
                    })
                }
            })
        },
        {
            let s = s.clone();
            variant(move |round| {
                let (s, ids, prefix) = (s.clone(), floor_ids.clone(), floor_prefix.clone());
                async move {
                    latency_us!(n, |i| {
                        let id = ids[round * n + i];
                        let mut conn = s.raw.clone();
                        let cached: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(format!("{prefix}:{id}"))
                            .query_async(&mut conn)
                            .await
                            .expect("GET");
                        assert!(cached.is_none(), "floor keys never exist");
                        let row: Option<BenchUser> = sqlx::query_as(SELECT_SQL)
                            .bind(id)
                            .fetch_optional(&s.pool)
                            .await
                            .expect("SELECT");
                        black_box(row.expect("row exists"));
                    })
                }
            })
        },
    ];
    variants.push(variant(move |round| {
        let (store, ids) = (single_store.clone(), single_ids.clone());
        async move {
            latency_us!(n, |i| {
                let got = store.get_by_id(&ids[round * n + i]).await.expect("get_by_id");
                black_box(got.expect("row exists"));
            })
        }
    }));
    let m = interleave(plan.rounds, &mut variants).await;
    let p = pair(&m[0], &m[1]);
    rows.push(latency_row(
        "get_by_id miss + fill (latency)",
        "raw GET (miss) + sqlx SELECT by pk: the floor",
        &p,
        Goal::AtMost(1.2),
    ));
    let q = pair(&m[2], &m[1]);
    rows.push(latency_row(
        "miss + fill, `with_single_command_reads(true)`",
        "raw GET (miss) + sqlx SELECT by pk: the floor",
        &q,
        Goal::AtMost(1.2),
    ));
    let _ = single_mgr.delete_pattern("*").await;
}

/// get_many(100) of hits against 100 sequential get_by_id.
async fn get_many(s: &Shared, plan: &Plan, rows: &mut Vec<Row>) {
    eprintln!("bench: get_many(100)");
    let calls = plan.many_calls;
    let mut variants = vec![
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move {
                    latency_us!(calls, |_i| {
                        let got = s.store.get_many(&s.hot_ids).await.expect("get_many");
                        assert!(got.iter().all(Option::is_some), "every id is a hit");
                        black_box(got);
                    })
                }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move {
                    latency_us!(1, |_i| {
                        for id in s.hot_ids.iter() {
                            black_box(s.store.get_by_id(id).await.expect("get_by_id"));
                        }
                    })
                }
            })
        },
    ];
    let m = interleave(plan.rounds, &mut variants).await;
    let p = pair(&m[1], &m[0]); // speedup: sequential / batched
    rows.push(Row::compare(
        &format!("get_many({}), all hits (per call)", s.hot_ids.len()),
        "100 sequential get_by_id",
        us(p.base),
        us(p.ours),
        p.ratio,
        Goal::AtLeast(20.0),
    ));
    if let Some(row) = rows.last_mut() {
        row.ratio = format!("{:.1}× faster", p.ratio);
        row.target = "≥ 20× faster".to_string();
    }
}

/// The baseline write: sqlx's own UPDATE ... RETURNING of `rec` with `age`.
async fn raw_update(s: &Shared, rec: &BenchUser, age: i32) {
    let row: Option<BenchUser> = sqlx::query_as(UPDATE_SQL)
        .bind(&rec.name)
        .bind(&rec.email)
        .bind(age)
        .bind(rec.active)
        .bind(rec.created_at)
        .bind(rec.id)
        .fetch_optional(&s.pool)
        .await
        .expect("UPDATE");
    black_box(row.expect("row exists"));
}

/// update (database write, then DEL + generation INCR) against a direct sqlx
/// UPDATE ... RETURNING.
async fn update(s: &Shared, plan: &Plan, rows: &mut Vec<Row>) {
    eprintln!("bench: update + invalidate");
    let n = plan.update_ops;
    let ours_rows: Arc<[BenchUser]> = users(32).into();
    let base_rows: Arc<[BenchUser]> = users(32).into();
    insert(&s.pool, "bench_users", &ours_rows).await;
    insert(&s.pool, "bench_users", &base_rows).await;
    let mut variants = vec![
        {
            let s = s.clone();
            variant(move |round| {
                let (s, rows) = (s.clone(), ours_rows.clone());
                async move {
                    latency_us!(n, |i| {
                        let mut rec = rows[i % rows.len()].clone();
                        rec.age = ((round * n + i) % 90) as i32;
                        let id = rec.id;
                        black_box(s.store.update(&id, rec, None).await.expect("update"));
                    })
                }
            })
        },
        {
            let s = s.clone();
            variant(move |round| {
                let (s, rows) = (s.clone(), base_rows.clone());
                async move {
                    latency_us!(n, |i| {
                        let rec = &rows[i % rows.len()];
                        raw_update(&s, rec, ((round * n + i) % 90) as i32).await;
                    })
                }
            })
        },
    ];
    // The physical floor of an after-commit invalidation: the same UPDATE,
    // then one hand-built pipeline (DEL of the key + INCR of a counter).
    let floor_rows: Arc<[BenchUser]> = users(32).into();
    insert(&s.pool, "bench_users", &floor_rows).await;
    let floor_counter = format!("storehaus-bench-floor-{}:gen", std::process::id());
    variants.push({
        let s = s.clone();
        let counter = floor_counter.clone();
        variant(move |round| {
            let (s, rows, counter) = (s.clone(), floor_rows.clone(), counter.clone());
            async move {
                latency_us!(n, |i| {
                    let rec = &rows[i % rows.len()];
                    raw_update(&s, rec, ((round * n + i) % 90) as i32).await;
                    let mut conn = s.raw.clone();
                    let _: (u64,) = redis::pipe()
                        .cmd("DEL")
                        .arg(format!("{counter}:{}", rec.id))
                        .cmd("INCR")
                        .arg(&counter)
                        .ignore()
                        .query_async(&mut conn)
                        .await
                        .expect("DEL + INCR");
                })
            }
        })
    });
    let m = interleave(plan.rounds, &mut variants).await;
    let p = pair(&m[0], &m[1]);
    rows.push(latency_row(
        "update + invalidate (latency)",
        "direct sqlx UPDATE … RETURNING",
        &p,
        Goal::AtMost(1.2),
    ));
    let f = pair(&m[0], &m[2]);
    rows.push(latency_row(
        "update + invalidate (latency)",
        "the floor: UPDATE … RETURNING + one DEL/INCR pipeline by hand",
        &f,
        Goal::AtMost(1.05),
    ));
    let mut conn = s.raw.clone();
    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&floor_counter).query_async(&mut conn).await;
}

/// A manager pointed at a closed port, breaker opened first, against a
/// direct sqlx SELECT.
async fn redis_down(s: &Shared, plan: &Plan, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    eprintln!("bench: Redis down, breaker open");
    let url = format!("redis://127.0.0.1:{}", free_port());
    // A cooldown longer than the run: no probe happens while measuring.
    let mgr = manager(&url, |c| c.with_retry_attempts(0).with_circuit_breaker(3, 3_600_000));
    let store = Arc::new(GenericStore::<BenchUser>::new(
        s.pool.clone(),
        None,
        Some(CacheParams::new(mgr.clone())),
    ));
    for _ in 0..10 {
        store
            .get_by_id(&s.hot_ids[0])
            .await
            .expect("database answers while Redis is down");
        if mgr.get_stats().await.expect("stats").breaker_open {
            break;
        }
    }
    let before = mgr.get_stats().await.expect("stats");
    assert!(
        before.breaker_open,
        "the breaker opened after repeated connection failures"
    );
    let n = plan.down_ops;
    let mut variants = vec![
        {
            let (s, store) = (s.clone(), store.clone());
            variant(move |_| {
                let (s, store) = (s.clone(), store.clone());
                async move {
                    latency_us!(n, |i| {
                        let got = store.get_by_id(&s.hot_ids[s.pick(i)]).await.expect("get_by_id");
                        black_box(got.expect("row exists"));
                    })
                }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move {
                    latency_us!(n, |i| {
                        let row: Option<BenchUser> = sqlx::query_as(SELECT_SQL)
                            .bind(s.hot_ids[s.pick(i)])
                            .fetch_optional(&s.pool)
                            .await
                            .expect("SELECT");
                        black_box(row.expect("row exists"));
                    })
                }
            })
        },
    ];
    let m = interleave(plan.rounds, &mut variants).await;
    let after = mgr.get_stats().await.expect("stats");
    let p = pair(&m[0], &m[1]);
    rows.push(latency_row(
        "Redis down, breaker open (latency)",
        "direct sqlx SELECT by pk",
        &p,
        Goal::AtMost(1.05),
    ));
    notes.push(format!(
        "Redis down: the breaker opened after {} connection errors; {} cache calls were then skipped \
         without touching the network; it stayed open for the whole scenario ({}).",
        before.connection_errors,
        after.breaker_skips,
        if after.breaker_open { "yes" } else { "no" }
    ));
}

/// 1000 concurrent gets of one cold id: how many database queries? The
/// table is read through a view whose function bumps a sequence once per
/// query, so the count is exact.
async fn cold_burst(s: &Shared, plan: &Plan, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    eprintln!("bench: {} concurrent cold gets of one id", plan.cold_tasks);
    let db = &s.pool;
    for sql in [
        format!("CREATE TABLE hot_rows {COLUMNS_DDL}"),
        "CREATE SEQUENCE hot_reads".to_string(),
        "CREATE FUNCTION counted_hot_rows() RETURNS SETOF hot_rows LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM nextval('hot_reads'); RETURN QUERY SELECT * FROM hot_rows; END $$"
            .to_string(),
        "CREATE VIEW hot_users AS SELECT * FROM counted_hot_rows()".to_string(),
    ] {
        sqlx::query(&sql)
            .execute(db)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let rows_in = users(plan.cold_rounds);
    insert(db, "hot_rows", &rows_in).await;
    let mgr = s.store.cache_manager().expect("cached store");
    let store = Arc::new(GenericStore::<HotUser>::new(
        db.clone(),
        None,
        Some(CacheParams::new(mgr.clone())),
    ));
    let reads = || async {
        let (last, called): (i64, bool) = sqlx::query_as("SELECT last_value, is_called FROM hot_reads")
            .fetch_one(db)
            .await
            .expect("read counter");
        if called {
            last
        } else {
            0
        }
    };
    let mut queries = Vec::new();
    let mut millis = Vec::new();
    let stats_before = mgr.get_stats().await.expect("stats");
    for row in &rows_in {
        let before = reads().await;
        let barrier = Arc::new(tokio::sync::Barrier::new(plan.cold_tasks));
        let mut set = JoinSet::new();
        let start = Instant::now();
        for _ in 0..plan.cold_tasks {
            let (store, barrier, id) = (store.clone(), barrier.clone(), row.id);
            set.spawn(async move {
                barrier.wait().await;
                store.get_by_id(&id).await.expect("get_by_id").is_some()
            });
        }
        let mut found = 0;
        while let Some(done) = set.join_next().await {
            found += usize::from(done.expect("task"));
        }
        millis.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(found, plan.cold_tasks, "every reader got the row");
        queries.push(reads().await - before);
        settle().await;
    }
    let stats_after = mgr.get_stats().await.expect("stats");
    let worst = queries.iter().copied().max().unwrap_or(0);
    rows.push(Row {
        scenario: format!("{} concurrent cold gets, one id", plan.cold_tasks),
        baseline_name: "—".to_string(),
        ours: format!(
            "{worst} database quer{} (worst of {} bursts)",
            if worst == 1 { "y" } else { "ies" },
            queries.len()
        ),
        base: "—".to_string(),
        ratio: "—".to_string(),
        target: "1 database query".to_string(),
        met: Some(worst == 1),
    });
    notes.push(format!(
        "Cold burst: database queries per burst {queries:?}; median burst {:.1} ms for {} gets; \
         {} readers joined the in-process load, {} waited on the lease in Redis.",
        median(&millis),
        plan.cold_tasks,
        stats_after.coalesced - stats_before.coalesced,
        stats_after.lease_waits - stats_before.lease_waits,
    ));
}

/// The value codec (envelope + compact MessagePack) against serde_json.
async fn codec_rows(s: &Shared, plan: &Plan, rows: &mut Vec<Row>) {
    eprintln!("bench: value codec");
    let row = s.hot[0].clone();
    let fp = <BenchUser as Cached>::FINGERPRINT;
    let ours_bytes = codec::encode(fp, Some(&row)).expect("encode");
    let json_bytes = serde_json::to_vec(&row).expect("json");
    match codec::decode::<BenchUser>(fp, &ours_bytes).expect("decode") {
        Entry::Record(r) => assert_eq!(r, row),
        Entry::Absent => panic!("decoded a record"),
    }
    let n = plan.codec_ops;
    let ns_per = |us_per: f64| us_per * 1000.0;
    let mut variants = vec![
        {
            let row = row.clone();
            variant(move |_| {
                let row = row.clone();
                async move {
                    ns_per(latency_us!(n, |_i| black_box(
                        codec::encode(fp, Some(black_box(&row))).expect("encode")
                    )))
                }
            })
        },
        {
            let row = row.clone();
            variant(move |_| {
                let row = row.clone();
                async move {
                    ns_per(latency_us!(n, |_i| black_box(
                        serde_json::to_vec(black_box(&row)).expect("json")
                    )))
                }
            })
        },
        {
            let b = ours_bytes.clone();
            variant(move |_| {
                let b = b.clone();
                async move {
                    ns_per(latency_us!(n, |_i| black_box(
                        codec::decode::<BenchUser>(fp, black_box(&b)).expect("decode")
                    )))
                }
            })
        },
        {
            let b = json_bytes.clone();
            variant(move |_| {
                let b = b.clone();
                async move {
                    ns_per(latency_us!(n, |_i| black_box(
                        serde_json::from_slice::<BenchUser>(black_box(&b)).expect("json")
                    )))
                }
            })
        },
    ];
    let m = interleave(plan.rounds, &mut variants).await;
    let size_ratio = ours_bytes.len() as f64 / json_bytes.len() as f64;
    rows.push(Row::compare(
        "value codec: size",
        "serde_json",
        format!("{} B", ours_bytes.len()),
        format!("{} B", json_bytes.len()),
        size_ratio,
        Goal::Below1,
    ));
    let enc = pair(&m[0], &m[1]);
    rows.push(Row::compare(
        "value codec: encode",
        "serde_json",
        ns(enc.ours),
        ns(enc.base),
        enc.ratio,
        Goal::Below1,
    ));
    let dec = pair(&m[2], &m[3]);
    rows.push(Row::compare(
        "value codec: decode",
        "serde_json",
        ns(dec.ours),
        ns(dec.base),
        dec.ratio,
        Goal::Below1,
    ));
}

/// What the metrics of one read cost when no recorder is installed (the
/// runtime's own telemetry code, timestamps and span field included),
/// timed against a StoreHaus hit in the same rounds. The bench installs no
/// recorder.
async fn metrics_row(s: &Shared, plan: &Plan, rows: &mut Vec<Row>) {
    eprintln!("bench: metrics without a recorder");
    let n = plan.codec_ops;
    let hits = plan.hit_ops;
    let shared = s.clone();
    let mut variants = vec![
        variant(move |_| async move { storehaus_runtime::test_hooks::time_reads(n).as_secs_f64() * 1e9 / n as f64 }),
        variant(move |_| {
            let s = shared.clone();
            async move {
                let start = Instant::now();
                for i in 0..hits {
                    hit_ours(&s, i).await;
                }
                start.elapsed().as_secs_f64() * 1e9 / hits as f64
            }
        }),
    ];
    let m = interleave(plan.rounds, &mut variants).await;
    let p = pair(&m[0], &m[1]);
    rows.push(Row::compare(
        "metrics + span field, no recorder, per read",
        "a StoreHaus hit, 1 task",
        ns(p.ours),
        ns(p.base),
        p.ratio,
        Goal::AtMost(0.01),
    ));
}

// ----- machine -----

struct Machine {
    cpu: String,
    nproc: usize,
    workers: usize,
    load: String,
    rustc: String,
    redis: String,
    postgres: String,
    synchronous_commit: String,
}

impl Machine {
    async fn probe(raw: &MultiplexedConnection, pool: &PgPool, run_rustc: bool) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".to_string());
        let rustc = if run_rustc { rustc_version() } else { None }.unwrap_or_else(|| "unknown".to_string());
        let mut conn = raw.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        let redis = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let (postgres,): (String,) = sqlx::query_as("SELECT current_setting('server_version')")
            .fetch_one(pool)
            .await
            .expect("server_version");
        let (synchronous_commit,): (String,) = sqlx::query_as("SELECT current_setting('synchronous_commit')")
            .fetch_one(pool)
            .await
            .expect("synchronous_commit");
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        Machine {
            cpu,
            nproc,
            workers,
            load,
            rustc,
            redis,
            postgres,
            synchronous_commit,
        }
    }
}

fn rustc_version() -> Option<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = std::process::Command::new(rustc).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn render(machine: &Machine, plan: &Plan, rows: &[Row], notes: &[String], elapsed: Duration) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `bash scripts/bench.sh` ({} run, {} measured rounds per scenario, {:.0} s) on {}. \
         Do not edit by hand: rerun the script. `bash scripts/bench.sh --quick` is the CI smoke run \
         (fewer rounds; prints the table and leaves this file alone).\n",
        if plan.quick { "quick" } else { "full" },
        plan.rounds,
        elapsed.as_secs_f64(),
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "| scenario | baseline (same run) | StoreHaus | baseline | ratio | target | met |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|:---:|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario, r.baseline_name, r.ours, r.base, r.ratio, r.target, met
        );
    }
    let _ = writeln!(
        md,
        "\nRatio = StoreHaus / baseline (the median of the per-round ratios), except for get_many where it \
         is the speedup over 100 sequential gets. Latency: lower is better; throughput: higher is better.\n"
    );
    if !notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| CPU | {} |", machine.cpu);
    let _ = writeln!(md, "| nproc | {} |", machine.nproc);
    let _ = writeln!(md, "| load average at start (1/5/15 min) | {} |", machine.load);
    let _ = writeln!(md, "| rustc | {} |", machine.rustc);
    let _ = writeln!(md, "| Redis | {} (127.0.0.1:6379) |", machine.redis);
    let _ = writeln!(
        md,
        "| PostgreSQL | {} (127.0.0.1:5432, synchronous_commit {}) |",
        machine.postgres, machine.synchronous_commit
    );
    let _ = writeln!(
        md,
        "| build | {} profile, tokio multi-thread runtime with {} workers |",
        if cfg!(debug_assertions) {
            "debug (numbers not meaningful)"
        } else {
            "release (`cargo bench`)"
        },
        machine.workers
    );
    let _ = writeln!(md, "\n## Method\n");
    for line in [
        "One process measures StoreHaus and its baseline(s) in interleaved rounds after one warm-up round each; \
         the variant that goes first rotates every round. A round's value is the mean over its operations \
         (latency) or operations per second over the round (throughput).",
        "Payload: a 6-field user row (uuid, name, email, age, active, created_at). StoreHaus stores it in its \
         envelope (compact MessagePack + schema fingerprint); the raw baseline stores the compact MessagePack \
         row under its own key and decodes it with rmp-serde; the `cached` crate (4.x, `AsyncRedisCache`, \
         one multiplexed connection) stores it in its own MessagePack envelope.",
        "StoreHaus runs with its defaults (10 multiplexed connections, 500 ms budget); raw redis-rs uses one \
         multiplexed connection shared by all tasks.",
        "Hit: every key is filled before measuring; StoreHaus reads with a plain `GET` (its default; \
         `with_single_command_reads(true)` makes every read one `SET key lease NX PX ms GET` instead). \
         Miss + fill: every iteration reads a fresh id (a true miss: the lease `SET key lease NX PX ms GET` \
         — in the default mode once the store's recent reads mostly miss, after a `GET` before that — then \
         SELECT, fill in the background); the floor reads a fresh missing key and then SELECTs a fresh id.",
        "Update: `GenericStore::update` (UPDATE … RETURNING, then DEL + query-generation SET NX/INCR in one \
         round trip) against the same UPDATE … RETURNING through sqlx, and against that UPDATE plus one \
         hand-built DEL/INCR pipeline (the floor).",
        "Redis down: a manager on a closed loopback port, breaker opened by a few failed reads, cooldown longer \
         than the run (no probe while measuring).",
        "Cold burst: the row is read through a view whose set-returning function bumps a sequence once per \
         query, so the count is exact; all readers start together behind a barrier.",
        "Nothing asserts on time; `met` is information only. `bash scripts/bench.sh --diagnose` prints where \
         the time goes (each operation rebuilt step by step with raw redis-rs and sqlx, and client + server \
         CPU per hit on a private redis-server).",
    ] {
        let _ = writeln!(md, "- {line}");
    }
    md
}

// ----- main -----

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("benches/scenarios: not run under `cargo test`; use `bash scripts/bench.sh [--quick]`");
        return;
    }
    let diagnose = args.iter().any(|a| a == "--diagnose");
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let profile = value_of("--profile-op").map(|kind| {
        let n = value_of("--ops").and_then(|n| n.parse().ok()).unwrap_or(1000);
        (kind, n)
    });
    let plan = if args.iter().any(|a| a == "--quick") {
        Plan::quick()
    } else {
        Plan::full()
    };
    let out = value_of("--out").map(PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = runtime.block_on(run(plan, diagnose, profile));
    if report.is_empty() {
        return;
    }
    println!("{report}");
    if let Some(path) = out {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).expect("create the report's directory");
        }
        std::fs::write(&path, &report).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("bench: wrote {}", path.display());
    }
}

async fn run(plan: Plan, diagnose: bool, profile: Option<(String, usize)>) -> String {
    let started = Instant::now();
    let mode = match (&profile, diagnose, plan.quick) {
        (Some(_), _, _) => "profile",
        (None, true, _) => "diagnose",
        (None, false, true) => "quick",
        (None, false, false) => "full",
    };
    eprintln!("bench: {mode} run against {} and {}", database_url(), redis_url());
    let db = Db::with_max_connections(10).await;
    db.exec(&format!("CREATE TABLE bench_users {COLUMNS_DDL}")).await;
    let mgr = manager(&redis_url(), |c| c);
    let raw = raw_redis(&redis_url()).await;
    let machine = Machine::probe(&raw, &db.pool, profile.is_none()).await;

    // 100 hot rows, cached three ways: by StoreHaus, raw, and by the `cached` crate.
    let hot = users(100);
    insert(&db.pool, "bench_users", &hot).await;
    let store = Arc::new(GenericStore::<BenchUser>::new(
        db.pool.clone(),
        None,
        Some(CacheParams::new(mgr.clone())),
    ));
    let raw_prefix = format!("{}:raw", mgr.global_prefix());
    let cached = AsyncRedisCache::<String, BenchUser>::builder("cached")
        .namespace(mgr.global_prefix())
        .ttl_secs(3600)
        .connection_string(&redis_url())
        .build()
        .await
        .expect("build the cached crate's AsyncRedisCache");
    let mut conn = raw.clone();
    for u in &hot {
        assert_eq!(store.get_by_id(&u.id).await.expect("get_by_id").as_ref(), Some(u));
        let bytes = rmp_serde::to_vec(u).expect("encode");
        let _: () = redis::cmd("SET")
            .arg(format!("{raw_prefix}:{}", u.id))
            .arg(bytes)
            .arg("EX")
            .arg(3600)
            .query_async(&mut conn)
            .await
            .expect("SET");
        let _ = cached
            .async_cache_set(u.id.to_string(), u.clone())
            .await
            .expect("cached crate set");
    }
    let keys: Vec<String> = hot.iter().map(|u| store.cache_key(&u.id)).collect();
    wait_filled(&raw, &keys).await;

    let shared = Shared {
        store,
        raw,
        cached: Arc::new(cached),
        hot_ids: hot.iter().map(|u| u.id).collect(),
        hot_names: hot.iter().map(|u| u.id.to_string()).collect(),
        hot: hot.into(),
        raw_prefix: raw_prefix.into(),
        pool: db.pool.clone(),
    };

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if diagnose || profile.is_some() {
        match profile {
            Some((kind, n)) => diag::profile_op(&shared, &kind, n).await,
            None => diag::run(&shared, &plan).await,
        }
        let _ = mgr.delete_pattern("*").await;
        drop(shared);
        db.cleanup().await;
        return String::new();
    }
    let before = mgr.get_stats().await.expect("stats");
    hits(&shared, &plan, &mut rows, &mut notes).await;
    spread_hits(&shared, &plan, &mut rows).await;
    get_many(&shared, &plan, &mut rows).await;
    let after = mgr.get_stats().await.expect("stats");
    notes.push(format!(
        "Hit scenarios: {} cache hits and {} misses on the StoreHaus side (every read was a hit: {}).",
        after.hits - before.hits,
        after.misses - before.misses,
        if after.misses == before.misses { "yes" } else { "no" }
    ));
    miss_fill(&shared, &plan, &mut rows).await;
    update(&shared, &plan, &mut rows).await;
    redis_down(&shared, &plan, &mut rows, &mut notes).await;
    cold_burst(&shared, &plan, &mut rows, &mut notes).await;
    codec_rows(&shared, &plan, &mut rows).await;
    metrics_row(&shared, &plan, &mut rows).await;

    // Clean up: every key of this run lives under the manager's global prefix.
    let removed = mgr.delete_pattern("*").await.expect("remove the benchmark's keys");
    eprintln!("bench: removed {removed} keys");
    drop(shared);
    db.cleanup().await;
    render(&machine, &plan, &rows, &notes, started.elapsed())
}

// After the macros, which it uses.
#[path = "scenarios/diag.rs"]
mod diag;
