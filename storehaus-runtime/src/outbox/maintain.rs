//! What any worker does for the whole outbox now and then: expire the
//! deployments that stopped renewing, prune the entries every live
//! deployment has passed, and check that the tables it watches still have
//! their triggers.

use super::install::missing_triggers;
use crate::cache::gate::{lock, WorkerState};
use crate::error::Result;
use crate::store::pool::DbPool;

/// Entries removed per prune statement.
pub(super) const PRUNE_BATCH: i64 = 10_000;

/// Expires the deployments that have not renewed within their expiry: an
/// in-process one is deleted with its watches (nobody can come back to
/// it); another is marked expired, so that it no longer holds entries back
/// and starts over when it returns. A row another session holds is left
/// for the next time. Returns the deployments expired.
pub(super) async fn expire(pool: &DbPool) -> Result<Vec<String>> {
    match pool {
        DbPool::Postgres(p) => Ok(sqlx::query_scalar(
            "WITH stale AS ( \
                 SELECT deployment, ephemeral FROM storehaus_outbox_positions \
                 WHERE NOT expired AND renewed_at < now() - expires_after_ms * interval '1 millisecond' \
                 FOR UPDATE SKIP LOCKED), \
             dropped AS ( \
                 DELETE FROM storehaus_outbox_positions p USING stale \
                 WHERE p.deployment = stale.deployment AND stale.ephemeral RETURNING p.deployment), \
             unwatched AS ( \
                 DELETE FROM storehaus_outbox_watches w USING dropped WHERE w.deployment = dropped.deployment), \
             marked AS ( \
                 UPDATE storehaus_outbox_positions p SET expired = true, \
                 note = 'expired at ' || now() || ': not renewed for ' || p.expires_after_ms || ' ms' \
                 FROM stale WHERE p.deployment = stale.deployment AND NOT stale.ephemeral RETURNING p.deployment) \
             SELECT deployment FROM dropped UNION ALL SELECT deployment FROM marked",
        )
        .fetch_all(p)
        .await?),
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => {
            const STALE: &str = "expired = 0 AND \
                 julianday(renewed_at) < julianday('now') - expires_after_ms / 86400000.0";
            let mut tx = p.begin().await?;
            let names: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT deployment FROM storehaus_outbox_positions WHERE {STALE}"
            ))
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "DELETE FROM storehaus_outbox_watches WHERE deployment IN \
                 (SELECT deployment FROM storehaus_outbox_positions WHERE ephemeral = 1 AND {STALE})"
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "DELETE FROM storehaus_outbox_positions WHERE ephemeral = 1 AND {STALE}"
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "UPDATE storehaus_outbox_positions SET expired = 1, \
                 note = 'expired at ' || strftime('%Y-%m-%dT%H:%M:%fZ', 'now') || ': not renewed for ' || expires_after_ms || ' ms' \
                 WHERE {STALE}"
            ))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(names)
        }
    }
}

/// Removes the entries every live deployment has passed (with none live,
/// every entry below the oldest running transaction: a deployment that
/// registers later starts at the end, one that returns starts over), a
/// bounded number at a time. Returns how many it removed.
pub(super) async fn prune(pool: &DbPool) -> Result<u64> {
    let removed = match pool {
        DbPool::Postgres(p) => sqlx::query(
            "DELETE FROM storehaus_outbox WHERE seq IN (SELECT o.seq FROM storehaus_outbox o, \
             (SELECT coalesce( \
                 (SELECT ROW(xid, seq) FROM storehaus_outbox_positions WHERE NOT expired ORDER BY xid, seq LIMIT 1), \
                 ROW((pg_snapshot_xmin(pg_current_snapshot())::text)::bigint, 0::bigint)) AS m) bound \
             WHERE ROW(o.xid, o.seq) <= bound.m LIMIT $1)",
        )
        .bind(PRUNE_BATCH)
        .execute(p)
        .await?
        .rows_affected(),
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => sqlx::query(
            "DELETE FROM storehaus_outbox WHERE seq <= coalesce( \
             (SELECT min(seq) FROM storehaus_outbox_positions WHERE expired = 0), \
             (SELECT max(seq) FROM storehaus_outbox))",
        )
        .execute(p)
        .await?
        .rows_affected(),
    };
    Ok(removed)
}

/// Checks the triggers of every table this worker's process watches;
/// returns whether what is missing changed since the last check.
pub(super) async fn check_triggers(pool: &DbPool, state: &WorkerState) -> Result<bool> {
    let tables: Vec<String> = {
        let mut t: Vec<String> = lock(&state.watches).iter().map(|(t, _)| t.clone()).collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    let mut missing = Vec::new();
    for table in tables {
        let relations = match pool {
            DbPool::Postgres(p) => missing_triggers(p, &table).await?,
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(p) => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1 \
                     AND name IN ('storehaus_outbox_insert_' || ?1, 'storehaus_outbox_update_' || ?1, \
                                  'storehaus_outbox_delete_' || ?1)",
                )
                .bind(&table)
                .fetch_one(p)
                .await?;
                if n < 3 {
                    vec![table.clone()]
                } else {
                    Vec::new()
                }
            }
        };
        if !relations.is_empty() {
            missing.push((table, relations));
        }
    }
    let mut held = lock(&state.missing);
    let changed = *held != missing;
    *held = missing;
    Ok(changed)
}
