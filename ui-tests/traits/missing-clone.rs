// The record does not derive Clone.
#[derive(serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
