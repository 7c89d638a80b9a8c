//! [`GenericStore`]: typed CRUD over one table, cached.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::backend::TagAdd;
use crate::cached::Cached;
use crate::error::{Result, StorehausError};
use crate::key;
use crate::lease::read_through;
use crate::manager::{CacheManager, MAX_TTL_SECS};
use crate::pool::DbPool;
use crate::signals::{ChangeEvent, ChangeOp, SignalManager};

/// Per-store cache settings: which [`CacheManager`], and optionally a TTL and
/// a prefix that override the record type's `#[cache(...)]` values.
///
/// TTL precedence: [`with_ttl`](Self::with_ttl) > `#[cache(ttl)]` >
/// [`CacheConfig`](crate::CacheConfig)'s default. Prefix precedence:
/// [`with_prefix`](Self::with_prefix) > `#[cache(prefix)]` > the table name.
#[derive(Debug, Clone)]
pub struct CacheParams {
    manager: Arc<CacheManager>,
    ttl: Option<u64>,
    prefix: Option<String>,
}

impl CacheParams {
    /// Cache through `manager` with the record type's own TTL and prefix.
    pub fn new(manager: Arc<CacheManager>) -> Self {
        CacheParams {
            manager,
            ttl: None,
            prefix: None,
        }
    }

    /// TTL in seconds for this store (clamped to 1..=31 536 000).
    pub fn with_ttl(mut self, ttl: u64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Key prefix for this store. Characters outside `[A-Za-z0-9_.-]` are
    /// percent-escaped in keys (use [`GenericStore::try_new`] to reject them).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }
}

/// The resolved cache settings of one store.
#[derive(Debug)]
pub(crate) struct StoreCache {
    pub manager: Arc<CacheManager>,
    pub prefix: String,
    pub ttl: u64,
    pub generation_key: String,
    /// The store's key space: `{global}:{prefix}:`.
    pub scope: String,
}

/// Typed, cached access to the table of `T`.
///
/// ```ignore
/// let store = GenericStore::<User>::new(db_pool, None, Some(CacheParams::new(cache_manager)));
/// let user = store.get_by_id(&id).await?;      // miss: database, then cached
/// let same = store.get_by_id(&id).await?;      // hit
/// store.update(&id, changed, None).await?;     // invalidated after commit
/// ```
///
/// Reads go through the cache when one is configured and fall back to the
/// database whenever the cache is slow, down or returns garbage. Writes run
/// on the database and invalidate after commit. No cache failure is ever
/// returned from a store operation.
#[derive(Debug, Clone)]
pub struct GenericStore<T: Cached> {
    pool: DbPool,
    signals: Option<Arc<SignalManager>>,
    cache: Option<Arc<StoreCache>>,
    _marker: std::marker::PhantomData<fn() -> T>,
}

/// Runs `$body` with the inner value of a per-database enum (`DbPool`, or a
/// transaction's `DbTx`), the dialect's statements and its value binder.
macro_rules! per_dialect {
    ($value:expr, $enum:ident, |$x:ident, $sql:ident, $bind:ident| $body:expr) => {
        match $value {
            $enum::Postgres($x) => {
                let $sql = &T::PG;
                let $bind = <T as $crate::Cached>::bind_values;
                $body
            }
            #[cfg(feature = "sqlite")]
            $enum::Sqlite($x) => {
                let $sql = &T::SQLITE;
                let $bind = <T as $crate::dialect::BindSqlite>::bind_values_sqlite;
                $body
            }
        }
    };
}

/// [`per_dialect!`] over the store's pool.
macro_rules! with_db {
    ($pool:expr, |$p:ident, $sql:ident, $bind:ident| $body:expr) => {
        per_dialect!($pool, DbPool, |$p, $sql, $bind| $body)
    };
}

/// The SQL of each single-row write, against any executor of the dialect
/// (a pool, or a transaction's connection). Shared by the store and
/// [`StoreTransaction`](crate::StoreTransaction).
macro_rules! insert_row {
    ($exec:expr, $sql:ident, $bind:ident, $record:expr) => {
        $bind($record, sqlx::query($sql.insert).bind($record.id()))
            .try_map(from_row::<T, _>)
            .fetch_one($exec)
            .await?
    };
}

macro_rules! update_row {
    ($exec:expr, $sql:ident, $bind:ident, $id:expr, $record:expr) => {
        $bind($record, sqlx::query($sql.update))
            .bind($id)
            .try_map(from_row::<T, _>)
            .fetch_optional($exec)
            .await?
    };
}

macro_rules! delete_row {
    ($exec:expr, $sql:ident, $id:expr) => {
        sqlx::query($sql.delete).bind($id).execute($exec).await?.rows_affected()
    };
}

macro_rules! select_row {
    ($exec:expr, $sql:ident, $id:expr) => {
        sqlx::query($sql.select_by_id)
            .bind($id)
            .try_map(from_row::<T, _>)
            .fetch_optional($exec)
            .await?
    };
}

pub(crate) use {delete_row, insert_row, per_dialect, select_row, update_row};

pub(crate) fn from_row<T, R>(row: R) -> std::result::Result<T, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, R>,
    R: sqlx::Row,
{
    T::from_row(&row)
}

impl<T: Cached> GenericStore<T> {
    /// A store over `pool` (a `sqlx::PgPool` or `sqlx::SqlitePool`), with
    /// optional change signals and optional caching.
    ///
    /// Never fails: a store prefix with forbidden characters, or one that
    /// starts with `__` (a namespace StoreHaus reserves for its own keys), is
    /// escaped in keys (with a warning) and a TTL outside 1..=31 536 000 is
    /// clamped. Use [`try_new`](Self::try_new) to have them rejected instead.
    pub fn new(pool: impl Into<DbPool>, signals: Option<Arc<SignalManager>>, cache: Option<CacheParams>) -> Self {
        let cache = cache.map(|params| {
            let prefix = params.prefix.unwrap_or_else(|| T::PREFIX.to_string());
            let escaped = key::escape_store_prefix(&prefix);
            if escaped != prefix {
                tracing::warn!(prefix = %prefix, escaped = %escaped, "store prefix holds characters outside [A-Za-z0-9_.-] or starts with the reserved \"__\"; it is escaped in keys");
            }
            let ttl = params
                .ttl
                .or(T::TTL)
                .unwrap_or(params.manager.config().default_ttl)
                .clamp(1, MAX_TTL_SECS);
            let generation_key = key::generation_key(params.manager.global_prefix(), &escaped);
            let scope = key::store_scope(params.manager.global_prefix(), &escaped);
            Arc::new(StoreCache {
                manager: params.manager,
                prefix: escaped,
                ttl,
                generation_key,
                scope,
            })
        });
        GenericStore {
            pool: pool.into(),
            signals,
            cache,
            _marker: std::marker::PhantomData,
        }
    }

