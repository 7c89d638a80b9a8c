//! [`DbPool`]: the database a store talks to.

/// A database connection pool: PostgreSQL, or SQLite with the `sqlite`
/// feature (on by default).
///
/// [`GenericStore::new`](crate::GenericStore::new) takes `impl Into<DbPool>`,
/// so a `sqlx::PgPool` or a `sqlx::SqlitePool` can be passed as it is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DbPool {
    /// A PostgreSQL pool.
    Postgres(sqlx::PgPool),
    /// A SQLite pool.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

impl DbPool {
    /// The database's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DbPool::Postgres(_) => "postgres",
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(_) => "sqlite",
        }
    }
}

impl From<sqlx::PgPool> for DbPool {
    fn from(pool: sqlx::PgPool) -> Self {
        DbPool::Postgres(pool)
    }
}

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
impl From<sqlx::SqlitePool> for DbPool {
    fn from(pool: sqlx::SqlitePool) -> Self {
        DbPool::Sqlite(pool)
    }
}
