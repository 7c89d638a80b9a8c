//! The log of recent invalidations: what was *acknowledged* by the cache
//! in the last N seconds, kept so that it can be delivered again when the
//! server behind the cache may have lost it.
//!
//! No Redis deployment keeps every acknowledged write through a failover
//! or a restart from a snapshot: a `DEL` acknowledged by a primary can be
//! missing on the replica promoted in its place, and the old row comes
//! back. This is not `pending` (work that never reached the cache): every
//! entry here did reach it. When the backend's contact epoch moves (a new
//! `run_id`, another primary, a failed or redirected cluster command; see
//! `backend::contact`), the manager hands the whole log to `pending` as
//! plain deletions (generation counters are deleted too, so that they come
//! back at a fresh random seed and no result cached under a lost bump can
//! match again), and cached reads bypass the cache until it is delivered:
//! to the new primary, or to the restarted node.
//!
//! Bounded twice: keys recorded longer ago than the window are dropped on
//! the next write, and at most `max` keys are kept (the oldest go first,
//! counted in `overflows`); a key recorded again is kept once. Replayed
//! pending work was logged when it was first attempted and is not logged
//! again. A write costs one uncontended lock and the copy of its key names;
//! reads never touch the log (two atomic loads compare epochs).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::clock::Clock;

#[derive(Debug, Default)]
struct Log {
    /// Each key once: when it was last recorded, and its store's scope.
    keys: HashMap<String, (Instant, Arc<str>)>,
    /// Every record, oldest first (a key recorded again appears twice;
    /// only its latest record keeps it in `keys`).
    order: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
pub(crate) struct Recent {
    window: Duration,
    max: usize,
    log: Mutex<Log>,
    /// The contact epoch whose log was last handed to replay.
    seen: AtomicU64,
    overflows: AtomicU64,
    handovers: AtomicU64,
    /// When the last overflow was logged (ms since `born`), to log one a minute.
    warned_ms: AtomicU64,
    born: Instant,
    clock: Clock,
}

impl Recent {
    /// A log of the last `window` (zero: no log) holding at most `max` keys.
    pub fn new(window: Duration, max: usize) -> Self {
        Recent {
            window,
            max: max.max(1),
            log: Mutex::new(Log::default()),
            seen: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            handovers: AtomicU64::new(0),
            warned_ms: AtomicU64::new(0),
            born: Instant::now(),
            clock: Clock::default(),
        }
    }

