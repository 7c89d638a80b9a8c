//! The budget of one operation: every cache command runs through
//! [`CacheManager::guarded`], which applies the circuit breaker, retries
//! connection-level failures with a jittered exponential backoff, and stops
//! at the operation's deadline, however many commands the operation sends.
//!
//! The breaker's half-open probe is the backend's own check (`probe`: a
//! `PING`, or on a cluster a `PING` of every primary of the slot map it
//! trusts), not the call that happens to come first: that call may go to
//! the one node that is gone (a replay of keys on every node of a cluster
//! does), and would keep the breaker open while the rest of the cache, or
//! the replica that replaced the node, is there to serve.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::timeout_at;

use crate::cache::breaker::Transition;
use crate::cache::CacheManager;
use crate::error::{CacheError, CacheResult, ServerErrorKind};

/// Whether another try of a failed call could succeed: a connection-level
/// failure, unless the server itself refused the session (a database index
/// it does not have, an ACL user without rights): it would answer the same.
fn retryable(err: &CacheError) -> bool {
    matches!(err, CacheError::ConnectionError(_))
        && !matches!(
            err.server_error_kind(),
            Some(ServerErrorKind::Generic | ServerErrorKind::NoPermission | ServerErrorKind::Authentication)
        )
}

impl CacheManager {
    /// The deadline of one operation's cache budget.
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }

    /// The deadline of a walk over many keys: ten budgets.
    pub(crate) fn long_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout * 10
    }

    pub(crate) fn lease_ms(&self) -> u64 {
        self.config.lease_ms
    }

    pub(crate) fn lease_wait(&self) -> Duration {
        Duration::from_millis(self.config.lease_wait_ms)
    }

    /// Runs one cache primitive through the breaker, with retries of
    /// connection-level failures (jittered exponential backoff), all inside
    /// `deadline`. Counts and logs failures.
    pub(crate) async fn guarded<R, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        op: &'static str,
        call: F,
    ) -> CacheResult<R>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = CacheResult<R>>,
    {
        if self.admit(deadline)? {
            self.probe(deadline, op).await?;
        }
        let mut attempt = 0u32;
        loop {
            let err = match timeout_at(deadline, call()).await {
                Ok(Ok(v)) => return self.answered(v),
                Ok(Err(e @ (CacheError::ConnectionError(_) | CacheError::AuthenticationFailed(_)))) => {
                    self.count(|c| &c.connection_errors);
                    self.metrics.cache_errors("connection", 1);
                    self.status.failed(&e);
                    e
                }
                Ok(Err(e)) => return Err(self.refused(op, e)),
                Err(_elapsed) => {
                    self.count(|c| &c.timeouts);
                    self.metrics.cache_errors("timeout", 1);
                    CacheError::Timeout {
                        budget_ms: self.config.timeout_ms,
                    }
                }
            };
            if retryable(&err) && attempt < self.config.retry_attempts {
                let backoff = self.backoff(attempt);
                if tokio::time::Instant::now()
                    .checked_add(backoff)
                    .is_some_and(|t| t < deadline)
                {
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                    continue;
                }
            }
            return Err(self.give_up(op, err));
        }
    }

    /// Whether a command may be sent within `deadline`: the budget is not
    /// spent, and the breaker lets it through; `true` when it is half open
    /// and the caller must probe first. No await: the hot path stays one
    /// future.
    #[inline]
    fn admit(&self, deadline: tokio::time::Instant) -> CacheResult<bool> {
        if tokio::time::Instant::now() >= deadline {
            // The budget went to earlier steps of this operation: the cache
            // is not at fault, so neither the breaker nor the stats hear of it.
            return Err(CacheError::Timeout {
                budget_ms: self.config.timeout_ms,
            });
        }
        let mut allowed = self.breaker.allow();
        if allowed.is_err() && self.breaker.healed(self.contact.heals(), self.contact.heal_age()) {
            // The backend found the cache able to serve again: probe now.
            allowed = self.breaker.allow();
        }
        match allowed {
            Ok(probe) => Ok(probe),
            Err(open) => {
                self.count(|c| &c.breaker_skips);
                Err(CacheError::CircuitOpen {
                    failures: open.failures,
                    retry_in_ms: open.retry_in_ms,
                    last_error: self.status.last_failure(),
                })
            }
        }
    }

    /// The server answered `v`: served, unless the server may have lost
    /// recent invalidations.
    fn answered<R>(&self, v: R) -> CacheResult<R> {
        self.breaker_success();
        if self.contact_moved() {
            // The answer may come from a node that lost recent
            // invalidations (a promoted replica, a restart): not served
            // until they are delivered again.
            self.hand_over_recent();
            return Err(CacheError::ConnectionError(
                "the cache's primary may have changed: recent invalidations are delivered first".into(),
            ));
        }
        Ok(v)
    }

    /// The server answered, refusing the command: it is alive.
    fn refused(&self, op: &'static str, e: CacheError) -> CacheError {
        self.status.answered();
        self.count(|c| &c.command_errors);
        self.metrics.cache_errors("command", 1);
        self.breaker.success();
        self.warn(op, &e);
        e
    }

    /// No more tries for `err`: the breaker hears of it, and it is logged.
    fn give_up(&self, op: &'static str, err: CacheError) -> CacheError {
        if self.breaker.failure(false) == Transition::Opened {
            self.count(|c| &c.breaker_opened);
            self.metrics.breaker(true);
            if matches!(err, CacheError::Timeout { .. }) {
                // No answer, again and again: unreachable, for the
                // operator as for the breaker.
                self.status.failed(&err);
            }
            tracing::warn!(target: "storehaus", error = %err, "cache unavailable: circuit breaker opened; store operations go straight to the database");
        }
        if matches!(
            err,
            CacheError::ConnectionError(_) | CacheError::AuthenticationFailed(_)
        ) {
            // `status` logged it at WARN, once per state and cause.
            tracing::debug!(target: "storehaus", op, error = %err, "cache operation failed; falling back to the database");
        } else {
            self.warn(op, &err);
        }
        err
    }

    /// The breaker's half-open probe (see the module above): the backend's
    /// own check within `deadline`; its success closes the breaker, its
    /// failure keeps it open for another cool-down.
    async fn probe(&self, deadline: tokio::time::Instant, op: &'static str) -> CacheResult<()> {
        let err = match timeout_at(deadline, self.backend.probe()).await {
            Ok(Ok(())) => {
                self.breaker_success();
                return Ok(());
            }
            Ok(Err(e)) => {
                self.count(|c| &c.connection_errors);
                self.metrics.cache_errors("connection", 1);
                e
            }
            Err(_elapsed) => {
                self.count(|c| &c.timeouts);
                self.metrics.cache_errors("timeout", 1);
                CacheError::Timeout {
                    budget_ms: self.config.timeout_ms,
                }
            }
        };
        self.breaker.failure(true);
        self.warn(op, &err);
        Err(err)
    }

    /// Records a success; logs and reports the breaker closing.
    fn breaker_success(&self) {
        self.status.answered();
        if self.breaker.success() == Transition::Closed {
            self.metrics.breaker(false);
            tracing::info!(target: "storehaus", "cache reachable again: circuit breaker closed");
        }
    }

    /// Gives `lease` on `key` back (a load that failed, a write that wrote
    /// nothing) within `deadline`; a failure leaves the lease to expire.
    pub(crate) async fn release_lease(&self, key: &str, lease: &[u8], deadline: tokio::time::Instant) {
        let _ = self
            .guarded(deadline, "release_lease", || self.backend.release_lease(key, lease))
            .await;
    }

    /// Deletes `keys` (hints found stale), within the operation budget; a
    /// failure leaves them to their TTL.
    pub(crate) async fn drop_keys(&self, keys: &[String], op: &'static str) {
        let _ = self.guarded(self.deadline(), op, || self.backend.delete(keys)).await;
    }

    /// Counts `n` corrupt entries met (and removed or replaced).
    pub(crate) fn count_corrupt(&self, n: u64) {
        self.count_n(|c| &c.serialization_errors, n);
        self.metrics.cache_errors("corrupt", n);
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.config.retry_delay_ms.max(1).saturating_mul(1 << attempt.min(10));
        // Full jitter between half and all of the exponential delay.
        let jittered = base / 2 + rand::random_range(0..=base / 2);
        Duration::from_millis(jittered)
    }

    /// Logs a cache failure at WARN at most once every 5 s (with a count of
    /// the suppressed ones), at DEBUG otherwise.
    pub(crate) fn warn(&self, op: &str, err: &CacheError) {
        let now = self.started.elapsed().as_millis() as u64 + 5_001;
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now >= last + 5_000
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed_warnings.swap(0, Ordering::Relaxed);
            tracing::warn!(target: "storehaus", op, error = %err, suppressed, "cache operation failed; falling back to the database");
        } else {
            self.suppressed_warnings.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "storehaus", op, error = %err, "cache operation failed");
        }
    }
}
