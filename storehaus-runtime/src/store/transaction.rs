//! [`StoreTransaction`]: several writes, of one store or several, and the
//! caller's own SQL, under one commit; every store's invalidation after it.

use std::any::{Any, TypeId};
use std::future::Future;
use std::pin::Pin;

use crate::error::Result;
#[cfg(feature = "sqlite")]
use crate::error::StorehausError;
use crate::record::Cached;
use crate::store::signals::ChangeOp;
use crate::store::sql::{self, DbTx};
use crate::store::{check_id, joined, not_found, Change};
use crate::GenericStore;

/// Writes inside one database transaction, from [`GenericStore::begin`]:
/// of the store that began it, of other stores on the same database
/// ([`with`](Self::with)), and the caller's own SQL ([`as_mut`](Self::as_mut)).
///
/// Cache invalidations are collected and applied after
/// [`commit`](Self::commit), in one round trip per store, followed by one
/// change event per write. [`rollback`](Self::rollback), or dropping the
/// handle without committing, rolls the database back and leaves the cache
/// untouched. The caller's own SQL is invalidated only where
/// [`watch_external_writes`](GenericStore::watch_external_writes) watches
/// the tables it writes.
///
/// ```
/// # use std::sync::Arc;
/// # use storehaus::prelude::*;
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
/// # #[cache(table = "users")]
/// # struct User { id: i64, name: String }
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
/// # #[cache(table = "orders")]
/// # struct Order { id: i64, user_id: i64 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db_pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// # sqlx::raw_sql("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL); \
/// #     CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL); \
/// #     CREATE TABLE audit (n INTEGER NOT NULL); INSERT INTO audit VALUES (0);").execute(&db_pool).await?;
/// # let cache_manager = Arc::new(CacheManager::new(CacheConfig::new("memory://", 60, "app"))?);
/// # let users = GenericStore::<User>::new(db_pool.clone(), None, Some(CacheParams::new(cache_manager.clone())));
/// # let orders = GenericStore::<Order>::new(db_pool.clone(), None, Some(CacheParams::new(cache_manager)));
/// # users.create(User { id: 1, name: "x".into() }, None).await?;
/// let mut tx = users.begin().await?;
/// tx.update(&1, User { id: 1, name: "Ada".into() }, None).await?;
/// tx.with(&orders).create(Order { id: 7, user_id: 1 }, None).await?;
/// sqlx::query("UPDATE audit SET n = n + 1").execute(tx.as_sqlite_mut()?).await?;
/// tx.commit().await?; // both stores' keys invalidated now, not before
/// assert_eq!(orders.get_by_id(&7).await?.map(|o| o.user_id), Some(1));
/// # Ok(()) }
/// ```
pub struct StoreTransaction<'s, T: Cached> {
    store: &'s GenericStore<T>,
    tx: DbTx,
    stores: Vec<Box<dyn Touched>>,
}

impl<T: Cached> std::fmt::Debug for StoreTransaction<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTransaction")
            .field("table", &T::TABLE)
            .field("tx", &self.tx)
            .field("stores", &self.stores.len())
            .finish()
    }
}

impl<T: Cached> GenericStore<T> {
    /// Starts a transaction.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when no transaction can be started.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn begin(&self) -> Result<StoreTransaction<'_, T>> {
        let tx = DbTx::begin(self.pool()).await?;
        Ok(StoreTransaction {
            store: self,
            tx,
            stores: Vec::new(),
        })
    }
}

impl<'s, T: Cached> StoreTransaction<'s, T> {
    /// The writes of `store` inside this transaction: its SQL runs on this
    /// transaction's connection (so `store` must use the same database),
    /// and its keys are invalidated after this transaction's commit.
    pub fn with<'t, U: Cached>(&'t mut self, store: &'t GenericStore<U>) -> InTransaction<'t, U> {
        InTransaction {
            tx: &mut self.tx,
            stores: &mut self.stores,
            store,
        }
    }

