//! Redis glob matching, as `SCAN MATCH` / `KEYS` do it: the in-process
//! backend's `scan_step` and the flight table's `detach_matching` use it.

/// Whether `key` matches `pattern`, byte by byte and case-sensitively,
/// with the rules of Redis' `stringmatchlen`:
///
/// - `*` matches any run of bytes (also none), `?` exactly one byte;
/// - `[abc]` one byte of the set, `[^abc]` one byte outside it, `[a-z]` a
///   range (`[z-a]` is the same range), `\]` inside a set a literal `]`;
///   a set left open runs to the end of the pattern;
/// - a range compares bytes as Redis on x86-64 does, with C's signed
///   `char`: `0x80..=0xFF` are -128..=-1, below every ASCII byte, so
///   `[a-\xff]` holds `0x00..=0x61` and `0xFF`, not `é`'s `0xC3` (Redis
///   built for ARM64, where `char` is unsigned, compares them unsigned);
/// - `\x` outside a set is a literal `x`; a trailing `\` is itself;
/// - an empty key matches only the empty pattern and `*` (which `KEYS`
///   and `SCAN` take as "everything" without matching).
///
/// Every token but `*` consumes one byte, so backtracking to the last `*`
/// suffices: the cost is O(pattern × key) at worst, never exponential.
pub(crate) fn matches(pattern: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        // `stringmatchlen` never enters its loop: only an exhausted pattern
        // matches (`**` does not); `KEYS *` skips matching.
        return pattern.is_empty() || pattern == b"*";
    }
    let (mut p, mut k) = (0, 0);
    // After a `*`: the pattern position behind it and the key position
    // from which it is retried, one byte further each time.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() && pattern[p] == b'*' {
            while p < pattern.len() && pattern[p] == b'*' {
                p += 1;
            }
            if p == pattern.len() {
                return true;
            }
            star = Some((p, k));
            continue;
        }
        if p == pattern.len() && k == key.len() {
            return true;
        }
        if p < pattern.len() && k < key.len() {
            if let Some(next) = token(pattern, p, key[k]) {
                p = next;
                k += 1;
                continue;
            }
        }
        match star {
            Some((after_star, from)) if from < key.len() => {
                star = Some((after_star, from + 1));
                p = after_star;
                k = from + 1;
            }
            _ => return false,
        }
    }
}

