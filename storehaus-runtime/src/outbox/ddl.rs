//! The DDL of the outbox: three shared tables, and per watched table the
//! triggers that log every changed primary key into the outbox in the
//! writing transaction.
//!
//! PostgreSQL (13 or later, for `pg_current_xact_id`): statement-level
//! triggers with transition tables (one INSERT per statement, however many
//! rows it changed), plus a TRUNCATE trigger that logs the whole table, and
//! `pg_notify('storehaus_outbox', ...)` as a wake-up. Each entry carries the
//! id of the transaction that wrote it: the worker only takes entries of
//! transactions older than every transaction still running, so an entry can
//! never become visible behind its position (sequence order is not commit
//! order). SQLite: row-level triggers; its writers are serialized, so the
//! sequence alone orders entries.
//!
//! Ids are logged as text (`id::text` in PostgreSQL, `CAST(id AS TEXT)` or
//! the hyphenated form of a 16-byte uuid BLOB in SQLite), which equals their
//! `Display` form for integers, uuids and strings: the key a store builds.

use crate::store::query::quote_ident;

/// The channel the triggers notify on.
pub(crate) const CHANNEL: &str = "storehaus_outbox";

/// The shared tables, PostgreSQL.
const PG_TABLES: &str = "\
CREATE TABLE IF NOT EXISTS storehaus_outbox (
    seq bigserial PRIMARY KEY,
    xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text)::bigint,
    tbl text NOT NULL,
    key text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS storehaus_outbox_position ON storehaus_outbox (xid, seq);
CREATE TABLE IF NOT EXISTS storehaus_outbox_positions (
    deployment text PRIMARY KEY,
    xid bigint NOT NULL,
    seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS storehaus_outbox_watches (
    deployment text NOT NULL,
    tbl text NOT NULL,
    prefix text NOT NULL,
    PRIMARY KEY (deployment, tbl, prefix)
);
";

/// The shared tables, SQLite.
const SQLITE_TABLES: &str = "\
CREATE TABLE IF NOT EXISTS storehaus_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    key TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS storehaus_outbox_positions (
    deployment TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS storehaus_outbox_watches (
    deployment TEXT NOT NULL,
    tbl TEXT NOT NULL,
    prefix TEXT NOT NULL,
    PRIMARY KEY (deployment, tbl, prefix)
);
CREATE TABLE IF NOT EXISTS storehaus_outbox_instance (id TEXT NOT NULL);
INSERT INTO storehaus_outbox_instance SELECT lower(hex(randomblob(16)))
    WHERE NOT EXISTS (SELECT 1 FROM storehaus_outbox_instance);
";

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    quote_ident(&mut out, s);
    out
}

/// The names of the PostgreSQL triggers on `table` (all four installed
/// means the table is watched).
pub(crate) fn pg_trigger_names() -> [&'static str; 4] {
    [
        "storehaus_outbox_insert",
        "storehaus_outbox_update",
        "storehaus_outbox_delete",
        "storehaus_outbox_truncate",
    ]
}

/// Everything PostgreSQL needs for `table` (id column `id`), idempotent:
/// the shared tables, the capture function and the four triggers. Run it in
/// one transaction (it is, when a store installs it).
pub(crate) fn postgres(table: &str, id: &str) -> String {
    let t = ident(table);
    let func = ident(&format!("storehaus_capture_{table}"));
    let id = ident(id);
    let [ins, upd, del, trunc] = pg_trigger_names();
    format!(
        "{PG_TABLES}\
CREATE OR REPLACE FUNCTION {func}() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $storehaus$
DECLARE
    n bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO storehaus_outbox (tbl, key) SELECT TG_TABLE_NAME, r.{id}::text FROM new_rows r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO storehaus_outbox (tbl, key) SELECT TG_TABLE_NAME, r.{id}::text FROM old_rows r;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO storehaus_outbox (tbl, key)
        SELECT TG_TABLE_NAME, k FROM (
            SELECT r.{id}::text AS k FROM old_rows r UNION SELECT r.{id}::text FROM new_rows r
        ) changed;
    ELSE
        INSERT INTO storehaus_outbox (tbl, key) VALUES (TG_TABLE_NAME, NULL);
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify({channel}, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    END IF;
    RETURN NULL;
END
$storehaus$;
DROP TRIGGER IF EXISTS {ins} ON {t};
CREATE TRIGGER {ins} AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {func}();
DROP TRIGGER IF EXISTS {upd} ON {t};
CREATE TRIGGER {upd} AFTER UPDATE ON {t} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {func}();
DROP TRIGGER IF EXISTS {del} ON {t};
CREATE TRIGGER {del} AFTER DELETE ON {t} REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {func}();
DROP TRIGGER IF EXISTS {trunc} ON {t};
CREATE TRIGGER {trunc} AFTER TRUNCATE ON {t}
    FOR EACH STATEMENT EXECUTE FUNCTION {func}();
",
        channel = literal(CHANNEL),
    )
}

/// The key of SQLite row `row` (`NEW` or `OLD`): a 16-byte BLOB (how sqlx
/// stores a uuid) in uuid form, anything else as text.
fn sqlite_key(row: &str, id: &str) -> String {
    let col = format!("{row}.{}", ident(id));
    format!(
        "CASE WHEN typeof({col}) = 'blob' AND length({col}) = 16 THEN lower(\
         substr(hex({col}), 1, 8) || '-' || substr(hex({col}), 9, 4) || '-' || \
         substr(hex({col}), 13, 4) || '-' || substr(hex({col}), 17, 4) || '-' || \
         substr(hex({col}), 21)) ELSE CAST({col} AS TEXT) END"
    )
}

/// Everything SQLite needs for `table`, idempotent.
pub(crate) fn sqlite(table: &str, id: &str) -> String {
    let t = ident(table);
    let name = literal(table);
    let new = sqlite_key("NEW", id);
    let old = sqlite_key("OLD", id);
    let trigger = |op: &str| ident(&format!("storehaus_outbox_{op}_{table}"));
    format!(
        "{SQLITE_TABLES}\
CREATE TRIGGER IF NOT EXISTS {ins} AFTER INSERT ON {t} BEGIN
    INSERT INTO storehaus_outbox (tbl, key) VALUES ({name}, {new});
END;
CREATE TRIGGER IF NOT EXISTS {upd} AFTER UPDATE ON {t} BEGIN
    INSERT INTO storehaus_outbox (tbl, key) VALUES ({name}, {old});
    INSERT INTO storehaus_outbox (tbl, key) SELECT {name}, {new} WHERE ({new}) IS NOT ({old});
END;
CREATE TRIGGER IF NOT EXISTS {del} AFTER DELETE ON {t} BEGIN
    INSERT INTO storehaus_outbox (tbl, key) VALUES ({name}, {old});
END;
",
        ins = trigger("insert"),
        upd = trigger("update"),
        del = trigger("delete"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_literals_escaped() {
        let sql = postgres("odd\"name", "id");
        assert!(sql.contains("ON \"odd\"\"name\""), "{sql}");
        assert!(sqlite("it's", "id").contains("VALUES ('it''s', "));
    }
}