    /// The transaction's PostgreSQL connection, for the caller's own SQL.
    ///
    /// # Errors
    /// [`StorehausError::Unsupported`] when the transaction is on SQLite
    /// (use [`as_sqlite_mut`](Self::as_sqlite_mut)).
    pub fn as_mut(&mut self) -> Result<&mut sqlx::PgConnection> {
        match &mut self.tx {
            DbTx::Postgres(tx) => Ok(tx),
            #[cfg(feature = "sqlite")]
            DbTx::Sqlite(_) => Err(StorehausError::Unsupported(
                "this transaction is on SQLite: use as_sqlite_mut()".into(),
            )),
        }
    }

    /// The transaction's SQLite connection, for the caller's own SQL.
    ///
    /// # Errors
    /// [`StorehausError::Unsupported`] when the transaction is on PostgreSQL
    /// (use [`as_mut`](Self::as_mut)).
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub fn as_sqlite_mut(&mut self) -> Result<&mut sqlx::SqliteConnection> {
        match &mut self.tx {
            DbTx::Sqlite(tx) => Ok(tx),
            DbTx::Postgres(_) => Err(StorehausError::Unsupported(
                "this transaction is on PostgreSQL: use as_mut()".into(),
            )),
        }
    }

    /// Inserts `record` inside the transaction.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the insert fails.
    pub async fn create(&mut self, record: T, tags: Option<Vec<String>>) -> Result<T> {
        let store = self.store;
        self.with(store).create(record, tags).await
    }

    /// Reads `id` inside the transaction, from the database (it sees the
    /// transaction's own writes; the cache is not used).
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the query fails.
    pub async fn get_by_id(&mut self, id: &T::Id) -> Result<Option<T>> {
        let store = self.store;
        self.with(store).get_by_id(id).await
    }

    /// Replaces the row `id` inside the transaction.
    ///
    /// # Errors
    /// [`StorehausError::IdMismatch`], [`StorehausError::NotFound`] or
    /// [`StorehausError::Database`], as for [`GenericStore::update`]. The
    /// transaction stays usable.
    pub async fn update(&mut self, id: &T::Id, record: T, tags: Option<Vec<String>>) -> Result<T> {
        let store = self.store;
        self.with(store).update(id, record, tags).await
    }

    /// Deletes the row `id` inside the transaction; `true` when a row was deleted.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the delete fails.
    pub async fn delete(&mut self, id: &T::Id) -> Result<bool> {
        let store = self.store;
        self.with(store).delete(id).await
    }

    /// Commits, then invalidates every written key (one round trip per
    /// store) and publishes one change event per write.
    ///
    /// The commit runs to its end in a task of its own, and the
    /// invalidation follows it, even if the caller stops waiting.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the commit fails; the written keys
    /// are invalidated anyway (the commit's outcome is unknown) and no event
    /// is published.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn commit(self) -> Result<()> {
        let StoreTransaction { tx, stores, store } = self;
        let metrics = store.metrics_handle();
        let started = std::time::Instant::now();
        let task = tokio::spawn(async move {
            let committed = tx.commit().await;
            // A failed commit may have happened even so (the connection can
            // die while its answer is on the way): invalidate, publish nothing.
            for store in stores {
                store.finish(committed.is_ok()).await;
            }
            metrics.write("commit", committed.is_ok(), started.elapsed());
            committed
        });
        joined(task).await
    }

    /// Rolls back. The cache is not touched.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the rollback fails (the connection
    /// is then closed, which also rolls back).
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await
    }
}

/// A store's writes inside a [`StoreTransaction`], from
/// [`StoreTransaction::with`].
pub struct InTransaction<'t, U: Cached> {
    tx: &'t mut DbTx,
    stores: &'t mut Vec<Box<dyn Touched>>,
    store: &'t GenericStore<U>,
}