    /// The epoch whose log was last handed to replay. One atomic load.
    #[inline]
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    /// Records that the log was handed to replay for `epoch`; `false` when
    /// another task did so for this epoch or a later one already.
    pub fn mark_seen(&self, epoch: u64) -> bool {
        let first = self.seen.fetch_max(epoch, Ordering::AcqRel) < epoch;
        if first {
            self.handovers.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// How many times the log was handed to replay.
    pub fn handovers(&self) -> u64 {
        self.handovers.load(Ordering::Relaxed)
    }

    /// How many keys were dropped before their time to respect the bound.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// Remembers an invalidation of `keys` and `counters` in `scope`
    /// (`{global}:{prefix}:`); a key recorded again is kept once, from its
    /// latest record.
    pub fn record(&self, scope: &str, keys: &[String], counters: &[String]) {
        if self.window.is_zero() || (keys.is_empty() && counters.is_empty()) {
            return;
        }
        let now = self.clock.now();
        let scope: Arc<str> = Arc::from(scope);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys.iter().chain(counters) {
            log.keys.insert(key.clone(), (now, scope.clone()));
            log.order.push_back((now, key.clone()));
        }
        self.prune(&mut log, now);
    }

    fn prune(&self, log: &mut Log, now: Instant) {
        if log.order.len() > 2 * self.max.max(log.keys.len()) {
            // Keys recorded again left older records behind: keep one per key.
            let mut order: Vec<(Instant, String)> = log.keys.iter().map(|(k, (at, _))| (*at, k.clone())).collect();
            order.sort_unstable();
            log.order = order.into();
        }
        while let Some((at, _)) = log.order.front() {
            let expired = now.duration_since(*at) > self.window;
            if !expired && log.keys.len() <= self.max {
                break;
            }
            let Some((at, key)) = log.order.pop_front() else { break };
            if log.keys.get(&key).is_some_and(|(last, _)| *last == at) {
                log.keys.remove(&key);
                if !expired {
                    self.overflowed(now);
                }
            }
        }
    }

    /// Counts a key dropped before its time; logs at most once a minute.
    fn overflowed(&self, now: Instant) {
        self.overflows.fetch_add(1, Ordering::Relaxed);
        let now_ms = now.duration_since(self.born).as_millis() as u64 + 60_001;
        let last = self.warned_ms.load(Ordering::Relaxed);
        if now_ms >= last + 60_000
            && self
                .warned_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(target: "storehaus",
                max = self.max,
                "too many recent invalidations to remember: the oldest are dropped (raise with_max_pending_invalidations or lower with_recent_invalidations)"
            );
        }
    }

    /// What the log holds now, by scope: the keys to delete again.
    pub fn snapshot(&self) -> Vec<(String, Vec<String>)> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        self.prune(&mut log, self.clock.now());
        let mut by_scope: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for (key, (_, scope)) in &log.keys {
            by_scope.entry(scope.clone()).or_default().push(key.clone());
        }
        let mut out: Vec<(String, Vec<String>)> = by_scope
            .into_iter()
            .map(|(scope, keys)| (scope.to_string(), keys))
            .collect();
        for (_, keys) in &mut out {
            keys.sort_unstable();
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: std::ops::Range<usize>) -> Vec<String> {
        n.map(|i| format!("a:u:{i}")).collect()
    }

    #[test]
    fn the_log_keeps_keys_and_counters_by_scope() {
        let r = Recent::new(Duration::from_secs(60), 100);
        r.record("a:u:", &keys(0..2), &["a:u:query:gen".to_string()]);
        r.record("a:u:", &keys(1..3), &[]);
        r.record("a:n:", &["a:n:1".to_string()], &[]);
        let snap = r.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0], ("a:n:".to_string(), vec!["a:n:1".to_string()]));
        assert_eq!(snap[1].1, vec!["a:u:0", "a:u:1", "a:u:2", "a:u:query:gen"]);
    }

    #[test]
    fn the_log_is_bounded_in_time_and_size() {
        let r = Recent::new(Duration::from_secs(60), 5);
        r.record("a:u:", &keys(0..3), &[]);
        r.record("a:u:", &keys(3..6), &[]);
        assert_eq!(r.snapshot()[0].1, keys(1..6), "the oldest key went: 6 > 5 keys");
        assert_eq!(r.overflows(), 1);
        for _ in 0..10 {
            r.record("a:u:", &keys(1..2), &[]);
        }
        assert_eq!(r.snapshot()[0].1, keys(1..6), "a key recorded again is kept once");
        assert_eq!(r.overflows(), 1);
        r.clock.advance(Duration::from_secs(59));
        assert_eq!(r.snapshot()[0].1, keys(1..6), "within the window");
        r.clock.advance(Duration::from_secs(2));
        assert!(r.snapshot().is_empty(), "older than the window");
        let off = Recent::new(Duration::ZERO, 5);
        off.record("a:u:", &keys(0..1), &[]);
        assert!(off.snapshot().is_empty());
    }

    #[test]
    fn an_epoch_is_handed_over_once() {
        let r = Recent::new(Duration::from_secs(1), 5);
        assert!(r.mark_seen(1));
        assert!(!r.mark_seen(1));
        assert!(r.mark_seen(3));
        assert!(!r.mark_seen(2));
        assert_eq!(r.seen(), 3);
    }
}
