// Two fields are marked #[cache(id)].
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    #[cache(id)]
    id: i64,
    #[cache(id)]
    email: String,
}

fn main() {}
