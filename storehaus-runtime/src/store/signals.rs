//! Change signals: every committed store write publishes one [`ChangeEvent`].

use tokio::sync::broadcast;

/// What kind of write happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeOp {
    /// Rows were inserted.
    Create,
    /// Rows were updated.
    Update,
    /// Rows were deleted.
    Delete,
}

/// One committed write: a single-row write, or a whole batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The table written.
    pub table: &'static str,
    /// The kind of write.
    pub op: ChangeOp,
    /// The ids written, rendered with `Display`, in the order given.
    pub ids: Vec<String>,
    /// The tags passed to the write (empty when none).
    pub tags: Vec<String>,
}

/// Publishes [`ChangeEvent`]s to any number of subscribers through a tokio
/// broadcast channel.
///
/// Writers never wait for subscribers. A subscriber that falls more than
/// `capacity` events behind gets `RecvError::Lagged(n)` from its next `recv`
/// (telling it how many events it missed) and then continues with the oldest
/// event still held.
#[derive(Debug)]
pub struct SignalManager {
    tx: broadcast::Sender<ChangeEvent>,
}

impl SignalManager {
    /// A signal manager keeping up to `capacity` events for slow subscribers
    /// (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        SignalManager { tx }
    }

    /// A new subscription, receiving every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.tx.subscribe()
    }

    /// Publishes an event; returns how many subscribers it reached.
    pub fn publish(&self, event: ChangeEvent) -> usize {
        tracing::trace!(target: "storehaus", table = event.table, op = ?event.op, ids = event.ids.len(), "change event");
        self.tx.send(event).unwrap_or(0)
    }
}

impl Default for SignalManager {
    fn default() -> Self {
        SignalManager::new(1024)
    }
}
