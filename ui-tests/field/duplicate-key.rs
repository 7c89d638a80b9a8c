// `id` written twice in one field attribute.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    #[cache(id, id)]
    id: i64,
    name: String,
}

fn main() {}
