//! Cached queries: [`GenericStore::find`], [`find_one`](GenericStore::find_one)
//! and [`count`](GenericStore::count).
//!
//! Results are cached at `{global}:{prefix}:query:{hash}` (a stable hash of
//! the SQL and the encoded parameters) together with the store's query
//! generation they were computed under. Every committed write of the store
//! and every `invalidate_queries(prefix)` bumps the generation (one `INCR`,
//! after a `SET NX` that seeds a missing counter at a random value),
//! which makes every older result unreachable in O(1): nothing is scanned.
//!
//! A read fetches the generation and the entry in one round trip (MGET) and
//! serves the entry only when its generation is current. A fill carries the
//! generation read *before* the query and is written by a Lua script only if
//! the generation is still the same, so a result computed across a
//! concurrent write is dropped, not cached.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Row;

use crate::backend::{counter_seed, Invalidation};
use crate::cached::Cached;
use crate::codec::{self, Entry};
use crate::error::CacheError;
use crate::error::Result;
use crate::key;
use crate::manager::CacheManager;
use crate::pool::DbPool;
use crate::query::{Dialect, Query, Rendered, Select};
use crate::stats::Counters;
use crate::store::from_row;
use crate::GenericStore;

impl<T: Cached> GenericStore<T> {
    /// The rows matching `query`, from the query cache when its result is
    /// current, else from the database (and then cached).
    ///
    /// # Errors
    /// [`StorehausError::InvalidQuery`](crate::StorehausError::InvalidQuery)
    /// for an empty `in` list or a negative limit/offset;
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the
    /// database fails. Cache failures are never returned.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn find(&self, query: Query<T>) -> Result<Vec<T>> {
        let rendered = query.render(self.dialect(), Select::Rows)?;
        self.cached_query(&rendered, || self.fetch_rows(&rendered)).await
    }

    /// The first row matching `query` (the query with `LIMIT 1`).
    ///
    /// # Errors
    /// As for [`find`](Self::find).
    pub async fn find_one(&self, query: Query<T>) -> Result<Option<T>> {
        Ok(self.find(query.first()).await?.into_iter().next())
    }

    /// How many rows match `query` (ordering, limit and offset are ignored).
    ///
    /// # Errors
    /// As for [`find`](Self::find).
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn count(&self, query: Query<T>) -> Result<u64> {
        let rendered = query.render(self.dialect(), Select::Count)?;
        let n: i64 = self.cached_query(&rendered, || self.fetch_count(&rendered)).await?;
        Ok(n.max(0) as u64)
    }

    fn dialect(&self) -> Dialect {
        match self.pool() {
            DbPool::Postgres(_) => Dialect::Postgres,
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(_) => Dialect::Sqlite,
        }
    }

    async fn cached_query<V, F, Fut>(&self, rendered: &Rendered, load: F) -> Result<V>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V>>,
    {
        let Some(cache) = self.cache_settings() else {
            return load().await;
        };
        let mut key = key::query_namespace(cache.manager.global_prefix(), &cache.prefix);
        key.push_str(&rendered.hash());
        read_query(
            &cache.manager,
            key,
            &cache.generation_key,
            T::FINGERPRINT,
            cache.ttl,
            load,
        )
        .await
    }

    async fn fetch_rows(&self, r: &Rendered) -> Result<Vec<T>> {
        Ok(match self.pool() {
            DbPool::Postgres(p) => {
                let mut q = sqlx::query(&r.sql);
                for v in &r.values {
                    q = v.bind_pg(q);
                }
                q.try_map(from_row::<T, _>).fetch_all(p).await?
            }
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(p) => {
                let mut q = sqlx::query(&r.sql);
                for v in &r.values {
                    q = v.bind_sqlite(q);
                }
                q.try_map(from_row::<T, _>).fetch_all(p).await?
            }
        })
    }

    async fn fetch_count(&self, r: &Rendered) -> Result<i64> {
        Ok(match self.pool() {
            DbPool::Postgres(p) => {
                let mut q = sqlx::query(&r.sql);
                for v in &r.values {
                    q = v.bind_pg(q);
                }
                q.fetch_one(p).await?.try_get::<i64, _>(0)?
            }
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(p) => {
                let mut q = sqlx::query(&r.sql);
                for v in &r.values {
                    q = v.bind_sqlite(q);
                }
                q.fetch_one(p).await?.try_get::<i64, _>(0)?
            }
        })
    }
}

