//! One route, `GET /users/{id}`, served six ways, for `scripts/load.sh`
//! to compare with wrk under the same web stack (axum, one JSON body per
//! request):
//!
//! - `storehaus`: a cached `GenericStore` on Redis;
//! - `near`: the same with the near cache (an in-process copy kept fresh by
//!   Redis tracking);
//! - `cached`: the `cached` crate's `AsyncRedisCache` in front of the same
//!   `SELECT` (cache-aside by hand: get, else select and set);
//! - `cached-csc`: the same with its client-side caching on (redis-rs'
//!   tracking cache, RESP3; needs this package's feature `csc`);
//! - `db`: the database alone;
//! - `memory`: a `HashMap` filled at start, the ceiling of the web stack.
//!
//! ```sh
//! DATABASE_URL=postgres://... REDIS_URL=redis://... \
//!   cargo run --release -p storehaus-example-web --example user_service -- --mode near --addr 127.0.0.1:3001
//! ```
//!
//! It creates (if needed) and fills `bench_service_users` with 1 000 rows,
//! answers `GET /users/{id}` and prints `listening on ADDR` once ready.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus::DbPool;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "bench_service_users", ttl = 3600, prefix = "users")]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
}

/// Rows served.
const USERS: i64 = 1_000;

const SELECT: &str = "SELECT id, name, email FROM bench_service_users WHERE id = $1";

/// How the route is answered.
enum Source {
    Store(GenericStore<User>),
    Cached(AsyncRedisCache<i64, User>, sqlx::PgPool),
    Db(sqlx::PgPool),
    Memory(HashMap<i64, User>),
}

type Failure = (StatusCode, String);

fn unavailable(e: impl std::fmt::Display) -> Failure {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn select(pool: &sqlx::PgPool, id: i64) -> Result<Option<User>, Failure> {
    sqlx::query_as::<_, User>(SELECT)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)
}

async fn get_user(State(source): State<Arc<Source>>, Path(id): Path<i64>) -> Result<Response, Failure> {
    let found = match &*source {
        Source::Store(store) => store.get_by_id(&id).await.map_err(unavailable)?,
        Source::Cached(cache, pool) => match cache.async_cache_get(&id).await {
            Ok(Some(user)) => Some(user),
            // A cache error is a miss, as a cache-aside service treats it.
            _ => {
                let user = select(pool, id).await?;
                if let Some(user) = &user {
                    let _ = cache.async_cache_set(id, user.clone()).await;
                }
                user
            }
        },
        Source::Db(pool) => select(pool, id).await?,
        Source::Memory(users) => users.get(&id).cloned(),
    };
    Ok(match found {
        Some(user) => Json(user).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

/// `--name value` from the command line.
fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

async fn source(mode: &str, pool: sqlx::PgPool, redis_url: &str) -> Result<Source, Box<dyn std::error::Error>> {
    let prefix = format!("user_service_{}", std::process::id());
    Ok(match mode {
        "storehaus" | "near" => {
            let mut config = CacheConfig::new(redis_url, 3600, prefix);
            if mode == "near" {
                config = config.with_near_cache(10_000);
            }
            let manager = Arc::new(CacheManager::new(config)?);
            Source::Store(GenericStore::new(
                DbPool::from(pool),
                None,
                Some(CacheParams::new(manager)),
            ))
        }
        "cached" => {
            let cache = AsyncRedisCache::builder(prefix)
                .ttl_secs(3600)
                .connection_string(redis_url)
                .build()
                .await?;
            Source::Cached(cache, pool)
        }
        #[cfg(feature = "csc")]
        "cached-csc" => {
            let cache = AsyncRedisCache::builder(prefix)
                .ttl_secs(3600)
                .connection_string(redis_url)
                .client_side_caching(true)
                .build()
                .await?;
            Source::Cached(cache, pool)
        }
        #[cfg(not(feature = "csc"))]
        "cached-csc" => return Err("--mode cached-csc needs this package's feature `csc`".into()),
        "db" => Source::Db(pool),
        "memory" => {
            let users = sqlx::query_as::<_, User>("SELECT id, name, email FROM bench_service_users")
                .fetch_all(&pool)
                .await?;
            Source::Memory(users.into_iter().map(|u| (u.id, u)).collect())
        }
        other => return Err(format!("unknown --mode {other}: storehaus, near, cached, cached-csc, db, memory").into()),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = arg("--mode").unwrap_or_else(|| "storehaus".into());
    let addr: SocketAddr = arg("--addr").unwrap_or_else(|| "127.0.0.1:3001".into()).parse()?;
    let database_url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL (PostgreSQL) is required")?;
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&database_url)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_service_users (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query(
        "INSERT INTO bench_service_users SELECT g, 'user ' || g, 'user' || g || '@example.com' \
         FROM generate_series(1, $1) g ON CONFLICT (id) DO NOTHING",
    )
    .bind(USERS)
    .execute(&pool)
    .await?;
    let source = Arc::new(source(&mode, pool, &redis_url).await?);
    let app = Router::new().route("/users/{id}", get(get_user)).with_state(source);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {} ({mode})", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
