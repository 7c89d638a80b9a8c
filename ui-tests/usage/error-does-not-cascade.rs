// A TTL of zero: the only error, even though the record is used below.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(ttl = 0)]
struct User {
    id: i64,
    name: String,
}

fn needs_cached<T: storehaus::Cached>() {}

fn main() {
    needs_cached::<User>();
    let _key = User::cache_key("app", &1);
}
