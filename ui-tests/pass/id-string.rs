// A String key with a prefix different from the table; ids with unsafe characters are escaped in keys.
use storehaus::Cached;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table = "sessions", prefix = "sess.v2")]
struct Session {
    #[cache(id)]
    token: String,
    user_id: i64,
}

fn main() {
    assert_eq!(Session::TABLE, "sessions");
    assert_eq!(Session::PREFIX, "sess.v2");
    assert_eq!(Session::ID_COLUMN, "token");
    assert_eq!(
        Session::PG.select_many,
        r#"SELECT "token", "user_id" FROM "sessions" WHERE "token" = ANY($1)"#
    );
    assert_eq!(Session::cache_key("app", &"abc-123".to_string()), "app:sess.v2:abc-123");
    assert_eq!(Session::cache_key("app", &"a:b*".to_string()), "app:sess.v2:a%3Ab%2A");

    let session = Session {
        token: "t".into(),
        user_id: 1,
    };
    assert_eq!(session.id(), "t");
}
