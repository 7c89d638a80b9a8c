//! Cached lookups by a unique column declared `#[cache(index)]`:
//! [`GenericStore::get_by`] and [`GenericStore::get_many_by`].
//!
//! An index entry, `{global}:{prefix}:idx:{column}:{value}`, holds the id of
//! the row that had that value when it was read, filled behind a lease like
//! a record. It is only a hint: the record it points to is read by id
//! (through the cache) and must still hold the value; a hint that no longer
//! matches is removed and the lookup goes to the database. So a write needs
//! no old values: entries of values it replaced fail the check.
//!
//! A value without a row is cached too, with the store's query generation
//! read before the database was: valid only while the generation has not
//! moved. Every store write bumps it, and so does the outbox worker of
//! `watch_external_writes` for writes from outside, so a cached "no such
//! value" never hides a row that a write has since given that value. A
//! store write also deletes the entries of the values it writes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::query::read_generation;
use crate::cache::read::{read_through, RecordRead};
use crate::cache::read_many::read_many;
use crate::error::Result;
use crate::keys;
use crate::record::index_value;
use crate::record::Cached;
use crate::store::many_op;
use crate::store::query::{IndexColumn, Query};
use crate::GenericStore;

/// What an index entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
enum Hint<Id> {
    /// The id of the row that held the value.
    Row(Id),
    /// No row held the value at this query generation (0: unknown, never current).
    Absent(u64),
}

