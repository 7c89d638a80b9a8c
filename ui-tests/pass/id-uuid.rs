// The design document's example: a Uuid id with table, prefix and ttl.
use storehaus::prelude::*;
use storehaus::Statements;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "users", ttl = 1800, prefix = "users")]
pub struct User {
    #[cache(id)]
    pub id: uuid::Uuid,
    pub name: String,
    pub email: String,
}

fn main() {
    assert_eq!(User::TABLE, "users");
    assert_eq!(User::PREFIX, "users");
    assert_eq!(User::TTL, Some(1800));
    assert_eq!(User::COLUMNS, ["id", "name", "email"]);
    assert_eq!(User::ID_COLUMN, "id");
    assert_eq!(
        User::PG,
        Statements {
            select_by_id: r#"SELECT "id", "name", "email" FROM "users" WHERE "id" = $1"#,
            select_many: r#"SELECT "id", "name", "email" FROM "users" WHERE "id" = ANY($1)"#,
            insert: r#"INSERT INTO "users" ("id", "name", "email") VALUES ($1, $2, $3) RETURNING "id", "name", "email""#,
            update: r#"UPDATE "users" SET "name" = $1, "email" = $2 WHERE "id" = $3 RETURNING "id", "name", "email""#,
            delete: r#"DELETE FROM "users" WHERE "id" = $1"#,
            delete_many: r#"DELETE FROM "users" WHERE "id" = ANY($1)"#,
            select_all: r#"SELECT "id", "name", "email" FROM "users""#,
        }
    );
    assert_eq!(
        User::SQLITE,
        Statements {
            select_by_id: r#"SELECT "id", "name", "email" FROM "users" WHERE "id" = ?1"#,
            select_many: r#"SELECT "id", "name", "email" FROM "users" WHERE "id" IN ("#,
            insert: r#"INSERT INTO "users" ("id", "name", "email") VALUES (?1, ?2, ?3) RETURNING "id", "name", "email""#,
            update: r#"UPDATE "users" SET "name" = ?1, "email" = ?2 WHERE "id" = ?3 RETURNING "id", "name", "email""#,
            delete: r#"DELETE FROM "users" WHERE "id" = ?1"#,
            delete_many: r#"DELETE FROM "users" WHERE "id" IN ("#,
            select_all: r#"SELECT "id", "name", "email" FROM "users""#,
        }
    );

    let id = uuid::Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").unwrap();
    assert_eq!(
        User::cache_key("myapp", &id),
        "myapp:users:123e4567-e89b-12d3-a456-426614174000"
    );
    let user = User {
        id,
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    assert_eq!(*user.id(), id);
    assert_ne!(User::FINGERPRINT, 0);
}
