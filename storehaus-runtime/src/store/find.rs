//! Cached queries: [`GenericStore::find`], [`find_one`](GenericStore::find_one)
//! and [`count`](GenericStore::count). The query is rendered and run here;
//! its result is cached by `crate::cache::query`, valid for one query
//! generation of the store.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::key;
use crate::cache::query::{read_query, QuerySpace};
use crate::error::Result;
use crate::record::Cached;
use crate::store::pool::DbPool;
use crate::store::query::{Dialect, Query, Rendered, Select};
use crate::store::sql::{self, Pooled};
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

    pub(crate) fn dialect(&self) -> Dialect {
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
        let space = QuerySpace {
            key,
            generation_key: &cache.generation_key,
            fingerprint: T::FINGERPRINT,
            ttl_secs: cache.ttl,
        };
        self.scoped(read_query(&cache.manager, space, load)).await
    }

    pub(crate) async fn fetch_rows(&self, r: &Rendered) -> Result<Vec<T>> {
        let mut conn = Pooled::acquire(self.pool()).await?;
        sql::select_rendered(conn.conn(), r).await
    }

    async fn fetch_count(&self, r: &Rendered) -> Result<i64> {
        let mut conn = Pooled::acquire(self.pool()).await?;
        sql::count_rendered(conn.conn(), r).await
    }
}
