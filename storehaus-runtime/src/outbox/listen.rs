//! The worker's wake-ups: `pg_notify` on a connection of its own.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use super::ddl;
use crate::cache::gate::WorkerState;

/// Forwards `pg_notify` wake-ups to the worker, on a connection of its own
/// (application name `storehaus-outbox <deployment>`). A lost connection is
/// replaced, and every (re)connect wakes a catch-up pass: notifications sent
/// while it was down are lost, the outbox is not.
pub(super) async fn listen(pool: PgPool, state: Arc<WorkerState>, deployment: String) {
    let mut name = format!("storehaus-outbox {deployment}");
    // PostgreSQL keeps 63 bytes of an application name.
    while name.len() > 63 {
        name.pop();
    }
    let options = (*pool.connect_options()).clone().application_name(&name);
    loop {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options.clone());
        match PgListener::connect_with(&own).await {
            Ok(mut listener) => {
                if listener.listen(ddl::CHANNEL).await.is_ok() {
                    state.wake.notify_one();
                    // `Ok(None)`: lost and re-established; catch up.
                    while listener.try_recv().await.is_ok() {
                        state.wake.notify_one();
                    }
                }
            }
            Err(e) => tracing::debug!(target: "storehaus", error = %e, "outbox listener cannot connect"),
        }
        state.wake.notify_one();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
