// A misspelled struct key: `tabel` instead of `table`.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(tabel = "users")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
