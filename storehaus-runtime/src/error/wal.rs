//! Why invalidation from the write-ahead log cannot run: each error says
//! what to change, or to use the trigger outbox instead.

/// Why [`GenericStore::watch_wal`](crate::GenericStore::watch_wal) cannot
/// run on this database (feature `wal`). The trigger outbox,
/// [`GenericStore::watch_external_writes`](crate::GenericStore::watch_external_writes),
/// needs none of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// The server does not decode its write-ahead log (`wal_level` is not
    /// `logical`).
    #[error(
        "watch_wal needs wal_level = logical, and this server runs wal_level = {wal_level}: \
         set wal_level = logical and restart PostgreSQL, or use the trigger outbox \
         (GenericStore::watch_external_writes), which needs no server setting"
    )]
    WalLevel {
        /// The server's `wal_level`.
        wal_level: String,
    },
    /// The role may not open replication connections.
    #[error(
        "watch_wal needs a role with the REPLICATION attribute (or a superuser), and {role} has neither: \
         run ALTER ROLE {role} REPLICATION (and allow it replication connections in pg_hba.conf), \
         or use the trigger outbox (GenericStore::watch_external_writes)"
    )]
    NoReplicationRole {
        /// The role the store's pool connects as.
        role: String,
    },
    /// The server is older than PostgreSQL 14 (no logical decoding
    /// messages, which the reader's heartbeat needs).
    #[error(
        "watch_wal needs PostgreSQL 14 or later (this server is {version}); \
         use the trigger outbox (GenericStore::watch_external_writes)"
    )]
    ServerTooOld {
        /// `server_version_num`.
        version: i32,
    },
    /// The store's database is not PostgreSQL.
    #[error("watch_wal reads PostgreSQL's write-ahead log; on SQLite use the trigger outbox (GenericStore::watch_external_writes)")]
    NotPostgres,
    /// The watched table does not exist (as the store's pool resolves it).
    #[error("watch_wal: no table {table} (resolved with the pool's search_path)")]
    NoSuchTable {
        /// The table's name.
        table: String,
    },
    /// The table's replica identity does not carry its id column: a DELETE
    /// (or an UPDATE of the key) would not say which row it changed.
    #[error(
        "watch_wal: the replica identity of {table} ({identity}) does not carry its id column {id_column}, \
         so deletes and key changes would not say which row changed: give it a primary key on {id_column} \
         (REPLICA IDENTITY DEFAULT) or ALTER TABLE {table} REPLICA IDENTITY FULL"
    )]
    ReplicaIdentity {
        /// The table.
        table: String,
        /// Its id column.
        id_column: String,
        /// What its replica identity is.
        identity: String,
    },
    /// The replication connection failed (connect, authentication, start).
    #[error("watch_wal: the replication stream failed: {0}")]
    Stream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl WalError {
    pub(crate) fn stream(e: pg_walstream::ReplicationError) -> Self {
        WalError::Stream(Box::new(e))
    }
}
