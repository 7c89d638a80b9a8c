//! Invalidation from the database itself (`watch_external_writes`): writes
//! made outside a store, a writer that dies before its invalidation, several
//! cache deployments on one database, lost notifications, and transactions
//! across stores. Against real PostgreSQL and Redis (private redis-servers
//! where Redis must die), and SQLite + `memory://`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore, Query};
use storehaus_testkit::records::accounts::{account, cached, fresh_within, other_service, raw, Account};
use storehaus_testkit::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "orders", prefix = "orders")]
pub struct Order {
    pub id: i64,
    pub account_id: i64,
}

/// A schema with `accounts` 1..=n at balance 100, and `orders`.
async fn accounts_db(n: i64) -> Db {
    let db = records::accounts::accounts_db(n).await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint NOT NULL)")
        .await;
    db
}

fn store(db: &Db, manager: &Arc<CacheManager>) -> GenericStore<Account> {
    GenericStore::<Account>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())))
}

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_outside_a_store_reach_the_cache() {
    let db = accounts_db(3).await;
    let manager = manager();
    let accounts = store(&db, &manager);
    accounts.watch_external_writes().await.unwrap();
    let other = other_service(&db).await;

    // UPDATE: the cached row is replaced.
    cached(&accounts, &redis_url(), 1).await;
    raw(&other, "UPDATE accounts SET balance = 150 WHERE id = 1").await;
    fresh_within(&accounts, 1, Some(150), WITHIN).await;

    // INSERT: a cached "no such row" is cleared.
    assert_eq!(accounts.get_by_id(&9).await.unwrap(), None);
    cached(&accounts, &redis_url(), 9).await;
    raw(&other, "INSERT INTO accounts VALUES (9, 900)").await;
    fresh_within(&accounts, 9, Some(900), WITHIN).await;

    // DELETE
    cached(&accounts, &redis_url(), 2).await;
    raw(&other, "DELETE FROM accounts WHERE id = 2").await;
    fresh_within(&accounts, 2, None, WITHIN).await;

    // An UPDATE that changes the primary key invalidates the old and the new id.
    cached(&accounts, &redis_url(), 3).await;
    assert_eq!(accounts.get_by_id(&30).await.unwrap(), None);
    cached(&accounts, &redis_url(), 30).await;
    raw(&other, "UPDATE accounts SET id = 30 WHERE id = 3").await;
    fresh_within(&accounts, 3, None, WITHIN).await;
    fresh_within(&accounts, 30, Some(100), WITHIN).await;

    // TRUNCATE clears the store's whole key space.
    cached(&accounts, &redis_url(), 1).await;
    raw(&other, "TRUNCATE accounts").await;
    fresh_within(&accounts, 1, None, WITHIN).await;

    // A cached query result is invalidated by an external write.
    raw(&other, "INSERT INTO accounts VALUES (1, 10), (2, 20)").await;
    fresh_within(&accounts, 1, Some(10), WITHIN).await;
    let rich = || Query::<Account>::new().filter(Account::columns().balance.ge(15));
    assert_eq!(accounts.count(rich()).await.unwrap(), 1);
    assert_eq!(accounts.count(rich()).await.unwrap(), 1);
    wait_for_fills(&manager, 1).await;
    raw(&other, "UPDATE accounts SET balance = 50 WHERE id = 1").await;
    let start = Instant::now();
    while accounts.count(rich()).await.unwrap() != 2 {
        assert!(start.elapsed() < WITHIN, "the cached count was never invalidated");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let stats = manager.get_stats().await.unwrap();
    assert!(stats.outbox_delivered >= 7, "{stats:?}");
    assert_eq!(stats.outbox_backlog, 0, "{stats:?}");
    other.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_notifications_lost_polling_bounds_the_delay() {
    let db = accounts_db(1).await;
    let poll_ms = 300;
    let manager = manager_on(&redis_url(), |c| c.with_outbox_poll_interval(poll_ms));
    let accounts = store(&db, &manager);
    accounts.watch_external_writes().await.unwrap();
    let other = other_service(&db).await;
    cached(&accounts, &redis_url(), 1).await;

    // The listener's backend is terminated: notifications sent until it is
    // back are lost; the next poll (or the listener's own catch-up) delivers.
    let name = format!("storehaus-outbox {}", manager.config().deployment());
    let killed: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&name)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(killed, vec![true], "one listener to terminate");
    raw(&other, "UPDATE accounts SET balance = 7 WHERE id = 1").await;
    let took = fresh_within(&accounts, 1, Some(7), WITHIN).await;
    assert!(
        took < Duration::from_millis(poll_ms + 1_500),
        "fresh after {took:?}: more than the {poll_ms} ms poll interval (+ a margin)"
    );
    // The listener comes back by itself.
    eventually("the listener reconnected", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&name)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        n == 1
    })
    .await;
    other.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
}

