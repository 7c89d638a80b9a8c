// #[sqlx(json)]: the derive binds fields as they are, so a JSON column needs the Json<T> wrapper type.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    #[sqlx(json)]
    tags: Vec<String>,
}

fn main() {}
