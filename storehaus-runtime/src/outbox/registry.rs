//! Starts a cache manager's outbox worker for a database: one per
//! (manager, database), registered with the manager's read gate.

use std::sync::Arc;

use super::worker::Worker;
use crate::cache::gate::{Watchers, WorkerState};
use crate::cache::CacheManager;
use crate::store::pool::DbPool;

/// The worker of `location`, started if none runs.
pub(crate) fn ensure(
    watchers: &Watchers,
    manager: &Arc<CacheManager>,
    pool: DbPool,
    location: String,
) -> Arc<WorkerState> {
    let deployment = watchers.deployment.clone();
    watchers.ensure_worker(location, |state, location| {
        let worker = Worker::new(manager, pool, deployment, state);
        tokio::spawn(worker.run(location));
    })
}
