//! The writes of a [`GenericStore`]: each runs to its outcome in a task of
//! its own, then invalidates what it wrote (after the commit, never before)
//! and publishes its change event.

use std::future::Future;
use std::time::Instant;

use crate::backend::TagAdd;
use crate::cache::key;
use crate::error::{Result, StorehausError};
use crate::record::Cached;
use crate::store::signals::{ChangeEvent, ChangeOp};
use crate::store::sql::{self, DbTx, Pooled};
use crate::store::{check_id, not_found, GenericStore};

impl<T: Cached> GenericStore<T> {
    /// Inserts `record`. Does not fill the cache (reads do); clears any
    /// cached "no such row" for its id after commit. `tags` travel with the
    /// change event.
    ///
    /// Once sent, the insert runs to its end in a task of its own, and its
    /// invalidation follows its commit, even if the caller stops waiting
    /// (a request timeout, a client that went away).
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the insert fails (a duplicate id,
    /// a constraint, the connection).
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn create(&self, record: T, tags: Option<Vec<String>>) -> Result<T> {
        let pool = self.pool.clone();
        let ids = vec![record.id().clone()];
        let write = async move {
            let mut conn = Pooled::acquire(&pool).await?;
            Ok(Written::changed(sql::insert(conn.conn(), &record).await?))
        };
        self.run_write("create", ChangeOp::Create, ids, tags, write).await
    }

    /// Replaces the row `id` with `record`; invalidates its cache entry after
    /// commit. Returns the row as stored. Runs to its end even if the caller
    /// stops waiting (see [`create`](Self::create)).
    ///
    /// # Errors
    /// [`StorehausError::IdMismatch`] when `record.id() != id` (nothing is
    /// written); [`StorehausError::NotFound`] when no row has `id`;
    /// [`StorehausError::Database`] when the database fails.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn update(&self, id: &T::Id, record: T, tags: Option<Vec<String>>) -> Result<T> {
        check_id::<T>(id, &record)?;
        let pool = self.pool.clone();
        let write = async move {
            let mut conn = Pooled::acquire(&pool).await?;
            let updated = sql::update(conn.conn(), record.id(), &record).await?;
            Ok(match updated {
                Some(row) => Written::changed(Some(row)),
                None => Written::unchanged(None),
            })
        };
        let updated = self
            .run_write("update", ChangeOp::Update, vec![id.clone()], tags, write)
            .await?;
        updated.ok_or_else(|| not_found::<T>(id))
    }

    /// Updates many rows in one transaction: all or nothing. Every key is
    /// invalidated in one round trip after commit. Runs to its end even if
    /// the caller stops waiting (see [`create`](Self::create)).
    ///
    /// # Errors
    /// [`StorehausError::IdMismatch`] or [`StorehausError::NotFound`] for the
    /// first pair that fails (the transaction is rolled back);
    /// [`StorehausError::Database`] when the database fails.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE, n = updates.len()))]
    pub async fn update_many(&self, updates: Vec<(T::Id, T)>) -> Result<Vec<T>> {
        for (id, record) in &updates {
            check_id::<T>(id, record)?;
        }
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<T::Id> = updates.iter().map(|(id, _)| id.clone()).collect();
        let pool = self.pool.clone();
        let write = async move {
            let mut out = Vec::with_capacity(updates.len());
            let mut tx = DbTx::begin(&pool).await?;
            for (id, record) in &updates {
                match sql::update(tx.conn(), id, record).await? {
                    Some(row) => out.push(row),
                    None => {
                        tx.rollback().await?;
                        return Err(not_found::<T>(id));
                    }
                }
            }
            tx.commit().await?;
            Ok(Written::changed(out))
        };
        self.run_write("update_many", ChangeOp::Update, ids, None, write).await
    }

    /// Deletes the row `id`; `true` when a row was deleted. Its cache entry is
    /// invalidated after commit. Runs to its end even if the caller stops
    /// waiting (see [`create`](Self::create)).
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the database fails.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn delete(&self, id: &T::Id) -> Result<bool> {
        let pool = self.pool.clone();
        let owned = id.clone();
        let write = async move {
            let mut conn = Pooled::acquire(&pool).await?;
            let affected = sql::delete::<T>(conn.conn(), &owned).await?;
            Ok(Written::changed(affected > 0))
        };
        self.run_write("delete", ChangeOp::Delete, vec![id.clone()], None, write)
            .await
    }

