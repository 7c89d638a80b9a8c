//! Single-flight: concurrent misses on one key in one process share one
//! database load.
//!
//! Only the reader that won the key's fill lease starts a load, and the
//! load is registered under that lease. A reader of the same process that
//! finds a lease in the cache joins the load only when the lease it found is
//! that load's own lease: then no write has deleted the key since the load
//! began (every write deletes the key, and its lease with it, and leases are
//! never reused). A lease of another process, or of a newer reader, means
//! the load it belongs to is not this one; the reader waits for the fill
//! like a reader of another process would.
//!
//! A local write also *detaches* the key's load (removes it from the table)
//! before it returns, so a read that starts after the write never joins a
//! load that began before it, even before the cache has seen the write.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::backend::glob;
use crate::cache::codec::LEASE_LEN;

type Value = Arc<dyn Any + Send + Sync>;

/// A fill lease token.
pub(crate) type Lease = [u8; LEASE_LEN];

#[derive(Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<Table>>,
}

struct Flight {
    lease: Lease,
    tx: Arc<watch::Sender<Option<Value>>>,
}

type Table = HashMap<String, Flight>;

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}

/// The leader's handle: publishes the result, and leaves the table when
/// dropped (a cancelled leader wakes its followers, who then load themselves).
pub(crate) struct Lead {
    map: Arc<Mutex<Table>>,
    key: String,
    tx: Arc<watch::Sender<Option<Value>>>,
}

impl Flights {
    /// Starts a load for `key` under `lease`, the lease this reader holds.
    pub fn lead(&self, key: &str, lease: Lease) -> Lead {
        let (tx, _) = watch::channel(None);
        let tx = Arc::new(tx);
        if let Ok(mut map) = self.map.lock() {
            map.insert(key.to_string(), Flight { lease, tx: tx.clone() });
        }
        Lead {
            map: self.map.clone(),
            key: key.to_string(),
            tx,
        }
    }

    /// Joins the load for `key` if one is under way under the lease `found`
    /// (what the cache holds for the key now).
    pub fn join(&self, key: &str, found: &[u8]) -> Option<watch::Receiver<Option<Value>>> {
        let map = self.map.lock().ok()?;
        let flight = map.get(key)?;
        (flight.lease[..] == *found).then(|| flight.tx.subscribe())
    }

    /// Detaches the loads of `keys`: later readers start their own.
    pub fn detach<S: AsRef<str>>(&self, keys: &[S]) {
        if let Ok(mut map) = self.map.lock() {
            if map.is_empty() {
                return;
            }
            for k in keys {
                map.remove(k.as_ref());
            }
        }
    }

    /// Detaches the loads of every key matching the Redis glob `pattern`.
    pub fn detach_matching(&self, pattern: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|key, _| !glob::matches(pattern.as_bytes(), key.as_bytes()));
        }
    }
}

impl Lead {
    /// Publishes the loaded value to every follower.
    pub fn publish<T: Any + Send + Sync>(&self, value: T) {
        self.tx.send_replace(Some(Arc::new(value)));
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            if map.get(&self.key).is_some_and(|f| Arc::ptr_eq(&f.tx, &self.tx)) {
                map.remove(&self.key);
            }
        }
    }
}

/// Waits for a joined load's value. `None` when the leader gave up or the
/// value is of another type.
pub(crate) async fn follow<T: Any + Clone + Send + Sync>(mut rx: watch::Receiver<Option<Value>>) -> Option<T> {
    let value = rx.wait_for(|v| v.is_some()).await.ok()?.clone()?;
    value.downcast_ref::<T>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_is_joined_only_under_its_own_lease() {
        let flights = Flights::default();
        let mine = [0xC1; LEASE_LEN];
        let mut other = mine;
        other[5] = 7;
        let lead = flights.lead("k", mine);
        assert!(flights.join("k", &mine).is_some());
        assert!(flights.join("k", &other).is_none(), "another reader's lease");
        assert!(flights.join("other", &mine).is_none());
        flights.detach_matching("k*");
        assert!(flights.join("k", &mine).is_none(), "detached");
        drop(lead);
    }
}
