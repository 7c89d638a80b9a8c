//! Early refresh (`CacheParams::with_early_refresh`) without ABA (issue 24),
//! staged for real: loads of the refreshing process go through a view whose
//! function waits at two advisory locks the test holds, one before its
//! query (so the query sees what was committed meanwhile) and one after (so
//! its fill lands when the test says). Several managers on one Redis stand
//! for several processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore};
use storehaus_testkit::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "docs", prefix = "docs")]
struct Doc {
    id: i64,
    version: i64,
}

/// A schema where `docs` is a view over `docs_t` (row 1 at version 1).
/// Sessions with `storehaus.hold = on` wait at the advisory lock `before`
/// ahead of their query, and at `after` once it has run.
struct Held {
    db: Db,
    /// The refreshing process's pool: one connection, holding.
    slow: PgPool,
    /// The test's own session, which holds the locks.
    gate: sqlx::pool::PoolConnection<sqlx::Postgres>,
    before: i64,
    after: i64,
}

impl Held {
    async fn new() -> Held {
        let db = Db::with_max_connections(10).await;
        db.exec("CREATE TABLE docs_t (id bigint PRIMARY KEY, version bigint NOT NULL)")
            .await;
        db.exec("INSERT INTO docs_t VALUES (1, 1)").await;
        // Advisory locks are per database: keys of this test alone.
        let before = i64::from(rand::random::<u32>() >> 2) + 1;
        let after = before + (1 << 30);
        db.exec(&format!(
            "CREATE FUNCTION held_docs() RETURNS SETOF docs_t LANGUAGE plpgsql VOLATILE AS $$ BEGIN \
             IF current_setting('storehaus.hold', true) = 'on' THEN \
               PERFORM pg_advisory_lock_shared({before}); PERFORM pg_advisory_unlock_shared({before}); END IF; \
             RETURN QUERY SELECT * FROM docs_t; \
             IF current_setting('storehaus.hold', true) = 'on' THEN \
               PERFORM pg_advisory_lock_shared({after}); PERFORM pg_advisory_unlock_shared({after}); END IF; \
             END $$"
        ))
        .await;
        db.exec("CREATE VIEW docs AS SELECT * FROM held_docs()").await;
        let opts: PgConnectOptions = database_url().parse().unwrap();
        let slow = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts.options([("search_path", db.schema.as_str()), ("storehaus.hold", "on")]))
            .await
            .unwrap();
        let gate = db.pool.acquire().await.unwrap();
        Held {
            db,
            slow,
            gate,
            before,
            after,
        }
    }

    async fn lock(&mut self, key: i64) {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *self.gate)
            .await
            .unwrap();
    }

    async fn unlock(&mut self, key: i64) {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut *self.gate)
            .await
            .unwrap();
    }

    /// Waits until a session waits for the advisory lock `key`.
    async fn waited_at(&self, key: i64) {
        let start = Instant::now();
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1",
            )
            .bind(key)
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "nobody reached lock {key}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn set_version(&self, version: i64) {
        sqlx::query("UPDATE docs_t SET version = $1 WHERE id = 1")
            .bind(version)
            .execute(&self.db.pool)
            .await
            .unwrap();
    }

    async fn cleanup(self) {
        drop(self.gate);
        self.slow.close().await;
        self.db.cleanup().await;
    }
}

/// A process: a manager on the shared Redis with the test's global prefix.
fn process(global: &str) -> Arc<CacheManager> {
    Arc::new(CacheManager::new(CacheConfig::new(redis_url(), 3600, global)).unwrap())
}

fn store(pool: &PgPool, manager: &Arc<CacheManager>, beta: Option<f64>) -> GenericStore<Doc> {
    let params = CacheParams::new(manager.clone());
    let params = match beta {
        // So large that every hit is due (δ is a few ms, the TTL an hour).
        Some(beta) => params.with_early_refresh(beta),
        None => params,
    };
    GenericStore::new(pool.clone(), None, Some(params))
}

