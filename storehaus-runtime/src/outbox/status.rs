//! What the outbox holds for each registered deployment.

use sqlx::Row;

use super::install::{missing_triggers, watched};
use crate::error::Result;
use crate::store::pool::DbPool;

/// One deployment registered in an outbox, from
/// [`GenericStore::external_writes_status`](crate::GenericStore::external_writes_status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeploymentStatus {
    /// The deployment's name (its global prefix, or
    /// [`CacheConfig::with_deployment`](crate::CacheConfig::with_deployment);
    /// an in-process cache's name ends in `~` and an id of its manager).
    pub deployment: String,
    /// Entries visible in the database that it has still to deliver
    /// (counted up to 100 000).
    pub backlog: u64,
    /// How old the oldest of them is, in milliseconds (0 when none waits).
    pub oldest_ms: u64,
    /// Milliseconds since its position last moved (it waits for the oldest
    /// transaction running on the server, so a long transaction anywhere
    /// holds it still, while entries keep being delivered).
    pub idle_ms: u64,
    /// Milliseconds since a worker of it last renewed it.
    pub renewed_ms: u64,
    /// It stopped renewing for longer than its expiry: it no longer holds
    /// entries back, and starts over if it comes back.
    pub expired: bool,
    /// An in-process cache (`memory://`): deleted rather than kept once it
    /// expires.
    pub ephemeral: bool,
    /// Why it last started over or expired, if it did.
    pub note: Option<String>,
    /// Relations of the tables it watches that lack outbox triggers (a
    /// table re-created or swapped, a partition attached without them):
    /// their writes do not reach the cache. PostgreSQL only.
    pub missing_triggers: Vec<String>,
}

/// Reads every deployment's status.
pub(crate) async fn read(pool: &DbPool) -> Result<Vec<DeploymentStatus>> {
    let mut statuses = match pool {
        DbPool::Postgres(p) => sqlx::query(
            "SELECT d.deployment, \
             (SELECT count(*) FROM (SELECT 1 FROM storehaus_outbox o WHERE (o.xid, o.seq) > (d.xid, d.seq) \
              AND (d.seen_xmax IS NULL OR o.xid >= d.seen_xmax OR o.xid = ANY(d.seen_xip)) LIMIT 100000) w), \
             coalesce((SELECT (extract(epoch FROM clock_timestamp() - min(o.created_at)) * 1000)::bigint \
                       FROM storehaus_outbox o WHERE (o.xid, o.seq) > (d.xid, d.seq) \
                       AND (d.seen_xmax IS NULL OR o.xid >= d.seen_xmax OR o.xid = ANY(d.seen_xip))), 0), \
             (extract(epoch FROM clock_timestamp() - d.updated_at) * 1000)::bigint, \
             (extract(epoch FROM clock_timestamp() - d.renewed_at) * 1000)::bigint, \
             d.expired, d.ephemeral, d.note \
             FROM storehaus_outbox_positions d ORDER BY d.deployment",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(status)
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?,
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => sqlx::query(
            "SELECT d.deployment, \
             (SELECT count(*) FROM (SELECT 1 FROM storehaus_outbox o WHERE o.seq > d.seq LIMIT 100000)), \
             coalesce((SELECT CAST((julianday('now') - julianday(min(o.created_at))) * 86400000 AS INTEGER) \
                       FROM storehaus_outbox o WHERE o.seq > d.seq), 0), \
             CAST((julianday('now') - julianday(d.updated_at)) * 86400000 AS INTEGER), \
             CAST((julianday('now') - julianday(d.renewed_at)) * 86400000 AS INTEGER), \
             d.expired, d.ephemeral, d.note \
             FROM storehaus_outbox_positions d ORDER BY d.deployment",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(status)
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?,
    };
    #[allow(irrefutable_let_patterns)] // PostgreSQL is the only database without `sqlite`
    if let DbPool::Postgres(p) = pool {
        for s in &mut statuses {
            for (table, _) in watched(pool, &s.deployment).await? {
                for relation in missing_triggers(p, &table).await? {
                    if !s.missing_triggers.contains(&relation) {
                        s.missing_triggers.push(relation);
                    }
                }
            }
        }
    }
    Ok(statuses)
}

fn status<R>(r: &R) -> std::result::Result<DeploymentStatus, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let ms = |i: usize| r.try_get::<i64, _>(i).map(|v| v.max(0) as u64);
    Ok(DeploymentStatus {
        deployment: r.try_get(0)?,
        backlog: ms(1)?,
        oldest_ms: ms(2)?,
        idle_ms: ms(3)?,
        renewed_ms: ms(4)?,
        expired: r.try_get(5)?,
        ephemeral: r.try_get(6)?,
        note: r.try_get::<Option<String>, _>(7)?,
        missing_triggers: Vec::new(),
    })
}
