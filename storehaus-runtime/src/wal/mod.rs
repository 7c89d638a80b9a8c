//! Invalidation from the write-ahead log (feature `wal`): every committed
//! insert, update, delete and truncate of a watched table reaches the
//! cache through PostgreSQL's logical decoding, with no work added to the
//! writing transaction.
//!
//! [`GenericStore::watch_wal`] registers the table in this deployment's
//! publication and makes sure one reader per cache manager and database
//! streams the deployment's replication slot (see `reader`); the slot's
//! position moves only after the cache acknowledged, so a reader that dies
//! is redelivered what it had not confirmed. The processes of a deployment
//! take turns on its slot (see `turn`). The deliveries are the outbox's
//! (record keys, index entries through the store's generation, query
//! generations, the recent-invalidation log), and so is the read gate:
//! while the reader cannot deliver, cached reads bypass the cache.
//!
//! | | trigger outbox (`watch_external_writes`) | write-ahead log (`watch_wal`) |
//! |---|---|---|
//! | needs | DDL rights once (or `external_writes_sql()` by migration); PostgreSQL 13+ or SQLite | PostgreSQL 14+, `wal_level = logical` (a restart), a role with `REPLICATION`, table ownership for the publication, one replication slot and WAL sender per deployment; cargo feature `wal` |
//! | costs the writer | a trigger and an outbox row per statement, in the writing transaction | nothing in the transaction (the server decodes the log afterwards) |
//! | costs the server | the outbox table and its pruning | decoding the log per slot; a slot retains WAL while its deployment is behind or gone (cap with `max_slot_wal_keep_size`) |
//! | catches | writes through triggers: raw SQL, other services, partitions (row triggers), replica-role writes (`ENABLE ALWAYS`) | every committed change of a published table, whoever made it: logical-replication apply, `session_replication_role = replica`, writes through a partition, TRUNCATE, key updates |
//! | misses | tables swapped or re-created without their triggers (reported by `health_check`) | tables that are not in the publication (a swapped or re-created table: call `watch_wal` again); SQLite |

mod decode;
mod ops;
mod reader;
mod setup;
mod turn;

use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::PgPool;

pub use crate::error::WalError;
pub use ops::WalSlotStatus;

use crate::error::{Result, StorehausError};
use crate::record::Cached;
use crate::store::pool::DbPool;
use crate::GenericStore;

