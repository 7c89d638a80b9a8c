// The expansion uses absolute paths only: it needs no imports, and local items shadowing std names do not break it.
#![allow(non_camel_case_types, dead_code)]

mod records {
    // Shadow prelude names the generated code could otherwise pick up.
    struct Option;
    struct Some;
    struct None;
    struct String;
    mod core {}
    mod std {}

    #[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
    #[cache(ttl = 5)]
    pub struct Note {
        pub id: i64,
        pub body: ::std::string::String,
    }
}

fn needs_cached<T: storehaus::Cached>() -> &'static str {
    T::TABLE
}

fn main() {
    assert_eq!(needs_cached::<records::Note>(), "note");
    assert_eq!(<records::Note as storehaus::Cached>::TTL, Some(5));
    assert_eq!(records::Note::cache_key("g", &1), "g:note:1");
}
