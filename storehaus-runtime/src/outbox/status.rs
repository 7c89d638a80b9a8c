//! What the outbox holds for each registered deployment.

use sqlx::Row;

use crate::error::Result;
use crate::store::pool::DbPool;

/// One deployment registered in an outbox, from
/// [`GenericStore::external_writes_status`](crate::GenericStore::external_writes_status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeploymentStatus {
    /// The deployment's name (its global prefix, or
    /// [`CacheConfig::with_deployment`](crate::CacheConfig::with_deployment)).
    pub deployment: String,
    /// Entries it has still to deliver (counted up to 100 000).
    pub backlog: u64,
    /// How old the oldest of them is, in milliseconds (0 when none waits).
    pub oldest_ms: u64,
    /// Milliseconds since its position last moved.
    pub idle_ms: u64,
}

/// Reads every deployment's status.
pub(crate) async fn read(pool: &DbPool) -> Result<Vec<DeploymentStatus>> {
    let rows = match pool {
        DbPool::Postgres(p) => {
            sqlx::query(
                "SELECT d.deployment, \
                 (SELECT count(*) FROM (SELECT 1 FROM storehaus_outbox o WHERE (o.xid, o.seq) > (d.xid, d.seq) LIMIT 100000) w), \
                 coalesce((SELECT (extract(epoch FROM clock_timestamp() - min(o.created_at)) * 1000)::bigint \
                           FROM storehaus_outbox o WHERE (o.xid, o.seq) > (d.xid, d.seq)), 0), \
                 (extract(epoch FROM clock_timestamp() - d.updated_at) * 1000)::bigint \
                 FROM storehaus_outbox_positions d ORDER BY d.deployment",
            )
            .fetch_all(p)
            .await?
            .into_iter()
            .map(|r| status(r.try_get(0), r.try_get(1), r.try_get(2), r.try_get(3)))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
        }
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => sqlx::query(
            "SELECT d.deployment, \
             (SELECT count(*) FROM (SELECT 1 FROM storehaus_outbox o WHERE o.seq > d.seq LIMIT 100000)), \
             coalesce((SELECT CAST((julianday('now') - julianday(min(o.created_at))) * 86400000 AS INTEGER) \
                       FROM storehaus_outbox o WHERE o.seq > d.seq), 0), \
             CAST((julianday('now') - julianday(d.updated_at)) * 86400000 AS INTEGER) \
             FROM storehaus_outbox_positions d ORDER BY d.deployment",
        )
        .fetch_all(p)
        .await?
        .into_iter()
        .map(|r| status(r.try_get(0), r.try_get(1), r.try_get(2), r.try_get(3)))
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?,
    };
    Ok(rows)
}

type Column<T> = std::result::Result<T, sqlx::Error>;

fn status(
    deployment: Column<String>,
    backlog: Column<i64>,
    oldest_ms: Column<i64>,
    idle_ms: Column<i64>,
) -> Column<DeploymentStatus> {
    Ok(DeploymentStatus {
        deployment: deployment?,
        backlog: backlog?.max(0) as u64,
        oldest_ms: oldest_ms?.max(0) as u64,
        idle_ms: idle_ms?.max(0) as u64,
    })
}
