//! What operations report beyond [`CacheStats`](crate::CacheStats): metrics
//! through the `metrics` facade (cargo feature `metrics`, on by default:
//! `recorder`; without it `silent` keeps the same calls and records nothing), so that any exporter works (Prometheus,
//! StatsD, OpenTelemetry, ...), and each read's outcome on its `tracing`
//! span.
//!
//! Nothing is recorded until the application installs a recorder (an
//! exporter's `install`, or `metrics::set_global_recorder`); without one a
//! call is a lookup in the no-op recorder (measured in `BENCHMARKS.md`).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `storehaus_reads_total` | counter | `table`, `prefix`, `op`, `outcome` |
//! | `storehaus_read_duration_seconds` | histogram | `table`, `prefix`, `op`, `outcome` |
//! | `storehaus_writes_total` | counter | `table`, `prefix`, `op`, `outcome` |
//! | `storehaus_write_duration_seconds` | histogram | `table`, `prefix`, `op`, `outcome` |
//! | `storehaus_cache_errors_total` | counter | `global`, `kind` |
//! | `storehaus_fills_total` | counter | `global`, `outcome` |
//! | `storehaus_breaker_open` | gauge | `global` |
//!
//! - Read `op`: `get_by_id`, `get_many` (one count per id), `find`, `count`;
//!   `outcome`: `near_hit` (the near cache answered, no round trip),
//!   `hit` (Redis answered, a cached "no such row" included), `miss` (the cache had nothing: the database answered and
//!   the value is filled behind a lease), `bypass` (the cache could not
//!   answer — breaker open, an invalidation waiting for replay, a timeout,
//!   an error — so the database answered and nothing is filled), `uncached`
//!   (a store built without [`CacheParams`](crate::CacheParams)), `error`
//!   (the database failed).
//! - Write `op`: `create`, `update`, `update_many`, `delete`, `delete_many`,
//!   `commit` (a [`StoreTransaction`](crate::StoreTransaction)); `outcome`:
//!   `ok`, or `error` when the database failed.
//! - Cache error `kind`: `timeout`, `connection`, `command`, `corrupt`.
//! - Fill `outcome`: `written`, `rejected` (a write came between the load
//!   and the fill: the stale-set race, prevented).
//! - `global` is the manager's global prefix; `storehaus_breaker_open` is 1
//!   while its circuit breaker is open, else 0.

use std::time::Duration;

use crate::cache::stats::Op;

#[cfg(feature = "metrics")]
mod recorder;
#[cfg(not(feature = "metrics"))]
mod silent;

#[cfg(feature = "metrics")]
pub(crate) use self::recorder::{ManagerMetrics, StoreMetrics};
#[cfg(not(feature = "metrics"))]
pub(crate) use self::silent::{ManagerMetrics, StoreMetrics};

/// How the cache took part in a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered from the near cache, without a round trip.
    NearHit,
    /// Answered from the cache.
    Hit,
    /// Answered from the cache, and the entry refreshed early (the read
    /// waited for the database): a hit in the metrics, a miss's latency in
    /// the store's figures.
    Refreshed,
    /// Answered by the database, then filled behind a lease.
    Miss,
    /// Answered by the database, the cache unable to answer; nothing filled.
    Bypass,
    /// Answered by the database: the store has no cache.
    Uncached,
}

impl Outcome {
    /// Which latency figure a read with this outcome counts under: a hit's
    /// when the cache answered without the database, else a miss's.
    pub(crate) fn op(self) -> Op {
        match self {
            Outcome::NearHit | Outcome::Hit => Op::Hit,
            Outcome::Refreshed | Outcome::Miss | Outcome::Bypass | Outcome::Uncached => Op::Miss,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::NearHit => "near_hit",
            Outcome::Hit | Outcome::Refreshed => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Uncached => "uncached",
        }
    }
}

/// Records a read's outcome on the current span and in a DEBUG event:
/// the outcome's name and how long the read took.
fn trace_read(op: &'static str, outcome: Option<Outcome>, took: Duration) -> &'static str {
    let outcome = outcome.map_or("error", Outcome::as_str);
    tracing::Span::current().record("outcome", outcome);
    tracing::debug!(target: "storehaus", op, outcome, elapsed_us = took.as_micros() as u64, "read answered");
    outcome
}

/// Runs the metrics of `n` store reads (a hit each) through the recorder
/// in place, and says how long that took: what telemetry adds to a read
/// (benchmarks; feature `test-hooks`).
#[cfg(feature = "test-hooks")]
pub fn time_reads(n: usize) -> Duration {
    let metrics = StoreMetrics::new("bench", "bench");
    let start = std::time::Instant::now();
    for _ in 0..n {
        metrics.read("get_by_id", Some(Outcome::Hit), 1, Duration::from_micros(50));
    }
    start.elapsed()
}
