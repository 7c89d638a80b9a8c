//! Installing the outbox, registering a deployment in it, and starting a
//! deployment over when its position can no longer be trusted.

use sqlx::{PgPool, Row};

use super::ddl;
use crate::cache::gate::Deployment;
use crate::error::Result;
use crate::store::pool::DbPool;

/// The database's identity, as a position row records it: the system
/// identifier (another server: a restore from a dump, a logical copy), the
/// timeline (a point-in-time recovery, a promoted standby) and the positions
/// table's own oid (the outbox dropped and restored from a dump on the same
/// server: the restored rows carry the old table's oid).
pub(crate) const PG_IDENTITY: &str = "(SELECT system_identifier::text FROM pg_control_system()) || ':' || \
     (SELECT timeline_id::text FROM pg_control_checkpoint()) || ':' || \
     'storehaus_outbox_positions'::regclass::oid::text";

/// Installs the outbox and the table's triggers unless they are in place,
/// as this version installs them; returns where the outbox lives
/// (`kind:database/schema`).
pub(crate) async fn install(pool: &DbPool, table: &str, id: &str) -> Result<String> {
    match pool {
        DbPool::Postgres(p) => {
            if !missing_triggers(p, table).await?.is_empty() {
                let mut tx = p.begin().await?;
                // One installer at a time: concurrent CREATE ... IF NOT
                // EXISTS can collide in the catalog.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('storehaus_outbox'))")
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(target: "storehaus", table, "installing the outbox triggers");
                sqlx::raw_sql(&ddl::postgres(table, id)).execute(&mut *tx).await?;
                tx.commit().await?;
            }
            let row = sqlx::query("SELECT current_database()::text, current_schema()::text")
                .fetch_one(p)
                .await?;
            Ok(super::location_of(
                pool,
                &row.try_get::<String, _>(0)?,
                &row.try_get::<String, _>(1)?,
            ))
        }
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => install_sqlite(p, table, id)
            .await
            .map(|id| super::location_of(pool, &id, "main")),
    }
}

/// The relations of `table` that lack an outbox trigger (or hold one that
/// is not `ENABLE ALWAYS`, or the capture function of another layout).
/// Empty when the table is watched as this version installs it.
pub(crate) async fn missing_triggers(pool: &PgPool, table: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(ddl::PG_MISSING_TRIGGERS)
        .bind(table)
        .bind(&ddl::PG_TRIGGERS[..])
        .bind(ddl::pg_function(table))
        .bind(ddl::VERSION)
        .fetch_all(pool)
        .await?)
}

#[cfg(feature = "sqlite")]
async fn install_sqlite(p: &sqlx::SqlitePool, table: &str, id: &str) -> Result<String> {
    let unique = sqlite_unique_sets(p, table).await?;
    sqlx::raw_sql(&ddl::sqlite(table, id, &unique)).execute(p).await?;
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('storehaus_outbox_positions')")
        .fetch_all(p)
        .await?;
    for (name, definition) in ddl::SQLITE_LATER_COLUMNS {
        if !columns.iter().any(|c| c == name) {
            sqlx::raw_sql(&format!(
                "ALTER TABLE storehaus_outbox_positions ADD COLUMN {name} {definition}"
            ))
            .execute(p)
            .await?;
        }
    }
    // A database file has no name an in-memory one would not share: the
    // outbox carries an id of its own.
    Ok(sqlx::query_scalar("SELECT id FROM storehaus_outbox_instance LIMIT 1")
        .fetch_one(p)
        .await?)
}

/// The column sets of `table`'s unique indexes, but its primary key's
/// (an index on an expression is skipped: a REPLACE conflicting on it is
/// not logged).
#[cfg(feature = "sqlite")]
async fn sqlite_unique_sets(p: &sqlx::SqlitePool, table: &str) -> Result<Vec<Vec<String>>> {
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND origin <> 'pk'")
            .bind(table)
            .fetch_all(p)
            .await?;
    let mut sets = Vec::new();
    for index in indexes {
        let columns: Vec<Option<String>> = sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
            .bind(&index)
            .fetch_all(p)
            .await?;
        if let Some(columns) = columns.into_iter().collect::<Option<Vec<_>>>() {
            sets.push(columns);
        }
    }
    Ok(sets)
}

/// What registering found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Registered {
    /// First registration: the deployment starts at the log's current end.
    New,
    /// Registered before and still trusted: it resumes where it stopped.
    Resumed,
    /// Registered before, but its position cannot be trusted (the reason):
    /// it must start over.
    Untrusted(String),
}

