//! One cache budget per store operation, measured tightly.
//!
//! The promise (README, "The resilience promise", 1): the cache's share of
//! one store operation is bounded by one `with_timeout` budget *in total*,
//! retries included. `tests/test_faults.rs` bounds calls by the budget plus a
//! generous margin; here every store call must come back within the budget
//! plus [`MARGIN_MS`], so that an operation that gave each of its cache
//! commands a fresh budget, or retried past its deadline, fails.
//!
//! The faults hit an operation *after* its first command:
//! `CLIENT PAUSE <ms> WRITE` on a private redis-server answers reads (GET,
//! MGET) and holds every write (the lease's `SET .. NX .. GET`, the EVALSHA
//! lease and fill scripts, the DEL/INCR invalidation pipeline, SADD). A cold
//! `get_by_id` therefore gets its GET answered and stalls on its lease, a
//! `get_many` gets its MGET answered and stalls on its lease script, an
//! `update` commits and stalls on its invalidation. The second fault is a
//! killed server (connection refused), with and without many retries
//! configured. The breaker threshold is high, so that every call really
//! goes through the fault instead of being skipped.
//!
//! These bounds are tight for a noisy 2-core machine, so this binary holds
//! only these tests and runs them one at a time ([`SERIAL`]). A scenario with
//! a call over the bound runs once more ([`ATTEMPTS`]), and the test fails
//! when the same call is over it again: an operation that spends a budget
//! per command does so every time, while a stall of the shared machine, or
//! the rare stall below, hits another call each time. (On 2026-12-07 a
//! single attempt failed 3 runs in 8, at the commit before that day's work
//! alike: calls of 321–335 ms, and writes of 400–503 ms, a different write
//! each time, whose cause is not found yet.)

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use storehaus::prelude::*;
use storehaus_testkit::records::items::{db_row, item, items_db, Item};
use storehaus_testkit::*;

/// The cache budget of one store operation, in ms.
const BUDGET_MS: u64 = 200;
/// What the database and the scheduler may add on top of the budget.
const MARGIN_MS: u64 = 100;

/// The tests of this binary run one at a time: they measure wall time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// `CLIENT PAUSE .. WRITE`: reads answered, writes held.
    PauseWrites,
    /// The server is killed: every connect is refused.
    Killed,
}

/// One store call's measured duration and what the cache counted during it.
struct Measured {
    what: String,
    took: Duration,
    timeouts: u64,
    connection_errors: u64,
}

/// Runs store calls under a fault and records how long each took.
struct Clock {
    manager: Arc<CacheManager>,
    calls: Vec<Measured>,
}

impl Clock {
    /// Runs one store call, records its duration and the timeouts and
    /// connection errors the cache counted meanwhile.
    async fn call<F: Future>(&mut self, what: &str, f: F) -> F::Output {
        let before = stats(&self.manager).await;
        let start = Instant::now();
        let out = f.await;
        let took = start.elapsed();
        let after = stats(&self.manager).await;
        self.calls.push(Measured {
            what: what.to_string(),
            took,
            timeouts: after.timeouts - before.timeouts,
            connection_errors: after.connection_errors - before.connection_errors,
        });
        out
    }

    /// Prints every call; the names of those that exceeded budget + margin,
    /// each with how long it took.
    fn check(&self, scenario: &str) -> Vec<(String, Duration)> {
        let bound = Duration::from_millis(BUDGET_MS + MARGIN_MS);
        println!("{scenario}:");
        for m in &self.calls {
            println!(
                "  {:>7.1} ms  {:<55} timeouts +{} connection_errors +{}",
                m.took.as_secs_f64() * 1000.0,
                m.what,
                m.timeouts,
                m.connection_errors
            );
        }
        self.calls
            .iter()
            .filter(|m| m.took >= bound)
            .map(|m| (m.what.clone(), m.took))
            .collect()
    }

    fn measured(&self, what: &str) -> &Measured {
        self.calls
            .iter()
            .find(|m| m.what == what)
            .unwrap_or_else(|| panic!("no call named {what}"))
    }
}

/// Plants bytes that are not an entry of ours under `key`.
async fn plant_corrupt(redis: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(&b"not an envelope"[..])
        .query_async(redis)
        .await
        .unwrap();
}

/// Plants another process's fill lease under `key` (it never fills).
async fn plant_foreign_lease(redis: &mut redis::aio::MultiplexedConnection, key: &str) {
    let mut lease = vec![0xC1u8];
    lease.extend_from_slice(b"another-process!");
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(lease)
        .arg("PX")
        .arg(60_000)
        .query_async(redis)
        .await
        .unwrap();
}

/// Every kind of store call, each under `fault`, each bounded by the budget
/// plus the margin; every answer equals the database.
///
/// Ids: 0..4 cached before the fault (hits), 10.. never read (cold), 20..
/// corrupt entries, 30 under another process's lease.
/// How many times a scenario runs before its timing check fails the test.
const ATTEMPTS: usize = 2;

