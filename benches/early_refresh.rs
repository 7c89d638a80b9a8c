//! Early refresh against expiry stampedes (`CacheParams::with_early_refresh`):
//! one hot key with a 1 s TTL, read in a loop by many tasks of several
//! cache managers (processes) sharing one Redis, across several expiries,
//! with and without early refresh. Reports the database loads (per second
//! of the run, and the most in any 100 ms), the reads that waited for
//! another reader's fill lease, and the slowest read.
//!
//! `bash scripts/bench.sh --early` (or `cargo bench --bench early_refresh`;
//! `--profile dev` skips the release build: the counts do not depend on
//! it); the full `bash scripts/bench.sh` run appends its section to
//! BENCHMARKS.md. Under `cargo test --all-targets` this binary only prints
//! how to run it. Nothing here asserts on time.

use std::fmt::Write as _;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus_testkit::{random_name, redis_url, Db};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "hot", prefix = "hot")]
pub struct Hot {
    pub id: i64,
    pub n: i64,
}

const MANAGERS: usize = 4;
const TASKS: usize = 16;
const RUN: Duration = Duration::from_millis(4_500);

fn main() {
    storehaus_testkit::bench::section_main("early_refresh", "--early", report);
}

async fn report() -> String {
    let mut report = format!(
        "## Early refresh\n\nWritten by `bash scripts/bench.sh` (or alone: `--early`). One hot key with a 1 s TTL, \
         {MANAGERS} managers × {TASKS} tasks reading it for {:.1} s, one Redis, PostgreSQL for loads.\n\n\
         | early refresh | DB loads | loads/s | most loads in 100 ms | lease waits | slowest read | reads |\n\
         |---|---|---|---|---|---|---|\n",
        RUN.as_secs_f64()
    );
    for beta in [None, Some(1.0), Some(4.0)] {
        let row = run(beta).await;
        eprintln!("{row}");
        let _ = writeln!(report, "{row}");
    }
    report
}

async fn run(beta: Option<f64>) -> String {
    let db = Db::new().await;
    db.exec("CREATE TABLE hot (id bigint PRIMARY KEY, n bigint NOT NULL)")
        .await;
    db.exec("INSERT INTO hot VALUES (1, 1)").await;
    let global = random_name("bench");
    let start = Instant::now();
    let slowest = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut managers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..MANAGERS {
        let config = CacheConfig::new(redis_url(), 3600, global.clone());
        let manager = Arc::new(CacheManager::new(config).expect("config"));
        let mut params = CacheParams::new(manager.clone()).with_ttl(1);
        if let Some(beta) = beta {
            params = params.with_early_refresh(beta);
        }
        let store = GenericStore::<Hot>::new(db.pool.clone(), None, Some(params));
        managers.push(manager);
        for _ in 0..TASKS {
            let store = store.clone();
            let (slowest, reads) = (slowest.clone(), reads.clone());
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < RUN {
                    let t = Instant::now();
                    store.get_by_id(&1).await.expect("read");
                    slowest.fetch_max(t.elapsed().as_micros() as u64, Relaxed);
                    reads.fetch_add(1, Relaxed);
                }
            }));
        }
    }
    // The loads of every manager, sampled every 100 ms.
    let mut peak = 0;
    let mut last = 0;
    while start.elapsed() < RUN {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut now = 0;
        for m in &managers {
            now += stats_loads(m).await;
        }
        peak = peak.max(now - last);
        last = now;
    }
    for t in tasks {
        t.await.expect("task");
    }
    let (mut loads, mut waits) = (0, 0);
    for m in &managers {
        let s = m.get_stats().await.expect("stats");
        loads += s.misses + s.early_refreshes;
        waits += s.lease_waits;
    }
    let label = beta.map_or("off".to_string(), |b| format!("beta {b}"));
    let row = format!(
        "| {label} | {loads} | {:.1} | {peak} | {waits} | {:.1} ms | {} |",
        loads as f64 / RUN.as_secs_f64(),
        slowest.load(Relaxed) as f64 / 1000.0,
        reads.load(Relaxed)
    );
    for m in &managers {
        let _ = m.delete_pattern("*").await;
    }
    db.cleanup().await;
    row
}

/// Database loads of a manager so far: reads that missed, plus early refreshes.
async fn stats_loads(manager: &CacheManager) -> u64 {
    let s = manager.get_stats().await.expect("stats");
    s.misses + s.early_refreshes
}
