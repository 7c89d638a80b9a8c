//! The metrics of [`super`] without the `metrics` cargo feature: the same
//! calls, nothing recorded (the read's outcome still goes on its span).

use std::time::Duration;

use super::Outcome;

/// One store's metrics: nothing to keep.
#[derive(Debug)]
pub(crate) struct StoreMetrics;

impl StoreMetrics {
    pub fn new(_table: &'static str, _prefix: &str) -> Self {
        StoreMetrics
    }

    /// One read: its outcome on the current span and in a DEBUG event.
    pub fn read(&self, op: &'static str, outcome: Option<Outcome>, _n: u64, took: Duration) {
        super::trace_read(op, outcome, took);
    }

    /// A `get_many`: its outcome on the current span, as with the recorder.
    pub fn read_many(&self, _hits: u64, rest: u64, outcome: Option<Outcome>, took: Duration) {
        let main = match outcome {
            Some(o) if rest > 0 => Some(o),
            Some(_) => Some(Outcome::Hit),
            None => None,
        };
        self.read("get_many", main, 0, took);
    }

    pub fn write(&self, _op: &'static str, _ok: bool, _took: Duration) {}
}

/// The manager-wide metrics: nothing to keep.
#[derive(Debug)]
pub(crate) struct ManagerMetrics;

impl ManagerMetrics {
    pub fn new(_global: &str) -> Self {
        ManagerMetrics
    }

    pub fn cache_errors(&self, _kind: &'static str, _n: u64) {}

    pub fn fills(&self, _written: u64, _rejected: u64) {}

    pub fn breaker(&self, _open: bool) {}
}
