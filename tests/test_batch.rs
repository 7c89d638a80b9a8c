//! Concurrent reads batched into one `MGET` (the runtime's
//! `backend/redis/batch.rs`): a lone reader sends its `GET` at once; reads
//! that come while another is on the wire go out together as soon as it
//! answers; each caller gets what its own `GET` would have given it, falls
//! back to the database when its budget runs out while it waits, a batch on
//! a connection gone silent is given up (the cache serves again on a new
//! one), a key holding another type met inside a batch is still found
//! corrupt and replaced, and the misses of a batch take their leases in one
//! pipeline.
//!
//! The batches are made deterministic by pausing a private redis-server
//! (SIGSTOP) while the reads are issued: the first reads go out and hang,
//! and every later one queues behind them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use storehaus::prelude::*;
use storehaus_testkit::faults::{store_on, warm};
use storehaus_testkit::logs::{capture_logs, LevelFilter};
use storehaus_testkit::records::items::{item, items_db, Item};
use storehaus_testkit::*;

/// Rows of each test.
const ROWS: i64 = 20;

/// Reads on the wire before the rest queue (the runtime's `IN_FLIGHT`).
const IN_FLIGHT: u64 = 1;

/// A store of [`ROWS`] cached rows on a private server, and a raw
/// connection whose command statistics start at zero.
async fn warmed(
    server: &RedisServer,
    timeout_ms: u64,
) -> (
    Db,
    Arc<CacheManager>,
    Arc<GenericStore<Item>>,
    redis::aio::MultiplexedConnection,
) {
    let (db, manager, store) = warmed_through(server, &server.url(), timeout_ms).await;
    let mut redis = raw_redis_without_timeout(&server.url()).await;
    reset_command_calls(&mut redis).await;
    (db, manager, store, redis)
}

/// A store of [`ROWS`] cached rows whose manager reaches `server` at
/// `url` (the server's own, or a proxy's), its reads starting with a
/// plain `GET`.
async fn warmed_through(
    server: &RedisServer,
    url: &str,
    timeout_ms: u64,
) -> (Db, Arc<CacheManager>, Arc<GenericStore<Item>>) {
    let db = items_db(ROWS).await;
    let manager = manager_on(url, |c| c.with_timeout(timeout_ms).with_circuit_breaker(10_000, 1_000));
    let store = Arc::new(store_on(&db, &manager));
    warm(&store, &server.url(), 0..ROWS).await;
    // Hits until the store's reads start with a plain GET again (after the
    // misses of the warm-up they start with the lease command; see the
    // runtime's `cache/adapt.rs`).
    for _ in 0..3 {
        for id in 0..ROWS {
            store.get_by_id(&id).await.unwrap();
        }
    }
    (db, manager, store)
}

/// Reads `ids`, each in a task of its own.
fn spawn_reads(
    store: &Arc<GenericStore<Item>>,
    ids: impl IntoIterator<Item = i64>,
) -> Vec<tokio::task::JoinHandle<(i64, storehaus::Result<Option<Item>>)>> {
    ids.into_iter()
        .map(|id| {
            let store = store.clone();
            tokio::spawn(async move { (id, store.get_by_id(&id).await) })
        })
        .collect()
}

/// Waits for `reads` (of [`spawn_reads`]): each found its row, though the
/// cache could not serve it.
async fn each_from_the_database(reads: Vec<tokio::task::JoinHandle<(i64, storehaus::Result<Option<Item>>)>>) {
    for read in reads {
        let (id, found) = read.await.unwrap();
        assert_eq!(found.unwrap(), Some(item(id, 0)), "row {id} from the database");
    }
}

/// Reads every row until they all come from the cache, within `within`.
async fn serves_again(what: &str, manager: &Arc<CacheManager>, store: &Arc<GenericStore<Item>>, within: Duration) {
    let hits = stats(manager).await.hits;
    eventually_within(what, within, || async {
        for id in 0..ROWS {
            store.get_by_id(&id).await.unwrap();
        }
        stats(manager).await.hits >= hits + ROWS as u64
    })
    .await;
}

