// `#[cache(id = true)]`: `id` takes no value.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    #[cache(id = true)]
    id: i64,
    name: String,
}

fn main() {}
