//! A lock-free circuit breaker.
//!
//! Closed: every cache call goes through. After `threshold` consecutive
//! failures it opens: calls are skipped without touching the network. Once
//! `cooldown` has passed it lets exactly one call through as a probe
//! (half-open); the probe's success closes it, its failure re-opens it for
//! another cooldown. A probe whose caller vanished (a cancelled future) is
//! presumed lost after one more cooldown, so the breaker can never stick.
//!
//! When the backend finds the deployment able to serve again (a failover
//! completed), the next call probes at once, and for [`HEALING`] a failed
//! probe is tried again after [`HEALING_RETRY`] rather than a whole
//! cooldown: a deployment that has just healed often needs a moment more
//! before every connection follows it (a new cluster connection learning
//! the slot map), and a cooldown lost to that moment would keep the cache
//! off long after it could serve.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::clock::Clock;

/// How long after a heal failed probes are retried quickly.
pub(crate) const HEALING: Duration = Duration::from_secs(10);

/// How soon a failed probe is tried again while healing.
pub(crate) const HEALING_RETRY: Duration = Duration::from_millis(100);

/// Why a call was refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Open {
    pub failures: u32,
    pub retry_in_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    base: Instant,
    clock: Clock,
    failures: AtomicU32,
    /// Milliseconds since `base` (+1) when the breaker opened; 0 = closed.
    opened_at: AtomicU64,
    /// Milliseconds since `base` (+1) when the current probe started; 0 = none.
    probe_at: AtomicU64,
    /// The backend's heal count last acted on (see [`healed`](Self::healed)).
    heals_seen: AtomicU64,
    /// The next probe need not wait for the cool-down.
    expedited: AtomicBool,
    /// Milliseconds since `base` (+1) until which a failed probe waits only
    /// [`HEALING_RETRY`]; 0 = not healing.
    healing_until: AtomicU64,
}

