//! What every example shares: the database and cache they run on.
//!
//! `DATABASE_URL` may name PostgreSQL (`postgres://...`) or SQLite
//! (`sqlite:...`); without it a private in-memory SQLite database is used.
//! `REDIS_URL` may be `redis://`, `rediss://` or `memory://`; without it the
//! in-process cache is used. So every example runs on a machine with no
//! services, and on the real ones where they exist.

use std::sync::Arc;

use sqlx::sqlite::SqlitePoolOptions;
use storehaus::{CacheConfig, CacheManager, DbPool};
use tracing_subscriber::EnvFilter;

/// Where an example runs.
pub struct Backends {
    pub db_pool: DbPool,
    pub cache_manager: Arc<CacheManager>,
}

/// Installs a `tracing` subscriber on stderr that honours `RUST_LOG`
/// (`RUST_LOG=storehaus=debug` shows every read's answer); without it,
/// warnings and errors are shown, so a cache that cannot be reached (wrong
/// password, wrong database, nothing listening) is named at once.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // Err: a subscriber is already installed (the example installed its own).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Opens the database and the cache and runs `create_table` (a
/// `CREATE TABLE IF NOT EXISTS` where `{uuid}` stands for the dialect's
/// uuid column type). Prints which backends it chose, never a URL (it may
/// hold a password). Installs the `tracing` subscriber first ([`init_tracing`]).
pub async fn open(global_prefix: &str, create_table: &str) -> Result<Backends, Box<dyn std::error::Error>> {
    init_tracing();
    let (db_pool, database): (DbPool, &str) = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("sqlite:") => {
            let pool = sqlx::SqlitePool::connect(&url).await?;
            // sqlx stores a uuid in SQLite as a 16-byte BLOB.
            sqlx::query(&create_table.replace("{uuid}", "blob"))
                .execute(&pool)
                .await?;
            (pool.into(), "SQLite (DATABASE_URL)")
        }
        Ok(url) => {
            let pool = sqlx::PgPool::connect(&url).await?;
            sqlx::query(&create_table.replace("{uuid}", "uuid"))
                .execute(&pool)
                .await?;
            (pool.into(), "PostgreSQL (DATABASE_URL)")
        }
        Err(_) => {
            // One connection that never closes: an in-memory database lives
            // as long as its connection.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect("sqlite::memory:")
                .await?;
            sqlx::query(&create_table.replace("{uuid}", "blob"))
                .execute(&pool)
                .await?;
            (pool.into(), "SQLite in memory (DATABASE_URL is not set)")
        }
    };
    let (cache_url, cache_source) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, "REDIS_URL"),
        Err(_) => ("memory://".to_string(), "in-process; REDIS_URL is not set"),
    };
    let cache_manager = Arc::new(CacheManager::new(CacheConfig::new(cache_url, 3600, global_prefix))?);
    println!(
        "database: {database}\ncache:    {} ({cache_source})",
        cache_manager.config().redacted_url()
    );
    Ok(Backends { db_pool, cache_manager })
}
