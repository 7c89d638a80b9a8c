//! What `watch_wal` puts in place before a reader streams: the server
//! checks (typed errors, asked with plain SQL before any replication
//! connection), the deployment's bookkeeping tables, its publication and
//! its slot.
//!
//! One slot and one publication per deployment and database, both named
//! [`SlotName`]: the publication lists every table the deployment watches,
//! the slot holds the position up to which the deployment's cache has
//! acknowledged the changes. A partitioned table is published with
//! `publish_via_partition_root = false`: each partition under its own
//! name, which the reader maps to the watched table (see `watches`).
//! With `true`, PostgreSQL publishes the rows written through a partition
//! as the root's but not a `TRUNCATE` of one partition, which would leave
//! the store's cached rows of that partition behind.

use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

use super::decode::{Relation, Relations};
use crate::cache::gate::Deployment;
use crate::error::Result;
use crate::error::WalError;

/// The bookkeeping: the deployment of each slot (with its expiry, its
/// heartbeat and a note of its last start-over) and what it watches.
const TABLES: &str = "\
CREATE TABLE IF NOT EXISTS storehaus_wal_slots (
    slot text PRIMARY KEY,
    deployment text NOT NULL,
    expires_after_ms bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    caught_up_at timestamptz NOT NULL DEFAULT now(),
    lagging boolean NOT NULL DEFAULT false,
    ephemeral boolean NOT NULL DEFAULT false,
    clear_pending boolean NOT NULL DEFAULT false,
    note text
);
CREATE TABLE IF NOT EXISTS storehaus_wal_watches (
    slot text NOT NULL,
    nspname text NOT NULL,
    relname text NOT NULL,
    prefix text NOT NULL,
    id_column text NOT NULL,
    PRIMARY KEY (slot, nspname, relname, prefix)
);
";

/// The slot (and publication) name of a deployment in a database:
/// `storehaus_` + the deployment's name folded to `[a-z0-9_]` (at most 36
/// characters) + 12 hex digits of a hash of database and name, so two
/// deployments never share one and a name always maps to the same slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotName(pub String);

impl SlotName {
    pub fn new(database: &str, deployment: &str) -> SlotName {
        let folded: String = deployment
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '_',
            })
            .take(36)
            .collect();
        let digest = Sha256::digest(format!("{database}\0{deployment}").as_bytes());
        let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        SlotName(format!("storehaus_{folded}_{hash}"))
    }

    /// The prefix of this slot's heartbeat messages.
    pub fn heartbeat_prefix(&self) -> String {
        format!("storehaus:{}", self.0)
    }

    /// The prefix of the message that announces a new watch: the reader
    /// reads the watches again when it reaches it in the log.
    pub fn watches_prefix(&self) -> String {
        format!("storehaus:{}:watches", self.0)
    }
}

/// A watched table as the write-ahead log names it.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub schema: String,
    pub name: String,
}

impl Table {
    /// `schema.name`, as pgoutput's TRUNCATE names it (and the outbox's
    /// deliveries key their entries).
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn sql(&self) -> String {
        format!(
            "{}.{}",
            crate::outbox::ident(&self.schema),
            crate::outbox::ident(&self.name)
        )
    }
}

