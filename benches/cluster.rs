//! Redis Cluster: StoreHaus against raw redis-rs `cluster-async` in the
//! same run, what the `cluster` feature costs a single node, the key
//! layout of query results, and what an opt-in `WAIT` costs a write.
//!
//! `bash scripts/bench.sh --cluster` (release build, about a minute); the
//! full `bash scripts/bench.sh` appends its section to BENCHMARKS.md. It
//! runs twice there: with the default features and without `cluster`, and
//! the single-node rows of both runs are compared (each against the raw
//! GET of its own run). Under `cargo test --all-targets` it only prints how
//! to run it.
//!
//! Staging: a private 6-node cluster (3 primaries, 3 replicas,
//! `scripts/cluster.sh`) and a private single `redis-server`, on loopback;
//! PostgreSQL for the misses. Throughput: 16 tasks for `SECONDS` s each;
//! latency: one task, mean of the calls. Nothing here asserts on time.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storehaus::prelude::*;
#[cfg(feature = "cluster")]
use storehaus_testkit::records::items::item;
use storehaus_testkit::records::items::{self, Item};
#[cfg(feature = "cluster")]
use storehaus_testkit::{raw_cluster, RedisCluster};
use storehaus_testkit::{Db, RedisServer};

const SECONDS: f64 = 1.5;
const TASKS: usize = 16;
const ROWS: i64 = 2_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/cluster: not run under `cargo test`; use `bash scripts/bench.sh --cluster`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = runtime.block_on(run());
    println!("{report}");
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = args.iter().position(|a| a == "--append").and_then(|i| args.get(i + 1)) {
        let mut text = std::fs::read_to_string(path).unwrap_or_default();
        text.push('\n');
        text.push_str(&report);
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {path}: {e}"));
        eprintln!("bench: appended the cluster section to {path}");
    }
}

/// Calls per second of `op` run by [`TASKS`] tasks for [`SECONDS`] s.
async fn throughput<F, Fut>(op: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = t as u64;
                while !stop.load(Ordering::Relaxed) {
                    op(i).await;
                    i += TASKS as u64;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("bench task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Mean microseconds of `n` sequential calls of `op`.
#[cfg(feature = "cluster")]
async fn latency<F, Fut>(n: u64, op: F) -> f64
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..n {
        op(i).await;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn feature_label() -> &'static str {
    if cfg!(feature = "cluster") {
        "on"
    } else {
        "off"
    }
}

async fn store_on(db: &Db, url: &str, tweak: impl FnOnce(CacheConfig) -> CacheConfig) -> GenericStore<Item> {
    let config = tweak(CacheConfig::new(url, 3600, format!("b{:08x}", rand::random::<u32>())).with_timeout(2000));
    let manager = Arc::new(CacheManager::new(config).expect("config"));
    manager.health_check().await.expect("the cache answers");
    GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager)))
}

async fn run() -> String {
    let db = Db::with_max_connections(16).await;
    db.exec(items::CREATE_TABLE).await;
    db.exec(&format!(
        "INSERT INTO items SELECT g, 'item-' || g || '-v1', 1 FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let mut out = format!(
        "## Redis Cluster (`cluster` feature {})\n\n\
         Written by `bash scripts/bench.sh` (or alone: `--cluster`). A private 6-node cluster (3 primaries, 3 \
         replicas) and a private single redis-server on loopback, PostgreSQL for misses; {TASKS} tasks for \
         {SECONDS} s per throughput row, one task for latency rows. Ratios are against the raw redis-rs row of \
         the same run.\n\n",
        feature_label()
    );
    single_node(&db, &mut out).await;
    #[cfg(feature = "cluster")]
    cluster(&db, &mut out).await;
    db.cleanup().await;
    out
}

/// The single-node hot path, to compare between a build with the `cluster`
/// feature and one without.
async fn single_node(db: &Db, out: &mut String) {
    let server = RedisServer::start().await;
    let store = Arc::new(store_on(db, &server.url(), |c| c).await);
    let ids: Vec<i64> = (1..=ROWS).collect();
    store.get_many(&ids).await.expect("warm");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let raw = storehaus_testkit::raw_redis(&server.url()).await;
    let keys: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| store.cache_key(id)).collect());
    let raw_ops = {
        let (raw, keys) = (raw.clone(), keys.clone());
        throughput(move |i| {
            let (mut raw, key) = (raw.clone(), keys[(i % ROWS as u64) as usize].clone());
            async move {
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut raw).await.expect("GET");
            }
        })
        .await
    };
    let hit_ops = {
        let store = store.clone();
        throughput(move |i| {
            let store = store.clone();
            async move {
                store
                    .get_by_id(&((i % ROWS as u64) as i64 + 1))
                    .await
                    .expect("get_by_id");
            }
        })
        .await
    };
    let _ = writeln!(
        out,
        "| one node, `cluster` feature {} | ops/s | vs raw GET |\n|---|---:|---:|\n\
         | raw redis-rs GET | {raw_ops:.0} | 1.00 |\n\
         | StoreHaus `get_by_id` hit | {hit_ops:.0} | {:.2} |\n",
        feature_label(),
        hit_ops / raw_ops
    );
}

