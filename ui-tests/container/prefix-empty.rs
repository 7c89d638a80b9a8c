// An empty cache prefix.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(prefix = "")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
