//! The soak run: a mixed workload (reads, batch reads, writes, queries,
//! tags, signals) through several cache managers for a fixed time, against
//! a private `redis-server` with `maxmemory` + `allkeys-lru` that is
//! restarted periodically. Every few seconds it samples the process's RSS,
//! its tokio tasks, Redis' connected clients, key count and memory; at the
//! end it fails if any of them grew without bound (the last quarter of the
//! run against the first, after a warm-up) or if any read was stale.
//!
//! `bash scripts/soak.sh [SECONDS]` (release build; default 600 s). Not in
//! CI; under `cargo test --all-targets` this binary only prints how to run it.
//!
//! Stale reads: each worker writes only its own ids, so it knows their
//! current version; a read of one of its own ids must return it (in the
//! writing process this holds even when an invalidation could not reach
//! Redis). Reads of other workers' ids, in other managers, must not go
//! below the version whose write had returned before the read began; the
//! promise holds there only when the invalidation reached Redis, so those
//! are counted apart, with the managers' pending invalidations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storehaus::prelude::*;
use storehaus::{CacheStats, Query};
use storehaus_testkit::records::items::{item, items_db, Item};
use storehaus_testkit::{random_name, raw_redis, RedisServer};

const MANAGERS: usize = 3;
const WORKERS_PER_MANAGER: usize = 2;
const IDS_PER_WORKER: i64 = 200;
/// Small enough that `allkeys-lru` evicts all the time.
const MAXMEMORY_MB: u64 = 2;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/soak: not run under `cargo test`; use `bash scripts/soak.sh [SECONDS]`");
        return;
    }
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ok = runtime.block_on(soak(Duration::from_secs(secs)));
    if !ok {
        std::process::exit(1);
    }
}

/// What every worker counts.
#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    errors: AtomicU64,
    own_stale: AtomicU64,
    cross_stale: AtomicU64,
    signals: AtomicU64,
}