/// The child of `a_writer_killed_before_its_invalidation_leaves_nothing_stale`:
/// writes v2 through a store whose Redis is down, says so, and waits to be
/// killed. Runs only when the parent starts it.
#[tokio::test]
#[ignore = "the child process of a crash-safety test; it runs only when that test starts it"]
async fn crash_child_writes_while_its_redis_is_down() {
    let (Ok(schema), Ok(url), Ok(global)) = (
        std::env::var("OUTBOX_CHILD_SCHEMA"),
        std::env::var("OUTBOX_CHILD_REDIS"),
        std::env::var("OUTBOX_CHILD_GLOBAL"),
    ) else {
        return;
    };
    let opts: PgConnectOptions = database_url().parse().unwrap();
    let pool = PgPoolOptions::new()
        .connect_with(opts.options([("search_path", schema.as_str())]))
        .await
        .unwrap();
    let manager = Arc::new(CacheManager::new(CacheConfig::new(url, 3600, global).with_timeout(200)).unwrap());
    let accounts = GenericStore::<Account>::new(pool, None, Some(CacheParams::new(manager.clone())));
    accounts.update(&1, account(1, 2), None).await.unwrap();
    assert!(manager.get_stats().await.unwrap().pending_invalidations >= 1);
    println!("CHILD-WROTE");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_before_its_invalidation_leaves_nothing_stale() {
    let dir = std::env::temp_dir().join(random_name("redis"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_s = dir.to_string_lossy().to_string();
    let mut server = RedisServer::start_with(&["--dir", &dir_s, "--dbfilename", "dump.rdb"]).await;
    let db = accounts_db(1).await;
    let global = random_name("t");
    let url = server.url();
    let process = || {
        let config = CacheConfig::new(url.clone(), 3600, global.clone()).with_timeout(300);
        Arc::new(CacheManager::new(config).unwrap())
    };

    // v1 is cached and saved; the outbox is in place.
    let first = process();
    let accounts = store(&db, &first);
    accounts.watch_external_writes().await.unwrap();
    cached(&accounts, &server.url(), 1).await;
    let mut redis = raw_redis(&server.url()).await;
    let _: () = redis::cmd("SAVE").query_async(&mut redis).await.unwrap();
    drop((accounts, first));

    // Redis dies; a child process writes v2 (its DEL cannot be delivered)
    // and is killed before Redis returns.
    server.kill();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writes_while_its_redis_is_down",
            "--ignored",
            "--nocapture",
        ])
        .env("OUTBOX_CHILD_SCHEMA", &db.schema)
        .env("OUTBOX_CHILD_REDIS", server.url())
        .env("OUTBOX_CHILD_GLOBAL", &global)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let wrote = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("CHILD-WROTE"))
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(60), wrote)
            .await
            .unwrap()
            .unwrap(),
        "the child wrote v2"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let version: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(version, 2, "the child's write committed");

    // Redis returns with the old dataset: v1 is back on the server.
    server.restart_locked("lock").await;
    let key = format!("{global}:accounts:1");
    let mut locked = raw_redis(&format!("redis://:lock@127.0.0.1:{}", server.port)).await;
    assert!(raw_get(&mut locked, &key).await.is_some(), "the stale entry is back");
    server.unlock("lock").await;

    // Without the outbox, a fresh process would serve it: the test can see staleness.
    let blind = process();
    let unwatched = store(&db, &blind);
    assert_eq!(
        unwatched.get_by_id(&1).await.unwrap().unwrap().balance,
        100,
        "control: a process that does not watch reads the stale entry"
    );
    drop((unwatched, blind));

    // A fresh process that watches reads v2, never v1.
    let fresh = process();
    let accounts = store(&db, &fresh);
    accounts.watch_external_writes().await.unwrap();
    assert_eq!(accounts.get_by_id(&1).await.unwrap(), Some(account(1, 2)));
    assert_eq!(fresh.get_stats().await.unwrap().outbox_backlog, 0);
    db.cleanup().await;
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_each_get_every_entry_and_one_outage_holds_up_only_its_own() {
    let db = accounts_db(2).await;
    let mut redis_b = RedisServer::start().await;
    let a = manager();
    let b = manager_on(&redis_b.url(), |c| c.with_timeout(200).with_outbox_poll_interval(100));
    let (store_a, store_b) = (store(&db, &a), store(&db, &b));
    store_a.watch_external_writes().await.unwrap();
    store_b.watch_external_writes().await.unwrap();
    let other = other_service(&db).await;
    cached(&store_a, &redis_url(), 1).await;
    cached(&store_b, &redis_b.url(), 1).await;

    raw(&other, "UPDATE accounts SET balance = 1 WHERE id = 1").await;
    fresh_within(&store_a, 1, Some(1), WITHIN).await;
    fresh_within(&store_b, 1, Some(1), WITHIN).await;

    // B's Redis goes away; A keeps up.
    cached(&store_a, &redis_url(), 2).await;
    redis_b.kill();
    raw(&other, "UPDATE accounts SET balance = 2 WHERE id = 2").await;
    fresh_within(&store_a, 2, Some(2), WITHIN).await;
    // B answers from the database meanwhile.
    assert_eq!(store_b.get_by_id(&2).await.unwrap(), Some(account(2, 2)));
    // A's status counts the entry delivered once the pass that delivered it
    // has moved the position (just after the DEL that made the read fresh).
    eventually("A's backlog is 0, B's is not", || async {
        let statuses = store_a.external_writes_status().await.unwrap();
        let backlog = |name: &str| statuses.iter().find(|s| s.deployment == name).map(|s| s.backlog);
        backlog(a.config().deployment()) == Some(0) && backlog(b.config().deployment()) >= Some(1)
    })
    .await;

    // B's Redis returns (empty): B catches up, its reads use the cache again.
    redis_b.restart().await;
    eventually("B caught up", || async {
        let statuses = store_b.external_writes_status().await.unwrap();
        statuses
            .iter()
            .find(|s| s.deployment == b.config().deployment())
            .is_some_and(|s| s.backlog == 0)
    })
    .await;
    cached(&store_b, &redis_b.url(), 2).await;
    raw(&other, "UPDATE accounts SET balance = 3 WHERE id = 2").await;
    fresh_within(&store_b, 2, Some(3), WITHIN).await;
    other.close().await;
    clear_prefix(&a).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_deployment_resumes_where_it_stopped() {
    let db = accounts_db(1).await;
    let global = random_name("t");
    let process = || Arc::new(CacheManager::new(CacheConfig::new(redis_url(), 3600, global.clone())).unwrap());
    let other = other_service(&db).await;

    let first = process();
    let accounts = store(&db, &first);
    accounts.watch_external_writes().await.unwrap();
    cached(&accounts, &redis_url(), 1).await;
    drop(accounts);
    drop(first); // the worker stops with its manager
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Written while no worker of the deployment runs: the cached v1 stays.
    raw(&other, "UPDATE accounts SET balance = 5 WHERE id = 1").await;
    let mut redis = raw_redis(&redis_url()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(raw_get(&mut redis, &format!("{global}:accounts:1")).await.is_some());

    // The restarted deployment resumes at its position, not at the head.
    let second = process();
    let accounts = store(&db, &second);
    accounts.watch_external_writes().await.unwrap();
    assert_eq!(accounts.get_by_id(&1).await.unwrap(), Some(account(1, 5)));
    other.close().await;
    clear_prefix(&second).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_of_one_deployment_share_it() {
    let db = accounts_db(4).await;
    let global = random_name("t");
    let process = || {
        let config = CacheConfig::new(redis_url(), 3600, global.clone()).with_outbox_poll_interval(50);
        Arc::new(CacheManager::new(config).unwrap())
    };
    let (p1, p2) = (process(), process());
    let (s1, s2) = (store(&db, &p1), store(&db, &p2));
    s1.watch_external_writes().await.unwrap();
    s2.watch_external_writes().await.unwrap();
    let other = other_service(&db).await;
    for round in 0..20 {
        let id = round % 4 + 1;
        cached(&s1, &redis_url(), id).await;
        raw(
            &other,
            &format!("UPDATE accounts SET balance = {round} WHERE id = {id}"),
        )
        .await;
        fresh_within(&s2, id, Some(round), WITHIN).await;
        fresh_within(&s1, id, Some(round), WITHIN).await;
    }
    let delivered = p1.get_stats().await.unwrap().outbox_delivered + p2.get_stats().await.unwrap().outbox_delivered;
    // Every process of a deployment delivers what it finds (a stalled
    // peer then holds nothing back): each entry about once per process,
    // never over and over.
    assert!(
        (20..=60).contains(&delivered),
        "each entry delivered once or twice per process, not forever: {delivered}"
    );
    // One process goes away; the other carries on alone.
    drop(s2);
    drop(p2);
    cached(&s1, &redis_url(), 1).await;
    raw(&other, "UPDATE accounts SET balance = 99 WHERE id = 1").await;
    fresh_within(&s1, 1, Some(99), WITHIN).await;
    other.close().await;
    clear_prefix(&p1).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_across_stores_invalidates_all_after_commit_and_nothing_after_rollback() {
    let db = accounts_db(1).await;
    db.exec("CREATE TABLE audit (n bigint NOT NULL)").await;
    db.exec("INSERT INTO audit VALUES (0)").await;
    db.exec("INSERT INTO orders VALUES (7, 1)").await;
    let manager = manager();
    let accounts = store(&db, &manager);
    let orders = GenericStore::<Order>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let mut redis = raw_redis(&redis_url()).await;
    cached(&accounts, &redis_url(), 1).await;
    orders.get_by_id(&7).await.unwrap();
    wait_for_value(&mut redis, &orders.cache_key(&7)).await;
    assert_eq!(orders.get_by_id(&8).await.unwrap(), None);
    wait_for_value(&mut redis, &orders.cache_key(&8)).await;

    // Rollback: nothing is invalidated.
    let mut tx = accounts.begin().await.unwrap();
    tx.update(&1, account(1, 0), None).await.unwrap();
    tx.with(&orders)
        .create(Order { id: 8, account_id: 1 }, None)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(raw_get(&mut redis, &accounts.cache_key(&1)).await.is_some());
    assert!(raw_get(&mut redis, &orders.cache_key(&8)).await.is_some());

    // Commit: both stores' keys, after the commit.
    let mut tx = accounts.begin().await.unwrap();
    tx.update(&1, account(1, 0), None).await.unwrap();
    tx.with(&orders)
        .create(Order { id: 8, account_id: 1 }, None)
        .await
        .unwrap();
    tx.with(&orders)
        .update(&7, Order { id: 7, account_id: 2 }, None)
        .await
        .unwrap();
    sqlx::query("UPDATE audit SET n = n + 1")
        .execute(tx.as_mut().unwrap())
        .await
        .unwrap();
    assert!(tx.as_sqlite_mut().is_err(), "a PostgreSQL transaction");
    assert!(
        raw_get(&mut redis, &orders.cache_key(&8)).await.is_some(),
        "nothing invalidated before the commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(raw_get(&mut redis, &accounts.cache_key(&1)).await, None);
    assert_eq!(raw_get(&mut redis, &orders.cache_key(&7)).await, None);
    assert_eq!(raw_get(&mut redis, &orders.cache_key(&8)).await, None);
    assert_eq!(accounts.get_by_id(&1).await.unwrap(), Some(account(1, 0)));
    assert_eq!(
        orders.get_by_id(&8).await.unwrap(),
        Some(Order { id: 8, account_id: 1 })
    );
    let n: i64 = sqlx::query_scalar("SELECT n FROM audit")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_ddl_rights_installs_by_migration() {
    let db = accounts_db(1).await;
    // The migration, as a DBA would run it.
    sqlx::raw_sql(&GenericStore::<Account>::external_writes_sql())
        .execute(&db.pool)
        .await
        .unwrap();
    // The application role may read and write, not create.
    let role = random_name("app");
    db.exec(&format!("CREATE ROLE {role}")).await;
    db.exec(&format!("GRANT USAGE ON SCHEMA \"{}\" TO {role}", db.schema))
        .await;
    db.exec(&format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{}\" TO {role}",
        db.schema
    ))
    .await;
    db.exec(&format!(
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"{}\" TO {role}",
        db.schema
    ))
    .await;
    let opts: PgConnectOptions = database_url().parse().unwrap();
    let app_pool = PgPoolOptions::new()
        .max_connections(3)
        .after_connect({
            let role = role.clone();
            move |conn, _| {
                let role = role.clone();
                Box::pin(async move {
                    sqlx::query(&format!("SET ROLE {role}")).execute(conn).await?;
                    Ok(())
                })
            }
        })
        .connect_with(opts.options([("search_path", db.schema.as_str())]))
        .await
        .unwrap();
    let manager = manager();
    let accounts = GenericStore::<Account>::new(app_pool.clone(), None, Some(CacheParams::new(manager.clone())));
    accounts.watch_external_writes().await.unwrap();
    cached(&accounts, &redis_url(), 1).await;
    raw(&db.pool, "UPDATE accounts SET balance = 3 WHERE id = 1").await;
    fresh_within(&accounts, 1, Some(3), WITHIN).await;
    app_pool.close().await;
    clear_prefix(&manager).await;
    db.cleanup().await;
    let admin = PgPool::connect(&database_url()).await.unwrap();
    let _ = sqlx::query(&format!("DROP ROLE {role}")).execute(&admin).await;
}

#[tokio::test]
async fn sqlite_writes_made_outside_a_store_reach_the_in_process_cache() {
    let pool = sqlite_memory().await;
    sqlx::query("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO accounts VALUES (1, 100)")
        .execute(&pool)
        .await
        .unwrap();
    let manager = manager_on("memory://", |c| c.with_outbox_poll_interval(50));
    let accounts = GenericStore::<Account>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())));
    accounts.watch_external_writes().await.unwrap();
    accounts.watch_external_writes().await.unwrap(); // idempotent
    assert_eq!(accounts.get_by_id(&1).await.unwrap(), Some(account(1, 100)));
    wait_for_fills(&manager, 1).await;
    sqlx::query("UPDATE accounts SET balance = 7 WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    let start = Instant::now();
    while accounts.get_by_id(&1).await.unwrap() != Some(account(1, 7)) {
        assert!(start.elapsed() < WITHIN);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(accounts.get_by_id(&2).await.unwrap(), None);
    sqlx::query("INSERT INTO accounts VALUES (2, 200)")
        .execute(&pool)
        .await
        .unwrap();
    let start = Instant::now();
    while accounts.get_by_id(&2).await.unwrap().is_none() {
        assert!(start.elapsed() < WITHIN);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let statuses = accounts.external_writes_status().await.unwrap();
    assert_eq!(statuses.len(), 1, "{statuses:?}");
}
