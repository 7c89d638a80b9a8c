//! The DDL of the outbox: three shared tables, and per watched table the
//! triggers that log every changed primary key into the outbox in the
//! writing transaction.
//!
//! PostgreSQL (13 or later, for `pg_current_xact_id`): on an ordinary table,
//! statement-level triggers with transition tables (one INSERT per
//! statement, however many rows it changed); on a partitioned table,
//! row-level triggers on the parent, which PostgreSQL clones onto every
//! partition, present and future, so a write addressed to a partition is
//! logged too. A TRUNCATE trigger on the table and on each of its
//! partitions logs the whole table. Every trigger is `ENABLE ALWAYS`, so it
//! also fires for writes applied with `session_replication_role = replica`
//! (logical replication, `pg_restore --disable-triggers`): the data
//! changed, and the cache must hear of it. `pg_notify('storehaus_outbox',
//! ...)` is the worker's wake-up. Each entry carries the id of the
//! transaction that wrote it, which the worker compares with its snapshots
//! (see `pass`). The table's name is written into its capture function, so
//! entries logged by a partition carry the watched table's name.
//!
//! SQLite: row-level triggers; its writers are serialized, so the sequence
//! alone orders entries. `INSERT OR REPLACE` / `UPDATE OR REPLACE` delete
//! the rows that held the new unique values without firing their DELETE
//! trigger (unless `recursive_triggers` is on): a BEFORE trigger per unique
//! column set logs those rows first.
//!
//! Ids are logged as text (`id::text` in PostgreSQL, `CAST(id AS TEXT)` or
//! the hyphenated form of a 16-byte uuid BLOB in SQLite), which equals their
//! `Display` form for integers, uuids and strings: the key a store builds.

use crate::store::query::quote_ident;

/// The channel the triggers notify on.
pub(crate) const CHANNEL: &str = "storehaus_outbox";

/// Written on each capture function: an installed outbox of an older
/// layout is installed again.
pub(crate) const VERSION: &str = "storehaus outbox 2";

/// The shared tables, PostgreSQL. The positions table grew columns after
/// its first release: they are added where missing.
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
ALTER TABLE storehaus_outbox_positions
    ADD COLUMN IF NOT EXISTS seen_xmax bigint,
    ADD COLUMN IF NOT EXISTS seen_xip bigint[],
    ADD COLUMN IF NOT EXISTS renewed_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS expires_after_ms bigint NOT NULL DEFAULT 600000,
    ADD COLUMN IF NOT EXISTS ephemeral boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS expired boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS db_identity text,
    ADD COLUMN IF NOT EXISTS note text;
CREATE TABLE IF NOT EXISTS storehaus_outbox_watches (
    deployment text NOT NULL,
    tbl text NOT NULL,
    prefix text NOT NULL,
    PRIMARY KEY (deployment, tbl, prefix)
);
";

/// The shared tables, SQLite (columns added to an older positions table by
/// the installer, which can ask `pragma_table_info` first).
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
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    renewed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_after_ms INTEGER NOT NULL DEFAULT 600000,
    ephemeral INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    note TEXT
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

/// Columns of the SQLite positions table added after its first release:
/// name and definition.
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE_LATER_COLUMNS: [(&str, &str); 5] = [
    ("renewed_at", "TEXT NOT NULL DEFAULT '1970-01-01T00:00:00.000Z'"),
    ("expires_after_ms", "INTEGER NOT NULL DEFAULT 600000"),
    ("ephemeral", "INTEGER NOT NULL DEFAULT 0"),
    ("expired", "INTEGER NOT NULL DEFAULT 0"),
    ("note", "TEXT"),
];

/// A SQL string literal.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) fn ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    quote_ident(&mut out, s);
    out
}

/// The names of the PostgreSQL triggers; every relation of a watched table
/// (the table, and each of its partitions) carries all four, `ENABLE ALWAYS`.
pub(crate) const PG_TRIGGERS: [&str; 4] = [
    "storehaus_outbox_insert",
    "storehaus_outbox_update",
    "storehaus_outbox_delete",
    "storehaus_outbox_truncate",
];

/// The capture function's name for `table`.
pub(crate) fn pg_function(table: &str) -> String {
    format!("storehaus_capture_{table}")
}

/// Everything PostgreSQL needs for `table` (id column `id`), idempotent:
/// the shared tables, the capture function and the triggers. Run it in one
/// transaction (it is, when a store installs it).
pub(crate) fn postgres(table: &str, id: &str) -> String {
    format!(
        "{PG_TABLES}{function}{triggers}",
        function = pg_capture_function(table, id),
        triggers = pg_triggers(table),
    )
}

