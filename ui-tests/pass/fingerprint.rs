// The fingerprint changes with field order, names, types and the table, and only with them.
use storehaus::Cached;

mod a {
    #[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
    #[cache(table = "items", ttl = 10)]
    pub struct Item {
        pub id: i64,
        pub name: String,
    }
}

mod same_layout {
    // Another struct name, prefix and ttl, same table and fields: same bytes in the cache.
    #[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
    #[cache(table = "items", prefix = "things", ttl = 20)]
    pub struct Thing {
        pub id: i64,
        pub name: String,
    }
}

mod reordered {
    #[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
    #[cache(table = "items")]
    pub struct Item {
        pub name: String,
        pub id: i64,
    }
}

mod retyped {
    #[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
    #[cache(table = "items")]
    pub struct Item {
        pub id: i32,
        pub name: String,
    }
}

mod renamed {
    #[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
    #[cache(table = "items")]
    pub struct Item {
        pub id: i64,
        pub title: String,
    }
}

mod other_table {
    #[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
    #[cache(table = "items_v2")]
    pub struct Item {
        pub id: i64,
        pub name: String,
    }
}

fn main() {
    let base = a::Item::FINGERPRINT;
    assert_eq!(base, same_layout::Thing::FINGERPRINT);
    assert_ne!(base, reordered::Item::FINGERPRINT);
    assert_ne!(base, retyped::Item::FINGERPRINT);
    assert_ne!(base, renamed::Item::FINGERPRINT);
    assert_ne!(base, other_table::Item::FINGERPRINT);
}
