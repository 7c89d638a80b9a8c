//! The metrics of [`super`], through the `metrics` facade (cargo feature
//! `metrics`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram, Label, SharedString};

use super::Outcome;

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

/// The read operations and outcomes, and the write operations and
/// outcomes, in the order of [`Registered`]'s tables.
const READ_OPS: [&str; 4] = ["get_by_id", "get_many", "find", "count"];
const READ_OUTCOMES: [&str; 6] = ["near_hit", "hit", "miss", "bypass", "uncached", "error"];
const WRITE_OPS: [&str; 6] = ["create", "update", "update_many", "delete", "delete_many", "commit"];
const WRITE_OUTCOMES: [&str; 2] = ["ok", "error"];

fn index(table: &[&str], name: &str) -> usize {
    let i = table.iter().position(|n| *n == name);
    debug_assert!(i.is_some(), "{name} is not in {table:?}");
    i.unwrap_or(0)
}

/// Which recorder the facade would hand a metric to now: the address of
/// the local, global or no-op recorder.
fn current_recorder() -> usize {
    metrics::with_recorder(|r| (r as *const dyn metrics::Recorder).cast::<()>() as usize)
}

/// One series: its counter and its latency histogram.
struct Series {
    counter: Counter,
    histogram: Histogram,
}

/// Every series of one store, registered with one recorder.
struct Registered {
    recorder: usize,
    reads: Vec<Series>,
    writes: Vec<Series>,
}

/// The labels of one store's metrics, built once per store, and its series
/// registered once with the recorder in place at its first operation (all
/// at once, so that every series starts at zero, as Prometheus advises).
/// An operation made under another recorder (installed later, or a local
/// one) registers through the facade instead: always right, only slower.
pub(crate) struct StoreMetrics {
    table: Label,
    prefix: Label,
    registered: OnceLock<Registered>,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreMetrics")
            .field("table", &self.table.value())
            .field("prefix", &self.prefix.value())
            .finish()
    }
}

impl StoreMetrics {
    pub fn new(table: &'static str, prefix: &str) -> Self {
        StoreMetrics {
            table: Label::from_static_parts("table", table),
            prefix: Label::new("prefix", SharedString::from_shared(Arc::<str>::from(prefix))),
            registered: OnceLock::new(),
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

    fn register(&self, recorder: usize) -> Registered {
        let series = |count: &'static str, time: &'static str, ops: &[&'static str], outcomes: &[&'static str]| {
            let mut all = Vec::with_capacity(ops.len() * outcomes.len());
            for op in ops {
                for outcome in outcomes {
                    let labels = self.labels(op, outcome);
                    all.push(Series {
                        counter: metrics::counter!(count, labels.iter()),
                        histogram: metrics::histogram!(time, labels.iter()),
                    });
                }
            }
            all
        };
        Registered {
            recorder,
            reads: series(READS, READ_SECONDS, &READ_OPS, &READ_OUTCOMES),
            writes: series(WRITES, WRITE_SECONDS, &WRITE_OPS, &WRITE_OUTCOMES),
        }
    }

    /// The registered series, when the recorder in place is the one they
    /// were registered with.
    fn registered(&self) -> Option<&Registered> {
        let now = current_recorder();
        let registered = self.registered.get_or_init(|| self.register(now));
        (registered.recorder == now).then_some(registered)
    }

    fn count_read(&self, op: &'static str, outcome: &'static str, n: u64, elapsed: Option<Duration>) {
        match self.registered() {
            Some(r) => {
                let s = &r.reads[index(&READ_OPS, op) * READ_OUTCOMES.len() + index(&READ_OUTCOMES, outcome)];
                s.counter.increment(n);
                if let Some(elapsed) = elapsed {
                    s.histogram.record(elapsed);
                }
            }
            None => {
                let labels = self.labels(op, outcome);
                metrics::counter!(READS, labels.iter()).increment(n);
                if let Some(elapsed) = elapsed {
                    metrics::histogram!(READ_SECONDS, labels.iter()).record(elapsed);
                }
            }
        }
    }

    /// One read of `n` records that took `took` and ended with `outcome`
    /// (`None`: the database failed). Also records the outcome on the
    /// current span and in a DEBUG event.
    pub fn read(&self, op: &'static str, outcome: Option<Outcome>, n: u64, took: Duration) {
        let outcome = super::trace_read(op, outcome, took);
        self.count_read(op, outcome, n, Some(took));
    }

    /// A `get_many` of `hits + rest` ids that took `took`: `hits`
    /// answered by the cache, the `rest` by the database with `outcome`
    /// (`None`: the database failed, and no id was served).
    pub fn read_many(&self, hits: u64, rest: u64, outcome: Option<Outcome>, took: Duration) {
        let op = "get_many";
        if outcome.is_none() {
            return self.read(op, None, hits + rest, took);
        }
        if hits > 0 {
            self.count_read(op, "hit", hits, None);
        }
        // The call's latency goes under what decided it: the database when
        // any id went there.
        let (main, n) = match outcome {
            Some(o) if rest > 0 => (Some(o), rest),
            _ => (Some(Outcome::Hit), 0),
        };
        self.read(op, main, n, took);
    }

    /// One write that took `took`, which the database did or did not
    /// (`ok == false`) carry out.
    pub fn write(&self, op: &'static str, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        let elapsed = took;
        match self.registered() {
            Some(r) => {
                let s = &r.writes[index(&WRITE_OPS, op) * WRITE_OUTCOMES.len() + index(&WRITE_OUTCOMES, outcome)];
                s.counter.increment(1);
                s.histogram.record(elapsed);
            }
            None => {
                let labels = self.labels(op, outcome);
                metrics::histogram!(WRITE_SECONDS, labels.iter()).record(elapsed);
                metrics::counter!(WRITES, labels.iter()).increment(1);
            }
        }
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