/// The capture function: statement level (transition tables) and row level
/// (partitioned tables) in one body.
fn pg_capture_function(table: &str, id: &str) -> String {
    let func = ident(&pg_function(table));
    let name = literal(table);
    let id = ident(id);
    format!(
        "\
CREATE OR REPLACE FUNCTION {func}() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $storehaus$
DECLARE
    n bigint;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO storehaus_outbox (tbl, key) VALUES ({name}, NEW.{id}::text);
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO storehaus_outbox (tbl, key) VALUES ({name}, OLD.{id}::text);
        ELSE
            INSERT INTO storehaus_outbox (tbl, key) VALUES ({name}, OLD.{id}::text);
            IF NEW.{id} IS DISTINCT FROM OLD.{id} THEN
                INSERT INTO storehaus_outbox (tbl, key) VALUES ({name}, NEW.{id}::text);
            END IF;
        END IF;
        PERFORM pg_notify({channel}, TG_TABLE_SCHEMA || '.' || {name});
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO storehaus_outbox (tbl, key) SELECT {name}, r.{id}::text FROM new_rows r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO storehaus_outbox (tbl, key) SELECT {name}, r.{id}::text FROM old_rows r;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO storehaus_outbox (tbl, key)
        SELECT {name}, k FROM (
            SELECT r.{id}::text AS k FROM old_rows r UNION SELECT r.{id}::text FROM new_rows r
        ) changed;
    ELSE
        INSERT INTO storehaus_outbox (tbl, key) VALUES ({name}, NULL);
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify({channel}, TG_TABLE_SCHEMA || '.' || {name});
    END IF;
    RETURN NULL;
END
$storehaus$;
COMMENT ON FUNCTION {func}() IS {version};
",
        channel = literal(CHANNEL),
        version = literal(VERSION),
    )
}