/// Reads `ids` concurrently while the server is paused for `pause`.
async fn read_while_paused(
    server: &RedisServer,
    store: &Arc<GenericStore<Item>>,
    ids: impl IntoIterator<Item = i64>,
    pause: Duration,
) -> Vec<(i64, Option<Item>, Duration)> {
    server.pause();
    let reads: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let store = store.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let found = store.get_by_id(&id).await.expect("a read never fails");
                (id, found, start.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(pause).await;
    server.resume();
    let mut out = Vec::new();
    for r in reads {
        out.push(r.await.expect("the read task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_reader_sends_a_plain_get() {
    let server = RedisServer::start().await;
    let (db, manager, store, mut redis) = warmed(&server, 1_000).await;
    let before = stats(&manager).await;
    for id in 0..ROWS {
        assert_eq!(store.get_by_id(&id).await.unwrap(), Some(item(id, 0)));
    }
    assert_eq!(stats(&manager).await.hits - before.hits, ROWS as u64);
    assert_eq!(command_calls(&mut redis, "get").await, ROWS as u64, "one GET per read");
    assert_eq!(command_calls(&mut redis, "mget").await, 0, "no read waits for a batch");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_go_out_as_one_mget() {
    let server = RedisServer::start().await;
    let (db, manager, store, mut redis) = warmed(&server, 5_000).await;
    let before = stats(&manager).await;
    let ids: Vec<i64> = (0..64).map(|i| i % ROWS).collect();
    let reads = read_while_paused(&server, &store, ids, Duration::from_millis(300)).await;
    for (id, found, _) in &reads {
        assert_eq!(found.as_ref(), Some(&item(*id, 0)), "row {id}");
    }
    let after = stats(&manager).await;
    assert_eq!(
        after.hits - before.hits,
        64,
        "every read served from the cache: {after:?}"
    );
    let (gets, mgets) = (
        command_calls(&mut redis, "get").await,
        command_calls(&mut redis, "mget").await,
    );
    assert!(
        gets <= IN_FLIGHT && mgets >= 1 && gets + mgets <= IN_FLIGHT + 2,
        "the reads that queued went out together: {gets} GET, {mgets} MGET"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_reads_that_run_out_of_budget_fall_back_and_the_cache_serves_again() {
    let server = RedisServer::start().await;
    let budget = Duration::from_millis(200);
    let (db, manager, store, _redis) = warmed(&server, budget.as_millis() as u64).await;
    let before = stats(&manager).await;
    // Paused for ten budgets: a queued read that outwaited its own budget
    // would wait for the pause.
    let reads = read_while_paused(&server, &store, 0..ROWS, budget * 10).await;
    for (id, found, took) in &reads {
        assert_eq!(found.as_ref(), Some(&item(*id, 0)), "row {id} from the database");
        assert!(
            *took < budget + Duration::from_millis(500),
            "row {id} waited {took:?}, past its budget"
        );
    }
    let after = stats(&manager).await;
    assert_eq!(after.hits, before.hits, "nothing came from the paused cache");
    assert_eq!(after.misses - before.misses, ROWS as u64, "every read fell back");
    assert!(after.timeouts > before.timeouts);
    // The batch given up on holds nothing up: hits again.
    serves_again("hits again after the pause", &manager, &store, Duration::from_secs(5)).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_in_a_batch_is_found_corrupt_and_replaced() {
    let server = RedisServer::start().await;
    let (db, manager, store, mut redis) = warmed(&server, 5_000).await;
    let key = store.cache_key(&7);
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&key)
        .cmd("RPUSH")
        .arg(&key)
        .arg("not a record")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Row 7 is read last, so that it queues into a batch.
    let ids = (0..ROWS).filter(|id| *id != 7).chain([7]);
    let reads = read_while_paused(&server, &store, ids, Duration::from_millis(300)).await;
    for (id, found, _) in &reads {
        assert_eq!(found.as_ref(), Some(&item(*id, 0)), "row {id}");
    }
    assert!(command_calls(&mut redis, "mget").await >= 1, "a batch went out");
    assert_eq!(
        command_stat(&mut redis, "get", "failed_calls").await,
        0,
        "the list was not met by a GET of its own (the lone read): it was in the batch"
    );
    assert!(
        stats(&manager).await.serialization_errors >= 1,
        "the list was found corrupt"
    );
    wait_for_value(&mut redis, &key).await;
    let hits = stats(&manager).await.hits;
    assert_eq!(store.get_by_id(&7).await.unwrap(), Some(item(7, 0)));
    assert_eq!(stats(&manager).await.hits, hits + 1, "replaced by the record");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_on_a_connection_gone_silent_is_given_up_and_the_cache_serves_again() {
    let server = RedisServer::start().await;
    let proxy = DelayProxy::start(([127, 0, 0, 1], server.port).into()).await;
    let budget = Duration::from_millis(200);
    let (db, manager, store) = warmed_through(&server, &proxy.url(), budget.as_millis() as u64).await;
    // Every connection, open or new, passes nothing from here (a half-open
    // connection: no reply, no reset): the first read goes out on one and
    // hangs, and the next ones, a little later, queue behind it; when its
    // caller gives up, they go out as a batch on a silent connection too.
    proxy.freeze();
    let lone = {
        let store = store.clone();
        tokio::spawn(async move { store.get_by_id(&0).await })
    };
    tokio::time::sleep(budget / 2).await;
    let queued = spawn_reads(&store, 1..ROWS);
    assert_eq!(lone.await.unwrap().unwrap(), Some(item(0, 0)), "from the database");
    each_from_the_database(queued).await;
    // New connections pass again; the frozen ones never will. A batch still
    // waiting on one would hold every later read in its queue.
    proxy.thaw();
    serves_again(
        "hits again on a new connection",
        &manager,
        &store,
        Duration::from_secs(8),
    )
    .await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_runtime_shut_down_gives_the_wire_back() {
    let server = RedisServer::start().await;
    let (db, manager, store) = warmed_through(&server, &server.url(), 1_000).await;
    server.pause();
    // The read on the wire belongs to a runtime of its own (a second
    // runtime sharing the manager: a sync wrapper, a test harness) ...
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let lone = store.clone();
    let lone = doomed.spawn(async move { lone.get_by_id(&0).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... the reads of this runtime queue behind it ...
    let queued = spawn_reads(&store, 1..ROWS);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... its caller goes, and the batch goes out from that runtime ...
    lone.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... which shuts down with the batch on the wire (its callers retry,
    // and fall back to the database at the end of their budget).
    tokio::task::spawn_blocking(move || std::thread::spawn(move || drop(doomed)).join())
        .await
        .unwrap()
        .unwrap();
    each_from_the_database(queued).await;
    server.resume();
    // A wire still counted as taken would queue every later read for good.
    serves_again(
        "hits again after the shutdown",
        &manager,
        &store,
        Duration::from_secs(5),
    )
    .await;
    db.cleanup().await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_misses_of_a_batch_take_their_leases_in_one_pipeline() {
    // One thread: the batch tasks log into this thread's subscriber.
    let (logs, _guard) = capture_logs(LevelFilter::TRACE);
    let server = RedisServer::start().await;
    let (db, manager, store, mut redis) = warmed(&server, 5_000).await;
    // Nothing cached: every read misses and takes a lease; row 7's key
    // holds a list, which fails its own lease command only.
    let key = store.cache_key(&7);
    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(&key)
        .arg("not a record")
        .query_async(&mut redis)
        .await
        .unwrap();
    reset_command_calls(&mut redis).await;
    let before = stats(&manager).await;
    let reads = read_while_paused(&server, &store, 0..ROWS, Duration::from_millis(300)).await;
    for (id, found, _) in &reads {
        assert_eq!(found.as_ref(), Some(&item(*id, 0)), "row {id}");
    }
    let after = stats(&manager).await;
    assert_eq!(after.misses - before.misses, ROWS as u64, "every read missed");
    assert_eq!(
        after.serialization_errors - before.serialization_errors,
        1,
        "the list was found corrupt"
    );
    assert_eq!(
        command_stat(&mut redis, "set", "failed_calls").await,
        1,
        "the list failed its own lease command, no other"
    );
    wait_for_value(&mut redis, &key).await;
    let text = logs.text();
    let lease_batches: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("sending a batch") && l.contains("kind=Leases"))
        .filter_map(|l| l.split("n=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    // The first misses take theirs alone while nothing else is on the wire;
    // the rest, which came back together from the MGET, queue behind them.
    assert!(
        lease_batches.iter().any(|n| *n >= ROWS as u64 / 2),
        "the leases of the batch's misses went out together: batches of {lease_batches:?}"
    );
    db.cleanup().await;
}
