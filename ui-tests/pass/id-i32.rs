// An i32 id named `id` (the default key); table and prefix default to the struct name in snake_case.
use storehaus::Cached;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct BlogPost {
    id: i32,
    title: String,
    published: bool,
}

fn main() {
    assert_eq!(BlogPost::TABLE, "blog_post");
    assert_eq!(BlogPost::PREFIX, "blog_post");
    assert_eq!(BlogPost::TTL, None);
    assert_eq!(BlogPost::COLUMNS, ["id", "title", "published"]);
    assert_eq!(BlogPost::ID_COLUMN, "id");
    assert_eq!(
        BlogPost::PG.select_by_id,
        r#"SELECT "id", "title", "published" FROM "blog_post" WHERE "id" = $1"#
    );
    assert_eq!(
        BlogPost::SQLITE.update,
        r#"UPDATE "blog_post" SET "title" = ?1, "published" = ?2 WHERE "id" = ?3 RETURNING "id", "title", "published""#
    );
    assert_eq!(BlogPost::cache_key("app", &7), "app:blog_post:7");
    assert_eq!(BlogPost::cache_key("app", &-7), "app:blog_post:-7");

    let post = BlogPost {
        id: 3,
        title: "Hello".into(),
        published: true,
    };
    let id: &i32 = post.id();
    assert_eq!(*id, 3);
}
