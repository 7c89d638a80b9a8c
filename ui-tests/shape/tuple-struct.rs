// A tuple struct has no field names to map to columns.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User(i64, String);

fn main() {}