impl<T: Cached> GenericStore<T> {
    /// Makes every committed change of `T`'s table reach this store's cache
    /// through PostgreSQL's write-ahead log (feature `wal`), whoever makes
    /// it, with no trigger on the write path. Needs PostgreSQL 14+,
    /// `wal_level = logical` and a role with the `REPLICATION` attribute
    /// (the errors say so, and point to the trigger outbox,
    /// [`watch_external_writes`](Self::watch_external_writes), which
    /// needs none of it).
    ///
    /// Creates or resumes this deployment's publication (the table is
    /// added; a partitioned table's partitions are published under their
    /// own names, so that a TRUNCATE of one is published too) and its logical
    /// replication slot (one per deployment and database; its name is
    /// `storehaus_` + the deployment's name + a hash), starts this cache
    /// manager's reader if none runs, and returns once the reader has
    /// caught up with the log (bounded: 30 s). The reader connects with the
    /// pool's host, port, user and database (password: `PGPASSWORD`); use
    /// [`watch_wal_via`](Self::watch_wal_via) to give another URL.
    ///
    /// What the reader guarantees: changes are delivered in commit order,
    /// at least once; the slot is confirmed only after the cache
    /// acknowledged, so a reader that dies is redelivered what it had not
    /// confirmed; while it cannot deliver (the cache is down, the stream is
    /// broken, a heartbeat is overdue), the slot holds the changes and the
    /// manager's cached reads bypass the cache. The processes of one
    /// deployment take turns: one streams the slot, the others trust their
    /// cache while it keeps up, and take the slot over from a holder that
    /// has not caught up for half the deployment's expiry. A slot that was
    /// dropped or invalidated (`max_slot_wal_keep_size`) makes the
    /// deployment start over: it clears what it cached of its tables,
    /// creates a new slot, logs a warning and reports
    /// [`HealthWarning::WalStartedOver`](crate::HealthWarning::WalStartedOver).
    ///
    /// A slot whose deployment is gone retains WAL forever: the health
    /// check reports it ([`HealthWarning::WalSlotRetained`](crate::HealthWarning::WalSlotRetained),
    /// with the retained size); drop it with
    /// [`drop_wal_deployment`](Self::drop_wal_deployment), and cap what any
    /// slot may retain with the server's `max_slot_wal_keep_size` (a slot
    /// past it is invalidated, and its deployment starts over).
    ///
    /// | | trigger outbox (`watch_external_writes`) | write-ahead log (`watch_wal`) |
    /// |---|---|---|
    /// | needs | DDL rights once (or `external_writes_sql()` by migration); PostgreSQL 13+ or SQLite | PostgreSQL 14+, `wal_level = logical` (a restart), a role with `REPLICATION`, table ownership (publication), a slot and a WAL sender per deployment; feature `wal` |
    /// | costs the writer | a trigger and an outbox row per statement, in the writing transaction | nothing in the transaction |
    /// | costs the server | the outbox table and its pruning | decoding the log per slot; WAL retained while a deployment is behind or gone |
    /// | catches | writes through triggers: raw SQL, other services, partitions, replica-role writes (`ENABLE ALWAYS`) | every committed change of a published table: logical-replication apply, `session_replication_role = replica`, partition writes, TRUNCATE, key updates |
    /// | misses | tables swapped or re-created without their triggers (health check) | tables not in the publication (a swapped or re-created table: call `watch_wal` again); SQLite |
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use storehaus::prelude::*;
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
    /// # #[cache(table = "users")]
    /// # struct User { id: i64, name: String }
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let cache_manager = Arc::new(CacheManager::new(CacheConfig::new("redis://127.0.0.1:6379", 3600, "app"))?);
    /// let users = GenericStore::<User>::new(pool.clone(), None, Some(CacheParams::new(cache_manager)));
    /// match users.watch_wal().await {
    ///     Ok(()) => {}
    ///     // wal_level is not logical, or the role lacks REPLICATION: the triggers need neither.
    ///     Err(StorehausError::Wal(e)) => {
    ///         eprintln!("{e}");
    ///         users.watch_external_writes().await?;
    ///     }
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StorehausError::CacheDisabled`] for a store without a cache;
    /// [`StorehausError::Wal`] with [`WalError::WalLevel`],
    /// [`WalError::NoReplicationRole`], [`WalError::ServerTooOld`] or
    /// [`WalError::NotPostgres`] where the log cannot be read (use the
    /// trigger outbox), [`WalError::NoSuchTable`] or
    /// [`WalError::ReplicaIdentity`] for a table whose changes would not
    /// name their rows; [`StorehausError::Database`] when the publication
    /// or the slot cannot be created (the role must own the table).
    pub async fn watch_wal(&self) -> Result<()> {
        let pool = postgres(self.pool())?;
        self.watch_wal_at(replication_url(pool.connect_options().as_ref())?)
            .await
    }

    /// [`watch_wal`](Self::watch_wal), with the reader connecting to
    /// `url` (`postgres://user:password@host:port/database`, with a
    /// password or another role than the pool's; `replication=database` is
    /// added). The first call of a cache manager and database decides.
    ///
    /// # Errors
    /// As [`watch_wal`](Self::watch_wal); [`WalError::Stream`] for a URL
    /// that does not parse.
    pub async fn watch_wal_via(&self, url: &str) -> Result<()> {
        let mut url = url::Url::parse(url).map_err(|e| WalError::Stream(Box::new(e)))?;
        if !url.query_pairs().any(|(k, _)| k == "replication") {
            url.query_pairs_mut().append_pair("replication", "database");
        }
        self.watch_wal_at(url.to_string()).await
    }

    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE))]
    async fn watch_wal_at(&self, url: String) -> Result<()> {
        let cache = self.cache_settings().ok_or(StorehausError::CacheDisabled)?;
        let pool = postgres(self.pool())?;
        let database = setup::preflight(pool).await?;
        let table = setup::resolve(pool, T::TABLE, T::ID_COLUMN).await?;
        let outbox = cache.manager.watchers();
        let deployment = outbox.deployment.clone();
        let slot = setup::SlotName::new(&database, &deployment.name);
        let known = setup::known(pool, &slot).await?;
        setup::register(pool, &slot, &deployment, &table, &cache.prefix, T::ID_COLUMN).await?;
        // A new deployment gets its slot here; one registered before whose
        // slot is gone starts over (its reader finds the slot missing).
        if !deployment.ephemeral && !known && setup::slot_state(pool, &slot).await? == setup::SlotState::Missing {
            setup::create_slot(pool, &slot).await?;
        }
        let manager = Arc::downgrade(&cache.manager);
        let poll = cache.manager.config().outbox_poll_interval();
        let location = format!("wal:{database}/{}", slot.0);
        let state = outbox.ensure_worker(location, |state, _| {
            let reader = reader::Reader {
                manager,
                pool: pool.clone(),
                slot,
                deployment,
                url,
                state,
                poll,
                streams: 0,
                last_check: None,
            };
            tokio::spawn(reader.run());
        });
        state.watch(&table.qualified(), &cache.prefix);
        state.catch_up().await;
        Ok(())
    }

    /// Every deployment's replication slot registered in this database:
    /// whether it is streamed, the WAL it retains, how long ago its reader
    /// caught up, and whether its deployment looks gone.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the slots cannot be read;
    /// [`WalError::NotPostgres`] on SQLite.
    pub async fn wal_slots(&self) -> Result<Vec<WalSlotStatus>> {
        ops::status(postgres(self.pool())?).await
    }

    /// Drops `deployment`'s replication slot (terminating a session that
    /// streams it), its publication and its bookkeeping, so the server
    /// stops retaining WAL for it: for a deployment that is gone for good.
    /// A process of it that is still running starts over with a new slot.
    /// Returns whether it had a slot.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the slot cannot be dropped (the
    /// role needs `REPLICATION`); [`WalError::NotPostgres`] on SQLite.
    pub async fn drop_wal_deployment(&self, deployment: &str) -> Result<bool> {
        ops::drop_deployment(postgres(self.pool())?, deployment).await
    }
}

fn postgres(pool: &DbPool) -> Result<&PgPool> {
    match pool {
        DbPool::Postgres(p) => Ok(p),
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(_) => Err(WalError::NotPostgres.into()),
    }
}

/// The replication URL of the pool's server, database and user (password
/// from `PGPASSWORD`).
fn replication_url(options: &PgConnectOptions) -> Result<String> {
    let base = format!(
        "postgres://{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    );
    let mut url = url::Url::parse(&base).map_err(|e| WalError::Stream(Box::new(e)))?;
    let bad = |_| StorehausError::Wal(WalError::Stream("the pool's user name cannot go in a URL".into()));
    url.set_username(options.get_username()).map_err(bad)?;
    if let Ok(password) = std::env::var("PGPASSWORD") {
        url.set_password(Some(&password)).map_err(bad)?;
    }
    let sslmode = match options.get_ssl_mode() {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    };
    url.query_pairs_mut()
        .append_pair("replication", "database")
        .append_pair("sslmode", sslmode)
        .append_pair("application_name", "storehaus-wal");
    Ok(url.to_string())
}
