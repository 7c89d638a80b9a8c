//! `docs/FORMAT.md` holds for a reader that is not StoreHaus (issue 24):
//! `tests/format/storehaus_format.py` (Python 3 and the `msgpack` package,
//! Redis spoken by hand) decodes what two versions of a record type cached,
//! then writes a row with `psql` and invalidates it by the documented
//! recipe; StoreHaus then reads the new row in both versions, every read
//! path.
//!
//! Needs `python3` with `msgpack` (Debian: `apt-get install python3-msgpack`,
//! which `scripts/tools.sh` installs) and `psql`: the test fails, saying so,
//! when they are missing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use serde_json::{json, Value};
use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore, Order, Query};
use storehaus_testkit::*;

/// The running version.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "people", prefix = "people")]
struct PersonV1 {
    id: i64,
    #[cache(index)]
    email: String,
    name: String,
    active: bool,
    score: f64,
}

/// The version being rolled out: a nullable column more.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "people", prefix = "people")]
struct PersonV2 {
    id: i64,
    #[cache(index)]
    email: String,
    name: String,
    active: bool,
    score: f64,
    nickname: Option<String>,
}

const SCRIPT: &str = "tests/format/storehaus_format.py";

/// A Python 3 that has `msgpack`: `python3`, or Debian's own (where
/// `apt-get install python3-msgpack` puts the package).
fn python() -> &'static str {
    for candidate in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import msgpack"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return candidate;
        }
    }
    panic!(
        "tests/test_format.rs needs python3 with the msgpack package: \
         apt-get install python3-msgpack (bash scripts/tools.sh installs it), or pip install msgpack"
    );
}

