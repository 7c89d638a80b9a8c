//! The whole flow, end to end: create, miss, hit, update + invalidation,
//! stats. Run it with `cargo run --example quickstart`.
//!
//! Runs anywhere: without `DATABASE_URL` it uses a private in-memory SQLite
//! database, without `REDIS_URL` the in-process cache (`memory://`).
//! `DATABASE_URL` may name PostgreSQL (`postgres://...`) or SQLite
//! (`sqlite:...`); `REDIS_URL` may be `redis://`, `rediss://` or `memory://`.
//! `scripts/services.sh` starts a local PostgreSQL and Redis.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use uuid::Uuid;

mod support;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "quickstart_users", ttl = 1800, prefix = "users")]
pub struct User {
    #[cache(id)]
    pub id: Uuid,
    pub name: String,
    pub email: String,
}

/// `CREATE TABLE` for [`User`]; `{uuid}` is the dialect's column type for a uuid.
const CREATE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS quickstart_users (id {uuid} PRIMARY KEY, name text NOT NULL, email text NOT NULL)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let support::Backends { db_pool, cache_manager } = support::open("quickstart", CREATE_TABLE).await?;

    // Build a cached store.
    let cache_params = CacheParams::new(cache_manager.clone());
    let user_store = GenericStore::<User>::new(db_pool.clone(), None, Some(cache_params));

    let user = User {
        id: Uuid::new_v4(),
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    let user_id = user.id;
    user_store.create(user, None).await?;
    println!("created   {user_id}\nkey       {}", user_store.cache_key(&user_id));

    let t = Instant::now();
    let first = user_store.get_by_id(&user_id).await?;
    println!(
        "miss      {:?} in {:?} (database, then cached)",
        first.map(|u| u.name),
        t.elapsed()
    );

    // Wait until the background fill has landed, then read again.
    cache_manager.flush_fills().await;
    let t = Instant::now();
    let second = user_store.get_by_id(&user_id).await?;
    println!("hit       {:?} in {:?} (cache)", second.map(|u| u.name), t.elapsed());

    let renamed = User {
        id: user_id,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
    };
    user_store.update(&user_id, renamed, None).await?;
    println!("updated   cache entry invalidated after commit");
    let fresh = user_store.get_by_id(&user_id).await?;
    println!(
        "re-read   {:?} (database: the write is visible at once)",
        fresh.map(|u| u.name)
    );

    let stats = cache_manager.get_stats().await?;
    println!(
        "stats     hits={} misses={} hit rate={:.0}% connection_errors={}",
        stats.hits,
        stats.misses,
        stats.hit_rate() * 100.0,
        stats.connection_errors
    );
    match cache_manager.health_check().await {
        Ok(health) if health.is_ok() => println!("health    cache is healthy"),
        Ok(health) => println!("health    cache warns: {:?}", health.warnings),
        Err(e) => println!("health    cache error: {e}"),
    }

    user_store.delete(&user_id).await?;
    println!("deleted   {user_id}");
    Ok(())
}
