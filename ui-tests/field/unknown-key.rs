// An unknown field key: `primary_key` instead of `id`.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    #[cache(primary_key)]
    id: i64,
    name: String,
}

fn main() {}
