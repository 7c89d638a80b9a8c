//! [`Account`]: an `i64` id and a balance, and the helpers of the tests of
//! invalidation from the database (`tests/test_outbox.rs`,
//! `tests/test_outbox_life.rs`): another service's pool on a test's schema,
//! and waits for a fresh read.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use storehaus::{Cached, GenericStore};

use crate::{database_url, raw_get, raw_redis, wait_for_value, Db};

/// An account row in the `accounts` table, cached under `accounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "accounts", prefix = "accounts")]
pub struct Account {
    /// The id.
    pub id: i64,
    /// What tests change behind the cache's back.
    pub balance: i64,
}

/// The account `id` with `balance`.
pub fn account(id: i64, balance: i64) -> Account {
    Account { id, balance }
}

/// A fresh schema of at most 10 connections with `accounts` 1..=n at
/// balance 100.
pub async fn accounts_db(n: i64) -> Db {
    let db = Db::with_max_connections(10).await;
    db.exec("CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)")
        .await;
    db.exec(&format!(
        "INSERT INTO accounts SELECT g, 100 FROM generate_series(1, {n}) g"
    ))
    .await;
    db
}

/// Another service on the same database: its own pool on the test's
/// schema, no store, no cache.
pub async fn other_service(db: &Db) -> PgPool {
    let opts: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.options([("search_path", db.schema.as_str())]))
        .await
        .expect("connect")
}

/// Runs `sql` on `pool`; panics with the statement and the error.
pub async fn raw(pool: &PgPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Reads `id` through the store until its balance is `want`; panics after
/// `within`. Returns how long it took.
pub async fn fresh_within(store: &GenericStore<Account>, id: i64, want: Option<i64>, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = store.get_by_id(&id).await.unwrap().map(|a| a.balance);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "account {id}: still {got:?} {:?} after the external commit, want {want:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Caches `id` through `store` and waits until its entry is on the Redis
/// at `url`. Reads again while they bypass the cache (an outbox worker
/// catching up or starting over).
pub async fn cached(store: &GenericStore<Account>, url: &str, id: i64) {
    let mut redis = raw_redis(url).await;
    let key = store.cache_key(&id);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        store.get_by_id(&id).await.unwrap();
        store.cache_manager().unwrap().flush_fills().await;
        if raw_get(&mut redis, &key).await.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_value(&mut redis, &key).await;
}

/// Asserts that the cache serves account `id` again: it is filled, and the
/// next read is a hit (the manager's hit count moves), not a bypass.
pub async fn serves_hits(store: &GenericStore<Account>, url: &str, id: i64) {
    cached(store, url, id).await;
    let manager = store.cache_manager().expect("a cached store");
    let before = manager.get_stats().await.expect("stats").hits;
    store.get_by_id(&id).await.expect("read");
    let after = manager.get_stats().await.expect("stats").hits;
    assert!(after > before, "the cache serves hits again ({before} -> {after} hits)");
}

/// The `balance` of account `id` as the database holds it.
pub async fn balance(pool: &PgPool, id: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .expect("read the balance")
}
