//! Redis Cluster: StoreHaus against raw redis-rs `cluster-async` in the
//! same run, a near-cache hit on the cluster against a raw cluster GET +
//! decode, what the `cluster` feature costs a single node, the key layout
//! of query results, and what an opt-in `WAIT` costs a write.
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
use storehaus_testkit::bench::median;
#[cfg(feature = "cluster")]
use storehaus_testkit::records::items::item;
use storehaus_testkit::records::items::{self, Item};
use storehaus_testkit::{raw_cluster, RedisCluster};
use storehaus_testkit::{Db, RedisServer};

const SECONDS: f64 = 1.0;
/// Each comparison runs its baseline and its subject alternately this many
/// times; the tables show medians (the machine is shared: single runs vary).
const ROUNDS: usize = 5;
const TASKS: usize = 16;
const ROWS: i64 = 2_000;

fn main() {
    storehaus_testkit::bench::section_main("cluster", "--cluster", run);
}

/// The medians over [`ROUNDS`] alternate runs of `base` and `subject`
/// (ops/s), and the median of their per-round ratios.
async fn compare<A, FA, B, FB>(base: A, subject: B) -> (f64, f64, f64)
where
    A: Fn(u64) -> FA + Send + Sync + 'static,
    FA: Future<Output = ()> + Send,
    B: Fn(u64) -> FB + Send + Sync + 'static,
    FB: Future<Output = ()> + Send,
{
    let (base, subject) = (Arc::new(base), Arc::new(subject));
    let (mut b, mut s, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let x = throughput(base.clone()).await;
        let y = throughput(subject.clone()).await;
        b.push(x);
        s.push(y);
        r.push(y / x);
    }
    (median(&b), median(&s), median(&r))
}

/// Calls per second of `op` run by [`TASKS`] tasks for [`SECONDS`] s.
async fn throughput<F, Fut>(op: Arc<F>) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
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

/// `GET` of one of the keys, on a raw connection.
fn raw_get<C>(
    raw: C,
    keys: Arc<Vec<String>>,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    move |i| {
        let (mut raw, key) = (raw.clone(), keys[(i % ROWS as u64) as usize].clone());
        Box::pin(async move {
            let _: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut raw).await.expect("GET");
        })
    }
}

