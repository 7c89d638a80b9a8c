//! Security: passwords (AUTH and ACL users) work and never leak, TLS
//! (`rediss://`) works and verifies certificates by default, manual
//! operations cannot reach outside the global prefix, and ids holding key
//! grammar characters never collide.
//!
//! Every test runs its own `redis-server` on a free loopback port.
//! The TLS tests need `--features tls` and a `redis-server` built with TLS
//! (Debian's is); their certificates are generated in process (`rcgen`). A
//! redis-server that cannot start with TLS options fails them: they never
//! skip.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus_testkit::logs::{capture_logs, LevelFilter};
use storehaus_testkit::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "items", prefix = "items")]
pub struct Item {
    pub id: i64,
    pub name: String,
}

/// A string id: every character a key grammar could trip on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "labels", prefix = "labels")]
pub struct Label {
    #[cache(id)]
    pub name: String,
    pub n: i32,
}

async fn items_db() -> Db {
    let db = Db::new().await;
    db.exec("CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL)")
        .await;
    db.exec("INSERT INTO items SELECT g, 'item-' || g FROM generate_series(0, 9) g")
        .await;
    db
}

fn store_on(db: &Db, manager: &Arc<CacheManager>) -> GenericStore<Item> {
    GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())))
}

async fn db_item(db: &Db, id: i64) -> Option<Item> {
    sqlx::query_as::<_, Item>("SELECT id, name FROM items WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

/// Reads `id` until it is cached, then proves a hit by changing the row
/// behind the cache's back.
async fn assert_hits(db: &Db, store: &GenericStore<Item>, url: &str, id: i64) {
    assert_hits_on(db, store, &mut raw_redis(url).await, id).await;
}

/// [`assert_hits`] with the raw connection given (a TLS one, say).
async fn assert_hits_on(db: &Db, store: &GenericStore<Item>, redis: &mut redis::aio::MultiplexedConnection, id: i64) {
    let want = db_item(db, id).await;
    assert_eq!(store.get_by_id(&id).await.unwrap(), want);
    wait_for_value(redis, &store.cache_key(&id)).await;
    sqlx::query("UPDATE items SET name = 'behind-the-cache' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(store.get_by_id(&id).await.unwrap(), want, "served from the cache");
}

/// Every store operation once; each must answer like the database.
async fn exercise(db: &Db, store: &GenericStore<Item>) {
    for id in 0..3 {
        assert_eq!(store.get_by_id(&id).await.unwrap(), db_item(db, id).await);
    }
    let many = store.get_many(&[0, 1, 2, 42]).await.unwrap();
    assert_eq!(many.len(), 4);
    assert_eq!(many[3], None);
    let created = store
        .create(
            Item {
                id: 100,
                name: "new".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(store.get_by_id(&100).await.unwrap(), Some(created));
    let renamed = Item {
        id: 1,
        name: "renamed".into(),
    };
    store.update(&1, renamed.clone(), None).await.unwrap();
    assert_eq!(store.get_by_id(&1).await.unwrap(), Some(renamed));
    assert!(store.delete(&2).await.unwrap());
    assert_eq!(store.get_by_id(&2).await.unwrap(), None);
    assert_eq!(store.delete_many(&[100]).await.unwrap(), 1);
}

fn assert_no_secret(secret: &str, what: &str, text: &str) {
    assert!(!text.contains(secret), "{what} shows the password:\n{text}");
}

// ----- AUTH and ACL users -----

#[tokio::test]
async fn wrong_password_falls_back_to_the_database_and_never_shows_the_password() {
    const SECRET: &str = "Wr0ng-Pa55-7f3a";
    let (logs, _guard) = capture_logs(LevelFilter::TRACE);
    let server = RedisServer::start_with(&["--requirepass", "the-right-one"]).await;
    let db = items_db().await;
    let url = format!("redis://:{SECRET}@127.0.0.1:{}", server.port);
    let manager = manager_on(&url, |c| c.with_timeout(300).with_retry_delay(5));
    let store = store_on(&db, &manager);

    exercise(&db, &store).await;
    let stats = manager.get_stats().await.unwrap();
    assert!(stats.connection_errors > 0, "auth failures are counted: {stats:?}");
    assert_eq!(stats.hits, 0);

    let err = manager.health_check().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // A refused password is its own error and is not retried.
    let fresh = manager_on(&url, |c| c.with_timeout(300).with_retry_attempts(3).with_retry_delay(5));
    let err = fresh.health_check().await.unwrap_err();
    assert!(matches!(err, storehaus::CacheError::AuthenticationFailed(_)), "{err:?}");
    assert_eq!(
        fresh.get_stats().await.unwrap().connection_errors,
        1,
        "one attempt, no retries"
    );
    assert_no_secret(SECRET, "the authentication error", &format!("{err} {err:?}"));
    let err = manager.delete_pattern("*").await.unwrap_err();
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{manager:?}"),
        format!("{:?}", manager.config()),
        manager.config().redacted_url(),
        format!("{:?}", store),
        format!("{stats:?}"),
        logs.text(),
    ] {
        assert_no_secret(SECRET, "an error, a Debug or a log line", &text);
    }
    assert!(logs.text().contains("cache"), "the logs were captured");
    db.cleanup().await;
}

#[tokio::test]
async fn right_password_serves_hits() {
    const SECRET: &str = "R1ght-Pa55-c0ffee";
    let (logs, _guard) = capture_logs(LevelFilter::TRACE);
    let server = RedisServer::start_with(&["--requirepass", SECRET]).await;
    let db = items_db().await;
    let url = format!("redis://:{SECRET}@127.0.0.1:{}", server.port);
    let manager = manager_on(&url, |c| c);
    let store = store_on(&db, &manager);

    manager.health_check().await.unwrap();
    assert_hits(&db, &store, &url, 3).await;
    let stats = manager.get_stats().await.unwrap();
    assert_eq!((stats.connection_errors, stats.command_errors), (0, 0), "{stats:?}");
    assert_no_secret(SECRET, "Debug", &format!("{manager:?}"));
    assert_no_secret(SECRET, "the logs", &logs.text());
    db.cleanup().await;
}

#[tokio::test]
async fn acl_user_confined_to_the_global_prefix_can_run_every_operation() {
    // An ACL user that may touch only `{global}:*` keys: any command on a key
    // outside the prefix would be refused (NOPERM) and logged by the server.
    let global = random_name("acl");
    let keys = format!("~{global}:*");
    let server = RedisServer::start_with(&["--user", "alice", "on", ">alice-pw", &keys, "+@all"]).await;
    let db = items_db().await;
    let url = format!("redis://alice:alice-pw@127.0.0.1:{}", server.port);
    let manager = Arc::new(CacheManager::new(CacheConfig::new(url.as_str(), 3600, global.as_str())).unwrap());
    let store = store_on(&db, &manager);

    exercise(&db, &store).await;
    assert_hits(&db, &store, &url, 5).await;
    manager.set_record("sessions", "s:1 *", &"v", 60).await.unwrap();
    assert_eq!(
        manager
            .get_record::<String>("sessions", "s:1 *")
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
    assert!(manager.delete_record("sessions", "s:1 *").await.unwrap());
    manager.invalidate_queries("items").await.unwrap();
    manager.health_check().await.unwrap();
    assert!(manager.delete_pattern("*").await.unwrap() > 0);

    let stats = manager.get_stats().await.unwrap();
    assert_eq!((stats.connection_errors, stats.command_errors), (0, 0), "{stats:?}");
    let mut admin = raw_redis(&server.url()).await;
    let denied: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query_async(&mut admin).await.unwrap();
    assert!(denied.is_empty(), "the server refused nothing: {denied:?}");

    // The same user with the wrong password: the database answers.
    let wrong = format!("redis://alice:nope@127.0.0.1:{}", server.port);
    let manager = manager_on(&wrong, |c| c.with_timeout(300).with_retry_delay(5));
    let store = store_on(&db, &manager);
    assert_eq!(store.get_by_id(&7).await.unwrap(), db_item(&db, 7).await);
    assert!(manager.get_stats().await.unwrap().connection_errors > 0);
    db.cleanup().await;
}

#[tokio::test]
async fn passwords_never_appear_in_config_errors() {
    const SECRET: &str = "S3cret-d00d";
    for url in [
        format!("redis://user:{SECRET}@127.0.0.1:notaport"),
        format!("redis://user:{SECRET}@127.0.0.1:99999"),
        format!("redis://user:{SECRET}@[::1"),
        format!("redis://user:{SECRET}@127.0.0.1:6379/notadb"),
        format!("redis://:{SECRET}@127.0.0.1:6379/0#frag"),
        format!("redis://{SECRET}@127.0.0.1:6379"),
        format!("rediss://user:{SECRET}@127.0.0.1:6379/?protocol=nope"),
        format!("http://user:{SECRET}@127.0.0.1:6379"),
        format!("user:{SECRET}@127.0.0.1:6379"),
        format!("redis://user:{SECRET}/x?y#z@127.0.0.1:6379"),
        format!("redis+unix:///tmp/storehaus-none.sock?pass={SECRET}"),
        format!("unix:///tmp/storehaus-none.sock?user=u&password={SECRET}"),
    ] {
        let config = CacheConfig::new(url.as_str(), 60, "app");
        assert_no_secret(SECRET, "CacheConfig's Debug", &format!("{config:?}"));
        assert_no_secret(SECRET, "redacted_url", &config.redacted_url());
        match CacheManager::new(config) {
            Ok(manager) => assert_no_secret(SECRET, "CacheManager's Debug", &format!("{manager:?}")),
            Err(err) => {
                assert_no_secret(SECRET, "the error", &err.to_string());
                assert_no_secret(SECRET, "the error's Debug", &format!("{err:?}"));
            }
        }
    }
}

// ----- confinement to the global prefix -----

#[tokio::test]
async fn delete_pattern_never_reaches_outside_the_global_prefix() {
    let server = RedisServer::start().await;
    let manager = manager_on(&server.url(), |c| c);
    let global = manager.global_prefix().to_string();
    let mut redis = raw_redis(&server.url()).await;

    // Keys of neighbours: another app, prefix look-alikes, no prefix at all.
    let outside = [
        "victim".to_string(),
        global.clone(),
        format!("{global}x:items:1"),
        format!("x{global}:items:1"),
        format!("other:{global}:items:1"),
        format!("{}:items:1", &global[..global.len() - 1]),
        "../etc".to_string(),
    ];
    for key in &outside {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("keep")
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let patterns = [
        "*", "**", "?*", "*:*", "../*", "..", "../../*", ":*", "[a-z]*", "[^x]*", "\\*", "*victim*", "*\\", "[", " *",
        "*\u{0}*", "items:*", "%2A",
    ];
    for pattern in patterns {
        manager.set_record("items", "1", &1, 60).await.unwrap();
        manager.set_record("items", "*", &2, 60).await.unwrap();
        let removed = manager.delete_pattern(pattern).await.unwrap();
        assert!(removed <= 2, "{pattern:?} removed {removed} keys");
        for key in &outside {
            let kept: Option<String> = redis::cmd("GET").arg(key).query_async(&mut redis).await.unwrap();
            assert_eq!(kept.as_deref(), Some("keep"), "{pattern:?} reached {key:?}");
        }
    }
    // Inside the prefix it does what it says.
    manager.delete_pattern("*").await.unwrap();
    manager.set_record("items", "1", &1, 60).await.unwrap();
    manager.set_record("other", "1", &1, 60).await.unwrap();
    assert_eq!(manager.delete_pattern("items:*").await.unwrap(), 1);
    assert_eq!(manager.delete_pattern("*").await.unwrap(), 1);
    let left: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut redis).await.unwrap();
    assert_eq!(left.len(), outside.len(), "{left:?}");
}

#[tokio::test]
async fn invalidate_queries_and_manual_keys_stay_inside_the_global_prefix() {
    let server = RedisServer::start().await;
    let manager = manager_on(&server.url(), |c| c);
    let global = manager.global_prefix().to_string();
    for bad in ["*", "../x", "a:b", "", "__tag", "a b", "items*", "é"] {
        assert!(
            matches!(manager.invalidate_queries(bad).await, Err(CacheError::InvalidInput(_))),
            "invalidate_queries({bad:?})"
        );
        assert!(
            matches!(
                manager.set_record(bad, "1", &1, 60).await,
                Err(CacheError::InvalidInput(_))
            ),
            "set_record({bad:?}, ..)"
        );
        assert!(
            matches!(manager.delete_record(bad, "1").await, Err(CacheError::InvalidInput(_))),
            "delete_record({bad:?}, ..)"
        );
    }
    manager.invalidate_queries("items").await.unwrap();
    // Ids are escaped, so no id reaches another prefix or acts as a glob.
    for id in ["../x", "*", "a:b", "x y", "\u{e9}"] {
        manager.set_record("items", id, &id, 60).await.unwrap();
    }
    let mut redis = raw_redis(&server.url()).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut redis).await.unwrap();
    assert_eq!(keys.len(), 6, "{keys:?}");
    for key in keys.iter().filter(|k| **k != format!("{global}:items:query:gen")) {
        let rest = key
            .strip_prefix(&format!("{global}:items:"))
            .unwrap_or_else(|| panic!("{key:?} is outside {global}:items:"));
        assert!(!rest.contains([':', '*', ' ', '?', '[']) && rest.is_ascii(), "{key:?}");
    }
    assert!(manager.delete_record("items", "*").await.unwrap());
    assert_eq!(
        manager.get_record::<String>("items", "a:b").await.unwrap().as_deref(),
        Some("a:b")
    );
}

#[tokio::test]
async fn ids_with_colons_globs_spaces_and_unicode_never_collide() {
    let server = RedisServer::start().await;
    let db = Db::new().await;
    db.exec("CREATE TABLE labels (name text PRIMARY KEY, n integer NOT NULL)")
        .await;
    let manager = manager_on(&server.url(), |c| c);
    let store = GenericStore::<Label>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let ids = [
        "a:b", "a%3Ab", "a%253Ab", "a", "a:", ":a", "*", "**", "?", "[ab]", "a b", "a\tb", "a\nb", "a_b", "é",
        "e\u{301}", "日本", "", "%", "%25", "labels:a", "..", "../a", "a\\b",
    ];
    for (n, name) in ids.iter().enumerate() {
        store
            .create(
                Label {
                    name: name.to_string(),
                    n: n as i32,
                },
                None,
            )
            .await
            .unwrap();
    }
    let keys: std::collections::HashSet<String> = ids.iter().map(|id| store.cache_key(&id.to_string())).collect();
    assert_eq!(keys.len(), ids.len(), "every id has its own key");

    let mut redis = raw_redis(&server.url()).await;
    for name in ids {
        store.get_by_id(&name.to_string()).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&name.to_string())).await;
    }
    let hits_before = manager.get_stats().await.unwrap().hits;
    for (n, name) in ids.iter().enumerate() {
        let got = store.get_by_id(&name.to_string()).await.unwrap().unwrap();
        assert_eq!((got.name.as_str(), got.n), (*name, n as i32));
    }
    let owned: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let many = store.get_many(&owned).await.unwrap();
    for (n, got) in many.into_iter().enumerate() {
        assert_eq!(got.map(|l| l.n), Some(n as i32));
    }
    let stats = manager.get_stats().await.unwrap();
    assert_eq!(stats.hits - hits_before, 2 * ids.len() as u64, "{stats:?}");

    // Deleting the row "*" invalidates only its own key.
    assert!(store.delete(&"*".to_string()).await.unwrap());
    let cached: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:labels:*", manager.global_prefix()))
        .query_async(&mut redis)
        .await
        .unwrap();
    let records = cached.iter().filter(|k| !k.ends_with(":labels:query:gen")).count();
    assert_eq!(records, ids.len() - 1, "{cached:?}");
    db.cleanup().await;
}

// ----- TLS -----

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn rediss_without_the_tls_feature_is_a_config_error() {
    let err = CacheManager::new(CacheConfig::new("rediss://:pw-xyz@127.0.0.1:6380", 60, "app")).unwrap_err();
    assert!(matches!(err, CacheError::InvalidConfig(_)), "{err}");
    assert_no_secret("pw-xyz", "the error", &err.to_string());
    println!("TLS tests skipped: build with `--features tls` to run them");
}

#[tokio::test]
async fn tls_certificates_need_a_rediss_url_and_never_show_the_key() {
    let config = storehaus::CacheConfig::new("redis://127.0.0.1:6379", 60, "app")
        .with_tls_root_cert(b"-----BEGIN CERTIFICATE-----".to_vec())
        .with_tls_client_cert(b"cert".to_vec(), b"s3cret-private-key".to_vec());
    assert_no_secret("s3cret-private-key", "Debug of the config", &format!("{config:?}"));
    let err = CacheManager::new(config).unwrap_err();
    assert!(matches!(err, storehaus::CacheError::InvalidConfig(_)), "{err}");
}

#[cfg(feature = "tls")]
mod tls {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::*;

    /// A throwaway CA, a server certificate (SAN IP 127.0.0.1 and DNS
    /// localhost, usable as a client certificate by cluster nodes on their
    /// bus) and a client certificate signed by that CA, generated in
    /// process with `rcgen` and written as PEM files to a fresh temporary
    /// directory (redis-server reads files).
    pub struct Certs {
        pub dir: PathBuf,
    }

    impl Drop for Certs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Certs {
        pub fn path(&self, name: &str) -> String {
            self.dir.join(name).to_string_lossy().into_owned()
        }

        pub fn read(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
        }
    }

    /// A leaf certificate for `names` (IP addresses or DNS names) with
    /// extended key usage `usage`, signed by `issuer`: (cert PEM, key PEM).
    fn leaf(
        issuer: &Issuer<'_, KeyPair>,
        cn: &str,
        names: &[&str],
        usage: &[ExtendedKeyUsagePurpose],
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid subject alt names");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usage.to_vec();
        let key = KeyPair::generate().expect("generate a key");
        let cert = params.signed_by(&key, issuer).expect("sign the certificate");
        (cert.pem(), key.serialize_pem())
    }

    pub fn make_certs() -> Certs {
        let dir = std::env::temp_dir().join(random_name("storehaus-tls"));
        std::fs::create_dir_all(&dir).expect("create a directory for the certificates");
        let certs = Certs { dir };

        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "StoreHaus test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("generate the CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca, ca_key);

        let (server_cert, server_key) = leaf(
            &issuer,
            "127.0.0.1",
            &["127.0.0.1", "localhost"],
            // Client too: cluster nodes present it to each other on the bus.
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        );
        let (client_cert, client_key) = leaf(&issuer, "storehaus-client", &[], &[ExtendedKeyUsagePurpose::ClientAuth]);
        for (name, pem) in [
            ("ca.crt", ca_cert.pem()),
            ("server.crt", server_cert),
            ("server.key", server_key),
            ("client.crt", client_cert),
            ("client.key", client_key),
        ] {
            std::fs::write(certs.dir.join(name), pem).unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        certs
    }

    /// A `redis-server` that speaks only TLS, on a free loopback port.
    pub struct TlsServer {
        pub port: u16,
        child: Child,
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn start(certs: &Certs) -> TlsServer {
        start_with(certs, false)
    }

    /// With `auth_clients`, the server demands a client certificate signed
    /// by the test CA (mutual TLS). A redis-server that cannot start with
    /// the TLS options (built without TLS, or missing) fails the test: these
    /// tests never skip.
    pub fn start_with(certs: &Certs, auth_clients: bool) -> TlsServer {
        let port = free_port();
        let log = certs.dir.join(format!("redis-{port}.log"));
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                &certs.path("server.crt"),
                "--tls-key-file",
                &certs.path("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &certs.path("ca.crt"),
                "--tls-auth-clients",
                if auth_clients { "yes" } else { "no" },
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::fs::File::create(&log).expect("create the redis-server log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server for the TLS tests (install redis-server): {e}"));
        let mut server = TlsServer { port, child };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "this redis-server cannot start with TLS options ({status}); the TLS tests need a \
                     redis-server built with TLS (Debian's redis-server is). Its output:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the TLS redis-server did not listen on port {port} within 10 s. Its output:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    #[test]
    fn verification_cannot_be_turned_off() {
        let config = storehaus::CacheConfig::new("rediss://127.0.0.1:6380/#insecure", 60, "app");
        let err = storehaus::CacheManager::new(config).unwrap_err();
        assert!(matches!(err, storehaus::CacheError::InvalidConfig(_)), "{err:?}");
    }

    #[tokio::test]
    async fn rediss_serves_hits_over_tls() {
        let certs = make_certs();
        let server = start(&certs);
        let db = items_db().await;
        // The server's certificate is signed by a CA of this test only,
        // trusted for this manager.
        let url = format!("rediss://127.0.0.1:{}", server.port);
        let manager = manager_on(&url, |c| c.with_tls_root_cert(certs.read("ca.crt")));
        let store = store_on(&db, &manager);
        let mut ready = false;
        for _ in 0..100 {
            if manager.health_check().await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "TLS health check: {:?}", manager.health_check().await);
        exercise(&db, &store).await;
        // The raw connection trusts the same CA.
        let certs_for_raw = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(certs.read("ca.crt")),
        };
        let mut raw = redis::Client::build_with_tls(url.as_str(), certs_for_raw)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        assert_hits_on(&db, &store, &mut raw, 4).await;
        db.cleanup().await;
    }

    /// Verification against a private CA, trusted through `SSL_CERT_FILE`.
    /// The variable is set for a child process (this test binary, running
    /// [`trusted_ca_child`]) rather than with `set_var` in this multi-threaded one.
    #[tokio::test]
    async fn rediss_verifies_the_server_against_a_trusted_ca() {
        let certs = make_certs();
        let server = start(&certs);
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tls::trusted_ca_child", "--ignored", "--nocapture"])
            .env("SSL_CERT_FILE", certs.dir.join("ca.crt"))
            .env(CHILD_PORT, server.port.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits (up to 5 s) until the TLS server answers the manager's PING;
    /// panics with the last error otherwise.
    async fn until_healthy(manager: &CacheManager) {
        let mut last = None;
        for _ in 0..100 {
            match manager.health_check().await {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the TLS server never answered: {last:?}");
    }

    const CHILD_PORT: &str = "STOREHAUS_TEST_TLS_PORT";

    #[tokio::test]
    #[ignore = "run by rediss_verifies_the_server_against_a_trusted_ca in a child process"]
    async fn trusted_ca_child() {
        let Ok(port) = std::env::var(CHILD_PORT) else {
            println!("only meaningful as the child of rediss_verifies_the_server_against_a_trusted_ca");
            return;
        };
        // No `#insecure`: the certificate (IP SAN 127.0.0.1) is verified.
        let manager = manager_on(&format!("rediss://127.0.0.1:{port}"), |c| c);
        until_healthy(&manager).await;
        manager.set_record("items", "1", &"over tls", 60).await.unwrap();
        let back: Option<String> = manager.get_record("items", "1").await.unwrap();
        assert_eq!(back.as_deref(), Some("over tls"));
    }

    /// A private CA given in the configuration, no `SSL_CERT_FILE`.
    #[tokio::test]
    async fn rediss_trusts_a_root_certificate_given_in_the_config() {
        let certs = make_certs();
        let server = start(&certs);
        let ca = certs.read("ca.crt");
        let manager = manager_on(&format!("rediss://127.0.0.1:{}", server.port), |c| {
            c.with_tls_root_cert(ca.clone())
        });
        until_healthy(&manager).await;
        manager.set_record("items", "1", &"over tls", 60).await.unwrap();
        let back: Option<String> = manager.get_record("items", "1").await.unwrap();
        assert_eq!(back.as_deref(), Some("over tls"));
    }

    /// Mutual TLS: without a client certificate the server refuses us (the
    /// store still answers from the database); with one it serves.
    #[tokio::test]
    async fn rediss_presents_a_client_certificate_when_the_server_demands_one() {
        let certs = make_certs();
        let server = start_with(&certs, true);
        let read = |name: &str| certs.read(name);
        let url = format!("rediss://127.0.0.1:{}", server.port);
        let without = manager_on(&url, |c| c.with_tls_root_cert(read("ca.crt")).with_timeout(500));
        assert!(
            without.health_check().await.is_err(),
            "no client certificate, no service"
        );
        let with = manager_on(&url, |c| {
            c.with_tls_root_cert(read("ca.crt"))
                .with_tls_client_cert(read("client.crt"), read("client.key"))
        });
        until_healthy(&with).await;
        with.set_record("items", "2", &"mutual tls", 60).await.unwrap();
        let back: Option<String> = with.get_record("items", "2").await.unwrap();
        assert_eq!(back.as_deref(), Some("mutual tls"));
    }

    #[tokio::test]
    async fn rediss_rejects_an_untrusted_certificate_and_falls_back_to_the_database() {
        let certs = make_certs();
        let server = start(&certs);
        let db = items_db().await;
        let url = format!("rediss://:tls-Secret-1@127.0.0.1:{}", server.port);
        // A budget a loaded machine's TLS handshake fits in (other tests of
        // this binary start TLS servers and a TLS cluster meanwhile).
        let manager = manager_on(&url, |c| c.with_timeout(2_000).with_circuit_breaker(1_000, 1_000));
        let store = store_on(&db, &manager);
        exercise(&db, &store).await;
        let err = manager.health_check().await.unwrap_err();
        let text = err.to_string().to_lowercase();
        assert!(text.contains("certificate") || text.contains("issuer"), "{err}");
        assert_no_secret("tls-Secret-1", "the error", &format!("{err} {err:?}"));
        let stats = manager.get_stats().await.unwrap();
        assert!(stats.connection_errors > 0 && stats.hits == 0, "{stats:?}");
        db.cleanup().await;
    }

    /// TLS on a cluster as on one node: the URL names one node, the node
    /// says it is a cluster, and the private CA of the configuration
    /// verifies every node the cluster names.
    #[cfg(feature = "cluster")]
    #[tokio::test]
    async fn a_tls_cluster_is_found_out_from_one_node_and_verified_on_every_node() {
        let certs = make_certs();
        let cluster = RedisCluster::start_tls(&certs.dir.to_string_lossy());
        assert!(cluster.url().starts_with("rediss://"), "{}", cluster.url());
        let ca = certs.read("ca.crt");
        let manager = manager_on(&cluster.url(), |c| c.with_tls_root_cert(ca.clone()));
        until_healthy(&manager).await;
        for i in 0..30 {
            // Keys on every primary.
            manager.set_record("tls", &format!("k{i}"), &i, 60).await.unwrap();
        }
        let back: Option<i32> = manager.get_record("tls", "k7").await.unwrap();
        assert_eq!(back, Some(7));
        assert_eq!(manager.delete_pattern("tls:*").await.unwrap(), 30);

        // Without the CA, no node is trusted.
        let untrusting = manager_on(&cluster.url(), |c| c.with_timeout(300));
        assert!(untrusting.set_record("tls", "x", &1, 60).await.is_err());
    }
}