impl<T: Cached> GenericStore<T>
where
    T::Id: Serialize + DeserializeOwned,
{
    /// The record whose unique column `column` (declared `#[cache(index)]`)
    /// holds `value`, or `None`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storehaus::prelude::*;
    /// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
    /// #[cache(table = "users")]
    /// struct User {
    ///     id: i64,
    ///     #[cache(index)]
    ///     email: String,
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let db_pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// # sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE)").execute(&db_pool).await?;
    /// # let cache_manager = Arc::new(CacheManager::new(CacheConfig::new("memory://", 60, "app"))?);
    /// let users = GenericStore::<User>::new(db_pool, None, Some(CacheParams::new(cache_manager)));
    /// users.create(User { id: 1, email: "ada@example.com".into() }, None).await?;
    /// let ada = users.get_by(User::columns().email, "ada@example.com").await?;
    /// assert_eq!(ada.map(|u| u.id), Some(1));
    /// # Ok(()) }
    /// ```
    ///
    /// The first lookup of a value reads the database and caches the row's
    /// id under `{global}:{prefix}:idx:{column}:{value}` (a value without a
    /// row is cached as such, valid until the store's next write); later
    /// lookups read that entry and then the record by id, through the cache,
    /// and check that the record still holds the value. The column must be
    /// unique in the database: with several rows, one of them is returned.
    ///
    /// # Errors
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the
    /// database fails. Cache failures are never returned.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn get_by<C: IndexColumn<T>>(&self, column: C, value: impl Into<C::Value>) -> Result<Option<T>> {
        let column = column.column();
        let value: C::Value = value.into();
        let Some(cache) = self.cache_settings() else {
            return self.load_by(column, value).await;
        };
        let rendered = index_value(&value);
        let key = keys::index_key(cache.manager.global_prefix(), &cache.prefix, column.name(), &rendered);
        // A miss loads the row: it is the answer, and its id fills the entry.
        let loaded: Mutex<Option<Option<T>>> = Mutex::new(None);
        let started = Instant::now();
        let (hint, outcome) = self
            .scoped(read_through(
                &cache.manager,
                key.clone(),
                RecordRead {
                    layout: &cache.layout,
                    ttls: cache.ttls(),
                    early: None,
                    near: false,
                    mode: &cache.index_reads,
                },
                false,
                || async {
                    let generation = read_generation(&cache.manager, &cache.generation_key).await;
                    let row = self.load_by(column, value.clone()).await?;
                    let hint = match &row {
                        Some(r) => Hint::Row(r.id().clone()),
                        None => Hint::Absent(generation.unwrap_or(0)),
                    };
                    if let Ok(mut slot) = loaded.lock() {
                        *slot = Some(row);
                    }
                    Ok(Some(hint))
                },
            ))
            .await;
        self.record_latency(outcome.op(), started.elapsed());
        let hint = hint?;
        if let Some(row) = loaded.lock().ok().and_then(|mut slot| slot.take()) {
            return Ok(row);
        }
        match hint {
            Some(Hint::Row(id)) => {
                if let Some(record) = self.get_by_id(&id).await? {
                    if holds(&record, column.name(), &rendered) {
                        return Ok(Some(record));
                    }
                }
            }
            Some(Hint::Absent(g))
                if g != 0 && read_generation(&cache.manager, &cache.generation_key).await == Some(g) =>
            {
                return Ok(None);
            }
            Some(Hint::Absent(_)) | None => {}
        }
        // The row changed its value or is gone, or a write may have given
        // the value to a row: drop the hint, ask the database.
        self.drop_hints(vec![key]).await;
        self.load_by(column, value).await
    }

    /// The records whose unique column `column` holds each of `values`, in
    /// the same order (`None` where no row holds it). The index entries are
    /// read with one MGET, their records with one
    /// [`get_many`](Self::get_many), and the values the cache could not
    /// answer with one `IN` query (filled behind leases); hints that no
    /// longer match their record are removed and their values read with one
    /// more query.
    ///
    /// # Errors
    /// [`StorehausError::Database`](crate::StorehausError::Database) when the
    /// database fails; [`StorehausError::InvalidQuery`](crate::StorehausError::InvalidQuery)
    /// never (an empty `values` is an empty answer).
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE, n = values.len()))]
    pub async fn get_many_by<C, V>(&self, column: C, values: &[V]) -> Result<Vec<Option<T>>>
    where
        C: IndexColumn<T>,
        V: Clone + Into<C::Value>,
    {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let column = column.column();
        let typed: Vec<C::Value> = values.iter().cloned().map(Into::into).collect();
        let rendered: Vec<String> = typed.iter().map(index_value).collect();
        let Some(cache) = self.cache_settings() else {
            let rows = self.load_many_by(column.name(), column, typed.clone()).await?;
            return Ok(rendered.iter().map(|r| rows.get(r).cloned()).collect());
        };
        let keys: Vec<String> = rendered
            .iter()
            .map(|r| keys::index_key(cache.manager.global_prefix(), &cache.prefix, column.name(), r))
            .collect();
        let by_rendered: HashMap<&str, &C::Value> = rendered.iter().map(String::as_str).zip(&typed).collect();
        let loaded: Mutex<HashMap<String, T>> = Mutex::new(HashMap::new());
        let started = Instant::now();
        let (hints, outcome) = self
            .scoped(read_many(
                &cache.manager,
                &keys,
                &rendered,
                &cache.layout,
                cache.ttls(),
                false,
                |missing: Vec<String>| {
                    let wanted: Vec<C::Value> = missing
                        .iter()
                        .filter_map(|r| by_rendered.get(r.as_str()).map(|v| (*v).clone()))
                        .collect();
                    let loaded = &loaded;
                    async move {
                        let generation = read_generation(&cache.manager, &cache.generation_key).await;
                        let rows = self.load_many_by(column.name(), column, wanted).await?;
                        let hints = missing
                            .into_iter()
                            .map(|r| {
                                let hint = match rows.get(&r) {
                                    Some(row) => Hint::Row(row.id().clone()),
                                    None => Hint::Absent(generation.unwrap_or(0)),
                                };
                                (r, hint)
                            })
                            .collect();
                        if let Ok(mut slot) = loaded.lock() {
                            slot.extend(rows);
                        }
                        Ok(hints)
                    }
                },
            ))
            .await;
        self.record_latency(many_op(outcome.hits, keys.len()), started.elapsed());
        let hints: Vec<Option<Hint<T::Id>>> = hints?;
        let loaded = loaded.into_inner().unwrap_or_default();
        let asked = Asked {
            rendered: &rendered,
            typed: &typed,
            keys: &keys,
        };
        self.resolve_hints(column, &asked, hints, loaded).await
    }

    /// Turns what an index read found into records: the rows loaded for
    /// the misses as they are; hints read by id and checked against their
    /// record; cached "no such value" entries checked against the query
    /// generation. Stale hints are removed and their values read again.
    async fn resolve_hints<V: crate::SqlValue + Clone>(
        &self,
        column: crate::Column<T, V, crate::Indexed>,
        asked: &Asked<'_, V>,
        hints: Vec<Option<Hint<T::Id>>>,
        loaded: HashMap<String, T>,
    ) -> Result<Vec<Option<T>>> {
        let Asked { rendered, typed, keys } = *asked;
        // Hints the cache answered: read their records by id and check them;
        // check cached "no such value" entries against the generation.
        let mut out: Vec<Option<T>> = rendered.iter().map(|r| loaded.get(r).cloned()).collect();
        let mut hinted: Vec<(usize, T::Id)> = Vec::new();
        let mut absent: Vec<(usize, u64)> = Vec::new();
        let mut stale = Vec::new();
        for (i, hint) in hints.into_iter().enumerate() {
            if loaded.contains_key(&rendered[i]) {
                continue;
            }
            match hint {
                Some(Hint::Row(id)) => hinted.push((i, id)),
                Some(Hint::Absent(g)) => absent.push((i, g)),
                // Loaded from the database without a row (the fill is on its way).
                None => {}
            }
        }
        if let (false, Some(cache)) = (absent.is_empty(), self.cache_settings()) {
            let now = read_generation(&cache.manager, &cache.generation_key).await;
            stale.extend(
                absent
                    .into_iter()
                    .filter(|(_, g)| *g == 0 || now != Some(*g))
                    .map(|(i, _)| i),
            );
        }
        let ids: Vec<T::Id> = hinted.iter().map(|(_, id)| id.clone()).collect();
        let records = self.get_many(&ids).await?;
        for ((i, _), record) in hinted.into_iter().zip(records) {
            match record {
                Some(record) if holds(&record, column.name(), &rendered[i]) => out[i] = Some(record),
                _ => stale.push(i),
            }
        }
        if !stale.is_empty() {
            self.drop_hints(stale.iter().map(|&i| keys[i].clone()).collect()).await;
            let wanted = stale.iter().map(|&i| typed[i].clone()).collect();
            let rows = self.load_many_by(column.name(), column, wanted).await?;
            for i in stale {
                out[i] = rows.get(&rendered[i]).cloned();
            }
        }
        Ok(out)
    }

    /// The row holding `value` in `column`, from the database.
    async fn load_by<V: crate::SqlValue + Clone>(
        &self,
        column: crate::Column<T, V, crate::Indexed>,
        value: V,
    ) -> Result<Option<T>> {
        let rendered = Query::new()
            .filter(column.eq(value))
            .first()
            .render(self.dialect(), crate::store::query::Select::Rows)?;
        Ok(self.fetch_rows(&rendered).await?.into_iter().next())
    }

    /// The rows holding `values` in `column`, from the database, by their
    /// rendered value.
    async fn load_many_by<V: crate::SqlValue + Clone>(
        &self,
        name: &'static str,
        column: crate::Column<T, V, crate::Indexed>,
        values: Vec<V>,
    ) -> Result<HashMap<String, T>> {
        if values.is_empty() {
            return Ok(HashMap::new());
        }
        let rendered = Query::new()
            .filter(column.is_in(values))
            .render(self.dialect(), crate::store::query::Select::Rows)?;
        let rows = self.fetch_rows(&rendered).await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let value = row.index_values().into_iter().find(|(c, _)| *c == name)?.1;
                Some((value, row))
            })
            .collect())
    }

    /// Removes index entries that no longer match their record (at their
    /// home key and at this version's side key: the lookup read one of them).
    async fn drop_hints(&self, homes: Vec<String>) {
        if let Some(cache) = self.cache_settings() {
            let mgr = &cache.manager;
            let mut keys: Vec<String> = homes.iter().map(|h| cache.layout.side(h)).collect();
            keys.extend(homes);
            mgr.drop_keys(&keys, "drop_hint").await;
        }
    }
}

/// Whether `record` holds `value` (rendered) in the index column `column`.
fn holds<T: Cached>(record: &T, column: &str, value: &str) -> bool {
    record.index_values().iter().any(|(c, v)| *c == column && v == value)
}

/// What an index read asked for: each value rendered, typed, and its
/// index entry's key (same order).
struct Asked<'a, V> {
    rendered: &'a [String],
    typed: &'a [V],
    keys: &'a [String],
}
