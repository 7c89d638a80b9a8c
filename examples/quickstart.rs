//! The whole flow, end to end: create, miss, hit, update + invalidation,
//! stats, health; each read says where its answer came from. Run it with
//! `cargo run --example quickstart` (`RUST_LOG=storehaus=debug` for every
//! step of the cache).
//!
//! Runs anywhere: without `DATABASE_URL` it uses a private in-memory SQLite
//! database, without `REDIS_URL` the in-process cache (`memory://`).
//! `DATABASE_URL` may name PostgreSQL (`postgres://...`) or SQLite
//! (`sqlite:...`); `REDIS_URL` may be `redis://`, `rediss://` or `memory://`.
//! `scripts/services.sh` starts a local PostgreSQL and Redis.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus::CacheStats;
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

    let (first, took, from) = read(&user_store, &cache_manager, &user_id).await?;
    println!("read      {:?} in {took:?} from {from}", first.map(|u| u.name));

    // The fill runs in the background: wait until it has landed.
    cache_manager.flush_fills().await;
    let (second, took, from) = read(&user_store, &cache_manager, &user_id).await?;
    println!("read      {:?} in {took:?} from {from}", second.map(|u| u.name));

    let renamed = User {
        id: user_id,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
    };
    user_store.update(&user_id, renamed, None).await?;
    println!("updated   committed; the cache entry is invalidated (or remembered and replayed once the cache answers)");
    let (fresh, _, from) = read(&user_store, &cache_manager, &user_id).await?;
    println!(
        "read      {:?} from {from} (the write is visible at once)",
        fresh.map(|u| u.name)
    );

    let stats = cache_manager.get_stats().await?;
    println!(
        "stats     hits={} misses={} hit rate={:.0}% connection_errors={} timeouts={} breaker_open={}",
        stats.hits,
        stats.misses,
        stats.hit_rate() * 100.0,
        stats.connection_errors,
        stats.timeouts,
        stats.breaker_open
    );
    match cache_manager.health_check().await {
        Ok(health) if health.is_ok() => println!("health    the cache is healthy"),
        Ok(health) => {
            for warning in &health.warnings {
                println!("health    warning: {warning}");
            }
        }
        Err(e) => println!("health    the cache is unavailable: {e}"),
    }

    user_store.delete(&user_id).await?;
    println!("deleted   {user_id}");
    Ok(())
}

/// Reads `id` and says where the answer came from, by the manager's
/// counters before and after: a hit is the cache; anything else is the
/// database, and the counters tell a plain miss from a cache that could not
/// answer (the WARN log names the cause).
async fn read(
    store: &GenericStore<User>,
    manager: &CacheManager,
    id: &Uuid,
) -> Result<(Option<User>, Duration, &'static str), Box<dyn std::error::Error>> {
    let before = manager.get_stats().await?;
    let t = Instant::now();
    let user = store.get_by_id(id).await?;
    let took = t.elapsed();
    let after = manager.get_stats().await?;
    let failures = |s: &CacheStats| s.connection_errors + s.timeouts + s.command_errors + s.breaker_skips;
    let from = if after.hits > before.hits {
        "the cache"
    } else if failures(&after) > failures(&before) || after.breaker_open || after.pending_invalidations > 0 {
        "the database: the cache could not answer (see the warning above)"
    } else {
        "the database: not cached yet, filled in the background"
    };
    Ok((user, took, from))
}