/// A generation counter's value, if it is one.
fn parse_counter(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse::<u64>().ok()
}

/// Reads a query result through the cache, checking its generation.
async fn read_query<V, F, Fut>(
    mgr: &Arc<CacheManager>,
    key: String,
    generation_key: &str,
    fingerprint: u64,
    ttl_secs: u64,
    load: F,
) -> Result<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V>>,
{
    let deadline = mgr.deadline();
    if !mgr.ready(deadline).await {
        Counters::bump(&mgr.counters.misses);
        return load().await;
    }
    let keys = [generation_key.to_string(), key];
    let Ok(mut found) = mgr.guarded(deadline, "query_get", || mgr.backend.mget(&keys)).await else {
        Counters::bump(&mgr.counters.misses);
        return load().await;
    };
    let entry = found.pop().flatten();
    let [generation_key, key] = keys;
    let generation = match found.pop().flatten() {
        Some(bytes) => parse_counter(&bytes),
        // No generation yet (or it was evicted): seed one, at a random value
        // so that entries written under a lost counter can never match
        // again, *before* reading the database, so that this read's result
        // can be filled against it.
        None => {
            let start = counter_seed();
            match mgr
                .guarded(deadline, "query_generation", || {
                    mgr.backend.seed_counter(&generation_key, start)
                })
                .await
            {
                Ok(None) => Some(start),
                Ok(Some(bytes)) => parse_counter(&bytes),
                Err(CacheError::Command(m)) if m.starts_with("WRONGTYPE") => None,
                Err(_) => {
                    // Unreachable, or out of memory: no generation, no fill.
                    Counters::bump(&mgr.counters.misses);
                    return load().await;
                }
            }
        }
    };
    let Some(generation) = generation else {
        // The counter holds something else than an integer: replace it by a
        // fresh seed (counted), and answer from the database meanwhile.
        let counters = [generation_key];
        let inv = Invalidation {
            counters: &counters,
            ..Invalidation::default()
        };
        if let Ok(done) = mgr
            .guarded(deadline, "query_generation", || mgr.backend.invalidate(&inv))
            .await
        {
            mgr.count_resets(&done);
        }
        Counters::bump(&mgr.counters.misses);
        return load().await;
    };
    if let Some(bytes) = entry {
        match codec::decode::<(u64, V)>(fingerprint, &bytes) {
            Ok(Entry::Record((g, value))) if g == generation => {
                Counters::bump(&mgr.counters.hits);
                return Ok(value);
            }
            Ok(_) => {}
            Err(e) => {
                Counters::bump(&mgr.counters.serialization_errors);
                mgr.warn("decode", &e);
            }
        }
    }
    Counters::bump(&mgr.counters.misses);
    let value = load().await?;
    match codec::encode(fingerprint, Some(&(generation, &value))) {
        Ok(bytes) => {
            let mgr = mgr.clone();
            tokio::spawn(async move {
                mgr.hooks.before_fill(&key).await;
                let ttl_ms = ttl_secs.saturating_mul(1000);
                let filled = mgr
                    .guarded(mgr.deadline(), "query_fill", || {
                        mgr.backend
                            .fill_if_counter(&key, &bytes, ttl_ms, &generation_key, generation)
                    })
                    .await;
                match filled {
                    Ok(true) => Counters::bump(&mgr.counters.fills),
                    Ok(false) => Counters::bump(&mgr.counters.fills_rejected),
                    Err(_) => {}
                }
            });
        }
        Err(e) => mgr.warn("encode", &e),
    }
    Ok(value)
}
