//! Cached queries: [`GenericStore::find`], [`find_one`](GenericStore::find_one)
//! and [`count`](GenericStore::count). The query is rendered and run here;
//! its result is cached by `crate::cache::query`, valid for one query
//! generation of the store.

use std::future::Future;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::field::Empty;

use crate::cache::query::{read_query, QuerySpace};
use crate::cache::telemetry::Outcome;
use crate::error::Result;
use crate::keys;
use crate::record::Cached;
use crate::store::pool::DbPool;
use crate::store::query::{Dialect, Query, Rendered, Select};
use crate::store::sql::{self, Pooled};
use crate::store::StoreCache;
use crate::GenericStore;

impl<T: Cached> GenericStore<T> {
    /// The rows matching `query`, from the query cache when its result is
    /// current, else from the database (and then cached).
    ///
    /// # Errors
    /// [`StorehausError::InvalidQuery`](crate::StorehausError::InvalidQuery)
    /// for an empty `in` list;
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the
    /// database fails. Cache failures are never returned.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE, outcome = Empty))]
    pub async fn find(&self, query: Query<T>) -> Result<Vec<T>> {
        let rendered = query.render(self.dialect(), Select::Rows)?;
        self.cached_query("find", &rendered, || self.fetch_rows(&rendered))
            .await
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
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE, outcome = Empty))]
    pub async fn count(&self, query: Query<T>) -> Result<u64> {
        let rendered = query.render(self.dialect(), Select::Count)?;
        let n: i64 = self
            .cached_query("count", &rendered, || self.fetch_count(&rendered))
            .await?;
        Ok(n.max(0) as u64)
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self.pool() {
            DbPool::Postgres(_) => Dialect::Postgres,
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Runs one query through the query cache and records it as `op`.
    async fn cached_query<V, F, Fut>(&self, op: &'static str, rendered: &Rendered, load: F) -> Result<V>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V>>,
    {
        let started = Instant::now();
        let (found, outcome) = match self.cache_settings() {
            None => (load().await, Outcome::Uncached),
            Some(cache) => self.read_cached_query(cache, rendered, load).await,
        };
        let took = started.elapsed();
        self.record_latency(outcome.op(), took);
        self.store_metrics().read(op, found.is_ok().then_some(outcome), 1, took);
        found
    }

    async fn read_cached_query<V, F, Fut>(
        &self,
        cache: &StoreCache,
        rendered: &Rendered,
        load: F,
    ) -> (Result<V>, Outcome)
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V>>,
    {
        let mut key = keys::query_namespace(cache.manager.global_prefix(), &cache.prefix);
        // Each version of the record type caches its own results (their
        // rows differ); the generation they are checked against is shared.
        key.push_str(&rendered.hash(&cache.layout.tag));
        let space = QuerySpace {
            key,
            generation_key: &cache.generation_key,
            fingerprint: T::FINGERPRINT,
            ttl_secs: cache.ttl,
        };
        self.scoped(read_query(&cache.manager, space, load)).await
    }

    /// The rows of `r`, from a read replica that has replayed the store's
    /// writes, else from the primary.
    pub(crate) async fn fetch_rows(&self, r: &Rendered) -> Result<Vec<T>> {
        self.read_db(None, |mut conn: Pooled| async move {
            sql::select_rendered(conn.conn(), r).await
        })
        .await
    }

    async fn fetch_count(&self, r: &Rendered) -> Result<i64> {
        self.read_db(None, |mut conn: Pooled| async move {
            sql::count_rendered(conn.conn(), r).await
        })
        .await
    }
}
