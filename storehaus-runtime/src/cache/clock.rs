//! The monotonic clock the cache's timed parts read (the circuit breaker,
//! the log of recent invalidations). In the crate's own unit tests it can
//! be moved forward, as moka's mock clock can, so that those tests need
//! not sleep; elsewhere it is `Instant::now()` and takes no space.

use std::time::Instant;

#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(test)]
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Clock {
    /// How far tests moved the clock forward, in nanoseconds.
    #[cfg(test)]
    skew_ns: AtomicU64,
}

impl Clock {
    /// Now.
    #[inline]
    pub fn now(&self) -> Instant {
        #[cfg(test)]
        return Instant::now() + Duration::from_nanos(self.skew_ns.load(Ordering::Relaxed));
        #[cfg(not(test))]
        Instant::now()
    }

    /// Moves the clock `by` forward.
    #[cfg(test)]
    pub fn advance(&self, by: Duration) {
        self.skew_ns.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}
