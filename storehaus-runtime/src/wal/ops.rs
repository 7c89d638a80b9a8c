//! Operating the slots: what each deployment's slot retains, the check
//! behind the health warning for a slot nobody streams, and dropping a
//! deployment that is gone for good.

use sqlx::{PgPool, Row};

use super::setup::SlotName;
use crate::cache::gate::{lock, WorkerState};
use crate::error::Result;
use crate::HealthWarning;

/// One deployment's replication slot, as
/// [`GenericStore::wal_slots`](crate::GenericStore::wal_slots) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalSlotStatus {
    /// The slot (and publication) name.
    pub slot: String,
    /// The deployment it belongs to.
    pub deployment: String,
    /// Whether a session streams it now.
    pub active: bool,
    /// WAL the server retains for it, in bytes (`None`: the slot is gone).
    pub retained_bytes: Option<u64>,
    /// The server's `wal_status` of it (`reserved`, `extended`, `unreserved`,
    /// `lost`), or `missing` when there is no such slot.
    pub wal_status: String,
    /// How long ago its reader last caught up with the log, in ms.
    pub caught_up_ms_ago: u64,
    /// Whether no process of the deployment has caught up within its
    /// expiry: the deployment looks gone, and its slot retains WAL until
    /// it is dropped ([`GenericStore::drop_wal_deployment`](crate::GenericStore::drop_wal_deployment)).
    pub abandoned: bool,
}

const STATUS: &str = "\
SELECT w.slot, w.deployment, coalesce(s.active, false), \
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, coalesce(s.wal_status, 'missing'), \
       (extract(epoch FROM now() - w.caught_up_at) * 1000)::bigint, \
       NOT coalesce(s.active, false) AND w.caught_up_at < now() - make_interval(secs => w.expires_after_ms / 1000.0), \
       w.ephemeral \
FROM storehaus_wal_slots w LEFT JOIN pg_replication_slots s ON s.slot_name = w.slot \
ORDER BY w.slot";

/// Every deployment's slot registered in this database.
pub(crate) async fn status(pool: &PgPool) -> Result<Vec<WalSlotStatus>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('storehaus_wal_slots') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(STATUS).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(WalSlotStatus {
                slot: r.try_get(0)?,
                deployment: r.try_get(1)?,
                active: r.try_get(2)?,
                retained_bytes: r.try_get::<Option<i64>, _>(3)?.map(|b| b.max(0) as u64),
                wal_status: r.try_get(4)?,
                caught_up_ms_ago: r.try_get::<i64, _>(5)?.max(0) as u64,
                abandoned: r.try_get(6)?,
            })
        })
        .collect()
}

/// Checks every deployment's slot: one no process of its deployment has
/// streamed within its expiry becomes a standing warning with the WAL it
/// retains; the bookkeeping of in-process deployments whose temporary slot
/// is gone is removed. Failures are logged and retried at the next check.
pub(crate) async fn check(pool: &PgPool, state: &WorkerState) {
    let slots = match status(pool).await {
        Ok(slots) => slots,
        Err(e) => {
            tracing::debug!(target: "storehaus", error = %e, "wal slot check failed");
            return;
        }
    };
    let mut warnings = Vec::new();
    for slot in slots.iter().filter(|s| s.abandoned) {
        if slot.wal_status == "missing" {
            // An in-process deployment's temporary slot ended with it.
            let _ = forget(pool, &SlotName(slot.slot.clone()), true).await;
            continue;
        }
        let retained = slot.retained_bytes.unwrap_or(0);
        tracing::warn!(target: "storehaus", slot = %slot.slot, deployment = %slot.deployment, retained_bytes = retained,
            "a replication slot no process streams retains WAL: drop its deployment if it is gone for good (GenericStore::drop_wal_deployment), or cap it with max_slot_wal_keep_size");
        warnings.push(HealthWarning::WalSlotRetained {
            slot: slot.slot.clone(),
            deployment: slot.deployment.clone(),
            retained_bytes: retained,
        });
    }
    *lock(&state.standing) = warnings;
}

/// Removes a slot's bookkeeping (only an in-process deployment's, when
/// `ephemeral_only`).
async fn forget(pool: &PgPool, slot: &SlotName, ephemeral_only: bool) -> Result<()> {
    let gone = sqlx::query("DELETE FROM storehaus_wal_slots WHERE slot = $1 AND (ephemeral OR NOT $2)")
        .bind(&slot.0)
        .bind(ephemeral_only)
        .execute(pool)
        .await?
        .rows_affected();
    if gone > 0 {
        sqlx::query("DELETE FROM storehaus_wal_watches WHERE slot = $1")
            .bind(&slot.0)
            .execute(pool)
            .await?;
        let drop = format!("DROP PUBLICATION IF EXISTS {}", crate::outbox::ident(&slot.0));
        sqlx::query(&drop).execute(pool).await?;
    }
    Ok(())
}

/// Drops `deployment`'s slot (terminating the session that streams it, if
/// any), its publication and its bookkeeping. Whether it had a slot.
pub(crate) async fn drop_deployment(pool: &PgPool, deployment: &str) -> Result<bool> {
    let slots: Vec<String> = match sqlx::query_scalar("SELECT slot FROM storehaus_wal_slots WHERE deployment = $1")
        .bind(deployment)
        .fetch_all(pool)
        .await
    {
        Ok(slots) => slots,
        // No bookkeeping table: nothing was ever registered here.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut dropped = false;
    for slot in slots {
        let slot = SlotName(slot);
        let row = sqlx::query("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&slot.0)
            .fetch_optional(pool)
            .await?;
        if let Some(row) = row {
            if let Some(pid) = row.try_get::<Option<i32>, _>(0)? {
                sqlx::query("SELECT pg_terminate_backend($1, 5000)")
                    .bind(pid)
                    .execute(pool)
                    .await?;
            }
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(&slot.0)
                .execute(pool)
                .await?;
            dropped = true;
        }
        forget(pool, &slot, false).await?;
        tracing::info!(target: "storehaus", slot = %slot.0, deployment, "dropped the deployment's replication slot");
    }
    Ok(dropped)
}