/// Matches the single-byte token at `pattern[p]` against `byte`; the
/// position after the token when it matches.
fn token(pattern: &[u8], mut p: usize, byte: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'[' => {
            p += 1;
            let negated = pattern.get(p) == Some(&b'^');
            if negated {
                p += 1;
            }
            let mut hit = false;
            loop {
                match pattern.get(p) {
                    None => break,
                    Some(b']') => {
                        p += 1;
                        break;
                    }
                    Some(b'\\') if p + 1 < pattern.len() => {
                        hit |= pattern[p + 1] == byte;
                        p += 2;
                    }
                    Some(&start) if p + 2 < pattern.len() && pattern[p + 1] == b'-' => {
                        // Signed, as Redis' `char` arithmetic (see `matches`).
                        let (start, end, byte) = (start as i8, pattern[p + 2] as i8, byte as i8);
                        hit |= (start.min(end)..=start.max(end)).contains(&byte);
                        p += 3;
                    }
                    Some(&literal) => {
                        hit |= literal == byte;
                        p += 1;
                    }
                }
            }
            (hit != negated).then_some(p)
        }
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == byte).then_some(p + 2),
        literal => (literal == byte).then_some(p + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    fn m(pattern: &str, key: &str) -> bool {
        matches(pattern.as_bytes(), key.as_bytes())
    }

    #[test]
    fn glob_literals_and_wildcards() {
        assert!(m("app:users:1", "app:users:1"));
        assert!(!m("app:users:1", "app:users:12"));
        assert!(!m("app:users:12", "app:users:1"));
        assert!(m("app:*", "app:"));
        assert!(m("app:*", "app:users:1"));
        assert!(!m("app:*", "apps:users:1"));
        assert!(!m("app:*", "other:app:x"));
        assert!(m("*", "anything"));
        assert!(m("a**b", "ab"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        assert!(m("*:query:*", "app:users:query:gen"));
        assert!(m("us?r", "user"));
        assert!(!m("us?r", "usr"));
        assert!(!m("us?r", "useer"));
        assert!(m("?*", "x"));
        assert!(!m("?*", ""));
        // Bytes, not characters: `?` takes one byte of a UTF-8 sequence.
        assert!(m("??", "é"));
        assert!(!m("?", "é"));
    }

    #[test]
    fn glob_sets_ranges_and_negation() {
        assert!(m("h[ae]llo", "hello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(!m("h[a-b]llo", "hcllo"));
        assert!(m("h[b-a]llo", "hallo"), "a reversed range is the same range");
        assert!(m("[0-9][0-9]", "42"));
        assert!(!m("[^0-9]", "4"));
        assert!(!m("x[]y", "xy"), "an empty set matches nothing");
        assert!(m("x[^]y", "xzy"), "a negated empty set matches any byte");
        assert!(m("[a-]", "]"), "as in Redis, `a-]` is a range up to `]`");
        // A set left open runs to the end of the pattern.
        assert!(m("ab[cd", "abd"));
        assert!(!m("ab[cd", "abe"));
        assert!(!m("ab[", "abc"));
    }

    #[test]
    fn glob_escapes() {
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(m(r"a\?", "a?"));
        assert!(!m(r"a\?", "ab"));
        assert!(m(r"\[x]", "[x]"));
        assert!(m(r"[\]]", "]"));
        assert!(m(r"[\^]", "^"));
        assert!(m(r"[a\-z]", "-"));
        assert!(!m(r"[a\-z]", "b"), "an escaped `-` is not a range");
        assert!(m(r"a\\b", r"a\b"));
        assert!(m("a\\", "a\\"), "a trailing backslash is literal");
        // Escaped ids in keys are percent-encoded, so the usual patterns stay simple.
        assert!(m("app:tags:a%3Ab", "app:tags:a%3Ab"));
    }

    #[test]
    fn glob_many_stars_stay_fast() {
        let key = "a".repeat(5_000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!m(&pattern, &key));
        assert!(m(&pattern, &format!("{key}b")));
    }

    #[test]
    fn glob_agrees_with_redis_on_edge_cases() {
        // Each expectation was checked with `KEYS` on Redis 7.
        let cases: &[(&str, &str, bool)] = &[
            ("x[]y", "x]y", false),
            ("[]]", "]", false),
            ("[]a]", "a", false),
            ("[^]a]", "b", false),
            ("x[^", "xa", true),
            ("x[^", "x", false),
            ("ab[", "ab[", false),
            ("[a-c-e]", "d", false),
            ("[a-c-e]", "-", true),
            ("[a-]", "b", false),
            ("a[\\", "a\\", true),
            ("a[\\", "ab", false),
            ("*x", "x", true),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(m(pattern, key), *expected, "{pattern:?} vs {key:?}");
        }
    }

    #[test]
    fn glob_ranges_compare_signed_bytes_and_the_empty_key_as_redis_does() {
        // Found by the `glob` fuzz target (fuzz/), each checked with `KEYS`
        // on Redis 7.0 (x86-64).
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"k[a-\xff]", b"k\xe9", false),
            (b"k[a-\xff]", b"k\xff", true),
            (b"k[\x01-\xff]", b"k\x80", false),
            (b"[\x7f-\x80]", b"a", true),
            (b"[\x80-\xff]", b"\x90", true),
            (b"**", b"", false),
            (b"*", b"", true),
            (b"", b"", true),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(matches(pattern, key), *expected, "{pattern:?} vs {key:?}");
        }
    }
}
