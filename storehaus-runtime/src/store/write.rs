//! The writes of a [`GenericStore`]: each runs to its outcome in a task of
//! its own, then invalidates what it wrote (after the commit, never before)
//! and publishes its change event.

use std::future::Future;
use std::time::Instant;

use crate::backend::TagAdd;
use crate::cache::controls::write_lease;
use crate::cache::flight::Lease;
use crate::cache::stats::Op;
use crate::error::{Result, StorehausError};
use crate::keys;
use crate::record::Cached;
use crate::store::signals::{ChangeEvent, ChangeOp};
use crate::store::sql::{self, DbTx, Pooled};
use crate::store::{check_id, not_found, GenericStore};

impl<T: Cached> GenericStore<T> {
    /// Inserts `record`. Does not fill the cache (reads do) unless the store
    /// was built with [`CacheParams::with_fill_on_write`](crate::CacheParams::with_fill_on_write);
    /// clears any cached "no such row" for its id after commit. `tags`
    /// travel with the change event.
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
        let index = record.index_values();
        let write = async move {
            let mut conn = Pooled::acquire(&pool).await?;
            Ok(Written::changed(sql::insert(conn.conn(), &record).await?))
        };
        self.run_write(
            "create",
            ChangeOp::Create,
            (ids, index),
            tags,
            Some(|row: &T| Some(row)),
            write,
        )
        .await
    }

    /// Replaces the row `id` with `record`; invalidates its cache entry after
    /// commit (or fills it with the row, with
    /// [`CacheParams::with_fill_on_write`](crate::CacheParams::with_fill_on_write)).
    /// Returns the row as stored. Runs to its end even if the caller
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
        let index = record.index_values();
        let write = async move {
            let mut conn = Pooled::acquire(&pool).await?;
            let updated = sql::update(conn.conn(), record.id(), &record).await?;
            Ok(match updated {
                Some(row) => Written::changed(Some(row)),
                None => Written::unchanged(None),
            })
        };
        let updated = self
            .run_write(
                "update",
                ChangeOp::Update,
                (vec![id.clone()], index),
                tags,
                Some(Option::as_ref),
                write,
            )
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
        let index = updates.iter().flat_map(|(_, record)| record.index_values()).collect();
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
        self.run_write("update_many", ChangeOp::Update, (ids, index), None, None, write)
            .await
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
        self.run_write(
            "delete",
            ChangeOp::Delete,
            (vec![id.clone()], Vec::new()),
            None,
            None,
            write,
        )
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
        self.run_write(
            "delete_many",
            ChangeOp::Delete,
            (ids.to_vec(), Vec::new()),
            None,
            None,
            write,
        )
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
    /// `row_of`, for a write of one row, finds the row in the result: with
    /// `with_fill_on_write`, the key is leased before the write is sent and
    /// the row fills it after the commit (see `CacheManager::fill_committed`).
    /// `name` is the operation's name in the metrics.
    async fn run_write<R, W>(
        &self,
        name: &'static str,
        op: ChangeOp,
        (ids, index): (Vec<T::Id>, Vec<(&'static str, String)>),
        tags: Option<Vec<String>>,
        row_of: Option<fn(&R) -> Option<&T>>,
        write: W,
    ) -> Result<R>
    where
        R: Send + 'static,
        W: Future<Output = Result<Written<R>>> + Send + 'static,
    {
        let store = self.clone();
        let started = Instant::now();
        let scope = self.cache.as_ref().map(|c| c.figures.clone());
        let task = tokio::spawn(crate::cache::stats::STORE.scope(scope, async move {
            let lease = match (&store.cache, row_of, ids.as_slice()) {
                (Some(cache), Some(_), [id]) if cache.fill_on_write => {
                    let key = keys::record_key(cache.manager.global_prefix(), &cache.prefix, id);
                    write_lease(&cache.manager, &key).await
                }
                _ => None,
            };
            let result = write.await;
            let changed = result.as_ref().is_ok_and(|written| written.changed);
            let uncertain = matches!(result, Err(StorehausError::Database(_)));
            let row = match (&result, row_of) {
                (Ok(written), Some(row_of)) if changed => row_of(&written.value),
                _ => None,
            };
            if changed {
                let change = Change {
                    op,
                    ids,
                    tags: tags.unwrap_or_default(),
                    index,
                };
                match (lease, row) {
                    (Some(lease), Some(row)) => store.after_commit_filled(&change, row, lease).await,
                    _ => store.after_commit_all(std::slice::from_ref(&change)).await,
                }
            } else if uncertain {
                let change = Change {
                    op: ChangeOp::Update,
                    ids,
                    tags: Vec::new(),
                    index,
                };
                store.invalidate_changes(std::slice::from_ref(&change)).await;
            } else if let (Some(lease), Some(cache), [id]) = (lease, &store.cache, ids.as_slice()) {
                // Nothing written (no such row, a refused insert): give the lease back.
                let key = keys::record_key(cache.manager.global_prefix(), &cache.prefix, id);
                cache
                    .manager
                    .release_lease(&key, &lease, cache.manager.deadline())
                    .await;
            }
            let took = started.elapsed();
            store.record_latency(Op::Write, took);
            store.store_metrics().write(name, result.is_ok(), took);
            result.map(|written| written.value)
        }));
        joined(task).await
    }

    /// Invalidates every key the committed changes wrote (and the store's
    /// cached queries) in one round trip, then publishes one event per change.
    pub(crate) async fn after_commit_all(&self, changes: &[Change<T::Id>]) {
        if changes.is_empty() {
            return;
        }
        self.invalidate_changes(changes).await;
        self.publish(changes);
    }

    /// For a committed write of one row whose key it leased before the
    /// write (`with_fill_on_write`): fills the key with `row` where the
    /// lease is still in place (else deletes it), delivers the rest of the
    /// invalidation (the query generation, the tags), then publishes.
    async fn after_commit_filled(&self, change: &Change<T::Id>, row: &T, lease: Lease) {
        let Some(cache) = &self.cache else {
            return;
        };
        let mgr = &cache.manager;
        let key = keys::record_key(mgr.global_prefix(), &cache.prefix, row.id());
        match mgr.encode_fill(T::FINGERPRINT, Some(row)) {
            Some(bytes) => {
                let tags = self.tag_adds(std::slice::from_ref(change));
                let index = self.index_keys(std::slice::from_ref(change));
                let lsn = self.commit_lsn().await;
                self.scoped(mgr.fill_committed(
                    &cache.scope,
                    key,
                    (bytes, lease, cache.ttl),
                    (index, vec![cache.generation_key.clone()]),
                    (tags, lsn),
                ))
                .await;
            }
            None => self.invalidate_changes(std::slice::from_ref(change)).await,
        }
        self.publish(std::slice::from_ref(change));
    }

    fn publish(&self, changes: &[Change<T::Id>]) {
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
    /// queries) in one round trip, and records their tags. For a store read
    /// from replicas, the primary's log position is read first (after the
    /// commit) for the replica markers.
    pub(crate) async fn invalidate_changes(&self, changes: &[Change<T::Id>]) {
        if let Some(cache) = &self.cache {
            let key_of = |id: &T::Id| keys::record_key(cache.manager.global_prefix(), &cache.prefix, id);
            let mut keys: Vec<String> = changes.iter().flat_map(|c| c.ids.iter()).map(key_of).collect();
            keys.extend(self.index_keys(changes));
            let tags = self.tag_adds(changes);
            let lsn = self.commit_lsn().await;
            let invalidation =
                cache
                    .manager
                    .invalidate_committed(&cache.scope, keys, vec![cache.generation_key.clone()], (tags, lsn));
            self.scoped(invalidation).await;
        }
    }
}

impl<T: Cached> GenericStore<T> {
    /// The index entries of the values `changes` wrote.
    fn index_keys(&self, changes: &[Change<T::Id>]) -> Vec<String> {
        let Some(cache) = &self.cache else {
            return Vec::new();
        };
        changes
            .iter()
            .flat_map(|c| c.index.iter())
            .map(|(column, value)| keys::index_key(cache.manager.global_prefix(), &cache.prefix, column, value))
            .collect()
    }

    /// The tag additions of `changes`: each tag's set gets the keys of its change.
    fn tag_adds(&self, changes: &[Change<T::Id>]) -> Vec<TagAdd> {
        let mut tags: Vec<TagAdd> = Vec::new();
        let Some(cache) = &self.cache else {
            return tags;
        };
        let key_of = |id: &T::Id| keys::record_key(cache.manager.global_prefix(), &cache.prefix, id);
        for c in changes.iter().filter(|c| !c.tags.is_empty()) {
            let members: Vec<String> = c.ids.iter().map(key_of).collect();
            for tag in c.tags.iter().filter(|t| !t.is_empty()) {
                tags.push(TagAdd {
                    set: keys::tag_key(cache.manager.global_prefix(), tag),
                    members: members.clone(),
                    // Records are filled after the write, by reads: the
                    // set outlives the members cached within one TTL.
                    ttl_secs: cache.ttl.saturating_mul(2),
                });
            }
        }
        tags
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
    /// The index values the write wrote (`#[cache(index)]` columns): their
    /// index entries are deleted with the records' keys, so a cached "no
    /// such value" cannot hide the new row.
    pub index: Vec<(&'static str, String)>,
}