    /// Like [`new`](Self::new), but rejects a bad store prefix or TTL.
    ///
    /// # Errors
    /// [`StorehausError::Cache`] with [`CacheError::InvalidConfig`](crate::CacheError::InvalidConfig)
    /// for a prefix that is empty, starts with `__` or holds characters outside
    /// `[A-Za-z0-9_.-]`, or a TTL outside 1..=31 536 000.
    pub fn try_new(
        pool: impl Into<DbPool>,
        signals: Option<Arc<SignalManager>>,
        cache: Option<CacheParams>,
    ) -> Result<Self> {
        if let Some(params) = &cache {
            if let Some(prefix) = &params.prefix {
                key::validate_prefix("store prefix", prefix)?;
            }
            if let Some(ttl) = params.ttl {
                if !(1..=MAX_TTL_SECS).contains(&ttl) {
                    return Err(crate::CacheError::InvalidConfig(format!(
                        "store TTL must be between 1 and {MAX_TTL_SECS} seconds, got {ttl}"
                    ))
                    .into());
                }
            }
        }
        Ok(Self::new(pool, signals, cache))
    }

    pub(crate) fn cache_settings(&self) -> Option<&StoreCache> {
        self.cache.as_deref()
    }

    /// The database pool.
    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// The cache manager of this store.
    ///
    /// # Errors
    /// [`StorehausError::CacheDisabled`] when the store was built without
    /// [`CacheParams`].
    pub fn cache_manager(&self) -> Result<Arc<CacheManager>> {
        self.cache
            .as_ref()
            .map(|c| c.manager.clone())
            .ok_or(StorehausError::CacheDisabled)
    }

    /// The effective store prefix (as used in keys), if caching is enabled.
    pub fn cache_prefix(&self) -> Option<&str> {
        self.cache.as_ref().map(|c| c.prefix.as_str())
    }

