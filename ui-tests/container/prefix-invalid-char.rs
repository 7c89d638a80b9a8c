// A prefix holding ':', which would break the key grammar.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(prefix = "app:users")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
