// #[cache(index)] on the primary key, which records are already cached by.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    #[cache(id, index)]
    id: i64,
    email: String,
}

fn main() {}
