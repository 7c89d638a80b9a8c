//! One pass of a worker over the outbox: read this deployment's position,
//! deliver what is visible and not yet delivered, move the position.
//!
//! No lock is held while the cache is reached: the position row is read
//! without one, and moved afterwards by a single statement that skips the
//! row if another session holds it (a stalled peer, an operator's
//! transaction) and never moves it backwards. Every worker of a deployment
//! delivers what it finds, so delivery never waits for a peer; a peer that
//! delivered the same entries did no harm (deleting a key twice is
//! idempotent) and its position is kept if it is further.

use sqlx::{PgPool, Row};

use super::deliver::Entry;
use super::deliver::{deliver, entries};
use super::install::{watched, PositionCheck, PG_IDENTITY};
use super::snapshot::{settled, Position, Seen, Snapshot};
use crate::cache::gate::WorkerState;
use crate::cache::CacheManager;
use crate::error::{Result, StorehausError};
use crate::store::pool::DbPool;

/// Outbox entries delivered per page.
pub(crate) const BATCH: i64 = 1_000;

/// What one pass did.
pub(super) enum Pass {
    /// Delivered `rows` entries; `more` when a full page was taken.
    Delivered { rows: u64, more: bool },
    /// The position cannot be trusted (the reason): start over.
    Untrusted(String),
}

/// A round of pages under way: every entry visible in `snapshot` above the
/// position it started from, and not already covered by `seen`, is
/// delivered once the round ends; `cursor` is the last entry delivered.
#[derive(Debug)]
pub(super) struct Round {
    snapshot: Snapshot,
    seen: Seen,
    cursor: Position,
}

/// The entries still to deliver after `cursor`: those of transactions that
/// `seen` did not see committed.
const PENDING: &str = "\
SELECT xid, seq, tbl, key, (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint \
FROM storehaus_outbox WHERE (xid, seq) > ($1, $2) AND (xid >= $3 OR xid = ANY($4)) \
ORDER BY xid, seq LIMIT $5";

pub(super) async fn postgres(
    manager: &CacheManager,
    db: &DbPool,
    pool: &PgPool,
    deployment: &str,
    state: &WorkerState,
    round: &mut Option<Round>,
) -> Result<Pass> {
    let (mut this, identity) = match resume(pool, deployment, round.take()).await? {
        Ok(resumed) => resumed,
        Err(reason) => return Ok(Pass::Untrusted(reason)),
    };
    let (xmax, xip) = this.seen.pending_filter();
    let rows = sqlx::query(PENDING)
        .bind(this.cursor.0)
        .bind(this.cursor.1)
        .bind(xmax)
        .bind(xip)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
    let entries = entries(&rows, 2)?;
    let lag_ms = rows
        .iter()
        .filter_map(|r| r.try_get::<i64, _>(4).ok())
        .max()
        .unwrap_or(0);
    if let Err(e) = deliver_to(manager, db, deployment, &entries).await {
        // Nothing moves; what is visible and undelivered is the backlog.
        let (backlog, lag) = backlog(pool, &this).await.unwrap_or((entries.len() as i64, lag_ms));
        record(state, 0, backlog, lag);
        return Err(e);
    }
    let more = rows.len() as i64 == BATCH;
    let (next, seen) = match rows.last() {
        Some(last) if more => {
            this.cursor = (last.try_get(0)?, last.try_get(1)?);
            (this.cursor.min(settled(&this.snapshot)), None)
        }
        // The round is over: everything visible in its snapshot is delivered.
        _ => (settled(&this.snapshot), Some(Seen::from(&this.snapshot))),
    };
    advance(pool, deployment, next, seen.as_ref(), &identity).await?;
    let (backlog, lag) = if more {
        let figures = backlog(pool, &this).await?;
        *round = Some(this);
        figures
    } else {
        (0, 0)
    };
    record(state, entries.len() as u64, backlog, lag);
    Ok(Pass::Delivered {
        rows: entries.len() as u64,
        more,
    })
}

/// Reads the deployment's position and checks it: the round to go on
/// with (`round`, the one under way, or a new one from the position and
/// the server's snapshot now) and the server's identity; or why the
/// position cannot be trusted.
async fn resume(
    pool: &PgPool,
    deployment: &str,
    round: Option<Round>,
) -> Result<std::result::Result<(Round, String), String>> {
    let row = sqlx::query(&format!(
        "SELECT xid, seq, seen_xmax, seen_xip, expired, db_identity, {PG_IDENTITY}, pg_current_snapshot()::text \
         FROM storehaus_outbox_positions WHERE deployment = $1"
    ))
    .bind(deployment)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(Err(
            "its position is gone (an in-process deployment that expired, or a deleted one)".into(),
        ));
    };
    let snapshot: Snapshot = row
        .try_get::<String, _>(7)?
        .parse()
        .map_err(|e: super::snapshot::BadSnapshot| StorehausError::Database(sqlx::Error::Protocol(e.to_string())))?;
    let position: Position = (row.try_get(0)?, row.try_get(1)?);
    let check = PositionCheck {
        expired: row.try_get(4)?,
        identity: row.try_get(5)?,
        xid: position.0,
        server_identity: row.try_get(6)?,
        next_xid: snapshot.xmax,
    };
    if let Some(reason) = check.distrust() {
        return Ok(Err(reason));
    }
    let this = match round {
        Some(r) => Round {
            cursor: r.cursor.max(position),
            ..r
        },
        None => Round {
            seen: Seen::from_columns(row.try_get(2)?, row.try_get(3)?),
            snapshot,
            cursor: position,
        },
    };
    Ok(Ok((this, check.server_identity)))
}

