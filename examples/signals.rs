//! Change signals: every committed write publishes one event. Run with
//! `cargo run --example signals` (same backends as the quick start).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use uuid::Uuid;

mod support;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "example_sessions", ttl = 300, prefix = "sessions")]
pub struct Session {
    #[cache(id)]
    pub id: Uuid,
    pub user_id: i64,
    pub data: String,
}

const CREATE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS example_sessions (id {uuid} PRIMARY KEY, user_id bigint NOT NULL, data text NOT NULL)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let support::Backends { db_pool, cache_manager } = support::open("example_signals", CREATE_TABLE).await?;
    let signals = Arc::new(SignalManager::new(128));
    let mut events = signals.subscribe();
    let listener = tokio::spawn(async move {
        let mut seen = 0;
        while let Ok(event) = events.recv().await {
            println!(
                "event     {:?} {} ids={:?} tags={:?}",
                event.op, event.table, event.ids, event.tags
            );
            seen += 1;
            if seen == 3 {
                break;
            }
        }
    });

    let store = GenericStore::<Session>::new(db_pool, Some(signals), Some(CacheParams::new(cache_manager)));
    let session = Session {
        id: Uuid::new_v4(),
        user_id: 7,
        data: "{}".into(),
    };
    let id = session.id;
    store.create(session.clone(), Some(vec!["login".into()])).await?;
    store
        .update(
            &id,
            Session {
                data: "{\"theme\":\"dark\"}".into(),
                ..session
            },
            None,
        )
        .await?;
    store.delete(&id).await?;
    listener.await?;
    Ok(())
}