#[cfg(feature = "cluster")]
async fn cluster(db: &Db, out: &mut String) {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let store = Arc::new(store_on(db, &url, |c| c).await);
    let ids: Vec<i64> = (1..=ROWS).collect();
    store.get_many(&ids).await.expect("warm");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let raw = raw_cluster(&url).await;
    let keys: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| store.cache_key(id)).collect());

    let raw_get = {
        let (raw, keys) = (raw.clone(), keys.clone());
        throughput(move |i| {
            let (mut raw, key) = (raw.clone(), keys[(i % ROWS as u64) as usize].clone());
            async move {
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut raw).await.expect("GET");
            }
        })
        .await
    };
    let hit = {
        let store = store.clone();
        throughput(move |i| {
            let store = store.clone();
            async move {
                store
                    .get_by_id(&((i % ROWS as u64) as i64 + 1))
                    .await
                    .expect("get_by_id");
            }
        })
        .await
    };
    // Misses: each read is of a key just invalidated (DEL through the cache),
    // so it goes GET, lease, database, fill.
    let miss = {
        let store = store.clone();
        let manager = store.cache_manager().expect("cached");
        throughput(move |i| {
            let (store, manager) = (store.clone(), manager.clone());
            async move {
                let id = (i % ROWS as u64) as i64 + 1;
                manager
                    .delete_record("items", &id.to_string())
                    .await
                    .expect("delete_record");
                store.get_by_id(&id).await.expect("get_by_id");
            }
        })
        .await
    };
    let raw_del_get = {
        let (raw, keys) = (raw.clone(), keys.clone());
        throughput(move |i| {
            let (mut raw, key) = (raw.clone(), keys[(i % ROWS as u64) as usize].clone());
            async move {
                let _: u64 = redis::cmd("DEL").arg(&key).query_async(&mut raw).await.expect("DEL");
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut raw).await.expect("GET");
            }
        })
        .await
    };
    // get_many(100): 100 ids spread over (nearly) 100 slots on 3 primaries.
    store.get_many(&ids).await.expect("warm again");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let many = {
        let store = store.clone();
        throughput(move |i| {
            let store = store.clone();
            async move {
                let base = (i * 100) % (ROWS as u64 - 100);
                let ids: Vec<i64> = (0..100).map(|k| (base + k) as i64 + 1).collect();
                store.get_many(&ids).await.expect("get_many");
            }
        })
        .await
    };
    let raw_mget = {
        let (raw, keys) = (raw.clone(), keys.clone());
        throughput(move |i| {
            let mut raw = raw.clone();
            let base = ((i * 100) % (ROWS as u64 - 100)) as usize;
            let batch: Vec<String> = keys[base..base + 100].to_vec();
            async move {
                // redis-rs splits a cross-slot MGET by slot itself.
                let _: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(batch).query_async(&mut raw).await.expect("MGET");
            }
        })
        .await
    };
    let slots: std::collections::HashSet<u16> = keys[..100].iter().map(|k| storehaus_testkit::key_slot(k)).collect();
    let _ = writeln!(
        out,
        "| on the cluster | ops/s | vs raw |\n|---|---:|---:|\n\
         | raw redis-rs cluster GET | {raw_get:.0} | 1.00 |\n\
         | StoreHaus `get_by_id` hit | {hit:.0} | {:.2} |\n\
         | raw DEL + GET (the miss's cache round trips, no database) | {raw_del_get:.0} | 1.00 |\n\
         | StoreHaus `delete_record` + `get_by_id` miss (GET, lease, database, fill) | {miss:.0} | {:.2} |\n\
         | raw redis-rs cluster MGET of 100 keys ({} slots) | {raw_mget:.0} | 1.00 |\n\
         | StoreHaus `get_many(100)` all hits (one MGET per slot, concurrently) | {many:.0} | {:.2} |\n",
        hit / raw_get,
        miss / raw_del_get,
        slots.len(),
        many / raw_mget
    );
    layout(&raw, out).await;
    wait_cost(db, &url, out).await;
}

