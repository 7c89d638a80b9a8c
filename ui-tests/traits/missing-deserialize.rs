// The record does not derive serde::Deserialize.
#[derive(Clone, serde::Serialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
