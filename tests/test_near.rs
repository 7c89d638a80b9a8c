//! The near cache (`CacheConfig::with_near_cache`): an in-process L1 kept
//! coherent by Redis client tracking. Two managers on one Redis stand for
//! two processes: A reads with a near cache, B writes.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore};
use storehaus_testkit::*;

mod near;
use near::*;

#[tokio::test]
async fn near_hits_and_another_processs_write_reaches_them() {
    let db = rows_db(1).await;
    let (a, b) = managers(&redis_url());
    let (sa, sb) = (store(&db, &a), store(&db, &b));
    until_near(&sa, &a, 1).await;
    let before = a.get_stats().await.unwrap();
    let store_before = sa.stats().unwrap();
    assert_eq!(version(&sa, 1).await, 0);
    let after = a.get_stats().await.unwrap();
    assert_eq!(after.near_hits, before.near_hits + 1, "{after:?}");
    assert_eq!(after.hits, before.hits + 1, "a near hit is a hit of the manager");
    let store_after = sa.stats().unwrap();
    assert_eq!(store_after.hits, store_before.hits + 1, "and of its store");
    assert_eq!(store_after.hit_latency.count, store_before.hit_latency.count + 1);

    // B's write reaches A's L1 by Redis's invalidation.
    sb.update(&1, Row { id: 1, version: 1 }, None).await.unwrap();
    let took = within(Duration::from_secs(2), "A sees B's write", async || {
        version(&sa, 1).await == 1
    })
    .await;
    eprintln!("another process's write reached the near cache after {took:?}");
    assert!(a.get_stats().await.unwrap().near_invalidations >= 1);

    // A's own write: read-your-writes, no waiting.
    until_near(&sa, &a, 1).await;
    sa.update(&1, Row { id: 1, version: 2 }, None).await.unwrap();
    assert_eq!(version(&sa, 1).await, 2, "a local write evicts before it returns");

    // A store can opt out.
    let plain = GenericStore::<Row>::new(
        db.pool.clone(),
        None,
        Some(CacheParams::new(a.clone()).with_near_cache(false)),
    );
    let hits = a.get_stats().await.unwrap().near_hits;
    for _ in 0..3 {
        plain.get_by_id(&1).await.unwrap();
    }
    assert_eq!(a.get_stats().await.unwrap().near_hits, hits);

    clear_prefix(&a).await;
    db.cleanup().await;
}

/// The race every client-side cache must close: an invalidation delivered
/// between Redis's reply and the L1 insert. The insert must be dropped.
#[tokio::test]
async fn an_invalidation_between_the_reply_and_the_insert_keeps_the_value_out() {
    reply_insert_race(&redis_url()).await;
}

/// The tracking connection killed, and Redis restarted: the L1 is flushed,
/// serves nothing while it is not subscribed, and nothing from before.
#[tokio::test]
async fn a_lost_tracking_connection_flushes_the_near_cache() {
    let db = rows_db(1).await;
    let mut server = RedisServer::start().await;
    let (a, b) = managers(&server.url());
    let (sa, sb) = (store(&db, &a), store(&db, &b));
    let key = sa.cache_key(&1);
    let mut redis = raw_redis(&server.url()).await;

    // CLIENT KILL of the tracking connection, then a write by B at once.
    until_near(&sa, &a, 1).await;
    let flushes = a.get_stats().await.unwrap().near_flushes;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(killed >= 1);
    sb.update(&1, Row { id: 1, version: 1 }, None).await.unwrap();
    within(Duration::from_secs(3), "subscribed again", async || {
        a.near_state(&key).1
    })
    .await;
    assert_eq!(version(&sa, 1).await, 1, "nothing from before the disconnect");
    assert!(
        a.get_stats().await.unwrap().near_flushes >= flushes + 2,
        "lost, then subscribed again"
    );

    // FLUSHALL: Redis says "everything" (a nil key list): flushed.
    until_near(&sa, &a, 1).await;
    let flushes = a.get_stats().await.unwrap().near_flushes;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.unwrap();
    within(Duration::from_secs(2), "flushed by FLUSHALL", async || {
        a.get_stats().await.unwrap().near_flushes > flushes
    })
    .await;
    assert!(!a.near_state(&key).0);

    // Redis restarted (its dataset gone): the same.
    until_near(&sa, &a, 1).await;
    server.restart().await;
    sb.update(&1, Row { id: 1, version: 2 }, None).await.unwrap();
    within(Duration::from_secs(5), "B's write seen after the restart", async || {
        version(&sa, 1).await == 2
    })
    .await;

    // A silent stall (no RST): within a heartbeat and a budget the L1 stops
    // serving; reads go to Redis (stalled: the database answers).
    until_near(&sa, &a, 1).await;
    server.pause();
    within(
        Duration::from_secs(3),
        "not live while Redis does not answer",
        async || !a.near_state(&key).1,
    )
    .await;
    let hits = a.get_stats().await.unwrap().near_hits;
    assert_eq!(version(&sa, 1).await, 2);
    assert_eq!(
        a.get_stats().await.unwrap().near_hits,
        hits,
        "nothing served from the L1"
    );
    server.resume();

    db.cleanup().await;
}

