//! The SQL statements of a record, built as strings at compile time.
//!
//! Identifiers are double-quoted (an embedded `"` is doubled); values are
//! always placeholders, never interpolated.

/// The placeholder style of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `$1`, `= ANY($1)` for id lists.
    Postgres,
    /// SQLite: `?1`; id lists are an `IN (` prefix the store completes.
    Sqlite,
}

impl Dialect {
    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite => format!("?{n}"),
        }
    }

    /// `WHERE <id> ...` matching a list of ids.
    fn many(self, id: &str) -> String {
        match self {
            Dialect::Postgres => format!("{id} = ANY($1)"),
            Dialect::Sqlite => format!("{id} IN ("),
        }
    }
}

/// The fields of `Statements` in the runtime, as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statements {
    pub select_by_id: String,
    pub select_many: String,
    pub insert: String,
    pub update: String,
    pub delete: String,
    pub delete_many: String,
    pub select_all: String,
}

/// A quoted identifier: `"name"`, with `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted table: each `.`-separated part is quoted (`public.users` ->
/// `"public"."users"`).
pub fn quote_table(table: &str) -> String {
    table.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

/// Builds every statement of a store. `columns` are all columns in field
/// order; `id` indexes the primary key among them.
pub fn statements(dialect: Dialect, table: &str, columns: &[&str], id: usize) -> Statements {
    let table = quote_table(table);
    let id_col = quote_ident(columns[id]);
    let all = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let values: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != id)
        .map(|(_, c)| quote_ident(c))
        .collect();

    // INSERT: the id is bound first, then the values in column order.
    let insert_columns = std::iter::once(id_col.clone())
        .chain(values.iter().cloned())
        .collect::<Vec<_>>()
        .join(", ");
    let insert_values = (1..=values.len() + 1)
        .map(|n| dialect.placeholder(n))
        .collect::<Vec<_>>()
        .join(", ");

    // UPDATE: the values first, then the id. A record that is only an id
    // gets a no-op assignment so the statement stays valid.
    let assignments = if values.is_empty() {
        format!("{id_col} = {id_col}")
    } else {
        values
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = {}", dialect.placeholder(i + 1)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let update_id = dialect.placeholder(values.len() + 1);
    let first = dialect.placeholder(1);

    Statements {
        select_by_id: format!("SELECT {all} FROM {table} WHERE {id_col} = {first}"),
        select_many: format!("SELECT {all} FROM {table} WHERE {}", dialect.many(&id_col)),
        insert: format!("INSERT INTO {table} ({insert_columns}) VALUES ({insert_values}) RETURNING {all}"),
        update: format!("UPDATE {table} SET {assignments} WHERE {id_col} = {update_id} RETURNING {all}"),
        delete: format!("DELETE FROM {table} WHERE {id_col} = {first}"),
        delete_many: format!("DELETE FROM {table} WHERE {}", dialect.many(&id_col)),
        select_all: format!("SELECT {all} FROM {table}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(quote_ident("name"), "\"name\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_table("public.users"), "\"public\".\"users\"");
    }

    #[test]
    fn postgres_statements() {
        let s = statements(Dialect::Postgres, "users", &["name", "id", "email"], 1);
        assert_eq!(
            s.select_by_id,
            r#"SELECT "name", "id", "email" FROM "users" WHERE "id" = $1"#
        );
        assert_eq!(
            s.select_many,
            r#"SELECT "name", "id", "email" FROM "users" WHERE "id" = ANY($1)"#
        );
        assert_eq!(
            s.insert,
            r#"INSERT INTO "users" ("id", "name", "email") VALUES ($1, $2, $3) RETURNING "name", "id", "email""#
        );
        assert_eq!(
            s.update,
            r#"UPDATE "users" SET "name" = $1, "email" = $2 WHERE "id" = $3 RETURNING "name", "id", "email""#
        );
        assert_eq!(s.delete, r#"DELETE FROM "users" WHERE "id" = $1"#);
        assert_eq!(s.delete_many, r#"DELETE FROM "users" WHERE "id" = ANY($1)"#);
        assert_eq!(s.select_all, r#"SELECT "name", "id", "email" FROM "users""#);
    }

    #[test]
    fn sqlite_statements() {
        let s = statements(Dialect::Sqlite, "users", &["id", "name"], 0);
        assert_eq!(s.select_by_id, r#"SELECT "id", "name" FROM "users" WHERE "id" = ?1"#);
        assert_eq!(s.select_many, r#"SELECT "id", "name" FROM "users" WHERE "id" IN ("#);
        assert_eq!(
            s.insert,
            r#"INSERT INTO "users" ("id", "name") VALUES (?1, ?2) RETURNING "id", "name""#
        );
        assert_eq!(
            s.update,
            r#"UPDATE "users" SET "name" = ?1 WHERE "id" = ?2 RETURNING "id", "name""#
        );
        assert_eq!(s.delete_many, r#"DELETE FROM "users" WHERE "id" IN ("#);
    }

    #[test]
    fn an_id_only_record_still_updates() {
        let s = statements(Dialect::Postgres, "tags", &["id"], 0);
        assert_eq!(
            s.update,
            r#"UPDATE "tags" SET "id" = "id" WHERE "id" = $1 RETURNING "id""#
        );
        assert_eq!(s.insert, r#"INSERT INTO "tags" ("id") VALUES ($1) RETURNING "id""#);
    }
}