/// Slow calls in one attempt beyond which the attempt counts as a pattern,
/// whichever calls they are (a lost wake-up or a stuck queue slows many).
const MANY_SLOW: usize = 2;

/// Runs [`one_budget_per_call`]; when a call went over the bound, once
/// more ([`ATTEMPTS`]), and fails if a call is over it in every attempt,
/// or if every attempt had [`MANY_SLOW`] slow calls or more.
async fn every_call_within_one_budget(fault: Fault, retries: u32) {
    let mut always_slow: Option<Vec<String>> = None;
    let mut fewest_slow = usize::MAX;
    for attempt in 1..=ATTEMPTS {
        let slow = one_budget_per_call(fault, retries).await;
        if slow.is_empty() {
            return;
        }
        eprintln!("attempt {attempt} ({fault:?}, {retries} retries): over {BUDGET_MS} ms + {MARGIN_MS} ms: {slow:?}");
        fewest_slow = fewest_slow.min(slow.len());
        let names: Vec<String> = slow.into_iter().map(|(what, _)| what).collect();
        always_slow = Some(match always_slow {
            None => names,
            Some(before) => before.into_iter().filter(|w| names.contains(w)).collect(),
        });
    }
    let always_slow = always_slow.unwrap_or_default();
    assert!(
        always_slow.is_empty(),
        "over the {BUDGET_MS} ms budget + {MARGIN_MS} ms in each of {ATTEMPTS} attempts: {always_slow:?}"
    );
    assert!(
        fewest_slow < MANY_SLOW,
        "{fewest_slow} calls or more over the {BUDGET_MS} ms budget + {MARGIN_MS} ms in each of {ATTEMPTS} attempts"
    );
}

async fn one_budget_per_call(fault: Fault, retries: u32) -> Vec<(String, Duration)> {
    let _serial = SERIAL.lock().await;
    let mut server = RedisServer::start().await;
    let db = items_db(40).await;
    let manager = manager_on(&server.url(), |c| {
        c.with_timeout(BUDGET_MS)
            .with_retry_attempts(retries)
            .with_retry_delay(50)
            .with_lease_wait(200)
            .with_pool_size(4)
            .with_circuit_breaker(1_000, 50)
    });
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let mut redis = raw_redis(&server.url()).await;

    // Healthy: warm the cache, the connections, the scripts and the
    // database pool, so that the measured calls pay only for the fault.
    for id in 0..4 {
        store.get_by_id(&id).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&id)).await;
    }
    store.get_many(&[5, 6]).await.unwrap();
    store.update(&7, item(7, 1), Some(vec!["warm".into()])).await.unwrap();
    for id in 0..40 {
        db_row(&db, id).await;
    }
    for id in [20, 21] {
        plant_corrupt(&mut redis, &store.cache_key(&id)).await;
    }
    plant_foreign_lease(&mut redis, &store.cache_key(&30)).await;

    match fault {
        Fault::PauseWrites => {
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(120_000)
                .arg("WRITE")
                .query_async(&mut redis)
                .await
                .unwrap();
        }
        Fault::Killed => server.kill(),
    }
    let base = stats(&manager).await;
    let mut clock = Clock {
        manager: manager.clone(),
        calls: Vec::new(),
    };

    // Reads before any write (no invalidation pending yet).
    let got = clock
        .call("get_by_id, cold (GET, then lease)", store.get_by_id(&10))
        .await;
    assert_eq!(got.unwrap(), db_row(&db, 10).await);
    // (Not asserted to be a hit: see `a_cached_read_after_a_stalled_lease_is_a_hit`.)
    let got = clock.call("get_by_id, cached", store.get_by_id(&1)).await;
    assert_eq!(got.unwrap(), db_row(&db, 1).await);
    let got = clock
        .call("get_by_id, corrupt entry (GET, then DEL)", store.get_by_id(&20))
        .await;
    assert_eq!(got.unwrap(), db_row(&db, 20).await);
    let got = clock
        .call("get_by_id, another process's lease", store.get_by_id(&30))
        .await;
    assert_eq!(got.unwrap(), db_row(&db, 30).await);
    let ids = [11, 12, 13];
    let got = clock
        .call("get_many, cold (MGET, then lease script)", store.get_many(&ids))
        .await;
    let mut want = Vec::new();
    for id in ids {
        want.push(db_row(&db, id).await);
    }
    assert_eq!(got.unwrap(), want);
    let ids = [2, 21, 14];
    let got = clock
        .call("get_many, cached+corrupt+cold (MGET, DEL, lease)", store.get_many(&ids))
        .await;
    let mut want = Vec::new();
    for id in ids {
        want.push(db_row(&db, id).await);
    }
    assert_eq!(got.unwrap(), want);

    // Writes: each commits, then its invalidation (and tags) meet the fault.
    let got = clock
        .call("update (DEL+INCR)", store.update(&3, item(3, 1), None))
        .await;
    assert_eq!(got.unwrap(), item(3, 1));
    let got = clock
        .call(
            "update with tags (DEL+INCR, then SADD)",
            store.update(&4, item(4, 1), Some(vec!["a".into(), "b".into()])),
        )
        .await;
    assert_eq!(got.unwrap(), item(4, 1));
    let got = clock
        .call(
            "create with tags (DEL+INCR, then SADD)",
            store.create(item(100, 0), Some(vec!["new".into()])),
        )
        .await;
    assert_eq!(got.unwrap(), item(100, 0));
    let got = clock
        .call(
            "update_many (DEL+INCR)",
            store.update_many(vec![(5, item(5, 1)), (6, item(6, 1))]),
        )
        .await;
    assert_eq!(got.unwrap(), vec![item(5, 1), item(6, 1)]);
    let got = clock.call("delete (DEL+INCR)", store.delete(&8)).await;
    assert!(got.unwrap());
    let got = clock.call("delete_many (DEL+INCR)", store.delete_many(&[9, 15])).await;
    assert_eq!(got.unwrap(), 2);

    // Reads with invalidations pending: they bypass the cache, after one
    // replay step that meets the fault (or at once, while the background
    // replayer holds the replay).
    let got = clock
        .call("get_by_id, invalidations pending (replay)", store.get_by_id(&4))
        .await;
    assert_eq!(got.unwrap(), Some(item(4, 1)), "read-your-writes");
    let got = clock
        .call("get_many, invalidations pending (replay)", store.get_many(&[5, 6, 8]))
        .await;
    assert_eq!(got.unwrap(), vec![Some(item(5, 1)), Some(item(6, 1)), None]);

    let scenario = format!("{fault:?}, {retries} retries x 50 ms, budget {BUDGET_MS} ms");
    let timing = clock.check(&scenario);

    // The calls really went through the fault (none was skipped by the
    // breaker, and the stall or the refusal was met where expected).
    let end = stats(&manager).await;
    assert_eq!(end.breaker_skips, base.breaker_skips, "{end:?}");
    match fault {
        Fault::PauseWrites => {
            for what in [
                "get_by_id, cold (GET, then lease)",
                "get_by_id, corrupt entry (GET, then DEL)",
                "get_many, cold (MGET, then lease script)",
                "get_many, cached+corrupt+cold (MGET, DEL, lease)",
                "update (DEL+INCR)",
                "update with tags (DEL+INCR, then SADD)",
            ] {
                assert!(clock.measured(what).timeouts >= 1, "{what} met the stall");
            }
        }
        Fault::Killed => {
            let refused = clock.measured("get_by_id, cold (GET, then lease)").connection_errors;
            if retries > 0 {
                assert!(refused >= 2, "the read retried ({refused} attempts)");
            } else {
                assert_eq!(refused, 1, "one attempt without retries");
            }
        }
    }
    if let Fault::PauseWrites = fault {
        let _: () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    db.cleanup().await;
    timing
}

