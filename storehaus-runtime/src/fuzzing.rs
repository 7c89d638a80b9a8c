//! The properties the fuzz targets (`fuzz/`, `cargo fuzz`) check, one
//! function per target, each taking the fuzzer's bytes and panicking when a
//! property fails. `tests/test_fuzz_corpus.rs` runs the committed seed
//! corpus through the same functions on stable, as an ordinary test.
//!
//! Only with the `fuzzing` feature; not part of the public API.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use serde::{Deserialize, Serialize};

use crate::backend::glob;
use crate::cache::codec::{self, Entry};
use crate::keys;
use crate::{CacheConfig, CacheManager};

// ----- allocation bound -----

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// A global allocator that remembers, per thread, the largest single
/// allocation since [`reset_peak`]. A fuzz target (or test binary) that
/// checks the decoder's allocation bound installs it:
/// `#[global_allocator] static A: PeakAlloc = PeakAlloc;`.
pub struct PeakAlloc;

fn note(size: usize) {
    let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only a thread-local `Cell` that never allocates.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Forgets this thread's largest allocation.
pub fn reset_peak() {
    let _ = PEAK.try_with(|p| p.set(0));
}

/// This thread's largest single allocation since [`reset_peak`] (0 when
/// [`PeakAlloc`] is not the global allocator).
pub fn peak() -> usize {
    PEAK.try_with(Cell::get).unwrap_or(0)
}

/// The largest single allocation decoding `n` bytes may make: every length
/// the payload declares is backed by as many bytes of input (the decoder
/// walks the payload's extent before it decodes), and no element of the
/// probe records is wider than 32 bytes. The constant covers the error
/// message.
pub fn decode_allocation_bound(n: usize) -> usize {
    32 * n + 4096
}

// ----- codec::decode -----

/// A record shaped like the ones the derive caches: integers, text, bytes,
/// options, sequences, a nested tuple, a UUID and a timestamp.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    id: i64,
    name: String,
    flag: bool,
    small: u8,
    count: Option<u32>,
    blob: Option<Vec<u8>>,
    tags: Vec<String>,
    pairs: Vec<(u16, String)>,
    uuid: Option<uuid::Uuid>,
    at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Target `codec_decode`: any bytes decode to a value or an error, never a
/// panic; an allocation larger than [`decode_allocation_bound`] fails when
/// [`PeakAlloc`] is installed; a value that decodes encodes and decodes
/// back to itself.
pub fn codec_decode(data: &[u8]) {
    const FP: u64 = 0x5eed_f00d_cafe_d00d;
    reset_peak();
    let probe = codec::decode::<Probe>(FP, data);
    let ints = codec::decode::<Vec<i64>>(FP, data);
    let _ = codec::decode::<(String, Option<String>)>(codec::ANY_FINGERPRINT, data);
    let peak = peak();
    assert!(
        peak <= decode_allocation_bound(data.len()),
        "decoding {} bytes allocated {peak} bytes at once",
        data.len()
    );
    if let Ok(Entry::Record(v)) = probe {
        let again = codec::encode(FP, Some(&v)).expect("a decoded record encodes");
        assert_eq!(
            codec::decode::<Probe>(FP, &again).expect("re-decodes"),
            Entry::Record(v)
        );
    }
    if let Ok(Entry::Record(v)) = ints {
        let again = codec::encode(FP, Some(&v)).expect("encodes");
        assert_eq!(
            codec::decode::<Vec<i64>>(FP, &again).expect("re-decodes"),
            Entry::Record(v)
        );
    }
    // A lease is never a value.
    if codec::is_lease(data) {
        assert!(codec::decode::<Probe>(FP, data).is_err(), "a lease decoded as a value");
    }
}

// ----- key escaping -----

/// Undoes `keys::push_escaped`: `%XX` back to the byte. `None` if `s`
/// holds a `%` not followed by two upper-case hex digits.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            if hex.bytes().any(|c| c.is_ascii_lowercase()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn in_key_charset(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'%' | b'-'))
}