/// What a position row says, and what the database is now.
pub(crate) struct PositionCheck {
    pub expired: bool,
    pub identity: Option<String>,
    pub xid: i64,
    pub server_identity: String,
    /// The next transaction id the server will assign.
    pub next_xid: i64,
}

impl PositionCheck {
    /// Why the position cannot be trusted, if it cannot.
    pub fn distrust(&self) -> Option<String> {
        if self.expired {
            return Some("it expired: no worker renewed it within its expiry".into());
        }
        if let Some(was) = self.identity.as_deref().filter(|was| *was != self.server_identity) {
            return Some(format!(
                "the database is not the one its position was taken on (system identifier and timeline {was}, now {}): a restore, a copy or a promoted standby",
                self.server_identity
            ));
        }
        if self.xid > self.next_xid {
            return Some(format!(
                "its position (transaction {}) is ahead of the database's transactions (next {}): a restore from another server",
                self.xid, self.next_xid
            ));
        }
        None
    }
}

/// Registers `deployment` (at the log's current end, unless it is
/// registered already: a restart resumes where it stopped) and its watch of
/// `table` under the store prefix `prefix`.
pub(crate) async fn register(pool: &DbPool, deployment: &Deployment, table: &str, prefix: &str) -> Result<Registered> {
    let registered = match pool {
        DbPool::Postgres(p) => register_postgres(p, deployment).await?,
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => register_sqlite(p, deployment).await?,
    };
    add_watch(pool, &deployment.name, table, prefix).await?;
    Ok(registered)
}