/// How long another process's write takes to evict a near entry (its
/// `update` returned → A's entry no longer served), over 200 writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_delivery_delay_on_one_node() {
    let delays = delivery_delay(&redis_url(), 1, 200).await;
    eprintln!("one node: delivery delay {}", summary(&delays));
}

/// The staleness a near read is allowed: the tracking heartbeat.
const BOUND: Duration = Duration::from_millis(200);

/// The torture: B writes 4 hot rows in bursts; 4 readers read them through
/// A's near cache without pause; each near insert is held a random 0–2 ms
/// after Redis answered (test hook), so the reply/insert race the tickets
/// close happens often; twice, A's tracking connection is killed and kept
/// away (the server refuses new connections) for longer than [`BOUND`]
/// while B writes. After each burst a quiet period longer than the bound
/// lets a stale entry that would stay be read. Every read is checked
/// against the writes that had returned before it began: none may return a
/// version older than one that returned more than [`BOUND`] before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torture_no_near_read_is_stale_beyond_the_heartbeat() {
    const HOT: i64 = 4;
    let server = RedisServer::start().await;
    let db = rows_db(HOT).await;
    let (a, b) = managers(&server.url());
    let (sa, sb) = (store(&db, &a), store(&db, &b));
    for id in 1..=HOT {
        until_near(&sa, &a, id).await;
    }
    a.test_hooks().set_near_insert_delay(Duration::from_millis(2));
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (sa, ledger, stop) = (sa.clone(), ledger.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for id in 1..=HOT {
                    ledger.read(&sa, id).await;
                }
            }
        }));
    }
    let mut admin = raw_redis(&server.url()).await;
    let mut v = 0;
    for round in 0..8 {
        let cut = round % 4 == 1;
        let restore = if cut {
            Some(cut_tracking(&mut admin).await)
        } else {
            None
        };
        for _ in 0..5 {
            for id in 1..=HOT {
                v += 1;
                ledger.write(&sb, id, v).await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some(maxclients) = restore {
            tokio::time::sleep(BOUND + Duration::from_millis(100)).await;
            config_set(&mut admin, "maxclients", &maxclients).await;
        }
        tokio::time::sleep(BOUND + Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let stats = a.get_stats().await.unwrap();
    eprintln!(
        "torture: {} reads ({} near hits, {} flushes), {} writes; stale: {} raw, {} beyond {BOUND:?}",
        ledger.reads(),
        stats.near_hits,
        stats.near_flushes,
        ledger.writes(),
        ledger.stale(Duration::ZERO, None).len(),
        ledger.stale(BOUND, None).len(),
    );
    assert!(stats.near_hits > 1_000, "the near cache was used: {stats:?}");
    assert_eq!(
        ledger.stale(BOUND, None),
        vec![],
        "(id, version read, version written before)"
    );
    db.cleanup().await;
}

/// Kills A's tracking connection and has the server refuse new connections
/// (`maxclients` at the current count), so that it stays away: the old
/// `maxclients`, to restore.
async fn cut_tracking(admin: &mut redis::aio::MultiplexedConnection) -> String {
    let (_, maxclients): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxclients")
        .query_async(admin)
        .await
        .unwrap();
    let info: String = redis::cmd("INFO").arg("clients").query_async(admin).await.unwrap();
    let connected: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("connected_clients");
    // Every client but the tracking connection about to be killed.
    config_set(admin, "maxclients", &(connected - 1).to_string()).await;
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(admin).await.unwrap();
    let tracking = clients
        .lines()
        .find(|l| l.contains("name=storehaus-near "))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
        .expect("A's tracking connection")
        .to_string();
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(tracking)
        .query_async(admin)
        .await
        .unwrap();
    maxclients
}

/// `get_many` serves what the near cache holds and asks Redis (and the
/// database) for the rest; a write by another process reaches it as it
/// reaches `get_by_id`.
#[tokio::test]
async fn get_many_serves_what_the_near_cache_holds() {
    let db = rows_db(6).await;
    let (a, b) = managers(&redis_url());
    let (sa, sb) = (store(&db, &a), store(&db, &b));
    // Rows 1 and 2 near; 3 and 4 in Redis only (read through B); 5 and 6 nowhere.
    until_near(&sa, &a, 1).await;
    until_near(&sa, &a, 2).await;
    wait_until_cached(&b, &sb, 3).await;
    wait_until_cached(&b, &sb, 4).await;
    // Behind the cache's back: a row read from the database shows 9.
    db.exec("UPDATE near_rows SET version = 9").await;
    let before = a.get_stats().await.unwrap();
    let rows = sa.get_many(&[1, 2, 3, 4, 5, 6]).await.unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.as_ref().expect("row").version).collect();
    assert_eq!(
        versions,
        vec![0, 0, 0, 0, 9, 9],
        "cached, cached, cached, cached, loaded, loaded"
    );
    let after = a.get_stats().await.unwrap();
    assert_eq!(
        after.near_hits - before.near_hits,
        2,
        "rows 1 and 2 from the near cache"
    );
    assert_eq!(after.hits - before.hits, 4, "and 3 and 4 from Redis");
    assert_eq!(after.misses - before.misses, 2);

    sb.update(&1, Row { id: 1, version: 10 }, None).await.unwrap();
    within(Duration::from_secs(2), "get_many sees B's write", async || {
        sa.get_many(&[1, 2]).await.unwrap()[0].as_ref().map(|r| r.version) == Some(10)
    })
    .await;
    clear_prefix(&a).await;
    db.cleanup().await;
}

/// A near hit is always ready: a task looping over hot keys must still let
/// the rest of its runtime run (tokio's cooperative budget). On a 2-worker
/// runtime, one task reads 4 hot keys through A's near cache without
/// pause while the same runtime updates them through B, and another
/// runtime (another thread, standing for another process) updates them
/// through a third manager: every update completes, and the loop sees each
/// key's last version within the bound of a delivered invalidation.
#[test]
fn a_loop_of_near_hits_leaves_the_runtime_to_writes() {
    // On a thread of its own: a starved runtime fails the test, not hangs it.
    let (done, finished) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(near_hits_and_writes());
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => test.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(test.join().expect_err("it panicked"))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the runtime never finished: the loop of near hits starved it")
        }
    }
}