    /// The effective TTL in seconds, if caching is enabled.
    pub fn cache_ttl(&self) -> Option<u64> {
        self.cache.as_ref().map(|c| c.ttl)
    }

    /// The cache key of `id`: `{global}:{prefix}:{id}`. Without caching, the
    /// key the record type would use with an empty global prefix.
    pub fn cache_key(&self, id: &T::Id) -> String {
        match &self.cache {
            Some(c) => key::record_key(c.manager.global_prefix(), &c.prefix, id),
            None => key::record_key("", T::PREFIX, id),
        }
    }

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
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn create(&self, record: T, tags: Option<Vec<String>>) -> Result<T> {
        let pool = self.pool.clone();
        let ids = vec![record.id().clone()];
        let write = async move {
            let created = with_db!(&pool, |p, sql, bind| insert_row!(p, sql, bind, &record));
            Ok(Written::changed(created))
        };
        self.run_write(ChangeOp::Create, ids, tags, write).await
    }

    /// The record with `id`, from the cache when it holds it, else from the
    /// database (and then cached, "no such row" included).
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the database fails. Cache failures
    /// are never returned: the database answers instead.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn get_by_id(&self, id: &T::Id) -> Result<Option<T>> {
        let Some(cache) = &self.cache else {
            return self.load_one(id).await;
        };
        let key = key::record_key(cache.manager.global_prefix(), &cache.prefix, id);
        read_through(&cache.manager, key, T::FINGERPRINT, cache.ttl, || self.load_one(id)).await
    }

    async fn load_one(&self, id: &T::Id) -> Result<Option<T>> {
        Ok(with_db!(&self.pool, |p, sql, _bind| select_row!(p, sql, id)))
    }