impl<U: Cached> std::fmt::Debug for InTransaction<'_, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InTransaction").field("table", &U::TABLE).finish()
    }
}

impl<U: Cached> InTransaction<'_, U> {
    /// Inserts `record` inside the transaction.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the insert fails.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = U::TABLE))]
    pub async fn create(self, record: U, tags: Option<Vec<String>>) -> Result<U> {
        let created = sql::insert(self.tx.conn(), &record).await?;
        let id = created.id().clone();
        let index = created.index_values();
        self.record(ChangeOp::Create, id, tags, index);
        Ok(created)
    }

    /// Reads `id` inside the transaction, from the database.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the query fails.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = U::TABLE))]
    pub async fn get_by_id(self, id: &U::Id) -> Result<Option<U>> {
        sql::select(self.tx.conn(), id).await
    }

    /// Replaces the row `id` inside the transaction.
    ///
    /// # Errors
    /// [`StorehausError::IdMismatch`], [`StorehausError::NotFound`] or
    /// [`StorehausError::Database`], as for [`GenericStore::update`].
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = U::TABLE))]
    pub async fn update(self, id: &U::Id, record: U, tags: Option<Vec<String>>) -> Result<U> {
        check_id::<U>(id, &record)?;
        let updated = sql::update(self.tx.conn(), id, &record).await?;
        let updated = updated.ok_or_else(|| not_found::<U>(id))?;
        self.record(ChangeOp::Update, id.clone(), tags, updated.index_values());
        Ok(updated)
    }

    /// Deletes the row `id` inside the transaction; `true` when a row was deleted.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the delete fails.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = U::TABLE))]
    pub async fn delete(self, id: &U::Id) -> Result<bool> {
        let affected = sql::delete::<U>(self.tx.conn(), id).await?;
        self.record(ChangeOp::Delete, id.clone(), None, Vec::new());
        Ok(affected > 0)
    }

    /// Adds a write to the changes of this store (one entry per store).
    fn record(self, op: ChangeOp, id: U::Id, tags: Option<Vec<String>>, index: Vec<(&'static str, String)>) {
        let change = Change {
            op,
            ids: vec![id],
            tags: tags.unwrap_or_default(),
            index,
        };
        let identity = self.store.identity();
        let existing = self
            .stores
            .iter_mut()
            .find(|s| s.identity() == identity)
            .and_then(|s| s.as_any().downcast_mut::<Changes<U>>());
        match existing {
            Some(changes) => changes.changes.push(change),
            None => self.stores.push(Box::new(Changes {
                store: self.store.clone(),
                changes: vec![change],
            })),
        }
    }
}

impl<U: Cached> GenericStore<U> {
    /// Tells stores apart inside a transaction: the record type and the
    /// store's cache settings.
    fn identity(&self) -> (TypeId, usize) {
        let cache = self.cache_settings().map_or(0, |c| c as *const _ as usize);
        (TypeId::of::<U>(), cache)
    }
}

/// One store's writes in a transaction, waiting for the commit.
struct Changes<U: Cached> {
    store: GenericStore<U>,
    changes: Vec<Change<U::Id>>,
}

type Finishing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A store touched by a transaction, whatever its record type.
trait Touched: Send {
    fn identity(&self) -> (TypeId, usize);
    fn as_any(&mut self) -> &mut dyn Any;
    /// After the commit: invalidate, and publish the events when it is known
    /// to have happened.
    fn finish(self: Box<Self>, committed: bool) -> Finishing;
}

impl<U: Cached> Touched for Changes<U> {
    fn identity(&self) -> (TypeId, usize) {
        self.store.identity()
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn finish(self: Box<Self>, committed: bool) -> Finishing {
        Box::pin(async move {
            if committed {
                self.store.after_commit_all(&self.changes).await;
            } else {
                self.store.invalidate_changes(&self.changes).await;
            }
        })
    }
}
