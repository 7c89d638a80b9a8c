// #[cache(index)] written twice on one field.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    #[cache(index, index)]
    email: String,
}

fn main() {}