    /// The records of `ids`, in the same order (`None` where no row exists).
    /// Hits come from one MGET; the misses from one database query, and are
    /// then cached behind leases.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the database fails.
    #[tracing::instrument(skip_all, fields(table = T::TABLE, n = ids.len()))]
    pub async fn get_many(&self, ids: &[T::Id]) -> Result<Vec<Option<T>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let Some(cache) = &self.cache else {
            let rows = self.load_many(ids).await?;
            return Ok(ids.iter().map(|id| rows.get(id).cloned()).collect());
        };
        let keys: Vec<String> = ids
            .iter()
            .map(|id| key::record_key(cache.manager.global_prefix(), &cache.prefix, id))
            .collect();
        crate::batch::read_many(
            &cache.manager,
            &keys,
            ids,
            T::FINGERPRINT,
            cache.ttl,
            |missing| async move { self.load_many(&missing).await },
        )
        .await
    }

    /// One query for many ids: `= ANY($1)` on PostgreSQL, `IN (...)` on SQLite.
    async fn load_many(&self, ids: &[T::Id]) -> Result<HashMap<T::Id, T>> {
        let mut out = HashMap::with_capacity(ids.len());
        match &self.pool {
            DbPool::Postgres(p) => {
                let rows = sqlx::query(T::PG.select_many)
                    .bind(ids)
                    .try_map(from_row::<T, _>)
                    .fetch_all(p)
                    .await?;
                out.extend(rows.into_iter().map(|r| (r.id().clone(), r)));
            }
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(p) => {
                for chunk in ids.chunks(SQLITE_CHUNK) {
                    let sql = in_list(T::SQLITE.select_many, chunk.len());
                    let mut q = sqlx::query(&sql);
                    for id in chunk {
                        q = q.bind(id);
                    }
                    let rows = q.try_map(from_row::<T, _>).fetch_all(p).await?;
                    out.extend(rows.into_iter().map(|r| (r.id().clone(), r)));
                }
            }
        }
        Ok(out)
    }

    /// Replaces the row `id` with `record`; invalidates its cache entry after
    /// commit. Returns the row as stored. Runs to its end even if the caller
    /// stops waiting (see [`create`](Self::create)).
    ///
    /// # Errors
    /// [`StorehausError::IdMismatch`] when `record.id() != id` (nothing is
    /// written); [`StorehausError::NotFound`] when no row has `id`;
    /// [`StorehausError::Database`] when the database fails.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn update(&self, id: &T::Id, record: T, tags: Option<Vec<String>>) -> Result<T> {
        check_id::<T>(id, &record)?;
        let pool = self.pool.clone();
        let write = async move {
            let id = record.id();
            let updated: Option<T> = with_db!(&pool, |p, sql, bind| update_row!(p, sql, bind, id, &record));
            Ok(match updated {
                Some(row) => Written::changed(Some(row)),
                None => Written::unchanged(None),
            })
        };
        let updated = self.run_write(ChangeOp::Update, vec![id.clone()], tags, write).await?;
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
    #[tracing::instrument(skip_all, fields(table = T::TABLE, n = updates.len()))]
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
            with_db!(&pool, |p, sql, bind| {
                let mut tx = p.begin().await?;
                for (id, record) in &updates {
                    let row = update_row!(&mut *tx, sql, bind, id, record);
                    match row {
                        Some(r) => out.push(r),
                        None => {
                            tx.rollback().await?;
                            return Err(not_found::<T>(id));
                        }
                    }
                }
                tx.commit().await?;
            });
            Ok(Written::changed(out))
        };
        self.run_write(ChangeOp::Update, ids, None, write).await
    }

    /// Deletes the row `id`; `true` when a row was deleted. Its cache entry is
    /// invalidated after commit. Runs to its end even if the caller stops
    /// waiting (see [`create`](Self::create)).
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the database fails.
    #[tracing::instrument(skip_all, fields(table = T::TABLE))]
    pub async fn delete(&self, id: &T::Id) -> Result<bool> {
        let pool = self.pool.clone();
        let owned = id.clone();
        let write = async move {
            let affected = with_db!(&pool, |p, sql, _bind| delete_row!(p, sql, &owned));
            Ok(Written::changed(affected > 0))
        };
        self.run_write(ChangeOp::Delete, vec![id.clone()], None, write).await
    }

    /// Deletes the rows of `ids` in one statement; returns how many were
    /// deleted. Every key is invalidated in one round trip after commit.
    /// Runs to its end even if the caller stops waiting (see
    /// [`create`](Self::create)).
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the database fails.
    #[tracing::instrument(skip_all, fields(table = T::TABLE, n = ids.len()))]
    pub async fn delete_many(&self, ids: &[T::Id]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let pool = self.pool.clone();
        let owned = ids.to_vec();
        let write = async move {
            let ids = owned.as_slice();
            let affected = match &pool {
                DbPool::Postgres(p) => sqlx::query(T::PG.delete_many)
                    .bind(ids)
                    .execute(p)
                    .await?
                    .rows_affected(),
                #[cfg(feature = "sqlite")]
                DbPool::Sqlite(p) => {
                    let mut tx = p.begin().await?;
                    let mut n = 0;
                    for chunk in ids.chunks(SQLITE_CHUNK) {
                        let sql = in_list(T::SQLITE.delete_many, chunk.len());
                        let mut q = sqlx::query(&sql);
                        for id in chunk {
                            q = q.bind(id);
                        }
                        n += q.execute(&mut *tx).await?.rows_affected();
                    }
                    tx.commit().await?;
                    n
                }
            };
            Ok(Written::changed(affected))
        };
        self.run_write(ChangeOp::Delete, ids.to_vec(), None, write).await
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
    async fn run_write<R, W>(&self, op: ChangeOp, ids: Vec<T::Id>, tags: Option<Vec<String>>, write: W) -> Result<R>
    where
        R: Send + 'static,
        W: Future<Output = Result<Written<R>>> + Send + 'static,
    {
        let store = self.clone();
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

#[cfg(feature = "sqlite")]
const SQLITE_CHUNK: usize = 500;

/// Completes an `... IN (` prefix with `n` placeholders `?1, ?2, ...`.
#[cfg(feature = "sqlite")]
fn in_list(prefix: &str, n: usize) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(prefix.len() + n * 5 + 1);
    sql.push_str(prefix);
    for i in 1..=n {
        if i > 1 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "?{i}");
    }
    sql.push(')');
    sql
}

pub(crate) fn check_id<T: Cached>(id: &T::Id, record: &T) -> Result<()> {
    if record.id() != id {
        return Err(StorehausError::IdMismatch {
            expected: id.to_string(),
            found: record.id().to_string(),
        });
    }
    Ok(())
}

pub(crate) fn not_found<T: Cached>(id: &T::Id) -> StorehausError {
    StorehausError::NotFound {
        table: T::TABLE,
        id: id.to_string(),
    }
}
