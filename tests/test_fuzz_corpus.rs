//! The fuzz targets' seed corpus (`fuzz/corpus/<target>/`), run through the
//! same properties as `cargo fuzz` (`storehaus_runtime::fuzzing`), on
//! stable, as an ordinary test; and the glob corpus checked against a real
//! Redis: the reference matcher the `glob` target trusts answers as `KEYS`
//! does, on every seed.
//!
//! `bash scripts/fuzz.sh` fuzzes each target for a bounded time (nightly).

use std::path::PathBuf;

use storehaus_runtime::fuzzing::{self, PeakAlloc};
use storehaus_testkit::RedisServer;

// The decoder's allocation bound is checked here too.
#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Every file of a target's corpus, sorted by name (at least one).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("read a corpus file");
            (path, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", dir.display());
    files
}

/// Runs `check` on every seed of `target`, naming the seed that fails.
fn run(target: &str, check: fn(&[u8])) {
    for (path, data) in corpus(target) {
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("fuzz target {target} fails on {}: {why}", path.display());
        }
    }
}

#[test]
fn codec_decode_corpus_decodes_or_errs_within_its_allocation_bound() {
    run("codec_decode", fuzzing::codec_decode);
}

#[test]
fn key_escaping_corpus_round_trips_in_the_key_charset() {
    run("key_escaping", fuzzing::key_escaping);
}

#[test]
fn glob_corpus_memory_matcher_agrees_with_redis_stringmatch() {
    run("glob", fuzzing::glob);
}

#[test]
fn delete_pattern_corpus_stays_inside_the_global_prefix() {
    run("delete_pattern", fuzzing::delete_pattern);
}

#[test]
fn config_url_corpus_never_panics_or_shows_the_password() {
    run("config_url", fuzzing::config_url);
}

/// The reference matcher is only as good as its transcription: on every
/// seed of the glob corpus (and the confinement corpus), a private
/// `redis-server` holding just that key answers `KEYS pattern` the way
/// `redis_stringmatch` says.
#[tokio::test]
async fn glob_reference_answers_as_redis_keys_does_on_every_seed() {
    let server = RedisServer::start().await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut cases: Vec<(Vec<u8>, Vec<u8>)> = corpus("glob")
        .into_iter()
        .map(|(_, d)| {
            let (p, k) = fuzzing::split_pattern_key(&d);
            (p.to_vec(), k.to_vec())
        })
        .collect();
    for (_, d) in corpus("delete_pattern") {
        let (_, rest) = fuzzing::split_pattern_key(&d);
        let (p, k) = fuzzing::split_pattern_key(rest);
        cases.push(([b"g:".as_slice(), p].concat(), k.to_vec()));
    }
    let mut checked = 0;
    for (pattern, key) in cases {
        let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
        let _: () = redis::cmd("SET").arg(&key).arg(1).query_async(&mut c).await.unwrap();
        let found: Vec<Vec<u8>> = redis::cmd("KEYS").arg(&pattern).query_async(&mut c).await.unwrap();
        let redis_says = found.contains(&key);
        assert_eq!(
            fuzzing::redis_stringmatch(&pattern, &key),
            redis_says,
            "pattern {:?} key {:?}: Redis KEYS says {redis_says}",
            String::from_utf8_lossy(&pattern),
            String::from_utf8_lossy(&key)
        );
        assert_eq!(
            fuzzing::glob_matches(&pattern, &key),
            redis_says,
            "memory:// disagrees with Redis on pattern {:?} key {:?}",
            String::from_utf8_lossy(&pattern),
            String::from_utf8_lossy(&key)
        );
        checked += 1;
    }
    assert!(checked >= 60, "{checked} cases");
}