/// `get_by_id` of one of the rows.
fn hit(
    store: Arc<GenericStore<Item>>,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static {
    move |i| {
        let store = store.clone();
        Box::pin(async move {
            store
                .get_by_id(&((i % ROWS as u64) as i64 + 1))
                .await
                .expect("get_by_id");
        })
    }
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
    let (raw_ops, hit_ops, ratio) = compare(raw_get(raw, keys), hit(store)).await;
    let _ = writeln!(
        out,
        "| one node, `cluster` feature {} | ops/s (median of {ROUNDS}) | vs raw GET (median ratio) |\n|---|---:|---:|\n\
         | raw redis-rs GET | {raw_ops:.0} | 1.00 |\n\
         | StoreHaus `get_by_id` hit | {hit_ops:.0} | {ratio:.2} |\n",
        feature_label(),
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

    let (raw_ops, hit_ops, hit_ratio) = compare(raw_get(raw.clone(), keys.clone()), hit(store.clone())).await;
    // Misses: each read is of a key just deleted, so it goes GET, lease,
    // database, fill; the baseline sends the cache commands alone (DEL, GET).
    let raw_del_get = {
        let (raw, keys) = (raw.clone(), keys.clone());
        move |i: u64| {
            let (mut raw, key) = (raw.clone(), keys[(i % ROWS as u64) as usize].clone());
            async move {
                let _: u64 = redis::cmd("DEL").arg(&key).query_async(&mut raw).await.expect("DEL");
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut raw).await.expect("GET");
            }
        }
    };
    let miss = {
        let store = store.clone();
        let manager = store.cache_manager().expect("cached");
        move |i: u64| {
            let (store, manager) = (store.clone(), manager.clone());
            async move {
                let id = (i % ROWS as u64) as i64 + 1;
                manager
                    .delete_record("items", &id.to_string())
                    .await
                    .expect("delete_record");
                store.get_by_id(&id).await.expect("get_by_id");
            }
        }
    };
    let (raw_miss_ops, miss_ops, miss_ratio) = compare(raw_del_get, miss).await;
    // get_many(100): 100 ids spread over (nearly) 100 slots on 3 primaries.
    store.get_many(&ids).await.expect("warm again");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let raw_mget = {
        let (raw, keys) = (raw.clone(), keys.clone());
        move |i: u64| {
            let mut raw = raw.clone();
            let base = ((i * 100) % (ROWS as u64 - 100)) as usize;
            let batch: Vec<String> = keys[base..base + 100].to_vec();
            async move {
                // redis-rs splits a cross-slot MGET by slot itself.
                let _: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(batch).query_async(&mut raw).await.expect("MGET");
            }
        }
    };
    let many = {
        let store = store.clone();
        move |i: u64| {
            let store = store.clone();
            async move {
                let base = (i * 100) % (ROWS as u64 - 100);
                let ids: Vec<i64> = (0..100).map(|k| (base + k) as i64 + 1).collect();
                store.get_many(&ids).await.expect("get_many");
            }
        }
    };
    let (raw_many_ops, many_ops, many_ratio) = compare(raw_mget, many).await;
    let slots: std::collections::HashSet<u16> = keys[..100].iter().map(|k| storehaus_testkit::key_slot(k)).collect();
    let _ = writeln!(
        out,
        "| on the cluster | ops/s (median of {ROUNDS}) | vs raw (median ratio) |\n|---|---:|---:|\n\
         | raw redis-rs cluster GET | {raw_ops:.0} | 1.00 |\n\
         | StoreHaus `get_by_id` hit | {hit_ops:.0} | {hit_ratio:.2} |\n\
         | raw DEL + GET (the miss's cache round trips, no database) | {raw_miss_ops:.0} | 1.00 |\n\
         | StoreHaus `delete_record` + `get_by_id` miss (GET, lease, database, fill) | {miss_ops:.0} | {miss_ratio:.2} |\n\
         | raw redis-rs cluster MGET of 100 keys ({} slots) | {raw_many_ops:.0} | 1.00 |\n\
         | StoreHaus `get_many(100)` all hits (one MGET per slot, concurrently) | {many_ops:.0} | {many_ratio:.2} |\n",
        slots.len(),
    );
    near_on_cluster(db, &url, &raw, out).await;
    layout(&raw, out).await;
    wait_cost(db, &url, out).await;
}

/// A near hit on the cluster (`with_near_cache`, tracking on every
/// primary) against a raw redis-rs cluster GET + MessagePack decode of the
/// same row (plain copies under keys of their own).
#[cfg(feature = "cluster")]
async fn near_on_cluster(db: &Db, url: &str, raw: &redis::cluster_async::ClusterConnection, out: &mut String) {
    let store = Arc::new(store_on(db, url, |c| c.with_near_cache(2 * ROWS as u64)).await);
    let manager = store.cache_manager().expect("cached");
    let ids: Vec<i64> = (1..=ROWS).collect();
    store.get_many(&ids).await.expect("warm");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Until every row is answered near (the first hits start the tracking
    // and are kept).
    for _ in 0..50 {
        let before = manager.get_stats().await.expect("stats").near_hits;
        for id in &ids {
            store.get_by_id(id).await.expect("get_by_id");
        }
        if manager.get_stats().await.expect("stats").near_hits - before == ROWS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let keys: Arc<Vec<String>> = Arc::new(
        ids.iter()
            .map(|id| format!("{}:rawcopy:{id}", manager.global_prefix()))
            .collect(),
    );
    let mut c = raw.clone();
    for (key, id) in keys.iter().zip(&ids) {
        let bytes = rmp_serde::to_vec(&item(*id, 1)).expect("encode");
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .query_async(&mut c)
            .await
            .expect("SET");
    }
    let get_decode = |raw: redis::cluster_async::ClusterConnection, keys: Arc<Vec<String>>| {
        move |i: u64| {
            let (mut raw, key) = (raw.clone(), keys[(i % ROWS as u64) as usize].clone());
            async move {
                let bytes: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut raw).await.expect("GET");
                std::hint::black_box(rmp_serde::from_slice::<Item>(&bytes).expect("decode"));
            }
        }
    };
    let near_before = manager.get_stats().await.expect("stats").near_hits;
    let (raw_ops, near_ops, ratio) = compare(get_decode(raw.clone(), keys.clone()), hit(store.clone())).await;
    let raw_us = latency(2_000, get_decode(raw.clone(), keys.clone())).await;
    let near_us = latency(20_000, hit(store.clone())).await;
    let stats = manager.get_stats().await.expect("stats");
    let near_share = (stats.near_hits - near_before) as f64 / (stats.hits.max(1)) as f64;
    let _ = writeln!(
        out,
        "| near cache on the cluster | ops/s (median of {ROUNDS}) | vs raw (median ratio) | µs per call, 1 task |\n|---|---:|---:|---:|\n\
         | raw redis-rs cluster GET + MessagePack decode | {raw_ops:.0} | 1.00 | {raw_us:.1} |\n\
         | StoreHaus `get_by_id` near hit (tracking on every primary) | {near_ops:.0} | {ratio:.2} | {near_us:.2} |\n\n\
         {:.0} % of the hits of these rows were answered near.\n",
        near_share * 100.0,
    );
    let _ = manager.delete_pattern("*").await;
}

/// Query results: one MGET of [generation, entry] in one slot (the hash tag
/// layout chosen) against the generation carried in the entry's name (two
/// GETs one after the other: the generation, then the entry it names).
#[cfg(feature = "cluster")]
async fn layout(raw: &redis::cluster_async::ClusterConnection, out: &mut String) {
    let mut c = raw.clone();
    let value = vec![7u8; 120];
    for (k, v) in [
        ("b:q:query:{b:q}:gen", b"42".to_vec()),
        ("b:q:query:{b:q}:h", value.clone()),
        ("b:q:query:gen", b"42".to_vec()),
        ("b:q:query:42:h", value),
    ] {
        let _: () = redis::cmd("SET").arg(k).arg(v).query_async(&mut c).await.expect("SET");
    }
    let (mut tagged, mut named) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        tagged.push(
            latency(1_000, |_| {
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
            .await,
        );
        named.push(
            latency(1_000, |_| {
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
            .await,
        );
    }
    let _ = writeln!(
        out,
        "| query hit's cache work, one task | µs per read (median of {ROUNDS}) |\n|---|---:|\n\
         | hash tag: `MGET [generation, entry]` in one slot (chosen) | {:.1} |\n\
         | generation in the entry's name: `GET generation`, then `GET entry` | {:.1} |\n",
        median(&tagged),
        median(&named)
    );
}

/// What `with_wait_for_replicas(1, 100)` adds to a write's invalidation.
#[cfg(feature = "cluster")]
async fn wait_cost(db: &Db, url: &str, out: &mut String) {
    let plain = store_on(db, url, |c| c).await;
    let waiting = store_on(db, url, |c| c.with_wait_for_replicas(1, 100)).await;
    for store in [&plain, &waiting] {
        // Warm: connections made, scripts loaded, the counter seeded.
        let manager = store.cache_manager().expect("cached");
        for _ in 0..200 {
            manager.invalidate_queries("items").await.expect("invalidate_queries");
        }
    }
    let mut rows: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for _ in 0..ROUNDS {
        for (n, store) in [&plain, &waiting].into_iter().enumerate() {
            let manager = store.cache_manager().expect("cached");
            rows[n].0.push(
                latency(500, |_| {
                    let manager = manager.clone();
                    async move {
                        manager.invalidate_queries("items").await.expect("invalidate_queries");
                    }
                })
                .await,
            );
            rows[n].1.push(
                latency(100, |i| async move {
                    let id = (i % 100) as i64 + 1;
                    store.update(&id, item(id, 1), None).await.expect("update");
                })
                .await,
            );
        }
    }
    let _ = writeln!(
        out,
        "| write, one task | invalidation alone, µs (median of {ROUNDS}) | `update` (database + invalidation), µs |\n|---|---:|---:|"
    );
    for (label, (inval, update)) in ["no WAIT (default)", "`WAIT 1 100` after each invalidation"]
        .into_iter()
        .zip(rows)
    {
        let _ = writeln!(out, "| {label} | {:.1} | {:.1} |", median(&inval), median(&update));
    }
}