/// The triggers, chosen when the DDL runs: statement triggers on an
/// ordinary table; row triggers on a partitioned one (cloned onto its
/// partitions by PostgreSQL) and a TRUNCATE trigger on each partition.
fn pg_triggers(table: &str) -> String {
    let func = ident(&pg_function(table));
    let [ins, upd, del, trunc] = PG_TRIGGERS;
    // `format(...)` templates, `%s` standing for the relation.
    let on = |sql: String| literal(&sql);
    let drop = |name: &str| on(format!("DROP TRIGGER IF EXISTS {name} ON %s"));
    let row = |name: &str, op: &str| {
        on(format!(
            "CREATE TRIGGER {name} AFTER {op} ON %s FOR EACH ROW EXECUTE FUNCTION {func}()"
        ))
    };
    let statement = |name: &str, op: &str, tables: &str| {
        on(format!(
            "CREATE TRIGGER {name} AFTER {op} ON %s {tables} FOR EACH STATEMENT EXECUTE FUNCTION {func}()"
        ))
    };
    format!(
        "\
DO $storehaus_install$
DECLARE
    root regclass := {root}::regclass;
    part regclass;
    trig text;
BEGIN
    EXECUTE format({drop_ins}, root);
    EXECUTE format({drop_upd}, root);
    EXECUTE format({drop_del}, root);
    IF (SELECT relkind FROM pg_class WHERE oid = root) = 'p' THEN
        EXECUTE format({row_ins}, root);
        EXECUTE format({row_upd}, root);
        EXECUTE format({row_del}, root);
    ELSE
        EXECUTE format({st_ins}, root);
        EXECUTE format({st_upd}, root);
        EXECUTE format({st_del}, root);
    END IF;
    FOR part IN SELECT root UNION SELECT relid FROM pg_partition_tree(root) LOOP
        EXECUTE format({drop_trunc}, part);
        EXECUTE format({st_trunc}, part);
        FOR trig IN SELECT tgname FROM pg_trigger WHERE tgrelid = part AND tgname = ANY({names}) LOOP
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', part, trig);
        END LOOP;
    END LOOP;
END
$storehaus_install$;
",
        root = literal(&ident(table)),
        drop_ins = drop(ins),
        drop_upd = drop(upd),
        drop_del = drop(del),
        drop_trunc = drop(trunc),
        row_ins = row(ins, "INSERT"),
        row_upd = row(upd, "UPDATE"),
        row_del = row(del, "DELETE"),
        st_ins = statement(ins, "INSERT", "REFERENCING NEW TABLE AS new_rows"),
        st_upd = statement(upd, "UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        st_del = statement(del, "DELETE", "REFERENCING OLD TABLE AS old_rows"),
        st_trunc = statement(trunc, "TRUNCATE", ""),
        names = literal(&format!("{{{}}}", PG_TRIGGERS.join(","))) + "::text[]",
    )
}

/// The relations of `table` (`$1`: its name, resolved in the search path;
/// `$2`: [`PG_TRIGGERS`]) that lack one of the outbox triggers or hold one
/// that is not `ENABLE ALWAYS`, by name; with the capture function of
/// another layout, the table itself. Empty when the table is watched as
/// this version installs it; the table's name alone when it does not exist.
pub(crate) const PG_MISSING_TRIGGERS: &str = "\
WITH root AS (SELECT to_regclass(quote_ident($1)) AS oid),
rels AS (
    SELECT oid FROM root WHERE oid IS NOT NULL
    UNION SELECT t.relid FROM root, pg_partition_tree(root.oid) t WHERE root.oid IS NOT NULL
)
SELECT rels.oid::regclass::text FROM rels
WHERE (SELECT count(*) FROM pg_trigger g WHERE g.tgrelid = rels.oid AND g.tgname = ANY($2) AND g.tgenabled = 'A') < 4
UNION ALL
SELECT $1 FROM root WHERE root.oid IS NULL
    OR obj_description(to_regprocedure(quote_ident($3) || '()'), 'pg_proc') IS DISTINCT FROM $4";

/// The key of SQLite row `row` (`NEW`, `OLD` or a table alias): a 16-byte
/// BLOB (how sqlx stores a uuid) in uuid form, anything else as text.
fn sqlite_key(row: &str, id: &str) -> String {
    let col = format!("{row}.{}", ident(id));
    format!(
        "CASE WHEN typeof({col}) = 'blob' AND length({col}) = 16 THEN lower(\
         substr(hex({col}), 1, 8) || '-' || substr(hex({col}), 9, 4) || '-' || \
         substr(hex({col}), 13, 4) || '-' || substr(hex({col}), 17, 4) || '-' || \
         substr(hex({col}), 21)) ELSE CAST({col} AS TEXT) END"
    )
}

/// Everything SQLite needs for `table`, idempotent. `unique` lists the
/// table's unique column sets other than the id (each a REPLACE can
/// conflict on).
pub(crate) fn sqlite(table: &str, id: &str, unique: &[Vec<String>]) -> String {
    let t = ident(table);
    let name = literal(table);
    let new = sqlite_key("NEW", id);
    let old = sqlite_key("OLD", id);
    let trigger = |op: &str| ident(&format!("storehaus_outbox_{op}_{table}"));
    let mut sql = format!(
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
    );
    for (n, columns) in unique.iter().enumerate() {
        // The rows that hold NEW's values of this set (other than the row
        // itself, for an UPDATE): a REPLACE is about to delete them.
        let holds = |other: &str| {
            columns
                .iter()
                .map(|c| format!("h.{c} = NEW.{c}", c = ident(c)))
                .chain(std::iter::once(format!("h.{id} IS NOT {other}.{id}", id = ident(id))))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let held = sqlite_key("h", id);
        sql.push_str(&format!(
            "\
CREATE TRIGGER IF NOT EXISTS {before_ins} BEFORE INSERT ON {t} BEGIN
    INSERT INTO storehaus_outbox (tbl, key) SELECT {name}, {held} FROM {t} h WHERE {on_insert};
END;
CREATE TRIGGER IF NOT EXISTS {before_upd} BEFORE UPDATE ON {t} BEGIN
    INSERT INTO storehaus_outbox (tbl, key) SELECT {name}, {held} FROM {t} h WHERE {on_update};
END;
",
            before_ins = trigger(&format!("replace_insert_{n}")),
            before_upd = trigger(&format!("replace_update_{n}")),
            on_insert = holds("NEW"),
            on_update = holds("OLD"),
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_literals_escaped() {
        let sql = postgres("odd\"name", "id");
        assert!(sql.contains("'\"odd\"\"name\"'::regclass"), "{sql}");
        assert!(sql.contains("VALUES ('odd\"name', NEW.\"id\"::text)"), "{sql}");
        assert!(sqlite("it's", "id", &[]).contains("VALUES ('it''s', "));
    }

    #[test]
    fn sqlite_logs_the_rows_a_replace_would_delete() {
        let sql = sqlite("users", "id", &[vec!["email".into()]]);
        assert!(
            sql.contains("BEFORE INSERT ON \"users\"") && sql.contains("h.\"email\" = NEW.\"email\""),
            "{sql}"
        );
        assert!(sql.contains("h.\"id\" IS NOT OLD.\"id\""), "{sql}");
    }
}
