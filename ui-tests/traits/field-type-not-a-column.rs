// A field whose type sqlx cannot store (a plain struct without sqlx::Type).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Money {
    cents: i64,
}

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct Order {
    id: i64,
    total: Money,
}

fn main() {}
