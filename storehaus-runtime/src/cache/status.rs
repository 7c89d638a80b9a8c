//! Whether the cache answers, as an operator needs to see it: one log line
//! per change of state or of cause — connected, authentication refused,
//! unreachable (nothing listening, a refused session setup such as a
//! database index the server does not have, no answer), recovered — naming
//! the cause in the server's own words. Between changes nothing more is
//! logged at WARN (the per-operation failures stay at DEBUG, rate-limited).
//!
//! The last failure is also kept for the circuit breaker's error, so a
//! health check made while the breaker is open still says why.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::CacheError;

/// The states an operator tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Reach {
    /// Nothing asked yet.
    Unknown = 0,
    Connected = 1,
    /// The server refused our credentials.
    AuthFailed = 2,
    /// Refused, dropped, no answer, or the session setup was refused.
    Unreachable = 3,
}

impl Reach {
    fn from_u8(v: u8) -> Reach {
        match v {
            1 => Reach::Connected,
            2 => Reach::AuthFailed,
            3 => Reach::Unreachable,
            _ => Reach::Unknown,
        }
    }
}

/// A change of cause within one failing state is logged again only after
/// this long, so causes that alternate (refused, then reset) cannot flood
/// the log.
const CAUSE_CHANGE_QUIET: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Failure {
    /// The last failure (for the breaker's error and health checks).
    last: Option<Arc<CacheError>>,
    /// The cause last logged, and when.
    logged_cause: String,
    logged_at: Option<Instant>,
    /// When the cache stopped answering.
    since: Option<Instant>,
}

/// The reachability of one manager's cache server.
pub(crate) struct Status {
    /// The cache URL without its password, for the log lines.
    url: String,
    state: AtomicU8,
    failure: Mutex<Failure>,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("state", &Reach::from_u8(self.state.load(Ordering::Relaxed)))
            .finish()
    }
}

impl Status {
    pub fn new(redacted_url: String) -> Status {
        Status {
            url: redacted_url,
            state: AtomicU8::new(Reach::Unknown as u8),
            failure: Mutex::new(Failure::default()),
        }
    }

    /// The server answered. One atomic load unless the state changes.
    pub fn answered(&self) {
        if self.state.load(Ordering::Relaxed) == Reach::Connected as u8 {
            return;
        }
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        let before = Reach::from_u8(self.state.swap(Reach::Connected as u8, Ordering::Relaxed));
        match before {
            Reach::Connected => {}
            Reach::Unknown => tracing::info!(target: "storehaus", url = %self.url, "cache connected"),
            Reach::AuthFailed | Reach::Unreachable => {
                let down_ms = failure.since.map_or(0, |t| t.elapsed().as_millis() as u64);
                tracing::warn!(target: "storehaus",
                    url = %self.url,
                    was = %failure.logged_cause,
                    down_ms,
                    "cache recovered: the server answers again; cached reads resume"
                );
            }
        }
        *failure = Failure::default();
    }

    /// A call failed at the connection level (`ConnectionError`,
    /// `AuthenticationFailed`). Logs at WARN when the state or its cause
    /// changed.
    pub fn failed(&self, err: &CacheError) {
        let reach = match err {
            CacheError::AuthenticationFailed(_) => Reach::AuthFailed,
            _ => Reach::Unreachable,
        };
        let cause = err.to_string();
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.last = Some(Arc::new(err.clone()));
        let before = Reach::from_u8(self.state.swap(reach as u8, Ordering::Relaxed));
        if matches!(before, Reach::Unknown | Reach::Connected) {
            failure.since = Some(Instant::now());
        }
        if before == reach {
            let quiet = failure.logged_at.is_some_and(|t| t.elapsed() < CAUSE_CHANGE_QUIET);
            if failure.logged_cause == cause || quiet {
                return;
            }
        }
        failure.logged_cause.clone_from(&cause);
        failure.logged_at = Some(Instant::now());
        drop(failure);
        match reach {
            Reach::AuthFailed => tracing::warn!(target: "storehaus",
                url = %self.url,
                cause = %cause,
                "cache authentication failed: check the user and password of the cache URL; store operations use the database alone until it is fixed"
            ),
            _ => tracing::warn!(target: "storehaus",
                url = %self.url,
                cause = %cause,
                "cache unreachable: store operations use the database alone until it answers"
            ),
        }
    }

    /// The last connection-level failure, while the cache is not answering.
    pub fn last_failure(&self) -> Option<Arc<CacheError>> {
        if matches!(
            Reach::from_u8(self.state.load(Ordering::Relaxed)),
            Reach::Connected | Reach::Unknown
        ) {
            return None;
        }
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).last.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_failure_is_kept_until_an_answer() {
        let status = Status::new("redis://127.0.0.1:1".into());
        assert!(status.last_failure().is_none());
        status.failed(&CacheError::ConnectionError("refused".into()));
        let last = status.last_failure().expect("kept");
        assert!(last.to_string().contains("refused"), "{last}");
        status.answered();
        assert!(status.last_failure().is_none());
    }
}
