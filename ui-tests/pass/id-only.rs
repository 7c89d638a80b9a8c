// A record that is only its id still gets valid statements (the update is a no-op assignment).
use storehaus::Cached;

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table = "tags")]
struct Tag {
    id: String,
}

fn main() {
    assert_eq!(Tag::COLUMNS, ["id"]);
    assert_eq!(
        Tag::PG.insert,
        r#"INSERT INTO "tags" ("id") VALUES ($1) RETURNING "id""#
    );
    assert_eq!(
        Tag::PG.update,
        r#"UPDATE "tags" SET "id" = "id" WHERE "id" = $1 RETURNING "id""#
    );
    assert_eq!(
        Tag::SQLITE.update,
        r#"UPDATE "tags" SET "id" = "id" WHERE "id" = ?1 RETURNING "id""#
    );
}
