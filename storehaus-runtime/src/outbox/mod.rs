//! Invalidation from the database itself: every committed write to a
//! watched table, by a store, raw SQL or another service, reaches the
//! cache through a durable outbox, even if the writing process dies.
//!
//! [`GenericStore::watch_external_writes`] installs, for the store's table,
//! triggers that log each changed primary key into `storehaus_outbox` in the
//! writing transaction (see `ddl`), registers this cache deployment (its
//! global prefix, or [`CacheConfig::with_deployment`](crate::CacheConfig::with_deployment);
//! an in-process cache is a deployment of its own) with its own position in
//! that log, and makes sure one worker per cache manager and database drains
//! the log into the cache (see `worker` and `pass`): it deletes the record
//! keys and bumps the store's query generation as soon as an entry's
//! transaction is visible, and moves the deployment's position only after the
//! cache confirmed, never past a transaction still running (see `snapshot`).
//! The store's own after-commit `DEL` stays the fast path; the outbox catches
//! everything else, at least once.
//!
//! The events of a database's life it is built for, each a test in
//! `tests/test_outbox_life.rs` and the delivery rule a model in `outbox.pml`:
//! a long transaction anywhere on the server (deliveries go on, the position
//! waits), transactions committing out of xid order, a stalled peer holding
//! the deployment's row (no lock is held while delivering; every worker of a
//! deployment delivers), deployments that stop renewing (they expire, see
//! [`CacheConfig::with_deployment_expiry`](crate::CacheConfig::with_deployment_expiry),
//! and start over when they return), a restore or a copy of the database
//! (the position row records the database's identity; on a mismatch the
//! deployment clears what it cached and starts over), writes applied as a
//! replica (`ENABLE ALWAYS` triggers), partitions, triggers lost to a swapped
//! table (reported by the health check and the status), SQLite's REPLACE,
//! and a Redis failover (deliveries join the log of recent invalidations).

mod ddl;
mod deliver;
mod install;
mod listen;
mod maintain;
mod pass;
mod registry;
mod snapshot;
mod status;
mod worker;

use crate::error::{Result, StorehausError};
use crate::record::Cached;
use crate::store::pool::DbPool;
use crate::GenericStore;

// The write-ahead log's reader delivers as the outbox does.
pub use status::DeploymentStatus;
#[cfg(feature = "wal")]
pub(crate) use {
    ddl::ident,
    deliver::{deliver, Entry},
    worker::clear_prefixes,
};

