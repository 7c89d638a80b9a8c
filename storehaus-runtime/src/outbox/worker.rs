//! The worker that drains the outbox into the cache: one per cache manager
//! and database, started by the first `watch_external_writes`, ended when
//! the cache manager is dropped.
//!
//! Each pass (see `pass`) delivers what is visible and not yet delivered
//! and renews the deployment. Passes run on a `pg_notify` wake-up (a
//! listener connection of its own, re-established when lost, with a
//! catch-up pass each time) and at least every poll interval, so nothing
//! depends on a notification arriving. While a pass fails, leaves a full
//! page behind or the deployment starts over, cached reads of the manager
//! bypass the cache. Every few seconds the worker also expires deployments
//! that stopped renewing, prunes the log and checks the watched tables'
//! triggers (see `maintain`).
//!
//! A deployment whose position cannot be trusted (it expired while this
//! process was away or stalled, the database was restored or replaced, the
//! position is ahead of the server) starts over: its place in the log
//! moves to the current end, and every store prefix it watches is cleared
//! from the cache first, so nothing it cached before is served again.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::install::{current_end, restart_at, watched};
use super::maintain;
use super::pass::{self, Pass, Round};
use crate::cache::gate::{lock, Deployment, WorkerState};
use crate::cache::CacheManager;
use crate::error::{CacheError, Result, StorehausError};
use crate::keys;
use crate::store::pool::DbPool;

/// Prune batches per maintenance at most (each of `maintain::PRUNE_BATCH` entries).
const PRUNE_ROUNDS: usize = 100;

pub(crate) struct Worker {
    manager: Weak<CacheManager>,
    pool: DbPool,
    deployment: Deployment,
    state: Arc<WorkerState>,
    poll: Duration,
    /// The round of pages under way (PostgreSQL).
    round: Option<Round>,
}

impl Worker {
    pub fn new(manager: &Arc<CacheManager>, pool: DbPool, deployment: Deployment, state: Arc<WorkerState>) -> Self {
        Worker {
            manager: Arc::downgrade(manager),
            pool,
            deployment,
            state,
            poll: manager.config().outbox_poll_interval(),
            round: None,
        }
    }

    /// How often the whole outbox is maintained: every 10 s, or three
    /// times per expiry when that is shorter.
    fn maintain_every(&self) -> Duration {
        (self.deployment.expiry / 3).min(Duration::from_secs(10))
    }

