//! The seed's flow, end to end: create, miss, hit, update + invalidation,
//! stats. Run it with `cargo run --example quickstart`.
//!
//! Uses `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! and `REDIS_URL` (default `redis://127.0.0.1:6379`); `scripts/services.sh`
//! starts both.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "quickstart_users", ttl = 1800, prefix = "users")]
pub struct User {
    #[cache(id)]
    pub id: Uuid,
    pub name: String,
    pub email: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());

    let db_pool = sqlx::PgPool::connect(&database_url).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS quickstart_users (id uuid PRIMARY KEY, name text NOT NULL, email text NOT NULL)",
    )
    .execute(&db_pool)
    .await?;

    // Configure the cache and build a cached store.
    let cache_config = CacheConfig::new(redis_url.clone(), 3600, "quickstart");
    let cache_manager = Arc::new(CacheManager::new(cache_config)?);
    let cache_params = CacheParams::new(cache_manager.clone());
    let user_store = GenericStore::<User>::new(db_pool.clone(), None, Some(cache_params));
    println!("database: {database_url}\ncache:    {}", cache_manager.config().redacted_url());

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
    println!("miss      {:?} in {:?} (database, then cached)", first.map(|u| u.name), t.elapsed());

    // Let the background fill land, then read again.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
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
    println!("re-read   {:?} (database: the write is visible at once)", fresh.map(|u| u.name));

    let stats = cache_manager.get_stats().await?;
    println!(
        "stats     hits={} misses={} hit rate={:.0}% connection_errors={}",
        stats.hits,
        stats.misses,
        stats.hit_rate() * 100.0,
        stats.connection_errors
    );
    match cache_manager.health_check().await {
        Ok(()) => println!("health    cache is healthy"),
        Err(e) => println!("health    cache error: {e}"),
    }

    user_store.delete(&user_id).await?;
    println!("deleted   {user_id}");
    Ok(())
}
