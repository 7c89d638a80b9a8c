//! [`StoreTransaction`]: several writes, one commit, invalidation after it.

use crate::cached::Cached;
use crate::error::Result;
use crate::signals::ChangeOp;
use crate::store::{
    check_id, delete_row, from_row, insert_row, joined, not_found, per_dialect, select_row, update_row, Change,
};
use crate::GenericStore;

/// An open database transaction of one store.
#[derive(Debug)]
enum DbTx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// [`per_dialect!`] over the transaction's connection.
macro_rules! with_tx {
    ($tx:expr, |$c:ident, $sql:ident, $bind:ident| $body:expr) => {
        per_dialect!($tx, DbTx, |$c, $sql, $bind| $body)
    };
}

/// Writes of one store inside one database transaction, from
/// [`GenericStore::begin`].
///
/// Cache invalidations are collected and applied after
/// [`commit`](Self::commit), in one round trip, followed by one change event
/// per write. [`rollback`](Self::rollback), or dropping the handle without
/// committing, rolls the database back and leaves the cache untouched.
///
/// ```ignore
/// let mut tx = store.begin().await?;
/// tx.update(&a.id, a2, None).await?;
/// tx.delete(&b.id).await?;
/// tx.commit().await?; // both keys invalidated now, not before
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
        let tx = match self.pool() {
            crate::DbPool::Postgres(p) => DbTx::Postgres(p.begin().await?),
            #[cfg(feature = "sqlite")]
            crate::DbPool::Sqlite(p) => DbTx::Sqlite(p.begin().await?),
        };
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
        let created: T = with_tx!(&mut self.tx, |c, sql, bind| insert_row!(&mut **c, sql, bind, &record));
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
        Ok(with_tx!(&mut self.tx, |c, sql, _bind| select_row!(&mut **c, sql, id)))
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
        let updated: Option<T> = with_tx!(&mut self.tx, |c, sql, bind| update_row!(
            &mut **c, sql, bind, id, &record
        ));
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
        let affected = with_tx!(&mut self.tx, |c, sql, _bind| delete_row!(&mut **c, sql, id));
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
            let committed = match tx {
                DbTx::Postgres(tx) => tx.commit().await,
                #[cfg(feature = "sqlite")]
                DbTx::Sqlite(tx) => tx.commit().await,
            };
            if let Err(e) = committed {
                // The commit may have happened even so (the connection can
                // die while its answer is on the way): invalidate, publish
                // nothing.
                store.invalidate_changes(&changes).await;
                return Err(e.into());
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
        match self.tx {
            DbTx::Postgres(tx) => tx.rollback().await?,
            #[cfg(feature = "sqlite")]
            DbTx::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}