/// Target `key_escaping`: the bytes are two ids split at the first `0xFF`
/// (lossy UTF-8). Each id's key segment uses only `[A-Za-z0-9_.%-]`,
/// unescapes to the id, and two different ids never share a key; the same
/// for tags and store prefixes (which never land in the reserved `__`
/// namespace).
pub fn key_escaping(data: &[u8]) {
    let (a, b) = match data.iter().position(|&c| c == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let head = "g:p:";
    let (ka, kb) = (keys::record_key("g", "p", &*a), keys::record_key("g", "p", &*b));
    for (id, k) in [(&a, &ka), (&b, &kb)] {
        let seg = k.strip_prefix(head).expect("a record key starts with its scope");
        assert!(in_key_charset(seg), "id {id:?} gave segment {seg:?}");
        assert_eq!(unescape(seg).as_deref(), Some(id.as_bytes()), "round trip of {id:?}");
        assert_eq!(keys::str_key("g", "p", id), *k, "str_key and record_key agree");
    }
    assert_eq!(a == b, ka == kb, "ids {a:?} and {b:?} gave keys {ka:?} and {kb:?}");

    let (ta, tb) = (keys::tag_key("g", &a), keys::tag_key("g", &b));
    let tseg = ta.strip_prefix("g:__tag:").expect("a tag key");
    assert!(in_key_charset(tseg) && !tseg.contains(':'), "tag {a:?} gave {ta:?}");
    assert_eq!(unescape(tseg).as_deref(), Some(a.as_bytes()));
    assert_eq!(a == b, ta == tb);

    let (pa, pb) = (keys::escape_store_prefix(&a), keys::escape_store_prefix(&b));
    assert!(in_key_charset(&pa), "store prefix {a:?} gave {pa:?}");
    assert!(
        !pa.starts_with("__"),
        "store prefix {a:?} reached the reserved namespace: {pa:?}"
    );
    assert_eq!(
        unescape(&pa).as_deref(),
        Some(a.as_bytes()),
        "round trip of prefix {a:?}"
    );
    assert_eq!(a == b, pa == pb);
}

// ----- globs -----

/// Splits fuzzer bytes into a pattern and a key at the first `0x00`.
pub fn split_pattern_key(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&c| c == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Redis' `stringmatchlen` (`util.c`, 7.x), case-sensitive, transcribed
/// statement by statement as the reference for the in-process matcher,
/// including its `char` arithmetic (signed on x86-64, so a range with a
/// byte ≥ 0x80 compares as negative numbers) and its nesting guard (more
/// than 1000 nested `*` never match).
pub fn redis_stringmatch(pattern: &[u8], key: &[u8]) -> bool {
    // `KEYS *` and `SCAN MATCH *` skip matching altogether.
    if pattern == b"*" {
        return true;
    }
    let mut skip_longer = false;
    stringmatch_impl(pattern, key, &mut skip_longer, 0)
}

fn stringmatch_impl(mut pat: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    if nesting > 1000 {
        return false;
    }
    // `pattern[i]` past the end reads the string's NUL terminator in C.
    let at = |p: &[u8], i: usize| p.get(i).copied().unwrap_or(0);
    while !pat.is_empty() && !s.is_empty() {
        match pat[0] {
            b'*' => {
                while !pat.is_empty() && at(pat, 1) == b'*' {
                    pat = &pat[1..];
                }
                if pat.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if stringmatch_impl(&pat[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                pat = &pat[1..];
                let not = at(pat, 0) == b'^';
                if not {
                    pat = &pat[1..];
                }
                let (mut matched, i) = in_class(pat, s[0]);
                pat = &pat[i..];
                if not {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s = &s[1..];
            }
            b'\\' => {
                if pat.len() >= 2 {
                    pat = &pat[1..];
                }
                if pat[0] != s[0] {
                    return false;
                }
                s = &s[1..];
            }
            c => {
                if c != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        pat = pat.get(1..).unwrap_or(&[]);
        if s.is_empty() {
            while at(pat, 0) == b'*' {
                pat = &pat[1..];
            }
            break;
        }
    }
    pat.is_empty() && s.is_empty()
}

/// A `[...]` set at the start of `pat` (after its `[` and `^`): whether
/// `c` is in it, and the offset of the set's `]` in `pat` (or of its last
/// byte, when the set runs to the end).
fn in_class(pat: &[u8], c: u8) -> (bool, usize) {
    // `pattern[i]` past the end reads the string's NUL terminator in C.
    let at = |p: &[u8], i: usize| p.get(i).copied().unwrap_or(0);
    let mut matched = false;
    // `pat` may run empty: C then reads its NUL and steps back.
    let mut i = 0usize; // offset into `pat`, may equal its length
    loop {
        let left = pat.len() - i;
        if at(pat, i) == b'\\' && left >= 2 {
            i += 1;
            if pat[i] == c {
                matched = true;
            }
        } else if at(pat, i) == b']' && left > 0 {
            break;
        } else if left == 0 {
            // C steps back onto the last byte, which the step
            // below then consumes: the set ran to the end.
            i = pat.len();
            break;
        } else if left >= 3 && pat[i + 1] == b'-' {
            let (mut start, mut end) = (pat[i] as i8 as i32, pat[i + 2] as i8 as i32);
            let c = c as i8 as i32;
            if start > end {
                std::mem::swap(&mut start, &mut end);
            }
            i += 2;
            if c >= start && c <= end {
                matched = true;
            }
        } else if pat[i] == c {
            matched = true;
        }
        i += 1;
    }
    (matched, i)
}

/// The in-process backend's matcher (`backend::glob`), the one
/// `memory://`'s `SCAN MATCH` and `delete_pattern` use.
pub fn glob_matches(pattern: &[u8], key: &[u8]) -> bool {
    glob::matches(pattern, key)
}

/// How many separate runs of `*` a pattern has: past 1000, Redis' nesting
/// guard answers "no match" where a plain glob would match.
pub fn star_runs(pattern: &[u8]) -> usize {
    pattern
        .iter()
        .enumerate()
        .filter(|&(i, &c)| c == b'*' && (i == 0 || pattern[i - 1] != b'*'))
        .count()
}

/// Target `glob`: the in-process matcher agrees with Redis'
/// `stringmatchlen` ([`redis_stringmatch`]) on every pattern and key
/// (split at the first `0x00`), except patterns past Redis' nesting guard.
pub fn glob(data: &[u8]) {
    let (pattern, key) = split_pattern_key(data);
    if star_runs(pattern) > 1000 {
        return;
    }
    let ours = glob_matches(pattern, key);
    let redis = redis_stringmatch(pattern, key);
    assert_eq!(
        ours,
        redis,
        "pattern {:?} key {:?}: memory:// says {ours}, Redis says {redis}",
        String::from_utf8_lossy(pattern),
        String::from_utf8_lossy(key)
    );
}

/// Target `delete_pattern`: a pattern confined to a global prefix (the
/// first bytes up to `0x00`, when they are a valid prefix; else `g`)
/// matches no key outside `{prefix}:`, neither by Redis' rules nor by
/// the in-process matcher.
pub fn delete_pattern(data: &[u8]) {
    let (head, rest) = split_pattern_key(data);
    let prefix = match std::str::from_utf8(head) {
        Ok(p) if keys::validate_prefix("global prefix", p).is_ok() => p,
        _ => "g",
    };
    let (pattern, key) = split_pattern_key(rest);
    let pattern = String::from_utf8_lossy(pattern);
    let confined = keys::confined_pattern(prefix, &pattern);
    assert!(confined.starts_with(&format!("{prefix}:")));
    let scope = format!("{prefix}:");
    if !key.starts_with(scope.as_bytes()) && star_runs(confined.as_bytes()) <= 1000 {
        assert!(
            !redis_stringmatch(confined.as_bytes(), key),
            "Redis would delete {:?} outside {scope:?} with {confined:?}",
            String::from_utf8_lossy(key)
        );
        assert!(
            !glob_matches(confined.as_bytes(), key),
            "memory:// would delete {:?} outside {scope:?} with {confined:?}",
            String::from_utf8_lossy(key)
        );
    }
}

// ----- URL and configuration -----

/// A password no generated URL holds by accident.
pub const SECRET: &str = "Zq9xSecretPw";

/// Target `config_url`: the bytes (lossy UTF-8) as a cache URL as they
/// are, and with [`SECRET`] spliced in as the password under each scheme
/// (unless the bytes spell it themselves).
/// `CacheManager::new` returns a manager or an error, never panics (it does
/// not connect); no error, redacted URL or `Debug` output holds the
/// password.
pub fn config_url(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut urls = vec![text.to_string()];
    // `user:SECRET@rest` under every scheme; the bytes up to the first
    // `@`-free `:` are the user.
    let (user, rest) = text.split_once(':').unwrap_or(("", &text));
    let (user, rest) = (user.replace('@', ""), rest);
    for scheme in [
        "redis",
        "rediss",
        "redis+sentinel",
        "rediss+sentinel",
        "redis+unix",
        "unix",
        "memory",
    ] {
        urls.push(format!("{scheme}://{user}:{SECRET}@{rest}"));
        urls.push(format!("{scheme}://{SECRET}@{rest}"));
    }
    urls.push(format!("redis+unix:///tmp/r.sock?pass={SECRET}&{rest}"));
    urls.push(format!("redis+unix:///tmp/r.sock?password={SECRET}#{rest}"));
    for url in urls {
        let config = CacheConfig::new(url.clone(), 60, "g");
        let redacted = config.redacted_url();
        let debug = format!("{config:?}");
        let outcome = match CacheManager::new(config) {
            Ok(manager) => format!("{:?}", manager.config()),
            Err(e) => e.to_string(),
        };
        // Only where the password is ours: bytes that spell the secret
        // themselves put it in a host or a path, which is no password.
        if url.contains(SECRET) && !text.contains(SECRET) {
            for (what, s) in [("redacted URL", &redacted), ("Debug", &debug), ("error", &outcome)] {
                assert!(
                    !s.contains(SECRET),
                    "the password leaked into the {what} of {url:?}: {s}"
                );
            }
        }
    }
}
