//! Positions in PostgreSQL's write-ahead log: the primary's insert
//! position, what a replica has replayed, and when the one covers the
//! other.

use sqlx::PgPool;

use crate::error::Result;
use crate::store::pool::DbPool;
use crate::store::Pooled;

/// The size of a write-ahead log page, and of the headers at the start of
/// a page and of a segment's first page.
const WAL_PAGE: u64 = 8192;
const WAL_PAGE_HEADER: u64 = 24;
const WAL_SEGMENT_HEADER: u64 = 40;

/// Whether a replica that has replayed up to `replay` has replayed every
/// record that ended at or before `needed`, an insert position of the
/// primary whose segments are `segment` bytes (0: unknown). An insert
/// position at the start of a page points past the page's header, where no
/// record ends, while a replica that has replayed the last record before
/// that page reports the page's start: the two are the same point of the
/// log (otherwise an idle primary whose last record ended a page, or which
/// switched segments, would keep its replicas out until it writes again).
pub(super) fn covers(replay: u64, needed: u64, segment: u64) -> bool {
    let header = if segment > 0 && needed % segment == WAL_SEGMENT_HEADER {
        WAL_SEGMENT_HEADER
    } else if needed % WAL_PAGE == WAL_PAGE_HEADER {
        WAL_PAGE_HEADER
    } else {
        0
    };
    replay >= needed - header
}

/// The primary's write-ahead log insert position (at or after every commit
/// that has returned), or `None` when it cannot be read.
pub(crate) async fn commit_position(pool: &PgPool) -> Option<u64> {
    let read = sqlx::query_scalar::<_, i64>("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")
        .fetch_one(pool)
        .await;
    match read {
        Ok(lsn) => u64::try_from(lsn).ok(),
        Err(e) => {
            tracing::debug!(target: "storehaus", error = %e, "could not read the primary's log position");
            None
        }
    }
}

/// The primary's `wal_segment_size` in bytes.
pub(super) async fn segment_size(pool: &PgPool) -> Option<u64> {
    sqlx::query_scalar::<_, String>("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        .fetch_one(pool)
        .await
        .ok()?
        .parse()
        .ok()
}

/// What a replica has replayed (a primary passed as a replica: what it has
/// written); `None` while it has replayed nothing.
pub(super) async fn replay_position(pool: &DbPool) -> Result<Option<u64>> {
    let mut conn = Pooled::acquire(pool).await?;
    #[allow(irrefutable_let_patterns)] // PostgreSQL is the only database without `sqlite`
    let Pooled::Postgres(conn) = &mut conn
    else {
        return Ok(None);
    };
    let lsn: Option<i64> = sqlx::query_scalar(
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END \
         - '0/0'::pg_lsn)::int8",
    )
    .fetch_one(&mut **conn)
    .await?;
    Ok(lsn.and_then(|l| u64::try_from(l).ok()))
}
