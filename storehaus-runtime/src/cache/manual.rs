//! The manager's manual API (`set_record`, `get_record`, `delete_record`)
//! and its bulk invalidations (`invalidate_queries`, `delete_pattern`,
//! `invalidate_tag`), which share one walk over the key space.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{self, Entry, ANY_FINGERPRINT};
use super::CacheManager;
use crate::backend::{Invalidation, ScanStep};
use crate::error::{CacheError, CacheResult};
use crate::keys;
use crate::MAX_TTL_SECS;

impl CacheManager {
    /// Stores `value` under `{global}:{prefix}:{id}` for `ttl` seconds.
    /// A store of the same prefix reads it back as a cached record.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for a bad prefix or a TTL outside
    /// 1..=31 536 000; [`CacheError::SerializationError`] when the value
    /// cannot be encoded; connection errors and timeouts as they happen.
    #[tracing::instrument(target = "storehaus", skip(self, value))]
    pub async fn set_record<T: Serialize + ?Sized>(
        &self,
        prefix: &str,
        id: &str,
        value: &T,
        ttl: u64,
    ) -> CacheResult<()> {
        let key = self.manual_key(prefix, id)?;
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(CacheError::InvalidInput(format!(
                "ttl must be between 1 and {MAX_TTL_SECS} seconds, got {ttl}"
            )));
        }
        let bytes = codec::encode(ANY_FINGERPRINT, Some(value))?;
        let set = self
            .guarded(self.deadline(), "set_record", || self.backend.set_ex(&key, &bytes, ttl))
            .await;
        self.near_forget(std::slice::from_ref(&key));
        set
    }

    /// Reads `{global}:{prefix}:{id}`. Counts a hit or a miss like a store read.
    ///
    /// # Errors
    /// [`CacheError::SerializationError`] when the entry does not decode as
    /// `T` (it is left in place); [`CacheError::InvalidInput`] for a bad
    /// prefix; connection errors and timeouts as they happen.
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn get_record<T: DeserializeOwned>(&self, prefix: &str, id: &str) -> CacheResult<Option<T>> {
        let key = self.manual_key(prefix, id)?;
        let deadline = self.deadline();
        if !self.ready(deadline).await {
            // An invalidation is still waiting for replay: the entry may be
            // older than a write that has returned.
            self.count(|c| &c.misses);
            return Ok(None);
        }
        let found = self.guarded(deadline, "get_record", || self.backend.get(&key)).await;
        let bytes = match found {
            Ok(Some(bytes)) if !codec::is_lease(&bytes) => bytes,
            Ok(_) => {
                self.count(|c| &c.misses);
                return Ok(None);
            }
            Err(e) => {
                self.count(|c| &c.misses);
                return Err(e);
            }
        };
        match codec::decode::<T>(ANY_FINGERPRINT, &bytes) {
            Ok(Entry::Record(v)) => {
                self.count(|c| &c.hits);
                Ok(Some(v))
            }
            Ok(Entry::Absent) => {
                self.count(|c| &c.hits);
                Ok(None)
            }
            Err(e) => {
                self.count(|c| &c.misses);
                self.count_corrupt(1);
                Err(e)
            }
        }
    }

    /// Removes `{global}:{prefix}:{id}`, and the entries other versions of
    /// the store's record type keep beside it during a rolling deploy
    /// (`docs/FORMAT.md`); `true` when the key itself existed.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for a bad prefix; connection errors and
    /// timeouts as they happen.
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn delete_record(&self, prefix: &str, id: &str) -> CacheResult<bool> {
        let key = self.manual_key(prefix, id)?;
        let mut keys = vec![key];
        self.flights.detach(&keys);
        self.recent
            .record(&keys::store_scope(self.global_prefix(), prefix), &keys, &[]);
        let deadline = self.deadline();
        let sides = self.side_keys(&keys, deadline).await;
        let home = self
            .guarded(deadline, "delete_record", || self.backend.delete(&keys[..1]))
            .await;
        let sides = match sides {
            Ok(sides) if !sides.is_empty() => {
                let deleted = self
                    .guarded(deadline, "delete_record", || self.backend.delete(&sides))
                    .await;
                keys.extend(sides);
                deleted.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        self.near_forget(&keys);
        let existed = home? > 0;
        sides?;
        Ok(existed)
    }

    /// Invalidates everything cached for the store prefix `prefix`: its
    /// records and its query results. Returns how many records it removed.
    ///
    /// First the query results, in O(1): the prefix's query generation is
    /// bumped (one round trip: a `SET NX` that seeds a missing counter at a
    /// random value, then `INCR`), which makes every cached result
    /// unreachable at once. Then the records: a walk over
    /// `{global}:{prefix}:*` with SCAN and UNLINK in batches (never KEYS;
    /// on a cluster, on every primary), which also removes the prefix's
    /// index entries (`#[cache(index)]`; not counted). The walk costs O(keys in the database), like
    /// [`delete_pattern`](Self::delete_pattern), and runs under ten times the
    /// configured timeout. Records present for the whole walk are removed;
    /// records filled meanwhile were read after the call began. In-flight
    /// loads of the prefix in this process are detached. The removed keys
    /// join the log of recent invalidations, delivered again after a
    /// failover like a write's.
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
    /// let cache_manager = Arc::new(CacheManager::new(CacheConfig::new("memory://", 60, "app"))?);
    /// let users = GenericStore::<User>::new(db_pool, None, Some(CacheParams::new(cache_manager.clone())));
    /// users.create(User { id: 1, name: "Ada".into() }, None).await?;
    /// users.get_by_id(&1).await?;
    /// cache_manager.flush_fills().await;
    /// assert_eq!(cache_manager.invalidate_queries("users").await?, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for a bad prefix; connection errors and
    /// timeouts as they happen (after a failed generation bump nothing is
    /// removed; a walk cut short leaves the rest of the records in place).
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn invalidate_queries(&self, prefix: &str) -> CacheResult<u64> {
        keys::validate_prefix("prefix", prefix).map_err(into_input)?;
        let scope = keys::store_scope(self.global_prefix(), prefix);
        let counters = [keys::generation_key(self.global_prefix(), prefix)];
        self.recent.record(&scope, &[], &counters);
        // A change made behind the stores' back: replicas are skipped for
        // the store's lookups and queries for a while.
        let markers = self.markers_for(&counters, None);
        let inv = Invalidation {
            markers: &markers,
            counters: &counters,
            ..Invalidation::default()
        };
        let done = self
            .guarded(self.deadline(), "invalidate_queries", || self.backend.invalidate(&inv))
            .await?;
        self.count_resets(&done);

        // The records: every key of the scope but the query results and
        // the counter (all under `{scope}query:`, unreachable already).
        let glob = format!("{scope}*");
        let results = format!("{scope}query:");
        let hints = format!("{scope}idx:");
        self.flights.detach_matching(&glob);
        let (scope, hints) = (&scope, &hints);
        let removed = self
            .walk(
                self.long_deadline(),
                "invalidate_queries",
                |cursor| self.backend.scan_step(cursor, &glob, Some(&results)),
                |step| {
                    self.recent.record(scope, &step.keys, &[]);
                    self.near_forget(&step.keys);
                    // Index entries (`{scope}idx:`) go too, but are not records.
                    let records = step.keys.iter().filter(|k| !k.starts_with(hints.as_str())).count() as u64;
                    std::future::ready(records.min(step.removed))
                },
            )
            .await?;
        self.count_n(|c| &c.invalidations, removed);
        Ok(removed)
    }

    /// Removes every key matching the glob `{global}:{pattern}` with SCAN and
    /// UNLINK in batches (never KEYS); returns how many keys it removed. The
    /// pattern is always relative to the global prefix, so `"*"` removes this
    /// application's keys and nothing else. Runs under ten times the
    /// configured timeout.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for an empty pattern; connection errors
    /// and timeouts as they happen.
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn delete_pattern(&self, pattern: &str) -> CacheResult<u64> {
        if pattern.is_empty() {
            return Err(CacheError::InvalidInput("pattern must not be empty".into()));
        }
        let glob = keys::confined_pattern(self.global_prefix(), pattern);
        self.clear_glob(&glob).await
    }

    /// Removes every key matching the absolute glob `glob` (SCAN + UNLINK in
    /// steps, under ten budgets), detaching in-flight loads of those keys.
    pub(crate) async fn clear_glob(&self, glob: &str) -> CacheResult<u64> {
        let cleared = self.walk_glob(glob).await;
        self.near_flush();
        cleared
    }

    async fn walk_glob(&self, glob: &str) -> CacheResult<u64> {
        self.flights.detach_matching(glob);
        // Replica markers stay: without one, a reader could fill from a
        // replica behind a write it has not replayed (see `markers`).
        let spare = format!("{}:{}:", self.global_prefix(), keys::MARKER_SEGMENT);
        self.walk(
            self.long_deadline(),
            "delete_pattern",
            |cursor| self.backend.scan_step(cursor, glob, Some(&spare)),
            |step| std::future::ready(step.removed),
        )
        .await
    }

    /// Walks a key space in steps (a SCAN or an SSCAN that removes what it
    /// finds), from cursor 0 until the cursor comes back to 0, every step
    /// under `deadline`: `each` sees each step and says how many of its
    /// keys count; the sum of the counts.
    async fn walk<S, SF, E, EF>(
        &self,
        deadline: tokio::time::Instant,
        op: &'static str,
        step: S,
        mut each: E,
    ) -> CacheResult<u64>
    where
        S: Fn(u64) -> SF,
        SF: Future<Output = CacheResult<ScanStep>>,
        E: FnMut(ScanStep) -> EF,
        EF: Future<Output = u64>,
    {
        let mut counted = 0;
        let mut cursor = 0;
        loop {
            let found = self.guarded(deadline, op, || step(cursor)).await?;
            cursor = found.next;
            counted += each(found).await;
            if cursor == 0 {
                return Ok(counted);
            }
        }
    }

    /// Removes every cached entry written with `tag` (see
    /// [`GenericStore::create`](crate::GenericStore::create) and
    /// [`update`](crate::GenericStore::update)) and returns how many entries it
    /// removed. The tag's set lives at `{global}:__tag:{tag}`, so a tag can
    /// only reach keys inside this manager's global prefix.
    ///
    /// The set is first moved aside (atomically, by a script), so a write
    /// that tags a key while the invalidation runs starts a new set and is
    /// not swept up and lost; then its members are read with SSCAN and
    /// removed with UNLINK in batches (never KEYS), each batch leaving the
    /// set only after its keys are gone. An invalidation cut short (a
    /// timeout, a crash) leaves the rest for the next `invalidate_tag` of
    /// the same tag.
    ///
    /// A tag set lives as long as the longest TTL of the stores that added
    /// to it, counted from its last addition, and then expires: a record
    /// first cached later than that after its last tagged write is no longer
    /// reached by the tag (it expires with its own TTL). Under an
    /// `allkeys-*` eviction policy Redis may evict a tag set before its
    /// members; `invalidate_tag` then removes only the members it still
    /// knows, and the others live until their TTL.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for an empty tag; connection errors and
    /// timeouts as they happen (under ten times the configured timeout).
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn invalidate_tag(&self, tag: &str) -> CacheResult<u64> {
        if tag.is_empty() {
            return Err(CacheError::InvalidInput("tag must not be empty".into()));
        }
        let set = keys::tag_key(self.global_prefix(), tag);
        let draining = keys::tag_draining_key(&set);
        let deadline = self.long_deadline();
        let size = self
            .guarded(deadline, "invalidate_tag", || self.backend.drain_tag(&set, &draining))
            .await?;
        if size == 0 {
            return Ok(0);
        }
        // One SSCAN walk: members merged in by a concurrent invalidation of
        // the same tag are walked by that invalidation.
        let removed = self
            .walk(
                deadline,
                "invalidate_tag",
                |cursor| self.backend.drain_step(&draining, cursor),
                |step| async move {
                    self.flights.detach(&step.keys);
                    self.near_forget(&step.keys);
                    self.drop_side_entries(&step.keys, deadline).await;
                    step.removed
                },
            )
            .await?;
        self.count_n(|c| &c.invalidations, removed);
        Ok(removed)
    }

    fn manual_key(&self, prefix: &str, id: &str) -> CacheResult<String> {
        keys::validate_prefix("prefix", prefix).map_err(into_input)?;
        Ok(keys::str_key(self.global_prefix(), prefix, id))
    }
}

fn into_input(e: CacheError) -> CacheError {
    match e {
        CacheError::InvalidConfig(m) => CacheError::InvalidInput(m),
        other => other,
    }
}
