// A struct key (`ttl`) put on a field.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    #[cache(ttl = 60)]
    name: String,
}

fn main() {}
