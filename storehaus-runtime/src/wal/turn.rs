//! Who streams a deployment's slot. PostgreSQL lets one session stream a
//! slot at a time; the processes of a deployment take turns: a process
//! whose reader finds the slot free streams it, the others stand by. A
//! standby trusts its cache while the holder reports, through the slot's
//! row, that it caught up with a heartbeat recently (and is not failing to
//! deliver); a holder that has not for half the deployment's expiry is
//! stalled: the standby terminates its session and takes the slot.
//!
//! A slot that is gone (dropped) or that the server invalidated (past
//! `max_slot_wal_keep_size`) cannot say what was missed: the deployment
//! starts over (see `Reader::start_over`).

use std::time::Duration;

use sqlx::{PgPool, Row};

use super::setup::{slot_state, SlotName, SlotState};
use crate::error::Result;

/// What a reader does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// The slot is free: stream it.
    Stream,
    /// Another session streams it; `holder_ok` when it caught up recently.
    Wait { holder_ok: bool },
    /// The slot cannot be trusted (the reason): start over.
    StartOver(String),
}

/// How long a holder may go without catching up before standbys bypass
/// their cache (`fresh`), and before one of them takes the slot over
/// (`takeover`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub fresh: Duration,
    pub takeover: Duration,
}

impl Bounds {
    pub fn new(poll: Duration, expiry: Duration) -> Bounds {
        let fresh = poll * 3 + Duration::from_secs(1);
        Bounds {
            fresh,
            takeover: (expiry / 2).max(fresh),
        }
    }
}

/// Decides this reader's turn for a (persistent) slot.
pub(crate) async fn decide(pool: &PgPool, slot: &SlotName, bounds: Bounds) -> Result<Turn> {
    let pending: Option<String> =
        sqlx::query_scalar("SELECT note FROM storehaus_wal_slots WHERE slot = $1 AND clear_pending")
            .bind(&slot.0)
            .fetch_optional(pool)
            .await?
            .flatten();
    if let Some(reason) = pending {
        return Ok(Turn::StartOver(reason));
    }
    let active_pid = match slot_state(pool, slot).await? {
        SlotState::Missing => {
            return Ok(Turn::StartOver(
                "its replication slot is gone (dropped while the deployment was away)".into(),
            ))
        }
        SlotState::Lost => {
            return Ok(Turn::StartOver(
                "the server invalidated its replication slot (it retained more than max_slot_wal_keep_size)".into(),
            ))
        }
        SlotState::Ready { active_pid: None } => return Ok(Turn::Stream),
        SlotState::Ready { active_pid: Some(pid) } => pid,
    };
    let row = sqlx::query(
        "SELECT caught_up_at > now() - make_interval(secs => $2) AND NOT lagging, \
         caught_up_at < now() - make_interval(secs => $3) \
         FROM storehaus_wal_slots WHERE slot = $1",
    )
    .bind(&slot.0)
    .bind(bounds.fresh.as_secs_f64())
    .bind(bounds.takeover.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    let (fresh, stalled) = match row {
        Some(r) => (r.try_get::<bool, _>(0)?, r.try_get::<bool, _>(1)?),
        None => (false, false),
    };
    if stalled {
        tracing::warn!(target: "storehaus", slot = %slot.0, pid = active_pid, takeover = ?bounds.takeover,
            "the session streaming this deployment's slot has not caught up for too long: terminating it to take the slot over");
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(active_pid)
            .execute(pool)
            .await?;
    }
    Ok(Turn::Wait { holder_ok: fresh })
}

/// The holder caught up with a heartbeat emitted `age` ago: standbys may
/// trust their cache.
pub(crate) async fn caught_up(pool: &PgPool, slot: &SlotName, age: Duration) -> Result<()> {
    sqlx::query(
        "UPDATE storehaus_wal_slots SET caught_up_at = greatest(caught_up_at, now() - make_interval(secs => $2)), \
         lagging = false WHERE slot = $1",
    )
    .bind(&slot.0)
    .bind(age.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// The holder cannot deliver (or is behind): standbys bypass their cache.
pub(crate) async fn lagging(pool: &PgPool, slot: &SlotName) -> Result<()> {
    sqlx::query("UPDATE storehaus_wal_slots SET lagging = true WHERE slot = $1")
        .bind(&slot.0)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records that the deployment is starting over (`Some(reason)`), or that
/// it has cleared its cache and streams its new slot (`None`).
pub(crate) async fn clear_pending(pool: &PgPool, slot: &SlotName, reason: Option<&str>) -> Result<()> {
    sqlx::query(
        "UPDATE storehaus_wal_slots SET clear_pending = $2 IS NOT NULL, note = coalesce($2, note) WHERE slot = $1",
    )
    .bind(&slot.0)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}
