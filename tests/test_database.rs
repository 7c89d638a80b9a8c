//! Database faults: the store's PostgreSQL connections terminated
//! (`pg_terminate_backend`) in the middle of an operation, and a private
//! PostgreSQL cluster stopped and restarted under a running store.
//!
//! A store call that needed the database then fails with
//! `StorehausError::Database` (never a panic, never a hang past the pool's
//! own timeouts), nothing it was doing leaves a stale entry in the cache, and
//! the store recovers by itself once the database answers again.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus_testkit::records::items::{self, db_row, item, items_db, Item};
use storehaus_testkit::*;

/// The store pool's `acquire_timeout`: how long a call may wait for a
/// connection while the database is down.
const ACQUIRE: Duration = Duration::from_secs(3);

/// What a loaded machine may add: a call that takes longer than its pool's
/// timeouts + this has hung.
const MARGIN: Duration = Duration::from_secs(7);

/// Runs a store call; fails the test if it has not returned within the
/// pool's timeout + margin (a hang), or if it panicked.
async fn no_hang<T: Send + 'static>(
    what: &str,
    f: impl Future<Output = Result<T, StorehausError>> + Send + 'static,
) -> Result<T, StorehausError> {
    match tokio::time::timeout(ACQUIRE + MARGIN, tokio::spawn(f)).await {
        Ok(Ok(out)) => out,
        Ok(Err(join)) => panic!("{what} panicked: {join}"),
        Err(_) => panic!("{what} hung for more than {:?}", ACQUIRE + MARGIN),
    }
}

fn assert_database_error<T: std::fmt::Debug>(what: &str, got: &Result<T, StorehausError>) {
    assert!(
        matches!(got, Err(StorehausError::Database(_))),
        "{what}: a StorehausError::Database, got {got:?}"
    );
}

/// A pool on `url` whose connections carry `application_name = name` (so
/// the test can find and terminate them), with `search_path` `schema`.
async fn tagged_pool(url: &str, schema: Option<&str>, name: &str) -> PgPool {
    let mut opts: PgConnectOptions = url.parse().expect("database url");
    opts = opts.application_name(name);
    if let Some(schema) = schema {
        opts = opts.options([("search_path", schema)]);
    }
    PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(ACQUIRE)
        .connect_with(opts)
        .await
        .expect("connect the store's pool")
}

