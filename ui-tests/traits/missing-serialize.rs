// The record does not derive serde::Serialize.
#[derive(Clone, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
