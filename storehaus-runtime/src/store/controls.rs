//! Explicit controls over one store's cache entries: invalidate a record,
//! read it fresh from the database, or prime the cache with it.

use crate::cache::controls::{prime, refresh_through};
use crate::error::Result;
use crate::keys;
use crate::record::Cached;
use crate::store::signals::ChangeOp;
use crate::store::{Change, GenericStore};

impl<T: Cached> GenericStore<T> {
    /// Invalidates the cached record `id` (and the store's cached query
    /// results) as a committed write of it would: the same invalidation,
    /// with the same guarantees. Once it returns, no read of this process
    /// returns what the cache held for `id`, and no read of another process
    /// either when the cache could be reached. When it could not, the
    /// invalidation is remembered and replayed like a write's, and this
    /// process's cached reads bypass the cache until it has been. Use it
    /// after changing the row behind the store's back (raw SQL) without
    /// [`watch_external_writes`](Self::watch_external_writes).
    ///
    /// Without a cache, it does nothing. Publishes no change event.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storehaus::prelude::*;
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
    /// # #[cache(table = "users")]
    /// # struct User { id: i64, name: String }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let db_pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// # sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&db_pool).await?;
    /// # let cache_manager = Arc::new(CacheManager::new(CacheConfig::new("memory://", 60, "app"))?);
    /// # let store = GenericStore::<User>::new(db_pool.clone(), None, Some(CacheParams::new(cache_manager)));
    /// # store.create(User { id: 1, name: "Ada".into() }, None).await?;
    /// # store.get_by_id(&1).await?;
    /// sqlx::query("UPDATE users SET name = 'Ada L.' WHERE id = 1").execute(&db_pool).await?;
    /// store.invalidate(&1).await;
    /// assert_eq!(store.get_by_id(&1).await?.unwrap().name, "Ada L.");
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn invalidate(&self, id: &T::Id) {
        let change = Change {
            op: ChangeOp::Update,
            ids: vec![id.clone()],
            tags: Vec::new(),
            index: Vec::new(),
        };
        self.invalidate_changes(std::slice::from_ref(&change)).await;
    }

    /// The record `id` read from the database, whatever the cache holds,
    /// and put into the cache in its place, behind a fill lease like a
    /// read's (a write that lands meanwhile drops the fill). Readers of this
    /// process that miss meanwhile share the load.
    ///
    /// The cached entry is deleted before the database is read; when another
    /// reader takes the key in between, or the cache cannot be reached, the
    /// row is still read from the database, and not cached.
    ///
    /// # Errors
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the
    /// database fails. Cache failures are never returned.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn get_fresh(&self, id: &T::Id) -> Result<Option<T>> {
        let Some(cache) = self.cache_settings() else {
            return self.load_one_fresh(id).await;
        };
        let key = keys::record_key(cache.manager.global_prefix(), &cache.prefix, id);
        self.scoped(refresh_through(
            &cache.manager,
            key,
            &cache.layout,
            cache.ttls(),
            || self.load_one_fresh(id),
        ))
        .await
    }

    /// Puts `record` into the cache under its id, for the store's TTL, if
    /// the key is free (holds neither a value nor a reader's fill lease):
    /// `true` when it was written. For warm-up with rows read from the
    /// database in bulk. The write goes through a fill lease like a read's
    /// fill, so a store write (of any process) that lands while `prime` runs
    /// wins, and an entry already cached (filled by a read, so at least as
    /// new) is left alone.
    ///
    /// `record` must be as new as the database: a row read before a write
    /// that has already returned is not detected (the write's invalidation
    /// is over by then) and would be cached until its TTL. Prime rows read
    /// after the writes you care about, or use [`get_fresh`](Self::get_fresh).
    ///
    /// Without a cache, or when the cache cannot be reached, `false`.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn prime(&self, record: &T) -> bool {
        let Some(cache) = self.cache_settings() else {
            return false;
        };
        let Some(bytes) = cache.manager.encode_fill(T::FINGERPRINT, Some(record)) else {
            return false;
        };
        let key = keys::record_key(cache.manager.global_prefix(), &cache.prefix, record.id());
        self.scoped(prime(&cache.manager, key, &cache.layout, bytes, cache.ttl))
            .await
    }
}