fn run_python(args: &[&str], db: &Db) -> Value {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT))
        .args(args)
        .env("DATABASE_URL", database_url())
        .env("PGOPTIONS", format!("-c search_path={}", db.schema))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {SCRIPT}: {e}"));
    assert!(
        out.status.success(),
        "{SCRIPT} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

fn person(id: i64, name: &str, nickname: Option<&str>) -> PersonV2 {
    PersonV2 {
        id,
        email: format!("{id}@example.com"),
        name: name.into(),
        active: id % 2 == 1,
        score: id as f64 + 0.5,
        nickname: nickname.map(Into::into),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_language_reads_values_and_invalidates_by_the_recipe() {
    assert!(
        Command::new("psql").arg("--version").output().is_ok(),
        "tests/test_format.rs needs psql (PostgreSQL's client) on the PATH"
    );
    let db = Db::new().await;
    db.exec(
        "CREATE TABLE people (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL, \
         active boolean NOT NULL, score float8 NOT NULL, nickname text)",
    )
    .await;
    let global = random_name("fmt");
    let process = || Arc::new(CacheManager::new(CacheConfig::new(redis_url(), 3600, global.clone())).unwrap());
    let (old, new) = (process(), process());
    let v1 = GenericStore::<PersonV1>::new(db.pool.clone(), None, Some(CacheParams::new(old.clone())));
    let v2 = GenericStore::<PersonV2>::new(db.pool.clone(), None, Some(CacheParams::new(new.clone())));
    v2.create(person(1, "Ann", Some("annie")), None).await.unwrap();
    v2.create(person(2, "Bob", None), None).await.unwrap();

    // The old version caches first (home keys), then the new one (side keys).
    let everyone = || Query::new().order_by(PersonV1::columns().id, Order::Asc);
    v1.get_by_id(&1).await.unwrap();
    v1.get_by_id(&2).await.unwrap();
    assert_eq!(v1.get_by_id(&99).await.unwrap(), None);
    v1.get_by(PersonV1::columns().email, "1@example.com").await.unwrap();
    assert_eq!(v1.find(everyone()).await.unwrap().len(), 2);
    old.flush_fills().await;
    v2.get_by_id(&1).await.unwrap();
    new.flush_fills().await;

    let dump = run_python(&["dump", &redis_url(), &global, "people", "1", "2", "99"], &db);
    let tag = storehaus::codec::layout_tag(PersonV2::FINGERPRINT);
    assert_eq!(dump["registry"], json!([tag]), "{dump:#}");
    let one = &dump["records"]["1"];
    assert_eq!(one["key"], json!(v1.cache_key(&1)));
    assert_eq!(one["home"]["version"], json!(2));
    assert_eq!(one["home"]["fingerprint"], json!(PersonV1::FINGERPRINT));
    assert!(one["home"]["token"].is_u64(), "{one:#}");
    assert_eq!(one["home"]["payload"], json!([1, "1@example.com", "Ann", true, 1.5]));
    let side = &one["sides"][&tag];
    assert_eq!(side["fingerprint"], json!(PersonV2::FINGERPRINT));
    assert_eq!(side["payload"], json!([1, "1@example.com", "Ann", true, 1.5, "annie"]));
    assert_eq!(
        dump["records"]["2"]["home"]["payload"],
        json!([2, "2@example.com", "Bob", false, 2.5])
    );
    assert_eq!(dump["records"]["2"]["sides"][&tag], json!({"kind": "missing"}));
    let absent = &dump["records"]["99"]["home"];
    assert_eq!(
        (&absent["kind"], &absent["payload"]),
        (&json!("value"), &Value::Null),
        "no such row"
    );
    let generation = dump["generation"].as_u64().expect("a generation");
    let queries: Vec<&Value> = dump["queries"].as_object().unwrap().values().collect();
    assert_eq!(queries.len(), 1, "{dump:#}");
    assert_eq!(
        queries[0]["payload"],
        json!([
            generation,
            [
                [1, "1@example.com", "Ann", true, 1.5],
                [2, "2@example.com", "Bob", false, 2.5]
            ]
        ])
    );
    let index = dump["index"]
        .get(format!("{global}:people:idx:email:1%40example.com"))
        .unwrap_or_else(|| panic!("{dump:#}"));
    assert_eq!(
        index["payload"],
        json!({"Row": 1}),
        "the index entry holds the row's id"
    );

    // The other language writes and invalidates by the recipe...
    let sql = "UPDATE people SET name = 'Ann B.', nickname = 'nan' WHERE id = 1";
    let wrote = run_python(&["write", &redis_url(), &global, "people", sql, "1"], &db);
    // ... and no read of either version serves the old row: the old version
    // first (it fills the home key again), then the new one (its side key).
    let mut stale = Vec::new();
    let mut check = |what: &str, name: Option<String>| {
        if name.as_deref() != Some("Ann B.") {
            stale.push(format!("{what}: {name:?}"));
        }
    };
    check("v1 get_by_id", v1.get_by_id(&1).await.unwrap().map(|p| p.name));
    old.flush_fills().await;
    let n2 = v2.get_by_id(&1).await.unwrap();
    assert_eq!(n2.as_ref().and_then(|p| p.nickname.as_deref()), Some("nan"));
    check("v2 get_by_id", n2.map(|p| p.name));
    let many = v2.get_many(&[1, 2]).await.unwrap();
    check("v2 get_many", many[0].clone().map(|p| p.name));
    let by = v1.get_by(PersonV1::columns().email, "1@example.com").await.unwrap();
    check("v1 get_by", by.map(|p| p.name));
    check(
        "v1 find",
        v1.find(everyone()).await.unwrap().first().map(|p| p.name.clone()),
    );
    let q2 = Query::new().order_by(PersonV2::columns().id, Order::Asc);
    check("v2 find", v2.find(q2).await.unwrap().first().map(|p| p.name.clone()));
    assert_eq!(stale, Vec::<String>::new(), "0 stale after the other language's write");
    let home = v1.cache_key(&1);
    assert_eq!(
        wrote["deleted"],
        json!([home, format!("{home}~{tag}")]),
        "home and side key"
    );

    clear_prefix(&old).await;
    db.cleanup().await;
}
