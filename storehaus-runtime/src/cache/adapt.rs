//! Which command a store's reads start with, chosen from its own recent
//! misses.
//!
//! A read that starts with a plain `GET` answers a hit with what a raw GET
//! costs, but a miss then needs a second round trip for its fill lease
//! (`SET key lease NX PX ms GET`). A read that starts with the lease command
//! answers a miss in one round trip, but turns every hit into a write
//! command (more server CPU, replicated, ACL-checked as a write). Neither is
//! right for every store, so each store keeps a moving average of its miss
//! rate (about the last 16 reads) and starts with the lease command while
//! at least a quarter of its reads miss; with
//! `CacheConfig::with_single_command_reads(true)` every read does.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Fixed point: 1024 means every recent read missed.
const ONE: u32 = 1024;
/// The miss rate from which reads start with the lease command.
const LEASE_FIRST_FROM: u32 = ONE / 4;

/// A store's recent miss rate.
#[derive(Debug, Default)]
pub(crate) struct ReadMode {
    miss_rate: AtomicU32,
}

impl ReadMode {
    /// Whether the next read should start with the lease command.
    pub fn lease_first(&self) -> bool {
        self.miss_rate.load(Relaxed) >= LEASE_FIRST_FROM
    }

    /// One read was a hit (`false`) or a miss (`true`). Racing updates may
    /// lose a sample; the average only steers a choice that is correct
    /// either way.
    pub fn saw(&self, miss: bool) {
        let rate = self.miss_rate.load(Relaxed);
        let sample = if miss { ONE } else { 0 };
        let next = rate - rate / 16 + sample / 16;
        if next != rate {
            self.miss_rate.store(next, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_switch_to_the_lease_command_and_hits_switch_back() {
        let mode = ReadMode::default();
        assert!(!mode.lease_first(), "a new store starts with GET");
        for _ in 0..5 {
            mode.saw(true);
        }
        assert!(mode.lease_first(), "a run of misses");
        for _ in 0..40 {
            mode.saw(false);
        }
        assert!(!mode.lease_first(), "a run of hits");
        // One miss in ten stays on GET.
        for i in 0..200 {
            mode.saw(i % 10 == 0);
        }
        assert!(!mode.lease_first());
        // One in two goes to the lease command.
        for i in 0..200 {
            mode.saw(i % 2 == 0);
        }
        assert!(mode.lease_first());
    }
}
