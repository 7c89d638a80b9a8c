//! The workers that feed one cache manager's read gate (the outbox's, the
//! write-ahead log's), what its reads need to know of them, and what its
//! health check reports of them. The cache owns this state; the workers
//! (`crate::outbox`, `crate::wal`) set it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::server::HealthWarning;

/// How this manager's cache is known in the outbox.
#[derive(Debug, Clone)]
pub(crate) struct Deployment {
    /// Its name: the configured one, or for an in-process cache that name
    /// and an id of the manager (an in-process cache is its own deployment).
    pub name: String,
    /// An in-process cache: its position is deleted, not kept, once it
    /// expires (nobody can come back to it).
    pub ephemeral: bool,
    /// How long it may go without renewing before another worker expires it.
    pub expiry: Duration,
}

/// The workers of one cache manager, one per database.
#[derive(Debug)]
pub(crate) struct Watchers {
    pub(crate) deployment: Deployment,
    workers: Mutex<HashMap<String, Arc<WorkerState>>>,
    /// Workers whose last pass failed, left a full batch behind or is
    /// starting over.
    lagging: AtomicUsize,
    /// The earliest time (ms since `born`) by which some worker must have
    /// completed a pass again, or reads bypass the cache: a process that
    /// stalled for longer than its deployment's expiry may have been
    /// expired meanwhile. `u64::MAX` while no worker runs.
    due_ms: AtomicU64,
    born: Instant,
}

/// One worker's shared state.
#[derive(Debug)]
pub(crate) struct WorkerState {
    pub(crate) wake: Notify,
    /// Passes completed (successful or not).
    pub(crate) passes: watch::Sender<u64>,
    lagging: AtomicBool,
    /// When its last pass succeeded (ms since the registry's `born`).
    ok_ms: AtomicU64,
    pub(crate) backlog: AtomicU64,
    pub(crate) lag_ms: AtomicU64,
    pub(crate) delivered: AtomicU64,
    /// The (table, store prefix) pairs this process watches through it.
    pub(crate) watches: Mutex<Vec<(String, String)>>,
    /// Watched tables that lost outbox triggers: table → relations.
    pub(crate) missing: Mutex<Vec<(String, Vec<String>)>>,
    /// Why the deployment last started over (taken by the next health check).
    pub(crate) started_over: Mutex<Option<String>>,
    /// What another kind of worker (the write-ahead log's) has to report:
    /// standing conditions, replaced by each of its checks.
    pub(crate) standing: Mutex<Vec<HealthWarning>>,
    /// ...and events, taken by the next health check.
    pub(crate) events: Mutex<Vec<HealthWarning>>,
}

impl Watchers {
    pub fn new(deployment: Deployment) -> Self {
        Watchers {
            deployment,
            workers: Mutex::default(),
            lagging: AtomicUsize::new(0),
            due_ms: AtomicU64::new(u64::MAX),
            born: Instant::now(),
        }
    }

    /// Whether a worker of this manager is behind, or has not completed a
    /// pass for half its deployment's expiry: an entry of the outbox may
    /// make a cached value stale. One atomic load while no worker runs.
    #[inline]
    pub fn lagging(&self) -> bool {
        if self.lagging.load(Ordering::Acquire) > 0 {
            return true;
        }
        let due = self.due_ms.load(Ordering::Acquire);
        due != u64::MAX && self.now_ms() > due
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// (entries waiting, age of the oldest in ms, entries delivered) over
    /// every worker.
    pub fn figures(&self) -> (u64, u64, u64) {
        self.each().iter().fold((0, 0, 0), |(b, l, d), w| {
            (
                b + w.backlog.load(Ordering::Relaxed),
                l.max(w.lag_ms.load(Ordering::Relaxed)),
                d + w.delivered.load(Ordering::Relaxed),
            )
        })
    }

    /// What a health check reports: watched tables that lost their outbox
    /// triggers, and a start-over since the previous check.
    pub fn warnings(&self) -> Vec<HealthWarning> {
        let mut out = Vec::new();
        for w in self.each() {
            for (table, relations) in lock(&w.missing).iter() {
                out.push(HealthWarning::OutboxTriggersMissing {
                    table: table.clone(),
                    relations: relations.clone(),
                });
            }
            if let Some(reason) = lock(&w.started_over).take() {
                out.push(HealthWarning::OutboxStartedOver {
                    deployment: self.deployment.name.clone(),
                    reason,
                });
            }
            out.extend(lock(&w.standing).iter().cloned());
            out.append(&mut lock(&w.events));
        }
        out
    }

    fn each(&self) -> Vec<Arc<WorkerState>> {
        lock(&self.workers).values().cloned().collect()
    }

    /// The worker of `location`, started by `spawn` (given its fresh state
    /// and the location) if none runs: every kind of worker of this manager
    /// (the outbox's, the write-ahead log's) is gated the same way.
    pub(crate) fn ensure_worker(
        &self,
        location: String,
        spawn: impl FnOnce(Arc<WorkerState>, String),
    ) -> Arc<WorkerState> {
        let mut workers = lock(&self.workers);
        if let Some(state) = workers.get(&location) {
            state.wake.notify_one();
            return state.clone();
        }
        let state = Arc::new(WorkerState {
            wake: Notify::new(),
            passes: watch::channel(0).0,
            lagging: AtomicBool::new(false),
            ok_ms: AtomicU64::new(self.now_ms()),
            backlog: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            watches: Mutex::default(),
            missing: Mutex::default(),
            started_over: Mutex::default(),
            standing: Mutex::default(),
            events: Mutex::default(),
        });
        workers.insert(location.clone(), state.clone());
        drop(workers);
        self.renewed(&state);
        spawn(state.clone(), location);
        state
    }

    pub(crate) fn set_lagging(&self, state: &WorkerState, lagging: bool) {
        if state.lagging.swap(lagging, Ordering::AcqRel) != lagging {
            if lagging {
                self.lagging.fetch_add(1, Ordering::AcqRel);
            } else {
                self.lagging.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// `state` completed a pass: reads may trust the cache for another half
    /// expiry (as far as this worker is concerned).
    pub(crate) fn renewed(&self, state: &WorkerState) {
        state.ok_ms.store(self.now_ms(), Ordering::Release);
        let half = (self.deployment.expiry / 2).as_millis() as u64;
        let due = self
            .each()
            .iter()
            .map(|w| w.ok_ms.load(Ordering::Acquire).saturating_add(half))
            .min()
            .unwrap_or(u64::MAX);
        self.due_ms.store(due, Ordering::Release);
    }
}

impl WorkerState {
    /// Wakes the worker and waits for a pass that starts after this call
    /// (bounded: a worker stuck on a slow database gives up the wait after
    /// 30 s, with the reads still gated while it is behind).
    pub async fn catch_up(&self) {
        let mut passes = self.passes.subscribe();
        let seen = *passes.borrow_and_update();
        let two_passes = async {
            // The pass under way may have started before the caller's
            // writes; the one after it has not.
            for n in 1..=2 {
                self.wake.notify_one();
                if passes.wait_for(|p| *p >= seen + n).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), two_passes).await;
    }

    /// Remembers that this process watches `table` under `prefix`.
    pub fn watch(&self, table: &str, prefix: &str) {
        let mut watches = lock(&self.watches);
        let pair = (table.to_string(), prefix.to_string());
        if !watches.contains(&pair) {
            watches.push(pair);
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
