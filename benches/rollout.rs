//! Rolling deploys (issue 24): two versions of a cached record type served
//! at once from one table and one Redis (v2 adds a nullable column).
//!
//! - A simulated rollout: two managers (an old and a new process) read 200
//!   rows alternately, with 2 % of the operations writes by either version;
//!   each version's hit rate, and the stale reads (a read that returns
//!   another row than the database held when the read began, 0 expected).
//! - The cost on a hit, as ratios against a raw `GET` + decode of the same
//!   compact MessagePack row on one connection, measured in the same run:
//!   the version that holds the home key (one `GET`), and the other one
//!   (two `GET`s: the home key, then its side key).
//! - What the live-version registry costs per write: the cache part of a
//!   write (`store.invalidate`: `DEL`, generation bump, with the `ZRANGE`
//!   of the registry in parallel) with no version registered and with one,
//!   against a raw pipeline of the same `DEL` + `SET NX` + `INCR`.
//!
//! `bash scripts/bench.sh --rollout` (or `cargo bench --bench rollout`); the
//! full `bash scripts/bench.sh` run appends its section to BENCHMARKS.md.
//! Under `cargo test --all-targets` this binary only prints how to run it.
//! Nothing here asserts on time.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus::{CacheParams, CacheStats, GenericStore};
use storehaus_testkit::{random_name, raw_redis, redis_url, Db};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "accounts", prefix = "accounts")]
struct V1 {
    id: i64,
    email: String,
    name: String,
    age: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "accounts", prefix = "accounts")]
struct V2 {
    id: i64,
    email: String,
    name: String,
    age: i32,
    nickname: Option<String>,
}

const ROWS: i64 = 200;
const OPS: usize = 2_000;
const ROUNDS: usize = 15;

fn main() {
    storehaus_testkit::bench::section_main("rollout", "--rollout", report);
}

struct World {
    db: Db,
    old: Arc<CacheManager>,
    new: Arc<CacheManager>,
    v1: GenericStore<V1>,
    v2: GenericStore<V2>,
    raw: MultiplexedConnection,
    global: String,
}