fn cached_version(bytes: &[u8]) -> Option<i64> {
    let value = rmpv::decode::read_value(&mut &bytes[..]).ok()?;
    value.as_array()?.last()?.as_array()?.get(1)?.as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refresh_never_puts_back_a_row_over_an_equal_looking_later_fill() {
    let mut held = Held::new().await;
    let global = random_name("t");
    let (a, b, c) = (process(&global), process(&global), process(&global));
    let refreshing = store(&held.slow, &a, Some(1e12));
    // A's first read loads X (version 1) and measures δ; its fill lands.
    assert_eq!(refreshing.get_by_id(&1).await.unwrap(), Some(Doc { id: 1, version: 1 }));
    a.flush_fills().await;

    held.lock(held.before).await;
    held.lock(held.after).await;
    // R1 in A: a hit on X, due: its refresh waits before its query.
    let r1 = tokio::spawn(async move { refreshing.get_by_id(&1).await.unwrap() });
    held.waited_at(held.before).await;
    // W1: X -> Y, invalidated. Then R1's query runs and reads Y.
    held.set_version(2).await;
    store(&held.db.pool, &c, None).invalidate(&1).await;
    held.unlock(held.before).await;
    held.waited_at(held.after).await;
    // W2: Y -> X, invalidated; B reads X and fills it (bytes that look like
    // what R1 read, but another fill).
    held.set_version(1).await;
    store(&held.db.pool, &c, None).invalidate(&1).await;
    let reader = store(&held.db.pool, &b, None);
    assert_eq!(reader.get_by_id(&1).await.unwrap(), Some(Doc { id: 1, version: 1 }));
    b.flush_fills().await;
    // R1's load returns Y; its refresh must not replace B's fill.
    held.unlock(held.after).await;
    assert_eq!(r1.await.unwrap(), Some(Doc { id: 1, version: 2 }), "R1 read during W2");
    a.flush_fills().await;

    let mut redis = raw_redis(&redis_url()).await;
    let key = reader.cache_key(&1);
    let cached = raw_get(&mut redis, &key).await.expect("a value");
    assert_eq!(
        cached_version(&cached),
        Some(1),
        "the cache holds what the database holds"
    );
    assert_eq!(reader.get_by_id(&1).await.unwrap(), Some(Doc { id: 1, version: 1 }));
    let s = stats(&a).await;
    assert_eq!((s.early_refreshes, s.fills_rejected), (1, 1), "{s:?}");
    clear_prefix(&a).await;
    held.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_dropped_during_its_refresh_lets_the_next_hit_refresh() {
    let mut held = Held::new().await;
    let a = process(&random_name("t"));
    let refreshing = store(&held.slow, &a, Some(1e12));
    assert_eq!(refreshing.get_by_id(&1).await.unwrap().map(|d| d.version), Some(1));
    a.flush_fills().await;

    held.lock(held.before).await;
    let dropped = {
        let refreshing = refreshing.clone();
        tokio::spawn(async move { refreshing.get_by_id(&1).await })
    };
    held.waited_at(held.before).await;
    // The caller gives up while its refresh loads: the read is dropped.
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    held.unlock(held.before).await;

    // The next hit is due too: it refreshes (its key is not left marked
    // as being refreshed) and answers the row the database holds now.
    held.set_version(5).await;
    let start = Instant::now();
    loop {
        // The dropped read's connection may still be closing: retry.
        match tokio::time::timeout(Duration::from_secs(2), refreshing.get_by_id(&1)).await {
            Ok(Ok(found)) => {
                assert_eq!(found.map(|d| d.version), Some(5), "refreshed");
                break;
            }
            _ => assert!(start.elapsed() < Duration::from_secs(10), "no read succeeded"),
        }
    }
    assert_eq!(stats(&a).await.early_refreshes, 1);
    clear_prefix(&a).await;
    held.cleanup().await;
}
