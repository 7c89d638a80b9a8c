// A table name holding SQL instead of a name.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table = "users; DROP TABLE users")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
