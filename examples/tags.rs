//! Tag invalidation: entries written with a tag are removed together. Run
//! with `cargo run --example tags` (same backends as the quick start).

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use uuid::Uuid;

mod support;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "example_accounts", ttl = 1800, prefix = "accounts")]
pub struct Account {
    #[cache(id)]
    pub id: Uuid,
    pub plan: String,
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS example_accounts (id {uuid} PRIMARY KEY, plan text NOT NULL)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let support::Backends { db_pool, cache_manager } = support::open("example_tags", CREATE_TABLE).await?;
    let store = GenericStore::<Account>::new(db_pool, None, Some(CacheParams::new(cache_manager.clone())));
    let mut ids = Vec::new();
    for plan in ["premium", "premium", "free"] {
        let tags = (plan == "premium").then(|| vec!["plan:premium".to_string()]);
        let account = store
            .create(
                Account {
                    id: Uuid::new_v4(),
                    plan: plan.into(),
                },
                tags,
            )
            .await?;
        ids.push(account.id);
    }
    for id in &ids {
        store.get_by_id(id).await?;
    }
    cache_manager.flush_fills().await; // every read's fill has landed
    let removed = cache_manager.invalidate_tag("plan:premium").await?;
    println!("invalidate_tag(\"plan:premium\") removed {removed} cached accounts; the free one stays cached");
    for id in &ids {
        let cached: Option<Account> = cache_manager.get_record("accounts", &id.to_string()).await?;
        println!("cached    {id}: {}", if cached.is_some() { "yes" } else { "no" });
    }
    store.delete_many(&ids).await?;
    Ok(())
}
