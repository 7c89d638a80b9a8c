//! Read replicas (`GenericStore::with_read_replica`) on a private primary
//! and a hot standby of it (`PgServer::standby_of`): what a replica marker
//! costs a write and a miss, the share of miss loads a caught-up standby
//! serves in a read-heavy mix, and the primary's load with and without it.
//!
//! `bash scripts/bench.sh --replica` (release build, about two minutes); the
//! full `bash scripts/bench.sh` run appends its section to BENCHMARKS.md.
//! Under `cargo test --all-targets` this binary only prints how to run it.
//! Nothing here asserts on time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus_testkit::{manager, redis_url, PgServer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "items", prefix = "items")]
pub struct Item {
    pub id: i64,
    pub n: i64,
    pub body: String,
}

const ROWS: i64 = 20_000;
const SAMPLES: usize = 2_000;
const ROUNDS: usize = 5;
const MIX_TASKS: usize = 8;
const MIX_FOR: Duration = Duration::from_secs(10);
/// How long an idle backend may keep its statistics before it reports them
/// (`PGSTAT_IDLE_INTERVAL`, 10 s), and a margin.
const STATS_FLUSH: Duration = Duration::from_secs(11);
/// Reads per write in the mix.
const READS_PER_WRITE: u64 = 9;

fn main() {
    storehaus_testkit::bench::section_main("replica", "--replica", run);
}

async fn pool(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("connect")
}

fn store(pool: &PgPool, manager: &Arc<CacheManager>) -> GenericStore<Item> {
    GenericStore::<Item>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())))
}

async fn run() -> String {
    eprintln!("bench: replica on a private primary + standby, Redis {}", redis_url());
    let primary = PgServer::start();
    let db = pool(&primary.url(), 20).await;
    sqlx::query("CREATE TABLE items (id bigint PRIMARY KEY, n bigint NOT NULL, body text NOT NULL)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO items SELECT g, 0, repeat('x', 200) FROM generate_series(1, $1) g")
        .bind(ROWS)
        .execute(&db)
        .await
        .unwrap();
    let standby = PgServer::standby_of(&primary);
    let replica = pool(&standby.url(), 20).await;

    let mut out = String::new();
    let _ = writeln!(out, "## Read replicas\n");
    let _ = writeln!(
        out,
        "`bash scripts/bench.sh --replica` (benches/replica.rs), one run: a private PostgreSQL \
         primary and a hot standby of it (`pg_basebackup -R`, both on this machine, `fsync=off`), \
         Redis {}, a {ROWS}-row table (200-byte rows), release build.\n",
        redis_url()
    );
    marker_costs(&db, &replica, &mut out).await;
    mixes(&db, &replica, &mut out).await;
    drop(standby);
    drop(primary);
    out
}