async fn world() -> World {
    let db = Db::with_max_connections(10).await;
    db.exec("CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL, name text NOT NULL, age int NOT NULL, nickname text)")
        .await;
    db.exec(&format!(
        "INSERT INTO accounts SELECT g, g || '@example.com', 'user ' || g, 30, NULL FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let global = random_name("bench");
    let process = || Arc::new(CacheManager::new(CacheConfig::new(redis_url(), 3600, global.clone())).expect("config"));
    let (old, new) = (process(), process());
    let v1 = GenericStore::new(db.pool.clone(), None, Some(CacheParams::new(old.clone())));
    let v2 = GenericStore::new(db.pool.clone(), None, Some(CacheParams::new(new.clone())));
    let raw = raw_redis(&redis_url()).await;
    World {
        db,
        old,
        new,
        v1,
        v2,
        raw,
        global,
    }
}

async fn report() -> String {
    let w = world().await;
    let mut out = String::from(
        "## Rolling deploys\n\nWritten by `bash scripts/bench.sh` (or alone: `--rollout`). Two versions of a \
         record type (v2 adds a nullable column) on one table, two managers (processes) on one Redis, \
         PostgreSQL; see `docs/FORMAT.md`.\n\n",
    );
    rollout(&w, &mut out).await;
    hit_cost(&w, &mut out).await;
    write_cost(&w, &mut out).await;
    let _ = w.old.delete_pattern("*").await;
    w.db.cleanup().await;
    out
}

/// Alternating reads with 2 % writes by either version: hit rates, stale reads.
async fn rollout(w: &World, out: &mut String) {
    // Both versions warm (the old one was there first).
    for id in 1..=ROWS {
        w.v1.get_by_id(&id).await.expect("read");
    }
    w.old.flush_fills().await;
    for id in 1..=ROWS {
        w.v2.get_by_id(&id).await.expect("read");
    }
    w.new.flush_fills().await;
    let (b1, b2) = (w.v1.stats().expect("stats"), w.v2.stats().expect("stats"));
    let (mut stale, mut writes, mut version) = (0u64, 0u64, 0i32);
    for i in 0..10 * ROWS as usize * 2 {
        // v1 and v2 read each id in turn.
        let id = ((i / 2) as i64 * 7919) % ROWS + 1;
        if i % 50 == 49 {
            version += 1;
            writes += 1;
            if i % 100 == 99 {
                let mut row = w.v1.get_by_id(&id).await.expect("read").expect("row");
                row.age = 30 + version;
                w.v1.update(&id, row, None).await.expect("update");
            } else {
                let mut row = w.v2.get_by_id(&id).await.expect("read").expect("row");
                row.age = 30 + version;
                w.v2.update(&id, row, None).await.expect("update");
            }
            continue;
        }
        let want: i32 = sqlx::query_scalar("SELECT age FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_one(&w.db.pool)
            .await
            .expect("db");
        let got = if i % 2 == 0 {
            w.v1.get_by_id(&id).await.expect("read").map(|r| r.age)
        } else {
            w.v2.get_by_id(&id).await.expect("read").map(|r| r.age)
        };
        stale += u64::from(got != Some(want));
    }
    let rate = |b: &CacheStats, a: &CacheStats| {
        let (h, m) = (a.hits - b.hits, a.misses - b.misses);
        h as f64 * 100.0 / (h + m).max(1) as f64
    };
    let (a1, a2) = (w.v1.stats().expect("stats"), w.v2.stats().expect("stats"));
    let new = w.new.get_stats().await.expect("stats");
    let _ = writeln!(
        out,
        "Simulated rollout: both versions warm, then {} operations on {ROWS} rows, v1 and v2 reading each \
         row in turn, {writes} of them writes by either version (each makes the next read of the row by \
         each version a miss); every read also reads the row from the database to check it.\n\n\
         | version | hit rate | stale reads |\n|---|---:|---:|\n\
         | v1 (old process) | {:.1} % | {stale} in all |\n| v2 (new process) | {:.1} % | |\n\n\
         v2 met v1's entry at the home key {} times and registered itself {} times.\n",
        10 * ROWS * 2,
        rate(&b1, &a1),
        rate(&b2, &a2),
        new.foreign_entries,
        new.version_registrations,
    );
}

/// What one measured operation is.
#[derive(Clone, Copy)]
enum Op {
    RawGet,
    HomeHit,
    SideHit,
    RawInvalidate,
    RawInvalidateAndRegistry,
    InvalidateQuiet,
    InvalidateRollout,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::RawGet => "raw GET + decode",
            Op::HomeHit => "v1 hit (home key)",
            Op::SideHit => "v2 hit (side key: the home key, then its own)",
            Op::RawInvalidate => "raw DEL + SET NX + INCR (one pipeline)",
            Op::RawInvalidateAndRegistry => "the same, and ZRANGE of the registry in parallel",
            Op::InvalidateQuiet => "invalidate, no version registered",
            Op::InvalidateRollout => "invalidate, one other version registered",
        }
    }
}

async fn run_op(w: &World, quiet: &GenericStore<V1>, op: Op, id: i64) {
    let mut conn = w.raw.clone();
    match op {
        Op::RawGet => {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("{}:raw:{id}", w.global))
                .query_async(&mut conn)
                .await
                .expect("GET");
            black_box(rmp_serde::from_slice::<V1>(&bytes.expect("raw key")).expect("decode"));
        }
        Op::HomeHit => {
            black_box(w.v1.get_by_id(&id).await.expect("read").expect("row"));
        }
        Op::SideHit => {
            black_box(w.v2.get_by_id(&id).await.expect("read").expect("row"));
        }
        Op::RawInvalidate => raw_invalidate(w, id).await,
        Op::RawInvalidateAndRegistry => {
            let registry = redis::cmd("ZRANGE")
                .arg(format!("{}:__versions:quiet", w.global))
                .arg(0)
                .arg(-1)
                .to_owned();
            let (_, tags) = tokio::join!(raw_invalidate(w, id), async {
                registry.query_async::<Vec<String>>(&mut conn).await.expect("ZRANGE")
            });
            black_box(tags);
        }
        Op::InvalidateQuiet => quiet.invalidate(&id).await,
        Op::InvalidateRollout => w.v1.invalidate(&id).await,
    }
}

