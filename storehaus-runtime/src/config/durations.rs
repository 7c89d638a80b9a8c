//! The `Duration` forms of [`CacheConfig`]'s millisecond setters, so that
//! `with_timeout(2)` meant as two seconds cannot happen: write
//! `with_timeout_duration(Duration::from_secs(2))`. Each one stores whole
//! milliseconds, rounding up (a sub-millisecond duration is 1 ms, never the
//! 0 that validation refuses); a duration too long for a `u64` of
//! milliseconds saturates, and [`CacheManager::new`](crate::CacheManager::new)
//! then rejects it like any value above its limit.

use std::time::Duration;

use super::CacheConfig;

/// Whole milliseconds, rounded up.
fn millis(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

impl CacheConfig {
    /// [`with_timeout`](Self::with_timeout) as a `Duration`: the cache's
    /// time budget for one store operation (default 500 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// use storehaus_runtime::CacheConfig;
    ///
    /// let config = CacheConfig::new("memory://", 60, "app").with_timeout_duration(Duration::from_secs(2));
    /// assert_eq!(config.timeout(), Duration::from_secs(2));
    /// ```
    pub fn with_timeout_duration(self, timeout: Duration) -> Self {
        self.with_timeout(millis(timeout))
    }

    /// [`with_retry_delay`](Self::with_retry_delay) as a `Duration`: the base
    /// of the jittered exponential retry backoff (default 50 ms).
    pub fn with_retry_delay_duration(self, delay: Duration) -> Self {
        self.with_retry_delay(millis(delay))
    }

    /// [`with_lease_ttl`](Self::with_lease_ttl) as a `Duration`: how long a
    /// reader's fill lease lives (default 2 s).
    pub fn with_lease_ttl_duration(self, lease: Duration) -> Self {
        self.with_lease_ttl(millis(lease))
    }

    /// [`with_lease_wait`](Self::with_lease_wait) as a `Duration`: how long a
    /// reader waits for another process's fill (default 200 ms).
    pub fn with_lease_wait_duration(self, wait: Duration) -> Self {
        self.with_lease_wait(millis(wait))
    }

    /// [`with_circuit_breaker`](Self::with_circuit_breaker) with its
    /// cool-down as a `Duration` (defaults: 5 failures, 1 s).
    pub fn with_circuit_breaker_duration(self, threshold: u32, cooldown: Duration) -> Self {
        self.with_circuit_breaker(threshold, millis(cooldown))
    }

    /// [`with_wait_for_replicas`](Self::with_wait_for_replicas) with its
    /// timeout as a `Duration`.
    pub fn with_wait_for_replicas_duration(self, replicas: u32, timeout: Duration) -> Self {
        self.with_wait_for_replicas(replicas, millis(timeout))
    }

    /// [`with_outbox_poll_interval`](Self::with_outbox_poll_interval) as a
    /// `Duration` (default 1 s).
    pub fn with_outbox_poll_interval_duration(self, interval: Duration) -> Self {
        self.with_outbox_poll_interval(millis(interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_whole_milliseconds_rounded_up() {
        assert_eq!(millis(Duration::from_secs(2)), 2_000);
        assert_eq!(millis(Duration::from_micros(1)), 1, "never 0");
        assert_eq!(millis(Duration::from_micros(1_500)), 2);
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn each_setter_matches_its_millisecond_twin() {
        let base = || CacheConfig::new("memory://", 60, "app");
        let d = Duration::from_millis(1_234);
        let by_duration = base()
            .with_timeout_duration(d)
            .with_retry_delay_duration(d)
            .with_lease_ttl_duration(d)
            .with_lease_wait_duration(d)
            .with_circuit_breaker_duration(3, d)
            .with_wait_for_replicas_duration(1, d)
            .with_outbox_poll_interval_duration(d);
        let by_ms = base()
            .with_timeout(1_234)
            .with_retry_delay(1_234)
            .with_lease_ttl(1_234)
            .with_lease_wait(1_234)
            .with_circuit_breaker(3, 1_234)
            .with_wait_for_replicas(1, 1_234)
            .with_outbox_poll_interval(1_234);
        assert_eq!(format!("{by_duration:?}"), format!("{by_ms:?}"));
    }

    #[test]
    fn an_absurd_duration_is_refused_by_validation_not_wrapped() {
        let config = CacheConfig::new("memory://", 60, "app").with_timeout_duration(Duration::MAX);
        assert!(crate::CacheManager::new(config).is_err());
    }
}