async fn near_hits_and_writes() {
    const HOT: i64 = 4;
    let db = rows_db(HOT).await;
    let (a, b) = managers(&redis_url());
    let (sa, sb) = (store(&db, &a), store(&db, &b));
    for id in 1..=HOT {
        until_near(&sa, &a, id).await;
    }
    let seen: Arc<Vec<AtomicI64>> = Arc::new((0..=HOT).map(|_| AtomicI64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (sa, seen, stop) = (sa.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for id in 1..=HOT {
                    seen[id as usize].store(version(&sa, id).await, Ordering::Relaxed);
                    reads += 1;
                }
            }
            reads
        })
    };
    // Writes in the same runtime, with the loop running.
    let start = Instant::now();
    for v in 1..=40 {
        let id = 1 + v % HOT;
        tokio::time::timeout(Duration::from_secs(2), sb.update(&id, Row { id, version: v }, None))
            .await
            .unwrap_or_else(|_| panic!("update {v} in the runtime of the loop did not complete"))
            .unwrap();
    }
    eprintln!("40 updates in the loop's runtime took {:?}", start.elapsed());
    // Writes from another runtime, on another thread.
    let other = {
        let (pool, global) = (db.pool.clone(), a.global_prefix().to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = CacheConfig::new(redis_url(), 3600, global);
                let c = GenericStore::<Row>::new(
                    pool,
                    None,
                    Some(CacheParams::new(Arc::new(CacheManager::new(config).unwrap()))),
                );
                for v in 41..=80 {
                    let id = 1 + v % HOT;
                    c.update(&id, Row { id, version: v }, None).await.unwrap();
                }
            })
        })
    };
    tokio::task::spawn_blocking(move || other.join().expect("the other runtime's updates completed"))
        .await
        .unwrap();
    // The loop sees the last version of every key.
    let last = |id: i64| (41..=80).filter(|v| 1 + v % HOT == id).max().unwrap();
    within(Duration::from_secs(2), "the loop sees every last write", async || {
        (1..=HOT).all(|id| seen[id as usize].load(Ordering::Relaxed) == last(id))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await.unwrap();
    let stats = a.get_stats().await.unwrap();
    eprintln!("the loop read {reads} times, {} near hits", stats.near_hits);
    // Near hits (how many reads a loaded machine fits in is no matter: the
    // writes above completed while it ran). Each of the 80 writes evicts a
    // hot key, so the share varies: 185 of 372 reads in a CI run of
    // 2026-12-07; without the near cache it would be none.
    assert!(
        reads >= 100 && stats.near_hits * 3 > reads,
        "the loop ran on near hits: {reads} reads, {stats:?}"
    );
    clear_prefix(&a).await;
    db.cleanup().await;
}