/// The server checks, in the order a user fixes them: PostgreSQL 14+,
/// `wal_level = logical`, a role with `REPLICATION`. Returns the database's name.
pub(crate) async fn preflight(pool: &PgPool) -> Result<String> {
    let row = sqlx::query(
        "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
         (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
         current_user::text, current_database()::text",
    )
    .fetch_one(pool)
    .await?;
    let version: i32 = row.try_get(0)?;
    if version < 140_000 {
        return Err(WalError::ServerTooOld { version }.into());
    }
    let wal_level: String = row.try_get(1)?;
    if wal_level != "logical" {
        return Err(WalError::WalLevel { wal_level }.into());
    }
    if !row.try_get::<Option<bool>, _>(2)?.unwrap_or(false) {
        return Err(WalError::NoReplicationRole { role: row.try_get(3)? }.into());
    }
    Ok(row.try_get(4)?)
}

/// Resolves `table` with the pool's `search_path` and checks that its
/// replica identity carries `id_column` (the primary key under `DEFAULT`,
/// the chosen index under `USING INDEX`, every column under `FULL`).
pub(crate) async fn resolve(pool: &PgPool, table: &str, id_column: &str) -> Result<Table> {
    let row = sqlx::query(
        "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
         EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = c.oid AND a.attname = $2 \
                   AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = to_regclass($1)",
    )
    .bind(crate::outbox::ident(table))
    .bind(id_column)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Err(WalError::NoSuchTable { table: table.into() }.into());
    };
    let identity: String = row.try_get(2)?;
    let carries: bool = row.try_get(3)?;
    if !(identity == "f" || carries) {
        let identity = match identity.as_str() {
            "d" => "DEFAULT, and the primary key does not hold it (or there is none)",
            "i" => "USING INDEX, an index without it",
            _ => "NOTHING",
        };
        return Err(WalError::ReplicaIdentity {
            table: table.into(),
            id_column: id_column.into(),
            identity: identity.into(),
        }
        .into());
    }
    Ok(Table {
        schema: row.try_get(0)?,
        name: row.try_get(1)?,
    })
}

/// Installs the bookkeeping tables, registers the deployment's slot and
/// its watch of `table` under `prefix`, and adds `table` to the
/// deployment's publication (created if missing), one installer at a time.
pub(crate) async fn register(
    pool: &PgPool,
    slot: &SlotName,
    deployment: &Deployment,
    table: &Table,
    prefix: &str,
    id_column: &str,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('storehaus_wal'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(TABLES).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO storehaus_wal_slots (slot, deployment, expires_after_ms, ephemeral) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (slot) DO UPDATE SET expires_after_ms = EXCLUDED.expires_after_ms",
    )
    .bind(&slot.0)
    .bind(&deployment.name)
    .bind(deployment.expiry.as_millis() as i64)
    .bind(deployment.ephemeral)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO storehaus_wal_watches VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
        .bind(&slot.0)
        .bind(&table.schema)
        .bind(&table.name)
        .bind(prefix)
        .bind(id_column)
        .execute(&mut *tx)
        .await?;
    let publication = crate::outbox::ident(&slot.0);
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
        .bind(&slot.0)
        .fetch_one(&mut *tx)
        .await?;
    if !exists {
        tracing::info!(target: "storehaus", publication = %slot.0, table = %table.qualified(), "creating the publication");
        sqlx::raw_sql(&format!(
            "CREATE PUBLICATION {publication} FOR TABLE {} WITH (publish_via_partition_root = false)",
            table.sql()
        ))
        .execute(&mut *tx)
        .await?;
    } else if !published(&mut tx, slot, table).await? {
        tracing::info!(target: "storehaus", publication = %slot.0, table = %table.qualified(), "adding the table to the publication");
        sqlx::raw_sql(&format!("ALTER PUBLICATION {publication} ADD TABLE {}", table.sql()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    // After the commit: the reader that reaches this message in the log
    // reads the watches again, and delivers to this prefix from there on.
    sqlx::query("SELECT pg_logical_emit_message(false, $1, '')")
        .bind(slot.watches_prefix())
        .execute(pool)
        .await?;
    Ok(())
}

async fn published(tx: &mut sqlx::PgConnection, slot: &SlotName, table: &Table) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
         WHERE p.pubname = $1 AND r.prrelid = to_regclass($2))",
    )
    .bind(&slot.0)
    .bind(table.sql())
    .fetch_one(tx)
    .await?)
}

