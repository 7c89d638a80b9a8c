//! The fault matrix: the latency of one store read (`get_by_id` of a row
//! that was cached) under each Redis fault: BENCHMARKS.md, "What a fault
//! costs" (docs/faults.md links to it).
//!
//! `bash scripts/bench.sh --faults` (release build, about a minute) prints
//! it; the full `bash scripts/bench.sh` run appends it to BENCHMARKS.md
//! (`--append PATH`). Under `cargo test --all-targets` this binary only
//! prints how to run it.
//!
//! Every fault runs on a private `redis-server` on a free loopback port,
//! with the managers `tests/test_faults.rs` holds to their bounds
//! ([`fault_manager`]: a 200 ms budget, 2 retries 5 ms apart): none, a
//! healthy cache, a corrupt entry under every read, out of memory, Redis
//! killed and stalled (SIGSTOP) with the circuit breaker on and off, a
//! wrong password. Each is 400 sequential reads cycling over 50 rows (20
//! where every read waits out a stall). Nothing here asserts on time; the program prints a
//! Markdown table with p50 and p99, and p99 against healthy hits and against
//! no cache at all.

use std::time::Duration;

use storehaus::prelude::*;
use storehaus_testkit::faults::{fault_manager, store_on, timed, warm, TIMEOUT_MS};
use storehaus_testkit::records::items::{items_db, Item};
use storehaus_testkit::{raw_redis, set_raw, starve, stats, RedisServer};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/faults: not run under `cargo test`; use `bash scripts/bench.sh --faults`");
        return;
    }
    // As the fault tests run: a multi-thread runtime with 2 workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let section = runtime.block_on(fault_matrix());
    storehaus_testkit::bench::print_and_append("faults", &section);
}

/// `n` sequential reads of cached rows, sorted by latency.
async fn sample(store: &GenericStore<Item>, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = (i % 50) as i64;
        let (got, took) = timed(store.get_by_id(&id)).await;
        got.unwrap();
        out.push(took);
    }
    out.sort();
    out
}

/// Reads until the breaker is open: how many reads it took and the slowest.
async fn until_open(store: &GenericStore<Item>, manager: &CacheManager) -> (usize, Duration) {
    let (mut n, mut worst) = (0, Duration::ZERO);
    while !stats(manager).await.breaker_open {
        let (got, took) = timed(store.get_by_id(&((n % 50) as i64))).await;
        got.unwrap();
        worst = worst.max(took);
        n += 1;
    }
    (n, worst)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    ms(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize])
}

/// Latency of one store read (`get_by_id` of a row that was cached) under
/// each fault: the BENCHMARKS.md section, a Markdown table.
async fn fault_matrix() -> String {
    const N: usize = 400;
    let db = items_db(50).await;
    // (fault, what the user sees, sorted latencies, note)
    let mut rows: Vec<(String, &str, Vec<Duration>, String)> = Vec::new();

    let plain = GenericStore::<Item>::new(db.pool.clone(), None, None);
    sample(&plain, 100).await;
    rows.push((
        "none, no cache (database only)".into(),
        "rows from the database",
        sample(&plain, N).await,
        String::new(),
    ));

    {
        let server = RedisServer::start().await;
        let manager = fault_manager(&server.url(), 5, 60_000);
        let store = store_on(&db, &manager);
        warm(&store, &server.url(), 0..50).await;
        sample(&store, 100).await;
        rows.push((
            "none, healthy cache (hits)".into(),
            "cached rows",
            sample(&store, N).await,
            String::new(),
        ));

        let mut redis = raw_redis(&server.url()).await;
        let mut bad = Vec::with_capacity(N);
        for i in 0..N {
            let id = (i % 50) as i64;
            set_raw(&mut redis, &store.cache_key(&id), b"garbage").await;
            bad.push(timed(store.get_by_id(&id)).await.1);
        }
        bad.sort();
        rows.push((
            "corrupt entry under every read".into(),
            "database row; serialization_errors; entry replaced",
            bad,
            String::new(),
        ));

        warm(&store, &server.url(), 0..50).await;
        starve(&mut redis).await;
        let s0 = stats(&manager).await.command_errors;
        let oom = sample(&store, N).await;
        let errors = stats(&manager).await.command_errors - s0;
        rows.push((
            "out of memory (maxmemory 1mb, noeviction)".into(),
            "cached rows (reads are plain GETs); writes' invalidations refused and counted",
            oom,
            format!("{errors} command_errors, breaker stays closed"),
        ));
    }

    for (fault, kill) in [("redis killed", true), ("redis stalled (SIGSTOP)", false)] {
        for breaker_on in [true, false] {
            let mut server = RedisServer::start().await;
            let threshold = if breaker_on { 5 } else { u32::MAX };
            let manager = fault_manager(&server.url(), threshold, 60_000);
            let store = store_on(&db, &manager);
            warm(&store, &server.url(), 0..50).await;
            if kill {
                server.kill();
            } else {
                server.pause();
            }
            let (name, note, n) = if breaker_on {
                let (calls, worst) = until_open(&store, &manager).await;
                (
                    format!("{fault}, breaker open"),
                    format!("breaker opened after {calls} reads, slowest {:.1} ms", ms(worst)),
                    N,
                )
            } else {
                (
                    "breaker off: ".to_string() + fault,
                    "every read pays the fault".to_string(),
                    if kill { N } else { 20 },
                )
            };
            rows.push((name, "database rows", sample(&store, n).await, note));
            server.resume();
        }
    }

    {
        let server = RedisServer::start_with(&["--requirepass", "right-pw"]).await;
        let url = format!("redis://:wrong-pw@127.0.0.1:{}", server.port);
        let manager = fault_manager(&url, 5, 60_000);
        let store = store_on(&db, &manager);
        let (calls, worst) = until_open(&store, &manager).await;
        rows.push((
            "wrong password, breaker open".into(),
            "database rows; connection_errors",
            sample(&store, N).await,
            format!("breaker opened after {calls} reads, slowest {:.1} ms", ms(worst)),
        ));
    }

    let healthy = pct(&rows[1].2, 0.99);
    let database = pct(&rows[0].2, 0.99);
    let mut out = format!(
        "## What a fault costs\n\n\
         Written by `bash scripts/bench.sh` (or alone: `--faults`) on {}. `benches/faults.rs`, release build: \
         sequential `get_by_id` calls cycling over 50 cached rows, each fault on a private redis-server, \
         a {TIMEOUT_MS} ms budget, 2 retries 5 ms apart (the managers of tests/test_faults.rs). \
         p99 is noisy on a shared machine: one outlier in 100 decides it.\n\n\
         | fault | what the user sees | n | p50 ms | p99 ms | p99 +vs hits | p99 +vs no cache | note |\n\
         |---|---|---|---|---|---|---|---|\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    for (name, sees, d, note) in &rows {
        let p99 = pct(d, 0.99);
        out.push_str(&format!(
            "| {name} | {sees} | {} | {:.2} | {:.2} | {:+.2} | {:+.2} | {note} |\n",
            d.len(),
            pct(d, 0.5),
            p99,
            p99 - healthy,
            p99 - database
        ));
    }
    db.cleanup().await;
    out
}
