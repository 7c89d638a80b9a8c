// A struct borrowing its fields: generic lifetimes are not supported.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User<'a> {
    id: i64,
    name: &'a str,
}

fn main() {}
