// The record does not derive sqlx::FromRow.
#[derive(Clone, serde::Serialize, serde::Deserialize, storehaus::Cached)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
