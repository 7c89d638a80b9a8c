//! A database of a test's own: a fresh PostgreSQL schema, or a fresh
//! in-memory SQLite database.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::random_name;

/// `DATABASE_URL`, or the local default `postgres://postgres@127.0.0.1:5432/test`.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A PostgreSQL pool whose connections all use a fresh schema (via
/// `search_path`), so every test has its own tables. Drop the schema with
/// [`cleanup`](Db::cleanup) at the end of the test.
///
/// ```no_run
/// # async fn example() {
/// let db = storehaus_testkit::Db::new().await;
/// db.exec("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)").await;
/// db.cleanup().await;
/// # }
/// ```
pub struct Db {
    /// The pool; every connection has `search_path` set to [`schema`](Db::schema).
    pub pool: PgPool,
    /// The schema's name, `sh_<16 hex digits>`.
    pub schema: String,
}

impl Db {
    /// A fresh schema and a pool of at most 5 connections on it.
    pub async fn new() -> Db {
        Self::with_max_connections(5).await
    }

    /// A fresh schema and a pool of at most `max` connections on it.
    pub async fn with_max_connections(max: u32) -> Db {
        let schema = random_name("sh");
        let admin = PgPool::connect(&database_url()).await.expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
            .execute(&admin)
            .await
            .expect("create schema");
        admin.close().await;
        let opts: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .connect_with(opts.options([("search_path", schema.as_str())]))
            .await
            .expect("connect with search_path");
        Db { pool, schema }
    }

    /// Runs one statement; panics with the statement and the error if it fails.
    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Closes the pool and drops the schema with everything in it.
    pub async fn cleanup(self) {
        self.pool.close().await;
        let admin = PgPool::connect(&database_url()).await.expect("connect to PostgreSQL");
        let _ = sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

/// A fresh in-memory SQLite database. The pool keeps its one connection for
/// its whole life (no idle timeout, no max lifetime): the database lives
/// exactly as long as that connection.
pub async fn sqlite_memory() -> sqlx::SqlitePool {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await
        .expect("open an in-memory SQLite database")
}
