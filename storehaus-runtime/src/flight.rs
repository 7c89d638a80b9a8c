//! Single-flight: concurrent misses on one key in one process share one
//! database load.
//!
//! Only the reader that won the key's fill lease starts a load; readers of
//! the same process that find the lease join the load instead of waiting on
//! Redis. A local write *detaches* the key's load (removes it from the
//! table) before it returns, so a read that starts after the write can never
//! join a load that began before it (read-your-writes).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Value = Arc<dyn Any + Send + Sync>;

#[derive(Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<Table>>,
}

type Table = HashMap<String, Arc<watch::Sender<Option<Value>>>>;

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
    /// Starts a load for `key`.
    pub fn lead(&self, key: &str) -> Lead {
        let (tx, _) = watch::channel(None);
        let tx = Arc::new(tx);
        if let Ok(mut map) = self.map.lock() {
            map.insert(key.to_string(), tx.clone());
        }
        Lead {
            map: self.map.clone(),
            key: key.to_string(),
            tx,
        }
    }

    /// Joins the load for `key`, if one is under way.
    pub fn join(&self, key: &str) -> Option<watch::Receiver<Option<Value>>> {
        self.map.lock().ok()?.get(key).map(|tx| tx.subscribe())
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
            if map.get(&self.key).is_some_and(|tx| Arc::ptr_eq(tx, &self.tx)) {
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