/// Moves the position to `next` unless it is further already, takes
/// `seen` unless a later one is recorded, and renews the deployment; skips
/// the row while another session holds it.
async fn advance(pool: &PgPool, deployment: &str, next: Position, seen: Option<&Seen>, identity: &str) -> Result<()> {
    sqlx::query(
        "UPDATE storehaus_outbox_positions p SET \
         renewed_at = now(), \
         updated_at = CASE WHEN (p.xid, p.seq) < ($2, $3) THEN now() ELSE p.updated_at END, \
         xid = CASE WHEN (p.xid, p.seq) < ($2, $3) THEN $2 ELSE p.xid END, \
         seq = CASE WHEN (p.xid, p.seq) < ($2, $3) THEN $3 ELSE p.seq END, \
         seen_xip = CASE WHEN $4::bigint IS NOT NULL AND (p.seen_xmax IS NULL OR p.seen_xmax <= $4) THEN $5 ELSE p.seen_xip END, \
         seen_xmax = CASE WHEN $4::bigint IS NOT NULL AND (p.seen_xmax IS NULL OR p.seen_xmax <= $4) THEN $4 ELSE p.seen_xmax END, \
         db_identity = coalesce(p.db_identity, $6) \
         WHERE p.deployment = $1 AND NOT p.expired AND p.deployment IN \
         (SELECT deployment FROM storehaus_outbox_positions WHERE deployment = $1 FOR UPDATE SKIP LOCKED)",
    )
    .bind(deployment)
    .bind(next.0)
    .bind(next.1)
    .bind(seen.map(|s| s.xmax))
    .bind(seen.map(|s| s.xip.clone()))
    .bind(identity)
    .execute(pool)
    .await?;
    Ok(())
}

/// Entries visible and not yet delivered after the round's cursor (counted
/// up to 100 000), and the age of the oldest in ms.
async fn backlog(pool: &PgPool, round: &Round) -> Result<(i64, i64)> {
    let (xmax, xip) = round.seen.pending_filter();
    let row = sqlx::query(
        "SELECT count(*), coalesce(max(age), 0) FROM (SELECT (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint AS age \
         FROM storehaus_outbox WHERE (xid, seq) > ($1, $2) AND (xid >= $3 OR xid = ANY($4)) ORDER BY xid, seq LIMIT 100000) waiting",
    )
    .bind(round.cursor.0)
    .bind(round.cursor.1)
    .bind(xmax)
    .bind(xip)
    .fetch_one(pool)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// SQLite: writers are serialized, so sequence order is commit order and
/// the position is the last sequence number delivered.
#[cfg(feature = "sqlite")]
pub(super) async fn sqlite(
    manager: &CacheManager,
    db: &DbPool,
    pool: &sqlx::SqlitePool,
    deployment: &str,
    state: &WorkerState,
) -> Result<Pass> {
    let position: Option<(i64, bool)> =
        sqlx::query_as("SELECT seq, expired FROM storehaus_outbox_positions WHERE deployment = ?1")
            .bind(deployment)
            .fetch_optional(pool)
            .await?;
    let seq = match position {
        None => {
            return Ok(Pass::Untrusted(
                "its position is gone (an in-process deployment that expired, or a deleted one)".into(),
            ))
        }
        Some((_, true)) => {
            return Ok(Pass::Untrusted(
                "it expired: no worker renewed it within its expiry".into(),
            ))
        }
        Some((seq, false)) => seq,
    };
    let rows = sqlx::query(
        "SELECT seq, tbl, key, CAST((julianday('now') - julianday(created_at)) * 86400000 AS INTEGER) \
         FROM storehaus_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )
    .bind(seq)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let entries = entries(&rows, 1)?;
    let lag_ms = rows
        .iter()
        .filter_map(|r| r.try_get::<i64, _>(3).ok())
        .max()
        .unwrap_or(0);
    if let Err(e) = deliver_to(manager, db, deployment, &entries).await {
        record(state, 0, entries.len() as i64, lag_ms);
        return Err(e);
    }
    let next: i64 = match rows.last() {
        Some(last) => last.try_get(0)?,
        None => seq,
    };
    // Never backwards: a worker of another process may have moved it further.
    sqlx::query(
        "UPDATE storehaus_outbox_positions SET seq = max(seq, ?2), \
         updated_at = CASE WHEN seq < ?2 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ELSE updated_at END, \
         renewed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE deployment = ?1 AND expired = 0",
    )
    .bind(deployment)
    .bind(next)
    .execute(pool)
    .await?;
    let more = rows.len() as i64 == BATCH;
    record(
        state,
        entries.len() as u64,
        if more { BATCH } else { 0 },
        if more { lag_ms } else { 0 },
    );
    Ok(Pass::Delivered {
        rows: entries.len() as u64,
        more,
    })
}

/// Delivers `entries` under every store prefix the deployment watches
/// their tables with.
async fn deliver_to(manager: &CacheManager, db: &DbPool, deployment: &str, entries: &[Entry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let watches = watched(db, deployment).await?;
    // The entries are committed (they are visible): the position now is
    // at or after their commits.
    let lsn = match db {
        DbPool::Postgres(pool) if manager.marks_any() => crate::store::replica::commit_position(pool).await,
        _ => None,
    };
    deliver(manager, entries, &watches, lsn).await
}

fn record(state: &WorkerState, rows: u64, backlog: i64, lag_ms: i64) {
    use std::sync::atomic::Ordering;
    state.delivered.fetch_add(rows, Ordering::Relaxed);
    state.backlog.store(backlog.max(0) as u64, Ordering::Relaxed);
    state.lag_ms.store(lag_ms.max(0) as u64, Ordering::Relaxed);
}
