//! Invalidation from the write-ahead log (`watch_wal`, feature `wal`):
//! raw SQL writes, commit order, crash safety, what triggers miss, the
//! operations of slots, and the errors that point to the trigger outbox.
//! Each test runs a private PostgreSQL cluster with `wal_level = logical`
//! (testkit `PgServer::start_logical`) and its own Redis key prefix; the
//! shared server is only read (the `wal_level` error).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore, HealthWarning, Query, WalError};
use storehaus_testkit::records::accounts::{cached, fresh_within, raw, Account};
use storehaus_testkit::*;

const WITHIN: Duration = Duration::from_secs(10);

/// A private logical cluster with `accounts` 1..=n at balance 100.
struct Logical {
    server: PgServer,
    pool: PgPool,
    /// Another service's pool: no store, no cache.
    other: PgPool,
}

impl Logical {
    async fn new(n: i64) -> Logical {
        Self::with(n, &[]).await
    }

    async fn with(n: i64, extra: &[&str]) -> Logical {
        let settings: Vec<&str> = LOGICAL_SETTINGS.iter().chain(extra).copied().collect();
        let server = PgServer::start_with(&settings);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&server.url())
            .await
            .unwrap();
        let other = PgPoolOptions::new()
            .max_connections(4)
            .connect(&server.url())
            .await
            .unwrap();
        raw(
            &pool,
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)",
        )
        .await;
        raw(
            &pool,
            &format!("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, {n}) g"),
        )
        .await;
        Logical { server, pool, other }
    }

    fn store(&self, manager: &Arc<CacheManager>) -> GenericStore<Account> {
        GenericStore::<Account>::new(self.pool.clone(), None, Some(CacheParams::new(manager.clone())))
    }

    async fn slots(&self) -> Vec<(String, bool)> {
        sqlx::query_as("SELECT slot_name::text, active FROM pg_replication_slots ORDER BY 1")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

/// Manager of deployment `global` on `url`, polling every 200 ms.
fn process(url: &str, global: &str, expiry_ms: u64) -> Arc<CacheManager> {
    let config = CacheConfig::new(url, 3600, global)
        .with_timeout(300)
        .with_outbox_poll_interval(200)
        .with_deployment_expiry(expiry_ms);
    Arc::new(CacheManager::new(config).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_outside_a_store_reach_the_cache_through_the_log() {
    let db = Logical::new(3).await;
    let manager = manager();
    let accounts = db.store(&manager);
    accounts.watch_wal().await.unwrap();
    let other = &db.other;

    // UPDATE: the cached row is replaced.
    cached(&accounts, &redis_url(), 1).await;
    raw(other, "UPDATE accounts SET balance = 150 WHERE id = 1").await;
    fresh_within(&accounts, 1, Some(150), WITHIN).await;

    // INSERT: a cached "no such row" is cleared.
    assert_eq!(accounts.get_by_id(&9).await.unwrap(), None);
    cached(&accounts, &redis_url(), 9).await;
    raw(other, "INSERT INTO accounts VALUES (9, 900)").await;
    fresh_within(&accounts, 9, Some(900), WITHIN).await;

    // DELETE
    cached(&accounts, &redis_url(), 2).await;
    raw(other, "DELETE FROM accounts WHERE id = 2").await;
    fresh_within(&accounts, 2, None, WITHIN).await;

    // An UPDATE of the primary key invalidates the old and the new id.
    cached(&accounts, &redis_url(), 3).await;
    assert_eq!(accounts.get_by_id(&30).await.unwrap(), None);
    cached(&accounts, &redis_url(), 30).await;
    raw(other, "UPDATE accounts SET id = 30 WHERE id = 3").await;
    fresh_within(&accounts, 3, None, WITHIN).await;
    fresh_within(&accounts, 30, Some(100), WITHIN).await;

    // TRUNCATE clears the store's whole key space.
    cached(&accounts, &redis_url(), 1).await;
    raw(other, "TRUNCATE accounts").await;
    fresh_within(&accounts, 1, None, WITHIN).await;

    // A cached query result is invalidated by an external write.
    raw(other, "INSERT INTO accounts VALUES (1, 10), (2, 20)").await;
    fresh_within(&accounts, 1, Some(10), WITHIN).await;
    let rich = || Query::<Account>::new().filter(Account::columns().balance.ge(15));
    assert_eq!(accounts.count(rich()).await.unwrap(), 1);
    assert_eq!(accounts.count(rich()).await.unwrap(), 1);
    wait_for_fills(&manager, 1).await;
    raw(other, "UPDATE accounts SET balance = 50 WHERE id = 1").await;
    let start = Instant::now();
    while accounts.count(rich()).await.unwrap() != 2 {
        assert!(start.elapsed() < WITHIN, "the cached count was never invalidated");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let stats = manager.get_stats().await.unwrap();
    assert!(stats.outbox_delivered >= 7, "{stats:?}");
    // One slot, streamed, and no trigger on the table.
    let slots = db.slots().await;
    assert_eq!(slots.len(), 1, "{slots:?}");
    assert!(slots[0].1, "{slots:?}");
    let triggers: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'accounts'::regclass")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(triggers, 0);
    clear_prefix(&manager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_transactions_committing_out_of_order_are_both_delivered() {
    let db = Logical::new(3).await;
    raw(&db.pool, "CREATE TABLE elsewhere (id bigint PRIMARY KEY)").await;
    let manager = manager();
    let accounts = db.store(&manager);
    accounts.watch_wal().await.unwrap();
    for id in 1..=3 {
        cached(&accounts, &redis_url(), id).await;
    }

    // A long transaction elsewhere stays open through the whole test.
    let mut long = db.other.begin().await.unwrap();
    sqlx::query("INSERT INTO elsewhere VALUES (1)")
        .execute(&mut *long)
        .await
        .unwrap();
    // The first writer takes the older transaction id, the second a newer
    // one; the newer commits first.
    let mut older = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE accounts SET balance = 1 WHERE id = 1")
        .execute(&mut *older)
        .await
        .unwrap();
    let mut newer = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE accounts SET balance = 2 WHERE id = 2")
        .execute(&mut *newer)
        .await
        .unwrap();
    let (older_xid, newer_xid): (i64, i64) = (
        sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(&mut *older)
            .await
            .unwrap(),
        sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(&mut *newer)
            .await
            .unwrap(),
    );
    assert!(older_xid < newer_xid);
    newer.commit().await.unwrap();
    fresh_within(&accounts, 2, Some(2), WITHIN).await;
    older.commit().await.unwrap();
    fresh_within(&accounts, 1, Some(1), WITHIN).await;

    // Still open, the long transaction holds nothing back.
    raw(&db.other, "UPDATE accounts SET balance = 3 WHERE id = 3").await;
    fresh_within(&accounts, 3, Some(3), WITHIN).await;
    long.rollback().await.unwrap();
    clear_prefix(&manager).await;
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "ledger", prefix = "ledger")]
pub struct Entry {
    pub id: i64,
    pub balance: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_triggers_miss_reaches_the_cache() {
    let db = Logical::new(2).await;
    for sql in [
        "CREATE TABLE ledger (id bigint PRIMARY KEY, balance bigint NOT NULL) PARTITION BY RANGE (id)",
        "CREATE TABLE ledger_low PARTITION OF ledger FOR VALUES FROM (0) TO (100)",
        "CREATE TABLE ledger_high PARTITION OF ledger FOR VALUES FROM (100) TO (200)",
        "INSERT INTO ledger VALUES (1, 10), (150, 10)",
    ] {
        raw(&db.pool, sql).await;
    }
    let manager = manager();
    let accounts = db.store(&manager);
    let ledger = GenericStore::<Entry>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    accounts.watch_wal().await.unwrap();
    ledger.watch_wal().await.unwrap();
    let mut redis = raw_redis(&redis_url()).await;

    // A write addressed to a partition is published as its root's.
    for id in [1, 150] {
        ledger.get_by_id(&id).await.unwrap();
        manager.flush_fills().await;
        wait_for_value(&mut redis, &ledger.cache_key(&id)).await;
    }
    raw(&db.other, "UPDATE ledger_low SET balance = 11 WHERE id = 1").await;
    raw(&db.other, "DELETE FROM ledger_high WHERE id = 150").await;
    let start = Instant::now();
    loop {
        let low = ledger.get_by_id(&1).await.unwrap().map(|e| e.balance);
        let high = ledger.get_by_id(&150).await.unwrap();
        if low == Some(11) && high.is_none() {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "partition writes not delivered: {low:?} {high:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Rows applied as a replica applies them (logical replication,
    // pg_restore --disable-triggers) fire no ordinary trigger.
    cached(&accounts, &redis_url(), 1).await;
    let mut tx = db.other.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE accounts SET balance = 7 WHERE id = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    fresh_within(&accounts, 1, Some(7), WITHIN).await;

    // TRUNCATE of one partition clears the store.
    ledger.get_by_id(&1).await.unwrap();
    manager.flush_fills().await;
    wait_for_value(&mut redis, &ledger.cache_key(&1)).await;
    raw(&db.other, "TRUNCATE ledger_low").await;
    let start = Instant::now();
    while ledger.get_by_id(&1).await.unwrap().is_some() {
        assert!(start.elapsed() < WITHIN, "a partition's TRUNCATE was not delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    clear_prefix(&manager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_slot_holds_the_changes_and_reads_bypass_the_cache() {
    let db = Logical::new(1).await;
    let mut redis_server = RedisServer::start().await;
    let manager = process(&redis_server.url(), &random_name("t"), 60_000);
    let accounts = db.store(&manager);
    accounts.watch_wal().await.unwrap();
    cached(&accounts, &redis_server.url(), 1).await;
    let key = accounts.cache_key(&1);
    let mut redis = raw_redis(&redis_server.url()).await;
    let v1 = raw_get(&mut redis, &key).await.unwrap();
    redis_server.kill();

    raw(&db.other, "UPDATE accounts SET balance = 2 WHERE id = 1").await;
    let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Reads bypass the cache while the change cannot be delivered.
    fresh_within(&accounts, 1, Some(2), WITHIN).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let confirmed_past: bool = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name LIKE 'storehaus_%'",
    )
    .bind(&end)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        !confirmed_past,
        "the slot was confirmed past a change the cache never acknowledged"
    );

    // Redis returns with the old value (a restart from its last snapshot):
    // the held change is delivered before cached reads resume.
    redis_server.restart().await;
    let mut redis = raw_redis(&redis_server.url()).await;
    set_raw(&mut redis, &key, &v1).await;
    let read = accounts.get_by_id(&1).await.unwrap().map(|a| a.balance);
    assert_eq!(
        read,
        Some(2),
        "a read served the old value before the held change was delivered"
    );
    eventually("the held change was delivered", || async {
        let mut redis = raw_redis(&redis_server.url()).await;
        raw_get(&mut redis, &key).await.is_none()
    })
    .await;
    fresh_within(&accounts, 1, Some(2), WITHIN).await;
    // And the cache serves hits again.
    cached(&accounts, &redis_server.url(), 1).await;
    let hits = manager.get_stats().await.unwrap().hits;
    accounts.get_by_id(&1).await.unwrap();
    assert!(
        manager.get_stats().await.unwrap().hits > hits,
        "no cache hit after the outage"
    );
}

/// The child process of the crash tests: a process of deployment
/// `WAL_CHILD_GLOBAL` that watches `accounts` through the log and waits
/// to be killed; with `WAL_CHILD_PAUSE` its reader holds after its first
/// delivery, before confirming the slot. Runs only when a test starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the crash-safety tests; it runs only when one of them starts it"]
async fn wal_child_streams_until_killed() {
    let (Ok(pg), Ok(redis), Ok(global)) = (
        std::env::var("WAL_CHILD_PG"),
        std::env::var("WAL_CHILD_REDIS"),
        std::env::var("WAL_CHILD_GLOBAL"),
    ) else {
        return;
    };
    let pool = PgPoolOptions::new().max_connections(4).connect(&pg).await.unwrap();
    let manager = process(&redis, &global, 4_000);
    let pause = std::env::var("WAL_CHILD_PAUSE")
        .is_ok()
        .then(|| manager.test_hooks().pause_wal_confirm());
    let accounts = GenericStore::<Account>::new(pool, None, Some(CacheParams::new(manager.clone())));
    accounts.watch_wal().await.unwrap();
    println!("CHILD-READY");
    if let Some(pause) = pause {
        pause.reached().await;
        println!("CHILD-DELIVERED");
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// Starts the child; returns it once it printed `line`, and a reader of
/// its further lines.
fn child(
    db: &Logical,
    redis: &str,
    global: &str,
    pause: bool,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "wal_child_streams_until_killed", "--ignored", "--nocapture"])
        .env("WAL_CHILD_PG", db.server.url())
        .env("WAL_CHILD_REDIS", redis)
        .env("WAL_CHILD_GLOBAL", global)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if pause {
        command.env("WAL_CHILD_PAUSE", "1");
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn expect_line(lines: &std::sync::mpsc::Receiver<String>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            if line.contains(want) {
                return;
            }
        }
    }
    panic!("the child never printed {want}");
}

/// The slot's confirmed position, and whether it is at or past `lsn`.
async fn confirmed_past(pool: &PgPool, lsn: &str) -> bool {
    sqlx::query_scalar(
        "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name LIKE 'storehaus_%'",
    )
    .bind(lsn)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_killed_after_the_cache_acknowledged_but_before_confirming_is_redelivered() {
    let db = Logical::new(1).await;
    let global = random_name("t");
    let (mut child, lines) = child(&db, &redis_url(), &global, true);
    expect_line(&lines, "CHILD-READY");

    // v1 is cached (by a process of the deployment that does not watch).
    let plain = process(&redis_url(), &global, 4_000);
    let accounts = db.store(&plain);
    cached(&accounts, &redis_url(), 1).await;
    let key = accounts.cache_key(&1);
    let mut redis = raw_redis(&redis_url()).await;
    let v1 = raw_get(&mut redis, &key).await.unwrap();

    raw(&db.other, "UPDATE accounts SET balance = 2 WHERE id = 1").await;
    let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // The child delivered (the key is gone) and holds before confirming.
    expect_line(&lines, "CHILD-DELIVERED");
    assert_eq!(raw_get(&mut redis, &key).await, None);
    // Another message makes the child's stream send a status update.
    raw(&db.other, "SELECT pg_logical_emit_message(false, 'test', 'wake')").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !confirmed_past(&db.pool, &end).await,
        "confirmed before the confirmation step"
    );

    // Killed there; the cache loses the delivery (the old value is back,
    // as after a Redis failover that lost the write).
    child.kill().unwrap();
    child.wait().unwrap();
    set_raw(&mut redis, &key, &v1).await;

    // The next process of the deployment resumes from the slot: redelivered.
    let next = process(&redis_url(), &global, 4_000);
    let accounts = db.store(&next);
    accounts.watch_wal().await.unwrap();
    fresh_within(&accounts, 1, Some(2), WITHIN).await;
    eventually("the slot confirmed the change", || async {
        confirmed_past(&db.pool, &end).await
    })
    .await;
    clear_prefix(&next).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_killed_before_the_cache_acknowledged_is_delivered_after_restart() {
    let db = Logical::new(1).await;
    let global = random_name("t");
    // The child's Redis is down (nothing listens on its port).
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let (mut child, lines) = child(&db, &dead, &global, false);
    expect_line(&lines, "CHILD-READY");

    let plain = process(&redis_url(), &global, 4_000);
    let accounts = db.store(&plain);
    cached(&accounts, &redis_url(), 1).await;
    raw(&db.other, "UPDATE accounts SET balance = 2 WHERE id = 1").await;
    let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // The child received the change (its session was sent past it) and
    // could not deliver it.
    eventually("the child's stream received the change", || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(bool_or(sent_lsn >= $1::pg_lsn), false) FROM pg_stat_replication",
        )
        .bind(&end)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!confirmed_past(&db.pool, &end).await);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut redis = raw_redis(&redis_url()).await;
    assert!(
        raw_get(&mut redis, &accounts.cache_key(&1)).await.is_some(),
        "v1 is still cached"
    );

    // Restarted with its Redis: the change is delivered.
    let next = process(&redis_url(), &global, 4_000);
    let accounts = db.store(&next);
    accounts.watch_wal().await.unwrap();
    fresh_within(&accounts, 1, Some(2), WITHIN).await;
    clear_prefix(&next).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_each_get_every_change_and_a_restart_resumes() {
    let db = Logical::new(2).await;
    let (one, two) = (random_name("t"), random_name("t"));
    let first = process(&redis_url(), &one, 60_000);
    let second = process(&redis_url(), &two, 60_000);
    let (a, b) = (db.store(&first), db.store(&second));
    a.watch_wal().await.unwrap();
    b.watch_wal().await.unwrap();
    assert_eq!(db.slots().await.len(), 2, "one slot per deployment");
    cached(&a, &redis_url(), 1).await;
    cached(&b, &redis_url(), 1).await;
    raw(&db.other, "UPDATE accounts SET balance = 5 WHERE id = 1").await;
    fresh_within(&a, 1, Some(5), WITHIN).await;
    fresh_within(&b, 1, Some(5), WITHIN).await;

    // The first deployment stops; a write while it is away is delivered
    // when it comes back (its slot kept the position).
    cached(&a, &redis_url(), 2).await;
    drop(a);
    drop(first);
    eventually("the first deployment's slot is free", || async {
        db.slots().await.iter().filter(|(_, active)| *active).count() == 1
    })
    .await;
    raw(&db.other, "UPDATE accounts SET balance = 6 WHERE id = 2").await;
    let back = process(&redis_url(), &one, 60_000);
    let a = db.store(&back);
    a.watch_wal().await.unwrap();
    fresh_within(&a, 2, Some(6), WITHIN).await;
    assert_eq!(db.slots().await.len(), 2, "resumed, not a new slot");
    clear_prefix(&back).await;
    clear_prefix(&second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_of_a_deployment_take_turns_and_a_stalled_holder_is_replaced() {
    let db = Logical::new(2).await;
    let global = random_name("t");
    // Two processes in this one: one streams, the other stands by.
    let p1 = process(&redis_url(), &global, 3_000);
    let p2 = process(&redis_url(), &global, 3_000);
    let (a, b) = (db.store(&p1), db.store(&p2));
    a.watch_wal().await.unwrap();
    b.watch_wal().await.unwrap();
    let senders: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_replication")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(senders, 1, "only one session streams the slot");
    cached(&b, &redis_url(), 1).await;
    raw(&db.other, "UPDATE accounts SET balance = 3 WHERE id = 1").await;
    fresh_within(&a, 1, Some(3), WITHIN).await;
    fresh_within(&b, 1, Some(3), WITHIN).await;
    // The standby registers a store of its own prefix on the same table:
    // the holder delivers to it too.
    let params = CacheParams::new(p2.clone()).with_prefix("accounts_b".to_string());
    let c = GenericStore::<Account>::new(db.pool.clone(), None, Some(params));
    c.watch_wal().await.unwrap();
    cached(&c, &redis_url(), 1).await;
    raw(&db.other, "UPDATE accounts SET balance = 4 WHERE id = 1").await;
    // Delivered (the entry is deleted), not only bypassed.
    let key = c.cache_key(&1);
    eventually("the new prefix's entry was invalidated", || async {
        raw_get(&mut raw_redis(&redis_url()).await, &key).await.is_none()
    })
    .await;
    fresh_within(&c, 1, Some(4), WITHIN).await;
    drop((a, b, c, p1, p2));

    // A process holds the slot and stalls (SIGSTOP): another process of
    // the deployment bypasses its cache meanwhile, then takes the slot
    // over once the holder has not caught up for half its expiry (8 s).
    eventually("the first two processes let go of the slot", || async {
        db.slots().await.iter().all(|(_, active)| !active)
    })
    .await;
    let (mut child, lines) = child(&db, &redis_url(), &global, false);
    expect_line(&lines, "CHILD-READY");
    eventually("the child streams the slot", || async {
        db.slots().await.iter().all(|(_, active)| *active)
    })
    .await;
    let standby = process(&redis_url(), &global, 16_000);
    let accounts = db.store(&standby);
    accounts.watch_wal().await.unwrap();
    cached(&accounts, &redis_url(), 2).await;
    let holder: i32 = sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    raw(&db.other, "UPDATE accounts SET balance = 4 WHERE id = 2").await;
    let stalled = Instant::now();
    // Fresh (the cache is bypassed) while the stale entry is still in Redis.
    let mut redis = raw_redis(&redis_url()).await;
    let key = accounts.cache_key(&2);
    fresh_within(&accounts, 2, Some(4), Duration::from_secs(4)).await;
    assert!(raw_get(&mut redis, &key).await.is_some(), "nobody delivered yet");
    // Taken over, and the change delivered, within the bound.
    while raw_get(&mut redis, &key).await.is_some() {
        assert!(
            stalled.elapsed() < Duration::from_secs(16),
            "the stalled holder was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = stalled.elapsed();
    assert!(
        took >= Duration::from_secs(7),
        "taken over after {took:?}, before the bound"
    );
    let now: Option<i32> = sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_ne!(now, Some(holder), "the stalled session still holds the slot");
    // The cache serves again.
    cached(&accounts, &redis_url(), 2).await;
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    child.kill().unwrap();
    child.wait().unwrap();
    clear_prefix(&standby).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_whose_deployment_is_gone_is_reported_and_can_be_dropped() {
    let db = Logical::new(1).await;
    let gone_name = random_name("t");
    let gone = process(&redis_url(), &gone_name, 1_000);
    db.store(&gone).watch_wal().await.unwrap();
    drop(gone);
    let watcher = process(&redis_url(), &random_name("t"), 1_000);
    let accounts = db.store(&watcher);
    accounts.watch_wal().await.unwrap();
    // WAL written while it is away is retained for it.
    raw(&db.other, "UPDATE accounts SET balance = balance + 1").await;
    raw(&db.other, "SELECT pg_switch_wal()").await;
    raw(&db.other, "UPDATE accounts SET balance = balance + 1").await;

    let mut warned = None;
    let start = Instant::now();
    while warned.is_none() && start.elapsed() < Duration::from_secs(15) {
        let health = watcher.health_check().await.unwrap();
        warned = health.warnings.into_iter().find_map(|w| match w {
            HealthWarning::WalSlotRetained {
                deployment,
                retained_bytes,
                ..
            } if deployment == gone_name => Some(retained_bytes),
            _ => None,
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let retained = warned.expect("the health check reports the abandoned slot");
    assert!(retained > 0);
    let slots = accounts.wal_slots().await.unwrap();
    assert!(
        slots.iter().any(|s| s.deployment == gone_name && s.abandoned),
        "{slots:?}"
    );

    assert!(accounts.drop_wal_deployment(&gone_name).await.unwrap());
    assert_eq!(db.slots().await.len(), 1, "only the watcher's slot is left");
    assert!(!accounts.drop_wal_deployment(&gone_name).await.unwrap());
    clear_prefix(&watcher).await;
}

/// A deployment `global` (cache on `url`) that cached account 1 at
/// balance 100, went away, missed an update to 2, and whose slot the
/// server then invalidated (past `max_slot_wal_keep_size`).
async fn invalidated(url: &str) -> (Logical, String) {
    let db = Logical::with(1, &["max_slot_wal_keep_size=1MB", "wal_keep_size=0"]).await;
    raw(&db.pool, "CREATE TABLE filler (id bigint, pad text)").await;
    let global = random_name("t");
    let first = process(url, &global, 60_000);
    let accounts = db.store(&first);
    accounts.watch_wal().await.unwrap();
    cached(&accounts, url, 1).await;
    drop(accounts);
    drop(first);
    eventually("the slot is free", || async {
        db.slots().await.iter().all(|(_, active)| !active)
    })
    .await;

    // While the deployment is away, a change it must see, then more WAL
    // than max_slot_wal_keep_size: the server invalidates the slot.
    raw(&db.other, "UPDATE accounts SET balance = 2 WHERE id = 1").await;
    eventually("the slot was invalidated", || async {
        raw(
            &db.other,
            "INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
        )
        .await;
        raw(&db.other, "SELECT pg_switch_wal()").await;
        raw(&db.other, "CHECKPOINT").await;
        let status: String = sqlx::query_scalar("SELECT wal_status FROM pg_replication_slots")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        status == "lost"
    })
    .await;

    (db, global)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_makes_its_deployment_start_over_and_say_so() {
    let (db, global) = invalidated(&redis_url()).await;

    // The old value is still in Redis; the deployment comes back, starts
    // over (clearing what it cached), and says so.
    let back = process(&redis_url(), &global, 60_000);
    let accounts = db.store(&back);
    accounts.watch_wal().await.unwrap();
    fresh_within(&accounts, 1, Some(2), WITHIN).await;
    let mut said = None;
    let start = Instant::now();
    while said.is_none() && start.elapsed() < WITHIN {
        said = back
            .health_check()
            .await
            .unwrap()
            .warnings
            .into_iter()
            .find_map(|w| match w {
                HealthWarning::WalStartedOver { reason, .. } => Some(reason),
                _ => None,
            });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reason = said.expect("the health check says the deployment started over");
    assert!(reason.contains("max_slot_wal_keep_size"), "{reason}");
    // A new slot streams, and changes flow again.
    cached(&accounts, &redis_url(), 1).await;
    raw(&db.other, "UPDATE accounts SET balance = 3 WHERE id = 1").await;
    fresh_within(&accounts, 1, Some(3), WITHIN).await;
    clear_prefix(&back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_logical_wal_or_replication_the_error_points_to_the_trigger_outbox() {
    // The shared server runs wal_level = replica (only read here).
    let db = Db::new().await;
    db.exec("CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)")
        .await;
    let level: String = sqlx::query_scalar("SHOW wal_level").fetch_one(&db.pool).await.unwrap();
    let manager = manager();
    let accounts = GenericStore::<Account>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    if level != "logical" {
        let err = accounts.watch_wal().await.unwrap_err();
        assert!(
            matches!(&err, StorehausError::Wal(WalError::WalLevel { wal_level }) if *wal_level == level),
            "{err:?}"
        );
        assert!(err.to_string().contains("watch_external_writes"), "{err}");
    }
    db.cleanup().await;

    // A logical server, a role without REPLICATION.
    let logical = Logical::new(1).await;
    raw(&logical.pool, "CREATE ROLE app LOGIN").await;
    raw(&logical.pool, "GRANT ALL ON accounts TO app").await;
    let app = PgPoolOptions::new()
        .connect(&logical.server.url_as("app", "postgres"))
        .await
        .unwrap();
    let accounts = GenericStore::<Account>::new(app, None, Some(CacheParams::new(manager.clone())));
    let err = accounts.watch_wal().await.unwrap_err();
    assert!(
        matches!(&err, StorehausError::Wal(WalError::NoReplicationRole { role }) if role == "app"),
        "{err:?}"
    );
    assert!(err.to_string().contains("ALTER ROLE app REPLICATION"), "{err}");
    assert!(err.to_string().contains("watch_external_writes"), "{err}");
    assert!(logical.slots().await.is_empty(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_makes_reads_bypass_the_cache_until_it_catches_up() {
    let db = Logical::new(1).await;
    let manager = process(&redis_url(), &random_name("t"), 60_000);
    let accounts = db.store(&manager);
    accounts.watch_wal().await.unwrap();
    cached(&accounts, &redis_url(), 1).await;
    // The server's WAL sender for this slot stops (as under a stuck disk
    // or a saturated server): nothing is decoded, heartbeats stop coming back.
    let sender: i32 = sqlx::query_scalar("SELECT pid FROM pg_stat_replication")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(Command::new("kill")
        .args(["-STOP", &sender.to_string()])
        .status()
        .unwrap()
        .success());
    raw(&db.other, "UPDATE accounts SET balance = 2 WHERE id = 1").await;
    // The reader sees its heartbeat overdue and closes the read gate:
    // reads are fresh although the stale entry is still in Redis.
    fresh_within(&accounts, 1, Some(2), Duration::from_secs(4)).await;
    let mut redis = raw_redis(&redis_url()).await;
    assert!(
        raw_get(&mut redis, &accounts.cache_key(&1)).await.is_some(),
        "nothing delivered yet"
    );
    // The sender resumes: the change is delivered and the cache serves again.
    assert!(Command::new("kill")
        .args(["-CONT", &sender.to_string()])
        .status()
        .unwrap()
        .success());
    eventually("the held change was delivered", || async {
        raw_get(&mut raw_redis(&redis_url()).await, &accounts.cache_key(&1))
            .await
            .is_none()
    })
    .await;
    cached(&accounts, &redis_url(), 1).await;
    let hits = manager.get_stats().await.unwrap().hits;
    let start = Instant::now();
    while manager.get_stats().await.unwrap().hits == hits {
        assert!(start.elapsed() < WITHIN, "the cache never served again");
        accounts.get_by_id(&1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clear_prefix(&manager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_over_that_cannot_reach_the_cache_is_finished_before_the_cache_is_trusted() {
    let mut redis_server = RedisServer::start().await;
    let (db, global) = invalidated(&redis_server.url()).await;
    let key = db.store(&process(&redis_server.url(), &global, 60_000)).cache_key(&1);
    let mut redis = raw_redis(&redis_server.url()).await;
    let v1 = raw_get(&mut redis, &key).await.expect("v1 cached");
    // The deployment comes back while its Redis is down: the new slot is
    // created, the clear fails.
    redis_server.kill();
    let back = process(&redis_server.url(), &global, 60_000);
    let accounts = db.store(&back);
    accounts.watch_wal().await.unwrap();
    eventually("the new slot exists", || async {
        sqlx::query_scalar::<_, String>("SELECT wal_status FROM pg_replication_slots")
            .fetch_one(&db.pool)
            .await
            .is_ok_and(|s| s != "lost")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Redis returns with the old value: the start-over is finished (the
    // clear) before the cache serves it.
    redis_server.restart().await;
    let mut redis = raw_redis(&redis_server.url()).await;
    set_raw(&mut redis, &key, &v1).await;
    fresh_within(&accounts, 1, Some(2), WITHIN).await;
    eventually("the old entry was cleared", || async {
        raw_get(&mut raw_redis(&redis_server.url()).await, &key).await != Some(v1.clone())
    })
    .await;
    fresh_within(&accounts, 1, Some(2), WITHIN).await;
}