#[tokio::test]
async fn a_stall_after_the_first_command_costs_one_budget_per_call() {
    every_call_within_one_budget(Fault::PauseWrites, 0).await;
}

#[tokio::test]
async fn retries_do_not_stretch_a_stall_past_one_budget() {
    every_call_within_one_budget(Fault::PauseWrites, 10).await;
}

#[tokio::test]
async fn a_refused_connection_costs_at_most_one_budget_per_call() {
    every_call_within_one_budget(Fault::Killed, 0).await;
}

#[tokio::test]
async fn retries_against_a_refused_connection_stay_inside_one_budget() {
    every_call_within_one_budget(Fault::Killed, 10).await;
}

/// Reads are answered during `CLIENT PAUSE .. WRITE`, so a cached row read
/// right after another operation stalled on its lease should still be a hit,
/// answered at once.
///
/// (It failed while the backend judged a connection silent by millisecond
/// timestamps: a reply and the lease sent in the same millisecond looked
/// like activity, the connection was kept, and the next read queued behind
/// the held write.)
#[tokio::test]
async fn a_cached_read_after_a_stalled_lease_is_a_hit() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start().await;
    let db = items_db(20).await;
    let manager = manager_on(&server.url(), |c| {
        c.with_timeout(BUDGET_MS)
            .with_pool_size(4)
            .with_circuit_breaker(1_000, 50)
    });
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let mut redis = raw_redis(&server.url()).await;
    store.get_by_id(&1).await.unwrap();
    wait_for_value(&mut redis, &store.cache_key(&1)).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(120_000)
        .arg("WRITE")
        .query_async(&mut redis)
        .await
        .unwrap();

    // A cold read: its GET is answered, its lease is held by the pause.
    assert_eq!(store.get_by_id(&10).await.unwrap(), db_row(&db, 10).await);
    let before = stats(&manager).await;
    let start = Instant::now();
    assert_eq!(store.get_by_id(&1).await.unwrap(), db_row(&db, 1).await);
    let took = start.elapsed();
    let after = stats(&manager).await;
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut redis)
        .await
        .unwrap();
    db.cleanup().await;
    assert_eq!(
        (after.hits - before.hits, after.timeouts - before.timeouts),
        (1, 0),
        "the cached read was a hit, answered in {took:?}: {after:?}"
    );
}
