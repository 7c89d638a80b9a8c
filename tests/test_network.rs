//! Network faults between StoreHaus and Redis: every test runs its own
//! `redis-server` in a network namespace of its own, reached over a veth
//! pair ([`NetnsRedis`]). The kernel drops packets there (nftables in the
//! namespace): 5 % loss both ways, and a silent partition (100 % loss both
//! ways: connections stay open with no RST, a client waits on a socket that
//! never answers). Added latency (20 ms) would need `tc netem`, which this
//! machine's kernel lacks (no `sch_netem`): an in-process TCP proxy in front
//! of the same server holds every request for 20 ms instead ([`DelayProxy`]).
//!
//! The store must never fail, never serve a row older than the database,
//! never wait on the cache for longer than one budget per call (+ a margin
//! for a loaded machine), and leave no connection or task behind once the
//! network heals.
//!
//! These tests need root (network namespaces, `tc`). Where that is missing
//! they fail, saying so, unless `STOREHAUS_SKIP_NETNS=1` is set.

use std::future::Future;
use std::time::{Duration, Instant};

use storehaus::prelude::*;
use storehaus_testkit::faults::{fault_manager, store_on, timed, TIMEOUT_MS};
use storehaus_testkit::records::items::{db_row, item, items_db, Item};
use storehaus_testkit::*;

/// What a loaded 2-core machine may add on top of the budget (database,
/// scheduling, `tc` itself), as in `tests/test_faults.rs`.
const MARGIN_MS: u64 = 800;

fn bound() -> Duration {
    Duration::from_millis(TIMEOUT_MS + MARGIN_MS)
}

/// Runs one store call, asserts it came back within budget + margin, and
/// returns its output and how long it took.
async fn bounded<F: Future>(what: &str, f: F) -> (F::Output, Duration) {
    let (out, took) = timed(f).await;
    assert!(
        took < bound(),
        "{what} took {took:?}, more than the {TIMEOUT_MS} ms budget + {MARGIN_MS} ms"
    );
    (out, took)
}

