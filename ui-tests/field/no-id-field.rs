// No field is marked #[cache(id)] and none is named `id`.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    user_id: i64,
    name: String,
}

fn main() {}