    pub async fn run(mut self, location: String) {
        tracing::debug!(target: "storehaus", %location, deployment = %self.deployment.name, "outbox worker started");
        let listener = match &self.pool {
            DbPool::Postgres(p) => Some(tokio::spawn(super::listen::listen(
                p.clone(),
                self.state.clone(),
                self.deployment.name.clone(),
            ))),
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(_) => None,
        };
        let mut backoff = Duration::from_millis(50);
        let mut last_maintained = tokio::time::Instant::now();
        loop {
            let Some(manager) = self.manager.upgrade() else {
                break;
            };
            let wait = match self.pass(&manager).await {
                Ok(more) => {
                    manager.watchers().set_lagging(&self.state, more);
                    manager.watchers().renewed(&self.state);
                    backoff = Duration::from_millis(50);
                    if more {
                        Duration::ZERO
                    } else {
                        self.poll
                    }
                }
                Err(e) => {
                    manager.watchers().set_lagging(&self.state, true);
                    manager.warn("outbox", &CacheError::ConnectionError(e.to_string().into()));
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.poll.max(Duration::from_millis(50)));
                    wait
                }
            };
            if last_maintained.elapsed() >= self.maintain_every() {
                last_maintained = tokio::time::Instant::now();
                self.maintain().await;
            }
            drop(manager);
            self.state.passes.send_modify(|n| *n += 1);
            if !wait.is_zero() {
                let _ = tokio::time::timeout(wait, self.state.wake.notified()).await;
            }
        }
        if let Some(listener) = listener {
            listener.abort();
        }
        tracing::debug!(target: "storehaus", %location, "outbox worker stopped: its cache manager is gone");
    }

    /// One pass; `Ok(true)` when more is waiting at once.
    #[tracing::instrument(target = "storehaus", skip_all, fields(deployment = %self.deployment.name, rows))]
    async fn pass(&mut self, manager: &Arc<CacheManager>) -> Result<bool> {
        let name = &self.deployment.name;
        let pass = match &self.pool {
            DbPool::Postgres(p) => pass::postgres(manager, &self.pool, p, name, &self.state, &mut self.round).await?,
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(p) => pass::sqlite(manager, &self.pool, p, name, &self.state).await?,
        };
        match pass {
            Pass::Delivered { rows, more } => {
                tracing::Span::current().record("rows", rows);
                Ok(more)
            }
            Pass::Untrusted(reason) => {
                manager.watchers().set_lagging(&self.state, true);
                self.start_over(manager, &reason).await?;
                Ok(true)
            }
        }
    }

    /// Starts the deployment over: clears every store prefix it watches
    /// from the cache, then moves its position to the log's end as it was
    /// before the clear (and un-expires it). A failure leaves the position
    /// untrusted, to be started over by the next pass.
    async fn start_over(&self, manager: &Arc<CacheManager>, reason: &str) -> Result<()> {
        tracing::warn!(target: "storehaus",
            deployment = %self.deployment.name, reason,
            "the outbox position of this cache deployment cannot be trusted: its cached entries are cleared and it starts over at the log's end"
        );
        let own: Vec<(String, String)> = lock(&self.state.watches).clone();
        let end = current_end(&self.pool).await?;
        let mut prefixes: BTreeSet<String> = own.iter().map(|(_, p)| p.clone()).collect();
        prefixes.extend(
            watched(&self.pool, &self.deployment.name)
                .await?
                .into_iter()
                .map(|(_, p)| p),
        );
        clear_prefixes(manager, &prefixes).await?;
        restart_at(&self.pool, &self.deployment, end, reason, &own).await?;
        *lock(&self.state.started_over) = Some(reason.to_string());
        Ok(())
    }

    /// Expiry, pruning and the trigger check; failures are logged, and
    /// retried the next time.
    async fn maintain(&self) {
        match maintain::expire(&self.pool).await {
            Ok(expired) if !expired.is_empty() => {
                tracing::warn!(target: "storehaus", ?expired, "outbox deployments expired: they had not renewed within their expiry");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(target: "storehaus", error = %e, "outbox expiry failed"),
        }
        // In batches, until the log is pruned or a round's worth is done:
        // a log written faster than one batch per interval must not grow.
        for _ in 0..PRUNE_ROUNDS {
            match maintain::prune(&self.pool).await {
                Ok(n) if n == maintain::PRUNE_BATCH as u64 => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(target: "storehaus", error = %e, "outbox prune failed");
                    break;
                }
            }
        }
        match maintain::check_triggers(&self.pool, &self.state).await {
            Ok(true) => {
                let missing = lock(&self.state.missing).clone();
                if missing.is_empty() {
                    tracing::info!(target: "storehaus", "the watched tables have their outbox triggers again");
                } else {
                    tracing::warn!(target: "storehaus", ?missing,
                        "watched tables lost their outbox triggers (re-created, swapped or altered): their writes no longer reach the cache; call watch_external_writes again or install external_writes_sql()");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(target: "storehaus", error = %e, "outbox trigger check failed"),
        }
    }
}

/// Clears every entry of the store prefixes `prefixes` (records, index
/// entries, query results and generations) from the cache.
pub(crate) async fn clear_prefixes(manager: &CacheManager, prefixes: &BTreeSet<String>) -> Result<()> {
    for prefix in prefixes {
        let glob = keys::store_scope(manager.global_prefix(), prefix) + "*";
        manager.clear_glob(&glob).await.map_err(StorehausError::Cache)?;
    }
    Ok(())
}
