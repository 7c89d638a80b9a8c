// `#[cache]` on a field without any key.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    #[cache]
    id: i64,
    name: String,
}

fn main() {}
