// A table name written as a bare identifier instead of a string.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table = users)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
