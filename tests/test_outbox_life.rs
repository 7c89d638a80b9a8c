//! The outbox (`watch_external_writes`) under what production databases do:
//! a long transaction anywhere on the server, transactions that commit out
//! of xid order, a peer holding the deployment's position row, two
//! in-process caches with one prefix, deployments that stop renewing, a
//! database restored from a dump or a position moved by hand, an
//! invalidation that failed to reach Redis, triggers that disappear or are
//! skipped (a swapped table, `session_replication_role = replica`, writes
//! addressed to a partition) and SQLite's REPLACE. Every scenario uses real
//! connections and servers, no test hooks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore, HealthWarning};
use storehaus_testkit::records::accounts::{
    account, accounts_db, balance, cached, fresh_within, other_service, raw, serves_hits, Account,
};
use storehaus_testkit::*;

const WITHIN: Duration = Duration::from_secs(5);

fn store(pool: impl Into<storehaus::DbPool>, manager: &Arc<CacheManager>) -> GenericStore<Account> {
    GenericStore::<Account>::new(pool, None, Some(CacheParams::new(manager.clone())))
}

/// A store on `rows` accounts in a schema of its own, watching external
/// writes through the outbox polled every `poll_ms` (the default when
/// `None`), and another service's pool on the same schema.
async fn watched(rows: i64, poll_ms: Option<u64>) -> (Db, Arc<CacheManager>, GenericStore<Account>, PgPool) {
    let db = accounts_db(rows).await;
    let manager = match poll_ms {
        Some(ms) => manager_on(&redis_url(), |c| c.with_outbox_poll_interval(ms)),
        None => manager(),
    };
    let accounts = store(db.pool.clone(), &manager);
    accounts.watch_external_writes().await.unwrap();
    let other = other_service(&db).await;
    (db, manager, accounts, other)
}

