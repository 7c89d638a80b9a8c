// The field named `id` (the default key) is marked #[sqlx(skip)].
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    #[sqlx(skip)]
    id: i64,
    name: String,
}

fn main() {}