    /// Deletes the rows of `ids` in one statement; returns how many were
    /// deleted. Every key is invalidated in one round trip after commit.
    /// Runs to its end even if the caller stops waiting (see
    /// [`create`](Self::create)).
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the database fails.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE, n = ids.len()))]
    pub async fn delete_many(&self, ids: &[T::Id]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let pool = self.pool.clone();
        let owned = ids.to_vec();
        let write = async move {
            // One transaction, so that SQLite's chunked deletes are all or nothing.
            let mut tx = DbTx::begin(&pool).await?;
            let affected = sql::delete_many::<T>(tx.conn(), &owned).await?;
            tx.commit().await?;
            Ok(Written::changed(affected))
        };
        self.run_write("delete_many", ChangeOp::Delete, ids.to_vec(), None, write)
            .await
    }

    /// Runs `write` to its outcome in a task of its own, then invalidates
    /// what it wrote and publishes its change event, and hands the result
    /// back. A caller that stops waiting (its future dropped: a request
    /// timeout, a client gone) cannot cut the write off between its commit
    /// and its invalidation: the statement, once sent, may commit at any
    /// later moment, and only the task that saw it commit can invalidate
    /// after it.
    ///
    /// When the database reports an error, the commit may still have
    /// happened (the connection can die while the commit's answer is on its
    /// way), so the ids are invalidated anyway; nothing is published.
    ///
    /// `name` is the operation's name in the metrics.
    async fn run_write<R, W>(
        &self,
        name: &'static str,
        op: ChangeOp,
        ids: Vec<T::Id>,
        tags: Option<Vec<String>>,
        write: W,
    ) -> Result<R>
    where
        R: Send + 'static,
        W: Future<Output = Result<Written<R>>> + Send + 'static,
    {
        let store = self.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let result = write.await;
            let changed = result.as_ref().is_ok_and(|written| written.changed);
            let uncertain = matches!(result, Err(StorehausError::Database(_)));
            if changed {
                let change = Change {
                    op,
                    ids,
                    tags: tags.unwrap_or_default(),
                };
                store.after_commit_all(std::slice::from_ref(&change)).await;
            } else if uncertain {
                let change = Change {
                    op: ChangeOp::Update,
                    ids,
                    tags: Vec::new(),
                };
                store.invalidate_changes(std::slice::from_ref(&change)).await;
            }
            store.store_metrics().write(name, result.is_ok(), started);
            result.map(|written| written.value)
        });
        joined(task).await
    }

    /// Invalidates every key the committed changes wrote (and the store's
    /// cached queries) in one round trip, then publishes one event per change.
    pub(crate) async fn after_commit_all(&self, changes: &[Change<T::Id>]) {
        if changes.is_empty() {
            return;
        }
        self.invalidate_changes(changes).await;
        if let Some(signals) = &self.signals {
            for c in changes {
                signals.publish(ChangeEvent {
                    table: T::TABLE,
                    op: c.op,
                    ids: c.ids.iter().map(|id| id.to_string()).collect(),
                    tags: c.tags.clone(),
                });
            }
        }
    }

    /// Invalidates every key the changes wrote (and the store's cached
    /// queries) in one round trip, and records their tags.
    pub(crate) async fn invalidate_changes(&self, changes: &[Change<T::Id>]) {
        if let Some(cache) = &self.cache {
            let key_of = |id: &T::Id| key::record_key(cache.manager.global_prefix(), &cache.prefix, id);
            let keys = changes.iter().flat_map(|c| c.ids.iter()).map(key_of).collect();
            let mut tags: Vec<TagAdd> = Vec::new();
            for c in changes.iter().filter(|c| !c.tags.is_empty()) {
                let members: Vec<String> = c.ids.iter().map(key_of).collect();
                for tag in c.tags.iter().filter(|t| !t.is_empty()) {
                    tags.push(TagAdd {
                        set: key::tag_key(cache.manager.global_prefix(), tag),
                        members: members.clone(),
                        // Records are filled after the write, by reads: the
                        // set outlives the members cached within one TTL.
                        ttl_secs: cache.ttl.saturating_mul(2),
                    });
                }
            }
            cache
                .manager
                .invalidate_committed(&cache.scope, keys, vec![cache.generation_key.clone()], tags)
                .await;
        }
    }
}

/// What a write task hands back: its result, and whether it committed a
/// change (a write that found no row invalidates and publishes nothing).
pub(crate) struct Written<R> {
    pub value: R,
    pub changed: bool,
}

impl<R> Written<R> {
    pub fn changed(value: R) -> Self {
        Written { value, changed: true }
    }

    pub fn unchanged(value: R) -> Self {
        Written { value, changed: false }
    }
}

/// Waits for a write task. A panic in it is the caller's panic; a task
/// cancelled by a runtime shutting down is [`StorehausError::Interrupted`].
pub(crate) async fn joined<R>(task: tokio::task::JoinHandle<Result<R>>) -> Result<R> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StorehausError::Interrupted),
    }
}

/// One committed write, waiting for its invalidation and event.
#[derive(Debug, Clone)]
pub(crate) struct Change<Id> {
    pub op: ChangeOp,
    pub ids: Vec<Id>,
    pub tags: Vec<String>,
}