async fn raw_invalidate(w: &World, id: i64) {
    let mut conn = w.raw.clone();
    let generation = format!("{}:quiet:query:gen", w.global);
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(format!("{}:quiet:{id}", w.global));
    pipe.cmd("SET").arg(&generation).arg(1).arg("NX").ignore();
    pipe.cmd("INCR").arg(&generation);
    let _: (u64, u64) = pipe.query_async(&mut conn).await.expect("pipeline");
}

/// Median µs per operation over `ROUNDS` interleaved rounds of each op
/// (after one warm-up round).
async fn measure(w: &World, quiet: &GenericStore<V1>, ops: &[Op]) -> Vec<f64> {
    let mut samples = vec![Vec::new(); ops.len()];
    for round in 0..=ROUNDS {
        for (j, op) in ops.iter().enumerate() {
            let start = Instant::now();
            for i in 0..OPS {
                run_op(w, quiet, *op, (i as i64 * 7919) % ROWS + 1).await;
            }
            if round > 0 {
                samples[j].push(start.elapsed().as_secs_f64() * 1e6 / OPS as f64);
            }
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect()
}

fn table(out: &mut String, ops: &[Op], medians: &[f64]) {
    for (op, us) in ops.iter().zip(medians) {
        let _ = writeln!(out, "| {} | {us:.1} | {:.2} |", op.name(), us / medians[0]);
    }
    out.push('\n');
}

/// A store whose registry stays empty (no rollout under its prefix).
fn quiet_store(w: &World) -> GenericStore<V1> {
    GenericStore::new(
        w.db.pool.clone(),
        None,
        Some(CacheParams::new(w.old.clone()).with_prefix("quiet")),
    )
}

async fn hit_cost(w: &World, out: &mut String) {
    // v1 holds the home keys, v2 its side keys; the raw keys hold the same
    // compact MessagePack row.
    for id in 1..=ROWS {
        w.v1.get_by_id(&id).await.expect("read");
    }
    w.old.flush_fills().await;
    for id in 1..=ROWS {
        w.v2.get_by_id(&id).await.expect("read");
    }
    w.new.flush_fills().await;
    let mut raw = w.raw.clone();
    for id in 1..=ROWS {
        let row = w.v1.get_by_id(&id).await.expect("read").expect("row");
        let _: () = redis::cmd("SET")
            .arg(format!("{}:raw:{id}", w.global))
            .arg(rmp_serde::to_vec(&row).expect("encode"))
            .query_async(&mut raw)
            .await
            .expect("SET");
    }
    let ops = [Op::RawGet, Op::HomeHit, Op::SideHit];
    let (h1, h2) = (w.v1.stats().expect("stats"), w.v2.stats().expect("stats"));
    let medians = measure(w, &quiet_store(w), &ops).await;
    let (a1, a2) = (w.v1.stats().expect("stats"), w.v2.stats().expect("stats"));
    assert_eq!(
        (a1.misses, a2.misses),
        (h1.misses, h2.misses),
        "every measured read was a hit"
    );
    let side_reads = a2.foreign_entries - h2.foreign_entries;
    let _ = writeln!(
        out,
        "Cost on a hit: one task, {OPS} reads per round, median of {ROUNDS} interleaved rounds (µs per read); \
         every measured read was a hit, and {side_reads} of v2's found v1's entry at the home key first.\n\n\
         | read | µs | ratio vs raw |\n|---|---:|---:|"
    );
    table(out, &ops, &medians);
}

async fn write_cost(w: &World, out: &mut String) {
    let registry = format!("{}:__versions:accounts", w.global);
    let mut raw = w.raw.clone();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&registry)
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .expect("ZRANGE");
    let ops = [
        Op::RawInvalidate,
        Op::RawInvalidateAndRegistry,
        Op::InvalidateQuiet,
        Op::InvalidateRollout,
    ];
    let medians = measure(w, &quiet_store(w), &ops).await;
    let _ = writeln!(
        out,
        "What the registry costs per write: the cache part of a write (`store.invalidate`: the same \
         invalidation as a committed write's: `DEL`, generation bump, and the registry's `ZRANGE` in \
         parallel), one task, {OPS} per round, median of {ROUNDS} interleaved rounds. The rollout's \
         registry held {members:?}.\n\n\
         | invalidation | µs | ratio vs raw |\n|---|---:|---:|"
    );
    table(out, &ops, &medians);
}