/// A transaction left open on its own connection, as psql would leave it.
async fn open_transaction(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    // An xid of its own: the server's horizon stops at it.
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_elsewhere_holds_back_no_invalidation() {
    let (db, manager, accounts, other) = watched(20, None).await;
    // A report, a job holding FOR UPDATE, an idle-in-transaction session.
    let long = open_transaction(&other).await;

    let mut took = Vec::new();
    for round in 0..40 {
        let id = round % 20 + 1;
        cached(&accounts, &redis_url(), id).await;
        raw(
            &other,
            &format!("UPDATE accounts SET balance = {round} WHERE id = {id}"),
        )
        .await;
        took.push(fresh_within(&accounts, id, Some(round), WITHIN).await);
    }
    took.sort();
    eprintln!(
        "external write -> fresh read with a transaction open elsewhere: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took[took.len() - 1]
    );
    let stats = manager.get_stats().await.unwrap();
    assert_eq!(stats.outbox_backlog, 0, "everything visible is delivered: {stats:?}");
    // The status counts what is visible and undelivered (it records what
    // was delivered once the pass that delivered it ends).
    eventually("the status shows no backlog", || async {
        accounts.external_writes_status().await.unwrap()[0].backlog == 0
    })
    .await;
    long.rollback().await.unwrap();
    other.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_committing_out_of_xid_order_are_both_delivered() {
    // More rows than one page of the worker (1 000 entries): the position
    // moves in the middle of a round too.
    let (db, manager, accounts, other) = watched(1_600, Some(50)).await;
    cached(&accounts, &redis_url(), 1).await;
    cached(&accounts, &redis_url(), 2).await;

    // T1 takes the lower xid and writes first; T2 writes and commits.
    let mut t1 = other.begin().await.unwrap();
    sqlx::query("UPDATE accounts SET balance = 1 WHERE id = 1")
        .execute(&mut *t1)
        .await
        .unwrap();
    let mut t2 = other.begin().await.unwrap();
    sqlx::query("UPDATE accounts SET balance = 2 WHERE id >= 2")
        .execute(&mut *t2)
        .await
        .unwrap();
    t2.commit().await.unwrap();
    fresh_within(&accounts, 2, Some(2), WITHIN).await;
    eventually("the worker went through both pages", || async {
        manager.get_stats().await.unwrap().outbox_delivered >= 1_599
    })
    .await;
    // Passes run while T1 is open: T2's entry is behind the worker, T1's
    // (lower xid, lower sequence) is not visible yet.
    accounts.watch_external_writes().await.unwrap();
    cached(&accounts, &redis_url(), 1).await;
    t1.commit().await.unwrap();
    fresh_within(&accounts, 1, Some(1), WITHIN).await;
    other.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_the_position_row_does_not_stop_delivery() {
    let (db, manager, accounts, other) = watched(2, Some(100)).await;

    // A stalled worker of the same deployment holds its position row.
    let mut peer = other.begin().await.unwrap();
    sqlx::query("SELECT * FROM storehaus_outbox_positions WHERE deployment = $1 FOR UPDATE")
        .bind(manager.deployment())
        .execute(&mut *peer)
        .await
        .unwrap();
    let mut took = Vec::new();
    for round in 1..=3 {
        cached(&accounts, &redis_url(), 1).await;
        raw(&other, &format!("UPDATE accounts SET balance = {round} WHERE id = 1")).await;
        took.push(fresh_within(&accounts, 1, Some(round), WITHIN).await);
    }
    eprintln!("delivery while a peer holds the position row: {took:?}");
    assert_eq!(manager.get_stats().await.unwrap().outbox_backlog, 0);
    peer.rollback().await.unwrap();
    other.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_in_process_caches_with_one_prefix_each_get_every_write() {
    let db = accounts_db(10).await;
    let global = random_name("t");
    let process = || {
        let config = CacheConfig::new("memory://", 3600, global.clone()).with_outbox_poll_interval(50);
        Arc::new(CacheManager::new(config).unwrap())
    };
    let (a, b) = (process(), process());
    assert_ne!(a.deployment(), b.deployment(), "each in-process cache is a deployment");
    let (sa, sb) = (store(db.pool.clone(), &a), store(db.pool.clone(), &b));
    sa.watch_external_writes().await.unwrap();
    sb.watch_external_writes().await.unwrap();
    let other = other_service(&db).await;
    for id in 1..=10 {
        sa.get_by_id(&id).await.unwrap();
        sb.get_by_id(&id).await.unwrap();
    }
    a.flush_fills().await;
    b.flush_fills().await;
    // One write at a time, each seen fresh by A before the next: a worker
    // that shares A's position would find each entry already passed.
    for id in 1..=10 {
        raw(
            &other,
            &format!("UPDATE accounts SET balance = {} WHERE id = {id}", 1000 + id),
        )
        .await;
        fresh_within(&sa, id, Some(1000 + id), WITHIN).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    for id in 1..=10 {
        fresh_within(&sb, id, Some(1000 + id), Duration::from_millis(500)).await;
    }
    let statuses = sa.external_writes_status().await.unwrap();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(statuses.iter().all(|s| s.ephemeral), "{statuses:?}");
    other.close().await;
    db.cleanup().await;
}

async fn outbox_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM storehaus_outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_stops_renewing_expires_unpins_the_outbox_and_starts_over_when_back() {
    let db = accounts_db(2).await;
    let tweak = |c: CacheConfig| c.with_outbox_poll_interval(100).with_deployment_expiry(1_500);
    let live = manager_on(&redis_url(), tweak);
    store(db.pool.clone(), &live).watch_external_writes().await.unwrap();
    // An in-process cache and a Redis deployment that go away (a crash, a
    // scale-down): their workers stop with their managers.
    let gone_memory = manager_on("memory://", tweak);
    store(db.pool.clone(), &gone_memory)
        .watch_external_writes()
        .await
        .unwrap();
    let global = random_name("t");
    let returning = || Arc::new(CacheManager::new(tweak(CacheConfig::new(redis_url(), 3600, global.clone()))).unwrap());
    let first = returning();
    let first_store = store(db.pool.clone(), &first);
    first_store.watch_external_writes().await.unwrap();
    cached(&first_store, &redis_url(), 1).await;
    let key = first_store.cache_key(&1);
    let (memory_name, redis_name) = (gone_memory.deployment().to_string(), first.deployment().to_string());
    drop((first_store, first, gone_memory));

    // Written while they are away: the outbox keeps 200 entries for them.
    let other = other_service(&db).await;
    raw(&other, "UPDATE accounts SET balance = 5 WHERE id = 1").await;
    for _ in 0..199 {
        raw(&other, "UPDATE accounts SET balance = balance WHERE id = 2").await;
    }
    let before = outbox_rows(&other).await;
    assert!(before >= 200, "{before}");
    let start = Instant::now();
    eventually("the deployments that went away expired", || async {
        let statuses = store(db.pool.clone(), &live).external_writes_status().await.unwrap();
        let memory_gone = statuses.iter().all(|s| s.deployment != memory_name);
        let redis_expired = statuses.iter().any(|s| s.deployment == redis_name && s.expired);
        memory_gone && redis_expired
    })
    .await;
    eventually("the outbox was pruned past them", || async {
        outbox_rows(&other).await < 10
    })
    .await;
    eprintln!(
        "outbox rows: {before} while two deployments were away, {} {:?} later (expiry 1.5 s)",
        outbox_rows(&other).await,
        start.elapsed()
    );

    // The Redis deployment comes back. Its cache still holds account 1 at
    // 100, and the entry of the write of 5 is gone from the outbox.
    let mut redis = raw_redis(&redis_url()).await;
    assert!(
        raw_get(&mut redis, &key).await.is_some(),
        "control: the old entry is in Redis"
    );
    let back = returning();
    let back_store = store(db.pool.clone(), &back);
    back_store.watch_external_writes().await.unwrap();
    assert_eq!(back_store.get_by_id(&1).await.unwrap(), Some(account(1, 5)));
    let health = back.health_check().await.unwrap();
    assert!(
        health
            .warnings
            .iter()
            .any(|w| matches!(w, HealthWarning::OutboxStartedOver { reason, .. } if reason.contains("expired"))),
        "{health:?}"
    );
    let statuses = back_store.external_writes_status().await.unwrap();
    let status = statuses.iter().find(|s| s.deployment == redis_name).unwrap();
    assert!(
        !status.expired && status.note.as_deref().is_some_and(|n| n.contains("expired")),
        "{status:?}"
    );
    serves_hits(&back_store, &redis_url(), 1).await;
    other.close().await;
    clear_prefix(&back).await;
    clear_prefix(&live).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_from_a_dump_starts_the_deployment_over() {
    let db = accounts_db(2).await;
    let manager = manager_on(&redis_url(), |c| c.with_outbox_poll_interval(100));
    let accounts = store(db.pool.clone(), &manager);
    accounts.watch_external_writes().await.unwrap();
    cached(&accounts, &redis_url(), 1).await;
    let dump = std::process::Command::new("pg_dump")
        .args(["--no-owner", "-n", &db.schema, "-d", &database_url()])
        .output()
        .expect("pg_dump");
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));

    // Later writes through the store; the cache holds the newer row.
    accounts.update(&1, account(1, 200), None).await.unwrap();
    cached(&accounts, &redis_url(), 1).await;
    // The restore, as `psql --single-transaction` runs a dump: the schema
    // replaced in one transaction, the database back at 100, and no outbox
    // entry for it.
    let admin = PgPool::connect(&database_url()).await.unwrap();
    let mut psql = std::process::Command::new("psql")
        .args(["-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", &database_url()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    use std::io::Write;
    let mut script = format!("DROP SCHEMA \"{}\" CASCADE;\n", db.schema).into_bytes();
    script.extend_from_slice(&dump.stdout);
    psql.stdin.take().unwrap().write_all(&script).unwrap();
    assert!(psql.wait().unwrap().success(), "the restore");
    assert_eq!(balance(&admin_in(&db).await, 1).await, Some(100));

    // The worker notices at its next pass (within the 100 ms poll
    // interval): from then on, never the row of the cache from before.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            accounts.get_by_id(&1).await.unwrap(),
            Some(account(1, 100)),
            "the restored row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reads bypassed the cache from the moment the worker distrusted the
    // position; the note is written when the start-over (a walk of the
    // key space, slow on a busy Redis) is done.
    eventually_within(
        "the status says why the deployment started over",
        Duration::from_secs(30),
        || async {
            let statuses = accounts.external_writes_status().await.unwrap();
            statuses[0].note.as_deref().is_some_and(|n| n.contains("not the one"))
        },
    )
    .await;
    // Started over, the cache serves again.
    serves_hits(&accounts, &redis_url(), 1).await;
    admin.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

/// A pool on the test's schema, opened after the schema was replaced.
async fn admin_in(db: &Db) -> PgPool {
    other_service(db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_ahead_of_the_server_starts_the_deployment_over() {
    let (db, manager, accounts, other) = watched(1, Some(100)).await;
    cached(&accounts, &redis_url(), 1).await;
    // Positions copied from a server whose transaction ids are far ahead.
    raw(&other, "UPDATE storehaus_outbox_positions SET xid = xid + 1000000000").await;
    raw(&other, "UPDATE accounts SET balance = 7 WHERE id = 1").await;
    fresh_within(&accounts, 1, Some(7), WITHIN).await;
    cached(&accounts, &redis_url(), 1).await;
    raw(&other, "UPDATE accounts SET balance = 8 WHERE id = 1").await;
    fresh_within(&accounts, 1, Some(8), WITHIN).await;
    eventually_within(
        "the status says why the deployment started over",
        Duration::from_secs(30),
        || async {
            let statuses = accounts.external_writes_status().await.unwrap();
            statuses[0].note.as_deref().is_some_and(|n| n.contains("ahead"))
        },
    )
    .await;
    serves_hits(&accounts, &redis_url(), 1).await;
    other.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_could_not_reach_redis_is_delivered_when_it_returns() {
    let dir = std::env::temp_dir().join(random_name("redis"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_s = dir.to_string_lossy().to_string();
    let mut server = RedisServer::start_with(&["--dir", &dir_s, "--dbfilename", "dump.rdb"]).await;
    let db = accounts_db(1).await;
    // Without the log of recent invalidations, only the outbox can deliver
    // the change once Redis is back with its old data.
    let manager = manager_on(&server.url(), |c| {
        c.with_timeout(200)
            .with_outbox_poll_interval(100)
            .with_recent_invalidations(0)
    });
    let accounts = store(db.pool.clone(), &manager);
    accounts.watch_external_writes().await.unwrap();
    cached(&accounts, &server.url(), 1).await;
    let mut redis = raw_redis(&server.url()).await;
    let _: () = redis::cmd("SAVE").query_async(&mut redis).await.unwrap();

    server.kill();
    let other = other_service(&db).await;
    raw(&other, "UPDATE accounts SET balance = 9 WHERE id = 1").await;
    // The worker cannot deliver: reads bypass the cache meanwhile.
    for _ in 0..5 {
        assert_eq!(accounts.get_by_id(&1).await.unwrap(), Some(account(1, 9)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(manager.get_stats().await.unwrap().outbox_backlog >= 1);

    // Redis returns with the old row.
    server.restart_locked("lock").await;
    let mut locked = raw_redis(&format!("redis://:lock@127.0.0.1:{}", server.port)).await;
    assert!(
        raw_get(&mut locked, &accounts.cache_key(&1)).await.is_some(),
        "control: the old entry is back"
    );
    server.unlock("lock").await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            accounts.get_by_id(&1).await.unwrap(),
            Some(account(1, 9)),
            "never the old row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.close().await;
    db.cleanup().await;
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_applied_as_a_replica_reach_the_cache() {
    let (db, manager, accounts, other) = watched(1, Some(100)).await;
    cached(&accounts, &redis_url(), 1).await;
    // How logical replication applies a row, and how pg_restore
    // --disable-triggers loads one: ordinary triggers do not fire.
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE accounts SET balance = 3 WHERE id = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    fresh_within(&accounts, 1, Some(3), WITHIN).await;
    other.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_table_is_reported_until_it_is_watched_again() {
    let db = accounts_db(1).await;
    let manager = manager_on(&redis_url(), |c| {
        c.with_outbox_poll_interval(100).with_deployment_expiry(3_000)
    });
    let accounts = store(db.pool.clone(), &manager);
    accounts.watch_external_writes().await.unwrap();
    assert!(manager.health_check().await.unwrap().is_ok());
    let other = other_service(&db).await;
    // An online schema change: a copy of the table swapped in by renames.
    raw(&other, "CREATE TABLE accounts_new (LIKE accounts INCLUDING ALL)").await;
    raw(&other, "INSERT INTO accounts_new SELECT * FROM accounts").await;
    let mut tx = other.begin().await.unwrap();
    for sql in [
        "ALTER TABLE accounts RENAME TO accounts_old",
        "ALTER TABLE accounts_new RENAME TO accounts",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let missing =
        |w: &HealthWarning| matches!(w, HealthWarning::OutboxTriggersMissing { table, .. } if table == "accounts");
    eventually("the worker noticed the lost triggers", || async {
        manager.health_check().await.unwrap().warnings.iter().any(missing)
    })
    .await;
    let statuses = accounts.external_writes_status().await.unwrap();
    assert_eq!(
        statuses[0].missing_triggers,
        vec!["accounts".to_string()],
        "{statuses:?}"
    );

    accounts.watch_external_writes().await.unwrap();
    assert!(accounts.external_writes_status().await.unwrap()[0]
        .missing_triggers
        .is_empty());
    eventually("the warning cleared", || async {
        !manager.health_check().await.unwrap().warnings.iter().any(missing)
    })
    .await;
    cached(&accounts, &redis_url(), 1).await;
    raw(&other, "UPDATE accounts SET balance = 4 WHERE id = 1").await;
    fresh_within(&accounts, 1, Some(4), WITHIN).await;
    other.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "readings", prefix = "readings")]
struct Reading {
    id: i64,
    value: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_addressed_to_a_partition_reach_the_cache() {
    let db = Db::with_max_connections(10).await;
    db.exec("CREATE TABLE readings (id bigint PRIMARY KEY, value bigint NOT NULL) PARTITION BY RANGE (id)")
        .await;
    db.exec("CREATE TABLE readings_low PARTITION OF readings FOR VALUES FROM (0) TO (100)")
        .await;
    db.exec("CREATE TABLE readings_high PARTITION OF readings FOR VALUES FROM (100) TO (200)")
        .await;
    db.exec("INSERT INTO readings VALUES (1, 1), (150, 1)").await;
    let manager = manager_on(&redis_url(), |c| {
        c.with_outbox_poll_interval(100).with_deployment_expiry(3_000)
    });
    let readings = GenericStore::<Reading>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    readings.watch_external_writes().await.unwrap();
    let other = other_service(&db).await;
    let mut redis = raw_redis(&redis_url()).await;
    let value_within = |id: i64, want: Option<i64>| {
        let readings = readings.clone();
        async move {
            let start = Instant::now();
            loop {
                let got = readings.get_by_id(&id).await.unwrap().map(|r| r.value);
                if got == want {
                    return;
                }
                assert!(start.elapsed() < WITHIN, "reading {id}: still {got:?}, want {want:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for id in [1, 150, 151] {
        readings.get_by_id(&id).await.unwrap();
        wait_for_value(&mut redis, &readings.cache_key(&id)).await;
    }
    // Through a partition, through the parent, an insert into a partition.
    raw(&other, "UPDATE readings_low SET value = 2 WHERE id = 1").await;
    value_within(1, Some(2)).await;
    raw(&other, "UPDATE readings SET value = 3 WHERE id = 150").await;
    value_within(150, Some(3)).await;
    raw(&other, "INSERT INTO readings_high VALUES (151, 4)").await;
    value_within(151, Some(4)).await;
    // TRUNCATE of one partition.
    readings.get_by_id(&1).await.unwrap();
    wait_for_value(&mut redis, &readings.cache_key(&1)).await;
    raw(&other, "TRUNCATE readings_low").await;
    value_within(1, None).await;

    // A partition created later gets the row triggers from its parent, but
    // not the TRUNCATE trigger: reported.
    raw(
        &other,
        "CREATE TABLE readings_top PARTITION OF readings FOR VALUES FROM (200) TO (300)",
    )
    .await;
    let statuses = readings.external_writes_status().await.unwrap();
    assert_eq!(
        statuses[0].missing_triggers,
        vec!["readings_top".to_string()],
        "{statuses:?}"
    );
    readings.watch_external_writes().await.unwrap();
    assert!(readings.external_writes_status().await.unwrap()[0]
        .missing_triggers
        .is_empty());
    other.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "members", prefix = "members")]
struct Member {
    id: i64,
    #[cache(index)]
    email: String,
    name: String,
}

#[tokio::test]
async fn sqlite_replace_that_deletes_another_row_reaches_the_cache() {
    let pool = sqlite_memory().await;
    sqlx::raw_sql(
        "CREATE TABLE members (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL); \
         INSERT INTO members VALUES (1, 'ann@x', 'Ann'), (2, 'bob@x', 'Bob');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let manager = manager_on("memory://", |c| c.with_outbox_poll_interval(50));
    let members = GenericStore::<Member>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())));
    members.watch_external_writes().await.unwrap();
    let c = Member::columns();
    assert_eq!(members.get_by_id(&1).await.unwrap().unwrap().name, "Ann");
    assert_eq!(members.get_by(c.email, "ann@x").await.unwrap().unwrap().id, 1);
    members.get_by_id(&2).await.unwrap();
    manager.flush_fills().await;

    // Another row takes Ann's email: SQLite deletes row 1 to make room,
    // without firing its DELETE trigger.
    sqlx::query("INSERT OR REPLACE INTO members VALUES (3, 'ann@x', 'Amy')")
        .execute(&pool)
        .await
        .unwrap();
    eventually("row 1 is gone from the cache", || async {
        members.get_by_id(&1).await.unwrap().is_none()
    })
    .await;
    assert_eq!(members.get_by(c.email, "ann@x").await.unwrap().unwrap().id, 3);
    // UPDATE OR REPLACE: row 2 makes room for row 3's new email.
    sqlx::query("UPDATE OR REPLACE members SET email = 'bob@x' WHERE id = 3")
        .execute(&pool)
        .await
        .unwrap();
    eventually("row 2 is gone from the cache", || async {
        members.get_by_id(&2).await.unwrap().is_none()
    })
    .await;
    assert_eq!(members.get_by(c.email, "bob@x").await.unwrap().unwrap().name, "Amy");
}

/// Outbox deliveries acknowledged by a primary that dies before its
/// replica has them: the promoted replica holds the old rows, and none is
/// served.
async fn outbox_delivery_through_a_failover(topology: Topology) {
    const ROWS: i64 = 30;
    let db = accounts_db(ROWS).await;
    let manager = manager_on(&topology.url(), |c| {
        c.with_timeout(300).with_retry_delay(10).with_outbox_poll_interval(50)
    });
    let accounts = store(db.pool.clone(), &manager);
    accounts.watch_external_writes().await.unwrap();
    let ids: Vec<i64> = (1..=ROWS).collect();
    accounts.get_many(&ids).await.unwrap();
    wait_for_fills(&manager, ROWS as u64).await;
    let (primary, replica) = topology.victim(&accounts.cache_key(&1)).await;
    let mut staged = Vec::new();
    for &id in &ids {
        if staged.len() < 5 && topology.served_by(&accounts.cache_key(&id), primary).await {
            staged.push(id);
        }
    }

    // The replica misses the deliveries: frozen, its link cut, the rows
    // written by another service and their DELs acknowledged by the primary.
    topology.freeze(replica, true);
    cut_replication(primary).await;
    let other = other_service(&db).await;
    let list = staged.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",");
    raw(&other, &format!("UPDATE accounts SET balance = 2 WHERE id IN ({list})")).await;
    let on_primary = raw_node(primary).await;
    for &id in &staged {
        eventually("the outbox delivered to the primary", || {
            let key = accounts.cache_key(&id);
            let mut conn = on_primary.clone();
            async move { raw_get(&mut conn, &key).await.is_none() }
        })
        .await;
    }
    drop(on_primary);
    topology.kill(primary);
    topology.freeze(replica, false);
    topology.wait_until_primary(replica).await;
    let mut promoted = raw_node(replica).await;
    let mut old = 0;
    for &id in &staged {
        old += usize::from(raw_get(&mut promoted, &accounts.cache_key(&id)).await.is_some());
    }
    assert!(old > 0, "control: the promoted replica holds old rows");

    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        for &id in &staged {
            match accounts.get_by_id(&id).await {
                Ok(found) => assert_eq!(found, Some(account(id, 2)), "no old row after the failover"),
                Err(e) => panic!("a read failed: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_deliveries_survive_a_sentinel_failover() {
    outbox_delivery_through_a_failover(Topology::Sentinel(Sentinels::start())).await;
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_deliveries_survive_a_cluster_failover() {
    outbox_delivery_through_a_failover(Topology::Cluster(RedisCluster::start())).await;
}
