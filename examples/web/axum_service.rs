//! A web service on StoreHaus: `GET`, `PUT` and `DELETE /users/{id}` served
//! by a cached `GenericStore`, `GET /health` (live / ready, with the cache's
//! health check), Prometheus metrics at `GET /metrics` (latency histograms
//! with explicit buckets), request timeouts (a write whose request times
//! out still runs to its end and invalidates after its commit) and graceful
//! shutdown on Ctrl-C / SIGTERM. Logs go to stderr (`RUST_LOG`).
//!
//! ```sh
//! cargo run --release --example axum_service              # 127.0.0.1:3000, 1000 users
//! cargo run --release --example axum_service -- --no-cache  # the same service on the database alone
//! cargo run --example axum_service -- --smoke              # a few requests against itself, then exit
//! ```
//!
//! Like the other examples it runs on an in-memory SQLite database and the
//! in-process cache unless `DATABASE_URL` / `REDIS_URL` say otherwise.
//! `scripts/load.sh` drives it with wrk.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus::{DbPool, HealthWarning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_http::timeout::TimeoutLayer;

#[path = "../support/mod.rs"]
mod support;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "service_users", ttl = 3600, prefix = "users")]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
}

const CREATE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS service_users (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL)";

/// What every handler shares.
#[derive(Clone)]
struct App {
    users: GenericStore<User>,
    db_pool: DbPool,
    metrics: PrometheusHandle,
}

/// Bucket bounds (seconds) of StoreHaus's latency histograms
/// (`storehaus_*_duration_seconds`): from a near-cache hit (tens of µs) to
/// a database call that ran into a timeout (seconds). Without them the
/// exporter renders summaries, which cannot be aggregated across instances.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A store error as an HTTP answer: the database failed (503), or the
/// request was wrong (400/404).
struct Failure(StorehausError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            StorehausError::NotFound { .. } => StatusCode::NOT_FOUND,
            StorehausError::IdMismatch { .. } | StorehausError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, self.0.to_string()).into_response()
    }
}

impl From<StorehausError> for Failure {
    fn from(e: StorehausError) -> Self {
        Failure(e)
    }
}