/// p50 and p99 of `samples`, in µs.
fn p50_p99(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// A write and a miss with a marker against the same without one.
async fn marker_costs(db: &PgPool, replica: &PgPool, out: &mut String) {
    let plain_mgr = manager();
    let marked_mgr = manager();
    let plain = store(db, &plain_mgr);
    let marked = store(db, &marked_mgr).with_read_replica(replica.clone());
    // The same standby without markers: a miss's cost without the marker read.
    let standby_mgr = manager();
    let on_standby = store(replica, &standby_mgr);
    tokio::time::sleep(Duration::from_millis(500)).await; // the pollers' first samples

    let (mut w_plain, mut w_marked) = (Vec::new(), Vec::new());
    let (mut m_primary, mut m_standby, mut m_marked) = (Vec::new(), Vec::new(), Vec::new());
    let per_round = SAMPLES / ROUNDS;
    let mut id = 0i64;
    for _ in 0..ROUNDS {
        for (s, into) in [(&plain, &mut w_plain), (&marked, &mut w_marked)] {
            for _ in 0..per_round {
                id = id % ROWS + 1;
                let row = Item {
                    id,
                    n: id,
                    body: "x".repeat(200),
                };
                let t = Instant::now();
                s.update(&id, row, None).await.unwrap();
                into.push(t.elapsed());
            }
        }
        // Misses of rows nobody wrote lately: marked misses then load from the standby.
        for (s, into) in [
            (&plain, &mut m_primary),
            (&on_standby, &mut m_standby),
            (&marked, &mut m_marked),
        ] {
            let mgr = s.cache_manager().unwrap();
            for k in 0..per_round {
                let id = ROWS - k as i64;
                mgr.delete_record("items", &id.to_string()).await.unwrap();
                let t = Instant::now();
                s.get_by_id(&id).await.unwrap();
                into.push(t.elapsed());
            }
        }
    }
    let stats = marked.replica_stats().unwrap();
    let (wp, wp99) = p50_p99(w_plain);
    let (wm, wm99) = p50_p99(w_marked);
    let (mp, mp99) = p50_p99(m_primary);
    let (ms, ms99) = p50_p99(m_standby);
    let (mm, mm99) = p50_p99(m_marked);
    let _ = writeln!(
        out,
        "What a replica marker costs ({SAMPLES} of each, interleaved in {ROUNDS} rounds):\n"
    );
    let _ = writeln!(out, "| operation | p50 µs | p99 µs | p50 vs. without |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let _ = writeln!(out, "| `update`, no replica | {wp:.0} | {wp99:.0} | 1.00x |");
    let _ = writeln!(
        out,
        "| `update` of a store with a replica (commit position read + marker in the invalidation) | {wm:.0} | {wm99:.0} | {:.2}x |",
        wm / wp
    );
    let _ = writeln!(
        out,
        "| miss loaded from the primary, no replica | {mp:.0} | {mp99:.0} | — |"
    );
    let _ = writeln!(
        out,
        "| miss loaded from the standby, no marker (a store on the standby's pool) | {ms:.0} | {ms99:.0} | 1.00x |"
    );
    let _ = writeln!(
        out,
        "| miss of a store with a replica (marker read, then the standby) | {mm:.0} | {mm99:.0} | {:.2}x |",
        mm / ms
    );
    let _ = writeln!(
        out,
        "\nThe marked misses ran on the standby {} times, on the primary {} times (the rows read were not written in the run).\n",
        stats.replica_loads, stats.primary_loads
    );
    for m in [&plain_mgr, &marked_mgr, &standby_mgr] {
        let _ = m.delete_pattern("*").await;
    }
}

/// Transactions committed on a server so far (`pg_stat_database`).
async fn xacts(pool: &PgPool) -> i64 {
    // The statistics a backend reports are flushed at most once a second.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT sum(xact_commit + xact_rollback)::int8 FROM pg_stat_database")
        .fetch_one(pool)
        .await
        .unwrap()
}

struct Mix {
    ops: u64,
    primary_xacts: i64,
    standby_xacts: i64,
    stats: Option<storehaus::ReplicaStats>,
    hit_rate: f64,
}

/// The read-heavy mix on a cold cache: `MIX_TASKS` tasks, 9 reads per
/// update, ids uniform over the table, for `MIX_FOR`.
async fn mix(store: GenericStore<Item>, db: &PgPool, replica: &PgPool) -> Mix {
    tokio::time::sleep(STATS_FLUSH).await;
    let (p0, s0) = (xacts(db).await, xacts(replica).await);
    let ops = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + MIX_FOR;
    let tasks: Vec<_> = (0..MIX_TASKS as u64)
        .map(|t| {
            let store = store.clone();
            let ops = ops.clone();
            tokio::spawn(async move {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                let mut i = 0u64;
                while Instant::now() < until {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = (x % ROWS as u64) as i64 + 1;
                    if i % (READS_PER_WRITE + 1) == READS_PER_WRITE {
                        let row = Item {
                            id,
                            n: i as i64,
                            body: "y".repeat(200),
                        };
                        store.update(&id, row, None).await.unwrap();
                    } else {
                        store.get_by_id(&id).await.unwrap();
                    }
                    i += 1;
                }
                ops.fetch_add(i, Ordering::Relaxed);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(STATS_FLUSH).await;
    let (p1, s1) = (xacts(db).await, xacts(replica).await);
    let stats = store.stats().unwrap();
    Mix {
        ops: ops.load(Ordering::Relaxed),
        primary_xacts: p1 - p0,
        standby_xacts: s1 - s0,
        stats: store.replica_stats(),
        hit_rate: stats.hit_rate(),
    }
}

async fn mixes(db: &PgPool, replica: &PgPool, out: &mut String) {
    let without_mgr = manager();
    let without = mix(store(db, &without_mgr), db, replica).await;
    let with_mgr = manager();
    let with = mix(store(db, &with_mgr).with_read_replica(replica.clone()), db, replica).await;
    let stats = with.stats.unwrap_or_default();
    let misses = stats.replica_loads + stats.primary_loads;
    let share = stats.replica_loads as f64 / misses.max(1) as f64;
    let per_k = |x: i64, ops: u64| x as f64 * 1000.0 / ops.max(1) as f64;
    let _ = writeln!(
        out,
        "A read-heavy mix on a cold cache ({MIX_TASKS} tasks for {MIX_FOR:?}, {READS_PER_WRITE} `get_by_id` per `update`, \
         ids uniform over the {ROWS} rows), once without and once with the standby, the standby caught up:\n"
    );
    let _ = writeln!(
        out,
        "| | store ops | hit rate | primary transactions | per 1 000 ops | standby transactions |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (name, m) in [("without a replica", &without), ("with the standby", &with)] {
        let _ = writeln!(
            out,
            "| {name} | {} | {:.1} % | {} | {:.0} | {} |",
            m.ops,
            m.hit_rate * 100.0,
            m.primary_xacts,
            per_k(m.primary_xacts, m.ops),
            m.standby_xacts
        );
    }
    let _ = writeln!(
        out,
        "\nWith the standby, {} of {misses} miss loads ran on it: **{:.1} %** ({} on the primary, {} fell back). \
         The primary's transactions per 1 000 store operations went from {:.0} to {:.0} ({:.2}x); what remains \
         is the writes, their commit-position reads, the misses of rows written within the last poll interval \
         and the position samples (10 a second). The standby's count includes its replay polls (50 a second); both counts include \
         this bench's own statistics reads (a handful).\n",
        stats.replica_loads,
        share * 100.0,
        stats.primary_loads,
        stats.fallbacks,
        per_k(without.primary_xacts, without.ops),
        per_k(with.primary_xacts, with.ops),
        per_k(with.primary_xacts, with.ops) / per_k(without.primary_xacts, without.ops).max(1e-9)
    );
    for m in [&without_mgr, &with_mgr] {
        let _ = m.delete_pattern("*").await;
    }
}