/// Waits until `cond` holds, failing the test after `secs` seconds.
async fn until(what: &str, secs: u64, mut cond: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads every id until each is cached in `server`.
async fn warm(store: &GenericStore<Item>, server: &NetnsRedis, ids: std::ops::Range<i64>) {
    for id in ids {
        let key = store.cache_key(&id);
        until("the row to be cached", 10, async || {
            store.get_by_id(&id).await.unwrap();
            server.redis_cli(&["EXISTS", &key]).as_deref() == Some("1")
        })
        .await;
    }
}

/// p50 and p99 of sorted durations, in ms.
fn percentiles(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let at = |p: f64| d[((d.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

/// The tasks alive on this test's runtime (tokio's stable runtime metrics).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// `n` reads and a write every 5th call over `ids`, each bounded and each
/// equal to the database (this test is the only writer); returns the
/// reads' latencies.
async fn workload(store: &GenericStore<Item>, db: &storehaus_testkit::Db, n: usize, ids: i64) -> Vec<Duration> {
    let mut reads = Vec::with_capacity(n);
    for i in 0..n {
        let id = i as i64 % ids;
        if i % 5 == 4 {
            let version = db_row(db, id).await.expect("row").version + 1;
            let (stored, _) = bounded("update", store.update(&id, item(id, version), None)).await;
            assert_eq!(stored.expect("update never fails"), item(id, version));
            let (got, _) = bounded("read after write", store.get_by_id(&id)).await;
            assert_eq!(got.unwrap(), Some(item(id, version)), "read-your-writes");
        } else {
            let (got, took) = bounded("get_by_id", store.get_by_id(&id)).await;
            assert_eq!(got.expect("get_by_id never fails"), db_row(db, id).await);
            reads.push(took);
        }
    }
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_20ms_calls_stay_within_budget_hits_continue_and_the_breaker_stays_closed() {
    let Some(server) = require_netns().await else { return };
    let db = items_db(8).await;
    let proxy = DelayProxy::start((server.addr, server.port).into()).await;
    let manager = fault_manager(&proxy.url(), 3, 200);
    let store = store_on(&db, &manager);
    warm(&store, &server, 0..8).await;

    proxy.set_delay(Duration::from_millis(20));
    let before = stats(&manager).await;
    let reads = workload(&store, &db, 100, 8).await;
    let after = stats(&manager).await;
    let (p50, p99) = percentiles(reads);
    eprintln!("delay 20 ms: get_by_id p50 {p50:.2} ms, p99 {p99:.2} ms; {after:?}");
    // A row of BENCHMARKS.md, "Network faults" (`bash scripts/bench.sh --network`).
    eprintln!(
        "network-row: | 20 ms added latency (proxy) | cached rows | {p50:.2} ms | {p99:.2} ms | {} timeouts in 100 calls, breaker opened {} times |",
        after.timeouts - before.timeouts,
        after.breaker_opened
    );
    assert!(
        p50 >= 20.0,
        "every cached read crosses the delayed link: p50 {p50:.2} ms"
    );
    assert!(
        after.hits >= before.hits + 40,
        "20 ms is inside the budget: hits go on: {after:?}"
    );
    assert_eq!(after.breaker_opened, 0, "{after:?}");
    // 20 ms is a tenth of the budget: a timeout here is the loaded
    // machine's, and a few are tolerated.
    assert!(after.timeouts <= before.timeouts + 5, "calls timed out: {after:?}");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_5_percent_no_call_fails_or_outlasts_its_budget_and_answers_equal_the_database() {
    let Some(server) = require_netns().await else { return };
    let db = items_db(8).await;
    let manager = fault_manager(&server.url(), 3, 200);
    let store = store_on(&db, &manager);
    warm(&store, &server, 0..8).await;

    server.fault(NetFault::Loss(5));
    let reads = workload(&store, &db, 300, 8).await;
    let s = stats(&manager).await;
    let (p50, p99) = percentiles(reads);
    eprintln!("loss 5 %: get_by_id p50 {p50:.2} ms, p99 {p99:.2} ms; {s:?}");
    eprintln!(
        "network-row: | 5 % packet loss both ways | mostly cached rows; a lost segment waits for TCP's retransmission | {p50:.2} ms | {p99:.2} ms | {} timeouts in 300 calls, breaker opened {} times (it closes by itself) |",
        s.timeouts, s.breaker_opened
    );
    assert!(s.hits > 0, "most reads still hit: {s:?}");

    server.heal();
    until("the breaker to close after the loss", 10, async || {
        store.get_by_id(&0).await.unwrap();
        let s = stats(&manager).await;
        !s.breaker_open && s.pending_invalidations == 0
    })
    .await;
    for id in 0..8 {
        assert_eq!(store.get_by_id(&id).await.unwrap(), db_row(&db, id).await);
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partition_opens_the_breaker_heals_without_a_stale_read_or_a_leak() {
    let Some(server) = require_netns().await else { return };
    let db = items_db(8).await;
    let manager = fault_manager(&server.url(), 3, 300);
    let store = store_on(&db, &manager);
    warm(&store, &server, 0..8).await;
    // Let the fills' tasks finish before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let clients_before = server.connected_clients();
    let sockets_before = server.established_from_here();
    let tasks_before = alive_tasks();
    assert!(clients_before >= 1 && sockets_before >= 1, "the manager is connected");

    server.fault(NetFault::Partition);
    // Reads until the breaker opens: each within its budget, each the database's row.
    let mut to_open = Vec::new();
    let mut n = 0i64;
    while !stats(&manager).await.breaker_open {
        let (got, took) = bounded("get_by_id, partitioned", store.get_by_id(&(n % 8))).await;
        assert_eq!(got.unwrap(), db_row(&db, n % 8).await);
        to_open.push(took);
        n += 1;
        assert!(n <= 8, "the breaker opened after a run of failures");
    }
    let opened = stats(&manager).await;
    assert_eq!(opened.breaker_opened, 1, "{opened:?}");

    // A write during the partition: its invalidation cannot land; no read
    // may return the cached v0 afterwards, during the partition or after it.
    let v1 = item(0, 1);
    let (stored, _) = bounded("update, partitioned", store.update(&0, v1.clone(), None)).await;
    assert_eq!(stored.unwrap(), v1);
    let mut open = Vec::new();
    for i in 0..40 {
        let id = i % 8;
        let (got, took) = bounded("get_by_id, breaker open", store.get_by_id(&id)).await;
        assert_eq!(got.unwrap(), db_row(&db, id).await, "never the cached v0");
        open.push(took);
    }
    assert!(stats(&manager).await.pending_invalidations > 0);

    server.heal();
    let healed_at = Instant::now();
    until("the breaker to close and the invalidation to replay", 15, async || {
        let (got, _) = bounded("get_by_id, healing", store.get_by_id(&0)).await;
        assert_eq!(got.unwrap(), Some(v1.clone()), "never the cached v0");
        let s = stats(&manager).await;
        !s.breaker_open && s.pending_invalidations == 0
    })
    .await;
    let closed_after = healed_at.elapsed();
    // Redis no longer holds v0 under item 0's key: read from another
    // process's view (a fresh manager on the same prefix would see the same).
    assert_eq!(store.get_by_id(&0).await.unwrap(), Some(v1.clone()));
    let hits = stats(&manager).await.hits;
    until("hits to return", 10, async || {
        store.get_by_id(&3).await.unwrap();
        stats(&manager).await.hits > hits
    })
    .await;

    // No connection or task left behind: the counts return to what they
    // were before the partition (half-open sockets the client gave up on
    // are closed once their FIN gets through).
    until("connections and tasks to return to the baseline", 30, async || {
        server.connected_clients() <= clients_before
            && server.established_from_here() <= sockets_before
            && alive_tasks() <= tasks_before
    })
    .await;
    let (p50_open, p99_open) = percentiles(open);
    eprintln!(
        "partition: opened after {} reads (slowest {:?}); open p50 {p50_open:.2} ms p99 {p99_open:.2} ms; \
         closed {closed_after:?} after healing; clients {clients_before} -> {}, sockets {sockets_before} -> {}, \
         tasks {tasks_before} -> {}",
        to_open.len(),
        to_open.iter().max().unwrap(),
        server.connected_clients(),
        server.established_from_here(),
        alive_tasks(),
    );
    eprintln!(
        "network-row: | silent partition (100 % loss both ways, no RST), breaker open | database rows; a write made during it is replayed once it heals | {p50_open:.2} ms | {p99_open:.2} ms | opened after {} reads (slowest {:.0} ms); closed {:.2} s after healing; connections {clients_before} -> {}, sockets {sockets_before} -> {}, tasks {tasks_before} -> {} |",
        to_open.len(),
        to_open.iter().max().unwrap().as_secs_f64() * 1000.0,
        closed_after.as_secs_f64(),
        server.connected_clients(),
        server.established_from_here(),
        alive_tasks(),
    );
    db.cleanup().await;
}