/// Query results: one MGET of [generation, entry] in one slot (the hash tag
/// layout chosen) against the generation carried in the entry's name (two
/// GETs one after the other: the generation, then the entry it names).
#[cfg(feature = "cluster")]
async fn layout(raw: &redis::cluster_async::ClusterConnection, out: &mut String) {
    let mut c = raw.clone();
    let value = vec![7u8; 120];
    let _: () = redis::cmd("SET")
        .arg("b:q:query:{b:q}:gen")
        .arg(42)
        .query_async(&mut c)
        .await
        .expect("SET");
    let _: () = redis::cmd("SET")
        .arg("b:q:query:{b:q}:h")
        .arg(&value)
        .query_async(&mut c)
        .await
        .expect("SET");
    let _: () = redis::cmd("SET")
        .arg("b:q:query:gen")
        .arg(42)
        .query_async(&mut c)
        .await
        .expect("SET");
    let _: () = redis::cmd("SET")
        .arg("b:q:query:42:h")
        .arg(&value)
        .query_async(&mut c)
        .await
        .expect("SET");
    let tagged = latency(3_000, |_| {
        let mut c = raw.clone();
        async move {
            let _: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg("b:q:query:{b:q}:gen")
                .arg("b:q:query:{b:q}:h")
                .query_async(&mut c)
                .await
                .expect("MGET");
        }
    })
    .await;
    let named = latency(3_000, |_| {
        let mut c = raw.clone();
        async move {
            let g: u64 = redis::cmd("GET")
                .arg("b:q:query:gen")
                .query_async(&mut c)
                .await
                .expect("GET");
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("b:q:query:{g}:h"))
                .query_async(&mut c)
                .await
                .expect("GET");
        }
    })
    .await;
    let _ = writeln!(
        out,
        "| query hit's cache work, one task | µs per read |\n|---|---:|\n\
         | hash tag: `MGET [generation, entry]` in one slot (chosen) | {tagged:.1} |\n\
         | generation in the entry's name: `GET generation`, then `GET entry` | {named:.1} |\n"
    );
    let _: u64 = redis::cmd("DEL")
        .arg("b:q:query:{b:q}:gen")
        .arg("b:q:query:{b:q}:h")
        .query_async(&mut c)
        .await
        .unwrap_or(0);
}

/// What `with_wait_for_replicas(1, 100)` adds to a write's invalidation.
#[cfg(feature = "cluster")]
async fn wait_cost(db: &Db, url: &str, out: &mut String) {
    let plain = store_on(db, url, |c| c).await;
    let waiting = store_on(db, url, |c| c.with_wait_for_replicas(1, 100)).await;
    let mut rows = Vec::new();
    for (label, store) in [
        ("no WAIT (default)", &plain),
        ("`WAIT 1 100` after each invalidation", &waiting),
    ] {
        let manager = store.cache_manager().expect("cached");
        // Warm: connections made, scripts loaded, the counter seeded.
        for _ in 0..200 {
            manager.invalidate_queries("items").await.expect("invalidate_queries");
        }
        let inval = latency(2_000, |_| {
            let manager = manager.clone();
            async move {
                manager.invalidate_queries("items").await.expect("invalidate_queries");
            }
        })
        .await;
        let update = latency(500, |i| async move {
            let id = (i % 100) as i64 + 1;
            store.update(&id, item(id, 1), None).await.expect("update");
        })
        .await;
        rows.push((label, inval, update));
    }
    let _ = writeln!(
        out,
        "| write, one task | invalidation alone, µs | `update` (database + invalidation), µs |\n|---|---:|---:|"
    );
    for (label, inval, update) in rows {
        let _ = writeln!(out, "| {label} | {inval:.1} | {update:.1} |");
    }
}
