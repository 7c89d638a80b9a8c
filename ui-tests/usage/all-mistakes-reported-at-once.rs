// Several mistakes in one derive (unknown key, ttl zero, bad prefix, no id): all are reported in one build.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(tabel = "users", ttl = 0)]
#[cache(prefix = "app:users")]
struct User {
    user_id: i64,
    #[cache(primary)]
    name: String,
}

fn main() {}