async fn add_watch(pool: &DbPool, deployment: &str, table: &str, prefix: &str) -> Result<()> {
    match pool {
        DbPool::Postgres(p) => {
            sqlx::query("INSERT INTO storehaus_outbox_watches VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(deployment)
                .bind(table)
                .bind(prefix)
                .execute(p)
                .await?;
        }
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => {
            sqlx::query("INSERT OR IGNORE INTO storehaus_outbox_watches VALUES (?1, ?2, ?3)")
                .bind(deployment)
                .bind(table)
                .bind(prefix)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

/// The check of `deployment`'s position row against the server, `None`
/// when there is no row.
pub(crate) async fn check_postgres(p: &PgPool, deployment: &str) -> Result<Option<PositionCheck>> {
    let row = sqlx::query(&format!(
        "SELECT expired, db_identity, xid, {PG_IDENTITY}, \
         (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint \
         FROM storehaus_outbox_positions WHERE deployment = $1"
    ))
    .bind(deployment)
    .fetch_optional(p)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(PositionCheck {
        expired: row.try_get(0)?,
        identity: row.try_get(1)?,
        xid: row.try_get(2)?,
        server_identity: row.try_get(3)?,
        next_xid: row.try_get(4)?,
    }))
}

async fn register_postgres(p: &PgPool, deployment: &Deployment) -> Result<Registered> {
    let Some(check) = check_postgres(p, &deployment.name).await? else {
        sqlx::query(&format!(
            "INSERT INTO storehaus_outbox_positions (deployment, xid, seq, expires_after_ms, ephemeral, db_identity) \
             VALUES ($1, (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint, 0, $2, $3, {PG_IDENTITY}) \
             ON CONFLICT (deployment) DO NOTHING"
        ))
        .bind(&deployment.name)
        .bind(deployment.expiry.as_millis() as i64)
        .bind(deployment.ephemeral)
        .execute(p)
        .await?;
        return Ok(Registered::New);
    };
    if let Some(reason) = check.distrust() {
        return Ok(Registered::Untrusted(reason));
    }
    sqlx::query(
        "UPDATE storehaus_outbox_positions SET renewed_at = now(), expires_after_ms = $2 \
         WHERE deployment IN (SELECT deployment FROM storehaus_outbox_positions \
                              WHERE deployment = $1 FOR UPDATE SKIP LOCKED)",
    )
    .bind(&deployment.name)
    .bind(deployment.expiry.as_millis() as i64)
    .execute(p)
    .await?;
    Ok(Registered::Resumed)
}

#[cfg(feature = "sqlite")]
async fn register_sqlite(p: &sqlx::SqlitePool, deployment: &Deployment) -> Result<Registered> {
    let expired: Option<bool> =
        sqlx::query_scalar("SELECT expired FROM storehaus_outbox_positions WHERE deployment = ?1")
            .bind(&deployment.name)
            .fetch_optional(p)
            .await?;
    match expired {
        None => {
            sqlx::query(
                "INSERT OR IGNORE INTO storehaus_outbox_positions (deployment, seq, expires_after_ms, ephemeral) \
                 VALUES (?1, (SELECT coalesce(max(seq), 0) FROM storehaus_outbox), ?2, ?3)",
            )
            .bind(&deployment.name)
            .bind(deployment.expiry.as_millis() as i64)
            .bind(deployment.ephemeral)
            .execute(p)
            .await?;
            Ok(Registered::New)
        }
        Some(true) => Ok(Registered::Untrusted(
            "it expired: no worker renewed it within its expiry".into(),
        )),
        Some(false) => {
            sqlx::query(
                "UPDATE storehaus_outbox_positions SET renewed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 expires_after_ms = ?2 WHERE deployment = ?1",
            )
            .bind(&deployment.name)
            .bind(deployment.expiry.as_millis() as i64)
            .execute(p)
            .await?;
            Ok(Registered::Resumed)
        }
    }
}

/// Where a deployment that starts over will resume: the log's current end
/// (PostgreSQL: the oldest running transaction). Taken *before* its cache
/// is cleared, so that every entry the position then skips belongs to a
/// write that committed before the clear.
pub(crate) async fn current_end(pool: &DbPool) -> Result<(i64, i64)> {
    Ok(match pool {
        DbPool::Postgres(p) => {
            let xid: i64 = sqlx::query_scalar("SELECT (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint")
                .fetch_one(p)
                .await?;
            (xid, 0)
        }
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => {
            let seq: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM storehaus_outbox")
                .fetch_one(p)
                .await?;
            (0, seq)
        }
    })
}

/// The store prefixes `deployment` watches `table`s under (every process
/// of it, as registered in the database).
pub(crate) async fn watched(pool: &DbPool, deployment: &str) -> Result<Vec<(String, String)>> {
    Ok(match pool {
        DbPool::Postgres(p) => {
            sqlx::query_as("SELECT tbl, prefix FROM storehaus_outbox_watches WHERE deployment = $1")
                .bind(deployment)
                .fetch_all(p)
                .await?
        }
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => {
            sqlx::query_as("SELECT tbl, prefix FROM storehaus_outbox_watches WHERE deployment = ?1")
                .bind(deployment)
                .fetch_all(p)
                .await?
        }
    })
}

/// Moves `deployment` to `end` (from [`current_end`]), forgetting what it
/// knew it had delivered, renewed and no longer expired, with `reason` as
/// its note; registers `watches` again.
pub(crate) async fn restart_at(
    pool: &DbPool,
    deployment: &Deployment,
    end: (i64, i64),
    reason: &str,
    watches: &[(String, String)],
) -> Result<()> {
    let expiry = deployment.expiry.as_millis() as i64;
    match pool {
        DbPool::Postgres(p) => {
            sqlx::query(&format!(
                "INSERT INTO storehaus_outbox_positions (deployment, xid, seq, expires_after_ms, ephemeral, db_identity, note) \
                 VALUES ($1, $2, $3, $4, $5, {PG_IDENTITY}, $6) \
                 ON CONFLICT (deployment) DO UPDATE SET xid = EXCLUDED.xid, seq = EXCLUDED.seq, seen_xmax = NULL, \
                 seen_xip = NULL, expired = false, renewed_at = now(), updated_at = now(), \
                 db_identity = EXCLUDED.db_identity, note = EXCLUDED.note, expires_after_ms = EXCLUDED.expires_after_ms"
            ))
            .bind(&deployment.name)
            .bind(end.0)
            .bind(end.1)
            .bind(expiry)
            .bind(deployment.ephemeral)
            .bind(reason)
            .execute(p)
            .await?;
        }
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => {
            sqlx::query(
                "INSERT INTO storehaus_outbox_positions (deployment, seq, expires_after_ms, ephemeral, note) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (deployment) DO UPDATE SET seq = excluded.seq, expired = 0, \
                 renewed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 note = excluded.note, expires_after_ms = excluded.expires_after_ms",
            )
            .bind(&deployment.name)
            .bind(end.1)
            .bind(expiry)
            .bind(deployment.ephemeral)
            .bind(reason)
            .execute(p)
            .await?;
        }
    }
    for (table, prefix) in watches {
        add_watch(pool, &deployment.name, table, prefix).await?;
    }
    Ok(())
}