/// A sampled quantity: its name, how to read it, how much growth is noise.
type Growth = (&'static str, fn(&Sample) -> u64, u64);

/// One sample of the run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: u64,
    rss_kb: u64,
    tasks: usize,
    clients: u64,
    keys: u64,
    redis_kb: u64,
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// `INFO` fields as numbers; zeros while the server is restarting.
async fn redis_info(url: &str) -> (u64, u64, u64) {
    let Ok(client) = redis::Client::open(url) else {
        return (0, 0, 0);
    };
    let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
    else {
        return (0, 0, 0);
    };
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap_or_default();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let keys = info
        .lines()
        .find_map(|l| l.strip_prefix("db0:keys="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // This connection is one of the clients.
    (
        field("connected_clients").saturating_sub(1),
        keys,
        field("used_memory") / 1024,
    )
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    store: GenericStore<Item>,
    manager: Arc<CacheManager>,
    own: Vec<i64>,
    all: i64,
    returned: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    seed: u64,
) {
    let mut current: Vec<i32> = vec![0; own.len()];
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let c = Item::columns();
    while !stop.load(Ordering::Relaxed) {
        let r = next();
        let ok = match r % 20 {
            // Reads of an own id: must be exactly the last write.
            0..=5 => {
                let i = (next() % own.len() as u64) as usize;
                match store.get_by_id(&own[i]).await {
                    Ok(got) => {
                        if got.map(|g| g.version) != Some(current[i]) {
                            tally.own_stale.fetch_add(1, Ordering::Relaxed);
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
            // Reads of anyone's id: never below the last returned write.
            6..=11 => {
                let id = (next() % all as u64) as i64;
                let floor = returned[id as usize].load(Ordering::Acquire);
                match store.get_by_id(&id).await {
                    Ok(Some(got)) => {
                        if (got.version as u64) < floor {
                            tally.cross_stale.fetch_add(1, Ordering::Relaxed);
                        }
                        true
                    }
                    Ok(None) => false,
                    Err(_) => false,
                }
            }
            12..=13 => {
                let ids: Vec<i64> = (0..8).map(|_| (next() % all as u64) as i64).collect();
                store.get_many(&ids).await.is_ok()
            }
            // Writes, some tagged.
            14..=16 => {
                let i = (next() % own.len() as u64) as usize;
                let id = own[i];
                let v = current[i] + 1;
                let tags = (r % 3 == 0).then(|| vec![format!("group:{}", id % 10)]);
                match store.update(&id, item(id, v), tags).await {
                    Ok(_) => {
                        current[i] = v;
                        returned[id as usize].fetch_max(v as u64, Ordering::AcqRel);
                        true
                    }
                    Err(_) => false,
                }
            }
            17..=18 => {
                let low = (next() % all as u64) as i64;
                let q = Query::new().filter(c.id.ge(low).and(c.id.lt(low + 20))).limit(20);
                store.find(q).await.is_ok()
            }
            _ => {
                // A manual operation: its cache errors are its own (the
                // server may be restarting), not a failed store call.
                let tag = format!("group:{}", next() % 10);
                let _ = manager.invalidate_tag(&tag).await;
                true
            }
        };
        tally.ops.fetch_add(1, Ordering::Relaxed);
        if !ok {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn soak(duration: Duration) -> bool {
    let maxmemory = format!("{MAXMEMORY_MB}mb");
    let mut server = RedisServer::start_with(&["--maxmemory", &maxmemory, "--maxmemory-policy", "allkeys-lru"]).await;
    let url = server.url();
    let workers = MANAGERS * WORKERS_PER_MANAGER;
    let all = workers as i64 * IDS_PER_WORKER;
    let db = items_db(all).await;
    let prefix = random_name("soak");
    let signals = Arc::new(SignalManager::new(1024));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let returned: Arc<Vec<AtomicU64>> = Arc::new((0..all).map(|_| AtomicU64::new(0)).collect());

    // Signals: a subscriber that counts events (and must keep up or lag, never block writers).
    let mut rx = signals.subscribe();
    let counted = tally.clone();
    let listener = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(_) => {
                    counted.signals.fetch_add(1, Ordering::Relaxed);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });

    let mut managers = Vec::new();
    let mut handles = Vec::new();
    for m in 0..MANAGERS {
        let config = CacheConfig::new(url.clone(), 300, prefix.clone())
            .with_timeout(500)
            .with_retry_attempts(1)
            .with_pool_size(4)
            .with_circuit_breaker(5, 500);
        let manager = Arc::new(CacheManager::new(config).expect("cache config"));
        let store = GenericStore::<Item>::new(
            db.pool.clone(),
            Some(signals.clone()),
            Some(CacheParams::new(manager.clone())),
        );
        for w in 0..WORKERS_PER_MANAGER {
            let n = (m * WORKERS_PER_MANAGER + w) as i64;
            let own: Vec<i64> = (n * IDS_PER_WORKER..(n + 1) * IDS_PER_WORKER).collect();
            handles.push(tokio::spawn(worker(
                store.clone(),
                manager.clone(),
                own,
                all,
                returned.clone(),
                stop.clone(),
                tally.clone(),
                0x9E37_79B9_7F4A_7C15 ^ (n as u64 + 1),
            )));
        }
        managers.push(manager);
    }

    let start = Instant::now();
    let interval = Duration::from_secs(5);
    let restart_every = Duration::from_secs(60);
    let mut last_restart = Instant::now();
    let mut restarts = 0;
    let mut samples: Vec<Sample> = Vec::new();
    println!("| t (s) | RSS (MB) | tokio tasks | Redis clients | Redis keys | Redis memory (MB) | ops/s |");
    println!("|---|---|---|---|---|---|---|");
    let mut last_ops = 0;
    while start.elapsed() < duration {
        tokio::time::sleep(interval).await;
        if last_restart.elapsed() >= restart_every {
            server.restart().await;
            last_restart = Instant::now();
            restarts += 1;
        }
        let (clients, keys, redis_kb) = redis_info(&url).await;
        let ops = tally.ops.load(Ordering::Relaxed);
        let s = Sample {
            at_s: start.elapsed().as_secs(),
            rss_kb: rss_kb(),
            tasks: tokio::runtime::Handle::current().metrics().num_alive_tasks(),
            clients,
            keys,
            redis_kb,
        };
        println!(
            "| {} | {:.1} | {} | {} | {} | {:.1} | {} |",
            s.at_s,
            s.rss_kb as f64 / 1024.0,
            s.tasks,
            s.clients,
            s.keys,
            s.redis_kb as f64 / 1024.0,
            (ops - last_ops) / interval.as_secs()
        );
        last_ops = ops;
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("a worker panicked");
    }
    listener.abort();

    // Unbounded growth: the last quarter's maximum against the first
    // quarter's maximum (after the first 30 s), with an allowance.
    let warm: Vec<Sample> = samples.iter().copied().filter(|s| s.at_s >= 30).collect();
    let mut ok = true;
    let mut verdicts = Vec::new();
    if warm.len() >= 8 {
        let q = warm.len() / 4;
        let (first, last) = (&warm[..q], &warm[warm.len() - q..]);
        let max = |xs: &[Sample], f: fn(&Sample) -> u64| xs.iter().map(f).max().unwrap_or(0);
        let checks: [Growth; 4] = [
            ("RSS (kB)", |s| s.rss_kb, 20 * 1024),
            ("tokio tasks", |s| s.tasks as u64, 50),
            ("Redis clients", |s| s.clients, 8),
            ("Redis memory (kB)", |s| s.redis_kb, 512),
        ];
        for (name, f, allowance) in checks {
            let (a, b) = (max(first, f), max(last, f));
            let grew = b > a + allowance && b > a + a / 2;
            verdicts.push(format!(
                "{name}: first quarter max {a}, last quarter max {b}: {}",
                if grew { "GREW" } else { "bounded" }
            ));
            ok &= !grew;
        }
    } else {
        verdicts.push("too short to judge growth (needs 70 s or more)".to_string());
    }
    let maxmem_kb = MAXMEMORY_MB * 1024;
    let redis_peak = samples.iter().map(|s| s.redis_kb).max().unwrap_or(0);
    let over = redis_peak > maxmem_kb + maxmem_kb / 4;
    verdicts.push(format!(
        "Redis memory peak {redis_peak} kB against maxmemory {maxmem_kb} kB: {}",
        if over { "OVER" } else { "within" }
    ));
    ok &= !over;
    let own_stale = tally.own_stale.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    ok &= own_stale == 0 && errors == 0;
    let mut stats = Vec::new();
    for m in &managers {
        stats.push(m.get_stats().await.expect("stats"));
    }
    let sum = |f: fn(&CacheStats) -> u64| stats.iter().map(f).sum::<u64>();
    println!();
    println!(
        "{} s, {} managers x {} workers, {} Redis restarts: {} store operations, {errors} failed (must be 0), \
         {} signals received",
        duration.as_secs(),
        MANAGERS,
        WORKERS_PER_MANAGER,
        restarts,
        tally.ops.load(Ordering::Relaxed),
        tally.signals.load(Ordering::Relaxed),
    );
    println!(
        "stale reads: {own_stale} of a worker's own ids (must be 0); {} of other workers' ids \
         (allowed only while an invalidation had not reached Redis)",
        tally.cross_stale.load(Ordering::Relaxed)
    );
    println!(
        "cache: {} hits, {} misses, {} fills, {} timeouts, {} connection errors, breaker opened {} times, \
         {} invalidations pending at the end",
        sum(|s| s.hits),
        sum(|s| s.misses),
        sum(|s| s.fills),
        sum(|s| s.timeouts),
        sum(|s| s.connection_errors),
        sum(|s| s.breaker_opened),
        sum(|s| s.pending_invalidations),
    );
    for v in verdicts {
        println!("{v}");
    }
    println!("{}", if ok { "soak: PASSED" } else { "soak: FAILED" });
    let mut c = raw_redis(&url).await;
    let _: redis::RedisResult<()> = redis::cmd("FLUSHALL").query_async(&mut c).await;
    db.cleanup().await;
    ok
}
