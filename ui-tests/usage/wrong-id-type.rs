// Building a key with an integer for a record whose id is a Uuid.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: uuid::Uuid,
    name: String,
}

fn main() {
    let _key = User::cache_key("app", &42);
}