/// Whether the deployment of `slot` was registered before.
pub(crate) async fn known(pool: &PgPool, slot: &SlotName) -> Result<bool> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('storehaus_wal_slots') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(false);
    }
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM storehaus_wal_slots WHERE slot = $1)")
            .bind(&slot.0)
            .fetch_one(pool)
            .await?,
    )
}

/// What the server says of a deployment's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// No such slot.
    Missing,
    /// The server invalidated it (`wal_status = 'lost'`: it fell behind
    /// `max_slot_wal_keep_size`, or conflicted on a standby).
    Lost,
    /// Usable; streamed by this backend pid, if any.
    Ready { active_pid: Option<i32> },
}

pub(crate) async fn slot_state(pool: &PgPool, slot: &SlotName) -> Result<SlotState> {
    let row = sqlx::query("SELECT active_pid, coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1")
        .bind(&slot.0)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        None => SlotState::Missing,
        Some(r) if r.try_get::<String, _>(1)? == "lost" => SlotState::Lost,
        Some(r) => SlotState::Ready {
            active_pid: r.try_get(0)?,
        },
    })
}

/// Creates the deployment's slot (`pgoutput`). Waits, as PostgreSQL does,
/// for the transactions running at that moment to end: its position is
/// consistent from there on.
pub(crate) async fn create_slot(pool: &PgPool, slot: &SlotName) -> Result<()> {
    tracing::info!(target: "storehaus", slot = %slot.0, "creating the replication slot");
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot.0)
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops the slot, if it exists and no one streams it.
pub(crate) async fn drop_slot(pool: &PgPool, slot: &SlotName) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT pg_drop_replication_slot(slot_name) IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
    )
    .bind(&slot.0)
    .fetch_optional(pool)
    .await?
    .unwrap_or(false))
}

/// What the deployment of a slot watches, every process of it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Watched {
    /// (qualified table, store prefix) pairs, as the outbox's deliveries take them.
    pub pairs: Vec<(String, String)>,
    /// Every published relation of those tables (each table, each of its
    /// partitions at any depth) → its table and id column.
    pub ids: Relations,
}

/// The watches of `slot`'s deployment, with the partitions each watched
/// table has now (a partition attached later is found when its first
/// change arrives: the reader reads the watches again).
pub(crate) async fn watches(pool: &PgPool, slot: &SlotName) -> Result<Watched> {
    let rows: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
        "SELECT w.nspname, w.relname, w.prefix, w.id_column, n.nspname::text, c.relname::text \
         FROM storehaus_wal_watches w \
         CROSS JOIN LATERAL (SELECT to_regclass(format('%I.%I', w.nspname, w.relname)) AS root) r \
         CROSS JOIN LATERAL (SELECT relid FROM pg_partition_tree(r.root) UNION SELECT r.root) t \
         JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE w.slot = $1",
    )
    .bind(&slot.0)
    .fetch_all(pool)
    .await?;
    let mut watched = Watched::default();
    for (schema, name, prefix, id_column, rel_schema, rel_name) in rows {
        let root = Table { schema, name }.qualified();
        let relation = Table {
            schema: rel_schema,
            name: rel_name,
        }
        .qualified();
        let pair = (root.clone(), prefix);
        if !watched.pairs.contains(&pair) {
            watched.pairs.push(pair);
        }
        watched.ids.insert(relation, Relation { root, id_column });
    }
    Ok(watched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_valid_stable_and_distinct() {
        let a = SlotName::new("app", "My-App.prod");
        assert!(a.0.starts_with("storehaus_my_app_prod_"), "{a:?}");
        assert!(a.0.len() <= 63);
        assert!(a
            .0
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert_eq!(a, SlotName::new("app", "My-App.prod"));
        assert_ne!(a, SlotName::new("app", "my_app_prod"), "folding alone must not collide");
        assert_ne!(a, SlotName::new("other", "My-App.prod"), "one slot per database");
        let long = SlotName::new("db", &"x".repeat(200));
        assert!(long.0.len() <= 63, "{}", long.0.len());
    }
}
