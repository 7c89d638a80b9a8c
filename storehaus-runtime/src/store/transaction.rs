//! [`StoreTransaction`]: several writes, one commit, invalidation after it.

use crate::error::Result;
use crate::record::Cached;
use crate::store::signals::ChangeOp;
use crate::store::sql::{self, DbTx};
use crate::store::{check_id, joined, not_found, Change};
use crate::GenericStore;

/// Writes of one store inside one database transaction, from
/// [`GenericStore::begin`].
///
/// Cache invalidations are collected and applied after
/// [`commit`](Self::commit), in one round trip, followed by one change event
/// per write. [`rollback`](Self::rollback), or dropping the handle without
/// committing, rolls the database back and leaves the cache untouched.
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
/// # let store = GenericStore::<User>::new(db_pool, None, Some(CacheParams::new(cache_manager)));
/// # for id in [1, 2] { store.create(User { id, name: "x".into() }, None).await?; }
/// let mut tx = store.begin().await?;
/// tx.update(&1, User { id: 1, name: "a2".into() }, None).await?;
/// tx.delete(&2).await?;
/// tx.commit().await?; // both keys invalidated now, not before
/// assert_eq!(store.get_by_id(&2).await?, None);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct StoreTransaction<'s, T: Cached> {
    store: &'s GenericStore<T>,
    tx: DbTx,
    changes: Vec<Change<T::Id>>,
}

impl<T: Cached> GenericStore<T> {
    /// Starts a transaction.
    ///
    /// # Errors
    /// [`StorehausError::Database`](crate::StorehausError::Database) when no
    /// transaction can be started.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn begin(&self) -> Result<StoreTransaction<'_, T>> {
        let tx = DbTx::begin(self.pool()).await?;
        Ok(StoreTransaction {
            store: self,
            tx,
            changes: Vec::new(),
        })
    }
}

impl<T: Cached> StoreTransaction<'_, T> {
    /// Inserts `record` inside the transaction.
    ///
    /// # Errors
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the insert fails.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn create(&mut self, record: T, tags: Option<Vec<String>>) -> Result<T> {
        let created = sql::insert(self.tx.conn(), &record).await?;
        self.changes.push(Change {
            op: ChangeOp::Create,
            ids: vec![created.id().clone()],
            tags: tags.unwrap_or_default(),
        });
        Ok(created)
    }

    /// Reads `id` inside the transaction, from the database (it sees the
    /// transaction's own writes; the cache is not used).
    ///
    /// # Errors
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the query fails.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn get_by_id(&mut self, id: &T::Id) -> Result<Option<T>> {
        sql::select(self.tx.conn(), id).await
    }

    /// Replaces the row `id` inside the transaction.
    ///
    /// # Errors
    /// [`StorehausError::IdMismatch`](crate::StorehausError::IdMismatch),
    /// [`StorehausError::NotFound`](crate::StorehausError::NotFound) or
    /// [`StorehausError::Database`](crate::StorehausError::Database), as for
    /// [`GenericStore::update`]. The transaction stays usable.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn update(&mut self, id: &T::Id, record: T, tags: Option<Vec<String>>) -> Result<T> {
        check_id::<T>(id, &record)?;
        let updated = sql::update(self.tx.conn(), id, &record).await?;
        let updated = updated.ok_or_else(|| not_found::<T>(id))?;
        self.changes.push(Change {
            op: ChangeOp::Update,
            ids: vec![id.clone()],
            tags: tags.unwrap_or_default(),
        });
        Ok(updated)
    }

    /// Deletes the row `id` inside the transaction; `true` when a row was deleted.
    ///
    /// # Errors
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the delete fails.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn delete(&mut self, id: &T::Id) -> Result<bool> {
        let affected = sql::delete::<T>(self.tx.conn(), id).await?;
        self.changes.push(Change {
            op: ChangeOp::Delete,
            ids: vec![id.clone()],
            tags: Vec::new(),
        });
        Ok(affected > 0)
    }

    /// Commits, then invalidates every written key in one round trip and
    /// publishes one change event per write.
    ///
    /// The commit runs to its end in a task of its own, and the
    /// invalidation follows it, even if the caller stops waiting.
    ///
    /// # Errors
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the
    /// commit fails; the written keys are invalidated anyway (the commit's
    /// outcome is unknown) and no event is published.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn commit(self) -> Result<()> {
        let StoreTransaction { store, tx, changes } = self;
        let store = store.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = tx.commit().await {
                // The commit may have happened even so (the connection can
                // die while its answer is on the way): invalidate, publish
                // nothing.
                store.invalidate_changes(&changes).await;
                return Err(e);
            }
            store.after_commit_all(&changes).await;
            Ok(())
        });
        joined(task).await
    }

    /// Rolls back. The cache is not touched.
    ///
    /// # Errors
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the
    /// rollback fails (the connection is then closed, which also rolls back).
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await
    }
}