/// Waits until a backend of `app` waits on a lock (the store's statement is
/// in flight, blocked by the test's lock).
async fn until_waiting_on_a_lock(admin: &PgPool, app: &str) {
    let start = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(app)
        .fetch_one(admin)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the store's statement never blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Terminates every backend of `app`; how many there were.
async fn terminate(admin: &PgPool, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// Retries `f` until it succeeds (the store recovering by itself); every
/// failure on the way must be a database error. Returns the value and how
/// many calls failed first.
async fn recovers<T: std::fmt::Debug + Send + 'static, F, Fut>(what: &str, mut f: F) -> (T, usize)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StorehausError>> + Send + 'static,
{
    let start = Instant::now();
    let mut failed = 0;
    loop {
        let got = no_hang(what, f()).await;
        match got {
            Ok(v) => return (v, failed),
            Err(_) => assert_database_error(what, &got),
        }
        failed += 1;
        assert!(start.elapsed() < Duration::from_secs(20), "{what} did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cached entry of `id` is the database's current row: changes the row
/// behind the cache's back and expects the cached row, then restores it.
async fn assert_cached_row_is(pool: &PgPool, store: &GenericStore<Item>, id: i64, want: &Item) {
    sqlx::query("UPDATE items SET name = 'behind-the-cache' WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    let got = store.get_by_id(&id).await.unwrap();
    sqlx::query("UPDATE items SET name = $2 WHERE id = $1")
        .bind(id)
        .bind(&want.name)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(got.as_ref(), Some(want), "item {id} is cached with the current row");
}

// ----- pg_terminate_backend -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_terminated_mid_statement_fails_with_database_error_and_nothing_stale_is_cached() {
    let db = items_db(4).await;
    let app = random_name("store");
    let pool = tagged_pool(&database_url(), Some(&db.schema), &app).await;
    let manager = manager();
    let store = GenericStore::<Item>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let mut redis = raw_redis(&redis_url()).await;
    for id in 0..4 {
        store.get_by_id(&id).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&id)).await;
    }

    // The test holds row 0: the store's UPDATE blocks on it, and is
    // terminated while it waits.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM items WHERE id = 0 FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let s = store.clone();
    let update = tokio::spawn(async move { s.update(&0, item(0, 1), None).await });
    until_waiting_on_a_lock(&db.pool, &app).await;
    assert!(terminate(&db.pool, &app).await >= 1);
    let got = tokio::time::timeout(ACQUIRE + MARGIN, update)
        .await
        .expect("the terminated update returned")
        .expect("the terminated update did not panic");
    assert_database_error("update terminated mid-statement", &got);
    lock.rollback().await.unwrap();

    // It never committed: the database and every read say v0.
    assert_eq!(db_row(&db, 0).await, Some(item(0, 0)));
    let (got, failed) = recovers("get_by_id after the termination", {
        let s = store.clone();
        move || {
            let s = s.clone();
            async move { s.get_by_id(&0).await }
        }
    })
    .await;
    assert_eq!(got, Some(item(0, 0)));

    // The store recovers by itself: the same write now succeeds, and the
    // cache holds it once read.
    let (stored, _) = recovers("update after the termination", {
        let s = store.clone();
        move || {
            let s = s.clone();
            async move { s.update(&0, item(0, 1), None).await }
        }
    })
    .await;
    assert_eq!(stored, item(0, 1));
    assert_eq!(store.get_by_id(&0).await.unwrap(), Some(item(0, 1)));
    wait_for_value(&mut redis, &store.cache_key(&0)).await;
    assert_cached_row_is(&db.pool, &store, 0, &item(0, 1)).await;
    eprintln!("terminated update: {failed} read(s) failed before the pool reconnected");
    clear_prefix(&manager).await;
    pool.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_terminated_mid_load_fails_with_database_error_and_fills_nothing() {
    let db = items_db(4).await;
    let app = random_name("store");
    let pool = tagged_pool(&database_url(), Some(&db.schema), &app).await;
    let manager = manager();
    let store = GenericStore::<Item>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())));

    // Item 1 is not cached: the read takes a lease and loads it, blocked by
    // the test's lock on the table, and is terminated while it waits.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let s = store.clone();
    let read = tokio::spawn(async move { s.get_by_id(&1).await });
    until_waiting_on_a_lock(&db.pool, &app).await;
    assert!(terminate(&db.pool, &app).await >= 1);
    let got = tokio::time::timeout(ACQUIRE + MARGIN, read)
        .await
        .expect("the terminated read returned")
        .expect("the terminated read did not panic");
    assert_database_error("read terminated mid-load", &got);
    // The test's own transaction changes the row before it lets go: had
    // the failed read cached anything, it would be the older row.
    sqlx::query("UPDATE items SET version = 7, name = 'item-1-v7' WHERE id = 1")
        .execute(&mut *lock)
        .await
        .unwrap();
    lock.commit().await.unwrap();

    let mut redis = raw_redis(&redis_url()).await;
    let key = store.cache_key(&1);
    let value = raw_get(&mut redis, &key).await;
    assert!(
        value.as_ref().is_none_or(|v| v.first() == Some(&0xC1)),
        "nothing but at most a lease was left under the key: {value:?}"
    );
    // The next read is not held up past the lease by the failed one, and
    // sees the current row; the one after it is a hit on that row.
    let start = Instant::now();
    let (got, failed) = recovers("get_by_id after the termination", {
        let s = store.clone();
        move || {
            let s = s.clone();
            async move { s.get_by_id(&1).await }
        }
    })
    .await;
    assert_eq!(got, Some(item(1, 7)));
    assert!(start.elapsed() < ACQUIRE + MARGIN, "{:?}", start.elapsed());
    wait_for_value(&mut redis, &key).await;
    assert_cached_row_is(&db.pool, &store, 1, &item(1, 7)).await;
    eprintln!("terminated load: {failed} read(s) failed before the pool reconnected");
    clear_prefix(&manager).await;
    pool.close().await;
    db.cleanup().await;
}

// ----- a private PostgreSQL, stopped and restarted -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_database_fails_calls_with_database_error_and_the_store_recovers_by_itself() {
    let pg = PgServer::start();
    let admin = PgPool::connect(&pg.url())
        .await
        .expect("connect to the private cluster");
    sqlx::query(items::CREATE_TABLE).execute(&admin).await.unwrap();
    sqlx::query("INSERT INTO items SELECT g, 'item-' || g || '-v0', 0 FROM generate_series(0, 3) g")
        .execute(&admin)
        .await
        .unwrap();
    let app = random_name("store");
    let pool = tagged_pool(&pg.url(), None, &app).await;
    let manager = manager();
    let store = GenericStore::<Item>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let mut redis = raw_redis(&redis_url()).await;
    for id in 0..4 {
        store.get_by_id(&id).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&id)).await;
    }

    // An update in flight (blocked on the test's row lock) when the
    // database goes down.
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM items WHERE id = 0 FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let s = store.clone();
    let update = tokio::spawn(async move { s.update(&0, item(0, 1), None).await });
    until_waiting_on_a_lock(&admin, &app).await;
    let down_at = Instant::now();
    pg.stop();
    let got = tokio::time::timeout(ACQUIRE + MARGIN, update)
        .await
        .expect("the update in flight returned")
        .expect("the update in flight did not panic");
    assert_database_error("update in flight when the database stopped", &got);
    drop(lock);

    // While it is down: what needs the database fails with a database
    // error, within the pool's timeout; cached rows are still served.
    let mut slowest = Duration::ZERO;
    for round in 0..2 {
        let s = store.clone();
        let start = Instant::now();
        let got = no_hang(
            "update, database down",
            async move { s.update(&1, item(1, 1), None).await },
        )
        .await;
        assert_database_error("update, database down", &got);
        slowest = slowest.max(start.elapsed());
        let s = store.clone();
        let start = Instant::now();
        let got = no_hang("get_by_id of an uncached id, database down", async move {
            s.get_by_id(&100).await
        })
        .await;
        assert_database_error("get_by_id of an uncached id, database down", &got);
        slowest = slowest.max(start.elapsed());
        let s = store.clone();
        let got = no_hang("get_by_id of a cached row, database down", async move {
            s.get_by_id(&2).await
        })
        .await;
        assert_eq!(
            got.unwrap(),
            Some(item(2, 0)),
            "round {round}: a cached row is still served"
        );
    }

    pg.start_again();
    let up_at = Instant::now();
    let (stored, failed) = recovers("update after the restart", {
        let s = store.clone();
        move || {
            let s = s.clone();
            async move { s.update(&1, item(1, 1), None).await }
        }
    })
    .await;
    assert_eq!(stored, item(1, 1));
    let recovered_after = up_at.elapsed();

    // Nothing stale: the failed writes never committed, the successful one
    // is read back, from the database and then from the cache.
    let row = |id: i64| {
        let admin = admin.clone();
        async move {
            sqlx::query_as::<_, Item>("SELECT id, name, version FROM items WHERE id = $1")
                .bind(id)
                .fetch_optional(&admin)
                .await
        }
    };
    // The admin pool reconnects by itself too (its first try may fail).
    let mut db_rows = Vec::new();
    for id in 0..4 {
        let start = Instant::now();
        loop {
            match row(id).await {
                Ok(r) => break db_rows.push(r),
                Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "admin reconnect: {e}"),
            }
        }
    }
    assert_eq!(
        db_rows,
        vec![Some(item(0, 0)), Some(item(1, 1)), Some(item(2, 0)), Some(item(3, 0))]
    );
    for (id, want) in db_rows.iter().enumerate() {
        assert_eq!(&store.get_by_id(&(id as i64)).await.unwrap(), want);
    }
    wait_for_value(&mut redis, &store.cache_key(&1)).await;
    assert_cached_row_is(&admin, &store, 1, &item(1, 1)).await;
    eprintln!(
        "restart: down {:?}; slowest failing call {slowest:?} (acquire_timeout {ACQUIRE:?}); recovered {recovered_after:?} after the \
         restart ({failed} failed call(s) first)",
        up_at - down_at
    );
    clear_prefix(&manager).await;
    pool.close().await;
    admin.close().await;
}
