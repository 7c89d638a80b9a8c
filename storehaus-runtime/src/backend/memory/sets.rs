//! Counters (query generations), tag sets, live-version registries and
//! their primitives: the small tables beside the values that moka never
//! evicts (see the module above).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;

use super::{deadline_in, seed_i64, Item, MemoryBackend};
use crate::backend::{ScanStep, TagAdd};
use crate::error::{CacheError, CacheResult};

/// A tag set and the instant it expires.
#[derive(Debug, Default)]
pub(super) struct TagSet {
    pub(super) members: HashSet<String>,
    expires_at: Option<Instant>,
}

impl TagSet {
    pub(super) fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

impl MemoryBackend {
    pub(super) fn remove_registry(&self, key: &str) -> bool {
        let mut registries = self.registries.write().unwrap_or_else(PoisonError::into_inner);
        registries.remove(key).is_some()
    }

    pub(super) fn remove_counter(&self, key: &str) -> bool {
        if self.counter(key).is_none() {
            return false;
        }
        let mut counters = self.counters.write().unwrap_or_else(PoisonError::into_inner);
        counters.remove(key).is_some()
    }

    /// Removes a set; its members when it was live.
    pub(super) fn remove_set(&self, key: &str) -> Option<HashSet<String>> {
        if !self
            .sets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
        {
            return None;
        }
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        sets.remove(key)
            .filter(|set| set.is_live(Instant::now()))
            .map(|set| set.members)
    }

    /// `SET key seed NX` + `INCR key`, as [`invalidate`](Self::invalidate)
    /// sends them: a missing counter starts at a random value and, like in
    /// Redis, has no TTL.
    pub(super) fn bump_counter(&self, key: &str) -> CacheResult<i64> {
        if self.values.contains_key(key) {
            // Values are MessagePack envelopes or leases, never a decimal integer.
            return Err(CacheError::Command(
                "ERR value is not an integer or out of range".into(),
            ));
        }
        let mut counters = self.counters.write().unwrap_or_else(PoisonError::into_inner);
        let n = counters.entry(key.to_string()).or_insert_with(seed_i64);
        *n = n
            .checked_add(1)
            .ok_or_else(|| CacheError::Command("ERR increment or decrement would overflow".into()))?;
        Ok(*n)
    }

    /// Replaces whatever `key` holds by a counter at a fresh random seed.
    pub(super) fn reset_counter(&self, key: &str) {
        self.delete_one(key);
        let mut counters = self.counters.write().unwrap_or_else(PoisonError::into_inner);
        counters.insert(key.to_string(), seed_i64());
    }

    /// `SADD` + a TTL of at least `ttl_secs`. A set that grows past twice
    /// the cache's capacity first drops the members that are no longer cached.
    pub(super) fn add_to_set(&self, sets: &mut HashMap<String, TagSet>, tag: &TagAdd, now: Instant) {
        if tag.members.is_empty() {
            return;
        }
        let limit = usize::try_from(self.max_capacity.saturating_mul(2)).unwrap_or(usize::MAX);
        let set = sets.entry(tag.set.clone()).or_default();
        if !set.is_live(now) {
            *set = TagSet::default();
        }
        set.members.extend(tag.members.iter().cloned());
        let at_least = now.checked_add(Duration::from_secs(tag.ttl_secs));
        set.expires_at = match (set.expires_at, at_least) {
            (Some(current), Some(wanted)) => Some(current.max(wanted)),
            (_, wanted) => wanted.or(set.expires_at),
        };
        if set.members.len() > limit {
            set.members.retain(|member| self.values.contains_key(member));
        }
    }

    pub async fn seed_counter(&self, key: &str, start: u64) -> CacheResult<Option<Vec<u8>>> {
        let start = i64::try_from(start)
            .map_err(|_| CacheError::Command(format!("counter start {start} is out of range").into()))?;
        if let Some(item) = self.values.get(key) {
            return Ok(Some(item.bytes.to_vec()));
        }
        let mut counters = self.counters.write().unwrap_or_else(PoisonError::into_inner);
        match counters.get(key) {
            Some(n) => Ok(Some(n.to_string().into_bytes())),
            None => {
                counters.insert(key.to_string(), start);
                Ok(None)
            }
        }
    }

    pub async fn fill_if_counter(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
        counter: &str,
        expected: u64,
    ) -> CacheResult<bool> {
        let expires_at = deadline_in(ttl_ms, "set")?;
        // Holding the read guard keeps every INCR of `counter` out until the
        // value is in.
        let counters = self.counters.read().unwrap_or_else(PoisonError::into_inner);
        if counters.get(counter).and_then(|n| u64::try_from(*n).ok()) != Some(expected) {
            return Ok(false);
        }
        self.values.entry_by_ref(key).and_compute_with(|_| {
            Op::Put(Item {
                bytes: Arc::from(value),
                expires_at,
            })
        });
        Ok(true)
    }

    pub async fn drain_tag(&self, set: &str, draining: &str) -> CacheResult<u64> {
        let now = Instant::now();
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        let moved = sets.remove(set).filter(|s| s.is_live(now));
        let target = sets.entry(draining.to_string()).or_default();
        if !target.is_live(now) {
            *target = TagSet::default();
        }
        if let Some(moved) = moved {
            target.members.extend(moved.members);
            target.expires_at = match (target.expires_at, moved.expires_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        let size = target.members.len() as u64;
        if size == 0 {
            sets.remove(draining);
        }
        Ok(size)
    }

    pub async fn drain_step(&self, draining: &str, _cursor: u64) -> CacheResult<ScanStep> {
        let keys: Vec<String> = self.remove_set(draining).unwrap_or_default().into_iter().collect();
        let removed = keys.iter().filter(|member| self.delete_one(member)).count() as u64;
        Ok(ScanStep { next: 0, removed, keys })
    }

    pub async fn register_version(&self, key: &str, tag: &str, ttl_ms: u64) -> CacheResult<()> {
        let until = deadline_in(ttl_ms, "pexpire")?;
        let now = Instant::now();
        let mut registries = self.registries.write().unwrap_or_else(PoisonError::into_inner);
        let members = registries.entry(key.to_string()).or_default();
        let at = members.entry(tag.to_string()).or_insert(until);
        *at = (*at).max(until);
        members.retain(|_, at| *at > now);
        Ok(())
    }

    pub async fn versions(&self, key: &str) -> CacheResult<Vec<String>> {
        let now = Instant::now();
        let registries = self.registries.read().unwrap_or_else(PoisonError::into_inner);
        Ok(registries
            .get(key)
            .map(|members| {
                members
                    .iter()
                    .filter(|(_, at)| **at > now)
                    .map(|(m, _)| m.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
}
