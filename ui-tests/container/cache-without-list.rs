// `#[cache]` on the struct without any key.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache]
struct User {
    id: i64,
    name: String,
}

fn main() {}
