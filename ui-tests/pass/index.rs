// #[cache(index)] on unique columns: the derive lists them, renders their
// values, and gives their handles the `Indexed` kind that get_by accepts.
use storehaus::prelude::*;
use storehaus::{Column, Indexed, Plain};

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
struct User {
    id: i64,
    #[cache(index)]
    email: String,
    #[cache(index)]
    #[sqlx(rename = "login")]
    handle: uuid::Uuid,
    name: String,
}

#[allow(dead_code)]
async fn lookups(store: GenericStore<User>) -> Result<(), StorehausError> {
    let _: Option<User> = store.get_by(User::columns().email, "ada@example.com").await?;
    let _: Vec<Option<User>> = store.get_many_by(User::columns().handle, &[uuid::Uuid::nil()]).await?;
    Ok(())
}

fn main() {
    let _: Column<User, String, Indexed> = User::columns().email;
    let _: Column<User, String, Plain> = User::columns().name;
    assert_eq!(<User as Cached>::INDEXES, &["email", "login"]);
    let user = User {
        id: 1,
        email: "a@b".into(),
        handle: uuid::Uuid::nil(),
        name: "n".into(),
    };
    assert_eq!(
        user.index_values(),
        vec![("email", "a@b".to_string()), ("login", uuid::Uuid::nil().to_string())]
    );
}
