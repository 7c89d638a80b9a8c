// A generic record: type parameters are not supported yet.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct Record<T> {
    id: i64,
    value: T,
}

fn main() {}