impl<T: Cached> GenericStore<T> {
    /// Makes every committed write to `T`'s table reach this store's cache,
    /// whoever makes it (raw SQL, migrations, other services, a process that
    /// died before its own invalidation): idempotently installs the outbox
    /// and the table's triggers unless they exist, registers this
    /// deployment (resuming where it stopped if it was registered before),
    /// starts this cache manager's worker for the database if none runs,
    /// and returns once that worker has tried to deliver what the outbox
    /// holds. While the worker cannot deliver (the cache is down, or a
    /// backlog is larger than one batch), cached reads bypass the cache.
    ///
    /// Call it when the application starts, before it serves reads. The
    /// worker listens for `pg_notify` wake-ups and polls every
    /// [`with_outbox_poll_interval`](crate::CacheConfig::with_outbox_poll_interval)
    /// (SQLite: polls only). PostgreSQL 13 or later.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storehaus::prelude::*;
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
    /// # #[cache(table = "users")]
    /// # struct User { id: i64, name: String }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// # sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&pool).await?;
    /// # let cache_manager = Arc::new(CacheManager::new(CacheConfig::new("memory://", 60, "app"))?);
    /// let users = GenericStore::<User>::new(pool.clone(), None, Some(CacheParams::new(cache_manager)));
    /// users.watch_external_writes().await?;
    /// users.create(User { id: 1, name: "Ada".into() }, None).await?;
    /// assert_eq!(users.get_by_id(&1).await?.unwrap().name, "Ada");
    /// // Another service writes behind the store's back...
    /// sqlx::query("UPDATE users SET name = 'Ada Lovelace' WHERE id = 1").execute(&pool).await?;
    /// // ...and the worker invalidates the cached row.
    /// # let start = std::time::Instant::now();
    /// # while users.get_by_id(&1).await?.unwrap().name != "Ada Lovelace" {
    /// #     assert!(start.elapsed() < std::time::Duration::from_secs(10));
    /// #     tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    /// # }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StorehausError::CacheDisabled`] for a store without a cache;
    /// [`StorehausError::Database`] when the outbox cannot be installed or
    /// read (for a role that may not run DDL, install
    /// [`external_writes_sql`](Self::external_writes_sql) by migration first).
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    pub async fn watch_external_writes(&self) -> Result<()> {
        let cache = self.cache_settings().ok_or(StorehausError::CacheDisabled)?;
        let location = install::install(self.pool(), T::TABLE, T::ID_COLUMN).await?;
        let outbox = cache.manager.watchers();
        // Registered before a worker can look for the position.
        let registered = install::register(self.pool(), &outbox.deployment, T::TABLE, &cache.prefix).await?;
        let state = registry::ensure(outbox, &cache.manager, self.pool().clone(), location);
        state.watch(T::TABLE, &cache.prefix);
        if let install::Registered::Untrusted(reason) = registered {
            // The worker starts the deployment over on its next pass; no
            // read trusts the cache until it has.
            tracing::info!(target: "storehaus", reason, "the outbox position of this deployment cannot be trusted");
            outbox.set_lagging(&state, true);
        }
        state.catch_up().await;
        Ok(())
    }

    /// The PostgreSQL DDL that [`watch_external_writes`](Self::watch_external_writes)
    /// installs for `T`'s table: the shared outbox tables (`IF NOT EXISTS`),
    /// the table's capture function and its four statement triggers. For
    /// deployments whose application role may not run DDL: install it with
    /// a migration (it is idempotent), then call `watch_external_writes`,
    /// which finds the triggers in place and only registers.
    pub fn external_writes_sql() -> String {
        ddl::postgres(T::TABLE, T::ID_COLUMN)
    }

    /// The same for SQLite (row triggers). `INSERT OR REPLACE` and
    /// `UPDATE OR REPLACE` delete the rows holding the new values of a
    /// unique column without firing their DELETE trigger: this DDL logs
    /// those rows for the `#[cache(index)]` columns;
    /// [`watch_external_writes`](Self::watch_external_writes) installs it
    /// for every unique index the table has.
    pub fn external_writes_sql_sqlite() -> String {
        let unique: Vec<Vec<String>> = T::INDEXES.iter().map(|c| vec![c.to_string()]).collect();
        ddl::sqlite(T::TABLE, T::ID_COLUMN, &unique)
    }

    /// Every deployment registered in this database's outbox: how many
    /// visible entries it has still to deliver and how old the oldest is,
    /// when its position last moved and it last renewed, whether it
    /// expired, why it last started over, and which relations of its
    /// tables lack triggers. Entries are pruned once every live deployment
    /// has passed them: a deployment that goes away holds the log until it
    /// expires ([`CacheConfig::with_deployment_expiry`](crate::CacheConfig::with_deployment_expiry),
    /// 10 minutes by default), and a transaction left open on the server
    /// holds every position (not the deliveries) until it ends. An expired
    /// deployment stays listed (and comes back by starting over); remove
    /// it for good with `DELETE FROM storehaus_outbox_positions WHERE
    /// deployment = '...'` and its rows in `storehaus_outbox_watches`.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the outbox cannot be read.
    pub async fn external_writes_status(&self) -> Result<Vec<DeploymentStatus>> {
        status::read(self.pool()).await
    }
}

/// Where an outbox lives: one worker per cache manager and location.
fn location_of(pool: &DbPool, database: &str, schema: &str) -> String {
    format!("{}:{database}/{schema}", pool.kind())
}