async fn get_user(State(app): State<App>, Path(id): Path<i64>) -> Result<Response, Failure> {
    Ok(match app.users.get_by_id(&id).await? {
        Some(user) => Json(user).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

/// Replaces the user, or creates it.
async fn put_user(State(app): State<App>, Path(id): Path<i64>, Json(user): Json<User>) -> Result<Json<User>, Failure> {
    match app.users.update(&id, user.clone(), None).await {
        Err(StorehausError::NotFound { .. }) => Ok(Json(app.users.create(user, None).await?)),
        other => Ok(Json(other?)),
    }
}

async fn delete_user(State(app): State<App>, Path(id): Path<i64>) -> Result<StatusCode, Failure> {
    Ok(if app.users.delete(&id).await? {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    })
}

async fn metrics(State(app): State<App>) -> String {
    app.metrics.render()
}

/// `GET /health`: `live` is always true while the process answers; `ready`
/// is whether the database answers (the source of truth: without it no
/// request can be served). The cache does not decide readiness (a cache
/// failure costs latency, not answers) but is reported with the reason
/// `health_check()` gives, so an operator sees a wrong password or a full
/// Redis at once. 200 when ready, 503 otherwise.
async fn health(State(app): State<App>) -> Response {
    let database = match ping(&app.db_pool).await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("unavailable: {e}"),
    };
    let ready = database == "ok";
    let (cache, warnings): (String, Vec<String>) = match app.users.cache_manager() {
        Err(_) => ("disabled".into(), Vec::new()),
        Ok(manager) => match manager.health_check().await {
            Ok(h) if h.is_ok() => ("ok".into(), Vec::new()),
            Ok(h) => ("warning".into(), h.warnings.iter().map(describe).collect()),
            Err(e) => (format!("unavailable: {e}"), Vec::new()),
        },
    };
    let body = serde_json::json!({
        "live": true,
        "ready": ready,
        "database": database,
        "cache": cache,
        "cache_warnings": warnings,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// A health warning in words, with the server's own reason where it gave one.
fn describe(warning: &HealthWarning) -> String {
    warning.to_string()
}

/// `SELECT 1` on the database.
async fn ping(pool: &DbPool) -> Result<(), sqlx::Error> {
    match pool {
        DbPool::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
        DbPool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
        // DbPool is non-exhaustive: a database this example does not know.
        _ => Ok(()),
    }
}

fn router(app: App, timeout: Duration) -> Router {
    Router::new()
        .route("/users/{id}", get(get_user).put(put_user).delete(delete_user))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .with_state(app)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

struct Options {
    addr: SocketAddr,
    users: i64,
    cache: bool,
    smoke: bool,
    timeout: Duration,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut o = Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            users: 1_000,
            cache: true,
            smoke: false,
            timeout: Duration::from_secs(2),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--addr" => o.addr = value("--addr")?.parse().map_err(|e| format!("--addr: {e}"))?,
                "--users" => o.users = value("--users")?.parse().map_err(|e| format!("--users: {e}"))?,
                "--timeout-ms" => {
                    let ms: u64 = value("--timeout-ms")?
                        .parse()
                        .map_err(|e| format!("--timeout-ms: {e}"))?;
                    o.timeout = Duration::from_millis(ms);
                }
                "--no-cache" => o.cache = false,
                "--smoke" => {
                    o.smoke = true;
                    o.addr = SocketAddr::from(([127, 0, 0, 1], 0));
                    o.users = o.users.min(10);
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(o)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse()?;
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    let backends = support::open("service", CREATE_TABLE).await?;
    let params = options.cache.then(|| CacheParams::new(backends.cache_manager.clone()));
    let users = GenericStore::<User>::new(backends.db_pool.clone(), None, params);
    seed(&users, options.users).await?;

    let listener = tokio::net::TcpListener::bind(options.addr).await?;
    let addr = listener.local_addr()?;
    let db_pool = backends.db_pool.clone();
    let app = router(
        App {
            users,
            db_pool,
            metrics,
        },
        options.timeout,
    );
    if options.smoke {
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let outcome = smoke(addr).await;
        server.abort();
        return outcome;
    }
    println!(
        "listening on http://{addr} ({} users, cache {})",
        options.users,
        if options.cache { "on" } else { "off" }
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    println!("shut down");
    Ok(())
}

/// Users 1..=n, those the table does not hold yet.
async fn seed(users: &GenericStore<User>, n: i64) -> Result<(), StorehausError> {
    let ids: Vec<i64> = (1..=n).collect();
    for (id, found) in ids.iter().zip(users.get_many(&ids).await?) {
        if found.is_none() {
            let user = User {
                id: *id,
                name: format!("user {id}"),
                email: format!("user{id}@example.com"),
            };
            users.create(user, None).await?;
        }
    }
    Ok(())
}

/// A few requests against the running service; an error names the first
/// answer that was not the expected one.
async fn smoke(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let checks: [(&str, &str, Option<&str>, u16, &str); 10] = [
        // Known starting values, whatever an earlier run left.
        (
            "PUT",
            "/users/1",
            Some(r#"{"id":1,"name":"user 1","email":"user1@example.com"}"#),
            200,
            "",
        ),
        (
            "PUT",
            "/users/2",
            Some(r#"{"id":2,"name":"user 2","email":"u2@example.com"}"#),
            200,
            "",
        ),
        ("GET", "/users/1", None, 200, "\"name\":\"user 1\""),
        ("GET", "/users/1", None, 200, "\"name\":\"user 1\""),
        (
            "PUT",
            "/users/1",
            Some(r#"{"id":1,"name":"Ada","email":"ada@example.com"}"#),
            200,
            "\"name\":\"Ada\"",
        ),
        ("GET", "/users/1", None, 200, "\"name\":\"Ada\""),
        ("DELETE", "/users/2", None, 204, ""),
        ("GET", "/users/2", None, 404, ""),
        ("GET", "/users/not-a-number", None, 400, ""),
        ("GET", "/health", None, 200, "\"ready\":true"),
    ];
    for (method, path, body, want, contains) in checks {
        let (status, text) = request(addr, method, path, body).await?;
        if status != want || !text.contains(contains) {
            return Err(format!("{method} {path}: {status} {text:?}, want {want} with {contains:?}").into());
        }
        println!("smoke: {method} {path} -> {status}");
    }
    let (status, text) = request(addr, "GET", "/metrics", None).await?;
    if status != 200
        || !text.contains("storehaus_reads_total")
        || !text.contains("storehaus_writes_total")
        || !text.contains("storehaus_read_duration_seconds_bucket")
    {
        return Err(format!(
            "GET /metrics: {status} {text:?}, want StoreHaus's read and write series and latency buckets"
        )
        .into());
    }
    println!("smoke: GET /metrics -> {status} ({} lines)", text.lines().count());
    Ok(())
}

/// One HTTP/1.1 request on a fresh connection: the status and the body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))??;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
