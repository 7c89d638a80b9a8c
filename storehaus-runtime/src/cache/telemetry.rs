//! What operations report beyond [`CacheStats`](crate::CacheStats): metrics
//! through the [`metrics`] facade, so that any exporter works (Prometheus,
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

use std::sync::Arc;
use std::time::Instant;

use metrics::{Label, SharedString};

/// Reads by outcome.
pub(crate) const READS: &str = "storehaus_reads_total";
/// Read latency, in seconds.
pub(crate) const READ_SECONDS: &str = "storehaus_read_duration_seconds";
/// Writes by outcome.
pub(crate) const WRITES: &str = "storehaus_writes_total";
/// Write latency, the invalidation after the commit included, in seconds.
pub(crate) const WRITE_SECONDS: &str = "storehaus_write_duration_seconds";
/// Cache failures by kind.
pub(crate) const CACHE_ERRORS: &str = "storehaus_cache_errors_total";
/// Background fills by outcome.
pub(crate) const FILLS: &str = "storehaus_fills_total";
/// 1 while the circuit breaker is open.
pub(crate) const BREAKER_OPEN: &str = "storehaus_breaker_open";

/// How the cache took part in a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered from the near cache, without a round trip.
    NearHit,
    /// Answered from the cache.
    Hit,
    /// Answered by the database, then filled behind a lease.
    Miss,
    /// Answered by the database, the cache unable to answer; nothing filled.
    Bypass,
    /// Answered by the database: the store has no cache.
    Uncached,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::NearHit => "near_hit",
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
            Outcome::Uncached => "uncached",
        }
    }
}

/// The labels of one store's metrics, built once per store.
#[derive(Debug)]
pub(crate) struct StoreMetrics {
    table: Label,
    prefix: Label,
}

impl StoreMetrics {
    pub fn new(table: &'static str, prefix: &str) -> Self {
        StoreMetrics {
            table: Label::from_static_parts("table", table),
            prefix: Label::new("prefix", SharedString::from_shared(Arc::<str>::from(prefix))),
        }
    }

    fn labels(&self, op: &'static str, outcome: &'static str) -> [Label; 4] {
        [
            self.table.clone(),
            self.prefix.clone(),
            Label::from_static_parts("op", op),
            Label::from_static_parts("outcome", outcome),
        ]
    }

    /// One read of `n` records started at `started` that ended with
    /// `outcome` (`None`: the database failed). Also records the outcome on
    /// the current span and in a DEBUG event.
    pub fn read(&self, op: &'static str, outcome: Option<Outcome>, n: u64, started: Instant) {
        let outcome = outcome.map_or("error", Outcome::as_str);
        let elapsed = started.elapsed();
        tracing::Span::current().record("outcome", outcome);
        tracing::debug!(target: "storehaus", op, outcome, elapsed_us = elapsed.as_micros() as u64, "read answered");
        let labels = self.labels(op, outcome);
        metrics::histogram!(READ_SECONDS, labels.iter()).record(elapsed);
        metrics::counter!(READS, labels.iter()).increment(n);
    }

    /// A `get_many` of `hits + rest` ids started at `started`: `hits`
    /// answered by the cache, the `rest` by the database with `outcome`
    /// (`None`: the database failed, and no id was served).
    pub fn read_many(&self, hits: u64, rest: u64, outcome: Option<Outcome>, started: Instant) {
        let op = "get_many";
        if outcome.is_none() {
            return self.read(op, None, hits + rest, started);
        }
        if hits > 0 {
            metrics::counter!(READS, self.labels(op, "hit").iter()).increment(hits);
        }
        // The call's latency goes under what decided it: the database when
        // any id went there.
        let (main, n) = match outcome {
            Some(o) if rest > 0 => (Some(o), rest),
            _ => (Some(Outcome::Hit), 0),
        };
        self.read(op, main, n, started);
    }

    /// One write started at `started`, which the database did or did not
    /// (`ok == false`) carry out.
    pub fn write(&self, op: &'static str, ok: bool, started: Instant) {
        let labels = self.labels(op, if ok { "ok" } else { "error" });
        metrics::histogram!(WRITE_SECONDS, labels.iter()).record(started.elapsed());
        metrics::counter!(WRITES, labels.iter()).increment(1);
    }
}

/// The manager-wide metrics, labelled with its global prefix.
#[derive(Debug)]
pub(crate) struct ManagerMetrics {
    global: Label,
}

impl ManagerMetrics {
    pub fn new(global: &str) -> Self {
        ManagerMetrics {
            global: Label::new("global", SharedString::from_shared(Arc::<str>::from(global))),
        }
    }

    /// `n` cache failures of `kind` (`timeout`, `connection`, `command`,
    /// `corrupt`).
    pub fn cache_errors(&self, kind: &'static str, n: u64) {
        if n > 0 {
            let labels = [self.global.clone(), Label::from_static_parts("kind", kind)];
            metrics::counter!(CACHE_ERRORS, labels.iter()).increment(n);
        }
    }

    /// A background fill: `written` values landed, `rejected` were dropped.
    pub fn fills(&self, written: u64, rejected: u64) {
        for (outcome, n) in [("written", written), ("rejected", rejected)] {
            if n > 0 {
                let labels = [self.global.clone(), Label::from_static_parts("outcome", outcome)];
                metrics::counter!(FILLS, labels.iter()).increment(n);
            }
        }
    }

    /// The circuit breaker opened (`true`) or closed.
    pub fn breaker(&self, open: bool) {
        metrics::gauge!(BREAKER_OPEN, std::slice::from_ref(&self.global).iter()).set(if open { 1.0 } else { 0.0 });
    }
}