/// What a state change means, for the caller to log and count.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown_ms: u64) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms,
            base: Instant::now(),
            clock: Clock::default(),
            failures: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            probe_at: AtomicU64::new(0),
            heals_seen: AtomicU64::new(0),
            expedited: AtomicBool::new(false),
            healing_until: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now().duration_since(self.base).as_millis() as u64 + 1
    }

    /// Whether the breaker is open now (a probe may still be allowed).
    pub fn is_open(&self) -> bool {
        self.opened_at.load(Ordering::Acquire) != 0
    }

    /// Asks to make a call: `Ok(true)` for the half-open probe, `Ok(false)`
    /// for an ordinary call. Closed: one atomic load.
    pub fn allow(&self) -> Result<bool, Open> {
        let opened = self.opened_at.load(Ordering::Acquire);
        if opened == 0 {
            return Ok(false);
        }
        let now = self.now_ms();
        let refuse = |until: u64| Open {
            failures: self.failures.load(Ordering::Relaxed),
            retry_in_ms: until.saturating_sub(now),
        };
        let cooldown = if now < self.healing_until.load(Ordering::Acquire) {
            self.cooldown_ms.min(HEALING_RETRY.as_millis() as u64)
        } else {
            self.cooldown_ms
        };
        let reopens_at = opened.saturating_add(cooldown);
        if now < reopens_at && !self.expedited.load(Ordering::Acquire) {
            return Err(refuse(reopens_at));
        }
        let probe = self.probe_at.load(Ordering::Acquire);
        let probe_ends_at = probe.saturating_add(self.cooldown_ms);
        if probe != 0 && now < probe_ends_at {
            return Err(refuse(probe_ends_at));
        }
        match self
            .probe_at
            .compare_exchange(probe, now, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.expedited.store(false, Ordering::Release);
                Ok(true)
            }
            Err(_) => Err(refuse(now.saturating_add(self.cooldown_ms))),
        }
    }

    /// Given the backend's count of heals (`Contact::heals`) and how long
    /// ago the last one was: when the count moved since last seen, lets the
    /// next call probe at once ([`expedite`](Self::expedite)), retries
    /// failed probes quickly for what is left of [`HEALING`] after the
    /// heal, and returns `true`. A heal older than that (one recorded while
    /// the breaker was closed, long before this outage) is only marked seen.
    pub fn healed(&self, heals: u64, age: Duration) -> bool {
        if self.heals_seen.swap(heals, Ordering::AcqRel) == heals || age >= HEALING {
            return false;
        }
        let until = self.now_ms().saturating_add((HEALING - age).as_millis() as u64);
        self.healing_until.store(until, Ordering::Release);
        self.expedite();
        if !self.is_open() {
            // A probe closed the breaker meanwhile: nothing to heal.
            self.healing_until.store(0, Ordering::Release);
        }
        true
    }

    /// Lets the next call probe at once if the breaker is open and no
    /// probe is under way (the backend found the cache able to serve again).
    pub fn expedite(&self) {
        if self.is_open() && self.probe_at.load(Ordering::Acquire) == 0 {
            self.expedited.store(true, Ordering::Release);
        }
    }

    /// Records a successful call.
    pub fn success(&self) -> Transition {
        if self.failures.load(Ordering::Relaxed) == 0 && self.opened_at.load(Ordering::Relaxed) == 0 {
            return Transition::None;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.probe_at.store(0, Ordering::Release);
        self.expedited.store(false, Ordering::Release);
        self.healing_until.store(0, Ordering::Release);
        if self.opened_at.swap(0, Ordering::AcqRel) != 0 {
            Transition::Closed
        } else {
            Transition::None
        }
    }

    /// Records a failed call; `probe` is what [`allow`](Self::allow) said.
    pub fn failure(&self, probe: bool) -> Transition {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let now = self.now_ms();
        let opened = self.opened_at.load(Ordering::Acquire);
        if opened != 0 && !probe {
            // A late failure of a call admitted before the breaker opened:
            // it must not extend the cool-down or free the probe slot.
            return Transition::None;
        }
        if opened != 0 {
            // A failed probe: stay open for another cooldown. Compare-and-set,
            // so that a failure racing with the success that just closed the
            // breaker cannot re-open it unseen (uncounted, unlogged).
            if self
                .opened_at
                .compare_exchange(opened, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.probe_at.store(0, Ordering::Release);
            }
            return Transition::None;
        }
        if failures >= self.threshold
            && self
                .opened_at
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.expedited.store(false, Ordering::Release);
            return Transition::Opened;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, 60_000);
        assert!(b.allow().is_ok());
        assert_eq!(b.failure(false), Transition::None);
        assert_eq!(b.failure(false), Transition::None);
        assert_eq!(b.failure(false), Transition::Opened);
        assert!(b.allow().is_err());
        b.clock.advance(std::time::Duration::from_secs(59));
        assert!(b.allow().is_err(), "not before the cooldown");
        b.clock.advance(std::time::Duration::from_secs(2));
        assert!(matches!(b.allow(), Ok(true)), "one probe after the cooldown");
        assert!(b.allow().is_err(), "only one probe at a time");
        assert_eq!(b.failure(false), Transition::None, "a late ordinary failure");
        assert!(b.allow().is_err(), "...neither frees the probe slot nor re-opens");
        assert_eq!(b.failure(true), Transition::None);
        assert!(b.allow().is_err(), "a failed probe re-opens");
        b.clock.advance(std::time::Duration::from_secs(61));
        assert!(matches!(b.allow(), Ok(true)));
        assert_eq!(b.success(), Transition::Closed);
        assert!(matches!(b.allow(), Ok(false)));
        assert!(!b.is_open());
    }

    #[test]
    fn only_a_transition_opens_or_closes() {
        let b = Breaker::new(1, 60_000);
        assert_eq!(b.failure(false), Transition::Opened);
        assert_eq!(b.failure(false), Transition::None, "already open");
        assert!(b.is_open());
        assert_eq!(b.success(), Transition::Closed);
        assert_eq!(b.success(), Transition::None);
        assert!(!b.is_open());
        assert_eq!(b.failure(false), Transition::Opened, "re-opening is a transition again");
    }

    #[test]
    fn a_huge_cooldown_saturates_instead_of_overflowing() {
        let b = Breaker::new(1, u64::MAX);
        assert_eq!(b.failure(false), Transition::Opened);
        let open = b.allow().unwrap_err();
        assert!(open.retry_in_ms > 1_000_000, "{open:?}");
        assert_eq!(b.failure(true), Transition::None);
        assert!(b.allow().is_err());
    }

    #[test]
    fn an_expedited_breaker_probes_at_once() {
        let b = Breaker::new(1, 60_000);
        b.expedite();
        assert!(matches!(b.allow(), Ok(false)), "closed: nothing to expedite");
        assert_eq!(b.failure(false), Transition::Opened);
        assert!(b.allow().is_err());
        b.expedite();
        assert!(matches!(b.allow(), Ok(true)), "the probe comes at once");
        b.expedite();
        assert!(b.allow().is_err(), "one probe at a time");
        assert_eq!(b.failure(true), Transition::None);
        assert!(b.allow().is_err(), "a failed probe waits a cool-down again");
    }

    #[test]
    fn after_a_heal_failed_probes_are_retried_quickly() {
        let b = Breaker::new(1, 60_000);
        assert_eq!(b.failure(false), Transition::Opened);
        assert!(!b.healed(0, Duration::ZERO), "no heal yet");
        assert!(b.healed(1, Duration::ZERO));
        assert!(!b.healed(1, Duration::ZERO), "each heal acts once");
        assert!(matches!(b.allow(), Ok(true)), "the probe comes at once");
        assert_eq!(b.failure(true), Transition::None);
        assert!(b.allow().is_err(), "not before the healing retry");
        b.clock.advance(HEALING_RETRY + Duration::from_millis(5));
        assert!(
            matches!(b.allow(), Ok(true)),
            "a failed probe is retried soon while healing"
        );
        assert_eq!(b.failure(true), Transition::None);
        b.clock.advance(HEALING);
        assert!(b.allow().is_err(), "after the healing window, the whole cooldown again");
        b.clock.advance(Duration::from_secs(60));
        assert!(matches!(b.allow(), Ok(true)));
        assert_eq!(b.success(), Transition::Closed);
        assert_eq!(b.failure(false), Transition::Opened);
        b.clock.advance(HEALING_RETRY + Duration::from_millis(5));
        assert!(b.allow().is_err(), "a close ends the healing");
    }

    #[test]
    fn a_heal_from_before_the_outage_is_only_marked_seen() {
        let b = Breaker::new(1, 60_000);
        assert_eq!(b.failure(false), Transition::Opened);
        assert!(
            !b.healed(1, HEALING + Duration::from_secs(3600)),
            "a heal an hour old does not expedite the probe"
        );
        assert!(b.allow().is_err(), "the cool-down holds");
        assert!(!b.healed(1, Duration::ZERO), "and it is not acted on later");
        assert!(b.allow().is_err());
        assert!(b.healed(2, HEALING - Duration::from_secs(1)), "a recent heal does");
        assert!(matches!(b.allow(), Ok(true)));
        assert_eq!(b.failure(true), Transition::None);
        b.clock.advance(Duration::from_millis(1_000) + HEALING_RETRY);
        assert!(
            b.allow().is_err(),
            "quick retries only for what is left of the healing window"
        );
    }

    #[test]
    fn success_resets_the_run() {
        let b = Breaker::new(2, 1000);
        b.failure(false);
        b.success();
        assert_eq!(b.failure(false), Transition::None);
        assert_eq!(b.failure(false), Transition::Opened);
    }
}
